//! Values in the interpreter: literals of variables' values, RAISE's message format, rows
//! collected from a statement, and errors that end a procedure.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{Expr, Value};
use futures::TryStreamExt;
use tributary_catalog::SqlType;
use tributary_syntax::Statement as Parsed;

use crate::output::Output;
use crate::procedure::runner::Runner;
use tributary_engine::error::{Error, Result};

pub(super) fn null_not_allowed(variable: &str) -> Error {
    Error::data(
        tributary_engine::error::DataErrorKind::Other,
        format!("null value cannot be assigned to variable \"{variable}\" declared NOT NULL"),
    )
}

/// What a statement tells the statements around it.
pub(super) enum Flow {
    Next,
    Exit(Option<String>),
    Continue(Option<String>),
    Return,
}

pub(super) enum LoopControl {
    Continue,
    Break,
    Propagate(Flow),
}

/// Errors an EXCEPTION block does not catch: the transaction machinery's own.
pub(super) fn is_fatal(err: &Error) -> bool {
    matches!(err.root(), Error::Internal(_) | Error::Storage(_))
}

/// Errors are not Clone (they may wrap sources); a re-raise keeps the kind and message.
pub(super) fn clone_error(err: &Error) -> Error {
    match err.root() {
        Error::Raised(message) => Error::Raised(message.clone()),
        Error::Data { kind, message } => Error::Data {
            kind: *kind,
            message: message.clone(),
        },
        Error::UndefinedTable(name) => Error::UndefinedTable(name.clone()),
        Error::UndefinedColumn(m) => Error::UndefinedColumn(m.clone()),
        Error::NotNull { table, column } => Error::NotNull {
            table: table.clone(),
            column: column.clone(),
        },
        Error::Syntax(m) => Error::Syntax(m.clone()),
        other => Error::Raised(other.to_string()),
    }
}

/// `%` placeholders take the arguments in order; `%%` is a percent sign.
pub(super) fn format_message(format: &str, values: &[String]) -> Result<String> {
    let mut out = String::new();
    let mut values = values.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        match values.next() {
            Some(value) => out.push_str(value),
            None => {
                return Err(Error::Syntax(
                    "too few parameters specified for RAISE".into(),
                ));
            }
        }
    }
    if values.next().is_some() {
        return Err(Error::Syntax(
            "too many parameters specified for RAISE".into(),
        ));
    }
    Ok(out)
}

pub(super) fn string_literal(text: &str) -> Expr {
    Expr::Value(Value::SingleQuotedString(text.to_string()).into())
}

/// A value as a SQL literal of its type: `CAST('text' AS type)`, `JSON_PARSE('...')` for
/// SUPER, `CAST(NULL AS type)`.
pub(super) fn literal(value: &ScalarValue, type_sql: Option<&str>) -> Result<Expr> {
    let type_sql = match type_sql {
        Some(t) => t.to_string(),
        None => SqlType::from_arrow(&value.data_type())
            .map(|t| t.cast_name())
            .unwrap_or_else(|| "varchar(65535)".into()),
    };
    let sql = match text(value)? {
        None => format!("CAST(NULL AS {type_sql})"),
        Some(text) if type_sql.eq_ignore_ascii_case("super") => {
            format!("JSON_PARSE('{}')", text.replace('\'', "''"))
        }
        Some(text) if matches!(value, ScalarValue::Binary(_) | ScalarValue::LargeBinary(_)) => {
            format!("TO_VARBYTE('{text}', 'hex')")
        }
        Some(text) => format!("CAST('{}' AS {type_sql})", text.replace('\'', "''")),
    };
    let dialect = tributary_syntax::dialect::TributaryDialect::default();
    datafusion::sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::Internal(format!("procedure variable literal {sql}: {e}")))
}

