//! DROP of tables, views, schemas and databases: hidden by the commit, files deleted after it.

use datafusion::catalog::SchemaProvider;
use datafusion::sql::sqlparser::ast::{ObjectName, ObjectType};
use tributary_catalog::{CatalogState, Relation};
use tributary_engine::transaction::WriteKind;
use tributary_syntax::names::name_parts;

use crate::context::Context;
use crate::output::Output;
use crate::{Error, Result};

pub(super) async fn drop_objects(
    cx: &mut Context,
    object_type: ObjectType,
    if_exists: bool,
    names: Vec<ObjectName>,
    cascade: bool,
) -> Result<Output> {
    let tag = match object_type {
        ObjectType::Table => "DROP TABLE",
        ObjectType::View => "DROP VIEW",
        ObjectType::MaterializedView => "DROP MATERIALIZED VIEW",
        ObjectType::Schema => "DROP SCHEMA",
        ObjectType::Database => "DROP DATABASE",
        other => {
            return Err(Error::NotSupported(format!(
                "DROP {other} is not supported"
            )));
        }
    };
    for name in names {
        let dropped_paths = match object_type {
            ObjectType::Table | ObjectType::View | ObjectType::MaterializedView => {
                drop_relation(cx, &name, object_type, if_exists).await?
            }
            ObjectType::Schema => drop_schema(cx, &name, if_exists, cascade).await?,
            _ => drop_database(cx, &name, if_exists, cascade).await?,
        };
        for path in dropped_paths {
            // Deleted once the drop commits.
            cx.catalogs().record_dropped(&path);
        }
    }
    Ok(Output::command(tag))
}

async fn drop_relation(
    cx: &mut Context,
    name: &ObjectName,
    kind: ObjectType,
    if_exists: bool,
) -> Result<Vec<String>> {
    let view = kind == ObjectType::View;
    let materialized = kind == ObjectType::MaterializedView;
    let parts = name_parts(name);
    if !view && parts.len() == 1 && cx.catalogs().temp().table_exist(&parts[0]) {
        cx.catalogs().temp().deregister_table(&parts[0])?;
        return Ok(vec![]);
    }
    let database = cx.database().to_string();
    let resolved = cx.resolve_existing(name).and_then(|(schema, relation)| {
        let pinned = cx.catalogs().pinned();
        pinned.schema(&database, &schema)?;
        match pinned.relation(&database, &schema, &relation) {
            Some(_) => Ok((schema, relation)),
            None => Err(Error::UndefinedTable(relation)),
        }
    });
    let (schema, relation) = match resolved {
        Ok(resolved) => resolved,
        Err(Error::UndefinedTable(_) | Error::UndefinedSchema(_)) if if_exists => {
            cx.notice(format!(
                "{} \"{}\" does not exist, skipping",
                match kind {
                    ObjectType::View => "view",
                    ObjectType::MaterializedView => "materialized view",
                    _ => "table",
                },
                parts.join(".")
            ));
            return Ok(vec![]);
        }
        Err(err) => return Err(err),
    };
    let is_table = matches!(
        cx.catalogs()
            .pinned()
            .relation(&database, &schema, &relation),
        Some(Relation::Table(_))
    );
    if is_table && !view {
        // Like any writer, a drop waits for the table's current writer and conflicts with
        // changes committed after the snapshot.
        cx.catalogs()
            .lock_table(&database, &schema, &relation, WriteKind::Rewrite)
            .await?;
    }
    let path = cx
        .catalogs()
        .modify(|state| {
            let target = state.schema_mut(&database, &schema)?;
            match (target.relations.get(&relation), view) {
                (None, _) => Err(tributary_catalog::Error::NotFound {
                    kind: "relation",
                    name: relation.clone(),
                }),
                (Some(Relation::Table(_)), true) => Err(tributary_catalog::Error::Invalid(
                    format!("\"{relation}\" is not a view"),
                )),
                (Some(Relation::Table(t)), false) if materialized && t.materialized.is_none() => {
                    Err(tributary_catalog::Error::Invalid(format!(
                        "\"{relation}\" is not a materialized view"
                    )))
                }
                (Some(Relation::Table(t)), false)
                    if materialized && tributary_engine::mirror::spec(t).is_some() =>
                {
                    Err(tributary_catalog::Error::Invalid(format!(
                        "\"{relation}\" is a mirror table; use DROP TABLE"
                    )))
                }
                (Some(Relation::Table(t)), false)
                    if !materialized
                        && t.materialized.is_some()
                        && tributary_engine::mirror::spec(t).is_none() =>
                {
                    Err(tributary_catalog::Error::Invalid(format!(
                        "\"{relation}\" is a materialized view; use DROP MATERIALIZED VIEW"
                    )))
                }
                (Some(Relation::View(_)), false) if materialized => {
                    Err(tributary_catalog::Error::Invalid(format!(
                        "\"{relation}\" is not a materialized view"
                    )))
                }
                (Some(Relation::View(_)), false) => Err(tributary_catalog::Error::Invalid(
                    format!("\"{relation}\" is not a table"),
                )),
                _ => Ok(table_paths(target.relations.remove(&relation).iter())),
            }
        })
        .map_err(wrong_type)?;
    Ok(path)
}

