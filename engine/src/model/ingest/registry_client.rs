//! Client of a Confluent-compatible schema registry's REST API: writer schemas by id (cached for
//! good, since ids are immutable) and schema registration, for the `confluent` ingest format.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use apache_avro::Schema;
use base64::Engine;
use serde::Deserialize;
use thiserror::Error;

use super::{IngestConfigError, RegistryConfig};

/// Content type of the Confluent API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Largest registry answer read.
const MAX_ANSWER_BYTES: u64 = 4 << 20;
/// Error code with which the Confluent API says a schema id does not exist.
const SCHEMA_NOT_FOUND: i64 = 40403;
/// How long an id the registry did not know is answered from memory (a flood of records naming
/// unknown ids asks the registry once per id per period).
const MISSING_FOR: Duration = Duration::from_secs(10);
/// Unknown ids remembered at most.
const MAX_MISSING: usize = 10_000;

/// Why the registry did not give a schema.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The registry answered that the id does not exist: the record is bad.
    #[error("schema id {0} is not in the schema registry")]
    UnknownId(u32),
    /// The schema of the id is not an Avro schema Herald can read: the record is bad.
    #[error("schema id {id}: {reason}")]
    Unreadable {
        /// The id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// The registry could not be asked or did not answer usefully (down, timeout, 5xx,
    /// refused credentials): try again later.
    #[error("schema registry {base}: {reason}")]
    Unreachable {
        /// The registry's base URL.
        base: String,
        /// What happened.
        reason: String,
    },
}

/// What the registry said about an id, for good: its schema, or why Herald cannot read it.
type Known = Result<Arc<Schema>, String>;

/// A schema registry client, shared by every task of an engine.
pub struct RegistryClient {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
    schemas: RwLock<HashMap<u32, Known>>,
    missing: Mutex<HashMap<u32, Instant>>,
}

/// `GET /schemas/ids/{id}`'s answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaAnswer {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

/// An error answer of the Confluent API.
#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: i64,
}

/// `POST /subjects/{subject}/versions`' answer.
#[derive(Deserialize)]
struct RegisterAnswer {
    id: u32,
}

