//! One refresh round of a streaming view: read from the committed positions, apply what was
//! read (append rows, or apply changes to a mirror) and commit the rows with the new positions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_catalog::{Column, Table};
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::transaction::WriteKind;
use tributary_ingest::{Positions, ReadLimits, StreamReader, StreamRecord};

use super::{Pipeline, ScanError, ViewId, aggregate, errors, mirror, pipeline};
use crate::host::Host;
use crate::{Error, Result};

/// A reader positioned at the view's committed positions (as the session sees them), and the
/// view's compiled query.
pub async fn prepare(
    engine: &Arc<dyn Host>,
    catalogs: &SessionCatalogs,
    view: &ViewId,
) -> Result<(StreamReader, Pipeline)> {
    let state = catalogs.pinned();
    let table = state.table(&view.database, &view.schema, &view.name)?;
    let mv = table.materialized.as_ref().ok_or_else(|| {
        Error::WrongObjectType(format!("\"{}\" is not a materialized view", view.name))
    })?;
    let external = state
        .schema(&view.database, &mv.source_schema)
        .ok()
        .and_then(|s| s.external.clone())
        .ok_or_else(|| Error::UndefinedSchema(mv.source_schema.clone()))?;
    let pipeline = compile(engine, &state, view, table).await?;
    let source = engine.streams().source(&external).await?;
    let positions =
        Positions::from_json(&mv.positions).map_err(|e| Error::Internal(e.to_string()))?;
    let reader = source
        .reader(&mv.stream, positions)
        .map_err(|e| Error::Stream(e.to_string()))?;
    Ok((reader, pipeline))
}

/// Compiles a stored view's query.
async fn compile(
    engine: &Arc<dyn Host>,
    state: &tributary_catalog::CatalogState,
    view: &ViewId,
    table: &Table,
) -> Result<Pipeline> {
    let mv = table
        .materialized
        .as_ref()
        .ok_or_else(|| Error::Internal("not a materialized view".into()))?;
    let mut statements = tributary_syntax::dialect::parse_statements(&mv.sql)?;
    let Some(datafusion::sql::sqlparser::ast::Statement::Query(query)) =
        statements.pop().and_then(|s| s.into_sql())
    else {
        return Err(Error::Internal(format!(
            "the stored query of \"{}\" does not parse",
            view.name
        )));
    };
    let mut query = *query;
    aggregate::analyse(&mut query)?;
    let stream = pipeline::bind_stream(&mut query, state, &view.database, &view.schema)?;
    let pipeline =
        Pipeline::compile(engine, &table.owner, &view.database, &query, stream.kafka).await?;
    // A mirror's query passes the records through; it decodes them itself.
    if mv.mirror.is_none() && pipeline.output.fields().len() != table.columns.len() {
        return Err(Error::Internal(format!(
            "the query of \"{}\" no longer produces its columns",
            view.name
        )));
    }
    Ok(pipeline)
}

/// What a refresh round did.
#[derive(Debug, Default, Clone)]
pub struct RoundStats {
    pub records: u64,
    pub rows: u64,
    pub skipped: u64,
    pub caught_up: bool,
    /// When each record read arrived in the stream (microseconds since the epoch).
    pub arrivals: Vec<i64>,
}

impl RoundStats {
    pub fn status(&self) -> String {
        if self.skipped > 0 {
            format!(
                "Refresh successfully updated MV incrementally; {} record(s) skipped (see sys_stream_scan_errors)",
                self.skipped
            )
        } else {
            "Refresh successfully updated MV incrementally".into()
        }
    }
}

/// How long a manual refresh may read nothing before it gives up.
const MANUAL_STALL: Duration = Duration::from_secs(30);

