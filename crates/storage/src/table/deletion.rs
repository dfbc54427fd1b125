//! Deletion vectors: rows of a data file marked deleted in a small bitmap file, instead of the
//! file being rewritten, as the Delta protocol's `deletionVectors` table feature defines them.
//! Every current Delta reader (delta-kernel and so DuckDB's delta extension and Polars,
//! delta-rs, Spark, Trino) applies them.
//!
//! delta-rs reads such tables but refuses to write them, so the commit that adds a deletion
//! vector is written here: the bitmaps are serialised by delta-kernel's writer (the
//! RoaringBitmapArray format), stored in one `deletion_vector_<uuid>.bin` file per commit, and
//! each touched file is removed and added again with its descriptor, in one Delta commit that
//! also raises the table's protocol to reader 3 / writer 7 with the feature.

use std::collections::BTreeMap;

use bytes::Bytes;
use delta_kernel::actions::deletion_vector_writer::{
    KernelDeletionVector, StreamingDeletionVectorWriter,
};
use deltalake::kernel::{Action, DeletionVectorDescriptor, StorageType};
use deltalake::logstore::CommitOrBytes;
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use roaring::RoaringTreemap;

use super::{StagedFiles, TableHandle};
use crate::{Error, Result};

/// The writer features each legacy writer version implies (Delta protocol, "Table Features").
const LEGACY_WRITER_FEATURES: [(i32, &str); 7] = [
    (2, "appendOnly"),
    (2, "invariants"),
    (3, "checkConstraints"),
    (4, "changeDataFeed"),
    (4, "generatedColumns"),
    (5, "columnMapping"),
    (6, "identityColumns"),
];

/// The first four bytes of a serialised RoaringBitmapArray (little-endian).
const PORTABLE_MAGIC: u32 = 1681511377;

/// Length of a z85-encoded UUID, the tail of a `u` descriptor's path.
const ENCODED_UUID_LEN: usize = 20;

/// A set of row indexes of a data file, counted from 0 in the file: a compressed bitmap,
/// about a bit per row where rows are dense and a few bytes per row where they are sparse.
pub type RowSet = RoaringTreemap;

/// What one commit of [`TableHandle::change_rows`] does.
#[derive(Debug, Default)]
pub struct RowChanges {
    /// Rows to mark deleted: a data file's path (as [`TableHandle::files`] gives it) and the
    /// indexes of its rows. Rows deleted before stay deleted.
    pub deleted: BTreeMap<String, RowSet>,
    /// New rows, written by [`TableHandle::stage`] from the same base version.
    pub added: Option<StagedFiles>,
}

