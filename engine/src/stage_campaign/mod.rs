//! The campaign stage (partitioned by campaign id): turns candidates into rendered send
//! commands. It applies reach limits (exact, since one task owns a campaign), assigns variants
//! (alternation, A/B test then winner, split), renders the templates, builds the platform
//! payloads and keeps per-variant stats from skips and engagements.
//! Scheduled runs (safety check, per-run limit, A/B test population) are decided in `runs`.

pub mod ab;
mod ahead;
mod deleted;
mod held;
mod indices;
mod leases;
mod lifecycle;
mod placed;
mod places;
mod queue;
mod runs;
mod shards;
mod standby;
mod tokens;

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use ab::{pick_winner, SplitDelivery, VariantResult, WinnerRule};

use crate::{
    campaign::{
        shards::{self as campaign_shards, Scope},
        Assignment, Campaign, CampaignCache, CampaignStatus, Throttle, WinnerBy, CAMPAIGNS_TABLE,
    },
    model::{
        is_triggered_run, topics::TopicNames, CampaignLifecycleEvent, CampaignStats, Candidate,
        Engagement, EngagementKind, LifecycleKind, Record, RunTally, SchemaRegistry, SendCommand,
        SendConfirmed, ShardPlan, ShardReport, ShardReportKind, Skip, VariantStats,
    },
    outbox::{Drain, Outbox, OutboxState},
    payload::{self, Addressing},
    render::variant::CompiledVariant,
    runtime::{
        ProcessError, Processor, ProcessorContext, SourceRecord, Tick, Timer, TopologyBuilder,
    },
    settings::Settings,
};

const STATE: &str = "campaign-state";
const ASSIGNMENTS: &str = "assignments";
const OUTBOX: &str = "outbox";
const AB_TIMER: &str = "ab";
const OUTBOX_TIMER: &str = "outbox";
const STATS_TIMER: &str = "stats";
const RUN_TIMER: &str = "run";
const RUN_BUFFER: &str = "run-buffer";
const HELD_CANDIDATES: &str = "held-candidates";
const HELD_TIMER: &str = "held";
const IN_FLIGHT: &str = "in-flight";
const WAITING: &str = "waiting";
const WAITING_TIMER: &str = "waiting";

/// Timer key `<kind>:<campaign>`.
fn timer_key(kind: &str, campaign: &str) -> Vec<u8> {
    format!("{kind}:{campaign}").into_bytes()
}

/// Adds the campaign stage (campaign flow in; send commands, stats and lifecycle events out)
/// to a topology that has the campaigns global table.
pub fn add_campaign_stage(
    builder: TopologyBuilder,
    topics: &Arc<TopicNames>,
    settings: Arc<Settings>,
    stats_interval_ms: i64,
) -> TopologyBuilder {
    let names = Arc::clone(topics);
    builder.sub_topology(
        "campaign",
        move |_| CampaignStage::new(Arc::clone(&names), Arc::clone(&settings), stats_interval_ms),
        |s| {
            s.source(&topics.campaign_flow)
                .store(STATE)
                .store(ASSIGNMENTS)
                .store(OUTBOX)
                .store(RUN_BUFFER)
                .store(HELD_CANDIDATES)
                .store(IN_FLIGHT)
                .store(WAITING)
                .store(deleted::DEFINITIONS)
                .sink(&topics.push)
                .sink(&topics.campaign_flow)
                .sink(&topics.app_throttle)
                .sink(&topics.send_gate)
                .sink(&topics.stats)
                .sink(&topics.campaign_events)
        },
    )
}

