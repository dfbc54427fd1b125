//! Real client drivers against a started server: psql, psycopg 3, redshift_connector,
//! SQLAlchemy with sqlalchemy-redshift; and password authentication.

use std::process::Command;

use tributary_testkit::{TestServer, python, repo_root, require_program};
use tributary_wire::PasswordMethod;

fn run_python_check(script: &str, modules: &[&str], port: u16) {
    let python = python(modules);
    let path = repo_root().join("tests/clients").join(script);
    let output = Command::new(python)
        .arg(&path)
        .arg(port.to_string())
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{script} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() {
    let server = TestServer::start().await;
    run_python_check("psycopg_check.py", &["psycopg"], server.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redshift_connector() {
    let server = TestServer::start().await;
    run_python_check(
        "redshift_connector_check.py",
        &["redshift_connector"],
        server.port(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_redshift() {
    let server = TestServer::start().await;
    run_python_check(
        "sqlalchemy_check.py",
        &["sqlalchemy", "sqlalchemy_redshift", "psycopg2"],
        server.port(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .batch_execute("CREATE SCHEMA shop; CREATE TABLE shop.items (sku VARCHAR(12) NOT NULL, price DECIMAL(8,2)); CREATE TABLE things (id INT)")
        .await
        .unwrap();
    let psql = require_program("psql", "run: apt-get install postgresql-client");
    let run = |command: &str| {
        let output = Command::new(&psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port().to_string(),
                "-U",
                "admin",
                "-d",
                "dev",
                "-X",
                "-c",
                command,
            ])
            .output()
            .expect("run psql");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "psql {command}: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let dt = run("\\dt");
    assert!(dt.contains("things"), "\\dt:\n{dt}");
    let dn = run("\\dn");
    assert!(dn.contains("shop") && dn.contains("public"), "\\dn:\n{dn}");
    let d = run("\\d shop.items");
    assert!(
        d.contains("character varying(12)") && d.contains("numeric(8,2)") && d.contains("not null"),
        "\\d shop.items:\n{d}"
    );
    let d_all = run("\\d");
    assert!(d_all.contains("things"), "\\d:\n{d_all}");
    let select = run("SELECT 1 AS one");
    assert!(
        select.contains("one") && select.contains("(1 row)"),
        "{select}"
    );
}

async fn connect_with(
    port: u16,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = format!("host=127.0.0.1 port={port} user=admin dbname=dev");
    if let Some(password) = password {
        config.push_str(&format!(" password={password}"));
    }
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_required_once_set() {
    for method in [PasswordMethod::ScramSha256, PasswordMethod::Md5] {
        let dir = tempfile::tempdir().unwrap();
        let server =
            TestServer::start_at(dir.path().to_str().unwrap(), Some("s3cret"), method).await;
        let port = server.port();
        assert!(
            connect_with(port, None).await.is_err(),
            "{method:?}: no password must be refused"
        );
        assert!(
            connect_with(port, Some("wrong")).await.is_err(),
            "{method:?}: a wrong password must be refused"
        );
        let client = connect_with(port, Some("s3cret"))
            .await
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        let one: i64 = client
            .query_one("SELECT 1::bigint", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(one, 1);
        let unknown = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=nobody dbname=dev password=x"),
            tokio_postgres::NoTls,
        )
        .await;
        let err = unknown.err().expect("an unknown user is refused");
        assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28000"));
    }
}
