//! A campaign spread over shards (see `docs/architecture.md`): the shards buffer their users'
//! candidates of a scheduled run and report them home; the home decides the run once for the
//! whole audience (safety check, per-run and total limit, A/B test plan) and gives each shard
//! its places and its range of global A/B test indices; the shards report their test sent and
//! their run sent; the home chooses the winner from the shards' counters and tells them. Every
//! record is produced in the transaction of the state change it accounts for, so a crash or a
//! rebalance neither loses nor doubles a place.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{
    ab,
    runs::{RunPhase, RunState},
    CampaignStage, CampaignState,
};
use crate::{
    campaign::{sample, shards as campaign_shards, Assignment, Campaign, MAX_SHARDS},
    model::{LifecycleKind, ShardPlan, ShardPlanKind, ShardReport, ShardReportKind, VariantStats},
    runtime::{ProcessError, ProcessorContext},
};

/// A campaign's counters: per variant, skips and failures by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Counters {
    pub(super) variants: Vec<VariantStats>,
    pub(super) skipped: BTreeMap<String, i64>,
    pub(super) failed: BTreeMap<String, i64>,
}

impl Counters {
    /// Adds `other`'s counts to these.
    fn add(
        &mut self,
        variants: &[VariantStats],
        skipped: &BTreeMap<String, i64>,
        failed: &BTreeMap<String, i64>,
    ) {
        for theirs in variants {
            match self.variants.iter_mut().find(|v| v.variant_id == theirs.variant_id) {
                Some(ours) => {
                    ours.qualified += theirs.qualified;
                    ours.sent += theirs.sent;
                    ours.delivered += theirs.delivered;
                    ours.failed += theirs.failed;
                    ours.impressions += theirs.impressions;
                    ours.clicks += theirs.clicks;
                    ours.conversions += theirs.conversions;
                }
                None => self.variants.push(theirs.clone()),
            }
        }
        for (reason, count) in skipped {
            *self.skipped.entry(reason.clone()).or_default() += count;
        }
        for (reason, count) in failed {
            *self.failed.entry(reason.clone()).or_default() += count;
        }
    }

    /// The counters of variant `id` (zero when it has none).
    pub(super) fn variant(&self, id: &str) -> VariantStats {
        self.variants.iter().find(|v| v.variant_id == id).cloned().unwrap_or_default()
    }
}

/// The home's view of one sharded run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct HomeRun {
    /// The campaign's shards in effect (from their reports).
    shards: i32,
    /// (qualified, reachable) of each shard whose buffer is complete.
    buffered: BTreeMap<i32, (i64, i64)>,
    /// Shards that sent their share of the A/B test.
    tested: BTreeSet<i32>,
    /// Users each shard sent to in the run (its latest cumulative report).
    sent: BTreeMap<i32, i64>,
    /// When the home asked the shards for their counters to decide the A/B winner.
    #[serde(default)]
    asked_at: Option<i64>,
    /// Shards that answered the ask.
    #[serde(default)]
    answered: BTreeSet<i32>,
    /// Per shard, as of its latest `RUN_SENT`: its users standing by, and the places passed to
    /// it it had taken in (see `standby`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) standing: BTreeMap<i32, (i64, i64)>,
    /// Places passed to each shard (`PLACE` plans, cumulative; see `standby`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) passed: BTreeMap<i32, i64>,
    /// Places shards gave back (`PLACE_LEFT`) not yet passed on (see `standby`).
    #[serde(default)]
    pub(super) unplaced: i64,
    /// Global assignment indices that came back with them, (first, count), in order (see
    /// `standby`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) unplaced_indices: Vec<(u64, u64)>,
    /// Places the home gave each shard (its plan's, then those passed to it): a shard never
    /// gives back more (see `standby`). Empty for a run planned by an older version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) given: BTreeMap<i32, i64>,
    /// Places each shard gave back (`PLACE_LEFT`, cumulative).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) left: BTreeMap<i32, i64>,
    /// A shard's `BUFFERED` said a partition's tally named no shard count (an older user stage,
    /// which sends the home no notice): planned on the shards' reports alone, as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    unnamed: bool,
}

/// How long the home waits for every shard's answer to its A/B evaluation ask before deciding
/// on the counters the shards last reported (a shard on an engine that cannot read the ask).
pub(super) const EVALUATION_GRACE_MS: i64 = 60_000;

impl RunState {
    /// Whether this is the home's view of a sharded run (the shards release it, not the home).
    pub(super) fn coordinates(&self) -> bool {
        self.shards.shards > 0
    }

    /// The home: the run's shards (those of its first report, see `on_shard_report`), 0 when
    /// it coordinates none.
    pub(super) fn release_shards(&self) -> i32 {
        self.shards.shards
    }
}

