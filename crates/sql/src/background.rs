//! Work that must not take CPU from ingestion and queries: a mirror's fold. It runs on one
//! thread of its own at a lower scheduling priority (nice 10), so that it uses the CPU that
//! refresh rounds and queries leave; on a 2-core machine a fold at normal priority delayed
//! both by seconds.

use std::future::Future;
use std::sync::OnceLock;

/// The background thread's priority on thread-priority's 0..=99 scale: 25 is nice 10 on
/// Linux.
const PRIORITY: u8 = 25;

/// Runs `future` on the background thread.
pub(crate) fn spawn<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tributary-background".into())
            .stack_size(crate::THREAD_STACK_BYTES)
            .spawn(move || {
                lower_priority();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                let _ = sender.send(runtime.handle().clone());
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("the background thread starts");
        receiver
            .recv()
            .expect("the background thread sends its runtime")
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
