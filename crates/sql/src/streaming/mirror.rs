//! Mirror tables: a keyed copy of a source table, kept from a stream of change records
//! (`CREATE MIRROR TABLE`).
//!
//! A mirror is a streaming materialized view whose rounds apply changes by key instead of
//! appending rows, so it shares the view's reader, positions, runner and scan-error log: a
//! round's changes and the new stream positions land in one catalog commit.
//!
//! Storage is merge-on-read, so that applying a batch costs the batch and not the table. The
//! Delta table holds the declared columns and three hidden ones: [`ORDER_COLUMN`] (the
//! change's ordering value, encoded so that byte order is value order), [`DELETED_COLUMN`]
//! (a tombstone) and [`SEQUENCE_COLUMN`] (0 for a folded base row, else the apply sequence of
//! a stored change). A round appends the newest change of each key it read. A reader sees a
//! base row unless a stored change of its key is at least as new, and the newest stored
//! change of a key unless a base row is newer or the change is a delete. Comparing orders on
//! both sides makes replays and out-of-order changes harmless: an older change never wins.
//! When the stored changes outgrow a share of the base, the round folds them into a new base
//! (one rewrite, tombstones kept so that a late older change stays ignored). Until then,
//! rounds coalesce their change files in the background (the newest change per key of the
//! smallest files, into one file), so that a read opens a few files rather than one per
//! round; a change dropped that way is one a newer change of its key supersedes anyway.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use arrow::datatypes::{DataType, Field};
use arrow::row::{RowConverter, SortField};
use datafusion::catalog::TableProvider;
use datafusion::catalog::view::ViewTable;
use datafusion::datasource::provider_as_source;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{
    ColumnarValue, JoinType, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, TableSource, TypeSignature, Volatility, col, lit,
};
use datafusion::prelude::Expr;
use datafusion::sql::sqlparser::ast::{CreateTable, ObjectName};
use serde_json::{Map, Value};
use tributary_catalog::{
    ChangeFormat, Constraint, MaterializedView, MirrorSpec, Relation, SqlType, Table, ViewInput,
};
use tributary_ingest::StreamRecord;
use tributary_ingest::change::{self, Change, ChangeSpec, Rejection, invalid, lookup};
use tributary_storage::{DataFile, Replaced};

use super::{ScanError, ViewId, Work};
use crate::catalog_list::SessionCatalogs;
use crate::engine::Engine;
use crate::session::{Output, Session};
use crate::transaction::WriteKind;
use crate::{Error, Result};
use tributary_syntax::extension::MirrorClauses;

/// The hidden column holding a change's ordering value (see [`change::order_bytes`]).
pub(crate) const ORDER_COLUMN: &str = "__tributary_order";
/// The hidden column marking a deleted key (a tombstone).
pub(crate) const DELETED_COLUMN: &str = "__tributary_deleted";
/// The hidden column: 0 for a folded base row, else the change's apply sequence.
pub(crate) const SEQUENCE_COLUMN: &str = "__tributary_sequence";
/// A round folds the stored changes into the base once there are at least
/// `StreamingSettings::mirror_fold_changes` of them and at least this fraction of the base.
/// Reads cost grows with the stored changes (at 30k changes/s into 10M rows, a quarter let
/// them reach 1.8M and put freshness p99 at 4.2 s, a twentieth 1.9 s); a fold rewrites the
/// base, in the background.
const FOLD_BASE_FRACTION: u64 = 20;

/// The hidden columns of a mirror's Delta table, after the declared ones.
pub(crate) fn hidden_fields() -> Vec<Field> {
    vec![
        Field::new(ORDER_COLUMN, DataType::Binary, true),
        Field::new(DELETED_COLUMN, DataType::Boolean, true),
        Field::new(SEQUENCE_COLUMN, DataType::Int64, true),
    ]
}

/// The mirror part of a table's definition, if it is a mirror table.
pub(crate) fn spec(table: &Table) -> Option<&MirrorSpec> {
    table.materialized.as_ref()?.mirror.as_ref()
}

/// Refuses a client's write (INSERT, COPY, UPDATE, DELETE, MERGE, TRUNCATE, ALTER of
/// columns) to a mirror table: its rows come from its change stream.
pub(crate) fn refuse_write(table: &Table, name: &str) -> Result<()> {
    match spec(table) {
        Some(_) => Err(Error::WrongObjectType(format!(
            "cannot change mirror table \"{name}\": its rows come from its change stream"
        ))),
        None => Ok(()),
    }
}

