//! API errors, mapped to HTTP in one place. The body is always
//! `{"error": {"code", "message"}}` (plus `diagnostics` for a refused playbook). 4xx are the
//! caller's business and logged at DEBUG; 5xx are logged at ERROR.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::Role;
use crate::playbook::Located;

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
    /// For a refused playbook: every problem, with line and column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) diagnostics: Vec<Located>,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable: `unauthorized`, `forbidden`, `not_found`, `conflict`, `bad_request`,
    /// `invalid_playbook`, `refused`, `unavailable`, `internal`.
    pub(crate) code: String,
    pub(crate) message: String,
}

impl ErrorBody {
    pub(crate) fn new(code: &str, message: String) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
            diagnostics: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub(crate) enum ApiError {
    /// 401: no token, or one that is not configured.
    Unauthorized(&'static str),
    /// 403: the token's role is too small.
    Forbidden {
        need: Role,
        have: Role,
    },
    NotFound(String),
    Conflict(String),
    BadRequest(String),
    /// 422: the playbook does not compile.
    InvalidPlaybook(Vec<Located>),
    /// The engine refused an answer to a gate (its status says why: 403, 404, 409, 422).
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// 503: NATS (or another dependency) cannot be reached.
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

impl From<crate::engine::Error> for ApiError {
    fn from(error: crate::engine::Error) -> ApiError {
        ApiError::internal(error)
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(error: crate::store::Error) -> ApiError {
        ApiError::internal(error)
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Approver => "approver",
        Role::Editor => "editor",
        Role::Admin => "admin",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, diagnostics) = match self {
            ApiError::Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "{why}: send `Authorization: Bearer <token>` with a token from [[api.tokens]]"
                ),
                Vec::new(),
            ),
            ApiError::Forbidden { need, have } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the role {} or above; the token's role is {}",
                    role_name(need),
                    role_name(have)
                ),
                Vec::new(),
            ),
            ApiError::NotFound(message) => {
                (StatusCode::NOT_FOUND, "not_found", message, Vec::new())
            }
            ApiError::Conflict(message) => (StatusCode::CONFLICT, "conflict", message, Vec::new()),
            ApiError::BadRequest(message) => {
                (StatusCode::BAD_REQUEST, "bad_request", message, Vec::new())
            }
            ApiError::InvalidPlaybook(diagnostics) => {
                let errors = diagnostics
                    .iter()
                    .filter(|d| d.severity == crate::playbook::Severity::Error)
                    .count();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_playbook",
                    format!("the playbook does not compile: {errors} error(s)"),
                    diagnostics,
                )
            }
            ApiError::Refused {
                status,
                code,
                message,
            } => (status, code, message, Vec::new()),
            ApiError::Unavailable(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message,
                Vec::new(),
            ),
            ApiError::Internal(message) => {
                tracing::error!(error = %message, "admin API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    message,
                    Vec::new(),
                )
            }
        };
        if status.is_client_error() {
            tracing::debug!(%status, code, %message, "admin API request refused");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
            diagnostics,
        };
        (status, axum::Json(body)).into_response()
    }
}

/// A JSON body whose rejection is an [`ApiError`] (axum's own would be plain text).
#[derive(Debug)]
pub(crate) struct Body<T>(pub(crate) T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        // Every body of this API is a JSON object; serde would also read a struct from an
        // array of its fields, which the OpenAPI document does not allow.
        let value = match axum::Json::<serde_json::Value>::from_request(request, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(ApiError::BadRequest(rejection.body_text())),
        };
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".to_owned(),
            ));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|error| ApiError::BadRequest(format!("the body does not fit: {error}")))
    }
}

/// Query parameters whose rejection is an [`ApiError`].
#[derive(Debug)]
pub(crate) struct Params<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}
