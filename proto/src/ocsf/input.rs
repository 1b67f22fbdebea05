//! OCSF findings in: the attributes quench reads from a Compliance Finding (2003), Detection
//! Finding (2004) or IAM Analysis Finding (2008), and the mapping to Finding v1 (the table is
//! `docs/ocsf.md`). The event is read leniently (attributes quench does not read are ignored,
//! `null` is absent), but every attribute it reads must have its OCSF type; the finding it maps
//! to is then checked like any other ([`Finding::checked`]). A refusal names the OCSF attribute
//! that could not be mapped (`finding_info.uid`, `severity_id`, `unmapped.quench_kind`, …).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::DEFAULT_MAX_FINDING_BYTES;
use crate::error::{InvalidField, ParseError, from_value};
use crate::finding::{
    Finding, FindingSchema, Owner, Resource, ResourceType, Severity, Source, Status,
};
use crate::redact::redact_str;

/// OCSF events larger than this are refused: Security Hub findings carry many optional objects,
/// so the cap is above a native finding's, and only a bounded part is kept as evidence.
pub const MAX_OCSF_BYTES: usize = 256 * 1024;

/// At most this many `finding_info.types` are kept in the evidence, each cut to
/// [`MAX_TEXT`] characters.
const MAX_TYPES: usize = 8;
const MAX_TEXT: usize = 200;
/// `message` and `remediation.desc` kept in the evidence, cut to this many characters.
const MAX_MESSAGE: usize = 1000;

/// Parses an OCSF finding event and maps it to a checked, redacted [`Finding`]: size cap, JSON
/// (no repeated names), the attributes quench reads, the mapping, then [`Finding::checked`].
/// An error names the OCSF attribute, and, like [`Finding::parse`]'s, holds no live key.
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Finding, ParseError> {
    let value = crate::json::message(bytes, max_bytes)?;
    if !value.is_object() {
        return Err(
            InvalidField::new("", "expected a JSON object (one OCSF event)")
                .redacted()
                .into(),
        );
    }
    let event: Event = from_value(value).map_err(InvalidField::redacted)?;
    let (finding, sources) = event.map().map_err(InvalidField::redacted)?;
    finding
        .checked(DEFAULT_MAX_FINDING_BYTES)
        .map_err(|error| match error {
            // Name the OCSF attribute the failing field came from.
            ParseError::Invalid(invalid) => ParseError::Invalid(sources.rename(invalid)),
            other => other,
        })
}

/// The OCSF classes quench takes, by `class_uid`.
fn class_name(class_uid: i64) -> Option<&'static str> {
    match class_uid {
        2003 => Some("compliance_finding"),
        2004 => Some("detection_finding"),
        2008 => Some("iam_analysis_finding"),
        _ => None,
    }
}

