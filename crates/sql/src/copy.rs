//! COPY (bulk load from files or from the client) and UNLOAD (query results to files).
//!
//! Delimited text, CSV and JSON are parsed here, a chunk of rows at a time: each field is
//! converted to its column's type, and a row whose field does not convert (or is too long, or
//! NULL in a NOT NULL column) is a load error with its line number and reason. Load errors go
//! to `stl_load_errors`; more than MAXERROR of them (default 0) fail the COPY, and nothing of it
//! stays. Parquet goes through DataFusion's reader. Rows are appended in chunks as table
//! versions of the statement's transaction, so a large load never sits in memory whole and
//! still becomes visible at once.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::ParquetReadOptions;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, Statement,
};
use futures::StreamExt;
use tributary_catalog::{SqlType, Table};
use tributary_storage::ExternalLocation;

use crate::error::DataErrorKind;
use crate::session::{Output, Session};
use crate::{Error, Result};
use tributary_syntax::dialect::MAXERROR_MARKER;
use tributary_syntax::rewrite::{name_parts, normalize_ident};

/// Rows converted per chunk of text input.
const CHUNK_ROWS: usize = 8192;
/// Rows gathered before they are appended as one table version.
const APPEND_ROWS: usize = 1_000_000;
/// Load errors kept for `stl_load_errors` (the newest).
const LOAD_ERRORS_KEPT: usize = 10_000;
/// Longest raw line or value kept in a load error.
const RAW_KEPT: usize = 1024;

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

/// One input row before conversion.
struct RawRow {
    line: i64,
    raw: String,
    fields: Vec<Option<String>>,
}

struct Loader<'a> {
    session: &'a Session,
    plan: &'a CopyPlan,
    table: Table,
    name: [String; 3],
    /// The table's columns as queries see them (all nullable: rules are checked here).
    schema: SchemaRef,
    /// For each input field, the index of its column.
    inputs: Vec<usize>,
    filename: String,
    pending: Vec<RawRow>,
    converted: Vec<RecordBatch>,
    converted_rows: usize,
    loaded: u64,
    errors: u64,
    /// DEFAULT values by column index, evaluated once per COPY.
    defaults: std::collections::HashMap<usize, ArrayRef>,
}

