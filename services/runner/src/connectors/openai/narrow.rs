//! The `openai.*` actions that narrow what a key or a project may do instead of breaking it: a
//! key's scopes and expiry (`POST …/api_keys/{api_key_id}`, `openai-admin-api-updates.md` §1),
//! and a project's model list, hosted tools and hard spend limit (the spec's
//! `…/model_permissions`, `…/hosted_tool_permissions`, `…/spend_limit`).
//!
//! None of them widens unless the step says `allow_widen: true` (and `quench validate` warns
//! when one does): a playbook that grants more is not containing anything. A key's scopes cannot
//! be read back, so the one widening quench can see there is `scopes: []` (every permission); a
//! project's settings can, so those actions read the current one first, report a setting already
//! in place as `already_done`, refuse one that would allow more, and name what was there before
//! in `previous`. OpenAI refuses to update an expired key; that answer becomes the permanent
//! error `key_expired: …`, which a playbook can test for.

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::OpenAi;
use super::reads::time;
use super::transport::{Failure, Request, id, parse_input, redact};
use crate::actions::{self as inputs, ModelPermissionsMode};
use crate::engine::{Action, ActionError, ActionFuture, Actions, Call, Success};

const SET_KEY_SCOPES: &str = "openai.set_key_scopes";
const SET_KEY_EXPIRY: &str = "openai.set_key_expiry";
const SET_MODEL_PERMISSIONS: &str = "openai.set_model_permissions";
const SET_HOSTED_TOOLS: &str = "openai.set_hosted_tools";
const SET_SPEND_LIMIT: &str = "openai.set_spend_limit";

/// How the error of a key update refused because the key has expired starts, so a playbook can
/// tell it from other failures (`steps.<id>.error is startingwith("key_expired")`).
pub const KEY_EXPIRED: &str = "key_expired";

pub(super) fn register(actions: &mut Actions, client: &Arc<OpenAi>) {
    let client = || client.clone();
    actions
        .insert(SET_KEY_SCOPES, Arc::new(SetKeyScopes { client: client() }))
        .insert(SET_KEY_EXPIRY, Arc::new(SetKeyExpiry { client: client() }))
        .insert(
            SET_MODEL_PERMISSIONS,
            Arc::new(SetModelPermissions { client: client() }),
        )
        .insert(
            SET_HOSTED_TOOLS,
            Arc::new(SetHostedTools { client: client() }),
        )
        .insert(
            SET_SPEND_LIMIT,
            Arc::new(SetSpendLimit { client: client() }),
        );
}

/// The refusal of a change that would widen, naming what it would allow.
fn widening(action: &str, what: String) -> ActionError {
    redact(ActionError::permanent(format!(
        "refusing `{action}`: {what}, which widens instead of narrowing; set `allow_widen: true` \
         on the step if that is intended"
    )))
}

// ---- a key's scopes and expiry ----

/// `POST /organization/projects/{project_id}/api_keys/{api_key_id}` with `body`.
pub(super) fn key_update(
    client: &OpenAi,
    project_id: &str,
    key_id: &str,
    body: Value,
) -> Result<Request, ActionError> {
    let project_id = id("project_id", project_id)?;
    let key_id = id("key_id", key_id)?;
    Ok(client
        .request(
            Method::POST,
            &["organization", "projects", project_id, "api_keys", key_id],
            format!("API key {key_id} in project {project_id}"),
        )?
        .body(body))
}

/// What a key update gives a playbook, from the `ProjectApiKey` OpenAI answered with.
fn key_output(project_id: &str, key: &Value) -> Map<String, Value> {
    let mut output = Map::new();
    output.insert("id".into(), key["id"].clone());
    output.insert("project_id".into(), json!(project_id.trim()));
    output.insert("expires_at".into(), time(&key["expires_at"]));
    output.insert(
        "owner_project_access".into(),
        key["owner_project_access"].clone(),
    );
    output
}

