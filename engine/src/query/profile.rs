//! The `profile` query: one user's profile and devices as the engine's user stage keeps them,
//! answered by the task owning the user (previews and test sends render from it).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{QueryClient, QueryError, QueryRequest, QueryStatus};
use crate::{kafka::KafkaConfig, model::topics::TopicNames, stage_user::Profile};

/// The kind name of profile requests.
pub const KIND: &str = "profile";

/// Whose profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// User id.
    pub user: String,
}

/// The task's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The profile (with `age` derived from a date of birth, as filters see it); none when the
    /// engine has none for the user.
    pub profile: Option<Profile>,
}

/// Why a profile could not be read.
#[derive(Debug, Error)]
pub enum LookupError {
    /// The channel failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The task owning the user did not answer in time.
    #[error("the engine did not answer for user {user} within {waited:?}: is an engine running?")]
    NoAnswer {
        /// User asked for.
        user: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The task refused or answered something unreadable.
    #[error("the engine could not read user {user}'s profile: {reason}")]
    Failed {
        /// User asked for.
        user: String,
        /// Why.
        reason: String,
    },
}

/// Asks the running engine for `user`'s profile, waiting up to `timeout`.
pub fn lookup(
    kafka: &KafkaConfig,
    topics: &TopicNames,
    user: &str,
    timeout: Duration,
) -> Result<Option<Profile>, LookupError> {
    let client = QueryClient::new(kafka, &topics.queries, &topics.query_replies);
    let partitions = client.partitions_of(&topics.events)?;
    let body =
        serde_json::to_string(&Question { user: user.into() }).expect("a question serializes");
    let request = QueryRequest::new(KIND, Some(user.into()), body, timeout);
    let answers = client.ask(&request, partitions, |_| {})?;
    let failed = |reason: String| LookupError::Failed { user: user.into(), reason };
    let Some(reply) = answers.done.into_values().next() else {
        return Err(LookupError::NoAnswer { user: user.into(), waited: timeout });
    };
    match (reply.status, reply.body) {
        (QueryStatus::Done, Some(body)) => serde_json::from_str::<Answer>(&body)
            .map(|answer| answer.profile)
            .map_err(|e| failed(e.to_string())),
        (_, _) => Err(failed(reply.error.unwrap_or_else(|| "no answer".into()))),
    }
}
