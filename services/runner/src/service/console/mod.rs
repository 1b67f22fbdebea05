//! The web console, served by the runner on `api.listen` at `/`: one page and its script and
//! style, embedded in the binary (plain ES modules, no build step, nothing fetched at run
//! time), and the sign-in routes under `/console/`. The page reads and writes through the same
//! `/api/v1` routes as the CLI, with a session cookie instead of a bearer token; the API's
//! `Caller` decides what the person may do (see `api::auth`), so the server refuses a write
//! whatever the page shows.
//!
//! Every console response carries a strict Content-Security-Policy (scripts and styles from
//! this origin only, no inline code, no frames, Trusted Types required so no script can write
//! HTML from strings), `nosniff`, no referrer, and no framing.
//!
//! Sign-in: OpenID Connect single sign-on (`[console.oidc]`, see `oidc`), or an API token
//! exchanged for a session (`[console] token_sign_in`, on by default; the login link `quench
//! up` prints carries its one-run token in the URL's fragment, which the browser never sends to
//! any server).

pub(crate) mod oidc;
pub(crate) mod session;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use self::session::{COOKIE, HOST_COOKIE, Method, Session, Sessions, Unavailable};
use super::api::Api;
use crate::config::{ConsoleSection, Role};

const INDEX: &str = include_str!("../../../console/index.html");
const SCRIPT: &str = include_str!("../../../console/app.js");
const STYLE: &str = include_str!("../../../console/app.css");
const EDITOR: &str = include_str!("../../../console/editor.js");

/// The policy every console response carries.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

/// The console's settings and its sessions.
#[derive(Debug)]
pub(crate) struct Console {
    enabled: bool,
    token_sign_in: bool,
    /// `Secure` cookies (with the `__Host-` prefix), unless the listener is loopback.
    secure: bool,
    sessions: Sessions,
    /// Single sign-on, when `[console.oidc]` is set.
    oidc: Option<oidc::Oidc>,
    /// How many audit chains there are to pick from (a cluster's partitions; else 1).
    partitions: u32,
}

impl Console {
    /// A console whose sessions this process keeps in memory (a single runner).
    pub(crate) fn new(section: &ConsoleSection, listen: &str) -> Console {
        Console::with(section, listen, Sessions::new(section.session_ttl()), 1)
    }

    /// A console whose sessions every runner of the cluster shares (the KV bucket
    /// `QUENCH_CONSOLE`), for a cluster of `partitions` partitions.
    pub(crate) async fn shared(
        section: &ConsoleSection,
        listen: &str,
        jetstream: &async_nats::jetstream::Context,
        replicas: usize,
        partitions: u32,
    ) -> Result<Console, Unavailable> {
        let sessions = Sessions::shared(jetstream, section.session_ttl(), replicas).await?;
        Ok(Console::with(section, listen, sessions, partitions))
    }

