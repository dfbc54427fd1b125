//! The scan-error log: records a view skipped, kept in a Delta table of the storage root
//! (`_system/stream_scan_errors`) so that they survive restarts.
//!
//! Errors are written before the round that skipped them commits, so none is lost; a round
//! that then fails is retried and writes them again, so readers drop repeats (same view,
//! shard, position and code).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tributary_catalog::MaterializedView;
use tributary_ingest::{Gap, StreamRecord};

use super::ViewId;
use crate::Result;
use crate::host::Host;

const PATH: &str = "_system/stream_scan_errors";
/// How much of a skipped record is kept.
const PREFIX_BYTES: usize = 1024;
pub const GAP_CODE: &str = "position_expired";

#[derive(Debug, Clone)]
pub struct ScanError {
    pub database: String,
    pub schema: String,
    pub mv_name: String,
    pub external_schema: String,
    pub stream: String,
    pub shard_id: String,
    pub position: String,
    pub record_time_micros: i64,
    pub code: String,
    pub reason: String,
    pub record_size: i64,
    pub prefix: Vec<u8>,
}

impl ScanError {
    pub fn record(
        view: &ViewId,
        mv: &MaterializedView,
        record: &StreamRecord,
        code: &str,
        reason: String,
    ) -> Self {
        let prefix = record.data[..record.data.len().min(PREFIX_BYTES)].to_vec();
        Self {
            database: view.database.clone(),
            schema: view.schema.clone(),
            mv_name: view.name.clone(),
            external_schema: mv.source_schema.clone(),
            stream: mv.stream.clone(),
            shard_id: record.shard_id.clone(),
            position: record.sequence_number.clone(),
            record_time_micros: chrono::Utc::now().timestamp_micros(),
            code: code.to_string(),
            reason,
            record_size: record.data.len() as i64,
            prefix,
        }
    }

    pub fn gap(view: &ViewId, mv: &MaterializedView, gap: &Gap) -> Self {
        Self {
            database: view.database.clone(),
            schema: view.schema.clone(),
            mv_name: view.name.clone(),
            external_schema: mv.source_schema.clone(),
            stream: mv.stream.clone(),
            shard_id: gap.shard_id.clone(),
            position: gap.after.clone(),
            record_time_micros: chrono::Utc::now().timestamp_micros(),
            code: GAP_CODE.to_string(),
            reason: format!(
                "records after this position were no longer in the stream (retention) and were not read; reading resumed at the trim horizon ({})",
                gap.reason
            ),
            record_size: 0,
            prefix: Vec::new(),
        }
    }
}

pub fn schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        text("database_name"),
        text("schema_name"),
        text("mv_name"),
        text("external_schema_name"),
        text("stream_name"),
        text("shard_id"),
        text("position"),
        Field::new(
            "record_time",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        text("error_code"),
        text("error_reason"),
        Field::new("record_size", DataType::Int64, true),
        Field::new("record_prefix", DataType::Binary, true),
    ]))
}

pub fn to_batch(errors: &[ScanError]) -> RecordBatch {
    let text = |f: &dyn Fn(&ScanError) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(errors.iter().map(f)))
    };
    RecordBatch::try_new(
        schema(),
        vec![
            text(&|e| &e.database),
            text(&|e| &e.schema),
            text(&|e| &e.mv_name),
            text(&|e| &e.external_schema),
            text(&|e| &e.stream),
            text(&|e| &e.shard_id),
            text(&|e| &e.position),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                errors.iter().map(|e| e.record_time_micros),
            )),
            text(&|e| &e.code),
            text(&|e| &e.reason),
            Arc::new(Int64Array::from_iter_values(
                errors.iter().map(|e| e.record_size),
            )),
            Arc::new(BinaryArray::from_iter_values(
                errors.iter().map(|e| e.prefix.as_slice()),
            )),
        ],
    )
    .expect("columns match the scan-error schema")
}

/// Appends to the error table; one writer at a time.
#[derive(Debug, Default)]
pub struct ErrorLog {
    /// The table's latest version, once known.
    version: tokio::sync::Mutex<Option<u64>>,
}

impl ErrorLog {
    pub async fn write(&self, engine: &dyn Host, errors: Vec<ScanError>) -> Result<()> {
        let mut version = self.version.lock().await;
        let table = engine.store().storage.table(PATH)?;
        let current = match *version {
            Some(v) => v,
            None => match table.latest_version().await {
                Ok(v) => v,
                Err(_) => table.create(&schema()).await?,
            },
        };
        let outcome = table.append(current, vec![to_batch(&errors)]).await?;
        *version = Some(outcome.version);
        Ok(())
    }

    /// Every logged error, repeats removed.
    pub async fn read(&self, engine: &dyn Host) -> Result<Vec<RecordBatch>> {
        let version = { *self.version.lock().await };
        let table = engine.store().storage.table(PATH)?;
        let version = match version {
            Some(v) => v,
            None => match table.latest_version().await {
                Ok(v) => v,
                Err(_) => return Ok(vec![]),
            },
        };
        let provider = table.provider(version).await?;
        let context = datafusion::prelude::SessionContext::new();
        context.register_table("e", provider)?;
        let frame = context
            .sql(
                "SELECT database_name, schema_name, mv_name, external_schema_name, stream_name, \
                 shard_id, position, min(record_time) AS record_time, error_code, \
                 min(error_reason) AS error_reason, min(record_size) AS record_size, \
                 min(record_prefix) AS record_prefix \
                 FROM e GROUP BY database_name, schema_name, mv_name, external_schema_name, \
                 stream_name, shard_id, position, error_code ORDER BY record_time",
            )
            .await?;
        Ok(frame.collect().await?)
    }
}
