//! Who calls: a bearer token, or a console session. A token is never stored or logged: the
//! config holds its SHA-256, and a request's token is hashed and compared with every configured
//! hash in constant time. A console session is its cookie (see `service::console`); a write
//! made with it (any method but GET, HEAD and OPTIONS) must also carry the session's CSRF token
//! in `X-CSRF-Token`, or it is refused with 403 `csrf` before the handler runs.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::Api;
use super::error::ApiError;
use crate::config::{ApiToken, Role};

/// The configured tokens, by hash.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tokens {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    role: Role,
    sha256: [u8; 32],
}

impl Tokens {
    /// From `[[api.tokens]]` (checked at load: 64 hex digits each).
    pub(crate) fn new(tokens: &[ApiToken]) -> Tokens {
        let entries = tokens
            .iter()
            .filter_map(|token| {
                let bytes = hex::decode(&token.sha256).ok()?;
                Some(Entry {
                    name: token.name.clone(),
                    role: token.role,
                    sha256: bytes.try_into().ok()?,
                })
            })
            .collect();
        Tokens { entries }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a presented token belongs to. Every entry is compared, so the time taken
    /// does not depend on which one (if any) matches.
    pub(crate) fn caller(&self, presented: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.sha256.ct_eq(&digest)) {
                found = Some(Caller {
                    name: entry.name.clone(),
                    role: entry.role,
                    via: quench_proto::Via::Api,
                });
            }
        }
        found
    }
}

/// Who is calling: the token's name and role, or the signed-in person's.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) role: Role,
    /// `Api` for a bearer token, `Console` for a console session.
    pub(crate) via: quench_proto::Via,
}

impl Caller {
    /// 403 unless the caller's role is at least `role`.
    pub(crate) fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                need: role,
                have: self.role,
            })
        }
    }

    /// The caller as an actor of audit entries and decisions.
    pub(crate) fn actor(&self) -> quench_proto::Actor {
        quench_proto::Actor {
            via: self.via,
            id: self.name.clone(),
            name: None,
        }
    }
}

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Caller, ApiError> {
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return console_caller(parts, api).await;
        };
        let header = header
            .to_str()
            .map_err(|_| ApiError::Unauthorized("no bearer token"))?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(ApiError::Unauthorized("no bearer token"))?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::Unauthorized("no bearer token"));
        }
        api.inner
            .tokens
            .caller(token.trim())
            .ok_or(ApiError::Unauthorized("unknown token"))
    }
}

/// The caller a console session cookie names; a write must echo the session's CSRF token.
async fn console_caller(parts: &Parts, api: &Api) -> Result<Caller, ApiError> {
    let session = api
        .inner
        .console
        .session(&parts.headers)
        .await
        .map_err(|error| ApiError::Unavailable(error.to_string()))?
        .ok_or(ApiError::Unauthorized("no bearer token"))?;
    if !matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) {
        let presented = parts
            .headers
            .get("x-csrf-token")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if presented.is_empty() || !session.csrf_matches(presented) {
            return Err(ApiError::Refused {
                status: axum::http::StatusCode::FORBIDDEN,
                code: "csrf",
                message: "a write with a console session must carry the session's CSRF token in `X-CSRF-Token`; reload the page".to_owned(),
            });
        }
    }
    Ok(Caller {
        name: session.person,
        role: session.role,
        via: quench_proto::Via::Console,
    })
}

/// Declares the bearer scheme in the OpenAPI document.
pub(super) struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `[[api.tokens]]` (the config holds its SHA-256)",
                    ))
                    .build(),
            ),
        );
    }
}
