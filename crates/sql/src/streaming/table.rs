//! The Delta table behind a streaming view, a materialized view over tables, or a mirror
//! table: made with the view's attributes and created in the statement's transaction.

use tributary_catalog::{Column, Distribution, Relation, Table};

use crate::Result;
use crate::context::Context;

/// Creates the Delta table of a new streaming view or mirror table and adds the relation to
/// the session's transaction.
pub(crate) async fn store_view_table(
    cx: &Context,
    [database, schema, name]: [&str; 3],
    mut table: Table,
) -> Result<()> {
    let handle = cx.engine().storage.table(&table.path)?;
    cx.catalogs().record_created(&table.path);
    table.version = handle
        .create(&tributary_engine::layout::storage_schema(&table))
        .await?;
    cx.catalogs().modify(|state| {
        table.oid = state.allocate_oid();
        state.insert_relation(database, schema, name, Relation::Table(table.clone()))
    })?;
    Ok(())
}

/// The table of a new materialized view, with its attributes (DISTKEY, SORTKEY, BACKUP).
pub(crate) fn view_table(
    database: &str,
    schema: &str,
    name: &str,
    owner: &str,
    columns: Vec<Column>,
    options: &[(String, String)],
) -> Table {
    let option = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let split = |v: String| -> Vec<String> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.to_lowercase())
            .collect()
    };
    Table {
        oid: 0,
        owner: owner.to_string(),
        path: tributary_storage::new_table_path(database, schema, name),
        version: 0,
        columns,
        constraints: vec![],
        distribution: Distribution {
            diststyle: option("diststyle"),
            distkey: option("distkey").and_then(|v| split(v).into_iter().next()),
            sortkey: option("sortkey").map(split).unwrap_or_default(),
            sortkey_kind: None,
        },
        backup: option("backup").is_none_or(|v| v != "no"),
        materialized: None,
    }
}
