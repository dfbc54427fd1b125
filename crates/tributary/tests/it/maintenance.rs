//! Background maintenance: many single-row INSERTs are compacted into few files, vacuum
//! deletes the old ones only when no snapshot can read them, and transactions that started
//! before a compaction still commit.

use std::time::Duration;

use tributary_sql::MaintenanceSettings;
use tributary_testkit::TestServer;

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
}
