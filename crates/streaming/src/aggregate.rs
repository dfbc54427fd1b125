//! Aggregating streaming views (GROUP BY with COUNT, SUM, MIN, MAX, AVG), maintained
//! incrementally: each micro-batch's query yields partial aggregates per group, which are
//! merged into the stored rows (COUNT and SUM add, MIN and MAX compare, AVG is weighted by a
//! count kept in an extra column `<name>_count`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArguments, GroupByExpr, Ident, Query, SelectItem, SetExpr,
};
use tributary_catalog::{AggregateLayout, Table};
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::transaction::WriteKind;

use super::ViewId;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    Key,
    Sum,
    Min,
    Max,
    /// An average; its weight is the column at this index.
    Avg(usize),
}

fn aggregate_kind(expr: &Expr) -> Result<Option<&'static str>> {
    let Expr::Function(function) = expr else {
        return Ok(None);
    };
    let name = function.name.to_string().to_ascii_lowercase();
    let kind = match name.as_str() {
        "count" => "count",
        "sum" => "sum",
        "min" => "min",
        "max" => "max",
        "avg" => "avg",
        _ => return Ok(None),
    };
    let distinct = matches!(&function.args, FunctionArguments::List(list) if list.duplicate_treatment.is_some());
    if distinct || function.filter.is_some() || function.over.is_some() {
        return Err(Error::NotSupported(format!(
            "a streaming materialized view cannot maintain {name} with DISTINCT, FILTER or OVER incrementally"
        )));
    }
    Ok(Some(kind))
}

fn contains_aggregate(expr: &Expr) -> bool {
    let text = expr.to_string().to_ascii_lowercase();
    ["count(", "sum(", "min(", "max(", "avg("]
        .iter()
        .any(|f| text.contains(f))
}

/// Analyses an aggregating view's query (None if it does not aggregate), adding a count
/// column for each AVG. Returns the merge of each output column, by position.
pub fn analyse(query: &mut Query) -> Result<Option<Vec<String>>> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(None);
    };
    let grouped = match &select.group_by {
        GroupByExpr::All(_) => {
            return Err(Error::NotSupported(
                "GROUP BY ALL is not supported in a streaming materialized view".into(),
            ));
        }
        GroupByExpr::Expressions(exprs, _) => !exprs.is_empty(),
    };
    let any_aggregate = select.projection.iter().any(|item| match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
            contains_aggregate(e)
        }
        _ => false,
    });
    if !grouped && !any_aggregate {
        return Ok(None);
    }
    if select.having.is_some() {
        return Err(Error::NotSupported(
            "HAVING cannot be maintained incrementally; filter in a view over the streaming view"
                .into(),
        ));
    }
    let mut merges = Vec::new();
    let mut counts = Vec::new();
    for (i, item) in select.projection.iter().enumerate() {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.clone())),
            _ => {
                return Err(Error::NotSupported(
                    "an aggregating streaming view lists its columns (no *)".into(),
                ));
            }
        };
        match aggregate_kind(expr)? {
            Some("count") | Some("sum") => merges.push("sum".to_string()),
            Some("min") => merges.push("min".to_string()),
            Some("max") => merges.push("max".to_string()),
            Some(_) => {
                let Expr::Function(function) = expr else {
                    unreachable!("aggregate_kind saw a function")
                };
                let mut count = function.clone();
                count.name =
                    datafusion::sql::sqlparser::ast::ObjectName::from(vec![Ident::new("count")]);
                let base = alias
                    .as_ref()
                    .map(|a| a.value.clone())
                    .unwrap_or_else(|| "avg".to_string());
                counts.push((
                    i,
                    Expr::Function(count),
                    Ident::new(format!("{base}_count")),
                ));
                merges.push(String::new());
            }
            None if contains_aggregate(expr) => {
                return Err(Error::NotSupported(format!(
                    "{expr}: a streaming view maintains COUNT, SUM, MIN, MAX and AVG as whole columns; compute expressions over them in a view over the streaming view"
                )));
            }
            None => merges.push("key".to_string()),
        }
    }
    let first_count = select.projection.len();
    for (n, (avg_index, expr, alias)) in counts.into_iter().enumerate() {
        select
            .projection
            .push(SelectItem::ExprWithAlias { expr, alias });
        merges[avg_index] = format!("avg:{}", first_count + n);
        merges.push("sum".to_string());
    }
    Ok(Some(merges))
}

