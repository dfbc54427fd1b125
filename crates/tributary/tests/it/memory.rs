//! Bounded memory (invariant 4): a server under a small `--memory-limit` loads, sorts and
//! aggregates more data than the limit and answers right; a join neither of whose methods fits
//! fails with 53000 and the session goes on; UPDATE, DELETE and ALTER TABLE of more rows than
//! the limit stream them; and peak resident memory stays within stated margins of the
//! server's idle size.

use std::io::Write;

use futures::SinkExt;

use crate::durability::{connect, spawn_low_priority_server};

/// The query memory limit the server runs with.
const LIMIT_MIB: u64 = 128;
/// What a COPY may add to the server's resident memory, whatever its size: its input blocks,
/// a chunk of converted rows (a sixteenth of the limit, at least 8 MiB), the Parquet writer's
/// buffers, and what the allocator keeps of them.
const COPY_GROWTH_MIB: u64 = LIMIT_MIB + 128;
/// What queries may add: the limit holds the operators' reservations; batches in flight
/// between operators, spill writers and the allocator's free lists are not counted in it.
const QUERY_GROWTH_MIB: u64 = 4 * LIMIT_MIB;

/// What UPDATE, DELETE and ALTER TABLE of every row may add, whatever the table's size: the
/// scans' row groups and batches in flight, a row group of new rows (a sixteenth of the
/// limit, at least 8 MiB), the Parquet writer's and the upload's buffers, the changed rows'
/// bitmap, and what the allocator keeps of them. Measured at 240-280 MiB here; statements
/// that collected their changes took 620-700 MiB for these 1M rows, and grew with the rows.
const CHANGE_GROWTH_MIB: u64 = LIMIT_MIB + 256;

/// Rows of the `wide` table [`load_wide`] creates.
const WIDE_ROWS: i64 = 1_000_000;

/// The process's peak resident memory so far, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib >> 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_memory_limit_holds_through_loads_sorts_aggregates_and_joins() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client, at_start) = start_limited(&dir).await;
    load_wide(&client).await;
    let after_copy = peak_rss_mib(server.id());

    const ROWS: i64 = WIDE_ROWS;
    // A sort, an aggregation and a join, each over more than the limit.
    // A table of 1M rows and about 130 MiB as Arrow columns: notes of 100 characters,
    // ordered as the ids.
    client
        .batch_execute("CREATE TABLE keyed AS SELECT id, substr(note, 51) AS note FROM wide")
        .await
        .unwrap();
    let out_of_order: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT id, lag(id) OVER (ORDER BY note DESC) AS before FROM keyed) s WHERE before <> id + 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(out_of_order, 0);
    let row = client
        .query_one(
            "SELECT count(*), sum(c) FROM (SELECT note, count(*) AS c FROM keyed GROUP BY note) g",
            &[],
        )
        .await
        .unwrap();
    let (groups, rows): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((groups, rows), (ROWS, ROWS));
    // A hash join holds its build side whole: over the limit, the query runs again with
    // sort-merge joins, which spill. Here both of its sorts at once do not fit either: the
    // query fails with 53000, and the session goes on.
    let joined = client
        .query_one(
            "SELECT count(*) FROM keyed a JOIN keyed b ON a.note = b.note",
            &[],
        )
        .await;
    match joined {
        Ok(row) => assert_eq!(row.get::<_, i64>(0), ROWS),
        Err(err) => assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::from_code("53000")),
            "{err}"
        ),
    }
    let rows: i64 = client
        .query_one("SELECT count(*) FROM keyed", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, ROWS);

    let peak = peak_rss_mib(server.id());
    eprintln!(
        "peak RSS: {at_start} MiB at start, {after_copy} MiB after the COPY, {peak} MiB at the end"
    );
    assert!(
        after_copy <= at_start + COPY_GROWTH_MIB,
        "the COPY took the peak RSS from {at_start} to {after_copy} MiB"
    );
    assert!(
        peak <= at_start + QUERY_GROWTH_MIB,
        "peak RSS {peak} MiB is more than {QUERY_GROWTH_MIB} MiB over the {at_start} MiB at start (limit {LIMIT_MIB} MiB)"
    );
}

