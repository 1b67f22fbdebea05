//! `POST /webhooks/findings`: one Finding v1 from any scanner, signed with
//! `gateway.findings_secret` — `X-Quench-Timestamp: <unix secs>` and `X-Quench-Signature:
//! sha256=<hex HMAC-SHA256 of "v1:{timestamp}:{raw body}">` (see the crate docs). The finding is
//! checked and redacted by [`Finding::parse`] exactly as the runner would, and the checked form
//! is published to `quench.findings.<kind>` with its `id` as `Nats-Msg-Id`.
//!
//! `POST /webhooks/ocsf` is the same for one OCSF finding event (Compliance, Detection or IAM
//! Analysis Finding, as Security Hub or Prowler write them), signed the same way with the same
//! secret: it is mapped by [`quench_proto::ocsf::parse`] (a refusal names the OCSF attribute)
//! and the finding it maps to is published like a native one. Both endpoints share one replay
//! cache, so a signature is admitted once whichever endpoint it is sent to.

use std::net::IpAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use quench_proto::{DEFAULT_MAX_FINDING_BYTES, Finding, ParseError, subject};
use serde_json::json;

use crate::publish::Publisher;
use crate::refusal::Refusal;
use crate::replay::ReplayCache;
use crate::signature::{now_unix, verify_findings};

/// How long the stream may take to acknowledge a finding.
pub(crate) const PUBLISH_WITHIN: Duration = Duration::from_secs(5);

/// Handles a request the server admitted (endpoint configured, client within its rate, body
/// within the cap): `replays` is the findings endpoint's replay cache.
pub(crate) async fn receive(
    publisher: &Publisher,
    replays: &ReplayCache,
    secret: &str,
    client: IpAddr,
    headers: &HeaderMap,
    body: Bytes,
    format: Format,
) -> Result<Response, Refusal> {
    let now = now_unix();
    let verified = verify_findings(secret, headers, &body, now)?;
    let finding = format.parse(&body).map_err(refuse_parse)?;
    // One secret signs every scanner's findings, so the client a budget is kept for is the
    // address the rate limits count (one scanner host, or the client behind a trusted proxy).
    replays.admit(verified, client, now)?;
    match publish_finding(publisher, &finding, &finding.id).await {
        Ok(response) => Ok(response),
        Err(refusal) => {
            replays.forget(&verified);
            Err(refusal)
        }
    }
}

/// What a signed findings endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Finding v1 (`/webhooks/findings`).
    Finding,
    /// One OCSF finding event (`/webhooks/ocsf`).
    Ocsf,
}

impl Format {
    fn parse(self, body: &[u8]) -> Result<Finding, ParseError> {
        match self {
            Format::Finding => Finding::parse(body, DEFAULT_MAX_FINDING_BYTES),
            Format::Ocsf => quench_proto::ocsf::parse(body, quench_proto::ocsf::MAX_OCSF_BYTES),
        }
    }
}

/// A finding that does not parse: 413 when too large, else 422 naming the field. The message
/// is safe to return: [`Finding::parse`] redacts before it reports.
pub(crate) fn refuse_parse(error: ParseError) -> Refusal {
    match error {
        ParseError::TooLarge { limit, .. } => Refusal::TooLarge { limit },
        other => Refusal::Unprocessable(format!("not a valid finding: {other}")),
    }
}

/// Publishes a checked finding to `quench.findings.<kind>` with `msg_id` as `Nats-Msg-Id`;
/// answers 202 with what was published.
pub(crate) async fn publish_finding(
    publisher: &Publisher,
    finding: &Finding,
    msg_id: &str,
) -> Result<Response, Refusal> {
    let subject = subject::finding(&finding.kind);
    let payload = serde_json::to_vec(finding).expect("a finding serializes");
    let published = publisher
        .publish(subject.clone(), msg_id, payload, PUBLISH_WITHIN)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "finding not published");
            Refusal::Unavailable
        })?;
    tracing::info!(id = %finding.id, key = %finding.key, kind = %finding.kind, duplicate = published.duplicate, "finding published");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "published",
            "id": finding.id,
            "key": finding.key,
            "subject": subject,
            "duplicate": published.duplicate,
        })),
    )
        .into_response())
}
