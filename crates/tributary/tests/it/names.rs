//! Hostile names: no database, schema or table name leaves the storage root or shares a
//! directory with another object, on local disk and on S3, and tables stored by earlier
//! releases under misread paths are still read.

use std::collections::BTreeSet;
use std::path::Path;

use tributary_testkit::Moto;

use crate::durability::spawn_server;
use crate::s3::aws_env;

/// Names that once escaped the data directory, collided, or could be misread by a file
/// system, a URL or an object store.
fn hostile_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "../../x",
        "..",
        ".",
        "a/b",
        "a\\b",
        "a#b",
        "a#c",
        "a%2e%2e",
        "%",
        "a?b",
        "it's",
        "\"q\"",
        "naïve 表",
        "Mixed",
        "mixed",
        "MIXED",
        " ",
        "~",
        "*",
    ]
    .map(String::from)
    .to_vec();
    // The longest identifiers Redshift allows (127 bytes).
    names.push("n".repeat(127));
    names.push(format!("{}x", "é".repeat(63)));
    names
}

/// Databases get a few of them: each database is a connection of its own.
const HOSTILE_DATABASES: &[&str] = &["../../x", "a#b", "a#c", "Mixed", "mixed"];

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal; backslashes escape in Redshift's literals, so they are doubled.
fn literal(name: &str) -> String {
    format!("'{}'", name.replace('\\', "\\\\").replace('\'', "''"))
}

async fn connect(port: u16, database: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("admin")
        .dbname(database)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to database {database:?}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Creates a schema and a table named after every hostile name (and a table of that name in
/// `public`), and a table in databases with hostile names. Returns how many tables exist.
async fn create_objects(port: u16) -> usize {
    let client = connect(port, "dev").await;
    let mut tables = 0;
    for name in hostile_names() {
        let (q, v) = (quoted(&name), literal(&name));
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {q};
                 CREATE TABLE {q}.{q} (name VARCHAR(300));
                 INSERT INTO {q}.{q} VALUES ({v});
                 CREATE TABLE public.{q} (name VARCHAR(300));
                 INSERT INTO public.{q} VALUES ({v} || ' in public');"
            ))
            .await
            .unwrap_or_else(|e| panic!("objects named {name:?}: {e}"));
        tables += 2;
    }
    for database in HOSTILE_DATABASES {
        client
            .batch_execute(&format!("CREATE DATABASE {}", quoted(database)))
            .await
            .unwrap_or_else(|e| panic!("database {database:?}: {e}"));
        let other = connect(port, database).await;
        other
            .batch_execute(&format!(
                "CREATE TABLE t (name VARCHAR(300)); INSERT INTO t VALUES ({})",
                literal(database)
            ))
            .await
            .unwrap_or_else(|e| panic!("a table in database {database:?}: {e}"));
        tables += 1;
    }
    tables
}

/// Every table holds exactly its own row.
async fn check_rows(port: u16) {
    let client = connect(port, "dev").await;
    for name in hostile_names() {
        let q = quoted(&name);
        for (table, expected) in [
            (format!("{q}.{q}"), name.clone()),
            (format!("public.{q}"), format!("{name} in public")),
        ] {
            let rows: Vec<String> = client
                .query(&format!("SELECT name FROM {table}"), &[])
                .await
                .unwrap_or_else(|e| panic!("reading {table}: {e}"))
                .iter()
                .map(|row| row.get(0))
                .collect();
            assert_eq!(rows, vec![expected], "{table}");
        }
    }
    for database in HOSTILE_DATABASES {
        let other = connect(port, database).await;
        let rows: Vec<String> = other
            .query("SELECT name FROM t", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(rows, vec![database.to_string()], "database {database:?}");
    }
}

/// The locations the catalog gives: one per table, all distinct.
async fn locations(port: u16) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut count = 0;
    for database in std::iter::once("dev").chain(HOSTILE_DATABASES.iter().copied()) {
        let client = connect(port, database).await;
        for row in client
            .query("SELECT location FROM svv_table_info", &[])
            .await
            .unwrap()
        {
            all.insert(row.get::<_, String>(0));
            count += 1;
        }
    }
    assert_eq!(all.len(), count, "two tables share a location: {all:?}");
    all
}

