//! The HTTP side of the OpenAI fake: routes, the guard every request passes (record, faults,
//! admin-key auth) and one handler per spec operation.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State as Extract};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::state::{
    Listed, Owner, PageRequest, RATE_LIMIT_FIELDS, State, is_event_type, is_tenant_event, redact,
};
use super::{Call, Fault, KeySeed, Role, Shared};

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
            Fault::Slow(_) => ApiError::bad_request("a slow fault is not an error"),
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
        .route(projects, get(list_projects))
        .route(
            &format!("{projects}/{{project_id}}"),
            get(get_project).post(modify_project),
        )
        .route(
            &format!("{projects}/{{project_id}}/archive"),
            post(archive_project),
        )
        .route(
            &format!("{projects}/{{project_id}}/api_keys"),
            get(list_keys),
        )
        .route(
            &format!("{projects}/{{project_id}}/api_keys/{{key_id}}"),
            get(get_key).delete(delete_key),
        )
        .route(
            &format!("{projects}/{{project_id}}/service_accounts"),
            get(list_service_accounts).post(create_service_account),
        )
        .route(
            &format!("{projects}/{{project_id}}/service_accounts/{{sa_id}}"),
            get(get_service_account)
                .post(update_service_account)
                .delete(delete_service_account),
        )
        .route(
            &format!("{projects}/{{project_id}}/service_accounts/{{sa_id}}/api_keys"),
            post(create_service_account_key),
        )
        .route(
            &format!("{projects}/{{project_id}}/users"),
            get(list_users).post(add_user),
        )
        .route(
            &format!("{projects}/{{project_id}}/users/{{user_id}}"),
            get(get_user).post(modify_user).delete(delete_user),
        )
        .route(
            &format!("{projects}/{{project_id}}/rate_limits"),
            get(list_rate_limits),
        )
        .route(
            &format!("{projects}/{{project_id}}/rate_limits/{{rate_limit_id}}"),
            post(update_rate_limit),
        )
        .route("/v1/organization/admin_api_keys", get(list_admin_keys))
        .route(
            "/v1/organization/admin_api_keys/{key_id}",
            get(get_admin_key).delete(delete_admin_key),
        )
        .route("/v1/organization/audit_logs", get(list_audit_logs))
        .route("/v1/organization/usage/completions", get(usage_completions))
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
    };
    let fault = {
        let mut state = shared.lock();
        state.calls.push(call);
        state.take_fault(parts.uri.path())
    };
    match fault {
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(fault) => return ApiError::from_fault(fault).into_response(),
        None => {}
    }
    if let Err(error) = authenticate(&shared.lock(), authorization.as_deref()) {
        return error.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
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
    fn limit(&self, state: &State, default: usize, max: usize) -> Result<usize, ApiError> {
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

// ---- lookups shared by handlers ----

fn project_not_found(project_id: &str) -> ApiError {
    ApiError::not_found(format!("The project {project_id} was not found"))
}

/// The project, or 404 (wording of the spec's rate-limit `error_response` example).
fn find_project<'a>(
    state: &'a State,
    project_id: &str,
) -> Result<&'a super::state::Project, ApiError> {
    state
        .project(project_id)
        .ok_or_else(|| project_not_found(project_id))
}

/// The project, or 404; 400 when it is archived ("Archived projects cannot be used or updated").
fn active_project<'a>(
    state: &'a State,
    project_id: &str,
) -> Result<&'a super::state::Project, ApiError> {
    let project = find_project(state, project_id)?;
    if project.archived_at.is_some() {
        return Err(ApiError::invalid(
            "project_id",
            format!(
                "Project {project_id} is archived. Archived projects cannot be used or updated."
            ),
        ));
    }
    Ok(project)
}

fn deleted(object: &str, id: &str) -> axum::Json<Value> {
    axum::Json(json!({"object": object, "id": id, "deleted": true}))
}

// ---- projects ----

