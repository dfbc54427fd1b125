//! Transactions seen from several clients at once: uncommitted writes stay private, COMMIT
//! publishes every table together, conflicting writers get 40001, a lock cycle gets 40P01, and
//! a disconnect rolls back.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tributary_testkit::TestServer;

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_writes_are_private_until_commit() {
    let server = TestServer::start().await;
    let writer = server.client().await;
    let reader = server.client().await;
    writer
        .batch_execute(
            "CREATE TABLE orders (id INT, amount INT); CREATE TABLE order_log (id INT);
             INSERT INTO orders VALUES (1, 10)",
        )
        .await
        .unwrap();

    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .batch_execute(
            "INSERT INTO orders VALUES (2, 20); INSERT INTO order_log VALUES (2);
             UPDATE orders SET amount = 11 WHERE id = 1; CREATE TABLE extra (a INT)",
        )
        .await
        .unwrap();
    // The writer sees its own writes; nobody else does.
    assert_eq!(count(&writer, "SELECT sum(amount) FROM orders").await, 31);
    assert_eq!(count(&reader, "SELECT sum(amount) FROM orders").await, 10);
    assert_eq!(count(&reader, "SELECT count(*) FROM order_log").await, 0);
    let err = reader
        .simple_query("SELECT * FROM extra")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));

    writer.batch_execute("COMMIT").await.unwrap();
    assert_eq!(count(&reader, "SELECT sum(amount) FROM orders").await, 31);
    assert_eq!(count(&reader, "SELECT count(*) FROM order_log").await, 1);
    assert_eq!(count(&reader, "SELECT count(*) FROM extra").await, 0);

    // ROLLBACK publishes nothing, across tables.
    writer
        .batch_execute(
            "BEGIN; DELETE FROM orders; INSERT INTO order_log VALUES (3); DROP TABLE extra",
        )
        .await
        .unwrap();
    assert_eq!(count(&writer, "SELECT count(*) FROM orders").await, 0);
    writer.batch_execute("ROLLBACK").await.unwrap();
    for client in [&writer, &reader] {
        assert_eq!(count(client, "SELECT count(*) FROM orders").await, 2);
        assert_eq!(count(client, "SELECT count(*) FROM order_log").await, 1);
        assert_eq!(count(client, "SELECT count(*) FROM extra").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_reads_one_snapshot() {
    let server = TestServer::start().await;
    let setup = server.client().await;
    setup
        .batch_execute(
            "CREATE TABLE a (v INT); CREATE TABLE b (v INT);
             INSERT INTO a VALUES (50); INSERT INTO b VALUES (50)",
        )
        .await
        .unwrap();
    let reader = server.client().await;
    reader.batch_execute("BEGIN").await.unwrap();
    assert_eq!(count(&reader, "SELECT sum(v) FROM a").await, 50);

    // A transfer commits between the reader's two statements.
    setup
        .batch_execute(
            "BEGIN; UPDATE a SET v = v - 20; UPDATE b SET v = v + 20; INSERT INTO a VALUES (1); COMMIT",
        )
        .await
        .unwrap();
    // The reader still sees its snapshot, for both tables.
    assert_eq!(
        count(
            &reader,
            "SELECT (SELECT sum(v) FROM a) * 1000 + (SELECT sum(v) FROM b)"
        )
        .await,
        50_050
    );
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        count(
            &reader,
            "SELECT (SELECT sum(v) FROM a) * 1000 + (SELECT sum(v) FROM b)"
        )
        .await,
        31_070
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_table_conflict() {
    let server = TestServer::start().await;
    let first = server.client().await;
    let second = server.client().await;
    first
        .batch_execute("CREATE TABLE stock (item INT, qty INT); INSERT INTO stock VALUES (1, 10)")
        .await
        .unwrap();

    // Both take their snapshot, then both update the same table.
    first.batch_execute("BEGIN").await.unwrap();
    second.batch_execute("BEGIN").await.unwrap();
    assert_eq!(count(&second, "SELECT sum(qty) FROM stock").await, 10);
    first
        .batch_execute("UPDATE stock SET qty = qty - 1")
        .await
        .unwrap();
    // The second writer waits for the first one's table lock...
    let waiting = tokio::spawn(async move {
        let result = second.batch_execute("UPDATE stock SET qty = qty - 5").await;
        (second, result)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the second writer did not wait");
    first.batch_execute("COMMIT").await.unwrap();
    // ...and fails once the first commits: its snapshot is stale.
    let (second, result) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err}"
    );
    second.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count(&second, "SELECT sum(qty) FROM stock").await, 9);

    // Appends commute: two transactions inserting into one table both commit.
    first.batch_execute("BEGIN").await.unwrap();
    second.batch_execute("BEGIN").await.unwrap();
    assert_eq!(count(&second, "SELECT count(*) FROM stock").await, 1);
    first
        .batch_execute("INSERT INTO stock VALUES (2, 1)")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let result = second
            .batch_execute("INSERT INTO stock VALUES (3, 1); COMMIT")
            .await;
        (second, result)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.batch_execute("COMMIT").await.unwrap();
    let (second, result) = waiting.await.unwrap();
    result.unwrap();
    assert_eq!(count(&second, "SELECT count(*) FROM stock").await, 3);

    // Autocommit writers never conflict: each waits, then works on the latest state.
    let mut writers = Vec::new();
    for _ in 0..4 {
        let client = server.client().await;
        writers.push(tokio::spawn(async move {
            for _ in 0..5 {
                client
                    .batch_execute("UPDATE stock SET qty = qty + 1 WHERE item = 1")
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        count(
            &first,
            "SELECT CAST(qty AS BIGINT) FROM stock WHERE item = 1"
        )
        .await,
        29
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_cycle_is_a_deadlock_and_a_disconnect_rolls_back() {
    let server = TestServer::start().await;
    let first = server.client().await;
    let second = server.client().await;
    first
        .batch_execute("CREATE TABLE t1 (a INT); CREATE TABLE t2 (a INT)")
        .await
        .unwrap();
    first
        .batch_execute("BEGIN; INSERT INTO t1 VALUES (1)")
        .await
        .unwrap();
    second
        .batch_execute("BEGIN; INSERT INTO t2 VALUES (2)")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let result = first.batch_execute("INSERT INTO t2 VALUES (1)").await;
        (first, result)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = second
        .batch_execute("INSERT INTO t1 VALUES (2)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::T_R_DEADLOCK_DETECTED), "{err}");
    // The victim's block is failed; rolling it back lets the other transaction go on.
    second.batch_execute("ROLLBACK").await.unwrap();
    let (first, result) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    result.unwrap();
    first.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        count(
            &second,
            "SELECT (SELECT count(*) FROM t1) * 10 + (SELECT count(*) FROM t2)"
        )
        .await,
        11
    );

    // A client that disconnects inside a transaction leaves nothing behind and no lock held.
    let leaver = server.client().await;
    leaver
        .batch_execute("BEGIN; INSERT INTO t1 VALUES (99); DELETE FROM t2")
        .await
        .unwrap();
    drop(leaver);
    tokio::time::timeout(
        Duration::from_secs(10),
        second.batch_execute("INSERT INTO t2 VALUES (3)"),
    )
    .await
    .expect("the disconnected transaction's lock was released")
    .unwrap();
    assert_eq!(
        count(
            &second,
            "SELECT (SELECT count(*) FROM t1) * 10 + (SELECT count(*) FROM t2)"
        )
        .await,
        12
    );
}
