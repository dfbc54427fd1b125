//! Other namespaces read through datashares: a producer's storage root opened read-only, and
//! the producer catalog versions a transaction pins (snapshot isolation across namespaces).
//! The sharing feature above finds producers in the namespace registry.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tributary_catalog::{Catalog, CatalogState};
use tributary_storage::StorageRoot;
use uuid::Uuid;

use crate::{Error, Result};

/// Another namespace's storage root, opened read-only.
#[derive(Debug)]
pub struct Producer {
    pub namespace: Uuid,
    pub storage: Arc<StorageRoot>,
    latest: Mutex<Option<Arc<CatalogState>>>,
}

impl Producer {
    pub fn new(namespace: Uuid, storage: Arc<StorageRoot>) -> Self {
        Self {
            namespace,
            storage,
            latest: Mutex::new(None),
        }
    }

    /// The producer's newest catalog version; the catalog file is read only when the
    /// listing shows a version newer than the one already read.
    pub async fn refresh(&self) -> Result<Arc<CatalogState>> {
        let known = self.latest.lock().clone();
        let newer = Catalog::read_newer(
            self.storage.object_store(),
            known.as_ref().map_or(0, |k| k.version),
        )
        .await?;
        let mut latest = self.latest.lock();
        if let Some(state) = newer
            // Another refresh may have stored a newer one meanwhile: never go back.
            && latest.as_ref().is_none_or(|l| l.version < state.version)
        {
            *latest = Some(Arc::new(state));
        }
        latest.clone().ok_or_else(|| {
            Error::UndefinedObject(format!(
                "namespace {} has no catalog at {}",
                self.namespace,
                self.storage.url()
            ))
        })
    }
}

/// The producer states a transaction reads, pinned at its first use of each producer.
#[derive(Debug, Default)]
pub struct PinnedProducers {
    states: HashMap<Uuid, (Arc<Producer>, Arc<CatalogState>)>,
}

impl PinnedProducers {
    pub fn get(&self, namespace: &Uuid) -> Option<(Arc<Producer>, Arc<CatalogState>)> {
        self.states.get(namespace).cloned()
    }

    pub fn insert(&mut self, namespace: Uuid, producer: Arc<Producer>, state: Arc<CatalogState>) {
        self.states.insert(namespace, (producer, state));
    }
}
