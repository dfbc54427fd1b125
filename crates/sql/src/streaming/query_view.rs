//! Materialized views over tables and views (not a stream): the query's result is stored as a
//! table when the view is created, and REFRESH runs the query again and replaces the rows in
//! the refreshing transaction. Seed 001 refreshes such a view over a streaming view inside a
//! stored procedure.

use datafusion::sql::sqlparser::ast::{CreateView, Query, Statement, visit_relations};
use tributary_catalog::{CatalogState, MaterializedView, Table, ViewInput};
use tributary_engine::layout::storage_schema;
use tributary_engine::table::write_buffer_bytes;
use tributary_engine::transaction::WriteKind;
use tributary_streaming::ViewId;
use tributary_syntax::names::name_parts;

use super::table::view_table;
use crate::context::Context;
use crate::definition::NewTable;
use crate::output::Output;
use crate::{Error, Result};

/// Whether the query reads a stream of an external schema (then it is a streaming view).
pub(super) fn reads_stream(
    query: &Query,
    state: &CatalogState,
    database: &str,
    default_schema: &str,
) -> bool {
    let mut found = false;
    let _ = visit_relations(query, |name| {
        let parts = name_parts(name);
        let schema = match parts.as_slice() {
            [_] => Some(default_schema.to_string()),
            [schema, _] => Some(schema.clone()),
            [db, schema, _] if db == database => Some(schema.clone()),
            _ => None,
        };
        if let Some(schema) = schema
            && state
                .schema(database, &schema)
                .is_ok_and(|s| s.external.is_some())
        {
            found = true;
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    found
}

/// `CREATE MATERIALIZED VIEW name AS <query over tables>`: stores the query's rows now.
pub(super) async fn create(
    cx: &mut Context,
    view: &CreateView,
    schema: String,
    name: String,
    options: &[(String, String)],
) -> Result<Output> {
    if options
        .iter()
        .any(|(k, v)| k == "auto_refresh" && v == "yes")
    {
        return Err(Error::NotSupported(
            "AUTO REFRESH YES is supported for streaming views; refresh a view over tables with REFRESH MATERIALIZED VIEW".into(),
        ));
    }
    let database = cx.database().to_string();
    let (output, rows) =
        crate::definition::query_stream(cx, Statement::Query(view.query.clone())).await?;
    let columns = crate::definition::columns_from_arrow(&output)?;
    let mut table = view_table(&database, &schema, &name, cx.user(), columns, options);
    table.materialized = Some(Box::new(MaterializedView {
        sql: view.query.to_string(),
        input: ViewInput::Query,
        source_schema: String::new(),
        stream: String::new(),
        auto_refresh: false,
        positions: serde_json::Value::Null,
        aggregate: None,
        mirror: None,
    }));
    let handle = cx.engine().storage.table(&table.path)?;
    cx.catalogs().record_created(&table.path);
    table.version = handle.create(&storage_schema(&table)).await?;
    crate::definition::commit_new_table(
        cx,
        NewTable {
            schema,
            name,
            table,
        },
        Some(rows),
    )
    .await?;
    Ok(Output::command("CREATE MATERIALIZED VIEW"))
}

/// REFRESH of a view over tables: runs the query again and replaces the rows, in the
/// session's transaction, writing them as the query yields them and committing one table
/// version. Returns the number of rows.
pub(super) async fn refresh(cx: &mut Context, view: &ViewId, sql: &str) -> Result<u64> {
    let mut statements = cx.parse(sql)?;
    let Some(statement) = statements.pop().and_then(|s| s.into_sql()) else {
        return Err(Error::Internal(format!(
            "materialized view \"{}\" has no query",
            view.name
        )));
    };
    let table: Table = cx
        .catalogs()
        .lock_table(&view.database, &view.schema, &view.name, WriteKind::Rewrite)
        .await?
        .table;
    let (_, mut rows) = crate::definition::query_stream(cx, statement).await?;
    let append = cx
        .engine()
        .storage
        .table(&table.path)?
        .appender(table.version, write_buffer_bytes(cx.catalogs().store()))
        .await?;
    let mismatch = |err: tributary_engine::Error| {
        Error::InvalidStatement(format!(
            "materialized view \"{}\": its query's columns no longer match the view ({err}); drop and create it again",
            view.name
        ))
    };
    let append = crate::definition::write_query_rows(append, &mut rows, &table, mismatch).await?;
    let outcome = append.commit_replacing_all().await?;
    let (version, rows) = (outcome.version, outcome.rows);
    tributary_engine::table::pin_written(
        cx.catalogs(),
        &[
            view.database.clone(),
            view.schema.clone(),
            view.name.clone(),
        ],
        &table.path,
        version,
        &[],
    )?;
    Ok(rows)
}
