//! Declarative mirror tables (`CREATE MIRROR TABLE`), end to end from a Kinesis-compatible
//! stream, in each change format: after every refresh the mirror equals a reference model of
//! the source table, row for row, on adversarial change streams (many changes of one key in
//! one batch, delete then re-insert, a key changed across refreshes, out-of-order sequence
//! numbers, gaps, nulls, unicode, replays, bad records). Also: continuous mirroring, writes
//! refused, and kill -9 during mirroring.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tributary_sql::StreamingSettings;
use tributary_testkit::{KinesisFlavor, KinesisServer, TestServer};

use crate::cdc::Lcg;
use crate::durability::{connect, spawn_server};
use crate::streaming::{create_stream, kinesis, put};

/// One row of the source table.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    name: Option<String>,
    price_cents: Option<i64>,
    qty: i64,
    active: bool,
    attrs: Option<Value>,
}

/// One change of the source table; `seq` is its commit order (with gaps).
#[derive(Clone, Debug)]
struct Change {
    seq: u64,
    id: i64,
    op: char,
    before: Option<Row>,
    row: Row,
}

/// `n` changes over a handful of keys, so that one batch holds many changes of one key and
/// keys are deleted and inserted again. Sequence numbers leave gaps.
fn changes(n: usize, seed: u64) -> Vec<Change> {
    changes_over(n, 7, seed)
}

/// `n` changes over `keys` keys.
fn changes_over(n: usize, keys: u64, seed: u64) -> Vec<Change> {
    let mut rng = Lcg(seed);
    let mut live: BTreeMap<i64, Row> = BTreeMap::new();
    let mut out = Vec::new();
    let mut seq = 1000;
    for _ in 0..n {
        seq += 1 + rng.next(3);
        let id = 1 + rng.next(keys) as i64;
        let row = Row {
            name: (rng.next(5) != 0).then(|| {
                format!(
                    "{} {}",
                    ["café", "日本", "Zoë", "plain", "a\"quote"][rng.next(5) as usize],
                    rng.next(100)
                )
            }),
            price_cents: (rng.next(4) != 0).then(|| rng.next(100_000) as i64),
            qty: rng.next(1000) as i64 - 500,
            active: rng.next(2) == 1,
            attrs: (rng.next(3) != 0).then(|| json!({"tags": ["x", "ÿ"], "n": rng.next(9)})),
        };
        let before = live.get(&id).cloned();
        let op = match &before {
            None => 'c',
            Some(_) if rng.next(4) == 0 => 'd',
            Some(_) => 'u',
        };
        if op == 'd' {
            live.remove(&id);
        } else {
            live.insert(id, row.clone());
        }
        out.push(Change {
            seq,
            id,
            op,
            before,
            row,
        });
    }
    out
}

/// The source table after `changes`, as the simple protocol renders `SELECT id, name, price,
/// qty, active, attrs ... ORDER BY id`.
fn model(changes: &[Change]) -> Vec<Vec<Option<String>>> {
    let mut table: BTreeMap<i64, Row> = BTreeMap::new();
    let mut ordered: Vec<&Change> = changes.iter().collect();
    ordered.sort_by_key(|c| c.seq);
    for change in ordered {
        if change.op == 'd' {
            table.remove(&change.id);
        } else {
            table.insert(change.id, change.row.clone());
        }
    }
    table
        .into_iter()
        .map(|(id, row)| {
            vec![
                Some(id.to_string()),
                row.name,
                row.price_cents
                    .map(|c| format!("{}.{:02}", c / 100, c % 100)),
                Some(row.qty.to_string()),
                Some(if row.active { "t" } else { "f" }.to_string()),
                row.attrs.map(|a| a.to_string()),
            ]
        })
        .collect()
}

fn plain(id: i64, row: &Row) -> Value {
    json!({
        "id": id,
        "name": row.name,
        "price": row.price_cents.map(|c| format!("{}.{:02}", c / 100, c % 100)),
        "qty": row.qty,
        "active": row.active,
        "attrs": row.attrs,
    })
}

fn debezium(change: &Change) -> Value {
    let before = change.before.as_ref().map(|r| plain(change.id, r));
    let (op, before, after) = match change.op {
        'd' => ("d", before, None),
        'c' => ("c", None, Some(plain(change.id, &change.row))),
        _ => ("u", before, Some(plain(change.id, &change.row))),
    };
    let payload = json!({
        "before": before,
        "after": after,
        "op": op,
        "source": {"connector": "postgresql", "lsn": change.seq * 8, "txId": change.seq},
        "ts_ms": 1_700_000_000_000u64 + change.seq,
    });
    // Half the records carry the schema envelope, as with schemas.enable=true.
    if change.seq.is_multiple_of(2) {
        json!({"schema": {"type": "struct", "name": "dbserver1.public.items.Envelope"}, "payload": payload})
    } else {
        payload
    }
}

