//! What a statement is, read from its syntax: where it goes ([`Route`]), the relations it
//! writes and how, whether it returns rows, and the names of its result columns.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast::{
    Expr, Function, ObjectName, SelectItem, SetExpr, Statement as SqlStatement,
};
use futures::StreamExt;
use tributary_engine::transaction::WriteKind;
use tributary_syntax::{ExtStatement, Statement};

use crate::Result;

/// Where a statement goes, decided once from its syntax: the session takes its locks from it,
/// checks its privileges by it (`access::check::authorize`) and dispatches on it.
pub(crate) enum Route {
    /// A Redshift statement that sqlparser lacks.
    Ext(ExtStatement),
    /// CALL of a stored procedure.
    Call(Function),
    /// UPDATE, DELETE or MERGE, as written (with the WITH clause before it, if any).
    Dml(SqlStatement),
    /// A query, INSERT or EXPLAIN: DataFusion plans it.
    Planned(SqlStatement),
    /// Everything else: DDL, COPY, UNLOAD, SET, SHOW, ...
    Utility(SqlStatement),
}

impl Route {
    pub(crate) fn of(statement: Statement) -> Self {
        let statement = match statement {
            Statement::Ext(statement) => return Route::Ext(statement),
            Statement::Sql(statement) => statement,
        };
        match statement {
            SqlStatement::Call(function) => Route::Call(function),
            SqlStatement::Update(_) | SqlStatement::Delete(_) | SqlStatement::Merge(_) => {
                Route::Dml(statement)
            }
            _ if dml_with_cte(&statement).is_some() => Route::Dml(statement),
            _ if is_planned(&statement) => Route::Planned(statement),
            _ => Route::Utility(statement),
        }
    }

    /// The tables the statement writes, with how: an autocommit statement locks them first.
    pub(crate) fn write_targets(&self) -> Vec<(ObjectName, WriteKind)> {
        match self {
            Route::Dml(statement) | Route::Planned(statement) | Route::Utility(statement) => {
                write_targets(statement)
            }
            Route::Ext(_) | Route::Call(_) => Vec::new(),
        }
    }
}

/// A DML statement without the WITH clause before it, and that clause.
pub(crate) fn split_dml(
    statement: SqlStatement,
) -> (SqlStatement, Option<datafusion::sql::sqlparser::ast::With>) {
    match dml_with_cte(&statement) {
        Some(split) => split,
        None => (statement, None),
    }
}

/// True for the statements of [`Route::Planned`]: a query (not `WITH ... DELETE`), INSERT
/// or EXPLAIN.
pub(crate) fn is_planned(statement: &SqlStatement) -> bool {
    is_planned_by_datafusion(statement) && dml_with_cte(statement).is_none()
}

fn is_planned_by_datafusion(statement: &SqlStatement) -> bool {
    matches!(
        statement,
        SqlStatement::Query(_) | SqlStatement::Insert(_) | SqlStatement::Explain { .. }
    )
}

/// `WITH ... DELETE` / `WITH ... UPDATE`: the statement and its WITH clause.
fn dml_with_cte(
    statement: &SqlStatement,
) -> Option<(SqlStatement, Option<datafusion::sql::sqlparser::ast::With>)> {
    let SqlStatement::Query(query) = statement else {
        return None;
    };
    match query.body.as_ref() {
        SetExpr::Delete(inner) | SetExpr::Update(inner) => {
            Some((inner.clone(), query.with.clone()))
        }
        _ => None,
    }
}

