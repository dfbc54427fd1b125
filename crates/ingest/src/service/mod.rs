//! The embedded stream service: a durable, Kinesis-compatible stream server, so that the
//! streaming path runs with no cloud account. It speaks the Kinesis data-plane API (AWS JSON
//! 1.1 over HTTP: `X-Amz-Target: Kinesis_20131202.<Operation>`), so any AWS SDK, the AWS CLI
//! or an agent writes to it unchanged, and [`crate::KinesisSource`] reads it like Kinesis.
//! Requests are not authenticated (it listens on loopback by default).

mod api;
mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{Error, Result};

/// Settings of the embedded stream service.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Hours a record is kept (Kinesis' default: 24).
    pub retention_hours: u32,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            retention_hours: 24,
        }
    }
}

/// A running stream service.
#[derive(Clone)]
pub struct StreamService {
    api: Arc<api::Api>,
}

impl std::fmt::Debug for StreamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamService").finish_non_exhaustive()
    }
}

impl StreamService {
    /// Opens the service's store in `dir` (streams and records from earlier runs included).
    pub fn open(dir: &Path, settings: ServiceSettings) -> Result<Self> {
        let store = store::Store::open(dir, settings.retention_hours.max(1)).map_err(|e| {
            Error::Source {
                stream: String::new(),
                reason: format!("cannot open the stream service's store: {e:?}"),
            }
        })?;
        Ok(Self {
            api: Arc::new(api::Api::new(store)),
        })
    }

    /// Creates a stream (in-process, as CreateStream would); Ok(false) if it exists already.
    pub fn create_stream(&self, name: &str, shards: u32) -> Result<bool> {
        match self.api.store().create(name, shards) {
            Ok(()) => Ok(true),
            Err(store::StoreError::InUse(_)) => Ok(false),
            Err(err) => Err(Error::Source {
                stream: name.to_string(),
                reason: format!("{err:?}"),
            }),
        }
    }

    /// Appends records (partition key, data) in-process, routed as PutRecords routes them.
    pub fn put(&self, stream: &str, records: &[(String, Vec<u8>)]) -> Result<()> {
        let source = |err: store::StoreError| Error::Source {
            stream: stream.to_string(),
            reason: format!("{err:?}"),
        };
        let target = self.api.store().stream(stream).map_err(source)?;
        let mut by_shard: std::collections::BTreeMap<usize, Vec<(&str, &[u8])>> =
            Default::default();
        for (key, data) in records {
            by_shard
                .entry(target.route(key, None))
                .or_default()
                .push((key.as_str(), data.as_slice()));
        }
        for (shard, group) in by_shard {
            target.append(shard, &group).map_err(source)?;
        }
        Ok(())
    }

    /// Serves the Kinesis API on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (socket, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "stream service: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let api = self.api.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&api, request).await) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await
                {
                    tracing::debug!(%err, "stream service: connection ended");
                }
            });
        }
    }

    /// Binds `address` and serves there in a background task; returns the bound address.
    pub async fn spawn(self, address: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(address).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(self.serve(listener));
        Ok(bound)
    }
}

async fn handle(api: &api::Api, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let cbor = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("cbor"));
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return reply(api::failure(
                "SerializationException",
                &format!("cannot read the request: {err}"),
            ));
        }
    };
    if cbor {
        return reply(api::failure(
            "SerializationException",
            "this service speaks AWS JSON 1.1, not CBOR (for the AWS Java SDK, set AWS_CBOR_DISABLE=1)",
        ));
    }
    let operation = target.rsplit('.').next().unwrap_or_default();
    reply(api.call(operation, &body))
}

fn reply((status, body): (u16, serde_json::Value)) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    response.headers_mut().insert(
        "x-amzn-requestid",
        hyper::header::HeaderValue::from_str(&uuid_like())
            .unwrap_or(hyper::header::HeaderValue::from_static("0")),
    );
    response
}

/// A request id, unique enough for logs.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:016x}-{:08x}",
        chrono::Utc::now().timestamp_micros(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
