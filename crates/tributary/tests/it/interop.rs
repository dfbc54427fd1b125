//! Tables every Delta engine reads as Tributary does: after each kind of change, the external
//! readers users run (DuckDB's delta extension, delta-rs' Python reader, Polars) read the
//! table's latest version in place and get exactly the rows `SELECT *` shows.

use tributary_testkit::{TestServer, TextRows, read_delta};

/// The table's rows as Tributary shows them, each value as text, sorted.
async fn tributary_rows(client: &tokio_postgres::Client, table: &str) -> TextRows {
    let rows = client
        .simple_query(&format!("SELECT * FROM {table}"))
        .await
        .unwrap();
    let mut out: TextRows = rows
        .into_iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Where `table` is stored, relative to the storage root.
pub(crate) async fn table_location(client: &tokio_postgres::Client, table: &str) -> String {
    client
        .query_one(
            "SELECT location FROM svv_table_info WHERE \"table\" = $1",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

/// Asserts that every external reader reads `table` as Tributary does; gives the row count.
pub(crate) async fn assert_readers_agree(
    client: &tokio_postgres::Client,
    root: &std::path::Path,
    table: &str,
    after: &str,
) -> usize {
    let expected = tributary_rows(client, table).await;
    let path = root.join(table_location(client, table).await);
    let answers = tokio::task::spawn_blocking(move || read_delta(&path))
        .await
        .unwrap();
    assert_eq!(answers.len(), 3, "three readers answer: {answers:?}");
    for (reader, rows) in answers {
        match rows {
            Ok(rows) => assert_eq!(
                rows, expected,
                "after {after}, {reader} reads {table} differently from Tributary"
            ),
            Err(err) => panic!("after {after}, {reader} cannot read {table}: {err}"),
        }
    }
    expected.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_readers_read_a_table_as_tributary_does_after_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(
        dir.path().to_str().unwrap(),
        None,
        tributary_wire::PasswordMethod::ScramSha256,
    )
    .await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE carts (id INT, name VARCHAR(20), quantity BIGINT);
             CREATE TABLE changes (id INT, name VARCHAR(20), quantity BIGINT);",
        )
        .await
        .unwrap();
    let values: Vec<String> = (1..=200)
        .map(|i| format!("({i}, 'item {i}', {})", i * 10))
        .collect();
    client
        .batch_execute(&format!("INSERT INTO carts VALUES {}", values.join(", ")))
        .await
        .unwrap();
    let root = dir.path();
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "INSERT").await,
        200
    );

    client
        .batch_execute("UPDATE carts SET quantity = quantity + 1, name = NULL WHERE id % 7 = 0")
        .await
        .unwrap();
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "UPDATE").await,
        200
    );

    client
        .batch_execute("DELETE FROM carts WHERE id BETWEEN 50 AND 59 OR id % 11 = 0")
        .await
        .unwrap();
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "DELETE").await,
        173
    );

    // The seeds' merge: the changed ids are deleted, then inserted anew, in one transaction.
    client
        .batch_execute(
            "INSERT INTO changes VALUES (3, 'changed', 1), (55, 'back', 2), (500, 'new', 3);
             BEGIN;
             DELETE FROM carts USING changes WHERE carts.id = changes.id;
             INSERT INTO carts SELECT * FROM changes;
             COMMIT;",
        )
        .await
        .unwrap();
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "DELETE + INSERT").await,
        175
    );

    client
        .batch_execute(
            "MERGE INTO carts USING changes c ON carts.id = c.id \
             WHEN MATCHED THEN UPDATE SET quantity = carts.quantity * 2 \
             WHEN NOT MATCHED THEN INSERT VALUES (c.id, c.name, c.quantity)",
        )
        .await
        .unwrap();
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "MERGE").await,
        175
    );

    // Commit after commit, each with a deletion vector: the background checkpoint then holds
    // deletion vectors, which every reader must apply from it.
    for id in 1..=12 {
        client
            .batch_execute(&format!(
                "UPDATE carts SET quantity = quantity + 1 WHERE id = {id}"
            ))
            .await
            .unwrap();
    }
    let log = root
        .join(table_location(&client, "carts").await)
        .join("_delta_log");
    let newest_checkpoint = || {
        std::fs::read_dir(&log)
            .unwrap()
            .filter_map(|entry| {
                let name = entry.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".checkpoint.parquet")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    };
    // A slow checkpoint (a loaded machine) spaces the next one further: commit on until it
    // comes.
    let waited = std::time::Instant::now();
    let mut more = 0;
    while newest_checkpoint() < 10 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(60),
            "no checkpoint after {more} more commits"
        );
        more += 1;
        client
            .batch_execute(&format!(
                "UPDATE carts SET quantity = quantity + 1 WHERE id = {}",
                more % 12 + 1
            ))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "a checkpoint with deletion vectors").await,
        175
    );

    // Background maintenance: files with many deleted rows rewritten, small files compacted,
    // unread files vacuumed.
    let settings = tributary_sql::MaintenanceSettings {
        compact_min_files: 2,
        vacuum_retention: std::time::Duration::ZERO,
        purge_deleted_fraction: 0.05,
        ..Default::default()
    };
    let report = server.engine.maintain(&settings).await.unwrap();
    assert_eq!((report.purged, report.compacted), (1, 1), "{report:?}");
    assert!(report.files_deleted > 0, "{report:?}");
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "compaction and VACUUM").await,
        175
    );
    let row = client
        .query_one(
            "SELECT tbl_rows, estimated_visible_rows FROM svv_table_info WHERE \"table\" = 'carts'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (175, 175),
        "no deleted row is left after the rewrite"
    );

    client.batch_execute("TRUNCATE carts").await.unwrap();
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "TRUNCATE").await,
        0
    );
    client
        .batch_execute("INSERT INTO carts VALUES (1, 'again', 1)")
        .await
        .unwrap();
    assert_eq!(
        assert_readers_agree(&client, root, "carts", "INSERT after TRUNCATE").await,
        1
    );
}

