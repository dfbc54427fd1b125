//! Data and catalog survive restarts, and a kill -9 loses no committed row and duplicates none.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use tributary_testkit::{TestServer, require_program};
use tributary_wire::PasswordMethod;

/// A server process, killed (-9) when dropped, so that a failing test leaves none behind.
pub struct ServerProcess(pub Child);

impl std::ops::Deref for ServerProcess {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `tributary` binary and returns it with the port it listens on.
pub fn spawn_server(data: &str, envs: &[(&str, String)]) -> (ServerProcess, u16) {
    spawn_server_logging_to(data, envs, Stdio::inherit())
}

/// As [`spawn_server`], with the server's log going to `log`.
pub fn spawn_server_logging_to(
    data: &str,
    envs: &[(&str, String)],
    log: impl Into<Stdio>,
) -> (ServerProcess, u16) {
    spawn_server_command(
        Command::new(env!("CARGO_BIN_EXE_tributary")),
        data,
        envs,
        log,
    )
}

/// As [`spawn_server`], at the lowest scheduling priority: for a test whose load would
/// otherwise starve the other tests' servers (their background threads run at nice 10).
pub fn spawn_low_priority_server(data: &str, envs: &[(&str, String)]) -> (ServerProcess, u16) {
    let mut nice = Command::new("nice");
    nice.args(["-n", "19", env!("CARGO_BIN_EXE_tributary")]);
    spawn_server_command(nice, data, envs, Stdio::inherit())
}

fn spawn_server_command(
    mut command: Command,
    data: &str,
    envs: &[(&str, String)],
    log: impl Into<Stdio>,
) -> (ServerProcess, u16) {
    let mut child = command
        .args([
            "serve",
            "--data",
            data,
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start tributary");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let address = line
        .trim()
        .strip_prefix("tributary listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    let port = address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    (ServerProcess(child), port)
}

pub async fn connect(port: u16) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=admin dbname=dev"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_and_data_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap();
    let server = TestServer::start_at(location, None, PasswordMethod::ScramSha256).await;
    let namespace = server.engine.catalog_snapshot().namespace;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE SCHEMA kept;
             CREATE TABLE kept.items (id BIGINT IDENTITY(1,1), name VARCHAR(10) NOT NULL, added TIMESTAMP DEFAULT getdate());
             INSERT INTO kept.items (name) VALUES ('a'), ('b');
             CREATE VIEW kept.names AS SELECT name FROM kept.items;
             CREATE DATABASE other;",
        )
        .await
        .unwrap();
    drop(client);
    server.stop().await;

    let server = TestServer::start_at(location, None, PasswordMethod::ScramSha256).await;
    assert_eq!(
        server.engine.catalog_snapshot().namespace,
        namespace,
        "the namespace GUID is stable"
    );
    let client = server.client().await;
    let rows = client
        .query("SELECT id, name FROM kept.items ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, "a".to_string()), (2, "b".to_string())]);
    // The identity sequence continues where it stopped.
    client
        .batch_execute("INSERT INTO kept.items (name) VALUES ('c')")
        .await
        .unwrap();
    let id: i64 = client
        .query_one("SELECT id FROM kept.items WHERE name = 'c'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 3);
    let names = client
        .query("SELECT name FROM kept.names ORDER BY name", &[])
        .await
        .unwrap();
    assert_eq!(names.len(), 3);
    let databases = client
        .query(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname = 'other'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(databases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_insert_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap().to_string();
    let (mut child, port) = spawn_server(&location, &[]);
    let client = connect(port).await;
    client
        .batch_execute("CREATE TABLE events (batch INT, n INT)")
        .await
        .unwrap();
    const ROWS_PER_BATCH: i64 = 5;
    let writer = tokio::spawn(async move {
        let mut acknowledged = 0i64;
        for batch in 0.. {
            let values: Vec<String> = (0..ROWS_PER_BATCH)
                .map(|n| format!("({batch}, {n})"))
                .collect();
            match client
                .batch_execute(&format!("INSERT INTO events VALUES {}", values.join(", ")))
                .await
            {
                Ok(()) => acknowledged += 1,
                Err(_) => break,
            }
        }
        acknowledged
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged > 0,
        "no insert was acknowledged before the kill"
    );

    let (mut child, port) = spawn_server(&location, &[]);
    let client = connect(port).await;
    let row = client
        .query_one("SELECT count(*), count(DISTINCT batch) FROM events", &[])
        .await
        .unwrap();
    let (rows, batches): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        rows,
        batches * ROWS_PER_BATCH,
        "a batch was torn or duplicated"
    );
    // The insert in flight at the kill may or may not have committed; nothing else may differ.
    assert!(
        batches == acknowledged || batches == acknowledged + 1,
        "acknowledged {acknowledged}, found {batches}"
    );
    // And the table still takes writes.
    client
        .batch_execute("INSERT INTO events VALUES (-1, 0)")
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = spawn_server(dir.path().to_str().unwrap(), &[]);
    let client = connect(port).await;
    client
        .batch_execute("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let kill = require_program("kill", "install procps");
    let status = Command::new(kill)
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop within 10 s of SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_multi_table_commits_keeps_each_transaction_whole() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().to_str().unwrap().to_string();
    let (mut child, mut port) = spawn_server(&location, &[]);
    let client = connect(port).await;
    client
        .batch_execute(
            "CREATE TABLE balance (id INT, amount BIGINT);
             CREATE TABLE transfers (n BIGINT, amount BIGINT);
             CREATE TABLE queue (n BIGINT);
             INSERT INTO balance VALUES (1, 1000000);
             INSERT INTO queue SELECT value FROM generate_series(1, 100000)",
        )
        .await
        .unwrap();
    drop(client);
    let mut acknowledged = 0i64;
    // Kill at different moments, so that some kills land inside a COMMIT.
    for (round, delay_ms) in [350u64, 800, 1250].into_iter().enumerate() {
        let client = connect(port).await;
        let start = acknowledged;
        let writer = tokio::spawn(async move {
            let mut acknowledged = start;
            loop {
                let n = acknowledged + 1;
                let sql = format!(
                    "BEGIN;
                     UPDATE balance SET amount = amount - {n} WHERE id = 1;
                     INSERT INTO transfers VALUES ({n}, {n});
                     DELETE FROM queue WHERE n = {n};
                     COMMIT"
                );
                match client.batch_execute(&sql).await {
                    Ok(()) => acknowledged = n,
                    Err(_) => break,
                }
            }
            acknowledged
        });
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        child.kill().expect("kill -9");
        child.wait().unwrap();
        acknowledged = writer.await.unwrap();

        let (restarted, restarted_port) = spawn_server(&location, &[]);
        (child, port) = (restarted, restarted_port);
        let client = connect(port).await;
        let row = client
            .query_one(
                "SELECT (SELECT amount FROM balance WHERE id = 1), count(*), count(DISTINCT n), coalesce(sum(amount), 0), coalesce(max(n), 0), (SELECT count(*) FROM queue) AS queued, (SELECT min(n) FROM queue) AS next FROM transfers",
                &[],
            )
            .await
            .unwrap();
        let (balance, rows, distinct, moved, last): (i64, i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let (queued, next): (i64, i64) = (row.get(5), row.get(6));
        assert_eq!(
            (queued, next),
            (100_000 - last, last + 1),
            "round {round}: the queue was torn from the transfers"
        );
        assert_eq!(
            balance + moved,
            1_000_000,
            "round {round}: a transaction was torn between the two tables"
        );
        assert_eq!(rows, distinct, "round {round}: a transfer was duplicated");
        assert_eq!(rows, last, "round {round}: a transfer is missing");
        // The transaction in flight at the kill may or may not have committed.
        assert!(
            last == acknowledged || last == acknowledged + 1,
            "round {round}: acknowledged {acknowledged}, found {last}"
        );
        acknowledged = last;
    }
    assert!(acknowledged > 0, "no transaction committed");
    // The changes were deletion vector commits: the rows are marked, the files kept.
    let client = connect(port).await;
    let row = client
        .query_one(
            "SELECT tbl_rows, estimated_visible_rows FROM svv_table_info WHERE \"table\" = 'queue'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (100_000, 100_000 - acknowledged)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
