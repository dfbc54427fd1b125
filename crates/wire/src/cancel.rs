//! Cancel requests. At login each connection is given a process id and a secret key
//! (BackendKeyData); to cancel the statement it runs, a client opens another connection and
//! sends them back in a CancelRequest (what psql's Ctrl-C and drivers' cancel calls do).
//! Each connection is registered here while it lives; a request that names it with the right
//! key wakes the statement it runs, which stops with 57014. A request for a connection that
//! runs nothing does nothing, as in Postgres.
//!
//! A request is counted, not only signalled: a statement watches for requests made since it
//! began, so one that comes while the statement is between two awaits (a COPY whose first
//! data has not been read yet, rows being written to the socket) still stops it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::cancel::CancelHandler;
use datafusion_postgres::pgwire::messages::cancel::CancelRequest;
use datafusion_postgres::pgwire::messages::startup::SecretKey;
use tokio::sync::Notify;

/// The open connections, by process id.
#[derive(Default)]
pub(crate) struct Cancels {
    last_pid: AtomicI32,
    open: Mutex<HashMap<i32, (i32, Arc<CancelSignal>)>>,
}

/// A connection's cancel requests: counted, and announced to the statements that wait.
#[derive(Default)]
pub(crate) struct CancelSignal {
    requests: AtomicU64,
    announce: Notify,
}

impl CancelSignal {
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.announce.notify_waiters();
    }

    /// Watches for the requests made from now on, for the statement that starts.
    pub(crate) fn watch(self: &Arc<Self>) -> CancelWatch {
        CancelWatch {
            since: self.requests.load(Ordering::SeqCst),
            signal: self.clone(),
        }
    }
}

/// The cancel requests made for a connection since one of its statements began.
#[derive(Clone)]
pub(crate) struct CancelWatch {
    signal: Arc<CancelSignal>,
    since: u64,
}

impl CancelWatch {
    /// Whether a request has come since the statement began.
    pub(crate) fn requested(&self) -> bool {
        self.signal.requests.load(Ordering::SeqCst) != self.since
    }

    /// Resolves once a request has come since the statement began (at once if one has).
    pub(crate) async fn cancelled(&self) {
        loop {
            // Created before the count is read, so a request between the two still wakes it.
            let announced = self.signal.announce.notified();
            if self.requested() {
                return;
            }
            announced.await;
        }
    }
}

/// A connection's entry: removed when dropped.
pub(crate) struct Registration {
    cancels: Arc<Cancels>,
    pub pid: i32,
    pub secret: i32,
    /// The cancel requests for this connection.
    pub signal: Arc<CancelSignal>,
}

impl Cancels {
    pub(crate) fn register(self: &Arc<Self>) -> Registration {
        // Process ids are positive and not reused while the server runs (2^31 connections).
        let pid = self
            .last_pid
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            & i32::MAX;
        let secret = rand::random::<i32>();
        let signal = Arc::new(CancelSignal::default());
        self.open.lock().insert(pid, (secret, signal.clone()));
        Registration {
            cancels: self.clone(),
            pid,
            secret,
            signal,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels.open.lock().remove(&self.pid);
    }
}

/// Answers cancel requests from the registry.
pub(crate) struct CancelRequests(pub Arc<Cancels>);

#[async_trait]
impl CancelHandler for CancelRequests {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let signal = {
            let open = self.0.open.lock();
            open.get(&request.pid)
                .filter(|(secret, _)| SecretKey::I32(*secret).eq_value(&request.secret_key))
                .map(|(_, signal)| signal.clone())
        };
        match signal {
            Some(signal) => signal.request(),
            None => tracing::debug!(pid = request.pid, "a cancel request named no connection"),
        }
    }
}
