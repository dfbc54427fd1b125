//! Users, groups and privileges: the statements that manage them, and the checks every
//! statement passes before it runs.
//!
//! Privileges live in the catalog by object oid (`CatalogState::grants`), so they change in
//! the same transactional commit as everything else and a GRANT never conflicts with writes
//! to the table it names. A check reads the statement's pinned catalog version: a REVOKE
//! takes effect for the next statement. Superusers and owners hold every privilege on their
//! objects; PUBLIC may use and create in each database's `public` schema, as in Redshift.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{ObjectType, Query, Statement, TableFactor, Visit, Visitor};
use tributary_catalog::{
    CatalogState, ExternalSource, Grantee, Group, Privilege, Relation, StoredPassword, User,
};

use crate::catalog_list::{SYSTEM_SCHEMA, TEMP_SCHEMA};
use crate::session::{Output, Session};
use crate::{Error, Result};
use tributary_syntax::ExtStatement;
use tributary_syntax::access::{AccessStatement, GrantObject, Name, ObjectKind, UserOptions};

/// Computes the stored verifiers of a password (installed by the wire crate, which owns the
/// authentication methods).
pub(crate) type PasswordHasher = fn(user: &str, password: &str) -> StoredPassword;

/// Runs an access statement carried as `CALL __tributary_access('<json>')`.
pub(crate) async fn execute(session: &mut Session, statement: AccessStatement) -> Result<Output> {
    match statement {
        AccessStatement::CreateUser { name, options } => create_user(session, name, options),
        AccessStatement::AlterUser {
            name,
            options,
            rename,
        } => alter_user(session, name, options, rename),
        AccessStatement::DropUser { names, if_exists } => drop_users(session, names, if_exists),
        AccessStatement::CreateGroup { name, users } => create_group(session, name, users),
        AccessStatement::AlterGroup { name, add, users } => alter_group(session, name, add, users),
        AccessStatement::RenameGroup { name, to } => rename_group(session, name, to),
        AccessStatement::DropGroup { names, if_exists } => drop_groups(session, names, if_exists),
        AccessStatement::Grant {
            revoke,
            privileges,
            object,
            grantees,
        } => grant(session, revoke, privileges, object, grantees),
        AccessStatement::Owner { kind, name, owner } => set_owner(session, kind, name, owner),
        other => crate::sharing::execute(session, other).await,
    }
}

pub(crate) fn require_superuser(session: &Session, what: &str) -> Result<()> {
    if session.catalogs().pinned().is_superuser(session.user()) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{what}: must be a superuser"
        )))
    }
}

/// Redshift's password rules: 8 to 64 characters with an upper-case letter, a lower-case
/// letter and a digit.
fn check_password(password: &str) -> Result<()> {
    let length = password.chars().count();
    let fails = if !(8..=64).contains(&length) {
        Some("must be 8 to 64 characters long")
    } else if !password.chars().any(|c| c.is_ascii_uppercase()) {
        Some("must contain an upper-case letter")
    } else if !password.chars().any(|c| c.is_ascii_lowercase()) {
        Some("must contain a lower-case letter")
    } else if !password.chars().any(|c| c.is_ascii_digit()) {
        Some("must contain a digit")
    } else {
        None
    };
    match fails {
        Some(rule) => Err(Error::InvalidParameterValue(format!("the password {rule}"))),
        None => Ok(()),
    }
}

fn verifiers(session: &Session, user: &str, password: &str) -> Result<StoredPassword> {
    check_password(password)?;
    let hasher = session.engine().password_hasher().ok_or_else(|| {
        Error::NotSupported("passwords can be set only through a server connection".into())
    })?;
    Ok(hasher(user, password))
}

fn missing(kind: &'static str, name: &str) -> Error {
    Error::UndefinedObject(format!("{kind} \"{name}\" does not exist"))
}

