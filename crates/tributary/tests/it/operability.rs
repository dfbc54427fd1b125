//! Operability: `/metrics` moves with ingestion and queries, `/healthz` and `/readyz` answer,
//! the console's JSON and page work (the page in Debian's headless Chromium), and a flood of
//! bad records leaves a short, readable log.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_testkit::{KinesisFlavor, KinesisServer, repo_root, require_program};

use crate::durability::connect;
use crate::streaming::{count, create_stream, kinesis, put};

/// A `tributary serve` process reading `kinesis_endpoint`, with its log in a file.
struct Server {
    child: Child,
    sql_port: u16,
    http: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(kinesis_endpoint: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["serve", "--data"])
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args([
                "--no-stream-service",
                "--kinesis-endpoint",
                kinesis_endpoint,
            ])
            .args(["--refresh-interval-ms", "100"])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tributary");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = |prefix: &str| -> String {
            let line = lines.next().expect("a line").expect("stdout");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .to_string()
        };
        let sql = next("tributary listening on ");
        let http = next("tributary http on ");
        Self {
            child,
            sql_port: sql.rsplit(':').next().unwrap().parse().unwrap(),
            http: format!("http://{http}"),
            log,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = http_get(&format!("{}{path}", self.http)).await;
        (response.0, response.1, response.2)
    }

    async fn metrics(&self) -> Metrics {
        let (status, content_type, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        Metrics::parse(&body)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET over a TCP socket: status, content type and body.
async fn http_get(url: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut socket = tokio::net::TcpStream::connect(host).await.expect("connect");
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).expect("utf-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Samples of a scrape, by name and labels, and the declared type of each family.
struct Metrics {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        assert!(
            text.trim_end().ends_with("# EOF"),
            "an OpenMetrics exposition"
        );
        for line in text.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').unwrap();
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').unwrap();
                samples.insert(series.to_string(), value.parse().expect("a number"));
            }
        }
        Self { samples, types }
    }

    /// The sum of a metric's samples whose series contains every one of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn series(&self, name: &str) -> Vec<&String> {
        self.samples
            .keys()
            .filter(|s| s.split('{').next() == Some(name))
            .collect()
    }
}

const VIEW: &str = "view=\"events\"";

async fn create_view(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE EXTERNAL SCHEMA k FROM KINESIS IAM_ROLE default;
             CREATE MATERIALIZED VIEW events AUTO REFRESH YES AS
               SELECT approximate_arrival_timestamp, JSON_PARSE(kinesis_data) AS payload FROM k.events;",
        )
        .await
        .unwrap();
}

