//! The engine as the layers below see it: the catalogs' extensions (Redshift's system views and
//! the databases made from datashares), and the host the streaming layer runs on, with the
//! private sessions in which it plans a view's query.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, SchemaProvider};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Query, Statement as SqlStatement};
use tributary_engine::catalog_list::{Extensions, SessionCatalogs};
use tributary_engine::metrics::Metrics;
use tributary_engine::store::Store;
use tributary_streaming::{Host, PrivateSession, Streams};

use crate::Result;
use crate::classify::output_schema;
use crate::context::Context;
use crate::engine::Engine;

/// The features a session's catalogs show: Redshift's system views and the databases made
/// from datashares.
impl Extensions for Engine {
    fn system_schema(
        self: Arc<Self>,
        catalogs: &SessionCatalogs,
        database: &str,
        registered: Option<Arc<dyn SchemaProvider>>,
    ) -> Arc<dyn SchemaProvider> {
        Arc::new(crate::system::SystemSchema::new(
            self,
            catalogs.clone(),
            database.to_string(),
            registered,
        ))
    }

    fn shared_catalog(
        self: Arc<Self>,
        catalogs: &SessionCatalogs,
        database: &str,
    ) -> Arc<dyn CatalogProvider> {
        Arc::new(crate::sharing::catalog::SharedCatalog {
            catalogs: catalogs.clone(),
            database: database.to_string(),
        })
    }

    fn observe_commit(&self, took: Duration) {
        self.metrics.observe_commit(took);
    }
}

/// What the streaming layer runs on.
impl Host for Engine {
    fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn streams(&self) -> &Streams {
        &self.streams
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn session(self: Arc<Self>, owner: &str, database: &str) -> Result<Box<dyn PrivateSession>> {
        Ok(Box::new(Context::new(self, owner, database)?))
    }
}

/// A view owner's session in which the streaming layer plans and runs a view's query.
#[async_trait::async_trait]
impl PrivateSession for Context {
    fn catalogs(&self) -> &SessionCatalogs {
        Context::catalogs(self)
    }

    fn context(&self) -> &Arc<SessionContext> {
        Context::context(self)
    }

    async fn plan_query(&self, query: &Query) -> Result<(LogicalPlan, SchemaRef)> {
        let statement = self.rewrite(SqlStatement::Query(Box::new(query.clone())))?;
        let plan = self.plan(&statement).await?;
        let named = output_schema(&statement, &plan);
        Ok((plan, named))
    }
}
