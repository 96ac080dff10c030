//! Ending the transaction an instance left open when it died.
//!
//! An instance killed mid-transaction leaves that transaction open on the broker until its
//! `transaction.timeout.ms` runs out, which the broker checks every
//! `transaction.abort.timed.out.transaction.cleanup.interval.ms` (10 s each by default). Until
//! then every `read_committed` reader of a partition it wrote to stops at its first record, so
//! the instances taking its partitions over wait 10–20 s after the session timeout, both to
//! restore its tasks and to read what their own tasks' inputs carry beyond it. When partitions
//! come to this instance and a member it saw in the group before is gone, it initialises a
//! producer with that member's transactional id (the member id: `<app-id>-<instance-id>`): the
//! broker aborts the open transaction at once and fences its producer, so a zombie that comes
//! back fails its next commit and joins again with a new one, as a restarted instance does.
//!
//! Members are read with DescribeGroups, which lists a classic group's members only: with the
//! KIP-848 protocol nothing is fenced here and the broker's timeout ends the transaction.

use std::{collections::BTreeSet, time::Duration};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    producer::{BaseProducer, Producer},
    ClientConfig,
};

use super::super::RuntimeError;

/// How long reading the group's members and fencing one of them may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The members of the application's group seen at the last assignment.
pub(super) struct Departures {
    group: String,
    me: String,
    seen: BTreeSet<String>,
}

impl Departures {
    /// Follows `group`, in which this instance is the member `me`.
    pub(super) fn new(group: &str, me: &str) -> Self {
        Self { group: group.to_string(), me: me.to_string(), seen: BTreeSet::new() }
    }

    /// The members seen at the last assignment and gone now (read from the group), which are
    /// forgotten; none when the group's members cannot be read or do not list this instance
    /// (mid-rebalance, or a KIP-848 group).
    pub(super) fn departed<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<Vec<String>, RuntimeError> {
        let list = consumer
            .fetch_group_list(Some(&self.group), TIMEOUT)
            .map_err(RuntimeError::kafka("describing the group"))?;
        let members: BTreeSet<String> = list
            .groups()
            .iter()
            .flat_map(|group| group.members())
            .map(|member| member.client_id().to_string())
            .collect();
        Ok(gone(&mut self.seen, members, &self.me))
    }
}

/// The members of `seen` not in `members`, with `seen` now `members`; none, and `seen` kept,
/// when `members` does not list `me` (not a listing of this instance's generation).
fn gone(seen: &mut BTreeSet<String>, members: BTreeSet<String>, me: &str) -> Vec<String> {
    if !members.contains(me) {
        return Vec::new();
    }
    let gone = seen.difference(&members).cloned().collect();
    *seen = members;
    gone
}

/// Ends the open transaction of the producer with `transactional_id` and fences it, by
/// initialising a producer with that id (`config`: the instance's producer settings;
/// `transaction_timeout` its own, which the broker accepts, unlike librdkafka's default of
/// 60 s under a lower `transaction.max.timeout.ms`).
pub(super) fn fence(
    config: &ClientConfig,
    transactional_id: &str,
    transaction_timeout: Duration,
) -> Result<(), RuntimeError> {
    let producer: BaseProducer = config
        .clone()
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", transaction_timeout.as_millis().to_string())
        .create()
        .map_err(RuntimeError::kafka("creating a producer to fence a departed instance"))?;
    producer
        .init_transactions(TIMEOUT)
        .map_err(RuntimeError::kafka(format!("fencing the departed {transactional_id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_member_seen_before_and_gone_now_is_departed_once() {
        let mut seen = BTreeSet::new();
        // The first listing only learns the members.
        assert!(gone(&mut seen, set(&["app-a", "app-b", "app-c"]), "app-a").is_empty());
        assert_eq!(gone(&mut seen, set(&["app-a", "app-c"]), "app-a"), ["app-b"]);
        // Told once: the next assignment does not fence it again.
        assert!(gone(&mut seen, set(&["app-a", "app-c"]), "app-a").is_empty());
        // A newcomer is learnt, and when it goes it is departed too.
        assert!(gone(&mut seen, set(&["app-a", "app-c", "app-d"]), "app-a").is_empty());
        assert_eq!(gone(&mut seen, set(&["app-a"]), "app-a"), ["app-c", "app-d"]);
    }

    #[test]
    fn a_listing_without_this_instance_departs_no_one() {
        let mut seen = set(&["app-a", "app-b"]);
        // Empty (a KIP-848 group, or mid-rebalance) or another generation's: nothing is
        // fenced, and what was seen stays.
        assert!(gone(&mut seen, BTreeSet::new(), "app-a").is_empty());
        assert!(gone(&mut seen, set(&["app-b"]), "app-a").is_empty());
        assert_eq!(seen, set(&["app-a", "app-b"]));
    }
}
