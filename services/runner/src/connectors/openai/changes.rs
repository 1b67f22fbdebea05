//! The `openai.*` actions that change something at OpenAI: delete keys and service accounts,
//! demote or remove project users, lower rate limits, archive projects. Each is idempotent: a
//! change already made (an object already gone, a role already set, a limit already that low,
//! a project already archived) is reported as `already_done` without sending it again.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::OpenAi;
use super::transport::{Failure, PAGE_LIMIT, Paging, Reply, Request, id, parse_input};
use crate::actions::{self as inputs, LimitProjectRate as LimitInput, ProjectRole};
use crate::engine::{Action, ActionError, ActionFuture, Actions, Call, Success};

const REVOKE_KEY: &str = "openai.revoke_key";
const DELETE_ADMIN_KEY: &str = "openai.delete_admin_key";
const DELETE_SERVICE_ACCOUNT: &str = "openai.delete_service_account";
const SET_PROJECT_USER_ROLE: &str = "openai.set_project_user_role";
const REMOVE_PROJECT_USER: &str = "openai.remove_project_user";
const LIMIT_PROJECT_RATE: &str = "openai.limit_project_rate";
const ARCHIVE_PROJECT: &str = "openai.archive_project";

pub(super) fn register(actions: &mut Actions, client: &Arc<OpenAi>) {
    let client = || client.clone();
    actions
        .insert(REVOKE_KEY, Arc::new(RevokeKey { client: client() }))
        .insert(
            DELETE_ADMIN_KEY,
            Arc::new(DeleteAdminKey { client: client() }),
        )
        .insert(
            DELETE_SERVICE_ACCOUNT,
            Arc::new(DeleteServiceAccount { client: client() }),
        )
        .insert(
            SET_PROJECT_USER_ROLE,
            Arc::new(SetProjectUserRole { client: client() }),
        )
        .insert(
            REMOVE_PROJECT_USER,
            Arc::new(RemoveProjectUser { client: client() }),
        )
        .insert(
            LIMIT_PROJECT_RATE,
            Arc::new(LimitProjectRate { client: client() }),
        )
        .insert(
            ARCHIVE_PROJECT,
            Arc::new(ArchiveProject { client: client() }),
        );
}

/// The output of a delete: `{id, deleted: true, already_done}`.
fn deleted(id: &str, already_done: bool) -> Success {
    Success {
        output: json!({"id": id, "deleted": true, "already_done": already_done}),
        already_done,
    }
}

// ---- openai.revoke_key ----

/// `DELETE /organization/projects/{project_id}/api_keys/{key_id}`.
#[derive(Debug)]
struct RevokeKey {
    client: Arc<OpenAi>,
}

impl RevokeKey {
    fn plan(&self, input: &inputs::RevokeKey) -> Result<Request, ActionError> {
        let project_id = id("project_id", &input.project_id)?;
        let key_id = id("key_id", &input.key_id)?;
        self.client.request(
            Method::DELETE,
            &["organization", "projects", project_id, "api_keys", key_id],
            format!("API key {key_id} in project {project_id}"),
        )
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::RevokeKey = parse_input(REVOKE_KEY, input)?;
        let request = self.plan(&input)?;
        match self.client.send(&request).await {
            Ok(Reply::Done(_)) => Ok(deleted(input.key_id.trim(), false)),
            Ok(Reply::Gone) => {
                self.client.confirm_project(&input.project_id).await?;
                Ok(deleted(input.key_id.trim(), true))
            }
            Err(failure) if failure.status == Some(StatusCode::BAD_REQUEST) => {
                Err(self.explain_refusal(&input, failure).await)
            }
            Err(failure) => Err(failure.into()),
        }
    }

