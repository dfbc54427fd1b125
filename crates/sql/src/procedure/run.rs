//! Runs a parsed procedure body against the calling session.
//!
//! Variables are substituted into each SQL statement as typed literals before it runs, as
//! Redshift's PL/pgSQL does (a variable shadows a column of the same name). Expressions and
//! conditions run as `SELECT <expression>` in the session, so they have the full SQL dialect.

use std::collections::HashMap;
use std::ops::ControlFlow;

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    Expr, Statement as SqlStatement, Value, visit_expressions_mut,
};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use tributary_catalog::{Procedure, SqlType};
use tributary_engine::error::{Error, Result};
use tributary_syntax::Statement as Parsed;
use tributary_syntax::plpgsql::{
    Block, Declaration, DeclarationKind, QuerySource, RaiseLevel, Statement, StatementKind,
};

use super::runner::Runner;
use crate::context::Context;
use crate::output::Output;

mod values;

use values::{
    Flow, LoopControl, batch_rows, cast_to, clone_error, collect_rows, format_message, is_fatal,
    literal, null_not_allowed, select_row, shorten, string_literal, text,
};

/// A value a variable holds.
#[derive(Debug, Clone)]
enum Variable {
    /// A scalar, with its declared type as SQL text (None: takes the type of what it gets).
    Scalar {
        type_sql: Option<String>,
        value: ScalarValue,
        constant: bool,
        not_null: bool,
    },
    /// A row: field names, values and their types as SQL text. None before assignment.
    Record(Option<Vec<(String, ScalarValue, String)>>),
    /// Another name for a variable.
    Alias(String),
}

/// One procedure invocation: its variables, innermost scope last.
struct Frame<'p> {
    procedure: &'p Procedure,
    scopes: Vec<HashMap<String, Variable>>,
    /// Rows the last SQL statement affected or returned.
    row_count: u64,
    /// The error being handled by an EXCEPTION block (for SQLERRM and a bare RAISE).
    handling: Vec<Error>,
}

/// Evaluates a CALL's arguments, cast to the procedure's input types.
pub(crate) async fn call_arguments(
    session: &mut dyn Runner,
    procedure: &Procedure,
    arguments: Vec<Expr>,
) -> Result<Vec<ScalarValue>> {
    if arguments.is_empty() {
        return Ok(vec![]);
    }
    let inputs = procedure.arguments.iter().filter(|a| a.mode.is_input());
    let list: Vec<String> = arguments
        .iter()
        .zip(inputs)
        .map(|(expr, arg)| format!("CAST(({expr}) AS {})", arg.sql_type.cast_name()))
        .collect();
    let row = select_row(session, &format!("SELECT {}", list.join(", "))).await?;
    Ok(row
        .map(|fields| fields.into_iter().map(|(_, v, _)| v).collect())
        .unwrap_or_default())
}

/// Runs the body with the input values; returns the OUT and INOUT arguments' final values.
pub(crate) async fn run(
    session: &mut dyn Runner,
    procedure: &Procedure,
    inputs: Vec<ScalarValue>,
) -> Result<Vec<ScalarValue>> {
    let block = tributary_syntax::plpgsql::parse_body(&procedure.body)?;
    let mut frame = Frame {
        procedure,
        scopes: vec![HashMap::new()],
        row_count: 0,
        handling: vec![],
    };
    let mut inputs = inputs.into_iter();
    for (i, argument) in procedure.arguments.iter().enumerate() {
        let type_sql = argument.sql_type.cast_name();
        let value = if argument.mode.is_input() {
            inputs.next().unwrap_or(ScalarValue::Null)
        } else {
            typed_null(&argument.sql_type)
        };
        let variable = Variable::Scalar {
            type_sql: Some(type_sql),
            value,
            constant: false,
            not_null: false,
        };
        let positional = format!("${}", i + 1);
        match &argument.name {
            Some(name) => {
                frame.declare(name, variable);
                frame.declare(&positional, Variable::Alias(name.clone()));
            }
            None => frame.declare(&positional, variable),
        }
    }
    frame.declare("found", boolean(false));
    frame.block(session, &block).await?;
    let mut outputs = Vec::new();
    for (i, argument) in procedure.arguments.iter().enumerate() {
        if !argument.mode.is_output() {
            continue;
        }
        let name = argument
            .name
            .clone()
            .unwrap_or_else(|| format!("${}", i + 1));
        outputs.push(match frame.lookup(&name) {
            Some(Variable::Scalar { value, .. }) => value.clone(),
            _ => typed_null(&argument.sql_type),
        });
    }
    Ok(outputs)
}

