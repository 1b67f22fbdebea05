//! The `[safety]` rails as they stand: budget use in the last hour, the open budget gate, the
//! runs waiting on safety gates, a change freeze in effect, the protect rules.

use axum::extract::State;
use axum::response::Json;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::config::Role;
use crate::engine::SafetyStatus;

/// The safety rails now (role viewer).
#[utoipa::path(get, path = "/api/v1/safety", tag = "safety",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Budget use, the open budget gate, waiting runs, a freeze in effect, the protect rules", body = SafetyStatus),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn status(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<SafetyStatus>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(api.inner.engine.safety_status()?))
}
