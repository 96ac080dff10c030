//! Per-user gates between qualifying and sending: sample, do-not-disturb hours, frequency caps.

use chrono::{DateTime, Datelike, Days, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::campaign::Dnd;
use crate::settings::AppSettings;

/// Sends kept for cap checks: a week and a day.
const SEND_LOG_MS: i64 = 8 * 86_400_000;
/// Gate decisions kept per user at most (the newest): enough for every device command of a
/// notification to find its decision, bounded whatever a user is sent.
const MAX_GATED: usize = 1_000;

/// Whether `user` is in the `percent` sample of `campaign` (deterministic: the same user is
/// always in or out of the same campaign's sample).
pub fn in_sample(campaign: &str, user: &str, percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    let key = format!("{campaign}\u{0}{user}");
    let bucket = (crate::runtime::partitioner::murmur2(key.as_bytes()) & 0x7fff_ffff) % 10_000;
    f64::from(bucket) < percent * 100.0
}

/// If `at_ms` falls in the do-not-disturb window in `tz`, the end of that window (epoch ms).
pub fn dnd_window_end(dnd: &Dnd, tz: Tz, at_ms: i64) -> Option<i64> {
    let local = DateTime::from_timestamp_millis(at_ms)?.with_timezone(&tz);
    let time = local.time();
    let inside = if dnd.start < dnd.end {
        dnd.start <= time && time < dnd.end
    } else {
        time >= dnd.start || time < dnd.end
    };
    if !inside {
        return None;
    }
    let mut day = local.date_naive();
    if time >= dnd.end {
        day = day.checked_add_days(Days::new(1))?;
    }
    local_instant(tz, day.and_time(dnd.end))
}

fn local_instant(tz: Tz, local: chrono::NaiveDateTime) -> Option<i64> {
    // A wall time skipped by a DST change resolves to an hour later.
    tz.from_local_datetime(&local)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(local + chrono::Duration::hours(1))).earliest())
        .map(|t| t.timestamp_millis())
}

/// When the user was last sent to (kept for a week and a day), and what the send gate decided
/// for each recent notification.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SendLog {
    /// Send times, epoch ms, oldest first.
    #[serde(default)]
    pub sends: Vec<i64>,
    /// The send gate's decisions, so every device command of one notification gets the same.
    #[serde(default)]
    pub gated: Vec<GateDecision>,
}

/// The send gate's decision on one notification (a campaign's trigger occurrence or run for
/// this user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// `<campaign>\0<run id>`.
    pub notification: String,
    /// When it reached the gate, epoch ms.
    pub at_ms: i64,
    /// Why it was refused; `None` when it left for a sender.
    pub refused: Option<String>,
}

/// Why a cap stopped a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capped {
    /// Daily cap reached (user's local day).
    Daily,
    /// Weekly cap reached (user's local ISO week).
    Weekly,
    /// Too soon after the previous send.
    MinGap,
}

impl Capped {
    /// Reason recorded in skip records and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Capped::Daily => "capped_daily",
            Capped::Weekly => "capped_weekly",
            Capped::MinGap => "min_gap",
        }
    }
}

impl SendLog {
    /// The cap a send at `at_ms` would break, if any.
    pub fn check(&self, settings: &AppSettings, tz: Tz, at_ms: i64) -> Option<Capped> {
        let local = |ms: i64| DateTime::from_timestamp_millis(ms).map(|t| t.with_timezone(&tz));
        let now = local(at_ms)?;
        if let (Some(gap), Some(last)) = (settings.min_gap_ms, self.sends.last()) {
            if at_ms - last < gap {
                return Some(Capped::MinGap);
            }
        }
        let today = self
            .sends
            .iter()
            .filter_map(|ms| local(*ms))
            .filter(|t| t.date_naive() == now.date_naive())
            .count();
        if settings.max_per_day.is_some_and(|max| today >= max as usize) {
            return Some(Capped::Daily);
        }
        let week = self
            .sends
            .iter()
            .filter_map(|ms| local(*ms))
            .filter(|t| t.iso_week() == now.iso_week())
            .count();
        if settings.max_per_week.is_some_and(|max| week >= max as usize) {
            return Some(Capped::Weekly);
        }
        None
    }

    /// The gate's earlier decision on `notification`, if it saw one of its commands.
    pub fn decision(&self, notification: &str) -> Option<&GateDecision> {
        self.gated.iter().find(|d| d.notification == notification)
    }

    /// Keeps the gate's decision on a notification; one that left (`refused` is `None`) counts
    /// against the caps from `at_ms`. Forgets what is too old to matter.
    pub fn decide(&mut self, notification: String, at_ms: i64, refused: Option<String>) {
        self.sends.retain(|ms| at_ms - ms < SEND_LOG_MS);
        self.gated.retain(|d| at_ms - d.at_ms < SEND_LOG_MS);
        if refused.is_none() {
            self.sends.push(at_ms);
            self.sends.sort_unstable();
        }
        self.gated.push(GateDecision { notification, at_ms, refused });
        if self.gated.len() > MAX_GATED {
            self.gated.drain(..self.gated.len() - MAX_GATED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::DndAction;
    use chrono::NaiveTime;

    fn time_of_day(text: &str) -> Option<NaiveTime> {
        NaiveTime::parse_from_str(text, "%H:%M").ok()
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
    }

    #[test]
    fn dnd_over_midnight_ends_at_the_next_local_nine() {
        let dnd = Dnd {
            start: time_of_day("21:00").unwrap(),
            end: time_of_day("09:00").unwrap(),
            action: DndAction::Delay,
        };
        let paris = chrono_tz::Europe::Paris;
        // 22:30 in Paris (UTC+1 in November) → 09:00 next day Paris = 08:00 UTC.
        assert_eq!(
            dnd_window_end(&dnd, paris, ms("2026-11-26T21:30:00Z")),
            Some(ms("2026-11-27T08:00:00Z"))
        );
        // 07:00 Paris → 09:00 the same day.
        assert_eq!(
            dnd_window_end(&dnd, paris, ms("2026-11-27T06:00:00Z")),
            Some(ms("2026-11-27T08:00:00Z"))
        );
        // 12:00 Paris: outside.
        assert_eq!(dnd_window_end(&dnd, paris, ms("2026-11-27T11:00:00Z")), None);
    }

    #[test]
    fn the_gate_keeps_one_decision_per_notification_and_at_most_the_newest_thousand() {
        let mut log = SendLog::default();
        log.decide("c\0r1".into(), 1_000, None);
        log.decide("c\0r2".into(), 2_000, Some("capped_daily".into()));
        assert_eq!(log.decision("c\0r1").map(|d| d.refused.clone()), Some(None));
        assert_eq!(
            log.decision("c\0r2").and_then(|d| d.refused.clone()).as_deref(),
            Some("capped_daily")
        );
        assert_eq!(log.sends, vec![1_000], "only the notification that left counts");
        for i in 0..2 * MAX_GATED as i64 {
            log.decide(format!("c\0n{i}"), 3_000 + i, None);
        }
        assert_eq!(log.gated.len(), MAX_GATED);
        assert!(log.decision("c\0r1").is_none());
        assert!(log.decision(&format!("c\0n{}", 2 * MAX_GATED - 1)).is_some());
    }

    #[test]
    fn samples_are_deterministic_and_close_to_the_percentage() {
        let inside = (0..10_000).filter(|u| in_sample("c", &format!("u{u}"), 30.0)).count();
        assert!((2_700..3_300).contains(&inside), "{inside}");
        assert_eq!(in_sample("c", "u1", 30.0), in_sample("c", "u1", 30.0));
    }
}
