//! One client connection: its authentication, its SQL session, and the simple and extended
//! query protocols, with results encoded by arrow-pg.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::common::ParamValues;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::pgwire::api::copy::CopyHandler;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{
    CopyResponse, FieldInfo, QueryResponse, Response, Tag,
};
use datafusion_postgres::pgwire::api::stmt::{QueryParser, StoredStatement};
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, Type};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::messages::response::CommandComplete;
use datafusion_postgres::pgwire::messages::response::NoticeResponse;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::future::BoxFuture;
use futures::{Sink, SinkExt, StreamExt, stream};
use tokio::sync::Mutex;

use crate::cancel::{CancelSignal, CancelWatch};
use tributary_sql::{Engine, Notice, Output, Prepared, Session};

use crate::auth::{PasswordMethod, Startup};
use crate::hangup::Hangup;
use crate::sqlstate::{error_info, to_pgwire};

/// The handlers of one connection. pgwire asks for them once per connection, so the state
/// they hold (authentication exchange, session) is the connection's own.
pub struct Connection {
    startup: Arc<Startup>,
    queries: Arc<Queries>,
}

impl Connection {
    pub(crate) fn new(
        engine: Arc<Engine>,
        method: PasswordMethod,
        hangup: Option<Hangup>,
        cancel: Arc<CancelSignal>,
    ) -> Self {
        Self {
            startup: Arc::new(Startup::new(engine.clone(), method)),
            queries: Arc::new(Queries {
                runner: SessionRunner {
                    engine,
                    session: Arc::new(Mutex::new(None)),
                    hangup,
                    cancel,
                },
                copy_in: Mutex::new(None),
            }),
        }
    }
}

impl Connection {
    /// The handlers of the message loop.
    pub(crate) fn handlers(&self) -> (Arc<Startup>, Arc<Queries>) {
        (self.startup.clone(), self.queries.clone())
    }

    /// Ends the connection's session, rolling back its open transaction.
    pub async fn close(&self) {
        // A COPY the client left half way stops; its load sees the data end without the
        // client's CopyDone, and rolls back.
        drop(self.queries.copy_in.lock().await.take());
        if let Some(mut session) = self.queries.runner.session.lock().await.take() {
            session.close().await;
        }
    }
}

type SharedSession = Arc<Mutex<Option<Session>>>;

pub struct Queries {
    runner: SessionRunner,
    /// The load of a `COPY ... FROM STDIN` in progress.
    copy_in: Mutex<Option<CopyIn>>,
}

/// Client data gathered into a block before it goes to the load.
const COPY_BLOCK_BYTES: usize = 1 << 20;
/// Blocks queued for the load. A client that sends faster than the load runs waits: its
/// socket is not read while the queue is full, so a COPY holds a few megabytes whatever its
/// size.
const COPY_QUEUE_BLOCKS: usize = 4;

/// A `COPY ... FROM STDIN` being loaded while the client sends its data: the load runs as the
/// session's statement from the first CopyData to CopyDone.
struct CopyIn {
    /// The load; dropped first, which stops it.
    job: tributary_sql::runtime::Task<PgWireResult<StatementResult>>,
    /// Data gathered until it makes a block.
    gathered: Vec<u8>,
    /// Blocks to the load. An empty block marks the end of the data (CopyDone); the queue
    /// closed without it (CopyFail, a hangup) ends the load with an error, which rolls it
    /// back.
    blocks: tokio::sync::mpsc::Sender<Bytes>,
    /// Set when a cancel request stopped the load while the client was sending its data.
    cancelled: Arc<std::sync::atomic::AtomicBool>,
    /// The cancel requests made since the COPY statement began.
    watch: CancelWatch,
}

type StatementResult = (tributary_sql::Result<Output>, Vec<Notice>);

/// Runs statements with a connection's session.
#[derive(Clone)]
struct SessionRunner {
    engine: Arc<Engine>,
    session: SharedSession,
    /// Tells when the client went away while a statement of it runs.
    hangup: Option<Hangup>,
    /// The cancel requests for this connection.
    cancel: Arc<CancelSignal>,
}

/// The session of a connection, held by the statement that uses it.
type SessionGuard = tokio::sync::OwnedMutexGuard<Option<Session>>;

/// The user and database of the startup message.
fn login<C: ClientInfo>(client: &C) -> (String, String) {
    let metadata = client.metadata();
    let user = metadata
        .get("user")
        .cloned()
        .unwrap_or_else(|| "admin".to_string());
    let database = metadata
        .get("database")
        .cloned()
        .unwrap_or_else(|| user.clone());
    (user, database)
}

