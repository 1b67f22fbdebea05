//! Putting findings on NATS: the `finding.publish` action (scheduled reviews feed their
//! discoveries back as findings) and `quench publish` (a scanner's files, or a demo's). Every
//! finding is parsed and redacted first and carries its id as `Nats-Msg-Id`.

use std::path::Path;

use async_nats::jetstream;
use quench_proto::{DEFAULT_MAX_FINDING_BYTES, Finding, subject};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::engine::{Action, ActionError, ActionFuture, Call, Success};

/// One finding read for publishing: where it came from, and the finding or why it is invalid.
pub type ReadFinding = (String, Result<Finding, String>);

/// What became of one published finding.
#[derive(Debug, Clone)]
pub struct PublishReport {
    /// Where it came from (file and position).
    pub origin: String,
    pub id: Option<String>,
    pub outcome: Result<String, String>,
}

/// Publishes one finding; returns the stream sequence, or that JetStream dropped it as a repeat.
pub(crate) async fn publish(
    jetstream: &jetstream::Context,
    finding: &Finding,
) -> Result<String, String> {
    let body = serde_json::to_vec(finding).map_err(|error| error.to_string())?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(subject::HEADER_MSG_ID, finding.id.as_str());
    let no_stream = |error: String| {
        let lower = error.to_lowercase();
        if lower.contains("no responders") || lower.contains("no stream found") {
            format!(
                "no JetStream stream takes {} (start `quench serve` once: it creates {})",
                subject::finding(&finding.kind),
                subject::STREAM_FINDINGS
            )
        } else {
            error
        }
    };
    let ack = jetstream
        .publish_with_headers(subject::finding(&finding.kind), headers, body.into())
        .await
        .map_err(|error| no_stream(error.to_string()))?
        .await
        .map_err(|error| no_stream(error.to_string()))?;
    Ok(if ack.duplicate {
        format!("duplicate of an earlier publish (seq {})", ack.sequence)
    } else {
        format!("{} seq {}", ack.stream, ack.sequence)
    })
}

/// Publishes each item's finding in order until one fails: the items sent, and the error that
/// stopped the rest (the caller records what went out either way).
pub(crate) async fn publish_in_order<T>(
    jetstream: &jetstream::Context,
    items: Vec<T>,
    finding: impl Fn(&T) -> &Finding,
) -> (Vec<T>, Option<String>) {
    let mut sent = Vec::with_capacity(items.len());
    for item in items {
        if let Err(error) = publish(jetstream, finding(&item)).await {
            return (sent, Some(error));
        }
        sent.push(item);
    }
    (sent, None)
}

/// `finding.publish`: builds a finding from the rendered inputs, with an id derived from the
/// idempotency key so a re-executed step publishes the same finding (and JetStream drops it).
#[derive(Debug)]
pub(crate) struct PublishAction {
    jetstream: jetstream::Context,
}

impl PublishAction {
    pub(crate) fn new(jetstream: jetstream::Context) -> PublishAction {
        PublishAction { jetstream }
    }
}

impl Action for PublishAction {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            let mut value = call.input.clone();
            let Some(object) = value.as_object_mut() else {
                return Err(ActionError::permanent(
                    "finding.publish needs a mapping of finding fields",
                ));
            };
            let id = format!(
                "quench-{}",
                &hex::encode(Sha256::digest(call.idempotency_key.as_bytes()))[..32]
            );
            object.insert("schema".into(), Value::from("quench.finding/v1"));
            object.insert("id".into(), Value::from(id));
            object
                .entry("detected_at")
                .or_insert_with(|| Value::from(chrono::Utc::now().to_rfc3339()));
            object
                .entry("source")
                .or_insert_with(|| json!({"scanner": "quench", "rule": call.run_id}));
            // Absent optional fields may arrive as null from templates; the contract omits them.
            object.retain(|_, field| !field.is_null());
            let bytes = serde_json::to_vec(&value)
                .map_err(|error| ActionError::permanent(error.to_string()))?;
            let finding = Finding::parse(&bytes, DEFAULT_MAX_FINDING_BYTES).map_err(|error| {
                ActionError::permanent(format!("the finding is not valid: {error}"))
            })?;
            let published = publish(&self.jetstream, &finding)
                .await
                .map_err(ActionError::retryable)?;
            Ok(Success::new(
                json!({"id": finding.id, "subject": subject::finding(&finding.kind), "ack": published}),
            ))
        })
    }
}

/// Reads findings from a JSON file (one finding or a list), a JSON-lines file, a directory of
/// such files, or `-` for standard input. Each entry is parsed (and redacted) on its own.
pub fn read_findings(path: &Path) -> Result<Vec<ReadFinding>, std::io::Error> {
    let mut out = Vec::new();
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        parse_text("stdin", &text, &mut out);
    } else if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("json" | "jsonl" | "ndjson")
                )
            })
            .collect();
        files.sort();
        for file in files {
            parse_text(
                &file.display().to_string(),
                &std::fs::read_to_string(&file)?,
                &mut out,
            );
        }
    } else {
        parse_text(
            &path.display().to_string(),
            &std::fs::read_to_string(path)?,
            &mut out,
        );
    }
    Ok(out)
}

fn parse_text(origin: &str, text: &str, out: &mut Vec<ReadFinding>) {
    let parse = |bytes: &[u8]| {
        Finding::parse(bytes, DEFAULT_MAX_FINDING_BYTES).map_err(|error| error.to_string())
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                out.push((
                    format!("{origin}[{index}]"),
                    parse(item.to_string().as_bytes()),
                ));
            }
        }
        Ok(_) => out.push((origin.to_owned(), parse(text.as_bytes()))),
        Err(_) => {
            for (number, line) in text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
            {
                out.push((format!("{origin}:{}", number + 1), parse(line.as_bytes())));
            }
        }
    }
}

/// Publishes the valid findings; invalid ones are reported and not sent.
pub async fn publish_findings(
    jetstream: &jetstream::Context,
    findings: Vec<(String, Result<Finding, String>)>,
) -> Vec<PublishReport> {
    let mut reports = Vec::with_capacity(findings.len());
    for (origin, finding) in findings {
        let report = match finding {
            Ok(finding) => {
                let outcome = publish(jetstream, &finding).await;
                PublishReport {
                    origin,
                    id: Some(finding.id),
                    outcome,
                }
            }
            Err(error) => PublishReport {
                origin,
                id: None,
                outcome: Err(format!("not sent: {error}")),
            },
        };
        reports.push(report);
    }
    reports
}
