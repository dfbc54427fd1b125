//! Planning outside a session: the context that evaluates column DEFAULT expressions, and the
//! planning of stored statement text (a view's definition) with a session's state.

use std::sync::OnceLock;

use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use tributary_syntax::Statement;
use tributary_syntax::dialect::parse_statements;

use crate::functions;

/// A context for evaluating column DEFAULT expressions: the same functions as sessions, no
/// tables.
pub fn expression_context() -> &'static SessionContext {
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
pub async fn plan_sql(state: &SessionState, sql: &str) -> datafusion::error::Result<LogicalPlan> {
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
