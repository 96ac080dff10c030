//! Scheduled runs in the campaign stage. Candidates of a run are buffered until every user-stage
//! partition has reported its [`RunTally`]; then the run is decided at once for the whole
//! audience: a qualified count above the safety limit sends nothing and raises an alert; the
//! per-run limit caps the users sent to; an A/B test sends its test population (split equally
//! between the variants) first and the remainder after the winner is chosen. Buffered users
//! leave in steps on a timer, so no transaction holds a whole broadcast.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    ab, ahead::Ahead, assignment_key, shards::plan_to, standby, timer_key, CampaignStage,
    CampaignState, ProcessError, RUN_BUFFER, RUN_TIMER,
};
use crate::{
    campaign::{sample, Assignment, Campaign},
    model::{
        scheduled_run_time, Candidate, LifecycleKind, RunTally, ShardPlan, ShardPlanKind,
        ShardReport, ShardReportKind,
    },
    runtime::{Entry, ProcessorContext},
};

/// Buffered users released per timer firing: one step, a small part of a transaction's work.
const RELEASE_STEP: u64 = 500;
/// Buffered users a test place given up looks at for the next user still to come (see
/// [`CampaignStage::next_to_come`]): a bounded part of a transaction's work.
const TO_COME_LOOK: usize = 5_000;

/// Where a scheduled run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum RunPhase {
    /// Buffering candidates until every partition reported.
    Collecting,
    /// A shard's buffer is complete and reported to the campaign's home, which plans the run.
    Reported,
    /// Sending buffered users.
    Releasing,
    /// The A/B test population is out; the rest waits for the winner.
    AwaitingWinner,
    /// The safety check stopped the run.
    Tripped,
    /// Everyone was released.
    Done,
    /// A shard sent its buffer home (its tasks scanned the run with different shard counts):
    /// users of the run who come later go home too.
    Forwarded,
}

/// The latest scheduled run of a campaign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RunState {
    pub(super) id: String,
    /// Audience counts reported so far, by user-stage partition.
    pub(super) tallies: BTreeMap<i32, i64>,
    /// User-stage partitions that must report.
    partitions: i32,
    /// Candidates buffered so far (sequence numbers `0..buffered`).
    pub(super) buffered: u64,
    /// Sequence number of the next candidate to release.
    next: u64,
    pub(super) phase: RunPhase,
    /// Users sent to in this run (per-run limit).
    pub(super) sent: u64,
    /// The first `test_users` released make up the A/B test population.
    pub(super) test_users: u64,
    /// A shard: users of the run it may send to, as its home planned (else the per-run limit).
    #[serde(default)]
    pub(super) places: Option<u64>,
    /// A shard: the global A/B test index of its first test user.
    #[serde(default)]
    pub(super) test_from: u64,
    /// A shard: the A/B test users over all shards (the test is on while it is above 0).
    #[serde(default)]
    pub(super) test_total: u64,
    /// The home of a sharded campaign: what each shard reported and was planned.
    #[serde(default)]
    pub(super) shards: super::shards::HomeRun,
    /// Users of this run whose place the send gate has yet to confirm (see `places`).
    #[serde(default)]
    pub(super) in_flight: u64,
    /// Releasing (or finishing) stopped to wait for places in flight; a settled place resumes it.
    #[serde(default)]
    waiting: bool,
    /// The latest local time of a test user selected before it (`timezone: user`): the test
    /// ends then.
    #[serde(default)]
    pub(super) test_ends_at: i64,
    /// Where the next read of the run's buffer starts (after the prefix): no entry is left
    /// below it. Released or dropped entries are deleted and their tombstones stay in RocksDB
    /// until a compaction; a read from the buffer's start stepped over all of them again at
    /// every step (a 2,000,000-user broadcast was quadratic: 96% of the release in scanning
    /// deleted keys). `None`: the buffer's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume: Option<Vec<u8>>,
    /// Users the run selected at its release who are still to come at their local time: it
    /// finishes once none is left (see `standby`).
    #[serde(default)]
    pub(super) awaited: u64,
    /// Places given up: their selected users did not come and no one else could take them.
    /// The run sends that many fewer; its limit counts them as taken (see `standby`).
    #[serde(default)]
    pub(super) forgone: u64,
    /// When the window of a run holding places for users still to come closes (see `standby`).
    #[serde(default)]
    pub(super) closes_at: Option<i64>,
    /// Where the run's buffer may hold a user still to come (a reservation) waiting for the
    /// winner (after the prefix): none below it (see [`CampaignStage::next_to_come`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to_come_from: Option<Vec<u8>>,
    /// A shard of a campaign in alternation or with a split: its block of the run's global
    /// assignment indices, (next, end), as its home planned. Each user sent without a sticky
    /// variant takes the next one, in release order, and gets its variant
    /// ([`ab::variant_at`]); an index whose user is not sent goes to the next user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) indices: Option<(u64, u64)>,
    /// A shard: places of the run its home passed to it (`PLACE` plans, cumulative), named in
    /// its `RUN_SENT` (see `standby`).
    #[serde(default)]
    pub(super) received: u64,
    /// A shard: its home said no place of the run will come any more: its users standing by
    /// are skipped (see `standby`).
    #[serde(default)]
    pub(super) stood_down: bool,
    /// A shard: ranges (next, end) of global assignment indices that came with places passed to
    /// it, taken in order once `indices` is spent (see `standby`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) spare: Vec<(u64, u64)>,
    /// The home: user-stage partitions whose scan went to shards, with their count (their
    /// tallies that say so; see [`CampaignStage::gather`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    scanned: BTreeMap<i32, i32>,
    /// The home of a run scanned with different shard counts: the shards asked to send their
    /// buffer home (0: none asked), and the audience counts of those that did.
    #[serde(default)]
    gathers: i32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    forwarded: BTreeMap<i32, i64>,
    /// A shard asked to send its buffer home: once this many partitions reported the run here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) forward_after: Option<u64>,
    /// A shard: a partition's tally named no shard count (an older user stage, which tells the
    /// home nothing: its home plans on the shards' reports alone, see `shards::plan_buffered`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) unnamed: bool,
    /// A shard: its home planned the run over its per-run sample with a total that leaves
    /// fewer places: its users go home, where the total refuses the last to come
    /// (`placed::cut_at_home`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) total_at_home: bool,
}

