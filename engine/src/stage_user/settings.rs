//! Per-app settings of the user stage: global frequency caps, minimum gap, default timezone.

use std::collections::HashMap;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::campaign::{Throttle, ValidationErrors};

/// Caps and defaults of one app.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSettings {
    /// At most this many pushes per user per local day (campaigns may opt out).
    pub max_per_day: Option<u32>,
    /// At most this many per user per local ISO week.
    pub max_per_week: Option<u32>,
    /// At least this long between two pushes to the same user, milliseconds.
    pub min_gap_ms: Option<i64>,
    /// Timezone of users who have none.
    pub timezone: Tz,
    /// At most this many notifications per interval across all the app's campaigns.
    pub throttle: Option<Throttle>,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            max_per_day: None,
            max_per_week: None,
            min_gap_ms: None,
            timezone: chrono_tz::UTC,
            throttle: None,
        }
    }
}

/// Settings of every app; apps not listed get [`AppSettings::default`] (no caps, UTC).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    apps: HashMap<String, AppSettings>,
    fallback: AppSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    apps: HashMap<String, RawApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    #[serde(default)]
    caps: RawCaps,
    min_gap: Option<String>,
    timezone: Option<String>,
    throttle: Option<RawThrottle>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    max: u64,
    per: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCaps {
    per_day: Option<u32>,
    per_week: Option<u32>,
}

impl Settings {
    /// Parses an app settings file:
    ///
    /// ```yaml
    /// apps:
    ///   shop:
    ///     caps: { per_day: 2, per_week: 5 }
    ///     min_gap: 1h
    ///     timezone: America/Los_Angeles
    ///     throttle: { max: 100000, per: 15m }   # across all the app's campaigns
    /// ```
    pub fn parse(text: &str, source: &str) -> Result<Self, ValidationErrors> {
        let error = |path: String, reason: String| ValidationErrors {
            source: source.to_string(),
            errors: vec![crate::campaign::FieldError { path, reason }],
        };
        let raw: RawFile =
            serde_norway::from_str(text).map_err(|e| error("(document)".into(), e.to_string()))?;
        let mut apps = HashMap::new();
        for (name, app) in raw.apps {
            let min_gap_ms = match &app.min_gap {
                None => None,
                Some(text) => Some(
                    crate::campaign::parse_duration(text)
                        .map_err(|reason| error(format!("apps.{name}.min_gap"), reason))?,
                ),
            };
            let timezone = match &app.timezone {
                None => chrono_tz::UTC,
                Some(tz) => tz.parse().map_err(|_| {
                    error(format!("apps.{name}.timezone"), format!("unknown timezone {tz:?}"))
                })?,
            };
            let throttle = match &app.throttle {
                None => None,
                Some(raw) => {
                    let path = format!("apps.{name}.throttle");
                    let per_ms = crate::campaign::parse_duration(&raw.per)
                        .map_err(|reason| error(format!("{path}.per"), reason))?;
                    if raw.max == 0 || per_ms <= 0 {
                        return Err(error(path, "max and per must be positive".into()));
                    }
                    Some(Throttle { max: raw.max, per_ms })
                }
            };
            let settings = AppSettings {
                max_per_day: app.caps.per_day,
                max_per_week: app.caps.per_week,
                min_gap_ms,
                timezone,
                throttle,
            };
            apps.insert(name, settings);
        }
        Ok(Self { apps, fallback: AppSettings::default() })
    }

    /// Settings of `app`.
    pub fn app(&self, app: &str) -> &AppSettings {
        self.apps.get(app).unwrap_or(&self.fallback)
    }
}
