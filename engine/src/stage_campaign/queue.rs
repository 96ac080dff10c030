//! A campaign's queue of candidates in a store, in arrival order: the candidates held while
//! their campaign is paused, and those waiting for a place in flight. Each is released in
//! bounded steps on a timer.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::ProcessError;
use crate::{model::Candidate, runtime::ProcessorContext};

/// Candidates looked at per step.
pub(super) const STEP: usize = 500;

/// Key of a queued candidate: campaign, then its big-endian arrival number.
pub(super) fn key(campaign: &str, sequence: u64) -> Vec<u8> {
    [campaign.as_bytes(), &[0], &sequence.to_be_bytes()].concat()
}

/// A candidate waiting for a place in flight, with the limit it waits on. Stored as the
/// candidate's own fields plus `waits_on`, so an entry reads as a plain [`Candidate`] too, and
/// a plain candidate (written by an older version) reads as one waiting on no known limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Waiting {
    /// Who waits.
    #[serde(flatten)]
    pub(super) candidate: Candidate,
    /// The limit it found full; `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) waits_on: Option<WaitsOn>,
}

/// The limit a waiting candidate found full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum WaitsOn {
    /// The campaign's total limit: it waits across days.
    Total,
    /// The daily limit of this day (campaign timezone): refused once the day has passed.
    Daily(String),
    /// No limit: its turn behind those already waiting (it came when the limit had room), or
    /// the end of a recount of the leases.
    Turn,
}

/// The next step of `campaign`'s queue in `store`.
pub(super) struct Step<T = Candidate> {
    /// Queued entries with their keys, oldest first.
    pub(super) entries: Vec<(Vec<u8>, T)>,
    /// Entries that did not decode (deleted, and logged).
    pub(super) unreadable: u64,
    /// A full step was read: more may follow.
    pub(super) more: bool,
}

/// Reads the next [`STEP`] candidates of `campaign`'s queue in `store`, deleting unreadable
/// ones.
pub(super) fn next_step(
    ctx: &mut ProcessorContext<'_>,
    store: &str,
    campaign: &str,
) -> Result<Step, ProcessError> {
    next_entries(ctx, store, campaign)
}

/// Reads the next [`STEP`] entries of `campaign`'s queue in `store` as `T`, deleting
/// unreadable ones.
pub(super) fn next_entries<T: DeserializeOwned>(
    ctx: &mut ProcessorContext<'_>,
    store: &str,
    campaign: &str,
) -> Result<Step<T>, ProcessError> {
    let prefix = [campaign.as_bytes(), &[0]].concat();
    let raw = ctx.store(store)?.prefix(&prefix, STEP)?;
    let more = raw.len() == STEP;
    let mut entries = Vec::with_capacity(raw.len());
    let mut unreadable = 0;
    for (key, value) in raw {
        match serde_json::from_slice::<T>(&value) {
            Ok(entry) => entries.push((key, entry)),
            Err(_) => {
                tracing::warn!(%campaign, store, "dropping an unreadable queued candidate");
                ctx.store(store)?.delete(&key)?;
                unreadable += 1;
            }
        }
    }
    Ok(Step { entries, unreadable, more })
}