impl RunState {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            tallies: BTreeMap::new(),
            partitions: i32::MAX,
            buffered: 0,
            next: 0,
            phase: RunPhase::Collecting,
            sent: 0,
            test_users: 0,
            in_flight: 0,
            waiting: false,
            places: None,
            test_from: 0,
            test_total: 0,
            shards: Default::default(),
            test_ends_at: 0,
            resume: None,
            awaited: 0,
            forgone: 0,
            closes_at: None,
            to_come_from: None,
            indices: None,
            received: 0,
            stood_down: false,
            spare: Vec::new(),
            scanned: BTreeMap::new(),
            gathers: 0,
            forwarded: BTreeMap::new(),
            forward_after: None,
            unnamed: false,
            total_at_home: false,
        }
    }

    /// The run's audience: every partition's tally at this state, and at the home the counts
    /// of the shards that sent their buffer home.
    fn qualified(&self) -> i64 {
        self.tallies.values().sum::<i64>() + self.forwarded.values().sum::<i64>()
    }

    /// A shard asked to send its buffer home has every partition's part of it it waits for
    /// (reported home already or not: its home plans no run it gathers).
    pub(super) fn forwards(&self) -> bool {
        matches!(self.phase, RunPhase::Collecting | RunPhase::Reported)
            && self
                .forward_after
                .is_some_and(|after| after > 0 && self.tallies.len() as u64 >= after)
    }

    /// The home: whether it asked the run's shards to send it home (see
    /// [`CampaignStage::gather`]).
    pub(super) fn gathered(&self) -> bool {
        self.gathers > 0
    }

    /// The home: whether it asked shard `shard` to send run `run_id` home.
    pub(super) fn asked(&self, run_id: &str, shard: i32) -> bool {
        self.is(run_id) && (0..self.gathers).contains(&shard)
    }

    /// The home: the shard count every user-stage partition's notice of the run named, once
    /// all are in and agree (none went home): the run is its shards' (see `shards::plan`).
    pub(super) fn agreed_shards(&self) -> Option<i32> {
        let mut counts = self.scanned.values();
        let first = *counts.next()?;
        let all = self.scanned.len() >= self.partitions.max(0) as usize;
        (all && self.tallies.is_empty() && counts.all(|shards| *shards == first)).then_some(first)
    }

    /// Whether every user-stage partition reported the run, which has yet to be reported home
    /// or decided.
    pub(super) fn collected(&self) -> bool {
        self.phase == RunPhase::Collecting && self.tallies.len() >= self.partitions as usize
    }

    /// Whether this is run `run_id`.
    pub(super) fn is(&self, run_id: &str) -> bool {
        self.id == run_id
    }

    /// Whether the per-run limit is full while places of the run are still in flight (one may
    /// come back): the run's next user waits.
    pub(super) fn waits_for_places(&self, campaign: &Campaign) -> bool {
        self.in_flight > 0 && self.full(campaign)
    }

    /// Users the run may send to: a shard's planned places, else the per-run limit.
    fn limit(&self, campaign: &Campaign) -> Option<u64> {
        // Places planned under limits an edit took away since (the per-run limit, mid-run):
        // the rest is sent, as on one task (review s30 finding 3).
        let limits = &campaign.limits;
        let test = matches!(campaign.assignment, Assignment::AbTest(_));
        if limits.per_run.is_none() && limits.total.is_none() && limits.daily.is_none() && !test {
            return None;
        }
        self.places.or(limits.per_run)
    }

    /// Whether every place of the run's limit is taken (or given up, see `standby`).
    fn full(&self, campaign: &Campaign) -> bool {
        self.limit(campaign).is_some_and(|limit| self.sent + self.forgone >= limit)
    }

    /// Users of the run still in its buffer: at a shard whose places are all taken, they stand
    /// by for places other shards could not use (see `standby`).
    pub(super) fn standing(&self) -> u64 {
        self.buffered.saturating_sub(self.next)
    }

    /// Whether the run's next users stand by instead of being skipped (a shard whose places
    /// are all taken, of a run whose users are all there at its release: see `standby`).
    fn stands_by(&self, campaign: &Campaign, shard: bool) -> bool {
        shard && !sample::reserves(campaign) && !self.stood_down && self.full(campaign)
    }

    /// A shard's places of the run that no user took and none can take any more (its buffer
    /// is released, nothing in flight): given back to its home (see `standby`).
    pub(super) fn unused(&self, campaign: &Campaign) -> u64 {
        if sample::reserves(campaign) || self.standing() > 0 || self.in_flight > 0 {
            return 0;
        }
        self.places.unwrap_or_default().saturating_sub(self.sent + self.forgone)
    }

    /// Whether an earlier run (one a newer run replaced) has nothing left to wait for and has
    /// yet to finish (the home's view of a sharded run finishes on its shards' reports).
    pub(super) fn finishes(&self) -> bool {
        !self.finished() && self.awaited == 0 && self.in_flight == 0 && !self.coordinates()
    }

    /// Whether the run finished.
    pub(super) fn finished(&self) -> bool {
        self.phase == RunPhase::Done
    }

    /// Whether the run's A/B test population is out and the rest waits in its buffer for the
    /// winner.
    pub(super) fn awaits_winner(&self) -> bool {
        self.phase == RunPhase::AwaitingWinner
    }

    /// Whether the run's A/B test is on: its test users go first, the rest waits for a winner.
    fn testing(&self) -> bool {
        self.test_users > 0 || self.test_total > 0
    }

    /// Up to [`RELEASE_STEP`] entries of the run's buffer (`prefix`), in key order, from where
    /// the last read stopped.
    fn read_buffer(
        &self,
        ctx: &mut ProcessorContext<'_>,
        prefix: &[u8],
    ) -> Result<Vec<Entry>, ProcessError> {
        let from = [prefix, self.resume.as_deref().unwrap_or_default()].concat();
        Ok(ctx.store(RUN_BUFFER)?.prefix_from(prefix, &from, RELEASE_STEP as usize)?)
    }

    /// The buffer entry `key` (under `prefix`) was deleted: later reads start after it.
    fn deleted(&mut self, prefix: &[u8], key: &[u8]) {
        self.resume = Some([&key[prefix.len()..], &[0]].concat());
    }

    /// A candidate was buffered at `key` (under `prefix`): a key below where the next read
    /// starts (a sampled run's user ranked before users already released, e.g. one come at
    /// their local time or after their do-not-disturb hours) moves that start back to it.
    fn buffered_at(&mut self, prefix: &[u8], key: &[u8]) {
        let suffix = &key[prefix.len()..];
        if self.resume.as_deref().is_some_and(|resume| suffix < resume) {
            self.resume = Some(suffix.to_vec());
        }
    }

    /// The send gate decided a user of this run: the place is final, or (`returned`) given back.
    /// Returns whether the run's last place in flight settled.
    pub(super) fn settle(&mut self, returned: bool) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        if returned {
            self.sent = self.sent.saturating_sub(1);
        }
        self.in_flight == 0
    }
}

