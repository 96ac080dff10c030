//! Ingest settings: the format of each ingest topic and the schema registry, as written in the
//! `[ingest]` table of a topology file (`docs/ingest.md`).

use std::{fmt, str::FromStr, time::Duration};

use serde::Deserialize;
use thiserror::Error;

use super::IngestKind;

/// Largest ingest record accepted by default: 1 MiB, the broker's default message size.
pub const DEFAULT_MAX_INGEST_BYTES: usize = 1 << 20;

/// Environment variable naming the schema registry's base URL (overrides the file).
pub const REGISTRY_URL_ENV: &str = "HERALD_SCHEMA_REGISTRY_URL";
/// Environment variable holding the schema registry's basic-auth user.
pub const REGISTRY_USER_ENV: &str = "HERALD_SCHEMA_REGISTRY_USER";
/// Environment variable holding the schema registry's basic-auth password.
pub const REGISTRY_PASSWORD_ENV: &str = "HERALD_SCHEMA_REGISTRY_PASSWORD";

/// The encoding an ingest topic carries. Herald's own Avro single-object records (`C3 01`) are
/// accepted on every ingest topic whatever its format, since Herald's tools write them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngestFormat {
    /// Avro single-object records only.
    #[default]
    Avro,
    /// JSON objects with Herald's field names (the schemas' fields).
    #[serde(alias = "avro-or-json")]
    Json,
    /// Confluent wire format: byte 0, a 4-byte big-endian schema id, an Avro datum.
    Confluent,
    /// Segment-spec JSON messages (track, screen, page, identify, alias).
    Segment,
    /// JSON of another shape, read through the topic's `mapping`.
    Mapping,
}

impl IngestFormat {
    const NAMES: &'static str = "avro, json, confluent, segment or mapping";
}

impl FromStr for IngestFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "avro" => Ok(Self::Avro),
            "json" | "avro-or-json" => Ok(Self::Json),
            "confluent" => Ok(Self::Confluent),
            "segment" => Ok(Self::Segment),
            "mapping" => Ok(Self::Mapping),
            other => Err(format!("unknown ingest format {other:?}: expected {}", Self::NAMES)),
        }
    }
}

impl fmt::Display for IngestFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Avro => "avro",
            Self::Json => "json",
            Self::Confluent => "confluent",
            Self::Segment => "segment",
            Self::Mapping => "mapping",
        })
    }
}

/// Where a `mapping` topic's JSON keeps each value: JSON pointers (RFC 6901, e.g. `/user/id`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonMapping {
    /// The user id (text or number).
    pub user: String,
    /// The time: RFC 3339 text, or a number in `time_unit`s since the Unix epoch.
    pub time: String,
    /// Unit of a numeric time.
    #[serde(default)]
    pub time_unit: TimeUnit,
    /// The event name (events topics).
    #[serde(default)]
    pub event: Option<String>,
    /// The event id, for de-duplication (events topics; optional).
    #[serde(default)]
    pub id: Option<String>,
    /// An object of event properties (events) or of profile properties to set (profiles).
    #[serde(default)]
    pub properties: Option<String>,
    /// A list of devices in Herald's field names (profiles topics; optional).
    #[serde(default)]
    pub devices: Option<String>,
}

/// Unit of numeric times in mapped JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Milliseconds since the Unix epoch.
    #[default]
    Milliseconds,
    /// Seconds since the Unix epoch (fractions kept to the millisecond).
    Seconds,
}

/// How one ingest topic is read (`[ingest.events]`, `[ingest.profiles]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicIngest {
    /// The topic's encoding.
    #[serde(default)]
    pub format: IngestFormat,
    /// App id of records that carry none (segment, mapping).
    #[serde(default)]
    pub app: Option<String>,
    /// JSON pointer to the app id inside a record (segment, mapping); `app` when absent.
    #[serde(default)]
    pub app_field: Option<String>,
    /// Field pointers of a `mapping` topic.
    #[serde(default)]
    pub mapping: Option<JsonMapping>,
    /// Largest record value accepted, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

impl TopicIngest {
    /// The largest record value accepted.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes.unwrap_or(DEFAULT_MAX_INGEST_BYTES)
    }
}

