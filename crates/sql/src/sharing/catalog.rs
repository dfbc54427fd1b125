//! A database made from a datashare, as DataFusion sees it: the shared schemas and tables of
//! the producer state the transaction pinned.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use tributary_catalog::{CatalogState, Database, Datashare, Relation, SharedDatabase};
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::producer::Producer;
use tributary_engine::table::TributaryTable;

use crate::Error;

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
