//! Handlers for a project's narrowing controls in the spec: the model allow or deny list
//! (`…/model_permissions`), the hosted tools (`…/hosted_tool_permissions`), the hard spend
//! limit (`…/spend_limit`) and data retention (`…/data_retention`).
//!
//! The spec has no audit event type for these settings; a change is logged as `project.updated`
//! with only the project's `id` (its `changes_requested` documents `title` alone), so an
//! audit-log reader learns that the project changed and reads the settings again.

use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use serde_json::{Map, Value, json};

use super::super::state::{Controls, HOSTED_TOOLS, PROJECT_RETENTION_TYPES, State};
use super::projects::{active_project, find_project};
use super::{ApiError, Reply, SharedState, json_body, string_list};

/// The project's controls, for a change: 404 unknown, 400 archived.
fn controls_mut<'a>(state: &'a mut State, project_id: &str) -> Result<&'a mut Controls, ApiError> {
    active_project(state, project_id)?;
    Ok(&mut state.project_mut(project_id).controls)
}

/// Logs the change (`project.updated`) and answers with the setting as it now is.
fn changed(state: &mut State, project_id: &str, rendered: Value) -> Reply {
    state.audit_mutation("project.updated", json!({"id": project_id}));
    Ok(axum::Json(rendered))
}

/// Refuses a field the operation does not have.
fn only(body: &Map<String, Value>, fields: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|field| !fields.contains(&field.as_str())) {
        Some(field) => Err(ApiError::invalid(
            field,
            format!("Unrecognized request argument supplied: {field}"),
        )),
        None => Ok(()),
    }
}

// ---- model permissions ----

pub(super) async fn get_model_permissions(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let state = shared.lock();
    let project = find_project(&state, &project_id)?;
    Ok(axum::Json(project.controls.render_models()))
}

/// `ProjectModelPermissionsUpdateRequest`: `mode` and `model_ids`, both required.
pub(super) async fn update_model_permissions(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    let controls = controls_mut(&mut state, &project_id)?;
    only(&body, &["mode", "model_ids"])?;
    let mode = match body.get("mode") {
        None => {
            return Err(ApiError::invalid(
                "mode",
                "Missing required parameter: 'mode'.",
            ));
        }
        Some(Value::String(mode)) if mode == "allow_list" => "allow_list",
        Some(Value::String(mode)) if mode == "deny_list" => "deny_list",
        Some(other) => {
            return Err(ApiError::invalid(
                "mode",
                format!("Invalid 'mode': expected 'allow_list' or 'deny_list', but got {other}."),
            ));
        }
    };
    let model_ids = match body.get("model_ids") {
        None => {
            return Err(ApiError::invalid(
                "model_ids",
                "Missing required parameter: 'model_ids'.",
            ));
        }
        Some(value) => string_list("model_ids", value)?,
    };
    controls.model_mode = mode;
    controls.model_ids = model_ids;
    let rendered = controls.render_models();
    changed(&mut state, &project_id, rendered)
}

pub(super) async fn delete_model_permissions(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let mut state = shared.lock();
    let controls = controls_mut(&mut state, &project_id)?;
    let defaults = Controls::default();
    controls.model_mode = defaults.model_mode;
    controls.model_ids = defaults.model_ids;
    changed(
        &mut state,
        &project_id,
        json!({"object": "project.model_permissions.deleted", "deleted": true}),
    )
}

// ---- hosted tools ----

pub(super) async fn get_hosted_tools(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let state = shared.lock();
    let project = find_project(&state, &project_id)?;
    Ok(axum::Json(project.controls.render_tools()))
}

