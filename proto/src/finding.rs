//! `Finding` v1: what a scanner saw. Published to `quench.findings.<kind>`; the runner parses it
//! with [`Finding::parse`] (size cap, JSON, schema tag, fields, identity, redaction) before
//! anything else touches it, so a finding in the store, a log line or a Slack message is always
//! a checked, redacted one.
//!
//! The checks are the generated JSON Schema (`proto/schema/finding.v1.json`): every limit and
//! pattern below is also a schema keyword, so a scanner validating against the schema and quench
//! agree on every finding. Two caps are byte sizes JSON Schema cannot state: the whole message
//! (64 KiB by default) and the serialized `evidence` (16 KiB); both are in the descriptions.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex::Regex;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{
    InvalidField, ParseError, TEXT_PATTERN, TOKEN_PATTERN, check_len, check_schema_tag,
    check_token, from_value,
};
use crate::redact::{PLAIN_SECRET_PATTERN, contains_secret, redact_str, redact_value};

/// Findings larger than this are refused unless the operator configures another limit.
pub const DEFAULT_MAX_FINDING_BYTES: usize = 64 * 1024;
/// Cap on the serialized size of `evidence`, so one finding cannot bloat every run that holds it.
const MAX_EVIDENCE_BYTES: usize = 16 * 1024;
/// Levels of nesting in `evidence`, the evidence object itself being the first.
const MAX_EVIDENCE_DEPTH: usize = 8;
const MAX_LABELS: usize = 64;
const MAX_LABEL_VALUE: usize = 256;
const MAX_ID: usize = 128;
const MAX_KEY: usize = 256;

// Patterns shared by the checks below and the generated JSON Schema, so both say the same.
const KIND_PATTERN: &str = r"^[a-z0-9_-]+(\.[a-z0-9_-]+){1,7}$";
const PROVIDER_PATTERN: &str = r"^[a-z0-9_-]{1,32}$";
const LABEL_KEY_PATTERN: &str = r"^[A-Za-z0-9_./-]{1,64}$";
const SLACK_USER_PATTERN: &str = r"^[UW][A-Z0-9]{2,20}$";
const URL_PATTERN: &str = r"^https?://[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";
const EMAIL_PATTERN: &str =
    r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*@[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";

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
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(EMAIL_PATTERN).expect("email pattern compiles"));
static PLAIN_SECRET: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&PLAIN_SECRET_PATTERN).expect("secret pattern compiles"));

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
#[schemars(
    title = "quench finding v1",
    description = "One detection event from a scanner (or from a scheduled quench review). \
        Names are unique in every object (I-JSON, RFC 7493): a finding that repeats one is \
        refused. At most 64 KiB as sent."
)]
pub struct Finding {
    pub schema: FindingSchema,
    /// Unique id of this detection event; also sent as `Nats-Msg-Id` so JetStream drops re-sends.
    /// One that holds a secret-shaped string is stored redacted, with `~` and a SHA-256 digest
    /// of the id as sent, so distinct ids stay distinct.
    #[schemars(length(min = 1, max = 128), regex(pattern = TOKEN_PATTERN))]
    pub id: String,
    /// Identity of the underlying problem across repeated detections, e.g.
    /// `openai:project_key:key_abc`: the unit of dedupe and of per-key concurrency.
    /// Defaults to `<kind>:<resource.id>`. Redacted like `id`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256), regex(pattern = TEXT_PATTERN))]
    pub key: String,
    /// Dotted taxonomy, e.g. `openai.api_key.leaked`; never a secret-shaped string.
    #[schemars(regex(pattern = KIND_PATTERN), length(max = 128), extend("not" = { "pattern": PLAIN_SECRET_PATTERN.as_str() }))]
    pub kind: String,
    #[serde(default)]
    pub status: Status,
    pub severity: Severity,
    /// Short human text.
    #[schemars(length(min = 1, max = 300), regex(pattern = TEXT_PATTERN))]
    pub title: String,
    /// When the scanner saw it (RFC 3339).
    #[serde(deserialize_with = "rfc3339")]
    pub detected_at: DateTime<Utc>,
    pub source: Source,
    pub resource: Resource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Bounded free-form detail (at most 16 KiB serialized, at most 8 levels of objects and
    /// arrays, this object being the first).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schemars(schema_with = "evidence_schema")]
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// String labels (at most 64; names of `A-Z a-z 0-9 _ . / -`, not secret-shaped; values up
    /// to 256 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_LABELS,
        "propertyNames" = { "pattern": LABEL_KEY_PATTERN, "not": { "pattern": PLAIN_SECRET_PATTERN.as_str() } },
        "additionalProperties" = { "type": "string", "maxLength": MAX_LABEL_VALUE, "pattern": TEXT_PATTERN },
    ))]
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
    #[schemars(length(min = 1, max = 64), regex(pattern = TEXT_PATTERN))]
    pub scanner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = TEXT_PATTERN))]
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
    #[schemars(regex(pattern = PROVIDER_PATTERN), extend("not" = { "pattern": PLAIN_SECRET_PATTERN.as_str() }))]
    pub provider: String,
    #[serde(rename = "type")]
    pub kind: ResourceType,
    #[schemars(length(min = 1, max = 256), regex(pattern = TEXT_PATTERN))]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = TEXT_PATTERN))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = TEXT_PATTERN))]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = TEXT_PATTERN))]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = TEXT_PATTERN))]
    pub service_account_id: Option<String>,
    /// The provider's redacted form of the secret, e.g. `sk-abc...def`; never the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = TEXT_PATTERN))]
    pub redacted_value: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_rfc3339"
    )]
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
    /// An address with an `@`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254), regex(pattern = EMAIL_PATTERN))]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SLACK_USER_PATTERN))]
    pub slack_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = TEXT_PATTERN))]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = TEXT_PATTERN))]
    pub name: Option<String>,
}

