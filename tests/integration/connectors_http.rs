//! The `http.request` connector against small axum servers on 127.0.0.1: the request as the far
//! side sees it, the allowlist and address checks (nothing reaches a refused host), redirects,
//! failure classification, the body cap, and that header values never come back in errors.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use quench_runner::connectors::http::{HttpAction, Limits};
use quench_runner::engine::{Action, ActionError, Call, Success};
use serde_json::{Value, json};

/// A secret-looking header value: it must never appear in an error.
const TOKEN: &str = "Bearer hunter2-very-secret-token";

/// One request a fake server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A server on 127.0.0.1 that records every request and answers by path:
/// `/echo` (200, `{"method", "body"}`), `/created` (201), `/status/<code>`, `/rate-limited`
/// (429, `Retry-After: 7`), `/slow` (5 s), `/big` (2 MiB), `/big-stream` (2 MiB, chunked),
/// `/text`, `/empty`, `/echo-auth` (401 quoting `Authorization`),
/// `/redirect/<status>?<target>` and `/loop` (redirects to itself).
#[derive(Debug, Clone)]
struct Fake {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start() -> Fake {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        let app = Router::new().fallback(answer).with_state(seen.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake server runs");
        });
        Fake { address, seen }
    }

    /// `127.0.0.1:<port>`, as an allowlist entry.
    fn authority(&self) -> String {
        self.address.to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn answer(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Seen {
            method: method.to_string(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
        });
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match path.as_str() {
        "/echo" => axum::Json(json!({"method": method.as_str(), "body": sent})).into_response(),
        "/created" => (StatusCode::CREATED, axum::Json(json!({"id": 1}))).into_response(),
        "/rate-limited" => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "7")],
            "slow down",
        )
            .into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({"late": true})).into_response()
        }
        "/big" => vec![b'x'; 2 * 1024 * 1024].into_response(),
        "/big-stream" => {
            let chunks = (0..32).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 64 * 1024]));
            Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        "/text" => "plain words".into_response(),
        "/empty" => StatusCode::NO_CONTENT.into_response(),
        "/echo-auth" => {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            let token = authorization.trim_start_matches("Bearer ");
            (
                StatusCode::UNAUTHORIZED,
                format!("{{\"error\": \"bad credentials {authorization}; token {token}\"}}"),
            )
                .into_response()
        }
        "/loop" => (StatusCode::FOUND, [(header::LOCATION, "/loop")]).into_response(),
        _ => {
            if let Some(code) = path.strip_prefix("/status/") {
                let status = code
                    .parse::<u16>()
                    .ok()
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .unwrap_or(StatusCode::BAD_REQUEST);
                (status, format!("status {code} from the fake")).into_response()
            } else if let Some(code) = path.strip_prefix("/redirect/") {
                let status = code
                    .parse::<u16>()
                    .ok()
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .unwrap_or(StatusCode::FOUND);
                let target = uri.query().unwrap_or("/echo").to_owned();
                (status, [(header::LOCATION, target)]).into_response()
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        }
    }
}

fn action(allow_hosts: &[String]) -> HttpAction {
    HttpAction::new(allow_hosts).expect("valid allowlist")
}

fn call(input: Value) -> Call {
    Call {
        action: "http.request".to_owned(),
        input,
        idempotency_key: "run-1/notify/0".to_owned(),
        run_id: "run-1".to_owned(),
        step: "notify".to_owned(),
        iteration: 0,
        attempt: 1,
    }
}

async fn run(action: &HttpAction, input: Value) -> Result<Success, ActionError> {
    action.call(&call(input)).await
}

