//! Campaign definitions: the documented YAML format (`docs/campaigns.md`), its validation with
//! every error reported by field path, and the compiled form operators evaluate.

pub mod admin;
mod book;
mod document;
mod filter;
pub mod json_schema;
mod model;
mod parse;
mod recurrence;
pub mod sample;
mod segment;
pub mod shards;
pub mod test_send;

pub(crate) use book::compile as compile_table_value;
pub use book::{CampaignBook, CampaignCache, CAMPAIGNS_TABLE};
pub use filter::{time_ms, ProfileView, Scalar};
pub use model::{
    AbTest, Action, Assignment, Behaviour, Campaign, CampaignStatus, CarouselItem, Conversion, Dnd,
    DndAction, Filter, Inaction, InterruptionLevel, Limits, Message, Op, Options, Place, Priority,
    PropertyCondition, PushOptions, Schedule, TestPopulation, Throttle, Trigger, When, WinnerBy,
    MAX_SHARDS,
};
pub use parse::{
    parse_campaign, parse_duration, FieldError, ValidationErrors, DEFAULT_HISTORY_DAYS, MAX_COUNT,
    MAX_DAYS, MAX_DURATION_MS, MAX_HISTORY_DAYS,
};
pub use recurrence::{Cadence, CatchUp, LocalSend, Recurrence, UserLocal};
pub use segment::{parse_segment, Segment, SegmentBook, SEGMENTS_TABLE};
