//! The web console of a real `quench serve`: sign-in with a token (and the login link's
//! fragment), the session cookie's attributes, CSRF and cross-origin refusals, the policy
//! headers, the approval inbox per person, a viewer who cannot write, sign-out — over HTTP, and
//! in a real Chromium (Debian's `chromium` and `chromedriver`, which `tests/run` installs)
//! driven over WebDriver: sign in with the login link, answer a gate from the inbox and see the
//! run go on, find the run by its key and read its timeline, a hostile finding title shown as
//! text, a viewer with no write control, sign-out. Screenshots of each view are written to
//! `target/console-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{NatsServer, Service, free_port, hex, root};

const WAIT: Duration = Duration::from_secs(20);

/// (token, name, role).
const TOKENS: [(&str, &str, &str); 4] = [
    ("t-viewer", "viewer@example.com", "viewer"),
    ("t-ann", "ann@example.com", "approver"),
    ("t-bob", "bob@example.com", "approver"),
    ("t-admin", "admin-bot", "admin"),
];

const GATE_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: gate
on:
  finding:
    kinds: [test.gate]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [ann@example.com]
      question: Revoke this key?
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: keep
  - id: bye
    uses: note
    with:
      message: "{{ steps.decide.choice }}"
"#;

/// A playbook with a typo in an action's name: refused at load, fixed in the editor.
const BROKEN_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: broken
on:
  finding:
    kinds: [test.broken]
steps:
  - id: say
    uses: notte
    with:
      message: hello
"#;

/// Calls a host that is not allowlisted: fails for good, every time (restarted from the page).
const FAILING_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: failing
on:
  finding:
    kinds: [test.failing]
steps:
  - id: call
    uses: http.request
    with:
      method: GET
      url: https://blocked.example.com/hook
"#;

/// The fixed `broken` playbook's offline test, run from the editor before applying.
const BROKEN_TESTS: &str = r#"schema: quench.playbook-test/v1
playbook: ../broken.yaml
finding:
  kind: test.broken
  severity: high
  title: a key
  source: { scanner: test }
  resource: { provider: openai, type: api_key, id: key_t, project_id: proj_1 }
cases:
  - name: says hello
    expect:
      status: completed
      steps: { say: succeeded }
"#;

/// What a hostile publisher puts in a title: markup that would run if parsed as HTML.
const HOSTILE_TITLE: &str = "<img src=x onerror=\"document.title='owned'\"> leaked key";

