//! Mirror tables: a keyed copy of a source table, kept from a stream of change records
//! (`CREATE MIRROR TABLE`).
//!
//! A mirror is a streaming materialized view whose rounds apply changes by key instead of
//! appending rows, so it shares the view's reader, positions, runner and scan-error log: a
//! round's changes and the new stream positions land in one catalog commit.
//!
//! The mirror's Delta table holds exactly its live rows in the declared columns, so any Delta
//! reader sees what `SELECT *` shows; its key table beside it holds every key's newest
//! ordering value, deleted keys included (see [`tributary_engine::mirror`]). A round marks
//! the rows its changes replace in deletion vectors and adds the new rows, and drops a change
//! older than its key's: replays and out-of-order changes are harmless. Background rewrites
//! merge the small files rounds leave and purge mostly deleted ones; VACUUM does it at once.

use datafusion::sql::sqlparser::ast::{CreateTable, ObjectName};
use serde_json::Value;
use tributary_catalog::{
    ChangeFormat, Constraint, KeyTable, MaterializedView, MirrorSpec, Relation, SqlType, ViewInput,
};
use tributary_engine::mirror::{key_schema, key_table_path, orders_as_integers, spec};
use tributary_engine::transaction::WriteKind;
use tributary_streaming::mirror::{commit_spec, compact_now};
use tributary_syntax::extension::MirrorClauses;

use crate::context::Context;
use crate::output::Output;
use crate::streaming::table::{store_view_table, view_table};
use crate::{Error, Result};

/// `CREATE MIRROR TABLE`, carried as a `CREATE TABLE` with the mirror clauses.
pub(crate) async fn create(
    cx: &mut Context,
    create: CreateTable,
    clauses: MirrorClauses,
) -> Result<Output> {
    if create.query.is_some() || create.like.is_some() || create.temporary {
        return Err(Error::InvalidStatement(
            "a mirror table is declared with its columns: CREATE MIRROR TABLE name (column type, ..., PRIMARY KEY (column, ...)) FROM ...".into(),
        ));
    }
    let (schema, name) = cx.resolve_for_create(&create.name)?;
    let database = cx.database().to_string();
    if !crate::definition::relation_is_new(cx, &schema, &name, create.if_not_exists)? {
        return Ok(Output::command("CREATE TABLE"));
    }
    let mut columns = crate::definition::declared_columns(&create.columns)?;
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
    let constraints = crate::definition::constraints(&create.columns, &create.constraints);
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
    let (source_schema, stream, sql, through_view) = source(cx, &clauses.source)?;
    let format = match (clauses.format.as_str(), clauses.operation_column) {
        ("debezium", _) => ChangeFormat::Debezium,
        ("dms", _) => ChangeFormat::Dms,
        ("dynamodb", _) => ChangeFormat::Dynamodb,
        ("operation", Some(column)) => ChangeFormat::Operation { column },
        (other, _) => {
            return Err(Error::Syntax(format!("unknown change format {other}")));
        }
    };
    let owner = cx.user().to_string();
    let mut table = view_table(&database, &schema, &name, &owner, columns, &[]);
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
            keys: None,
        }),
    }));
    // The key table first, so that a failure leaves nothing behind.
    let keys_path = key_table_path(&table.path);
    let integer_order = spec(&table).is_some_and(|spec| orders_as_integers(&table, spec));
    let mirror = table
        .materialized
        .as_mut()
        .and_then(|mv| mv.mirror.as_mut())
        .ok_or_else(|| Error::Internal("not a mirror table".into()))?;
    mirror.keys = Some(KeyTable {
        path: keys_path.clone(),
        version: 0,
        integer_order,
    });
    let keys_schema = match spec(&table) {
        Some(spec) => key_schema(&table, spec),
        None => return Err(Error::Internal("not a mirror table".into())),
    };
    cx.catalogs().record_created(&keys_path);
    let keys_version = cx
        .engine()
        .storage
        .table(&keys_path)?
        .create(&keys_schema)
        .await?;
    if let Some(keys) = table
        .materialized
        .as_mut()
        .and_then(|mv| mv.mirror.as_mut())
        .and_then(|mirror| mirror.keys.as_mut())
    {
        keys.version = keys_version;
    }
    store_view_table(cx, [&database, &schema, &name], table).await?;
    Ok(Output::command("CREATE TABLE"))
}

/// The mirror's source: a stream of an external schema, read as it is, or a streaming view,
/// whose stream the mirror reads through the view's query. Returns the external schema, the
/// stream, the query the mirror's rounds run, and the view's name.
fn source(cx: &Context, parts: &[String]) -> Result<(String, String, String, Option<String>)> {
    let database = cx.database();
    let pinned = cx.catalogs().pinned();
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
    let (schema, name) = cx
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

/// `VACUUM [table]`: rewrites a mirror table's files now, as one file of live rows in each of
/// its Delta tables (without a name, every mirror table of the database); a mirror stored by
/// an earlier release is converted first. Other tables need nothing: background maintenance
/// compacts and vacuums them.
pub(crate) async fn vacuum(cx: &mut Context, name: Option<ObjectName>) -> Result<Output> {
    let database = cx.database().to_string();
    let pinned = cx.catalogs().pinned();
    let targets: Vec<(String, String)> = match name {
        Some(name) => vec![cx.resolve_existing(&name)?],
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
    let autocommit = !cx.catalogs().in_explicit_transaction();
    for (schema, name) in targets {
        let is_mirror = matches!(
            cx.catalogs().pinned().relation(&database, &schema, &name),
            Some(Relation::Table(t)) if spec(t).is_some()
        );
        if !is_mirror {
            continue;
        }
        if autocommit {
            cx.catalogs().prelock(&database, &schema, &name).await?;
        }
        let catalogs = cx.catalogs();
        let table = catalogs
            .lock_table(&database, &schema, &name, WriteKind::Rewrite)
            .await?
            .table;
        let (version, updated) = if tributary_engine::mirror::is_legacy(&table) {
            let spec = spec(&table)
                .cloned()
                .ok_or_else(|| Error::Internal("not a mirror table".into()))?;
            tributary_streaming::mirror::convert(catalogs, &table, &spec).await?
        } else {
            compact_now(catalogs, &table, true).await?
        };
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