/// `CREATE MIRROR TABLE`, carried as a `CREATE TABLE` with the mirror clauses.
pub(crate) async fn create(
    session: &mut Session,
    create: CreateTable,
    clauses: MirrorClauses,
) -> Result<Output> {
    if create.query.is_some() || create.like.is_some() || create.temporary {
        return Err(Error::InvalidStatement(
            "a mirror table is declared with its columns: CREATE MIRROR TABLE name (column type, ..., PRIMARY KEY (column, ...)) FROM ...".into(),
        ));
    }
    let (schema, name) = session.resolve_for_create(&create.name)?;
    let database = session.database().to_string();
    if !crate::ddl::relation_is_new(session, &schema, &name, create.if_not_exists)? {
        return Ok(Output::command("CREATE TABLE"));
    }
    let mut columns = crate::ddl::declared_columns(&create.columns)?;
    for column in &columns {
        if column.name.starts_with("__tributary_") {
            return Err(Error::InvalidStatement(format!(
                "column name \"{}\" is reserved for the mirror's bookkeeping",
                column.name
            )));
        }
        if column.identity.is_some() || column.default.is_some() {
            return Err(Error::InvalidStatement(format!(
                "column \"{}\" of a mirror table cannot have IDENTITY or DEFAULT: its values come from the change stream",
                column.name
            )));
        }
        if matches!(column.sql_type, SqlType::Time | SqlType::Varbyte { .. }) {
            return Err(Error::NotSupported(format!(
                "column \"{}\": a mirror table cannot hold {} yet",
                column.name,
                column.sql_type.display_name()
            )));
        }
    }
    let constraints = crate::ddl::constraints(&create.columns, &create.constraints);
    let key = constraints
        .iter()
        .find_map(|c| match c {
            Constraint::PrimaryKey { columns } => Some(columns.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            Error::InvalidStatement(
                "a mirror table needs a PRIMARY KEY: changes replace and delete rows by it".into(),
            )
        })?;
    for part in &key {
        let column = columns
            .iter_mut()
            .find(|c| &c.name == part)
            .ok_or_else(|| {
                Error::UndefinedColumn(format!(
                    "primary key column \"{part}\" is not a column of the table"
                ))
            })?;
        column.nullable = false;
    }
    let (source_schema, stream, sql, through_view) = source(session, &clauses.source)?;
    let format = match (clauses.format.as_str(), clauses.operation_column) {
        ("debezium", _) => ChangeFormat::Debezium,
        ("dms", _) => ChangeFormat::Dms,
        ("dynamodb", _) => ChangeFormat::Dynamodb,
        ("operation", Some(column)) => ChangeFormat::Operation { column },
        (other, _) => {
            return Err(Error::Syntax(format!("unknown change format {other}")));
        }
    };
    let owner = session.user().to_string();
    let mut table = super::view_table(&database, &schema, &name, &owner, columns, &[]);
    table.constraints = constraints;
    table.materialized = Some(Box::new(MaterializedView {
        sql,
        input: ViewInput::Stream,
        source_schema,
        stream,
        auto_refresh: clauses.auto_refresh,
        positions: Value::Null,
        aggregate: None,
        mirror: Some(MirrorSpec {
            format,
            key,
            order: clauses.order,
            through_view,
            next_sequence: 1,
            unfolded: 0,
            base_rows: 0,
            base_newest: None,
            changes_oldest: None,
            folds: 0,
        }),
    }));
    super::store_view_table(session, [&database, &schema, &name], table).await?;
    Ok(Output::command("CREATE TABLE"))
}

/// The mirror's source: a stream of an external schema, read as it is, or a streaming view,
/// whose stream the mirror reads through the view's query. Returns the external schema, the
/// stream, the query the mirror's rounds run, and the view's name.
fn source(session: &Session, parts: &[String]) -> Result<(String, String, String, Option<String>)> {
    let database = session.database();
    let pinned = session.catalogs().pinned();
    if let [schema, stream] = parts
        && pinned
            .schema(database, schema)
            .is_ok_and(|s| s.external.is_some())
    {
        // The records pass through as they are: the mirror decodes them itself.
        let kafka = pinned
            .schema(database, schema)
            .ok()
            .and_then(|s| s.external.as_ref())
            .is_some_and(|e| e.is_kafka());
        let columns = if kafka {
            "kafka_partition, kafka_offset, kafka_value"
        } else {
            "shard_id, sequence_number, kinesis_data"
        };
        let sql = format!("SELECT {columns} FROM {}.{}", quote(schema), quote(stream));
        return Ok((schema.clone(), stream.clone(), sql, None));
    }
    let idents: Vec<datafusion::sql::sqlparser::ast::Ident> = parts
        .iter()
        .map(|p| datafusion::sql::sqlparser::ast::Ident::with_quote('"', p))
        .collect();
    let refused = |what: String| {
        Error::InvalidStatement(format!(
            "a mirror table reads a stream of an external schema (FROM schema.\"stream\") or a streaming materialized view: {what}"
        ))
    };
    let (schema, name) = session
        .resolve_existing(&ObjectName::from(idents))
        .map_err(|_| refused(format!("\"{}\" is neither", parts.join("."))))?;
    match pinned.relation(database, &schema, &name) {
        Some(Relation::Table(table)) => match table.materialized.as_deref() {
            Some(mv) if mv.input.is_stream() && mv.mirror.is_none() && mv.aggregate.is_none() => {
                Ok((
                    mv.source_schema.clone(),
                    mv.stream.clone(),
                    mv.sql.clone(),
                    Some(name),
                ))
            }
            _ => Err(refused(format!(
                "\"{name}\" is not a streaming view (one without GROUP BY)"
            ))),
        },
        _ => Err(refused(format!("\"{name}\" is not a streaming view"))),
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

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

/// What one batch of records produced: the rows to store (stored schema) and the records
/// that were rejected, by index.
struct Decoded {
    rows: Option<RecordBatch>,
    rejected: Vec<(usize, Rejection)>,
    /// The oldest ordering value among the rows.
    oldest: Option<Vec<u8>>,
}

/// Turns records into the mirror's stored rows: decodes each, converts its values to the
/// declared types, and keeps the newest change of each key. `first_sequence` numbers the
/// kept changes in stream order.
fn changes(
    table: &Table,
    spec: &MirrorSpec,
    records: &[&StreamRecord],
    first_sequence: i64,
) -> Result<Decoded> {
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
            let (array, failures) =
                crate::copy::convert_column(&values, &column.sql_type, Some("auto"), Some("auto"))?;
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
    let orders = BinaryArray::from_iter_values(decoded.iter().map(|(_, c)| c.order.as_slice()));
    let deleted = BooleanArray::from_iter(decoded.iter().map(|(_, c)| Some(c.delete)));
    arrays.push(Arc::new(orders));
    arrays.push(Arc::new(deleted));
    arrays.push(Arc::new(Int64Array::from(vec![0i64; decoded.len()])));
    let schema = Arc::new(crate::ddl::storage_schema(table));
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
    let oldest = kept
        .iter()
        .map(|&row| &decoded[row as usize].1.order)
        .min()
        .cloned();
    rejected.sort_by_key(|(index, _)| *index);
    if kept.is_empty() {
        return Ok(Decoded {
            rows: None,
            rejected,
            oldest: None,
        });
    }
    let indices = UInt32Array::from(kept);
    let mut columns: Vec<ArrayRef> = all
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c, &indices, None))
        .collect::<std::result::Result<_, _>>()?;
    let sequences: Int64Array = (0..indices.len() as i64)
        .map(|i| Some(first_sequence + i))
        .collect();
    *columns.last_mut().expect("the sequence column") = Arc::new(sequences);
    Ok(Decoded {
        rows: Some(RecordBatch::try_new(schema, columns)?),
        rejected,
        oldest,
    })
}

/// Applies one read's usable records to the mirror in the round's transaction. Returns the
/// changes stored and the scan errors of the records that were not applied.
pub(crate) async fn apply(
    catalogs: &SessionCatalogs,
    view: &ViewId,
    records: &[&StreamRecord],
) -> Result<(u64, Vec<ScanError>)> {
    let name = [
        view.database.clone(),
        view.schema.clone(),
        view.name.clone(),
    ];
    let (stored, rejected, mv) = apply_records(catalogs, &name, records, true).await?;
    let errors = rejected
        .into_iter()
        .map(|(index, (code, reason))| ScanError::record(view, &mv, records[index], code, reason))
        .collect();
    Ok((stored, errors))
}

/// A streaming view's rows as change records, one per row: the document of the view's only
/// SUPER column if it has exactly one, else the row as an object of its columns. The
/// records keep the row's `shard_id` and `sequence_number` when the view selects them.
pub(crate) fn view_records(batches: &[RecordBatch]) -> Result<Vec<StreamRecord>> {
    let mut records = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let supers: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| crate::partiql::is_super(schema.field(i)))
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
/// each key is stored, and the stored changes are folded into the base once they are many, in
/// this transaction or, with `in_background`, by a task that commits on its own.
/// Returns the changes stored, the records rejected (by index, with why) and the view's
/// definition as it was.
async fn apply_records(
    catalogs: &SessionCatalogs,
    [database, schema, name]: &[String; 3],
    records: &[&StreamRecord],
    in_background: bool,
) -> Result<(u64, Vec<(usize, Rejection)>, MaterializedView)> {
    let table = catalogs
        .lock_table(database, schema, name, WriteKind::Rewrite)
        .await?
        .table;
    let mv = table
        .materialized
        .as_deref()
        .cloned()
        .ok_or_else(|| Error::Internal("a mirror table without its definition".into()))?;
    let spec = mv
        .mirror
        .as_ref()
        .ok_or_else(|| Error::Internal("not a mirror table".into()))?;
    let decoded = changes(&table, spec, records, spec.next_sequence)?;
    let Some(rows) = decoded.rows else {
        return Ok((0, decoded.rejected, mv));
    };
    let stored = rows.num_rows() as u64;
    let storage = storage(catalogs.engine(), &table.path, spec)?;
    let version = storage.append(table.version, vec![rows]).await?.version;
    let mut updated = spec.clone();
    // Every record uses a number: COPY positions its records with them.
    updated.next_sequence += records.len().max(1) as i64;
    updated.unfolded += stored;
    updated.changes_oldest = match (updated.changes_oldest.take(), decoded.oldest) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let fold_at = catalogs.engine().streams.settings().mirror_fold_changes;
    let fold_due = updated.unfolded >= fold_at.max(updated.base_rows / FOLD_BASE_FRACTION);
    let version = if fold_due && !in_background {
        fold(catalogs, &table, version, &mut updated).await?
    } else {
        version
    };
    commit_spec(
        catalogs,
        [database, schema, name],
        &table.path,
        version,
        updated,
    )?;
    if in_background {
        let work = if fold_due { Work::Fold } else { Work::Coalesce };
        start_background(
            catalogs.engine(),
            &[database.clone(), schema.clone(), name.clone()],
            &table.path,
            work,
        );
    }
    Ok((stored, decoded.rejected, mv))
}

/// Change records read from files by COPY (one JSON record per line), applied to a mirror
/// table as a stream read would apply them: a backfill, such as a DMS full load or a
/// Debezium snapshot exported to files. Their stream position is their place in the input,
/// after every earlier COPY's and before any stream record (Kinesis sequence numbers are far
/// larger).
/// Returns the changes stored and the rejected lines (line number, the line, why).
pub(crate) async fn copy_records(
    catalogs: &SessionCatalogs,
    name: &[String; 3],
    bytes: &[u8],
) -> Result<(u64, Vec<(i64, String, String)>)> {
    const CHUNK: usize = 100_000;
    let lines: Vec<(i64, &[u8])> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i as i64 + 1, line.trim_ascii()))
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
        let (count, bad, _) = apply_records(catalogs, name, &refs, false).await?;
        stored += count;
        for (index, (_, reason)) in bad {
            let (line, data) = chunk[index];
            rejected.push((line, String::from_utf8_lossy(data).to_string(), reason));
        }
    }
    Ok((stored, rejected))
}

