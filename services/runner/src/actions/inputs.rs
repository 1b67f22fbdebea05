//! Input types of the built-in actions: the shape of each action's `with`. In a playbook every
//! string may be a template; the compiler accepts a template wherever a value of another type is
//! expected and leaves the final check to the moment the inputs are rendered.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackMessage {
    /// An email, a Slack user id (`U…`), a `#channel`, a `group:<name>`, a `team:<name>` (its
    /// channel, else each member), or the run's `owner` / `owner.team`.
    pub to: String,
    /// mrkdwn text; values from findings are escaped.
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Who may answer: emails, Slack user ids, `group:<name>` and `team:<name>` from the service
    /// config, the run's `owner` and `owner.team`.
    #[schemars(length(min = 1))]
    pub approvers: Vec<String>,
    /// How many distinct allowed answers decide the gate. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub quorum: Option<u32>,
    /// The question shown with the buttons.
    pub question: String,
    /// One button per choice. Default `[approve, deny]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 5))]
    pub choices: Option<Vec<String>>,
    /// How long the gate stays open, e.g. `4h`.
    pub timeout: String,
    /// The choice taken when nobody answers in time; must be one of `choices`.
    pub on_timeout: String,
    /// Re-ping the approvers who have not answered this often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_every: Option<String>,
    /// Add approvers (and notify them) after a delay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalate: Vec<Escalation>,
    /// Ask per item instead of once (an attestation): each item is an object with a unique
    /// string `id` (and a `label` and facts to show), answered on its own with one of the
    /// `choices`; the gate is decided when every item is, and at `timeout` every item still
    /// open takes `on_timeout`. At most 20 items (one Slack message holds them). Usually a
    /// template, e.g. `"{{ finding.evidence.identities }}"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub items: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
    /// Choices that need a few words, each with the question asked (e.g. `keep: "What is this
    /// key for?"`): in Slack, clicking such a choice opens a form with the question, and the
    /// answer's comment is what was written (at most 500 characters). Every key must be one of
    /// `choices`; a question has at most 300 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub comment_for: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// Delay after the gate opened, e.g. `2h`.
    pub after: String,
    #[schemars(length(min = 1))]
    pub to: Vec<String>,
}

/// Exactly one of `for` and `until`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// A duration, e.g. `24h`.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// An RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKey {
    pub project_id: String,
    pub key_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAdminKey {
    pub key_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteServiceAccount {
    pub project_id: String,
    pub service_account_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetProjectUserRole {
    pub project_id: String,
    pub user_id: String,
    pub role: ProjectRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectRole {
    Owner,
    Member,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveProjectUser {
    pub project_id: String,
    pub user_id: String,
}

/// Lowers the limits given; at least one `max_*` is required.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitProjectRate {
    pub project_id: String,
    /// The model whose limit changes (rate limits are per project and model).
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_1_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_1_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_images_per_1_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_audio_megabytes_per_1_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_1_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_1_day_max_input_tokens: Option<u64>,
}

impl LimitProjectRate {
    pub const LIMITS: &'static [&'static str] = &[
        "max_requests_per_1_minute",
        "max_tokens_per_1_minute",
        "max_images_per_1_minute",
        "max_audio_megabytes_per_1_minute",
        "max_requests_per_1_day",
        "batch_1_day_max_input_tokens",
    ];
}

/// Replaces a key's scopes. An empty list removes every restriction, so it is refused unless
/// `allow_widen` is true.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetKeyScopes {
    pub project_id: String,
    pub key_id: String,
    /// Scope identifiers as in the OpenAI dashboard, e.g. `api.model.request`, `api.files.read`.
    pub scopes: Vec<String>,
    /// Allow a change that widens what the key may do (`scopes: []`: all permissions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_widen: bool,
}

impl SetKeyScopes {
    /// [`SetKeyScopes::check_scope`]'s rule as a JSON Schema pattern (with a length of at most
    /// 128), for formats that list scopes in a file (`usage-scopes.yaml`).
    pub const SCOPE_PATTERN: &'static str = r"^api(\.[a-z0-9_-]+){2,}$";

    /// Checks the shape of a scope identifier: dot-separated lowercase words starting with
    /// `api`, at least three (`api.model.request`, `api.files.read`, `api.all.read`), as the
    /// dashboard and the audit log write them. The set of scopes is not published, so the list
    /// itself is left to OpenAI.
    pub fn check_scope(scope: &str) -> Result<(), String> {
        let words: Vec<&str> = scope.split('.').collect();
        let word_ok = |word: &&str| {
            !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        };
        if scope.len() <= 128 && words.len() >= 3 && words[0] == "api" && words.iter().all(word_ok)
        {
            return Ok(());
        }
        let shown: String = quench_proto::redact_str(scope).chars().take(80).collect();
        Err(format!(
            "`{}` is not a scope identifier (dot-separated lowercase words starting with `api`, \
             e.g. `api.model.request`, `api.files.read`)",
            shown.escape_debug()
        ))
    }
}

/// Sets when a key expires, counted from the moment the change is made.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetKeyExpiry {
    pub project_id: String,
    pub key_id: String,
    /// A duration of at most 365 days, e.g. `14d`.
    pub expires_in: String,
}

