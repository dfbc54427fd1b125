//! What the streaming layer runs on. The engine's composition root, above this crate, gives
//! it: the store, the metrics, the streaming state, and private sessions in which rounds run
//! their transactions and pipelines plan their queries.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Query;
use tributary_engine::Result;
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::metrics::Metrics;
use tributary_engine::store::Store;

use crate::Streams;

/// The engine, as the streaming layer sees it.
pub trait Host: std::fmt::Debug + Send + Sync + 'static {
    /// The storage root and catalog.
    fn store(&self) -> &Arc<Store>;
    /// Settings, stream clients, counters, history, auto-refresh tasks.
    fn streams(&self) -> &Streams;
    fn metrics(&self) -> &Metrics;
    /// Opens a private session of `owner` on `database`.
    fn session(self: Arc<Self>, owner: &str, database: &str) -> Result<Box<dyn PrivateSession>>;
}

/// A session of a view's owner, private to the streaming layer.
#[async_trait]
pub trait PrivateSession: Send + Sync {
    /// Its catalogs: a round's transaction runs there.
    fn catalogs(&self) -> &SessionCatalogs;
    /// Its DataFusion context: a pipeline's plans run there.
    fn context(&self) -> &Arc<SessionContext>;
    /// Plans `query` as a client's query is planned (Redshift's rewrites first), with the
    /// Postgres names of its output columns.
    async fn plan_query(&self, query: &Query) -> Result<(LogicalPlan, SchemaRef)>;
}