impl CampaignState {
    /// The campaign's counters: this state's own plus, at the home, every shard's latest.
    pub(super) fn merged(&self) -> Counters {
        let mut merged = Counters::default();
        merged.add(&self.variants, &self.skipped, &self.failed);
        for counters in self.shard_counters.values() {
            merged.add(&counters.variants, &counters.skipped, &counters.failed);
        }
        merged
    }
}

/// Splits `total` over `weights` in proportion (largest remainder, ties to the first), never
/// giving one more than its weight; `total` must not exceed the sum of the weights.
pub(super) fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<(u64, u128)> = weights
        .iter()
        .map(|w| {
            let scaled = u128::from(total) * u128::from(*w);
            ((scaled / sum) as u64, scaled % sum)
        })
        .collect();
    let mut shares: Vec<u64> = exact.iter().map(|(share, _)| *share).collect();
    let mut left = total - shares.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| exact[*b].1.cmp(&exact[*a].1).then(a.cmp(b)));
    for i in order {
        if left == 0 {
            break;
        }
        if shares[i] < weights[i] {
            shares[i] += 1;
            left -= 1;
        }
    }
    shares
}

impl CampaignStage {
    /// The shard number of a shard's state (0 at the home).
    pub(super) fn shard_of(campaign: &Campaign, state: &CampaignState) -> i32 {
        match campaign_shards::scope(state.key.as_bytes(), campaign) {
            campaign_shards::Scope::Shard(shard) => shard as i32,
            campaign_shards::Scope::Home => 0,
            // A shard an edit took away (see `places::answer_scope`).
            campaign_shards::Scope::Foreign => {
                campaign_shards::named_shard(state.key.as_bytes(), campaign).unwrap_or(0) as i32
            }
        }
    }

