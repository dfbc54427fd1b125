//! The `tributary` command: CLI parsing and wiring of the engine to the wire server.

mod demo;
mod http;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tributary_wire::PasswordMethod;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The bytes jemalloc counts as allocated, refreshed first (its statistics are cached per
/// epoch).
fn allocated_bytes() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read()
        .ok()
        .map(|bytes| bytes as u64)
}

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "A streaming data warehouse that speaks Redshift SQL over the Postgres wire protocol."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve(ServeArgs),
    /// Show the whole product on the embedded default: a generator writes a cart CDC stream
    /// into the built-in stream service, a streaming view and a mirror table fill, and the
    /// rate, freshness and row counts are printed live. Clients can connect meanwhile.
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Cart changes written per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// The demo's data directory (kept afterwards; a later demo continues in it).
    #[arg(long, default_value = "./tributary-demo")]
    data: String,
    /// Address for Postgres-protocol clients (a free port if this one is taken).
    #[arg(long, default_value = "127.0.0.1:5439")]
    listen: SocketAddr,
    /// Address of the embedded stream service (default 127.0.0.1:4567, or a free port if
    /// that one is taken).
    #[arg(long)]
    stream_listen: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where tables and the catalog live: a directory (created if missing) or s3://bucket/prefix
    /// (S3 settings come from the AWS environment: AWS_ENDPOINT_URL, AWS_REGION, credentials).
    #[arg(long, default_value = "./tributary-data", env = "TRIBUTARY_DATA")]
    data: String,
    /// Address for Postgres-protocol clients (psql, JDBC/ODBC, redshift_connector, ...).
    #[arg(long, default_value = "127.0.0.1:5439", env = "TRIBUTARY_LISTEN")]
    listen: SocketAddr,
    /// How clients with a password authenticate: scram (SCRAM-SHA-256) or md5 (old drivers).
    #[arg(long, value_enum, default_value_t = AuthMethod::Scram)]
    password_auth: AuthMethod,
    /// The namespace registry (file:///dir or s3://bucket/prefix) shared by instances that
    /// share data: this instance writes its namespace and storage location there, and finds
    /// producers of datashares there.
    #[arg(long, env = "TRIBUTARY_NAMESPACE_REGISTRY")]
    namespace_registry: Option<String>,
    /// Seconds between background table maintenance passes (compaction and vacuum).
    #[arg(long, default_value_t = 10, env = "TRIBUTARY_MAINTENANCE_INTERVAL")]
    maintenance_interval: u64,
    /// A table whose current version reads at least this many files is compacted.
    #[arg(long, default_value_t = 32, env = "TRIBUTARY_COMPACT_MIN_FILES")]
    compact_min_files: usize,
    /// A data file whose deletion vector marks at least this fraction of its rows deleted is
    /// rewritten with its live rows by background maintenance.
    #[arg(long, default_value_t = 0.25, env = "TRIBUTARY_PURGE_DELETED_FRACTION")]
    purge_deleted_fraction: f64,
    /// Seconds a data file that no current table version reads is kept before vacuum deletes
    /// it; queries reading older snapshots keep working for at least this long. Tables keep
    /// removed files in their Delta log (and its checkpoints) as long.
    #[arg(long, default_value_t = 3600, env = "TRIBUTARY_VACUUM_RETENTION")]
    vacuum_retention: u64,
    /// Milliseconds an AUTO REFRESH view waits between rounds once it has caught up with its
    /// stream: new records are visible within about this long (plus the round itself).
    #[arg(long, default_value_t = 200, env = "TRIBUTARY_REFRESH_INTERVAL_MS")]
    refresh_interval_ms: u64,
    /// Stream records larger than this many bytes are skipped and logged in
    /// sys_stream_scan_errors (Redshift's limit is 1,024,000).
    #[arg(long, default_value_t = 1_024_000, env = "TRIBUTARY_MAX_RECORD_BYTES")]
    max_record_bytes: usize,
    /// Accepted for command lines written for earlier releases and ignored: mirror tables no
    /// longer fold (their rounds mark replaced rows deleted, and background rewrites keep
    /// their files few).
    #[arg(long, hide = true, env = "TRIBUTARY_MIRROR_FOLD_CHANGES")]
    mirror_fold_changes: Option<u64>,
    /// The Kinesis endpoint for `CREATE EXTERNAL SCHEMA ... FROM KINESIS`, overriding the AWS
    /// SDK's configuration chain (which also reads AWS_ENDPOINT_URL_KINESIS).
    #[arg(long, env = "TRIBUTARY_KINESIS_ENDPOINT")]
    kinesis_endpoint: Option<String>,
    /// Address of the embedded Kinesis-compatible stream service (any AWS SDK, the AWS CLI or
    /// an agent can write to it). When no Kinesis endpoint is configured, external schemas
    /// FROM KINESIS read it.
    /// Default 127.0.0.1:4567; when that is taken, the server runs without the service and
    /// says so, while an address given here must be free.
    #[arg(long, env = "TRIBUTARY_STREAM_LISTEN")]
    stream_listen: Option<SocketAddr>,
    /// Do not run the embedded stream service (external schemas then use the AWS SDK's
    /// configuration chain, i.e. Amazon Kinesis, unless --kinesis-endpoint is given).
    #[arg(long, env = "TRIBUTARY_NO_STREAM_SERVICE")]
    no_stream_service: bool,
    /// Where the embedded stream service keeps its records (default: _streams in the data
    /// directory; required when the data lives in S3).
    #[arg(long, env = "TRIBUTARY_STREAM_DIR")]
    stream_dir: Option<std::path::PathBuf>,
    /// Hours the embedded stream service keeps a record.
    #[arg(long, default_value_t = 24, env = "TRIBUTARY_STREAM_RETENTION_HOURS")]
    stream_retention_hours: u32,
    /// Address of the HTTP listener: Prometheus metrics (/metrics), health checks (/healthz,
    /// /readyz) and the web console (/). From loopback no login is needed; from elsewhere,
    /// HTTP Basic authentication as a SQL user with a password.
    /// Default 127.0.0.1:9439; when that is taken, the server runs without it and says so,
    /// while an address given here must be free.
    #[arg(long, env = "TRIBUTARY_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Do not run the HTTP listener.
    #[arg(long, env = "TRIBUTARY_NO_HTTP")]
    no_http: bool,
    /// Memory the queries of all sessions may hold together, in bytes or with a unit
    /// (512MiB, 4GiB): sorts and aggregations over it spill to disk, and a query that cannot
    /// spill fails (SQLSTATE 53000) instead of exhausting the machine. Default: three
    /// quarters of the machine's memory; 0 for no limit.
    #[arg(long, env = "TRIBUTARY_MEMORY_LIMIT", value_parser = parse_bytes)]
    memory_limit: Option<u64>,
    /// Log filter, in tracing's env-filter syntax (also read from RUST_LOG).
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    log: String,
    /// Log line format: text for people, json (one object per line) for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TRIBUTARY_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Parses a byte count: digits with an optional unit (K, M, G, T; KB/KiB alike, powers of 1024).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count such as 4GiB or 512MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} (use K, M, G or T)")),
    };
    Ok((number * scale as f64) as u64)
}

