//! The namespace registry, through which instances find each other's storage roots, and the
//! producers this instance reads through datashares.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::producer::Producer;
use tributary_storage::{ExternalLocation, StorageRoot};
use uuid::Uuid;

use crate::{Error, Result};

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
    pub(crate) async fn producer(&self, namespace: Uuid) -> Result<Arc<Producer>> {
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

    /// Pins, for the running transaction, the producer state of every database made from a
    /// datashare that the transaction has not pinned yet. Called before each statement is
    /// planned, because DataFusion resolves tables synchronously.
    pub(crate) async fn pin_producers(&self, catalogs: &SessionCatalogs) -> Result<()> {
        if catalogs.transaction_slot().is_none() {
            // Outside a transaction (describing a prepared statement): read the newest.
            catalogs.unpin_producers();
        }
        let state = catalogs.pinned();
        let wanted: Vec<Uuid> = state
            .databases
            .values()
            .filter_map(|db| db.share.as_ref().map(|s| s.namespace))
            .collect();
        for namespace in wanted {
            if catalogs.pinned_producer(&namespace).is_some() {
                continue;
            }
            let producer = self.producer(namespace).await;
            // A producer that cannot be reached fails only the statements that read it.
            let Ok(producer) = producer else { continue };
            let Ok(latest) = producer.refresh().await else {
                continue;
            };
            catalogs.pin_producer(namespace, producer, latest);
        }
        Ok(())
    }
}
