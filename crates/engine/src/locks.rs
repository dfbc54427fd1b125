//! Table write locks. A transaction that writes a table holds its lock until it commits or
//! rolls back, as in Redshift: other writers of that table wait, readers never do. A wait that
//! would close a cycle of waiting transactions fails at once with a deadlock error.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};

use tokio::sync::Notify;

use crate::{Error, Result};

/// The write locks of one engine, by table path.
#[derive(Debug, Default)]
pub struct TableLocks {
    state: Mutex<LockState>,
    released: Notify,
}

#[derive(Debug, Default)]
struct LockState {
    /// Table path -> the transaction holding its write lock.
    holders: HashMap<String, u64>,
    /// Transaction -> the table path it is waiting for.
    waiting: HashMap<u64, String>,
}

impl TableLocks {
    /// Takes the write lock of `path` for transaction `txn`, waiting while another transaction
    /// holds it. `table` names the table in errors.
    pub async fn acquire(&self, txn: u64, path: &str, table: &str) -> Result<()> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release between the check and the wait wakes us.
            released.as_mut().enable();
            {
                let mut state = self.state.lock();
                match state.holders.get(path).copied() {
                    None => {
                        state.holders.insert(path.to_string(), txn);
                        state.waiting.remove(&txn);
                        return Ok(());
                    }
                    Some(holder) if holder == txn => return Ok(()),
                    Some(holder) => {
                        if state.leads_back_to(holder, txn) {
                            state.waiting.remove(&txn);
                            return Err(Error::Deadlock(format!(
                                "deadlock detected: this transaction waits for a lock on table \"{table}\" that a transaction waiting for this one holds; it was rolled back"
                            )));
                        }
                        state.waiting.insert(txn, path.to_string());
                    }
                }
            }
            released.await;
        }
    }

    /// Releases every lock of `txn` and forgets what it waited for.
    pub fn release_all(&self, txn: u64) {
        let mut state = self.state.lock();
        state.holders.retain(|_, holder| *holder != txn);
        state.waiting.remove(&txn);
        drop(state);
        self.released.notify_waiters();
    }
}

impl LockState {
    /// True if following "waits for a lock held by" from `start` reaches `target`.
    fn leads_back_to(&self, start: u64, target: u64) -> bool {
        let mut seen = HashSet::new();
        let mut current = start;
        while seen.insert(current) {
            if current == target {
                return true;
            }
            match self
                .waiting
                .get(&current)
                .and_then(|path| self.holders.get(path))
            {
                Some(next) => current = *next,
                None => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_second_writer_waits_until_the_first_releases() {
        let locks = Arc::new(TableLocks::default());
        locks.acquire(1, "t", "t").await.unwrap();
        locks.acquire(1, "t", "t").await.unwrap();
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire(2, "t", "t").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        locks.release_all(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_cycle_of_waits_is_a_deadlock() {
        let locks = Arc::new(TableLocks::default());
        locks.acquire(1, "a", "a").await.unwrap();
        locks.acquire(2, "b", "b").await.unwrap();
        let first = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire(1, "b", "b").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = locks.acquire(2, "a", "a").await.unwrap_err();
        assert!(matches!(err, Error::Deadlock(_)), "{err}");
        locks.release_all(2);
        first.await.unwrap().unwrap();
    }
}
