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

/// A request that did not produce an HTTP response, split by whether the provider may have
/// processed it: only a request that provably did not reach it may be sent again (at most one
/// delivery).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connecting, the TLS handshake or the HTTP/2 handshake failed or timed out: nothing was
    /// sent.
    #[error("connecting to {origin}: {reason}")]
    Connect {
        /// scheme://host:port
        origin: String,
        /// What failed.
        reason: String,
    },
    /// The request did not reach the provider: no connection was ready for it, it was never
    /// handed to one, its stream was refused (`REFUSED_STREAM`) or was above the last stream id
    /// of a GOAWAY (RFC 9113 §8.7: the server has not processed it).
    #[error("request to {origin} not sent: {reason}")]
    NotSent {
        /// scheme://host:port
        origin: String,
        /// What failed.
        reason: String,
    },
    /// The request was handed to the connection, then the connection dropped, its stream was
    /// reset, or no answer came in time: the provider may have processed it.
    #[error("request to {origin} sent, outcome unknown: {reason}")]
    OutcomeUnknown {
        /// scheme://host:port
        origin: String,
        /// What failed.
        reason: String,
    },
}

impl TransportError {
    /// Whether the provider may have processed the request, so that sending it again could
    /// deliver it twice.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, TransportError::OutcomeUnknown { .. })
    }
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
        let deadline = tokio::time::Instant::now() + self.timeout;
        let not_sent =
            |reason: String| TransportError::NotSent { origin: self.origin.clone(), reason };
        match tokio::time::timeout_at(deadline, sender.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(not_sent(e.to_string())),
            Err(_) => {
                return Err(not_sent(format!("no connection ready within {:?}", self.timeout)))
            }
        }
        let unknown =
            |reason: String| TransportError::OutcomeUnknown { origin: self.origin.clone(), reason };
        // From here the request may be on the wire.
        let exchange = async {
            let response = sender.try_send_request(request).await.map_err(|error| {
                let unsent = error.message().is_some() || unprocessed(error.error());
                let reason = chain(error.error());
                if unsent {
                    not_sent(reason)
                } else {
                    unknown(reason)
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| unknown(format!("reading the response: {e}")))?;
            let body = body.to_bytes();
            Ok(Response { status: parts.status, headers: parts.headers, body })
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(unknown(format!("no answer within {:?}", self.timeout))),
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
            Err(_) => Err(fail(format!("not connected within {:?}", self.timeout))),
        }
    }
}

/// Whether `error` says the server did not process the request (RFC 9113 §8.7): the server
/// refused its stream (`RST_STREAM` with `REFUSED_STREAM`), or its stream was above the last
/// stream id of the server's GOAWAY. h2 fails exactly those streams, and streams opened after
/// the GOAWAY, with the server's GOAWAY error; a stream at or below the last id whose
/// connection then ends fails with a broken pipe instead (outcome unknown).
fn unprocessed(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        source = error.source();
    }
    false
}

/// `error` and its causes, `: `-separated.
fn chain(error: &hyper::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
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
