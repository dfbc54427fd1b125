//! The storage root: where every table and the catalog log live (a directory or an s3:// prefix).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use datafusion::catalog::TableProvider;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, UnboundedMemoryPool,
};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use url::Url;

use crate::checkpoints::Checkpoints;
use crate::{Error, Result};

/// The most table versions the cache keeps.
const SNAPSHOT_CACHE_ENTRIES_MAX: usize = 256;
/// The most versions of one table the cache keeps: reads and writes go to a table's newest
/// versions, and a writer that commits round after round would otherwise fill the cache with
/// its own history.
const SNAPSHOT_VERSIONS_PER_TABLE_MAX: usize = 4;
/// What the cache may hold in all, as [`Snapshot::estimated_bytes`] counts it: one version of
/// a table of some 50,000 files of ten columns, or many versions of smaller tables. A version
/// larger than this is still kept, alone.
const SNAPSHOT_CACHE_BYTES_MAX: usize = 64 << 20;
/// Under a memory limit, the cache holds at most this fraction of it, so that queries keep
/// the rest.
const SNAPSHOT_CACHE_LIMIT_DIVISOR: usize = 8;

/// The costs of a loaded version, measured by counting allocations while tables of 2 to 30
/// columns and 200 to 800 files were loaded: about 26 KiB for the version itself (schema,
/// protocol, metadata, log segment), then 280 bytes for each file's add action (path, size,
/// times, deletion vector descriptor) and 80 more for each column's statistics (minimum,
/// maximum and null count, kept as JSON text and parsed).
const SNAPSHOT_BASE_BYTES: usize = 32 << 10;
const SNAPSHOT_FILE_BYTES: usize = 280;
const SNAPSHOT_FILE_COLUMN_BYTES: usize = 80;

/// A write returns its new version by adding its commit to the version it started from, as
/// one more Arrow batch of files that the new version shares with the old. Measured the same
/// way: each such commit costs 32 KiB and 2.6 KiB a column, however few files it adds, where
/// a version loaded from the log keeps its files in a few large batches (a table of 300 files
/// and 10 columns: 320 KiB loaded, 17.5 MiB after 300 commits by one server). So a version
/// more than this many commits away from one loaded from the log is not kept; it is loaded
/// from the log (its last checkpoint and the commits after it) when next asked for.
const SNAPSHOT_COMMITS_MAX: u32 = 16;
const SNAPSHOT_COMMIT_BYTES: usize = 32 << 10;
const SNAPSHOT_COMMIT_COLUMN_BYTES: usize = 2_600;

/// One storage root, shared by every session of a server.
#[derive(Debug)]
pub struct StorageRoot {
    url: Url,
    store: Arc<dyn ObjectStore>,
    snapshots: Mutex<SnapshotCache>,
    /// The server's memory pool, which `--memory-limit` bounds: the cache and the rewrites
    /// hold their bytes in it beside the queries'.
    memory: parking_lot::RwLock<Arc<dyn MemoryPool>>,
    /// Delta checkpoints, written in the background after commits.
    checkpoints: Checkpoints,
    /// How long a removed file stays in its table's log ([`StorageRoot::set_file_retention`]).
    file_retention: parking_lot::RwLock<Duration>,
    /// Per table, the replaced deletion vector files vacuum has found, with when it first
    /// did ([`crate::TableHandle::vacuum`]).
    replaced_vectors: Mutex<HashMap<String, HashMap<object_store::path::Path, Instant>>>,
}

/// How long a removed file stays in its table's log unless the server says otherwise: the
/// default `--vacuum-retention`.
pub const DEFAULT_FILE_RETENTION: Duration = Duration::from_secs(3600);