/// A table directory's name: a slug of the table name and a 12-digit hex id.
fn is_table_directory(name: &str) -> bool {
    let Some((slug, id)) = name.rsplit_once('-') else {
        return false;
    };
    !slug.is_empty()
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && id.len() == 12
        && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Directories (relative to `root`) that hold a Delta log.
fn delta_tables_on_disk(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "_delta_log") {
                let table = dir.strip_prefix(root).unwrap();
                found.insert(table.to_str().unwrap().to_string());
            } else {
                walk(&path, root, found);
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(root, root, &mut found);
    found
}

fn check_layout(tables: &BTreeSet<String>, locations: &BTreeSet<String>, expected: usize) {
    let user_tables: BTreeSet<String> = tables
        .iter()
        .filter(|t| !t.starts_with("_system/"))
        .cloned()
        .collect();
    assert_eq!(
        &user_tables, locations,
        "the catalog's locations are the Delta tables in storage"
    );
    assert_eq!(user_tables.len(), expected, "one directory per table");
    for table in &user_tables {
        let segments: Vec<&str> = table.split('/').collect();
        assert_eq!(
            segments.len(),
            3,
            "{table:?} is <database>/<schema>/<table>"
        );
        assert!(is_table_directory(segments[2]), "{table:?}");
        assert!(
            segments[..2].iter().all(|s| !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')),
            "{table:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_stay_inside_the_data_directory() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("nest").join("root");
    let location = root.to_str().unwrap().to_string();
    let (mut child, port) = spawn_server(&location, &[]);
    let expected = create_objects(port).await;
    check_rows(port).await;
    let catalog_locations = locations(port).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // Nothing was written beside the root or above it.
    let entries = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(entries(outer.path()), vec!["nest"]);
    assert_eq!(entries(&outer.path().join("nest")), vec!["root"]);
    check_layout(&delta_tables_on_disk(&root), &catalog_locations, expected);

    // After a restart, every table still reads its own rows.
    let (mut child, port) = spawn_server(&location, &[]);
    check_rows(port).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_stay_inside_the_s3_prefix() {
    let moto = Moto::start();
    moto.create_bucket("warehouse");
    let envs = aws_env(&moto);
    let (mut child, port) = spawn_server("s3://warehouse/nest/root", &envs);
    let expected = create_objects(port).await;
    check_rows(port).await;
    let catalog_locations = locations(port).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let keys = moto.list_keys("warehouse");
    assert!(!keys.is_empty());
    let mut tables = BTreeSet::new();
    for key in &keys {
        let relative = key
            .strip_prefix("nest/root/")
            .unwrap_or_else(|| panic!("{key:?} is outside the root prefix"));
        if let Some((table, _)) = relative.split_once("/_delta_log/") {
            tables.insert(table.to_string());
        }
    }
    check_layout(&tables, &catalog_locations, expected);

    let (mut child, port) = spawn_server("s3://warehouse/nest/root", &envs);
    check_rows(port).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_stored_under_misread_paths_by_earlier_releases_are_read_in_place() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let location = root.to_str().unwrap().to_string();
    let (mut child, port) = spawn_server(&location, &[]);
    let client = connect(port, "dev").await;
    client
        .batch_execute(
            "CREATE SCHEMA \"a#b\";
             CREATE TABLE \"a#b\".t (v INT);
             INSERT INTO \"a#b\".t VALUES (1), (2);
             CREATE TABLE plain (v INT);
             INSERT INTO plain VALUES (3);",
        )
        .await
        .unwrap();
    let path: String = client
        .query_one(
            "SELECT location FROM svv_table_info WHERE \"schema\" = 'a#b'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    child.kill().unwrap();
    child.wait().unwrap();

    // Rewrite the data directory as an earlier release left it: the catalog names the table
    // by its raw name, and its files are where joining that name into a URL put them (the
    // `#` cut the path: `dev/a`).
    let id = path.rsplit_once('-').unwrap().1;
    let legacy = format!("dev/a#b/t-{id}");
    std::fs::rename(root.join(&path), root.join("dev/a")).unwrap();
    let catalog_dir = root.join("_catalog");
    let newest = std::fs::read_dir(&catalog_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let text = std::fs::read_to_string(&newest).unwrap();
    assert!(text.contains(&path));
    std::fs::write(&newest, text.replace(&path, &legacy)).unwrap();

    let (mut child, port) = spawn_server(&location, &[]);
    let client = connect(port, "dev").await;
    let sum: i64 = client
        .query_one("SELECT sum(v) FROM \"a#b\".t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 3);
    client
        .batch_execute("INSERT INTO \"a#b\".t VALUES (4)")
        .await
        .unwrap();
    let location: String = client
        .query_one(
            "SELECT location FROM svv_table_info WHERE \"schema\" = 'a#b'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        location, "dev/a",
        "the catalog now names where the files are"
    );
    let plain: i32 = client
        .query_one("SELECT v FROM plain", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 3);
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, port) = spawn_server(&root.to_string_lossy(), &[]);
    let client = connect(port, "dev").await;
    let sum: i64 = client
        .query_one("SELECT sum(v) FROM \"a#b\".t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 7);
    child.kill().unwrap();
    child.wait().unwrap();
}
