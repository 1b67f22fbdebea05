//! Console single sign-on: OpenID Connect's authorization code flow with PKCE, through the
//! `openidconnect` crate over quench's own HTTP client (rustls, timeouts, no redirects, and only
//! the issuer's https endpoints — plain http only on loopback).
//!
//! `/console/oidc/login` makes a pending login (state, nonce, PKCE verifier, and a random
//! binding set as a short-lived cookie so that only the browser that started a login can finish
//! it) and sends the browser to the provider. `/console/oidc/callback` takes the pending login by
//! its state (once), checks the binding, exchanges the code with the verifier (and the client
//! secret), verifies the ID token (signature by the provider's keys, issuer, audience, expiry,
//! nonce), requires a verified email, maps the groups claim to a role, and opens a session.
//! Provider metadata and keys are discovered at the first login and again after an hour or
//! when a token is signed by a key not yet known.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndSessionUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse,
    IdTokenFields, IssuerUrl, LogoutRequest, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::{OidcSection, Role};

/// How long a started login may take to come back.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// The most logins pending at once; past it the oldest is dropped.
const MAX_PENDING: usize = 10_000;
/// How long discovered metadata and keys are used before they are read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The largest answer read from the provider.
const MAX_RESPONSE: usize = 1 << 20;

/// The name of the cookie that binds a pending login to the browser that started it.
pub(crate) const LOGIN_COOKIE: &str = "quench_oidc_login";

/// Every claim of the ID token, so the configured groups claim can be read by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims(serde_json::Map<String, serde_json::Value>);

impl AdditionalClaims for Claims {}

type Fields = IdTokenFields<
    Claims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
type IdToken = openidconnect::IdToken<
    Claims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Client = openidconnect::Client<
    Claims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in did not happen; `code` goes to the page, the rest to the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the identity provider cannot be reached or read: {0}")]
    Provider(String),
    #[error("no sign-in was started from this browser, or it took longer than 10 minutes")]
    UnknownLogin,
    #[error("the identity provider refused the sign-in: {0}")]
    Denied(String),
    #[error("the identity provider's answer did not verify: {0}")]
    Unverified(String),
    #[error("the identity provider gave no verified email for this person")]
    NoVerifiedEmail,
    #[error("{0} is in no group that [console.oidc] roles maps to a role")]
    NoRole(String),
}

impl Refusal {
    /// The short code the page shows a message for.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refusal::Provider(_) => "provider_unreachable",
            Refusal::UnknownLogin => "login_expired",
            Refusal::Denied(_) => "denied",
            Refusal::Unverified(_) => "unverified",
            Refusal::NoVerifiedEmail => "no_verified_email",
            Refusal::NoRole(_) => "no_role",
        }
    }
}

/// A signed-in person as the provider vouched for them, with the ID token that says so (kept
/// in the session only, sealed, as the `id_token_hint` of the provider's logout).
#[derive(Clone)]
pub(crate) struct Person {
    pub(crate) email: String,
    pub(crate) role: Role,
    pub(crate) id_token: String,
}

impl std::fmt::Debug for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Person")
            .field("email", &self.email)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Pending {
    binding: String,
    verifier: String,
    nonce: String,
    started: Instant,
}

/// The provider's metadata and keys as a client, and when they were read.
#[derive(Debug, Clone)]
struct Discovered {
    client: Client,
    /// The provider's `end_session_endpoint` (RP-initiated logout), when it has one.
    end_session: Option<EndSessionUrl>,
    at: Instant,
}

/// The OpenID Connect side of the console.
#[derive(Debug)]
pub(crate) struct Oidc {
    section: OidcSection,
    redirect: RedirectUrl,
    http: reqwest::Client,
    discovered: tokio::sync::Mutex<Option<Discovered>>,
    pending: Mutex<HashMap<String, Pending>>,
}

/// The provider's HTTP errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Reqwest(#[from] reqwest::Error),
    #[error("{0}")]
    Http(#[from] openidconnect::http::Error),
}

