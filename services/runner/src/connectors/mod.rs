//! Connectors: the actions that reach the outside world — the OpenAI Admin API, Slack, HTTP —
//! built from the service config. Each speaks its service's real API (see
//! `shared/reference/`), classifies failures for the retry policy ([`ActionError`]) and never
//! puts a secret into an error, a log line or an output. The HTTP client setup and the
//! base-URL policy they share with the gateway are `quench_common::http`.

pub mod http;
pub mod openai;
pub mod secret_store;
pub mod slack;

use std::time::Duration;

use crate::engine::ActionError;

/// `Retry-After` in seconds (the only form OpenAI and Slack send), capped at an hour.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

/// A transport failure (connect, timeout, broken body): worth retrying. The message names no
/// header or body, so it cannot carry a credential.
pub fn transport_error(service: &str, error: reqwest::Error) -> ActionError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    ActionError::retryable(format!("{service} request {what}: {}", error.without_url()))
}
