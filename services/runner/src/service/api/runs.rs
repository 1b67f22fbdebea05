//! Runs: list (filters and cursor paging, newest first), show (step timeline, gates, audit
//! entries), cancel, and answers to approval gates as the token's identity.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::audit::AuditView;
use super::auth::Caller;
use super::error::{ApiError, Body, ErrorBody, Params};
use super::query;
use crate::config::Role;
use crate::engine::state::Phase;
use crate::engine::{
    Cancel, DecisionOutcome, Defer, Gate, Refusal, Restart, Run, RunStatus, StepStatus,
};
use crate::store::{RunIndex, RunsScan};

/// Most runs examined per list request (the store is read newest first; a filter that matches
/// rarely returns a `next` cursor rather than reading everything).
const SCAN_BUDGET: usize = 10_000;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

/// Which runs to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StateFilter {
    /// Not ended: running or waiting.
    Open,
    Running,
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl StateFilter {
    fn matches(self, status: RunStatus) -> bool {
        match self {
            StateFilter::Open => !status.is_terminal(),
            StateFilter::Running => status == RunStatus::Running,
            StateFilter::Waiting => status == RunStatus::Waiting,
            StateFilter::Completed => status == RunStatus::Completed,
            StateFilter::Failed => status == RunStatus::Failed,
            StateFilter::Cancelled => status == RunStatus::Cancelled,
        }
    }
}

/// Filters and paging of `GET /api/v1/runs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunsQuery {
    /// `open`, `running`, `waiting`, `completed`, `failed` or `cancelled`.
    #[param(inline)]
    state: Option<StateFilter>,
    /// Playbook name.
    playbook: Option<String>,
    /// Finding key (exact).
    key: Option<String>,
    /// Finding kind (exact), e.g. `openai.api_key.leaked`.
    kind: Option<String>,
    /// Runs started at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<DateTime<Utc>>,
    /// Runs started before this time (RFC 3339); none when it is not after `since`.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<DateTime<Utc>>,
    /// Text anywhere in the finding's title, the key, the playbook or the run id (case does not
    /// matter); at most 200 characters.
    #[param(max_length = 200)]
    q: Option<String>,
    /// Runs whose id starts with this (how the CLI finds a run from a unique prefix): at most
    /// the 36 characters of a run id, lower-case hex digits and `-`.
    #[param(value_type = Option<String>, max_length = 36, pattern = "^[0-9a-f-]*$")]
    id_prefix: Option<query::RunIdPrefix>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Runs per page (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// A run in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct RunSummary {
    pub(crate) id: String,
    pub(crate) playbook: String,
    /// The playbook version (content hash) the run is pinned to.
    pub(crate) version: String,
    pub(crate) key: String,
    /// `running`, `waiting`, `completed`, `failed` or `cancelled`.
    pub(crate) status: String,
    /// `live` or `dry_run`.
    pub(crate) mode: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    /// The finding that started it (none for scheduled runs).
    pub(crate) finding_id: Option<String>,
    pub(crate) finding_kind: Option<String>,
    /// The finding's title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) title: Option<String>,
    /// The step it is at (running or parked).
    pub(crate) step: Option<String>,
    /// Why it failed: `<step>: <error>`.
    pub(crate) failure: Option<String>,
    /// Why it was cancelled.
    pub(crate) cancelled: Option<String>,
}

/// A page of runs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct RunPage {
    pub(crate) runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; absent at the end.
    pub(crate) next: Option<String>,
}

/// One step of a run, in playbook order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct StepView {
    pub(crate) id: String,
    /// `main` or `on_failure`.
    pub(crate) phase: String,
    pub(crate) action: Option<String>,
    /// `pending`, `running`, `waiting`, `succeeded`, `failed`, `skipped`, `already_done`,
    /// `dry_run`, or `not_run` (the run ended without reaching it).
    pub(crate) status: String,
    pub(crate) attempt: u32,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) error: Option<String>,
    /// What the step produced; null until it has an output.
    #[schema(value_type = Option<Object>)]
    pub(crate) output: Value,
    /// For approvals: the choice, who decided and through what.
    pub(crate) choice: Option<String>,
    pub(crate) decided_by: Vec<String>,
    pub(crate) via: Option<String>,
    /// The requests it sent, or in dry-run would have sent, one per call: `{method, path,
    /// body}` for OpenAI, `{method, url, headers, json}` for HTTP (header values redacted),
    /// `{to, text}` for Slack. Never a credential.
    #[schema(value_type = Vec<Object>)]
    pub(crate) requests: Vec<Value>,
    /// Times an operator restarted the run from this step after it failed here.
    pub(crate) restarts: u32,
}

