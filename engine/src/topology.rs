//! Topology files (`topologies/*.toml`): the topics a deployment needs, with partitions,
//! cleanup policy and retention.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    path::Path,
};

use serde::Deserialize;
use thiserror::Error;

use crate::model::IngestConfig;

/// A topology file could not be read or is invalid.
#[derive(Debug, Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid topology {path}: {reason}")]
    Parse {
        /// File path.
        path: String,
        /// Parser message with line and column.
        reason: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid topology {path}: {field}: {reason}")]
    Invalid {
        /// File path.
        path: String,
        /// Field path, e.g. `topic[2].partitions`.
        field: String,
        /// Why.
        reason: String,
    },
}

/// How Kafka cleans a topic's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Segments are deleted after the retention time.
    Delete,
    /// Only the latest record per key is kept.
    Compact,
}

impl CleanupPolicy {
    /// The value of the `cleanup.policy` topic config.
    pub fn as_config(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
        }
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_config())
    }
}

/// One topic of the topology.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Log cleanup policy.
    pub cleanup_policy: CleanupPolicy,
    /// Retention in milliseconds (`-1` keeps forever); only meaningful for `delete`.
    #[serde(default)]
    pub retention_ms: Option<i64>,
    /// What the topic carries.
    #[serde(default)]
    pub description: String,
    /// Further topic configs, e.g. `"min.insync.replicas" = "2"`.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// A deployment's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Replication factor of every topic.
    pub replication_factor: i32,
    /// The topics.
    pub topics: Vec<TopicSpec>,
}

/// How the runtime creates its state stores' changelog topics (`<app>-<store>-changelog`):
/// compacted (the latest value of every key is kept), one partition per task, with this
/// replication factor and these configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogSpec {
    /// Replication factor of each changelog.
    pub replication_factor: i32,
    /// Further topic configs, e.g. `"min.insync.replicas" = "2"`, `"delete.retention.ms"`.
    pub configs: BTreeMap<String, String>,
}

impl Default for ChangelogSpec {
    /// Replication factor 1 (a single local broker), no further configs.
    fn default() -> Self {
        Self { replication_factor: 1, configs: BTreeMap::new() }
    }
}

/// A topology file: the topics `herald topics apply` creates, how the engine creates its
/// changelogs (the `[changelog]` table) and reads its ingest topics (the `[ingest]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyFile {
    /// The topics.
    pub topology: Topology,
    /// The changelogs' settings; unset ones take the file's `replication_factor`.
    pub changelogs: ChangelogSpec,
    /// The ingest topics' formats and schema registry (`docs/ingest.md`), with the registry URL
    /// and credentials of the environment where set.
    pub ingest: IngestConfig,
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default = "default_replication")]
    replication_factor: i32,
    #[serde(default)]
    changelog: RawChangelog,
    #[serde(default)]
    ingest: IngestConfig,
    #[serde(rename = "topic")]
    topics: Vec<TopicSpec>,
}

/// The `[changelog]` table as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChangelog {
    replication_factor: Option<i32>,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

fn default_replication() -> i32 {
    1
}

impl TopologyFile {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| TopologyError::Read { path: shown.clone(), source })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates topology TOML; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TopologyError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| TopologyError::Parse {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        let invalid = |field: &str, reason: &str| TopologyError::Invalid {
            path: origin.to_string(),
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if matches!(raw.changelog.replication_factor, Some(n) if n < 1) {
            return Err(invalid("changelog.replication_factor", "must be at least 1"));
        }
        if raw.changelog.configs.contains_key("cleanup.policy") {
            return Err(invalid(
                "changelog.configs.cleanup.policy",
                "changelogs are always compacted",
            ));
        }
        let topology = Topology { replication_factor: raw.replication_factor, topics: raw.topics };
        topology.validate(origin)?;
        let changelogs = ChangelogSpec {
            replication_factor: raw.changelog.replication_factor.unwrap_or(raw.replication_factor),
            configs: raw.changelog.configs,
        };
        let mut ingest = raw.ingest;
        ingest.registry = ingest.registry.with_env();
        ingest.validate().map_err(|e| TopologyError::Invalid {
            path: origin.to_string(),
            field: format!("ingest.{}", e.field),
            reason: e.reason,
        })?;
        Ok(Self { topology, changelogs, ingest })
    }
}

