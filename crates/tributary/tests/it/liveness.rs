//! Liveness: one client's CPU-heavy statement stalls no other client, a client that hangs up
//! or sends a cancel request has its statement stopped (and its writes undone), and SIGTERM
//! stops a busy server within seconds.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tributary_testkit::require_program;

use crate::durability::{ServerProcess, connect, spawn_server};

/// A statement that keeps the cores busy for far longer than any test waits (400 million
/// joined rows: about a minute in a debug build), in polls of many seconds: DataFusion's
/// nested-loop join pairs one 8,192-row batch with all 20,000 rows of the other side before
/// it yields. The tests end it, never wait for it.
const LONG_POLLS: &str = "SELECT count(*) FROM generate_series(1, 20000) a(x) \
                          CROSS JOIN generate_series(1, 20000) b(y) WHERE (x * y) % 7 = 3";

/// As heavy, but yielding about every second (8,192 rows against 1,000): what a cancel can
/// interrupt.
const SHORT_POLLS: &str = "SELECT count(*) FROM generate_series(1, 1000) a(x) \
                           CROSS JOIN generate_series(1, 100000000) b(y) WHERE (x * y) % 7 = 3";

/// A connection whose socket the test can close, as a client that gives up does.
struct Droppable {
    client: Client,
    connection: JoinHandle<()>,
}

async fn connect_droppable(port: u16) -> Droppable {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=admin dbname=dev"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    Droppable { client, connection }
}

/// Runs `first` and then starts `heavy` on a connection of its own; returns once the server
/// is busy with it.
async fn start_heavy(
    port: u16,
    server: &ServerProcess,
    first: &str,
    heavy: &str,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let heavy = heavy.to_string();
    let connection = connect_droppable(port).await;
    connection.client.batch_execute(first).await.unwrap();
    let client = connection.client;
    let running = tokio::spawn(async move {
        let _ = client.simple_query(&heavy).await;
    });
    wait_until_busy(server).await;
    (connection.connection, running)
}

/// Waits until the server uses most of a core.
async fn wait_until_busy(server: &ServerProcess) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while cpu_cores_used(server, Duration::from_millis(500)).await < 0.8 {
        assert!(
            Instant::now() < deadline,
            "the heavy statement never got busy"
        );
    }
}

/// Waits until the server is idle: a stopped statement stops at its next yield (within a
/// poll of the join: about a second).
async fn wait_until_idle(server: &ServerProcess, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let used = cpu_cores_used(server, Duration::from_secs(1)).await;
        if used < 0.2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server still uses {used:.2} cores 10 s after {why}"
        );
    }
}

