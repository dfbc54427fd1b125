//! What a statement gives the client: its output, and the notices it raised.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

/// What a statement produced.
pub enum Output {
    /// Rows, streamed: nothing is buffered beyond DataFusion's own batches.
    Rows {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
    },
    /// A command tag such as `CREATE TABLE`, with a row count for DML (`INSERT 0 3`).
    Command { tag: String, rows: Option<u64> },
    /// `COPY ... FROM STDIN`: the client sends the data next; hand it to
    /// [`Session::copy_in`](crate::Session::copy_in).
    CopyIn { columns: usize },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows { schema, .. } => write!(
                f,
                "Rows({:?})",
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            ),
            Output::Command { tag, rows } => write!(f, "Command({tag}, {rows:?})"),
            Output::CopyIn { columns } => write!(f, "CopyIn({columns})"),
        }
    }
}

impl Output {
    pub(crate) fn command(tag: &str) -> Self {
        Output::Command {
            tag: tag.to_string(),
            rows: None,
        }
    }

    pub(crate) fn rows(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        Output::Rows {
            schema: schema.clone(),
            stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        }
    }
}

/// A message for the client that is not an error (NoticeResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `NOTICE`, `INFO` or `WARNING`.
    pub severity: &'static str,
    pub message: String,
}