impl<'a> Loader<'a> {
    fn new(session: &'a Session, plan: &'a CopyPlan) -> Result<Self> {
        let table = session
            .catalogs()
            .pinned()
            .table(session.database(), &plan.schema, &plan.table)?
            .clone();
        let schema = Arc::new(Schema::new(
            table
                .columns
                .iter()
                .map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true))
                .collect::<Vec<_>>(),
        ));
        let inputs = plan
            .columns
            .iter()
            .map(|name| {
                table
                    .columns
                    .iter()
                    .position(|c| &c.name == name)
                    .ok_or_else(|| {
                        Error::UndefinedColumn(format!("column \"{name}\" does not exist"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            session,
            plan,
            name: [
                session.database().to_string(),
                plan.schema.clone(),
                plan.table.clone(),
            ],
            table,
            schema,
            inputs,
            filename: String::new(),
            pending: Vec::new(),
            converted: Vec::new(),
            converted_rows: 0,
            loaded: 0,
            errors: 0,
            defaults: Default::default(),
        })
    }

    async fn push_bytes(&mut self, filename: &str, bytes: Bytes) -> Result<()> {
        self.filename = filename.to_string();
        let bytes = decompress(filename, bytes, self.plan.compression)?;
        if crate::streaming::mirror::spec(&self.table).is_some() {
            return self.push_changes(&bytes).await;
        }
        match &self.plan.format {
            Format::Text => self.push_text(&bytes).await,
            Format::Csv => self.push_csv(&bytes).await,
            Format::Json { ignore_case } => self.push_json(&bytes, *ignore_case).await,
            Format::Parquet => Err(Error::Internal("Parquet is read as columns".into())),
        }
    }

    /// COPY into a mirror table: each line is a change record in the mirror's format.
    async fn push_changes(&mut self, bytes: &[u8]) -> Result<()> {
        if !matches!(self.plan.format, Format::Json { .. }) {
            return Err(Error::InvalidStatement(
                "COPY into a mirror table reads change records, one JSON record per line: use FORMAT JSON 'auto'".into(),
            ));
        }
        let catalogs = self.session.catalogs();
        if !catalogs.in_explicit_transaction() {
            // Lock before reading, so that an automatic refresh that just committed does
            // not make this COPY conflict with it.
            catalogs
                .prelock(&self.name[0], &self.name[1], &self.name[2])
                .await?;
        }
        let (stored, rejected) =
            crate::streaming::mirror::copy_records(catalogs, &self.name, bytes).await?;
        self.loaded += stored;
        for (line, raw, reason) in rejected {
            self.reject(
                line,
                &raw,
                "",
                "",
                1224,
                &reason,
                DataErrorKind::InvalidText,
            )?;
        }
        Ok(())
    }

    async fn push_text(&mut self, bytes: &[u8]) -> Result<()> {
        let text = String::from_utf8_lossy(bytes);
        let null_as = self.plan.null_as.clone().unwrap_or_else(|| "\\N".into());
        let delimiter = self.plan.delimiter as char;
        for (index, line) in text.split('\n').enumerate() {
            let line_number = index as i64 + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if (line_number as u64) <= self.plan.ignore_header {
                continue;
            }
            // The end-of-data marker of Postgres's text format, and the last line's newline.
            if line == "\\." || line.is_empty() && index > 0 && text.ends_with('\n') {
                continue;
            }
            let fields = split_text(line, delimiter)
                .into_iter()
                .map(|(raw, unescaped)| (raw != null_as).then_some(unescaped))
                .collect();
            self.push_row(line_number, line, fields).await?;
        }
        Ok(())
    }

    async fn push_csv(&mut self, bytes: &[u8]) -> Result<()> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.plan.delimiter)
            .quote(self.plan.quote)
            .from_reader(bytes);
        let mut record = csv::StringRecord::new();
        let mut skipped = 0;
        loop {
            let line = reader.position().line() as i64;
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(err) => {
                    self.reject(
                        line,
                        "",
                        "",
                        "",
                        1206,
                        &format!("malformed CSV: {err}"),
                        DataErrorKind::InvalidText,
                    )?;
                    continue;
                }
            }
            if skipped < self.plan.ignore_header {
                skipped += 1;
                continue;
            }
            let raw: Vec<&str> = record.iter().collect();
            let raw_line = raw.join(&(self.plan.delimiter as char).to_string());
            let fields = record
                .iter()
                .map(|field| match &self.plan.null_as {
                    Some(null) if field == null => None,
                    _ => Some(field.to_string()),
                })
                .collect();
            self.push_row(line, &raw_line, fields).await?;
        }
        Ok(())
    }

    async fn push_json(&mut self, bytes: &[u8], ignore_case: bool) -> Result<()> {
        let mut stream =
            serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
        let mut line = 1i64;
        let mut offset = 0usize;
        let names: Vec<String> = self.plan.columns.clone();
        loop {
            let start = stream.byte_offset();
            line += bytes[offset..start].iter().filter(|b| **b == b'\n').count() as i64;
            offset = start;
            // Skip the whitespace before the value, so that the line is the value's own.
            let value_start = start
                + bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            let value_line = line
                + bytes[start..value_start]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count() as i64;
            match stream.next() {
                None => break,
                Some(Err(err)) => {
                    let raw = String::from_utf8_lossy(
                        &bytes[value_start..bytes.len().min(value_start + RAW_KEPT)],
                    )
                    .to_string();
                    self.reject(
                        value_line,
                        &raw,
                        "",
                        "",
                        1224,
                        &format!("invalid JSON: {err}"),
                        DataErrorKind::InvalidText,
                    )?;
                    // The rest of the input cannot be trusted to line up with values.
                    return Ok(());
                }
                Some(Ok(value)) => {
                    let raw = truncate(&value.to_string());
                    let serde_json::Value::Object(object) = value else {
                        self.reject(
                            value_line,
                            &raw,
                            "",
                            "",
                            1224,
                            "a JSON record must be an object",
                            DataErrorKind::InvalidText,
                        )?;
                        continue;
                    };
                    let fields = names
                        .iter()
                        .map(|name| {
                            let value = if ignore_case {
                                object
                                    .iter()
                                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                    .map(|(_, v)| v)
                            } else {
                                object.get(name)
                            };
                            match value {
                                None | Some(serde_json::Value::Null) => None,
                                Some(serde_json::Value::String(s)) => Some(s.clone()),
                                Some(other) => Some(other.to_string()),
                            }
                        })
                        .collect();
                    self.push_row(value_line, &raw, fields).await?;
                }
            }
        }
        Ok(())
    }

    async fn push_row(&mut self, line: i64, raw: &str, fields: Vec<Option<String>>) -> Result<()> {
        if fields.len() != self.inputs.len() {
            let reason = if fields.len() < self.inputs.len() {
                "Delimiter not found: the line has fewer fields than columns"
            } else {
                "Extra column(s) found"
            };
            return self.reject(line, raw, "", "", 1214, reason, DataErrorKind::InvalidText);
        }
        self.pending.push(RawRow {
            line,
            raw: truncate(raw),
            fields,
        });
        if self.pending.len() >= CHUNK_ROWS {
            self.convert_pending().await?;
        }
        Ok(())
    }

    /// Records a rejected row; fails the COPY once more rows were rejected than MAXERROR.
    #[allow(clippy::too_many_arguments)]
    fn reject(
        &mut self,
        line: i64,
        raw_line: &str,
        column: &str,
        raw_value: &str,
        code: i32,
        reason: &str,
        kind: DataErrorKind,
    ) -> Result<()> {
        self.errors += 1;
        let column_type = self
            .table
            .column(column)
            .map(|c| c.sql_type.display_name())
            .unwrap_or_default();
        self.session.engine().load_errors.push(LoadError {
            at: Utc::now(),
            user: self.session.user().to_string(),
            table: self.plan.table.clone(),
            filename: self.filename.clone(),
            line_number: line,
            column: column.to_string(),
            column_type,
            raw_line: truncate(raw_line),
            raw_value: truncate(raw_value),
            code,
            reason: reason.to_string(),
        });
        if self.errors > self.plan.max_errors {
            let column_part = if column.is_empty() {
                String::new()
            } else {
                format!(", column {column}")
            };
            return Err(Error::data(
                kind,
                format!(
                    "Load into table '{}' failed at line {line} of {}{column_part}: {reason}. Check 'stl_load_errors' system table for details.",
                    self.plan.table, self.filename
                ),
            ));
        }
        Ok(())
    }

    /// Converts the pending text rows to typed columns; rows that do not convert are rejected.
    async fn convert_pending(&mut self) -> Result<()> {
        let rows = std::mem::take(&mut self.pending);
        if rows.is_empty() {
            return Ok(());
        }
        let mut bad: Vec<Option<(usize, String, DataErrorKind)>> = vec![None; rows.len()];
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.table.columns.len()];
        for (input, &index) in self.inputs.iter().enumerate() {
            let column = &self.table.columns[index];
            let values: Vec<Option<String>> = rows
                .iter()
                .map(|row| {
                    let value = row.fields[input].clone()?;
                    let blank = value.trim().is_empty();
                    let string_type = matches!(
                        column.sql_type,
                        SqlType::Varchar { .. } | SqlType::Char { .. } | SqlType::Super
                    );
                    if (self.plan.empty_as_null && value.is_empty())
                        || (self.plan.blanks_as_null && blank)
                        || (!string_type && value.is_empty())
                    {
                        return None;
                    }
                    Some(value)
                })
                .collect();
            let (array, failures) = convert_column(
                &values,
                &column.sql_type,
                self.plan.date_format.as_deref(),
                self.plan.time_format.as_deref(),
            )?;
            for (row, failure) in failures {
                if bad[row].is_none() {
                    bad[row] = Some((index, failure, DataErrorKind::InvalidText));
                }
            }
            if let Some(length) = column.sql_type.length() {
                for (row, value) in values.iter().enumerate() {
                    if let Some(value) = value {
                        let bytes = match column.sql_type {
                            SqlType::Char { .. } => value.trim_end_matches(' ').len(),
                            _ => value.len(),
                        };
                        if bytes > length as usize && bad[row].is_none() {
                            bad[row] = Some((
                                index,
                                format!(
                                    "String length exceeds DDL length: {bytes} bytes for {}",
                                    column.sql_type.display_name()
                                ),
                                DataErrorKind::StringTooLong,
                            ));
                        }
                    }
                }
            }
            columns[index] = Some(array);
        }
        let columns = self.fill_defaults(columns, rows.len()).await?;
        for (index, column) in self.table.columns.iter().enumerate() {
            if column.nullable || column.identity.is_some() {
                continue;
            }
            for (row, slot) in bad.iter_mut().enumerate() {
                if slot.is_none() && columns[index].is_null(row) {
                    *slot = Some((
                        index,
                        "NULL value in a NOT NULL column".into(),
                        DataErrorKind::Other,
                    ));
                }
            }
        }
        for (row, failure) in bad.iter().enumerate() {
            if let Some((index, reason, kind)) = failure {
                let column = self.table.columns[*index].name.clone();
                let raw_value = self
                    .inputs
                    .iter()
                    .position(|i| i == index)
                    .and_then(|input| rows[row].fields[input].clone())
                    .unwrap_or_default();
                self.reject(
                    rows[row].line,
                    &rows[row].raw,
                    &column,
                    &raw_value,
                    1207,
                    reason,
                    *kind,
                )?;
            }
        }
        let keep: BooleanArray = bad.iter().map(|b| Some(b.is_none())).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let batch = filter_record_batch(&batch, &keep)?;
        self.add_converted(batch).await
    }

    /// Columnar input (Parquet): columns by name when the file has them all, else by position.
    async fn push_columnar(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let file_schema = batch.schema();
        let by_name: Option<Vec<usize>> = self
            .plan
            .columns
            .iter()
            .map(|name| {
                file_schema
                    .fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(name))
            })
            .collect();
        if by_name.is_none() && file_schema.fields().len() != self.inputs.len() {
            return Err(Error::data(
                DataErrorKind::InvalidText,
                format!(
                    "the Parquet file has {} columns and names not all of the {} target columns",
                    file_schema.fields().len(),
                    self.inputs.len()
                ),
            ));
        }
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.table.columns.len()];
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        for (input, &index) in self.inputs.iter().enumerate() {
            let source = match &by_name {
                Some(positions) => batch.column(positions[input]),
                None => batch.column(input),
            };
            let target = self.schema.field(index).data_type();
            let converted = cast_with_options(source, target, &strict).map_err(|e| {
                Error::data(
                    DataErrorKind::InvalidText,
                    format!("column {}: {e}", self.table.columns[index].name),
                )
            })?;
            columns[index] = Some(converted);
        }
        let columns = self.fill_defaults(columns, batch.num_rows()).await?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.add_converted(batch).await
    }

    /// Fills the columns the input does not: each with its DEFAULT (evaluated once per COPY)
    /// or NULL. IDENTITY columns stay NULL; the append fills them.
    async fn fill_defaults(
        &mut self,
        mut columns: Vec<Option<ArrayRef>>,
        rows: usize,
    ) -> Result<Vec<ArrayRef>> {
        for (index, column) in self.table.columns.iter().enumerate() {
            if columns[index].is_some() {
                continue;
            }
            let data_type = self.schema.field(index).data_type();
            let filled = match &column.default {
                Some(default) => {
                    let value = match self.defaults.get(&index) {
                        Some(value) => value.clone(),
                        None => {
                            let value = default_value(self.session, default, data_type).await?;
                            self.defaults.insert(index, value.clone());
                            value
                        }
                    };
                    let indices = arrow::array::UInt32Array::from(vec![0u32; rows]);
                    arrow::compute::take(&value, &indices, None)?
                }
                None => new_null_array(data_type, rows),
            };
            columns[index] = Some(filled);
        }
        Ok(columns
            .into_iter()
            .map(|c| c.expect("every column filled"))
            .collect())
    }

    async fn add_converted(&mut self, batch: RecordBatch) -> Result<()> {
        self.converted_rows += batch.num_rows();
        self.converted.push(batch);
        if self.converted_rows >= APPEND_ROWS {
            self.append().await?;
        }
        Ok(())
    }

    async fn append(&mut self) -> Result<()> {
        let batches = std::mem::take(&mut self.converted);
        self.converted_rows = 0;
        self.loaded += crate::table::append(self.session.catalogs(), &self.name, batches).await?;
        Ok(())
    }

    async fn finish(mut self) -> Result<u64> {
        self.convert_pending().await?;
        self.append().await?;
        Ok(self.loaded)
    }
}

