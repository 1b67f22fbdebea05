//! Connectors: the actions that reach the outside world — the OpenAI Admin API, Slack, HTTP —
//! built from the service config. Each speaks its service's real API (see
//! `shared/reference/`), classifies failures for the retry policy ([`ActionError`]) and never
//! puts a secret into an error, a log line or an output.

pub mod http;
pub mod openai;
pub mod slack;

use std::time::Duration;

use crate::engine::ActionError;

/// Per-request timeout of outbound HTTP calls.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for connectors: rustls (ring), timeouts, no redirects unless a connector
/// follows them itself, and a `User-Agent` naming quench.
pub fn http_client() -> reqwest::Client {
    // reqwest is built without a crypto provider of its own (`rustls-no-provider`): make ring,
    // which slack-morphism uses too, the process default. Ignored when one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("quench/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client's configuration is valid")
}

/// Checks a service's base URL: https, or plain http only to a loopback host (a local fake),
/// so a credential never crosses a network in the clear.
pub fn check_base_url(base: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(base).map_err(|error| format!("is not a URL: {error}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err("must use https (plain http only for a loopback fake)".to_owned()),
    }
}

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