    /// OpenAI refuses to delete a key owned by a service account (400). Look at the key's owner
    /// to say exactly what to do instead; any other 400 keeps OpenAI's own message.
    async fn explain_refusal(&self, input: &inputs::RevokeKey, refusal: Failure) -> ActionError {
        let project_id = input.project_id.trim();
        let key_id = input.key_id.trim();
        let key = match self.client.request(
            Method::GET,
            &["organization", "projects", project_id, "api_keys", key_id],
            format!("API key {key_id} in project {project_id}"),
        ) {
            Ok(request) => self.client.json(&request).await.ok(),
            Err(_) => None,
        };
        let owner = key.as_ref().map(|key| &key["owner"]);
        let owner_kind = owner.and_then(|owner| owner["type"].as_str());
        let ActionError::Permanent { message } = &refusal.error else {
            return refusal.error;
        };
        match owner_kind {
            Some("service_account") => {
                let account = owner.map_or(&Value::Null, |owner| &owner["service_account"]);
                let account_id = account["id"].as_str().unwrap_or("(unknown)");
                let name = account["name"]
                    .as_str()
                    .map(|name| format!(" ({name})"))
                    .unwrap_or_default();
                super::transport::redact(ActionError::permanent(format!(
                    "API key {key_id} in project {project_id} belongs to service account \
                     {account_id}{name}, and OpenAI does not delete a service account's key on \
                     its own. Use `openai.delete_service_account` with project_id {project_id} \
                     and service_account_id {account_id}: it deletes the service account and \
                     every key it owns. ({message})"
                )))
            }
            None if message.to_lowercase().contains("service account") => {
                ActionError::permanent(format!(
                    "{message}; a key owned by a service account can only be revoked by deleting \
                     the service account: use `openai.delete_service_account` with its \
                     service_account_id"
                ))
            }
            _ => refusal.error,
        }
    }
}

impl Action for RevokeKey {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        parse_input(REVOKE_KEY, input)
            .and_then(|input| self.plan(&input))
            .map(|request| request.describe())
    }
}

// ---- openai.delete_admin_key ----

/// `DELETE /organization/admin_api_keys/{key_id}`.
#[derive(Debug)]
struct DeleteAdminKey {
    client: Arc<OpenAi>,
}

impl DeleteAdminKey {
    fn plan(&self, input: &inputs::DeleteAdminKey) -> Result<Request, ActionError> {
        let key_id = id("key_id", &input.key_id)?;
        self.client.request(
            Method::DELETE,
            &["organization", "admin_api_keys", key_id],
            format!("admin API key {key_id}"),
        )
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::DeleteAdminKey = parse_input(DELETE_ADMIN_KEY, input)?;
        let request = self.plan(&input)?;
        match self.client.send(&request).await? {
            Reply::Done(_) => Ok(deleted(input.key_id.trim(), false)),
            Reply::Gone => {
                // A 404 also comes from a wrong base URL; listing admin keys proves it is right.
                let probe = self
                    .client
                    .request(
                        Method::GET,
                        &["organization", "admin_api_keys"],
                        "admin API keys",
                    )?
                    .query("limit", 1);
                self.client.json(&probe).await?;
                Ok(deleted(input.key_id.trim(), true))
            }
        }
    }
}

impl Action for DeleteAdminKey {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        parse_input(DELETE_ADMIN_KEY, input)
            .and_then(|input| self.plan(&input))
            .map(|request| request.describe())
    }
}

// ---- openai.delete_service_account ----

/// `DELETE /organization/projects/{project_id}/service_accounts/{service_account_id}`; OpenAI
/// deletes the account's keys with it.
#[derive(Debug)]
struct DeleteServiceAccount {
    client: Arc<OpenAi>,
}

