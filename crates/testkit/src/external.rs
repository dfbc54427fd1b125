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
}

impl Drop for Moto {
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