/// Splits a line of delimited text on unescaped delimiters. Returns each field raw (for NULL
/// AS) and with backslash escapes resolved.
fn split_text(line: &str, delimiter: char) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut raw = String::new();
    let mut value = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            raw.push(c);
            match chars.next() {
                Some(next) => {
                    raw.push(next);
                    value.push(match next {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                }
                None => value.push('\\'),
            }
        } else if c == delimiter {
            fields.push((std::mem::take(&mut raw), std::mem::take(&mut value)));
        } else {
            raw.push(c);
            value.push(c);
        }
    }
    fields.push((raw, value));
    fields
}

fn truncate(text: &str) -> String {
    if text.len() <= RAW_KEPT {
        return text.to_string();
    }
    let mut end = RAW_KEPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn decompress(name: &str, bytes: Bytes, compression: Compression) -> Result<Bytes> {
    let lower = name.to_ascii_lowercase();
    let compression = match compression {
        Compression::None if lower.ends_with(".gz") => Compression::Gzip,
        Compression::None if lower.ends_with(".bz2") => Compression::Bzip2,
        Compression::None if lower.ends_with(".zst") => Compression::Zstd,
        other => other,
    };
    let mut out = Vec::new();
    let result = match compression {
        Compression::None => return Ok(bytes),
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(bytes.as_ref()).read_to_end(&mut out)
        }
        Compression::Bzip2 => {
            bzip2::read::MultiBzDecoder::new(bytes.as_ref()).read_to_end(&mut out)
        }
        Compression::Zstd => zstd::stream::read::Decoder::new(bytes.as_ref())
            .and_then(|mut decoder| decoder.read_to_end(&mut out)),
    };
    result.map_err(|e| {
        Error::data(
            DataErrorKind::Other,
            format!("{name} could not be decompressed ({compression:?}): {e}"),
        )
    })?;
    Ok(Bytes::from(out))
}