    fn with(
        section: &ConsoleSection,
        listen: &str,
        sessions: Sessions,
        partitions: u32,
    ) -> Console {
        let loopback = listen
            .parse::<SocketAddr>()
            .is_ok_and(|address| address.ip().is_loopback());
        let oidc = section
            .oidc
            .as_ref()
            .and_then(|oidc| match oidc::Oidc::new(oidc, listen) {
                Ok(oidc) => Some(oidc),
                Err(problem) => {
                    // The config check refuses what would make this fail.
                    tracing::error!(%problem, "console single sign-on is off");
                    None
                }
            });
        Console {
            enabled: section.enabled,
            token_sign_in: section.token_sign_in,
            secure: !loopback,
            sessions,
            oidc,
            partitions,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The live session a request's cookie names.
    pub(crate) async fn session(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Session>, Unavailable> {
        if !self.enabled {
            return Ok(None);
        }
        match self.cookie(headers) {
            Some(value) => self.sessions.get(&value).await,
            None => Ok(None),
        }
    }

    /// The session cookie's value, under the name this listener uses.
    fn cookie(&self, headers: &HeaderMap) -> Option<String> {
        let name = if self.secure { HOST_COOKIE } else { COOKIE };
        Console::cookie_named(headers, name)
    }

    fn set_cookie(&self, value: &str, max_age: cookie::time::Duration) -> HeaderValue {
        let name = if self.secure { HOST_COOKIE } else { COOKIE };
        self.cookie_header(name, value, cookie::SameSite::Strict, max_age)
    }

    /// The cookie binding a pending single sign-on to this browser: `Lax`, since the provider
    /// sends the browser back with a cross-site navigation.
    fn login_cookie_name(&self) -> String {
        if self.secure {
            format!("__Host-{}", oidc::LOGIN_COOKIE)
        } else {
            oidc::LOGIN_COOKIE.to_owned()
        }
    }

    fn cookie_header(
        &self,
        name: &str,
        value: &str,
        same_site: cookie::SameSite,
        max_age: cookie::time::Duration,
    ) -> HeaderValue {
        let cookie = cookie::Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(same_site)
            .max_age(max_age)
            .build();
        HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
    }

    /// A named cookie's value from a request.
    fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|cookie| cookie.name() == name)
            .map(|cookie| cookie.value().to_owned())
    }
}

/// The console's routes (none when `[console] enabled = false`).
pub(crate) fn routes(enabled: bool) -> Router<Api> {
    if !enabled {
        return Router::new();
    }
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(script))
        .route("/assets/editor.js", get(editor_script))
        .route("/assets/app.css", get(style))
        .route("/console/session", get(whoami).post(sign_in))
        .route("/console/sign-out", axum::routing::post(sign_out))
        .route("/console/oidc/login", get(oidc_login))
        .route("/console/oidc/callback", get(oidc_callback))
}

/// The headers every console response carries.
fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    hardened(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn editor_script() -> Response {
    asset("text/javascript; charset=utf-8", EDITOR)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// Who is signed in, and how one may sign in.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SessionView {
    pub(crate) signed_in: bool,
    /// The ways to sign in this service offers: `oidc`, `token`.
    pub(crate) methods: Vec<String>,
    /// With `oidc`: the identity provider's issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) person: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<Role>,
    /// How they signed in: `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<String>,
    /// Echo in `X-CSRF-Token` with every write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) csrf: Option<String>,
    /// After a sign-out from a single sign-on session: where the page sends the browser to end
    /// the session at the identity provider too (its `end_session_endpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) logout_url: Option<String>,
    /// How many audit chains the service keeps (a cluster's partitions, each with its own;
    /// else 1): the console's audit page picks one.
    #[serde(default = "one")]
    pub(crate) partitions: u32,
}

fn one() -> u32 {
    1
}

impl Console {
    fn view(&self, session: Option<&Session>) -> SessionView {
        SessionView {
            signed_in: session.is_some(),
            methods: [(self.oidc.is_some(), "oidc"), (self.token_sign_in, "token")]
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, method)| method.to_owned())
                .collect(),
            issuer: self.oidc.as_ref().map(|oidc| oidc.issuer().to_owned()),
            person: session.map(|session| session.person.clone()),
            role: session.map(|session| session.role),
            method: session.map(|session| session.method.as_str().to_owned()),
            csrf: session.map(|session| session.csrf.clone()),
            logout_url: None,
            partitions: self.partitions,
        }
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    hardened((status, axum::Json(body)).into_response())
}

