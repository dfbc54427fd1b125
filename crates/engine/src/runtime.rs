//! Where work runs. A server has three places to run work, so that none can starve another:
//!
//! - the caller's runtime (the server's I/O runtime): accepting connections, the wire
//!   protocol, authentication, cancellation, shutdown, HTTP. Nothing CPU-heavy runs there.
//! - the compute runtime ([`spawn`], [`detach_stream`]): parsing, planning and running
//!   statements, streaming refresh rounds and table maintenance. A statement that plans or
//!   sorts for seconds keeps its worker thread busy, not the threads that accept and answer
//!   other clients; the operating system shares the cores between both runtimes' threads.
//!   This is DataFusion's own advice for mixing CPU-bound query work with network I/O.
//!   It has more worker threads than cores ([`COMPUTE_THREADS_PER_CORE`]): tokio cannot
//!   preempt a task, and one of DataFusion's operators can compute for many seconds in one
//!   poll (a nested-loop join over a large batch), so with one thread per core a statement
//!   with a partition per core held every thread and the next client's `SELECT 1` waited
//!   18 s. With spare threads it runs beside the long polls, and the operating system shares
//!   the cores between them.
//! - the background runtime ([`spawn_background`]): rewrites of a mirror's files (folds and
//!   coalesces), on threads of lower scheduling priority (nice 10), so that they use the CPU
//!   that refresh rounds and queries leave; on a 2-core machine a fold at normal priority
//!   delayed both by seconds. Two threads, so that a short coalesce does not wait for a fold
//!   of seconds.
//!
//! Both runtimes live as long as the process: dropping one would stop its threads, and a
//! server that shuts down exits the process rather than waiting for running work.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

/// The background threads' priority on thread-priority's 0..=99 scale: 25 is nice 10 on
/// Linux.
const BACKGROUND_PRIORITY: u8 = 25;

/// Background threads.
const BACKGROUND_THREADS: usize = 2;

/// Result batches a detached stream computes ahead of its reader: enough to overlap
/// computing with sending, and a bound on what a slow client makes the server hold.
const DETACHED_BATCHES_AHEAD: usize = 2;

/// Compute worker threads per core. A statement runs a partition per core, so this many
/// statements can each be inside a long poll before a further one waits for a thread. Idle
/// workers cost a parked thread each.
const COMPUTE_THREADS_PER_CORE: usize = 4;

/// The compute runtime.
pub fn compute() -> &'static tokio::runtime::Handle {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = cores * COMPUTE_THREADS_PER_CORE;
        leak(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("tributary-compute")
                .thread_stack_size(crate::THREAD_STACK_BYTES)
                .enable_all()
                .build()
                .expect("the compute runtime builds"),
        )
    })
}

/// Runs `future` on the compute runtime. Dropping the returned task cancels the future at
/// its next await point (a client that went away, a shutdown); work that must not stop half
/// way protects itself (the catalog commit runs as a task of its own).
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Task(compute().spawn(future))
}

/// A future running on the compute runtime, cancelled when dropped.
#[derive(Debug)]
pub struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Future for Task<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a stream of result batches on the compute runtime, whoever reads it: its operators
/// compute there, at most [`DETACHED_BATCHES_AHEAD`] batches ahead of the reader. When the
/// reader drops the stream, the computation stops.
pub fn detach_stream(mut stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let (sender, receiver) = tokio::sync::mpsc::channel(DETACHED_BATCHES_AHEAD);
    compute().spawn(async move {
        loop {
            tokio::select! {
                // The reader is gone: stop computing.
                () = sender.closed() => return,
                batch = stream.next() => {
                    let Some(batch) = batch else { return };
                    if sender.send(batch).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let batches = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|batch| (batch, receiver))
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// Runs `future` on the background threads.
pub fn spawn_background<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        leak(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(BACKGROUND_THREADS)
                .thread_name("tributary-background")
                .thread_stack_size(crate::THREAD_STACK_BYTES)
                .on_thread_start(lower_priority)
                .enable_all()
                .build()
                .expect("the background runtime builds"),
        )
    });
    handle.spawn(future);
}

/// Keeps a runtime for the life of the process and returns its handle.
fn leak(runtime: tokio::runtime::Runtime) -> tokio::runtime::Handle {
    let handle = runtime.handle().clone();
    std::mem::forget(runtime);
    handle
}

/// Lowers the calling thread's priority (Linux applies nice values per thread).
fn lower_priority() {
    let lowered = thread_priority::ThreadPriorityValue::try_from(BACKGROUND_PRIORITY)
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
