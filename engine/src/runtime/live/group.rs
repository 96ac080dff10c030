//! The instance's membership of the application's consumer group: the consumer's settings for
//! each group protocol, and leaving the group so that the partitions move at once.
//!
//! A static member (`group.instance.id`) that stops does not leave: its partitions wait for it
//! until the session timeout, so a restart (a rolling upgrade) takes them back without a
//! rebalance. A scale-in must hand them over instead. librdkafka sends no LeaveGroup for a
//! static member that closes (KIP-345), but it does when the member unsubscribes before
//! closing (classic protocol); with KIP-848 a static member's leave (member epoch -2) keeps
//! its partitions until the session timeout whatever it does, so there the member first
//! subscribes to nothing of the application's (a topic that does not exist), which gives every
//! partition back while it stays in the group, then closes.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
    ClientConfig,
};

use super::super::{GroupProtocol, RuntimeError, StreamTopology, TaskId};
use crate::kafka::set_default;

/// How long a leaving instance waits for the group to take its partitions back.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The group consumer's settings: `base` with the group, the static member id, exactly-once
/// reading, and the protocol's assignment settings (a co-partitioning `range` assignor either
/// way: client side for classic, on the broker for KIP-848, which owns the session timeout).
pub(super) fn consumer_config(
    base: ClientConfig,
    group: &str,
    member: &str,
    protocol: GroupProtocol,
) -> ClientConfig {
    let mut config = base;
    config
        .set("group.id", group)
        // Static membership: a restarted instance takes its partitions back at once instead
        // of waiting for the group to time its previous incarnation out.
        .set("group.instance.id", member)
        // How the other instances recognise this one among the group's members (standbys).
        .set("client.id", member)
        .set("group.protocol", protocol.name())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000");
    match protocol {
        GroupProtocol::Classic => {
            config.set("partition.assignment.strategy", "range");
            set_default(&mut config, "session.timeout.ms", "10000");
            set_default(&mut config, "heartbeat.interval.ms", "1000");
        }
        GroupProtocol::Consumer => {
            config.set("group.remote.assignor", "range");
        }
    };
    config
}

/// The error that ends the run when the broker refuses this member of `group` for a reason no
/// retry mends (a session timeout outside the broker's bounds, no right to join the group);
/// `None` for any other consumer error (logged, and the consumer goes on).
pub(super) fn refused(error: &KafkaError, group: &str) -> Option<RuntimeError> {
    let reason = match error.rdkafka_error_code()? {
        RDKafkaErrorCode::InvalidSessionTimeout => format!(
            "the broker refused the session timeout of consumer group {group} \
             (session.timeout.ms, 10000 unless set): it must lie within the broker's \
             group.min.session.timeout.ms and group.max.session.timeout.ms (6000 and 1800000 \
             by default)"
        ),
        RDKafkaErrorCode::GroupAuthorizationFailed => format!(
            "not authorised to join consumer group {group}: it needs a Read ACL on the group"
        ),
        _ => return None,
    };
    Some(RuntimeError::Config(reason))
}

/// Gives this instance's partitions back to the group and waits (polling, so the revocation
/// callback runs) until none is left, at most [`LEAVE_TIMEOUT`]; the consumer then closes.
/// Records polled meanwhile are dropped: their offsets are not committed, so the next owners
/// read them. `parking_topic` names a topic that does not exist (KIP-848, see the module docs).
pub(super) fn give_back<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    protocol: GroupProtocol,
    parking_topic: &str,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    match protocol {
        GroupProtocol::Classic => consumer.unsubscribe(),
        GroupProtocol::Consumer => consumer
            .subscribe(&[parking_topic])
            .map_err(RuntimeError::kafka("subscribing to nothing to give the partitions back"))?,
    }
    loop {
        let _ = consumer.poll(Duration::from_millis(50));
        let assigned =
            consumer.assignment().map_err(RuntimeError::kafka("reading the assignment"))?.count();
        if assigned == 0 {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "gave the partitions back; leaving the group"
            );
            return Ok(());
        }
        if started.elapsed() >= LEAVE_TIMEOUT {
            tracing::warn!(
                assigned,
                "the group did not take the partitions back in time; they move after the session timeout"
            );
            return Ok(());
        }
    }
}

/// Open tasks some of whose source partitions this instance does not hold, with the missing
/// ones: a task reads all its sources' partition, so a split task means the group's assignment
/// is not co-partitioned (another instance reads the rest with its own copy of the state).
pub(super) fn split_tasks<'a, C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topology: &StreamTopology,
    tasks: impl Iterator<Item = &'a TaskId>,
) -> Result<Vec<(TaskId, Vec<String>)>, RuntimeError> {
    let assignment =
        consumer.assignment().map_err(RuntimeError::kafka("reading the assignment"))?;
    let held: BTreeSet<(String, i32)> =
        assignment.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
    Ok(tasks
        .filter_map(|id| {
            let missing: Vec<String> = topology.sub_topologies[id.sub_topology]
                .sources
                .iter()
                .filter(|topic| !held.contains(&(topic.to_string(), id.partition)))
                .cloned()
                .collect();
            (!missing.is_empty()).then_some((*id, missing))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::KafkaConfig;

    #[test]
    fn the_operators_session_timeout_is_kept_and_the_group_settings_are_the_runtimes() {
        let mut kafka = KafkaConfig::default();
        kafka.properties.insert("session.timeout.ms".into(), "6000".into());
        let config = consumer_config(kafka.client_config(), "app", "app-a", GroupProtocol::Classic);
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("1000"), "the default");
        assert_eq!(config.get("isolation.level"), Some("read_committed"));
        assert_eq!(config.get("group.instance.id"), Some("app-a"));
    }
}
