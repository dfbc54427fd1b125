//! The engine: one storage root and its catalog, shared by every session of a server.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use tributary_catalog::{Catalog, CatalogState, StoredPassword};
use tributary_storage::StorageRoot;

use crate::Result;
use crate::session::Session;
use tributary_engine::locks::TableLocks;

/// Shared state of a running server.
#[derive(Debug)]
pub struct Engine {
    pub(crate) storage: Arc<StorageRoot>,
    pub(crate) catalog: Catalog,
    /// Table write locks, held by transactions until they end. Reads never take them.
    pub(crate) locks: Arc<TableLocks>,
    /// The next object identifier: shared by all transactions, so that concurrent ones never
    /// hand out the same one. Starts from the catalog's counter.
    oids: Mutex<u32>,
    transactions: AtomicU64,
    /// Rows rejected by COPY, for `stl_load_errors`.
    pub(crate) load_errors: crate::copy::LoadErrors,
    /// Open transactions and when they started (vacuum keeps what they may read).
    pub(crate) active: Arc<crate::transaction::ActiveTransactions>,
    /// Table versions with the same rows as an older one (compaction, rollback): path ->
    /// older version -> newer version. A transaction whose snapshot has the older one can
    /// still write the table.
    equivalent: Mutex<std::collections::HashMap<String, std::collections::HashMap<u64, u64>>>,
    /// When each table was last vacuumed, and at which version.
    pub(crate) vacuumed: Mutex<std::collections::HashMap<String, (u64, std::time::Instant)>>,
    /// Streaming views: settings, stream clients, counters, history, auto-refresh tasks.
    pub(crate) streams: crate::streaming::Streams,
    /// The namespace registry and the producers read through datashares.
    pub(crate) sharing: crate::sharing::Sharing,
    /// Dropped tables whose files wait for the vacuum retention before maintenance deletes
    /// them, with when they were dropped. (A restart forgets them: their files stay behind
    /// as garbage.)
    pub(crate) retired: Mutex<Vec<(String, std::time::Instant)>>,
    /// Computes password verifiers for CREATE / ALTER USER (set by the wire crate).
    password_hasher: std::sync::OnceLock<crate::access::PasswordHasher>,
    /// Counters and histograms for `/metrics`, and the recent queries.
    pub(crate) metrics: crate::metrics::Metrics,
    /// The runtime client sessions plan and run in (its memory pool enforces the query
    /// memory limit), with that limit.
    runtime: parking_lot::RwLock<(Arc<RuntimeEnv>, Option<u64>)>,
}

impl Engine {
    /// Opens (or creates) the data root at `location`: a directory or an `s3://` URL. The admin
    /// password verifiers are stored only when the root is created.
    pub async fn open(location: &str, admin_password: Option<StoredPassword>) -> Result<Arc<Self>> {
        let storage = StorageRoot::open(location)?;
        let catalog = Catalog::open(storage.object_store(), admin_password).await?;
        let next_oid = catalog.snapshot().next_oid;
        let engine = Arc::new(Self {
            storage,
            catalog,
            locks: Arc::new(TableLocks::default()),
            oids: Mutex::new(next_oid),
            transactions: AtomicU64::new(1),
            load_errors: Default::default(),
            active: Default::default(),
            equivalent: Default::default(),
            vacuumed: Default::default(),
            streams: Default::default(),
            sharing: Default::default(),
            retired: Default::default(),
            password_hasher: Default::default(),
            metrics: Default::default(),
            runtime: parking_lot::RwLock::new((Arc::new(RuntimeEnv::default()), None)),
        });
        engine.relocate_legacy_tables().await?;
        engine.recover().await?;
        Ok(engine)
    }

    /// The storage root URL (for logs and the start-up banner).
    pub fn location(&self) -> String {
        self.storage.url().to_string()
    }

    /// Schedules the files of dropped tables for deletion after the vacuum retention.
    pub(crate) fn retire_tables(&self, paths: &[String]) {
        let now = std::time::Instant::now();
        self.retired
            .lock()
            .extend(paths.iter().map(|p| (p.clone(), now)));
    }

    /// Limits the memory the queries of sessions opened from now on may hold together: a
    /// sort or aggregation over the limit spills to temporary files, and a query that cannot
    /// spill fails with SQLSTATE 53000 instead of exhausting the machine. None: no limit.
    pub fn set_query_memory_limit(&self, bytes: Option<u64>) -> Result<()> {
        let mut builder = RuntimeEnvBuilder::new();
        if let Some(limit) = bytes {
            builder = builder.with_memory_pool(Arc::new(TrackConsumersPool::new(
                GreedyMemoryPool::new(usize::try_from(limit).unwrap_or(usize::MAX)),
                std::num::NonZeroUsize::MIN.saturating_add(4),
            )));
        }
        let runtime = builder.build_arc()?;
        *self.runtime.write() = (runtime, bytes);
        Ok(())
    }

