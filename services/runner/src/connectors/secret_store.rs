//! Secret stores: where `openai.rotate_service_account_key` delivers the key it minted. Built
//! from `[secret_stores.<name>]`: a HashiCorp Vault KV v2 engine over its HTTP API (`vault`) or
//! the Secrets of a Kubernetes namespace through the API server (`kubernetes`). Each store
//! writes one field of one secret and labels the write with the run and the OpenAI key id, so a
//! re-executed rotation can ask whether the key it minted before a crash reached the store
//! ([`SecretStore::holds`]).
//!
//! What quench relies on from each vendor's API, with sources, is in `docs/secret-stores.md`.
//!
//! Architecture invariant: the value written is a [`Secret`] from the moment it arrives until
//! the request body is built; no message, log line, output or `Debug` of this module carries
//! it, and every message passes `redact_str`.

mod kubernetes;
mod vault;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::config::{Secret, SecretStoreConfig, read_secret_file};
use crate::connectors::retry_after;
use crate::engine::ActionError;

pub use kubernetes::{ANNOTATION_PREFIX, Kubernetes};
pub use vault::Vault;

/// The configured stores, by name.
#[derive(Debug, Clone, Default)]
pub struct SecretStores {
    by_name: BTreeMap<String, Arc<SecretStore>>,
}

impl SecretStores {
    /// The stores of `[secret_stores]` (checked at config load; this builds their clients).
    pub fn from_config(
        config: &BTreeMap<String, SecretStoreConfig>,
    ) -> Result<SecretStores, String> {
        let mut by_name = BTreeMap::new();
        for (name, store) in config {
            let built = match store {
                SecretStoreConfig::Vault(vault) => SecretStore::Vault(Vault::new(name, vault)?),
                SecretStoreConfig::Kubernetes(kubernetes) => {
                    SecretStore::Kubernetes(Kubernetes::new(name, kubernetes)?)
                }
            };
            by_name.insert(name.clone(), Arc::new(built));
        }
        Ok(SecretStores { by_name })
    }

    /// Adds a store built in code (tests).
    pub fn insert(&mut self, name: &str, store: SecretStore) -> &mut SecretStores {
        self.by_name.insert(name.to_owned(), Arc::new(store));
        self
    }

    /// The store a step names; an unknown name is a permanent error listing the known ones.
    pub fn get(&self, name: &str) -> Result<&SecretStore, ActionError> {
        self.by_name.get(name).map(Arc::as_ref).ok_or_else(|| {
            let known: Vec<String> = self.by_name.keys().map(|n| format!("`{n}`")).collect();
            ActionError::permanent(format!(
                "no secret store `{}` is configured ({}); add `[secret_stores.{}]` to the \
                 service config",
                name.escape_debug(),
                if known.is_empty() {
                    "there are none".to_owned()
                } else {
                    format!("known: {}", known.join(", "))
                },
                name.escape_debug()
            ))
        })
    }
}

/// One configured store.
#[derive(Debug)]
pub enum SecretStore {
    Vault(Vault),
    Kubernetes(Kubernetes),
}

/// Where a secret goes: Vault — `path` under the mount and the `field` of its data; Kubernetes
/// — the Secret named `path` and the `field` of its `data`.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub path: &'a str,
    pub field: &'a str,
}

/// What a write records beside the secret (Vault `custom_metadata`, Kubernetes annotations):
/// never a secret.
#[derive(Debug, Clone)]
pub struct Label {
    pub run_id: String,
    pub step: String,
    pub idempotency_key: String,
    /// The OpenAI key whose secret is written: what [`SecretStore::holds`] looks for.
    pub key_id: String,
}

impl Label {
    /// The label's entries under their names (`quench_run_id`, …, `quench_openai_key_id`).
    fn entries(&self) -> [(&'static str, &str); 4] {
        [
            ("run_id", &self.run_id),
            ("step", &self.step),
            ("idempotency_key", &self.idempotency_key),
            ("openai_key_id", &self.key_id),
        ]
    }
}

/// A write that landed.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The store's name for what it now holds: Vault's new version number, the Secret's
    /// `resourceVersion`.
    pub version: Value,
}

