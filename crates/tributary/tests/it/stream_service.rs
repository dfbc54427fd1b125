//! The embedded stream service of `tributary serve`: boto3 writes and reads it with Kinesis'
//! operations, limits and errors; external schemas read it when no Kinesis endpoint is
//! configured; records and view positions survive a kill -9 and a restart.

use std::process::Command;

use tributary_testkit::{free_port, python, repo_root};

use crate::durability::{connect, spawn_server};

fn boto3_check(port: u16, phase: &str) {
    let python = python(&["boto3"]);
    let script = repo_root().join("tests/clients/stream_service_check.py");
    let output = Command::new(python)
        .arg(&script)
        .arg(port.to_string())
        .arg(phase)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "stream_service_check.py {phase} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_stream_service_serves_kinesis_clients_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_string();
    let stream_port = free_port();
    let envs = [(
        "TRIBUTARY_STREAM_LISTEN",
        format!("127.0.0.1:{stream_port}"),
    )];
    let (mut child, port) = spawn_server(&data, &envs);
    boto3_check(stream_port, "write");

    // No Kinesis endpoint is configured: the external schema reads the embedded service,
    // and the client is told so.
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=admin dbname=dev"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    let (notices, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut connection = connection;
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(notice) = message {
                let _ = notices.send(notice.message().to_string());
            }
        }
    });
    client
        .batch_execute("CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default")
        .await
        .unwrap();
    let notice = tokio::time::timeout(std::time::Duration::from_secs(5), received.recv())
        .await
        .expect("a notice")
        .expect("a notice");
    assert!(
        notice.contains("embedded stream service") && notice.contains(&stream_port.to_string()),
        "{notice}"
    );
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW orders_mv AS
               SELECT shard_id, CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'order') AS int) AS order_id
               FROM kds.orders;
             REFRESH MATERIALIZED VIEW orders_mv;",
        )
        .await
        .unwrap();
    let count = |client: tokio_postgres::Client| async move {
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT order_id), count(DISTINCT shard_id) FROM orders_mv",
                &[],
            )
            .await
            .unwrap();
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        )
    };
    assert_eq!(count(client).await, (1002, 1002, 3));

    // kill -9, then a restart on the same data: the records, the stream and the view's
    // positions are all still there.
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, port) = spawn_server(&data, &envs);
    boto3_check(stream_port, "read");
    let client = connect(port).await;
    client
        .batch_execute("REFRESH MATERIALIZED VIEW orders_mv")
        .await
        .unwrap();
    assert_eq!(count(client).await, (1012, 1012, 3));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `tributary demo` runs on the embedded default: the generator's changes reach the streaming
/// view and the mirror table, and freshness is printed; it stops by itself after --seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fills_a_view_and_a_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["demo", "--data"])
        .arg(dir.path().join("demo"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--stream-listen",
            "127.0.0.1:0",
            "--rate",
            "200",
            "--seconds",
            "5",
        ])
        .output()
        .expect("run tributary demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("psql -h 127.0.0.1 -p "), "{stdout}");
    let last = stdout
        .lines()
        .rfind(|l| l.contains("records/s"))
        .unwrap_or_else(|| panic!("no progress line:\n{stdout}"));
    let number_before = |word: &str| -> i64 {
        let head = &last[..last
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {last}"))];
        head.split_whitespace()
            .next_back()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count before {word} in {last}"))
    };
    assert!(
        last.contains("freshness p50 ") && last.contains(" ms"),
        "{last}"
    );
    let view_rows = number_before("rows  cart (mirror)");
    let mirror_rows = number_before_end(last);
    assert!(view_rows > 0, "{last}");
    assert!(mirror_rows > 0, "{last}");
}

/// The number before the last word of a line ("... cart (mirror) 95 rows" -> 95).
fn number_before_end(line: &str) -> i64 {
    let mut words = line.split_whitespace().rev();
    words.next();
    words
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count at the end of {line}"))
}
