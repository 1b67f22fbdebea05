//! The OpenAI Admin API connector: the `openai.*` actions of a playbook, spoken over HTTP to
//! `https://api.openai.com/v1/organization/…` with an Admin API key (see
//! `shared/reference/openai-admin-api.md`).
//!
//! [`OpenAi`] holds the HTTP client and the credentials; [`register`] adds one [`Action`] per
//! playbook action to the engine's set. `transport` sends requests and maps every answer that is
//! not a success to an [`ActionError`] in one place; `changes` holds the actions that change
//! something at OpenAI, `narrow` the ones that narrow a key or a project without breaking it
//! (scopes, expiry, models, hosted tools, spend limit), `rotate` the zero-downtime rotation of a
//! service account's key into a secret store, `reads` the ones that only read (inventory, audit
//! log, usage), `least_privilege` the scopes a key's usage needs.
//!
//! Architecture invariant: the admin key lives only in the `Authorization` header value, marked
//! sensitive; it never reaches a message, a log line, an output or `Debug`.
//!
//! [`Action`]: crate::engine::Action

mod changes;
mod estate;
mod least_privilege;
mod narrow;
mod reads;
mod rotate;
mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quench_common::http::{REQUEST_TIMEOUT, check_base_url, http_client};
use reqwest::header::HeaderValue;
use url::Url;

use crate::config::Secret;
use crate::engine::Actions;

pub use estate::{EstateLists, ProjectSettings, WATCHED_EVENTS};
pub use least_privilege::{Capabilities, UsageScopes, model_family};
pub use narrow::KEY_EXPIRED;
pub use rotate::register as register_rotation;

/// A client of the OpenAI Admin API: base URL, admin key, optional organization id.
pub struct OpenAi {
    base: Url,
    /// `Bearer <admin key>`, marked sensitive so `Debug` of the header map hides it; `None`
    /// without a key (dry-run: requests are described, never sent).
    authorization: Option<HeaderValue>,
    organization: Option<HeaderValue>,
    http: reqwest::Client,
    request_timeout: Duration,
    /// The usage-scope mapping `openai.key_usage` reads (see [`OpenAi::with_usage_scopes`]).
    usage_scopes: Option<PathBuf>,
}

impl OpenAi {
    /// A client for `base_url` (e.g. `https://api.openai.com/v1`) that authenticates with
    /// `admin_key` and, when given, names the organization in `OpenAI-Organization`.
    pub fn new(
        base_url: &str,
        admin_key: Secret,
        org_id: Option<String>,
    ) -> Result<OpenAi, String> {
        let base = base_url_of(base_url)?;
        let key = admin_key.expose().trim();
        if key.is_empty() {
            return Err("openai.admin_key is empty".to_owned());
        }
        // The error must not echo the key, so it names only the problem.
        let mut authorization = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            "openai.admin_key contains characters that cannot be sent in an HTTP header".to_owned()
        })?;
        authorization.set_sensitive(true);
        let organization = org_id
            .map(|org_id| {
                HeaderValue::from_str(org_id.trim()).map_err(|_| {
                    format!("openai.org_id `{org_id}` cannot be sent in an HTTP header")
                })
            })
            .transpose()?;
        Ok(OpenAi {
            base,
            authorization: Some(authorization),
            organization,
            http: http_client(),
            request_timeout: REQUEST_TIMEOUT,
            usage_scopes: None,
        })
    }

    /// A client without an admin key: dry-run describes its requests; a call fails (permanent)
    /// saying the key is not configured.
    pub fn without_key(base_url: &str) -> Result<OpenAi, String> {
        Ok(OpenAi {
            base: base_url_of(base_url)?,
            authorization: None,
            organization: None,
            http: http_client(),
            request_timeout: REQUEST_TIMEOUT,
            usage_scopes: None,
        })
    }

    /// The same client with another per-request timeout (the default is
    /// [`REQUEST_TIMEOUT`]); tests use a short one.
    pub fn with_request_timeout(self, timeout: Duration) -> OpenAi {
        OpenAi {
            request_timeout: timeout,
            ..self
        }
    }
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("base_url", &self.base.as_str())
            .field("admin_key", &"<redacted>")
            .field("organization", &self.organization)
            .field("request_timeout", &self.request_timeout)
            .field("usage_scopes", &self.usage_scopes)
            .finish_non_exhaustive()
    }
}

/// Adds every `openai.*` action, all sharing `client`.
pub fn register(actions: &mut Actions, client: Arc<OpenAi>) {
    changes::register(actions, &client);
    narrow::register(actions, &client);
    reads::register(actions, &client);
    least_privilege::register(actions, &client);
}

/// Checks the configured base URL: https (http only to loopback), a host, no credentials, no
/// query or fragment.
fn base_url_of(base_url: &str) -> Result<Url, String> {
    let shown = quench_proto::redact_str(base_url).into_owned();
    let base = check_base_url(base_url.trim())
        .map_err(|problem| format!("openai.base_url `{shown}` {problem}"))?;
    if base.cannot_be_a_base() || base.host_str().is_none_or(str::is_empty) {
        return Err(format!("openai.base_url `{shown}` has no host"));
    }
    if !base.username().is_empty() || base.password().is_some() {
        // Not echoed: the user-info part is a credential.
        return Err("openai.base_url must not carry a user name or password".to_owned());
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(format!(
            "openai.base_url `{shown}` must not have a query or fragment"
        ));
    }
    Ok(base)
}