/// `VACUUM [table]`: folds a mirror table's stored changes into its base now (without a
/// name, every mirror table of the database). Other tables need nothing: background
/// maintenance compacts and vacuums them.
pub(crate) async fn vacuum(session: &mut Session, name: Option<ObjectName>) -> Result<Output> {
    let database = session.database().to_string();
    let pinned = session.catalogs().pinned();
    let targets: Vec<(String, String)> = match name {
        Some(name) => vec![session.resolve_existing(&name)?],
        None => pinned
            .databases
            .get(&database)
            .into_iter()
            .flat_map(|db| &db.schemas)
            .flat_map(|(schema, s)| {
                s.relations
                    .iter()
                    .filter_map(move |(name, relation)| match relation {
                        Relation::Table(t) if spec(t).is_some() => {
                            Some((schema.clone(), name.clone()))
                        }
                        _ => None,
                    })
            })
            .collect(),
    };
    let autocommit = !session.catalogs().in_explicit_transaction();
    for (schema, name) in targets {
        let is_mirror = matches!(
            session.catalogs().pinned().relation(&database, &schema, &name),
            Some(Relation::Table(t)) if spec(t).is_some()
        );
        if !is_mirror {
            continue;
        }
        if autocommit {
            session
                .catalogs()
                .prelock(&database, &schema, &name)
                .await?;
        }
        let catalogs = session.catalogs();
        let table = catalogs
            .lock_table(&database, &schema, &name, WriteKind::Rewrite)
            .await?
            .table;
        if spec(&table).is_some_and(|s| s.unfolded == 0) {
            continue;
        }
        let mut updated = spec(&table)
            .cloned()
            .ok_or_else(|| Error::Internal("not a mirror table".into()))?;
        let version = fold(catalogs, &table, table.version, &mut updated).await?;
        commit_spec(
            catalogs,
            [&database, &schema, &name],
            &table.path,
            version,
            updated,
        )?;
    }
    Ok(Output::command("VACUUM"))
}

