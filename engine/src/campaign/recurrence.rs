//! Calendar recurrence of a scheduled campaign: daily, on chosen weekdays, on a day of the month
//! or every few hours, at a local time of day in a named timezone, and what happens to runs the
//! engine missed while it was down.
//!
//! Local times are DST-stable: 09:00 stays 09:00 local across a change. Two rules settle the
//! nights of a change:
//! - a local time that occurs twice (clocks go back) runs at its first occurrence;
//! - a local time that does not exist that day (clocks go forward) runs as many minutes after
//!   the jump as it was after the last valid time before it: 02:30 on a night that jumps from
//!   02:00 to 03:00 runs at 03:30 (the offset in effect before the change applies).
//!
//! A monthly day the month lacks (31 in April, 30 in February) runs on the month's last day.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// Local days looked through for an occurrence: any cadence recurs within two months.
const SEARCH_DAYS: i64 = 62;
/// How late a running engine may notice a run it still starts under [`CatchUp::Skip`].
pub const SKIP_SLACK_MS: i64 = 5 * 60_000;
/// Default grace of [`CatchUp::Once`]: a run missed by up to a day still starts, late.
pub const DEFAULT_GRACE_MS: i64 = 24 * 3_600_000;

/// Which local days, and how often within them, a recurrence runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// Every day.
    Daily,
    /// On the listed weekdays (at least one, distinct).
    Weekly(Vec<Weekday>),
    /// On this day of each month (1 to 31; a shorter month runs on its last day).
    Monthly(u32),
    /// Every so many hours (1 to 23) from the time of day until the local day ends.
    Hourly(u32),
}

/// A calendar recurrence: a cadence at a local time of day in a timezone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recurrence {
    /// Which days and how often.
    pub cadence: Cadence,
    /// Local time of day of the (first) run of a day.
    pub time: NaiveTime,
    /// Timezone the local times are in.
    pub timezone: Tz,
}

impl Recurrence {
    /// The latest occurrence at or before `limit_ms`, epoch milliseconds.
    pub fn latest_at_or_before(&self, limit_ms: i64) -> Option<i64> {
        let limit = DateTime::<Utc>::from_timestamp_millis(limit_ms)?;
        let today = limit.with_timezone(&self.timezone).date_naive();
        (0..=SEARCH_DAYS)
            .filter_map(|back| today.checked_sub_signed(Duration::days(back)))
            .find_map(|date| self.runs_on(date).rev().find(|at| *at <= limit_ms))
    }

    /// The first occurrence strictly after `after_ms`, epoch milliseconds.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after = DateTime::<Utc>::from_timestamp_millis(after_ms)?;
        let today = after.with_timezone(&self.timezone).date_naive();
        (0..=SEARCH_DAYS)
            .filter_map(|ahead| today.checked_add_signed(Duration::days(ahead)))
            .find_map(|date| self.runs_on(date).find(|at| *at > after_ms))
    }

    /// The runs of one local date, ascending, epoch milliseconds.
    fn runs_on(&self, date: NaiveDate) -> impl DoubleEndedIterator<Item = i64> + '_ {
        let times: Vec<NaiveTime> = if !self.runs_that_day(date) {
            Vec::new()
        } else if let Cadence::Hourly(hours) = self.cadence {
            let start = self.time.signed_duration_since(NaiveTime::MIN);
            (0..)
                .map(|i| start + Duration::hours(i64::from(hours) * i))
                .take_while(|offset| *offset < Duration::days(1))
                .map(|offset| NaiveTime::MIN + offset)
                .collect()
        } else {
            vec![self.time]
        };
        times.into_iter().map(move |time| instant(&self.timezone, date.and_time(time)))
    }

    fn runs_that_day(&self, date: NaiveDate) -> bool {
        match &self.cadence {
            Cadence::Daily | Cadence::Hourly(_) => true,
            Cadence::Weekly(days) => days.contains(&date.weekday()),
            Cadence::Monthly(day) => date.day() == (*day).min(last_day_of_month(date)),
        }
    }
}

/// Delivery in each user's own timezone. A run's instant is the start of its local date and
/// time in the first timezone to reach it (UTC+14); each user's send is on the same local date
/// in the user's timezone: at the run's time (`timezone: user`, up to 26 hours after the run
/// starts) or at the user's most active hour (`timezone: best`, whose runs start at midnight in
/// UTC+14, so every user's hour of that date is still to come: up to 50 hours after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserLocal {
    /// At the run's local time (`timezone: user`).
    RunTime {
        /// Local cut-off: a user whose local time has passed it (on the run's date) is not
        /// sent to.
        until: Option<NaiveTime>,
    },
    /// At the start of the local hour the user was most active in (`timezone: best`).
    BestHour {
        /// The campaign's time of day, for users without activity.
        fallback: NaiveTime,
    },
}

