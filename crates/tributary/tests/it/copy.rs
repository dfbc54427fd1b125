//! COPY FROM STDIN over the wire (a driver and psql's `\copy`), and COPY / UNLOAD against
//! S3-compatible storage.

use std::io::Write;
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

/// Sends `data` as a COPY FROM STDIN in pieces the size a driver sends.
async fn copy_in_pieces(
    client: &tokio_postgres::Client,
    statement: &str,
    data: &[u8],
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(statement).await?;
    futures::pin_mut!(sink);
    for piece in data.chunks(64 << 10) {
        sink.send(bytes::Bytes::copy_from_slice(piece)).await?;
    }
    sink.finish().await
}

/// The Delta log versions of the table stored at `location` under `root`.
fn delta_versions(root: &std::path::Path, location: &str) -> usize {
    std::fs::read_dir(root.join(location).join("_delta_log"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count()
}

/// A statement whose rows fill many row groups (INSERT ... SELECT, CREATE TABLE AS, COPY)
/// commits them as one Delta version, so a reader of the Delta log (an external engine)
/// sees all of them or none; one that fails part way adds no version at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_is_one_delta_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(
        dir.path().to_str().unwrap(),
        None,
        tributary_wire::PasswordMethod::ScramSha256,
    )
    .await;
    let client = server.client().await;
    let location = |table| crate::interop::table_location(&client, table);
    // Over the 1M rows of a Parquet row group, and over the old chunk of a write.
    const ROWS: i64 = 2_500_000;
    client
        .batch_execute("CREATE TABLE wide (id BIGINT, note VARCHAR(64))")
        .await
        .unwrap();
    let wide = location("wide").await;
    let before = delta_versions(dir.path(), &wide);
    let inserted = client
        .execute(
            &format!(
                "INSERT INTO wide SELECT value, 'note ' || (value % 977) FROM generate_series(1, {ROWS})"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inserted, ROWS as u64);
    assert_eq!(delta_versions(dir.path(), &wide), before + 1);

    // One that fails after most of its rows commits nothing, not even for a moment.
    let failed = client
        .execute(
            &format!(
                "INSERT INTO wide SELECT value, 'x' || (1 / (value - {ROWS})) FROM generate_series(1, {ROWS})"
            ),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Some(&SqlState::DIVISION_BY_ZERO), "{failed}");
    assert_eq!(delta_versions(dir.path(), &wide), before + 1);

    client
        .batch_execute("CREATE TABLE copied AS SELECT * FROM wide")
        .await
        .unwrap();
    // Its creation and its rows.
    assert_eq!(delta_versions(dir.path(), &location("copied").await), 2);

    let mut csv = Vec::new();
    for id in 1..=ROWS / 2 {
        writeln!(csv, "{id},copied note {id}").unwrap();
    }
    let loaded = copy_in_pieces(&client, "COPY copied FROM STDIN WITH (FORMAT csv)", &csv)
        .await
        .unwrap();
    assert_eq!(loaded, (ROWS / 2) as u64);
    assert_eq!(delta_versions(dir.path(), &location("copied").await), 3);

    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM wide) AS w, (SELECT count(*) FROM copied) AS c, (SELECT sum(id) FROM copied) AS s",
            &[],
        )
        .await
        .unwrap();
    let (wide_rows, copied_rows, sum): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (wide_rows, copied_rows, sum),
        (
            ROWS,
            ROWS + ROWS / 2,
            ROWS * (ROWS + 1) / 2 + (ROWS / 2) * (ROWS / 2 + 1) / 2
        )
    );
}

/// Inputs many of the loader's 8 MiB blocks long load whole: records that cross a block's end
/// (CSV fields holding newlines, JSON values over several lines) are read once, line numbers
/// count from the input's start, and gzip files of several members stream through the
/// decompressor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_streams_inputs_many_blocks_long() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute("CREATE TABLE big (id BIGINT, note VARCHAR(256))")
        .await
        .unwrap();

    // CSV from the client: every 1000th note holds a quoted newline and a doubled quote.
    const CSV_ROWS: i64 = 250_000;
    let mut csv = Vec::new();
    for id in 1..=CSV_ROWS {
        if id % 1000 == 0 {
            writeln!(csv, "{id},\"first line\nsecond \"\"line\"\" {id:060}\"").unwrap();
        } else {
            writeln!(csv, "{id},a plain note {id:060}").unwrap();
        }
    }
    assert!(csv.len() > 2 * (8 << 20), "{} bytes", csv.len());
    let loaded = copy_in_pieces(&client, "COPY big FROM STDIN WITH (FORMAT csv)", &csv)
        .await
        .unwrap();
    assert_eq!(loaded, CSV_ROWS as u64);
    let row = client
        .query_one(
            "SELECT count(*), sum(id), count(CASE WHEN strpos(note, chr(10)) > 0 AND strpos(note, 'second \"line\"') > 0 THEN 1 END) FROM big",
            &[],
        )
        .await
        .unwrap();
    let (rows, sum, multiline): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (rows, sum, multiline),
        (CSV_ROWS, CSV_ROWS * (CSV_ROWS + 1) / 2, CSV_ROWS / 1000)
    );

    // JSON in a gzip file of two members, each object over three lines.
    const JSON_ROWS: i64 = 150_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.json.gz");
    let mut file = std::fs::File::create(&path).unwrap();
    for half in [1..JSON_ROWS / 2 + 1, JSON_ROWS / 2 + 1..JSON_ROWS + 1] {
        let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for id in half {
            let id = id + CSV_ROWS;
            writeln!(
                member,
                "{{\"id\": {id},\n  \"note\": \"json note {id:080}\"\n}}"
            )
            .unwrap();
        }
        file.write_all(&member.finish().unwrap()).unwrap();
    }
    drop(file);
    let loaded = client
        .execute(
            &format!(
                "COPY big FROM 'file://{}' FORMAT JSON 'auto'",
                path.display()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(loaded, JSON_ROWS as u64);
    let row = client
        .query_one(
            "SELECT count(*), min(id), max(id) FROM big WHERE note LIKE 'json note %'",
            &[],
        )
        .await
        .unwrap();
    let (rows, min, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (rows, min, max),
        (JSON_ROWS, CSV_ROWS + 1, CSV_ROWS + JSON_ROWS)
    );

    // A bad row far into the input fails the COPY with its own line number, and nothing of
    // the rows before it stays.
    let mut text = Vec::new();
    for line in 1..=300_000i64 {
        if line == 250_000 {
            writeln!(text, "not-a-number\tbad").unwrap();
        } else {
            writeln!(text, "{line}\ttext note {line:060}").unwrap();
        }
    }
    let err = copy_in_pieces(&client, "COPY big FROM STDIN", &text)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_TEXT_REPRESENTATION),
        "{err}"
    );
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("line 250000 of STDIN"), "{message}");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, CSV_ROWS + JSON_ROWS);

    // The session goes on, and a COPY the client abandons half way leaves nothing.
    let mut sink = Box::pin(client.copy_in("COPY big FROM STDIN").await.unwrap());
    for piece in text[..4 << 20].chunks(64 << 10) {
        sink.send(bytes::Bytes::copy_from_slice(piece))
            .await
            .unwrap();
    }
    // Dropped unfinished, the sink sends CopyFail.
    drop(sink);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, CSV_ROWS + JSON_ROWS);
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
