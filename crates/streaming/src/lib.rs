//! Streaming materialized views at run time: refresh rounds (read, run the view's query, apply
//! or append, commit with the new positions), the AUTO REFRESH runner, compiled pipelines,
//! aggregate merges, mirror apply and fold, the scan-error log and the streaming system views.
//! The statements that create and alter them are the SQL front end's.
//!
//! A refresh round runs in a transaction. It takes the view's write lock, reads the view's
//! committed positions from the catalog snapshot taken under that lock, reads the stream from
//! there, runs the view's query over the records, appends the rows, and sets the new
//! positions in the same catalog commit as the rows (invariant 1: no other offset store). A
//! crash before that commit leaves the old positions and an unpinned Delta version, which
//! recovery undoes, so the records are read again exactly once.
//!
//! Records that cannot be used (over the size limit, or whose evaluation fails) are skipped
//! and written to the scan-error log, which `sys_stream_scan_errors` reads.

pub mod aggregate;
pub mod errors;
mod host;
mod kafka;
pub mod mirror;
pub mod pipeline;
pub mod round;
mod runner;
pub mod views;

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tributary_catalog::{ExternalSource, MaterializedView, Relation};
use tributary_engine::{Error, Result};
use tributary_ingest::{
    KafkaSource, KinesisSource, ShardLag, StreamReader, StreamRecord, StreamSource,
};

pub use errors::{ScanError, schema as scan_errors_schema};
pub use host::{Host, PrivateSession};
pub use kafka::kafka_properties;
pub use pipeline::Pipeline;
pub use round::{RoundStats, forget, prepare, round};
pub use runner::{StreamingSettings, spawn_streaming};
pub use views::{VIEWS as SYSTEM_VIEWS, scan_errors, system_view};

/// Redshift's largest VARBYTE, and its default limit on a stream record's size.
pub const VARBYTE_MAX: u32 = 1_024_000;
/// Refreshes kept for `sys_mv_refresh_history`.
const HISTORY_KEPT: usize = 10_000;

/// The streaming state of an engine: settings, stream clients, per-view counters, the
/// refresh history, the auto-refresh tasks and the running mirror folds.
#[derive(Debug, Default)]
pub struct Streams {
    settings: Mutex<StreamingSettings>,
    sources: tokio::sync::Mutex<HashMap<Option<String>, KinesisSource>>,
    stats: Mutex<HashMap<String, ViewStats>>,
    history: Mutex<VecDeque<RefreshRecord>>,
    errors: errors::ErrorLog,
    /// The latest skipped records, for the console (sys_stream_scan_errors keeps them all).
    recent_skips: Mutex<VecDeque<ScanError>>,
    skip_log: Mutex<HashMap<String, SkipLog>>,
    runners: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// The mirror tables whose files a background rewrite works on, by storage path, each
    /// with whether a round asked for a rewrite again while it ran.
    mirror_work: Mutex<HashMap<String, bool>>,
}

/// Counters of one view since the server started.
#[derive(Debug, Clone, Default)]
pub struct ViewStats {
    pub shards: BTreeMap<String, ShardLag>,
    pub last_refresh: Option<chrono::NaiveDateTime>,
    /// Records read, payload bytes read, rows stored and records skipped.
    pub records: u64,
    pub bytes: u64,
    pub rows: u64,
    pub skipped: u64,
    /// Median and largest arrival-to-visible time of the last automatic round that read
    /// records, in seconds.
    pub freshness: Option<(f64, f64)>,
    /// Why the last round failed, until one succeeds.
    pub last_error: Option<String>,
}

/// Skipped records not yet reported in the log, per view.
#[derive(Debug, Default)]
struct SkipLog {
    /// Skips since the last line, by reason code.
    pending: BTreeMap<String, u64>,
    /// One reason of those, as an example.
    example: Option<String>,
    logged: Option<Instant>,
}

/// At most one log line per view per this long about skipped records.
const SKIP_LOG_EVERY: Duration = Duration::from_secs(10);
/// Skipped records kept in memory for the console.
const RECENT_SKIPS: usize = 100;

/// One refresh, for `sys_mv_refresh_history`.
#[derive(Debug, Clone)]
pub struct RefreshRecord {
    pub database: String,
    pub schema: String,
    pub name: String,
    pub manual: bool,
    pub start: chrono::NaiveDateTime,
    pub end: chrono::NaiveDateTime,
    pub records: u64,
    pub skipped: u64,
    pub status: String,
}

