//! ALTER TABLE and TRUNCATE: column changes and renames, and the rewrites they need.

use std::sync::Arc;

use datafusion::catalog::{MemTable, SchemaProvider};
use datafusion::sql::sqlparser::ast::{AlterTableOperation, ObjectName, RenameTableNameKind};
use futures::StreamExt as _;
use tributary_catalog::{Column, Relation, SqlType, Table};
use tributary_engine::layout::{cast_batch, logical_schema, storage_schema};
use tributary_engine::table::write_buffer_bytes;
use tributary_engine::transaction::WriteKind;
use tributary_syntax::names::{name_parts, normalize_ident};

use crate::context::Context;
use crate::definition::declared_column;
use crate::output::Output;
use crate::{Error, Result};

pub(super) async fn alter_table(
    cx: &mut Context,
    name: &ObjectName,
    if_exists: bool,
    operations: Vec<AlterTableOperation>,
) -> Result<Output> {
    let (schema, table_name) = match cx.resolve_existing(name) {
        Ok(resolved) => resolved,
        Err(Error::UndefinedTable(_)) if if_exists => return Ok(Output::command("ALTER TABLE")),
        Err(err) => return Err(err),
    };
    let mut current_name = table_name;
    for operation in operations {
        current_name = alter_one(cx, &schema, &current_name, operation).await?;
    }
    Ok(Output::command("ALTER TABLE"))
}

/// Applies one ALTER TABLE operation; returns the table's name afterwards.
async fn alter_one(
    cx: &mut Context,
    schema: &str,
    name: &str,
    operation: AlterTableOperation,
) -> Result<String> {
    let database = cx.database().to_string();
    match operation {
        AlterTableOperation::RenameTable { table_name } => {
            let new_name = match table_name {
                RenameTableNameKind::As(n) | RenameTableNameKind::To(n) => {
                    name_parts(&n).last().cloned().unwrap_or_default()
                }
            };
            if matches!(
                cx.catalogs().pinned().relation(&database, schema, name),
                Some(Relation::Table(_))
            ) {
                cx.catalogs()
                    .lock_table(&database, schema, name, WriteKind::Rewrite)
                    .await?;
            }
            cx.catalogs().modify(|state| {
                let target = state.schema_mut(&database, schema)?;
                if target.relations.contains_key(&new_name) {
                    return Err(tributary_catalog::Error::AlreadyExists {
                        kind: "relation",
                        name: new_name.clone(),
                    });
                }
                let relation = target.relations.remove(name).ok_or_else(|| {
                    tributary_catalog::Error::NotFound {
                        kind: "relation",
                        name: name.to_string(),
                    }
                })?;
                target.relations.insert(new_name.clone(), relation);
                Ok(())
            })?;
            Ok(new_name)
        }
        AlterTableOperation::AddColumn {
            column_def,
            if_not_exists,
            ..
        } => {
            let column = declared_column(&column_def)?;
            let exists = cx
                .catalogs()
                .pinned()
                .table(&database, schema, name)?
                .column(&column.name)
                .is_some();
            if exists {
                if if_not_exists {
                    return Ok(name.to_string());
                }
                return Err(Error::Duplicate {
                    kind: "column",
                    name: column.name,
                });
            }
            if column.identity.is_some() {
                return Err(Error::NotSupported(
                    "ALTER TABLE ADD COLUMN cannot add an IDENTITY column".into(),
                ));
            }
            rewrite_table(cx, schema, name, |columns| {
                columns.push(column.clone());
                Ok(())
            })
            .await?;
            Ok(name.to_string())
        }
        AlterTableOperation::DropColumn {
            column_names,
            if_exists,
            ..
        } => {
            for column in column_names {
                let column = normalize_ident(&column);
                let result = rewrite_table(cx, schema, name, |columns| {
                    let before = columns.len();
                    columns.retain(|c| c.name != column);
                    if columns.len() == before {
                        return Err(Error::UndefinedColumn(format!(
                            "column \"{column}\" of relation \"{name}\" does not exist"
                        )));
                    }
                    if columns.is_empty() {
                        return Err(Error::InvalidStatement(
                            "cannot drop the last column of a table".into(),
                        ));
                    }
                    Ok(())
                })
                .await;
                match result {
                    Err(Error::UndefinedColumn(_)) if if_exists => {}
                    other => {
                        other?;
                    }
                }
            }
            Ok(name.to_string())
        }
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => {
            let old = normalize_ident(&old_column_name);
            let new = normalize_ident(&new_column_name);
            rewrite_table(cx, schema, name, |columns| {
                if columns.iter().any(|c| c.name == new) {
                    return Err(Error::Duplicate {
                        kind: "column",
                        name: new.clone(),
                    });
                }
                let column = columns.iter_mut().find(|c| c.name == old).ok_or_else(|| {
                    Error::UndefinedColumn(format!("column \"{old}\" does not exist"))
                })?;
                column.name = new.clone();
                Ok(())
            })
            .await?;
            Ok(name.to_string())
        }
        other => Err(Error::NotSupported(format!(
            "ALTER TABLE {other} is not supported"
        ))),
    }
}

