//! The playbook format as written: the raw, serde-shaped form of a YAML playbook. These types are
//! the single source of the format: the JSON Schema that editors use (`workflows/playbook.schema.json`)
//! and the structural check of `quench validate` are both generated from them. Meaning (templates,
//! references, durations, cron lines) is checked afterwards by the compiler in `compile.rs`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// `engine.mode` in the service config sets the default, so the type lives with the config.
pub use quench_common::config::Mode;

pub(crate) type Map = serde_json::Map<String, serde_json::Value>;

/// The `schema` tag of a playbook; only v1 exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlaybookSchema {
    #[default]
    #[serde(rename = "quench.playbook/v1")]
    V1,
}

/// A quench playbook: what to do about a kind of finding, or what to review on a timetable.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "quench playbook v1")]
pub struct Playbook {
    pub schema: PlaybookSchema,
    /// Unique name; lowercase words joined by `-` (it appears in NATS subjects and metrics).
    #[schemars(regex(pattern = r"^[a-z0-9]+(-[a-z0-9]+)*$"), length(max = 64))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who answers for this playbook (an email or a team name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `live` or `dry_run`; when absent the service's `engine.mode` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// What starts a run: a finding, or a schedule.
    pub on: Trigger,
    /// Template naming the unit of concurrency: one open run per key. Default `{{ finding.key }}`
    /// (the playbook name for scheduled playbooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// What a new finding does when a run is already open for its key. Default `attach`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_conflict: Option<Conflict>,
    /// What a `resolved` finding for the key does to the open run. Default `ignore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_resolved: Option<OnResolved>,
    /// Deadline of the whole run, e.g. `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Named values (literals or templates over `finding`, `playbook`, `run`, `now`), read as `vars.<name>`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub vars: Map,
    /// The steps, run in order.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
    /// Steps run once when the run fails for good, with `failure.step` and `failure.error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<Step>,
}

/// Exactly one of `finding` or `schedule`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<FindingTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleTrigger>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindingTrigger {
    /// Finding kinds: exact names or globs (`openai.api_key.*`; `*` matches across dots).
    #[schemars(length(min = 1))]
    pub kinds: Vec<String>,
    /// Optional expression over `finding`; the playbook runs only when it is true.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Crontab line: 5 fields (`min hour dom month dow`) or 6/7 fields with seconds (and year).
    pub cron: String,
    /// IANA time zone, default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// When the previous run is still open. Default `skip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// Ticks missed while the service was down. Default `last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    Skip,
    Allow,
    CancelPrevious,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    None,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// The finding joins the open run (its id is recorded; no new run).
    Attach,
    /// The finding is dropped (audited).
    Skip,
    /// A new run starts when the open one ends.
    Queue,
    /// The open run is cancelled and a new one starts.
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnResolved {
    /// The open run is cancelled.
    Cancel,
    /// The run goes on; the resolution is recorded in its audit trail.
    Ignore,
}

/// One step: an action with its inputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique id, a lowercase identifier (read later as `steps.<id>`). Optional in `on_failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"), length(max = 64))]
    pub id: Option<String>,
    /// The action, e.g. `slack.message`, `approval`, `openai.revoke_key`.
    pub uses: String,
    /// The action's inputs; strings are templates.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub with: Map,
    /// Expression; when false the step is `skipped`. With `foreach`, evaluated per item.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Expression yielding a list; the step runs once per item with `item` and `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreach: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Deadline of each attempt, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// When the step fails for good the run goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
    /// A mutating step that does not wait for a change freeze (`[safety] freeze`); budgets
    /// and protected resources still apply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// Retries of retryable errors, with exponential backoff and jitter; a `Retry-After` hint wins.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included.
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// First delay, doubled each attempt. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Longest delay. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
}
