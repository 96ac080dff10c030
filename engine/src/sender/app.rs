//! One app's sending: its APNs and FCM clients, built from the configuration with errors that
//! name the app and the credential's source; its rate ceiling, in-flight bound and the pause a
//! `Retry-After` imposes on all its sends.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

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
    reason::{Reason, Refusal},
};
use crate::{
    model::{Platform, SendCommand},
    tls,
};

/// The sending side of one app.
pub struct AppSender {
    /// App id.
    pub name: String,
    apns: Option<ApnsClient>,
    fcm: Option<FcmClient>,
    in_flight: Arc<Semaphore>,
    interval: Duration,
    next_slot: Mutex<Instant>,
    paused_until: Mutex<Instant>,
    stopped: AtomicBool,
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
            paused_until: Mutex::new(now),
            stopped: AtomicBool::new(false),
        })
    }

    /// A permit for one more request in flight; waits while the app is at its bound.
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.in_flight).acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Waits out a `Retry-After` pause, then for the next slot under the rate ceiling.
    pub async fn wait_turn(&self) {
        let paused_until = *self.paused_until.lock().await;
        tokio::time::sleep_until(paused_until).await;
        let slot = {
            let mut next = self.next_slot.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Holds all the app's sends for `duration` (a `Retry-After`).
    pub async fn pause_for(&self, duration: Duration) {
        let mut paused_until = self.paused_until.lock().await;
        *paused_until = (*paused_until).max(Instant::now() + duration);
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

    /// Drops the platform's cached credential so the next attempt signs or fetches a new one.
    pub async fn refresh_credentials(&self, platform: Platform) {
        match platform {
            Platform::Ios => {
                if let Some(token) = self.apns.as_ref().and_then(|apns| apns.token.as_ref()) {
                    token.invalidate();
                }
            }
            Platform::Android => {
                if let Some(fcm) = &self.fcm {
                    fcm.tokens.invalidate().await;
                }
            }
        }
    }

    /// Stops the app's sending after a credential was refused twice; its commands stay
    /// unacknowledged (not failed) until the sender restarts with a working credential.
    pub fn stop(&self, reason: &str) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            tracing::error!(app = %self.name, %reason, "credential refused after a refresh: sending for this app stopped; fix the credential and restart the sender");
        }
    }

    /// Whether [`AppSender::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}
