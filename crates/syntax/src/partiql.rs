//! PartiQL in the parsed statement, before DataFusion plans it.
//!
//! - Bracketed paths (`payload.items[0].sku`, `payload['key']`, which the parser reads as JSON
//!   access) become field-access chains the SUPER planner resolves; dotted keys after a bracket
//!   are folded to lower case unless `enable_case_sensitive_identifier` is on.
//! - Unnesting in FROM (`FROM t a, a.payload.items AS i [AT idx]`,
//!   `FROM t a LEFT JOIN a.payload.list b ON true`) and object unpivoting
//!   (`FROM t, UNPIVOT t.obj AS v AT k`) become an UNNEST in a derived table that replaces
//!   the relation the path starts from, keeping that relation's alias:
//!
//!   ```text
//!   FROM (SELECT a.*, __tributary_super(unnest(__tributary_super_elements(a.payload.items, false))) AS i,
//!                unnest(__tributary_super_indexes(a.payload.items, false)) AS idx
//!         FROM t a) AS a
//!   ```
//!
//!   An inner unnest drops rows whose path is missing, empty or not an array; a LEFT JOIN
//!   keeps them with NULL elements, as Redshift does.

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AccessExpr, Expr, FunctionArg, FunctionArgExpr, Ident, JoinConstraint, JoinOperator,
    JsonPathElem, ObjectName, ObjectNamePart, Query, Select, SelectItem, SetExpr, Statement,
    Subscript, TableAlias, TableFactor, TableWithJoins, Value, VisitMut, VisitorMut,
    visit_expressions_mut,
};

use crate::functions::{ELEMENTS, INDEXES, KEYS, MARK, UNPIVOT, VALUES};
use crate::names::normalize_ident;
use crate::{Error, Result};

/// Applies both rewrites to a statement.
pub fn rewrite(statement: &mut Statement, case_sensitive: bool) -> Result<()> {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::JsonAccess { value, path } = expr {
            let access_chain = path
                .path
                .iter()
                .map(|elem| match elem {
                    JsonPathElem::Dot { key, quoted } => {
                        let key = if *quoted && case_sensitive {
                            key.clone()
                        } else {
                            key.to_lowercase()
                        };
                        AccessExpr::Subscript(Subscript::Index {
                            index: Expr::value(Value::SingleQuotedString(key)),
                        })
                    }
                    JsonPathElem::Bracket { key } | JsonPathElem::ColonBracket { key } => {
                        AccessExpr::Subscript(Subscript::Index { index: key.clone() })
                    }
                })
                .collect();
            *expr = Expr::CompoundFieldAccess {
                root: value.clone(),
                access_chain,
            };
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = statement.visit(&mut PathNames);
    let mut unnesting = Unnesting { error: None };
    let _ = statement.visit(&mut unnesting);
    match unnesting.error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Names an unaliased select item that is a path (`data.after.first_name`, `t.col`, also
/// under casts) after its last key, as Redshift and Postgres do, so that an outer query can
/// refer to it as `a.first_name`. Paths whose last keys repeat in one select list keep their
/// own names.
struct PathNames;

fn last_key(expr: &Expr) -> Option<Ident> {
    match expr {
        Expr::Cast { expr, .. } | Expr::Nested(expr) => last_key(expr),
        Expr::CompoundIdentifier(parts) => parts.last().cloned(),
        Expr::CompoundFieldAccess { access_chain, .. } => match access_chain.last()? {
            AccessExpr::Subscript(Subscript::Index {
                index: Expr::Value(value),
            }) => match &value.value {
                Value::SingleQuotedString(key) => Some(Ident::with_quote('"', key)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn name_paths(select: &mut Select) {
    let keys: Vec<Option<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(expr) => last_key(expr).map(|k| normalize_ident(&k)),
            SelectItem::ExprWithAlias { alias, .. } => Some(normalize_ident(alias)),
            _ => None,
        })
        .collect();
    for (index, item) in select.projection.iter_mut().enumerate() {
        let SelectItem::UnnamedExpr(expr) = item else {
            continue;
        };
        let Some(key) = &keys[index] else {
            continue;
        };
        if keys.iter().filter(|k| k.as_ref() == Some(key)).count() > 1 {
            continue;
        }
        if let Some(alias) = last_key(expr) {
            *item = SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias,
            };
        }
    }
}

impl VisitorMut for PathNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            name_paths(select);
        }
        ControlFlow::Continue(())
    }
}

struct Unnesting {
    error: Option<Error>,
}

impl VisitorMut for Unnesting {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let Err(error) = rewrite_set_expr(&mut query.body) {
            self.error = Some(error);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

fn rewrite_set_expr(body: &mut SetExpr) -> Result<()> {
    match body {
        SetExpr::Select(select) => {
            // Each pass unnests one path; the number of paths bounds the passes. Unnested
            // elements stay in scope as columns of the relation they were added to.
            let mut elements = HashMap::new();
            while rewrite_one(select, &mut elements)? {}
            Ok(())
        }
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set_expr(left)?;
            rewrite_set_expr(right)
        }
        _ => Ok(()),
    }
}

/// Where a relation sits in a FROM list: the item, and the join within it (None: its first
/// relation).
#[derive(Debug, Clone, Copy)]
struct Position {
    item: usize,
    join: Option<usize>,
}

/// A FROM entry that navigates into a SUPER value instead of naming a table.
struct PathFactor {
    root: String,
    path: String,
    element: Ident,
    index: Option<Ident>,
    unpivot: bool,
}

fn factor_at(from: &mut [TableWithJoins], at: Position) -> &mut TableFactor {
    match at.join {
        None => &mut from[at.item].relation,
        Some(join) => &mut from[at.item].joins[join].relation,
    }
}

/// The name a relation is referred to by.
fn relation_name(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        }
        | TableFactor::UNNEST {
            alias: Some(alias), ..
        }
        | TableFactor::Function {
            alias: Some(alias), ..
        } => Some(normalize_ident(&alias.name)),
        TableFactor::Table {
            name, alias: None, ..
        } => match name.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => Some(normalize_ident(ident)),
            _ => None,
        },
        _ => None,
    }
}

