//! Background table maintenance: compaction of small files and vacuum of unreferenced ones.
//! (Delta checkpoints are written in the background after commits: `tributary_storage`.)
//!
//! Maintenance works on a table only while no transaction holds its write lock, so the
//! version the catalog pins is the table's latest. Compaction writes a new version with the
//! same rows and the catalog pins it; transactions whose snapshot has the older version can
//! still write the table (the versions are recorded as equivalent). Vacuum deletes files that
//! the pinned version does not read once they have been unreferenced for the retention
//! period, and never sooner than the oldest open transaction started, so snapshots still being
//! read keep their files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_engine::store::pin_by_path_mut;

use crate::Result;
use crate::engine::Engine;

/// How long maintenance waits for a table's write lock before it skips the table.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// What an open transaction adds to vacuum's retention, for the clocks' difference (see
/// [`Engine::maintain`]).
const VACUUM_CLOCK_MARGIN: Duration = Duration::from_secs(10);

/// How maintenance runs. `tributary serve` exposes each as a flag.
#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    /// Time between maintenance passes.
    pub interval: Duration,
    /// A table whose pinned version reads at least this many files is compacted.
    pub compact_min_files: usize,
    /// The size compaction aims for, per file.
    pub target_file_bytes: u64,
    /// A data file whose deletion vector marks at least this fraction of its rows deleted is
    /// rewritten with its live rows (UPDATE, DELETE and MERGE only mark rows).
    pub purge_deleted_fraction: f64,
    /// How long a file nothing reads any more is kept before vacuum deletes it.
    pub vacuum_retention: Duration,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            compact_min_files: 32,
            target_file_bytes: 128 * 1024 * 1024,
            purge_deleted_fraction: 0.25,
            vacuum_retention: Duration::from_secs(3600),
        }
    }
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Tables compacted.
    pub compacted: usize,
    /// Tables whose files with many deleted rows were rewritten.
    pub purged: usize,
    /// Files deleted by vacuum.
    pub files_deleted: usize,
}

/// Every Delta table of the catalog with the path of the table whose write lock covers it: a
/// mirror's key table is written under the mirror's lock.
fn delta_tables(state: &tributary_catalog::CatalogState) -> Vec<(String, String)> {
    state
        .databases
        .values()
        .flat_map(|db| db.schemas.values())
        .flat_map(|schema| schema.relations.values())
        .flat_map(|relation| match relation {
            tributary_catalog::Relation::Table(t) => t
                .storage_pins()
                .into_iter()
                .map(|(path, _)| (path, t.path.clone()))
                .collect(),
            tributary_catalog::Relation::View(_) => Vec::new(),
        })
        .collect()
}