/// A Confluent-compatible schema registry (`[ingest.registry]`). Credentials come from the
/// environment only and are never printed.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g.
    /// `http://127.0.0.1:8081/apis/ccompat/v7`; `HERALD_SCHEMA_REGISTRY_URL` overrides it.
    #[serde(default)]
    pub url: Option<String>,
    /// Timeout of one request in milliseconds (default 5,000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Basic-auth user and password, from `HERALD_SCHEMA_REGISTRY_USER` and `_PASSWORD`.
    #[serde(skip)]
    pub credentials: Option<(String, String)>,
}

impl RegistryConfig {
    /// A registry at `url` with the default timeout and no credentials.
    pub fn at(url: impl Into<String>) -> Self {
        Self { url: Some(url.into()), ..Self::default() }
    }

    /// The timeout of one request.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(5_000))
    }

    /// These settings with the URL and credentials of the environment, where set.
    pub fn with_env(mut self) -> Self {
        if let Ok(url) = std::env::var(REGISTRY_URL_ENV) {
            self.url = Some(url);
        }
        if let (Ok(user), Ok(password)) =
            (std::env::var(REGISTRY_USER_ENV), std::env::var(REGISTRY_PASSWORD_ENV))
        {
            self.credentials = Some((user, password));
        }
        self
    }
}

impl fmt::Debug for RegistryConfig {
    /// Shows whether credentials are set, never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("credentials", &self.credentials.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The `[ingest]` table: one entry per ingest topic, and the schema registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// How `herald.events` is read.
    #[serde(default)]
    pub events: TopicIngest,
    /// How `herald.profiles` is read.
    #[serde(default)]
    pub profiles: TopicIngest,
    /// The schema registry of `confluent` topics.
    #[serde(default)]
    pub registry: RegistryConfig,
}

/// Ingest settings that cannot work, naming the setting.
#[derive(Debug, Error)]
#[error("ingest.{field}: {reason}")]
pub struct IngestConfigError {
    /// The setting, e.g. `events.mapping.user`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl IngestConfig {
    /// Both topics in `format`, everything else default.
    pub fn uniform(format: IngestFormat) -> Self {
        let topic = TopicIngest { format, ..TopicIngest::default() };
        Self { events: topic.clone(), profiles: topic, registry: RegistryConfig::default() }
    }

    /// These settings with both topics in `format`, when one is given (the command-line
    /// `--ingest-format`).
    pub fn with_format(mut self, format: Option<IngestFormat>) -> Self {
        if let Some(format) = format {
            self.events.format = format;
            self.profiles.format = format;
        }
        self
    }

    /// The settings of the topic carrying `kind` records.
    pub fn topic(&self, kind: IngestKind) -> &TopicIngest {
        match kind {
            IngestKind::Events => &self.events,
            IngestKind::Profiles => &self.profiles,
        }
    }

    /// Checks that every topic's format has what it needs.
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        for (name, kind) in [("events", IngestKind::Events), ("profiles", IngestKind::Profiles)] {
            let topic = self.topic(kind);
            let error = |field: &str, reason: &str| IngestConfigError {
                field: format!("{name}.{field}"),
                reason: reason.to_string(),
            };
            if topic.max_bytes == Some(0) {
                return Err(error("max_bytes", "must be at least 1"));
            }
            match topic.format {
                IngestFormat::Confluent if self.registry.url.is_none() => {
                    return Err(IngestConfigError {
                        field: "registry.url".into(),
                        reason: format!(
                            "the confluent format of {name} needs a schema registry URL \
                             (or {REGISTRY_URL_ENV})"
                        ),
                    });
                }
                IngestFormat::Segment | IngestFormat::Mapping
                    if topic.app.is_none() && topic.app_field.is_none() =>
                {
                    return Err(error(
                        "app",
                        "segment and mapping topics need `app` or `app_field`",
                    ));
                }
                _ => {}
            }
            if let Some(pointer) = &topic.app_field {
                check_pointer(pointer).map_err(|reason| error("app_field", &reason))?;
            }
            match (&topic.mapping, topic.format) {
                (None, IngestFormat::Mapping) => {
                    return Err(error("mapping", "a mapping topic needs a `mapping` table"));
                }
                (Some(_), format) if format != IngestFormat::Mapping => {
                    return Err(error(
                        "mapping",
                        &format!("only for format mapping, not {format}"),
                    ));
                }
                (Some(mapping), _) => check_mapping(mapping, kind)
                    .map_err(|(field, reason)| error(&format!("mapping.{field}"), &reason))?,
                (None, _) => {}
            }
        }
        Ok(())
    }
}

