//! A campaign's queue of candidates in a store, in arrival order: the candidates held while
//! their campaign is paused, and those waiting for a place in flight. Each is released in
//! bounded steps on a timer.

use super::ProcessError;
use crate::{model::Candidate, runtime::ProcessorContext};

/// Candidates looked at per step.
pub(super) const STEP: usize = 500;

/// Key of a queued candidate: campaign, then its big-endian arrival number.
pub(super) fn key(campaign: &str, sequence: u64) -> Vec<u8> {
    [campaign.as_bytes(), &[0], &sequence.to_be_bytes()].concat()
}

/// The next step of `campaign`'s queue in `store`.
pub(super) struct Step {
    /// Queued candidates with their keys, oldest first.
    pub(super) entries: Vec<(Vec<u8>, Candidate)>,
    /// Entries that did not decode (deleted, and logged).
    pub(super) unreadable: u64,
    /// A full step was read: more may follow.
    pub(super) more: bool,
}

/// Reads the next [`STEP`] entries of `campaign`'s queue in `store`, deleting unreadable ones.
pub(super) fn next_step(
    ctx: &mut ProcessorContext<'_>,
    store: &str,
    campaign: &str,
) -> Result<Step, ProcessError> {
    let prefix = [campaign.as_bytes(), &[0]].concat();
    let raw = ctx.store(store)?.prefix(&prefix, STEP)?;
    let more = raw.len() == STEP;
    let mut entries = Vec::with_capacity(raw.len());
    let mut unreadable = 0;
    for (key, value) in raw {
        match serde_json::from_slice::<Candidate>(&value) {
            Ok(candidate) => entries.push((key, candidate)),
            Err(_) => {
                tracing::warn!(%campaign, store, "dropping an unreadable queued candidate");
                ctx.store(store)?.delete(&key)?;
                unreadable += 1;
            }
        }
    }
    Ok(Step { entries, unreadable, more })
}
