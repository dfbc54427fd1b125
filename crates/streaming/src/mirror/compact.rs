//! Keeping a mirror's files few and free of deleted rows: files whose deletion vectors mark a
//! quarter of their rows, and the small files rounds leave (one per round in each of the
//! mirror's two Delta tables), are rewritten with their live rows, in the background beside
//! the rounds or at once by VACUUM. Rewrites write files of the table's target size
//! (`delta.targetFileSize`), and files of half that size or more are merged no further, so
//! that no rewrite takes more than a few times the target size however large the table
//! grows, and a large table's rows are rewritten a bounded number of times.

use std::sync::Arc;

use tributary_catalog::{MirrorSpec, Table};
use tributary_engine::catalog_list::SessionCatalogs;
use tributary_engine::mirror::spec;
use tributary_engine::transaction::WriteKind;
use tributary_storage::DataFile;

use super::keyed::storage;
use crate::host::Host;
use crate::{Error, Result};

/// A file whose deletion vector marks at least this fraction of its rows is rewritten.
const PURGE_FRACTION: f64 = 0.25;

/// A rewrite of small files starts once a table has this many of them, and merges at least
/// this many.
const COALESCE_FILES: usize = 8;

/// Small files a table may have before a rewrite merges the smallest ones whatever their
/// sizes.
const COALESCE_FILES_MAX: usize = 16;

/// The most bytes of files a merge of small files takes, in target sizes (at least two files
/// whatever their size).
const COALESCE_TARGETS: u64 = 2;

/// Passes a background rewrite makes at most before it ends.
const REWRITE_PASSES: usize = 4;

