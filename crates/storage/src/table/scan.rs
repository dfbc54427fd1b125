//! The scan of one table version: DataFusion's own Parquet scan over the version's data files.
//! Filters, and the join filters DataFusion derives at run time, prune files and row groups
//! by their statistics and bloom filters; a filter naming a column's values, and a lookup of
//! many keys ([`RowScan::narrow_to_keys`]), narrow the scan to the pages that may hold them.
//! Each file's deletion vector becomes a row selection of the Parquet reader, so deleted rows
//! are never decoded. Queries read tables through it.
//!
//! UPDATE, DELETE and MERGE read their target through its other form, which also says where
//! each row lives: the number of its data file and its index in that file (the reader's
//! row-number column), which is what a deletion vector names.

use std::sync::Arc;

use arrow::array::{Array as _, ArrayRef, AsArray as _};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ScalarValue, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetRowSelection,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result as DfResult;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use deltalake::parquet::arrow::RowNumber;
use deltalake::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use deltalake::parquet::basic::BoundaryOrder;
use deltalake::parquet::bloom_filter::Sbbf;
use deltalake::parquet::file::page_index::column_index::ColumnIndexMetaData;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use roaring::RoaringTreemap;

use super::TableHandle;
use crate::{Error, Result};

/// Deletion vector files read at once when a scan is built, and file footers when a scan is
/// narrowed to keys.
const VECTOR_READS: usize = 16;

/// A lookup of at most this many keys tests them in the bloom filters of the row groups that
/// may hold them by their pages' bounds, where a filter is at most [`BLOOM_BYTES_MAX`].
const BLOOM_KEYS_MAX: usize = 16;

/// See [`BLOOM_KEYS_MAX`]: a filter of this size serves tens of thousands of keys, so a row
/// group's filter is read only where the group is small (a mirror's round file), never a
/// large group's to spare the read of one of its pages.
const BLOOM_BYTES_MAX: i32 = 64 * 1024;

/// A file narrowed to keys ([`RowScan::narrow_to_keys`]) of which at least this fraction of
/// rows would be read is read whole.
const WHOLE_FILE_FRACTION: f64 = 0.8;

/// The column that numbers a row's data file (see [`RowScan::path_of`]).
pub const FILE_COLUMN: &str = "__tributary_file";
/// The column that holds a row's index in its data file, counted from 0.
pub const ROW_COLUMN: &str = "__tributary_row";

/// A table version's rows; from [`TableHandle::row_scan`], each with its data file's number
/// and its index in the file.
#[derive(Debug)]
pub struct RowScan {
    /// The table's columns, then (with `locators`) [`FILE_COLUMN`] and [`ROW_COLUMN`].
    schema: SchemaRef,
    locators: bool,
    table_schema: TableSchema,
    files: Vec<ScanFile>,
    store_url: ObjectStoreUrl,
    store: Arc<dyn object_store::ObjectStore>,
}

#[derive(Debug)]
struct ScanFile {
    /// The path the Delta log gives.
    path: String,
    /// Where the object store keeps it.
    location: Path,
    size: u64,
    /// From the file's statistics; needed where it has a deletion vector.
    rows: Option<u64>,
    /// The rows its deletion vector marks deleted.
    deleted: Option<RoaringTreemap>,
    /// The rows [`RowScan::narrow_to_keys`] keeps: the pages that may hold a key.
    narrowed: Option<RowSelection>,
}

impl TableHandle {
    /// The rows of `version`, with where each lives.
    pub async fn row_scan(&self, version: u64) -> Result<RowScan> {
        self.scan(version, true).await
    }

    /// The rows of `version`, with [`FILE_COLUMN`] and [`ROW_COLUMN`] after the table's
    /// columns if `locators`.
    pub(super) async fn scan(&self, version: u64, locators: bool) -> Result<RowScan> {
        let table = self.load(version).await?;
        let snapshot = table.snapshot()?;
        let file_schema = view_types(&snapshot.snapshot().arrow_schema());
        let mut files = Vec::new();
        let mut vectors = Vec::new();
        for file in snapshot.log_data().iter() {
            let path = file.path().to_string();
            let rows = file.num_records().map(|rows| rows as u64);
            if let Some(descriptor) = file.deletion_vector_descriptor() {
                if rows.is_none() {
                    return Err(Error::Internal(format!(
                        "{path} has a deletion vector but no row count in its statistics"
                    )));
                }
                vectors.push((files.len(), descriptor));
            }
            files.push(ScanFile {
                location: Path::from(format!("{}/{}", self.path, file.object_store_path())),
                size: file.size().max(0) as u64,
                path,
                rows,
                deleted: None,
                narrowed: None,
            });
        }
        // The vectors are small reads; on an object store their latency dominates, so they
        // run concurrently.
        let reads = vectors.into_iter().map(|(index, descriptor)| {
            let handle = self.clone();
            async move { Ok::<_, Error>((index, handle.read_vector(&descriptor).await?)) }
        });
        let read: Vec<(usize, RoaringTreemap)> = futures::stream::iter(reads)
            .buffer_unordered(VECTOR_READS)
            .try_collect()
            .await?;
        for (index, deleted) in read {
            files[index].deleted = Some(deleted);
        }
        let file_column: FieldRef = Arc::new(Field::new(FILE_COLUMN, DataType::UInt32, false));
        let row_column: FieldRef =
            Arc::new(Field::new(ROW_COLUMN, DataType::Int64, false).with_extension_type(RowNumber));
        let (table_schema, schema) = if locators {
            let table_schema = TableSchema::builder(file_schema.clone())
                .with_table_partition_cols(vec![file_column.clone()])
                .with_virtual_columns(vec![row_column.clone()])
                .build();
            let fields = file_schema.fields().iter().cloned();
            let schema = Schema::new(fields.chain([file_column, row_column]).collect::<Vec<_>>());
            (table_schema, Arc::new(schema))
        } else {
            (TableSchema::from(file_schema.clone()), file_schema)
        };
        let store_url = ObjectStoreUrl::parse(format!(
            "tributary-{:016x}://",
            hash(self.root.url().as_str())
        ))?;
        Ok(RowScan {
            schema,
            locators,
            table_schema,
            files,
            store_url,
            store: self.root.object_store(),
        })
    }
}