/// Pins the mirror's new table version with its updated bookkeeping in the transaction.
fn commit_spec(
    catalogs: &SessionCatalogs,
    [database, schema, name]: [&String; 3],
    path: &str,
    version: u64,
    updated: MirrorSpec,
) -> Result<()> {
    catalogs.record_written(path);
    catalogs.modify(|state| {
        let target = state.table_mut(database, schema, name)?;
        target.version = version;
        if let Some(mv) = target.materialized.as_mut() {
            mv.mirror = Some(updated);
        }
        Ok(())
    })?;
    Ok(())
}

/// The mirror's rows at `version` as one base: the stored changes merged in, tombstones kept
/// (sequence 0). Returns the rows in the stored schema and their newest ordering value.
async fn folded_rows(
    engine: &Engine,
    table: &Table,
    version: u64,
    spec: &MirrorSpec,
) -> Result<(Vec<RecordBatch>, Option<Vec<u8>>)> {
    let delta = engine.storage.table(&table.path)?.provider(version).await?;
    let batches = stored_rows(merged_plan(delta, table, spec, true)?, table).await?;
    let order_index = table.columns.len();
    let newest = batches
        .iter()
        .filter_map(|b| {
            let orders = b
                .column(order_index)
                .as_any()
                .downcast_ref::<BinaryArray>()?;
            arrow::compute::max_binary(orders).map(<[u8]>::to_vec)
        })
        .max();
    Ok((batches, newest))
}

/// Runs a plan whose rows are in the order of the mirror's stored columns, and casts them to
/// the stored schema.
async fn stored_rows(plan: LogicalPlan, table: &Table) -> Result<Vec<RecordBatch>> {
    let context = crate::session::expression_context();
    let batches = context.execute_logical_plan(plan).await?.collect().await?;
    let schema = Arc::new(crate::ddl::storage_schema(table));
    batches
        .iter()
        .map(|b| crate::ddl::cast_batch(b, &schema))
        .collect()
}

/// Rewrites the mirror's rows as one base (tombstones kept, stored changes merged), on top of
/// `version`, and records it in `spec`. Returns the new version.
async fn fold(
    catalogs: &SessionCatalogs,
    table: &Table,
    version: u64,
    spec: &mut MirrorSpec,
) -> Result<u64> {
    let (batches, newest) = folded_rows(catalogs.engine(), table, version, spec).await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let schema = Arc::new(crate::ddl::storage_schema(table));
    let storage = storage(catalogs.engine(), &table.path, spec)?;
    let version = storage.overwrite(version, batches, &schema).await?;
    tracing::debug!(table = %table.path, rows, "folded the mirror's changes into its base");
    spec.unfolded = 0;
    spec.base_rows = rows as u64;
    spec.base_newest = newest;
    spec.changes_oldest = None;
    spec.folds += 1;
    Ok(version)
}

