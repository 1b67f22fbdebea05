//! Least privilege from actual usage: `openai.key_usage` reads what each project key did over the
//! last days (the `/organization/usage/*` endpoints grouped by `api_key_id`), what scopes it has
//! (its latest `api_key.created` / `api_key.updated` audit event, since the key object does not
//! say), and proposes the scopes its usage needs, from a mapping the admin edits
//! (`usage-scopes.yaml`, [`UsageScopes`]).
//!
//! A proposal is never a guess: a key that used a family the mapping does not name gets none, and
//! so does a key whose needed scopes are not strictly fewer than what it has. A key with no usage
//! at all is the unused-key review's business, not this one's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::Method;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::OpenAi;
use super::reads::{output, time};
use super::transport::{MAX_PAGES, PAGE_LIMIT, Paging, Patience, id, parse_input};
use crate::actions::KeyUsage as KeyUsageInput;
use crate::engine::{Action, ActionError, ActionFuture, Actions, Call, Success};

const KEY_USAGE: &str = "openai.key_usage";

/// Days of usage read when the step does not say.
const DEFAULT_DAYS: u32 = 30;

pub(super) fn register(actions: &mut Actions, client: &Arc<OpenAi>) {
    actions.insert(
        KEY_USAGE,
        Arc::new(KeyUsage {
            client: client.clone(),
        }),
    );
}

// ---- the mapping file ----

/// `usage-scopes.yaml`: for each usage family, the scopes a key needs to have produced that usage
/// and the source that says so. A family left out is unknown.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageScopes {
    /// `quench.usage-scopes/v1`
    pub schema: UsageScopesSchema,
    /// The families with a mapping; a key that used a family not listed here gets no proposal.
    pub families: Families,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
pub enum UsageScopesSchema {
    #[serde(rename = "quench.usage-scopes/v1")]
    V1,
}

/// One optional mapping per usage family ([`Family`]).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Families {
    /// `/organization/usage/completions`, jobs that are not batch jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<Mapping>,
    /// `/organization/usage/completions` with `batch: true` (the Batch API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions_batch: Option<Mapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Mapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderations: Option<Mapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Mapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_speeches: Option<Mapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_transcriptions: Option<Mapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_search_calls: Option<Mapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_search_calls: Option<Mapping>,
}

/// The scopes one family needs, and why.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Scope identifiers as the dashboard and the audit log write them (`api.model.request`).
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    pub scopes: Vec<Scope>,
    /// What justifies the mapping: a reference section or a vendor document.
    #[schemars(length(min = 1))]
    pub source: String,
}

/// A scope identifier, checked as `openai.set_key_scopes` checks one.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Scope(
    #[schemars(length(max = 128), regex(pattern = crate::actions::SetKeyScopes::SCOPE_PATTERN))]
    pub String,
);

impl UsageScopes {
    /// Reads and checks a mapping file: every problem at its line and column, naming the file.
    pub fn load(path: &Path) -> Result<UsageScopes, String> {
        let shown = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "the usage-scope mapping {shown} does not exist: restore the shipped \
                     workflows/data/usage-scopes.yaml there, or point openai.usage_scopes at one"
                )
            } else {
                format!("cannot read the usage-scope mapping {shown}: {error}")
            }
        })?;
        crate::playbook::read_checked(&shown, &source)
    }

    /// The families this mapping names, in the order of the format.
    pub fn mapped_families(&self) -> Vec<&'static str> {
        Family::ALL
            .into_iter()
            .filter(|family| self.get(*family).is_some())
            .map(Family::name)
            .collect()
    }

    fn get(&self, family: Family) -> Option<&Mapping> {
        let families = &self.families;
        match family {
            Family::Completions => families.completions.as_ref(),
            Family::CompletionsBatch => families.completions_batch.as_ref(),
            Family::Embeddings => families.embeddings.as_ref(),
            Family::Moderations => families.moderations.as_ref(),
            Family::Images => families.images.as_ref(),
            Family::AudioSpeeches => families.audio_speeches.as_ref(),
            Family::AudioTranscriptions => families.audio_transcriptions.as_ref(),
            Family::FileSearchCalls => families.file_search_calls.as_ref(),
            Family::WebSearchCalls => families.web_search_calls.as_ref(),
        }
    }
}

// ---- usage families ----

/// What a key can be seen doing in the usage endpoints that group by `api_key_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Completions,
    CompletionsBatch,
    Embeddings,
    Moderations,
    Images,
    AudioSpeeches,
    AudioTranscriptions,
    FileSearchCalls,
    WebSearchCalls,
}

