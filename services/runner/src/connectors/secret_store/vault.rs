//! HashiCorp Vault's KV version 2 secrets engine over its HTTP API: authenticate with a token
//! (`X-Vault-Token`) or AppRole (`POST /v1/auth/<mount>/login`), write one field of a secret as
//! a new version with check-and-set, and name the run and the OpenAI key in the secret's
//! `custom_metadata`.
//!
//! A write replaces a version's whole `data`, so the fields already there are read first and
//! written back beside the new one, with `options.cas` set to the version read: a write that
//! raced another is refused by Vault (400, "check-and-set parameter did not match the current
//! version") and done again from a fresh read, never lost. The label goes in after the data
//! (`PATCH …/metadata/<path>`, a JSON merge patch that keeps other custom metadata): a crash
//! between the two leaves a secret whose label does not name the new key, which a re-executed
//! rotation treats as not delivered (it mints again) — the safe side of the two possible errors.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use url::Url;

use super::{Credential, Delivered, Label, Place, exchange, refusal};
use crate::config::{Secret, VaultAuth, VaultStore};
use crate::engine::ActionError;
use quench_common::http::{check_base_url, http_client};

/// How often a write is read and tried again after losing a check-and-set race.
const CAS_ATTEMPTS: usize = 3;

/// A token from an AppRole login is used for this share of its lease, then renewed by logging in.
const LEASE_SHARE: f64 = 0.8;

/// One Vault KV v2 mount.
pub struct Vault {
    name: String,
    address: Url,
    mount: Vec<String>,
    auth: Auth,
    http: reqwest::Client,
}

enum Auth {
    Token(Credential),
    AppRole {
        mount: Vec<String>,
        role_id: String,
        secret_id: Credential,
        /// The client token of the last login and when to log in again.
        token: tokio::sync::Mutex<Option<(Secret, Option<Instant>)>>,
    },
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("name", &self.name)
            .field("address", &self.address.as_str())
            .field("mount", &self.mount.join("/"))
            .field(
                "auth",
                &match self.auth {
                    Auth::Token(_) => "token",
                    Auth::AppRole { .. } => "approle",
                },
            )
            .finish_non_exhaustive()
    }
}

/// An answer from Vault: the status, headers and JSON body (`Null` when empty or not JSON).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// Vault's `{"errors": [...]}`, joined.
    fn errors(&self) -> String {
        let errors: Vec<&str> = self.body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if errors.is_empty() {
            self.status
                .canonical_reason()
                .unwrap_or("no message")
                .to_owned()
        } else {
            errors.join("; ")
        }
    }
}

impl Vault {
    pub fn new(name: &str, config: &VaultStore) -> Result<Vault, String> {
        let key = format!("secret_stores.{name}");
        let address = check_base_url(config.address.trim())
            .map_err(|problem| format!("`{key}.address` {problem}"))?;
        let segments = |text: &str| text.split('/').map(str::to_owned).collect::<Vec<_>>();
        let auth = match config.auth {
            VaultAuth::Token => Auth::Token(Credential::of(
                &format!("{key}.token"),
                config.token.as_ref(),
                config.token_file.as_ref(),
            )?),
            VaultAuth::Approle => Auth::AppRole {
                mount: segments(&config.approle_mount),
                role_id: config
                    .role_id
                    .clone()
                    .ok_or_else(|| format!("`{key}.role_id` is needed for AppRole"))?,
                secret_id: Credential::of(
                    &format!("{key}.secret_id"),
                    config.secret_id.as_ref(),
                    config.secret_id_file.as_ref(),
                )?,
                token: tokio::sync::Mutex::new(None),
            },
        };
        Ok(Vault {
            name: name.to_owned(),
            address,
            mount: segments(&config.mount),
            auth,
            http: http_client(),
        })
    }

    /// `/v1/<mount>/<kind>/<path>`.
    fn url(&self, kind: &str, path: &str) -> Result<Url, ActionError> {
        let mut segments: Vec<&str> = vec!["v1"];
        segments.extend(self.mount.iter().map(String::as_str));
        segments.push(kind);
        segments.extend(path.split('/'));
        self.url_of(&segments)
    }

