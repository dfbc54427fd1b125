//! Kafka sources against a real Kafka-compatible broker (tansu): an external schema FROM
//! KAFKA, a streaming view over a topic with Redshift's Kafka metadata columns, refreshes that
//! read each record exactly once across partitions, transactions (aborted records never
//! appear), compressed batches of every codec, bad records in sys_stream_scan_errors, AUTO
//! REFRESH through kill -9, and a Debezium mirror fed by a topic (tombstones included).

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::json;
use tributary_sql::StreamingSettings;
use tributary_testkit::{Tansu, TestServer};

use crate::cdc::text_rows;
use crate::durability::{connect, spawn_server};
use crate::streaming::{count, wait_for_count};

async fn create_topic(broker: &Tansu, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("an admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for result in results {
        result.unwrap_or_else(|(name, e)| panic!("creating topic {name} failed: {e:?}"));
    }
}

fn producer(broker: &Tansu) -> FutureProducer {
    producer_with(broker, &[])
}

/// A producer with extra librdkafka settings (compression, transactions).
fn producer_with(broker: &Tansu, settings: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.bootstrap())
        .set("message.timeout.ms", "10000");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create().expect("a producer")
}

/// Sends every value (to partition `i % partitions`) without waiting between them, so that
/// the producer batches (and compresses) them, then waits until the broker took them all.
async fn send_all(producer: &FutureProducer, topic: &str, partitions: i32, values: &[String]) {
    let mut deliveries = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let record = FutureRecord::<(), _>::to(topic)
            .partition(i as i32 % partitions)
            .payload(value.as_str());
        deliveries.push(
            producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("queueing for {topic} failed: {e}")),
        );
    }
    for delivery in deliveries {
        delivery
            .await
            .expect("the delivery was not cancelled")
            .unwrap_or_else(|(e, _)| panic!("producing to {topic} failed: {e}"));
    }
}

/// Sends one record (a null value is a tombstone) and waits for the broker to take it.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: Option<&str>,
) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "source",
        value: Some("test"),
    });
    let mut record = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .headers(headers);
    if let Some(value) = value {
        record = record.payload(value);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic} failed: {e}"));
}