/// Loaded table versions, so that a write or a read right after another one does not replay
/// the Delta log again. Versions are immutable, so the cache is keyed by (table, version) and
/// never needs invalidation. It is bounded three ways (entries, versions per table, estimated
/// bytes) and evicts the least recently used entry first; an evicted version is loaded again
/// from the log when it is next asked for. Its bytes are held in the server's memory pool
/// ([`StorageRoot::set_memory_pool`]): under a limit, the cache keeps at most an eighth of it,
/// and less when the pool cannot give it more.
#[derive(Debug)]
pub(crate) struct SnapshotCache {
    entries: HashMap<(String, u64), Entry>,
    /// The sum of the entries' [`Entry::bytes`].
    bytes: usize,
    /// Counts uses, to order them.
    clock: u64,
    /// Each table's newest cached version and the commits added to a loaded version to make
    /// it (see [`SNAPSHOT_COMMITS_MAX`]). Kept apart from the entries, which may be evicted.
    chains: HashMap<String, (u64, u32)>,
    /// The most bytes it keeps.
    max_bytes: usize,
    /// Its bytes in the server's memory pool.
    reservation: MemoryReservation,
}

impl SnapshotCache {
    fn new(pool: &Arc<dyn MemoryPool>) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            clock: 0,
            chains: HashMap::new(),
            max_bytes: SNAPSHOT_CACHE_BYTES_MAX,
            reservation: MemoryConsumer::new("table version cache").register(pool),
        }
        .held_in(pool)
    }

    /// The cache with its bytes held in `pool`, and at most an eighth of its limit.
    fn held_in(mut self, pool: &Arc<dyn MemoryPool>) -> Self {
        self.max_bytes = match pool.memory_limit() {
            MemoryLimit::Finite(limit) => {
                SNAPSHOT_CACHE_BYTES_MAX.min(limit / SNAPSHOT_CACHE_LIMIT_DIVISOR)
            }
            MemoryLimit::Infinite | MemoryLimit::Unknown => SNAPSHOT_CACHE_BYTES_MAX,
        };
        self.reservation = MemoryConsumer::new("table version cache").register(pool);
        let keep = self
            .entries
            .iter()
            .max_by_key(|(_, entry)| entry.last_used)
            .map(|(key, _)| key.clone());
        if let Some(keep) = keep {
            self.shrink(&keep);
        }
        self
    }
}

#[derive(Debug)]
struct Entry {
    snapshot: Snapshot,
    /// The table's estimated bytes plus the provider's.
    bytes: usize,
    last_used: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) table: deltalake::DeltaTable,
    pub(crate) provider: Option<Arc<dyn TableProvider>>,
}

impl Snapshot {
    /// About what the loaded version holds in memory: delta-rs keeps each file's add action
    /// and statistics as rows of Arrow batches, which it does not expose, so they are counted
    /// by the number of files and columns.
    ///
    /// `commits` is how many commits were added to a loaded version to make this one.
    fn estimated_bytes(table: &deltalake::DeltaTable, commits: u32) -> usize {
        let Ok(state) = table.snapshot() else {
            return SNAPSHOT_BASE_BYTES;
        };
        let columns = state.snapshot().arrow_schema().fields().len();
        let files = state.log_data().num_files();
        SNAPSHOT_BASE_BYTES
            + files * (SNAPSHOT_FILE_BYTES + columns * SNAPSHOT_FILE_COLUMN_BYTES)
            + commits as usize * (SNAPSHOT_COMMIT_BYTES + columns * SNAPSHOT_COMMIT_COLUMN_BYTES)
    }
}

