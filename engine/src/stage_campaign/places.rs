//! A campaign's places in its limits (total, daily, per run). A notification of an app with
//! frequency caps leaves through the user stage's send gate, which may still refuse it. When the
//! campaign has limits, its place is held *in flight* until the gate confirms it
//! ([`SendConfirmed`]) or refuses it (a [`Skip`] carrying the run), and is then kept or given
//! back exactly where it was counted (the day it was counted on, the run it was sent in).
//!
//! While places are in flight, a candidate that finds a limit full waits instead of being
//! refused, in arrival order (a scheduled run stops releasing instead), as long as fewer wait
//! than places are in flight (the queue stays bounded). A returned place goes to the first one
//! waiting; once nothing is in flight, those still waiting are refused with the limit's reason,
//! and so is one waiting on a daily limit whose day has passed. So limits fill exactly: never
//! over, and never under while qualified users are left, with one exception of a triggered
//! campaign: a waiting candidate placed in its turn may be refused at the gate in turn, and a
//! candidate refused earlier because the queue was full is not asked again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    day_in, queue, runs::RunState, timer_key, CampaignStage, CampaignState, IN_FLIGHT, WAITING,
    WAITING_TIMER,
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
}

/// `in-flight` key: campaign, user, run (or trigger occurrence).
fn in_flight_key(campaign: &str, user: &str, run: &str) -> Vec<u8> {
    [campaign.as_bytes(), &[0], user.as_bytes(), &[0], run.as_bytes()].concat()
}

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
        if campaign.limits.total.is_some_and(|limit| self.sent >= limit) {
            return Some(FullLimit::Total);
        }
        let today = self.current_day(campaign, at);
        if self.day.0 != today {
            self.day = (today, 0);
        }
        campaign.limits.daily.filter(|limit| self.day.1 >= *limit).map(FullLimit::Daily)
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
    /// through the gate (the app has caps) and the campaign has limits to fill exactly.
    pub(super) fn confirms(&self, campaign: &Campaign) -> bool {
        let limits = &campaign.limits;
        let limited = limits.total.is_some() || limits.daily.is_some() || limits.per_run.is_some();
        limited && self.settings.app(&campaign.app).has_caps()
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
        if state.in_flight > 0 && state.full_limit(campaign, at).is_some() {
            return true;
        }
        run.is_some_and(|run| run.waits_for_places(campaign))
    }

    /// Whether a candidate that found a limit full may wait for a place in flight: only while
    /// fewer wait than places are in flight (each can come back once).
    pub(super) fn may_wait(campaign: &Campaign, state: &CampaignState) -> bool {
        campaign.status != CampaignStatus::Stopped && state.in_flight > state.waiting
    }

    /// Keeps `candidate`, in arrival order, until a place in flight settles.
    pub(super) fn wait_for_places(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        candidate: &Candidate,
    ) -> Result<(), ProcessError> {
        let key = queue::key(&state.key, state.waiting_seq);
        ctx.store(WAITING)?.put_as(&key, candidate)?;
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
        let step = queue::next_step(ctx, WAITING, &state.key)?;
        state.waiting = state.waiting.saturating_sub(step.unreadable);
        let now = ctx.effective_ms();
        let today = state.current_day(campaign, now);
        for (key, candidate) in step.entries {
            // Its day's places are gone: a daily campaign does not send it a day late.
            let day_passed = campaign.limits.daily.is_some()
                && day_in(campaign, candidate.qualified_at_ms) != today;
            let run = state.run.clone().filter(|run| run.is(&candidate.run_id));
            if !day_passed && self.waits_for_places(campaign, state, run.as_ref(), now) {
                return Ok(());
            }
            ctx.store(WAITING)?.delete(&key)?;
            state.waiting = state.waiting.saturating_sub(1);
            if day_passed {
                state.skip("daily_limit");
                continue;
            }
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
                store.put_as(&key, &InFlight { day: state.day.0.clone() })?;
                state.in_flight += 1;
            }
        }
        self.announce_total_limit(ctx, campaign, state)
    }

    /// The send gate let a notification leave: its place is final.
    pub(super) fn on_confirmed(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        confirmed: SendConfirmed,
    ) -> Result<(), ProcessError> {
        let Some(campaign) = self.campaigns.book().get(&confirmed.campaign_id).cloned() else {
            return Ok(());
        };
        let mut state = self.load(ctx, &campaign, &super::scope(key, &campaign)?)?;
        let (user, run) = (&confirmed.user_id, &confirmed.run_id);
        if self.settle(ctx, &mut state, user, run, false)? {
            self.announce_total_limit(ctx, &campaign, &mut state)?;
        }
        self.save(ctx, &campaign, &mut state)
    }

    /// The send gate refused a notification: gives its place back where it was counted.
    /// Returns false for a notification that did not ask for confirmation.
    pub(super) fn return_place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        skip: &Skip,
    ) -> Result<bool, ProcessError> {
        let Some(run) = skip.run_id.as_deref() else { return Ok(false) };
        self.settle(ctx, state, &skip.user_id, run, true)
    }

    /// Settles the place in flight of (`user`, `run`), giving it back when `returned`, and
    /// wakes whatever waits for places when a place came back or nothing is in flight any
    /// more. Returns false when no such place is in flight (already settled).
    pub(super) fn settle(
        &self,
        ctx: &mut ProcessorContext<'_>,
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
        let mut run_settled = false;
        if let Some(current) = state.run.as_mut().filter(|r| !is_triggered_run(run) && r.is(run)) {
            run_settled = current.settle(returned);
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
