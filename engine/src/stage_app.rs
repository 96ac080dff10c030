//! The app stage (partitioned by app id): the global per-app throttle, "at most N
//! notifications per interval" across all of an app's campaigns. The campaign stage routes the
//! send commands of apps that have such a throttle here instead of to `herald.push`; they wait
//! in a durable outbox per app and leave, in arrival order, as the app's windows open. A paused
//! campaign's commands stay queued until it resumes; a stopped one's are dropped and go back to
//! the campaign stage as skips (counted `stopped`, their places given back), as are a deleted
//! one's (counted `deleted`: the campaign stage keeps each place's last definition to settle
//! them, see `stage_campaign::deleted`). A campaign missing from this instance's copy of the
//! table may also be one defined moments ago: its commands are held a few minutes for the copy
//! to catch up before they count as deleted.

use std::sync::Arc;

use crate::{
    campaign::{shards, CampaignCache, CampaignStatus, Throttle, CAMPAIGNS_TABLE},
    model::{topics::TopicNames, Record, SchemaRegistry, SendCommand, Skip},
    outbox::{Leave, Outbox, OutboxState},
    runtime::{ProcessError, Processor, ProcessorContext, SourceRecord, Timer, TopologyBuilder},
    settings::Settings,
};

const OUTBOX: &str = "app-outbox";
const WINDOWS: &str = "app-windows";
/// The outbox of an app whose throttle was removed: everything leaves at once, but a paused
/// campaign's commands, looked at again each minute.
const UNTHROTTLED: Throttle = Throttle { max: u64::MAX, per_ms: 60_000 };
/// Notifications of stopped campaigns dropped here (campaign, run, user): the first dropped
/// device command of one gives its place back, the others only their variant's sent count.
const DROPPED: &str = "app-dropped";
/// How long a command of a campaign missing from the campaigns table is kept, waiting for the
/// table: a campaign defined moments ago may reach this instance's copy after its first
/// commands. Past it, the campaign counts as deleted.
const UNKNOWN_GRACE_MS: i64 = 5 * 60_000;

/// Adds the app stage (throttled send commands in, send commands out) to a topology.
pub fn add_app_stage(
    builder: TopologyBuilder,
    topics: &Arc<TopicNames>,
    settings: Arc<Settings>,
) -> TopologyBuilder {
    let names = Arc::clone(topics);
    builder.sub_topology(
        "app",
        move |_| AppStage {
            topics: Arc::clone(&names),
            settings: Arc::clone(&settings),
            campaigns: CampaignCache::default(),
        },
        |s| {
            s.source(&topics.app_throttle)
                .store(OUTBOX)
                .store(WINDOWS)
                .store(DROPPED)
                .sink(&topics.push)
                .sink(&topics.send_gate)
                .sink(&topics.campaign_flow)
        },
    )
}

/// The app-stage processor of one task.
pub struct AppStage {
    topics: Arc<TopicNames>,
    settings: Arc<Settings>,
    campaigns: CampaignCache,
}

/// What the stage does with a command, decided by its campaign's status.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Forwarded to the app's send topic.
    Send,
    /// Kept in the outbox until a release finds the campaign resumed.
    Hold,
    /// Dropped and counted under the reason: `stopped`, or `deleted` (no longer in the table).
    Drop(&'static str),
}

impl AppStage {
    fn forward(
        &self,
        ctx: &mut ProcessorContext<'_>,
        command: &SendCommand,
    ) -> Result<(), ProcessError> {
        let topic = self.settings.app(&command.app_id).send_topic(&self.topics, command.confirm);
        Ok(ctx.send_record(topic, command.user_id.as_bytes(), command)?)
    }

    /// Sends `command` at `at` if its campaign is active, drops it (counted) if it is stopped,
    /// or hands it back to be held if it is paused.
    fn leave(
        &self,
        ctx: &mut ProcessorContext<'_>,
        command: SendCommand,
        at: i64,
    ) -> Result<Leave<SendCommand>, ProcessError> {
        match self.fate(&command, at) {
            Fate::Hold => Ok(Leave::Held(command)),
            Fate::Drop(reason) => {
                self.drop_command(ctx, &command, at, reason)?;
                Ok(Leave::Dropped)
            }
            Fate::Send => {
                self.forward(ctx, &SendCommand { created_at_ms: at, ..command })?;
                Ok(Leave::Sent)
            }
        }
    }

    /// What becomes of `command` at `at`: held while its campaign is paused or a draft, or
    /// missing from the table for less than [`UNKNOWN_GRACE_MS`] since the command was made;
    /// dropped once the campaign is stopped or deleted; sent when it is active.
    fn fate(&self, command: &SendCommand, at: i64) -> Fate {
        match self.campaigns.book().get(&command.campaign_id).map(|c| c.status) {
            Some(CampaignStatus::Paused | CampaignStatus::Draft) => Fate::Hold,
            Some(CampaignStatus::Stopped) => Fate::Drop("stopped"),
            Some(CampaignStatus::Active) => Fate::Send,
            None if at.saturating_sub(command.created_at_ms) < UNKNOWN_GRACE_MS => Fate::Hold,
            None => Fate::Drop("deleted"),
        }
    }

