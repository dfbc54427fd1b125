//! Readers and a writer at once: every reader sees a consistent, growing table.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tributary_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_readers_while_one_session_inserts() {
    let server = Arc::new(TestServer::start().await);
    let setup = server.client().await;
    setup
        .batch_execute("CREATE TABLE counter (batch INT, n INT)")
        .await
        .unwrap();
    const BATCHES: i32 = 15;
    const ROWS_PER_BATCH: i32 = 10;
    let done = Arc::new(AtomicBool::new(false));

    let mut readers = Vec::new();
    for _ in 0..20 {
        let server = server.clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let client = server.client().await;
            let mut last = 0i64;
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) || reads == 0 {
                let row = client
                    .query_one(
                        "SELECT count(*), count(DISTINCT batch), coalesce(sum(n), 0) FROM counter",
                        &[],
                    )
                    .await
                    .unwrap();
                let (rows, batches, sum): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                // Each INSERT commits whole: rows come in complete batches, never half of one.
                assert_eq!(
                    rows,
                    batches * ROWS_PER_BATCH as i64,
                    "a reader saw a partial insert"
                );
                assert_eq!(sum, batches * (0..ROWS_PER_BATCH as i64).sum::<i64>());
                assert!(
                    rows >= last,
                    "a reader went back in time: {rows} after {last}"
                );
                last = rows;
                reads += 1;
            }
            reads
        }));
    }

    let writer = server.client().await;
    for batch in 0..BATCHES {
        let values: Vec<String> = (0..ROWS_PER_BATCH)
            .map(|n| format!("({batch}, {n})"))
            .collect();
        writer
            .batch_execute(&format!("INSERT INTO counter VALUES {}", values.join(", ")))
            .await
            .unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    let total: i64 = writer
        .query_one("SELECT count(*) FROM counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, (BATCHES * ROWS_PER_BATCH) as i64);
}
