//! One app's sending: its APNs and FCM clients, built from the configuration with errors that
//! name the app and the credential's source; its rate ceiling and in-flight bound, and per
//! provider the pause a `Retry-After` imposes and the credential gate ([`super::park`]).

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Mutex, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::{
    apns::{ApnsClient, ProviderToken},
    config::{ApnsAuth, AppConfig, ConfigError},
    fcm::{AccessTokens, FcmClient, ServiceAccount},
    h2::H2Pool,
    outcome::Attempt,
    park::CredentialGate,
    reason::{Reason, Refusal},
};
use crate::{
    model::{Platform, SendCommand},
    tls,
};

/// What one provider of an app shares: the `Retry-After` pause and the credential gate.
#[derive(Default)]
pub struct Lane {
    paused_until: Mutex<Option<Instant>>,
    /// Parks the provider's commands while its credential is refused.
    pub credential: CredentialGate,
}

/// The sending side of one app.
pub struct AppSender {
    /// App id.
    pub name: String,
    apns: Option<ApnsClient>,
    fcm: Option<FcmClient>,
    in_flight: Arc<Semaphore>,
    interval: Duration,
    next_slot: Mutex<Instant>,
    ios: Lane,
    android: Lane,
}

impl AppSender {
    /// Builds the app's clients, reading its credentials.
    pub fn build(
        name: &str,
        config: &AppConfig,
        request_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let fail = |field: &str, reason: String| ConfigError {
            context: format!("app {name}: {field}"),
            reason,
        };
        let ca = config.ca_file.as_deref();
        let tls = tls::client_config(ca, None).map_err(|e| fail("ca_file", e.to_string()))?;
        let apns = match &config.apns {
            None => None,
            Some(apns) => {
                let (token, apns_tls) = match &apns.auth {
                    ApnsAuth::Token { key, key_id, team_id, refresh } => {
                        let field = format!("apns key ({})", key.describe());
                        let pem = key.read().map_err(|reason| fail(&field, reason))?;
                        let token = ProviderToken::new(&pem, key_id, team_id, *refresh)
                            .map_err(|reason| fail(&field, reason))?;
                        (Some(token), Arc::clone(&tls))
                    }
                    ApnsAuth::Certificate { p12, password } => {
                        let field = format!("apns certificate ({})", p12.describe());
                        let der = p12.read().map_err(|reason| fail(&field, reason))?;
                        let password = match password {
                            Some(secret) => secret.read().map_err(|reason| {
                                let source = secret.describe();
                                fail(&format!("apns certificate password ({source})"), reason)
                            })?,
                            None => Vec::new(),
                        };
                        let password = String::from_utf8_lossy(&password).trim().to_string();
                        let identity = tls::read_pkcs12(&der, &password)
                            .map_err(|reason| fail(&field, reason))?;
                        let tls = tls::client_config(ca, Some(identity))
                            .map_err(|e| fail(&field, e.to_string()))?;
                        (None, tls)
                    }
                };
                let pool = H2Pool::new(&apns.endpoint, apns.connections, apns_tls, request_timeout)
                    .map_err(|reason| fail("apns.endpoint", reason))?;
                Some(ApnsClient::new(pool, &apns.topic, token))
            }
        };
        let fcm = match &config.fcm {
            None => None,
            Some(fcm) => {
                let field = format!("fcm service account ({})", fcm.service_account.describe());
                let json = fcm.service_account.read().map_err(|reason| fail(&field, reason))?;
                let account: ServiceAccount = serde_json::from_slice(&json)
                    .map_err(|e| fail(&field, format!("not a service-account JSON: {e}")))?;
                let project = account.project_id.clone();
                let token_pool =
                    H2Pool::new(&account.token_uri, 1, Arc::clone(&tls), request_timeout)
                        .map_err(|reason| fail(&format!("{field}: token_uri"), reason))?;
                let tokens = AccessTokens::new(account, token_pool)
                    .map_err(|reason| fail(&field, reason))?;
                let pool = H2Pool::new(&fcm.endpoint, fcm.connections, tls, request_timeout)
                    .map_err(|reason| fail("fcm.endpoint", reason))?;
                Some(FcmClient::new(pool, &project, Arc::new(tokens)))
            }
        };
        let now = Instant::now();
        Ok(Self {
            name: name.to_string(),
            apns,
            fcm,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            interval: Duration::from_secs_f64(1.0 / config.max_per_second),
            next_slot: Mutex::new(now),
            ios: Lane::default(),
            android: Lane::default(),
        })
    }

    /// A permit for one more request in flight, if the app is below its bound (the poll
    /// thread never waits for one).
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).try_acquire_owned().ok()
    }

    /// A permit for one more request in flight, waiting for one (a resumed parked command).
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.in_flight).acquire_owned().await.expect("the semaphore is never closed")
    }

    /// The lane of `platform`'s provider.
    pub fn lane(&self, platform: Platform) -> &Lane {
        match platform {
            Platform::Ios => &self.ios,
            Platform::Android => &self.android,
        }
    }

    /// Waits out the provider's `Retry-After` pause, then for the next slot under the rate
    /// ceiling; gives up (false) when `bound` (the command's retry deadline or expiry) comes
    /// first, so the caller re-checks the command instead of waiting past it.
    pub async fn wait_turn(&self, platform: Platform, bound: Instant) -> bool {
        let paused_until = *self.lane(platform).paused_until.lock().await;
        if let Some(until) = paused_until {
            if until > bound {
                tokio::time::sleep_until(bound).await;
                return false;
            }
            tokio::time::sleep_until(until).await;
        }
        let slot = {
            let mut next = self.next_slot.lock().await;
            let slot = (*next).max(Instant::now());
            if slot > bound {
                return false;
            }
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
        true
    }

    /// Holds the provider's sends for this app for `duration` (a `Retry-After`).
    pub async fn pause_for(&self, platform: Platform, duration: Duration) {
        let mut paused_until = self.lane(platform).paused_until.lock().await;
        let until = Instant::now() + duration;
        *paused_until = Some(paused_until.map_or(until, |current| current.max(until)));
    }

    /// One attempt at sending `command`.
    pub async fn attempt(&self, command: &SendCommand) -> Attempt {
        let not_configured = |provider: &str| {
            let text = format!("no {provider} configuration for the app");
            Attempt::Failed(Refusal::new(Reason::NotConfigured, text))
        };
        let result = match command.platform {
            Platform::Ios => match &self.apns {
                Some(apns) => apns.send(command).await,
                None => return not_configured("APNs"),
            },
            Platform::Android => match &self.fcm {
                Some(fcm) => fcm.send(command).await,
                None => return not_configured("FCM"),
            },
        };
        result.unwrap_or_else(|text| Attempt::Failed(Refusal::new(Reason::InvalidRequest, text)))
    }
}