/// Everything the stage remembers about one campaign, at its home or at one of its shards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CampaignState {
    /// Where this state lives: the campaign id at its home, a shard's key at a shard (store,
    /// queue and timer keys start with it).
    #[serde(skip)]
    key: String,
    /// Home: the latest cumulative counters of each shard (see `shards`).
    #[serde(default)]
    shard_counters: BTreeMap<u32, shards::Counters>,
    /// Home: each shard's users sent to over the campaign's life (its highest report), counted
    /// in `sent` (see `shards`).
    #[serde(default)]
    shard_sent: BTreeMap<u32, i64>,
    /// Home: each shard's places of the total limit (see `leases`).
    #[serde(default)]
    leases: BTreeMap<u32, leases::Lease>,
    /// Shard: its places of the total limit (see `leases`).
    #[serde(default)]
    lease: leases::ShardLease,
    /// Shard: its tokens of the campaign throttle's window (see `tokens`).
    #[serde(default)]
    tokens: tokens::ShardTokens,
    /// Home: the campaign throttle's window tokens granted to the shards (see `tokens`).
    #[serde(default)]
    token_pool: tokens::TokenPool,
    /// Shard: its global assignment indices (alternation, split; see `indices`).
    #[serde(default = "indices::ShardIndices::restored")]
    indices: indices::ShardIndices,
    /// Home: the assignment indices the shards gave back (see `indices`).
    #[serde(default)]
    index_pool: indices::IndexPool,
    /// Home: every shard was given its first places (see `leases`).
    #[serde(default)]
    pre_leased: bool,
    /// Home: the total limit and shards in effect its leases are made under (see `leases`).
    #[serde(default)]
    lease_terms: Option<leases::Terms>,
    /// Home: the widest `options.shards` above 1 it has seen; a shard below it that an edit took
    /// away still reports (see `leases::recounted`). Not kept for a campaign on one shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    widest: Option<u32>,
    /// Users sent to over the campaign's life.
    sent: u64,
    /// (day in the campaign timezone, users sent to that day).
    day: (String, u64),
    /// Users assigned a variant so far (alternation position).
    assigned: u64,
    /// Weighted round robin state of a split.
    split: Option<Vec<i64>>,
    /// When the A/B test audience was full.
    test_full_at: Option<i64>,
    /// The id of the A/B winner, once chosen.
    #[serde(default)]
    winner_id: Option<String>,
    /// Per-variant counters, in the order variants first appeared; variants removed from the
    /// campaign keep theirs.
    variants: Vec<VariantStats>,
    /// Users not sent to, by reason.
    skipped: BTreeMap<String, i64>,
    /// Failed sends, by the provider's reason.
    #[serde(default)]
    failed: BTreeMap<String, i64>,
    /// Throttle window and outbox positions.
    #[serde(default)]
    outbox: OutboxState,
    /// When stats were last published.
    #[serde(default)]
    stats_published_at: i64,
    /// When the pending stats timer fires, if one is scheduled.
    #[serde(default)]
    stats_due: Option<i64>,
    /// The latest scheduled run.
    #[serde(default)]
    run: Option<runs::RunState>,
    /// Earlier runs, replaced by a newer one while holding places for users still to come, kept
    /// until their windows close (see `standby`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    earlier: Vec<runs::RunState>,
    /// Runs whose windows closed, and when: their users who expired are remembered (`standby`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    expired: Vec<(String, i64)>,
    /// A shard: the latest run it sent home, newer runs since or not (`runs::gather`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    went_home: Option<String>,
    /// The status last announced as a lifecycle event (see `lifecycle`).
    #[serde(default)]
    announced_status: Option<CampaignStatus>,
    /// `COMPLETED` was announced (total limit or end date): announced once.
    #[serde(default)]
    completed: bool,
    /// Candidates held while paused so far (the next one's arrival number).
    #[serde(default)]
    held_seq: u64,
    /// The day whose daily limit was reached and announced.
    #[serde(default)]
    daily_limit_announced: Option<String>,
    /// Places held by notifications the send gate has yet to confirm (see `places`).
    #[serde(default)]
    in_flight: u64,
    /// Candidates waiting for a place in flight to come back.
    #[serde(default)]
    waiting: u64,
    /// Arrival number of the next waiting candidate.
    #[serde(default)]
    waiting_seq: u64,
    /// The total limit whose `LIMIT_REACHED` was announced.
    #[serde(default)]
    total_limit_announced: Option<u64>,
    /// A triggered A/B test's slots and the users waiting for its winner (see `ab`).
    #[serde(default)]
    ab_test: ab::TriggeredTest,
    /// The campaign is no longer in the table: this place drains what it holds under its last
    /// definition (see `deleted`). Not stored: known again at every load.
    #[serde(skip)]
    deleted: bool,
}

impl CampaignState {
    /// Whether this is the state of one of the campaign's shards (not its home).
    fn is_shard(&self, campaign: &Campaign) -> bool {
        self.key != campaign.id
    }

    /// Whether this state has counted nothing yet: no send, skip, failure or variant counter.
    fn counts_nothing(&self) -> bool {
        let zero = |v: &VariantStats| {
            *v == VariantStats { variant_id: v.variant_id.clone(), ..Default::default() }
        };
        self.sent == 0
            && self.skipped.is_empty()
            && self.failed.is_empty()
            && self.variants.iter().all(zero)
    }

    /// Adds counters for variants the campaign gained since the state was saved.
    fn track_variants(&mut self, campaign: &Campaign) {
        for message in &campaign.what {
            if !self.variants.iter().any(|v| v.variant_id == message.id) {
                self.variants
                    .push(VariantStats { variant_id: message.id.clone(), ..Default::default() });
            }
        }
    }

    /// The counters of variant `id`.
    fn variant_stats(&mut self, id: &str) -> Option<&mut VariantStats> {
        self.variants.iter_mut().find(|v| v.variant_id == id)
    }

    /// The winner's position among the campaign's variants; `None` before a winner is chosen or
    /// when an edit removed it.
    fn winner(&self, campaign: &Campaign) -> Option<usize> {
        let id = self.winner_id.as_deref()?;
        campaign.what.iter().position(|m| m.id == id)
    }

    /// Counts a user not sent to, by reason.
    fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }
}

/// The campaign-stage processor of one task.
pub struct CampaignStage {
    topics: Arc<TopicNames>,
    settings: Arc<Settings>,
    stats_interval_ms: i64,
    campaigns: CampaignCache,
    compiled: BTreeMap<String, Vec<CompiledVariant>>,
    /// The campaigns table changed since lifecycle changes were last looked for.
    table_changed: bool,
    /// When (task clock) to look for passed end dates next.
    next_end_check: i64,
    /// The states last saved, as saved (see [`StateCache`]).
    states: StateCache,
}

/// Decoded copies of the campaign states this task saved last, so that the next candidate of a
/// campaign does not decode its state again (one JSON read per candidate was the campaign
/// stage's largest cost in a broadcast). A copy is taken out when loaded and put back when
/// saved, so a state a call loaded and dropped unsaved is read from the store next time; the
/// copies are forgotten when a call is rolled back ([`Processor::on_rolled_back`]), and a new
/// task (after an aborted transaction or a move) starts with none.
#[derive(Default)]
struct StateCache(RefCell<HashMap<String, CampaignState>>);

impl StateCache {
    /// Campaign states kept at most; beyond, the copies are dropped and kept again as saved.
    const MAX: usize = 4_096;

    fn take(&self, key: &str) -> Option<CampaignState> {
        self.0.borrow_mut().remove(key)
    }

    fn keep(&self, state: &CampaignState) {
        let mut states = self.0.borrow_mut();
        if states.len() >= Self::MAX && !states.contains_key(&state.key) {
            states.clear();
        }
        states.insert(state.key.clone(), state.clone());
    }

    fn forget(&mut self) {
        self.0.get_mut().clear();
    }
}

