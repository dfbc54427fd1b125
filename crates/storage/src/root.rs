//! The storage root: where every table and the catalog log live (a directory or an s3:// prefix).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Once};

use datafusion::catalog::TableProvider;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use url::Url;

use crate::{Error, Result};

/// How many loaded table versions are kept in memory. Versions are immutable, so the cache is
/// keyed by (table, version) and never needs invalidation; the bound keeps memory flat.
const SNAPSHOT_CACHE_ENTRIES_MAX: usize = 256;

/// One storage root, shared by every session of a server.
#[derive(Debug)]
pub struct StorageRoot {
    url: Url,
    store: Arc<dyn ObjectStore>,
    snapshots: Mutex<SnapshotCache>,
}

/// Loaded table versions, so that a write or a read right after another one does not replay
/// the Delta log again.
#[derive(Debug, Default)]
pub(crate) struct SnapshotCache {
    entries: HashMap<(String, u64), Snapshot>,
    order: std::collections::VecDeque<(String, u64)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) table: deltalake::DeltaTable,
    pub(crate) provider: Option<Arc<dyn TableProvider>>,
}

impl SnapshotCache {
    pub(crate) fn get(&self, key: &(String, u64)) -> Option<Snapshot> {
        self.entries.get(key).cloned()
    }

    pub(crate) fn insert_table(&mut self, key: (String, u64), table: deltalake::DeltaTable) {
        if self.entries.contains_key(&key) {
            return;
        }
        self.entries.insert(
            key.clone(),
            Snapshot {
                table,
                provider: None,
            },
        );
        self.order.push_back(key);
        while self.order.len() > SNAPSHOT_CACHE_ENTRIES_MAX {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    pub(crate) fn set_provider(&mut self, key: &(String, u64), provider: Arc<dyn TableProvider>) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.provider = Some(provider);
        }
    }

    pub(crate) fn forget_table(&mut self, path: &str) {
        self.entries.retain(|(table, _), _| table != path);
        self.order.retain(|(table, _)| table != path);
    }
}

impl StorageRoot {
    /// Opens a root given as a local directory (created if missing) or an `s3://bucket/prefix`
    /// URL. S3 settings come from the standard AWS environment (`AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, credentials, `AWS_ALLOW_HTTP`).
    pub fn open(location: &str) -> Result<Arc<Self>> {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| deltalake::aws::register_handlers(None));
        let (url, store) = if location.starts_with("s3://") || location.starts_with("s3a://") {
            open_s3(location)?
        } else if location.contains("://") && !location.starts_with("file://") {
            return Err(Error::InvalidLocation {
                location: location.to_string(),
                reason: "supported are a local directory, file:// and s3://".to_string(),
            });
        } else {
            open_local(location)?
        };
        Ok(Arc::new(Self {
            url,
            store,
            snapshots: Mutex::new(SnapshotCache::default()),
        }))
    }

    /// The root as a URL (`file:///...` or `s3://...`), always ending in `/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// An object store whose paths are relative to the root; the catalog log lives here.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub(crate) fn snapshots(&self) -> parking_lot::MutexGuard<'_, SnapshotCache> {
        // A poisoned cache only means a panic elsewhere; the cache itself stays consistent.
        self.snapshots.lock()
    }
}

fn open_local(location: &str) -> Result<(Url, Arc<dyn ObjectStore>)> {
    let path = location.strip_prefix("file://").unwrap_or(location);
    std::fs::create_dir_all(path).map_err(|e| Error::InvalidLocation {
        location: location.to_string(),
        reason: e.to_string(),
    })?;
    let path = std::fs::canonicalize(path).map_err(|e| Error::InvalidLocation {
        location: location.to_string(),
        reason: e.to_string(),
    })?;
    let url = Url::from_directory_path(&path).map_err(|()| Error::InvalidLocation {
        location: location.to_string(),
        reason: "not an absolute directory path".to_string(),
    })?;
    let store = LocalFileSystem::new_with_prefix(&path)?;
    Ok((url, Arc::new(store)))
}

fn open_s3(location: &str) -> Result<(Url, Arc<dyn ObjectStore>)> {
    let mut url = Url::parse(location).map_err(|e| Error::InvalidLocation {
        location: location.to_string(),
        reason: e.to_string(),
    })?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let bucket = url.host_str().ok_or_else(|| Error::InvalidLocation {
        location: location.to_string(),
        reason: "missing bucket name".to_string(),
    })?;
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()?;
    let prefix = url.path().trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    Ok((url, store))
}
