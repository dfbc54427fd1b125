//! The engine: the composition root of a server. It opens the store (one storage root and
//! its catalog) and adds the features every session shares: streaming views, datashares, the
//! COPY load errors, the password hasher and the metrics.

use std::ops::Deref;
use std::sync::Arc;

use tributary_catalog::StoredPassword;
use tributary_engine::metrics::Metrics;
use tributary_engine::store::Store;
use tributary_streaming::{Host, StreamingSettings, Streams};

use crate::Result;

/// Computes the stored verifiers of a password (installed by the wire crate, which owns the
/// authentication methods).
pub(crate) type PasswordHasher = fn(user: &str, password: &str) -> StoredPassword;

/// Shared state of a running server.
#[derive(Debug)]
pub struct Engine {
    /// The storage root, its catalog and what transactions share.
    pub(crate) store: Arc<Store>,
    /// Rows rejected by COPY, for `stl_load_errors`.
    pub(crate) load_errors: crate::copy::errors::LoadErrors,
    /// Streaming views: settings, stream clients, counters, history, auto-refresh tasks.
    pub(crate) streams: Streams,
    /// The namespace registry and the producers read through datashares.
    pub(crate) sharing: crate::sharing::registry::Sharing,
    /// Computes password verifiers for CREATE / ALTER USER (set by the wire crate).
    password_hasher: std::sync::OnceLock<PasswordHasher>,
    /// Counters and histograms for `/metrics`, and the recent queries.
    pub(crate) metrics: Metrics,
}

/// The engine is its store with features added: the store's parts (catalog, storage, locks,
/// the query runtime) are reached through it as they are through the store.
impl Deref for Engine {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Engine {
    /// Opens (or creates) the data root at `location`: a directory or an `s3://` URL. The admin
    /// password verifiers are stored only when the root is created.
    pub async fn open(location: &str, admin_password: Option<StoredPassword>) -> Result<Arc<Self>> {
        let store = Store::open(location, admin_password).await?;
        Ok(Arc::new(Self {
            store: Arc::new(store),
            load_errors: Default::default(),
            streams: Default::default(),
            sharing: Default::default(),
            password_hasher: Default::default(),
            metrics: Default::default(),
        }))
    }

    /// Installs how CREATE / ALTER USER turn a password into stored verifiers.
    pub fn set_password_hasher(&self, hasher: PasswordHasher) {
        let _ = self.password_hasher.set(hasher);
    }

    pub(crate) fn password_hasher(&self) -> Option<PasswordHasher> {
        self.password_hasher.get().copied()
    }

    /// Writes this namespace and its storage root to the namespace registry at `url`
    /// (`file:///dir` or `s3://bucket/prefix`), where other instances find it to read its
    /// datashares; this instance finds producers there too.
    pub async fn register_namespace(&self, url: &str) -> Result<()> {
        let namespace = self.catalog.snapshot().namespace;
        self.sharing
            .register(url, namespace, self.storage.url().as_str())
            .await
    }

    /// Starts the supervisor of auto-refreshing views (once per engine).
    pub fn spawn_streaming(self: &Arc<Self>, settings: StreamingSettings) {
        tributary_streaming::spawn_streaming(&self.host(), settings);
    }

    /// This engine as the streaming layer's host.
    pub(crate) fn host(self: &Arc<Self>) -> Arc<dyn Host> {
        self.clone()
    }
}