fn create_user(session: &mut Session, name: String, options: UserOptions) -> Result<Output> {
    require_superuser(session, "CREATE USER")?;
    let password = match &options.password {
        Some(Some(password)) => Some(verifiers(session, &name, password)?),
        _ => None,
    };
    warn_ignored(session, &options);
    session.catalogs().modify(|state| {
        if state.users.contains_key(&name) {
            return Err(tributary_catalog::Error::AlreadyExists {
                kind: "user",
                name: name.clone(),
            });
        }
        for group in &options.groups {
            if !state.groups.contains_key(group) {
                return Err(tributary_catalog::Error::NotFound {
                    kind: "group",
                    name: group.clone(),
                });
            }
        }
        let oid = state.allocate_oid();
        state.users.insert(
            name.clone(),
            User {
                oid,
                superuser: options.superuser.unwrap_or(false),
                create_database: options.create_database.unwrap_or(false),
                password,
            },
        );
        for group in &options.groups {
            if let Some(group) = state.groups.get_mut(group) {
                group.members.insert(name.clone());
            }
        }
        Ok(())
    })?;
    Ok(Output::command("CREATE USER"))
}

fn warn_ignored(session: &mut Session, options: &UserOptions) {
    for option in &options.ignored {
        session.notice(format!("{option} is accepted and not enforced"));
    }
}

fn alter_user(
    session: &mut Session,
    name: String,
    options: UserOptions,
    rename: Option<String>,
) -> Result<Output> {
    let own_password_only = name == session.user()
        && options.superuser.is_none()
        && options.create_database.is_none()
        && rename.is_none();
    if !own_password_only {
        require_superuser(session, "ALTER USER")?;
    }
    if rename.is_some() && name == session.user() {
        return Err(Error::InvalidStatement(
            "the session user cannot be renamed".into(),
        ));
    }
    let password = match &options.password {
        Some(Some(password)) => Some(Some(verifiers(
            session,
            rename.as_deref().unwrap_or(&name),
            password,
        )?)),
        Some(None) => Some(None),
        None => None,
    };
    warn_ignored(session, &options);
    session.catalogs().modify(|state| {
        let mut user =
            state
                .users
                .get(&name)
                .cloned()
                .ok_or_else(|| tributary_catalog::Error::NotFound {
                    kind: "user",
                    name: name.clone(),
                })?;
        if let Some(password) = password {
            user.password = password;
        }
        if let Some(superuser) = options.superuser {
            user.superuser = superuser;
        }
        if let Some(create_database) = options.create_database {
            user.create_database = create_database;
        }
        match rename {
            Some(to) => {
                if state.users.contains_key(&to) {
                    return Err(tributary_catalog::Error::AlreadyExists {
                        kind: "user",
                        name: to,
                    });
                }
                // MD5 verifiers are salted with the user name: a renamed user must set its
                // password again, as in Postgres.
                user.password = None;
                state.users.remove(&name);
                state.users.insert(to.clone(), user);
                rename_owner(state, &name, &to);
                for group in state.groups.values_mut() {
                    if group.members.remove(&name) {
                        group.members.insert(to.clone());
                    }
                }
                for grants in state.grants.values_mut() {
                    if let Some(privileges) = grants.remove(&Grantee::User(name.clone())) {
                        grants.insert(Grantee::User(to.clone()), privileges);
                    }
                }
            }
            None => {
                state.users.insert(name.clone(), user);
            }
        }
        Ok(())
    })?;
    Ok(Output::command("ALTER USER"))
}

/// Every object `from` owns is owned by `to`.
fn rename_owner(state: &mut CatalogState, from: &str, to: &str) {
    let fix = |owner: &mut String| {
        if owner == from {
            *owner = to.to_string();
        }
    };
    for db in state.databases.values_mut() {
        fix(&mut db.owner);
        for schema in db.schemas.values_mut() {
            fix(&mut schema.owner);
            for relation in schema.relations.values_mut() {
                match relation {
                    Relation::Table(t) => fix(&mut t.owner),
                    Relation::View(v) => fix(&mut v.owner),
                }
            }
            for procedure in schema.procedures.values_mut() {
                fix(&mut procedure.owner);
            }
        }
    }
    for share in state.datashares.values_mut() {
        fix(&mut share.owner);
    }
}