/// The base event and finding attributes quench reads.
#[derive(Debug, Deserialize)]
struct Event {
    class_uid: i64,
    #[serde(default)]
    activity_id: Option<i64>,
    severity_id: i64,
    #[serde(default)]
    status_id: Option<i64>,
    /// Milliseconds since the epoch (`timestamp_t`).
    time: i64,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
    finding_info: FindingInfo,
    #[serde(default)]
    resources: Option<Vec<ResourceDetails>>,
    #[serde(default)]
    cloud: Option<Cloud>,
    /// IAM Analysis Finding: the identity analysed.
    #[serde(default)]
    user: Option<User>,
    /// IAM Analysis Finding: when the identity and its credentials were last used.
    #[serde(default)]
    identity_activity_metrics: Option<ActivityMetrics>,
    #[serde(default)]
    remediation: Option<Remediation>,
    #[serde(default)]
    unmapped: Option<Unmapped>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    product: Option<Product>,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Product {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    vendor_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FindingInfo {
    uid: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    analytic: Option<Analytic>,
    #[serde(default)]
    src_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Analytic {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ResourceDetails {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// Free-form (`json_t`); quench reads `project_id` and `redacted_value` when they are strings.
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    owner: Option<User>,
}

#[derive(Debug, Deserialize)]
struct Cloud {
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    account: Option<Account>,
}

#[derive(Debug, Deserialize)]
struct Account {
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct User {
    #[serde(default)]
    email_addr: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    programmatic_credentials: Option<Vec<Credential>>,
}

#[derive(Debug, Deserialize)]
struct ActivityMetrics {
    #[serde(default)]
    programmatic_credentials: Option<Vec<Credential>>,
}

#[derive(Debug, Deserialize)]
struct Credential {
    uid: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    last_used_time: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Remediation {
    #[serde(default)]
    desc: Option<String>,
}

/// `unmapped`: free-form, of which quench reads its own override.
#[derive(Debug, Deserialize)]
struct Unmapped {
    /// The quench finding kind, e.g. `openai.api_key.leaked`, instead of the derived one.
    #[serde(default)]
    quench_kind: Option<String>,
}

/// Where each Finding field came from, so a check that fails names the OCSF attribute.
#[derive(Debug, Default)]
struct Sources(BTreeMap<&'static str, String>);

impl Sources {
    fn set(&mut self, field: &'static str, attribute: impl Into<String>) {
        self.0.insert(field, attribute.into());
    }

    fn rename(&self, invalid: InvalidField) -> InvalidField {
        let attribute = self
            .0
            .iter()
            .find(|(field, _)| {
                invalid.field == **field || invalid.field.starts_with(&format!("{field}."))
            })
            .map(|(_, attribute)| attribute.clone());
        match attribute {
            Some(attribute) => InvalidField::new(
                attribute,
                format!("{} (mapped to `{}`)", invalid.problem, invalid.field),
            ),
            None => invalid,
        }
    }
}

/// The credential the finding is about, and where in the event it was found.
struct Subject<'a> {
    uid: &'a str,
    path: String,
    kind: Option<&'a str>,
    name: Option<&'a str>,
    last_used: Option<i64>,
    data: Option<&'a Value>,
    owner: Option<&'a User>,
}

impl Event {
    fn map(&self) -> Result<(Finding, Sources), InvalidField> {
        let mut sources = Sources::default();
        let class = class_name(self.class_uid).ok_or_else(|| {
            InvalidField::new(
                "class_uid",
                format!(
                    "is {}; quench takes Compliance Finding (2003), Detection Finding (2004) and IAM Analysis Finding (2008)",
                    self.class_uid
                ),
            )
        })?;
        let severity = match self.severity_id {
            1 => Severity::Info,
            2 => Severity::Low,
            // Unknown (0) and Other (99) say nothing: the middle of the scale.
            0 | 3 | 99 => Severity::Medium,
            4 => Severity::High,
            5 | 6 => Severity::Critical,
            other => {
                return Err(InvalidField::new(
                    "severity_id",
                    format!("is {other}, not an OCSF severity (0-6 or 99)"),
                ));
            }
        };
        let status = match (self.activity_id, self.status_id) {
            (Some(3), _) | (_, Some(3..=6)) => Status::Resolved,
            (_, None | Some(0..=2 | 99)) => Status::Open,
            (_, Some(other)) => {
                return Err(InvalidField::new(
                    "status_id",
                    format!("is {other}, not an OCSF finding status (0-6 or 99)"),
                ));
            }
        };
        let detected_at = DateTime::<Utc>::from_timestamp_millis(self.time).ok_or_else(|| {
            InvalidField::new("time", "is not a time in milliseconds since the epoch")
        })?;
        let info = &self.finding_info;
        if info.uid.is_empty() {
            return Err(InvalidField::new("finding_info.uid", "must not be empty"));
        }
        let id = self.event_id();
        sources.set("id", "finding_info.uid");
        let subject = self.subject()?;
        let provider = self.provider(&subject);
        let noun = noun(subject.kind);
        let kind = match self.unmapped.as_ref().and_then(|u| u.quench_kind.clone()) {
            Some(kind) => {
                sources.set("kind", "unmapped.quench_kind");
                kind
            }
            None => {
                sources.set("kind", "finding_info.types");
                let verb = self.verb().ok_or_else(|| {
                    InvalidField::new(
                        "finding_info.types",
                        "say neither a leak nor an unused credential (see docs/ocsf.md), and `unmapped.quench_kind` names no kind",
                    )
                })?;
                format!("{provider}.{}.{verb}", noun.0)
            }
        };
        // With an explicit kind, the provider is its first word.
        let provider = kind.split('.').next().unwrap_or(&provider).to_owned();
        sources.set("resource.id", subject.path.clone());
        let resource = Resource {
            provider,
            kind: noun.1,
            id: subject.uid.to_owned(),
            name: subject.name.map(|name| text(name, 256)),
            org_id: self
                .cloud
                .as_ref()
                .and_then(|cloud| cloud.account.as_ref())
                .and_then(|account| account.uid.as_deref())
                .map(|uid| text(uid, 128)),
            project_id: self.project_id(&subject).map(|id| text(id, 128)),
            service_account_id: None,
            redacted_value: data_string(subject.data, "redacted_value").map(|v| text(v, 64)),
            last_used_at: subject
                .last_used
                .and_then(DateTime::<Utc>::from_timestamp_millis),
        };
        sources.set("resource.project_id", "resources[].uid (type project)");
        let owner = self.owner(&subject);
        sources.set("owner", "user");
        let title = info
            .title
            .as_deref()
            .or(self.message.as_deref())
            .filter(|title| !title.trim().is_empty())
            .map_or_else(|| format!("OCSF {class} {}", info.uid), str::to_owned);
        let product = self.metadata.as_ref().and_then(|m| m.product.as_ref());
        let scanner = product
            .and_then(|p| p.name.as_deref().or(p.vendor_name.as_deref()))
            .filter(|name| !name.trim().is_empty())
            .unwrap_or("ocsf");
        sources.set("source.scanner", "metadata.product.name");
        let rule = info
            .analytic
            .as_ref()
            .and_then(|a| a.uid.as_deref().or(a.name.as_deref()))
            .or_else(|| {
                info.types
                    .as_ref()
                    .and_then(|types| types.first().map(String::as_str))
            })
            .filter(|rule| !rule.trim().is_empty());
        let url = info.src_url.as_deref().filter(|url| {
            url.chars().count() <= 2048
                && (url.starts_with("https://") || url.starts_with("http://"))
                && !url.chars().any(char::is_control)
        });
        let finding = Finding {
            schema: FindingSchema::V1,
            id,
            key: String::new(),
            kind,
            status,
            severity,
            title: text(&title, 300),
            detected_at,
            source: Source {
                scanner: text(scanner, 64),
                rule: rule.map(|rule| text(rule, 200)),
                url: url.map(str::to_owned),
            },
            resource,
            owner,
            evidence: self.evidence(class),
            labels: BTreeMap::from([("ocsf.class".to_owned(), class.to_owned())]),
        };
        Ok((finding, sources))
    }

    /// `finding_info.uid` names the finding across its updates; the event is the uid for a
    /// Create (or an event that says no activity), else the uid with the activity and time, so
    /// an update or a close is not dropped as a repeat of the create. An id that is not a
    /// quench token (whitespace, `*`, `>`, longer than 128) becomes `ocsf~` and a digest.
    fn event_id(&self) -> String {
        let uid = &self.finding_info.uid;
        let id = match self.activity_id {
            None | Some(0 | 1) => uid.clone(),
            Some(activity) => format!("{uid}#{activity}@{}", self.time),
        };
        let token = id.chars().count() <= 128
            && !id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>');
        if token {
            id
        } else {
            format!("ocsf~{}", hex::encode(&Sha256::digest(id.as_bytes())[..16]))
        }
    }

    /// The credential the finding is about: the first programmatic credential of an IAM
    /// analysis (`identity_activity_metrics`, then `user`), else the first resource that is
    /// not a project.
    fn subject(&self) -> Result<Subject<'_>, InvalidField> {
        let credentials = [
            (
                "identity_activity_metrics.programmatic_credentials[0].uid",
                self.identity_activity_metrics
                    .as_ref()
                    .and_then(|m| m.programmatic_credentials.as_ref()),
            ),
            (
                "user.programmatic_credentials[0].uid",
                self.user
                    .as_ref()
                    .and_then(|u| u.programmatic_credentials.as_ref()),
            ),
        ];
        for (path, credentials) in credentials {
            if let Some(credential) = credentials.and_then(|c| c.first()) {
                return Ok(Subject {
                    uid: &credential.uid,
                    path: path.to_owned(),
                    kind: credential.kind.as_deref(),
                    name: None,
                    last_used: credential.last_used_time,
                    data: None,
                    owner: None,
                });
            }
        }
        let resources = self.resources.as_deref().unwrap_or_default();
        resources
            .iter()
            .enumerate()
            .find(|(_, resource)| !is_project(resource.kind.as_deref()))
            .and_then(|(index, resource)| {
                let uid = resource.uid.as_deref().or(resource.name.as_deref())?;
                let field = if resource.uid.is_some() { "uid" } else { "name" };
                Some(Subject {
                    uid,
                    path: format!("resources[{index}].{field}"),
                    kind: resource.kind.as_deref(),
                    name: resource.name.as_deref(),
                    last_used: None,
                    data: resource.data.as_ref(),
                    owner: resource.owner.as_ref(),
                })
            })
            .ok_or_else(|| {
                InvalidField::new(
                    "resources",
                    "name no credential: give `resources[].uid` (or, in an IAM Analysis Finding, `identity_activity_metrics.programmatic_credentials[].uid`)",
                )
            })
    }

    /// `openai` when the credential, a resource or the cloud says OpenAI; else the cloud
    /// provider as a lowercase word (`aws`), else `ocsf`: a finding about another provider's
    /// credential never takes a kind the OpenAI playbooks run for.
    fn provider(&self, subject: &Subject<'_>) -> String {
        let cloud = self.cloud.as_ref().and_then(|c| c.provider.as_deref());
        let resource_types = self
            .resources
            .iter()
            .flatten()
            .filter_map(|r| r.kind.as_deref());
        let says_openai = subject
            .kind
            .into_iter()
            .chain(cloud)
            .chain(resource_types)
            .any(|text| {
                text.to_lowercase()
                    .replace([' ', '_', '-'], "")
                    .contains("openai")
            });
        if says_openai {
            return "openai".to_owned();
        }
        let word: String = cloud
            .unwrap_or("ocsf")
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .take(32)
            .collect();
        if word.is_empty() {
            "ocsf".to_owned()
        } else {
            word
        }
    }

    /// `leaked` or `unused`, from the words of `finding_info.types`, the analytic's name and
    /// the title; an IAM Analysis Finding that says neither is about an unused credential.
    fn verb(&self) -> Option<&'static str> {
        let info = &self.finding_info;
        let words: Vec<String> = info
            .types
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(info.analytic.as_ref().and_then(|a| a.name.as_deref()))
            .chain(info.title.as_deref())
            .map(str::to_lowercase)
            .collect();
        let says = |signs: &[&str]| {
            words
                .iter()
                .any(|text| signs.iter().any(|sign| text.contains(sign)))
        };
        if says(LEAKED) {
            Some("leaked")
        } else if says(UNUSED) || self.class_uid == 2008 {
            Some("unused")
        } else {
            None
        }
    }

    /// The project: a resource typed as a project, else the credential's `data.project_id`.
    fn project_id<'a>(&'a self, subject: &Subject<'a>) -> Option<&'a str> {
        self.resources
            .iter()
            .flatten()
            .find(|resource| is_project(resource.kind.as_deref()))
            .and_then(|resource| resource.uid.as_deref())
            .or_else(|| data_string(subject.data, "project_id"))
    }

    /// `user` (an IAM analysis's identity), else the resource's `owner`, when it has an email
    /// address or a name.
    fn owner(&self, subject: &Subject<'_>) -> Option<Owner> {
        let user = self.user.as_ref().or(subject.owner)?;
        let email = user
            .email_addr
            .as_deref()
            .filter(|email| email.contains('@') && email.chars().count() <= 254)
            .map(|email| text(email, 254));
        let name = user
            .full_name
            .as_deref()
            .or(user.name.as_deref())
            .filter(|name| !name.trim().is_empty())
            .map(|name| text(name, 128));
        (email.is_some() || name.is_some()).then_some(Owner {
            email,
            slack_user_id: None,
            team: None,
            name,
        })
    }

    /// A bounded summary of the event: class, activity, status, the finding's uid and types,
    /// the product, the cloud, and the message and remediation text, each cut.
    fn evidence(&self, class: &str) -> Map<String, Value> {
        let info = &self.finding_info;
        let product = self.metadata.as_ref().and_then(|m| m.product.as_ref());
        let cloud = self.cloud.as_ref();
        let mut ocsf = json!({
            "class_uid": self.class_uid,
            "class_name": class,
            "activity_id": self.activity_id,
            "status_id": self.status_id,
            "severity_id": self.severity_id,
            "finding_uid": text(&info.uid, 512),
            "types": info.types.iter().flatten().take(MAX_TYPES).map(|t| text(t, MAX_TEXT)).collect::<Vec<_>>(),
            "version": self.metadata.as_ref().and_then(|m| m.version.as_deref()).map(|v| text(v, 32)),
            "product": product.and_then(|p| p.name.as_deref()).map(|v| text(v, MAX_TEXT)),
            "vendor": product.and_then(|p| p.vendor_name.as_deref()).map(|v| text(v, MAX_TEXT)),
            "cloud_provider": cloud.and_then(|c| c.provider.as_deref()).map(|v| text(v, 64)),
            "region": cloud.and_then(|c| c.region.as_deref()).map(|v| text(v, 64)),
            "message": self.message.as_deref().map(|v| text(v, MAX_MESSAGE)),
            "desc": info.desc.as_deref().map(|v| text(v, MAX_MESSAGE)),
            "remediation": self.remediation.as_ref().and_then(|r| r.desc.as_deref()).map(|v| text(v, MAX_MESSAGE)),
        });
        if let Some(object) = ocsf.as_object_mut() {
            object.retain(|_, value| !value.is_null());
        }
        Map::from_iter([("ocsf".to_owned(), ocsf)])
    }
}

/// Words that say a credential was exposed (lowercase).
const LEAKED: &[&str] = &[
    "leak",
    "expos",
    "secret",
    "sensitive data",
    "hardcoded",
    "hard-coded",
    "plaintext",
];
/// Words that say a credential is not used (lowercase).
const UNUSED: &[&str] = &["unused", "inactive", "not used", "stale", "dormant"];

/// The quench resource type and kind word of an OCSF resource or credential type.
fn noun(kind: Option<&str>) -> (&'static str, ResourceType) {
    let kind = kind
        .unwrap_or_default()
        .to_lowercase()
        .replace([' ', '-'], "_");
    if kind.contains("admin") {
        ("admin_key", ResourceType::AdminKey)
    } else if kind.contains("service_account") || kind.contains("serviceaccount") {
        ("service_account", ResourceType::ServiceAccount)
    } else {
        ("api_key", ResourceType::ApiKey)
    }
}

fn is_project(kind: Option<&str>) -> bool {
    kind.is_some_and(|kind| {
        let kind = kind.to_lowercase();
        kind.ends_with("project") || kind.ends_with("_project")
    })
}

fn data_string<'a>(data: Option<&'a Value>, name: &str) -> Option<&'a str> {
    data?.get(name)?.as_str().filter(|value| !value.is_empty())
}

/// Display text from an event: redacted, then control characters (but newline and tab) become
/// spaces, and it is cut to `max` characters, so a long or noisy value is kept rather than
/// refused. Redacted before it is cut: a cut key may no longer look like one.
fn text(value: &str, max: usize) -> String {
    redact_str(value)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests;
