//! The audit log: entries newest first with cursor paging, and verification of the chain.

use axum::extract::State;
use axum::response::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, Params};
use super::query::{self, Sequence};
use crate::config::Role;
use crate::store::AuditEntry;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditView {
    pub(crate) seq: u64,
    /// SHA-256 of the stored entry (run events carry it); absent in a run's timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hash: Option<String>,
    /// The hash of the entry before.
    pub(crate) prev: String,
    pub(crate) at: DateTime<Utc>,
    /// What happened, e.g. `finding_received`, `run_started`, `step_intent`, `decision`,
    /// `playbook_loaded`, `playbook_disabled`, `run_cancel_requested`, `dlq_replayed`.
    pub(crate) kind: String,
    pub(crate) run_id: Option<String>,
    pub(crate) playbook: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) step: Option<String>,
    /// Who acted: `{via, id, name}`.
    #[schema(value_type = Option<Object>)]
    pub(crate) actor: Option<Value>,
    /// For answers to gates: whether the actor was allowed.
    pub(crate) allowed: Option<bool>,
    #[schema(value_type = Object)]
    pub(crate) detail: Value,
}

impl AuditView {
    pub(crate) fn from_entry(hash: Option<String>, entry: AuditEntry) -> AuditView {
        AuditView {
            seq: entry.seq,
            hash,
            prev: entry.prev,
            at: entry.at,
            kind: entry.kind,
            run_id: entry.run_id,
            playbook: entry.playbook,
            version: entry.version,
            step: entry.step,
            actor: entry.actor,
            allowed: entry.allowed,
            detail: entry.detail,
        }
    }
}

/// Paging of `GET /api/v1/audit`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Entries before this sequence number (the `next` of the previous page).
    #[param(value_type = Option<u64>)]
    before: Option<Sequence>,
    /// Entries per page (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only this run's entries (its id).
    run: Option<String>,
    /// Only entries of runs of this finding key (and findings with it).
    key: Option<String>,
    /// Only entries of this kind, e.g. `decision`, `step_intent`, `step_dry_run`.
    kind: Option<String>,
    /// Only entries by this actor (id or name, as shown in the actor column).
    actor: Option<String>,
}

/// Most entries examined per list request: a filter that matches rarely returns a `next`
/// cursor rather than reading the whole log.
const SCAN_BUDGET: usize = 10_000;

/// The names an entry's actor goes by: its id and name, or who loaded a playbook version.
fn actor_names(entry: &AuditEntry) -> impl Iterator<Item = &str> {
    let actor = entry.actor.as_ref();
    [
        actor.and_then(|actor| actor.get("id")),
        actor.and_then(|actor| actor.get("name")),
        entry.detail.get("by"),
    ]
    .into_iter()
    .flatten()
    .filter_map(Value::as_str)
}

/// A page of audit entries, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct AuditPage {
    pub(crate) entries: Vec<AuditView>,
    /// Pass as `before` for the next (older) page; absent at the start of the log. With a
    /// filter, a page can be short (or empty) and still have a `next`: at most 10,000 entries
    /// are examined per request.
    pub(crate) next: Option<u64>,
}

/// The result of recomputing the chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Verified {
    pub(crate) ok: bool,
    /// Entries that verify.
    pub(crate) entries: u64,
    /// The hash of the last entry that verifies.
    pub(crate) head: String,
    /// The first entry that does not fit, and why.
    pub(crate) first_bad: Option<u64>,
    pub(crate) reason: Option<String>,
}

/// Audit entries, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of entries (role viewer)", body = AuditPage),
        (status = 400, description = "Bad paging", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(query): Params<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = query::limit(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let engine = &api.inner.engine;
    // Runs' keys, looked up once per run for the key filter.
    let mut keys: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut key_of = |run: &str| -> Option<String> {
        keys.entry(run.to_owned())
            .or_insert_with(|| engine.run(run).ok().flatten().map(|run| run.key))
            .clone()
    };
    let keep = |entry: &AuditEntry| {
        query
            .run
            .as_ref()
            .is_none_or(|run| entry.run_id.as_ref() == Some(run))
            && query.kind.as_ref().is_none_or(|kind| &entry.kind == kind)
            && query
                .actor
                .as_ref()
                .is_none_or(|actor| actor_names(entry).any(|name| name == actor))
            && query.key.as_ref().is_none_or(|key| {
                entry.detail.get("key").and_then(Value::as_str) == Some(key.as_str())
                    || entry
                        .run_id
                        .as_deref()
                        .is_some_and(|run| key_of(run).as_ref() == Some(key))
            })
    };
    let (entries, next) = engine.store().audit_newest_first(
        query.before.map(|before| before.0),
        limit,
        SCAN_BUDGET,
        keep,
    )?;
    let entries = entries
        .into_iter()
        .map(|(hash, entry)| AuditView::from_entry(Some(hash), entry))
        .collect();
    Ok(Json(AuditPage { entries, next }))
}

/// Recomputes the whole chain (one verification at a time) and names the first entry that
/// does not fit.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The verdict (role viewer); `ok` is false when the chain is broken", body = Verified),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn verify(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<Verified>, ApiError> {
    caller.require(Role::Viewer)?;
    let _one = api
        .inner
        .verifying
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let store = api.inner.engine.store().clone();
    let report = tokio::task::spawn_blocking(move || store.verify_audit())
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(Verified {
        ok: report.first_bad.is_none(),
        entries: report.entries,
        head: report.head,
        first_bad: report.first_bad.as_ref().map(|(seq, _)| *seq),
        reason: report.first_bad.map(|(_, why)| why),
    }))
}
