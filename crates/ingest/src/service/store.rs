//! The embedded stream service's durable store: per stream a directory with its description
//! (`stream.json`) and one append-only log per shard.
//!
//! A log is a sequence of frames `[u32 length][u64 sequence][i64 arrival millis][u16 key
//! length][partition key][data]` (little-endian). An append is written with one `write` call
//! before the PutRecords call is answered, so an acknowledged record survives the process
//! being killed (the operating system holds it); a torn frame at the end of a log (a crash
//! mid-write) is cut off when the log is opened. Each shard keeps an in-memory index of its
//! frames (sequence, arrival, offset, length); record bytes are read from the file.

use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Kinesis' limits.
pub(crate) const MAX_RECORD_BYTES: usize = 1024 * 1024;
pub(crate) const MAX_SHARDS: u32 = 500;
const FRAME_HEADER: usize = 4 + 8 + 8 + 2;

/// Why a store operation failed, in Kinesis' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreError {
    NotFound(String),
    InUse(String),
    Invalid(String),
    Internal(String),
}

impl From<std::io::Error> for StoreError {
    fn from(err: std::io::Error) -> Self {
        StoreError::Internal(err.to_string())
    }
}

type StoreResult<T> = Result<T, StoreError>;

/// A stream's description, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StreamMeta {
    pub name: String,
    pub created_millis: i64,
    pub retention_hours: u32,
    pub shards: Vec<ShardMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShardMeta {
    pub id: String,
    /// The hash key range, as decimal strings of 128-bit integers.
    pub starting_hash_key: u128,
    pub ending_hash_key: u128,
    pub starting_sequence: u64,
}

/// One stored record.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub sequence: u64,
    pub arrival_millis: i64,
    pub partition_key: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    sequence: u64,
    arrival_millis: i64,
    offset: u64,
    length: u32,
}

struct Shard {
    log: File,
    end: u64,
    index: Vec<Entry>,
    last_sequence: u64,
}

pub(crate) struct Stream {
    pub meta: StreamMeta,
    shards: Vec<Mutex<Shard>>,
}

/// All streams of the service.
pub(crate) struct Store {
    dir: PathBuf,
    default_retention_hours: u32,
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
}

/// Kinesis stream names: 1 to 128 of `[a-zA-Z0-9_.-]`.
pub(crate) fn valid_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != ".."
}

/// The shard a hash key belongs to.
fn shard_for(meta: &StreamMeta, hash_key: u128) -> usize {
    meta.shards
        .iter()
        .position(|s| s.starting_hash_key <= hash_key && hash_key <= s.ending_hash_key)
        .unwrap_or(0)
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens the store in `dir` (created if missing), loading every stream and its logs.
    pub(crate) fn open(dir: &Path, default_retention_hours: u32) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)?;
        let mut streams = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let meta_path = path.join("stream.json");
            if !meta_path.is_file() {
                continue;
            }
            let meta: StreamMeta = serde_json::from_slice(&std::fs::read(&meta_path)?)
                .map_err(|e| StoreError::Internal(format!("{}: {e}", meta_path.display())))?;
            let stream = Stream::open(&path, meta)?;
            streams.insert(stream.meta.name.clone(), Arc::new(stream));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            default_retention_hours,
            streams: RwLock::new(streams),
        })
    }

    pub(crate) fn stream(&self, name: &str) -> StoreResult<Arc<Stream>> {
        self.streams.read().get(name).cloned().ok_or_else(|| {
            StoreError::NotFound(format!(
                "Stream {name} under account 000000000000 not found."
            ))
        })
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.streams.read().keys().cloned().collect()
    }

    /// Creates a stream whose shards split the hash key space evenly.
    pub(crate) fn create(&self, name: &str, shard_count: u32) -> StoreResult<()> {
        if !valid_stream_name(name) {
            return Err(StoreError::Invalid(format!(
                "1 validation error detected: Value '{name}' at 'streamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
            )));
        }
        if shard_count == 0 || shard_count > MAX_SHARDS {
            return Err(StoreError::Invalid(format!(
                "ShardCount must be between 1 and {MAX_SHARDS}, not {shard_count}"
            )));
        }
        let mut streams = self.streams.write();
        if streams.contains_key(name) {
            return Err(StoreError::InUse(format!(
                "Stream {name} under account 000000000000 already exists."
            )));
        }
        let step = u128::MAX / u128::from(shard_count);
        let first_sequence = sequence_floor();
        let shards = (0..shard_count)
            .map(|i| ShardMeta {
                id: format!("shardId-{i:012}"),
                starting_hash_key: step * u128::from(i),
                ending_hash_key: if i + 1 == shard_count {
                    u128::MAX
                } else {
                    step * u128::from(i + 1) - 1
                },
                starting_sequence: first_sequence,
            })
            .collect();
        let meta = StreamMeta {
            name: name.to_string(),
            created_millis: now_millis(),
            retention_hours: self.default_retention_hours,
            shards,
        };
        let path = self.dir.join(name);
        if path.exists() {
            // Left by a deletion that did not finish.
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        let temp = path.join("stream.json.tmp");
        std::fs::write(
            &temp,
            serde_json::to_vec_pretty(&meta).map_err(|e| StoreError::Internal(e.to_string()))?,
        )?;
        File::open(&temp)?.sync_all()?;
        std::fs::rename(&temp, path.join("stream.json"))?;
        let stream = Stream::open(&path, meta)?;
        streams.insert(name.to_string(), Arc::new(stream));
        Ok(())
    }

    pub(crate) fn delete(&self, name: &str) -> StoreResult<()> {
        let removed = self.streams.write().remove(name);
        if removed.is_none() {
            return Err(StoreError::NotFound(format!(
                "Stream {name} under account 000000000000 not found."
            )));
        }
        let path = self.dir.join(name);
        // The description goes first, so that a crash mid-way leaves no half stream behind.
        std::fs::remove_file(path.join("stream.json"))?;
        std::fs::remove_dir_all(&path)?;
        Ok(())
    }
}

