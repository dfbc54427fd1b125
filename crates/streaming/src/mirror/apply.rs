//! A mirror's rounds: change records decoded, converted to the declared types, reduced to the
//! newest change of each key and stored, from a stream read, a streaming view's rows or COPY.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use arrow::datatypes::{DataType, Field};
use arrow::row::{RowConverter, SortField};
use serde_json::{Map, Value};
use tributary_catalog::{ChangeFormat, MaterializedView, MirrorSpec, SqlType, Table};
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::mirror::{change_schema, order_type, spec};
use tributary_engine::transaction::WriteKind;
use tributary_ingest::StreamRecord;
use tributary_ingest::change::{self, Change, ChangeSpec, Rejection, invalid, lookup};

use super::compact::{commit_spec, start_background};
use super::keyed::{convert, write_changes};
use crate::host::Host;
use crate::{Error, Result, ScanError, ViewId};

/// How the mirror's change records are decoded.
fn change_spec(spec: &MirrorSpec) -> ChangeSpec<'_> {
    ChangeSpec {
        format: match &spec.format {
            ChangeFormat::Debezium => change::ChangeFormat::Debezium,
            ChangeFormat::Dms => change::ChangeFormat::Dms,
            ChangeFormat::Dynamodb => change::ChangeFormat::Dynamodb,
            ChangeFormat::Operation { column } => change::ChangeFormat::Operation { column },
        },
        order: spec.order.as_deref(),
    }
}

/// What one batch of records produced: the changes to apply (in
/// [`change_schema`]) and the records that were rejected, by index.
struct Decoded {
    rows: Option<RecordBatch>,
    rejected: Vec<(usize, Rejection)>,
}

/// Turns records into the mirror's changes: decodes each, converts its values to the
/// declared types, and keeps the newest change of each key.
fn changes(table: &Table, spec: &MirrorSpec, records: &[&StreamRecord]) -> Result<Decoded> {
    let mut rejected = Vec::new();
    let mut decoded: Vec<(usize, Change)> = Vec::with_capacity(records.len());
    let decoding = change_spec(spec);
    for (index, record) in records.iter().enumerate() {
        match change::decode(decoding, record) {
            Ok(Some(change)) => decoded.push((index, change)),
            Ok(None) => {}
            Err(rejection) => rejected.push((index, rejection)),
        }
    }
    // Each column's values as text (SUPER as JSON text), as COPY converts them.
    let mut bad: Vec<Option<String>> = vec![None; decoded.len()];
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(table.columns.len() + 3);
    for column in &table.columns {
        let is_key = spec.key.contains(&column.name);
        let values: Vec<Option<String>> = decoded
            .iter()
            .map(|(_, change)| {
                if change.delete && !is_key {
                    return None;
                }
                match lookup(&change.image, &column.name) {
                    None | Some(Value::Null) => None,
                    Some(value) if column.sql_type == SqlType::Super => Some(value.to_string()),
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                }
            })
            .collect();
        let array = if column.sql_type == SqlType::Super {
            Arc::new(arrow::array::StringArray::from(values.clone())) as ArrayRef
        } else {
            let (array, failures) = tributary_engine::convert::convert_column(
                &arrow::array::StringArray::from_iter(values.iter().map(Option::as_deref)),
                &column.sql_type,
                Some("auto"),
                Some("auto"),
            )?;
            for (row, failure) in failures {
                bad[row].get_or_insert_with(|| format!("column \"{}\": {failure}", column.name));
            }
            array
        };
        for (row, value) in values.iter().enumerate() {
            if bad[row].is_some() {
                continue;
            }
            match value {
                None if is_key => {
                    bad[row] = Some(format!(
                        "the change has no value for key column \"{}\"",
                        column.name
                    ));
                }
                None if !column.nullable && !decoded[row].1.delete => {
                    bad[row] = Some(format!(
                        "the change has no value for NOT NULL column \"{}\"",
                        column.name
                    ));
                }
                Some(text) => {
                    if let Some(length) = column.sql_type.length() {
                        let bytes = match column.sql_type {
                            SqlType::Char { .. } => text.trim_end_matches(' ').len(),
                            _ => text.len(),
                        };
                        if bytes > length as usize {
                            bad[row] = Some(format!(
                                "column \"{}\": value too long for type {} ({bytes} bytes)",
                                column.name,
                                column.sql_type.display_name()
                            ));
                        }
                    }
                }
                None => {}
            }
        }
        arrays.push(arrow::compute::cast(
            &array,
            &column.sql_type.to_storage_arrow(),
        )?);
    }
    let orders: ArrayRef = match order_type(spec) {
        DataType::Int64 => Arc::new(Int64Array::from_iter(decoded.iter().enumerate().map(
            |(row, (_, change))| {
                let value = change::order_integer(&change.order);
                if value.is_none() {
                    bad[row].get_or_insert_with(|| {
                        "the ordering value is not an integer in BIGINT's range".into()
                    });
                }
                value
            },
        ))),
        _ => Arc::new(BinaryArray::from_iter_values(
            decoded.iter().map(|(_, c)| c.order.as_slice()),
        )),
    };
    let deleted = BooleanArray::from_iter(decoded.iter().map(|(_, c)| Some(c.delete)));
    arrays.push(orders);
    arrays.push(Arc::new(deleted));
    let schema = Arc::new(change_schema(table, spec));
    // Rejected rows may lack their key: nullable until they are filtered out.
    let nullable: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let all = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(nullable)), arrays)?;
    for (row, reason) in bad.iter().enumerate() {
        if let Some(reason) = reason {
            rejected.push((decoded[row].0, invalid(reason.clone())));
        }
    }
    // The newest change of each key: by order, then by stream position.
    let key_indices: Vec<usize> = spec
        .key
        .iter()
        .filter_map(|k| table.columns.iter().position(|c| &c.name == k))
        .collect();
    let converter = RowConverter::new(
        key_indices
            .iter()
            .map(|&i| SortField::new(all.column(i).data_type().clone()))
            .collect(),
    )?;
    let keys = converter.convert_columns(
        &key_indices
            .iter()
            .map(|&i| all.column(i).clone())
            .collect::<Vec<_>>(),
    )?;
    let mut newest: HashMap<&[u8], usize> = HashMap::new();
    for row in 0..decoded.len() {
        if bad[row].is_some() {
            continue;
        }
        let key = keys.row(row);
        newest
            .entry(key.data())
            .and_modify(|kept| {
                if decoded[row].1.order >= decoded[*kept].1.order {
                    *kept = row;
                }
            })
            .or_insert(row);
    }
    let mut kept: Vec<u32> = newest.into_values().map(|row| row as u32).collect();
    kept.sort_unstable();
    rejected.sort_by_key(|(index, _)| *index);
    if kept.is_empty() {
        return Ok(Decoded {
            rows: None,
            rejected,
        });
    }
    let indices = UInt32Array::from(kept);
    let columns: Vec<ArrayRef> = all
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c, &indices, None))
        .collect::<std::result::Result<_, _>>()?;
    Ok(Decoded {
        rows: Some(RecordBatch::try_new(schema, columns)?),
        rejected,
    })
}

