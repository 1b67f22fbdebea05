//! The `openai.*` actions that only read: the key inventory, a project's people, the audit log
//! and completions usage. Each follows pagination to the end (bounded by `MAX_PAGES`) and reshapes OpenAI's
//! objects into what playbooks compare: times as RFC 3339 UTC strings (like `ago()` and `now`),
//! owners flattened, usage one row per bucket and group.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::OpenAi;
use super::transport::{Failure, PAGE_LIMIT, Paging, id, parse_input};
use crate::actions::{
    AuditEvents as AuditInput, Bucket, ListKeys as ListKeysInput,
    ListProjectUsers as ListProjectUsersInput, ProjectRole, Usage as UsageInput, UsageGroup,
};
use crate::engine::{Action, ActionError, ActionFuture, Actions, Call, Success};

const LIST_KEYS: &str = "openai.list_keys";
const LIST_PROJECT_USERS: &str = "openai.list_project_users";
const AUDIT_EVENTS: &str = "openai.audit_events";
const USAGE: &str = "openai.usage";

pub(super) fn register(actions: &mut Actions, client: &Arc<OpenAi>) {
    actions
        .insert(
            LIST_KEYS,
            Arc::new(ListKeys {
                client: client.clone(),
            }),
        )
        .insert(
            LIST_PROJECT_USERS,
            Arc::new(ListProjectUsers {
                client: client.clone(),
            }),
        )
        .insert(
            AUDIT_EVENTS,
            Arc::new(AuditEvents {
                client: client.clone(),
            }),
        )
        .insert(
            USAGE,
            Arc::new(Usage {
                client: client.clone(),
            }),
        );
}

/// Unix seconds as an RFC 3339 UTC string (`2026-01-05T09:00:00Z`); anything else unchanged.
pub(super) fn time(value: &Value) -> Value {
    value
        .as_i64()
        .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
        .map_or_else(
            || value.clone(),
            |time| Value::String(time.to_rfc3339_opts(SecondsFormat::Secs, true)),
        )
}

/// An RFC 3339 time or Unix seconds, as Unix seconds.
fn unix_seconds(field: &str, text: &str) -> Result<i64, ActionError> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>()
        && seconds >= 0
    {
        return Ok(seconds);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp())
        .map_err(|_| {
            let shown: String = text.chars().take(60).collect();
            ActionError::permanent(format!(
                "`{field}` must be an RFC 3339 time (e.g. 2026-01-05T09:00:00Z) or Unix seconds, \
                 not `{shown}`"
            ))
        })
}

/// A copy of `input` with these fields as strings when a template rendered them as numbers
/// (`since: "{{ some_unix_time }}"`), so the input type can stay a plain string.
fn numbers_as_strings(input: &Value, fields: &[&str]) -> Value {
    let mut input = input.clone();
    if let Value::Object(map) = &mut input {
        for field in fields {
            if let Some(value) = map.get_mut(*field)
                && let Value::Number(number) = value
            {
                *value = Value::String(number.to_string());
            }
        }
    }
    input
}

/// A read's output, with anything secret-shaped redacted on the way out.
fn output(mut value: Value) -> Success {
    quench_proto::redact_value(&mut value);
    Success::new(value)
}

// ---- openai.list_keys ----

/// Project API keys with their owners: `GET /organization/projects/{id}/api_keys` with
/// `owner_project_access=any` (otherwise OpenAI may hide keys whose owner left the project),
/// for one project or every active one (`GET /organization/projects`).
#[derive(Debug)]
struct ListKeys {
    client: Arc<OpenAi>,
}

impl ListKeys {
    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: ListKeysInput = parse_input(LIST_KEYS, input)?;
        let projects = match &input.project_id {
            Some(project_id) => vec![id("project_id", project_id)?.to_owned()],
            None => self.active_projects().await?,
        };
        let mut keys = Vec::new();
        for project_id in &projects {
            let request = self
                .client
                .request(
                    Method::GET,
                    &["organization", "projects", project_id, "api_keys"],
                    format!("API keys of project {project_id}"),
                )?
                .query("owner_project_access", "any");
            let page = self
                .client
                .walk(&request, Paging::Cursor, PAGE_LIMIT)
                .await?;
            keys.extend(page.iter().map(|key| key_row(project_id, key)));
        }
        Ok(output(json!({"count": keys.len(), "keys": keys})))
    }

    async fn active_projects(&self) -> Result<Vec<String>, Failure> {
        let request =
            self.client
                .request(Method::GET, &["organization", "projects"], "projects")?;
        let projects = self
            .client
            .walk(&request, Paging::Cursor, PAGE_LIMIT)
            .await?;
        Ok(projects
            .iter()
            // Archived projects are left out by default; this also covers a server that sends them.
            .filter(|project| project["status"] != "archived")
            .filter_map(|project| project["id"].as_str().map(str::to_owned))
            .collect())
    }
}