/// Sequence numbers start from the current time in microseconds times 1,000, so that they
/// increase across restarts and roughly follow arrival order across shards.
fn sequence_floor() -> u64 {
    (chrono::Utc::now().timestamp_micros().max(0) as u64).saturating_mul(1_000)
}

impl Stream {
    fn open(path: &Path, meta: StreamMeta) -> StoreResult<Self> {
        let shards = meta
            .shards
            .iter()
            .map(|shard| Shard::open(&path.join(format!("{}.log", shard.id)), shard.clone()))
            .collect::<StoreResult<Vec<_>>>()?
            .into_iter()
            .map(Mutex::new)
            .collect();
        Ok(Self { meta, shards })
    }

    pub(crate) fn shard_index(&self, shard_id: &str) -> StoreResult<usize> {
        self.meta
            .shards
            .iter()
            .position(|s| s.id == shard_id)
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "Shard {shard_id} in stream {} under account 000000000000 does not exist",
                    self.meta.name
                ))
            })
    }

    /// The shard a partition key (or an explicit hash key) routes to: the MD5 of the key as
    /// a 128-bit integer, as Kinesis routes it.
    pub(crate) fn route(&self, partition_key: &str, explicit_hash_key: Option<u128>) -> usize {
        let hash = explicit_hash_key
            .unwrap_or_else(|| u128::from_be_bytes(md5::compute(partition_key.as_bytes()).0));
        shard_for(&self.meta, hash)
    }

    /// Appends records to one shard; returns their sequence numbers.
    pub(crate) fn append(&self, shard: usize, records: &[(&str, &[u8])]) -> StoreResult<Vec<u64>> {
        let mut shard = self.shards[shard].lock();
        let arrival = now_millis();
        let mut buffer = Vec::new();
        let mut entries = Vec::with_capacity(records.len());
        let mut sequence = shard.last_sequence.max(sequence_floor());
        let mut offset = shard.end;
        for (key, data) in records {
            sequence += 1;
            let length = (FRAME_HEADER + key.len() + data.len()) as u32;
            buffer.extend_from_slice(&length.to_le_bytes());
            buffer.extend_from_slice(&sequence.to_le_bytes());
            buffer.extend_from_slice(&arrival.to_le_bytes());
            buffer.extend_from_slice(&(key.len() as u16).to_le_bytes());
            buffer.extend_from_slice(key.as_bytes());
            buffer.extend_from_slice(data);
            entries.push(Entry {
                sequence,
                arrival_millis: arrival,
                offset,
                length,
            });
            offset += u64::from(length);
        }
        shard.log.write_all(&buffer)?;
        shard.end = offset;
        shard.last_sequence = sequence;
        let sequences = entries.iter().map(|e| e.sequence).collect();
        shard.index.extend(entries);
        Ok(sequences)
    }

    /// The position (index in the shard) of the first record a new iterator reads.
    pub(crate) fn position(&self, shard: usize, start: Start) -> usize {
        let shard = self.shards[shard].lock();
        let horizon = self.trim_horizon(&shard);
        let found = match start {
            Start::TrimHorizon => horizon,
            Start::Latest => shard.index.len(),
            Start::AtSequence(seq) => shard.index.partition_point(|e| e.sequence < seq),
            Start::AfterSequence(seq) => shard.index.partition_point(|e| e.sequence <= seq),
            Start::AtTimestamp(millis) => {
                shard.index.partition_point(|e| e.arrival_millis < millis)
            }
        };
        found.max(horizon)
    }

    /// The index of the oldest record still within the retention period.
    fn trim_horizon(&self, shard: &Shard) -> usize {
        let oldest = now_millis() - i64::from(self.meta.retention_hours) * 3_600_000;
        shard.index.partition_point(|e| e.arrival_millis < oldest)
    }

    /// Up to `limit` records (and at most `max_bytes` of data) from `position`, the position
    /// after them, and how far behind the newest record the last one is (millis).
    pub(crate) fn read(
        &self,
        shard: usize,
        position: usize,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<Record>, usize, i64)> {
        let (entries, start, newest, file) = {
            let shard = self.shards[shard].lock();
            let start = position.max(self.trim_horizon(&shard));
            let end = shard.index.len().min(start.saturating_add(limit));
            let entries: Vec<Entry> = shard.index[start.min(end)..end].to_vec();
            let newest = shard.index.last().map(|e| e.arrival_millis);
            (entries, start, newest, shard.log.try_clone()?)
        };
        let mut records = Vec::with_capacity(entries.len());
        let mut bytes = 0usize;
        for entry in &entries {
            if bytes >= max_bytes && !records.is_empty() {
                break;
            }
            let mut frame = vec![0u8; entry.length as usize];
            file.read_exact_at(&mut frame, entry.offset)?;
            let key_length = u16::from_le_bytes([frame[20], frame[21]]) as usize;
            let key = String::from_utf8_lossy(&frame[FRAME_HEADER..FRAME_HEADER + key_length])
                .to_string();
            let data = frame[FRAME_HEADER + key_length..].to_vec();
            bytes += data.len() + key.len();
            records.push(Record {
                sequence: entry.sequence,
                arrival_millis: entry.arrival_millis,
                partition_key: key,
                data,
            });
        }
        let next = start + records.len();
        let behind = match (records.last(), newest) {
            (Some(last), Some(newest)) => (newest - last.arrival_millis).max(0),
            _ => 0,
        };
        Ok((records, next, behind))
    }
}

