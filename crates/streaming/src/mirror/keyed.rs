//! Applying a round's changes by key: the mirror's table gets the new rows and deletion
//! vectors for the rows they replace; its key table gets each changed key's new ordering
//! value. A change older than the key's stored one is dropped here. Also the conversion of a
//! mirror stored by an earlier release.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
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
    ctx.register_table(
        "c",
        Arc::new(MemTable::try_new(schema.clone(), vec![vec![changes]])?),
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
    let winners = ctx
        .sql(&format!(
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
        .await?;
    let winners = arrow::compute::concat_batches(
        &winners
            .first()
            .map(RecordBatch::schema)
            .unwrap_or_else(|| Arc::new(winner_schema(&schema))),
        &winners,
    )?;
    // Live before: the key table has the key, not deleted.
    let was_live = arrow::compute::not(&fill_true(winners.column(declared + 4).as_boolean()))?;
    // The rows the winners replace in the table: those of the keys that were live.
    let mut replaced: BTreeMap<String, RowSet> = BTreeMap::new();
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
    let version = commit(&rows, table.version, replaced, inserted).await?;
    Ok(Applied {
        version,
        keys_version,
    })
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
}
