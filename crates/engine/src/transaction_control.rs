//! Transaction control of a session's catalogs: BEGIN, COMMIT and ROLLBACK, table write locks
//! and the serializability check of a write, and catalog changes in the open transaction.
//! The model is described in [`crate::transaction`].

use std::sync::Arc;

use tributary_catalog::CatalogState;

use crate::catalog_list::SessionCatalogs;
use crate::store::{pin_by_path_mut, table_by_path_mut};
use crate::transaction::{
    Ended, Transaction, WriteKind, WriteSlot, delete_files, replace_by_path, table_by_path,
};
use crate::{Error, Result};

impl SessionCatalogs {
    /// Opens a transaction if none is open. Returns true if this call opened it.
    pub fn begin(&self, explicit: bool) -> bool {
        let mut slot = self.transaction_slot();
        if slot.is_some() {
            return false;
        }
        let txn = Transaction::new(self.store(), explicit);
        self.set_pinned(txn.working.clone());
        self.unpin_producers();
        *slot = Some(txn);
        true
    }

    pub fn in_explicit_transaction(&self) -> bool {
        self.transaction_slot().as_ref().is_some_and(|t| t.explicit)
    }

    pub fn in_failed_transaction(&self) -> bool {
        self.transaction_slot().as_ref().is_some_and(|t| t.aborted)
    }

    pub fn mark_failed(&self) {
        if let Some(txn) = self.transaction_slot().as_mut() {
            txn.aborted = true;
        }
    }

    /// Retakes the snapshot of a transaction that has read and written nothing yet (an
    /// autocommit statement that just waited for its target table's lock).
    pub fn refresh_snapshot(&self) {
        let mut slot = self.transaction_slot();
        if let Some(txn) = slot.as_mut()
            && txn.is_read_only()
        {
            let latest = self.store().catalog_snapshot();
            txn.base = latest.clone();
            txn.working = latest.clone();
            self.set_pinned(latest);
        }
    }

    /// Runs `work` in a transaction of its own that first takes the write lock of one table
    /// (and the snapshot after it), then commits, or rolls back if `work` fails: the shape of
    /// background writers (auto refresh rounds, mirror folds). `work` starts only once the
    /// lock is held.
    pub async fn locked_transaction<T>(
        &self,
        [database, schema, name]: [&str; 3],
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.begin(false);
        let result = async {
            self.prelock(database, schema, name).await?;
            work.await
        }
        .await;
        match result {
            Ok(value) => {
                self.commit().await?;
                Ok(value)
            }
            Err(err) => {
                self.rollback().await;
                Err(err)
            }
        }
    }

    /// Takes the write lock of a table before the autocommit statement that writes it reads
    /// anything, then retakes the snapshot: the statement sees what the lock's previous holder
    /// committed.
    pub async fn prelock(&self, database: &str, schema: &str, name: &str) -> Result<()> {
        let (id, path) = {
            let slot = self.transaction_slot();
            let Some(txn) = slot.as_ref() else {
                return Ok(());
            };
            match txn.working.table(database, schema, name) {
                Ok(table) => (txn.id, table.path.clone()),
                // Not a table (a view, or missing): the statement reports it.
                Err(_) => return Ok(()),
            }
        };
        self.store().locks.acquire(id, &path, name).await?;
        self.refresh_snapshot();
        Ok(())
    }

    /// Points the next statement at the transaction's working state.
    pub fn pin_statement(&self) {
        let working = self.transaction_slot().as_ref().map(|t| t.working.clone());
        match working {
            Some(working) => self.set_pinned(working),
            None => {
                self.pin_latest();
            }
        }
    }

    /// Applies a catalog change to the transaction's working state. Object identifiers come
    /// from the store, so that concurrent transactions never hand out the same one.
    pub fn modify<T>(
        &self,
        change: impl FnOnce(&mut CatalogState) -> tributary_catalog::Result<T>,
    ) -> tributary_catalog::Result<T> {
        let mut slot = self.transaction_slot();
        let txn = slot.as_mut().ok_or_else(|| {
            tributary_catalog::Error::Invalid("no transaction is open for a catalog change".into())
        })?;
        let mut working = (*txn.working).clone();
        let output = self.store().with_oids(|next_oid| {
            working.next_oid = working.next_oid.max(*next_oid);
            let output = change(&mut working);
            *next_oid = (*next_oid).max(working.next_oid);
            output
        })?;
        txn.working = Arc::new(working);
        self.set_pinned(txn.working.clone());
        Ok(output)
    }

