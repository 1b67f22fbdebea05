//! The approval inbox: the open gates the caller may answer (the caller's name is an approver,
//! directly, through a group, or by an escalation, all already expanded into the gate's
//! allowed identities), most urgent first, with how long each has waited. The answers go
//! through the decision route like any other, so the engine still decides who may answer.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::config::Role;
use crate::engine::Gate;

/// The most gates one inbox lists (the count covers them all).
const MAX_LISTED: usize = 500;

/// The caller's open gates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Inbox {
    /// Whose inbox: the token's name or the signed-in person.
    pub(crate) person: String,
    /// Every gate the person may answer (more than are listed when above 500).
    pub(crate) count: usize,
    /// Earliest deadline first.
    pub(crate) gates: Vec<InboxGate>,
}

/// An open gate the person may answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct InboxGate {
    pub(crate) run_id: String,
    pub(crate) playbook: String,
    /// The approval step's id (the gate's name in the decision route).
    pub(crate) gate: String,
    pub(crate) question: String,
    pub(crate) choices: Vec<String>,
    /// Choices that ask for a comment, with the question asked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) comment_for: BTreeMap<String, String>,
    /// Answers needed, and answers given so far.
    pub(crate) quorum: u32,
    pub(crate) answers: usize,
    /// The run's key and, when a finding started it, the finding's kind and title.
    pub(crate) key: String,
    pub(crate) finding_kind: Option<String>,
    pub(crate) finding_title: Option<String>,
    pub(crate) opened_at: DateTime<Utc>,
    /// Seconds since the gate opened.
    pub(crate) waited_secs: i64,
    pub(crate) deadline: DateTime<Utc>,
    /// The choice taken at the deadline.
    pub(crate) on_timeout: String,
    pub(crate) reminders: u32,
    /// Escalations that have happened.
    pub(crate) escalations: usize,
    /// For a gate that asks per item: the items still open, each with its facts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub(crate) items: Vec<serde_json::Map<String, Value>>,
}

/// The open approval gates the caller may answer, earliest deadline first (role viewer; only
/// an approver's answer is taken).
#[utoipa::path(get, path = "/api/v1/inbox", tag = "runs",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's open gates", body = Inbox),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn inbox(State(api): State<Api>, caller: Caller) -> Result<Json<Inbox>, ApiError> {
    caller.require(Role::Viewer)?;
    let engine = api.inner.engine.clone();
    let person = caller.name.clone();
    let (count, gates) = tokio::task::spawn_blocking(move || open_gates_of(&engine, &person))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(Inbox {
        person: caller.name,
        count,
        gates,
    }))
}

/// Every open gate `person` may answer and has not answered, earliest deadline first: how many,
/// and the first `MAX_LISTED` with their runs' facts (a run is read only for a gate listed).
fn open_gates_of(
    engine: &crate::engine::Engine,
    person: &str,
) -> Result<(usize, Vec<InboxGate>), ApiError> {
    let store = engine.store();
    let who = person.trim().to_lowercase();
    let now = Utc::now();
    let mut waiting = Vec::new();
    for (_, _, run_id) in store.open_runs()? {
        for gate in store.gates::<Gate>(&run_id)? {
            if !gate.is_open() || !gate.allows(person) {
                continue;
            }
            let answered = |item: Option<&str>| {
                gate.answers.iter().any(|answer| {
                    answer.actor.trim().to_lowercase() == who && answer.item.as_deref() == item
                })
            };
            let items: Vec<_> = gate
                .items
                .iter()
                .filter(|item| {
                    let id = crate::engine::state::item_id(item);
                    !gate.item_decisions.contains_key(id) && !answered(Some(id))
                })
                .cloned()
                .collect();
            if (gate.per_item() && items.is_empty()) || (!gate.per_item() && answered(None)) {
                continue;
            }
            waiting.push((gate, run_id.clone(), items));
        }
    }
    waiting.sort_by(|a, b| (a.0.deadline, &a.1).cmp(&(b.0.deadline, &b.1)));
    let count = waiting.len();
    let mut listed = Vec::with_capacity(count.min(MAX_LISTED));
    for (gate, run_id, items) in waiting.into_iter().take(MAX_LISTED) {
        let Some(run) = engine.run(&run_id)? else {
            continue;
        };
        listed.push(InboxGate {
            run_id,
            playbook: run.playbook.clone(),
            gate: gate.step.clone(),
            question: gate.question.clone(),
            choices: gate.choices.clone(),
            comment_for: gate.comment_for.clone(),
            quorum: gate.quorum,
            answers: gate.answers.len(),
            key: run.key.clone(),
            finding_kind: run.finding.as_ref().map(|finding| finding.kind.clone()),
            finding_title: run.finding.as_ref().map(|finding| finding.title.clone()),
            opened_at: gate.opened_at,
            waited_secs: (now - gate.opened_at).num_seconds().max(0),
            deadline: gate.deadline,
            on_timeout: gate.on_timeout.clone(),
            reminders: gate.reminders,
            escalations: gate.escalations.iter().filter(|step| step.done).count(),
            items,
        });
    }
    Ok((count, listed))
}
