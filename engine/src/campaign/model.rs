//! The validated campaign model. Values of these types only come out of [`super::parse_campaign`],
//! which has checked every field.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;

use super::{CatchUp, Recurrence, Scalar, UserLocal};
use crate::model::Platform;

/// Lifecycle status set in the definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CampaignStatus {
    /// Saved, not running.
    Draft,
    /// Running.
    Active,
    /// Holding sends.
    Paused,
    /// Ended.
    Stopped,
}

/// A comparison of one property.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Equal (strings case-sensitive, numbers numerically).
    Equals(Scalar),
    /// Not equal, or absent.
    NotEquals(Scalar),
    /// Equal to one of.
    In(Vec<Scalar>),
    /// Equal to none of, or absent.
    NotIn(Vec<Scalar>),
    /// Number within `[low, high]`.
    Between(f64, f64),
    /// Number greater than.
    Gt(f64),
    /// Number greater than or equal to.
    Gte(f64),
    /// Number less than.
    Lt(f64),
    /// Number less than or equal to.
    Lte(f64),
    /// Present (any value).
    Exists,
    /// Absent.
    NotExists,
    /// Text contains.
    Contains(String),
    /// Text starts with.
    StartsWith(String),
    /// Date strictly before.
    Before(DateTime<Utc>),
    /// Date strictly after.
    After(DateTime<Utc>),
    /// Date within the last N days before now.
    WithinLastDays(u32),
}

/// `property` compared with `op`.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyCondition {
    /// Property name.
    pub property: String,
    /// Comparison.
    pub op: Op,
}

/// A place and a radius around it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Place {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Radius in kilometres.
    pub radius_km: f64,
}

/// A past-behaviour predicate over the user's event history.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Event name.
    pub event: String,
    /// Matching occurrences must be at least this many (`did` = 1, `did_not` uses `at_most: 0`).
    pub at_least: u32,
    /// ... and at most this many.
    pub at_most: Option<u32>,
    /// Window: the last N days.
    pub in_last_days: u32,
    /// Event-property conditions an occurrence must meet.
    pub conditions: Vec<PropertyCondition>,
    /// Condition on the first matching occurrence in the window (`before` / `after`, day
    /// precision).
    pub first: Option<Op>,
    /// Condition on the last matching occurrence in the window.
    pub last: Option<Op>,
}

/// Who a campaign targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every sub-filter holds (an empty list: everyone).
    All(Vec<Filter>),
    /// At least one holds.
    Any(Vec<Filter>),
    /// The sub-filter does not hold.
    Not(Box<Filter>),
    /// A profile property condition.
    Property(PropertyCondition),
    /// A device field condition that holds for at least one of the user's devices.
    Device(PropertyCondition),
    /// The user's location is within the radius of at least one place.
    Near(Vec<Place>),
    /// A past-behaviour predicate.
    Behaviour(Behaviour),
    /// Users in the saved segment with this id (as the segment reads when evaluated; an
    /// unknown segment matches nobody).
    Segment(String),
}

/// "E happened and F did not happen within T".
#[derive(Debug, Clone, PartialEq)]
pub struct Inaction {
    /// The event that must not follow.
    pub event: String,
    /// How long to wait for it, milliseconds.
    pub within_ms: i64,
}

/// What makes a user qualify.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// On an event (with property conditions), optionally only if another event does not
    /// follow within a time.
    Event {
        /// Event name.
        event: String,
        /// Conditions on the event's properties.
        conditions: Vec<PropertyCondition>,
        /// Inaction window, if any.
        unless: Option<Inaction>,
    },
    /// At a time relative to a date property of an event (e.g. 24 h before `departure`).
    DateReminder {
        /// Event carrying the date.
        event: String,
        /// Name of the date property (RFC 3339 text or epoch milliseconds).
        property: String,
        /// Offset from the date, milliseconds (negative: before).
        offset_ms: i64,
    },
    /// Past-behaviour audience evaluated at scheduled times (one run each).
    Scheduled(Schedule),
}

/// When a scheduled campaign runs: at fixed times, then optionally every `every_ms` after the
/// last of them; or on a calendar recurrence (then `at_ms` is empty and `every_ms` absent: the
/// parser accepts one form or the other). Until the campaign's end either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Run times, epoch milliseconds, ascending and distinct.
    pub at_ms: Vec<i64>,
    /// Recurrence period after the last fixed time, milliseconds.
    pub every_ms: Option<i64>,
    /// Calendar recurrence in a timezone (daily, weekly, monthly, every few hours).
    pub calendar: Option<Recurrence>,
    /// What happens to a run missed while the engine was down.
    pub catch_up: CatchUp,
    /// Each user at the run's local time in their own timezone (a calendar schedule only).
    pub user_local: Option<UserLocal>,
}

