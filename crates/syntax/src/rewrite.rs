//! Rewrites of the parsed statement before DataFusion plans it: search_path resolution of
//! table names, and Redshift function forms that DataFusion spells differently.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::helpers::attached_token::AttachedToken;
use sqlparser::ast::{
    BinaryOperator, CaseWhen, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArgumentList, FunctionArguments, Ident, Insert, LimitClause, ObjectName,
    ObjectNamePart, Query, SelectItem, SetExpr, Statement, TableFactor, TopQuantity, Value,
    VisitMut, VisitorMut, visit_expressions_mut,
};
use sqlparser::parser::{Parser, ParserError};

use crate::names::normalize_ident;

/// The identifiers of a name (`s."V"` is `[s, "V"]`), as written.
pub fn idents(name: &ObjectName) -> Vec<sqlparser::ast::Ident> {
    name.0
        .iter()
        .filter_map(|part| part.as_ident().cloned())
        .collect()
}

/// Qualifies every unqualified table name with the schema that `resolve` finds for it
/// (search_path order). Names of CTEs are left alone.
pub fn qualify_relations(statement: &mut Statement, resolve: &dyn Fn(&str) -> Option<String>) {
    let mut ctes = CteNames::default();
    let _ = statement.visit(&mut ctes);
    let mut qualifier = Qualifier {
        ctes: ctes.names,
        resolve,
        function_call: false,
    };
    let _ = statement.visit(&mut qualifier);
}

#[derive(Default)]
struct CteNames {
    names: HashSet<String>,
}

impl VisitorMut for CteNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.names.insert(normalize_ident(&cte.alias.name));
            }
        }
        ControlFlow::Continue(())
    }
}

struct Qualifier<'a> {
    ctes: HashSet<String>,
    resolve: &'a dyn Fn(&str) -> Option<String>,
    /// Set when the next relation name is a table function's (`FROM f()`), not a table's.
    function_call: bool,
}

impl VisitorMut for Qualifier<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        self.function_call = matches!(factor, TableFactor::Table { args: Some(_), .. });
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.function_call) {
            return ControlFlow::Continue(());
        }
        if relation.0.len() == 1
            && let ObjectNamePart::Identifier(ident) = &relation.0[0]
        {
            let name = normalize_ident(ident);
            if !self.ctes.contains(&name)
                && let Some(schema) = (self.resolve)(&name)
            {
                relation
                    .0
                    .insert(0, ObjectNamePart::Identifier(Ident::new(schema)));
            }
        }
        ControlFlow::Continue(())
    }
}

/// Postgres allows two unaliased result columns with the same text (`SELECT false, false`);
/// DataFusion needs distinct names, so repeated expressions get an alias.
pub fn alias_repeated_projections(statement: &mut Statement) {
    let _ = statement.visit(&mut RepeatedProjections);
}

struct RepeatedProjections;

/// `SELECT TOP n ...` becomes `... LIMIT n` (DataFusion has no TOP).
pub fn top_to_limit(statement: &mut Statement) {
    let _ = statement.visit(&mut TopToLimit);
}

struct TopToLimit;

impl VisitorMut for TopToLimit {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut()
            && let Some(top) = select.top.take()
        {
            let limit = match top.quantity {
                Some(TopQuantity::Expr(expr)) => expr,
                Some(TopQuantity::Constant(n)) => Expr::value(Value::Number(n.to_string(), false)),
                None => return ControlFlow::Continue(()),
            };
            if query.limit_clause.is_none() {
                query.limit_clause = Some(LimitClause::LimitOffset {
                    limit: Some(limit),
                    offset: None,
                    limit_by: vec![],
                });
            }
        }
        ControlFlow::Continue(())
    }
}

