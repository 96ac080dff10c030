//! A/B tests and split delivery: deterministic assignment, test groups, winner selection.
//!
//! A triggered A/B test of `N` users numbers its places `0..N` and gives each of the `P`
//! user-stage partitions an equal share in a range of its own (partition 0 the first `⌈N/P⌉`
//! or `⌊N/P⌋`, and so on): partition `p`'s `k`-th user to qualify takes its range's `k`-th
//! place, with variant `place mod variants` (so the variants alternate within each partition
//! and are exact overall). Every partition has its share of the test whenever its users come
//! (a partition that lags behind is tested as much as the others); users beyond their
//! partition's share wait for the winner and get it. The test is complete, and its evaluation
//! starts, when every place is taken.
//!
//! A partition may never fill its share (fewer qualifying users than its places, no traffic):
//! once a user waits, the shares are kept for `share_wait`; then the places still unused are
//! pooled and go to the waiting users in the order of their [`sample::rank`] in the test (a
//! uniform random order, the same on a replay), then to users as they come, until the test is
//! complete. `P` is what the candidates declare (each names its partition and how many the
//! user stage has): a candidate declaring more partitions than the places are divided over (the
//! input topics were re-partitioned) divides the unused places again over the new count, each
//! division numbering the places its predecessor left unused, so the places, and the variants,
//! stay exact. A candidate naming no partition (an older producer) has no share: it waits.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    assignment_key, indices, is_held, queue,
    shards::{plan_to, EVALUATION_GRACE_MS},
    timer_key, CampaignStage, CampaignState, ProcessError, AB_TIMER, ASSIGNMENTS, RUN_BUFFER,
    RUN_TIMER, WAITING_TIMER,
};
pub use crate::campaign::TestPopulation;
use crate::{
    campaign::{sample, shards as campaign_shards, AbTest, Assignment, Campaign, CampaignStatus},
    model::{Candidate, ShardPlan, ShardPlanKind},
    runtime::ProcessorContext,
};

/// The variant for the `n`-th user (0-based) of a test: strict alternation A, B, C, A, B, C, …
pub fn alternate(n: u64, variants: usize) -> usize {
    (n % variants.max(1) as u64) as usize
}

/// The variant of global assignment index `index` (0-based) of a campaign assigning by strict
/// alternation or by a split: the one its single task gives its `index`-th user assigned
/// ([`alternate`], or [`SplitDelivery::at`]); `None` for any other assignment. Over shards each
/// user sent takes one global index (see `docs/architecture.md`, "Split proportions and
/// alternation"), so the variant counts are one task's.
pub fn variant_at(assignment: &Assignment, variants: usize, index: u64) -> Option<usize> {
    match assignment {
        Assignment::Alternate => Some(alternate(index, variants)),
        Assignment::Split(shares) => Some(SplitDelivery::at(shares, index)),
        Assignment::Single | Assignment::AbTest(_) | Assignment::ByProperty(_) => None,
    }
}

/// Partition `partition`'s share of `places` divided over `partitions`: its first place and
/// how many. Shares are equal (the first `places mod partitions` partitions have one more) and
/// in consecutive ranges: partition 0's first; a partition beyond `partitions` has none.
fn share(places: u64, partition: u32, partitions: u32) -> (u64, u64) {
    let (p, parts) = (u64::from(partition), u64::from(partitions.max(1)));
    let (base, extra) = (places / parts, places % parts);
    if p >= parts {
        return (places, 0);
    }
    (p * base + p.min(extra), base + u64::from(p < extra))
}

/// The place of partition `partition`'s next test user (after `taken` of its own) among
/// `places` divided over `partitions`, while the partition's share is not full.
pub fn slot(places: u64, partition: u32, partitions: u32, taken: u64) -> Option<u64> {
    let (first, len) = share(places, partition, partitions);
    (taken < len).then(|| first + taken)
}

/// One division of a triggered test's places over the user-stage partitions: the first over
/// all the places, each later one over those its predecessor left unused (numbered in order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Division {
    /// The partitions the places are divided over (1 for the pool, where everyone counts as
    /// partition 0).
    partitions: u32,
    /// Test users by partition.
    taken: BTreeMap<u32, u64>,
}

impl Division {
    /// Test users over every partition.
    fn tested(&self) -> u64 {
        self.taken.values().sum()
    }

    /// The `k`-th (0-based) of its `places` this division leaves unused, in order.
    fn unused(&self, places: u64, k: u64) -> u64 {
        let (mut position, mut k) = (0, k);
        for (partition, taken) in &self.taken {
            let (first, len) = share(places, *partition, self.partitions);
            let gap = first.saturating_sub(position);
            if k < gap {
                return position + k;
            }
            k -= gap;
            position = first + (*taken).min(len);
        }
        position + k
    }
}

