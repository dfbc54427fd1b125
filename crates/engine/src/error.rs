//! Errors of the SQL layers. Each variant names whose fault it is; the wire crate maps them to
//! SQLSTATE codes (this crate never speaks of the protocol). DataFusion's and Arrow's errors
//! convert through [`crate::datafusion_text`].

/// Kinds of bad data, each with its own SQLSTATE class 22 code at the wire edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataErrorKind {
    /// Text that does not parse as the target type (22P02).
    InvalidText,
    /// A number out of the target type's range (22003).
    NumericOutOfRange,
    /// Division by zero (22012).
    DivisionByZero,
    /// A date or time that does not parse (22007).
    InvalidDatetime,
    /// A string longer than its column (22001).
    StringTooLong,
    /// Any other data exception (22000).
    Other,
}

/// What went wrong while running a statement.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement does not parse.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A table or view the user named does not exist.
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    /// A column the user named does not exist.
    #[error("{0}")]
    UndefinedColumn(String),
    /// A schema the user named does not exist.
    #[error("schema \"{0}\" does not exist")]
    UndefinedSchema(String),
    /// A database the user named does not exist.
    #[error("database \"{0}\" does not exist")]
    UndefinedDatabase(String),
    /// A function the user called does not exist or takes other arguments.
    #[error("{0}")]
    UndefinedFunction(String),
    /// A setting, type or other named object the user named does not exist.
    #[error("{0}")]
    UndefinedObject(String),
    /// The user tried to create something that exists.
    #[error("{kind} \"{name}\" already exists")]
    Duplicate { kind: &'static str, name: String },
    /// The user named an object of the wrong kind (a view where a table is needed).
    #[error("{0}")]
    WrongObjectType(String),
    /// A NOT NULL column received a null.
    #[error(
        "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
    )]
    NotNull { table: String, column: String },
    /// A value does not fit its type or the operation.
    #[error("{message}")]
    Data {
        kind: DataErrorKind,
        message: String,
    },
    /// Something else is wrong with the statement (a semantic error).
    #[error("{0}")]
    InvalidStatement(String),
    /// Dropping something that others depend on.
    #[error("{0}")]
    DependentObjects(String),
    /// The statement is valid Redshift but Tributary does not do it (yet).
    #[error("{0}")]
    NotSupported(String),
    /// A setting got a value it does not accept.
    #[error("{0}")]
    InvalidParameterValue(String),
    /// A concurrent writer won; the statement can be retried.
    #[error("{0}")]
    SerializationFailure(String),
    /// A file or location the statement names does not exist or is empty.
    #[error("{0}")]
    UndefinedFile(String),
    /// A stream source could not be read (unreachable, missing stream, refused).
    #[error("{0}")]
    Stream(String),
    /// A row was matched more than once where only one match is allowed (MERGE).
    #[error("{0}")]
    Cardinality(String),
    /// Two transactions wait for each other's table locks; this one was chosen to fail.
    #[error("{0}")]
    Deadlock(String),
    /// A statement other than COMMIT or ROLLBACK in a transaction that already failed.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,
    /// A statement that cannot run inside a transaction block (CREATE DATABASE, VACUUM).
    #[error("{0} cannot run inside a transaction block")]
    ActiveTransaction(String),
    /// The user lacks a privilege the statement needs.
    #[error("permission denied for {0}")]
    PermissionDenied(String),
    /// A password or user that does not check out.
    #[error("{0}")]
    InvalidAuthorization(String),
    /// The catalog or table storage failed underneath.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The statement ran out of a bounded resource.
    #[error("{0}")]
    ResourcesExhausted(String),
    /// `RAISE EXCEPTION` in a stored procedure.
    #[error("{0}")]
    Raised(String),
    /// An error inside a stored procedure, with where it happened (Postgres's CONTEXT).
    #[error("{source}")]
    InProcedure {
        source: Box<Error>,
        /// One line per procedure frame, innermost first.
        context: String,
    },
    /// A bug in Tributary.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error itself, without the procedure frames it passed through.
    pub fn root(&self) -> &Error {
        match self {
            Error::InProcedure { source, .. } => source.root(),
            other => other,
        }
    }

    /// Where inside stored procedures the error happened, innermost first.
    pub fn context(&self) -> Option<&str> {
        match self {
            Error::InProcedure { context, .. } => Some(context),
            _ => None,
        }
    }

    pub fn data(kind: DataErrorKind, message: impl Into<String>) -> Self {
        Error::Data {
            kind,
            message: message.into(),
        }
    }
}

impl From<tributary_catalog::Error> for Error {
    fn from(err: tributary_catalog::Error) -> Self {
        use tributary_catalog::Error as C;
        match err {
            C::NotFound {
                kind: "database",
                name,
            } => Error::UndefinedDatabase(name),
            C::NotFound {
                kind: "schema",
                name,
            } => Error::UndefinedSchema(name),
            C::NotFound {
                kind: kind @ ("user" | "group" | "datashare"),
                name,
            } => Error::UndefinedObject(format!("{kind} \"{name}\" does not exist")),
            C::NotFound { name, .. } => Error::UndefinedTable(name),
            C::AlreadyExists { kind, name } => Error::Duplicate { kind, name },
            C::Invalid(message) => Error::InvalidStatement(message),
            C::Conflict => Error::SerializationFailure(C::Conflict.to_string()),
            other @ C::ConcurrentChange(_) => Error::SerializationFailure(other.to_string()),
            other @ (C::Storage(_) | C::Corrupt { .. }) => Error::Storage(other.to_string()),
            C::Internal(message) => Error::Internal(message),
        }
    }
}

impl From<tributary_storage::Error> for Error {
    fn from(err: tributary_storage::Error) -> Self {
        match err {
            tributary_storage::Error::Conflict { .. } => {
                Error::SerializationFailure(err.to_string())
            }
            // The memory pool could not give a write its room (53000).
            tributary_storage::Error::DataFusion(err)
                if matches!(
                    err.find_root(),
                    datafusion::error::DataFusionError::ResourcesExhausted(_)
                ) =>
            {
                Error::from(err)
            }
            other => Error::Storage(other.to_string()),
        }
    }
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for Error {
    fn from(err: datafusion::sql::sqlparser::parser::ParserError) -> Self {
        let message = err.to_string();
        Error::Syntax(
            message
                .strip_prefix("sql parser error: ")
                .unwrap_or(&message)
                .to_string(),
        )
    }
}

impl From<tributary_syntax::Error> for Error {
    fn from(err: tributary_syntax::Error) -> Self {
        use tributary_syntax::Error as S;
        match err {
            S::Syntax(message) => Error::Syntax(message),
            S::NotSupported(message) => Error::NotSupported(message),
            S::InvalidStatement(message) => Error::InvalidStatement(message),
            S::Internal(message) => Error::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write the memory pool cannot give room to is out of memory (53000), not a storage
    /// failure.
    #[test]
    fn a_write_without_room_in_the_pool_is_out_of_memory() {
        let full = datafusion::error::DataFusionError::ResourcesExhausted(
            "Failed to allocate additional 1024.0 KB for table write buffer".into(),
        );
        let err = Error::from(tributary_storage::Error::DataFusion(full));
        assert!(
            matches!(&err, Error::ResourcesExhausted(message) if message.contains("table write buffer")),
            "{err:?}"
        );
        let other = tributary_storage::Error::Internal("broken".into());
        assert!(matches!(Error::from(other), Error::Storage(_)));
    }
}
