//! Attestation campaigns (access reviews): start one over a scope of the inventory (role
//! editor, audited), list them, and read one's progress (role viewer). See
//! `crate::campaign` and docs/campaigns.md.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, Body, ErrorBody};
use crate::campaign::{Campaign, Campaigns, Progress, Start, StartError};
use crate::config::Role;

/// Every campaign.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct CampaignList {
    pub(crate) campaigns: Vec<Campaign>,
}

fn campaigns(api: &Api) -> Campaigns {
    Campaigns::new(
        api.inner.inventory.clone(),
        api.inner.engine.owners().clone(),
    )
}

/// Every campaign, oldest first (role viewer).
#[utoipa::path(get, path = "/api/v1/campaigns", tag = "campaigns",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every campaign", body = CampaignList),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn list(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<CampaignList>, ApiError> {
    caller.require(Role::Viewer)?;
    let campaigns = campaigns(&api).list().map_err(ApiError::internal)?;
    Ok(Json(CampaignList { campaigns }))
}

/// Start a campaign (role editor; audited as `campaign_started`): every project key in the
/// scope goes to its owner (the owner chain) in one message per owner (at most 20 keys a
/// message), asked by the attestation playbook. The playbook must be loaded, enabled, and
/// take `quench.attestation` findings.
#[utoipa::path(post, path = "/api/v1/campaigns", tag = "campaigns",
    request_body = Start,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Started", body = Campaign),
        (status = 400, description = "A body that is not a campaign request", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 422, description = "A scope that names an unknown risk or team or a bad duration, no key in scope, a bad name, or a playbook that is not loaded, is disabled or does not take attestation findings", body = ErrorBody)
    ))]
pub(super) async fn start(
    State(api): State<Api>,
    caller: Caller,
    Body(request): Body<Start>,
) -> Result<(StatusCode, Json<Campaign>), ApiError> {
    caller.require(Role::Editor)?;
    let engine = &api.inner.engine;
    let invalid = |code: &'static str, message: String| ApiError::Refused {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code,
        message,
    };
    let name = request
        .playbook
        .clone()
        .unwrap_or_else(|| crate::campaign::DEFAULT_PLAYBOOK.to_owned());
    if let Err((code, message)) = super::super::campaigns::check_playbook(engine, &name) {
        return Err(invalid(code, message));
    }
    let actor = caller.actor();
    let campaign = campaigns(&api)
        .start(&request, &actor, engine.now())
        .await
        .map_err(|error| match error {
            StartError::Invalid(message) => invalid("invalid_campaign", message),
            StartError::Empty(_) => invalid("empty_scope", error.to_string()),
            StartError::Store(error) => ApiError::internal(error),
        })?;
    tracing::info!(campaign = %campaign.id, name = %campaign.name, identities = campaign.identities, parts = campaign.parts, by = %caller.name, "campaign started");
    Ok((StatusCode::CREATED, Json(campaign)))
}

/// A campaign and its progress: answered, pending, defaulted, reassigned, per owner, per team
/// and per identity (role viewer).
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = String, Path, description = "Campaign id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The campaign and its progress", body = Progress),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn show(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Progress>, ApiError> {
    caller.require(Role::Viewer)?;
    campaigns(&api)
        .progress(&id)
        .map_err(ApiError::internal)?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no campaign `{id}`")))
}