/// A triggered A/B test at its campaign's home: the divisions of its places, and the users
/// waiting for the winner (in the run buffer, see [`waiting_owner`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TriggeredTest {
    /// The divisions of the places, the current one last (none before the first candidate
    /// naming its partition).
    #[serde(default)]
    divisions: Vec<Division>,
    /// The share wait passed: the current division is the pool of every unused place.
    #[serde(default)]
    pooled: bool,
    /// The pooled places are being given to the waiting users in steps: newcomers wait, to be
    /// ranked with them.
    #[serde(default)]
    pooling: bool,
    /// When the first user waited (the share wait counts from then).
    #[serde(default)]
    waiting_since: Option<i64>,
    /// Places given back (partition of the division they were taken in, place): their user
    /// was refused at the send gate, or nothing could be sent to them. Taken again first, by
    /// a user of that partition (by anyone once pooled), with the place's variant.
    #[serde(default)]
    returned: Vec<(u32, u64)>,
    /// Users waiting for the winner.
    waiting: u64,
    /// The number the next waiting user takes (their order in the queue).
    waiting_seq: u64,
    /// The partitions of a test saved before divisions (its only division, moved there).
    #[serde(default, skip_serializing)]
    partitions: u32,
    /// Test users by partition of a test saved before divisions.
    #[serde(default, skip_serializing)]
    taken: BTreeMap<u32, u64>,
    /// Over shards, at home: when it asked the shards for their counters to decide the winner
    /// (see [`CampaignStage::awaits_test_evaluation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asked_at: Option<i64>,
    /// The shards that answered the ask.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    answered: BTreeSet<i32>,
}

impl TriggeredTest {
    /// Whether users wait for the winner.
    pub(super) fn waits(&self) -> bool {
        self.waiting > 0
    }

    /// Moves the one division of a test saved before divisions where divisions are kept.
    fn upgrade(&mut self) {
        if self.partitions > 0 && self.divisions.is_empty() {
            let taken = std::mem::take(&mut self.taken);
            self.divisions.push(Division { partitions: self.partitions, taken });
        }
        self.partitions = 0;
    }

    /// The partition of the current division `candidate` takes a place in, if any: everyone's
    /// is 0 in the pool; else the one it names, after dividing the unused places again if it
    /// declares more partitions than the current division (a re-partitioned user stage); a
    /// candidate that names no partition, or one outside the count it declares, has none.
    fn partition(&mut self, candidate: &Candidate) -> Option<u32> {
        if self.pooled {
            return Some(0);
        }
        let source = candidate.source?;
        let (partition, partitions) =
            (u32::try_from(source.partition).ok()?, u32::try_from(source.partitions).ok()?);
        if partition >= partitions {
            return None;
        }
        if self.divisions.last().is_none_or(|current| current.partitions < partitions) {
            self.divisions.push(Division { partitions, taken: BTreeMap::new() });
        }
        Some(partition)
    }

    /// How many places each division is over, for a test of `audience`.
    fn places(&self, audience: u64) -> Vec<u64> {
        let mut places = Vec::with_capacity(self.divisions.len());
        let mut left = audience;
        for division in &self.divisions {
            places.push(left);
            left = left.saturating_sub(division.tested());
        }
        places
    }

    /// The place (in `0..audience`) of `partition`'s next test user in the current division,
    /// while its share is not full.
    fn next_place(&self, audience: u64, partition: u32) -> Option<u64> {
        let current = self.divisions.last()?;
        let places = self.places(audience);
        let taken = current.taken.get(&partition).copied().unwrap_or(0);
        let mut place = slot(*places.last()?, partition, current.partitions, taken)?;
        for (division, places) in self.divisions.iter().zip(&places).rev().skip(1) {
            place = division.unused(*places, place);
        }
        Some(place)
    }

    /// Test users over every division (places given back are not tested).
    fn tested(&self) -> u64 {
        let taken: u64 = self.divisions.iter().map(Division::tested).sum();
        taken.saturating_sub(self.returned.len() as u64)
    }

    /// The place `partition`'s next test user takes: one given back first (see `returned`),
    /// then the next of its share; with the index of the place given back it takes.
    fn next_seat(&self, audience: u64, partition: u32) -> Option<(u64, Option<usize>)> {
        let given_back = self.returned.iter().position(|(p, _)| self.pooled || *p == partition);
        match given_back {
            Some(index) => Some((self.returned[index].1, Some(index))),
            None => Some((self.next_place(audience, partition)?, None)),
        }
    }

    /// Counts the place of [`Self::next_seat`] taken by a user of `partition`.
    fn take(&mut self, partition: u32, given_back: Option<usize>) {
        match given_back {
            Some(index) => {
                self.returned.remove(index);
            }
            None => {
                let current = self.divisions.last_mut().expect("a place has a division");
                *current.taken.entry(partition).or_default() += 1;
            }
        }
    }

    /// Pools the places still unused: from now on they go to anyone, waiting users first.
    fn pool(&mut self) {
        if !self.pooled {
            self.pooled = true;
            self.divisions.push(Division { partitions: 1, taken: BTreeMap::new() });
        }
    }
}

/// The owner, in the run buffer, of the users of the state kept under `key` that wait for the
/// winner (a prefix no scheduled run's buffer has).
fn waiting_owner(key: &str) -> String {
    format!("{key}\u{0}ab-test")
}

/// Where the waiting users of the state kept under `key` are listed in their rank order.
fn rank_prefix(key: &str) -> Vec<u8> {
    format!("{key}\u{0}ab-rank\u{0}").into_bytes()
}

/// The rank-order entry of the waiting `user` queued as `seq`: the user's [`sample::rank`] in
/// the test, then `seq` (the entry's value is empty).
fn rank_key(key: &str, user: &str, seq: u64) -> Vec<u8> {
    let rank = sample::rank(key, user);
    [rank_prefix(key).as_slice(), &rank.to_be_bytes(), &seq.to_be_bytes()].concat()
}

