//! HTTP/2 connections to one provider origin: a fixed number of connections, each carrying many
//! concurrent streams, over TLS (`https://`) or cleartext with prior knowledge (`http://`). A
//! broken connection is re-established by the next request that picks it. Connections run on a
//! runtime of their own (see [`connection_runtime`]), apart from the tasks that send on them.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{client::conn::http2::SendRequest, HeaderMap, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    net::TcpStream,
    runtime::{Handle, Runtime},
    sync::Mutex,
};

/// Largest response body read from a provider or token endpoint (theirs are a few hundred
/// bytes); a longer one fails the exchange instead of filling memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Worker threads of the runtime that drives every provider connection.
const CONNECTION_THREADS: usize = 2;

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
    /// Where the connections are opened and driven.
    connections: Handle,
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
            connections: connection_runtime()?,
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

    /// Opens a connection on the connections' runtime, which then drives it.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let fail = |reason: String| TransportError::Connect { origin: self.origin.clone(), reason };
        let (host, port, tls, timeout) =
            (self.host.clone(), self.port, self.tls.clone(), self.timeout);
        let opening = self
            .connections
            .spawn(async move { tokio::time::timeout(timeout, open(&host, port, tls)).await });
        match opening.await {
            Ok(Ok(opened)) => opened.map_err(fail),
            Ok(Err(_)) => Err(fail(format!("not connected within {timeout:?}"))),
            Err(error) => Err(fail(format!("the connecting task failed: {error}"))),
        }
    }
}

/// The runtime that opens and drives every provider connection (TLS, HTTP/2 frames, answers
/// read), started on first use. On the runtime of the tasks that send, a task that woke a
/// connection's task and then blocked its worker thread in a synchronous call (the sender's
/// dedup store writes to disk) held that connection's task in the worker's LIFO slot, which no
/// other worker steals: the connection's requests stayed unwritten, or their answers unread,
/// past their timeout, and failed `unknown_outcome` though the provider never had them.
fn connection_runtime() -> Result<Handle, String> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime.handle().clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CONNECTION_THREADS)
        .thread_name("herald-h2")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the provider connections' runtime: {e}"))?;
    if let Err(later) = RUNTIME.set(runtime) {
        // Another pool started it first.
        later.shutdown_background();
    }
    Ok(RUNTIME.get().expect("set above").handle().clone())
}

/// Opens a connection to `host:port`, over TLS with `tls` when given; the connection is driven
/// by a task on the current runtime.
async fn open(
    host: &str,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let sender = match tls {
        Some(tls) => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("bad server name: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            handshake(stream).await
        }
        None => handshake(tcp).await,
    };
    sender.map_err(|e| format!("HTTP/2: {e}"))
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

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, future::Future, task::Poll, time::Instant};

    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// How long the test's requests wait for their answer.
    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Review FL1: a task that handed a request to its connection, then blocked its worker
    /// thread past the request timeout (a dedup store write stalled on a busy disk), held the
    /// connection's task in that worker's LIFO slot: the request was not written and failed "no
    /// answer within" (outcome unknown, never retried). Connections now run on their own
    /// runtime, and the answer is there when the task runs again.
    #[test]
    fn a_sending_task_blocked_past_the_timeout_still_gets_its_answer() {
        // A cleartext HTTP/2 server on a runtime of its own, answering at once.
        let server = Runtime::new().unwrap();
        let listener = server.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let served = Arc::clone(&requests);
        server.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let served = Arc::clone(&served);
                let service = service_fn(move |_| {
                    served.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new()))) }
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service);
                tokio::spawn(connection);
            }
        });

        let senders =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        let senders = senders.unwrap();
        let tls = crate::tls::client_config(None, None).unwrap();
        let pool = H2Pool::new(&origin, 1, tls, TIMEOUT).unwrap();
        let request = move || Request::get(format!("{origin}/")).body(Full::new(Bytes::new()));
        let exchange = senders.spawn(async move {
            let first = pool.send(request().unwrap()).await.map(|r| r.status);
            assert_eq!(first.map_err(|e| e.to_string()), Ok(StatusCode::OK), "connected");
            let mut second = std::pin::pin!(pool.send(request().unwrap()));
            let handed = std::future::poll_fn(|cx| Poll::Ready(second.as_mut().poll(cx))).await;
            assert!(handed.is_pending(), "the request waits for its answer");
            // The worker blocks until the server answered and the timeout passed (or 10 s).
            let blocked = Instant::now();
            while (requests.load(Ordering::SeqCst) < 2 || blocked.elapsed() < 2 * TIMEOUT)
                && blocked.elapsed() < 10 * TIMEOUT
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            let served = requests.load(Ordering::SeqCst);
            (served, second.await.map(|r| r.status).map_err(|e| e.to_string()))
        });
        let (served, answer) = senders.block_on(exchange).unwrap();
        assert_eq!((served, answer), (2, Ok(StatusCode::OK)));
    }
}
