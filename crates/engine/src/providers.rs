//! DataFusion's view of a session's catalogs: databases are DataFusion catalogs, schemas their
//! schemas, and every lookup reads the catalog version pinned for the running statement. A
//! table resolves to its [`TributaryTable`], a view to its planned definition.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::col;
use tributary_catalog::Relation;

use crate::catalog_list::{SYSTEM_SCHEMA, SessionCatalogs, TEMP_SCHEMA};
use crate::table::TributaryTable;

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
            return Some(self.extensions().clone().shared_catalog(self, name));
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
        names.extend(self.catalogs.registered_names());
        names.push(TEMP_SCHEMA.to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == TEMP_SCHEMA {
            return Some(self.catalogs.temp().clone());
        }
        if name == SYSTEM_SCHEMA {
            let registered = self.catalogs.registered_schema(SYSTEM_SCHEMA);
            return Some(self.catalogs.extensions().clone().system_schema(
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
        Ok(self.catalogs.register_schema(name, schema))
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
                let context = self.catalogs.context();
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
