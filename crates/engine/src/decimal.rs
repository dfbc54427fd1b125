//! DECIMAL addition, subtraction and multiplication without a check per value when none can
//! overflow.
//!
//! Arrow's kernels check every DECIMAL sum and product for 128-bit overflow (`mul_checked`,
//! through a closure that returns a `Result`), which keeps the compiler from vectorizing them:
//! in TPC-H's Q1 the checks took a third of the query's time. The bounds of a batch say at
//! once whether any value can overflow: the largest magnitudes of both sides, scaled to the
//! result's scale, combined. When that cannot overflow, the batch is computed with plain
//! wrapping arithmetic, which gives the same values; when it can, Arrow's checked kernel runs
//! and raises the same error as before.
//!
//! An optimizer rule ([`DecimalArithmetic`]) replaces `a + b`, `a - b` and `a * b` whose sides
//! are both DECIMAL (after type coercion) with calls of [`DecimalOp`], keeping every column's
//! name and type.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array};
use arrow::compute::kernels::numeric;
use arrow::datatypes::{DataType, Decimal128Type};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// Adds the rule to a session's optimizer.
pub fn configure(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder.with_optimizer_rule(Arc::new(DecimalArithmetic::default()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Subtract,
    Multiply,
}

impl Op {
    fn of(operator: Operator) -> Option<Op> {
        match operator {
            Operator::Plus => Some(Op::Add),
            Operator::Minus => Some(Op::Subtract),
            Operator::Multiply => Some(Op::Multiply),
            _ => None,
        }
    }

    fn operator(self) -> Operator {
        match self {
            Op::Add => Operator::Plus,
            Op::Subtract => Operator::Minus,
            Op::Multiply => Operator::Multiply,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Add => "__tributary_decimal_add",
            Op::Subtract => "__tributary_decimal_subtract",
            Op::Multiply => "__tributary_decimal_multiply",
        }
    }

    /// Arrow's checked kernel: the result when some value may overflow, and its error.
    fn checked(
        self,
        l: &dyn arrow::array::Datum,
        r: &dyn arrow::array::Datum,
    ) -> DfResult<ArrayRef> {
        Ok(match self {
            Op::Add => numeric::add(l, r)?,
            Op::Subtract => numeric::sub(l, r)?,
            Op::Multiply => numeric::mul(l, r)?,
        })
    }
}

/// `l op r` for two DECIMAL values, as DataFusion's operator computes it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DecimalOp {
    op: Op,
    signature: Signature,
}

impl DecimalOp {
    fn new(op: Op) -> Self {
        Self {
            op,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DecimalOp {
    fn name(&self) -> &str {
        self.op.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        BinaryTypeCoercer::new(&args[0], &self.op.operator(), &args[1]).get_result_type()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [l, r] = &args.args[..] else {
            return datafusion::common::exec_err!("{} takes two arguments", self.name());
        };
        let scalar = matches!((l, r), (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)));
        let side = |value: &ColumnarValue| -> DfResult<(ArrayRef, bool)> {
            Ok(match value {
                ColumnarValue::Array(array) => (array.clone(), false),
                ColumnarValue::Scalar(value) => (value.to_array_of_size(1)?, true),
            })
        };
        let ((l, l_scalar), (r, r_scalar)) = (side(l)?, side(r)?);
        let result = match unchecked(self.op, &l, l_scalar, &r, r_scalar) {
            Some(result) => result,
            None => {
                let datum = |array: &ArrayRef, scalar: bool| -> Box<dyn arrow::array::Datum> {
                    if scalar {
                        Box::new(arrow::array::Scalar::new(array.clone()))
                    } else {
                        Box::new(array.clone())
                    }
                };
                self.op
                    .checked(datum(&l, l_scalar).as_ref(), datum(&r, r_scalar).as_ref())?
            }
        };
        let result = match (result.data_type(), args.return_field.data_type()) {
            // The same scale: the values stand, only the declared precision changes.
            (DataType::Decimal128(_, scale), DataType::Decimal128(p, s)) if scale == s => Arc::new(
                result
                    .as_primitive::<Decimal128Type>()
                    .clone()
                    .with_precision_and_scale(*p, *s)?,
            ),
            (_, data_type) => arrow::compute::cast(&result, data_type)?,
        };
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?)
        } else {
            ColumnarValue::Array(result)
        })
    }
}

