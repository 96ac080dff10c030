//! The user stage (partitioned by user id): keeps profiles, devices and event history; turns
//! events into campaign candidates through live triggers, inaction windows and date reminders;
//! applies per-user gates; forwards engagements. Written against the runtime's processor API.

mod alias;
mod dedup;
mod door;
mod gates;
mod held;
mod history;
mod profile;
mod query;
mod route;
mod runs;
mod segments;
mod send_gate;
mod user_read;

use std::sync::Arc;

pub use gates::{dnd_window_end, in_sample, Capped, SendLog};
pub use profile::{Profile, UserView};
use route::Inbound;
use serde::{Deserialize, Serialize};
use user_read::UserRead;

use crate::{
    campaign::{
        sample,
        shards::{self, FlowRecord},
        Campaign, CampaignCache, CampaignStatus, DndAction, LocalSend, Trigger, UserLocal,
        CAMPAIGNS_TABLE, SEGMENTS_TABLE,
    },
    model::{
        is_triggered_run, scheduled_run_time, topics::TopicNames, triggered_run_id, AliasRecord,
        AppEvent, Candidate, Device, Engagement, EngagementKind, IngestDecoder, IngestError,
        IngestKind, ProfileUpdate, Properties, PropertyValue, Receipt, ReceiptStatus, Record,
        SchemaRegistry, SendCommand, Skip, SourcePartition, TRIGGERED_RUN,
    },
    query::{QueryDesk, QueryTurns, QUERIES_TABLE},
    runtime::{
        ProcessError, Processor, ProcessorContext, ProcessorCounter, SourceRecord, Tick, Timer,
        TopologyBuilder,
    },
    settings::Settings,
};

const PROFILES: &str = "profiles";

/// Users waiting on a timer (an inaction window, a reminder, do-not-disturb hours) dropped when
/// it fired, by reason: `deleted` (their campaign is no longer in the table).
static PENDING_DROPPED: ProcessorCounter = ProcessorCounter {
    name: "user_pending_dropped_total",
    help: "Users waiting on a timer dropped when it fired because their campaign was deleted",
    label: "reason",
};
const HISTORY: &str = "history";
const SEND_LOG: &str = "sendlog";
const PENDING: &str = "pending";
const DELIVERIES: &str = "deliveries";
const RUNS: &str = "runs";
const HELD: &str = "held";

/// Adds the user stage (events, profiles and receipts in; campaign flow out) to a topology
/// that has the campaigns global table.
pub fn add_user_stage(
    builder: TopologyBuilder,
    topics: &Arc<TopicNames>,
    settings: Arc<Settings>,
    ingest: IngestDecoder,
) -> TopologyBuilder {
    let names = Arc::clone(topics);
    let turns = QueryTurns::shared();
    builder.optional_global_table(QUERIES_TABLE, &topics.queries).sub_topology(
        "user",
        move |_| {
            let turns = Arc::clone(&turns);
            UserStage::new(Arc::clone(&names), Arc::clone(&settings), ingest.clone(), turns)
        },
        |s| {
            // Profiles and events in time order across the two topics (a user's profile before
            // the user's later events, whatever was fetched first), a profile first on a tie.
            s.ordered_source(&topics.profiles)
                .ordered_source(&topics.events)
                .source(&topics.receipts)
                .source(&topics.send_gate)
                .repartition(&topics.ingest_repartition)
                .store(PROFILES)
                .store(HISTORY)
                .store(SEND_LOG)
                .store(PENDING)
                .store(DELIVERIES)
                .store(RUNS)
                .store(HELD)
                .store(dedup::EVENTS.store)
                .store(dedup::OCCURRENCES.store)
                .store(alias::LINKS)
                .sink(&topics.campaign_flow)
                .sink(&topics.push)
                .created_sink(&topics.query_replies)
                // Hostile query requests (`query::QueryDesk`).
                .sink(&topics.dead_letter)
        },
    )
}

/// Why a trigger is waiting on a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Waiting {
    /// For the inaction window to pass.
    Inaction,
    /// For a date reminder's time.
    Reminder,
    /// For the end of do-not-disturb hours.
    Dnd,
    /// For the user's local time of a scheduled run delivered in each user's timezone.
    LocalTime,
}

/// A trigger waiting on a timer (`pending` store, keyed like its timer).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    campaign: String,
    user: String,
    app: String,
    waiting: Waiting,
    trigger_event: String,
    #[serde(default)]
    event_properties: Properties,
    due_ms: i64,
    /// The run or trigger occurrence the user qualifies in (see [`triggered_run_id`]).
    #[serde(default = "triggered_run")]
    run_id: String,
    /// A scheduled run's shards at its release (see [`Occasion::released`]); `None` for a
    /// trigger occurrence, or a user put off by an older version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    released: Option<u32>,
    /// Whether that run sampled its audience at its release (see [`Occasion::by_rank`]); `None`
    /// for a trigger occurrence, or a user put off by an older version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by_rank: Option<bool>,
}

fn triggered_run() -> String {
    TRIGGERED_RUN.to_string()
}

impl Pending {
    /// Whom records about this put-off occasion are about.
    fn whom(&self) -> Whom<'_> {
        Whom { user: &self.user, run: &self.run_id, released: self.released, by_rank: self.by_rank }
    }

    /// One open inaction window per (user, campaign); reminders per due time; users waiting out
    /// do-not-disturb hours per occurrence (two triggers in one night are two notifications).
    fn key(&self) -> Vec<u8> {
        let at = match self.waiting {
            Waiting::Inaction => String::new(),
            Waiting::Reminder => self.due_ms.to_string(),
            Waiting::Dnd | Waiting::LocalTime => self.run_id.clone(),
        };
        format!("{}\u{0}{}\u{0}{:?}{at}", self.user, self.campaign, self.waiting).into_bytes()
    }
}

