//! One command from its dedup check to its receipt in Kafka: every command ends in a final
//! receipt (accepted, token-invalid, failed with a reason, expired) or waits parked on its
//! app's credential; a panic while delivering fails it with the panic's message.

use std::{sync::Arc, time::Duration};

use rdkafka::producer::FutureRecord;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};

use super::{
    app::AppSender,
    dedup::Seen,
    intents::Intent,
    outcome::Attempt,
    park::Gate,
    reason::{Reason, Refusal},
    Shared,
};
use crate::model::{Platform, Receipt, ReceiptStatus, SchemaRegistry, SendCommand};

/// Parked commands of one provider of one app that release their in-flight permit; beyond it
/// they keep it, so the app's bound stops reading more commands instead of parking without
/// limit.
const MAX_PARKED_WITHOUT_PERMIT: i64 = 10_000;
/// Longest wait between two attempts at producing a receipt.
const MAX_RECEIPT_BACKOFF: Duration = Duration::from_secs(5);

/// A fault-injection hook for the end-to-end test of the panic path: the delivery of a command
/// to the device token in this environment variable panics (after its intent is written,
/// before the provider call). Unset in production.
pub const PANIC_ON_TOKEN: &str = "HERALD_SENDER_PANIC_ON_TOKEN";

/// Whether [`PANIC_ON_TOKEN`] names `token` (the variable is read once).
fn panic_injected(token: &str) -> bool {
    static INJECTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    INJECTED.get_or_init(|| std::env::var(PANIC_ON_TOKEN).ok()).as_deref() == Some(token)
}

/// Delivers `command`, read at `place` (partition, offset), and produces its receipt; a panic in
/// the delivery is caught and the command receipted `FAILED` (`sender_fault`, with the panic's
/// message). False when the command must stay unacknowledged (the dedup store failed).
pub(super) async fn run(
    shared: Arc<Shared>,
    command: SendCommand,
    place: (i32, i64),
    permit: Option<OwnedSemaphorePermit>,
) -> bool {
    match caught(handle(&shared, &command, place, permit)).await {
        Ok(finished) => finished,
        Err(text) => {
            tracing::error!(message = %command.message_id, %text, "delivery task failed");
            let refusal = Refusal::new(Reason::SenderFault, format!("panicked: {text}"));
            let receipt = receipt(&command, ReceiptStatus::Failed, Some(&refusal), None, None);
            count(&shared, &command, ReceiptStatus::Failed);
            settle(&shared, receipt).await
        }
    }
}

/// Runs `future`; a panic in it becomes `Err` with the panic's message. It runs on the caller's
/// task, so aborting that task (a revoked partition) stops it too.
async fn caught<T>(future: impl std::future::Future<Output = T>) -> Result<T, String> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into()))),
        }
    })
    .await
}

/// The dedup check, the delivery and the receipt of one command.
async fn handle(
    shared: &Shared,
    command: &SendCommand,
    place: (i32, i64),
    permit: Option<OwnedSemaphorePermit>,
) -> bool {
    let receipt = match shared.dedup.seen(&command.message_id) {
        Ok(Seen::Receipted) => {
            shared.metrics.dedup_hits.inc();
            return true;
        }
        Ok(Seen::Outcome(receipt)) => {
            shared.metrics.dedup_hits.inc();
            return produce(shared, *receipt).await;
        }
        Ok(Seen::Sending) => {
            shared.metrics.interrupted.inc();
            let text = "a sender stopped between this command's intent and its receipt; it may \
                        have been delivered and is not sent again";
            let refusal = Refusal::new(Reason::Interrupted, text);
            count(shared, command, ReceiptStatus::Failed);
            receipt(command, ReceiptStatus::Failed, Some(&refusal), None, None)
        }
        Ok(Seen::New) => match shared.apps.get(&command.app_id) {
            Some(app) => {
                intend(shared, &command.message_id, Intent::Sending).await;
                deliver(shared, app, command, place, permit).await
            }
            None => {
                let text = format!("unknown app {}", command.app_id);
                let refusal = Refusal::new(Reason::NotConfigured, text);
                count(shared, command, ReceiptStatus::Failed);
                receipt(command, ReceiptStatus::Failed, Some(&refusal), None, None)
            }
        },
        Err(error) => {
            tracing::error!(%error, "dedup store");
            return false;
        }
    };
    settle(shared, receipt).await
}

/// Records the final outcome, then produces the receipt.
async fn settle(shared: &Shared, receipt: Receipt) -> bool {
    if let Err(error) = shared.dedup.outcome(&receipt) {
        tracing::error!(%error, "dedup store");
    }
    produce(shared, receipt).await
}

/// Writes `intent` to the intents log, then the local store.
async fn intend(shared: &Shared, message_id: &str, intent: Intent) {
    shared.intents.write(message_id, intent).await;
    let stored = match intent {
        Intent::Sending => shared.dedup.sending(message_id),
        Intent::Parked => shared.dedup.forget(message_id),
    };
    if let Err(error) = stored {
        tracing::error!(%error, "dedup store");
    }
}

