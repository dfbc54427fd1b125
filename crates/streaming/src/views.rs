//! Redshift's system views of streaming ingestion, plus `sys_stream_lag`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tributary_catalog::{CatalogState, ExternalSource, Relation};

use crate::Result;
use crate::host::Host;

/// The system views this module serves.
pub const VIEWS: &[&str] = &[
    "stv_mv_info",
    "sys_mv_refresh_history",
    "sys_stream_scan_states",
    "sys_stream_scan_errors",
    "sys_stream_lag",
    "svv_external_schemas",
];

/// A system view's columns, built one at a time.
#[derive(Default)]
pub struct Columns {
    fields: Vec<Field>,
    arrays: Vec<ArrayRef>,
}

impl Columns {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn text<I: IntoIterator<Item = Option<String>>>(mut self, name: &str, values: I) -> Self {
        self.fields.push(Field::new(name, DataType::Utf8, true));
        self.arrays
            .push(Arc::new(values.into_iter().collect::<StringArray>()));
        self
    }

    pub fn int<I: IntoIterator<Item = Option<i64>>>(mut self, name: &str, values: I) -> Self {
        self.fields.push(Field::new(name, DataType::Int64, true));
        self.arrays
            .push(Arc::new(values.into_iter().collect::<Int64Array>()));
        self
    }

    pub fn boolean<I: IntoIterator<Item = Option<bool>>>(mut self, name: &str, values: I) -> Self {
        self.fields.push(Field::new(name, DataType::Boolean, true));
        self.arrays
            .push(Arc::new(values.into_iter().collect::<BooleanArray>()));
        self
    }

    fn timestamp<I: IntoIterator<Item = Option<chrono::NaiveDateTime>>>(
        mut self,
        name: &str,
        values: I,
    ) -> Self {
        self.fields.push(Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ));
        self.arrays.push(Arc::new(
            values
                .into_iter()
                .map(|t| t.map(|t| t.and_utc().timestamp_micros()))
                .collect::<TimestampMicrosecondArray>(),
        ));
        self
    }

    pub fn finish(self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(self.fields)),
            self.arrays,
        )?)
    }
}

/// A view, a shard, its committed position, what its reader saw, and when.
type ShardRow<'a, 'b> = (
    &'b ViewRow<'a>,
    String,
    String,
    Option<tributary_ingest::ShardLag>,
    Option<chrono::NaiveDateTime>,
);

struct ViewRow<'a> {
    schema: &'a str,
    name: &'a str,
    table: &'a tributary_catalog::Table,
    mv: &'a tributary_catalog::MaterializedView,
}

fn views<'a>(state: &'a CatalogState, database: &str) -> Vec<ViewRow<'a>> {
    let Ok(db) = state.database(database) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (schema, s) in &db.schemas {
        for (name, relation) in &s.relations {
            if let Relation::Table(table) = relation
                && let Some(mv) = &table.materialized
            {
                rows.push(ViewRow {
                    schema,
                    name,
                    table,
                    mv,
                });
            }
        }
    }
    rows
}