fn boolean(value: bool) -> Variable {
    Variable::Scalar {
        type_sql: Some("boolean".into()),
        value: ScalarValue::Boolean(Some(value)),
        constant: false,
        not_null: false,
    }
}

fn typed_null(sql_type: &SqlType) -> ScalarValue {
    ScalarValue::try_from(sql_type.to_arrow()).unwrap_or(ScalarValue::Null)
}

impl<'p> Frame<'p> {
    fn declare(&mut self, name: &str, variable: Variable) {
        self.scopes
            .last_mut()
            .expect("a frame has a scope")
            .insert(name.to_string(), variable);
    }

    /// The variable a name refers to, following aliases.
    fn lookup(&self, name: &str) -> Option<&Variable> {
        let mut name = name.to_string();
        for _ in 0..8 {
            let variable = self.scopes.iter().rev().find_map(|s| s.get(&name))?;
            match variable {
                Variable::Alias(target) => name = target.clone(),
                other => return Some(other),
            }
        }
        None
    }

    fn lookup_mut(&mut self, name: &str) -> Option<&mut Variable> {
        let mut name = name.to_string();
        for _ in 0..8 {
            let scope = self.scopes.iter().rposition(|s| s.contains_key(&name))?;
            if let Some(Variable::Alias(target)) = self.scopes[scope].get(&name) {
                name = target.clone();
                continue;
            }
            return self.scopes[scope].get_mut(&name);
        }
        None
    }

    fn set_found(&mut self, found: bool) {
        if let Some(Variable::Scalar { value, .. }) = self.lookup_mut("found") {
            *value = ScalarValue::Boolean(Some(found));
        }
    }

    /// Where the frame is, for error reports.
    fn context(&self, statement: &Statement) -> String {
        let what = match &statement.kind {
            StatementKind::Sql { sql, .. } => {
                return format!(
                    "SQL statement \"{}\"\nPL/pgSQL function \"{}\" line {} at SQL statement",
                    shorten(sql),
                    self.procedure.name,
                    statement.line
                );
            }
            StatementKind::Assign { .. } => "assignment",
            StatementKind::If { .. } => "IF",
            StatementKind::Raise { .. } => "RAISE",
            StatementKind::Perform(_) => "PERFORM",
            StatementKind::Execute { .. } => "EXECUTE",
            StatementKind::ForRange { .. } => "FOR with integer loop variable",
            StatementKind::ForQuery { .. } => "FOR over SELECT rows",
            StatementKind::While { .. } => "WHILE",
            StatementKind::Commit => "COMMIT",
            StatementKind::Rollback => "ROLLBACK",
            _ => "statement",
        };
        format!(
            "PL/pgSQL function \"{}\" line {} at {what}",
            self.procedure.name, statement.line
        )
    }

