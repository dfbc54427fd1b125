//! What depends on DataFusion's and Arrow's texts and operator names, in one place: the
//! mapping of their errors to ours (whose SQLSTATE the wire picks), and the operators a
//! streaming pipeline may rerun batch by batch. DataFusion reports most planning problems as
//! free text, so a DataFusion upgrade that rewords one would silently change a SQLSTATE; the
//! tests here produce each error and plan each operator with DataFusion itself, so such an
//! upgrade fails them instead.

use datafusion::error::DataFusionError;

use crate::error::{DataErrorKind, Error};

/// The physical operators that pass rows through without keeping state across them: a plan
/// made only of these over the stream input can run again on each batch of the input.
pub const ROW_BY_ROW_OPERATORS: &[&str] = &[
    "ProjectionExec",
    "FilterExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "RepartitionExec",
    "GlobalLimitExec",
    "LocalLimitExec",
];

impl From<arrow::error::ArrowError> for Error {
    fn from(err: arrow::error::ArrowError) -> Self {
        classify_arrow(&err)
    }
}

impl From<DataFusionError> for Error {
    fn from(err: DataFusionError) -> Self {
        classify(err)
    }
}

/// Sorts DataFusion's errors by whose fault they are. DataFusion reports most planning
/// problems as free text, so the text is inspected where no structured kind exists.
fn classify(err: DataFusionError) -> Error {
    // Out of memory, however deep the operators wrapped it (a sort's merge under a repartition
    // shares its error).
    if let DataFusionError::ResourcesExhausted(_) = err.find_root() {
        return Error::ResourcesExhausted(strip_df_prefix(&err.to_string()));
    }
    match err {
        DataFusionError::Context(_, inner) => classify(*inner),
        DataFusionError::Shared(inner) => classify_text(inner.to_string()),
        DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => classify_text(other.to_string()),
        },
        DataFusionError::SQL(parser_error, _) => Error::from(*parser_error),
        DataFusionError::SchemaError(schema_error, _) => {
            let text = schema_error.to_string();
            match *schema_error {
                datafusion::common::SchemaError::FieldNotFound { field, .. } => {
                    Error::UndefinedColumn(format!("column \"{}\" does not exist", field.name))
                }
                _ => Error::InvalidStatement(strip_df_prefix(&text)),
            }
        }
        DataFusionError::NotImplemented(message) => Error::NotSupported(message),
        DataFusionError::ResourcesExhausted(message) => Error::ResourcesExhausted(message),
        DataFusionError::ArrowError(arrow_error, _) => classify_arrow(&arrow_error),
        DataFusionError::Internal(message) => Error::Internal(message),
        other => classify_text(other.to_string()),
    }
}

fn classify_arrow(err: &arrow::error::ArrowError) -> Error {
    use arrow::error::ArrowError as A;
    match err {
        A::DivideByZero => Error::data(DataErrorKind::DivisionByZero, "division by zero"),
        A::ArithmeticOverflow(message) => {
            Error::data(DataErrorKind::NumericOutOfRange, message.clone())
        }
        A::CastError(message) | A::ParseError(message) => classify_cast(message),
        A::ExternalError(inner) => match inner.downcast_ref::<DataFusionError>() {
            Some(df) => classify_text(df.to_string()),
            None => classify_text(inner.to_string()),
        },
        other => Error::data(DataErrorKind::Other, other.to_string()),
    }
}

fn classify_cast(message: &str) -> Error {
    let lower = message.to_ascii_lowercase();
    let kind = if lower.contains("overflow")
        || lower.contains("out of range")
        || lower.contains("too large")
    {
        DataErrorKind::NumericOutOfRange
    } else if lower.contains("date") || lower.contains("timestamp") || lower.contains("time") {
        DataErrorKind::InvalidDatetime
    } else {
        DataErrorKind::InvalidText
    };
    Error::data(kind, message.to_string())
}

fn strip_df_prefix(text: &str) -> String {
    const PREFIXES: [&str; 7] = [
        "Error during planning: ",
        "Execution error: ",
        "Schema error: ",
        "Optimizer rule '",
        "External error: ",
        "Arrow error: ",
        "This feature is not implemented: ",
    ];
    let mut text = text.trim();
    loop {
        let before = text;
        for prefix in PREFIXES {
            if let Some(rest) = text.strip_prefix(prefix) {
                text = rest;
            }
        }
        if before == text {
            return text.to_string();
        }
    }
}

fn classify_text(text: String) -> Error {
    let message = strip_df_prefix(&text);
    let lower = message.to_ascii_lowercase();
    if lower.contains("divide by zero") || lower.contains("division by zero") {
        return Error::data(DataErrorKind::DivisionByZero, "division by zero");
    }
    if let Some(name) = table_not_found_name(&message) {
        return Error::UndefinedTable(name);
    }
    if lower.contains("no field named") || lower.contains("column") && lower.contains("not found") {
        return Error::UndefinedColumn(message);
    }
    if lower.contains("invalid function") || lower.contains("no function matches") {
        return Error::UndefinedFunction(message);
    }
    if lower.contains("cast error")
        || lower.contains("cannot cast")
        || lower.contains("parser error")
    {
        return classify_cast(&message);
    }
    if lower.contains("overflow") {
        return Error::data(DataErrorKind::NumericOutOfRange, message);
    }
    if lower.contains("not implemented") || lower.contains("unsupported") {
        return Error::NotSupported(message);
    }
    Error::InvalidStatement(message)
}

