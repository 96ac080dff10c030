//! Trigger occurrences already sent: one occurrence is one notification. The user stage drops a
//! repeated event id only within its de-duplication window (a day by default); a producer's
//! retry after it comes again as the same occurrence (the same run id, hence the same message
//! ids). The campaign stage remembers each occurrence it sent, per (campaign place, user, run
//! id), for the settings' `limits.occurrence_retention` (at least as long as the send gate keeps
//! its decision on a notification, so the two agree): a repeat within it takes no place, counts
//! nothing and sends no command; it is counted as skipped `duplicate`.
//!
//! The memory is bounded: beside each occurrence (`owner 0 1 user 0 run` → its expiry) an index
//! in expiry order (`owner 0 0 expiry user 0 run`) is swept by a durable timer per hour of
//! expiry and place, a step at a time, from a cursor (`owner 0 2`) past the entries already
//! swept. A scheduled run's users are not kept here: its buffer gives each user one place per
//! run.
//!
//! A campaign with `options.shards` above 1 moves between its home and its shards when an edit
//! changes what keeps it at home (a throttle, a limit on an app with caps, an A/B test; see
//! `campaign::shards::in_effect`). Its trigger occurrences always reach the user's shard
//! first, so each is remembered there whichever place sends it: in effect, the shard sends and
//! remembers it; kept at home, the shard remembers it and passes it home (a repeat seen there
//! is counted `duplicate` at the shard and not passed on). An occurrence sent before an edit
//! moved the campaign is still recognised after it, both ways.

use super::{timer_key, CampaignStage, CampaignState};
use crate::{
    campaign::{shards as campaign_shards, Campaign},
    model::{is_triggered_run, Candidate},
    runtime::{ProcessError, ProcessorContext},
};

/// The store of occurrences sent.
pub(super) const OCCURRENCES: &str = "occurrences";
/// Timer kind of the sweep (`sent:<owner>`).
pub(super) const SWEEP_TIMER: &str = "sent";
/// The reason a repeated occurrence is counted under.
const DUPLICATE: &str = "duplicate";
/// Expired occurrences forgotten per timer firing.
const SWEEP_STEP: usize = 500;
/// Sweeps are timed on the hour after an expiry: at most one timer per hour and place.
const SWEEP_EVERY_MS: i64 = 3_600_000;

/// Where `owner`'s occurrence of `user` in `run` is kept (its value: its expiry).
fn seen_key(owner: &str, user: &str, run: &str) -> Vec<u8> {
    [owner.as_bytes(), &[0, 1], user.as_bytes(), &[0], run.as_bytes()].concat()
}

/// The start of `owner`'s index in expiry order.
fn index_prefix(owner: &str) -> Vec<u8> {
    [owner.as_bytes(), &[0, 0]].concat()
}

/// Index entry of an occurrence expiring at `expires`.
fn index_key(owner: &str, expires: i64, user: &str, run: &str) -> Vec<u8> {
    let expires = expires.max(0).to_be_bytes();
    [index_prefix(owner).as_slice(), &expires, user.as_bytes(), &[0], run.as_bytes()].concat()
}

/// Where `owner`'s sweep resumes: no index entry is left below it.
fn cursor_key(owner: &str) -> Vec<u8> {
    [owner.as_bytes(), &[0, 2]].concat()
}

/// The occurrence an index entry (`suffix`, after the prefix) names: expiry, user, run.
fn parse_index(suffix: &[u8]) -> Option<(i64, &[u8], &[u8])> {
    let expires = i64::from_be_bytes(suffix.get(..8)?.try_into().ok()?);
    let rest = suffix.get(8..)?;
    let split = rest.iter().position(|b| *b == 0)?;
    Some((expires, &rest[..split], &rest[split + 1..]))
}

impl CampaignStage {
    /// Whether `candidate`'s trigger occurrence was sent from this place within the retention:
    /// counted `duplicate` then, and to be dropped.
    pub(super) fn sent_before(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        candidate: &Candidate,
    ) -> Result<bool, ProcessError> {
        if !is_triggered_run(&candidate.run_id) {
            return Ok(false);
        }
        let key = seen_key(&state.key, &candidate.user_id, &candidate.run_id);
        let expires = ctx.store(OCCURRENCES)?.get_as::<i64>(&key)?;
        let repeated = expires.is_some_and(|expires| expires > ctx.now_ms());
        if repeated {
            state.skip(DUPLICATE);
        }
        Ok(repeated)
    }