impl OpenAi {
    /// Sends a key update. A refusal (4xx that is not about the admin key) is looked into: when
    /// OpenAI says the key expired, or the key shows an `expires_at` already past, the error is
    /// the permanent `key_expired: …`; any other refusal keeps OpenAI's message.
    pub(super) async fn update_key(
        &self,
        request: &Request,
        project_id: &str,
        key_id: &str,
    ) -> Result<Value, ActionError> {
        let refusal = match self.json(request).await {
            Ok(key) => return Ok(key),
            Err(failure) if is_refusal(&failure) => failure,
            Err(failure) => return Err(failure.into()),
        };
        let ActionError::Permanent { message } = &refusal.error else {
            return Err(refusal.error);
        };
        let project_id = project_id.trim();
        let key_id = key_id.trim();
        let said_expired = message.to_lowercase().contains("expired");
        let expires_at = self
            .request(
                Method::GET,
                &["organization", "projects", project_id, "api_keys", key_id],
                format!("API key {key_id} in project {project_id}"),
            )
            .ok();
        let expires_at = match expires_at {
            Some(get) => self
                .json(&get)
                .await
                .ok()
                .and_then(|key| key["expires_at"].as_i64()),
            None => None,
        };
        let past = expires_at.filter(|at| *at <= chrono::Utc::now().timestamp());
        if !said_expired && past.is_none() {
            return Err(refusal.error);
        }
        let when = past
            .map(|at| format!(" (at {})", time(&json!(at)).as_str().unwrap_or_default()))
            .unwrap_or_default();
        Err(redact(ActionError::permanent(format!(
            "{KEY_EXPIRED}: API key {key_id} in project {project_id} has expired{when}, and \
             OpenAI does not change an expired key: it can no longer be used, narrowed or \
             renewed ({message})"
        ))))
    }
}

/// A 4xx answer that is about the request, not the admin key or the rate limit.
fn is_refusal(failure: &Failure) -> bool {
    failure.status.is_some_and(|status| {
        status.is_client_error()
            && !failure.error.is_retryable()
            && status != StatusCode::UNAUTHORIZED
            && status != StatusCode::FORBIDDEN
    })
}

/// Checks a key's scopes: each identifier's shape, none twice, and `[]` (no restrictions: all
/// permissions of `key`'s owner) only with `allow_widen`.
pub(super) fn check_scopes(
    action: &str,
    key: &str,
    scopes: &[String],
    allow_widen: bool,
) -> Result<(), ActionError> {
    let mut seen = BTreeSet::new();
    for scope in scopes {
        inputs::SetKeyScopes::check_scope(scope).map_err(ActionError::permanent)?;
        if !seen.insert(scope.as_str()) {
            return Err(ActionError::permanent(format!(
                "scope `{scope}` is listed twice"
            )));
        }
    }
    if scopes.is_empty() && !allow_widen {
        return Err(widening(
            action,
            format!("`scopes: []` removes every restriction from {key} (all permissions)"),
        ));
    }
    Ok(())
}

// ---- openai.set_key_scopes ----

/// `POST …/api_keys/{api_key_id}` with `{scopes}`, which replaces the key's restrictions.
#[derive(Debug)]
struct SetKeyScopes {
    client: Arc<OpenAi>,
}

impl SetKeyScopes {
    /// Checks every scope and refuses `[]` (all permissions) without `allow_widen`.
    fn plan(&self, input: &inputs::SetKeyScopes) -> Result<Request, ActionError> {
        let key_id = id("key_id", &input.key_id)?;
        check_scopes(
            SET_KEY_SCOPES,
            &format!("API key {key_id}"),
            &input.scopes,
            input.allow_widen,
        )?;
        key_update(
            &self.client,
            &input.project_id,
            &input.key_id,
            json!({"scopes": input.scopes}),
        )
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::SetKeyScopes = parse_input(SET_KEY_SCOPES, input)?;
        let request = self.plan(&input)?;
        let key = self
            .client
            .update_key(&request, &input.project_id, &input.key_id)
            .await?;
        let mut output = key_output(&input.project_id, &key);
        // OpenAI does not return scopes; these are the ones it accepted.
        output.insert("scopes".into(), json!(input.scopes));
        Ok(Success::new(Value::Object(output)))
    }
}

impl Action for SetKeyScopes {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        parse_input(SET_KEY_SCOPES, input)
            .and_then(|input| self.plan(&input))
            .map(|request| request.describe())
    }
}

// ---- openai.set_key_expiry ----

/// `POST …/api_keys/{api_key_id}` with `{expires_in_seconds}`, counted from the request.
#[derive(Debug)]
struct SetKeyExpiry {
    client: Arc<OpenAi>,
}

