//! Applying a round's changes by key: the mirror's table gets the new rows and deletion
//! vectors for the rows they replace; its key table gets each changed key's new ordering
//! value. A change older than the key's stored one is dropped here. Also the conversion of a
//! mirror stored by an earlier release.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array as _, ArrayRef, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int64Type, Schema, UInt32Type};
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt as _;
use tributary_catalog::{KeyTable, MirrorSpec, Table};
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::layout::{cast_batch, storage_schema};
use tributary_engine::mirror::{
    DELETED_COLUMN, ORDER_COLUMN, key_schema, key_table_path, merged_plan,
};
use tributary_engine::store::Store;
use tributary_engine::table::write_buffer_bytes;
use tributary_storage::{FILE_COLUMN, ROW_COLUMN, RowChanges, RowScan, RowSet, TableHandle};

use crate::aggregate::quoted as quote;
use crate::{Error, Result};

/// Rows per data page of a mirror's files (its table's and its key table's). A round's
/// lookup of k changed keys among n rows reads about 1 - e^(-k * rows / n) of each table's
/// pages, and decodes and probes every row of them: at 100M keys, 10k changed keys read
/// 10% of the pages instead of the 34% that 4,096-row pages would read. Past that, a
/// lookup reads a page per key whatever the table's size, so its cost follows the changes,
/// not the table. A page costs a header and an entry in the file's page index.
const MIRROR_PAGE_ROWS: usize = 1024;

/// The mirror's Delta table (or its key table): files index the key in bloom filters, so a
/// lookup by key skips the files and row groups that do not hold it, and rewrites order
/// their rows by the key, so that each page of their files holds a narrow range of keys.
/// The key table's ordering values, nearly all distinct, skip the dictionary: a round reads
/// a page in most of its row groups, and would decode each one's dictionary page of a
/// MiB to read it.
pub fn storage(store: &Store, path: &str, spec: &MirrorSpec) -> Result<TableHandle> {
    Ok(store
        .storage
        .table(path)?
        .with_bloom_filters(&spec.key)
        .with_sort_key(&spec.key)
        .with_page_rows(MIRROR_PAGE_ROWS)
        .without_dictionary(&[ORDER_COLUMN.to_string()]))
}

/// A session for a round's lookups by key. Its joins build their hash table from the round's
/// changes whatever their number (the round bounds them, and they are in memory already):
/// with DataFusion's default thresholds, 100k changes make a partitioned join, which
/// repartitions every row the scan reads. The scans are narrowed to the pages that may hold
/// a changed key ([`RowScan::narrow_to_keys`]), so the joins' dynamic filters are off: they
/// would prune no further, at the cost of testing every page of every file against the
/// changes' key range in each round. It runs in the server's runtime, so what its joins hold
/// counts against the query memory limit.
fn lookup_context(runtime: Arc<RuntimeEnv>) -> SessionContext {
    let mut config = SessionConfig::new();
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.hash_join_single_partition_threshold = usize::MAX;
    optimizer.hash_join_single_partition_threshold_rows = usize::MAX;
    optimizer.enable_join_dynamic_filter_pushdown = false;
    SessionContext::new_with_config_rt(config, runtime)
}

/// The versions a round's commits made: the mirror's table and its key table.
pub struct Applied {
    pub version: u64,
    pub keys_version: u64,
}