async fn list_projects(Extract(shared): Extract<SharedState>, RawQuery(raw): RawQuery) -> Reply {
    let state = shared.lock();
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    let include_archived = query.boolean("include_archived")?.unwrap_or(false);
    let all = state
        .projects
        .iter()
        .map(|project| Listed {
            id: project.id.clone(),
            key: (0, project.seq),
            visible: include_archived || project.archived_at.is_none(),
            json: project.render(),
        })
        .collect();
    let page = PageRequest {
        kind: "project",
        limit,
        after: query.first("after"),
        before: None,
        descending: false,
    };
    state.cursor_page(all, &page).map(axum::Json)
}

async fn get_project(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let state = shared.lock();
    Ok(axum::Json(find_project(&state, &project_id)?.render()))
}

async fn modify_project(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    if state.default_project.as_deref() == Some(project_id.as_str()) {
        return Err(ApiError::invalid(
            "project_id",
            "The default project cannot be updated.",
        ));
    }
    let name = optional_string(&body, "name")?;
    let external_key_id = optional_string(&body, "external_key_id")?;
    let project = state
        .projects
        .iter_mut()
        .find(|project| project.id == project_id)
        .ok_or_else(|| project_not_found(&project_id))?;
    if let Some(name) = &name {
        project.name.clone_from(name);
    }
    if external_key_id.is_some() {
        project.external_key_id = external_key_id;
    }
    let rendered = project.render();
    let mut changes = Map::new();
    if let Some(name) = name {
        changes.insert("title".into(), json!(name));
    }
    state.audit_mutation(
        "project.updated",
        json!({"id": project_id, "changes_requested": changes}),
    );
    Ok(axum::Json(rendered))
}

async fn archive_project(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let mut state = shared.lock();
    find_project(&state, &project_id)?;
    let now = state.now();
    let project = state
        .projects
        .iter_mut()
        .find(|project| project.id == project_id)
        .ok_or_else(|| project_not_found(&project_id))?;
    let newly = project.archived_at.is_none();
    if newly {
        project.archived_at = Some(now);
    }
    let rendered = project.render();
    if newly {
        state.audit_mutation("project.archived", json!({"id": project_id}));
    }
    Ok(axum::Json(rendered))
}

// ---- project API keys ----

async fn list_keys(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    find_project(&state, &project_id)?;
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    let access = query.first("owner_project_access");
    if let Some(access) = access
        && !["active", "inactive", "any"].contains(&access)
    {
        return Err(ApiError::invalid(
            "owner_project_access",
            format!(
                "Invalid 'owner_project_access': expected 'active', 'inactive' or 'any', got '{access}'."
            ),
        ));
    }
    let all = state
        .keys
        .iter()
        .filter(|key| key.project_id == project_id)
        .map(|key| {
            let active = state.owner_has_access(key);
            Listed {
                id: key.id.clone(),
                key: (0, key.seq),
                // Without the parameter, membership-based visibility: keys of owners with access.
                visible: match access {
                    Some("any") => true,
                    Some("inactive") => !active,
                    _ => active,
                },
                json: state.render_key(key),
            }
        })
        .collect();
    let page = PageRequest {
        kind: "project_api_key",
        limit,
        after: query.first("after"),
        before: None,
        descending: false,
    };
    state.cursor_page(all, &page).map(axum::Json)
}

fn key_not_found(project_id: &str, key_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The API key {key_id} was not found in project {project_id}"
    ))
}

async fn get_key(
    Extract(shared): Extract<SharedState>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> Reply {
    let state = shared.lock();
    find_project(&state, &project_id)?;
    let key = state
        .keys
        .iter()
        .find(|key| key.project_id == project_id && key.id == key_id)
        .ok_or_else(|| key_not_found(&project_id, &key_id))?;
    Ok(axum::Json(state.render_key(key)))
}

async fn delete_key(
    Extract(shared): Extract<SharedState>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> Reply {
    let mut state = shared.lock();
    find_project(&state, &project_id)?;
    let index = state
        .keys
        .iter()
        .position(|key| key.project_id == project_id && key.id == key_id)
        .ok_or_else(|| key_not_found(&project_id, &key_id))?;
    if let Owner::ServiceAccount(sa_id) = &state.keys[index].owner {
        // Spec: "Returns confirmation of the key deletion, or an error if the key belonged to a
        // service account" (400, ErrorResponse).
        return Err(ApiError::invalid(
            "api_key_id",
            format!(
                "API key {key_id} belongs to service account {sa_id} and cannot be deleted \
                 with this endpoint. Delete the service account instead."
            ),
        ));
    }
    let key = state.keys.remove(index);
    state.bury("project_api_key", &key.id, (0, key.seq));
    state.audit_mutation("api_key.deleted", json!({"id": key_id}));
    Ok(deleted("organization.project.api_key.deleted", &key_id))
}

// ---- service accounts ----

fn service_account_not_found(project_id: &str, sa_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The service account {sa_id} was not found in project {project_id}"
    ))
}