impl SessionRunner {
    /// Runs `work` with the connection's session (opened on first use) on the compute
    /// runtime, so that parsing, planning and running a statement never hold up the threads
    /// that accept and answer other clients. If the client hangs up meanwhile, the work is
    /// cancelled and the connection's close rolls its transaction back; if a cancel request
    /// names the connection, the work is cancelled and fails with 57014.
    async fn on_session<C, T>(
        &self,
        client: &C,
        watch: &CancelWatch,
        work: impl FnOnce(SessionGuard) -> BoxFuture<'static, PgWireResult<T>> + Send + 'static,
    ) -> PgWireResult<T>
    where
        C: ClientInfo,
        T: Send + 'static,
    {
        let job = self.start_on_session(client, work);
        self.wait_for(job, watch).await
    }

    /// Starts `work` with the connection's session (opened on first use) on the compute
    /// runtime; [`Self::wait_for`] waits for it.
    fn start_on_session<C, T>(
        &self,
        client: &C,
        work: impl FnOnce(SessionGuard) -> BoxFuture<'static, PgWireResult<T>> + Send + 'static,
    ) -> tributary_sql::runtime::Task<PgWireResult<T>>
    where
        C: ClientInfo,
        T: Send + 'static,
    {
        let (user, database) = login(client);
        let engine = self.engine.clone();
        let slot = self.session.clone();
        tributary_sql::runtime::spawn(async move {
            let mut guard = slot.lock_owned().await;
            if guard.is_none() {
                *guard = Some(engine.session(&user, &database).map_err(to_pgwire)?);
            }
            work(guard).await
        })
    }

    /// Waits for work started by [`Self::start_on_session`]: cancelled if the client hangs
    /// up or a cancel request has named the connection since `watch` began (57014).
    async fn wait_for<T>(
        &self,
        mut job: tributary_sql::runtime::Task<PgWireResult<T>>,
        watch: &CancelWatch,
    ) -> PgWireResult<T> {
        let hangup = async {
            match &self.hangup {
                Some(hangup) => hangup.wait().await,
                None => std::future::pending().await,
            }
        };
        let cancelled = watch.cancelled();
        tokio::select! {
            () = cancelled => {
                drop(job);
                self.abort_statement().await;
                Err(query_canceled())
            }
            finished = &mut job => finished.unwrap_or_else(|err| {
                tracing::error!(%err, "a statement's task failed");
                Err(to_pgwire(tributary_sql::Error::Internal(format!(
                    "the statement's task failed: {err}"
                ))))
            }),
            () = hangup => Err(PgWireError::IoError(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the client closed the connection; its statement was cancelled",
            ))),
        }
    }
}

impl SessionRunner {
    /// After a cancel: waits for the stopped statement to let go of the session, then ends
    /// its transaction as an error would.
    async fn abort_statement(&self) {
        let slot = self.session.clone();
        let aborted = tributary_sql::runtime::spawn(async move {
            if let Some(session) = slot.lock_owned().await.as_mut() {
                session.abort_statement().await;
            }
        });
        if let Err(err) = aborted.await {
            tracing::error!(%err, "ending a cancelled statement failed");
        }
    }

    /// A result whose rows stop with an error once the client hangs up or cancels: rows are
    /// computed while they are sent, after [`Self::on_session`] has returned, and a client
    /// that waits for the first row of a long query sends nothing the message loop would
    /// notice. Dropping the rows stops their computation.
    fn watched(&self, output: Output, watch: &CancelWatch) -> Output {
        match output {
            Output::Rows { schema, stream } => {
                let (hangup, runner, watch) = (self.hangup.clone(), self.clone(), watch.clone());
                let rows = stream::unfold(Some(stream), move |stream| {
                    let (hangup, runner, watch) = (hangup.clone(), runner.clone(), watch.clone());
                    async move {
                        let mut stream = stream?;
                        let hangup = async {
                            match &hangup {
                                Some(hangup) => hangup.wait().await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            batch = stream.next() => batch.map(|batch| (batch, Some(stream))),
                            () = hangup => Some((Err(client_gone()), None)),
                            () = watch.cancelled() => {
                                drop(stream);
                                runner.abort_statement().await;
                                Some((Err(canceled_rows()), None))
                            }
                        }
                    }
                });
                Output::Rows {
                    schema: schema.clone(),
                    stream: Box::pin(RecordBatchStreamAdapter::new(schema, rows)),
                }
            }
            other => other,
        }
    }
}

/// The error of a cancelled statement (Postgres's words and SQLSTATE).
fn query_canceled() -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "57014".into(),
        "canceling statement due to user request".into(),
    )))
}

