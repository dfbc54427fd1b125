//! Stored procedures: `CREATE [OR REPLACE] PROCEDURE ... LANGUAGE plpgsql`, `CALL` and
//! `DROP PROCEDURE`.
//!
//! A procedure is stored in its schema's catalog entry with its body as text; the body is
//! parsed at CREATE (so syntax errors surface there) and again at each CALL. `parse` turns the
//! body into blocks of statements; `run` interprets them against the calling session, so every
//! SQL statement of the body goes through the same path as a client's statement.
//!
//! Transactions follow Redshift: a CALL outside a transaction block is one transaction that
//! commits when the call returns; inside a block it is part of the block. COMMIT and ROLLBACK
//! in the body end the current transaction and start a new one, and are refused when the call
//! is inside a block. NONATOMIC procedures commit each statement on its own.

mod run;
pub(crate) mod runner;
pub(crate) mod stack;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast::{
    DropBehavior, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, FunctionDesc,
    ObjectName,
};
use std::sync::Arc;
use tributary_catalog::{ArgumentMode, Procedure, ProcedureArgument, SqlType};

use crate::context::Context;
use crate::output::Output;
use runner::Runner;
use tributary_engine::error::{Error, Result};
use tributary_syntax::extension::ProcedureDefinition;
use tributary_syntax::names::name_parts;

/// How deep procedure calls may nest, as in Redshift.
const MAX_DEPTH: usize = 16;

/// `CREATE [OR REPLACE] PROCEDURE`.
pub(crate) fn create(
    cx: &mut Context,
    name: &ObjectName,
    definition: ProcedureDefinition,
) -> Result<Output> {
    if definition.language != "plpgsql" {
        return Err(Error::NotSupported(format!(
            "procedures in language \"{}\" are not supported; use LANGUAGE plpgsql",
            definition.language
        )));
    }
    let (schema, name) = cx.resolve_for_create(name)?;
    let database = cx.database().to_string();
    cx.catalogs().pinned().schema(&database, &schema)?;
    crate::access::check::check_create_in(cx, &schema)?;
    let mut arguments = Vec::new();
    for (arg_name, mode, type_text) in &definition.arguments {
        let mode = match mode.as_str() {
            "in" => ArgumentMode::In,
            "out" => ArgumentMode::Out,
            _ => ArgumentMode::InOut,
        };
        arguments.push(ProcedureArgument {
            name: arg_name.clone(),
            mode,
            sql_type: resolve_type(type_text)?,
        });
    }
    // Parse now, so that a body that cannot run is refused at CREATE.
    tributary_syntax::plpgsql::parse_body(&definition.body)?;
    // Each setting must be one a CALL can apply: a known, writable parameter, a valid value.
    let mut probe = cx.settings().clone();
    for (setting, value) in &definition.settings {
        probe.set(setting, value)?;
    }
    let mut procedure = Procedure {
        oid: 0,
        owner: cx.user().to_string(),
        name: name.clone(),
        arguments,
        body: definition.body,
        nonatomic: definition.nonatomic,
        security_definer: definition.security_definer,
        settings: definition.settings,
    };
    let signature = procedure.signature();
    cx.catalogs().modify(|state| {
        let existing = state
            .schema(&database, &schema)?
            .procedures
            .get(&signature)
            .map(|p| p.oid);
        procedure.oid = match existing {
            Some(_) if !definition.or_replace => {
                return Err(tributary_catalog::Error::AlreadyExists {
                    kind: "procedure",
                    name: signature.clone(),
                });
            }
            Some(oid) => oid,
            None => state.allocate_oid(),
        };
        state
            .schema_mut(&database, &schema)?
            .procedures
            .insert(signature.clone(), procedure.clone());
        Ok(())
    })?;
    Ok(Output::command("CREATE PROCEDURE"))
}

/// `SHOW PROCEDURE name[(types)]`: the definition as a CREATE statement, as Redshift shows it.
pub(crate) fn show(
    cx: &mut Context,
    name: &ObjectName,
    argument_types: Option<&[String]>,
) -> Result<Output> {
    let types = argument_types
        .map(|types| {
            types
                .iter()
                .map(|t| resolve_type(t).map(|t| t.base_name()))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    let (schema, procedure) = find(cx, name, |p| match &types {
        Some(types) => {
            input_types(p)
                .iter()
                .map(SqlType::base_name)
                .collect::<Vec<_>>()
                == *types
        }
        None => true,
    })?
    .ok_or_else(|| Error::UndefinedFunction(format!("procedure {name} does not exist")))?;
    let arguments: Vec<String> = procedure
        .arguments
        .iter()
        .map(|a| {
            let mode = match a.mode {
                ArgumentMode::In => "",
                ArgumentMode::Out => "OUT ",
                ArgumentMode::InOut => "INOUT ",
            };
            match &a.name {
                Some(name) => format!("{mode}{name} {}", a.sql_type.display_name()),
                None => format!("{mode}{}", a.sql_type.display_name()),
            }
        })
        .collect();
    let mut text = format!(
        "CREATE OR REPLACE PROCEDURE {schema}.{}({}){}\nLANGUAGE plpgsql{}\n",
        procedure.name,
        arguments.join(", "),
        if procedure.nonatomic {
            " NONATOMIC"
        } else {
            ""
        },
        if procedure.security_definer {
            "\nSECURITY DEFINER"
        } else {
            ""
        },
    );
    for (setting, value) in &procedure.settings {
        text.push_str(&format!("SET {setting} TO '{value}'\n"));
    }
    text.push_str(&format!("AS $$\n{}\n$$", procedure.body.trim_matches('\n')));
    let schema = show_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow::array::StringArray::from(vec![text]))],
    )?;
    Ok(Output::rows(schema, vec![batch]))
}