    fn block<'a>(
        &'a mut self,
        session: &'a mut dyn Runner,
        block: &'a Block,
    ) -> BoxFuture<'a, Result<Flow>> {
        Box::pin(async move {
            self.scopes.push(HashMap::new());
            let result = async {
                for declaration in &block.declarations {
                    self.declaration(session, declaration).await?;
                }
                self.statements(session, &block.body).await
            }
            .await;
            let result = match (result, &block.handler) {
                (Err(err), Some(handler)) if !is_fatal(&err) => {
                    // Redshift has no subtransactions: the transaction's changes are rolled
                    // back (unless the procedure commits each statement), then the handler
                    // runs in a new transaction.
                    if !self.procedure.nonatomic {
                        session.context().restart_procedure_transaction().await;
                    }
                    self.handling.push(err);
                    let handled = self.statements(session, handler).await;
                    self.handling.pop();
                    handled
                }
                (result, _) => result,
            };
            self.scopes.pop();
            match result? {
                Flow::Exit(Some(label)) if block.label.as_ref() == Some(&label) => Ok(Flow::Next),
                flow => Ok(flow),
            }
        })
    }

    async fn declaration(
        &mut self,
        session: &mut dyn Runner,
        declaration: &Declaration,
    ) -> Result<()> {
        let variable = match &declaration.kind {
            DeclarationKind::Record => Variable::Record(None),
            DeclarationKind::Alias(target) => Variable::Alias(target.clone()),
            DeclarationKind::Scalar(type_sql) => {
                let sql_type = super::resolve_type(type_sql)?;
                let value = match &declaration.default {
                    Some(expression) => self.evaluate(session, expression, Some(type_sql)).await?,
                    None => typed_null(&sql_type),
                };
                if declaration.not_null && value.is_null() {
                    return Err(null_not_allowed(&declaration.name));
                }
                Variable::Scalar {
                    type_sql: Some(type_sql.clone()),
                    value,
                    constant: declaration.constant,
                    not_null: declaration.not_null,
                }
            }
        };
        self.declare(&declaration.name, variable);
        Ok(())
    }

    fn statements<'a>(
        &'a mut self,
        session: &'a mut dyn Runner,
        statements: &'a [Statement],
    ) -> BoxFuture<'a, Result<Flow>> {
        Box::pin(async move {
            for statement in statements {
                let flow = match self.statement(session, statement).await {
                    Ok(flow) => flow,
                    Err(err @ Error::InProcedure { .. }) => return Err(err),
                    Err(err) => {
                        return Err(Error::InProcedure {
                            context: self.context(statement),
                            source: Box::new(err),
                        });
                    }
                };
                if !matches!(flow, Flow::Next) {
                    return Ok(flow);
                }
            }
            Ok(Flow::Next)
        })
    }

    async fn statement(&mut self, session: &mut dyn Runner, statement: &Statement) -> Result<Flow> {
        match &statement.kind {
            StatementKind::Block(block) => return self.block(session, block).await,
            StatementKind::Assign { target, expression } => {
                self.assign(session, target, expression).await?;
            }
            StatementKind::If {
                branches,
                otherwise,
            } => {
                for (condition, body) in branches {
                    if self.condition(session, condition).await? {
                        return self.statements(session, body).await;
                    }
                }
                return self.statements(session, otherwise).await;
            }
            StatementKind::Loop { label, body } => loop {
                match self.iteration(session, body, label).await? {
                    LoopControl::Continue => {}
                    LoopControl::Break => break,
                    LoopControl::Propagate(flow) => return Ok(flow),
                }
            },
            StatementKind::While {
                label,
                condition,
                body,
            } => {
                while self.condition(session, condition).await? {
                    match self.iteration(session, body, label).await? {
                        LoopControl::Continue => {}
                        LoopControl::Break => break,
                        LoopControl::Propagate(flow) => return Ok(flow),
                    }
                }
            }
            StatementKind::ForRange {
                label,
                variable,
                reverse,
                low,
                high,
                step,
                body,
            } => {
                let low = self.integer(session, low).await?;
                let high = self.integer(session, high).await?;
                let step = match step {
                    Some(step) => self.integer(session, step).await?,
                    None => 1,
                };
                if step <= 0 {
                    return Err(Error::InvalidParameterValue(
                        "BY value of FOR loop must be greater than zero".into(),
                    ));
                }
                let mut i = low;
                self.scopes.push(HashMap::new());
                let result = async {
                    while (!reverse && i <= high) || (*reverse && i >= high) {
                        self.declare(
                            variable,
                            Variable::Scalar {
                                type_sql: Some("integer".into()),
                                value: ScalarValue::Int32(Some(i as i32)),
                                constant: false,
                                not_null: false,
                            },
                        );
                        match self.iteration(session, body, label).await? {
                            LoopControl::Continue => {}
                            LoopControl::Break => break,
                            LoopControl::Propagate(flow) => return Ok(Some(flow)),
                        }
                        i = if *reverse { i - step } else { i + step };
                    }
                    Ok::<_, Error>(None)
                }
                .await;
                self.scopes.pop();
                if let Some(flow) = result? {
                    return Ok(flow);
                }
            }
            StatementKind::ForQuery {
                label,
                targets,
                query,
                body,
            } => {
                let sql = match query {
                    QuerySource::Query(sql) => self.prepare(session.context(), sql)?,
                    QuerySource::Execute(expression) => self.dynamic(session, expression).await?,
                };
                let rows = collect_rows(session, sql).await?;
                self.row_count = rows.len() as u64;
                self.set_found(!rows.is_empty());
                self.scopes.push(HashMap::new());
                let result = async {
                    for row in rows {
                        self.assign_row(targets, Some(row), true)?;
                        match self.iteration(session, body, label).await? {
                            LoopControl::Continue => {}
                            LoopControl::Break => break,
                            LoopControl::Propagate(flow) => return Ok(Some(flow)),
                        }
                    }
                    Ok::<_, Error>(None)
                }
                .await;
                self.scopes.pop();
                if let Some(flow) = result? {
                    return Ok(flow);
                }
            }
            StatementKind::Exit { label, condition }
            | StatementKind::Continue { label, condition } => {
                let taken = match condition {
                    Some(condition) => self.condition(session, condition).await?,
                    None => true,
                };
                if taken {
                    return Ok(match &statement.kind {
                        StatementKind::Exit { .. } => Flow::Exit(label.clone()),
                        _ => Flow::Continue(label.clone()),
                    });
                }
            }
            StatementKind::Return => return Ok(Flow::Return),
            StatementKind::Null => {}
            StatementKind::Raise {
                level,
                format,
                arguments,
            } => {
                self.raise(session, *level, format.as_deref(), arguments)
                    .await?
            }
            StatementKind::Perform(sql) => {
                let statement = self.prepare(session.context(), sql)?;
                let rows = collect_rows(session, statement).await?;
                self.row_count = rows.len() as u64;
                self.set_found(!rows.is_empty());
            }
            StatementKind::Execute { expression, into } => {
                let statement = self.dynamic(session, expression).await?;
                self.run_sql(session, statement, into, true).await?;
            }
            StatementKind::Commit => session.context().end_procedure_transaction(true).await?,
            StatementKind::Rollback => session.context().end_procedure_transaction(false).await?,
            StatementKind::RowCount(target) => {
                let count = ScalarValue::Int64(Some(self.row_count as i64));
                self.store(target, count)?;
            }
            StatementKind::Sql { sql, into } => {
                let statement = self.prepare(session.context(), sql)?;
                self.run_sql(session, statement, into, false).await?;
                if self.procedure.nonatomic {
                    session.context().commit_procedure_statement().await?;
                }
            }
        }
        Ok(Flow::Next)
    }

    /// Runs a loop's body once and says what the loop does next: EXIT and CONTINUE without
    /// a label, or with this loop's label, end here; anything else leaves the loop.
    async fn iteration(
        &mut self,
        session: &mut dyn Runner,
        body: &[Statement],
        label: &Option<String>,
    ) -> Result<LoopControl> {
        Ok(match self.statements(session, body).await? {
            Flow::Next => LoopControl::Continue,
            Flow::Exit(None) => LoopControl::Break,
            Flow::Exit(Some(l)) if label.as_ref() == Some(&l) => LoopControl::Break,
            Flow::Continue(None) => LoopControl::Continue,
            Flow::Continue(Some(l)) if label.as_ref() == Some(&l) => LoopControl::Continue,
            other => LoopControl::Propagate(other),
        })
    }

    /// Parses one SQL statement of the body and substitutes the variables into it.
    fn prepare(&self, cx: &Context, sql: &str) -> Result<Parsed> {
        let mut statements = cx.parse(sql)?;
        if statements.len() != 1 {
            return Err(Error::Syntax(format!(
                "expected one statement, found {}: {sql}",
                statements.len()
            )));
        }
        let mut statement = statements.pop().expect("one statement");
        if let Parsed::Sql(sql) = &mut statement {
            if matches!(
                sql,
                SqlStatement::Commit { .. }
                    | SqlStatement::Rollback { .. }
                    | SqlStatement::StartTransaction { .. }
            ) {
                return Err(Error::NotSupported(format!(
                    "{sql} in a procedure: use COMMIT or ROLLBACK of the procedure language"
                )));
            }
            self.substitute(sql)?;
        }
        Ok(statement)
    }

    /// The statement an EXECUTE's expression evaluates to (not substituted: dynamic SQL sees
    /// only what the string says).
    async fn dynamic(&mut self, session: &mut dyn Runner, expression: &str) -> Result<Parsed> {
        let sql = self
            .evaluate(session, expression, Some("varchar(65535)"))
            .await?;
        let ScalarValue::Utf8(Some(sql)) = sql else {
            return Err(Error::InvalidParameterValue(
                "EXECUTE of a null query string".into(),
            ));
        };
        let mut statements = session.context().parse(&sql)?;
        match statements.len() {
            1 => Ok(statements.pop().expect("one statement")),
            n => Err(Error::Syntax(format!(
                "EXECUTE runs one statement, found {n}: {sql}"
            ))),
        }
    }

    async fn run_sql(
        &mut self,
        session: &mut dyn Runner,
        statement: Parsed,
        into: &[String],
        dynamic: bool,
    ) -> Result<()> {
        let is_query = matches!(statement, Parsed::Sql(SqlStatement::Query(_)));
        let output = session.run(statement).await?;
        match output {
            Output::Rows { schema, stream } => {
                let batches: Vec<RecordBatch> = stream.try_collect().await?;
                let rows = batch_rows(&schema, &batches)?;
                self.row_count = rows.len() as u64;
                self.set_found(!rows.is_empty());
                if !into.is_empty() {
                    self.assign_row(into, rows.into_iter().next(), false)?;
                } else if is_query && !dynamic {
                    return Err(Error::Syntax(
                        "query has no destination for result data: use SELECT ... INTO or PERFORM"
                            .into(),
                    ));
                }
            }
            Output::Command { rows, .. } => {
                self.row_count = rows.unwrap_or(0);
                self.set_found(self.row_count > 0);
                if !into.is_empty() {
                    return Err(Error::Syntax(
                        "INTO is used with a statement that returns no rows".into(),
                    ));
                }
            }
            Output::CopyIn { .. } => {
                return Err(Error::NotSupported(
                    "COPY FROM STDIN cannot run in a procedure".into(),
                ));
            }
        }
        Ok(())
    }

    /// Assigns a row to targets: one record variable, or one scalar per column.
    fn assign_row(
        &mut self,
        targets: &[String],
        row: Option<Vec<(String, ScalarValue, String)>>,
        declare_record: bool,
    ) -> Result<()> {
        if let [target] = targets {
            let is_record = match self.lookup(target) {
                Some(Variable::Record(_)) => true,
                None => declare_record,
                _ => false,
            };
            if is_record {
                if self.lookup(target).is_none() {
                    self.declare(target, Variable::Record(None));
                }
                if let Some(Variable::Record(fields)) = self.lookup_mut(target) {
                    *fields = row;
                }
                return Ok(());
            }
        }
        let values: Vec<ScalarValue> = match row {
            Some(fields) => fields.into_iter().map(|(_, v, _)| v).collect(),
            None => vec![ScalarValue::Null; targets.len()],
        };
        for (i, target) in targets.iter().enumerate() {
            let value = values.get(i).cloned().unwrap_or(ScalarValue::Null);
            self.store(target, value)?;
        }
        Ok(())
    }

    /// Stores a value in a scalar variable or a record's field, cast to the declared type.
    fn store(&mut self, target: &str, value: ScalarValue) -> Result<()> {
        if let Some((record, field)) = target.split_once('.') {
            let Some(Variable::Record(Some(fields))) = self.lookup_mut(record) else {
                return Err(Error::UndefinedObject(format!(
                    "\"{record}\" is not a record variable with a field \"{field}\""
                )));
            };
            let slot = fields
                .iter_mut()
                .find(|(name, _, _)| name == field)
                .ok_or_else(|| {
                    Error::UndefinedColumn(format!("record \"{record}\" has no field \"{field}\""))
                })?;
            slot.1 = value;
            return Ok(());
        }
        let name = &self.procedure.name;
        let Some(variable) = self.lookup_mut(target) else {
            return Err(Error::UndefinedObject(format!(
                "\"{target}\" is not a known variable in procedure {name}"
            )));
        };
        match variable {
            Variable::Scalar {
                type_sql,
                value: slot,
                constant,
                not_null,
            } => {
                if *constant {
                    return Err(Error::InvalidStatement(format!(
                        "variable \"{target}\" is declared CONSTANT"
                    )));
                }
                if *not_null && value.is_null() {
                    return Err(null_not_allowed(target));
                }
                let value = match type_sql {
                    Some(type_sql) => cast_to(&value, type_sql)?,
                    None => value,
                };
                *slot = value;
                Ok(())
            }
            Variable::Record(_) => Err(Error::NotSupported(format!(
                "assigning a scalar to record \"{target}\": assign a row with SELECT ... INTO"
            ))),
            Variable::Alias(_) => unreachable!("lookup follows aliases"),
        }
    }

    async fn assign(
        &mut self,
        session: &mut dyn Runner,
        target: &str,
        expression: &str,
    ) -> Result<()> {
        let type_sql = match self.lookup(target) {
            Some(Variable::Scalar { type_sql, .. }) => type_sql.clone(),
            _ => None,
        };
        let value = self
            .evaluate(session, expression, type_sql.as_deref())
            .await?;
        self.store(target, value)
    }

    async fn condition(&mut self, session: &mut dyn Runner, condition: &str) -> Result<bool> {
        match self.evaluate(session, condition, Some("boolean")).await? {
            ScalarValue::Boolean(value) => Ok(value.unwrap_or(false)),
            other => Err(Error::InvalidStatement(format!(
                "condition \"{condition}\" is not boolean: {other}"
            ))),
        }
    }

    async fn integer(&mut self, session: &mut dyn Runner, expression: &str) -> Result<i64> {
        match self.evaluate(session, expression, Some("bigint")).await? {
            ScalarValue::Int64(Some(value)) => Ok(value),
            _ => Err(Error::InvalidParameterValue(format!(
                "FOR loop bound \"{expression}\" is null"
            ))),
        }
    }

    /// `SELECT <expression>`, cast to a type when given.
    async fn evaluate(
        &mut self,
        session: &mut dyn Runner,
        expression: &str,
        type_sql: Option<&str>,
    ) -> Result<ScalarValue> {
        let sql = match type_sql {
            Some(type_sql) => format!("SELECT CAST(({expression}) AS {type_sql})"),
            None => format!("SELECT {expression}"),
        };
        let statement = self.prepare(session.context(), &sql)?;
        let rows = collect_rows(session, statement).await?;
        if rows.len() > 1 {
            return Err(Error::Cardinality(format!(
                "expression \"{expression}\" returned more than one row"
            )));
        }
        Ok(rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
            .map(|(_, value, _)| value)
            .unwrap_or(ScalarValue::Null))
    }

    async fn raise(
        &mut self,
        session: &mut dyn Runner,
        level: RaiseLevel,
        format: Option<&str>,
        arguments: &[String],
    ) -> Result<()> {
        let Some(format) = format else {
            return Err(match self.handling.last() {
                Some(err) => clone_error(err),
                None => {
                    Error::Raised("RAISE without parameters outside an exception handler".into())
                }
            });
        };
        let mut values = Vec::new();
        for argument in arguments {
            let value = self.evaluate(session, argument, None).await?;
            values.push(text(&value)?.unwrap_or_else(|| "<NULL>".into()));
        }
        let message = format_message(format, &values)?;
        match level {
            RaiseLevel::Exception => return Err(Error::Raised(message)),
            RaiseLevel::Log => tracing::info!(procedure = %self.procedure.name, "{message}"),
            other => session.context().notify(other.severity(), message),
        }
        Ok(())
    }

    /// Replaces variable references in a statement with their values as typed literals.
    fn substitute(&self, statement: &mut SqlStatement) -> Result<()> {
        let mut failure = None;
        let _ = visit_expressions_mut(statement, |expr| {
            let replacement = match expr {
                Expr::Identifier(ident) => {
                    let name = tributary_syntax::names::normalize_ident(ident);
                    match name.as_str() {
                        "sqlerrm" if !self.handling.is_empty() => Some(Ok(string_literal(
                            &self
                                .handling
                                .last()
                                .map(|e| e.root().to_string())
                                .unwrap_or_default(),
                        ))),
                        _ => self.literal_of(&name, None),
                    }
                }
                Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                    let record = tributary_syntax::names::normalize_ident(&parts[0]);
                    let field = tributary_syntax::names::normalize_ident(&parts[1]);
                    self.literal_of(&record, Some(&field))
                }
                Expr::Value(value) => match &value.value {
                    Value::Placeholder(p) if p.starts_with('$') => self.literal_of(p, None),
                    _ => None,
                },
                _ => None,
            };
            match replacement {
                Some(Ok(literal)) => *expr = literal,
                Some(Err(err)) => {
                    failure = Some(err);
                    return ControlFlow::Break(());
                }
                None => {}
            }
            ControlFlow::Continue(())
        });
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The literal for a variable (or a record's field); None if the name is not a variable.
    fn literal_of(&self, name: &str, field: Option<&str>) -> Option<Result<Expr>> {
        let variable = self.lookup(name)?;
        match (variable, field) {
            (
                Variable::Scalar {
                    type_sql, value, ..
                },
                None,
            ) => Some(literal(value, type_sql.as_deref())),
            (Variable::Record(Some(fields)), Some(field)) => {
                let (_, value, type_sql) = fields.iter().find(|(n, _, _)| n == field)?;
                Some(literal(value, Some(type_sql)))
            }
            (Variable::Record(None), Some(field)) => Some(Err(Error::InvalidStatement(format!(
                "record \"{name}\" is not assigned yet, so it has no field \"{field}\""
            )))),
            _ => None,
        }
    }
}