impl SnapshotCache {
    pub(crate) fn get(&mut self, key: &(String, u64)) -> Option<Snapshot> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        entry.last_used = self.clock;
        Some(entry.snapshot.clone())
    }

    /// Caches a version loaded from the log.
    pub(crate) fn insert_loaded(&mut self, key: (String, u64), table: deltalake::DeltaTable) {
        let newest = self
            .chains
            .get(&key.0)
            .is_none_or(|(version, _)| *version <= key.1);
        if newest {
            self.chains.insert(key.0.clone(), (key.1, 0));
        }
        let bytes = Snapshot::estimated_bytes(&table, 0);
        self.insert_sized(key, table, bytes);
    }

    /// Caches the version a write on this root returned, unless the commits it adds to a
    /// version loaded from the log are too many: it is counted from the table's newest cached
    /// version, which the write most likely started from (and at worst is counted high).
    pub(crate) fn insert_committed(&mut self, key: (String, u64), table: deltalake::DeltaTable) {
        let commits = self
            .chains
            .get(&key.0)
            .map_or(1, |(_, commits)| commits + 1);
        if commits > SNAPSHOT_COMMITS_MAX {
            self.chains.remove(&key.0);
            return;
        }
        self.chains.insert(key.0.clone(), (key.1, commits));
        let bytes = Snapshot::estimated_bytes(&table, commits);
        self.insert_sized(key, table, bytes);
    }

    fn insert_sized(&mut self, key: (String, u64), table: deltalake::DeltaTable, bytes: usize) {
        if self.entries.contains_key(&key) {
            return;
        }
        self.clock += 1;
        let path = key.0.clone();
        self.bytes += bytes;
        self.entries.insert(
            key.clone(),
            Entry {
                snapshot: Snapshot {
                    table,
                    provider: None,
                },
                bytes,
                last_used: self.clock,
            },
        );
        while self.entries.keys().filter(|(t, _)| *t == path).count()
            > SNAPSHOT_VERSIONS_PER_TABLE_MAX
        {
            self.evict(|(t, _)| *t == path, &key);
        }
        self.shrink(&key);
    }

    /// Caches the provider built for a cached version; `bytes` is what it holds beyond the
    /// version itself (its file list and deletion vectors).
    pub(crate) fn set_provider(
        &mut self,
        key: &(String, u64),
        provider: Arc<dyn TableProvider>,
        bytes: usize,
    ) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if entry.snapshot.provider.is_none() {
            entry.snapshot.provider = Some(provider);
            entry.bytes += bytes;
            self.bytes += bytes;
            self.shrink(key);
        }
    }

    pub(crate) fn forget_table(&mut self, path: &str) {
        let mut freed = 0;
        self.entries.retain(|(table, _), entry| {
            let keep = table != path;
            if !keep {
                freed += entry.bytes;
            }
            keep
        });
        self.bytes -= freed;
        self.reservation.resize(self.bytes);
        self.chains.remove(path);
    }

    /// Evicts entries other than `keep` until the cache is within its bounds and the memory
    /// pool holds its bytes.
    fn shrink(&mut self, keep: &(String, u64)) {
        while self.entries.len() > 1
            && (self.bytes > self.max_bytes
                || self.entries.len() > SNAPSHOT_CACHE_ENTRIES_MAX
                || self.reservation.try_resize(self.bytes).is_err())
        {
            self.evict(|_| true, keep);
        }
        // One version larger than the bounds is still kept, and counted.
        self.reservation.resize(self.bytes);
    }

    /// Evicts the least recently used entry that `candidate` accepts, other than `keep`.
    fn evict(&mut self, candidate: impl Fn(&(String, u64)) -> bool, keep: &(String, u64)) {
        let oldest = self
            .entries
            .iter()
            .filter(|(key, _)| *key != keep && candidate(key))
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(key, _)| key.clone());
        if let Some(entry) = oldest.and_then(|key| self.entries.remove(&key)) {
            self.bytes -= entry.bytes;
        }
    }
}