    /// Drops a stopped or deleted campaign's `command`: a skip to the campaign state that
    /// counted it takes back its variant's sent count and, for the notification's first
    /// command, counts it under `reason` and gives its place back. A deleted campaign's state
    /// is found by the place key the command carries (its home when it carries none).
    fn drop_command(
        &self,
        ctx: &mut ProcessorContext<'_>,
        command: &SendCommand,
        at: i64,
        reason: &str,
    ) -> Result<(), ProcessError> {
        let key = match self.campaigns.book().get(&command.campaign_id) {
            Some(campaign) => shards::answer_key(campaign, command),
            None => command.place_key.clone().unwrap_or_else(|| command.campaign_id.clone()),
        };
        let notification =
            [&command.campaign_id, "\0", &command.run_id, "\0", &command.user_id].concat();
        let first = ctx.store(DROPPED)?.get(notification.as_bytes())?.is_none();
        if first {
            ctx.store(DROPPED)?.put(notification.as_bytes(), &[])?;
        }
        let skip = Skip {
            campaign_id: command.campaign_id.clone(),
            app_id: command.app_id.clone(),
            user_id: command.user_id.clone(),
            reason: reason.into(),
            timestamp_ms: at,
            variant_id: Some(command.variant_id.clone()),
            returns_place: first,
            run_id: Some(command.run_id.clone()),
        };
        Ok(ctx.send_record(&self.topics.campaign_flow, key.as_bytes(), &skip)?)
    }

    /// The app's outbox with `throttle`, and its stored window.
    fn outbox<'a>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        app: &'a str,
        throttle: Throttle,
    ) -> Result<(Outbox<'a>, OutboxState), ProcessError> {
        let outbox = Outbox { store: OUTBOX, owner: app, timer: app.as_bytes(), throttle };
        let window = ctx.store(WINDOWS)?.get_as::<OutboxState>(app.as_bytes())?;
        Ok((outbox, window.unwrap_or_default()))
    }
}

impl Processor for AppStage {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        let value = record.value.ok_or_else(|| ProcessError::reject("tombstone"))?;
        let registry = SchemaRegistry::builtin();
        let name = registry.record_name(value)?;
        if name != SendCommand::FULL_NAME {
            return Err(ProcessError::reject(format!("unexpected {name} on the app stage")));
        }
        let command: SendCommand = registry.decode(value)?;
        self.campaigns.refresh(ctx.global(CAMPAIGNS_TABLE));
        let app = command.app_id.clone();
        let fate = self.fate(&command, ctx.timestamp_ms());
        if let Fate::Drop(reason) = fate {
            return self.drop_command(ctx, &command, ctx.timestamp_ms(), reason);
        }
        let paused = fate == Fate::Hold;
        // Without a throttle (removed from the settings since it was routed here): no wait,
        // except for a paused campaign's (held until a release finds it resumed).
        let throttle = match self.settings.app(&app).throttle {
            Some(throttle) => throttle,
            None if paused => UNTHROTTLED,
            None => return self.forward(ctx, &command),
        };
        let (outbox, mut window) = self.outbox(ctx, &app, throttle)?;
        if paused {
            outbox.queue(ctx, &mut window, &command)?;
        } else if let Some(command) = outbox.offer(ctx, &mut window, command, ctx.timestamp_ms())? {
            self.forward(ctx, &command)?;
        }
        Ok(ctx.store(WINDOWS)?.put_as(app.as_bytes(), &window)?)
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        timer: &Timer,
    ) -> Result<(), ProcessError> {
        self.campaigns.refresh(ctx.global(CAMPAIGNS_TABLE));
        let app = String::from_utf8_lossy(&timer.key).into_owned();
        // Commands leave now, not at a past due time (an outbox catching up after downtime).
        let at = timer.at_ms.max(ctx.effective_ms());
        // A throttle removed from the settings since: everything still waiting leaves now.
        let throttle = self.settings.app(&app).throttle.unwrap_or(UNTHROTTLED);
        let (outbox, mut window) = self.outbox(ctx, &app, throttle)?;
        outbox.release_each(ctx, &mut window, at, |ctx, command| self.leave(ctx, command, at))?;
        Ok(ctx.store(WINDOWS)?.put_as(app.as_bytes(), &window)?)
    }

    fn on_global_change(&mut self, table: &str, _key: &[u8], _value: Option<&[u8]>) {
        if table == CAMPAIGNS_TABLE {
            self.campaigns.invalidate();
        }
    }
}
