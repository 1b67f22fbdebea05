//! What the engine keeps in the store: runs with their step states, approval gates, timers and
//! the effect journal. (A run's timeline is its audit entries, indexed by run in the store.) These are part of the store's public format: a change
//! here is a change of `store::FORMAT_VERSION`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use quench_proto::Finding;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::playbook::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Between steps or executing one; driven again after a restart.
    Running,
    /// Parked on a timer or a gate; costs disk, not memory.
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Main,
    OnFailure,
}

/// One run of one playbook version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub playbook: String,
    /// The playbook version (content hash) the run is pinned to.
    pub version: String,
    pub key: String,
    /// The finding that started it; `None` for scheduled runs.
    pub finding: Option<Finding>,
    /// Ids of findings that joined the run later (`on_conflict: attach`), most recent last.
    #[serde(default)]
    pub attached: Vec<String>,
    pub mode: Mode,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    /// The run's `timeout`, as a time.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    pub vars: serde_json::Map<String, Value>,
    /// The playbook's remembered values (`state.set`) as they were when the run started.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub state: serde_json::Map<String, Value>,
    #[serde(default)]
    pub phase: Phase,
    /// Index of the current step in the current phase.
    pub cursor: usize,
    pub steps: BTreeMap<String, StepState>,
    #[serde(default)]
    pub failure: Option<Failure>,
    /// Why a cancelled run was cancelled.
    #[serde(default)]
    pub cancelled: Option<String>,
    /// Timers currently set for this run (so they can all be removed when it ends).
    #[serde(default)]
    pub timers: Vec<TimerRef>,
    /// The safety gate a mutating step of this run waits on (see `engine::safety`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_wait: Option<SafetyWait>,
    /// The owner resolved when the run started, for a playbook that reads it
    /// ([`crate::playbook::Playbook::uses_owner`]): who, and which link of the chain answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::owners::ResolvedOwner>,
    /// What the run counted as in the store's run counters when it was read or last saved
    /// (not stored; `None` for a run not yet written).
    #[serde(skip)]
    pub(crate) counted: Option<Count>,
    /// The finding as templates see it, converted once (not stored).
    #[serde(skip)]
    pub(crate) finding_value: FindingValue,
}

impl Run {
    /// A run of `playbook` in `mode` (see [`super::EngineConfig`]'s `mode_of`), not yet given
    /// an id or written: `where`, `vars` and `key` are evaluated against it, and
    /// [`super::Engine::start_run`] makes it the real one.
    pub(crate) fn new(
        playbook: &crate::playbook::Playbook,
        finding: Option<&Finding>,
        now: DateTime<Utc>,
        mode: Mode,
    ) -> Run {
        Run {
            id: String::new(),
            playbook: playbook.name.clone(),
            version: playbook.version.clone(),
            key: finding.map_or_else(|| playbook.name.clone(), |finding| finding.key.clone()),
            finding: finding.cloned(),
            attached: Vec::new(),
            mode,
            status: RunStatus::Running,
            started_at: now,
            updated_at: now,
            ended_at: None,
            deadline: None,
            vars: serde_json::Map::new(),
            state: serde_json::Map::new(),
            phase: Phase::Main,
            cursor: 0,
            steps: Default::default(),
            failure: None,
            cancelled: None,
            timers: Vec::new(),
            safety_wait: None,
            owner: None,
            counted: None,
            finding_value: FindingValue::default(),
        }
    }
}

/// A run's finding as a template value, made on first use and shared by the run's clones (a
/// run's finding never changes).
#[derive(Clone, Default)]
pub(crate) struct FindingValue(std::sync::Arc<std::sync::OnceLock<minijinja::Value>>);

impl FindingValue {
    pub(crate) fn get_or_init(&self, make: impl FnOnce() -> minijinja::Value) -> minijinja::Value {
        self.0.get_or_init(make).clone()
    }
}

impl std::fmt::Debug for FindingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FindingValue")
    }
}

/// The store counter of runs not ended.
pub(crate) const COUNT_OPEN: &str = "runs_open";
/// The store counter of runs parked on an approval gate.
pub(crate) const COUNT_AWAITING_APPROVAL: &str = "runs_awaiting_approval";

/// How a run counts in the store's run counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Ended,
    Open,
    AwaitingApproval,
}

impl Count {
    pub(crate) fn open(self) -> i64 {
        i64::from(self != Count::Ended)
    }

    pub(crate) fn awaiting_approval(self) -> i64 {
        i64::from(self == Count::AwaitingApproval)
    }
}