impl VisitorMut for RepeatedProjections {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            let mut seen = HashSet::new();
            for (position, item) in select.projection.iter_mut().enumerate() {
                let SelectItem::UnnamedExpr(expr) = item else {
                    continue;
                };
                // DataFusion names a cast after its operand, so `x::int, x::bigint` repeat too.
                let mut key = &*expr;
                while let Expr::Cast { expr, .. } = key {
                    key = expr;
                }
                // And every scalar subquery `(<subquery>)`, whatever its text.
                let key = match key {
                    Expr::Subquery(_) => "(<subquery>)".to_string(),
                    other => other.to_string(),
                };
                if !seen.insert(key) {
                    let alias = Ident::with_quote('"', format!("column{}", position + 1));
                    *item = SelectItem::ExprWithAlias {
                        expr: expr.clone(),
                        alias,
                    };
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Redshift lets WHERE and later select items refer to a select-list alias ("lateral column
/// alias reference"):
/// `SELECT n.nspname AS schema ... WHERE schema = 'public'`. Replaces unresolvable identifier
/// `name` in WHERE clauses with the aliased expression. Returns whether anything changed.
pub fn substitute_where_alias(statement: &mut Statement, name: &str) -> bool {
    let mut substitution = WhereAlias {
        name: name.to_string(),
        changed: false,
    };
    let _ = statement.visit(&mut substitution);
    substitution.changed
}

struct WhereAlias {
    name: String,
    changed: bool,
}

impl VisitorMut for WhereAlias {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        substitute_in_set_expr(query.body.as_mut(), &self.name, &mut self.changed);
        ControlFlow::Continue(())
    }
}

fn substitute_in_set_expr(body: &mut SetExpr, name: &str, changed: &mut bool) {
    match body {
        SetExpr::Select(select) => {
            let defining = select.projection.iter().position(|item| {
                matches!(item, SelectItem::ExprWithAlias { alias, .. } if normalize_ident(alias) == name)
            });
            let Some(defining) = defining else { return };
            let SelectItem::ExprWithAlias { expr: aliased, .. } = &select.projection[defining]
            else {
                return;
            };
            let aliased = aliased.clone();
            let mut replace = |expr: &mut Expr| {
                let _ = visit_expressions_mut(expr, |e| {
                    if let Expr::Identifier(ident) = e
                        && normalize_ident(ident) == name
                    {
                        *e = Expr::Nested(Box::new(aliased.clone()));
                        *changed = true;
                    }
                    ControlFlow::<()>::Continue(())
                });
            };
            if let Some(selection) = select.selection.as_mut() {
                replace(selection);
            }
            // Later select items may use the alias too.
            for item in select.projection.iter_mut().skip(defining + 1) {
                match item {
                    SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                        replace(expr)
                    }
                    _ => {}
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            substitute_in_set_expr(left, name, changed);
            substitute_in_set_expr(right, name, changed);
        }
        _ => {}
    }
}

/// `INSERT ... DEFAULT VALUES` and `DEFAULT` inside VALUES rows, which DataFusion does not
/// plan: each becomes the column's DEFAULT expression, or NULL (which the table's sink turns
/// into the next IDENTITY value). `columns` are the target table's (name, default SQL).
pub fn expand_insert_defaults(
    insert: &mut Insert,
    columns: &[(String, Option<String>)],
) -> Result<(), ParserError> {
    let default_of = |name: &str| -> Result<Expr, ParserError> {
        match columns
            .iter()
            .find(|(c, _)| c == name)
            .and_then(|(_, d)| d.as_deref())
        {
            Some(sql) => Parser::new(&crate::dialect::TributaryDialect::default())
                .try_with_sql(sql)?
                .parse_expr(),
            None => Ok(Expr::value(Value::Null)),
        }
    };
    if insert.source.is_none() {
        // DEFAULT VALUES: one row of defaults for every column.
        insert.columns = columns
            .iter()
            .map(|(c, _)| ObjectName::from(vec![Ident::with_quote('"', c)]))
            .collect();
        let row = columns
            .iter()
            .map(|(c, _)| default_of(c))
            .collect::<Result<Vec<_>, _>>()?;
        let sql = format!(
            "VALUES ({})",
            row.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        insert.source = Some(
            Parser::new(&crate::dialect::TributaryDialect::default())
                .try_with_sql(&sql)?
                .parse_query()?,
        );
        return Ok(());
    }
    let targets: Vec<String> = if insert.columns.is_empty() {
        columns.iter().map(|(c, _)| c.clone()).collect()
    } else {
        insert
            .columns
            .iter()
            .map(|c| {
                c.0.last()
                    .map(|p| match p {
                        ObjectNamePart::Identifier(ident) => normalize_ident(ident),
                        other => other.to_string(),
                    })
                    .unwrap_or_default()
            })
            .collect()
    };
    let Some(source) = insert.source.as_mut() else {
        return Ok(());
    };
    let SetExpr::Values(values) = source.body.as_mut() else {
        return Ok(());
    };
    for row in &mut values.rows {
        for (index, value) in row.content.iter_mut().enumerate() {
            if let Expr::Identifier(ident) = value
                && ident.quote_style.is_none()
                && ident.value.eq_ignore_ascii_case("default")
                && let Some(target) = targets.get(index)
            {
                *value = default_of(target)?;
            }
        }
    }
    Ok(())
}

/// Redshift function forms: `sysdate` and `getdate()`, date parts written as bare words
/// (`dateadd(day, 1, d)`), `DECODE(...)`, `LISTAGG(...) WITHIN GROUP (ORDER BY ...)`.
pub fn rewrite_functions(statement: &mut Statement) {
    let _ = statement.visit(&mut UntypedAliasColumns);
    let _ = visit_expressions_mut(statement, |expr| {
        rewrite_expr(expr);
        ControlFlow::<()>::Continue(())
    });
}

/// Functions SQL calls without parentheses.
const NILADIC: &[&str] = &[
    "sysdate",
    "current_user",
    "session_user",
    "current_namespace",
];

/// `FROM f() AS cols(a name, b int)`: DataFusion renames columns but takes no types there;
/// the function's own result types stand.
struct UntypedAliasColumns;

impl VisitorMut for UntypedAliasColumns {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Function {
            alias: Some(alias), ..
        } = factor
        {
            for column in &mut alias.columns {
                column.data_type = None;
            }
        }
        ControlFlow::Continue(())
    }
}

const DATE_PART_FUNCTIONS: &[&str] = &[
    "dateadd",
    "datediff",
    "date_add",
    "date_diff",
    "datepart",
    "date_part",
];

fn rewrite_expr(expr: &mut Expr) {
    match expr {
        // Row-value equality `(a, b) = (c, d)`: DataFusion compares scalars only.
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } if matches!((left.as_ref(), right.as_ref()), (Expr::Tuple(l), Expr::Tuple(r)) if l.len() == r.len() && !l.is_empty()) =>
        {
            let (Expr::Tuple(l), Expr::Tuple(r)) = (left.as_ref(), right.as_ref()) else {
                return;
            };
            let mut pairs = l.iter().zip(r).map(|(a, b)| Expr::BinaryOp {
                left: Box::new(a.clone()),
                op: BinaryOperator::Eq,
                right: Box::new(b.clone()),
            });
            let first = pairs.next().expect("non-empty tuple");
            *expr = Expr::Nested(Box::new(pairs.fold(first, |acc, eq| Expr::BinaryOp {
                left: Box::new(acc),
                op: BinaryOperator::And,
                right: Box::new(eq),
            })));
        }
        // Redshift accepts integers as booleans in AND / OR (`WHERE 1 AND ...`).
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And | BinaryOperator::Or,
            right,
        } => {
            for side in [left, right] {
                if let Expr::Value(value) = side.as_mut()
                    && let Value::Number(number, _) = &value.value
                {
                    let truth = number.parse::<f64>().is_ok_and(|n| n != 0.0);
                    value.value = Value::Boolean(truth);
                }
            }
        }
        Expr::Identifier(ident)
            if ident.quote_style.is_none()
                && NILADIC.contains(&ident.value.to_ascii_lowercase().as_str()) =>
        {
            *expr = call(&ident.value.to_ascii_lowercase(), vec![]);
        }
        Expr::Function(function) => {
            let name = function.name.to_string().to_ascii_lowercase();
            if DATE_PART_FUNCTIONS.contains(&name.as_str()) {
                quote_date_part(function);
            } else if name == "decode" {
                if let Some(case) = decode_to_case(function) {
                    *expr = case;
                }
            } else if name == "listagg" {
                listagg_to_string_agg(function);
            } else if matches!(name.as_str(), "to_char" | "to_date" | "to_timestamp") {
                translate_format_argument(function);
            } else if let Some(rewritten) = redshift_alias(&name, function) {
                *expr = rewritten;
            }
        }
        _ => {}
    }
}

/// Redshift functions that are another function with other arguments.
fn redshift_alias(name: &str, function: &Function) -> Option<Expr> {
    let args = plain_args(function)?;
    let text = |s: &str| Expr::value(Value::SingleQuotedString(s.to_string()));
    Some(match (name, args.as_slice()) {
        // convert_timezone(target, ts) reads ts as UTC.
        ("convert_timezone", [target, ts]) => call(
            "convert_timezone",
            vec![text("UTC"), target.clone(), ts.clone()],
        ),
        ("charindex", [needle, haystack]) => call("strpos", vec![haystack.clone(), needle.clone()]),
        ("replicate", [value, times]) => call("repeat", vec![value.clone(), times.clone()]),
        ("add_months", [date, months]) => {
            call("dateadd", vec![text("month"), months.clone(), date.clone()])
        }
        ("textlen", [value]) => call("character_length", vec![value.clone()]),
        ("timeofday", []) => call(
            "to_char",
            vec![call("now", vec![]), text("%a %b %d %H:%M:%S%.6f %Y %Z")],
        ),
        _ => return None,
    })
}

/// A plain function call expression `name(args...)`.
pub fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn quote_date_part(function: &mut Function) {
    if let FunctionArguments::List(list) = &mut function.args
        && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(first))) = list.args.first_mut()
        && let Expr::Identifier(ident) = first
        && ident.quote_style.is_none()
    {
        *first = Expr::value(Value::SingleQuotedString(ident.value.to_lowercase()));
    }
}