fn permanent(result: Result<Success, ActionError>) -> String {
    match result {
        Err(ActionError::Permanent { message }) => {
            assert!(
                !message.contains("hunter2"),
                "a header value leaked: {message}"
            );
            message
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

fn retryable(result: Result<Success, ActionError>) -> (String, Option<Duration>) {
    match result {
        Err(ActionError::Retryable {
            message,
            retry_after,
        }) => {
            assert!(
                !message.contains("hunter2"),
                "a header value leaked: {message}"
            );
            (message, retry_after)
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|value| value.to_str().ok())
}

#[tokio::test]
async fn sends_json_headers_and_the_idempotency_key() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    let success = run(
        &http,
        json!({
            "method": "POST",
            "url": fake.url("/echo"),
            "headers": {"Authorization": TOKEN, "X-Team": "security"},
            "json": {"key_id": "key_abc", "reason": "leaked"},
        }),
    )
    .await
    .expect("the request succeeds");
    assert_eq!(
        success.output,
        json!({
            "status": 200,
            "json": {"method": "POST", "body": {"key_id": "key_abc", "reason": "leaked"}},
        })
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/echo")
    );
    assert_eq!(header(request, "idempotency-key"), Some("run-1/notify/0"));
    assert_eq!(header(request, "authorization"), Some(TOKEN));
    assert_eq!(header(request, "x-team"), Some("security"));
    assert_eq!(header(request, "content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&request.body).expect("a JSON body"),
        json!({"key_id": "key_abc", "reason": "leaked"})
    );
}

#[tokio::test]
async fn a_playbook_idempotency_key_replaces_ours() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    run(
        &http,
        json!({
            "method": "POST",
            "url": fake.url("/echo"),
            "headers": {"idempotency-key": "0b7c6f1e-5f0e-4c2a-9d8e-1a2b3c4d5e6f"},
        }),
    )
    .await
    .expect("the request succeeds");
    let seen = fake.seen();
    let values: Vec<&str> = seen[0]
        .headers
        .get_all("idempotency-key")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    assert_eq!(values, ["0b7c6f1e-5f0e-4c2a-9d8e-1a2b3c4d5e6f"]);
}

#[tokio::test]
async fn bodies_that_are_not_json_come_back_as_text_or_null() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    for (path, expected) in [
        (
            "/text",
            json!({"status": 200, "json": {"text": "plain words"}}),
        ),
        ("/empty", json!({"status": 204, "json": null})),
    ] {
        let success = run(&http, json!({"method": "GET", "url": fake.url(path)}))
            .await
            .expect("the request succeeds");
        assert_eq!(success.output, expected, "{path}");
    }
}

#[tokio::test]
async fn expect_status_decides_what_succeeds() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    let created = run(
        &http,
        json!({"method": "POST", "url": fake.url("/created"), "expect_status": [201]}),
    )
    .await
    .expect("201 is expected");
    assert_eq!(created.output, json!({"status": 201, "json": {"id": 1}}));

    let gone = run(
        &http,
        json!({"method": "DELETE", "url": fake.url("/status/404"), "expect_status": [204, 404]}),
    )
    .await
    .expect("404 is expected");
    assert_eq!(gone.output["status"], json!(404));

    let message = permanent(
        run(
            &http,
            json!({"method": "POST", "url": fake.url("/created"), "expect_status": [200]}),
        )
        .await,
    );
    assert!(message.contains("201"), "{message}");

    let message = permanent(
        run(
            &http,
            json!({"method": "GET", "url": fake.url("/status/403")}),
        )
        .await,
    );
    assert!(
        message.contains("403") && message.contains("status 403 from the fake"),
        "{message}"
    );
}

#[tokio::test]
async fn hosts_off_the_allowlist_are_refused_before_anything_is_sent() {
    let allowed = Fake::start().await;
    let other = Fake::start().await;
    let http = action(&[allowed.authority(), "hooks.example.com".to_owned()]);
    let cases = [
        // The allowlisted address on another port: an unlisted loopback literal.
        (other.url("/echo"), "internal address"),
        (
            "https://unlisted.example.com/hook".to_owned(),
            "not allowlisted",
        ),
        (
            "https://hooks.example.com:8443/hook".to_owned(),
            "not allowlisted",
        ),
        (
            "ftp://hooks.example.com/file".to_owned(),
            "only speaks http and https",
        ),
        (
            "file:///etc/passwd".to_owned(),
            "only speaks http and https",
        ),
    ];
    for (url, expected) in cases {
        let message = permanent(
            run(
                &http,
                json!({"method": "POST", "url": url, "headers": {"Authorization": TOKEN}}),
            )
            .await,
        );
        assert!(message.contains(expected), "{url}: {message}");
        if expected != "only speaks http and https" {
            assert!(message.contains("http.allow_hosts"), "{url}: {message}");
        }
    }
    assert!(other.seen().is_empty(), "a refused host got a request");
    assert!(allowed.seen().is_empty());
}

#[tokio::test]
async fn internal_address_literals_are_refused_unless_allowlisted() {
    let fake = Fake::start().await;
    let port = fake.address.port();
    // Allowlisted as a name and a wildcard, never as these literals.
    let http = action(&["hooks.example.com".to_owned(), "*.example.net".to_owned()]);
    for host in [
        "127.0.0.1".to_owned(),
        "127.1".to_owned(),
        "2130706433".to_owned(),
        "0.0.0.0".to_owned(),
        "10.0.0.1".to_owned(),
        "172.16.5.4".to_owned(),
        "192.168.0.10".to_owned(),
        "169.254.169.254".to_owned(),
        "100.64.0.1".to_owned(),
        "224.0.0.1".to_owned(),
        "[::1]".to_owned(),
        "[::]".to_owned(),
        "[::ffff:127.0.0.1]".to_owned(),
        "[::ffff:169.254.169.254]".to_owned(),
        "[fd00::1]".to_owned(),
        "[fe80::1]".to_owned(),
    ] {
        for url in [
            format!("http://{host}:{port}/echo"),
            format!("https://{host}/latest/meta-data/"),
        ] {
            let message = permanent(run(&http, json!({"method": "GET", "url": url})).await);
            assert!(
                message.contains("internal address") && message.contains("http.allow_hosts"),
                "{url}: {message}"
            );
        }
    }
    assert!(fake.seen().is_empty());

    // The literal itself on the allowlist is what opens it.
    let http = action(&[fake.authority()]);
    run(&http, json!({"method": "GET", "url": fake.url("/echo")}))
        .await
        .expect("an allowlisted literal is reachable");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn names_that_resolve_to_internal_addresses_need_private() {
    let fake = Fake::start().await;
    let port = fake.address.port();
    let url = format!("http://localhost:{port}/echo");

    let http = action(&[format!("localhost:{port}")]);
    let message = permanent(run(&http, json!({"method": "GET", "url": url})).await);
    assert!(
        message.contains("resolves to the internal address")
            && message.contains(&format!("private:localhost:{port}")),
        "{message}"
    );
    assert!(fake.seen().is_empty());

    let http = action(&[format!("private:localhost:{port}")]);
    let success = run(&http, json!({"method": "GET", "url": url}))
        .await
        .expect("an entry marked private may resolve to loopback");
    assert_eq!(success.output["status"], json!(200));
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn credentials_in_the_url_and_plain_http_through_a_wildcard_are_refused() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority(), "*.example.com".to_owned()]);
    let with_credentials = format!("http://admin:hunter2-password@{}/echo", fake.address);
    let message = permanent(run(&http, json!({"method": "GET", "url": with_credentials})).await);
    assert!(message.contains("credentials"), "{message}");
    let message = permanent(
        run(
            &http,
            json!({"method": "GET", "url": format!("http://hunter2-user@{}/echo", fake.address)}),
        )
        .await,
    );
    assert!(message.contains("credentials"), "{message}");
    assert!(fake.seen().is_empty());

    let message = permanent(
        run(
            &http,
            json!({"method": "GET", "url": "http://hooks.example.com/x"}),
        )
        .await,
    );
    assert!(message.contains("plain http"), "{message}");
}