/// An answer given to a gate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct AnswerView {
    pub(crate) actor: String,
    pub(crate) via: String,
    pub(crate) choice: String,
    pub(crate) at: DateTime<Utc>,
    pub(crate) comment: Option<String>,
}

/// An approval gate (its token is never shown).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct GateView {
    /// The approval step's id: answer with `POST .../gates/{step}/decision`.
    pub(crate) step: String,
    pub(crate) question: String,
    pub(crate) choices: Vec<String>,
    pub(crate) approvers: Vec<String>,
    pub(crate) quorum: u32,
    pub(crate) opened_at: DateTime<Utc>,
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) on_timeout: String,
    pub(crate) answers: Vec<AnswerView>,
    /// The choice, once decided.
    pub(crate) decision: Option<String>,
    pub(crate) decided_by: Vec<String>,
    pub(crate) decided_at: Option<DateTime<Utc>>,
    /// Closed without a decision (the run ended first).
    pub(crate) closed: bool,
}

/// A run with its timeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct RunDetail {
    pub(crate) run: RunSummary,
    /// The finding that started it (redacted at intake).
    #[schema(value_type = Option<Object>)]
    pub(crate) finding: Option<Value>,
    #[schema(value_type = Object)]
    pub(crate) vars: Value,
    /// The owner resolved when the run started (for a playbook that reads `owner`): `link`
    /// names which link of the chain answered (`finding`, `key_user`, `recorded`, `mapping`,
    /// `fallback`, `none`), `source` what it was, then the team and the people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) owner: Option<crate::owners::ResolvedOwner>,
    pub(crate) steps: Vec<StepView>,
    pub(crate) gates: Vec<GateView>,
    /// The run's audit entries, oldest first.
    pub(crate) audit: Vec<AuditView>,
}

/// Why a run is cancelled.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub(crate) struct CancelRequest {
    #[schema(max_length = 1000)]
    pub(crate) reason: Option<String>,
}

/// Longest reason a cancel or restart keeps (it goes into the audit log).
const MAX_REASON: usize = 1000;

/// The reason an operator gave (trimmed; at most [`MAX_REASON`] characters), or `default` when
/// none was given.
fn reason(given: Option<String>, default: impl FnOnce() -> String) -> Result<String, ApiError> {
    // Counted as sent (the schema's `maxLength`), before trimming.
    if given
        .as_deref()
        .is_some_and(|reason| reason.chars().count() > MAX_REASON)
    {
        return Err(ApiError::BadRequest(format!(
            "`reason` is at most {MAX_REASON} characters"
        )));
    }
    match given.as_deref().map(str::trim) {
        Some(reason) if !reason.is_empty() => Ok(reason.to_owned()),
        _ => Ok(default()),
    }
}

/// A cancelled run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Cancelled {
    pub(crate) id: String,
    pub(crate) status: String,
}

/// Why a failed run is restarted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub(crate) struct RestartRequest {
    #[schema(max_length = 1000)]
    pub(crate) reason: Option<String>,
}

/// A restarted run: running again from `step`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Restarted {
    pub(crate) id: String,
    pub(crate) status: String,
    /// The failed step it runs again.
    pub(crate) step: String,
    /// For a `foreach` step, the item it goes on from (0 otherwise).
    pub(crate) iteration: usize,
}

/// An answer to a gate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct DecisionRequest {
    /// One of the gate's choices.
    pub(crate) choice: String,
    /// The item answered, on a gate that asks per item (an attestation), e.g.
    /// `project_key:key_abc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) item: Option<String>,
    /// For a key kept in an attestation, its purpose.
    pub(crate) comment: Option<String>,
}

