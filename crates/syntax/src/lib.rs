//! Redshift's SQL text, before anything is planned: the dialect and its token pre-passes
//! ([`dialect`]), the statements sqlparser lacks ([`extension`], [`access`]), the plpgsql
//! parser ([`plpgsql`]), and the rewrites of parsed statements ([`rewrite`], [`partiql`]).
//!
//! Nothing here knows the catalog, DataFusion's planner or a session: a rewrite that needs to
//! know which relations exist takes a function that answers it. This is the bottom layer of
//! the SQL stack; every crate above parses through it.

pub mod access;
pub mod dialect;
pub mod extension;
pub mod functions;
pub mod names;
pub mod partiql;
pub mod plpgsql;
pub mod rewrite;

pub use extension::ExtStatement;
pub use sqlparser;

/// A parsed statement: one sqlparser parses, or one of Redshift's it lacks.
// Nearly every statement is sqlparser's, which is large itself; boxing it would cost an
// allocation for each to save space only for the few of ours.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Sql(sqlparser::ast::Statement),
    Ext(ExtStatement),
}

impl Statement {
    /// The sqlparser statement, if this is one.
    pub fn into_sql(self) -> Option<sqlparser::ast::Statement> {
        match self {
            Statement::Sql(statement) => Some(statement),
            Statement::Ext(_) => None,
        }
    }
}

impl std::fmt::Display for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Statement::Sql(statement) => statement.fmt(f),
            Statement::Ext(statement) => statement.fmt(f),
        }
    }
}

impl From<sqlparser::ast::Statement> for Statement {
    fn from(statement: sqlparser::ast::Statement) -> Self {
        Statement::Sql(statement)
    }
}

/// What is wrong with a statement's text or shape. The SQL layer turns each kind into its own
/// error of the same name and message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text does not parse.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The statement is valid Redshift but Tributary does not do it (yet).
    #[error("{0}")]
    NotSupported(String),
    /// Something else is wrong with the statement (a semantic error).
    #[error("{0}")]
    InvalidStatement(String),
    /// A bug in Tributary.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