struct Console {
    _nats: NatsServer,
    service: Service,
    client: async_nats::Client,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Console {
    async fn start() -> Console {
        Console::start_at(format!("127.0.0.1:{}", free_port()), "").await
    }

    /// On a given API listener, with more config after the tokens.
    async fn start_at(listen: String, more_config: &str) -> Console {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let playbooks = dir.path().join("playbooks");
        std::fs::create_dir(&playbooks).expect("playbook dir");
        std::fs::write(playbooks.join("gate.yaml"), GATE_PLAYBOOK).expect("write playbook");
        std::fs::write(playbooks.join("broken.yaml"), BROKEN_PLAYBOOK).expect("write playbook");
        std::fs::write(playbooks.join("failing.yaml"), FAILING_PLAYBOOK).expect("write playbook");
        std::fs::create_dir(playbooks.join("tests")).expect("tests dir");
        std::fs::write(playbooks.join("tests/broken.yaml"), BROKEN_TESTS).expect("write tests");
        let mut config = String::new();
        for (token, name, role) in TOKENS {
            let sha = hex(&Sha256::digest(token.as_bytes()));
            config.push_str(&format!(
                "[[api.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{sha}\"\n\n"
            ));
        }
        config.push_str(more_config);
        let service = Service::launch_at(
            listen,
            &nats.url(),
            &playbooks,
            dir.path(),
            &[],
            Some(&config),
            &[],
        );
        let client = async_nats::connect(nats.url()).await.expect("connects");
        quench_common::http::install_crypto_provider();
        Console {
            _nats: nats,
            service,
            client,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.service.listen)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the service answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// Signs in with a token; returns the cookie pair to send and the CSRF token.
    async fn sign_in(&self, token: &str) -> (String, String) {
        let answer = self
            .send(
                self.http
                    .post(self.url("/console/session"))
                    .json(&json!({"token": token})),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let set = answer.headers["set-cookie"].to_str().expect("ascii");
        let pair = set.split(';').next().expect("pair").to_owned();
        let csrf = answer.body["csrf"].as_str().expect("csrf").to_owned();
        (pair, csrf)
    }

    async fn publish(&self, id: &str, key_id: &str, title: &str) {
        self.publish_kind("test.gate", id, key_id, title).await;
    }

    async fn publish_kind(&self, kind: &str, id: &str, key_id: &str, title: &str) {
        let finding = json!({
            "schema": "quench.finding/v1", "id": id, "kind": kind, "severity": "high",
            "key": format!("openai:key:{key_id}"),
            "title": title, "detected_at": "2026-11-20T10:00:00Z", "source": {"scanner": "test"},
            "resource": {"provider": "openai", "type": "api_key", "id": key_id, "project_id": "proj_1"}
        });
        async_nats::jetstream::new(self.client.clone())
            .publish(
                format!("quench.findings.{kind}"),
                finding.to_string().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
    }

    async fn api(&self, path: &str, token: &str) -> Value {
        let answer = self
            .send(self.http.get(self.url(path)).bearer_auth(token))
            .await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        answer.body
    }

    /// Waits until the run of `key` has `status`; returns it.
    async fn run_of(&self, key: &str, status: &str) -> Value {
        let started = std::time::Instant::now();
        loop {
            let runs = self
                .api(&format!("/api/v1/runs?key={key}"), "t-admin")
                .await;
            if let Some(run) = runs["runs"]
                .as_array()
                .and_then(|runs| runs.iter().find(|run| run["status"] == status))
            {
                return run.clone();
            }
            assert!(
                started.elapsed() < WAIT,
                "no {status} run of {key}:\n{}",
                self.service.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_and_the_inbox_over_http() {
    let console = Console::start().await;
    console.publish("f-1", "key_http", "a leaked key").await;
    let run = console.run_of("openai:key:key_http", "waiting").await;
    let run_id = run["id"].as_str().expect("id");

    // The page and its assets carry the policy headers; nothing is fetched from elsewhere.
    for (path, content_type) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let answer = console.send(console.http.get(console.url(path))).await;
        assert_eq!(answer.status, 200, "{path}");
        let header = |name: &str| answer.headers[name].to_str().expect("ascii").to_owned();
        assert!(header("content-type").starts_with(content_type), "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("x-frame-options"), "DENY");
    }
    let page = reqwest::get(console.url("/"))
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );

    // Not signed in: the session says so, and the API refuses.
    let whoami = console
        .send(console.http.get(console.url("/console/session")))
        .await;
    assert_eq!(whoami.body["signed_in"], false);
    assert_eq!(whoami.body["methods"], json!(["token"]));
    // One audit chain: the audit page offers no partition to pick, and the API knows only 0.
    assert_eq!(whoami.body["partitions"], 1);
    console.api("/api/v1/audit?partition=0", "t-viewer").await;
    let other = console
        .send(
            console
                .http
                .get(console.url("/api/v1/audit/export?before=2&partition=1"))
                .bearer_auth("t-viewer"),
        )
        .await;
    assert_eq!(
        (other.status, &other.body["error"]["code"]),
        (404, &json!("no_such_partition")),
        "{}",
        other.body
    );
    let inbox = console
        .send(console.http.get(console.url("/api/v1/inbox")))
        .await;
    assert_eq!(inbox.status, 401);

    // A wrong token, a body that is not one, and a sign-in from another site are refused.
    for (body, origin, status) in [
        (json!({"token": "nope"}), None, 401),
        (json!({"token": 7}), None, 400),
        (json!({"token": "t-ann", "extra": 1}), None, 400),
        (
            json!({"token": "t-ann"}),
            Some("http://evil.example.com"),
            403,
        ),
    ] {
        let mut request = console
            .http
            .post(console.url("/console/session"))
            .json(&body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let answer = console.send(request).await;
        assert_eq!(answer.status, status, "{body} {origin:?}: {}", answer.body);
        assert!(answer.headers.get("set-cookie").is_none());
    }

    // Ann signs in: the cookie is HttpOnly and SameSite=Strict (not Secure: loopback).
    let answer = console
        .send(
            console
                .http
                .post(console.url("/console/session"))
                .json(&json!({"token": "t-ann"})),
        )
        .await;
    let set = answer.headers["set-cookie"].to_str().expect("ascii");
    assert!(set.starts_with("quench_session="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    assert_eq!(answer.body["person"], "ann@example.com");
    assert_eq!(answer.body["role"], "approver");
    let (cookie, csrf) = console.sign_in("t-ann").await;

    // Her inbox holds the gate, with what an approver needs to answer it.
    let inbox = console
        .send(
            console
                .http
                .get(console.url("/api/v1/inbox"))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(inbox.status, 200, "{}", inbox.body);
    assert_eq!(inbox.body["person"], "ann@example.com");
    assert_eq!(inbox.body["count"], 1);
    let gate = &inbox.body["gates"][0];
    assert_eq!(gate["run_id"], run_id);
    assert_eq!(gate["gate"], "decide");
    assert_eq!(gate["question"], "Revoke this key?");
    assert_eq!(gate["choices"], json!(["revoke", "keep"]));
    assert_eq!(gate["finding_title"], "a leaked key");
    assert_eq!(gate["key"], "openai:key:key_http");
    assert_eq!(gate["on_timeout"], "keep");
    // Bob is nobody's approver here: his inbox is empty.
    let bob = console.api("/api/v1/inbox", "t-bob").await;
    assert_eq!(bob["count"], 0);

    let decision = console.url(&format!("/api/v1/runs/{run_id}/gates/decide/decision"));
    // A write with the cookie but without the CSRF token, or with another, is refused before
    // the engine sees it: the gate stays open and nothing is audited.
    for token in [None, Some("forged"), Some("")] {
        let mut request = console
            .http
            .post(&decision)
            .header("cookie", &cookie)
            .json(&json!({"choice": "revoke"}));
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        let answer = console.send(request).await;
        assert_eq!(answer.status, 403, "{token:?}: {}", answer.body);
        assert_eq!(answer.body["error"]["code"], "csrf");
    }
    let audit = console
        .api("/api/v1/audit?kind=decision&limit=100", "t-admin")
        .await;
    assert_eq!(
        audit["entries"].as_array().expect("entries").len(),
        0,
        "{audit}"
    );

    // With it, the answer is Ann's, through the console.
    let answer = console
        .send(
            console
                .http
                .post(&decision)
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&json!({"choice": "revoke"})),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["outcome"], "decided");
    console.run_of("openai:key:key_http", "completed").await;
    let detail = console
        .api(&format!("/api/v1/runs/{run_id}"), "t-admin")
        .await;
    let step = detail["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|step| step["id"] == "decide")
        .expect("decide")
        .clone();
    assert_eq!(step["decided_by"], json!(["ann@example.com"]));
    assert_eq!(step["via"], "console");
    let inbox = console
        .send(
            console
                .http
                .get(console.url("/api/v1/inbox"))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(inbox.body["count"], 0);

    // A viewer's session reads but cannot write, whatever the page shows.
    console.publish("f-2", "key_viewer", "another").await;
    let run = console.run_of("openai:key:key_viewer", "waiting").await;
    let (viewer_cookie, viewer_csrf) = console.sign_in("t-viewer").await;
    let answer = console
        .send(
            console
                .http
                .post(console.url(&format!(
                    "/api/v1/runs/{}/gates/decide/decision",
                    run["id"].as_str().expect("id")
                )))
                .header("cookie", &viewer_cookie)
                .header("x-csrf-token", &viewer_csrf)
                .json(&json!({"choice": "revoke"})),
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], "forbidden");

    // Sign-out needs the CSRF token, ends the session and clears the cookie.
    let sign_out = console.url("/console/sign-out");
    let answer = console
        .send(console.http.post(&sign_out).header("cookie", &cookie))
        .await;
    assert_eq!(answer.status, 403);
    let answer = console
        .send(
            console
                .http
                .post(&sign_out)
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.headers["set-cookie"]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    let after = console
        .send(
            console
                .http
                .get(console.url("/api/v1/inbox"))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(after.status, 401);

    // Runs are found by text in the title or key (any case), by finding kind, and by time.
    let ids = |body: &Value| -> Vec<String> {
        body["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|run| run["key"].as_str().expect("key").to_owned())
            .collect()
    };
    let found = console.api("/api/v1/runs?q=LEAKED%20KEY", "t-viewer").await;
    assert_eq!(ids(&found), ["openai:key:key_http"], "{found}");
    assert_eq!(found["runs"][0]["title"], "a leaked key");
    let found = console.api("/api/v1/runs?q=key_view", "t-viewer").await;
    assert_eq!(ids(&found), ["openai:key:key_viewer"], "{found}");
    let found = console.api("/api/v1/runs?kind=test.gate", "t-viewer").await;
    assert_eq!(ids(&found).len(), 2, "{found}");
    let found = console
        .api("/api/v1/runs?kind=test.other", "t-viewer")
        .await;
    assert!(ids(&found).is_empty(), "{found}");
    let window = "since=2020-01-01T00:00:00Z&until=2100-01-01T00:00:00Z";
    let found = console
        .api(&format!("/api/v1/runs?{window}"), "t-viewer")
        .await;
    assert_eq!(ids(&found).len(), 2, "{found}");
    for outside in ["since=2099-01-01T00:00:00Z", "until=2020-01-01T00:00:00Z"] {
        let found = console
            .api(&format!("/api/v1/runs?{outside}"), "t-viewer")
            .await;
        assert!(ids(&found).is_empty(), "{outside}: {found}");
    }
    // An empty range holds nothing (not an error: any two times are a valid request).
    let found = console
        .api(
            "/api/v1/runs?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "t-viewer",
        )
        .await;
    assert!(ids(&found).is_empty(), "{found}");
    // ... but the rest of the request is still checked: a `q` over 200 characters is refused.
    let refused = console
        .send(
            console
                .http
                .get(console.url(&format!(
                    "/api/v1/runs?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z&q={}",
                    "x".repeat(201)
                )))
                .bearer_auth("t-viewer"),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);

    // The audit log by time: a window around now holds the entries, one in the future none, and
    // a `since` far in the past ends the pages (no `next`).
    let entries = |body: &Value| body["entries"].as_array().expect("entries").len();
    let now = chrono::Utc::now();
    let window = format!(
        "since={}&until={}",
        (now - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (now + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let all = console.api("/api/v1/audit?limit=1000", "t-viewer").await;
    let found = console
        .api(&format!("/api/v1/audit?limit=1000&{window}"), "t-viewer")
        .await;
    assert!(entries(&all) > 5, "{all}");
    assert_eq!(entries(&found), entries(&all), "{found}");
    let found = console
        .api("/api/v1/audit?since=2099-01-01T00:00:00Z", "t-viewer")
        .await;
    assert_eq!(entries(&found), 0, "{found}");
    let found = console
        .api(
            "/api/v1/audit?limit=1&since=2099-01-01T00:00:00Z&until=2100-01-01T00:00:00Z",
            "t-viewer",
        )
        .await;
    assert_eq!(
        found["next"],
        Value::Null,
        "older entries cannot match: {found}"
    );
    let found = console
        .api("/api/v1/audit?until=2020-01-01T00:00:00Z", "t-viewer")
        .await;
    assert_eq!(entries(&found), 0, "{found}");

    // Live updates: the run events as Server-Sent Events, for any role that reads; none without
    // a session or token.
    let refused = console
        .send(console.http.get(console.url("/api/v1/events")))
        .await;
    assert_eq!(refused.status, 401);
    let mut stream = console
        .http
        .get(console.url("/api/v1/events"))
        .bearer_auth("t-viewer")
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    console.publish("f-3", "key_live", "live").await;
    let mut seen = String::new();
    let started = std::time::Instant::now();
    while !(seen.contains("event: run")
        && seen.contains(r#""kind":"waiting""#)
        && seen.contains("openai:key:key_live"))
    {
        let left = WAIT.saturating_sub(started.elapsed());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no waiting event for key_live; the stream said:\n{seen}"))
            .expect("the stream reads")
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect("chromedriver is installed (Debian's chromium-driver; tests/run installs it)");
        let port = free_port();
        let child = std::process::Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> fantoccini::Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", format!("--user-data-dir={}", profile.display())
            ]
        }),
    );
    let started = std::time::Instant::now();
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
        {
            Ok(client) => return client,
            Err(error) => {
                assert!(started.elapsed() < WAIT, "chromedriver: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn screenshots() -> PathBuf {
    let dir = root().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(client: &fantoccini::Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
}

async fn find(client: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(WAIT)
        .for_element(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("no `{css}` on the page: {error}"))
}

/// Clicks what `css` matches, again if the page redrew it between finding and clicking.
async fn click(client: &fantoccini::Client, css: &str) {
    let started = std::time::Instant::now();
    loop {
        match find(client, css).await.click().await {
            Ok(()) => return,
            Err(error) => {
                assert!(started.elapsed() < WAIT, "cannot click `{css}`: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What the page's export link `href` downloads, with the browser's session; asserts it
/// verifies on its own as an audit segment.
async fn download_verified(client: &fantoccini::Client, href: &str) -> String {
    let exported = client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch(arguments[0]).then(r => r.text()).then(done);"#,
            vec![json!(href)],
        )
        .await
        .expect("script");
    let exported = exported.as_str().expect("text").to_owned();
    let segment = quench_runner::store::verify_segment(&exported, None);
    assert!(segment.is_ok(), "{segment:?}");
    exported
}

/// Signs in through the page's token form; waits until the header shows `role`.
async fn sign_in_with_form(client: &fantoccini::Client, token: &str, role: &str) {
    find(client, "#token")
        .await
        .send_keys(token)
        .await
        .expect("type");
    find(client, "#sign-in button[type='submit']")
        .await
        .click()
        .await
        .expect("sign in");
    find_text(client, "#role", role).await;
}

/// Clicks `choice` on a gate's card in Ann's inbox; the page says the gate is decided, the run
/// of `key` completes, and its audit has the decision as Ann's, via the console.
async fn answer_as_ann(
    client: &fantoccini::Client,
    console: &Console,
    card: &fantoccini::elements::Element,
    choice: &str,
    key: &str,
) {
    card.find(fantoccini::Locator::Css(&format!(
        "button[data-choice='{choice}']"
    )))
    .await
    .unwrap_or_else(|error| panic!("no {choice} button: {error}"))
    .click()
    .await
    .expect("click");
    find_text(client, "article.gate .message.info", "decided").await;
    let run = console.run_of(key, "completed").await;
    let detail = console
        .api(
            &format!("/api/v1/runs/{}", run["id"].as_str().expect("id")),
            "t-admin",
        )
        .await;
    let decision = detail["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .find(|entry| entry["kind"] == "decision")
        .expect("the decision is audited")
        .clone();
    assert_eq!(decision["actor"]["id"], "ann@example.com");
    assert_eq!(decision["actor"]["via"], "console");
}

/// Waits until `css` matches an element whose text contains `text`.
async fn find_text(client: &fantoccini::Client, css: &str, text: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        for element in client
            .find_all(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_default()
        {
            if let Ok(found) = element.text().await
                && found.contains(text)
            {
                return found;
            }
        }
        if started.elapsed() > WAIT {
            screenshot(client, "failure").await;
            let body = client
                .find(fantoccini::Locator::Css("body"))
                .await
                .expect("body")
                .text()
                .await
                .unwrap_or_default();
            panic!("no `{css}` with {text:?}; the page reads:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_answers_from_the_inbox_finds_the_run_and_a_viewer_cannot_write() {
    let console = Console::start().await;
    console.publish("f-b", "key_browser", HOSTILE_TITLE).await;
    let run = console.run_of("openai:key:key_browser", "waiting").await;
    let run_id = run["id"].as_str().expect("id").to_owned();
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;

    // The login link: the token in the fragment signs in and leaves the address bar.
    client
        .goto(&console.url("/#token=t-ann"))
        .await
        .expect("goto");
    let card = find(&client, &format!("article.gate[data-run='{run_id}']")).await;
    let url = client.current_url().await.expect("url");
    assert!(!url.as_str().contains("t-ann"), "{url}");
    assert_eq!(
        find(&client, "#person").await.text().await.expect("text"),
        "ann@example.com"
    );
    // The hostile title is text: no element was made from it, and nothing ran.
    let title = card
        .find(fantoccini::Locator::Css("h3"))
        .await
        .expect("title")
        .text()
        .await
        .expect("text");
    assert_eq!(title, HOSTILE_TITLE);
    assert!(
        card.find_all(fantoccini::Locator::Css("img"))
            .await
            .expect("find")
            .is_empty()
    );
    assert_ne!(client.title().await.expect("title"), "owned");
    find_text(&client, "#badge", "1").await;
    screenshot(&client, "inbox").await;

    // A gate that opens while the inbox is shown appears by itself, from the run events (long
    // before the 10-second poll would bring it).
    console
        .publish("f-live", "key_live_page", "arrives live")
        .await;
    let arrived = console.run_of("openai:key:key_live_page", "waiting").await;
    client
        .wait()
        .at_most(Duration::from_secs(6))
        .for_element(fantoccini::Locator::Css(&format!(
            "article.gate[data-run='{}']",
            arrived["id"].as_str().expect("id")
        )))
        .await
        .expect("the new gate appears without a reload");
    find_text(&client, "#badge", "2").await;
    // The inbox was drawn again: find the first card anew.
    let card = find(&client, &format!("article.gate[data-run='{run_id}']")).await;

    // Answer: the page says so, and the run goes on.
    answer_as_ann(&client, &console, &card, "revoke", "openai:key:key_browser").await;

    // Find the run by its key and read its timeline.
    client.goto(&console.url("/#/runs")).await.expect("goto");
    let key = find(&client, "#run-filters input[name='key']").await;
    key.send_keys("openai:key:key_browser").await.expect("type");
    find(&client, "#run-filters button[type='submit']")
        .await
        .click()
        .await
        .expect("search");
    // The list is drawn again for the search: click the row of the new drawing.
    click(&client, &format!("#runs tr[data-run='{run_id}']")).await;
    let decide = find(&client, "#steps tr[data-step='decide']").await;
    let text = decide.text().await.expect("text");
    assert!(
        text.contains("succeeded") && text.contains("revoke"),
        "{text}"
    );
    assert!(text.contains("ann@example.com via console"), "{text}");
    find_text(&client, "table.audit", "decision").await;
    screenshot(&client, "run").await;

    // Sign out: back to the sign-in form; the session is gone.
    find(&client, "#sign-out")
        .await
        .click()
        .await
        .expect("sign out");
    find(&client, "#sign-in").await;

    // A viewer, signed in through the form, sees gates but no control that writes.
    console.publish("f-v", "key_viewer", "for the viewer").await;
    let waiting = console.run_of("openai:key:key_viewer", "waiting").await;
    let waiting_id = waiting["id"].as_str().expect("id").to_owned();
    sign_in_with_form(&client, "t-viewer", "viewer").await;
    // Signing in again returns to the page that was open (the run); the inbox is a click away.
    find(&client, "nav a[data-view='inbox']")
        .await
        .click()
        .await
        .expect("inbox");
    find_text(&client, "main p.facts", "cannot answer").await;
    screenshot(&client, "inbox-viewer").await;
    client
        .goto(&console.url(&format!("/#/runs/{waiting_id}")))
        .await
        .expect("goto");
    find(&client, "#steps").await;
    assert!(
        client
            .find_all(fantoccini::Locator::Css("#cancel, button.choice"))
            .await
            .expect("find")
            .is_empty(),
        "a viewer sees no write control"
    );
    // The page's own fetch, made as the viewer with the CSRF token, is still refused.
    let refused = client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch("/console/session").then(r => r.json()).then(s =>
                 fetch(arguments[0], {method: "POST", headers: {"Content-Type": "application/json",
                   "X-CSRF-Token": s.csrf}, body: JSON.stringify({choice: "revoke"})}))
               .then(r => done(r.status));"#,
            vec![json!(format!(
                "/api/v1/runs/{waiting_id}/gates/decide/decision"
            ))],
        )
        .await
        .expect("script");
    assert_eq!(refused, json!(403));
    client.goto(&console.url("/#/audit")).await.expect("goto");
    find(&client, "table.audit").await;
    screenshot(&client, "audit").await;
    // The page's export link downloads the log, which verifies on its own.
    let href = find(&client, "a#export")
        .await
        .attr("href")
        .await
        .expect("attr")
        .expect("an export link");
    let exported = download_verified(&client, &href).await;
    assert!(exported.lines().count() > 5, "{exported}");
    client
        .goto(&console.url("/#/playbooks"))
        .await
        .expect("goto");
    find(&client, "#playbooks").await;
    find_text(&client, ".card.refused", "unknown action `notte`").await;
    assert!(
        client
            .find_all(fantoccini::Locator::Css("a.fix, #new-playbook"))
            .await
            .expect("find")
            .is_empty(),
        "a viewer is offered no editor"
    );
    find(&client, "#sign-out")
        .await
        .click()
        .await
        .expect("sign out");

    // An admin fixes the refused playbook in the editor, guided by its inline diagnostic.
    sign_in_with_form(&client, "t-admin", "admin").await;
    client
        .goto(&console.url("/#/playbooks"))
        .await
        .expect("goto");
    find(&client, ".card.refused").await;
    screenshot(&client, "playbooks").await;
    find(&client, ".card.refused a.fix")
        .await
        .click()
        .await
        .expect("fix");
    let diagnostic = find_text(&client, "#diagnostics li.diagnostic.error", "notte").await;
    assert!(
        diagnostic.contains("8:11") && diagnostic.contains("did you mean `note`?"),
        "{diagnostic}"
    );
    assert_eq!(
        find(&client, ".editor .diag-error")
            .await
            .text()
            .await
            .expect("text"),
        "notte",
        "the error is marked where it is"
    );
    find_text(&client, "#check-status", "applying it would be refused").await;
    screenshot(&client, "editor").await;
    // A click on the diagnostic puts the caret on it; delete the typo and type the fix.
    find(&client, "#diagnostics li.diagnostic.error")
        .await
        .click()
        .await
        .expect("go to the diagnostic");
    let delete = "\u{e017}".repeat("notte".len());
    find(&client, "#source")
        .await
        .send_keys(&format!("{delete}note"))
        .await
        .expect("type the fix");
    find_text(&client, "#check-status", "It compiles: broken version").await;
    assert!(
        client
            .find_all(fantoccini::Locator::Css(
                "#diagnostics li.diagnostic.error, .editor .diag-error"
            ))
            .await
            .expect("find")
            .is_empty()
    );
    // Its offline test (tests/broken.yaml beside the playbooks) runs against the text as fixed,
    // before it is applied.
    find(&client, "#run-tests")
        .await
        .click()
        .await
        .expect("run tests");
    find_text(&client, "#test-results", "1 passed, 0 failed.").await;
    find_text(&client, "#test-results li[data-case='says hello']", "✓").await;
    screenshot(&client, "editor-tests").await;
    find(&client, "#apply").await.click().await.expect("apply");
    find_text(&client, "main .message.info", "Applied: broken version").await;
    let list = console.api("/api/v1/playbooks", "t-admin").await;
    assert_eq!(list["refused"], json!([]), "{list}");
    assert!(
        list["playbooks"]
            .as_array()
            .expect("playbooks")
            .iter()
            .any(|playbook| playbook["name"] == "broken"),
        "{list}"
    );
    let history = console
        .api("/api/v1/playbooks/broken/history", "t-admin")
        .await;
    assert_eq!(history["versions"][0]["by"], "api:admin-bot", "{history}");
    client
        .goto(&console.url("/#/playbooks/broken"))
        .await
        .expect("goto");
    find(&client, "#history").await;
    screenshot(&client, "playbook").await;

    // A failed run is restarted from its failed step, with a reason; it fails the same way
    // again (the host is still not allowlisted), and the step says it was restarted.
    console
        .publish_kind("test.failing", "f-fail", "key_failing", "fails")
        .await;
    let failed = console.run_of("openai:key:key_failing", "failed").await;
    let failed_id = failed["id"].as_str().expect("id").to_owned();
    client
        .goto(&console.url(&format!("/#/runs/{failed_id}")))
        .await
        .expect("goto");
    find_text(&client, "#restart button", "Restart from call").await;
    find(&client, "#restart input[name='reason']")
        .await
        .send_keys("the host is allowlisted now")
        .await
        .expect("type");
    click(&client, "#restart button").await;
    find_text(&client, "#steps tr[data-step='call']", "restarted 1×").await;
    find_text(&client, "table.audit", "run_restart_requested").await;
    screenshot(&client, "run-restarted").await;
    let shown = console
        .api(&format!("/api/v1/runs/{failed_id}"), "t-admin")
        .await;
    let requested = shown["audit"]
        .as_array()
        .and_then(|audit| {
            audit
                .iter()
                .find(|entry| entry["kind"] == "run_restart_requested")
        })
        .expect("audited");
    assert_eq!(requested["actor"]["id"], "admin-bot", "{requested}");
    assert_eq!(requested["actor"]["via"], "console", "{requested}");
    assert_eq!(requested["detail"]["reason"], "the host is allowlisted now");
    client.close().await.expect("close");
}

/// PyPI's oidc-provider-mock (a real OpenID provider on Flask and authlib, installed by
/// `tests/run`) on a free port, killed on drop.
struct Provider {
    child: std::process::Child,
    url: String,
}

impl Provider {
    /// With users (their claims); clients must register (so the client secret is checked).
    async fn start(users: &[Value]) -> Provider {
        quench_common::http::install_crypto_provider();
        let tools = std::fs::read_dir(root().join("target/tools"))
            .expect("target/tools (tests/run installs the tools)")
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| {
                        name.starts_with("oidc-provider-mock-") && !name.ends_with(".partial")
                    })
            })
            .expect("oidc-provider-mock is installed in target/tools (tests/run installs it)");
        let port = free_port();
        let mut command = std::process::Command::new("python3");
        command
            .args(["-W", "ignore", "-m", "oidc_provider_mock", "--port"])
            .arg(port.to_string())
            .args(["--require-registration", "true"])
            .env("PYTHONPATH", &tools)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for user in users {
            command.arg("--user-claims").arg(user.to_string());
        }
        let child = command.spawn().expect("the OpenID provider starts");
        let provider = Provider {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let started = std::time::Instant::now();
        let discovery = format!("{}/.well-known/openid-configuration", provider.url);
        while !reqwest::get(&discovery)
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            assert!(
                started.elapsed() < WAIT,
                "the OpenID provider did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        provider
    }

    /// Registers a client (RFC 7591) for a redirect URL; returns its id and secret.
    async fn register(&self, redirect: &str) -> (String, String) {
        let client: Value = reqwest::Client::new()
            .post(format!("{}/oauth2/clients", self.url))
            .json(&json!({"redirect_uris": [redirect]}))
            .send()
            .await
            .expect("registration")
            .json()
            .await
            .expect("a client");
        (
            client["client_id"].as_str().expect("id").to_owned(),
            client["client_secret"].as_str().expect("secret").to_owned(),
        )
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs in through the provider's page as the predefined user `sub`.
async fn sign_in_with_provider(client: &fantoccini::Client, console: &Console, sub: &str) {
    client.goto(&console.url("/")).await.expect("goto");
    find(client, "#sso")
        .await
        .click()
        .await
        .expect("to the provider");
    find(client, &format!("button[name='sub'][value='{sub}']"))
        .await
        .click()
        .await
        .expect("authorize");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_through_an_openid_provider() {
    let provider = Provider::start(&[
        json!({"sub": "ann", "email": "ann@example.com", "email_verified": true, "groups": ["approvers", "staff"]}),
        json!({"sub": "eve", "email": "eve@example.com", "email_verified": false, "groups": ["secops"]}),
        json!({"sub": "otto", "email": "otto@example.com", "email_verified": true, "groups": ["staff"]}),
    ])
    .await;
    let listen = format!("127.0.0.1:{}", free_port());
    let (client_id, secret) = provider
        .register(&format!("http://{listen}/console/oidc/callback"))
        .await;
    let secrets = tempfile::tempdir().expect("dir");
    let secret_file = secrets.path().join("oidc-secret");
    std::fs::write(&secret_file, &secret).expect("write the secret");
    let console = Console::start_at(
        listen,
        &format!(
            "[console.oidc]\nissuer = \"{}\"\nclient_id = \"{client_id}\"\nclient_secret_file = \"{}\"\n\n[console.oidc.roles]\napprovers = \"approver\"\nsecops = \"admin\"\n",
            provider.url,
            secret_file.display()
        ),
    )
    .await;
    console.publish("f-sso", "key_sso", "a leaked key").await;
    let run = console.run_of("openai:key:key_sso", "waiting").await;
    let run_id = run["id"].as_str().expect("id").to_owned();

    // The page offers single sign-on.
    let session = console
        .send(console.http.get(console.url("/console/session")))
        .await;
    assert_eq!(session.body["methods"], json!(["oidc", "token"]));
    assert_eq!(session.body["issuer"], provider.url.as_str());

    // A callback no browser started, or one without the browser's binding cookie, signs no one in.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let forged = no_redirects
        .get(console.url("/console/oidc/callback?code=abc&state=forged"))
        .send()
        .await
        .expect("callback");
    assert_eq!(forged.status(), 303);
    assert_eq!(forged.headers()["location"], "/#signin_error=login_expired");
    let started = no_redirects
        .get(console.url("/console/oidc/login"))
        .send()
        .await
        .expect("login");
    assert_eq!(started.status(), 303);
    let location = url::Url::parse(started.headers()["location"].to_str().expect("ascii"))
        .expect("the provider's URL");
    assert!(location.as_str().starts_with(&provider.url), "{location}");
    let params: std::collections::HashMap<String, String> =
        location.query_pairs().into_owned().collect();
    assert_eq!(params["code_challenge_method"], "S256", "PKCE");
    assert_eq!(params["client_id"], client_id);
    assert!(params.contains_key("nonce") && params.contains_key("state"));
    let binding = started.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        binding.contains("HttpOnly") && binding.contains("SameSite=Lax"),
        "{binding}"
    );
    let unbound = no_redirects
        .get(console.url(&format!(
            "/console/oidc/callback?code=abc&state={}",
            params["state"]
        )))
        .send()
        .await
        .expect("callback");
    assert_eq!(
        unbound.headers()["location"],
        "/#signin_error=login_expired"
    );
    assert!(
        unbound
            .headers()
            .get_all("set-cookie")
            .iter()
            .all(|cookie| !cookie
                .to_str()
                .unwrap_or_default()
                .starts_with("quench_session="))
    );

    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;

    // Ann signs in at the provider; her groups make her an approver; she answers her gate.
    sign_in_with_provider(&client, &console, "ann").await;
    find_text(&client, "#person", "ann@example.com").await;
    find_text(&client, "#role", "approver").await;
    let card = find(&client, &format!("article.gate[data-run='{run_id}']")).await;
    screenshot(&client, "sso-inbox").await;
    answer_as_ann(&client, &console, &card, "keep", "openai:key:key_sso").await;
    let method = client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch("/console/session").then(r => r.json()).then(s => done(s.method));"#,
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(method, json!("oidc"));
    // Signing out ends the session at the provider too (RP-initiated logout): the browser goes
    // to its end-session page with the ID token as hint, and comes back to the console.
    find(&client, "#sign-out")
        .await
        .click()
        .await
        .expect("sign out");
    let started = std::time::Instant::now();
    let at = loop {
        let at = client.current_url().await.expect("url");
        if at.path().ends_with("/oauth2/end_session") {
            break at;
        }
        assert!(
            started.elapsed() < WAIT,
            "not sent to the provider's logout: {at}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hint: std::collections::HashMap<String, String> = at.query_pairs().into_owned().collect();
    assert!(at.as_str().starts_with(&provider.url), "{at}");
    assert_eq!(hint["client_id"], client_id);
    assert_eq!(
        hint["post_logout_redirect_uri"],
        console.url("/"),
        "back to the console"
    );
    assert!(hint["id_token_hint"].split('.').count() == 3, "{hint:?}");
    screenshot(&client, "sso-end-session").await;
    find(&client, "form button[type='submit']")
        .await
        .click()
        .await
        .expect("end the session at the provider");
    find(&client, "#sso").await;
    assert!(
        client
            .current_url()
            .await
            .expect("url")
            .as_str()
            .starts_with(&console.url("/")),
        "back at the console"
    );

    // An unverified email, and a person in no mapped group, are refused with why.
    sign_in_with_provider(&client, &console, "eve").await;
    find_text(&client, "main .message", "no verified email").await;
    sign_in_with_provider(&client, &console, "otto").await;
    find_text(&client, "main .message", "no group that gives a role").await;
    screenshot(&client, "sso-refused").await;
    let whoami = client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch("/console/session").then(r => r.json()).then(s => done(s.signed_in));"#,
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(whoami, json!(false));
    let log = console.service.log_text();
    assert!(!log.contains(&secret), "the client secret is never logged");
    client.close().await.expect("close");
}

/// A cluster with several partitions keeps one audit chain per partition: the audit page of a
/// real Chromium offers a partition picker, lists the picked partition's chain, links the
/// picked partition's export (a file that verifies on its own and holds only that partition's
/// runs), and "Verify chain" verifies every partition's chain. One runner in cluster mode holds
/// all four partitions, so every request is answered through the same front as with several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_audit_page_lists_and_exports_the_picked_partitions_chain() {
    const PARTITIONS: u32 = 4;
    let listen = format!("127.0.0.1:{}", free_port());
    let console = Console::start_at(
        listen.clone(),
        &format!(
            "[cluster]\nenabled = true\nrunner = \"solo\"\npartitions = {PARTITIONS}\n\
             advertise = \"http://{listen}\"\npeers = [\"{listen}\"]\n"
        ),
    )
    .await;
    // Ready once it has claimed its share; each partition is served once taken over.
    crate::support::eventually(WAIT, "the runner serves every partition", || {
        crate::support::http_get(&console.service.listen, "/healthz").is_some_and(|(_, body)| {
            serde_json::from_str::<Value>(&body).is_ok_and(|health| {
                health["partitions"].as_array().map(Vec::len) == Some(PARTITIONS as usize)
            })
        })
    })
    .await;
    for n in 0..12 {
        console
            .publish(&format!("f-{n}"), &format!("key_{n}"), "a leaked key")
            .await;
    }
    // The partitions the runs landed in; the picked one is not partition 0 (the default).
    let mut by_partition: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for n in 0..12 {
        let run = console
            .run_of(&format!("openai:key:key_{n}"), "waiting")
            .await;
        let id = run["id"].as_str().expect("id").to_owned();
        let partition =
            quench_runner::cluster::partition::of_run_id(&id, PARTITIONS).expect("a partition");
        by_partition.entry(partition).or_default().push(id);
    }
    let picked = *by_partition
        .keys()
        .find(|partition| **partition != 0)
        .expect("runs outside partition 0");
    let session = console.api("/console/session", "t-viewer").await;
    assert_eq!(session["partitions"], PARTITIONS, "{session}");

    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    client
        .goto(&console.url("/#token=t-viewer"))
        .await
        .expect("goto");
    find_text(&client, "#role", "viewer").await;
    client.goto(&console.url("/#/audit")).await.expect("goto");
    find_text(&client, "h1", "Audit log · partition 0").await;
    let options = client
        .find_all(fantoccini::Locator::Css("select#partition option"))
        .await
        .expect("find");
    assert_eq!(options.len(), PARTITIONS as usize);
    click(
        &client,
        &format!("select#partition option[value='{picked}']"),
    )
    .await;
    find_text(&client, "h1", &format!("Audit log · partition {picked}")).await;
    find(&client, "table.audit").await;
    screenshot(&client, "audit-partition").await;
    // The list is the picked partition's chain: every run it names is one of its runs.
    let mut listed = Vec::new();
    for link in client
        .find_all(fantoccini::Locator::Css("table.audit a[title]"))
        .await
        .expect("find")
    {
        listed.push(link.attr("title").await.expect("attr").expect("a run id"));
    }
    assert!(!listed.is_empty(), "the chain lists its runs");
    for id in &listed {
        assert!(
            by_partition[&picked].contains(id),
            "{id} is not partition {picked}'s"
        );
    }
    // The export link is the picked partition's, and what it downloads verifies on its own.
    let export = find(&client, "a#export").await;
    let href = export.attr("href").await.expect("attr").expect("href");
    assert!(href.contains(&format!("partition={picked}")), "{href}");
    let name = export.attr("download").await.expect("attr").expect("name");
    assert!(
        name.starts_with(&format!("quench-audit-partition-{picked}-through-")),
        "{name}"
    );
    let exported = download_verified(&client, &href).await;
    for line in exported.lines() {
        let entry: Value = serde_json::from_str(line).expect("a JSON line");
        if let Some(id) = entry["run_id"].as_str() {
            assert!(by_partition[&picked].contains(&id.to_owned()), "{line}");
        }
    }
    // "Verify chain" verifies every partition's.
    click(&client, "#verify").await;
    find_text(&client, "main", "Every partition's chain verifies: ").await;
    let verified = console.api("/api/v1/audit/verify", "t-viewer").await;
    assert_eq!(
        verified["partitions"].as_array().map(Vec::len),
        Some(PARTITIONS as usize),
        "{verified}"
    );
}
