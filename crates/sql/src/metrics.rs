//! The Prometheus exposition of a running engine (`/metrics`), the console's list of recent
//! queries, and the timing of statements. The counters and histograms events update live in
//! [`tributary_engine::metrics`]; what is a state rather than an event (lag per shard,
//! sessions, memory) is read here when a scrape asks for it, so that a dropped view or an
//! ended shard leaves no stale series behind.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tributary_engine::metrics::{
    Labels, QUERY_TEXT_CHARS, QueryRecord, RunningStatement, SessionGuard, allocated_memory_bytes,
    resident_memory_bytes,
};
use tributary_engine::query_memory::SessionMemory;

type FloatGauge = Gauge<f64, AtomicU64>;

use crate::engine::Engine;

impl Engine {
    /// Counts a client session until the returned guard is dropped.
    pub fn session_opened(&self) -> SessionGuard {
        self.metrics.session_opened()
    }

    /// The latest statements clients ran, oldest first (at most a hundred).
    pub fn recent_queries(&self) -> Vec<QueryRecord> {
        self.metrics.recent_queries()
    }

    /// The statements clients are running now, with the query memory each holds.
    pub fn running_queries(&self) -> Vec<QueryRecord> {
        self.metrics.running_queries()
    }

    /// Every metric in Prometheus' text exposition format.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let mut registry = Registry::with_prefix("tributary");
        registry.register(
            "build",
            "The server's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        registry.register(
            "stream_records_read",
            "Stream records read, per view and shard (a Kafka partition's number)",
            m.stream_records.clone(),
        );
        registry.register_with_unit(
            "stream_read",
            "Bytes of stream record payloads read, per view and shard",
            Unit::Bytes,
            m.stream_bytes.clone(),
        );
        registry.register(
            "view_rows_written",
            "Rows a streaming view or mirror table stored",
            m.view_rows.clone(),
        );
        registry.register(
            "stream_records_skipped",
            "Stream records a view skipped, by reason (see sys_stream_scan_errors)",
            m.skipped.clone(),
        );
        registry.register_with_unit(
            "stream_freshness",
            "Time from a record's arrival in the stream to its being visible in the view",
            Unit::Seconds,
            m.freshness.clone(),
        );
        registry.register(
            "refreshes",
            "Refresh rounds that read records, per view and outcome",
            m.refreshes.clone(),
        );
        registry.register_with_unit(
            "refresh_duration",
            "Duration of refresh rounds that read records, commit included",
            Unit::Seconds,
            m.refresh_seconds.clone(),
        );
        registry.register_with_unit(
            "commit_duration",
            "Duration of the catalog commit of writing transactions",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        registry.register(
            "queries",
            "Statements clients ran, by command and outcome",
            m.queries.clone(),
        );
        registry.register_with_unit(
            "query_duration",
            "Statement duration, by command, until the last row is sent",
            Unit::Seconds,
            m.query_seconds.clone(),
        );
        registry.register_with_unit(
            "query_peak_memory",
            "The most query memory a statement's operators held at once, by command",
            Unit::Bytes,
            m.query_peak_memory.clone(),
        );
        registry.register("sessions", "Open client sessions", m.sessions.clone());
        registry.register(
            "connections",
            "Client sessions opened",
            m.connections.clone(),
        );
        registry.register(
            "compactions",
            "Tables compacted by background maintenance",
            m.compactions.clone(),
        );
        registry.register(
            "vacuum_deleted_files",
            "Data files vacuum deleted",
            m.vacuumed_files.clone(),
        );
        registry.register(
            "mirror_background_work",
            "Mirror table folds and coalesces finished, by kind",
            m.mirror_work.clone(),
        );
        self.register_states(&mut registry);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }

    /// Gauges read from the current state.
    fn register_states(&self, registry: &mut Registry) {
        let lag_seconds: Family<Labels, FloatGauge> = Family::default();
        let lag_records: Family<Labels, Gauge> = Family::default();
        let last_read: Family<Labels, FloatGauge> = Family::default();
        for view in tributary_streaming::streaming_views(&self.catalog_snapshot()) {
            let stats = self.streams.stats(&view.path);
            let labels = view.labels();
            if let Some(at) = stats.last_refresh {
                last_read
                    .get_or_create(&labels)
                    .set(at.and_utc().timestamp_micros() as f64 / 1e6);
            }
            for (shard, lag) in &stats.shards {
                let mut labels = labels.clone();
                labels.push(("shard", shard.clone()));
                if let Some(millis) = lag.millis_behind {
                    lag_seconds
                        .get_or_create(&labels)
                        .set(millis as f64 / 1000.0);
                }
                if let Some(records) = lag.records_behind {
                    lag_records.get_or_create(&labels).set(records);
                }
            }
        }
        registry.register_with_unit(
            "stream_lag",
            "How far a view's reader is behind the stream's tip, per shard (Kinesis)",
            Unit::Seconds,
            lag_seconds,
        );
        registry.register(
            "stream_lag_records",
            "Records between a view's reader and the tip, per partition (Kafka)",
            lag_records,
        );
        registry.register_with_unit(
            "stream_last_read_timestamp",
            "When a view last read its stream (Unix time)",
            Unit::Seconds,
            last_read,
        );
        let resident: Gauge = Gauge::default();
        resident.set(resident_memory_bytes().unwrap_or(0) as i64);
        registry.register_with_unit(
            "memory_resident",
            "Resident memory of the server process",
            Unit::Bytes,
            resident,
        );
        if let Some(bytes) = allocated_memory_bytes() {
            let allocated: Gauge = Gauge::default();
            allocated.set(bytes as i64);
            registry.register_with_unit(
                "memory_allocated",
                "Memory the server process holds allocated, as its allocator counts it",
                Unit::Bytes,
                allocated,
            );
        }
        let (used, limit) = self.query_memory();
        let reserved: Gauge = Gauge::default();
        reserved.set(used as i64);
        registry.register_with_unit(
            "query_memory_reserved",
            "Memory queries, the cache of table versions and sorted rewrites hold against the memory limit",
            Unit::Bytes,
            reserved,
        );
        let footers: Gauge = Gauge::default();
        footers.set(self.footer_cache_bytes() as i64);
        registry.register_with_unit(
            "footer_cache",
            "Memory the cache of Parquet file footers and page indexes holds (outside the memory limit, at most 50 MiB)",
            Unit::Bytes,
            footers,
        );
        let limit_gauge: Gauge = Gauge::default();
        limit_gauge.set(limit.map_or(-1, |l| l as i64));
        registry.register_with_unit(
            "query_memory_limit",
            "The query memory limit (--memory-limit; -1 when unlimited)",
            Unit::Bytes,
            limit_gauge,
        );
    }
}