async fn start(broker: &Tansu) -> (TestServer, tokio_postgres::Client) {
    let server = TestServer::start_streaming(StreamingSettings::default()).await;
    let client = server.client().await;
    client
        .batch_execute(&format!(
            "CREATE EXTERNAL SCHEMA k FROM KAFKA IAM_ROLE default AUTHENTICATION none URI '{}'",
            broker.bootstrap()
        ))
        .await
        .unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_over_a_topic_reads_every_record_once_with_its_metadata() {
    let broker = Tansu::start();
    create_topic(&broker, "orders", 2).await;
    let producer = producer(&broker);
    for i in 0..60 {
        let value = json!({"order": i, "amount": i * 10}).to_string();
        send(&producer, "orders", i % 2, &format!("k{i}"), Some(&value)).await;
    }
    let (_server, client) = start(&broker).await;
    client
        .batch_execute(
            r#"CREATE MATERIALIZED VIEW orders_mv AS
                 SELECT kafka_partition, kafka_offset, kafka_timestamp_type, kafka_timestamp,
                        kafka_key, JSON_PARSE(kafka_value) AS payload, kafka_headers, refresh_time
                 FROM k."orders";
               REFRESH MATERIALIZED VIEW orders_mv;"#,
        )
        .await
        .unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM orders_mv").await, 60);
    let rows = text_rows(
        &client,
        "SELECT kafka_partition, kafka_offset, kafka_timestamp_type, kafka_key::VARCHAR, \
                payload.order, kafka_headers[0].value, kafka_timestamp IS NOT NULL \
         FROM orders_mv WHERE payload.order = 3",
    )
    .await;
    assert_eq!(
        rows,
        vec![vec![
            Some("1".into()),
            Some("1".into()),
            Some("C".into()),
            Some("k3".into()),
            Some("3".into()),
            Some("\"test\"".into()),
            Some("t".into()),
        ]]
    );
    // More records: the next refresh reads exactly those, in both partitions.
    for i in 60..100 {
        let value = json!({"order": i, "amount": i * 10}).to_string();
        send(&producer, "orders", i % 2, &format!("k{i}"), Some(&value)).await;
    }
    client
        .batch_execute("REFRESH MATERIALIZED VIEW orders_mv")
        .await
        .unwrap();
    assert_eq!(
        text_rows(
            &client,
            "SELECT count(*), count(DISTINCT payload.order::INT), \
                    count(DISTINCT kafka_partition::VARCHAR || '/' || kafka_offset::VARCHAR), \
                    max(kafka_offset) FROM orders_mv",
        )
        .await,
        vec![vec![
            Some("100".into()),
            Some("100".into()),
            Some("100".into()),
            Some("49".into()),
        ]]
    );
    // A refresh with nothing new reads nothing.
    client
        .batch_execute("REFRESH MATERIALIZED VIEW orders_mv")
        .await
        .unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM orders_mv").await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debezium_mirror_reads_a_topic_with_tombstones() {
    let broker = Tansu::start();
    create_topic(&broker, "users", 1).await;
    let producer = producer(&broker);
    let change = |op: &str, lsn: i64, id: i64, before: Option<&str>, after: Option<&str>| {
        let image = |name: Option<&str>| name.map(|n| json!({"id": id, "name": n}));
        json!({
            "op": op,
            "before": image(before),
            "after": image(after),
            "source": {"lsn": lsn},
        })
        .to_string()
    };
    let records = [
        ("1", Some(change("c", 10, 1, None, Some("ann")))),
        ("2", Some(change("c", 11, 2, None, Some("bob")))),
        ("1", Some(change("u", 12, 1, Some("ann"), Some("anne")))),
        ("2", Some(change("d", 13, 2, Some("bob"), None))),
        // Debezium's tombstone after a delete.
        ("2", None),
        ("3", Some(change("c", 14, 3, None, Some("cy")))),
    ];
    for (key, value) in &records {
        send(&producer, "users", 0, key, value.as_deref()).await;
    }
    let (_server, client) = start(&broker).await;
    client
        .batch_execute(
            r#"CREATE MIRROR TABLE users (id BIGINT, name VARCHAR(20), PRIMARY KEY (id))
                 FROM k."users" FORMAT DEBEZIUM ENCODE JSON ORDER BY source.lsn;
               REFRESH MIRROR TABLE users;"#,
        )
        .await
        .unwrap();
    assert_eq!(
        text_rows(&client, "SELECT id, name FROM users ORDER BY id").await,
        vec![
            vec![Some("1".into()), Some("anne".into())],
            vec![Some("3".into()), Some("cy".into())],
        ]
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM sys_stream_scan_errors WHERE mv_name = 'users'"
        )
        .await,
        0,
        "a tombstone is not an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_schema_options_are_checked() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let refused = |sql: &'static str, state: &'static str| {
        let client = &client;
        async move {
            let err = client.batch_execute(sql).await.unwrap_err();
            assert_eq!(err.code().map(|c| c.code()), Some(state), "{sql}: {err:?}");
        }
    };
    refused(
        "CREATE EXTERNAL SCHEMA a FROM MSK IAM_ROLE default AUTHENTICATION iam URI 'b:9098'",
        "0A000",
    )
    .await;
    refused(
        "CREATE EXTERNAL SCHEMA a FROM MSK IAM_ROLE default AUTHENTICATION none CLUSTER_ARN 'arn:aws:kafka:us-east-1:1:cluster/c/1'",
        "0A000",
    )
    .await;
    refused(
        "CREATE EXTERNAL SCHEMA a FROM KAFKA AUTHENTICATION mtls URI 'b:9094'",
        "42601",
    )
    .await;
    refused(
        "CREATE EXTERNAL SCHEMA a FROM KAFKA AUTHENTICATION none URI 'b:9092' COLOR 'red'",
        "42601",
    )
    .await;
    // The session survives, and a well-formed schema is created without reaching a broker.
    client
        .batch_execute(
            "CREATE EXTERNAL SCHEMA a FROM KAFKA AUTHENTICATION sasl SASL_MECHANISM 'SCRAM-SHA-256' \
             SASL_USERNAME 'u' SASL_PASSWORD 'p' URI 'b:9092'",
        )
        .await
        .unwrap();
    assert_eq!(
        text_rows(
            &client,
            "SELECT schemaname, esoptions FROM svv_external_schemas"
        )
        .await,
        vec![vec![
            Some("a".into()),
            Some(
                r#"{"AUTHENTICATION":"sasl","CLUSTER_ARN":null,"IAM_ROLE":null,"SOURCE":"KAFKA","URI":"b:9092"}"#
                    .into()
            )
        ]]
    );
}

