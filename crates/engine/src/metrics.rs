//! The counters and histograms of a running engine, and the recent queries the console lists.
//!
//! Events (records read, refreshes, queries, commits, maintenance) update counters and
//! histograms kept in [`Metrics`]. What is a state rather than an event (lag per shard,
//! sessions, memory) is read when a scrape asks for it, so that a dropped view or an ended
//! shard leaves no stale series behind. Names follow Prometheus conventions: a `tributary_`
//! prefix, base units as suffixes (`_seconds`, `_bytes`) and `_total` on counters.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// A series' labels, in order.
pub type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Queries kept for the console's list.
const RECENT_QUERIES: usize = 100;
/// Characters of a query's text kept for that list.
pub const QUERY_TEXT_CHARS: usize = 300;

/// Buckets from a millisecond to a minute: query, refresh and commit times, and freshness.
fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// The engine's event metrics.
#[derive(Debug)]
pub struct Metrics {
    pub stream_records: Family<Labels, Counter>,
    pub stream_bytes: Family<Labels, Counter>,
    pub view_rows: Family<Labels, Counter>,
    pub skipped: Family<Labels, Counter>,
    pub freshness: Histograms,
    pub refreshes: Family<Labels, Counter>,
    pub refresh_seconds: Histograms,
    pub commit_seconds: Histogram,
    pub queries: Family<Labels, Counter>,
    pub query_seconds: Histograms,
    pub sessions: Gauge,
    pub connections: Counter,
    pub compactions: Counter,
    pub vacuumed_files: Counter,
    pub mirror_work: Family<Labels, Counter>,
    recent: Mutex<VecDeque<QueryRecord>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            stream_records: Family::default(),
            stream_bytes: Family::default(),
            view_rows: Family::default(),
            skipped: Family::default(),
            freshness: Family::new_with_constructor(seconds_histogram),
            refreshes: Family::default(),
            refresh_seconds: Family::new_with_constructor(seconds_histogram),
            commit_seconds: seconds_histogram(),
            queries: Family::default(),
            query_seconds: Family::new_with_constructor(seconds_histogram),
            sessions: Gauge::default(),
            connections: Counter::default(),
            compactions: Counter::default(),
            vacuumed_files: Counter::default(),
            mirror_work: Family::default(),
            recent: Mutex::default(),
        }
    }
}

/// One finished statement, for the console.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueryRecord {
    pub user: String,
    pub database: String,
    /// The statement's text, cut to a few hundred characters.
    pub text: String,
    /// The command tag (`SELECT`, `INSERT`, ...).
    pub command: String,
    /// Microseconds since the epoch.
    pub start_micros: i64,
    pub duration_micros: i64,
    /// `ok`, or the error's message.
    pub status: String,
}

/// Counts a client connection while it lives.
#[derive(Debug)]
pub struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts a client session until the returned guard is dropped.
    pub fn session_opened(&self) -> SessionGuard {
        self.sessions.inc();
        self.connections.inc();
        SessionGuard(self.sessions.clone())
    }

    /// Records a finished statement.
    pub fn query(&self, mut record: QueryRecord, failed: bool) {
        let command = vec![("command", record.command.clone())];
        let mut labels = command.clone();
        labels.push(("status", if failed { "error" } else { "ok" }.to_string()));
        self.queries.get_or_create(&labels).inc();
        self.query_seconds
            .get_or_create(&command)
            .observe(record.duration_micros as f64 / 1e6);
        if let Some((cut, _)) = record.text.char_indices().nth(QUERY_TEXT_CHARS) {
            record.text.truncate(cut);
            record.text.push('…');
        }
        let mut recent = self.recent.lock();
        if recent.len() >= RECENT_QUERIES {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// The latest finished statements, oldest first.
    pub fn recent_queries(&self) -> Vec<QueryRecord> {
        self.recent.lock().iter().cloned().collect()
    }

    pub fn observe_commit(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }
}

/// The resident memory of this process, in bytes (Linux; None elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Every Linux platform this runs on uses 4 KiB pages.
    Some(pages * 4096)
}
