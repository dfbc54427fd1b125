//! A mirror table's storage. A mirror's Delta table holds exactly its live rows, in the
//! declared columns: any Delta reader sees what `SELECT *` shows. Beside it, its key table
//! (a Delta table of its own, pinned in the same catalog commit) holds every key the mirror
//! has seen with the newest change's ordering value ([`ORDER_COLUMN`]: a BIGINT when the
//! values are a declared integer column's, else bytes whose order is the values' order) and
//! whether that change deleted it ([`DELETED_COLUMN`]): a change
//! older than the key's is ignored, so that changes delivered late or twice cannot bring back
//! an older row or a deleted key. The streaming layer writes both.
//!
//! Mirrors stored by earlier releases keep base rows and stored changes in one table with
//! hidden columns, merged by readers ([`reader`]); their next round converts them.

use std::sync::Arc;

use arrow::array::{Array, BinaryArray, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::catalog::view::ViewTable;
use datafusion::datasource::provider_as_source;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{
    ColumnarValue, JoinType, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, TableSource, TypeSignature, Volatility, col, lit,
};
use datafusion::prelude::Expr;
use tributary_catalog::{ChangeFormat, MirrorSpec, SqlType, Table};

use crate::{Error, Result};

/// The hidden column holding a change's ordering value ([`order_type`]).
pub const ORDER_COLUMN: &str = "__tributary_order";
/// The hidden column marking a deleted key (a tombstone).
pub const DELETED_COLUMN: &str = "__tributary_deleted";
/// The hidden column: 0 for a folded base row, else the change's apply sequence.
pub const SEQUENCE_COLUMN: &str = "__tributary_sequence";

/// The Delta table path of the key table of the mirror stored at `path`: beside it, under a
/// name no table path takes (those end in their id).
pub fn key_table_path(path: &str) -> String {
    format!("{path}-keys")
}

/// True for a mirror stored by an earlier release (base rows and changes with hidden
/// columns, no key table).
pub fn is_legacy(table: &Table) -> bool {
    spec(table).is_some_and(|s| s.keys.is_none())
}

/// Whether a new mirror's key table holds its ordering values as BIGINT: when they are the
/// values of a declared SMALLINT, INTEGER or BIGINT column of a flat row (`FORMAT OPERATION
/// ... ORDER BY column`). A BIGINT reads and compares at a fraction of the cost of the
/// order-preserving bytes every other ordering value takes (a number in decimal digits, a
/// text, a stream position of 56 digits), and a round reads a page of it per changed key.
pub fn orders_as_integers(table: &Table, spec: &MirrorSpec) -> bool {
    let (ChangeFormat::Operation { .. }, Some([path])) = (&spec.format, spec.order.as_deref())
    else {
        return false;
    };
    table.column(path).is_some_and(|c| {
        matches!(
            c.sql_type,
            SqlType::SmallInt | SqlType::Integer | SqlType::BigInt
        )
    })
}

/// The type of a mirror's stored ordering values: BIGINT when its key table says so
/// ([`orders_as_integers`]), else order-preserving bytes.
pub fn order_type(spec: &MirrorSpec) -> DataType {
    if spec.keys.as_ref().is_some_and(|k| k.integer_order) {
        DataType::Int64
    } else {
        DataType::Binary
    }
}

/// The key table's schema: the key columns in their stored types, the ordering value and the
/// deletion mark.
pub fn key_schema(table: &Table, spec: &MirrorSpec) -> Schema {
    let keys = spec
        .key
        .iter()
        .filter_map(|k| table.column(k))
        .map(|c| Field::new(&c.name, c.sql_type.to_storage_arrow(), false));
    Schema::new(
        keys.chain([
            Field::new(ORDER_COLUMN, order_type(spec), false),
            Field::new(DELETED_COLUMN, DataType::Boolean, false),
        ])
        .collect::<Vec<_>>(),
    )
}

/// The rows a round applies to a mirror: the declared columns in their stored types
/// (nullable: a deletion carries its key only), then the ordering value and the deletion
/// mark.
pub fn change_schema(table: &Table, spec: &MirrorSpec) -> Schema {
    Schema::new(
        table
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.sql_type.to_storage_arrow(), true))
            .chain([
                Field::new(ORDER_COLUMN, order_type(spec), false),
                Field::new(DELETED_COLUMN, DataType::Boolean, false),
            ])
            .collect::<Vec<_>>(),
    )
}

/// The hidden columns of a legacy mirror's Delta table, after the declared ones.
pub fn hidden_fields() -> Vec<Field> {
    vec![
        Field::new(ORDER_COLUMN, DataType::Binary, true),
        Field::new(DELETED_COLUMN, DataType::Boolean, true),
        Field::new(SEQUENCE_COLUMN, DataType::Int64, true),
    ]
}