/// Applies `changes` (in [`tributary_engine::mirror::change_schema`], one per key) to the
/// mirror as of its pinned versions: one commit on its key table and one on its table, which
/// the caller pins in its transaction.
pub async fn write_changes(
    store: &Store,
    table: &Table,
    spec: &MirrorSpec,
    changes: RecordBatch,
) -> Result<Applied> {
    let keys = spec
        .keys
        .as_ref()
        .ok_or_else(|| Error::Internal("a mirror table without its key table".into()))?;
    let rows = storage(store, &table.path, spec)?;
    let key_rows = storage(store, &keys.path, spec)?;
    let ctx = lookup_context(store.runtime_env());
    let started = std::time::Instant::now();
    let change_count = changes.num_rows();
    let schema = changes.schema();
    let declared = table.columns.len();
    let key_indexes: Vec<usize> = spec
        .key
        .iter()
        .filter_map(|k| table.columns.iter().position(|c| &c.name == k))
        .collect();
    let first_key = *key_indexes
        .first()
        .ok_or_else(|| Error::Internal("a mirror table without a key".into()))?;
    let changed_keys = changes.column(first_key).clone();
    // A key of one integer column is searched for in the rows read (sorted by it): no join.
    let sought_changes = if key_indexes.len() == 1 {
        sorted_integers(&changed_keys)?
    } else {
        None
    };
    ctx.register_table(
        "c",
        Arc::new(MemTable::try_new(
            schema.clone(),
            vec![vec![changes.clone()]],
        )?),
    )?;
    // Both tables are read only where their pages may hold a changed key (by its first
    // column); the files rounds and rewrites write are sorted by key, so that is a few
    // pages of each.
    let first_key = &table.columns[first_key].name;
    let footers = Some(ctx.runtime_env().cache_manager.get_file_metadata_cache());
    let mut key_scan = key_rows.row_scan(keys.version).await?;
    key_scan
        .narrow_to_keys(first_key, &changed_keys, footers.clone())
        .await?;
    let key_scan = Arc::new(key_scan);
    ctx.register_table("k", key_scan.clone())?;
    let on = |left: &str, right: &str| -> String {
        spec.key
            .iter()
            .map(|k| format!("{left}.{} = {right}.{}", quote(k), quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    // The changes at least as new as their key's stored one (or of a new key), with where
    // that key's row lives in the key table and whether the key is live now.
    let order = quote(ORDER_COLUMN);
    // The rows the winners replace in the table: those of the keys that were live.
    let mut replaced: BTreeMap<String, RowSet> = BTreeMap::new();
    let winners = match &sought_changes {
        Some(sought) => {
            // Both tables are searched at once, the table for every changed key; of the rows
            // found there, those of keys whose change wins and that were live are replaced.
            let in_keys = find_by_key(
                &ctx,
                key_scan.clone(),
                first_key,
                sought,
                &[ORDER_COLUMN, DELETED_COLUMN],
            );
            let in_table = async {
                let mut scan = rows.row_scan(table.version).await?;
                scan.narrow_to_keys(first_key, &changed_keys, footers.clone())
                    .await?;
                let scan = Arc::new(scan);
                let found = find_by_key(&ctx, scan.clone(), first_key, sought, &[]).await?;
                Ok::<_, Error>((scan, found))
            };
            let (in_keys, (scan, in_table)) = futures::try_join!(in_keys, in_table)?;
            let (winners, replaces) = newer_than_stored(&changes, declared, &in_keys)?;
            let replacing: arrow::array::BooleanArray = in_table
                .column(0)
                .as_primitive::<UInt32Type>()
                .values()
                .iter()
                .map(|change| Some(replaces[*change as usize]))
                .collect();
            let in_table = filter_record_batch(&in_table, &replacing)?;
            locate(&scan, std::slice::from_ref(&in_table), 1, &mut replaced)?;
            vec![winners]
        }
        None => {
            ctx.sql(&format!(
                "SELECT c.*, k.{file} AS __key_file, k.{row} AS __key_row, \
             k.{deleted} AS __was_deleted \
             FROM c LEFT JOIN k ON {on} \
             WHERE k.{order} IS NULL OR c.{order} >= k.{order}",
                file = quote(FILE_COLUMN),
                row = quote(ROW_COLUMN),
                deleted = quote(DELETED_COLUMN),
                on = on("c", "k"),
            ))
            .await?
            .collect()
            .await?
        }
    };
    let winners = arrow::compute::concat_batches(
        &winners
            .first()
            .map(RecordBatch::schema)
            .unwrap_or_else(|| Arc::new(winner_schema(&schema))),
        &winners,
    )?;
    let keys_looked_up = started.elapsed();
    if sought_changes.is_none() {
        // Joined: the table's rows of the winners' keys that were live (the key table has
        // the key, not deleted).
        let was_live = arrow::compute::not(&fill_true(winners.column(declared + 4).as_boolean()))?;
        let live_keys = filter_record_batch(&winners.project(&key_indexes)?, &was_live)?;
        if live_keys.num_rows() > 0 {
            let mut scan = rows.row_scan(table.version).await?;
            scan.narrow_to_keys(first_key, live_keys.column(0), footers)
                .await?;
            let scan = Arc::new(scan);
            ctx.register_table("p", scan.clone())?;
            ctx.register_table(
                "w",
                Arc::new(MemTable::try_new(
                    live_keys.schema(),
                    vec![vec![live_keys]],
                )?),
            )?;
            let located = ctx
                .sql(&format!(
                    "SELECT p.{file}, p.{row} FROM p JOIN w ON {on}",
                    file = quote(FILE_COLUMN),
                    row = quote(ROW_COLUMN),
                    on = on("p", "w"),
                ))
                .await?
                .collect()
                .await?;
            locate(&scan, &located, 0, &mut replaced)?;
        }
    }
    let rows_looked_up = started.elapsed();
    let mut stale_keys: BTreeMap<String, RowSet> = BTreeMap::new();
    locate(
        &key_scan,
        std::slice::from_ref(&winners),
        declared + 2,
        &mut stale_keys,
    )?;

    // The key table's new rows: every winner's key, order and deletion mark.
    let key_columns: Vec<usize> = key_indexes
        .iter()
        .copied()
        .chain([declared, declared + 1])
        .collect();
    // Sorted by key, so that lookups read few pages of the files they make.
    let winners = sorted_by(&winners, &key_indexes)?;
    let key_schema = Arc::new(key_schema(table, spec));
    let new_keys = cast_batch(&winners.project(&key_columns)?, &key_schema)?;
    // The table's new rows: the winners that are not deletions, in the declared columns.
    let deleted = winners.column(declared + 1).as_boolean();
    let inserted = filter_record_batch(
        &winners.project(&(0..declared).collect::<Vec<_>>())?,
        &arrow::compute::not(deleted)?,
    )?;
    let inserted = cast_batch(&inserted, &Arc::new(storage_schema(table)))?;

    let keys_version = commit(&key_rows, keys.version, stale_keys, new_keys).await?;
    let keys_committed = started.elapsed();
    let version = commit(&rows, table.version, replaced, inserted).await?;
    tracing::debug!(
        table = %table.path,
        changes = change_count,
        keys_looked_up = ?keys_looked_up,
        rows_looked_up = ?rows_looked_up,
        keys_committed = ?keys_committed,
        committed = ?started.elapsed(),
        "mirror changes applied"
    );
    Ok(Applied {
        version,
        keys_version,
    })
}

/// The values of an integer key column, sorted, each with its row; None for other types.
/// Null keys are left out: they match nothing.
fn sorted_integers(keys: &ArrayRef) -> Result<Option<Vec<(i64, u32)>>> {
    use arrow::datatypes::DataType;
    // Every integer type but UInt64 fits an i64.
    if !keys.data_type().is_integer() || keys.data_type() == &DataType::UInt64 {
        return Ok(None);
    }
    let keys = arrow::compute::cast(keys, &DataType::Int64)?;
    let mut sorted: Vec<(i64, u32)> = keys
        .as_primitive::<Int64Type>()
        .iter()
        .enumerate()
        .filter_map(|(row, key)| Some((key?, row as u32)))
        .collect();
    sorted.sort_unstable();
    Ok(Some(sorted))
}

/// The rows of `values` holding one of the `sought` keys (sorted, each with its row among
/// the keys looked up): (the key's row, the row of `values`) for each. The values are taken
/// a run at a time, each run as long as they ascend (the files a mirror writes ascend, or
/// hold a few long runs), and each key in a run's range is searched for in it.
fn matches(sought: &[(i64, u32)], values: &arrow::array::Int64Array) -> (Vec<u32>, Vec<u32>) {
    let mut keys = Vec::new();
    let mut rows = Vec::new();
    let v = values.values();
    let valid = |row: usize| values.is_valid(row);
    let mut start = 0;
    while start < v.len() {
        let mut end = start + 1;
        while end < v.len() && v[end - 1] <= v[end] {
            end += 1;
        }
        let run = &v[start..end];
        let from = sought.partition_point(|(key, _)| *key < run[0]);
        let to = sought.partition_point(|(key, _)| *key <= run[run.len() - 1]);
        let mut at = 0;
        for &(key, row) in &sought[from..to] {
            at += run[at..].partition_point(|value| *value < key);
            let mut r = at;
            while r < run.len() && run[r] == key {
                if valid(start + r) {
                    keys.push(row);
                    rows.push((start + r) as u32);
                }
                r += 1;
            }
        }
        start = end;
    }
    (keys, rows)
}

/// The rows of `scan` whose integer `key` column holds one of the `sought` keys (see
/// [`sorted_integers`]): a batch of the row of the key each holds (UInt32), its `columns`,
/// then its file and row ([`FILE_COLUMN`], [`ROW_COLUMN`]). The scan's rows are searched as
/// they are read, none kept: a narrowed scan reads a page of rows for each key, and a hash
/// join would probe every one of them.
async fn find_by_key(
    ctx: &SessionContext,
    scan: Arc<RowScan>,
    key: &str,
    sought: &[(i64, u32)],
    columns: &[&str],
) -> Result<RecordBatch> {
    use arrow::array::UInt32Array;
    use arrow::datatypes::{DataType, Field};
    let mut names = vec![key];
    names.extend_from_slice(columns);
    names.extend([FILE_COLUMN, ROW_COLUMN]);
    let mut stream = ctx
        .read_table(scan)?
        .select_columns(&names)?
        .execute_stream()
        .await?;
    let projected = Arc::new(
        stream
            .schema()
            .project(&(1..names.len()).collect::<Vec<_>>())?,
    );
    let mut fields = vec![Arc::new(Field::new("__sought", DataType::UInt32, false))];
    fields.extend(projected.fields().iter().cloned());
    let schema = Arc::new(Schema::new(fields));
    let mut found = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let values = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
        let (keys, rows) = matches(sought, values.as_primitive::<Int64Type>());
        if rows.is_empty() {
            continue;
        }
        let rows = UInt32Array::from(rows);
        let mut out: Vec<ArrayRef> = vec![Arc::new(UInt32Array::from(keys))];
        for column in &batch.columns()[1..] {
            out.push(arrow::compute::take(column, &rows, None)?);
        }
        found.push(RecordBatch::try_new(schema.clone(), out)?);
    }
    Ok(arrow::compute::concat_batches(&schema, &found)?)
}

/// The changes (in [`tributary_engine::mirror::change_schema`], `declared` columns first)
/// at least as new as their key's stored one, or of a new key, from `found` (by
/// [`find_by_key`] in the key table: the change's row, its order, deleted mark, file and
/// row), with where the key's row lives and whether it is deleted, as the winners' join
/// gives them; and for each change, whether it wins over a live key (replaces its row).
fn newer_than_stored(
    changes: &RecordBatch,
    declared: usize,
    found: &RecordBatch,
) -> Result<(RecordBatch, Vec<bool>)> {
    use arrow::array::UInt32Array;
    // The stored row of each change, if any (the last found, were a key stored twice).
    let mut stored: Vec<Option<u32>> = vec![None; changes.num_rows()];
    for (at, change) in found
        .column(0)
        .as_primitive::<UInt32Type>()
        .values()
        .iter()
        .enumerate()
    {
        stored[*change as usize] = Some(at as u32);
    }
    let stored = UInt32Array::from(stored);
    let take = |column: usize| arrow::compute::take(found.column(column), &stored, None);
    let order = changes.column(declared);
    let stored_order = arrow::compute::cast(&take(1)?, order.data_type())?;
    let newer = arrow::compute::or_kleene(
        &arrow::compute::is_null(&stored_order)?,
        &arrow::compute::kernels::cmp::gt_eq(order, &stored_order)?,
    )?;
    let newer = match newer.null_count() {
        0 => newer,
        _ => arrow::compute::prep_null_mask_filter(&newer),
    };
    let was_deleted = take(2)?;
    let replaces = {
        let was_deleted = was_deleted.as_boolean();
        (0..changes.num_rows())
            .map(|i| newer.value(i) && was_deleted.is_valid(i) && !was_deleted.value(i))
            .collect()
    };
    let mut columns = changes.columns().to_vec();
    columns.extend([take(3)?, take(4)?, was_deleted]);
    let all = RecordBatch::try_new(Arc::new(winner_schema(&changes.schema())), columns)?;
    Ok((filter_record_batch(&all, &newer)?, replaces))
}

/// Commits `deleted` rows and `added` new ones on top of `version` as one MERGE; returns the
/// new version.
async fn commit(
    handle: &TableHandle,
    version: u64,
    deleted: BTreeMap<String, RowSet>,
    added: RecordBatch,
) -> Result<u64> {
    let added = if added.num_rows() > 0 {
        Some(handle.stage(version, &[added]).await?)
    } else {
        None
    };
    let changes = RowChanges { deleted, added };
    Ok(handle.change_rows(version, changes, "MERGE").await?)
}

/// `batch`'s rows ordered by the `columns` (ascending, nulls first).
fn sorted_by(batch: &RecordBatch, columns: &[usize]) -> Result<RecordBatch> {
    let keys: Vec<arrow::compute::SortColumn> = columns
        .iter()
        .map(|&i| arrow::compute::SortColumn {
            values: batch.column(i).clone(),
            options: None,
        })
        .collect();
    let order = arrow::compute::lexsort_to_indices(&keys, None)?;
    Ok(arrow::compute::take_record_batch(batch, &order)?)
}

/// The schema of the winners query when it returned no batch.
fn winner_schema(changes: &Schema) -> Schema {
    use arrow::datatypes::{DataType, Field};
    Schema::new(
        changes
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .chain([
                Field::new("__key_file", DataType::UInt32, true),
                Field::new("__key_row", DataType::Int64, true),
                Field::new("__was_deleted", DataType::Boolean, true),
            ])
            .collect::<Vec<_>>(),
    )
}

/// A boolean column with its nulls as true.
fn fill_true(values: &arrow::array::BooleanArray) -> arrow::array::BooleanArray {
    values.iter().map(|v| Some(v.unwrap_or(true))).collect()
}

/// Adds the rows that `batches` locate (a file number in column `at`, its row index in the
/// next) to `into`, by file path.
fn locate(
    scan: &RowScan,
    batches: &[RecordBatch],
    at: usize,
    into: &mut BTreeMap<String, RowSet>,
) -> Result<()> {
    for batch in batches {
        let files = arrow::compute::cast(batch.column(at), &arrow::datatypes::DataType::UInt32)?;
        let files = files.as_primitive::<UInt32Type>();
        let rows = arrow::compute::cast(batch.column(at + 1), &arrow::datatypes::DataType::Int64)?;
        let rows = rows.as_primitive::<Int64Type>();
        for (file, row) in files.iter().zip(rows.iter()) {
            let (Some(file), Some(row)) = (file, row) else {
                continue;
            };
            let path = scan
                .path_of(file)
                .ok_or_else(|| Error::Internal(format!("file number {file} names no file")))?;
            into.entry(path.to_string()).or_default().insert(row as u64);
        }
    }
    Ok(())
}

/// Converts a mirror stored by an earlier release (base rows and changes with hidden
/// columns, merged on read) in the current transaction: its table is overwritten with its
/// live rows in the declared columns, and its key table is created with every key's newest
/// ordering value, deleted keys included. Returns the table's new version and the updated
/// bookkeeping; the caller pins both. The merged rows stream into both tables' files a
/// batch at a time.
pub async fn convert(
    catalogs: &SessionCatalogs,
    table: &Table,
    spec: &MirrorSpec,
) -> Result<(u64, MirrorSpec)> {
    let store = catalogs.store();
    let rows = storage(store, &table.path, spec)?;
    let provider = rows.provider(table.version).await?;
    let plan = merged_plan(provider, table, spec, true)?;
    // In the server's runtime, so that the merge holds its memory in the server's pool (and
    // spills or fails with 53000 under the limit); its rows stream into both tables' files.
    let context = SessionContext::new_with_config_rt(SessionConfig::new(), store.runtime_env());
    let mut merged = context
        .execute_logical_plan(plan)
        .await?
        .execute_stream()
        .await?;
    let declared = table.columns.len();
    let mut converted = spec.clone();
    let keys_path = key_table_path(&table.path);
    converted.keys = Some(KeyTable {
        path: keys_path.clone(),
        version: 0,
        // The merged rows hold their ordering values as bytes.
        integer_order: false,
    });
    let mut new_table = table.clone();
    if let Some(mv) = new_table.materialized.as_mut() {
        mv.mirror = Some(converted.clone());
    }
    let live_schema = Arc::new(storage_schema(&new_table));
    let key_schema = Arc::new(key_schema(table, spec));
    let key_indexes: Vec<usize> = spec
        .key
        .iter()
        .filter_map(|k| table.columns.iter().position(|c| &c.name == k))
        .chain([declared, declared + 1])
        .collect();
    let key_rows = storage(store, &keys_path, &converted)?;
    catalogs.record_created(&keys_path);
    let created = key_rows.create(&key_schema).await?;
    catalogs.record_written(&table.path);
    let buffer = write_buffer_bytes(store);
    let mut key_writer = key_rows.appender(created, buffer).await?;
    let mut live_writer = rows.appender(table.version, buffer).await?;
    while let Some(batch) = merged.next().await {
        let batch = batch?;
        let deleted = batch.column(declared + 1).as_boolean();
        let kept = arrow::compute::not(&fill_true(deleted))?;
        let declared_rows = batch.project(&(0..declared).collect::<Vec<_>>())?;
        live_writer
            .write(&cast_batch(
                &filter_record_batch(&declared_rows, &kept)?,
                &live_schema,
            )?)
            .await?;
        key_writer
            .write(&cast_batch(&batch.project(&key_indexes)?, &key_schema)?)
            .await?;
    }
    let keys_version = key_writer.commit().await?.version;
    let version = live_writer
        .commit_replacing_all_as(&live_schema)
        .await?
        .version;
    if let Some(keys) = converted.keys.as_mut() {
        keys.version = keys_version;
    }
    converted.unfolded = 0;
    converted.base_rows = 0;
    converted.base_newest = None;
    converted.changes_oldest = None;
    tracing::info!(table = %table.path, "converted a mirror table to live rows and a key table");
    Ok((version, converted))
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field};
    use datafusion::physical_plan::displayable;

    use super::*;

    fn ids(range: std::ops::Range<i64>) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(range))],
        )
        .unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    /// 200k changes are past DataFusion's default thresholds for a join that collects one
    /// side, so a default session would partition both sides by hash and read the whole
    /// table; the lookup session builds from the changes and probes the table.
    #[tokio::test]
    async fn a_lookup_builds_from_the_changes_whatever_their_number() {
        let ctx = lookup_context(Arc::new(RuntimeEnv::default()));
        ctx.register_table("c", ids(0..200_000)).unwrap();
        ctx.register_table("k", ids(0..1_000_000)).unwrap();
        let plan = ctx
            .sql("SELECT c.id, k.id AS stored FROM c LEFT JOIN k ON c.id = k.id")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        assert!(
            text.contains("HashJoinExec: mode=CollectLeft, join_type=Left"),
            "{text}"
        );
        assert!(!text.contains("partitioning=Hash"), "{text}");
    }

    #[test]
    fn keys_are_found_in_sorted_and_unsorted_rows() {
        let sought = sorted_integers(
            &(Arc::new(Int64Array::from(vec![
                Some(30),
                None,
                Some(10),
                Some(99),
                Some(20),
            ])) as ArrayRef),
        )
        .unwrap()
        .unwrap();
        assert_eq!(sought, vec![(10, 2), (20, 4), (30, 0), (99, 3)]);
        // Sorted rows, a key stored twice: both rows.
        let sorted = Int64Array::from(vec![5, 10, 11, 20, 20, 25, 30]);
        assert_eq!(
            matches(&sought, &sorted),
            (vec![2, 4, 4, 0], vec![1, 3, 4, 6])
        );
        // Unsorted rows and nulls: found row by row.
        let unsorted = Int64Array::from(vec![Some(30), None, Some(7), Some(10), Some(99)]);
        assert_eq!(matches(&sought, &unsorted), (vec![0, 2, 3], vec![0, 3, 4]));
        assert_eq!(
            matches(&sought, &Int64Array::from(Vec::<i64>::new()))
                .1
                .len(),
            0
        );
        assert_eq!(matches(&[], &sorted).1.len(), 0);
        // Text keys take the join.
        let text: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["a"]));
        assert!(sorted_integers(&text).unwrap().is_none());
    }

    #[test]
    fn changes_win_over_older_stored_keys_only() {
        use arrow::array::{BooleanArray, UInt32Array};
        // Changes of keys 1 to 4 (order 5 each), then their order and deletion mark.
        let changes = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new(ORDER_COLUMN, DataType::Int64, false),
                Field::new(DELETED_COLUMN, DataType::Boolean, false),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(Int64Array::from(vec![5, 5, 5, 5])),
                Arc::new(BooleanArray::from(vec![false, false, true, false])),
            ],
        )
        .unwrap();
        // Key 1 stored with order 7 (newer), key 3 with order 5 (as new, deleted), key 4 with
        // order 4 (older, live); 2 is new.
        let found = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("__sought", DataType::UInt32, false),
                Field::new(ORDER_COLUMN, DataType::Int64, false),
                Field::new(DELETED_COLUMN, DataType::Boolean, false),
                Field::new(FILE_COLUMN, DataType::UInt32, false),
                Field::new(ROW_COLUMN, DataType::Int64, false),
            ])),
            vec![
                Arc::new(UInt32Array::from(vec![2, 0, 3])),
                Arc::new(Int64Array::from(vec![5, 7, 4])),
                Arc::new(BooleanArray::from(vec![true, false, false])),
                Arc::new(UInt32Array::from(vec![4, 6, 8])),
                Arc::new(Int64Array::from(vec![40, 60, 80])),
            ],
        )
        .unwrap();
        let (winners, replaces) = newer_than_stored(&changes, 1, &found).unwrap();
        // Key 3 was deleted: its change wins but replaces no row; key 4's replaces its row.
        assert_eq!(replaces, vec![false, false, false, true]);
        assert_eq!(winners.schema().as_ref(), &winner_schema(&changes.schema()));
        let ids = winners.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![2, 3, 4]);
        let files = winners.column(3).as_primitive::<UInt32Type>();
        assert_eq!(
            files.iter().collect::<Vec<_>>(),
            vec![None, Some(4), Some(8)]
        );
        let rows = winners.column(4).as_primitive::<Int64Type>();
        assert_eq!(
            rows.iter().collect::<Vec<_>>(),
            vec![None, Some(40), Some(80)]
        );
        let deleted = winners.column(5).as_boolean();
        assert_eq!(
            deleted.iter().collect::<Vec<_>>(),
            vec![None, Some(true), Some(false)]
        );
    }
}
