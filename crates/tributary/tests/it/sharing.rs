//! Data sharing between namespaces, as seed 004 runs it: two `tributary serve` processes with
//! their own data roots find each other through one namespace registry; the consumer reads
//! the producer's tables in place, with snapshot isolation, while the producer replaces them.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tributary_testkit::Moto;

use crate::access::refused;
use crate::durability::{ServerProcess, connect, spawn_server};

fn start(data: &std::path::Path, envs: &[(&str, String)]) -> (ServerProcess, u16) {
    spawn_server(data.to_str().unwrap(), envs)
}

async fn namespace(client: &Client) -> String {
    client
        .query_one("SELECT current_namespace", &[])
        .await
        .unwrap()
        .get(0)
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn login(port: u16, user: &str, password: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={password} dbname=dev"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Waits until `sql` returns `expected`, at most `limit`; returns how long it took.
async fn wait_for(client: &Client, sql: &str, expected: i64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = count(client, sql).await;
        if got == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{sql}: {got} instead of {expected} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_etl_to_bi_between_two_servers() {
    let registry = tempfile::tempdir().unwrap();
    let registry_url = format!("file://{}", registry.path().display());
    let producer_dir = tempfile::tempdir().unwrap();
    let consumer_dir = tempfile::tempdir().unwrap();
    let envs = [("TRIBUTARY_NAMESPACE_REGISTRY", registry_url.clone())];
    let (_producer_process, producer_port) = start(producer_dir.path(), &envs);
    let (_consumer_process, consumer_port) = start(consumer_dir.path(), &envs);
    let producer = connect(producer_port).await;
    let consumer = connect(consumer_port).await;

    // "we need the namespaces of both the producer and consumer clusters"
    let producer_namespace = namespace(&producer).await;
    let consumer_namespace = namespace(&consumer).await;
    assert_ne!(producer_namespace, consumer_namespace);

    producer
        .batch_execute(
            "CREATE SCHEMA website;
             CREATE TABLE website.clicks (id BIGINT, url VARCHAR(200), at TIMESTAMP);
             INSERT INTO website.clicks VALUES (1, '/home', '2026-01-01 00:00:00'),
                                               (2, '/cart', '2026-01-01 00:00:01');
             CREATE DATASHARE etl_to_bi;",
        )
        .await
        .unwrap();
    // The seed's statements, typographic quotes included.
    producer
        .batch_execute(&format!(
            "GRANT USAGE ON DATASHARE “etl_to_bi” TO NAMESPACE ‘{consumer_namespace}’;"
        ))
        .await
        .unwrap();
    consumer
        .batch_execute(&format!(
            "CREATE DATABASE “etl_to_bi” FROM DATASHARE “etl_to_bi” OF NAMESPACE ‘{producer_namespace}’;"
        ))
        .await
        .unwrap();
    producer
        .batch_execute(
            "ALTER DATASHARE “etl_to_bi” ADD SCHEMA “website”;
             ALTER DATASHARE “etl_to_bi” ADD TABLE “website”.”clicks”;",
        )
        .await
        .unwrap();
    consumer
        .batch_execute(
            "CREATE EXTERNAL SCHEMA website FROM REDSHIFT DATABASE 'etl_to_bi' SCHEMA 'website';
             CREATE GROUP bi_users;
             CREATE USER analyst PASSWORD 'Analyst123' IN GROUP bi_users;
             CREATE USER outsider PASSWORD 'Outsider123';
             GRANT USAGE ON SCHEMA “website” TO GROUP bi_users;",
        )
        .await
        .unwrap();

    // Both names reach the shared table; BI users read it, others are refused.
    assert_eq!(
        count(&consumer, "SELECT count(*) FROM etl_to_bi.website.clicks").await,
        2
    );
    let analyst = login(consumer_port, "analyst", "Analyst123").await;
    let outsider = login(consumer_port, "outsider", "Outsider123").await;
    assert_eq!(
        count(
            &analyst,
            "SELECT count(*) FROM website.clicks WHERE url LIKE '/%'"
        )
        .await,
        2
    );
    refused(
        &outsider,
        "SELECT * FROM website.clicks",
        "42501",
        "schema website",
    )
    .await;
    refused(
        &analyst,
        "SELECT * FROM etl_to_bi.website.clicks",
        "42501",
        "database etl_to_bi",
    )
    .await;
    // Writes through the shared database are refused, for the superuser too.
    refused(
        &consumer,
        "INSERT INTO etl_to_bi.website.clicks VALUES (9, '/x', NULL)",
        "0A000",
        "read-only",
    )
    .await;
    refused(
        &consumer,
        "DELETE FROM website.clicks",
        "0A000",
        "read-only",
    )
    .await;
    // A join with local data works.
    consumer
        .batch_execute(
            "CREATE TABLE public.pages (url VARCHAR(200), title VARCHAR(50));
             INSERT INTO public.pages VALUES ('/home', 'Home');",
        )
        .await
        .unwrap();
    let title: String = consumer
        .query_one(
            "SELECT p.title FROM website.clicks c JOIN public.pages p ON p.url = c.url",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(title, "Home");

    // New producer commits are visible to new consumer transactions within a second.
    producer
        .batch_execute("INSERT INTO website.clicks VALUES (3, '/pay', '2026-01-01 00:00:02')")
        .await
        .unwrap();
    let seen = wait_for(
        &analyst,
        "SELECT count(*) FROM website.clicks",
        3,
        Duration::from_secs(1),
    )
    .await;
    println!("a producer commit was visible on the consumer after {seen:?}");

    // Snapshot isolation: a consumer transaction keeps one producer state while the producer
    // replaces the table (seed 004's REMOVE, DROP, CREATE, ADD), and nothing blocks.
    analyst.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        count(&analyst, "SELECT count(*) FROM website.clicks").await,
        3
    );
    producer
        .batch_execute(
            "ALTER DATASHARE “etl_to_bi” REMOVE TABLE ”website”.”clicks”;
             DROP TABLE ”website”.”clicks”;
             CREATE TABLE ”website”.”clicks” (id BIGINT, url VARCHAR(200), at TIMESTAMP);
             INSERT INTO website.clicks SELECT n, '/re', NULL FROM (SELECT 1 AS n UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5) s;
             ALTER DATASHARE “etl_to_bi” ADD TABLE “website”.”clicks”;",
        )
        .await
        .unwrap();
    assert_eq!(
        count(&analyst, "SELECT count(*) FROM website.clicks").await,
        3,
        "the open transaction still reads the table it started with"
    );
    assert_eq!(
        count(&analyst, "SELECT sum(id) FROM website.clicks").await,
        6,
        "and its files are still there"
    );
    analyst.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        count(&analyst, "SELECT count(*) FROM website.clicks").await,
        5
    );

    // The producer's UPDATE and DELETE mark rows in deletion vectors of the shared files;
    // the consumer applies them.
    producer
        .batch_execute(
            "UPDATE website.clicks SET url = '/upd' WHERE id >= 4;
             BEGIN;
             DELETE FROM website.clicks WHERE id = 1;
             INSERT INTO website.clicks VALUES (1, '/again', NULL);
             COMMIT;",
        )
        .await
        .unwrap();
    wait_for(
        &analyst,
        "SELECT count(*) FROM website.clicks WHERE url IN ('/upd', '/again')",
        3,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        count(&analyst, "SELECT count(*) FROM website.clicks").await,
        5
    );

    // Heavy ingestion on the producer: a consumer transaction keeps its snapshot through
    // every commit, and the consumer's queries never wait for the writer.
    analyst.batch_execute("BEGIN").await.unwrap();
    let snapshot = count(&analyst, "SELECT count(*) FROM website.clicks").await;
    assert_eq!(snapshot, 5);
    let writer = connect(producer_port).await;
    let ingestion = tokio::spawn(async move {
        for _ in 0..20 {
            writer
                .batch_execute(
                    "INSERT INTO website.clicks \
                     SELECT value, '/bulk', NULL FROM generate_series(1, 5000)",
                )
                .await
                .unwrap();
        }
    });
    let mut reads = 0;
    while !ingestion.is_finished() {
        assert_eq!(
            count(&analyst, "SELECT count(*) FROM website.clicks").await,
            snapshot,
            "a consumer transaction reads one producer state"
        );
        reads += 1;
    }
    ingestion.await.unwrap();
    assert!(reads > 1, "the consumer read during the ingestion");
    analyst.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        count(&analyst, "SELECT count(*) FROM website.clicks").await,
        5 + 20 * 5000
    );
    println!("the consumer ran {reads} queries in one transaction during the ingestion");

    // The system views on both sides.
    let outbound: i64 = count(
        &producer,
        &format!(
            "SELECT count(*) FROM svv_datashares WHERE share_name = 'etl_to_bi' \
             AND share_type = 'OUTBOUND' AND producer_namespace = '{producer_namespace}'"
        ),
    )
    .await;
    assert_eq!(outbound, 1);
    assert_eq!(
        count(
            &producer,
            "SELECT count(*) FROM svv_datashare_objects WHERE object_name = 'website.clicks'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &producer,
            &format!(
                "SELECT count(*) FROM svv_datashare_consumers WHERE consumer_namespace = '{consumer_namespace}'"
            )
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &consumer,
            "SELECT count(*) FROM svv_datashares WHERE share_type = 'INBOUND' AND consumer_database = 'etl_to_bi'"
        )
        .await,
        1
    );
    // A user who is not a superuser sees the inbound shares whose database it may use.
    let inbound = "SELECT count(*) FROM svv_datashares WHERE share_type = 'INBOUND'";
    assert_eq!(count(&outsider, inbound).await, 0);
    consumer
        .batch_execute("GRANT USAGE ON DATABASE etl_to_bi TO outsider")
        .await
        .unwrap();
    assert_eq!(count(&outsider, inbound).await, 1);

    // Removing the table, then revoking the share, take effect for the next query.
    producer
        .batch_execute("ALTER DATASHARE etl_to_bi REMOVE TABLE website.clicks")
        .await
        .unwrap();
    refused(&analyst, "SELECT * FROM website.clicks", "42P01", "clicks").await;
    producer
        .batch_execute(&format!(
            "ALTER DATASHARE etl_to_bi ADD TABLE website.clicks; \
             REVOKE USAGE ON DATASHARE etl_to_bi FROM NAMESPACE '{consumer_namespace}'"
        ))
        .await
        .unwrap();
    let err = analyst
        .batch_execute("SELECT * FROM website.clicks")
        .await
        .expect_err("a revoked share is unreadable");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("no longer granted")),
        "{err:?}"
    );
    // Producer-side refusals.
    refused(
        &producer,
        "ALTER DATASHARE etl_to_bi ADD TABLE nosuch.t",
        "42000",
        "ADD SCHEMA",
    )
    .await;
    refused(
        &producer,
        "GRANT USAGE ON DATASHARE etl_to_bi TO NAMESPACE 'not-a-guid'",
        "22023",
        "GUID",
    )
    .await;
    refused(
        &consumer,
        &format!(
            "CREATE DATABASE again FROM DATASHARE etl_to_bi OF NAMESPACE '{producer_namespace}'"
        ),
        "42501",
        "has not granted",
    )
    .await;
}

