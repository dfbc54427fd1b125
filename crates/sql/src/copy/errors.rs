//! Rows that COPY rejected, kept for `stl_load_errors`.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::Result;

/// Load errors kept for `stl_load_errors` (the newest).
const LOAD_ERRORS_KEPT: usize = 10_000;

/// One row of `stl_load_errors`.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub at: DateTime<Utc>,
    pub user: String,
    pub table: String,
    pub filename: String,
    pub line_number: i64,
    pub column: String,
    pub column_type: String,
    pub raw_line: String,
    pub raw_value: String,
    pub code: i32,
    pub reason: String,
}

/// The newest load errors of the engine. Kept in memory: they are diagnostics, not data.
#[derive(Debug, Default)]
pub struct LoadErrors {
    rows: Mutex<VecDeque<LoadError>>,
}

impl LoadErrors {
    pub(super) fn push(&self, error: LoadError) {
        let mut rows = self.rows.lock();
        rows.push_back(error);
        while rows.len() > LOAD_ERRORS_KEPT {
            rows.pop_front();
        }
    }

    pub fn snapshot(&self) -> Vec<LoadError> {
        self.rows.lock().iter().cloned().collect()
    }
}

/// `stl_load_errors` rows.
pub(crate) fn load_errors_batch(errors: &[LoadError]) -> Result<RecordBatch> {
    use arrow::array::{Int32Array, Int64Array, TimestampMicrosecondArray};
    let schema = Arc::new(Schema::new(vec![
        Field::new("userid", DataType::Utf8, false),
        Field::new(
            "starttime",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("tbl", DataType::Utf8, false),
        Field::new("filename", DataType::Utf8, false),
        Field::new("line_number", DataType::Int64, false),
        Field::new("colname", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("raw_line", DataType::Utf8, false),
        Field::new("raw_field_value", DataType::Utf8, false),
        Field::new("err_code", DataType::Int32, false),
        Field::new("err_reason", DataType::Utf8, false),
    ]));
    let strings = |f: fn(&LoadError) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(errors.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|e| &e.user),
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            errors.iter().map(|e| e.at.timestamp_micros()),
        )),
        strings(|e| &e.table),
        strings(|e| &e.filename),
        Arc::new(Int64Array::from_iter_values(
            errors.iter().map(|e| e.line_number),
        )),
        strings(|e| &e.column),
        strings(|e| &e.column_type),
        strings(|e| &e.raw_line),
        strings(|e| &e.raw_value),
        Arc::new(Int32Array::from_iter_values(errors.iter().map(|e| e.code))),
        strings(|e| &e.reason),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