#[tokio::test]
async fn host_and_hop_by_hop_headers_are_refused() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    for name in [
        "Host",
        "connection",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Content-Length",
    ] {
        let message = permanent(
            run(
                &http,
                json!({"method": "GET", "url": fake.url("/echo"), "headers": {name: "hunter2-value"}}),
            )
            .await,
        );
        assert!(message.contains(name), "{name}: {message}");
    }
    let message = permanent(
        run(
            &http,
            json!({"method": "GET", "url": fake.url("/echo"), "headers": {"X-Bad": "hunter2\nInjected: 1"}}),
        )
        .await,
    );
    assert!(message.contains("X-Bad"), "{message}");
    let message = permanent(
        run(
            &http,
            json!({"method": "GET", "url": fake.url("/echo"), "headers": {"X-Number": 12345}}),
        )
        .await,
    );
    assert!(
        message.contains("headers") && !message.contains("12345"),
        "{message}"
    );
    assert!(fake.seen().is_empty());
}

#[tokio::test]
async fn redirects_inside_the_allowlist_are_followed() {
    let first = Fake::start().await;
    let second = Fake::start().await;
    let http = action(&[first.authority(), second.authority()]);
    let body = json!({"key_id": "key_abc"});
    // (status, method after the redirect, body kept)
    for (status, method, kept) in [
        (307, "POST", true),
        (308, "POST", true),
        (301, "GET", false),
        (302, "GET", false),
        (303, "GET", false),
    ] {
        let success = run(
            &http,
            json!({
                "method": "POST",
                "url": first.url(&format!("/redirect/{status}?{}", second.url("/echo"))),
                "headers": {"Authorization": TOKEN},
                "json": body,
            }),
        )
        .await
        .expect("an allowlisted redirect is followed");
        let expected_body = if kept { body.clone() } else { Value::Null };
        assert_eq!(
            success.output,
            json!({"status": 200, "json": {"method": method, "body": expected_body}}),
            "{status}"
        );
        let seen = second.seen();
        let last = seen.last().expect("the second server was reached");
        assert_eq!(header(last, "idempotency-key"), Some("run-1/notify/0"));
        // Another origin does not get the headers written for the first.
        assert_eq!(header(last, "authorization"), None, "{status}");
    }
    assert_eq!(first.seen().len(), 5);

    // PUT and DELETE keep their method through 301 and 302, as in browsers.
    let success = run(
        &http,
        json!({"method": "DELETE", "url": first.url(&format!("/redirect/302?{}", second.url("/echo")))}),
    )
    .await
    .expect("followed");
    assert_eq!(success.output["json"]["method"], json!("DELETE"));

    // A redirect on the same origin keeps the headers.
    let success = run(
        &http,
        json!({"method": "GET", "url": first.url("/redirect/302?/echo"), "headers": {"Authorization": TOKEN}}),
    )
    .await
    .expect("followed");
    assert_eq!(success.output["status"], json!(200));
    let seen = first.seen();
    let last = seen.last().expect("reached");
    assert_eq!(
        (last.path.as_str(), header(last, "authorization")),
        ("/echo", Some(TOKEN))
    );
}

