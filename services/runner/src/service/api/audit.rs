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
use crate::store::{AuditDraft, AuditEntry, Batch, Pruned, Scan};

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
    /// Entries at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<DateTime<Utc>>,
    /// Whose chain (a cluster with several partitions keeps one per partition; the header
    /// `Quench-Partition` says the same). A service with one chain has only partition 0.
    partition: Option<u32>,
}

/// Refuses a `partition` other than the one whose chain this API holds: through a cluster's
/// front it names where the request went, so a mismatch is a request that went astray.
fn this_partition(api: &Api, named: Option<u32>) -> Result<(), ApiError> {
    let slot = api.inner.engine.partition();
    match named {
        Some(number) if number != slot.index => Err(ApiError::Refused {
            status: axum::http::StatusCode::NOT_FOUND,
            code: "no_such_partition",
            message: if slot.count == 1 {
                format!(
                    "this service keeps one audit chain, partition 0; there is no partition {number}"
                )
            } else {
                format!(
                    "partition must be a partition number from 0 to {}, and this request \
                     reached partition {}'s chain, not {number}'s",
                    slot.count - 1,
                    slot.index
                )
            },
        }),
        _ => Ok(()),
    }
}

/// How far before `since` the scan goes on: an entry's time is taken when its commit is
/// prepared, so entries a little apart may be chained out of time order.
const CLOCK_SLACK: chrono::Duration = chrono::Duration::minutes(5);

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
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "`partition` names a chain this service does not keep", body = ErrorBody)
    ))]
pub(super) async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(query): Params<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Role::Viewer)?;
    this_partition(&api, query.partition)?;
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
    let mut keep = keep;
    let (entries, next) = engine.store().audit_newest_first_until(
        query.before.map(|before| before.0),
        limit,
        SCAN_BUDGET,
        |entry| {
            if query
                .since
                .is_some_and(|since| entry.at < since - CLOCK_SLACK)
            {
                Scan::Stop
            } else if query.since.is_none_or(|since| entry.at >= since)
                && query.until.is_none_or(|until| entry.at < until)
                && keep(entry)
            {
                Scan::Keep
            } else {
                Scan::Skip
            }
        },
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
    /// Whose chain (a cluster with several partitions keeps one per partition, and an export
    /// must name it, here or in the header `Quench-Partition`).
    partition: Option<u32>,
}

/// The stored audit entries before `before`, oldest first, as JSON Lines: each line is an
/// entry exactly as hashed, so the file verifies on its own (`quench audit verify --file`).
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(ExportQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The entries (role viewer), one JSON object per line", content_type = "application/jsonl", body = String),
        (status = 400, description = "Bad `before`", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "`partition` names a chain this service does not keep", body = ErrorBody)
    ))]
