//! One Delta table: create, append, rewrite, restore, drop, and read a pinned version.

use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use deltalake::DeltaTableBuilder;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::Action;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode;
use futures::{StreamExt as _, TryStreamExt};
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use url::Url;

use crate::root::StorageRoot;
use crate::{Error, Result};

mod append;
mod deletion;
mod rewrite;
mod scan;

pub use append::Appender;
pub use deletion::{RowChanges, RowSet};
pub use rewrite::Rewrite;
pub use scan::{FILE_COLUMN, ROW_COLUMN, RowScan};

/// How long the Delta log of a table created here keeps a version loadable: a day, where
/// Delta's default is 30 days. A table that a streaming view or a mirror commits to every
/// second makes 86,400 commits a day; its older versions' data files are gone after
/// `--vacuum-retention` (an hour by default) anyway.
const LOG_RETENTION: &str = "interval 1 days";

/// A duration as a Delta table property's interval.
fn interval(duration: std::time::Duration) -> String {
    format!("interval {} milliseconds", duration.as_millis())
}

/// How long the table keeps a removed file in its log (Delta's default: a week).
fn file_retention(table: &deltalake::DeltaTable) -> Result<std::time::Duration> {
    use deltalake::table::config::TablePropertiesExt as _;
    Ok(table
        .snapshot()?
        .table_config()
        .deleted_file_retention_duration())
}

/// Rows per Parquet row group of the files written here (parquet's default): the number of
/// distinct values a row group's bloom filter is sized for at most.
const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Rows per data page of the files of a table with a sort key ([`TableHandle::with_sort_key`]),
/// where parquet's default is 20,000: a lookup of k keys among n sorted rows reads about
/// 1 - e^(-k * rows / n) of the pages, so smaller pages let rounds of thousands of changes
/// skip most of a table of tens of millions of rows.
const SORTED_PAGE_ROWS: usize = 4096;

/// The bytes of encoded rows a writer's row group holds under a memory limit of `limit`
/// bytes (none: no limit): a sixteenth of it, 8 to 128 MiB.
pub fn row_group_budget(limit: Option<u64>) -> usize {
    (limit.unwrap_or(u64::MAX) / 16).clamp(8 << 20, 128 << 20) as usize
}

/// The least room in the memory pool a writer's row group gets ([`TableHandle::write_buffer`]):
/// a write the pool cannot give that much fails.
pub(crate) const WRITE_BUFFER_BYTES_MIN: usize = 1 << 20;

/// False-positive rate of the bloom filters written for [`TableHandle::with_bloom_filters`].
const BLOOM_FILTER_FPP: f64 = 0.01;

/// A table stored under the root. Cheap to create; holds no open state of its own.
#[derive(Debug, Clone)]
pub struct TableHandle {
    root: Arc<StorageRoot>,
    path: String,
    url: Url,
    /// Columns whose values the files written through this handle index in bloom filters.
    bloom_columns: Arc<[String]>,
    /// Columns written without a dictionary ([`Self::without_dictionary`]).
    plain_columns: Arc<[String]>,
    /// Columns that rewrites order their rows by ([`Self::with_sort_key`]).
    sort_columns: Arc<[String]>,
    /// Rows per data page of a table with a sort key ([`Self::with_page_rows`]).
    page_rows: usize,
    /// The size of the files rewrites write, instead of the table's
    /// ([`Self::with_target_file_size`]).
    target_file_bytes: Option<u64>,
}

/// Which files [`TableHandle::replace_files`] replaces.
#[derive(Debug, Clone, Copy)]
pub enum Replaced<'a> {
    /// Every file of the version the staged rows were computed from.
    All,
    /// These files (paths as [`DataFile::path`] gives them).
    Only(&'a [String]),
}

/// One data file of a table version, as its Delta log entry describes it.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// The path relative to the table, as the log holds it.
    pub path: String,
    /// Rows in the file, deleted ones included.
    pub rows: u64,
    /// Rows of the file that its deletion vector marks deleted.
    pub deleted: u64,
    /// The file's size in bytes.
    pub bytes: u64,
    /// The smallest value of each column with statistics (the log's `minValues`).
    pub min_values: serde_json::Map<String, serde_json::Value>,
}

/// Data files written by [`TableHandle::stage`] and not committed yet.
#[derive(Debug)]
pub struct StagedFiles {
    adds: Vec<deltalake::kernel::Add>,
    /// Rows in the files.
    pub rows: u64,
}

/// What an append committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The table version that holds the appended rows.
    pub version: u64,
    /// Rows written.
    pub rows: u64,
}

impl StorageRoot {
    /// A handle on the table stored at `path` (relative to the root, `/`-separated).
    /// Refused unless the path stays inside the root and means one directory everywhere
    /// ([`crate::check_table_path`]).
    pub fn table(self: &Arc<Self>, path: &str) -> Result<TableHandle> {
        let url = crate::location::table_url(self.url(), path)?;
        Ok(TableHandle::new(self.clone(), path.to_string(), url))
    }
}

