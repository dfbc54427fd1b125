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

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use parking_lot::Mutex;
use tributary_catalog::{CatalogState, Database, Datashare, Privilege, Relation, SharedDatabase};
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::producer::Producer;
use tributary_engine::table::TributaryTable;
use tributary_storage::{ExternalLocation, StorageRoot};
use tributary_syntax::access::{AccessStatement, DatashareChange};
use uuid::Uuid;

use crate::session::{Output, Session};
use crate::{Error, Result};

/// What a namespace writes to the registry: where its storage root is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegistryEntry {
    namespace: Uuid,
    location: String,
}

/// The namespace registry and the producers this instance reads from.
#[derive(Debug, Default)]
pub(crate) struct Sharing {
    registry: Mutex<Option<ExternalLocation>>,
    producers: Mutex<HashMap<Uuid, Arc<Producer>>>,
}

impl Sharing {
    /// Records this namespace and its storage root in the registry at `url` (`file://` or
    /// `s3://`), and remembers the registry for finding producers.
    pub(crate) async fn register(&self, url: &str, namespace: Uuid, location: &str) -> Result<()> {
        let url = if url.ends_with('/') {
            url.to_string()
        } else {
            format!("{url}/")
        };
        let registry = ExternalLocation::parse(&url)?;
        let entry = RegistryEntry {
            namespace,
            location: location.to_string(),
        };
        let json = serde_json::to_vec_pretty(&entry)
            .map_err(|e| Error::Internal(format!("registry entry: {e}")))?;
        registry
            .write(&format!("{namespace}.json"), Bytes::from(json))
            .await?;
        *self.registry.lock() = Some(registry);
        Ok(())
    }

    /// The producer with `namespace`, looked up in the registry the first time.
    async fn producer(&self, namespace: Uuid) -> Result<Arc<Producer>> {
        if let Some(producer) = self.producers.lock().get(&namespace) {
            return Ok(producer.clone());
        }
        let registry = self
            .registry
            .lock()
            .clone()
            .ok_or_else(|| {
                Error::NotSupported(
                    "no namespace registry is configured: start the server with --namespace-registry URL".into(),
                )
            })?;
        let bytes = match registry.read_suffix(&format!("{namespace}.json")).await {
            Ok(bytes) => bytes,
            Err(tributary_storage::Error::ObjectStore(object_store::Error::NotFound {
                ..
            })) => {
                return Err(Error::UndefinedObject(format!(
                    "namespace {namespace} is not in the namespace registry"
                )));
            }
            Err(err) => return Err(err.into()),
        };
        let entry: RegistryEntry = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Storage(format!("registry entry of namespace {namespace}: {e}")))?;
        let storage = StorageRoot::open(&entry.location)?;
        let producer = Arc::new(Producer::new(namespace, storage));
        self.producers.lock().insert(namespace, producer.clone());
        Ok(producer)
    }
}

/// Pins, for the running transaction, the producer state of every database made from a
/// datashare that the transaction has not pinned yet. Called before each statement is
/// planned, because DataFusion resolves tables synchronously.
pub(crate) async fn pin_producers(session: &Session) -> Result<()> {
    if session.catalogs().transaction_slot().is_none() {
        // Outside a transaction (describing a prepared statement): read the newest.
        session.catalogs().unpin_producers();
    }
    let state = session.catalogs().pinned();
    let wanted: Vec<Uuid> = state
        .databases
        .values()
        .filter_map(|db| db.share.as_ref().map(|s| s.namespace))
        .collect();
    for namespace in wanted {
        if session.catalogs().pinned_producer(&namespace).is_some() {
            continue;
        }
        let producer = session.engine().sharing.producer(namespace).await;
        // A producer that cannot be reached fails only the statements that read it.
        let Ok(producer) = producer else { continue };
        let Ok(latest) = producer.refresh().await else {
            continue;
        };
        session.catalogs().pin_producer(namespace, producer, latest);
    }
    Ok(())
}

