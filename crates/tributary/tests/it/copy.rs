//! COPY FROM STDIN over the wire (a driver and psql's `\copy`), and COPY / UNLOAD against
//! S3-compatible storage.

use std::process::Command;

use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tributary_testkit::{Moto, TestServer, require_program};

use crate::durability::{connect, spawn_server};
use crate::s3::aws_env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_loads_text_and_csv() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE readings (sensor INT, value DOUBLE PRECISION, note VARCHAR(8))",
        )
        .await
        .unwrap();

    // Postgres's text format: tab-separated, \N for NULL.
    let sink = client.copy_in("COPY readings FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\t0.5\tok\n2\t1.5\t\\N\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);

    // CSV with a header, in two CopyData messages that split a line.
    let sink = client
        .copy_in("COPY readings (sensor, value) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"sensor,value\n3,2."))
        .await
        .unwrap();
    sink.send(bytes::Bytes::from_static(b"5\n4,3.5\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);

    // A bad row fails the whole COPY with its line, and the session goes on.
    let sink = client.copy_in("COPY readings FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"5\t1\tfine\n6\tnot-a-number\tbad\n",
    ))
    .await
    .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_TEXT_REPRESENTATION),
        "{err}"
    );
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("line 2 of STDIN"), "{message}");

    let row = client
        .query_one(
            "SELECT count(*), sum(value), count(note) FROM readings",
            &[],
        )
        .await
        .unwrap();
    let (rows, sum, notes): (i64, f64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, sum, notes), (4, 8.0, 1));

    // The failed load is in stl_load_errors; another user sees only its own loads there.
    let errors = "SELECT count(*) FROM stl_load_errors WHERE tbl = 'readings'";
    let loaded: i64 = client.query_one(errors, &[]).await.unwrap().get(0);
    assert_eq!(loaded, 1);
    client
        .batch_execute("CREATE USER loader PASSWORD 'Loader123'")
        .await
        .unwrap();
    let other = crate::access::login(&server, "loader", "Loader123").await;
    let seen: i64 = other.query_one(errors, &[]).await.unwrap().get(0);
    assert_eq!(seen, 0);

    // psql's \copy sends the file as COPY FROM STDIN.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("more.csv");
    std::fs::write(&file, "7,7.0,psql\n8,8.0,psql\n").unwrap();
    let psql = require_program("psql", "run: apt-get install postgresql-client");
    let output = Command::new(psql)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-U",
            "admin",
            "-d",
            "dev",
            "-X",
            "-c",
            &format!("\\copy readings from '{}' csv", file.display()),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("COPY 2"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let psql_rows: i64 = client
        .query_one("SELECT count(*) FROM readings WHERE note = 'psql'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(psql_rows, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_to_s3_and_copy_back() {
    let moto = Moto::start();
    moto.create_bucket("lake");
    let envs = aws_env(&moto);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = spawn_server(dir.path().to_str().unwrap(), &envs);
    let client = connect(port).await;
    client
        .batch_execute(
            "CREATE TABLE sales (id INT, region VARCHAR(8), amount DECIMAL(8,2));
             INSERT INTO sales VALUES (1, 'north', 10.50), (2, 'south', 20.25), (3, 'north', 5.00);
             UNLOAD ('SELECT * FROM sales') TO 's3://lake/exports/sales_' IAM_ROLE default FORMAT AS PARQUET;
             UNLOAD ('SELECT * FROM sales WHERE region = ''north''') TO 's3://lake/csv/north_' IAM_ROLE default CSV GZIP;
             CREATE TABLE sales_copy (LIKE sales);
             COPY sales_copy FROM 's3://lake/exports/sales_' IAM_ROLE 'arn:aws:iam::0:role/x' FORMAT AS PARQUET;
             COPY sales_copy FROM 's3://lake/csv/north_' IAM_ROLE default CSV GZIP;",
        )
        .await
        .unwrap();
    let row = client
        .query_one("SELECT count(*), sum(amount)::varchar FROM sales_copy", &[])
        .await
        .unwrap();
    let (rows, total): (i64, String) = (row.get(0), row.get(1));
    assert_eq!((rows, total.as_str()), (5, "51.25"));
    child.kill().unwrap();
    child.wait().unwrap();
}