impl RowScan {
    /// About what the scan holds in memory: its file list and the files' deletion vectors.
    pub(crate) fn estimated_bytes(&self) -> usize {
        self.files
            .iter()
            .map(|file| {
                std::mem::size_of::<ScanFile>()
                    + file.path.len()
                    + file.location.as_ref().len()
                    + file
                        .deleted
                        .as_ref()
                        .map_or(0, RoaringTreemap::serialized_size)
            })
            .sum()
    }

    /// Narrows the scan to the data pages that may hold one of `keys` in `column`, by each
    /// file's page index (the smallest and largest value of every page): in files sorted by
    /// the column, a lookup of a few keys reads a few pages, where a join's run-time filter
    /// would read every row (it prunes with at most 20 values). Files none of whose pages
    /// can hold a key are left out, and a file without a page index is read whole. Rows are
    /// kept or dropped a page at a time, so the scan still yields rows of other keys: the
    /// caller's join picks its keys' rows. Null keys match nothing.
    /// `footers` is the runtime's cache of file footers, if any.
    pub async fn narrow_to_keys(
        &mut self,
        column: &str,
        keys: &ArrayRef,
        footers: Option<Arc<FileMetadataCache>>,
    ) -> Result<()> {
        let narrowed = self.pages_of_keys(column, keys, footers).await?;
        for (file, pages) in self.files.iter_mut().zip(narrowed) {
            file.narrowed = pages;
        }
        Ok(())
    }

    /// For each file, the rows of the pages that may hold one of `keys` in `column`, or None
    /// where the file is read whole (see [`Self::narrow_to_keys`]).
    async fn pages_of_keys(
        &self,
        column: &str,
        keys: &ArrayRef,
        footers: Option<Arc<FileMetadataCache>>,
    ) -> Result<Vec<Option<RowSelection>>> {
        let Some(sought) = SoughtKeys::new(keys)? else {
            // No key at all: no row can match.
            return Ok(vec![Some(RowSelection::from(Vec::new())); self.files.len()]);
        };
        // Owned by each read: borrowed futures in a stream make callers' futures fail to be
        // Send (a higher-ranked lifetime).
        let sought = Arc::new(sought);
        let column: Arc<str> = Arc::from(column);
        let files: Vec<(usize, Path, u64)> = self
            .files
            .iter()
            .enumerate()
            .map(|(index, file)| (index, file.location.clone(), file.size))
            .collect();
        let reads = files.into_iter().map(|(index, location, size)| {
            let store = self.store.clone();
            let sought = sought.clone();
            let column = column.clone();
            let footers = footers.clone();
            async move {
                let pages =
                    pages_with_keys(store.as_ref(), &location, size, &column, &sought, footers)
                        .await?;
                Ok::<_, Error>((index, pages))
            }
        });
        let read: Vec<(usize, Option<RowSelection>)> = futures::stream::iter(reads)
            .buffer_unordered(VECTOR_READS)
            .try_collect()
            .await?;
        let mut narrowed = vec![None; self.files.len()];
        for (index, pages) in read {
            narrowed[index] = pages;
        }
        Ok(narrowed)
    }

    /// The Delta log path of the file that [`FILE_COLUMN`] numbers `file`.
    pub fn path_of(&self, file: u32) -> Option<&str> {
        self.files.get(file as usize).map(|f| f.path.as_str())
    }

    /// One scan entry per file with live rows, its deletion vector as a row selection, with
    /// its live rows if its statistics count them. `narrowed`, if given, narrows the files
    /// instead of [`Self::narrow_to_keys`], one entry a file.
    fn partitioned_files(
        &self,
        narrowed: Option<&[Option<RowSelection>]>,
    ) -> Result<Vec<(PartitionedFile, Option<u64>)>> {
        let mut out = Vec::with_capacity(self.files.len());
        for (number, file) in self.files.iter().enumerate() {
            let deleted_rows = file.deleted.as_ref().map_or(0, RoaringTreemap::len);
            let live = file.rows.map(|rows| rows.saturating_sub(deleted_rows));
            if live == Some(0) {
                continue;
            }
            let mut entry = PartitionedFile::new(file.location.as_ref(), file.size);
            if self.locators {
                entry = entry.with_partition_values(vec![ScalarValue::UInt32(Some(number as u32))]);
            }
            let deleted = file.deleted.as_ref().filter(|deleted| !deleted.is_empty());
            let narrowed = match narrowed {
                Some(narrowed) => narrowed.get(number).and_then(Option::as_ref),
                None => file.narrowed.as_ref(),
            };
            let (live, rows_read) = match (narrowed, deleted, file.rows) {
                // A narrowed file's deletions count only where it is read: a round of a
                // large mirror reads a few pages of files that have many deleted rows.
                (Some(narrowed), deleted, _) => {
                    let read = match deleted {
                        Some(deleted) => without_deleted(narrowed, deleted),
                        None => narrowed.clone(),
                    };
                    if !read.selects_any() {
                        continue;
                    }
                    (Some(read.row_count() as u64), Some(read))
                }
                (None, Some(deleted), Some(rows)) => (live, Some(selection(deleted, rows)?)),
                (None, _, _) => (live, None),
            };
            if let Some(read) = rows_read {
                entry = entry.with_extension(ParquetRowSelection::new(read));
            }
            out.push((entry, live));
        }
        Ok(out)
    }
}

/// The rows of a file of `rows` rows that `deleted` leaves.
fn selection(deleted: &RoaringTreemap, rows: u64) -> Result<RowSelection> {
    let mut selectors = Vec::new();
    let mut next = 0u64;
    for index in deleted.iter() {
        if index >= rows {
            return Err(Error::Internal(format!(
                "a deletion vector names row {index} of a file of {rows} rows"
            )));
        }
        if index > next {
            selectors.push(RowSelector::select((index - next) as usize));
        }
        selectors.push(RowSelector::skip(1));
        next = index + 1;
    }
    if next < rows {
        selectors.push(RowSelector::select((rows - next) as usize));
    }
    Ok(RowSelection::from(selectors))
}