/// The user and the run (or trigger occurrence) a record to the campaign stage is about.
#[derive(Debug, Clone, Copy)]
struct Whom<'a> {
    user: &'a str,
    run: &'a str,
    /// A scheduled run's shards at its release (see [`Occasion::released`]).
    released: Option<u32>,
    /// Whether that run sampled its audience (see [`Occasion::by_rank`]).
    by_rank: Option<bool>,
}

/// A delivery kept for conversion attribution (`deliveries` store, keyed by user).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    campaign: String,
    variant: String,
    message: String,
    at_ms: i64,
}

/// The user-stage processor of one task.
pub struct UserStage {
    topics: Arc<TopicNames>,
    settings: Arc<Settings>,
    decoder: IngestDecoder,
    campaigns: CampaignCache,
    segments: segments::SegmentCache,
    held: held::HeldPass,
    /// Sweeps of the event ids and trigger occurrences remembered (see `dedup`).
    sweeps: [dedup::Sweep; 2],
    queries: QueryDesk<query::Work>,
}

impl UserStage {
    /// A processor using `settings` and reading events and profiles with `decoder`, taking its
    /// turns at query work in `turns` (one for all the tasks of an instance).
    pub fn new(
        topics: Arc<TopicNames>,
        settings: Arc<Settings>,
        decoder: IngestDecoder,
        turns: Arc<QueryTurns>,
    ) -> Self {
        Self {
            topics,
            settings,
            decoder,
            campaigns: CampaignCache::default(),
            segments: segments::SegmentCache::default(),
            held: held::HeldPass::due(),
            sweeps: [dedup::Sweep::of(dedup::EVENTS), dedup::Sweep::of(dedup::OCCURRENCES)],
            queries: QueryDesk::new(turns),
        }
    }

    /// Brings the campaigns and segments up to date with their global tables.
    fn refresh_tables(&mut self, ctx: &ProcessorContext<'_>) {
        let changed = self.campaigns.refresh(ctx.global(CAMPAIGNS_TABLE));
        self.segments.refresh(ctx.global(SEGMENTS_TABLE), self.campaigns.book(), changed);
    }

