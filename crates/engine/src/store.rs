//! The store: one storage root and its catalog, with what every transaction over them shares
//! (write locks, object identifiers, the open transactions, vacuum bookkeeping) and the
//! runtime whose memory pool bounds the queries. The engine above composes it with the
//! features that run on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use parking_lot::{Mutex, RwLock};
use tributary_catalog::{Catalog, CatalogState, Relation, StoredPassword, Table};
use tributary_storage::StorageRoot;

use crate::Result;
use crate::locks::TableLocks;

/// A storage root, its catalog and the state its transactions share.
#[derive(Debug)]
pub struct Store {
    pub storage: Arc<StorageRoot>,
    pub catalog: Catalog,
    /// Table write locks, held by transactions until they end. Reads never take them.
    pub locks: Arc<TableLocks>,
    /// The next object identifier: shared by all transactions, so that concurrent ones never
    /// hand out the same one. Starts from the catalog's counter.
    oids: Mutex<u32>,
    transactions: AtomicU64,
    /// Open transactions and when they started (vacuum keeps what they may read).
    pub active: Arc<ActiveTransactions>,
    /// Table versions with the same rows as an older one (compaction, rollback): path ->
    /// older version -> newer version. A transaction whose snapshot has the older one can
    /// still write the table.
    equivalent: Mutex<HashMap<String, HashMap<u64, u64>>>,
    /// When each table was last vacuumed, and at which version.
    pub vacuumed: Mutex<HashMap<String, (u64, Instant)>>,
    /// Dropped tables whose files wait for the vacuum retention before maintenance deletes
    /// them, with when they were dropped. (A restart forgets them: their files stay behind
    /// as garbage.)
    pub retired: Mutex<Vec<(String, Instant)>>,
    /// The runtime client sessions plan and run in (its memory pool enforces the query
    /// memory limit), with that limit.
    runtime: RwLock<(Arc<RuntimeEnv>, Option<u64>)>,
}

impl Store {
    /// Opens (or creates) the data root at `location`: a directory or an `s3://` URL. The admin
    /// password verifiers are stored only when the root is created. Table commits that never
    /// became visible (a crash between a table's commit and the catalog's) are undone.
    pub async fn open(location: &str, admin_password: Option<StoredPassword>) -> Result<Self> {
        let storage = StorageRoot::open(location)?;
        let catalog = Catalog::open(storage.object_store(), admin_password).await?;
        let next_oid = catalog.snapshot().next_oid;
        let store = Self {
            storage,
            catalog,
            locks: Arc::new(TableLocks::default()),
            oids: Mutex::new(next_oid),
            transactions: AtomicU64::new(1),
            active: Default::default(),
            equivalent: Default::default(),
            vacuumed: Default::default(),
            retired: Default::default(),
            runtime: RwLock::new((Arc::new(RuntimeEnv::default()), None)),
        };
        store.relocate_legacy_tables().await?;
        store.recover().await?;
        Ok(store)
    }

    /// The storage root URL (for logs and the start-up banner).
    pub fn location(&self) -> String {
        self.storage.url().to_string()
    }

    /// Schedules the files of dropped tables for deletion after the vacuum retention.
    pub fn retire_tables(&self, paths: &[String]) {
        let now = Instant::now();
        self.retired
            .lock()
            .extend(paths.iter().map(|p| (p.clone(), now)));
    }

    /// Limits the memory the queries of sessions opened from now on, the cache of table
    /// versions, the rewrites and the cache of Parquet footers may hold together: a
    /// sort or aggregation over the limit spills to temporary files, and a query that cannot
    /// spill fails with SQLSTATE 53000 instead of exhausting the machine. None: no limit
    /// (and DataFusion's 50 MiB of footers).
    /// Operators that spill share what the others leave equally (a fair pool), so one
    /// partition's sort cannot take the memory another partition's needs to go on.
    ///
    /// The footer cache gets a sixteenth of the limit and the pool the rest. A mirror round
    /// reads the page indexes of all its two tables' files (22 MB at 100M rows, so some
    /// 290 MB at 1.28B): a cache smaller than that decodes them again every round.
    pub fn set_query_memory_limit(&self, bytes: Option<u64>) -> Result<()> {
        let mut builder = RuntimeEnvBuilder::new();
        if let Some(limit) = bytes {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let footers = footer_share(limit);
            builder = builder
                .with_memory_pool(Arc::new(TrackConsumersPool::new(
                    FairSpillPool::new(limit - footers),
                    std::num::NonZeroUsize::MIN.saturating_add(4),
                )))
                .with_metadata_cache_limit(footers);
        }
        let runtime = builder.build_arc()?;
        // The cache of table versions and the rewrites hold their bytes in the same pool.
        self.storage.set_memory_pool(runtime.memory_pool.clone());
        *self.runtime.write() = (runtime, bytes);
        Ok(())
    }

