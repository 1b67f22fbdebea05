//! Handlers for the organization-wide operations: admin API keys, users, certificates, data
//! retention, audit logs and usage.

use axum::extract::{Path, RawQuery, State as Extract};
use serde_json::{Value, json};

use super::super::USAGE_ENDPOINTS;
use super::super::state::{
    AuditEntry, Certificate, OrgUser, State, is_event_type, is_tenant_event, usage_family,
};
use super::super::table::PageRequest;
use super::projects::{deleted, find_project};
use super::{ApiError, Query, Reply, SharedState};

/// The page a list with `order=asc|desc` asks for (`limit` 1-100, default 20; `after`),
/// newest first when `descending_by_default` and no `order` is sent.
fn ordered_page<'a>(
    state: &State,
    query: &'a Query,
    descending_by_default: bool,
) -> Result<PageRequest<'a>, ApiError> {
    let limit = query.limit(state, 20, 100)?;
    let descending = match query.first("order") {
        None => descending_by_default,
        Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("Invalid 'order': expected 'asc' or 'desc', got '{other}'."),
            ));
        }
    };
    Ok(PageRequest {
        descending,
        ..state.page_request(limit, query.first("after"))
    })
}

// ---- admin API keys ----

pub(super) async fn list_admin_keys(
    Extract(shared): Extract<SharedState>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let query = Query::new(raw);
    let page = ordered_page(&state, &query, false)?;
    state
        .admin_keys
        .page(&page, |_| true, |key| state.render_admin_key(key))
        .map(axum::Json)
}

fn admin_key_not_found(key_id: &str) -> ApiError {
    ApiError::not_found(format!("The admin API key {key_id} was not found"))
}

pub(super) async fn get_admin_key(
    Extract(shared): Extract<SharedState>,
    Path(key_id): Path<String>,
) -> Reply {
    let state = shared.lock();
    state
        .admin_keys
        .get(&key_id)
        .map(|key| axum::Json(state.render_admin_key(key)))
        .ok_or_else(|| admin_key_not_found(&key_id))
}

pub(super) async fn delete_admin_key(
    Extract(shared): Extract<SharedState>,
    Path(key_id): Path<String>,
) -> Reply {
    let mut state = shared.lock();
    state
        .admin_keys
        .remove(&key_id)
        .ok_or_else(|| admin_key_not_found(&key_id))?;
    Ok(deleted("organization.admin_api_key.deleted", &key_id))
}

// ---- audit logs ----

pub(super) async fn list_audit_logs(
    Extract(shared): Extract<SharedState>,
    RawQuery(raw): RawQuery,
) -> Reply {
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
    let visible = |entry: &AuditEntry| {
        let event_type = entry.event_type.as_str();
        let actor = &*entry.actor;
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
        let project_id = entry
            .project
            .as_ref()
            .map_or(Value::Null, |(id, _)| json!(id));
        is_tenant_event(event_type) == tenant_only
            && (event_types.is_empty() || event_types.iter().any(|t| t == event_type))
            && matches_any(&project_ids, &[&project_id])
            && matches_any(&actor_ids, &actor_id_values)
            && matches_any(&actor_emails, &actor_email_values)
            && matches_any(&resource_ids, &[&entry.details["id"]])
    };
    // The time filters bound the walk itself, in `effective_at` order.
    let low = [gt.map(|at| at.saturating_add(1)), gte]
        .into_iter()
        .flatten()
        .max();
    let high = [lt.map(|at| at.saturating_sub(1)), lte]
        .into_iter()
        .flatten()
        .min();
    let page = PageRequest {
        before: query.first("before"),
        descending: true,
        within: (low, high),
        ..state.page_request(limit, query.first("after"))
    };
    state
        .audit
        .page(&page, visible, AuditEntry::render)
        .map(axum::Json)
}

// ---- usage ----

