//! An error storm: hundreds of bad statements, then good ones still answer.

use tributary_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_storm_leaves_session_and_server_working() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute("CREATE TABLE t (a INT NOT NULL, s VARCHAR(3))")
        .await
        .unwrap();
    let bad = [
        ("SELEC 1", "42601"),
        ("SELECT * FROM missing", "42P01"),
        ("SELECT nope FROM t", "42703"),
        ("SELECT 1/0", "22012"),
        ("INSERT INTO t (s) VALUES ('x')", "23502"),
        ("INSERT INTO t VALUES (1, 'long')", "22001"),
        ("INSERT INTO t VALUES ('x', 'y')", "22P02"),
        ("CREATE TABLE t (b INT)", "42P07"),
        ("SET nonsense = 1", "42704"),
        ("DELETE FROM t RETURNING a", "0A000"),
        ("UPDATE t SET a = 'x'", "22P02"),
        ("COPY t FROM 'file:///nonexistent/x'", "58P01"),
        ("", ""),
        (";;;", ""),
        ("SELECT '", "42601"),
        ("CREATE TABLE x (a NOTATYPE)", "42704"),
    ];
    for round in 0..30 {
        for (sql, code) in bad {
            match client.simple_query(sql).await {
                Ok(_) => assert!(
                    code.is_empty(),
                    "round {round}: {sql:?} should fail with {code}"
                ),
                Err(err) => {
                    let db = err
                        .as_db_error()
                        .unwrap_or_else(|| panic!("{sql:?}: not a server error: {err}"));
                    assert_eq!(db.code().code(), code, "{sql:?}: {}", db.message());
                }
            }
        }
    }
    // The same session still works, and so does a new one.
    client
        .batch_execute("INSERT INTO t VALUES (7, 'ok')")
        .await
        .unwrap();
    let other = server.client().await;
    let row = other.query_one("SELECT a, s FROM t", &[]).await.unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (7, "ok".to_string())
    );
}
