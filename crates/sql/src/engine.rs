//! The engine: one storage root and its catalog, shared by every session of a server.

use std::sync::Arc;

use tributary_catalog::{Catalog, CatalogState, StoredPassword};
use tributary_storage::StorageRoot;

use crate::Result;
use crate::session::Session;

/// Shared state of a running server.
#[derive(Debug)]
pub struct Engine {
    pub(crate) storage: Arc<StorageRoot>,
    pub(crate) catalog: Catalog,
    /// Serialises table writes inside this process, so that each write appends on top of the
    /// version its catalog commit replaces. Reads never take it.
    pub(crate) write_lock: tokio::sync::Mutex<()>,
}

impl Engine {
    /// Opens (or creates) the data root at `location`: a directory or an `s3://` URL. The admin
    /// password verifiers are stored only when the root is created.
    pub async fn open(location: &str, admin_password: Option<StoredPassword>) -> Result<Arc<Self>> {
        let storage = StorageRoot::open(location)?;
        let catalog = Catalog::open(storage.object_store(), admin_password).await?;
        let engine = Arc::new(Self {
            storage,
            catalog,
            write_lock: tokio::sync::Mutex::new(()),
        });
        engine.recover().await?;
        Ok(engine)
    }

    /// The storage root URL (for logs and the start-up banner).
    pub fn location(&self) -> String {
        self.storage.url().to_string()
    }

    /// True if this open created a brand-new data root.
    pub fn was_created(&self) -> bool {
        self.catalog.was_created()
    }

    /// The current catalog version.
    pub fn catalog_snapshot(&self) -> Arc<CatalogState> {
        self.catalog.snapshot()
    }

    /// Opens a session for an authenticated user on a database.
    pub fn session(self: &Arc<Self>, user: &str, database: &str) -> Result<Session> {
        Session::new(self.clone(), user, database)
    }

    /// Undoes table commits that never became visible: a crash between a table's Delta commit
    /// and the catalog commit that pins it leaves a Delta version newer than the pin. Such a
    /// table is restored to its pinned content, and the catalog pins the restoring commit.
    async fn recover(&self) -> Result<()> {
        let pins = self.catalog.snapshot().table_pins();
        let mut repins = Vec::new();
        for (path, pinned) in pins {
            let table = self.storage.table(&path)?;
            // Most tables end at their pin; only those with a later commit are examined.
            if !table.has_commits_after(pinned).await? {
                continue;
            }
            let latest = table.latest_version().await?;
            tracing::warn!(table = %path, pinned, latest, "undoing table commits that never became visible");
            repins.push((path, table.restore(pinned).await?));
        }
        if repins.is_empty() {
            return Ok(());
        }
        self.catalog
            .commit(|state| {
                for db in state.databases.values_mut() {
                    for schema in db.schemas.values_mut() {
                        for relation in schema.relations.values_mut() {
                            if let tributary_catalog::Relation::Table(table) = relation
                                && let Some((_, version)) =
                                    repins.iter().find(|(p, _)| *p == table.path)
                            {
                                table.version = *version;
                            }
                        }
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}