fn records(range: std::ops::Range<i64>, bad_every: i64) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            let data = if bad_every > 0 && i % bad_every == 0 {
                format!("not json {i}").into_bytes()
            } else {
                format!(r#"{{"i":{i}}}"#).into_bytes()
            };
            (format!("k{i}"), data)
        })
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_console_data_move_with_ingestion() {
    let stream = KinesisServer::start(KinesisFlavor::Embedded);
    let server = Server::start(&stream.endpoint(), &["--memory-limit", "1GiB"]);
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(server.get("/readyz").await.0, 200);
    assert_eq!(server.get("/nothing-here").await.0, 404);
    let kinesis_client = kinesis(&stream.endpoint()).await;
    create_stream(&kinesis_client, "events", 2).await;
    let client = connect(server.sql_port).await;
    create_view(&client).await;

    // 1,000 records, every 100th of them not JSON.
    put(&kinesis_client, "events", records(0..1000, 100)).await;
    wait_for("1,000 records read", Duration::from_secs(60), async || {
        server
            .metrics()
            .await
            .sum("tributary_stream_records_read_total", &[VIEW])
            >= 1000.0
    })
    .await;
    wait_for("990 rows", Duration::from_secs(30), async || {
        count(&client, "SELECT count(*) FROM events").await == 990
    })
    .await;
    let before = server.metrics().await;
    // Names follow Prometheus conventions: counters end in _total, units are suffixes.
    for (family, kind) in &before.types {
        assert!(family.starts_with("tributary_"), "{family}");
        if kind == "counter" {
            assert!(
                !before.series(&format!("{family}_total")).is_empty() || family.ends_with("_info"),
                "counter {family} has _total samples"
            );
        }
    }
    assert_eq!(
        before.types["tributary_stream_freshness_seconds"],
        "histogram"
    );
    assert_eq!(
        before.types["tributary_query_duration_seconds"],
        "histogram"
    );
    assert_eq!(before.types["tributary_stream_lag_seconds"], "gauge");
    // Both shards are counted and have a lag.
    assert_eq!(
        before.series("tributary_stream_records_read_total").len(),
        2
    );
    assert_eq!(before.series("tributary_stream_lag_seconds").len(), 2);
    assert!(before.sum("tributary_stream_read_bytes_total", &[VIEW]) > 8000.0);
    assert_eq!(
        before.sum(
            "tributary_stream_records_skipped_total",
            &[VIEW, "reason=\"transform_failed\""]
        ),
        10.0
    );
    assert_eq!(
        before.sum("tributary_view_rows_written_total", &[VIEW]),
        990.0
    );
    assert!(before.sum("tributary_stream_freshness_seconds_count", &[VIEW]) >= 1000.0);
    assert!(before.sum("tributary_refreshes_total", &[VIEW, "status=\"ok\""]) >= 1.0);
    assert!(before.sum("tributary_refresh_duration_seconds_count", &[VIEW]) >= 1.0);
    assert!(before.sum("tributary_commit_duration_seconds_count", &[]) >= 1.0);
    assert!(before.sum("tributary_sessions", &[]) >= 1.0);
    assert!(before.sum("tributary_memory_resident_bytes", &[]) > 1e6);
    assert_eq!(
        before.sum("tributary_query_memory_limit_bytes", &[]),
        1024.0 * 1024.0 * 1024.0
    );

    // More records and queries move the counters.
    put(&kinesis_client, "events", records(1000..1500, 0)).await;
    wait_for("1,490 rows", Duration::from_secs(30), async || {
        count(&client, "SELECT count(*) FROM events").await == 1490
    })
    .await;
    assert!(
        client
            .simple_query("SELECT no_such_column FROM events")
            .await
            .is_err()
    );
    let after = server.metrics().await;
    assert!(after.sum("tributary_stream_records_read_total", &[VIEW]) >= 1500.0);
    assert_eq!(
        after.sum("tributary_view_rows_written_total", &[VIEW]),
        1490.0
    );
    assert!(
        after.sum("tributary_stream_freshness_seconds_count", &[VIEW])
            >= before.sum("tributary_stream_freshness_seconds_count", &[VIEW]) + 500.0
    );
    let selects = |m: &Metrics, status: &str| {
        m.sum(
            "tributary_queries_total",
            &["command=\"SELECT\"", &format!("status=\"{status}\"")],
        )
    };
    assert!(selects(&after, "ok") > selects(&before, "ok"));
    assert_eq!(selects(&after, "error") - selects(&before, "error"), 1.0);
    assert!(
        after.sum(
            "tributary_query_duration_seconds_count",
            &["command=\"SELECT\""]
        ) > before.sum(
            "tributary_query_duration_seconds_count",
            &["command=\"SELECT\""]
        )
    );

    // The console's data: the view with its counters, the skipped records, the queries.
    let (status, content_type, body) = server.get("/api/status").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let console: serde_json::Value = serde_json::from_str(&body).unwrap();
    let view = &console["views"][0];
    assert_eq!(view["name"], "events");
    assert_eq!(view["kind"], "streaming view");
    assert_eq!(view["state"], "running");
    assert_eq!(view["rows"], 1490);
    assert_eq!(view["skipped"], 10);
    assert_eq!(view["shards"].as_array().unwrap().len(), 2);
    assert!(view["freshness_p50_seconds"].as_f64().is_some());
    assert_eq!(console["sources"][0]["source"], "KINESIS");
    let skipped = console["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 10);
    assert!(skipped.iter().all(|s| s["code"] == "transform_failed"));
    let queries = console["queries"].as_array().unwrap();
    assert!(
        queries
            .iter()
            .any(|q| q["text"] == "SELECT no_such_column FROM events" && q["status"] != "ok"),
        "{queries:?}"
    );
    assert!(!console["refreshes"].as_array().unwrap().is_empty());
    // The page and its files come from the binary.
    let (status, content_type, page) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    assert!(page.contains("chart-throughput") && page.contains("/console.js"));
    assert_eq!(server.get("/console.js").await.0, 200);
    assert_eq!(server.get("/console.css").await.0, 200);

    // The log tells what happened, one line per event.
    let log = server.log();
    assert!(log.contains("stream attached"), "{log}");
    assert!(log.contains("stream records skipped"), "{log}");
}

/// The console's statements, running and finished, each with the query memory of its own
/// operators: a long join shows its hash table's memory while it runs, and the recent
/// queries show the peak of each statement once it has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_each_querys_memory_running_and_finished() {
    const MIB: u64 = 1 << 20;
    const LIMIT: u64 = 512 * MIB;
    // No stream is read: the endpoint is never called.
    let server = Server::start("http://127.0.0.1:9", &["--memory-limit", "512MiB"]);
    let client = connect(server.sql_port).await;
    let other = connect(server.sql_port).await;
    client
        .batch_execute(
            "CREATE TABLE notes AS SELECT i AS id, repeat('n', 40) || i::varchar AS note \
             FROM generate_series(1, 1000000) AS t(i)",
        )
        .await
        .unwrap();
    let status = async || -> serde_json::Value {
        let (code, _, body) = server.get("/api/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let memory = |q: &serde_json::Value, field: &str| q[field].as_u64().unwrap();

    // A join of a billion pairs: its hash table holds the build side while it runs, until
    // the statement is cancelled.
    const JOIN: &str = "SELECT count(*) FROM notes a JOIN notes b ON a.id % 1000 = b.id % 1000";
    let join = {
        let client = connect(server.sql_port).await;
        let cancel = client.cancel_token();
        let task = tokio::spawn(async move { client.query_one(JOIN, &[]).await.map(|_| ()) });
        (cancel, task)
    };
    let mut running = serde_json::Value::Null;
    wait_for(
        "the join's hash table",
        Duration::from_secs(120),
        async || {
            let console = status().await;
            match console["running"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["text"] == JOIN)
            {
                Some(q) if memory(q, "memory_bytes") >= 16 * MIB => {
                    running = q.clone();
                    true
                }
                _ => false,
            }
        },
    )
    .await;
    assert_eq!(running["status"], "running");
    assert_eq!(running["command"], "SELECT");
    let (now, peak) = (
        memory(&running, "memory_bytes"),
        memory(&running, "peak_memory_bytes"),
    );
    assert!(now <= peak && peak <= LIMIT, "{running}");
    // Another session's statements count on their own.
    assert_eq!(
        other
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    join.0.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = join.1.await.unwrap().unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );

    client
        .query_one(
            "SELECT count(*) FROM (SELECT note, count(*) FROM notes GROUP BY note) g",
            &[],
        )
        .await
        .unwrap();
    // The cancelled join leaves the running list as its computation stops.
    let mut console = serde_json::Value::Null;
    wait_for(
        "no statement running",
        Duration::from_secs(30),
        async || {
            console = status().await;
            console["running"].as_array().unwrap().is_empty()
        },
    )
    .await;
    let queries = console["queries"].as_array().unwrap();
    let finished = |text: &str| {
        queries
            .iter()
            .find(|q| q["text"] == text)
            .unwrap_or_else(|| panic!("no {text:?} in {queries:?}"))
            .clone()
    };
    let join = finished(JOIN);
    assert!(
        join["status"].as_str().unwrap().starts_with("cancelled"),
        "{join}"
    );
    assert_eq!(memory(&join, "memory_bytes"), 0);
    assert!(memory(&join, "peak_memory_bytes") >= peak, "{join}");
    let grouped =
        finished("SELECT count(*) FROM (SELECT note, count(*) FROM notes GROUP BY note) g");
    let peak = memory(&grouped, "peak_memory_bytes");
    assert!((16 * MIB..=LIMIT).contains(&peak), "{grouped}");
    // A statement that holds nothing shows nothing, even beside another session's join.
    assert!(memory(&finished("SELECT 1"), "peak_memory_bytes") < MIB);
    // The peaks are a histogram in the metrics too.
    let metrics = server.metrics().await;
    let select = ["command=\"SELECT\""];
    assert!(metrics.sum("tributary_query_peak_memory_bytes_count", &select) >= 4.0);
    assert!(metrics.sum("tributary_query_peak_memory_bytes_sum", &select) >= (16 * MIB) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_records_leaves_a_short_readable_log() {
    const BAD: i64 = 100_000;
    let stream = KinesisServer::start(KinesisFlavor::Embedded);
    let server = Server::start(
        &stream.endpoint(),
        &["--log", "info", "--log-format", "json"],
    );
    let kinesis_client = kinesis(&stream.endpoint()).await;
    create_stream(&kinesis_client, "events", 2).await;
    let client = connect(server.sql_port).await;
    create_view(&client).await;
    // 100,000 records that are not JSON, then one that is.
    put(&kinesis_client, "events", records(0..BAD, 1)).await;
    put(
        &kinesis_client,
        "events",
        vec![("k".into(), br#"{"last":true}"#.to_vec())],
    )
    .await;
    wait_for("every record read", Duration::from_secs(300), async || {
        server
            .metrics()
            .await
            .sum("tributary_stream_records_skipped_total", &[VIEW])
            >= BAD as f64
            && count(&client, "SELECT count(*) FROM events").await == 1
    })
    .await;
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM sys_stream_scan_errors WHERE mv_name = 'events'"
        )
        .await,
        BAD,
        "every bad record is in sys_stream_scan_errors"
    );
    assert_eq!(
        server
            .metrics()
            .await
            .sum("tributary_stream_records_skipped_total", &[VIEW]),
        BAD as f64
    );
    // Give the last summary its time (one line per view per ten seconds).
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(count(&client, "SELECT 1").await, 1);

    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines.len() <= 40 && log.len() <= 16 * 1024,
        "{} lines, {} bytes:\n{log}",
        lines.len(),
        log.len()
    );
    let skips: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"] == "stream records skipped (details in sys_stream_scan_errors)"
        })
        .collect();
    assert!(!skips.is_empty(), "{log}");
    let logged: u64 = skips
        .iter()
        .map(|l| l["fields"]["skipped"].as_u64().expect("a count"))
        .sum();
    assert_eq!(
        logged, BAD as u64,
        "the summaries add up to every skipped record:\n{log}"
    );
    for skip in &skips {
        assert_eq!(skip["level"], "WARN");
        assert_eq!(skip["fields"]["view"], "dev.public.events");
        assert!(
            skip["fields"]["reasons"]
                .as_str()
                .unwrap()
                .starts_with("transform_failed: "),
            "{skip}"
        );
    }
}

/// Where tests keep files for people to look at (the console screenshot): `test-artifacts`
/// in the build's target directory.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/it-*: two levels up is the profile directory's parent's child.
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_charts_render_and_update_in_chromium() {
    let node = require_program("node", "install Node.js");
    let chromium = require_program(
        "chromium",
        "install Debian's chromium package (.ci/run does this)",
    );
    let script = repo_root().join("tests/node/console-check.js");
    assert!(
        repo_root()
            .join("tests/node/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed; run: npm install --prefix tests/node (.ci/run does this)"
    );
    let stream = KinesisServer::start(KinesisFlavor::Embedded);
    let server = Server::start(&stream.endpoint(), &[]);
    let kinesis_client = kinesis(&stream.endpoint()).await;
    create_stream(&kinesis_client, "events", 2).await;
    let client = connect(server.sql_port).await;
    create_view(&client).await;

    // Ingest continuously while the page is open.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let producer = {
        let kinesis_client = kinesis_client.clone();
        tokio::spawn(async move {
            let mut next = 0;
            while !*stopped.borrow() {
                put(&kinesis_client, "events", records(next..next + 200, 50)).await;
                next += 200;
                let _ = tokio::time::timeout(Duration::from_millis(200), stopped.changed()).await;
            }
        })
    };
    let screenshot = artifacts().join("console.png");
    let output = tokio::process::Command::new(node)
        .arg(&script)
        .arg(format!("{}/", server.http))
        .arg(&screenshot)
        .arg("dev.public.events")
        .env("CHROMIUM", chromium)
        .current_dir(repo_root().join("tests/node"))
        .output()
        .await
        .expect("run console-check.js");
    stop.send(true).unwrap();
    producer.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "console check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    assert_eq!(summary["failures"], serde_json::json!([]));
    assert!(
        summary["row"].as_str().unwrap().contains("running"),
        "{summary}"
    );
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("console screenshot: {}", screenshot.display());
}

/// The least allocated memory over `readings` readings 300 ms apart: what the server holds
/// between the transient peaks of background maintenance (compactions, and checkpoints every
/// 10 commits, run on blocking threads whose allocator caches count as allocated until the
/// threads end, 10 s after their last task). The footer cache is left out: it fills with a
/// footer for each file read, up to its own bound of 50 MiB.
async fn allocated_floor(server: &Server, readings: usize) -> f64 {
    let mut floor = f64::MAX;
    for _ in 0..readings {
        let metrics = server.metrics().await;
        let now = metrics.sum("tributary_memory_allocated_bytes", &[])
            - metrics.sum("tributary_footer_cache_bytes", &[]);
        floor = floor.min(now);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    floor
}

/// Sessions that end free what they held. Each session's catalogs and the pg_catalog schema
/// registered in them held each other, so neither was ever freed: some 5.5 MiB a session, so
/// that clients connecting again and again, and every mirror round (which opens a session),
/// grew the server's memory without end (100 sessions here took it from 20 to 570 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_end_hold_no_memory() {
    const SESSIONS: usize = 100;
    /// The floor's wandering; the defect this guards against added 550 MiB.
    const GROWTH: f64 = 32.0 * (1 << 20) as f64;
    let server = Server::start("http://127.0.0.1:9", &[]);
    let session = async || {
        let client = connect(server.sql_port).await;
        let tables: i64 = client
            .query_one("SELECT count(*) FROM pg_catalog.pg_class", &[])
            .await
            .unwrap()
            .get(0);
        assert!(tables > 0);
    };
    for _ in 0..10 {
        session().await;
    }
    let before = allocated_floor(&server, 10).await;
    for _ in 0..SESSIONS {
        session().await;
    }
    let after = allocated_floor(&server, 10).await;
    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    eprintln!(
        "allocated: {:.1} MiB before {SESSIONS} sessions, {:.1} MiB after",
        mib(before),
        mib(after)
    );
    assert!(
        after <= before + GROWTH,
        "{SESSIONS} sessions took the allocated memory from {:.1} to {:.1} MiB",
        mib(before),
        mib(after)
    );
}

/// A table committed to again and again (a streaming view's rounds, a mirror's, single-row
/// INSERTs) holds no more memory with each commit. The table versions a server kept in
/// memory grew with every commit, without end: each write's new version added its commit to
/// the old as one more batch of files, and 256 versions were kept. Here the allocated memory
/// went from 120 to 283 MiB over these 300 commits; now it stays near 20 MiB. Over 1,600
/// commits the allocated floor wandered between 16 and 24 MiB without a trend, and
/// background compaction of the small files briefly adds tens of MiB, so the test compares
/// floors: the least of several readings a second apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_commit_to_one_table_holds_no_more_memory() {
    const WARM: i64 = 100;
    const MEASURED: i64 = 300;
    /// What the measured commits may add: the table's longer file list in the few versions
    /// kept, and the floor's wandering. The defect this guards against added 163 MiB.
    const GROWTH: f64 = 16.0 * (1 << 20) as f64;
    let server = Server::start("http://127.0.0.1:9", &[]);
    let client = connect(server.sql_port).await;
    client
        .batch_execute(
            "CREATE TABLE events (id BIGINT, a INT, b INT, c BIGINT, d VARCHAR(64), \
             e VARCHAR(64), f DOUBLE PRECISION, g DATE, h TIMESTAMP, i BOOLEAN)",
        )
        .await
        .unwrap();
    let insert = client
        .prepare(
            "INSERT INTO events VALUES ($1, 1, 2, 3, 'four', 'five', 6.0, '2026-12-06', \
             '2026-12-06 12:00:00', true)",
        )
        .await
        .unwrap();
    let mut after_warm = 0.0;
    for id in 0..WARM + MEASURED {
        if id == WARM {
            after_warm = allocated_floor(&server, 10).await;
            assert!(after_warm > 1e6, "{after_warm} bytes allocated");
        }
        client.execute(&insert, &[&id]).await.unwrap();
    }
    let after = allocated_floor(&server, 40).await;
    assert!(
        !server
            .metrics()
            .await
            .series("tributary_footer_cache_bytes")
            .is_empty(),
        "the footer cache's gauge"
    );
    let rows: i64 = client
        .query_one("SELECT count(DISTINCT id) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, WARM + MEASURED);
    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    eprintln!(
        "allocated: {:.1} MiB after {WARM} commits, {:.1} MiB after {MEASURED} more",
        mib(after_warm),
        mib(after)
    );
    assert!(
        after <= after_warm + GROWTH,
        "{MEASURED} single-row commits took the allocated memory from {:.1} to {:.1} MiB",
        mib(after_warm),
        mib(after)
    );
}