fn drop_users(session: &mut Session, names: Vec<String>, if_exists: bool) -> Result<Output> {
    require_superuser(session, "DROP USER")?;
    let pinned = session.catalogs().pinned();
    for name in &names {
        if name == session.user() {
            return Err(Error::InvalidStatement(
                "the session user cannot be dropped".into(),
            ));
        }
        if !pinned.users.contains_key(name) {
            if if_exists {
                session.notice(format!("user \"{name}\" does not exist, skipping"));
                continue;
            }
            return Err(missing("user", name));
        }
        let owned = pinned.owned_by(name);
        if !owned.is_empty() {
            return Err(Error::DependentObjects(format!(
                "user \"{name}\" cannot be dropped because the user owns some objects: {}",
                owned.join(", ")
            )));
        }
    }
    session.catalogs().modify(|state| {
        for name in &names {
            if state.users.remove(name).is_some() {
                for group in state.groups.values_mut() {
                    group.members.remove(name);
                }
                state.revoke_all_from(&Grantee::User(name.clone()));
            }
        }
        Ok(())
    })?;
    Ok(Output::command("DROP USER"))
}

fn check_users_exist(state: &CatalogState, users: &[String]) -> tributary_catalog::Result<()> {
    for user in users {
        if !state.users.contains_key(user) {
            return Err(tributary_catalog::Error::NotFound {
                kind: "user",
                name: user.clone(),
            });
        }
    }
    Ok(())
}

fn create_group(session: &mut Session, name: String, users: Vec<String>) -> Result<Output> {
    require_superuser(session, "CREATE GROUP")?;
    session.catalogs().modify(|state| {
        if state.groups.contains_key(&name) {
            return Err(tributary_catalog::Error::AlreadyExists {
                kind: "group",
                name: name.clone(),
            });
        }
        check_users_exist(state, &users)?;
        let oid = state.allocate_oid();
        state.groups.insert(
            name.clone(),
            Group {
                oid,
                members: users.iter().cloned().collect(),
            },
        );
        Ok(())
    })?;
    Ok(Output::command("CREATE GROUP"))
}

fn alter_group(
    session: &mut Session,
    name: String,
    add: bool,
    users: Vec<String>,
) -> Result<Output> {
    require_superuser(session, "ALTER GROUP")?;
    session.catalogs().modify(|state| {
        check_users_exist(state, &users)?;
        let group =
            state
                .groups
                .get_mut(&name)
                .ok_or_else(|| tributary_catalog::Error::NotFound {
                    kind: "group",
                    name: name.clone(),
                })?;
        for user in &users {
            if add {
                group.members.insert(user.clone());
            } else {
                group.members.remove(user);
            }
        }
        Ok(())
    })?;
    Ok(Output::command("ALTER GROUP"))
}

fn rename_group(session: &mut Session, name: String, to: String) -> Result<Output> {
    require_superuser(session, "ALTER GROUP")?;
    session.catalogs().modify(|state| {
        if state.groups.contains_key(&to) {
            return Err(tributary_catalog::Error::AlreadyExists {
                kind: "group",
                name: to.clone(),
            });
        }
        let group =
            state
                .groups
                .remove(&name)
                .ok_or_else(|| tributary_catalog::Error::NotFound {
                    kind: "group",
                    name: name.clone(),
                })?;
        state.groups.insert(to.clone(), group);
        for grants in state.grants.values_mut() {
            if let Some(privileges) = grants.remove(&Grantee::Group(name.clone())) {
                grants.insert(Grantee::Group(to.clone()), privileges);
            }
        }
        Ok(())
    })?;
    Ok(Output::command("ALTER GROUP"))
}

fn drop_groups(session: &mut Session, names: Vec<String>, if_exists: bool) -> Result<Output> {
    require_superuser(session, "DROP GROUP")?;
    let pinned = session.catalogs().pinned();
    for name in &names {
        if !pinned.groups.contains_key(name) {
            if if_exists {
                session.notice(format!("group \"{name}\" does not exist, skipping"));
                continue;
            }
            return Err(missing("group", name));
        }
    }
    session.catalogs().modify(|state| {
        for name in &names {
            if state.groups.remove(name).is_some() {
                state.revoke_all_from(&Grantee::Group(name.clone()));
            }
        }
        Ok(())
    })?;
    Ok(Output::command("DROP GROUP"))
}

/// An object privileges can be granted on: its oid, owner and kind.
struct Target {
    oid: u32,
    owner: String,
    kind: &'static str,
    describe: String,
}

/// The privileges `ALL` means, and those that may be granted, for each kind of object.
fn privileges_of(kind: &str) -> &'static [Privilege] {
    match kind {
        "relation" => &[
            Privilege::Select,
            Privilege::Insert,
            Privilege::Update,
            Privilege::Delete,
            Privilege::References,
        ],
        "schema" => &[Privilege::Usage, Privilege::Create],
        "database" => &[Privilege::Create, Privilege::Temp, Privilege::Usage],
        "procedure" => &[Privilege::Execute],
        _ => &[],
    }
}