async fn list_service_accounts(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    active_project(&state, &project_id)?;
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    let all = state
        .service_accounts
        .iter()
        .filter(|sa| sa.project_id == project_id)
        .map(|sa| Listed {
            id: sa.id.clone(),
            key: (0, sa.seq),
            visible: true,
            json: sa.render(),
        })
        .collect();
    let page = PageRequest {
        kind: "service_account",
        limit,
        after: query.first("after"),
        before: None,
        descending: false,
    };
    state.cursor_page(all, &page).map(axum::Json)
}

async fn create_service_account(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    let name = required_string(&body, "name")?;
    let only = match body.get("create_service_account_only") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(only)) => *only,
        Some(other) => {
            return Err(ApiError::invalid(
                "create_service_account_only",
                format!(
                    "Invalid type for 'create_service_account_only': expected a boolean, but got {other}."
                ),
            ));
        }
    };
    let number = state.seq();
    let sa_id = format!("svc_acct_fake{number:04}");
    let role = if only { "none" } else { "member" };
    state.add_service_account(&project_id, &sa_id, &name, role);
    let mut response = state
        .service_accounts
        .iter()
        .find(|sa| sa.id == sa_id)
        .map(|sa| sa.render())
        .unwrap_or_default();
    let api_key = if only {
        Value::Null
    } else {
        let key_id = format!("key_fake{number:04}");
        let now = state.now();
        state.add_key(
            &project_id,
            Owner::ServiceAccount(sa_id.clone()),
            KeySeed::new(&key_id).created_at(now),
        );
        key_created_body(&state, &key_id)
    };
    if let Value::Object(object) = &mut response {
        object.insert("api_key".into(), api_key);
    }
    state.audit_mutation(
        "service_account.created",
        json!({"id": sa_id, "data": {"role": role}}),
    );
    Ok(axum::Json(response))
}

/// `ProjectServiceAccountApiKey`: the one time the secret is shown.
fn key_created_body(state: &State, key_id: &str) -> Value {
    state
        .keys
        .iter()
        .find(|key| key.id == key_id)
        .map(|key| {
            json!({
                "object": "organization.project.service_account.api_key",
                "value": key.value,
                "name": key.name,
                "created_at": key.created_at,
                "id": key.id,
            })
        })
        .unwrap_or_default()
}

async fn get_service_account(
    Extract(shared): Extract<SharedState>,
    Path((project_id, sa_id)): Path<(String, String)>,
) -> Reply {
    let state = shared.lock();
    find_project(&state, &project_id)?;
    state
        .service_accounts
        .iter()
        .find(|sa| sa.project_id == project_id && sa.id == sa_id)
        .map(|sa| axum::Json(sa.render()))
        .ok_or_else(|| service_account_not_found(&project_id, &sa_id))
}

