//! SQLSTATE codes: the only place where Tributary's errors meet Postgres's error codes.

use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError};
use tributary_sql::{DataErrorKind, Error};

/// The SQLSTATE code of an error, following Postgres (and so Redshift) classes.
pub fn sqlstate(err: &Error) -> &'static str {
    match err {
        Error::Syntax(_) => "42601",
        Error::UndefinedTable(_) => "42P01",
        Error::UndefinedColumn(_) => "42703",
        Error::UndefinedSchema(_) => "3F000",
        Error::UndefinedDatabase(_) => "3D000",
        Error::UndefinedFunction(_) => "42883",
        Error::UndefinedObject(_) => "42704",
        Error::Duplicate {
            kind: "database", ..
        } => "42P04",
        Error::Duplicate { kind: "schema", .. } => "42P06",
        Error::Duplicate {
            kind: "procedure", ..
        } => "42723",
        Error::Duplicate { kind: "column", .. } => "42701",
        Error::Duplicate {
            kind: "user" | "group" | "datashare",
            ..
        } => "42710",
        Error::Duplicate { .. } => "42P07",
        Error::WrongObjectType(_) => "42809",
        Error::NotNull { .. } => "23502",
        Error::Data { kind, .. } => match kind {
            DataErrorKind::InvalidText => "22P02",
            DataErrorKind::NumericOutOfRange => "22003",
            DataErrorKind::DivisionByZero => "22012",
            DataErrorKind::InvalidDatetime => "22007",
            DataErrorKind::StringTooLong => "22001",
            DataErrorKind::Other => "22000",
        },
        Error::InvalidStatement(_) => "42000",
        Error::DependentObjects(_) => "2BP01",
        Error::NotSupported(_) => "0A000",
        Error::InvalidParameterValue(_) => "22023",
        Error::SerializationFailure(_) => "40001",
        Error::Deadlock(_) => "40P01",
        Error::Cardinality(_) => "21000",
        Error::UndefinedFile(_) => "58P01",
        // fdw_error: the external source (a stream) failed or refused.
        Error::Stream(_) => "HV000",
        Error::InFailedTransaction => "25P02",
        Error::ActiveTransaction(_) => "25001",
        Error::InvalidAuthorization(_) => "28000",
        Error::PermissionDenied(_) => "42501",
        Error::Storage(_) => "58030",
        Error::ResourcesExhausted(_) => "53000",
        Error::Raised(_) => "P0001",
        Error::InProcedure { source, .. } => sqlstate(source),
        Error::Internal(_) => "XX000",
    }
}

/// The error as the client receives it.
pub fn error_info(err: &Error) -> ErrorInfo {
    let mut info = ErrorInfo::new(
        "ERROR".to_string(),
        sqlstate(err).to_string(),
        err.to_string(),
    );
    info.where_context = err.context().map(str::to_string);
    info
}

pub fn to_pgwire(err: Error) -> PgWireError {
    if matches!(err, Error::Internal(_) | Error::Storage(_)) {
        tracing::error!(%err, "statement failed");
    }
    PgWireError::UserError(Box::new(error_info(&err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(sqlstate(&Error::Syntax("x".into())), "42601");
        assert_eq!(sqlstate(&Error::UndefinedTable("t".into())), "42P01");
        assert_eq!(
            sqlstate(&Error::NotNull {
                table: "t".into(),
                column: "c".into()
            }),
            "23502"
        );
        assert_eq!(
            sqlstate(&Error::Data {
                kind: DataErrorKind::StringTooLong,
                message: String::new()
            }),
            "22001"
        );
        assert_eq!(sqlstate(&Error::NotSupported("x".into())), "0A000");
    }
}