#[tokio::test]
async fn a_redirect_that_leaves_the_allowlist_is_refused() {
    let allowed = Fake::start().await;
    let outside = Fake::start().await;
    let http = action(&[allowed.authority()]);
    for target in [
        outside.url("/echo"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "https://evil.example.org/".to_owned(),
    ] {
        let message = permanent(
            run(
                &http,
                json!({
                    "method": "POST",
                    "url": allowed.url(&format!("/redirect/307?{target}")),
                    "headers": {"Authorization": TOKEN},
                    "json": {"secret": "payload"},
                }),
            )
            .await,
        );
        assert!(
            message.starts_with("redirect refused") && message.contains("http.allow_hosts"),
            "{target}: {message}"
        );
    }
    assert!(
        outside.seen().is_empty(),
        "the redirect target got a request"
    );
    assert_eq!(allowed.seen().len(), 3);

    // A redirect status the playbook expects is an answer, not a hop.
    let success = run(
        &http,
        json!({
            "method": "GET",
            "url": allowed.url(&format!("/redirect/302?{}", outside.url("/echo"))),
            "expect_status": [302],
        }),
    )
    .await
    .expect("302 is expected");
    assert_eq!(success.output["status"], json!(302));
    assert!(outside.seen().is_empty());
}

#[tokio::test]
async fn at_most_five_redirects_are_followed() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    let message = permanent(run(&http, json!({"method": "GET", "url": fake.url("/loop")})).await);
    assert!(message.contains("5 redirects"), "{message}");
    assert_eq!(fake.seen().len(), 6, "the first request and five redirects");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retryable() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    let (message, retry_after) = retryable(
        run(
            &http,
            json!({"method": "POST", "url": fake.url("/rate-limited")}),
        )
        .await,
    );
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(message.contains("429"), "{message}");

    for code in [500, 502, 503] {
        let (message, retry_after) = retryable(
            run(
                &http,
                json!({"method": "POST", "url": fake.url(&format!("/status/{code}"))}),
            )
            .await,
        );
        assert!(message.contains(&code.to_string()), "{message}");
        assert_eq!(retry_after, None);
    }
}

#[tokio::test]
async fn a_slow_server_is_a_retryable_timeout() {
    let fake = Fake::start().await;
    let http = HttpAction::with_limits(
        &[fake.authority()],
        Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .expect("valid allowlist");
    let started = std::time::Instant::now();
    let (message, _) =
        retryable(run(&http, json!({"method": "GET", "url": fake.url("/slow")})).await);
    assert!(message.contains("timed out"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout did not apply"
    );
}

#[tokio::test]
async fn a_closed_port_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let http = action(&[address.to_string()]);
    let (message, _) = retryable(
        run(
            &http,
            json!({"method": "GET", "url": format!("http://{address}/")}),
        )
        .await,
    );
    assert!(message.contains("connect"), "{message}");
}

#[tokio::test]
async fn oversized_bodies_are_permanent() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    for path in ["/big", "/big-stream"] {
        let message = permanent(run(&http, json!({"method": "GET", "url": fake.url(path)})).await);
        assert!(
            message.contains("larger than 1048576 bytes"),
            "{path}: {message}"
        );
    }
}

