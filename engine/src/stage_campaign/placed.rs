//! A scheduled run's user a shard no longer in effect took a place for goes home, to be sent
//! within the limits the home keeps (review s30 finding 1).
//!
//! A run that samples its audience (a per-run limit or an A/B test) with `timezone: user`
//! holds its users' places at their rank's shard of its release: the user stage sends a user
//! who comes later there, whatever an edit changed since (`campaign::shards::run_flow_key`).
//! An edit that puts the campaign on its home alone (a daily limit added to a per-run limit or
//! to an A/B test; `options.shards` lowered to 1) leaves the shards without the day's or the
//! total's count, which the home keeps (its sends and every shard's reported ones). So such a
//! shard takes the run's place for the user as before (the selection, its variant, the run's
//! count), and instead of sending it passes the candidate home, marked with that variant, in
//! the transaction that takes the place; the home sends it within the total and daily limits as
//! its own send, never within the run's limit again. The shard counts the place as the run's
//! send (in its `RUN_SENT`); the home takes one it refuses off the run's count. The total and
//! the day count the send once, at the home: the shard's lifetime count does not grow, and a
//! `RUN_SENT` adds nothing to the day of a campaign on its home alone
//! (`leases::count_planned_sends`). Exact under a crash: the place taken with the candidate sent
//! home, and the send at home, each in one transaction with the record it consumes. Not
//! covered: a shard's sends just before the edit that the home has not heard of yet (its
//! counters come every stats interval) are not in the day's count when such a candidate comes.
//!
//! The mark is a property of the candidate's event properties under a key no template can
//! name, taken only on a scheduled run's candidate (no trigger event, so no event properties
//! of its own): the variant's index, or null for the campaign's assignment at home.

use super::{runs::RunState, CampaignStage, CampaignState, ProcessError};
use crate::{
    campaign::{sample, shards as campaign_shards, Campaign, CampaignStatus},
    model::{is_triggered_run, scheduled_run_time, Candidate, PropertyValue},
    runtime::ProcessorContext,
};

/// The key of the mark, in a candidate's event properties.
const MARK: &str = "\u{1f}placed";

/// Whether a shard sends `candidate` of a scheduled run home instead of sending it: the
/// campaign is on its home alone now and has a total or a daily limit there.
pub(super) fn sends_home(
    campaign: &Campaign,
    state: &CampaignState,
    candidate: &Candidate,
) -> bool {
    let limits = &campaign.limits;
    state.is_shard(campaign)
        && !is_triggered_run(&candidate.run_id)
        && campaign_shards::in_effect(campaign) <= 1
        && (limits.daily.is_some() || limits.total.is_some())
}

/// Whether the home plans a sharded run of `campaign` over its per-run sample when its total
/// leaves no more places (review s31 finding 3; review s32 finding 4: as many, where one task
/// announces the total reached): `timezone: user`, a per-run limit or an A/B test, a total and
/// no daily limit. One task samples the run and its total refuses the last users to come; so
/// the shards take the sample's places and send every user of the run home (a Release plan
/// naming the total, `RunState::total_at_home`), where the total refuses them in the order
/// they come and `LIMIT_REACHED` is announced. A test user goes home marked with its variant;
/// alternation's or a split's indices are assigned at home as users come (review s32 finding
/// 3).
pub(super) fn total_cut_at_home(campaign: &Campaign) -> bool {
    let limits = &campaign.limits;
    sample::reserves(campaign) && limits.total.is_some() && limits.daily.is_none()
}

/// A shard: whether `run`'s user goes home to be cut by the total (see [`total_cut_at_home`]),
/// while the campaign is active. A run cut at home stays so for its life, its total taken away
/// or not: its shards hold no block of alternation indices, which the home assigns as its users
/// come (review s33 finding 1: with the total taken away mid-run, each shard assigned on its
/// own count, A35 B34 C31 against one task's A34 B33 C33).
pub(super) fn cut_at_home(campaign: &Campaign, run: &RunState) -> bool {
    run.total_at_home && campaign.status == CampaignStatus::Active
}

/// [`sends_home`] while the campaign is active (else a pause holds the candidate, a stop drops
/// it, as any).
pub(super) fn goes_home(campaign: &Campaign, state: &CampaignState, candidate: &Candidate) -> bool {
    campaign.status == CampaignStatus::Active && sends_home(campaign, state, candidate)
}

/// The variant a shard placed `candidate` with (`Some(None)`: the campaign's assignment);
/// `None` when it bears no mark (or is not of a scheduled run). The mark stays on the
/// candidate: held by a pause or waiting for a place at home, it is still the shard's.
pub(super) fn taken(candidate: &Candidate) -> Option<Option<usize>> {
    if is_triggered_run(&candidate.run_id)
        || scheduled_run_time(&candidate.run_id).is_none()
        || candidate.trigger_event.as_deref().is_some_and(|event| !event.is_empty())
    {
        return None;
    }
    match candidate.event_properties.get(MARK)? {
        PropertyValue::Long(index) => Some(usize::try_from(*index).ok()),
        _ => Some(None),
    }
}

/// Whether a mark on a candidate of `run_id` may be honoured at the home: not when the home holds
/// the run as one it released itself (its shards took no place in it: a forged record on the
/// campaign flow), else the candidate is placed as any (review s31 finding 2). A run the home no
/// longer holds (a newer one replaced it) keeps the mark.
pub(super) fn of_shards_run(state: &mut CampaignState, run_id: &str) -> bool {
    state.run_mut(run_id).is_none_or(|run| run.coordinates())
}

impl CampaignStage {
    /// A shard (see [`sends_home`]): `candidate`, placed with `variant`, goes home.
    pub(super) fn send_home(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        candidate: &Candidate,
        variant: Option<usize>,
    ) -> Result<(), ProcessError> {
        let mut marked = candidate.clone();
        let mark = variant.map_or(PropertyValue::Null, |v| PropertyValue::Long(v as i64));
        marked.event_properties.insert(MARK.to_string(), mark);
        self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &marked)
    }

    /// The home: a run's user a shard placed (see [`taken`]) is sent within the total and daily
    /// limits, with the variant the shard chose. The shard counted the place in the run's sends
    /// (its `RUN_SENT`): one refused here is taken off the run's count again.
    pub(super) fn deliver_placed(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: &Candidate,
        variant: Option<usize>,
    ) -> Result<(), ProcessError> {
        let (sent, held, waiting) = (state.sent, state.held_seq, state.waiting);
        self.deliver(ctx, campaign, state, candidate, variant)?;
        // (Held by a pause, or waiting for a place in flight: it comes here again.)
        let waits = state.held_seq > held || state.waiting > waiting;
        if state.sent == sent && !waits {
            if let Some(run) = state.run_mut(&candidate.run_id) {
                run.sent = run.sent.saturating_sub(1);
            }
        }
        Ok(())
    }
}
