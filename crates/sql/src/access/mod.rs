//! Users, groups and privileges: the statements that manage them, and the checks every
//! statement passes before it runs.
//!
//! Privileges live in the catalog by object oid (`CatalogState::grants`), so they change in
//! the same transactional commit as everything else and a GRANT never conflicts with writes
//! to the table it names. A check reads the statement's pinned catalog version: a REVOKE
//! takes effect for the next statement. Superusers and owners hold every privilege on their
//! objects; PUBLIC may use and create in each database's `public` schema, as in Redshift.

use tributary_catalog::StoredPassword;

use crate::session::{Output, Session};
use crate::{Error, Result};
use tributary_syntax::access::AccessStatement;

mod check;
mod grant;
mod users;

pub(crate) use check::{check_create_in, check_execute, check_ext, check_statement, check_utility};
use grant::{grant, set_owner};
use users::{
    alter_group, alter_user, create_group, create_user, drop_groups, drop_users, rename_group,
};

/// Computes the stored verifiers of a password (installed by the wire crate, which owns the
/// authentication methods).
pub(crate) type PasswordHasher = fn(user: &str, password: &str) -> StoredPassword;

/// Runs a statement that manages users, groups, privileges or owners.
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