    fn flow(&self) -> Flow<'_> {
        Flow { topic: &self.topics.campaign_flow, stage: self }
    }

    /// Reports to the campaign stage that `user` was not sent `campaign` in `run`, and why. The
    /// report names the run where the run may hold a place for the user until their local time
    /// (see [`sample::reserves`], as at the run's release): the campaign stage then passes that
    /// place on.
    fn skip(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        whom: Whom<'_>,
        reason: &str,
        at_ms: i64,
    ) -> Result<(), ProcessError> {
        let skip = Skip {
            campaign_id: campaign.id.clone(),
            app_id: campaign.app.clone(),
            user_id: whom.user.to_string(),
            reason: reason.to_string(),
            timestamp_ms: at_ms,
            variant_id: None,
            returns_place: false,
            run_id: reserves(campaign, whom.by_rank).then(|| whom.run.to_string()),
        };
        self.flow().emit_about(ctx, campaign, whom, &skip)
    }

    /// Decodes and checks the records of one ingest message (first read at `origin`), then
    /// admits them: a message with one refused record is dead-lettered whole, before any of it
    /// takes effect.
    fn on_ingest(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        kind: IngestKind,
        value: &[u8],
        origin: &str,
    ) -> Result<(), ProcessError> {
        let decoded = match self.decoder.decode_ingest(kind, value) {
            Ok(decoded) => decoded,
            Err(IngestError::Invalid(error)) => {
                ctx.count(&door::REJECTED, door::Reason::Undecodable.as_str());
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        let records: Vec<Inbound> = decoded.into_iter().map(Inbound::from).collect();
        let limits = self.settings.ingest();
        for record in &records {
            door::check(record, limits, ctx.clock(), ctx.now_ms()).map_err(|r| r.reject(ctx))?;
        }
        let parts = records.len();
        for record in records {
            if parts > 1 && matches!(record, Inbound::Alias(_)) {
                // The alias of an input with other parts (a Segment identify: a profile update
                // and an alias) is handled in a call of its own, through the repartition
                // topic: refused there (an id merged into another user), it goes to the
                // dead-letter topic alone. The profile update is handled here, in order with
                // the user's next events on this partition.
                route::forward(ctx, &self.topics.ingest_repartition, origin, &record, 0)?;
            } else {
                self.admit(ctx, origin, record, 0)?;
            }
        }
        Ok(())
    }

    /// Handles `record` on its user's task, or forwards it there (`hops`: times it was
    /// forwarded so far): an id that merged into a known user stands for that user; an event
    /// whose id was seen within the window is dropped.
    fn admit(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        origin: &str,
        mut record: Inbound,
        mut hops: i32,
    ) -> Result<(), ProcessError> {
        loop {
            if !ctx.owns_key(record.user().as_bytes()) {
                let topic = &self.topics.ingest_repartition;
                return route::forward(ctx, topic, origin, &record, hops);
            }
            if matches!(record, Inbound::Alias(_)) {
                break;
            }
            let Some(known) = alias::link_of(ctx, record.user())? else { break };
            if hops >= route::MAX_HOPS {
                return Err(route::too_many_hops(&record));
            }
            hops += 1;
            record.rename(known);
        }
        match record {
            Inbound::Event(event) => {
                let occurrence = occurrence(&event, origin);
                let window = self.settings.ingest().dedup_window_ms;
                if !event.event_id.is_empty()
                    && dedup::EVENTS.seen(ctx, &event.user_id, &occurrence, window)?
                {
                    ctx.count(&dedup::DUPLICATES, "event");
                    return Ok(());
                }
                self.on_event(ctx, event, &occurrence)
            }
            Inbound::Profile(update) => self.on_profile(ctx, update),
            Inbound::Alias(alias) => self.on_alias(ctx, origin, alias, hops),
            Inbound::Merge(merge) => {
                alias::merge_into(ctx, merge, self.settings.ingest().max_devices)
            }
        }
    }

    /// An anonymous id identified: its profile, devices and history go to the known user.
    fn on_alias(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        origin: &str,
        alias: AliasRecord,
        hops: i32,
    ) -> Result<(), ProcessError> {
        let Some(merge) = alias::take(ctx, &alias, &self.settings)? else { return Ok(()) };
        // Sent before anything is forgotten: a merge too large to send refuses the alias whole.
        self.admit(ctx, origin, Inbound::Merge(merge), hops)?;
        Ok(alias::link(ctx, &alias)?)
    }

    fn on_profile(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        update: ProfileUpdate,
    ) -> Result<(), ProcessError> {
        let mut profile =
            ctx.store(PROFILES)?.get_as::<Profile>(update.user_id.as_bytes())?.unwrap_or_default();
        profile.apply(&update);
        if !update.devices_added.is_empty() {
            door::check_devices(profile.devices.len(), self.settings.ingest())
                .map_err(|r| r.reject(ctx))?;
        }
        ctx.store(PROFILES)?.put_as(update.user_id.as_bytes(), &profile)?;
        Ok(())
    }

    fn on_receipt(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        receipt: Receipt,
    ) -> Result<(), ProcessError> {
        let kind = match receipt.status {
            ReceiptStatus::Accepted => EngagementKind::Delivered,
            ReceiptStatus::Failed | ReceiptStatus::Expired => EngagementKind::Failed,
            ReceiptStatus::TokenInvalid => EngagementKind::TokenInvalid,
        };
        let user = receipt.user_id.as_bytes();
        if kind == EngagementKind::TokenInvalid {
            let mut profiles = ctx.store(PROFILES)?;
            if let Some(mut profile) = profiles.get_as::<Profile>(user)? {
                profile.remove_token(&receipt.token);
                profiles.put_as(user, &profile)?;
            }
        }
        if crate::payload::is_test_message_id(&receipt.message_id) {
            return Ok(()); // a test send: not in campaign stats (see `campaign::test_send`)
        }
        if kind == EngagementKind::Delivered {
            let mut deliveries = ctx.store(DELIVERIES)?;
            let mut list = deliveries.get_as::<Vec<Delivery>>(user)?.unwrap_or_default();
            list.retain(|d| receipt.timestamp_ms - d.at_ms < 30 * history::DAY_MS);
            list.push(Delivery {
                campaign: receipt.campaign_id.clone(),
                variant: receipt.variant_id.clone(),
                message: receipt.message_id.clone(),
                at_ms: receipt.timestamp_ms,
            });
            deliveries.put_as(user, &list)?;
        }
        self.flow().emit(
            ctx,
            &receipt.campaign_id,
            &Engagement {
                campaign_id: receipt.campaign_id.clone(),
                variant_id: Some(receipt.variant_id.clone()),
                user_id: receipt.user_id.clone(),
                message_id: Some(receipt.message_id.clone()),
                kind,
                timestamp_ms: receipt.timestamp_ms,
                value: None,
                reason: receipt.reason.clone(),
            },
        )
    }

    /// Handles one app event; `occurrence` names it (its event id, else its source position).
    fn on_event(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        event: AppEvent,
        occurrence: &str,
    ) -> Result<(), ProcessError> {
        let run_id = triggered_run_id(occurrence);
        // Read once for the event: nothing on its way changes the profile.
        let profile = ctx.store(PROFILES)?.get(event.user_id.as_bytes())?;
        self.record_history(ctx, &event, profile.as_deref())?;
        let user = UserRead::new(profile.as_deref());
        self.forward_notification_engagement(ctx, &event)?;
        self.attribute_conversions(ctx, &event)?;
        // A paused campaign starts nothing new, but its `unless` events still close windows.
        let campaigns: Vec<Arc<Campaign>> = self
            .campaigns
            .book()
            .all()
            .filter(|c| c.app == event.app_id)
            .filter(|c| matches!(c.status, CampaignStatus::Active | CampaignStatus::Paused))
            .cloned()
            .collect();
        for campaign in campaigns {
            self.cancel_inaction(ctx, &campaign, &event)?;
            if campaign.status == CampaignStatus::Active {
                self.trigger(ctx, &campaign, &event, &run_id, &user)?;
            }
        }
        Ok(())
    }

    /// Counts `event` in its user's history (`profile`: their stored profile, if any).
    fn record_history(
        &self,
        ctx: &mut ProcessorContext<'_>,
        event: &AppEvent,
        profile: Option<&[u8]>,
    ) -> Result<(), ProcessError> {
        let retention = i64::from(self.settings.history().days());
        let tz = match profile {
            Some(stored) => Profile::stored_timezone(&ctx.store(PROFILES)?, stored)?,
            None => None,
        };
        let tz = tz.unwrap_or(self.settings.app(&event.app_id).timezone);
        let (user, at) = (event.user_id.as_str(), event.timestamp_ms);
        let mut store = ctx.store(HISTORY)?;
        if history::record_activity(&mut store, user, at, tz, retention)? {
            history::expire(&mut store, user, at.div_euclid(history::DAY_MS) - retention)?;
        }
        history::record(&mut store, user, &event.name, at)?;
        let limits = self.settings.property_history();
        let kept = history::record_properties(&mut store, event, limits)?;
        let segments = self.segments.book().behaviours();
        for behaviour in self.campaigns.book().behaviours().iter().chain(segments) {
            let matches = behaviour.event == event.name
                && !behaviour.conditions.is_empty()
                && behaviour
                    .conditions
                    .iter()
                    .all(|c| c.matches_in(&event.properties, event.timestamp_ms));
            if matches {
                let key = history::behaviour_key(behaviour);
                history::record(&mut store, user, &key, at)?;
            }
        }
        if let Some(outcome) = kept.label() {
            ctx.count(&history::PROPERTY_SETS, outcome);
        }
        Ok(())
    }

    fn forward_notification_engagement(
        &self,
        ctx: &mut ProcessorContext<'_>,
        event: &AppEvent,
    ) -> Result<(), ProcessError> {
        let kind = match event.name.as_str() {
            "Notification Viewed" => EngagementKind::Impression,
            "Notification Clicked" => EngagementKind::Click,
            _ => return Ok(()),
        };
        let text = |name: &str| match event.properties.get(name) {
            Some(PropertyValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        if text("message_id").is_some_and(|id| crate::payload::is_test_message_id(&id)) {
            return Ok(()); // a test send: not in campaign stats (see `campaign::test_send`)
        }
        let campaign = text("campaign_id").ok_or_else(|| {
            ProcessError::reject(format!("{} event without a campaign_id property", event.name))
        })?;
        self.flow().emit(
            ctx,
            &campaign,
            &Engagement {
                campaign_id: campaign.clone(),
                variant_id: text("variant_id"),
                user_id: event.user_id.clone(),
                message_id: text("message_id"),
                kind,
                timestamp_ms: event.timestamp_ms,
                value: None,
                reason: None,
            },
        )
    }

    fn attribute_conversions(
        &self,
        ctx: &mut ProcessorContext<'_>,
        event: &AppEvent,
    ) -> Result<(), ProcessError> {
        let user = event.user_id.as_bytes();
        let Some(mut list) = ctx.store(DELIVERIES)?.get_as::<Vec<Delivery>>(user)? else {
            return Ok(());
        };
        let mut converted = Vec::new();
        list.retain(|delivery| {
            let window = self
                .campaigns
                .book()
                .get(&delivery.campaign)
                .and_then(|c| c.options.conversion.as_ref())
                .filter(|conversion| conversion.event == event.name)
                .map(|conversion| conversion.within_ms);
            let converts = window.is_some_and(|within| {
                event.timestamp_ms >= delivery.at_ms
                    && event.timestamp_ms - delivery.at_ms <= within
            });
            if converts {
                converted.push(delivery.clone());
            }
            !converts
        });
        if converted.is_empty() {
            return Ok(());
        }
        ctx.store(DELIVERIES)?.put_as(user, &list)?;
        let value = match event.properties.get("value").or_else(|| event.properties.get("amount")) {
            Some(PropertyValue::Double(v)) => Some(*v),
            Some(PropertyValue::Long(v)) => Some(*v as f64),
            _ => None,
        };
        for delivery in converted {
            self.flow().emit(
                ctx,
                &delivery.campaign,
                &Engagement {
                    campaign_id: delivery.campaign.clone(),
                    variant_id: Some(delivery.variant),
                    user_id: event.user_id.clone(),
                    message_id: Some(delivery.message),
                    kind: EngagementKind::Conversion,
                    timestamp_ms: event.timestamp_ms,
                    value,
                    reason: None,
                },
            )?;
        }
        Ok(())
    }

    /// An `unless` event cancels the campaign's open inaction window for the user.
    fn cancel_inaction(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        event: &AppEvent,
    ) -> Result<(), ProcessError> {
        let Trigger::Event { unless: Some(unless), .. } = &campaign.when.trigger else {
            return Ok(());
        };
        if unless.event != event.name {
            return Ok(());
        }
        let probe = Pending {
            campaign: campaign.id.clone(),
            user: event.user_id.clone(),
            app: event.app_id.clone(),
            waiting: Waiting::Inaction,
            trigger_event: String::new(),
            event_properties: Properties::new(),
            due_ms: 0,
            released: None,
            by_rank: None,
            run_id: triggered_run(),
        };
        let key = probe.key();
        let open = ctx.store(PENDING)?.get_as::<Pending>(&key)?;
        let open = open.filter(|pending| event.timestamp_ms <= pending.due_ms);
        if let Some(pending) = &open {
            ctx.store(PENDING)?.delete(&key)?;
            ctx.cancel(pending.due_ms, &key)?;
        }
        // A window that ended during a pause is held; an `unless` event of its time still counts.
        let held = self.cancel_held(ctx, &probe, event.timestamp_ms)?;
        // Each occurrence whose window closed is judged: its retry opens no window again.
        for closed in open.iter().chain(&held) {
            self.judged(ctx, &campaign.id, &closed.user, &closed.run_id)?;
        }
        Ok(())
    }

    /// Remembers that trigger occurrence `run_id` of `campaign` was judged for `user`; returns
    /// whether it was already (then it is a repeat, counted).
    fn judged(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &str,
        user: &str,
        run_id: &str,
    ) -> Result<bool, ProcessError> {
        let occurrence = format!("{campaign}\u{0}{run_id}");
        let retention = self.settings.occurrence_retention_ms();
        let repeat = dedup::OCCURRENCES.seen(ctx, user, &occurrence, retention)?;
        if repeat {
            ctx.count(&dedup::DUPLICATES, "occurrence");
        }
        Ok(repeat)
    }

    /// Starts what `event` triggers in `campaign`: a candidate now, an inaction window or a
    /// reminder; `run_id` names this trigger occurrence, `user` is what the event read of its
    /// user.
    fn trigger(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Arc<Campaign>,
        event: &AppEvent,
        run_id: &str,
        user: &UserRead<'_>,
    ) -> Result<(), ProcessError> {
        if !in_window(campaign, event.timestamp_ms) {
            return Ok(());
        }
        let waiting = match &campaign.when.trigger {
            Trigger::Event { event: name, conditions, unless } => {
                if *name != event.name
                    || !conditions
                        .iter()
                        .all(|c| c.matches_in(&event.properties, event.timestamp_ms))
                {
                    return Ok(());
                }
                match unless {
                    None => {
                        let occasion = Occasion {
                            user: &event.user_id,
                            run_id,
                            trigger_event: &event.name,
                            event_properties: &event.properties,
                            at_ms: leaves_at(ctx, event),
                            after_dnd: false,
                            read: user,
                            released: None,
                            by_rank: None,
                            came_back: false,
                        };
                        return self.qualify(ctx, campaign, &occasion).map(|_| ());
                    }
                    Some(unless) => (Waiting::Inaction, event.timestamp_ms + unless.within_ms),
                }
            }
            Trigger::DateReminder { event: name, property, offset_ms } => {
                if *name != event.name {
                    return Ok(());
                }
                let Some(date) = event.properties.get(property).and_then(crate::campaign::time_ms)
                else {
                    return Ok(());
                };
                let due = date + offset_ms;
                if due <= event.timestamp_ms {
                    return Ok(());
                }
                (Waiting::Reminder, due)
            }
            Trigger::Scheduled(_) => return Ok(()), // runs scan the store: see `runs`
        };
        let pending = Pending {
            campaign: campaign.id.clone(),
            user: event.user_id.clone(),
            app: event.app_id.clone(),
            waiting: waiting.0,
            trigger_event: event.name.clone(),
            event_properties: event.properties.clone(),
            due_ms: waiting.1,
            run_id: run_id.to_string(),
            released: None,
            by_rank: None,
        };
        let key = pending.key();
        if let Some(open) = ctx.store(PENDING)?.get_as::<Pending>(&key)? {
            // A window is already open (or the same reminder is set): this occurrence is
            // absorbed by it, and judged (its retry opens no window later). A retry of the
            // open window's own occurrence is not: the window judges it when it ends.
            if open.run_id != run_id {
                self.judged(ctx, &campaign.id, &event.user_id, run_id)?;
            }
            return Ok(());
        }
        ctx.store(PENDING)?.put_as(&key, &pending)?;
        ctx.schedule(pending.due_ms, &key)?;
        Ok(())
    }

    /// Checks who, sample, reachability, do-not-disturb and caps; emits a candidate or a skip.
    /// Returns whether the user matched the campaign's audience (`who`).
    /// Puts off a qualified occasion until `due_ms` (a durable timer); it is checked again then.
    fn wait(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        occasion: &Occasion<'_>,
        waiting: Waiting,
        due_ms: i64,
    ) -> Result<bool, ProcessError> {
        let put_off = matches!(waiting, Waiting::LocalTime | Waiting::Dnd);
        if put_off && !occasion.came_back && sample::reserves(campaign) {
            // A run taking part of its audience takes it now, over all its users: the place of
            // a user it puts off, until their local time or past their do-not-disturb hours,
            // is reserved now (see `campaign::sample`). Else a user in do-not-disturb hours at
            // the release was left out of the sample, and of every shard's planned places
            // (review s30 finding 4).
            let (run, user) = (occasion.run_id, occasion.user);
            let reservation = sample::reservation(campaign, run, user, due_ms);
            self.flow().emit_about(ctx, campaign, occasion.whom(), &reservation)?;
        }
        let pending = Pending {
            campaign: campaign.id.clone(),
            user: occasion.user.to_string(),
            app: campaign.app.clone(),
            waiting,
            trigger_event: occasion.trigger_event.to_string(),
            event_properties: occasion.event_properties.clone(),
            due_ms,
            run_id: occasion.run_id.to_string(),
            released: occasion.released,
            by_rank: occasion.by_rank,
        };
        let key = pending.key();
        ctx.store(PENDING)?.put_as(&key, &pending)?;
        ctx.schedule(due_ms, &key)?;
        Ok(true)
    }

    /// `pending`, put off until now (`at_ms`), is checked again. A user of a run that held a
    /// place for them until their local time (see [`sample::reserves`]) who no longer matches
    /// its audience is reported `not_eligible`: the campaign stage passes the place on.
    fn come_back(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        pending: &Pending,
        at_ms: i64,
    ) -> Result<(), ProcessError> {
        let occasion = Occasion {
            user: &pending.user,
            run_id: &pending.run_id,
            trigger_event: &pending.trigger_event,
            event_properties: &pending.event_properties,
            at_ms,
            after_dnd: pending.waiting == Waiting::Dnd,
            read: &UserRead::default(),
            released: pending.released,
            by_rank: pending.by_rank,
            came_back: true,
        };
        if !self.qualify(ctx, campaign, &occasion)? && reserves(campaign, pending.by_rank) {
            self.skip(ctx, campaign, pending.whom(), "not_eligible", at_ms)?;
        }
        Ok(())
    }

    fn qualify(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        occasion: &Occasion<'_>,
    ) -> Result<bool, ProcessError> {
        let Occasion { user, run_id, trigger_event, event_properties, at_ms, .. } = *occasion;
        let whom = occasion.whom();
        let (profile, history) =
            occasion.read.load(ctx, user, at_ms, &campaign.who, self.segments.book())?;
        let verdict = self.assess(ctx, campaign, occasion, &profile, &history)?;
        // A trigger occurrence judged (sent, or skipped for a reason) is remembered: a
        // producer's retry of it is a duplicate, never judged again days later.
        let judged = matches!(verdict, Verdict::Skip(_) | Verdict::Candidate { .. });
        if judged && is_triggered_run(run_id) && self.judged(ctx, &campaign.id, user, run_id)? {
            return self.skip(ctx, campaign, whom, "duplicate", at_ms).map(|()| true);
        }
        let (devices, tz) = match verdict {
            Verdict::Outside => {
                let segments = self.segments.book();
                if campaign.who.segments().iter().any(|id| segments.get(id).is_none()) {
                    ctx.count(&segments::UNKNOWN_SEGMENT, "matched_nobody");
                }
                return Ok(false);
            }
            Verdict::Skip(reason) => {
                return self.skip(ctx, campaign, whom, reason, at_ms).map(|()| true);
            }
            Verdict::Wait(waiting, due_ms) => {
                return self.wait(ctx, campaign, occasion, waiting, due_ms);
            }
            Verdict::Candidate { devices, tz } => (devices, tz),
        };
        let text = |name: &str| match profile.properties.get(name) {
            Some(PropertyValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        self.flow().emit_about(
            ctx,
            campaign,
            whom,
            &Candidate {
                campaign_id: campaign.id.clone(),
                app_id: campaign.app.clone(),
                run_id: run_id.to_string(),
                user_id: user.to_string(),
                qualified_at_ms: at_ms,
                trigger_event: Some(trigger_event.to_string()),
                event_properties: event_properties.clone(),
                profile: profile
                    .properties
                    .iter()
                    .filter(|(name, _)| campaign.profile_variables.contains(*name))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
                devices,
                timezone: Some(tz.name().to_string()),
                language: text("language"),
                source: Some(SourcePartition {
                    partition: ctx.task().partition,
                    partitions: ctx.partitions(),
                }),
            },
        )?;
        Ok(true)
    }

    /// Checks who, sample, reachability, the user's local time, do-not-disturb and caps for
    /// `occasion`, reading the stores only: what [`Self::qualify`] then does, and what an
    /// estimate counts (see `estimate`).
    fn assess(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        occasion: &Occasion<'_>,
        profile: &Profile,
        history: &History,
    ) -> Result<Verdict, ProcessError> {
        let Occasion { user, run_id, at_ms, after_dnd, .. } = *occasion;
        let segments = self.segments.book();
        let view = UserView { profile, history, segments };
        if !campaign.who.matches(&view, at_ms) {
            return Ok(Verdict::Outside);
        }
        if !in_sample(&campaign.id, user, campaign.options.sample_percent) {
            return Ok(Verdict::Skip("sampled_out"));
        }
        let devices = profile.reachable_devices(&campaign.options.platforms);
        if devices.is_empty() {
            return Ok(Verdict::Skip("not_reachable"));
        }
        let app = self.settings.app(&campaign.app);
        let tz = profile.timezone().unwrap_or(app.timezone);
        if let (Some(local), Some(run_at)) = (campaign.user_local(), scheduled_run_time(run_id)) {
            // The run at its local time in the user's timezone (else the app's).
            let best = match local {
                UserLocal::BestHour { .. } => {
                    let look_back = i64::from(self.settings.history().days());
                    history::best_hour(&ctx.store(HISTORY)?, user, at_ms, look_back)?
                }
                UserLocal::RunTime { .. } => None,
            };
            match local.send(run_at, tz, ctx.now_ms().max(at_ms), best) {
                LocalSend::Expired => return Ok(Verdict::Skip("expired")),
                LocalSend::At(due_ms) => return Ok(Verdict::Wait(Waiting::LocalTime, due_ms)),
                LocalSend::Now => {}
            }
        }
        if let (Some(dnd), false) = (&campaign.options.dnd, after_dnd) {
            // The user's timezone, else the campaign's, else the app's.
            let dnd_tz = profile.timezone().or(campaign.options.timezone).unwrap_or(app.timezone);
            if let Some(window_end) = dnd_window_end(dnd, dnd_tz, at_ms) {
                if dnd.action == DndAction::Discard {
                    return Ok(Verdict::Skip("dnd_discarded"));
                }
                return Ok(Verdict::Wait(Waiting::Dnd, window_end));
            }
        }
        // An early look at the caps; they are spent (and checked again) at the send gate, where
        // the notification leaves.
        if !campaign.options.ignore_global_caps {
            let log = ctx.store(SEND_LOG)?.get_as::<SendLog>(user.as_bytes())?.unwrap_or_default();
            if let Some(capped) = log.check(app, tz, at_ms) {
                return Ok(Verdict::Skip(capped.reason()));
            }
        }
        Ok(Verdict::Candidate { devices, tz })
    }
}

/// When the notification an event triggers at once would leave: at the later of the event's
/// stamp and the task's clock, as the campaign stage times it (an event stamped long before
/// it is read, by an SDK's late batch or a lagging partition, is judged for audience,
/// do-not-disturb hours and caps as of then, not its stamp).
fn leaves_at(ctx: &ProcessorContext<'_>, event: &AppEvent) -> i64 {
    event.timestamp_ms.max(ctx.effective_ms())
}

/// A user's daily event counts per history key, as [`history::load`] reads them.
type History = std::collections::HashMap<String, Vec<(i64, u32)>>;

/// What [`UserStage::assess`] decides for one user and campaign.
enum Verdict {
    /// Not in the campaign's audience.
    Outside,
    /// In the audience, not sent to, for this reason.
    Skip(&'static str),
    /// In the audience, put off until a time (then checked again).
    Wait(Waiting, i64),
    /// A candidate now: these devices, in this timezone.
    Candidate { devices: Vec<Device>, tz: chrono_tz::Tz },
}

/// Why a user is checked against a campaign: its trigger fired for them, a timer they waited
/// on fired, or a scheduled run reached them.
#[derive(Clone, Copy)]
struct Occasion<'a> {
    user: &'a str,
    /// The trigger occurrence's run id (see [`triggered_run_id`]) or the scheduled run's id.
    run_id: &'a str,
    trigger_event: &'a str,
    event_properties: &'a Properties,
    at_ms: i64,
    /// Do-not-disturb hours were already waited out.
    after_dnd: bool,
    /// What the occasion reads of the user, once for every campaign it checks.
    read: &'a UserRead<'a>,
    /// A scheduled run's shards at its release (its scan's): the user's records go to their
    /// shard among those, however an edit changed them since (see
    /// [`shards::run_flow_key`]); `None` for a trigger occurrence.
    released: Option<u32>,
    /// Whether that run sampled its audience at its release ([`sample::samples`] then, fixed
    /// with `released`): its users' records go by their rank in the run, or by the user, as
    /// then, whatever an edit changed since (review s30 finding 3); `None` for a trigger
    /// occurrence, or a user put off by an older version (by the rules in effect now).
    by_rank: Option<bool>,
    /// A user put off before, back at the time they were put off until: a run that samples its
    /// audience holds their reservation already.
    came_back: bool,
}

impl Occasion<'_> {
    /// Whom records about this occasion are about.
    fn whom(&self) -> Whom<'_> {
        Whom { user: self.user, run: self.run_id, released: self.released, by_rank: self.by_rank }
    }
}

/// Longest event id used as it is to name an occurrence; longer ones are replaced by their
/// digest, so a hostile id cannot bloat send commands and send logs.
const MAX_OCCURRENCE_ID: usize = 128;

/// What names the occurrence `event` causes: its event id (the SDK's de-duplication key), or
/// `origin`, where it was first read (`topic/partition/offset`), when it has none.
fn occurrence(event: &AppEvent, origin: &str) -> String {
    let id = &event.event_id;
    if id.is_empty() {
        return origin.to_string();
    }
    if id.len() <= MAX_OCCURRENCE_ID {
        return id.clone();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Whether a run of `campaign` holds a place for its users who come later ([`sample::reserves`]),
/// by `by_rank`, whether it sampled its audience at its release (`None`: by the rules now).
fn reserves(campaign: &Campaign, by_rank: Option<bool>) -> bool {
    match by_rank {
        Some(by_rank) => by_rank && campaign.user_local().is_some(),
        None => sample::reserves(campaign),
    }
}

fn in_window(campaign: &Campaign, at_ms: i64) -> bool {
    campaign.when.start.is_none_or(|start| at_ms >= start.timestamp_millis())
        && campaign.when.end.is_none_or(|end| at_ms <= end.timestamp_millis())
}

/// Sends records to the campaign flow topic, keyed by campaign.
struct Flow<'t> {
    topic: &'t str,
    stage: &'t UserStage,
}

impl Flow<'_> {
    /// Writes `record` about `campaign` to the campaign stage: to its user's shard of the
    /// campaign (see `campaign::shards`), else to the campaign's home.
    fn emit<R: Record + FlowRecord>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &str,
        record: &R,
    ) -> Result<(), ProcessError> {
        let key = match self.stage.campaigns.book().get(campaign) {
            Some(campaign) => record.route(campaign),
            None => campaign.to_string(),
        };
        Ok(ctx.send_record(self.topic, key.as_bytes(), record)?)
    }

    /// Writes `record` about `whom` to their shard of `campaign`: of a scheduled run, among
    /// the shards of its release (see [`shards::run_flow_key`]), else as [`Self::emit`].
    fn emit_about<R: Record>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        whom: Whom<'_>,
        record: &R,
    ) -> Result<(), ProcessError> {
        let key = match whom.released {
            Some(released) => {
                shards::run_flow_key(campaign, whom.user, whom.run, released, whom.by_rank)
            }
            None => shards::flow_key(campaign, Some(whom.user), Some(whom.run)),
        };
        Ok(ctx.send_record(self.topic, key.as_bytes(), record)?)
    }

    /// Writes the send gate's answer `record` to `command` back to the campaign state that
    /// holds its place (see [`shards::answer_key`]).
    fn answer<R: Record>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        command: &SendCommand,
        record: &R,
    ) -> Result<(), ProcessError> {
        let key = match self.stage.campaigns.book().get(&command.campaign_id) {
            Some(campaign) => shards::answer_key(campaign, command),
            None => command.campaign_id.clone(),
        };
        Ok(ctx.send_record(self.topic, key.as_bytes(), record)?)
    }
}