/// Replaces a service account's key without downtime: mints a new key on the same account,
/// delivers its secret to a secret store, then gives the old key a grace expiry (or keeps it for
/// a later step to delete).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateServiceAccountKey {
    pub project_id: String,
    pub service_account_id: String,
    /// The key being replaced; it must belong to the service account.
    pub key_id: String,
    /// The new key's scopes (as in `openai.set_key_scopes`); `[]` (all permissions) only with
    /// `allow_widen`.
    pub scopes: Vec<String>,
    /// The new key's lifetime: whole seconds up to `365d`, e.g. `90d`.
    pub expires_in: String,
    /// Where the new key's secret is written.
    pub secret: SecretTarget,
    /// What becomes of the old key: `grace` (the default: it expires after `grace`) or `keep`
    /// (untouched, for a later step to delete once the owner confirms the switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<OldKey>,
    /// How long the old key keeps working under `then: grace`. Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// The new key's name; quench appends the idempotency key in brackets. Default
    /// `quench rotation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Allow `scopes: []` (all permissions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_widen: bool,
}

/// A field of a secret in a configured store.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretTarget {
    /// The name of a `[secret_stores.<name>]` in the service config.
    pub store: String,
    /// Vault: the secret's path under the mount (`apps/payments/openai`); Kubernetes: the
    /// Secret's name.
    pub path: String,
    /// The field of the secret's data that receives the key, e.g. `OPENAI_API_KEY`.
    pub field: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OldKey {
    /// Expire the old key after `grace` (never lengthening its life).
    #[default]
    Grace,
    /// Leave the old key as it is.
    Keep,
}

/// Replaces a project's model allow or deny list. Refused when it would allow a model the
/// current policy does not, unless `allow_widen` is true.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetModelPermissions {
    pub project_id: String,
    pub mode: ModelPermissionsMode,
    /// Model ids, e.g. `gpt-4.1`.
    pub model_ids: Vec<String>,
    /// Allow a change that lets the project use a model it could not use before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_widen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelPermissionsMode {
    /// Only the listed models.
    AllowList,
    /// Every model but the listed ones.
    DenyList,
}

/// Turns a project's hosted tools on or off; at least one. Turning one on is refused unless
/// `allow_widen` is true.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHostedTools {
    pub project_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_search: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_search: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_generation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_interpreter: Option<bool>,
    /// Allow turning a tool on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_widen: bool,
}

impl SetHostedTools {
    /// The hosted tools of the spec, in its order.
    pub const TOOLS: &'static [&'static str] = &[
        "file_search",
        "web_search",
        "image_generation",
        "mcp",
        "code_interpreter",
    ];

    /// The tools the input sets, with their wanted state, in [`SetHostedTools::TOOLS`] order.
    pub fn requested(&self) -> Vec<(&'static str, bool)> {
        [
            self.file_search,
            self.web_search,
            self.image_generation,
            self.mcp,
            self.code_interpreter,
        ]
        .into_iter()
        .zip(Self::TOOLS)
        .filter_map(|(enabled, tool)| Some((*tool, enabled?)))
        .collect()
    }
}

/// Sets a project's hard monthly spend limit. Raising an existing limit is refused unless
/// `allow_widen` is true.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSpendLimit {
    pub project_id: String,
    /// The limit in US cents per month (`10000` is $100).
    #[schemars(range(min = 1))]
    pub threshold_amount: u64,
    /// Allow raising the limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_widen: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveProject {
    pub project_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListKeys {
    /// One project; every active project when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProjectUsers {
    /// The project.
    pub project_id: String,
    /// Only users with this role in the project (`owner` or `member`); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ProjectRole>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEvents {
    /// RFC 3339 time or Unix seconds; events strictly after it.
    pub since: String,
    /// Audit event types, e.g. `api_key.created`.
    #[schemars(length(min = 1))]
    pub event_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// RFC 3339 time or Unix seconds; the first bucket starts here.
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[schemars(length(min = 1))]
    pub group_by: Vec<UsageGroup>,
    /// Bucket width. Default `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<Bucket>,
}

/// Reads what each key used over the last `days` and proposes the scopes it needs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUsage {
    /// How many days back to read usage, 1 to 365. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 365))]
    pub days: Option<u32>,
    /// One project; every active project when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageGroup {
    ApiKeyId,
    ProjectId,
    UserId,
    Model,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Bucket {
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    pub method: HttpMethod,
    /// Only hosts in `http.allow_hosts` are reachable.
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// Statuses that count as success. Default: any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// A finding to publish; `id`, `schema` and `detected_at` are filled in by quench, and the
/// `id` is derived from the run and step so a re-executed step publishes the same id.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishFinding {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<quench_proto::Status>,
    pub severity: quench_proto::Severity,
    pub title: String,
    pub resource: quench_proto::Resource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<quench_proto::Owner>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub evidence: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Note {
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    pub message: String,
}

/// Values to remember for the playbook's later runs, e.g. `audit_cursor: "{{ … }}"`; each run
/// sees them as `state.<name>` as they were when it started.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct StateSet(#[schemars(length(min = 1))] pub serde_json::Map<String, serde_json::Value>);

/// Which keys a campaign covers: project API keys that match every field given.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct CampaignScope {
    /// A project id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Keys with this risk (see `quench inventory list --risk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    /// Keys whose resolved owner is in this team (`[teams]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Keys whose OpenAI owner is this user (email or id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Keys not used for at least this long, e.g. `90d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_for: Option<String>,
}

impl CampaignScope {
    /// In words, for tables and titles.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, value) in [
            ("project", &self.project),
            ("risk", &self.risk),
            ("team", &self.team),
            ("owner", &self.owner),
            ("unused for", &self.unused_for),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name} {value}"));
            }
        }
        if parts.is_empty() {
            "all project keys".to_owned()
        } else {
            format!("project keys: {}", parts.join(", "))
        }
    }
}

/// `campaign.start` (and `POST /api/v1/campaigns`): an attestation campaign over project keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCampaign {
    /// A name people recognise, e.g. `2026-Q4 key review`.
    pub name: String,
    #[serde(default)]
    pub scope: CampaignScope,
    /// The attestation playbook; default `attest-openai-identities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
}