/// When one user gets a user-local run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalSend {
    /// The user's local time has come.
    Now,
    /// At this instant, epoch milliseconds.
    At(i64),
    /// The user's local time passed the cut-off.
    Expired,
}

impl UserLocal {
    /// The timezone whose local times start user-local runs: the first to reach any time.
    pub const RUN_ZONE: Tz = chrono_tz::Etc::GMTMinus14;

    /// How long after a run starts its last users' local time may come, milliseconds: 26 hours
    /// at the run's time (UTC+14 to UTC−12), 50 at a best hour (from midnight in UTC+14).
    pub fn span_ms(&self) -> i64 {
        let hours = match self {
            Self::RunTime { .. } => 26,
            Self::BestHour { .. } => 50,
        };
        hours * 3_600_000
    }

    /// When a user in `user_tz` gets the run due at `run_at_ms`, seen at `now_ms`;
    /// `best_hour`: the user's most active local hour, if any (read by `BestHour` only).
    pub fn send(
        &self,
        run_at_ms: i64,
        user_tz: Tz,
        now_ms: i64,
        best_hour: Option<u32>,
    ) -> LocalSend {
        let Some(run) = DateTime::<Utc>::from_timestamp_millis(run_at_ms) else {
            return LocalSend::Now;
        };
        let run_local = run.with_timezone(&Self::RUN_ZONE).naive_local();
        let (local, until) = match *self {
            Self::RunTime { until } => (run_local, until),
            Self::BestHour { fallback } => {
                let best = best_hour.and_then(|hour| NaiveTime::from_hms_opt(hour, 0, 0));
                (run_local.date().and_time(best.unwrap_or(fallback)), None)
            }
        };
        let cut_off = until.map(|until| instant(&user_tz, local.date().and_time(until)));
        match instant(&user_tz, local) {
            _ if cut_off.is_some_and(|cut_off| now_ms > cut_off) => LocalSend::Expired,
            at if at > now_ms => LocalSend::At(at),
            _ => LocalSend::Now,
        }
    }
}

/// What happens to a run whose time passed while the engine was down (or before a task saw it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// A missed run is not sent (a running engine notices a run within [`SKIP_SLACK_MS`]).
    Skip,
    /// The latest missed run is sent once, late, if at most `grace_ms` late; older ones are not.
    Once {
        /// Longest lateness at which a missed run still starts, milliseconds.
        grace_ms: i64,
    },
}

impl Default for CatchUp {
    fn default() -> Self {
        Self::Once { grace_ms: DEFAULT_GRACE_MS }
    }
}

impl CatchUp {
    /// Whether a run first noticed `late_ms` after its time still starts.
    pub fn starts(&self, late_ms: i64) -> bool {
        match self {
            Self::Skip => late_ms <= SKIP_SLACK_MS,
            Self::Once { grace_ms } => late_ms <= *grace_ms,
        }
    }
}

/// The instant of a local date-time, by the rules in the module documentation.
fn instant(tz: &Tz, local: NaiveDateTime) -> i64 {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => at.timestamp_millis(),
        LocalResult::None => {
            // In a gap: the offset of the day before (no zone changes twice within a day).
            let before = tz.offset_from_utc_datetime(&(local - Duration::days(1))).fix();
            (local - Duration::seconds(i64::from(before.local_minus_utc())))
                .and_utc()
                .timestamp_millis()
        }
    }
}