/// Where the waiting users who named `partition` are listed in their rank order: a place of that
/// partition given back goes to the first of them (see `CampaignStage::give_back_to_waiting`).
fn partition_rank_prefix(key: &str, partition: u32) -> Vec<u8> {
    [format!("{key}\u{0}ab-prank\u{0}").as_bytes(), &partition.to_be_bytes()].concat()
}

/// The entry of the waiting `user` queued as `seq` in its partition's rank order (see
/// [`partition_rank_prefix`]; the value is empty).
fn partition_rank_key(key: &str, partition: u32, user: &str, seq: u64) -> Vec<u8> {
    let rank = sample::rank(key, user);
    [partition_rank_prefix(key, partition), rank.to_be_bytes().to_vec(), seq.to_be_bytes().to_vec()]
        .concat()
}

/// The partition a waiting candidate was listed under (the one its source names).
fn listed_partition(candidate: &Candidate) -> Option<u32> {
    u32::try_from(candidate.source?.partition).ok()
}

/// Deletes the waiting `candidate` queued as `seq` under the state kept at `key` (its queue
/// entry and its rank-order entries).
fn forget_waiting(
    ctx: &mut ProcessorContext<'_>,
    key: &str,
    candidate: &Candidate,
    seq: u64,
) -> Result<(), ProcessError> {
    let mut buffer = ctx.store(RUN_BUFFER)?;
    buffer.delete(&queue::key(&waiting_owner(key), seq))?;
    buffer.delete(&rank_key(key, &candidate.user_id, seq))?;
    if let Some(partition) = listed_partition(candidate) {
        buffer.delete(&partition_rank_key(key, partition, &candidate.user_id, seq))?;
    }
    Ok(())
}

/// Where the test place of `user` is kept (see [`Seat`]).
fn seat_key(key: &str, user: &str) -> Vec<u8> {
    format!("{key}\u{0}ab-seat\u{0}{user}").into_bytes()
}

/// A test user's place, kept so that it goes back if the send gate refuses the notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seat {
    /// The trigger occurrence that took it.
    run_id: String,
    /// The partition of the division it was taken in.
    partition: u32,
    /// Its number in the test (its variant is `place mod variants`).
    place: u64,
}

/// The queue number at the end of a waiting user's queue or rank-order key.
fn seq_of(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|start| &key[start..])?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The test of `campaign`'s triggered A/B test while it is on (active, no winner): its
/// population and how long unused shares are kept. At a home its shards tested on (the
/// campaign moved home), the test indices granted them and not given back count as tested.
fn test_on<'c>(campaign: &'c Campaign, state: &CampaignState) -> Option<(u64, &'c AbTest)> {
    match &campaign.assignment {
        Assignment::AbTest(
            test @ AbTest { test_audience: TestPopulation::Users(audience), .. },
        ) if state.winner_id.is_none() && campaign.status == CampaignStatus::Active => {
            Some((audience.saturating_sub(state.index_pool.out_at_shards()), test))
        }
        _ => None,
    }
}

impl CampaignStage {
    /// A candidate of a trigger: while the campaign's A/B test is on, a user of a partition
    /// with a free place takes it (and its variant), any other waits for the winner or for a
    /// pooled place (see [`Self::release_test_waiting`]); else it is delivered as it comes.
    pub(super) fn place_triggered(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: Candidate,
    ) -> Result<(), ProcessError> {
        let Some((audience, test)) = test_on(campaign, state) else {
            if state.ab_test.waits() {
                // The test ended without a winner's timer (an edit removed it, a stop).
                ctx.schedule(ctx.now_ms(), &timer_key(RUN_TIMER, &state.key))?;
            }
            return self.deliver(ctx, campaign, state, &candidate, None);
        };
        state.ab_test.upgrade();
        self.complete_test(ctx, campaign, state, audience, candidate.qualified_at_ms)?;
        let partition =
            if state.ab_test.pooling { None } else { state.ab_test.partition(&candidate) };
        self.seat(ctx, campaign, state, candidate, partition, audience)?;
        if state.ab_test.waits() && state.ab_test.waiting_since.is_none() {
            // The first user to wait: the unused shares are kept for `share_wait` from now.
            let now = ctx.effective_ms();
            state.ab_test.waiting_since = Some(now);
            ctx.schedule(
                now.saturating_add(test.share_wait_ms),
                &timer_key(RUN_TIMER, &state.key),
            )?;
        }
        Ok(())
    }