    /// The runtime new sessions use.
    pub fn runtime_env(&self) -> Arc<RuntimeEnv> {
        self.runtime.read().0.clone()
    }

    /// Bytes queries hold now, and the limit.
    pub fn query_memory(&self) -> (usize, Option<u64>) {
        let runtime = self.runtime.read();
        (runtime.0.memory_pool.reserved(), runtime.1)
    }

    /// Bytes the runtime's cache of Parquet footers and page indexes holds: outside the
    /// memory pool, within the share of the memory limit kept for it
    /// ([`Self::set_query_memory_limit`]).
    pub fn footer_cache_bytes(&self) -> usize {
        let runtime = self.runtime.read();
        let footers = runtime.0.cache_manager.get_file_metadata_cache();
        footers
            .list_entries()
            .values()
            .map(|entry| entry.size_bytes)
            .sum()
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
    pub fn record_equivalent(&self, path: &str, older: u64, newer: u64) {
        let mut map = self.equivalent.lock();
        map.entry(path.to_string())
            .or_default()
            .insert(older, newer);
    }

    /// The newest version known to have the same rows as `version`.
    pub fn newest_equivalent(&self, path: &str, mut version: u64) -> u64 {
        let map = self.equivalent.lock();
        if let Some(versions) = map.get(path) {
            while let Some(next) = versions.get(&version) {
                version = *next;
            }
        }
        version
    }

    pub fn next_transaction_id(&self) -> u64 {
        self.transactions.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` with the store's object identifier counter.
    pub fn with_oids<T>(&self, f: impl FnOnce(&mut u32) -> T) -> T {
        let mut next = self.oids.lock();
        f(&mut next)
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
                    if let Some(table) = table_by_path_mut(state, path) {
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
                    if let Some(pin) = pin_by_path_mut(state, path) {
                        *pin = *version;
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}

/// The open transactions of a store and when each started.
#[derive(Debug, Default)]
pub struct ActiveTransactions {
    started: Mutex<HashMap<u64, Instant>>,
}

impl ActiveTransactions {
    pub(crate) fn start(&self, id: u64) {
        self.started.lock().insert(id, Instant::now());
    }

    pub(crate) fn end(&self, id: u64) {
        self.started.lock().remove(&id);
    }

    /// How long the oldest open transaction has been running.
    pub fn oldest_age(&self) -> Duration {
        self.started
            .lock()
            .values()
            .map(Instant::elapsed)
            .max()
            .unwrap_or_default()
    }
}

/// The pinned version of the Delta table at `path`: a table's own, or a mirror's key table's.
pub fn pin_by_path_mut<'a>(state: &'a mut CatalogState, path: &str) -> Option<&'a mut u64> {
    tables_mut(state).find_map(|table| table.pin_mut(path))
}

pub fn table_by_path_mut<'a>(state: &'a mut CatalogState, path: &str) -> Option<&'a mut Table> {
    tables_mut(state).find(|table| table.path == path)
}

fn tables_mut(state: &mut CatalogState) -> impl Iterator<Item = &mut Table> {
    state
        .databases
        .values_mut()
        .flat_map(|db| db.schemas.values_mut())
        .flat_map(|schema| schema.relations.values_mut())
        .filter_map(|relation| match relation {
            Relation::Table(table) => Some(table),
            Relation::View(_) => None,
        })
}

/// The bytes of a memory limit kept for the runtime's cache of Parquet footers and page
/// indexes (the rest is the query pool's): a sixteenth.
fn footer_share(limit: usize) -> usize {
    limit / 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory limit bounds the query pool and the footer cache together.
    #[tokio::test]
    async fn the_footer_cache_is_a_share_of_the_memory_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), None)
            .await
            .unwrap();
        let limit = 8usize << 30;
        store.set_query_memory_limit(Some(limit as u64)).unwrap();
        let runtime = store.runtime_env();
        let footers = runtime.cache_manager.get_metadata_cache_limit();
        assert_eq!(footers, 512 << 20);
        let datafusion::execution::memory_pool::MemoryLimit::Finite(pool) =
            runtime.memory_pool.memory_limit()
        else {
            panic!("a finite pool")
        };
        assert_eq!(pool + footers, limit);
        assert_eq!(store.query_memory().1, Some(limit as u64));
    }
}
