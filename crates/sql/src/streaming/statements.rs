//! The streaming statements: CREATE / ALTER EXTERNAL SCHEMA, CREATE MATERIALIZED VIEW over a
//! stream, ALTER ... AUTO REFRESH and REFRESH MATERIALIZED VIEW.

use std::time::Instant;

use datafusion::sql::sqlparser::ast::{CreateTableOptions, CreateView, ObjectName};
use tributary_catalog::{
    Column, ExternalSource, MaterializedView, Relation, SqlType, Table, VARCHAR_LENGTH_MAX,
    ViewInput,
};
use tributary_engine::transaction::WriteKind;
use tributary_streaming::{
    Pipeline, RefreshRecord, VARBYTE_MAX, ViewId, aggregate, kafka_properties, observe_round,
    pipeline, prepare, round,
};
use tributary_syntax::extension as syntax;
use tributary_syntax::names::name_parts;

use super::query_view;
use super::table::{store_view_table, view_table};
use crate::context::Context;
use crate::output::Output;
use crate::{Error, Result};

/// `CREATE EXTERNAL SCHEMA name FROM KINESIS [REGION 'r'] IAM_ROLE {default | 'arn'}`.
pub(crate) async fn create_external_schema(
    cx: &mut Context,
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
            let pinned = cx.catalogs().pinned();
            let target = pinned
                .database(&database)
                .map_err(|_| Error::UndefinedDatabase(database.clone()))?;
            if target.share.is_none() && !target.schemas.contains_key(&schema) {
                return Err(Error::UndefinedSchema(schema));
            }
            crate::access::check::require_superuser(cx, "CREATE EXTERNAL SCHEMA")?;
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
    let database = cx.database().to_string();
    let owner = cx.user().to_string();
    let exists = cx.catalogs().pinned().schema(&database, &schema).is_ok();
    if exists && if_not_exists {
        cx.notice(format!("schema \"{schema}\" already exists, skipping"));
        return Ok(Output::command("CREATE SCHEMA"));
    }
    let is_stream = external.is_stream();
    cx.catalogs().modify(|state| {
        state.create_schema(&database, &schema, &owner)?;
        state.schema_mut(&database, &schema)?.external = Some(external);
        Ok(())
    })?;
    let settings = cx.engine().streams.settings();
    if settings.embedded_stream_service && is_stream {
        cx.notice(format!(
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

fn view_options(view: &CreateView) -> Vec<(String, String)> {
    match &view.options {
        CreateTableOptions::With(options) => syntax::options(options),
        _ => Vec::new(),
    }
}

/// `CREATE MATERIALIZED VIEW name [attributes] AS SELECT ... FROM schema."stream"`.
pub(crate) async fn create_materialized_view(cx: &mut Context, view: CreateView) -> Result<Output> {
    let (schema, name) = cx.resolve_for_create(&view.name)?;
    let database = cx.database().to_string();
    if !crate::definition::relation_is_new(cx, &schema, &name, view.if_not_exists)? {
        return Ok(Output::command("CREATE MATERIALIZED VIEW"));
    }
    let pinned = cx.catalogs().pinned();
    let default_schema = cx.creation_schema()?;
    let options = view_options(&view);
    if !query_view::reads_stream(&view.query, &pinned, &database, &default_schema) {
        return query_view::create(cx, &view, schema, name, &options).await;
    }
    let mut query = (*view.query).clone();
    let merges = aggregate::analyse(&mut query)?;
    let stream = pipeline::bind_stream(&mut query, &pinned, &database, &default_schema)?;
    let owner = cx.user().to_string();
    let compiled =
        Pipeline::compile(&cx.engine().host(), &owner, &database, &query, stream.kafka).await?;
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
    store_view_table(cx, [&database, &schema, &name], table).await?;
    Ok(Output::command("CREATE MATERIALIZED VIEW"))
}

/// The stored columns of a view's output: text as VARCHAR(65535) and bytes as
/// VARBYTE(1024000), Redshift's limits, so that any record the stream can hold fits.
fn view_columns(output: &arrow::datatypes::SchemaRef) -> Result<Vec<Column>> {
    let mut columns = crate::definition::columns_from_arrow(output)?;
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
    cx: &Context,
    parts: &[datafusion::sql::sqlparser::ast::Ident],
) -> Result<(ViewId, Table)> {
    let name = ObjectName::from(parts.to_vec());
    let (schema, relation) = cx.resolve_existing(&name)?;
    let database = cx.database().to_string();
    let pinned = cx.catalogs().pinned();
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
    cx: &mut Context,
    name: &[datafusion::sql::sqlparser::ast::Ident],
    options: Vec<(String, String)>,
) -> Result<Output> {
    let schema = name
        .last()
        .map(tributary_syntax::names::normalize_ident)
        .unwrap_or_default();
    let database = cx.database().to_string();
    let external = cx
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
    cx.catalogs().modify(|state| {
        state.schema_mut(&database, &schema)?.external = Some(altered);
        Ok(())
    })?;
    Ok(Output::command("ALTER SCHEMA"))
}

pub(crate) async fn alter_auto_refresh(
    cx: &mut Context,
    name: &[datafusion::sql::sqlparser::ast::Ident],
    enable: bool,
    autocommit: bool,
) -> Result<Output> {
    let (view, table) = resolve_view(cx, name)?;
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
        cx.catalogs()
            .prelock(&view.database, &view.schema, &view.name)
            .await?;
    }
    cx.catalogs()
        .lock_table(&view.database, &view.schema, &view.name, WriteKind::Rewrite)
        .await?;
    cx.catalogs().modify(|state| {
        let table = state.table_mut(&view.database, &view.schema, &view.name)?;
        if let Some(mv) = table.materialized.as_mut() {
            mv.auto_refresh = enable;
        }
        Ok(())
    })?;
    Ok(Output::command("ALTER MATERIALIZED VIEW"))
}

pub(crate) async fn refresh(
    cx: &mut Context,
    name: &[datafusion::sql::sqlparser::ast::Ident],
    autocommit: bool,
) -> Result<Output> {
    let (view, table) = resolve_view(cx, name)?;
    if let Some(mv) = table
        .materialized
        .as_ref()
        .filter(|mv| !mv.input.is_stream())
    {
        if autocommit {
            cx.catalogs()
                .prelock(&view.database, &view.schema, &view.name)
                .await?;
        }
        query_view::refresh(cx, &view, &mv.sql).await?;
        return Ok(Output::command("REFRESH"));
    }
    if autocommit {
        // Take the lock before the snapshot, so that an auto-refresh commit just before
        // does not make this refresh conflict.
        cx.catalogs()
            .prelock(&view.database, &view.schema, &view.name)
            .await?;
    }
    let start = chrono::Utc::now().naive_utc();
    let started = Instant::now();
    let engine = cx.engine().host();
    let catalogs = cx.catalogs().clone();
    let result = async {
        let (mut reader, pipeline) = prepare(&engine, &catalogs, &view).await?;
        round(&engine, &catalogs, &view, &pipeline, &mut reader, true).await
    }
    .await;
    // The statement's transaction commits later (at COMMIT in a block): no freshness here.
    observe_round(engine.as_ref(), &view, &result, started.elapsed(), None);
    engine
        .streams()
        .record(RefreshRecord::new(&view, true, start, &result));
    let stats = result?;
    if stats.skipped > 0 {
        cx.notice(format!(
            "{} record(s) were skipped; see sys_stream_scan_errors",
            stats.skipped
        ));
    }
    Ok(Output::command("REFRESH"))
}