    /// A user takes the next place of `partition` (and its variant) while it has one, or waits.
    /// A tested user again keeps their variant and takes no place.
    fn seat(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: Candidate,
        partition: Option<u32>,
        audience: u64,
    ) -> Result<(), ProcessError> {
        let sticky_key = super::assignment_key(&state.key, &candidate.user_id);
        if Self::sticky(ctx, campaign, &sticky_key)?.is_some() {
            return self.deliver(ctx, campaign, state, &candidate, None);
        }
        let seat = partition.and_then(|partition| {
            let (place, given_back) = state.ab_test.next_seat(audience, partition)?;
            Some((partition, place, given_back))
        });
        let Some((partition, place, given_back)) = seat else {
            let seq = state.ab_test.waiting_seq;
            let mut buffer = ctx.store(RUN_BUFFER)?;
            buffer.put_as(&queue::key(&waiting_owner(&state.key), seq), &candidate)?;
            buffer.put(&rank_key(&state.key, &candidate.user_id, seq), &[])?;
            if let Some(partition) = partition.filter(|_| !state.ab_test.pooled) {
                let listed = partition_rank_key(&state.key, partition, &candidate.user_id, seq);
                buffer.put(&listed, &[])?;
            }
            state.ab_test.waiting_seq += 1;
            state.ab_test.waiting += 1;
            return Ok(());
        };
        let (assigned, sent) = (state.assigned, state.sent);
        let at = candidate.qualified_at_ms;
        self.deliver(
            ctx,
            campaign,
            state,
            &candidate,
            Some(alternate(place, campaign.what.len())),
        )?;
        // The place is taken once the user got its variant and a notification left (not when
        // a limit turned them away, nor on a template or payload error: the user is assigned
        // again next time).
        if state.assigned == assigned {
            return Ok(());
        }
        if state.sent == sent {
            return Ok(ctx.store(ASSIGNMENTS)?.delete(sticky_key.as_bytes())?);
        }
        state.ab_test.take(partition, given_back);
        let seat = Seat { run_id: candidate.run_id.clone(), partition, place };
        ctx.store(RUN_BUFFER)?.put_as(&seat_key(&state.key, &candidate.user_id), &seat)?;
        self.complete_test(ctx, campaign, state, audience, at)
    }

    /// Starts the evaluation once the test has its `audience` (also when an edit lowered
    /// `test_audience` to at most the users already tested).
    fn complete_test(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        audience: u64,
        at: i64,
    ) -> Result<(), ProcessError> {
        if state.ab_test.tested() >= audience && state.test_full_at.is_none() {
            self.start_evaluation(ctx, campaign, state, at)?;
        }
        Ok(())
    }