    /// A trigger occurrence came to a key where no shard takes it now (see `misrouted`): the
    /// user's shard remembers it and passes it to the campaign's home, unless it saw it within
    /// the retention (counted `duplicate` then). A key that names no shard passes it on as is.
    /// An occurrence passed home counts as judged: its repeat is a duplicate even if the home
    /// refused it (a limit), as it would be had the home sent it.
    pub(super) fn pass_home(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        key: Option<&[u8]>,
        candidate: Candidate,
    ) -> Result<(), ProcessError> {
        let shard = key.map(|key| campaign_shards::scope(key, campaign));
        if let Some(campaign_shards::Scope::Shard(_)) = shard {
            let mut state = self.load(ctx, campaign, &super::scope(key, campaign)?)?;
            if self.sent_before(ctx, &mut state, &candidate)? {
                return self.save(ctx, campaign, &mut state);
            }
            self.remember_sent(ctx, &state, &candidate)?;
        }
        self.emit(ctx, &self.topics.campaign_flow, &campaign.id, &candidate)
    }

    /// Remembers that `candidate`'s trigger occurrence was sent, until the retention passes.
    pub(super) fn remember_sent(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &CampaignState,
        candidate: &Candidate,
    ) -> Result<(), ProcessError> {
        if !is_triggered_run(&candidate.run_id) {
            return Ok(());
        }
        let (owner, user, run) = (state.key.as_str(), &candidate.user_id, &candidate.run_id);
        let expires = ctx.now_ms().saturating_add(self.settings.occurrence_retention_ms());
        let key = seen_key(owner, user, run);
        let index = index_key(owner, expires, user, run);
        let mut store = ctx.store(OCCURRENCES)?;
        // An expired entry not swept yet is replaced.
        if let Some(earlier) = store.get_as::<i64>(&key)? {
            store.delete(&index_key(owner, earlier, user, run))?;
        }
        store.put_as(&key, &expires)?;
        store.put(&index, &[])?;
        // A shorter retention since an earlier sweep: the sweep resumes from this entry.
        let cursor = cursor_key(owner);
        if store.get(&cursor)?.is_some_and(|from| index < from) {
            store.put(&cursor, &index)?;
        }
        let sweep = expires.div_euclid(SWEEP_EVERY_MS).saturating_add(1) * SWEEP_EVERY_MS;
        Ok(ctx.schedule(sweep, &timer_key(SWEEP_TIMER, owner))?)
    }

    /// The sweep timer of `owner` fired: forgets up to [`SWEEP_STEP`] occurrences
    /// expired by now (of a deleted campaign too); the next step follows at once.
    pub(super) fn forget_expired(
        &self,
        ctx: &mut ProcessorContext<'_>,
        owner: &str,
    ) -> Result<(), ProcessError> {
        let now = ctx.now_ms();
        let prefix = index_prefix(owner);
        let cursor = cursor_key(owner);
        let mut store = ctx.store(OCCURRENCES)?;
        let from = store.get(&cursor)?.unwrap_or_else(|| prefix.clone());
        let to = [prefix.as_slice(), &now.saturating_add(1).max(0).to_be_bytes()].concat();
        let due = store.range(&from, &to, SWEEP_STEP)?;
        let Some(last) = due.last().map(|(key, _)| [key.as_slice(), &[0]].concat()) else {
            return Ok(());
        };
        for (key, _) in &due {
            store.delete(key)?;
            let Some((expires, user, run)) = parse_index(&key[prefix.len()..]) else { continue };
            let seen = [owner.as_bytes(), &[0, 1], user, &[0], run].concat();
            // Kept again since (a later repeat past the retention): its own entry sweeps it.
            if store.get_as::<i64>(&seen)? == Some(expires) {
                store.delete(&seen)?;
            }
        }
        store.put(&cursor, &last)?;
        if due.len() == SWEEP_STEP {
            ctx.schedule(now, &timer_key(SWEEP_TIMER, owner))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_expiry_and_read_back() {
        let early = index_key("c", 1_000, "u\u{1}", "trigger:e");
        let late = index_key("c", 2_000, "a", "trigger:e");
        assert!(early < late);
        let (expires, user, run) = parse_index(&late[index_prefix("c").len()..]).unwrap();
        assert_eq!((expires, user, run), (2_000, b"a".as_slice(), b"trigger:e".as_slice()));
        assert!(index_prefix("c") < cursor_key("c") && seen_key("c", "u", "r") < cursor_key("c"));
    }
}
