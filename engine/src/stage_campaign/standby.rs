//! Places a run holds for users who come later, at their local time (`timezone: user` or
//! `best` with a per-run limit or an A/B test: see `campaign::sample::reserves`).
//!
//! At its release the run takes its users in its random order up to its limit; those still to
//! come are *selected*: each holds a place, with its variant, until they come. The users after
//! the limit whose local time is still to come *stand by*, in the same order. When the user
//! stage reports that a selected user does not come (no longer in the audience, not reachable,
//! capped, past the cut-off, do-not-disturb discarded: a [`Skip`] naming the run), the place
//! and its variant go to the first user still standing by, else the place is given up
//! (`forgone`): the run sends that many fewer and takes no one out of order for it. While an
//! A/B test's remainder waits in the run's buffer for the winner, nobody stands by: a test
//! place goes to the first user of that buffer still to come (`runs`' `next_to_come`), with
//! its variant, and the test ends at their local time if that is later. A user
//! leaves the standby when they come (counted `run_limit`) or are reported not coming. The
//! run's window closes [`CLOSE_MARGIN_MS`] after its last users' local time: selected users who
//! have not come by then give up their places (counted `expired`) and its standby is dropped.
//! An expired user is remembered for [`KEEP_EXPIRED_MS`] after the close, so one who still
//! comes later (do-not-disturb hours with `action: delay` past the window) or is reported not
//! coming is neither sent nor counted a second time.
//!
//! A run finishes once every selected user came or gave up their place and nothing of it is in
//! flight, so `RUN_FINISHED`'s `sent` is what it sent. A run the next one replaced before
//! then (a daily run's users west of UTC−10 come after the next run starts) is kept among the
//! campaign's earlier runs until its window closes, and finishes there.

use super::{
    ab,
    runs::{selection_key, RunPhase, RunState},
    shards, timer_key, CampaignStage, CampaignState, ProcessError, RUN_BUFFER,
};
use crate::{
    campaign::{sample, Assignment, Campaign},
    model::{scheduled_run_time, ShardPlan, ShardPlanKind, ShardReport, ShardReportKind, Skip},
    runtime::ProcessorContext,
};

/// Timer closing the windows of a campaign's runs that hold places (see the module's doc).
pub(super) const CLOSE_TIMER: &str = "run-close";
/// How long after its last users' local time a run's window closes: their records may still be
/// on their way from the user stage.
const CLOSE_MARGIN_MS: i64 = 3_600_000;
/// Entries a window's close looks at per timer firing (a step of a bounded transaction).
const CLOSE_STEP: usize = 500;
/// How long the users who expired at a window's close are remembered: a user comes at most a
/// do-not-disturb window (under a day) after their local time.
const KEEP_EXPIRED_MS: i64 = 48 * 3_600_000;

/// Where the users standing by in `run` are kept: beside its buffer and its selected users, in
/// the run's random order.
fn standby_prefix(owner: &str, run: &str) -> Vec<u8> {
    [owner.as_bytes(), &[0], run.as_bytes(), &[2]].concat()
}

/// Where `user` stands by in `run`.
fn standby_key(owner: &str, run: &str, user: &str) -> Vec<u8> {
    let rank = sample::rank(run, user).to_be_bytes();
    [standby_prefix(owner, run).as_slice(), &rank, user.as_bytes()].concat()
}

/// Where the users `run` selected who expired at its window's close are remembered.
fn expired_prefix(owner: &str, run: &str) -> Vec<u8> {
    [owner.as_bytes(), &[0], run.as_bytes(), &[3]].concat()
}

/// Where the users `run` selected are kept (see [`selection_key`]).
fn selected_prefix(owner: &str, run: &str) -> Vec<u8> {
    selection_key(owner, run, "")
}

/// What became of a selected user who came.
pub(super) struct Came {
    /// They were sent (their place is taken for good, or in flight).
    pub(super) sent: bool,
    /// Their place is in flight, until the send gate decides.
    pub(super) in_flight: bool,
}

impl shards::HomeRun {
    /// A newer run replaced this one before every shard reported it: the places given back
    /// and not yet passed on are given up (its shards no longer keep users standing by); it is
    /// kept until every shard reported it, and finishes then.
    pub(super) fn replaced(&mut self) {
        self.unplaced = 0;
        self.unplaced_indices.clear();
    }