/// The rows `narrowed` reads less those `deleted` names: its selectors, with each read one
/// split around the deleted rows within it.
fn without_deleted(narrowed: &RowSelection, deleted: &RoaringTreemap) -> RowSelection {
    let mut selectors = Selectors::default();
    let mut deleted_rows = deleted.iter();
    let mut next_deleted = deleted_rows.next();
    let mut at = 0u64;
    for selector in narrowed.iter() {
        let end = at + selector.row_count as u64;
        if selector.skip {
            selectors.push(false, selector.row_count);
            at = end;
            continue;
        }
        if next_deleted.is_some_and(|row| row < at) {
            deleted_rows.advance_to(at);
            next_deleted = deleted_rows.next();
        }
        let mut from = at;
        while let Some(row) = next_deleted.filter(|&row| row < end) {
            selectors.push(true, (row - from) as usize);
            selectors.push(false, 1);
            from = row + 1;
            next_deleted = deleted_rows.next();
        }
        selectors.push(true, (end - from) as usize);
        at = end;
    }
    RowSelection::from(selectors.0)
}

/// The keys a narrowed scan looks for, sorted. Integer, string and binary keys are compared
/// with page bounds as the page index keeps them; where the bounds ascend (the Parquet
/// writer records it, and files sorted by the key have it), each key is searched among the
/// pages, so a lookup costs the keys' count times the logarithm of the pages'. Other keys
/// are compared in the row format of Arrow's row converter, which orders values as their
/// type does.
struct SoughtKeys {
    data_type: DataType,
    converter: RowConverter,
    rows: Rows,
    native: NativeKeys,
}

/// The keys as the page index of their column stores its bounds, where the index's order of
/// values is the keys' own.
enum NativeKeys {
    /// Signed integers, dates and timestamps: Parquet's INT32 or INT64.
    Integers(Vec<i64>),
    /// Strings and binaries: Parquet's BYTE_ARRAY, ordered byte by byte.
    Bytes(arrow::array::BinaryArray),
    /// Compared in the row format only.
    None,
}

impl SoughtKeys {
    /// None when `keys` holds no value but nulls.
    fn new(keys: &ArrayRef) -> Result<Option<Self>> {
        // Page statistics come as plain strings and binaries, not views.
        let data_type = match keys.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
            other => other.clone(),
        };
        let keys = arrow::compute::cast(keys, &data_type)?;
        let keys = arrow::compute::filter(&keys, &arrow::compute::is_not_null(&keys)?)?;
        if keys.is_empty() {
            return Ok(None);
        }
        let keys = arrow::compute::sort(&keys, None)?;
        let native = match &data_type {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Date32
            | DataType::Timestamp(_, _) => {
                let integers = arrow::compute::cast(&keys, &DataType::Int64)?;
                NativeKeys::Integers(
                    integers
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values()
                        .to_vec(),
                )
            }
            DataType::Utf8 | DataType::Binary => NativeKeys::Bytes(
                arrow::compute::cast(&keys, &DataType::Binary)?
                    .as_binary::<i32>()
                    .clone(),
            ),
            _ => NativeKeys::None,
        };
        let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
        let rows = converter.convert_columns(&[keys])?;
        Ok(Some(Self {
            data_type,
            converter,
            rows,
            native,
        }))
    }

    /// Page bounds in the keys' form; None where a bound is unknown.
    fn bounds(&self, values: &ArrayRef) -> Result<(Rows, arrow::buffer::NullBuffer)> {
        let values = arrow::compute::cast(values, &self.data_type)?;
        let known = values
            .logical_nulls()
            .unwrap_or_else(|| arrow::buffer::NullBuffer::new_valid(values.len()));
        Ok((self.converter.convert_columns(&[values])?, known))
    }

    /// The keys looked up.
    fn len(&self) -> usize {
        self.rows.num_rows()
    }

    /// Whether `filter`, the bloom filter of a column chunk indexed by `index`, may hold a
    /// key: true unless it can tell. Only keys whose Parquet values are Arrow's own (32- and
    /// 64-bit integers, strings, binaries) are tested: the filter hashes the stored value.
    fn may_be_in(&self, filter: &Sbbf, index: &ColumnIndexMetaData) -> bool {
        use ColumnIndexMetaData as Index;
        match (&self.native, &self.data_type, index) {
            (NativeKeys::Integers(keys), DataType::Int32, Index::INT32(_)) => keys
                .iter()
                .any(|key| i32::try_from(*key).map_or(true, |key| filter.check(&key))),
            (NativeKeys::Integers(keys), DataType::Int64, Index::INT64(_)) => {
                keys.iter().any(|key| filter.check(key))
            }
            (NativeKeys::Bytes(keys), DataType::Utf8 | DataType::Binary, Index::BYTE_ARRAY(_)) => {
                keys.iter()
                    .any(|key| key.is_none_or(|key| filter.check(key)))
            }
            _ => true,
        }
    }

    /// Whether a key lies in [min, max].
    fn any_between(&self, min: arrow::row::Row<'_>, max: arrow::row::Row<'_>) -> bool {
        let count = self.rows.num_rows();
        let first = partition_point(count, |i| self.rows.row(i) < min);
        first < count && self.rows.row(first) <= max
    }

    /// The runs of pages (first, end) of a row group that may hold a key, when its index
    /// keeps the bounds in the keys' native form; None otherwise. Pages of nulls hold none.
    /// `nullable`: whether the column chunk may have nulls (else no page is of nulls only).
    fn native_runs(
        &self,
        index: &ColumnIndexMetaData,
        nullable: bool,
    ) -> Option<Vec<(usize, usize)>> {
        use ColumnIndexMetaData as Index;
        let pages = index.num_pages() as usize;
        let nulls = |page: usize| nullable && index.is_null_page(page);
        // Pages whose bounds ascend (sorted files) are searched key by key. Whether a page
        // is of nulls only is asked of the chunk first: a point query asks it of every row
        // group of every file.
        let ascending = index.get_boundary_order() == Some(BoundaryOrder::ASCENDING)
            && !(nullable && (0..pages).any(nulls));
        match (&self.native, index) {
            (NativeKeys::Integers(keys), Index::INT32(index)) => Some(runs_with_keys(
                ascending,
                keys.len(),
                |i| keys[i],
                pages,
                |p| i64::from(index.min_values()[p]),
                |p| i64::from(index.max_values()[p]),
                nulls,
            )),
            (NativeKeys::Integers(keys), Index::INT64(index)) => Some(runs_with_keys(
                ascending,
                keys.len(),
                |i| keys[i],
                pages,
                |p| index.min_values()[p],
                |p| index.max_values()[p],
                nulls,
            )),
            (NativeKeys::Bytes(keys), Index::BYTE_ARRAY(index)) => Some(runs_with_keys(
                ascending,
                keys.len(),
                |i| keys.value(i),
                pages,
                // Only pages of nulls lack bounds, and they are never asked for theirs.
                |p| index.min_value(p).unwrap_or_default(),
                |p| index.max_value(p).unwrap_or_default(),
                nulls,
            )),
            _ => None,
        }
    }
}