impl DeleteServiceAccount {
    fn plan(&self, input: &inputs::DeleteServiceAccount) -> Result<Request, ActionError> {
        let project_id = id("project_id", &input.project_id)?;
        let account_id = id("service_account_id", &input.service_account_id)?;
        self.client.request(
            Method::DELETE,
            &[
                "organization",
                "projects",
                project_id,
                "service_accounts",
                account_id,
            ],
            format!("service account {account_id} in project {project_id}"),
        )
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::DeleteServiceAccount = parse_input(DELETE_SERVICE_ACCOUNT, input)?;
        let request = self.plan(&input)?;
        match self.client.send(&request).await? {
            Reply::Done(_) => Ok(deleted(input.service_account_id.trim(), false)),
            Reply::Gone => {
                self.client.confirm_project(&input.project_id).await?;
                Ok(deleted(input.service_account_id.trim(), true))
            }
        }
    }
}

impl Action for DeleteServiceAccount {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        parse_input(DELETE_SERVICE_ACCOUNT, input)
            .and_then(|input| self.plan(&input))
            .map(|request| request.describe())
    }
}

// ---- openai.set_project_user_role ----

/// `GET` then `POST /organization/projects/{project_id}/users/{user_id}` with `{role}`.
#[derive(Debug)]
struct SetProjectUserRole {
    client: Arc<OpenAi>,
}

impl SetProjectUserRole {
    fn user(
        &self,
        method: Method,
        input: &inputs::SetProjectUserRole,
    ) -> Result<Request, ActionError> {
        let project_id = id("project_id", &input.project_id)?;
        let user_id = id("user_id", &input.user_id)?;
        self.client.request(
            method,
            &["organization", "projects", project_id, "users", user_id],
            format!("user {user_id} in project {project_id}"),
        )
    }

    fn plan(&self, input: &inputs::SetProjectUserRole) -> Result<Request, ActionError> {
        Ok(self
            .user(Method::POST, input)?
            .body(json!({"role": role_name(input.role)})))
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::SetProjectUserRole = parse_input(SET_PROJECT_USER_ROLE, input)?;
        let wanted = role_name(input.role);
        let before = self.client.json(&self.user(Method::GET, &input)?).await?;
        let previous = before["role"].clone();
        let output = |after: &Value| {
            json!({
                "id": input.user_id.trim(),
                "role": after["role"].as_str().unwrap_or(wanted),
                "previous_role": previous,
                "email": before["email"],
                "name": before["name"],
            })
        };
        if previous.as_str() == Some(wanted) {
            return Ok(Success {
                output: output(&before),
                already_done: true,
            });
        }
        let after = self.client.json(&self.plan(&input)?).await?;
        Ok(Success::new(output(&after)))
    }
}

fn role_name(role: ProjectRole) -> &'static str {
    match role {
        ProjectRole::Owner => "owner",
        ProjectRole::Member => "member",
    }
}

impl Action for SetProjectUserRole {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        parse_input(SET_PROJECT_USER_ROLE, input)
            .and_then(|input| self.plan(&input))
            .map(|request| request.describe())
    }
}

// ---- openai.remove_project_user ----

/// `DELETE /organization/projects/{project_id}/users/{user_id}`.
#[derive(Debug)]
struct RemoveProjectUser {
    client: Arc<OpenAi>,
}

impl RemoveProjectUser {
    fn plan(&self, input: &inputs::RemoveProjectUser) -> Result<Request, ActionError> {
        let project_id = id("project_id", &input.project_id)?;
        let user_id = id("user_id", &input.user_id)?;
        self.client.request(
            Method::DELETE,
            &["organization", "projects", project_id, "users", user_id],
            format!("user {user_id} in project {project_id}"),
        )
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::RemoveProjectUser = parse_input(REMOVE_PROJECT_USER, input)?;
        let request = self.plan(&input)?;
        match self.client.send(&request).await? {
            Reply::Done(_) => Ok(deleted(input.user_id.trim(), false)),
            Reply::Gone => {
                self.client.confirm_project(&input.project_id).await?;
                Ok(deleted(input.user_id.trim(), true))
            }
        }
    }
}

impl Action for RemoveProjectUser {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        parse_input(REMOVE_PROJECT_USER, input)
            .and_then(|input| self.plan(&input))
            .map(|request| request.describe())
    }
}

