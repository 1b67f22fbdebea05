//! The `http.request` connector: how a playbook reaches a service quench has no connector for.
//! Every hop — the first request and each redirect — must pass [`HttpAction`]'s allowlist
//! (`http.allow_hosts`): scheme, credentials in the URL, host, port and, for host names, every
//! address DNS returns. The request then goes to exactly the addresses that were checked, so a
//! second lookup cannot swap in an internal one (DNS rebinding).
//!
//! Allowlist entries (parsed by `quench_common::http::AllowHost`, for the config check and here):
//! - `hooks.example.com`: that host; `*.example.com`: any subdomain at any depth (not
//!   `example.com` itself, and at least two labels after `*.`);
//! - `10.1.2.3`, `[fd00::1]`: that address literal, which may be internal since it is named;
//! - `:port` after any of them: that port only; without it, only the scheme's default port;
//! - `private:` before a host name: its DNS answers may be internal addresses. Without it a name
//!   that resolves to a loopback, private, link-local or otherwise non-public address is refused.
//!
//! Plain `http` is allowed only through an exact entry (a name or an address), never through a
//! wildcard, and a redirect from `https` to `http` is refused: header values may be credentials.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quench_common::http::{AllowHost, PRIVATE_PREFIX, REQUEST_TIMEOUT, http_client_builder};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use url::{Host, Url};

use crate::actions::{HttpMethod, HttpRequest};
use crate::connectors::{retry_after, transport_error};
use crate::engine::{Action, ActionError, ActionFuture, Actions, Call, Success};

/// The action's name in playbooks.
pub const NAME: &str = "http.request";

/// The largest response body read into the output; a larger one fails the step.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Redirects followed before the step fails.
pub const MAX_REDIRECTS: usize = 5;

/// What a header value becomes in a dry run's description.
pub const REDACTED: &str = "<redacted>";

/// How much of an unexpected response is read to quote in the error.
const EXCERPT_READ_BYTES: usize = 16 * 1024;

/// How many characters of an unexpected response the error quotes.
const EXCERPT_CHARS: usize = 200;

/// Headers a playbook may not set: `Host` would let a request for an allowlisted URL address
/// another virtual host, `Content-Length` is computed, and the rest are hop-by-hop (RFC 9110
/// §7.6.1) and belong to the connection, not the request.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Registers `http.request`.
pub fn register(actions: &mut Actions, action: Arc<HttpAction>) {
    actions.insert(NAME, action);
}

/// Bounds of one call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole call: DNS, every hop and reading the body.
    pub timeout: Duration,
    /// The largest response body accepted.
    pub max_body_bytes: usize,
    /// Redirects followed before the call fails.
    pub max_redirects: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: REQUEST_TIMEOUT,
            max_body_bytes: MAX_BODY_BYTES,
            max_redirects: MAX_REDIRECTS,
        }
    }
}

/// The `http.request` action: one HTTP request to an allowlisted host, redirects followed by
/// hand and re-checked, output `{status, json}`.
#[derive(Debug)]
pub struct HttpAction {
    allow: Vec<AllowHost>,
    limits: Limits,
}

impl HttpAction {
    /// Builds the action from `http.allow_hosts`; the error lists every bad entry.
    pub fn new(allow_hosts: &[String]) -> Result<HttpAction, String> {
        HttpAction::with_limits(allow_hosts, Limits::default())
    }