/// The mirror's Delta table, whose files index the key in bloom filters: a lookup by key
/// then skips every change file (and base row group) that does not hold the key.
fn storage(
    engine: &Engine,
    path: &str,
    spec: &MirrorSpec,
) -> Result<tributary_storage::TableHandle> {
    Ok(engine.storage.table(path)?.with_bloom_filters(&spec.key))
}

/// Starts background work on a mirror unless it may not start now (see
/// [`super::Streams::begin_work`]); a later round asks again. A stream round must not fold
/// in line: a fold of a large mirror takes seconds, and the round holds the table's lock, so
/// every later round would wait for it.
fn start_background(engine: &Arc<Engine>, name: &[String; 3], path: &str, work: Work) {
    if !engine.streams.begin_work(path, work) {
        return;
    }
    /// Ends the work's mark however its task ends (a panic included), so that a later round
    /// can start it again.
    struct Running(Arc<Engine>, String, Work);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.streams.end_work(&self.1, self.2);
        }
    }
    let running = Running(engine.clone(), path.to_string(), work);
    let engine = engine.clone();
    let name = name.clone();
    let path = path.to_string();
    crate::runtime::spawn_background(async move {
        let _running = running;
        let started = std::time::Instant::now();
        let done = match work {
            Work::Fold => background_fold(&engine, &name, &path).await,
            Work::Coalesce => background_coalesce(&engine, &name, &path).await,
        };
        if let Ok(Some(_)) = done {
            let kind = match work {
                Work::Fold => "fold",
                Work::Coalesce => "coalesce",
            };
            engine
                .metrics
                .mirror_work
                .get_or_create(&vec![("kind", kind.to_string())])
                .inc();
        }
        match done {
            Ok(Some(rows)) => tracing::debug!(
                table = %name[2],
                ?work,
                rows,
                seconds = started.elapsed().as_secs_f64(),
                "rewrote the mirror's files"
            ),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(table = %name[2], ?work, error = %err, "mirror rewrite failed; a later round retries")
            }
        }
    });
}

/// Folds the mirror as of its committed version without holding its lock, then, holding it
/// briefly, commits the folded rows in place of that version's files; changes stored by
/// rounds meanwhile stay as stored changes. Returns the base rows, or None when the mirror
/// was dropped, replaced or folded by someone else meanwhile.
async fn background_fold(
    engine: &Arc<Engine>,
    name: &[String; 3],
    path: &str,
) -> Result<Option<u64>> {
    let Some((read, read_spec)) = committed(engine, name, path)? else {
        return Ok(None);
    };
    engine.streams.fold_reads(path, read.version);
    let (batches, newest) = folded_rows(engine, &read, read.version, &read_spec).await?;
    let storage = storage(engine, path, &read_spec)?;
    let staged = storage.stage(read.version, &batches).await?;
    drop(batches);
    let rows = staged.rows;
    let update = async |now: &MirrorSpec, version: u64| -> Result<MirrorSpec> {
        let mut updated = now.clone();
        updated.unfolded = now.unfolded.saturating_sub(read_spec.unfolded);
        updated.base_rows = rows;
        updated.base_newest = newest;
        updated.folds += 1;
        updated.changes_oldest = if updated.unfolded == 0 {
            None
        } else {
            oldest_change_since(&storage, version, read_spec.next_sequence).await?
        };
        Ok(updated)
    };
    commit_staged(
        engine,
        name,
        (&read, &read_spec),
        Replaced::All,
        staged,
        update,
    )
    .await
}

/// The mirror stored at `path` as committed, with its bookkeeping; None when it was dropped or
/// replaced.
fn committed(
    engine: &Engine,
    [database, schema, name]: &[String; 3],
    path: &str,
) -> Result<Option<(Table, MirrorSpec)>> {
    let read = engine
        .catalog_snapshot()
        .table(database, schema, name)?
        .clone();
    Ok(match spec(&read).cloned() {
        Some(read_spec) if read.path == path => Some((read, read_spec)),
        _ => None,
    })
}

/// Holding the mirror's lock briefly, commits `staged` in place of the `replaced` files of
/// the version `read` it was computed from, with the bookkeeping `update` makes of the
/// current one and the new version. Returns the staged rows, or None (nothing committed)
/// when the mirror was dropped, replaced or folded by someone else, or a replaced file was
/// rewritten meanwhile.
async fn commit_staged(
    engine: &Arc<Engine>,
    [database, schema, name]: &[String; 3],
    (read, read_spec): (&Table, &MirrorSpec),
    replaced_files: Replaced<'_>,
    staged: tributary_storage::StagedFiles,
    update: impl AsyncFnOnce(&MirrorSpec, u64) -> Result<MirrorSpec>,
) -> Result<Option<u64>> {
    let rows = staged.rows;
    let storage = storage(engine, &read.path, read_spec)?;
    let session = engine.session(&read.owner, database)?;
    let catalogs = session.catalogs().clone();
    let commit = async {
        let current = catalogs
            .lock_table(database, schema, name, WriteKind::Rewrite)
            .await?
            .table;
        let Some(now) = spec(&current).filter(|s| s.folds == read_spec.folds) else {
            return Ok(None);
        };
        if current.path != read.path {
            return Ok(None);
        }
        let Some(version) = replaced(
            storage
                .replace_files(read.version, current.version, replaced_files, staged)
                .await,
        )?
        else {
            return Ok(None);
        };
        let updated = update(now, version).await?;
        commit_spec(
            &catalogs,
            [database, schema, name],
            &read.path,
            version,
            updated,
        )?;
        Ok(Some(rows))
    };
    catalogs
        .locked_transaction([database, schema, name], commit)
        .await
}

