//! Data sharing between namespaces: datashares on the producer, databases made from them on
//! the consumer, and the namespace registry through which instances find each other.
//!
//! A consumer reads the producer's committed data in place: it opens the producer's storage
//! root (found in the registry), reads the producer's latest catalog version, and reads each
//! shared table at the Delta version that catalog version pins. A consumer transaction pins
//! one producer catalog version for its whole life (snapshot isolation), and the next
//! transaction reads the producer's catalog again, so new commits, revoked grants and removed
//! objects take effect at once. Nothing is copied, and nothing the consumer does takes a lock
//! on the producer.

pub(crate) mod catalog;
pub(crate) mod registry;
pub(crate) mod views;

use tributary_catalog::{Database, Datashare, Privilege, SharedDatabase};
use tributary_syntax::access::{AccessStatement, DatashareChange};
use uuid::Uuid;

use crate::context::Context;
use crate::output::Output;
use crate::{Error, Result};

/// What a namespace writes to the registry: where its storage root is.
/// Runs the datashare statements.
pub(crate) async fn execute(cx: &mut Context, statement: AccessStatement) -> Result<Output> {
    match statement {
        AccessStatement::CreateDatashare {
            name,
            publicly_accessible,
        } => create(cx, name, publicly_accessible),
        AccessStatement::AlterDatashare { name, change } => alter(cx, name, change),
        AccessStatement::DropDatashare { name, if_exists } => drop(cx, name, if_exists),
        AccessStatement::DatashareUsage {
            name,
            namespace,
            revoke,
        } => usage(cx, name, namespace, revoke),
        AccessStatement::DatabaseFromShare {
            name,
            datashare,
            namespace,
        } => database_from_share(cx, name, datashare, namespace).await,
        other => Err(Error::Internal(format!(
            "not a datashare statement: {other:?}"
        ))),
    }
}

fn parse_namespace(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        Error::InvalidParameterValue(format!(
            "\"{text}\" is not a namespace: a namespace is a GUID, as SELECT current_namespace shows"
        ))
    })
}

fn create(cx: &mut Context, name: String, publicly_accessible: bool) -> Result<Output> {
    let pinned = cx.catalogs().pinned();
    let database = cx.database().to_string();
    let db = pinned.database(&database)?;
    if db.share.is_some() {
        return Err(Error::NotSupported(format!(
            "\"{database}\" is made from a datashare: a datashare cannot share it again"
        )));
    }
    if !pinned.holds(cx.user(), db.oid, &db.owner, Privilege::Create) {
        return Err(Error::PermissionDenied(format!("database {database}")));
    }
    let owner = cx.user().to_string();
    cx.catalogs().modify(|state| {
        if state.datashares.contains_key(&name) {
            return Err(tributary_catalog::Error::AlreadyExists {
                kind: "datashare",
                name: name.clone(),
            });
        }
        let oid = state.allocate_oid();
        state.datashares.insert(
            name.clone(),
            Datashare {
                oid,
                owner,
                database,
                schemas: Default::default(),
                relations: Default::default(),
                include_new: Default::default(),
                consumers: Default::default(),
                publicly_accessible,
            },
        );
        Ok(())
    })?;
    Ok(Output::command("CREATE DATASHARE"))
}

/// The datashare `name`, if the user owns it (or is a superuser).
fn owned_share(cx: &Context, name: &str) -> Result<Datashare> {
    let pinned = cx.catalogs().pinned();
    let share = pinned
        .datashares
        .get(name)
        .ok_or_else(|| Error::UndefinedObject(format!("datashare \"{name}\" does not exist")))?;
    if share.owner != cx.user() && !pinned.is_superuser(cx.user()) {
        return Err(Error::PermissionDenied(format!(
            "datashare {name}: must be its owner or a superuser"
        )));
    }
    Ok(share.clone())
}