/// A server in `dir` under the memory limit, a client of it, and its peak RSS at start. At
/// the lowest priority: its load would starve the background threads of the servers of tests
/// running beside it.
async fn start_limited(
    dir: &tempfile::TempDir,
) -> (
    crate::durability::ServerProcess,
    tokio_postgres::Client,
    u64,
) {
    let (server, port) = spawn_low_priority_server(
        dir.path().to_str().unwrap(),
        &[("TRIBUTARY_MEMORY_LIMIT", format!("{LIMIT_MIB}MiB"))],
    );
    let client = connect(port).await;
    let at_start = peak_rss_mib(server.id());
    (server, client, at_start)
}

/// Creates `wide (id BIGINT, note VARCHAR(1024))` and loads it by a COPY of more than limit +
/// margin, gzip'd by the client: a few megabytes on the wire, about 160 MB once decompressed.
/// Row `id` has a note of 150 characters, the id with leading zeros.
async fn load_wide(client: &tokio_postgres::Client) {
    client
        .batch_execute("CREATE TABLE wide (id BIGINT, note VARCHAR(1024))")
        .await
        .unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for id in 1..=WIDE_ROWS {
        writeln!(gzip, "{id}\t{id:0150}").unwrap();
    }
    let data = gzip.finish().unwrap();
    let sink = client.copy_in("COPY wide FROM STDIN GZIP").await.unwrap();
    futures::pin_mut!(sink);
    for piece in data.chunks(64 << 10) {
        sink.send(bytes::Bytes::copy_from_slice(piece))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), WIDE_ROWS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_deletes_and_alters_of_every_row_stream_their_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client, at_start) = start_limited(&dir).await;
    load_wide(&client).await;
    let after_copy = peak_rss_mib(server.id());
    let summary = "SELECT count(*), min(id), max(id), min(length(note)), \
                   sum(CASE WHEN note LIKE 'u%' THEN 1 ELSE 0 END) FROM wide";

    let updated = client
        .execute("UPDATE wide SET note = 'u' || note, id = id + 1", &[])
        .await
        .unwrap();
    assert_eq!(updated, WIDE_ROWS as u64);
    let row = client.query_one(summary, &[]).await.unwrap();
    let got: (i64, i64, i64, i32, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(got, (WIDE_ROWS, 2, WIDE_ROWS + 1, 151, WIDE_ROWS));
    let after_update = peak_rss_mib(server.id());

    let deleted = client
        .execute("DELETE FROM wide WHERE id % 2 = 0", &[])
        .await
        .unwrap();
    assert_eq!(deleted, WIDE_ROWS as u64 / 2);
    let after_delete = peak_rss_mib(server.id());

    client
        .batch_execute("ALTER TABLE wide ADD COLUMN extra INT")
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT count(*), CAST(sum(id) AS BIGINT), count(extra), min(length(note)) FROM wide",
            &[],
        )
        .await
        .unwrap();
    let got: (i64, i64, i64, i32) = (row.get(0), row.get(1), row.get(2), row.get(3));
    // The odd ids from 3 to WIDE_ROWS + 1.
    let odd = (WIDE_ROWS + 2) / 2;
    assert_eq!(got, (WIDE_ROWS / 2, odd * odd - 1, 0, 151));

    let peak = peak_rss_mib(server.id());
    eprintln!(
        "peak RSS: {at_start} MiB at start, {after_copy} MiB after the COPY, {after_update} MiB after the UPDATE, {after_delete} MiB after the DELETE, {peak} MiB at the end"
    );
    assert!(
        peak <= at_start + CHANGE_GROWTH_MIB,
        "changing every row took the peak RSS from {at_start} to {peak} MiB (limit {LIMIT_MIB} MiB)"
    );
}
