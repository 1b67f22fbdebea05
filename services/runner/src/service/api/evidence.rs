//! Evidence packs for auditors: `POST /api/v1/evidence` makes one for a period, signed with the
//! service's `[evidence]` key, and answers with its files; `quench evidence` writes them to a
//! directory and verifies them. Admin only: a pack holds every approver, request and finding of
//! the period. Each pack made is an audit entry naming the token and the manifest's hash.

use axum::extract::State;
use axum::response::Json;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, Body, ErrorBody};
use crate::config::Role;
use crate::evidence::{self, Format, PackFile, Period};
use crate::store::{AuditDraft, Batch};

/// The period and the renderings of a pack.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvidenceRequest {
    /// Start of the period (inclusive), RFC 3339.
    pub(crate) from: DateTime<Utc>,
    /// End of the period (exclusive), RFC 3339.
    pub(crate) to: DateTime<Utc>,
    /// Renderings besides `evidence.json` (always present): `csv`, `html`; default both.
    #[serde(default)]
    #[schema(inline)]
    pub(crate) formats: Option<Vec<Format>>,
}

/// A signed pack: its files (`manifest.json` last) and the signature of the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct PackView {
    pub(crate) files: Vec<PackFile>,
    /// The raw Ed25519 signature of `manifest.json`, base64 (written as `manifest.sig`).
    pub(crate) signature: String,
    /// `sha256:` and the hex SHA-256 of the signing key's 32-byte public key.
    pub(crate) fingerprint: String,
}

/// Makes a signed evidence pack for a period (role admin).
#[utoipa::path(post, path = "/api/v1/evidence", tag = "evidence",
    request_body = EvidenceRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The pack's files and signature (role admin)", body = PackView),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 409, description = "No signing key is configured (`[evidence] signing_key_file`)", body = ErrorBody),
        (status = 422, description = "An empty period: `from` not before `to`", body = ErrorBody)
    ))]
pub(super) async fn make(
    State(api): State<Api>,
    caller: Caller,
    Body(request): Body<EvidenceRequest>,
) -> Result<Json<PackView>, ApiError> {
    caller.require(Role::Admin)?;
    let period = Period::new(request.from, request.to).map_err(|error| ApiError::Refused {
        status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        code: "empty_period",
        message: error.to_string(),
    })?;
    let Some(signer) = api.inner.signer.clone() else {
        return Err(ApiError::Conflict(
            "no evidence signing key is configured: set `[evidence] signing_key_file` to an Ed25519 \
             private key (PKCS#8 PEM) and restart; unsigned packs are not made"
                .to_owned(),
        ));
    };
    let formats = request
        .formats
        .unwrap_or_else(|| vec![Format::Csv, Format::Html]);
    // One pack (or audit verification) at a time: each reads the whole log.
    let _one = api
        .inner
        .verifying
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let engine = api.inner.engine.clone();
    let sources = api.inner.sources.clone();
    let by = caller.name.clone();
    let fingerprint = signer.fingerprint();
    let signed = tokio::task::spawn_blocking(move || {
        let document = evidence::build(engine.store(), &*sources, period, engine.now(), &by)?;
        signer.sign(&document, &formats)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let manifest = signed
        .files
        .iter()
        .find(|file| file.path == evidence::MANIFEST)
        .map(|file| hex::encode(Sha256::digest(file.content.as_bytes())))
        .unwrap_or_default();
    let engine = &api.inner.engine;
    let mut draft = AuditDraft::new(
        engine.now(),
        "evidence_made",
        serde_json::json!({"from": period.from, "to": period.to, "manifest_sha256": manifest,
            "files": signed.files.len()}),
    );
    draft.actor = Some(serde_json::to_value(caller.actor()).unwrap_or_default());
    let mut batch = Batch::new();
    batch.audit(draft);
    engine.store().commit(batch).await?;
    tracing::info!(from = %period.from, to = %period.to, by = %caller.name, manifest_sha256 = %manifest, "evidence pack made");
    Ok(Json(PackView {
        signature: base64::engine::general_purpose::STANDARD.encode(&signed.signature),
        fingerprint,
        files: signed.files,
    }))
}
