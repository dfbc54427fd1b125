//! The loader: input read a block at a time (delimited text, CSV, JSON, Parquet), converted to
//! the table's columns, load errors kept, and chunks appended in the statement's transaction.
//!
//! A file or the client's data is decompressed as it arrives and cut into blocks of about
//! [`BLOCK_BYTES`] that end where a record ends (a line; a CSV record, whose quoted fields may
//! hold newlines; a JSON value), so memory holds a block and a chunk of converted rows, never
//! the input whole.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder, new_null_array,
};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_compression::tokio::bufread::{BzDecoder, GzipDecoder, ZstdDecoder};
use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;
use tributary_catalog::{SqlType, Table};
use tributary_engine::convert::{RAW_KEPT, convert_column, truncate};
use tributary_engine::error::DataErrorKind;
use tributary_engine::table::TableAppend;

use super::errors::LoadError;
use super::plan::{Compression, CopyPlan, Format};
use crate::context::Context;
use crate::{Error, Result};

/// Rows converted per chunk of text input.
const CHUNK_ROWS: usize = 8192;
/// Decompressed input read before it is parsed.
const BLOCK_BYTES: usize = 8 << 20;
/// The longest record (a line, or a JSON value) a load accepts: an input with a longer one
/// fails rather than be buffered without end.
const MAX_RECORD_BYTES: usize = 64 << 20;
/// Change records applied to a mirror table as one round...
const CHANGE_LINES: usize = 100_000;
/// ...or fewer, once they take this many bytes.
const CHANGE_BYTES: usize = 32 << 20;

/// Input rows before conversion, column by column: text in contiguous buffers, so a row
/// costs no allocation of its own.
struct Pending {
    /// Each row's line number.
    lines: Vec<i64>,
    /// Each row's raw line (at most [`RAW_KEPT`] bytes), for load errors.
    raws: StringBuilder,
    /// Each input column's values as written.
    fields: Vec<StringBuilder>,
}

impl Pending {
    fn new(columns: usize) -> Self {
        Self {
            lines: Vec::with_capacity(CHUNK_ROWS),
            raws: StringBuilder::new(),
            fields: (0..columns).map(|_| StringBuilder::new()).collect(),
        }
    }
}

pub(super) struct Loader<'a> {
    cx: &'a Context,
    plan: &'a CopyPlan,
    table: Table,
    name: [String; 3],
    /// The table's columns as queries see them (all nullable: rules are checked here).
    schema: SchemaRef,
    /// For each input field, the index of its column.
    inputs: Vec<usize>,
    filename: String,
    /// Lines of the current input before the block being parsed.
    line_base: i64,
    /// CSV header rows of the current input skipped so far.
    header_skipped: u64,
    /// Set when the rest of the current input cannot be parsed (JSON that lost its place).
    skip_rest: bool,
    /// Whether change records went into a mirror table; the COPY then merges their files.
    changes_copied: bool,
    pending: Pending,
    /// Converted rows, written as they come and committed as one table version at the end.
    converted: TableAppend,
    loaded: u64,
    errors: u64,
    /// DEFAULT values by column index, evaluated once per COPY.
    defaults: std::collections::HashMap<usize, ArrayRef>,
}

impl<'a> Loader<'a> {
    pub(super) fn new(cx: &'a Context, plan: &'a CopyPlan) -> Result<Self> {
        let table = cx
            .catalogs()
            .pinned()
            .table(cx.database(), &plan.schema, &plan.table)?
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
        let name = [
            cx.database().to_string(),
            plan.schema.clone(),
            plan.table.clone(),
        ];
        Ok(Self {
            cx,
            plan,
            converted: TableAppend::new(cx.catalogs(), &name),
            name,
            table,
            schema,
            inputs,
            filename: String::new(),
            line_base: 0,
            header_skipped: 0,
            skip_rest: false,
            changes_copied: false,
            pending: Pending::new(plan.columns.len()),
            loaded: 0,
            errors: 0,
            defaults: Default::default(),
        })
    }

