//! Rewrites that run beside the table's writers: some files' live rows are written to new
//! files without the table's lock, and committed later in their place on top of whatever the
//! writers committed meanwhile. Rows the writers marked deleted in a rewritten file since the
//! rewrite read it are marked deleted in the new files, so a rewrite never waits for writers,
//! never makes them wait longer than its commit, and never brings a deleted row back.

use std::collections::HashMap;

use std::sync::Arc;

use arrow::datatypes::DataType;
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

/// Rows a batch of a merge or of a sorted rewrite's writes holds.
const MERGE_BATCH_ROWS: usize = 8192;

/// The column a merge tags each row with its file's index among the rewritten ones.
const MERGED_FROM: &str = "__tributary_merged_from";

/// A rewritten file: its path, the rows deleted at the version read, the rows in it.
type Source = (String, RoaringTreemap, u64);

/// Where a rewrite wrote the live rows it read.
#[derive(Debug)]
enum Placement {
    /// In the order read: file after file, each in its row order.
    InOrder,
    /// Sorted in memory: each row's place in the order written, by its place in the order
    /// read.
    Sorted(Vec<u32>),
    /// Merged from the files: the file (its index among the rewritten ones) each row written
    /// came from, in the order written. Each file's rows come in their order.
    Merged(Vec<u16>),
}

impl Placement {
    /// The places in the order written of the rows `read`: (file index, the row's place among
    /// that file's live rows, its place in the order read).
    fn places(&self, read: &[(usize, u64, u64)]) -> Vec<u64> {
        match self {
            Self::InOrder => read.iter().map(|&(_, _, at)| at).collect(),
            Self::Sorted(to) => read
                .iter()
                .map(|&(_, _, at)| u64::from(to[at as usize]))
                .collect(),
            Self::Merged(from) => {
                // One pass over the order written, counting each file's rows.
                let files = read.iter().map(|&(file, _, _)| file + 1).max().unwrap_or(0);
                let mut wanted: Vec<Vec<(u64, usize)>> = vec![Vec::new(); files];
                for (slot, &(file, row, _)) in read.iter().enumerate() {
                    wanted[file].push((row, slot));
                }
                for rows in &mut wanted {
                    rows.sort_unstable();
                }
                let mut next = vec![0usize; files];
                let mut seen = vec![0u64; files];
                let mut places = vec![0u64; read.len()];
                let mut left = read.len();
                for (place, file) in from.iter().enumerate() {
                    if left == 0 {
                        break;
                    }
                    let file = usize::from(*file);
                    if file >= files {
                        continue;
                    }
                    if let Some(&(row, slot)) = wanted[file].get(next[file])
                        && row == seen[file]
                    {
                        places[slot] = place as u64;
                        next[file] += 1;
                        left -= 1;
                    }
                    seen[file] += 1;
                }
                places
            }
        }
    }
}

