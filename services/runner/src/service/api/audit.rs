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
use crate::store::{AuditDraft, AuditEntry, Batch, Pruned};

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

/// Which entries to export.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportQuery {
    /// Entries before this sequence number (from the first one stored).
    #[param(value_type = u64)]
    before: Sequence,
}

/// The stored audit entries before `before`, oldest first, as JSON Lines: each line is an
/// entry exactly as hashed, so the file verifies on its own (`quench audit verify --file`).
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(ExportQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The entries (role viewer), one JSON object per line", content_type = "application/jsonl", body = String),
        (status = 400, description = "Bad `before`", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn export(
    State(api): State<Api>,
    caller: Caller,
    Params(query): Params<ExportQuery>,
) -> Result<axum::response::Response, ApiError> {
    caller.require(Role::Viewer)?;
    let store = api.inner.engine.store().clone();
    let before = query.before.0;
    // Read on a blocking thread and sent as it is read: an export can be the whole log.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::task::spawn_blocking(move || {
        for item in store.audit_export(before) {
            let chunk = item
                .map(|(_, mut body)| {
                    body.push(b'\n');
                    body
                })
                .map_err(std::io::Error::other);
            let failed = chunk.is_err();
            if sender.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    let stream = tokio_stream_of(receiver);
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/jsonl")
        .body(axum::body::Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// The receiving end of a channel as a stream.
fn tokio_stream_of<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// What to prune: the last entry of an export, and its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PruneRequest {
    /// The last exported entry's sequence number.
    #[serde(deserialize_with = "whole_number")]
    pub(crate) through: u64,
    /// Its hash (the export's last line, hashed): proof the caller holds that export.
    pub(crate) hash: String,
}

/// A non-negative whole number, written as JSON allows it (`12` or `12.0`: JSON Schema calls
/// both integers, and so do clients that send every number as a double).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|value| value.fract() == 0.0 && *value >= 0.0 && *value < 2f64.powi(64))
                .map(|value| value as u64)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a sequence number")))
}

/// What a prune removed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PruneResult {
    /// The last removed entry (the new checkpoint), absent when nothing could be removed
    /// (entries are removed in whole stored records, so up to a few dozen entries before
    /// `through` may stay).
    pub(crate) checkpoint: Option<u64>,
    pub(crate) checkpoint_hash: Option<String>,
}

/// Removes exported audit entries up to `through` (in whole stored records), leaving a
/// checkpoint that verification starts from; audited with the caller's name.
#[utoipa::path(post, path = "/api/v1/audit/prune", tag = "audit",
    request_body = PruneRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Pruned, or nothing to prune (role admin)", body = PruneResult),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 409, description = "That entry is not stored with that hash", body = ErrorBody)
    ))]
pub(super) async fn prune(
    State(api): State<Api>,
    caller: Caller,
    super::error::Body(request): super::error::Body<PruneRequest>,
) -> Result<Json<PruneResult>, ApiError> {
    caller.require(Role::Admin)?;
    let engine = &api.inner.engine;
    let pruned = engine
        .store()
        .prune_audit(request.through, &request.hash)
        .await?;
    let (checkpoint, checkpoint_hash) = match pruned {
        Pruned::NotThatHash => {
            return Err(ApiError::Conflict(format!(
                "entry #{} is not stored with hash {}: export the log again and prune with the hash its last line has",
                request.through, request.hash
            )));
        }
        Pruned::Nothing => (None, None),
        Pruned::Through { seq, hash } => (Some(seq), Some(hash)),
    };
    if let (Some(seq), Some(hash)) = (checkpoint, &checkpoint_hash) {
        let mut draft = AuditDraft::new(
            engine.now(),
            "audit_pruned",
            serde_json::json!({"through": seq, "hash": hash, "asked_through": request.through}),
        );
        draft.actor = Some(serde_json::to_value(caller.actor()).unwrap_or_default());
        let mut batch = Batch::new();
        batch.audit(draft);
        engine.store().commit(batch).await?;
        tracing::info!(through = seq, by = %caller.name, "audit log pruned after export");
    }
    Ok(Json(PruneResult {
        checkpoint,
        checkpoint_hash,
    }))
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
