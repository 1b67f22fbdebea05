//! What people say about an identity of the inventory: its owner and its purpose
//! (`crate::owners::Attributes`). Reading is for viewers; setting is for editors, for any
//! identity, and every change is audited with the token's name.

use axum::extract::{Path, State};
use axum::response::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, Body, ErrorBody};
use crate::config::Role;
use crate::owners::{Attribute, AttributesChange, AttributesError};

/// An identity's attributes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct AttributesView {
    /// The identity (`project_key:key_abc`, `service_account:svc_1`, …).
    pub(crate) id: String,
    /// An email or `team:<name>`, with who set it and when.
    #[schema(value_type = Option<Object>)]
    pub(crate) owner: Option<Attribute>,
    /// What it is for, with who set it and when.
    #[schema(value_type = Option<Object>)]
    pub(crate) purpose: Option<Attribute>,
}

/// The change asked for: a field left out stays as it is, `""` clears it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttributesRequest {
    /// An email or `team:<name>` (a team under `[teams]`).
    pub(crate) owner: Option<String>,
    /// What the identity is for (at most 500 characters).
    pub(crate) purpose: Option<String>,
}

/// The owner and purpose people recorded for an identity (role viewer); both absent when
/// nothing was recorded.
#[utoipa::path(get, path = "/api/v1/inventory/{id}/attributes", tag = "inventory",
    params(("id" = String, Path, description = "Identity id, e.g. project_key:key_abc: a kind (`project_key`, `service_account`, `admin_key`, `project`, `user`), `:`, and 1 to 256 of `A-Z a-z 0-9 _ . : -`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The identity's attributes", body = AttributesView),
        (status = 404, description = "Not an identity id", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn show(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AttributesView>, ApiError> {
    caller.require(Role::Viewer)?;
    crate::owners::check_identity(&id).map_err(ApiError::NotFound)?;
    let attributes = crate::owners::attributes(api.inner.engine.store(), &id)
        .map_err(ApiError::internal)?
        .unwrap_or_default();
    Ok(Json(AttributesView {
        id,
        owner: attributes.owner,
        purpose: attributes.purpose,
    }))
}

/// Set an identity's owner and/or purpose (role editor, any identity; audited with the token's
/// name as `attributes_set`). The inventory's sync never changes them.
#[utoipa::path(put, path = "/api/v1/inventory/{id}/attributes", tag = "inventory",
    params(("id" = String, Path, description = "Identity id, e.g. project_key:key_abc: a kind (`project_key`, `service_account`, `admin_key`, `project`, `user`), `:`, and 1 to 256 of `A-Z a-z 0-9 _ . : -`")),
    request_body = AttributesRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The attributes now", body = AttributesView),
        (status = 400, description = "A body that is not an attributes object", body = ErrorBody),
        (status = 422, description = "Not an identity id, an unknown team, an owner that is not an email, or a purpose too long", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn set(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<AttributesRequest>,
) -> Result<Json<AttributesView>, ApiError> {
    caller.require(Role::Editor)?;
    let engine = &api.inner.engine;
    let change = AttributesChange {
        owner: request.owner,
        purpose: request.purpose,
    };
    let attributes = crate::owners::set_attributes(
        engine.store(),
        engine.owners(),
        &id,
        &change,
        &caller.actor(),
        engine.now(),
    )
    .await
    .map_err(|error| match error {
        AttributesError::Invalid(message) => ApiError::Refused {
            status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_attributes",
            message,
        },
        AttributesError::Store(error) => ApiError::internal(error),
    })?;
    Ok(Json(AttributesView {
        id,
        owner: attributes.owner,
        purpose: attributes.purpose,
    }))
}
