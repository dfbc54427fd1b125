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

/// DECIMAL(38) values of more digits than the wire encoder's decimal type holds (28) come
/// back whole as text; in binary results they fail with 22003, and the session and the
/// server go on (the failing row once sent the encoder into an endless loop of errors that
/// filled the server's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_decimals_are_sent_whole_as_text_and_fail_cleanly_in_binary() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let wide = "SELECT CAST('12345678901234567890123456789012345678' AS DECIMAL(38,0)) AS d, \
                CAST('-1234567890123456789012345678901234.5678' AS DECIMAL(38,4)) AS e, \
                CAST(1.5 AS DECIMAL(10,2)) AS f";
    let rows = client.simple_query(wide).await.unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap();
    assert_eq!(row.get(0), Some("12345678901234567890123456789012345678"));
    assert_eq!(row.get(1), Some("-1234567890123456789012345678901234.5678"));
    assert_eq!(row.get(2), Some("1.50"));
    for _ in 0..3 {
        let err = client.query(wide, &[]).await.unwrap_err();
        let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(db.code().code(), "22003", "{}", db.message());
    }
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
}
