//! Users, groups and privileges: the statements that manage them, and the checks every
//! statement passes before it runs.
//!
//! Privileges live in the catalog by object oid (`CatalogState::grants`), so they change in
//! the same transactional commit as everything else and a GRANT never conflicts with writes
//! to the table it names. A check reads the statement's pinned catalog version: a REVOKE
//! takes effect for the next statement. Superusers and owners hold every privilege on their
//! objects; PUBLIC may use and create in each database's `public` schema, as in Redshift.

use crate::Result;
use crate::context::Context;
use crate::output::Output;
use tributary_syntax::access::AccessStatement;

pub(crate) mod check;
mod grant;
mod users;

use grant::{grant, set_owner};
use users::{
    alter_group, alter_user, create_group, create_user, drop_groups, drop_users, rename_group,
};

/// Runs a statement that manages users, groups, privileges or owners.
pub(crate) async fn execute(cx: &mut Context, statement: AccessStatement) -> Result<Output> {
    match statement {
        AccessStatement::CreateUser { name, options } => create_user(cx, name, options),
        AccessStatement::AlterUser {
            name,
            options,
            rename,
        } => alter_user(cx, name, options, rename),
        AccessStatement::DropUser { names, if_exists } => drop_users(cx, names, if_exists),
        AccessStatement::CreateGroup { name, users } => create_group(cx, name, users),
        AccessStatement::AlterGroup { name, add, users } => alter_group(cx, name, add, users),
        AccessStatement::RenameGroup { name, to } => rename_group(cx, name, to),
        AccessStatement::DropGroup { names, if_exists } => drop_groups(cx, names, if_exists),
        AccessStatement::Grant {
            revoke,
            privileges,
            object,
            grantees,
        } => grant(cx, revoke, privileges, object, grantees),
        AccessStatement::Owner { kind, name, owner } => set_owner(cx, kind, name, owner),
        other => crate::sharing::execute(cx, other).await,
    }
}