    /// Sends `report` (filled in by `fill`) from this shard to the campaign's home.
    pub(super) fn report(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        kind: ShardReportKind,
        fill: impl FnOnce(&mut ShardReport),
    ) -> Result<(), ProcessError> {
        let shard = Self::shard_of(campaign, state);
        let mut report = ShardReport {
            campaign_id: campaign.id.clone(),
            app_id: campaign.app.clone(),
            shard,
            // A shard an edit took away still reports (its places in flight settle there).
            shards: (campaign_shards::in_effect(campaign) as i32).max(shard + 1),
            kind,
            run_id: None,
            qualified: 0,
            reachable: 0,
            sent: state.reported_sent() as i64,
            run_sent: 0,
            waiting: 0,
            places: 0,
            variants: Vec::new(),
            skipped: BTreeMap::new(),
            failed: BTreeMap::new(),
            day_sent: 0,
            timestamp_ms: ctx.timestamp_ms(),
            seq: 0,
        };
        fill(&mut report);
        self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &report)
    }

    /// A shard's cumulative counters, for the home's stats (`Counters`) or its winner decision
    /// about run `run_id` (`Evaluated`).
    pub(super) fn report_counters(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        kind: ShardReportKind,
        run_id: Option<&str>,
    ) -> Result<(), ProcessError> {
        self.report(ctx, campaign, state, kind, |r| {
            r.run_id = run_id.map(str::to_string);
            r.variants = state.variants.clone();
            r.skipped = state.skipped.clone();
            r.failed = state.failed.clone();
        })
    }

    /// Every user-stage partition reported the run to this shard: its buffer is complete.
    pub(super) fn report_buffered(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &mut RunState,
    ) -> Result<(), ProcessError> {
        run.phase = RunPhase::Reported;
        let qualified: i64 = run.tallies.values().sum();
        self.report(ctx, campaign, state, ShardReportKind::Buffered, |r| {
            r.run_id = Some(run.id.clone());
            r.qualified = qualified;
            r.reachable = run.buffered as i64;
            // 1: every partition's tally named its shard count, so each told the home too
            // (`plan_buffered`); 0 (an older version's too): one did not.
            r.places = i64::from(!run.unnamed);
        })
    }

    /// This shard sent its share of the run's A/B test.
    pub(super) fn report_test_sent(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &RunState,
    ) -> Result<(), ProcessError> {
        self.report(ctx, campaign, state, ShardReportKind::TestSent, |r| {
            r.run_id = Some(run.id.clone());
            // The latest local time of its test users still to come (`timezone: user`).
            r.reachable = run.test_ends_at;
        })
    }

    /// The users of the run this shard sent to so far (cumulative).
    pub(super) fn report_run_sent(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
        run: &RunState,
    ) -> Result<(), ProcessError> {
        self.report(ctx, campaign, state, ShardReportKind::RunSent, |r| {
            r.run_id = Some(run.id.clone());
            r.run_sent = run.sent as i64;
            r.waiting = run.standing() as i64; // see `standby`
            r.places = run.received as i64;
        })
    }

    /// The home learns where a shard is (a report under any other key than the campaign id is
    /// rejected: it would make a second home).
    pub(super) fn on_shard_report(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        report: ShardReport,
    ) -> Result<(), ProcessError> {
        let Some(campaign) = self.known(ctx, &report.campaign_id, key)? else {
            // Its number is taken all the same (see `leases`).
            return self.take_number_of_an_unknown_campaign(ctx, key, &report);
        };
        if key != Some(campaign.id.as_bytes()) {
            return Err(ProcessError::reject(format!(
                "a shard report of campaign {} under the key {:?}",
                campaign.id,
                key.map(String::from_utf8_lossy)
            )));
        }
        let mut state = self.load(ctx, &campaign, &campaign.id)?;
        // A shard the campaign does not have (nor had: one an edit took away may still report,
        // below the widest `options.shards` the home has seen) counts nothing.
        state.widen(&campaign);
        let widest = state.widest.unwrap_or(0);
        let had = u32::try_from(report.shard)
            .is_ok_and(|s| state.shard_sent.contains_key(&s) || s < widest);
        let lease_report = matches!(
            report.kind,
            ShardReportKind::Demand | ShardReportKind::Returned | ShardReportKind::Counted
        );
        if !had && !(0..campaign.options.shards.max(1) as i32).contains(&report.shard) {
            let run_id = report.run_id.as_deref().unwrap_or_default();
            let asked = state.run.as_ref().is_some_and(|run| run.asked(run_id, report.shard));
            if report.kind == ShardReportKind::Forwarded && asked {
                // A shard of an edit this task has yet to read, asked to send a run home: its
                // count was in a user-stage partition's notice (`runs::gather`).
                self.on_forwarded(ctx, &campaign, &mut state, &report)?;
                return self.save(ctx, &campaign, &mut state);
            }
            if lease_report && Self::take_number_of_a_shard_not_had(ctx, &mut state, &report) {
                return self.save(ctx, &campaign, &mut state); // see `leases`
            }
            return Err(ProcessError::reject(format!(
                "shard: a report of campaign {} from shard {} of {}, which has {} shards",
                campaign.id, report.shard, report.shards, campaign.options.shards
            )));
        }
        if lease_report && !Self::admit_lease_report(ctx, &campaign, &mut state, &report)? {
            return self.save(ctx, &campaign, &mut state); // a repeat, or void (see `leases`)
        }
        // Every report carries the shard's users sent to over the campaign's life: the total
        // counts each shard's highest, whatever run (or none) the sends belonged to.
        let counted = state.shard_sent.entry(report.shard as u32).or_default();
        if report.sent > *counted {
            let more = (report.sent - *counted) as u64;
            state.sent += more;
            *counted = report.sent;
            self.count_run_sends(ctx, &campaign, &mut state, more)?; // its run's day (`leases`)
        }
        self.retire_shard(ctx, &campaign, &mut state, report.shard as u32)?; // see `leases`
        if report.kind == ShardReportKind::Tokens {
            self.on_token_report(ctx, &campaign, &mut state, &report)?;
            return self.save(ctx, &campaign, &mut state);
        }
        if report.kind == ShardReportKind::PlaceLeft {
            self.pass_place(ctx, &campaign, &mut state, &report)?; // see `standby`
            return self.save(ctx, &campaign, &mut state);
        }
        if report.kind == ShardReportKind::Indices {
            Self::on_index_report(ctx, &campaign, &mut state, &report)?; // see `indices`
            return self.save(ctx, &campaign, &mut state);
        }
        if report.kind == ShardReportKind::Forwarded {
            self.on_forwarded(ctx, &campaign, &mut state, &report)?; // see `runs::gather`
            return self.save(ctx, &campaign, &mut state);
        }
        if matches!(
            report.kind,
            ShardReportKind::Demand | ShardReportKind::Returned | ShardReportKind::Counted
        ) {
            self.on_lease_report(ctx, &campaign, &mut state, &report)?;
            return self.save(ctx, &campaign, &mut state);
        }
        if matches!(report.kind, ShardReportKind::Counters | ShardReportKind::Evaluated) {
            let counters = Counters {
                variants: report.variants,
                skipped: report.skipped,
                failed: report.failed,
            };
            state.shard_counters.insert(report.shard as u32, counters);
            if report.kind == ShardReportKind::Evaluated {
                self.on_evaluated(ctx, &campaign, &mut state, &report.run_id, report.shard)?;
            }
            return self.save(ctx, &campaign, &mut state);
        }
        let run_id = report.run_id.as_deref().unwrap_or_default();
        if let Some(at) = state.earlier.iter().position(|r| r.is(run_id) && r.coordinates()) {
            // A run a newer one replaced before every shard reported it (see `standby`).
            if report.kind == ShardReportKind::RunSent {
                let mut run = state.earlier.remove(at);
                self.on_run_sent(ctx, &campaign, &mut state, &mut run, &report)?;
                if !run.finished() {
                    state.earlier.insert(at, run);
                }
            }
            return self.save(ctx, &campaign, &mut state);
        }
        let Some(mut run) = self.current_run(ctx, &mut state, run_id)? else {
            return self.save(ctx, &campaign, &mut state); // a run a newer one replaced
        };
        // The run's shards are those of its first report (or those every partition's notice
        // named: `plan_buffered`): an edit meanwhile does not move it. A run gathered at home
        // has none (`runs::gather`).
        if run.shards.shards == 0 && !run.gathered() {
            run.shards.shards = report.shards;
        }
        let shards = run.shards.shards;
        let all = |done: usize| done >= shards.max(1) as usize;
        match report.kind {
            ShardReportKind::Buffered if run.gathered() => {} // its shards send it home
            ShardReportKind::Buffered => {
                run.shards.buffered.insert(report.shard, (report.qualified, report.reachable));
                run.shards.unnamed |= report.places == 0;
                self.plan_buffered(ctx, &campaign, &mut state, &mut run, report.timestamp_ms)?;
            }
            ShardReportKind::TestSent => {
                run.shards.tested.insert(report.shard);
                // The test ends at the latest local time of a test user of any shard.
                run.test_ends_at = run.test_ends_at.max(report.reachable);
                let waiting = run.phase == RunPhase::Releasing && state.winner_id.is_none();
                if waiting && all(run.shards.tested.len()) {
                    run.phase = RunPhase::AwaitingWinner;
                    let at = ctx.timestamp_ms().max(run.test_ends_at);
                    self.start_evaluation(ctx, &campaign, &mut state, at)?;
                } else if run.phase == RunPhase::AwaitingWinner
                    && state.winner_id.is_none()
                    && run.shards.asked_at.is_none()
                    && state.test_full_at.is_some_and(|full_at| full_at < report.reachable)
                {
                    // A test place passed on to a user who comes later (`standby`): the test
                    // ends at their local time.
                    self.start_evaluation(ctx, &campaign, &mut state, report.reachable)?;
                }
            }
            ShardReportKind::RunSent => {
                self.on_run_sent(ctx, &campaign, &mut state, &mut run, &report)?;
            }
            ShardReportKind::Counters
            | ShardReportKind::Demand
            | ShardReportKind::Returned
            | ShardReportKind::Counted
            | ShardReportKind::Tokens
            | ShardReportKind::Evaluated
            | ShardReportKind::PlaceLeft
            | ShardReportKind::Indices
            | ShardReportKind::Forwarded => {}
        }
        state.run = Some(run);
        self.save(ctx, &campaign, &mut state)
    }

    /// A shard's `RUN_SENT` of `run` (the current run, or one a newer run replaced: it still
    /// finishes once, see `standby`): the run finishes once every shard reported it and the
    /// places passed on are answered.
    fn on_run_sent(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
        report: &ShardReport,
    ) -> Result<(), ProcessError> {
        let mut run_sent = report.run_sent;
        if super::indices::late_daily(campaign) && !run.shards.given.is_empty() {
            // Its run's sends fill the home's day (`count_planned_sends`): a shard sends at
            // most the places it was given (review s29 finding 2: a forged 1,000,000 filled it).
            run_sent = run_sent.min(run.shards.given.get(&report.shard).copied().unwrap_or(0));
        }
        let before = run.shards.sent.insert(report.shard, run_sent).unwrap_or(0);
        // Cumulative per shard: late (do-not-disturb) users add to what was counted.
        let more = run_sent.saturating_sub(before).max(0) as u64;
        run.sent += more;
        // In the home's day, beside the day's leased places (`leases`).
        self.count_planned_sends(ctx, campaign, state, more)?;
        // Places a shard gave back go to those with users standing by (see `standby`).
        self.standing_at(ctx, campaign, run, report)?;
        self.finish_home_run(ctx, campaign, state, run)
    }

    /// The home finishes `run` once every shard reported it sent and the places passed on
    /// are answered: `RUN_FINISHED` once, then the total limit it filled.
    pub(super) fn finish_home_run(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
    ) -> Result<(), ProcessError> {
        let all = run.shards.sent.len() >= run.shards.shards.max(1) as usize;
        if run.phase != RunPhase::Done && all && run.places_settled(campaign) {
            run.phase = RunPhase::Done;
            self.stand_down(ctx, campaign, run)?;
            let details = BTreeMap::from([
                ("run_id".to_string(), run.id.clone()),
                ("sent".to_string(), run.sent.to_string()),
            ]);
            self.lifecycle(ctx, campaign, LifecycleKind::RunFinished, details)?;
            if super::indices::late_on_leases(campaign) {
                // Users who came after the release wait for leased places (`indices`); the
                // run is out of `state` here, so no longer open.
                self.serve_leases(ctx, campaign, state)?;
            }
        }
        // The limit is announced once the run it filled is finished.
        if run.phase == RunPhase::Done {
            self.announce_total_limit(ctx, campaign, state)?;
        }
        Ok(())
    }

    /// The run is planned once every shard's buffer is complete and every user-stage
    /// partition's notice named the same shard count (`runs::gather`: scans over different
    /// counts, an edit of `options.shards` read at different times, are sent from the home;
    /// the run's shards are those the notices named). Where a shard's partition told no count
    /// (an older user stage, no notice), on the shards' reports alone, as before.
    pub(super) fn plan_buffered(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
        at: i64,
    ) -> Result<(), ProcessError> {
        match run.agreed_shards() {
            Some(shards) => run.shards.shards = shards,
            None if run.shards.unnamed => {}
            None => return Ok(()),
        }
        let shards = run.shards.shards;
        if run.phase == RunPhase::Collecting
            && shards > 0
            && run.shards.buffered.len() >= shards as usize
        {
            self.plan(ctx, campaign, state, run, at)?;
        }
        Ok(())
    }

    /// Every shard's buffer is complete: the run is decided once for the whole audience, and
    /// each shard is given its places and its A/B test indices.
    fn plan(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run: &mut RunState,
        at: i64,
    ) -> Result<(), ProcessError> {
        let shards: Vec<i32> = run.shards.buffered.keys().copied().collect();
        let qualified: i64 = run.shards.buffered.values().map(|(q, _)| q).sum();
        let reachable: Vec<u64> =
            run.shards.buffered.values().map(|(_, r)| (*r).max(0) as u64).collect();
        let buffered: u64 = reachable.iter().sum();
        let mut details = BTreeMap::from([
            ("run_id".to_string(), run.id.clone()),
            ("qualified".to_string(), qualified.to_string()),
            ("reachable".to_string(), buffered.to_string()),
            ("shards".to_string(), shards.len().to_string()),
        ]);
        let day_left = state.run_day_left(campaign, at); // what the day leaves (`leases`)
        let plan = |shard: i32, kind: ShardPlanKind| ShardPlan {
            winner_id: state.winner_id.clone(),
            ..plan_to(campaign, &run.id, shard, kind, at)
        };
        if let Some(limit) = campaign.limits.safety.filter(|limit| qualified > *limit as i64) {
            run.phase = RunPhase::Tripped;
            details.insert("safety_limit".into(), limit.to_string());
            tracing::warn!(campaign = %campaign.id, run = %run.id, qualified, limit, "safety check tripped: the run sends nothing");
            for shard in &shards {
                self.send_plan(ctx, campaign, &plan(*shard, ShardPlanKind::Tripped))?;
            }
            return self.lifecycle(ctx, campaign, LifecycleKind::SafetyCheckTripped, details);
        }
        let reach = campaign.limits.per_run.map_or(buffered, |limit| limit.min(buffered));
        // Less the places of the total leased out to users who came after an earlier run.
        let left = campaign.limits.total.map_or(u64::MAX, |t| state.free_total(t));
        let left = left.min(day_left);
        // A total the per-run sample reaches: the sample's places, the total cut at home
        // (`placed::total_cut_at_home`), which announces it reached as one task does.
        let cut = super::placed::total_cut_at_home(campaign) && left > 0 && left <= reach;
        // A sampled run's shards hold ranges of its random order: its first users are shard 0's.
        let split = if sample::samples(campaign) { sample::first_in_order } else { apportion };
        let places = split(if cut { reach.min(day_left) } else { reach.min(left) }, &reachable);
        let mut test_total = 0;
        if let (Assignment::AbTest(test), None) = (&campaign.assignment, &state.winner_id) {
            let plan = ab::test_plan(reach, test.test_audience, campaign.what.len());
            let sent = if cut { reach } else { reach.min(left) }; // a cut one: at home
            test_total = (plan.per_variant * campaign.what.len() as u64).min(sent);
            details.insert("test_per_variant".into(), plan.per_variant.to_string());
            details.insert("after_winner".into(), plan.remainder.to_string());
        }
        let tests = split(test_total, &places);
        run.test_users = test_total;
        run.phase = RunPhase::Releasing;
        self.lifecycle(ctx, campaign, LifecycleKind::RunStarted, details)?;
        // Alternation or a split: shard s's places take the global assignment indices after
        // shard s−1's, from the campaign's users assigned so far (in `test_from`; see `runs`).
        // Cut at home, the home assigns them in the order its users come, as one task does.
        let indexed =
            !cut && ab::variant_at(&campaign.assignment, campaign.what.len(), 0).is_some();
        let mut test_from = if indexed { state.assigned } else { 0 };
        for ((shard, places), tests) in shards.iter().zip(places).zip(tests) {
            let mut release = plan(*shard, ShardPlanKind::Release);
            release.places = places as i64;
            release.test_from = test_from as i64;
            release.test_users = tests as i64;
            release.test_total = test_total as i64;
            release.limit = cut.then(|| campaign.limits.total.unwrap_or_default() as i64);
            test_from += if indexed { places } else { tests };
            run.shards.given.insert(*shard, places as i64);
            self.send_plan(ctx, campaign, &release)?;
        }
        if indexed {
            state.assigned = test_from;
        }
        Ok(())
    }

    pub(super) fn send_plan(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        plan: &ShardPlan,
    ) -> Result<(), ProcessError> {
        let key = campaign_shards::key(&campaign.id, plan.shard as u32);
        self.emit(ctx, &self.topics.campaign_flow, &key, plan)
    }

    /// The home chose the A/B winner: every shard of the current run sends the rest with it.
    pub(super) fn announce_winner_to_shards(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
    ) -> Result<(), ProcessError> {
        let Some(run) = state.run.as_ref().filter(|run| run.shards.shards > 1) else {
            return Ok(());
        };
        for shard in 0..run.shards.shards {
            let plan = ShardPlan {
                winner_id: state.winner_id.clone(),
                ..plan_to(campaign, &run.id, shard, ShardPlanKind::Winner, ctx.timestamp_ms())
            };
            self.send_plan(ctx, campaign, &plan)?;
        }
        Ok(())
    }

    /// Whether the A/B winner of a run spread over shards must wait for the shards' counters
    /// as of now: the first time it is due the home asks every shard of the run
    /// (`Evaluate`), and decides once all have answered (`Evaluated`), or after
    /// [`EVALUATION_GRACE_MS`] on the counters they last reported. A campaign on one task
    /// decides at once.
    pub(super) fn awaits_evaluation(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        now: i64,
    ) -> Result<bool, ProcessError> {
        if let Some(waits) = self.awaits_test_evaluation(ctx, campaign, state, now)? {
            return Ok(waits); // a triggered test's (`ab`)
        }
        let timer = super::timer_key(super::AB_TIMER, &state.key);
        let Some(run) = state.run.as_mut().filter(|run| run.coordinates()) else {
            return Ok(false);
        };
        let Some(asked_at) = run.shards.asked_at else {
            run.shards.asked_at = Some(now);
            for shard in run.shards.buffered.keys() {
                let ask = plan_to(campaign, &run.id, *shard, ShardPlanKind::Evaluate, now);
                self.send_plan(ctx, campaign, &ask)?;
            }
            ctx.schedule(now + EVALUATION_GRACE_MS, &timer)?;
            return Ok(!run.shards.buffered.is_empty());
        };
        let missing: Vec<&i32> =
            run.shards.buffered.keys().filter(|s| !run.shards.answered.contains(s)).collect();
        if missing.is_empty() {
            return Ok(false);
        }
        if now < asked_at + EVALUATION_GRACE_MS {
            return Ok(true);
        }
        tracing::warn!(campaign = %campaign.id, run = %run.id, ?missing, "shards did not answer the A/B evaluation: deciding on their last reported counters");
        Ok(false)
    }

    /// A shard answered the home's evaluation ask of run `run_id`: once all have, the winner
    /// is decided.
    fn on_evaluated(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        run_id: &Option<String>,
        shard: i32,
    ) -> Result<(), ProcessError> {
        if run_id.as_deref() == Some(super::indices::TRIGGERED_TEST) {
            return self.on_test_evaluated(ctx, campaign, state, shard); // see `ab`
        }
        let Some(run) = state.run.as_mut() else { return Ok(()) };
        if run.shards.asked_at.is_none() || run_id.as_deref() != Some(run.id.as_str()) {
            return Ok(()); // an answer to an ask of a run a newer one replaced
        }
        run.shards.answered.insert(shard);
        if state.winner_id.is_none() {
            self.winner_due(ctx, campaign, state, ctx.timestamp_ms())?;
        }
        Ok(())
    }

    /// A shard receives its home's decision about a run.
    pub(super) fn on_shard_plan(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        plan: ShardPlan,
    ) -> Result<(), ProcessError> {
        let Some(campaign) = self.known(ctx, &plan.campaign_id, key)? else {
            return Self::hold_plan(ctx, key, plan, None);
        };
        // A shard an edit took away still takes its home's plans while it holds state (its
        // recount: `leases::recounted`); a key that names no such state waits for the edit
        // that gives the campaign that shard, if it is one (see `hold_plan`), else is rejected.
        let scope = match Self::answer_scope(ctx, key, &campaign) {
            Ok(scope) => scope,
            Err(_) if plan.kind == ShardPlanKind::Forward && plan_key(key, &plan).is_some() => {
                self.start_asked_shard(ctx, &campaign, &plan)?
            }
            Err(refused) => return Self::hold_plan(ctx, key, plan, Some(refused)),
        };
        self.apply_held_plans(ctx, &campaign, &scope)?; // those that came before it first
        self.apply_plan(ctx, &campaign, &scope, plan)
    }

    /// Shard: a plan of its home for shard key `key` that came before this task's copy of the
    /// campaigns table had the campaign, or the edit that gave it this shard (each instance
    /// reads the table at its own pace; the home wrote the plan after reading it): kept, in
    /// the transaction that consumes it, under [`held_plans_key`], in the order they came, and
    /// applied once the definition is there (the table's change: `lifecycle`; or the shard's
    /// next plan). Dropped, its number lost, an `INDICES` plan made every later one look
    /// numbered past the next (refused: the shard never held indices again), and a `GRANT`
    /// stranded places the home counts as held there. A key that is no shard's of the plan's
    /// campaign and shard is ignored (campaign unknown) or rejected (`refused`), as before.
    fn hold_plan(
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        plan: ShardPlan,
        refused: Option<ProcessError>,
    ) -> Result<(), ProcessError> {
        let Some(shard_key) = plan_key(key, &plan) else { return refused.map_or(Ok(()), Err) };
        let held_key = held_plans_key(&shard_key);
        let mut store = ctx.store(super::STATE)?;
        let mut held: Vec<ShardPlan> = store.get_as(held_key.as_bytes())?.unwrap_or_default();
        if held.len() >= MAX_HELD_PLANS {
            return Err(ProcessError::reject(format!(
                "a {:?} plan of {} to shard {}: {MAX_HELD_PLANS} plans already wait for its \
                 definition",
                plan.kind, plan.campaign_id, plan.shard
            )));
        }
        held.push(plan);
        store.put_as(held_key.as_bytes(), &held)?;
        Ok(())
    }

    /// Shard: its home asks it to send a run home (`Forward`: a user-stage partition's notice
    /// named it), and this task's copy of the table does not name it and it holds no state: an
    /// edit of `options.shards` this task has yet to read, or never will (one undone before it
    /// read it: its held records and plans waited for ever, the whole run with them; review s32
    /// finding 1). The home's word is enough: its state starts here, where what was held for it
    /// applies and the plan sends it home, as a shard an edit took away (`leases::retiring`)
    /// does. Returns its key.
    fn start_asked_shard(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        plan: &ShardPlan,
    ) -> Result<String, ProcessError> {
        let shard = u32::try_from(plan.shard).unwrap_or_default();
        let mut state = self.load(ctx, campaign, &campaign_shards::key(&campaign.id, shard))?;
        self.save(ctx, campaign, &mut state)?;
        Ok(state.key)
    }

    /// Shard `scope` of `campaign`, known now: applies the plans that came before its
    /// definition (see [`Self::hold_plan`]), in order; one refused is logged and dropped (a
    /// dead letter would be), the others apply.
    pub(super) fn apply_held_plans(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        scope: &str,
    ) -> Result<(), ProcessError> {
        self.apply_ahead(ctx, campaign, scope)?; // the run records held with them first
        let held_key = held_plans_key(scope);
        let Some(held) = ctx.store(super::STATE)?.get_as::<Vec<ShardPlan>>(held_key.as_bytes())?
        else {
            return Ok(());
        };
        ctx.store(super::STATE)?.delete(held_key.as_bytes())?;
        for plan in held {
            let kind = plan.kind;
            if let Err(ProcessError::Reject(why)) = self.apply_plan(ctx, campaign, scope, plan) {
                tracing::warn!(place = %scope, ?kind, "a plan held for its definition refused: {why}");
            }
        }
        Ok(())
    }

    /// Shard: applies its home's `plan` to its state kept under `scope`.
    fn apply_plan(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        scope: &str,
        plan: ShardPlan,
    ) -> Result<(), ProcessError> {
        let mut state = self.load(ctx, campaign, scope)?;
        if plan.kind == ShardPlanKind::Tokens {
            self.on_tokens(ctx, campaign, &mut state, &plan)?;
            return self.save(ctx, campaign, &mut state);
        }
        if plan.kind.is_lease() {
            self.on_lease_plan(ctx, campaign, &mut state, &plan)?;
            return self.save(ctx, campaign, &mut state);
        }
        if plan.kind == ShardPlanKind::Place {
            self.take_passed_place(ctx, campaign, &mut state, &plan)?; // see `standby`
            return self.save(ctx, campaign, &mut state);
        }
        if plan.kind == ShardPlanKind::Indices {
            Self::on_index_plan(ctx, &mut state, &plan)?; // see `indices`
            return self.save(ctx, campaign, &mut state);
        }
        if plan.kind == ShardPlanKind::Evaluate {
            let kind = ShardReportKind::Evaluated;
            self.report_counters(ctx, campaign, &state, kind, Some(&plan.run_id))?;
            return self.save(ctx, campaign, &mut state);
        }
        if plan.run_id == super::indices::TRIGGERED_TEST {
            self.on_test_winner(ctx, &mut state, &plan)?; // see `ab`
            return self.save(ctx, campaign, &mut state);
        }
        // The winner is the campaign's, whatever run the plan is about (a newer run may have
        // replaced it here): a shard never falls back to alternating once it is chosen.
        if plan.winner_id.is_some() {
            state.winner_id.clone_from(&plan.winner_id);
        }
        let Some(mut run) = self.current_run(ctx, &mut state, &plan.run_id)? else {
            let unknown = state.run_mut(&plan.run_id).is_none();
            if plan.kind == ShardPlanKind::Release && unknown {
                // The next run replaced this one here before its plan came (its buffer is
                // dropped): it sent none of it, so its home can finish it (see `standby`).
                self.report(ctx, campaign, &state, ShardReportKind::RunSent, |r| {
                    r.run_id = Some(plan.run_id.clone());
                })?;
            }
            return self.save(ctx, campaign, &mut state);
        };
        let at = plan.timestamp_ms;
        match plan.kind {
            ShardPlanKind::Tripped => {
                run.phase = RunPhase::Tripped;
                self.drop_buffer(ctx, &mut state, &mut run, "safety_check")?;
            }
            ShardPlanKind::Release => {
                let places = plan.places.max(0) as u64;
                // A run without limits sends everyone, as on one task: users who come after the
                // release (at their local time, after do-not-disturb hours) too.
                let limits = &campaign.limits;
                let limited =
                    limits.per_run.is_some() || limits.total.is_some() || limits.daily.is_some();
                run.places = limited.then_some(places);
                run.test_from = plan.test_from.max(0) as u64;
                run.test_users = plan.test_users.max(0) as u64;
                run.test_total = plan.test_total.max(0) as u64;
                run.total_at_home = plan.limit.is_some(); // see `placed::cut_at_home`
                let indexed = ab::variant_at(&campaign.assignment, campaign.what.len(), 0);
                run.indices = indexed
                    .filter(|_| !run.total_at_home) // assigned at home
                    .map(|_| (run.test_from, run.test_from + places));
                run.phase = RunPhase::Releasing;
                if !super::is_held(campaign) {
                    self.release_step(ctx, campaign, &mut state, &mut run, at)?;
                }
            }
            ShardPlanKind::Grant
            | ShardPlanKind::Recall
            | ShardPlanKind::Full
            | ShardPlanKind::Recount
            | ShardPlanKind::Tokens
            | ShardPlanKind::Evaluate
            | ShardPlanKind::Place
            | ShardPlanKind::Indices => {}
            // Its tasks scanned the run with different shard counts: it goes home (`runs`).
            ShardPlanKind::Forward
                if matches!(run.phase, RunPhase::Collecting | RunPhase::Reported) =>
            {
                run.forward_after = Some(plan.places.max(0) as u64);
                if run.forwards() && state.in_flight == 0 {
                    self.forward_home(ctx, campaign, &mut state, &mut run)?;
                }
            }
            ShardPlanKind::Forward => {} // a repeat
            ShardPlanKind::Winner => {
                if run.phase == RunPhase::AwaitingWinner && !super::is_held(campaign) {
                    run.phase = RunPhase::Releasing;
                    self.release_step(ctx, campaign, &mut state, &mut run, at)?;
                }
            }
        }
        state.run = Some(run);
        self.save(ctx, campaign, &mut state)
    }
}