/// The start of a statement's text: formatting stops after [`QUERY_TEXT_CHARS`], so a large
/// INSERT costs no more than a small one.
pub(crate) fn statement_text(statement: &impl std::fmt::Display) -> String {
    struct Limited(String);
    impl std::fmt::Write for Limited {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if self.0.len() >= QUERY_TEXT_CHARS * 4 {
                return Err(std::fmt::Error);
            }
            self.0.push_str(s);
            Ok(())
        }
    }
    let mut text = Limited(String::new());
    let _ = std::fmt::Write::write_fmt(&mut text, format_args!("{statement}"));
    text.0
}

/// The command of a statement that returns rows, from its first word: `SELECT` for queries
/// (`WITH` and parenthesized ones included), else the word (`SHOW`, `EXPLAIN`, `FETCH`, ...).
pub(crate) fn row_command(text: &str) -> String {
    let word: String = text
        .trim_start_matches(|c: char| c == '(' || c.is_whitespace())
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_uppercase();
    match word.as_str() {
        "" | "WITH" | "VALUES" | "TABLE" => "SELECT".to_string(),
        _ => word,
    }
}

/// A statement being timed: recorded with its peak query memory when its result is complete
/// (for rows, when the last one is sent, or as cancelled when they stop before it). Until
/// then it is listed among the running statements.
pub(crate) struct QueryTimer {
    pub engine: std::sync::Arc<Engine>,
    pub record: QueryRecord,
    pub started: std::time::Instant,
    memory: std::sync::Arc<SessionMemory>,
    _running: RunningStatement,
}

impl QueryTimer {
    /// Starts timing a statement of a session whose query memory is `memory`.
    pub(crate) fn start(
        engine: std::sync::Arc<Engine>,
        record: QueryRecord,
        memory: std::sync::Arc<SessionMemory>,
    ) -> Self {
        let running = engine.metrics.query_started(&record, &memory);
        Self {
            engine,
            record,
            started: std::time::Instant::now(),
            memory,
            _running: running,
        }
    }

    pub(crate) fn finish(mut self, error: Option<String>) {
        self.record.duration_micros = self.started.elapsed().as_micros() as i64;
        self.record.peak_memory_bytes = self.memory.peak() as u64;
        let failed = error.is_some();
        self.record.status = error.unwrap_or_else(|| "ok".to_string());
        self.engine.metrics.query(self.record, failed);
    }
}

/// Rows passed through to the client; the statement is recorded when they end.
pub(crate) struct TimedStream {
    inner: datafusion::execution::SendableRecordBatchStream,
    timer: Option<QueryTimer>,
}

impl TimedStream {
    pub(crate) fn new(
        inner: datafusion::execution::SendableRecordBatchStream,
        timer: QueryTimer,
    ) -> Self {
        Self {
            inner,
            timer: Some(timer),
        }
    }
}

impl futures::Stream for TimedStream {
    type Item = datafusion::error::Result<arrow::array::RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            std::task::Poll::Ready(None) => {
                if let Some(timer) = self.timer.take() {
                    timer.finish(None);
                }
            }
            std::task::Poll::Ready(Some(Err(err))) => {
                if let Some(timer) = self.timer.take() {
                    timer.finish(Some(err.to_string()));
                }
            }
            _ => {}
        }
        polled
    }
}

impl datafusion::physical_plan::RecordBatchStream for TimedStream {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.schema()
    }
}

impl Drop for TimedStream {
    fn drop(&mut self) {
        // The rows stopped before their end: a cancel request, or a client gone. (Every
        // result is sent whole otherwise: there are no cursors or portal row limits yet.)
        if let Some(timer) = self.timer.take() {
            timer.finish(Some(
                "cancelled before all its rows were sent (a cancel request, or the client went away)"
                    .to_string(),
            ));
        }
    }
}
