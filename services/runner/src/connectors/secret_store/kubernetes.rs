//! A Kubernetes Secret through the API server: one key of an existing Secret's `data` is
//! replaced by a JSON merge patch (`PATCH /api/v1/namespaces/{ns}/secrets/{name}`,
//! `application/merge-patch+json`), which also sets annotations naming the run and the OpenAI
//! key — one atomic write, so the label is true exactly when the data landed. The bearer token
//! is read from its file at each call (the kubelet rotates projected tokens); the API server's
//! certificate is checked against `ca_file`.

use base64::Engine as _;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Map, Value, json};
use url::Url;

use super::{Credential, Delivered, Label, Place, exchange, refusal};
use crate::config::{KubernetesStore, is_dns_label};
use crate::engine::ActionError;
use quench_common::http::{check_base_url, http_client_builder};

/// The prefix of the annotations a write sets (`quench.dev/openai-key-id`, …).
pub const ANNOTATION_PREFIX: &str = "quench.dev/";

/// The Secrets of one namespace.
pub struct Kubernetes {
    name: String,
    api_server: Url,
    namespace: String,
    token: Credential,
    http: reqwest::Client,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("name", &self.name)
            .field("api_server", &self.api_server.as_str())
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    pub fn new(name: &str, config: &KubernetesStore) -> Result<Kubernetes, String> {
        let key = format!("secret_stores.{name}");
        let api_server = check_base_url(config.api_server.trim())
            .map_err(|problem| format!("`{key}.api_server` {problem}"))?;
        let mut builder = http_client_builder();
        if config.ca_file.exists() {
            let pem = std::fs::read(&config.ca_file).map_err(|error| {
                format!("`{key}.ca_file` {}: {error}", config.ca_file.display())
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
                format!(
                    "`{key}.ca_file` {} is not a PEM bundle: {error}",
                    config.ca_file.display()
                )
            })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|error| format!("`{key}`: cannot build its HTTP client: {error}"))?;
        Ok(Kubernetes {
            name: name.to_owned(),
            api_server,
            namespace: config.namespace.clone(),
            token: Credential::of(&format!("{key}.token"), None, Some(&config.token_file))?,
            http,
        })
    }

    fn url(&self, secret: &str) -> Result<Url, ActionError> {
        let mut url = self.api_server.clone();
        url.path_segments_mut()
            .map_err(|()| ActionError::permanent("the API server URL cannot take a path"))?
            .pop_if_empty()
            .extend([
                "api",
                "v1",
                "namespaces",
                &self.namespace,
                "secrets",
                secret,
            ]);
        Ok(url)
    }

    pub(super) fn check(&self, place: Place<'_>) -> Result<(), ActionError> {
        // A Secret's name is a DNS subdomain: labels joined by dots, at most 253 characters.
        let name_ok = place.path.len() <= 253 && place.path.split('.').all(is_dns_label);
        if !name_ok {
            return Err(ActionError::permanent(format!(
                "`secret.path` `{}` is not a Kubernetes Secret name (lowercase letters, digits, \
                 `-` and `.`)",
                quench_proto::redact_str(place.path).escape_debug()
            )));
        }
        let field_ok = !place.field.is_empty()
            && place.field.len() <= 253
            && place
                .field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !field_ok {
            return Err(ActionError::permanent(format!(
                "`secret.field` `{}` is not a key of a Secret's data (letters, digits, `-`, `_`, \
                 `.`)",
                quench_proto::redact_str(place.field).escape_debug()
            )));
        }
        Ok(())
    }

    pub(super) fn describe(&self, place: Place<'_>) -> Value {
        let path = self
            .url(place.path)
            .map(|url| url.path().to_owned())
            .unwrap_or_default();
        json!({
            "store": self.name,
            "type": "kubernetes",
            "field": place.field,
            "requests": [format!(
                "PATCH {path} (application/merge-patch+json: data.{} and {ANNOTATION_PREFIX}* annotations naming the run and the new key)",
                place.field
            )],
        })
    }

    pub(super) async fn put(
        &self,
        place: Place<'_>,
        value: &crate::config::Secret,
        label: &Label,
    ) -> Result<Delivered, ActionError> {
        self.check(place)?;
        let url = self.url(place.path)?;
        let mut annotations = Map::new();
        for (name, value) in label.entries() {
            annotations.insert(
                format!("{ANNOTATION_PREFIX}{}", name.replace('_', "-")),
                json!(value),
            );
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(value.expose());
        let patch = json!({
            "metadata": {"annotations": annotations},
            "data": {place.field: encoded},
        });
        let answer = self.send(Method::PATCH, &url, Some(patch)).await?;
        match answer.0.as_u16() {
            200 | 201 => Ok(Delivered {
                version: answer.2["metadata"]["resourceVersion"].clone(),
            }),
            404 => Err(ActionError::permanent(format!(
                "secret store `{}`: there is no Secret `{}` in namespace `{}`; create it (the \
                 workload reads it) and run the rotation again",
                self.name, place.path, self.namespace
            ))),
            _ => Err(refusal(
                &self.name,
                &format!("PATCH {}", url.path()),
                answer.0,
                &answer.1,
                &status_message(&answer.2),
            )),
        }
    }

    pub(super) async fn holds(&self, place: Place<'_>, key_id: &str) -> Result<bool, ActionError> {
        self.check(place)?;
        let url = self.url(place.path)?;
        let (status, headers, body) = self.send(Method::GET, &url, None).await?;
        match status.as_u16() {
            200 => Ok(
                body["metadata"]["annotations"][format!("{ANNOTATION_PREFIX}openai-key-id")]
                    .as_str()
                    == Some(key_id),
            ),
            404 => Ok(false),
            _ => Err(refusal(
                &self.name,
                &format!("GET {}", url.path()),
                status,
                &headers,
                &status_message(&body),
            )),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &Url,
        patch: Option<Value>,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Value), ActionError> {
        let token = self.token.read()?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| {
                ActionError::permanent(format!(
                    "the token of secret store `{}` contains characters that cannot be sent in \
                     an HTTP header",
                    self.name
                ))
            })?;
        authorization.set_sensitive(true);
        let mut request = self
            .http
            .request(method, url.clone())
            .header(AUTHORIZATION, authorization);
        if let Some(patch) = patch {
            request = request
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/merge-patch+json"),
                )
                .body(patch.to_string());
        }
        exchange(&self.name, request).await
    }
}

/// The `message` of a Kubernetes `Status` object (or the status's reason).
fn status_message(body: &Value) -> String {
    let message = body["message"].as_str().unwrap_or_default();
    let reason = body["reason"].as_str().unwrap_or_default();
    match (message.is_empty(), reason.is_empty()) {
        (false, false) => format!("{message} ({reason})"),
        (false, true) => message.to_owned(),
        (true, false) => reason.to_owned(),
        (true, true) => "no Status in the answer".to_owned(),
    }
}
