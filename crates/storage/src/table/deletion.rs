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

use super::TableHandle;
use crate::{Error, Result};

/// The protocol a table with deletion vectors carries: the features of writer version 2
/// (which every table created here had) plus `deletionVectors`.
const PROTOCOL: &str = r#"{"protocol":{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["deletionVectors"],"writerFeatures":["appendOnly","invariants","deletionVectors"]}}"#;

impl TableHandle {
    /// Marks rows of `base_version`'s data files deleted: `rows` maps a file's path (as
    /// [`Self::files`] gives it) to the indexes of its rows to delete, counted from 0 in the
    /// file. Returns the new version. A file that already has a deletion vector is refused for
    /// now (merging vectors comes with the DML that uses them).
    pub async fn delete_rows(
        &self,
        base_version: u64,
        rows: BTreeMap<String, Vec<u64>>,
    ) -> Result<u64> {
        let table = self.load(base_version).await?;
        let snapshot = table.snapshot()?;
        let protocol = snapshot.protocol();
        let upgrade = !protocol
            .reader_features()
            .is_some_and(|features| features.iter().any(|f| f.as_ref() == "deletionVectors"));
        let mut adds = BTreeMap::new();
        for file in snapshot.log_data().iter() {
            // The commit re-adds the file whole (stats, partition values, tags) with its
            // vector: the add action is the form that carries all of it.
            #[expect(
                deprecated,
                reason = "the commit written here needs the whole add action"
            )]
            let add = file.add_action();
            if rows.contains_key(&add.path) {
                if add.deletion_vector.is_some() {
                    return Err(Error::Internal(format!(
                        "{} already has a deletion vector; merging vectors is not supported yet",
                        add.path
                    )));
                }
                adds.insert(add.path.clone(), (add, file.remove_action(true)));
            }
        }
        if let Some(missing) = rows.keys().find(|path| !adds.contains_key(*path)) {
            return Err(Error::Internal(format!(
                "{missing} is not a data file of version {base_version}"
            )));
        }

        // One file holds this commit's vectors, each at its own offset.
        let uuid = uuid::Uuid::new_v4();
        let mut buffer = Vec::new();
        let mut writer = StreamingDeletionVectorWriter::new(&mut buffer);
        let mut written = Vec::new();
        for (path, indexes) in &rows {
            let mut vector = KernelDeletionVector::new();
            vector.add_deleted_row_indexes(indexes.iter().copied());
            let result = writer
                .write_deletion_vector(vector)
                .map_err(|e| Error::Internal(format!("deletion vector of {path}: {e}")))?;
            written.push((path.clone(), result));
        }
        writer
            .finalize()
            .map_err(|e| Error::Internal(format!("deletion vector file: {e}")))?;
        let file = Path::from(format!("{}/deletion_vector_{uuid}.bin", self.path));
        self.root
            .object_store()
            .put(&file, Bytes::from(buffer).into())
            .await?;

        let mut lines = Vec::new();
        if upgrade {
            lines.push(PROTOCOL.to_string());
        }
        for (path, result) in written {
            let (mut add, remove) = adds.remove(&path).expect("checked above");
            add.deletion_vector = Some(DeletionVectorDescriptor {
                storage_type: StorageType::UuidRelativePath,
                path_or_inline_dv: z85::encode(uuid.as_bytes()),
                offset: Some(result.offset),
                size_in_bytes: result.size_in_bytes,
                cardinality: result.cardinality,
            });
            add.data_change = true;
            lines.push(action_line(Action::Remove(remove))?);
            lines.push(action_line(Action::Add(add))?);
        }
        lines.push(
            serde_json::json!({"commitInfo": {
                "timestamp": chrono::Utc::now().timestamp_millis(),
                "operation": "DELETE",
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
        Ok(version)
    }
}

fn action_line(action: Action) -> Result<String> {
    serde_json::to_string(&action).map_err(|e| Error::Internal(format!("Delta action: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::StorageRoot;

    async fn ids(table: &TableHandle, version: u64) -> Vec<i32> {
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
            .delete_rows(v1, BTreeMap::from([(data.clone(), vec![0, 7, 99])]))
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