async fn update_service_account(
    Extract(shared): Extract<SharedState>,
    Path((project_id, sa_id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    let name = optional_string(&body, "name")?;
    let role = role_field(&body)?;
    let sa = state
        .service_accounts
        .iter_mut()
        .find(|sa| sa.project_id == project_id && sa.id == sa_id)
        .ok_or_else(|| service_account_not_found(&project_id, &sa_id))?;
    if let Some(name) = name {
        sa.name = name;
    }
    if let Some(role) = role {
        sa.role = role.as_str().to_owned();
    }
    let rendered = sa.render();
    if let Some(role) = role {
        state.audit_mutation(
            "service_account.updated",
            json!({"id": sa_id, "changes_requested": {"role": role.as_str()}}),
        );
    }
    Ok(axum::Json(rendered))
}

async fn delete_service_account(
    Extract(shared): Extract<SharedState>,
    Path((project_id, sa_id)): Path<(String, String)>,
) -> Reply {
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    let index = state
        .service_accounts
        .iter()
        .position(|sa| sa.project_id == project_id && sa.id == sa_id)
        .ok_or_else(|| service_account_not_found(&project_id, &sa_id))?;
    let sa = state.service_accounts.remove(index);
    state.bury("service_account", &sa.id, (0, sa.seq));
    let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.keys)
        .into_iter()
        .partition(|key| matches!(&key.owner, Owner::ServiceAccount(owner) if *owner == sa_id));
    state.keys = kept;
    for key in gone {
        state.bury("project_api_key", &key.id, (0, key.seq));
    }
    state.audit_mutation("service_account.deleted", json!({"id": sa_id}));
    Ok(deleted(
        "organization.project.service_account.deleted",
        &sa_id,
    ))
}

async fn create_service_account_key(
    Extract(shared): Extract<SharedState>,
    Path((project_id, sa_id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    if !state
        .service_accounts
        .iter()
        .any(|sa| sa.project_id == project_id && sa.id == sa_id)
    {
        return Err(service_account_not_found(&project_id, &sa_id));
    }
    let name = optional_string(&body, "name")?.unwrap_or_else(|| "Secret key".to_owned());
    let scopes = match body.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items.clone(),
        Some(other) => {
            return Err(ApiError::invalid(
                "scopes",
                format!(
                    "Invalid type for 'scopes': expected an array of strings, but got {other}."
                ),
            ));
        }
    };
    let key_id = format!("key_fake{:04}", state.seq());
    let now = state.now();
    state.add_key(
        &project_id,
        Owner::ServiceAccount(sa_id),
        KeySeed::new(&key_id).name(&name).created_at(now),
    );
    let body = key_created_body(&state, &key_id);
    state.audit_mutation(
        "api_key.created",
        json!({"id": key_id, "data": {"scopes": scopes}}),
    );
    Ok(axum::Json(body))
}

// ---- project users ----

fn user_not_found(project_id: &str, user_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The user {user_id} was not found in project {project_id}"
    ))
}

fn active_member(state: &State, project_id: &str, user_id: &str) -> Result<(), ApiError> {
    state
        .membership(project_id, user_id)
        .filter(|m| m.active)
        .map(|_| ())
        .ok_or_else(|| user_not_found(project_id, user_id))
}

async fn list_users(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    active_project(&state, &project_id)?;
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    let all = state
        .memberships
        .iter()
        .filter(|m| m.project_id == project_id)
        .map(|m| Listed {
            id: m.user_id.clone(),
            key: (0, m.seq),
            visible: m.active,
            json: state.render_membership(m),
        })
        .collect();
    let page = PageRequest {
        kind: "project_user",
        limit,
        after: query.first("after"),
        before: None,
        descending: false,
    };
    state.cursor_page(all, &page).map(axum::Json)
}

async fn add_user(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    let role = role_field(&body)?
        .ok_or_else(|| ApiError::invalid("role", "Missing required parameter: 'role'."))?;
    let user_id = match (
        optional_string(&body, "user_id")?,
        optional_string(&body, "email")?,
    ) {
        (Some(user_id), _) => user_id,
        (None, Some(email)) => state
            .org_users
            .values()
            .find(|user| user.email == email)
            .map(|user| user.id.clone())
            .ok_or_else(|| {
                ApiError::invalid(
                    "email",
                    format!("No organization member has e-mail {email}."),
                )
            })?,
        (None, None) => {
            return Err(ApiError::bad_request(
                "One of 'user_id' or 'email' is required.",
            ));
        }
    };
    if !state.org_users.contains_key(&user_id) {
        return Err(ApiError::invalid(
            "user_id",
            format!(
                "User {user_id} is not a member of the organization. Users must already be members of the organization to be added to a project."
            ),
        ));
    }
    if state
        .membership(&project_id, &user_id)
        .is_some_and(|m| m.active)
    {
        return Err(ApiError::invalid(
            "user_id",
            format!("User {user_id} is already a member of project {project_id}."),
        ));
    }
    state.add_membership(&project_id, &user_id, role);
    let rendered = state
        .membership(&project_id, &user_id)
        .map(|m| state.render_membership(m))
        .unwrap_or_default();
    state.audit_mutation(
        "user.added",
        json!({"id": user_id, "data": {"role": role.as_str()}}),
    );
    Ok(axum::Json(rendered))
}