/// Pins the mirror's new table version and its updated bookkeeping (with its key table's
/// version) in the transaction.
pub fn commit_spec(
    catalogs: &SessionCatalogs,
    [database, schema, name]: [&String; 3],
    path: &str,
    version: u64,
    updated: MirrorSpec,
) -> Result<()> {
    catalogs.record_written(path);
    if let Some(keys) = &updated.keys {
        catalogs.record_written(&keys.path);
    }
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

/// The files of a table a rewrite takes, `target` being the size of the files it writes:
/// those mostly deleted, and of the small others (under half the target size) the smallest
/// while each next one holds no more rows than those taken before it together (so a row is
/// rewritten about log2(target rows / round) times, as in a binary counter), once there are
/// [`COALESCE_FILES`] of them, or they make a target size, or the table has
/// [`COALESCE_FILES_MAX`]; up to [`COALESCE_TARGETS`] target sizes of them. With `all`, every file with deleted rows and
/// every small one, if that makes fewer files or drops deleted rows.
fn choose(files: Vec<DataFile>, target: u64, all: bool) -> Vec<DataFile> {
    let small = |f: &DataFile| f.bytes < target / 2;
    if all {
        let taken: Vec<DataFile> = files
            .into_iter()
            .filter(|f| f.deleted > 0 || small(f))
            .collect();
        if taken.len() > 1 || taken.iter().any(|f| f.deleted > 0) {
            return taken;
        }
        return Vec::new();
    }
    let (mut purged, rest): (Vec<DataFile>, Vec<DataFile>) = files
        .into_iter()
        .partition(|f| f.deleted > 0 && f.deleted as f64 >= f.rows as f64 * PURGE_FRACTION);
    let mut rest: Vec<DataFile> = rest.into_iter().filter(small).collect();
    rest.sort_by_key(|f| f.rows - f.deleted);
    let most = target.saturating_mul(COALESCE_TARGETS);
    // The smallest files up to the most bytes a merge takes, at least two.
    let within = rest
        .iter()
        .scan(0u64, |bytes, file| {
            *bytes += file.bytes;
            Some(*bytes)
        })
        .take_while(|bytes| *bytes <= most)
        .count()
        .max(2);
    let mut total = 0;
    let mut taken = 0;
    let mut bytes = 0;
    for file in &rest[..within.min(rest.len())] {
        let live = file.rows - file.deleted;
        if taken >= 2 && live > total {
            break;
        }
        total += live;
        bytes += file.bytes;
        taken += 1;
    }
    // Too few files to be worth a rewrite, unless they make a file of the target size.
    if taken < COALESCE_FILES && bytes < target {
        taken = if rest.len() < COALESCE_FILES_MAX {
            0
        } else {
            COALESCE_FILES.min(within)
        };
    }
    rest.truncate(taken);
    purged.extend(rest);
    purged
}

/// Files a rewrite takes at most: a merge reads a batch of each at once.
const REWRITE_FILES_MAX: usize = 64;

/// `files` in groups that one rewrite each takes: files in their order up to
/// [`COALESCE_TARGETS`] target sizes (one at least) and [`REWRITE_FILES_MAX`] files, so that
/// what a rewrite holds (a batch of each file it merges, and two bytes a row of the merge's
/// order) and how long it runs are bounded however many files it is given.
fn groups(files: Vec<DataFile>, target: u64) -> Vec<Vec<String>> {
    let most = target.saturating_mul(COALESCE_TARGETS);
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for file in files {
        match groups.last_mut() {
            Some(group) if bytes + file.bytes <= most && group.len() < REWRITE_FILES_MAX => {
                group.push(file.path)
            }
            _ => {
                bytes = 0;
                groups.push(vec![file.path]);
            }
        }
        bytes += file.bytes;
    }
    groups
}

/// Rewrites the chosen files of both of the mirror's tables at once, in the current
/// transaction, which holds the mirror's lock (VACUUM): every file with `all`. Returns the
/// table's new version and the bookkeeping with the key table's.
pub async fn compact_now(
    catalogs: &SessionCatalogs,
    table: &Table,
    all: bool,
) -> Result<(u64, MirrorSpec)> {
    let mut spec = spec(table)
        .cloned()
        .ok_or_else(|| Error::Internal("not a mirror table".into()))?;
    let mut version = table.version;
    for (path, pinned) in table.storage_pins() {
        let handle = storage(catalogs.store(), &path, &spec)?;
        let target = handle.target_file_size(pinned).await?;
        let chosen = choose(handle.files(pinned).await?, target, all);
        let mut on = pinned;
        for group in groups(chosen, target) {
            let rewrite = handle.prepare_rewrite(on, &group).await?;
            on = handle.commit_rewrite(on, rewrite).await?;
        }
        if on == pinned {
            continue;
        }
        match spec.keys.as_mut() {
            Some(keys) if keys.path == path => keys.version = on,
            _ => version = on,
        }
    }
    Ok((version, spec))
}

/// Starts a background rewrite of the mirror, or asks the one running for another look.
pub fn start_background(engine: &Arc<dyn Host>, name: &[String; 3], path: &str) {
    if !engine.streams().begin_work(path) {
        return;
    }
    /// Ends the work's mark however its task ends (a panic or an error included), so that a
    /// later round can start it again; unless [`Streams::more_work`] ended it already, when
    /// another rewrite may hold the mark by now.
    ///
    /// [`Streams::more_work`]: crate::Streams::more_work
    struct Running(Arc<dyn Host>, String, bool);
    impl Drop for Running {
        fn drop(&mut self) {
            if !self.2 {
                self.0.streams().end_work(&self.1);
            }
        }
    }
    let running = Running(engine.clone(), path.to_string(), false);
    let engine = engine.clone();
    let name = name.clone();
    let path = path.to_string();
    tributary_engine::runtime::spawn_background(async move {
        // The whole guard moves into the task (not only the field the task sets).
        let mut running = running;
        let started = std::time::Instant::now();
        // Pass again while a pass finds work (a few passes per request at most), and again
        // while rounds that ended meanwhile asked for it.
        let mut done = Ok(0);
        'requests: loop {
            for _ in 0..REWRITE_PASSES {
                match background_rewrite(&engine, &name, &path).await {
                    Ok(0) => break,
                    Ok(rows) => done = done.map(|total| total + rows),
                    Err(err) => {
                        // A later round retries.
                        done = Err(err);
                        break 'requests;
                    }
                }
            }
            if !engine.streams().more_work(&path) {
                running.2 = true;
                break;
            }
        }
        match done {
            Ok(0) => {}
            Ok(rows) => {
                engine
                    .metrics()
                    .mirror_work
                    .get_or_create(&vec![("kind", "rewrite".to_string())])
                    .inc();
                tracing::debug!(
                    table = %name[2],
                    rows,
                    seconds = started.elapsed().as_secs_f64(),
                    "rewrote the mirror's files"
                );
            }
            Err(err) => {
                tracing::warn!(table = %name[2], error = %err, "mirror rewrite failed; a later round retries")
            }
        }
    });
}

