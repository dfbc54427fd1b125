//! Malformed input on the wire: every malformed message gets an error (ERROR when the session
//! can go on, FATAL when the stream cannot be read on), no input makes the server panic, and
//! the server goes on answering. Random inputs come from a seeded generator; a failure prints
//! the seed (`TRIBUTARY_FUZZ_SEED` replays it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::durability::{ServerProcess, connect, spawn_server_logging_to};

/// A backend message.
#[derive(Debug)]
struct Backend {
    kind: u8,
    body: Vec<u8>,
}

impl Backend {
    /// An ErrorResponse's severity (the localizable one, the only one pgwire sends) and
    /// SQLSTATE.
    fn error(&self) -> Option<(String, String)> {
        if self.kind != b'E' {
            return None;
        }
        let (mut severity, mut code) = (String::new(), String::new());
        for field in self.body.split(|b| *b == 0) {
            match field.split_first() {
                Some((b'S', value)) => severity = String::from_utf8_lossy(value).into_owned(),
                Some((b'C', value)) => code = String::from_utf8_lossy(value).into_owned(),
                _ => {}
            }
        }
        Some((severity, code))
    }
}

/// A connection that speaks the protocol byte by byte.
struct Raw(TcpStream);

impl Raw {
    async fn connect(port: u16) -> Self {
        Self(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
    }

    /// Connects and logs in as admin.
    async fn login(port: u16) -> Self {
        let mut raw = Self::connect(port).await;
        raw.send(&startup()).await;
        let messages = raw.until_ready().await;
        assert!(
            messages.iter().any(|m| m.kind == b'R'),
            "no authentication: {messages:?}"
        );
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
    }

    async fn next(&mut self) -> Option<Backend> {
        let mut head = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(30), self.0.read_exact(&mut head))
            .await
            .expect("the server answers")
            .ok()?;
        let length = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; length - 4];
        self.0.read_exact(&mut body).await.ok()?;
        Some(Backend {
            kind: head[0],
            body,
        })
    }

    /// Messages up to and including ReadyForQuery.
    async fn until_ready(&mut self) -> Vec<Backend> {
        let mut messages = Vec::new();
        while let Some(message) = self.next().await {
            let ready = message.kind == b'Z';
            messages.push(message);
            if ready {
                return messages;
            }
        }
        panic!("the connection closed before ReadyForQuery: {messages:?}");
    }

    /// Messages up to the end of the connection.
    async fn until_closed(&mut self) -> Vec<Backend> {
        let mut messages = Vec::new();
        while let Some(message) = self.next().await {
            messages.push(message);
        }
        messages
    }
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn startup() -> Vec<u8> {
    startup_as("admin")
}

fn startup_as(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(format!("user\0{user}\0database\0dev\0\0").as_bytes());
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn cstr(text: &[u8]) -> Vec<u8> {
    [text, b"\0"].concat()
}

fn query(text: &[u8]) -> Vec<u8> {
    message(b'Q', &cstr(text))
}

fn parse(name: &[u8], text: &[u8], types: &[u32]) -> Vec<u8> {
    let mut body = [cstr(name), cstr(text)].concat();
    body.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    message(b'P', &body)
}

fn bind(statement: &[u8], formats: &[i16], params: &[Option<&[u8]>], results: &[i16]) -> Vec<u8> {
    let mut body = [cstr(b""), cstr(statement)].concat();
    body.extend_from_slice(&(formats.len() as i16).to_be_bytes());
    for f in formats {
        body.extend_from_slice(&f.to_be_bytes());
    }
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(value) => {
                body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                body.extend_from_slice(value);
            }
        }
    }
    body.extend_from_slice(&(results.len() as i16).to_be_bytes());
    for r in results {
        body.extend_from_slice(&r.to_be_bytes());
    }
    message(b'B', &body)
}

fn describe(kind: u8, name: &[u8]) -> Vec<u8> {
    message(b'D', &[&[kind][..], &cstr(name)].concat())
}