impl SetKeyExpiry {
    fn plan(&self, input: &inputs::SetKeyExpiry) -> Result<Request, ActionError> {
        let seconds = crate::playbook::parse_key_expiry(&input.expires_in)
            .map_err(|problem| ActionError::permanent(format!("`expires_in`: {problem}")))?;
        key_update(
            &self.client,
            &input.project_id,
            &input.key_id,
            json!({"expires_in_seconds": seconds}),
        )
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::SetKeyExpiry = parse_input(SET_KEY_EXPIRY, input)?;
        let request = self.plan(&input)?;
        let key = self
            .client
            .update_key(&request, &input.project_id, &input.key_id)
            .await?;
        Ok(Success::new(Value::Object(key_output(
            &input.project_id,
            &key,
        ))))
    }
}

impl Action for SetKeyExpiry {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        parse_input(SET_KEY_EXPIRY, input)
            .and_then(|input| self.plan(&input))
            .map(|request| request.describe())
    }
}

// ---- project-wide settings ----

/// A project setting's path, `/organization/projects/{project_id}/{setting}`.
fn setting(
    client: &OpenAi,
    method: Method,
    project_id: &str,
    setting: &str,
    about: &str,
) -> Result<Request, ActionError> {
    let project_id = id("project_id", project_id)?;
    client.request(
        method,
        &["organization", "projects", project_id, setting],
        format!("{about} of project {project_id}"),
    )
}

/// A dry run's description of a change made only after reading the current setting.
fn describe_checked(update: &Request, read: &Request, what: &str) -> Value {
    let mut described = update.describe();
    described["checks"] = json!(format!(
        "GET {} first: {what} already in place is already_done, and a change that allows more \
         is refused without allow_widen",
        read.path()
    ));
    described
}

// ---- openai.set_model_permissions ----

/// `GET` then `POST …/model_permissions` with `{mode, model_ids}`.
#[derive(Debug)]
struct SetModelPermissions {
    client: Arc<OpenAi>,
}

const MODEL_PERMISSIONS: &str = "model_permissions";

impl SetModelPermissions {
    fn request(&self, method: Method, project_id: &str) -> Result<Request, ActionError> {
        setting(
            &self.client,
            method,
            project_id,
            MODEL_PERMISSIONS,
            "model permissions",
        )
    }

    fn plan(&self, input: &inputs::SetModelPermissions) -> Result<Request, ActionError> {
        for model in &input.model_ids {
            if model.trim().is_empty() || model.trim() != model {
                return Err(ActionError::permanent(format!(
                    "`model_ids` has `{}`, which is not a model id",
                    model.escape_debug()
                )));
            }
        }
        Ok(self
            .request(Method::POST, &input.project_id)?
            .body(json!({"mode": mode_name(input.mode), "model_ids": input.model_ids})))
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::SetModelPermissions = parse_input(SET_MODEL_PERMISSIONS, input)?;
        let update = self.plan(&input)?;
        let current = self
            .client
            .json(&self.request(Method::GET, &input.project_id)?)
            .await?;
        let previous = json!({"mode": current["mode"], "model_ids": current["model_ids"]});
        let before = Policy::of(&current).ok_or_else(|| {
            ActionError::permanent(format!(
                "OpenAI answered GET {} with no `mode` and `model_ids`: {current}",
                update.path()
            ))
        })?;
        let wanted = Policy {
            allow: input.mode == ModelPermissionsMode::AllowList,
            models: input.model_ids.iter().map(String::as_str).collect(),
        };
        let output = |after: &Value| {
            json!({
                "project_id": input.project_id.trim(),
                "mode": after["mode"],
                "model_ids": after["model_ids"],
                "previous": previous,
            })
        };
        if before == wanted {
            return Ok(Success {
                output: output(&current),
                already_done: true,
            });
        }
        if !input.allow_widen
            && let Some(what) = before.widened_by(&wanted)
        {
            return Err(widening(SET_MODEL_PERMISSIONS, what));
        }
        let after = self.client.json(&update).await?;
        Ok(Success::new(output(&after)))
    }
}

fn mode_name(mode: ModelPermissionsMode) -> &'static str {
    match mode {
        ModelPermissionsMode::AllowList => "allow_list",
        ModelPermissionsMode::DenyList => "deny_list",
    }
}

/// A model policy: only `models` (an allow list) or every model but `models` (a deny list).
#[derive(Debug, PartialEq, Eq)]
struct Policy<'a> {
    allow: bool,
    models: BTreeSet<&'a str>,
}

