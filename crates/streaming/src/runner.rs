//! AUTO REFRESH: one task per view with AUTO REFRESH YES, running refresh rounds back to back
//! while the stream has a backlog and every `refresh_interval` once caught up. A supervisor
//! starts and stops the tasks as views are created, altered and dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_catalog::CatalogState;

use super::{Pipeline, RefreshRecord, ViewId};
use crate::Result;
use crate::host::Host;

/// How often the supervisor compares running tasks with the catalog.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Knobs of streaming ingestion.
#[derive(Debug, Clone)]
pub struct StreamingSettings {
    /// How long an auto-refreshing view waits between rounds once it is caught up; rows
    /// become visible within about this long after they enter the stream.
    pub refresh_interval: Duration,
    /// Records larger than this are skipped and logged (Redshift: 1,024,000 bytes).
    pub max_record_bytes: usize,
    /// GetRecords' limit per shard and call; bounds what one round holds in memory.
    pub records_per_shard: i32,
    /// The Kinesis endpoint, overriding the AWS SDK's configuration chain (which reads
    /// `AWS_ENDPOINT_URL_KINESIS`, the region and credentials from the environment).
    pub kinesis_endpoint: Option<String>,
    /// Set when `kinesis_endpoint` is the embedded stream service (CREATE EXTERNAL SCHEMA says
    /// so to the client).
    pub embedded_stream_service: bool,
}

impl Default for StreamingSettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_millis(200),
            max_record_bytes: super::VARBYTE_MAX as usize,
            records_per_shard: 10_000,
            kinesis_endpoint: None,
            embedded_stream_service: false,
        }
    }
}

fn auto_refresh_views(state: &CatalogState) -> Vec<ViewId> {
    super::views_where(state, |mv| mv.auto_refresh)
}

/// Starts the supervisor of auto-refreshing views (once per engine).
pub fn spawn_streaming(engine: &Arc<dyn Host>, settings: StreamingSettings) {
    engine.streams().set_settings(settings);
    let engine = Arc::downgrade(engine);
    tributary_engine::runtime::compute().spawn(async move {
        loop {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            supervise(&engine);
            drop(engine);
            tokio::time::sleep(SUPERVISE_EVERY).await;
        }
    });
}

fn supervise(engine: &Arc<dyn Host>) {
    let wanted = auto_refresh_views(&engine.store().catalog_snapshot());
    let wanted_paths: HashSet<&str> = wanted.iter().map(|v| v.path.as_str()).collect();
    let mut runners = engine.streams().runners.lock();
    // A task whose view is gone or no longer auto-refreshing ends at its next round; it
    // is never aborted, because aborting it in the middle of a commit could leave the
    // catalog log ahead of the engine.
    runners.retain(|path, task| {
        let finished = task.is_finished();
        if finished && !wanted_paths.contains(path.as_str()) {
            super::forget(engine.as_ref(), path);
        }
        !finished
    });
    for view in wanted {
        if runners.contains_key(&view.path) {
            continue;
        }
        tracing::debug!(view = %view.name, "auto refresh started");
        let engine = Arc::downgrade(engine);
        let path = view.path.clone();
        runners.insert(
            path,
            tributary_engine::runtime::compute().spawn(run(engine, view)),
        );
    }
}

/// The view's current name and definition, found by its storage path (stable across
/// renames); None once it is dropped or no longer auto-refreshing.
fn current(state: &CatalogState, path: &str) -> Option<ViewId> {
    auto_refresh_views(state)
        .into_iter()
        .find(|v| v.path == path)
}