/// Where a run's buffer lives: the state's key (home or shard), then the run.
fn buffer_prefix(owner: &str, run: &str) -> Vec<u8> {
    [owner.as_bytes(), &[0], run.as_bytes(), &[0]].concat()
}

impl CampaignState {
    /// Whether this shard sent its buffer of run `run_id` home (see [`CampaignStage::gather`]):
    /// the records about the run's users that come later go home too.
    pub(super) fn run_went_home(&self, run_id: &str) -> bool {
        let home = |run: &RunState| run.is(run_id) && run.phase == RunPhase::Forwarded;
        self.went_home.as_deref() == Some(run_id) || self.run.as_ref().is_some_and(home)
    }
}

/// Where the users of `run` selected before their local time are kept (beside its buffer, not
/// in it), with the variant the run chose for them: until they come at their local time.
pub(super) fn selection_key(owner: &str, run: &str, user: &str) -> Vec<u8> {
    [owner.as_bytes(), &[0], run.as_bytes(), &[1], user.as_bytes()].concat()
}

/// Buffer key of a candidate of `run`: the run's prefix, then, where the run takes part of its
/// audience (a per-run limit or an A/B test population), the user's [`sample::rank`] in the run and
/// the user: released in key order, the first users are a uniform random sample of the run's
/// audience, whatever partition they came from or when, the same sample for the same run id.
/// Else its arrival number (every user is sent, in arrival order).
fn buffer_key(campaign: &Campaign, owner: &str, run: &RunState, user: &str) -> Vec<u8> {
    if sample::samples(campaign) {
        ranked_buffer_key(owner, &run.id, user)
    } else {
        [buffer_prefix(owner, &run.id).as_slice(), &run.buffered.to_be_bytes()].concat()
    }
}

/// The key of `user` in the buffer of a run `run_id` that samples its audience: by their rank.
fn ranked_buffer_key(owner: &str, run_id: &str, user: &str) -> Vec<u8> {
    let rank = sample::rank(run_id, user).to_be_bytes();
    [buffer_prefix(owner, run_id).as_slice(), &rank, user.as_bytes()].concat()
}