impl SecretStore {
    /// Checks a place before anything is minted or sent.
    pub fn check(&self, place: Place<'_>) -> Result<(), ActionError> {
        match self {
            SecretStore::Vault(vault) => vault.check(place),
            SecretStore::Kubernetes(kubernetes) => kubernetes.check(place),
        }
    }

    /// What a dry run records for the write: method, path, the label; never the value.
    pub fn describe(&self, place: Place<'_>) -> Value {
        match self {
            SecretStore::Vault(vault) => vault.describe(place),
            SecretStore::Kubernetes(kubernetes) => kubernetes.describe(place),
        }
    }

    /// Writes `value` into `place`, labelled.
    pub async fn put(
        &self,
        place: Place<'_>,
        value: &Secret,
        label: &Label,
    ) -> Result<Delivered, ActionError> {
        match self {
            SecretStore::Vault(vault) => vault.put(place, value, label).await,
            SecretStore::Kubernetes(kubernetes) => kubernetes.put(place, value, label).await,
        }
    }

    /// Whether `place` holds the secret of OpenAI key `key_id`, as its label says.
    pub async fn holds(&self, place: Place<'_>, key_id: &str) -> Result<bool, ActionError> {
        match self {
            SecretStore::Vault(vault) => vault.holds(place, key_id).await,
            SecretStore::Kubernetes(kubernetes) => kubernetes.holds(place, key_id).await,
        }
    }
}

/// A credential read at each use: inline (from the config or its environment) or from a file
/// an agent may rewrite (Vault Agent, the kubelet's projected token).
#[derive(Debug, Clone)]
enum Credential {
    Inline(Secret),
    File { key: String, path: PathBuf },
}

impl Credential {
    fn of(
        key: &str,
        inline: Option<&Secret>,
        file: Option<&PathBuf>,
    ) -> Result<Credential, String> {
        match (inline, file) {
            (Some(secret), None) => Ok(Credential::Inline(secret.clone())),
            (None, Some(path)) => Ok(Credential::File {
                key: format!("{key}_file"),
                path: path.clone(),
            }),
            _ => Err(format!("`{key}`: give it inline or as `{key}_file`, once")),
        }
    }

    fn read(&self) -> Result<Secret, ActionError> {
        match self {
            Credential::Inline(secret) => Ok(secret.clone()),
            Credential::File { key, path } => read_secret_file(key, path)
                .map_err(|error| ActionError::permanent(error.to_string())),
        }
    }
}

/// The one mapping of a store's HTTP answer that is not a success to an error, for both
/// vendors: 408, 409, 412, 429 and 5xx are worth retrying (Vault answers 412 while a standby
/// catches up, 503 while sealed; Kubernetes 409 on a conflicting write); 401 and 403 name the
/// credential; anything else is permanent with the vendor's own message.
fn refusal(
    store: &str,
    target: &str,
    status: StatusCode,
    headers: &HeaderMap,
    message: &str,
) -> ActionError {
    let code = status.as_u16();
    let message = quench_proto::redact_str(message);
    let text = match code {
        401 | 403 => format!(
            "secret store `{store}` refused {target} ({code}): {message}; check its credentials \
             and that their policy allows this path"
        ),
        _ => format!("secret store `{store}` answered {target} with {code}: {message}"),
    };
    match code {
        408 | 409 | 412 | 429 | 500..=599 => ActionError::Retryable {
            message: text,
            retry_after: retry_after(headers),
        },
        _ => ActionError::permanent(text),
    }
}

/// A transport failure talking to a store: worth retrying; names no header or body.
fn unreachable(store: &str, error: reqwest::Error) -> ActionError {
    crate::connectors::transport_error(&format!("secret store `{store}`"), error)
}

/// Sends a request to secret store `store` and reads its answer: the status, the headers and
/// the body as JSON (`null` when it is not JSON). Failing to reach the store is retryable.
async fn exchange(
    store: &str,
    request: reqwest::RequestBuilder,
) -> Result<
    (
        reqwest::StatusCode,
        reqwest::header::HeaderMap,
        serde_json::Value,
    ),
    ActionError,
> {
    let response = request
        .send()
        .await
        .map_err(|error| unreachable(store, error))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .bytes()
        .await
        .map_err(|error| unreachable(store, error))?;
    Ok((
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    ))
}