async fn get_user(
    Extract(shared): Extract<SharedState>,
    Path((project_id, user_id)): Path<(String, String)>,
) -> Reply {
    let state = shared.lock();
    find_project(&state, &project_id)?;
    active_member(&state, &project_id, &user_id)?;
    let membership = state
        .membership(&project_id, &user_id)
        .ok_or_else(|| user_not_found(&project_id, &user_id))?;
    Ok(axum::Json(state.render_membership(membership)))
}

async fn modify_user(
    Extract(shared): Extract<SharedState>,
    Path((project_id, user_id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    active_member(&state, &project_id, &user_id)?;
    // The schema lets `role` be null, but a modify without a role changes nothing: refused.
    let role = role_field(&body)?
        .ok_or_else(|| ApiError::invalid("role", "Missing required parameter: 'role'."))?;
    if let Some(membership) = state
        .memberships
        .iter_mut()
        .find(|m| m.project_id == project_id && m.user_id == user_id)
    {
        membership.role = role;
    }
    let rendered = state
        .membership(&project_id, &user_id)
        .map(|m| state.render_membership(m))
        .unwrap_or_default();
    state.audit_mutation(
        "user.updated",
        json!({"id": user_id, "changes_requested": {"role": role.as_str()}}),
    );
    Ok(axum::Json(rendered))
}

async fn delete_user(
    Extract(shared): Extract<SharedState>,
    Path((project_id, user_id)): Path<(String, String)>,
) -> Reply {
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    active_member(&state, &project_id, &user_id)?;
    if let Some(membership) = state
        .memberships
        .iter_mut()
        .find(|m| m.project_id == project_id && m.user_id == user_id)
    {
        membership.active = false;
    }
    state.audit_mutation("user.deleted", json!({"id": user_id}));
    Ok(deleted("organization.project.user.deleted", &user_id))
}

// ---- rate limits ----

async fn list_rate_limits(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    find_project(&state, &project_id)?;
    let query = Query::new(raw);
    let limit = query.limit(&state, 100, 100)?;
    let all = state
        .rate_limits
        .iter()
        .filter(|rl| rl.project_id == project_id)
        .map(|rl| Listed {
            id: rl.id.clone(),
            key: (0, rl.seq),
            visible: true,
            json: rl.render(),
        })
        .collect();
    let page = PageRequest {
        kind: "rate_limit",
        limit,
        after: query.first("after"),
        before: query.first("before"),
        descending: false,
    };
    state.cursor_page(all, &page).map(axum::Json)
}

async fn update_rate_limit(
    Extract(shared): Extract<SharedState>,
    Path((project_id, rate_limit_id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    let rate_limit = state
        .rate_limits
        .iter()
        .find(|rl| rl.project_id == project_id && rl.id == rate_limit_id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The rate limit {rate_limit_id} was not found in project {project_id}"
            ))
        })?;
    if body.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Provide at least one of: {}.",
            RATE_LIMIT_FIELDS.join(", ")
        )));
    }
    let mut changes = BTreeMap::new();
    for (field, value) in &body {
        if !RATE_LIMIT_FIELDS.contains(&field.as_str()) {
            return Err(ApiError::invalid(
                field,
                format!("Unrecognized request argument supplied: {field}"),
            ));
        }
        let Some(number) = value.as_i64() else {
            return Err(ApiError::invalid(
                field,
                format!("Invalid type for '{field}': expected an integer, but got {value}."),
            ));
        };
        if number < 1 {
            return Err(ApiError::invalid(
                field,
                format!("Invalid '{field}': must be at least 1, got {number}."),
            ));
        }
        // The four optional limits are "only relevant for certain models": the ones this model has.
        if !rate_limit.limits.contains_key(field) {
            return Err(ApiError::invalid(
                field,
                format!("'{field}' does not apply to model {}.", rate_limit.model),
            ));
        }
        changes.insert(field.clone(), number);
    }
    let Some(rate_limit) = state
        .rate_limits
        .iter_mut()
        .find(|rl| rl.project_id == project_id && rl.id == rate_limit_id)
    else {
        return Err(project_not_found(&project_id));
    };
    rate_limit.limits.extend(changes.clone());
    let rendered = rate_limit.render();
    state.audit_mutation(
        "rate_limit.updated",
        json!({"id": rate_limit_id, "changes_requested": changes}),
    );
    Ok(axum::Json(rendered))
}

