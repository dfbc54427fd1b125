//! CREATE / ALTER / DROP USER and GROUP.

use tributary_catalog::{CatalogState, Grantee, Group, Relation, StoredPassword, User};
use tributary_syntax::access::UserOptions;

use super::check::require_superuser;
use crate::context::Context;
use crate::output::Output;
use crate::{Error, Result};

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

fn verifiers(cx: &Context, user: &str, password: &str) -> Result<StoredPassword> {
    check_password(password)?;
    let hasher = cx.engine().password_hasher().ok_or_else(|| {
        Error::NotSupported("passwords can be set only through a server connection".into())
    })?;
    Ok(hasher(user, password))
}

pub(super) fn missing(kind: &'static str, name: &str) -> Error {
    Error::UndefinedObject(format!("{kind} \"{name}\" does not exist"))
}

pub(super) fn create_user(cx: &mut Context, name: String, options: UserOptions) -> Result<Output> {
    require_superuser(cx, "CREATE USER")?;
    let password = match &options.password {
        Some(Some(password)) => Some(verifiers(cx, &name, password)?),
        _ => None,
    };
    warn_ignored(cx, &options);
    cx.catalogs().modify(|state| {
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

fn warn_ignored(cx: &mut Context, options: &UserOptions) {
    for option in &options.ignored {
        cx.notice(format!("{option} is accepted and not enforced"));
    }
}

pub(super) fn alter_user(
    cx: &mut Context,
    name: String,
    options: UserOptions,
    rename: Option<String>,
) -> Result<Output> {
    let own_password_only = name == cx.user()
        && options.superuser.is_none()
        && options.create_database.is_none()
        && rename.is_none();
    if !own_password_only {
        require_superuser(cx, "ALTER USER")?;
    }
    if rename.is_some() && name == cx.user() {
        return Err(Error::InvalidStatement(
            "the session user cannot be renamed".into(),
        ));
    }
    let password = match &options.password {
        Some(Some(password)) => Some(Some(verifiers(
            cx,
            rename.as_deref().unwrap_or(&name),
            password,
        )?)),
        Some(None) => Some(None),
        None => None,
    };
    warn_ignored(cx, &options);
    cx.catalogs().modify(|state| {
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

pub(super) fn drop_users(cx: &mut Context, names: Vec<String>, if_exists: bool) -> Result<Output> {
    require_superuser(cx, "DROP USER")?;
    let pinned = cx.catalogs().pinned();
    for name in &names {
        if name == cx.user() {
            return Err(Error::InvalidStatement(
                "the session user cannot be dropped".into(),
            ));
        }
        if !pinned.users.contains_key(name) {
            if if_exists {
                cx.notice(format!("user \"{name}\" does not exist, skipping"));
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
    cx.catalogs().modify(|state| {
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

pub(super) fn create_group(cx: &mut Context, name: String, users: Vec<String>) -> Result<Output> {
    require_superuser(cx, "CREATE GROUP")?;
    cx.catalogs().modify(|state| {
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

pub(super) fn alter_group(
    cx: &mut Context,
    name: String,
    add: bool,
    users: Vec<String>,
) -> Result<Output> {
    require_superuser(cx, "ALTER GROUP")?;
    cx.catalogs().modify(|state| {
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

pub(super) fn rename_group(cx: &mut Context, name: String, to: String) -> Result<Output> {
    require_superuser(cx, "ALTER GROUP")?;
    cx.catalogs().modify(|state| {
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

pub(super) fn drop_groups(cx: &mut Context, names: Vec<String>, if_exists: bool) -> Result<Output> {
    require_superuser(cx, "DROP GROUP")?;
    let pinned = cx.catalogs().pinned();
    for name in &names {
        if !pinned.groups.contains_key(name) {
            if if_exists {
                cx.notice(format!("group \"{name}\" does not exist, skipping"));
                continue;
            }
            return Err(missing("group", name));
        }
    }
    cx.catalogs().modify(|state| {
        for name in &names {
            if state.groups.remove(name).is_some() {
                state.revoke_all_from(&Grantee::Group(name.clone()));
            }
        }
        Ok(())
    })?;
    Ok(Output::command("DROP GROUP"))
}
