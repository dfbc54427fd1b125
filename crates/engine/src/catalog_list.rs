//! A session's catalogs: the catalog version pinned for the running statement, the open
//! transaction, the producer versions it pinned, the session's TEMP schema and the schemas
//! DataFusion's extensions register. DataFusion sees them through the `providers` module.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::SessionContext;
use parking_lot::{Mutex, MutexGuard, RwLock};
use tributary_catalog::CatalogState;
use uuid::Uuid;

use crate::producer::{PinnedProducers, Producer};
use crate::store::Store;
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

    /// The names of the schemas DataFusion's extensions registered.
    pub fn registered_names(&self) -> Vec<String> {
        self.inner.registered.read().keys().cloned().collect()
    }

    /// Registers a schema of a DataFusion extension (the same in every database).
    pub fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Option<Arc<dyn SchemaProvider>> {
        self.inner
            .registered
            .write()
            .insert(name.to_string(), schema)
    }

    /// Forgets the schemas DataFusion extensions registered, when the session ends: they
    /// hold these catalogs (pg_catalog's provider keeps the session's catalog list), so
    /// neither would ever be freed, some 5 MiB a session, pg_catalog's tables included.
    pub fn release(&self) {
        self.inner.registered.write().clear();
    }

    /// The session's DataFusion context, while the session lives.
    pub fn context(&self) -> Option<Arc<SessionContext>> {
        self.inner.context.read().upgrade()
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

impl SessionCatalogs {
    pub fn pinned_producer(&self, namespace: &Uuid) -> Option<(Arc<Producer>, Arc<CatalogState>)> {
        self.producers().get(namespace)
    }

    pub fn pin_producer(&self, namespace: Uuid, producer: Arc<Producer>, state: Arc<CatalogState>) {
        self.producers().insert(namespace, producer, state);
    }
}