/// The sessions cannot be read or written (cluster mode, NATS unreachable): ask again.
fn unavailable(error: &Unavailable) -> Response {
    tracing::warn!(%error, "a console request could not reach the sessions");
    let mut response = refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "sessions_unavailable",
        "the console's sessions cannot be reached at the moment; try again shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

fn refused(status: StatusCode, code: &str, message: &str) -> Response {
    json(
        status,
        &super::api::types::ErrorBody::new(code, message.to_owned()),
    )
}

async fn whoami(State(api): State<Api>, headers: HeaderMap) -> Response {
    let console = api.console();
    match console.session(&headers).await {
        Ok(session) => json(StatusCode::OK, &console.view(session.as_ref())),
        Err(error) => unavailable(&error),
    }
}

/// A token sign-in's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// A cross-site request names another origin in `Origin`; the browser sets it on every POST,
/// so a sign-in (which has no CSRF token yet) from another site is refused here.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let origin = origin
        .to_str()
        .ok()
        .and_then(|origin| url::Url::parse(origin).ok());
    match (origin, host) {
        (Some(origin), Some(host)) => {
            origin
                .host_str()
                .is_some_and(|origin_host| match origin.port() {
                    Some(port) => format!("{origin_host}:{port}") == host,
                    None => origin_host == host,
                })
        }
        _ => false,
    }
}

async fn sign_in(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<axum::Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let console = api.console();
    if !same_origin(&headers) {
        return refused(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "a sign-in must come from the console's own page",
        );
    }
    if !console.token_sign_in {
        return refused(
            StatusCode::FORBIDDEN,
            "token_sign_in_off",
            "signing in with an API token is turned off (`[console] token_sign_in = false`)",
        );
    }
    let Ok(axum::Json(SignIn { token })) = body else {
        return refused(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"token\": \"...\"} as application/json",
        );
    };
    let Some(caller) = api.tokens().caller(token.trim()) else {
        tracing::warn!("a console sign-in with an unknown token was refused");
        return refused(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "that is not a token of this service's [[api.tokens]]",
        );
    };
    let (value, session) = match console
        .sessions
        .open(caller.name, caller.role, Method::Token, None)
        .await
    {
        Ok(opened) => opened,
        Err(error) => return unavailable(&error),
    };
    tracing::info!(person = %session.person, role = ?session.role, "signed in to the console with a token");
    let ttl = cookie::time::Duration::try_from(console.sessions.ttl())
        .unwrap_or(cookie::time::Duration::HOUR);
    let mut response = json(StatusCode::OK, &console.view(Some(&session)));
    response
        .headers_mut()
        .insert(header::SET_COOKIE, console.set_cookie(&value, ttl));
    response
}

