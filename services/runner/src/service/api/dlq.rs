//! The dead-letter stream (`QUENCH_DLQ`): list what was refused, with why and where from, and
//! replay a message — republish its (redacted) body to its original subject, then delete it
//! from the stream. A replayed finding that is still bad is simply dead-lettered again; a dead
//! letter that keeps only part of its message is not replayed.
//!
//! Intake redacts a body before it dead-letters it; everything read back from the stream (body,
//! subject, reason) is redacted again on the way out, so a letter written by an older version
//! or by another publisher of `quench.dlq.>` cannot show a key to a viewer.

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use axum::extract::{Path, State};
use axum::response::Json;
use chrono::{DateTime, Utc};
use quench_proto::{redact_bytes, redact_str, subject};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, Params};
use super::query::{self, Sequence};
use crate::config::Role;
use crate::store::{AuditDraft, Batch};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// Bytes of a body shown in a list.
const PREVIEW: usize = 4096;

/// Paging of `GET /api/v1/dlq`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DlqQuery {
    /// Messages after this stream sequence (the `next` of the previous page).
    #[param(value_type = Option<u64>)]
    cursor: Option<Sequence>,
    /// Messages per page (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// A dead-lettered message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct DlqMessage {
    /// Its sequence in `QUENCH_DLQ`: replay it by this.
    pub(crate) seq: u64,
    /// `quench.dlq.findings` or `quench.dlq.decisions`.
    pub(crate) subject: String,
    /// Where it was published (`Quench-Dlq-Subject`).
    pub(crate) original_subject: Option<String>,
    /// Why it was refused (`Quench-Dlq-Reason`).
    pub(crate) reason: Option<String>,
    pub(crate) at: Option<DateTime<Utc>>,
    /// Bytes of the dead letter's body.
    pub(crate) size: usize,
    /// Bytes of the message as it arrived (`Quench-Dlq-Size`).
    pub(crate) original_size: Option<usize>,
    /// The dead letter keeps only the first 64 KiB of the message (`Quench-Dlq-Truncated`): it
    /// cannot be replayed.
    pub(crate) incomplete: bool,
    /// The body (redacted), at most 4 KiB of it.
    pub(crate) body: String,
    /// `body` shows only the first 4 KiB.
    pub(crate) truncated: bool,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct DlqPage {
    pub(crate) messages: Vec<DlqMessage>,
    /// Pass as `cursor` for the next page; absent at the end.
    pub(crate) next: Option<u64>,
}

/// A replayed message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct Replayed {
    pub(crate) seq: u64,
    /// Where it was published again.
    pub(crate) subject: String,
    /// Its sequence in the stream it went to.
    pub(crate) published: u64,
}

async fn stream(api: &Api) -> Result<Stream<()>, ApiError> {
    api.inner
        .jetstream
        .get_stream_no_info(subject::STREAM_DLQ)
        .await
        .map_err(|error| {
            ApiError::Unavailable(format!("cannot open {}: {error}", subject::STREAM_DLQ))
        })
}

/// A header of a dead letter, redacted.
fn header(message: &async_nats::jetstream::message::StreamMessage, name: &str) -> Option<String> {
    message
        .headers
        .get(name)
        .map(|value| redact_str(value.as_str()).into_owned())
}

/// Whether the dead letter keeps only part of its message.
fn incomplete(message: &async_nats::jetstream::message::StreamMessage) -> bool {
    header(message, subject::HEADER_DLQ_TRUNCATED).is_some_and(|value| value == "true")
}

/// Dead-lettered messages, oldest first.
#[utoipa::path(get, path = "/api/v1/dlq", tag = "dlq", params(DlqQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of dead letters (role viewer)", body = DlqPage),
        (status = 400, description = "Bad paging", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 503, description = "NATS cannot be reached", body = ErrorBody)
    ))]