/// The mirror part of a table's definition, if it is a mirror table.
pub fn spec(table: &Table) -> Option<&MirrorSpec> {
    table.materialized.as_ref()?.mirror.as_ref()
}

/// Refuses a client's write (INSERT, COPY, UPDATE, DELETE, MERGE, TRUNCATE, ALTER of
/// columns) to a mirror table: its rows come from its change stream.
pub fn refuse_write(table: &Table, name: &str) -> Result<()> {
    match spec(table) {
        Some(_) => Err(Error::WrongObjectType(format!(
            "cannot change mirror table \"{name}\": its rows come from its change stream"
        ))),
        None => Ok(()),
    }
}

/// The table readers of a legacy mirror see: the merge of the base rows and the stored
/// changes.
pub fn reader(delta: Arc<dyn TableProvider>, table: &Table) -> Result<Arc<dyn TableProvider>> {
    let spec = spec(table).ok_or_else(|| Error::Internal("not a mirror table".into()))?;
    let plan = merged_plan(delta, table, spec, false)?;
    Ok(Arc::new(MergedTable(ViewTable::new(plan, None))))
}

/// The merge plan as a table. Its joins are planned without dynamic filters: the query's
/// physical optimizer runs again over the planned merge and may swap a join's inputs, which
/// DataFusion refuses once the join has a dynamic filter.
#[derive(Debug)]
struct MergedTable(ViewTable);

#[async_trait::async_trait]
impl TableProvider for MergedTable {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        self.0.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>>
    {
        self.0.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let Some(session) = state.as_any().downcast_ref::<SessionState>() else {
            return self.0.scan(state, projection, filters, limit).await;
        };
        let mut config = session.config().clone();
        config
            .options_mut()
            .optimizer
            .enable_join_dynamic_filter_pushdown = false;
        let session = SessionStateBuilder::new_from_existing(session.clone())
            .with_config(config)
            .build();
        self.0.scan(&session, projection, filters, limit).await
    }
}

/// The merge of base rows and stored changes: with `fold`, every column and the tombstones,
/// as a new base (sequence 0); else the declared columns of the live rows.
pub fn merged_plan(
    delta: Arc<dyn TableProvider>,
    table: &Table,
    spec: &MirrorSpec,
    fold: bool,
) -> Result<LogicalPlan> {
    let source = provider_as_source(delta);
    let base = |alias: &str| -> Result<LogicalPlanBuilder> {
        Ok(LogicalPlanBuilder::scan(alias, source.clone(), None)?
            .filter(col(SEQUENCE_COLUMN).eq(lit(0i64)))?)
    };
    let latest = newest_changes(&source, table, spec)?;
    let same_key = |left: &str, right: &str| -> Vec<Expr> {
        spec.key
            .iter()
            .map(|k| column(left, k).eq(column(right, k)))
            .collect()
    };
    let order = |alias: &str| column(alias, ORDER_COLUMN);
    // When no stored change is older than the newest base row (the usual case: changes arrive
    // in order), a stored change always supersedes its key's base row.
    let in_order = match (&spec.changes_oldest, &spec.base_newest) {
        (Some(oldest), Some(newest)) => oldest >= newest,
        _ => true,
    };
    // Base rows no stored change of their key supersedes...
    let mut on = same_key("b", "l");
    if !in_order {
        on.push(order("l").gt_eq(order("b")));
    }
    let kept_base = base("b")?.join_on(latest.clone(), JoinType::LeftAnti, on)?;
    // ...and the newest changes no base row supersedes.
    let kept_changes = if in_order {
        LogicalPlanBuilder::from(latest)
    } else {
        let mut on = same_key("l", "b");
        on.push(order("b").gt(order("l")));
        LogicalPlanBuilder::from(latest).join_on(base("b")?.build()?, JoinType::LeftAnti, on)?
    };
    let output = |builder: LogicalPlanBuilder, alias: &str| -> Result<LogicalPlan> {
        let columns = table
            .columns
            .iter()
            .map(|c| column(alias, &c.name).alias(c.name.clone()));
        let builder = if fold {
            let hidden = [
                column(alias, ORDER_COLUMN).alias(ORDER_COLUMN),
                column(alias, DELETED_COLUMN).alias(DELETED_COLUMN),
                lit(0i64).alias(SEQUENCE_COLUMN),
            ];
            builder.project(columns.chain(hidden))?
        } else {
            builder
                .filter(column(alias, DELETED_COLUMN).eq(lit(false)))?
                .project(columns)?
        };
        Ok(builder.build()?)
    };
    let plan = LogicalPlanBuilder::from(output(kept_base, "b")?)
        .union(output(kept_changes, "l")?)?
        .build()?;
    Ok(plan)
}