/// What became of an answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct DecisionResult {
    /// `decided` (the gate is closed with this choice) or `recorded` (it waits for more
    /// answers to reach its quorum).
    pub(crate) outcome: String,
    pub(crate) choice: String,
    /// Answers agreeing so far, and how many are needed (for `recorded`).
    pub(crate) answers: Option<usize>,
    pub(crate) quorum: Option<u32>,
}

fn summary(run: &Run) -> RunSummary {
    let step = if run.status.is_terminal() {
        None
    } else {
        run.steps
            .iter()
            .find(|(_, state)| matches!(state.status, StepStatus::Running | StepStatus::Waiting))
            .map(|(id, _)| id.clone())
    };
    RunSummary {
        id: run.id.clone(),
        playbook: run.playbook.clone(),
        version: run.version.clone(),
        key: run.key.clone(),
        status: run.status.as_str().to_owned(),
        mode: serde_json::to_value(run.mode)
            .ok()
            .and_then(|mode| mode.as_str().map(str::to_owned))
            .unwrap_or_default(),
        started_at: run.started_at,
        updated_at: run.updated_at,
        ended_at: run.ended_at,
        finding_id: run.finding.as_ref().map(|finding| finding.id.clone()),
        finding_kind: run.finding.as_ref().map(|finding| finding.kind.clone()),
        title: run.finding.as_ref().map(|finding| finding.title.clone()),
        step,
        failure: run
            .failure
            .as_ref()
            .map(|failure| format!("{}: {}", failure.step, failure.error)),
        cancelled: run.cancelled.clone(),
    }
}

/// The smallest UUIDv7 of the millisecond `at`: every run id created from then on sorts at or
/// after it, every earlier one before it.
fn id_floor(at: DateTime<Utc>) -> String {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0) & 0xffff_ffff_ffff;
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        millis >> 16,
        millis & 0xffff
    )
}

/// Whether lower-cased `text` is in the run's finding title, key, playbook or id.
fn matches_text(run: &Run, text: &str) -> bool {
    let title = run
        .finding
        .as_ref()
        .map(|finding| finding.title.as_str())
        .unwrap_or_default();
    [
        title,
        run.key.as_str(),
        run.playbook.as_str(),
        run.id.as_str(),
    ]
    .iter()
    .any(|field| field.to_lowercase().contains(text))
}

/// List runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of runs (role viewer)", body = RunPage),
        (status = 400, description = "A bad filter or page size, or an `id_prefix` that no run id starts with (longer than 36 characters, or a character other than lower-case hex and `-`)", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(query): Params<RunsQuery>,
) -> Result<Json<RunPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = query::limit(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let text = match &query.q {
        Some(q) if q.chars().count() > 200 => {
            return Err(ApiError::BadRequest(
                "`q` is at most 200 characters".to_owned(),
            ));
        }
        Some(q) if !q.trim().is_empty() => Some(q.trim().to_lowercase()),
        _ => None,
    };
    // An empty time range holds no run (once the request is known to be valid).
    if let (Some(since), Some(until)) = (query.since, query.until)
        && since >= until
    {
        return Ok(Json(RunPage {
            runs: Vec::new(),
            next: None,
        }));
    }
    // Run ids are UUIDv7: a time bound is an id bound, so a time range reads only its runs.
    let ceiling = query
        .until
        .map(|until| id_floor(until + chrono::Duration::milliseconds(1)));
    let before = match (query.cursor.as_deref(), ceiling.as_deref()) {
        (Some(cursor), Some(ceiling)) => Some(cursor.min(ceiling)),
        (cursor, ceiling) => cursor.or(ceiling),
    };
    let floor = query.since.map(id_floor);
    let store = api.inner.engine.store();
    // A key or playbook reads only its runs, through the store's index of them (a key's runs
    // are fewer than a playbook's), once every stored run is indexed.
    let index = match (&query.key, &query.playbook) {
        _ if !store.run_indexes_complete()? => None,
        (Some(key), _) => Some(RunIndex::Key(key)),
        (None, Some(playbook)) => Some(RunIndex::Playbook(playbook)),
        (None, None) => None,
    };
    let scan = RunsScan {
        index,
        prefix: query
            .id_prefix
            .as_ref()
            .map_or("", |prefix| prefix.0.as_str()),
        before,
        floor: floor.as_deref(),
    };
    let page = store.runs_page::<Run>(scan, limit, SCAN_BUDGET, |run| {
        query.state.is_none_or(|state| state.matches(run.status))
            && query
                .playbook
                .as_ref()
                .is_none_or(|playbook| &run.playbook == playbook)
            && query.key.as_ref().is_none_or(|key| &run.key == key)
            && query.kind.as_ref().is_none_or(|kind| {
                run.finding
                    .as_ref()
                    .is_some_and(|finding| &finding.kind == kind)
            })
            && query.since.is_none_or(|since| run.started_at >= since)
            && query.until.is_none_or(|until| run.started_at < until)
            && text.as_ref().is_none_or(|text| matches_text(run, text))
    })?;
    Ok(Json(RunPage {
        runs: page.items.iter().map(summary).collect(),
        next: page.next,
    }))
}