/// How many cores the server process used over `window` (from /proc).
async fn cpu_cores_used(server: &ServerProcess, window: Duration) -> f64 {
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.id())).unwrap();
        // The fields after the command name, which is in parentheses: utime and stime are the
        // 12th and 13th of them.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let before = ticks();
    tokio::time::sleep(window).await;
    (ticks() - before) as f64 / ticks_per_second / window.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_statement_stalls_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = spawn_server(dir.path().to_str().unwrap(), &[]);
    let before = connect(port).await;
    let _heavy = start_heavy(port, &server, "SELECT 1", LONG_POLLS).await;

    // New clients connect, authenticate and run statements while it runs.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let client = tokio::time::timeout(Duration::from_secs(30), connect(port))
            .await
            .expect("a new connection was accepted");
        let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        slowest = slowest.max(started.elapsed());
    }
    println!("the slowest connection and SELECT 1 beside a heavy statement: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a connection and SELECT 1 took {slowest:?} beside a heavy statement"
    );
    // So do sessions that were open before it.
    let started = Instant::now();
    before
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_has_its_statement_cancelled_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = spawn_server(dir.path().to_str().unwrap(), &[]);
    let other = connect(port).await;
    other
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // A query computes while its rows are sent; an INSERT ... SELECT computes before its
    // statement completes. Both are cancelled.
    let insert_select = format!("INSERT INTO t SELECT ({SHORT_POLLS})::int");
    for (round, heavy) in [SHORT_POLLS, &insert_select].into_iter().enumerate() {
        // The client holds a write lock on t in an open transaction while its statement runs.
        let (connection, running) =
            start_heavy(port, &server, "BEGIN; INSERT INTO t VALUES (100)", heavy).await;
        // Then it gives up: its socket closes without a word.
        connection.abort();
        running.abort();
        // Its statement stops, and its transaction rolls back, releasing the lock.
        tokio::time::timeout(
            Duration::from_secs(10),
            other.batch_execute("INSERT INTO t VALUES (2)"),
        )
        .await
        .expect("the hung-up client's lock was released")
        .unwrap();
        let sum: i64 = other
            .query_one("SELECT sum(a) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            sum,
            3 + 2 * round as i64,
            "the hung-up client's insert was rolled back"
        );
        // And the computation stops.
        wait_until_idle(&server, &format!("the client hung up ({heavy})")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_the_statement_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = spawn_server(dir.path().to_str().unwrap(), &[]);
    let other = connect(port).await;
    other
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let client = Arc::new(connect(port).await);
    // A query in a block (cancelled while its rows are computed), then an autocommit
    // INSERT ... SELECT (cancelled while it executes).
    let cases = [
        (SHORT_POLLS.to_string(), true),
        (format!("INSERT INTO t SELECT ({SHORT_POLLS})::int"), false),
    ];
    for (round, (statement, in_block)) in cases.into_iter().enumerate() {
        if in_block {
            client
                .batch_execute("BEGIN; INSERT INTO t VALUES (100)")
                .await
                .unwrap();
        }
        let running = {
            let client = client.clone();
            tokio::spawn(async move { client.simple_query(&statement).await })
        };
        wait_until_busy(&server).await;
        // What psql's Ctrl-C sends: a cancel request on a connection of its own.
        client
            .cancel_token()
            .cancel_query(tokio_postgres::NoTls)
            .await
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the cancelled statement ended")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
        if in_block {
            // As after an error, the block fails until ROLLBACK.
            let err = client.simple_query("SELECT 1").await.unwrap_err();
            assert_eq!(
                err.code(),
                Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
                "{err}"
            );
            client.batch_execute("ROLLBACK").await.unwrap();
        }
        // The session goes on, the statement's writes are undone and its lock released.
        client.simple_query("SELECT 1").await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            other.batch_execute("INSERT INTO t VALUES (2)"),
        )
        .await
        .expect("the cancelled statement's lock was released")
        .unwrap();
        let sum: i64 = other
            .query_one("SELECT sum(a) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sum, 3 + 2 * round as i64);
        wait_until_idle(&server, "the cancel").await;
    }
    // A cancel request for a connection that runs nothing does nothing.
    client
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    // (The request is sent when cancel_query returns; one that arrived while the next
    // statement runs would cancel that one, in Postgres too.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.simple_query("SELECT 1").await.unwrap();
}

/// A cancel request that comes while the client is still sending a COPY's data stops the
/// load at once: the COPY ends with 57014 when the client finishes, nothing of it stays,
/// and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_a_copy_from_stdin() {
    use futures::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = spawn_server(dir.path().to_str().unwrap(), &[]);
    let client = connect(port).await;
    client
        .batch_execute("CREATE TABLE t (a INT, note VARCHAR(64)); INSERT INTO t VALUES (1, 'kept')")
        .await
        .unwrap();
    let block: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("{i}\ta note of some length {i:020}\n").into_bytes())
        .collect();
    let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    // A few of the server's 1 MiB blocks, so that the load is running.
    for _ in 0..4 {
        sink.send(bytes::Bytes::from(block.clone())).await.unwrap();
    }
    client
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The client goes on sending, as a driver does until it is told; the rest is dropped.
    let mut sent = Ok(());
    for _ in 0..4 {
        sent = sink.send(bytes::Bytes::from(block.clone())).await;
        if sent.is_err() {
            break;
        }
    }
    let err = match sent {
        Err(err) => err,
        Ok(()) => tokio::time::timeout(Duration::from_secs(30), sink.finish())
            .await
            .expect("the cancelled COPY ended")
            .unwrap_err(),
    };
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "nothing of the cancelled COPY stays");
    // The next COPY loads.
    let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"2\tnext\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
}

/// A cancel request that comes after the server has answered a COPY and before any of its
/// data has arrived stops it too: the statement runs from the moment it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_before_a_copys_first_data_stops_it() {
    use futures::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = spawn_server(dir.path().to_str().unwrap(), &[]);
    let client = connect(port).await;
    client
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // copy_in returns once the server has answered with CopyInResponse.
    let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    client
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = match sink.send(bytes::Bytes::from_static(b"2\n3\n")).await {
        Err(err) => err,
        Ok(()) => tokio::time::timeout(Duration::from_secs(30), sink.finish())
            .await
            .expect("the cancelled COPY ended")
            .unwrap_err(),
    };
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "nothing of the cancelled COPY stays");
    // A cancel request for the COPY does not reach the next statement.
    let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"4\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_busy_server_within_seconds_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (mut server, port) = spawn_server(data, &[]);
    let client = connect(port).await;
    client
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let open = connect(port).await;
    open.batch_execute("BEGIN; INSERT INTO t VALUES (100)")
        .await
        .unwrap();
    let _heavy = start_heavy(port, &server, "SELECT 1", LONG_POLLS).await;

    let kill = require_program("kill", "install procps");
    let signalled = Instant::now();
    let status = Command::new(kill)
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = server.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "the server did not stop within 5 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");

    // The open transaction was rolled back; the committed row is there.
    let (_server, port) = spawn_server(data, &[]);
    let client = connect(port).await;
    let sum: i64 = client
        .query_one("SELECT sum(a) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 1);
}
