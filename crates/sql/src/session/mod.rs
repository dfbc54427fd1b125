//! A SQL session: settings, the statement loop, and the hand-off to DataFusion or to the DDL
//! executor. Every statement pins the catalog version current when it starts.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{ObjectName, Statement as SqlStatement};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::StreamExt;
use tributary_engine::catalog_list::{SYSTEM_SCHEMA, SessionCatalogs, TEMP_SCHEMA};
use tributary_engine::functions;
use tributary_engine::settings::Settings;
use tributary_engine::transaction::Ended;
use tributary_syntax::dialect::parse_statements;
use tributary_syntax::names::name_parts;
use tributary_syntax::rewrite::{
    alias_repeated_projections, idents, qualify_relations, rewrite_functions,
    substitute_where_alias, top_to_limit,
};
use tributary_syntax::{ExtStatement, Statement};

use crate::engine::Engine;
use crate::{Error, Result, system};

mod classify;
mod context;
mod settings;

pub(crate) use classify::output_schema;
pub(crate) use classify::write_target_names;
use classify::{
    count_rows, dml_with_cte, is_planned_by_datafusion, rename_stream, returns_rows, write_targets,
};
use context::new_context;

/// What a statement produced.
pub enum Output {
    /// Rows, streamed: nothing is buffered beyond DataFusion's own batches.
    Rows {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
    },
    /// A command tag such as `CREATE TABLE`, with a row count for DML (`INSERT 0 3`).
    Command { tag: String, rows: Option<u64> },
    /// `COPY ... FROM STDIN`: the client sends the data next; hand it to
    /// [`Session::copy_in`].
    CopyIn { columns: usize },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows { schema, .. } => write!(
                f,
                "Rows({:?})",
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            ),
            Output::Command { tag, rows } => write!(f, "Command({tag}, {rows:?})"),
            Output::CopyIn { columns } => write!(f, "CopyIn({columns})"),
        }
    }
}

impl Output {
    pub(crate) fn command(tag: &str) -> Self {
        Output::Command {
            tag: tag.to_string(),
            rows: None,
        }
    }

    pub(crate) fn rows(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        Output::Rows {
            schema: schema.clone(),
            stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        }
    }
}

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
    engine: Arc<Engine>,
    user: String,
    database: String,
    settings: Settings,
    catalogs: SessionCatalogs,
    clock: functions::StatementClock,
    context: Arc<SessionContext>,
    /// `enable_case_sensitive_identifier`, as the SUPER planner reads it.
    case_sensitive: tributary_engine::partiql::CaseSensitivity,
    notices: Vec<Notice>,
    /// A `COPY ... FROM STDIN` waiting for the client's data.
    pending_copy: Option<crate::copy::CopyPlan>,
    /// The stored procedures being called, outermost first.
    pub(crate) calls: crate::procedure::CallStack,
}

/// A message for the client that is not an error (NoticeResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `NOTICE`, `INFO` or `WARNING`.
    pub severity: &'static str,
    pub message: String,
}

