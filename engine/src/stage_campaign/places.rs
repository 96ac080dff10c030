//! A campaign's places in its limits (total, daily, per run). A notification of an app with
//! frequency caps leaves through the user stage's send gate, which may still refuse it. When the
//! campaign has limits, its place is held *in flight* until the gate confirms it
//! ([`SendConfirmed`]) or refuses it (a [`Skip`] carrying the run), and is then kept or given
//! back exactly where it was counted (the day it was counted on, the run it was sent in).
//!
//! While places are in flight, a candidate that finds a limit full waits instead of being
//! refused, in arrival order (a scheduled run stops releasing instead), remembering the limit
//! it waits on. A returned place goes to the first one waiting, and a newcomer queues behind
//! those waiting, so nobody is overtaken (after an edit raising a limit too). Once nothing is
//! in flight, those still waiting are refused with the limit's reason, and so is one waiting on
//! a daily limit whose day has passed (one waiting on the total waits across days). So limits
//! fill exactly: never over, and never under while qualified users are left. The queue is
//! durable and bounded per campaign by the settings' `limits.max_waiting`: a candidate that
//! finds it full is refused `waiting_full` (counted), the one case where a limit may end under
//! its value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    day_in,
    queue::{self, Waiting, WaitsOn},
    runs::RunState,
    timer_key, CampaignStage, CampaignState, IN_FLIGHT, WAITING, WAITING_TIMER,
};
use crate::{
    campaign::{Campaign, CampaignStatus},
    model::{is_triggered_run, Candidate, LifecycleKind, SendConfirmed, Skip},
    runtime::{ProcessError, ProcessorContext},
};

/// A notification whose place the send gate has yet to confirm (`in-flight` store).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InFlight {
    /// The day (campaign timezone) whose daily count it took.
    day: String,
    /// It took a place a shard holds of its home's leases: settled in the lease too (see
    /// `leases`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    leased: bool,
}

/// `in-flight` key: campaign, user, run (or trigger occurrence).
fn in_flight_key(campaign: &str, user: &str, run: &str) -> Vec<u8> {
    [campaign.as_bytes(), &[0], user.as_bytes(), &[0], run.as_bytes()].concat()
}

/// The reason a candidate is refused when the waiting queue is at its bound.
const WAITING_FULL: &str = "waiting_full";

/// A limit a candidate found full.
pub(super) enum FullLimit {
    /// The campaign's total limit.
    Total,
    /// The daily limit (of this many users).
    Daily(u64),
}

impl CampaignState {
    /// The total or daily limit a candidate at `at` finds full, as the limits are now (an edit
    /// may have raised or lowered them). Starts the day's count when `at` is on a later day.
    pub(super) fn full_limit(&mut self, campaign: &Campaign, at: i64) -> Option<FullLimit> {
        // At a home, places its shards still hold or have in flight are taken too, of the total
        // and of the day (an edit put the campaign on its home without a recount:
        // `options.shards` changed).
        let taken = self.sent + self.held_at_shards();
        if campaign.limits.total.is_some_and(|limit| taken >= limit) {
            return Some(FullLimit::Total);
        }
        let today = self.current_day(campaign, at);
        if self.day.0 != today {
            self.day = (today, 0);
        }
        // (At a home, its shards' sends of the day too: `sent_today`.)
        let taken_today = self.sent_today() + self.day_held_at_shards(&self.day.0);
        campaign.limits.daily.filter(|limit| taken_today >= *limit).map(FullLimit::Daily)
    }

    /// What a candidate that found `limit` full waits on (the daily limit of the day counted).
    fn waits_on(&self, limit: &FullLimit) -> WaitsOn {
        match limit {
            FullLimit::Total => WaitsOn::Total,
            FullLimit::Daily(_) => WaitsOn::Daily(self.day.0.clone()),
        }
    }

    /// The day (campaign timezone) a notification at `at` counts on: the day only moves
    /// forward. A candidate timed on an earlier day than the one counted (from a partition
    /// behind the others) counts on the current day: a past day's count is closed.
    fn current_day(&self, campaign: &Campaign, at: i64) -> String {
        let day = day_in(campaign, at);
        let date = |day: &str| chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok();
        if date(&day) > date(&self.day.0) {
            day
        } else {
            self.day.0.clone()
        }
    }
}

