//! The API's errors, each answered as JSON `{ "error": ..., "field": ... }` with its status.

use std::time::Duration;

use axum::{
    http::{header::RETRY_AFTER, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

use super::audit::ErrorNote;
use crate::{campaign::ValidationErrors, query::QueryError};

/// One problem with a field of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// Field path, e.g. `when.unless.within`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The (first) field at fault, if the request was invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every field at fault, in document order, if the request was invalid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or not a valid one: nothing else is said.
    #[error("unauthorized")]
    Unauthorized,
    /// A valid token whose role may not do this.
    #[error("forbidden: this needs an admin token")]
    Forbidden,
    /// The token made too many requests; it may try again after the duration.
    #[error("too many requests")]
    RateLimited(Duration),
    /// Nothing with this id.
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid; every field at fault.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// The fields at fault.
        problems: Vec<FieldProblem>,
    },
    /// The request body is over the limit of this many bytes.
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    /// The request conflicts with the current state (e.g. a command on a stopped campaign).
    #[error("{0}")]
    Conflict(String),
    /// No engine answered a question the request needs answered by the running engine (a
    /// preview's profile, an estimate): none runs on these topics, or none answered in time.
    #[error("{0}")]
    Unavailable(String),
    /// Something Herald depends on failed (the broker, a file).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// An invalid request with one field at fault.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let problem = FieldProblem { field: field.into(), reason: reason.into() };
        Self::Invalid {
            message: format!("{}: {}", problem.field, problem.reason),
            problems: vec![problem],
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::NoTopic(_) => Self::Unavailable(format!("no engine to ask: {error}")),
            _ => Self::Internal(format!("asking the engine: {error}")),
        }
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        let problems = errors
            .errors
            .iter()
            .map(|e| FieldProblem { field: e.path.clone(), reason: e.reason.clone() })
            .collect();
        Self::Invalid { message: errors.to_string(), problems }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(reason) = &self {
            tracing::error!(%reason, "API request failed");
        }
        let status = self.status();
        let (field, errors) = match &self {
            Self::Invalid { problems, .. } => {
                (problems.first().map(|p| p.field.clone()), problems.clone())
            }
            _ => (None, Vec::new()),
        };
        let retry = match &self {
            // Rounded up: a client waiting the seconds said finds its request there.
            Self::RateLimited(after) => Some((after.as_secs_f64().ceil() as u64).max(1)),
            _ => None,
        };
        let error = self.to_string();
        let mut response =
            (status, Json(ErrorBody { error: error.clone(), field, errors })).into_response();
        response.extensions_mut().insert(ErrorNote(error));
        if let Some(seconds) = retry {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