    /// `shard` gives back `places` (`report`): never more than the home gave it and it has
    /// not given back yet (a forged or corrupt count is a dead letter, and moves no place).
    fn take_back(
        &mut self,
        campaign: &Campaign,
        report: &ShardReport,
        places: i64,
    ) -> Result<(), ProcessError> {
        let shard = report.shard;
        let holds = self.given.get(&shard).copied().unwrap_or(0)
            - self.left.get(&shard).copied().unwrap_or(0);
        let indices_fit = report.reachable <= places;
        if !self.given.is_empty() && (places > holds || !indices_fit) {
            return Err(ProcessError::reject(format!(
                "places: a PlaceLeft report of {} from shard {shard} gives back {places} places ({} indices) of run {}, more than the {holds} it holds",
                campaign.id,
                report.reachable,
                report.run_id.as_deref().unwrap_or_default(),
            )));
        }
        let left = self.left.entry(shard).or_default();
        *left = left.saturating_add(places);
        Ok(())
    }

    /// The home passes `places` to `shard`.
    fn give(&mut self, shard: i32, places: i64) {
        let given = self.given.entry(shard).or_default();
        *given = given.saturating_add(places);
    }

    /// Places passed to `shard` of a run a newer one replaced come back (it could not take
    /// them in any more): they answer that pass (see [`RunState::places_settled`]).
    fn bounced(&mut self, shard: i32, places: i64) {
        let taken_in = self.standing.get(&shard).map_or(0, |(_, taken_in)| *taken_in);
        if let Some(passed) = self.passed.get_mut(&shard) {
            *passed -= places.min((*passed - taken_in).max(0));
        }
    }
}

impl RunState {
    /// The home: whether no place of the run is unused or on its way: every shard has taken in
    /// every place passed to it (its latest `RUN_SENT` names them, and any `PLACE_LEFT` of it
    /// came before). Places given back that no shard has users standing by for are given up.
    pub(super) fn places_settled(&mut self, campaign: &Campaign) -> bool {
        let home = &mut self.shards;
        let answered = home.passed.iter().all(|(shard, passed)| {
            home.standing.get(shard).is_some_and(|(_, taken_in)| taken_in >= passed)
        });
        if !answered {
            return false;
        }
        if home.unplaced > 0 {
            tracing::debug!(campaign = %campaign.id, run = %self.id, places = home.unplaced, "places no shard could use are given up");
            home.unplaced = 0;
            home.unplaced_indices.clear();
        }
        true
    }

    /// A shard's block of global assignment indices is spent: the next range that came with
    /// places passed to it takes over.
    pub(super) fn next_indices(&mut self) {
        let spent = self.indices.is_none_or(|(next, end)| next >= end);
        if spent && !self.spare.is_empty() {
            self.indices = Some(self.spare.remove(0));
        }
    }

    /// One of the shard's global assignment indices left, the highest (those that came with
    /// places first), taken: it goes with a place this shard passes on (see `not_coming`).
    pub(super) fn give_one_index(&mut self) -> Option<u64> {
        self.spare.retain(|(next, end)| next < end);
        if let Some((_, end)) = self.spare.last_mut() {
            *end -= 1;
            let index = *end;
            self.spare.retain(|(next, end)| next < end);
            return Some(index);
        }
        let (_, end) = self.indices.as_mut().filter(|(next, end)| next < end)?;
        *end -= 1;
        Some(*end)
    }

    /// Up to `n` of the shard's global assignment indices left (its block's, then those that
    /// came with places), as ranges (first, count), taken: the shard sends no more of the run.
    /// Indices beyond `n` (left by users who kept a sticky variant) stay unused.
    fn take_indices(&mut self, n: u64) -> Vec<(u64, u64)> {
        let mut left = n;
        let mut ranges = Vec::new();
        for (next, end) in self.indices.iter_mut().chain(self.spare.iter_mut()) {
            let count = end.saturating_sub(*next).min(left);
            if count > 0 {
                ranges.push((*next, count));
                *next += count;
                left -= count;
            }
        }
        self.spare.clear();
        ranges
    }
}

impl CampaignState {
    /// The run `id`: the latest, or an earlier one still waiting for its selected users.
    pub(super) fn run_mut(&mut self, id: &str) -> Option<&mut RunState> {
        let latest = self.run.as_mut().filter(|run| run.is(id));
        latest.or_else(|| self.earlier.iter_mut().find(|run| run.is(id)))
    }
}