    /// Remembers a table this transaction created (its files go if the transaction does not
    /// commit).
    pub fn record_created(&self, path: &str) {
        if let Some(txn) = self.transaction_slot().as_mut() {
            txn.created.insert(path.to_string());
            txn.locked.insert(path.to_string(), None);
        }
    }

    /// Remembers a table this transaction dropped (its files go once the drop commits).
    pub fn record_dropped(&self, path: &str) {
        if let Some(txn) = self.transaction_slot().as_mut() {
            txn.dropped.push(path.to_string());
        }
    }

    /// Remembers that this transaction committed a Delta version of `path`.
    pub fn record_written(&self, path: &str) {
        if let Some(txn) = self.transaction_slot().as_mut() {
            txn.written.insert(path.to_string());
        }
    }

    /// Takes the write lock of a table for the current transaction (waiting for another
    /// writer to finish) and checks that writing it on top of the snapshot is serializable.
    pub async fn lock_table(
        &self,
        database: &str,
        schema: &str,
        name: &str,
        kind: WriteKind,
    ) -> Result<WriteSlot> {
        let (id, table) = {
            let slot = self.transaction_slot();
            let txn = slot
                .as_ref()
                .ok_or_else(|| Error::Internal("a table write outside a transaction".into()))?;
            (txn.id, txn.working.table(database, schema, name)?.clone())
        };
        self.store().locks.acquire(id, &table.path, name).await?;
        let already_locked = self
            .transaction_slot()
            .as_ref()
            .is_some_and(|t| t.locked.contains_key(&table.path));
        if already_locked {
            return Ok(WriteSlot { table });
        }
        // First write of this table in this transaction: compare the snapshot with what is
        // committed now, holding the lock, so nobody commits the table under us.
        let latest = self.store().catalog_snapshot();
        let Some(committed) = table_by_path(&latest, &table.path).cloned() else {
            return Err(Error::SerializationFailure(format!(
                "could not serialize access: table \"{name}\" was dropped by a concurrent transaction"
            )));
        };
        let storage = self.store().storage.table(&table.path)?;
        // Delta commits after the committed pin belong to a transaction that never committed
        // (a crash, or a rollback whose restore failed): undo them before writing on top.
        let clean_version = if storage.has_commits_after(committed.version).await? {
            tracing::warn!(table = %name, pinned = committed.version, "undoing table commits that never became visible");
            Some(storage.restore(committed.version).await?)
        } else {
            None
        };
        // The same for a mirror's key table, which commits with it.
        let mut keys_clean = None;
        if let Some(keys) = committed.key_table() {
            let storage = self.store().storage.table(&keys.path)?;
            if storage.has_commits_after(keys.version).await? {
                tracing::warn!(table = %name, pinned = keys.version, "undoing key table commits that never became visible");
                keys_clean = Some((keys.path.clone(), storage.restore(keys.version).await?));
            }
        }
        let mut slot = self.transaction_slot();
        let txn = slot
            .as_mut()
            .ok_or_else(|| Error::Internal("the transaction ended during a write".into()))?;
        // Versions with the same rows (a compaction, a rollback's restore) are not changes.
        let snapshot_version = table_by_path(&txn.base, &table.path)
            .map(|t| self.store().newest_equivalent(&table.path, t.version));
        let unchanged = table_by_path(&txn.base, &table.path) == Some(&table);
        let mut table = table;
        let stale = snapshot_version != Some(committed.version);
        if stale && (kind != WriteKind::Append || !unchanged) {
            return Err(Error::SerializationFailure(format!(
                "could not serialize access due to concurrent update of table \"{name}\"; retry the transaction"
            )));
        }
        // Maintenance moves a mirror's key table to versions with the same keys too (a table
        // property), without a new version of the mirror itself.
        let keys_moved = match (table.key_table(), committed.key_table()) {
            (Some(mine), Some(theirs)) => {
                mine.path == theirs.path
                    && mine.version != theirs.version
                    && self.store().newest_equivalent(&mine.path, mine.version) == theirs.version
            }
            _ => false,
        };
        if unchanged && (table.version != committed.version || keys_moved) {
            // The committed version has the snapshot's rows (a compaction, a restore), or the
            // write is an append, which commutes with the appends committed since the
            // snapshot: write on top of it, and make the snapshot expect it at commit.
            let mut base = (*txn.base).clone();
            replace_by_path(&mut base, &committed);
            txn.base = Arc::new(base);
            let mut working = (*txn.working).clone();
            replace_by_path(&mut working, &committed);
            txn.working = Arc::new(working);
            table = committed.clone();
        }
        if let Some(version) = clean_version {
            let mut working = (*txn.working).clone();
            if let Some(t) = table_by_path_mut(&mut working, &table.path) {
                t.version = version;
            }
            txn.working = Arc::new(working);
            table.version = version;
        }
        if let Some((path, version)) = &keys_clean {
            let mut working = (*txn.working).clone();
            if let Some(pin) = pin_by_path_mut(&mut working, path) {
                *pin = *version;
            }
            txn.working = Arc::new(working);
            if let Some(pin) = table.pin_mut(path) {
                *pin = *version;
            }
        }
        txn.locked
            .insert(table.path.clone(), Some(committed.version));
        if let Some(keys) = committed.key_table() {
            txn.locked.insert(keys.path.clone(), Some(keys.version));
        }
        self.set_pinned(txn.working.clone());
        Ok(WriteSlot { table })
    }