/// The runs of pages (first, end), in order and apart, that may hold one of `keys` sorted
/// values (`key(i)` is the i-th), by the pages' smallest (`min`) and largest (`max`) values:
/// by [`runs_holding`] when the bounds ascend, else by [`runs_holding`] in each stretch of
/// pages whose bounds ascend, between pages of nulls only (`nulls`). A file of sorted runs
/// written one after another (a load's) has a few long stretches; unsorted pages make
/// stretches of a page or two, each searched for its keys by a binary search.
fn runs_with_keys<V: Ord>(
    ascending: bool,
    keys: usize,
    key: impl Fn(usize) -> V,
    pages: usize,
    min: impl Fn(usize) -> V,
    max: impl Fn(usize) -> V,
    nulls: impl Fn(usize) -> bool,
) -> Vec<(usize, usize)> {
    if ascending {
        return runs_holding(keys, key, pages, min, max);
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < pages {
        if nulls(start) {
            start += 1;
            continue;
        }
        let mut end = start + 1;
        while end < pages && !nulls(end) && min(end - 1) <= min(end) && max(end - 1) <= max(end) {
            end += 1;
        }
        let stretch = runs_holding(
            keys,
            &key,
            end - start,
            |p| min(start + p),
            |p| max(start + p),
        );
        for (first, last) in stretch {
            match runs.last_mut() {
                Some(run) if run.1 == start + first => run.1 = start + last,
                _ => runs.push((start + first, start + last)),
            }
        }
        start = end;
    }
    runs
}

/// Adds `page`, past every page in `runs`, to the runs of pages (first, end).
fn add_page(runs: &mut Vec<(usize, usize)>, page: usize) {
    match runs.last_mut() {
        Some(last) if last.1 == page => last.1 = page + 1,
        _ => runs.push((page, page + 1)),
    }
}

/// The runs of pages (first, end), in order and apart, holding one of `keys` sorted values
/// (`key(i)` is the i-th), among `pages` pages whose smallest (`min`) and largest (`max`)
/// values both ascend. The pages that hold a key are the consecutive ones from the first
/// whose largest value reaches it to the last whose smallest does not pass it: two binary
/// searches a key.
fn runs_holding<V: Ord>(
    keys: usize,
    key: impl Fn(usize) -> V,
    pages: usize,
    min: impl Fn(usize) -> V,
    max: impl Fn(usize) -> V,
) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    if pages == 0 {
        return runs;
    }
    // Only the keys within the group's bounds.
    let first_key = partition_point(keys, |i| key(i) < min(0));
    let end_key = partition_point(keys, |i| key(i) <= max(pages - 1));
    // No page before `from` holds a key from here on: the keys ascend.
    let mut from = 0;
    for i in first_key..end_key {
        let value = key(i);
        let first = from + partition_point(pages - from, |p| max(from + p) < value);
        from = first;
        if first == pages {
            break;
        }
        let end = first + partition_point(pages - first, |p| min(first + p) <= value);
        if end == first {
            continue;
        }
        match runs.last_mut() {
            Some(last) if first <= last.1 => last.1 = last.1.max(end),
            _ => runs.push((first, end)),
        }
    }
    runs
}