    /// The send gate refused the notification of `user`'s trigger occurrence `run_id`: while
    /// the test is on, a test place it took goes back (see `TriggeredTest::returned`), with the
    /// user's variant, and the test is complete again only once it is taken again. Users
    /// already waiting get it before anyone new: the first in rank order of those who named its
    /// partition at once, or, once the places are pooled, the first in rank order of all of them
    /// (newcomers wait to be ranked with them).
    pub(super) fn return_test_place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        user: &str,
        run_id: &str,
    ) -> Result<(), ProcessError> {
        if test_on(campaign, state).is_none() {
            return Ok(());
        }
        let key = seat_key(&state.key, user);
        let seat = ctx.store(RUN_BUFFER)?.get_as::<Seat>(&key)?;
        let Some(seat) = seat.filter(|seat| seat.run_id == run_id) else { return Ok(()) };
        ctx.store(RUN_BUFFER)?.delete(&key)?;
        ctx.store(ASSIGNMENTS)?.delete(assignment_key(&state.key, user).as_bytes())?;
        state.ab_test.returned.push((seat.partition, seat.place));
        state.test_full_at = None;
        if state.ab_test.pooled {
            state.ab_test.pooling = state.ab_test.waits();
        } else if let Some((audience, _)) = test_on(campaign, state) {
            self.give_back_to_waiting(ctx, campaign, state, seat.partition, audience)?;
        }
        if state.ab_test.waits() {
            ctx.schedule(ctx.now_ms(), &timer_key(RUN_TIMER, &state.key))?;
        }
        Ok(())
    }

    /// Gives the places of `partition` given back to the users waiting who named it, in rank
    /// order (a step at most; one who takes no place, e.g. turned away by a limit, does not
    /// hold it).
    fn give_back_to_waiting(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        partition: u32,
        audience: u64,
    ) -> Result<(), ProcessError> {
        let prefix = partition_rank_prefix(&state.key, partition);
        let owner = waiting_owner(&state.key);
        let now = ctx.effective_ms();
        for _ in 0..queue::STEP {
            if !state.ab_test.returned.iter().any(|(p, _)| *p == partition) {
                break;
            }
            let Some((listed, _)) = ctx.store(RUN_BUFFER)?.prefix(&prefix, 1)?.pop() else {
                break;
            };
            ctx.store(RUN_BUFFER)?.delete(&listed)?;
            let Some(seq) = seq_of(&listed) else { continue };
            let Some(bytes) = ctx.store(RUN_BUFFER)?.get(&queue::key(&owner, seq))? else {
                continue; // left already
            };
            state.ab_test.waiting = state.ab_test.waiting.saturating_sub(1);
            let Ok(candidate) = serde_json::from_slice::<Candidate>(&bytes) else {
                tracing::warn!(campaign = %campaign.id, "dropping an unreadable waiting candidate");
                ctx.store(RUN_BUFFER)?.delete(&queue::key(&owner, seq))?;
                continue;
            };
            forget_waiting(ctx, &state.key, &candidate, seq)?;
            let leaving =
                Candidate { qualified_at_ms: candidate.qualified_at_ms.max(now), ..candidate };
            self.seat(ctx, campaign, state, leaving, Some(partition), audience)?;
        }
        Ok(())
    }

    /// The users waiting on a triggered test move on: once the test is over (a winner, an edit,
    /// a stop) they leave in steps, timed when they leave; while it is on and the share wait
    /// has passed, the unused places are pooled and go to them in rank order, in steps. The
    /// next step follows on the run timer.
    pub(super) fn release_test_waiting(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        if !state.ab_test.waits() || is_held(campaign) {
            return Ok(());
        }
        if let Some((audience, test)) = test_on(campaign, state) {
            return self.pool_unused_places(ctx, campaign, state, audience, test);
        }
        let step = queue::next_step(ctx, RUN_BUFFER, &waiting_owner(&state.key))?;
        state.ab_test.waiting = state.ab_test.waiting.saturating_sub(step.unreadable);
        let now = ctx.effective_ms();
        for (key, candidate) in step.entries {
            ctx.store(RUN_BUFFER)?.delete(&key)?;
            if let Some(seq) = seq_of(&key) {
                forget_waiting(ctx, &state.key, &candidate, seq)?;
            }
            state.ab_test.waiting = state.ab_test.waiting.saturating_sub(1);
            let leaving =
                Candidate { qualified_at_ms: candidate.qualified_at_ms.max(now), ..candidate };
            self.place(ctx, campaign, state, leaving)?;
        }
        if step.more {
            ctx.schedule(ctx.now_ms(), &timer_key(RUN_TIMER, &state.key))?;
        }
        Ok(())
    }

    /// Once `share_wait` has passed since the first user waited, pools the places still unused
    /// and gives them to the waiting users with the lowest ranks, a step at a time.
    fn pool_unused_places(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        audience: u64,
        test: &AbTest,
    ) -> Result<(), ProcessError> {
        let now = ctx.effective_ms();
        let timer = timer_key(RUN_TIMER, &state.key);
        state.ab_test.upgrade();
        let since = *state.ab_test.waiting_since.get_or_insert(now);
        let due = since.saturating_add(test.share_wait_ms);
        if now < due {
            return Ok(ctx.schedule(due, &timer)?); // an edit made the wait longer
        }
        state.ab_test.pool();
        self.complete_test(ctx, campaign, state, audience, now)?;
        let free = audience.saturating_sub(state.ab_test.tested());
        let limit = queue::STEP.min(usize::try_from(free).unwrap_or(usize::MAX));
        let ranked = ctx.store(RUN_BUFFER)?.prefix(&rank_prefix(&state.key), limit)?;
        let full_step = limit > 0 && ranked.len() == limit;
        let owner = waiting_owner(&state.key);
        for (rank_key, _) in ranked {
            if state.ab_test.tested() >= audience {
                break;
            }
            let mut buffer = ctx.store(RUN_BUFFER)?;
            buffer.delete(&rank_key)?;
            let Some(seq) = seq_of(&rank_key) else { continue };
            let key = queue::key(&owner, seq);
            let Some(bytes) = buffer.get(&key)? else { continue };
            buffer.delete(&key)?;
            state.ab_test.waiting = state.ab_test.waiting.saturating_sub(1);
            let Ok(candidate) = serde_json::from_slice::<Candidate>(&bytes) else {
                tracing::warn!(campaign = %campaign.id, "dropping an unreadable waiting candidate");
                continue;
            };
            forget_waiting(ctx, &state.key, &candidate, seq)?;
            let leaving =
                Candidate { qualified_at_ms: candidate.qualified_at_ms.max(now), ..candidate };
            self.seat(ctx, campaign, state, leaving, Some(0), audience)?;
        }
        state.ab_test.pooling = full_step && state.ab_test.tested() < audience;
        if state.ab_test.pooling {
            ctx.schedule(ctx.now_ms(), &timer)?;
        }
        Ok(())
    }
}

/// A triggered A/B test spread over shards (see `indices::ab_test_on` for its test users): the
/// winner is decided once at home, as a scheduled run's is, on every shard's counters as of the
/// decision, and told to every shard, where the users beyond the test wait for it.
impl CampaignStage {
    /// Home of a triggered test over shards: whether the winner must wait for the shards'
    /// counters as of now. The first time it is due the home asks every shard in effect
    /// (`EVALUATE`, run [`indices::TRIGGERED_TEST`]) and decides once all have answered
    /// (`EVALUATED`), or after the grace on the counters they last reported. `None`: not such
    /// a test (a scheduled run's is decided by `shards`).
    pub(super) fn awaits_test_evaluation(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        now: i64,
    ) -> Result<Option<bool>, ProcessError> {
        let shards = campaign_shards::in_effect(campaign);
        if state.is_shard(campaign) || !indices::triggered_test(campaign) || shards <= 1 {
            return Ok(None);
        }
        let Some(asked_at) = state.ab_test.asked_at else {
            state.ab_test.asked_at = Some(now);
            for shard in 0..shards as i32 {
                let ask =
                    plan_to(campaign, indices::TRIGGERED_TEST, shard, ShardPlanKind::Evaluate, now);
                self.send_plan(ctx, campaign, &ask)?;
            }
            ctx.schedule(now + EVALUATION_GRACE_MS, &timer_key(AB_TIMER, &state.key))?;
            return Ok(Some(true));
        };
        let missing: Vec<i32> =
            (0..shards as i32).filter(|s| !state.ab_test.answered.contains(s)).collect();
        if missing.is_empty() || now < asked_at + EVALUATION_GRACE_MS {
            return Ok(Some(!missing.is_empty()));
        }
        tracing::warn!(campaign = %campaign.id, ?missing, "shards did not answer the A/B evaluation: deciding on their last reported counters");
        Ok(Some(false))
    }

