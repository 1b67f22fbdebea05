//! The HTTP side of the OpenAI fake: routes, the guard every request passes (record, faults,
//! admin-key auth) and one handler per spec operation.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as Extract};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::state::{State, redact};
use super::{Call, Fault, Role, Shared};

mod controls;
mod organization;
mod projects;

type SharedState = Arc<Shared>;
type Reply = Result<axum::Json<Value>, ApiError>;

/// An OpenAI `ErrorResponse`: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// 400 `invalid_request_error` about `param`.
    pub(super) fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_owned()),
            code: None,
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error` about no parameter in particular.
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            param: None,
            ..ApiError::invalid("", message)
        }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::bad_request(message)
        }
    }

    fn unauthorized(message: impl Into<String>, code: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code,
            ..ApiError::bad_request(message)
        }
    }

    fn from_fault(fault: Fault) -> ApiError {
        match fault {
            Fault::RateLimited { retry_after_secs } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "Rate limit reached for requests. Please try again in {retry_after_secs}s."
                ),
                kind: "requests",
                param: None,
                code: Some("rate_limit_exceeded"),
                retry_after: Some(retry_after_secs),
            },
            Fault::ServerError => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "The server had an error while processing your request. Sorry about that!"
                    .to_owned(),
                kind: "server_error",
                param: None,
                code: None,
                retry_after: None,
            },
            Fault::Status(status, message) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                ApiError {
                    status,
                    message,
                    kind: if status.is_server_error() {
                        "server_error"
                    } else {
                        "invalid_request_error"
                    },
                    param: None,
                    code: None,
                    retry_after: None,
                }
            }
            Fault::Slow(_) | Fault::SlowAnswer(_) => {
                ApiError::bad_request("a slow fault is not an error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(super) fn router(shared: SharedState) -> Router {
    let projects = "/v1/organization/projects";
    Router::new()
        .route(projects, get(projects::list_projects))
        .route(
            &format!("{projects}/{{project_id}}"),
            get(projects::get_project).post(projects::modify_project),
        )
        .route(
            &format!("{projects}/{{project_id}}/archive"),
            post(projects::archive_project),
        )
        .route(
            &format!("{projects}/{{project_id}}/api_keys"),
            get(projects::list_keys),
        )
        .route(
            &format!("{projects}/{{project_id}}/api_keys/{{key_id}}"),
            get(projects::get_key)
                .post(projects::update_key)
                .delete(projects::delete_key),
        )
        .route(
            &format!("{projects}/{{project_id}}/service_accounts"),
            get(projects::list_service_accounts).post(projects::create_service_account),
        )
        .route(
            &format!("{projects}/{{project_id}}/service_accounts/{{sa_id}}"),
            get(projects::get_service_account)
                .post(projects::update_service_account)
                .delete(projects::delete_service_account),
        )
        .route(
            &format!("{projects}/{{project_id}}/service_accounts/{{sa_id}}/api_keys"),
            post(projects::create_service_account_key),
        )
        .route(
            &format!("{projects}/{{project_id}}/users"),
            get(projects::list_users).post(projects::add_user),
        )
        .route(
            &format!("{projects}/{{project_id}}/users/{{user_id}}"),
            get(projects::get_user)
                .post(projects::modify_user)
                .delete(projects::delete_user),
        )
        .route(
            &format!("{projects}/{{project_id}}/rate_limits"),
            get(projects::list_rate_limits),
        )
        .route(
            &format!("{projects}/{{project_id}}/rate_limits/{{rate_limit_id}}"),
            post(projects::update_rate_limit),
        )
        .route(
            &format!("{projects}/{{project_id}}/model_permissions"),
            get(controls::get_model_permissions)
                .post(controls::update_model_permissions)
                .delete(controls::delete_model_permissions),
        )
        .route(
            &format!("{projects}/{{project_id}}/hosted_tool_permissions"),
            get(controls::get_hosted_tools).post(controls::update_hosted_tools),
        )
        .route(
            &format!("{projects}/{{project_id}}/spend_limit"),
            get(controls::get_spend_limit)
                .post(controls::update_spend_limit)
                .delete(controls::delete_spend_limit),
        )
        .route(
            &format!("{projects}/{{project_id}}/data_retention"),
            get(controls::get_data_retention).post(controls::update_data_retention),
        )
        .route(
            &format!("{projects}/{{project_id}}/certificates"),
            get(organization::list_project_certificates),
        )
        .route("/v1/organization/users", get(organization::list_users))
        .route(
            "/v1/organization/users/{user_id}",
            get(organization::get_user).delete(organization::delete_user),
        )
        .route(
            "/v1/organization/data_retention",
            get(organization::get_data_retention),
        )
        .route(
            "/v1/organization/certificates",
            get(organization::list_certificates),
        )
        .route(
            "/v1/organization/admin_api_keys",
            get(organization::list_admin_keys),
        )
        .route(
            "/v1/organization/admin_api_keys/{key_id}",
            get(organization::get_admin_key).delete(organization::delete_admin_key),
        )
        .route(
            "/v1/organization/audit_logs",
            get(organization::list_audit_logs),
        )
        .route("/v1/organization/usage/{family}", get(organization::usage))
        .fallback(invalid_url)
        .method_not_allowed_fallback(invalid_url)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// What OpenAI answers for a path or method it does not serve.
async fn invalid_url(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("Invalid URL ({method} {})", uri.path()))
}

/// Records the request, applies the next queued fault, then checks the admin key.
async fn guard(Extract(shared): Extract<SharedState>, request: Request, next: Next) -> Response {
    let received_at = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 4 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let call = Call {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parse_query(parts.uri.query()),
        body: (!bytes.is_empty()).then(|| {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        }),
        authorization: authorization.clone(),
        organization: parts
            .headers
            .get("openai-organization")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
        received_at,
    };
    let fault = {
        let mut state = shared.lock();
        state.calls.push(call);
        state.take_fault(parts.uri.path())
    };
    shared.arrived.notify_waiters();
    let mut answer_after = None;
    match fault {
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::SlowAnswer(delay)) => answer_after = Some(delay),
        Some(fault) => return ApiError::from_fault(fault).into_response(),
        None => {}
    }
    if let Err(error) = authenticate(&shared.lock(), authorization.as_deref()) {
        return error.into_response();
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if let Some(delay) = answer_after {
        tokio::time::sleep(delay).await;
    }
    response
}

fn authenticate(state: &State, authorization: Option<&str>) -> Result<(), ApiError> {
    let Some(header) = authorization.filter(|value| !value.trim().is_empty()) else {
        return Err(ApiError::unauthorized(
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            None,
        ));
    };
    let token = header.strip_prefix("Bearer ").unwrap_or("").trim();
    if state.admin_keys.iter().any(|key| key.value == token) {
        return Ok(());
    }
    Err(ApiError::unauthorized(
        format!(
            "Incorrect API key provided: {}. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            redact(token)
        ),
        Some("invalid_api_key"),
    ))
}

// ---- request parsing ----

/// Decoded `key=value` pairs (`+` is a space, `%XX` a byte).
pub(super) fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|raw| {
        form_urlencoded::parse(raw.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn new(raw: Option<String>) -> Query {
        Query(parse_query(raw.as_deref()))
    }

    fn first(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value sent under any of `names`.
    fn all(&self, names: &[&str]) -> Vec<String> {
        self.0
            .iter()
            .filter(|(key, _)| names.contains(&key.as_str()))
            .map(|(_, value)| value.clone())
            .collect()
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.first(name)
            .map(|text| {
                text.parse::<i64>().map_err(|_| {
                    ApiError::invalid(
                        name,
                        format!("Invalid '{name}': expected an integer, got '{text}'."),
                    )
                })
            })
            .transpose()
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.first(name)
            .map(|text| match text {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::invalid(
                    name,
                    format!("Invalid '{name}': expected a boolean, got '{text}'."),
                )),
            })
            .transpose()
    }

    /// `limit` in `1..=max`; without one, the fake's configured page size or the spec default.
    /// Either way no more than the fake's maximum page size, if one is set.
    fn limit(&self, state: &State, default: usize, max: usize) -> Result<usize, ApiError> {
        let limit = self.requested_limit(state, default, max)?;
        Ok(state.max_page_size.map_or(limit, |cap| limit.min(cap)))
    }

    fn requested_limit(
        &self,
        state: &State,
        default: usize,
        max: usize,
    ) -> Result<usize, ApiError> {
        match self.int("limit")? {
            None => Ok(state.page_size.unwrap_or(default)),
            Some(limit) => usize::try_from(limit)
                .ok()
                .filter(|limit| (1..=max).contains(limit))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "limit",
                        format!("Invalid 'limit': must be between 1 and {max}, got {limit}."),
                    )
                }),
        }
    }
}

/// The JSON object body of a POST; an empty body is `{}`.
fn json_body(bytes: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(ApiError::bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )),
    }
}

fn optional_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(ApiError::invalid(
            field,
            format!("Invalid type for '{field}': expected a string, but got {other}."),
        )),
    }
}

fn required_string(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    optional_string(body, field)?
        .ok_or_else(|| ApiError::invalid(field, format!("Missing required parameter: '{field}'.")))
}

/// A field that must be an array of strings.
fn string_list(field: &str, value: &Value) -> Result<Vec<String>, ApiError> {
    match value {
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()),
        other => Err(ApiError::invalid(
            field,
            format!("Invalid type for '{field}': expected an array of strings, but got {other}."),
        )),
    }
}

/// `expires_in_seconds` of a key: an integer from 1 to 31,536,000 (one year), as
/// `openai-admin-api-updates.md` gives it for minting and for updating a key.
fn expires_in_seconds(value: &Value) -> Result<i64, ApiError> {
    value
        .as_i64()
        .filter(|seconds| (1..=31_536_000).contains(seconds))
        .ok_or_else(|| {
            ApiError::invalid(
                "expires_in_seconds",
                format!(
                    "Invalid 'expires_in_seconds': expected an integer from 1 to 31536000, but got {value}."
                ),
            )
        })
}

fn role_field(body: &Map<String, Value>) -> Result<Option<Role>, ApiError> {
    optional_string(body, "role")?
        .map(|text| {
            Role::parse(&text).ok_or_else(|| {
                ApiError::invalid(
                    "role",
                    format!("Invalid 'role': expected 'owner' or 'member', got '{text}'."),
                )
            })
        })
        .transpose()
}