fn execute() -> Vec<u8> {
    message(b'E', &[&cstr(b"")[..], &0i32.to_be_bytes()].concat())
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// The errors among `messages`, as (severity, SQLSTATE).
fn errors(messages: &[Backend]) -> Vec<(String, String)> {
    messages.iter().filter_map(Backend::error).collect()
}

/// Starts a server whose log the test reads.
fn server() -> (ServerProcess, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let data = dir.path().join("data");
    let (server, port) = spawn_server_logging_to(data.to_str().unwrap(), &[], log);
    (server, port, dir)
}

/// The server is alive, answers, and never panicked.
async fn assert_healthy(server: &mut ServerProcess, port: u16, dir: &tempfile::TempDir) {
    assert!(server.try_wait().unwrap().is_none(), "the server exited");
    let client = connect(port).await;
    client.simple_query("SELECT 1").await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_and_the_session_goes_on() {
    let (mut server, port, dir) = server();
    let mut raw = Raw::login(port).await;
    raw.send(&query(b"CREATE TABLE f (a INT)")).await;
    assert!(errors(&raw.until_ready().await).is_empty());

    // Each of these is answered with an ERROR of this SQLSTATE, and the session goes on.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a NUL inside a query",
            message(b'Q', b"SELECT 1\0garbage\0"),
            "08P01",
        ),
        (
            "a query without its NUL",
            message(b'Q', b"SELECT 1"),
            "08P01",
        ),
        ("a query not in UTF-8", query(b"SELECT '\xff\xfe'"), "22021"),
        (
            "a NUL inside a prepared statement",
            [message(b'P', b"\0SELECT 1\0, 2\0\0\0"), sync()].concat(),
            "08P01",
        ),
        (
            "a Bind with more formats than parameters",
            [
                parse(b"s1", b"SELECT $1::int", &[23]),
                bind(b"s1", &[0, 0, 0], &[Some(b"1")], &[]),
                execute(),
                sync(),
            ]
            .concat(),
            "08P01",
        ),
        (
            "a Bind with an unknown format code",
            [
                parse(b"s2", b"SELECT $1::int", &[23]),
                bind(b"s2", &[7], &[Some(b"1")], &[]),
                execute(),
                sync(),
            ]
            .concat(),
            "22023",
        ),
        (
            "a Bind whose parameter runs past the message",
            [
                parse(b"s3", b"SELECT $1::int", &[23]),
                message(
                    b'B',
                    &[
                        &b"\0s3\0\0\0\0\x01\x7f\xff\xff\xff"[..],
                        b"1",
                        &0i16.to_be_bytes(),
                    ]
                    .concat(),
                ),
                execute(),
                sync(),
            ]
            .concat(),
            "08P01",
        ),
        (
            "a Bind with one result format per column, wrongly counted",
            [
                parse(b"s4", b"SELECT 1 AS a, 2 AS b", &[]),
                bind(b"s4", &[], &[], &[0, 0, 0]),
                execute(),
                sync(),
            ]
            .concat(),
            "08P01",
        ),
        (
            "a Describe of something that is neither statement nor portal",
            [describe(b'X', b"s1"), sync()].concat(),
            "08P01",
        ),
        (
            "a binary parameter of the wrong width",
            [
                parse(b"s5", b"INSERT INTO f VALUES ($1)", &[23]),
                bind(b"s5", &[1], &[Some(b"\x01\x02")], &[]),
                execute(),
                sync(),
            ]
            .concat(),
            "22P03",
        ),
    ];
    for (what, input, code) in cases {
        raw.send(&input).await;
        let messages = raw.until_ready().await;
        let errors = errors(&messages);
        assert_eq!(
            errors,
            vec![("ERROR".to_string(), code.to_string())],
            "{what}: {messages:?}"
        );
        raw.send(&query(b"SELECT 1")).await;
        let messages = raw.until_ready().await;
        assert!(
            messages.iter().any(|m| m.kind == b'D'),
            "after {what}, SELECT 1 answered {messages:?}"
        );
    }

    // A broken frame cannot be read on from: FATAL, and the connection closes.
    let fatal: Vec<(&str, Vec<u8>)> = vec![
        ("a length under 4", b"Q\0\0\0\x02".to_vec()),
        ("a length over the limit", b"Q\x7f\xff\xff\xff".to_vec()),
        ("an unknown message type", message(b'z', b"")),
        ("a Sync with a body", message(b'S', b"x")),
    ];
    for (what, input) in fatal {
        let mut raw = Raw::login(port).await;
        raw.send(&input).await;
        let messages = raw.until_closed().await;
        assert_eq!(
            errors(&messages),
            vec![("FATAL".to_string(), "08P01".to_string())],
            "{what}: {messages:?}"
        );
    }
    // So does a bad startup packet.
    let mut raw = Raw::connect(port).await;
    raw.send(b"\0\0\0\x0c\0\x02\0\0user").await;
    let messages = raw.until_closed().await;
    assert_eq!(errors(&messages)[0].0, "FATAL", "{messages:?}");
    // And a SCRAM exchange whose first message runs past its end (pgwire would read the
    // next message's bytes, or past the buffer).
    let mut raw = Raw::login(port).await;
    raw.send(&query(b"CREATE USER fuzz PASSWORD 'Secret123'"))
        .await;
    assert!(errors(&raw.until_ready().await).is_empty());
    for first in [
        &b"SCRAM-SHA-256\0\0\0\0\x09abc"[..],
        b"SCRAM-SHA-256\0\0\0",
        b"SCRAM-SHA-256",
    ] {
        let mut raw = Raw::connect(port).await;
        raw.send(&startup_as("fuzz")).await;
        let sasl = raw.next().await.expect("an authentication request");
        assert_eq!(sasl.kind, b'R');
        assert_eq!(&sasl.body[..4], &10u32.to_be_bytes(), "SASL is asked for");
        raw.send(&message(b'p', first)).await;
        let messages = raw.until_closed().await;
        assert_eq!(
            errors(&messages),
            vec![("FATAL".to_string(), "08P01".to_string())],
            "{first:?}: {messages:?}"
        );
    }

    assert_healthy(&mut server, port, &dir).await;
}