/// Three quarters of the machine's memory (Linux), the default query memory limit.
fn default_memory_limit() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024 / 4 * 3)
}

#[derive(Clone, Copy, ValueEnum)]
enum AuthMethod {
    Scram,
    Md5,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tributary_sql::set_allocated_memory_source(allocated_bytes);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Demo(args) => demo(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log, args.log_format);
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let started = start(&args, false).await?;
        let address = started.address;
        tracing::info!(%address, "listening; connect with: psql -h {} -p {} -U admin dev", address.ip(), address.port());
        // Ready before the announcement: the listener is bound, so clients queue, and a script
        // that asks /readyz as soon as it reads the address must hear yes.
        started.ready.store(true, std::sync::atomic::Ordering::Release);
        // Tell scripts where we listen (useful with port 0). A script that read what it needed
        // and closed its end must not stop the server.
        let mut announce = format!("tributary listening on {address}\n");
        if let Some(http) = started.http {
            announce.push_str(&format!("tributary http on {http}\n"));
        }
        let mut stdout = std::io::stdout();
        let _ = std::io::Write::write_all(&mut stdout, announce.as_bytes())
            .and_then(|()| std::io::Write::flush(&mut stdout));
        let ready = started.ready.clone();
        let shutdown = async move {
            shutdown_signal().await;
            ready.store(false, std::sync::atomic::Ordering::Release);
        };
        tributary_wire::serve(started.listener, started.engine, password_method(&args), shutdown).await?;
        tracing::info!("shut down");
        Ok(())
    });
    exit(result)
}