// ---- admin API keys ----

async fn list_admin_keys(Extract(shared): Extract<SharedState>, RawQuery(raw): RawQuery) -> Reply {
    let state = shared.lock();
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    let descending = match query.first("order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("Invalid 'order': expected 'asc' or 'desc', got '{other}'."),
            ));
        }
    };
    let all = state
        .admin_keys
        .iter()
        .map(|key| Listed {
            id: key.id.clone(),
            key: (key.created_at, key.seq),
            visible: true,
            json: key.render(),
        })
        .collect();
    let page = PageRequest {
        kind: "admin_api_key",
        limit,
        after: query.first("after"),
        before: None,
        descending,
    };
    state.cursor_page(all, &page).map(axum::Json)
}

fn admin_key_not_found(key_id: &str) -> ApiError {
    ApiError::not_found(format!("The admin API key {key_id} was not found"))
}

async fn get_admin_key(Extract(shared): Extract<SharedState>, Path(key_id): Path<String>) -> Reply {
    let state = shared.lock();
    state
        .admin_keys
        .iter()
        .find(|key| key.id == key_id)
        .map(|key| axum::Json(key.render()))
        .ok_or_else(|| admin_key_not_found(&key_id))
}

async fn delete_admin_key(
    Extract(shared): Extract<SharedState>,
    Path(key_id): Path<String>,
) -> Reply {
    let mut state = shared.lock();
    let index = state
        .admin_keys
        .iter()
        .position(|key| key.id == key_id)
        .ok_or_else(|| admin_key_not_found(&key_id))?;
    let key = state.admin_keys.remove(index);
    state.bury("admin_api_key", &key.id, (key.created_at, key.seq));
    Ok(deleted("organization.admin_api_key.deleted", &key_id))
}

// ---- audit logs ----