/// The first index in 0..count for which `before` is false (`before` is true, then false).
fn partition_point(count: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, count);
    while low < high {
        let middle = low + (high - low) / 2;
        if before(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

/// Row selectors built run by run, neighbours of one kind merged.
#[derive(Default)]
struct Selectors(Vec<RowSelector>);

impl Selectors {
    fn push(&mut self, read: bool, rows: usize) {
        if rows == 0 {
            return;
        }
        match self.0.last_mut() {
            Some(last) if last.skip != read => last.row_count += rows,
            _ => self.0.push(if read {
                RowSelector::select(rows)
            } else {
                RowSelector::skip(rows)
            }),
        }
    }
}

/// The rows of the file's pages whose bounds for `column` may hold a sought key, from its
/// footer's page index (through the runtime's cache of file footers, which DataFusion's scan
/// of the same file then finds); None when the file has no page index (it is read whole).
async fn pages_with_keys(
    store: &dyn object_store::ObjectStore,
    location: &Path,
    size: u64,
    column: &str,
    sought: &SoughtKeys,
    footers: Option<Arc<FileMetadataCache>>,
) -> Result<Option<RowSelection>> {
    use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
    use deltalake::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    use deltalake::parquet::file::metadata::PageIndexPolicy;

    // As DataFusion's scan describes the file, so that both share the cached footer.
    let meta = PartitionedFile::new(location.as_ref(), size).object_meta;
    let parquet = DFParquetMetadata::new(store, &meta)
        .with_file_metadata_cache(footers)
        .with_page_index_policy(Some(PageIndexPolicy::Optional))
        .fetch_metadata()
        .await?;
    let (Some(column_index), Some(offset_index)) = (parquet.column_index(), parquet.offset_index())
    else {
        return Ok(None);
    };
    let schema = parquet.file_metadata().schema_descr();
    let Some(position) = schema
        .columns()
        .iter()
        .position(|c| c.path().parts() == [column])
    else {
        return Ok(None);
    };
    let field = Field::new(column, sought.data_type.clone(), true);
    let statistics = StatisticsConverter::from_column_index(position, &field, schema)?;
    let mut selectors = Selectors::default();
    for (group, metadata) in parquet.row_groups().iter().enumerate() {
        let (Some(index), Some(offsets)) = (
            column_index.get(group).and_then(|g| g.get(position)),
            offset_index.get(group).and_then(|g| g.get(position)),
        ) else {
            return Ok(None);
        };
        if matches!(index, ColumnIndexMetaData::NONE) {
            // No page statistics for the column (a sorted table keeps them for its key
            // only): nothing to narrow by.
            return Ok(None);
        }
        let group_rows = metadata.num_rows().max(0) as usize;
        let locations = offsets.page_locations();
        // Where each page's rows start in the group, and where the group ends.
        let start = |page: usize| -> usize {
            locations
                .get(page)
                .map_or(group_rows, |l| l.first_row_index.max(0) as usize)
        };
        let chunk = metadata.column(position);
        // Without a null count in its statistics, the chunk may have nulls.
        let nullable = chunk
            .statistics()
            .and_then(|statistics| statistics.null_count_opt())
            != Some(0);
        let mut runs = match sought.native_runs(index, nullable) {
            Some(runs) => runs,
            None => {
                let mins = statistics.data_page_mins(column_index, offset_index, [&group])?;
                let maxes = statistics.data_page_maxes(column_index, offset_index, [&group])?;
                let (mins, mins_known) = sought.bounds(&mins)?;
                let (maxes, maxes_known) = sought.bounds(&maxes)?;
                let mut runs: Vec<(usize, usize)> = Vec::new();
                for page in 0..locations.len() {
                    let read = !mins_known.is_valid(page)
                        || !maxes_known.is_valid(page)
                        || sought.any_between(mins.row(page), maxes.row(page));
                    if read {
                        add_page(&mut runs, page);
                    }
                }
                runs
            }
        };
        // A file a mirror's round wrote spans the key range in each of its pages: a point
        // query would read a page of it (and each column's dictionary) for nothing. Its row
        // groups are small, and so are their bloom filters: few keys are tested in them.
        if !runs.is_empty()
            && sought.len() <= BLOOM_KEYS_MAX
            && let (Some(offset), Some(length)) =
                (chunk.bloom_filter_offset(), chunk.bloom_filter_length())
            && (1..=BLOOM_BYTES_MAX).contains(&length)
        {
            let offset = offset.max(0) as u64;
            let bytes = store
                .get_range(location, offset..offset + length as u64)
                .await?;
            if Sbbf::from_bytes(&bytes).is_ok_and(|filter| !sought.may_be_in(&filter, index)) {
                runs.clear();
            }
        }
        let mut at = 0;
        for (first, end) in runs {
            let (from, to) = (start(first), start(end));
            selectors.push(false, from.saturating_sub(at));
            selectors.push(true, to.saturating_sub(from));
            at = to.max(at);
        }
        selectors.push(false, group_rows.saturating_sub(at));
    }
    let selection = RowSelection::from(selectors.0);
    // Reading most of a file page by page costs more than reading it whole.
    let rows = parquet.file_metadata().num_rows().max(0) as f64;
    if selection.row_count() as f64 >= rows * WHOLE_FILE_FRACTION {
        return Ok(None);
    }
    Ok(Some(selection))
}

/// The column and values a conjunct of `filters` requires: `column = value`, `value =
/// column` or `column IN (values)`, with literals of the column's own type in `schema` (a
/// string literal for a column of strings), not floating point.
fn values_sought(filters: &[Expr], schema: &Schema) -> Option<(String, ArrayRef)> {
    use datafusion::logical_expr::{BinaryExpr, Operator, expr::InList};
    let of_column = |column: &Expr, values: Vec<&Expr>| -> Option<(String, ArrayRef)> {
        let Expr::Column(column) = column else {
            return None;
        };
        let field = schema.field_with_name(&column.name).ok()?;
        if field.data_type().is_floating() {
            // Equal floats need not order alike (-0.0 and 0.0, NaN): no narrowing by them.
            return None;
        }
        let strings =
            |t: &DataType| matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
        let scalars = values
            .into_iter()
            .map(|value| match value {
                Expr::Literal(scalar, _)
                    if scalar.data_type() == *field.data_type()
                        || (strings(&scalar.data_type()) && strings(field.data_type())) =>
                {
                    Some(scalar.clone())
                }
                _ => None,
            })
            .collect::<Option<Vec<ScalarValue>>>()?;
        let scalars: Vec<ScalarValue> = scalars
            .into_iter()
            .map(|scalar| scalar.cast_to(field.data_type()))
            .collect::<DfResult<_>>()
            .ok()?;
        let values = ScalarValue::iter_to_array(scalars).ok()?;
        Some((column.name.clone(), values))
    };
    filters.iter().find_map(|filter| match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => of_column(left, vec![right]).or_else(|| of_column(right, vec![left])),
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if !list.is_empty() => of_column(expr, list.iter().collect()),
        _ => None,
    })
}

/// The schema with strings and binaries read as view arrays, as DataFusion reads Parquet by
/// default (`schema_force_view_types`): grouping, joining and comparing short strings then
/// works on the views' inline prefixes.
fn view_types(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            let data_type = match field.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
                DataType::Binary | DataType::LargeBinary => DataType::BinaryView,
                other => other.clone(),
            };
            field.as_ref().clone().with_data_type(data_type)
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[async_trait]
impl TableProvider for RowScan {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let external = |e: Error| datafusion::error::DataFusionError::External(Box::new(e));
        // A filter that names the values of a column (`id = 5`, `id IN (5, 7)`) narrows the
        // scan to the pages that may hold them, as a round's lookup does: in files sorted by
        // the column, a point query reads a page or two, and only their deleted rows count.
        let narrowed = match values_sought(filters, &self.schema) {
            Some((column, values)) if self.files.iter().all(|f| f.narrowed.is_none()) => {
                let footers = state.runtime_env().cache_manager.get_file_metadata_cache();
                Some(
                    self.pages_of_keys(&column, &values, Some(footers))
                        .await
                        .map_err(external)?,
                )
            }
            _ => None,
        };
        let files = self
            .partitioned_files(narrowed.as_deref())
            .map_err(external)?;
        if files.is_empty() {
            let schema = match projection {
                Some(indices) => Arc::new(self.schema.project(indices)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        state
            .runtime_env()
            .register_object_store(self.store_url.as_ref(), self.store.clone());
        let live: Option<u64> = files.iter().map(|(_, live)| *live).sum();
        // Files spread over the session's partitions, largest first onto the emptiest.
        let weight =
            |file: &PartitionedFile, live: Option<u64>| live.unwrap_or(file.object_meta.size);
        let partitions = state.config().target_partitions().max(1);
        let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); partitions];
        let mut files = files;
        files.sort_by_key(|(file, live)| std::cmp::Reverse(weight(file, *live)));
        for (file, live) in files {
            let emptiest = groups
                .iter_mut()
                .min_by_key(|(rows, _)| *rows)
                .expect("at least one group");
            emptiest.0 += weight(&file, live);
            emptiest.1.push(file);
        }
        let groups: Vec<FileGroup> = groups
            .into_iter()
            .filter(|(_, files)| !files.is_empty())
            .map(|(_, files)| FileGroup::new(files))
            .collect();
        let mut statistics = Statistics::new_unknown(&self.schema);
        if let Some(live) = live {
            statistics.num_rows = Precision::Exact(live as usize);
        }
        // Footers and page indexes come from the runtime's cache, as in DataFusion's own
        // tables: without it each scan read and decoded them again (for a mirror's round,
        // a tenth of its time).
        let runtime = state.runtime_env();
        let footers = CachedParquetFileReaderFactory::new(
            runtime.object_store(&self.store_url)?,
            runtime.cache_manager.get_file_metadata_cache(),
        );
        let mut source = ParquetSource::new(self.table_schema.clone())
            .with_table_parquet_options(state.table_options().parquet.clone())
            .with_parquet_file_reader_factory(Arc::new(footers));
        if narrowed.is_some() {
            // The pages that may hold the values are chosen already: a row group's bloom
            // filter (a MiB for a million keys) would be read to spare the read of a page.
            source = source.with_bloom_filter_on_read(false);
        }
        let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters stay above the scan, which DataFusion's physical optimizer pushes them
        // into, for pruning files and row groups.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{AsArray, Int32Array, RecordBatch};
    use arrow::datatypes::{Int32Type, Int64Type, UInt32Type};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::{RowChanges, StorageRoot};

    /// Scans read footers and page indexes through the runtime's cache: after one query, the
    /// cache holds every file the query read, so the next query of them decodes none again.
    #[tokio::test]
    async fn scans_keep_file_footers_in_the_runtime_cache() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (table, _, version) =
            crate::table::deletion::tests::two_files(&root, "dev/public/t-6", 0..10, 10..30).await;
        let ctx = SessionContext::new();
        let footers = ctx.runtime_env().cache_manager.get_file_metadata_cache();
        assert_eq!(footers.len(), 0);
        ctx.register_table("t", table.provider(version).await.unwrap())
            .unwrap();
        let rows: usize = ctx
            .sql("SELECT id FROM t WHERE id % 2 = 0")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        assert_eq!(rows, 15);
        assert_eq!(footers.len(), 2, "one footer a file");
    }

    #[tokio::test]
    async fn rows_come_with_their_file_and_index_and_deleted_rows_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = root
            .table("dev/public/t-5")
            .unwrap()
            .with_bloom_filters(&["id".to_string()]);
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let batch = |ids: std::ops::Range<i32>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int32Array::from_iter_values(ids))],
            )
            .unwrap()
        };
        let v0 = table.create(&schema).await.unwrap();
        let v1 = table.append(v0, vec![batch(0..50)]).await.unwrap().version;
        let v2 = table.append(v1, vec![batch(50..60)]).await.unwrap().version;
        let first = table
            .files(v2)
            .await
            .unwrap()
            .into_iter()
            .find(|f| f.rows == 50)
            .unwrap()
            .path;
        let changes = RowChanges {
            deleted: BTreeMap::from([(first.clone(), [0, 10, 11, 49].into_iter().collect())]),
            added: None,
        };
        let v3 = table.change_rows(v2, changes, "DELETE").await.unwrap();

        let scan = Arc::new(table.row_scan(v3).await.unwrap());
        let ctx = SessionContext::new();
        ctx.register_table("t", scan.clone()).unwrap();
        let batches = ctx
            .sql(&format!(
                "select id, {FILE_COLUMN}, {ROW_COLUMN} from t where id % 10 = 1 or id > 47 order by id"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for batch in &batches {
            for i in 0..batch.num_rows() {
                let file = batch.column(1).as_primitive::<UInt32Type>().value(i);
                rows.push((
                    batch.column(0).as_primitive::<Int32Type>().value(i),
                    scan.path_of(file).unwrap() == first,
                    batch.column(2).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        // Rows 11 and 49 of the first file are deleted; the second file's rows count from 0.
        let expected = vec![
            (1, true, 1),
            (21, true, 21),
            (31, true, 31),
            (41, true, 41),
            (48, true, 48),
            (50, false, 0),
            (51, false, 1),
            (52, false, 2),
            (53, false, 3),
            (54, false, 4),
            (55, false, 5),
            (56, false, 6),
            (57, false, 7),
            (58, false, 8),
            (59, false, 9),
        ];
        assert_eq!(rows, expected);
    }
    #[tokio::test]
    async fn a_scan_narrowed_to_keys_reads_only_the_pages_that_may_hold_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = root.table("dev/public/sorted").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = |ids: std::ops::Range<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(arrow::array::Int64Array::from_iter_values(ids))],
            )
            .unwrap()
        };
        // One sorted file of 200k ids, and one of ids far above them. The writer ends a page
        // at the end of its first batch of 1,024 rows past 20,000 rows or 1 MiB.
        const PAGE_MAX: usize = 21 * 1024;
        let v0 = table.create(&schema).await.unwrap();
        let v1 = table
            .append(v0, vec![batch(0..200_000)])
            .await
            .unwrap()
            .version;
        let v2 = table
            .append(v1, vec![batch(1_000_000..1_000_100)])
            .await
            .unwrap()
            .version;
        let big = table
            .files(v2)
            .await
            .unwrap()
            .into_iter()
            .find(|f| f.rows == 200_000)
            .unwrap()
            .path;
        // Row 150_001 is deleted.
        let changes = RowChanges {
            deleted: BTreeMap::from([(big.clone(), [150_001u64].into_iter().collect())]),
            added: None,
        };
        let v3 = table.change_rows(v2, changes, "DELETE").await.unwrap();

        let read = |keys: Vec<Option<i64>>| {
            let table = table.clone();
            async move {
                let mut scan = table.row_scan(v3).await.unwrap();
                let keys: ArrayRef = Arc::new(arrow::array::Int64Array::from(keys));
                scan.narrow_to_keys("id", &keys, None).await.unwrap();
                let ctx = SessionContext::new();
                ctx.register_table("t", Arc::new(scan)).unwrap();
                let batches = ctx
                    .sql("select id from t")
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                let mut ids: Vec<i64> = batches
                    .iter()
                    .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                    .collect();
                ids.sort_unstable();
                ids
            }
        };
        // Keys in two pages of the big file (one given twice) and none of the small file's.
        let ids = read(vec![Some(150_002), Some(5), None, Some(150_002)]).await;
        assert!(ids.contains(&5) && ids.contains(&150_002) && !ids.contains(&150_001));
        // Two runs of consecutive ids, less the deleted row: two pages.
        let gaps: Vec<&[i64]> = ids
            .windows(2)
            .filter(|w| w[1] != w[0] + 1 && w != &[150_000, 150_002])
            .collect();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(ids.len() < 2 * PAGE_MAX, "{} rows read", ids.len());
        // A key of the small file only, a key between the files, and no key at all.
        assert_eq!(
            read(vec![Some(1_000_050)]).await,
            (1_000_000..1_000_100).collect::<Vec<_>>()
        );
        assert!(read(vec![Some(500_000)]).await.is_empty());
        assert!(read(vec![None]).await.is_empty());
        assert!(read(Vec::new()).await.is_empty());

        // A query's filter on the column narrows its scan the same way: the files without a
        // page that may hold its values are not read, and deleted rows stay deleted.
        let ctx = SessionContext::new();
        ctx.register_table("t", table.provider(v3).await.unwrap())
            .unwrap();
        let ids = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
                batches
                    .iter()
                    .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                    .collect::<Vec<i64>>()
            }
        };
        assert_eq!(ids("select id from t where id = 150002").await, [150_002]);
        assert_eq!(
            ids("select id from t where id in (150001, 150002, 1000050) order by id").await,
            [150_002, 1_000_050]
        );
        assert!(ids("select id from t where 150001 = id").await.is_empty());
        let plan = ctx
            .sql("explain select id from t where id = 5")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let plan = arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert_eq!(plan.matches(".parquet").count(), 1, "{plan}");
    }

    /// A small deterministic generator for the brute-force checks below.
    fn numbers(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut state = seed;
        move |below| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % below
        }
    }

    #[test]
    fn the_pages_searched_by_key_are_those_whose_bounds_hold_a_key() {
        let mut next = numbers(7);
        for _ in 0..2_000 {
            // Ascending pages, neighbours sharing values at times, as sorted files have.
            let pages = next(12) as usize;
            let mut bounds = Vec::new();
            let mut value = next(5) as i64;
            for _ in 0..pages {
                let min = value + next(3) as i64;
                let max = min + next(4) as i64;
                bounds.push((min, max));
                value = max;
            }
            let mut keys: Vec<i64> = (0..next(6)).map(|_| next(40) as i64).collect();
            keys.sort_unstable();
            // Searched as ascending, then page by page after a shuffle with pages of nulls.
            let ascending = runs_holding(
                keys.len(),
                |i| keys[i],
                pages,
                |p| bounds[p].0,
                |p| bounds[p].1,
            );
            let expected = |bounds: &[(i64, i64)], nulls: &[bool]| {
                let mut runs: Vec<(usize, usize)> = Vec::new();
                for (page, &(min, max)) in bounds.iter().enumerate() {
                    if !nulls[page] && keys.iter().any(|k| (min..=max).contains(k)) {
                        add_page(&mut runs, page);
                    }
                }
                runs
            };
            assert_eq!(
                ascending,
                expected(&bounds, &vec![false; pages]),
                "pages {bounds:?}, keys {keys:?}"
            );
            // Stretches of ascending pages in descending order, as a load writes them.
            let cut = next(pages as u64 + 1) as usize;
            let mut blocks = bounds[cut..].to_vec();
            blocks.extend_from_slice(&bounds[..cut]);
            let by_stretch = runs_with_keys(
                false,
                keys.len(),
                |i| keys[i],
                pages,
                |p| blocks[p].0,
                |p| blocks[p].1,
                |_| false,
            );
            assert_eq!(
                by_stretch,
                expected(&blocks, &vec![false; pages]),
                "pages {blocks:?}, keys {keys:?}"
            );
            for page in (1..pages).rev() {
                bounds.swap(page, next(page as u64 + 1) as usize);
            }
            let nulls: Vec<bool> = (0..pages).map(|_| next(4) == 0).collect();
            let by_page = runs_with_keys(
                false,
                keys.len(),
                |i| keys[i],
                pages,
                |p| bounds[p].0,
                |p| bounds[p].1,
                |p| nulls[p],
            );
            assert_eq!(
                by_page,
                expected(&bounds, &nulls),
                "pages {bounds:?}, nulls {nulls:?}, keys {keys:?}"
            );
        }
    }

    #[test]
    fn a_narrowed_selection_less_its_deleted_rows_is_their_intersection() {
        let mut next = numbers(11);
        for _ in 0..2_000 {
            let rows = 1 + next(60);
            let mut selectors = Selectors::default();
            let mut at = 0;
            while at < rows {
                let run = (1 + next(8)).min(rows - at);
                selectors.push(next(2) == 0, run as usize);
                at += run;
            }
            let narrowed = RowSelection::from(selectors.0);
            let deleted: RoaringTreemap = (0..next(20)).map(|_| next(rows)).collect();
            let expected = selection(&deleted, rows).unwrap().intersection(&narrowed);
            let got = without_deleted(&narrowed, &deleted);
            let rows_of = |selection: &RowSelection| {
                let mut read = Vec::new();
                let mut at = 0;
                for selector in selection.iter() {
                    if !selector.skip {
                        read.extend(at..at + selector.row_count);
                    }
                    at += selector.row_count;
                }
                read
            };
            assert_eq!(rows_of(&got), rows_of(&expected));
            assert_eq!(got.row_count(), expected.row_count());
        }
    }

    /// Files whose pages each span the key range (a mirror's round files) are passed over by
    /// a lookup of a few keys where their row groups' bloom filters rule the keys out.
    #[tokio::test]
    async fn a_few_keys_skip_files_whose_bloom_filters_rule_them_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        for (path, bloom) in [("dev/public/evens", true), ("dev/public/plain", false)] {
            let mut table = root
                .table(path)
                .unwrap()
                .with_sort_key(&["id".to_string()])
                .with_page_rows(1024);
            if bloom {
                table = table.with_bloom_filters(&["id".to_string()]);
            }
            let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
            let ids = |step: usize, from: i64| {
                let ids = (0..20_000).map(|i| from + 2 * i as i64).step_by(step);
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(arrow::array::Int64Array::from_iter_values(ids))],
                )
                .unwrap()
            };
            // Even ids, then odd ones: both files' pages span the same range.
            let v0 = table.create(&schema).await.unwrap();
            let v1 = table.append(v0, vec![ids(1, 0)]).await.unwrap().version;
            let v2 = table.append(v1, vec![ids(1, 1)]).await.unwrap().version;
            let pages = |keys: Vec<i64>| {
                let table = table.clone();
                async move {
                    let mut scan = table.row_scan(v2).await.unwrap();
                    let keys: ArrayRef = Arc::new(arrow::array::Int64Array::from(keys));
                    scan.narrow_to_keys("id", &keys, None).await.unwrap();
                    scan.files
                        .iter()
                        .map(|file| {
                            file.narrowed
                                .as_ref()
                                .map_or(usize::MAX, RowSelection::row_count)
                        })
                        .collect::<Vec<_>>()
                }
            };
            let one_page = |rows: usize| (1..=2048).contains(&rows);
            // One even key, one odd key: the other file is skipped with bloom filters only.
            for key in [20_000, 20_001] {
                let mut read = pages(vec![key]).await;
                read.sort_unstable();
                if bloom {
                    assert!(read[0] == 0 && one_page(read[1]), "{key}: {read:?}");
                } else {
                    assert!(read.iter().all(|rows| one_page(*rows)), "{key}: {read:?}");
                }
            }
            // Many keys are not tested in the filters.
            let many: Vec<i64> = (0..=BLOOM_KEYS_MAX as i64)
                .map(|i| 20_000 + 2 * i)
                .collect();
            assert!(pages(many).await.iter().all(|rows| one_page(*rows)));
        }
    }

    /// String keys are searched in their bytes; a file whose pages are not in key order is
    /// compared page by page; both read the pages of their keys only, and find every row.
    #[tokio::test]
    async fn string_keys_and_unsorted_files_narrow_to_the_pages_of_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        // Appends keep their rows' order; the sort key gives the files page statistics of it.
        let table = root
            .table("dev/public/names")
            .unwrap()
            .with_sort_key(&["name".to_string()])
            .with_page_rows(1024);
        let schema = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)]));
        let batch = |names: Vec<String>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(arrow::array::StringArray::from(names))],
            )
            .unwrap()
        };
        let name = |i: u32| format!("n{i:06}");
        let v0 = table.create(&schema).await.unwrap();
        // Sorted names, then the same names again in blocks of 1,000 in descending order:
        // each page holds a narrow range, but the pages do not ascend.
        let sorted: Vec<String> = (0..20_000).map(name).collect();
        let blocks: Vec<String> = (0..20_000)
            .map(|i| name((19 - i / 1_000) * 1_000 + i % 1_000))
            .collect();
        let v1 = table.append(v0, vec![batch(sorted)]).await.unwrap().version;
        let v2 = table.append(v1, vec![batch(blocks)]).await.unwrap().version;
        let mut scan = table.row_scan(v2).await.unwrap();
        let keys: ArrayRef = Arc::new(arrow::array::StringViewArray::from(vec![
            name(12_345),
            name(3),
            "zzz".to_string(),
        ]));
        scan.narrow_to_keys("name", &keys, None).await.unwrap();
        let mut narrowed: Vec<Option<usize>> = scan
            .files
            .iter()
            .map(|file| file.narrowed.as_ref().map(RowSelection::row_count))
            .collect();
        narrowed.sort_unstable();
        // Pages of 1,024 rows: the sorted file reads the two that hold the keys; the other
        // three, as n012345 lies in the bounds of two pages that straddle its blocks.
        assert_eq!(narrowed, vec![Some(2048), Some(3072)]);
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(scan)).unwrap();
        let batches = ctx
            .sql("select name, count(*) from t where name in ('n012345', 'n000003') group by name order by name")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let found: Vec<(String, i64)> = batches
            .iter()
            .flat_map(|b| {
                (0..b.num_rows()).map(move |i| {
                    (
                        b.column(0).as_string_view().value(i).to_string(),
                        b.column(1).as_primitive::<Int64Type>().value(i),
                    )
                })
            })
            .collect();
        assert_eq!(
            found,
            vec![("n000003".to_string(), 2), ("n012345".to_string(), 2)]
        );
    }
}