/// The error that ends a cancelled query's rows.
fn canceled_rows() -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(Canceled))
}

/// A query's rows were cancelled by a cancel request.
#[derive(Debug, thiserror::Error)]
#[error("canceling statement due to user request")]
struct Canceled;

/// The error that ends a hung-up client's rows.
fn client_gone() -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(ClientGone))
}

/// A query's client closed the connection while its rows were computed.
#[derive(Debug, thiserror::Error)]
#[error("the client closed the connection; its statement was cancelled")]
struct ClientGone;

/// The error that ends a query's rows.
fn rows_error(err: datafusion::error::DataFusionError) -> PgWireError {
    if let datafusion::error::DataFusionError::External(inner) = &err {
        if inner.is::<Canceled>() {
            return query_canceled();
        }
        if inner.is::<ClientGone>() {
            return PgWireError::IoError(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                inner.to_string(),
            ));
        }
    }
    to_pgwire(tributary_sql::Error::from(err))
}

/// The open session a guard holds.
fn session(guard: &mut SessionGuard) -> &mut Session {
    guard
        .as_mut()
        .expect("on_session opens the session before running work")
}

/// A statement's result, with its rows (if any) computed on the compute runtime as the
/// client reads them.
fn detached(output: Output) -> Output {
    match output {
        Output::Rows { schema, stream } => Output::Rows {
            schema,
            stream: tributary_sql::runtime::detach_stream(stream),
        },
        other => other,
    }
}

/// Postgres refuses a Bind whose result formats are neither one for all columns nor one per
/// column; encoding such a portal would index past the codes.
fn check_result_formats(format: &Format, columns: usize) -> PgWireResult<()> {
    match format {
        Format::Individual(codes) if codes.len() != columns => {
            Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "08P01".into(),
                format!(
                    "bind message has {} result formats but query has {columns} columns",
                    codes.len()
                ),
            ))))
        }
        _ => Ok(()),
    }
}

async fn send_notices<C>(client: &mut C, notices: Vec<Notice>) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for notice in notices {
        let code = if notice.severity == "WARNING" {
            "01000"
        } else {
            "00000"
        };
        let info = ErrorInfo::new(
            notice.severity.to_string(),
            code.to_string(),
            notice.message,
        );
        client
            .send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                info,
            )))
            .await?;
    }
    Ok(())
}

/// Turns a statement's output into a pgwire response, streaming rows.
fn respond(output: Output, format: &Format, options: Arc<FormatOptions>) -> PgWireResult<Response> {
    match output {
        Output::Command { tag, rows } => {
            // pgwire derives the transaction status of ReadyForQuery from these.
            match tag.as_str() {
                "BEGIN" => return Ok(Response::TransactionStart(Tag::new(&tag))),
                "COMMIT" | "ROLLBACK" => return Ok(Response::TransactionEnd(Tag::new(&tag))),
                _ => {}
            }
            let tag = match (tag.as_str(), rows) {
                ("INSERT", Some(rows)) => Tag::new("INSERT").with_oid(0).with_rows(rows as usize),
                (_, Some(rows)) => Tag::new(&tag).with_rows(rows as usize),
                (_, None) => Tag::new(&tag),
            };
            Ok(Response::Execution(tag))
        }
        Output::CopyIn { columns } => Ok(Response::CopyIn(CopyResponse::new(
            0,
            columns,
            stream::empty(),
        ))),
        Output::Rows { schema, stream } => {
            let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
            let row_fields = fields.clone();
            let rows = stream
                .map(move |batch| match batch {
                    Ok(batch) => stream::iter(encode_rows(row_fields.clone(), batch)),
                    Err(err) => stream::iter(vec![Err(rows_error(err))]),
                })
                .flatten();
            Ok(Response::Query(QueryResponse::new(fields, rows)))
        }
    }
}