/// Ends the process once the server has shut down, without waiting for work still running
/// (a statement being cancelled, a refresh round, maintenance): nothing it has not committed
/// is visible, and the next start undoes its uncommitted table writes. Waiting for it could
/// keep a stopping server alive for as long as its longest statement.
fn exit(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("Error: {err:?}");
            std::process::exit(1)
        }
    }
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // The server's own settings, with the demo's addresses and a short refresh interval.
    let listen = args.listen.to_string();
    let stream_listen = args.stream_listen.map(|a| a.to_string());
    let mut serve_args = vec![
        "tributary",
        "serve",
        "--data",
        &args.data,
        "--listen",
        &listen,
        "--refresh-interval-ms",
        "100",
        // The demo prints its own progress; only errors are logged.
        "--log",
        "error",
    ];
    if let Some(address) = &stream_listen {
        serve_args.extend(["--stream-listen", address.as_str()]);
    }
    let Command::Serve(serve) = Cli::parse_from(serve_args).command else {
        unreachable!("parsed as serve");
    };
    init_logging(&serve.log, serve.log_format);
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let started = start(&serve, true).await?;
        started
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
        demo::run(started, args.rate, args.seconds, password_method(&serve)).await
    });
    exit(result)
}

fn init_logging(log: &str, format: LogFormat) {
    // delta-rs (and its Delta kernel) logs every snapshot, checkpoint and scan at INFO, and warns on every data file
    // with a binary column (VARBYTE, a mirror's ordering column) that it keeps no statistics
    // for it: routine here, so only its errors are logged unless the filter names it.
    let filter = if log.contains("delta") || log.contains("kernel") {
        log.to_string()
    } else {
        format!(
            "{log},deltalake_core=error,deltalake=error,delta_kernel=error,buoyant_kernel=error"
        )
    };
    // Logs go to stderr; stdout carries only the lines that scripts wait for.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter.as_str())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(tributary_sql::THREAD_STACK_BYTES)
        .enable_all()
        .build()?)
}

fn password_method(args: &ServeArgs) -> PasswordMethod {
    match args.password_auth {
        AuthMethod::Scram => PasswordMethod::ScramSha256,
        AuthMethod::Md5 => PasswordMethod::Md5,
    }
}

/// A server ready to accept clients.
struct Started {
    engine: std::sync::Arc<tributary_sql::Engine>,
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    /// The embedded stream service, when it runs, and where.
    stream_service: Option<(tributary_ingest::StreamService, SocketAddr)>,
    /// Where the HTTP listener (metrics, health, console) listens, when it runs.
    http: Option<SocketAddr>,
    /// What /readyz reports: set while SQL clients are accepted.
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Opens the data directory, starts maintenance, the stream service and streaming, and binds
/// the client listener. With `any_port`, a taken default address falls back to a free port
/// (the demo must run next to a server).
async fn start(args: &ServeArgs, any_port: bool) -> anyhow::Result<Started> {
    // The password is read only when the data directory is created; later starts keep the
    // stored verifiers.
    let password = std::env::var("TRIBUTARY_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let verifiers = password
        .as_deref()
        .map(|p| tributary_wire::password_verifiers("admin", p));
    let engine = tributary_sql::Engine::open(&args.data, verifiers)
        .await
        .with_context(|| format!("cannot open the data directory {}", args.data))?;
    let memory_limit = match args.memory_limit {
        Some(0) => None,
        Some(limit) => Some(limit),
        None => default_memory_limit(),
    };
    engine.set_query_memory_limit(memory_limit)?;
    engine.spawn_maintenance(tributary_sql::MaintenanceSettings {
        interval: std::time::Duration::from_secs(args.maintenance_interval.max(1)),
        compact_min_files: args.compact_min_files.max(2),
        purge_deleted_fraction: args.purge_deleted_fraction.clamp(0.0, 1.0),
        vacuum_retention: std::time::Duration::from_secs(args.vacuum_retention),
        ..Default::default()
    });
    let stream_service = start_stream_service(args, any_port).await?;
    let configured = args.kinesis_endpoint.is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_KINESIS").is_some_and(|v| !v.is_empty());
    let use_embedded = stream_service
        .as_ref()
        .map(|(_, address)| *address)
        .filter(|_| !configured);
    if let Some(address) = use_embedded {
        tracing::info!(%address, "no Kinesis endpoint is configured: external schemas FROM KINESIS read the embedded stream service");
    }
    engine.spawn_streaming(tributary_sql::StreamingSettings {
        refresh_interval: std::time::Duration::from_millis(args.refresh_interval_ms.max(10)),
        max_record_bytes: args.max_record_bytes,
        kinesis_endpoint: match use_embedded {
            Some(address) => Some(format!("http://{address}")),
            None => args.kinesis_endpoint.clone(),
        },
        embedded_stream_service: use_embedded.is_some(),
        ..Default::default()
    });
    if args.mirror_fold_changes.is_some() {
        tracing::warn!("--mirror-fold-changes is ignored: mirror tables no longer fold");
    }
    let listener = match tributary_wire::bind(args.listen).await {
        Ok(listener) => listener,
        Err(_) if any_port => {
            let mut address = args.listen;
            address.set_port(0);
            tributary_wire::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?
        }
        Err(err) => return Err(err).with_context(|| format!("cannot listen on {}", args.listen)),
    };
    let address = listener.local_addr()?;
    if let Some(registry) = &args.namespace_registry {
        engine
            .register_namespace(registry)
            .await
            .with_context(|| format!("cannot write to the namespace registry {registry}"))?;
        tracing::info!(namespace = %engine.namespace(), %registry, "namespace registered");
    }
    let admin_has_password = engine
        .catalog_snapshot()
        .users
        .get("admin")
        .is_some_and(|u| u.password.is_some());
    tracing::info!(data = %engine.location(), created = engine.was_created(), "data directory open");
    if admin_has_password {
        tracing::info!("user admin needs its password");
    } else {
        tracing::warn!(
            "user admin has no password: connections from this machine are trusted, others refused; set TRIBUTARY_ADMIN_PASSWORD when creating a data directory to require one"
        );
    }
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = start_http(args, any_port, &engine, &ready).await?;
    Ok(Started {
        engine,
        listener,
        address,
        stream_service,
        http,
        ready,
    })
}

/// Where the HTTP listener listens unless told otherwise.
const DEFAULT_HTTP_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9439,
));