/// A column's DEFAULT as a one-row array of the column's type.
async fn default_value(session: &Session, sql: &str, data_type: &DataType) -> Result<ArrayRef> {
    let batches = session
        .context()
        .sql(&format!("SELECT {sql}"))
        .await?
        .collect()
        .await?;
    let value = batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .map(|b| b.column(0).clone())
        .ok_or_else(|| Error::Internal(format!("DEFAULT {sql} gave no value")))?;
    Ok(arrow::compute::cast(&value, data_type)?)
}

/// Converts text values to a column's type. Returns the array and, for each value that does
/// not convert, its row and the reason.
/// Converts text values to `sql_type` (DATEFORMAT / TIMEFORMAT as COPY takes them; None is
/// ISO). Returns the column and, for each value that does not convert, its row and why.
pub(crate) fn convert_column(
    values: &[Option<String>],
    sql_type: &SqlType,
    date_format: Option<&str>,
    time_format: Option<&str>,
) -> Result<(ArrayRef, Vec<(usize, String)>)> {
    let target = sql_type.to_arrow();
    let strings: ArrayRef = Arc::new(StringArray::from(values.to_vec()));
    let converted: ArrayRef = match (sql_type, date_format, time_format) {
        (SqlType::Date, Some(format), _) => Arc::new(parse_dates(values, format)),
        (SqlType::Timestamp | SqlType::TimestampTz, _, Some(format)) => {
            let micros = parse_timestamps(values, format);
            arrow::compute::cast(&(Arc::new(micros) as ArrayRef), &target)?
        }
        (SqlType::Boolean, _, _) => Arc::new(parse_booleans(values)),
        _ => cast_with_options(&strings, &target, &CastOptions::default())?,
    };
    let failures = values
        .iter()
        .enumerate()
        .filter(|(row, value)| value.is_some() && converted.is_null(*row))
        .map(|(row, value)| {
            (
                row,
                format!(
                    "Invalid input for type {}: '{}'",
                    sql_type.display_name(),
                    truncate(value.as_deref().unwrap_or_default())
                ),
            )
        })
        .collect();
    Ok((converted, failures))
}