impl CampaignStage {
    /// A processor writing to `topics`, routing through the app stage the commands of apps
    /// whose `settings` have a global throttle, and publishing stats at most every
    /// `stats_interval_ms` per campaign (0: on every change).
    pub fn new(topics: Arc<TopicNames>, settings: Arc<Settings>, stats_interval_ms: i64) -> Self {
        Self {
            topics,
            settings,
            stats_interval_ms,
            campaigns: CampaignCache::default(),
            compiled: BTreeMap::new(),
            table_changed: true,
            next_end_check: i64::MIN,
            states: StateCache::default(),
        }
    }

    fn refresh_campaigns(&mut self, ctx: &ProcessorContext<'_>) {
        if !self.campaigns.refresh(ctx.global(CAMPAIGNS_TABLE)) {
            return;
        }
        self.compiled.clear();
        for campaign in self.campaigns.book().all() {
            let variants: Result<Vec<CompiledVariant>, String> =
                campaign.what.iter().map(CompiledVariant::compile).collect();
            if let Ok(variants) = variants {
                self.compiled.insert(campaign.id.clone(), variants);
            }
        }
    }

    fn emit<R: Record>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        topic: &str,
        key: &str,
        record: &R,
    ) -> Result<(), ProcessError> {
        Ok(ctx.send_record(topic, key.as_bytes(), record)?)
    }

    fn lifecycle(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        kind: LifecycleKind,
        details: BTreeMap<String, String>,
    ) -> Result<(), ProcessError> {
        let event = CampaignLifecycleEvent {
            campaign_id: campaign.id.clone(),
            app_id: campaign.app.clone(),
            kind,
            run_id: None,
            timestamp_ms: ctx.timestamp_ms(),
            details,
        };
        self.emit(ctx, &self.topics.campaign_events, &campaign.id, &event)
    }

    fn publish_stats(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &CampaignState,
    ) -> Result<(), ProcessError> {
        let merged = state.merged();
        let stats = CampaignStats {
            campaign_id: campaign.id.clone(),
            app_id: campaign.app.clone(),
            as_of_ms: ctx.timestamp_ms(),
            variants: merged.variants,
            skipped: merged.skipped,
            failed: merged.failed,
        };
        self.emit(ctx, &self.topics.stats, &campaign.id, &stats)
    }

    /// The state of `campaign` kept under `key` (its home's or a shard's).
    fn load(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        key: &str,
    ) -> Result<CampaignState, ProcessError> {
        let mut state = match self.states.take(key) {
            Some(mut state) => {
                // As decoded: what is not stored starts empty.
                state.indices.given = None;
                state
            }
            None => ctx.store(STATE)?.get_as::<CampaignState>(key.as_bytes())?.unwrap_or_default(),
        };
        state.key = key.to_string();
        state.deleted = self.campaigns.book().get(&campaign.id).is_none();
        state.track_variants(campaign);
        Ok(state)
    }

    /// Publishes the state's counters at most once per stats interval (a timer publishes the
    /// last changes of an interval): the home's stats snapshot, or a shard's report to its home.
    /// A shard that has counted nothing has nothing to tell its home, which may not have heard
    /// of it yet (an edit of `options.shards` this task read first: the report was a dead
    /// letter, review s32 finding 2); its first counters go once it counts something.
    fn publish_counters(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        let shard = state.is_shard(campaign);
        if shard && state.counts_nothing() {
            return Ok(());
        }
        let now = ctx.timestamp_ms();
        if now - state.stats_published_at >= self.stats_interval_ms {
            state.stats_published_at = now;
            state.stats_due = None;
            if shard {
                self.report_counters(ctx, campaign, state, ShardReportKind::Counters, None)?;
            } else {
                self.publish_stats(ctx, campaign, state)?;
            }
        } else if state.stats_due.is_none() {
            let due = state.stats_published_at + self.stats_interval_ms;
            state.stats_due = Some(due);
            ctx.schedule(due, &timer_key(STATS_TIMER, &state.key))?;
        }
        Ok(())
    }

    /// Stores the campaign's state and publishes its counters (see [`Self::publish_counters`]).
    fn save(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        self.publish_counters(ctx, campaign, state)?;
        ctx.store(STATE)?.put_as(state.key.as_bytes(), state)?;
        self.states.keep(state);
        if state.deleted {
            self.forget_drained(ctx, state)?;
        }
        Ok(())
    }

    fn on_candidate(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        candidate: Candidate,
    ) -> Result<(), ProcessError> {
        let Some(campaign) = self.known(ctx, &candidate.campaign_id, key)? else {
            let refused = ProcessError::reject(format!(
                "candidate for unknown campaign {}",
                candidate.campaign_id
            ));
            if is_triggered_run(&candidate.run_id) {
                return Err(refused);
            }
            let id = candidate.campaign_id.clone();
            let held = ahead::Ahead::Candidate(candidate);
            return Self::hold_ahead(ctx, &id, key, held, Some(refused));
        };
        if self.misrouted(&campaign, key, &candidate) {
            // Its home applies every limit of the campaign (its rules keep it at home, a stale
            // copy of the campaigns table routed it to a shard, or its key names none).
            return self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &candidate);
        }
        if let Some(shard) = self.shard_of_stray(&campaign, key, &candidate) {
            // Sent on a place its shard holds, never on the home's own count (see `leases`).
            return self.emit(ctx, &self.topics.campaign_flow, &shard, &candidate);
        }
        // A scheduled run's user comes to the shard holding their place in it, even one an edit
        // took away since (review s30 finding 2), as its answers do; to one this task does not
        // know yet, it waits for the definition (`ahead`).
        let scope = match Self::answer_scope(ctx, key, &campaign) {
            Ok(scope) => scope,
            Err(refused) if is_triggered_run(&candidate.run_id) => return Err(refused),
            Err(refused) => {
                let held = ahead::Ahead::Candidate(candidate);
                return Self::hold_ahead(ctx, &campaign.id, key, held, Some(refused));
            }
        };
        if !is_triggered_run(&candidate.run_id) {
            self.apply_ahead(ctx, &campaign, &scope)?; // those that came before it first
        }
        let mut state = self.load(ctx, &campaign, &scope)?;
        let candidate = Self::leaving_now(ctx, candidate);
        self.admit(ctx, &campaign, &mut state, candidate)?;
        self.save(ctx, &campaign, &mut state)
    }

    /// A newcomer (a candidate just come, or one held by a pause, at the resume) queues behind
    /// the users waiting for a place, else is placed.
    fn admit(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: Candidate,
    ) -> Result<(), ProcessError> {
        if is_triggered_run(&candidate.run_id) && self.queues_behind(campaign, state) {
            self.queue_behind(ctx, state, candidate)
        } else {
            self.place(ctx, campaign, state, candidate)
        }
    }

    /// A trigger occurrence's notification leaves now: it is timed by the task's clock, not by
    /// its event's stamp. An event stamped late by its producer is capped, limited and expires
    /// as of the day it leaves; one stamped ahead by a device whose clock runs fast (up to the
    /// hour ingest accepts) must not open the next day's places before midnight. Its run id,
    /// hence its message id, is the occurrence's, unchanged. A scheduled run's candidate keeps
    /// the run's time.
    fn leaving_now(ctx: &ProcessorContext<'_>, candidate: Candidate) -> Candidate {
        if !is_triggered_run(&candidate.run_id) {
            return candidate;
        }
        Candidate { qualified_at_ms: ctx.effective_ms(), ..candidate }
    }

    /// Whether a triggered candidate came to a key other than the campaign's home where no
    /// shard of the campaign takes triggered candidates now: to a shard above those in effect
    /// (all of them, shard 0 too, while the campaign's rules keep it at home), or to a key that
    /// names no shard. A scheduled run's candidates stay with the shard that buffers the run.
    fn misrouted(&self, campaign: &Campaign, key: Option<&[u8]>, candidate: &Candidate) -> bool {
        let Some(key) = key.filter(|key| *key != campaign.id.as_bytes()) else { return false };
        is_triggered_run(&candidate.run_id)
            && match campaign_shards::scope(key, campaign) {
                Scope::Shard(shard) => {
                    let shards = campaign_shards::in_effect(campaign);
                    shards <= 1 || shard >= shards
                }
                Scope::Home | Scope::Foreign => true,
            }
    }

    /// The shard key a triggered candidate that came to the campaign's home goes on to, while
    /// shards take the campaign's triggered candidates (a user stage with a stale copy of the
    /// campaigns table keyed it home): its user's shard among those in effect. It keeps its run
    /// id, hence its message id, and is forwarded in the transaction that consumes it.
    fn shard_of_stray(
        &self,
        campaign: &Campaign,
        key: Option<&[u8]>,
        candidate: &Candidate,
    ) -> Option<String> {
        let home = key == Some(campaign.id.as_bytes());
        let sharded = campaign_shards::in_effect(campaign) > 1;
        (home && sharded && is_triggered_run(&candidate.run_id)).then(|| {
            let (user, run) = (Some(candidate.user_id.as_str()), Some(candidate.run_id.as_str()));
            campaign_shards::flow_key(campaign, user, run)
        })
    }

    /// Delivers a candidate: through its scheduled run, or at once for a trigger occurrence.
    fn place(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: Candidate,
    ) -> Result<(), ProcessError> {
        // A run's user its shard placed and sent home, to be sent within the limits here.
        let at_home = !state.is_shard(campaign);
        let taken = placed::taken(&candidate)
            .filter(|_| at_home && placed::of_shards_run(state, &candidate.run_id));
        if let Some(variant) = taken {
            return self.deliver_placed(ctx, campaign, state, &candidate, variant);
        }
        // At home an edit may start a recount of the leases: its triggered candidates wait.
        if is_triggered_run(&candidate.run_id) && !state.is_shard(campaign) {
            self.renew_leases(ctx, campaign, state)?;
        }
        if is_triggered_run(&candidate.run_id) && Self::holds_for_recount(campaign, state) {
            return self.wait_for_places(ctx, state, &candidate);
        }
        if is_triggered_run(&candidate.run_id) && Self::leases(campaign, state) {
            self.place_leased(ctx, campaign, state, candidate)
        } else if is_triggered_run(&candidate.run_id) {
            self.place_triggered(ctx, campaign, state, candidate)
        } else {
            self.on_run_candidate(ctx, campaign, state, candidate)
        }
    }

    /// Applies the campaign's limits to one candidate, gives it a variant (`variant`, when the
    /// run already chose one, else by the campaign's assignment), renders its message and
    /// dispatches the commands.
    fn deliver(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: &Candidate,
        variant: Option<usize>,
    ) -> Result<(), ProcessError> {
        let at = candidate.qualified_at_ms;
        match campaign.status {
            CampaignStatus::Active => {}
            CampaignStatus::Stopped => {
                state.skip(state.ended_as());
                return Ok(());
            }
            // Already on the flow when the pause came: kept until resume (see `held`).
            CampaignStatus::Paused | CampaignStatus::Draft => {
                return self.hold(ctx, state, candidate);
            }
        }
        // A run's user at a shard no longer in effect goes home, for its limits (`placed`).
        if placed::sends_home(campaign, state, candidate) {
            return self.send_home(ctx, campaign, candidate, variant);
        }
        // A shard sends within the places its home planned or leased (see `shards`, `leases`),
        // counting its day's sends for the daily limit.
        let full = if state.is_shard(campaign) {
            state.enter_day(&day_in(campaign, at));
            None
        } else {
            state.full_limit(campaign, at)
        };
        match full {
            None => {}
            // A place in flight may come back: wait for it rather than refuse.
            Some(limit) if self.wait_for_a_place(ctx, campaign, state, candidate, &limit)? => {
                return Ok(());
            }
            Some(places::FullLimit::Total) => {
                state.skip("total_limit");
                return Ok(());
            }
            Some(places::FullLimit::Daily(limit)) => {
                state.skip("daily_limit");
                if state.daily_limit_announced.as_ref() != Some(&state.day.0) {
                    state.daily_limit_announced = Some(state.day.0.clone());
                    let details = BTreeMap::from([
                        ("limit".to_string(), "daily".to_string()),
                        ("day".to_string(), state.day.0.clone()),
                        ("sent".to_string(), limit.to_string()),
                    ]);
                    self.lifecycle(ctx, campaign, LifecycleKind::LimitReached, details)?;
                }
                return Ok(());
            }
        }
        self.maybe_declare_winner(ctx, campaign, state, at)?;
        let variant = self.assign(ctx, campaign, state, candidate, variant)?;
        if let Some(stats) = state.variant_stats(&campaign.what[variant].id) {
            stats.qualified += 1;
        }
        let Some(compiled) = self.compiled.get(&campaign.id).and_then(|c| c.get(variant)) else {
            state.skip("template_error");
            return Ok(());
        };
        let strict = true;
        let rendered = match compiled.render(
            &candidate.profile,
            &candidate.event_properties,
            strict,
        ) {
            Ok(rendered) => rendered,
            Err(error) => {
                tracing::debug!(campaign = %campaign.id, user = %candidate.user_id, %error, "template error");
                state.skip("template_error");
                return Ok(());
            }
        };
        let message = &campaign.what[variant];
        let confirm = self.confirms(campaign);
        let mut commands = Vec::new();
        for device in &candidate.devices {
            let message_id = payload::message_id(
                &campaign.id,
                &candidate.run_id,
                &candidate.user_id,
                &device.device_id,
            );
            let to = Addressing {
                campaign: &campaign.id,
                variant: &message.id,
                message_id: &message_id,
                token: &device.token,
            };
            match payload::request(device.platform, &rendered, &message.push, &to, at) {
                Ok((body, headers)) => commands.push(SendCommand {
                    message_id,
                    campaign_id: campaign.id.clone(),
                    variant_id: message.id.clone(),
                    run_id: candidate.run_id.clone(),
                    app_id: campaign.app.clone(),
                    user_id: candidate.user_id.clone(),
                    device_id: device.device_id.clone(),
                    platform: device.platform,
                    token: device.token.clone(),
                    payload: body,
                    headers,
                    created_at_ms: at,
                    expires_at_ms: expiry(campaign, message.push.ttl_ms, at),
                    confirm,
                    place_key: Some(state.key.clone()),
                }),
                Err(error) => state.skip(error.reason()),
            }
        }
        if commands.is_empty() {
            return Ok(());
        }
        self.dispatch(ctx, campaign, state, commands, at)?;
        Self::spend_index(state, confirm.then_some((&candidate.user_id, &candidate.run_id)));
        self.take_place(ctx, campaign, state, candidate, confirm)
    }

    /// The campaign's throttle outbox, if it has a throttle.
    fn outbox<'k>(campaign: &Campaign, owner: &'k str, timer: &'k [u8]) -> Option<Outbox<'k>> {
        campaign.options.throttle.map(|throttle| Outbox { store: OUTBOX, owner, timer, throttle })
    }

    /// Sends one user's commands now, or queues them in the outbox when the campaign's throttle
    /// window is full (or others are already waiting: the outbox keeps arrival order).
    fn dispatch(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        commands: Vec<SendCommand>,
        at: i64,
    ) -> Result<(), ProcessError> {
        if let Some(throttle) = Self::pooled(campaign) {
            return self.dispatch_on_tokens(ctx, campaign, state, throttle, commands);
        }
        let timer = timer_key(OUTBOX_TIMER, &state.key);
        let Some(outbox) = Self::outbox(campaign, &state.key, &timer) else {
            return self.send(ctx, campaign, state, &commands);
        };
        match outbox.offer(ctx, &mut state.outbox, commands, at)? {
            Some(commands) => self.send(ctx, campaign, state, &commands),
            None => Ok(()),
        }
    }

    /// A throttle window opened at `at`: sends up to `max` queued users in arrival order. A
    /// paused campaign holds its outbox; a stopped one drops it (counted).
    fn release(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        at: i64,
    ) -> Result<(), ProcessError> {
        let timer = timer_key(OUTBOX_TIMER, &state.key);
        // A throttle an edit removed: everything still queued leaves now.
        let unthrottled = Throttle { max: u64::MAX, per_ms: 1 };
        let throttle = campaign.options.throttle.unwrap_or(unthrottled);
        let owner = state.key.clone();
        let outbox = Outbox { store: OUTBOX, owner: &owner, timer: &timer, throttle };
        let drain = match campaign.status {
            CampaignStatus::Active => Drain::Send,
            CampaignStatus::Stopped => Drain::Drop,
            CampaignStatus::Paused | CampaignStatus::Draft => Drain::Hold,
        };
        let mut queue = std::mem::take(&mut state.outbox);
        let released = outbox.release(
            ctx,
            &mut queue,
            at,
            drain,
            |ctx, commands: Vec<SendCommand>, dropped| {
                if dropped {
                    state.skip(state.ended_as());
                    // Its place never reaches the gate: settled here, given back.
                    if let Some(command) = commands.iter().find(|c| c.confirm) {
                        let (user, run) = (&command.user_id, &command.run_id);
                        self.settle(ctx, campaign, state, user, run, true)?;
                    }
                    return Ok(());
                }
                let released: Vec<SendCommand> =
                    commands.into_iter().map(|c| SendCommand { created_at_ms: at, ..c }).collect();
                self.send(ctx, campaign, state, &released)
            },
        );
        state.outbox = queue;
        released
    }

    /// Produces one user's send commands and counts them for their variant.
    /// Commands of an app with a global throttle go through the app stage's outbox first; those
    /// of an app with frequency caps leave through the user stage's send gate.
    fn send(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        commands: &[SendCommand],
    ) -> Result<(), ProcessError> {
        let app = self.settings.app(&campaign.app);
        let (topic, by_app) = match app.throttle {
            Some(_) => (self.topics.app_throttle.as_str(), true),
            None => (app.send_topic(&self.topics, commands.iter().any(|c| c.confirm)), false),
        };
        for command in commands {
            let key = if by_app { &command.app_id } else { &command.user_id };
            self.emit(ctx, topic, key, command)?;
            if let Some(stats) = state.variant_stats(&command.variant_id) {
                stats.sent += 1;
            }
        }
        Ok(())
    }

    /// The user's variant: sticky once assigned; else `chosen` (a scheduled run's test plan),
    /// the winner, the split, or alternation.
    fn assign(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: &Candidate,
        chosen: Option<usize>,
    ) -> Result<usize, ProcessError> {
        let (user, profile) = (&candidate.user_id, &candidate.profile);
        let key = assignment_key(&state.key, user);
        state.indices.given = None; // a user sent on a sticky variant spends no index
        if let Some(variant) = Self::sticky(ctx, campaign, &key)? {
            return Ok(variant);
        }
        let variants = campaign.what.len();
        let leased = match chosen {
            None => Self::leased_variant(campaign, state, candidate), // see `indices`
            Some(_) => None, // a run's own index or test variant
        };
        let variant = match (&campaign.assignment, state.winner(campaign)) {
            _ if chosen.is_some_and(|v| v < variants) => chosen.unwrap_or_default(),
            _ if leased.is_some() => leased.unwrap_or_default(),
            (Assignment::ByProperty(property), _) => {
                let value = match profile.get(property) {
                    Some(crate::model::PropertyValue::String(value)) => Some(value.as_str()),
                    _ => None,
                };
                let position = |id: &str| campaign.what.iter().position(|m| m.id == id);
                value.and_then(position).or_else(|| position("default")).unwrap_or(0)
            }
            (Assignment::Single, _) => 0,
            (Assignment::AbTest(_), Some(winner)) => winner,
            (Assignment::Split(shares), _) => {
                let mut split = SplitDelivery::new(shares);
                // An edit that changed the number of shares starts the rotation over.
                if let Some(current) = state.split.as_ref().filter(|c| c.len() == shares.len()) {
                    split = SplitDelivery::resume(shares, current.clone());
                }
                let variant = split.next_variant();
                state.split = Some(split.state().to_vec());
                variant
            }
            (Assignment::Alternate, _) | (Assignment::AbTest(_), None) => {
                ab::alternate(state.assigned, variants)
            }
        };
        state.assigned += 1;
        ctx.store(ASSIGNMENTS)?.put_as(key.as_bytes(), &campaign.what[variant].id)?;
        Ok(variant)
    }

    /// The variant kept under `key` (see [`assignment_key`]) in the assignments (sticky by
    /// variant id); `None` when there is none, or an edit removed it (or the entry does not
    /// read): the user is assigned again.
    fn sticky(
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        key: &str,
    ) -> Result<Option<usize>, ProcessError> {
        let sticky = ctx.store(ASSIGNMENTS)?.get(key.as_bytes())?;
        let sticky = sticky.and_then(|bytes| serde_json::from_slice::<String>(&bytes).ok());
        Ok(sticky.and_then(|id| campaign.what.iter().position(|m| m.id == id)))
    }

    /// The A/B test audience is complete at `at`: the winner is chosen after the wait, counted
    /// from when the last test sends leave (never from a qualifying event's time in the past:
    /// clicks only come after the sends).
    fn start_evaluation(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        at: i64,
    ) -> Result<(), ProcessError> {
        let Assignment::AbTest(test) = &campaign.assignment else { return Ok(()) };
        let at = at.max(ctx.now_ms());
        state.test_full_at = Some(at);
        ctx.schedule(at + test.evaluate_after_ms, &timer_key(AB_TIMER, &state.key))?;
        Ok(())
    }

    /// The A/B test's wait is over (or its shards answered): the winner is declared, told to
    /// the shards, and the users waiting for it are released.
    fn winner_due(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        at: i64,
    ) -> Result<(), ProcessError> {
        let chosen = state.winner_id.is_some();
        self.maybe_declare_winner(ctx, campaign, state, at)?;
        if !chosen && state.winner_id.is_some() {
            self.announce_winner_to_shards(ctx, campaign, state)?;
            self.announce_test_winner(ctx, campaign, state)?; // a triggered test's (`ab`)
        }
        if !is_held(campaign) {
            self.release_run(ctx, campaign, state, at)?;
        }
        Ok(())
    }

    /// Declares the A/B winner once the test audience is full and the wait has passed (over
    /// shards, on their counters as of then: see `awaits_evaluation`); declares it again among
    /// the remaining variants when an edit removed the winner.
    fn maybe_declare_winner(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        now: i64,
    ) -> Result<(), ProcessError> {
        let Assignment::AbTest(test) = &campaign.assignment else { return Ok(()) };
        let Some(full_at) = state.test_full_at else { return Ok(()) };
        if state.winner(campaign).is_some() || now < full_at + test.evaluate_after_ms {
            return Ok(());
        }
        if self.awaits_evaluation(ctx, campaign, state, now)? {
            return Ok(());
        }
        let merged = state.merged();
        let results: Vec<VariantResult> = campaign
            .what
            .iter()
            .map(|m| {
                let stats = merged.variant(&m.id);
                VariantResult { sent: stats.sent.max(0) as u64, clicks: stats.clicks.max(0) as u64 }
            })
            .collect();
        let rule = match test.winner_by {
            WinnerBy::Clicks => WinnerRule::MostClicks,
            WinnerBy::ClickThroughRate => WinnerRule::ClickThroughRate,
        };
        let winner = pick_winner(&results, rule);
        state.winner_id = Some(campaign.what[winner.variant].id.clone());
        let mut details = BTreeMap::from([
            ("winner".to_string(), campaign.what[winner.variant].id.clone()),
            ("rule".to_string(), format!("{:?}", test.winner_by)),
        ]);
        for (variant, result) in campaign.what.iter().zip(&results) {
            details.insert(format!("clicks_{}", variant.id), result.clicks.to_string());
            details.insert(format!("sent_{}", variant.id), result.sent.to_string());
        }
        if let Some(p) = winner.p_value {
            details.insert("p_value".into(), format!("{p:.6}"));
        }
        self.lifecycle(ctx, campaign, LifecycleKind::WinnerDeclared, details)
    }

    fn on_skip(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        skip: Skip,
    ) -> Result<(), ProcessError> {
        let of_run = skip.run_id.as_deref().is_some_and(|run| !is_triggered_run(run));
        let Some(campaign) = self.known(ctx, &skip.campaign_id, key)? else {
            if !of_run {
                return Ok(());
            }
            let id = skip.campaign_id.clone();
            return Self::hold_ahead(ctx, &id, key, ahead::Ahead::Skip(skip), None);
        };
        // About a scheduled run's user, to a shard this task does not know yet: it waits for the
        // definition (`ahead`).
        let scope = match Self::answer_scope(ctx, key, &campaign) {
            Ok(scope) => scope,
            Err(refused) if of_run => {
                let held = ahead::Ahead::Skip(skip);
                return Self::hold_ahead(ctx, &campaign.id, key, held, Some(refused));
            }
            Err(refused) => return Err(refused),
        };
        if of_run {
            self.apply_ahead(ctx, &campaign, &scope)?; // those that came before it first
        }
        let mut state = self.load(ctx, &campaign, &scope)?;
        // About a user of a run this shard sent home (`runs::gather`): home too.
        let went_home = skip.run_id.as_ref().is_some_and(|run| state.run_went_home(run));
        if skip.variant_id.is_none() && went_home {
            return self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &skip);
        }
        // A user a run selected who does not come passes the place on (see `standby`).
        let counted = self.not_coming(ctx, &campaign, &mut state, &skip)?;
        // A command the send gate refused takes back its variant's sent count; the first of its
        // notification also gives back the user's place in the limits.
        if let Some(stats) = skip.variant_id.as_deref().and_then(|id| state.variant_stats(id)) {
            stats.sent -= 1;
        }
        if (skip.variant_id.is_none() || skip.returns_place) && !counted {
            state.skip(&skip.reason);
        }
        // A triggered A/B test place it took goes back too.
        if let (true, Some(_), Some(run)) =
            (skip.returns_place, skip.variant_id.as_deref(), skip.run_id.as_deref())
        {
            self.return_test_place(ctx, &campaign, &mut state, &skip.user_id, run)?;
        }
        // Its assignment index too (see `indices`), before its place.
        if let (true, Some(_), Some(run)) =
            (skip.returns_place, skip.variant_id.as_deref(), skip.run_id.as_deref())
        {
            Self::settle_index(ctx, &mut state, &skip.user_id, run, true)?;
        }
        // A notification sent without confirmation (the campaign had no limits then, or an
        // older version sent it) gives back its total count, and its daily count unless it was
        // throttled (it then carries its release time, maybe a later day than it was counted).
        if !self.return_place(ctx, &campaign, &mut state, &skip)? && skip.returns_place {
            state.sent = state.sent.saturating_sub(1);
            let throttled = campaign.options.throttle.is_some()
                || self.settings.app(&campaign.app).throttle.is_some();
            if !throttled && state.day.0 == day_in(&campaign, skip.timestamp_ms) {
                state.day.1 = state.day.1.saturating_sub(1);
            }
        }
        self.save(ctx, &campaign, &mut state)
    }

    fn on_engagement(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        key: Option<&[u8]>,
        engagement: Engagement,
    ) -> Result<(), ProcessError> {
        let Some(campaign) = self.known(ctx, &engagement.campaign_id, key)? else {
            return Ok(());
        };
        let mut state = self.load(ctx, &campaign, &scope(key, &campaign)?)?;
        let variant = engagement.variant_id.as_deref();
        if let Some(stats) = variant.and_then(|id| state.variant_stats(id)) {
            match engagement.kind {
                EngagementKind::Impression => stats.impressions += 1,
                EngagementKind::Click => stats.clicks += 1,
                EngagementKind::Conversion => stats.conversions += 1,
                EngagementKind::Delivered => stats.delivered += 1,
                EngagementKind::Failed | EngagementKind::TokenInvalid => stats.failed += 1,
            }
        }
        if matches!(engagement.kind, EngagementKind::Failed | EngagementKind::TokenInvalid) {
            let reason = engagement.reason.as_deref().unwrap_or("unknown");
            *state.failed.entry(reason.to_string()).or_default() += 1;
        }
        self.maybe_declare_winner(ctx, &campaign, &mut state, engagement.timestamp_ms)?;
        self.save(ctx, &campaign, &mut state)
    }
}