/// A run with its step timeline, gates and audit entries.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run (role viewer)", body = RunDetail),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody)
    ))]
pub(super) async fn show(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    let engine = &api.inner.engine;
    let run = engine
        .run(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    let steps = steps(&api, &run);
    let gates = engine
        .store()
        .gates::<Gate>(&run.id)?
        .into_iter()
        .map(|gate| GateView {
            step: gate.step,
            question: gate.question,
            choices: gate.choices,
            approvers: gate.approvers,
            quorum: gate.quorum,
            opened_at: gate.opened_at,
            deadline: gate.deadline,
            on_timeout: gate.on_timeout,
            answers: gate
                .answers
                .into_iter()
                .map(|answer| AnswerView {
                    actor: answer.actor,
                    via: answer.via,
                    choice: answer.choice,
                    at: answer.at,
                    comment: answer.comment,
                })
                .collect(),
            decision: gate.decision.as_ref().map(|d| d.choice.clone()),
            decided_by: gate
                .decision
                .as_ref()
                .map(|d| d.decided_by.clone())
                .unwrap_or_default(),
            decided_at: gate.decision.as_ref().map(|d| d.decided_at),
            closed: gate.closed,
        })
        .collect();
    let audit = engine
        .store()
        .run_audit(&run.id)?
        .into_iter()
        .map(|entry| AuditView::from_entry(None, entry))
        .collect();
    Ok(Json(RunDetail {
        run: summary(&run),
        finding: run
            .finding
            .as_ref()
            .and_then(|finding| serde_json::to_value(finding).ok()),
        vars: Value::Object(run.vars.clone()),
        owner: run.owner.clone(),
        steps,
        gates,
        audit,
    }))
}

/// The run's steps in playbook order (from its pinned version), then any not in it.
fn steps(api: &Api, run: &Run) -> Vec<StepView> {
    let mut order: Vec<(String, &'static str, Option<String>)> = Vec::new();
    if let Ok(playbook) = api.inner.engine.playbook_version(&run.version) {
        for step in &playbook.steps {
            order.push((step.id.clone(), "main", Some(step.action.name.to_owned())));
        }
        for step in &playbook.on_failure {
            order.push((
                step.id.clone(),
                "on_failure",
                Some(step.action.name.to_owned()),
            ));
        }
    }
    for id in run.steps.keys() {
        if !order.iter().any(|(known, _, _)| known == id) {
            let phase = if run.phase == Phase::OnFailure {
                "on_failure"
            } else {
                "main"
            };
            order.push((id.clone(), phase, None));
        }
    }
    order
        .into_iter()
        .map(|(id, phase, action)| {
            let state = run.steps.get(&id).cloned().unwrap_or_default();
            // A step an ended run never reached (an `on_failure` step of a run that did not
            // fail, or what came after a failed step) is not waiting for anything.
            let status = if run.status.is_terminal() && state.status == StepStatus::Pending {
                "not_run"
            } else {
                state.status.as_str()
            };
            StepView {
                id,
                phase: phase.to_owned(),
                action,
                status: status.to_owned(),
                attempt: state.attempt,
                started_at: state.started_at,
                finished_at: state.finished_at,
                error: state.error,
                output: state.output,
                choice: state.choice,
                decided_by: state.decided_by,
                via: state.via,
                requests: state.requests,
                restarts: state.restarts,
            }
        })
        .collect()
}

/// Cancel a run that has not ended (audited with the token's name).
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    request_body = CancelRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled (role editor)", body = Cancelled),
        (status = 400, description = "A bad body, or a reason over 1,000 characters", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run has already ended", body = ErrorBody)
    ))]
