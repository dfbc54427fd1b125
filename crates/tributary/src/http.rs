//! The HTTP listener (`--http-listen`): Prometheus metrics, health checks for orchestrators,
//! and the web console with its JSON API. The console's files are compiled into the binary.
//!
//! Who may ask: health checks need no login. From loopback everything is open, as the
//! superuser `admin`. From elsewhere a client logs in with HTTP Basic authentication as a SQL
//! user with a password; the console then shows what that user's system views show, and
//! `/metrics` needs a superuser.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tributary_sql::Engine;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// What the listener serves from.
#[derive(Clone)]
pub struct Http {
    pub engine: Arc<Engine>,
    /// Set while the server accepts SQL clients: `/readyz` answers 200 only then.
    pub ready: Arc<AtomicBool>,
}

impl Http {
    /// Serves on `listener` in a background task.
    pub fn spawn(self, listener: TcpListener) {
        tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "http: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let http = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let http = http.clone();
                        async move { Ok::<_, Infallible>(http.handle(peer, request)) }
                    });
                    if let Err(err) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await
                    {
                        tracing::debug!(%err, "http: connection ended");
                    }
                });
            }
        });
    }

    fn handle(&self, peer: SocketAddr, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        }
        let path = request.uri().path();
        match path {
            "/healthz" => return text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                return if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                };
            }
            _ => {}
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Ok(user) = login(&self.engine, peer, authorization) else {
            return unauthorized();
        };
        match path {
            "/metrics" => {
                if !self.engine.catalog_snapshot().is_superuser(&user) {
                    return text(StatusCode::FORBIDDEN, "metrics need a superuser\n");
                }
                body(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.engine.metrics_text(),
                )
            }
            "/" | "/index.html" => body(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
            "/console.js" => body(StatusCode::OK, "text/javascript; charset=utf-8", CONSOLE_JS),
            "/console.css" => body(StatusCode::OK, "text/css; charset=utf-8", CONSOLE_CSS),
            "/api/status" => body(
                StatusCode::OK,
                "application/json",
                self.engine.console_status(&user).to_string(),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// The answer to a request without a valid login.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "log in as a Tributary user with a password\n",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Tributary\", charset=\"UTF-8\""),
    );
    response
}

/// Who a request acts as: `admin` from loopback, else the user of a valid HTTP Basic login
/// (`authorization` is the header's value); a user without a password cannot log in.
fn login(engine: &Engine, peer: SocketAddr, authorization: Option<&str>) -> Result<String, ()> {
    if peer.ip().is_loopback() {
        return Ok(tributary_catalog::SUPERUSER.to_string());
    }
    let credentials = authorization
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or(())?;
    let (name, password) = credentials.split_once(':').ok_or(())?;
    let state = engine.catalog_snapshot();
    let stored = state
        .users
        .get(name)
        .and_then(|u| u.password.as_ref())
        .ok_or(())?;
    if !tributary_wire::check_password(stored, password) {
        tracing::info!(user = %name, %peer, "http: login failed");
        return Err(());
    }
    Ok(name.to_string())
}

fn body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[tokio::test]
    async fn loopback_is_admin_and_others_log_in_as_sql_users() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            dir.path().to_str().unwrap(),
            Some(tributary_wire::password_verifiers("admin", "s3cret-Admin")),
        )
        .await
        .unwrap();
        engine.set_password_hasher(tributary_wire::password_verifiers);
        let mut session = engine.session("admin", "dev").unwrap();
        for statement in session
            .parse("CREATE USER bob PASSWORD 'Bob-pass1'; CREATE USER carol PASSWORD DISABLE")
            .unwrap()
        {
            session.execute(statement).await.unwrap();
        }
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert_eq!(login(&engine, local, None), Ok("admin".to_string()));
        assert_eq!(login(&engine, remote, None), Err(()));
        assert_eq!(login(&engine, remote, Some("Bearer x")), Err(()));
        assert_eq!(
            login(&engine, remote, Some(&basic("admin", "wrong"))),
            Err(())
        );
        assert_eq!(
            login(&engine, remote, Some(&basic("admin", "s3cret-Admin"))),
            Ok("admin".to_string())
        );
        assert_eq!(
            login(&engine, remote, Some(&basic("bob", "Bob-pass1"))),
            Ok("bob".to_string())
        );
        assert_eq!(login(&engine, remote, Some(&basic("carol", ""))), Err(()));
        assert_eq!(login(&engine, remote, Some(&basic("nobody", "x"))), Err(()));
        // What bob sees is his own: no other user's queries.
        let status = engine.console_status("bob");
        assert_eq!(status["user"], "bob");
        assert_eq!(status["queries"], serde_json::json!([]));
        assert!(
            !engine.console_status("admin")["queries"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
}