impl CampaignStage {
    /// The first user still to come (a [`sample::reservation`]) in the buffer of `run`, which
    /// waits for its A/B winner, taken out of it: the next user in the run's random order after
    /// the test population whose local time is still to come (users who came wait beside them,
    /// for the winner). Returns the user and their local time. Looks at [`TO_COME_LOOK`]
    /// buffered users at most per call, from where the last look stopped (no reservation
    /// arrives after the run's release, so none is ever below it).
    pub(super) fn next_to_come(
        &self,
        ctx: &mut ProcessorContext<'_>,
        owner: &str,
        run: &mut RunState,
    ) -> Result<Option<(String, i64)>, ProcessError> {
        let prefix = buffer_prefix(owner, &run.id);
        let resume = run.resume.clone().unwrap_or_default();
        let mut from = run.to_come_from.clone().unwrap_or_default().max(resume);
        let mut looked = 0;
        while looked < TO_COME_LOOK {
            let start = [prefix.as_slice(), &from].concat();
            let entries =
                ctx.store(RUN_BUFFER)?.prefix_from(&prefix, &start, RELEASE_STEP as usize)?;
            let Some((last, _)) = entries.last() else { break };
            from = [&last[prefix.len()..], &[0]].concat();
            looked += entries.len();
            for (key, value) in entries {
                let Ok(candidate) = serde_json::from_slice::<Candidate>(&value) else { continue };
                if sample::is_reservation(&candidate) {
                    ctx.store(RUN_BUFFER)?.delete(&key)?;
                    run.buffered = run.buffered.saturating_sub(1);
                    run.to_come_from = Some(key[prefix.len()..].to_vec());
                    return Ok(Some((candidate.user_id, candidate.qualified_at_ms)));
                }
            }
        }
        run.to_come_from = Some(from);
        Ok(None)
    }

    /// `user` of `run`, still to come, is reported not coming (see `standby::not_coming`):
    /// while the run's remainder waits for its A/B winner, their reservation leaves its buffer,
    /// so a test place passed on later goes to the next user still to come, not to them (it was
    /// lost: review s30b finding 1).
    pub(super) fn not_to_come(
        &self,
        ctx: &mut ProcessorContext<'_>,
        owner: &str,
        run: &mut RunState,
        user: &str,
    ) -> Result<(), ProcessError> {
        if !run.awaits_winner() {
            return Ok(());
        }
        let key = ranked_buffer_key(owner, &run.id, user);
        let mut store = ctx.store(RUN_BUFFER)?;
        let Some(value) = store.get(&key)? else { return Ok(()) };
        let reserved = serde_json::from_slice::<Candidate>(&value)
            .is_ok_and(|candidate| sample::is_reservation(&candidate));
        if reserved {
            store.delete(&key)?;
            run.buffered = run.buffered.saturating_sub(1);
        }
        Ok(())
    }