impl TableHandle {
    pub(crate) fn new(root: Arc<StorageRoot>, path: String, url: Url) -> Self {
        Self {
            root,
            path,
            url,
            bloom_columns: Arc::from([]),
            plain_columns: Arc::from([]),
            sort_columns: Arc::from([]),
            page_rows: SORTED_PAGE_ROWS,
            target_file_bytes: None,
        }
    }

    /// The same table, with rewrites ([`Self::prepare_rewrite`]) writing the rows they merge
    /// ordered by `columns` when the rows fit [`rewrite::SORTED_REWRITE_BYTES`], so that the
    /// pages of the files they write hold narrow ranges of the columns' values (see
    /// [`RowScan::narrow_to_keys`]). Larger rewrites keep their inputs' order: inputs that
    /// are sorted runs stay sorted runs.
    pub fn with_sort_key(mut self, columns: &[String]) -> Self {
        self.sort_columns = columns.into();
        self
    }

    /// The same table, with the files of its sort key written in pages of `rows` rows (4,096
    /// unless told): a narrow table looked up by key, such as a mirror's key table, reads
    /// fewer rows a lookup with smaller pages, at a few bytes of page header each.
    pub fn with_page_rows(mut self, rows: usize) -> Self {
        self.page_rows = rows.max(1);
        self
    }

    /// The same table, with rewrites ([`Self::prepare_rewrite`]) writing files of about
    /// `bytes` each rather than of the table's `delta.targetFileSize`.
    pub fn with_target_file_size(mut self, bytes: u64) -> Self {
        self.target_file_bytes = Some(bytes.max(1));
        self
    }

    /// The same table, with files written from now on indexing `columns` in bloom filters,
    /// so that a lookup of one value (`col = v`, `col IN (...)`) skips the row groups that
    /// do not hold it even when the column's values are spread over every file.
    pub fn with_bloom_filters(mut self, columns: &[String]) -> Self {
        self.bloom_columns = columns.into();
        self
    }

    /// The same table, with files written from now on storing `columns` without a dictionary:
    /// columns of mostly distinct values, such as a mirror's ordering values. Parquet fills a
    /// dictionary page (up to 1 MiB) before it falls back to plain values, and every read of
    /// a row group decompresses and decodes that page, even to read one of its pages.
    pub fn without_dictionary(mut self, columns: &[String]) -> Self {
        self.plain_columns = columns.into();
        self
    }

    /// The table's path relative to the storage root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The table's full URL, for external engines (Spark, DuckDB, Trino).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Creates an empty table with this schema and returns its first version.
    pub async fn create(&self, schema: &Schema) -> Result<u64> {
        let kernel: deltalake::kernel::StructType = schema
            .try_into_kernel()
            .map_err(|e| Error::Internal(format!("schema not representable in Delta: {e}")))?;
        if let Ok(path) = self.url.to_file_path() {
            std::fs::create_dir_all(&path).map_err(|e| Error::InvalidLocation {
                location: self.url.to_string(),
                reason: e.to_string(),
            })?;
        }
        // Built without loading: the location has no log yet, and loading would only fail.
        let table = DeltaTableBuilder::from_url(self.url.clone())?
            .build()?
            .create()
            .with_columns(kernel.fields().cloned())
            // Many small commits (single-row INSERTs, rounds) would make every load replay a
            // long log; a checkpoint every few commits keeps loading short (they are written
            // by `checkpoints`, which other writers read from this property).
            .with_configuration_property(
                deltalake::TableProperty::CheckpointInterval,
                Some(crate::checkpoints::CHECKPOINT_COMMITS.to_string()),
            )
            .with_configuration_property(
                deltalake::TableProperty::LogRetentionDuration,
                Some(LOG_RETENTION),
            )
            .with_configuration_property(
                deltalake::TableProperty::DeletedFileRetentionDuration,
                Some(interval(self.root.file_retention())),
            )
            // UPDATE, DELETE and MERGE mark rows in deletion vectors: the table says so from
            // its first version (reader 3 / writer 7 with the feature), and other engines
            // that write it may use them too.
            .with_configuration_property(
                deltalake::TableProperty::EnableDeletionVectors,
                Some("true"),
            )
            .with_save_mode(SaveMode::ErrorIfExists)
            .await?;
        self.remember(&table)
    }