#[tokio::test]
async fn header_values_echoed_by_the_server_are_not_quoted() {
    let fake = Fake::start().await;
    let http = action(&[fake.authority()]);
    let message = permanent(
        run(
            &http,
            json!({"method": "POST", "url": fake.url("/echo-auth"), "headers": {"Authorization": TOKEN}}),
        )
        .await,
    );
    assert!(
        message.contains("401") && message.contains("bad credentials"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");

    // Secret-shaped strings are redacted too, whatever header carried them.
    let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    let message = permanent(
        run(
            &http,
            json!({"method": "POST", "url": fake.url("/echo-auth"), "headers": {"Authorization": format!("Bearer {key}")}}),
        )
        .await,
    );
    assert!(!message.contains("abcdefghijklmnop"), "{message}");
}

#[tokio::test]
async fn describe_shows_the_request_without_header_values() {
    let http = action(&["hooks.example.com".to_owned()]);
    let input = json!({
        "method": "POST",
        "url": "https://hooks.example.com/revoke?key=key_abc",
        "headers": {"Authorization": TOKEN, "X-Team": "security"},
        "json": {"key_id": "key_abc", "leaked": "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"},
    });
    assert_eq!(
        http.describe(&input),
        Ok(json!({
            "method": "POST",
            "url": "https://hooks.example.com/revoke?key=key_abc",
            "headers": {"Authorization": "<redacted>", "X-Team": "<redacted>"},
            "json": {"key_id": "key_abc", "leaked": "sk-proj-[REDACTED]...6789"},
        }))
    );
    assert_eq!(
        http.describe(&json!({"method": "GET", "url": "https://hooks.example.com/"})),
        Ok(
            json!({"method": "GET", "url": "https://hooks.example.com/", "headers": {}, "json": null})
        )
    );
}

#[tokio::test]
async fn describe_refuses_what_live_mode_refuses_before_sending() {
    let http = action(&["hooks.example.com".to_owned()]);
    for (input, wanted) in [
        (
            json!({"method": "GET", "url": "https://deploy:hunter2@hooks.example.com/"}),
            "refuses URLs with credentials",
        ),
        (
            json!({"method": "GET", "url": "https://elsewhere.example.com/"}),
            "is not allowlisted",
        ),
        (
            json!({"method": "GET", "url": "http://169.254.169.254/latest"}),
            "is an internal address",
        ),
        (
            json!({"method": "GET", "url": "https://hooks.example.com/", "headers": {"Host": "x"}}),
            "cannot be set by a playbook",
        ),
        (json!({"method": "GET"}), "missing field `url`"),
    ] {
        let refused = http.describe(&input);
        match &refused {
            Err(ActionError::Permanent { message }) => {
                assert!(message.contains(wanted), "{message}");
                assert!(!message.contains("hunter2"), "{message}");
            }
            other => panic!("{input} should be refused with {wanted:?}, got {other:?}"),
        }
    }
}

#[test]
fn the_allowlist_is_validated_and_every_problem_reported() {
    let error = HttpAction::new(&[
        "hooks.example.com".to_owned(),
        "https://hooks.example.com/".to_owned(),
        "*.com".to_owned(),
        "10.0.0.1:99999".to_owned(),
        "::1".to_owned(),
    ])
    .expect_err("bad entries");
    for expected in [
        "http.allow_hosts[1]",
        "http.allow_hosts[2]",
        "http.allow_hosts[3]",
        "http.allow_hosts[4]",
    ] {
        assert!(error.contains(expected), "{error}");
    }
    assert!(!error.contains("http.allow_hosts[0]"), "{error}");
    HttpAction::new(&[
        "hooks.example.com".to_owned(),
        "*.example.com:8443".to_owned(),
        "private:vault.corp.internal:8200".to_owned(),
        "[fd00::1]:8080".to_owned(),
    ])
    .expect("valid entries");
}

#[test]
fn registers_as_http_request() {
    let mut actions = quench_runner::engine::Actions::new();
    quench_runner::connectors::http::register(
        &mut actions,
        Arc::new(action(&["hooks.example.com".to_owned()])),
    );
    assert!(actions.get("http.request").is_some());
}
