//! The loader: input read a chunk of rows at a time (delimited text, CSV, JSON, Parquet),
//! converted to the table's columns, load errors kept, and chunks appended in the statement's
//! transaction.

use std::io::Read;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use chrono::Utc;
use tributary_catalog::{SqlType, Table};
use tributary_engine::convert::{RAW_KEPT, convert_column, truncate};
use tributary_engine::error::DataErrorKind;

use super::errors::LoadError;
use super::plan::{Compression, CopyPlan, Format};
use crate::context::Context;
use crate::{Error, Result};

/// Rows converted per chunk of text input.
const CHUNK_ROWS: usize = 8192;
/// Rows gathered before they are appended as one table version.
const APPEND_ROWS: usize = 1_000_000;

/// One input row before conversion.
struct RawRow {
    line: i64,
    raw: String,
    fields: Vec<Option<String>>,
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
    pending: Vec<RawRow>,
    converted: Vec<RecordBatch>,
    converted_rows: usize,
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
        Ok(Self {
            cx,
            plan,
            name: [
                cx.database().to_string(),
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

    pub(super) async fn push_bytes(&mut self, filename: &str, bytes: Bytes) -> Result<()> {
        self.filename = filename.to_string();
        let bytes = decompress(filename, bytes, self.plan.compression)?;
        if tributary_engine::mirror::spec(&self.table).is_some() {
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
        let catalogs = self.cx.catalogs();
        if !catalogs.in_explicit_transaction() {
            // Lock before reading, so that an automatic refresh that just committed does
            // not make this COPY conflict with it.
            catalogs
                .prelock(&self.name[0], &self.name[1], &self.name[2])
                .await?;
        }
        let (stored, rejected) = tributary_streaming::mirror::copy_records(
            &self.cx.engine().host(),
            catalogs,
            &self.name,
            bytes,
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
        self.loaded +=
            tributary_engine::table::append(self.cx.catalogs(), &self.name, batches).await?;
        Ok(())
    }

    pub(super) async fn finish(mut self) -> Result<u64> {
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
async fn default_value(cx: &Context, sql: &str, data_type: &DataType) -> Result<ArrayRef> {
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
    fn text_fields_split_on_unescaped_delimiters() {
        let fields = split_text("a|b\\|c|\\N|x\\\\y", '|');
        let values: Vec<&str> = fields.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, vec!["a", "b|c", "N", "x\\y"]);
        assert_eq!(fields[2].0, "\\N");
    }
}
