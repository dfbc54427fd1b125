//! A streaming view's query, planned once by DataFusion over a batch of stream records, and run
//! over each micro-batch. A batch that fails is split until the failing records are isolated:
//! they are skipped (and reported), and every other record of the batch goes through.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, Ident, ObjectName, Query, SetExpr, TableAlias, TableFactor,
    visit_expressions_mut,
};
use parking_lot::Mutex;
use tributary_catalog::{CatalogState, Column};
use tributary_syntax::names::normalize_ident;

use crate::host::{Host, PrivateSession};
use crate::{Error, Result};

/// The name the stream's records go by while a view's query runs (in the private session's
/// temporary schema).
const INPUT: &str = "__tributary_stream";

/// The stream a view reads: its external schema and the stream's case-sensitive name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub schema: String,
    pub stream: String,
    /// A Kafka topic (else a Kinesis stream).
    pub kafka: bool,
}

/// Column names of the preview of Redshift streaming ingestion (used in older posts and
/// Etleap's), folded to lower case, and the metadata columns they mean.
const PREVIEW_NAMES: &[(&str, &str)] = &[
    (
        "approximatearrivaltimestamp",
        "approximate_arrival_timestamp",
    ),
    ("partitionkey", "partition_key"),
    ("shardid", "shard_id"),
    ("sequencenumber", "sequence_number"),
    ("refreshtime", "refresh_time"),
    ("data", "kinesis_data"),
];

