//! The counters and histograms of a running engine, and the recent queries the console lists.
//!
//! Events (records read, refreshes, queries, commits, maintenance) update counters and
//! histograms kept in [`Metrics`]. What is a state rather than an event (lag per shard,
//! sessions, memory) is read when a scrape asks for it, so that a dropped view or an ended
//! shard leaves no stale series behind. Names follow Prometheus conventions: a `tributary_`
//! prefix, base units as suffixes (`_seconds`, `_bytes`) and `_total` on counters.

use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::query_memory::SessionMemory;

/// Buckets from 64 KiB to 16 GiB, by fours: statements' peak query memory.
fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(65536.0, 4.0, 10))
}

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
    pub query_peak_memory: Histograms,
    pub sessions: Gauge,
    pub connections: Counter,
    pub compactions: Counter,
    pub vacuumed_files: Counter,
    pub mirror_work: Family<Labels, Counter>,
    recent: Mutex<VecDeque<QueryRecord>>,
    running: Running,
    statements: AtomicU64,
}

/// The statements running now, by a number of their own, with their sessions' memory.
type Running = Arc<Mutex<BTreeMap<u64, (QueryRecord, Arc<SessionMemory>)>>>;

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
            query_peak_memory: Family::new_with_constructor(bytes_histogram),
            sessions: Gauge::default(),
            connections: Counter::default(),
            compactions: Counter::default(),
            vacuumed_files: Counter::default(),
            mirror_work: Family::default(),
            recent: Mutex::default(),
            running: Running::default(),
            statements: AtomicU64::new(0),
        }
    }
}

/// A statement, finished or running, for the console.
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
    /// So far, while it runs.
    pub duration_micros: i64,
    /// `ok`, `running`, or the error's message.
    pub status: String,
    /// The query memory its operators hold now (0 once it has finished), in bytes.
    pub memory_bytes: u64,
    /// The most query memory they held at once, in bytes.
    pub peak_memory_bytes: u64,
}

/// Lists a statement among the running ones until it is dropped.
#[derive(Debug)]
pub struct RunningStatement {
    id: u64,
    running: Running,
}

impl Drop for RunningStatement {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
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

    /// Lists a statement as running from now until the returned guard is dropped, and
    /// starts the count of its session's memory.
    pub fn query_started(
        &self,
        record: &QueryRecord,
        memory: &Arc<SessionMemory>,
    ) -> RunningStatement {
        memory.start_statement();
        let id = self.statements.fetch_add(1, Ordering::Relaxed);
        let mut record = record.clone();
        cut_text(&mut record.text);
        self.running.lock().insert(id, (record, memory.clone()));
        RunningStatement {
            id,
            running: self.running.clone(),
        }
    }

    /// The statements running now, longest-running first, with their memory so far.
    pub fn running_queries(&self) -> Vec<QueryRecord> {
        let now = chrono::Utc::now().timestamp_micros();
        self.running
            .lock()
            .values()
            .map(|(record, memory)| QueryRecord {
                duration_micros: (now - record.start_micros).max(0),
                status: "running".to_string(),
                memory_bytes: memory.current() as u64,
                peak_memory_bytes: memory.peak() as u64,
                ..record.clone()
            })
            .collect()
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
        self.query_peak_memory
            .get_or_create(&command)
            .observe(record.peak_memory_bytes as f64);
        cut_text(&mut record.text);
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

/// Cuts a statement's text to what the console lists.
fn cut_text(text: &mut String) {
    if let Some((cut, _)) = text.char_indices().nth(QUERY_TEXT_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
}

/// Where [`allocated_memory_bytes`] comes from: the allocator, which the server's binary
/// chooses and registers here.
static ALLOCATED: std::sync::OnceLock<fn() -> Option<u64>> = std::sync::OnceLock::new();

/// Registers the allocator's count of the bytes the process holds allocated.
pub fn set_allocated_memory_source(source: fn() -> Option<u64>) {
    let _ = ALLOCATED.set(source);
}

/// The bytes the process holds allocated now, as its allocator counts them (None if the
/// binary registered no count): unlike the resident memory, it leaves out what the allocator
/// keeps of freed memory, so it shows what is really held.
pub fn allocated_memory_bytes() -> Option<u64> {
    ALLOCATED.get().and_then(|source| source())
}

/// The resident memory of this process, in bytes (Linux; None elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Every Linux platform this runs on uses 4 KiB pages.
    Some(pages * 4096)
}
