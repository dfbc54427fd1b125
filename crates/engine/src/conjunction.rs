//! Filters with several conditions (`a AND b AND c`), evaluated as a filter reads them.
//!
//! DataFusion evaluates `a AND b AND c` as one binary expression per AND. When at most a
//! fifth of the rows pass the left side, it evaluates the right side on those rows only, then
//! spreads the answers back over the whole batch one run of passing rows at a time. Passing
//! rows seldom come in runs, so the spreading costs a slice per passing row, and a chain of
//! ANDs pays it at every AND: TPC-H's Q6 spent a third of its time there.
//!
//! A filter's AND chain becomes one [`FilterConjunction`] (by the [`FilterConjunctions`]
//! rule, after DataFusion's own rules): while many rows pass, each condition is evaluated on
//! the whole batch and the answers are combined as bitmaps; once at most a fifth pass, the
//! batch is cut to those rows once, and the later conditions see only them. A filter keeps
//! the rows whose predicate is true, so a NULL condition counts as false here: the
//! expression answers true or false, and is only ever a `FilterExec`'s predicate.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::buffer::{BooleanBuffer, MutableBuffer};
use arrow::compute::{filter, filter_record_batch};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::split_conjunction;
use datafusion::physical_expr::{PhysicalExpr, expressions::BinaryExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

/// Once at most this fraction of a batch's rows pass, the later conditions see only those
/// rows: DataFusion's threshold for the same choice.
const CUT_FRACTION: f64 = 0.2;

/// Adds the rule to a session's physical optimizer, after DataFusion's rules.
pub fn configure(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder.with_physical_optimizer_rule(Arc::new(FilterConjunctions))
}

/// Replaces the predicate of every filter whose predicate is an AND chain with a
/// [`FilterConjunction`] of its conditions.
#[derive(Debug, Default)]
pub struct FilterConjunctions;

impl PhysicalOptimizerRule for FilterConjunctions {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let conjuncts: Vec<_> = split_conjunction(filter.predicate())
                .into_iter()
                .cloned()
                .collect();
            if conjuncts.len() < 2 {
                return Ok(Transformed::no(node));
            }
            let rebuilt = FilterExecBuilder::from(filter)
                .with_predicate(Arc::new(FilterConjunction { conjuncts }))
                .build()?;
            Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "filter_conjunctions"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The conditions of a filter, all of which a row must meet: true where every one is true,
/// false elsewhere (NULL included).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FilterConjunction {
    conjuncts: Vec<Arc<dyn PhysicalExpr>>,
}

impl FilterConjunction {
    /// The conditions, in the order they are evaluated.
    pub fn conjuncts(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.conjuncts
    }
}

/// Where a condition's answer is true, as a bitmap of `rows` bits: NULL counts as false.
fn held(answer: ColumnarValue, rows: usize) -> DfResult<BooleanBuffer> {
    Ok(match answer {
        ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))) => BooleanBuffer::new_set(rows),
        ColumnarValue::Scalar(_) => BooleanBuffer::new_unset(rows),
        ColumnarValue::Array(array) => {
            let answers = array.as_boolean_opt().ok_or_else(|| {
                datafusion::common::DataFusionError::Internal(format!(
                    "a filter condition answered {}, not BOOLEAN",
                    array.data_type()
                ))
            })?;
            match answers.nulls() {
                Some(nulls) => answers.values() & nulls.inner(),
                None => answers.values().clone(),
            }
        }
    })
}

/// A bitmap of `rows` bits, set at `positions`.
fn bitmap_of(positions: &UInt32Array, rows: usize) -> BooleanBuffer {
    let mut bits = MutableBuffer::new_null(rows);
    let bytes = bits.as_slice_mut();
    for &position in positions.values() {
        arrow::util::bit_util::set_bit(bytes, position as usize);
    }
    BooleanBuffer::new(bits.into(), 0, rows)
}

impl PhysicalExpr for FilterConjunction {
    fn data_type(&self, _input_schema: &Schema) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, _input_schema: &Schema) -> DfResult<bool> {
        Ok(false)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let rows = batch.num_rows();
        let last = self.conjuncts.len().saturating_sub(1);
        // The rows that met every condition so far: a bitmap over the batch (None: all of
        // them) while many do, then their positions beside the batch cut down to them.
        let mut passing: Option<BooleanBuffer> = None;
        let mut cut: Option<(RecordBatch, UInt32Array)> = None;
        for (index, conjunct) in self.conjuncts.iter().enumerate() {
            if let Some((rows_left, positions)) = cut.as_mut() {
                let met = held(conjunct.evaluate(rows_left)?, rows_left.num_rows())?;
                if met.count_set_bits() == met.len() {
                    continue;
                }
                let met = BooleanArray::new(met, None);
                *positions = filter(positions, &met)?
                    .as_primitive::<arrow::datatypes::UInt32Type>()
                    .clone();
                if positions.is_empty() {
                    return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))));
                }
                if index < last {
                    *rows_left = filter_record_batch(rows_left, &met)?;
                }
                continue;
            }
            let met = held(conjunct.evaluate(batch)?, rows)?;
            let now = match passing.take() {
                Some(before) => &before & &met,
                None => met,
            };
            let count = now.count_set_bits();
            if count == 0 {
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))));
            }
            if index < last && count < rows && (count as f64) <= CUT_FRACTION * rows as f64 {
                let positions = UInt32Array::from_iter_values(now.set_indices().map(|p| p as u32));
                let mask = BooleanArray::new(now, None);
                cut = Some((filter_record_batch(batch, &mask)?, positions));
                continue;
            }
            passing = Some(now);
        }
        let result = match (cut, passing) {
            (Some((_, positions)), _) => bitmap_of(&positions, rows),
            (None, Some(passing)) => passing,
            (None, None) => BooleanBuffer::new_set(rows),
        };
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            result, None,
        ))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.conjuncts.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(FilterConjunction {
            conjuncts: children,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_conjuncts(f, |conjunct, f| conjunct.fmt_sql(f))
    }
}