/// Changes a table's columns by rewriting its data under the new schema (Delta tables have no
/// column mapping here, so external readers see plain column names). Returns rows rewritten.
async fn rewrite_table(
    cx: &mut Context,
    schema: &str,
    name: &str,
    change: impl FnOnce(&mut Vec<Column>) -> Result<()>,
) -> Result<u64> {
    let database = cx.database().to_string();
    let engine = cx.engine().clone();
    let table = cx
        .catalogs()
        .lock_table(&database, schema, name, WriteKind::Rewrite)
        .await?
        .table;
    tributary_engine::mirror::refuse_write(&table, name)?;
    let mut columns = table.columns.clone();
    change(&mut columns)?;
    // Read the current rows in the old logical shape, project them into the new one, and
    // write them as they come: memory holds a row group, whatever the table's size.
    let provider = tributary_engine::table::TributaryTable::open(
        cx.catalogs(),
        [database.clone(), schema.to_string(), name.to_string()],
        table.clone(),
    )
    .await?;
    let config = datafusion::prelude::SessionConfig::new();
    let context =
        datafusion::prelude::SessionContext::new_with_config_rt(config, cx.context().runtime_env());
    context.register_table("t", Arc::new(provider))?;
    let new_table = Table {
        columns,
        ..table.clone()
    };
    let stored_schema = Arc::new(storage_schema(&new_table));
    let logical = logical_schema(&new_table);
    let mut append = engine
        .storage
        .table(&table.path)?
        .appender(table.version, write_buffer_bytes(&engine))
        .await?;
    let written = async {
        // An added column with a DEFAULT holds it in the rows there were, as in Postgres.
        let mut defaults = Vec::new();
        for (index, column) in new_table.columns.iter().enumerate() {
            let added = source_column(&table.columns, &new_table.columns, index).is_none();
            if let (true, Some(default)) = (added, &column.default) {
                let data_type = logical.field(index).data_type();
                defaults.push((
                    index,
                    crate::copy::default_value(cx, default, data_type).await?,
                ));
            }
        }
        let sql = rename_aware_select(&table.columns, &new_table.columns);
        let mut stream = context.sql(&sql).await?.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = cast_batch(&batch?, &logical)?;
            let mut columns = batch.columns().to_vec();
            for (index, value) in &defaults {
                let zeros = arrow::array::UInt32Array::from(vec![0u32; batch.num_rows()]);
                columns[*index] = arrow::compute::take(value, &zeros, None)?;
            }
            let batch = arrow::record_batch::RecordBatch::try_new(logical.clone(), columns)?;
            append.write(&cast_batch(&batch, &stored_schema)?).await?;
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(err) = written {
        append.abort().await;
        return Err(err);
    }
    let outcome = append.commit_replacing_all_as(&stored_schema).await?;
    cx.catalogs().record_written(&table.path);
    cx.catalogs().modify(|state| {
        let target = state.table_mut(&database, schema, name)?;
        target.columns = new_table.columns.clone();
        target.version = outcome.version;
        Ok(())
    })?;
    Ok(outcome.rows)
}

/// The query that selects the old rows in the new column order. Renamed columns are matched
/// by position of their definition: a rename keeps the column in place.
fn rename_aware_select(old: &[Column], new: &[Column]) -> String {
    let mut exprs = Vec::with_capacity(new.len());
    for (index, column) in new.iter().enumerate() {
        let quoted = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
        exprs.push(match source_column(old, new, index) {
            Some(source) => format!("{} AS {}", quoted(source), quoted(&column.name)),
            None => format!(
                "CAST(NULL AS {}) AS {}",
                arrow_sql_type(&column.sql_type),
                quoted(&column.name)
            ),
        });
    }
    format!("SELECT {} FROM t", exprs.join(", "))
}

/// The old column that new column `index` takes its values from; None for an added column.
fn source_column<'a>(old: &'a [Column], new: &[Column], index: usize) -> Option<&'a str> {
    let name = &new[index].name;
    if let Some(same) = old.iter().find(|o| &o.name == name) {
        Some(&same.name)
    } else if old.len() == new.len() {
        // A rename: same position, new name.
        Some(&old[index].name)
    } else {
        None
    }
}

