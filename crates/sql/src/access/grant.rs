//! GRANT, REVOKE and ALTER ... OWNER TO: privileges by object oid in the catalog.

use tributary_catalog::{CatalogState, Grantee, Privilege, Relation};
use tributary_syntax::access::{GrantObject, Name, ObjectKind};

use super::users::missing;
use crate::context::Context;
use crate::output::Output;
use crate::{Error, Result};

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

pub(super) fn grant(
    cx: &mut Context,
    revoke: bool,
    privileges: Option<Vec<Privilege>>,
    object: GrantObject,
    grantees: Vec<Grantee>,
) -> Result<Output> {
    let pinned = cx.catalogs().pinned();
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
    let targets = grant_targets(cx, &pinned, &object)?;
    let user = cx.user().to_string();
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
    cx.catalogs().modify(|state| {
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
fn schema_name(cx: &Context, name: &Name) -> Result<(String, String)> {
    match name.as_slice() {
        [schema] => Ok((cx.database().to_string(), schema.clone())),
        [database, schema] => Ok((database.clone(), schema.clone())),
        _ => Err(Error::Syntax(format!(
            "improper schema name {}",
            name.join(".")
        ))),
    }
}

/// The schema a name refers to.
fn find_schema<'a>(
    cx: &Context,
    state: &'a CatalogState,
    name: &Name,
) -> Result<&'a tributary_catalog::Schema> {
    let (database, schema) = schema_name(cx, name)?;
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

fn grant_targets(cx: &Context, state: &CatalogState, object: &GrantObject) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    match object {
        GrantObject::Tables(names) => {
            for name in names {
                let (database, schema, relation) = relation_name(cx, name)?;
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
                for (relation_name, relation) in &find_schema(cx, state, name)?.relations {
                    targets.push(Target::relation(relation_name, relation));
                }
            }
        }
        GrantObject::Schemas(names) => {
            for name in names {
                let schema = find_schema(cx, state, name)?;
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
                    crate::procedure::resolve(cx, &object_name(name), types.as_deref())?;
                targets.push(Target::procedure(&procedure));
            }
        }
        GrantObject::AllProceduresInSchema(schemas) => {
            for name in schemas {
                for procedure in find_schema(cx, state, name)?.procedures.values() {
                    targets.push(Target::procedure(procedure));
                }
            }
        }
    }
    Ok(targets)
}

/// `[[db.]schema.]name` of an existing relation: (database, schema, name). A name in another
/// database is taken as written; others resolve as statements resolve them.
fn relation_name(cx: &Context, name: &Name) -> Result<(String, String, String)> {
    match name.as_slice() {
        [database, schema, relation] if database != cx.database() => {
            Ok((database.clone(), schema.clone(), relation.clone()))
        }
        _ => {
            let (schema, relation) = cx.resolve_existing(&object_name(name))?;
            Ok((cx.database().to_string(), schema, relation))
        }
    }
}

pub(super) fn set_owner(
    cx: &mut Context,
    kind: ObjectKind,
    name: Name,
    owner: String,
) -> Result<Output> {
    let pinned = cx.catalogs().pinned();
    if !pinned.users.contains_key(&owner) {
        return Err(missing("user", &owner));
    }
    let user = cx.user().to_string();
    let superuser = pinned.is_superuser(&user);
    let database = cx.database().to_string();
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
            let (db, schema, relation) = relation_name(cx, &name)?;
            let found = pinned
                .relation(&db, &schema, &relation)
                .ok_or_else(|| Error::UndefinedTable(relation.clone()))?;
            not_owner(
                CatalogState::relation_owner(found),
                format!("relation {relation}"),
            )?;
            cx.catalogs().modify(|state| {
                match state.schema_mut(&db, &schema)?.relations.get_mut(&relation) {
                    Some(Relation::Table(t)) => t.owner = owner.clone(),
                    Some(Relation::View(v)) => v.owner = owner.clone(),
                    None => {}
                }
                Ok(())
            })?;
        }
        ObjectKind::Schema => {
            let (db, schema) = schema_name(cx, &name)?;
            let found = find_schema(cx, &pinned, &name)?;
            not_owner(&found.owner, format!("schema {schema}"))?;
            cx.catalogs().modify(|state| {
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
            cx.catalogs().modify(|state| {
                if let Some(found) = state.databases.get_mut(&db) {
                    found.owner = owner.clone();
                }
                Ok(())
            })?;
        }
        ObjectKind::Procedure => {
            let (schema, procedure) = crate::procedure::resolve(cx, &object_name(&name), None)?;
            not_owner(&procedure.owner, format!("procedure {}", procedure.name))?;
            let signature = procedure.signature();
            cx.catalogs().modify(|state| {
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
            cx.catalogs().modify(|state| {
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