impl CampaignStage {
    /// The run's window closes after its users' local times (see the module's doc): a timer
    /// then, set when it first holds a place or puts a user on standby.
    pub(super) fn closes(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &mut RunState,
    ) -> Result<(), ProcessError> {
        if run.closes_at.is_some() {
            return Ok(());
        }
        let span = campaign.user_local().map_or(0, |local| local.span_ms());
        let start = scheduled_run_time(&run.id).unwrap_or_else(|| ctx.now_ms());
        let closes_at = start.saturating_add(span + CLOSE_MARGIN_MS);
        ctx.schedule(closes_at, &timer_key(CLOSE_TIMER, &state.key))?;
        run.closes_at = Some(closes_at);
        Ok(())
    }

    /// `user`, after the run's limit at its release, stands by for a place (see the module's
    /// doc).
    pub(super) fn stand_by(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &CampaignState,
        run: &RunState,
        user: &str,
    ) -> Result<(), ProcessError> {
        Ok(ctx.store(RUN_BUFFER)?.put(&standby_key(&state.key, &run.id, user), &[])?)
    }

    /// `user` came for `run` without a place: no longer standing by.
    pub(super) fn off_standby(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &CampaignState,
        run: &str,
        user: &str,
    ) -> Result<(), ProcessError> {
        Ok(ctx.store(RUN_BUFFER)?.delete(&standby_key(&state.key, run, user))?)
    }

    /// Whether `user` was selected in `run` and expired at its window's close (counted then):
    /// forgotten now, as they came or were reported.
    pub(super) fn expired_came(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &CampaignState,
        run: &str,
        user: &str,
    ) -> Result<bool, ProcessError> {
        let key = [expired_prefix(&state.key, run).as_slice(), user.as_bytes()].concat();
        let mut store = ctx.store(RUN_BUFFER)?;
        let expired = store.get(&key)?.is_some();
        if expired {
            store.delete(&key)?;
        }
        Ok(expired)
    }

    /// A user `run` selected came at their local time: their place is counted in flight like
    /// the run's others (settling it takes off what was counted); one who came but was not sent
    /// (the campaign stopped, a template error) gives it up. The run may finish.
    pub(super) fn came(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        run: &str,
        came: Came,
    ) -> Result<(), ProcessError> {
        if let Some(run) = state.run_mut(run) {
            run.awaited = run.awaited.saturating_sub(1);
            run.in_flight += u64::from(came.in_flight);
            if !came.sent {
                run.sent = run.sent.saturating_sub(1);
                run.forgone += 1;
            }
        }
        self.wake_run(ctx, state)
    }

    /// The user stage reports that `skip`'s user does not come for the run it names (see the
    /// module's doc): a place the run selected them for goes, with its variant, to the first
    /// user standing by, else is given up; a user standing by leaves the standby. Other skips
    /// (the send gate's, or of a campaign whose runs hold no places) name no such run. Returns
    /// whether the user was already counted (expired at the run's window close).
    pub(super) fn not_coming(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        skip: &Skip,
    ) -> Result<bool, ProcessError> {
        let from_user_stage = skip.variant_id.is_none() && !skip.returns_place;
        let Some(run) = skip.run_id.as_deref().filter(|_| from_user_stage) else {
            return Ok(false);
        };
        let owner = state.key.clone();
        let key = selection_key(&owner, run, &skip.user_id);
        let mut store = ctx.store(RUN_BUFFER)?;
        let Some(chosen) = store.get_as::<Option<usize>>(&key)? else {
            if self.expired_came(ctx, state, run, &skip.user_id)? {
                return Ok(true);
            }
            self.off_standby(ctx, state, run, &skip.user_id)?;
            if let Some(of_run) = state.run_mut(run) {
                self.not_to_come(ctx, &owner, of_run, &skip.user_id)?;
            }
            return Ok(false);
        };
        store.delete(&key)?;
        let prefix = standby_prefix(&owner, run);
        match store.prefix(&prefix, 1)?.pop() {
            Some((next, _)) => {
                // The place changes hands: the run's counts stay.
                store.delete(&next)?;
                let user = String::from_utf8_lossy(&next[prefix.len() + 8..]);
                store.put_as(&selection_key(&owner, run, &user), &chosen)?;
            }
            None if state.is_shard(campaign) => {
                // Over shards: to the next shard in the run's order, through the home.
                if let Some(run) = state.run_mut(run) {
                    run.awaited = run.awaited.saturating_sub(1);
                    run.sent = run.sent.saturating_sub(1);
                    run.places = run.places.map(|places| places.saturating_sub(1));
                }
                match chosen {
                    // A test place keeps its variant: to the next user still to come here,
                    // else on to the next shard with it (see `pass_test_place`).
                    Some(variant) if state.run_mut(run).is_some_and(|r| r.awaits_winner()) => {
                        self.pass_test_place(ctx, campaign, state, run, variant)?
                    }
                    // Alternation or a split: with one of the shard's global indices.
                    _ => {
                        let index = state.run_mut(run).and_then(RunState::give_one_index);
                        self.places_left(ctx, campaign, state, run, 1, index)?
                    }
                }
            }
            None => {
                // A test place while the rest waits for the winner: to the next user still to
                // come in the run's buffer, so the test keeps its size.
                let taker = match state.run_mut(run) {
                    Some(run) if chosen.is_some() && run.awaits_winner() => {
                        self.next_to_come(ctx, &owner, run)?
                    }
                    _ => None,
                };
                if let Some((user, local_ms)) = taker {
                    ctx.store(RUN_BUFFER)?.put_as(&selection_key(&owner, run, &user), &chosen)?;
                    // The test ends at its last user's local time.
                    let ends = state.test_full_at.is_some_and(|full_at| full_at < local_ms);
                    if ends {
                        self.start_evaluation(ctx, campaign, state, local_ms)?;
                    }
                } else if let Some(run) = state.run_mut(run) {
                    run.awaited = run.awaited.saturating_sub(1);
                    run.sent = run.sent.saturating_sub(1);
                    run.forgone += 1;
                }
            }
        }
        self.wake_run(ctx, state)?;
        Ok(false)
    }

