//! Faults the simulator injects: dead tokens (the same tokens every time, chosen by a hash of
//! the token), transient errors drawn per request, `Retry-After` on 429, and latency.

use std::time::Duration;

/// Error rates (0 to 1) and latency.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Share of tokens that are unregistered (APNs 410 `Unregistered`, FCM `UNREGISTERED`).
    pub unregistered: f64,
    /// Share of tokens that are malformed (APNs `BadDeviceToken`, FCM `INVALID_ARGUMENT`).
    pub bad_device_token: f64,
    /// Share of requests answered 503.
    pub unavailable: f64,
    /// Share of requests answered 500.
    pub internal: f64,
    /// Share of requests answered 429 with `Retry-After`.
    pub too_many_requests: f64,
    /// The `Retry-After` of 429 answers, seconds.
    pub retry_after_secs: u64,
    /// Latency added to every request: uniformly between the two, milliseconds.
    pub latency_ms: (u64, u64),
    /// Share of requests on which the connection is dropped without an answer.
    pub drop_connection: f64,
    /// Share of accepted requests whose answer is lost: delivered, then the connection is
    /// dropped before the answer (the client cannot know whether it arrived).
    pub lose_answer: f64,
    /// A connection is sent GOAWAY after this many requests (0: never).
    pub goaway_after: u64,
}

/// What the simulator does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Unregistered,
    BadDeviceToken,
    Unavailable,
    Internal,
    TooManyRequests,
}

impl Faults {
    /// Sets one fault from `name=value` (`unregistered=0.01`, `unavailable=0.05`,
    /// `internal=0.01`, `too_many_requests=0.02`, `bad_device_token=0.01`, `retry_after=2`,
    /// `latency_ms=5..20`, `drop_connection=0.01`, `lose_answer=0.01`, `goaway_after=1000`).
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (name, value) =
            spec.split_once('=').ok_or_else(|| format!("fault {spec:?}: expected name=value"))?;
        let rate = || match value.parse::<f64>() {
            Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
            _ => Err(format!("fault {name}: {value:?} is not a rate between 0 and 1")),
        };
        match name {
            "unregistered" => self.unregistered = rate()?,
            "bad_device_token" => self.bad_device_token = rate()?,
            "unavailable" => self.unavailable = rate()?,
            "internal" => self.internal = rate()?,
            "too_many_requests" => self.too_many_requests = rate()?,
            "drop_connection" => self.drop_connection = rate()?,
            "lose_answer" => self.lose_answer = rate()?,
            "goaway_after" => {
                self.goaway_after =
                    value.parse().map_err(|_| format!("goaway_after: {value:?} is not a count"))?
            }
            "retry_after" => {
                self.retry_after_secs =
                    value.parse().map_err(|_| format!("retry_after: {value:?} is not seconds"))?
            }
            "latency_ms" => {
                let (low, high) = value.split_once("..").unwrap_or((value, value));
                let parse = |v: &str| {
                    v.parse::<u64>().map_err(|_| format!("latency_ms: {value:?} is not MIN..MAX"))
                };
                self.latency_ms = (parse(low)?, parse(high)?.max(parse(low)?));
            }
            other => return Err(format!("unknown fault {other:?}")),
        }
        Ok(())
    }

    /// The fault for a request to `token`, if any: dead tokens first (stable per token), then
    /// transient errors drawn at random.
    pub(crate) fn draw(&self, token: &str) -> Option<Fault> {
        let share = token_share(token);
        if share < self.unregistered {
            return Some(Fault::Unregistered);
        }
        if share < self.unregistered + self.bad_device_token {
            return Some(Fault::BadDeviceToken);
        }
        let roll = fastrand::f64();
        [
            (self.too_many_requests, Fault::TooManyRequests),
            (self.unavailable, Fault::Unavailable),
            (self.internal, Fault::Internal),
        ]
        .into_iter()
        .scan(0.0, |cumulative, (rate, fault)| {
            *cumulative += rate;
            Some((*cumulative, fault))
        })
        .find(|(cumulative, _)| roll < *cumulative)
        .map(|(_, fault)| fault)
    }

    /// The latency to add to one request.
    pub(crate) fn latency(&self) -> Duration {
        let (low, high) = self.latency_ms;
        Duration::from_millis(if high > low { fastrand::u64(low..=high) } else { low })
    }
}

/// A stable number in [0, 1) for a token (FNV-1a).
fn token_share(token: &str) -> f64 {
    let hash = token.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_percent_of_tokens_are_unregistered_and_stay_so() {
        let faults = Faults { unregistered: 0.01, ..Faults::default() };
        let dead: Vec<usize> = (0..100_000)
            .filter(|i| faults.draw(&format!("token-{i}")) == Some(Fault::Unregistered))
            .collect();
        assert!((800..1_200).contains(&dead.len()), "{} dead tokens", dead.len());
        assert!(dead
            .iter()
            .all(|i| faults.draw(&format!("token-{i}")) == Some(Fault::Unregistered)));
    }

    #[test]
    fn fault_specs_are_parsed_and_checked() {
        let mut faults = Faults::default();
        faults.set("unavailable=0.05").unwrap();
        faults.set("retry_after=2").unwrap();
        faults.set("latency_ms=5..20").unwrap();
        assert_eq!(
            (faults.unavailable, faults.retry_after_secs, faults.latency_ms),
            (0.05, 2, (5, 20))
        );
        assert!(faults.set("unavailable=5").unwrap_err().contains("between 0 and 1"));
        assert!(faults.set("gremlins=0.1").unwrap_err().contains("unknown fault"));
    }
}
