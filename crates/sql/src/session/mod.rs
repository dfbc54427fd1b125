//! A SQL session: the statement loop. Each statement is run in the open transaction or in one
//! of its own, checked, and handed to DataFusion or to its handler with the session's
//! [`Context`]. Every statement pins the catalog version current when it starts.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::StreamExt;
use futures::future::BoxFuture;
use tributary_engine::settings::Settings;
use tributary_engine::transaction::Ended;
use tributary_syntax::names::name_parts;
use tributary_syntax::rewrite::idents;
use tributary_syntax::{ExtStatement, Statement};

use crate::classify::{
    Route, count_rows, is_planned, output_schema, rename_stream, returns_rows, split_dml,
};
use crate::context::Context;
use crate::copy::CopyPlan;
use crate::engine::Engine;
use crate::output::Output;
use crate::procedure::runner::Runner;
use crate::{Error, Result};

/// A statement parsed for the extended protocol, with what Describe needs.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub statement: Option<Statement>,
    /// Parameter types DataFusion inferred, in `$1, $2, ...` order (None: unknown).
    pub param_types: Vec<Option<DataType>>,
    /// The result columns, for statements that return rows.
    pub schema: Option<SchemaRef>,
    /// The text the client sent (for the recent queries).
    pub text: String,
}

/// One client session.
pub struct Session {
    cx: Context,
    /// A `COPY ... FROM STDIN` waiting for the client's data.
    pending_copy: Option<CopyPlan>,
}

impl Engine {
    /// Opens a session for an authenticated user on a database.
    pub fn session(self: &Arc<Self>, user: &str, database: &str) -> Result<Session> {
        Ok(Session {
            cx: Context::new(self.clone(), user, database)?,
            pending_copy: None,
        })
    }
}

impl Session {
    pub fn user(&self) -> &str {
        self.cx.user()
    }

    pub fn database(&self) -> &str {
        self.cx.database()
    }

    pub fn settings(&self) -> &Settings {
        self.cx.settings()
    }

