//! Start-up checks: every topic the topology reads or writes exists, and the sources of each
//! sub-topology are co-partitioned.

use std::collections::HashMap;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::KAFKA_TIMEOUT;
use crate::{
    runtime::{RuntimeError, StreamTopology},
    topology::{CleanupPolicy, TopicSpec},
};

/// Retention of the created sinks an instance creates (outputs only clients read): a day.
/// Repartition topics keep their records until purged (`retention.ms` -1; see [`super::purge`]).
const CREATED_SINK_RETENTION_MS: i64 = 86_400_000;

/// The partition count of each sub-topology (that of its sources). Fails naming every missing
/// topic with what needs it, or the sources that are not co-partitioned.
pub(super) fn check_topics(
    topology: &StreamTopology,
    probe: &BaseConsumer,
) -> Result<Vec<i32>, RuntimeError> {
    let metadata = probe
        .fetch_metadata(None, KAFKA_TIMEOUT)
        .map_err(RuntimeError::kafka("reading the cluster's topics"))?;
    let existing: HashMap<&str, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name(), t.partitions().len() as i32))
        .collect();
    let missing = missing_topics(topology, |topic| existing.contains_key(topic));
    if !missing.is_empty() {
        return Err(RuntimeError::Topology(format!(
            "missing topics: {}; create them first (herald topics apply)",
            missing.join(", ")
        )));
    }
    topology
        .sub_topologies
        .iter()
        .map(|sub| {
            let first = existing[sub.sources[0].as_str()];
            match sub.sources.iter().find(|topic| existing[topic.as_str()] != first) {
                Some(topic) => Err(RuntimeError::Topology(format!(
                    "sources of {} are not co-partitioned: {} has {first} partitions, {topic} has {}",
                    sub.name,
                    sub.sources[0],
                    existing[topic.as_str()]
                ))),
                None => Ok(first),
            }
        })
        .collect()
}

/// The internal repartition topics (see [`crate::runtime::SubTopologyBuilder::repartition`])
/// that do not exist yet, each with the partition count of its sub-topology's first existing
/// other source (none when that source is missing too: the topic check then names it).
pub(super) fn missing_internal_topics(
    topology: &StreamTopology,
    probe: &BaseConsumer,
) -> Result<Vec<TopicSpec>, RuntimeError> {
    if topology.sub_topologies.iter().all(|sub| sub.internal.is_empty())
        && !topology.globals.iter().any(|g| g.created_when_missing)
    {
        return Ok(Vec::new());
    }
    let metadata = probe
        .fetch_metadata(None, KAFKA_TIMEOUT)
        .map_err(RuntimeError::kafka("reading the cluster's topics"))?;
    let existing: HashMap<&str, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name(), t.partitions().len() as i32))
        .collect();
    let mut missing = Vec::new();
    for sub in &topology.sub_topologies {
        let partitions = sub
            .sources
            .iter()
            .filter(|topic| !sub.internal.contains(topic))
            .find_map(|topic| existing.get(topic.as_str()).copied());
        let Some(partitions) = partitions else { continue };
        for topic in sub.internal.iter().filter(|t| !existing.contains_key(t.as_str())) {
            let (retention_ms, role) = match sub.sources.contains(topic) {
                true => (-1, "internal repartition topic"),
                false => (CREATED_SINK_RETENTION_MS, "output"),
            };
            missing.push(TopicSpec {
                name: topic.clone(),
                partitions,
                cleanup_policy: CleanupPolicy::Delete,
                retention_ms: Some(retention_ms),
                description: format!("{role} of {}", sub.name),
                configs: Default::default(),
            });
        }
    }
    let optional = topology.globals.iter().filter(|g| g.created_when_missing);
    for global in optional.filter(|g| !existing.contains_key(g.topic.as_str())) {
        missing.push(TopicSpec {
            name: global.topic.clone(),
            partitions: 1,
            cleanup_policy: CleanupPolicy::Compact,
            retention_ms: None,
            description: format!("global table {}", global.name),
            configs: Default::default(),
        });
    }
    Ok(missing)
}

/// Waits until the cluster's metadata shows every topic of `names` with a leader for each of its
/// partitions (a topic just created takes a moment to appear and elect them), for up to
/// [`KAFKA_TIMEOUT`].
pub(super) fn wait_for_topics(probe: &BaseConsumer, names: &[String]) -> Result<(), RuntimeError> {
    let started = std::time::Instant::now();
    loop {
        let metadata = probe
            .fetch_metadata(None, KAFKA_TIMEOUT)
            .map_err(RuntimeError::kafka("reading the cluster's topics"))?;
        // Ready means every partition has a leader: a topic is listed before its partitions'
        // leaders are elected, and reading its ends then fails with NotLeaderForPartition.
        let ready = |name: &String| {
            metadata.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0)
            })
        };
        if names.iter().all(ready) {
            return Ok(());
        }
        if started.elapsed() >= KAFKA_TIMEOUT {
            return Err(RuntimeError::Topology(format!(
                "created topics did not get a leader for every partition within {KAFKA_TIMEOUT:?}: {}",
                names.join(", ")
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `topic (what needs it)` for every topic of `topology` that does not `exist`, once each.
fn missing_topics(topology: &StreamTopology, exists: impl Fn(&str) -> bool) -> Vec<String> {
    let mut needed: Vec<(&str, String)> = Vec::new();
    for sub in &topology.sub_topologies {
        needed.extend(sub.sources.iter().map(|t| (t.as_str(), format!("read by {}", sub.name))));
        needed.extend(sub.sinks.iter().map(|t| (t.as_str(), format!("written by {}", sub.name))));
    }
    needed.extend(
        topology.globals.iter().map(|g| (g.topic.as_str(), format!("global table {}", g.name))),
    );
    needed.push((&topology.dead_letter_topic, "dead letters".to_string()));
    let mut missing: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (topic, role) in needed {
        if !exists(topic) && seen.insert(topic) {
            missing.push(format!("{topic} ({role})"));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::example::counting_topology;

    #[test]
    fn every_missing_topic_is_named_once_with_what_needs_it() {
        let topology = counting_topology("app", "in", "out").unwrap().with_dead_letter_topic("dlq");
        assert_eq!(
            missing_topics(&topology, |t| t == "in"),
            ["out (written by count)", "dlq (dead letters)"]
        );
        assert!(missing_topics(&topology, |_| true).is_empty());
    }
}