    /// Like [`HttpAction::new`] with other bounds (tests use a short timeout).
    pub fn with_limits(allow_hosts: &[String], limits: Limits) -> Result<HttpAction, String> {
        let mut allow = Vec::new();
        let mut problems = Vec::new();
        for (index, entry) in allow_hosts.iter().enumerate() {
            match AllowHost::parse(entry) {
                Ok(host) => allow.push(host),
                Err(problem) => {
                    problems.push(format!(
                        "`http.allow_hosts[{index}]` = {entry:?}: {problem}"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(HttpAction { allow, limits })
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Action for HttpAction {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            let request = Prepared::new(&call.input, &call.idempotency_key)?;
            let host = describe_host(&request.url);
            match tokio::time::timeout(self.limits.timeout, self.execute(request)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(ActionError::retryable(format!(
                    "{NAME} to `{host}` timed out after {}",
                    humantime::format_duration(self.limits.timeout)
                ))),
            }
        })
    }

    /// The request that would be sent, with header values replaced by [`REDACTED`] and
    /// credentials in the URL or secret-shaped strings in the body redacted.
    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        // The checks live mode makes before it sends: the input's shape, the headers, and the
        // allowlist for the first hop (DNS answers and redirects are only known by sending).
        let prepared = Prepared::new(input, "dry-run")?;
        self.admit(&prepared.url).map_err(ActionError::permanent)?;
        let url = match input.get("url") {
            Some(Value::String(url)) => Value::String(describe_url(url)),
            other => other.cloned().unwrap_or(Value::Null),
        };
        let headers: serde_json::Map<String, Value> = match input.get("headers") {
            Some(Value::Object(headers)) => headers
                .keys()
                .map(|name| (name.clone(), Value::from(REDACTED)))
                .collect(),
            _ => serde_json::Map::new(),
        };
        let mut body = input.get("json").cloned().unwrap_or(Value::Null);
        quench_proto::redact_value(&mut body);
        Ok(json!({
            "method": input.get("method").cloned().unwrap_or(Value::Null),
            "url": url,
            "headers": headers,
            "json": body,
        }))
    }
}

impl HttpAction {
    /// Sends the request and follows redirects; each hop is admitted before anything is sent.
    async fn execute(&self, request: Prepared) -> Result<Success, ActionError> {
        let Prepared {
            mut method,
            mut url,
            mut user_headers,
            mut body,
            idempotency_key,
            expect_status,
            secrets,
        } = request;
        let mut hop = 0;
        loop {
            let target = self.admit(&url).map_err(|refusal| {
                let message = if hop == 0 {
                    refusal
                } else {
                    format!("redirect refused: {refusal}")
                };
                ActionError::permanent(message)
            })?;
            let addresses = resolve(&target).await?;

            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            headers.insert(IDEMPOTENCY_KEY, idempotency_key.clone());
            if body.is_some() {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            for (name, value) in &user_headers {
                headers.insert(name.clone(), value.clone());
            }

            let mut client = http_client_builder()
                .timeout(self.limits.timeout)
                .connect_timeout(self.limits.timeout.min(Duration::from_secs(10)))
                // Through a proxy the proxy resolves the name, and the address check means
                // nothing; http.request always connects directly.
                .no_proxy();
            if let Host::Domain(name) = &target.host {
                client = client.resolve_to_addrs(name, &addresses);
            }
            let client = client.build().map_err(|error| {
                ActionError::permanent(format!(
                    "{NAME}: could not build the HTTP client: {}",
                    error.without_url()
                ))
            })?;
            let mut builder = client.request(method.clone(), url.clone()).headers(headers);
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            tracing::debug!(%method, host = %target.display, hop, "http.request sending");
            let response = builder
                .send()
                .await
                .map_err(|error| transport_error("HTTP", error))?;
            let status = response.status();
            tracing::debug!(%method, host = %target.display, status = status.as_u16(), "http.request response");

            let expected = expect_status
                .as_ref()
                .is_some_and(|statuses| statuses.contains(&status.as_u16()));
            let location = response.headers().get(header::LOCATION).cloned();
            let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            if let (true, false, Some(location)) = (redirect, expected, location) {
                if hop == self.limits.max_redirects {
                    return Err(ActionError::permanent(format!(
                        "{NAME} gave up after {} redirects (last from `{}`)",
                        self.limits.max_redirects, target.display
                    )));
                }
                let next = location
                    .to_str()
                    .ok()
                    .and_then(|location| url.join(location).ok())
                    .ok_or_else(|| {
                        ActionError::permanent(format!(
                            "`{}` answered {status} with a Location that is not a URL",
                            target.display
                        ))
                    })?;
                if url.scheme() == "https" && next.scheme() == "http" {
                    return Err(ActionError::permanent(format!(
                        "redirect refused: `{}` redirected from https to plain http (`{}`), \
                         which would send the request unencrypted",
                        target.display,
                        describe_host(&next)
                    )));
                }
                // 303 turns anything but GET and HEAD into a GET without a body; 301 and 302 do
                // that to POST only (the Fetch standard, what browsers do); 307 and 308 keep the
                // method and the body.
                let to_get = match status.as_u16() {
                    303 => method != Method::GET && method != Method::HEAD,
                    301 | 302 => method == Method::POST,
                    _ => false,
                };
                if to_get {
                    method = Method::GET;
                    body = None;
                    user_headers.remove(header::CONTENT_TYPE);
                }
                // The playbook wrote its headers (tokens among them) for the first host; another
                // host, even an allowlisted one, does not get them.
                if !same_origin(&url, &next) {
                    user_headers.clear();
                }
                url = next;
                hop += 1;
                continue;
            }

            let success = match &expect_status {
                Some(statuses) => statuses.contains(&status.as_u16()),
                None => status.is_success(),
            };
            if success {
                return finish(response, status, &target, self.limits.max_body_bytes).await;
            }
            return Err(unexpected(response, status, &method, &url, &secrets).await);
        }
    }

    /// Checks a URL against the rules; the refusal names the host and what to do.
    fn admit(&self, url: &Url) -> Result<Target, String> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(format!("{NAME} only speaks http and https, not `{scheme}`"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{NAME} refuses URLs with credentials (`user:password@`) for `{}`; send them in \
                 `headers` instead",
                describe_host(url)
            ));
        }
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(format!("{NAME} needs a URL with a host"));
        };
        let host = host.to_owned();
        let display = describe_host(url);
        let matching: Vec<&AllowHost> = self
            .allow
            .iter()
            .filter(|entry| entry.admits(url))
            .collect();
        if matching.is_empty() {
            if let Some(ip) = literal(&host)
                && !is_public(ip)
            {
                return Err(format!(
                    "`{display}` is an internal address (loopback, private, link-local, \
                     metadata or the like) and is refused; add exactly `{display}` to \
                     `http.allow_hosts` if {NAME} must reach it"
                ));
            }
            return Err(format!(
                "host `{display}` is not allowlisted for {NAME}; add it to `http.allow_hosts`"
            ));
        }
        let matching: Vec<&AllowHost> = if scheme == "http" {
            let exact: Vec<&AllowHost> = matching
                .into_iter()
                .filter(|entry| !entry.is_wildcard())
                .collect();
            if exact.is_empty() {
                return Err(format!(
                    "plain http to `{display}` is refused: only a wildcard entry allows it; use \
                     https or add `{display}` itself to `http.allow_hosts`"
                ));
            }
            exact
        } else {
            matching
        };
        let private = matching.iter().any(|entry| entry.is_private());
        let entry = matching
            .first()
            .map(|entry| entry.entry().to_owned())
            .unwrap_or_default();
        Ok(Target {
            host,
            port,
            private,
            entry,
            display,
        })
    }
}

/// The header that lets the far side recognise a repeated request.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A request checked for shape, not yet for its destination.
struct Prepared {
    method: Method,
    url: Url,
    /// The playbook's headers, values marked sensitive.
    user_headers: HeaderMap,
    body: Option<Vec<u8>>,
    idempotency_key: HeaderValue,
    expect_status: Option<Vec<u16>>,
    /// Header values, scrubbed from anything quoted back (a server may echo a token).
    secrets: Vec<String>,
}

impl Prepared {
    fn new(input: &Value, idempotency_key: &str) -> Result<Prepared, ActionError> {
        let request: HttpRequest = serde_path_to_error::deserialize(input).map_err(|error| {
            let path = error.path().to_string();
            // A header value is never quoted back, even when it has the wrong type.
            let message = if path.starts_with("headers") {
                format!("invalid input for {NAME} at `{path}`: header values must be strings")
            } else {
                format!("invalid input for {NAME} at `{path}`: {}", error.inner())
            };
            ActionError::permanent(message)
        })?;
        let url = Url::parse(&request.url).map_err(|error| {
            ActionError::permanent(format!("invalid `url` for {NAME}: {error}"))
        })?;
        let mut user_headers = HeaderMap::new();
        let mut secrets = Vec::new();
        let mut seen = HashSet::new();
        let mut idempotency_key = HeaderValue::from_str(idempotency_key).map_err(|_| {
            ActionError::permanent(format!(
                "{NAME}: the idempotency key is not a valid header value"
            ))
        })?;
        for (name, value) in &request.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ActionError::permanent(format!("{NAME}: `{name}` is not a valid header name"))
            })?;
            if FORBIDDEN_HEADERS.contains(&header_name.as_str()) {
                return Err(ActionError::permanent(format!(
                    "{NAME}: header `{name}` cannot be set by a playbook (`Host` comes from \
                     `url`, `Content-Length` is computed, the others are hop-by-hop)"
                )));
            }
            if !seen.insert(header_name.clone()) {
                return Err(ActionError::permanent(format!(
                    "{NAME}: header `{name}` is given twice (header names ignore case)"
                )));
            }
            let mut header_value = HeaderValue::from_str(value).map_err(|_| {
                ActionError::permanent(format!(
                    "{NAME}: header `{name}` has a value that is not a valid header value"
                ))
            })?;
            header_value.set_sensitive(true);
            secrets.push(value.to_owned());
            secrets.extend(
                value
                    .split_whitespace()
                    .filter(|part| part.len() >= 8)
                    .map(str::to_owned),
            );
            // The far side may need its own key format; the playbook's then replaces ours and,
            // like ours, follows every redirect.
            if header_name == IDEMPOTENCY_KEY {
                idempotency_key = header_value;
            } else {
                user_headers.insert(header_name, header_value);
            }
        }
        secrets.retain(|secret| secret.len() >= 4);
        // Longest first, so a value is scrubbed whole before its parts are.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        let body = request
            .json
            .as_ref()
            .map(|body| serde_json::to_vec(body).expect("a JSON value serialises"));
        Ok(Prepared {
            method: method(request.method),
            url,
            user_headers,
            body,
            idempotency_key,
            expect_status: request.expect_status,
            secrets,
        })
    }
}