/// The version [`tributary_storage::TableHandle::replace_files`] committed, or None if a
/// file it was to replace had been rewritten meanwhile (the work is given up).
fn replaced(outcome: tributary_storage::Result<u64>) -> Result<Option<u64>> {
    match outcome {
        Ok(version) => Ok(Some(version)),
        Err(tributary_storage::Error::Conflict { .. }) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// A coalesce starts once a mirror has this many change files (files of stored changes, one
/// per round that stored any), and merges at least this many.
const COALESCE_FILES: usize = 8;

/// Change files a mirror may have before a coalesce merges the smallest ones whatever their
/// sizes.
const COALESCE_FILES_MAX: usize = 16;

/// True for a file of stored changes (not of the base), from its log statistics. A file
/// without statistics of the sequence column is never coalesced.
fn is_change_file(file: &DataFile) -> bool {
    file.min_values
        .get(SEQUENCE_COLUMN)
        .and_then(Value::as_i64)
        .is_some_and(|sequence| sequence > 0)
}

/// The change files a coalesce merges, smallest first: each next file while it holds no more
/// rows than the files taken before it together, so that a row is rewritten about log2 of
/// (stored changes / round size) times before a fold, as in a binary counter. Nothing while
/// that would take fewer than [`COALESCE_FILES`] and there are fewer than
/// [`COALESCE_FILES_MAX`].
fn coalesce_choice(mut files: Vec<DataFile>) -> Vec<DataFile> {
    files.sort_by_key(|f| f.rows);
    let mut total = 0;
    let mut taken = 0;
    for file in &files {
        if taken >= 2 && file.rows > total {
            break;
        }
        total += file.rows;
        taken += 1;
    }
    if taken < COALESCE_FILES {
        if files.len() < COALESCE_FILES_MAX {
            return Vec::new();
        }
        taken = COALESCE_FILES;
    }
    files.truncate(taken);
    files
}

/// Merges some of the mirror's change files into one that holds the newest change of each
/// key among them (tombstones and orders kept), so that reads open and aggregate fewer files
/// between folds. Reads its committed version without holding its lock, then commits the new
/// file in place of exactly the merged ones. Files a running fold reads are left alone: the
/// fold replaces them. Returns the rows written, or None with nothing to merge or when the
/// mirror changed under it.
async fn background_coalesce(
    engine: &Arc<Engine>,
    name: &[String; 3],
    path: &str,
) -> Result<Option<u64>> {
    let Some((read, read_spec)) = committed(engine, name, path)? else {
        return Ok(None);
    };
    let storage = storage(engine, path, &read_spec)?;
    let folding: std::collections::HashSet<String> = match engine.streams.folding(path) {
        Some(version) => storage
            .files(version)
            .await?
            .into_iter()
            .map(|f| f.path)
            .collect(),
        None => Default::default(),
    };
    let changes = storage
        .files(read.version)
        .await?
        .into_iter()
        .filter(|f| is_change_file(f) && !folding.contains(&f.path))
        .collect();
    let chosen = coalesce_choice(changes);
    if chosen.is_empty() {
        return Ok(None);
    }
    let paths: Vec<String> = chosen.iter().map(|f| f.path.clone()).collect();
    let merged_rows: u64 = chosen.iter().map(|f| f.rows).sum();
    let source = provider_as_source(storage.provider_of(read.version, &paths).await?);
    let batches = stored_rows(newest_changes(&source, &read, &read_spec)?, &read).await?;
    let staged = storage.stage(read.version, &batches).await?;
    drop(batches);
    let rows = staged.rows;
    let update = async |now: &MirrorSpec, _version: u64| -> Result<MirrorSpec> {
        let mut updated = now.clone();
        updated.unfolded = now.unfolded.saturating_sub(merged_rows - rows);
        Ok(updated)
    };
    commit_staged(
        engine,
        name,
        (&read, &read_spec),
        Replaced::Only(&paths),
        staged,
        update,
    )
    .await
}

/// The oldest ordering value among the changes stored with a sequence from `sequence` on.
async fn oldest_change_since(
    storage: &tributary_storage::TableHandle,
    version: u64,
    sequence: i64,
) -> Result<Option<Vec<u8>>> {
    let context = crate::session::expression_context();
    let batches = context
        .read_table(storage.provider(version).await?)?
        .filter(col(SEQUENCE_COLUMN).gt_eq(lit(sequence)))?
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::min(col(ORDER_COLUMN)).alias("oldest")],
        )?
        .collect()
        .await?;
    let oldest = batches.first().and_then(|b| {
        let column = arrow::compute::cast(b.column(0), &DataType::Binary).ok()?;
        let column = column.as_any().downcast_ref::<BinaryArray>()?;
        (!column.is_empty() && !column.is_null(0)).then(|| column.value(0).to_vec())
    });
    Ok(oldest)
}