/// The mirror stored at `path` as committed; None when it was dropped or replaced.
fn committed(
    engine: &dyn Host,
    [database, schema, name]: &[String; 3],
    path: &str,
) -> Option<Table> {
    let read = engine
        .store()
        .catalog_snapshot()
        .table(database, schema, name)
        .ok()?
        .clone();
    (read.path == path && spec(&read).is_some_and(|s| s.keys.is_some())).then_some(read)
}

/// Rewrites the chosen files of each of the mirror's tables as committed, without holding its
/// lock, then commits each rewrite holding the lock briefly, on top of what rounds committed
/// meanwhile (rows they deleted from the rewritten files stay deleted). Returns the rows
/// rewritten.
async fn background_rewrite(engine: &Arc<dyn Host>, name: &[String; 3], path: &str) -> Result<u64> {
    let mut rewritten = 0;
    let Some(read) = committed(engine.as_ref(), name, path) else {
        return Ok(0);
    };
    let read_spec = spec(&read).cloned().expect("checked by committed");
    for (target, pinned) in read.storage_pins() {
        let handle = storage(engine.store(), &target, &read_spec)?;
        let size = handle.target_file_size(pinned).await?;
        // One group a pass: the next pass takes the next.
        let Some(chosen) = groups(choose(handle.files(pinned).await?, size, false), size)
            .into_iter()
            .next()
        else {
            continue;
        };
        let rewrite = handle.prepare_rewrite(pinned, &chosen).await?;
        let rows = rewrite.rows();
        let session = engine.clone().session(&read.owner, &name[0])?;
        let catalogs = session.catalogs().clone();
        let [database, schema, table_name] = name;
        let commit = async {
            let current = catalogs
                .lock_table(database, schema, table_name, WriteKind::Rewrite)
                .await?
                .table;
            if current.path != path {
                return Ok(false);
            }
            let Some(on) = current
                .storage_pins()
                .into_iter()
                .find(|(p, _)| *p == target)
                .map(|(_, version)| version)
            else {
                return Ok(false);
            };
            let version = match handle.commit_rewrite(on, rewrite).await {
                Ok(version) => version,
                // Another rewrite replaced a file meanwhile: this one is given up.
                Err(tributary_storage::Error::Conflict { .. }) => return Ok(false),
                Err(err) => return Err(Error::from(err)),
            };
            let mut updated = spec(&current)
                .cloned()
                .ok_or_else(|| Error::Internal("not a mirror table".into()))?;
            let table_version = match updated.keys.as_mut() {
                Some(keys) if keys.path == target => {
                    keys.version = version;
                    current.version
                }
                _ => version,
            };
            commit_spec(
                &catalogs,
                [database, schema, table_name],
                path,
                table_version,
                updated,
            )?;
            Ok(true)
        };
        if catalogs
            .locked_transaction([database, schema, table_name], commit)
            .await?
        {
            rewritten += rows;
        }
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target file size of the tests.
    const TARGET: u64 = 1 << 20;

    /// Files of `(rows, deleted)`, of a byte a row.
    fn files(rows: &[(u64, u64)]) -> Vec<DataFile> {
        rows.iter()
            .enumerate()
            .map(|(i, &(rows, deleted))| DataFile {
                path: format!("f{i}"),
                rows,
                deleted,
                bytes: rows,
                min_values: Default::default(),
            })
            .collect()
    }

    fn chosen(rows: &[u64]) -> Vec<String> {
        let rows: Vec<(u64, u64)> = rows.iter().map(|&r| (r, 0)).collect();
        paths(choose(files(&rows), TARGET, false))
    }

    fn paths(files: Vec<DataFile>) -> Vec<String> {
        files.into_iter().map(|f| f.path).collect()
    }

    fn names(indexes: impl IntoIterator<Item = usize>) -> Vec<String> {
        indexes.into_iter().map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn small_files_are_merged_like_a_binary_counter() {
        // Too few files: nothing.
        assert!(chosen(&[5; 7]).is_empty());
        // Eight rounds' files become one.
        assert_eq!(chosen(&[5; 8]).len(), 8);
        // The merged file joins once the small ones add up to it.
        assert_eq!(chosen(&[40, 5, 5, 5, 5, 5, 5, 5, 5]).len(), 9);
        // A big file stays out while the small ones are fewer than it.
        assert!(chosen(&[1000, 5, 5, 5, 5, 5, 5, 5]).is_empty());
        let taken = chosen(&[1000, 80, 5, 5, 5, 5, 5, 5, 5, 5]);
        assert_eq!(taken, names(2..10));
        // Files that keep doubling never qualify alone; at 16 files the smallest 8 merge.
        let doubling: Vec<u64> = (0..16).map(|i| 1 << i).collect();
        assert_eq!(chosen(&doubling), names(0..8));
        assert!(chosen(&doubling[..15]).is_empty());
    }

    #[test]
    fn mostly_deleted_files_are_purged_and_vacuum_takes_everything() {
        let table = files(&[(1000, 300), (1000, 100), (10, 0)]);
        assert_eq!(paths(choose(table.clone(), TARGET, false)), names([0]));
        assert_eq!(paths(choose(table, TARGET, true)), names(0..3));
        // One clean file: VACUUM has nothing to do.
        assert!(paths(choose(files(&[(1000, 0)]), TARGET, true)).is_empty());
        assert_eq!(paths(choose(files(&[(1000, 1)]), TARGET, true)), names([0]));
        // Files of half the target size or more are rewritten by VACUUM only for their
        // deleted rows; the small ones are merged.
        let big = TARGET / 2;
        let table = files(&[(big, 0), (big, 1), (big * 3, 0), (10, 0), (20, 0)]);
        assert_eq!(paths(choose(table, TARGET, true)), names([1, 3, 4]));
        assert!(
            paths(choose(
                files(&[(big, 0), (TARGET, 0), (10, 0)]),
                TARGET,
                true
            ))
            .is_empty()
        );
    }

    #[test]
    fn merges_stop_at_the_target_size() {
        // Files of half the target size or more stay out of merges of small files, and a
        // file mostly deleted is rewritten whatever its size.
        let big = TARGET / 2;
        let mut rows = vec![big, TARGET * 4];
        rows.extend([5; 8]);
        assert_eq!(chosen(&rows), names(2..10));
        let table = files(&[(TARGET * 4, TARGET * 2), (big, 0), (5, 0)]);
        assert_eq!(paths(choose(table, TARGET, false)), names([0]));
        // A merge takes no more than two target sizes of files (and at least two), and
        // fewer files than eight when they make a target size.
        let third = TARGET / 3;
        assert_eq!(chosen(&[third; 10]).len(), 6);
        // (Three thirds are a byte short of it.)
        assert!(chosen(&[third; 3]).is_empty());
        assert_eq!(chosen(&[third; 4]).len(), 4);
        assert_eq!(chosen(&[TARGET / 2 - 1; 16]).len(), 4);
        let mut sizes = vec![TARGET / 4; 4];
        sizes.extend([1; 8]);
        assert_eq!(chosen(&sizes), names(4..12));
    }

    #[test]
    fn rewrites_take_two_target_sizes_at_most() {
        let sizes = [TARGET, TARGET / 2, TARGET / 2, TARGET * 3, 10, TARGET];
        let rows: Vec<(u64, u64)> = sizes.iter().map(|&r| (r, 0)).collect();
        assert_eq!(
            groups(files(&rows), TARGET),
            vec![names(0..3), names([3]), names(4..6)]
        );
        assert!(groups(Vec::new(), TARGET).is_empty());
        let many = groups(files(&[(1, 0); 150]), TARGET);
        assert_eq!(many.iter().map(Vec::len).collect::<Vec<_>>(), [64, 64, 22]);
    }
}
