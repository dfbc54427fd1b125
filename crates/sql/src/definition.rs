//! Table definitions shared by the statements that create or rewrite tables: columns from
//! declarations or from Arrow, constraints, the stored and logical schemas, and the creation
//! of a new table in the session's transaction.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{
    ColumnDef, ColumnOption, Expr, IdentityPropertyFormatKind, IdentityPropertyKind, Statement,
    TableConstraint,
};
use datafusion::sql::sqlparser::tokenizer::Token;
use futures::TryStreamExt;
use tributary_catalog::{Column, Constraint, Identity, Relation, SqlType, Table};
use tributary_engine::layout::{cast_batch, logical_schema, storage_schema};
use tributary_engine::table::write_buffer_bytes;
use tributary_engine::types;
use tributary_storage::Appender;
use tributary_syntax::names::normalize_ident;

use crate::context::Context;
use crate::{Error, Result};

/// A table whose files were written but which is not yet in the catalog.
pub(crate) struct NewTable {
    pub schema: String,
    pub name: String,
    pub table: Table,
}

/// Whether relation `name` can be created in `schema` (which must exist): false when it
/// exists and IF NOT EXISTS was given (a notice says it is skipped), an error when it exists
/// otherwise.
pub(crate) fn relation_is_new(
    cx: &mut Context,
    schema: &str,
    name: &str,
    if_not_exists: bool,
) -> Result<bool> {
    let database = cx.database().to_string();
    let pinned = cx.catalogs().pinned();
    pinned.schema(&database, schema)?;
    if pinned.relation(&database, schema, name).is_none() {
        return Ok(true);
    }
    if if_not_exists {
        cx.notice(format!("relation \"{name}\" already exists, skipping"));
        return Ok(false);
    }
    Err(Error::Duplicate {
        kind: "relation",
        name: name.to_string(),
    })
}

/// Makes a created table visible, with its first rows (CREATE TABLE AS) appended first as
/// the query yields them, in one table version.
pub(crate) async fn commit_new_table(
    cx: &mut Context,
    new: NewTable,
    rows: Option<SendableRecordBatchStream>,
) -> Result<u64> {
    let database = cx.database().to_string();
    let engine = cx.engine().clone();
    let NewTable {
        schema,
        name,
        mut table,
    } = new;
    let mut count = 0;
    if let Some(mut rows) = rows {
        let append = engine
            .storage
            .table(&table.path)?
            .appender(table.version, write_buffer_bytes(cx.catalogs().store()))
            .await?;
        let append = write_query_rows(append, &mut rows, &table, Error::from).await?;
        let outcome = append.commit().await?;
        table.version = outcome.version;
        count = outcome.rows;
    }
    cx.catalogs().modify(|state| {
        table.oid = state.allocate_oid();
        state.insert_relation(&database, &schema, &name, Relation::Table(table.clone()))
    })?;
    Ok(count)
}

/// Writes a query's rows to `append`, cast to `table`'s columns as queries see them (a row
/// that does not fit fails with `mismatch`) and then as stored. On an error the append is
/// given up; on success it is returned for the caller to commit.
pub(crate) async fn write_query_rows(
    mut append: Appender,
    rows: &mut SendableRecordBatchStream,
    table: &Table,
    mismatch: impl Fn(tributary_engine::Error) -> Error,
) -> Result<Appender> {
    let logical = logical_schema(table);
    let stored_schema = Arc::new(storage_schema(table));
    let written: Result<()> = async {
        while let Some(batch) = rows.try_next().await? {
            let batch = cast_batch(&batch, &logical).map_err(&mismatch)?;
            append.write(&cast_batch(&batch, &stored_schema)?).await?;
        }
        Ok(())
    }
    .await;
    match written {
        Ok(()) => Ok(append),
        Err(err) => {
            append.abort().await;
            Err(err)
        }
    }
}

/// Runs a query as a stream of rows (for CREATE TABLE AS and materialized views).
pub(crate) async fn query_stream(
    cx: &mut Context,
    statement: Statement,
) -> Result<(SchemaRef, SendableRecordBatchStream)> {
    let statement = cx.rewrite(statement)?;
    let plan = cx.plan(&statement).await?;
    let schema = Arc::new(plan.schema().as_arrow().clone());
    let rows = crate::rerun::execute_stream(cx.context().state(), plan).await?;
    Ok((schema, rows))
}

/// Runs a query to completion (for a temporary table's rows and a REFRESH).
pub(crate) async fn query_rows(
    cx: &mut Context,
    statement: Statement,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let (schema, rows) = query_stream(cx, statement).await?;
    Ok((schema, rows.try_collect().await?))
}

pub(crate) fn columns_from_arrow(schema: &SchemaRef) -> Result<Vec<Column>> {
    schema
        .fields()
        .iter()
        .map(|field| {
            let declared = field.metadata().get(tributary_catalog::SQL_TYPE_METADATA);
            let sql_type = if declared.map(String::as_str) == Some("super") {
                Some(SqlType::Super)
            } else {
                SqlType::from_arrow(field.data_type())
            };
            let sql_type = sql_type.ok_or_else(|| {
                Error::NotSupported(format!(
                    "column \"{}\" has type {} which cannot be stored",
                    field.name(),
                    field.data_type()
                ))
            })?;
            Ok(Column {
                name: field.name().clone(),
                sql_type,
                nullable: true,
                default: None,
                identity: None,
                encode: None,
            })
        })
        .collect()
}