/// The table readers see: the merge of the base rows and the stored changes.
pub(crate) fn reader(
    delta: Arc<dyn TableProvider>,
    table: &Table,
) -> Result<Arc<dyn TableProvider>> {
    let spec = spec(table).ok_or_else(|| Error::Internal("not a mirror table".into()))?;
    let plan = merged_plan(delta, table, spec, false)?;
    Ok(Arc::new(MergedTable(ViewTable::new(plan, None))))
}

/// The merge plan as a table. Its joins are planned without dynamic filters: the query's
/// physical optimizer runs again over the planned merge and may swap a join's inputs, which
/// DataFusion refuses once the join has a dynamic filter.
#[derive(Debug)]
struct MergedTable(ViewTable);

#[async_trait::async_trait]
impl TableProvider for MergedTable {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        self.0.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>>
    {
        self.0.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let Some(session) = state.as_any().downcast_ref::<SessionState>() else {
            return self.0.scan(state, projection, filters, limit).await;
        };
        let mut config = session.config().clone();
        config
            .options_mut()
            .optimizer
            .enable_join_dynamic_filter_pushdown = false;
        let session = SessionStateBuilder::new_from_existing(session.clone())
            .with_config(config)
            .build();
        self.0.scan(&session, projection, filters, limit).await
    }
}

/// The merge of base rows and stored changes: with `fold`, every column and the tombstones,
/// as a new base (sequence 0); else the declared columns of the live rows.
fn merged_plan(
    delta: Arc<dyn TableProvider>,
    table: &Table,
    spec: &MirrorSpec,
    fold: bool,
) -> Result<LogicalPlan> {
    let source = provider_as_source(delta);
    let base = |alias: &str| -> Result<LogicalPlanBuilder> {
        Ok(LogicalPlanBuilder::scan(alias, source.clone(), None)?
            .filter(col(SEQUENCE_COLUMN).eq(lit(0i64)))?)
    };
    let latest = newest_changes(&source, table, spec)?;
    let same_key = |left: &str, right: &str| -> Vec<Expr> {
        spec.key
            .iter()
            .map(|k| column(left, k).eq(column(right, k)))
            .collect()
    };
    let order = |alias: &str| column(alias, ORDER_COLUMN);
    // When no stored change is older than the newest base row (the usual case: changes arrive
    // in order), a stored change always supersedes its key's base row.
    let in_order = match (&spec.changes_oldest, &spec.base_newest) {
        (Some(oldest), Some(newest)) => oldest >= newest,
        _ => true,
    };
    // Base rows no stored change of their key supersedes...
    let mut on = same_key("b", "l");
    if !in_order {
        on.push(order("l").gt_eq(order("b")));
    }
    let kept_base = base("b")?.join_on(latest.clone(), JoinType::LeftAnti, on)?;
    // ...and the newest changes no base row supersedes.
    let kept_changes = if in_order {
        LogicalPlanBuilder::from(latest)
    } else {
        let mut on = same_key("l", "b");
        on.push(order("b").gt(order("l")));
        LogicalPlanBuilder::from(latest).join_on(base("b")?.build()?, JoinType::LeftAnti, on)?
    };
    let output = |builder: LogicalPlanBuilder, alias: &str| -> Result<LogicalPlan> {
        let columns = table
            .columns
            .iter()
            .map(|c| column(alias, &c.name).alias(c.name.clone()));
        let builder = if fold {
            let hidden = [
                column(alias, ORDER_COLUMN).alias(ORDER_COLUMN),
                column(alias, DELETED_COLUMN).alias(DELETED_COLUMN),
                lit(0i64).alias(SEQUENCE_COLUMN),
            ];
            builder.project(columns.chain(hidden))?
        } else {
            builder
                .filter(column(alias, DELETED_COLUMN).eq(lit(false)))?
                .project(columns)?
        };
        Ok(builder.build()?)
    };
    let plan = LogicalPlanBuilder::from(output(kept_base, "b")?)
        .union(output(kept_changes, "l")?)?
        .build()?;
    Ok(plan)
}

/// The newest stored change of each key (tombstones included), every stored column, as
/// relation "l".
fn newest_changes(
    source: &Arc<dyn TableSource>,
    table: &Table,
    spec: &MirrorSpec,
) -> Result<LogicalPlan> {
    let all_columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| c.name.clone())
        .chain([ORDER_COLUMN, DELETED_COLUMN, SEQUENCE_COLUMN].map(String::from))
        .collect();
    let keys: Vec<Expr> = spec.key.iter().map(|k| column("n", k)).collect();
    // The newest stored change of each key: the change whose (order, sequence) is the key's
    // greatest. A hash aggregate and a join, because a window partitioned by key costs a
    // partition's state per key, many times more with a million stored changes.
    let rank = || newest_rank().call(vec![col(ORDER_COLUMN), col(SEQUENCE_COLUMN)]);
    let changes = |alias: &str| -> Result<LogicalPlanBuilder> {
        Ok(LogicalPlanBuilder::scan(alias, source.clone(), None)?
            .filter(col(SEQUENCE_COLUMN).gt(lit(0i64)))?)
    };
    let newest = changes("n")?
        .aggregate(
            keys,
            vec![datafusion::functions_aggregate::expr_fn::max(rank()).alias(RANK_COLUMN)],
        )?
        .alias("n")?
        .build()?;
    let mut on: Vec<Expr> = spec
        .key
        .iter()
        .map(|k| column("c", k).eq(column("n", k)))
        .collect();
    on.push(column("c", RANK_COLUMN).eq(column("n", RANK_COLUMN)));
    let latest = changes("c")?
        .project(
            all_columns
                .iter()
                .map(|c| column("c", c))
                .chain([rank().alias(RANK_COLUMN)]),
        )?
        .alias("c")?
        .join_on(newest, JoinType::LeftSemi, on)?
        .project(all_columns.iter().map(|c| column("c", c)))?
        .alias("l")?
        .build()?;
    Ok(latest)
}