async fn list_audit_logs(Extract(shared): Extract<SharedState>, RawQuery(raw): RawQuery) -> Reply {
    let state = shared.lock();
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    let gt = query.int("effective_at[gt]")?;
    let gte = query.int("effective_at[gte]")?;
    let lt = query.int("effective_at[lt]")?;
    let lte = query.int("effective_at[lte]")?;
    let tenant_only = query.boolean("tenant_only")?.unwrap_or(false);
    let event_types = query.all(&["event_types[]"]);
    for event_type in &event_types {
        if !is_event_type(event_type) {
            return Err(ApiError::invalid(
                "event_types",
                format!("Invalid 'event_types[]': '{event_type}' is not an audit log event type."),
            ));
        }
        if is_tenant_event(event_type) != tenant_only {
            return Err(ApiError::invalid(
                "tenant_only",
                if tenant_only {
                    format!(
                        "With tenant_only=true every event type must be tenant-scoped; '{event_type}' is not."
                    )
                } else {
                    format!("'{event_type}' is tenant-scoped and needs tenant_only=true.")
                },
            ));
        }
    }
    let project_ids = query.all(&["project_ids[]"]);
    let actor_ids = query.all(&["actor_ids[]"]);
    let actor_emails = query.all(&["actor_emails[]"]);
    let resource_ids = query.all(&["resource_ids[]"]);
    let all = state
        .audit
        .iter()
        .map(|entry| {
            let log = &entry.log;
            let event_type = log["type"].as_str().unwrap_or_default();
            let actor = &log["actor"];
            let actor_id_values = [
                &actor["session"]["user"]["id"],
                &actor["api_key"]["id"],
                &actor["api_key"]["user"]["id"],
                &actor["api_key"]["service_account"]["id"],
            ];
            let actor_email_values = [
                &actor["session"]["user"]["email"],
                &actor["api_key"]["user"]["email"],
            ];
            let matches_any = |wanted: &[String], values: &[&Value]| {
                wanted.is_empty()
                    || values
                        .iter()
                        .filter_map(|value| value.as_str())
                        .any(|value| wanted.iter().any(|w| w == value))
            };
            let at = entry.effective_at;
            let visible = gt.is_none_or(|bound| at > bound)
                && gte.is_none_or(|bound| at >= bound)
                && lt.is_none_or(|bound| at < bound)
                && lte.is_none_or(|bound| at <= bound)
                && is_tenant_event(event_type) == tenant_only
                && (event_types.is_empty() || event_types.iter().any(|t| t == event_type))
                && matches_any(&project_ids, &[&log["project"]["id"]])
                && matches_any(&actor_ids, &actor_id_values)
                && matches_any(&actor_emails, &actor_email_values)
                && matches_any(&resource_ids, &[&log[event_type]["id"]]);
            Listed {
                id: entry.id.clone(),
                key: (entry.effective_at, entry.seq),
                visible,
                json: log.clone(),
            }
        })
        .collect();
    let page = PageRequest {
        kind: "audit_log",
        limit,
        after: query.first("after"),
        before: query.first("before"),
        descending: true,
    };
    state.cursor_page(all, &page).map(axum::Json)
}

// ---- usage ----

const GROUP_BY_FIELDS: [&str; 6] = [
    "project_id",
    "user_id",
    "api_key_id",
    "model",
    "batch",
    "service_tier",
];