impl CampaignStage {
    /// Whether the notifications of `campaign` ask the send gate to confirm them: they leave
    /// through the gate (the app has caps) and the campaign has limits to fill exactly, or is a
    /// triggered A/B test over shards (a refused test send's index goes back to be granted
    /// again: the test counts only sends the gate let through, as one task's does).
    pub(super) fn confirms(&self, campaign: &Campaign) -> bool {
        let limits = &campaign.limits;
        let limited = limits.total.is_some() || limits.daily.is_some() || limits.per_run.is_some();
        let sharded_test = super::indices::triggered_test(campaign) && campaign.options.shards > 1;
        (limited || sharded_test) && self.settings.app(&campaign.app).has_caps()
    }

    /// Whether the next candidate at `at` must wait because a limit is full while places are
    /// in flight (`run`: the campaign's current scheduled run, when not in `state`). A stopped
    /// campaign waits for nothing.
    pub(super) fn waits_for_places(
        &self,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: Option<&RunState>,
        at: i64,
    ) -> bool {
        if campaign.status == CampaignStatus::Stopped {
            return false;
        }
        if Self::places_out(campaign, state) && state.full_limit(campaign, at).is_some() {
            return true;
        }
        run.is_some_and(|run| run.waits_for_places(campaign))
    }

    /// Whether a place in flight may come back to a candidate that found a limit full (the
    /// campaign is not stopped). A scheduled run's users wait for its places unbounded: each
    /// comes once, so the run bounds them.
    pub(super) fn may_wait(campaign: &Campaign, state: &CampaignState) -> bool {
        campaign.status != CampaignStatus::Stopped && Self::places_out(campaign, state)
    }

    /// Whether places counted taken may come back: in flight at the send gate, or, at a home,
    /// held by its shards (an edit put the campaign on its home alone while they held places
    /// or had them in flight: they give back those the gate refuses, see `leases`).
    fn places_out(campaign: &Campaign, state: &CampaignState) -> bool {
        let at_shards = !state.is_shard(campaign)
            && (state.held_at_shards() > 0 || state.day_held_at_shards(&state.day.0) > 0);
        state.in_flight > 0 || at_shards
    }

