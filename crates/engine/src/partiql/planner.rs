//! Planning SUPER expressions: dotted and bracketed navigation (an `ExprPlanner` placed before
//! DataFusion's own, which would read a dotted path as struct fields), the `SUPER` type name in
//! casts (a `TypePlanner`), and Redshift's dynamic typing (an analyzer rule that runs before
//! type coercion: casts from SUPER, comparisons of SUPER with other types, SUPER into SUPER
//! columns).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, Result as DfResult, TableReference, plan_err};
use datafusion::logical_expr::expr::{Cast, InList, InSubquery, Like, ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::planner::{
    ExprPlanner, PlannerResult, RawFieldAccessExpr, TypePlanner,
};
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, Case, DmlStatement, Expr, ExprSchemable, GetFieldAccess, LogicalPlan, Projection,
    ScalarUDF, WriteOp, lit,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::sql::sqlparser::ast::DataType as SqlDataType;

use super::functions::{self, Kind};
use super::{is_super, super_field};

/// The session's `enable_case_sensitive_identifier`, shared with its planner.
pub type CaseSensitivity = Arc<AtomicBool>;

#[derive(Debug)]
pub struct SuperPlanner {
    pub case_sensitive: CaseSensitivity,
    pub get: Arc<ScalarUDF>,
}

impl SuperPlanner {
    fn fold(&self, name: &str) -> String {
        if self.case_sensitive.load(Ordering::Relaxed) {
            name.to_string()
        } else {
            name.to_lowercase()
        }
    }
}

impl ExprPlanner for SuperPlanner {
    fn plan_compound_identifier(
        &self,
        field: &Field,
        qualifier: Option<&TableReference>,
        nested_names: &[String],
    ) -> DfResult<PlannerResult<Vec<Expr>>> {
        if !is_super(field) {
            return Ok(PlannerResult::Original(vec![]));
        }
        let mut args = vec![Expr::Column(Column::from((qualifier, field)))];
        args.extend(nested_names.iter().map(|name| lit(self.fold(name))));
        Ok(PlannerResult::Planned(self.get.call(args)))
    }

    fn plan_field_access(
        &self,
        access: RawFieldAccessExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawFieldAccessExpr>> {
        if !is_super_expr(&access.expr, schema) {
            return Ok(PlannerResult::Original(access));
        }
        let step = match access.field_access {
            GetFieldAccess::NamedStructField { name } => Expr::Literal(name, None),
            GetFieldAccess::ListIndex { key } => *key,
            GetFieldAccess::ListRange { .. } => {
                return plan_err!("array slices of SUPER values are not supported");
            }
        };
        // a.b[0].c is one navigation, not three.
        if let Expr::ScalarFunction(ScalarFunction { func, args }) = &access.expr
            && func.name() == functions::GET
        {
            let mut args = args.clone();
            args.push(step);
            return Ok(PlannerResult::Planned(func.call(args)));
        }
        Ok(PlannerResult::Planned(
            self.get.call(vec![access.expr, step]),
        ))
    }
}

/// `SUPER` and `VARBYTE` in casts (`x::super`); other names go to the planner it wraps (the
/// session has one type planner, and pg_catalog installs its own).
#[derive(Debug)]
pub struct RedshiftTypes {
    pub fallback: Option<Arc<dyn TypePlanner>>,
}

impl TypePlanner for RedshiftTypes {
    fn plan_type_field(&self, sql_type: &SqlDataType) -> DfResult<Option<FieldRef>> {
        let name = match sql_type {
            SqlDataType::Custom(name, _) => Some(name.to_string().to_ascii_lowercase()),
            SqlDataType::JSON | SqlDataType::JSONB => Some("super".to_string()),
            _ => None,
        };
        match name.as_deref() {
            Some("super") => return Ok(Some(super_field("super"))),
            Some("varbyte" | "varbinary") => {
                return Ok(Some(Arc::new(Field::new(
                    "varbyte",
                    DataType::Binary,
                    true,
                ))));
            }
            _ => {}
        }
        match &self.fallback {
            Some(fallback) => fallback.plan_type_field(sql_type),
            None => Ok(None),
        }
    }
}

pub fn is_super_expr(expr: &Expr, schema: &DFSchema) -> bool {
    expr.to_field(schema)
        .map(|(_, field)| is_super(&field))
        .unwrap_or(false)
}

/// Redshift's dynamic typing of SUPER, applied before DataFusion's type coercion.
#[derive(Debug)]
pub struct SuperCoercion {
    pub udfs: SuperUdfs,
}

/// The internal functions the rewrite calls.
#[derive(Debug, Clone)]
pub struct SuperUdfs {
    pub mark: Arc<ScalarUDF>,
    pub to_super: Arc<ScalarUDF>,
    pub text: Arc<ScalarUDF>,
    pub int: Arc<ScalarUDF>,
    pub boolean: Arc<ScalarUDF>,
}

impl AnalyzerRule for SuperCoercion {
    fn name(&self) -> &str {
        "tributary_super_coercion"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| self.analyze_node(plan))
            .map(|t| t.data)
    }
}

impl SuperCoercion {
    fn analyze_node(&self, plan: LogicalPlan) -> DfResult<Transformed<LogicalPlan>> {
        // Children may have changed type (a CASE over SUPER became SUPER): always refresh.
        let plan = plan.recompute_schema()?;
        let mut schema = merge_schema(&plan.inputs());
        if let LogicalPlan::TableScan(scan) = &plan {
            schema.merge(&DFSchema::try_from_qualified_schema(
                scan.table_name.clone(),
                &scan.source.schema(),
            )?);
        }
        let preserver = NamePreserver::new(&plan);
        let rewritten = plan.map_expressions(|expr| {
            let name = preserver.save(&expr);
            expr.transform_up(|e| self.rewrite(e, &schema))
                .map(|t| t.update_data(|e| name.restore(e)))
        })?;
        let transformed = rewritten.transformed;
        let plan = self.coerce_values(rewritten.data)?;
        let plan = self.coerce_insert(plan)?;
        let plan = plan.recompute_schema()?;
        Ok(if transformed {
            Transformed::yes(plan)
        } else {
            Transformed::no(plan)
        })
    }

    /// A VALUES column with a SUPER value in some row is a SUPER column: the other rows'
    /// values become SUPER scalars, as they would if inserted one by one.
    fn coerce_values(&self, plan: LogicalPlan) -> DfResult<LogicalPlan> {
        let LogicalPlan::Values(mut values) = plan else {
            return Ok(plan);
        };
        let empty = DFSchema::empty();
        let width = values.schema.fields().len();
        let super_columns: Vec<bool> = (0..width)
            .map(|i| {
                values
                    .values
                    .iter()
                    .any(|row| is_super_expr(&row[i], &empty))
            })
            .collect();
        if !super_columns.iter().any(|s| *s) {
            return Ok(LogicalPlan::Values(values));
        }
        for row in &mut values.values {
            for (i, expr) in row.iter_mut().enumerate() {
                if super_columns[i] && !is_super_expr(expr, &empty) && !is_null(expr) {
                    *expr = self.udfs.to_super.call(vec![expr.clone()]);
                }
            }
        }
        let fields: Vec<(Option<TableReference>, FieldRef)> = values
            .schema
            .iter()
            .zip(&super_columns)
            .map(|((qualifier, field), is_super)| {
                let field = if *is_super {
                    Arc::new(
                        super_field(field.name())
                            .as_ref()
                            .clone()
                            .with_nullable(true),
                    )
                } else {
                    field.clone()
                };
                (qualifier.cloned(), field)
            })
            .collect();
        values.schema = Arc::new(DFSchema::new_with_metadata(
            fields,
            values.schema.metadata().clone(),
        )?);
        Ok(LogicalPlan::Values(values))
    }

    /// A non-SUPER value written to a SUPER column becomes a SUPER scalar (a string stays a
    /// string: only JSON_PARSE parses), as Redshift does.
    fn coerce_insert(&self, plan: LogicalPlan) -> DfResult<LogicalPlan> {
        let LogicalPlan::Dml(mut dml) = plan else {
            return Ok(plan);
        };
        if !matches!(dml.op, WriteOp::Insert(_)) {
            return Ok(LogicalPlan::Dml(dml));
        }
        let target = dml.target.schema();
        let input_schema = dml.input.schema().clone();
        if target.fields().len() != input_schema.fields().len() {
            return Ok(LogicalPlan::Dml(dml));
        }
        let needs: Vec<bool> = target
            .fields()
            .iter()
            .zip(input_schema.fields())
            .map(|(t, i)| is_super(t) && !is_super(i))
            .collect();
        if !needs.iter().any(|n| *n) {
            return Ok(LogicalPlan::Dml(dml));
        }
        let exprs = input_schema
            .iter()
            .zip(needs)
            .map(|((qualifier, field), need)| {
                let column = Expr::Column(Column::from((qualifier, field.as_ref())));
                if need {
                    self.udfs.to_super.call(vec![column]).alias(field.name())
                } else {
                    column
                }
            })
            .collect();
        dml.input = Arc::new(LogicalPlan::Projection(Projection::try_new(
            exprs, dml.input,
        )?));
        Ok(LogicalPlan::Dml(DmlStatement::new(
            dml.table_name,
            dml.target,
            dml.op,
            dml.input,
        )))
    }

    /// The SQL value of a SUPER expression as `target`; a value of another type is NULL.
    fn read_super_as(&self, expr: Expr, target: &DataType) -> Expr {
        let udfs = &self.udfs;
        match target {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => try_cast(udfs.int.call(vec![expr]), target),
            DataType::Int64 => udfs.int.call(vec![expr]),
            DataType::Boolean => udfs.boolean.call(vec![expr]),
            DataType::Utf8 => udfs.text.call(vec![expr]),
            other => try_cast(udfs.text.call(vec![expr]), other),
        }
    }

    /// A cast from or to SUPER, or the operand back if neither side is SUPER.
    fn cast(&self, expr: Expr, target: &FieldRef, schema: &DFSchema) -> Result<Expr, Expr> {
        match (is_super_expr(&expr, schema), is_super(target)) {
            (true, true) => Ok(expr),
            (false, true) => Ok(self.udfs.to_super.call(vec![expr])),
            (true, false) => Ok(self.read_super_as(expr, target.data_type())),
            (false, false) => Err(expr),
        }
    }

    fn rewrite(&self, expr: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
        let is_super = |e: &Expr| is_super_expr(e, schema);
        Ok(match expr {
            Expr::Cast(Cast { expr, field }) => match self.cast(*expr, &field, schema) {
                Ok(rewritten) => Transformed::yes(rewritten),
                Err(expr) => Transformed::no(Expr::Cast(Cast {
                    expr: Box::new(expr),
                    field,
                })),
            },
            Expr::TryCast(TryCast { expr, field }) => match self.cast(*expr, &field, schema) {
                Ok(rewritten) => Transformed::yes(rewritten),
                Err(expr) => Transformed::no(Expr::TryCast(TryCast {
                    expr: Box::new(expr),
                    field,
                })),
            },
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (left_super, right_super) = (is_super(&left), is_super(&right));
                if left_super == right_super || is_null(&left) || is_null(&right) {
                    return Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                        left,
                        op,
                        right,
                    })));
                }
                let (left, right) = if left_super {
                    let target = comparison_type(&right.get_type(schema)?);
                    (Box::new(self.read_super_as(*left, &target)), right)
                } else {
                    let target = comparison_type(&left.get_type(schema)?);
                    (left, Box::new(self.read_super_as(*right, &target)))
                };
                Transformed::yes(Expr::BinaryExpr(BinaryExpr { left, op, right }))
            }
            Expr::InList(InList {
                expr,
                list,
                negated,
            }) if is_super(&expr) && list.iter().all(|e| !is_super(e)) && !list.is_empty() => {
                let target = comparison_type(&list[0].get_type(schema)?);
                let expr = Box::new(self.read_super_as(*expr, &target));
                Transformed::yes(Expr::InList(InList {
                    expr,
                    list,
                    negated,
                }))
            }
            Expr::InSubquery(InSubquery {
                expr,
                subquery,
                negated,
            }) => {
                let output_super = subquery
                    .subquery
                    .schema()
                    .fields()
                    .first()
                    .is_some_and(|f| super::is_super(f));
                if output_super && !is_super(&expr) {
                    let expr = Box::new(self.udfs.to_super.call(vec![*expr]));
                    Transformed::yes(Expr::InSubquery(InSubquery {
                        expr,
                        subquery,
                        negated,
                    }))
                } else {
                    Transformed::no(Expr::InSubquery(InSubquery {
                        expr,
                        subquery,
                        negated,
                    }))
                }
            }
            Expr::Like(Like {
                negated,
                expr,
                pattern,
                escape_char,
                case_insensitive,
            }) if is_super(&expr) => {
                let expr = Box::new(self.udfs.text.call(vec![*expr]));
                Transformed::yes(Expr::Like(Like {
                    negated,
                    expr,
                    pattern,
                    escape_char,
                    case_insensitive,
                }))
            }
            Expr::Case(case) if case_is_super(&case, &is_super) => {
                Transformed::yes(self.udfs.mark.call(vec![Expr::Case(case)]))
            }
            Expr::ScalarFunction(ScalarFunction { func, args })
                if matches!(func.name(), "coalesce" | "nvl" | "nullif")
                    && args.iter().any(&is_super)
                    && args.iter().all(|a| is_super(a) || is_null(a)) =>
            {
                let call = Expr::ScalarFunction(ScalarFunction { func, args });
                Transformed::yes(self.udfs.mark.call(vec![call]))
            }
            Expr::ScalarFunction(ScalarFunction { func, mut args })
                if Kind::takes_super(func.name()) && args.first().is_some_and(|a| !is_super(a)) =>
            {
                let first = args.remove(0);
                args.insert(0, self.udfs.to_super.call(vec![first]));
                Transformed::yes(Expr::ScalarFunction(ScalarFunction { func, args }))
            }
            other => Transformed::no(other),
        })
    }
}

fn case_is_super(case: &Case, is_super: &dyn Fn(&Expr) -> bool) -> bool {
    let results = case
        .when_then_expr
        .iter()
        .map(|(_, then)| then.as_ref())
        .chain(case.else_expr.as_deref());
    let mut any = false;
    for result in results {
        if is_super(result) {
            any = true;
        } else if !is_null(result) {
            return false;
        }
    }
    any
}

fn is_null(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(value, _) if value.is_null())
}

fn try_cast(expr: Expr, target: &DataType) -> Expr {
    Expr::TryCast(TryCast::new(Box::new(expr), target.clone()))
}

/// The type a SUPER value is read as when compared with (or computed with) a value of `other`.
fn comparison_type(other: &DataType) -> DataType {
    match other {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float16
        | DataType::Float32 => DataType::Float64,
        DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => DataType::Utf8,
        other => other.clone(),
    }
}