/// The rows of `batch` as the client reads them, ending at the first that cannot be encoded
/// (with its error): arrow-pg's row encoder yields a failing row's error again and again
/// without moving past it, so taking its rows whole would never end (one query could fill
/// the server's memory). DECIMAL columns sent as text are encoded from their text
/// ([`decimals_as_text`]).
fn encode_rows(fields: Arc<Vec<FieldInfo>>, batch: RecordBatch) -> Vec<PgWireResult<DataRow>> {
    let batch = match decimals_as_text(&fields, batch) {
        Ok(batch) => batch,
        Err(err) => return vec![Err(rows_error(err))],
    };
    first_rows_to_an_error(encode_recordbatch(fields, batch))
}

/// `rows` up to and with the first error.
fn first_rows_to_an_error<T>(rows: impl Iterator<Item = PgWireResult<T>>) -> Vec<PgWireResult<T>> {
    let mut out = Vec::new();
    for row in rows {
        let failed = row.is_err();
        out.push(row);
        if failed {
            break;
        }
    }
    out
}

/// `batch` with its DECIMAL columns that go to the client as text turned into their text
/// ("1.50" for 1.5 in DECIMAL(10,2), as Postgres and Redshift print them): arrow-pg encodes
/// DECIMAL through a 96-bit decimal type, which holds 28 digits, and DECIMAL(38) values hold
/// up to 38. Binary results keep arrow-pg's encoding.
fn decimals_as_text(
    fields: &[FieldInfo],
    batch: RecordBatch,
) -> datafusion::error::Result<RecordBatch> {
    use datafusion_postgres::pgwire::api::results::FieldFormat;
    let text = |(field, info): (&arrow::datatypes::FieldRef, &FieldInfo)| {
        matches!(field.data_type(), DataType::Decimal128(..)) && info.format() == FieldFormat::Text
    };
    let schema = batch.schema();
    if !schema.fields().iter().zip(fields).any(text) {
        return Ok(batch);
    }
    let mut columns = Vec::with_capacity(batch.num_columns());
    let mut new_fields = Vec::with_capacity(batch.num_columns());
    for ((field, info), column) in schema.fields().iter().zip(fields).zip(batch.columns()) {
        if text((field, info)) {
            columns.push(arrow::compute::cast(column, &DataType::Utf8)?);
            new_fields.push(field.as_ref().clone().with_data_type(DataType::Utf8));
        } else {
            columns.push(column.clone());
            new_fields.push(field.as_ref().clone());
        }
    }
    let schema = arrow::datatypes::Schema::new_with_metadata(new_fields, schema.metadata().clone());
    Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let query = query.to_string();
        let watch = self.runner.cancel.watch();
        let (results, notices) = self
            .runner
            .on_session(client, &watch, move |mut guard| {
                Box::pin(async move {
                    let session = session(&mut guard);
                    let statements = session.parse(&query).map_err(to_pgwire)?;
                    let single = statements.len() == 1;
                    let mut results = Vec::with_capacity(statements.len());
                    for statement in statements {
                        let result = if single {
                            session.execute_text(statement, &query).await
                        } else {
                            session.execute(statement).await
                        };
                        let failed = result.is_err();
                        results.push(result.map(detached));
                        if failed {
                            break;
                        }
                    }
                    Ok((results, session.take_notices()))
                })
            })
            .await?;
        send_notices(client, notices).await?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let mut responses = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(output) => {
                    if matches!(output, Output::CopyIn { .. }) {
                        self.begin_copy(client, &watch).await;
                    }
                    responses.push(respond(
                        self.runner.watched(output, &watch),
                        &Format::UnifiedText,
                        options.clone(),
                    )?)
                }
                Err(err) => {
                    // Statements before the failing one keep their results, as in Postgres.
                    if matches!(
                        err,
                        tributary_sql::Error::Internal(_) | tributary_sql::Error::Storage(_)
                    ) {
                        tracing::error!(%err, "statement failed");
                    }
                    responses.push(Response::Error(Box::new(error_info(&err))));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// Decodes bound parameters. A value the client typed (say float8 for a DECIMAL column) is
/// decoded as the client sent it and then cast to the type the statement needs, as Postgres
/// does; untyped values are decoded as the needed type directly.
fn decode_parameters(portal: &Portal<Prepared>, prepared: &Prepared) -> PgWireResult<ParamValues> {
    let nulls_as_text = nulls_as_text(portal);
    let portal = nulls_as_text.as_ref().unwrap_or(portal);
    let client_types = &portal.statement.parameter_types;
    let decode_as: Vec<Option<&DataType>> = prepared
        .param_types
        .iter()
        .enumerate()
        .map(|(i, t)| match client_types.get(i) {
            Some(Some(hint)) if *hint != Type::UNKNOWN => None,
            _ => t.as_ref(),
        })
        .collect();
    let decoded = deserialize_parameters(portal, &decode_as).map_err(|err| match err {
        // Postgres tells a malformed binary value (22P03) from malformed text (22P02).
        PgWireError::FailedToParseParameter(_)
            if (0..portal.parameters.len()).any(|i| portal.parameter_format.is_binary(i)) =>
        {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "22P03".into(),
                err.to_string(),
            )))
        }
        err => err,
    })?;
    let ParamValues::List(values) = decoded else {
        return Ok(decoded);
    };
    let cast = values
        .into_iter()
        .enumerate()
        .map(
            |(i, value)| match prepared.param_types.get(i).cloned().flatten() {
                Some(target) if value.value.data_type() != target => {
                    let scalar = value
                        .value
                        .cast_to(&target)
                        .map_err(|e| to_pgwire(e.into()))?;
                    Ok(ScalarAndMetadata::from(scalar))
                }
                _ => Ok(value),
            },
        )
        .collect::<PgWireResult<Vec<_>>>()?;
    Ok(ParamValues::List(cast))
}

