//! What the web console shows, as JSON: the streaming views and mirror tables with their
//! state and counters, the external schemas they read, and the latest refreshes, skipped
//! records and queries. A user who is not a superuser sees what the system views show it:
//! the relations it may use, and its own queries.

use serde_json::{Value, json};

use crate::engine::Engine;
use crate::system::may_see;

/// Entries of each recent list.
const RECENT: usize = 50;

fn micros(at: chrono::NaiveDateTime) -> i64 {
    at.and_utc().timestamp_micros()
}

impl Engine {
    /// The console's view of the server, as `user` may see it.
    pub fn console_status(&self, user: &str) -> Value {
        let state = self.catalog_snapshot();
        let superuser = state.is_superuser(user);
        let mut views = Vec::new();
        for view in tributary_streaming::streaming_views(&state) {
            if !may_see(&state, user, &view.database, &view.schema, &view.name) {
                continue;
            }
            let Ok(table) = state.table(&view.database, &view.schema, &view.name) else {
                continue;
            };
            let Some(mv) = &table.materialized else {
                continue;
            };
            let source = state
                .schema(&view.database, &mv.source_schema)
                .ok()
                .and_then(|s| s.external.as_ref())
                .map(|e| e.kind_name());
            let stats = self.streams.stats(&view.path);
            let shards: Vec<Value> = stats
                .shards
                .iter()
                .map(|(id, lag)| {
                    json!({
                        "id": id,
                        "lag_seconds": lag.millis_behind.map(|m| m as f64 / 1000.0),
                        "lag_records": lag.records_behind,
                        "error": lag.last_error,
                    })
                })
                .collect();
            let lag_seconds = stats
                .shards
                .values()
                .filter_map(|l| l.millis_behind)
                .max()
                .map(|m| m as f64 / 1000.0);
            let lag_records = stats
                .shards
                .values()
                .filter_map(|l| l.records_behind)
                .reduce(|a, b| a + b);
            let state_name = if stats.last_error.is_some() {
                "failing"
            } else if !mv.auto_refresh {
                "manual refresh"
            } else if stats.last_refresh.is_none() {
                "starting"
            } else {
                "running"
            };
            views.push(json!({
                "database": view.database,
                "schema": view.schema,
                "name": view.name,
                "kind": if mv.mirror.is_some() { "mirror table" } else { "streaming view" },
                "source": source,
                "external_schema": mv.source_schema,
                "stream": mv.stream,
                "auto_refresh": mv.auto_refresh,
                "state": state_name,
                "error": stats.last_error,
                "records": stats.records,
                "bytes": stats.bytes,
                "rows": stats.rows,
                "skipped": stats.skipped,
                "freshness_p50_seconds": stats.freshness.map(|f| f.0),
                "freshness_max_seconds": stats.freshness.map(|f| f.1),
                "lag_seconds": lag_seconds,
                "lag_records": lag_records,
                "last_read_micros": stats.last_refresh.map(micros),
                "shards": shards,
            }));
        }
        let mut sources = Vec::new();
        for (database, db) in &state.databases {
            for (schema, s) in &db.schemas {
                let Some(external) = s.external.as_ref().filter(|e| e.is_stream()) else {
                    continue;
                };
                let readers = views
                    .iter()
                    .filter(|v| v["database"] == *database && v["external_schema"] == *schema)
                    .count();
                if !superuser && readers == 0 && s.owner != user {
                    continue;
                }
                sources.push(json!({
                    "database": database,
                    "schema": schema,
                    "source": external.kind_name(),
                    "views": readers,
                }));
            }
        }
        let visible = |database: &str, schema: &str, name: &str| {
            may_see(&state, user, database, schema, name)
        };
        let refreshes: Vec<Value> = self
            .streams
            .history()
            .iter()
            .rev()
            .filter(|r| visible(&r.database, &r.schema, &r.name))
            .take(RECENT)
            .map(|r| {
                json!({
                    "database": r.database,
                    "schema": r.schema,
                    "name": r.name,
                    "type": if r.manual { "Manual" } else { "Auto" },
                    "start_micros": micros(r.start),
                    "duration_micros": (r.end - r.start).num_microseconds(),
                    "records": r.records,
                    "skipped": r.skipped,
                    "status": r.status,
                })
            })
            .collect();
        let skipped: Vec<Value> = self
            .streams
            .recent_skips()
            .iter()
            .rev()
            .filter(|e| visible(&e.database, &e.schema, &e.mv_name))
            .take(RECENT)
            .map(|e| {
                json!({
                    "database": e.database,
                    "schema": e.schema,
                    "name": e.mv_name,
                    "shard": e.shard_id,
                    "position": e.position,
                    "time_micros": e.record_time_micros,
                    "code": e.code,
                    "reason": e.reason,
                    "size": e.record_size,
                })
            })
            .collect();
        let queries: Vec<crate::QueryRecord> = self
            .recent_queries()
            .into_iter()
            .rev()
            .filter(|q| superuser || q.user == user)
            .take(RECENT)
            .collect();
        let running: Vec<crate::QueryRecord> = self
            .running_queries()
            .into_iter()
            .filter(|q| superuser || q.user == user)
            .collect();
        let (reserved, limit) = self.query_memory();
        json!({
            "version": concat!("Tributary ", env!("CARGO_PKG_VERSION")),
            "user": user,
            "now_micros": chrono::Utc::now().timestamp_micros(),
            "sessions": self.metrics.sessions.get(),
            "memory_resident_bytes": tributary_engine::metrics::resident_memory_bytes(),
            "memory_allocated_bytes": tributary_engine::metrics::allocated_memory_bytes(),
            "query_memory_reserved_bytes": reserved,
            "query_memory_limit_bytes": limit,
            "sources": sources,
            "views": views,
            "refreshes": refreshes,
            "skipped": skipped,
            "running": running,
            "queries": queries,
        })
    }
}
