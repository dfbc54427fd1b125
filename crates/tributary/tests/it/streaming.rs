//! Streaming materialized views over Kinesis-compatible servers (kinesalite, kinesis-local):
//! the statement forms, the seeds' statements as written, bad records, resharding and kill -9.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ScalingType, StreamStatus};
use tributary_sql::StreamingSettings;
use tributary_testkit::{KinesisFlavor, KinesisServer, TestServer};

use crate::durability::{connect, spawn_server};

pub(crate) async fn kinesis(endpoint: &str) -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    Client::from_conf(config)
}

async fn wait_active(client: &Client, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .expect("describe stream");
        let status = summary
            .stream_description_summary()
            .map(|d| d.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream} never became active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn create_stream(client: &Client, stream: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream");
    wait_active(client, stream).await;
}

/// Puts records (partition key, data) in PutRecords calls of up to 500, retrying records the
/// server throttled.
pub(crate) async fn put(client: &Client, stream: &str, records: Vec<(String, Vec<u8>)>) {
    for chunk in records.chunks(500) {
        let mut pending: Vec<(String, Vec<u8>)> = chunk.to_vec();
        while !pending.is_empty() {
            let entries = pending
                .iter()
                .map(|(key, data)| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(key)
                        .data(Blob::new(data.clone()))
                        .build()
                        .expect("entry")
                })
                .collect::<Vec<_>>();
            let output = client
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries))
                .send()
                .await
                .expect("put records");
            let failed: Vec<(String, Vec<u8>)> = output
                .records()
                .iter()
                .zip(&pending)
                .filter(|(result, _)| result.error_code().is_some())
                .map(|(_, record)| record.clone())
                .collect();
            if !failed.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            pending = failed;
        }
    }
}

fn json_records(range: std::ops::Range<i64>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            let body = format!(
                r#"{{"id": {i}, "player": "p{i}", "region": "r{}", "action": "{}"}}"#,
                i % 3,
                if i % 2 == 0 { "entered shop" } else { "left" }
            );
            (format!("key-{i}"), body.into_bytes())
        })
        .collect()
}

