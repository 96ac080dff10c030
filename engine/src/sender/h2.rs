//! HTTP/2 connections to one provider origin: a fixed number of connections, each carrying many
//! concurrent streams, over TLS (`https://`) or cleartext with prior knowledge (`http://`). A
//! broken connection is re-established by the next request that picks it.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{client::conn::http2::SendRequest, HeaderMap, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{net::TcpStream, sync::Mutex};

/// Largest response body read from a provider or token endpoint (theirs are a few hundred
/// bytes); a longer one fails the exchange instead of filling memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A request that did not produce an HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connecting, the TLS handshake or the HTTP/2 handshake failed.
    #[error("connecting to {origin}: {reason}")]
    Connect {
        /// scheme://host:port
        origin: String,
        /// What failed.
        reason: String,
    },
    /// The request or its response failed (connection lost, stream reset, GOAWAY).
    #[error("request to {origin} failed: {reason}")]
    Request {
        /// scheme://host:port
        origin: String,
        /// What failed.
        reason: String,
    },
    /// No response within the timeout.
    #[error("no response from {origin} within {timeout:?}")]
    Timeout {
        /// scheme://host:port
        origin: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// A response, read in full.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
}

/// A pool of HTTP/2 connections to one origin.
pub struct H2Pool {
    origin: String,
    host: String,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    slots: Vec<Mutex<Option<SendRequest<Full<Bytes>>>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl H2Pool {
    /// A pool of `connections` to `origin` (`https://host:port` or `http://host:port`); `tls`
    /// is used for `https`.
    pub fn new(
        origin: &str,
        connections: usize,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let uri: Uri = origin.parse().map_err(|e| format!("bad endpoint {origin:?}: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("endpoint {origin:?} must start with https:// or http://")),
        };
        let host = uri.host().ok_or_else(|| format!("endpoint {origin:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(Self {
            origin: format!("{}://{host}:{port}", if secure { "https" } else { "http" }),
            host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
            port,
            tls: secure.then_some(tls),
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout,
        })
    }

    /// The origin, `scheme://host:port`, to build request URIs on.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Sends `request` on the next connection, connecting it first if needed, and reads the
    /// whole response.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response, TransportError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut sender = {
            let mut guard = slot.lock().await;
            match guard.as_ref().filter(|s| !s.is_closed()) {
                Some(sender) => sender.clone(),
                None => {
                    let sender = self.connect().await?;
                    *guard = Some(sender.clone());
                    sender
                }
            }
        };
        let request_error = |e: hyper::Error| TransportError::Request {
            origin: self.origin.clone(),
            reason: e.to_string(),
        };
        let exchange = async {
            sender.ready().await.map_err(request_error)?;
            let response = sender.send_request(request).await.map_err(request_error)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await.map_err(|e| {
                TransportError::Request { origin: self.origin.clone(), reason: e.to_string() }
            })?;
            let body = body.to_bytes();
            Ok(Response { status: parts.status, headers: parts.headers, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                Err(TransportError::Timeout { origin: self.origin.clone(), timeout: self.timeout })
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let fail = |reason: String| TransportError::Connect { origin: self.origin.clone(), reason };
        let connecting = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            tcp.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
            let sender = match &self.tls {
                Some(tls) => {
                    let name = ServerName::try_from(self.host.clone())
                        .map_err(|e| fail(format!("bad server name: {e}")))?;
                    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                        .connect(name, tcp)
                        .await
                        .map_err(|e| fail(format!("TLS: {e}")))?;
                    handshake(stream).await
                }
                None => handshake(tcp).await,
            };
            sender.map_err(|e| fail(format!("HTTP/2: {e}")))
        };
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(result) => result,
            Err(_) => {
                Err(TransportError::Timeout { origin: self.origin.clone(), timeout: self.timeout })
            }
        }
    }
}

/// The HTTP/2 handshake over `io`; the connection is driven by a task of its own.
async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
