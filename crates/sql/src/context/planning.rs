//! A session's DataFusion context: its catalogs, pg_catalog and Redshift's functions.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::functions;

use crate::{Error, Result};

/// Builds a session's DataFusion context: our catalogs, pg_catalog, and Redshift functions.
/// Its runtime is the server's with the session's own memory pool over the server's.
pub(super) fn new_context(
    catalogs: &SessionCatalogs,
    runtime: Arc<RuntimeEnv>,
    database: &str,
    user: &str,
    clock: &functions::StatementClock,
    case_sensitive: &tributary_engine::partiql::CaseSensitivity,
) -> Result<Arc<SessionContext>> {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(database, "public")
        .with_create_default_catalog_and_schema(false)
        .with_information_schema(true);
    // Scans report SUPER columns without their field marker; the marker only steers
    // planning, so the physical schema check must not compare it.
    config
        .options_mut()
        .execution
        .skip_physical_aggregate_schema_check = true;
    let builder = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_catalog_list(Arc::new(catalogs.clone()));
    let builder = tributary_engine::decimal::configure(builder);
    let builder = tributary_engine::conjunction::configure(builder);
    let state = tributary_engine::partiql::configure(builder, case_sensitive.clone()).build();
    let context = Arc::new(SessionContext::new_with_state(state));
    catalogs.set_context(&context);
    datafusion_pg_catalog::pg_catalog::setup_pg_catalog(&context, database, EmptyContextProvider)
        .map_err(|e| Error::Internal(format!("pg_catalog setup failed: {e}")))?;
    functions::register(&context, user, catalogs.pinned().namespace, clock);
    tributary_engine::partiql::register(&context);
    Ok(context)
}
