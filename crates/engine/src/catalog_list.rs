//! DataFusion's view of the catalog for one session: databases are DataFusion catalogs, and
//! every lookup reads the catalog version pinned for the running statement.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::{SessionContext, col};
use parking_lot::{Mutex, MutexGuard, RwLock};
use tributary_catalog::{CatalogState, Relation};

use crate::producer::PinnedProducers;
use crate::store::Store;
use crate::table::TributaryTable;
use crate::transaction::Transaction;

/// The schema name under which a session's temporary tables live.
pub const TEMP_SCHEMA: &str = "pg_temp";
/// The schema of the system catalogs and Redshift's system views.
pub const SYSTEM_SCHEMA: &str = "pg_catalog";

/// What the layers above the engine add to a session's catalogs. The engine's composition
/// root implements it.
pub trait Extensions: std::fmt::Debug + Send + Sync {
    /// The `pg_catalog` schema of `database`: Redshift's system views, over the schema
    /// DataFusion's pg_catalog extension registered, if any.
    fn system_schema(
        self: Arc<Self>,
        catalogs: &SessionCatalogs,
        database: &str,
        registered: Option<Arc<dyn SchemaProvider>>,
    ) -> Arc<dyn SchemaProvider>;

    /// A database made from another namespace's datashare.
    fn shared_catalog(
        self: Arc<Self>,
        catalogs: &SessionCatalogs,
        database: &str,
    ) -> Arc<dyn CatalogProvider>;

    /// How long a catalog commit took.
    fn observe_commit(&self, took: Duration);
}

/// A session's catalogs. Cheap to clone; clones share the pinned version.
#[derive(Debug, Clone)]
pub struct SessionCatalogs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    /// What the layers above add: system views, datashare databases, commit timings.
    extensions: Arc<dyn Extensions>,
    pinned: RwLock<Arc<CatalogState>>,
    /// Schemas registered by DataFusion extensions (pg_catalog, information_schema). They are
    /// the same in every database.
    registered: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
    temp: Arc<MemorySchemaProvider>,
    /// The session's context, to plan views; weak because the context owns these catalogs.
    context: RwLock<Weak<SessionContext>>,
    /// The open transaction, if any. Never held across an await.
    transaction: Mutex<Option<Transaction>>,
    /// The user whose privileges apply (the session's, or a SECURITY DEFINER owner's).
    user: RwLock<String>,
    /// The producer catalog versions the open transaction reads through datashares.
    producers: Mutex<PinnedProducers>,
}

impl SessionCatalogs {
    pub fn new(store: Arc<Store>, extensions: Arc<dyn Extensions>) -> Self {
        let pinned = store.catalog_snapshot();
        Self {
            inner: Arc::new(Inner {
                store,
                extensions,
                pinned: RwLock::new(pinned),
                registered: RwLock::new(HashMap::new()),
                temp: Arc::new(MemorySchemaProvider::new()),
                context: RwLock::new(Weak::new()),
                transaction: Mutex::new(None),
                user: RwLock::new(String::new()),
                producers: Mutex::new(Default::default()),
            }),
        }
    }

    pub fn set_context(&self, context: &Arc<SessionContext>) {
        *self.inner.context.write() = Arc::downgrade(context);
    }

    /// Pins the store's current catalog version for the next statement and returns it.
    pub fn pin_latest(&self) -> Arc<CatalogState> {
        let latest = self.inner.store.catalog_snapshot();
        *self.inner.pinned.write() = latest.clone();
        latest
    }

    pub fn set_pinned(&self, state: Arc<CatalogState>) {
        *self.inner.pinned.write() = state;
    }

    pub fn set_user(&self, user: &str) {
        *self.inner.user.write() = user.to_string();
    }

    pub fn user(&self) -> String {
        self.inner.user.read().clone()
    }

    pub fn producers(&self) -> MutexGuard<'_, PinnedProducers> {
        self.inner.producers.lock()
    }

    /// Forgets the producer versions of the transaction that ended.
    pub fn unpin_producers(&self) {
        *self.producers() = Default::default();
    }

    pub fn transaction_slot(&self) -> MutexGuard<'_, Option<Transaction>> {
        self.inner.transaction.lock()
    }

    pub fn pinned(&self) -> Arc<CatalogState> {
        self.inner.pinned.read().clone()
    }

    pub fn temp(&self) -> &Arc<MemorySchemaProvider> {
        &self.inner.temp
    }

    pub fn registered_schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.inner.registered.read().get(name).cloned()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn extensions(&self) -> &Arc<dyn Extensions> {
        &self.inner.extensions
    }
}