async fn run(engine: std::sync::Weak<dyn Host>, view: ViewId) {
    let mut compiled: Option<Compiled> = None;
    let mut backoff = Duration::from_millis(500);
    let mut last_error: Option<(String, Instant)> = None;
    loop {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let Some(view) = current(&engine.store().catalog_snapshot(), &view.path) else {
            return;
        };
        let start = chrono::Utc::now().naive_utc();
        let started = Instant::now();
        let result = round(&engine, &view, &mut compiled).await;
        if let Ok(stats) = &result {
            tracing::debug!(view = %view.name, records = stats.records, elapsed = ?started.elapsed(), "round committed");
        }
        // The round's transaction has committed (or failed): its rows are visible now.
        super::observe_round(
            engine.as_ref(),
            &view,
            &result,
            started.elapsed(),
            Some(chrono::Utc::now().timestamp_micros()),
        );
        let interval = engine.streams().settings().refresh_interval;
        let pause = match &result {
            Ok(stats) => {
                backoff = Duration::from_millis(500);
                last_error = None;
                if stats.records > 0 || stats.skipped > 0 {
                    engine
                        .streams()
                        .record(RefreshRecord::new(&view, false, start, &result));
                }
                if stats.caught_up {
                    interval.saturating_sub(started.elapsed())
                } else {
                    Duration::ZERO
                }
            }
            Err(err) => {
                // The compiled query or the reader may be what failed: start afresh.
                compiled = None;
                let text = err.to_string();
                // One line per distinct error, or per minute while it repeats.
                let repeat = last_error.as_ref().is_some_and(|(last, at)| {
                    *last == text && at.elapsed() < Duration::from_secs(60)
                });
                if !repeat {
                    tracing::warn!(view = %view.qualified(), error = %text, "refresh failed; retrying with backoff");
                    last_error = Some((text, Instant::now()));
                    engine
                        .streams()
                        .record(RefreshRecord::new(&view, false, start, &result));
                }
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        drop(engine);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A view's compiled query and its reader, and what they were made from: the view's SQL and
/// its external schema's source (an ALTER EXTERNAL SCHEMA makes a new reader).
struct Compiled {
    definition: Option<(String, Option<tributary_catalog::ExternalSource>)>,
    pipeline: Pipeline,
    reader: tributary_ingest::StreamReader,
}

/// One automatic round in a transaction of the view's own session.
async fn round(
    engine: &Arc<dyn Host>,
    view: &ViewId,
    compiled: &mut Option<Compiled>,
) -> Result<super::RoundStats> {
    let (definition, owner) = {
        let state = engine.store().catalog_snapshot();
        let table = state.table(&view.database, &view.schema, &view.name)?;
        let definition = table.materialized.as_ref().map(|mv| {
            let source = state
                .schema(&view.database, &mv.source_schema)
                .ok()
                .and_then(|schema| schema.external.clone());
            (mv.sql.clone(), source)
        });
        (definition, table.owner.clone())
    };
    if compiled.as_ref().is_none_or(|c| c.definition != definition) {
        let session = engine.clone().session(&owner, &view.database)?;
        let (reader, pipeline) = super::prepare(engine, session.catalogs(), view).await?;
        if let Some((_, source)) = &definition {
            let state = engine.store().catalog_snapshot();
            let stream = state
                .table(&view.database, &view.schema, &view.name)
                .ok()
                .and_then(|t| t.materialized.as_ref())
                .map(|mv| format!("{}.{}", mv.source_schema, mv.stream))
                .unwrap_or_default();
            tracing::info!(
                view = %view.qualified(),
                %stream,
                source = source.as_ref().map_or("?", |s| s.kind_name()),
                "stream attached"
            );
        }
        *compiled = Some(Compiled {
            definition,
            pipeline,
            reader,
        });
    }
    let Some(Compiled {
        pipeline, reader, ..
    }) = compiled.as_mut()
    else {
        return Err(crate::Error::Internal("no compiled view".into()));
    };
    let catalogs = pipeline.catalogs().clone();
    catalogs
        .locked_transaction(
            [&view.database, &view.schema, &view.name],
            super::round(engine, &catalogs, view, pipeline, reader, false),
        )
        .await
}