/// What a consumer database shows: the datashare as of the pinned producer state.
fn shared_view(
    catalogs: &SessionCatalogs,
    database: &str,
) -> std::result::Result<(Arc<Producer>, Arc<CatalogState>, Datashare), String> {
    let pinned = catalogs.pinned();
    let Some(Database {
        share: Some(SharedDatabase {
            namespace,
            datashare,
        }),
        ..
    }) = pinned.databases.get(database)
    else {
        return Err(format!(
            "database \"{database}\" is not made from a datashare"
        ));
    };
    let Some((producer, state)) = catalogs.pinned_producer(namespace) else {
        return Err(format!(
            "the producer namespace {namespace} of database \"{database}\" cannot be reached"
        ));
    };
    let share = state
        .datashares
        .get(datashare)
        .filter(|s| s.consumers.contains(&pinned.namespace))
        .cloned()
        .ok_or_else(|| {
            format!(
                "datashare \"{datashare}\" of namespace {namespace} is gone or no longer granted to this namespace"
            )
        })?;
    Ok((producer, state, share))
}

/// A database made from a datashare, as a DataFusion catalog.
#[derive(Debug)]
pub(crate) struct SharedCatalog {
    pub(crate) catalogs: SessionCatalogs,
    pub(crate) database: String,
}