fn alter(cx: &mut Context, name: String, change: DatashareChange) -> Result<Output> {
    let mut share = owned_share(cx, &name)?;
    let pinned = cx.catalogs().pinned();
    let database = share.database.clone();
    let schema_exists = |schema: &str| -> Result<()> {
        pinned
            .schema(&database, schema)
            .map(|_| ())
            .map_err(|_| Error::UndefinedSchema(schema.to_string()))
    };
    let in_share = |share: &Datashare, schema: &str| -> Result<()> {
        if share.schemas.contains(schema) {
            Ok(())
        } else {
            Err(Error::InvalidStatement(format!(
                "schema \"{schema}\" is not in datashare \"{}\": ADD SCHEMA {schema} first",
                name
            )))
        }
    };
    match change {
        DatashareChange::AddSchema(schema) => {
            schema_exists(&schema)?;
            if pinned
                .schema(&database, &schema)
                .is_ok_and(|s| s.external.is_some())
            {
                return Err(Error::NotSupported(format!(
                    "schema \"{schema}\" is an external schema: it cannot be shared"
                )));
            }
            share.schemas.insert(schema);
        }
        DatashareChange::RemoveSchema(schema) => {
            share.schemas.remove(&schema);
            share.include_new.remove(&schema);
            share.relations.retain(|(s, _)| *s != schema);
        }
        DatashareChange::AddTables(names) => {
            for table in names {
                let (schema, relation) = share_relation_name(cx, &table)?;
                in_share(&share, &schema)?;
                if pinned.relation(&database, &schema, &relation).is_none() {
                    return Err(Error::UndefinedTable(format!("{schema}.{relation}")));
                }
                share.relations.insert((schema, relation));
            }
        }
        DatashareChange::RemoveTables(names) => {
            for table in names {
                let (schema, relation) = share_relation_name(cx, &table)?;
                if !share.relations.remove(&(schema.clone(), relation.clone()))
                    && !share.include_new.contains(&schema)
                {
                    return Err(Error::InvalidStatement(format!(
                        "relation \"{schema}.{relation}\" is not in datashare \"{name}\""
                    )));
                }
            }
        }
        DatashareChange::AddAllTablesInSchema(schemas) => {
            for schema in schemas {
                schema_exists(&schema)?;
                in_share(&share, &schema)?;
                let relations: Vec<String> = pinned
                    .schema(&database, &schema)?
                    .relations
                    .keys()
                    .cloned()
                    .collect();
                for relation in relations {
                    share.relations.insert((schema.clone(), relation));
                }
            }
        }
        DatashareChange::RemoveAllTablesInSchema(schemas) => {
            for schema in schemas {
                share.relations.retain(|(s, _)| *s != schema);
            }
        }
        DatashareChange::IncludeNew { schema, on } => {
            schema_exists(&schema)?;
            in_share(&share, &schema)?;
            if on {
                share.include_new.insert(schema);
            } else {
                share.include_new.remove(&schema);
            }
        }
        DatashareChange::PubliclyAccessible(on) => share.publicly_accessible = on,
    }
    cx.catalogs().modify(|state| {
        state.datashares.insert(name.clone(), share);
        Ok(())
    })?;
    Ok(Output::command("ALTER DATASHARE"))
}

/// `[schema.]name` of a relation named in ALTER DATASHARE (an unqualified name is in the
/// creation schema).
fn share_relation_name(cx: &Context, name: &[String]) -> Result<(String, String)> {
    match name {
        [relation] => Ok((cx.creation_schema()?, relation.clone())),
        [schema, relation] => Ok((schema.clone(), relation.clone())),
        [_, schema, relation] => Ok((schema.clone(), relation.clone())),
        _ => Err(Error::Syntax(format!(
            "improper relation name {}",
            name.join(".")
        ))),
    }
}

fn drop(cx: &mut Context, name: String, if_exists: bool) -> Result<Output> {
    if if_exists && !cx.catalogs().pinned().datashares.contains_key(&name) {
        cx.notice(format!("datashare \"{name}\" does not exist, skipping"));
        return Ok(Output::command("DROP DATASHARE"));
    }
    let share = owned_share(cx, &name)?;
    cx.catalogs().modify(|state| {
        state.datashares.remove(&name);
        state.grants.remove(&share.oid);
        Ok(())
    })?;
    Ok(Output::command("DROP DATASHARE"))
}

fn usage(cx: &mut Context, name: String, namespace: String, revoke: bool) -> Result<Output> {
    let namespace = parse_namespace(&namespace)?;
    owned_share(cx, &name)?;
    if namespace == cx.catalogs().pinned().namespace {
        return Err(Error::InvalidStatement(
            "a datashare cannot be granted to its own namespace".into(),
        ));
    }
    cx.catalogs().modify(|state| {
        if let Some(share) = state.datashares.get_mut(&name) {
            if revoke {
                share.consumers.remove(&namespace);
            } else {
                share.consumers.insert(namespace);
            }
        }
        Ok(())
    })?;
    Ok(Output::command(if revoke { "REVOKE" } else { "GRANT" }))
}

async fn database_from_share(
    cx: &mut Context,
    name: String,
    datashare: String,
    namespace: String,
) -> Result<Output> {
    crate::access::check::require_superuser(cx, "CREATE DATABASE ... FROM DATASHARE")?;
    let namespace = parse_namespace(&namespace)?;
    let own = cx.catalogs().pinned().namespace;
    if namespace == own {
        return Err(Error::InvalidStatement(
            "a database cannot be made from a datashare of its own namespace".into(),
        ));
    }
    let producer = cx.engine().sharing.producer(namespace).await?;
    let state = producer.refresh().await?;
    let share = state.datashares.get(&datashare).ok_or_else(|| {
        Error::UndefinedObject(format!(
            "datashare \"{datashare}\" does not exist in namespace {namespace}"
        ))
    })?;
    if !share.consumers.contains(&own) {
        return Err(Error::PermissionDenied(format!(
            "datashare {datashare}: namespace {namespace} has not granted USAGE to this namespace ({own})"
        )));
    }
    let owner = cx.user().to_string();
    cx.catalogs().modify(|state| {
        if state.databases.contains_key(&name) {
            return Err(tributary_catalog::Error::AlreadyExists {
                kind: "database",
                name: name.clone(),
            });
        }
        let oid = state.allocate_oid();
        state.databases.insert(
            name.clone(),
            Database {
                oid,
                owner,
                schemas: Default::default(),
                share: Some(SharedDatabase {
                    namespace,
                    datashare: datashare.clone(),
                }),
            },
        );
        Ok(())
    })?;
    Ok(Output::command("CREATE DATABASE"))
}