/// The newest stored change of each key (tombstones included), every stored column, as
/// relation "l".
pub fn newest_changes(
    source: &Arc<dyn TableSource>,
    table: &Table,
    spec: &MirrorSpec,
) -> Result<LogicalPlan> {
    let all_columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| c.name.clone())
        .chain([ORDER_COLUMN, DELETED_COLUMN, SEQUENCE_COLUMN].map(String::from))
        .collect();
    let keys: Vec<Expr> = spec.key.iter().map(|k| column("n", k)).collect();
    // The newest stored change of each key: the change whose (order, sequence) is the key's
    // greatest. A hash aggregate and a join, because a window partitioned by key costs a
    // partition's state per key, many times more with a million stored changes.
    let rank = || newest_rank().call(vec![col(ORDER_COLUMN), col(SEQUENCE_COLUMN)]);
    let changes = |alias: &str| -> Result<LogicalPlanBuilder> {
        Ok(LogicalPlanBuilder::scan(alias, source.clone(), None)?
            .filter(col(SEQUENCE_COLUMN).gt(lit(0i64)))?)
    };
    let newest = changes("n")?
        .aggregate(
            keys,
            vec![datafusion::functions_aggregate::expr_fn::max(rank()).alias(RANK_COLUMN)],
        )?
        .alias("n")?
        .build()?;
    let mut on: Vec<Expr> = spec
        .key
        .iter()
        .map(|k| column("c", k).eq(column("n", k)))
        .collect();
    on.push(column("c", RANK_COLUMN).eq(column("n", RANK_COLUMN)));
    let latest = changes("c")?
        .project(
            all_columns
                .iter()
                .map(|c| column("c", c))
                .chain([rank().alias(RANK_COLUMN)]),
        )?
        .alias("c")?
        .join_on(newest, JoinType::LeftSemi, on)?
        .project(all_columns.iter().map(|c| column("c", c)))?
        .alias("l")?
        .build()?;
    Ok(latest)
}

/// A column of a relation in the merge plan, by its exact name.
pub fn column(relation: &str, name: &str) -> Expr {
    Expr::Column(datafusion::common::Column::new(Some(relation), name))
}

/// The merge plan's name for a change's rank (see [`NewestRank`]).
const RANK_COLUMN: &str = "__tributary_rank";

/// The function ranking a key's stored changes for the merge plan.
fn newest_rank() -> Arc<ScalarUDF> {
    static FUNCTION: std::sync::OnceLock<Arc<ScalarUDF>> = std::sync::OnceLock::new();
    FUNCTION
        .get_or_init(|| {
            Arc::new(ScalarUDF::new_from_impl(NewestRank {
                signature: Signature::one_of(
                    [DataType::Binary, DataType::BinaryView]
                        .map(|order| TypeSignature::Exact(vec![order, DataType::Int64]))
                        .to_vec(),
                    Volatility::Immutable,
                ),
            }))
        })
        .clone()
}

/// `(order, sequence)` as one binary value whose byte order is the pairs' order, so that
/// `max` finds a key's newest change: the order bytes escaped to be prefix-free (0x00 becomes
/// 0x00 0xFF, then a 0x00 0x00 terminator), then the sequence big-endian.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NewestRank {
    signature: Signature,
}

impl ScalarUDFImpl for NewestRank {
    fn name(&self) -> &str {
        "__tributary_newest_rank"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Binary)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let orders = arrow::compute::cast(&arrays[0], &DataType::Binary)?;
        let orders = orders.as_any().downcast_ref::<BinaryArray>();
        let sequences = arrays[1].as_any().downcast_ref::<Int64Array>();
        let (Some(orders), Some(sequences)) = (orders, sequences) else {
            return datafusion::common::exec_err!("__tributary_newest_rank takes binary, bigint");
        };
        let mut ranks = arrow::array::BinaryBuilder::with_capacity(
            orders.len(),
            orders.values().len() + orders.len() * 10,
        );
        let mut rank = Vec::new();
        for (order, sequence) in orders.iter().zip(sequences.iter()) {
            rank.clear();
            for &byte in order.unwrap_or_default() {
                rank.push(byte);
                if byte == 0 {
                    rank.push(0xFF);
                }
            }
            rank.extend_from_slice(&[0, 0]);
            rank.extend_from_slice(&sequence.unwrap_or_default().to_be_bytes());
            ranks.append_value(&rank);
        }
        Ok(ColumnarValue::Array(Arc::new(ranks.finish())))
    }
}
