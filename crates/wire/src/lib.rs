//! The Postgres wire protocol. This is the only crate that knows the protocol: it accepts
//! connections, authenticates them, hands statements to SQL sessions and encodes results and
//! errors (with SQLSTATE codes) for the client.

mod auth;
mod handler;
mod sqlstate;

use std::net::SocketAddr;
use std::sync::Arc;

use datafusion_postgres::pgwire::tokio::process_socket;
use tokio::net::TcpListener;
use tributary_sql::Engine;

pub use auth::{PasswordMethod, check_password, password_verifiers};
pub use sqlstate::sqlstate;

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
/// failing connection never affects the others.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    password_method: PasswordMethod,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    engine.set_password_hasher(auth::password_verifiers);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "accept failed");
                        continue;
                    }
                };
                let connection = Arc::new(handler::Connection::new(engine.clone(), password_method));
                let open = engine.session_opened();
                tokio::spawn(async move {
                    let _open = open;
                    if let Err(err) = process_socket(socket, None, connection.clone()).await {
                        tracing::debug!(%err, %peer, "connection ended with an error");
                    }
                    // A transaction left open by the client is rolled back.
                    connection.close().await;
                });
            }
        }
    }
}