/// A small deterministic generator (xorshift64*), so that a failing seed replays.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    std::env::var("TRIBUTARY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Well-formed message sequences that the fuzzer mutates.
fn corpus() -> Vec<Vec<u8>> {
    vec![
        query(b"SELECT 1"),
        query(b"INSERT INTO f VALUES (1, 'x'); SELECT a, b FROM f WHERE a > 0"),
        query(b"BEGIN; INSERT INTO f VALUES (2, 'y'); ROLLBACK"),
        [
            parse(b"p", b"SELECT $1::int + a, $2 FROM f", &[23, 25]),
            bind(b"p", &[0, 1], &[Some(b"5"), Some(b"text")], &[1]),
            describe(b'P', b""),
            execute(),
            sync(),
        ]
        .concat(),
        [
            parse(b"", b"INSERT INTO f VALUES ($1, $2)", &[]),
            bind(b"", &[], &[Some(b"7"), None], &[]),
            execute(),
            sync(),
        ]
        .concat(),
        [
            describe(b'S', b"p"),
            message(b'C', b"Sp\0"),
            message(b'H', b""),
            sync(),
        ]
        .concat(),
        [
            query(b"COPY f FROM STDIN"),
            message(b'd', b"1\tz\n"),
            message(b'c', b""),
        ]
        .concat(),
    ]
}

