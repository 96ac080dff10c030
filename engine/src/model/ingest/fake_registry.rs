//! A fake Confluent-compatible schema registry for unit tests: canned answers per path.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
};

use super::{RegistryClient, RegistryConfig};

/// A running fake registry.
pub(super) struct Fake {
    /// Base URL of its Confluent API.
    pub url: String,
    /// Requests answered so far.
    pub requests: Arc<AtomicUsize>,
    /// The `Authorization` header of the latest request.
    pub authorization: Arc<Mutex<Option<String>>>,
}

/// Serves `answer(path) -> (status, body)` on a free local port until the test ends.
pub(super) fn fake(answer: fn(&str) -> (u16, String)) -> Fake {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("a local port");
    let url = format!("http://{}/apis/ccompat/v7", server.server_addr().to_ip().expect("IP"));
    let requests = Arc::new(AtomicUsize::new(0));
    let authorization = Arc::new(Mutex::new(None));
    let (count, seen) = (Arc::clone(&requests), Arc::clone(&authorization));
    thread::spawn(move || {
        for request in server.incoming_requests() {
            count.fetch_add(1, Ordering::SeqCst);
            *seen.lock().expect("lock") = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.to_string());
            let (status, body) = answer(request.url());
            let _ =
                request.respond(tiny_http::Response::from_string(body).with_status_code(status));
        }
    });
    Fake { url, requests, authorization }
}

/// A client of the registry at `url` with a short timeout.
pub(super) fn client(url: &str) -> RegistryClient {
    RegistryClient::new(&RegistryConfig { timeout_ms: Some(2_000), ..RegistryConfig::at(url) })
        .expect("a valid URL")
}
