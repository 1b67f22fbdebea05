//! Handlers for the project-scoped operations: projects, API keys, service accounts, users and
//! rate limits.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as Extract};
use serde_json::{Map, Value, json};

use super::super::KeySeed;
use super::super::state::{
    Owner, Project, RATE_LIMIT_FIELDS, RateLimit, ServiceAccount, State, owner_has_access,
};
use super::super::table::PageRequest;
use super::{
    ApiError, Query, Reply, SharedState, expires_in_seconds, json_body, optional_string,
    required_string, role_field, string_list,
};

// ---- lookups shared by handlers ----

fn project_not_found(project_id: &str) -> ApiError {
    ApiError::not_found(format!("The project {project_id} was not found"))
}

/// The project, or 404 (wording of the spec's rate-limit `error_response` example).
pub(super) fn find_project<'a>(
    state: &'a State,
    project_id: &str,
) -> Result<&'a Project, ApiError> {
    state
        .project(project_id)
        .ok_or_else(|| project_not_found(project_id))
}

/// The project, or 404; 400 when it is archived ("Archived projects cannot be used or updated").
pub(super) fn active_project<'a>(
    state: &'a State,
    project_id: &str,
) -> Result<&'a Project, ApiError> {
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

pub(super) fn deleted(object: &str, id: &str) -> axum::Json<Value> {
    axum::Json(json!({"object": object, "id": id, "deleted": true}))
}

// ---- projects ----

pub(super) async fn list_projects(
    Extract(shared): Extract<SharedState>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    let include_archived = query.boolean("include_archived")?.unwrap_or(false);
    state
        .projects
        .page(
            &state.page_request(limit, query.first("after")),
            |project| include_archived || project.archived_at.is_none(),
            Project::render,
        )
        .map(axum::Json)
}

pub(super) async fn get_project(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let state = shared.lock();
    Ok(axum::Json(find_project(&state, &project_id)?.render()))
}

pub(super) async fn modify_project(
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
        .get_mut(&project_id)
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

pub(super) async fn archive_project(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let mut state = shared.lock();
    find_project(&state, &project_id)?;
    let now = state.now();
    let project = state
        .projects
        .get_mut(&project_id)
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

pub(super) async fn list_keys(
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
    let project = find_project(&state, &project_id)?;
    project
        .keys
        .page(
            &state.page_request(limit, query.first("after")),
            |key| {
                let active = owner_has_access(project, key);
                // Without the parameter, membership-based visibility: keys of owners with access.
                match access {
                    Some("any") => true,
                    Some("inactive") => !active,
                    _ => active,
                }
            },
            |key| state.render_key(project, key),
        )
        .map(axum::Json)
}

fn key_not_found(project_id: &str, key_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The API key {key_id} was not found in project {project_id}"
    ))
}

