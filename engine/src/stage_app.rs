//! The app stage (partitioned by app id): the global per-app throttle, "at most N
//! notifications per interval" across all of an app's campaigns. The campaign stage routes the
//! send commands of apps that have such a throttle here instead of to `herald.push`; they wait
//! in a durable outbox per app and leave, in arrival order, as the app's windows open.

use std::sync::Arc;

use crate::{
    campaign::Throttle,
    model::{topics::TopicNames, Record, SchemaRegistry, SendCommand},
    outbox::{Drain, Outbox, OutboxState},
    runtime::{ProcessError, Processor, ProcessorContext, SourceRecord, Timer, TopologyBuilder},
    settings::Settings,
};

const OUTBOX: &str = "app-outbox";
const WINDOWS: &str = "app-windows";

/// Adds the app stage (throttled send commands in, send commands out) to a topology.
pub fn add_app_stage(
    builder: TopologyBuilder,
    topics: &Arc<TopicNames>,
    settings: Arc<Settings>,
) -> TopologyBuilder {
    let names = Arc::clone(topics);
    builder.sub_topology(
        "app",
        move |_| AppStage { topics: Arc::clone(&names), settings: Arc::clone(&settings) },
        |s| {
            s.source(&topics.app_throttle)
                .store(OUTBOX)
                .store(WINDOWS)
                .sink(&topics.push)
                .sink(&topics.send_gate)
        },
    )
}

/// The app-stage processor of one task.
pub struct AppStage {
    topics: Arc<TopicNames>,
    settings: Arc<Settings>,
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
        let app = command.app_id.clone();
        // Without a throttle (removed from the settings since it was routed here): no wait.
        let Some(throttle) = self.settings.app(&app).throttle else {
            return self.forward(ctx, &command);
        };
        let (outbox, mut window) = self.outbox(ctx, &app, throttle)?;
        if let Some(command) = outbox.offer(ctx, &mut window, command, ctx.timestamp_ms())? {
            self.forward(ctx, &command)?;
        }
        Ok(ctx.store(WINDOWS)?.put_as(app.as_bytes(), &window)?)
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        timer: &Timer,
    ) -> Result<(), ProcessError> {
        let app = String::from_utf8_lossy(&timer.key).into_owned();
        // Commands leave now, not at a past due time (an outbox catching up after downtime).
        let at = timer.at_ms.max(ctx.effective_ms());
        // A throttle removed from the settings since: everything still waiting leaves now.
        let throttle =
            self.settings.app(&app).throttle.unwrap_or(Throttle { max: u64::MAX, per_ms: 1 });
        let (outbox, mut window) = self.outbox(ctx, &app, throttle)?;
        outbox.release(ctx, &mut window, at, Drain::Send, |ctx, command: SendCommand, _| {
            self.forward(ctx, &SendCommand { created_at_ms: at, ..command })
        })?;
        Ok(ctx.store(WINDOWS)?.put_as(app.as_bytes(), &window)?)
    }
}