/// `key` when it is exactly the shard key `plan` is for, below [`MAX_SHARDS`].
fn plan_key(key: Option<&[u8]>, plan: &ShardPlan) -> Option<String> {
    let shard = u32::try_from(plan.shard).ok().filter(|shard| *shard < MAX_SHARDS)?;
    let shard_key = campaign_shards::key(&plan.campaign_id, shard);
    (key == Some(shard_key.as_bytes())).then_some(shard_key)
}

/// Key in the campaign states of the plans that came to shard key `key` before its definition
/// (see [`CampaignStage::hold_plan`]).
fn held_plans_key(key: &str) -> String {
    format!("{key}\u{0}plans")
}

/// At most this many plans wait for one shard's definition: past it, one is rejected.
const MAX_HELD_PLANS: usize = 10_000;

/// A plan of `kind` about run `run_id` for `shard`, with nothing else set.
pub(super) fn plan_to(
    campaign: &Campaign,
    run_id: &str,
    shard: i32,
    kind: ShardPlanKind,
    at: i64,
) -> ShardPlan {
    ShardPlan {
        campaign_id: campaign.id.clone(),
        app_id: campaign.app.clone(),
        run_id: run_id.to_string(),
        shard,
        kind,
        places: 0,
        test_from: 0,
        test_users: 0,
        test_total: 0,
        winner_id: None,
        limit: None,
        daily: None,
        timestamp_ms: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact_and_within_each_weight() {
        assert_eq!(
            apportion(5_000, &[5_100, 4_900, 5_000, 5_000]),
            vec![1_275, 1_225, 1_250, 1_250]
        );
        assert_eq!(apportion(10, &[1, 1, 100]), vec![0, 0, 10]);
        assert_eq!(apportion(3, &[1, 1, 1, 1]), vec![1, 1, 1, 0]);
        assert_eq!(apportion(0, &[0, 0]), vec![0, 0]);
        let shares = apportion(2_999, &[1_000, 1_000, 1_000]);
        assert_eq!(shares.iter().sum::<u64>(), 2_999);
    }
}