impl Schedule {
    /// The latest run time at or before `now_ms` (not after `end_ms`), if any run is due.
    pub fn latest_run(&self, now_ms: i64, end_ms: Option<i64>) -> Option<i64> {
        let limit = end_ms.map_or(now_ms, |end| end.min(now_ms));
        if let Some(calendar) = &self.calendar {
            return calendar.latest_at_or_before(limit);
        }
        let fixed = self.at_ms.iter().rev().find(|at| **at <= limit).copied()?;
        let last_fixed = *self.at_ms.last()?;
        match self.every_ms {
            Some(every) if every > 0 && limit >= last_fixed => {
                Some(last_fixed + (limit - last_fixed) / every * every)
            }
            _ => Some(fixed),
        }
    }
}

/// When a campaign runs.
#[derive(Debug, Clone, PartialEq)]
pub struct When {
    /// What qualifies a user.
    pub trigger: Trigger,
    /// Not before.
    pub start: Option<DateTime<Utc>>,
    /// Not after.
    pub end: Option<DateTime<Utc>>,
}

/// One message variant; texts are Liquid templates (already checked to parse).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Variant id (`A`, `B`, `C` by default).
    pub id: String,
    /// Title template.
    pub title: String,
    /// Body template.
    pub body: String,
    /// Subtitle template.
    pub subtitle: Option<String>,
    /// Deep link template.
    pub deep_link: Option<String>,
    /// Image URL template.
    pub image_url: Option<String>,
    /// Platform delivery options.
    pub push: PushOptions,
}

/// How urgently Android delivers (FCM `android.priority`) and iOS interrupts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Android high priority; iOS priority 10.
    Max,
    /// Android high priority; iOS priority 10.
    High,
    /// Android normal priority; iOS priority 10 (5 when silent).
    #[default]
    Default,
}

/// iOS interruption level (`aps.interruption-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterruptionLevel {
    /// Silent delivery to the notification list.
    Passive,
    /// The default.
    Active,
    /// Breaks through Focus.
    TimeSensitive,
    /// Plays a sound even when muted (needs an entitlement).
    Critical,
}

impl InterruptionLevel {
    /// The APNs value.
    pub fn as_apns(self) -> &'static str {
        match self {
            Self::Passive => "passive",
            Self::Active => "active",
            Self::TimeSensitive => "time-sensitive",
            Self::Critical => "critical",
        }
    }
}

/// One card of an iOS carousel.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct CarouselItem {
    /// Image URL.
    pub image_url: String,
    /// Caption.
    pub caption: Option<String>,
    /// Sub-caption.
    pub sub_caption: Option<String>,
    /// Link opened when the card is tapped.
    pub link: Option<String>,
}

/// An action button (iOS category action or Android custom action).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Action {
    /// Action identifier reported back on click.
    pub id: String,
    /// Button title.
    pub title: String,
    /// Deep link or URL it opens.
    pub link: Option<String>,
}

/// Platform delivery options of a message (read as the campaign file spells them, but for
/// `ttl` and `data`, which `parse.rs` reads).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct PushOptions {
    /// Sound name.
    pub sound: Option<String>,
    /// iOS badge count.
    pub badge: Option<u32>,
    /// iOS category.
    pub category: Option<String>,
    /// iOS thread id.
    pub thread_id: Option<String>,
    /// iOS `mutable-content` (rich media through a service extension).
    pub mutable_content: bool,
    /// Silent (background, `content-available`) push: no alert, priority 5.
    pub silent: bool,
    /// iOS interruption level.
    pub interruption_level: Option<InterruptionLevel>,
    /// Collapse id (APNs `apns-collapse-id`, at most 64 bytes; FCM collapse key).
    pub collapse_id: Option<String>,
    /// Time to live, milliseconds (APNs expiration, FCM ttl).
    #[serde(skip)]
    pub ttl_ms: Option<i64>,
    /// Delivery priority.
    pub priority: Priority,
    /// Android notification channel.
    pub channel_id: Option<String>,
    /// Android click action.
    pub click_action: Option<String>,
    /// iOS video URL.
    pub video_url: Option<String>,
    /// iOS carousel.
    pub carousel: Vec<CarouselItem>,
    /// Action buttons (at most 4).
    pub actions: Vec<Action>,
    /// External URL opened on tap (instead of a deep link).
    pub external_url: Option<String>,
    /// Custom key-value data.
    #[serde(skip)]
    pub data: std::collections::BTreeMap<String, String>,
}

/// How the A/B winner is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum WinnerBy {
    /// Most clicks (ties: the earlier variant).
    #[serde(rename = "clicks")]
    Clicks,
    /// Highest click-through rate, reported with a chi-squared p-value.
    #[serde(rename = "ctr")]
    ClickThroughRate,
}

/// Size of an A/B test population.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TestPopulation {
    /// A percentage of a scheduled run's reach.
    Percent(f64),
    /// An absolute number of users.
    Users(u64),
}