pub(super) async fn get_key(
    Extract(shared): Extract<SharedState>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> Reply {
    let state = shared.lock();
    let project = find_project(&state, &project_id)?;
    let key = project
        .keys
        .get(&key_id)
        .ok_or_else(|| key_not_found(&project_id, &key_id))?;
    Ok(axum::Json(state.render_key(project, key)))
}

pub(super) async fn delete_key(
    Extract(shared): Extract<SharedState>,
    Path((project_id, key_id)): Path<(String, String)>,
) -> Reply {
    let mut state = shared.lock();
    let project = find_project(&state, &project_id)?;
    let key = project
        .keys
        .get(&key_id)
        .ok_or_else(|| key_not_found(&project_id, &key_id))?;
    if let Owner::ServiceAccount(sa_id) = &key.owner
        && project
            .keys
            .iter()
            .filter(|key| matches!(&key.owner, Owner::ServiceAccount(owner) if owner == sa_id))
            .count()
            == 1
    {
        // Spec: "Returns confirmation of the key deletion, or an error if the key belonged to a
        // service account" (400, ErrorResponse) — written when an account had exactly one key.
        // `openai-admin-api-updates.md` §3 (several keys per account, minted for rotation) has
        // `DELETE …/api_keys/{id}` remove a rotated-out key; the fake keeps the spec's refusal
        // for an account's last key, which only deleting the account removes.
        return Err(ApiError::invalid(
            "api_key_id",
            format!(
                "API key {key_id} belongs to service account {sa_id} and cannot be deleted \
                 with this endpoint. Delete the service account instead."
            ),
        ));
    }
    state.remove_key(&project_id, &key_id);
    state.audit_mutation("api_key.deleted", json!({"id": key_id}));
    Ok(deleted("organization.project.api_key.deleted", &key_id))
}

/// `POST …/api_keys/{api_key_id}` (`openai-admin-api-updates.md` §1): `scopes` replaces the
/// key's restrictions (`[]` removes them all), `expires_in_seconds` counts from now. At least one
/// field, neither `null`, both saved together; an expired key is refused.
pub(super) async fn update_key(
    Extract(shared): Extract<SharedState>,
    Path((project_id, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    if !active_project(&state, &project_id)?.keys.contains(&key_id) {
        return Err(key_not_found(&project_id, &key_id));
    }
    if let Some(field) = body
        .keys()
        .find(|field| !["scopes", "expires_in_seconds"].contains(&field.as_str()))
    {
        return Err(ApiError::invalid(
            field,
            format!("Unrecognized request argument supplied: {field}"),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "Provide at least one of: scopes, expires_in_seconds.",
        ));
    }
    // Neither field takes `null`.
    let scopes = body
        .get("scopes")
        .map(|value| string_list("scopes", value))
        .transpose()?;
    if let Some(scopes) = &scopes
        && scopes.iter().any(|scope| scope.trim().is_empty())
    {
        return Err(ApiError::invalid(
            "scopes",
            "Invalid 'scopes': a scope cannot be empty.",
        ));
    }
    let expires_in = body
        .get("expires_in_seconds")
        .map(expires_in_seconds)
        .transpose()?;
    let now = state.now();
    let key = state
        .project_mut(&project_id)
        .keys
        .get_mut(&key_id)
        .ok_or_else(|| key_not_found(&project_id, &key_id))?;
    if key.expired(now) {
        return Err(ApiError::invalid(
            "api_key_id",
            format!("API key {key_id} has expired and can no longer be updated."),
        ));
    }
    if let Some(scopes) = &scopes {
        key.scopes.clone_from(scopes);
    }
    if let Some(seconds) = expires_in {
        key.expires_at = Some(now + seconds);
    }
    let project = find_project(&state, &project_id)?;
    let rendered = project
        .keys
        .get(&key_id)
        .map(|key| state.render_key(project, key))
        .unwrap_or_default();
    let mut changes = Map::new();
    if let Some(scopes) = scopes {
        changes.insert("scopes".into(), json!(scopes));
    }
    state.audit_mutation(
        "api_key.updated",
        json!({"id": key_id, "changes_requested": changes}),
    );
    Ok(axum::Json(rendered))
}

// ---- service accounts ----

fn service_account_not_found(project_id: &str, sa_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The service account {sa_id} was not found in project {project_id}"
    ))
}

pub(super) async fn list_service_accounts(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let project = active_project(&state, &project_id)?;
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    project
        .service_accounts
        .page(
            &state.page_request(limit, query.first("after")),
            |_| true,
            ServiceAccount::render,
        )
        .map(axum::Json)
}

pub(super) async fn create_service_account(
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
    let now = state.now();
    state.add_service_account(&project_id, &sa_id, &name, role, now);
    let mut response = state
        .project(&project_id)
        .and_then(|project| project.service_accounts.get(&sa_id))
        .map(ServiceAccount::render)
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
        .key_anywhere(key_id)
        .map(|(_, key)| {
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

pub(super) async fn get_service_account(
    Extract(shared): Extract<SharedState>,
    Path((project_id, sa_id)): Path<(String, String)>,
) -> Reply {
    let state = shared.lock();
    find_project(&state, &project_id)?
        .service_accounts
        .get(&sa_id)
        .map(|sa| axum::Json(sa.render()))
        .ok_or_else(|| service_account_not_found(&project_id, &sa_id))
}

pub(super) async fn update_service_account(
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
        .project_mut(&project_id)
        .service_accounts
        .get_mut(&sa_id)
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

pub(super) async fn delete_service_account(
    Extract(shared): Extract<SharedState>,
    Path((project_id, sa_id)): Path<(String, String)>,
) -> Reply {
    let mut state = shared.lock();
    if !active_project(&state, &project_id)?
        .service_accounts
        .contains(&sa_id)
    {
        return Err(service_account_not_found(&project_id, &sa_id));
    }
    state.remove_service_account(&project_id, &sa_id);
    state.audit_mutation("service_account.deleted", json!({"id": sa_id}));
    Ok(deleted(
        "organization.project.service_account.deleted",
        &sa_id,
    ))
}

pub(super) async fn create_service_account_key(
    Extract(shared): Extract<SharedState>,
    Path((project_id, sa_id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    if !active_project(&state, &project_id)?
        .service_accounts
        .contains(&sa_id)
    {
        return Err(service_account_not_found(&project_id, &sa_id));
    }
    let name = optional_string(&body, "name")?.unwrap_or_else(|| "Secret key".to_owned());
    let scopes = match body.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => string_list("scopes", value)?,
    };
    // `openai-admin-api-updates.md` §3: 1 … 31,536,000 seconds, or null for no expiry.
    let expires_in = match body.get("expires_in_seconds") {
        None | Some(Value::Null) => None,
        Some(value) => Some(expires_in_seconds(value)?),
    };
    let key_id = format!("key_fake{:04}", state.seq());
    let now = state.now();
    let scope_names: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let mut seed = KeySeed::new(&key_id)
        .name(&name)
        .created_at(now)
        .scopes(&scope_names);
    if let Some(seconds) = expires_in {
        seed = seed.expires_at(now + seconds);
    }
    state.add_key(&project_id, Owner::ServiceAccount(sa_id), seed);
    let mut body = key_created_body(&state, &key_id);
    body["expires_at"] = json!(expires_in.map(|seconds| now + seconds));
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

pub(super) async fn list_users(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let project = active_project(&state, &project_id)?;
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    project
        .members
        .page(
            &state.page_request(limit, query.first("after")),
            |m| m.active,
            |m| state.render_membership(m),
        )
        .map(axum::Json)
}

pub(super) async fn add_user(
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
            .iter()
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
    if !state.org_users.contains(&user_id) {
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
    let now = state.now();
    state.add_membership(&project_id, &user_id, role, now);
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

pub(super) async fn get_user(
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

pub(super) async fn modify_user(
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
    if let Some(membership) = state.project_mut(&project_id).members.get_mut(&user_id) {
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

pub(super) async fn delete_user(
    Extract(shared): Extract<SharedState>,
    Path((project_id, user_id)): Path<(String, String)>,
) -> Reply {
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    active_member(&state, &project_id, &user_id)?;
    if let Some(membership) = state.project_mut(&project_id).members.get_mut(&user_id) {
        membership.active = false;
    }
    state.audit_mutation("user.deleted", json!({"id": user_id}));
    Ok(deleted("organization.project.user.deleted", &user_id))
}

// ---- rate limits ----

pub(super) async fn list_rate_limits(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let project = find_project(&state, &project_id)?;
    let query = Query::new(raw);
    let limit = query.limit(&state, 100, 100)?;
    let page = PageRequest {
        before: query.first("before"),
        ..state.page_request(limit, query.first("after"))
    };
    project
        .rate_limits
        .page(&page, |_| true, RateLimit::render)
        .map(axum::Json)
}

pub(super) async fn update_rate_limit(
    Extract(shared): Extract<SharedState>,
    Path((project_id, rate_limit_id)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    active_project(&state, &project_id)?;
    let rate_limit = find_project(&state, &project_id)?
        .rate_limits
        .get(&rate_limit_id)
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
        .project_mut(&project_id)
        .rate_limits
        .get_mut(&rate_limit_id)
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