/// Redshift's datetime format patterns (`YYYY-MM-DD HH24:MI:SS`), as chrono patterns, which is
/// what DataFusion's to_char / to_date / to_timestamp read.
fn translate_format_argument(function: &mut Function) {
    if let FunctionArguments::List(list) = &mut function.args
        && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(value)))) =
            list.args.get_mut(1)
        && let Value::SingleQuotedString(pattern) = &mut value.value
    {
        *pattern = chrono_pattern(pattern);
    }
}

pub fn chrono_pattern(pattern: &str) -> String {
    // Longest tokens first, so that HH24 wins over HH and MONTH over MON and MM.
    const TOKENS: &[(&str, &str)] = &[
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("YYYY", "%Y"),
        ("MONTH", "%B"),
        ("Month", "%B"),
        ("month", "%B"),
        ("DAY", "%A"),
        ("Day", "%A"),
        ("day", "%A"),
        ("MON", "%b"),
        ("Mon", "%b"),
        ("mon", "%b"),
        ("DY", "%a"),
        ("Dy", "%a"),
        ("dy", "%a"),
        ("DDD", "%j"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("HH", "%I"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("MS", "%3f"),
        ("US", "%6f"),
        ("AM", "%p"),
        ("PM", "%p"),
        ("am", "%P"),
        ("pm", "%P"),
        ("TZ", "%Z"),
        ("tz", "%Z"),
    ];
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    'outer: while !rest.is_empty() {
        for (token, replacement) in TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(replacement);
                rest = after;
                continue 'outer;
            }
        }
        let ch = rest.chars().next().expect("not empty");
        if ch == '%' {
            out.push_str("%%");
        } else {
            out.push(ch);
        }
        rest = &rest[ch.len_utf8()..];
    }
    out
}

