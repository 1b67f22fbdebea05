//! Why a request was refused, and the one place refusals become HTTP answers: a status, a JSON
//! body `{"error": "…"}` (and `Retry-After` where waiting helps). Refusals are logged by
//! `server::answer` without secrets or bodies; none of them publishes anything.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Whose replay budget is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The endpoint's: every client of it is refused until entries expire.
    Endpoint,
    /// One client's share: only that client is refused.
    Client,
}

impl Scope {
    fn message(self) -> &'static str {
        match self {
            Scope::Endpoint => {
                "too many signed requests to this endpoint in the last 300 seconds to remember another; retry later"
            }
            Scope::Client => {
                "this client sent too many signed requests in the last 300 seconds to remember another; retry later"
            }
        }
    }
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this endpoint is not configured (set {0})")]
    NotConfigured(&'static str),
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("too many requests; retry later")]
    RateLimited { retry_after: Duration },
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("the signature does not match")]
    BadSignature,
    #[error("the request timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error(
        "the request timestamp is more than 300 seconds from the gateway's clock; sign it again with the current time"
    )]
    StaleTimestamp,
    #[error("this signed request was already accepted")]
    Replayed,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{}", .scope.message())]
    ReplayFull { scope: Scope, retry_after: Duration },
    #[error("quench could not accept the message now; retry later")]
    Unavailable,
    #[error("the request took too long")]
    Timeout,
}

impl Refusal {
    /// The HTTP status of the refusal.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::NotConfigured(_) => StatusCode::NOT_FOUND,
            Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::MissingHeader(_)
            | Refusal::BadSignature
            | Refusal::BadTimestamp
            | Refusal::StaleTimestamp => StatusCode::UNAUTHORIZED,
            Refusal::Replayed => StatusCode::CONFLICT,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::ReplayFull { .. } | Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// A short fixed word for logs and the refusal metric's `reason`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::NotConfigured(_) => "not_configured",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::MissingHeader(_) => "missing_header",
            Refusal::BadSignature => "bad_signature",
            Refusal::BadTimestamp => "bad_timestamp",
            Refusal::StaleTimestamp => "stale_timestamp",
            Refusal::Replayed => "replayed",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Unprocessable(_) => "unprocessable",
            Refusal::ReplayFull {
                scope: Scope::Endpoint,
                ..
            } => "replay_budget_full",
            Refusal::ReplayFull {
                scope: Scope::Client,
                ..
            } => "replay_client_budget_full",
            Refusal::Unavailable => "unavailable",
            Refusal::Timeout => "timeout",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after } | Refusal::ReplayFull { retry_after, .. } => {
                Some(*retry_after)
            }
            Refusal::Unavailable => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response =
            (self.status(), Json(json!({"error": self.to_string()}))).into_response();
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}