/// `ProjectHostedToolPermissionsUpdateRequest`: per tool `{enabled}` or `null` (unchanged);
/// tools left out are unchanged.
pub(super) async fn update_hosted_tools(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    let controls = controls_mut(&mut state, &project_id)?;
    only(&body, &HOSTED_TOOLS)?;
    let mut changes = Vec::new();
    for tool in HOSTED_TOOLS {
        match body.get(tool) {
            None | Some(Value::Null) => {}
            Some(Value::Object(update)) => {
                only(update, &["enabled"])?;
                let Some(enabled) = update.get("enabled").and_then(Value::as_bool) else {
                    return Err(ApiError::invalid(
                        tool,
                        format!("Invalid '{tool}.enabled': expected a boolean."),
                    ));
                };
                changes.push((tool, enabled));
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    tool,
                    format!("Invalid type for '{tool}': expected an object, but got {other}."),
                ));
            }
        }
    }
    controls.hosted_tools.extend(changes);
    let rendered = controls.render_tools();
    changed(&mut state, &project_id, rendered)
}

// ---- hard spend limit ----

fn no_spend_limit(project_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "No hard spend limit is set for project {project_id}"
    ))
}

pub(super) async fn get_spend_limit(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let state = shared.lock();
    let project = find_project(&state, &project_id)?;
    project
        .controls
        .render_spend_limit()
        .map(axum::Json)
        .ok_or_else(|| no_spend_limit(&project_id))
}

/// `UpdateProjectSpendLimitBody`: `threshold_amount` (cents, at least 1), `currency: USD`,
/// `interval: month`, all required; creates or replaces the limit.
pub(super) async fn update_spend_limit(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    let controls = controls_mut(&mut state, &project_id)?;
    only(&body, &["threshold_amount", "currency", "interval"])?;
    let cents = match body.get("threshold_amount") {
        None => {
            return Err(ApiError::invalid(
                "threshold_amount",
                "Missing required parameter: 'threshold_amount'.",
            ));
        }
        Some(Value::Number(number)) if number.as_i64().is_some_and(|cents| cents >= 1) => {
            number.as_i64().unwrap_or(1)
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "threshold_amount",
                format!(
                    "Invalid 'threshold_amount': expected an integer of at least 1, but got {other}."
                ),
            ));
        }
    };
    for (field, only_value) in [("currency", "USD"), ("interval", "month")] {
        match body.get(field) {
            None => {
                return Err(ApiError::invalid(
                    field,
                    format!("Missing required parameter: '{field}'."),
                ));
            }
            Some(Value::String(text)) if text == only_value => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    field,
                    format!("Invalid '{field}': expected '{only_value}', but got {other}."),
                ));
            }
        }
    }
    controls.spend_limit = Some(cents);
    let rendered = controls.render_spend_limit().unwrap_or_default();
    changed(&mut state, &project_id, rendered)
}

pub(super) async fn delete_spend_limit(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let mut state = shared.lock();
    let controls = controls_mut(&mut state, &project_id)?;
    if controls.spend_limit.take().is_none() {
        return Err(no_spend_limit(&project_id));
    }
    changed(
        &mut state,
        &project_id,
        json!({"object": "project.spend_limit.deleted", "deleted": true}),
    )
}

// ---- data retention ----

pub(super) async fn get_data_retention(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
) -> Reply {
    let state = shared.lock();
    let project = find_project(&state, &project_id)?;
    Ok(axum::Json(project.controls.render_data_retention()))
}

/// `UpdateProjectDataRetentionBody`: `retention_type`, required, one of the spec's values.
pub(super) async fn update_data_retention(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Reply {
    let body = json_body(&body)?;
    let mut state = shared.lock();
    let controls = controls_mut(&mut state, &project_id)?;
    only(&body, &["retention_type"])?;
    let retention = match body.get("retention_type") {
        None => {
            return Err(ApiError::invalid(
                "retention_type",
                "Missing required parameter: 'retention_type'.",
            ));
        }
        Some(value) => PROJECT_RETENTION_TYPES
            .into_iter()
            .find(|known| value.as_str() == Some(*known))
            .ok_or_else(|| {
                ApiError::invalid(
                    "retention_type",
                    format!(
                        "Invalid 'retention_type': expected one of {}, but got {value}.",
                        PROJECT_RETENTION_TYPES.join(", ")
                    ),
                )
            })?,
    };
    controls.data_retention = retention;
    let rendered = controls.render_data_retention();
    changed(&mut state, &project_id, rendered)
}
