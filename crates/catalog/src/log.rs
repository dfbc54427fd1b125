//! The catalog's commit log: `_catalog/<version>.json`, one full snapshot per version, each
//! written with put-if-absent so that exactly one writer can create a given version.

use parking_lot::RwLock;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::model::{CatalogState, StoredPassword};
use crate::{Error, Result};

const LOG_DIR: &str = "_catalog";
/// How many old catalog versions stay on storage after a commit (for inspection and for
/// readers in other processes that are still on an older version).
const VERSIONS_KEPT: u64 = 20;

/// The live catalog of one data root.
#[derive(Debug)]
pub struct Catalog {
    store: Arc<dyn ObjectStore>,
    current: Arc<RwLock<Arc<CatalogState>>>,
    /// Serialises writers inside this process; put-if-absent guards against other processes.
    writer: Arc<tokio::sync::Mutex<()>>,
    created: bool,
}

impl Catalog {
    /// Opens the catalog in `store`, creating version 1 of a new one if there is none. The
    /// admin password is used only when the catalog is created.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        admin_password: Option<StoredPassword>,
    ) -> Result<Self> {
        let latest = latest_version(store.as_ref()).await?;
        let (state, created) = match latest {
            Some(version) => (read_version(store.as_ref(), version).await?, false),
            None => {
                let mut state = CatalogState::bootstrap(admin_password);
                state.version = 1;
                write_version(store.as_ref(), &state).await?;
                (state, true)
            }
        };
        Ok(Self {
            store,
            current: Arc::new(RwLock::new(Arc::new(state))),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            created,
        })
    }

    /// Reads the newest catalog version in `store` without opening it for writing (another
    /// namespace's catalog, read by a consumer of its datashares), if it is newer than
    /// `known` (0: any). One listing, and one read only when there is a newer version.
    pub async fn read_newer(
        store: Arc<dyn ObjectStore>,
        known: u64,
    ) -> Result<Option<CatalogState>> {
        for _ in 0..2 {
            let Some(version) = latest_version(store.as_ref()).await?.filter(|v| *v > known) else {
                return Ok(None);
            };
            match read_version(store.as_ref(), version).await {
                Ok(state) => return Ok(Some(state)),
                // Deleted between the listing and the read (it was old): list again.
                Err(Error::Storage(object_store::Error::NotFound { .. })) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    /// True if this `open` created the catalog (a brand-new data root).
    pub fn was_created(&self) -> bool {
        self.created
    }

    /// The current catalog version. Readers hold on to it for a whole statement.
    pub fn snapshot(&self) -> Arc<CatalogState> {
        self.current.read().clone()
    }

    /// Applies `change` to a copy of the current state and commits it as the next version.
    /// Nothing is visible to readers until the new version is durably written.
    pub async fn commit<T>(
        &self,
        change: impl FnOnce(&mut CatalogState) -> Result<T>,
    ) -> Result<(T, Arc<CatalogState>)> {
        let guard = self.writer.clone().lock_owned().await;
        let mut next = (*self.snapshot()).clone();
        let output = change(&mut next)?;
        next.version += 1;
        let next = Arc::new(next);
        // The write and its publication run as a task of their own, which finishes even if
        // the caller is cancelled (its client went away, the server shuts down): a version
        // written but not published would make every later commit of this process conflict.
        let (store, current, published) = (self.store.clone(), self.current.clone(), next.clone());
        tokio::spawn(async move {
            let _guard = guard;
            write_version(store.as_ref(), &published).await?;
            *current.write() = published;
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::Internal(format!("the catalog commit task failed: {e}")))??;
        self.forget_old_versions(next.version).await;
        Ok((output, next))
    }

    async fn forget_old_versions(&self, current: u64) {
        if current <= VERSIONS_KEPT {
            return;
        }
        // Best effort: an old file left behind is harmless, so failures are only logged.
        let old = version_path(current - VERSIONS_KEPT);
        if let Err(err) = self.store.delete(&old).await
            && !matches!(err, object_store::Error::NotFound { .. })
        {
            tracing::warn!(%err, path = %old, "could not delete an old catalog version");
        }
    }
}

fn version_path(version: u64) -> Path {
    Path::from(format!("{LOG_DIR}/{version:020}.json"))
}

async fn latest_version(store: &dyn ObjectStore) -> Result<Option<u64>> {
    let prefix = Path::from(LOG_DIR);
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    Ok(metas
        .iter()
        .filter_map(|meta| {
            meta.location
                .filename()?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max())
}

async fn read_version(store: &dyn ObjectStore, version: u64) -> Result<CatalogState> {
    let path = version_path(version);
    let bytes = store.get(&path).await?.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

async fn write_version(store: &dyn ObjectStore, state: &CatalogState) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::Corrupt {
        path: version_path(state.version).to_string(),
        reason: e.to_string(),
    })?;
    let options = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .put_opts(
            &version_path(state.version),
            PutPayload::from(bytes),
            options,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Conflict),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    #[tokio::test]
    async fn commits_survive_reopen_and_lost_races_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let catalog = Catalog::open(store.clone(), None).await.unwrap();
        assert!(catalog.was_created());
        catalog
            .commit(|state| state.create_schema("dev", "sales", "admin"))
            .await
            .unwrap();
        let namespace = catalog.snapshot().namespace;

        let reopened = Catalog::open(store.clone(), None).await.unwrap();
        assert!(!reopened.was_created());
        assert_eq!(reopened.snapshot().version, 2);
        assert_eq!(reopened.snapshot().namespace, namespace);
        assert!(reopened.snapshot().schema("dev", "sales").is_ok());

        // Another process (here: the first handle) already wrote version 3.
        catalog.commit(|_| Ok(())).await.unwrap();
        let err = reopened.commit(|_| Ok(())).await.unwrap_err();
        assert!(matches!(err, Error::Conflict), "{err}");
    }
}
