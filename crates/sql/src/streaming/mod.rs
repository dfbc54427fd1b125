//! Streaming materialized views: external schemas over Kinesis, views that read one stream,
//! REFRESH (manual) and AUTO REFRESH (continuous micro-batches).
//!
//! A refresh round runs in a transaction. It takes the view's write lock, reads the view's
//! committed positions from the catalog snapshot taken under that lock, reads the stream from
//! there, runs the view's query over the records, appends the rows, and sets the new
//! positions in the same catalog commit as the rows (invariant 1: no other offset store). A
//! crash before that commit leaves the old positions and an unpinned Delta version, which
//! recovery undoes, so the records are read again exactly once.
//!
//! Records that cannot be used (over the size limit, or whose evaluation fails) are skipped
//! and written to the scan-error log, which `sys_stream_scan_errors` reads.

mod aggregate;
mod errors;
pub(crate) mod mirror;
mod pipeline;
mod query_view;
mod runner;
pub(crate) mod views;

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::sql::sqlparser::ast::{CreateTableOptions, CreateView, ObjectName};
use tributary_catalog::{
    Column, Distribution, ExternalSource, MaterializedView, Relation, SqlType, Table,
    VARCHAR_LENGTH_MAX, ViewInput,
};
use tributary_ingest::{
    KafkaSource, KinesisSource, Positions, ReadLimits, ShardLag, StreamReader, StreamRecord,
    StreamSource,
};

use crate::catalog_list::SessionCatalogs;
use crate::engine::Engine;
use crate::session::{Output, Session};
use crate::transaction::WriteKind;
use crate::{Error, Result};
use tributary_syntax::extension as syntax;
use tributary_syntax::rewrite::name_parts;

pub(crate) use errors::{ScanError, schema as scan_errors_schema};
pub(crate) use pipeline::Pipeline;
pub use runner::StreamingSettings;
pub(crate) use views::{VIEWS as SYSTEM_VIEWS, scan_errors, system_view};

/// Redshift's largest VARBYTE, and its default limit on a stream record's size.
pub(crate) const VARBYTE_MAX: u32 = 1_024_000;
/// Refreshes kept for `sys_mv_refresh_history`.
const HISTORY_KEPT: usize = 10_000;

/// The streaming state of an engine: settings, stream clients, per-view counters, the
/// refresh history, the auto-refresh tasks and the running mirror folds.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    settings: Mutex<StreamingSettings>,
    sources: tokio::sync::Mutex<HashMap<Option<String>, KinesisSource>>,
    stats: Mutex<HashMap<String, ViewStats>>,
    history: Mutex<VecDeque<RefreshRecord>>,
    errors: errors::ErrorLog,
    /// The latest skipped records, for the console (sys_stream_scan_errors keeps them all).
    recent_skips: Mutex<VecDeque<ScanError>>,
    skip_log: Mutex<HashMap<String, SkipLog>>,
    runners: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// The background work running on mirror tables, by storage path.
    mirror_work: Mutex<HashMap<String, MirrorWork>>,
}

/// Background work on one mirror table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Rewriting the base with the stored changes merged in.
    Fold,
    /// Merging some stored change files into one.
    Coalesce,
}

/// What background work runs on one mirror table. A fold replaces every file of the version
/// it read, so a coalesce may run beside it only on files added after that version.
#[derive(Debug, Clone, Copy, Default)]
struct MirrorWork {
    /// A fold runs: with the version it reads once it has read it.
    fold: Option<Option<u64>>,
    coalesce: bool,
}

/// Counters of one view since the server started.
#[derive(Debug, Clone, Default)]
pub(crate) struct ViewStats {
    pub shards: BTreeMap<String, ShardLag>,
    pub last_refresh: Option<chrono::NaiveDateTime>,
    /// Records read, payload bytes read, rows stored and records skipped.
    pub records: u64,
    pub bytes: u64,
    pub rows: u64,
    pub skipped: u64,
    /// Median and largest arrival-to-visible time of the last automatic round that read
    /// records, in seconds.
    pub freshness: Option<(f64, f64)>,
    /// Why the last round failed, until one succeeds.
    pub last_error: Option<String>,
}

/// Skipped records not yet reported in the log, per view.
#[derive(Debug, Default)]
struct SkipLog {
    /// Skips since the last line, by reason code.
    pending: BTreeMap<String, u64>,
    /// One reason of those, as an example.
    example: Option<String>,
    logged: Option<Instant>,
}

/// At most one log line per view per this long about skipped records.
const SKIP_LOG_EVERY: Duration = Duration::from_secs(10);
/// Skipped records kept in memory for the console.
const RECENT_SKIPS: usize = 100;

/// One refresh, for `sys_mv_refresh_history`.
#[derive(Debug, Clone)]
pub(crate) struct RefreshRecord {
    pub database: String,
    pub schema: String,
    pub name: String,
    pub manual: bool,
    pub start: chrono::NaiveDateTime,
    pub end: chrono::NaiveDateTime,
    pub records: u64,
    pub skipped: u64,
    pub status: String,
}

impl RefreshRecord {
    /// A refresh of `view` that began at `start` and ends now, with its outcome.
    fn new(
        view: &ViewId,
        manual: bool,
        start: chrono::NaiveDateTime,
        outcome: &Result<RoundStats>,
    ) -> Self {
        let (records, skipped, status) = match outcome {
            Ok(stats) => (stats.records, stats.skipped, stats.status()),
            Err(err) => (0, 0, format!("Refresh failed: {err}")),
        };
        Self {
            database: view.database.clone(),
            schema: view.schema.clone(),
            name: view.name.clone(),
            manual,
            start,
            end: chrono::Utc::now().naive_utc(),
            records,
            skipped,
            status,
        }
    }
}