/// An A/B test. Triggered: alternate until `test_audience` users got a variant, wait
/// `evaluate_after` for clicks, then send the winner only. Scheduled: the test population of
/// each run is split equally between the variants; the rest of the run gets the winner after
/// the wait.
#[derive(Debug, Clone, PartialEq)]
pub struct AbTest {
    /// Users in the test (a percentage only for scheduled campaigns).
    pub test_audience: TestPopulation,
    /// Wait after the last test user before choosing, milliseconds.
    pub evaluate_after_ms: i64,
    /// Rule.
    pub winner_by: WinnerBy,
    /// Triggered: how long, once users wait, a user-stage partition's unused places are kept
    /// for its own users before they go to the waiting users (see `stage_campaign::ab`).
    pub share_wait_ms: i64,
}

/// The default [`AbTest::share_wait_ms`]: 10 minutes.
pub const DEFAULT_SHARE_WAIT_MS: i64 = 10 * 60_000;

/// How users are spread over a campaign's variants.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// One message.
    Single,
    /// Strict alternation, for ever.
    Alternate,
    /// An A/B test, then the winner.
    AbTest(AbTest),
    /// Fixed percentages per variant (adding up to 100), by weighted round robin.
    Split(Vec<u32>),
    /// Multi-message: the variant whose id equals the user's value of this profile property
    /// (e.g. `language` → variants `en`, `fr`), else the variant `default`, else the first.
    ByProperty(String),
}

/// Reach limits.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct Limits {
    /// Deliver to at most this many users over the campaign's life.
    pub total: Option<u64>,
    /// At most this many per day (campaign timezone).
    pub daily: Option<u64>,
    /// At most this many per scheduled run.
    pub per_run: Option<u64>,
    /// A run qualifying more users than this sends nothing.
    pub safety: Option<u64>,
}

/// What to do with a send due during do-not-disturb hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DndAction {
    /// Drop it (counted).
    Discard,
    /// Send it when the window ends.
    Delay,
}

/// Do-not-disturb hours in the user's timezone.
#[derive(Debug, Clone, PartialEq)]
pub struct Dnd {
    /// Window start (local time).
    pub start: NaiveTime,
    /// Window end (local time); before `start` means the window spans midnight.
    pub end: NaiveTime,
    /// Discard or delay.
    pub action: DndAction,
}

/// Conversion tracking.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    /// The conversion event.
    pub event: String,
    /// Window after a delivery, milliseconds.
    pub within_ms: i64,
}

/// "At most `max` notifications per `per`": sends beyond wait in a durable outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Notifications (users) per window.
    pub max: u64,
    /// Window length, milliseconds.
    pub per_ms: i64,
}

/// Campaign options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Delivery rate limit of the campaign.
    pub throttle: Option<Throttle>,
    /// Not subject to the app's global frequency caps.
    pub ignore_global_caps: bool,
    /// Do-not-disturb hours.
    pub dnd: Option<Dnd>,
    /// Percentage of qualifying users who receive it (deterministic per user).
    pub sample_percent: f64,
    /// Platforms targeted.
    pub platforms: Vec<Platform>,
    /// Conversion tracking.
    pub conversion: Option<Conversion>,
    /// Campaign timezone, if set: daily limits count days in it (else UTC), and DND hours use it
    /// for users without a timezone (before the app's).
    pub timezone: Option<Tz>,
    /// Campaign-stage tasks that share the campaign's users (1 to [`MAX_SHARDS`], default 1);
    /// see `docs/architecture.md` and [`crate::campaign::shards`].
    pub shards: u32,
}

/// Most shards a campaign may ask for.
pub const MAX_SHARDS: u32 = 64;

/// A validated campaign definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// Unique id.
    pub id: String,
    /// App it belongs to.
    pub app: String,
    /// Human name.
    pub name: String,
    /// Status.
    pub status: CampaignStatus,
    /// Target users.
    pub who: Filter,
    /// Trigger and window.
    pub when: When,
    /// Message variants (1 to 3).
    pub what: Vec<Message>,
    /// How users are spread over the variants.
    pub assignment: Assignment,
    /// Reach limits.
    pub limits: Limits,
    /// Options.
    pub options: Options,
    /// Profile properties the message templates reference (`{{ profile.first_name }}`), the
    /// only ones candidates carry to the campaign stage.
    pub profile_variables: BTreeSet<String>,
}

impl Campaign {
    /// Delivery in each user's timezone (a calendar schedule with `timezone: user`).
    pub fn user_local(&self) -> Option<UserLocal> {
        match &self.when.trigger {
            Trigger::Scheduled(schedule) => schedule.user_local,
            _ => None,
        }
    }
}

impl Message {
    /// Names of the profile properties the message's templates reference as `profile.<name>`.
    pub fn profile_variables(&self) -> BTreeSet<String> {
        let texts = [
            Some(&self.title),
            Some(&self.body),
            self.subtitle.as_ref(),
            self.deep_link.as_ref(),
            self.image_url.as_ref(),
        ];
        texts
            .into_iter()
            .flatten()
            .filter_map(|text| crate::render::MessageTemplate::compile(text).ok())
            .flat_map(|template| {
                template.profile_variables().map(str::to_string).collect::<Vec<_>>()
            })
            .collect()
    }
}
