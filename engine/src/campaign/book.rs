//! The campaigns an operator evaluates, compiled from the campaigns global table.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    campaign::{admin, Behaviour, Campaign, CampaignStatus, Filter},
    model::{CampaignEnvelope, SchemaRegistry},
    runtime::GlobalTable,
};

/// Name of the global table of campaign definitions (`herald.campaigns`), which every stage
/// reads through a [`CampaignCache`].
pub const CAMPAIGNS_TABLE: &str = "campaigns";

/// Compiled campaigns by id, and the behaviour predicates their filters reference.
#[derive(Default)]
pub struct CampaignBook {
    campaigns: BTreeMap<String, Arc<Campaign>>,
    behaviours: Vec<Behaviour>,
}

impl CampaignBook {
    /// Compiles every campaign of the global table. Envelopes that do not decode or whose
    /// definition is invalid are skipped with a warning (`herald campaign apply` never
    /// publishes those).
    pub fn from_table(table: &GlobalTable) -> Self {
        let mut campaigns = BTreeMap::new();
        for (key, value) in table.iter() {
            match compile(value) {
                Ok(campaign) => {
                    campaigns.insert(campaign.id.clone(), Arc::new(campaign));
                }
                Err(reason) => tracing::warn!(
                    campaign = %String::from_utf8_lossy(key),
                    %reason,
                    "ignoring campaign"
                ),
            }
        }
        let mut behaviours = Vec::new();
        for campaign in campaigns.values() {
            collect_behaviours(&campaign.who, &mut behaviours);
        }
        Self { campaigns, behaviours }
    }

    /// Campaigns of `app` that are active.
    pub fn active_for<'a>(&'a self, app: &'a str) -> impl Iterator<Item = &'a Arc<Campaign>> + 'a {
        self.campaigns.values().filter(move |c| c.app == app && c.status == CampaignStatus::Active)
    }

    /// Every campaign, whatever its status.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Campaign>> {
        self.campaigns.values()
    }

    /// The campaign `id`, whatever its status.
    pub fn get(&self, id: &str) -> Option<&Arc<Campaign>> {
        self.campaigns.get(id)
    }

    /// Behaviour predicates referenced by any campaign.
    pub fn behaviours(&self) -> &[Behaviour] {
        &self.behaviours
    }
}

/// Compiles one value of the campaigns table (an envelope) into its campaign.
pub(crate) fn compile(value: &[u8]) -> Result<Campaign, String> {
    let envelope: CampaignEnvelope =
        SchemaRegistry::builtin().decode(value).map_err(|e| e.to_string())?;
    admin::compile(&envelope)
}

pub(super) fn collect_behaviours(filter: &Filter, out: &mut Vec<Behaviour>) {
    match filter {
        Filter::All(filters) | Filter::Any(filters) => {
            filters.iter().for_each(|f| collect_behaviours(f, out));
        }
        Filter::Not(filter) => collect_behaviours(filter, out),
        Filter::Behaviour(behaviour) => {
            if !out.contains(behaviour) {
                out.push(behaviour.clone());
            }
        }
        // A segment's own behaviours are collected by the segment book.
        Filter::Property(_) | Filter::Device(_) | Filter::Near(_) | Filter::Segment(_) => {}
    }
}

/// A [`CampaignBook`] kept in step with the campaigns global table: rebuilt on first use after
/// the table changed.
#[derive(Default)]
pub struct CampaignCache {
    book: CampaignBook,
    current: bool,
}

impl CampaignCache {
    /// Rebuilds the book from `table` if it changed since; returns whether it did.
    pub fn refresh(&mut self, table: Option<&GlobalTable>) -> bool {
        if self.current {
            return false;
        }
        self.book = table.map(CampaignBook::from_table).unwrap_or_default();
        self.current = true;
        true
    }

    /// Marks the book stale (call from `on_global_change`).
    pub fn invalidate(&mut self) {
        self.current = false;
    }

    /// The campaigns as of the last refresh.
    pub fn book(&self) -> &CampaignBook {
        &self.book
    }
}
