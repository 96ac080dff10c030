//! A campaign throttle ("at most `max` per `per`") over shards, as window tokens granted by the
//! campaign's home (see `docs/architecture.md`, "Campaign throttle"). Windows are aligned to the
//! epoch (`[k·per, (k+1)·per)`), so the home and every shard name the same window alike.
//!
//! A shard sends a user's commands only on a token of the window its clock is in; without one
//! they queue in its throttle outbox (arrival order) and it asks its home for the window's
//! tokens (`TOKENS` report: how many it queues beyond the tokens it holds). The home grants
//! from the window's pool (`max` less what it granted in the window and what it sent itself),
//! in the transaction that counts the grant; a shard spends a token with the send and the
//! input offset of the record that brought it, in one transaction. Tokens a shard cannot use
//! go back at once (re-granted within the window); tokens of a window that ended are void. So
//! no window ever sends more than `max`, whatever crashes, restarts or rebalances: a token is
//! counted once when it is granted, and spent at most once, within its window.
//!
//! The home of a campaign with `options.shards` above 1 takes its own sends from the same pool
//! (a campaign an edit put on its home alone still has its shards' outboxes to drain); with one
//! shard the campaign keeps its own outbox as before (no coordination).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{timer_key, CampaignStage, CampaignState, OUTBOX, OUTBOX_TIMER};
use crate::{
    campaign::{Campaign, CampaignStatus, Throttle},
    model::{SendCommand, ShardPlan, ShardPlanKind, ShardReport, ShardReportKind},
    outbox::{Leave, Outbox},
    runtime::{ProcessError, ProcessorContext},
};

/// A shard's tokens: of one window, under one throttle `max`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ShardTokens {
    /// Start of the window the tokens are of (epoch ms).
    window: i64,
    /// The throttle's `max` they were granted under; spent only while it is the campaign's.
    max: u64,
    /// Tokens held, not yet spent.
    tokens: u64,
    /// The window a demand was sent home for and not answered by a grant yet (the home keeps
    /// what it could not grant and grants it when tokens come back): no second demand until
    /// then, so a burst asks once.
    asked: Option<i64>,
}

impl ShardTokens {
    /// Tokens the shard may spend in `window` under `throttle`.
    fn usable(&self, throttle: &Throttle, window: i64) -> u64 {
        if self.window == window && self.max == throttle.max {
            self.tokens
        } else {
            0
        }
    }
}

/// The home's pool of one window's tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct TokenPool {
    /// Start of the latest window (epoch ms).
    window: i64,
    /// The window length it is of.
    per_ms: i64,
    /// Tokens of the window granted to each shard, less those given back.
    granted: BTreeMap<u32, u64>,
    /// Tokens of the window the home spent on its own sends.
    used: u64,
    /// What each shard asked for in the window and was not granted yet.
    demand: BTreeMap<u32, u64>,
}

impl TokenPool {
    /// Moves the pool to `window` when it is later (or of another window length): every
    /// account of the new window starts empty.
    fn enter(&mut self, throttle: &Throttle, window: i64) {
        if self.per_ms != throttle.per_ms || window > self.window {
            *self = Self { window, per_ms: throttle.per_ms, ..Self::default() };
        }
    }

    /// Tokens of the window neither granted nor spent by the home.
    fn free(&self, throttle: &Throttle) -> u64 {
        let granted: u64 = self.granted.values().sum();
        throttle.max.saturating_sub(granted + self.used)
    }
}

/// Start of the window of `throttle` that `at` falls in.
fn window_of(throttle: &Throttle, at: i64) -> i64 {
    let per = throttle.per_ms.max(1);
    at.div_euclid(per) * per
}

/// `commands` stamped as leaving at `at`, within the window whose token they spend (a trigger's
/// event may be stamped a little ahead of this task's clock).
fn leaving_at(at: i64, commands: Vec<SendCommand>) -> Vec<SendCommand> {
    commands.into_iter().map(|c| SendCommand { created_at_ms: at, ..c }).collect()
}

/// The window a `TOKENS` record names (`run_id`: epoch ms), or a rejection naming the field.
fn named_window(campaign: &Campaign, run_id: Option<&str>) -> Result<i64, ProcessError> {
    run_id.and_then(|w| w.parse::<i64>().ok()).ok_or_else(|| {
        ProcessError::reject(format!(
            "a TOKENS record of campaign {}: run_id {run_id:?} is not a window start (epoch ms)",
            campaign.id
        ))
    })
}