/// A value's text (None for NULL); bytes as hex.
pub(super) fn text(value: &ScalarValue) -> Result<Option<String>> {
    if value.is_null() {
        return Ok(None);
    }
    let array = value.to_array()?;
    if let Some(bytes) = array.as_binary_opt::<i32>() {
        return Ok(Some(
            bytes.value(0).iter().map(|b| format!("{b:02x}")).collect(),
        ));
    }
    let text = arrow::compute::cast(&array, &DataType::Utf8)?;
    Ok(Some(text.as_string::<i32>().value(0).to_string()))
}

/// Casts a value to a declared type the way an assignment does.
pub(super) fn cast_to(value: &ScalarValue, type_sql: &str) -> Result<ScalarValue> {
    let target = super::super::resolve_type(type_sql)?.to_arrow();
    if value.data_type() == target || value.is_null() && value.data_type() == DataType::Null {
        return Ok(if value.is_null() {
            ScalarValue::try_from(&target).unwrap_or(ScalarValue::Null)
        } else {
            value.clone()
        });
    }
    Ok(value.cast_to(&target)?)
}

/// Runs a statement and collects its rows.
pub(super) async fn collect_rows(
    session: &mut dyn Runner,
    statement: Parsed,
) -> Result<Vec<Vec<(String, ScalarValue, String)>>> {
    match session.run(statement).await? {
        Output::Rows { schema, stream } => {
            let batches: Vec<RecordBatch> = stream.try_collect().await?;
            batch_rows(&schema, &batches)
        }
        _ => Ok(vec![]),
    }
}

/// The first row of a query (not substituted), or None.
pub(super) async fn select_row(
    session: &mut dyn Runner,
    sql: &str,
) -> Result<Option<Vec<(String, ScalarValue, String)>>> {
    let mut statements = session.context().parse(sql)?;
    let statement = statements
        .pop()
        .ok_or_else(|| Error::Internal("empty argument query".into()))?;
    Ok(collect_rows(session, statement).await?.into_iter().next())
}

/// Rows as (column, value, type as SQL text) lists.
pub(super) fn batch_rows(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<Vec<(String, ScalarValue, String)>>> {
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|field| {
            if tributary_engine::partiql::is_super(field) {
                "super".to_string()
            } else {
                SqlType::from_arrow(field.data_type())
                    .map(|t| t.cast_name())
                    .unwrap_or_else(|| "varchar(65535)".into())
            }
        })
        .collect();
    let mut rows = Vec::new();
    for batch in batches {
        for i in 0..batch.num_rows() {
            let mut row = Vec::with_capacity(batch.num_columns());
            for (c, column) in batch.columns().iter().enumerate() {
                let value = ScalarValue::try_from_array(column.as_ref(), i)?;
                row.push((
                    schema.field(c).name().to_lowercase(),
                    value,
                    types[c].clone(),
                ));
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A statement for error context, cut to a readable length.
pub(super) fn shorten(sql: &str) -> String {
    let sql: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if sql.chars().count() > 200 {
        format!("{}...", sql.chars().take(200).collect::<String>())
    } else {
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_raise_messages() {
        let values = vec!["1".to_string(), "x".to_string()];
        assert_eq!(
            format_message("a % b % 100%%", &values).unwrap(),
            "a 1 b x 100%"
        );
        assert!(format_message("%", &[]).is_err());
        assert!(format_message("none", &values).is_err());
    }

    #[test]
    fn literals_keep_types() {
        let expr = literal(&ScalarValue::Int32(Some(5)), Some("integer")).unwrap();
        assert_eq!(expr.to_string(), "CAST('5' AS INTEGER)");
        let expr = literal(&ScalarValue::Utf8(Some("it's".into())), None).unwrap();
        assert_eq!(expr.to_string(), "CAST('it''s' AS VARCHAR(65535))");
        let expr = literal(&ScalarValue::Utf8(None), Some("super")).unwrap();
        assert_eq!(expr.to_string(), "CAST(NULL AS super)");
    }
}
