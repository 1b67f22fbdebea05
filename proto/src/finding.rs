//! `Finding` v1: what a scanner saw. Published to `quench.findings.<kind>`; the runner parses it
//! with [`Finding::parse`] (size cap, JSON, schema tag, fields, redaction) before anything else
//! touches it, so a finding in the store, a log line or a Slack message is always a checked one.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{
    InvalidField, ParseError, check_len, check_schema_tag, check_token, from_value,
};
use crate::redact::redact_value;

/// Findings larger than this are refused unless the operator configures another limit.
pub const DEFAULT_MAX_FINDING_BYTES: usize = 64 * 1024;
/// Cap on the serialized size of `evidence`, so one finding cannot bloat every run that holds it.
const MAX_EVIDENCE_BYTES: usize = 16 * 1024;
const MAX_EVIDENCE_DEPTH: usize = 8;
const MAX_LABELS: usize = 64;

// Patterns shared by the checks below and the generated JSON Schema, so both say the same.
const KIND_PATTERN: &str = r"^[a-z0-9_-]+(\.[a-z0-9_-]+){1,7}$";
const PROVIDER_PATTERN: &str = r"^[a-z0-9_-]{1,32}$";
const LABEL_KEY_PATTERN: &str = r"^[A-Za-z0-9_./-]{1,64}$";
const SLACK_USER_PATTERN: &str = r"^[UW][A-Z0-9]{2,20}$";
const URL_PATTERN: &str = r"^https?://";

static KIND: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(KIND_PATTERN).expect("kind pattern compiles"));
static PROVIDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(PROVIDER_PATTERN).expect("provider pattern compiles"));
static LABEL_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(LABEL_KEY_PATTERN).expect("label pattern compiles"));
static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(URL_PATTERN).expect("url pattern compiles"));
static SLACK_USER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(SLACK_USER_PATTERN).expect("slack id pattern compiles"));

/// The `schema` tag of a finding; only v1 exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FindingSchema {
    #[default]
    #[serde(rename = "quench.finding/v1")]
    V1,
}

impl FindingSchema {
    pub const TAG: &'static str = "quench.finding/v1";
}

/// One detection event from a scanner (or from a scheduled quench review).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "quench finding v1")]
pub struct Finding {
    pub schema: FindingSchema,
    /// Unique id of this detection event; also sent as `Nats-Msg-Id` so JetStream drops re-sends.
    #[schemars(length(min = 1, max = 128))]
    pub id: String,
    /// Identity of the underlying problem across repeated detections, e.g.
    /// `openai:project_key:key_abc`: the unit of dedupe and of per-key concurrency.
    /// Defaults to `<kind>:<resource.id>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    pub key: String,
    /// Dotted taxonomy, e.g. `openai.api_key.leaked`.
    #[schemars(regex(pattern = KIND_PATTERN), length(max = 128))]
    pub kind: String,
    #[serde(default)]
    pub status: Status,
    pub severity: Severity,
    /// Short human text.
    #[schemars(length(min = 1, max = 300))]
    pub title: String,
    /// When the scanner saw it (RFC 3339).
    pub detected_at: DateTime<Utc>,
    pub source: Source,
    pub resource: Resource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Bounded free-form detail (at most 16 KiB serialized, nesting depth 8).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// String labels (at most 64; names of `A-Z a-z 0-9 _ . / -`, values up to 256 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_LABELS, "propertyNames" = { "pattern": LABEL_KEY_PATTERN }))]
    pub labels: BTreeMap<String, String>,
}

/// `resolved` means the scanner no longer sees the problem; a waiting run may close itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Open,
    Resolved,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// Where the problem was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[schemars(length(min = 1, max = 64))]
    pub scanner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub url: Option<String>,
}

/// The credential or identity the finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// `openai` for everything quench remediates today; other providers appear in findings
    /// from generic secret scanners.
    #[schemars(regex(pattern = PROVIDER_PATTERN))]
    pub provider: String,
    #[serde(rename = "type")]
    pub kind: ResourceType,
    #[schemars(length(min = 1, max = 256))]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_id: Option<String>,
    /// The provider's redacted form of the secret, e.g. `sk-abc...def`; never the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    ApiKey,
    AdminKey,
    ServiceAccount,
    Project,
    User,
    Integration,
    /// A secret of another provider, reported by a generic secret scanner.
    Secret,
}