impl CampaignStage {
    /// The throttle whose windows are shared out as tokens by the home: a campaign throttle of
    /// a campaign with more than one shard.
    pub(super) fn pooled(campaign: &Campaign) -> Option<Throttle> {
        campaign.options.throttle.filter(|_| campaign.options.shards > 1)
    }

    /// The campaign's throttle outbox at this place.
    fn token_outbox<'k>(throttle: Throttle, owner: &'k str, timer: &'k [u8]) -> Outbox<'k> {
        Outbox { store: OUTBOX, owner, timer, throttle }
    }

    /// Takes up to `wanted` tokens of the current window: a shard's held ones, or the home's
    /// free ones. Returns how many it took.
    fn take_tokens(
        ctx: &ProcessorContext<'_>,
        state: &mut CampaignState,
        campaign: &Campaign,
        throttle: &Throttle,
        wanted: u64,
    ) -> u64 {
        let window = window_of(throttle, ctx.effective_ms());
        if state.is_shard(campaign) {
            let taken = state.tokens.usable(throttle, window).min(wanted);
            state.tokens.tokens -= taken;
            taken
        } else {
            state.token_pool.enter(throttle, window);
            let taken = state.token_pool.free(throttle).min(wanted);
            state.token_pool.used += taken;
            taken
        }
    }

    /// Sends one user's commands on a token of the current window, or queues them behind the
    /// others and makes sure tokens are asked for.
    pub(super) fn dispatch_on_tokens(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        throttle: Throttle,
        commands: Vec<SendCommand>,
    ) -> Result<(), ProcessError> {
        if state.outbox.is_empty() && Self::take_tokens(ctx, state, campaign, &throttle, 1) == 1 {
            return self.send(ctx, campaign, state, &leaving_at(ctx.effective_ms(), commands));
        }
        let timer = timer_key(OUTBOX_TIMER, &state.key);
        Self::token_outbox(throttle, &state.key, &timer).push(ctx, &mut state.outbox, &commands)?;
        self.want_tokens(ctx, campaign, state, &throttle)
    }

    /// Sends queued users on the tokens of the current window (a grant arrived, or a window
    /// opened); asks for more while some wait, gives back what none needs.
    pub(super) fn release_on_tokens(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        throttle: Throttle,
    ) -> Result<(), ProcessError> {
        let at = ctx.effective_ms();
        let queued = state.outbox.len();
        let available = Self::take_tokens(ctx, state, campaign, &throttle, queued);
        let timer = timer_key(OUTBOX_TIMER, &state.key);
        let owner = state.key.clone();
        let mut queue = std::mem::take(&mut state.outbox);
        let sent = Self::token_outbox(throttle, &owner, &timer).take(
            ctx,
            &mut queue,
            available,
            |ctx, commands: Vec<SendCommand>| {
                self.send(ctx, campaign, state, &leaving_at(at, commands))?;
                Ok(Leave::Sent)
            },
        );
        state.outbox = queue;
        // Tokens taken for users that were not there after all go back where they came from.
        let unused = available - sent?;
        if state.is_shard(campaign) {
            state.tokens.tokens += unused;
        } else {
            state.token_pool.used -= unused;
        }
        if !state.outbox.is_empty() {
            return self.want_tokens(ctx, campaign, state, &throttle);
        }
        let window = window_of(&throttle, at);
        let held = state.tokens.usable(&throttle, window);
        if state.is_shard(campaign) && held > 0 {
            // Nobody here needs them this window: back to the home, for the other shards.
            state.tokens.tokens = 0;
            return self.token_report(ctx, campaign, state, window, held);
        }
        Ok(())
    }

    /// Users wait in the outbox: the window's end releases them (a timer), and a shard asks
    /// its home for tokens of the window, once per window.
    fn want_tokens(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        throttle: &Throttle,
    ) -> Result<(), ProcessError> {
        let window = window_of(throttle, ctx.effective_ms());
        ctx.schedule(window + throttle.per_ms.max(1), &timer_key(OUTBOX_TIMER, &state.key))?;
        if !state.is_shard(campaign) || state.tokens.asked == Some(window) {
            return Ok(());
        }
        state.tokens.asked = Some(window);
        self.token_report(ctx, campaign, state, window, 0)
    }