    /// Home: `shard` answered the ask of a triggered test's evaluation (its counters are
    /// stored): once all have, the winner is decided.
    pub(super) fn on_test_evaluated(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        shard: i32,
    ) -> Result<(), ProcessError> {
        if state.ab_test.asked_at.is_none() || state.winner_id.is_some() {
            return Ok(());
        }
        state.ab_test.answered.insert(shard);
        self.winner_due(ctx, campaign, state, ctx.timestamp_ms())
    }

    /// Home: the triggered test's winner was chosen: every shard is told (`WINNER`, before any
    /// place granted after it, on the same key), then the shards lease as without a test.
    pub(super) fn announce_test_winner(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        if state.is_shard(campaign) || !indices::triggered_test(campaign) {
            return Ok(());
        }
        if campaign_shards::in_effect(campaign) <= 1 {
            return Ok(());
        }
        for shard in 0..campaign.options.shards as i32 {
            let plan = ShardPlan {
                winner_id: state.winner_id.clone(),
                ..plan_to(
                    campaign,
                    indices::TRIGGERED_TEST,
                    shard,
                    ShardPlanKind::Winner,
                    ctx.timestamp_ms(),
                )
            };
            self.send_plan(ctx, campaign, &plan)?;
        }
        self.lease_after_winner(ctx, campaign, state)
    }

    /// Shard: the home's winner of the triggered test: its users waiting here get it, on the
    /// places the home grants from now on.
    pub(super) fn on_test_winner(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        plan: &ShardPlan,
    ) -> Result<(), ProcessError> {
        if plan.kind != ShardPlanKind::Winner || plan.winner_id.is_none() {
            return Ok(());
        }
        state.winner_id.clone_from(&plan.winner_id);
        if state.waiting > 0 {
            ctx.schedule(ctx.now_ms(), &timer_key(WAITING_TIMER, &state.key))?;
        }
        Ok(())
    }
}

/// Deterministic weighted round robin (the "smooth" variant): over any run of assignments the
/// counts stay within one of the exact proportions, with no coin flips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitDelivery {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl SplitDelivery {
    /// Splits by `percentages` (any positive weights; they need not sum to 100).
    pub fn new(percentages: &[u32]) -> Self {
        let weights: Vec<i64> = percentages.iter().map(|p| i64::from(*p)).collect();
        Self { current: vec![0; weights.len()], weights }
    }

    /// Continues a split from a saved [`SplitDelivery::state`].
    pub fn resume(percentages: &[u32], state: Vec<i64>) -> Self {
        let mut split = Self::new(percentages);
        if state.len() == split.current.len() {
            split.current = state;
        }
        split
    }

    /// The position to save and [`SplitDelivery::resume`] from.
    pub fn state(&self) -> &[i64] {
        &self.current
    }

    /// The variant of the `index`-th user (0-based) of a split started afresh: the round robin
    /// is periodic (from zero, every variant is chosen exactly its weight's times in each run
    /// of the sum of the weights, which brings it back to zero), so at most that many steps.
    pub fn at(percentages: &[u32], index: u64) -> usize {
        let period: u64 = percentages.iter().map(|p| u64::from(*p)).sum::<u64>().max(1);
        let mut split = Self::new(percentages);
        let mut variant = split.next_variant();
        for _ in 0..index % period {
            variant = split.next_variant();
        }
        variant
    }

    /// The variant of the next user.
    pub fn next_variant(&mut self) -> usize {
        let total: i64 = self.weights.iter().sum();
        for (current, weight) in self.current.iter_mut().zip(&self.weights) {
            *current += weight;
        }
        let (best, _) = self
            .current
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
            .expect("at least one variant");
        self.current[best] -= total;
        best
    }
}

/// How a scheduled audience is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestPlan {
    /// Users per variant in the test.
    pub per_variant: u64,
    /// Users who get the winner afterwards.
    pub remainder: u64,
}

/// Divides `reach` users: equal test groups (rounded down), the rest for the winner.
pub fn test_plan(reach: u64, population: TestPopulation, variants: usize) -> TestPlan {
    let test = match population {
        TestPopulation::Percent(p) => ((reach as f64) * p / 100.0).floor() as u64,
        TestPopulation::Users(n) => n,
    }
    .min(reach);
    let per_variant = test / variants.max(1) as u64;
    TestPlan { per_variant, remainder: reach - per_variant * variants as u64 }
}

/// What a variant achieved in the test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VariantResult {
    /// Notifications sent.
    pub sent: u64,
    /// Clicks.
    pub clicks: u64,
}

/// How the winner is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WinnerRule {
    /// The most clicks.
    MostClicks,
    /// The highest click-through rate, reported with the p-value of a chi-squared test of
    /// independence (for two variants, the two-proportion z-test).
    ClickThroughRate,
}

/// The chosen variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Winner {
    /// Index of the variant.
    pub variant: usize,
    /// p-value of the difference, with [`WinnerRule::ClickThroughRate`].
    pub p_value: Option<f64>,
}