fn method(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
    }
}

/// A destination that passed the allowlist.
#[derive(Debug)]
struct Target {
    host: Host<String>,
    port: u16,
    /// Some matching entry says DNS may answer with internal addresses.
    private: bool,
    /// The first matching entry, quoted in refusals.
    entry: String,
    /// `host[:port]` as the URL has it, for messages.
    display: String,
}

/// The addresses to connect to: the literal itself, or every DNS answer once checked.
async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, ActionError> {
    let name = match &target.host {
        Host::Ipv4(ip) => return Ok(vec![SocketAddr::new(IpAddr::V4(*ip), target.port)]),
        Host::Ipv6(ip) => return Ok(vec![SocketAddr::new(IpAddr::V6(*ip), target.port)]),
        Host::Domain(name) => name,
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), target.port))
        .await
        .map_err(|error| {
            ActionError::retryable(format!(
                "{NAME} could not resolve `{}`: {error}",
                target.display
            ))
        })?
        .collect();
    if addresses.is_empty() {
        return Err(ActionError::retryable(format!(
            "{NAME} could not resolve `{}`: no addresses",
            target.display
        )));
    }
    if !target.private
        && let Some(internal) = addresses.iter().find(|address| !is_public(address.ip()))
    {
        return Err(ActionError::permanent(format!(
            "`{}` resolves to the internal address {}, refused so that DNS cannot point {NAME} at \
             internal services; if it is meant to be internal, write the entry as \
             `{PRIVATE_PREFIX}{}` in `http.allow_hosts`",
            target.display,
            internal.ip(),
            target.entry
        )));
    }
    Ok(addresses)
}

