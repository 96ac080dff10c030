//! Herald engine: records and schemas, topology files, Kafka administration, and (in later
//! modules) the streaming runtime, campaign operators and senders.

pub mod api;
pub mod backtest;
pub mod campaign;
pub mod kafka;
pub mod model;
pub mod outbox;
pub mod payload;
pub mod pipeline;
pub mod query;
pub mod render;
pub mod runtime;
pub mod sender;
pub mod settings;
pub mod sim;
pub mod stage_app;
pub mod stage_campaign;
pub mod stage_user;
pub mod tls;
pub mod topology;
