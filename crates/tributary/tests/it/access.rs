//! Users, groups and grants, checked over the wire as each user: every statement kind is
//! refused with 42501 naming the object until the privilege is granted, and again once it
//! is revoked; the session survives each refusal.

use tokio_postgres::Client;
use tributary_testkit::TestServer;

pub(crate) async fn login(server: &TestServer, user: &str, password: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=dev",
            server.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs `sql` and expects SQLSTATE `code` with `words` in the message.
pub(crate) async fn refused(client: &Client, sql: &str, code: &str, words: &str) {
    let err = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} must be refused"));
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
    assert!(
        db.message().contains(words),
        "{sql}: {:?} should mention {words:?}",
        db.message()
    );
    // The session survives.
    client.batch_execute("SELECT 1").await.unwrap();
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_are_enforced_for_each_statement_kind() {
    let server = TestServer::start().await;
    let admin = server.client().await;
    admin
        .batch_execute(
            "CREATE SCHEMA website;
             CREATE TABLE website.clicks (id INT, url VARCHAR(100));
             INSERT INTO website.clicks VALUES (1, '/a'), (2, '/b');
             CREATE VIEW website.recent AS SELECT id FROM website.clicks;
             CREATE USER alice PASSWORD 'Alice1234';
             CREATE USER bob PASSWORD 'Bobby1234';
             CREATE GROUP bi_users WITH USER alice;",
        )
        .await
        .unwrap();
    refused(
        &admin,
        "CREATE USER weak PASSWORD 'short'",
        "22023",
        "8 to 64",
    )
    .await;
    refused(
        &admin,
        "CREATE USER alice PASSWORD 'Alice1234'",
        "42710",
        "alice",
    )
    .await;
    refused(
        &admin,
        "ALTER GROUP bi_users ADD USER nobody",
        "42704",
        "nobody",
    )
    .await;

    let alice = login(&server, "alice", "Alice1234").await;
    let bob = login(&server, "bob", "Bobby1234").await;

    // No USAGE on the schema, then no SELECT on the table.
    refused(
        &alice,
        "SELECT * FROM website.clicks",
        "42501",
        "schema website",
    )
    .await;
    admin
        .batch_execute("GRANT USAGE ON SCHEMA website TO GROUP bi_users")
        .await
        .unwrap();
    refused(
        &alice,
        "SELECT * FROM website.clicks",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &alice,
        "SELECT * FROM website.recent",
        "42501",
        "relation recent",
    )
    .await;
    // Catalog views show a user what it may use.
    assert_eq!(
        count(
            &alice,
            "SELECT count(*) FROM svv_tables WHERE table_schema = 'website'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM svv_tables WHERE table_schema = 'website'"
        )
        .await,
        2
    );
    // CREATE ... AS reads need SELECT too.
    refused(
        &alice,
        "CREATE TABLE public.copy AS SELECT * FROM website.clicks",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &alice,
        "CREATE VIEW public.v AS SELECT * FROM website.clicks",
        "42501",
        "relation clicks",
    )
    .await;
    admin
        .batch_execute("GRANT SELECT ON ALL TABLES IN SCHEMA website TO GROUP bi_users")
        .await
        .unwrap();
    assert_eq!(
        count(&alice, "SELECT count(*) FROM website.clicks").await,
        2
    );
    assert_eq!(
        count(
            &alice,
            "SELECT count(*) FROM svv_tables WHERE table_schema = 'website'"
        )
        .await,
        2
    );
    assert_eq!(
        count(&alice, "SELECT count(*) FROM website.recent").await,
        2
    );
    // A subquery and a CTE are checked too; bob is outside the group.
    refused(
        &bob,
        "WITH c AS (SELECT id FROM website.clicks) SELECT count(*) FROM c",
        "42501",
        "schema website",
    )
    .await;

    // Writes need their own privileges.
    refused(
        &alice,
        "INSERT INTO website.clicks VALUES (3, '/c')",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &alice,
        "UPDATE website.clicks SET url = '/z'",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &alice,
        "DELETE FROM website.clicks WHERE id = 1",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &alice,
        "TRUNCATE website.clicks",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &alice,
        "MERGE INTO website.clicks USING website.recent r ON clicks.id = r.id \
         WHEN MATCHED THEN DELETE",
        "42501",
        "relation clicks",
    )
    .await;
    // DDL: CREATE on the schema, ownership of the table, superuser for users.
    refused(
        &alice,
        "CREATE TABLE website.mine (x INT)",
        "42501",
        "schema website",
    )
    .await;
    refused(
        &alice,
        "DROP TABLE website.clicks",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &alice,
        "ALTER TABLE website.clicks ADD COLUMN x INT",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &alice,
        "CREATE USER eve PASSWORD 'Evelyn123'",
        "42501",
        "superuser",
    )
    .await;
    refused(
        &alice,
        "GRANT SELECT ON website.clicks TO bob",
        "42501",
        "owner",
    )
    .await;
    refused(&alice, "CREATE SCHEMA hers", "42501", "database dev").await;
    // Everyone may create in public, and owns what they create.
    alice
        .batch_execute(
            "CREATE TABLE public.notes (n INT); INSERT INTO public.notes VALUES (1); \
             GRANT SELECT ON public.notes TO bob",
        )
        .await
        .unwrap();
    assert_eq!(count(&bob, "SELECT count(*) FROM public.notes").await, 1);
    refused(&bob, "DELETE FROM public.notes", "42501", "relation notes").await;

    admin
        .batch_execute(
            "GRANT USAGE ON SCHEMA website TO bob; \
             GRANT INSERT, UPDATE ON website.clicks TO bob",
        )
        .await
        .unwrap();
    bob.batch_execute("INSERT INTO website.clicks VALUES (3, '/c')")
        .await
        .unwrap();
    // UPDATE ... WHERE reads the table, but the privilege checked is UPDATE.
    bob.batch_execute("UPDATE website.clicks SET url = '/d' WHERE id = 3")
        .await
        .unwrap();
    refused(
        &bob,
        "SELECT * FROM website.clicks",
        "42501",
        "relation clicks",
    )
    .await;
    refused(
        &bob,
        "INSERT INTO website.clicks SELECT * FROM website.clicks",
        "42501",
        "relation clicks",
    )
    .await;

    // Procedures: EXECUTE, and SECURITY DEFINER runs with the owner's privileges.
    admin
        .batch_execute(
            "CREATE PROCEDURE public.add_click(u VARCHAR) AS $$
             BEGIN INSERT INTO website.clicks VALUES (100, u); END;
             $$ LANGUAGE plpgsql SECURITY DEFINER;
             CREATE PROCEDURE public.add_click_as_caller(u VARCHAR) AS $$
             BEGIN INSERT INTO website.clicks VALUES (101, u); END;
             $$ LANGUAGE plpgsql;",
        )
        .await
        .unwrap();
    refused(&alice, "CALL public.add_click('/p')", "42501", "procedure").await;
    admin
        .batch_execute(
            "GRANT EXECUTE ON PROCEDURE public.add_click(varchar) TO alice; \
             GRANT EXECUTE ON PROCEDURE public.add_click_as_caller TO alice",
        )
        .await
        .unwrap();
    alice
        .batch_execute("CALL public.add_click('/p')")
        .await
        .unwrap();
    refused(
        &alice,
        "CALL public.add_click_as_caller('/q')",
        "42501",
        "relation clicks",
    )
    .await;
    assert_eq!(
        count(&alice, "SELECT count(*) FROM website.clicks WHERE id = 100").await,
        1
    );

    // REVOKE takes effect for the next statement; so does leaving the group.
    admin
        .batch_execute("REVOKE SELECT ON ALL TABLES IN SCHEMA website FROM GROUP bi_users")
        .await
        .unwrap();
    refused(
        &alice,
        "SELECT * FROM website.clicks",
        "42501",
        "relation clicks",
    )
    .await;
    admin
        .batch_execute(
            "GRANT SELECT ON website.clicks TO GROUP bi_users; \
             ALTER GROUP bi_users DROP USER alice",
        )
        .await
        .unwrap();
    refused(
        &alice,
        "SELECT * FROM website.clicks",
        "42501",
        "schema website",
    )
    .await;
    admin
        .batch_execute("ALTER GROUP bi_users ADD USER alice")
        .await
        .unwrap();
    assert_eq!(
        count(&alice, "SELECT count(*) FROM website.clicks").await,
        4
    );

    // Ownership moves with ALTER ... OWNER TO; an owner cannot be dropped.
    admin
        .batch_execute("ALTER TABLE website.clicks OWNER TO alice")
        .await
        .unwrap();
    alice
        .batch_execute("DELETE FROM website.clicks WHERE id = 100")
        .await
        .unwrap();
    refused(&admin, "DROP USER alice", "2BP01", "owns").await;
    // public.notes is alice's: admin (a superuser) may drop it.
    admin
        .batch_execute("ALTER TABLE website.clicks OWNER TO admin")
        .await
        .unwrap();
    admin
        .batch_execute("DROP TABLE public.notes")
        .await
        .unwrap();
    admin.batch_execute("DROP USER alice").await.unwrap();
    let groups: i64 = count(
        &admin,
        "SELECT count(*) FROM pg_group WHERE groname = 'bi_users'",
    )
    .await;
    assert_eq!(groups, 1);
    refused(&admin, "DROP GROUP nosuch", "42704", "nosuch").await;
    admin.batch_execute("DROP GROUP bi_users").await.unwrap();
    server.stop().await;
}

/// Queries across databases of one instance read with three-part names; writes are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_databases_are_read_only_by_three_part_names() {
    let server = TestServer::start().await;
    let admin = server.client().await;
    admin.batch_execute("CREATE DATABASE sales").await.unwrap();
    let (sales, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=admin dbname=sales",
            server.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sales
        .batch_execute(
            "CREATE TABLE public.orders (id INT); INSERT INTO public.orders VALUES (1), (2)",
        )
        .await
        .unwrap();
    admin
        .batch_execute("CREATE TABLE public.local (id INT); INSERT INTO public.local VALUES (2)")
        .await
        .unwrap();
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM sales.public.orders o JOIN public.local l ON l.id = o.id"
        )
        .await,
        1
    );
    refused(
        &admin,
        "INSERT INTO sales.public.orders VALUES (3)",
        "0A000",
        "read-only",
    )
    .await;
    refused(
        &admin,
        "DELETE FROM sales.public.orders",
        "0A000",
        "read-only",
    )
    .await;
    server.stop().await;
}