    /// Reads one input (a file, or the client's data) to its end: decompressed as it arrives
    /// and parsed a block at a time, each block cut where a record ends.
    pub(super) async fn push_stream(
        &mut self,
        filename: &str,
        input: impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    ) -> Result<()> {
        self.filename = filename.to_string();
        self.line_base = 0;
        self.header_skipped = 0;
        self.skip_rest = false;
        let mirror = tributary_engine::mirror::spec(&self.table).is_some();
        if mirror && !matches!(self.plan.format, Format::Json { .. }) {
            return Err(Error::InvalidStatement(
                "COPY into a mirror table reads change records, one JSON record per line: use FORMAT JSON 'auto'".into(),
            ));
        }
        if self.plan.format == Format::Parquet {
            return Err(Error::Internal("Parquet is read as columns".into()));
        }
        // The input's own failures are told apart from the decompressor's.
        let input = StreamReader::new(
            input.map(|chunk| chunk.map_err(|err| std::io::Error::other(InputError(err)))),
        );
        let (mut input, compression) = decoder(filename, input, self.plan.compression);
        let mut buffer: Vec<u8> = Vec::new();
        let mut end = false;
        while !end {
            let read = (&mut input)
                .take(BLOCK_BYTES as u64)
                .read_to_end(&mut buffer)
                .await
                .map_err(|err| read_error(filename, compression, err))?;
            end = read < BLOCK_BYTES;
            if self.skip_rest {
                // Read on to the end, so that a client's data is taken whole.
                buffer.clear();
                continue;
            }
            let used = self.push_block(&buffer, end, mirror).await?;
            if used == 0 && !end && buffer.len() > MAX_RECORD_BYTES {
                return Err(Error::data(
                    DataErrorKind::Other,
                    format!(
                        "Load into table '{}' failed at line {} of {filename}: a record is longer than {} MiB",
                        self.plan.table,
                        self.line_base + 1,
                        MAX_RECORD_BYTES >> 20
                    ),
                ));
            }
            self.line_base += newlines(&buffer[..used]);
            buffer.drain(..used);
        }
        Ok(())
    }