/// Records of compressed batches (every codec) and of committed transactions are read once;
/// the records of a transaction still open stay invisible (the view reads to the last stable
/// offset only) until it commits, and a refresh meanwhile neither waits nor skips them.
///
/// Aborted transactions are filtered by librdkafka from the aborted-transaction list a broker
/// returns with each fetch (`isolation.level=read_committed`). tansu 0.6 returns that list
/// empty, so aborted records cannot be tested against it; see the README's Kafka section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_and_committed_transactions_are_read_once() {
    let broker = Tansu::start();
    create_topic(&broker, "payments", 2).await;
    let values = |label: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| json!({"label": label, "i": i}).to_string())
            .collect()
    };
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let producer = producer_with(&broker, &[("compression.type", codec), ("linger.ms", "20")]);
        send_all(&producer, "payments", 2, &values(codec, 50)).await;
    }
    let transactional = producer_with(&broker, &[("transactional.id", "payments-writer")]);
    let timeout = Duration::from_secs(10);
    transactional.init_transactions(timeout).unwrap();
    transactional.begin_transaction().unwrap();
    send_all(&transactional, "payments", 2, &values("committed", 20)).await;
    transactional.commit_transaction(timeout).unwrap();
    // A transaction left open: its records are on the broker, delivered but not committed.
    transactional.begin_transaction().unwrap();
    send_all(&transactional, "payments", 2, &values("late", 20)).await;

    let (_server, client) = start(&broker).await;
    client
        .batch_execute(
            r#"CREATE MATERIALIZED VIEW payments_mv AS
                 SELECT kafka_partition, kafka_offset, JSON_PARSE(kafka_value) AS payload
                 FROM k."payments";
               REFRESH MATERIALIZED VIEW payments_mv;"#,
        )
        .await
        .unwrap();
    async fn by_label(client: &tokio_postgres::Client) -> Vec<Vec<Option<String>>> {
        text_rows(
            client,
            "SELECT payload.label::VARCHAR AS label, count(*), count(DISTINCT payload.i::INT) \
             FROM payments_mv GROUP BY 1 ORDER BY 1",
        )
        .await
    }
    let expected = |labels: &[(&str, usize)]| -> Vec<Vec<Option<String>>> {
        labels
            .iter()
            .map(|(label, n)| {
                vec![
                    Some(label.to_string()),
                    Some(n.to_string()),
                    Some(n.to_string()),
                ]
            })
            .collect()
    };
    let before_commit = [
        ("committed", 20),
        ("gzip", 50),
        ("lz4", 50),
        ("snappy", 50),
        ("zstd", 50),
    ];
    assert_eq!(by_label(&client).await, expected(&before_commit));
    transactional.commit_transaction(timeout).unwrap();
    client
        .batch_execute("REFRESH MATERIALIZED VIEW payments_mv")
        .await
        .unwrap();
    let mut after_commit = before_commit.to_vec();
    after_commit.insert(2, ("late", 20));
    assert_eq!(by_label(&client).await, expected(&after_commit));
    // The transaction markers took offsets: the offsets have gaps, and nothing is read twice.
    assert!(count(&client, "SELECT max(kafka_offset) FROM payments_mv").await >= 120);
    client
        .batch_execute("REFRESH MATERIALIZED VIEW payments_mv")
        .await
        .unwrap();
    assert_eq!(
        count(&client, "SELECT count(*) FROM payments_mv").await,
        240
    );
}