impl Finding {
    /// Parses a finding as it arrives from the outside: size cap, JSON (no repeated names),
    /// schema tag, every field as sent, the default `key`, then identity and redaction. The
    /// checks see the values as sent, so the verdict is the JSON Schema's; `id` and `key` are
    /// fixed before redaction (see [`identity`]), so two findings that differ only inside a
    /// secret stay two findings. Neither the result nor an error message carries a live secret.
    pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Finding, ParseError> {
        let value = crate::json::message(bytes, max_bytes)?;
        check_schema_tag(&value, FindingSchema::TAG)?;
        let finding: Finding = from_value(value).map_err(InvalidField::redacted)?;
        finding.accepted(bytes)
    }

    /// Checks a finding built in code (a gateway mapping a scanner's own format) as
    /// [`Finding::parse`] checks one that arrives as bytes: the size cap on its JSON, the
    /// default `key`, every field, then identity and redaction.
    pub fn checked(self, max_bytes: usize) -> Result<Finding, ParseError> {
        let bytes = serde_json::to_vec(&self)
            .map_err(|error| InvalidField::new("", error.to_string()).redacted())?;
        if bytes.len() > max_bytes {
            return Err(ParseError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        self.accepted(&bytes)
    }

    /// What [`Finding::parse`] and [`Finding::checked`] do once the finding is typed; `bytes`
    /// is its JSON.
    fn accepted(mut self, bytes: &[u8]) -> Result<Finding, ParseError> {
        self.fill_defaults();
        self.validate().map_err(InvalidField::redacted)?;
        // Most findings quote no key: skip the redaction pass when the raw bytes show none
        // (`contains_secret` sees every way JSON can write one).
        if contains_secret(bytes) {
            self = self.redacted()?;
        }
        Ok(self)
    }

    /// Fills the fields whose default depends on others (`key`).
    /// The default key is made like an [`identity`], so it fits the 256 characters of `key`
    /// (`kind` and `resource.id` together may not) and holds nothing secret-shaped.
    pub fn fill_defaults(&mut self) {
        if self.key.is_empty() {
            self.key = identity(&format!("{}:{}", self.kind, self.resource.id), MAX_KEY);
        }
    }

    /// The same finding with every secret-shaped string redacted, `id` and `key` as their
    /// [`identity`]. Redaction never lengthens a string, so the result is still valid; it is
    /// checked again all the same, so what quench writes quench reads.
    fn redacted(self) -> Result<Finding, ParseError> {
        let id = identity(&self.id, MAX_ID);
        let key = identity(&self.key, MAX_KEY);
        let mut value = serde_json::to_value(self)
            .map_err(|error| InvalidField::new("", error.to_string()).redacted())?;
        redact_value(&mut value);
        let mut finding: Finding = from_value(value).map_err(InvalidField::redacted)?;
        finding.id = id;
        finding.key = key;
        finding.validate().map_err(InvalidField::redacted)?;
        Ok(finding)
    }

    /// Checks every field against the v1 contract and names the first that fails.
    pub fn validate(&self) -> Result<(), InvalidField> {
        check_token("id", &self.id, MAX_ID)?;
        check_len("key", &self.key, 1, MAX_KEY)?;
        check_len("kind", &self.kind, 1, 128)?;
        if !KIND.is_match(&self.kind) {
            return Err(InvalidField::new(
                "kind",
                "must be 2 to 8 dot-separated lowercase words, e.g. `openai.api_key.leaked`",
            ));
        }
        not_secret("kind", &self.kind)?;
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
        not_secret("resource.provider", &resource.provider)?;
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
            if let Some(email) = &owner.email {
                check_len("owner.email", email, 3, 254)?;
                if !EMAIL.is_match(email) {
                    return Err(InvalidField::new("owner.email", "must be an email address"));
                }
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
        let levels = 1 + self.evidence.values().map(depth).max().unwrap_or(0);
        if levels > MAX_EVIDENCE_DEPTH {
            return Err(InvalidField::new(
                "evidence",
                format!("nests {levels} levels deep, more than the limit of {MAX_EVIDENCE_DEPTH}"),
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
            not_secret(&format!("labels.{key}"), key)?;
            check_len(&format!("labels.{key}"), value, 0, MAX_LABEL_VALUE)?;
        }
        Ok(())
    }
}

/// `raw` as an identity (`id`, `key`) safe to store and within `max` characters: itself when
/// it holds nothing secret-shaped and fits; else its redacted form, cut to fit, then `~` and the
/// first 128 bits of the SHA-256 of `raw` in hex. The digest keeps distinct values distinct
/// (two keys that share their last four characters redact alike) and stable (the same value,
/// the same identity), and reveals nothing of a key of 100 random characters.
fn identity(raw: &str, max: usize) -> String {
    let shown = redact_str(raw);
    if matches!(shown, Cow::Borrowed(_)) && raw.chars().count() <= max {
        return raw.to_owned();
    }
    let digest = hex::encode(&Sha256::digest(raw.as_bytes())[..16]);
    let shown: String = shown
        .chars()
        .take(max.saturating_sub(digest.len() + 1))
        .collect();
    format!("{shown}~{digest}")
}

/// Fields that name things (kinds, providers, label names) cannot be redacted and stay valid:
/// one that holds a key shape is refused (the schema says so with `not`).
fn not_secret(field: &str, value: &str) -> Result<(), InvalidField> {
    if PLAIN_SECRET.is_match(value) {
        return Err(InvalidField::new(
            field,
            "must not contain a secret-shaped string",
        ));
    }
    Ok(())
}

/// `evidence`'s schema: an object whose values nest at most `MAX_EVIDENCE_DEPTH - 1` levels of
/// arrays and objects, spelled out level by level (`EvidenceN` holds at most N levels).
fn evidence_schema(generator: &mut SchemaGenerator) -> Schema {
    let levels = MAX_EVIDENCE_DEPTH - 1;
    // `/$defs` or `/definitions`, as the generator's draft says.
    let path = generator.settings().definitions_path.to_string();
    let definitions = generator.definitions_mut();
    definitions.insert(
        "Evidence0".to_owned(),
        json_schema!({"not": {"type": ["array", "object"]}}).to_value(),
    );
    for level in 1..=levels {
        let inner = format!("#{path}/Evidence{}", level - 1);
        definitions.insert(
            format!("Evidence{level}"),
            json_schema!({
                "items": {"$ref": inner},
                "additionalProperties": {"$ref": inner},
            })
            .to_value(),
        );
    }
    json_schema!({
        "type": "object",
        "additionalProperties": {"$ref": format!("#{path}/Evidence{levels}")},
    })
}

fn optional(value: &Option<String>, field: &str, max: usize) -> Result<(), InvalidField> {
    match value {
        Some(value) => check_len(field, value, 1, max),
        None => Ok(()),
    }
}

/// A time as RFC 3339 and the schema's `date-time` say: chrono also takes a space for the `T`.
fn rfc3339<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
        return Err(serde::de::Error::custom(
            "expected an RFC 3339 time such as `2026-11-20T10:00:00Z`",
        ));
    }
    DateTime::parse_from_rfc3339(&text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

fn optional_rfc3339<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    #[derive(Deserialize)]
    struct Time(#[serde(deserialize_with = "rfc3339")] DateTime<Utc>);
    Ok(Option::<Time>::deserialize(deserializer)?.map(|Time(time)| time))
}

/// Levels of arrays and objects in `value` (0 for a scalar).
fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
