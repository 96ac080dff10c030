//! The credential gate of one provider of one app. A credential refused again after it was
//! renewed parks the provider: its commands wait here (not failed, no permit held, their
//! intent `parked`) while one of them at a time probes the provider with a fresh credential,
//! with backoff from one second doubling to [`MAX_PROBE_BACKOFF`]. The first probe that is not
//! refused opens the gate and every parked command resumes. The app's other provider is not
//! affected.

use std::{sync::Mutex, time::Duration};

use tokio::{sync::Notify, time::Instant};

/// Longest wait between two credential probes.
pub const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(30);
/// First wait between two credential probes.
const FIRST_PROBE_BACKOFF: Duration = Duration::from_secs(1);

/// Parks a provider's commands while its credential is refused.
#[derive(Default)]
pub struct CredentialGate {
    parked: Mutex<Option<Parked>>,
    opened: Notify,
}

#[derive(Debug)]
struct Parked {
    reason: String,
    next_probe: Instant,
    backoff: Duration,
    probing: bool,
}

/// What a parked command does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The credential works (again): attempt.
    Open,
    /// This command probes the credential: attempt, then [`CredentialGate::open`] or
    /// [`CredentialGate::probe_failed`].
    Probe,
    /// The caller's bound (its expiry) came first.
    Bound,
}

impl CredentialGate {
    /// Parks the provider after a refusal (`reason`); true if it was open.
    pub fn park(&self, reason: &str) -> bool {
        let mut parked = self.parked.lock().expect("gate lock");
        if parked.is_some() {
            return false;
        }
        *parked = Some(Parked {
            reason: reason.to_string(),
            next_probe: Instant::now() + FIRST_PROBE_BACKOFF,
            backoff: FIRST_PROBE_BACKOFF,
            probing: false,
        });
        true
    }

    /// Why the provider is parked, if it is.
    pub fn parked_reason(&self) -> Option<String> {
        self.parked.lock().expect("gate lock").as_ref().map(|p| p.reason.clone())
    }

    /// Waits until the gate opens, this caller is chosen to probe, or `bound` passes.
    pub async fn wait(&self, bound: Option<Instant>) -> Gate {
        loop {
            let opened = self.opened.notified();
            let wake = {
                let mut parked = self.parked.lock().expect("gate lock");
                let Some(state) = parked.as_mut() else { return Gate::Open };
                let now = Instant::now();
                if !state.probing && now >= state.next_probe {
                    state.probing = true;
                    return Gate::Probe;
                }
                if state.probing {
                    now + FIRST_PROBE_BACKOFF
                } else {
                    state.next_probe
                }
            };
            if bound.is_some_and(|bound| bound <= Instant::now()) {
                return Gate::Bound;
            }
            let wake = bound.map_or(wake, |bound| wake.min(bound));
            tokio::select! {
                () = opened => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// A probe was refused again: the next one waits twice as long (at most
    /// [`MAX_PROBE_BACKOFF`]).
    pub fn probe_failed(&self, reason: &str) {
        if let Some(state) = self.parked.lock().expect("gate lock").as_mut() {
            state.backoff = (state.backoff * 2).min(MAX_PROBE_BACKOFF);
            state.next_probe = Instant::now() + state.backoff;
            state.probing = false;
            state.reason = reason.to_string();
        }
    }

    /// The credential works: every parked command resumes. True if the gate was parked.
    pub fn open(&self) -> bool {
        let was = self.parked.lock().expect("gate lock").take().is_some();
        if was {
            self.opened.notify_waiters();
        }
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_parked_command_probes_at_a_time_and_an_open_gate_releases_all() {
        let gate = std::sync::Arc::new(CredentialGate::default());
        assert_eq!(gate.wait(None).await, Gate::Open);
        assert!(gate.park("InvalidProviderToken"));
        assert!(!gate.park("again"), "parked once");
        assert_eq!(gate.wait(None).await, Gate::Probe, "after the first backoff");
        let waiter = {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move { gate.wait(None).await })
        };
        gate.probe_failed("still refused");
        assert_eq!(gate.parked_reason().as_deref(), Some("still refused"));
        assert_eq!(waiter.await.unwrap(), Gate::Probe, "the next probe, after a longer backoff");
        let bound = Instant::now() + Duration::from_millis(10);
        assert_eq!(gate.wait(Some(bound)).await, Gate::Bound, "one probe at a time");
        let waiter = {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move { gate.wait(None).await })
        };
        tokio::task::yield_now().await;
        assert!(gate.open());
        assert_eq!(waiter.await.unwrap(), Gate::Open);
        assert_eq!(gate.parked_reason(), None);
    }
}
