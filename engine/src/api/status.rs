//! Where a campaign stands: the operator's latest command (draft, paused, stopped) and, for a
//! campaign the operator left running, what the engine reported on `herald.campaign-events`
//! (completed, a reach limit reached).

use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    campaign::{Campaign, CampaignStatus},
    model::{CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, LifecycleKind},
};

/// Where a campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Saved, not running.
    Draft,
    /// Running.
    Active,
    /// Holding sends.
    Paused,
    /// Ended by an operator.
    Stopped,
    /// Ended by the engine: its end date passed or its total limit is reached and final.
    Completed,
    /// Running, but sending nobody more: its total limit is reached (sends in flight may still
    /// give places back), or its daily limit today.
    LimitReached,
    /// Its definition no longer validates (written by an older Herald).
    Invalid,
}

/// The status of the campaign whose latest envelope is `envelope` (compiled: `campaign`, none if
/// it does not compile) and latest lifecycle events `events` (oldest first), at `now_ms`. A
/// `COMPLETED` event counts while its reason still holds for the current definition (its end
/// date passed, its total limit reached): a definition applied after the campaign completed with
/// a later end date or a higher limit makes it active again, also once paused and resumed. A
/// `LIMIT_REACHED` event counts from the latest definition on.
pub fn status(
    envelope: &CampaignEnvelope,
    campaign: Option<&Campaign>,
    events: &[CampaignLifecycleEvent],
    now_ms: i64,
) -> Status {
    let Some(campaign) = campaign else { return Status::Invalid };
    match campaign.status {
        CampaignStatus::Draft => return Status::Draft,
        CampaignStatus::Paused => return Status::Paused,
        CampaignStatus::Stopped => return Status::Stopped,
        CampaignStatus::Active => {}
    }
    let defined_at =
        if envelope.command == CampaignCommand::Define { envelope.revision } else { i64::MIN };
    let mut status = Status::Active;
    for event in events {
        if event.kind != LifecycleKind::Completed && event.timestamp_ms < defined_at {
            continue;
        }
        match event.kind {
            LifecycleKind::Completed if completion_holds(campaign, event, now_ms) => {
                return Status::Completed
            }
            LifecycleKind::LimitReached if limit_holds(campaign, event, now_ms) => {
                status = Status::LimitReached;
            }
            _ => {}
        }
    }
    status
}

/// Whether the end a `COMPLETED` event announced still holds for `campaign` as defined now: its
/// end date has passed (reason `end_date`), or its sends (`sent`) reach its total limit (reason
/// `total_limit`).
fn completion_holds(campaign: &Campaign, event: &CampaignLifecycleEvent, now_ms: i64) -> bool {
    match event.details.get("reason").map(String::as_str) {
        Some("end_date") => campaign.when.end.is_some_and(|end| now_ms > end.timestamp_millis()),
        Some("total_limit") => {
            let sent = event.details.get("sent").and_then(|s| s.parse::<u64>().ok());
            campaign.limits.total.zip(sent).is_some_and(|(total, sent)| sent >= total)
        }
        _ => true,
    }
}