/// The largest magnitude among `values` (null slots included: that only makes the bound
/// safer).
fn largest(values: &Decimal128Array) -> u128 {
    values
        .values()
        .iter()
        .fold(0u128, |most, v| most.max(v.unsigned_abs()))
}

/// `l op r` with plain arithmetic, as DECIMAL(38, the result's scale), if no value can
/// overflow; None otherwise (or for operands that are not both DECIMAL(p, s) of 128 bits).
fn unchecked(
    op: Op,
    l: &ArrayRef,
    l_scalar: bool,
    r: &ArrayRef,
    r_scalar: bool,
) -> Option<ArrayRef> {
    let (DataType::Decimal128(_, s1), DataType::Decimal128(_, s2)) = (l.data_type(), r.data_type())
    else {
        return None;
    };
    let (l, r) = (
        l.as_primitive::<Decimal128Type>(),
        r.as_primitive::<Decimal128Type>(),
    );
    let limit = i128::MAX as u128;
    let (scale, l_mul, r_mul) = match op {
        Op::Multiply => (s1.checked_add(*s2)?, 1, 1),
        Op::Add | Op::Subtract => {
            let scale = (*s1).max(*s2);
            (
                scale,
                10i128.checked_pow(u32::try_from(scale - s1).ok()?)?,
                10i128.checked_pow(u32::try_from(scale - s2).ok()?)?,
            )
        }
    };
    let data_type = DataType::Decimal128(38, scale);
    let nulls = |len: usize| Some(arrow::array::new_null_array(&data_type, len));
    let (l_most, r_most) = (largest(l), largest(r));
    let bound = match op {
        Op::Multiply => l_most.checked_mul(r_most)?,
        Op::Add | Op::Subtract => l_most
            .checked_mul(l_mul as u128)?
            .checked_add(r_most.checked_mul(r_mul as u128)?)?,
    };
    if bound > limit {
        return None;
    }
    let apply = move |a: i128, b: i128| match op {
        Op::Add => a * l_mul + b * r_mul,
        Op::Subtract => a * l_mul - b * r_mul,
        Op::Multiply => a * b,
    };
    // No value overflows: plain arithmetic is exact, and vectorizes.
    let result: Decimal128Array = match (l_scalar, r_scalar) {
        (false, false) => arrow::compute::binary(l, r, apply).ok()?,
        (true, false) => {
            if l.is_null(0) {
                return nulls(r.len());
            }
            let a = l.value(0);
            r.unary(|b| apply(a, b))
        }
        (false, true) => {
            if r.is_null(0) {
                return nulls(l.len());
            }
            let b = r.value(0);
            l.unary(|a| apply(a, b))
        }
        (true, true) => {
            if l.is_null(0) || r.is_null(0) {
                return nulls(1);
            }
            Decimal128Array::from(vec![apply(l.value(0), r.value(0))])
        }
    };
    Some(Arc::new(result.with_precision_and_scale(38, scale).ok()?))
}

/// Replaces DECIMAL `+`, `-` and `*` with [`DecimalOp`] calls.
#[derive(Debug)]
pub struct DecimalArithmetic {
    add: Arc<ScalarUDF>,
    subtract: Arc<ScalarUDF>,
    multiply: Arc<ScalarUDF>,
}

impl Default for DecimalArithmetic {
    fn default() -> Self {
        let udf = |op| Arc::new(ScalarUDF::new_from_impl(DecimalOp::new(op)));
        Self {
            add: udf(Op::Add),
            subtract: udf(Op::Subtract),
            multiply: udf(Op::Multiply),
        }
    }
}