impl Processor for UserStage {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        self.refresh_tables(ctx);
        let value =
            record.value.ok_or_else(|| ProcessError::reject("tombstone on an input topic"))?;
        let topic = record.topic;
        if topic == self.topics.events || topic == self.topics.profiles {
            let kind =
                if topic == self.topics.events { IngestKind::Events } else { IngestKind::Profiles };
            let origin = format!("{topic}/{}/{}", record.partition, record.offset);
            self.on_ingest(ctx, kind, value, &origin)
        } else if topic == self.topics.ingest_repartition {
            let forwarded = route::read(value)?;
            self.admit(ctx, &forwarded.origin, forwarded.record, forwarded.hops)
        } else if topic == self.topics.receipts {
            let receipt: Receipt = SchemaRegistry::builtin().decode(value)?;
            self.on_receipt(ctx, receipt)
        } else if topic == self.topics.send_gate {
            let command: SendCommand = SchemaRegistry::builtin().decode(value)?;
            self.on_send_gate(ctx, command)
        } else {
            Err(ProcessError::reject(format!("unexpected topic {topic}")))
        }
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        timer: &Timer,
    ) -> Result<(), ProcessError> {
        self.refresh_tables(ctx);
        let Some(pending) = ctx.store(PENDING)?.get_as::<Pending>(&timer.key)? else {
            return Ok(());
        };
        ctx.store(PENDING)?.delete(&timer.key)?;
        let Some(campaign) = self.campaigns.book().get(&pending.campaign).cloned() else {
            // Deleted: its stats may be gone already (the campaign stage forgets a deleted
            // campaign's definition once it holds nothing), so the user is counted here.
            ctx.count(&PENDING_DROPPED, "deleted");
            return Ok(());
        };
        let who = pending.whom();
        match campaign.status {
            CampaignStatus::Stopped => {
                return self.skip(ctx, &campaign, who, "stopped", timer.at_ms);
            }
            _ if !in_window(&campaign, timer.at_ms) => {
                return self.skip(ctx, &campaign, who, "expired", timer.at_ms);
            }
            CampaignStatus::Paused | CampaignStatus::Draft => return self.hold(ctx, &pending),
            CampaignStatus::Active => {}
        }
        self.come_back(ctx, &campaign, &pending, timer.at_ms)
    }

    fn on_tick(&mut self, ctx: &mut ProcessorContext<'_>) -> Result<Tick, ProcessError> {
        self.refresh_tables(ctx);
        if self.step_held(ctx)? == Tick::More {
            return Ok(Tick::More);
        }
        let windows =
            [self.settings.ingest().dedup_window_ms, self.settings.occurrence_retention_ms()];
        for (sweep, window) in self.sweeps.iter_mut().zip(windows) {
            if sweep.step(ctx, window)? == Tick::More {
                return Ok(Tick::More);
            }
        }
        if self.step_scheduled_runs(ctx)? == Tick::More {
            return Ok(Tick::More);
        }
        self.step_queries(ctx)
    }

    fn on_global_change(&mut self, table: &str, _key: &[u8], _value: Option<&[u8]>) {
        if table == SEGMENTS_TABLE {
            self.segments.invalidate();
            return;
        }
        if table == QUERIES_TABLE {
            self.queries.invalidate();
            return;
        }
        self.campaigns.invalidate();
        self.held = held::HeldPass::due();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> AppEvent {
        AppEvent {
            event_id: id.into(),
            app_id: "shop".into(),
            user_id: "u1".into(),
            name: "Ping".into(),
            timestamp_ms: 0,
            properties: Properties::new(),
            sdk_version: None,
        }
    }

    #[test]
    fn an_occurrence_is_the_event_id_else_the_source_position_and_a_long_id_is_digested() {
        let record = "herald.events/3/42";
        assert_eq!(occurrence(&event("e-1"), record), "e-1");
        assert_eq!(occurrence(&event(""), record), "herald.events/3/42");
        let long = "x".repeat(10_000);
        let digested = occurrence(&event(&long), record);
        assert!(digested.starts_with("sha256:") && digested.len() == 7 + 64, "{digested}");
        assert_eq!(digested, occurrence(&event(&long), record), "deterministic");
        assert_ne!(digested, occurrence(&event(&"y".repeat(10_000)), record));
    }

    /// Review s30: a user put off by a version before f1d9f63 (no `released` in the pending
    /// timer) reads back without the release's shards, so its records route by the shards in
    /// effect, as they did; a pending of a trigger writes no `released` (an older version reads
    /// it); a scheduled run's keeps its count.
    #[test]
    fn a_pending_timer_without_the_releases_shards_routes_as_before() {
        let old = r#"{"campaign":"t","user":"c1","app":"shop","waiting":"LocalTime","trigger_event":"","due_ms":5,"run_id":"run-1795114800000"}"#;
        let pending: Pending = serde_json::from_str(old).unwrap();
        assert_eq!(pending.whom().released, None);
        assert_eq!(pending.whom().run, "run-1795114800000");
        let trigger = Pending { run_id: triggered_run(), ..pending.clone() };
        assert!(!serde_json::to_string(&trigger).unwrap().contains("released"));
        let run = Pending { released: Some(8), ..pending };
        let back: Pending = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(back.whom().released, Some(8));
        // Nor whether the run sampled (FX13): routed by the rules in effect, as before.
        assert_eq!(back.whom().by_rank, None);
        assert!(!serde_json::to_string(&trigger).unwrap().contains("by_rank"));
        let ranked = Pending { by_rank: Some(true), ..back };
        let back: Pending = serde_json::from_str(&serde_json::to_string(&ranked).unwrap()).unwrap();
        assert_eq!(back.whom().by_rank, Some(true));
    }
}