impl Engine {
    /// Runs maintenance passes every `settings.interval` until the engine is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>, settings: MaintenanceSettings) {
        self.storage.set_file_retention(settings.vacuum_retention);
        let engine = Arc::downgrade(self);
        tributary_engine::runtime::compute().spawn(async move {
            let mut ticker = tokio::time::interval(settings.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                match engine.maintain(&settings).await {
                    Ok(report) if report != MaintenanceReport::default() => {
                        tracing::info!(
                            compacted = report.compacted,
                            purged = report.purged,
                            files_deleted = report.files_deleted,
                            "table maintenance"
                        );
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "table maintenance failed"),
                }
            }
        });
    }

    /// The number of data files the current version of a table reads.
    pub async fn table_file_count(
        &self,
        database: &str,
        schema: &str,
        name: &str,
    ) -> Result<usize> {
        let snapshot = self.catalog_snapshot();
        let table = snapshot.table(database, schema, name)?;
        Ok(self
            .storage
            .table(&table.path)?
            .file_count(table.version)
            .await?)
    }

    /// One maintenance pass over every table whose write lock is free.
    pub async fn maintain(&self, settings: &MaintenanceSettings) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        // Files of dropped tables go once no reader can need them: after the retention, and
        // not before the oldest open transaction here started.
        let retention = settings.vacuum_retention.max(self.active.oldest_age());
        let due: Vec<String> = {
            let mut retired = self.retired.lock();
            let (due, kept): (Vec<_>, Vec<_>) = retired
                .drain(..)
                .partition(|(_, at)| at.elapsed() >= retention);
            *retired = kept;
            due.into_iter().map(|(path, _)| path).collect()
        };
        for path in due {
            tributary_engine::transaction::delete_files(self, &path, "dropped").await;
        }
        for (path, lock) in delta_tables(&self.catalog_snapshot()) {
            let owner = self.next_transaction_id();
            // Wait a little for the table's writer, like any other writer: a stream of short
            // autocommit INSERTs would otherwise keep the table from ever being compacted.
            // A long transaction makes maintenance skip the table until the next pass.
            let acquired =
                tokio::time::timeout(LOCK_WAIT, self.locks.acquire(owner, &lock, &lock)).await;
            if !matches!(acquired, Ok(Ok(()))) {
                self.locks.release_all(owner);
                continue;
            }
            let result = self.maintain_table(&path, settings, &mut report).await;
            self.locks.release_all(owner);
            if let Err(err) = result {
                tracing::warn!(%err, table = %path, "maintenance of a table failed");
            }
        }
        Ok(report)
    }

    /// Pins `to`, a version with the same rows as the pinned `from` (a purge, a compaction, a
    /// table property) of a table or a mirror's key table, unless a writer moved the pin
    /// meanwhile.
    async fn repin_equivalent(&self, path: &str, from: u64, to: u64) -> Result<()> {
        self.catalog
            .commit(|state| {
                if let Some(pin) = pin_by_path_mut(state, path)
                    && *pin == from
                {
                    *pin = to;
                }
                Ok(())
            })
            .await?;
        self.record_equivalent(path, from, to);
        Ok(())
    }

    async fn maintain_table(
        &self,
        path: &str,
        settings: &MaintenanceSettings,
        report: &mut MaintenanceReport,
    ) -> Result<()> {
        // Read the pin under the lock: nobody can move it now but us.
        let pins = self.catalog_snapshot().table_pins();
        let Some((_, pinned)) = pins.into_iter().find(|(p, _)| p == path) else {
            return Ok(());
        };
        let table = self.storage.table(path)?;
        if table.has_commits_after(pinned).await? {
            // Leftovers of a transaction that never committed: its next writer undoes them.
            return Ok(());
        }
        let mut version = pinned;
        // A mirror table and its key table are rewritten by the rewrites its own rounds
        // start, which hold its lock only to commit: purging or compacting them here would
        // hold it while its rounds wait.
        let snapshot = self.catalog_snapshot();
        let is_mirror = snapshot
            .databases
            .values()
            .flat_map(|db| db.schemas.values())
            .flat_map(|schema| schema.relations.values())
            .any(|relation| {
                matches!(relation, tributary_catalog::Relation::Table(t)
                    if tributary_engine::mirror::spec(t).is_some()
                        && t.storage_pins().iter().any(|(p, _)| p == path))
            });
        if !is_mirror
            && let Some(purged) = table
                .purge_deleted(version, settings.purge_deleted_fraction)
                .await?
        {
            self.repin_equivalent(path, version, purged).await?;
            version = purged;
            report.purged += 1;
        }
        if !is_mirror
            && table.file_count(version).await? >= settings.compact_min_files
            && let Some(compacted) = table.compact(version, settings.target_file_bytes).await?
        {
            self.repin_equivalent(path, version, compacted).await?;
            version = compacted;
            report.compacted += 1;
            self.metrics.compactions.inc();
        }
        // The log keeps removed files as long as vacuum keeps them (see `vacuum`): Delta's
        // default is a week, which tables of earlier releases still have.
        if let Some(kept) = table
            .set_file_retention(version, settings.vacuum_retention)
            .await?
        {
            self.repin_equivalent(path, version, kept).await?;
            version = kept;
        }
        // Vacuum when the table changed since its last vacuum, or a retention period later
        // (when files removed then have become deletable).
        let due = {
            let vacuumed = self.vacuumed.lock();
            match vacuumed.get(path) {
                None => true,
                Some((at_version, at)) => {
                    *at_version != version || at.elapsed() >= settings.vacuum_retention
                }
            }
        };
        if due {
            // Delta's vacuum compares the files' removal times (wall-clock milliseconds) with
            // its own reading of the clock, taken after this one: under load, a file removed
            // just after the oldest open transaction started would pass for older than it.
            let open = self.active.oldest_age();
            let retention = if open.is_zero() {
                settings.vacuum_retention
            } else {
                settings.vacuum_retention.max(open + VACUUM_CLOCK_MARGIN)
            };
            let deleted = table.vacuum(retention).await?;
            report.files_deleted += deleted;
            self.metrics.vacuumed_files.inc_by(deleted as u64);
            self.vacuumed
                .lock()
                .insert(path.to_string(), (version, Instant::now()));
        }
        Ok(())
    }
}
