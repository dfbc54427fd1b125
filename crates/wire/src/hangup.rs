//! The watch for a client that hangs up while one of its statements runs: the protocol loop
//! does not read then, so it would not notice.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

/// How often a running statement's connection is checked for a hang-up while the client has
/// sent more than the check can see past.
const HANGUP_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A Terminate message: what a client that gives up politely sends before it closes.
const TERMINATE: &[u8] = b"X\0\0\0\x04";

/// Tells whether the client went away, by peeking at the connection through a second handle
/// on the socket: the protocol loop does not read while a statement runs.
#[derive(Clone)]
pub(crate) struct Hangup(Arc<TcpStream>);

impl Hangup {
    /// Splits `socket` into the stream the protocol uses and a watch on it.
    pub(crate) fn watch(socket: TcpStream) -> io::Result<(TcpStream, Option<Self>)> {
        let socket = socket.into_std()?;
        let watch = socket.try_clone().and_then(TcpStream::from_std);
        let socket = TcpStream::from_std(socket)?;
        match watch {
            Ok(watch) => Ok((socket, Some(Self(Arc::new(watch))))),
            Err(err) => {
                tracing::debug!(%err, "no hang-up watch for a connection");
                Ok((socket, None))
            }
        }
    }

    /// Resolves once the client has closed the connection (or sent only a Terminate).
    pub(crate) async fn wait(&self) {
        let mut pending = [0u8; 64];
        loop {
            match self.0.peek(&mut pending).await {
                Ok(0) | Err(_) => return,
                Ok(count) if pending[..count] == *TERMINATE => return,
                // The client sent more (a pipelined message): look again later.
                Ok(_) => tokio::time::sleep(HANGUP_POLL_INTERVAL).await,
            }
        }
    }
}