/// Extracts the name from DataFusion's "table 'x' not found".
fn table_not_found_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("table '")?;
    let name = rest.strip_suffix("' not found")?;
    // Strip the database part of a fully qualified name: users wrote schema.table at most.
    let parts: Vec<&str> = name.split('.').collect();
    Some(match parts.as_slice() {
        [_, schema, table] if *schema == "public" => table.to_string(),
        [_, schema, table] => format!("{schema}.{table}"),
        _ => name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::prelude::SessionContext;

    use super::*;

    fn check(err: DataFusionError, expected: &str) {
        assert_eq!(format!("{:?}", Error::from(err)), expected);
    }

    #[test]
    fn out_of_memory_is_found_under_its_wrappers() {
        let sort = DataFusionError::ResourcesExhausted("Failed to allocate 9.2 MB".into())
            .context("Not enough memory to continue external sort");
        let shared = DataFusionError::Shared(Arc::new(sort));
        let err = Error::from(shared);
        assert!(
            matches!(&err, Error::ResourcesExhausted(message) if message.contains("external sort") && message.contains("9.2 MB")),
            "{err:?}"
        );
    }

    #[test]
    fn classifies_datafusion_errors() {
        check(
            DataFusionError::Plan("table 'dev.public.nope' not found".into()),
            "UndefinedTable(\"nope\")",
        );
        check(
            DataFusionError::Execution("Divide by zero error".into()),
            "Data { kind: DivisionByZero, message: \"division by zero\" }",
        );
        check(
            DataFusionError::NotImplemented("UNNEST of maps".into()),
            "NotSupported(\"UNNEST of maps\")",
        );
    }

    /// A context with one table `t (a bigint)` of three rows.
    fn context() -> SessionContext {
        let context = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])
            .expect("batch");
        context.register_batch("t", batch).expect("register");
        context
    }

    /// The error DataFusion itself gives for `sql`, planned and run, mapped to ours.
    async fn error_of(sql: &str) -> Error {
        let context = context();
        let result = async { context.sql(sql).await?.collect().await }.await;
        Error::from(result.expect_err(sql))
    }

    #[tokio::test]
    async fn datafusion_errors_keep_their_meaning() {
        assert!(
            matches!(error_of("SELECT * FROM nope").await, Error::UndefinedTable(name) if name == "nope")
        );
        assert!(matches!(
            error_of("SELECT b FROM t").await,
            Error::UndefinedColumn(message) if message.starts_with("No field named b.")
        ));
        assert!(matches!(
            error_of("SELECT a / 0 FROM t").await,
            Error::Data {
                kind: DataErrorKind::DivisionByZero,
                ..
            }
        ));
        assert!(matches!(
            error_of("SELECT CAST('x' AS INT)").await,
            Error::Data {
                kind: DataErrorKind::InvalidText,
                ..
            }
        ));
        assert!(matches!(
            error_of("SELECT CAST('2024-13-45' AS DATE)").await,
            Error::Data {
                kind: DataErrorKind::InvalidDatetime,
                ..
            }
        ));
        assert!(matches!(
            error_of("SELECT no_such_function(a) FROM t").await,
            Error::UndefinedFunction(_)
        ));
        assert!(matches!(
            error_of("SELECT a FROM t GROUP BY").await,
            Error::Syntax(_)
        ));
    }

    /// The operator names of `sql`'s physical plan.
    async fn operators(sql: &str) -> Vec<String> {
        let context = context();
        let plan = context
            .sql(sql)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let mut names = Vec::new();
        plan.apply(|node| {
            names.push(node.name().to_string());
            Ok(TreeNodeRecursion::Continue)
        })
        .expect("walk");
        names
    }

    #[tokio::test]
    async fn row_by_row_operators_are_datafusions_names() {
        let projection = operators("SELECT a + 1 AS b FROM t WHERE a > 1").await;
        for name in ["ProjectionExec", "FilterExec"] {
            assert!(
                projection.iter().any(|n| n == name),
                "{name} in {projection:?}"
            );
        }
        for name in &projection {
            assert!(
                ROW_BY_ROW_OPERATORS.contains(&name.as_str()) || name == "DataSourceExec",
                "{name} is neither a row-by-row operator nor the source"
            );
        }
        let aggregate = operators("SELECT count(*) FROM t GROUP BY a").await;
        assert!(
            aggregate
                .iter()
                .any(|n| !ROW_BY_ROW_OPERATORS.contains(&n.as_str()) && n != "DataSourceExec"),
            "an aggregate keeps state: {aggregate:?}"
        );
    }
}