impl RegistryClient {
    /// A client of the registry `config` names.
    pub fn new(config: &RegistryConfig) -> Result<Self, IngestConfigError> {
        let invalid = |reason: &str| IngestConfigError {
            field: "registry.url".into(),
            reason: reason.to_string(),
        };
        let url = config.url.as_deref().ok_or_else(|| invalid("missing"))?;
        let authority = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| invalid("must start with http:// or https://"))?;
        if authority.split('/').next().is_some_and(|host| host.contains('@')) {
            return Err(invalid(
                "must not carry credentials: set HERALD_SCHEMA_REGISTRY_USER and _PASSWORD",
            ));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout()))
            .http_status_as_error(false)
            .build()
            .into();
        let authorization = config.credentials.as_ref().map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Ok(Self {
            agent,
            base: url.trim_end_matches('/').to_string(),
            authorization,
            schemas: RwLock::default(),
            missing: Mutex::default(),
        })
    }

    /// The writer schema registered under `id`, from memory after the first time (an
    /// unreadable one is remembered as such too: ids never change).
    pub fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        let known = self.schemas.read().expect("schema cache lock").get(&id).cloned();
        let known = match known {
            Some(known) => known,
            None if self.recently_missing(id) => return Err(RegistryError::UnknownId(id)),
            None => {
                let known = self.fetch(id)?;
                let readable = known.is_ok();
                tracing::info!(id, readable, base = %self.base, "fetched a writer schema");
                self.schemas.write().expect("schema cache lock").insert(id, known.clone());
                known
            }
        };
        known.map_err(|reason| RegistryError::Unreadable { id, reason })
    }

    /// Registers `schema` (Avro schema JSON) under `subject` and returns its id; registering
    /// the same schema again returns the same id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{}/versions", self.base, subject);
        let body = serde_json::json!({ "schema": schema }).to_string();
        let mut request = self.agent.post(&url).header("Content-Type", CONTENT_TYPE);
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let (status, text) = self.answer(request.send(body))?;
        if status != 200 {
            return Err(
                self.unreachable(format!("registering under {subject}: status {status}: {text}"))
            );
        }
        serde_json::from_str::<RegisterAnswer>(&text)
            .map(|answer| answer.id)
            .map_err(|e| self.unreachable(format!("registering under {subject}: {e}: {text}")))
    }

    /// Asks the registry for `id`: its schema or why it is unreadable, or an error when the
    /// registry does not know it or cannot be asked.
    fn fetch(&self, id: u32) -> Result<Known, RegistryError> {
        let mut request = self.agent.get(format!("{}/schemas/ids/{id}", self.base));
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let (status, text) = self.answer(request.call())?;
        match status {
            200 => {}
            // Only the API's own "schema not found" makes the record bad; a 404 of a wrong base
            // URL is a configuration problem, retried like an outage.
            404 if serde_json::from_str::<ErrorAnswer>(&text)
                .is_ok_and(|e| e.error_code == SCHEMA_NOT_FOUND) =>
            {
                self.remember_missing(id);
                return Err(RegistryError::UnknownId(id));
            }
            _ => return Err(self.unreachable(format!("schema id {id}: status {status}: {text}"))),
        }
        let answer: SchemaAnswer = serde_json::from_str(&text)
            .map_err(|e| self.unreachable(format!("schema id {id}: unexpected answer: {e}")))?;
        if let Some(kind) = answer.schema_type.filter(|kind| kind != "AVRO") {
            return Ok(Err(format!("a {kind} schema, not Avro")));
        }
        if !answer.references.is_empty() {
            return Ok(Err("schema references are not supported".into()));
        }
        Ok(Schema::parse_str(&answer.schema)
            .map(Arc::new)
            .map_err(|e| format!("not a valid Avro schema: {e}")))
    }

    /// Status and body text of a response; a failed exchange is [`RegistryError::Unreachable`].
    fn answer(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), RegistryError> {
        let mut response = response.map_err(|e| self.unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?;
        Ok((status, text))
    }

    fn unreachable(&self, reason: String) -> RegistryError {
        RegistryError::Unreachable { base: self.base.clone(), reason }
    }

    fn recently_missing(&self, id: u32) -> bool {
        let missing = self.missing.lock().expect("missing ids lock");
        missing.get(&id).is_some_and(|since| since.elapsed() < MISSING_FOR)
    }

    fn remember_missing(&self, id: u32) {
        let mut missing = self.missing.lock().expect("missing ids lock");
        if missing.len() >= MAX_MISSING {
            missing.retain(|_, since| since.elapsed() < MISSING_FOR);
        }
        if missing.len() < MAX_MISSING {
            missing.insert(id, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::{super::fake_registry::fake, *};

    const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;

    fn answers(path: &str) -> (u16, String) {
        let schema = serde_json::json!({ "schema": SCHEMA }).to_string();
        match path {
            "/apis/ccompat/v7/schemas/ids/1" => (200, schema),
            "/apis/ccompat/v7/schemas/ids/2" => {
                (200, r#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#.into())
            }
            "/apis/ccompat/v7/schemas/ids/3" => (
                200,
                serde_json::json!({"schema": SCHEMA, "references": [{"name": "x"}]}).to_string(),
            ),
            "/apis/ccompat/v7/schemas/ids/4" => (503, "busy".into()),
            "/apis/ccompat/v7/subjects/t-value/versions" => (200, r#"{"id":7}"#.into()),
            _ if path.starts_with("/apis/ccompat/v7/") => {
                (404, r#"{"error_code":40403,"message":"Schema not found"}"#.into())
            }
            _ => (404, "<html>no such page</html>".into()),
        }
    }

    fn client(url: &str) -> RegistryClient {
        super::super::fake_registry::client(url)
    }

    #[test]
    fn a_schema_is_fetched_once_and_kept() {
        let fake = fake(answers);
        let client = client(&fake.url);
        let first = client.schema(1).unwrap();
        let again = client.schema(1).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
        assert_eq!(client.register("t-value", SCHEMA).unwrap(), 7);
    }

    #[test]
    fn an_unknown_id_is_the_record_s_fault_and_asked_once_per_period() {
        let fake = fake(answers);
        let client = client(&fake.url);
        for _ in 0..3 {
            assert!(matches!(client.schema(99), Err(RegistryError::UnknownId(99))));
        }
        assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn foreign_schemas_are_unreadable() {
        let fake = fake(answers);
        let client = client(&fake.url);
        let reason = |id| match client.schema(id) {
            Err(RegistryError::Unreadable { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(2), "a PROTOBUF schema, not Avro");
        assert_eq!(reason(3), "schema references are not supported");
        assert_eq!(reason(2), "a PROTOBUF schema, not Avro");
        assert_eq!(fake.requests.load(Ordering::SeqCst), 2, "an unreadable id is asked once");
    }

    #[test]
    fn outages_and_wrong_urls_are_unreachable() {
        let fake = fake(answers);
        assert!(matches!(client(&fake.url).schema(4), Err(RegistryError::Unreachable { .. })));
        // A 404 that is not the API's "schema not found": the base URL is wrong.
        let wrong = client(&fake.url.replace("/apis/ccompat/v7", "/nothing"));
        assert!(matches!(wrong.schema(1), Err(RegistryError::Unreachable { .. })));
        // Nothing listens.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let error = client(&url).schema(1).unwrap_err();
        assert!(matches!(error, RegistryError::Unreachable { .. }), "{error}");
        // Something listens but never answers: the request times out.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = RegistryConfig {
            timeout_ms: Some(200),
            ..RegistryConfig::at(format!("http://{}", silent.local_addr().unwrap()))
        };
        let error = RegistryClient::new(&config).unwrap().schema(1).unwrap_err();
        assert!(matches!(error, RegistryError::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains("imeout"), "{error}");
    }

    #[test]
    fn credentials_travel_as_basic_auth_and_not_in_the_url() {
        let fake = fake(answers);
        let config = RegistryConfig {
            credentials: Some(("ana".into(), "s3cret".into())),
            ..RegistryConfig::at(&fake.url)
        };
        RegistryClient::new(&config).unwrap().schema(1).unwrap();
        assert_eq!(fake.authorization.lock().unwrap().as_deref(), Some("Basic YW5hOnMzY3JldA=="));
        let error = RegistryClient::new(&RegistryConfig::at("http://ana:s3cret@127.0.0.1:1/x"))
            .err()
            .unwrap();
        assert!(error.to_string().contains("must not carry credentials"), "{error}");
    }
}
