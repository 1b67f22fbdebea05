//! `POST /webhooks/github`: GitHub secret scanning. The body is verified against
//! `X-Hub-Signature-256` (`gateway.github_secret`), then [`map`] turns the event into a
//! finding:
//!
//! - `secret_scanning_alert` `created`, `reopened`, `resolved`, `revoked` and
//!   `secret_scanning_alert_location` `created` become findings; `ping` is answered; anything
//!   else is acknowledged (202) and ignored.
//! - OpenAI secret types (`openai_api_key`, any `openai_*`) become `openai.api_key.leaked`, other
//!   types `secret.<type>.leaked`.
//! - The finding's `key` and `resource.id` are `github:<repository id>:alert:<number>`: the same
//!   for every event of one alert, and unchanged when the repository is renamed. Its `id` is
//!   the `X-GitHub-Delivery` id, which is also the `Nats-Msg-Id`.
//! - `status` is `resolved` when the secret is dead or never was one — action `revoked`, or
//!   `resolved` as `revoked` or `false_positive` — so a waiting run may close. A `resolved`
//!   alert marked `wont_fix` or `used_in_tests` (or any other resolution) stays `open`: the
//!   secret is still where it was found and still works, so it still needs remediation; the
//!   resolution travels in the labels for the playbook to see.
//! - The secret itself (GitHub may include `alert.secret`) never enters the finding; only its
//!   redacted form, for OpenAI key shapes, as `resource.redacted_value`.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use quench_proto::{
    DEFAULT_MAX_FINDING_BYTES, Finding, FindingSchema, Resource, ResourceType, Severity, Source,
    Status, redact_str,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::findings::publish_finding;
use crate::publish::Publisher;
use crate::refusal::Refusal;
use crate::signature::verify_github;

/// GitHub's event-name header.
pub const EVENT_HEADER: &str = "x-github-event";
/// GitHub's delivery-id header.
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// The scanner name findings from GitHub carry.
pub const SCANNER: &str = "github-secret-scanning";

/// What a GitHub event amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A finding to publish.
    Finding(Box<Finding>),
    /// GitHub checking the hook.
    Ping,
    /// An event or action quench does not handle; why, in words.
    Ignored(String),
}

/// An event that should be a finding but cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the {event} payload does not have the expected shape: {problem}")]
    Shape { event: String, problem: String },
    #[error("the delivery id must be 1 to 128 letters, digits, `-` or `_`")]
    Delivery,
    #[error("the mapped finding is not valid: {0}")]
    Finding(String),
}

#[derive(Debug, Deserialize)]
struct Event {
    action: String,
    alert: Alert,
    repository: Repository,
    location: Option<Location>,
}

#[derive(Debug, Deserialize)]
struct Alert {
    number: u64,
    secret_type: String,
    secret_type_display_name: Option<String>,
    html_url: Option<String>,
    resolution: Option<String>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    push_protection_bypassed: Option<bool>,
    /// Read only to derive its redacted form; dropped with the event.
    secret: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    id: Option<u64>,
    full_name: String,
    html_url: Option<String>,
    private: Option<bool>,
    visibility: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Location {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    details: Map<String, Value>,
}

/// Location details copied into the evidence (all of the schema's; none can hold the secret).
const LOCATION_DETAILS: &[&str] = &[
    "path",
    "start_line",
    "end_line",
    "start_column",
    "end_column",
    "blob_sha",
    "blob_url",
    "commit_sha",
    "commit_url",
    "issue_title_url",
    "issue_body_url",
    "issue_comment_url",
];

/// Maps one GitHub event (`X-GitHub-Event`, `X-GitHub-Delivery`, the JSON body) to what the
/// gateway does with it. Pure: `received_at` stands in for the clock where GitHub gives no time.
pub fn map(
    event: &str,
    delivery: &str,
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<Outcome, Error> {
    let handled = match event {
        "ping" => return Ok(Outcome::Ping),
        "secret_scanning_alert" => ["created", "reopened", "resolved", "revoked"].as_slice(),
        "secret_scanning_alert_location" => ["created"].as_slice(),
        other => {
            return Ok(Outcome::Ignored(format!(
                "event `{}` is not handled",
                printable(other)
            )));
        }
    };
    // serde quotes values it cannot read; a misplaced secret must not come back in an answer.
    let shape = |problem: String| Error::Shape {
        event: event.to_owned(),
        problem: redact_str(&problem).into_owned(),
    };
    // The action first, so an unhandled action of another shape is ignored, not refused.
    let action = serde_json::from_slice::<ActionOnly>(body)
        .map_err(|error| shape(error.to_string()))?
        .action;
    if !handled.contains(&action.as_str()) {
        return Ok(Outcome::Ignored(format!(
            "{event} action `{}` is not handled",
            printable(&action)
        )));
    }
    if delivery.is_empty()
        || delivery.len() > 128
        || !delivery
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::Delivery);
    }
    let parsed: Event = serde_json::from_slice(body).map_err(|error| shape(error.to_string()))?;
    let finding = finding(event, delivery, &parsed, received_at)
        .checked(DEFAULT_MAX_FINDING_BYTES)
        .map_err(|error| Error::Finding(error.to_string()))?;
    Ok(Outcome::Finding(Box::new(finding)))
}