/// The usage endpoints read, each with the result field that counts requests.
const ENDPOINTS: [(&str, &str); 8] = [
    ("completions", "num_model_requests"),
    ("embeddings", "num_model_requests"),
    ("moderations", "num_model_requests"),
    ("images", "num_model_requests"),
    ("audio_speeches", "num_model_requests"),
    ("audio_transcriptions", "num_model_requests"),
    ("file_search_calls", "num_requests"),
    ("web_search_calls", "num_requests"),
];

impl Family {
    const ALL: [Family; 9] = [
        Family::Completions,
        Family::CompletionsBatch,
        Family::Embeddings,
        Family::Moderations,
        Family::Images,
        Family::AudioSpeeches,
        Family::AudioTranscriptions,
        Family::FileSearchCalls,
        Family::WebSearchCalls,
    ];

    /// The family of a result row of `endpoint` (completions split on `batch`).
    fn of(endpoint: &str, row: &Value) -> Option<Family> {
        Some(match endpoint {
            "completions" if row["batch"] == json!(true) => Family::CompletionsBatch,
            "completions" => Family::Completions,
            "embeddings" => Family::Embeddings,
            "moderations" => Family::Moderations,
            "images" => Family::Images,
            "audio_speeches" => Family::AudioSpeeches,
            "audio_transcriptions" => Family::AudioTranscriptions,
            "file_search_calls" => Family::FileSearchCalls,
            "web_search_calls" => Family::WebSearchCalls,
            _ => return None,
        })
    }

    /// The name in the mapping file and in the output.
    fn name(self) -> &'static str {
        match self {
            Family::Completions => "completions",
            Family::CompletionsBatch => "completions_batch",
            Family::Embeddings => "embeddings",
            Family::Moderations => "moderations",
            Family::Images => "images",
            Family::AudioSpeeches => "audio_speeches",
            Family::AudioTranscriptions => "audio_transcriptions",
            Family::FileSearchCalls => "file_search_calls",
            Family::WebSearchCalls => "web_search_calls",
        }
    }
}

// ---- openai.key_usage ----

#[derive(Debug)]
struct KeyUsage {
    client: Arc<OpenAi>,
}

/// A key's scopes as the audit log last recorded them.
#[derive(Debug, Clone)]
struct Recorded {
    scopes: BTreeSet<String>,
    at: Value,
}

impl KeyUsage {
    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: KeyUsageInput = parse_input(KEY_USAGE, input)?;
        let days = input.days.unwrap_or(DEFAULT_DAYS);
        if !(1..=365).contains(&days) {
            return Err(ActionError::permanent(format!(
                "`days` of `{KEY_USAGE}` must be from 1 to 365, not {days}"
            )));
        }
        let project_id = input
            .project_id
            .as_deref()
            .map(|project_id| id("project_id", project_id))
            .transpose()?;
        let mapping = self.mapping()?;
        let until = chrono::Utc::now().timestamp();
        let since = until - i64::from(days) * 86_400;
        let keys = self.client.project_keys(project_id).await?;
        let usage = self.usage(since, until, project_id).await?;
        let recorded = self.recorded_scopes().await?;
        let rows: Vec<Value> = keys
            .iter()
            .map(|key| {
                let key_id = key["id"].as_str().unwrap_or_default();
                proposal(key, usage.get(key_id), recorded.get(key_id), &mapping)
            })
            .collect();
        Ok(output(json!({
            "since": time(&json!(since)),
            "until": time(&json!(until)),
            "count": rows.len(),
            "keys": rows,
        })))
    }

    /// The mapping, read at every call so an edit counts from the next run.
    fn mapping(&self) -> Result<UsageScopes, ActionError> {
        let path = self.client.usage_scopes.as_deref().ok_or_else(|| {
            ActionError::permanent(format!(
                "`{KEY_USAGE}` has no usage-scope mapping configured (openai.usage_scopes)"
            ))
        })?;
        UsageScopes::load(path).map_err(ActionError::permanent)
    }

    async fn usage(
        &self,
        since: i64,
        until: i64,
        project_id: Option<&str>,
    ) -> Result<BTreeMap<String, BTreeMap<Family, i64>>, ActionError> {
        Ok(self
            .client
            .usage_by_key(since, until, project_id, Reading::Requests)
            .await?
            .requests)
    }

    /// Each key's scopes from its newest `api_key.created` (`data.scopes`) or `api_key.updated`
    /// that changed them (`changes_requested.scopes`; the spec's example writes `data.scopes`).
    async fn recorded_scopes(&self) -> Result<BTreeMap<String, Recorded>, ActionError> {
        let request = self
            .client
            .request(
                Method::GET,
                &["organization", "audit_logs"],
                "audit log events",
            )?
            .query("event_types[]", "api_key.created")
            .query("event_types[]", "api_key.updated");
        let mut events = self
            .client
            .walk(&request, Paging::Cursor, PAGE_LIMIT)
            .await?;
        // Newest first, as OpenAI lists them; the sort is stable, so ties keep that order.
        events.sort_by_key(|event| std::cmp::Reverse(event["effective_at"].as_i64()));
        let mut recorded = BTreeMap::new();
        for event in &events {
            let kind = event["type"].as_str().unwrap_or_default();
            let details = &event[kind];
            let Some(key_id) = details["id"].as_str() else {
                continue;
            };
            let scopes = match kind {
                // A key created without restrictions may carry no list: all permissions.
                "api_key.created" => Some(details["data"]["scopes"].clone()),
                _ => [
                    &details["changes_requested"]["scopes"],
                    &details["data"]["scopes"],
                ]
                .into_iter()
                .find(|scopes| scopes.is_array())
                .cloned(),
            };
            let Some(scopes) = scopes else {
                continue; // an update that did not touch the scopes
            };
            recorded
                .entry(key_id.to_owned())
                .or_insert_with(|| Recorded {
                    scopes: scopes
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|scope| scope.as_str().map(str::to_owned))
                        .collect(),
                    at: time(&event["effective_at"]),
                });
        }
        Ok(recorded)
    }
}