/// A column of a relation in the merge plan, by its exact name.
fn column(relation: &str, name: &str) -> Expr {
    Expr::Column(datafusion::common::Column::new(Some(relation), name))
}

/// The merge plan's name for a change's rank (see [`NewestRank`]).
const RANK_COLUMN: &str = "__tributary_rank";

/// The function ranking a key's stored changes for the merge plan.
fn newest_rank() -> Arc<ScalarUDF> {
    static FUNCTION: std::sync::OnceLock<Arc<ScalarUDF>> = std::sync::OnceLock::new();
    FUNCTION
        .get_or_init(|| {
            Arc::new(ScalarUDF::new_from_impl(NewestRank {
                signature: Signature::one_of(
                    [DataType::Binary, DataType::BinaryView]
                        .map(|order| TypeSignature::Exact(vec![order, DataType::Int64]))
                        .to_vec(),
                    Volatility::Immutable,
                ),
            }))
        })
        .clone()
}

/// `(order, sequence)` as one binary value whose byte order is the pairs' order, so that
/// `max` finds a key's newest change: the order bytes escaped to be prefix-free (0x00 becomes
/// 0x00 0xFF, then a 0x00 0x00 terminator), then the sequence big-endian.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NewestRank {
    signature: Signature,
}

impl ScalarUDFImpl for NewestRank {
    fn name(&self) -> &str {
        "__tributary_newest_rank"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Binary)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let orders = arrow::compute::cast(&arrays[0], &DataType::Binary)?;
        let orders = orders.as_any().downcast_ref::<BinaryArray>();
        let sequences = arrays[1].as_any().downcast_ref::<Int64Array>();
        let (Some(orders), Some(sequences)) = (orders, sequences) else {
            return datafusion::common::exec_err!("__tributary_newest_rank takes binary, bigint");
        };
        let mut ranks = arrow::array::BinaryBuilder::with_capacity(
            orders.len(),
            orders.values().len() + orders.len() * 10,
        );
        let mut rank = Vec::new();
        for (order, sequence) in orders.iter().zip(sequences.iter()) {
            rank.clear();
            for &byte in order.unwrap_or_default() {
                rank.push(byte);
                if byte == 0 {
                    rank.push(0xFF);
                }
            }
            rank.extend_from_slice(&[0, 0]);
            rank.extend_from_slice(&sequence.unwrap_or_default().to_be_bytes());
            ranks.append_value(&rank);
        }
        Ok(ColumnarValue::Array(Arc::new(ranks.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(rows: &[u64]) -> Vec<DataFile> {
        rows.iter()
            .enumerate()
            .map(|(i, &rows)| DataFile {
                path: format!("f{i}"),
                rows,
                min_values: Default::default(),
            })
            .collect()
    }

    fn chosen(rows: &[u64]) -> Vec<u64> {
        coalesce_choice(files(rows))
            .into_iter()
            .map(|f| f.rows)
            .collect()
    }

    #[test]
    fn coalesces_take_the_smallest_files_like_a_binary_counter() {
        // Too few files: nothing.
        assert!(chosen(&[5; 7]).is_empty());
        // Eight rounds' files become one.
        assert_eq!(chosen(&[5; 8]), vec![5; 8]);
        // The merged file joins once the small ones add up to it.
        assert_eq!(
            chosen(&[40, 5, 5, 5, 5, 5, 5, 5, 5]),
            [vec![5; 8], vec![40]].concat()
        );
        // A big file stays out while the small ones are fewer than it.
        assert!(chosen(&[1000, 5, 5, 5, 5, 5, 5, 5]).is_empty());
        assert_eq!(chosen(&[1000, 80, 5, 5, 5, 5, 5, 5, 5, 5]), vec![5; 8]);
        // Files that keep doubling never qualify alone; at 16 files the smallest 8 merge.
        let doubling: Vec<u64> = (0..16).map(|i| 1 << i).collect();
        assert_eq!(chosen(&doubling), doubling[..8].to_vec());
        assert!(chosen(&doubling[..15]).is_empty());
    }

    #[test]
    fn change_files_are_told_from_base_files_by_their_sequences() {
        let mut file = files(&[10]).remove(0);
        assert!(!is_change_file(&file), "no statistics: never coalesced");
        file.min_values
            .insert(SEQUENCE_COLUMN.into(), serde_json::json!(0));
        assert!(!is_change_file(&file), "a base file");
        file.min_values
            .insert(SEQUENCE_COLUMN.into(), serde_json::json!(17));
        assert!(is_change_file(&file));
    }
}