/// The state a record keyed `key` concerns: the campaign's home (its id, or no key) or the
/// shard its canonical key names; any other key is rejected (no second home, no forged shard).
fn scope(key: Option<&[u8]>, campaign: &Campaign) -> Result<String, ProcessError> {
    let key = key.unwrap_or(campaign.id.as_bytes());
    match campaign_shards::scope(key, campaign) {
        Scope::Home => Ok(campaign.id.clone()),
        Scope::Shard(shard) => Ok(campaign_shards::key(&campaign.id, shard)),
        Scope::Foreign => Err(ProcessError::reject(format!(
            "a record of campaign {} under the key {:?}, neither its home nor one of its shards",
            campaign.id,
            String::from_utf8_lossy(key)
        ))),
    }
}

/// When a command created at `at` stops being worth sending: after the message's time to
/// live, and never after the campaign's end (its delivery cut-off).
fn expiry(campaign: &Campaign, ttl_ms: Option<i64>, at: i64) -> Option<i64> {
    let cut_off = campaign.when.end.map(|end| end.timestamp_millis());
    match (ttl_ms.map(|ttl| at + ttl), cut_off) {
        (Some(ttl), Some(end)) => Some(ttl.min(end)),
        (ttl, end) => ttl.or(end),
    }
}

/// Key of a user's sticky variant in the assignments of the state kept under `owner`.
fn assignment_key(owner: &str, user: &str) -> String {
    format!("{owner}\u{0}{user}")
}