#[derive(Debug, Deserialize)]
struct ActionOnly {
    action: String,
}

/// The finding an event stands for, before [`Finding::checked`].
fn finding(event: &str, delivery: &str, parsed: &Event, received_at: DateTime<Utc>) -> Finding {
    let Event {
        action,
        alert,
        repository,
        location,
    } = parsed;
    let secret_type = alert.secret_type.as_str();
    let openai = secret_type == "openai_api_key" || secret_type.starts_with("openai_");
    let type_word = word(secret_type, 100).unwrap_or_else(|| "unknown".to_owned());
    let (kind, provider, resource_type) = if openai {
        (
            "openai.api_key.leaked".to_owned(),
            "openai".to_owned(),
            ResourceType::ApiKey,
        )
    } else {
        let provider = secret_type
            .split('_')
            .next()
            .and_then(|first| word(first, 32))
            .unwrap_or_else(|| "unknown".to_owned());
        (
            format!("secret.{type_word}.leaked"),
            provider,
            ResourceType::Secret,
        )
    };
    let repo_ref = repository
        .id
        .map_or_else(|| repository.full_name.clone(), |id| id.to_string());
    let key = format!("github:{repo_ref}:alert:{}", alert.number);
    let resolved = match action.as_str() {
        "revoked" => true,
        "resolved" => matches!(
            alert.resolution.as_deref(),
            Some("revoked" | "false_positive")
        ),
        _ => false,
    };
    let public = match (&repository.visibility, repository.private) {
        (Some(visibility), _) => visibility == "public",
        (None, Some(private)) => !private,
        (None, None) => false,
    };
    let what = if openai {
        "OpenAI API key".to_owned()
    } else {
        alert
            .secret_type_display_name
            .clone()
            .unwrap_or_else(|| secret_type.to_owned())
    };
    // Redacted before it is cut: a key cut at the end may no longer look like one.
    let title: String = redact_str(&format!(
        "{what} leaked in {} (GitHub secret scanning alert #{}, {action})",
        repository.full_name, alert.number
    ))
    .chars()
    .take(300)
    .collect();
    let url = [&alert.html_url, &repository.html_url]
        .into_iter()
        .flatten()
        .find(|url| url.starts_with("https://"))
        .cloned();
    // The secret's redacted form, when it has a shape quench knows; never the secret.
    let redacted_value = alert
        .secret
        .as_deref()
        .map(redact_str)
        .filter(|redacted| matches!(redacted, std::borrow::Cow::Owned(_)))
        .map(|redacted| redacted.into_owned())
        .filter(|redacted| redacted.chars().count() <= 64);

    let mut github = Map::new();
    github.insert("event".into(), event.into());
    github.insert("action".into(), action.as_str().into());
    github.insert("delivery".into(), delivery.into());
    github.insert("alert_number".into(), alert.number.into());
    github.insert("repository".into(), repository.full_name.as_str().into());
    if let Some(id) = repository.id {
        github.insert("repository_id".into(), id.into());
    }
    github.insert("repository_public".into(), public.into());
    github.insert("secret_type".into(), secret_type.into());
    let optional = [
        ("secret_type_display_name", &alert.secret_type_display_name),
        ("alert_url", &alert.html_url),
        ("resolution", &alert.resolution),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            github.insert(name.into(), value.as_str().into());
        }
    }
    if let Some(bypassed) = alert.push_protection_bypassed {
        github.insert("push_protection_bypassed".into(), bypassed.into());
    }
    if let Some(location) = location {
        let mut details = Map::new();
        details.insert("type".into(), location.kind.as_str().into());
        for name in LOCATION_DETAILS {
            if let Some(value) = location.details.get(*name)
                && (value.is_string() || value.is_number())
            {
                details.insert((*name).into(), value.clone());
            }
        }
        github.insert("location".into(), Value::Object(details));
    }

    let mut labels = BTreeMap::new();
    labels.insert("github.repository".into(), repository.full_name.clone());
    labels.insert("github.alert".into(), alert.number.to_string());
    labels.insert("github.secret_type".into(), secret_type.to_owned());
    labels.insert("github.action".into(), action.clone());
    if let Some(resolution) = &alert.resolution {
        labels.insert("github.resolution".into(), resolution.clone());
    }

    let detected_at = match event {
        "secret_scanning_alert" if action == "created" => alert.created_at,
        "secret_scanning_alert" => alert.updated_at,
        _ => None,
    }
    .unwrap_or(received_at);

    Finding {
        schema: FindingSchema::V1,
        id: delivery.to_owned(),
        key: key.clone(),
        kind,
        status: if resolved {
            Status::Resolved
        } else {
            Status::Open
        },
        severity: if public {
            Severity::Critical
        } else {
            Severity::High
        },
        title,
        detected_at,
        source: Source {
            scanner: SCANNER.to_owned(),
            rule: Some(secret_type.to_owned()),
            url,
        },
        resource: Resource {
            provider,
            kind: resource_type,
            id: key,
            name: alert.secret_type_display_name.clone(),
            org_id: None,
            project_id: None,
            service_account_id: None,
            redacted_value,
            last_used_at: None,
        },
        owner: None,
        evidence: Map::from_iter([("github".to_owned(), Value::Object(github))]),
        labels,
    }
}