fn parse_booleans(values: &[Option<String>]) -> BooleanArray {
    values
        .iter()
        .map(|v| {
            v.as_deref()
                .and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "t" | "true" | "1" | "y" | "yes" | "on" => Some(true),
                    "f" | "false" | "0" | "n" | "no" | "off" => Some(false),
                    _ => None,
                })
        })
        .collect()
}

/// Date formats tried by DATEFORMAT 'auto', after ISO.
const AUTO_DATES: [&str; 6] = [
    "%Y-%m-%d", "%m/%d/%Y", "%Y%m%d", "%d-%b-%Y", "%Y/%m/%d", "%b %d %Y",
];
/// Timestamp formats tried by TIMEFORMAT 'auto'.
const AUTO_TIMESTAMPS: [&str; 6] = [
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%m/%d/%Y %H:%M:%S%.f",
    "%Y%m%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.fZ",
];

fn parse_dates(values: &[Option<String>], format: &str) -> arrow::array::Date32Array {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let patterns: Vec<String> = if format.eq_ignore_ascii_case("auto") {
        AUTO_DATES.iter().map(|s| s.to_string()).collect()
    } else {
        vec![tributary_syntax::rewrite::chrono_pattern(format)]
    };
    values
        .iter()
        .map(|v| {
            let v = v.as_deref()?.trim();
            patterns
                .iter()
                .find_map(|p| NaiveDate::parse_from_str(v, p).ok())
                .or_else(|| {
                    // A timestamp where a date is wanted: keep the date part.
                    NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S")
                        .ok()
                        .map(|t| t.date())
                })
                .map(|d| (d - epoch).num_days() as i32)
        })
        .collect()
}