/// arrow-pg leaves out a NULL parameter of a type it does not decode (an unknown or
/// unspecified type), which moves every later parameter one place and fails the statement
/// ("No value found for placeholder"). A NULL needs no decoding: the portal given to arrow-pg
/// says every NULL is text, and the cast to the type the statement needs makes it a typed
/// NULL. None if the portal has no NULL parameter.
fn nulls_as_text(portal: &Portal<Prepared>) -> Option<Portal<Prepared>> {
    if portal.parameters.iter().all(Option::is_some) {
        return None;
    }
    let mut types = portal.statement.parameter_types.clone();
    types.resize(types.len().max(portal.parameters.len()), None);
    for (index, value) in portal.parameters.iter().enumerate() {
        if value.is_none() {
            types[index] = Some(Type::TEXT);
        }
    }
    let mut patched = Portal::<Prepared>::default();
    patched.name = portal.name.clone();
    patched.statement = Arc::new(StoredStatement::new(
        portal.statement.id.clone(),
        portal.statement.statement.clone(),
        types,
    ));
    patched.parameter_format = portal.parameter_format.clone();
    patched.parameters = portal.parameters.clone();
    patched.result_column_format = portal.result_column_format.clone();
    Some(patched)
}

/// Parses extended-protocol statements with the connection's session.
pub struct Parser {
    runner: SessionRunner,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = sql.to_string();
        let prepared = self
            .runner
            .on_session(client, &self.runner.cancel.watch(), move |mut guard| {
                Box::pin(async move { session(&mut guard).prepare(&sql).await.map_err(to_pgwire) })
            })
            .await?;
        Ok(prepared.statement.is_some().then_some(prepared))
    }

    fn get_parameter_types(&self, prepared: &Prepared) -> PgWireResult<Vec<Type>> {
        prepared
            .param_types
            .iter()
            .map(|t| match t {
                Some(data_type) => into_pg_type(data_type),
                None => Ok(Type::UNKNOWN),
            })
            .collect()
    }

    fn get_result_schema(
        &self,
        prepared: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &prepared.schema {
            Some(schema) => {
                let format = format.unwrap_or(&Format::UnifiedText);
                check_result_formats(format, schema.fields().len())?;
                arrow_schema_to_pg_fields(schema, format, None)
            }
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::new(Parser {
            runner: self.runner.clone(),
        })
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = portal.statement.statement.clone();
        if let Some(schema) = &prepared.schema {
            check_result_formats(&portal.result_column_format, schema.fields().len())?;
        }
        let params = decode_parameters(portal, &prepared)?;
        let watch = self.runner.cancel.watch();
        let (result, notices) = self
            .runner
            .on_session(client, &watch, move |mut guard| {
                Box::pin(async move {
                    let session = session(&mut guard);
                    let result = session.execute_prepared(&prepared, params).await;
                    Ok((result.map(detached), session.take_notices()))
                })
            })
            .await?;
        send_notices(client, notices).await?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let output = result.map_err(to_pgwire)?;
        if matches!(output, Output::CopyIn { .. }) {
            self.begin_copy(client, &watch).await;
        }
        respond(
            self.runner.watched(output, &watch),
            &portal.result_column_format,
            options,
        )
    }
}