    /// A candidate of a scheduled run: buffered until the run is released; after it, sent
    /// within the per-run limit (users whose do-not-disturb hours delayed them).
    pub(super) fn on_run_candidate(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: Candidate,
    ) -> Result<(), ProcessError> {
        if state.run_went_home(&candidate.run_id) {
            return self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &candidate);
        }
        let reserved = sample::is_reservation(&candidate);
        let sampled = sample::samples(campaign);
        // A run that selected users at its release keeps them whatever an edit changed since
        // (its per-run limit taken away: review s30 finding 3).
        let selected_some = state.run_mut(&candidate.run_id).is_some_and(|run| run.awaited > 0);
        if (sampled || selected_some) && !reserved {
            // At their local time, a user the run selected at its release (see `select`).
            let key = selection_key(&state.key, &candidate.run_id, &candidate.user_id);
            let selected = ctx.store(RUN_BUFFER)?.get_as::<Option<usize>>(&key)?;
            if let Some(chosen) = selected {
                ctx.store(RUN_BUFFER)?.delete(&key)?;
                let (sent, in_flight) = (state.sent, state.in_flight);
                // Over shards, in alternation or a split: the next global index of the run's
                // (see `RunState::indices`), spent by the send only.
                let of_run = state.run_mut(&candidate.run_id).cloned();
                let indexed = match of_run {
                    Some(run) => {
                        self.global_index(ctx, campaign, state, &run, &candidate, chosen)?
                    }
                    None => None,
                };
                // Sent home (`placed`): the place is taken here, counted as the run's send.
                let of_run = state.run_mut(&candidate.run_id);
                let cut = of_run.is_some_and(|run| super::placed::cut_at_home(campaign, run));
                let home = cut || super::placed::goes_home(campaign, state, &candidate);
                if cut {
                    self.send_home(ctx, campaign, &candidate, indexed.or(chosen))?;
                } else {
                    self.deliver(ctx, campaign, state, &candidate, indexed.or(chosen))?;
                }
                let sent_here = state.sent > sent || home;
                if indexed.is_some() && sent_here {
                    if let Some(run) = state.run_mut(&candidate.run_id) {
                        if let Some((next, _)) = run.indices.as_mut() {
                            *next += 1;
                        }
                        run.next_indices(); // see `standby`
                    }
                }
                let came =
                    standby::Came { sent: sent_here, in_flight: state.in_flight > in_flight };
                return self.came(ctx, state, &candidate.run_id, came);
            }
            if sample::reserves(campaign) {
                if self.expired_came(ctx, state, &candidate.run_id, &candidate.user_id)? {
                    return Ok(()); // selected, expired at the window's close: counted then
                }
                // Not selected: no longer standing by for a place (see `standby`).
                self.off_standby(ctx, state, &candidate.run_id, &candidate.user_id)?;
            }
        }
        let Some(mut run) = self.current_run(ctx, state, &candidate.run_id)? else {
            let reason = match campaign.user_local() {
                // A user's local time of a run can come after the next run started (a daily
                // run's users span up to 26 hours): sent, outside the newer run's limit, unless
                // the run took a sample, which was taken at its release.
                Some(_) if !sampled && Self::late_leased(campaign, state) => {
                    return self.place_leased(ctx, campaign, state, candidate); // see `indices`
                }
                Some(_) if !sampled => {
                    return self.deliver(ctx, campaign, state, &candidate, None);
                }
                Some(_) if !reserved => "run_limit",
                _ => "run_over", // a newer run has started
            };
            state.skip(reason);
            return Ok(());
        };
        match run.phase {
            RunPhase::Collecting
            | RunPhase::Reported
            | RunPhase::Releasing
            | RunPhase::AwaitingWinner => {
                // One place in the buffer per user (a repeated candidate replaces its first).
                let key = buffer_key(campaign, &state.key, &run, &candidate.user_id);
                let mut buffer = ctx.store(RUN_BUFFER)?;
                if buffer.get(&key)?.is_none() {
                    run.buffered += 1;
                }
                buffer.put_as(&key, &candidate)?;
                run.buffered_at(&buffer_prefix(&state.key, &run.id), &key);
            }
            // A reservation is counted when its user comes, not itself.
            RunPhase::Tripped | RunPhase::Done if reserved => {}
            RunPhase::Tripped => state.skip("safety_check"),
            // At their local time, after the release, within a total limit: on a leased place
            // of it (see `indices::late_on_leases`), not counted in the run.
            RunPhase::Done
                if super::indices::late_on_leases(campaign)
                    && state.is_shard(campaign)
                    && !super::placed::sends_home(campaign, state, &candidate) =>
            {
                state.run = Some(run);
                return self.place_leased(ctx, campaign, state, candidate);
            }
            RunPhase::Forwarded => {
                state.run = Some(run);
                return self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &candidate);
            }
            RunPhase::Done => {
                let sent = run.sent;
                self.deliver_in_run(ctx, campaign, state, &mut run, &candidate, None)?;
                if run.sent != sent && state.is_shard(campaign) {
                    self.report_run_sent(ctx, campaign, state, &run)?;
                }
            }
        }
        state.run = Some(run);
        Ok(())
    }

    /// A user-stage partition finished its scan; the last one decides the run.
    pub(super) fn on_run_tally(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        tally: RunTally,
    ) -> Result<(), ProcessError> {
        let Some(campaign) = self.known(ctx, &tally.campaign_id, key)? else {
            let id = tally.campaign_id.clone();
            return Self::hold_ahead(ctx, &id, key, Ahead::Tally(tally), None); // see `ahead`
        };
        // To a shard an edit took away that holds the run (`places::answer_scope`), or to one
        // this task does not know yet: it waits for the definition (`ahead`).
        let scope = match Self::answer_scope(ctx, key, &campaign) {
            Ok(scope) => scope,
            Err(refused) => {
                return Self::hold_ahead(ctx, &campaign.id, key, Ahead::Tally(tally), Some(refused))
            }
        };
        self.apply_ahead(ctx, &campaign, &scope)?; // those that came before it first
        let mut state = self.load(ctx, &campaign, &scope)?;
        let Some(mut run) = self.current_run(ctx, &mut state, &tally.run_id)? else {
            return Ok(()); // the tally of a run a newer one replaced
        };
        run.partitions = tally.partitions;
        let shard = state.is_shard(&campaign);
        run.unnamed |= shard && tally.shards == 0; // an older user stage's (`shards::plan_buffered`)
        if !shard && tally.shards > 1 {
            // Its part is at the shards, which report here even of an edit this task never
            // reads (one undone before it read it).
            run.scanned.insert(tally.partition, tally.shards);
            state.widen_to(u32::try_from(tally.shards).unwrap_or(0));
        } else {
            run.tallies.insert(tally.partition, tally.qualified);
        }
        // Not while places of earlier runs are in flight: the home plans on the sends the gate
        // confirmed, so it hears once they settled (`places`).
        if shard && run.collected() && state.in_flight == 0 {
            self.report_buffered(ctx, &campaign, &state, &mut run)?;
        } else if shard && run.forwards() && state.in_flight == 0 {
            self.forward_home(ctx, &campaign, &mut state, &mut run)?;
        } else if !shard {
            self.gather(ctx, &campaign, &mut state, &mut run, tally.timestamp_ms)?;
        }
        state.run = Some(run);
        self.save(ctx, &campaign, &mut state)
    }

    /// The home of a run decides it once every user-stage partition reported it here. Where
    /// some partitions' scans went to the campaign's shards and the others' here (an edit that
    /// changes the shards in effect, read by instances on both sides of the run's scan), or to
    /// different shard counts (`options.shards` itself edited so: 4 -> 8), it asks those shards
    /// to send their buffer of the run home (`Forward`: each once it has the tallies of the
    /// partitions that went to it), and decides once they all did (`Forwarded`): the run sends
    /// from the home, as on one task. A run whose every partition went to the same shards is
    /// theirs (`shards::plan_buffered`).
    pub(super) fn gather(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
        at: i64,
    ) -> Result<(), ProcessError> {
        let parts = run.tallies.keys().chain(run.scanned.keys()).collect::<BTreeSet<_>>().len();
        if run.phase != RunPhase::Collecting || parts < run.partitions as usize {
            return Ok(());
        }
        if !run.gathered() && run.agreed_shards().is_some() {
            return self.plan_buffered(ctx, campaign, state, run, at); // the shards' run
        }
        if run.gathers == 0 && !run.scanned.is_empty() {
            run.shards = Default::default(); // what shards reported of it: the home's run now
            run.gathers = run.scanned.values().copied().max().unwrap_or(0);
            for shard in 0..run.gathers {
                let after = run.scanned.values().filter(|shards| **shards > shard).count();
                let plan = ShardPlan {
                    places: after as i64,
                    ..plan_to(campaign, &run.id, shard, ShardPlanKind::Forward, at)
                };
                self.send_plan(ctx, campaign, &plan)?;
            }
        }
        if run.forwarded.len() >= run.gathers.max(0) as usize {
            self.decide(ctx, campaign, state, run, at)?;
        }
        Ok(())
    }

    /// The home: shard `report.shard` sent its buffer of the run home (see [`Self::gather`]).
    pub(super) fn on_forwarded(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        report: &ShardReport,
    ) -> Result<(), ProcessError> {
        let run_id = report.run_id.as_deref().unwrap_or_default();
        let Some(mut run) = state.run.take_if(|run| run.is(run_id)) else { return Ok(()) };
        if (0..run.gathers).contains(&report.shard) {
            run.forwarded.insert(report.shard, report.qualified);
            self.gather(ctx, campaign, state, &mut run, report.timestamp_ms)?;
        }
        state.run = Some(run);
        Ok(())
    }

    /// A shard asked to (see [`RunState::forwards`]) sends its buffer of the run home, a
    /// step of [`RELEASE_STEP`] users per transaction (each moved in the one that deletes it;
    /// the next step on the run's timer), then tells the home how many of its users matched;
    /// users of the run who come meanwhile or later go home too (`on_run_candidate`).
    pub(super) fn forward_home(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
    ) -> Result<(), ProcessError> {
        run.phase = RunPhase::Forwarded;
        state.went_home = Some(run.id.clone()); // after a newer run here too
        let prefix = buffer_prefix(&state.key, &run.id);
        let step = run.read_buffer(ctx, &prefix)?;
        let more = step.len() >= RELEASE_STEP as usize;
        for (key, value) in step {
            ctx.store(RUN_BUFFER)?.delete(&key)?;
            run.deleted(&prefix, &key);
            if let Ok(candidate) = serde_json::from_slice::<Candidate>(&value) {
                self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &candidate)?;
            }
        }
        if more {
            return Ok(ctx.schedule(ctx.now_ms(), &timer_key(RUN_TIMER, &state.key))?);
        }
        run.forward_after = None; // all went home
        run.next = run.buffered;
        let qualified: i64 = run.tallies.values().sum();
        self.report(ctx, campaign, state, ShardReportKind::Forwarded, |r| {
            r.run_id = Some(run.id.clone());
            r.qualified = qualified;
            r.reachable = run.buffered as i64;
        })
    }

    /// Schedules the next release step of a run that waits for places in flight or for its
    /// selected users, and finishes earlier runs with nothing left to wait for (see `standby`).
    pub(super) fn wake_run(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &CampaignState,
    ) -> Result<(), ProcessError> {
        let earlier = state.earlier.iter().any(RunState::finishes);
        if earlier || state.run.as_ref().is_some_and(|run| run.waiting) {
            ctx.schedule(ctx.now_ms(), &timer_key(RUN_TIMER, &state.key))?;
        }
        Ok(())
    }

    /// Releases the next step of buffered users (a timer, or the A/B winner being chosen), and
    /// of a triggered test's users waiting for its winner.
    pub(super) fn release_run(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        at: i64,
    ) -> Result<(), ProcessError> {
        self.release_test_waiting(ctx, campaign, state)?;
        self.finish_earlier(ctx, campaign, state)?;
        let Some(mut run) = state.run.take() else { return Ok(()) };
        if run.phase == RunPhase::Forwarded && run.forward_after.is_some() {
            self.forward_home(ctx, campaign, state, &mut run)?; // its next step (`gather`)
        }
        if run.coordinates() || run.phase == RunPhase::Forwarded {
            state.run = Some(run); // its shards release it, or its home
            return Ok(());
        }
        if run.phase == RunPhase::AwaitingWinner && state.winner_id.is_some() {
            run.phase = RunPhase::Releasing;
        }
        if run.phase == RunPhase::Releasing {
            self.release_step(ctx, campaign, state, &mut run, at)?;
        }
        state.run = Some(run);
        Ok(())
    }

    /// Releases up to [`RELEASE_STEP`] buffered users; the next step follows on a timer. Users
    /// are timed when they leave (never at the run's past time: the winner's share leaves after
    /// the evaluation, and its expiry counts from then).
    pub(super) fn release_step(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
        at: i64,
    ) -> Result<(), ProcessError> {
        let at = at.max(ctx.effective_ms());
        let variants = campaign.what.len();
        let step_end = run.next + RELEASE_STEP;
        run.waiting = false;
        let prefix = buffer_prefix(&state.key, &run.id);
        let mut step = run.read_buffer(ctx, &prefix)?.into_iter();
        while run.next < run.buffered.min(step_end) {
            if run.next == run.test_users && run.testing() && state.winner_id.is_none() {
                run.phase = RunPhase::AwaitingWinner;
                if state.is_shard(campaign) {
                    return self.report_test_sent(ctx, campaign, state, run);
                }
                return self.start_evaluation(ctx, campaign, state, at.max(run.test_ends_at));
            }
            if self.waits_for_places(campaign, state, Some(run), at) {
                run.waiting = true; // a settled place schedules the next step
                return Ok(());
            }
            if run.stands_by(campaign, state.is_shard(campaign)) {
                break; // the rest stands by for places other shards cannot use
            }
            let Some((key, value)) = step.next() else {
                run.next = run.buffered; // nothing left buffered
                break;
            };
            ctx.store(RUN_BUFFER)?.delete(&key)?;
            run.deleted(&prefix, &key);
            // Written by `put_as` above: a value that does not decode is a defect, not a user.
            let candidate = serde_json::from_slice::<Candidate>(&value).map_err(|e| {
                crate::runtime::RuntimeError::StateValue {
                    store: RUN_BUFFER.to_string(),
                    reason: e.to_string(),
                }
            })?;
            // Test users take global indices, so the variants' counts are exact over shards.
            let index = run.test_from + run.next;
            let chosen = (run.next < run.test_users).then(|| ab::alternate(index, variants));
            run.next += 1;
            if sample::is_reservation(&candidate) {
                self.select(ctx, campaign, state, run, &candidate, chosen)?;
                continue;
            }
            let leaving =
                Candidate { qualified_at_ms: at.max(candidate.qualified_at_ms), ..candidate };
            self.deliver_in_run(ctx, campaign, state, run, &leaving, chosen)?;
        }
        let tested = run.next == run.test_users && run.testing() && state.winner_id.is_none();
        let shard = state.is_shard(campaign);
        if run.next < run.buffered && !run.stands_by(campaign, shard) {
            ctx.schedule(at, &timer_key(RUN_TIMER, &state.key))?;
        } else if state.is_shard(campaign) && tested {
            // Its whole buffer (maybe none) was its share of the test: the home still waits for
            // this shard's word before it chooses the winner.
            run.phase = RunPhase::AwaitingWinner;
            self.report_test_sent(ctx, campaign, state, run)?;
        } else if run.in_flight > 0 && shard && !sample::reserves(campaign) {
            // Its last places are in flight: one the gate refuses goes to its next user, or home.
            run.waiting = true;
        } else if !shard && (run.in_flight > 0 || run.awaited > 0) {
            // Its last places are in flight, or selected users are still to come: it finishes
            // with the sends the gate confirms and the users who come (see `standby`).
            run.waiting = true; // a settled place or a user coming schedules the next step
        } else {
            self.finish(ctx, campaign, state, run)?;
        }
        Ok(())
    }

    /// The run is over: a shard reports its users sent to its home, the home (or a campaign
    /// on one task) announces `RUN_FINISHED` with them.
    pub(super) fn finish(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &mut RunState,
    ) -> Result<(), ProcessError> {
        run.phase = RunPhase::Done;
        if state.is_shard(campaign) {
            // Places no user of this shard can take go home, for the shards with users standing
            // by (see `standby`).
            let unused = run.unused(campaign);
            if unused > 0 {
                self.give_back(ctx, campaign, state, run, unused)?;
            }
            return self.report_run_sent(ctx, campaign, state, run);
        }
        let details = BTreeMap::from([
            ("run_id".to_string(), run.id.clone()),
            ("sent".to_string(), run.sent.to_string()),
        ]);
        self.lifecycle(ctx, campaign, LifecycleKind::RunFinished, details)
    }

    /// A user released before their local time (a [`sample::reservation`]): within the per-run
    /// limit, selected (their place taken, their variant kept until they come, see
    /// `on_run_candidate`); else on standby for a place a selected user may give up (see
    /// `standby`); they are counted when they come.
    fn select(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &mut RunState,
        reservation: &Candidate,
        chosen: Option<usize>,
    ) -> Result<(), ProcessError> {
        self.closes(ctx, campaign, state, run)?;
        if run.full(campaign) {
            return self.stand_by(ctx, state, run, &reservation.user_id);
        }
        let key = selection_key(&state.key, &run.id, &reservation.user_id);
        ctx.store(RUN_BUFFER)?.put_as(&key, &chosen)?;
        run.sent += 1;
        run.awaited += 1;
        if chosen.is_some() {
            run.test_ends_at = run.test_ends_at.max(reservation.qualified_at_ms);
        }
        Ok(())
    }

    /// Sends one user of the run unless the per-run limit is reached.
    fn deliver_in_run(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
        candidate: &Candidate,
        chosen: Option<usize>,
    ) -> Result<(), ProcessError> {
        if run.full(campaign) {
            if run.in_flight > 0 && Self::may_wait(campaign, state) {
                return self.wait_for_places(ctx, state, candidate);
            }
            state.skip("run_limit");
            return Ok(());
        }
        let (sent, in_flight) = (state.sent, state.in_flight);
        let indexed = self.global_index(ctx, campaign, state, run, candidate, chosen)?;
        let spent = run.indices.is_none_or(|(next, end)| next >= end);
        if chosen.is_none() && indexed.is_none() && spent && Self::leases_alone(campaign, state) {
            // At their local time, after the shard's block of the run: a leased index (see
            // `indices`), at once or once the home grants one; not counted in the run (its
            // place is the lease's, settled there).
            return self.place_leased(ctx, campaign, state, candidate.clone());
        }
        // Sent home (`placed`): the place is taken here, counted as the run's send.
        let cut = super::placed::cut_at_home(campaign, run);
        let home = cut || super::placed::goes_home(campaign, state, candidate);
        if cut {
            self.send_home(ctx, campaign, candidate, indexed.or(chosen))?;
        } else {
            self.deliver(ctx, campaign, state, candidate, indexed.or(chosen))?;
        }
        if state.sent > sent || home {
            run.sent += 1;
            if let (Some(_), Some((next, _))) = (indexed, run.indices.as_mut()) {
                *next += 1; // spent by a send only: else the next user takes it
            }
            run.next_indices(); // see `standby`
        }
        if state.in_flight > in_flight {
            run.in_flight += 1;
        }
        Ok(())
    }

    /// The variant of the next global assignment index of the shard's block, for a user of the
    /// run without a sticky variant (see [`RunState::indices`]); `None` when the run chose one,
    /// or the shard has no index left (a place passed to it beyond its block: it assigns on its
    /// own count, as one task would, bounded by those places).
    fn global_index(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &RunState,
        candidate: &Candidate,
        chosen: Option<usize>,
    ) -> Result<Option<usize>, ProcessError> {
        let Some((next, _)) = run.indices.filter(|(next, end)| next < end) else {
            return Ok(None);
        };
        let sticky = assignment_key(&state.key, &candidate.user_id);
        if chosen.is_some() || Self::sticky(ctx, campaign, &sticky)?.is_some() {
            return Ok(None);
        }
        Ok(ab::variant_at(&campaign.assignment, campaign.what.len(), next))
    }

    /// Every partition reported: applies the safety check, plans the A/B test and starts
    /// releasing.
    pub(super) fn decide(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
        at: i64,
    ) -> Result<(), ProcessError> {
        let qualified = run.qualified();
        let mut details = BTreeMap::from([
            ("run_id".to_string(), run.id.clone()),
            ("qualified".to_string(), qualified.to_string()),
            ("reachable".to_string(), run.buffered.to_string()),
        ]);
        if let Some(limit) = campaign.limits.safety.filter(|limit| qualified > *limit as i64) {
            run.phase = RunPhase::Tripped;
            details.insert("safety_limit".into(), limit.to_string());
            tracing::warn!(campaign = %campaign.id, run = %run.id, qualified, limit, "safety check tripped: the run sends nothing");
            self.drop_buffer(ctx, state, run, "safety_check")?;
            return self.lifecycle(ctx, campaign, LifecycleKind::SafetyCheckTripped, details);
        }
        let reach = campaign.limits.per_run.map_or(run.buffered, |limit| limit.min(run.buffered));
        if let (Assignment::AbTest(test), None) = (&campaign.assignment, &state.winner_id) {
            let plan = ab::test_plan(reach, test.test_audience, campaign.what.len());
            run.test_users = plan.per_variant * campaign.what.len() as u64;
            details.insert("test_per_variant".into(), plan.per_variant.to_string());
            details.insert("after_winner".into(), plan.remainder.to_string());
        }
        run.phase = RunPhase::Releasing;
        self.lifecycle(ctx, campaign, LifecycleKind::RunStarted, details)?;
        self.release_step(ctx, campaign, state, run, at)
    }

    /// The run `run_id`: the current one, or a new one replacing an older current one (users
    /// still buffered in an unfinished older run are dropped and counted). `None` for a run
    /// older than the current one (a late tally or candidate), which must not replace it.
    pub(super) fn current_run(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        run_id: &str,
    ) -> Result<Option<RunState>, ProcessError> {
        match state.run.take() {
            Some(run) if run.id == run_id => Ok(Some(run)),
            Some(run) if scheduled_run_time(run_id) < scheduled_run_time(&run.id) => {
                state.run = Some(run);
                Ok(None)
            }
            Some(mut old) => {
                self.drop_buffer(ctx, state, &mut old, "run_superseded")?;
                // Its selected users still to come keep their places until its window closes; a
                // run that started and has yet to finish (its last places may be in flight) is
                // kept too: it finishes among the earlier runs once nothing of it is left to
                // settle, so every run started announces `RUN_FINISHED` once. The home's view of
                // a sharded run is kept until every shard reported it (see `standby`).
                let started = matches!(old.phase, RunPhase::Releasing | RunPhase::AwaitingWinner);
                if old.closes_at.is_some() || started {
                    old.shards.replaced();
                    state.earlier.push(old);
                    self.wake_run(ctx, state)?;
                }
                Ok(Some(RunState::new(run_id)))
            }
            None => Ok(Some(RunState::new(run_id))),
        }
    }

    /// Drops the users still buffered in `run`, counted under `reason`.
    pub(super) fn drop_buffer(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        run: &mut RunState,
        reason: &str,
    ) -> Result<(), ProcessError> {
        let prefix = buffer_prefix(&state.key, &run.id);
        loop {
            let left = run.read_buffer(ctx, &prefix)?;
            if left.is_empty() {
                break;
            }
            for (key, value) in left {
                ctx.store(RUN_BUFFER)?.delete(&key)?;
                run.deleted(&prefix, &key);
                // A reservation is counted when its user comes, not itself.
                let candidate = serde_json::from_slice::<Candidate>(&value).ok();
                if !candidate.is_some_and(|c| sample::is_reservation(&c)) {
                    state.skip(reason);
                }
            }
        }
        run.next = run.buffered;
        Ok(())
    }
}
