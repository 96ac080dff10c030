//! The user stage's side of the query channel (see `crate::query`): the kinds it answers, and
//! the estimate scan, which checks each of the task's users as an immediate run of the campaign
//! would (reading the stores only, emitting nothing) and counts them, in steps.

use super::{user_read::UserRead, Occasion, Profile, UserStage, UserView, Verdict, PROFILES};
use crate::{
    campaign::{parse_campaign, Campaign, Filter},
    model::{scheduled_run_id, Platform, Properties},
    query::{
        estimate::{self, Counts, Question},
        profile, QueryRequest, Step,
    },
    runtime::{ProcessError, ProcessorContext, Tick},
};

/// Users checked per step of an estimate.
const ESTIMATE_STEP: usize = 500;

/// A query's work state in a user-stage task.
#[allow(clippy::large_enum_variant)] // one at a time per task
pub(super) enum Work {
    /// An estimate: what it checks, the last user checked, what it counted so far.
    Estimate { target: Target, after: Option<String>, counts: Counts },
    /// A profile lookup: the user asked for (answered in one step).
    Profile(String),
}

/// What an estimate checks each user against.
pub(super) enum Target {
    /// A campaign, as its run at `at_ms` would check users.
    Campaign { campaign: Box<Campaign>, at_ms: i64 },
    /// Membership of a saved segment at `at_ms`.
    Segment { filter: Filter, at_ms: i64 },
}

impl UserStage {
    /// Advances the work on the task's open queries by a step.
    pub(super) fn step_queries(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
    ) -> Result<Tick, ProcessError> {
        let Some(mut open) = self.queries.take(ctx, &self.topics)? else { return Ok(Tick::Idle) };
        let work = match open.work.take() {
            Some(work) => Ok(work),
            None => self.start(&open.request),
        };
        let step = match work {
            Err(reason) => Step::Refused(reason),
            Ok(mut work) => {
                let step = match self.step_query(ctx, &mut work) {
                    Ok(step) => step,
                    Err(ProcessError::Reject(reason)) => Step::Refused(reason),
                    Err(error) => return Err(error),
                };
                open.work = Some(work);
                step
            }
        };
        self.queries.settle(ctx, &self.topics.query_replies, open, step)
    }

    /// The work a request asks for, or why there is none.
    fn start(&self, request: &QueryRequest) -> Result<Work, String> {
        if request.kind == profile::KIND {
            let question: profile::Question = serde_json::from_str(&request.body)
                .map_err(|e| format!("not a profile question: {e}"))?;
            return Ok(Work::Profile(question.user));
        }
        if request.kind != estimate::KIND {
            return Err(format!("unknown query kind {:?}", request.kind));
        }
        let question: Question = serde_json::from_str(&request.body)
            .map_err(|e| format!("not an estimate question: {e}"))?;
        let target = match question {
            Question::Campaign { id, definition, at_ms } => {
                let campaign = parse_campaign(&definition, &id).map_err(|e| e.to_string())?;
                Target::Campaign { campaign: Box::new(campaign), at_ms }
            }
            Question::Segment { id, at_ms } => {
                if self.segments.book().get(&id).is_none() {
                    return Err(format!("segment {id} is not in the engine's segments table"));
                }
                Target::Segment { filter: Filter::Segment(id), at_ms }
            }
        };
        Ok(Work::Estimate { target, after: None, counts: Counts::default() })
    }

    /// Checks the next [`ESTIMATE_STEP`] users of the task; at the end of the store, answers.
    fn step_query(
        &self,
        ctx: &mut ProcessorContext<'_>,
        work: &mut Work,
    ) -> Result<Step, ProcessError> {
        let (target, after, counts) = match work {
            Work::Profile(user) => return profile_answer(ctx, user),
            Work::Estimate { target, after, counts } => (target, after, counts),
        };
        let from = match after {
            // The smallest key after the last user checked.
            Some(user) => [user.as_bytes(), &[0]].concat(),
            None => Vec::new(),
        };
        let users: Vec<String> = ctx
            .store(PROFILES)?
            .range(&from, &[], ESTIMATE_STEP)?
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key).into_owned())
            .collect();
        for user in &users {
            self.count(ctx, target, user, counts)?;
        }
        let scanned = users.len() as u64;
        counts.scanned += scanned;
        if users.len() < ESTIMATE_STEP {
            let body =
                serde_json::to_string(counts).map_err(|e| ProcessError::reject(e.to_string()))?;
            return Ok(Step::Done(scanned, body));
        }
        *after = users.last().cloned();
        Ok(Step::More(scanned))
    }

    /// Counts `user` in `counts` as `target` sees them.
    fn count(
        &self,
        ctx: &mut ProcessorContext<'_>,
        target: &Target,
        user: &str,
        counts: &mut Counts,
    ) -> Result<(), ProcessError> {
        match target {
            Target::Segment { filter, at_ms } => {
                let segments = self.segments.book();
                let read = UserRead::default();
                let (profile, history) = read.load(ctx, user, *at_ms, filter, segments)?;
                let view = UserView { profile: &profile, history: &history, segments };
                if filter.matches(&view, *at_ms) {
                    count_reach(counts, &profile, &[Platform::Ios, Platform::Android]);
                }
            }
            Target::Campaign { campaign, at_ms } => {
                let segments = self.segments.book();
                let read = UserRead::default();
                let (profile, history) = read.load(ctx, user, *at_ms, &campaign.who, segments)?;
                let run = scheduled_run_id(*at_ms);
                let no_properties = Properties::new();
                let occasion = Occasion {
                    user,
                    run_id: &run,
                    trigger_event: "",
                    event_properties: &no_properties,
                    at_ms: *at_ms,
                    after_dnd: false,
                    read: &read,
                    released: None,
                    by_rank: None,
                    came_back: false,
                };
                match self.assess(ctx, campaign, &occasion, &profile, &history)? {
                    Verdict::Outside => return Ok(()),
                    Verdict::Skip(reason) => *counts.skipped.entry(reason.into()).or_default() += 1,
                    Verdict::Wait(..) => counts.waiting += 1,
                    Verdict::Candidate { .. } => counts.candidates += 1,
                }
                count_reach(counts, &profile, &campaign.options.platforms);
            }
        }
        Ok(())
    }
}

/// `user`'s profile as runs see it now (`age` derived from a date of birth), or none; for an
/// alias, the known user it merged into.
fn profile_answer(ctx: &mut ProcessorContext<'_>, user: &str) -> Result<Step, ProcessError> {
    let mut found = ctx.store(PROFILES)?.get_as::<Profile>(user.as_bytes())?;
    if let Some(found) = &mut found {
        found.derive_age(ctx.now_ms());
    }
    let merged_into = match found {
        Some(_) => None,
        None => super::alias::link_of(ctx, user)?,
    };
    let answer = profile::Answer { profile: found, merged_into };
    let body = serde_json::to_string(&answer).map_err(|e| ProcessError::reject(e.to_string()))?;
    Ok(Step::Done(1, body))
}

/// Counts a matching user, and where push reaches them (on `platforms`, and per platform).
fn count_reach(counts: &mut Counts, profile: &Profile, platforms: &[Platform]) {
    let reaches = |platforms: &[Platform]| !profile.reachable_devices(platforms).is_empty();
    counts.matched += 1;
    counts.reachable += u64::from(reaches(platforms));
    counts.ios += u64::from(reaches(&[Platform::Ios]));
    counts.android += u64::from(reaches(&[Platform::Android]));
}