pub(super) async fn cancel(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<CancelRequest>,
) -> Result<Json<Cancelled>, ApiError> {
    caller.require(Role::Editor)?;
    let reason = reason(request.reason, || {
        format!("cancelled by {} through the API", caller.name)
    })?;
    match api
        .inner
        .engine
        .cancel(&id, &reason, &caller.actor())
        .await?
    {
        Cancel::NotFound => Err(ApiError::NotFound(format!("no run {id}"))),
        Cancel::Ended(status) => Err(ApiError::Conflict(format!(
            "run {id} has already ended: {}",
            status.as_str()
        ))),
        Cancel::Cancelled => {
            tracing::info!(run_id = %id, by = %caller.name, "run cancelled through the API");
            Ok(Json(Cancelled {
                id,
                status: RunStatus::Cancelled.as_str().to_owned(),
            }))
        }
    }
}

/// Restart a failed run from the step that failed it: the step runs again as a new attempt
/// with the same idempotency key (a journaled call is executed again from the journal), under
/// the same run id; audited with the caller and the reason.
#[utoipa::path(post, path = "/api/v1/runs/{id}/restart", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    request_body = RestartRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Running again (role editor)", body = Restarted),
        (status = 400, description = "A bad body, or a reason over 1,000 characters", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run has not failed (`not_failed`), or cannot be restarted: another run holds its key, it failed outside its steps, or on purpose (`not_restartable`)", body = ErrorBody)
    ))]
pub(super) async fn restart(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<RestartRequest>,
) -> Result<Json<Restarted>, ApiError> {
    caller.require(Role::Editor)?;
    let reason = reason(request.reason, || {
        format!("restarted by {} through the API", caller.name)
    })?;
    match api
        .inner
        .engine
        .restart(&id, &reason, &caller.actor())
        .await?
    {
        Restart::NotFound => Err(ApiError::NotFound(format!("no run {id}"))),
        Restart::NotFailed(status) => Err(ApiError::Refused {
            status: StatusCode::CONFLICT,
            code: "not_failed",
            message: format!(
                "run {id} is {}: only a failed run is restarted",
                status.as_str()
            ),
        }),
        Restart::Refused(why) => Err(ApiError::Refused {
            status: StatusCode::CONFLICT,
            code: "not_restartable",
            message: format!("run {id} cannot be restarted: {why}"),
        }),
        Restart::Restarted { step, iteration } => {
            tracing::info!(run_id = %id, step = %step, by = %caller.name, "run restarted through the API");
            Ok(Json(Restarted {
                id,
                status: RunStatus::Running.as_str().to_owned(),
                step,
                iteration,
            }))
        }
    }
}

/// Answer an approval gate as the token's identity: the token's *name* must be one of the
/// gate's approvers (an email, a Slack id, or a member of a `group:` in `[groups]`). The engine
/// decides, and audits the answer either way.
#[utoipa::path(post, path = "/api/v1/runs/{id}/gates/{gate}/decision", tag = "runs",
    params(
        ("id" = String, Path, description = "Run id"),
        ("gate" = String, Path, description = "The approval step's id")
    ),
    request_body = DecisionRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded or decided (role approver)", body = DecisionResult),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small (`forbidden`), or the token's name is not an approver of this gate (`not_allowed`)", body = ErrorBody),
        (status = 404, description = "No such run or gate (`unknown_gate`)", body = ErrorBody),
        (status = 409, description = "Already decided, already answered by this identity, or closed", body = ErrorBody),
        (status = 422, description = "Not one of the gate's choices (`unknown_choice`), no item named on a gate that asks per item (`no_item`), or not one of its items (`unknown_item`)", body = ErrorBody)
    ))]
