//! Folding a mirror's stored changes into its base, and coalescing its change files, in the
//! round's transaction or in the background.

use std::sync::Arc;

use arrow::array::{Array, BinaryArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{LogicalPlan, col, lit};
use serde_json::Value;
use tributary_catalog::{MirrorSpec, Table};
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::mirror::{ORDER_COLUMN, SEQUENCE_COLUMN, merged_plan, newest_changes, spec};
use tributary_engine::store::Store;
use tributary_engine::transaction::WriteKind;
use tributary_storage::{DataFile, Replaced};

use crate::host::Host;
use crate::{Result, Work};

/// Pins the mirror's new table version with its updated bookkeeping in the transaction.
pub fn commit_spec(
    catalogs: &SessionCatalogs,
    [database, schema, name]: [&String; 3],
    path: &str,
    version: u64,
    updated: MirrorSpec,
) -> Result<()> {
    catalogs.record_written(path);
    catalogs.modify(|state| {
        let target = state.table_mut(database, schema, name)?;
        target.version = version;
        if let Some(mv) = target.materialized.as_mut() {
            mv.mirror = Some(updated);
        }
        Ok(())
    })?;
    Ok(())
}

/// The mirror's rows at `version` as one base: the stored changes merged in, tombstones kept
/// (sequence 0). Returns the rows in the stored schema and their newest ordering value.
async fn folded_rows(
    store: &Store,
    table: &Table,
    version: u64,
    spec: &MirrorSpec,
) -> Result<(Vec<RecordBatch>, Option<Vec<u8>>)> {
    let delta = store.storage.table(&table.path)?.provider(version).await?;
    let batches = stored_rows(merged_plan(delta, table, spec, true)?, table).await?;
    let order_index = table.columns.len();
    let newest = batches
        .iter()
        .filter_map(|b| {
            let orders = b
                .column(order_index)
                .as_any()
                .downcast_ref::<BinaryArray>()?;
            arrow::compute::max_binary(orders).map(<[u8]>::to_vec)
        })
        .max();
    Ok((batches, newest))
}

/// Runs a plan whose rows are in the order of the mirror's stored columns, and casts them to
/// the stored schema.
async fn stored_rows(plan: LogicalPlan, table: &Table) -> Result<Vec<RecordBatch>> {
    let context = tributary_engine::planning::expression_context();
    let batches = context.execute_logical_plan(plan).await?.collect().await?;
    let schema = Arc::new(tributary_engine::layout::storage_schema(table));
    batches
        .iter()
        .map(|b| tributary_engine::layout::cast_batch(b, &schema))
        .collect()
}

/// Rewrites the mirror's rows as one base (tombstones kept, stored changes merged), on top of
/// `version`, and records it in `spec`. Returns the new version.
pub async fn fold(
    catalogs: &SessionCatalogs,
    table: &Table,
    version: u64,
    spec: &mut MirrorSpec,
) -> Result<u64> {
    let (batches, newest) = folded_rows(catalogs.store(), table, version, spec).await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let schema = Arc::new(tributary_engine::layout::storage_schema(table));
    let storage = storage(catalogs.store(), &table.path, spec)?;
    let version = storage.overwrite(version, batches, &schema).await?;
    tracing::debug!(table = %table.path, rows, "folded the mirror's changes into its base");
    spec.unfolded = 0;
    spec.base_rows = rows as u64;
    spec.base_newest = newest;
    spec.changes_oldest = None;
    spec.folds += 1;
    Ok(version)
}

/// The mirror's Delta table, whose files index the key in bloom filters: a lookup by key
/// then skips every change file (and base row group) that does not hold the key.
pub fn storage(
    store: &Store,
    path: &str,
    spec: &MirrorSpec,
) -> Result<tributary_storage::TableHandle> {
    Ok(store.storage.table(path)?.with_bloom_filters(&spec.key))
}

/// Starts background work on a mirror unless it may not start now (see
/// [`super::Streams::begin_work`]); a later round asks again. A stream round must not fold
/// in line: a fold of a large mirror takes seconds, and the round holds the table's lock, so
/// every later round would wait for it.
pub fn start_background(engine: &Arc<dyn Host>, name: &[String; 3], path: &str, work: Work) {
    if !engine.streams().begin_work(path, work) {
        return;
    }
    /// Ends the work's mark however its task ends (a panic included), so that a later round
    /// can start it again.
    struct Running(Arc<dyn Host>, String, Work);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.streams().end_work(&self.1, self.2);
        }
    }
    let running = Running(engine.clone(), path.to_string(), work);
    let engine = engine.clone();
    let name = name.clone();
    let path = path.to_string();
    tributary_engine::runtime::spawn_background(async move {
        let _running = running;
        let started = std::time::Instant::now();
        let done = match work {
            Work::Fold => background_fold(&engine, &name, &path).await,
            Work::Coalesce => background_coalesce(&engine, &name, &path).await,
        };
        if let Ok(Some(_)) = done {
            let kind = match work {
                Work::Fold => "fold",
                Work::Coalesce => "coalesce",
            };
            engine
                .metrics()
                .mirror_work
                .get_or_create(&vec![("kind", kind.to_string())])
                .inc();
        }
        match done {
            Ok(Some(rows)) => tracing::debug!(
                table = %name[2],
                ?work,
                rows,
                seconds = started.elapsed().as_secs_f64(),
                "rewrote the mirror's files"
            ),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(table = %name[2], ?work, error = %err, "mirror rewrite failed; a later round retries")
            }
        }
    });
}

