//! The checks every statement passes before it runs: the privileges its relation references,
//! its writes and its utility or extension statement need.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{ObjectType, Query, Statement, TableFactor, Visit, Visitor};
use tributary_catalog::{CatalogState, ExternalSource, Privilege};
use tributary_engine::catalog_list::{SYSTEM_SCHEMA, TEMP_SCHEMA};
use tributary_syntax::ExtStatement;

use crate::classify::Route;
use crate::context::Context;
use crate::{Error, Result};

/// What a relation reference in a statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write(Privilege),
}

/// The one privilege check of a statement, made before its handler runs. Queries, INSERT and
/// EXPLAIN arrive qualified by `rewrite` (the session plans that form); DML is checked as
/// `rewrite` qualifies it. CALL needs EXECUTE on the procedure its arguments select, so the
/// procedure handler checks it once it has resolved the procedure (`check_execute`).
pub(crate) fn authorize(cx: &Context, route: &Route) -> Result<()> {
    match route {
        Route::Ext(statement) => check_ext(cx, statement),
        Route::Call(_) => Ok(()),
        Route::Dml(statement) => check_statement(cx, &cx.rewrite(statement.clone())?),
        Route::Planned(qualified) => check_statement(cx, qualified),
        Route::Utility(statement) => check_utility(cx, statement),
    }
}

/// Checks that the session's user may run `statement` (already qualified by `rewrite`):
/// USAGE on every schema it names, and SELECT, INSERT, UPDATE or DELETE on each relation.
/// Relations of a database made from a datashare are read-only.
fn check_statement(cx: &Context, statement: &Statement) -> Result<()> {
    let state = cx.catalogs().pinned();
    let user = cx.user();
    let mut pending_targets = write_privileges(statement);
    let mut collector = Relations::default();
    let _ = statement.visit(&mut collector);
    for name in collector.names {
        if name.len() == 1 && collector.ctes.contains(&name[0]) {
            continue;
        }
        // The first reference of a write target is the write; later ones read it.
        let position = pending_targets
            .iter()
            .position(|(n, _)| same_name(n, &name));
        let accesses: Vec<Access> = match position {
            Some(i) => {
                let (_, privileges) = pending_targets.remove(i);
                privileges.into_iter().map(Access::Write).collect()
            }
            None => vec![Access::Read],
        };
        for access in accesses {
            check_relation(cx, &state, user, &name, access)?;
        }
    }
    Ok(())
}

fn same_name(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && b[b.len() - a.len()..] == *a
}

/// The privileges a statement's write target needs.
fn write_privileges(statement: &Statement) -> Vec<(Vec<String>, Vec<Privilege>)> {
    let privileges = match statement {
        Statement::Insert(_) => vec![Privilege::Insert],
        Statement::Update(_) => vec![Privilege::Update],
        Statement::Delete(_) => vec![Privilege::Delete],
        Statement::Merge(merge) => {
            use datafusion::sql::sqlparser::ast::MergeAction;
            let mut needed = Vec::new();
            for clause in &merge.clauses {
                let privilege = match clause.action {
                    MergeAction::Insert(_) => Privilege::Insert,
                    MergeAction::Update { .. } => Privilege::Update,
                    MergeAction::Delete { .. } => Privilege::Delete,
                };
                if !needed.contains(&privilege) {
                    needed.push(privilege);
                }
            }
            needed
        }
        _ => return Vec::new(),
    };
    crate::classify::write_target_names(statement)
        .into_iter()
        .map(|name| {
            (
                tributary_syntax::names::name_parts(&name),
                privileges.clone(),
            )
        })
        .collect()
}

