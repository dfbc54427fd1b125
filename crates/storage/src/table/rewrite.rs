//! Rewrites that run beside the table's writers: some files' live rows are written to new
//! files without the table's lock, and committed later in their place on top of whatever the
//! writers committed meanwhile. Rows the writers marked deleted in a rewritten file since the
//! rewrite read it are marked deleted in the new files, so a rewrite never waits for writers,
//! never makes them wait longer than its commit, and never brings a deleted row back.

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use deltalake::datafile::writer::DeltaWriter;
use deltalake::kernel::{Action, Add};
use futures::StreamExt as _;
use roaring::RoaringTreemap;

use super::deletion::{action_line, add_rows, with_deletion_vectors};
use super::{StagedFiles, TableHandle};
use crate::{Error, Result};

/// The most bytes (as Arrow arrays in memory) of live rows a rewrite of a table with a sort
/// key ([`TableHandle::with_sort_key`]) orders by it; larger rewrites keep their inputs'
/// order. Bounds what a rewrite holds at once beside the writer's row group. The rows held,
/// twice over for their sorted copy, are held in the server's memory pool: when it cannot
/// give them, the rewrite keeps its inputs' order too.
pub(crate) const SORTED_REWRITE_BYTES: usize = 32 << 20;

/// Files' live rows written to new files, not committed yet ([`TableHandle::prepare_rewrite`]).
#[derive(Debug)]
pub struct Rewrite {
    /// The rewritten files, in the order their live rows were read: path, rows deleted at
    /// the version read, rows in the file.
    sources: Vec<(String, RoaringTreemap, u64)>,
    /// Where each live row, numbered in the order read, was written, when the rewrite sorted
    /// them; None when they were written in the order read.
    moved_to: Option<Vec<u32>>,
    staged: StagedFiles,
}

impl Rewrite {
    /// Live rows the rewrite read.
    pub fn rows(&self) -> u64 {
        self.staged.rows
    }

    /// The files it rewrites.
    pub fn paths(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|(path, _, _)| path.clone())
            .collect()
    }
}

