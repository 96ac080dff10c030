//! The saved segments a user stage evaluates, kept in step with the segments global table; a
//! campaign referencing a segment that does not exist is reported (it matches nobody).

use crate::{
    campaign::{CampaignBook, SegmentBook},
    runtime::{GlobalTable, ProcessorCounter},
};

/// Users not matched by a campaign whose filter references an unknown segment.
pub(super) static UNKNOWN_SEGMENT: ProcessorCounter = ProcessorCounter {
    name: "segment_unknown_total",
    help: "Users a campaign did not match because it references a segment that does not exist",
    label: "outcome",
};

/// A [`SegmentBook`] rebuilt on first use after the segments table changed.
#[derive(Default)]
pub(super) struct SegmentCache {
    book: SegmentBook,
    current: bool,
}

impl SegmentCache {
    /// Rebuilds the book from `table` if it changed since; when it did or `campaigns_changed`,
    /// warns of every campaign referencing an unknown segment.
    pub(super) fn refresh(
        &mut self,
        table: Option<&GlobalTable>,
        campaigns: &CampaignBook,
        campaigns_changed: bool,
    ) {
        let rebuilt = !self.current;
        if rebuilt {
            self.book = table.map(SegmentBook::from_table).unwrap_or_default();
            self.current = true;
        }
        if rebuilt || campaigns_changed {
            for campaign in campaigns.all() {
                for id in
                    campaign.who.segments().into_iter().filter(|id| self.book.get(id).is_none())
                {
                    tracing::warn!(
                        campaign = %campaign.id,
                        segment = id,
                        "campaign references an unknown segment, which matches nobody"
                    );
                }
            }
        }
    }

    /// Marks the book stale (call from `on_global_change`).
    pub(super) fn invalidate(&mut self) {
        self.current = false;
    }

    /// The segments as of the last refresh.
    pub(super) fn book(&self) -> &SegmentBook {
        &self.book
    }
}