/// One refresh round in the open transaction of `catalogs`. A manual round reads until every
/// shard is at the tip it had when the round began; an automatic one reads once per shard.
pub async fn round(
    engine: &Arc<dyn Host>,
    catalogs: &SessionCatalogs,
    view: &ViewId,
    pipeline: &Pipeline,
    reader: &mut StreamReader,
    manual: bool,
) -> Result<RoundStats> {
    let slot = catalogs
        .lock_table(&view.database, &view.schema, &view.name, WriteKind::Rewrite)
        .await?;
    let mv = slot
        .table
        .materialized
        .clone()
        .ok_or_else(|| Error::Internal("not a materialized view".into()))?;
    let committed =
        Positions::from_json(&mv.positions).map_err(|e| Error::Internal(e.to_string()))?;
    reader.reset(committed.clone());
    let settings = engine.streams().settings();
    let started = chrono::Utc::now();
    let limits = ReadLimits {
        records_per_shard: settings.records_per_shard,
        arrived_before_micros: manual.then(|| started.timestamp_micros() + 1_000_000),
    };
    let refresh_micros = started.naive_utc().and_utc().timestamp_micros();
    let name = [
        view.database.clone(),
        view.schema.clone(),
        view.name.clone(),
    ];
    let mut stats = RoundStats::default();
    let mut positions = committed;
    let deadline = Instant::now() + settings.refresh_interval.max(Duration::from_millis(50));
    let mut progressed = Instant::now();
    loop {
        let batch = reader
            .read(limits)
            .await
            .map_err(|e| Error::Stream(e.to_string()))?;
        stats.records += batch.records.len() as u64;
        stats
            .arrivals
            .extend(batch.records.iter().map(|r| r.arrival_micros));
        engine
            .streams()
            .count_read(engine.metrics(), view, &batch.records);
        if !batch.records.is_empty() || batch.positions != positions {
            progressed = Instant::now();
        } else if manual && !batch.caught_up && progressed.elapsed() >= MANUAL_STALL {
            // A shard that never reports its end (a broker down, a partition without a
            // leader) must not hold a REFRESH forever; nothing read is committed.
            let errors: Vec<String> = reader
                .lag()
                .iter()
                .filter_map(|(shard, lag)| Some(format!("{shard}: {}", lag.last_error.as_ref()?)))
                .collect();
            return Err(Error::Stream(format!(
                "REFRESH of {} read nothing for {} s before reaching the end of every shard{}",
                view.name,
                MANUAL_STALL.as_secs(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            )));
        }
        let mut skipped: Vec<ScanError> = batch
            .gaps
            .iter()
            .map(|gap| ScanError::gap(view, &mv, gap))
            .collect();
        let (usable, oversized): (Vec<&StreamRecord>, Vec<&StreamRecord>) = batch
            .records
            .iter()
            .partition(|r| r.data.len() <= settings.max_record_bytes);
        for record in oversized {
            skipped.push(ScanError::record(
                view,
                &mv,
                record,
                "record_too_large",
                format!(
                    "the record is {} bytes, over the limit of {} bytes",
                    record.data.len(),
                    settings.max_record_bytes
                ),
            ));
        }
        let raw_mirror = mv.mirror.as_ref().is_some_and(|m| m.through_view.is_none());
        if !usable.is_empty() && raw_mirror {
            // The mirror decodes the records themselves.
            let (stored, rejected) = mirror::apply(engine, catalogs, view, &usable).await?;
            stats.rows += stored;
            skipped.extend(rejected);
        } else if !usable.is_empty() {
            let input = reader.to_batch(&usable, refresh_micros);
            // A view's rows must fit its columns; a mirror through a view takes them as they
            // are, as change records.
            let columns: &[Column] = match &mv.mirror {
                Some(_) => &[],
                None => &slot.table.columns,
            };
            let (rows, failures) = pipeline.transform(&input, columns).await;
            for (row, reason) in failures {
                skipped.push(ScanError::record(
                    view,
                    &mv,
                    usable[row],
                    "transform_failed",
                    reason,
                ));
            }
            stats.rows += match (&mv.mirror, &mv.aggregate) {
                (Some(_), _) => {
                    let records = mirror::view_records(&rows)?;
                    let records: Vec<&StreamRecord> = records.iter().collect();
                    let (stored, rejected) =
                        mirror::apply(engine, catalogs, view, &records).await?;
                    skipped.extend(rejected);
                    stored
                }
                (None, Some(layout)) => aggregate::merge(catalogs, view, layout, rows).await?,
                (None, None) => tributary_engine::table::append(catalogs, &name, rows).await?,
            };
        }
        stats.skipped += skipped
            .iter()
            .filter(|e| e.code != errors::GAP_CODE)
            .count() as u64;
        for error in &skipped {
            let mut labels = view.labels();
            labels.push(("reason", error.code.clone()));
            engine.metrics().skipped.get_or_create(&labels).inc();
        }
        engine.streams().note_skipped(view, &skipped);
        if !skipped.is_empty() {
            engine
                .streams()
                .errors
                .write(engine.as_ref(), skipped)
                .await?;
        }
        if batch.positions != positions {
            positions = batch.positions.clone();
            let json = positions.to_json();
            catalogs.modify(|state| {
                let table = state.table_mut(&view.database, &view.schema, &view.name)?;
                if let Some(mv) = table.materialized.as_mut() {
                    mv.positions = json;
                }
                Ok(())
            })?;
        }
        engine.streams().update_stats(&view.path, reader);
        stats.caught_up = batch.caught_up;
        if batch.caught_up {
            break;
        }
        if !manual && (Instant::now() >= deadline || stats.records >= 100_000) {
            break;
        }
        if batch.records.is_empty() {
            // Throttled or waiting for a backoff: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(stats)
}

/// Drops what a view's background ingestion keeps when the view is gone.
pub fn forget(engine: &dyn Host, path: &str) {
    engine.streams().stats.lock().remove(path);
}