fn grant(
    session: &mut Session,
    revoke: bool,
    privileges: Option<Vec<Privilege>>,
    object: GrantObject,
    grantees: Vec<Grantee>,
) -> Result<Output> {
    let pinned = session.catalogs().pinned();
    for grantee in &grantees {
        match grantee {
            Grantee::User(name) if !pinned.users.contains_key(name) => {
                return Err(missing("user", name));
            }
            Grantee::Group(name) if !pinned.groups.contains_key(name) => {
                return Err(missing("group", name));
            }
            _ => {}
        }
    }
    let targets = grant_targets(session, &pinned, &object)?;
    let user = session.user().to_string();
    let mut changes = Vec::new();
    for target in &targets {
        if !pinned.is_superuser(&user) && target.owner != user {
            return Err(Error::PermissionDenied(format!(
                "{}: only its owner or a superuser may grant or revoke privileges on it",
                target.describe
            )));
        }
        let allowed = privileges_of(target.kind);
        let wanted: Vec<Privilege> = match &privileges {
            // ALL on a database is CREATE and TEMP, as in Postgres; USAGE only for shares.
            None if target.kind == "database" => vec![Privilege::Create, Privilege::Temp],
            None => allowed.to_vec(),
            Some(list) => list.clone(),
        };
        if let Some(bad) = wanted.iter().find(|p| !allowed.contains(p)) {
            return Err(Error::InvalidStatement(format!(
                "invalid privilege type {} for {}",
                bad.name(),
                target.kind
            )));
        }
        changes.push((target.oid, wanted));
    }
    session.catalogs().modify(|state| {
        for (oid, wanted) in &changes {
            for grantee in &grantees {
                if revoke {
                    state.revoke(*oid, grantee, wanted);
                } else {
                    state.grant(*oid, grantee, wanted);
                }
            }
        }
        Ok(())
    })?;
    Ok(Output::command(if revoke { "REVOKE" } else { "GRANT" }))
}

impl Target {
    fn relation(name: &str, relation: &Relation) -> Self {
        Target {
            oid: relation.oid(),
            owner: CatalogState::relation_owner(relation).to_string(),
            kind: "relation",
            describe: format!("relation {name}"),
        }
    }

    fn schema(name: &str, schema: &tributary_catalog::Schema) -> Self {
        Target {
            oid: schema.oid,
            owner: schema.owner.clone(),
            kind: "schema",
            describe: format!("schema {name}"),
        }
    }

    fn procedure(procedure: &tributary_catalog::Procedure) -> Self {
        Target {
            oid: procedure.oid,
            owner: procedure.owner.clone(),
            kind: "procedure",
            describe: format!("procedure {}", procedure.name),
        }
    }
}

/// `s` (in the current database) or `db.s`: its database and name.
fn schema_name(session: &Session, name: &Name) -> Result<(String, String)> {
    match name.as_slice() {
        [schema] => Ok((session.database().to_string(), schema.clone())),
        [database, schema] => Ok((database.clone(), schema.clone())),
        _ => Err(Error::Syntax(format!(
            "improper schema name {}",
            name.join(".")
        ))),
    }
}

/// The schema a name refers to.
fn find_schema<'a>(
    session: &Session,
    state: &'a CatalogState,
    name: &Name,
) -> Result<&'a tributary_catalog::Schema> {
    let (database, schema) = schema_name(session, name)?;
    state
        .schema(&database, &schema)
        .map_err(|_| Error::UndefinedSchema(schema))
}

/// A name as written, for the resolvers that take parsed names (its parts keep their case).
fn object_name(name: &Name) -> datafusion::sql::sqlparser::ast::ObjectName {
    datafusion::sql::sqlparser::ast::ObjectName::from(
        name.iter()
            .map(|part| datafusion::sql::sqlparser::ast::Ident::with_quote('"', part))
            .collect::<Vec<_>>(),
    )
}

