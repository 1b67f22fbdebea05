//! The estate inventory: identities with filters and cursor paging, one identity with its risks
//! and history, and how the sync is doing.

use axum::extract::{Path, State};
use axum::response::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody, Params};
use crate::config::Role;
use crate::inventory::{Filter, Kind, risk};
use crate::service::inventory::SyncStatus;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Most identities examined per list request; a filter that matches rarely returns a `next`
/// cursor rather than reading everything.
const SCAN_BUDGET: usize = 20_000;

/// Filters and paging of `GET /api/v1/inventory`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InventoryQuery {
    /// `project`, `project_key`, `service_account`, `admin_key` or `user`.
    #[param(pattern = "^(project|project_key|service_account|admin_key|user)$")]
    kind: Option<String>,
    /// A project id: its keys, service accounts and members (and the project).
    project: Option<String>,
    /// A key owner's email, user id or service-account id.
    owner: Option<String>,
    /// A risk: `leaked`, `unused`, `never_used`, `no_expiry`, `unrestricted_scopes`,
    /// `owner_left`, `admin_key`, `too_old`, `data_exposure`.
    #[param(
        pattern = "^(leaked|unused|never_used|no_expiry|unrestricted_scopes|owner_left|admin_key|too_old|data_exposure)$"
    )]
    risk: Option<String>,
    /// Keys not used for at least this long, never-used ones included: a number and a unit,
    /// `s`, `m`, `h`, `d` or `w` (`90d`).
    #[param(pattern = "^[0-9]{1,6}[smhdw]$")]
    unused_for: Option<String>,
    /// Keys whose owner left the project or that name none.
    unowned: Option<bool>,
    /// Keys that expire within this long: a number and a unit, `s`, `m`, `h`, `d` or `w` (`14d`).
    #[param(pattern = "^[0-9]{1,6}[smhdw]$")]
    expiring_within: Option<String>,
    /// Deleted identities too (marked with `deleted_at`).
    include_deleted: Option<bool>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Identities per page (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of identities, in id order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct InventoryPage {
    /// Each: `{id, kind, openai_id, facts, first_seen, changed_at, deleted_at?, risks: [{id,
    /// fact}], attributes?}`.
    #[schema(value_type = Vec<Object>)]
    pub(crate) identities: Vec<Value>,
    /// Pass as `cursor` for the next page; absent at the end.
    pub(crate) next: Option<String>,
}

/// One identity with its risks, attributes and history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct IdentityDetail {
    #[schema(value_type = Object)]
    pub(crate) identity: Value,
    /// Oldest first: `{seq, at, what, source, fields}`.
    #[schema(value_type = Vec<Object>)]
    pub(crate) history: Vec<Value>,
}

/// A duration as the API takes it: up to six digits and one unit, `s`, `m`, `h`, `d` or `w`.
fn duration(name: &str, text: &str) -> Result<chrono::Duration, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "{name}: `{text}` is not a duration such as 90d or 12h (a number and one of s, m, h, d, w)"
        ))
    };
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at_checked(split).ok_or_else(bad)?;
    if number.is_empty() || number.len() > 6 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let number: i64 = number.parse().map_err(|_| bad())?;
    Ok(match unit {
        "s" => chrono::Duration::seconds(number),
        "m" => chrono::Duration::minutes(number),
        "h" => chrono::Duration::hours(number),
        "d" => chrono::Duration::days(number),
        "w" => chrono::Duration::weeks(number),
        _ => return Err(bad()),
    })
}

impl InventoryQuery {
    fn filter(&self) -> Result<Filter, ApiError> {
        let kind = self
            .kind
            .as_deref()
            .map(|kind| {
                Kind::parse(kind).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "kind: `{kind}` is not one of project, project_key, service_account, admin_key, user"
                    ))
                })
            })
            .transpose()?;
        if let Some(wanted) = &self.risk
            && !risk::is_risk(wanted)
        {
            return Err(ApiError::BadRequest(format!(
                "risk: `{wanted}` is not a risk the inventory knows ({})",
                risk::RISKS
                    .iter()
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Filter {
            kind,
            project: self.project.clone(),
            owner: self.owner.clone(),
            risk: self.risk.clone(),
            unused_for: self
                .unused_for
                .as_deref()
                .map(|text| duration("unused_for", text))
                .transpose()?,
            unowned: self.unowned.unwrap_or(false),
            expiring_within: self
                .expiring_within
                .as_deref()
                .map(|text| duration("expiring_within", text))
                .transpose()?,
            include_deleted: self.include_deleted.unwrap_or(false),
        })
    }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Identities of the estate (role viewer).
#[utoipa::path(get, path = "/api/v1/inventory", tag = "inventory",
    params(InventoryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of identities with their risks", body = InventoryPage),
        (status = 400, description = "A filter that is not valid", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn list(
    State(api): State<Api>,
    caller: Caller,
    Params(query): Params<InventoryQuery>,
) -> Result<Json<InventoryPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let filter = query.filter()?;
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(limit @ 1..=1000) => limit as usize,
        Some(limit) => {
            return Err(ApiError::BadRequest(format!(
                "limit: {limit} is not between 1 and {MAX_LIMIT}"
            )));
        }
    };
    let inventory = api.inner.inventory.clone();
    let cursor = query.cursor.clone();
    let (views, next) = tokio::task::spawn_blocking(move || {
        inventory.list(&filter, cursor.as_deref(), limit, SCAN_BUDGET, Utc::now())
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(Json(InventoryPage {
        identities: views.iter().map(json).collect(),
        next,
    }))
}

/// How the inventory sync is doing (role viewer).
#[utoipa::path(get, path = "/api/v1/inventory/status", tag = "inventory",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The last pass and watch, and findings published", body = SyncStatus),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody)
    ))]
pub(super) async fn status(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<SyncStatus>, ApiError> {
    caller.require(Role::Viewer)?;
    let status = api
        .inner
        .inventory_status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Json(status))
}

/// One identity with its risks, attributes and history (role viewer).
#[utoipa::path(get, path = "/api/v1/inventory/{id}", tag = "inventory",
    params(("id" = String, Path, description = "The identity's id, e.g. `project_key:key_abc`", pattern = r"^(project_key|service_account|admin_key|project|user):[A-Za-z0-9_.:-]{1,256}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The identity and its history", body = IdentityDetail),
        (status = 400, description = "Not an identity id", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "Role too small", body = ErrorBody),
        (status = 404, description = "No such identity", body = ErrorBody)
    ))]
pub(super) async fn show(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<IdentityDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    crate::owners::check_identity(&id).map_err(ApiError::BadRequest)?;
    let inventory = &api.inner.inventory;
    let Some(view) = inventory.view(&id, Utc::now())? else {
        return Err(ApiError::NotFound(format!(
            "no identity `{id}` in the inventory"
        )));
    };
    let history = inventory
        .history(&id)?
        .into_iter()
        .map(|(seq, change)| {
            let mut value = json(&change);
            value["seq"] = Value::from(seq);
            value
        })
        .collect();
    Ok(Json(IdentityDetail {
        identity: json(&view),
        history,
    }))
}