impl CatalogProviderList for SessionCatalogs {
    fn register_catalog(
        &self,
        _name: String,
        _catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        // Databases are created with CREATE DATABASE, which goes through the catalog log.
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        self.pinned().databases.keys().cloned().collect()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let database = self.pinned().databases.get(name).cloned()?;
        if database.share.is_some() {
            return Some(self.inner.extensions.clone().shared_catalog(self, name));
        }
        Some(Arc::new(DatabaseCatalog {
            catalogs: self.clone(),
            database: name.to_string(),
        }))
    }
}

/// One database as a DataFusion catalog.
#[derive(Debug)]
struct DatabaseCatalog {
    catalogs: SessionCatalogs,
    database: String,
}

impl CatalogProvider for DatabaseCatalog {
    fn schema_names(&self) -> Vec<String> {
        let pinned = self.catalogs.pinned();
        let mut names: Vec<String> = pinned
            .databases
            .get(&self.database)
            .map(|db| db.schemas.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(self.catalogs.inner.registered.read().keys().cloned());
        names.push(TEMP_SCHEMA.to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == TEMP_SCHEMA {
            return Some(self.catalogs.inner.temp.clone());
        }
        if name == SYSTEM_SCHEMA {
            let registered = self.catalogs.registered_schema(SYSTEM_SCHEMA);
            return Some(self.catalogs.inner.extensions.clone().system_schema(
                &self.catalogs,
                &self.database,
                registered,
            ));
        }
        if let Some(schema) = self.catalogs.registered_schema(name) {
            return Some(schema);
        }
        let pinned = self.catalogs.pinned();
        let found = pinned.schema(&self.database, name).ok()?;
        if let Some(tributary_catalog::ExternalSource::Redshift { database, schema }) =
            &found.external
        {
            // A local name for a schema of another database (usually a datashare's).
            return self.catalogs.catalog(database)?.schema(schema);
        }
        Some(Arc::new(UserSchema {
            catalogs: self.catalogs.clone(),
            database: self.database.clone(),
            schema: name.to_string(),
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        Ok(self
            .catalogs
            .inner
            .registered
            .write()
            .insert(name.to_string(), schema))
    }
}

/// A user schema: its tables and views, as of the pinned catalog version.
#[derive(Debug)]
struct UserSchema {
    catalogs: SessionCatalogs,
    database: String,
    schema: String,
}

#[async_trait]
impl SchemaProvider for UserSchema {
    fn table_names(&self) -> Vec<String> {
        let pinned = self.catalogs.pinned();
        pinned
            .schema(&self.database, &self.schema)
            .map(|s| s.relations.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let pinned = self.catalogs.pinned();
        let Some(relation) = pinned.relation(&self.database, &self.schema, name) else {
            return Ok(None);
        };
        match relation {
            Relation::Table(table) => {
                let provider = TributaryTable::open(
                    &self.catalogs,
                    [self.database.clone(), self.schema.clone(), name.to_string()],
                    table.clone(),
                )
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Ok(Some(Arc::new(provider)))
            }
            Relation::View(view) => {
                let context = self.catalogs.inner.context.read().upgrade();
                let Some(context) = context else {
                    return Err(DataFusionError::Internal("the session has ended".into()));
                };
                let plan = crate::planning::plan_sql(&context.state(), &view.sql).await?;
                let plan = if view.column_names.is_empty() {
                    plan
                } else {
                    let fields = plan.schema().columns();
                    if fields.len() != view.column_names.len() {
                        return Err(DataFusionError::Plan(format!(
                            "view \"{name}\" names {} columns but its query returns {}",
                            view.column_names.len(),
                            fields.len()
                        )));
                    }
                    let exprs = fields
                        .into_iter()
                        .zip(&view.column_names)
                        .map(|(field, alias)| col(field).alias(alias));
                    LogicalPlanBuilder::from(plan).project(exprs)?.build()?
                };
                Ok(Some(Arc::new(ViewTable::new(plan, Some(view.sql.clone())))))
            }
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.catalogs
            .pinned()
            .relation(&self.database, &self.schema, name)
            .is_some()
    }
}
