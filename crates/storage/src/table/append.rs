//! Appends written as their rows come and committed once: a write of any size holds about a
//! row group of encoded rows in memory, and every reader of the Delta log (external engines
//! included) sees all of a statement's rows or none of them.

use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use deltalake::datafile::writer::DeltaWriter;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, MetadataExt as _, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};

use super::deletion::with_feature;
use super::{AppendOutcome, StagedFiles, TableHandle};
use crate::{Error, Result};

/// Rows being appended on top of one table version ([`TableHandle::appender`]), in files of
/// the table's target size. Files it wrote and never committed (an append dropped or
/// aborted) are deleted by VACUUM.
pub struct Appender {
    handle: TableHandle,
    table: deltalake::DeltaTable,
    base_version: u64,
    row_group_bytes: usize,
    writer: Option<DeltaWriter>,
    rows: u64,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("path", &self.handle.path)
            .field("base_version", &self.base_version)
            .field("rows", &self.rows)
            .finish()
    }
}

impl TableHandle {
    /// Starts an append on top of `base_version`, whose row groups hold at most
    /// `row_group_bytes` encoded bytes (the memory the append holds besides its input).
    pub async fn appender(&self, base_version: u64, row_group_bytes: usize) -> Result<Appender> {
        Ok(Appender {
            handle: self.clone(),
            table: self.load(base_version).await?,
            base_version,
            row_group_bytes: row_group_bytes.max(1),
            writer: None,
            rows: 0,
        })
    }
}

impl Appender {
    /// Writes `batch` (in the table's stored schema, the same for every batch) to the
    /// append's files.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let writer = match &mut self.writer {
            Some(writer) => writer,
            empty => {
                let properties = self.handle.properties(
                    &batch.schema(),
                    super::ROW_GROUP_ROWS,
                    Some(self.row_group_bytes),
                );
                empty.insert(self.handle.file_writer(
                    &self.table,
                    batch.schema(),
                    properties,
                    true,
                )?)
            }
        };
        writer.write(batch).await?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Commits every row written as one version on top of the base version (which it stays
    /// when nothing was written).
    pub async fn commit(self) -> Result<AppendOutcome> {
        if self.writer.is_none() {
            return Ok(AppendOutcome {
                version: self.base_version,
                rows: 0,
            });
        }
        self.commit_with(SaveMode::Append, Vec::new()).await
    }

    /// Commits the rows written in place of every row of the base version, as one version
    /// (REFRESH of a materialized view).
    pub async fn commit_replacing_all(self) -> Result<AppendOutcome> {
        let removes = self.removes()?;
        self.commit_with(SaveMode::Overwrite, removes).await
    }

    /// Commits the rows written, in `schema`, in place of every row of the base version and
    /// of its schema, as one version (ALTER TABLE that changes columns). The table's protocol
    /// gains the features the new schema needs.
    pub async fn commit_replacing_all_as(self, schema: &Schema) -> Result<AppendOutcome> {
        let kernel: StructType = schema
            .try_into_kernel()
            .map_err(|e| Error::Internal(format!("schema not representable in Delta: {e}")))?;
        let snapshot = self.table.snapshot()?;
        let mut actions = Vec::new();
        let has_timestamp_ntz = schema
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::Timestamp(_, None)));
        if has_timestamp_ntz && let Some(line) = with_feature(snapshot.protocol(), "timestampNtz") {
            let action: Action = serde_json::from_str(&line)
                .map_err(|e| Error::Internal(format!("protocol action: {e}")))?;
            actions.push(action);
        }
        actions.push(Action::Metadata(
            snapshot
                .metadata()
                .clone()
                .with_schema(&kernel)
                .map_err(deltalake::DeltaTableError::from)?,
        ));
        actions.extend(self.removes()?);
        self.commit_with(SaveMode::Overwrite, actions).await
    }

    /// Closes the append's files without committing them, for a commit that adds them with
    /// other changes ([`TableHandle::change_rows`]).
    pub async fn into_staged(self) -> Result<StagedFiles> {
        let adds = match self.writer {
            Some(writer) => writer.close().await?,
            None => Vec::new(),
        };
        Ok(StagedFiles {
            adds,
            rows: self.rows,
        })
    }

    /// A remove action for every file of the base version.
    fn removes(&self) -> Result<Vec<Action>> {
        Ok(self
            .table
            .snapshot()?
            .log_data()
            .iter()
            .map(|file| Action::Remove(file.remove_action(true)))
            .collect())
    }

    async fn commit_with(self, mode: SaveMode, mut actions: Vec<Action>) -> Result<AppendOutcome> {
        if let Some(writer) = self.writer {
            actions.extend(writer.close().await?.into_iter().map(Action::Add));
        }
        let operation = DeltaOperation::Write {
            mode,
            partition_by: None,
            predicate: None,
        };
        let commit = CommitBuilder::from(super::commit_properties())
            .with_actions(actions)
            .build(
                Some(self.table.snapshot()?),
                self.table.log_store(),
                operation,
            )
            .await?;
        let mut table = self.table;
        table.state = Some(commit.snapshot());
        Ok(AppendOutcome {
            version: self.handle.remember(&table)?,
            rows: self.rows,
        })
    }

    /// Gives the append up, ending the uploads of its files.
    pub async fn abort(self) {
        if let Some(writer) = self.writer
            && let Err(err) = writer.abort().await
        {
            tracing::warn!(table = %self.handle.path, error = %err, "an abandoned append's files were left to VACUUM");
        }
    }
}