/// Picks the winner. Ties go to the variant listed first (A before B before C), so a test
/// without a difference keeps the original message.
pub fn pick_winner(results: &[VariantResult], rule: WinnerRule) -> Winner {
    let rate = |r: &VariantResult| if r.sent == 0 { 0.0 } else { r.clicks as f64 / r.sent as f64 };
    let better = |a: &VariantResult, b: &VariantResult| match rule {
        WinnerRule::MostClicks => a.clicks > b.clicks,
        WinnerRule::ClickThroughRate => rate(a) > rate(b),
    };
    let mut best = 0;
    for (i, result) in results.iter().enumerate().skip(1) {
        if better(result, &results[best]) {
            best = i;
        }
    }
    let p_value = (rule == WinnerRule::ClickThroughRate).then(|| chi_squared_p_value(results));
    Winner { variant: best, p_value }
}

/// p-value of Pearson's chi-squared test that click-through does not depend on the variant
/// (clicked / not clicked × variants). Degrees of freedom k − 1 ∈ {1, 2} have closed forms.
fn chi_squared_p_value(results: &[VariantResult]) -> f64 {
    let sent: f64 = results.iter().map(|r| r.sent as f64).sum();
    let clicks: f64 = results.iter().map(|r| r.clicks as f64).sum();
    if sent == 0.0 || clicks == 0.0 || clicks == sent || results.len() < 2 {
        return 1.0;
    }
    let mut statistic = 0.0;
    for r in results.iter().filter(|r| r.sent > 0) {
        let n = r.sent as f64;
        for (observed, share) in
            [(r.clicks as f64, clicks / sent), ((r.sent - r.clicks) as f64, 1.0 - clicks / sent)]
        {
            let expected = n * share;
            statistic += (observed - expected).powi(2) / expected;
        }
    }
    match results.len() - 1 {
        1 => erfc((statistic / 2.0).sqrt()),
        _ => (-statistic / 2.0).exp(), // df = 2; more variants are not allowed
    }
}