impl DecimalArithmetic {
    fn udf(&self, op: Op) -> Arc<ScalarUDF> {
        match op {
            Op::Add => self.add.clone(),
            Op::Subtract => self.subtract.clone(),
            Op::Multiply => self.multiply.clone(),
        }
    }

    fn rewrite_expr(&self, expr: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
        expr.transform_up(|expr| {
            let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &expr else {
                return Ok(Transformed::no(expr));
            };
            let Some(decimal_op) = Op::of(*op) else {
                return Ok(Transformed::no(expr));
            };
            let is_decimal = |e: &Expr| matches!(e.get_type(schema), Ok(DataType::Decimal128(..)));
            if !(is_decimal(left) && is_decimal(right)) {
                return Ok(Transformed::no(expr));
            }
            let Expr::BinaryExpr(BinaryExpr { left, right, .. }) = expr else {
                unreachable!("matched above")
            };
            Ok(Transformed::yes(Expr::ScalarFunction(
                ScalarFunction::new_udf(self.udf(decimal_op), vec![*left, *right]),
            )))
        })
    }
}

impl OptimizerRule for DecimalArithmetic {
    fn name(&self) -> &str {
        "tributary_decimal_arithmetic"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        // Expressions refer to the inputs' columns (a scan's filters to its own).
        let schema = match plan.inputs().as_slice() {
            [] => plan.schema().as_ref().clone(),
            inputs => {
                let mut merged = DFSchema::empty();
                for input in inputs {
                    merged.merge(input.schema());
                }
                merged
            }
        };
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let name = names.save(&expr);
            let rewritten = self.rewrite_expr(expr, &schema)?;
            Ok(rewritten.update_data(|expr| name.restore(expr)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Decimal128Array;

    fn decimals(values: &[Option<i128>], p: u8, s: i8) -> ArrayRef {
        Arc::new(
            values
                .iter()
                .copied()
                .collect::<Decimal128Array>()
                .with_precision_and_scale(p, s)
                .unwrap(),
        )
    }

    /// The values with their scale, whatever the declared precision.
    fn values(array: &ArrayRef) -> (Vec<Option<i128>>, i8) {
        let DataType::Decimal128(_, scale) = array.data_type() else {
            panic!("{}", array.data_type())
        };
        (
            array.as_primitive::<Decimal128Type>().iter().collect(),
            *scale,
        )
    }

    #[test]
    fn unchecked_arithmetic_matches_arrows_and_falls_back_near_overflow() {
        let l = decimals(&[Some(12345), None, Some(-99999), Some(1)], 12, 2);
        let r = decimals(&[Some(7), Some(3), Some(-250), None], 13, 3);
        for op in [Op::Add, Op::Subtract, Op::Multiply] {
            let fast = unchecked(op, &l, false, &r, false).expect("no overflow possible");
            let checked = op.checked(&l, &r).unwrap();
            assert_eq!(values(&fast), values(&checked), "{op:?}");
        }
        // A scalar side, as `1 - l_discount` has.
        let one = decimals(&[Some(100)], 20, 2);
        let fast = unchecked(Op::Subtract, &one, true, &l, false).unwrap();
        let checked = Op::Subtract
            .checked(&arrow::array::Scalar::new(one.clone()), &l)
            .unwrap();
        assert_eq!(values(&fast), values(&checked));
        // Products that may overflow 128 bits take Arrow's checked kernel, and its error.
        let huge = decimals(&[Some(10i128.pow(37)), Some(2)], 38, 0);
        assert!(unchecked(Op::Multiply, &huge, false, &huge, false).is_none());
        assert!(Op::Multiply.checked(&huge, &huge).is_err());
        let extreme = decimals(&[Some(i128::MAX)], 38, 0);
        assert!(unchecked(Op::Add, &extreme, false, &extreme, false).is_none());
    }
}