impl RefreshRecord {
    /// A refresh of `view` that began at `start` and ends now, with its outcome.
    pub fn new(
        view: &ViewId,
        manual: bool,
        start: chrono::NaiveDateTime,
        outcome: &Result<RoundStats>,
    ) -> Self {
        let (records, skipped, status) = match outcome {
            Ok(stats) => (stats.records, stats.skipped, stats.status()),
            Err(err) => (0, 0, format!("Refresh failed: {err}")),
        };
        Self {
            database: view.database.clone(),
            schema: view.schema.clone(),
            name: view.name.clone(),
            manual,
            start,
            end: chrono::Utc::now().naive_utc(),
            records,
            skipped,
            status,
        }
    }
}

impl Streams {
    pub fn settings(&self) -> StreamingSettings {
        self.settings.lock().clone()
    }

    pub fn set_settings(&self, settings: StreamingSettings) {
        *self.settings.lock() = settings;
    }

    /// Marks a background rewrite of the mirror stored at `path` as running; false if one
    /// runs already, which then owes another look (see [`Streams::more_work`]).
    pub fn begin_work(&self, path: &str) -> bool {
        let mut work = self.mirror_work.lock();
        match work.get_mut(path) {
            Some(asked_again) => {
                *asked_again = true;
                false
            }
            None => {
                work.insert(path.to_string(), false);
                true
            }
        }
    }

    /// Whether the running rewrite of `path` was asked for again since it began or last
    /// asked: true means it goes on (and the request is taken); false ends its mark. Under
    /// one lock with [`Streams::begin_work`], so a round that commits as a rewrite ends
    /// either starts a new one or is seen by this one, and its files are never left waiting
    /// for a round that may not come.
    pub fn more_work(&self, path: &str) -> bool {
        let mut work = self.mirror_work.lock();
        match work.get_mut(path) {
            Some(asked_again) if *asked_again => {
                *asked_again = false;
                true
            }
            _ => {
                work.remove(path);
                false
            }
        }
    }

    pub fn end_work(&self, path: &str) {
        self.mirror_work.lock().remove(path);
    }

    async fn source(&self, external: &ExternalSource) -> Result<StreamSource> {
        let region = match external {
            ExternalSource::Kinesis { region, .. } => region,
            ExternalSource::Kafka { .. } => {
                return Ok(StreamSource::Kafka(KafkaSource::new(kafka_properties(
                    external,
                )?)));
            }
            ExternalSource::Redshift { database, schema } => {
                return Err(Error::WrongObjectType(format!(
                    "the external schema maps {database}.{schema}, which is not a stream source"
                )));
            }
        };
        let mut sources = self.sources.lock().await;
        if let Some(source) = sources.get(region) {
            return Ok(StreamSource::Kinesis(source.clone()));
        }
        let endpoint = self.settings().kinesis_endpoint;
        let source = KinesisSource::connect(region.as_deref(), endpoint.as_deref()).await;
        sources.insert(region.clone(), source.clone());
        Ok(StreamSource::Kinesis(source))
    }

    pub fn record(&self, record: RefreshRecord) {
        let mut history = self.history.lock();
        if history.len() >= HISTORY_KEPT {
            history.pop_front();
        }
        history.push_back(record);
    }

    pub fn history(&self) -> Vec<RefreshRecord> {
        self.history.lock().iter().cloned().collect()
    }

    /// Keeps the latest skipped records and logs them: the first skip of a view at once, then
    /// one line per view per [`SKIP_LOG_EVERY`] with the counts by reason, so that a flood of
    /// bad records leaves a log a person can read. Called every round, with or without skips,
    /// so that the last counts of a flood are logged too.
    fn note_skipped(&self, view: &ViewId, skipped: &[ScanError]) {
        if !skipped.is_empty() {
            let mut recent = self.recent_skips.lock();
            for error in skipped.iter().rev().take(RECENT_SKIPS).rev() {
                if recent.len() >= RECENT_SKIPS {
                    recent.pop_front();
                }
                recent.push_back(error.clone());
            }
        }
        let mut logs = self.skip_log.lock();
        if skipped.is_empty() && !logs.contains_key(&view.path) {
            return;
        }
        let log = logs.entry(view.path.clone()).or_default();
        for error in skipped {
            *log.pending.entry(error.code.clone()).or_default() += 1;
            if log.example.is_none() {
                log.example = Some(format!(
                    "shard {} position {}: {}",
                    error.shard_id, error.position, error.reason
                ));
            }
        }
        if log.pending.is_empty() || log.logged.is_some_and(|at| at.elapsed() < SKIP_LOG_EVERY) {
            return;
        }
        let total: u64 = log.pending.values().sum();
        let reasons = log
            .pending
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let example = log.example.take().unwrap_or_default();
        tracing::warn!(
            view = %view.qualified(),
            skipped = total,
            %reasons,
            %example,
            "stream records skipped (details in sys_stream_scan_errors)"
        );
        log.pending.clear();
        log.logged = Some(Instant::now());
    }

    /// The latest skipped records, oldest first.
    pub fn recent_skips(&self) -> Vec<ScanError> {
        self.recent_skips.lock().iter().cloned().collect()
    }