impl TableHandle {
    /// Writes the live rows of `paths` (files of `version`) to new files of about the target
    /// size ([`Self::target_file_size`]), a batch at a time: in the order read (file after
    /// file, in row order), or, for a table with a sort key whose rows fit
    /// [`SORTED_REWRITE_BYTES`], ordered by it. Nothing is committed:
    /// [`Self::commit_rewrite`] does that. Files never committed are deleted by VACUUM.
    pub async fn prepare_rewrite(&self, version: u64, paths: &[String]) -> Result<Rewrite> {
        let table = self.load(version).await?;
        let mut adds: HashMap<String, Add> = HashMap::new();
        for file in table.snapshot()?.log_data().iter() {
            #[expect(
                deprecated,
                reason = "the deletion vector and row count of the add action"
            )]
            let add = file.add_action();
            adds.insert(add.path.clone(), add);
        }
        let mut sources = Vec::with_capacity(paths.len());
        let mut output = Output::new(self, &table, &adds, paths)?;
        let mut written = 0;
        // Rows held back to be sorted, while they fit.
        let mut held: Option<Vec<RecordBatch>> = (!self.sort_columns.is_empty()).then(Vec::new);
        let mut held_bytes = 0;
        let reservation = MemoryConsumer::new("sorted rewrite").register(&self.root.memory_pool());
        for path in paths {
            let add = adds.get(path).ok_or_else(|| {
                Error::Internal(format!("{path} is not a data file of version {version}"))
            })?;
            let deleted = match &add.deletion_vector {
                Some(descriptor) => self.read_vector(descriptor).await?,
                None => RoaringTreemap::new(),
            };
            let rows = add_rows(add)?;
            // One partition, so the live rows come in the file's order.
            let config = datafusion::prelude::SessionConfig::new().with_target_partitions(1);
            let ctx = datafusion::prelude::SessionContext::new_with_config(config);
            let provider = self
                .provider_of(version, std::slice::from_ref(path))
                .await?;
            let mut batches = ctx.read_table(provider)?.execute_stream().await?;
            let mut live = 0u64;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                live += batch.num_rows() as u64;
                if let Some(kept) = held.as_mut() {
                    let bytes = batch.get_array_memory_size();
                    held_bytes += bytes;
                    kept.push(batch);
                    if held_bytes <= SORTED_REWRITE_BYTES && reservation.try_grow(2 * bytes).is_ok()
                    {
                        continue;
                    }
                    // Too many to sort, or more than the memory pool gives: they are written
                    // in the order read, as the rest.
                    for batch in held.take().into_iter().flatten() {
                        output.write(&batch).await?;
                    }
                    reservation.free();
                    continue;
                }
                output.write(&batch).await?;
            }
            if live != rows - deleted.len() {
                return Err(Error::Internal(format!(
                    "{path}: read {live} live rows, its statistics and vector say {}",
                    rows - deleted.len()
                )));
            }
            written += live;
            sources.push((path.clone(), deleted, rows));
        }
        let mut moved_to = None;
        if let Some(kept) = held.filter(|kept| !kept.is_empty()) {
            let all = arrow::compute::concat_batches(&kept[0].schema(), &kept)?;
            drop(kept);
            let keys = self
                .sort_columns
                .iter()
                .map(|column| {
                    Ok(arrow::compute::SortColumn {
                        values: all.column(all.schema().index_of(column)?).clone(),
                        options: None,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let order = arrow::compute::lexsort_to_indices(&keys, None)?;
            let mut to = vec![0u32; all.num_rows()];
            for (new, old) in order.values().iter().enumerate() {
                to[*old as usize] = new as u32;
            }
            moved_to = Some(to);
            let sorted = arrow::compute::take_record_batch(&all, &order)?;
            drop(all);
            // In slices, as the writer takes batches of a scan.
            const SLICE: usize = 8192;
            for offset in (0..sorted.num_rows()).step_by(SLICE) {
                let rows = SLICE.min(sorted.num_rows() - offset);
                output.write(&sorted.slice(offset, rows)).await?;
            }
        }
        drop(reservation);
        let adds = output.close().await?;
        Ok(Rewrite {
            sources,
            moved_to,
            staged: StagedFiles {
                adds,
                rows: written,
            },
        })
    }

    /// Commits `rewrite` on top of `on_version` (the caller holds the table's write lock):
    /// its files in place of the rewritten ones, with the rows deleted from those since the
    /// rewrite read them marked deleted in the new files. Returns the new version, or
    /// [`Error::Conflict`] if a rewritten file is gone (another rewrite replaced it).
    pub async fn commit_rewrite(&self, on_version: u64, rewrite: Rewrite) -> Result<u64> {
        let table = self.load(on_version).await?;
        let snapshot = table.snapshot()?;
        let mut present = HashMap::new();
        for file in snapshot.log_data().iter() {
            #[expect(deprecated, reason = "the deletion vector of the add action")]
            let add = file.add_action();
            present.insert(add.path.clone(), (add, file.remove_action(true)));
        }
        // Each staged file's first row in the concatenation of the rewritten files' live rows.
        let mut starts = Vec::with_capacity(rewrite.staged.adds.len());
        let mut next = 0;
        for add in &rewrite.staged.adds {
            starts.push(next);
            next += add_rows(add)?;
        }
        let mut deleted: Vec<RoaringTreemap> = vec![RoaringTreemap::new(); starts.len()];
        let mut lines = Vec::new();
        let mut offset = 0;
        for (path, read_deleted, rows) in &rewrite.sources {
            let Some((add, remove)) = present.remove(path) else {
                return Err(Error::Conflict {
                    path: self.path.clone(),
                });
            };
            lines.push(action_line(Action::Remove(remove))?);
            if let Some(descriptor) = &add.deletion_vector {
                let now = self.read_vector(descriptor).await?;
                for row in &now - read_deleted {
                    // Its place among the file's live rows as read, then in the new files.
                    let mut position = offset + row - read_deleted.rank(row);
                    if let Some(moved_to) = &rewrite.moved_to {
                        position = u64::from(moved_to[position as usize]);
                    }
                    let file = starts.partition_point(|start| *start <= position) - 1;
                    deleted[file].insert(position - starts[file]);
                }
            }
            offset += rows - read_deleted.len();
        }
        let mut marked = Vec::new();
        for (add, rows) in rewrite.staged.adds.into_iter().zip(deleted) {
            if rows.is_empty() {
                lines.push(action_line(Action::Add(add))?);
            } else {
                marked.push((add, rows));
            }
        }
        if !marked.is_empty()
            && let Some(protocol) = with_deletion_vectors(snapshot.protocol())
        {
            lines.insert(0, protocol);
        }
        lines.extend(self.vector_lines(marked).await?);
        self.write_commit(&table, on_version, lines, "OPTIMIZE")
            .await
    }
}

/// The files a rewrite writes, in the order written (which [`TableHandle::commit_rewrite`]
/// relies on to place the rows deleted meanwhile): a new one every `per_file` rows, each
/// file's writer opened with its first batch. The writers' row group is held in the memory
/// pool while they write ([`TableHandle::write_buffer`]).
struct Output<'a> {
    handle: &'a TableHandle,
    table: &'a deltalake::DeltaTable,
    /// Rows a file takes: the target size at the rewritten files' bytes a row.
    per_file: u64,
    /// Rows the bloom filters of a file are sized for.
    estimate: usize,
    writer: Option<DeltaWriter>,
    buffer: Option<(usize, MemoryReservation)>,
    /// Rows in the file being written.
    rows: u64,
    /// The files written and closed.
    adds: Vec<Add>,
}

impl<'a> Output<'a> {
    fn new(
        handle: &'a TableHandle,
        table: &'a deltalake::DeltaTable,
        adds: &HashMap<String, Add>,
        paths: &[String],
    ) -> Result<Output<'a>> {
        let (mut rows, mut bytes) = (0u64, 0u64);
        for add in paths.iter().filter_map(|path| adds.get(path)) {
            rows += add_rows(add)?;
            bytes += add.size.max(0) as u64;
        }
        let target = handle.target_of(table)?;
        let per_file = match bytes {
            0 => u64::MAX,
            bytes => (u128::from(target) * u128::from(rows) / u128::from(bytes)).max(1) as u64,
        };
        Ok(Output {
            handle,
            table,
            per_file,
            estimate: rows.min(per_file) as usize,
            writer: None,
            buffer: None,
            rows: 0,
            adds: Vec::new(),
        })
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.rows >= self.per_file {
                self.finish_file().await?;
            }
            let taken = (batch.num_rows() - offset).min((self.per_file - self.rows) as usize);
            let part = batch.slice(offset, taken);
            let writer = match self.writer.as_mut() {
                Some(writer) => writer,
                None => {
                    let bytes = match &self.buffer {
                        Some((bytes, _)) => *bytes,
                        None => self.buffer.insert(self.handle.write_buffer(None)?).0,
                    };
                    let properties =
                        self.handle
                            .properties(&part.schema(), self.estimate, Some(bytes));
                    self.writer.insert(self.handle.file_writer(
                        self.table,
                        part.schema(),
                        properties,
                        false,
                    )?)
                }
            };
            writer.write(&part).await?;
            self.rows += taken as u64;
            offset += taken;
        }
        Ok(())
    }

    async fn finish_file(&mut self) -> Result<()> {
        if let Some(writer) = self.writer.take() {
            self.adds.extend(writer.close().await?);
        }
        self.rows = 0;
        Ok(())
    }

    async fn close(mut self) -> Result<Vec<Add>> {
        self.finish_file().await?;
        Ok(self.adds)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use crate::table::deletion::tests::ids;
    use crate::{RowChanges, StorageRoot};

    fn deleted(path: &str, rows: impl IntoIterator<Item = u64>) -> RowChanges {
        RowChanges {
            deleted: BTreeMap::from([(path.to_string(), rows.into_iter().collect())]),
            added: None,
        }
    }

    #[tokio::test]
    async fn a_rewrite_keeps_the_rows_deleted_while_it_ran() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = root.table("db/s/t").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let mut version = table.create(&schema).await.unwrap();
        for ids in [0..100, 100..200] {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int32Array::from_iter_values(ids))],
            )
            .unwrap();
            version = table.append(version, vec![batch]).await.unwrap().version;
        }
        let files = table.files(version).await.unwrap();
        let (first, second) = if files[0].min_values["id"] == 0 {
            (files[0].path.clone(), files[1].path.clone())
        } else {
            (files[1].path.clone(), files[0].path.clone())
        };
        // Rows 0..10 of the first file and every even row of the second are gone when the
        // rewrite reads them.
        version = table
            .change_rows(version, deleted(&first, 0..10), "DELETE")
            .await
            .unwrap();
        version = table
            .change_rows(version, deleted(&second, (0..100).step_by(2)), "DELETE")
            .await
            .unwrap();
        let read = version;
        let rewrite = table
            .prepare_rewrite(read, &[first.clone(), second.clone()])
            .await
            .unwrap();
        assert_eq!(rewrite.rows(), 90 + 50);
        // Meanwhile a writer deletes ids 10, 55, 99 (first file) and 101, 199 (second).
        version = table
            .change_rows(version, deleted(&first, [10, 55, 99]), "DELETE")
            .await
            .unwrap();
        version = table
            .change_rows(version, deleted(&second, [1, 99]), "DELETE")
            .await
            .unwrap();
        let expected = ids(&table, version).await;
        let committed = table.commit_rewrite(version, rewrite).await.unwrap();
        assert_eq!(ids(&table, committed).await, expected);
        assert_eq!(expected.len(), 140 - 5);
        let files = table.files(committed).await.unwrap();
        assert_eq!(files.len(), 1, "the two files' live rows became one file");
        assert!(files.iter().all(|f| f.path != first && f.path != second));
        assert_eq!(files.iter().map(|f| f.deleted).sum::<u64>(), 5);

        // A rewrite of a file that another rewrite replaced meanwhile is refused.
        let stale = table.prepare_rewrite(read, &[first]).await.unwrap();
        assert!(matches!(
            table.commit_rewrite(committed, stale).await,
            Err(crate::Error::Conflict { .. })
        ));
    }

    #[tokio::test]
    async fn a_sorted_rewrite_orders_the_rows_and_keeps_those_deleted_while_it_ran() {
        let stored = rewrite_scattered_ids(None, 1).await.concat();
        assert!(stored.is_sorted(), "{stored:?}");
    }

    /// A rewrite writes files of the target size, one after the other; rows deleted while it
    /// ran are found in whichever of them holds them, whether it sorted the rows or not.
    #[tokio::test]
    async fn a_rewrite_writes_files_of_the_target_size() {
        let files = rewrite_scattered_ids(None, 4).await;
        assert_eq!(files.len(), 4, "{files:?}");
        // Written in key order: each file's ids follow the last one's.
        assert!(files.concat().is_sorted(), "{files:?}");
        assert!(
            files.iter().all(|ids| (45..=55).contains(&ids.len())),
            "{files:?}"
        );

        let unsorted = rewrite_scattered_ids(Some(nothing_to_sort()), 3).await;
        assert_eq!(unsorted.len(), 3, "{unsorted:?}");
        assert!(!unsorted.concat().is_sorted());
    }

    /// A sorted rewrite holds its rows in the server's memory pool; when the pool cannot give
    /// them, it writes them in the order read, with the same rows, and gives everything back.
    #[tokio::test]
    async fn a_rewrite_the_memory_pool_cannot_hold_keeps_the_order_read() {
        let pool = nothing_to_sort();
        let stored = rewrite_scattered_ids(Some(pool.clone()), 1).await.concat();
        assert!(!stored.is_sorted());
        assert_eq!(pool.reserved(), 0);
    }

    /// A memory pool that gives a sorted rewrite nothing, and everything else what it asks.
    fn nothing_to_sort() -> Arc<dyn datafusion::execution::memory_pool::MemoryPool> {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool, MemoryReservation};
        /// A pool that gives the sort nothing, and everything else what it asks.
        #[derive(Debug)]
        struct NothingToSort(GreedyMemoryPool);
        impl std::fmt::Display for NothingToSort {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("nothing to sort")
            }
        }
        impl MemoryPool for NothingToSort {
            fn name(&self) -> &str {
                "nothing to sort"
            }
            fn grow(&self, reservation: &MemoryReservation, additional: usize) {
                self.0.grow(reservation, additional)
            }
            fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
                self.0.shrink(reservation, shrink)
            }
            fn try_grow(
                &self,
                reservation: &MemoryReservation,
                additional: usize,
            ) -> datafusion::error::Result<()> {
                if reservation.consumer().name() == "sorted rewrite" {
                    return Err(datafusion::error::DataFusionError::ResourcesExhausted(
                        "no room to sort".into(),
                    ));
                }
                self.0.try_grow(reservation, additional)
            }
            fn reserved(&self) -> usize {
                self.0.reserved()
            }
        }
        Arc::new(NothingToSort(GreedyMemoryPool::new(usize::MAX)))
    }

    /// Two files of scattered ids of a table sorted by id, rewritten while rows of both are
    /// deleted, into files of a target size of their bytes' `parts`th part (under `pool`, if
    /// given); the ids of each file written, in their order, the files by their first id.
    async fn rewrite_scattered_ids(
        pool: Option<Arc<dyn datafusion::execution::memory_pool::MemoryPool>>,
        parts: u64,
    ) -> Vec<Vec<i32>> {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        if let Some(pool) = pool {
            root.set_memory_pool(pool);
        }
        let table = root
            .table("db/s/sorted")
            .unwrap()
            .with_sort_key(&["id".to_string()]);
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let mut version = table.create(&schema).await.unwrap();
        // Two files of scattered ids: 0, 7, 14, ... and 3, 10, 17, ... (mod 200).
        for start in [0, 3] {
            let ids = (0..100).map(|i| (start + i * 7) % 200);
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int32Array::from_iter_values(ids))],
            )
            .unwrap();
            version = table.append(version, vec![batch]).await.unwrap().version;
        }
        let paths: Vec<String> = table
            .files(version)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        version = table
            .change_rows(version, deleted(&paths[0], [0, 1, 50]), "DELETE")
            .await
            .unwrap();
        let bytes: u64 = table
            .files(version)
            .await
            .unwrap()
            .iter()
            .map(|f| f.bytes)
            .sum();
        let table = table.with_target_file_size(bytes / parts);
        let rewrite = table.prepare_rewrite(version, &paths).await.unwrap();
        assert_eq!(rewrite.rows(), 200 - 3);
        // Meanwhile rows of both files are deleted.
        version = table
            .change_rows(version, deleted(&paths[0], [2, 99]), "DELETE")
            .await
            .unwrap();
        version = table
            .change_rows(version, deleted(&paths[1], [0, 42, 77]), "DELETE")
            .await
            .unwrap();
        let expected = ids(&table, version).await;
        let committed = table.commit_rewrite(version, rewrite).await.unwrap();
        assert_eq!(ids(&table, committed).await, expected);
        assert_eq!(expected.len(), 200 - 8);
        // The rows the files store, deleted ones included.
        let mut stored: Vec<Vec<i32>> = table
            .files(committed)
            .await
            .unwrap()
            .iter()
            .map(|file| {
                let file = dir.path().join("db/s/sorted").join(&file.path);
                let reader =
                    deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                        std::fs::File::open(file).unwrap(),
                        1024,
                    )
                    .unwrap();
                reader
                    .flat_map(|batch| {
                        use arrow::array::AsArray as _;
                        let batch = batch.unwrap();
                        batch
                            .column(0)
                            .as_primitive::<arrow::datatypes::Int32Type>()
                            .values()
                            .to_vec()
                    })
                    .collect()
            })
            .collect();
        stored.sort_by_key(|ids: &Vec<i32>| ids.first().copied());
        assert_eq!(stored.iter().map(Vec::len).sum::<usize>(), 197);
        stored
    }
}
