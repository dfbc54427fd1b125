//! Appends written as their rows come and committed once: a write of any size holds about a
//! row group of encoded rows in memory, and every reader of the Delta log (external engines
//! included) sees all of a statement's rows or none of them.

use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::MemoryReservation;
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
    /// The writer's row group in the memory pool ([`TableHandle::write_buffer`]).
    buffer: Option<MemoryReservation>,
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
    /// `row_group_bytes` encoded bytes (the memory the append holds besides its input, held
    /// in the server's memory pool: less if the pool gives less, see
    /// [`TableHandle::write_buffer`]).
    pub async fn appender(&self, base_version: u64, row_group_bytes: usize) -> Result<Appender> {
        Ok(Appender {
            handle: self.clone(),
            table: self.load(base_version).await?,
            base_version,
            row_group_bytes: row_group_bytes.max(1),
            writer: None,
            buffer: None,
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
                let (buffer, reserved) = self.handle.write_buffer(Some(self.row_group_bytes))?;
                self.buffer = Some(reserved);
                let properties =
                    self.handle
                        .properties(&batch.schema(), super::ROW_GROUP_ROWS, Some(buffer));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::Field;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};

    use super::*;
    use crate::StorageRoot;

    /// An append's row group is held in the memory pool while it writes: row groups are no
    /// larger than the room the pool gave, everything is given back at the commit, and a
    /// pool without room for the smallest row group fails the write.
    #[tokio::test]
    async fn an_append_holds_its_row_group_in_the_memory_pool() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(3 << 20));
        root.set_memory_pool(pool.clone());
        let table = root.table("dev/public/wide").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        let version = table.create(&schema).await.unwrap();
        // 8 MB of distinct, poorly compressible text.
        let batch = |first: u64| {
            let texts: Vec<String> = (first..first + 10_000)
                .map(|i| format!("{:040x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                .collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(texts))]).unwrap()
        };
        // Asked for 64 MiB, it gets 2 MiB, the most the pool gives by halving (the pool
        // also holds the cache of table versions, a few KB).
        let cache = pool.reserved();
        assert!(cache < 1 << 20);
        let mut append = table.appender(version, 64 << 20).await.unwrap();
        for first in (0..200_000).step_by(10_000) {
            append.write(&batch(first)).await.unwrap();
            assert_eq!(pool.reserved() - cache, 2 << 20);
        }
        let outcome = append.commit().await.unwrap();
        assert!(pool.reserved() < 1 << 20, "{}", pool.reserved());
        assert_eq!(outcome.rows, 200_000);
        let files = table.files(outcome.version).await.unwrap();
        assert_eq!(files.len(), 1);
        let file =
            std::fs::File::open(dir.path().join("dev/public/wide").join(&files[0].path)).unwrap();
        let reader = deltalake::parquet::file::reader::SerializedFileReader::new(file).unwrap();
        let metadata = deltalake::parquet::file::reader::FileReader::metadata(&reader);
        assert!(
            metadata.num_row_groups() >= 3,
            "{} row groups",
            metadata.num_row_groups()
        );
        for group in metadata.row_groups() {
            // A row group ends at the first batch of 1,024 rows whose encoded pages take it
            // past its room.
            assert!(group.compressed_size() < (2 << 20) + (1 << 20), "{group:?}");
        }

        // No room for the smallest row group.
        root.set_memory_pool(Arc::new(GreedyMemoryPool::new(512 << 10)));
        let mut append = table.appender(outcome.version, 64 << 20).await.unwrap();
        let err = append.write(&batch(0)).await.unwrap_err();
        assert!(
            matches!(&err, Error::DataFusion(e) if matches!(e.find_root(), datafusion::error::DataFusionError::ResourcesExhausted(_))),
            "{err}"
        );
    }
}
