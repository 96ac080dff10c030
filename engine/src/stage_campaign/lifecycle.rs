//! Lifecycle events of a campaign that no record causes: an operator paused, resumed or stopped
//! it (a change of the campaigns table), or its end date passed; an edit also wakes the
//! candidates waiting for places. The task that owns the
//! campaign's partition announces each once, and remembers in the campaign's state what it
//! announced, so a restart or a moved task does not repeat it.

use std::{collections::BTreeMap, sync::Arc};

use super::{timer_key, CampaignStage, CampaignState, HELD_TIMER, RUN_TIMER, WAITING_TIMER};
use crate::{
    campaign::{shards as campaign_shards, Campaign, CampaignStatus},
    model::LifecycleKind,
    runtime::{ProcessError, ProcessorContext},
};

/// How often, on the task's clock, campaigns are checked for a passed end date.
const END_CHECK_MS: i64 = 1_000;

impl CampaignStage {
    /// Announces status changes and passed end dates of the campaigns this task owns: on every
    /// change of the campaigns table, and every [`END_CHECK_MS`] of the clock.
    pub(super) fn announce_lifecycle(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
    ) -> Result<(), ProcessError> {
        let now = ctx.now_ms();
        // A task that has read nothing yet has no clock (its time is before the epoch): what it
        // would write could not be stamped, so it announces once its clock runs.
        if now < 0 || (!self.table_changed && now < self.next_end_check) {
            return Ok(());
        }
        let edited = std::mem::take(&mut self.table_changed);
        self.next_end_check = now.saturating_add(END_CHECK_MS);
        // The campaign's home and each of its shards this task owns (a shard wakes its own
        // work; only the home announces): every shard `options.shards` allows, whether or not
        // the campaign's rules spread it now (an edit must not strand what a shard holds).
        let owned: Vec<(Arc<Campaign>, String)> = self
            .campaigns
            .book()
            .all()
            .flat_map(|campaign| {
                let shards = campaign.options.shards.max(1);
                let keys = (0..shards)
                    .filter(move |_| shards > 1)
                    .map(|shard| campaign_shards::key(&campaign.id, shard));
                std::iter::once(campaign.id.clone())
                    .chain(keys)
                    .map(move |key| (Arc::clone(campaign), key))
            })
            .filter(|(_, key)| ctx.owns_key(key.as_bytes()))
            .collect();
        if edited {
            self.keep_definitions(ctx, &owned)?;
        }
        for (campaign, key) in owned {
            if edited && key != campaign.id {
                // Plans that came before this task read the definition (see `shards`).
                self.apply_held_plans(ctx, &campaign, &key)?;
            }
            let mut state = self.load(ctx, &campaign, &key)?;
            let home = !state.is_shard(&campaign);
            let mut changed = false;
            if state.announced_status != Some(campaign.status) {
                let kind = match (state.announced_status, campaign.status) {
                    (_, CampaignStatus::Paused) => Some(LifecycleKind::Paused),
                    (Some(CampaignStatus::Paused), CampaignStatus::Active) => {
                        Some(LifecycleKind::Resumed)
                    }
                    (_, CampaignStatus::Stopped) => Some(LifecycleKind::Stopped),
                    _ => None,
                };
                if let Some(kind) = kind.filter(|_| home) {
                    self.lifecycle(ctx, &campaign, kind, BTreeMap::new())?;
                }
                if matches!(kind, Some(LifecycleKind::Resumed | LifecycleKind::Stopped)) {
                    self.wake_held(ctx, &state, now)?;
                }
                state.announced_status = Some(campaign.status);
                changed = true;
            }
            // An edit may have raised or removed the limit those waiting for a place wait on:
            // they are looked at again (before newcomers, who queue behind them).
            if edited && home && state.waiting > 0 {
                ctx.schedule(now, &timer_key(WAITING_TIMER, &key))?;
            }
            // An edit that lowered the total to what was sent, or below: reached now.
            if edited && home {
                let announced = state.total_limit_announced;
                self.announce_total_limit(ctx, &campaign, &mut state)?;
                changed |= state.total_limit_announced != announced;
            }
            let ended = campaign.when.end.is_some_and(|end| now > end.timestamp_millis());
            if home && ended && !state.completed {
                state.completed = true;
                let details = BTreeMap::from([
                    ("reason".to_string(), "end_date".to_string()),
                    ("sent".to_string(), state.sent.to_string()),
                ]);
                self.lifecycle(ctx, &campaign, LifecycleKind::Completed, details)?;
                changed = true;
            }
            if self.renew_leases(ctx, &campaign, &mut state)? {
                changed = true;
            }
            if changed {
                self.save(ctx, &campaign, &mut state)?;
            }
        }
        Ok(())
    }

    /// A campaign place's held work continues after a resume, or drains after a stop or a
    /// deletion (counted `stopped` or `deleted`): a scheduled run, candidates that were on the
    /// flow when the pause came, and (stopped) those waiting for a place.
    pub(super) fn wake_held(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &CampaignState,
        now: i64,
    ) -> Result<(), ProcessError> {
        if state.run.is_some() || state.ab_test.waits() {
            ctx.schedule(now, &timer_key(RUN_TIMER, &state.key))?;
        }
        if state.held_seq > 0 {
            ctx.schedule(now, &timer_key(HELD_TIMER, &state.key))?;
        }
        if state.waiting > 0 {
            ctx.schedule(now, &timer_key(WAITING_TIMER, &state.key))?;
        }
        Ok(())
    }
}
