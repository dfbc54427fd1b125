//! Transactions over the catalog and per-table Delta logs.
//!
//! A transaction works on a private copy of the catalog state taken from the catalog version
//! current at its first statement (its snapshot). DDL edits that copy; table writes take the
//! table's write lock, commit new Delta versions, and pin them in the copy. Nothing is visible
//! to other sessions until COMMIT merges the copy into the latest catalog and writes it as the
//! next catalog version with put-if-absent: that single write makes every change of the
//! transaction, across any number of tables, visible at once.
//!
//! Conflicts follow first-committer-wins per object: a transaction fails with 40001 if a table
//! it updates, deletes from or alters was changed by a transaction that committed after its
//! snapshot, or if a catalog object it changed was changed concurrently. Appends (INSERT,
//! COPY) commute: an append to a table another transaction appended to since the snapshot
//! lands on top of the newer version.
//!
//! ROLLBACK (and a failed COMMIT, an error in an autocommit statement, a disconnect) restores
//! each written table to its committed content and deletes tables the transaction created. A
//! crash leaves Delta versions newer than the catalog's pins; start-up recovery restores them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tributary_catalog::{CatalogState, Relation, Table};

use crate::locks::TableLocks;
use crate::store::{ActiveTransactions, Store, table_by_path_mut};

/// How a statement changes a table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Only adds rows (INSERT, COPY): commutes with other appends.
    Append,
    /// Replaces or removes rows, or changes columns (UPDATE, DELETE, MERGE, TRUNCATE, ALTER).
    Rewrite,
}

/// A table locked for writing by the current transaction.
#[derive(Debug, Clone)]
pub struct WriteSlot {
    /// The table's definition in the transaction's working state.
    pub table: Table,
}

/// One open transaction of a session.
#[derive(Debug)]
pub struct Transaction {
    pub(crate) id: u64,
    /// Opened by BEGIN, rather than around one autocommit statement.
    pub explicit: bool,
    /// A statement failed: everything up to the end of the block is refused.
    pub aborted: bool,
    /// The snapshot, adjusted for tables whose appends were rebased on a newer version.
    pub(crate) base: Arc<CatalogState>,
    /// The snapshot with this transaction's changes.
    pub(crate) working: Arc<CatalogState>,
    /// Table path -> the committed version when this transaction locked it (what ROLLBACK
    /// restores); None for tables this transaction created.
    pub(crate) locked: BTreeMap<String, Option<u64>>,
    /// Tables whose Delta log this transaction advanced.
    pub(crate) written: BTreeSet<String>,
    /// Tables this transaction created: deleted on rollback.
    pub(crate) created: BTreeSet<String>,
    /// Tables this transaction dropped: deleted after commit.
    pub(crate) dropped: Vec<String>,
    pub(crate) locks: Arc<TableLocks>,
    pub(crate) active: Arc<ActiveTransactions>,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // Normally released by commit or rollback already; this covers a session dropped in
        // the middle of a statement.
        self.locks.release_all(self.id);
        self.active.end(self.id);
    }
}

impl Transaction {
    pub(crate) fn new(store: &Store, explicit: bool) -> Self {
        let snapshot = store.catalog_snapshot();
        let id = store.next_transaction_id();
        store.active.start(id);
        Self {
            id,
            explicit,
            aborted: false,
            base: snapshot.clone(),
            working: snapshot,
            locked: BTreeMap::new(),
            written: BTreeSet::new(),
            created: BTreeSet::new(),
            dropped: Vec::new(),
            locks: store.locks.clone(),
            active: store.active.clone(),
        }
    }

    pub(crate) fn is_read_only(&self) -> bool {
        Arc::ptr_eq(&self.base, &self.working) && self.written.is_empty() && self.created.is_empty()
    }
}

/// What COMMIT did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Committed,
    /// The transaction had failed, so COMMIT rolled it back.
    RolledBack,
}

/// Deletes a table's files that no catalog version names any more; a failure only leaves
/// garbage behind, so it is logged.
pub async fn delete_files(store: &Store, path: &str, what: &str) {
    let result = match store.storage.table(path) {
        Ok(table) => table.delete().await,
        Err(err) => Err(err),
    };
    if let Err(err) = result {
        tracing::warn!(%err, %path, "could not delete the files of a {what} table");
    }
}

fn tables(state: &CatalogState) -> impl Iterator<Item = &Table> {
    state
        .databases
        .values()
        .flat_map(|db| db.schemas.values())
        .flat_map(|schema| schema.relations.values())
        .filter_map(|relation| match relation {
            Relation::Table(table) => Some(table),
            Relation::View(_) => None,
        })
}

pub(crate) fn table_by_path<'a>(state: &'a CatalogState, path: &str) -> Option<&'a Table> {
    tables(state).find(|t| t.path == path)
}

pub(crate) fn replace_by_path(state: &mut CatalogState, table: &Table) {
    if let Some(target) = table_by_path_mut(state, &table.path) {
        *target = table.clone();
    }
}
