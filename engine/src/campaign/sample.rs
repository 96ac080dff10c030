//! Random selection (see `docs/campaigns.md`, "Random selection"): where a per-run limit or an
//! A/B test takes part of a scheduled run's audience, the users taken are the first in the
//! run's random order, which every task computes alike from the run id and the user: a uniform
//! random sample of the whole audience, exact in count, the same for the same run id.
//!
//! Over shards the order is kept whole: such a run's users go to shards by ranges of their rank
//! (shard 0 holds the lowest ranks), so the first `k` users of the run are shard 0's in rank
//! order, then shard 1's, and so on; the home cuts the run once from the shards' counts
//! ([`first_in_order`]), one global cut-off with no ranks on the wire.
//!
//! With `timezone: user`, a run's users are sent at their own local times over up to 26 hours,
//! but its sample is taken at the scan over all of them: each user whose local time is still
//! to come is sent to the campaign stage as a [`reservation`] and ranked with the others.

use super::{Assignment, Campaign};
use crate::model::Candidate;

/// Whether a scheduled run of `campaign` may take part of its audience (a per-run limit or an
/// A/B test): its users are then taken in the run's random order.
pub fn samples(campaign: &Campaign) -> bool {
    campaign.limits.per_run.is_some() || matches!(campaign.assignment, Assignment::AbTest(_))
}

/// Whether a scheduled run of `campaign` holds places for users who come later, at their local
/// time (`timezone: user` or `best` with a per-run limit or an A/B test): it selects them at
/// its release from their [`reservation`]s, and passes a place on when its user does not come.
pub fn reserves(campaign: &Campaign) -> bool {
    campaign.user_local().is_some() && samples(campaign)
}

/// A reservation: the place in `run` of a user who qualified at the run's scan and waits for
/// their local time (`timezone: user`) until `local_ms`. Sent to the campaign stage at the scan,
/// so the run's sample is taken over all its users, whatever their timezone; it carries no
/// device (the user is checked again, and sent, at their local time) and is never sent itself.
pub fn reservation(campaign: &Campaign, run: &str, user: &str, local_ms: i64) -> Candidate {
    Candidate {
        campaign_id: campaign.id.clone(),
        app_id: campaign.app.clone(),
        run_id: run.to_string(),
        user_id: user.to_string(),
        qualified_at_ms: local_ms,
        trigger_event: None,
        event_properties: Default::default(),
        profile: Default::default(),
        devices: Vec::new(),
        timezone: None,
        language: None,
        source: None,
    }
}

/// Whether `candidate` is a [`reservation`] (a real candidate always has a device to send to).
pub fn is_reservation(candidate: &Candidate) -> bool {
    candidate.devices.is_empty()
}

/// The user's place in the run's random order: the first 8 bytes of SHA-256(run, NUL, user).
pub fn rank(run: &str, user: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, [run, "\0", user].concat().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// The shard among `shards` holding `rank`: equal ranges of ranks, the lowest at shard 0.
pub fn shard_of_rank(rank: u64, shards: u32) -> u32 {
    ((u128::from(rank) * u128::from(shards.max(1))) >> 64) as u32
}

/// The first `total` users of a run whose shards hold `counts` users, the shards in rank order:
/// how many each shard gives (all of shard 0's first, then shard 1's, …; never more than it
/// holds).
pub fn first_in_order(total: u64, counts: &[u64]) -> Vec<u64> {
    let mut left = total;
    counts
        .iter()
        .map(|count| {
            let taken = left.min(*count);
            left -= taken;
            taken
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_ranks_make_shards_in_order_and_spread_users_evenly() {
        assert_eq!(shard_of_rank(0, 4), 0);
        assert_eq!(shard_of_rank(u64::MAX / 4, 4), 0);
        assert_eq!(shard_of_rank(u64::MAX / 4 + 1, 4), 1);
        assert_eq!(shard_of_rank(u64::MAX, 4), 3);
        assert_eq!(shard_of_rank(u64::MAX, 1), 0);
        let mut seen = [0u32; 4];
        (0..4_000).for_each(|n| seen[shard_of_rank(rank("r", &format!("u{n}")), 4) as usize] += 1);
        assert!(seen.iter().all(|count| (850..1_150).contains(count)), "{seen:?}");
        // Every rank of shard 0 is below every rank of shard 1: the shards keep the order.
        let ranks: Vec<u64> = (0..4_000).map(|n| rank("r", &format!("u{n}"))).collect();
        let of = |shard| ranks.iter().copied().filter(move |r| shard_of_rank(*r, 4) == shard);
        assert!(of(0).max() < of(1).min());
    }

    #[test]
    fn the_first_users_come_from_the_lowest_shards() {
        assert_eq!(first_in_order(1_000, &[2_400, 2_600, 2_500, 2_500]), [1_000, 0, 0, 0]);
        assert_eq!(first_in_order(5_000, &[2_400, 2_600, 2_500, 2_500]), [2_400, 2_600, 0, 0]);
        assert_eq!(first_in_order(20_000, &[1, 2]), [1, 2]);
        assert_eq!(first_in_order(0, &[3, 3]), [0, 0]);
    }
}
