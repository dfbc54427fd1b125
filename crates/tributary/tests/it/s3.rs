//! Tables in S3-compatible storage (moto), with put-if-absent commits, across a restart.

use tributary_testkit::Moto;

use crate::durability::{connect, spawn_server};

/// The AWS settings that point a server at moto.
pub fn aws_env(moto: &Moto) -> [(&'static str, String); 5] {
    [
        ("AWS_ENDPOINT_URL", moto.endpoint()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_live_in_s3_and_survive_restart() {
    let moto = Moto::start();
    moto.create_bucket("warehouse");
    let envs = aws_env(&moto);
    let location = "s3://warehouse/tributary";
    let (mut child, port) = spawn_server(location, &envs);
    let client = connect(port).await;
    client
        .batch_execute(
            "CREATE TABLE trips (id INT, city VARCHAR(20), fare DECIMAL(6,2));
             INSERT INTO trips VALUES (1, 'Lisbon', 12.50), (2, 'Porto', 8.00);
             INSERT INTO trips VALUES (3, 'Lisbon', 20.25);",
        )
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, port) = spawn_server(location, &envs);
    let client = connect(port).await;
    let rows = client
        .query(
            "SELECT city, count(*), sum(fare)::varchar FROM trips GROUP BY city ORDER BY city",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("Lisbon".to_string(), 2, "32.75".to_string()),
            ("Porto".to_string(), 1, "8.00".to_string())
        ]
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