/// Applies one read's usable records to the mirror in the round's transaction. Returns the
/// changes stored and the scan errors of the records that were not applied.
pub async fn apply(
    engine: &Arc<dyn Host>,
    catalogs: &SessionCatalogs,
    view: &ViewId,
    records: &[&StreamRecord],
) -> Result<(u64, Vec<ScanError>)> {
    let name = [
        view.database.clone(),
        view.schema.clone(),
        view.name.clone(),
    ];
    let (stored, rejected, mv) = apply_records(engine, catalogs, &name, records, true).await?;
    let errors = rejected
        .into_iter()
        .map(|(index, (code, reason))| ScanError::record(view, &mv, records[index], code, reason))
        .collect();
    Ok((stored, errors))
}

/// A streaming view's rows as change records, one per row: the document of the view's only
/// SUPER column if it has exactly one, else the row as an object of its columns. The
/// records keep the row's `shard_id` and `sequence_number` when the view selects them.
pub fn view_records(batches: &[RecordBatch]) -> Result<Vec<StreamRecord>> {
    let mut records = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let supers: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| tributary_engine::partiql::is_super(schema.field(i)))
            .collect();
        let options = arrow::util::display::FormatOptions::default();
        let formatters = batch
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let text = |column: usize, row: usize| -> Option<String> {
            (!batch.column(column).is_null(row)).then(|| formatters[column].value(row).to_string())
        };
        let position = |name: &str, row: usize| {
            schema
                .index_of(name)
                .ok()
                .and_then(|i| text(i, row))
                .unwrap_or_default()
        };
        for row in 0..batch.num_rows() {
            let data = match supers.as_slice() {
                [only] => text(*only, row).unwrap_or_else(|| "null".into()),
                _ => {
                    let mut object = Map::new();
                    for (i, field) in schema.fields().iter().enumerate() {
                        let value = match text(i, row) {
                            None => Value::Null,
                            Some(t) if supers.contains(&i) => {
                                serde_json::from_str(&t).unwrap_or(Value::String(t))
                            }
                            Some(t)
                                if field.data_type().is_numeric()
                                    || field.data_type() == &DataType::Boolean =>
                            {
                                serde_json::from_str(&t).unwrap_or(Value::String(t))
                            }
                            Some(t) => Value::String(t),
                        };
                        object.insert(field.name().clone(), value);
                    }
                    Value::Object(object).to_string()
                }
            };
            records.push(StreamRecord {
                shard_id: position("shard_id", row),
                sequence_number: position("sequence_number", row),
                partition_key: String::new(),
                arrival_micros: 0,
                kafka: None,
                data: bytes::Bytes::from(data),
            });
        }
    }
    Ok(records)
}