    /// A candidate found `limit` full: while places are in flight (one may come back) it waits
    /// for one, or is refused `waiting_full` when the queue is at its bound. Returns false when
    /// no place can come back (nothing in flight, or the campaign is stopped): the limit
    /// refuses it.
    pub(super) fn wait_for_a_place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: &Candidate,
        limit: &FullLimit,
    ) -> Result<bool, ProcessError> {
        if !Self::may_wait(campaign, state) {
            return Ok(false);
        }
        if state.waiting >= self.settings.max_waiting() {
            state.skip(WAITING_FULL);
            return Ok(true);
        }
        let waits_on = Some(state.waits_on(limit));
        Self::enqueue(ctx, state, Waiting { candidate: candidate.clone(), waits_on })?;
        Ok(true)
    }

    /// Whether a newcomer must queue behind the candidates already waiting (an edit raised or
    /// removed the limit they wait on, or a returned place is about to go to them), so that it
    /// does not overtake them: a triggered candidate at the campaign's home, while the queue
    /// has room.
    pub(super) fn queues_behind(&self, campaign: &Campaign, state: &CampaignState) -> bool {
        state.waiting > 0
            && state.waiting < self.settings.max_waiting()
            && campaign.status == CampaignStatus::Active
            && !state.is_shard(campaign)
    }

    /// Queues a newcomer behind those waiting (see [`Self::queues_behind`]); they all leave in
    /// order on the next step.
    pub(super) fn queue_behind(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        candidate: Candidate,
    ) -> Result<(), ProcessError> {
        Self::enqueue(ctx, state, Waiting { candidate, waits_on: Some(WaitsOn::Turn) })?;
        ctx.schedule(ctx.now_ms(), &timer_key(WAITING_TIMER, &state.key))?;
        Ok(())
    }

    /// Keeps `candidate`, in arrival order, until a place in flight settles (or a recount of
    /// the leases ends).
    pub(super) fn wait_for_places(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        candidate: &Candidate,
    ) -> Result<(), ProcessError> {
        let waits_on = Some(WaitsOn::Turn);
        Self::enqueue(ctx, state, Waiting { candidate: candidate.clone(), waits_on })
    }

    /// Puts `waiting` at the end of the queue.
    fn enqueue(
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        waiting: Waiting,
    ) -> Result<(), ProcessError> {
        let key = queue::key(&state.key, state.waiting_seq);
        ctx.store(WAITING)?.put_as(&key, &waiting)?;
        state.waiting_seq += 1;
        state.waiting += 1;
        Ok(())
    }

    /// Looks at the waiting candidates in arrival order: each leaves (to be sent, or refused
    /// by the limit when nothing is in flight any more) until one must still wait; one waiting
    /// on a daily limit whose day has passed is refused. The next step follows on a timer.
    pub(super) fn release_waiting(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        let step = queue::next_entries::<Waiting>(ctx, WAITING, &state.key)?;
        state.waiting = state.waiting.saturating_sub(step.unreadable);
        let now = ctx.effective_ms();
        let today = state.current_day(campaign, now);
        for (key, mut waiting) in step.entries {
            let candidate = &waiting.candidate;
            // Its day's places are gone: a daily campaign does not send it a day late.
            let day_passed = match &waiting.waits_on {
                Some(WaitsOn::Daily(day)) => *day != today,
                Some(WaitsOn::Total | WaitsOn::Turn) => false,
                // Queued by an older version: the limit it waits on is not known.
                None => {
                    campaign.limits.daily.is_some()
                        && day_in(campaign, candidate.qualified_at_ms) != today
                }
            };
            let run = state.run.clone().filter(|run| run.is(&candidate.run_id));
            if !day_passed && self.waits_for_places(campaign, state, run.as_ref(), now) {
                // It waits on the limit full now (a day may have passed since it came).
                let waits_on = state.full_limit(campaign, now).map(|l| state.waits_on(&l));
                if waits_on.is_some() && waits_on != waiting.waits_on {
                    waiting.waits_on = waits_on;
                    ctx.store(WAITING)?.put_as(&key, &waiting)?;
                }
                return Ok(());
            }
            ctx.store(WAITING)?.delete(&key)?;
            state.waiting = state.waiting.saturating_sub(1);
            if day_passed {
                state.skip("daily_limit");
                continue;
            }
            let candidate = waiting.candidate;
            let leaving =
                Candidate { qualified_at_ms: candidate.qualified_at_ms.max(now), ..candidate };
            self.place(ctx, campaign, state, leaving)?;
        }
        if step.more {
            ctx.schedule(ctx.now_ms(), &timer_key(WAITING_TIMER, &state.key))?;
        }
        Ok(())
    }

    /// Counts a user's notification that left, holding its place in flight when `confirm`.
    pub(super) fn take_place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: &Candidate,
        confirm: bool,
    ) -> Result<(), ProcessError> {
        state.sent += 1;
        state.day.1 += 1;
        if confirm {
            let key = in_flight_key(&state.key, &candidate.user_id, &candidate.run_id);
            let mut store = ctx.store(IN_FLIGHT)?;
            if store.get(&key)?.is_none() {
                store.put_as(&key, &InFlight { day: state.day.0.clone(), leased: false })?;
                state.in_flight += 1;
            }
        }
        self.announce_total_limit(ctx, campaign, state)
    }

    /// The state the send gate's answer keyed `key` goes to: as any record's (see
    /// `super::scope`), or a shard an edit took away that holds state (its places in flight
    /// settle there: `campaign::shards::answer_key`).
    pub(super) fn answer_scope(
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        campaign: &Campaign,
    ) -> Result<String, ProcessError> {
        let scoped = super::scope(key, campaign);
        let Some(former) = key.filter(|key| {
            scoped.is_err() && crate::campaign::shards::named_shard(key, campaign).is_some()
        }) else {
            return scoped;
        };
        match ctx.store(super::STATE)?.get(former)? {
            Some(_) => Ok(String::from_utf8_lossy(former).into_owned()),
            None => scoped,
        }
    }

    /// The send gate let a notification leave: its place is final.
    pub(super) fn on_confirmed(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        confirmed: SendConfirmed,
    ) -> Result<(), ProcessError> {
        let Some(campaign) = self.known(ctx, &confirmed.campaign_id, key)? else {
            return Ok(());
        };
        let scope = Self::answer_scope(ctx, key, &campaign)?;
        let mut state = self.load(ctx, &campaign, &scope)?;
        let (user, run) = (&confirmed.user_id, &confirmed.run_id);
        Self::settle_index(ctx, &mut state, user, run, false)?; // see `indices`
        if self.settle(ctx, &campaign, &mut state, user, run, false)? {
            self.announce_total_limit(ctx, &campaign, &mut state)?;
        }
        self.save(ctx, &campaign, &mut state)
    }

    /// The send gate refused a notification: gives its place back where it was counted.
    /// Returns false for a notification that did not ask for confirmation.
    pub(super) fn return_place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        skip: &Skip,
    ) -> Result<bool, ProcessError> {
        let Some(run) = skip.run_id.as_deref() else { return Ok(false) };
        self.settle(ctx, campaign, state, &skip.user_id, run, true)
    }

    /// Marks the place in flight of (`user`, `run`) as one of the shard's leased places; returns
    /// the day it is of, or `None` when no place of it is in flight.
    pub(super) fn mark_leased(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &CampaignState,
        user: &str,
        run: &str,
    ) -> Result<Option<String>, ProcessError> {
        let key = in_flight_key(&state.key, user, run);
        let Some(place) = ctx.store(IN_FLIGHT)?.get_as::<InFlight>(&key)? else {
            return Ok(None);
        };
        let day = place.day.clone();
        ctx.store(IN_FLIGHT)?.put_as(&key, &InFlight { leased: true, ..place })?;
        Ok(Some(day))
    }

    /// Settles the place in flight of (`user`, `run`), giving it back when `returned`, and
    /// wakes whatever waits for places when a place came back or nothing is in flight any
    /// more. Returns false when no such place is in flight (already settled).
    pub(super) fn settle(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        user: &str,
        run: &str,
        returned: bool,
    ) -> Result<bool, ProcessError> {
        let key = in_flight_key(&state.key, user, run);
        let Some(place) = ctx.store(IN_FLIGHT)?.get_as::<InFlight>(&key)? else {
            return Ok(false);
        };
        ctx.store(IN_FLIGHT)?.delete(&key)?;
        state.in_flight = state.in_flight.saturating_sub(1);
        if returned {
            state.sent = state.sent.saturating_sub(1);
            if state.day.0 == place.day {
                state.day.1 = state.day.1.saturating_sub(1);
            }
        }
        if place.leased {
            // Spent for good, or back to the shard's lease (see `leases`).
            self.settle_leased(ctx, campaign, state, &place.day, returned)?;
        }
        let mut run_settled = false;
        // A leased place of a scheduled run's user (an index leased alone, see `indices`) is
        // not counted in the run.
        if let Some(of_run) = state.run_mut(run).filter(|_| !is_triggered_run(run) && !place.leased)
        {
            run_settled = of_run.settle(returned);
        }
        if state.in_flight == 0 && state.is_shard(campaign) {
            // A shard's run buffer complete while places of earlier runs were in flight is
            // reported home now (see `runs`): its home counts every send of theirs.
            if let Some(mut of_run) = state.run.take_if(|run| run.collected()) {
                self.report_buffered(ctx, campaign, state, &mut of_run)?;
                state.run = Some(of_run);
            } else if let Some(mut of_run) = state.run.take_if(|run| run.forwards()) {
                self.forward_home(ctx, campaign, state, &mut of_run)?; // see `runs::gather`
                state.run = Some(of_run);
            }
        }
        if returned || state.in_flight == 0 {
            if state.waiting > 0 {
                ctx.schedule(ctx.now_ms(), &timer_key(WAITING_TIMER, &state.key))?;
            }
            self.wake_run(ctx, state)?;
        } else if run_settled {
            self.wake_run(ctx, state)?;
        }
        Ok(true)
    }

    /// Announces `LIMIT_REACHED` once per total limit (an edit may raise it) and `COMPLETED`
    /// once, when the total limit is full and final (no place in flight that could come back).
    pub(super) fn announce_total_limit(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        let Some(limit) = campaign.limits.total.filter(|limit| state.sent >= *limit) else {
            return Ok(());
        };
        // Only the home announces: a shard's count is its own share.
        if state.is_shard(campaign)
            || state.in_flight > 0
            || state.total_limit_announced == Some(limit)
        {
            return Ok(());
        }
        state.total_limit_announced = Some(limit);
        let sent = ("sent".to_string(), state.sent.to_string());
        let details = BTreeMap::from([("limit".to_string(), "total".to_string()), sent.clone()]);
        self.lifecycle(ctx, campaign, LifecycleKind::LimitReached, details)?;
        if state.completed {
            return Ok(());
        }
        state.completed = true;
        let reason = ("reason".to_string(), "total_limit".to_string());
        self.lifecycle(ctx, campaign, LifecycleKind::Completed, BTreeMap::from([reason, sent]))
    }
}