pub(super) async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(query): Params<DlqQuery>,
) -> Result<Json<DlqPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let limit = query::limit(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let stream = stream(&api).await?;
    let mut messages = Vec::new();
    let mut seq = query.cursor.map_or(0, |cursor| cursor.0).saturating_add(1);
    let mut more = false;
    loop {
        // The next message at or after `seq` (replayed ones are deleted: skipped here).
        let found = stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(subject::DLQ_ALL)
            .send()
            .await;
        let message = match found {
            Ok(message) => message,
            Err(error) if matches!(error.kind(), RawMessageErrorKind::NoMessageFound) => break,
            Err(error) => {
                return Err(ApiError::Unavailable(format!(
                    "cannot read {}: {error}",
                    subject::STREAM_DLQ
                )));
            }
        };
        if messages.len() >= limit {
            more = true;
            break;
        }
        seq = message.sequence.saturating_add(1);
        let size = message.payload.len();
        // Redacted whole, then cut: a key cut at the preview's end may no longer look like one.
        let body = redact_bytes(&message.payload);
        let shown = &body[..body.len().min(PREVIEW)];
        messages.push(DlqMessage {
            seq: message.sequence,
            subject: redact_str(&message.subject).into_owned(),
            original_subject: header(&message, subject::HEADER_DLQ_SUBJECT),
            reason: header(&message, subject::HEADER_DLQ_REASON),
            at: DateTime::from_timestamp(message.time.unix_timestamp(), message.time.nanosecond()),
            size,
            original_size: header(&message, subject::HEADER_DLQ_SIZE)
                .and_then(|size| size.parse().ok()),
            incomplete: incomplete(&message),
            body: String::from_utf8_lossy(shown).into_owned(),
            truncated: body.len() > PREVIEW,
        });
    }
    let next = if more {
        messages.last().map(|message| message.seq)
    } else {
        None
    };
    Ok(Json(DlqPage { messages, next }))
}

/// Replay a dead letter: republish its body to its original subject (a finding or a decision
/// subject only), then delete it from the DLQ; audited with the token's name.
#[utoipa::path(post, path = "/api/v1/dlq/{seq}/replay", tag = "dlq",
    params(("seq" = u64, Path, description = "The message's sequence in QUENCH_DLQ")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Republished and removed (role admin)", body = Replayed),
        (status = 400, description = "Not a sequence number", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 409, description = "Its original subject is not a finding or decision subject, or the dead letter keeps only part of its message", body = ErrorBody),
        (status = 503, description = "NATS cannot be reached", body = ErrorBody)
    ))]
pub(super) async fn replay(
    State(api): State<Api>,
    caller: Caller,
    Path(seq): Path<String>,
) -> Result<Json<Replayed>, ApiError> {
    caller.require(Role::Admin)?;
    let Sequence(seq) = seq.parse()?;
    let not_found = || ApiError::NotFound(format!("no message {seq} in {}", subject::STREAM_DLQ));
    // JetStream numbers messages from 1 and calls a request for 0 malformed: there is none.
    if seq == 0 {
        return Err(not_found());
    }
    let stream = stream(&api).await?;
    let message = match stream.get_raw_message(seq).await {
        Ok(message) => message,
        Err(error) if matches!(error.kind(), RawMessageErrorKind::NoMessageFound) => {
            return Err(not_found());
        }
        Err(error) => return Err(ApiError::Unavailable(error.to_string())),
    };
    let original = header(&message, subject::HEADER_DLQ_SUBJECT).unwrap_or_default();
    let allowed = [subject::FINDINGS_PREFIX, subject::DECISIONS_PREFIX]
        .iter()
        .any(|prefix| {
            original
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)
        });
    if !allowed {
        return Err(ApiError::Conflict(format!(
            "message {seq} came from `{original}`, not a finding or decision subject; it is not replayed"
        )));
    }
    if incomplete(&message) {
        let size = header(&message, subject::HEADER_DLQ_SIZE).unwrap_or_else(|| "?".to_owned());
        return Err(ApiError::Conflict(format!(
            "message {seq} keeps only the first {} of its {size} bytes ({}); it is not replayed: \
             have the publisher send it again",
            message.payload.len(),
            subject::HEADER_DLQ_TRUNCATED
        )));
    }
    let published = api
        .inner
        .jetstream
        .publish(original.clone(), redact_bytes(&message.payload).into())
        .await
        .map_err(|error| ApiError::Unavailable(format!("cannot publish to {original}: {error}")))?
        .await
        .map_err(|error| ApiError::Unavailable(format!("cannot publish to {original}: {error}")))?;
    // Audited before the delete: a replay that is not removed may be replayed twice (a finding
    // with the same id is then dropped as a duplicate), but never goes unrecorded.
    let engine = &api.inner.engine;
    let mut draft = AuditDraft::new(
        engine.now(),
        "dlq_replayed",
        serde_json::json!({"seq": seq, "subject": original, "reason": header(&message, subject::HEADER_DLQ_REASON), "published": published.sequence}),
    );
    draft.actor = Some(serde_json::to_value(caller.actor()).unwrap_or_default());
    let mut batch = Batch::new();
    batch.audit(draft);
    engine.store().commit(batch).await?;
    stream.delete_message(seq).await.map_err(|error| {
        ApiError::Unavailable(format!(
            "republished, but cannot delete message {seq} from {}: {error}",
            subject::STREAM_DLQ
        ))
    })?;
    tracing::info!(seq, subject = %original, by = %caller.name, "dead letter replayed");
    Ok(Json(Replayed {
        seq,
        subject: original,
        published: published.sequence,
    }))
}
