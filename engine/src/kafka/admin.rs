//! `topics apply`: create a topology's missing topics and report how existing ones differ.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

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
    /// A topic being created exists with another partition count than the topology's (another
    /// client created it first): a configuration to resolve, not something to wait for.
    #[error(
        "topic {topic} exists with {found} partitions, but the topology has {expected}: \
         delete it or change the topology"
    )]
    PartitionsDiffer {
        /// Topic name.
        topic: String,
        /// Partitions in the topology.
        expected: i32,
        /// Partitions on the broker.
        found: usize,
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

/// What the broker's metadata shows of a topic: its partitions, and whether each has a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listed {
    partitions: usize,
    led: bool,
}

/// The topics the broker lists without error, by name, asked within `timeout`.
fn listed(
    admin: &AdminClient<DefaultClientContext>,
    timeout: Duration,
) -> Result<HashMap<String, Listed>, KafkaError> {
    let metadata = admin.inner().fetch_metadata(None, timeout)?;
    let listed = metadata.topics().iter().filter(|topic| topic.error().is_none()).map(|topic| {
        let partitions = topic.partitions();
        let led = partitions.iter().all(|p| p.error().is_none() && p.leader() >= 0);
        (topic.name().to_string(), Listed { partitions: partitions.len(), led })
    });
    Ok(listed.collect())
}

/// The names of the topics of `created` that `listed` does not show served (listed with every
/// partition led), or the first listed with another partition count than its spec.
fn unserved<'a>(
    created: &[&'a TopicSpec],
    listed: &HashMap<String, Listed>,
) -> Result<Vec<&'a str>, AdminError> {
    let mut waiting = Vec::new();
    for spec in created {
        match listed.get(&spec.name) {
            Some(topic) if topic.partitions != spec.partitions as usize => {
                return Err(AdminError::PartitionsDiffer {
                    topic: spec.name.clone(),
                    expected: spec.partitions,
                    found: topic.partitions,
                })
            }
            Some(Listed { led: true, .. }) => {}
            _ => waiting.push(spec.name.as_str()),
        }
    }
    Ok(waiting)
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
    await_listed(|timeout| listed(admin, timeout), brokers, created, ADMIN_TIMEOUT).await
}

/// [`await_served`] on what `fetch` lists (asked within the time left), for `within`: a
/// failed fetch is asked again until then; a topic listed with another partition count than
/// its spec ends the wait at once.
async fn await_listed(
    mut fetch: impl FnMut(Duration) -> Result<HashMap<String, Listed>, KafkaError>,
    brokers: &str,
    created: &[&TopicSpec],
    within: Duration,
) -> Result<(), AdminError> {
    let started = Instant::now();
    loop {
        let left = within.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
        let failure = match fetch(left) {
            Ok(listed) => match unserved(created, &listed)? {
                waiting if waiting.is_empty() => return Ok(()),
                waiting => AdminError::NotServed {
                    brokers: brokers.to_string(),
                    waited: started.elapsed(),
                    topics: waiting.join(", "),
                },
            },
            Err(source) => AdminError::Kafka { brokers: brokers.to_string(), source },
        };
        if started.elapsed() >= within {
            return Err(failure);
        }
        tracing::debug!(%failure, "asking for the created topics again");
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::topology::CleanupPolicy;

    fn spec(name: &str, partitions: i32) -> TopicSpec {
        TopicSpec {
            name: name.to_string(),
            partitions,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: None,
            description: String::new(),
            configs: Default::default(),
        }
    }

    fn listing(topics: &[(&str, usize, bool)]) -> HashMap<String, Listed> {
        topics
            .iter()
            .map(|&(name, partitions, led)| (name.into(), Listed { partitions, led }))
            .collect()
    }

    const TIMED_OUT: KafkaError = KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut);

    #[tokio::test]
    async fn a_topic_with_another_partition_count_is_named_at_once() {
        let (events, push) = (spec("events", 3), spec("push", 8));
        let asked = Cell::new(0);
        let fetch = |_| {
            asked.set(asked.get() + 1);
            Ok(listing(&[("events", 3, true), ("push", 4, true)]))
        };
        let error = await_listed(fetch, "b:9092", &[&events, &push], Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, AdminError::PartitionsDiffer { topic, expected: 8, found: 4 } if topic == "push"),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "topic push exists with 4 partitions, but the topology has 8: delete it or change \
             the topology"
        );
        assert_eq!(asked.get(), 1, "asked once, not waited for");
    }

    #[tokio::test]
    async fn a_failed_fetch_is_asked_again_until_the_topics_are_served() {
        let events = spec("events", 2);
        let answers = std::cell::RefCell::new(vec![
            Ok(listing(&[("events", 2, true)])),
            Ok(listing(&[("events", 2, false)])),
            Err(TIMED_OUT),
            Ok(listing(&[])),
            Err(TIMED_OUT),
        ]);
        let fetch = |_| answers.borrow_mut().pop().unwrap();
        await_listed(fetch, "b:9092", &[&events], Duration::from_secs(60)).await.unwrap();
        assert!(answers.borrow().is_empty(), "every answer was asked for");
    }

    #[tokio::test]
    async fn brokers_failing_until_the_deadline_give_their_error() {
        let events = spec("events", 2);
        let asked = Cell::new(0);
        let fetch = |_| {
            asked.set(asked.get() + 1);
            Err(TIMED_OUT)
        };
        let error = await_listed(fetch, "b:9092", &[&events], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(error, AdminError::Kafka { .. }), "{error:?}");
        assert!(asked.get() > 1, "asked again before the deadline: {}", asked.get());
    }

    #[tokio::test]
    async fn topics_not_led_by_the_deadline_are_named() {
        let (events, push) = (spec("events", 2), spec("push", 2));
        let fetch = |_| Ok(listing(&[("events", 2, true), ("push", 2, false)]));
        let error = await_listed(fetch, "b:9092", &[&events, &push], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, AdminError::NotServed { topics, .. } if topics == "push"),
            "{error:?}"
        );
    }
}