fn parse(merges: &[(String, String)]) -> Vec<Merge> {
    merges
        .iter()
        .map(|(_, kind)| match kind.as_str() {
            "sum" => Merge::Sum,
            "min" => Merge::Min,
            "max" => Merge::Max,
            other => match other.strip_prefix("avg:").and_then(|i| i.parse().ok()) {
                Some(weight) => Merge::Avg(weight),
                None => Merge::Key,
            },
        })
        .collect()
}

/// A name as a quoted SQL identifier.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Merges a micro-batch's partial aggregates into the view's stored rows, as one new version
/// of the view's table in the transaction of `catalogs`. Returns the number of groups.
pub async fn merge(
    catalogs: &SessionCatalogs,
    view: &ViewId,
    layout: &AggregateLayout,
    partial: Vec<RecordBatch>,
) -> Result<u64> {
    if partial.iter().all(|b| b.num_rows() == 0) {
        return Ok(0);
    }
    let slot = catalogs
        .lock_table(&view.database, &view.schema, &view.name, WriteKind::Rewrite)
        .await?;
    let table: &Table = &slot.table;
    let storage = catalogs.store().storage.table(&table.path)?;
    let logical = tributary_engine::layout::logical_schema(table);
    let context = datafusion::prelude::SessionContext::new();
    context.register_table("stored", storage.provider(table.version).await?)?;
    let stored = context.table("stored").await?.collect().await?;
    let mut rows = Vec::new();
    for batch in stored.iter().chain(partial.iter()) {
        rows.push(tributary_engine::layout::cast_batch(batch, &logical)?);
    }
    let merges = parse(&layout.merges);
    let columns: Vec<String> = layout.merges.iter().map(|(name, _)| quoted(name)).collect();
    let keys: Vec<String> = merges
        .iter()
        .zip(&columns)
        .filter(|(m, _)| **m == Merge::Key)
        .map(|(_, c)| c.clone())
        .collect();
    let select: Vec<String> = merges
        .iter()
        .zip(&columns)
        .map(|(merge, column)| match merge {
            Merge::Key => column.clone(),
            Merge::Sum => format!("sum({column}) AS {column}"),
            Merge::Min => format!("min({column}) AS {column}"),
            Merge::Max => format!("max({column}) AS {column}"),
            Merge::Avg(weight) => {
                let weight = &columns[*weight];
                format!(
                    "sum(CAST({column} AS DOUBLE) * {weight}) / nullif(sum({weight}), 0) AS {column}"
                )
            }
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM rows{}",
        select.join(", "),
        if keys.is_empty() {
            String::new()
        } else {
            format!(" GROUP BY {}", keys.join(", "))
        }
    );
    let memory = datafusion::datasource::MemTable::try_new(logical.clone(), vec![rows])?;
    context.register_table("rows", Arc::new(memory))?;
    let merged = context.sql(&sql).await?.collect().await?;
    let stored_schema = Arc::new(tributary_engine::layout::storage_schema(table));
    let mut batches = Vec::new();
    let mut groups = 0;
    for batch in merged {
        groups += batch.num_rows() as u64;
        let batch = tributary_engine::layout::cast_batch(&batch, &logical)?;
        batches.push(tributary_engine::layout::cast_batch(
            &batch,
            &stored_schema,
        )?);
    }
    let version = storage
        .overwrite(table.version, batches, &stored_schema)
        .await?;
    let name = [
        view.database.clone(),
        view.schema.clone(),
        view.name.clone(),
    ];
    tributary_engine::table::pin_written(catalogs, &name, &table.path, version, &[])?;
    Ok(groups)
}

/// The layout stored with a view: each column's name and merge.
pub fn layout(columns: &[tributary_catalog::Column], merges: Vec<String>) -> AggregateLayout {
    AggregateLayout {
        merges: columns.iter().map(|c| c.name.clone()).zip(merges).collect(),
    }
}