fn parse_timestamps(
    values: &[Option<String>],
    format: &str,
) -> arrow::array::TimestampMicrosecondArray {
    let lower = format.to_ascii_lowercase();
    values
        .iter()
        .map(|v| {
            let v = v.as_deref()?.trim();
            match lower.as_str() {
                "epochsecs" => v.parse::<f64>().ok().map(|s| (s * 1e6) as i64),
                "epochmillisecs" => v.parse::<f64>().ok().map(|ms| (ms * 1e3) as i64),
                "auto" => AUTO_TIMESTAMPS
                    .iter()
                    .find_map(|p| NaiveDateTime::parse_from_str(v, p).ok())
                    .or_else(|| DateTime::parse_from_rfc3339(v).ok().map(|t| t.naive_utc()))
                    .or_else(|| {
                        NaiveDate::parse_from_str(v, "%Y-%m-%d")
                            .ok()
                            .and_then(|d| d.and_hms_opt(0, 0, 0))
                    })
                    .map(|t| t.and_utc().timestamp_micros()),
                _ => NaiveDateTime::parse_from_str(
                    v,
                    &tributary_syntax::rewrite::chrono_pattern(format),
                )
                .ok()
                .map(|t| t.and_utc().timestamp_micros()),
            }
        })
        .collect()
}