    fn url_of(&self, segments: &[&str]) -> Result<Url, ActionError> {
        let mut url = self.address.clone();
        url.path_segments_mut()
            .map_err(|()| ActionError::permanent("the Vault address cannot take a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    pub(super) fn check(&self, place: Place<'_>) -> Result<(), ActionError> {
        let path_ok = !place.path.is_empty()
            && place.path.len() <= 512
            && place.path.split('/').all(|segment| {
                !segment.is_empty()
                    && !matches!(segment, "." | "..")
                    && !segment.chars().any(char::is_control)
            });
        if !path_ok {
            return Err(ActionError::permanent(format!(
                "`secret.path` `{}` is not a Vault secret path (`/`-separated names, e.g. \
                 `apps/payments/openai`)",
                quench_proto::redact_str(place.path).escape_debug()
            )));
        }
        if place.field.is_empty()
            || place.field.len() > 256
            || place.field.chars().any(char::is_control)
        {
            return Err(ActionError::permanent(format!(
                "`secret.field` `{}` is not a field name",
                quench_proto::redact_str(place.field).escape_debug()
            )));
        }
        Ok(())
    }

    pub(super) fn describe(&self, place: Place<'_>) -> Value {
        let path = |kind: &str| {
            self.url(kind, place.path)
                .map(|url| url.path().to_owned())
                .unwrap_or_default()
        };
        json!({
            "store": self.name,
            "type": "vault",
            "field": place.field,
            "requests": [
                format!("GET {}", path("data")),
                format!("POST {} (the field added to the fields read, options.cas = the version read)", path("data")),
                format!("PATCH {} (custom_metadata naming the run and the new key)", path("metadata")),
            ],
        })
    }

    pub(super) async fn put(
        &self,
        place: Place<'_>,
        value: &Secret,
        label: &Label,
    ) -> Result<Delivered, ActionError> {
        self.check(place)?;
        let data_url = self.url("data", place.path)?;
        let target = format!("POST {}", data_url.path());
        let mut version = None;
        for _ in 0..CAS_ATTEMPTS {
            let read = self.send(Method::GET, &data_url, None, None).await?;
            let (mut fields, cas) = match read.status.as_u16() {
                200 => (
                    read.body["data"]["data"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    read.body["data"]["metadata"]["version"]
                        .as_u64()
                        .unwrap_or(0),
                ),
                // Absent, or its current version deleted (the body still names that version).
                404 => (
                    Map::new(),
                    read.body["data"]["metadata"]["version"]
                        .as_u64()
                        .unwrap_or(0),
                ),
                _ => {
                    return Err(refusal(
                        &self.name,
                        &format!("GET {}", data_url.path()),
                        read.status,
                        &read.headers,
                        &read.errors(),
                    ));
                }
            };
            fields.insert(place.field.to_owned(), json!(value.expose()));
            let body = json!({"options": {"cas": cas}, "data": fields});
            let written = self.send(Method::POST, &data_url, Some(body), None).await?;
            match written.status.as_u16() {
                200 | 204 => {
                    version = Some(written.body["data"]["version"].as_u64().unwrap_or(cas + 1));
                    break;
                }
                400 if written.errors().contains("check-and-set") => {
                    tracing::debug!(store = %self.name, cas, "lost a check-and-set race; reading again");
                }
                _ => {
                    return Err(refusal(
                        &self.name,
                        &target,
                        written.status,
                        &written.headers,
                        &written.errors(),
                    ));
                }
            }
        }
        let Some(version) = version else {
            return Err(ActionError::retryable(format!(
                "secret store `{}`: {target} lost the check-and-set race {CAS_ATTEMPTS} times \
                 (something else keeps writing this secret)",
                self.name
            )));
        };
        let metadata_url = self.url("metadata", place.path)?;
        let mut custom = Map::new();
        for (name, value) in label.entries() {
            custom.insert(format!("quench_{name}"), json!(value));
        }
        custom.insert("quench_version".into(), json!(version.to_string()));
        let patched = self
            .send(
                Method::PATCH,
                &metadata_url,
                Some(json!({"custom_metadata": custom})),
                Some("application/merge-patch+json"),
            )
            .await?;
        if !patched.status.is_success() {
            return Err(refusal(
                &self.name,
                &format!("PATCH {}", metadata_url.path()),
                patched.status,
                &patched.headers,
                &patched.errors(),
            ));
        }
        Ok(Delivered {
            version: json!(version),
        })
    }

    pub(super) async fn holds(&self, place: Place<'_>, key_id: &str) -> Result<bool, ActionError> {
        self.check(place)?;
        let url = self.url("metadata", place.path)?;
        let answer = self.send(Method::GET, &url, None, None).await?;
        match answer.status.as_u16() {
            200 => Ok(
                answer.body["data"]["custom_metadata"]["quench_openai_key_id"].as_str()
                    == Some(key_id),
            ),
            404 => Ok(false),
            _ => Err(refusal(
                &self.name,
                &format!("GET {}", url.path()),
                answer.status,
                &answer.headers,
                &answer.errors(),
            )),
        }
    }

    /// Sends one request with the token; an AppRole token Vault no longer accepts (403) is
    /// renewed by logging in again, once.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<Value>,
        content_type: Option<&'static str>,
    ) -> Result<Answer, ActionError> {
        let mut answer = self
            .send_with(method.clone(), url, body.as_ref(), content_type, false)
            .await?;
        if answer.status == StatusCode::FORBIDDEN && matches!(self.auth, Auth::AppRole { .. }) {
            answer = self
                .send_with(method, url, body.as_ref(), content_type, true)
                .await?;
        }
        Ok(answer)
    }

    async fn send_with(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        content_type: Option<&'static str>,
        fresh_token: bool,
    ) -> Result<Answer, ActionError> {
        let token = self.token(fresh_token).await?;
        let mut request = self
            .http
            .request(method, url.clone())
            .header("X-Vault-Token", token);
        if let Some(body) = body {
            request = request.body(body.to_string()).header(
                CONTENT_TYPE,
                HeaderValue::from_static(content_type.unwrap_or("application/json")),
            );
        }
        self.answer(request).await
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Answer, ActionError> {
        let (status, headers, body) = exchange(&self.name, request).await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// The `X-Vault-Token` value: the configured token, or the client token of an AppRole login
    /// (kept for most of its lease).
    async fn token(&self, fresh: bool) -> Result<HeaderValue, ActionError> {
        let token = match &self.auth {
            Auth::Token(credential) => credential.read()?,
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
                token,
            } => {
                let mut cached = token.lock().await;
                let valid = cached.as_ref().filter(|(_, until)| {
                    !fresh && until.is_none_or(|until| Instant::now() < until)
                });
                match valid {
                    Some((secret, _)) => secret.clone(),
                    None => {
                        let (secret, until) =
                            self.login(mount, role_id, &secret_id.read()?).await?;
                        *cached = Some((secret.clone(), until));
                        secret
                    }
                }
            }
        };
        let mut value = HeaderValue::from_str(token.expose()).map_err(|_| {
            ActionError::permanent(format!(
                "the Vault token of secret store `{}` contains characters that cannot be sent \
                 in an HTTP header",
                self.name
            ))
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// `POST /v1/auth/<mount>/login` with the role and secret id: the client token and when to
    /// renew it (`None`: a token without a lease).
    async fn login(
        &self,
        mount: &[String],
        role_id: &str,
        secret_id: &Secret,
    ) -> Result<(Secret, Option<Instant>), ActionError> {
        let mut segments: Vec<&str> = vec!["v1", "auth"];
        segments.extend(mount.iter().map(String::as_str));
        segments.push("login");
        let url = self.url_of(&segments)?;
        let request = self
            .http
            .post(url.clone())
            .json(&json!({"role_id": role_id, "secret_id": secret_id.expose()}));
        let answer = self.answer(request).await?;
        if !answer.status.is_success() {
            return Err(refusal(
                &self.name,
                &format!("the AppRole login (POST {})", url.path()),
                answer.status,
                &answer.headers,
                &answer.errors(),
            ));
        }
        let Some(token) = answer.body["auth"]["client_token"].as_str() else {
            return Err(ActionError::permanent(format!(
                "secret store `{}`: the AppRole login answered without `auth.client_token`",
                self.name
            )));
        };
        let lease = answer.body["auth"]["lease_duration"].as_u64().unwrap_or(0);
        let until = (lease > 0)
            .then(|| Instant::now() + Duration::from_secs_f64(lease as f64 * LEASE_SHARE));
        Ok((Secret::new(token.to_owned()), until))
    }
}