/// The names of the tables a statement writes.
pub(crate) fn write_target_names(statement: &SqlStatement) -> Vec<ObjectName> {
    write_targets(statement)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// The tables a statement writes, with how: an autocommit statement locks them first.
fn write_targets(statement: &SqlStatement) -> Vec<(ObjectName, WriteKind)> {
    if let Some((inner, _)) = dml_with_cte(statement) {
        return write_targets(&inner);
    }
    use datafusion::sql::sqlparser::ast::{FromTable, TableFactor, TableObject};
    let table_name = |factor: &TableFactor| match factor {
        TableFactor::Table { name, .. } => Some(name.clone()),
        _ => None,
    };
    match statement {
        SqlStatement::Insert(insert) => match &insert.table {
            TableObject::TableName(name) => vec![(name.clone(), WriteKind::Append)],
            _ => vec![],
        },
        SqlStatement::Update(update) => table_name(&update.table.relation)
            .map(|n| (n, WriteKind::Rewrite))
            .into_iter()
            .collect(),
        SqlStatement::Delete(delete) => {
            let tables = match &delete.from {
                FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
            };
            tables
                .first()
                .and_then(|t| table_name(&t.relation))
                .map(|n| (n, WriteKind::Rewrite))
                .into_iter()
                .collect()
        }
        SqlStatement::Merge(merge) => table_name(&merge.table)
            .map(|n| (n, WriteKind::Rewrite))
            .into_iter()
            .collect(),
        SqlStatement::Truncate(truncate) => truncate
            .table_names
            .iter()
            .map(|t| (t.name.clone(), WriteKind::Rewrite))
            .collect(),
        SqlStatement::AlterTable(alter) => vec![(alter.name.clone(), WriteKind::Rewrite)],
        SqlStatement::Copy {
            source: datafusion::sql::sqlparser::ast::CopySource::Table { table_name, .. },
            to: false,
            ..
        } => vec![(table_name.clone(), WriteKind::Append)],
        _ => vec![],
    }
}

pub(crate) fn returns_rows(statement: &SqlStatement) -> bool {
    matches!(
        statement,
        SqlStatement::Query(_) | SqlStatement::Explain { .. }
    )
}

pub(crate) fn count_rows(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())
        .map(|a| a.iter().flatten().sum::<u64>())
        .sum()
}

/// The result schema with Postgres's column names: DataFusion names an unaliased expression
/// after its text (`count(*)`, `Int64(1)`); Postgres says `count` and `?column?`.
pub(crate) fn output_schema(statement: &SqlStatement, plan: &LogicalPlan) -> SchemaRef {
    let arrow_schema = Arc::new(plan.schema().as_arrow().clone());
    let SqlStatement::Query(query) = statement else {
        return arrow_schema;
    };
    // A set operation takes its column names from its leftmost SELECT.
    let mut body = query.body.as_ref();
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_ref();
    }
    let SetExpr::Select(select) = body else {
        return arrow_schema;
    };
    if select.projection.len() != arrow_schema.fields().len()
        || select.projection.iter().any(|item| {
            matches!(
                item,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        })
    {
        return arrow_schema;
    }
    let fields: Vec<Field> = arrow_schema
        .fields()
        .iter()
        .zip(&select.projection)
        .map(|(field, item)| match item {
            SelectItem::UnnamedExpr(expr) => {
                field.as_ref().clone().with_name(postgres_column_name(expr))
            }
            _ => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(
        fields,
        arrow_schema.metadata().clone(),
    ))
}

/// Postgres's FigureColname: the name a result column gets when it has no alias.
fn postgres_column_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => tributary_syntax::names::normalize_ident(ident),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(tributary_syntax::names::normalize_ident)
            .unwrap_or_default(),
        Expr::Function(function) => function
            .name
            .0
            .last()
            .map(|p| p.to_string().trim_matches('"').to_lowercase())
            .unwrap_or_default(),
        Expr::Cast {
            expr, data_type, ..
        } => match postgres_column_name(expr).as_str() {
            "?column?" => data_type.to_string().to_lowercase(),
            name => name.to_string(),
        },
        Expr::Nested(inner) => postgres_column_name(inner),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Position { .. } => "position".into(),
        Expr::Substring { .. } => "substring".into(),
        Expr::Trim { .. } => "btrim".into(),
        Expr::Extract { .. } => "extract".into(),
        _ => "?column?".into(),
    }
}

/// Relabels each batch of a stream with the Postgres-named schema.
pub(crate) fn rename_stream(
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
) -> SendableRecordBatchStream {
    let target = schema.clone();
    let renamed = stream.map(move |batch| {
        let batch = batch?;
        if batch.schema().fields() == target.fields() {
            return Ok(batch);
        }
        // Besides names, a physical batch can differ from the planned type (a UNION whose
        // branches coerce late); the client was told the planned types, so cast to them.
        let columns = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    arrow::compute::cast(column, field.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(target.clone(), columns)?)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, renamed))
}
