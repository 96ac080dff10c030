//! Candidates that reach the campaign stage while their campaign is paused (already on the
//! campaign flow when the pause came): kept in arrival order and delivered when the campaign
//! resumes, in bounded steps, behind the users already waiting for a place (who keep their turn
//! through the pause); a stopped campaign drops them, counted `stopped`.

use super::{queue, timer_key, CampaignStage, CampaignState, HELD_CANDIDATES, HELD_TIMER};
use crate::{
    campaign::Campaign,
    model::{is_triggered_run, Candidate},
    runtime::{ProcessError, ProcessorContext},
};

impl CampaignStage {
    /// Keeps `candidate` until its paused campaign resumes or stops.
    pub(super) fn hold(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        candidate: &Candidate,
    ) -> Result<(), ProcessError> {
        let key = queue::key(&state.key, state.held_seq);
        ctx.store(HELD_CANDIDATES)?.put_as(&key, candidate)?;
        state.held_seq += 1;
        Ok(())
    }

    /// Delivers (or, stopped, drops) the next step of held candidates; schedules the next step
    /// while more remain. Nothing leaves while the campaign is paused.
    pub(super) fn release_held(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        // A shard an edit took away sends triggered ones home, paused or not
        // (`leases::recounted`).
        let retiring = Self::retiring(campaign, state);
        if super::is_held(campaign) && !retiring {
            return Ok(());
        }
        let step = queue::next_step(ctx, HELD_CANDIDATES, &state.key)?;
        for (key, candidate) in step.entries {
            let home = retiring && is_triggered_run(&candidate.run_id);
            if super::is_held(campaign) && !home {
                return Ok(()); // a scheduled run's: kept until the resume
            }
            ctx.store(HELD_CANDIDATES)?.delete(&key)?;
            if home {
                self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &candidate)?;
                continue;
            }
            let leaving = Candidate {
                qualified_at_ms: candidate.qualified_at_ms.max(ctx.effective_ms()),
                ..candidate
            };
            self.admit(ctx, campaign, state, leaving)?;
        }
        if step.more {
            ctx.schedule(ctx.now_ms(), &timer_key(HELD_TIMER, &state.key))?;
        }
        Ok(())
    }
}