impl TableHandle {
    /// Commits `changes` on top of `base_version` as one Delta commit named `operation`
    /// (`DELETE`, `UPDATE`, `MERGE`): every touched file is re-added with a deletion vector
    /// that holds its earlier deletions and the new ones (a file left with no live rows is
    /// removed instead), and the staged files are added. The vectors of the commit share one
    /// `deletion_vector_<uuid>.bin`. Returns the new version, or [`Error::Conflict`] if
    /// another writer committed after `base_version`.
    pub async fn change_rows(
        &self,
        base_version: u64,
        changes: RowChanges,
        operation: &str,
    ) -> Result<u64> {
        let table = self.load(base_version).await?;
        let snapshot = table.snapshot()?;
        let mut touched = BTreeMap::new();
        for file in snapshot.log_data().iter() {
            // The commit re-adds the file whole (stats, partition values, tags) with its
            // vector: the add action is the form that carries all of it.
            #[expect(
                deprecated,
                reason = "the commit written here needs the whole add action"
            )]
            let add = file.add_action();
            if changes.deleted.contains_key(&add.path) {
                touched.insert(add.path.clone(), (add, file.remove_action(true)));
            }
        }
        if let Some(missing) = changes.deleted.keys().find(|p| !touched.contains_key(*p)) {
            return Err(Error::Internal(format!(
                "{missing} is not a data file of version {base_version}"
            )));
        }

        // Each touched file's vector: what it had, and the new rows.
        let mut vectors = Vec::new();
        for (path, indexes) in changes.deleted {
            let (add, _) = &touched[&path];
            let mut rows = match &add.deletion_vector {
                Some(descriptor) => self.read_vector(descriptor).await?,
                None => RoaringTreemap::new(),
            };
            rows |= indexes;
            let live = add_rows(add)?.saturating_sub(rows.len());
            vectors.push((path, rows, live));
        }

        let mut lines = Vec::new();
        if vectors.iter().any(|(_, _, live)| *live > 0)
            && let Some(protocol) = with_deletion_vectors(snapshot.protocol())
        {
            lines.push(protocol);
        }
        let mut marked = Vec::new();
        for (path, rows, _) in vectors {
            let (add, remove) = touched.remove(&path).expect("checked above");
            lines.push(action_line(Action::Remove(remove))?);
            marked.push((add, rows));
        }
        lines.extend(self.vector_lines(marked).await?);
        for add in changes.added.into_iter().flat_map(|staged| staged.adds) {
            lines.push(action_line(Action::Add(add))?);
        }
        self.write_commit(&table, base_version, lines, operation)
            .await
    }

    /// The add actions of files with rows marked deleted (each with every row it marks), and
    /// the one `deletion_vector_<uuid>.bin` their vectors share, written now. A file with no
    /// live rows left gets no action: it is gone.
    pub(super) async fn vector_lines(
        &self,
        marked: Vec<(deltalake::kernel::Add, RoaringTreemap)>,
    ) -> Result<Vec<String>> {
        let uuid = uuid::Uuid::new_v4();
        let mut buffer = Vec::new();
        let mut writer = StreamingDeletionVectorWriter::new(&mut buffer);
        let mut wrote_vector = false;
        let mut lines = Vec::new();
        for (mut add, rows) in marked {
            if add_rows(&add)? <= rows.len() {
                continue;
            }
            let mut vector = KernelDeletionVector::new();
            vector.add_deleted_row_indexes(rows.iter());
            let result = writer
                .write_deletion_vector(vector)
                .map_err(|e| Error::Internal(format!("deletion vector of {}: {e}", add.path)))?;
            wrote_vector = true;
            add.deletion_vector = Some(DeletionVectorDescriptor {
                storage_type: StorageType::UuidRelativePath,
                path_or_inline_dv: z85::encode(uuid.as_bytes()),
                offset: Some(result.offset),
                size_in_bytes: result.size_in_bytes,
                cardinality: result.cardinality,
            });
            add.data_change = true;
            lines.push(action_line(Action::Add(add))?);
        }
        writer
            .finalize()
            .map_err(|e| Error::Internal(format!("deletion vector file: {e}")))?;
        if wrote_vector {
            let file = Path::from(format!("{}/deletion_vector_{uuid}.bin", self.path));
            self.root
                .object_store()
                .put(&file, Bytes::from(buffer).into())
                .await?;
        }
        Ok(lines)
    }

    /// Writes `lines` (Delta actions) as the commit after `base_version`, with its commit
    /// information. Returns the new version ([`Error::Conflict`] if another writer took it),
    /// or `base_version` when there is nothing to commit.
    pub(super) async fn write_commit(
        &self,
        table: &deltalake::DeltaTable,
        base_version: u64,
        mut lines: Vec<String>,
        operation: &str,
    ) -> Result<u64> {
        if lines.is_empty() {
            return Ok(base_version);
        }
        lines.push(
            serde_json::json!({"commitInfo": {
                "timestamp": chrono::Utc::now().timestamp_millis(),
                "operation": operation,
                "operationParameters": {},
            }})
            .to_string(),
        );
        let version = base_version + 1;
        let bytes = Bytes::from(lines.join("\n") + "\n");
        table
            .log_store()
            .write_commit_entry(
                version,
                CommitOrBytes::LogBytes(bytes),
                uuid::Uuid::new_v4(),
            )
            .await
            .map_err(|err| match err {
                deltalake::kernel::transaction::TransactionError::VersionAlreadyExists(_) => {
                    Error::Conflict {
                        path: self.path.clone(),
                    }
                }
                other => Error::Delta(other.into()),
            })?;
        self.root.checkpoints().committed(&self.url, version);
        Ok(version)
    }

    /// Rewrites the files of `version` whose deletion vectors mark at least `fraction` of
    /// their rows deleted, so that deleted rows stop costing reads and storage: their live
    /// rows stream into new files, a batch at a time ([`Self::prepare_rewrite`]), committed
    /// in one version with the same rows as `version`. Returns the new version, or None if no
    /// file passed the threshold. Readers of older versions are unaffected until VACUUM.
    pub async fn purge_deleted(&self, version: u64, fraction: f64) -> Result<Option<u64>> {
        let chosen: Vec<String> = self
            .files(version)
            .await?
            .into_iter()
            .filter(|f| f.deleted > 0 && f.deleted as f64 >= f.rows as f64 * fraction)
            .map(|f| f.path)
            .collect();
        if chosen.is_empty() {
            return Ok(None);
        }
        let rewrite = self.prepare_rewrite(version, &chosen).await?;
        Ok(Some(self.commit_rewrite(version, rewrite).await?))
    }

    /// The rows a deletion vector marks deleted, read from the table's storage (or from the
    /// descriptor itself for an inline vector), with its framing checked.
    pub(super) async fn read_vector(
        &self,
        descriptor: &DeletionVectorDescriptor,
    ) -> Result<RoaringTreemap> {
        let broken = |reason: String| {
            Error::Internal(format!(
                "deletion vector {} of {}: {reason}",
                descriptor.path_or_inline_dv, self.path
            ))
        };
        let size = usize::try_from(descriptor.size_in_bytes)
            .map_err(|_| broken("negative size".into()))?;
        let framed = match descriptor.storage_type {
            StorageType::Inline => z85::decode(&descriptor.path_or_inline_dv)
                .map_err(|e| broken(format!("not z85: {e}")))?,
            StorageType::UuidRelativePath => {
                let encoded = &descriptor.path_or_inline_dv;
                let split = encoded
                    .len()
                    .checked_sub(ENCODED_UUID_LEN)
                    .ok_or_else(|| broken("path too short".into()))?;
                let (prefix, id) = encoded.split_at(split);
                let id = z85::decode(id).map_err(|e| broken(format!("uuid not z85: {e}")))?;
                let id = uuid::Uuid::from_slice(&id).map_err(|e| broken(e.to_string()))?;
                let name = format!("deletion_vector_{id}.bin");
                let file = if prefix.is_empty() {
                    Path::from(format!("{}/{name}", self.path))
                } else {
                    Path::from(format!("{}/{prefix}/{name}", self.path))
                };
                // At the offset: the size (big-endian), then magic and bitmap, then a CRC.
                let start = descriptor.offset.unwrap_or(1);
                let start = u64::try_from(start).map_err(|_| broken("negative offset".into()))?;
                let bytes = self
                    .root
                    .object_store()
                    .get_range(&file, start..start + 4 + size as u64)
                    .await?;
                let stored = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
                if stored as usize != size {
                    return Err(broken(format!(
                        "the file says {stored} bytes, the log {size}"
                    )));
                }
                bytes[4..].to_vec()
            }
            StorageType::AbsolutePath => {
                return Err(broken(
                    "vectors stored at an absolute path are not supported".into(),
                ));
            }
        };
        if framed.len() < 4
            || u32::from_le_bytes(framed[..4].try_into().expect("4 bytes")) != PORTABLE_MAGIC
        {
            return Err(broken("not a RoaringBitmapArray".into()));
        }
        let rows =
            RoaringTreemap::deserialize_from(&framed[4..]).map_err(|e| broken(e.to_string()))?;
        if rows.len() != descriptor.cardinality as u64 {
            return Err(broken(format!(
                "{} rows where the log says {}",
                rows.len(),
                descriptor.cardinality
            )));
        }
        Ok(rows)
    }
}