async fn usage_completions(
    Extract(shared): Extract<SharedState>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let query = Query::new(raw);
    let start_time = query.int("start_time")?.ok_or_else(|| {
        ApiError::invalid("start_time", "Missing required parameter: 'start_time'.")
    })?;
    if start_time < 0 {
        return Err(ApiError::invalid(
            "start_time",
            "Invalid 'start_time': must not be negative.",
        ));
    }
    let end_time = match query.int("end_time")? {
        Some(end) if end <= start_time => {
            return Err(ApiError::invalid(
                "end_time",
                "Invalid 'end_time': must be after 'start_time'.",
            ));
        }
        Some(end) => end,
        None => state.now().max(start_time + 1),
    };
    let (width, default_limit, max_limit) = match query.first("bucket_width").unwrap_or("1d") {
        "1m" => (60, 60, 1440),
        "1h" => (3600, 24, 168),
        "1d" => (86_400, 7, 31),
        other => {
            return Err(ApiError::invalid(
                "bucket_width",
                format!("Invalid 'bucket_width': expected '1m', '1h' or '1d', got '{other}'."),
            ));
        }
    };
    let limit = match query.int("limit")? {
        None => state.usage_page_size.unwrap_or(default_limit),
        Some(limit) => usize::try_from(limit)
            .ok()
            .filter(|limit| (1..=max_limit).contains(limit))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("Invalid 'limit': must be between 1 and {max_limit} for this bucket_width, got {limit}."),
                )
            })?,
    };
    let group_by = query.all(&["group_by", "group_by[]"]);
    if let Some(bad) = group_by
        .iter()
        .find(|field| !GROUP_BY_FIELDS.contains(&field.as_str()))
    {
        return Err(ApiError::invalid(
            "group_by",
            format!(
                "Invalid 'group_by': '{bad}' is not one of {}.",
                GROUP_BY_FIELDS.join(", ")
            ),
        ));
    }
    let project_ids = query.all(&["project_ids", "project_ids[]"]);
    let user_ids = query.all(&["user_ids", "user_ids[]"]);
    let api_key_ids = query.all(&["api_key_ids", "api_key_ids[]"]);
    let models = query.all(&["models", "models[]"]);
    let batch = query.boolean("batch")?;
    let first_page_token = format!("page_{start_time:x}_{width:x}");
    let mut bucket_start = match query.first("page") {
        None => start_time,
        Some(token) => parse_page_token(token, start_time, end_time, width)?,
    };
    if state.broken_pagination {
        bucket_start = start_time;
    }
    let mut buckets = Vec::new();
    while bucket_start < end_time && buckets.len() < limit {
        let bucket_end = bucket_start + width;
        let mut groups: Vec<(Vec<Value>, Value)> = Vec::new();
        for usage in state.usage.iter().filter(|usage| {
            usage.at >= bucket_start
                && usage.at < bucket_end
                && usage.at < end_time
                && (project_ids.is_empty() || project_ids.contains(&usage.project_id))
                && (user_ids.is_empty()
                    || usage
                        .user_id
                        .as_ref()
                        .is_some_and(|user| user_ids.contains(user)))
                && (api_key_ids.is_empty() || api_key_ids.contains(&usage.api_key_id))
                && (models.is_empty() || models.contains(&usage.model))
                && batch.is_none_or(|batch| batch == usage.batch)
        }) {
            let dimension = |field: &str| -> Value {
                if !group_by.iter().any(|g| g == field) {
                    return Value::Null;
                }
                match field {
                    "project_id" => json!(usage.project_id),
                    "user_id" => json!(usage.user_id),
                    "api_key_id" => json!(usage.api_key_id),
                    "model" => json!(usage.model),
                    "batch" => json!(usage.batch),
                    _ => json!(usage.service_tier),
                }
            };
            let group: Vec<Value> = GROUP_BY_FIELDS.iter().map(|f| dimension(f)).collect();
            let index = match groups.iter().position(|(key, _)| *key == group) {
                Some(index) => index,
                None => {
                    let mut result = json!({
                        "object": "organization.usage.completions.result",
                        "input_tokens": 0,
                        "output_tokens": 0,
                        "input_cached_tokens": 0,
                        "input_audio_tokens": 0,
                        "output_audio_tokens": 0,
                        "num_model_requests": 0,
                    });
                    for (field, value) in GROUP_BY_FIELDS.iter().zip(&group) {
                        result[*field] = value.clone();
                    }
                    groups.push((group, result));
                    groups.len() - 1
                }
            };
            let result = &mut groups[index].1;
            for (field, amount) in [
                ("input_tokens", usage.input_tokens),
                ("output_tokens", usage.output_tokens),
                ("input_cached_tokens", usage.input_cached_tokens),
                ("input_audio_tokens", usage.input_audio_tokens),
                ("output_audio_tokens", usage.output_audio_tokens),
                ("num_model_requests", usage.num_model_requests),
            ] {
                result[field] = json!(result[field].as_i64().unwrap_or(0) + amount);
            }
        }
        buckets.push(json!({
            "object": "bucket",
            "start_time": bucket_start,
            "end_time": bucket_end,
            "results": groups.into_iter().map(|(_, result)| result).collect::<Vec<_>>(),
        }));
        bucket_start = bucket_end;
    }
    let (has_more, next_page) = if state.broken_pagination {
        (true, Some(first_page_token))
    } else if bucket_start < end_time {
        (true, Some(format!("page_{bucket_start:x}_{width:x}")))
    } else {
        (false, None)
    };
    Ok(axum::Json(json!({
        "object": "page",
        "data": buckets,
        "has_more": has_more,
        "next_page": next_page,
    })))
}

/// The bucket a `page` token points at; it must come from this query's own pages.
fn parse_page_token(token: &str, start: i64, end: i64, width: i64) -> Result<i64, ApiError> {
    let invalid = || ApiError::invalid("page", format!("Invalid 'page' cursor: '{token}'."));
    let rest = token.strip_prefix("page_").ok_or_else(invalid)?;
    let (at, token_width) = rest.split_once('_').ok_or_else(invalid)?;
    let at = i64::from_str_radix(at, 16).map_err(|_| invalid())?;
    let token_width = i64::from_str_radix(token_width, 16).map_err(|_| invalid())?;
    if token_width != width || at < start || at >= end || (at - start) % width != 0 {
        return Err(invalid());
    }
    Ok(at)
}