    fn update_stats(&self, path: &str, reader: &StreamReader) {
        let mut stats = self.stats.lock();
        let entry = stats.entry(path.to_string()).or_default();
        entry.shards = reader.lag().clone();
        entry.last_refresh = Some(chrono::Utc::now().naive_utc());
    }

    /// Counts records read, per shard, in the metrics and the view's counters.
    fn count_read(
        &self,
        metrics: &tributary_engine::metrics::Metrics,
        view: &ViewId,
        records: &[StreamRecord],
    ) {
        if records.is_empty() {
            return;
        }
        let mut per_shard: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for record in records {
            let counts = per_shard.entry(&record.shard_id).or_default();
            counts.0 += 1;
            counts.1 += record.data.len() as u64;
        }
        let (mut records_total, mut bytes_total) = (0, 0);
        for (shard, (records, bytes)) in per_shard {
            let mut labels = view.labels();
            labels.push(("shard", shard.to_string()));
            metrics
                .stream_records
                .get_or_create(&labels)
                .inc_by(records);
            metrics.stream_bytes.get_or_create(&labels).inc_by(bytes);
            records_total += records;
            bytes_total += bytes;
        }
        let mut stats = self.stats.lock();
        let entry = stats.entry(view.path.clone()).or_default();
        entry.records += records_total;
        entry.bytes += bytes_total;
    }

    pub fn stats(&self, path: &str) -> ViewStats {
        self.stats.lock().get(path).cloned().unwrap_or_default()
    }
}

/// A streaming view, by name and storage path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewId {
    pub database: String,
    pub schema: String,
    pub name: String,
    pub path: String,
}

impl ViewId {
    /// `database.schema.name`, for logs.
    pub fn qualified(&self) -> String {
        format!("{}.{}.{}", self.database, self.schema, self.name)
    }

    /// The view's metric labels.
    pub fn labels(&self) -> tributary_engine::metrics::Labels {
        vec![
            ("database", self.database.clone()),
            ("schema", self.schema.clone()),
            ("view", self.name.clone()),
        ]
    }
}

/// Every materialized view that reads a stream (streaming views and mirror tables).
pub fn streaming_views(state: &tributary_catalog::CatalogState) -> Vec<ViewId> {
    views_where(state, |mv| mv.input.is_stream())
}

/// The materialized views, of every database, for which `keep` holds.
pub fn views_where(
    state: &tributary_catalog::CatalogState,
    keep: impl Fn(&MaterializedView) -> bool,
) -> Vec<ViewId> {
    let mut views = Vec::new();
    for (database, db) in &state.databases {
        for (schema, s) in &db.schemas {
            for (name, relation) in &s.relations {
                if let Relation::Table(table) = relation
                    && table.materialized.as_deref().is_some_and(&keep)
                {
                    views.push(ViewId {
                        database: database.clone(),
                        schema: schema.clone(),
                        name: name.clone(),
                        path: table.path.clone(),
                    });
                }
            }
        }
    }
    views
}

/// Counts a finished refresh round in the metrics and the view's counters. `took` covers the
/// round and its commit; with `visible_micros` (when its rows became visible), the round's
/// records give the view's freshness.
pub fn observe_round(
    engine: &dyn Host,
    view: &ViewId,
    outcome: &Result<RoundStats>,
    took: Duration,
    visible_micros: Option<i64>,
) {
    let metrics = engine.metrics();
    let labels = view.labels();
    let mut stats = engine.streams().stats.lock();
    let entry = stats.entry(view.path.clone()).or_default();
    let mut with_status = labels.clone();
    match outcome {
        Ok(round) => {
            entry.last_error = None;
            if round.records == 0 && round.skipped == 0 {
                return;
            }
            with_status.push(("status", "ok".to_string()));
            metrics.view_rows.get_or_create(&labels).inc_by(round.rows);
            entry.rows += round.rows;
            entry.skipped += round.skipped;
            if let Some(visible) = visible_micros
                && !round.arrivals.is_empty()
            {
                let freshness = metrics.freshness.get_or_create(&labels);
                let mut seconds: Vec<f64> = round
                    .arrivals
                    .iter()
                    .map(|arrival| (visible - arrival).max(0) as f64 / 1e6)
                    .collect();
                for value in &seconds {
                    freshness.observe(*value);
                }
                seconds.sort_by(f64::total_cmp);
                entry.freshness = Some((seconds[seconds.len() / 2], seconds[seconds.len() - 1]));
            }
        }
        Err(err) => {
            with_status.push(("status", "failed".to_string()));
            entry.last_error = Some(err.to_string());
        }
    }
    drop(stats);
    metrics.refreshes.get_or_create(&with_status).inc();
    metrics
        .refresh_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}
