//! Work that must not take CPU from ingestion and queries: rewrites of a mirror's files (its
//! folds and coalesces). It runs on threads of its own at a lower scheduling priority (nice
//! 10), so that it uses the CPU that refresh rounds and queries leave; on a 2-core machine a
//! fold at normal priority delayed both by seconds. Two threads, so that a short coalesce
//! does not wait for a fold of seconds.

use std::future::Future;
use std::sync::OnceLock;

/// The background threads' priority on thread-priority's 0..=99 scale: 25 is nice 10 on
/// Linux.
const PRIORITY: u8 = 25;

/// Background threads.
const THREADS: usize = 2;

/// Runs `future` on the background threads.
pub(crate) fn spawn<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("tributary-background")
            .thread_stack_size(crate::THREAD_STACK_BYTES)
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .expect("the background runtime builds");
        let handle = runtime.handle().clone();
        // The runtime lives as long as the process: dropping it would stop its threads.
        std::mem::forget(runtime);
        handle
    });
    handle.spawn(future);
}

/// Lowers the calling thread's priority (Linux applies nice values per thread).
fn lower_priority() {
    let lowered = thread_priority::ThreadPriorityValue::try_from(PRIORITY)
        .map_err(|e| e.to_string())
        .and_then(|value| {
            thread_priority::set_current_thread_priority(
                thread_priority::ThreadPriority::Crossplatform(value),
            )
            .map_err(|e| e.to_string())
        });
    if let Err(error) = lowered {
        tracing::debug!(%error, "could not lower the background thread's priority");
    }
}