/// Folds the mirror as of its committed version without holding its lock, then, holding it
/// briefly, commits the folded rows in place of that version's files; changes stored by
/// rounds meanwhile stay as stored changes. Returns the base rows, or None when the mirror
/// was dropped, replaced or folded by someone else meanwhile.
async fn background_fold(
    engine: &Arc<dyn Host>,
    name: &[String; 3],
    path: &str,
) -> Result<Option<u64>> {
    let Some((read, read_spec)) = committed(engine.as_ref(), name, path)? else {
        return Ok(None);
    };
    engine.streams().fold_reads(path, read.version);
    let (batches, newest) = folded_rows(engine.store(), &read, read.version, &read_spec).await?;
    let storage = storage(engine.store(), path, &read_spec)?;
    let staged = storage.stage(read.version, &batches).await?;
    drop(batches);
    let rows = staged.rows;
    let update = async |now: &MirrorSpec, version: u64| -> Result<MirrorSpec> {
        let mut updated = now.clone();
        updated.unfolded = now.unfolded.saturating_sub(read_spec.unfolded);
        updated.base_rows = rows;
        updated.base_newest = newest;
        updated.folds += 1;
        updated.changes_oldest = if updated.unfolded == 0 {
            None
        } else {
            oldest_change_since(&storage, version, read_spec.next_sequence).await?
        };
        Ok(updated)
    };
    commit_staged(
        engine,
        name,
        (&read, &read_spec),
        Replaced::All,
        staged,
        update,
    )
    .await
}

/// The mirror stored at `path` as committed, with its bookkeeping; None when it was dropped or
/// replaced.
fn committed(
    engine: &dyn Host,
    [database, schema, name]: &[String; 3],
    path: &str,
) -> Result<Option<(Table, MirrorSpec)>> {
    let read = engine
        .store()
        .catalog_snapshot()
        .table(database, schema, name)?
        .clone();
    Ok(match spec(&read).cloned() {
        Some(read_spec) if read.path == path => Some((read, read_spec)),
        _ => None,
    })
}

