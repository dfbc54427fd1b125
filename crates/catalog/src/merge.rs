//! Three-way merge of catalog states: how a transaction's changes land on a catalog that other
//! transactions changed after its snapshot.
//!
//! The catalog is compared object by object (user, database, schema, relation). An object the
//! transaction changed must be unchanged in the latest state, or the transaction conflicts
//! (first committer wins). Objects only others changed keep their latest form.

use std::collections::BTreeMap;

use std::collections::BTreeSet;

use crate::model::{
    CatalogState, Database, Datashare, Grantee, Group, Privilege, Procedure, Relation, Schema,
    SharedDatabase, User,
};
use crate::{Error, Result};

/// One catalog object, named by its place in the hierarchy. The order puts parents first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    User(String),
    Group(String),
    Database(String),
    Schema(String, String),
    Relation(String, String, String),
    /// A stored procedure, by database, schema and signature.
    Procedure(String, String, String),
    /// The privileges of one grantee on one object (by oid).
    Grant(u32, Grantee),
    Datashare(String),
}

impl Key {
    fn describe(&self) -> String {
        match self {
            Key::User(name) => format!("user \"{name}\""),
            Key::Group(name) => format!("group \"{name}\""),
            Key::Grant(oid, grantee) => {
                format!("the privileges of {} on object {oid}", grantee.describe())
            }
            Key::Datashare(name) => format!("datashare \"{name}\""),
            Key::Database(name) => format!("database \"{name}\""),
            Key::Schema(_, name) => format!("schema \"{name}\""),
            Key::Relation(_, schema, name) => format!("relation \"{schema}.{name}\""),
            Key::Procedure(_, schema, signature) => {
                format!("procedure {schema}.{signature}")
            }
        }
    }
}

/// An object without its children.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    User(User),
    Group(Group),
    Database {
        oid: u32,
        owner: String,
        share: Option<SharedDatabase>,
    },
    Schema {
        oid: u32,
        owner: String,
        external: Option<crate::model::ExternalSource>,
    },
    Relation(Relation),
    Procedure(Procedure),
    Grant(BTreeSet<Privilege>),
    Datashare(Datashare),
}

fn flatten(state: &CatalogState) -> BTreeMap<Key, Entry> {
    let mut entries = BTreeMap::new();
    for (name, user) in &state.users {
        entries.insert(Key::User(name.clone()), Entry::User(user.clone()));
    }
    for (name, group) in &state.groups {
        entries.insert(Key::Group(name.clone()), Entry::Group(group.clone()));
    }
    for (oid, grants) in &state.grants {
        for (grantee, privileges) in grants {
            entries.insert(
                Key::Grant(*oid, grantee.clone()),
                Entry::Grant(privileges.clone()),
            );
        }
    }
    for (name, share) in &state.datashares {
        entries.insert(
            Key::Datashare(name.clone()),
            Entry::Datashare(share.clone()),
        );
    }
    for (db_name, db) in &state.databases {
        entries.insert(
            Key::Database(db_name.clone()),
            Entry::Database {
                oid: db.oid,
                owner: db.owner.clone(),
                share: db.share.clone(),
            },
        );
        for (schema_name, schema) in &db.schemas {
            entries.insert(
                Key::Schema(db_name.clone(), schema_name.clone()),
                Entry::Schema {
                    oid: schema.oid,
                    owner: schema.owner.clone(),
                    external: schema.external.clone(),
                },
            );
            for (name, relation) in &schema.relations {
                entries.insert(
                    Key::Relation(db_name.clone(), schema_name.clone(), name.clone()),
                    Entry::Relation(relation.clone()),
                );
            }
            for (signature, procedure) in &schema.procedures {
                entries.insert(
                    Key::Procedure(db_name.clone(), schema_name.clone(), signature.clone()),
                    Entry::Procedure(procedure.clone()),
                );
            }
        }
    }
    entries
}

/// Rebuilds the nested state; an object whose parent is gone is a conflict.
fn unflatten(template: &CatalogState, entries: BTreeMap<Key, Entry>) -> Result<CatalogState> {
    let mut state = CatalogState {
        version: template.version,
        namespace: template.namespace,
        next_oid: template.next_oid,
        users: BTreeMap::new(),
        groups: BTreeMap::new(),
        databases: BTreeMap::new(),
        grants: BTreeMap::new(),
        datashares: BTreeMap::new(),
    };
    let orphan = |key: &Key| {
        Error::ConcurrentChange(format!(
            "{} was created in a schema or database that another transaction dropped",
            key.describe()
        ))
    };
    for (key, entry) in entries {
        match (key, entry) {
            (Key::User(name), Entry::User(user)) => {
                state.users.insert(name, user);
            }
            (Key::Group(name), Entry::Group(group)) => {
                state.groups.insert(name, group);
            }
            (Key::Grant(oid, grantee), Entry::Grant(privileges)) => {
                state
                    .grants
                    .entry(oid)
                    .or_default()
                    .insert(grantee, privileges);
            }
            (Key::Datashare(name), Entry::Datashare(share)) => {
                state.datashares.insert(name, share);
            }
            (Key::Database(name), Entry::Database { oid, owner, share }) => {
                state.databases.insert(
                    name,
                    Database {
                        oid,
                        owner,
                        schemas: BTreeMap::new(),
                        share,
                    },
                );
            }
            (
                key @ Key::Schema(..),
                Entry::Schema {
                    oid,
                    owner,
                    external,
                },
            ) => {
                let Key::Schema(db, name) = &key else {
                    unreachable!()
                };
                let database = state.databases.get_mut(db).ok_or_else(|| orphan(&key))?;
                database.schemas.insert(
                    name.clone(),
                    Schema {
                        oid,
                        owner,
                        relations: BTreeMap::new(),
                        external,
                        procedures: BTreeMap::new(),
                    },
                );
            }
            (Key::Relation(db, schema, name), Entry::Relation(relation)) => {
                parent_schema(&mut state, &db, &schema)
                    .ok_or_else(|| {
                        orphan(&Key::Relation(db.clone(), schema.clone(), name.clone()))
                    })?
                    .relations
                    .insert(name, relation);
            }
            (Key::Procedure(db, schema, signature), Entry::Procedure(procedure)) => {
                parent_schema(&mut state, &db, &schema)
                    .ok_or_else(|| {
                        orphan(&Key::Procedure(
                            db.clone(),
                            schema.clone(),
                            signature.clone(),
                        ))
                    })?
                    .procedures
                    .insert(signature, procedure);
            }
            (key, _) => {
                return Err(Error::Invalid(format!(
                    "catalog entry {} has the wrong kind",
                    key.describe()
                )));
            }
        }
    }
    Ok(state)
}