    /// Parses a query string into statements.
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        self.cx.parse(sql)
    }

    /// True inside a BEGIN block.
    pub fn in_transaction(&self) -> bool {
        self.cx.catalogs().in_explicit_transaction()
    }

    /// Ends the session: an open transaction is rolled back.
    pub async fn close(&mut self) {
        self.cx.catalogs().rollback().await;
    }

    /// Notices raised by the last statement (sent to the client before its result).
    pub fn take_notices(&mut self) -> Vec<crate::output::Notice> {
        self.cx.take_notices()
    }

    /// Runs one statement of the simple protocol.
    pub async fn execute(&mut self, statement: Statement) -> Result<Output> {
        self.execute_with_params(statement, None, None).await
    }

    /// Runs one statement the client sent as `text` (the recent queries show that text
    /// rather than the parsed statement).
    pub async fn execute_text(&mut self, statement: Statement, text: &str) -> Result<Output> {
        self.execute_with_params(statement, None, Some(text)).await
    }

    /// Parses a statement for the extended protocol and works out its parameter and result
    /// types. The statement is planned again at execution, against the catalog of that time.
    pub async fn prepare(&mut self, sql: &str) -> Result<Prepared> {
        let mut statements = self.parse(sql)?;
        if statements.len() > 1 {
            return Err(Error::Syntax(
                "cannot insert multiple commands into a prepared statement".into(),
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(Prepared {
                statement: None,
                param_types: vec![],
                schema: None,
                text: sql.to_string(),
            });
        };
        let query = match Route::of(statement.clone()) {
            Route::Planned(query) => query,
            _ => {
                let placeholders = match &statement {
                    Statement::Sql(other) => tributary_engine::params::placeholder_count(other),
                    Statement::Ext(_) => 0,
                };
                let schema = self.describe_utility(&statement);
                return Ok(Prepared {
                    statement: Some(statement),
                    // Bound as literals at execution: the client's own types decide.
                    param_types: vec![None; placeholders],
                    schema,
                    text: sql.to_string(),
                });
            }
        };
        let placeholders = tributary_engine::params::placeholder_count(&query);
        self.cx.catalogs().pin_statement();
        self.cx.pin_producers().await?;
        let mut prepared = self.cx.rewrite(query.clone())?;
        // Table functions are planned with their arguments' values, which come later.
        tributary_engine::params::bind_table_functions(&mut prepared, None)?;
        let plan = self.cx.plan(&prepared).await?;
        let types = plan.get_parameter_types()?;
        let count = types
            .keys()
            .filter_map(|k| k.trim_start_matches('$').parse::<usize>().ok())
            .max()
            .unwrap_or(0)
            .max(placeholders);
        let param_types = (1..=count)
            .map(|i| types.get(&format!("${i}")).cloned().flatten())
            .collect();
        let schema = returns_rows(&query).then(|| output_schema(&prepared, &plan));
        Ok(Prepared {
            statement: Some(statement),
            param_types,
            schema,
            text: sql.to_string(),
        })
    }

    /// Runs a prepared statement with bound parameter values.
    pub async fn execute_prepared(
        &mut self,
        prepared: &Prepared,
        params: ParamValues,
    ) -> Result<Output> {
        match &prepared.statement {
            None => Ok(Output::command("")),
            Some(statement) => {
                self.execute_with_params(statement.clone(), Some(params), Some(&prepared.text))
                    .await
            }
        }
    }

    /// Runs a client's statement, and records it in the metrics and the recent queries.
    async fn execute_with_params(
        &mut self,
        statement: Statement,
        params: Option<ParamValues>,
        text: Option<&str>,
    ) -> Result<Output> {
        let timer = self.query_timer(match text {
            Some(text) => text.trim().to_string(),
            None => crate::metrics::statement_text(&statement),
        });
        // Boxed: the statement's future is large, and nesting it would make every caller's
        // future larger still.
        let result = match bind_parameters(statement, params) {
            Ok((statement, params)) => Box::pin(self.execute_statement(statement, params)).await,
            Err(err) => Err(err),
        };
        Ok(match result {
            Ok(Output::Rows { schema, stream }) => Output::Rows {
                schema,
                stream: Box::pin(crate::metrics::TimedStream::new(stream, timer)),
            },
            Ok(Output::Command { tag, rows }) => {
                let mut timer = timer;
                timer.record.command = tag.clone();
                timer.finish(None);
                Output::Command { tag, rows }
            }
            // Recorded when its data has been loaded.
            Ok(output @ Output::CopyIn { .. }) => output,
            Err(err) => {
                timer.finish(Some(err.to_string()));
                return Err(err);
            }
        })
    }

    fn query_timer(&self, text: String) -> crate::metrics::QueryTimer {
        crate::metrics::QueryTimer::start(
            self.cx.engine().clone(),
            crate::QueryRecord {
                user: self.cx.user().to_string(),
                database: self.cx.database().to_string(),
                // The first word until the statement's tag is known; the running list shows it.
                command: crate::metrics::row_command(&text),
                text,
                start_micros: chrono::Utc::now().timestamp_micros(),
                duration_micros: 0,
                status: String::new(),
                memory_bytes: 0,
                peak_memory_bytes: 0,
            },
            self.cx.memory().clone(),
        )
    }

    /// Runs a statement in the open transaction, or in a transaction of its own that commits
    /// when it succeeds (autocommit).
    async fn execute_statement(
        &mut self,
        statement: Statement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        self.cx.clock.start_statement();
        let failed = self.cx.catalogs().in_failed_transaction();
        match &statement {
            Statement::Sql(SqlStatement::Commit { .. }) => return self.commit_block().await,
            Statement::Sql(SqlStatement::Rollback {
                savepoint: None, ..
            }) => return self.rollback_block().await,
            _ if failed => return Err(Error::InFailedTransaction),
            Statement::Sql(SqlStatement::StartTransaction { .. }) => return Ok(self.begin_block()),
            _ => {}
        }
        let autocommit = self.cx.catalogs().begin(false);
        let result = self.run_in_transaction(statement, params, autocommit).await;
        self.finish_statement(autocommit, result).await
    }

    /// Loads the data of a `COPY ... FROM STDIN` as it arrives, as one statement. An error
    /// item in `data` (the client gave up) rolls it back.
    pub async fn copy_in(
        &mut self,
        data: impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin,
    ) -> Result<Output> {
        let plan = self
            .pending_copy
            .take()
            .ok_or_else(|| Error::Internal("copy data without a COPY FROM STDIN".into()))?;
        let mut timer = self.query_timer("COPY ... FROM STDIN".to_string());
        timer.record.command = "COPY".to_string();
        self.cx.clock.start_statement();
        let autocommit = self.cx.catalogs().begin(false);
        let result = async {
            if autocommit {
                let (schema, table) = plan.target();
                self.cx
                    .catalogs()
                    .prelock(self.cx.database(), schema, table)
                    .await?;
            }
            self.cx.catalogs().pin_statement();
            let rows = crate::copy::load_stream(&self.cx, &plan, data).await?;
            Ok(Output::Command {
                tag: "COPY".into(),
                rows: Some(rows),
            })
        }
        .await;
        let result = self.finish_statement(autocommit, result).await;
        timer.finish(result.as_ref().err().map(ToString::to_string));
        result
    }

    /// Ends a statement that was stopped half way (a cancel request): in a block, the block
    /// fails, as after an error; an autocommit statement's transaction is rolled back.
    pub async fn abort_statement(&mut self) {
        self.pending_copy = None;
        if self.cx.catalogs().in_explicit_transaction() {
            self.cx.catalogs().mark_failed();
        } else {
            self.cx.catalogs().rollback().await;
        }
    }

    /// Forgets a `COPY ... FROM STDIN` the client abandoned.
    pub fn cancel_copy(&mut self) {
        self.pending_copy = None;
    }

    /// Commits an autocommit statement's transaction, or rolls it back on error; in a block,
    /// an error fails the block.
    async fn finish_statement(
        &mut self,
        autocommit: bool,
        result: Result<Output>,
    ) -> Result<Output> {
        if !autocommit {
            if result.is_err() {
                self.cx.catalogs().mark_failed();
            }
            return result;
        }
        match result {
            Ok(output) => {
                self.cx.catalogs().commit().await?;
                Ok(output)
            }
            Err(err) => {
                self.cx.catalogs().rollback().await;
                Err(err)
            }
        }
    }

    fn begin_block(&mut self) -> Output {
        if !self.cx.catalogs().begin(true) {
            self.cx.notice("there is already a transaction in progress");
        }
        Output::command("BEGIN")
    }

    async fn commit_block(&mut self) -> Result<Output> {
        if !self.cx.catalogs().in_explicit_transaction() {
            self.cx.notice("there is no transaction in progress");
            return Ok(Output::command("COMMIT"));
        }
        Ok(match self.cx.catalogs().commit().await? {
            Ended::Committed => Output::command("COMMIT"),
            Ended::RolledBack => Output::command("ROLLBACK"),
        })
    }

    async fn rollback_block(&mut self) -> Result<Output> {
        if !self.cx.catalogs().in_explicit_transaction() {
            self.cx.notice("there is no transaction in progress");
        }
        self.cx.catalogs().rollback().await;
        Ok(Output::command("ROLLBACK"))
    }

    /// Runs a statement in the current transaction: it is classified once, its write targets
    /// are locked (autocommit), its producers pinned, its privileges checked, and it is
    /// dispatched to DataFusion or to its handler.
    async fn run_in_transaction(
        &mut self,
        statement: Statement,
        params: Option<ParamValues>,
        autocommit: bool,
    ) -> Result<Output> {
        let route = Route::of(statement);
        if autocommit {
            self.lock_write_targets(&route).await?;
        }
        self.cx.catalogs().pin_statement();
        self.cx.pin_producers().await?;
        let route = match route {
            Route::Planned(statement) => Route::Planned(self.cx.rewrite(statement)?),
            other => other,
        };
        crate::access::check::authorize(&self.cx, &route)?;
        match route {
            Route::Ext(statement) => self.execute_ext(statement, autocommit).await,
            Route::Call(function) => crate::procedure::call(self, &function, autocommit).await,
            Route::Dml(statement) => {
                let (dml, with) = split_dml(statement);
                crate::dml::execute(&mut self.cx, dml, with).await
            }
            Route::Planned(statement) => self.execute_planned(statement, params).await,
            Route::Utility(statement) => self.execute_utility(statement).await,
        }
    }

    /// An autocommit write takes its targets' locks before its snapshot, so that waiting for
    /// another writer never makes it conflict.
    async fn lock_write_targets(&self, route: &Route) -> Result<()> {
        for (name, _) in route.write_targets() {
            let parts = name_parts(&name);
            if parts.len() == 1
                && datafusion::catalog::SchemaProvider::table_exist(
                    self.cx.catalogs().temp().as_ref(),
                    &parts[0],
                )
            {
                continue;
            }
            let Ok((schema, table)) = self.cx.resolve_existing(&name) else {
                continue;
            };
            self.cx
                .catalogs()
                .prelock(self.cx.database(), &schema, &table)
                .await?;
        }
        Ok(())
    }

    /// Plans a qualified query, INSERT or EXPLAIN and runs it: an INSERT to its end, a query
    /// as a stream of rows.
    async fn execute_planned(
        &mut self,
        statement: SqlStatement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        let plan = self.cx.plan(&statement).await?;
        let plan = match params {
            Some(params) => plan.with_param_values(params)?,
            None => plan,
        };
        if matches!(statement, SqlStatement::Insert(_)) {
            let result = match self.cx.context().execute_logical_plan(plan).await {
                Ok(frame) => frame.collect().await,
                Err(err) => Err(err),
            };
            let batches = result.map_err(|err| self.cx.insert_error(&statement, err))?;
            return Ok(Output::Command {
                tag: "INSERT".into(),
                rows: Some(count_rows(&batches)),
            });
        }
        let schema = output_schema(&statement, &plan);
        let stream = crate::rerun::execute_stream(self.cx.context().state(), plan).await?;
        // An error while the rows stream fails the open transaction, like any other error.
        let catalogs = self.cx.catalogs().clone();
        let stream = rename_stream(schema.clone(), stream);
        let stream = stream.inspect(move |batch| {
            if batch.is_err() {
                catalogs.mark_failed();
            }
        });
        Ok(Output::Rows {
            schema: schema.clone(),
            stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        })
    }

    /// Runs a Redshift statement that sqlparser lacks.
    async fn execute_ext(&mut self, statement: ExtStatement, autocommit: bool) -> Result<Output> {
        match statement {
            ExtStatement::Access(access) => crate::access::execute(&mut self.cx, access).await,
            ExtStatement::CreateExternalSchema {
                name,
                if_not_exists,
                source,
                options,
            } => {
                crate::streaming::create_external_schema(
                    &mut self.cx,
                    &name,
                    if_not_exists,
                    &source,
                    options,
                )
                .await
            }
            ExtStatement::AlterExternalSchema { name, options } => {
                crate::streaming::alter_external_schema(&mut self.cx, &idents(&name), options)
            }
            ExtStatement::CreateMirrorTable { table, clauses } => {
                crate::streaming::mirror::create(&mut self.cx, *table, clauses).await
            }
            ExtStatement::Refresh { name } => {
                crate::streaming::refresh(&mut self.cx, &idents(&name), autocommit).await
            }
            ExtStatement::AlterAutoRefresh { name, enable } => {
                crate::streaming::alter_auto_refresh(
                    &mut self.cx,
                    &idents(&name),
                    enable,
                    autocommit,
                )
                .await
            }
            ExtStatement::CreateProcedure { name, definition } => {
                crate::procedure::create(&mut self.cx, &name, definition)
            }
            ExtStatement::ShowProcedure {
                name,
                argument_types,
            } => crate::procedure::show(&mut self.cx, &name, argument_types.as_deref()),
        }
    }

    /// Runs a statement that is neither planned by DataFusion nor DML.
    async fn execute_utility(&mut self, statement: SqlStatement) -> Result<Output> {
        match statement {
            SqlStatement::Set(set) => self.cx.set(set),
            SqlStatement::ShowVariable { variable } => self.cx.show(&variable),
            SqlStatement::ShowVariables { .. } => self.cx.show_all(),
            SqlStatement::Reset(reset) => self.cx.reset(reset.reset),
            SqlStatement::Rollback { .. }
            | SqlStatement::Savepoint { .. }
            | SqlStatement::ReleaseSavepoint { .. } => Err(Error::NotSupported(
                "savepoints are not supported yet".into(),
            )),
            SqlStatement::Copy { .. } => {
                let plan = crate::copy::plan(&self.cx, &statement)?;
                if plan.from_stdin() {
                    let columns = plan.column_count();
                    self.pending_copy = Some(plan);
                    return Ok(Output::CopyIn { columns });
                }
                let rows = crate::copy::load_location(&self.cx, &plan).await?;
                Ok(Output::Command {
                    tag: "COPY".into(),
                    rows: Some(rows),
                })
            }
            SqlStatement::Unload { .. } => crate::copy::unload(&mut self.cx, statement).await,
            SqlStatement::Deallocate { .. } => Ok(Output::command("DEALLOCATE")),
            SqlStatement::Discard { .. } => Ok(Output::command("DISCARD")),
            SqlStatement::DropProcedure {
                if_exists,
                proc_desc,
                drop_behavior,
            } => crate::procedure::drop(&mut self.cx, if_exists, &proc_desc, drop_behavior),
            other => crate::ddl::execute(&mut self.cx, other).await,
        }
    }

    /// Result columns of utility statements that return rows (SHOW).
    fn describe_utility(&self, statement: &Statement) -> Option<SchemaRef> {
        let statement = match statement {
            Statement::Sql(statement) => statement,
            Statement::Ext(ExtStatement::ShowProcedure { .. }) => {
                return Some(crate::procedure::show_schema());
            }
            Statement::Ext(_) => return None,
        };
        match statement {
            SqlStatement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join("_");
                if name == "all" {
                    return Some(Arc::new(Schema::new(vec![
                        Field::new("name", DataType::Utf8, false),
                        Field::new("setting", DataType::Utf8, false),
                    ])));
                }
                Some(Arc::new(Schema::new(vec![Field::new(
                    name,
                    DataType::Utf8,
                    false,
                )])))
            }
            SqlStatement::Call(function) => crate::procedure::describe_call(&self.cx, function),
            _ => None,
        }
    }
}

/// Binds the parameters DataFusion cannot bind itself ([`tributary_engine::params`]); the rest stay
/// for DataFusion.
fn bind_parameters(
    statement: Statement,
    params: Option<ParamValues>,
) -> Result<(Statement, Option<ParamValues>)> {
    let (Statement::Sql(mut statement), Some(params)) = (statement.clone(), params.clone()) else {
        // The extension statements take no parameters.
        return Ok((statement, params));
    };
    if is_planned(&statement) {
        tributary_engine::params::bind_table_functions(&mut statement, Some(&params))?;
        Ok((Statement::Sql(statement), Some(params)))
    } else {
        tributary_engine::params::bind_everywhere(&mut statement, &params)?;
        Ok((Statement::Sql(statement), None))
    }
}

impl Runner for Session {
    fn context(&mut self) -> &mut Context {
        &mut self.cx
    }

    fn run(&mut self, statement: Statement) -> BoxFuture<'_, Result<Output>> {
        Box::pin(async move {
            self.cx.clock.start_statement();
            self.run_in_transaction(statement, None, false).await
        })
    }
}