/// The result columns of `SHOW PROCEDURE`.
pub(crate) fn show_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new(
        "Stored Procedure Definition",
        arrow::datatypes::DataType::Utf8,
        false,
    )]))
}

/// Resolves a type written in SQL text (`varchar(256)`, `int`).
fn resolve_type(text: &str) -> Result<SqlType> {
    let dialect = tributary_syntax::dialect::TributaryDialect::default();
    let data_type = datafusion::sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_data_type())
        .map_err(|e| Error::Syntax(format!("type \"{text}\": {e}")))?;
    tributary_engine::types::resolve(&data_type)
}

/// `DROP PROCEDURE [IF EXISTS] name [(argtypes)] [, ...]`.
pub(crate) fn drop(
    cx: &mut Context,
    if_exists: bool,
    procedures: &[FunctionDesc],
    behavior: Option<DropBehavior>,
) -> Result<Output> {
    if behavior == Some(DropBehavior::Cascade) {
        return Err(Error::NotSupported(
            "DROP PROCEDURE ... CASCADE: nothing depends on procedures; drop without CASCADE"
                .into(),
        ));
    }
    let database = cx.database().to_string();
    for desc in procedures {
        let types = match &desc.args {
            Some(args) => Some(
                args.iter()
                    .filter(|a| {
                        !matches!(a.mode, Some(datafusion::sql::sqlparser::ast::ArgMode::Out))
                    })
                    .map(|a| tributary_engine::types::resolve(&a.data_type))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        let found = find(cx, &desc.name, |candidate| match &types {
            Some(types) => {
                let base = |types: &[SqlType]| -> Vec<String> {
                    types.iter().map(SqlType::base_name).collect()
                };
                base(&input_types(candidate)) == base(types)
            }
            None => true,
        });
        let Some((schema, procedure)) = found? else {
            if if_exists {
                cx.notice(format!("procedure {} does not exist, skipping", desc.name));
                continue;
            }
            return Err(Error::UndefinedFunction(format!(
                "procedure {} does not exist",
                desc.name
            )));
        };
        let signature = procedure.signature();
        cx.catalogs().modify(|state| {
            state
                .schema_mut(&database, &schema)?
                .procedures
                .remove(&signature);
            Ok(())
        })?;
    }
    Ok(Output::command("DROP PROCEDURE"))
}

fn input_types(procedure: &Procedure) -> Vec<SqlType> {
    procedure
        .arguments
        .iter()
        .filter(|a| a.mode.is_input())
        .map(|a| a.sql_type.clone())
        .collect()
}

/// Finds the one procedure of that name that `accept` takes, in the search path (or the
/// named schema); None if there is none. Overloads differ in their input types, compared
/// by base type.
fn find(
    cx: &Context,
    name: &ObjectName,
    accept: impl Fn(&Procedure) -> bool,
) -> Result<Option<(String, Procedure)>> {
    let parts = name_parts(name);
    let database = cx.database().to_string();
    let (schemas, procedure_name) = match parts.as_slice() {
        [name] => (cx.settings().search_path(cx.user()), name.clone()),
        [schema, name] => (vec![schema.clone()], name.clone()),
        [db, schema, name] if *db == database => (vec![schema.clone()], name.clone()),
        _ => {
            return Err(Error::NotSupported(format!(
                "procedure {name}: cross-database calls are not supported"
            )));
        }
    };
    let pinned = cx.catalogs().pinned();
    for schema in schemas {
        let Ok(entry) = pinned.schema(&database, &schema) else {
            continue;
        };
        let matches: Vec<&Procedure> = entry
            .procedures
            .values()
            .filter(|p| p.name == procedure_name && accept(p))
            .collect();
        match matches.as_slice() {
            [] => continue,
            [one] => return Ok(Some((schema, (*one).clone()))),
            _ => {
                return Err(Error::UndefinedFunction(format!(
                    "procedure {procedure_name} is not unique: name its argument types"
                )));
            }
        }
    }
    Ok(None)
}

/// The procedure a GRANT or ALTER names: `[schema.]name`, with its input argument types when
/// given (without them the name must be unique, as in Postgres).
pub(crate) fn resolve(
    cx: &Context,
    name: &ObjectName,
    types: Option<&[String]>,
) -> Result<(String, Procedure)> {
    let wanted = types
        .map(|types| {
            types
                .iter()
                .map(|t| resolve_type(t).map(|t| t.base_name()))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    find(cx, name, |p| match &wanted {
        None => true,
        Some(wanted) => {
            let inputs: Vec<String> = p
                .arguments
                .iter()
                .filter(|a| a.mode.is_input())
                .map(|a| a.sql_type.base_name())
                .collect();
            inputs == *wanted
        }
    })?
    .ok_or_else(|| Error::UndefinedFunction(format!("procedure {name} does not exist")))
}

/// `CALL name(args)`.
pub(crate) async fn call(
    session: &mut dyn Runner,
    function: &Function,
    autocommit: bool,
) -> Result<Output> {
    let arguments: Vec<Expr> = match &function.args {
        FunctionArguments::None => vec![],
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Ok(expr.clone()),
                other => Err(Error::NotSupported(format!(
                    "procedure argument {other}: pass arguments by position"
                ))),
            })
            .collect::<Result<_>>()?,
        FunctionArguments::Subquery(_) => {
            return Err(Error::Syntax("CALL takes a list of arguments".into()));
        }
    };
    let cx = session.context();
    let (_, procedure) = find(cx, &function.name, |p| {
        p.arguments.iter().filter(|a| a.mode.is_input()).count() == arguments.len()
    })?
    .ok_or_else(|| {
        Error::UndefinedFunction(format!(
            "procedure {} with {} argument(s) does not exist",
            function.name,
            arguments.len()
        ))
    })?;
    crate::access::check::check_execute(
        cx,
        procedure.oid,
        &procedure.owner,
        &function.name.to_string(),
    )?;
    if cx.calls.depth >= MAX_DEPTH {
        return Err(Error::ResourcesExhausted(format!(
            "procedure calls nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let values = run::call_arguments(session, &procedure, arguments).await?;
    let cx = session.context();
    // Before the call is counted: a setting refused leaves the session as it was.
    let saved = apply_settings(cx, &procedure.settings)?;
    let outermost = cx.calls.depth == 0;
    if outermost {
        cx.calls.owns_transaction = autocommit;
    }
    cx.calls.depth += 1;
    // SECURITY DEFINER: the body's statements are checked against the owner's privileges.
    let caller = procedure
        .security_definer
        .then(|| cx.swap_user(procedure.owner.clone()));
    let result = run::run(session, &procedure, values).await;
    let cx = session.context();
    if let Some(caller) = caller {
        cx.swap_user(caller);
    }
    restore_settings(cx, saved);
    cx.calls.depth -= 1;
    if outermost {
        cx.calls.owns_transaction = false;
    }
    let outputs = result?;
    let Some(schema) = output_schema(&procedure) else {
        return Ok(Output::command("CALL"));
    };
    let columns = outputs
        .into_iter()
        .zip(schema.fields())
        .map(|(value, field)| Ok(value.cast_to(field.data_type())?.to_array()?))
        .collect::<Result<Vec<_>>>()?;
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Output::rows(schema, vec![batch]))
}

/// The row a CALL returns: the procedure's OUT and INOUT arguments (None if it has none).
fn output_schema(procedure: &Procedure) -> Option<Arc<Schema>> {
    let fields: Vec<Field> = procedure
        .arguments
        .iter()
        .filter(|a| a.mode.is_output())
        .map(|a| {
            Field::new(
                a.name.clone().unwrap_or_else(|| "?column?".into()),
                a.sql_type.to_arrow(),
                true,
            )
        })
        .collect();
    (!fields.is_empty()).then(|| Arc::new(Schema::new(fields)))
}

/// What a CALL returns, for the extended protocol's Describe (before it runs).
pub(crate) fn describe_call(cx: &Context, function: &Function) -> Option<Arc<Schema>> {
    let count = match &function.args {
        FunctionArguments::List(list) => list.args.len(),
        _ => 0,
    };
    let (_, procedure) = find(cx, &function.name, |p| {
        p.arguments.iter().filter(|a| a.mode.is_input()).count() == count
    })
    .ok()??;
    output_schema(&procedure)
}

/// Applies a procedure's `SET` clauses; returns the values to restore.
fn apply_settings(
    cx: &mut Context,
    settings: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let mut saved = Vec::new();
    for (name, value) in settings {
        let applied = cx
            .settings()
            .get(name)
            .and_then(|old| cx.set_setting(name, value).map(|()| old));
        match applied {
            Ok(old) => saved.push((name.clone(), old)),
            Err(err) => {
                // The settings applied before this one are taken back.
                restore_settings(cx, saved);
                return Err(err);
            }
        }
    }
    Ok(saved)
}

fn restore_settings(cx: &mut Context, saved: Vec<(String, String)>) {
    for (name, value) in saved.into_iter().rev() {
        // The value was read from the settings, so it is accepted back.
        let _ = cx.set_setting(&name, &value);
    }
}