impl FilterConjunction {
    /// Writes the conditions joined by AND as DataFusion writes an AND chain: a condition
    /// that binds less tightly than AND (an OR) in parentheses.
    fn write_conjuncts(
        &self,
        f: &mut fmt::Formatter<'_>,
        write: impl Fn(&Arc<dyn PhysicalExpr>, &mut fmt::Formatter<'_>) -> fmt::Result,
    ) -> fmt::Result {
        for (index, conjunct) in self.conjuncts.iter().enumerate() {
            if index > 0 {
                f.write_str(" AND ")?;
            }
            let looser = conjunct
                .downcast_ref::<BinaryExpr>()
                .is_some_and(|binary| binary.op().precedence() < Operator::And.precedence());
            if looser {
                f.write_str("(")?;
                write(conjunct, f)?;
                f.write_str(")")?;
            } else {
                write(conjunct, f)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for FilterConjunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_conjuncts(f, |conjunct, f| write!(f, "{conjunct}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;
    use datafusion::prelude::SessionContext;

    /// Conditions that pass many rows, few rows, none, and NULLs, in every order, give the
    /// rows DataFusion's own AND chain gives.
    #[tokio::test]
    async fn a_filter_keeps_the_rows_an_and_chain_keeps() {
        let rows = 10_000i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, true),
            Field::new("s", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (0..rows).map(|i| i * 7919 % 1000),
                )),
                Arc::new(Int64Array::from_iter(
                    (0..rows).map(|i| (i % 13 != 0).then_some(i % 100)),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("s{}", i % 7)),
                )),
            ],
        )
        .unwrap();
        let conditions = [
            "a < 900",
            "a < 150",
            "b > 40",
            "b IS NULL OR a > 990",
            "s <> 's3'",
            "a >= 100",
            "a > 5000",
        ];
        let mut predicates = Vec::new();
        for first in conditions {
            for second in conditions {
                predicates.push(format!("{first} AND {second}"));
                for third in ["s = 's1'", "b < 90", "a % 2 = 0"] {
                    predicates.push(format!("{first} AND {second} AND ({third})"));
                }
            }
        }
        let plain = SessionContext::new();
        plain.register_batch("t", batch.clone()).unwrap();
        let state =
            configure(datafusion::execution::SessionStateBuilder::new().with_default_features())
                .build();
        let ours = SessionContext::new_with_state(state);
        ours.register_batch("t", batch).unwrap();
        let mut rewritten = 0;
        for predicate in &predicates {
            let sql = format!("SELECT a, b, s FROM t WHERE {predicate} ORDER BY a, b, s");
            let expected = plain.sql(&sql).await.unwrap().collect().await.unwrap();
            let frame = ours.sql(&sql).await.unwrap();
            let plan = frame.clone().create_physical_plan().await.unwrap();
            let text = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(false)
                .to_string();
            let found = plan
                .transform_up(|node| {
                    let conjunction = node
                        .downcast_ref::<FilterExec>()
                        .is_some_and(|f| f.predicate().is::<FilterConjunction>());
                    Ok(Transformed::new(
                        node,
                        conjunction,
                        datafusion::common::tree_node::TreeNodeRecursion::Continue,
                    ))
                })
                .unwrap()
                .transformed;
            rewritten += usize::from(found);
            let got = frame.collect().await.unwrap();
            let print = |batches: &[RecordBatch]| {
                arrow::util::pretty::pretty_format_batches(batches)
                    .unwrap()
                    .to_string()
            };
            assert!(print(&got) == print(&expected), "{predicate}\n{text}");
        }
        // DataFusion simplifies some chains to one condition (a < 150 AND a < 900); the
        // rest run through the conjunction.
        assert!(rewritten > predicates.len() / 2, "{rewritten}");
    }

    /// A batch where few rows pass the first condition is cut once, and the later
    /// conditions see only those rows: their answers land at the right places.
    #[test]
    fn later_conditions_see_only_the_rows_that_passed() {
        use datafusion::physical_expr::expressions::{col, lit};
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..1000))],
        )
        .unwrap();
        let a = col("a", &schema).unwrap();
        let compare = |op, value: i64| -> Arc<dyn PhysicalExpr> {
            Arc::new(BinaryExpr::new(a.clone(), op, lit(value)))
        };
        let conjunction = FilterConjunction {
            conjuncts: vec![
                compare(Operator::Lt, 100),
                compare(Operator::GtEq, 10),
                compare(Operator::NotEq, 50),
            ],
        };
        let answer = conjunction
            .evaluate(&batch)
            .unwrap()
            .into_array(1000)
            .unwrap();
        let kept: Vec<usize> = answer
            .as_boolean()
            .values()
            .set_indices()
            .collect::<Vec<_>>();
        let expected: Vec<usize> = (10..100).filter(|i| *i != 50).collect();
        assert_eq!(kept, expected);
        assert_eq!(
            conjunction.to_string(),
            "a@0 < 100 AND a@0 >= 10 AND a@0 != 50"
        );
    }
}