/// A redirect (303) that also sets cookies.
fn redirect(location: &str, cookies: &[HeaderValue]) -> Response {
    let mut response = hardened(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, location.to_owned())],
        )
            .into_response(),
    );
    for cookie in cookies {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

/// The single sign-on side, or the answer that there is none.
fn sso(console: &Console) -> Result<&oidc::Oidc, Box<Response>> {
    console.oidc.as_ref().ok_or_else(|| {
        Box::new(refused(
            StatusCode::NOT_FOUND,
            "oidc_off",
            "single sign-on is not configured ([console.oidc])",
        ))
    })
}

/// Starts single sign-on: to the provider, with this browser's binding cookie.
async fn oidc_login(State(api): State<Api>) -> Response {
    let console = api.console();
    let oidc = match sso(console) {
        Ok(oidc) => oidc,
        Err(response) => return *response,
    };
    match oidc.start().await {
        Ok((url, binding)) => {
            let cookie = console.cookie_header(
                &console.login_cookie_name(),
                &binding,
                cookie::SameSite::Lax,
                cookie::time::Duration::minutes(10),
            );
            redirect(&url, &[cookie])
        }
        Err(refusal) => {
            tracing::warn!(code = refusal.code(), %refusal, "console single sign-on could not start");
            redirect(&format!("/#signin_error={}", refusal.code()), &[])
        }
    }
}

/// Where the provider sends the browser back: a session, or the page with why not.
async fn oidc_callback(
    State(api): State<Api>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<oidc::Callback>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let console = api.console();
    let oidc = match sso(console) {
        Ok(oidc) => oidc,
        Err(response) => return *response,
    };
    let answer = query.map(|query| query.0).unwrap_or_default();
    let name = console.login_cookie_name();
    let binding = Console::cookie_named(&headers, &name);
    let clear = console.cookie_header(
        &name,
        "",
        cookie::SameSite::Lax,
        cookie::time::Duration::ZERO,
    );
    match oidc.finish(&answer, binding.as_deref()).await {
        Ok(person) => {
            let opened = console
                .sessions
                .open(
                    person.email,
                    person.role,
                    Method::Oidc,
                    Some(person.id_token),
                )
                .await;
            let (value, session) = match opened {
                Ok(opened) => opened,
                Err(error) => {
                    tracing::error!(%error, "a console single sign-on could not open a session");
                    return redirect("/#signin_error=sessions_unavailable", &[clear]);
                }
            };
            tracing::info!(person = %session.person, role = ?session.role, "signed in to the console through single sign-on");
            let ttl = cookie::time::Duration::try_from(console.sessions.ttl())
                .unwrap_or(cookie::time::Duration::HOUR);
            redirect("/#/inbox", &[clear, console.set_cookie(&value, ttl)])
        }
        Err(refusal) => {
            tracing::warn!(code = refusal.code(), %refusal, "a console single sign-on was refused");
            redirect(&format!("/#signin_error={}", refusal.code()), &[clear])
        }
    }
}

async fn sign_out(State(api): State<Api>, headers: HeaderMap) -> Response {
    let console = api.console();
    let session = match console.session(&headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return refused(StatusCode::UNAUTHORIZED, "unauthorized", "not signed in"),
        Err(error) => return unavailable(&error),
    };
    let presented = headers
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !session.csrf_matches(presented) {
        return refused(
            StatusCode::FORBIDDEN,
            "csrf",
            "a sign-out must carry the session's CSRF token in `X-CSRF-Token`",
        );
    }
    if let Some(value) = console.cookie(&headers)
        && let Err(error) = console.sessions.close(&value).await
    {
        return unavailable(&error);
    }
    tracing::info!(person = %session.person, "signed out of the console");
    let mut view = console.view(None);
    if let (Some(oidc), Method::Oidc) = (&console.oidc, session.method) {
        view.logout_url = oidc.logout_url(session.id_token.as_deref()).await;
    }
    let mut response = json(StatusCode::OK, &view);
    response.headers_mut().insert(
        header::SET_COOKIE,
        console.set_cookie("", cookie::time::Duration::ZERO),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        headers
    }

    #[test]
    fn same_origin_is_the_host_the_request_was_sent_to() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "quench.example.com"),
            ("origin", "https://quench.example.com")
        ])));
        for origin in [
            "http://evil.example.com",
            "http://127.0.0.1:9999",
            "null",
            "",
        ] {
            assert!(
                !same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", origin)])),
                "{origin}"
            );
        }
    }

    #[tokio::test]
    async fn the_cookie_is_read_under_the_listeners_name_only() {
        let console = Console::new(&ConsoleSection::default(), "127.0.0.1:8080");
        let (value, _) = console
            .sessions
            .open("ann@example.com".into(), Role::Viewer, Method::Token, None)
            .await
            .expect("open");
        let found = console
            .session(&headers(&[(
                "cookie",
                &format!("other=1; {COOKIE}={value}"),
            )]))
            .await
            .expect("read");
        assert_eq!(found.expect("session").person, "ann@example.com");
        assert!(
            console
                .session(&headers(&[("cookie", &format!("{HOST_COOKIE}={value}"))]))
                .await
                .expect("read")
                .is_none()
        );
        let set = console.set_cookie(&value, cookie::time::Duration::HOUR);
        let set = set.to_str().expect("ascii");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(!set.contains("Secure"), "{set}");
        let remote = Console::new(&ConsoleSection::default(), "0.0.0.0:8080");
        let set = remote.set_cookie(&value, cookie::time::Duration::HOUR);
        let set = set.to_str().expect("ascii");
        assert!(
            set.starts_with("__Host-") && set.contains("Secure"),
            "{set}"
        );
    }
}
