//! Background maintenance: many single-row INSERTs are compacted into few files, vacuum
//! deletes the old ones only when no snapshot can read them, and transactions that started
//! before a compaction still commit.

use std::time::Duration;

use tributary_sql::{MaintenanceSettings, StreamingSettings};
use tributary_testkit::{KinesisFlavor, KinesisServer, TestServer};

fn parquet_files(dir: &std::path::Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            count += parquet_files(&entry.path());
        } else if entry.path().extension().is_some_and(|e| e == "parquet")
            && !entry.path().to_string_lossy().contains("_delta_log")
        {
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_are_compacted_and_vacuumed_without_breaking_readers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(
        dir.path().to_str().unwrap(),
        None,
        tributary_wire::PasswordMethod::ScramSha256,
    )
    .await;
    let client = server.client().await;
    client
        .batch_execute("CREATE TABLE clicks (id INT, page VARCHAR(16))")
        .await
        .unwrap();
    const INSERTS: i64 = 40;
    for i in 0..INSERTS {
        client
            .batch_execute(&format!("INSERT INTO clicks VALUES ({i}, 'p{}')", i % 7))
            .await
            .unwrap();
    }
    let files = server
        .engine
        .table_file_count("dev", "public", "clicks")
        .await
        .unwrap();
    assert_eq!(
        files, INSERTS as usize,
        "one file per INSERT before compaction"
    );

    // A reader holds a snapshot from before the compaction; a writer's transaction started
    // before it too.
    let reader = server.client().await;
    reader.batch_execute("BEGIN").await.unwrap();
    let before: i64 = reader
        .query_one("SELECT count(*) FROM clicks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, INSERTS);
    let writer = server.client().await;
    writer
        .batch_execute("BEGIN; SELECT count(*) FROM clicks")
        .await
        .unwrap();

    let settings = MaintenanceSettings {
        compact_min_files: 10,
        vacuum_retention: Duration::ZERO,
        ..Default::default()
    };
    let report = server.engine.maintain(&settings).await.unwrap();
    assert_eq!(report.compacted, 1);
    assert_eq!(
        report.files_deleted, 0,
        "vacuum must keep files an open snapshot reads"
    );
    assert_eq!(
        server
            .engine
            .table_file_count("dev", "public", "clicks")
            .await
            .unwrap(),
        1
    );
    let table_dir = std::fs::read_dir(dir.path().join("dev/public"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(parquet_files(&table_dir) > INSERTS as usize);

    // The old snapshot still reads, and the writer that started before the compaction commits.
    let again: i64 = reader
        .query_one("SELECT count(*) FROM clicks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, INSERTS);
    reader.batch_execute("COMMIT").await.unwrap();
    writer
        .batch_execute("UPDATE clicks SET page = 'home' WHERE id = 0; COMMIT")
        .await
        .unwrap();

    // With no snapshot left that reads them, the small files go.
    let report = server.engine.maintain(&settings).await.unwrap();
    assert!(report.files_deleted >= INSERTS as usize, "{report:?}");
    assert!(
        parquet_files(&table_dir) <= 2,
        "{}",
        parquet_files(&table_dir)
    );
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT page), sum(CASE WHEN page = 'home' THEN 1 ELSE 0 END) FROM clicks",
            &[],
        )
        .await
        .unwrap();
    let (rows, pages, home): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, pages, home), (INSERTS, 8, 1));

    // Vacuum commits nothing to the table's log, so the next write has nothing to undo, and
    // the log keeps removed files no longer than vacuum keeps them.
    client
        .batch_execute("INSERT INTO clicks VALUES (99, 'p9')")
        .await
        .unwrap();
    let mut log = String::new();
    for entry in std::fs::read_dir(table_dir.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            log.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    assert!(!log.contains("VACUUM"), "{log}");
    assert!(!log.contains("RESTORE"), "{log}");
    assert!(
        log.contains(r#""delta.deletedFileRetentionDuration":"interval 0 milliseconds""#),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_changes_on_top_of_key_table_versions_maintenance_moved_it_to() {
    let kinesis_server = KinesisServer::start(KinesisFlavor::Embedded);
    let server = TestServer::start_streaming(StreamingSettings {
        kinesis_endpoint: Some(kinesis_server.endpoint()),
        ..Default::default()
    })
    .await;
    let client = server.client().await;
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA cdc FROM KINESIS IAM_ROLE default;
               CREATE MIRROR TABLE accounts (id BIGINT, v INT, seq BIGINT, PRIMARY KEY (id))
                 FROM cdc."accounts" FORMAT OPERATION COLUMN op ORDER BY seq"#,
        )
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let copy = |name: &str, records: &[(&str, i64, i64, i64)]| {
        let lines: Vec<String> = records
            .iter()
            .map(|(op, id, v, seq)| format!(r#"{{"op":"{op}","id":{id},"v":{v},"seq":{seq}}}"#))
            .collect();
        let path = files.path().join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        format!(
            "COPY accounts FROM 'file://{}' FORMAT JSON 'auto'",
            path.display()
        )
    };
    let base: Vec<(&str, i64, i64, i64)> = (1..=100).map(|id| ("I", id, 1, id)).collect();
    client
        .batch_execute(&copy("base.json", &base))
        .await
        .unwrap();

    // A transaction takes its snapshot. Then its mirror's key table alone moves to a version
    // with the same keys, as when maintenance has given the key table a new file retention
    // under the mirror's lock and not yet the mirror's own table.
    let writer = server.client().await;
    writer
        .batch_execute("BEGIN; SELECT count(*) FROM accounts")
        .await
        .unwrap();
    let engine = &server.engine;
    let keys = engine
        .catalog_snapshot()
        .table("dev", "public", "accounts")
        .unwrap()
        .key_table()
        .cloned()
        .expect("a key table");
    let moved = engine
        .storage
        .table(&keys.path)
        .unwrap()
        .set_file_retention(keys.version, Duration::ZERO)
        .await
        .unwrap()
        .expect("a new version");
    engine
        .catalog
        .commit(|state| {
            let db = state.databases.get_mut("dev").unwrap();
            let schema = db.schemas.get_mut("public").unwrap();
            if let Some(tributary_catalog::Relation::Table(table)) =
                schema.relations.get_mut("accounts")
            {
                *table.pin_mut(&keys.path).unwrap() = moved;
            }
            Ok(())
        })
        .await
        .unwrap();
    engine.record_equivalent(&keys.path, keys.version, moved);

    // The transaction's change applies on top of the moved key table and commits.
    writer
        .batch_execute(&copy(
            "changes.json",
            &[("U", 1, 7, 101), ("D", 2, 0, 102), ("I", 500, 9, 103)],
        ))
        .await
        .unwrap();
    writer.batch_execute("COMMIT").await.unwrap();

    // Maintenance gives the mirror's table the same retention, and rounds go on.
    let settings = MaintenanceSettings {
        vacuum_retention: Duration::ZERO,
        ..Default::default()
    };
    engine.maintain(&settings).await.unwrap();
    let mut retained = 0;
    let data = server.data_dir().unwrap();
    for table in std::fs::read_dir(data.join("dev/public")).unwrap() {
        for commit in std::fs::read_dir(table.unwrap().path().join("_delta_log")).unwrap() {
            let text = std::fs::read_to_string(commit.unwrap().path()).unwrap_or_default();
            if text.contains(r#""delta.deletedFileRetentionDuration":"interval 0 milliseconds""#) {
                retained += 1;
            }
        }
    }
    assert_eq!(retained, 2, "the mirror's table and its key table");
    client
        .batch_execute(&copy("more.json", &[("U", 3, 5, 104)]))
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT count(*), sum(v)::BIGINT, max(id) FROM accounts",
            &[],
        )
        .await
        .unwrap();
    let (rows, sum, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, sum, max), (100, 100 - 3 + 7 + 9 + 5, 500));
}