// ---- openai.limit_project_rate ----

/// Lists the project's rate limits, finds the model's, and `POST`s the lowered values to
/// `/organization/projects/{project_id}/rate_limits/{rate_limit_id}`. Only lowers: a value above
/// the current limit is refused before anything changes, since a playbook that *raises* a
/// limit is not containing anything.
#[derive(Debug)]
struct LimitProjectRate {
    client: Arc<OpenAi>,
}

impl LimitProjectRate {
    fn list(&self, input: &LimitInput) -> Result<Request, ActionError> {
        let project_id = id("project_id", &input.project_id)?;
        self.client.request(
            Method::GET,
            &["organization", "projects", project_id, "rate_limits"],
            format!("rate limits of project {project_id}"),
        )
    }

    fn update(&self, input: &LimitInput, rate_limit_id: &str) -> Result<Request, ActionError> {
        let project_id = id("project_id", &input.project_id)?;
        self.client.request(
            Method::POST,
            &[
                "organization",
                "projects",
                project_id,
                "rate_limits",
                rate_limit_id,
            ],
            format!("rate limit {rate_limit_id} in project {project_id}"),
        )
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: LimitInput = parse_input(LIMIT_PROJECT_RATE, input)?;
        let wanted = requested_limits(&input)?;
        let model = input.model.trim();
        let limits = self
            .client
            .walk(&self.list(&input)?, Paging::Cursor, PAGE_LIMIT)
            .await?;
        let Some(current) = limits.iter().find(|limit| limit["model"] == model) else {
            let models: Vec<&str> = limits
                .iter()
                .filter_map(|limit| limit["model"].as_str())
                .take(20)
                .collect();
            return Err(ActionError::permanent(format!(
                "project {} has no rate limit for model `{model}`; models with limits: {}",
                input.project_id.trim(),
                if models.is_empty() {
                    "none".to_owned()
                } else {
                    models.join(", ")
                }
            )));
        };
        let rate_limit_id = current["id"].as_str().unwrap_or_default();
        let previous = limit_fields(current);
        let mut changes = Map::new();
        for (field, value) in &wanted {
            let Some(now) = current[*field].as_u64() else {
                return Err(ActionError::permanent(format!(
                    "model `{model}` in project {} has no `{field}` limit to lower",
                    input.project_id.trim()
                )));
            };
            if *value > now {
                return Err(ActionError::permanent(format!(
                    "refusing to raise `{field}` of model `{model}` in project {} from {now} to \
                     {value}: `{LIMIT_PROJECT_RATE}` only lowers limits (raise them in the \
                     OpenAI dashboard)",
                    input.project_id.trim()
                )));
            }
            if *value < now {
                changes.insert((*field).to_owned(), json!(value));
            }
        }
        let output = |limits: Value| {
            json!({
                "id": rate_limit_id,
                "project_id": input.project_id.trim(),
                "model": model,
                "previous": previous,
                "limits": limits,
            })
        };
        if changes.is_empty() {
            return Ok(Success {
                output: output(previous.clone()),
                already_done: true,
            });
        }
        let request = self
            .update(&input, rate_limit_id)?
            .body(Value::Object(changes));
        let after = self.client.json(&request).await?;
        Ok(Success::new(output(limit_fields(&after))))
    }
}

/// The `max_*` fields the input sets; at least one.
fn requested_limits(input: &LimitInput) -> Result<Vec<(&'static str, u64)>, ActionError> {
    let wanted: Vec<(&'static str, u64)> = [
        ("max_requests_per_1_minute", input.max_requests_per_1_minute),
        ("max_tokens_per_1_minute", input.max_tokens_per_1_minute),
        ("max_images_per_1_minute", input.max_images_per_1_minute),
        (
            "max_audio_megabytes_per_1_minute",
            input.max_audio_megabytes_per_1_minute,
        ),
        ("max_requests_per_1_day", input.max_requests_per_1_day),
        (
            "batch_1_day_max_input_tokens",
            input.batch_1_day_max_input_tokens,
        ),
    ]
    .into_iter()
    .filter_map(|(field, value)| Some((field, value?)))
    .collect();
    if wanted.is_empty() {
        return Err(ActionError::permanent(format!(
            "`{LIMIT_PROJECT_RATE}` needs at least one of {}",
            LimitInput::LIMITS.join(", ")
        )));
    }
    Ok(wanted)
}