/// UNLOAD ('query') TO 's3://...' | 'file:///...' [FORMAT [AS] PARQUET | CSV] [HEADER]
/// [DELIMITER 'c'] [GZIP] [ALLOWOVERWRITE] [PARALLEL ...] [EXTENSION 'ext'].
pub(crate) async fn unload(session: &mut Session, statement: Statement) -> Result<Output> {
    let Statement::Unload {
        query,
        query_text,
        to,
        options,
        ..
    } = statement
    else {
        return Err(Error::Internal("not an UNLOAD statement".into()));
    };
    let statement = match (query, query_text) {
        (Some(query), _) => Statement::Query(query),
        (None, Some(text)) => {
            let mut statements = session.parse(&text)?;
            match (
                statements.pop().and_then(|s| s.into_sql()),
                statements.is_empty(),
            ) {
                (Some(statement @ Statement::Query(_)), true) => statement,
                _ => {
                    return Err(Error::Syntax("UNLOAD takes one SELECT statement".into()));
                }
            }
        }
        (None, None) => return Err(Error::Syntax("UNLOAD needs a query".into())),
    };
    let mut parquet = false;
    let mut header = false;
    let mut delimiter = b'|';
    let mut delimiter_given = false;
    let mut csv = false;
    let mut gzip = false;
    let mut overwrite = false;
    let mut extension: Option<String> = None;
    for option in &options {
        match option {
            CopyLegacyOption::Parquet => parquet = true,
            CopyLegacyOption::Csv(csv_options) => {
                csv = true;
                header |= csv_options
                    .iter()
                    .any(|o| matches!(o, CopyLegacyCsvOption::Header));
            }
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Delimiter(c) => {
                delimiter = ascii(*c)?;
                delimiter_given = true;
            }
            CopyLegacyOption::Gzip => gzip = true,
            CopyLegacyOption::AllowOverwrite | CopyLegacyOption::CleanPath => overwrite = true,
            CopyLegacyOption::Extension(ext) => {
                extension = Some(ext.trim_start_matches('.').to_string())
            }
            CopyLegacyOption::IamRole(_)
            | CopyLegacyOption::Credentials(_)
            | CopyLegacyOption::Region(_)
            | CopyLegacyOption::Parallel(_)
            | CopyLegacyOption::MaxFileSize(_)
            | CopyLegacyOption::RowGroupSize(_)
            | CopyLegacyOption::Manifest { .. }
            | CopyLegacyOption::Encrypted { .. } => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "UNLOAD option {other} is not supported"
                )));
            }
        }
    }
    if csv && !delimiter_given {
        delimiter = b',';
    }
    let location = ExternalLocation::parse(&to.value)?;
    if !location.list().await?.is_empty() && !overwrite {
        return Err(Error::InvalidStatement(format!(
            "Specified unload destination '{}' is not empty. Unload destination must be empty or ALLOWOVERWRITE specified.",
            to.value
        )));
    }
    let statement = session.rewrite(statement)?;
    let plan = session.plan(&statement).await?;
    let frame = session.context().execute_logical_plan(plan).await?;
    let rows = frame.clone().count().await? as u64;
    let suffix = match (parquet, &extension, gzip) {
        (true, _, _) => "0000_part_00.parquet".to_string(),
        (false, Some(ext), true) => format!("0000_part_00.{ext}.gz"),
        (false, Some(ext), false) => format!("0000_part_00.{ext}"),
        (false, None, true) => "0000_part_00.gz".to_string(),
        (false, None, false) => "0000_part_00".to_string(),
    };
    let target = format!("{}{}", to.value, suffix);
    session
        .context()
        .register_object_store(location.base(), location.store());
    let single = DataFrameWriteOptions::new().with_single_file_output(true);
    if parquet {
        frame.write_parquet(&target, single, None).await?;
    } else {
        let options = datafusion::common::config::CsvOptions::default()
            .with_has_header(header)
            .with_delimiter(delimiter)
            .with_compression(if gzip {
                datafusion::common::parsers::CompressionTypeVariant::GZIP
            } else {
                datafusion::common::parsers::CompressionTypeVariant::UNCOMPRESSED
            });
        frame.write_csv(&target, single, Some(options)).await?;
    }
    Ok(Output::Command {
        tag: "UNLOAD".into(),
        rows: Some(rows),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_split_on_unescaped_delimiters() {
        let fields = split_text("a|b\\|c|\\N|x\\\\y", '|');
        let values: Vec<&str> = fields.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, vec!["a", "b|c", "N", "x\\y"]);
        assert_eq!(fields[2].0, "\\N");
    }

    #[test]
    fn dates_and_timestamps_in_auto_and_explicit_formats() {
        let values = vec![
            Some("2024-03-01".to_string()),
            Some("03/02/2024".to_string()),
            Some("not a date".to_string()),
        ];
        let dates = parse_dates(&values, "auto");
        assert!(dates.is_valid(0) && dates.is_valid(1) && dates.is_null(2));
        let explicit = parse_dates(&[Some("01.02.2024".to_string())], "DD.MM.YYYY");
        assert_eq!(explicit.value(0), 19754);
        let epoch = parse_timestamps(&[Some("1.5".to_string())], "epochsecs");
        assert_eq!(epoch.value(0), 1_500_000);
        let auto = parse_timestamps(&[Some("2024-03-01T10:00:00Z".to_string())], "auto");
        assert!(auto.is_valid(0));
    }
}