/// A successful response: `{status, json}`, the body parsed and capped.
async fn finish(
    mut response: reqwest::Response,
    status: StatusCode,
    target: &Target,
    max_body_bytes: usize,
) -> Result<Success, ActionError> {
    // A declared length over the limit fails before anything is read.
    let declared_too_large = response.content_length().is_some_and(|length| {
        usize::try_from(length).map_or(true, |length| length > max_body_bytes)
    });
    let body = if declared_too_large {
        None
    } else {
        Some(
            read_capped(&mut response, max_body_bytes)
                .await
                .map_err(|error| transport_error("HTTP", error))?,
        )
    };
    let Some(body) = body.filter(|body| !body.truncated) else {
        return Err(ActionError::permanent(format!(
            "the response from `{}` ({status}) is larger than {max_body_bytes} bytes, the most \
             {NAME} reads",
            target.display
        )));
    };
    let mut parsed = if body.bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&body.bytes) {
            Ok(parsed) => parsed,
            Err(_) => json!({"text": String::from_utf8_lossy(&body.bytes)}),
        }
    };
    quench_proto::redact_value(&mut parsed);
    Ok(Success::new(
        json!({"status": status.as_u16(), "json": parsed}),
    ))
}

/// A status the playbook did not expect: 408, 429 and 5xx are worth retrying (with the far
/// side's `Retry-After`), anything else is permanent. The message quotes a short excerpt of the
/// body with secret-shaped strings and the request's header values removed.
async fn unexpected(
    mut response: reqwest::Response,
    status: StatusCode,
    method: &Method,
    url: &Url,
    secrets: &[String],
) -> ActionError {
    let retry_after = retry_after(response.headers());
    let excerpt = match read_capped(&mut response, EXCERPT_READ_BYTES).await {
        Ok(body) => excerpt(&body.bytes, secrets),
        Err(_) => String::new(),
    };
    // The host only: a path can be a credential itself (Slack webhook URLs are).
    let mut message = format!("{method} `{}` returned {status}", describe_host(url));
    if !excerpt.is_empty() {
        message.push_str(": ");
        message.push_str(&excerpt);
    }
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        ActionError::Retryable {
            message,
            retry_after,
        }
    } else {
        ActionError::permanent(message)
    }
}

