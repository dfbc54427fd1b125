//! Reading Kinesis Data Streams (or any service speaking its API) with the official AWS SDK.
//!
//! A reader keeps one shard iterator per open shard. Each `read` call makes at most one
//! GetRecords call per readable shard, so what one call returns is bounded by the per-shard
//! record limit (and Kinesis' own 10 MB per call): a caller that commits before reading again
//! applies backpressure by construction. A shard is readable once its parents were read to
//! their end (or have expired), so after a split or merge no record of a child is read before
//! every record of its parents.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;

use crate::position::{Gap, Positions, ShardPosition};
use crate::record::StreamRecord;
use crate::{Error, Result};

/// How often the shard list is read again while nothing suggests a change.
const RELIST_INTERVAL: Duration = Duration::from_secs(10);
/// Backoff after throttling, doubled per consecutive throttle of a shard.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A Kinesis endpoint: the AWS SDK's standard configuration chain (environment, profile,
/// `AWS_ENDPOINT_URL_KINESIS`, credentials), optionally with an explicit region.
#[derive(Debug, Clone)]
pub struct KinesisSource {
    client: Client,
}

impl KinesisSource {
    /// Connects with the SDK's configuration chain. `endpoint` overrides the endpoint it
    /// would choose (as `AWS_ENDPOINT_URL_KINESIS` does). Against an overridden endpoint with
    /// no credentials configured, placeholder credentials sign the requests: local
    /// Kinesis-compatible servers accept any.
    pub async fn connect(region: Option<&str>, endpoint: Option<&str>) -> Self {
        use aws_sdk_kinesis::config::ProvideCredentials;
        let env = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let local = endpoint.is_some() || env("AWS_ENDPOINT_URL_KINESIS");
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        match region {
            Some(region) => loader = loader.region(aws_config::Region::new(region.to_string())),
            // A local server does not care about the region; this spares the chain's
            // instance-metadata probes (and their warnings) on a machine outside AWS.
            None if local && !env("AWS_REGION") && !env("AWS_DEFAULT_REGION") => {
                loader = loader.region(aws_config::Region::new("us-east-1"))
            }
            None => {}
        }
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let placeholder = || {
            aws_sdk_kinesis::config::Credentials::new(
                "tributary",
                "tributary",
                None,
                None,
                "tributary-local",
            )
        };
        let configured =
            env("AWS_ACCESS_KEY_ID") || env("AWS_PROFILE") || env("AWS_WEB_IDENTITY_TOKEN_FILE");
        if local && !configured {
            loader = loader.credentials_provider(placeholder());
        }
        let config = loader.load().await;
        let mut builder = aws_sdk_kinesis::config::Builder::from(&config);
        if config.region().is_none() {
            // Kinesis needs a region to sign requests.
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        if local && configured {
            let resolves = match config.credentials_provider() {
                Some(provider) => provider.provide_credentials().await.is_ok(),
                None => false,
            };
            if !resolves {
                builder = builder.credentials_provider(placeholder());
            }
        }
        Self {
            client: Client::from_conf(builder.build()),
        }
    }

    /// A reader of `stream` that resumes from `positions`.
    pub fn reader(&self, stream: &str, positions: Positions) -> KinesisReader {
        KinesisReader {
            client: self.client.clone(),
            stream: stream.to_string(),
            positions,
            shards: Vec::new(),
            listed: None,
            iterators: HashMap::new(),
            backoff: HashMap::new(),
            lag: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct ShardInfo {
    id: String,
    parents: Vec<String>,
}

/// How far a shard is behind the stream's tip, as of the last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardLag {
    pub millis_behind: Option<i64>,
    /// Records between the position and the tip (Kafka reports this; Kinesis does not).
    pub records_behind: Option<i64>,
    pub records_read: u64,
    pub bytes_read: u64,
    pub last_error: Option<String>,
}

/// What one read returned.
#[derive(Debug, Default)]
pub struct ReadBatch {
    pub records: Vec<StreamRecord>,
    /// The positions after these records (what to store with them).
    pub positions: Positions,
    /// Every readable shard reported that it is at the tip.
    pub caught_up: bool,
    /// Saved positions the stream no longer holds.
    pub gaps: Vec<Gap>,
}

/// Limits of one read.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// GetRecords' `Limit`: records per shard per call.
    pub records_per_shard: i32,
    /// Records that arrived after this instant (microseconds since the epoch) are left for
    /// the next refresh, so that a refresh reads up to where the stream was when it began.
    pub arrived_before_micros: Option<i64>,
}

/// Reads one stream, shard by shard, from saved positions.
#[derive(Debug)]
pub struct KinesisReader {
    client: Client,
    stream: String,
    positions: Positions,
    shards: Vec<ShardInfo>,
    listed: Option<Instant>,
    iterators: HashMap<String, String>,
    backoff: HashMap<String, (Instant, u32)>,
    lag: BTreeMap<String, ShardLag>,
}

enum ShardRead {
    Records {
        records: Vec<StreamRecord>,
        next: Option<String>,
        millis_behind: Option<i64>,
    },
    Throttled,
    Expired,
    Gap(String),
    Failed(String),
}

impl KinesisReader {
    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Lag and counters per shard.
    pub fn lag(&self) -> &BTreeMap<String, ShardLag> {
        &self.lag
    }

    /// Goes back to `positions` (the committed ones), dropping iterators that ran ahead.
    pub fn reset(&mut self, positions: Positions) {
        if positions != self.positions {
            self.positions = positions;
            self.iterators.clear();
        }
    }

    /// Reads once from every readable shard.
    pub async fn read(&mut self, limits: ReadLimits) -> Result<ReadBatch> {
        let relist = self.listed.is_none_or(|at| at.elapsed() >= RELIST_INTERVAL);
        let mut gaps = Vec::new();
        if relist {
            gaps.extend(self.relist().await?);
        }
        let readable = self.readable();
        let now = Instant::now();
        let due: Vec<String> = readable
            .into_iter()
            .filter(|shard| {
                self.backoff
                    .get(shard)
                    .is_none_or(|(until, _)| *until <= now)
            })
            .collect();
        let reads = futures::future::join_all(
            due.iter()
                .map(|shard| self.read_shard(shard, limits.records_per_shard)),
        )
        .await;
        let mut batch = ReadBatch {
            caught_up: true,
            ..Default::default()
        };
        let mut failures = Vec::new();
        let mut progressed = false;
        for (shard, read) in due.into_iter().zip(reads) {
            match read {
                ShardRead::Records {
                    records,
                    next,
                    millis_behind,
                } => {
                    self.backoff.remove(&shard);
                    progressed = true;
                    let lag = self.lag.entry(shard.clone()).or_default();
                    lag.millis_behind = millis_behind;
                    lag.last_error = None;
                    let fetched = records.len();
                    let mut kept = 0;
                    for record in records {
                        if limits
                            .arrived_before_micros
                            .is_some_and(|cutoff| record.arrival_micros > cutoff)
                        {
                            break;
                        }
                        lag.records_read += 1;
                        lag.bytes_read += record.data.len() as u64;
                        self.positions
                            .set(&shard, ShardPosition::After(record.sequence_number.clone()));
                        batch.records.push(record);
                        kept += 1;
                    }
                    if kept < fetched {
                        // Stopped at the refresh's cutoff: the next read starts after the last
                        // record kept, not where this iterator got to.
                        self.iterators.remove(&shard);
                        continue;
                    }
                    match next {
                        Some(next) => {
                            self.iterators.insert(shard.clone(), next);
                            let at_tip = millis_behind.unwrap_or(0) == 0
                                && fetched < limits.records_per_shard as usize;
                            if !at_tip {
                                batch.caught_up = false;
                            }
                        }
                        None => {
                            // Closed and read to its end: its children are next.
                            self.iterators.remove(&shard);
                            self.positions.set(&shard, ShardPosition::Ended);
                            self.listed = None;
                            batch.caught_up = false;
                            tracing::info!(stream = %self.stream, %shard, "shard read to its end");
                        }
                    }
                }
                ShardRead::Throttled => {
                    self.back_off(&shard);
                    batch.caught_up = false;
                }
                ShardRead::Expired => {
                    self.iterators.remove(&shard);
                    batch.caught_up = false;
                }
                ShardRead::Gap(reason) => {
                    let after = match self.positions.get(&shard) {
                        Some(ShardPosition::After(sequence)) => sequence.clone(),
                        _ => String::new(),
                    };
                    tracing::warn!(stream = %self.stream, %shard, %reason, "saved position is no longer in the stream; resuming at the trim horizon");
                    gaps.push(Gap {
                        shard_id: shard.clone(),
                        after,
                        reason,
                    });
                    // Read from the trim horizon: forget the position.
                    self.positions.retain(|s| s != shard);
                    self.iterators.remove(&shard);
                    batch.caught_up = false;
                }
                ShardRead::Failed(reason) => {
                    self.iterators.remove(&shard);
                    self.lag.entry(shard.clone()).or_default().last_error = Some(reason.clone());
                    self.back_off(&shard);
                    failures.push(format!("{shard}: {reason}"));
                    batch.caught_up = false;
                }
            }
        }
        if !progressed && !failures.is_empty() {
            return Err(Error::Source {
                stream: self.stream.clone(),
                reason: failures.join("; "),
            });
        }
        if !self.backoff.is_empty() {
            batch.caught_up = false;
        }
        batch.positions = self.positions.clone();
        batch.gaps = gaps;
        Ok(batch)
    }

    /// Waits before reading `shard` again, twice as long as last time (up to a limit).
    fn back_off(&mut self, shard: &str) {
        let attempts = self.backoff.get(shard).map_or(0, |(_, n)| *n) + 1;
        let delay = (FIRST_BACKOFF * 2u32.saturating_pow(attempts - 1)).min(MAX_BACKOFF);
        self.backoff
            .insert(shard.to_string(), (Instant::now() + delay, attempts));
    }

    /// Reads the shard list again; shards that have expired are forgotten, and a saved
    /// position on a shard that no longer exists is a gap.
    async fn relist(&mut self) -> Result<Vec<Gap>> {
        let shards = list_shards(&self.client, &self.stream).await?;
        if self.listed.is_some() {
            let new: Vec<&ShardInfo> = shards
                .iter()
                .filter(|s| !self.shards.iter().any(|known| known.id == s.id))
                .collect();
            if !new.is_empty() {
                let described: Vec<String> = new
                    .iter()
                    .map(|s| format!("{} (from {})", s.id, s.parents.join(" + ")))
                    .collect();
                tracing::info!(stream = %self.stream, shards = %described.join(", "), "resharding seen: new shards are read once their parents are read to their end");
            }
        }
        let mut gaps = Vec::new();
        for (shard, position) in self.positions.describe() {
            if position != "SHARD_END" && !shards.iter().any(|s| s.id == shard) {
                gaps.push(Gap {
                    shard_id: shard.clone(),
                    after: position,
                    reason: "the shard expired before it was read to its end".into(),
                });
            }
        }
        self.positions
            .retain(|shard| shards.iter().any(|s| s.id == shard));
        self.iterators
            .retain(|shard, _| shards.iter().any(|s| &s.id == shard));
        for shard in &shards {
            self.lag.entry(shard.id.clone()).or_default();
        }
        self.lag
            .retain(|shard, _| shards.iter().any(|s| &s.id == shard));
        self.shards = shards;
        self.listed = Some(Instant::now());
        Ok(gaps)
    }

    /// Open shards whose parents are done (read to their end, or gone).
    fn readable(&self) -> Vec<String> {
        self.shards
            .iter()
            .filter(|shard| !self.positions.is_ended(&shard.id))
            .filter(|shard| {
                shard.parents.iter().all(|parent| {
                    self.positions.is_ended(parent) || !self.shards.iter().any(|s| &s.id == parent)
                })
            })
            .map(|shard| shard.id.clone())
            .collect()
    }

    async fn read_shard(&self, shard: &str, limit: i32) -> ShardRead {
        let iterator = match self.iterators.get(shard) {
            Some(iterator) => iterator.clone(),
            None => match self.shard_iterator(shard).await {
                Ok(iterator) => iterator,
                Err(read) => return read,
            },
        };
        let response = self
            .client
            .get_records()
            .shard_iterator(&iterator)
            .limit(limit)
            .send()
            .await;
        let output = match response {
            Ok(output) => output,
            Err(err) => {
                let read = match err.code() {
                    Some("ProvisionedThroughputExceededException")
                    | Some("LimitExceededException")
                    | Some("KMSThrottlingException") => ShardRead::Throttled,
                    Some("ExpiredIteratorException") => ShardRead::Expired,
                    _ => ShardRead::Failed(DisplayErrorContext(&err).to_string()),
                };
                return read;
            }
        };
        let millis_behind = output.millis_behind_latest();
        let next = output.next_shard_iterator().map(str::to_string);
        let records = output
            .records
            .into_iter()
            .map(|record| StreamRecord {
                shard_id: shard.to_string(),
                arrival_micros: record
                    .approximate_arrival_timestamp
                    .map(|t| t.secs() * 1_000_000 + i64::from(t.subsec_nanos() / 1000))
                    .unwrap_or_default(),
                sequence_number: record.sequence_number,
                partition_key: record.partition_key.unwrap_or_default(),
                data: Bytes::from(record.data.into_inner()),
                kafka: None,
            })
            .collect();
        ShardRead::Records {
            records,
            next,
            millis_behind,
        }
    }

    async fn shard_iterator(&self, shard: &str) -> std::result::Result<String, ShardRead> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(shard);
        let request = match self.positions.get(shard) {
            Some(ShardPosition::After(sequence)) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
            _ => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        match request.send().await {
            Ok(output) => output
                .shard_iterator
                .ok_or_else(|| ShardRead::Failed("no shard iterator returned".into())),
            Err(err) => Err(match err.code() {
                Some("ProvisionedThroughputExceededException") | Some("LimitExceededException") => {
                    ShardRead::Throttled
                }
                // The saved sequence number is no longer in the shard (trimmed).
                Some("InvalidArgumentException")
                    if matches!(self.positions.get(shard), Some(ShardPosition::After(_))) =>
                {
                    ShardRead::Gap(DisplayErrorContext(&err).to_string())
                }
                _ => ShardRead::Failed(DisplayErrorContext(&err).to_string()),
            }),
        }
    }
}

async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let request = match &token {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let output = request.send().await.map_err(|err| match err.code() {
            Some("ResourceNotFoundException") => Error::StreamNotFound(stream.to_string()),
            _ => Error::Source {
                stream: stream.to_string(),
                reason: DisplayErrorContext(&err).to_string(),
            },
        })?;
        for shard in output.shards() {
            let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect();
            shards.push(ShardInfo {
                id: shard.shard_id().to_string(),
                parents,
            });
        }
        match output.next_token() {
            Some(next) if !next.is_empty() => token = Some(next.to_string()),
            _ => break,
        }
    }
    Ok(shards)
}