fn wrong_type(err: tributary_catalog::Error) -> Error {
    match err {
        tributary_catalog::Error::Invalid(message) => Error::WrongObjectType(message),
        other => other.into(),
    }
}

async fn drop_schema(
    cx: &mut Context,
    name: &ObjectName,
    if_exists: bool,
    cascade: bool,
) -> Result<Vec<String>> {
    let schema = name_parts(name).last().cloned().unwrap_or_default();
    let database = cx.database().to_string();
    let result = cx.catalogs().modify(|state| {
            let db = state
                .databases
                .get_mut(&database)
                .ok_or_else(|| tributary_catalog::Error::NotFound { kind: "database", name: database.clone() })?;
            let target = db
                .schemas
                .get(&schema)
                .ok_or_else(|| tributary_catalog::Error::NotFound { kind: "schema", name: schema.clone() })?;
            if (!target.relations.is_empty() || !target.procedures.is_empty()) && !cascade {
                return Err(tributary_catalog::Error::Invalid(format!(
                    "cannot drop schema {schema} because other objects depend on it; use DROP SCHEMA ... CASCADE"
                )));
            }
            let removed = db.schemas.remove(&schema).map(|s| table_paths(s.relations.values())).unwrap_or_default();
            Ok(removed)
        });
    match result {
        Ok(paths) => Ok(paths),
        Err(tributary_catalog::Error::NotFound { .. }) if if_exists => {
            cx.notice(format!("schema \"{schema}\" does not exist, skipping"));
            Ok(vec![])
        }
        Err(tributary_catalog::Error::Invalid(message)) => Err(Error::DependentObjects(message)),
        Err(err) => Err(err.into()),
    }
}

async fn drop_database(
    cx: &mut Context,
    name: &ObjectName,
    if_exists: bool,
    _cascade: bool,
) -> Result<Vec<String>> {
    let database = name_parts(name).last().cloned().unwrap_or_default();
    if database == cx.database() {
        return Err(Error::InvalidStatement(
            "cannot drop the currently open database".into(),
        ));
    }
    if cx.catalogs().in_explicit_transaction() {
        return Err(Error::ActiveTransaction("DROP DATABASE".into()));
    }
    let result = cx.catalogs().modify(|state: &mut CatalogState| {
        let removed = state.databases.remove(&database).ok_or_else(|| {
            tributary_catalog::Error::NotFound {
                kind: "database",
                name: database.clone(),
            }
        })?;
        Ok(removed
            .schemas
            .values()
            .flat_map(|s| table_paths(s.relations.values()))
            .collect::<Vec<_>>())
    });
    match result {
        Ok(paths) => Ok(paths),
        Err(tributary_catalog::Error::NotFound { .. }) if if_exists => {
            cx.notice(format!("database \"{database}\" does not exist, skipping"));
            Ok(vec![])
        }
        Err(err) => Err(err.into()),
    }
}

/// The Delta tables of `relations`: tables' own, and mirrors' key tables.
fn table_paths<'a>(relations: impl Iterator<Item = &'a Relation>) -> Vec<String> {
    relations
        .flat_map(|r| match r {
            Relation::Table(t) => t.storage_pins(),
            Relation::View(_) => Vec::new(),
        })
        .map(|(path, _)| path)
        .collect()
}