/// Whether the campaign holds its work (paused, or not started).
fn is_held(campaign: &Campaign) -> bool {
    matches!(campaign.status, CampaignStatus::Paused | CampaignStatus::Draft)
}

/// The calendar day of `at_ms` in the campaign's timezone.
fn day_in(campaign: &Campaign, at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .map(|t| {
            let tz = campaign.options.timezone.unwrap_or(chrono_tz::UTC);
            t.with_timezone(&tz).date_naive().to_string()
        })
        .unwrap_or_default()
}

impl Processor for CampaignStage {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        self.refresh_campaigns(ctx);
        let value =
            record.value.ok_or_else(|| ProcessError::reject("tombstone in the campaign flow"))?;
        let registry = SchemaRegistry::builtin();
        let name = registry.record_name(value)?;
        let key = record.key;
        match name {
            Candidate::FULL_NAME => self.on_candidate(ctx, key, registry.decode(value)?),
            Skip::FULL_NAME => self.on_skip(ctx, key, registry.decode(value)?),
            SendConfirmed::FULL_NAME => self.on_confirmed(ctx, key, registry.decode(value)?),
            Engagement::FULL_NAME => self.on_engagement(ctx, key, registry.decode(value)?),
            RunTally::FULL_NAME => self.on_run_tally(ctx, key, registry.decode(value)?),
            ShardReport::FULL_NAME => self.on_shard_report(ctx, key, registry.decode(value)?),
            ShardPlan::FULL_NAME => self.on_shard_plan(ctx, key, registry.decode(value)?),
            other => Err(ProcessError::reject(format!("unexpected {other} in the campaign flow"))),
        }
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        timer: &Timer,
    ) -> Result<(), ProcessError> {
        self.refresh_campaigns(ctx);
        let key = String::from_utf8_lossy(&timer.key).into_owned();
        let Some((kind, scope)) = key.split_once(':') else { return Ok(()) };
        let id = scope.split_once(campaign_shards::SEPARATOR).map_or(scope, |(id, _)| id);
        let Some(campaign) = self.known(ctx, id, Some(scope.as_bytes()))? else { return Ok(()) };
        let mut state = self.load(ctx, &campaign, scope)?;
        match kind {
            AB_TIMER => self.winner_due(ctx, &campaign, &mut state, timer.at_ms)?,
            STATS_TIMER => state.stats_published_at = i64::MIN / 2, // publish in save below
            // A throttle over shards releases on the window's tokens (see `tokens`); a paused
            // or stopped campaign's outbox is held or dropped as on one task.
            OUTBOX_TIMER => match Self::pooled(&campaign) {
                Some(throttle) if campaign.status == CampaignStatus::Active => {
                    self.release_on_tokens(ctx, &campaign, &mut state, throttle)?
                }
                // Released sends are timed when they leave (after downtime: now, not the due
                // time).
                _ => {
                    let leaving = timer.at_ms.max(ctx.effective_ms());
                    self.release(ctx, &campaign, &mut state, leaving)?
                }
            },
            HELD_TIMER => self.release_held(ctx, &campaign, &mut state)?,
            // A paused campaign's waiting users keep their turn (resuming or stopping it wakes
            // them): a place coming back meanwhile stays free for the first of them.
            WAITING_TIMER if is_held(&campaign) && !Self::retiring(&campaign, &state) => {}
            // The end of the recount wakes them.
            WAITING_TIMER if Self::holds_for_recount(&campaign, &state) => {}
            WAITING_TIMER if Self::leases(&campaign, &state) => {
                self.release_leased(ctx, &campaign, &mut state)?
            }
            WAITING_TIMER => self.release_waiting(ctx, &campaign, &mut state)?,
            // A paused campaign's run waits (resuming or stopping it schedules the release).
            RUN_TIMER if is_held(&campaign) => {}
            RUN_TIMER => self.release_run(ctx, &campaign, &mut state, timer.at_ms)?,
            standby::CLOSE_TIMER => self.close_runs(ctx, &campaign, &mut state, timer.at_ms)?,
            _ => {}
        }
        self.save(ctx, &campaign, &mut state)
    }

    fn on_tick(&mut self, ctx: &mut ProcessorContext<'_>) -> Result<Tick, ProcessError> {
        self.refresh_campaigns(ctx);
        self.announce_lifecycle(ctx)?;
        Ok(Tick::Idle)
    }

    fn on_global_change(&mut self, _table: &str, _key: &[u8], _value: Option<&[u8]>) {
        self.campaigns.invalidate();
        self.table_changed = true;
    }

    fn on_rolled_back(&mut self) {
        self.states.forget();
    }
}
