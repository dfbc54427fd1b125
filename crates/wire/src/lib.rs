//! The Postgres wire protocol. This is the only crate that knows the protocol: it accepts
//! connections, authenticates them, hands statements to SQL sessions and encodes results and
//! errors (with SQLSTATE codes) for the client.

mod auth;
mod cancel;
mod connection;
mod frames;
mod handler;
mod hangup;
mod sqlstate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tributary_sql::Engine;

pub use auth::{PasswordMethod, check_password, password_verifiers};
pub use sqlstate::sqlstate;

/// How long a shutdown waits for connections to roll back their open transactions.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How the server listens.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub password_method: PasswordMethod,
}

/// Binds the listener; separate from [`serve`] so callers learn the bound address (port 0).
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Accepts connections until `shutdown` resolves. Each connection runs on its own task; a
/// failing connection never affects the others, and statements run on the compute runtime
/// ([`tributary_sql::runtime`]), so that accepting, authenticating and answering clients
/// never waits behind a running statement.
///
/// At shutdown the listener closes, every connection's running statement is cancelled and
/// its open transaction rolled back; connections that have not finished after a short grace
/// period are left to the process's exit (their transactions never committed, so nothing of
/// them is visible).
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    password_method: PasswordMethod,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    engine.set_password_hasher(auth::password_verifiers);
    let connections = TaskTracker::new();
    let cancels = Arc::new(cancel::Cancels::default());
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "accept failed");
                        continue;
                    }
                };
                let engine = engine.clone();
                let closing = closing.clone();
                let cancels = cancels.clone();
                connections.spawn(async move {
                    let _open = engine.session_opened();
                    let (socket, hangup) = match hangup::Hangup::watch(socket) {
                        Ok(split) => split,
                        Err(err) => {
                            tracing::debug!(%err, %peer, "connection lost before it started");
                            return;
                        }
                    };
                    let registration = cancels.register();
                    let connection = Arc::new(handler::Connection::new(
                        engine,
                        password_method,
                        hangup,
                        registration.signal.clone(),
                    ));
                    tokio::select! {
                        ended = connection::messages(socket, connection.clone(), &registration, cancels) => {
                            if let Err(err) = ended {
                                tracing::debug!(%err, %peer, "connection ended with an error");
                            }
                        }
                        () = closing.cancelled() => {}
                    }
                    // A transaction left open by the client is rolled back.
                    connection.close().await;
                });
            }
        }
    }
    drop(listener);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "some connections were still closing after {} s; their open transactions are undone at the next start",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}