/// Builds one of [`VIEWS`] (except `sys_stream_scan_errors`, which reads storage).
pub fn system_view(
    engine: &dyn Host,
    state: &CatalogState,
    database: &str,
    name: &str,
) -> Result<Option<RecordBatch>> {
    let rows = views(state, database);
    let batch = match name {
        "stv_mv_info" => Columns::new()
            .text("db_name", rows.iter().map(|_| Some(database.to_string())))
            .text("schema", rows.iter().map(|r| Some(r.schema.to_string())))
            .text("name", rows.iter().map(|r| Some(r.name.to_string())))
            .text(
                "owner_user_name",
                rows.iter().map(|r| Some(r.table.owner.clone())),
            )
            .text("is_stale", rows.iter().map(|_| Some("f".to_string())))
            .int("state", rows.iter().map(|_| Some(1)))
            .text(
                "autorefresh",
                rows.iter()
                    .map(|r| Some(if r.mv.auto_refresh { "t" } else { "f" }.to_string())),
            )
            .text("autorewrite", rows.iter().map(|_| Some("f".to_string())))
            .text(
                "external_schema_name",
                rows.iter()
                    .map(|r| r.mv.input.is_stream().then(|| r.mv.source_schema.clone())),
            )
            .text(
                "stream_name",
                rows.iter()
                    .map(|r| r.mv.input.is_stream().then(|| r.mv.stream.clone())),
            )
            .finish()?,
        "sys_mv_refresh_history" => {
            let history: Vec<_> = engine
                .streams()
                .history()
                .into_iter()
                .filter(|h| h.database == database)
                .collect();
            Columns::new()
                .text(
                    "database_name",
                    history.iter().map(|h| Some(h.database.clone())),
                )
                .text(
                    "schema_name",
                    history.iter().map(|h| Some(h.schema.clone())),
                )
                .text("mv_name", history.iter().map(|h| Some(h.name.clone())))
                .text(
                    "refresh_type",
                    history
                        .iter()
                        .map(|h| Some(if h.manual { "Manual" } else { "Auto" }.to_string())),
                )
                .text("status", history.iter().map(|h| Some(h.status.clone())))
                .timestamp("start_time", history.iter().map(|h| Some(h.start)))
                .timestamp("end_time", history.iter().map(|h| Some(h.end)))
                .int(
                    "duration",
                    history
                        .iter()
                        .map(|h| Some((h.end - h.start).num_microseconds().unwrap_or(0))),
                )
                .int(
                    "records_ingested",
                    history.iter().map(|h| Some(h.records as i64)),
                )
                .int(
                    "records_skipped",
                    history.iter().map(|h| Some(h.skipped as i64)),
                )
                .finish()?
        }
        "sys_stream_scan_states" | "sys_stream_lag" => {
            // One row per view and shard: the committed position, and what the readers saw.
            let mut out: Vec<ShardRow> = Vec::new();
            for row in &rows {
                let positions = tributary_ingest::Positions::from_json(&row.mv.positions)
                    .unwrap_or_default()
                    .describe();
                let stats = engine.streams().stats(&row.table.path);
                let mut shards: Vec<String> = positions.iter().map(|(s, _)| s.clone()).collect();
                for shard in stats.shards.keys() {
                    if !shards.contains(shard) {
                        shards.push(shard.clone());
                    }
                }
                shards.sort();
                for shard in shards {
                    let position = positions
                        .iter()
                        .find(|(s, _)| *s == shard)
                        .map(|(_, p)| p.clone())
                        .unwrap_or_default();
                    out.push((
                        row,
                        shard.clone(),
                        position,
                        stats.shards.get(&shard).cloned(),
                        stats.last_refresh,
                    ));
                }
            }
            let columns = Columns::new()
                .text(
                    "database_name",
                    out.iter().map(|_| Some(database.to_string())),
                )
                .text(
                    "schema_name",
                    out.iter().map(|r| Some(r.0.schema.to_string())),
                )
                .text("mv_name", out.iter().map(|r| Some(r.0.name.to_string())))
                .text(
                    "external_schema_name",
                    out.iter().map(|r| Some(r.0.mv.source_schema.clone())),
                )
                .text(
                    "stream_name",
                    out.iter().map(|r| Some(r.0.mv.stream.clone())),
                )
                .text("shard_id", out.iter().map(|r| Some(r.1.clone())));
            if name == "sys_stream_scan_states" {
                columns
                    .text(
                        "position",
                        out.iter().map(|r| (!r.2.is_empty()).then(|| r.2.clone())),
                    )
                    .int(
                        "scanned_rows",
                        out.iter()
                            .map(|r| r.3.as_ref().map(|l| l.records_read as i64)),
                    )
                    .int(
                        "scanned_bytes",
                        out.iter()
                            .map(|r| r.3.as_ref().map(|l| l.bytes_read as i64)),
                    )
                    .timestamp("last_scan_time", out.iter().map(|r| r.4))
                    .finish()?
            } else {
                columns
                    .int(
                        "millis_behind_latest",
                        out.iter()
                            .map(|r| r.3.as_ref().and_then(|l| l.millis_behind)),
                    )
                    // Kinesis reports time behind the tip, Kafka a record count.
                    .int(
                        "records_behind",
                        out.iter()
                            .map(|r| r.3.as_ref().and_then(|l| l.records_behind)),
                    )
                    .boolean("shard_ended", out.iter().map(|r| Some(r.2 == "SHARD_END")))
                    .text(
                        "last_error",
                        out.iter()
                            .map(|r| r.3.as_ref().and_then(|l| l.last_error.clone())),
                    )
                    .timestamp("last_read_time", out.iter().map(|r| r.4))
                    .finish()?
            }
        }
        "svv_external_schemas" => {
            let mut schemas = Vec::new();
            if let Ok(db) = state.database(database) {
                for (name, schema) in &db.schemas {
                    if let Some(external) = &schema.external {
                        schemas.push((name, schema, external));
                    }
                }
            }
            Columns::new()
                .int("esoid", schemas.iter().map(|s| Some(i64::from(s.1.oid))))
                .int("eskind", schemas.iter().map(|_| Some(5)))
                .text("schemaname", schemas.iter().map(|s| Some(s.0.clone())))
                .int("esowner", schemas.iter().map(|_| Some(0)))
                .text("databasename", schemas.iter().map(|_| Some(String::new())))
                .text(
                    "esoptions",
                    schemas.iter().map(|s| {
                        let options = match s.2 {
                            ExternalSource::Kinesis { region, iam_role } => serde_json::json!({
                                "SOURCE": s.2.kind_name(),
                                "REGION": region,
                                "IAM_ROLE": iam_role,
                            }),
                            ExternalSource::Kafka {
                                uri,
                                cluster_arn,
                                iam_role,
                                authentication,
                                ..
                            } => serde_json::json!({
                                "SOURCE": s.2.kind_name(),
                                "URI": uri,
                                "CLUSTER_ARN": cluster_arn,
                                "IAM_ROLE": iam_role,
                                "AUTHENTICATION": authentication,
                            }),
                            ExternalSource::Redshift { database, schema } => serde_json::json!({
                                "SOURCE": s.2.kind_name(),
                                "DATABASE": database,
                                "SCHEMA": schema,
                            }),
                        };
                        Some(options.to_string())
                    }),
                )
                .finish()?
        }
        _ => return Ok(None),
    };
    Ok(Some(batch))
}

/// `sys_stream_scan_errors`, limited to the session's database.
pub async fn scan_errors(engine: &dyn Host, database: &str) -> Result<Vec<RecordBatch>> {
    let batches = engine.streams().errors.read(engine).await?;
    let schema = super::errors::schema();
    let mut kept = Vec::new();
    for batch in batches {
        let batch = tributary_engine::layout::cast_batch(&batch, &schema)?;
        let databases = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned();
        let Some(databases) = databases else {
            continue;
        };
        let mask: BooleanArray = databases
            .iter()
            .map(|d| Some(d == Some(database)))
            .collect();
        kept.push(arrow::compute::filter_record_batch(&batch, &mask)?);
    }
    Ok(kept)
}
