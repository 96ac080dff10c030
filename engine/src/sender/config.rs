//! Sender configuration: per app, the APNs and FCM credentials (from files or environment
//! variables, never logged), endpoints and extra CA roots (so tests and benchmarks reach the
//! simulator), connection counts and limits.
//!
//! ```yaml
//! apps:
//!   shop:
//!     apns:
//!       topic: com.example.shop          # bundle id
//!       key_file: /etc/herald/apns.p8    # or key_env: SHOP_APNS_KEY (the PEM text)
//!       key_id: ABC123DEFG
//!       team_id: DEF123GHIJ
//!       # or a client certificate: certificate_file: /etc/herald/apns.p12 (or
//!       # certificate_env), certificate_password_file (or certificate_password_env)
//!       endpoint: https://api.push.apple.com
//!       connections: 2
//!       token_refresh: 50m               # 20m to 60m
//!     fcm:
//!       service_account_file: /etc/herald/fcm.json   # or service_account_env
//!       endpoint: https://fcm.googleapis.com
//!       connections: 2
//!     ca_file: /etc/herald/extra-ca.pem  # extra trust roots (the simulator's certificate)
//!     max_per_second: 5000
//!     max_in_flight: 500
//! retry_deadline: 60s
//! request_timeout: 10s
//! dedup_window: 24h
//! ```

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::campaign::parse_duration;

/// A configuration problem, naming the app and the file or field.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {reason}")]
pub struct ConfigError {
    /// Where: `app shop: apns.key_file /etc/herald/apns.p8`.
    pub context: String,
    /// What is wrong.
    pub reason: String,
}

fn error(context: impl Into<String>, reason: impl ToString) -> ConfigError {
    ConfigError { context: context.into(), reason: reason.to_string() }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A file's content.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
}

impl Secret {
    fn from_fields(
        file: Option<PathBuf>,
        env: Option<String>,
        context: &str,
    ) -> Result<Self, ConfigError> {
        match (file, env) {
            (Some(file), None) => Ok(Self::File(file)),
            (None, Some(env)) => Ok(Self::Env(env)),
            _ => Err(error(context, "give exactly one of the _file and _env fields")),
        }
    }

    /// Where it comes from, for error messages (never the value).
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("file {}", path.display()),
            Self::Env(name) => format!("environment variable {name}"),
        }
    }

    /// Reads the secret.
    pub fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::File(path) => std::fs::read(path).map_err(|e| e.to_string()),
            Self::Env(name) => {
                std::env::var(name).map(String::into_bytes).map_err(|_| "is not set".to_string())
            }
        }
    }
}

/// How an app authenticates to APNs.
#[derive(Debug, Clone)]
pub enum ApnsAuth {
    /// Provider tokens signed with a `.p8` key.
    Token {
        /// The signing key.
        key: Secret,
        /// Key id (`kid`).
        key_id: String,
        /// Team id (`iss`).
        team_id: String,
        /// Token age at which a new one is signed.
        refresh: Duration,
    },
    /// A client certificate with its key, in PKCS#12.
    Certificate {
        /// The `.p12` file.
        p12: Secret,
        /// Its password (none: empty).
        password: Option<Secret>,
    },
}

/// APNs settings of an app.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// Bundle id, sent as `apns-topic`.
    pub topic: String,
    /// Provider token or certificate.
    pub auth: ApnsAuth,
    /// Provider API origin.
    pub endpoint: String,
    /// HTTP/2 connections.
    pub connections: usize,
}

/// FCM settings of an app.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// The service-account JSON.
    pub service_account: Secret,
    /// FCM origin.
    pub endpoint: String,
    /// HTTP/2 connections.
    pub connections: usize,
}

/// One app's sending settings.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// APNs, if the app has iOS users.
    pub apns: Option<ApnsConfig>,
    /// FCM, if the app has Android users.
    pub fcm: Option<FcmConfig>,
    /// Extra trust roots.
    pub ca_file: Option<PathBuf>,
    /// Send rate ceiling.
    pub max_per_second: f64,
    /// Requests in flight at most.
    pub max_in_flight: usize,
}

/// The sender's configuration.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Apps by id.
    pub apps: BTreeMap<String, AppConfig>,
    /// A transient failure is retried until this long after the first attempt.
    pub retry_deadline: Duration,
    /// One request's timeout.
    pub request_timeout: Duration,
    /// How long a message id is remembered to suppress duplicates.
    pub dedup_window: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    apps: BTreeMap<String, RawApp>,
    retry_deadline: Option<String>,
    request_timeout: Option<String>,
    dedup_window: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    apns: Option<RawApns>,
    fcm: Option<RawFcm>,
    ca_file: Option<PathBuf>,
    max_per_second: Option<f64>,
    max_in_flight: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApns {
    topic: String,
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    key_id: Option<String>,
    team_id: Option<String>,
    certificate_file: Option<PathBuf>,
    certificate_env: Option<String>,
    certificate_password_file: Option<PathBuf>,
    certificate_password_env: Option<String>,
    endpoint: Option<String>,
    connections: Option<usize>,
    token_refresh: Option<String>,
}