impl Queries {
    /// A `COPY ... FROM STDIN` statement starts its load as it answers, before the client
    /// sends data: a cancel request that comes before the first CopyData stops it too.
    async fn begin_copy<C: ClientInfo>(&self, client: &C, watch: &CancelWatch) {
        let copy = self.start_copy(client, watch.clone());
        // A COPY left behind (none should be) stops as it is dropped.
        drop(self.copy_in.lock().await.replace(copy));
    }

    /// Starts the load of a `COPY ... FROM STDIN`, fed block by block; a cancel request
    /// made since `watch` began stops it at its next block.
    fn start_copy<C: ClientInfo>(&self, client: &C, watch: CancelWatch) -> CopyIn {
        let (blocks, receiver) = tokio::sync::mpsc::channel::<Bytes>(COPY_QUEUE_BLOCKS);
        let cancel = {
            let watch = watch.clone();
            Box::pin(async move { watch.cancelled().await })
        };
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = (receiver, cancel, cancelled.clone());
        let data = stream::unfold(Some(state), |state| async move {
            let (mut receiver, mut cancel, cancelled) = state?;
            let block = tokio::select! {
                biased;
                () = cancel.as_mut() => {
                    cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::Interrupted,
                            "canceling statement due to user request",
                        )),
                        None,
                    ));
                }
                block = receiver.recv() => block,
            };
            match block {
                Some(block) if block.is_empty() => None,
                Some(block) => Some((Ok(block), Some((receiver, cancel, cancelled)))),
                None => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the client ended the COPY before its end",
                    )),
                    None,
                )),
            }
        })
        .boxed();
        let job = self.runner.start_on_session(client, move |mut guard| {
            Box::pin(async move {
                let session = session(&mut guard);
                let result = session.copy_in(data).await;
                Ok((result, session.take_notices()))
            })
        });
        CopyIn {
            job,
            gathered: Vec::new(),
            blocks,
            cancelled,
            watch,
        }
    }
}

/// `COPY ... FROM STDIN`: the data is loaded as it arrives, as one statement that ends at
/// CopyDone.
#[async_trait]
impl CopyHandler for Queries {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut copy_in = self.copy_in.lock().await;
        let copy = match copy_in.as_mut() {
            Some(copy) => copy,
            None => copy_in.insert(self.start_copy(client, self.runner.cancel.watch())),
        };
        copy.gathered.extend_from_slice(&copy_data.data);
        if copy.gathered.len() >= COPY_BLOCK_BYTES {
            let block = Bytes::from(std::mem::take(&mut copy.gathered));
            // A load that stopped (an error) takes no more; CopyDone tells its error.
            let _ = copy.blocks.send(block).await;
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let copy = self.copy_in.lock().await.take();
        let CopyIn {
            job,
            gathered,
            blocks,
            cancelled,
            watch,
        } = copy.unwrap_or_else(|| self.start_copy(client, self.runner.cancel.watch()));
        if !gathered.is_empty() {
            let _ = blocks.send(Bytes::from(gathered)).await;
        }
        let _ = blocks.send(Bytes::new()).await;
        drop(blocks);
        let (result, notices) = self.runner.wait_for(job, &watch).await?;
        if cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            // The load failed and rolled back when the cancel came.
            return Err(query_canceled());
        }
        send_notices(client, notices).await?;
        let rows = match result.map_err(to_pgwire)? {
            tributary_sql::Output::Command { rows, .. } => rows.unwrap_or(0),
            _ => 0,
        };
        let tag = Tag::new("COPY").with_rows(rows as usize);
        client
            .send(PgWireBackendMessage::CommandComplete(
                CommandComplete::from(tag),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let copy = self.copy_in.lock().await.take();
        match copy {
            Some(CopyIn { job, blocks, .. }) => {
                // The queue closes without the end mark: the load fails and rolls back.
                drop(blocks);
                let _ = job.await;
            }
            None => {
                if let Some(session) = self.runner.session.lock().await.as_mut() {
                    session.cancel_copy();
                }
            }
        }
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_owned(),
            "57014".to_owned(),
            format!("COPY from stdin failed: {}", fail.message),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoder that keeps failing on one row is read up to its first error only.
    #[test]
    fn rows_end_at_the_first_that_cannot_be_encoded() {
        let endless = (0..).map(|i| {
            if i < 2 {
                Ok(i)
            } else {
                Err(PgWireError::ApiError("cannot encode".into()))
            }
        });
        let rows = first_rows_to_an_error(endless);
        assert_eq!(rows.len(), 3);
        assert!(rows[..2].iter().all(Result::is_ok) && rows[2].is_err());
    }
}
