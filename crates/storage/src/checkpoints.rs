//! Delta checkpoints, written in the background after commits, so that loading a table reads
//! its last checkpoint and the few commits after it instead of replaying its whole log.
//!
//! Commits go through delta-rs's transaction API or straight to the log store (deletion
//! vectors, rewrites), neither of which writes checkpoints; without them a table that a
//! streaming view or a mirror commits to every second would replay a log that grows without
//! end each time a version is loaded, and after every restart. Every commit made here reports
//! its version ([`Checkpoints::committed`]); a table is checkpointed at most one version at a
//! time, and the server writes one checkpoint at a time, off the commit's path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use delta_kernel::snapshot::Snapshot;
use deltalake::DeltaTableBuilder;
use deltalake::table::config::TablePropertiesExt as _;
use parking_lot::Mutex;
use url::Url;

use crate::Result;

/// Commits between checkpoints of a table at least; tables created here say the same in
/// their `delta.checkpointInterval`.
pub(crate) const CHECKPOINT_COMMITS: u64 = 10;

/// What a checkpoint may cost per commit it covers. A checkpoint rewrites every file of the
/// table and every tombstone still within the table's retention, so a large table's takes
/// long; it is then written after more commits, and checkpoints keep a bounded share of the
/// server's time (a checkpoint of 1 s is written every 200 commits).
const CHECKPOINT_COST_PER_COMMIT: Duration = Duration::from_millis(5);

/// How often at most a table's log files older than its log retention are deleted (each
/// cleanup lists the log).
const LOG_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

/// The server's background checkpoints.
#[derive(Debug, Default, Clone)]
pub(crate) struct Checkpoints {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tables: Mutex<HashMap<Url, TableCheckpoints>>,
    /// One checkpoint at a time: each is a log replay and a Parquet write.
    writing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct TableCheckpoints {
    /// The first version worth a checkpoint; 0 for a table not checkpointed since the server
    /// started, so that a table written by an earlier release gets one at its next commit.
    due: u64,
    /// A checkpoint of the table is being written.
    running: bool,
    /// The newest version committed while it was.
    waiting: Option<u64>,
    /// When its expired log files were last deleted.
    cleaned: Option<Instant>,
}

impl Checkpoints {
    /// Reports that `version` of the table at `url` was committed; a checkpoint of it starts
    /// in the background when one is due. Outside a Tokio runtime nothing is written.
    pub(crate) fn committed(&self, url: &Url, version: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut tables = self.inner.tables.lock();
        let table = tables.entry(url.clone()).or_default();
        if version < table.due || version == 0 {
            return;
        }
        if table.running {
            table.waiting = table.waiting.max(Some(version));
            return;
        }
        table.running = true;
        let inner = self.inner.clone();
        let url = url.clone();
        runtime.spawn(async move { inner.run(url, version).await });
    }

    /// Forgets a deleted table.
    pub(crate) fn forget(&self, url: &Url) {
        self.inner.tables.lock().remove(url);
    }

    /// Waits until no checkpoint is being written or waits to be (tests).
    #[cfg(test)]
    pub(crate) async fn idle(&self) {
        loop {
            if !self.inner.tables.lock().values().any(|table| table.running) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Inner {
    /// Checkpoints `version` of the table at `url`, then the newest version committed
    /// meanwhile if it is due by then.
    async fn run(&self, url: Url, mut version: u64) {
        loop {
            let cleanup = self
                .tables
                .lock()
                .get(&url)
                .and_then(|table| table.cleaned)
                .is_none_or(|at| at.elapsed() >= LOG_CLEANUP_INTERVAL);
            let started = Instant::now();
            let written = {
                let _writing = self.writing.lock().await;
                write(&url, version, cleanup).await
            };
            let cost = started.elapsed();
            match &written {
                Ok(()) => tracing::debug!(table = %url, version, ?cost, "checkpoint written"),
                Err(err) => {
                    tracing::warn!(table = %url, version, error = %err, "a checkpoint failed; the table's next commits retry it")
                }
            }
            let mut tables = self.tables.lock();
            let Some(table) = tables.get_mut(&url) else {
                return;
            };
            let spacing = (cost.as_micros() / CHECKPOINT_COST_PER_COMMIT.as_micros()) as u64;
            table.due = version + spacing.max(CHECKPOINT_COMMITS);
            if cleanup && written.is_ok() {
                table.cleaned = Some(Instant::now());
            }
            match table.waiting.take() {
                Some(newer) if newer >= table.due => version = newer,
                _ => {
                    table.running = false;
                    return;
                }
            }
        }
    }
}

/// Writes the checkpoint of `version` (nothing if it has one), and with `cleanup` deletes the
/// log files its log retention no longer keeps.
async fn write(url: &Url, version: u64, cleanup: bool) -> Result<()> {
    let log_store = DeltaTableBuilder::from_url(url.clone())?.build_storage()?;
    let engine = log_store.engine(None);
    let root = log_store.transaction_url(None)?;
    // The kernel's default engine blocks on its own I/O.
    let retention = tokio::task::spawn_blocking(move || -> Result<Duration> {
        let kernel = |err: delta_kernel::Error| deltalake::DeltaTableError::from(err);
        let snapshot = Snapshot::builder_for(root)
            .at_version(version)
            .build(engine.as_ref())
            .map_err(kernel)?;
        snapshot.checkpoint(engine.as_ref(), None).map_err(kernel)?;
        // Delta's 30 days when the table does not set `delta.logRetentionDuration`.
        Ok(snapshot.table_properties().log_retention_duration())
    })
    .await
    .map_err(|err| crate::Error::Internal(format!("a checkpoint's task failed: {err}")))??;
    if cleanup {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        deltalake::checkpoints::cleanup_expired_logs_for(
            version,
            log_store.as_ref(),
            cutoff.timestamp_millis(),
            None,
        )
        .await?;
    }
    Ok(())
}
