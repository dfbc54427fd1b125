//! Bind parameters (`$1`, `$2`, ...) that DataFusion cannot bind itself.
//!
//! DataFusion binds parameters in a planned query. Two kinds of statement never reach that
//! point with their placeholders: table functions (`generate_series(1, $1)`) take their
//! arguments as values while the query is planned, and the statements Tributary runs itself
//! (CALL, UPDATE, DELETE, MERGE, DDL) are not planned by DataFusion at all. For those, the
//! bound values become literals in the statement before it runs, as a client library that
//! binds on its side would have written them.

use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::Expr as LogicalExpr;
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Statement, TableFactor, Value, VisitMut, VisitorMut,
    visit_expressions, visit_expressions_mut,
};
use datafusion::sql::unparser::Unparser;
use std::ops::ControlFlow;

use crate::{Error, Result};

/// The highest `$n` in a statement: how many parameters its client binds.
pub fn placeholder_count(statement: &Statement) -> usize {
    let mut count = 0;
    let _ = visit_expressions(statement, |expr| {
        if let Some(index) = placeholder_index(expr) {
            count = count.max(index);
        }
        ControlFlow::<()>::Continue(())
    });
    count
}

/// Replaces every placeholder of `statement` by the literal of its value.
pub fn bind_everywhere(statement: &mut Statement, params: &ParamValues) -> Result<()> {
    bind_in(statement, Some(params))
}

/// Replaces the placeholders in table functions' arguments by the literals of their values,
/// or by NULL without values (describing a prepared statement, whose values come later).
pub fn bind_table_functions(statement: &mut Statement, params: Option<&ParamValues>) -> Result<()> {
    let mut binder = TableFunctionBinder {
        params,
        error: None,
    };
    let _ = statement.visit(&mut binder);
    match binder.error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

struct TableFunctionBinder<'a> {
    params: Option<&'a ParamValues>,
    error: Option<Error>,
}

impl VisitorMut for TableFunctionBinder<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let arguments: Vec<&mut FunctionArg> = match factor {
            TableFactor::Table {
                args: Some(args), ..
            } => args.args.iter_mut().collect(),
            TableFactor::Function { args, .. } => args.iter_mut().collect(),
            TableFactor::TableFunction { expr, .. } => {
                return self.bind(expr);
            }
            _ => return ControlFlow::Continue(()),
        };
        for argument in arguments {
            let expr = match argument {
                FunctionArg::Named { arg, .. }
                | FunctionArg::ExprNamed { arg, .. }
                | FunctionArg::Unnamed(arg) => arg,
            };
            if let FunctionArgExpr::Expr(expr) = expr {
                self.bind(expr)?;
            }
        }
        ControlFlow::Continue(())
    }
}

impl TableFunctionBinder<'_> {
    fn bind(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match bind_in(expr, self.params) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                self.error = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}

/// Replaces the placeholders under `node` by literals of `params` (NULL without them).
fn bind_in<V: VisitMut>(node: &mut V, params: Option<&ParamValues>) -> Result<()> {
    let mut error = None;
    let _ = visit_expressions_mut(node, |expr| {
        let Some(index) = placeholder_index(expr) else {
            return ControlFlow::Continue(());
        };
        match literal(index, params) {
            Ok(literal) => {
                *expr = literal;
                ControlFlow::Continue(())
            }
            Err(err) => {
                error = Some(err);
                ControlFlow::Break(())
            }
        }
    });
    match error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn placeholder_index(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::Placeholder(name) => name.strip_prefix('$')?.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The SQL literal of parameter `$index`.
fn literal(index: usize, params: Option<&ParamValues>) -> Result<Expr> {
    let Some(params) = params else {
        return Ok(Expr::value(Value::Null));
    };
    let value = match params {
        ParamValues::List(values) => values.get(index.wrapping_sub(1)).map(|v| v.value.clone()),
        ParamValues::Map(values) => values.get(&format!("${index}")).map(|v| v.value.clone()),
    }
    .ok_or_else(|| Error::InvalidStatement(format!("there is no parameter ${index}")))?;
    if value.is_null() {
        return Ok(Expr::value(Value::Null));
    }
    let literal = match value {
        // Strings stay strings: Redshift's own string literal, never re-read as SQL text.
        ScalarValue::Utf8(Some(text))
        | ScalarValue::LargeUtf8(Some(text))
        | ScalarValue::Utf8View(Some(text)) => Expr::value(Value::SingleQuotedString(text)),
        other => Unparser::default()
            .expr_to_sql(&LogicalExpr::Literal(other, None))
            .map_err(|e| Error::NotSupported(format!("parameter ${index}: {e}")))?,
    };
    Ok(literal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::metadata::ScalarAndMetadata;

    fn check(sql: &str, values: Vec<ScalarValue>, everywhere: bool, expected: &str) {
        let mut statement = tributary_syntax::dialect::parse_statements(sql)
            .unwrap()
            .remove(0)
            .into_sql()
            .unwrap();
        let params = ParamValues::List(values.into_iter().map(ScalarAndMetadata::from).collect());
        if everywhere {
            bind_everywhere(&mut statement, &params).unwrap();
        } else {
            bind_table_functions(&mut statement, Some(&params)).unwrap();
        }
        assert_eq!(statement.to_string(), expected);
    }

    #[test]
    fn values_become_literals() {
        check(
            "CALL add_step($1, $2, $3)",
            vec![
                ScalarValue::Int32(Some(7)),
                ScalarValue::Utf8(Some("it's".into())),
                ScalarValue::Int64(None),
            ],
            true,
            "CALL add_step(7, 'it''s', NULL)",
        );
        check(
            "SELECT * FROM generate_series(1, $1) WHERE value > $2",
            vec![ScalarValue::Int64(Some(3)), ScalarValue::Int64(Some(1))],
            false,
            "SELECT * FROM generate_series(1, 3) WHERE value > $2",
        );
        assert_eq!(
            placeholder_count(
                &tributary_syntax::dialect::parse_statements("UPDATE t SET a = $3 WHERE b = $1")
                    .unwrap()
                    .remove(0)
                    .into_sql()
                    .unwrap()
            ),
            3
        );
    }
}
