//! COPY (bulk load from files or from the client) and UNLOAD (query results to files).
//!
//! Delimited text, CSV and JSON are parsed here, a chunk of rows at a time: each field is
//! converted to its column's type, and a row whose field does not convert (or is too long, or
//! NULL in a NOT NULL column) is a load error with its line number and reason. Load errors go
//! to `stl_load_errors`; more than MAXERROR of them (default 0) fail the COPY, and nothing of it
//! stays. Parquet goes through DataFusion's reader. Rows are appended in chunks as table
//! versions of the statement's transaction, so a large load never sits in memory whole and
//! still becomes visible at once.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use datafusion::prelude::ParquetReadOptions;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, Statement,
};
use futures::StreamExt;
use parking_lot::Mutex;
use tributary_storage::ExternalLocation;
use tributary_syntax::dialect::MAXERROR_MARKER;
use tributary_syntax::names::{name_parts, normalize_ident};

use crate::session::Session;
use crate::{Error, Result};

mod loader;
mod unload;

use loader::Loader;
pub(crate) use unload::unload;

/// Rows converted per chunk of text input.
const CHUNK_ROWS: usize = 8192;
/// Rows gathered before they are appended as one table version.
const APPEND_ROWS: usize = 1_000_000;
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
    fn push(&self, error: LoadError) {
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

#[derive(Debug, Clone, PartialEq)]
enum Format {
    /// Delimited text: Redshift's default (`|`), Postgres's COPY text (tab).
    Text,
    Csv,
    Json {
        ignore_case: bool,
    },
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Zstd,
}

/// Where COPY reads from.
#[derive(Debug, Clone)]
enum Source {
    Location(String),
    /// The client sends the data (`COPY ... FROM STDIN`, psql's `\copy`).
    Stdin,
}

/// A parsed COPY: target, source and options.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    schema: String,
    table: String,
    /// The columns the input fills, in input order.
    columns: Vec<String>,
    source: Source,
    format: Format,
    delimiter: u8,
    quote: u8,
    ignore_header: u64,
    null_as: Option<String>,
    compression: Compression,
    date_format: Option<String>,
    time_format: Option<String>,
    max_errors: u64,
    empty_as_null: bool,
    blanks_as_null: bool,
}

impl CopyPlan {
    /// True for `COPY ... FROM STDIN`: the data comes in CopyData messages afterwards.
    pub fn from_stdin(&self) -> bool {
        matches!(self.source, Source::Stdin)
    }

    /// The number of columns the client sends.
    pub fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// The schema-qualified target, for locking.
    pub(crate) fn target(&self) -> (&str, &str) {
        (&self.schema, &self.table)
    }
}

