//! Cancel requests. At login each connection is given a process id and a secret key
//! (BackendKeyData); to cancel the statement it runs, a client opens another connection and
//! sends them back in a CancelRequest (what psql's Ctrl-C and drivers' cancel calls do).
//! Each connection is registered here while it lives; a request that names it with the right
//! key wakes the statement it runs, which stops with 57014. A request for a connection that
//! runs nothing does nothing, as in Postgres.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::cancel::CancelHandler;
use datafusion_postgres::pgwire::messages::cancel::CancelRequest;
use datafusion_postgres::pgwire::messages::startup::SecretKey;
use tokio::sync::Notify;

/// The open connections, by process id.
#[derive(Default)]
pub(crate) struct Cancels {
    last_pid: AtomicI32,
    open: Mutex<HashMap<i32, (i32, Arc<Notify>)>>,
}

/// A connection's entry: removed when dropped.
pub(crate) struct Registration {
    cancels: Arc<Cancels>,
    pub pid: i32,
    pub secret: i32,
    /// Woken by a cancel request for this connection.
    pub signal: Arc<Notify>,
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
        let signal = Arc::new(Notify::new());
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
            Some(signal) => signal.notify_waiters(),
            None => tracing::debug!(pid = request.pid, "a cancel request named no connection"),
        }
    }
}