/// A DataFusion SQL type name for a NULL of the given column type.
fn arrow_sql_type(sql_type: &SqlType) -> &'static str {
    match sql_type {
        SqlType::SmallInt => "SMALLINT",
        SqlType::Integer => "INT",
        SqlType::BigInt => "BIGINT",
        SqlType::Decimal { .. } => "DOUBLE",
        SqlType::Real => "REAL",
        SqlType::Double => "DOUBLE",
        SqlType::Boolean => "BOOLEAN",
        SqlType::Date => "DATE",
        SqlType::Timestamp | SqlType::TimestampTz => "TIMESTAMP",
        SqlType::Time => "TIME",
        SqlType::Varbyte { .. } => "BYTEA",
        _ => "VARCHAR",
    }
}

pub(super) async fn truncate_tables(cx: &mut Context, names: Vec<ObjectName>) -> Result<Output> {
    for name in names {
        let parts = name_parts(&name);
        if parts.len() == 1 && cx.catalogs().temp().table_exist(&parts[0]) {
            let provider = cx.catalogs().temp().table(&parts[0]).await?;
            if let Some(provider) = provider {
                let empty = MemTable::try_new(provider.schema(), vec![vec![]])?;
                cx.catalogs().temp().deregister_table(&parts[0])?;
                cx.catalogs()
                    .temp()
                    .register_table(parts[0].clone(), Arc::new(empty))?;
            }
            continue;
        }
        let (schema, table) = cx.resolve_existing(&name)?;
        rewrite_table_empty(cx, &schema, &table).await?;
    }
    Ok(Output::command("TRUNCATE TABLE"))
}

async fn rewrite_table_empty(cx: &mut Context, schema: &str, name: &str) -> Result<()> {
    let database = cx.database().to_string();
    let table = cx
        .catalogs()
        .lock_table(&database, schema, name, WriteKind::Rewrite)
        .await?
        .table;
    tributary_engine::mirror::refuse_write(&table, name)?;
    let stored_schema = Arc::new(storage_schema(&table));
    let version = cx
        .engine()
        .storage
        .table(&table.path)?
        .overwrite(table.version, vec![], &stored_schema)
        .await?;
    cx.catalogs().record_written(&table.path);
    cx.catalogs().modify(|state| {
        state.table_mut(&database, schema, name)?.version = version;
        Ok(())
    })?;
    Ok(())
}