fn grant_targets(
    session: &Session,
    state: &CatalogState,
    object: &GrantObject,
) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    match object {
        GrantObject::Tables(names) => {
            for name in names {
                let (database, schema, relation) = relation_name(session, name)?;
                if state.database(&database).is_ok_and(|d| d.share.is_some()) {
                    return Err(Error::NotSupported(format!(
                        "\"{database}\" is a database made from a datashare: grant USAGE ON DATABASE {database} instead"
                    )));
                }
                let found = state
                    .relation(&database, &schema, &relation)
                    .ok_or_else(|| Error::UndefinedTable(format!("{schema}.{relation}")))?;
                targets.push(Target::relation(&relation, found));
            }
        }
        GrantObject::AllTablesInSchema(schemas) => {
            for name in schemas {
                for (relation_name, relation) in &find_schema(session, state, name)?.relations {
                    targets.push(Target::relation(relation_name, relation));
                }
            }
        }
        GrantObject::Schemas(names) => {
            for name in names {
                let schema = find_schema(session, state, name)?;
                targets.push(Target::schema(&name.join("."), schema));
            }
        }
        GrantObject::Databases(names) => {
            for name in names {
                let database = name.join(".");
                let found = state
                    .database(&database)
                    .map_err(|_| Error::UndefinedDatabase(database.clone()))?;
                targets.push(Target {
                    oid: found.oid,
                    owner: found.owner.clone(),
                    kind: "database",
                    describe: format!("database {database}"),
                });
            }
        }
        GrantObject::Procedures(names) => {
            for (name, types) in names {
                let (_, procedure) =
                    crate::procedure::resolve(session, &object_name(name), types.as_deref())?;
                targets.push(Target::procedure(&procedure));
            }
        }
        GrantObject::AllProceduresInSchema(schemas) => {
            for name in schemas {
                for procedure in find_schema(session, state, name)?.procedures.values() {
                    targets.push(Target::procedure(procedure));
                }
            }
        }
    }
    Ok(targets)
}

/// `[[db.]schema.]name` of an existing relation: (database, schema, name). A name in another
/// database is taken as written; others resolve as statements resolve them.
fn relation_name(session: &Session, name: &Name) -> Result<(String, String, String)> {
    match name.as_slice() {
        [database, schema, relation] if database != session.database() => {
            Ok((database.clone(), schema.clone(), relation.clone()))
        }
        _ => {
            let (schema, relation) = session.resolve_existing(&object_name(name))?;
            Ok((session.database().to_string(), schema, relation))
        }
    }
}

fn set_owner(session: &mut Session, kind: ObjectKind, name: Name, owner: String) -> Result<Output> {
    let pinned = session.catalogs().pinned();
    if !pinned.users.contains_key(&owner) {
        return Err(missing("user", &owner));
    }
    let user = session.user().to_string();
    let superuser = pinned.is_superuser(&user);
    let database = session.database().to_string();
    let tag = match kind {
        ObjectKind::Table => "ALTER TABLE",
        ObjectKind::View => "ALTER VIEW",
        ObjectKind::Schema => "ALTER SCHEMA",
        ObjectKind::Database => "ALTER DATABASE",
        ObjectKind::Procedure => "ALTER PROCEDURE",
        ObjectKind::Datashare => "ALTER DATASHARE",
    };
    let not_owner = |current: &str, what: String| -> Result<()> {
        if superuser || current == user {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{what}: must be its owner or a superuser"
            )))
        }
    };
    match kind {
        ObjectKind::Table | ObjectKind::View => {
            let (db, schema, relation) = relation_name(session, &name)?;
            let found = pinned
                .relation(&db, &schema, &relation)
                .ok_or_else(|| Error::UndefinedTable(relation.clone()))?;
            not_owner(
                CatalogState::relation_owner(found),
                format!("relation {relation}"),
            )?;
            session.catalogs().modify(|state| {
                match state.schema_mut(&db, &schema)?.relations.get_mut(&relation) {
                    Some(Relation::Table(t)) => t.owner = owner.clone(),
                    Some(Relation::View(v)) => v.owner = owner.clone(),
                    None => {}
                }
                Ok(())
            })?;
        }
        ObjectKind::Schema => {
            let (db, schema) = schema_name(session, &name)?;
            let found = find_schema(session, &pinned, &name)?;
            not_owner(&found.owner, format!("schema {schema}"))?;
            session.catalogs().modify(|state| {
                state.schema_mut(&db, &schema)?.owner = owner.clone();
                Ok(())
            })?;
        }
        ObjectKind::Database => {
            let db = name.join(".");
            let found = pinned
                .database(&db)
                .map_err(|_| Error::UndefinedDatabase(db.clone()))?;
            not_owner(&found.owner, format!("database {db}"))?;
            session.catalogs().modify(|state| {
                if let Some(found) = state.databases.get_mut(&db) {
                    found.owner = owner.clone();
                }
                Ok(())
            })?;
        }
        ObjectKind::Procedure => {
            let (schema, procedure) =
                crate::procedure::resolve(session, &object_name(&name), None)?;
            not_owner(&procedure.owner, format!("procedure {}", procedure.name))?;
            let signature = procedure.signature();
            session.catalogs().modify(|state| {
                if let Some(p) = state
                    .schema_mut(&database, &schema)?
                    .procedures
                    .get_mut(&signature)
                {
                    p.owner = owner.clone();
                }
                Ok(())
            })?;
        }
        ObjectKind::Datashare => {
            let share = name.join(".");
            let found = pinned
                .datashares
                .get(&share)
                .ok_or_else(|| missing("datashare", &share))?;
            not_owner(&found.owner, format!("datashare {share}"))?;
            session.catalogs().modify(|state| {
                if let Some(found) = state.datashares.get_mut(&share) {
                    found.owner = owner.clone();
                }
                Ok(())
            })?;
        }
    }
    Ok(Output::command(tag))
}

