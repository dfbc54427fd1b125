//! What a statement runs with: the user and database, the session's settings and notices, its
//! catalog transaction, and the DataFusion context its queries are planned in. Handlers take a
//! [`Context`], not the [`Session`](crate::Session) whose statement loop calls them.

use std::sync::{Arc, OnceLock};

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{ObjectName, Statement as SqlStatement};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use tributary_engine::catalog_list::{SYSTEM_SCHEMA, SessionCatalogs, TEMP_SCHEMA};
use tributary_engine::functions;
use tributary_engine::query_memory::SessionMemory;
use tributary_engine::settings::Settings;
use tributary_syntax::Statement;
use tributary_syntax::dialect::parse_statements;
use tributary_syntax::names::name_parts;
use tributary_syntax::rewrite::{
    alias_repeated_projections, qualify_relations, rewrite_functions, substitute_where_alias,
    top_to_limit,
};

use crate::engine::Engine;
use crate::output::Notice;
use crate::procedure::stack::CallStack;
use crate::{Error, Result, system};

mod planning;
mod settings;

use planning::new_context;

/// A session's state as its statements see it.
pub(crate) struct Context {
    engine: Arc<Engine>,
    user: String,
    database: String,
    settings: Settings,
    catalogs: SessionCatalogs,
    pub(crate) clock: functions::StatementClock,
    context: Arc<SessionContext>,
    /// The query memory the session's statement holds.
    memory: Arc<SessionMemory>,
    /// `enable_case_sensitive_identifier`, as the SUPER planner reads it.
    case_sensitive: tributary_engine::partiql::CaseSensitivity,
    notices: Vec<Notice>,
    /// The stored procedures being called, outermost first.
    pub(crate) calls: CallStack,
}

impl Drop for Context {
    /// Breaks the cycle between the session's catalogs and the schemas registered in them
    /// ([`SessionCatalogs::release`]), so that a session's state is freed when it ends.
    fn drop(&mut self) {
        self.catalogs.release();
    }
}

impl Context {
    pub(crate) fn new(engine: Arc<Engine>, user: &str, database: &str) -> Result<Self> {
        let catalogs = SessionCatalogs::new(engine.store.clone(), engine.clone());
        catalogs.set_user(user);
        catalogs.pinned().database(database)?;
        let clock = functions::StatementClock::default();
        let case_sensitive = tributary_engine::partiql::CaseSensitivity::default();
        let (runtime, memory) = SessionMemory::runtime(&engine.store.runtime_env())?;
        let context = new_context(&catalogs, runtime, database, user, &clock, &case_sensitive)?;
        Ok(Self {
            engine,
            user: user.to_string(),
            database: database.to_string(),
            settings: Settings::default(),
            catalogs,
            clock,
            context,
            memory,
            case_sensitive,
            notices: Vec::new(),
            calls: Default::default(),
        })
    }

    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    /// Makes `user` the user whose privileges statements are checked against (a SECURITY
    /// DEFINER procedure's owner while its body runs); returns the previous one.
    pub(crate) fn swap_user(&mut self, user: String) -> String {
        self.catalogs.set_user(&user);
        std::mem::replace(&mut self.user, user)
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
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

    pub(crate) fn memory(&self) -> &Arc<SessionMemory> {
        &self.memory
    }

    /// Parses a query string into statements.
    pub(crate) fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
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
    pub(crate) fn insert_error(
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

    /// Pins the producer state of the databases made from datashares that the transaction has
    /// not pinned yet. Called before each statement is planned, because DataFusion resolves
    /// tables synchronously.
    pub(crate) async fn pin_producers(&self) -> Result<()> {
        self.engine.sharing.pin_producers(&self.catalogs).await
    }

    /// Notices raised by the last statement (sent to the client before its result).
    pub(crate) fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
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