impl Shard {
    /// Opens (or creates) a shard's log and indexes its frames, cutting off a torn last one.
    fn open(path: &Path, meta: ShardMeta) -> StoreResult<Self> {
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes)?;
        let mut index = Vec::new();
        let mut offset = 0usize;
        let mut last_sequence = meta.starting_sequence;
        while offset + FRAME_HEADER <= bytes.len() {
            let length =
                u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap_or_default())
                    as usize;
            if length < FRAME_HEADER || offset + length > bytes.len() {
                break;
            }
            let sequence = u64::from_le_bytes(
                bytes[offset + 4..offset + 12]
                    .try_into()
                    .unwrap_or_default(),
            );
            let arrival_millis = i64::from_le_bytes(
                bytes[offset + 12..offset + 20]
                    .try_into()
                    .unwrap_or_default(),
            );
            index.push(Entry {
                sequence,
                arrival_millis,
                offset: offset as u64,
                length: length as u32,
            });
            last_sequence = sequence;
            offset += length;
        }
        if offset < bytes.len() {
            tracing::warn!(log = %path.display(), bytes = bytes.len() - offset, "cutting off a torn record at the end of a stream log");
            log.set_len(offset as u64)?;
        }
        Ok(Self {
            log,
            end: offset as u64,
            index,
            last_sequence,
        })
    }
}

/// Where a new shard iterator starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    TrimHorizon,
    Latest,
    AtSequence(u64),
    AfterSequence(u64),
    AtTimestamp(i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 24).unwrap();
        store.create("clicks", 2).unwrap();
        let stream = store.stream("clicks").unwrap();
        let shard = stream.route("user-1", None);
        let sequences = stream
            .append(shard, &[("user-1", b"one"), ("user-1", b"two")])
            .unwrap();
        assert!(sequences[0] < sequences[1]);
        drop(stream);
        drop(store);
        // A crash mid-write leaves half a frame.
        let log = dir
            .path()
            .join("clicks")
            .join(format!("shardId-{shard:012}.log"));
        let mut file = OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
        let store = Store::open(dir.path(), 24).unwrap();
        let stream = store.stream("clicks").unwrap();
        let start = stream.position(shard, Start::TrimHorizon);
        let (records, next, _) = stream.read(shard, start, 10, usize::MAX).unwrap();
        let data: Vec<&[u8]> = records.iter().map(|r| r.data.as_slice()).collect();
        assert_eq!(data, vec![b"one".as_slice(), b"two".as_slice()]);
        assert_eq!(next, 2);
        let more = stream.append(shard, &[("user-1", b"three")]).unwrap();
        assert!(more[0] > sequences[1], "sequence numbers keep increasing");
        let after = stream.position(shard, Start::AfterSequence(sequences[0]));
        let (records, _, _) = stream.read(shard, after, 10, usize::MAX).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].data, b"three");
    }

    #[test]
    fn partition_keys_route_by_md5_hash_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 24).unwrap();
        store.create("s", 4).unwrap();
        let stream = store.stream("s").unwrap();
        let shards = &stream.meta.shards;
        assert_eq!(shards[0].starting_hash_key, 0);
        assert_eq!(shards[3].ending_hash_key, u128::MAX);
        for pair in shards.windows(2) {
            assert_eq!(pair[0].ending_hash_key + 1, pair[1].starting_hash_key);
        }
        // md5("a") = 0cc175b9..., in the first quarter; md5("b") = 92eb5ffe..., the third.
        assert_eq!(stream.route("a", None), 0);
        assert_eq!(stream.route("b", None), 2);
        assert_eq!(stream.route("ignored", Some(u128::MAX)), 3);
        assert!(matches!(store.create("s", 1), Err(StoreError::InUse(_))));
        assert!(matches!(
            store.create("bad/name", 1),
            Err(StoreError::Invalid(_))
        ));
    }
}
