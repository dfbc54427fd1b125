//! A query that outgrows the memory limit in a hash join runs again with sort-merge joins.
//!
//! DataFusion's sorts and aggregations spill to disk when the query memory pool
//! (`--memory-limit`) is full, but its hash join holds its build side in memory whole and
//! fails instead. A sort-merge join spills, at a cost in speed: so queries plan hash joins,
//! and one that fails for memory before its first row is planned again with sort-merge joins.
//! Nothing has reached the client then, so the rerun is invisible but for its time.

use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

/// Runs `plan` as a stream of rows, rerun with sort-merge joins if it fails for memory before
/// its first row.
pub(crate) async fn execute_stream(
    state: SessionState,
    plan: LogicalPlan,
) -> datafusion::error::Result<SendableRecordBatchStream> {
    let first = DataFrame::new(state.clone(), plan.clone())
        .execute_stream()
        .await?;
    let schema = first.schema();
    let rows = futures::stream::unfold(
        Phase::First(first, Box::new(state), plan),
        |phase| async move {
            match phase {
                Phase::First(mut stream, state, plan) => match stream.next().await {
                    Some(Err(err)) if out_of_memory(&err) => {
                        drop(stream);
                        tracing::info!(%err, "a query ran out of memory; it runs again with sort-merge joins");
                        let mut state = *state;
                        state.config_mut().options_mut().optimizer.prefer_hash_join = false;
                        match DataFrame::new(state, plan).execute_stream().await {
                            Ok(mut rerun) => {
                                let item = rerun.next().await?;
                                Some((item, Phase::Rest(rerun)))
                            }
                            Err(err) => Some((Err(err), Phase::Done)),
                        }
                    }
                    Some(item) => Some((item, Phase::Rest(stream))),
                    None => None,
                },
                Phase::Rest(mut stream) => {
                    let item = stream.next().await?;
                    Some((item, Phase::Rest(stream)))
                }
                Phase::Done => None,
            }
        },
    );
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
}

enum Phase {
    /// Before the first row: a failure for memory reruns the plan.
    First(SendableRecordBatchStream, Box<SessionState>, LogicalPlan),
    Rest(SendableRecordBatchStream),
    Done,
}

fn out_of_memory(err: &DataFusionError) -> bool {
    matches!(err.find_root(), DataFusionError::ResourcesExhausted(_))
}