pub(crate) fn declared_columns(definitions: &[ColumnDef]) -> Result<Vec<Column>> {
    let mut columns: Vec<Column> = Vec::with_capacity(definitions.len());
    for definition in definitions {
        let column = declared_column(definition)?;
        if columns.iter().any(|c| c.name == column.name) {
            return Err(Error::Duplicate {
                kind: "column",
                name: column.name,
            });
        }
        columns.push(column);
    }
    Ok(columns)
}

pub(crate) fn declared_column(definition: &ColumnDef) -> Result<Column> {
    let mut column = Column {
        name: normalize_ident(&definition.name),
        sql_type: types::resolve(&definition.data_type)?,
        nullable: true,
        default: None,
        identity: None,
        encode: None,
    };
    for option in &definition.options {
        match &option.option {
            ColumnOption::NotNull => column.nullable = false,
            ColumnOption::Null => column.nullable = true,
            ColumnOption::PrimaryKey(_) => column.nullable = false,
            ColumnOption::Default(expr) => column.default = Some(expr.to_string()),
            ColumnOption::Identity(kind) => column.identity = Some(identity(kind, &column)?),
            ColumnOption::DialectSpecific(tokens) => {
                if let [Token::Word(keyword), Token::Word(value)] = tokens.as_slice()
                    && keyword.value.eq_ignore_ascii_case("encode")
                {
                    column.encode = Some(value.value.to_lowercase());
                }
            }
            ColumnOption::Unique(_) | ColumnOption::ForeignKey(_) | ColumnOption::Comment(_) => {}
            other => {
                return Err(Error::NotSupported(format!(
                    "column option {other} is not supported"
                )));
            }
        }
    }
    Ok(column)
}

pub(crate) fn identity(kind: &IdentityPropertyKind, column: &Column) -> Result<Identity> {
    if !matches!(
        column.sql_type,
        SqlType::SmallInt | SqlType::Integer | SqlType::BigInt
    ) {
        return Err(Error::InvalidStatement(format!(
            "IDENTITY column \"{}\" must be SMALLINT, INTEGER or BIGINT",
            column.name
        )));
    }
    let (IdentityPropertyKind::Identity(property) | IdentityPropertyKind::Autoincrement(property)) =
        kind;
    let (seed, step) = match &property.parameters {
        Some(IdentityPropertyFormatKind::FunctionCall(p))
        | Some(IdentityPropertyFormatKind::StartAndIncrement(p)) => {
            (integer_literal(&p.seed)?, integer_literal(&p.increment)?)
        }
        None => (1, 1),
    };
    if step == 0 {
        return Err(Error::InvalidStatement(
            "IDENTITY step must not be zero".into(),
        ));
    }
    Ok(Identity {
        seed,
        step,
        next: seed,
    })
}

fn integer_literal(expr: &Expr) -> Result<i64> {
    let text = expr.to_string();
    text.parse::<i64>().map_err(|_| {
        Error::InvalidStatement(format!("IDENTITY arguments must be integers, got {text}"))
    })
}

pub(crate) fn constraints(
    columns: &[ColumnDef],
    table_constraints: &[TableConstraint],
) -> Vec<Constraint> {
    let mut out = Vec::new();
    for column in columns {
        let name = normalize_ident(&column.name);
        for option in &column.options {
            match &option.option {
                ColumnOption::PrimaryKey(_) => out.push(Constraint::PrimaryKey {
                    columns: vec![name.clone()],
                }),
                ColumnOption::Unique(_) => out.push(Constraint::Unique {
                    columns: vec![name.clone()],
                }),
                ColumnOption::ForeignKey(fk) => out.push(Constraint::ForeignKey {
                    columns: vec![name.clone()],
                    references: fk.foreign_table.to_string(),
                    referenced_columns: fk.referred_columns.iter().map(normalize_ident).collect(),
                }),
                _ => {}
            }
        }
    }
    for constraint in table_constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => out.push(Constraint::PrimaryKey {
                columns: pk
                    .columns
                    .iter()
                    .map(|c| c.column.expr.to_string().to_lowercase())
                    .collect(),
            }),
            TableConstraint::Unique(unique) => out.push(Constraint::Unique {
                columns: unique
                    .columns
                    .iter()
                    .map(|c| c.column.expr.to_string().to_lowercase())
                    .collect(),
            }),
            TableConstraint::ForeignKey(fk) => out.push(Constraint::ForeignKey {
                columns: fk.columns.iter().map(normalize_ident).collect(),
                references: fk.foreign_table.to_string(),
                referenced_columns: fk.referred_columns.iter().map(normalize_ident).collect(),
            }),
            _ => {}
        }
    }
    out
}