fn dms(change: &Change) -> Value {
    let operation = match change.op {
        'c' => "insert",
        'u' => "update",
        _ => "delete",
    };
    let data = match change.op {
        'd' => json!({"id": change.id}),
        _ => plain(change.id, &change.row),
    };
    json!({
        "data": data,
        "metadata": {
            "timestamp": format!("2024-05-01T10:00:00.{:06}Z", change.seq),
            "record-type": "data",
            "operation": operation,
            "partition-key-type": "schema-table",
            "schema-name": "public",
            "table-name": "items",
        }
    })
}

fn dynamo_attr(value: &Value) -> Value {
    match value {
        Value::Null => json!({"NULL": true}),
        Value::Bool(b) => json!({"BOOL": b}),
        Value::Number(n) => json!({"N": n.to_string()}),
        Value::String(s) => json!({"S": s}),
        Value::Array(items) => json!({"L": items.iter().map(dynamo_attr).collect::<Vec<_>>()}),
        Value::Object(map) => {
            json!({"M": map.iter().map(|(k, v)| (k.clone(), dynamo_attr(v))).collect::<serde_json::Map<_, _>>()})
        }
    }
}

/// A DynamoDB image: attribute names in the source's own case, which the mirror's
/// lower-case columns match.
fn dynamo_image(id: i64, row: &Row) -> Value {
    let mut image = serde_json::Map::new();
    image.insert("Id".into(), json!({"N": id.to_string()}));
    if let Some(name) = &row.name {
        image.insert("Name".into(), json!({"S": name}));
    }
    if let Some(c) = row.price_cents {
        image.insert(
            "Price".into(),
            json!({"N": format!("{}.{:02}", c / 100, c % 100)}),
        );
    }
    image.insert("Qty".into(), json!({"N": row.qty.to_string()}));
    image.insert("Active".into(), json!({"BOOL": row.active}));
    if let Some(attrs) = &row.attrs {
        image.insert("Attrs".into(), dynamo_attr(attrs));
    }
    Value::Object(image)
}

fn dynamodb(change: &Change) -> Value {
    let event = match change.op {
        'c' => "INSERT",
        'u' => "MODIFY",
        _ => "REMOVE",
    };
    let mut record = json!({
        "awsRegion": "us-east-1",
        "eventID": format!("e-{}", change.seq),
        "eventName": event,
        "eventSource": "aws:dynamodb",
        "tableName": "items",
        "dynamodb": {
            "ApproximateCreationDateTime": 1_700_000_000_000u64 + change.seq,
            "Keys": {"Id": {"N": change.id.to_string()}},
            // 21 digits, as DynamoDB streams number changes.
            "SequenceNumber": format!("{:021}", 400_000_000_000_000_000_000u128 + change.seq as u128),
            "SizeBytes": 100,
        }
    });
    let dynamodb = record["dynamodb"].as_object_mut().unwrap();
    if change.op != 'd' {
        dynamodb.insert("NewImage".into(), dynamo_image(change.id, &change.row));
    }
    if let Some(before) = &change.before {
        dynamodb.insert("OldImage".into(), dynamo_image(change.id, before));
    }
    record
}

fn operation_row(change: &Change) -> Value {
    let mut row = plain(change.id, &change.row);
    let op = match change.op {
        'c' => "I",
        'u' => "U",
        _ => "D",
    };
    row["op"] = json!(op);
    row["seq"] = json!(change.seq);
    row
}

/// One format under test: its stream, its clauses, how it writes a change, and whether its
/// ordering survives replays and shuffles (a sequence value does; stream position does not).
struct Format {
    stream: &'static str,
    table: &'static str,
    clauses: &'static str,
    render: fn(&Change) -> Value,
    by_sequence: bool,
}

const FORMATS: [Format; 4] = [
    Format {
        stream: "items-debezium",
        table: "items_debezium",
        clauses: "FORMAT DEBEZIUM ENCODE JSON ORDER BY source.lsn",
        render: debezium,
        by_sequence: true,
    },
    Format {
        stream: "items-dms",
        table: "items_dms",
        clauses: "FORMAT DMS ENCODE JSON ORDER BY STREAM POSITION",
        render: dms,
        by_sequence: false,
    },
    Format {
        stream: "items-dynamodb",
        table: "items_dynamodb",
        clauses: "FORMAT DYNAMODB ORDER BY dynamodb.SequenceNumber",
        render: dynamodb,
        by_sequence: true,
    },
    Format {
        stream: "items-etleap",
        table: "items_etleap",
        clauses: "FORMAT OPERATION COLUMN op ENCODE JSON ORDER BY seq",
        render: operation_row,
        by_sequence: true,
    },
];