/// One key's row: the evidence, its scopes, and the proposal or why there is none.
fn proposal(
    key: &Value,
    used: Option<&BTreeMap<Family, i64>>,
    recorded: Option<&Recorded>,
    mapping: &UsageScopes,
) -> Value {
    let used = used.cloned().unwrap_or_default();
    let current = recorded
        .map(|recorded| recorded.scopes.clone())
        .unwrap_or_default();
    let requests: serde_json::Map<String, Value> = used
        .iter()
        .map(|(family, count)| (family.name().to_owned(), json!(count)))
        .collect();
    let unknown: Vec<&str> = used
        .keys()
        .filter(|family| mapping.get(**family).is_none())
        .map(|family| family.name())
        .collect();
    let needed: Option<BTreeSet<String>> = (unknown.is_empty() && !used.is_empty()).then(|| {
        used.keys()
            .filter_map(|family| mapping.get(*family))
            .flat_map(|mapping| mapping.scopes.iter().map(|scope| scope.0.clone()))
            .collect()
    });
    // No recorded scopes (or `[]`) is every permission: anything listed narrows it.
    let narrower = needed.as_ref().is_some_and(|needed| {
        !needed.is_empty()
            && (current.is_empty() || (needed.is_subset(&current) && needed.len() < current.len()))
    });
    let reason = if used.is_empty() {
        "unused"
    } else if !unknown.is_empty() {
        "unknown_family"
    } else if narrower {
        "narrower"
    } else {
        "not_narrower"
    };
    json!({
        "project_id": key["project_id"],
        "id": key["id"],
        "name": key["name"],
        "redacted_value": key["redacted_value"],
        "owner": key["owner"],
        "requests": requests,
        "current_scopes": current,
        "scopes_recorded_at": recorded.map_or(Value::Null, |recorded| recorded.at.clone()),
        "needed_scopes": needed,
        "proposed_scopes": if narrower { json!(needed) } else { Value::Null },
        "narrower": narrower,
        "reason": reason,
        "unknown_families": unknown,
    })
}

impl Action for KeyUsage {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }
}

impl OpenAi {
    /// The same client with the usage-scope mapping `openai.key_usage` reads at each call.
    pub fn with_usage_scopes(self, path: PathBuf) -> OpenAi {
        OpenAi {
            usage_scopes: Some(path),
            ..self
        }
    }
}

/// What a reading of the usage endpoints is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A step's (`openai.key_usage`): requests per key and family, no second try of a page.
    Requests,
    /// The inventory's: also the models, each page tried again after a 429 or a 5xx.
    Capabilities,
}

/// Usage per key: requests per family, and the models used.
#[derive(Debug, Default)]
struct KeyUsageRows {
    requests: BTreeMap<String, BTreeMap<Family, i64>>,
    models: BTreeMap<String, BTreeSet<String>>,
}

/// What a key has been seen using: usage families and model families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `completions`, `completions_batch`, `embeddings`, `file_search_calls`, …
    pub families: BTreeSet<String>,
    /// Model families (`gpt-4o`, `o3-mini`, `text-embedding-3-small`): the model without its
    /// date or version suffix.
    pub models: BTreeSet<String>,
}