/// The limit fields of a `ProjectRateLimit` object.
fn limit_fields(rate_limit: &Value) -> Value {
    Value::Object(
        LimitInput::LIMITS
            .iter()
            .filter_map(|field| Some(((*field).to_owned(), rate_limit.get(*field)?.clone())))
            .collect(),
    )
}

impl Action for LimitProjectRate {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    /// The update, with the rate limit id left open: it is found by model when the step runs.
    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        let input: LimitInput = parse_input(LIMIT_PROJECT_RATE, input)?;
        let wanted = requested_limits(&input)?;
        let list = self.list(&input)?;
        let body: Map<String, Value> = wanted
            .into_iter()
            .map(|(field, value)| (field.to_owned(), json!(value)))
            .collect();
        Ok(json!({
            "method": "POST",
            "path": format!("{}/{{rate_limit_id}}", list.path()),
            "body": body,
            "rate_limit_id": format!(
                "the id of model `{}`'s limit, from GET {}",
                input.model.trim(),
                list.path()
            ),
        }))
    }
}

// ---- openai.archive_project ----

/// `GET` then `POST /organization/projects/{project_id}/archive`. There is no unarchive.
#[derive(Debug)]
struct ArchiveProject {
    client: Arc<OpenAi>,
}

impl ArchiveProject {
    fn plan(&self, input: &inputs::ArchiveProject) -> Result<Request, ActionError> {
        let project_id = id("project_id", &input.project_id)?;
        self.client.request(
            Method::POST,
            &["organization", "projects", project_id, "archive"],
            format!("project {project_id}"),
        )
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::ArchiveProject = parse_input(ARCHIVE_PROJECT, input)?;
        let project = self.client.project(&input.project_id).await?;
        if project["status"] == "archived" {
            return Ok(Success {
                output: archived(&project),
                already_done: true,
            });
        }
        let project = self.client.json(&self.plan(&input)?).await?;
        Ok(Success::new(archived(&project)))
    }
}

fn archived(project: &Value) -> Value {
    json!({
        "id": project["id"],
        "status": project["status"],
        "archived_at": super::reads::time(&project["archived_at"]),
    })
}

impl Action for ArchiveProject {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        parse_input(ARCHIVE_PROJECT, input)
            .and_then(|input| self.plan(&input))
            .map(|request| request.describe())
    }
}

// ---- shared ----

impl OpenAi {
    /// `GET /organization/projects/{project_id}`; a 404 is a permanent error naming it.
    pub(super) async fn project(&self, project_id: &str) -> Result<Value, Failure> {
        let project_id = id("project_id", project_id)?;
        let request = self.request(
            Method::GET,
            &["organization", "projects", project_id],
            format!("project {project_id}"),
        )?;
        self.json(&request).await
    }

    /// After a DELETE answered 404: the object is gone only if the project exists. A wrong
    /// `project_id` (or base URL) would otherwise pass for a revoked key.
    async fn confirm_project(&self, project_id: &str) -> Result<(), Failure> {
        self.project(project_id)
            .await
            .map(|_| ())
            .map_err(|failure| {
                if failure.status == Some(StatusCode::NOT_FOUND) {
                    let ActionError::Permanent { message } = &failure.error else {
                        return failure;
                    };
                    Failure {
                        status: failure.status,
                        error: ActionError::permanent(format!(
                            "nothing was deleted: {message}; check `project_id`"
                        )),
                    }
                } else {
                    failure
                }
            })
    }
}