fn path_factor(factor: &TableFactor, scope: &HashMap<String, Position>) -> Option<PathFactor> {
    let TableFactor::Table {
        name,
        alias,
        args,
        json_path,
        ..
    } = factor
    else {
        return None;
    };
    let (root, path, unpivot) = match args {
        None => {
            let idents: Vec<&Ident> = name
                .0
                .iter()
                .map(|p| match p {
                    ObjectNamePart::Identifier(ident) => Some(ident),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            if idents.len() < 2 {
                return None;
            }
            let mut path = name.to_string();
            if let Some(json_path) = json_path {
                path.push_str(&json_path.to_string());
            }
            (normalize_ident(idents[0]), path, false)
        }
        Some(args) if name.to_string().eq_ignore_ascii_case(UNPIVOT) => {
            let [FunctionArg::Unnamed(FunctionArgExpr::Expr(expr))] = args.args.as_slice() else {
                return None;
            };
            let root = match expr {
                Expr::Identifier(ident) => normalize_ident(ident),
                Expr::CompoundIdentifier(idents) => normalize_ident(idents.first()?),
                Expr::CompoundFieldAccess { root, .. } | Expr::JsonAccess { value: root, .. } => {
                    match root.as_ref() {
                        Expr::Identifier(ident) => normalize_ident(ident),
                        Expr::CompoundIdentifier(idents) => normalize_ident(idents.first()?),
                        _ => return None,
                    }
                }
                _ => return None,
            };
            (root, expr.to_string(), true)
        }
        Some(_) => return None,
    };
    if !scope.contains_key(&root) {
        return None;
    }
    let element = match alias {
        Some(alias) => alias.name.clone(),
        None => match name.0.last() {
            Some(ObjectNamePart::Identifier(ident)) if !unpivot => ident.clone(),
            _ => Ident::new("value"),
        },
    };
    Some(PathFactor {
        root,
        path,
        element,
        index: alias.as_ref().and_then(|a| a.at.clone()),
        unpivot,
    })
}

/// Finds the first path factor in FROM and unnests it; false when there is none left.
fn rewrite_one(select: &mut Select, elements: &mut HashMap<String, String>) -> Result<bool> {
    let mut scope: HashMap<String, Position> = HashMap::new();
    for item in 0..select.from.len() {
        let mut positions = vec![Position { item, join: None }];
        positions.extend((0..select.from[item].joins.len()).map(|j| Position {
            item,
            join: Some(j),
        }));
        for at in positions {
            let factor = factor_at(&mut select.from, at);
            if let Some(path) = path_factor(factor, &scope) {
                let host = scope[&path.root];
                let outer = match at.join {
                    None => false,
                    Some(join) => join_kind(&mut select.from[item].joins[join].join_operator)?
                        .map(|condition| {
                            select.selection = Some(match select.selection.take() {
                                None => condition.clone(),
                                Some(existing) => Expr::BinaryOp {
                                    left: Box::new(existing),
                                    op: sqlparser::ast::BinaryOperator::And,
                                    right: Box::new(condition.clone()),
                                },
                            });
                            false
                        })
                        .unwrap_or(true),
                };
                let host_name = unnest_into(&mut select.from, host, &path, outer)?;
                elements.insert(normalize_ident(&path.element), host_name.clone());
                if let Some(index) = &path.index {
                    elements.insert(normalize_ident(index), host_name);
                }
                // Drop the path entry; joins after it stay, attached to the host's item.
                match at.join {
                    Some(join) => {
                        select.from[item].joins.remove(join);
                    }
                    None => {
                        let removed = select.from.remove(item);
                        select.from[host.item].joins.extend(removed.joins);
                    }
                }
                return Ok(true);
            }
            if let Some(name) = relation_name(factor_at(&mut select.from, at)) {
                for (element, host) in elements.iter() {
                    if *host == name {
                        scope.insert(element.clone(), at);
                    }
                }
                scope.insert(name, at);
            }
        }
    }
    Ok(false)
}

/// How a joined path is unnested: `Ok(None)` for LEFT JOIN ... ON true (keep rows without
/// elements), `Ok(Some(condition))` for an inner join whose condition filters the result.
fn join_kind(operator: &mut JoinOperator) -> Result<Option<Expr>> {
    let is_true = |e: &Expr| matches!(e, Expr::Value(v) if v.value == Value::Boolean(true));
    match operator {
        JoinOperator::LeftOuter(JoinConstraint::On(on))
        | JoinOperator::Left(JoinConstraint::On(on))
            if is_true(on) =>
        {
            Ok(None)
        }
        JoinOperator::LeftOuter(_) | JoinOperator::Left(_) => Err(Error::NotSupported(
            "a LEFT JOIN that unnests a SUPER path must be ON true; filter the elements in WHERE"
                .into(),
        )),
        JoinOperator::Inner(JoinConstraint::On(on))
        | JoinOperator::Join(JoinConstraint::On(on)) => Ok(Some(on.clone())),
        JoinOperator::CrossJoin(_)
        | JoinOperator::Inner(JoinConstraint::None)
        | JoinOperator::Join(JoinConstraint::None) => Ok(Some(Expr::value(Value::Boolean(true)))),
        _ => Err(Error::NotSupported(
            "SUPER paths can be unnested with a comma, JOIN or LEFT JOIN ... ON true".into(),
        )),
    }
}

/// Replaces the host relation with a derived table that adds the unnested columns.
fn unnest_into(
    from: &mut [TableWithJoins],
    host: Position,
    path: &PathFactor,
    outer: bool,
) -> Result<String> {
    let factor = factor_at(from, host);
    let alias = match factor {
        TableFactor::Table {
            alias: Some(alias), ..
        }
        | TableFactor::Derived {
            alias: Some(alias), ..
        } => alias.name.clone(),
        TableFactor::Table { name, alias, .. } => {
            let Some(ObjectNamePart::Identifier(last)) = name.0.last() else {
                return Err(Error::NotSupported(format!(
                    "cannot unnest {} here",
                    path.path
                )));
            };
            let last = last.clone();
            *alias = Some(TableAlias {
                explicit: true,
                name: last.clone(),
                columns: vec![],
                at: None,
            });
            last
        }
        _ => {
            return Err(Error::NotSupported(format!(
                "cannot unnest {}: give the relation it starts from an alias",
                path.path
            )));
        }
    };
    let (elements, indexes) = if path.unpivot {
        (VALUES, KEYS)
    } else {
        (ELEMENTS, INDEXES)
    };
    let mut projection = format!(
        "{alias}.*, {MARK}(unnest({elements}({path}, {outer}))) AS {element}",
        path = path.path,
        element = path.element,
    );
    if let Some(index) = &path.index {
        projection.push_str(&format!(
            ", unnest({indexes}({path}, {outer})) AS {index}",
            path = path.path
        ));
    }
    let sql = format!("SELECT * FROM (SELECT {projection} FROM __tributary_host) AS {alias}");
    let mut parsed = crate::dialect::parse_statements(&sql)
        .map_err(|e| Error::Internal(format!("unnesting {}: {e}", path.path)))?;
    let Some(crate::Statement::Sql(Statement::Query(mut query))) = parsed.pop() else {
        return Err(Error::Internal(format!("unnesting {}", path.path)));
    };
    let SetExpr::Select(outer_select) = query.body.as_mut() else {
        return Err(Error::Internal(format!("unnesting {}", path.path)));
    };
    let mut derived = outer_select.from.remove(0).relation;
    if let TableFactor::Derived { subquery, .. } = &mut derived
        && let SetExpr::Select(inner) = subquery.body.as_mut()
    {
        let host_factor = std::mem::replace(
            factor_at(from, host),
            TableFactor::Table {
                name: ObjectName(vec![]),
                alias: None,
                args: None,
                with_hints: vec![],
                version: None,
                with_ordinality: false,
                partitions: vec![],
                json_path: None,
                sample: None,
                index_hints: vec![],
            },
        );
        inner.from[0].relation = host_factor;
    }
    *factor_at(from, host) = derived;
    Ok(normalize_ident(&alias))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str, expected: &str) {
        let mut statement = crate::dialect::parse_statements(sql)
            .unwrap()
            .remove(0)
            .into_sql()
            .unwrap();
        rewrite(&mut statement, false).unwrap();
        assert_eq!(statement.to_string(), expected);
    }

    #[test]
    fn unnests_paths_in_from() {
        check(
            "SELECT i FROM t AS a, a.payload.items AS i",
            "SELECT i FROM (SELECT a.*, __tributary_super(unnest(__tributary_super_elements(a.payload.items, false))) AS i FROM t AS a) AS a",
        );
        check(
            "SELECT b FROM mv a LEFT OUTER JOIN a.\"payload\".\"L\" b ON true WHERE x = 1",
            "SELECT b FROM (SELECT a.*, __tributary_super(unnest(__tributary_super_elements(a.\"payload\".\"L\", true))) AS b FROM mv a) AS a WHERE x = 1",
        );
        check(
            "SELECT e, i FROM t, t.arr AS e AT i",
            "SELECT e, i FROM (SELECT t.*, __tributary_super(unnest(__tributary_super_elements(t.arr, false))) AS e, unnest(__tributary_super_indexes(t.arr, false)) AS i FROM t AS t) AS t",
        );
        // Two levels: the second path starts from the first one's element.
        let mut statement =
            crate::dialect::parse_statements("SELECT s FROM t a, a.orders o, o.items s")
                .unwrap()
                .remove(0)
                .into_sql()
                .unwrap();
        rewrite(&mut statement, false).unwrap();
        let text = statement.to_string();
        assert!(
            text.contains("__tributary_super_elements(o.items, false)"),
            "{text}"
        );
        assert!(
            text.contains("__tributary_super_elements(a.orders, false)"),
            "{text}"
        );
        // A qualified table name is not a path.
        check("SELECT * FROM public.t", "SELECT * FROM public.t");
    }

    #[test]
    fn brackets_become_field_access() {
        check(
            "SELECT payload.items[0].\"Sku\", payload['K'] FROM t",
            "SELECT payload.items[0]['sku'] AS \"sku\", payload['K'] AS \"K\" FROM t",
        );
    }
}