impl Session {
    pub(crate) fn new(engine: Arc<Engine>, user: &str, database: &str) -> Result<Self> {
        let catalogs = SessionCatalogs::new(engine.store.clone(), engine.clone());
        catalogs.set_user(user);
        catalogs.pinned().database(database)?;
        let clock = functions::StatementClock::default();
        let case_sensitive = tributary_engine::partiql::CaseSensitivity::default();
        let context = new_context(&catalogs, database, user, &clock, &case_sensitive)?;
        Ok(Self {
            engine,
            user: user.to_string(),
            database: database.to_string(),
            settings: Settings::default(),
            catalogs,
            clock,
            context,
            case_sensitive,
            notices: Vec::new(),
            pending_copy: None,
            calls: Default::default(),
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Makes `user` the user whose privileges statements are checked against (a SECURITY
    /// DEFINER procedure's owner while its body runs); returns the previous one.
    pub(crate) fn swap_user(&mut self, user: String) -> String {
        self.catalogs.set_user(&user);
        std::mem::replace(&mut self.user, user)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// True inside a BEGIN block.
    pub fn in_transaction(&self) -> bool {
        self.catalogs.in_explicit_transaction()
    }

    /// Ends the session: an open transaction is rolled back.
    pub async fn close(&mut self) {
        self.catalogs.rollback().await;
    }

    /// Notices raised by the last statement (sent to the client before its result).
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    pub(crate) fn notice(&mut self, message: impl Into<String>) {
        self.notify("NOTICE", message);
    }

    /// A notice of another severity (`RAISE INFO` / `WARNING`).
    pub(crate) fn notify(&mut self, severity: &'static str, message: impl Into<String>) {
        self.notices.push(Notice {
            severity,
            message: message.into(),
        });
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) fn catalogs(&self) -> &SessionCatalogs {
        &self.catalogs
    }

    pub(crate) fn context(&self) -> &Arc<SessionContext> {
        &self.context
    }

    /// Parses a query string into statements.
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        let ours = parse_statements(sql);
        if is_catalog_query(sql)
            && let Ok(statements) = compatibility_parser().parse(sql)
        {
            // Introspection queries of psql and drivers: the compatibility rewrites of
            // datafusion-pg-catalog make them plannable. They are not applied to other
            // queries, because some of them trade exactness for coverage.
            return Ok(statements.into_iter().map(Statement::Sql).collect());
        }
        Ok(ours?)
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
        let query = match &statement {
            Statement::Sql(query)
                if is_planned_by_datafusion(query) && dml_with_cte(query).is_none() =>
            {
                query.clone()
            }
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
        self.catalogs.pin_statement();
        crate::sharing::pin_producers(self).await?;
        let mut prepared = self.rewrite(query.clone())?;
        // Table functions are planned with their arguments' values, which come later.
        tributary_engine::params::bind_table_functions(&mut prepared, None)?;
        let plan = self.plan(&prepared).await?;
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
            Ok(Output::Rows { schema, stream }) => {
                let mut timer = timer;
                timer.record.command = crate::metrics::row_command(&timer.record.text);
                Output::Rows {
                    schema,
                    stream: Box::pin(crate::metrics::TimedStream::new(stream, timer)),
                }
            }
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
        crate::metrics::QueryTimer {
            engine: self.engine.clone(),
            record: crate::QueryRecord {
                user: self.user.clone(),
                database: self.database.clone(),
                command: String::new(),
                text,
                start_micros: chrono::Utc::now().timestamp_micros(),
                duration_micros: 0,
                status: String::new(),
            },
            started: std::time::Instant::now(),
        }
    }

    /// Runs a statement in the open transaction, or in a transaction of its own that commits
    /// when it succeeds (autocommit).
    async fn execute_statement(
        &mut self,
        statement: Statement,
        params: Option<ParamValues>,
    ) -> Result<Output> {
        self.clock.start_statement();
        let failed = self.catalogs.in_failed_transaction();
        match &statement {
            Statement::Sql(SqlStatement::Commit { .. }) => return self.commit_block().await,
            Statement::Sql(SqlStatement::Rollback {
                savepoint: None, ..
            }) => return self.rollback_block().await,
            _ if failed => return Err(Error::InFailedTransaction),
            Statement::Sql(SqlStatement::StartTransaction { .. }) => return Ok(self.begin_block()),
            _ => {}
        }
        let autocommit = self.catalogs.begin(false);
        let result = self.run_in_transaction(statement, params, autocommit).await;
        self.finish_statement(autocommit, result).await
    }

    /// Loads the data of a `COPY ... FROM STDIN`, as one statement.
    pub async fn copy_in(&mut self, data: bytes::Bytes) -> Result<Output> {
        let plan = self
            .pending_copy
            .take()
            .ok_or_else(|| Error::Internal("copy data without a COPY FROM STDIN".into()))?;
        let mut timer = self.query_timer("COPY ... FROM STDIN".to_string());
        timer.record.command = "COPY".to_string();
        self.clock.start_statement();
        let autocommit = self.catalogs.begin(false);
        let result = async {
            if autocommit {
                let (schema, table) = plan.target();
                self.catalogs.prelock(&self.database, schema, table).await?;
            }
            self.catalogs.pin_statement();
            let rows = crate::copy::load_bytes(self, &plan, data).await?;
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
        if self.catalogs.in_explicit_transaction() {
            self.catalogs.mark_failed();
        } else {
            self.catalogs.rollback().await;
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
                self.catalogs.mark_failed();
            }
            return result;
        }
        match result {
            Ok(output) => {
                self.catalogs.commit().await?;
                Ok(output)
            }
            Err(err) => {
                self.catalogs.rollback().await;
                Err(err)
            }
        }
    }

    fn begin_block(&mut self) -> Output {
        if !self.catalogs.begin(true) {
            self.notice("there is already a transaction in progress");
        }
        Output::command("BEGIN")
    }

    async fn commit_block(&mut self) -> Result<Output> {
        if !self.catalogs.in_explicit_transaction() {
            self.notice("there is no transaction in progress");
            return Ok(Output::command("COMMIT"));
        }
        Ok(match self.catalogs.commit().await? {
            Ended::Committed => Output::command("COMMIT"),
            Ended::RolledBack => Output::command("ROLLBACK"),
        })
    }

    async fn rollback_block(&mut self) -> Result<Output> {
        if !self.catalogs.in_explicit_transaction() {
            self.notice("there is no transaction in progress");
        }
        self.catalogs.rollback().await;
        Ok(Output::command("ROLLBACK"))
    }

    async fn run_in_transaction(
        &mut self,
        statement: Statement,
        params: Option<ParamValues>,
        autocommit: bool,
    ) -> Result<Output> {
        let statement = match statement {
            Statement::Sql(statement) => statement,
            Statement::Ext(statement) => {
                self.catalogs.pin_statement();
                crate::sharing::pin_producers(self).await?;
                return self.execute_ext(statement, autocommit).await;
            }
        };
        if autocommit {
            // An autocommit write takes its target's lock before its snapshot, so that
            // waiting for another writer never makes it conflict.
            for (name, _) in write_targets(&statement) {
                let parts = name_parts(&name);
                if parts.len() == 1
                    && datafusion::catalog::SchemaProvider::table_exist(
                        self.catalogs.temp().as_ref(),
                        &parts[0],
                    )
                {
                    continue;
                }
                let Ok((schema, table)) = self.resolve_existing(&name) else {
                    continue;
                };
                self.catalogs
                    .prelock(&self.database, &schema, &table)
                    .await?;
            }
        }
        self.catalogs.pin_statement();
        crate::sharing::pin_producers(self).await?;
        if let SqlStatement::Call(function) = &statement {
            return crate::procedure::call(self, function, autocommit).await;
        }
        if matches!(
            statement,
            SqlStatement::Update(_) | SqlStatement::Delete(_) | SqlStatement::Merge(_)
        ) || dml_with_cte(&statement).is_some()
        {
            crate::access::check_statement(self, &self.rewrite(statement.clone())?)?;
        }
        if let Some((dml, with)) = dml_with_cte(&statement) {
            return crate::dml::execute(self, dml, with).await;
        }
        if is_planned_by_datafusion(&statement) {
            let is_insert = matches!(statement, SqlStatement::Insert(_));
            let statement = self.rewrite(statement)?;
            crate::access::check_statement(self, &statement)?;
            let plan = self.plan(&statement).await?;
            let plan = match params {
                Some(params) => plan.with_param_values(params)?,
                None => plan,
            };
            if is_insert {
                let result = match self.context.execute_logical_plan(plan).await {
                    Ok(frame) => frame.collect().await,
                    Err(err) => Err(err),
                };
                let batches = result.map_err(|err| self.insert_error(&statement, err))?;
                return Ok(Output::Command {
                    tag: "INSERT".into(),
                    rows: Some(count_rows(&batches)),
                });
            }
            let schema = output_schema(&statement, &plan);
            let stream = self
                .context
                .execute_logical_plan(plan)
                .await?
                .execute_stream()
                .await?;
            // An error while the rows stream fails the open transaction, like any other error.
            let catalogs = self.catalogs.clone();
            let stream = rename_stream(schema.clone(), stream);
            let stream = stream.inspect(move |batch| {
                if batch.is_err() {
                    catalogs.mark_failed();
                }
            });
            return Ok(Output::Rows {
                schema: schema.clone(),
                stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
            });
        }
        self.execute_utility(statement).await
    }

    /// Runs a Redshift statement that sqlparser lacks, after its privileges are checked.
    async fn execute_ext(&mut self, statement: ExtStatement, autocommit: bool) -> Result<Output> {
        crate::access::check_ext(self, &statement)?;
        match statement {
            ExtStatement::Access(access) => crate::access::execute(self, access).await,
            ExtStatement::CreateExternalSchema {
                name,
                if_not_exists,
                source,
                options,
            } => {
                crate::streaming::create_external_schema(
                    self,
                    &name,
                    if_not_exists,
                    &source,
                    options,
                )
                .await
            }
            ExtStatement::AlterExternalSchema { name, options } => {
                crate::streaming::alter_external_schema(self, &idents(&name), options)
            }
            ExtStatement::CreateMirrorTable { table, clauses } => {
                crate::streaming::mirror::create(self, *table, clauses).await
            }
            ExtStatement::Refresh { name } => {
                crate::streaming::refresh(self, &idents(&name), autocommit).await
            }
            ExtStatement::AlterAutoRefresh { name, enable } => {
                crate::streaming::alter_auto_refresh(self, &idents(&name), enable, autocommit).await
            }
            ExtStatement::CreateProcedure { name, definition } => {
                crate::procedure::create(self, &name, definition)
            }
            ExtStatement::ShowProcedure {
                name,
                argument_types,
            } => crate::procedure::show(self, &name, argument_types.as_deref()),
        }
    }

    /// Runs one statement of a procedure body in the current transaction. Boxed, because a
    /// body may CALL another procedure.
    pub(crate) fn run_in_procedure(
        &mut self,
        statement: Statement,
    ) -> futures::future::BoxFuture<'_, Result<Output>> {
        Box::pin(async move {
            self.clock.start_statement();
            self.run_in_transaction(statement, None, false).await
        })
    }

    /// COMMIT or ROLLBACK in a procedure body: ends the call's transaction and starts the
    /// next. Refused when the call is inside a transaction block, as in Redshift.
    pub(crate) async fn end_procedure_transaction(&mut self, commit: bool) -> Result<()> {
        if !self.calls.owns_transaction {
            return Err(Error::ActiveTransaction(format!(
                "{} in a procedure called",
                if commit { "COMMIT" } else { "ROLLBACK" }
            )));
        }
        if commit {
            self.catalogs.commit().await?;
        } else {
            self.catalogs.rollback().await;
        }
        self.catalogs.begin(false);
        Ok(())
    }

    /// After each statement of a NONATOMIC procedure: commits it, unless the call is inside a
    /// transaction block.
    pub(crate) async fn commit_procedure_statement(&mut self) -> Result<()> {
        if self.calls.owns_transaction {
            self.end_procedure_transaction(true).await?;
        }
        Ok(())
    }

    /// Before an EXCEPTION handler runs: the transaction's changes are undone (Redshift has no
    /// subtransactions) and a new transaction starts, in the same block if there is one.
    pub(crate) async fn restart_procedure_transaction(&mut self) {
        let explicit = self.catalogs.in_explicit_transaction();
        self.catalogs.rollback().await;
        self.catalogs.begin(explicit);
    }

    /// Applies the rewrites every planned statement gets: Redshift function forms, then
    /// search_path resolution of unqualified table names.
    pub(crate) fn rewrite(&self, mut statement: SqlStatement) -> Result<SqlStatement> {
        tributary_syntax::partiql::rewrite(
            &mut statement,
            self.settings.case_sensitive_identifiers(),
        )?;
        rewrite_functions(&mut statement);
        alias_repeated_projections(&mut statement);
        top_to_limit(&mut statement);
        let pinned = self.catalogs.pinned();
        let search_path = self.settings.search_path(&self.user);
        let temp = self.catalogs.temp().clone();
        let database = self.database.clone();
        let resolve = move |name: &str| -> Option<String> {
            use datafusion::catalog::SchemaProvider;
            if temp.table_exist(name) {
                return Some(TEMP_SCHEMA.to_string());
            }
            for schema in &search_path {
                if pinned.relation(&database, schema, name).is_some() {
                    return Some(schema.clone());
                }
            }
            system::is_system_relation(name).then(|| SYSTEM_SCHEMA.to_string())
        };
        qualify_relations(&mut statement, &resolve);
        if let SqlStatement::Insert(insert) = &mut statement {
            self.expand_defaults(insert)?;
        }
        Ok(statement)
    }

    /// DataFusion refuses a NULL for a NOT NULL column while it builds the rows, naming the
    /// column by position; this names it as Postgres does (23502, column and table).
    fn insert_error(
        &self,
        statement: &SqlStatement,
        err: datafusion::error::DataFusionError,
    ) -> Error {
        let text = err.to_string();
        let position = text
            .split_once("Invalid batch column at '")
            .and_then(|(_, rest)| rest.split_once("' has null but schema specifies non-nullable"))
            .and_then(|(index, _)| index.parse::<usize>().ok());
        let SqlStatement::Insert(insert) = statement else {
            return err.into();
        };
        let datafusion::sql::sqlparser::ast::TableObject::TableName(name) = &insert.table else {
            return err.into();
        };
        let parts = name_parts(name);
        let pinned = self.catalogs.pinned();
        let table = match parts.as_slice() {
            [schema, table] => pinned
                .table(&self.database, schema, table)
                .ok()
                .map(|t| (table, t)),
            _ => None,
        };
        match (position, table) {
            (Some(index), Some((name, table))) if index < table.columns.len() => Error::NotNull {
                table: name.clone(),
                column: table.columns[index].name.clone(),
            },
            _ => err.into(),
        }
    }

    /// Fills DEFAULT in INSERT from the target table's column definitions.
    fn expand_defaults(&self, insert: &mut datafusion::sql::sqlparser::ast::Insert) -> Result<()> {
        let datafusion::sql::sqlparser::ast::TableObject::TableName(name) = &insert.table else {
            return Ok(());
        };
        let parts = name_parts(name);
        let pinned = self.catalogs.pinned();
        let columns: Vec<(String, Option<String>)> = match parts.as_slice() {
            [schema, table] => match pinned.table(&self.database, schema, table) {
                Ok(table) => table
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.default.clone()))
                    .collect(),
                Err(_) => return Ok(()),
            },
            _ => return Ok(()),
        };
        tributary_syntax::rewrite::expand_insert_defaults(insert, &columns)?;
        Ok(())
    }

    pub(crate) async fn plan(&self, statement: &SqlStatement) -> Result<LogicalPlan> {
        let state = self.context.state();
        let mut statement = statement.clone();
        // Each retry resolves one more WHERE reference to a select-list alias.
        for _ in 0..8 {
            let planned = state
                .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
                .await;
            match planned {
                Err(err) => match missing_field(&err) {
                    Some(name) if substitute_where_alias(&mut statement, &name) => continue,
                    _ => return Err(err.into()),
                },
                Ok(plan) => return Ok(plan),
            }
        }
        Ok(state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?)
    }

    /// The schema a new object goes to when its name has no schema: the first search_path
    /// schema that exists, as in Postgres.
    pub(crate) fn creation_schema(&self) -> Result<String> {
        let pinned = self.catalogs.pinned();
        self.settings
            .search_path(&self.user)
            .into_iter()
            .find(|s| pinned.schema(&self.database, s).is_ok())
            .ok_or_else(|| {
                Error::UndefinedSchema("no schema has been selected to create in".into())
            })
    }

    /// Resolves `[[database.]schema.]name` of an existing relation.
    pub(crate) fn resolve_existing(&self, name: &ObjectName) -> Result<(String, String)> {
        let parts = name_parts(name);
        match parts.as_slice() {
            [relation] => {
                let pinned = self.catalogs.pinned();
                let schema = self
                    .settings
                    .search_path(&self.user)
                    .into_iter()
                    .find(|s| pinned.relation(&self.database, s, relation).is_some())
                    .ok_or_else(|| Error::UndefinedTable(relation.clone()))?;
                Ok((schema, relation.clone()))
            }
            _ => self.resolve_for_create(name),
        }
    }

    /// Resolves `[[database.]schema.]name` for a new object.
    pub(crate) fn resolve_for_create(&self, name: &ObjectName) -> Result<(String, String)> {
        let parts = name_parts(name);
        match parts.as_slice() {
            [relation] => Ok((self.creation_schema()?, relation.clone())),
            [schema, relation] => Ok((schema.clone(), relation.clone())),
            [database, schema, relation] if *database == self.database => {
                Ok((schema.clone(), relation.clone()))
            }
            [database, ..] if parts.len() == 3 => Err(Error::NotSupported(format!(
                "cross-database references are not supported: \"{database}\" is not the current database"
            ))),
            _ => Err(Error::Syntax(format!(
                "improper qualified name (too many dotted names): {name}"
            ))),
        }
    }

    async fn execute_utility(&mut self, statement: SqlStatement) -> Result<Output> {
        crate::access::check_utility(self, &statement)?;
        match statement {
            SqlStatement::Set(set) => self.set(set),
            SqlStatement::ShowVariable { variable } => self.show(&variable),
            SqlStatement::ShowVariables { .. } => self.show_all(),
            SqlStatement::Reset(reset) => {
                match reset.reset {
                    datafusion::sql::sqlparser::ast::Reset::ALL => self.settings.reset_all(),
                    datafusion::sql::sqlparser::ast::Reset::ConfigurationParameter(name) => {
                        self.settings.reset(&name.to_string())?
                    }
                }
                self.apply_settings()?;
                Ok(Output::command("RESET"))
            }
            SqlStatement::Rollback { .. }
            | SqlStatement::Savepoint { .. }
            | SqlStatement::ReleaseSavepoint { .. } => Err(Error::NotSupported(
                "savepoints are not supported yet".into(),
            )),
            SqlStatement::Copy { .. } => {
                let plan = crate::copy::plan(self, &statement)?;
                if plan.from_stdin() {
                    let columns = plan.column_count();
                    self.pending_copy = Some(plan);
                    return Ok(Output::CopyIn { columns });
                }
                let rows = crate::copy::load_location(self, &plan).await?;
                Ok(Output::Command {
                    tag: "COPY".into(),
                    rows: Some(rows),
                })
            }
            SqlStatement::Unload { .. } => crate::copy::unload(self, statement).await,
            SqlStatement::Deallocate { .. } => Ok(Output::command("DEALLOCATE")),
            SqlStatement::Discard { .. } => Ok(Output::command("DISCARD")),
            SqlStatement::Update(_) | SqlStatement::Delete(_) | SqlStatement::Merge(_) => {
                crate::dml::execute(self, statement, None).await
            }
            SqlStatement::DropProcedure {
                if_exists,
                proc_desc,
                drop_behavior,
            } => crate::procedure::drop(self, if_exists, &proc_desc, drop_behavior),
            other => crate::ddl::execute(self, other).await,
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
            SqlStatement::Call(function) => crate::procedure::describe_call(self, function),
            _ => None,
        }
    }
}

/// The column name of a "field not found" planning error.
fn missing_field(err: &datafusion::error::DataFusionError) -> Option<String> {
    match err.find_root() {
        datafusion::error::DataFusionError::SchemaError(inner, _) => match inner.as_ref() {
            datafusion::common::SchemaError::FieldNotFound { field, .. }
                if field.relation.is_none() =>
            {
                Some(field.name.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

/// True for queries that read the Postgres system catalogs.
fn is_catalog_query(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("pg_catalog") || lower.contains("from pg_") || lower.contains("join pg_")
}

fn compatibility_parser() -> &'static PostgresCompatibilityParser {
    static PARSER: OnceLock<PostgresCompatibilityParser> = OnceLock::new();
    PARSER.get_or_init(PostgresCompatibilityParser::new)
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
    if is_planned_by_datafusion(&statement) && dml_with_cte(&statement).is_none() {
        tributary_engine::params::bind_table_functions(&mut statement, Some(&params))?;
        Ok((Statement::Sql(statement), Some(params)))
    } else {
        tributary_engine::params::bind_everywhere(&mut statement, &params)?;
        Ok((Statement::Sql(statement), None))
    }
}
