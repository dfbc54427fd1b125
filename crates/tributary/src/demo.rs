//! `tributary demo`: the whole product on the embedded default. A generator writes the seed-000
//! cart CDC stream (Etleap's rows with an operation column) into the embedded stream service;
//! a streaming view (the seed's `cart_staging`) and a mirror table (`cart`) fill with AUTO
//! REFRESH; every second the demo prints the rate, the freshness of the view and the row
//! counts. The server accepts clients meanwhile; Ctrl-C stops everything.

use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::Array as _;
use futures::TryStreamExt;
use tributary_ingest::StreamService;
use tributary_sql::{Output, Session};

use crate::Started;

const STREAM: &str = "cart";

const SETUP: &str = r#"
CREATE EXTERNAL SCHEMA IF NOT EXISTS etleap_stream FROM KINESIS IAM_ROLE 'arn:aws:iam::0123456789:role/etleap';
CREATE MATERIALIZED VIEW IF NOT EXISTS cart_staging AUTO REFRESH YES AS
SELECT
	CAST(PartitionKey as bigint) AS etleap_sequence_no,
	CAST(JSON_EXTRACT_PATH_TEXT(from_varbyte(Data, 'utf-8'), 'id') as bigint) AS id,
	JSON_PARSE(FROM_VARBYTE(Data, 'utf-8')) AS Data
FROM etleap_stream."cart";
CREATE MIRROR TABLE IF NOT EXISTS cart (
  id BIGINT, user_id BIGINT, current_price DECIMAL(6,2), no_items INT, checked_out BOOLEAN,
  update_date VARCHAR(64), PRIMARY KEY (id)
) FROM etleap_stream."cart" FORMAT OPERATION COLUMN op ENCODE JSON ORDER BY seq AUTO REFRESH YES;
"#;

/// When each sequence number was put, until the view shows it.
type Pending = Arc<Mutex<VecDeque<(i64, Instant)>>>;

