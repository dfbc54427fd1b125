//! One client connection from accept to close: TLS negotiation, the message guard
//! ([`crate::frames`]) and the message loop; the hang-up watch is [`crate::hangup`].
//!
//! The loop is pgwire's own (`process_socket`), written out here so that the guard can sit
//! between the socket and pgwire's decoder, and so that no error while a client
//! authenticates can leave it anywhere but disconnected.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use datafusion_postgres::pgwire::api::{ClientInfo, PgWireConnectionState};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError};
use datafusion_postgres::pgwire::messages::startup::SecretKey;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::tokio::server::{
    MaybeTls, PgWireMessageServerCodec, negotiate_tls, process_error, process_message,
};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

use crate::cancel::{CancelRequests, Cancels, Registration};
use crate::frames::{BrokenFrame, Guarded};
use crate::handler::Connection;

/// How long a client has to finish connecting and authenticating (Postgres's
/// `authentication_timeout`).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

type Socket = Framed<Guarded<MaybeTls>, PgWireMessageServerCodec<tributary_sql::Prepared>>;

/// Runs one connection's messages until the client leaves or the protocol breaks.
pub(crate) async fn messages(
    socket: TcpStream,
    connection: Arc<Connection>,
    registration: &Registration,
    cancels: Arc<Cancels>,
) -> io::Result<()> {
    let deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(deadline);
    let negotiated = tokio::select! {
        () = &mut deadline => return Ok(()),
        negotiated = negotiate_tls(socket, None) => negotiated?,
    };
    // A direct TLS handshake without a TLS configuration.
    let Some(negotiated) = negotiated else {
        return Ok(());
    };
    let mut socket = guard(negotiated);
    // Sent to the client at login (BackendKeyData), for its cancel requests.
    socket.set_pid_and_secret_key(registration.pid, SecretKey::I32(registration.secret));
    let (startup, queries) = connection.handlers();
    let cancel = Arc::new(CancelRequests(cancels));
    loop {
        let authenticating = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let message = if authenticating {
            tokio::select! {
                () = &mut deadline => return Ok(()),
                message = socket.next() => message,
            }
        } else {
            socket.next().await
        };
        let message = match message {
            None => return Ok(()),
            Some(Ok(message)) => message,
            Some(Err(err)) => return fatal(&mut socket, broken_frame(err)).await,
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        if let PgWireFrontendMessage::Query(query) = &message
            && let Some(violation) = crate::frames::violation(&query.query)
        {
            let error = ErrorInfo::new("ERROR".into(), violation.code.into(), violation.message);
            if authenticating {
                return fatal(&mut socket, error).await;
            }
            let error = PgWireError::UserError(Box::new(error));
            process_error(&mut socket, error, violation.extended).await?;
            continue;
        }
        let is_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let result = process_message(
            message,
            &mut socket,
            startup.clone(),
            queries.clone(),
            queries.clone(),
            queries.clone(),
            cancel.clone(),
        )
        .await;
        if let Err(error) = result {
            // No error leaves a client that has not authenticated anywhere but outside.
            if authenticating {
                return fatal(&mut socket, error.into()).await;
            }
            process_error(&mut socket, error, is_extended).await?;
        }
    }
}

/// Puts the guard between the negotiated stream and pgwire's codec; bytes pgwire already
/// read go through the guard too.
fn guard(
    negotiated: Framed<MaybeTls, PgWireMessageServerCodec<tributary_sql::Prepared>>,
) -> Socket {
    let parts = negotiated.into_parts();
    let mut guarded = FramedParts::new(Guarded::new(parts.io, parts.read_buf), parts.codec);
    guarded.write_buf = parts.write_buf;
    Framed::from_parts(guarded)
}

/// What to tell a client whose message stream broke.
fn broken_frame(err: PgWireError) -> ErrorInfo {
    let message = match &err {
        PgWireError::IoError(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<BrokenFrame>())
            .map(ToString::to_string),
        _ => None,
    };
    match message {
        Some(message) => ErrorInfo::new("FATAL".into(), "08P01".into(), message),
        None => err.into(),
    }
}

/// Sends a FATAL error and ends the connection.
async fn fatal(socket: &mut Socket, mut error: ErrorInfo) -> io::Result<()> {
    error.severity = "FATAL".into();
    tracing::debug!(code = %error.code, message = %error.message, "connection closed on a protocol error");
    // The client may be gone already; the connection ends either way.
    let _ = socket
        .send(PgWireBackendMessage::ErrorResponse(error.into()))
        .await;
    Ok(())
}