pub(crate) async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Waits until `sql` (a count) returns `expected`.
pub(crate) async fn wait_for_count(client: &tokio_postgres::Client, sql: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = count(client, sql).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {found} rows, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn settings(endpoint: &str) -> StreamingSettings {
    StreamingSettings {
        kinesis_endpoint: Some(endpoint.to_string()),
        ..Default::default()
    }
}

async fn statement_forms(flavor: KinesisFlavor) {
    let kinesis_server = KinesisServer::start(flavor);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    create_stream(&kinesis, "Game-Events", 2).await;
    let server = TestServer::start_streaming(settings(&endpoint)).await;
    let client = server.client().await;

    client
        .batch_execute(
            "CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default;
             CREATE EXTERNAL SCHEMA kds_west FROM KINESIS REGION 'us-east-1' IAM_ROLE 'arn:aws:iam::0123456789:role/streaming';",
        )
        .await
        .expect("external schemas");
    let schemas = client
        .query(
            "SELECT schemaname, esoptions FROM svv_external_schemas ORDER BY schemaname",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(schemas.len(), 2);
    assert_eq!(schemas[0].get::<_, String>(0), "kds");
    assert!(
        schemas[1]
            .get::<_, String>(1)
            .contains("arn:aws:iam::0123456789:role/streaming")
    );

    put(&kinesis, "Game-Events", json_records(0..100)).await;
    put(
        &kinesis,
        "Game-Events",
        vec![("bad".into(), b"not json".to_vec())],
    )
    .await;

    // Manual refresh, the DESIGN's form: the quoted, case-sensitive name with a dash.
    client
        .batch_execute(
            r#"CREATE MATERIALIZED VIEW game_events BACKUP NO DISTKEY(partition_key) SORTKEY(approximate_arrival_timestamp) AS
                 SELECT approximate_arrival_timestamp, partition_key, shard_id, sequence_number, refresh_time,
                        JSON_PARSE(kinesis_data) AS payload
                 FROM kds."Game-Events" WHERE CAN_JSON_PARSE(kinesis_data);"#,
        )
        .await
        .expect("create view");
    assert_eq!(count(&client, "SELECT count(*) FROM game_events").await, 0);
    client
        .batch_execute("REFRESH MATERIALIZED VIEW game_events")
        .await
        .expect("refresh");
    assert_eq!(
        count(&client, "SELECT count(*) FROM game_events").await,
        100
    );
    // The metadata columns are filled, and the payload is SUPER text.
    let row = client
        .query_one(
            "SELECT partition_key, shard_id, sequence_number, payload FROM game_events WHERE partition_key = 'key-7'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, String>(1).starts_with("shardId-"));
    assert!(!row.get::<_, String>(2).is_empty());
    assert!(row.get::<_, String>(3).contains("\"player\":\"p7\""));
    let types = client
        .query(
            "SELECT column_name, data_type FROM svv_columns WHERE table_name = 'game_events' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap();
    let payload_type: String = types.last().unwrap().get(1);
    assert_eq!(payload_type, "super");

    // A second refresh resumes where the first stopped: nothing is read twice.
    put(&kinesis, "Game-Events", json_records(100..150)).await;
    client
        .batch_execute("REFRESH MATERIALIZED VIEW game_events")
        .await
        .unwrap();
    assert_eq!(
        count(&client, "SELECT count(*) FROM game_events").await,
        150
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT sequence_number) FROM game_events"
        )
        .await,
        150
    );

    // A second view on the same stream, with the preview-era column names, AUTO REFRESH.
    client
        .batch_execute(
            r#"CREATE MATERIALIZED VIEW shop_visits AUTO REFRESH YES AS
                 SELECT ApproximateArrivalTimestamp, SequenceNumber, PartitionKey,
                        json_extract_path_text(from_varbyte(Data, 'utf-8'), 'player') AS player
                 FROM kds."Game-Events"
                 WHERE can_json_parse(Data)
                   AND json_extract_path_text(from_varbyte(Data, 'utf-8'), 'action') = 'entered shop';"#,
        )
        .await
        .expect("auto view");
    wait_for_count(&client, "SELECT count(*) FROM shop_visits", 75).await;
    put(&kinesis, "Game-Events", json_records(150..160)).await;
    wait_for_count(&client, "SELECT count(*) FROM shop_visits", 80).await;
    let info = client
        .query(
            "SELECT name, autorefresh FROM stv_mv_info ORDER BY name",
            &[],
        )
        .await
        .unwrap();
    let info: Vec<(String, String)> = info.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        info,
        vec![
            ("game_events".to_string(), "f".to_string()),
            ("shop_visits".to_string(), "t".to_string())
        ]
    );

    // AUTO REFRESH NO stops ingestion; YES resumes it from the committed positions.
    client
        .batch_execute("ALTER MATERIALIZED VIEW shop_visits AUTO REFRESH NO")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    put(&kinesis, "Game-Events", json_records(160..170)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(count(&client, "SELECT count(*) FROM shop_visits").await, 80);
    client
        .batch_execute("ALTER MATERIALIZED VIEW shop_visits AUTO REFRESH YES")
        .await
        .unwrap();
    wait_for_count(&client, "SELECT count(*) FROM shop_visits", 85).await;

    // The system views.
    let states = count(
        &client,
        "SELECT count(*) FROM sys_stream_scan_states WHERE mv_name = 'game_events' AND position IS NOT NULL",
    )
    .await;
    assert_eq!(states, 2, "one committed position per shard");
    let lag = count(
        &client,
        "SELECT count(*) FROM sys_stream_lag WHERE mv_name = 'shop_visits'",
    )
    .await;
    assert_eq!(lag, 2);
    let history = count(
        &client,
        "SELECT count(*) FROM sys_mv_refresh_history WHERE mv_name = 'game_events' AND refresh_type = 'Manual' AND status LIKE 'Refresh successfully%'",
    )
    .await;
    assert_eq!(history, 2);

    // A view over a (streaming) view is recomputed by REFRESH, not read from the stream; a
    // missing stream fails the refresh.
    client
        .batch_execute("CREATE MATERIALIZED VIEW over_view AS SELECT * FROM game_events")
        .await
        .unwrap();
    assert_eq!(
        count(&client, "SELECT count(*) FROM over_view").await,
        count(&client, "SELECT count(*) FROM game_events").await
    );
    client
        .batch_execute(r#"CREATE MATERIALIZED VIEW missing AS SELECT * FROM kds."no-such-stream""#)
        .await
        .unwrap();
    let err = client
        .batch_execute("REFRESH MATERIALIZED VIEW missing")
        .await
        .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("no-such-stream"), "{message}");
    // The session survives.
    assert_eq!(
        count(&client, "SELECT count(*) FROM game_events").await,
        150
    );

    // DROP MATERIALIZED VIEW stops ingestion and removes the view; DROP SCHEMA the schema.
    let err = client
        .batch_execute("DROP TABLE shop_visits")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42809", "{err}");
    client
        .batch_execute(
            "DROP MATERIALIZED VIEW shop_visits; DROP MATERIALIZED VIEW game_events; DROP MATERIALIZED VIEW missing; DROP SCHEMA kds_west",
        )
        .await
        .expect("drop");
    assert_eq!(
        count(&client, "SELECT count(*) FROM svv_external_schemas").await,
        1
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_forms_against_kinesalite() {
    statement_forms(KinesisFlavor::Kinesalite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_forms_against_kinesis_local() {
    statement_forms(KinesisFlavor::KinesisLocal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_forms_against_the_embedded_stream_service() {
    statement_forms(KinesisFlavor::Embedded).await;
}

/// The streaming statements of seeds 000, 002 and 003 as written (the role ARNs and stream
/// names the captures lost are filled in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_statements_run_as_written() {
    seed_statements_run_as_written_against(KinesisFlavor::Kinesalite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_statements_run_as_written_on_the_embedded_stream_service() {
    seed_statements_run_as_written_against(KinesisFlavor::Embedded).await;
}

async fn seed_statements_run_as_written_against(flavor: KinesisFlavor) {
    let kinesis_server = KinesisServer::start(flavor);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    for stream in ["actions", "cart", "my_stream_name", "hubert-redshift"] {
        create_stream(&kinesis, stream, 1).await;
    }
    put(&kinesis, "actions", json_records(0..10)).await;
    let cart: Vec<(String, Vec<u8>)> = (1..=6)
        .map(|seq| {
            let op = if seq == 6 { "D" } else if seq > 3 { "U" } else { "I" };
            let body = format!(
                r#"{{"id": {}, "user_id": 443, "current_price": 22.98, "no_items": {seq}, "checked_out": 0, "update_date": "2021-11-05 23:11", "op": "{op}"}}"#,
                8320 + seq % 3
            );
            (seq.to_string(), body.into_bytes())
        })
        .collect();
    put(&kinesis, "cart", cart).await;
    put(&kinesis, "my_stream_name", json_records(0..5)).await;
    let debezium = r#"{"before": null, "after": {"userid": 1, "first_name": "Ada", "last_name": "Lovelace", "phone": "555"}, "op": "c"}"#;
    put(
        &kinesis,
        "hubert-redshift",
        vec![("1".into(), debezium.as_bytes().to_vec())],
    )
    .await;

    let server = TestServer::start_streaming(settings(&endpoint)).await;
    let client = server.client().await;
    // Seed 000: the external schema, the shredding view over MySchema.Actions, and Etleap's
    // staging view (its DISTKEY / SORTKEY as the text describes them).
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA MySchema
FROM Kinesis
IAM_ROLE default;
CREATE MATERIALIZED VIEW MyView AS
SELECT ApproximateArrivalTimestamp, SequenceNumber,
   json_extract_path_text(from_varbyte(Data, 'utf-8'), 'player') as Player,
   json_extract_path_text(from_varbyte(Data, 'utf-8'), 'region') as Region
FROM MySchema.Actions
WHERE json_extract_path_text(from_varbyte(Data, 'utf-8'), 'action') = 'entered shop';
REFRESH MATERIALIZED VIEW MyView;
CREATE EXTERNAL SCHEMA etleap_stream
FROM KINESIS
IAM_ROLE 'arn:aws:iam::0123456789:role/etleap';
CREATE MATERIALIZED VIEW cart_staging DISTKEY(id) SORTKEY(etleap_sequence_no) AS
SELECT
	CAST(PartitionKey as bigint) AS etleap_sequence_no,
	CAST(JSON_EXTRACT_PATH_TEXT(from_varbyte(Data, 'utf-8'), 'id') as bigint) AS id,
	JSON_PARSE(FROM_VARBYTE(Data, 'utf-8')) AS Data
FROM etleap_stream."cart";
REFRESH MATERIALIZED VIEW cart_staging;"#,
        )
        .await
        .expect("seed 000");
    assert_eq!(count(&client, "SELECT count(*) FROM MyView").await, 5);
    let players = client
        .query("SELECT player, region FROM myview ORDER BY player", &[])
        .await
        .unwrap();
    assert_eq!(players[0].get::<_, String>(0), "p0");
    assert_eq!(players[0].get::<_, String>(1), "r0");
    let cart = client
        .query(
            "SELECT etleap_sequence_no, id FROM cart_staging ORDER BY etleap_sequence_no",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cart.len(), 6);
    assert_eq!(cart[0].get::<_, i64>(0), 1);
    assert_eq!(cart[0].get::<_, i64>(1), 8321);

    // Seed 002: the getting-started statements.
    client
        .batch_execute(
            "CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE 'arn:aws:iam::0123456789:role/redshift-streaming';
             CREATE MATERIALIZED VIEW my_view AUTO REFRESH YES AS SELECT approximate_arrival_timestamp, partition_key, shard_id, sequence_number, refresh_time, JSON_PARSE(kinesis_data) as kinesis_data FROM kds.my_stream_name WHERE CAN_JSON_PARSE(kinesis_data);",
        )
        .await
        .expect("seed 002");
    wait_for_count(&client, "select count(*) from my_view", 5).await;
    client
        .batch_execute("select * from my_view;")
        .await
        .unwrap();

    // Seed 003: Decodable's view, with and without its optional WHERE clause.
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA postgres_users_schema
FROM KINESIS
IAM_ROLE 'arn:aws:kinesis:*:0123456789:stream/*';
CREATE MATERIALIZED VIEW postgres_users_schema_view AS
SELECT approximate_arrival_timestamp,
JSON_PARSE(from_varbyte(kinesis_data , 'utf-8')) as Data
FROM postgres_users_schema."hubert-redshift"
--WHERE is_utf8(Data) AND is_valid_json(from_varbyte(Data, 'utf-8'));
;
CREATE MATERIALIZED VIEW postgres_users_checked AS
SELECT approximate_arrival_timestamp,
JSON_PARSE(from_varbyte(kinesis_data , 'utf-8')) as Data
FROM postgres_users_schema."hubert-redshift"
WHERE is_utf8(Data) AND is_valid_json(from_varbyte(Data, 'utf-8'));
REFRESH MATERIALIZED VIEW postgres_users_schema_view;
REFRESH MATERIALIZED VIEW postgres_users_checked;"#,
        )
        .await
        .expect("seed 003");
    assert_eq!(
        count(&client, "SELECT count(*) FROM postgres_users_schema_view").await,
        1
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM postgres_users_checked").await,
        1
    );
    server.stop().await;
}

/// Every bad record is in sys_stream_scan_errors and every good one in the view; ingestion
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_skipped_and_logged() {
    bad_records_are_skipped_and_logged_against(KinesisFlavor::Kinesalite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_skipped_and_logged_on_the_embedded_stream_service() {
    bad_records_are_skipped_and_logged_against(KinesisFlavor::Embedded).await;
}

async fn bad_records_are_skipped_and_logged_against(flavor: KinesisFlavor) {
    let kinesis_server = KinesisServer::start(flavor);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    create_stream(&kinesis, "events", 2).await;
    let mut records = json_records(0..200);
    // Not UTF-8, not JSON, a failing cast, and one over the size limit.
    records.insert(17, ("bad-utf8".into(), vec![0xff, 0xfe, b'{', b'}']));
    records.insert(60, ("bad-json".into(), b"{\"id\": 3,".to_vec()));
    records.insert(
        99,
        (
            "bad-cast".into(),
            br#"{"id": "seven", "player": "x", "region": "y", "action": "z"}"#.to_vec(),
        ),
    );
    let big = format!(r#"{{"id": 1000, "pad": "{}"}}"#, "x".repeat(3000));
    records.insert(150, ("too-big".into(), big.into_bytes()));
    put(&kinesis, "events", records).await;

    let server = TestServer::start_streaming(StreamingSettings {
        max_record_bytes: 2000,
        ..settings(&endpoint)
    })
    .await;
    let client = server.client().await;
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default;
               CREATE MATERIALIZED VIEW events_mv AS
                 SELECT partition_key,
                        CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS int) AS id,
                        JSON_PARSE(kinesis_data) AS payload
                 FROM kds.events;"#,
        )
        .await
        .unwrap();
    client
        .batch_execute("REFRESH MATERIALIZED VIEW events_mv")
        .await
        .expect("a refresh with bad records succeeds");
    assert_eq!(count(&client, "SELECT count(*) FROM events_mv").await, 200);
    assert_eq!(
        count(&client, "SELECT count(DISTINCT id) FROM events_mv").await,
        200
    );
    let errors = client
        .query(
            "SELECT shard_id, position, error_code, error_reason, record_prefix FROM sys_stream_scan_errors WHERE mv_name = 'events_mv' ORDER BY error_code",
            &[],
        )
        .await
        .unwrap();
    let codes: Vec<String> = errors.iter().map(|r| r.get(2)).collect();
    assert_eq!(
        codes,
        vec![
            "record_too_large",
            "transform_failed",
            "transform_failed",
            "transform_failed"
        ],
        "{errors:?}"
    );
    for row in &errors {
        assert!(row.get::<_, String>(0).starts_with("shardId-"));
        assert!(!row.get::<_, String>(1).is_empty());
        assert!(!row.get::<_, String>(3).is_empty());
    }
    let reasons: Vec<String> = errors.iter().map(|r| r.get(3)).collect();
    assert!(reasons.iter().any(|r| r.contains("UTF-8")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("2000")), "{reasons:?}");
    let status: String = client
        .query_one(
            "SELECT status FROM sys_mv_refresh_history WHERE mv_name = 'events_mv'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(status.contains("4 record(s) skipped"), "{status}");

    // More records after the bad ones keep flowing; the errors are not logged twice.
    put(&kinesis, "events", json_records(200..210)).await;
    client
        .batch_execute("REFRESH MATERIALIZED VIEW events_mv")
        .await
        .unwrap();
    assert_eq!(count(&client, "SELECT count(*) FROM events_mv").await, 210);
    assert_eq!(
        count(&client, "SELECT count(*) FROM sys_stream_scan_errors").await,
        4
    );

    // A user who is not a superuser sees the rows of the views it may read, as in Redshift.
    client
        .batch_execute("CREATE USER viewer PASSWORD 'Viewer123'")
        .await
        .unwrap();
    let viewer = crate::access::login(&server, "viewer", "Viewer123").await;
    let views = [
        "sys_stream_scan_errors",
        "sys_mv_refresh_history",
        "sys_stream_lag",
        "sys_stream_scan_states",
        "stv_mv_info",
    ];
    for view in views {
        let sql = format!("SELECT count(*) FROM {view}");
        assert!(count(&client, &sql).await > 0, "{sql} as the superuser");
        assert_eq!(count(&viewer, &sql).await, 0, "{sql} before the grant");
    }
    client
        .batch_execute("GRANT SELECT ON events_mv TO viewer")
        .await
        .unwrap();
    for view in views {
        let sql = format!("SELECT count(*) FROM {view}");
        assert_eq!(
            count(&viewer, &sql).await,
            count(&client, &sql).await,
            "{sql} after the grant"
        );
    }
    server.stop().await;
}

/// After a split and a merge, each parent is read to its end before its children, and every
/// record is in the view once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_reads_parents_before_children() {
    let kinesis_server = KinesisServer::start(KinesisFlavor::KinesisLocal);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    create_stream(&kinesis, "orders", 1).await;
    let server = TestServer::start_streaming(settings(&endpoint)).await;
    let client = server.client().await;
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default;
               CREATE MATERIALIZED VIEW orders_mv AUTO REFRESH YES AS
                 SELECT shard_id, sequence_number, approximate_arrival_timestamp,
                        CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS bigint) AS id
                 FROM kds.orders;"#,
        )
        .await
        .unwrap();
    put(&kinesis, "orders", json_records(0..100)).await;
    wait_for_count(&client, "SELECT count(*) FROM orders_mv", 100).await;
    // Split the one shard into two, then write to the children.
    kinesis
        .update_shard_count()
        .stream_name("orders")
        .target_shard_count(2)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .expect("split");
    wait_active(&kinesis, "orders").await;
    put(&kinesis, "orders", json_records(100..200)).await;
    // Merge back to one.
    kinesis
        .update_shard_count()
        .stream_name("orders")
        .target_shard_count(1)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .expect("merge");
    wait_active(&kinesis, "orders").await;
    put(&kinesis, "orders", json_records(200..300)).await;
    wait_for_count(&client, "SELECT count(*) FROM orders_mv", 300).await;
    assert_eq!(
        count(&client, "SELECT count(DISTINCT id) FROM orders_mv").await,
        300
    );
    let shards = count(&client, "SELECT count(DISTINCT shard_id) FROM orders_mv").await;
    assert!(
        shards >= 4,
        "records came from the parent and its children: {shards}"
    );
    let ended = count(
        &client,
        "SELECT count(*) FROM sys_stream_scan_states WHERE mv_name = 'orders_mv' AND position = 'SHARD_END'",
    )
    .await;
    assert!(
        ended >= 3,
        "the parent and the split children were read to their end: {ended}"
    );
    server.stop().await;
}

/// kill -9 several times while a view ingests tens of thousands of records with unique ids;
/// after the last restart every id is in the view exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingestion_keeps_every_record_once() {
    const TOTAL: i64 = 20_000;
    let kinesis_server = KinesisServer::start(KinesisFlavor::Kinesalite);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    create_stream(&kinesis, "clicks", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_string();
    let envs = [
        ("TRIBUTARY_KINESIS_ENDPOINT", endpoint.clone()),
        ("TRIBUTARY_REFRESH_INTERVAL_MS", "50".to_string()),
    ];
    let (mut child, port) = spawn_server(&data, &envs);
    let client = connect(port).await;
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default;
               CREATE MATERIALIZED VIEW clicks_mv AUTO REFRESH YES AS
                 SELECT CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS bigint) AS id
                 FROM kds.clicks;"#,
        )
        .await
        .unwrap();
    let writer = {
        let kinesis = kinesis.clone();
        tokio::spawn(async move {
            for start in (0..TOTAL).step_by(2_000) {
                put(&kinesis, "clicks", json_records(start..start + 2_000)).await;
            }
        })
    };
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        child.kill().expect("kill -9");
        child.wait().unwrap();
        let (restarted, port) = spawn_server(&data, &envs);
        child = restarted;
        let _ = port;
    }
    writer.await.unwrap();
    // The last server: find its port again by restarting once more cleanly.
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, port) = spawn_server(&data, &envs);
    let client = connect(port).await;
    wait_for_count(&client, "SELECT count(*) FROM clicks_mv", TOTAL).await;
    assert_eq!(
        count(&client, "SELECT count(DISTINCT id) FROM clicks_mv").await,
        TOTAL
    );
    let ids: HashSet<i64> = client
        .query("SELECT id FROM clicks_mv", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len() as i64, TOTAL);
    assert!((0..TOTAL).all(|i| ids.contains(&i)));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// GROUP BY views are maintained incrementally: after several refreshes (and auto refresh)
/// they equal the same aggregation over every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregating_views_are_maintained_incrementally() {
    let kinesis_server = KinesisServer::start(KinesisFlavor::Kinesalite);
    let endpoint = kinesis_server.endpoint();
    let kinesis = kinesis(&endpoint).await;
    create_stream(&kinesis, "plays", 2).await;
    let server = TestServer::start_streaming(settings(&endpoint)).await;
    let client = server.client().await;
    client
        .batch_execute(
            r#"CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default;
               CREATE MATERIALIZED VIEW plays_raw AS
                 SELECT json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'region') AS region,
                        CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS bigint) AS id
                 FROM kds.plays;
               CREATE MATERIALIZED VIEW plays_by_region AS
                 SELECT json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'region') AS region,
                        count(*) AS plays,
                        sum(CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS bigint)) AS id_sum,
                        min(CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS bigint)) AS id_min,
                        max(CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS bigint)) AS id_max,
                        avg(CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS double precision)) AS id_avg
                 FROM kds.plays
                 GROUP BY 1;"#,
        )
        .await
        .expect("aggregating view");
    let expected = "SELECT region, count(*), sum(id), min(id), max(id), avg(CAST(id AS double precision)) FROM plays_raw GROUP BY region ORDER BY region";
    let actual =
        "SELECT region, plays, id_sum, id_min, id_max, id_avg FROM plays_by_region ORDER BY region";
    for (round, range) in [0..100, 100..130, 130..400].into_iter().enumerate() {
        put(&kinesis, "plays", json_records(range)).await;
        client
            .batch_execute(
                "REFRESH MATERIALIZED VIEW plays_raw; REFRESH MATERIALIZED VIEW plays_by_region;",
            )
            .await
            .unwrap();
        let render = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.iter()
                .map(|r| {
                    format!(
                        "{} {} {} {} {} {:.6}",
                        r.get::<_, String>(0),
                        r.get::<_, i64>(1),
                        r.get::<_, i64>(2),
                        r.get::<_, i64>(3),
                        r.get::<_, i64>(4),
                        r.get::<_, f64>(5)
                    )
                })
                .collect()
        };
        let want = render(client.query(expected, &[]).await.unwrap());
        let got = render(client.query(actual, &[]).await.unwrap());
        assert_eq!(got, want, "after refresh {round}");
        assert_eq!(got.len(), 3);
    }
    // HAVING cannot be maintained incrementally, and says so.
    let err = client
        .batch_execute(
            "CREATE MATERIALIZED VIEW bad AS SELECT partition_key, count(*) FROM kds.plays GROUP BY 1 HAVING count(*) > 1",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    server.stop().await;
}