    /// Appends rows on top of `base_version` and returns the new version. Delta's conflict
    /// check runs against every commit made since `base_version`.
    pub async fn append(
        &self,
        base_version: u64,
        batches: Vec<RecordBatch>,
    ) -> Result<AppendOutcome> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(AppendOutcome {
                version: base_version,
                rows: 0,
            });
        }
        let table = self.load(base_version).await?;
        let properties = self.properties(&batches[0].schema(), rows, None);
        let table = table
            .write(batches)
            .with_commit_properties(commit_properties())
            .with_save_mode(SaveMode::Append)
            .with_writer_properties(properties)
            .await?;
        Ok(AppendOutcome {
            version: self.remember(&table)?,
            rows: rows as u64,
        })
    }

    /// Replaces all rows and the schema with `batches` (TRUNCATE). Returns the new version.
    pub async fn overwrite(
        &self,
        base_version: u64,
        batches: Vec<RecordBatch>,
        schema: &Arc<Schema>,
    ) -> Result<u64> {
        let table = self.load(base_version).await?;
        let batches = if batches.is_empty() {
            vec![RecordBatch::new_empty(schema.clone())]
        } else {
            batches
        };
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let properties = self.properties(schema, rows, None);
        let table = table
            .write(batches)
            .with_commit_properties(commit_properties())
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
            .with_writer_properties(properties)
            .await?;
        self.remember(&table)
    }

    /// Writes `batches` as data files of the table without committing them: the expensive
    /// half of a rewrite that [`Self::replace_files`] commits later, under the caller's lock.
    /// Files that are never committed are deleted by [`Self::vacuum`].
    pub async fn stage(&self, version: u64, batches: &[RecordBatch]) -> Result<StagedFiles> {
        let table = self.load(version).await?;
        let Some(first) = batches.first() else {
            return Ok(StagedFiles {
                adds: Vec::new(),
                rows: 0,
            });
        };
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let (buffer, _reserved) = self.write_buffer(None)?;
        let properties = self.properties(&first.schema(), rows, Some(buffer));
        let mut writer = self.file_writer(&table, first.schema(), properties, false)?;
        for batch in batches {
            writer.write(batch).await?;
        }
        Ok(StagedFiles {
            adds: writer.close().await?,
            rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
        })
    }

    /// Room in the server's memory pool for the row group a writer holds until it is full:
    /// `wanted` bytes (by default [`row_group_budget`] of the pool's limit), or as much
    /// of it as the pool gives, halving down to [`WRITE_BUFFER_BYTES_MIN`]; below that the
    /// write fails with the pool's error (53000 to a client). The writer's row groups are
    /// then bounded by the room, so that what writers hold counts against `--memory-limit`
    /// and shrinks, rather than overruns it, when queries hold most of it.
    pub(crate) fn write_buffer(
        &self,
        wanted: Option<usize>,
    ) -> Result<(usize, datafusion::execution::memory_pool::MemoryReservation)> {
        use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit};
        let pool = self.root.memory_pool();
        let mut bytes = wanted
            .unwrap_or_else(|| {
                row_group_budget(match pool.memory_limit() {
                    MemoryLimit::Finite(limit) => Some(limit as u64),
                    MemoryLimit::Infinite | MemoryLimit::Unknown => None,
                })
            })
            .max(WRITE_BUFFER_BYTES_MIN);
        let reservation = MemoryConsumer::new("table write buffer").register(&pool);
        loop {
            match reservation.try_grow(bytes) {
                Ok(()) => return Ok((bytes, reservation)),
                Err(_) if bytes / 2 >= WRITE_BUFFER_BYTES_MIN => bytes /= 2,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// A writer of new data files of `table` (none committed), with `properties` (see
    /// [`Self::properties`]): one file, or with `roll`, files of the table's target size
    /// (`delta.targetFileSize`, 100 MiB by default).
    pub(super) fn file_writer(
        &self,
        table: &deltalake::DeltaTable,
        schema: arrow::datatypes::SchemaRef,
        properties: deltalake::parquet::file::properties::WriterProperties,
        roll: bool,
    ) -> Result<DeltaWriter> {
        use deltalake::table::config::TablePropertiesExt as _;
        let table_config = table.snapshot()?.table_config();
        let config = WriterConfig::new(
            schema,
            Vec::new(),
            Some(properties),
            roll.then(|| table_config.target_file_size()),
            None,
            table_config.num_indexed_cols(),
            None,
        );
        Ok(DeltaWriter::new(table.object_store(), config))
    }

    /// Commits `staged` in place of `replaced` files of `read_version` (the version the
    /// staged rows were computed from), as a new version on top of `on_version`; other files,
    /// such as those commits after `read_version` added, stay. The caller holds the table's
    /// write lock. Fails with [`Error::Conflict`] if a replaced file is no longer in
    /// `on_version` (another rewrite removed it), so that staged rows never bring back rows
    /// that were rewritten meanwhile.
    pub async fn replace_files(
        &self,
        read_version: u64,
        on_version: u64,
        replaced: Replaced<'_>,
        staged: StagedFiles,
    ) -> Result<u64> {
        let read = self.load(read_version).await?;
        let on = self.load(on_version).await?;
        let present: std::collections::HashSet<String> = on
            .snapshot()?
            .log_data()
            .iter()
            .map(|file| file.path().to_string())
            .collect();
        let wanted: Option<std::collections::HashSet<&str>> = match replaced {
            Replaced::All => None,
            Replaced::Only(paths) => Some(paths.iter().map(String::as_str).collect()),
        };
        let mut removes = Vec::new();
        for file in read.snapshot()?.log_data().iter() {
            let path = file.path();
            if wanted.as_ref().is_some_and(|w| !w.contains(path.as_ref())) {
                continue;
            }
            if !present.contains(path.as_ref()) {
                return Err(Error::Conflict {
                    path: self.path.clone(),
                });
            }
            removes.push(Action::Remove(file.remove_action(true)));
        }
        if wanted.is_some_and(|w| w.len() != removes.len()) {
            return Err(Error::Conflict {
                path: self.path.clone(),
            });
        }
        let actions = removes
            .into_iter()
            .chain(staged.adds.into_iter().map(Action::Add))
            .collect();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: None,
            predicate: None,
        };
        let commit = CommitBuilder::from(commit_properties())
            .with_actions(actions)
            .build(Some(on.snapshot()?), on.log_store(), operation)
            .await?;
        let mut table = on.clone();
        table.state = Some(commit.snapshot());
        self.remember(&table)
    }

    /// The size of the files a rewrite writes ([`Self::prepare_rewrite`]): the handle's
    /// ([`Self::with_target_file_size`]), or the table's `delta.targetFileSize` (100 MiB by
    /// default).
    pub async fn target_file_size(&self, version: u64) -> Result<u64> {
        self.target_of(&self.load(version).await?)
    }

    /// [`Self::target_file_size`] of `table`, a version of this one.
    pub(super) fn target_of(&self, table: &deltalake::DeltaTable) -> Result<u64> {
        use deltalake::table::config::TablePropertiesExt as _;
        match self.target_file_bytes {
            Some(bytes) => Ok(bytes),
            None => Ok(table.snapshot()?.table_config().target_file_size().get()),
        }
    }

    /// The data files `version` reads.
    pub async fn files(&self, version: u64) -> Result<Vec<DataFile>> {
        let table = self.load(version).await?;
        let files = table
            .snapshot()?
            .log_data()
            .iter()
            .map(|file| {
                let stats: Option<serde_json::Value> = file
                    .stats()
                    .and_then(|text| serde_json::from_str(&text).ok());
                let min_values = stats
                    .as_ref()
                    .and_then(|s| s.get("minValues"))
                    .and_then(serde_json::Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                DataFile {
                    path: file.path().to_string(),
                    rows: file.num_records().unwrap_or_default() as u64,
                    deleted: file
                        .deletion_vector_descriptor()
                        .map_or(0, |vector| vector.cardinality.max(0) as u64),
                    bytes: file.size().max(0) as u64,
                    min_values,
                }
            })
            .collect();
        Ok(files)
    }

    /// A DataFusion provider that reads only `paths` (as [`Self::files`] gives them) of
    /// `version`.
    pub async fn provider_of(
        &self,
        version: u64,
        paths: &[String],
    ) -> Result<Arc<dyn TableProvider>> {
        let table = self.load(version).await?;
        let provider = table
            .table_provider()
            .with_session(scan_session())
            .with_file_paths(paths.iter().cloned())
            .build()
            .await?;
        Ok(Arc::new(provider))
    }

    /// A DataFusion provider that reads exactly `version` (a [`RowScan`] without the row
    /// locators): deletion vectors are row selections of the Parquet scan. Versions are
    /// immutable, so providers are cached per (table, version).
    pub async fn provider(&self, version: u64) -> Result<Arc<dyn TableProvider>> {
        let key = (self.path.clone(), version);
        if let Some(provider) = self
            .root
            .snapshots()
            .get(&key)
            .and_then(|snapshot| snapshot.provider)
        {
            return Ok(provider);
        }
        let scan = self.scan(version, false).await?;
        let bytes = scan.estimated_bytes();
        let provider: Arc<dyn TableProvider> = Arc::new(scan);
        self.root
            .snapshots()
            .set_provider(&key, provider.clone(), bytes);
        Ok(provider)
    }

    /// True if the Delta log holds a commit after `version`: a cheap existence check of the
    /// next commit file, without replaying the log.
    pub async fn has_commits_after(&self, version: u64) -> Result<bool> {
        let next = Path::from(format!("{}/_delta_log/{:020}.json", self.path, version + 1));
        match self.root.object_store().head(&next).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// The newest version in the Delta log, whether or not the catalog has pinned it.
    pub async fn latest_version(&self) -> Result<u64> {
        let table = deltalake::open_table(self.url.clone()).await?;
        table_version(&table)
    }

    /// Makes the table's content equal to `version` again with a new commit, and returns that
    /// commit's version. Used to undo Delta commits that never became visible in the catalog.
    pub async fn restore(&self, version: u64) -> Result<u64> {
        let table = deltalake::open_table(self.url.clone()).await?;
        let (table, _metrics) = table
            .restore()
            .with_version_to_restore(version)
            .with_commit_properties(commit_properties())
            .await?;
        self.remember(&table)
    }

    /// The number of data files `version` reads.
    pub async fn file_count(&self, version: u64) -> Result<usize> {
        let table = self.load(version).await?;
        Ok(table.snapshot()?.log_data().num_files())
    }

    /// Rewrites the small files of `version` into files of about `target_bytes`, as a new
    /// version with the same rows. Returns the new version, or None if there was nothing to
    /// compact. Readers of older versions are unaffected: their files stay until vacuumed.
    pub async fn compact(&self, version: u64, target_bytes: u64) -> Result<Option<u64>> {
        let table = self.load(version).await?;
        let target = std::num::NonZeroU64::new(target_bytes.max(1)).expect("at least 1");
        let (table, metrics) = table
            .optimize()
            .with_commit_properties(commit_properties())
            .with_type(deltalake::operations::optimize::OptimizeType::Compact)
            .with_target_size(target)
            .await?;
        if metrics.num_files_removed == 0 {
            return Ok(None);
        }
        Ok(Some(self.remember(&table)?))
    }

    /// Makes the table keep a removed file in its log for `retention` (its
    /// `delta.deletedFileRetentionDuration`) with a commit on top of `version`, which must be
    /// the latest. Returns the new version, with the same rows, or None if it keeps files that
    /// long already.
    ///
    /// Delta's default is 7 days, and every checkpoint repeats every removal of that long:
    /// a mirror table replaces a few files' deletion vectors each round, which after a week
    /// at 10,000 changes a second would be millions of removals in every checkpoint.
    pub async fn set_file_retention(
        &self,
        version: u64,
        retention: std::time::Duration,
    ) -> Result<Option<u64>> {
        let table = self.load(version).await?;
        if file_retention(&table)? == retention {
            return Ok(None);
        }
        let properties = std::collections::HashMap::from([(
            deltalake::TableProperty::DeletedFileRetentionDuration
                .as_ref()
                .to_string(),
            interval(retention),
        )]);
        let table = table
            .set_tbl_properties()
            .with_properties(properties)
            .with_commit_properties(commit_properties())
            .await?;
        Ok(Some(self.remember(&table)?))
    }

    /// Deletes data files and deletion vectors that the latest version does not read and
    /// that were removed (or, for files no commit ever named, written) more than `retention`
    /// ago. Returns how many files were deleted. The caller makes sure the latest version is
    /// the one readers pin.
    ///
    /// A file whose removal has left the log (after the table's
    /// `delta.deletedFileRetentionDuration`, [`Self::set_file_retention`]) looks like a file
    /// no commit named, whose age is when it was written: deleting those too is safe only
    /// when the log keeps removals at least `retention`. Otherwise only files whose removal
    /// the log still holds are deleted, and the rest wait for a later vacuum.
    ///
    /// A replaced deletion vector file is deleted only once vacuum has found it replaced for
    /// `retention`: the log records no time for it (its removal names the data file), and its
    /// age is when it was written, which may be long before it was replaced.
    ///
    /// No commit records the vacuum (delta-rs' VACUUM START and END): the catalog would not
    /// pin them, and a table's next writer takes unpinned commits for a failed transaction's.
    pub async fn vacuum(&self, retention: std::time::Duration) -> Result<usize> {
        use deltalake::operations::vacuum::VacuumMode;
        let table = deltalake::open_table(self.url.clone()).await?;
        let mode = if retention <= file_retention(&table)? {
            VacuumMode::Full
        } else {
            VacuumMode::Lite
        };
        let period = chrono::Duration::from_std(retention)
            .map_err(|e| Error::Internal(format!("vacuum retention out of range: {e}")))?;
        let store = table.log_store().object_store(None);
        let (_, plan) = table
            .vacuum()
            .with_retention_period(period)
            .with_enforce_retention_duration(false)
            .with_mode(mode)
            .with_dry_run(true)
            .await?;
        let (vectors, mut files): (Vec<Path>, Vec<Path>) = plan
            .files_deleted
            .iter()
            .map(|file| Path::parse(file).unwrap_or_else(|_| Path::from(file.as_str())))
            .partition(|file| {
                file.filename()
                    .is_some_and(|name| name.starts_with("deletion_vector_"))
            });
        files.extend(
            self.root
                .replaced_vectors_found_for(&self.path, vectors, retention),
        );
        let locations = files.into_iter().map(Ok).collect::<Vec<_>>();
        let deleted = store
            .delete_stream(futures::stream::iter(locations).boxed())
            .filter(|result| {
                std::future::ready(!matches!(result, Err(object_store::Error::NotFound { .. })))
            })
            .try_collect::<Vec<_>>()
            .await?;
        Ok(deleted.len())
    }

    /// Deletes every file of the table.
    pub async fn delete(&self) -> Result<()> {
        let store = self.root.object_store();
        let prefix = Path::from(self.path.as_str());
        let locations = store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await?;
        if let Ok(dir) = self.url.to_file_path() {
            // A local file system keeps empty directories; object stores have none.
            let _ = std::fs::remove_dir_all(dir);
        }
        self.root.snapshots().forget_table(&self.path);
        self.root.checkpoints().forget(&self.url);
        self.root.forget_replaced_vectors(&self.path);
        Ok(())
    }

    /// The table at `version`, from the cache or by replaying the log.
    async fn load(&self, version: u64) -> Result<deltalake::DeltaTable> {
        let key = (self.path.clone(), version);
        let cached = self.root.snapshots().get(&key);
        if let Some(snapshot) = cached {
            return Ok(snapshot.table);
        }
        let table = DeltaTableBuilder::from_url(self.url.clone())?
            .with_version(version)
            .load()
            .await?;
        self.root.snapshots().insert_loaded(key, table.clone());
        Ok(table)
    }

    /// The Parquet properties of files of `schema` written for about `rows` rows, whose row
    /// groups hold at most `row_group_bytes` encoded bytes when given.
    ///
    /// Pages are compressed with Snappy, which every Parquet reader reads and decompresses
    /// several times faster than ZSTD: with ZSTD (level 1) tables took 0.7x the space, but
    /// TPC-H-shaped queries ran 1.2x as long and seed 000's merge at 100M rows 1.3x. Integer
    /// columns (integers, dates, times, timestamps, decimals of up to 18 digits) fall back
    /// from a dictionary to DELTA_BINARY_PACKED when their values are too many for one, and the
    /// handle's bloom columns (keys, mostly unique) and plain columns skip the dictionary: keys
    /// and timestamps, which mostly rise, take a few bits a row instead of eight bytes. Every
    /// Delta reader (Spark 3.3 on, Trino, DuckDB, Polars, delta-rs) reads both. Bloom filters
    /// on the bloom columns are sized for the rows of one row group.
    fn properties(
        &self,
        schema: &arrow::datatypes::Schema,
        rows: usize,
        row_group_bytes: Option<usize>,
    ) -> deltalake::parquet::file::properties::WriterProperties {
        use deltalake::parquet::basic::{Compression, Encoding};
        use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
        use deltalake::parquet::schema::types::ColumnPath;
        let distinct = rows.clamp(1_000, ROW_GROUP_ROWS) as u64;
        let mut builder = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_max_row_group_bytes(row_group_bytes);
        for field in schema.fields() {
            if stored_as_integers(field.data_type()) {
                let path = ColumnPath::from(field.name().as_str());
                builder = builder.set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
            }
        }
        if !self.sort_columns.is_empty() {
            // Page statistics (the column index) for the sort key only: lookups narrow by it,
            // and the page index of every file of a large table is held in the footer cache,
            // at some 30 bytes a page for each column with page statistics.
            builder = builder
                .set_data_page_row_count_limit(self.page_rows)
                .set_statistics_enabled(EnabledStatistics::Chunk);
            for column in self.sort_columns.iter() {
                builder = builder.set_column_statistics_enabled(
                    ColumnPath::from(column.as_str()),
                    EnabledStatistics::Page,
                );
            }
        }
        for column in self.plain_columns.iter() {
            builder =
                builder.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false);
        }
        for column in self.bloom_columns.iter() {
            let path = ColumnPath::from(column.as_str());
            let integers = schema
                .field_with_name(column)
                .is_ok_and(|field| stored_as_integers(field.data_type()));
            if integers {
                builder = builder.set_column_dictionary_enabled(path.clone(), false);
            }
            builder = builder
                .set_column_bloom_filter_enabled(path.clone(), true)
                .set_column_bloom_filter_max_ndv(path.clone(), distinct)
                .set_column_bloom_filter_fpp(path, BLOOM_FILTER_FPP);
        }
        builder.build()
    }

    /// Remembers a table state a write produced, for the reads and writes that follow.
    fn remember(&self, table: &deltalake::DeltaTable) -> Result<u64> {
        let version = table_version(table)?;
        self.root
            .snapshots()
            .insert_committed((self.path.clone(), version), table.clone());
        self.root.checkpoints().committed(&self.url, version);
        Ok(version)
    }
}

/// How delta-rs commits for this crate: without its post-commit checkpoint and log cleanup,
/// which `checkpoints` does in the background (delta-rs writes the checkpoint before the
/// commit returns, and lists the whole log on every commit to find expired files).
pub(crate) fn commit_properties() -> deltalake::kernel::transaction::CommitProperties {
    deltalake::kernel::transaction::CommitProperties::default()
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
}

/// Whether Parquet stores values of `data_type` as INT32 or INT64 (the types
/// DELTA_BINARY_PACKED encodes).
fn stored_as_integers(data_type: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType;
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Date32
        | DataType::Date64
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Timestamp(..)
        | DataType::Duration(_) => true,
        DataType::Decimal128(precision, _) => *precision <= 18,
        _ => false,
    }
}