/// The registry on S3 (moto): instances register there and consumers find producers there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_registry_on_s3() {
    let moto = Moto::start();
    moto.create_bucket("registry");
    let mut envs: Vec<(&str, String)> = crate::s3::aws_env(&moto).to_vec();
    envs.push((
        "TRIBUTARY_NAMESPACE_REGISTRY",
        "s3://registry/namespaces".to_string(),
    ));
    let producer_dir = tempfile::tempdir().unwrap();
    let consumer_dir = tempfile::tempdir().unwrap();
    let (_producer, producer_port) = start(producer_dir.path(), &envs);
    let (_consumer, consumer_port) = start(consumer_dir.path(), &envs);
    let p = connect(producer_port).await;
    let c = connect(consumer_port).await;
    let producer_namespace = namespace(&p).await;
    let consumer_namespace = namespace(&c).await;
    p.batch_execute(&format!(
        "CREATE TABLE public.events (id INT); INSERT INTO public.events VALUES (1), (2);
         CREATE DATASHARE s; ALTER DATASHARE s ADD SCHEMA public;
         ALTER DATASHARE s SET INCLUDENEW = TRUE FOR SCHEMA public;
         GRANT USAGE ON DATASHARE s TO NAMESPACE '{consumer_namespace}';"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "CREATE DATABASE shared FROM DATASHARE s OF NAMESPACE '{producer_namespace}'"
    ))
    .await
    .unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM shared.public.events").await,
        2
    );
    // INCLUDENEW: a table created later is shared without ADD TABLE.
    p.batch_execute("CREATE TABLE public.later (x INT); INSERT INTO public.later VALUES (7)")
        .await
        .unwrap();
    assert_eq!(count(&c, "SELECT sum(x) FROM shared.public.later").await, 7);
    refused(
        &c,
        "CREATE DATABASE other FROM DATASHARE s OF NAMESPACE '00000000-0000-0000-0000-000000000000'",
        "42704",
        "registry",
    )
    .await;
}