/// Produces `receipt`, retrying with backoff until Kafka confirms it, then remembers it.
async fn produce(shared: &Shared, receipt: Receipt) -> bool {
    let bytes = match SchemaRegistry::builtin().encode(&receipt) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "encoding a receipt");
            return false;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let record = FutureRecord::to(&shared.receipts_topic).key(&receipt.user_id).payload(&bytes);
        match shared.producer.send(record, Duration::from_secs(60)).await {
            Ok(_) => break,
            Err((error, _)) => {
                shared.metrics.receipt_retries.inc();
                tracing::warn!(%error, message = %receipt.message_id, "producing a receipt failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RECEIPT_BACKOFF);
            }
        }
    }
    if let Err(error) = shared.dedup.receipted(&receipt.message_id) {
        tracing::error!(%error, "dedup store");
    }
    true
}

fn provider(platform: Platform) -> &'static str {
    match platform {
        Platform::Ios => "apns",
        Platform::Android => "fcm",
    }
}

fn count(shared: &Shared, command: &SendCommand, status: ReceiptStatus) {
    let outcome = format!("{status:?}").to_lowercase();
    shared.metrics.sends.with_label_values(&[provider(command.platform), &outcome]).inc();
}

/// Attempts until a final outcome: success, a dead token, a permanent error, expiry (checked
/// before every attempt), or the retry deadline (a `Retry-After` beyond it ends the retries at
/// once). A credential refused after it was renewed parks the command (see [`super::park`]).
async fn deliver(
    shared: &Shared,
    app: &AppSender,
    command: &SendCommand,
    place: (i32, i64),
    mut permit: Option<OwnedSemaphorePermit>,
) -> Receipt {
    assert!(!panic_injected(&command.token), "injected panic ({PANIC_ON_TOKEN})");
    let provider = provider(command.platform);
    let lane = app.lane(command.platform);
    let started = Instant::now();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let expires = command.expires_at_ms.map(|at| expiry(started, at, now_ms));
    let mut deadline = started + shared.config.retry_deadline;
    let mut refreshed = false;
    let mut probing = false;
    let mut backoff = Duration::from_millis(100);
    let mut last: Option<Refusal> = None;
    let finish = |status: ReceiptStatus, refusal: Option<&Refusal>, provider_id: Option<String>| {
        count(shared, command, status);
        let latency = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        receipt(command, status, refusal, provider_id, Some(latency))
    };
    let expired = || {
        let refusal = Refusal::new(Reason::Expired, "expired before delivery");
        finish(ReceiptStatus::Expired, Some(&refusal), None)
    };
    let exhausted = |refusal: &Refusal| {
        let text = format!("retries exhausted: {}", refusal.provider_text);
        finish(ReceiptStatus::Failed, Some(&Refusal::new(refusal.reason, text)), None)
    };
    loop {
        if !probing && lane.credential.parked_reason().is_some() {
            match park(shared, app, command, place, &mut permit, expires).await {
                Gate::Open => {}
                Gate::Probe => probing = true,
                Gate::Bound => return expired(),
            }
            refreshed = false;
            deadline = Instant::now() + shared.config.retry_deadline;
        }
        let bound = expires.map_or(deadline, |expires| expires.min(deadline));
        if !app.wait_turn(command.platform, bound).await || Instant::now() >= bound {
            if expires.is_some_and(|expires| Instant::now() >= expires) {
                return expired();
            }
            // The deadline passed waiting out a `Retry-After` (this command's or another's).
            let waited = Refusal::new(Reason::RateLimited, "waited for the provider's Retry-After");
            return exhausted(last.as_ref().unwrap_or(&waited));
        }
        if permit.is_none() {
            permit = Some(app.permit().await);
        }
        let attempt_started = Instant::now();
        let attempt = app.attempt(command).await;
        shared
            .metrics
            .latency
            .with_label_values(&[provider])
            .observe(attempt_started.elapsed().as_secs_f64());
        if probing && !matches!(attempt, Attempt::Credentials(_)) {
            probing = false;
            if lane.credential.open() {
                tracing::info!(app = %app.name, provider, "credential accepted again: parked commands resume");
            }
        }
        match attempt {
            Attempt::Accepted { provider_id } => {
                return finish(ReceiptStatus::Accepted, None, provider_id)
            }
            Attempt::TokenInvalid(refusal) => {
                return finish(ReceiptStatus::TokenInvalid, Some(&refusal), None)
            }
            Attempt::Failed(refusal) => {
                if refusal.reason == Reason::UnknownOutcome {
                    shared.metrics.unknown_outcomes.with_label_values(&[provider]).inc();
                }
                return finish(ReceiptStatus::Failed, Some(&refusal), None);
            }
            Attempt::Credentials(refusal) if !refreshed => {
                // The client discarded the refused credential; the next attempt renews it.
                refreshed = true;
                shared.metrics.credential_refreshes.with_label_values(&[provider]).inc();
                tracing::warn!(app = %app.name, provider, reason = %refusal, "credential refused; renewing it");
            }
            Attempt::Credentials(refusal) => {
                // Refused again after renewal: the provider's commands park (this one at the
                // top of the loop), one probing the credential at a time.
                let text = refusal.to_string();
                if probing {
                    probing = false;
                    lane.credential.probe_failed(&text);
                } else if lane.credential.park(&text) {
                    tracing::error!(app = %app.name, provider, reason = %text, "credential refused after renewal: this provider's commands are parked and the credential retried with backoff");
                }
            }
            Attempt::Retry { refusal, after } => {
                shared.metrics.retries.with_label_values(&[provider]).inc();
                let jitter =
                    Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
                let delay = after.unwrap_or(backoff + jitter);
                if let Some(after) = after {
                    app.pause_for(command.platform, after).await;
                }
                if Instant::now() + delay > deadline {
                    return exhausted(&refusal);
                }
                if expires.is_some_and(|expires| Instant::now() + delay >= expires) {
                    return expired();
                }
                last = Some(refusal);
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Waits while `command`'s provider is parked on its credential: its intent says `parked`
/// (never delivered: a next owner sends it), its permit is released (up to
/// [`MAX_PARKED_WITHOUT_PERMIT`] commands), it counts in the `parked` gauge, and its place is
/// marked parked (a drain does not wait for it). Returns how it leaves: the gate opened, it
/// probes, or it expired.
async fn park(
    shared: &Shared,
    app: &AppSender,
    command: &SendCommand,
    place: (i32, i64),
    permit: &mut Option<OwnedSemaphorePermit>,
    expires: Option<Instant>,
) -> Gate {
    intend(shared, &command.message_id, Intent::Parked).await;
    let gauge = shared.metrics.parked.with_label_values(&[&app.name, provider(command.platform)]);
    if gauge.get() < MAX_PARKED_WITHOUT_PERMIT {
        *permit = None;
    }
    gauge.inc();
    shared.tasks.lock().expect("tasks lock").set_parked(place, true);
    let gate = app.lane(command.platform).credential.wait(expires).await;
    shared.tasks.lock().expect("tasks lock").set_parked(place, false);
    gauge.dec();
    if gate != Gate::Bound {
        intend(shared, &command.message_id, Intent::Sending).await;
    }
    gate
}

/// The receipt of `command`: its outcome, and for a refusal Herald's reason and the provider's
/// text.
fn receipt(
    command: &SendCommand,
    status: ReceiptStatus,
    refusal: Option<&Refusal>,
    provider_id: Option<String>,
    latency_ms: Option<i64>,
) -> Receipt {
    Receipt {
        message_id: command.message_id.clone(),
        campaign_id: command.campaign_id.clone(),
        variant_id: command.variant_id.clone(),
        app_id: command.app_id.clone(),
        user_id: command.user_id.clone(),
        device_id: command.device_id.clone(),
        token: command.token.clone(),
        status,
        reason: refusal.map(|r| r.reason.as_str().to_string()),
        provider_id,
        latency_ms,
        timestamp_ms: chrono::Utc::now().timestamp_millis(),
        provider_reason: refusal.map(|r| r.provider_text.clone()),
    }
}

/// Furthest a command's expiry is looked ahead: ten years (the longest `ttl` a campaign takes).
const FURTHEST_EXPIRY: Duration = Duration::from_secs(3_660 * 86_400);

/// When a command expiring at `expires_at_ms` (epoch ms, as read from the topic) stops being
/// worth sending, on the clock that read `started` when the wall clock read `now_ms`: at once
/// for a past time (`i64::MIN` too), at most [`FURTHEST_EXPIRY`] ahead, never overflowing.
fn expiry(started: Instant, expires_at_ms: i64, now_ms: i64) -> Instant {
    let left = u64::try_from(expires_at_ms.saturating_sub(now_ms)).unwrap_or(0);
    started + Duration::from_millis(left).min(FURTHEST_EXPIRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_of_i64_min_or_max_is_now_or_ten_years_ahead_never_an_overflow() {
        let (started, now) = (Instant::now(), 1_795_000_000_000);
        assert_eq!(expiry(started, now + 5_000, now), started + Duration::from_secs(5));
        assert_eq!(expiry(started, i64::MIN, now), started);
        assert_eq!(expiry(started, i64::MAX, now), started + FURTHEST_EXPIRY);
        assert_eq!(expiry(started, i64::MAX, i64::MIN), started + FURTHEST_EXPIRY);
    }

    /// Issue 12: a panic in a delivery task left its command unfinished, pinning its
    /// partition's committed offset forever. The task is now caught with the panic's message.
    #[tokio::test]
    async fn a_panicking_delivery_is_caught_with_its_message() {
        let panicked = caught(async {
            let token: Option<&str> = std::hint::black_box(None);
            token.expect("a token")
        })
        .await;
        assert_eq!(panicked, Err("a token".to_string()));
        let formatted = caught(async { panic!("device {} is odd", 7) }).await;
        assert_eq!(formatted, Err::<(), _>("device 7 is odd".to_string()));
        assert_eq!(caught(async { 42 }).await, Ok(42));
    }
}