/// Checks one relation reference: `[db.]schema.name` after qualification.
pub(crate) fn check_relation(
    cx: &Context,
    state: &CatalogState,
    user: &str,
    name: &[String],
    access: Access,
) -> Result<()> {
    let (database, schema, relation) = match name {
        [schema, relation] => (cx.database().to_string(), schema, relation),
        [database, schema, relation] => (database.clone(), schema, relation),
        _ => return Ok(()),
    };
    if schema == TEMP_SCHEMA || schema == SYSTEM_SCHEMA || schema == "information_schema" {
        return Ok(());
    }
    let Ok(db) = state.database(&database) else {
        return Ok(());
    };
    if let Access::Write(privilege) = access
        && database != cx.database()
    {
        // As in Redshift, other databases are read-only through three-part names.
        return Err(Error::NotSupported(format!(
            "{} is not allowed on \"{database}\": other databases are read-only; connect to \"{database}\" to write",
            privilege.name()
        )));
    }
    if db.share.is_some() {
        if let Access::Write(privilege) = access {
            return Err(read_only_share(&database, privilege));
        }
        if !state.holds(user, db.oid, &db.owner, Privilege::Usage) {
            return Err(Error::PermissionDenied(format!("database {database}")));
        }
        return Ok(());
    }
    let Ok(found) = state.schema(&database, schema) else {
        return Ok(());
    };
    if let Some(ExternalSource::Redshift {
        database: target, ..
    }) = &found.external
    {
        if let Access::Write(privilege) = access {
            return Err(read_only_share(target, privilege));
        }
        // USAGE on a schema that maps another database's schema lets its users read it.
        if !state.holds(user, found.oid, &found.owner, Privilege::Usage) {
            return Err(Error::PermissionDenied(format!("schema {schema}")));
        }
        return Ok(());
    }
    if !state.holds(user, found.oid, &found.owner, Privilege::Usage) {
        return Err(Error::PermissionDenied(format!("schema {schema}")));
    }
    let Some(object) = found.relations.get(relation) else {
        return Ok(());
    };
    let privilege = match access {
        Access::Read => Privilege::Select,
        Access::Write(privilege) => privilege,
    };
    if !state.holds(
        user,
        object.oid(),
        CatalogState::relation_owner(object),
        privilege,
    ) {
        return Err(Error::PermissionDenied(format!("relation {relation}")));
    }
    Ok(())
}

fn read_only_share(database: &str, privilege: Privilege) -> Error {
    Error::NotSupported(format!(
        "{} is not allowed on \"{database}\": a database made from a datashare is read-only",
        privilege.name()
    ))
}

/// Checks that the user may create objects in `schema` of the current database.
pub(crate) fn check_create_in(cx: &Context, schema: &str) -> Result<()> {
    let state = cx.catalogs().pinned();
    let database = cx.database();
    let db = state.database(database)?;
    if db.share.is_some() {
        return Err(read_only_share(database, Privilege::Create));
    }
    let Ok(found) = state.schema(database, schema) else {
        return Ok(());
    };
    if !state.holds(cx.user(), found.oid, &found.owner, Privilege::Create) {
        return Err(Error::PermissionDenied(format!("schema {schema}")));
    }
    Ok(())
}

/// Checks that the user owns `[db.]schema.name` (or is a superuser): DROP, ALTER, REFRESH.
pub(crate) fn check_owner(cx: &Context, schema: &str, name: &str) -> Result<()> {
    let state = cx.catalogs().pinned();
    let Some(relation) = state.relation(cx.database(), schema, name) else {
        return Ok(());
    };
    let owner = CatalogState::relation_owner(relation);
    if owner == cx.user() || state.is_superuser(cx.user()) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "relation {name}: must be its owner"
    )))
}

/// Checks the privileges of the statements sqlparser lacks; the access statements check their
/// own as they run.
fn check_ext(cx: &Context, statement: &ExtStatement) -> Result<()> {
    let superuser = cx.catalogs().pinned().is_superuser(cx.user());
    match statement {
        ExtStatement::CreateExternalSchema { .. } if !superuser => {
            check_create_schema(cx)?;
        }
        ExtStatement::CreateMirrorTable { table, .. } if !superuser => {
            let (schema, _) = cx.resolve_for_create(&table.name)?;
            check_create_in(cx, &schema)?;
        }
        ExtStatement::Refresh { name } | ExtStatement::AlterAutoRefresh { name, .. } => {
            if let Ok((schema, view)) = cx.resolve_existing(name) {
                check_owner(cx, &schema, &view)?;
            }
        }
        ExtStatement::AlterExternalSchema { .. } => {
            require_superuser(cx, "ALTER EXTERNAL SCHEMA")?;
        }
        _ => {}
    }
    Ok(())
}

/// CREATE SCHEMA needs CREATE on the database.
fn check_create_schema(cx: &Context) -> Result<()> {
    let state = cx.catalogs().pinned();
    let user = cx.user();
    let db = state.database(cx.database())?;
    if !state.holds(user, db.oid, &db.owner, Privilege::Create) {
        return Err(Error::PermissionDenied(format!(
            "database {}",
            cx.database()
        )));
    }
    Ok(())
}