impl Run {
    /// How the run counts now: ended, open, or parked on a gate (its gate timeout is set).
    pub(crate) fn count(&self) -> Count {
        if self.status.is_terminal() {
            Count::Ended
        } else if self.status == RunStatus::Waiting
            && self
                .timers
                .iter()
                .any(|timer| timer.name.starts_with(GATE_TIMER_PREFIX))
        {
            Count::AwaitingApproval
        } else {
            Count::Open
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub step: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRef {
    pub due: DateTime<Utc>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    #[default]
    Pending,
    /// An effect is in flight (its intent is journaled).
    Running,
    /// Parked: a gate, a `wait`, or a retry backoff.
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    AlreadyDone,
    DryRun,
}

impl StepStatus {
    pub fn is_done(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::AlreadyDone
                | StepStatus::DryRun
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Waiting => "waiting",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::AlreadyDone => "already_done",
            StepStatus::DryRun => "dry_run",
        }
    }
}

/// The state of one step of a run; after the step, what templates read as `steps.<id>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub error: Option<String>,
    /// Executions of the current call so far (retries and re-executions after a restart).
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The iteration whose effect is in flight or waiting to be retried.
    #[serde(default)]
    pub in_flight: Option<usize>,
    /// Approval results.
    #[serde(default)]
    pub choice: Option<String>,
    #[serde(default)]
    pub decided_by: Vec<String>,
    #[serde(default)]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub via: Option<String>,
    /// `foreach`: the items, and each finished item's result.
    #[serde(default)]
    pub items: Option<Vec<Value>>,
    #[serde(default)]
    pub item_results: Vec<ItemResult>,
    /// The requests sent (or in dry-run described), one per call, as `Action::describe` shows
    /// them: method and path, URL, channel; never a credential.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<Value>,
    /// The iteration the safety approvers released: it passes the `[safety]` rails once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_released: Option<usize>,
    /// Times an operator restarted the run from this step after it failed here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Why and where a run waits on a safety gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyWait {
    /// The run of the built-in safety playbook whose gate decides.
    pub hold: String,
    pub step: String,
    pub iteration: usize,
    /// `budget` or `protect`.
    pub rail: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemResult {
    pub status: StepStatus,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub error: Option<String>,
}

/// An approval gate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gate {
    pub run_id: String,
    pub step: String,
    /// Unguessable; carried in Slack button values and required with every answer.
    pub token: String,
    pub question: String,
    pub choices: Vec<String>,
    pub quorum: u32,
    /// Approvers as rendered (emails, Slack ids, `group:<name>`), escalations included.
    pub approvers: Vec<String>,
    /// Identities allowed to answer: lowercased emails and Slack ids, groups expanded.
    pub allowed: BTreeSet<String>,
    /// Other identities of an approver (e.g. the Slack id of an email), added by delivery.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    pub opened_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub on_timeout: String,
    #[serde(default)]
    pub remind_every_secs: Option<u64>,
    #[serde(default)]
    pub reminders: u32,
    #[serde(default)]
    pub escalations: Vec<EscalationState>,
    #[serde(default)]
    pub answers: Vec<Answer>,
    #[serde(default)]
    pub decision: Option<GateDecision>,
    /// Closed without a decision (the run ended first).
    #[serde(default)]
    pub closed: bool,
    /// The messages that asked approvers (so they can be updated once the gate closes).
    #[serde(default)]
    pub messages: Vec<GateMessage>,
    /// A gate that asks per item (an attestation: one answer per identity listed) holds its
    /// items here, in order, each an object with a unique string `id`; empty on an ordinary
    /// gate. It is decided once every item is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<serde_json::Map<String, Value>>,
    /// Each decided item's decision, by item id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub item_decisions: BTreeMap<String, ItemDecision>,
    /// Choices that need a comment, each with the question asked (`comment_for`): Slack asks
    /// it in a form before the click is an answer. Empty when no choice needs one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub comment_for: BTreeMap<String, String>,
}

impl Gate {
    /// Whether `who` (an email, a Slack id, a token's name) may answer: one of the allowed
    /// identities, directly or through one of its aliases. Groups and escalations are already
    /// expanded into `allowed`.
    pub fn allows(&self, who: &str) -> bool {
        let who = super::gate::identity(who);
        let alias = self
            .aliases
            .get(&who)
            .map(|alias| super::gate::identity(alias));
        self.allowed.contains(&who) || alias.is_some_and(|alias| self.allowed.contains(&alias))
    }

    /// Whether the gate still waits for answers.
    pub fn is_open(&self) -> bool {
        self.decision.is_none() && !self.closed
    }

    /// Whether the gate asks per item.
    pub fn per_item(&self) -> bool {
        !self.items.is_empty()
    }