/// Files' live rows written to new files, not committed yet ([`TableHandle::prepare_rewrite`]).
#[derive(Debug)]
pub struct Rewrite {
    /// The rewritten files, in the order their live rows were read.
    sources: Vec<Source>,
    /// Where their live rows were written.
    placement: Placement,
    /// The room in the memory pool of a merge's [`Placement::Merged`].
    held: Option<MemoryReservation>,
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
    /// file, in row order) for a table without a sort key; for a table with one
    /// ([`Self::with_sort_key`]), sorted by it in memory when they fit
    /// [`SORTED_REWRITE_BYTES`], or else merged from the files, each read in its order, so
    /// that files that are sorted runs make a sorted one (a merge holds two bytes a row in
    /// the memory pool until the commit, the file each came from). Nothing is committed:
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
        for path in paths {
            let add = adds.get(path).ok_or_else(|| {
                Error::Internal(format!("{path} is not a data file of version {version}"))
            })?;
            let deleted = match &add.deletion_vector {
                Some(descriptor) => self.read_vector(descriptor).await?,
                None => RoaringTreemap::new(),
            };
            sources.push((path.clone(), deleted, add_rows(add)?));
        }
        let mut output = Output::new(self, &table, &adds, paths)?;
        let mut live = vec![0u64; sources.len()];
        let mut held = None;
        let placement = if self.sort_columns.is_empty() {
            self.write_in_order(version, &sources, &mut output, &mut live)
                .await?;
            Placement::InOrder
        } else if let Some(to) = self
            .write_sorted(version, &sources, &mut output, &mut live)
            .await?
        {
            Placement::Sorted(to)
        } else if sources.len() == 1 {
            // One file: its order is what a merge would make.
            live.fill(0);
            self.write_in_order(version, &sources, &mut output, &mut live)
                .await?;
            Placement::InOrder
        } else {
            live.fill(0);
            let (merged, reservation) = self
                .write_merged(version, &sources, &mut output, &mut live)
                .await?;
            held = Some(reservation);
            Placement::Merged(merged)
        };
        for ((path, deleted, rows), live) in sources.iter().zip(&live) {
            if *live != rows - deleted.len() {
                return Err(Error::Internal(format!(
                    "{path}: read {live} live rows, its statistics and vector say {}",
                    rows - deleted.len()
                )));
            }
        }
        let adds = output.close().await?;
        Ok(Rewrite {
            sources,
            placement,
            held,
            staged: StagedFiles {
                adds,
                rows: live.iter().sum(),
            },
        })
    }

    /// The live rows of a file of `version`, in its order.
    async fn live_rows(
        &self,
        version: u64,
        path: &str,
    ) -> Result<datafusion::execution::SendableRecordBatchStream> {
        // One partition, so the live rows come in the file's order.
        let config = datafusion::prelude::SessionConfig::new().with_target_partitions(1);
        let ctx = datafusion::prelude::SessionContext::new_with_config(config);
        let provider = self.provider_of(version, &[path.to_string()]).await?;
        Ok(ctx.read_table(provider)?.execute_stream().await?)
    }

    /// Writes the rewritten files' live rows in the order read, counting each file's.
    async fn write_in_order(
        &self,
        version: u64,
        sources: &[Source],
        output: &mut Output<'_>,
        live: &mut [u64],
    ) -> Result<()> {
        for ((path, _, _), live) in sources.iter().zip(live) {
            let mut batches = self.live_rows(version, path).await?;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                *live += batch.num_rows() as u64;
                output.write(&batch).await?;
            }
        }
        Ok(())
    }

    /// Reads the rewritten files' live rows into memory, sorts them by the sort key and writes
    /// them, counting each file's; returns each row's place in the order written, by its
    /// place in the order read. None, with nothing written, when they are more than
    /// [`SORTED_REWRITE_BYTES`] or than the memory pool gives (twice over, for the sorted
    /// copy).
    async fn write_sorted(
        &self,
        version: u64,
        sources: &[Source],
        output: &mut Output<'_>,
        live: &mut [u64],
    ) -> Result<Option<Vec<u32>>> {
        let reservation = MemoryConsumer::new("sorted rewrite").register(&self.root.memory_pool());
        let mut held = Vec::new();
        let mut held_bytes = 0;
        for ((path, _, _), live) in sources.iter().zip(live.iter_mut()) {
            let mut batches = self.live_rows(version, path).await?;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                *live += batch.num_rows() as u64;
                let bytes = batch.get_array_memory_size();
                held_bytes += bytes;
                if held_bytes > SORTED_REWRITE_BYTES || reservation.try_grow(2 * bytes).is_err() {
                    return Ok(None);
                }
                held.push(batch);
            }
        }
        let Some(first) = held.first() else {
            return Ok(Some(Vec::new()));
        };
        let all = arrow::compute::concat_batches(&first.schema(), &held)?;
        drop(held);
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
        let sorted = arrow::compute::take_record_batch(&all, &order)?;
        drop(all);
        // In slices, as the writer takes batches of a scan.
        for offset in (0..sorted.num_rows()).step_by(MERGE_BATCH_ROWS) {
            let rows = MERGE_BATCH_ROWS.min(sorted.num_rows() - offset);
            output.write(&sorted.slice(offset, rows)).await?;
        }
        Ok(Some(to))
    }

    /// Merges the rewritten files' live rows by the sort key, each file read in its order
    /// (a streaming merge: a batch of each file at a time), writes them and counts each
    /// file's; returns the file each row written came from, in the order written, with its
    /// room in the memory pool.
    async fn write_merged(
        &self,
        version: u64,
        sources: &[Source],
        output: &mut Output<'_>,
        live: &mut [u64],
    ) -> Result<(Vec<u16>, MemoryReservation)> {
        use arrow::array::{AsArray as _, UInt16Array};
        use arrow::datatypes::{Field, Schema, UInt16Type};
        use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr, expressions::col};
        use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
        use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        let pool = self.root.memory_pool();
        let held = MemoryConsumer::new("merged rewrite order").register(&pool);
        let mut merged_from = Vec::new();
        let mut streams = Vec::with_capacity(sources.len());
        let mut schema = None;
        for (index, (path, _, _)) in sources.iter().enumerate() {
            let from = u16::try_from(index)
                .map_err(|_| Error::Internal(format!("a merge of {} files", sources.len())))?;
            let rows = self.live_rows(version, path).await?;
            let read = rows.schema();
            let tagged = Arc::new(Schema::new(
                read.fields()
                    .iter()
                    .cloned()
                    .chain([Arc::new(Field::new(MERGED_FROM, DataType::UInt16, false))])
                    .collect::<Vec<_>>(),
            ));
            let with_file = tagged.clone();
            let rows = rows.map(move |batch| {
                let batch = batch?;
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(UInt16Array::from_value(from, batch.num_rows())));
                Ok(RecordBatch::try_new(with_file.clone(), columns)?)
            });
            schema.get_or_insert(tagged.clone());
            streams.push(Box::pin(RecordBatchStreamAdapter::new(tagged, rows))
                as datafusion::execution::SendableRecordBatchStream);
        }
        let Some(schema) = schema else {
            return Ok((merged_from, held));
        };
        let ordering = LexOrdering::new(
            self.sort_columns
                .iter()
                .map(|column| Ok(PhysicalSortExpr::new_default(col(column, &schema)?)))
                .collect::<Result<Vec<_>>>()?,
        )
        .ok_or_else(|| Error::Internal("a merge without a sort key".into()))?;
        let metrics = ExecutionPlanMetricsSet::new();
        let mut merged = StreamingMergeBuilder::new()
            .with_streams(streams)
            .with_schema(schema.clone())
            .with_expressions(&ordering)
            .with_metrics(BaselineMetrics::new(&metrics, 0))
            .with_batch_size(MERGE_BATCH_ROWS)
            .with_reservation(MemoryConsumer::new("merged rewrite").register(&pool))
            .build()?;
        let columns: Vec<usize> = (0..schema.fields().len() - 1).collect();
        while let Some(batch) = merged.next().await {
            let batch = batch?;
            let from = batch.column(columns.len()).as_primitive::<UInt16Type>();
            held.try_grow(from.len() * std::mem::size_of::<u16>())?;
            for file in from.values() {
                live[usize::from(*file)] += 1;
            }
            merged_from.extend_from_slice(from.values());
            output.write(&batch.project(&columns)?).await?;
        }
        Ok((merged_from, held))
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
        // The rows deleted meanwhile: file index, place among its live rows as read, place
        // in the order read.
        let mut meanwhile = Vec::new();
        for (index, (path, read_deleted, rows)) in rewrite.sources.iter().enumerate() {
            let Some((add, remove)) = present.remove(path) else {
                return Err(Error::Conflict {
                    path: self.path.clone(),
                });
            };
            lines.push(action_line(Action::Remove(remove))?);
            if let Some(descriptor) = &add.deletion_vector {
                let now = self.read_vector(descriptor).await?;
                for row in &now - read_deleted {
                    let live = row - read_deleted.rank(row);
                    meanwhile.push((index, live, offset + live));
                }
            }
            offset += rows - read_deleted.len();
        }
        for position in rewrite.placement.places(&meanwhile) {
            let file = starts.partition_point(|start| *start <= position) - 1;
            deleted[file].insert(position - starts[file]);
        }
        drop(rewrite.held);
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
        let stored = rewrite_ids(None, 1, SCATTERED).await.concat();
        assert!(stored.is_sorted(), "{stored:?}");
    }

    /// A rewrite writes files of the target size, one after the other; rows deleted while it
    /// ran are found in whichever of them holds them, whether it sorted the rows or not.
    #[tokio::test]
    async fn a_rewrite_writes_files_of_the_target_size() {
        let files = rewrite_ids(None, 4, SCATTERED).await;
        assert_eq!(files.len(), 4, "{files:?}");
        // Written in key order: each file's ids follow the last one's.
        assert!(files.concat().is_sorted(), "{files:?}");
        assert!(
            files.iter().all(|ids| (45..=55).contains(&ids.len())),
            "{files:?}"
        );

        let merged = rewrite_ids(Some(nothing_to_sort()), 3, RUNS).await;
        assert_eq!(merged.len(), 3, "{merged:?}");
        assert!(merged.concat().is_sorted(), "{merged:?}");
    }

    /// A sorted rewrite holds its rows in the server's memory pool; when the pool cannot give
    /// them, it merges the files read in their order, with the same rows, and gives
    /// everything back: sorted runs make a sorted file, other files a file of the same rows.
    #[tokio::test]
    async fn a_rewrite_the_memory_pool_cannot_sort_merges_the_files() {
        let pool = nothing_to_sort();
        let stored = rewrite_ids(Some(pool.clone()), 1, RUNS).await.concat();
        assert!(stored.is_sorted(), "{stored:?}");
        assert_eq!(pool.reserved(), 0);
        let stored = rewrite_ids(Some(pool.clone()), 1, SCATTERED).await.concat();
        assert!(!stored.is_sorted());
        assert_eq!(pool.reserved(), 0);
    }

    /// Ids of two files: scattered (0, 7, 14, ... and 3, 10, 17, ..., mod 200), or sorted
    /// runs (the even ids and the odd ones).
    type Ids = fn(i32, i32) -> i32;
    const SCATTERED: Ids = |file, i| (file * 3 + i * 7) % 200;
    const RUNS: Ids = |file, i| file + i * 2;

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

    /// Two files of 100 ids each (by `layout`) of a table sorted by id, rewritten while rows of both are
    /// deleted, into files of a target size of their bytes' `parts`th part (under `pool`, if
    /// given); the ids of each file written, in their order, the files by their first id.
    async fn rewrite_ids(
        pool: Option<Arc<dyn datafusion::execution::memory_pool::MemoryPool>>,
        parts: u64,
        layout: Ids,
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
        for file in [0, 1] {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int32Array::from_iter_values(
                    (0..100).map(|i| layout(file, i)),
                ))],
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
