//! Campaign definitions: the documented YAML format (`docs/campaigns.md`), its validation with
//! every error reported by field path, and the compiled form operators evaluate.

mod filter;
mod model;
mod parse;

pub use filter::{time_ms, ProfileView, Scalar};
pub use model::{
    Action, Behaviour, Campaign, CampaignStatus, CarouselItem, Conversion, Dnd, DndAction, Filter,
    Inaction, InterruptionLevel, Limits, Message, Op, Options, Place, Priority, PropertyCondition,
    PushOptions, Trigger, When,
};
pub use parse::{parse_campaign, parse_duration, FieldError, ValidationErrors};