// ---------------------------------------------------------------------------------------
// Checks

/// What a relation reference in a statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write(Privilege),
}

/// Checks that the session's user may run `statement` (already qualified by `rewrite`):
/// USAGE on every schema it names, and SELECT, INSERT, UPDATE or DELETE on each relation.
/// Relations of a database made from a datashare are read-only.
pub(crate) fn check_statement(session: &Session, statement: &Statement) -> Result<()> {
    let state = session.catalogs().pinned();
    let user = session.user();
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
            check_relation(session, &state, user, &name, access)?;
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
    crate::session::write_target_names(statement)
        .into_iter()
        .map(|name| {
            (
                tributary_syntax::rewrite::name_parts(&name),
                privileges.clone(),
            )
        })
        .collect()
}

/// Checks one relation reference: `[db.]schema.name` after qualification.
pub(crate) fn check_relation(
    session: &Session,
    state: &CatalogState,
    user: &str,
    name: &[String],
    access: Access,
) -> Result<()> {
    let (database, schema, relation) = match name {
        [schema, relation] => (session.database().to_string(), schema, relation),
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
        && database != session.database()
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
pub(crate) fn check_create_in(session: &Session, schema: &str) -> Result<()> {
    let state = session.catalogs().pinned();
    let database = session.database();
    let db = state.database(database)?;
    if db.share.is_some() {
        return Err(read_only_share(database, Privilege::Create));
    }
    let Ok(found) = state.schema(database, schema) else {
        return Ok(());
    };
    if !state.holds(session.user(), found.oid, &found.owner, Privilege::Create) {
        return Err(Error::PermissionDenied(format!("schema {schema}")));
    }
    Ok(())
}

/// Checks that the user owns `[db.]schema.name` (or is a superuser): DROP, ALTER, REFRESH.
pub(crate) fn check_owner(session: &Session, schema: &str, name: &str) -> Result<()> {
    let state = session.catalogs().pinned();
    let Some(relation) = state.relation(session.database(), schema, name) else {
        return Ok(());
    };
    let owner = CatalogState::relation_owner(relation);
    if owner == session.user() || state.is_superuser(session.user()) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "relation {name}: must be its owner"
    )))
}

/// Checks the privileges of the statements sqlparser lacks; the access statements check their
/// own as they run.
pub(crate) fn check_ext(session: &Session, statement: &ExtStatement) -> Result<()> {
    let superuser = session.catalogs().pinned().is_superuser(session.user());
    match statement {
        ExtStatement::CreateExternalSchema { .. } if !superuser => {
            check_create_schema(session)?;
        }
        ExtStatement::CreateMirrorTable { table, .. } if !superuser => {
            let (schema, _) = session.resolve_for_create(&table.name)?;
            check_create_in(session, &schema)?;
        }
        ExtStatement::Refresh { name } | ExtStatement::AlterAutoRefresh { name, .. } => {
            if let Ok((schema, view)) = session.resolve_existing(name) {
                check_owner(session, &schema, &view)?;
            }
        }
        ExtStatement::AlterExternalSchema { .. } => {
            require_superuser(session, "ALTER EXTERNAL SCHEMA")?;
        }
        _ => {}
    }
    Ok(())
}