    /// Ends the transaction by committing it. On a conflict nothing of it stays behind.
    pub async fn commit(&self) -> Result<Ended> {
        let Some(txn) = self.transaction_slot().take() else {
            return Ok(Ended::Committed);
        };
        if txn.aborted {
            self.finish_rollback(txn).await;
            return Ok(Ended::RolledBack);
        }
        if txn.is_read_only() || *txn.base == *txn.working && txn.written.is_empty() {
            self.end(txn);
            return Ok(Ended::Committed);
        }
        let (base, working) = (txn.base.clone(), txn.working.clone());
        let started = std::time::Instant::now();
        let result = self
            .store()
            .catalog
            .commit(|latest| {
                *latest = latest.merge(&base, &working)?;
                Ok(())
            })
            .await;
        self.extensions().observe_commit(started.elapsed());
        match result {
            Ok(_) => {
                // The catalog no longer names these files, but transactions that started
                // before the drop (here, or consumers in other namespaces reading through a
                // datashare) may still read them: maintenance deletes them after the vacuum
                // retention.
                self.store().retire_tables(&txn.dropped);
                self.end(txn);
                Ok(Ended::Committed)
            }
            Err(err) => {
                self.finish_rollback(txn).await;
                Err(err.into())
            }
        }
    }

    /// Ends the transaction by undoing it.
    pub async fn rollback(&self) {
        let txn = self.transaction_slot().take();
        if let Some(txn) = txn {
            self.finish_rollback(txn).await;
        }
    }

    async fn finish_rollback(&self, txn: Transaction) {
        let store = self.store().clone();
        let mut repins = Vec::new();
        for path in &txn.written {
            let Some(Some(committed)) = txn.locked.get(path) else {
                continue;
            };
            let restored = match store.storage.table(path) {
                Ok(table) => table.restore(*committed).await,
                Err(err) => Err(err),
            };
            match restored {
                Ok(version) => {
                    store.record_equivalent(path, *committed, version);
                    repins.push((path.clone(), *committed, version));
                }
                // The next writer of the table, or start-up recovery, undoes them instead.
                Err(err) => {
                    tracing::warn!(%err, %path, "could not undo a rolled-back transaction's table commits")
                }
            }
        }
        if !repins.is_empty() {
            // Pin the restoring commits, so that later writers need not undo them again.
            let result = store
                .catalog
                .commit(|latest| {
                    for (path, committed, restored) in &repins {
                        if let Some(pin) = pin_by_path_mut(latest, path)
                            && *pin == *committed
                        {
                            *pin = *restored;
                        }
                    }
                    Ok(())
                })
                .await;
            if let Err(err) = result {
                tracing::warn!(%err, "could not pin the restored tables of a rolled-back transaction");
            }
        }
        for path in &txn.created {
            delete_files(&store, path, "rolled-back").await;
        }
        self.end(txn);
    }

    fn end(&self, txn: Transaction) {
        drop(txn);
        self.unpin_producers();
        self.pin_latest();
    }
}