impl StorageRoot {
    /// Opens a root given as a local directory (created if missing) or an `s3://bucket/prefix`
    /// URL. S3 settings come from the standard AWS environment (`AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, credentials, `AWS_ALLOW_HTTP`).
    pub fn open(location: &str) -> Result<Arc<Self>> {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| deltalake::aws::register_handlers(None));
        let (url, store) = if location.starts_with("s3://") || location.starts_with("s3a://") {
            open_s3(location)?
        } else if location.contains("://") && !location.starts_with("file://") {
            return Err(Error::InvalidLocation {
                location: location.to_string(),
                reason: "supported are a local directory, file:// and s3://".to_string(),
            });
        } else {
            open_local(location)?
        };
        let memory: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        Ok(Arc::new(Self {
            url,
            store,
            snapshots: Mutex::new(SnapshotCache::new(&memory)),
            memory: parking_lot::RwLock::new(memory),
            checkpoints: Checkpoints::default(),
            file_retention: parking_lot::RwLock::new(DEFAULT_FILE_RETENTION),
            replaced_vectors: Mutex::new(HashMap::new()),
        }))
    }

    /// The root as a URL (`file:///...` or `s3://...`), always ending in `/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// An object store whose paths are relative to the root; the catalog log lives here.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Holds the cache's bytes and the rewrites' in `pool` (the server's, which its memory
    /// limit bounds) from now on; the cache shrinks to what the pool gives it.
    pub fn set_memory_pool(&self, pool: Arc<dyn MemoryPool>) {
        {
            let mut cache = self.snapshots();
            let moved = std::mem::replace(&mut *cache, SnapshotCache::new(&pool));
            *cache = moved.held_in(&pool);
        }
        *self.memory.write() = pool;
    }

    /// How long the tables created from now on keep a removed file in their log (their
    /// `delta.deletedFileRetentionDuration`): the server's vacuum retention, which
    /// [`crate::TableHandle::vacuum`] relies on (see there).
    pub fn set_file_retention(&self, retention: Duration) {
        *self.file_retention.write() = retention;
    }

    pub(crate) fn file_retention(&self) -> Duration {
        *self.file_retention.read()
    }

    /// The server's memory pool.
    pub(crate) fn memory_pool(&self) -> Arc<dyn MemoryPool> {
        self.memory.read().clone()
    }

    /// Which of `found`, the replaced deletion vector files of the table at `path` that vacuum
    /// found now, it has found for at least `retention`, and forgets the rest it found before.
    pub(crate) fn replaced_vectors_found_for(
        &self,
        path: &str,
        found: Vec<object_store::path::Path>,
        retention: Duration,
    ) -> Vec<object_store::path::Path> {
        let mut tables = self.replaced_vectors.lock();
        let now = Instant::now();
        let before = tables.remove(path).unwrap_or_default();
        let mut seen = HashMap::with_capacity(found.len());
        let mut due = Vec::new();
        for file in found {
            let first = before.get(&file).copied().unwrap_or(now);
            if now.duration_since(first) >= retention {
                due.push(file);
            } else {
                seen.insert(file, first);
            }
        }
        if !seen.is_empty() {
            tables.insert(path.to_string(), seen);
        }
        due
    }

    /// Forgets what vacuum found of a deleted table.
    pub(crate) fn forget_replaced_vectors(&self, path: &str) {
        self.replaced_vectors.lock().remove(path);
    }

    pub(crate) fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    pub(crate) fn snapshots(&self) -> parking_lot::MutexGuard<'_, SnapshotCache> {
        // A poisoned cache only means a panic elsewhere; the cache itself stays consistent.
        self.snapshots.lock()
    }
}

fn open_local(location: &str) -> Result<(Url, Arc<dyn ObjectStore>)> {
    let path = location.strip_prefix("file://").unwrap_or(location);
    std::fs::create_dir_all(path).map_err(|e| Error::InvalidLocation {
        location: location.to_string(),
        reason: e.to_string(),
    })?;
    let path = std::fs::canonicalize(path).map_err(|e| Error::InvalidLocation {
        location: location.to_string(),
        reason: e.to_string(),
    })?;
    let url = Url::from_directory_path(&path).map_err(|()| Error::InvalidLocation {
        location: location.to_string(),
        reason: "not an absolute directory path".to_string(),
    })?;
    let store = crate::local::LocalStore::new(LocalFileSystem::new_with_prefix(&path)?);
    Ok((url, Arc::new(store)))
}

