//! `openai.rotate_service_account_key`: a service account's key replaced without cutting
//! traffic (`openai-admin-api-updates.md` §3). The new key is minted on the same service
//! account (`POST …/service_accounts/{id}/api_keys`, scopes and an expiry), its secret — which
//! OpenAI shows once — goes straight into a configured secret store, and only then is the old
//! key given a grace expiry (`POST …/api_keys/{id}` with `expires_in_seconds`, never lengthening
//! its life) or kept for a later step to delete.
//!
//! Minting is not idempotent. The new key's name ends with `[<idempotency key>]`, which the
//! engine journaled with the intent before the call, so an execution first lists the account's
//! keys for one it minted before:
//! - found, and the store's label names it: the rotation got that far; it goes on from there
//!   (`already_done` when nothing is left to change);
//! - found, but the store does not hold it (a crash or a lost answer between minting and
//!   delivering): its secret is gone for good — OpenAI never shows it again — so that key is
//!   deleted and a new one minted and delivered;
//! - none: mint.
//!
//! A delivery that fails deletes the key just minted before the error is returned, so an
//! undeliverable rotation leaves no key behind. The secret lives in a [`Secret`] between the
//! answer and the store's request body: it is in no output, error, log line or description.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use super::OpenAi;
use super::narrow::{check_scopes, key_update};
use super::reads::time;
use super::transport::{PAGE_LIMIT, Paging, Reply, Request, id, parse_input, redact};
use crate::actions::{self as inputs, OldKey};
use crate::config::Secret;
use crate::connectors::secret_store::{Label, Place, SecretStore, SecretStores};
use crate::engine::{Action, ActionError, ActionFuture, Actions, Call, Success};
use crate::playbook::parse_key_expiry;

const ROTATE: &str = "openai.rotate_service_account_key";

/// The old key's grace under `then: grace` when the step gives none.
const DEFAULT_GRACE: &str = "24h";

/// The new key's name when the step gives none.
const DEFAULT_NAME: &str = "quench rotation";

/// Adds `openai.rotate_service_account_key`, delivering to `stores`.
pub fn register(actions: &mut Actions, client: Arc<OpenAi>, stores: SecretStores) {
    actions.insert(ROTATE, Arc::new(Rotate { client, stores }));
}

#[derive(Debug)]
struct Rotate {
    client: Arc<OpenAi>,
    stores: SecretStores,
}

/// A rotation's checked input.
struct Plan<'a> {
    input: &'a inputs::RotateServiceAccountKey,
    project_id: &'a str,
    service_account_id: &'a str,
    key_id: &'a str,
    expires_in: u64,
    /// The old key's grace in seconds; `None` under `then: keep`.
    grace: Option<u64>,
    store: &'a SecretStore,
    place: Place<'a>,
}