pub(super) async fn export(
    State(api): State<Api>,
    caller: Caller,
    Params(query): Params<ExportQuery>,
) -> Result<axum::response::Response, ApiError> {
    caller.require(Role::Viewer)?;
    this_partition(&api, query.partition)?;
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
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                export_name(api.inner.engine.partition(), before)
            ),
        )
        .body(axum::body::Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// An export's file name: the partition's too, where there are several chains.
fn export_name(slot: crate::cluster::partition::Slot, before: u64) -> String {
    match slot.count {
        1 => format!("quench-audit-before-{before}.jsonl"),
        _ => format!(
            "quench-audit-partition-{}-before-{before}.jsonl",
            slot.index
        ),
    }
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

/// A non-negative whole number, written as JSON allows it (`12`, `12.0`, `1.2e1`: JSON Schema
/// calls them all integers, and so do clients that send every number as a double), up to
/// `u64::MAX`. Read from the number as written, not through a double: a fraction a double would
/// round away (`12.0000000000000001`, `1e-400`) is refused, and a large value is not rounded to
/// a neighbour.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
    let text = raw.get();
    let shown: String = text.chars().take(40).collect();
    let shown = if shown.len() < text.len() {
        format!("{shown}…")
    } else {
        shown
    };
    parse_whole_number(text).map_err(|why| serde::de::Error::custom(format!("{shown} {why}")))
}

/// The value of a JSON number `text` when it is a whole number from 0 to `u64::MAX`; else why
/// not.
fn parse_whole_number(text: &str) -> Result<u64, &'static str> {
    const NOT_A_NUMBER: &str = "is not a sequence number (a whole number)";
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let is_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if integer.is_empty() || !is_digits(integer) || !is_digits(fraction) {
        return Err(NOT_A_NUMBER);
    }
    // The power of ten the digits are scaled by, saturated far beyond any u64 (20 digits): a
    // written exponent can be longer than any integer type.
    let mut scale: i64 = 0;
    if let Some(exponent) = exponent {
        let (sign, digits) = match exponent.as_bytes().first() {
            Some(b'-') => (-1, &exponent[1..]),
            Some(b'+') => (1, &exponent[1..]),
            _ => (1, exponent),
        };
        if digits.is_empty() || !is_digits(digits) {
            return Err(NOT_A_NUMBER);
        }
        for digit in digits.bytes() {
            scale = (scale * 10 + i64::from(digit - b'0')).min(1 << 40);
        }
        scale *= sign;
    }
    let digits = || integer.bytes().chain(fraction.bytes());
    // Significant digits: without leading zeros, and trailing zeros folded into the scale.
    let leading = digits().take_while(|digit| *digit == b'0').count();
    let total = integer.len() + fraction.len();
    if leading == total {
        return Ok(0); // zero, however written (`-0`, `0.0e7`)
    }
    let trailing = digits().rev().take_while(|digit| *digit == b'0').count();
    let fraction_len = i64::try_from(fraction.len()).map_err(|_| NOT_A_NUMBER)?;
    let scale = scale - fraction_len + i64::try_from(trailing).map_err(|_| NOT_A_NUMBER)?;
    if negative {
        return Err("is negative: sequence numbers start at 1");
    }
    if scale < 0 {
        return Err("is not a whole number");
    }
    let significant = total - leading - trailing;
    const TOO_LARGE: &str = "is larger than any sequence number (at most 18446744073709551615)";
    if i64::try_from(significant).map_err(|_| TOO_LARGE)? + scale > 20 {
        return Err(TOO_LARGE);
    }
    let mut value: u64 = 0;
    for digit in digits().skip(leading).take(significant) {
        value = value
            .checked_mul(10)
            .and_then(|value| value.checked_add(u64::from(digit - b'0')))
            .ok_or(TOO_LARGE)?;
    }
    for _ in 0..scale {
        value = value.checked_mul(10).ok_or(TOO_LARGE)?;
    }
    Ok(value)
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

#[cfg(test)]
mod tests {
    //! `through` of `POST /api/v1/audit/prune`, read as the handler reads the body (axum's
    //! `Json`), against a model that computes each written number exactly in `u128`.

    use proptest::prelude::*;

    use super::PruneRequest;

    /// What the body `{"through": <written>, ...}` yields: the number, or the refusal.
    fn through(written: &str) -> Result<u64, String> {
        let body = format!(r#"{{"through": {written}, "hash": "h"}}"#);
        axum::Json::<PruneRequest>::from_bytes(body.as_bytes())
            .map(|axum::Json(request)| request.through)
            .map_err(|rejection| rejection.body_text())
    }

    /// A JSON number's parts: sign, integer digits, fraction digits, exponent.
    #[derive(Debug, Clone)]
    struct Written {
        negative: bool,
        integer: String,
        fraction: Option<String>,
        exponent: Option<(char, &'static str, u32)>,
    }

    impl Written {
        fn text(&self) -> String {
            let mut text = String::new();
            if self.negative {
                text.push('-');
            }
            text.push_str(&self.integer);
            if let Some(fraction) = &self.fraction {
                text.push('.');
                text.push_str(fraction);
            }
            if let Some((letter, sign, exponent)) = self.exponent {
                text.push(letter);
                text.push_str(sign);
                text.push_str(&exponent.to_string());
            }
            text
        }

        /// The model: the value when it is a whole number from 0 to `u64::MAX`.
        fn value(&self) -> Option<u64> {
            let fraction = self.fraction.as_deref().unwrap_or("");
            let mut digits: u128 = format!("{}{fraction}", self.integer)
                .parse()
                .expect("at most 38 digits");
            let mut scale = match self.exponent {
                Some((_, "-", exponent)) => -i64::from(exponent),
                Some((_, _, exponent)) => i64::from(exponent),
                None => 0,
            } - fraction.len() as i64;
            if digits == 0 {
                return Some(0);
            }
            while scale < 0 && digits.is_multiple_of(10) {
                digits /= 10;
                scale += 1;
            }
            if self.negative || scale < 0 {
                return None;
            }
            let mut value = digits;
            for _ in 0..scale {
                value = value.checked_mul(10)?;
            }
            u64::try_from(value).ok()
        }
    }

    /// JSON numbers: no leading zeros, up to 19 integer and 19 fraction digits, exponents up
    /// to 40 either way; biased towards the interesting: whole values, `.0`, zeros, huge.
    fn written() -> impl Strategy<Value = Written> {
        let integer = prop_oneof![
            Just("0".to_owned()),
            "[1-9][0-9]{0,18}",
            any::<u64>().prop_map(|value| value.to_string()),
            Just(u64::MAX.to_string()),
            Just("18446744073709551616".to_owned()),
        ];
        let fraction = prop_oneof![
            Just(None),
            Just(Some("0".to_owned())),
            "0{1,19}".prop_map(Some),
            "[0-9]{1,19}".prop_map(Some),
            "0{15,17}1".prop_map(Some),
        ];
        let exponent = prop_oneof![
            Just(None),
            (
                prop::sample::select(&['e', 'E'][..]),
                prop::sample::select(&["", "+", "-"][..]),
                0..=40_u32,
            )
                .prop_map(Some),
        ];
        (prop::bool::weighted(0.2), integer, fraction, exponent).prop_map(
            |(negative, integer, fraction, exponent)| Written {
                negative,
                integer,
                fraction,
                exponent,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn a_number_is_taken_exactly_when_it_is_a_whole_number_that_fits(written in written()) {
            let text = written.text();
            match (through(&text), written.value()) {
                (Ok(got), Some(expected)) => prop_assert_eq!(got, expected, "{}", text),
                (Err(error), None) => prop_assert!(
                    error.contains("through"),
                    "{text}: the refusal names the field: {error}"
                ),
                (got, expected) => prop_assert!(false, "{text}: {got:?}, expected {expected:?}"),
            }
        }

        #[test]
        fn every_integer_is_taken_as_written(value in any::<u64>()) {
            prop_assert_eq!(through(&value.to_string()), Ok(value));
            prop_assert_eq!(through(&format!("{value}.0")), Ok(value));
            prop_assert_eq!(through(&format!("{value}.000e0")), Ok(value));
        }

        #[test]
        fn an_integral_double_is_taken(value in 0..(1_u64 << 53)) {
            // What a client that sends every number as a double writes.
            let double = value as f64;
            prop_assert_eq!(through(&format!("{double:?}")), Ok(value));
            prop_assert_eq!(through(&format!("{double:e}")), Ok(value));
        }

        #[test]
        fn a_fraction_is_refused(value in any::<u64>(), fraction in "[0-9]{0,20}[1-9]") {
            let written = format!("{value}.{fraction}");
            prop_assert!(through(&written).is_err(), "{}", written);
        }

        #[test]
        fn a_negative_number_is_refused(value in 1..=u64::MAX) {
            for written in [format!("-{value}"), format!("-{value}.0")] {
                prop_assert!(through(&written).is_err(), "{}", written);
            }
        }

        #[test]
        fn a_number_past_u64_is_refused(value in (u128::from(u64::MAX) + 1)..=u128::MAX) {
            for written in [value.to_string(), format!("{value}.0")] {
                prop_assert!(through(&written).is_err(), "{}", written);
            }
        }

        #[test]
        fn anything_but_a_number_is_refused(text in ".*") {
            let string = serde_json::to_string(&text).expect("a string serializes");
            prop_assert!(through(&string).is_err(), "{}", string);
        }
    }

    #[test]
    fn examples() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("12", Ok(12)),
            ("12.0", Ok(12)),
            ("1.2e1", Ok(12)),
            ("1200E-2", Ok(12)),
            ("0", Ok(0)),
            ("-0", Ok(0)),
            ("0.0e-999999999999999999999", Ok(0)),
            ("18446744073709551615", Ok(u64::MAX)),
            ("18446744073709551615.0", Ok(u64::MAX)),
            ("9007199254740993.0", Ok(9_007_199_254_740_993)),
            ("12.5", Err("is not a whole number")),
            ("12.0000000000000001", Err("is not a whole number")),
            ("1e-400", Err("is not a whole number")),
            ("-1", Err("is negative")),
            ("-12.0", Err("is negative")),
            (
                "18446744073709551616",
                Err("is larger than any sequence number"),
            ),
            ("1e20", Err("is larger than any sequence number")),
            (
                "1e999999999999999999999",
                Err("is larger than any sequence number"),
            ),
            ("\"12\"", Err("is not a sequence number")),
            ("null", Err("is not a sequence number")),
            ("[12]", Err("is not a sequence number")),
            ("{\"seq\": 12}", Err("is not a sequence number")),
        ];
        for (written, expected) in cases {
            match (through(written), expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, *expected, "{written}"),
                (Err(error), Err(why)) => assert!(
                    error.contains(why) && error.contains("through"),
                    "{written}: {error}"
                ),
                (got, expected) => panic!("{written}: {got:?}, expected {expected:?}"),
            }
        }
        let long = format!("\"{}\"", "x".repeat(1000));
        let error = through(&long).expect_err("a string");
        assert!(
            error.len() < 200,
            "a refusal quotes a bounded part: {error}"
        );
    }
}