fn open_s3(location: &str) -> Result<(Url, Arc<dyn ObjectStore>)> {
    let mut url = Url::parse(location).map_err(|e| Error::InvalidLocation {
        location: location.to_string(),
        reason: e.to_string(),
    })?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let bucket = url.host_str().ok_or_else(|| Error::InvalidLocation {
        location: location.to_string(),
        reason: "missing bucket name".to_string(),
    })?;
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()?;
    let prefix = url.path().trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    Ok((url, store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unloaded(dir: &std::path::Path) -> deltalake::DeltaTable {
        let url = Url::from_directory_path(dir).unwrap();
        deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .build()
            .unwrap()
    }

    fn cache() -> SnapshotCache {
        SnapshotCache::new(&(Arc::new(UnboundedMemoryPool::default()) as Arc<dyn MemoryPool>))
    }

    fn key(table: &str, version: u64) -> (String, u64) {
        (table.to_string(), version)
    }

    fn versions(cache: &SnapshotCache, table: &str) -> Vec<u64> {
        let mut versions: Vec<u64> = cache
            .entries
            .keys()
            .filter(|(t, _)| t == table)
            .map(|(_, v)| *v)
            .collect();
        versions.sort_unstable();
        versions
    }

    /// A writer committing round after round keeps only its table's few newest versions, and a
    /// version still being read stays.
    #[test]
    fn one_table_keeps_a_few_versions_the_least_recently_used_leave() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = cache();
        cache.insert_sized(key("other", 1), unloaded(dir.path()), 1_000);
        for version in 0..20 {
            cache.insert_sized(key("t", version), unloaded(dir.path()), 1_000);
            if version >= 5 {
                // A long reader keeps using version 5.
                assert!(cache.get(&key("t", 5)).is_some(), "at {version}");
            }
        }
        assert_eq!(versions(&cache, "t"), vec![5, 17, 18, 19]);
        assert_eq!(versions(&cache, "other"), vec![1]);
        assert_eq!(cache.bytes, 5 * 1_000);
        assert!(cache.get(&key("t", 0)).is_none());
    }

    /// Versions that writes return are kept while few commits separate them from a version
    /// loaded from the log; then the next is left out, so that it is loaded from the log, and
    /// the count starts again.
    #[test]
    fn versions_built_commit_by_commit_are_loaded_again_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = cache();
        cache.insert_loaded(key("t", 0), unloaded(dir.path()));
        let mut left_out = Vec::new();
        for version in 1..=40 {
            if cache.get(&key("t", version - 1)).is_none() {
                // What TableHandle::load does on a miss.
                cache.insert_loaded(key("t", version - 1), unloaded(dir.path()));
            }
            cache.insert_committed(key("t", version), unloaded(dir.path()));
            if cache.get(&key("t", version)).is_none() {
                left_out.push(version);
            }
            let (_, commits) = cache.chains.get("t").copied().unwrap_or((0, 0));
            assert!(commits <= SNAPSHOT_COMMITS_MAX, "{commits} at {version}");
        }
        assert_eq!(left_out, vec![17, 34]);
        // A version loaded from the log that is older than the newest leaves the count alone.
        cache.insert_loaded(key("t", 3), unloaded(dir.path()));
        assert_eq!(cache.chains.get("t"), Some(&(40, 6)));
        cache.forget_table("t");
        assert!(cache.chains.is_empty());
    }

    /// The cache holds at most its byte budget, whatever the number of tables; a version
    /// larger than the budget is kept alone, so the reads right after it still find it.
    #[test]
    fn the_cache_stays_within_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = cache();
        let large = SNAPSHOT_CACHE_BYTES_MAX / 5;
        for table in 0..50 {
            cache.insert_sized(key(&format!("t{table}"), 1), unloaded(dir.path()), large);
            assert!(cache.bytes <= SNAPSHOT_CACHE_BYTES_MAX, "{}", cache.bytes);
            let counted: usize = cache.entries.values().map(|e| e.bytes).sum();
            assert_eq!(counted, cache.bytes);
        }
        assert_eq!(cache.entries.len(), 5);
        assert!(cache.get(&key("t49", 1)).is_some());
        assert!(cache.get(&key("t44", 1)).is_none());

        let huge = SNAPSHOT_CACHE_BYTES_MAX * 2;
        cache.insert_sized(key("huge", 1), unloaded(dir.path()), huge);
        assert_eq!(cache.entries.len(), 1);
        assert!(cache.get(&key("huge", 1)).is_some());
        assert_eq!(cache.bytes, huge);

        cache.forget_table("huge");
        assert!(cache.entries.is_empty());
        assert_eq!(cache.bytes, 0);
    }

    /// A provider's bytes count in the budget: caching one can evict other versions, never
    /// its own.
    #[test]
    fn providers_count_in_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = cache();
        let quarter = SNAPSHOT_CACHE_BYTES_MAX / 4;
        for table in 0..4 {
            cache.insert_sized(key(&format!("t{table}"), 1), unloaded(dir.path()), quarter);
        }
        assert_eq!(cache.entries.len(), 4);
        let provider: Arc<dyn TableProvider> =
            Arc::new(datafusion::datasource::empty::EmptyTable::new(Arc::new(
                arrow::datatypes::Schema::empty(),
            )));
        cache.set_provider(&key("t0", 1), provider, quarter);
        assert!(cache.bytes <= SNAPSHOT_CACHE_BYTES_MAX);
        assert_eq!(cache.entries.len(), 3, "t1 left, the least recently used");
        assert!(cache.get(&key("t0", 1)).unwrap().provider.is_some());
        assert!(cache.get(&key("t1", 1)).is_none());
    }

    /// Under a memory limit the cache holds at most an eighth of it, its bytes are held in
    /// the pool beside the queries', and it evicts versions when the queries leave it less.
    #[test]
    fn the_cache_holds_its_bytes_in_the_memory_pool() {
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        let dir = tempfile::tempdir().unwrap();
        let limit = 64 << 20;
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(limit));
        let mut cache = cache();
        for table in 0..4 {
            cache.insert_sized(key(&format!("t{table}"), 1), unloaded(dir.path()), 1 << 20);
        }
        // Moved into the limited pool, the cache keeps at most 8 MiB.
        cache = cache.held_in(&pool);
        assert_eq!(pool.reserved(), 4 << 20);
        for table in 4..20 {
            cache.insert_sized(key(&format!("t{table}"), 1), unloaded(dir.path()), 1 << 20);
            assert_eq!(pool.reserved(), cache.bytes);
        }
        assert_eq!(cache.bytes, limit / SNAPSHOT_CACHE_LIMIT_DIVISOR);
        // With four tables forgotten the cache holds 4 MiB, and a query takes all but 1 MiB
        // of the rest: the cache grows by that 1 MiB, then evicts its oldest versions to cache
        // newer ones.
        for table in 12..16 {
            cache.forget_table(&format!("t{table}"));
        }
        assert_eq!(pool.reserved(), 4 << 20);
        let query = MemoryConsumer::new("query").register(&pool);
        query.try_grow(limit - (5 << 20)).unwrap();
        for table in 20..23 {
            cache.insert_sized(key(&format!("t{table}"), 1), unloaded(dir.path()), 1 << 20);
            assert_eq!(cache.bytes, 5 << 20);
            assert!(cache.get(&key(&format!("t{table}"), 1)).is_some());
            assert_eq!(pool.reserved(), limit);
        }
        // Forgetting a table gives its bytes back to the pool.
        cache.forget_table("t22");
        assert_eq!(pool.reserved(), query.size() + (4 << 20));
    }
}
