//! An in-process Tributary server for tests.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tributary_sql::Engine;
use tributary_wire::PasswordMethod;

/// A server on 127.0.0.1 and a free port, with its own data directory unless given one.
pub struct TestServer {
    pub address: SocketAddr,
    pub engine: Arc<Engine>,
    /// Keeps a temporary data directory alive for the server's lifetime.
    _data: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// The server's own runtime, built like `tributary serve`'s (stack size included), so
    /// that sessions run on threads like production's.
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// Starts a server on a fresh temporary data directory.
    pub async fn start() -> Self {
        Self::start_streaming(tributary_sql::StreamingSettings::default()).await
    }

    /// Starts a server on a fresh temporary data directory with these streaming settings
    /// (a Kinesis endpoint, a record size limit).
    pub async fn start_streaming(streaming: tributary_sql::StreamingSettings) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let location = dir.path().to_str().expect("utf-8 path").to_string();
        let mut server =
            Self::start_with(&location, None, PasswordMethod::ScramSha256, streaming).await;
        server._data = Some(dir);
        server
    }

    /// Starts a server on `location` (a directory or s3:// URL), with an optional admin
    /// password for a new data root.
    pub async fn start_at(
        location: &str,
        admin_password: Option<&str>,
        method: PasswordMethod,
    ) -> Self {
        Self::start_with(
            location,
            admin_password,
            method,
            tributary_sql::StreamingSettings::default(),
        )
        .await
    }

    async fn start_with(
        location: &str,
        admin_password: Option<&str>,
        method: PasswordMethod,
        mut streaming: tributary_sql::StreamingSettings,
    ) -> Self {
        let verifiers = admin_password.map(|p| tributary_wire::password_verifiers("admin", p));
        let engine = Engine::open(location, verifiers)
            .await
            .expect("engine opens");
        streaming.refresh_interval = std::time::Duration::from_millis(100);
        engine.spawn_streaming(streaming);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_stack_size(tributary_sql::THREAD_STACK_BYTES)
            .enable_all()
            .build()
            .expect("server runtime");
        let listener = runtime
            .spawn(tributary_wire::bind(
                "127.0.0.1:0".parse().expect("address"),
            ))
            .await
            .expect("bind task")
            .expect("bind");
        let address = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(tributary_wire::serve(
            listener,
            engine.clone(),
            method,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            address,
            engine,
            _data: None,
            stop: Some(stop),
            task: Some(task),
            runtime: Some(runtime),
        }
    }

    /// The data directory of a server started on a temporary one.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self._data.as_ref().map(tempfile::TempDir::path)
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// A libpq connection string for database `dev` as admin.
    pub fn connection_string(&self) -> String {
        format!("host=127.0.0.1 port={} user=admin dbname=dev", self.port())
    }

    /// A connected tokio-postgres client; its connection task runs in the background.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.connection_string(), tokio_postgres::NoTls)
                .await
                .expect("connect to the test server");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            // Dropped from async tests: shut down without blocking the caller's runtime.
            runtime.shutdown_background();
        }
    }
}