/// Applies change records to a mirror table in the current transaction: the newest change of
/// each key replaces its key's row, unless the mirror holds a newer one; then, with
/// `in_background`, a background rewrite of the mirror's files starts if none runs (COPY
/// rewrites them after its last chunk). A mirror stored by an earlier release is converted
/// first. Returns the changes applied, the records rejected (by index, with why) and the
/// view's definition as it was.
async fn apply_records(
    engine: &Arc<dyn Host>,
    catalogs: &SessionCatalogs,
    [database, schema, name]: &[String; 3],
    records: &[&StreamRecord],
    in_background: bool,
) -> Result<(u64, Vec<(usize, Rejection)>, MaterializedView)> {
    let mut table = catalogs
        .lock_table(database, schema, name, WriteKind::Rewrite)
        .await?
        .table;
    let mv = table
        .materialized
        .as_deref()
        .cloned()
        .ok_or_else(|| Error::Internal("a mirror table without its definition".into()))?;
    let mut updated = mv
        .mirror
        .clone()
        .ok_or_else(|| Error::Internal("not a mirror table".into()))?;
    if updated.keys.is_none() {
        let (version, converted) = convert(catalogs, &table, &updated).await?;
        table.version = version;
        updated = converted;
        if let Some(mv) = table.materialized.as_mut() {
            mv.mirror = Some(updated.clone());
        }
    }
    let decoded = changes(&table, &updated, records)?;
    // Every record uses a number: COPY positions its records with them.
    updated.next_sequence += records.len().max(1) as i64;
    let (stored, version) = match decoded.rows {
        Some(rows) => {
            let stored = rows.num_rows() as u64;
            let applied = write_changes(catalogs.store(), &table, &updated, rows).await?;
            if let Some(keys) = updated.keys.as_mut() {
                keys.version = applied.keys_version;
            }
            (stored, applied.version)
        }
        None => (0, table.version),
    };
    commit_spec(
        catalogs,
        [database, schema, name],
        &table.path,
        version,
        updated,
    )?;
    if in_background && stored > 0 {
        let name = [database.clone(), schema.clone(), name.clone()];
        start_background(engine, &name, &table.path);
    }
    Ok((stored, decoded.rejected, mv))
}

/// Applies change records loaded by COPY (one JSON record per line of `bytes`, the first
/// being line `first_line` of its input) to a mirror table as a stream read would apply them:
/// a backfill, such as a DMS full load or a Debezium snapshot exported to files. Their stream
/// position is their place in the input, after every earlier COPY's and before any stream
/// record (Kinesis sequence numbers are far larger). A COPY calls this a block of its input at
/// a time, then [`finish_copy`] once.
/// Returns the changes stored and the rejected lines (line number, the line, why).
pub async fn copy_records(
    engine: &Arc<dyn Host>,
    catalogs: &SessionCatalogs,
    name: &[String; 3],
    bytes: &[u8],
    first_line: i64,
) -> Result<(u64, Vec<(i64, String, String)>)> {
    const CHUNK: usize = 100_000;
    let lines: Vec<(i64, &[u8])> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (first_line + i as i64, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .collect();
    let mut stored = 0;
    let mut rejected = Vec::new();
    for chunk in lines.chunks(CHUNK) {
        let base = catalogs
            .pinned()
            .table(&name[0], &name[1], &name[2])
            .ok()
            .and_then(|t| spec(t).map(|s| s.next_sequence))
            .unwrap_or(1);
        let records: Vec<StreamRecord> = chunk
            .iter()
            .enumerate()
            .map(|(index, (_, data))| StreamRecord {
                shard_id: "copy".into(),
                sequence_number: (base + index as i64).to_string(),
                partition_key: String::new(),
                arrival_micros: 0,
                kafka: None,
                data: bytes::Bytes::copy_from_slice(data),
            })
            .collect();
        let refs: Vec<&StreamRecord> = records.iter().collect();
        let (count, bad, _) = apply_records(engine, catalogs, name, &refs, false).await?;
        stored += count;
        for (index, (_, reason)) in bad {
            let (line, data) = chunk[index];
            rejected.push((line, String::from_utf8_lossy(data).to_string(), reason));
        }
    }
    Ok((stored, rejected))
}

/// Ends a COPY into a mirror table: each round of it left a file in each of the mirror's
/// tables, merged now, in the COPY's transaction, which holds the mirror's lock anyway.
pub async fn finish_copy(catalogs: &SessionCatalogs, name: &[String; 3]) -> Result<()> {
    let [database, schema, table_name] = name;
    let table = catalogs
        .pinned()
        .table(database, schema, table_name)?
        .clone();
    let (version, updated) = super::compact::compact_now(catalogs, &table, false).await?;
    commit_spec(
        catalogs,
        [database, schema, table_name],
        &table.path,
        version,
        updated,
    )?;
    Ok(())
}