struct Body {
    bytes: Vec<u8>,
    /// The body went on past the limit; `bytes` holds the first `limit` bytes.
    truncated: bool,
}

/// Reads the body until it ends or passes `limit` bytes, and keeps at most `limit` of them.
async fn read_capped(response: &mut reqwest::Response, limit: usize) -> reqwest::Result<Body> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Body {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Body {
        bytes,
        truncated: false,
    })
}

/// One line of at most [`EXCERPT_CHARS`] characters. Secrets are removed before it is cut, so a
/// cut cannot leave half a secret that no longer matches.
fn excerpt(bytes: &[u8], secrets: &[String]) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    for secret in secrets {
        text = text.replace(secret.as_str(), REDACTED);
    }
    let text = quench_proto::redact_str(&text).into_owned();
    let single_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|character| !character.is_control())
        .collect();
    let mut cut: String = single_line.chars().take(EXCERPT_CHARS).collect();
    if cut.len() < single_line.len() {
        cut.push('…');
    }
    cut
}

fn literal(host: &Host<String>) -> Option<IpAddr> {
    match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        Host::Domain(_) => None,
    }
}

/// `host[:port]` of a URL, without credentials, path or query.
fn describe_host(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The URL for a dry run: credentials replaced, secret-shaped strings redacted.
fn describe_url(text: &str) -> String {
    let Ok(mut url) = Url::parse(text) else {
        return quench_proto::redact_str(text).into_owned();
    };
    if !url.username().is_empty() {
        // Only fails for URLs that cannot have credentials, which this one has.
        let _ = url.set_username("redacted");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("redacted"));
    }
    quench_proto::redact_str(url.as_str()).into_owned()
}

/// Same scheme, host and port: the headers written for one may go to the other.
fn same_origin(from: &Url, to: &Url) -> bool {
    from.scheme() == to.scheme()
        && from.host() == to.host()
        && from.port_or_known_default() == to.port_or_known_default()
}

/// Whether an address is reachable on the public internet. Everything else — loopback, private
/// (RFC 1918, unique local), link-local (and with it cloud metadata at 169.254.169.254),
/// unspecified, multicast, carrier-grade NAT, reserved, documentation and benchmarking ranges —
/// is internal. IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4) are
/// judged by that address.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let internal = a == 0 // "this network", 0.0.0.0 among it
        || a == 10
        || a == 127
        || (a == 100 && (64..=127).contains(&b)) // carrier-grade NAT
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..=31).contains(&b))
        || (a == 192 && b == 0 && (c == 0 || c == 2)) // protocol assignments, TEST-NET-1
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !internal
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    let internal = segments[0] == 0 // the rest of ::/16: reserved
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] & 0xff00) == 0xff00 // multicast
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x2001 && segments[1] == 0) // Teredo
        || (segments[0] == 0x0100 && segments[1..4] == [0, 0, 0]) // discard-only
        || (segments[0] == 0x0064 && segments[1] == 0xff9b && segments[2] == 1); // local NAT64
    !internal
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// IPv4-translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:AABB:CCDD::`)
/// address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    let octets = ip.octets();
    let tail = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    match segments {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, _, _, _, _, _, _, _] => {
            Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for internal in [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
        ] {
            let ip: IpAddr = internal.parse().expect("an address");
            assert!(!is_public(ip), "{internal} counted as public");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            let ip: IpAddr = public.parse().expect("an address");
            assert!(is_public(ip), "{public} counted as internal");
        }
    }

    #[test]
    fn excerpt_scrubs_before_cutting() {
        let secret = "s3cr3t-t0ken-value".to_owned();
        let body = format!("{}{}", "x".repeat(EXCERPT_CHARS - 5), secret);
        let quoted = excerpt(body.as_bytes(), std::slice::from_ref(&secret));
        assert!(!quoted.contains("s3cr3"), "{quoted}");
    }
}