/// Whether the limit a `LIMIT_REACHED` event announced still holds: a total limit does until a
/// new definition, a daily one for the rest of its day (in the campaign's time zone).
fn limit_holds(campaign: &Campaign, event: &CampaignLifecycleEvent, now_ms: i64) -> bool {
    match event.details.get("limit").map(String::as_str) {
        Some("total") => true,
        Some("daily") => {
            let tz = campaign.options.timezone.unwrap_or(chrono_tz::UTC);
            let today = chrono::DateTime::from_timestamp_millis(now_ms)
                .map(|t| t.with_timezone(&tz).date_naive().to_string());
            today.is_some_and(|today| event.details.get("day") == Some(&today))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::admin;

    /// [`status`] of `envelope` compiled.
    fn status(
        envelope: &CampaignEnvelope,
        events: &[CampaignLifecycleEvent],
        now_ms: i64,
    ) -> Status {
        super::status(envelope, admin::compile(envelope).ok().as_ref(), events, now_ms)
    }

    const DAY_MS: i64 = 86_400_000;
    /// 2026-11-28T12:00:00Z.
    const NOW: i64 = 1_795_867_200_000;

    fn envelope(command: CampaignCommand, at: i64) -> CampaignEnvelope {
        let definition = serde_json::json!({
            "id": "c", "app": "shop", "name": "C", "limits": { "total": 10 },
            "when": { "event": "App Opened" }, "what": { "title": "t", "body": "b" },
        });
        envelope_of(command, at, definition)
    }

    fn envelope_of(
        command: CampaignCommand,
        at: i64,
        definition: serde_json::Value,
    ) -> CampaignEnvelope {
        CampaignEnvelope {
            campaign_id: "c".into(),
            app_id: "shop".into(),
            command,
            definition: Some(definition.to_string()),
            revision: at,
            issued_at_ms: at,
            issued_by: None,
        }
    }

    fn event(kind: LifecycleKind, at: i64, details: &[(&str, &str)]) -> CampaignLifecycleEvent {
        CampaignLifecycleEvent {
            campaign_id: "c".into(),
            app_id: "shop".into(),
            kind,
            run_id: None,
            timestamp_ms: at,
            details: details.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn the_engines_events_tell_a_running_campaign_completed_or_limited() {
        let defined = envelope(CampaignCommand::Define, NOW - 1_000);
        assert_eq!(status(&defined, &[], NOW), Status::Active);
        let total = event(LifecycleKind::LimitReached, NOW - 500, &[("limit", "total")]);
        assert_eq!(status(&defined, std::slice::from_ref(&total), NOW), Status::LimitReached);
        let completed = event(
            LifecycleKind::Completed,
            NOW - 400,
            &[("reason", "total_limit"), ("sent", "10")],
        );
        assert_eq!(status(&defined, &[total, completed.clone()], NOW), Status::Completed);
        // Paused and resumed after it completed: still completed.
        let resumed = envelope(CampaignCommand::Resume, NOW - 100);
        assert_eq!(status(&resumed, std::slice::from_ref(&completed), NOW), Status::Completed);
        // Paused or stopped by the operator: that, whatever the engine said before.
        let paused = envelope(CampaignCommand::Pause, NOW - 100);
        assert_eq!(status(&paused, std::slice::from_ref(&completed), NOW), Status::Paused);
        let stopped = envelope(CampaignCommand::Stop, NOW - 100);
        assert_eq!(status(&stopped, &[], NOW), Status::Stopped);
        // Defined again unchanged after it completed: still completed (its limit still holds).
        let redefined = envelope(CampaignCommand::Define, NOW - 100);
        assert_eq!(status(&redefined, &[completed], NOW), Status::Completed);
    }

    /// Issue 15: a campaign completed at its end date, applied again with a later end date, is
    /// active, also after a pause and a resume (whose envelopes are not definitions); applied
    /// again unchanged, it is still completed (the engine does not announce it again).
    #[test]
    fn a_campaign_applied_again_after_it_completed_is_active_while_its_end_is_ahead() {
        let with_end = |end_ms: i64| {
            let end = chrono::DateTime::from_timestamp_millis(end_ms).unwrap().to_rfc3339();
            serde_json::json!({
                "id": "c", "app": "shop", "name": "C",
                "when": { "event": "App Opened", "end": end },
                "what": { "title": "t", "body": "b" },
            })
        };
        let ended = event(LifecycleKind::Completed, NOW - DAY_MS, &[("reason", "end_date")]);
        let events = std::slice::from_ref(&ended);
        let moved = envelope_of(CampaignCommand::Define, NOW - 1_000, with_end(NOW + DAY_MS));
        assert_eq!(status(&moved, events, NOW), Status::Active);
        let resumed = CampaignEnvelope {
            command: CampaignCommand::Resume,
            revision: NOW - 10,
            issued_at_ms: NOW - 10,
            ..moved
        };
        assert_eq!(status(&resumed, events, NOW), Status::Active);
        let same = envelope_of(CampaignCommand::Define, NOW - 1_000, with_end(NOW - 2 * DAY_MS));
        assert_eq!(status(&same, events, NOW), Status::Completed);
        // A total limit raised above what was sent: active again.
        let total = |total: u64| {
            serde_json::json!({
                "id": "c", "app": "shop", "name": "C", "limits": { "total": total },
                "when": { "event": "App Opened" }, "what": { "title": "t", "body": "b" },
            })
        };
        let full = event(
            LifecycleKind::Completed,
            NOW - DAY_MS,
            &[("reason", "total_limit"), ("sent", "10")],
        );
        let raised = envelope_of(CampaignCommand::Resume, NOW - 10, total(20));
        assert_eq!(status(&raised, std::slice::from_ref(&full), NOW), Status::Active);
        let kept = envelope_of(CampaignCommand::Resume, NOW - 10, total(10));
        assert_eq!(status(&kept, std::slice::from_ref(&full), NOW), Status::Completed);
    }

    #[test]
    fn a_daily_limit_holds_for_its_day_only() {
        let defined = envelope(CampaignCommand::Define, NOW - 2 * DAY_MS);
        let daily = |day: &str| {
            event(LifecycleKind::LimitReached, NOW - 1_000, &[("limit", "daily"), ("day", day)])
        };
        assert_eq!(status(&defined, &[daily("2026-11-28")], NOW), Status::LimitReached);
        assert_eq!(status(&defined, &[daily("2026-11-27")], NOW), Status::Active);
        let winner = event(LifecycleKind::WinnerDeclared, NOW - 1, &[]);
        assert_eq!(status(&defined, &[winner], NOW), Status::Active);
    }

    #[test]
    fn an_undecodable_definition_is_invalid() {
        let mut broken = envelope(CampaignCommand::Define, NOW);
        broken.definition = Some("{}".into());
        assert_eq!(status(&broken, &[], NOW), Status::Invalid);
    }
}
