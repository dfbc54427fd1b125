//! The query memory one session's statement holds: what the console shows per query.
//!
//! Every session plans and runs its statements with a runtime of its own whose memory pool is a
//! [`SessionMemory`]: it passes every reservation on to the server's shared pool (which keeps
//! the limit and its fairness between operators) and counts the session's own bytes, and the
//! most it held since its statement began. A session runs one statement at a time, so these
//! are the statement's figures; statements a procedure runs count in the `CALL`'s.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};

/// One session's share of the server's query memory pool.
#[derive(Debug)]
pub struct SessionMemory {
    shared: Arc<dyn MemoryPool>,
    reserved: AtomicUsize,
    peak: AtomicUsize,
}

impl SessionMemory {
    /// A runtime like `server`'s (its disk manager, caches and object stores), whose
    /// reservations go through a new session pool, and that pool.
    pub fn runtime(server: &RuntimeEnv) -> DfResult<(Arc<RuntimeEnv>, Arc<SessionMemory>)> {
        let memory = Arc::new(SessionMemory {
            shared: server.memory_pool.clone(),
            reserved: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let runtime = RuntimeEnvBuilder::from_runtime_env(server)
            .with_memory_pool(memory.clone())
            .build_arc()?;
        Ok((runtime, memory))
    }

    /// Starts a statement's count: its peak begins at what the session holds now.
    pub fn start_statement(&self) {
        self.peak
            .store(self.reserved.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Bytes the session's operators hold now.
    pub fn current(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// The most bytes they held at once since the statement began.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn grew(&self, additional: usize) {
        let now = self.reserved.fetch_add(additional, Ordering::Relaxed) + additional;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
}

impl fmt::Display for SessionMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session pool over {}", self.shared)
    }
}

impl MemoryPool for SessionMemory {
    fn name(&self) -> &str {
        "session"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.shared.grow(reservation, additional);
        self.grew(additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.shared.shrink(reservation, shrink);
        self.reserved.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.shared.try_grow(reservation, additional)?;
        self.grew(additional);
        Ok(())
    }

    /// The shared pool's total: operators that ask how full the pool is mean the server's.
    fn reserved(&self) -> usize {
        self.shared.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.shared.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    #[test]
    fn a_session_counts_its_own_bytes_and_its_statements_peak() {
        let server = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(1000)))
            .build()
            .unwrap();
        let (one, first) = SessionMemory::runtime(&server).unwrap();
        let (other, second) = SessionMemory::runtime(&server).unwrap();
        let a = MemoryConsumer::new("a").register(&one.memory_pool);
        let b = MemoryConsumer::new("b").register(&other.memory_pool);
        first.start_statement();
        a.try_grow(600).unwrap();
        b.grow(100);
        // The limit is the server's, shared by both sessions.
        assert!(a.try_grow(400).is_err());
        a.shrink(500);
        assert_eq!((first.current(), first.peak()), (100, 600));
        assert_eq!((second.current(), second.peak()), (100, 100));
        assert_eq!(one.memory_pool.reserved(), 200);
        // The next statement's peak starts from what the session still holds.
        first.start_statement();
        assert_eq!(first.peak(), 100);
        drop(a);
        assert_eq!((first.current(), first.peak()), (0, 100));
        assert_eq!(server.memory_pool.reserved(), 100);
    }
}
