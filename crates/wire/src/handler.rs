//! One client connection: its authentication, its SQL session, and the simple and extended
//! query protocols, with results encoded by arrow-pg.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::common::metadata::ScalarAndMetadata;
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
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use datafusion_postgres::pgwire::messages::response::CommandComplete;
use datafusion_postgres::pgwire::messages::response::NoticeResponse;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::{Sink, SinkExt, StreamExt, stream};
use tokio::sync::Mutex;
use tributary_sql::{Engine, Output, Prepared, Session};

use crate::auth::{PasswordMethod, Startup};
use crate::sqlstate::{error_info, to_pgwire};

/// The handlers of one connection. pgwire asks for them once per connection, so the state
/// they hold (authentication exchange, session) is the connection's own.
pub struct Connection {
    startup: Arc<Startup>,
    queries: Arc<Queries>,
}

impl Connection {
    pub fn new(engine: Arc<Engine>, method: PasswordMethod) -> Self {
        Self {
            startup: Arc::new(Startup::new(engine.clone(), method)),
            queries: Arc::new(Queries {
                engine,
                session: Arc::new(Mutex::new(None)),
                copy_data: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }
}

impl Connection {
    /// Ends the connection's session, rolling back its open transaction.
    pub async fn close(&self) {
        if let Some(mut session) = self.queries.session.lock().await.take() {
            session.close().await;
        }
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.queries.clone()
    }
}

type SharedSession = Arc<Mutex<Option<Session>>>;

pub struct Queries {
    engine: Arc<Engine>,
    session: SharedSession,
    /// The data of a `COPY ... FROM STDIN` in progress.
    copy_data: std::sync::Mutex<Vec<u8>>,
}

/// Opens the session on first use, for the user and database of the startup message.
async fn session_of<'a, C: ClientInfo>(
    engine: &Arc<Engine>,
    slot: &'a Mutex<Option<Session>>,
    client: &C,
) -> PgWireResult<tokio::sync::MutexGuard<'a, Option<Session>>> {
    let mut guard = slot.lock().await;
    if guard.is_none() {
        let metadata = client.metadata();
        let user = metadata
            .get("user")
            .cloned()
            .unwrap_or_else(|| "admin".to_string());
        let database = metadata
            .get("database")
            .cloned()
            .unwrap_or_else(|| user.clone());
        *guard = Some(engine.session(&user, &database).map_err(to_pgwire)?);
    }
    Ok(guard)
}

async fn send_notices<C>(client: &mut C, session: &mut Session) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for notice in session.take_notices() {
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
                    Ok(batch) => stream::iter(
                        encode_recordbatch(row_fields.clone(), batch).collect::<Vec<_>>(),
                    ),
                    Err(err) => stream::iter(vec![Err(to_pgwire(tributary_sql::Error::from(err)))]),
                })
                .flatten();
            Ok(Response::Query(QueryResponse::new(fields, rows)))
        }
    }
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
        let mut guard = session_of(&self.engine, &self.session, client).await?;
        let session = guard.as_mut().expect("session_of opened it");
        let statements = session.parse(query).map_err(to_pgwire)?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let mut responses = Vec::with_capacity(statements.len());
        let single = statements.len() == 1;
        for statement in statements {
            let result = if single {
                session.execute_text(statement, query).await
            } else {
                session.execute(statement).await
            };
            send_notices(client, session).await?;
            match result {
                Ok(output) => {
                    responses.push(respond(output, &Format::UnifiedText, options.clone())?)
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
    let decoded = deserialize_parameters(portal, &decode_as)?;
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

/// Parses extended-protocol statements with the connection's session.
pub struct Parser {
    engine: Arc<Engine>,
    session: SharedSession,
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
        let mut guard = session_of(&self.engine, &self.session, client).await?;
        let session = guard.as_mut().expect("session_of opened it");
        let prepared = session.prepare(sql).await.map_err(to_pgwire)?;
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
                arrow_schema_to_pg_fields(schema, format.unwrap_or(&Format::UnifiedText), None)
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
            engine: self.engine.clone(),
            session: self.session.clone(),
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
        let prepared = &portal.statement.statement;
        let params = decode_parameters(portal, prepared)?;
        let mut guard = session_of(&self.engine, &self.session, client).await?;
        let session = guard.as_mut().expect("session_of opened it");
        let result = session.execute_prepared(prepared, params).await;
        send_notices(client, session).await?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        respond(
            result.map_err(to_pgwire)?,
            &portal.result_column_format,
            options,
        )
    }
}

/// `COPY ... FROM STDIN`: the data is gathered, then loaded as one statement at CopyDone.
#[async_trait]
impl CopyHandler for Queries {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.copy_data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&copy_data.data);
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let data = std::mem::take(&mut *self.copy_data.lock().unwrap_or_else(|e| e.into_inner()));
        let mut guard = session_of(&self.engine, &self.session, client).await?;
        let session = guard.as_mut().expect("session_of opened it");
        let result = session.copy_in(bytes::Bytes::from(data)).await;
        send_notices(client, session).await?;
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

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.copy_data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if let Ok(mut guard) = session_of(&self.engine, &self.session, client).await
            && let Some(session) = guard.as_mut()
        {
            session.cancel_copy();
        }
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_owned(),
            "57014".to_owned(),
            format!("COPY from stdin failed: {}", fail.message),
        )))
    }
}
