//! A campaign deleted from the campaigns table (a tombstone) while it still holds work: users in
//! its throttle outbox (places in flight), waiting for a place, held by a pause, buffered in a
//! run. The table no longer says what the campaign was, so each place of it (home and shards)
//! keeps the campaign's last definition (`definitions` store, by the place's key). Once the
//! campaign is gone from the table, the place treats it as stopped under that definition: it
//! announces `STOPPED` (reason `deleted`, at home), drains what it holds exactly as a stop does,
//! counting each user dropped as skipped `deleted`, lets late answers of the send gate settle
//! their places, and forgets the definition once nothing is left (the campaign's counters stay).

use std::{collections::BTreeMap, sync::Arc};

use super::{queue, CampaignStage, CampaignState, HELD_CANDIDATES, RUN_BUFFER};
use crate::{
    campaign::{
        compile_table_value, shards as campaign_shards, Campaign, CampaignStatus, CAMPAIGNS_TABLE,
    },
    model::LifecycleKind,
    runtime::{ProcessError, ProcessorContext},
};

/// The store of the last definition of each campaign place: its key (the campaign id, or a
/// shard's key) → the campaigns table's value.
pub(super) const DEFINITIONS: &str = "definitions";
/// The skip reason of a user a deleted campaign dropped.
pub(super) const DELETED: &str = "deleted";

impl CampaignStage {
    /// The campaign a record keyed `key` (`None`: its home) is about: as the table has it, or,
    /// deleted from the table, its last definition kept at that place, as a stopped campaign.
    pub(super) fn known(
        &self,
        ctx: &mut ProcessorContext<'_>,
        id: &str,
        key: Option<&[u8]>,
    ) -> Result<Option<Arc<Campaign>>, ProcessError> {
        if let Some(campaign) = self.campaigns.book().get(id) {
            return Ok(Some(Arc::clone(campaign)));
        }
        let key = key.unwrap_or(id.as_bytes());
        let Some(value) = ctx.store(DEFINITIONS)?.get(key)? else { return Ok(None) };
        Ok(as_deleted(key, &value).filter(|campaign| campaign.id == id).map(Arc::new))
    }

    /// On a change of the campaigns table: keeps the definition of each place `owned` (the
    /// campaign and the place's key) that changed, and drains the places of campaigns deleted
    /// from the table.
    pub(super) fn keep_definitions(
        &self,
        ctx: &mut ProcessorContext<'_>,
        owned: &[(Arc<Campaign>, String)],
    ) -> Result<(), ProcessError> {
        let Some(table) = ctx.global(CAMPAIGNS_TABLE) else { return Ok(()) };
        let current: Vec<(String, Vec<u8>)> = owned
            .iter()
            .filter_map(|(campaign, key)| {
                Some((key.clone(), table.get(campaign.id.as_bytes())?.to_vec()))
            })
            .collect();
        for (key, value) in current {
            let mut store = ctx.store(DEFINITIONS)?;
            if store.get(key.as_bytes())?.as_deref() != Some(value.as_slice()) {
                store.put(key.as_bytes(), &value)?;
            }
        }
        // Every definition kept whose campaign the table no longer has (one per place).
        let kept = ctx.store(DEFINITIONS)?.prefix(&[], usize::MAX)?;
        for (key, value) in kept {
            let id = String::from_utf8_lossy(&key);
            let id = id.split_once(campaign_shards::SEPARATOR).map_or(&*id, |(id, _)| id);
            if self.campaigns.book().get(id).is_some() {
                continue;
            }
            match as_deleted(&key, &value) {
                Some(campaign) => self.drain_deleted(ctx, &campaign, &key)?,
                None => ctx.store(DEFINITIONS)?.delete(&key)?,
            }
        }
        Ok(())
    }

    /// The place `key` of `campaign`, deleted from the table, drains: unless the campaign was
    /// stopped (or its deletion seen) already, `STOPPED` (reason `deleted`) is announced at home
    /// and what the place holds is released as a stop releases it. Saving it forgets the
    /// definition once nothing is left.
    fn drain_deleted(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        key: &[u8],
    ) -> Result<(), ProcessError> {
        let key = String::from_utf8_lossy(key).into_owned();
        let mut state = self.load(ctx, campaign, &key)?;
        let stopped = Some(CampaignStatus::Stopped);
        if state.announced_status != stopped {
            if !state.is_shard(campaign) {
                let details = BTreeMap::from([("reason".to_string(), DELETED.to_string())]);
                self.lifecycle(ctx, campaign, LifecycleKind::Stopped, details)?;
            }
            state.announced_status = stopped;
            let now = ctx.now_ms();
            self.wake_held(ctx, &state, now)?;
        }
        self.save(ctx, campaign, &mut state)
    }

    /// Forgets the kept definition of a deleted campaign's place once its end was announced
    /// and it holds nothing more: no place in flight (an answer of the send gate must still
    /// find it), nobody waiting, held, buffered or in its outbox, no stats still to publish.
    pub(super) fn forget_drained(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &CampaignState,
    ) -> Result<(), ProcessError> {
        let idle = state.announced_status == Some(CampaignStatus::Stopped)
            && state.in_flight == 0
            && state.waiting == 0
            && state.outbox.is_empty()
            && !state.ab_test.waits()
            && state.stats_due.is_none();
        if !idle {
            return Ok(());
        }
        let prefix = queue::key(&state.key, 0);
        let prefix = &prefix[..=state.key.len()]; // the place's key and its separator
        for store in [HELD_CANDIDATES, RUN_BUFFER] {
            if !ctx.store(store)?.prefix(prefix, 1)?.is_empty() {
                return Ok(());
            }
        }
        Ok(ctx.store(DEFINITIONS)?.delete(state.key.as_bytes())?)
    }
}

impl CampaignState {
    /// The reason a user dropped by the end of the campaign is counted under: `deleted` once it
    /// was deleted from the table, else `stopped`.
    pub(super) fn ended_as(&self) -> &'static str {
        if self.deleted {
            DELETED
        } else {
            "stopped"
        }
    }
}

/// The campaign a kept definition describes, as deleted: stopped. `None` when it does not
/// compile any more (then nothing can be drained under it).
fn as_deleted(key: &[u8], value: &[u8]) -> Option<Campaign> {
    match compile_table_value(value) {
        Ok(mut campaign) => {
            campaign.status = CampaignStatus::Stopped;
            Some(campaign)
        }
        Err(reason) => {
            let key = String::from_utf8_lossy(key);
            tracing::warn!(place = %key, %reason, "dropping the kept definition of a deleted campaign");
            None
        }
    }
}