    /// This shard has no one standing by for `places` places of `run`: they go home
    /// (`PlaceLeft`, with their count).
    pub(super) fn place_left(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &str,
        places: u64,
    ) -> Result<(), ProcessError> {
        self.places_left(ctx, campaign, state, run, places, None)
    }

    /// A shard: a place of `run`'s A/B test with its `variant` (a selected test user gave it up,
    /// or another shard passed it on), while the run's remainder waits for the winner. As on
    /// one task, the next user still to come in the run's order takes it with the variant: the
    /// first in this shard's buffer, else the first of the next shards' (shard s's users
    /// precede shard s+1's), through the home (`PlaceLeft` naming the variant as its index,
    /// `alternate(variant) = variant`). The test then ends at that user's local time if it is
    /// later: this shard reports its test sent again, and the home waits for it.
    fn pass_test_place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &str,
        variant: usize,
    ) -> Result<(), ProcessError> {
        let owner = state.key.clone();
        let taker = match state.run_mut(run) {
            Some(of_run) => self.next_to_come(ctx, &owner, of_run)?,
            None => None,
        };
        let Some((user, local_ms)) = taker else {
            return self.places_left(ctx, campaign, state, run, 1, Some(variant as u64));
        };
        ctx.store(RUN_BUFFER)?.put_as(&selection_key(&owner, run, &user), &Some(variant))?;
        let Some(of_run) = state.run_mut(run) else { return Ok(()) };
        of_run.awaited += 1;
        of_run.sent += 1;
        of_run.places = of_run.places.map(|places| places + 1);
        if local_ms > of_run.test_ends_at {
            of_run.test_ends_at = local_ms;
            let of_run = of_run.clone();
            self.report_test_sent(ctx, campaign, state, &of_run)?;
        }
        Ok(())
    }

    /// [`Self::place_left`], the places with the global assignment indices `from ..
    /// from + places` (`qualified`, and their count in `reachable`).
    fn places_left(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &str,
        places: u64,
        from: Option<u64>,
    ) -> Result<(), ProcessError> {
        let run = run.to_string();
        self.report(ctx, campaign, state, ShardReportKind::PlaceLeft, |r| {
            r.run_id = Some(run);
            r.places = places as i64;
            if let Some(from) = from {
                r.qualified = from as i64;
                r.reachable = places as i64;
            }
        })
    }

    /// A shard gives back `places` places of `run` no user of it took (see [`RunState::unused`])
    /// with as many of the global assignment indices it has left (alternation or a split): an
    /// index travels with its place, so the user who takes the place gets the variant one
    /// task's round robin gives that index. One `PlaceLeft` per range of indices, then one for
    /// places without.
    pub(super) fn give_back(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &mut RunState,
        places: u64,
    ) -> Result<(), ProcessError> {
        run.places = run.places.map(|planned| planned.saturating_sub(places));
        let mut left = places;
        for (from, count) in run.take_indices(places) {
            self.places_left(ctx, campaign, state, &run.id, count, Some(from))?;
            left -= count;
        }
        if left > 0 {
            self.place_left(ctx, campaign, state, &run.id, left)?;
        }
        Ok(())
    }

    /// The home: a shard gave back places of a run (`PlaceLeft`) no one there could use. A
    /// `timezone: user` run's place (one a selected user gave up) is offered to the next shard
    /// (shard s's users precede shard s+1's in the run's order); after the last shard it is
    /// given up, and `RUN_FINISHED` counted it when the shards released the run. Any other
    /// run's places wait at home for the shards with users standing by ([`Self::pass_on`]).
    pub(super) fn pass_place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        report: &ShardReport,
    ) -> Result<(), ProcessError> {
        let (Some(run), next) = (report.run_id.as_deref(), report.shard + 1) else {
            return Ok(());
        };
        let places = report.places.max(1);
        // The run's shards are those of its release, whatever an edit changed since: a shard no
        // longer in effect reports the campaign's count now (on its home alone, its own number
        // + 1), and the place was given up before the next shards' users standing by (review
        // s31 finding 1).
        let shards = state.run_mut(run).map_or(0, |of_run| of_run.release_shards());
        let shards = if shards > 0 { shards } else { report.shards };
        if !sample::reserves(campaign) {
            if let Some(at) = state.earlier.iter().position(|r| r.is(run) && r.coordinates()) {
                // A run a newer one replaced: its places are given up; a place passed to the
                // shard it could no longer take in answers that pass, and the run may finish.
                let mut of_run = state.earlier.remove(at);
                of_run.shards.take_back(campaign, report, places)?;
                of_run.shards.bounced(report.shard, places);
                self.finish_home_run(ctx, campaign, state, &mut of_run)?;
                if !of_run.finished() {
                    state.earlier.insert(at, of_run);
                }
                return Ok(());
            }
            let Some(run) = state.run.as_mut().filter(|r| r.is(run)) else {
                return Ok(()); // a run the home no longer knows: given up
            };
            run.shards.take_back(campaign, report, places)?;
            if run.finished() {
                return Ok(()); // given up
            }
            run.shards.unplaced += places; // at most what the shards were given
            if report.reachable > 0 {
                let indices = (report.qualified.max(0) as u64, report.reachable as u64);
                run.shards.unplaced_indices.push(indices);
            }
            return self.pass_on(ctx, campaign, run);
        }
        if next >= shards {
            tracing::debug!(campaign = %campaign.id, run, "a place no shard could take is given up");
            if let Some(of_run) = state.run_mut(run) {
                of_run.shards.take_back(campaign, report, places)?;
            }
            return Ok(());
        }
        if let Some(of_run) = state.run_mut(run) {
            of_run.shards.take_back(campaign, report, places)?;
            of_run.shards.give(next, places);
        }
        let plan = ShardPlan {
            places,
            // A test place's variant travels with it (see `pass_test_place`).
            test_from: report.qualified.max(0),
            test_users: report.reachable.max(0),
            ..shards::plan_to(campaign, run, next, ShardPlanKind::Place, ctx.timestamp_ms())
        };
        self.send_plan(ctx, campaign, &plan)
    }

    /// The home: a shard's `RUN_SENT` says how many of its users stand by and how many places
    /// passed to it it has taken in; places given back go on to the shards with users standing
    /// by ([`Self::pass_on`]).
    pub(super) fn standing_at(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        run: &mut RunState,
        report: &ShardReport,
    ) -> Result<(), ProcessError> {
        if sample::reserves(campaign) {
            return Ok(()); // places go from shard to shard (see `pass_place`)
        }
        run.shards.standing.insert(report.shard, (report.waiting.max(0), report.places.max(0)));
        self.pass_on(ctx, campaign, run)
    }

    /// The home passes the places given back and not yet placed to the first shards in the
    /// run's order (shard s's users precede shard s+1's) with users standing by that no place
    /// already on its way to them will take: `PLACE` plans with a count, each released there.
    fn pass_on(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        run: &mut RunState,
    ) -> Result<(), ProcessError> {
        let home = &mut run.shards;
        for (shard, (standing, taken_in)) in &home.standing {
            if home.unplaced <= 0 {
                break;
            }
            let passed = home.passed.entry(*shard).or_default();
            let free = standing - (*passed - taken_in).max(0);
            let places = free.min(home.unplaced);
            if places <= 0 {
                continue;
            }
            *passed += places;
            home.unplaced -= places;
            let given = home.given.entry(*shard).or_default();
            *given = given.saturating_add(places);
            // The indices that came back go with the places, in order: a plan per range.
            let mut left = places as u64;
            while left > 0 {
                let (from, count) = match home.unplaced_indices.first_mut() {
                    Some((from, count)) => {
                        let taken = (*count).min(left);
                        *from += taken;
                        *count -= taken;
                        (Some(*from - taken), taken)
                    }
                    None => (None, left),
                };
                home.unplaced_indices.retain(|(_, count)| *count > 0);
                left -= count;
                let at = ctx.timestamp_ms();
                let plan = ShardPlan {
                    places: count as i64,
                    test_from: from.unwrap_or_default() as i64,
                    test_users: from.map_or(0, |_| count as i64),
                    ..shards::plan_to(campaign, &run.id, *shard, ShardPlanKind::Place, at)
                };
                self.send_plan(ctx, campaign, &plan)?;
            }
        }
        Ok(())
    }

    /// The home finished the run: every shard with users standing by skips them (counted
    /// `run_limit`), told by a `PLACE` plan of no places.
    pub(super) fn stand_down(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        run: &RunState,
    ) -> Result<(), ProcessError> {
        for (shard, _) in run.shards.standing.iter().filter(|(_, (standing, _))| *standing > 0) {
            let plan = shards::plan_to(
                campaign,
                &run.id,
                *shard,
                ShardPlanKind::Place,
                ctx.timestamp_ms(),
            );
            self.send_plan(ctx, campaign, &plan)?;
        }
        Ok(())
    }

    /// A shard is passed `plan.places` places of a run (`Place`). A `timezone: user` run's first
    /// users standing by take them (selected, see the module's doc), the rest goes on
    /// (`PlaceLeft`). Any other run releases that many more of its users standing by in its
    /// buffer; a plan of no places says none will come any more: they are skipped.
    pub(super) fn take_passed_place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        plan: &ShardPlan,
    ) -> Result<(), ProcessError> {
        let run = plan.run_id.as_str();
        let mut places = plan.places.max(0) as u64;
        if !sample::reserves(campaign) {
            // `take_if`: a plan of another run leaves the current one in place.
            let Some(mut of_run) = state.run.take_if(|r| r.is(run)) else {
                if places == 0 {
                    return Ok(());
                }
                return self.place_left(ctx, campaign, state, run, places);
            };
            let result = self.release_passed(ctx, campaign, state, &mut of_run, places, plan);
            state.run = Some(of_run);
            return result;
        }
        let test_place =
            plan.test_users > 0 && matches!(campaign.assignment, Assignment::AbTest(_));
        if test_place && state.run_mut(run).is_some_and(|r| r.awaits_winner()) {
            let variant = ab::alternate(plan.test_from.max(0) as u64, campaign.what.len());
            return self.pass_test_place(ctx, campaign, state, run, variant);
        }
        places = places.max(1); // an older version passed one place with no count
        if plan.test_users > 0 && !test_place {
            // Alternation or a split: the places' global indices, taken once the shard's own
            // are spent (see `RunState::spare`).
            if let Some(of_run) = state.run_mut(run) {
                let from = plan.test_from.max(0) as u64;
                of_run.spare.push((from, from + plan.test_users as u64));
                of_run.next_indices();
            }
        }
        let owner = state.key.clone();
        let prefix = standby_prefix(&owner, run);
        while places > 0 {
            let mut store = ctx.store(RUN_BUFFER)?;
            let next = store.prefix(&prefix, 1)?.pop();
            let Some((next, _)) = next.filter(|_| state.run_mut(run).is_some()) else {
                break;
            };
            store.delete(&next)?;
            let user = String::from_utf8_lossy(&next[prefix.len() + 8..]);
            store.put_as(&selection_key(&owner, run, &user), &None::<usize>)?;
            if let Some(run) = state.run_mut(run) {
                run.awaited += 1;
                run.sent += 1;
                run.places = run.places.map(|places| places + 1);
            }
            places -= 1;
        }
        for _ in 0..places {
            // No one stands by here: on to the next shard, each with an index if any is left.
            let index = state.run_mut(run).and_then(RunState::give_one_index);
            self.places_left(ctx, campaign, state, run, 1, index)?;
        }
        Ok(())
    }

    /// A shard whose run's users stand by in its buffer is passed `places` more (none: no
    /// place will come any more, they are skipped): it releases them now, in the transaction
    /// that reads the plan (a paused campaign's on resume). Its next `RUN_SENT` names the
    /// places passed to it so far, so the home knows this plan was answered.
    fn release_passed(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
        places: u64,
        plan: &ShardPlan,
    ) -> Result<(), ProcessError> {
        if places == 0 {
            run.stood_down = true;
        } else {
            run.received = run.received.saturating_add(places);
            run.places = Some(run.places.unwrap_or_default().saturating_add(places));
            if plan.test_users > 0 {
                let from = plan.test_from.max(0) as u64;
                run.spare.push((from, from + plan.test_users as u64));
                run.next_indices();
            }
        }
        if run.finished() {
            run.phase = RunPhase::Releasing;
            if !super::is_held(campaign) {
                self.release_step(ctx, campaign, state, run, plan.timestamp_ms)?;
            }
        }
        Ok(())
    }

    /// Earlier runs with nothing left to wait for finish.
    pub(super) fn finish_earlier(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        let mut earlier = std::mem::take(&mut state.earlier);
        for run in earlier.iter_mut().filter(|run| run.finishes()) {
            self.finish(ctx, campaign, state, run)?;
        }
        // Kept until finished and closed.
        earlier.retain(|run| !run.finished() || run.closes_at.is_some());
        state.earlier = earlier;
        Ok(())
    }

    /// Closes the windows of the runs due by `at` (see the module's doc), a bounded step at a
    /// time: their selected users still to come give up their places, counted `expired`; their
    /// standby is dropped. A run whose window closed is no longer kept among the earlier ones.
    pub(super) fn close_runs(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        at: i64,
    ) -> Result<(), ProcessError> {
        let owner = state.key.clone();
        let due = |run: &RunState| run.closes_at.is_some_and(|closes_at| closes_at <= at);
        let runs: Vec<String> = state
            .run
            .iter()
            .chain(&state.earlier)
            .filter(|run| due(run))
            .map(|run| run.id.clone())
            .collect();
        let mut left = CLOSE_STEP;
        // Users who expired at windows closed long enough ago are forgotten.
        while let Some((id, _)) =
            state.expired.first().filter(|(_, closed)| closed + KEEP_EXPIRED_MS <= at).cloned()
        {
            let entries = ctx.store(RUN_BUFFER)?.prefix(&expired_prefix(&owner, &id), left)?;
            left -= entries.len();
            for (key, _) in entries {
                ctx.store(RUN_BUFFER)?.delete(&key)?;
            }
            if left == 0 {
                ctx.schedule(at, &timer_key(CLOSE_TIMER, &state.key))?;
                return Ok(());
            }
            state.expired.remove(0);
        }
        for id in &runs {
            let selected = selected_prefix(&owner, id);
            let expired = expired_prefix(&owner, id);
            let entries = ctx.store(RUN_BUFFER)?.prefix(&selected, left)?;
            left -= entries.len();
            for (key, _) in entries {
                let mut store = ctx.store(RUN_BUFFER)?;
                store.delete(&key)?;
                store.put(&[expired.as_slice(), &key[selected.len()..]].concat(), &[])?;
                state.skip("expired");
                if let Some(run) = state.run_mut(id) {
                    run.awaited = run.awaited.saturating_sub(1);
                    run.sent = run.sent.saturating_sub(1);
                    run.forgone += 1;
                }
            }
            let standby = standby_prefix(&owner, id);
            let entries = ctx.store(RUN_BUFFER)?.prefix(&standby, left)?;
            left -= entries.len();
            for (key, _) in entries {
                ctx.store(RUN_BUFFER)?.delete(&key)?;
            }
            if left == 0 {
                // More to look at: the next step follows at once.
                ctx.schedule(at, &timer_key(CLOSE_TIMER, &state.key))?;
                return self.wake_run(ctx, state);
            }
            if let Some(run) = state.run_mut(id) {
                run.closes_at = None;
            }
            state.expired.push((id.clone(), at));
        }
        self.finish_earlier(ctx, campaign, state)?;
        self.wake_run(ctx, state)
    }
}