/// The protocol action that adds the `deletionVectors` feature to `protocol` (reader version
/// 3, writer version 7, with the features the table had, explicit), or None if it has it.
pub(super) fn with_deletion_vectors(protocol: &deltalake::kernel::Protocol) -> Option<String> {
    with_feature(protocol, "deletionVectors")
}

/// The protocol action that adds the reader and writer feature `feature` to `protocol`
/// (reader version 3, writer version 7, with the features the table had, explicit), or None
/// if it has it.
pub(super) fn with_feature(
    protocol: &deltalake::kernel::Protocol,
    feature: &str,
) -> Option<String> {
    let mut readers: Vec<String> = protocol
        .reader_features()
        .unwrap_or_default()
        .iter()
        .map(|f| f.as_ref().to_string())
        .collect();
    if readers.iter().any(|f| f == feature) {
        return None;
    }
    let reader_version = protocol.min_reader_version();
    let writer_version = protocol.min_writer_version();
    if reader_version == 2 {
        readers.push("columnMapping".into());
    }
    readers.push(feature.into());
    let mut writers: Vec<String> = if writer_version >= 7 {
        protocol
            .writer_features()
            .unwrap_or_default()
            .iter()
            .map(|f| f.as_ref().to_string())
            .collect()
    } else {
        LEGACY_WRITER_FEATURES
            .iter()
            .filter(|(version, _)| *version <= writer_version)
            .map(|(_, name)| name.to_string())
            .collect()
    };
    if !writers.iter().any(|f| f == feature) {
        writers.push(feature.into());
    }
    Some(
        serde_json::json!({"protocol": {
            "minReaderVersion": 3,
            "minWriterVersion": 7,
            "readerFeatures": readers,
            "writerFeatures": writers,
        }})
        .to_string(),
    )
}