    /// Reports home what the shard's outbox needs beyond the tokens it holds in `window`, and
    /// gives back `returned` tokens of it.
    fn token_report(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        window: i64,
        returned: u64,
    ) -> Result<(), ProcessError> {
        let held = campaign.options.throttle.map_or(0, |t| state.tokens.usable(&t, window));
        let waiting = state.outbox.len().saturating_sub(held);
        self.report(ctx, campaign, state, ShardReportKind::Tokens, |r| {
            // All the campaign may have: a shard an edit took out of effect still drains.
            r.shards = campaign.options.shards.max(1) as i32;
            r.run_id = Some(window.to_string());
            r.waiting = waiting as i64;
            r.places = returned as i64;
        })
    }

    /// The home learns a shard's demand for tokens (or gets tokens back) and grants what the
    /// window has free.
    pub(super) fn on_token_report(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        report: &ShardReport,
    ) -> Result<(), ProcessError> {
        let window = named_window(campaign, report.run_id.as_deref())?;
        // A throttle an edit removed: the shards' outboxes leave unthrottled.
        let Some(throttle) = Self::pooled(campaign) else { return Ok(()) };
        let pool = &mut state.token_pool;
        pool.enter(&throttle, window_of(&throttle, ctx.effective_ms()));
        pool.enter(&throttle, window);
        let shard = report.shard as u32;
        if window == pool.window {
            let granted = pool.granted.entry(shard).or_default();
            *granted = granted.saturating_sub(report.places.max(0) as u64);
        }
        // A demand of an earlier window is served in the pool's (the shard's clock lags; it
        // spends them once its clock reaches the window).
        pool.demand.insert(shard, report.waiting.max(0) as u64);
        let mut free = pool.free(&throttle);
        let mut grants = Vec::new();
        for (shard, demand) in pool.demand.iter_mut().filter(|(_, d)| **d > 0) {
            let tokens = free.min(*demand);
            if tokens == 0 {
                break;
            }
            *demand -= tokens;
            free -= tokens;
            *pool.granted.entry(*shard).or_default() += tokens;
            grants.push((*shard, tokens));
        }
        let window = pool.window;
        for (shard, tokens) in grants {
            self.grant_tokens(ctx, campaign, &throttle, shard, window, tokens)?;
        }
        Ok(())
    }

    /// Sends shard `shard` `tokens` of `window` (counted in the pool in this transaction).
    fn grant_tokens(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        throttle: &Throttle,
        shard: u32,
        window: i64,
        tokens: u64,
    ) -> Result<(), ProcessError> {
        let plan = ShardPlan {
            campaign_id: campaign.id.clone(),
            app_id: campaign.app.clone(),
            run_id: window.to_string(),
            shard: shard as i32,
            kind: ShardPlanKind::Tokens,
            places: tokens as i64,
            test_from: 0,
            test_users: 0,
            test_total: 0,
            winner_id: None,
            limit: Some(throttle.max as i64),
            daily: None,
            timestamp_ms: ctx.timestamp_ms(),
        };
        let key = crate::campaign::shards::key(&campaign.id, shard);
        self.emit(ctx, &self.topics.campaign_flow, &key, &plan)
    }

    /// A shard receives tokens: of a window that ended they are void; of the current one its
    /// queued users leave on them now, in this transaction; of a later one (its clock lags the
    /// home's) they wait for the window.
    pub(super) fn on_tokens(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        plan: &ShardPlan,
    ) -> Result<(), ProcessError> {
        let window = named_window(campaign, Some(plan.run_id.as_str()))?;
        let Some(throttle) = Self::pooled(campaign) else { return Ok(()) };
        let now = window_of(&throttle, ctx.effective_ms());
        let (tokens, max) = (plan.places.max(0) as u64, plan.limit.unwrap_or(0).max(0) as u64);
        let held = &mut state.tokens;
        if window < now || window < held.window {
            return Ok(()); // void: its window is over
        }
        if held.window == window && held.max == max {
            held.tokens += tokens;
        } else {
            (held.window, held.max, held.tokens) = (window, max, tokens);
        }
        if window > now {
            return Ok(ctx.schedule(window, &timer_key(OUTBOX_TIMER, &state.key))?);
        }
        // The demand is answered: users queued from now on are asked for again.
        held.asked = None;
        if campaign.status == CampaignStatus::Active {
            self.release_on_tokens(ctx, campaign, state, throttle)?;
        }
        Ok(())
    }
}