const COLUMNS: &str = "id INT, name VARCHAR(40), price DECIMAL(10,2), qty BIGINT, active BOOLEAN, attrs SUPER, PRIMARY KEY (id)";

async fn rows(client: &tokio_postgres::Client, table: &str) -> Vec<Vec<Option<String>>> {
    let sql = format!("SELECT id, name, price, qty, active, attrs FROM {table} ORDER BY id");
    crate::cdc::text_rows(client, &sql).await
}

/// Puts changes as records of one stream: shuffled inside the put when the format orders by
/// a sequence value (the mirror must not care), in order otherwise. Partition key: the id.
async fn put_changes(
    kinesis: &aws_sdk_kinesis::Client,
    format: &Format,
    changes: &[Change],
    rng: &mut Lcg,
) {
    let mut records: Vec<(String, Vec<u8>)> = changes
        .iter()
        .map(|c| {
            (
                c.id.to_string(),
                serde_json::to_vec(&(format.render)(c)).unwrap(),
            )
        })
        .collect();
    if format.by_sequence {
        for i in (1..records.len()).rev() {
            records.swap(i, rng.next(i as u64 + 1) as usize);
        }
    }
    put(kinesis, format.stream, records).await;
}

/// Records that cannot be applied, in each format's terms: not JSON, an unknown operation, a
/// change without its key, a value of the wrong type, a string too long for its column.
fn bad_records(format: &Format) -> Vec<(String, Vec<u8>)> {
    let good = Change {
        seq: 1,
        id: 3,
        op: 'u',
        before: None,
        row: Row {
            name: Some("n".into()),
            price_cents: Some(100),
            qty: 1,
            active: true,
            attrs: None,
        },
    };
    let mut unknown_op = (format.render)(&good);
    let mut no_key = (format.render)(&good);
    let mut bad_type = (format.render)(&good);
    let mut too_long = (format.render)(&good);
    let long = "x".repeat(41);
    match format.table {
        "items_debezium" => {
            unknown_op["op"] = json!("z");
            no_key["after"]["id"] = Value::Null;
            bad_type["after"]["price"] = json!("twelve");
            too_long["after"]["name"] = json!(long);
        }
        "items_dms" => {
            unknown_op["metadata"]["operation"] = json!("merge");
            no_key["data"].as_object_mut().unwrap().remove("id");
            bad_type["data"]["qty"] = json!("many");
            too_long["data"]["name"] = json!(long);
        }
        "items_dynamodb" => {
            unknown_op["eventName"] = json!("UPSERT");
            no_key["dynamodb"]["Keys"] = json!({});
            no_key["dynamodb"]["NewImage"]
                .as_object_mut()
                .unwrap()
                .remove("Id");
            bad_type["dynamodb"]["NewImage"]["Active"] = json!({"S": "maybe"});
            too_long["dynamodb"]["NewImage"]["Name"] = json!({"S": long});
        }
        _ => {
            unknown_op["op"] = json!("X");
            no_key.as_object_mut().unwrap().remove("id");
            bad_type["price"] = json!({"amount": 1});
            too_long["name"] = json!(long);
        }
    }
    [
        b"{not json".to_vec(),
        serde_json::to_vec(&unknown_op).unwrap(),
        serde_json::to_vec(&no_key).unwrap(),
        serde_json::to_vec(&bad_type).unwrap(),
        serde_json::to_vec(&too_long).unwrap(),
    ]
    .into_iter()
    .map(|data| ("3".to_string(), data))
    .collect()
}