impl RawApns {
    /// A provider-token key with its ids, or a certificate; never both.
    fn auth(
        &self,
        refresh: Duration,
        context: &dyn Fn(&str) -> String,
    ) -> Result<ApnsAuth, ConfigError> {
        let key = self.key_file.is_some() || self.key_env.is_some();
        let certificate = self.certificate_file.is_some() || self.certificate_env.is_some();
        match (key, certificate, &self.key_id, &self.team_id) {
            (true, false, Some(key_id), Some(team_id)) => Ok(ApnsAuth::Token {
                key: Secret::from_fields(
                    self.key_file.clone(),
                    self.key_env.clone(),
                    &context("apns.key"),
                )?,
                key_id: key_id.clone(),
                team_id: team_id.clone(),
                refresh,
            }),
            (false, true, None, None) => {
                let password =
                    match (&self.certificate_password_file, &self.certificate_password_env) {
                        (None, None) => None,
                        (file, env) => Some(Secret::from_fields(
                            file.clone(),
                            env.clone(),
                            &context("apns.certificate_password"),
                        )?),
                    };
                let p12 = Secret::from_fields(
                    self.certificate_file.clone(),
                    self.certificate_env.clone(),
                    &context("apns.certificate"),
                )?;
                Ok(ApnsAuth::Certificate { p12, password })
            }
            _ => Err(error(
                context("apns"),
                "give key_file (or key_env) with key_id and team_id, or certificate_file (or \
                 certificate_env), not both",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFcm {
    service_account_file: Option<PathBuf>,
    service_account_env: Option<String>,
    endpoint: Option<String>,
    connections: Option<usize>,
}

fn duration(text: Option<&str>, default: Duration, context: &str) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(text) => parse_duration(text)
            .map(|ms| Duration::from_millis(ms.max(0) as u64))
            .map_err(|reason| error(context, reason)),
    }
}

impl SenderConfig {
    /// Parses a configuration file's text (`source` names it in errors).
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_norway::from_str(text).map_err(|e| error(source, e))?;
        let mut apps = BTreeMap::new();
        for (name, app) in raw.apps {
            let context = |field: &str| format!("{source}: app {name}: {field}");
            let apns = match app.apns {
                None => None,
                Some(apns) => {
                    let token_refresh = duration(
                        apns.token_refresh.as_deref(),
                        Duration::from_secs(50 * 60),
                        &context("apns.token_refresh"),
                    )?;
                    if !(Duration::from_secs(20 * 60)..=Duration::from_secs(60 * 60))
                        .contains(&token_refresh)
                    {
                        return Err(error(context("apns.token_refresh"), "must be 20m to 60m"));
                    }
                    let auth = apns.auth(token_refresh, &context)?;
                    Some(ApnsConfig {
                        topic: apns.topic,
                        auth,
                        endpoint: apns
                            .endpoint
                            .unwrap_or_else(|| "https://api.push.apple.com".into()),
                        connections: apns.connections.unwrap_or(2),
                    })
                }
            };
            let fcm = match app.fcm {
                None => None,
                Some(fcm) => Some(FcmConfig {
                    service_account: Secret::from_fields(
                        fcm.service_account_file,
                        fcm.service_account_env,
                        &context("fcm.service_account"),
                    )?,
                    endpoint: fcm.endpoint.unwrap_or_else(|| "https://fcm.googleapis.com".into()),
                    connections: fcm.connections.unwrap_or(2),
                }),
            };
            let max_per_second = app.max_per_second.unwrap_or(5_000.0);
            if max_per_second <= 0.0 {
                return Err(error(context("max_per_second"), "must be positive"));
            }
            apps.insert(
                name.clone(),
                AppConfig {
                    apns,
                    fcm,
                    ca_file: app.ca_file,
                    max_per_second,
                    max_in_flight: app.max_in_flight.unwrap_or(500).max(1),
                },
            );
        }
        Ok(Self {
            apps,
            retry_deadline: duration(
                raw.retry_deadline.as_deref(),
                Duration::from_secs(60),
                &format!("{source}: retry_deadline"),
            )?,
            request_timeout: duration(
                raw.request_timeout.as_deref(),
                Duration::from_secs(10),
                &format!("{source}: request_timeout"),
            )?,
            dedup_window: duration(
                raw.dedup_window.as_deref(),
                Duration::from_secs(24 * 3600),
                &format!("{source}: dedup_window"),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "apps:\n  shop:\n    apns: { topic: t, key_file: k.p8, key_id: K, team_id: T }\n    fcm: { service_account_env: FCM_JSON }\n";

    #[test]
    fn apns_takes_a_provider_token_key_or_a_certificate() {
        let config = SenderConfig::parse(TOKEN, "senders.yaml").unwrap();
        let shop = &config.apps["shop"];
        assert!(matches!(shop.apns.as_ref().unwrap().auth, ApnsAuth::Token { .. }));
        assert_eq!(shop.fcm.as_ref().unwrap().service_account, Secret::Env("FCM_JSON".into()));
        let certificate = "apps:\n  shop:\n    apns: { topic: t, certificate_file: c.p12, certificate_password_env: P }\n";
        let config = SenderConfig::parse(certificate, "senders.yaml").unwrap();
        let ApnsAuth::Certificate { p12, password } =
            &config.apps["shop"].apns.as_ref().unwrap().auth
        else {
            panic!("certificate")
        };
        assert_eq!(
            (p12, password),
            (&Secret::File("c.p12".into()), &Some(Secret::Env("P".into())))
        );
    }

    #[test]
    fn errors_name_the_file_the_app_and_the_field() {
        let both = "apps:\n  shop:\n    apns: { topic: t, key_file: k.p8, key_id: K, team_id: T, certificate_file: c.p12 }\n";
        let error = SenderConfig::parse(both, "senders.yaml").unwrap_err().to_string();
        assert!(error.starts_with("senders.yaml: app shop: apns:"), "{error}");
        let refresh = TOKEN.replace("team_id: T", "team_id: T, token_refresh: 5m");
        let error = SenderConfig::parse(&refresh, "senders.yaml").unwrap_err().to_string();
        assert!(error.contains("apns.token_refresh: must be 20m to 60m"), "{error}");
    }
}