impl<'a> Policy<'a> {
    fn of(object: &'a Value) -> Option<Policy<'a>> {
        let allow = match object["mode"].as_str()? {
            "allow_list" => true,
            "deny_list" => false,
            _ => return None,
        };
        let models = object["model_ids"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        Some(Policy { allow, models })
    }

    /// What `wanted` allows that this policy does not, if anything.
    fn widened_by(&self, wanted: &Policy<'_>) -> Option<String> {
        let list = |models: Vec<&&str>| {
            models
                .iter()
                .map(|model| format!("`{model}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.allow, wanted.allow) {
            // Only A → only B: the models of B not in A.
            (true, true) => {
                let added: Vec<&&str> = wanted.models.difference(&self.models).collect();
                (!added.is_empty()).then(|| {
                    format!(
                        "it allows {}, which the current allow list does not",
                        list(added)
                    )
                })
            }
            // All but D → all but E: the models of D no longer denied.
            (false, false) => {
                let freed: Vec<&&str> = self.models.difference(&wanted.models).collect();
                (!freed.is_empty()).then(|| {
                    format!(
                        "it allows {}, which the current deny list blocks",
                        list(freed)
                    )
                })
            }
            // All but D → only B: the models of B in D.
            (false, true) => {
                let freed: Vec<&&str> = wanted.models.intersection(&self.models).collect();
                (!freed.is_empty()).then(|| {
                    format!(
                        "it allows {}, which the current deny list blocks",
                        list(freed)
                    )
                })
            }
            // Only A → all but E: every model not in E, where only A was allowed.
            (true, false) => Some(format!(
                "a deny list allows every model it does not name, where the current allow list \
                 allows only {}",
                if self.models.is_empty() {
                    "none".to_owned()
                } else {
                    list(self.models.iter().collect())
                }
            )),
        }
    }
}

impl Action for SetModelPermissions {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        let input: inputs::SetModelPermissions = parse_input(SET_MODEL_PERMISSIONS, input)?;
        let update = self.plan(&input)?;
        let read = self.request(Method::GET, &input.project_id)?;
        Ok(describe_checked(&update, &read, "the same policy"))
    }
}

// ---- openai.set_hosted_tools ----

/// `GET` then `POST …/hosted_tool_permissions` with `{<tool>: {enabled}}` for each tool that
/// changes.
#[derive(Debug)]
struct SetHostedTools {
    client: Arc<OpenAi>,
}

const HOSTED_TOOLS: &str = "hosted_tool_permissions";

impl SetHostedTools {
    fn request(&self, method: Method, project_id: &str) -> Result<Request, ActionError> {
        setting(
            &self.client,
            method,
            project_id,
            HOSTED_TOOLS,
            "hosted tools",
        )
    }

    /// The tools asked for; at least one.
    fn requested(input: &inputs::SetHostedTools) -> Result<Vec<(&'static str, bool)>, ActionError> {
        let requested = input.requested();
        if requested.is_empty() {
            return Err(ActionError::permanent(format!(
                "`{SET_HOSTED_TOOLS}` needs at least one of {}",
                inputs::SetHostedTools::TOOLS.join(", ")
            )));
        }
        Ok(requested)
    }

    /// The update of `tools`.
    fn update(&self, project_id: &str, tools: &[(&str, bool)]) -> Result<Request, ActionError> {
        let body: Map<String, Value> = tools
            .iter()
            .map(|(tool, enabled)| ((*tool).to_owned(), json!({"enabled": enabled})))
            .collect();
        Ok(self
            .request(Method::POST, project_id)?
            .body(Value::Object(body)))
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::SetHostedTools = parse_input(SET_HOSTED_TOOLS, input)?;
        let requested = Self::requested(&input)?;
        let current = self
            .client
            .json(&self.request(Method::GET, &input.project_id)?)
            .await?;
        let previous = tool_states(&current);
        let changes: Vec<(&str, bool)> = requested
            .into_iter()
            .filter(|(tool, enabled)| previous.get(*tool) != Some(&json!(enabled)))
            .collect();
        let output = |after: Value| {
            json!({
                "project_id": input.project_id.trim(),
                "tools": after,
                "previous": previous,
            })
        };
        if changes.is_empty() {
            return Ok(Success {
                output: output(Value::Object(previous.clone())),
                already_done: true,
            });
        }
        let enabled: Vec<String> = changes
            .iter()
            .filter(|(_, enabled)| *enabled)
            .map(|(tool, _)| format!("`{tool}`"))
            .collect();
        if !input.allow_widen && !enabled.is_empty() {
            return Err(widening(
                SET_HOSTED_TOOLS,
                format!(
                    "it turns on {} in project {}",
                    enabled.join(", "),
                    input.project_id.trim()
                ),
            ));
        }
        let after = self
            .client
            .json(&self.update(&input.project_id, &changes)?)
            .await?;
        Ok(Success::new(output(Value::Object(tool_states(&after)))))
    }
}

/// `{<tool>: enabled}` from a `ProjectHostedToolPermissions` object (`{<tool>: {enabled}}`).
fn tool_states(object: &Value) -> Map<String, Value> {
    inputs::SetHostedTools::TOOLS
        .iter()
        .filter_map(|tool| {
            Some((
                (*tool).to_owned(),
                object.get(*tool)?.get("enabled")?.clone(),
            ))
        })
        .collect()
}

impl Action for SetHostedTools {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    /// The update of every tool asked for; the step sends only those that change.
    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        let input: inputs::SetHostedTools = parse_input(SET_HOSTED_TOOLS, input)?;
        let update = self.update(&input.project_id, &Self::requested(&input)?)?;
        let read = self.request(Method::GET, &input.project_id)?;
        Ok(describe_checked(&update, &read, "a tool already so"))
    }
}

// ---- openai.set_spend_limit ----

/// `GET` then `POST …/spend_limit` with `{threshold_amount, currency: USD, interval: month}`.
#[derive(Debug)]
struct SetSpendLimit {
    client: Arc<OpenAi>,
}

const SPEND_LIMIT: &str = "spend_limit";

impl SetSpendLimit {
    fn request(&self, method: Method, project_id: &str) -> Result<Request, ActionError> {
        setting(
            &self.client,
            method,
            project_id,
            SPEND_LIMIT,
            "hard spend limit",
        )
    }

    fn plan(&self, input: &inputs::SetSpendLimit) -> Result<Request, ActionError> {
        if input.threshold_amount == 0 {
            return Err(ActionError::permanent(
                "`threshold_amount` must be at least 1 (cent)",
            ));
        }
        Ok(self.request(Method::POST, &input.project_id)?.body(json!({
            "threshold_amount": input.threshold_amount,
            "currency": "USD",
            "interval": "month",
        })))
    }

    /// The current limit (`ProjectSpendLimitResource`); `None` when the project has none (a
    /// 404 from a project that exists).
    async fn current(&self, project_id: &str) -> Result<Option<Value>, ActionError> {
        match self
            .client
            .json(&self.request(Method::GET, project_id)?)
            .await
        {
            Ok(limit) => Ok(Some(limit).filter(|limit| limit["threshold_amount"].is_u64())),
            Err(failure) if failure.status == Some(StatusCode::NOT_FOUND) => {
                self.client.project(project_id).await?;
                Ok(None)
            }
            Err(failure) => Err(failure.into()),
        }
    }

    async fn run(&self, input: &Value) -> Result<Success, ActionError> {
        let input: inputs::SetSpendLimit = parse_input(SET_SPEND_LIMIT, input)?;
        let update = self.plan(&input)?;
        let current = self.current(&input.project_id).await?;
        let previous = current
            .as_ref()
            .and_then(|limit| limit["threshold_amount"].as_u64());
        let output = |after: &Value| {
            json!({
                "project_id": input.project_id.trim(),
                "threshold_amount": after["threshold_amount"],
                "currency": after["currency"],
                "interval": after["interval"],
                "enforcement": after["enforcement"]["status"],
                "previous": previous,
            })
        };
        let wanted = input.threshold_amount;
        if let Some(current) = current.as_ref().filter(|_| previous == Some(wanted)) {
            return Ok(Success {
                output: output(current),
                already_done: true,
            });
        }
        if !input.allow_widen
            && let Some(previous) = previous.filter(|previous| wanted > *previous)
        {
            return Err(widening(
                SET_SPEND_LIMIT,
                format!(
                    "it raises the hard spend limit of project {} from {previous} to {wanted} \
                     cents a month",
                    input.project_id.trim()
                ),
            ));
        }
        let after = self.client.json(&update).await?;
        Ok(Success::new(output(&after)))
    }
}

impl Action for SetSpendLimit {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(&call.input))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        let input: inputs::SetSpendLimit = parse_input(SET_SPEND_LIMIT, input)?;
        let update = self.plan(&input)?;
        let read = self.request(Method::GET, &input.project_id)?;
        Ok(describe_checked(&update, &read, "the same limit"))
    }
}