/// CREATE SCHEMA needs CREATE on the database.
fn check_create_schema(session: &Session) -> Result<()> {
    let state = session.catalogs().pinned();
    let user = session.user();
    let db = state.database(session.database())?;
    if !state.holds(user, db.oid, &db.owner, Privilege::Create) {
        return Err(Error::PermissionDenied(format!(
            "database {}",
            session.database()
        )));
    }
    Ok(())
}

/// Checks the privileges of statements that are not queries or DML: DDL needs CREATE on the
/// target schema or ownership of the target; CREATE SCHEMA needs CREATE on the database.
pub(crate) fn check_utility(session: &Session, statement: &Statement) -> Result<()> {
    let state = session.catalogs().pinned();
    let user = session.user();
    if state.is_superuser(user) {
        return Ok(());
    }
    match statement {
        Statement::CreateTable(create) => {
            let (schema, _) = session.resolve_for_create(&create.name)?;
            check_create_in(session, &schema)?;
            if let Some(query) = &create.query {
                check_reads(session, query)?;
            }
        }
        Statement::CreateView(create) => {
            let (schema, _) = session.resolve_for_create(&create.name)?;
            check_create_in(session, &schema)?;
            // A view's (or a streaming view's) query reads what it names: USAGE on an
            // external schema, SELECT on tables.
            check_reads(session, &create.query)?;
        }
        Statement::CreateSchema { .. } => check_create_schema(session)?,
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
                    if let Ok((schema, relation)) = session.resolve_existing(name) {
                        check_owner(session, &schema, &relation)?;
                    }
                }
            }
            ObjectType::Schema => {
                for name in names {
                    let schema = tributary_syntax::rewrite::name_parts(name)
                        .last()
                        .cloned()
                        .unwrap_or_default();
                    if let Ok(found) = state.schema(session.database(), &schema)
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
                    let database = tributary_syntax::rewrite::name_parts(name).join(".");
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
            if let Ok((schema, relation)) = session.resolve_existing(&alter.name) {
                check_owner(session, &schema, &relation)?;
            }
        }
        Statement::Truncate(truncate) => {
            for table in &truncate.table_names {
                if let Ok((schema, relation)) = session.resolve_existing(&table.name) {
                    let name = vec![schema, relation];
                    check_relation(
                        session,
                        &state,
                        user,
                        &name,
                        Access::Write(Privilege::Delete),
                    )?;
                }
            }
        }
        Statement::Copy {
            source: datafusion::sql::sqlparser::ast::CopySource::Table { table_name, .. },
            to: false,
            ..
        } => {
            if let Ok((schema, relation)) = session.resolve_existing(table_name) {
                let name = vec![schema, relation];
                check_relation(
                    session,
                    &state,
                    user,
                    &name,
                    Access::Write(Privilege::Insert),
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks the relations a CREATE ... AS query reads.
fn check_reads(session: &Session, query: &Query) -> Result<()> {
    let statement = Statement::Query(Box::new(query.clone()));
    // A query the rewrite cannot handle fails later with its own error.
    match session.rewrite(statement) {
        Ok(qualified) => check_statement(session, &qualified),
        Err(_) => Ok(()),
    }
}

/// Checks that the user may call a procedure (EXECUTE).
pub(crate) fn check_execute(session: &Session, oid: u32, owner: &str, name: &str) -> Result<()> {
    let state = session.catalogs().pinned();
    if state.holds(session.user(), oid, owner, Privilege::Execute) {
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
                    .insert(tributary_syntax::rewrite::normalize_ident(&cte.alias.name));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
        {
            self.names.push(tributary_syntax::rewrite::name_parts(name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if let Statement::Insert(insert) = statement
            && let datafusion::sql::sqlparser::ast::TableObject::TableName(name) = &insert.table
        {
            self.names.push(tributary_syntax::rewrite::name_parts(name));
        }
        ControlFlow::Continue(())
    }
}