    /// The runtime new sessions use.
    pub(crate) fn runtime_env(&self) -> Arc<RuntimeEnv> {
        self.runtime.read().0.clone()
    }

    /// Bytes queries hold now, and the limit.
    pub fn query_memory(&self) -> (usize, Option<u64>) {
        let runtime = self.runtime.read();
        (runtime.0.memory_pool.reserved(), runtime.1)
    }

    /// Installs how CREATE / ALTER USER turn a password into stored verifiers.
    pub fn set_password_hasher(&self, hasher: crate::access::PasswordHasher) {
        let _ = self.password_hasher.set(hasher);
    }

    pub(crate) fn password_hasher(&self) -> Option<crate::access::PasswordHasher> {
        self.password_hasher.get().copied()
    }

    /// Writes this namespace and its storage root to the namespace registry at `url`
    /// (`file:///dir` or `s3://bucket/prefix`), where other instances find it to read its
    /// datashares; this instance finds producers there too.
    pub async fn register_namespace(&self, url: &str) -> Result<()> {
        let namespace = self.catalog.snapshot().namespace;
        self.sharing
            .register(url, namespace, self.storage.url().as_str())
            .await
    }

    /// This data root's namespace GUID.
    pub fn namespace(&self) -> uuid::Uuid {
        self.catalog.snapshot().namespace
    }

    /// True if this open created a brand-new data root.
    pub fn was_created(&self) -> bool {
        self.catalog.was_created()
    }

    /// The current catalog version.
    pub fn catalog_snapshot(&self) -> Arc<CatalogState> {
        self.catalog.snapshot()
    }

    /// Records that `newer` has the same rows as `older`.
    pub(crate) fn record_equivalent(&self, path: &str, older: u64, newer: u64) {
        let mut map = self.equivalent.lock();
        map.entry(path.to_string())
            .or_default()
            .insert(older, newer);
    }

    /// The newest version known to have the same rows as `version`.
    pub(crate) fn newest_equivalent(&self, path: &str, mut version: u64) -> u64 {
        let map = self.equivalent.lock();
        if let Some(versions) = map.get(path) {
            while let Some(next) = versions.get(&version) {
                version = *next;
            }
        }
        version
    }

    pub(crate) fn next_transaction_id(&self) -> u64 {
        self.transactions.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` with the engine's object identifier counter.
    pub(crate) fn with_oids<T>(&self, f: impl FnOnce(&mut u32) -> T) -> T {
        let mut next = self.oids.lock();
        f(&mut next)
    }

    /// Opens a session for an authenticated user on a database.
    pub fn session(self: &Arc<Self>, user: &str, database: &str) -> Result<Session> {
        Session::new(self.clone(), user, database)
    }

    /// Points the catalog at where earlier releases really stored tables whose names held
    /// characters their paths misread (`#`, `?`, `%`, `\`, `..`): the same files, now under
    /// a path that means one directory everywhere. A table that was put outside the storage
    /// root is left alone and reported; it cannot be read until it is moved back.
    async fn relocate_legacy_tables(&self) -> Result<()> {
        let mut moves = Vec::new();
        for (path, _) in self.catalog.snapshot().table_pins() {
            if tributary_storage::check_table_path(&path).is_ok() {
                continue;
            }
            match tributary_storage::legacy_location(self.storage.url(), &path) {
                Some(location) => {
                    tracing::warn!(table = %path, %location, "a table stored under a misread path by an earlier release is read where its files are");
                    moves.push((path, location));
                }
                None => tracing::error!(
                    table = %path,
                    "a table stored by an earlier release lies outside the storage root and cannot be read; move its files inside the root"
                ),
            }
        }
        if moves.is_empty() {
            return Ok(());
        }
        self.catalog
            .commit(|state| {
                for (path, location) in &moves {
                    if let Some(table) = crate::transaction::table_by_path_mut(state, path) {
                        table.path = location.clone();
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Undoes table commits that never became visible: a crash between a table's Delta commit
    /// and the catalog commit that pins it leaves a Delta version newer than the pin. Such a
    /// table is restored to its pinned content, and the catalog pins the restoring commit.
    async fn recover(&self) -> Result<()> {
        let pins = self.catalog.snapshot().table_pins();
        let mut repins = Vec::new();
        for (path, pinned) in pins {
            // A path outside the root was reported by relocate_legacy_tables.
            let Ok(table) = self.storage.table(&path) else {
                continue;
            };
            // Most tables end at their pin; only those with a later commit are examined.
            if !table.has_commits_after(pinned).await? {
                continue;
            }
            let latest = table.latest_version().await?;
            tracing::warn!(table = %path, pinned, latest, "undoing table commits that never became visible");
            repins.push((path, table.restore(pinned).await?));
        }
        if repins.is_empty() {
            return Ok(());
        }
        self.catalog
            .commit(|state| {
                for (path, version) in &repins {
                    if let Some(table) = crate::transaction::table_by_path_mut(state, path) {
                        table.version = *version;
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}