/// `text` as one lowercase word of `a-z 0-9 _ -` (other characters become `_`), at most
/// `max` long; `None` when nothing is left.
fn word(text: &str, max: usize) -> Option<String> {
    let word: String = text
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    (!word.is_empty()).then_some(word)
}

/// A caller-chosen name, safe to echo: redacted, printable ASCII, at most 64 characters.
fn printable(text: &str) -> String {
    redact_str(text)
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// Handles a request the server admitted (endpoint configured, client within its rate, body
/// within the cap).
pub(crate) async fn receive(
    publisher: &Publisher,
    secret: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    verify_github(secret, headers, &body)?;
    let text = |name: &'static str| -> Result<&str, Refusal> {
        headers
            .get(name)
            .ok_or(Refusal::MissingHeader(name))?
            .to_str()
            .map_err(|_| Refusal::BadRequest(format!("header {name} is not text")))
    };
    let event = text(EVENT_HEADER)?;
    let delivery = text(DELIVERY_HEADER)?;
    // GitHub sends JSON, or a form with the JSON in `payload`, as the hook is configured.
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let json = if form {
        url::form_urlencoded::parse(&body)
            .find(|(name, _)| name == "payload")
            .map(|(_, value)| value.into_owned().into_bytes())
            .ok_or_else(|| {
                Refusal::BadRequest("expected a form with a `payload` field".to_owned())
            })?
    } else {
        body.to_vec()
    };
    match map(event, delivery, &json, Utc::now()) {
        Ok(Outcome::Ping) => Ok((StatusCode::OK, Json(json!({"status": "pong"}))).into_response()),
        Ok(Outcome::Ignored(reason)) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"status": "ignored", "reason": reason})),
        )
            .into_response()),
        Ok(Outcome::Finding(finding)) => publish_finding(publisher, &finding, delivery).await,
        Err(error @ Error::Finding(_)) => Err(Refusal::Unprocessable(error.to_string())),
        Err(error) => Err(Refusal::BadRequest(error.to_string())),
    }
}