/// Starts the HTTP listener unless it is turned off; returns where it listens. A taken
/// default address is handled as the stream service's is.
async fn start_http(
    args: &ServeArgs,
    any_port: bool,
    engine: &std::sync::Arc<tributary_sql::Engine>,
    ready: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<SocketAddr>> {
    if args.no_http {
        return Ok(None);
    }
    let explicit = args.http_listen.is_some();
    let listen = args.http_listen.unwrap_or(DEFAULT_HTTP_LISTEN);
    let mut bound = tokio::net::TcpListener::bind(listen).await;
    if bound.is_err() && any_port && !explicit {
        let mut address = listen;
        address.set_port(0);
        bound = tokio::net::TcpListener::bind(address).await;
    }
    let listener = match bound {
        Ok(listener) => listener,
        Err(err) if !explicit => {
            tracing::warn!(address = %listen, %err, "the HTTP listener (metrics, console) could not listen; running without it (--http-listen moves it)");
            return Ok(None);
        }
        Err(err) => {
            return Err(err)
                .with_context(|| format!("the HTTP listener cannot listen on {listen}"));
        }
    };
    let address = listener.local_addr()?;
    http::Http {
        engine: engine.clone(),
        ready: ready.clone(),
    }
    .spawn(listener);
    tracing::info!(%address, "console on http://{address}/, metrics on /metrics");
    Ok(Some(address))
}

/// Where the embedded stream service listens unless told otherwise.
const DEFAULT_STREAM_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    4567,
));

/// Starts the embedded stream service unless it is turned off; returns where it listens.
/// When the default address is taken (another server on this machine), the server runs
/// without it and says so; an address given explicitly must be free.
async fn start_stream_service(
    args: &ServeArgs,
    any_port: bool,
) -> anyhow::Result<Option<(tributary_ingest::StreamService, SocketAddr)>> {
    if args.no_stream_service {
        return Ok(None);
    }
    let dir = match &args.stream_dir {
        Some(dir) => dir.clone(),
        None if args.data.starts_with("s3://") => {
            tracing::warn!(
                "the embedded stream service needs a local directory (--stream-dir) when the data lives in S3; it is not started"
            );
            return Ok(None);
        }
        None => std::path::Path::new(&args.data).join("_streams"),
    };
    let service = tributary_ingest::StreamService::open(
        &dir,
        tributary_ingest::ServiceSettings {
            retention_hours: args.stream_retention_hours,
        },
    )
    .with_context(|| {
        format!(
            "cannot open the stream service's directory {}",
            dir.display()
        )
    })?;
    let explicit = args.stream_listen.is_some();
    let listen = args.stream_listen.unwrap_or(DEFAULT_STREAM_LISTEN);
    let mut result = service.clone().spawn(listen).await;
    if result.is_err() && any_port && !explicit {
        let mut address = listen;
        address.set_port(0);
        result = service.clone().spawn(address).await;
    }
    match result {
        Ok(address) => {
            tracing::info!(%address, dir = %dir.display(), "embedded stream service (Kinesis API) listening");
            Ok(Some((service, address)))
        }
        Err(err) if !explicit => {
            tracing::warn!(address = %listen, %err, "the embedded stream service could not listen; running without it (--stream-listen moves it)");
            Ok(None)
        }
        Err(err) => {
            Err(err).with_context(|| format!("the stream service cannot listen on {listen}"))
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