/// One request of the `openidconnect` crate, sent with quench's client: only to https (or a
/// loopback http) URLs, answers capped at 1 MiB.
async fn send(client: reqwest::Client, request: HttpRequest) -> Result<HttpResponse, HttpError> {
    let url = request.uri().to_string();
    quench_common::http::check_base_url(&url)
        .map_err(|problem| HttpError::Refused(format!("{url} {problem}")))?;
    let (parts, body) = request.into_parts();
    let mut builder = client.request(parts.method, &url);
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let mut response = builder.body(body).send().await?;
    let mut out = openidconnect::http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        out = out.header(name, value);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(HttpError::Refused(format!(
                "{url} answered with more than {MAX_RESPONSE} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(out.body(body)?)
}

fn random() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl Oidc {
    /// From a checked `[console.oidc]` (the redirect URL is known and valid).
    pub(crate) fn new(section: &OidcSection, listen: &str) -> Result<Oidc, String> {
        let redirect = section
            .redirect_url(listen)
            .ok_or("console.oidc.redirect_url is needed")?;
        Ok(Oidc {
            section: section.clone(),
            redirect: RedirectUrl::new(redirect).map_err(|error| error.to_string())?,
            http: quench_common::http::http_client(),
            discovered: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The issuer, for the page's "sign in with" button.
    pub(crate) fn issuer(&self) -> &str {
        &self.section.issuer
    }

    /// The client, discovered anew when `fresh` or when older than an hour.
    async fn client(&self, fresh: bool) -> Result<Client, Refusal> {
        Ok(self.discover(fresh).await?.client)
    }

    /// The provider as discovered (anew when `fresh` or older than an hour).
    async fn discover(&self, fresh: bool) -> Result<Discovered, Refusal> {
        let mut discovered = self.discovered.lock().await;
        if let Some(known) = discovered.as_ref()
            && !fresh
            && known.at.elapsed() < METADATA_TTL
        {
            return Ok(known.clone());
        }
        let issuer = IssuerUrl::new(self.section.issuer.clone())
            .map_err(|error| Refusal::Provider(error.to_string()))?;
        let http = self.http.clone();
        let call = move |request: HttpRequest| send(http.clone(), request);
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &call)
            .await
            .map_err(|error| Refusal::Provider(chain(&error)))?;
        let end_session = metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()
            // Only where every other call may go: https, or http on loopback.
            .filter(|url| quench_common::http::check_base_url(url.as_str()).is_ok());
        let client = Client::from_provider_metadata(
            metadata,
            ClientId::new(self.section.client_id.clone()),
            self.section
                .client_secret
                .as_ref()
                .map(|secret| ClientSecret::new(secret.expose().to_owned())),
        )
        .set_redirect_uri(self.redirect.clone());
        let found = Discovered {
            client,
            end_session,
            at: Instant::now(),
        };
        *discovered = Some(found.clone());
        Ok(found)
    }

    /// Where to send the browser to end the person's session at the provider too (OpenID
    /// Connect RP-Initiated Logout): its `end_session_endpoint` with the ID token as
    /// `id_token_hint`, the client id, and the console as `post_logout_redirect_uri`. `None`
    /// when the provider has no such endpoint or cannot be reached (the quench session is
    /// ended either way).
    pub(crate) async fn logout_url(&self, id_token: Option<&str>) -> Option<String> {
        let discovered = self.discover(false).await.ok()?;
        let mut request = LogoutRequest::from(discovered.end_session?)
            .set_client_id(ClientId::new(self.section.client_id.clone()));
        if let Some(token) = id_token.and_then(|token| token.parse::<IdToken>().ok()) {
            request = request.set_id_token_hint(&token);
        }
        let console = self
            .redirect
            .as_str()
            .strip_suffix("console/oidc/callback")
            .map(str::to_owned);
        if let Some(back) = console.and_then(|url| PostLogoutRedirectUrl::new(url).ok()) {
            request = request.set_post_logout_redirect_uri(back);
        }
        Some(request.http_get_url().to_string())
    }

    /// Starts a login: the provider's authorization URL to send the browser to, and the value
    /// of the binding cookie to set.
    pub(crate) async fn start(&self) -> Result<(String, String), Refusal> {
        let client = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &self.section.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let binding = random();
        let mut pending = self.lock();
        pending.retain(|_, login| login.started.elapsed() < LOGIN_TTL);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, login)| login.started)
                .map(|(state, _)| state.clone())
        {
            pending.remove(&oldest);
        }
        pending.insert(
            state.secret().clone(),
            Pending {
                binding: binding.clone(),
                verifier: verifier.secret().clone(),
                nonce: nonce.secret().clone(),
                started: Instant::now(),
            },
        );
        Ok((url.to_string(), binding))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Finishes a login from the provider's answer: the person it vouches for.
    pub(crate) async fn finish(
        &self,
        answer: &Callback,
        binding: Option<&str>,
    ) -> Result<Person, Refusal> {
        let state = answer.state.as_deref().ok_or(Refusal::UnknownLogin)?;
        // Taken once: a replayed answer finds nothing.
        let pending = self.lock().remove(state).ok_or(Refusal::UnknownLogin)?;
        let bound = binding.is_some_and(|binding| {
            bool::from(binding.as_bytes().ct_eq(pending.binding.as_bytes()))
        });
        if !bound || pending.started.elapsed() >= LOGIN_TTL {
            return Err(Refusal::UnknownLogin);
        }
        if let Some(error) = &answer.error {
            let description = answer.error_description.as_deref().unwrap_or_default();
            return Err(Refusal::Denied(
                format!("{error} {description}").trim().to_owned(),
            ));
        }
        let code = answer
            .code
            .clone()
            .ok_or_else(|| Refusal::Denied("no code in the answer".to_owned()))?;
        let client = self.client(false).await?;
        let http = self.http.clone();
        let call = move |request: HttpRequest| send(http.clone(), request);
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|error| Refusal::Provider(error.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&call)
            .await
            .map_err(|error| Refusal::Unverified(chain(&error)))?;
        let token = tokens
            .id_token()
            .ok_or_else(|| Refusal::Unverified("no ID token in the answer".to_owned()))?;
        let nonce = Nonce::new(pending.nonce);
        let claims = match token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            // Signed by a key not yet known (the provider rotated its keys): read them again.
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_)) => {
                let client = self.client(true).await?;
                token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|error| Refusal::Unverified(chain(&error)))?
                    .clone()
            }
            Err(error) => return Err(Refusal::Unverified(chain(&error))),
        };
        let email = match (claims.email(), claims.email_verified()) {
            (Some(email), Some(true)) => email.as_str().to_owned(),
            _ => return Err(Refusal::NoVerifiedEmail),
        };
        let groups = groups(claims.additional_claims(), &self.section.groups_claim);
        let role = self
            .section
            .role_of(groups.iter().map(String::as_str))
            .ok_or_else(|| Refusal::NoRole(email.clone()))?;
        Ok(Person {
            email,
            role,
            id_token: token.to_string(),
        })
    }
}

/// The groups a claim lists: an array of strings, or one string.
fn groups(claims: &Claims, name: &str) -> Vec<String> {
    match claims.0.get(name) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// An error with its causes, for the log.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the provider sends the browser back with.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Callback {
    pub(crate) code: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) error_description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(value: serde_json::Value) -> Claims {
        serde_json::from_value(value).expect("claims")
    }

    #[test]
    fn groups_are_read_from_an_array_or_a_string_and_nothing_else() {
        let all = claims(serde_json::json!({
            "groups": ["secops", 7, "approvers"], "team": "payments", "n": 3
        }));
        assert_eq!(groups(&all, "groups"), ["secops", "approvers"]);
        assert_eq!(groups(&all, "team"), ["payments"]);
        assert!(groups(&all, "n").is_empty());
        assert!(groups(&all, "missing").is_empty());
    }
}