impl CatalogProvider for SharedCatalog {
    fn schema_names(&self) -> Vec<String> {
        match shared_view(&self.catalogs, &self.database) {
            Ok((_, state, share)) => share
                .schemas
                .iter()
                .filter(|s| state.schema(&share.database, s).is_ok())
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        // When the share itself is unreadable (revoked, dropped, producer unreachable), the
        // schema's tables say why instead of "does not exist".
        if let Ok((_, state, share)) = shared_view(&self.catalogs, &self.database)
            && (!share.schemas.contains(name) || state.schema(&share.database, name).is_err())
        {
            return None;
        }
        Some(Arc::new(SharedSchema {
            catalogs: self.catalogs.clone(),
            database: self.database.clone(),
            schema: name.to_string(),
        }))
    }
}

/// A schema of a datashare: the shared tables of one producer schema.
#[derive(Debug)]
pub(crate) struct SharedSchema {
    catalogs: SessionCatalogs,
    database: String,
    schema: String,
}

#[async_trait]
impl SchemaProvider for SharedSchema {
    fn table_names(&self) -> Vec<String> {
        let Ok((_, state, share)) = shared_view(&self.catalogs, &self.database) else {
            return Vec::new();
        };
        state
            .schema(&share.database, &self.schema)
            .map(|s| {
                s.relations
                    .iter()
                    .filter(|(name, r)| {
                        matches!(r, Relation::Table(_)) && share.shares_relation(&self.schema, name)
                    })
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let (producer, state, share) =
            shared_view(&self.catalogs, &self.database).map_err(|message| {
                DataFusionError::External(Box::new(Error::PermissionDenied(message)))
            })?;
        if !share.shares_relation(&self.schema, name) {
            return Ok(None);
        }
        let Some(Relation::Table(table)) = state.relation(&share.database, &self.schema, name)
        else {
            return Ok(None);
        };
        let provider = TributaryTable::open_in(
            &self.catalogs,
            &producer.storage,
            [self.database.clone(), self.schema.clone(), name.to_string()],
            table.clone(),
            true,
        )
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Some(Arc::new(provider)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|n| n == name)
    }
}

/// Runs the datashare statements.
pub(crate) async fn execute(session: &mut Session, statement: AccessStatement) -> Result<Output> {
    match statement {
        AccessStatement::CreateDatashare {
            name,
            publicly_accessible,
        } => create(session, name, publicly_accessible),
        AccessStatement::AlterDatashare { name, change } => alter(session, name, change),
        AccessStatement::DropDatashare { name, if_exists } => drop(session, name, if_exists),
        AccessStatement::DatashareUsage {
            name,
            namespace,
            revoke,
        } => usage(session, name, namespace, revoke),
        AccessStatement::DatabaseFromShare {
            name,
            datashare,
            namespace,
        } => database_from_share(session, name, datashare, namespace).await,
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

fn create(session: &mut Session, name: String, publicly_accessible: bool) -> Result<Output> {
    let pinned = session.catalogs().pinned();
    let database = session.database().to_string();
    let db = pinned.database(&database)?;
    if db.share.is_some() {
        return Err(Error::NotSupported(format!(
            "\"{database}\" is made from a datashare: a datashare cannot share it again"
        )));
    }
    if !pinned.holds(session.user(), db.oid, &db.owner, Privilege::Create) {
        return Err(Error::PermissionDenied(format!("database {database}")));
    }
    let owner = session.user().to_string();
    session.catalogs().modify(|state| {
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
fn owned_share(session: &Session, name: &str) -> Result<Datashare> {
    let pinned = session.catalogs().pinned();
    let share = pinned
        .datashares
        .get(name)
        .ok_or_else(|| Error::UndefinedObject(format!("datashare \"{name}\" does not exist")))?;
    if share.owner != session.user() && !pinned.is_superuser(session.user()) {
        return Err(Error::PermissionDenied(format!(
            "datashare {name}: must be its owner or a superuser"
        )));
    }
    Ok(share.clone())
}

fn alter(session: &mut Session, name: String, change: DatashareChange) -> Result<Output> {
    let mut share = owned_share(session, &name)?;
    let pinned = session.catalogs().pinned();
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
                let (schema, relation) = share_relation_name(session, &table)?;
                in_share(&share, &schema)?;
                if pinned.relation(&database, &schema, &relation).is_none() {
                    return Err(Error::UndefinedTable(format!("{schema}.{relation}")));
                }
                share.relations.insert((schema, relation));
            }
        }
        DatashareChange::RemoveTables(names) => {
            for table in names {
                let (schema, relation) = share_relation_name(session, &table)?;
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
    session.catalogs().modify(|state| {
        state.datashares.insert(name.clone(), share);
        Ok(())
    })?;
    Ok(Output::command("ALTER DATASHARE"))
}

/// `[schema.]name` of a relation named in ALTER DATASHARE (an unqualified name is in the
/// creation schema).
fn share_relation_name(session: &Session, name: &[String]) -> Result<(String, String)> {
    match name {
        [relation] => Ok((session.creation_schema()?, relation.clone())),
        [schema, relation] => Ok((schema.clone(), relation.clone())),
        [_, schema, relation] => Ok((schema.clone(), relation.clone())),
        _ => Err(Error::Syntax(format!(
            "improper relation name {}",
            name.join(".")
        ))),
    }
}

fn drop(session: &mut Session, name: String, if_exists: bool) -> Result<Output> {
    if if_exists && !session.catalogs().pinned().datashares.contains_key(&name) {
        session.notice(format!("datashare \"{name}\" does not exist, skipping"));
        return Ok(Output::command("DROP DATASHARE"));
    }
    let share = owned_share(session, &name)?;
    session.catalogs().modify(|state| {
        state.datashares.remove(&name);
        state.grants.remove(&share.oid);
        Ok(())
    })?;
    Ok(Output::command("DROP DATASHARE"))
}

fn usage(session: &mut Session, name: String, namespace: String, revoke: bool) -> Result<Output> {
    let namespace = parse_namespace(&namespace)?;
    owned_share(session, &name)?;
    if namespace == session.catalogs().pinned().namespace {
        return Err(Error::InvalidStatement(
            "a datashare cannot be granted to its own namespace".into(),
        ));
    }
    session.catalogs().modify(|state| {
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
    session: &mut Session,
    name: String,
    datashare: String,
    namespace: String,
) -> Result<Output> {
    crate::access::require_superuser(session, "CREATE DATABASE ... FROM DATASHARE")?;
    let namespace = parse_namespace(&namespace)?;
    let own = session.catalogs().pinned().namespace;
    if namespace == own {
        return Err(Error::InvalidStatement(
            "a database cannot be made from a datashare of its own namespace".into(),
        ));
    }
    let producer = session.engine().sharing.producer(namespace).await?;
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
    let owner = session.user().to_string();
    session.catalogs().modify(|state| {
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

/// `svv_datashares`, `svv_datashare_objects` and `svv_datashare_consumers`: outbound shares
/// of this namespace, and inbound ones (databases made from shares). As in Redshift, a user
/// who is not a superuser sees its own: the outbound shares it owns, and the inbound ones
/// whose database it may use.
pub(crate) fn system_view(
    catalogs: &SessionCatalogs,
    state: &CatalogState,
    name: &str,
) -> Result<Option<RecordBatch>> {
    use tributary_streaming::views::Columns;
    let user = catalogs.user();
    let namespace = state.namespace.to_string();
    let outbound: Vec<(&String, &Datashare)> = state
        .datashares
        .iter()
        .filter(|(_, share)| share.owner == user || state.is_superuser(&user))
        .collect();
    let inbound: Vec<(&String, &SharedDatabase)> = state
        .databases
        .iter()
        .filter(|(_, d)| state.holds(&user, d.oid, &d.owner, Privilege::Usage))
        .filter_map(|(db, d)| d.share.as_ref().map(|s| (db, s)))
        .collect();
    let batch = match name {
        "svv_datashares" => {
            let mut rows: Vec<[Option<String>; 6]> = Vec::new();
            let mut flags: Vec<bool> = Vec::new();
            for (share_name, share) in &outbound {
                rows.push([
                    Some(share_name.to_string()),
                    Some(share.oid.to_string()),
                    Some(share.owner.clone()),
                    Some("OUTBOUND".into()),
                    Some(namespace.clone()),
                    None,
                ]);
                flags.push(share.publicly_accessible);
            }
            for (database, shared) in &inbound {
                rows.push([
                    Some(shared.datashare.clone()),
                    None,
                    None,
                    Some("INBOUND".into()),
                    Some(shared.namespace.to_string()),
                    Some(database.to_string()),
                ]);
                flags.push(false);
            }
            let column = |i: usize| rows.iter().map(move |r| r[i].clone());
            Columns::new()
                .text("share_name", column(0))
                .text("share_id", column(1))
                .text("share_owner", column(2))
                .text("share_type", column(3))
                .text("producer_namespace", column(4))
                .text("consumer_database", column(5))
                .boolean("is_publicaccessible", flags.iter().map(|f| Some(*f)))
                .finish()?
        }
        "svv_datashare_objects" => {
            let mut rows: Vec<[String; 5]> = Vec::new();
            for (share_name, share) in &outbound {
                for schema in &share.schemas {
                    rows.push([
                        "OUTBOUND".into(),
                        share_name.to_string(),
                        "schema".into(),
                        schema.clone(),
                        if share.include_new.contains(schema) {
                            "true"
                        } else {
                            "false"
                        }
                        .into(),
                    ]);
                }
                for (schema, relation) in &share.relations {
                    let kind = match state.relation(&share.database, schema, relation) {
                        Some(Relation::View(_)) => "view",
                        _ => "table",
                    };
                    rows.push([
                        "OUTBOUND".into(),
                        share_name.to_string(),
                        kind.into(),
                        format!("{schema}.{relation}"),
                        String::new(),
                    ]);
                }
            }
            for (database, shared) in &inbound {
                if let Some((_, producer_state)) = catalogs.pinned_producer(&shared.namespace)
                    && let Some(share) = producer_state.datashares.get(&shared.datashare)
                {
                    for schema in &share.schemas {
                        rows.push([
                            "INBOUND".into(),
                            shared.datashare.clone(),
                            "schema".into(),
                            format!("{database}.{schema}"),
                            String::new(),
                        ]);
                    }
                }
            }
            let column = |i: usize| rows.iter().map(move |r| Some(r[i].clone()));
            Columns::new()
                .text("share_type", column(0))
                .text("share_name", column(1))
                .text("object_type", column(2))
                .text("object_name", column(3))
                .text("include_new", column(4))
                .finish()?
        }
        "svv_datashare_consumers" => {
            let rows: Vec<(String, String)> = outbound
                .iter()
                .flat_map(|(share_name, share)| {
                    share
                        .consumers
                        .iter()
                        .map(move |c| (share_name.to_string(), c.to_string()))
                })
                .collect();
            Columns::new()
                .text("share_name", rows.iter().map(|r| Some(r.0.clone())))
                .text("consumer_namespace", rows.iter().map(|r| Some(r.1.clone())))
                .finish()?
        }
        _ => return Ok(None),
    };
    Ok(Some(batch))
}

/// The system views this module serves.
pub(crate) const VIEWS: &[&str] = &[
    "svv_datashares",
    "svv_datashare_objects",
    "svv_datashare_consumers",
];
