//! Scheduled runs in the user stage. When a run of a scheduled campaign is due, every task scans
//! its own users in bounded steps (so a transaction never holds a whole partition), checks each
//! one exactly like a triggered user (audience, sample, reachability, do-not-disturb, caps), and
//! reports how many matched the audience in a [`RunTally`] (to each shard of a sharded campaign,
//! with the count of that shard's users). The campaign stage decides the run (safety check,
//! per-run limit, A/B test plan) once every partition has reported.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{user_read::UserRead, Occasion, UserStage, PROFILES, RUNS};
use crate::{
    campaign::{shards, Campaign, CampaignStatus, Schedule, Trigger},
    model::{scheduled_run_id, Properties, RunTally},
    runtime::{ProcessError, ProcessorContext, Tick},
};

/// Users checked per step.
const SCAN_STEP: usize = 500;
/// How late a task may first see a calendar campaign's run and still start it: a recurrence
/// never runs first for a date before the campaign existed ("the 7th of each month" defined on
/// the 10th first runs next month), but every task must agree on a run defined just before it.
const FIRST_SIGHT_SLACK_MS: i64 = 60_000;

/// Where a task is in a campaign's latest run (`runs` store, keyed by campaign id).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RunCursor {
    /// Run time, epoch milliseconds.
    run_at: i64,
    /// Last user checked.
    after: Option<String>,
    /// Users matching the audience so far.
    qualified: i64,
    /// The scan ended (and was reported) or the run was skipped.
    done: bool,
    /// Users matching the audience so far, by the campaign's shard (when it has several).
    #[serde(default)]
    by_shard: Vec<i64>,
}

impl UserStage {
    /// Advances the scan of one due run by a step.
    pub(super) fn step_scheduled_runs(
        &self,
        ctx: &mut ProcessorContext<'_>,
    ) -> Result<Tick, ProcessError> {
        let now = ctx.now_ms();
        let due: Vec<(Arc<Campaign>, &Schedule, i64)> = self
            .campaigns
            .book()
            .all()
            .filter(|c| c.status == CampaignStatus::Active)
            .filter_map(|c| latest_run(c, now).map(|(schedule, at)| (Arc::clone(c), schedule, at)))
            .collect();
        for (campaign, schedule, run_at) in due {
            let key = campaign.id.as_bytes();
            let cursor = match ctx.store(RUNS)?.get_as::<RunCursor>(key)? {
                Some(cursor)
                    if cursor.run_at > run_at || cursor.run_at == run_at && cursor.done =>
                {
                    continue
                }
                Some(cursor) if cursor.run_at == run_at => cursor,
                seen => {
                    let late = now - run_at;
                    let first_sight = seen.is_none() && schedule.calendar.is_some();
                    if !schedule.catch_up.starts(late) || first_sight && late > FIRST_SIGHT_SLACK_MS
                    {
                        tracing::warn!(campaign = %campaign.id, run_at, late, first_sight, "run missed; skipped");
                        let skipped = RunCursor { run_at, done: true, ..Default::default() };
                        ctx.store(RUNS)?.put_as(key, &skipped)?;
                        continue;
                    }
                    RunCursor { run_at, ..Default::default() }
                }
            };
            let cursor = self.scan_step(ctx, &campaign, cursor)?;
            ctx.store(RUNS)?.put_as(key, &cursor)?;
            // Another step of this run, or another campaign's run, may follow.
            return Ok(Tick::More);
        }
        Ok(Tick::Idle)
    }

    /// Checks the next [`SCAN_STEP`] users; at the end of the store, reports the tally.
    fn scan_step(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        mut cursor: RunCursor,
    ) -> Result<RunCursor, ProcessError> {
        let from = match &cursor.after {
            // The smallest key after the last user checked.
            Some(user) => [user.as_bytes(), &[0]].concat(),
            None => Vec::new(),
        };
        // Each user's profile is read here, with the key: qualifying them does not look it up again.
        let users: Vec<(String, Vec<u8>)> = ctx
            .store(PROFILES)?
            .range(&from, &[], SCAN_STEP)?
            .into_iter()
            .map(|(key, profile)| (String::from_utf8_lossy(&key).into_owned(), profile))
            .collect();
        let run = scheduled_run_id(cursor.run_at);
        // The run's shards are fixed when its scan starts: an edit meanwhile does not split its
        // tallies over two shard counts.
        if cursor.by_shard.is_empty() {
            cursor.by_shard.resize(shards::in_effect(campaign) as usize, 0);
        }
        let shards = cursor.by_shard.len() as u32;
        let no_properties = Properties::new();
        for (user, profile) in &users {
            let read = UserRead::new(Some(profile));
            let occasion = Occasion {
                user,
                run_id: &run,
                trigger_event: "",
                event_properties: &no_properties,
                at_ms: cursor.run_at,
                after_dnd: false,
                read: &read,
                released: Some(shards),
                by_rank: Some(crate::campaign::sample::samples(campaign)),
                came_back: false,
            };
            if self.qualify(ctx, campaign, &occasion)? {
                cursor.qualified += 1;
                cursor.by_shard
                    [shards::of_run_user(campaign, Some(&run), user, shards) as usize] += 1;
            }
        }
        cursor.after = users.last().map(|(user, _)| user.clone()).or(cursor.after);
        if users.len() < SCAN_STEP {
            cursor.done = true;
            let tally = RunTally {
                campaign_id: campaign.id.clone(),
                app_id: campaign.app.clone(),
                run_id: run,
                partition: ctx.task().partition,
                partitions: ctx.partitions(),
                qualified: cursor.qualified,
                timestamp_ms: cursor.run_at,
                shards: shards as i32,
            };
            if shards == 1 {
                self.flow().emit(ctx, &campaign.id, &tally)?;
            } else {
                // Each shard learns that this partition's candidates are all out (they precede
                // this record on the shard's key) and how many of its users qualified.
                for (shard, qualified) in cursor.by_shard.iter().enumerate() {
                    let key = shards::key(&campaign.id, shard as u32);
                    let tally = RunTally { qualified: *qualified, ..tally.clone() };
                    ctx.send_record(&self.topics.campaign_flow, key.as_bytes(), &tally)?;
                }
                // And the home where they went: another task may have scanned the run with
                // another count (an edit read at its own pace), the home then gathers the run.
                self.flow().emit(ctx, &campaign.id, &tally)?;
            }
        }
        Ok(cursor)
    }
}

/// The campaign's schedule and latest scheduled run at or before `now_ms`, within its start and
/// end.
fn latest_run(campaign: &Campaign, now_ms: i64) -> Option<(&Schedule, i64)> {
    let Trigger::Scheduled(schedule) = &campaign.when.trigger else { return None };
    let end = campaign.when.end.map(|t| t.timestamp_millis());
    let start = campaign.when.start.map(|t| t.timestamp_millis());
    let at =
        schedule.latest_run(now_ms, end).filter(|at| start.is_none_or(|start| *at >= start))?;
    Some((schedule, at))
}