impl Topology {
    /// Reads and validates a topology file's topics.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        TopologyFile::load(path).map(|file| file.topology)
    }

    /// Parses and validates topology TOML; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TopologyError> {
        TopologyFile::parse(text, origin).map(|file| file.topology)
    }

    /// The topic named `name`, if the topology has it.
    pub fn topic(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }

    fn validate(&self, origin: &str) -> Result<(), TopologyError> {
        let invalid = |field: String, reason: &str| TopologyError::Invalid {
            path: origin.to_string(),
            field,
            reason: reason.to_string(),
        };
        if self.replication_factor < 1 {
            return Err(invalid("replication_factor".into(), "must be at least 1"));
        }
        let mut seen = HashSet::new();
        for (i, topic) in self.topics.iter().enumerate() {
            if topic.name.is_empty() || topic.name.len() > 249 {
                return Err(invalid(format!("topic[{i}].name"), "must be 1 to 249 characters"));
            }
            if !topic.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(invalid(
                    format!("topic[{i}].name"),
                    "may contain only ASCII letters, digits, '.', '_' and '-'",
                ));
            }
            if !seen.insert(topic.name.as_str()) {
                return Err(invalid(format!("topic[{i}].name"), "duplicate topic name"));
            }
            if topic.partitions < 1 {
                return Err(invalid(format!("topic[{i}].partitions"), "must be at least 1"));
            }
            if matches!(topic.retention_ms, Some(ms) if ms < -1 || ms == 0) {
                return Err(invalid(
                    format!("topic[{i}].retention_ms"),
                    "must be positive, or -1 to keep forever",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_is_valid_and_names_every_designed_topic() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/default.toml");
        let topology = Topology::load(&path).unwrap();
        for name in [
            "herald.events",
            "herald.profiles",
            "herald.campaigns",
            "herald.campaign-events",
            "herald.campaign-flow",
            "herald.app-throttle",
            "herald.push",
            "herald.receipts",
            "herald.stats",
            "herald.dead-letter",
        ] {
            assert!(topology.topic(name).is_some(), "{name} missing");
        }
        for compacted in ["herald.campaigns", "herald.stats"] {
            assert_eq!(topology.topic(compacted).unwrap().cleanup_policy, CleanupPolicy::Compact);
        }
        assert_eq!(
            topology.topic("herald.campaign-events").unwrap().cleanup_policy,
            CleanupPolicy::Delete,
            "lifecycle events never go to a compacted topic"
        );
    }

    #[test]
    fn internal_repartition_topics_of_the_default_topology_keep_records_until_consumed() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/default.toml");
        let topology = Topology::load(&path).unwrap();
        let internal: Vec<&TopicSpec> = topology
            .topics
            .iter()
            .filter(|t| t.description.starts_with("internal repartition"))
            .collect();
        let names: Vec<&str> = internal.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "herald.app-throttle",
                "herald.send-gate",
                "herald.ingest-repartition",
                "herald.campaign-flow"
            ]
        );
        for topic in internal {
            assert_eq!(topic.retention_ms, Some(-1), "{} deletes records by time", topic.name);
        }
    }

    #[test]
    fn changelogs_take_the_replication_factor_and_configs_of_the_file() {
        let topic = "[[topic]]\nname = \"a\"\npartitions = 1\ncleanup_policy = \"delete\"\n";
        let inherited =
            TopologyFile::parse(&format!("replication_factor = 3\n{topic}"), "t.toml").unwrap();
        assert_eq!(inherited.changelogs.replication_factor, 3, "the file's by default");
        assert!(inherited.changelogs.configs.is_empty());

        let own = "replication_factor = 3\n[changelog]\nreplication_factor = 2\n\
                   configs = { \"min.insync.replicas\" = \"2\" }\n";
        let file = TopologyFile::parse(&format!("{own}{topic}"), "t.toml").unwrap();
        assert_eq!(file.changelogs.replication_factor, 2);
        assert_eq!(file.changelogs.configs["min.insync.replicas"], "2");
        assert_eq!(file.topology.replication_factor, 3, "topics keep the file's factor");

        let bad =
            format!("{own}{topic}").replace("replication_factor = 2", "replication_factor = 0");
        let err = TopologyFile::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(err.contains("changelog.replication_factor: must be at least 1"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let text = "[[topic]]\nname = \"a\"\npartitions = 0\ncleanup_policy = \"delete\"\n";
        let err = Topology::parse(text, "t.toml").unwrap_err().to_string();
        assert_eq!(err, "invalid topology t.toml: topic[0].partitions: must be at least 1");

        let text = "[[topic]]\nname = \"a\"\npartitions = 1\ncleanup_policy = \"shred\"\n";
        let err = Topology::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("shred"), "{err}");

        let dup = "[[topic]]\nname = \"a\"\npartitions = 1\ncleanup_policy = \"delete\"\n";
        let err = Topology::parse(&dup.repeat(2), "t.toml").unwrap_err().to_string();
        assert!(err.contains("topic[1].name: duplicate"), "{err}");
    }
}