impl Streams {
    pub(crate) fn settings(&self) -> StreamingSettings {
        self.settings.lock().clone()
    }

    pub(crate) fn set_settings(&self, settings: StreamingSettings) {
        *self.settings.lock() = settings;
    }

    /// Marks background work on the mirror stored at `path` as running; false if it may not
    /// start: the same work runs, a fold waits for a coalesce to end, and a coalesce for a
    /// fold to say which version it reads.
    pub(crate) fn begin_work(&self, path: &str, work: Work) -> bool {
        let mut all = self.mirror_work.lock();
        let running = all.entry(path.to_string()).or_default();
        match work {
            Work::Fold if running.fold.is_none() && !running.coalesce => {
                running.fold = Some(None);
                true
            }
            Work::Coalesce if !running.coalesce && running.fold != Some(None) => {
                running.coalesce = true;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn end_work(&self, path: &str, work: Work) {
        let mut all = self.mirror_work.lock();
        if let Some(running) = all.get_mut(path) {
            match work {
                Work::Fold => running.fold = None,
                Work::Coalesce => running.coalesce = false,
            }
            if running.fold.is_none() && !running.coalesce {
                all.remove(path);
            }
        }
    }

    /// Records the version the running fold of the mirror at `path` reads.
    pub(crate) fn fold_reads(&self, path: &str, version: u64) {
        let mut all = self.mirror_work.lock();
        if let Some(running) = all.get_mut(path)
            && running.fold.is_some()
        {
            running.fold = Some(Some(version));
        }
    }

    /// The version the running fold of the mirror at `path` reads, if a fold runs.
    pub(crate) fn folding(&self, path: &str) -> Option<u64> {
        let all = self.mirror_work.lock();
        all.get(path).and_then(|running| running.fold.flatten())
    }

    async fn source(&self, external: &ExternalSource) -> Result<StreamSource> {
        let region = match external {
            ExternalSource::Kinesis { region, .. } => region,
            ExternalSource::Kafka { .. } => {
                return Ok(StreamSource::Kafka(KafkaSource::new(kafka_properties(
                    external,
                )?)));
            }
            ExternalSource::Redshift { database, schema } => {
                return Err(Error::WrongObjectType(format!(
                    "the external schema maps {database}.{schema}, which is not a stream source"
                )));
            }
        };
        let mut sources = self.sources.lock().await;
        if let Some(source) = sources.get(region) {
            return Ok(StreamSource::Kinesis(source.clone()));
        }
        let endpoint = self.settings().kinesis_endpoint;
        let source = KinesisSource::connect(region.as_deref(), endpoint.as_deref()).await;
        sources.insert(region.clone(), source.clone());
        Ok(StreamSource::Kinesis(source))
    }

    fn record(&self, record: RefreshRecord) {
        let mut history = self.history.lock();
        if history.len() >= HISTORY_KEPT {
            history.pop_front();
        }
        history.push_back(record);
    }

    pub(crate) fn history(&self) -> Vec<RefreshRecord> {
        self.history.lock().iter().cloned().collect()
    }

    /// Keeps the latest skipped records and logs them: the first skip of a view at once, then
    /// one line per view per [`SKIP_LOG_EVERY`] with the counts by reason, so that a flood of
    /// bad records leaves a log a person can read. Called every round, with or without skips,
    /// so that the last counts of a flood are logged too.
    fn note_skipped(&self, view: &ViewId, skipped: &[ScanError]) {
        if !skipped.is_empty() {
            let mut recent = self.recent_skips.lock();
            for error in skipped.iter().rev().take(RECENT_SKIPS).rev() {
                if recent.len() >= RECENT_SKIPS {
                    recent.pop_front();
                }
                recent.push_back(error.clone());
            }
        }
        let mut logs = self.skip_log.lock();
        if skipped.is_empty() && !logs.contains_key(&view.path) {
            return;
        }
        let log = logs.entry(view.path.clone()).or_default();
        for error in skipped {
            *log.pending.entry(error.code.clone()).or_default() += 1;
            if log.example.is_none() {
                log.example = Some(format!(
                    "shard {} position {}: {}",
                    error.shard_id, error.position, error.reason
                ));
            }
        }
        if log.pending.is_empty() || log.logged.is_some_and(|at| at.elapsed() < SKIP_LOG_EVERY) {
            return;
        }
        let total: u64 = log.pending.values().sum();
        let reasons = log
            .pending
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let example = log.example.take().unwrap_or_default();
        tracing::warn!(
            view = %view.qualified(),
            skipped = total,
            %reasons,
            %example,
            "stream records skipped (details in sys_stream_scan_errors)"
        );
        log.pending.clear();
        log.logged = Some(Instant::now());
    }

    /// The latest skipped records, oldest first.
    pub(crate) fn recent_skips(&self) -> Vec<ScanError> {
        self.recent_skips.lock().iter().cloned().collect()
    }

    fn update_stats(&self, path: &str, reader: &StreamReader) {
        let mut stats = self.stats.lock();
        let entry = stats.entry(path.to_string()).or_default();
        entry.shards = reader.lag().clone();
        entry.last_refresh = Some(chrono::Utc::now().naive_utc());
    }

    /// Counts records read, per shard, in the metrics and the view's counters.
    fn count_read(
        &self,
        metrics: &crate::metrics::Metrics,
        view: &ViewId,
        records: &[StreamRecord],
    ) {
        if records.is_empty() {
            return;
        }
        let mut per_shard: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for record in records {
            let counts = per_shard.entry(&record.shard_id).or_default();
            counts.0 += 1;
            counts.1 += record.data.len() as u64;
        }
        let (mut records_total, mut bytes_total) = (0, 0);
        for (shard, (records, bytes)) in per_shard {
            let mut labels = view.labels();
            labels.push(("shard", shard.to_string()));
            metrics
                .stream_records
                .get_or_create(&labels)
                .inc_by(records);
            metrics.stream_bytes.get_or_create(&labels).inc_by(bytes);
            records_total += records;
            bytes_total += bytes;
        }
        let mut stats = self.stats.lock();
        let entry = stats.entry(view.path.clone()).or_default();
        entry.records += records_total;
        entry.bytes += bytes_total;
    }

    pub(crate) fn stats(&self, path: &str) -> ViewStats {
        self.stats.lock().get(path).cloned().unwrap_or_default()
    }
}

/// A streaming view, by name and storage path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViewId {
    pub database: String,
    pub schema: String,
    pub name: String,
    pub path: String,
}

impl ViewId {
    /// `database.schema.name`, for logs.
    pub(crate) fn qualified(&self) -> String {
        format!("{}.{}.{}", self.database, self.schema, self.name)
    }

    /// The view's metric labels.
    pub(crate) fn labels(&self) -> crate::metrics::Labels {
        vec![
            ("database", self.database.clone()),
            ("schema", self.schema.clone()),
            ("view", self.name.clone()),
        ]
    }
}

/// Every materialized view that reads a stream (streaming views and mirror tables).
pub(crate) fn streaming_views(state: &tributary_catalog::CatalogState) -> Vec<ViewId> {
    views_where(state, |mv| mv.input.is_stream())
}

/// The materialized views, of every database, for which `keep` holds.
pub(crate) fn views_where(
    state: &tributary_catalog::CatalogState,
    keep: impl Fn(&MaterializedView) -> bool,
) -> Vec<ViewId> {
    let mut views = Vec::new();
    for (database, db) in &state.databases {
        for (schema, s) in &db.schemas {
            for (name, relation) in &s.relations {
                if let Relation::Table(table) = relation
                    && table.materialized.as_deref().is_some_and(&keep)
                {
                    views.push(ViewId {
                        database: database.clone(),
                        schema: schema.clone(),
                        name: name.clone(),
                        path: table.path.clone(),
                    });
                }
            }
        }
    }
    views
}

/// Counts a finished refresh round in the metrics and the view's counters. `took` covers the
/// round and its commit; with `visible_micros` (when its rows became visible), the round's
/// records give the view's freshness.
pub(crate) fn observe_round(
    engine: &Engine,
    view: &ViewId,
    outcome: &Result<RoundStats>,
    took: Duration,
    visible_micros: Option<i64>,
) {
    let metrics = &engine.metrics;
    let labels = view.labels();
    let mut stats = engine.streams.stats.lock();
    let entry = stats.entry(view.path.clone()).or_default();
    let mut with_status = labels.clone();
    match outcome {
        Ok(round) => {
            entry.last_error = None;
            if round.records == 0 && round.skipped == 0 {
                return;
            }
            with_status.push(("status", "ok".to_string()));
            metrics.view_rows.get_or_create(&labels).inc_by(round.rows);
            entry.rows += round.rows;
            entry.skipped += round.skipped;
            if let Some(visible) = visible_micros
                && !round.arrivals.is_empty()
            {
                let freshness = metrics.freshness.get_or_create(&labels);
                let mut seconds: Vec<f64> = round
                    .arrivals
                    .iter()
                    .map(|arrival| (visible - arrival).max(0) as f64 / 1e6)
                    .collect();
                for value in &seconds {
                    freshness.observe(*value);
                }
                seconds.sort_by(f64::total_cmp);
                entry.freshness = Some((seconds[seconds.len() / 2], seconds[seconds.len() - 1]));
            }
        }
        Err(err) => {
            with_status.push(("status", "failed".to_string()));
            entry.last_error = Some(err.to_string());
        }
    }
    drop(stats);
    metrics.refreshes.get_or_create(&with_status).inc();
    metrics
        .refresh_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// `CREATE EXTERNAL SCHEMA name FROM KINESIS [REGION 'r'] IAM_ROLE {default | 'arn'}`.
pub(crate) async fn create_external_schema(
    session: &mut Session,
    name: &ObjectName,
    if_not_exists: bool,
    source: &str,
    options: Vec<(String, String)>,
) -> Result<Output> {
    let get = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let external = match source {
        "kinesis" => {
            for (key, _) in &options {
                if !matches!(key.as_str(), "region" | "iam_role") {
                    return Err(Error::Syntax(format!(
                        "CREATE EXTERNAL SCHEMA ... FROM KINESIS does not take {}",
                        key.to_ascii_uppercase()
                    )));
                }
            }
            let iam_role = get("iam_role").ok_or_else(|| {
                Error::Syntax(
                    "CREATE EXTERNAL SCHEMA ... FROM KINESIS needs IAM_ROLE { default | 'arn' }"
                        .into(),
                )
            })?;
            ExternalSource::Kinesis {
                region: get("region"),
                iam_role,
            }
        }
        "kafka" | "msk" => {
            let mut rest = std::collections::BTreeMap::new();
            for (key, value) in &options {
                if !KAFKA_OPTIONS.contains(&key.as_str()) {
                    return Err(Error::Syntax(format!(
                        "CREATE EXTERNAL SCHEMA ... FROM {} does not take {}",
                        source.to_ascii_uppercase(),
                        key.to_ascii_uppercase()
                    )));
                }
                rest.insert(key.clone(), value.clone());
            }
            let take =
                |rest: &mut std::collections::BTreeMap<String, String>, key: &str| rest.remove(key);
            let external = ExternalSource::Kafka {
                flavor: source.to_ascii_uppercase(),
                uri: take(&mut rest, "uri"),
                cluster_arn: take(&mut rest, "cluster_arn"),
                iam_role: take(&mut rest, "iam_role"),
                authentication: take(&mut rest, "authentication")
                    .unwrap_or_else(|| "none".into())
                    .to_ascii_lowercase(),
                options: rest,
            };
            kafka_properties(&external)?;
            external
        }
        "redshift" => {
            let mut database = None;
            let mut schema = None;
            for (key, value) in &options {
                match key.as_str() {
                    "database" => database = Some(value.clone()),
                    "schema" => schema = Some(value.clone()),
                    other => {
                        return Err(Error::Syntax(format!(
                            "CREATE EXTERNAL SCHEMA ... FROM REDSHIFT does not take {}",
                            other.to_ascii_uppercase()
                        )));
                    }
                }
            }
            let database = database.ok_or_else(|| {
                Error::Syntax(
                    "CREATE EXTERNAL SCHEMA ... FROM REDSHIFT needs DATABASE 'name'".into(),
                )
            })?;
            let schema = schema.unwrap_or_else(|| "public".into());
            let pinned = session.catalogs().pinned();
            let target = pinned
                .database(&database)
                .map_err(|_| Error::UndefinedDatabase(database.clone()))?;
            if target.share.is_none() && !target.schemas.contains_key(&schema) {
                return Err(Error::UndefinedSchema(schema));
            }
            crate::access::require_superuser(session, "CREATE EXTERNAL SCHEMA")?;
            ExternalSource::Redshift { database, schema }
        }
        other => {
            return Err(Error::NotSupported(format!(
                "CREATE EXTERNAL SCHEMA ... FROM {} is not supported",
                other.to_ascii_uppercase()
            )));
        }
    };
    let schema = name_parts(name).last().cloned().unwrap_or_default();
    let database = session.database().to_string();
    let owner = session.user().to_string();
    let exists = session
        .catalogs()
        .pinned()
        .schema(&database, &schema)
        .is_ok();
    if exists && if_not_exists {
        session.notice(format!("schema \"{schema}\" already exists, skipping"));
        return Ok(Output::command("CREATE SCHEMA"));
    }
    let is_stream = external.is_stream();
    session.catalogs().modify(|state| {
        state.create_schema(&database, &schema, &owner)?;
        state.schema_mut(&database, &schema)?.external = Some(external);
        Ok(())
    })?;
    let settings = session.engine().streams.settings();
    if settings.embedded_stream_service && is_stream {
        session.notice(format!(
            "no Kinesis endpoint is configured: the streams of \"{schema}\" are read from the embedded stream service at {}",
            settings.kinesis_endpoint.unwrap_or_default()
        ));
    }
    Ok(Output::command("CREATE SCHEMA"))
}

/// The options of `CREATE EXTERNAL SCHEMA ... FROM { KAFKA | MSK }`: Redshift's, then the
/// TLS and SASL settings of self-managed clusters.
const KAFKA_OPTIONS: &[&str] = &[
    "iam_role",
    "authentication",
    "authentication_arn",
    "secret_arn",
    "uri",
    "cluster_arn",
    "ssl_ca_location",
    "ssl_certificate_location",
    "ssl_key_location",
    "ssl_key_password",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
];

/// The librdkafka client properties of a Kafka external schema, or why it cannot be read
/// from here.
pub(crate) fn kafka_properties(
    external: &ExternalSource,
) -> Result<std::collections::BTreeMap<String, String>> {
    let ExternalSource::Kafka {
        flavor,
        uri,
        cluster_arn,
        authentication,
        options,
        ..
    } = external
    else {
        return Err(Error::Internal("not a Kafka source".into()));
    };
    let refuse = |what: &str| Err(Error::NotSupported(what.to_string()));
    let Some(uri) = uri else {
        return match cluster_arn {
            Some(_) => refuse(
                "FROM MSK ... CLUSTER_ARN needs the MSK API to find the brokers, which this server does not call; give their addresses with URI 'host:port,...'",
            ),
            None => Err(Error::Syntax(format!(
                "CREATE EXTERNAL SCHEMA ... FROM {flavor} needs URI 'host:port,...'"
            ))),
        };
    };
    let mut properties = std::collections::BTreeMap::new();
    properties.insert("bootstrap.servers".to_string(), uri.clone());
    let mut tls = false;
    for (option, property) in [
        ("ssl_ca_location", "ssl.ca.location"),
        ("ssl_certificate_location", "ssl.certificate.location"),
        ("ssl_key_location", "ssl.key.location"),
        ("ssl_key_password", "ssl.key.password"),
    ] {
        if let Some(value) = options.get(option) {
            properties.insert(property.to_string(), value.clone());
            tls = true;
        }
    }
    let protocol = match authentication.as_str() {
        "none" if tls => "ssl",
        "none" => "plaintext",
        "mtls" => {
            if options.contains_key("authentication_arn") || options.contains_key("secret_arn") {
                return refuse(
                    "AUTHENTICATION mtls with AUTHENTICATION_ARN or SECRET_ARN needs AWS Certificate Manager or Secrets Manager; give the certificate files with SSL_CERTIFICATE_LOCATION and SSL_KEY_LOCATION",
                );
            }
            if !options.contains_key("ssl_certificate_location")
                || !options.contains_key("ssl_key_location")
            {
                return Err(Error::Syntax(
                    "AUTHENTICATION mtls needs SSL_CERTIFICATE_LOCATION and SSL_KEY_LOCATION"
                        .into(),
                ));
            }
            "ssl"
        }
        "sasl" => {
            let mechanism = options
                .get("sasl_mechanism")
                .map(|m| m.to_ascii_uppercase())
                .unwrap_or_else(|| "PLAIN".into());
            if !matches!(
                mechanism.as_str(),
                "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512"
            ) {
                return Err(Error::Syntax(format!(
                    "SASL_MECHANISM must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not {mechanism}"
                )));
            }
            let (Some(user), Some(password)) =
                (options.get("sasl_username"), options.get("sasl_password"))
            else {
                return Err(Error::Syntax(
                    "AUTHENTICATION sasl needs SASL_USERNAME and SASL_PASSWORD".into(),
                ));
            };
            properties.insert("sasl.mechanism".into(), mechanism);
            properties.insert("sasl.username".into(), user.clone());
            properties.insert("sasl.password".into(), password.clone());
            if tls { "sasl_ssl" } else { "sasl_plaintext" }
        }
        "iam" => {
            return refuse(
                "AUTHENTICATION iam signs requests with AWS credentials through MSK's IAM mechanism, which this server does not implement; use none, mtls or sasl",
            );
        }
        other => {
            return Err(Error::Syntax(format!(
                "AUTHENTICATION must be none, iam, mtls or sasl, not {other}"
            )));
        }
    };
    properties.insert("security.protocol".into(), protocol.into());
    Ok(properties)
}

fn view_options(view: &CreateView) -> Vec<(String, String)> {
    match &view.options {
        CreateTableOptions::With(options) => syntax::options(options),
        _ => Vec::new(),
    }
}

/// `CREATE MATERIALIZED VIEW name [attributes] AS SELECT ... FROM schema."stream"`.
pub(crate) async fn create_materialized_view(
    session: &mut Session,
    view: CreateView,
) -> Result<Output> {
    let (schema, name) = session.resolve_for_create(&view.name)?;
    let database = session.database().to_string();
    if !crate::ddl::relation_is_new(session, &schema, &name, view.if_not_exists)? {
        return Ok(Output::command("CREATE MATERIALIZED VIEW"));
    }
    let pinned = session.catalogs().pinned();
    let default_schema = session.creation_schema()?;
    let options = view_options(&view);
    if !query_view::reads_stream(&view.query, &pinned, &database, &default_schema) {
        return query_view::create(session, &view, schema, name, &options).await;
    }
    let mut query = (*view.query).clone();
    let merges = aggregate::analyse(&mut query)?;
    let stream = pipeline::bind_stream(&mut query, &pinned, &database, &default_schema)?;
    let owner = session.user().to_string();
    let compiled =
        Pipeline::compile(session.engine(), &owner, &database, &query, stream.kafka).await?;
    let columns = view_columns(&compiled.output)?;
    let layout = merges.map(|m| aggregate::layout(&columns, m));
    let mut table = view_table(&database, &schema, &name, &owner, columns, &options);
    table.materialized = Some(Box::new(MaterializedView {
        sql: view.query.to_string(),
        input: ViewInput::Stream,
        source_schema: stream.schema.clone(),
        stream: stream.stream.clone(),
        auto_refresh: options
            .iter()
            .any(|(k, v)| k == "auto_refresh" && v == "yes"),
        positions: serde_json::Value::Null,
        aggregate: layout,
        mirror: None,
    }));
    store_view_table(session, [&database, &schema, &name], table).await?;
    Ok(Output::command("CREATE MATERIALIZED VIEW"))
}

/// Creates the Delta table of a new streaming view or mirror table and adds the relation to
/// the session's transaction.
pub(crate) async fn store_view_table(
    session: &Session,
    [database, schema, name]: [&str; 3],
    mut table: Table,
) -> Result<()> {
    let handle = session.engine().storage.table(&table.path)?;
    session.catalogs().record_created(&table.path);
    table.version = handle.create(&crate::ddl::storage_schema(&table)).await?;
    session.catalogs().modify(|state| {
        table.oid = state.allocate_oid();
        state.insert_relation(database, schema, name, Relation::Table(table.clone()))
    })?;
    Ok(())
}

/// The table of a new materialized view, with its attributes (DISTKEY, SORTKEY, BACKUP).
fn view_table(
    database: &str,
    schema: &str,
    name: &str,
    owner: &str,
    columns: Vec<Column>,
    options: &[(String, String)],
) -> Table {
    let option = |key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let split = |v: String| -> Vec<String> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.to_lowercase())
            .collect()
    };
    Table {
        oid: 0,
        owner: owner.to_string(),
        path: tributary_storage::new_table_path(database, schema, name),
        version: 0,
        columns,
        constraints: vec![],
        distribution: Distribution {
            diststyle: option("diststyle"),
            distkey: option("distkey").and_then(|v| split(v).into_iter().next()),
            sortkey: option("sortkey").map(split).unwrap_or_default(),
            sortkey_kind: None,
        },
        backup: option("backup").is_none_or(|v| v != "no"),
        materialized: None,
    }
}

/// The stored columns of a view's output: text as VARCHAR(65535) and bytes as
/// VARBYTE(1024000), Redshift's limits, so that any record the stream can hold fits.
fn view_columns(output: &arrow::datatypes::SchemaRef) -> Result<Vec<Column>> {
    let mut columns = crate::ddl::columns_from_arrow(output)?;
    for column in &mut columns {
        column.sql_type = match column.sql_type {
            SqlType::Varchar { .. } | SqlType::Char { .. } => SqlType::Varchar {
                length: VARCHAR_LENGTH_MAX,
            },
            SqlType::Varbyte { .. } => SqlType::Varbyte {
                length: VARBYTE_MAX,
            },
            ref other => other.clone(),
        };
    }
    let mut seen = std::collections::HashSet::new();
    for column in &columns {
        if !seen.insert(column.name.clone()) {
            return Err(Error::InvalidStatement(format!(
                "column \"{}\" specified more than once; give the view's columns distinct names",
                column.name
            )));
        }
    }
    Ok(columns)
}

/// Looks up a streaming view by name in the pinned catalog.
fn resolve_view(
    session: &Session,
    parts: &[datafusion::sql::sqlparser::ast::Ident],
) -> Result<(ViewId, Table)> {
    let name = ObjectName::from(parts.to_vec());
    let (schema, relation) = session.resolve_existing(&name)?;
    let database = session.database().to_string();
    let pinned = session.catalogs().pinned();
    match pinned.relation(&database, &schema, &relation) {
        Some(Relation::Table(table)) if table.materialized.is_some() => Ok((
            ViewId {
                database,
                schema,
                name: relation,
                path: table.path.clone(),
            },
            table.clone(),
        )),
        Some(_) => Err(Error::WrongObjectType(format!(
            "\"{relation}\" is not a materialized view"
        ))),
        None => Err(Error::UndefinedTable(relation)),
    }
}

/// The options that carry a Kafka schema's credentials: a new AUTHENTICATION drops those it
/// is not given again.
const KAFKA_CREDENTIALS: &[&str] = &[
    "authentication_arn",
    "secret_arn",
    "ssl_certificate_location",
    "ssl_key_location",
    "ssl_key_password",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
];

/// `ALTER EXTERNAL SCHEMA name [IAM_ROLE ...] [AUTHENTICATION ...] [AUTHENTICATION_ARN ... |
/// SECRET_ARN ...] [URI ...]` (and the TLS / SASL options) of a Kafka or MSK schema. Views
/// over the schema read with the new settings from their next round, at their positions.
pub(crate) fn alter_external_schema(
    session: &mut Session,
    name: &[datafusion::sql::sqlparser::ast::Ident],
    options: Vec<(String, String)>,
) -> Result<Output> {
    let schema = name
        .last()
        .map(tributary_syntax::rewrite::normalize_ident)
        .unwrap_or_default();
    let database = session.database().to_string();
    let external = session
        .catalogs()
        .pinned()
        .schema(&database, &schema)?
        .external
        .clone();
    let Some(ExternalSource::Kafka {
        flavor,
        mut uri,
        mut cluster_arn,
        mut iam_role,
        mut authentication,
        options: mut rest,
    }) = external
    else {
        return Err(Error::NotSupported(format!(
            "ALTER EXTERNAL SCHEMA alters schemas FROM KAFKA or MSK; \"{schema}\" is not one (drop and create it again)"
        )));
    };
    if options.is_empty() {
        return Err(Error::Syntax(
            "ALTER EXTERNAL SCHEMA needs an option: IAM_ROLE, AUTHENTICATION, AUTHENTICATION_ARN, SECRET_ARN or URI".into(),
        ));
    }
    if options.iter().any(|(key, _)| key == "authentication") {
        rest.retain(|key, _| !KAFKA_CREDENTIALS.contains(&key.as_str()));
    }
    for (key, value) in options {
        match key.as_str() {
            "uri" => uri = Some(value),
            "cluster_arn" => cluster_arn = Some(value),
            "iam_role" => iam_role = Some(value),
            "authentication" => authentication = value.to_ascii_lowercase(),
            other if KAFKA_OPTIONS.contains(&other) => {
                rest.insert(key, value);
            }
            other => {
                return Err(Error::Syntax(format!(
                    "ALTER EXTERNAL SCHEMA ... does not take {}",
                    other.to_ascii_uppercase()
                )));
            }
        }
    }
    let altered = ExternalSource::Kafka {
        flavor,
        uri,
        cluster_arn,
        iam_role,
        authentication,
        options: rest,
    };
    kafka_properties(&altered)?;
    session.catalogs().modify(|state| {
        state.schema_mut(&database, &schema)?.external = Some(altered);
        Ok(())
    })?;
    Ok(Output::command("ALTER SCHEMA"))
}

pub(crate) async fn alter_auto_refresh(
    session: &mut Session,
    name: &[datafusion::sql::sqlparser::ast::Ident],
    enable: bool,
    autocommit: bool,
) -> Result<Output> {
    let (view, table) = resolve_view(session, name)?;
    if enable
        && table
            .materialized
            .as_ref()
            .is_some_and(|mv| !mv.input.is_stream())
    {
        return Err(Error::NotSupported(format!(
            "AUTO REFRESH YES is supported for streaming views; \"{}\" reads tables, refresh it with REFRESH MATERIALIZED VIEW",
            view.name
        )));
    }
    if autocommit {
        session
            .catalogs()
            .prelock(&view.database, &view.schema, &view.name)
            .await?;
    }
    session
        .catalogs()
        .lock_table(&view.database, &view.schema, &view.name, WriteKind::Rewrite)
        .await?;
    session.catalogs().modify(|state| {
        let table = state.table_mut(&view.database, &view.schema, &view.name)?;
        if let Some(mv) = table.materialized.as_mut() {
            mv.auto_refresh = enable;
        }
        Ok(())
    })?;
    Ok(Output::command("ALTER MATERIALIZED VIEW"))
}

pub(crate) async fn refresh(
    session: &mut Session,
    name: &[datafusion::sql::sqlparser::ast::Ident],
    autocommit: bool,
) -> Result<Output> {
    let (view, table) = resolve_view(session, name)?;
    if let Some(mv) = table
        .materialized
        .as_ref()
        .filter(|mv| !mv.input.is_stream())
    {
        if autocommit {
            session
                .catalogs()
                .prelock(&view.database, &view.schema, &view.name)
                .await?;
        }
        query_view::refresh(session, &view, &mv.sql).await?;
        return Ok(Output::command("REFRESH"));
    }
    if autocommit {
        // Take the lock before the snapshot, so that an auto-refresh commit just before
        // does not make this refresh conflict.
        session
            .catalogs()
            .prelock(&view.database, &view.schema, &view.name)
            .await?;
    }
    let start = chrono::Utc::now().naive_utc();
    let started = Instant::now();
    let engine = session.engine().clone();
    let catalogs = session.catalogs().clone();
    let result = async {
        let (mut reader, pipeline) = prepare(&engine, &catalogs, &view).await?;
        round(&engine, &catalogs, &view, &pipeline, &mut reader, true).await
    }
    .await;
    // The statement's transaction commits later (at COMMIT in a block): no freshness here.
    observe_round(&engine, &view, &result, started.elapsed(), None);
    engine
        .streams
        .record(RefreshRecord::new(&view, true, start, &result));
    let stats = result?;
    if stats.skipped > 0 {
        session.notice(format!(
            "{} record(s) were skipped; see sys_stream_scan_errors",
            stats.skipped
        ));
    }
    Ok(Output::command("REFRESH"))
}

/// A reader positioned at the view's committed positions (as the session sees them), and the
/// view's compiled query.
async fn prepare(
    engine: &Arc<Engine>,
    catalogs: &SessionCatalogs,
    view: &ViewId,
) -> Result<(StreamReader, Pipeline)> {
    let state = catalogs.pinned();
    let table = state.table(&view.database, &view.schema, &view.name)?;
    let mv = table.materialized.as_ref().ok_or_else(|| {
        Error::WrongObjectType(format!("\"{}\" is not a materialized view", view.name))
    })?;
    let external = state
        .schema(&view.database, &mv.source_schema)
        .ok()
        .and_then(|s| s.external.clone())
        .ok_or_else(|| Error::UndefinedSchema(mv.source_schema.clone()))?;
    let pipeline = compile(engine, &state, view, table).await?;
    let source = engine.streams.source(&external).await?;
    let positions =
        Positions::from_json(&mv.positions).map_err(|e| Error::Internal(e.to_string()))?;
    let reader = source
        .reader(&mv.stream, positions)
        .map_err(|e| Error::Stream(e.to_string()))?;
    Ok((reader, pipeline))
}

/// Compiles a stored view's query.
async fn compile(
    engine: &Arc<Engine>,
    state: &tributary_catalog::CatalogState,
    view: &ViewId,
    table: &Table,
) -> Result<Pipeline> {
    let mv = table
        .materialized
        .as_ref()
        .ok_or_else(|| Error::Internal("not a materialized view".into()))?;
    let mut statements = tributary_syntax::dialect::parse_statements(&mv.sql)?;
    let Some(datafusion::sql::sqlparser::ast::Statement::Query(query)) =
        statements.pop().and_then(|s| s.into_sql())
    else {
        return Err(Error::Internal(format!(
            "the stored query of \"{}\" does not parse",
            view.name
        )));
    };
    let mut query = *query;
    aggregate::analyse(&mut query)?;
    let stream = pipeline::bind_stream(&mut query, state, &view.database, &view.schema)?;
    let pipeline =
        Pipeline::compile(engine, &table.owner, &view.database, &query, stream.kafka).await?;
    // A mirror's query passes the records through; it decodes them itself.
    if mv.mirror.is_none() && pipeline.output.fields().len() != table.columns.len() {
        return Err(Error::Internal(format!(
            "the query of \"{}\" no longer produces its columns",
            view.name
        )));
    }
    Ok(pipeline)
}

/// What a refresh round did.
#[derive(Debug, Default, Clone)]
pub(crate) struct RoundStats {
    pub records: u64,
    pub rows: u64,
    pub skipped: u64,
    pub caught_up: bool,
    /// When each record read arrived in the stream (microseconds since the epoch).
    pub arrivals: Vec<i64>,
}

impl RoundStats {
    fn status(&self) -> String {
        if self.skipped > 0 {
            format!(
                "Refresh successfully updated MV incrementally; {} record(s) skipped (see sys_stream_scan_errors)",
                self.skipped
            )
        } else {
            "Refresh successfully updated MV incrementally".into()
        }
    }
}

/// How long a manual refresh may read nothing before it gives up.
const MANUAL_STALL: Duration = Duration::from_secs(30);

/// One refresh round in the open transaction of `catalogs`. A manual round reads until every
/// shard is at the tip it had when the round began; an automatic one reads once per shard.
pub(crate) async fn round(
    engine: &Arc<Engine>,
    catalogs: &SessionCatalogs,
    view: &ViewId,
    pipeline: &Pipeline,
    reader: &mut StreamReader,
    manual: bool,
) -> Result<RoundStats> {
    let slot = catalogs
        .lock_table(&view.database, &view.schema, &view.name, WriteKind::Rewrite)
        .await?;
    let mv = slot
        .table
        .materialized
        .clone()
        .ok_or_else(|| Error::Internal("not a materialized view".into()))?;
    let committed =
        Positions::from_json(&mv.positions).map_err(|e| Error::Internal(e.to_string()))?;
    reader.reset(committed.clone());
    let settings = engine.streams.settings();
    let started = chrono::Utc::now();
    let limits = ReadLimits {
        records_per_shard: settings.records_per_shard,
        arrived_before_micros: manual.then(|| started.timestamp_micros() + 1_000_000),
    };
    let refresh_micros = started.naive_utc().and_utc().timestamp_micros();
    let name = [
        view.database.clone(),
        view.schema.clone(),
        view.name.clone(),
    ];
    let mut stats = RoundStats::default();
    let mut positions = committed;
    let deadline = Instant::now() + settings.refresh_interval.max(Duration::from_millis(50));
    let mut progressed = Instant::now();
    loop {
        let batch = reader
            .read(limits)
            .await
            .map_err(|e| Error::Stream(e.to_string()))?;
        stats.records += batch.records.len() as u64;
        stats
            .arrivals
            .extend(batch.records.iter().map(|r| r.arrival_micros));
        engine
            .streams
            .count_read(&engine.metrics, view, &batch.records);
        if !batch.records.is_empty() || batch.positions != positions {
            progressed = Instant::now();
        } else if manual && !batch.caught_up && progressed.elapsed() >= MANUAL_STALL {
            // A shard that never reports its end (a broker down, a partition without a
            // leader) must not hold a REFRESH forever; nothing read is committed.
            let errors: Vec<String> = reader
                .lag()
                .iter()
                .filter_map(|(shard, lag)| Some(format!("{shard}: {}", lag.last_error.as_ref()?)))
                .collect();
            return Err(Error::Stream(format!(
                "REFRESH of {} read nothing for {} s before reaching the end of every shard{}",
                view.name,
                MANUAL_STALL.as_secs(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            )));
        }
        let mut skipped: Vec<ScanError> = batch
            .gaps
            .iter()
            .map(|gap| ScanError::gap(view, &mv, gap))
            .collect();
        let (usable, oversized): (Vec<&StreamRecord>, Vec<&StreamRecord>) = batch
            .records
            .iter()
            .partition(|r| r.data.len() <= settings.max_record_bytes);
        for record in oversized {
            skipped.push(ScanError::record(
                view,
                &mv,
                record,
                "record_too_large",
                format!(
                    "the record is {} bytes, over the limit of {} bytes",
                    record.data.len(),
                    settings.max_record_bytes
                ),
            ));
        }
        let raw_mirror = mv.mirror.as_ref().is_some_and(|m| m.through_view.is_none());
        if !usable.is_empty() && raw_mirror {
            // The mirror decodes the records themselves.
            let (stored, rejected) = mirror::apply(catalogs, view, &usable).await?;
            stats.rows += stored;
            skipped.extend(rejected);
        } else if !usable.is_empty() {
            let input = reader.to_batch(&usable, refresh_micros);
            // A view's rows must fit its columns; a mirror through a view takes them as they
            // are, as change records.
            let columns: &[Column] = match &mv.mirror {
                Some(_) => &[],
                None => &slot.table.columns,
            };
            let (rows, failures) = pipeline.transform(&input, columns).await;
            for (row, reason) in failures {
                skipped.push(ScanError::record(
                    view,
                    &mv,
                    usable[row],
                    "transform_failed",
                    reason,
                ));
            }
            stats.rows += match (&mv.mirror, &mv.aggregate) {
                (Some(_), _) => {
                    let records = mirror::view_records(&rows)?;
                    let records: Vec<&StreamRecord> = records.iter().collect();
                    let (stored, rejected) = mirror::apply(catalogs, view, &records).await?;
                    skipped.extend(rejected);
                    stored
                }
                (None, Some(layout)) => aggregate::merge(catalogs, view, layout, rows).await?,
                (None, None) => crate::table::append(catalogs, &name, rows).await?,
            };
        }
        stats.skipped += skipped
            .iter()
            .filter(|e| e.code != errors::GAP_CODE)
            .count() as u64;
        for error in &skipped {
            let mut labels = view.labels();
            labels.push(("reason", error.code.clone()));
            engine.metrics.skipped.get_or_create(&labels).inc();
        }
        engine.streams.note_skipped(view, &skipped);
        if !skipped.is_empty() {
            engine.streams.errors.write(engine, skipped).await?;
        }
        if batch.positions != positions {
            positions = batch.positions.clone();
            let json = positions.to_json();
            catalogs.modify(|state| {
                let table = state.table_mut(&view.database, &view.schema, &view.name)?;
                if let Some(mv) = table.materialized.as_mut() {
                    mv.positions = json;
                }
                Ok(())
            })?;
        }
        engine.streams.update_stats(&view.path, reader);
        stats.caught_up = batch.caught_up;
        if batch.caught_up {
            break;
        }
        if !manual && (Instant::now() >= deadline || stats.records >= 100_000) {
            break;
        }
        if batch.records.is_empty() {
            // Throttled or waiting for a backoff: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(stats)
}

/// Drops what a view's background ingestion keeps when the view is gone.
pub(crate) fn forget(engine: &Engine, path: &str) {
    engine.streams.stats.lock().remove(path);
}