/// The schema an object is rebuilt into, if it survived the merge.
fn parent_schema<'a>(
    state: &'a mut CatalogState,
    database: &str,
    schema: &str,
) -> Option<&'a mut Schema> {
    state.databases.get_mut(database)?.schemas.get_mut(schema)
}

impl CatalogState {
    /// Applies the changes that turned `base` into `ours` on top of `self` (the latest state).
    /// Fails with [`Error::ConcurrentChange`] if another transaction changed an object that
    /// this one changed too.
    pub fn merge(&self, base: &CatalogState, ours: &CatalogState) -> Result<CatalogState> {
        let base_entries = flatten(base);
        let our_entries = flatten(ours);
        let mut merged = flatten(self);
        let keys: std::collections::BTreeSet<&Key> =
            base_entries.keys().chain(our_entries.keys()).collect();
        for key in keys {
            let before = base_entries.get(key);
            let after = our_entries.get(key);
            if before == after {
                continue;
            }
            if merged.get(key) != before {
                return Err(Error::ConcurrentChange(format!(
                    "{} was changed by a concurrent transaction",
                    key.describe()
                )));
            }
            match after {
                Some(entry) => merged.insert(key.clone(), entry.clone()),
                None => merged.remove(key),
            };
        }
        let mut state = unflatten(self, merged)?;
        state.next_oid = self.next_oid.max(ours.next_oid);
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Table, View};

    fn view(oid: u32, sql: &str) -> Relation {
        Relation::View(View {
            oid,
            owner: "admin".into(),
            sql: sql.into(),
            column_names: vec![],
        })
    }

    fn table(oid: u32, version: u64) -> Relation {
        Relation::Table(Table {
            oid,
            owner: "admin".into(),
            path: format!("dev/public/t{oid}"),
            version,
            columns: vec![],
            constraints: vec![],
            distribution: Default::default(),
            backup: true,
            materialized: None,
        })
    }

    #[test]
    fn disjoint_changes_both_land() {
        let base = CatalogState::bootstrap(None);
        let mut theirs = base.clone();
        theirs
            .insert_relation("dev", "public", "a", table(1, 0))
            .unwrap();
        let mut ours = base.clone();
        ours.create_schema("dev", "s", "admin").unwrap();
        ours.insert_relation("dev", "s", "b", view(2, "select 1"))
            .unwrap();

        let merged = theirs.merge(&base, &ours).unwrap();
        assert!(merged.relation("dev", "public", "a").is_some());
        assert!(merged.relation("dev", "s", "b").is_some());
        assert_eq!(merged.next_oid, ours.next_oid.max(theirs.next_oid));
    }

    #[test]
    fn the_same_object_changed_twice_conflicts() {
        let mut base = CatalogState::bootstrap(None);
        base.insert_relation("dev", "public", "t", table(1, 0))
            .unwrap();
        let mut theirs = base.clone();
        theirs.table_mut("dev", "public", "t").unwrap().version = 1;
        let mut ours = base.clone();
        ours.table_mut("dev", "public", "t").unwrap().version = 2;
        let err = theirs.merge(&base, &ours).unwrap_err();
        assert!(matches!(err, Error::ConcurrentChange(_)), "{err}");
        // Both creating the same name conflicts too.
        let mut theirs = base.clone();
        theirs
            .insert_relation("dev", "public", "n", view(5, "select 1"))
            .unwrap();
        let mut ours = base.clone();
        ours.insert_relation("dev", "public", "n", view(6, "select 2"))
            .unwrap();
        assert!(theirs.merge(&base, &ours).is_err());
    }

    #[test]
    fn creating_in_a_schema_another_transaction_dropped_conflicts() {
        let mut base = CatalogState::bootstrap(None);
        base.create_schema("dev", "s", "admin").unwrap();
        let mut theirs = base.clone();
        theirs.databases.get_mut("dev").unwrap().schemas.remove("s");
        let mut ours = base.clone();
        ours.insert_relation("dev", "s", "t", table(3, 0)).unwrap();
        let err = theirs.merge(&base, &ours).unwrap_err();
        assert!(err.to_string().contains("dropped"), "{err}");
    }

    #[test]
    fn an_unchanged_transaction_merges_to_the_latest_state() {
        let base = CatalogState::bootstrap(None);
        let mut theirs = base.clone();
        theirs.create_schema("dev", "x", "admin").unwrap();
        let merged = theirs.merge(&base, &base).unwrap();
        assert_eq!(merged, theirs);
    }
}
