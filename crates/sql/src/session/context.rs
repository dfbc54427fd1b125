//! A session's DataFusion context (its catalogs, pg_catalog and Redshift's functions), and
//! the planning of statement text outside a session.

use std::sync::{Arc, OnceLock};

use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use tributary_syntax::Statement;
use tributary_syntax::dialect::parse_statements;

use crate::catalog_list::SessionCatalogs;
use crate::{Error, Result};
use tributary_engine::functions;

/// Builds a session's DataFusion context: our catalogs, pg_catalog, and Redshift functions.
pub(super) fn new_context(
    catalogs: &SessionCatalogs,
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
        .with_runtime_env(catalogs.engine().runtime_env())
        .with_default_features()
        .with_catalog_list(Arc::new(catalogs.clone()));
    let state = tributary_engine::partiql::configure(builder, case_sensitive.clone()).build();
    let context = Arc::new(SessionContext::new_with_state(state));
    catalogs.set_context(&context);
    datafusion_pg_catalog::pg_catalog::setup_pg_catalog(&context, database, EmptyContextProvider)
        .map_err(|e| Error::Internal(format!("pg_catalog setup failed: {e}")))?;
    functions::register(&context, user, catalogs.pinned().namespace, clock);
    tributary_engine::partiql::register(&context);
    Ok(context)
}

/// A context for evaluating column DEFAULT expressions: the same functions as sessions, no
/// tables.
pub(crate) fn expression_context() -> &'static SessionContext {
    static CONTEXT: OnceLock<SessionContext> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let context = SessionContext::new();
        functions::register(
            &context,
            "admin",
            uuid::Uuid::nil(),
            &functions::StatementClock::default(),
        );
        context
    })
}

/// Plans SQL text (a view's definition) with the session's state.
pub(crate) async fn plan_sql(
    state: &SessionState,
    sql: &str,
) -> datafusion::error::Result<LogicalPlan> {
    let mut statements = parse_statements(sql)
        .map_err(|e| datafusion::error::DataFusionError::SQL(Box::new(e), None))?;
    let statement = statements
        .pop()
        .ok_or_else(|| datafusion::error::DataFusionError::Plan("empty view definition".into()))?;
    let Statement::Sql(mut statement) = statement else {
        return Err(datafusion::error::DataFusionError::Plan(
            "a view's definition is not a query".into(),
        ));
    };
    tributary_syntax::partiql::rewrite(&mut statement, false)
        .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
    state
        .statement_to_plan(DfStatement::Statement(Box::new(statement)))
        .await
}