fn plain_args(function: &Function) -> Option<Vec<Expr>> {
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    list.args
        .iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// DECODE(expr, search1, result1, ..., [default]) compares with IS NOT DISTINCT FROM, so a
/// NULL search value matches a NULL expression, as in Redshift.
fn decode_to_case(function: &Function) -> Option<Expr> {
    let args = plain_args(function)?;
    if args.len() < 3 {
        return None;
    }
    let subject = args[0].clone();
    let rest = &args[1..];
    let pairs = rest.len() / 2;
    let conditions = (0..pairs)
        .map(|i| CaseWhen {
            condition: Expr::IsNotDistinctFrom(
                Box::new(subject.clone()),
                Box::new(rest[2 * i].clone()),
            ),
            result: rest[2 * i + 1].clone(),
        })
        .collect();
    let else_result = (rest.len() % 2 == 1).then(|| Box::new(rest[rest.len() - 1].clone()));
    Some(Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions,
        else_result,
    })
}

fn listagg_to_string_agg(function: &mut Function) {
    function.name = ObjectName::from(vec![Ident::new("string_agg")]);
    let order_by = std::mem::take(&mut function.within_group);
    if let FunctionArguments::List(list) = &mut function.args {
        if list.args.len() == 1 {
            list.args
                .push(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::value(
                    Value::SingleQuotedString(String::new()),
                ))));
        }
        if !order_by.is_empty() {
            list.clauses.push(FunctionArgumentClause::OrderBy(order_by));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::parse_statements;

    fn check(sql: &str, expected: &str) {
        let mut statement = parse_statements(sql).unwrap().remove(0).into_sql().unwrap();
        rewrite_functions(&mut statement);
        qualify_relations(&mut statement, &|name| {
            (name == "t").then(|| "sales".to_string())
        });
        assert_eq!(statement.to_string(), expected);
    }

    #[test]
    fn repeated_projections_get_aliases() {
        let aliased = |sql: &str| {
            let mut statement = parse_statements(sql).unwrap().remove(0).into_sql().unwrap();
            alias_repeated_projections(&mut statement);
            statement.to_string()
        };
        assert_eq!(
            aliased("select false, false, x::int, x::bigint"),
            r#"SELECT false, false AS "column2", x::INT, x::BIGINT AS "column4""#
        );
        assert_eq!(
            aliased("select (select count(*) from a), (select count(*) from b), (select 1) as c"),
            r#"SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b) AS "column2", (SELECT 1) AS c"#
        );
    }

    #[test]
    fn rewrites() {
        check("select sysdate", "SELECT sysdate()");
        check(
            "select dateadd(day, 1, d) from t",
            "SELECT dateadd('day', 1, d) FROM sales.t",
        );
        check(
            "select decode(a, 1, 'one', null, 'none', 'other') from t",
            "SELECT CASE WHEN a IS NOT DISTINCT FROM 1 THEN 'one' WHEN a IS NOT DISTINCT FROM NULL THEN 'none' ELSE 'other' END FROM sales.t",
        );
        check(
            "with t as (select 1) select * from t, u",
            "WITH t AS (SELECT 1) SELECT * FROM t, u",
        );
        check(
            "select listagg(name, ',') within group (order by name) from t",
            "SELECT string_agg(name, ',' ORDER BY name) FROM sales.t",
        );
        check(
            "select to_char(d, 'YYYY-MM-DD HH24:MI:SS') from t",
            "SELECT to_char(d, '%Y-%m-%d %H:%M:%S') FROM sales.t",
        );
    }
}