/// One random change to `bytes`.
fn mutate(random: &mut Random, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.push(random.next() as u8);
        return;
    }
    let at = random.below(bytes.len());
    match random.below(8) {
        0 => bytes[at] ^= 1 << random.below(8),
        1 => bytes[at] = *random.pick(&[0, 0xff, 0x7f, 0x80, b'Q', b'B', b'\'']),
        2 => {
            let count = 1 + random.below(8);
            let end = (at + count).min(bytes.len());
            bytes.drain(at..end);
        }
        3 => {
            let count = 1 + random.below(8);
            for _ in 0..count {
                bytes.insert(at, random.next() as u8);
            }
        }
        4 => bytes.truncate(at),
        5 => {
            // A 32-bit field (a length or a count) set to a boundary value.
            let value: u32 = *random.pick(&[0, 3, 4, 5, 0x7fff_ffff, 0xffff_ffff, 0x8000]);
            for (i, byte) in value.to_be_bytes().iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *byte;
                }
            }
        }
        6 => {
            // A 16-bit count set to a boundary value.
            let value: u16 = *random.pick(&[0, 1, 2, 0x7fff, 0xffff]);
            for (i, byte) in value.to_be_bytes().iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *byte;
                }
            }
        }
        _ => {
            let copy = bytes[at..].to_vec();
            bytes.extend_from_slice(&copy);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_messages_never_crash_the_server() {
    let seed = seed();
    println!("fuzz seed {seed} (TRIBUTARY_FUZZ_SEED replays it)");
    let (mut server, port, dir) = server();
    let mut setup = Raw::login(port).await;
    setup
        .send(&query(b"CREATE TABLE f (a INT, b VARCHAR(10))"))
        .await;
    assert!(errors(&setup.until_ready().await).is_empty());
    let mut random = Random(seed);
    let corpus = corpus();
    for case in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..1 + random.below(4) {
            let part: &Vec<u8> = random.pick(&corpus);
            input.extend_from_slice(part);
        }
        for _ in 0..1 + random.below(4) {
            mutate(&mut random, &mut input);
        }
        // Now and then the startup packet is mutated too.
        let mut first = startup();
        if random.below(10) == 0 {
            mutate(&mut random, &mut first);
        }
        let mut raw = Raw::connect(port).await;
        // The server may close the connection before it has read everything.
        let _ = raw.0.write_all(&[first, input].concat()).await;
        let _ = raw.0.shutdown().await;
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            let mut sink = Vec::new();
            let _ = raw.0.read_to_end(&mut sink).await;
        })
        .await;
        assert!(
            closed.is_ok(),
            "seed {seed}, case {case}: the connection stayed open after the client's end"
        );
    }
    assert_healthy(&mut server, port, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_statements_get_an_answer_and_the_session_survives() {
    let seed = seed();
    println!("fuzz seed {seed} (TRIBUTARY_FUZZ_SEED replays it)");
    let (mut server, port, dir) = server();
    let client = connect(port).await;
    client
        .batch_execute("CREATE TABLE f (a INT, b VARCHAR(10), s SUPER); INSERT INTO f VALUES (1, 'x', json_parse('{\"k\":[1,2]}'))")
        .await
        .unwrap();
    let words = [
        "SELECT",
        "FROM",
        "WHERE",
        "INSERT",
        "INTO",
        "VALUES",
        "UPDATE",
        "SET",
        "DELETE",
        "CREATE",
        "TABLE",
        "VIEW",
        "DROP",
        "IF",
        "EXISTS",
        "(",
        ")",
        ",",
        ";",
        "*",
        "+",
        "-",
        "/",
        "%",
        "=",
        "<>",
        "'x'",
        "'",
        "\"q\"",
        "\"",
        "1",
        "-1",
        "2147483648",
        "1e308",
        "NULL",
        "TRUE",
        "f",
        "a",
        "b",
        "s",
        "s.k[0]",
        "t9",
        "json_parse",
        "'{\"k\":[1,2]}'",
        "::",
        "INT",
        "VARCHAR(3)",
        "SUPER",
        "DECIMAL(38,10)",
        "CAST",
        "AS",
        "JOIN",
        "ON",
        "GROUP",
        "BY",
        "ORDER",
        "LIMIT",
        "$1",
        "?",
        "[",
        "]",
        ".",
        "..",
        "\\",
        "ü",
        "🙂",
        "WITH",
        "UNION",
        "ALL",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "GRANT",
        "SCHEMA",
        "REFRESH",
        "MATERIALIZED",
        "EXTERNAL",
        "CALL",
        "VACUUM",
        "ANALYZE",
        "SHOW",
        "EXPLAIN",
        "listagg",
        "count",
        "(*)",
        "/*",
        "*/",
        "--",
        "E'\\x'",
        "dateadd",
        "getdate()",
        "nvl",
        "PIVOT",
        "QUALIFY",
        "TOP",
        "1/0",
        "'2024-13-45'::date",
    ];
    let templates = [
        "SELECT a, b FROM f WHERE a = 1",
        "INSERT INTO f (a, b) VALUES (2, 'y')",
        "UPDATE f SET b = 'z' WHERE a = 2",
        "SELECT s.k[0], count(*) FROM f GROUP BY 1",
        "CREATE TABLE IF NOT EXISTS g (x INT, y VARCHAR(5))",
        "SELECT CAST(b AS INT) FROM f",
        "WITH w AS (SELECT a FROM f) SELECT * FROM w JOIN f ON w.a = f.a",
    ];
    let mut random = Random(seed);
    for case in 0..800 {
        let mut tokens: Vec<&str> = random.pick(&templates[..]).split(' ').collect();
        for _ in 0..1 + random.below(4) {
            let at = random.below(tokens.len() + 1);
            match random.below(3) {
                0 if at < tokens.len() => {
                    tokens.remove(at);
                }
                1 if at < tokens.len() => tokens[at] = *random.pick(&words[..]),
                _ => tokens.insert(at, *random.pick(&words[..])),
            }
        }
        let statement = tokens.join(" ");
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            if random.below(2) == 0 {
                client.simple_query(&statement).await.map(|_| ())
            } else {
                match client.prepare(&statement).await {
                    Ok(prepared) if prepared.params().is_empty() => {
                        client.query(&prepared, &[]).await.map(|_| ())
                    }
                    other => other.map(|_| ()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("seed {seed}, case {case}: no answer to {statement:?}"));
        if let Err(err) = answered {
            assert!(
                err.code().is_some(),
                "seed {seed}, case {case}: {statement:?} failed without a SQLSTATE: {err}"
            );
            // Leave any transaction the statement opened or failed.
            client.simple_query("ROLLBACK").await.unwrap_or_else(|err| {
                panic!("seed {seed}, case {case}: the session did not survive {statement:?}: {err}")
            });
        }
    }
    assert_healthy(&mut server, port, &dir).await;
}