pub(crate) async fn run(
    started: Started,
    rate: u32,
    seconds: Option<u64>,
    password_method: tributary_wire::PasswordMethod,
) -> anyhow::Result<()> {
    let Started {
        engine,
        listener,
        address,
        stream_service,
        http,
        ready: _,
    } = started;
    let Some((service, stream_address)) = stream_service else {
        anyhow::bail!("the demo needs the embedded stream service (drop --no-stream-service)");
    };
    service.create_stream(STREAM, 4)?;
    let mut session = engine.session("admin", "dev")?;
    for statement in session.parse(SETUP)? {
        session.execute(statement).await?;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = {
        let engine = engine.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            tributary_wire::serve(listener, engine, password_method, shutdown).await
        })
    };
    println!("Tributary demo: {rate} cart changes/s into the embedded stream service.");
    println!(
        "  SQL:     psql -h {} -p {} -U admin dev",
        address.ip(),
        address.port()
    );
    println!(
        "  Streams: any AWS SDK or the AWS CLI with --endpoint-url http://{stream_address} (stream \"{STREAM}\")"
    );
    if let Some(http) = http {
        println!(
            "  Console: http://{http}/ (live throughput, freshness and lag; metrics on /metrics)"
        );
    }
    println!(
        "  Try:     SELECT count(*) FROM cart_staging;  SELECT * FROM cart ORDER BY id LIMIT 10;"
    );
    println!("  Ctrl-C stops.");

    let pending: Pending = Arc::default();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let generator = tokio::spawn(generate(
        service,
        rate,
        pending.clone(),
        sent.clone(),
        stopped.clone(),
    ));
    let started_at = Instant::now();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut last_report = Instant::now();
    let mut last_sent = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if seconds.is_some_and(|s| started_at.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        // Freshness: when the view first shows a sequence number, it has been fresh for
        // the time since it was put.
        let visible = scalar(
            &mut session,
            "SELECT coalesce(max(etleap_sequence_no), 0) FROM cart_staging",
        )
        .await?;
        {
            let now = Instant::now();
            let mut pending = pending.lock();
            while pending.front().is_some_and(|(seq, _)| *seq <= visible) {
                if let Some((_, at)) = pending.pop_front() {
                    latencies.push(now - at);
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let total = sent.load(std::sync::atomic::Ordering::Relaxed);
            let per_second = (total - last_sent) as f64 / last_report.elapsed().as_secs_f64();
            last_sent = total;
            last_report = Instant::now();
            let view_rows = scalar(&mut session, "SELECT count(*) FROM cart_staging").await?;
            let mirror_rows = scalar(&mut session, "SELECT count(*) FROM cart").await?;
            latencies.sort();
            let percentile = |p: f64| -> String {
                match latencies.len() {
                    0 => "-".into(),
                    n => format!(
                        "{} ms",
                        latencies[((n as f64 * p) as usize).min(n - 1)].as_millis()
                    ),
                }
            };
            println!(
                "{:>4} s  {per_second:>7.0} records/s  freshness p50 {:>7}  p99 {:>7}  cart_staging {view_rows} rows  cart (mirror) {mirror_rows} rows",
                started_at.elapsed().as_secs(),
                percentile(0.5),
                percentile(0.99),
            );
            latencies.clear();
        }
    }
    let _ = stop.send(true);
    generator.await??;
    server.await??;
    println!("demo stopped; the data stays in the data directory");
    Ok(())
}

/// The first column of the first row of `sql`, as an integer.
async fn scalar(session: &mut Session, sql: &str) -> anyhow::Result<i64> {
    let statement = session.parse(sql)?.pop().context("an empty statement")?;
    let Output::Rows { stream, .. } = session.execute(statement).await? else {
        anyhow::bail!("{sql} returned no rows");
    };
    let batches: Vec<arrow::record_batch::RecordBatch> = stream.try_collect().await?;
    let value = batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .map(|b| arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64))
        .transpose()?
        .and_then(|c| {
            c.as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| if a.is_null(0) { 0 } else { a.value(0) })
        })
        .unwrap_or(0);
    Ok(value)
}

/// Writes cart changes at `rate` per second, every 100 ms, until told to stop: inserts of new
/// carts, updates and deletes of live ones, with the partition key and a `seq` field carrying
/// the change's sequence number, as Etleap writes them.
async fn generate(
    service: StreamService,
    rate: u32,
    pending: Pending,
    sent: Arc<std::sync::atomic::AtomicU64>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut live: BTreeMap<i64, ()> = BTreeMap::new();
    let mut seq = chrono::Utc::now().timestamp_micros();
    let mut next_id = 8_320i64;
    let mut random = seq as u64 | 1;
    let mut next = move |bound: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % bound.max(1)
    };
    let per_tick = (rate / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return Ok(()),
            _ = tick.tick() => {}
        }
        let mut records = Vec::with_capacity(per_tick);
        for _ in 0..per_tick {
            seq += 1;
            let (op, id) = if live.len() < 50 || next(10) < 3 {
                next_id += 1;
                live.insert(next_id, ());
                ("I", next_id)
            } else {
                let index = next(live.len() as u64) as usize;
                let id = *live.keys().nth(index).unwrap_or(&next_id);
                if next(5) == 0 {
                    live.remove(&id);
                    ("D", id)
                } else {
                    ("U", id)
                }
            };
            let cents = 100 + next(9_000);
            let record = serde_json::json!({
                "id": id,
                "user_id": 400 + next(50),
                "current_price": format!("{}.{:02}", cents / 100, cents % 100),
                "no_items": next(10),
                "checked_out": next(2),
                "update_date": chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
                "op": op,
                "seq": seq,
            });
            records.push((seq.to_string(), record.to_string().into_bytes()));
        }
        service.put(STREAM, &records)?;
        let now = Instant::now();
        pending.lock().extend(
            records
                .iter()
                .map(|(key, _)| (key.parse().unwrap_or(0), now)),
        );
        sent.fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}
