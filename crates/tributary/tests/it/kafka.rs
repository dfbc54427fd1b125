//! Kafka sources against a real Kafka-compatible broker (tansu): an external schema FROM
//! KAFKA, a streaming view over a topic with Redshift's Kafka metadata columns, refreshes that
//! read each record exactly once across partitions, and a Debezium mirror fed by a topic
//! (tombstones included).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tributary_sql::StreamingSettings;
use tributary_testkit::{Tansu, TestServer};

use crate::cdc::text_rows;
use crate::streaming::count;

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
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("message.timeout.ms", "10000")
        .create()
        .expect("a producer")
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
