//! Triggers of paused campaigns. A timer (inaction window, reminder, end of do-not-disturb
//! hours) that comes due while its campaign is paused is held, not dropped; when the campaign
//! resumes the held users are checked as of the resume. A stopped campaign drops what it held
//! (counted `stopped`); users held past the campaign's end are counted `expired`. Release runs in
//! bounded steps on ticks, so a transaction never carries a whole partition's held users.

use super::{in_window, Pending, UserStage, HELD};
use crate::{
    campaign::CampaignStatus,
    runtime::{ProcessError, ProcessorContext, Tick},
};

/// Held users looked at per step.
const RELEASE_STEP: usize = 500;
/// How often (task clock) held users are looked at without a change of the campaigns table,
/// so users of a campaign that ends while paused are counted `expired`.
const SWEEP_EVERY_MS: i64 = 60_000;

/// Where the held-users pass of a task stands (in memory: after a restart a new pass starts,
/// which is safe because releasing is idempotent per stored entry).
#[derive(Debug, Default)]
pub(super) struct HeldPass {
    /// The campaigns table changed (or the task just started): look at the held users.
    pending: bool,
    /// The next key to look at in the current pass.
    from: Vec<u8>,
    /// When (task clock) the next pass is due anyway.
    next_sweep: i64,
}

impl HeldPass {
    /// A pass that starts at the next tick.
    pub(super) fn due() -> Self {
        Self { pending: true, ..Self::default() }
    }
}

impl UserStage {
    /// Keeps `pending`, whose timer came due while its campaign is paused.
    pub(super) fn hold(
        &self,
        ctx: &mut ProcessorContext<'_>,
        pending: &Pending,
    ) -> Result<(), ProcessError> {
        let key = [pending.campaign.as_bytes(), &[0], &pending.key()].concat();
        Ok(ctx.store(HELD)?.put_as(&key, pending)?)
    }

    /// Drops the held inaction window `probe` names if an `unless` event at `at_ms` came before
    /// its end (the window's end is inclusive); returns it if so.
    pub(super) fn cancel_held(
        &self,
        ctx: &mut ProcessorContext<'_>,
        probe: &Pending,
        at_ms: i64,
    ) -> Result<Option<Pending>, ProcessError> {
        let key = [probe.campaign.as_bytes(), &[0], &probe.key()].concat();
        let held = ctx.store(HELD)?.get_as::<Pending>(&key)?;
        let Some(held) = held.filter(|held| at_ms <= held.due_ms) else { return Ok(None) };
        ctx.store(HELD)?.delete(&key)?;
        Ok(Some(held))
    }

    /// Releases, drops or expires a bounded step of held users whose campaign is no longer
    /// paused, and expires those whose campaign ended meanwhile.
    pub(super) fn step_held(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
    ) -> Result<Tick, ProcessError> {
        let now = ctx.now_ms();
        if !self.held.pending && now < self.held.next_sweep {
            return Ok(Tick::Idle);
        }
        self.held.pending = true;
        let entries = ctx.store(HELD)?.range(&self.held.from, &[], RELEASE_STEP)?;
        for (key, value) in &entries {
            let pending: Pending = match serde_json::from_slice(value) {
                Ok(pending) => pending,
                Err(error) => {
                    tracing::warn!(%error, "dropping an unreadable held trigger");
                    ctx.store(HELD)?.delete(key)?;
                    continue;
                }
            };
            let campaign = self.campaigns.book().get(&pending.campaign).cloned();
            let status = campaign.as_ref().map(|c| c.status);
            let ended = campaign.as_ref().is_some_and(|c| !in_window(c, now));
            if matches!(status, Some(CampaignStatus::Paused | CampaignStatus::Draft)) && !ended {
                continue;
            }
            ctx.store(HELD)?.delete(key)?;
            let Some(campaign) = campaign else { continue }; // deleted: nothing left to count
            let who = pending.whom();
            if status == Some(CampaignStatus::Stopped) {
                self.skip(ctx, &campaign, who, "stopped", now)?;
            } else if !in_window(&campaign, now) {
                self.skip(ctx, &campaign, who, "expired", now)?;
            } else {
                self.come_back(ctx, &campaign, &pending, now)?;
            }
        }
        match entries.last() {
            Some((last, _)) if entries.len() == RELEASE_STEP => {
                self.held.from = [last.as_slice(), &[0]].concat();
                Ok(Tick::More)
            }
            _ => {
                self.held = HeldPass {
                    next_sweep: now.saturating_add(SWEEP_EVERY_MS),
                    ..HeldPass::default()
                };
                Ok(Tick::Idle)
            }
        }
    }
}
