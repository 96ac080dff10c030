//! A scheduled run's records that reach a shard ahead of its definition. Each instance reads
//! the campaigns table at its own pace, so a user-stage task that read an edit of
//! `options.shards` (1 -> 8, 4 -> 8) may scan a run over shards a campaign-stage task does not
//! know yet: that shard's candidates, reservations, skips and tallies wait for the definition,
//! as its home's plans do (`shards::hold_plan`), instead of being refused (dead letters: the run
//! was lost, review s30 finding 6's rest). Each is kept under its own key in the campaign states
//! (`<shard key> NUL records NUL <n>`, `n` counted under `<shard key> NUL records`), in the
//! transaction that consumes it, at most [`MAX_AHEAD`] per shard, and applied in the order they
//! came once the definition is there: in the transaction of the table's change (`lifecycle`), of
//! the shard's next plan (before the plans held with them) or of its next such record, each
//! deleted in that transaction. A crash aborts either whole: a record is held or applied, never
//! both nor lost.

use serde::{Deserialize, Serialize};

use super::{CampaignStage, STATE};
use crate::{
    campaign::{shards as campaign_shards, Campaign, MAX_SHARDS},
    model::{Candidate, RunTally, Skip},
    runtime::{ProcessError, ProcessorContext},
};

/// At most this many records wait for one shard's definition: past it, one is rejected.
const MAX_AHEAD: u64 = 10_000;

/// A record held for its shard's definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Ahead {
    Candidate(Candidate),
    Skip(Skip),
    Tally(RunTally),
}

/// Key of the number of records held for shard key `shard_key`.
fn count_key(shard_key: &str) -> Vec<u8> {
    format!("{shard_key}\u{0}records").into_bytes()
}

/// Key of the `n`th record held for shard key `shard_key`.
fn entry_key(shard_key: &str, n: u64) -> Vec<u8> {
    [count_key(shard_key).as_slice(), &[0], &n.to_be_bytes()].concat()
}

/// `key` when it is exactly the key of a shard of campaign `id` below [`MAX_SHARDS`].
fn shard_key(id: &str, key: Option<&[u8]>) -> Option<String> {
    let key = key?;
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(id)?;
    let shard = rest.strip_prefix(campaign_shards::SEPARATOR)?.parse::<u32>().ok()?;
    let canonical = campaign_shards::key(id, shard);
    (shard < MAX_SHARDS && canonical.as_bytes() == key).then_some(canonical)
}

impl CampaignStage {
    /// A scheduled run's `record` of campaign `id` under `key`, which names a shard this task's
    /// copy of the table does not have (or the campaign is unknown): held for the definition
    /// (see the module doc). A key that names no shard of the campaign is `refused` (or
    /// ignored: `None`), as before.
    pub(super) fn hold_ahead(
        ctx: &mut ProcessorContext<'_>,
        id: &str,
        key: Option<&[u8]>,
        record: Ahead,
        refused: Option<ProcessError>,
    ) -> Result<(), ProcessError> {
        let Some(shard_key) = shard_key(id, key) else { return refused.map_or(Ok(()), Err) };
        let mut store = ctx.store(STATE)?;
        let held: u64 = store.get_as(&count_key(&shard_key))?.unwrap_or(0);
        if held >= MAX_AHEAD {
            return Err(ProcessError::reject(format!(
                "a run's record of {id} to {shard_key:?}: {MAX_AHEAD} records already wait for \
                 its definition"
            )));
        }
        store.put_as(&entry_key(&shard_key, held), &record)?;
        store.put_as(&count_key(&shard_key), &(held + 1))?;
        Ok(())
    }

    /// Shard `scope` of `campaign`, known now: applies the records that came before its
    /// definition, in order (see [`Self::hold_ahead`]); one refused is logged and dropped (a
    /// dead letter would be), the others apply.
    pub(super) fn apply_ahead(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        scope: &str,
    ) -> Result<(), ProcessError> {
        if scope == campaign.id {
            return Ok(());
        }
        let count = count_key(scope);
        let Some(held) = ctx.store(STATE)?.get_as::<u64>(&count)? else { return Ok(()) };
        ctx.store(STATE)?.delete(&count)?;
        for n in 0..held {
            let key = entry_key(scope, n);
            let Some(record) = ctx.store(STATE)?.get_as::<Ahead>(&key)? else { continue };
            ctx.store(STATE)?.delete(&key)?;
            let at = Some(scope.as_bytes());
            let applied = match record {
                Ahead::Candidate(candidate) => self.on_candidate(ctx, at, candidate),
                Ahead::Skip(skip) => self.on_skip(ctx, at, skip),
                Ahead::Tally(tally) => self.on_run_tally(ctx, at, tally),
            };
            match applied {
                Err(ProcessError::Reject(why)) => {
                    tracing::warn!(place = %scope, "a run's record held for its definition refused: {why}");
                }
                other => other?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_canonical_shard_key_of_the_campaign_holds() {
        assert_eq!(shard_key("c", Some("c\u{1f}7".as_bytes())), Some("c\u{1f}7".to_string()));
        assert_eq!(shard_key("c", Some("c\u{1f}07".as_bytes())), None);
        assert_eq!(shard_key("c", Some("c\u{1f}+7".as_bytes())), None);
        assert_eq!(shard_key("c", Some("c\u{1f}64".as_bytes())), None);
        assert_eq!(shard_key("c", Some("c".as_bytes())), None);
        assert_eq!(shard_key("c", Some("d\u{1f}1".as_bytes())), None);
        assert_eq!(shard_key("c", None), None);
    }
}