fn check_mapping(mapping: &JsonMapping, kind: IngestKind) -> Result<(), (&'static str, String)> {
    let pointers = [
        ("user", Some(&mapping.user)),
        ("time", Some(&mapping.time)),
        ("event", mapping.event.as_ref()),
        ("id", mapping.id.as_ref()),
        ("properties", mapping.properties.as_ref()),
        ("devices", mapping.devices.as_ref()),
    ];
    for (field, pointer) in pointers {
        if let Some(pointer) = pointer {
            check_pointer(pointer).map_err(|reason| (field, reason))?;
        }
    }
    match kind {
        IngestKind::Events if mapping.event.is_none() => {
            Err(("event", "an events topic's mapping needs the event name's pointer".into()))
        }
        IngestKind::Events if mapping.devices.is_some() => {
            Err(("devices", "devices are read on the profiles topic only".into()))
        }
        IngestKind::Profiles if mapping.event.is_some() => {
            Err(("event", "a profiles topic's mapping has no event name".into()))
        }
        IngestKind::Profiles if mapping.id.is_some() => {
            Err(("id", "a profiles topic's mapping has no event id".into()))
        }
        _ => Ok(()),
    }
}

/// A JSON pointer to a value inside the record starts with `/`.
fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!("{pointer:?} is not a JSON pointer: write /{pointer}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> IngestConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_are_avro_on_both_topics() {
        let config = parse("");
        assert_eq!(config, IngestConfig::uniform(IngestFormat::Avro));
        config.validate().unwrap();
        assert_eq!(config.events.max_bytes(), DEFAULT_MAX_INGEST_BYTES);
    }

    #[test]
    fn each_format_is_checked_for_what_it_needs() {
        let error = |text: &str| parse(text).validate().unwrap_err().to_string();
        assert_eq!(
            error("[events]\nformat = \"confluent\""),
            "ingest.registry.url: the confluent format of events needs a schema registry URL \
             (or HERALD_SCHEMA_REGISTRY_URL)"
        );
        assert!(error("[profiles]\nformat = \"segment\"").starts_with("ingest.profiles.app:"));
        assert!(error("[events]\nformat = \"mapping\"\napp = \"a\"")
            .starts_with("ingest.events.mapping: a mapping topic needs"));
        assert!(error(
            "[events]\nformat = \"mapping\"\napp = \"a\"\nmapping = { user = \"u\", time = \"/t\", event = \"/e\" }"
        )
        .starts_with("ingest.events.mapping.user: \"u\" is not a JSON pointer"));
        assert!(error(
            "[events]\nformat = \"mapping\"\napp = \"a\"\nmapping = { user = \"/u\", time = \"/t\" }"
        )
        .starts_with("ingest.events.mapping.event:"));
        assert!(error("[events]\nformat = \"json\"\nmapping = { user = \"/u\", time = \"/t\" }")
            .starts_with("ingest.events.mapping: only for format mapping"));
    }

    #[test]
    fn a_full_table_parses() {
        let config = parse(
            r#"
            registry = { url = "http://127.0.0.1:8081/apis/ccompat/v7", timeout_ms = 2000 }
            [events]
            format = "mapping"
            app_field = "/app"
            app = "shop"
            mapping = { user = "/who", time = "/at", time_unit = "seconds", event = "/what", id = "/uuid", properties = "/data" }
            [profiles]
            format = "confluent"
            max_bytes = 65536
            "#,
        );
        config.validate().unwrap();
        assert_eq!(config.registry.timeout(), Duration::from_secs(2));
        assert_eq!(config.events.mapping.as_ref().unwrap().time_unit, TimeUnit::Seconds);
        assert_eq!(config.profiles.max_bytes(), 65536);
    }

    #[test]
    fn credentials_are_never_shown() {
        let config = RegistryConfig {
            credentials: Some(("user".into(), "s3cret".into())),
            ..RegistryConfig::at("http://r")
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("user\""), "{shown}");
    }

    #[test]
    fn format_names_parse() {
        assert_eq!("avro-or-json".parse(), Ok(IngestFormat::Json));
        assert_eq!("confluent".parse(), Ok(IngestFormat::Confluent));
        assert!("xml".parse::<IngestFormat>().unwrap_err().contains("expected avro, json"));
    }
}