/// Complementary error function (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7),
/// hand-written because the standard library has none.
fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let value = poly * (-x * x).exp();
    if x >= 0.0 {
        value
    } else {
        2.0 - value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_million_reach_15_percent_3_variants_gives_100000_each() {
        let plan = test_plan(2_000_000, TestPopulation::Percent(15.0), 3);
        assert_eq!(plan, TestPlan { per_variant: 100_000, remainder: 1_700_000 });
        // Scaled down proportionally.
        assert_eq!(
            test_plan(20_000, TestPopulation::Percent(15.0), 3),
            TestPlan { per_variant: 1_000, remainder: 17_000 }
        );
        assert_eq!(
            test_plan(1_000, TestPopulation::Users(500), 2),
            TestPlan { per_variant: 250, remainder: 500 }
        );
    }

    #[test]
    fn each_partition_has_an_equal_share_of_the_slots_in_a_range_of_its_own() {
        // 10 slots over 4 partitions: 0-2 | 3-5 | 6-7 | 8-9.
        let slots = |p: u32| (0..).map_while(|k| slot(10, p, 4, k)).collect::<Vec<u64>>();
        let all: Vec<Vec<u64>> = (0..4).map(slots).collect();
        assert_eq!(all, [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7], vec![8, 9]]);
        // More partitions than test users: the highest have no share.
        assert_eq!(slot(3, 3, 4, 0), None);
        assert_eq!(slot(3, 2, 4, 0), Some(2));
        assert_eq!(slot(u64::MAX, 1, 4, u64::MAX), None, "no overflow");
        // Variants alternate within a partition and are exact overall (7 users, 3 partitions,
        // 2 variants: A B A | B A | B A → 4 A, 3 B).
        let variants: Vec<usize> = (0..3)
            .flat_map(|p| (0..).map_while(move |k| slot(7, p, 3, k)))
            .map(|slot| alternate(slot, 2))
            .collect();
        assert_eq!(variants, [0, 1, 0, 1, 0, 1, 0]);
    }

    /// A candidate from `source` (partition, partitions).
    fn from(source: Option<(i32, i32)>) -> Candidate {
        Candidate {
            campaign_id: "c".into(),
            app_id: "a".into(),
            run_id: "trigger".into(),
            user_id: "u".into(),
            qualified_at_ms: 0,
            trigger_event: None,
            event_properties: Default::default(),
            profile: Default::default(),
            devices: Vec::new(),
            timezone: None,
            language: None,
            source: source.map(|(partition, partitions)| crate::model::SourcePartition {
                partition,
                partitions,
            }),
        }
    }

    #[test]
    fn a_new_division_numbers_the_places_its_predecessor_left_unused_so_every_place_is_taken_once()
    {
        let candidate = |partition, partitions| from(Some((partition, partitions)));
        let mut test = TriggeredTest::default();
        let mut places = Vec::new();
        let mut take = |test: &mut TriggeredTest, partition: i32, partitions: i32| {
            let p = test.partition(&candidate(partition, partitions))?;
            let place = test.next_place(8, p)?;
            *test.divisions.last_mut().unwrap().taken.entry(p).or_default() += 1;
            places.push(place);
            Some(place)
        };
        // 8 places over 2 partitions (0-3 | 4-7): each takes its first.
        assert_eq!(take(&mut test, 0, 2), Some(0));
        assert_eq!(take(&mut test, 1, 2), Some(4));
        // Re-partitioned to 4: the 6 unused places (1 2 3 5 6 7) are divided 2, 2, 1, 1.
        assert_eq!(take(&mut test, 3, 4), Some(7));
        assert_eq!(take(&mut test, 0, 4), Some(1));
        assert_eq!(take(&mut test, 1, 2), Some(3), "an older candidate: partition 1 of 4");
        assert_eq!(take(&mut test, 1, 4), Some(5));
        assert_eq!(take(&mut test, 1, 4), None, "partition 1's share is full");
        assert_eq!(take(&mut test, 3, 4), None);
        assert_eq!(take(&mut test, 4, 4), None, "not a partition of the count it declares");
        // The share wait passed: the two places left (2 and 6) go to anyone.
        test.pool();
        assert_eq!(take(&mut test, 3, 4), Some(2));
        assert_eq!(take(&mut test, 1, 4), Some(6));
        assert_eq!(take(&mut test, 0, 4), None);
        assert_eq!(test.tested(), 8);
        places.sort_unstable();
        assert_eq!(places, (0..8).collect::<Vec<u64>>(), "every place once: variants exact");
    }

    #[test]
    fn a_candidate_naming_no_partition_does_not_fix_the_division() {
        let mut test = TriggeredTest::default();
        assert_eq!(test.partition(&from(None)), None);
        assert!(test.divisions.is_empty());
        assert_eq!(test.partition(&from(Some((2, 4)))), Some(2));
        assert_eq!(test.next_place(10, 2), Some(6));
    }

    #[test]
    fn alternation_is_strict() {
        let assigned: Vec<usize> = (0..7).map(|n| alternate(n, 3)).collect();
        assert_eq!(assigned, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn split_delivery_keeps_exact_proportions_at_every_point() {
        let mut split = SplitDelivery::new(&[50, 30, 20]);
        let mut counts = [0u64; 3];
        for sent in 1..=1_000u64 {
            counts[split.next_variant()] += 1;
            for (count, share) in counts.iter().zip([0.5, 0.3, 0.2]) {
                let exact = sent as f64 * share;
                assert!((*count as f64 - exact).abs() < 1.0 + 1e-9, "after {sent}: {counts:?}");
            }
        }
        assert_eq!(counts, [500, 300, 200]);
    }

    #[test]
    fn the_variant_of_a_global_index_is_the_single_task_round_robin_of_that_index() {
        for shares in [vec![70, 30], vec![50, 30, 20], vec![1, 99], vec![0, 100], vec![33, 33, 34]]
        {
            let mut split = SplitDelivery::new(&shares);
            for index in 0..1_000u64 {
                assert_eq!(SplitDelivery::at(&shares, index), split.next_variant(), "{shares:?}");
            }
            let split = Assignment::Split(shares.clone());
            assert_eq!(variant_at(&split, shares.len(), 7), Some(SplitDelivery::at(&shares, 7)));
        }
        let alternating: Vec<Option<usize>> =
            (0..5).map(|n| variant_at(&Assignment::Alternate, 3, n)).collect();
        assert_eq!(alternating, [Some(0), Some(1), Some(2), Some(0), Some(1)]);
        assert_eq!(variant_at(&Assignment::Single, 1, 3), None);
    }

    #[test]
    fn most_clicks_wins_and_ties_go_to_the_first_variant() {
        let results =
            [VariantResult { sent: 250, clicks: 10 }, VariantResult { sent: 250, clicks: 30 }];
        assert_eq!(
            pick_winner(&results, WinnerRule::MostClicks),
            Winner { variant: 1, p_value: None }
        );
        let tie =
            [VariantResult { sent: 250, clicks: 20 }, VariantResult { sent: 250, clicks: 20 }];
        assert_eq!(pick_winner(&tie, WinnerRule::MostClicks).variant, 0);
    }

    #[test]
    fn ctr_winner_reports_a_p_value() {
        // 4% vs 12% over 250 each: a clear difference.
        let clear =
            [VariantResult { sent: 250, clicks: 10 }, VariantResult { sent: 250, clicks: 30 }];
        let winner = pick_winner(&clear, WinnerRule::ClickThroughRate);
        assert_eq!(winner.variant, 1);
        let p = winner.p_value.unwrap();
        // chi² = 10.87 with 1 df → p ≈ 0.00098.
        assert!((p - 0.00098).abs() < 0.0002, "{p}");
        // No difference: p = 1.
        let same =
            [VariantResult { sent: 100, clicks: 10 }, VariantResult { sent: 100, clicks: 10 }];
        assert!(
            (pick_winner(&same, WinnerRule::ClickThroughRate).p_value.unwrap() - 1.0).abs() < 1e-6
        );
        // Three variants (df = 2).
        let three = [
            VariantResult { sent: 100, clicks: 10 },
            VariantResult { sent: 100, clicks: 10 },
            VariantResult { sent: 100, clicks: 25 },
        ];
        let winner = pick_winner(&three, WinnerRule::ClickThroughRate);
        assert_eq!(winner.variant, 2);
        assert!(winner.p_value.unwrap() < 0.01);
    }

    #[test]
    fn erfc_matches_reference_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-6);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-6);
    }
}