    /// Parses the records that end within `block` (all of it at the input's end). Returns the
    /// bytes used; the rest is read again with the next block.
    async fn push_block(&mut self, block: &[u8], last: bool, mirror: bool) -> Result<usize> {
        let lines = if last {
            block.len()
        } else {
            block
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |at| at + 1)
        };
        if mirror {
            let used = if last {
                block.len()
            } else {
                changes_boundary(block)
            };
            if used > 0 {
                self.push_changes(&block[..used]).await?;
            }
            return Ok(used);
        }
        match &self.plan.format {
            Format::Text => {
                self.push_text(&block[..lines]).await?;
                Ok(lines)
            }
            Format::Csv => {
                let used = if last {
                    block.len()
                } else {
                    csv_boundary(block, self.plan.quote)
                };
                self.push_csv(&block[..used]).await?;
                Ok(used)
            }
            Format::Json { ignore_case } => {
                // A value that ends a line is whole, even a number.
                self.push_json(&block[..lines], *ignore_case, last).await
            }
            Format::Parquet => Err(Error::Internal("Parquet is read as columns".into())),
        }
    }

    /// COPY into a mirror table: each line is a change record in the mirror's format.
    async fn push_changes(&mut self, bytes: &[u8]) -> Result<()> {
        let catalogs = self.cx.catalogs();
        if !catalogs.in_explicit_transaction() && !self.changes_copied {
            // Lock before reading, so that an automatic refresh that just committed does
            // not make this COPY conflict with it.
            catalogs
                .prelock(&self.name[0], &self.name[1], &self.name[2])
                .await?;
        }
        self.changes_copied = true;
        let (stored, rejected) = tributary_streaming::mirror::copy_records(
            &self.cx.engine().host(),
            catalogs,
            &self.name,
            bytes,
            self.line_base + 1,
        )
        .await?;
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
        if bytes.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(bytes);
        let null_as = self.plan.null_as.clone().unwrap_or_else(|| "\\N".into());
        let delimiter = self.plan.delimiter as char;
        for (index, line) in text.split('\n').enumerate() {
            let line_number = self.line_base + index as i64 + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if (line_number as u64) <= self.plan.ignore_header {
                continue;
            }
            // The end-of-data marker of Postgres's text format, and the last line's newline.
            if line == "\\." || line.is_empty() && line_number > 1 && text.ends_with('\n') {
                continue;
            }
            if line.contains('\\') {
                let fields = split_text(line, delimiter);
                let values = fields
                    .iter()
                    .map(|(raw, unescaped)| (*raw != null_as).then_some(unescaped.as_str()));
                self.push_row(line_number, line, fields.len(), values)
                    .await?;
            } else {
                // Without escapes, each field is as written.
                let count = line.matches(delimiter).count() + 1;
                let values = line
                    .split(delimiter)
                    .map(|field| (field != null_as).then_some(field));
                self.push_row(line_number, line, count, values).await?;
            }
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
        let mut raw_line = String::new();
        loop {
            let line = self.line_base + reader.position().line() as i64;
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
            if self.header_skipped < self.plan.ignore_header {
                self.header_skipped += 1;
                continue;
            }
            // The raw line as Redshift shows it: the fields, delimited.
            raw_line.clear();
            for (at, field) in record.iter().enumerate() {
                if raw_line.len() > RAW_KEPT {
                    break;
                }
                if at > 0 {
                    raw_line.push(self.plan.delimiter as char);
                }
                raw_line.push_str(field);
            }
            let plan = self.plan;
            let null_as = plan.null_as.as_deref();
            let values = record
                .iter()
                .map(|field| (Some(field) != null_as).then_some(field));
            self.push_row(line, &raw_line, record.len(), values).await?;
        }
        Ok(())
    }

    /// Parses the JSON values in `bytes`. Returns the bytes used: all of them, or, unless
    /// this is the input's end, those before a value that goes on past them.
    async fn push_json(&mut self, bytes: &[u8], ignore_case: bool, last: bool) -> Result<usize> {
        let mut stream =
            serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
        let mut line = self.line_base + 1;
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
                Some(Err(err)) if err.is_eof() && !last => return Ok(value_start),
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
                    self.skip_rest = true;
                    return Ok(bytes.len());
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
                    let fields: Vec<Option<String>> = names
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
                    let count = fields.len();
                    let values = fields.iter().map(Option::as_deref);
                    self.push_row(value_line, &raw, count, values).await?;
                }
            }
        }
        Ok(bytes.len())
    }

    /// Takes one row of `count` fields (None for NULL AS).
    async fn push_row<'f>(
        &mut self,
        line: i64,
        raw: &str,
        count: usize,
        fields: impl Iterator<Item = Option<&'f str>>,
    ) -> Result<()> {
        if count != self.inputs.len() {
            let reason = if count < self.inputs.len() {
                "Delimiter not found: the line has fewer fields than columns"
            } else {
                "Extra column(s) found"
            };
            return self.reject(line, raw, "", "", 1214, reason, DataErrorKind::InvalidText);
        }
        let pending = &mut self.pending;
        pending.lines.push(line);
        pending.raws.append_value(truncate_str(raw));
        for (builder, field) in pending.fields.iter_mut().zip(fields) {
            builder.append_option(field);
        }
        if pending.lines.len() >= CHUNK_ROWS {
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
        self.cx.engine().load_errors.push(LoadError {
            at: Utc::now(),
            user: self.cx.user().to_string(),
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
        if self.pending.lines.is_empty() {
            return Ok(());
        }
        let Pending {
            lines,
            mut raws,
            fields,
        } = std::mem::replace(&mut self.pending, Pending::new(self.inputs.len()));
        let raws = raws.finish();
        let texts: Vec<StringArray> = fields.into_iter().map(|mut b| b.finish()).collect();
        let rows = lines.len();
        let mut bad: Vec<Option<(usize, String, DataErrorKind)>> = vec![None; rows];
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.table.columns.len()];
        for (input, &index) in self.inputs.iter().enumerate() {
            let column = &self.table.columns[index];
            let string_type = matches!(
                column.sql_type,
                SqlType::Varchar { .. } | SqlType::Char { .. } | SqlType::Super
            );
            let as_null = |value: &str| {
                (self.plan.empty_as_null && value.is_empty())
                    || (self.plan.blanks_as_null && value.trim().is_empty())
                    || (!string_type && value.is_empty())
            };
            let text = &texts[input];
            let values: StringArray = if text.iter().flatten().any(as_null) {
                text.iter().map(|v| v.filter(|v| !as_null(v))).collect()
            } else {
                text.clone()
            };
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
        let columns = self.fill_defaults(columns, rows).await?;
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
                    .filter(|&input| texts[input].is_valid(row))
                    .map(|input| texts[input].value(row).to_string())
                    .unwrap_or_default();
                self.reject(
                    lines[row],
                    raws.value(row),
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
    pub(super) async fn push_columnar(&mut self, batch: RecordBatch) -> Result<()> {
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
                            let value = default_value(self.cx, default, data_type).await?;
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
        self.converted.push(batch).await
    }

    /// Ends the COPY after its input was read (`read`): commits what it loaded, or, when
    /// reading failed, gives the rows written up.
    pub(super) async fn end(mut self, read: Result<()>) -> Result<u64> {
        let read = match read {
            Ok(()) => self.convert_pending().await,
            Err(err) => Err(err),
        };
        if let Err(err) = read {
            self.converted.abort().await;
            return Err(err);
        }
        self.loaded += self.converted.finish().await?;
        if self.changes_copied {
            tributary_streaming::mirror::finish_copy(self.cx.catalogs(), &self.name).await?;
        }
        Ok(self.loaded)
    }
}

/// A failure of the input itself (a file that cannot be read), as opposed to its content.
#[derive(Debug)]
struct InputError(std::io::Error);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for InputError {}

type Input<'r> = Pin<Box<dyn AsyncRead + Send + 'r>>;

/// The input as it reads once decompressed, by the COPY's option or else by the name's
/// extension; and the compression it has.
fn decoder<'r>(
    name: &str,
    input: impl tokio::io::AsyncBufRead + Send + Unpin + 'r,
    compression: Compression,
) -> (Input<'r>, Compression) {
    let lower = name.to_ascii_lowercase();
    let compression = match compression {
        Compression::None if lower.ends_with(".gz") => Compression::Gzip,
        Compression::None if lower.ends_with(".bz2") => Compression::Bzip2,
        Compression::None if lower.ends_with(".zst") => Compression::Zstd,
        other => other,
    };
    let input: Input<'r> = match compression {
        Compression::None => Box::pin(input),
        Compression::Gzip => {
            let mut decoder = GzipDecoder::new(input);
            decoder.multiple_members(true);
            Box::pin(decoder)
        }
        Compression::Bzip2 => {
            let mut decoder = BzDecoder::new(input);
            decoder.multiple_members(true);
            Box::pin(decoder)
        }
        Compression::Zstd => {
            let mut decoder = ZstdDecoder::new(input);
            decoder.multiple_members(true);
            Box::pin(decoder)
        }
    };
    (input, compression)
}

fn read_error(name: &str, compression: Compression, err: std::io::Error) -> Error {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<InputError>())
    {
        Some(InputError(cause)) => Error::Storage(format!("reading {name} failed: {cause}")),
        None if compression == Compression::None => {
            Error::Storage(format!("reading {name} failed: {err}"))
        }
        None => Error::data(
            DataErrorKind::Other,
            format!("{name} could not be decompressed ({compression:?}): {err}"),
        ),
    }
}

/// The first [`RAW_KEPT`] bytes of `text`, at a character boundary.
fn truncate_str(text: &str) -> &str {
    let mut end = text.len().min(RAW_KEPT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn newlines(bytes: &[u8]) -> i64 {
    bytes.iter().filter(|b| **b == b'\n').count() as i64
}

/// Where the last CSV record that ends in `bytes` ends: after the last newline outside
/// quotes (a doubled quote inside a quoted field flips twice, so it counts right).
fn csv_boundary(bytes: &[u8], quote: u8) -> usize {
    let mut quoted = false;
    let mut end = 0;
    for (at, byte) in bytes.iter().enumerate() {
        if *byte == quote {
            quoted = !quoted;
        } else if *byte == b'\n' && !quoted {
            end = at + 1;
        }
    }
    end
}

/// Where a round of change records ends in `bytes`: after the last whole multiple of
/// [`CHANGE_LINES`] lines; with fewer lines than that, after the last line once they fill
/// [`CHANGE_BYTES`]; else nowhere yet (0).
fn changes_boundary(bytes: &[u8]) -> usize {
    let mut lines = 0;
    let mut round_end = 0;
    let mut line_end = 0;
    for (at, byte) in bytes.iter().enumerate() {
        if *byte == b'\n' {
            lines += 1;
            line_end = at + 1;
            if lines % CHANGE_LINES == 0 {
                round_end = line_end;
            }
        }
    }
    if round_end > 0 {
        round_end
    } else if bytes.len() >= CHANGE_BYTES {
        line_end
    } else {
        0
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

/// A column's DEFAULT as a one-row array of the column's type.
pub(crate) async fn default_value(
    cx: &Context,
    sql: &str,
    data_type: &DataType,
) -> Result<ArrayRef> {
    let batches = cx
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_end_where_records_end() {
        // A CSV block ends after the last newline outside quotes; doubled quotes flip twice.
        let csv = b"1,\"a\nb\"\n2,\"say \"\"hi\"\"\"\n3,\"open\nstill open";
        assert_eq!(
            csv_boundary(csv, b'"'),
            csv.len() - b"3,\"open\nstill open".len()
        );
        assert_eq!(csv_boundary(b"no newline yet", b'"'), 0);
        // Change records go in rounds of whole multiples of CHANGE_LINES lines...
        let lines = "{}\n".repeat(CHANGE_LINES * 2 + 5);
        assert_eq!(changes_boundary(lines.as_bytes()), CHANGE_LINES * 2 * 3);
        // ...or, short of that, wait for more unless the lines already fill CHANGE_BYTES.
        assert_eq!(changes_boundary(b"{}\n{}\n"), 0);
        let long = format!("{}\n", "x".repeat(CHANGE_BYTES)).into_bytes();
        assert_eq!(changes_boundary(&long), long.len());
    }

    #[test]
    fn text_fields_split_on_unescaped_delimiters() {
        let fields = split_text("a|b\\|c|\\N|x\\\\y", '|');
        let values: Vec<&str> = fields.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, vec!["a", "b|c", "N", "x\\y"]);
        assert_eq!(fields[2].0, "\\N");
    }
}