/// Integer columns with more distinct values than a dictionary holds are written
/// DELTA_BINARY_PACKED: every reader reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_readers_read_delta_encoded_integers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(
        dir.path().to_str().unwrap(),
        None,
        tributary_wire::PasswordMethod::ScramSha256,
    )
    .await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE encoded AS SELECT CAST(value AS BIGINT) AS id, \
             CAST((value * 7919 % 1000003) / 100.0 AS DECIMAL(12,2)) AS amount, \
             CAST('2024-01-01' AS DATE) + CAST(value % 1000 AS INT) AS day, \
             CAST(value % 30000 AS SMALLINT) AS small, \
             'note ' || CAST(value % 100 AS VARCHAR) AS note \
             FROM generate_series(1, 200000) AS t(value)",
        )
        .await
        .unwrap();
    assert_eq!(
        assert_readers_agree(&client, dir.path(), "encoded", "CREATE TABLE AS").await,
        200_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_readers_apply_the_deletion_vectors_tributary_writes() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    let dir = tempfile::tempdir().unwrap();
    let root = tributary_storage::StorageRoot::open(dir.path().to_str().unwrap()).unwrap();
    let table = root.table("dev/public/dv-1").unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
    let v0 = table.create(&schema).await.unwrap();
    let ids = |range: std::ops::Range<i32>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(range.collect::<Vec<_>>()))],
        )
        .unwrap()
    };
    let v1 = table.append(v0, vec![ids(0..100)]).await.unwrap().version;
    let v2 = table.append(v1, vec![ids(100..150)]).await.unwrap().version;
    let files = table.files(v2).await.unwrap();
    assert_eq!(files.len(), 2);
    // Rows are counted from 0 within each file: the second file's row 0 is id 100.
    let (first, second) = if files[0].rows == 100 {
        (&files[0].path, &files[1].path)
    } else {
        (&files[1].path, &files[0].path)
    };
    let changes = tributary_storage::RowChanges {
        deleted: BTreeMap::from([
            (first.clone(), [0, 7, 99].into_iter().collect()),
            (second.clone(), [0, 49].into_iter().collect()),
        ]),
        added: None,
    };
    table.change_rows(v2, changes, "DELETE").await.unwrap();
    let deleted = [0, 7, 99, 100, 149];
    let expected: TextRows = {
        let mut rows: TextRows = (0..150)
            .filter(|i| !deleted.contains(i))
            .map(|i| vec![Some(i.to_string())])
            .collect();
        rows.sort();
        rows
    };
    let path = table.url().to_file_path().unwrap();
    let answers = tokio::task::spawn_blocking(move || read_delta(&path))
        .await
        .unwrap();
    assert_eq!(answers.len(), 3, "three readers answer: {answers:?}");
    for (reader, rows) in answers {
        assert_eq!(
            rows.unwrap_or_else(|err| panic!("{reader} cannot read the table: {err}")),
            expected,
            "{reader} does not apply the deletion vectors"
        );
    }
}