/// Reads a COPY statement. `COPY ... TO` is refused: use UNLOAD.
pub(crate) fn plan(session: &Session, statement: &Statement) -> Result<CopyPlan> {
    let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return Err(Error::Internal("not a COPY statement".into()));
    };
    if *to {
        return Err(Error::NotSupported(
            "COPY ... TO is not supported; use UNLOAD ('query') TO 's3://...'".into(),
        ));
    }
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(Error::Syntax("COPY FROM loads into a table".into()));
    };
    let parts = name_parts(table_name);
    if parts.len() == 1
        && datafusion::catalog::SchemaProvider::table_exist(
            session.catalogs().temp().as_ref(),
            &parts[0],
        )
    {
        return Err(Error::NotSupported(
            "COPY into a temporary table is not supported".into(),
        ));
    }
    let (schema, table_name) = session.resolve_existing(table_name)?;
    let definition = session
        .catalogs()
        .pinned()
        .table(session.database(), &schema, &table_name)?
        .clone();
    let columns: Vec<String> = if columns.is_empty() {
        definition.columns.iter().map(|c| c.name.clone()).collect()
    } else {
        columns.iter().map(normalize_ident).collect()
    };
    for column in &columns {
        if definition.column(column).is_none() {
            return Err(Error::UndefinedColumn(format!(
                "column \"{column}\" of relation \"{table_name}\" does not exist"
            )));
        }
    }
    let source = match target {
        CopyTarget::Stdin => Source::Stdin,
        CopyTarget::File { filename } => Source::Location(filename.clone()),
        other => {
            return Err(Error::NotSupported(format!(
                "COPY FROM {other} is not supported"
            )));
        }
    };
    let mut plan = CopyPlan {
        schema,
        table: table_name,
        columns,
        // COPY FROM STDIN speaks Postgres's text format (tab); files Redshift's (pipe).
        delimiter: if matches!(source, Source::Stdin) {
            b'\t'
        } else {
            b'|'
        },
        source,
        format: Format::Text,
        quote: b'"',
        ignore_header: 0,
        null_as: None,
        compression: Compression::None,
        date_format: None,
        time_format: None,
        max_errors: 0,
        empty_as_null: false,
        blanks_as_null: false,
    };
    let mut delimiter_given = false;
    for option in legacy_options {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                plan.format = Format::Csv;
                for csv_option in csv_options {
                    match csv_option {
                        CopyLegacyCsvOption::Header => plan.ignore_header = 1,
                        CopyLegacyCsvOption::Quote(quote) => plan.quote = ascii(*quote)?,
                        _ => {}
                    }
                }
            }
            CopyLegacyOption::Json(spec) => {
                let spec = spec.clone().unwrap_or_else(|| "auto".into());
                let lower = spec.to_ascii_lowercase();
                plan.format = match lower.as_str() {
                    "auto" => Format::Json { ignore_case: false },
                    "auto ignorecase" => Format::Json { ignore_case: true },
                    _ => {
                        return Err(Error::NotSupported(format!(
                            "JSON '{spec}': only JSON 'auto' and 'auto ignorecase' are supported, not JSONPaths files"
                        )));
                    }
                };
            }
            CopyLegacyOption::Parquet => plan.format = Format::Parquet,
            CopyLegacyOption::Delimiter(c) => {
                plan.delimiter = ascii(*c)?;
                delimiter_given = true;
            }
            CopyLegacyOption::IgnoreHeader(n) => plan.ignore_header = *n,
            CopyLegacyOption::Header => plan.ignore_header = 1,
            CopyLegacyOption::Null(null) => plan.null_as = Some(null.clone()),
            CopyLegacyOption::Gzip => plan.compression = Compression::Gzip,
            CopyLegacyOption::Bzip2 => plan.compression = Compression::Bzip2,
            CopyLegacyOption::Zstd => plan.compression = Compression::Zstd,
            CopyLegacyOption::DateFormat(f) => plan.date_format = f.clone(),
            CopyLegacyOption::TimeFormat(f) => plan.time_format = f.clone(),
            CopyLegacyOption::EmptyAsNull => plan.empty_as_null = true,
            CopyLegacyOption::BlankAsNull => plan.blanks_as_null = true,
            CopyLegacyOption::Extension(marker) if marker.starts_with(MAXERROR_MARKER) => {
                plan.max_errors = marker[MAXERROR_MARKER.len()..]
                    .parse()
                    .map_err(|_| Error::Syntax(format!("MAXERROR takes a number, not {marker}")))?;
            }
            // Authorization and region: the object store takes credentials from the
            // environment, so they are accepted and not needed.
            CopyLegacyOption::IamRole(_)
            | CopyLegacyOption::Credentials(_)
            | CopyLegacyOption::Region(_)
            | CopyLegacyOption::AcceptAnyDate
            | CopyLegacyOption::AcceptInvChars(_)
            | CopyLegacyOption::CompUpdate { .. }
            | CopyLegacyOption::StatUpdate(_)
            | CopyLegacyOption::TruncateColumns
            | CopyLegacyOption::RemoveQuotes => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    for option in options {
        match option {
            CopyOption::Format(Ident { value, .. }) => {
                plan.format = match value.to_ascii_lowercase().as_str() {
                    "csv" => Format::Csv,
                    "text" => Format::Text,
                    other => {
                        return Err(Error::NotSupported(format!(
                            "COPY FORMAT {other} is not supported"
                        )));
                    }
                }
            }
            CopyOption::Delimiter(c) => {
                plan.delimiter = ascii(*c)?;
                delimiter_given = true;
            }
            CopyOption::Null(null) => plan.null_as = Some(null.clone()),
            CopyOption::Header(header) => plan.ignore_header = u64::from(*header),
            CopyOption::Quote(quote) => plan.quote = ascii(*quote)?,
            CopyOption::Encoding(_) | CopyOption::Freeze(_) => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    if plan.format == Format::Csv && !delimiter_given {
        plan.delimiter = b',';
    }
    if matches!(plan.source, Source::Stdin) && plan.format == Format::Parquet {
        return Err(Error::NotSupported(
            "COPY FROM STDIN takes text or CSV".into(),
        ));
    }
    Ok(plan)
}

fn ascii(c: char) -> Result<u8> {
    u8::try_from(c)
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| Error::Syntax(format!("COPY delimiter and quote must be ASCII, not '{c}'")))
}

/// Runs a COPY from files. Returns the number of rows loaded.
pub(crate) async fn load_location(session: &Session, plan: &CopyPlan) -> Result<u64> {
    let Source::Location(location_text) = &plan.source else {
        return Err(Error::Internal(
            "COPY FROM STDIN needs the client's data".into(),
        ));
    };
    let location = ExternalLocation::parse(location_text)?;
    let files = location.list().await?;
    if files.is_empty() {
        return Err(Error::UndefinedFile(format!(
            "the specified location '{location_text}' has no files"
        )));
    }
    let mut loader = Loader::new(session, plan)?;
    if plan.format == Format::Parquet {
        let urls: Vec<String> = files.iter().map(|f| location.url_of(f)).collect();
        session
            .context()
            .register_object_store(location.base(), location.store());
        let frame = session
            .context()
            .read_parquet(urls, ParquetReadOptions::default())
            .await?;
        let mut stream = frame.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            loader.push_columnar(batch?).await?;
        }
    } else {
        for file in &files {
            let bytes = location.read(file).await?;
            let name = location.url_of(file);
            loader.push_bytes(&name, bytes).await?;
        }
    }
    loader.finish().await
}

/// Runs a COPY FROM STDIN with the data the client sent.
pub(crate) async fn load_bytes(session: &Session, plan: &CopyPlan, data: Bytes) -> Result<u64> {
    let mut loader = Loader::new(session, plan)?;
    loader.push_bytes("STDIN", data).await?;
    loader.finish().await
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