/// Records that do not parse or cast go to sys_stream_scan_errors with their partition and
/// offset; every good record is in the view and ingestion goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_scan_errors_with_partition_and_offset() {
    let broker = Tansu::start();
    create_topic(&broker, "events", 1).await;
    let producer = producer(&broker);
    let mut values: Vec<String> = (0..30).map(|i| json!({"id": i}).to_string()).collect();
    values.insert(7, "{\"id\": 3,".to_string());
    values.insert(20, json!({"id": "seven"}).to_string());
    send_all(&producer, "events", 1, &values).await;
    let (_server, client) = start(&broker).await;
    client
        .batch_execute(
            r#"CREATE MATERIALIZED VIEW events_mv AS
                 SELECT CAST(json_extract_path_text(from_varbyte(kafka_value, 'utf-8'), 'id') AS int) AS id,
                        JSON_PARSE(kafka_value) AS payload
                 FROM k."events";
               REFRESH MATERIALIZED VIEW events_mv;"#,
        )
        .await
        .expect("a refresh with bad records succeeds");
    assert_eq!(
        count(&client, "SELECT count(DISTINCT id) FROM events_mv").await,
        30
    );
    assert_eq!(
        text_rows(
            &client,
            "SELECT shard_id, position, error_code FROM sys_stream_scan_errors \
             WHERE mv_name = 'events_mv' ORDER BY position::INT",
        )
        .await,
        vec![
            vec![
                Some("0".into()),
                Some("7".into()),
                Some("transform_failed".into())
            ],
            vec![
                Some("0".into()),
                Some("20".into()),
                Some("transform_failed".into())
            ],
        ]
    );
    send_all(&producer, "events", 1, &[json!({"id": 30}).to_string()]).await;
    client
        .batch_execute("REFRESH MATERIALIZED VIEW events_mv")
        .await
        .unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM events_mv").await, 31);
    assert_eq!(
        count(&client, "SELECT count(*) FROM sys_stream_scan_errors").await,
        2
    );
}