/// Many small rounds: each leaves a small file in each of the mirror's Delta tables, and
/// background rewrites merge them (and purge files mostly deleted) beside the rounds. After
/// every round, after the rewrites, after a replay of every change and after VACUUM, the
/// mirror equals the model, and the external Delta readers read exactly its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_are_rewritten_in_the_background_beside_rounds() {
    let kinesis_server = KinesisServer::start(KinesisFlavor::Embedded);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    let format = &FORMATS[0];
    create_stream(&kinesis, format.stream, 2).await;
    let server = TestServer::start_streaming(StreamingSettings {
        kinesis_endpoint: Some(endpoint.clone()),
        ..Default::default()
    })
    .await;
    let root = server.data_dir().unwrap().to_path_buf();
    let client = server.client().await;
    client
        .batch_execute(&format!(
            r#"CREATE EXTERNAL SCHEMA cdc FROM KINESIS IAM_ROLE default;
               CREATE MIRROR TABLE {} ({COLUMNS}) FROM cdc."{}" {}"#,
            format.table, format.stream, format.clauses
        ))
        .await
        .unwrap();
    const ROUNDS: usize = 40;
    const PER_ROUND: usize = 10;
    // Over enough keys that most changes of a round are of different keys and are stored.
    let all = changes_over(ROUNDS * PER_ROUND, 60, 99);
    let mut rng = Lcg(17);
    for round in 0..ROUNDS {
        let end = (round + 1) * PER_ROUND;
        put_changes(&kinesis, format, &all[round * PER_ROUND..end], &mut rng).await;
        client
            .batch_execute(&format!("REFRESH MIRROR TABLE {}", format.table))
            .await
            .unwrap();
        assert_eq!(
            rows(&client, format.table).await,
            model(&all[..end]),
            "after round {round}"
        );
    }
    let files = || async {
        server
            .engine
            .table_file_count("dev", "public", format.table)
            .await
            .unwrap()
    };
    // Without the rewrites, every round would have left a file. With them, a few small
    // ones and merged ones of growing sizes remain. The rewrites run at nice 10: the deadline
    // leaves room for a heavy test beside this one on two cores.
    let deadline = Instant::now() + Duration::from_secs(120);
    while files().await > 12 {
        assert!(Instant::now() < deadline, "small files were never merged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows(&client, format.table).await, model(&all));
    crate::interop::assert_readers_agree(&client, &root, format.table, "background rewrites").await;
    // A replay of every change, in small rounds again, changes nothing: an older change
    // never wins over a newer one, whether its key's row was rewritten or not.
    for chunk in all.chunks(ROUNDS * PER_ROUND / 10) {
        put_changes(&kinesis, format, chunk, &mut rng).await;
        client
            .batch_execute(&format!("REFRESH MIRROR TABLE {}", format.table))
            .await
            .unwrap();
        assert_eq!(
            rows(&client, format.table).await,
            model(&all),
            "after a replayed round"
        );
    }
    client
        .batch_execute(&format!("VACUUM {}", format.table))
        .await
        .unwrap();
    assert_eq!(
        files().await,
        1,
        "VACUUM rewrites the live rows as one file"
    );
    assert_eq!(rows(&client, format.table).await, model(&all));
    crate::interop::assert_readers_agree(&client, &root, format.table, "VACUUM").await;
}

/// Each format, three rounds of changes plus bad records and (for sequence-ordered formats)
/// a replay of everything already applied; after every refresh the mirror equals the model.
/// On the embedded stream service, the external Delta readers read each format's mirror as
/// Tributary does after its rounds and after VACUUM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_equal_the_source_in_every_format() {
    mirrors_equal_the_source_in_every_format_against(KinesisFlavor::Kinesalite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_equal_the_source_in_every_format_on_the_embedded_stream_service() {
    mirrors_equal_the_source_in_every_format_against(KinesisFlavor::Embedded).await;
}

async fn mirrors_equal_the_source_in_every_format_against(flavor: KinesisFlavor) {
    let external_readers = flavor == KinesisFlavor::Embedded;
    let kinesis_server = KinesisServer::start(flavor);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    for format in &FORMATS {
        create_stream(&kinesis, format.stream, 2).await;
    }
    let server = TestServer::start_streaming(StreamingSettings {
        kinesis_endpoint: Some(endpoint.clone()),
        ..Default::default()
    })
    .await;
    let root = server.data_dir().unwrap().to_path_buf();
    let client = server.client().await;
    client
        .batch_execute("CREATE EXTERNAL SCHEMA cdc FROM KINESIS IAM_ROLE default")
        .await
        .unwrap();
    for (n, format) in FORMATS.iter().enumerate() {
        client
            .batch_execute(&format!(
                r#"CREATE MIRROR TABLE {} ({COLUMNS}) FROM cdc."{}" {}"#,
                format.table, format.stream, format.clauses
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", format.table));
        let all = changes(150, 11 + n as u64);
        let mut rng = Lcg(5 + n as u64);
        let mut applied = 0;
        for (round, end) in [40usize, 100, 150].into_iter().enumerate() {
            put_changes(&kinesis, format, &all[applied..end], &mut rng).await;
            if round == 1 {
                put(&kinesis, format.stream, bad_records(format)).await;
            }
            applied = end;
            client
                .batch_execute(&format!("REFRESH MIRROR TABLE {}", format.table))
                .await
                .unwrap();
            assert_eq!(
                rows(&client, format.table).await,
                model(&all[..applied]),
                "{} after round {round}",
                format.table
            );
        }
        if external_readers {
            crate::interop::assert_readers_agree(&client, &root, format.table, "rounds").await;
        }
        // No format orders by a declared integer column here: the ordering values are kept
        // as bytes, as every mirror of an earlier release keeps them.
        let keys = format!(
            "{}-keys",
            crate::interop::table_location(&client, format.table).await
        );
        assert_eq!(order_type(&root.join(keys)), "binary", "{}", format.table);
        let errors = crate::streaming::count(
            &client,
            &format!(
                "SELECT count(*) FROM sys_stream_scan_errors WHERE mv_name = '{}'",
                format.table
            ),
        )
        .await;
        assert_eq!(
            errors, 5,
            "{}: each bad record is logged once",
            format.table
        );
        if format.by_sequence {
            // A replay of every change (as after a producer retry or a re-read) changes
            // nothing: no older change wins over a newer one, whether the newer one's row
            // was just added or (after VACUUM) rewritten.
            client
                .batch_execute(&format!("VACUUM {}", format.table))
                .await
                .unwrap();
            assert_eq!(rows(&client, format.table).await, model(&all));
            if external_readers {
                crate::interop::assert_readers_agree(&client, &root, format.table, "VACUUM").await;
            }
            put_changes(&kinesis, format, &all[..100], &mut rng).await;
            client
                .batch_execute(&format!("REFRESH MIRROR TABLE {}", format.table))
                .await
                .unwrap();
            assert_eq!(
                rows(&client, format.table).await,
                model(&all),
                "{} after a replay",
                format.table
            );
        }
    }

    // Through a streaming view: the view's single SUPER column is the change record (its
    // WHERE drops what is not JSON); the mirror reads the view's stream with its own
    // positions, from the start, and ends where the Debezium mirror did.
    client
        .batch_execute(&format!(
            r#"CREATE MATERIALIZED VIEW items_changes AS
                 SELECT sequence_number, JSON_PARSE(kinesis_data) AS payload
                 FROM cdc."{}" WHERE CAN_JSON_PARSE(kinesis_data);
               CREATE MIRROR TABLE items_via_view ({COLUMNS}) FROM items_changes
                 FORMAT DEBEZIUM ORDER BY source.lsn;
               REFRESH MIRROR TABLE items_via_view;"#,
            FORMATS[0].stream
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(&client, "items_via_view").await,
        model(&changes(150, 11))
    );
    assert_eq!(
        crate::streaming::count(
            &client,
            "SELECT count(*) FROM sys_stream_scan_errors WHERE mv_name = 'items_via_view'"
        )
        .await,
        4,
        "the bad records other than the one the view's WHERE drops"
    );

    // The mirror is a table to readers: joins, aggregates and filters see the merged rows.
    let live = model(&changes(150, 11)).len() as i64;
    assert_eq!(
        crate::streaming::count(&client, "SELECT count(*) FROM items_debezium").await,
        live
    );
    let joined = crate::streaming::count(
        &client,
        "SELECT count(*) FROM items_debezium d JOIN items_etleap e ON d.id = e.id WHERE d.qty > -1000",
    )
    .await;
    assert!(joined >= 0);

    // Writes are refused: the rows belong to the change stream.
    for sql in [
        "INSERT INTO items_dms (id) VALUES (99)",
        "UPDATE items_dms SET qty = 0",
        "DELETE FROM items_dms",
        "TRUNCATE items_dms",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42809"),
            "{sql}: {err:?}"
        );
    }
    // Bad definitions are refused with a reason.
    for (sql, reason) in [
        (
            r#"CREATE MIRROR TABLE nokey (id INT) FROM cdc."items-dms" FORMAT DMS"#,
            "PRIMARY KEY",
        ),
        (
            r#"CREATE MIRROR TABLE noformat (id INT PRIMARY KEY) FROM cdc."items-dms""#,
            "FORMAT",
        ),
        (
            "CREATE MIRROR TABLE nostream (id INT PRIMARY KEY) FROM public.items_dms FORMAT DMS",
            "external schema",
        ),
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        let message = err.as_db_error().map(|e| e.message().to_string());
        assert!(
            message.as_deref().is_some_and(|m| m.contains(reason)),
            "{sql}: {message:?}"
        );
    }

    // Continuous: with AUTO REFRESH the mirror follows the stream by itself.
    client
        .batch_execute("ALTER MIRROR TABLE items_etleap AUTO REFRESH YES")
        .await
        .unwrap();
    let mut all = changes(150, 14);
    let more: Vec<Change> = changes(60, 99)
        .into_iter()
        .map(|mut c| {
            c.seq += 100_000;
            c
        })
        .collect();
    // The new changes continue from the live state: rebuild them on top of it.
    all.extend(more);
    let format = &FORMATS[3];
    let mut rng = Lcg(1);
    put_changes(&kinesis, format, &all[150..], &mut rng).await;
    let expected = model(&all);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows(&client, format.table).await != expected {
        assert!(
            Instant::now() < deadline,
            "the auto-refreshed mirror never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    client
        .batch_execute("DROP TABLE items_dms")
        .await
        .expect("a mirror table is dropped like a table");

    // A backfill from files: COPY applies change records as the stream would, and the
    // stream's changes land on top. A record that cannot be applied is a load error.
    let backfill = changes(80, 77);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.json");
    let mut lines: Vec<String> = backfill[..50]
        .iter()
        .map(|c| operation_row(c).to_string())
        .collect();
    lines.insert(10, r#"{"op": "U", "seq": 5}"#.to_string());
    std::fs::write(&file, lines.join("\n")).unwrap();
    create_stream(&kinesis, "items-backfill", 1).await;
    client
        .batch_execute(&format!(
            r#"CREATE MIRROR TABLE items_backfill ({COLUMNS}) FROM cdc."items-backfill"
               FORMAT OPERATION COLUMN op ORDER BY seq"#
        ))
        .await
        .unwrap();
    let err = client
        .batch_execute(&format!(
            "COPY items_backfill FROM 'file://{}' FORMAT JSON 'auto'",
            file.display()
        ))
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("stl_load_errors")),
        "{err:?}"
    );
    client
        .batch_execute(&format!(
            "COPY items_backfill FROM 'file://{}' FORMAT JSON 'auto' MAXERROR 1",
            file.display()
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(&client, "items_backfill").await,
        model(&backfill[..50])
    );
    let mut rng = Lcg(9);
    let format = Format {
        stream: "items-backfill",
        ..FORMATS[3]
    };
    put_changes(&kinesis, &format, &backfill[50..], &mut rng).await;
    client
        .batch_execute("REFRESH MIRROR TABLE items_backfill")
        .await
        .unwrap();
    assert_eq!(rows(&client, "items_backfill").await, model(&backfill));
}

/// kill -9 several times while a mirror applies thousands of changes with AUTO REFRESH (each
/// round commits deletion vectors and new files in the mirror's two Delta tables, then the
/// catalog) and background rewrites; after the last restart the mirror equals the source
/// table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_mirroring_loses_and_repeats_nothing() {
    let kinesis_server = KinesisServer::start(KinesisFlavor::Kinesalite);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    create_stream(&kinesis, FORMATS[0].stream, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_string();
    let envs = [
        ("TRIBUTARY_KINESIS_ENDPOINT", endpoint.clone()),
        ("TRIBUTARY_REFRESH_INTERVAL_MS", "50".to_string()),
    ];
    let (child, port) = spawn_server(&data, &envs);
    let mut server = child;
    let client = connect(port).await;
    client
        .batch_execute(&format!(
            r#"CREATE EXTERNAL SCHEMA cdc FROM KINESIS IAM_ROLE default;
               CREATE MIRROR TABLE items ({COLUMNS}) FROM cdc."{}"
                 FORMAT DEBEZIUM ORDER BY source.lsn AUTO REFRESH YES;"#,
            FORMATS[0].stream
        ))
        .await
        .unwrap();
    // Many keys, so that a lost change would most likely be a key's last one.
    let all: Vec<Change> = (0..6)
        .flat_map(|part| {
            changes(1_000, 40 + part).into_iter().map(move |mut c| {
                c.id += 10 * part as i64;
                c
            })
        })
        .enumerate()
        .map(|(i, mut c)| {
            c.seq = 1000 + i as u64;
            c
        })
        .collect();
    let writer = {
        let kinesis = kinesis.clone();
        let all = all.clone();
        tokio::spawn(async move {
            let mut rng = Lcg(3);
            for chunk in all.chunks(500) {
                put_changes(&kinesis, &FORMATS[0], chunk, &mut rng).await;
            }
        })
    };
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(600 + 300 * round)).await;
        server.0.kill().expect("kill -9");
        server.0.wait().unwrap();
        server = spawn_server(&data, &envs).0;
    }
    writer.await.unwrap();
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let (child, port) = spawn_server(&data, &envs);
    server = child;
    let client = connect(port).await;
    let expected = model(&all);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = rows(&client, "items").await;
        if found == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror never reached the source state: {} rows, expected {}",
            found.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        crate::streaming::count(&client, "SELECT count(*) FROM sys_stream_scan_errors").await,
        0
    );
    drop(server);
}

/// Copies a directory tree.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A mirror stored by an earlier release (a folded base, stored changes and tombstones in one
/// Delta table with hidden columns; tests/fixtures/legacy-mirror, written by that release
/// with COPY, VACUUM and COPY) reads as before, and its next COPY converts it: its Delta
/// table then holds exactly its live rows, which the external readers read as Tributary
/// does, and its deleted keys still refuse older changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_of_an_earlier_release_is_converted_by_its_next_change() {
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-mirror");
    copy_tree(&fixture, dir.path());
    let server = TestServer::start_at(
        dir.path().to_str().unwrap(),
        None,
        tributary_wire::PasswordMethod::ScramSha256,
    )
    .await;
    let client = server.client().await;
    let summary = "SELECT count(*), sum(qty), count(attrs), \
                   (SELECT count(*) FROM items WHERE id IN (2, 5, 12)) AS gone FROM items";
    let before = crate::cdc::text_rows(&client, summary).await;
    assert_eq!(
        before,
        vec![vec![
            Some("60".to_string()),
            Some("12903".to_string()),
            Some("44".to_string()),
            Some("0".to_string())
        ]],
        "the earlier release's rows"
    );
    let all_rows = || rows(&client, "items");
    let legacy_rows = all_rows().await;

    // An insert of a deleted key older than its deletion, an update of a live key and a new
    // key: the first is ignored.
    let file = dir.path().join("changes.json");
    std::fs::write(
        &file,
        [
            json!({"op": "I", "seq": 3, "id": 5, "name": "stale", "qty": 0}),
            json!({"op": "U", "seq": 200, "id": 1, "name": "newer", "qty": 7}),
            json!({"op": "I", "seq": 201, "id": 500, "name": "new", "qty": 9}),
        ]
        .map(|c| c.to_string())
        .join("\n"),
    )
    .unwrap();
    client
        .batch_execute(&format!(
            "COPY items FROM 'file://{}' FORMAT JSON 'auto'",
            file.display()
        ))
        .await
        .unwrap();
    let mut expected: Vec<Vec<Option<String>>> = legacy_rows
        .into_iter()
        .filter(|row| row[0].as_deref() != Some("1"))
        .collect();
    expected.push(
        ["1", "newer", "", "7", "", ""]
            .map(|v| (!v.is_empty()).then(|| v.to_string()))
            .to_vec(),
    );
    expected.push(
        ["500", "new", "", "9", "", ""]
            .map(|v| (!v.is_empty()).then(|| v.to_string()))
            .to_vec(),
    );
    expected.sort_by_key(|row| row[0].as_deref().unwrap().parse::<i64>().unwrap());
    assert_eq!(all_rows().await, expected, "after the converting COPY");
    let root = dir.path().to_path_buf();
    crate::interop::assert_readers_agree(&client, &root, "items", "the conversion").await;
    let unsorted = client
        .query_one(
            "SELECT unsorted FROM svv_table_info WHERE \"table\" = 'items'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, Option<f64>>(0);
    assert_eq!(
        unsorted, None,
        "a converted mirror keeps no unsorted changes"
    );

    client.batch_execute("VACUUM items").await.unwrap();
    assert_eq!(all_rows().await, expected, "after VACUUM");
    crate::interop::assert_readers_agree(&client, &root, "items", "VACUUM").await;
}

/// A mirror keyed by (region, id) over more rows than a page holds: its rounds read only the
/// pages of its two tables whose key bounds may hold a changed key, and write their rows
/// sorted by key. Rounds of scattered updates, deletes, inserts and stale changes (older than
/// the key's stored one) by COPY, then VACUUM; after each, the mirror equals the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_find_their_keys_in_the_pages_that_may_hold_them() {
    let kinesis_server = KinesisServer::start(KinesisFlavor::Embedded);
    let server = TestServer::start_streaming(StreamingSettings {
        kinesis_endpoint: Some(kinesis_server.endpoint()),
        ..Default::default()
    })
    .await;
    let client = server.client().await;
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA cdc FROM KINESIS IAM_ROLE default;
               CREATE MIRROR TABLE wide_keys (region VARCHAR(8), id BIGINT, v INT, seq BIGINT,
                 PRIMARY KEY (region, id)) FROM cdc."wide-keys"
                 FORMAT OPERATION COLUMN op ORDER BY seq"#,
        )
        .await
        .unwrap();
    const IDS: i64 = 40_000;
    const REGIONS: [&str; 3] = ["east", "north", "west"];
    let dir = tempfile::tempdir().unwrap();
    // (region, id) -> (v, seq); deleted keys keep their seq, as the mirror's key table does.
    let mut model: BTreeMap<(String, i64), (Option<i64>, i64)> = BTreeMap::new();
    let mut seq = 0i64;
    let copy = |name: &str, lines: Vec<String>| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        format!(
            "COPY wide_keys FROM 'file://{}' FORMAT JSON 'auto'",
            path.display()
        )
    };
    let record = |op: char, region: &str, id: i64, v: i64, seq: i64| {
        json!({"op": op.to_string(), "region": region, "id": id, "v": v, "seq": seq}).to_string()
    };
    let mut base = Vec::new();
    for region in REGIONS {
        for id in 0..IDS {
            seq += 1;
            base.push(record('I', region, id, id % 1000, seq));
            model.insert((region.to_string(), id), (Some(id % 1000), seq));
        }
    }
    client
        .batch_execute(&copy("base.json", base))
        .await
        .unwrap();
    client.batch_execute("VACUUM wide_keys").await.unwrap();

    let expected = |model: &BTreeMap<(String, i64), (Option<i64>, i64)>| {
        model
            .iter()
            .filter_map(|((region, id), (v, seq))| {
                v.map(|v| {
                    vec![
                        Some(region.clone()),
                        Some(id.to_string()),
                        Some(v.to_string()),
                        Some(seq.to_string()),
                    ]
                })
            })
            .collect::<Vec<_>>()
    };
    let sql = "SELECT region, id, v, seq FROM wide_keys ORDER BY region, id";
    let mut rng = Lcg(23);
    for round in 0..4 {
        let mut lines = Vec::new();
        for n in 0..300 {
            let region = if n % 10 == 0 {
                "south"
            } else {
                REGIONS[rng.next(3) as usize]
            };
            let id = rng.next(IDS as u64 + 500) as i64;
            let key = (region.to_string(), id);
            let v = 1000 + round * 1000 + n;
            let stored = model.get(&key).map(|(_, seq)| *seq);
            // A stale change: older than the key's stored one, so the mirror drops it.
            if let Some(stored) = stored
                && n % 7 == 0
            {
                lines.push(record('U', region, id, -1, stored - 1));
                continue;
            }
            seq += 1;
            let (op, value) = match (stored, n % 5) {
                (Some(_), 0) => ('D', None),
                (Some(_), _) => ('U', Some(v)),
                (None, _) => ('I', Some(v)),
            };
            lines.push(record(op, region, id, v, seq));
            model.insert(key, (value, seq));
        }
        client
            .batch_execute(&copy(&format!("round-{round}.json"), lines))
            .await
            .unwrap();
        assert_eq!(
            crate::cdc::text_rows(&client, sql).await,
            expected(&model),
            "after round {round}"
        );
    }
    client.batch_execute("VACUUM wide_keys").await.unwrap();
    assert_eq!(crate::cdc::text_rows(&client, sql).await, expected(&model));
    // A filter on a column without page statistics (only the key has them) prunes nothing
    // it should keep.
    let filtered = crate::cdc::text_rows(
        &client,
        "SELECT region, id, v, seq FROM wide_keys WHERE v >= 500 AND seq > 100 ORDER BY region, id",
    )
    .await;
    let kept: Vec<Vec<Option<String>>> = expected(&model)
        .into_iter()
        .filter(|row| {
            let number = |i: usize| row[i].as_deref().unwrap().parse::<i64>().unwrap();
            number(2) >= 500 && number(3) > 100
        })
        .collect();
    assert!(!kept.is_empty());
    assert_eq!(filtered, kept);
    // Ordered by a declared BIGINT, the key table holds its ordering values as BIGINT.
    let keys = format!(
        "{}-keys",
        crate::interop::table_location(&client, "wide_keys").await
    );
    let root = server.data_dir().unwrap();
    assert_eq!(order_type(&root.join(keys)), "long");
}

/// The Delta type of the ordering values in the key table stored at `dir`, from the schema
/// of its first commit.
fn order_type(dir: &std::path::Path) -> String {
    let first = std::fs::read_to_string(dir.join("_delta_log/00000000000000000000.json")).unwrap();
    let schema = first
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|action| {
            action["metaData"]["schemaString"]
                .as_str()
                .map(String::from)
        })
        .unwrap();
    let schema: Value = serde_json::from_str(&schema).unwrap();
    schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|field| field["name"] == "__tributary_order")
        .map(|field| field["type"].as_str().unwrap().to_string())
        .unwrap()
}