/// A model's family: its id without a trailing date (`-2024-08-06`, `-20240806`) or
/// four-digit version (`-0613`).
pub fn model_family(model: &str) -> String {
    let model = model.trim();
    let is_digits =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = model.split('-').collect();
    let mut keep = parts.len();
    if keep >= 4
        && is_digits(parts[keep - 3], 4)
        && is_digits(parts[keep - 2], 2)
        && is_digits(parts[keep - 1], 2)
    {
        keep -= 3;
    } else if keep >= 2 && (is_digits(parts[keep - 1], 8) || is_digits(parts[keep - 1], 4)) {
        keep -= 1;
    }
    let family = parts[..keep].join("-");
    if family.is_empty() {
        model.to_owned()
    } else {
        family
    }
}

impl OpenAi {
    /// Usage per key from every usage endpoint that groups by `api_key_id`: requests per
    /// family, and for [`Reading::Capabilities`] the models too (grouped by `model` where the
    /// endpoint can), each page tried again up to 8 times after a 429 or a 5xx.
    async fn usage_by_key(
        &self,
        since: i64,
        until: i64,
        project_id: Option<&str>,
        reading: Reading,
    ) -> Result<KeyUsageRows, ActionError> {
        let mut usage = KeyUsageRows::default();
        let retries = if reading == Reading::Capabilities {
            8
        } else {
            0
        };
        for (endpoint, counter) in ENDPOINTS {
            let mut request = self
                .request(
                    Method::GET,
                    &["organization", "usage", endpoint],
                    format!("{endpoint} usage"),
                )?
                .query("start_time", since)
                .query("end_time", until)
                .query("bucket_width", "1d")
                .query("group_by[]", "api_key_id")
                .query("group_by[]", "project_id");
            if endpoint == "completions" {
                request = request.query("group_by[]", "batch");
            }
            // Every usage endpoint that groups by key groups by model too, but file search.
            let by_model = reading == Reading::Capabilities && endpoint != "file_search_calls";
            if by_model {
                request = request.query("group_by[]", "model");
            }
            if let Some(project_id) = project_id {
                request = request.query("project_ids[]", project_id);
            }
            // 31 daily buckets is the most a page may hold.
            let buckets = self
                .walk_patiently(
                    &request,
                    Paging::Page,
                    31,
                    Patience {
                        retries,
                        max_pages: MAX_PAGES,
                    },
                )
                .await?;
            for bucket in &buckets {
                for row in bucket["results"].as_array().into_iter().flatten() {
                    let (Some(key_id), Some(family)) =
                        (row["api_key_id"].as_str(), Family::of(endpoint, row))
                    else {
                        continue;
                    };
                    let requests = row[counter].as_i64().unwrap_or(0);
                    if requests > 0 {
                        *usage
                            .requests
                            .entry(key_id.to_owned())
                            .or_default()
                            .entry(family)
                            .or_default() += requests;
                        if let Some(model) = row["model"].as_str().filter(|model| !model.is_empty())
                        {
                            usage
                                .models
                                .entry(key_id.to_owned())
                                .or_default()
                                .insert(model_family(model));
                        }
                    }
                }
            }
        }
        Ok(usage)
    }

    /// What each key used between `since` and `until`: its usage families and model
    /// families, which the inventory keeps as the key's capabilities.
    pub async fn capabilities_by_key(
        &self,
        since: i64,
        until: i64,
    ) -> Result<BTreeMap<String, Capabilities>, ActionError> {
        let mut usage = self
            .usage_by_key(since, until, None, Reading::Capabilities)
            .await?;
        Ok(usage
            .requests
            .into_iter()
            .map(|(key, families)| {
                let capabilities = Capabilities {
                    families: families
                        .keys()
                        .map(|family| family.name().to_owned())
                        .collect(),
                    models: usage.models.remove(&key).unwrap_or_default(),
                };
                (key, capabilities)
            })
            .collect())
    }
}

#[cfg(test)]
mod model_family_tests {
    use super::model_family;

    #[test]
    fn a_family_is_the_model_without_its_date_or_version() {
        for (model, family) in [
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("gpt-4o", "gpt-4o"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4-0613", "gpt-4"),
            ("o3-mini-20250131", "o3-mini"),
            ("text-embedding-3-small", "text-embedding-3-small"),
            ("dall-e-3", "dall-e-3"),
            ("", ""),
            ("-2024-01-01", "-2024-01-01"),
        ] {
            assert_eq!(model_family(model), family, "{model}");
        }
    }
}