/// Holding the mirror's lock briefly, commits `staged` in place of the `replaced` files of
/// the version `read` it was computed from, with the bookkeeping `update` makes of the
/// current one and the new version. Returns the staged rows, or None (nothing committed)
/// when the mirror was dropped, replaced or folded by someone else, or a replaced file was
/// rewritten meanwhile.
async fn commit_staged(
    engine: &Arc<dyn Host>,
    [database, schema, name]: &[String; 3],
    (read, read_spec): (&Table, &MirrorSpec),
    replaced_files: Replaced<'_>,
    staged: tributary_storage::StagedFiles,
    update: impl AsyncFnOnce(&MirrorSpec, u64) -> Result<MirrorSpec>,
) -> Result<Option<u64>> {
    let rows = staged.rows;
    let storage = storage(engine.store(), &read.path, read_spec)?;
    let session = engine.clone().session(&read.owner, database)?;
    let catalogs = session.catalogs().clone();
    let commit = async {
        let current = catalogs
            .lock_table(database, schema, name, WriteKind::Rewrite)
            .await?
            .table;
        let Some(now) = spec(&current).filter(|s| s.folds == read_spec.folds) else {
            return Ok(None);
        };
        if current.path != read.path {
            return Ok(None);
        }
        let Some(version) = replaced(
            storage
                .replace_files(read.version, current.version, replaced_files, staged)
                .await,
        )?
        else {
            return Ok(None);
        };
        let updated = update(now, version).await?;
        commit_spec(
            &catalogs,
            [database, schema, name],
            &read.path,
            version,
            updated,
        )?;
        Ok(Some(rows))
    };
    catalogs
        .locked_transaction([database, schema, name], commit)
        .await
}