/// Who answers for the resource; the approval DM goes here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254))]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SLACK_USER_PATTERN))]
    pub slack_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Finding {
    /// Parses a finding as it arrives from the outside: size cap, JSON, schema tag, every field,
    /// then the default `key`. Secret-shaped strings are redacted *before* the typed parse, so
    /// neither the result nor an error message can carry a live secret.
    pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Finding, ParseError> {
        if bytes.len() > max_bytes {
            return Err(ParseError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| ParseError::Json(error.to_string()))?;
        redact_value(&mut value);
        check_schema_tag(&value, FindingSchema::TAG)?;
        let mut finding: Finding = from_value(value)?;
        finding.fill_defaults();
        finding.validate()?;
        Ok(finding)
    }

    /// Fills the fields whose default depends on others (`key`).
    pub fn fill_defaults(&mut self) {
        if self.key.is_empty() {
            self.key = format!("{}:{}", self.kind, self.resource.id);
        }
    }

    /// Checks every field against the v1 contract and names the first that fails.
    pub fn validate(&self) -> Result<(), InvalidField> {
        check_token("id", &self.id, 128)?;
        check_len("key", &self.key, 1, 256)?;
        check_len("kind", &self.kind, 1, 128)?;
        if !KIND.is_match(&self.kind) {
            return Err(InvalidField::new(
                "kind",
                "must be 2 to 8 dot-separated lowercase words, e.g. `openai.api_key.leaked`",
            ));
        }
        check_len("title", &self.title, 1, 300)?;
        check_len("source.scanner", &self.source.scanner, 1, 64)?;
        optional(&self.source.rule, "source.rule", 200)?;
        if let Some(url) = &self.source.url {
            check_len("source.url", url, 1, 2048)?;
            if !URL.is_match(url) {
                return Err(InvalidField::new("source.url", "must be an http(s) URL"));
            }
        }
        let resource = &self.resource;
        if !PROVIDER.is_match(&resource.provider) {
            return Err(InvalidField::new(
                "resource.provider",
                "must be a lowercase word of at most 32 characters, e.g. `openai`",
            ));
        }
        check_len("resource.id", &resource.id, 1, 256)?;
        optional(&resource.name, "resource.name", 256)?;
        optional(&resource.org_id, "resource.org_id", 128)?;
        optional(&resource.project_id, "resource.project_id", 128)?;
        optional(
            &resource.service_account_id,
            "resource.service_account_id",
            128,
        )?;
        optional(&resource.redacted_value, "resource.redacted_value", 64)?;
        if let Some(owner) = &self.owner {
            optional(&owner.email, "owner.email", 254)?;
            if owner
                .email
                .as_deref()
                .is_some_and(|email| !email.contains('@'))
            {
                return Err(InvalidField::new("owner.email", "must be an email address"));
            }
            if let Some(id) = &owner.slack_user_id
                && !SLACK_USER.is_match(id)
            {
                return Err(InvalidField::new(
                    "owner.slack_user_id",
                    "must be a Slack user id such as `U0123ABCD`",
                ));
            }
            optional(&owner.team, "owner.team", 128)?;
            optional(&owner.name, "owner.name", 128)?;
        }
        let evidence = serde_json::to_vec(&self.evidence)
            .map(|bytes| bytes.len())
            .unwrap_or(0);
        if evidence > MAX_EVIDENCE_BYTES {
            return Err(InvalidField::new(
                "evidence",
                format!("is {evidence} bytes, larger than the limit of {MAX_EVIDENCE_BYTES}"),
            ));
        }
        if self
            .evidence
            .values()
            .any(|value| depth(value) > MAX_EVIDENCE_DEPTH)
        {
            return Err(InvalidField::new(
                "evidence",
                format!("nests deeper than {MAX_EVIDENCE_DEPTH} levels"),
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(InvalidField::new(
                "labels",
                format!(
                    "has {} entries, more than the limit of {MAX_LABELS}",
                    self.labels.len()
                ),
            ));
        }
        for (key, value) in &self.labels {
            if !LABEL_KEY.is_match(key) {
                return Err(InvalidField::new(
                    format!("labels.{key}"),
                    "label names are 1 to 64 of `A-Z a-z 0-9 _ . / -`",
                ));
            }
            check_len(&format!("labels.{key}"), value, 0, 256)?;
        }
        Ok(())
    }
}

fn optional(value: &Option<String>, field: &str, max: usize) -> Result<(), InvalidField> {
    match value {
        Some(value) => check_len(field, value, 1, max),
        None => Ok(()),
    }
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