/// Finds the stream a view's query reads, and points the query at the batch input instead.
/// Only one stream, with no joins, as in Redshift.
pub fn bind_stream(
    query: &mut Query,
    state: &CatalogState,
    database: &str,
    default_schema: &str,
) -> Result<StreamRef> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(Error::NotSupported(
            "a streaming materialized view must be a single SELECT from one stream".into(),
        ));
    };
    let [from] = select.from.as_mut_slice() else {
        return Err(Error::NotSupported(
            "a streaming materialized view reads exactly one stream (no joins); join the view with other tables in a view over it".into(),
        ));
    };
    if !from.joins.is_empty() {
        return Err(Error::NotSupported(
            "a streaming materialized view cannot join; join the view with other tables in a view over it".into(),
        ));
    }
    let TableFactor::Table { name, alias, .. } = &mut from.relation else {
        return Err(Error::NotSupported(
            "a streaming materialized view must read a stream of an external schema".into(),
        ));
    };
    let parts: Vec<Ident> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().cloned())
        .collect();
    let (schema, stream) = match parts.as_slice() {
        [stream] => (default_schema.to_string(), stream.clone()),
        [schema, stream] => (normalize_ident(schema), stream.clone()),
        [db, schema, stream] if normalize_ident(db) == database => {
            (normalize_ident(schema), stream.clone())
        }
        _ => {
            return Err(Error::NotSupported(format!(
                "cannot read \"{name}\": not a stream of an external schema in this database"
            )));
        }
    };
    let external = state
        .schema(database, &schema)
        .ok()
        .and_then(|s| s.external.as_ref());
    let kafka = external.is_some_and(|e| e.is_kafka());
    if external.is_none() {
        return Err(Error::NotSupported(format!(
            "a streaming materialized view reads one stream and nothing else: \"{name}\" is not a stream of an external schema (join the view with tables in a view over it)"
        )));
    }
    // Stream names are case-sensitive: a quoted name keeps its case, an unquoted one is
    // folded like any identifier.
    let stream_name = normalize_ident(&stream);
    if alias.is_none() {
        *alias = Some(TableAlias {
            explicit: true,
            name: Ident::with_quote('"', stream.value.clone()),
            columns: vec![],
            at: None,
        });
    }
    *name = ObjectName::from(vec![
        Ident::new(tributary_engine::catalog_list::TEMP_SCHEMA),
        Ident::new(INPUT),
    ]);
    let _ = visit_expressions_mut(query, |expr| {
        let ident = match expr {
            SqlExpr::Identifier(ident) => Some(ident),
            SqlExpr::CompoundIdentifier(parts) => parts.last_mut(),
            _ => None,
        };
        if let Some(ident) = ident {
            let folded = ident.value.to_ascii_lowercase();
            if let Some((_, canonical)) = PREVIEW_NAMES.iter().find(|(old, _)| *old == folded) {
                *ident = Ident::new(*canonical);
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    Ok(StreamRef {
        schema,
        stream: stream_name,
        kafka,
    })
}

/// Records of one micro-batch, as the view's query sees them.
#[derive(Debug)]
struct StreamInput {
    schema: SchemaRef,
    batches: Mutex<Vec<RecordBatch>>,
}

#[async_trait]
impl TableProvider for StreamInput {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batches = self.batches.lock().clone();
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// True if every leaf of `plan` is the stream input (an in-memory source over `input`) and no
/// operator keeps state across rows (aggregates, joins, sorts, windows).
fn is_stateless_over(plan: &Arc<dyn ExecutionPlan>, input: &SchemaRef) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut stateless = true;
    let _ = plan.apply(|node| {
        let children = node.children().len();
        let name = node.name();
        let is_input = memory_source(node).is_some_and(|m| m.original_schema() == *input);
        let passes_rows = tributary_engine::datafusion_text::ROW_BY_ROW_OPERATORS.contains(&name);
        if (children == 0 && !is_input) || (children > 0 && !passes_rows) {
            stateless = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    stateless
}

fn memory_source(node: &Arc<dyn ExecutionPlan>) -> Option<&MemorySourceConfig> {
    node.downcast_ref::<datafusion::datasource::source::DataSourceExec>()?
        .data_source()
        .downcast_ref::<MemorySourceConfig>()
}

/// `plan` with `batch` as its input (operators are rebuilt, so none carries state over).
fn with_input(
    plan: &Arc<dyn ExecutionPlan>,
    batch: &RecordBatch,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::datasource::source::DataSource;
    Ok(plan
        .clone()
        .transform_up(|node| {
            let Some(memory) = memory_source(&node) else {
                return Ok(Transformed::no(node));
            };
            let source = MemorySourceConfig::try_new(
                &[vec![batch.clone()]],
                memory.original_schema(),
                memory.projection().clone(),
            )?
            .with_limit(memory.fetch());
            let exec: Arc<dyn ExecutionPlan> =
                datafusion::datasource::source::DataSourceExec::from_data_source(source);
            Ok(Transformed::yes(exec))
        })?
        .data)
}

/// A view's compiled query.
pub struct Pipeline {
    session: Box<dyn PrivateSession>,
    plan: LogicalPlan,
    /// The physical plan, when the query is stateless over the stream alone (projections and
    /// filters): each batch then runs it again with the batch in place of the input it was
    /// planned with, skipping planning. That matters most when records fail and the batch is
    /// split down to single records. Queries with aggregates or other inputs are planned per
    /// batch: DataFusion may fold an aggregate over an input's exact statistics into a
    /// constant.
    physical: Option<Arc<dyn ExecutionPlan>>,
    input: Arc<StreamInput>,
    /// The rows the query produces, with Postgres column names.
    pub output: SchemaRef,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("output", &self.output)
            .finish()
    }
}

impl Pipeline {
    /// Plans `query` (already bound to the input by [`bind_stream`]) in a private session of
    /// the view's owner, over a Kafka topic's columns or a Kinesis stream's.
    pub async fn compile(
        engine: &Arc<dyn Host>,
        owner: &str,
        database: &str,
        query: &Query,
        kafka: bool,
    ) -> Result<Self> {
        let session = engine.clone().session(owner, database)?;
        let input = Arc::new(StreamInput {
            schema: tributary_ingest::stream_schema(kafka),
            batches: Mutex::new(Vec::new()),
        });
        datafusion::catalog::SchemaProvider::register_table(
            session.catalogs().temp().as_ref(),
            INPUT.to_string(),
            input.clone(),
        )?;
        let (plan, named) = session.plan_query(query).await?;
        // Postgres names, with the plan's field metadata (a SUPER column stays SUPER).
        let planned = plan.schema().as_arrow().clone();
        let fields: Vec<Field> = named
            .fields()
            .iter()
            .zip(planned.fields())
            .map(|(named, planned)| {
                planned
                    .as_ref()
                    .clone()
                    .with_name(named.name())
                    .with_nullable(true)
            })
            .collect();
        let physical = session
            .context()
            .state()
            .create_physical_plan(&plan)
            .await
            .ok()
            .filter(|physical| is_stateless_over(physical, &input.schema));
        Ok(Self {
            session,
            plan,
            physical,
            input,
            output: Arc::new(Schema::new(fields)),
        })
    }

    /// The private session's catalogs (automatic rounds run their transactions there).
    pub fn catalogs(&self) -> &tributary_engine::catalog_list::SessionCatalogs {
        self.session.catalogs()
    }

    async fn run(&self, batch: RecordBatch, columns: &[Column]) -> Result<Vec<RecordBatch>> {
        let result = match &self.physical {
            Some(physical) => {
                let plan = with_input(physical, &batch)?;
                datafusion::physical_plan::collect(plan, self.session.context().task_ctx()).await
            }
            None => self.plan_and_run(batch).await,
        };
        self.check(result?, columns)
    }

    async fn plan_and_run(&self, batch: RecordBatch) -> DfResult<Vec<RecordBatch>> {
        *self.input.batches.lock() = vec![batch];
        let result = async {
            let frame = self
                .session
                .context()
                .execute_logical_plan(self.plan.clone())
                .await?;
            frame.collect().await
        }
        .await;
        self.input.batches.lock().clear();
        result
    }

    /// The query's output as the view's rows.
    fn check(&self, batches: Vec<RecordBatch>, columns: &[Column]) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
            // Values the view's columns cannot hold fail here, so that the records that
            // produced them are isolated and skipped rather than failing the whole write.
            for (array, column) in batch.columns().iter().zip(columns) {
                if let Some(length) = column.sql_type.length() {
                    tributary_engine::table::check_length(array, length, &column.sql_type)?;
                }
            }
            out.push(
                RecordBatch::try_new(self.output.clone(), batch.columns().to_vec())
                    .map_err(|e| Error::Internal(format!("view output: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Runs the query over `batch`. Records whose evaluation fails are isolated by splitting
    /// the batch, and returned as (row in `batch`, reason); the others' rows are returned.
    pub async fn transform(
        &self,
        batch: &RecordBatch,
        columns: &[Column],
    ) -> (Vec<RecordBatch>, Vec<(usize, String)>) {
        let mut rows = Vec::new();
        let mut failures = Vec::new();
        let mut pending = vec![(0, batch.num_rows())];
        while let Some((offset, len)) = pending.pop() {
            if len == 0 {
                continue;
            }
            match self.run(batch.slice(offset, len), columns).await {
                Ok(out) => rows.extend(out),
                Err(err) if len == 1 => failures.push((offset, err.to_string())),
                Err(_) => {
                    let half = len / 2;
                    // Popped in order: the first half first.
                    pending.push((offset + half, len - half));
                    pending.push((offset, half));
                }
            }
        }
        (rows, failures)
    }
}