/// `GET /organization/usage/{family}`: the spec's usage endpoints that group by `api_key_id`,
/// one handler, each family's result shaped by `usage_family`.
pub(super) async fn usage(
    Extract(shared): Extract<SharedState>,
    Path(family_name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let Some(endpoint) = USAGE_ENDPOINTS
        .into_iter()
        .find(|known| *known == family_name)
    else {
        return Err(ApiError::not_found(format!(
            "Invalid URL (GET /v1/organization/usage/{family_name})"
        )));
    };
    let family = usage_family(endpoint);
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
    let limit = state.max_page_size.map_or(limit, |cap| limit.min(cap));
    let group_by = query.all(&["group_by", "group_by[]"]);
    if let Some(bad) = group_by
        .iter()
        .find(|field| !family.group_by.contains(&field.as_str()))
    {
        return Err(ApiError::invalid(
            "group_by",
            format!(
                "Invalid 'group_by': '{bad}' is not one of {}.",
                family.group_by.join(", ")
            ),
        ));
    }
    let filters: Vec<(&str, Vec<String>)> = family
        .filters
        .iter()
        .map(|(parameter, field)| (*field, query.all(&[parameter, &format!("{parameter}[]")])))
        .filter(|(_, wanted)| !wanted.is_empty())
        .collect();
    // Only completions usage can be split into batch and non-batch jobs.
    let batch = if family.group_by.contains(&"batch") {
        query.boolean("batch")?
    } else {
        None
    };
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
        let rows = state
            .usage
            .range((endpoint, bucket_start, 0)..(endpoint, bucket_end.min(end_time), 0));
        for usage in rows.map(|(_, usage)| usage).filter(|usage| {
            filters.iter().all(|(field, wanted)| {
                usage
                    .dimension_value(field)
                    .as_str()
                    .is_some_and(|value| wanted.iter().any(|w| w == value))
            }) && batch.is_none_or(|batch| batch == usage.batch)
        }) {
            let group: Vec<Value> = family
                .group_by
                .iter()
                .map(|field| {
                    if group_by.iter().any(|g| g == field) {
                        usage.dimension_value(field)
                    } else {
                        Value::Null
                    }
                })
                .collect();
            let index = match groups.iter().position(|(key, _)| *key == group) {
                Some(index) => index,
                None => {
                    let mut result = json!({"object": family.object});
                    for amount in family.amounts {
                        result[*amount] = json!(0);
                    }
                    for (field, value) in family.group_by.iter().zip(&group) {
                        result[*field] = value.clone();
                    }
                    groups.push((group, result));
                    groups.len() - 1
                }
            };
            let result = &mut groups[index].1;
            for amount in family.amounts {
                result[*amount] =
                    json!(result[*amount].as_i64().unwrap_or(0) + usage.amount_value(amount));
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

// ---- organization users ----

fn org_user_not_found(user_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The user {user_id} was not found in the organization"
    ))
}

/// `GET /organization/users`: members of the organization (not the ones removed), `emails`
/// filters by e-mail (sent as `emails=…` or `emails[]=…`, once per value).
pub(super) async fn list_users(
    Extract(shared): Extract<SharedState>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let query = Query::new(raw);
    let limit = query.limit(&state, 20, 100)?;
    let emails = query.all(&["emails", "emails[]"]);
    state
        .org_users
        .page(
            &state.page_request(limit, query.first("after")),
            |user| emails.is_empty() || emails.contains(&user.email),
            OrgUser::render,
        )
        .map(axum::Json)
}

pub(super) async fn get_user(
    Extract(shared): Extract<SharedState>,
    Path(user_id): Path<String>,
) -> Reply {
    let state = shared.lock();
    state
        .org_users
        .get(&user_id)
        .map(|user| axum::Json(user.render()))
        .ok_or_else(|| org_user_not_found(&user_id))
}

/// `DELETE /organization/users/{user_id}`: the user leaves the organization and every project;
/// their project keys stay, with `owner_project_access: inactive`.
pub(super) async fn delete_user(
    Extract(shared): Extract<SharedState>,
    Path(user_id): Path<String>,
) -> Reply {
    let mut state = shared.lock();
    if !state.remove_org_user(&user_id) {
        return Err(org_user_not_found(&user_id));
    }
    state.audit_mutation("user.deleted", json!({"id": user_id}));
    Ok(deleted("organization.user.deleted", &user_id))
}

// ---- data retention ----

pub(super) async fn get_data_retention(Extract(shared): Extract<SharedState>) -> Reply {
    let state = shared.lock();
    Ok(axum::Json(json!({
        "object": "organization.data_retention",
        "type": state.data_retention,
    })))
}

// ---- certificates ----

/// `GET /organization/certificates`: newest first unless `order=asc`.
pub(super) async fn list_certificates(
    Extract(shared): Extract<SharedState>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let query = Query::new(raw);
    let page = ordered_page(&state, &query, true)?;
    state
        .certificates
        .page(
            &page,
            |_| true,
            |certificate| certificate.render("organization.certificate", certificate.active),
        )
        .map(axum::Json)
}

/// `GET /organization/projects/{project_id}/certificates`: the organization's certificates
/// configured for the project, `active` at the project level.
pub(super) async fn list_project_certificates(
    Extract(shared): Extract<SharedState>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let state = shared.lock();
    let project = find_project(&state, &project_id)?;
    let query = Query::new(raw);
    let page = ordered_page(&state, &query, true)?;
    project
        .certificates
        .page(
            &page,
            |_| true,
            |configured| {
                state.certificates.get(&configured.id).map_or(
                    Value::Null,
                    |certificate: &Certificate| {
                        certificate.render("organization.project.certificate", configured.active)
                    },
                )
            },
        )
        .map(axum::Json)
}