/// One key: `{project_id, id, name, redacted_value, created_at, last_used_at, expires_at,
/// owner_project_access, owner: {type, id, name, email, role}}` (`expires_at` is `null` for a
/// key that never expires, or from a server that does not say). Owner fields OpenAI does not
/// give (a service account has no e-mail) are `null`, so templates can test them.
fn key_row(project_id: &str, key: &Value) -> Value {
    let owner = &key["owner"];
    let details = match owner["type"].as_str() {
        Some("user") => &owner["user"],
        Some("service_account") => &owner["service_account"],
        _ => &Value::Null,
    };
    json!({
        "project_id": project_id,
        "id": key["id"],
        "name": key["name"],
        "redacted_value": key["redacted_value"],
        "created_at": time(&key["created_at"]),
        "last_used_at": time(&key["last_used_at"]),
        "expires_at": time(&key["expires_at"]),
        "owner_project_access": key["owner_project_access"],
        "owner": {
            "type": owner["type"],
            "id": details["id"],
            "name": details["name"],
            "email": details["email"],
            "role": details["role"],
        },
    })
}

impl Action for ListKeys {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }
}

// ---- openai.list_project_users ----

/// A project's people: `GET /organization/projects/{id}/users`, every page, as `{id, name,
/// email, role, added_at}`, only those with `role` when it is given.
#[derive(Debug)]
struct ListProjectUsers {
    client: Arc<OpenAi>,
}

impl ListProjectUsers {
    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: ListProjectUsersInput = parse_input(LIST_PROJECT_USERS, input)?;
        let project_id = id("project_id", &input.project_id)?;
        let request = self.client.request(
            Method::GET,
            &["organization", "projects", project_id, "users"],
            format!("people of project {project_id}"),
        )?;
        let page = self
            .client
            .walk(&request, Paging::Cursor, PAGE_LIMIT)
            .await?;
        let wanted = input.role.map(|role| match role {
            ProjectRole::Owner => "owner",
            ProjectRole::Member => "member",
        });
        let users: Vec<Value> = page
            .iter()
            .filter(|user| wanted.is_none_or(|role| user["role"] == role))
            .map(|user| {
                json!({
                    "id": user["id"],
                    "name": user["name"],
                    "email": user["email"],
                    "role": user["role"],
                    "added_at": time(&user["added_at"]),
                })
            })
            .collect();
        Ok(output(json!({"count": users.len(), "users": users})))
    }
}

impl Action for ListProjectUsers {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }
}

// ---- openai.audit_events ----

/// `GET /organization/audit_logs` with `effective_at[gt]`, `event_types[]` and `project_ids[]`.
/// Events come back oldest first (OpenAI lists newest first), with `effective_at` as RFC 3339;
/// `last_id` and `last_effective_at` are the newest event's, `null` when there is none.
#[derive(Debug)]
struct AuditEvents {
    client: Arc<OpenAi>,
}

impl AuditEvents {
    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: AuditInput = parse_input(AUDIT_EVENTS, &numbers_as_strings(input, &["since"]))?;
        let since = unix_seconds("since", &input.since)?;
        if input.event_types.is_empty() {
            return Err(ActionError::permanent(format!(
                "`{AUDIT_EVENTS}` needs at least one event type"
            )));
        }
        // OpenAI answers tenant-scoped types only with `tenant_only=true`, and then only those.
        let tenant = |event_type: &String| {
            event_type.starts_with("tenant.")
                || event_type == "role.bound_to_resource"
                || event_type == "role.unbound_from_resource"
        };
        let tenant_only = input.event_types.iter().all(tenant);
        if !tenant_only && input.event_types.iter().any(tenant) {
            return Err(ActionError::permanent(format!(
                "`{AUDIT_EVENTS}` cannot mix tenant-scoped event types (tenant.*, \
                 role.bound_to_resource, role.unbound_from_resource) with others: OpenAI lists \
                 them separately; use two steps"
            )));
        }
        let mut request = self
            .client
            .request(
                Method::GET,
                &["organization", "audit_logs"],
                "audit log events",
            )?
            .query("effective_at[gt]", since);
        for event_type in &input.event_types {
            request = request.query("event_types[]", event_type.trim());
        }
        for project_id in input.project_ids.iter().flatten() {
            request = request.query("project_ids[]", id("project_ids", project_id)?);
        }
        if tenant_only {
            request = request.query("tenant_only", true);
        }
        let mut events = self
            .client
            .walk(&request, Paging::Cursor, PAGE_LIMIT)
            .await?;
        events.reverse();
        events.sort_by_key(|event| event["effective_at"].as_i64().unwrap_or(i64::MIN));
        let last = events.last();
        let last_id = last.map_or(Value::Null, |event| event["id"].clone());
        let last_effective_at = last.map_or(Value::Null, |event| time(&event["effective_at"]));
        for event in &mut events {
            if let Some(at) = event.get_mut("effective_at") {
                *at = time(at);
            }
        }
        Ok(output(json!({
            "count": events.len(),
            "events": events,
            "last_id": last_id,
            "last_effective_at": last_effective_at,
        })))
    }
}

