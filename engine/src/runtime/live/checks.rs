//! Start-up checks: every topic the topology reads or writes exists, and the sources of each
//! sub-topology are co-partitioned.

use std::collections::HashMap;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::KAFKA_TIMEOUT;
use crate::runtime::{RuntimeError, StreamTopology};

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