/// Checks the privileges of statements that are not queries or DML: DDL needs CREATE on the
/// target schema or ownership of the target; CREATE SCHEMA needs CREATE on the database.
fn check_utility(cx: &Context, statement: &Statement) -> Result<()> {
    let state = cx.catalogs().pinned();
    let user = cx.user();
    if state.is_superuser(user) {
        return Ok(());
    }
    match statement {
        Statement::CreateTable(create) => {
            let (schema, _) = cx.resolve_for_create(&create.name)?;
            check_create_in(cx, &schema)?;
            if let Some(query) = &create.query {
                check_reads(cx, query)?;
            }
        }
        Statement::CreateView(create) => {
            let (schema, _) = cx.resolve_for_create(&create.name)?;
            check_create_in(cx, &schema)?;
            // A view's (or a streaming view's) query reads what it names: USAGE on an
            // external schema, SELECT on tables.
            check_reads(cx, &create.query)?;
        }
        Statement::CreateSchema { .. } => check_create_schema(cx)?,
        Statement::CreateDatabase { .. }
            if !state.users.get(user).is_some_and(|u| u.create_database) =>
        {
            return Err(Error::PermissionDenied(
                "CREATE DATABASE: needs CREATEDB or a superuser".into(),
            ));
        }
        Statement::Drop {
            object_type, names, ..
        } => match object_type {
            ObjectType::Table | ObjectType::View | ObjectType::MaterializedView => {
                for name in names {
                    if let Ok((schema, relation)) = cx.resolve_existing(name) {
                        check_owner(cx, &schema, &relation)?;
                    }
                }
            }
            ObjectType::Schema => {
                for name in names {
                    let schema = tributary_syntax::names::name_parts(name)
                        .last()
                        .cloned()
                        .unwrap_or_default();
                    if let Ok(found) = state.schema(cx.database(), &schema)
                        && found.owner != user
                    {
                        return Err(Error::PermissionDenied(format!(
                            "schema {schema}: must be its owner"
                        )));
                    }
                }
            }
            ObjectType::Database => {
                for name in names {
                    let database = tributary_syntax::names::name_parts(name).join(".");
                    if let Ok(found) = state.database(&database)
                        && found.owner != user
                    {
                        return Err(Error::PermissionDenied(format!(
                            "database {database}: must be its owner"
                        )));
                    }
                }
            }
            _ => {}
        },
        Statement::AlterTable(alter) => {
            if let Ok((schema, relation)) = cx.resolve_existing(&alter.name) {
                check_owner(cx, &schema, &relation)?;
            }
        }
        Statement::Truncate(truncate) => {
            for table in &truncate.table_names {
                if let Ok((schema, relation)) = cx.resolve_existing(&table.name) {
                    let name = vec![schema, relation];
                    check_relation(cx, &state, user, &name, Access::Write(Privilege::Delete))?;
                }
            }
        }
        Statement::Copy {
            source: datafusion::sql::sqlparser::ast::CopySource::Table { table_name, .. },
            to: false,
            ..
        } => {
            if let Ok((schema, relation)) = cx.resolve_existing(table_name) {
                let name = vec![schema, relation];
                check_relation(cx, &state, user, &name, Access::Write(Privilege::Insert))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks the relations a CREATE ... AS query reads.
fn check_reads(cx: &Context, query: &Query) -> Result<()> {
    let statement = Statement::Query(Box::new(query.clone()));
    // A query the rewrite cannot handle fails later with its own error.
    match cx.rewrite(statement) {
        Ok(qualified) => check_statement(cx, &qualified),
        Err(_) => Ok(()),
    }
}

/// Checks that the user may call a procedure (EXECUTE).
pub(crate) fn check_execute(cx: &Context, oid: u32, owner: &str, name: &str) -> Result<()> {
    let state = cx.catalogs().pinned();
    if state.holds(cx.user(), oid, owner, Privilege::Execute) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!("procedure {name}")))
    }
}

/// The relation names a statement references (not table functions), and its CTE names.
#[derive(Default)]
struct Relations {
    names: Vec<Vec<String>>,
    ctes: HashSet<String>,
}

impl Visitor for Relations {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes
                    .insert(tributary_syntax::names::normalize_ident(&cte.alias.name));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
        {
            self.names.push(tributary_syntax::names::name_parts(name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if let Statement::Insert(insert) = statement
            && let datafusion::sql::sqlparser::ast::TableObject::TableName(name) = &insert.table
        {
            self.names.push(tributary_syntax::names::name_parts(name));
        }
        ControlFlow::Continue(())
    }
}

/// Refuses `what` unless the user is a superuser.
pub(crate) fn require_superuser(cx: &Context, what: &str) -> Result<()> {
    if cx.catalogs().pinned().is_superuser(cx.user()) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{what}: must be a superuser"
        )))
    }
}