impl Action for AuditEvents {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }
}

// ---- openai.usage ----

/// `GET /organization/usage/completions` from `since` (to `until`), `group_by[]`, in buckets of
/// `bucket` (default `1d`), following `next_page`. The output `buckets` has one row per bucket
/// and group: `{start_time, end_time, <each group_by field>, num_model_requests, input_tokens,
/// output_tokens, …}`; a bucket with no usage has no row.
#[derive(Debug)]
struct Usage {
    client: Arc<OpenAi>,
}

impl Usage {
    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: UsageInput =
            parse_input(USAGE, &numbers_as_strings(input, &["since", "until"]))?;
        let start = unix_seconds("since", &input.since)?;
        let end = input
            .until
            .as_deref()
            .map(|until| unix_seconds("until", until))
            .transpose()?;
        if let Some(end) = end
            && end <= start
        {
            return Err(ActionError::permanent(format!(
                "`until` must be after `since` in `{USAGE}`"
            )));
        }
        if input.group_by.is_empty() {
            return Err(ActionError::permanent(format!(
                "`{USAGE}` needs at least one `group_by` field"
            )));
        }
        // The most buckets a page may hold for each width (spec: 1d ≤ 31, 1h ≤ 168, 1m ≤ 1440).
        let (width, limit) = match input.bucket.unwrap_or(Bucket::Day) {
            Bucket::Minute => ("1m", 1440),
            Bucket::Hour => ("1h", 168),
            Bucket::Day => ("1d", 31),
        };
        let groups: Vec<&'static str> = input
            .group_by
            .iter()
            .map(|group| group_name(*group))
            .collect();
        let mut request = self
            .client
            .request(
                Method::GET,
                &["organization", "usage", "completions"],
                "completions usage",
            )?
            .query("start_time", start)
            .query("bucket_width", width);
        if let Some(end) = end {
            request = request.query("end_time", end);
        }
        for group in &groups {
            request = request.query("group_by[]", group);
        }
        let buckets = self.client.walk(&request, Paging::Page, limit).await?;
        let rows: Vec<Value> = buckets
            .iter()
            .flat_map(|bucket| {
                let results = bucket["results"].as_array().cloned().unwrap_or_default();
                results
                    .into_iter()
                    .map(|result| usage_row(bucket, &result, &groups))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(output(json!({"buckets": rows})))
    }
}

fn group_name(group: UsageGroup) -> &'static str {
    match group {
        UsageGroup::ApiKeyId => "api_key_id",
        UsageGroup::ProjectId => "project_id",
        UsageGroup::UserId => "user_id",
        UsageGroup::Model => "model",
    }
}

/// The group keys OpenAI may put in a result; only the requested ones are kept.
const GROUP_FIELDS: [&str; 6] = [
    "project_id",
    "user_id",
    "api_key_id",
    "model",
    "batch",
    "service_tier",
];

fn usage_row(bucket: &Value, result: &Value, groups: &[&str]) -> Value {
    let mut row = Map::new();
    row.insert("start_time".into(), time(&bucket["start_time"]));
    row.insert("end_time".into(), time(&bucket["end_time"]));
    for group in groups {
        row.insert((*group).to_owned(), result[*group].clone());
    }
    if let Value::Object(fields) = result {
        for (field, value) in fields {
            if field != "object" && !GROUP_FIELDS.contains(&field.as_str()) {
                row.insert(field.clone(), value.clone());
            }
        }
    }
    Value::Object(row)
}

impl Action for Usage {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }
}