impl Rotate {
    fn plan<'a>(
        &'a self,
        input: &'a inputs::RotateServiceAccountKey,
    ) -> Result<Plan<'a>, ActionError> {
        let project_id = id("project_id", &input.project_id)?;
        let service_account_id = id("service_account_id", &input.service_account_id)?;
        let key_id = id("key_id", &input.key_id)?;
        check_scopes(
            ROTATE,
            &format!("the new key of service account {service_account_id}"),
            &input.scopes,
            input.allow_widen,
        )?;
        let seconds = |field: &str, text: &str| {
            parse_key_expiry(text)
                .map_err(|problem| ActionError::permanent(format!("`{field}`: {problem}")))
        };
        let expires_in = seconds("expires_in", &input.expires_in)?;
        let grace = match input.then.unwrap_or_default() {
            OldKey::Grace => Some(seconds(
                "grace",
                input.grace.as_deref().unwrap_or(DEFAULT_GRACE),
            )?),
            OldKey::Keep => {
                if input.grace.is_some() {
                    return Err(ActionError::permanent(
                        "`grace` is the old key's remaining life under `then: grace`; with \
                         `then: keep` the old key is left as it is",
                    ));
                }
                None
            }
        };
        if let Some(name) = &input.name
            && (name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control))
        {
            return Err(ActionError::permanent(
                "`name` must be a non-empty line of at most 200 characters",
            ));
        }
        let store = self.stores.get(&input.secret.store)?;
        let place = Place {
            path: input.secret.path.trim(),
            field: input.secret.field.trim(),
        };
        store.check(place)?;
        Ok(Plan {
            input,
            project_id,
            service_account_id,
            key_id,
            expires_in,
            grace,
            store,
            place,
        })
    }

    fn old_key_request(&self, plan: &Plan<'_>) -> Result<Request, ActionError> {
        self.client.request(
            Method::GET,
            &[
                "organization",
                "projects",
                plan.project_id,
                "api_keys",
                plan.key_id,
            ],
            format!("API key {} in project {}", plan.key_id, plan.project_id),
        )
    }

    fn list_request(&self, plan: &Plan<'_>) -> Result<Request, ActionError> {
        Ok(self
            .client
            .request(
                Method::GET,
                &["organization", "projects", plan.project_id, "api_keys"],
                format!("API keys of project {}", plan.project_id),
            )?
            .query("owner_project_access", "any"))
    }

    fn mint_request(&self, plan: &Plan<'_>, name: &str) -> Result<Request, ActionError> {
        Ok(self
            .client
            .request(
                Method::POST,
                &[
                    "organization",
                    "projects",
                    plan.project_id,
                    "service_accounts",
                    plan.service_account_id,
                    "api_keys",
                ],
                format!(
                    "service account {} in project {}",
                    plan.service_account_id, plan.project_id
                ),
            )?
            .body(json!({
                "name": name,
                "scopes": plan.input.scopes,
                "expires_in_seconds": plan.expires_in,
            })))
    }

    fn delete_request(&self, plan: &Plan<'_>, key_id: &str) -> Result<Request, ActionError> {
        self.client.request(
            Method::DELETE,
            &[
                "organization",
                "projects",
                plan.project_id,
                "api_keys",
                key_id,
            ],
            format!("API key {key_id} in project {}", plan.project_id),
        )
    }

    async fn run(&self, call: &Call) -> Result<Success, ActionError> {
        let input: inputs::RotateServiceAccountKey = parse_input(ROTATE, &call.input)?;
        let plan = self.plan(&input)?;
        let old = self.client.json(&self.old_key_request(&plan)?).await?;
        let owner = &old["owner"];
        if owner["type"].as_str() != Some("service_account")
            || owner["service_account"]["id"].as_str() != Some(plan.service_account_id)
        {
            let whose = match owner["type"].as_str() {
                Some("service_account") => format!(
                    "service account {}",
                    owner["service_account"]["id"]
                        .as_str()
                        .unwrap_or("(unknown)")
                ),
                Some("user") => format!(
                    "user {} (a person's key cannot be minted again through the API: revoke it \
                     instead)",
                    owner["user"]["id"].as_str().unwrap_or("(unknown)")
                ),
                _ => "an owner OpenAI did not name".to_owned(),
            };
            return Err(redact(ActionError::permanent(format!(
                "API key {} in project {} belongs to {whose}, not to service account {}; \
                 nothing was minted",
                plan.key_id, plan.project_id, plan.service_account_id
            ))));
        }

        let marker = format!("[{}]", call.idempotency_key);
        let name = format!(
            "{} {marker}",
            input.name.as_deref().map_or(DEFAULT_NAME, str::trim)
        );
        let label = |key_id: &str| Label {
            run_id: call.run_id.clone(),
            step: call.step.clone(),
            idempotency_key: call.idempotency_key.clone(),
            key_id: key_id.to_owned(),
        };

        // A key this step minted before (a crash, a lost answer, a retry)?
        let keys = self
            .client
            .walk(&self.list_request(&plan)?, Paging::Cursor, PAGE_LIMIT)
            .await?;
        let mut delivered: Option<(Value, Value)> = None;
        for key in keys.iter().filter(|key| {
            key["owner"]["service_account"]["id"].as_str() == Some(plan.service_account_id)
                && key["name"]
                    .as_str()
                    .is_some_and(|name| name.ends_with(&marker))
        }) {
            let Some(minted_id) = key["id"].as_str() else {
                continue;
            };
            if delivered.is_none() && plan.store.holds(plan.place, minted_id).await? {
                delivered = Some((key.clone(), Value::Null));
            } else {
                tracing::info!(
                    run_id = %call.run_id, step = %call.step, key_id = %minted_id,
                    "a key minted by an earlier execution never reached the secret store; its \
                     secret cannot be shown again, so it is deleted and a new one minted"
                );
                self.delete(&plan, minted_id).await?;
            }
        }
        let already_done = delivered.is_some();
        let (new_key, version) = match delivered {
            Some(found) => found,
            None => self.mint_and_deliver(&plan, &name, &label).await?,
        };
        let new_id = new_key["id"].as_str().unwrap_or_default().to_owned();

        let old_expires_at = match plan.grace {
            Some(grace) => self.expire_old(&plan, &old, grace).await?,
            None => old["expires_at"].clone(),
        };
        Ok(Success {
            output: json!({
                "id": new_id,
                "project_id": plan.project_id,
                "service_account_id": plan.service_account_id,
                "name": new_key["name"],
                "redacted_value": new_key["redacted_value"],
                "expires_at": time(&new_key["expires_at"]),
                "scopes": input.scopes,
                "secret": {
                    "store": input.secret.store,
                    "path": plan.place.path,
                    "field": plan.place.field,
                    "version": version,
                },
                "old_key": {
                    "id": plan.key_id,
                    "then": match input.then.unwrap_or_default() {
                        OldKey::Grace => "grace",
                        OldKey::Keep => "keep",
                    },
                    "expires_at": time(&old_expires_at),
                },
            }),
            already_done,
        })
    }

    /// Mints the new key and writes its secret to the store; returns the key as OpenAI lists it
    /// (with `redacted_value`) and the store's version. A failed delivery deletes the new key.
    async fn mint_and_deliver(
        &self,
        plan: &Plan<'_>,
        name: &str,
        label: &(dyn Fn(&str) -> Label + Sync),
    ) -> Result<(Value, Value), ActionError> {
        let mut minted = self.client.json(&self.mint_request(plan, name)?).await?;
        let secret = match minted.get_mut("value").map(Value::take) {
            Some(Value::String(value)) if !value.is_empty() => Secret::new(value),
            _ => {
                return Err(ActionError::permanent(format!(
                    "OpenAI answered the mint on service account {} without the key's `value`",
                    plan.service_account_id
                )));
            }
        };
        let Some(new_id) = minted["id"].as_str().map(str::to_owned) else {
            return Err(ActionError::permanent(
                "OpenAI answered the mint without the new key's `id`",
            ));
        };
        let delivered = plan.store.put(plan.place, &secret, &label(&new_id)).await;
        drop(secret);
        let delivered = match delivered {
            Ok(delivered) => delivered,
            Err(error) => {
                // The secret is gone with this call: a key nobody can use must not stay.
                let cleanup = match self.delete(plan, &new_id).await {
                    Ok(()) => format!("the new key {new_id} was deleted again"),
                    Err(problem) => format!(
                        "deleting the new key {new_id} failed too ({problem}); a later execution \
                         deletes it"
                    ),
                };
                let message = format!("{error}; {cleanup}");
                return Err(redact(match error {
                    ActionError::Retryable { retry_after, .. } => ActionError::Retryable {
                        message,
                        retry_after,
                    },
                    ActionError::Permanent { .. } => ActionError::permanent(message),
                }));
            }
        };
        // The mint answer has no `redacted_value`: read the key as OpenAI lists it.
        let listed = self.client.request(
            Method::GET,
            &[
                "organization",
                "projects",
                plan.project_id,
                "api_keys",
                &new_id,
            ],
            format!("API key {new_id} in project {}", plan.project_id),
        )?;
        let key = match self.client.json(&listed).await {
            Ok(key) => key,
            Err(_) => {
                json!({"id": new_id, "name": minted["name"], "expires_at": minted["expires_at"]})
            }
        };
        Ok((key, delivered.version))
    }

    async fn delete(&self, plan: &Plan<'_>, key_id: &str) -> Result<(), ActionError> {
        match self
            .client
            .send(&self.delete_request(plan, key_id)?)
            .await?
        {
            Reply::Done(_) | Reply::Gone => Ok(()),
        }
    }

    /// Gives the old key `grace` seconds more, unless it expires sooner already (a rotation
    /// never lengthens the old key's life, and a repeated step does not push it back). Returns
    /// its `expires_at` afterwards.
    async fn expire_old(
        &self,
        plan: &Plan<'_>,
        old: &Value,
        grace: u64,
    ) -> Result<Value, ActionError> {
        let now = chrono::Utc::now().timestamp();
        let deadline = now.saturating_add(i64::try_from(grace).unwrap_or(i64::MAX));
        if let Some(expires_at) = old["expires_at"].as_i64()
            && expires_at <= deadline
        {
            return Ok(json!(expires_at));
        }
        let request = key_update(
            &self.client,
            plan.project_id,
            plan.key_id,
            json!({"expires_in_seconds": grace}),
        )?;
        let key = self
            .client
            .update_key(&request, plan.project_id, plan.key_id)
            .await?;
        Ok(key["expires_at"].clone())
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        let input: inputs::RotateServiceAccountKey = parse_input(ROTATE, input)?;
        let plan = self.plan(&input)?;
        let name = format!(
            "{} [<idempotency key>]",
            input.name.as_deref().map_or(DEFAULT_NAME, str::trim)
        );
        let mut requests = vec![
            self.old_key_request(&plan)?.describe(),
            self.list_request(&plan)?.describe(),
            self.mint_request(&plan, &name)?.describe(),
        ];
        if let Some(grace) = plan.grace {
            requests.push(
                key_update(
                    &self.client,
                    plan.project_id,
                    plan.key_id,
                    json!({"expires_in_seconds": grace}),
                )?
                .describe(),
            );
        }
        Ok(json!({
            "requests": requests,
            "secret_store": plan.store.describe(plan.place),
            "checks": "the old key must belong to the service account; a key this step minted \
                       before is reused when the store holds it, deleted and minted again when \
                       not; the old key's expiry is never lengthened",
        }))
    }
}

impl Action for Rotate {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(self.run(call))
    }

    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        Rotate::describe(self, input)
    }
}