/// The rows a data file holds, from its statistics (every file written here has them).
pub(super) fn add_rows(add: &deltalake::kernel::Add) -> Result<u64> {
    add.stats
        .as_deref()
        .and_then(|stats| serde_json::from_str::<serde_json::Value>(stats).ok())
        .and_then(|stats| stats.get("numRecords").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| {
            Error::Internal(format!(
                "{} has no row count in its statistics, so rows of it cannot be deleted",
                add.path
            ))
        })
}

pub(super) fn action_line(action: Action) -> Result<String> {
    serde_json::to_string(&action).map_err(|e| Error::Internal(format!("Delta action: {e}")))
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::StorageRoot;

    pub(in crate::table) async fn ids(table: &TableHandle, version: u64) -> Vec<i32> {
        let ctx = SessionContext::new();
        ctx.register_table("t", table.provider(version).await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("select id from t order by id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn deleted(path: &str, rows: &[u64]) -> RowChanges {
        RowChanges {
            deleted: BTreeMap::from([(path.to_string(), rows.iter().copied().collect())]),
            added: None,
        }
    }

    fn id_batch(schema: &Arc<Schema>, ids: impl IntoIterator<Item = i32>) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from_iter_values(ids))],
        )
        .unwrap()
    }

    /// A table whose two data files hold `first` and `second`; gives the table, its schema and
    /// the version with both.
    pub(in crate::table) async fn two_files(
        root: &Arc<StorageRoot>,
        path: &str,
        first: std::ops::Range<i32>,
        second: std::ops::Range<i32>,
    ) -> (TableHandle, Arc<Schema>, u64) {
        let table = root.table(path).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let mut version = table.create(&schema).await.unwrap();
        for ids in [first, second] {
            version = table
                .append(version, vec![id_batch(&schema, ids)])
                .await
                .unwrap()
                .version;
        }
        (table, schema, version)
    }

    #[tokio::test]
    async fn a_second_delete_merges_with_the_first_and_new_rows_commit_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (table, schema, v2) = two_files(&root, "dev/public/t-4", 0..10, 10..13).await;
        let files = table.files(v2).await.unwrap();
        let first = files.iter().find(|f| f.rows == 10).unwrap().path.clone();
        let second = files.iter().find(|f| f.rows == 3).unwrap().path.clone();

        let v3 = table
            .change_rows(v2, deleted(&first, &[1, 2]), "DELETE")
            .await
            .unwrap();
        // Row 2 again, row 5, and every row of the second file; 100 and 101 come in.
        let staged = table
            .stage(v3, &[id_batch(&schema, [100, 101])])
            .await
            .unwrap();
        let changes = RowChanges {
            deleted: BTreeMap::from([
                (first.clone(), RowSet::from_iter([2, 5])),
                (second, RowSet::from_iter([0, 1, 2])),
            ]),
            added: Some(staged),
        };
        let v4 = table.change_rows(v3, changes, "MERGE").await.unwrap();
        assert_eq!(v4, v3 + 1, "one commit");
        assert_eq!(ids(&table, v4).await, vec![0, 3, 4, 6, 7, 8, 9, 100, 101]);
        let after = table.files(v4).await.unwrap();
        assert_eq!(after.len(), 2, "the emptied file is removed: {after:?}");
        assert_eq!(
            after.iter().find(|f| f.path == first).map(|f| f.deleted),
            Some(3),
            "the merged vector holds rows 1, 2 and 5"
        );
        // A commit on a stale base loses.
        let outcome = table.change_rows(v3, deleted(&first, &[0]), "DELETE").await;
        assert!(
            matches!(outcome, Err(Error::Conflict { .. })),
            "{outcome:?}"
        );
    }

    /// Commits through delta-rs (appends) and straight to the log (deletion vectors) are
    /// checkpointed in the background, so that a version loads from a checkpoint and the
    /// commits after it: with the commits before the checkpoint deleted, another server still
    /// reads the same rows.
    #[tokio::test]
    async fn commits_are_checkpointed_and_a_version_loads_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (table, schema, mut version) = two_files(&root, "dev/public/t-5", 0..40, 40..41).await;
        let files = table.files(version).await.unwrap();
        let first = files.iter().find(|f| f.rows == 40).unwrap().path.clone();
        for round in 0..30 {
            version = if round % 2 == 0 {
                table
                    .change_rows(version, deleted(&first, &[round]), "DELETE")
                    .await
                    .unwrap()
            } else {
                table
                    .append(version, vec![id_batch(&schema, [100 + round as i32])])
                    .await
                    .unwrap()
                    .version
            };
        }
        root.checkpoints().idle().await;
        let log = dir.path().join("dev/public/t-5/_delta_log");
        let checkpoint = newest_checkpoint(&log);
        assert!(
            checkpoint >= 10 && checkpoint <= version,
            "checkpoint {checkpoint} of {version} versions"
        );
        let expected = ids(&table, version).await;
        // 41 rows, 15 of them deleted and 15 appended.
        assert_eq!(expected.len(), 41);
        for entry in std::fs::read_dir(&log).unwrap() {
            let path = entry.unwrap().path();
            let commit = path
                .file_name()
                .and_then(|name| name.to_str()?.strip_suffix(".json")?.parse::<u64>().ok());
            if commit.is_some_and(|commit| commit < checkpoint) {
                std::fs::remove_file(path).unwrap();
            }
        }
        let other = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let reread = other.table("dev/public/t-5").unwrap();
        assert_eq!(ids(&reread, version).await, expected);
        // The log keeps a day of versions.
        let loaded = reread.load(version).await.unwrap();
        let snapshot = loaded.snapshot().unwrap();
        assert_eq!(
            snapshot.table_config().log_retention_duration,
            Some(std::time::Duration::from_secs(24 * 3600))
        );
    }

    /// The version of the newest checkpoint in the Delta log at `log`.
    fn newest_checkpoint(log: &std::path::Path) -> u64 {
        std::fs::read_dir(log)
            .unwrap()
            .filter_map(|entry| {
                let name = entry.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".checkpoint.parquet")?.parse().ok()
            })
            .max()
            .expect("a checkpoint")
    }

    /// The removed files (tombstones) the newest checkpoint in `log` repeats.
    async fn removals_in_newest_checkpoint(log: &std::path::Path) -> usize {
        let path = log.join(format!("{:020}.checkpoint.parquet", newest_checkpoint(log)));
        SessionContext::new()
            .read_parquet(path.to_str().unwrap(), Default::default())
            .await
            .unwrap()
            .filter(datafusion::prelude::col("remove").is_not_null())
            .unwrap()
            .count()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn removals_leave_checkpoints_after_the_file_retention_and_vacuum_keeps_to_it() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (table, schema, mut version) = two_files(&root, "dev/public/t-6", 0..40, 40..41).await;
        let files = table.files(version).await.unwrap();
        let first = files.iter().find(|f| f.rows == 40).unwrap().path.clone();
        // Each DELETE replaces the file's deletion vector: a removal of the file with the old
        // vector, and a new deletion vector file.
        for row in 0..12 {
            version = table
                .change_rows(version, deleted(&first, &[row]), "DELETE")
                .await
                .unwrap();
        }
        root.checkpoints().idle().await;
        let log = dir.path().join("dev/public/t-6/_delta_log");
        // A table keeps removals for the root's file retention (an hour unless the server sets
        // its vacuum retention), where Delta's default is a week.
        let loaded = table.load(version).await.unwrap();
        assert_eq!(
            crate::table::file_retention(&loaded).unwrap(),
            crate::root::DEFAULT_FILE_RETENTION
        );
        let removals = removals_in_newest_checkpoint(&log).await;
        assert!(removals >= 8, "{removals} removals in the checkpoint");

        let kept = table
            .set_file_retention(version, Duration::ZERO)
            .await
            .unwrap()
            .expect("a new version");
        assert_eq!(
            table
                .set_file_retention(kept, Duration::ZERO)
                .await
                .unwrap(),
            None
        );
        version = kept;
        // Appends until the next checkpoint: 10 commits, or more when checkpoints are slow.
        let mut appended = 0;
        while newest_checkpoint(&log) <= kept {
            assert!(appended < 500, "no checkpoint after {appended} appends");
            version = table
                .append(version, vec![id_batch(&schema, [100 + appended])])
                .await
                .unwrap()
                .version;
            appended += 1;
            root.checkpoints().idle().await;
        }
        assert_eq!(removals_in_newest_checkpoint(&log).await, 0);
        let expected = ids(&table, version).await;
        assert_eq!(expected.len(), 41 - 12 + appended as usize);

        // A file no commit names, written two hours ago; and deletion vector files written
        // then too, all but the newest since replaced.
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        let age = |path: &std::path::Path| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap()
        };
        let orphan = dir.path().join("dev/public/t-6/orphan.parquet");
        std::fs::write(&orphan, b"not parquet").unwrap();
        age(&orphan);
        let vectors = || -> Vec<std::path::PathBuf> {
            std::fs::read_dir(dir.path().join("dev/public/t-6"))
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| {
                    let name = path.file_name().unwrap().to_string_lossy();
                    name.starts_with("deletion_vector_")
                })
                .collect()
        };
        assert_eq!(vectors().len(), 12);
        vectors().iter().for_each(|path| age(path));
        // The log keeps no removal as long as an hour: the orphan may be a file whose removal
        // left it, so vacuum leaves it.
        assert_eq!(table.vacuum(Duration::from_secs(3600)).await.unwrap(), 0);
        assert!(orphan.exists());
        // Once the log keeps removals for the hour, the orphan goes; the replaced deletion
        // vectors are old but were only now found replaced, so they stay for the hour.
        version = table
            .set_file_retention(version, Duration::from_secs(3600))
            .await
            .unwrap()
            .expect("a new version");
        assert_eq!(table.vacuum(Duration::from_secs(3600)).await.unwrap(), 1);
        assert!(!orphan.exists());
        assert_eq!(vectors().len(), 12);
        // Without retention, the eleven replaced deletion vectors go, and no commit records
        // the vacuum.
        assert_eq!(table.vacuum(Duration::ZERO).await.unwrap(), 11);
        assert_eq!(vectors().len(), 1);
        assert!(!table.has_commits_after(version).await.unwrap());
        assert_eq!(ids(&table, version).await, expected);
    }

    #[test]
    fn the_protocol_upgrade_keeps_the_features_a_table_had() {
        let protocol =
            |json: &str| -> deltalake::kernel::Protocol { serde_json::from_str(json).unwrap() };
        let upgraded = |json: &str| -> Option<serde_json::Value> {
            with_deletion_vectors(&protocol(json)).map(|line| {
                serde_json::from_str::<serde_json::Value>(&line).unwrap()["protocol"].clone()
            })
        };
        assert_eq!(
            upgraded(r#"{"minReaderVersion":1,"minWriterVersion":2}"#).unwrap(),
            serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
                "readerFeatures": ["deletionVectors"],
                "writerFeatures": ["appendOnly", "invariants", "deletionVectors"]})
        );
        let ntz = r#"{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["timestampNtz"],"writerFeatures":["timestampNtz"]}"#;
        assert_eq!(
            upgraded(ntz).unwrap(),
            serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
                "readerFeatures": ["timestampNtz", "deletionVectors"],
                "writerFeatures": ["timestampNtz", "deletionVectors"]})
        );
        let has = r#"{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["deletionVectors"],"writerFeatures":["deletionVectors"]}"#;
        assert_eq!(upgraded(has), None);
    }

    #[tokio::test]
    async fn files_mostly_deleted_are_rewritten_with_their_live_rows() {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let (table, _, v2) = two_files(&root, "dev/public/t-6", 0..10, 10..20).await;
        let files = table.files(v2).await.unwrap();
        let first = files.iter().find(|f| f.min_values["id"] == 0).unwrap();
        let second = files.iter().find(|f| f.min_values["id"] == 10).unwrap();
        let changes = RowChanges {
            deleted: BTreeMap::from([
                (first.path.clone(), (0..6).collect()),
                (second.path.clone(), RowSet::from_iter([0])),
            ]),
            added: None,
        };
        let v3 = table.change_rows(v2, changes, "DELETE").await.unwrap();
        assert_eq!(table.purge_deleted(v3, 0.9).await.unwrap(), None);
        let v4 = table.purge_deleted(v3, 0.5).await.unwrap().unwrap();
        let expected: Vec<i32> = (6..10).chain(11..20).collect();
        assert_eq!(ids(&table, v4).await, expected);
        let after = table.files(v4).await.unwrap();
        assert_eq!(after.len(), 2);
        assert!(after.iter().all(|f| f.path != first.path), "rewritten");
        assert!(
            after
                .iter()
                .any(|f| f.path == second.path && f.deleted == 1)
        );
        assert_eq!(
            after.iter().map(|f| f.rows - f.deleted).sum::<u64>(),
            13,
            "no deleted row is left in a rewritten file"
        );
    }

    #[tokio::test]
    async fn deleted_rows_are_gone_from_later_versions_the_file_is_not_rewritten_and_vacuum_keeps_the_vector()
     {
        let dir = tempfile::tempdir().unwrap();
        let root = StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
        let table = root.table("dev/public/t-3").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let v0 = table.create(&schema).await.unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from((0..100).collect::<Vec<_>>()))],
        )
        .unwrap();
        let v1 = table.append(v0, vec![batch]).await.unwrap().version;
        let files = table.files(v1).await.unwrap();
        assert_eq!(files.len(), 1);
        let data = files[0].path.clone();

        let v2 = table
            .change_rows(v1, deleted(&data, &[0, 7, 99]), "DELETE")
            .await
            .unwrap();
        let expected: Vec<i32> = (0..100).filter(|i| ![0, 7, 99].contains(i)).collect();
        assert_eq!(ids(&table, v2).await, expected);
        assert_eq!(
            ids(&table, v1).await.len(),
            100,
            "the older version still reads"
        );
        let after = table.files(v2).await.unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].path, data, "the data file is kept, not rewritten");

        // VACUUM (delta-rs' full mode, no retention) keeps the vector file a live add names.
        table.vacuum(std::time::Duration::ZERO).await.unwrap();
        let vectors = std::fs::read_dir(table.url().to_file_path().unwrap())
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("deletion_vector_")
            })
            .count();
        assert_eq!(vectors, 1, "the deletion vector file survives VACUUM");
        assert_eq!(ids(&table, v2).await, expected, "and still applies");
    }
}
