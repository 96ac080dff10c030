//! The send gate: where a notification of an app with frequency caps leaves for a sender. The
//! campaign stage (or the app stage, after the app's throttle) sends each device command here,
//! keyed by user; the user's task checks the caps at the moment the command leaves and spends a
//! slot only for a notification that goes out. A refused command goes back to the campaign stage
//! as a skip that returns its place in the campaign's limits and its variant's sent count; a
//! passing notification that asked for confirmation (its campaign has limits) is confirmed, so
//! the campaign stage knows its place is final.
//!
//! The user stage owns the send log, so the check and the write are one step of one task:
//! exact under concurrency, crashes and rebalances (both are in the task's transaction).

use super::{gates::SendLog, Profile, UserStage, PROFILES, SEND_LOG};
use crate::{
    model::{SendCommand, SendConfirmed, Skip},
    runtime::{ProcessError, ProcessorContext},
};

impl UserStage {
    /// Passes `command` to the senders, or refuses it when the user's caps are spent at the
    /// command's send time. Every device command of one notification gets the same decision.
    pub(super) fn on_send_gate(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        command: SendCommand,
    ) -> Result<(), ProcessError> {
        let user = command.user_id.as_bytes();
        let notification = format!("{}\u{0}{}", command.campaign_id, command.run_id);
        let mut log = ctx.store(SEND_LOG)?.get_as::<SendLog>(user)?.unwrap_or_default();
        let (refused, first) = match log.decision(&notification) {
            Some(decision) => (decision.refused.clone(), false),
            None => {
                let refused = self.capped(ctx, &command, &log)?;
                log.decide(notification, command.created_at_ms, refused.clone());
                ctx.store(SEND_LOG)?.put_as(user, &log)?;
                (refused, true)
            }
        };
        let Some(reason) = refused else {
            // Every command asking for confirmation gets it (settling is idempotent), so a
            // repeated notification settles its place too.
            if command.confirm {
                let confirmed = SendConfirmed {
                    campaign_id: command.campaign_id.clone(),
                    app_id: command.app_id.clone(),
                    user_id: command.user_id.clone(),
                    run_id: command.run_id.clone(),
                    timestamp_ms: command.created_at_ms,
                };
                self.flow().answer(ctx, &command, &confirmed)?;
            }
            return Ok(ctx.send_record(&self.topics.push, user, &command)?);
        };
        let skip = Skip {
            campaign_id: command.campaign_id.clone(),
            app_id: command.app_id.clone(),
            user_id: command.user_id.clone(),
            reason,
            timestamp_ms: command.created_at_ms,
            variant_id: Some(command.variant_id.clone()),
            returns_place: first,
            run_id: Some(command.run_id.clone()),
        };
        self.flow().answer(ctx, &command, &skip)
    }

    /// The cap `command` would break if it left now (campaigns may opt out of the caps).
    fn capped(
        &self,
        ctx: &mut ProcessorContext<'_>,
        command: &SendCommand,
        log: &SendLog,
    ) -> Result<Option<String>, ProcessError> {
        let ignores_caps = self
            .campaigns
            .book()
            .get(&command.campaign_id)
            .is_some_and(|campaign| campaign.options.ignore_global_caps);
        if ignores_caps {
            return Ok(None);
        }
        let app = self.settings.app(&command.app_id);
        let profile = ctx.store(PROFILES)?.get_as::<Profile>(command.user_id.as_bytes())?;
        let tz = profile.and_then(|p| p.timezone()).unwrap_or(app.timezone);
        Ok(log.check(app, tz, command.created_at_ms).map(|capped| capped.reason().to_string()))
    }
}