/// The version [`tributary_storage::TableHandle::replace_files`] committed, or None if a
/// file it was to replace had been rewritten meanwhile (the work is given up).
fn replaced(outcome: tributary_storage::Result<u64>) -> Result<Option<u64>> {
    match outcome {
        Ok(version) => Ok(Some(version)),
        Err(tributary_storage::Error::Conflict { .. }) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// A coalesce starts once a mirror has this many change files (files of stored changes, one
/// per round that stored any), and merges at least this many.
const COALESCE_FILES: usize = 8;

/// Change files a mirror may have before a coalesce merges the smallest ones whatever their
/// sizes.
const COALESCE_FILES_MAX: usize = 16;

/// True for a file of stored changes (not of the base), from its log statistics. A file
/// without statistics of the sequence column is never coalesced.
fn is_change_file(file: &DataFile) -> bool {
    file.min_values
        .get(SEQUENCE_COLUMN)
        .and_then(Value::as_i64)
        .is_some_and(|sequence| sequence > 0)
}

/// The change files a coalesce merges, smallest first: each next file while it holds no more
/// rows than the files taken before it together, so that a row is rewritten about log2 of
/// (stored changes / round size) times before a fold, as in a binary counter. Nothing while
/// that would take fewer than [`COALESCE_FILES`] and there are fewer than
/// [`COALESCE_FILES_MAX`].
fn coalesce_choice(mut files: Vec<DataFile>) -> Vec<DataFile> {
    files.sort_by_key(|f| f.rows);
    let mut total = 0;
    let mut taken = 0;
    for file in &files {
        if taken >= 2 && file.rows > total {
            break;
        }
        total += file.rows;
        taken += 1;
    }
    if taken < COALESCE_FILES {
        if files.len() < COALESCE_FILES_MAX {
            return Vec::new();
        }
        taken = COALESCE_FILES;
    }
    files.truncate(taken);
    files
}

/// Merges some of the mirror's change files into one that holds the newest change of each
/// key among them (tombstones and orders kept), so that reads open and aggregate fewer files
/// between folds. Reads its committed version without holding its lock, then commits the new
/// file in place of exactly the merged ones. Files a running fold reads are left alone: the
/// fold replaces them. Returns the rows written, or None with nothing to merge or when the
/// mirror changed under it.
async fn background_coalesce(
    engine: &Arc<dyn Host>,
    name: &[String; 3],
    path: &str,
) -> Result<Option<u64>> {
    let Some((read, read_spec)) = committed(engine.as_ref(), name, path)? else {
        return Ok(None);
    };
    let storage = storage(engine.store(), path, &read_spec)?;
    let folding: std::collections::HashSet<String> = match engine.streams().folding(path) {
        Some(version) => storage
            .files(version)
            .await?
            .into_iter()
            .map(|f| f.path)
            .collect(),
        None => Default::default(),
    };
    let changes = storage
        .files(read.version)
        .await?
        .into_iter()
        .filter(|f| is_change_file(f) && !folding.contains(&f.path))
        .collect();
    let chosen = coalesce_choice(changes);
    if chosen.is_empty() {
        return Ok(None);
    }
    let paths: Vec<String> = chosen.iter().map(|f| f.path.clone()).collect();
    let merged_rows: u64 = chosen.iter().map(|f| f.rows).sum();
    let source = provider_as_source(storage.provider_of(read.version, &paths).await?);
    let batches = stored_rows(newest_changes(&source, &read, &read_spec)?, &read).await?;
    let staged = storage.stage(read.version, &batches).await?;
    drop(batches);
    let rows = staged.rows;
    let update = async |now: &MirrorSpec, _version: u64| -> Result<MirrorSpec> {
        let mut updated = now.clone();
        updated.unfolded = now.unfolded.saturating_sub(merged_rows - rows);
        Ok(updated)
    };
    commit_staged(
        engine,
        name,
        (&read, &read_spec),
        Replaced::Only(&paths),
        staged,
        update,
    )
    .await
}

/// The oldest ordering value among the changes stored with a sequence from `sequence` on.
async fn oldest_change_since(
    storage: &tributary_storage::TableHandle,
    version: u64,
    sequence: i64,
) -> Result<Option<Vec<u8>>> {
    let context = tributary_engine::planning::expression_context();
    let batches = context
        .read_table(storage.provider(version).await?)?
        .filter(col(SEQUENCE_COLUMN).gt_eq(lit(sequence)))?
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::min(col(ORDER_COLUMN)).alias("oldest")],
        )?
        .collect()
        .await?;
    let oldest = batches.first().and_then(|b| {
        let column = arrow::compute::cast(b.column(0), &DataType::Binary).ok()?;
        let column = column.as_any().downcast_ref::<BinaryArray>()?;
        (!column.is_empty() && !column.is_null(0)).then(|| column.value(0).to_vec())
    });
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(rows: &[u64]) -> Vec<DataFile> {
        rows.iter()
            .enumerate()
            .map(|(i, &rows)| DataFile {
                path: format!("f{i}"),
                rows,
                deleted: 0,
                bytes: 0,
                min_values: Default::default(),
            })
            .collect()
    }

    fn chosen(rows: &[u64]) -> Vec<u64> {
        coalesce_choice(files(rows))
            .into_iter()
            .map(|f| f.rows)
            .collect()
    }

    #[test]
    fn coalesces_take_the_smallest_files_like_a_binary_counter() {
        // Too few files: nothing.
        assert!(chosen(&[5; 7]).is_empty());
        // Eight rounds' files become one.
        assert_eq!(chosen(&[5; 8]), vec![5; 8]);
        // The merged file joins once the small ones add up to it.
        assert_eq!(
            chosen(&[40, 5, 5, 5, 5, 5, 5, 5, 5]),
            [vec![5; 8], vec![40]].concat()
        );
        // A big file stays out while the small ones are fewer than it.
        assert!(chosen(&[1000, 5, 5, 5, 5, 5, 5, 5]).is_empty());
        assert_eq!(chosen(&[1000, 80, 5, 5, 5, 5, 5, 5, 5, 5]), vec![5; 8]);
        // Files that keep doubling never qualify alone; at 16 files the smallest 8 merge.
        let doubling: Vec<u64> = (0..16).map(|i| 1 << i).collect();
        assert_eq!(chosen(&doubling), doubling[..8].to_vec());
        assert!(chosen(&doubling[..15]).is_empty());
    }

    #[test]
    fn change_files_are_told_from_base_files_by_their_sequences() {
        let mut file = files(&[10]).remove(0);
        assert!(!is_change_file(&file), "no statistics: never coalesced");
        file.min_values
            .insert(SEQUENCE_COLUMN.into(), serde_json::json!(0));
        assert!(!is_change_file(&file), "a base file");
        file.min_values
            .insert(SEQUENCE_COLUMN.into(), serde_json::json!(17));
        assert!(is_change_file(&file));
    }
}
