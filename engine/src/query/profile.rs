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
    /// When the user is an anonymous id that identified as a known user (an alias): that
    /// user, whose profile took the anonymous id's (then `profile` is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
}

/// Links followed from an alias to the profile it merged into, at most.
const MAX_LINKS: usize = 3;

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

/// Asks the running engine for `user`'s profile, waiting up to `timeout` for each answer; for
/// an alias (an anonymous id that identified), the profile of the known user it merged into.
pub fn lookup(
    kafka: &KafkaConfig,
    topics: &TopicNames,
    user: &str,
    timeout: Duration,
) -> Result<Option<Profile>, LookupError> {
    let mut asked = user.to_string();
    for _ in 0..=MAX_LINKS {
        let answer = lookup_one(kafka, topics, &asked, timeout)?;
        match answer.merged_into {
            Some(known) if answer.profile.is_none() => asked = known,
            _ => return Ok(answer.profile),
        }
    }
    Err(LookupError::Failed {
        user: user.into(),
        reason: format!("more than {MAX_LINKS} links from alias to alias"),
    })
}

/// The engine's answer for `user` alone (no link followed).
fn lookup_one(
    kafka: &KafkaConfig,
    topics: &TopicNames,
    user: &str,
    timeout: Duration,
) -> Result<Answer, LookupError> {
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
        (QueryStatus::Done, Some(body)) => {
            serde_json::from_str::<Answer>(&body).map_err(|e| failed(e.to_string()))
        }
        (_, _) => Err(failed(reply.error.unwrap_or_else(|| "no answer".into()))),
    }
}
