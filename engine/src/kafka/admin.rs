//! `topics apply`: create a topology's missing topics and report how existing ones differ.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use thiserror::Error;

use super::KafkaConfig;
use crate::topology::{TopicSpec, Topology};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Talking to the cluster failed.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The admin client could not be created or a request failed as a whole.
    #[error("kafka admin request to {brokers} failed: {source}")]
    Kafka {
        /// Bootstrap servers used.
        brokers: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic {topic}: {code}")]
    Create {
        /// Topic name.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
    /// The broker refused to describe a topic's configuration.
    #[error("cannot describe topic {topic}: {code}")]
    Describe {
        /// Topic name.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
    /// The broker refused to delete a topic.
    #[error("cannot delete topic {topic}: {code}")]
    Delete {
        /// Topic name.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
    /// Topics were created but the broker did not list them, every partition with a leader,
    /// within the admin timeout.
    #[error("created topics not yet served by {brokers} after {waited:?}: {topics}")]
    NotServed {
        /// Bootstrap servers used.
        brokers: String,
        /// How long the creation was waited for.
        waited: Duration,
        /// The topics still missing or without a leader, comma-separated.
        topics: String,
    },
}

/// Waits until the broker lists every topic of `created` with all its partitions led: a
/// creation is acknowledged by the controller before the broker's metadata serves it, and a
/// client started right after (the engine checking its topics, a producer) would find the
/// topic missing or its partitions unknown.
async fn await_served(
    admin: &AdminClient<DefaultClientContext>,
    brokers: &str,
    created: &[&TopicSpec],
) -> Result<(), AdminError> {
    let started = std::time::Instant::now();
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(None, ADMIN_TIMEOUT)
            .map_err(|source| AdminError::Kafka { brokers: brokers.to_string(), source })?;
        let served = |spec: &&TopicSpec| {
            metadata.topics().iter().any(|topic| {
                topic.name() == spec.name
                    && topic.error().is_none()
                    && topic.partitions().len() == spec.partitions as usize
                    && topic.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0)
            })
        };
        let waiting: Vec<&str> =
            created.iter().filter(|spec| !served(spec)).map(|spec| spec.name.as_str()).collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= ADMIN_TIMEOUT {
            return Err(AdminError::NotServed {
                brokers: brokers.to_string(),
                waited: started.elapsed(),
                topics: waiting.join(", "),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A setting where the broker's topic differs from the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDrift {
    /// Setting name, e.g. `partitions` or `cleanup.policy`.
    pub setting: String,
    /// Value in the topology file.
    pub expected: String,
    /// Value on the broker.
    pub actual: String,
}

/// What `apply_topology` did with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// The topic was missing and has been created.
    Created,
    /// The topic exists and matches the topology.
    Matches,
    /// The topic exists and differs; nothing was changed.
    Differs(Vec<TopicDrift>),
}

/// Outcome per topic, in topology order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyReport {
    /// (topic name, outcome).
    pub topics: Vec<(String, TopicOutcome)>,
}

impl TopologyReport {
    /// True when some existing topic differs from the topology.
    pub fn has_drift(&self) -> bool {
        self.topics.iter().any(|(_, o)| matches!(o, TopicOutcome::Differs(_)))
    }
}

/// Creates the topology's missing topics and compares existing ones with it. Existing topics
/// are never altered: partition counts in particular change key placement, so a difference is
/// reported for an operator to resolve deliberately.
pub async fn apply_topology(
    kafka: &KafkaConfig,
    topology: &Topology,
) -> Result<TopologyReport, AdminError> {
    let kafka_error = |source| AdminError::Kafka { brokers: kafka.brokers.clone(), source };
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().map_err(kafka_error)?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));

    let metadata = admin.inner().fetch_metadata(None, ADMIN_TIMEOUT).map_err(kafka_error)?;
    let existing_partitions = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
    };

    let missing: Vec<&TopicSpec> =
        topology.topics.iter().filter(|t| existing_partitions(&t.name).is_none()).collect();
    let retention_values: Vec<Option<String>> =
        missing.iter().map(|t| t.retention_ms.map(|ms| ms.to_string())).collect();
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .zip(&retention_values)
        .map(|(spec, retention)| {
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(topology.replication_factor),
            )
            .set("cleanup.policy", spec.cleanup_policy.as_config());
            let topic = match retention {
                Some(ms) => topic.set("retention.ms", ms),
                None => topic,
            };
            spec.configs.iter().fold(topic, |topic, (name, value)| topic.set(name, value))
        })
        .collect();
    if !new_topics.is_empty() {
        for result in admin.create_topics(&new_topics, &options).await.map_err(kafka_error)? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(AdminError::Create { topic, code }),
            }
        }
        await_served(&admin, &kafka.brokers, &missing).await?;
    }

    let mut report = Vec::with_capacity(topology.topics.len());
    for spec in &topology.topics {
        let outcome = match existing_partitions(&spec.name) {
            None => TopicOutcome::Created,
            Some(partitions) => {
                let drift = compare(&admin, &options, &kafka.brokers, spec, partitions).await?;
                if drift.is_empty() {
                    TopicOutcome::Matches
                } else {
                    TopicOutcome::Differs(drift)
                }
            }
        };
        report.push((spec.name.clone(), outcome));
    }
    Ok(TopologyReport { topics: report })
}

async fn compare(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    brokers: &str,
    spec: &TopicSpec,
    partitions: i32,
) -> Result<Vec<TopicDrift>, AdminError> {
    let mut drift = Vec::new();
    if partitions != spec.partitions {
        drift.push(TopicDrift {
            setting: "partitions".into(),
            expected: spec.partitions.to_string(),
            actual: partitions.to_string(),
        });
    }
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&spec.name)], options)
        .await
        .map_err(|source| AdminError::Kafka { brokers: brokers.to_string(), source })?;
    let Some(resource) = described.into_iter().next() else {
        return Ok(drift);
    };
    let resource =
        resource.map_err(|code| AdminError::Describe { topic: spec.name.clone(), code })?;
    let actual =
        |name: &str| resource.get(name).and_then(|entry| entry.value.clone()).unwrap_or_default();
    let mut expect = |setting: &str, expected: String| {
        let found = actual(setting);
        if found != expected {
            drift.push(TopicDrift { setting: setting.into(), expected, actual: found });
        }
    };
    expect("cleanup.policy", spec.cleanup_policy.as_config().to_string());
    if let Some(ms) = spec.retention_ms {
        expect("retention.ms", ms.to_string());
    }
    for (name, value) in &spec.configs {
        expect(name, value.clone());
    }
    Ok(drift)
}

/// Deletes every topic whose name starts with one of `prefixes` (each at least one character)
/// and returns their names, sorted: the leftovers of test and benchmark deployments, which a
/// broker otherwise keeps open a file for, per partition, until it runs out.
pub async fn delete_topics_with_prefix(
    kafka: &KafkaConfig,
    prefixes: &[String],
) -> Result<Vec<String>, AdminError> {
    let kafka_error = |source| AdminError::Kafka { brokers: kafka.brokers.clone(), source };
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().map_err(kafka_error)?;
    let metadata = admin.inner().fetch_metadata(None, ADMIN_TIMEOUT).map_err(kafka_error)?;
    let mut names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|name| prefixes.iter().any(|p| !p.is_empty() && name.starts_with(p.as_str())))
        .collect();
    names.sort();
    if names.is_empty() {
        return Ok(names);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    for result in admin.delete_topics(&refs, &options).await.map_err(kafka_error)? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(AdminError::Delete { topic, code }),
        }
    }
    Ok(names)
}