/// kill -9 several times while an AUTO REFRESH view ingests a topic of 4 partitions; after
/// the last restart every record is in the view exactly once, and the lag view shows every
/// partition caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_auto_refresh_keeps_every_record_once() {
    const TOTAL: usize = 20_000;
    let broker = Tansu::start();
    create_topic(&broker, "clicks", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_string();
    let envs = [("TRIBUTARY_REFRESH_INTERVAL_MS", "50".to_string())];
    let (child, port) = spawn_server(&data, &envs);
    let mut server = child;
    let client = connect(port).await;
    client
        .batch_execute(&format!(
            r#"CREATE EXTERNAL SCHEMA k FROM KAFKA AUTHENTICATION none URI '{}';
               CREATE MATERIALIZED VIEW clicks_mv AUTO REFRESH YES AS
                 SELECT kafka_partition,
                        CAST(json_extract_path_text(from_varbyte(kafka_value, 'utf-8'), 'id') AS bigint) AS id
                 FROM k."clicks";"#,
            broker.bootstrap()
        ))
        .await
        .unwrap();
    let writer = {
        let producer = producer_with(&broker, &[("linger.ms", "5")]);
        tokio::spawn(async move {
            let values: Vec<String> = (0..TOTAL).map(|i| json!({"id": i}).to_string()).collect();
            for chunk in values.chunks(1_000) {
                send_all(&producer, "clicks", 4, chunk).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
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
    let _server = child;
    let client = connect(port).await;
    wait_for_count(&client, "SELECT count(*) FROM clicks_mv", TOTAL as i64).await;
    let ids: HashSet<i64> = client
        .query("SELECT id FROM clicks_mv", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), TOTAL, "no record is in the view twice");
    assert!((0..TOTAL as i64).all(|i| ids.contains(&i)));
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT kafka_partition) FROM clicks_mv"
        )
        .await,
        4
    );
    // Within a second of catching up, the lag view shows each partition 0 records behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let behind = text_rows(
            &client,
            "SELECT shard_id, records_behind FROM sys_stream_lag WHERE mv_name = 'clicks_mv' ORDER BY shard_id",
        )
        .await;
        let caught_up: Vec<Vec<Option<String>>> = (0..4)
            .map(|p| vec![Some(p.to_string()), Some("0".into())])
            .collect();
        if behind == caught_up {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{behind:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A REFRESH while producers keep writing ends (each partition stops at its first record
/// that arrived after the refresh began), and the records it left are read by the next one,
/// each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_during_steady_writes_ends_and_the_next_reads_the_rest() {
    const TOTAL: usize = 3_000;
    let broker = Tansu::start();
    create_topic(&broker, "ticks", 3).await;
    let (_server, client) = start(&broker).await;
    client
        .batch_execute(
            r#"CREATE MATERIALIZED VIEW ticks_mv AS
                 SELECT CAST(json_extract_path_text(from_varbyte(kafka_value, 'utf-8'), 'id') AS bigint) AS id
                 FROM k."ticks";"#,
        )
        .await
        .unwrap();
    let writer = {
        let producer = producer(&broker);
        tokio::spawn(async move {
            let values: Vec<String> = (0..TOTAL).map(|i| json!({"id": i}).to_string()).collect();
            // About 4 s of steady writes.
            for chunk in values.chunks(75) {
                send_all(&producer, "ticks", 3, chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let started = std::time::Instant::now();
    client
        .batch_execute("REFRESH MATERIALIZED VIEW ticks_mv")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the refresh ended while writes went on: {:?}",
        started.elapsed()
    );
    let first = count(&client, "SELECT count(*) FROM ticks_mv").await;
    assert!(!writer.is_finished(), "the writer was still writing");
    assert!(0 < first && first < TOTAL as i64, "{first}");
    writer.await.unwrap();
    client
        .batch_execute("REFRESH MATERIALIZED VIEW ticks_mv")
        .await
        .unwrap();
    assert_eq!(
        text_rows(
            &client,
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM ticks_mv"
        )
        .await,
        vec![vec![
            Some(TOTAL.to_string()),
            Some(TOTAL.to_string()),
            Some("0".into()),
            Some((TOTAL - 1).to_string())
        ]]
    );
}

/// ALTER EXTERNAL SCHEMA ... URI moves a schema's views to another cluster (as after a
/// migration that kept offsets): AUTO REFRESH and REFRESH go on from the stored offsets there.
/// Kinesis schemas, unknown options and incomplete authentication are refused, and leave the
/// schema as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_external_schema_moves_views_to_the_new_uri() {
    let (old, new) = (Tansu::start(), Tansu::start());
    for broker in [&old, &new] {
        create_topic(broker, "moves", 1).await;
    }
    let labelled = |label: &str, range: std::ops::Range<usize>| -> Vec<String> {
        range
            .map(|i| json!({"cluster": label, "i": i}).to_string())
            .collect()
    };
    send_all(&producer(&old), "moves", 1, &labelled("old", 0..10)).await;
    // The new cluster holds the same first ten records, then more.
    send_all(&producer(&new), "moves", 1, &labelled("old", 0..10)).await;
    send_all(&producer(&new), "moves", 1, &labelled("new", 10..25)).await;
    let (_server, client) = start(&old).await;
    client
        .batch_execute(
            r#"CREATE MATERIALIZED VIEW moves_auto AUTO REFRESH YES AS
                 SELECT kafka_offset, JSON_PARSE(kafka_value) AS payload FROM k."moves";
               CREATE MATERIALIZED VIEW moves_manual AS
                 SELECT kafka_offset, JSON_PARSE(kafka_value) AS payload FROM k."moves";
               REFRESH MATERIALIZED VIEW moves_manual;"#,
        )
        .await
        .unwrap();
    wait_for_count(&client, "SELECT count(*) FROM moves_auto", 10).await;
    client
        .batch_execute(&format!(
            "ALTER EXTERNAL SCHEMA k URI '{}'",
            new.bootstrap()
        ))
        .await
        .unwrap();
    client
        .batch_execute("REFRESH MATERIALIZED VIEW moves_manual")
        .await
        .unwrap();
    wait_for_count(&client, "SELECT count(*) FROM moves_auto", 25).await;
    for view in ["moves_auto", "moves_manual"] {
        assert_eq!(
            text_rows(
                &client,
                &format!(
                    "SELECT payload.cluster::VARCHAR, count(*), min(kafka_offset), max(kafka_offset) \
                     FROM {view} GROUP BY 1 ORDER BY 1"
                ),
            )
            .await,
            vec![
                vec![
                    Some("new".into()),
                    Some("15".into()),
                    Some("10".into()),
                    Some("24".into())
                ],
                vec![
                    Some("old".into()),
                    Some("10".into()),
                    Some("0".into()),
                    Some("9".into())
                ],
            ],
            "{view}"
        );
    }
    let uri = || async {
        text_rows(
            &client,
            "SELECT json_extract_path_text(esoptions, 'URI') FROM svv_external_schemas WHERE schemaname = 'k'",
        )
        .await
    };
    assert_eq!(uri().await, vec![vec![Some(new.bootstrap())]]);
    // Refusals leave the schema as it was.
    for (sql, state) in [
        ("ALTER EXTERNAL SCHEMA k AUTHENTICATION mtls", "42601"),
        ("ALTER EXTERNAL SCHEMA k COLOR 'red'", "42601"),
        ("ALTER EXTERNAL SCHEMA k", "42601"),
        ("ALTER EXTERNAL SCHEMA k AUTHENTICATION iam", "0A000"),
        ("ALTER EXTERNAL SCHEMA nope URI 'b:9092'", "3F000"),
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some(state), "{sql}: {err:?}");
    }
    client
        .batch_execute("CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default")
        .await
        .unwrap();
    let err = client
        .batch_execute("ALTER EXTERNAL SCHEMA kds URI 'b:9092'")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err:?}");
    assert_eq!(uri().await, vec![vec![Some(new.bootstrap())]]);
    // Another authentication and back: the views keep reading.
    client
        .batch_execute(
            "ALTER EXTERNAL SCHEMA k AUTHENTICATION sasl SASL_USERNAME 'u' SASL_PASSWORD 'p'; \
             ALTER EXTERNAL SCHEMA k AUTHENTICATION none;",
        )
        .await
        .unwrap();
    send_all(&producer(&new), "moves", 1, &labelled("new", 25..30)).await;
    wait_for_count(&client, "SELECT count(*) FROM moves_auto", 30).await;
}

/// A Debezium mirror ordered by stream position takes a tombstone as a delete of its key, so
/// that it stays right when log compaction removed the delete event before it (keys with and
/// without the schema envelope).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_deletes_its_key_when_the_delete_event_was_compacted_away() {
    let broker = Tansu::start();
    create_topic(&broker, "accounts", 1).await;
    let producer = producer(&broker);
    let created = |id: i64, name: &str| {
        json!({"op": "c", "before": null, "after": {"id": id, "name": name}}).to_string()
    };
    let enveloped_key = |id: i64| {
        json!({"schema": {"type": "struct", "fields": [{"field": "id", "type": "int64"}]},
               "payload": {"id": id}})
        .to_string()
    };
    let records = [
        (json!({"id": 1}).to_string(), Some(created(1, "ann"))),
        (json!({"id": 2}).to_string(), Some(created(2, "bob"))),
        (enveloped_key(3), Some(created(3, "cy"))),
        // What compaction leaves of deleted keys 1 and 3: their tombstones.
        (json!({"id": 1}).to_string(), None),
        (enveloped_key(3), None),
        // A key deleted, then created again.
        (json!({"id": 2}).to_string(), None),
        (json!({"id": 2}).to_string(), Some(created(2, "bea"))),
    ];
    for (key, value) in &records {
        send(&producer, "accounts", 0, key, value.as_deref()).await;
    }
    // A tombstone whose key is not JSON is a scan error, not a silent skip.
    send(&producer, "accounts", 0, "not json", None).await;
    let (_server, client) = start(&broker).await;
    client
        .batch_execute(
            r#"CREATE MIRROR TABLE accounts (id BIGINT, name VARCHAR(20), PRIMARY KEY (id))
                 FROM k."accounts" FORMAT DEBEZIUM;
               REFRESH MIRROR TABLE accounts;"#,
        )
        .await
        .unwrap();
    assert_eq!(
        text_rows(&client, "SELECT id, name FROM accounts ORDER BY id").await,
        vec![vec![Some("2".into()), Some("bea".into())]]
    );
    assert_eq!(
        text_rows(
            &client,
            "SELECT position, error_code FROM sys_stream_scan_errors WHERE mv_name = 'accounts'"
        )
        .await,
        vec![vec![Some("7".into()), Some("invalid_json".into())]]
    );
}
