//! Appends written as their rows come and committed once: a write of any size holds about a
//! row group of encoded rows in memory, and every reader of the Delta log (external engines
//! included) sees all of a statement's rows or none of them.

use arrow::record_batch::RecordBatch;
use deltalake::datafile::writer::DeltaWriter;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};

use super::{AppendOutcome, TableHandle};
use crate::Result;

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
                let properties = self
                    .handle
                    .properties(super::ROW_GROUP_ROWS, Some(self.row_group_bytes));
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
        let removes = self
            .table
            .snapshot()?
            .log_data()
            .iter()
            .map(|file| Action::Remove(file.remove_action(true)))
            .collect();
        self.commit_with(SaveMode::Overwrite, removes).await
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
        let commit = CommitBuilder::default()
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