fn table_version(table: &deltalake::DeltaTable) -> Result<u64> {
    table
        .version()
        .ok_or_else(|| Error::Internal("a loaded Delta table has no version".to_string()))
}

/// The session delta-rs takes scan settings from. It says so explicitly: Parquet row filters
/// off (filters run after decoding), which delta-rs turns on when given no session. On
/// unsorted data they cost more than they save (the analytics benchmark's TPC-H Q6 spent a
/// third of its time building row selections).
fn scan_session() -> Arc<datafusion::execution::SessionState> {
    static SESSION: std::sync::OnceLock<Arc<datafusion::execution::SessionState>> =
        std::sync::OnceLock::new();
    SESSION
        .get_or_init(|| {
            let mut config = datafusion::prelude::SessionConfig::new();
            config.options_mut().execution.parquet.pushdown_filters = false;
            Arc::new(
                datafusion::execution::SessionStateBuilder::new()
                    .with_config(config)
                    .build(),
            )
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use datafusion::prelude::SessionContext;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn batch(ids: &[i32]) -> RecordBatch {
        let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int32Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    async fn count(table: &TableHandle, version: u64) -> usize {
        let ctx = SessionContext::new();
        ctx.register_table("t", table.provider(version).await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("select * from t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// A table with a sort key writes pages of 4,096 rows, or of the rows its handle asks for.
    #[tokio::test]
    async fn sorted_tables_write_pages_of_the_rows_asked_for() {
        use arrow::array::Int64Array;
        use deltalake::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
        use deltalake::parquet::file::metadata::PageIndexPolicy;
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        use deltalake::parquet::file::page_index::column_index::ColumnIndexMetaData;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..20_480)),
                Arc::new(Int64Array::from_iter_values((0..20_480).map(|i| i * 3))),
            ],
        )
        .unwrap();
        for (name, rows) in [("default", None), ("narrow", Some(1024))] {
            let path = format!("dev/public/{name}-1");
            let mut table = root
                .table(&path)
                .unwrap()
                .with_sort_key(&["id".to_string()]);
            if let Some(rows) = rows {
                table = table.with_page_rows(rows);
            }
            let v0 = table.create(&schema).await.unwrap();
            let v1 = table.append(v0, vec![batch.clone()]).await.unwrap().version;
            let files = table.files(v1).await.unwrap();
            let file = std::fs::File::open(dir.path().join(&path).join(&files[0].path)).unwrap();
            let options =
                ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
            let metadata = ArrowReaderMetadata::load(&file, options).unwrap();
            let offsets = metadata.metadata().offset_index().unwrap();
            for column in &offsets[0] {
                let pages = column.page_locations().len();
                assert_eq!(pages, 20_480 / rows.unwrap_or(SORTED_PAGE_ROWS), "{name}");
            }
            // Page statistics for the sort key only.
            let statistics = metadata.metadata().column_index().unwrap();
            assert!(!matches!(statistics[0][0], ColumnIndexMetaData::NONE));
            assert!(matches!(statistics[0][1], ColumnIndexMetaData::NONE));
        }
    }

    /// Keys skip the dictionary, other integer columns fall back from it to
    /// DELTA_BINARY_PACKED when their values are too many, text keeps Parquet's defaults,
    /// and pages are Snappy-compressed; the rows read back as written.
    #[tokio::test]
    async fn integer_columns_are_delta_encoded_and_pages_snappy_compressed() {
        use arrow::array::{Decimal128Array, Int64Array};
        use deltalake::parquet::basic::{Compression, Encoding};
        use deltalake::parquet::file::reader::FileReader as _;
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = root
            .table("dev/public/enc-1")
            .unwrap()
            .with_bloom_filters(&["id".to_string()])
            .without_dictionary(&["seq".to_string()]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Decimal128(12, 2), false),
            Field::new("note", DataType::Utf8, false),
            Field::new("seq", DataType::Int64, false),
        ]));
        // More distinct amounts than a 1 MiB dictionary holds.
        let rows = 200_000i64;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(
                    Decimal128Array::from_iter_values(
                        (0..rows).map(|i| i128::from(i * 7919 % 1_000_003)),
                    )
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
                ),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("note {}", i % 100)),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..rows).map(|i| i * 7919 % 1_000_003),
                )),
            ],
        )
        .unwrap();
        let v0 = table.create(&schema).await.unwrap();
        let v1 = table.append(v0, vec![batch]).await.unwrap().version;
        assert_eq!(count(&table, v1).await, rows as usize);
        let files = table.files(v1).await.unwrap();
        assert_eq!(files.len(), 1);
        let bytes =
            std::fs::read(dir.path().join("dev/public/enc-1").join(&files[0].path)).unwrap();
        let reader =
            deltalake::parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(bytes))
                .unwrap();
        let group = reader.metadata().row_group(0);
        let (id, amount, note, seq) = (
            group.column(0),
            group.column(1),
            group.column(2),
            group.column(3),
        );
        for column in [id, amount, note, seq] {
            assert!(
                column.compression() == Compression::SNAPPY,
                "{:?}",
                column.compression()
            );
        }
        assert!(id.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
        assert!(
            id.dictionary_page_offset().is_none(),
            "the key has no dictionary"
        );
        assert!(
            amount
                .encodings()
                .any(|e| e == Encoding::DELTA_BINARY_PACKED),
            "too many amounts for a dictionary: {:?}",
            amount.encodings().collect::<Vec<_>>()
        );
        assert!(note.encodings().all(|e| e != Encoding::DELTA_BINARY_PACKED));
        assert!(
            note.dictionary_page_offset().is_some(),
            "few notes: a dictionary"
        );
        // Too many amounts: a dictionary page written, then plain values. A column written
        // without a dictionary has no such page to read.
        assert!(amount.dictionary_page_offset().is_some());
        assert!(
            seq.dictionary_page_offset().is_none(),
            "{:?}",
            seq.encodings().collect::<Vec<_>>()
        );
        assert!(seq.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
        // Eight bytes a key before; now a few bits (the keys rise by one).
        assert!(
            id.compressed_size() < rows / 10,
            "{} bytes of keys",
            id.compressed_size()
        );
    }

    #[tokio::test]
    async fn staged_files_replace_what_they_were_computed_from_and_keep_later_appends() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = root.table("dev/public/t-2").unwrap();
        let v0 = table.create(&schema()).await.unwrap();
        let v1 = table.append(v0, vec![batch(&[1, 2, 3])]).await.unwrap();
        // Computed from v1 (three rows become one), committed after another append.
        let staged = table.stage(v1.version, &[batch(&[9])]).await.unwrap();
        assert_eq!(staged.rows, 1);
        let v2 = table
            .append(v1.version, vec![batch(&[4, 5])])
            .await
            .unwrap();
        assert_eq!(count(&table, v2.version).await, 5);
        let v3 = table
            .replace_files(v1.version, v2.version, Replaced::All, staged)
            .await
            .unwrap();
        assert_eq!(v3, v2.version + 1);
        assert_eq!(count(&table, v3).await, 3, "9, then 4 and 5");
        assert_eq!(
            count(&table, v2.version).await,
            5,
            "older versions still read"
        );
        assert_eq!(table.latest_version().await.unwrap(), v3);
    }

    #[tokio::test]
    async fn chosen_files_are_replaced_unless_another_rewrite_removed_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = root
            .table("dev/public/t-3")
            .unwrap()
            .with_bloom_filters(&["id".to_string()]);
        let v0 = table.create(&schema()).await.unwrap();
        let v1 = table.append(v0, vec![batch(&[1, 2])]).await.unwrap();
        let v2 = table
            .append(v1.version, vec![batch(&[3, 4])])
            .await
            .unwrap();
        let files = table.files(v2.version).await.unwrap();
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 4);
        assert!(files.iter().all(|f| f.min_values.contains_key("id")));
        let second: Vec<String> = files
            .iter()
            .filter(|f| f.min_values["id"] == 3)
            .map(|f| f.path.clone())
            .collect();
        assert_eq!(second.len(), 1);
        // Every written file indexes the bloom column.
        let bytes = std::fs::read(dir.path().join("dev/public/t-3").join(&second[0])).unwrap();
        let reader =
            deltalake::parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(bytes))
                .unwrap();
        use deltalake::parquet::file::reader::FileReader as _;
        let column = reader.metadata().row_group(0).column(0);
        assert!(
            column.bloom_filter_offset().is_some(),
            "id has a bloom filter"
        );

        // The second file's rows (3, 4) become one, with the first file untouched.
        let staged = table.stage(v2.version, &[batch(&[7])]).await.unwrap();
        let v3 = table
            .replace_files(v2.version, v2.version, Replaced::Only(&second), staged)
            .await
            .unwrap();
        assert_eq!(count(&table, v3).await, 3, "1, 2 and 7");
        // The same files again, computed from v2 too: they are gone, so nothing commits.
        let staged = table.stage(v2.version, &[batch(&[8])]).await.unwrap();
        let outcome = table
            .replace_files(v2.version, v3, Replaced::Only(&second), staged)
            .await;
        assert!(
            matches!(outcome, Err(Error::Conflict { .. })),
            "{outcome:?}"
        );
        let staged = table.stage(v2.version, &[batch(&[8])]).await.unwrap();
        let outcome = table
            .replace_files(v2.version, v3, Replaced::All, staged)
            .await;
        assert!(
            matches!(outcome, Err(Error::Conflict { .. })),
            "{outcome:?}"
        );
        assert_eq!(table.latest_version().await.unwrap(), v3);
    }

    #[tokio::test]
    async fn pinned_versions_stay_readable_after_later_appends() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = root.table("dev/public/t-1").unwrap();
        let v0 = table.create(&schema()).await.unwrap();
        let v1 = table.append(v0, vec![batch(&[1, 2])]).await.unwrap();
        let v2 = table.append(v1.version, vec![batch(&[3])]).await.unwrap();
        assert_eq!((v1.rows, v2.rows), (2, 1));
        assert_eq!(count(&table, v0).await, 0);
        assert_eq!(count(&table, v1.version).await, 2);
        assert_eq!(count(&table, v2.version).await, 3);
        assert_eq!(table.latest_version().await.unwrap(), v2.version);
        assert!(table.has_commits_after(v1.version).await.unwrap());
        assert!(!table.has_commits_after(v2.version).await.unwrap());

        let v3 = table.restore(v1.version).await.unwrap();
        assert_eq!(count(&table, v3).await, 2);

        table.delete().await.unwrap();
        assert!(table.latest_version().await.is_err());
    }
}