pub(super) async fn decide(
    State(api): State<Api>,
    caller: Caller,
    Path((id, gate)): Path<(String, String)>,
    Body(request): Body<DecisionRequest>,
) -> Result<Json<DecisionResult>, ApiError> {
    caller.require(Role::Approver)?;
    let engine = &api.inner.engine;
    // The API runs inside the runner, so it may hand the engine the gate's own token; an
    // unknown gate is still passed on, to be refused and audited like any other answer.
    let token = engine
        .store()
        .gate::<Gate>(&id, &gate)?
        .map(|gate| gate.token)
        .unwrap_or_default();
    let decision = quench_proto::Decision {
        schema: quench_proto::DecisionSchema::V1,
        id: uuid::Uuid::now_v7().to_string(),
        run_id: id.clone(),
        gate: gate.clone(),
        token,
        choice: request.choice,
        item: request.item,
        comment: request.comment,
        actor: caller.actor(),
        decided_at: engine.now(),
    };
    let outcome = engine.decide(&decision, Defer::Never).await?;
    tracing::info!(run_id = %id, gate = %gate, actor = %caller.name, %outcome, "decision through the API");
    match outcome {
        DecisionOutcome::Decided { choice } => Ok(Json(DecisionResult {
            outcome: "decided".to_owned(),
            choice,
            answers: None,
            quorum: None,
        })),
        DecisionOutcome::Recorded {
            choice,
            answers,
            quorum,
        } => Ok(Json(DecisionResult {
            outcome: "recorded".to_owned(),
            choice,
            answers: Some(answers),
            quorum: Some(quorum),
        })),
        // Only Slack answers are deferred; an API answer never is, but say what it would mean.
        DecisionOutcome::Deferred => Err(ApiError::Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "deferred",
            message: "the gate's messages are still being delivered; answer again shortly"
                .to_owned(),
        }),
        DecisionOutcome::Refused(refusal) => {
            let status = match &refusal {
                Refusal::UnknownGate => StatusCode::NOT_FOUND,
                Refusal::NotAllowed(_) => StatusCode::FORBIDDEN,
                Refusal::UnknownChoice(_) | Refusal::NoItem | Refusal::UnknownItem(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                Refusal::WrongToken
                | Refusal::AlreadyAnswered(_)
                | Refusal::AlreadyDecided { .. }
                | Refusal::Closed => StatusCode::CONFLICT,
            };
            let message = match &refusal {
                Refusal::NotAllowed(_) => format!(
                    "{refusal}: the token's name must be one of the gate's approvers (or in one of its groups)"
                ),
                _ => refusal.to_string(),
            };
            Err(ApiError::Refused {
                status,
                code: refusal.code(),
                message,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use proptest::prelude::*;

    use super::id_floor;

    proptest! {
        /// A run id made at any millisecond sorts at or after that millisecond's floor and
        /// before the next millisecond's.
        #[test]
        fn a_run_id_sorts_between_its_millisecond_floors(millis in 0u64..4_102_444_800_000, random in any::<u128>()) {
            let seconds = i64::try_from(millis / 1000).expect("seconds");
            let nanos = u32::try_from((millis % 1000) * 1_000_000).expect("nanos");
            let at = chrono::Utc.timestamp_opt(seconds, nanos).single().expect("a time");
            let timestamp = uuid::Timestamp::from_unix(uuid::NoContext, millis / 1000, nanos);
            let mut id = *uuid::Uuid::new_v7(timestamp).as_bytes();
            // Any random bits: the floor must hold for all of them.
            let noise = random.to_be_bytes();
            id[6] = (id[6] & 0xf0) | (noise[6] & 0x0f);
            id[7..].copy_from_slice(&noise[7..]);
            let id = uuid::Uuid::from_bytes(id).to_string();
            prop_assert!(id_floor(at) <= id, "{id} < {}", id_floor(at));
            prop_assert!(id < id_floor(at + chrono::Duration::milliseconds(1)), "{id}");
        }
    }
}
