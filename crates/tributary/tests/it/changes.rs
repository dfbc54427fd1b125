//! Changes cost what they change: UPDATE, DELETE and MERGE mark rows in deletion vectors and
//! add the new row versions, and no data file of the table is rewritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tributary_testkit::TestServer;

/// Every file under `dir` with its size.
fn files_under(dir: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                out.insert(entry.path(), meta.len());
            }
        }
    }
    out
}

/// Bytes of the files under `dir` that `before` did not have.
fn new_bytes(dir: &Path, before: &HashMap<PathBuf, u64>) -> u64 {
    files_under(dir)
        .into_iter()
        .filter(|(path, _)| !before.contains_key(path))
        .map(|(_, size)| size)
        .sum()
}

fn is_data_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "parquet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_change_to_a_large_table_writes_a_small_fraction_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(
        dir.path().to_str().unwrap(),
        None,
        tributary_wire::PasswordMethod::ScramSha256,
    )
    .await;
    let client = server.client().await;
    const ROWS: i64 = 10_000_000;
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id BIGINT, amount BIGINT, note VARCHAR(40));
             INSERT INTO big SELECT value, value % 1000, 'note ' || (value % 977)
               FROM generate_series(1, {ROWS})"
        ))
        .await
        .unwrap();
    let location: String = client
        .query_one(
            "SELECT location FROM svv_table_info WHERE \"table\" = 'big'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let table_dir = dir.path().join(location);
    // The table says from its first version that it may have deletion vectors.
    let created =
        std::fs::read_to_string(table_dir.join("_delta_log/00000000000000000000.json")).unwrap();
    let protocol = created
        .lines()
        .find(|line| line.starts_with("{\"protocol\""))
        .unwrap();
    assert!(
        protocol.contains("\"minReaderVersion\":3") && protocol.contains("\"deletionVectors\""),
        "{protocol}"
    );
    let loaded = files_under(&table_dir);
    let table_bytes: u64 = loaded
        .iter()
        .filter(|(path, _)| is_data_file(path))
        .map(|(_, size)| size)
        .sum();

    // 100 rows spread over the whole table.
    let ids: Vec<String> = (0..100).map(|i| (i * 99_991 + 7).to_string()).collect();
    let deleted = client
        .execute(
            &format!("DELETE FROM big WHERE id IN ({})", ids.join(", ")),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 100);
    let delete_bytes = new_bytes(&table_dir, &loaded);
    let after_delete = files_under(&table_dir);
    for (path, _) in loaded.iter().filter(|(path, _)| is_data_file(path)) {
        assert!(after_delete.contains_key(path), "{path:?} is kept");
    }

    let updated = client
        .execute(
            "UPDATE big SET amount = -1 WHERE id BETWEEN 5000000 AND 5000099",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(updated, 100);
    let update_bytes = new_bytes(&table_dir, &after_delete);
    println!(
        "table {table_bytes} bytes; 100-row DELETE wrote {delete_bytes} bytes, 100-row UPDATE {update_bytes} bytes"
    );
    // Kilobytes, not the table: well under 1% each (the log entries, one vector file, and
    // for the UPDATE one small file of new row versions).
    assert!(
        delete_bytes * 100 < table_bytes,
        "a 100-row DELETE wrote {delete_bytes} of {table_bytes} bytes"
    );
    assert!(
        update_bytes * 100 < table_bytes,
        "a 100-row UPDATE wrote {update_bytes} of {table_bytes} bytes"
    );

    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE amount = -1), CAST(sum(id) AS BIGINT) FROM big",
            &[],
        )
        .await
        .unwrap();
    let deleted_sum: i64 = (0..100).map(|i| i * 99_991 + 7).sum();
    assert_eq!(row.get::<_, i64>(0), ROWS - 100);
    assert_eq!(row.get::<_, i64>(1), 100);
    assert_eq!(row.get::<_, i64>(2), ROWS * (ROWS + 1) / 2 - deleted_sum);
}