fn last_day_of_month(date: NaiveDate) -> u32 {
    let (year, month) =
        if date.month() == 12 { (date.year() + 1, 1) } else { (date.year(), date.month() + 1) };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|first| first.pred_opt())
        .map_or(28, |last| last.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
    }

    fn text(ms: i64, tz: Tz) -> String {
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap().with_timezone(&tz).to_rfc3339()
    }

    fn at(cadence: Cadence, time: &str, timezone: Tz) -> Recurrence {
        let time = NaiveTime::parse_from_str(time, "%H:%M").unwrap();
        Recurrence { cadence, time, timezone }
    }

    #[test]
    fn seventh_of_each_month_created_on_the_tenth_first_runs_next_month() {
        let monthly = at(Cadence::Monthly(7), "09:00", chrono_tz::Europe::Paris);
        let created = ms("2026-11-10T12:00:00+01:00");
        // The 7th of this month is past: the latest occurrence is before the campaign existed.
        assert_eq!(monthly.latest_at_or_before(created), Some(ms("2026-11-07T09:00:00+01:00")));
        assert_eq!(monthly.next_after(created), Some(ms("2026-12-07T09:00:00+01:00")));
        let after_december = monthly.next_after(ms("2026-12-07T09:00:00+01:00"));
        assert_eq!(after_december, Some(ms("2027-01-07T09:00:00+01:00")));
    }

    #[test]
    fn a_day_the_month_lacks_runs_on_its_last_day() {
        let monthly = at(Cadence::Monthly(31), "08:00", chrono_tz::UTC);
        let runs: Vec<String> =
            std::iter::successors(monthly.next_after(ms("2027-01-01T00:00:00Z")), |last| {
                monthly.next_after(*last)
            })
            .take(5)
            .map(|at| text(at, chrono_tz::UTC))
            .collect();
        assert_eq!(
            runs,
            [
                "2027-01-31T08:00:00+00:00",
                "2027-02-28T08:00:00+00:00",
                "2027-03-31T08:00:00+00:00",
                "2027-04-30T08:00:00+00:00",
                "2027-05-31T08:00:00+00:00",
            ]
        );
        let leap = at(Cadence::Monthly(30), "08:00", chrono_tz::UTC);
        assert_eq!(leap.next_after(ms("2028-02-01T00:00:00Z")), Some(ms("2028-02-29T08:00:00Z")));
    }

    #[test]
    fn weekly_on_chosen_days() {
        let weekly = at(Cadence::Weekly(vec![Weekday::Mon, Weekday::Thu]), "18:30", chrono_tz::UTC);
        // 2026-11-28 is a Saturday.
        let now = ms("2026-11-28T10:00:00Z");
        assert_eq!(weekly.latest_at_or_before(now), Some(ms("2026-11-26T18:30:00Z")));
        assert_eq!(weekly.next_after(now), Some(ms("2026-11-30T18:30:00Z")));
        let thursday = weekly.next_after(ms("2026-11-30T18:30:00Z"));
        assert_eq!(thursday, Some(ms("2026-12-03T18:30:00Z")));
    }

    #[test]
    fn every_n_hours_from_the_time_of_day_through_the_local_day() {
        let hourly = at(Cadence::Hourly(5), "02:00", chrono_tz::Asia::Tokyo);
        let day: Vec<String> =
            std::iter::successors(hourly.next_after(ms("2026-11-28T00:00:00+09:00")), |last| {
                hourly.next_after(*last)
            })
            .take(6)
            .map(|at| text(at, chrono_tz::Asia::Tokyo))
            .collect();
        assert_eq!(
            day,
            [
                "2026-11-28T02:00:00+09:00",
                "2026-11-28T07:00:00+09:00",
                "2026-11-28T12:00:00+09:00",
                "2026-11-28T17:00:00+09:00",
                "2026-11-28T22:00:00+09:00",
                "2026-11-29T02:00:00+09:00",
            ]
        );
    }

    /// Daily runs over a change night, as local times.
    fn daily_over(time: &str, tz: Tz, from: &str) -> Vec<String> {
        let daily = at(Cadence::Daily, time, tz);
        std::iter::successors(daily.next_after(ms(from)), |last| daily.next_after(*last))
            .take(3)
            .map(|at| text(at, tz))
            .collect()
    }

    #[test]
    fn nine_stays_nine_local_across_dst_changes() {
        let new_york = chrono_tz::America::New_York;
        assert_eq!(
            daily_over("09:00", new_york, "2026-03-07T00:00:00-05:00"),
            ["2026-03-07T09:00:00-05:00", "2026-03-08T09:00:00-04:00", "2026-03-09T09:00:00-04:00"]
        );
        assert_eq!(
            daily_over("09:00", new_york, "2026-10-31T00:00:00-04:00"),
            ["2026-10-31T09:00:00-04:00", "2026-11-01T09:00:00-05:00", "2026-11-02T09:00:00-05:00"]
        );
        let paris = chrono_tz::Europe::Paris;
        assert_eq!(
            daily_over("09:00", paris, "2026-03-28T00:00:00+01:00"),
            ["2026-03-28T09:00:00+01:00", "2026-03-29T09:00:00+02:00", "2026-03-30T09:00:00+02:00"]
        );
    }

    #[test]
    fn a_time_skipped_by_the_change_runs_as_long_after_the_jump() {
        // New York jumps 02:00 -> 03:00 on 2026-03-08; Paris 02:00 -> 03:00 on 2026-03-29.
        assert_eq!(
            daily_over("02:30", chrono_tz::America::New_York, "2026-03-07T12:00:00-05:00"),
            ["2026-03-08T03:30:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"]
        );
        assert_eq!(
            daily_over("02:30", chrono_tz::Europe::Paris, "2026-03-28T12:00:00+01:00"),
            ["2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]
        );
    }

    #[test]
    fn a_time_that_occurs_twice_runs_once_at_its_first_occurrence() {
        // Paris goes back 03:00 -> 02:00 on 2026-10-25: 02:30 happens at +02:00, then at +01:00.
        assert_eq!(
            daily_over("02:30", chrono_tz::Europe::Paris, "2026-10-24T12:00:00+02:00"),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]
        );
        // Every 1 h through New York's fall-back night: 01:00 local runs once, 24 runs that day.
        let hourly = at(Cadence::Hourly(1), "00:00", chrono_tz::America::New_York);
        let day_start = ms("2026-11-01T00:00:00-04:00");
        let runs: Vec<i64> =
            std::iter::successors(Some(day_start), |last| hourly.next_after(*last))
                .take_while(|at| *at < ms("2026-11-02T00:00:00-05:00"))
                .collect();
        assert_eq!(runs.len(), 24);
    }

    #[test]
    fn user_local_nine_with_a_cut_off_at_eleven_in_utc_minus_10_utc_and_utc_plus_14() {
        let local = UserLocal::RunTime { until: NaiveTime::from_hms_opt(11, 0, 0) };
        let daily = at(Cadence::Daily, "09:00", UserLocal::RUN_ZONE);
        // The run of 2026-11-20 starts when it is 09:00 in UTC+14: 19:00Z the day before.
        let run = daily.next_after(ms("2026-11-19T12:00:00Z")).unwrap();
        assert_eq!(run, ms("2026-11-19T19:00:00Z"));
        let (kiritimati, honolulu) = (chrono_tz::Pacific::Kiritimati, chrono_tz::Pacific::Honolulu);
        // On time: each user at 09:00 local, over 24 hours.
        assert_eq!(local.send(run, kiritimati, run, None), LocalSend::Now);
        assert_eq!(
            local.send(run, chrono_tz::UTC, run, None),
            LocalSend::At(ms("2026-11-20T09:00:00Z"))
        );
        assert_eq!(local.send(run, honolulu, run, None), LocalSend::At(ms("2026-11-20T19:00:00Z")));
        // Started late, at 10:30Z: past 11:00 in UTC+14, still before it in UTC, and UTC-10
        // has yet to reach 09:00.
        let late = ms("2026-11-20T10:30:00Z");
        assert_eq!(local.send(run, kiritimati, late, None), LocalSend::Expired);
        assert_eq!(local.send(run, chrono_tz::UTC, late, None), LocalSend::Now);
        assert_eq!(
            local.send(run, honolulu, late, None),
            LocalSend::At(ms("2026-11-20T19:00:00Z"))
        );
        // A send due at 09:00 local whose timer fires after 11:00 local is expired too.
        assert_eq!(local.send(run, honolulu, ms("2026-11-20T21:00:01Z"), None), LocalSend::Expired);
        assert_eq!(
            UserLocal::RunTime { until: None }.send(run, honolulu, late + 86_400_000, None),
            LocalSend::Now
        );
    }

    #[test]
    fn best_hour_on_the_runs_local_date_else_the_campaign_time() {
        let best = UserLocal::BestHour { fallback: NaiveTime::from_hms_opt(9, 0, 0).unwrap() };
        // A best-time run of 2026-11-20 starts at midnight in UTC+14: 10:00Z the day before.
        let daily = at(Cadence::Daily, "00:00", UserLocal::RUN_ZONE);
        let run = daily.next_after(ms("2026-11-19T00:00:00Z")).unwrap();
        assert_eq!(run, ms("2026-11-19T10:00:00Z"));
        let honolulu = chrono_tz::Pacific::Honolulu;
        assert_eq!(
            best.send(run, honolulu, run, Some(7)),
            LocalSend::At(ms("2026-11-20T17:00:00Z"))
        );
        assert_eq!(
            best.send(run, honolulu, run, Some(20)),
            LocalSend::At(ms("2026-11-21T06:00:00Z"))
        );
        assert_eq!(best.send(run, honolulu, run, None), LocalSend::At(ms("2026-11-20T19:00:00Z")));
        // UTC+14's 07:00 of the run's date is 7 hours after the run starts.
        let kiritimati = chrono_tz::Pacific::Kiritimati;
        assert_eq!(
            best.send(run, kiritimati, run, Some(7)),
            LocalSend::At(ms("2026-11-19T17:00:00Z"))
        );
        assert_eq!(best.send(run, kiritimati, ms("2026-11-19T17:00:00Z"), Some(7)), LocalSend::Now);
    }

    #[test]
    fn catch_up_policies() {
        let hour = 3_600_000;
        assert!(CatchUp::default().starts(23 * hour));
        assert!(!CatchUp::default().starts(25 * hour));
        assert!(CatchUp::Once { grace_ms: 2 * hour }.starts(2 * hour));
        assert!(!CatchUp::Once { grace_ms: 2 * hour }.starts(2 * hour + 1));
        assert!(CatchUp::Skip.starts(1_000), "a running engine notices a run late by a tick");
        assert!(!CatchUp::Skip.starts(hour));
    }
}