    /// The id of each item, in order.
    pub fn item_ids(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(item_id)
    }

    /// Items not decided yet, in order.
    pub fn undecided(&self) -> impl Iterator<Item = &str> {
        self.item_ids()
            .filter(|id| !self.item_decisions.contains_key(*id))
    }
}

/// An item's `id` (checked present and a string when the gate opened).
pub fn item_id(item: &serde_json::Map<String, Value>) -> &str {
    item.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// How one item of a per-item gate was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemDecision {
    pub choice: String,
    pub decided_by: Vec<String>,
    pub decided_at: DateTime<Utc>,
    pub via: String,
    /// What the answer said besides its choice (e.g. the purpose of a key kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Nobody answered in time: the gate's `on_timeout` was taken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub defaulted: bool,
}

/// A message that put a gate in front of someone (e.g. a Slack DM with buttons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateMessage {
    /// The approver as the playbook names them (email, Slack id, `#channel`, a group member).
    pub to: String,
    /// Where the message is, e.g. the Slack channel id.
    pub channel: String,
    /// Its id there, e.g. the Slack `ts`.
    pub ts: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EscalationState {
    pub at: DateTime<Utc>,
    pub to: Vec<String>,
    #[serde(default)]
    pub done: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub actor: String,
    #[serde(default)]
    pub name: Option<String>,
    pub via: String,
    pub choice: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub comment: Option<String>,
    /// The item answered, on a gate that asks per item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateDecision {
    pub choice: String,
    pub decided_by: Vec<String>,
    pub decided_at: DateTime<Utc>,
    pub via: String,
}

/// The name of a gate's timeout timer starts so (the run is parked on approval while it is set).
const GATE_TIMER_PREFIX: &str = "gate:";

/// What a durable timer does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Timer {
    /// A `wait` step is over.
    Wait { step: String },
    /// A gate reached its `timeout`.
    GateTimeout { step: String },
    /// Re-ping the approvers who have not answered.
    Remind { step: String },
    /// Add approvers.
    Escalate { step: String, index: usize },
    /// Retry a failed call after its backoff.
    Retry { step: String },
    /// A change freeze (`[safety] freeze`) that held a mutating step has ended.
    Freeze { step: String },
    /// The run's `timeout`.
    RunTimeout,
    /// Deliver a gate notice (not one of the run's own timers: it outlives the run, so that a
    /// closed gate's messages are still updated).
    Notify {
        step: String,
        notice: NoticeKind,
        /// Recipients (for `open`, `remind`, `escalate`); empty for `closed`.
        #[serde(default)]
        to: Vec<String>,
        #[serde(default)]
        attempt: u32,
        /// Makes the timer's name unique.
        id: String,
    },
}

/// What a gate notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The gate opened: ask, with one button per choice.
    Open,
    /// Ask again those who have not answered.
    Remind,
    /// Ask approvers added by an escalation.
    Escalate,
    /// The gate closed: update every message to show the outcome, without buttons.
    Closed,
    /// An item of a per-item gate was decided: update every message to show it, keeping the
    /// buttons of the items still open.
    Progress,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Open => "open",
            NoticeKind::Remind => "remind",
            NoticeKind::Escalate => "escalate",
            NoticeKind::Closed => "closed",
            NoticeKind::Progress => "progress",
        }
    }
}

impl Timer {
    /// The timer's name within its run (unique at any moment).
    pub fn name(&self) -> String {
        match self {
            Timer::Wait { step } => format!("wait:{step}"),
            Timer::GateTimeout { step } => format!("{GATE_TIMER_PREFIX}{step}"),
            Timer::Remind { step } => format!("remind:{step}"),
            Timer::Escalate { step, index } => format!("escalate:{step}:{index}"),
            Timer::Retry { step } => format!("retry:{step}"),
            Timer::Freeze { step } => format!("freeze:{step}"),
            Timer::RunTimeout => "deadline".to_owned(),
            Timer::Notify { step, id, .. } => format!("notify:{step}:{id}"),
        }
    }
}

/// One journaled effect: the intent is committed before the call, the result after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Effect {
    pub run_id: String,
    pub step: String,
    pub iteration: usize,
    pub action: String,
    pub input: Value,
    pub intended_at: DateTime<Utc>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub result: Option<EffectResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EffectResult {
    pub status: StepStatus,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// A finding waiting behind an open run (`on_conflict: queue`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queued {
    pub finding: Finding,
    pub queued_at: DateTime<Utc>,
}

/// The idempotency key of an effect: `run_id/step_id/iteration`.
pub fn idempotency_key(run_id: &str, step: &str, iteration: usize) -> String {
    format!("{run_id}/{step}/{iteration}")
}
