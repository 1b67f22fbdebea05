//! The operator surface of a real `quench serve` (its own `nats-server`, a config file with one
//! token per role): every route against every role (401, 403, and what the route does), the
//! OpenAPI document (checked in, served, and naming exactly the routes), runs and gates, playbook
//! apply / history / enable / disable, hot reload of a good and a bad file (and SIGHUP), the
//! DLQ, metrics after a known sequence of events, JSON logs with span fields, and the CLI's
//! output and exit codes against the running service.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{NatsServer, Service, check_generated, hex, metric, quench_bin};

const WAIT: Duration = Duration::from_secs(20);

/// (token, name, role): one per role, and a second approver who is nobody's approver.
const TOKENS: [(&str, &str, &str); 5] = [
    ("t-viewer", "viewer-bot", "viewer"),
    ("t-approver", "approver@example.com", "approver"),
    ("t-mallory", "mallory@example.com", "approver"),
    ("t-editor", "editor-bot", "editor"),
    ("t-admin", "admin-bot", "admin"),
];
const VIEWER: &str = "t-viewer";
const APPROVER: &str = "t-approver";
const MALLORY: &str = "t-mallory";
const EDITOR: &str = "t-editor";
const ADMIN: &str = "t-admin";

const GATE_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: gate
on:
  finding:
    kinds: [test.gate]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [approver@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: keep
  - id: bye
    uses: note
    with:
      message: "{{ steps.decide.choice }}"
"#;

/// Parks on a gate, then calls a host that is not allowlisted: a permanent action error.
const METERED_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: metered
mode: live
on:
  finding:
    kinds: [test.metered]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [approver@example.com]
      question: Call?
      choices: [go, stop]
      timeout: 1h
      on_timeout: stop
  - id: call
    uses: http.request
    with:
      method: GET
      url: https://blocked.example.com/hook
"#;

fn finding(id: &str, kind: &str, key_id: &str) -> Value {
    json!({
        "schema": "quench.finding/v1", "id": id, "kind": kind, "severity": "high",
        "title": "test finding", "detected_at": "2026-11-20T10:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": key_id, "project_id": "proj_1"}
    })
}

struct Operator {
    _nats: NatsServer,
    service: Service,
    client: async_nats::Client,
    http: reqwest::Client,
    playbooks: PathBuf,
    _dir: tempfile::TempDir,
}

/// An HTTP answer: status and JSON body (`Null` when the body is not JSON).
struct Answer {
    status: u16,
    body: Value,
    text: String,
}

impl Operator {
    async fn start(playbooks: &[(&str, &str)]) -> Operator {
        Operator::start_with(playbooks, &[]).await
    }

    async fn start_with(playbooks: &[(&str, &str)], args: &[&str]) -> Operator {
        Operator::start_configured(playbooks, args, "").await
    }

    /// The service with `extra` appended to its config file (after the API tokens).
    async fn start_configured(playbooks: &[(&str, &str)], args: &[&str], extra: &str) -> Operator {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let playbook_dir = dir.path().join("playbooks");
        std::fs::create_dir(&playbook_dir).expect("playbook dir");
        for (file, source) in playbooks {
            std::fs::write(playbook_dir.join(file), source).expect("write playbook");
        }
        let mut config = String::new();
        for (token, name, role) in TOKENS {
            let sha = hex(&Sha256::digest(token.as_bytes()));
            config.push_str(&format!(
                "[[api.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{sha}\"\n\n"
            ));
        }
        config.push_str(extra);
        let service = Service::launch(
            &nats.url(),
            &playbook_dir,
            dir.path(),
            &[],
            Some(&config),
            args,
        );
        let client = async_nats::connect(nats.url())
            .await
            .expect("test client connects");
        quench_common::http::install_crypto_provider();
        Operator {
            _nats: nats,
            service,
            client,
            http: reqwest::Client::new(),
            playbooks: playbook_dir,
            _dir: dir,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.service.listen)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let streaming = response
            .headers()
            .get("content-type")
            .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
        // A live stream does not end: its status and headers are the answer.
        let text = if streaming {
            String::new()
        } else {
            response.text().await.expect("body")
        };
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let answer = self.call("GET", path, Some(token), None).await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.text);
        answer.body
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call("POST", path, Some(token), Some(body)).await
    }

    async fn publish(&self, subject: &str, body: Vec<u8>) {
        let jetstream = async_nats::jetstream::new(self.client.clone());
        jetstream
            .publish(subject.to_owned(), body.into())
            .await
            .expect("publish")
            .await
            .expect("stream ack");
    }

    async fn publish_finding(&self, finding: &Value) {
        let subject = format!(
            "quench.findings.{}",
            finding["kind"].as_str().expect("kind")
        );
        self.publish(&subject, finding.to_string().into_bytes())
            .await;
    }

    async fn runs(&self, query: &str) -> Vec<Value> {
        self.get(&format!("/api/v1/runs{query}"), VIEWER).await["runs"]
            .as_array()
            .expect("runs")
            .clone()
    }

    /// Waits until a run of `playbook` has `status`; returns its id.
    async fn run_with(&self, playbook: &str, status: &str) -> String {
        let started = std::time::Instant::now();
        loop {
            let runs = self
                .runs(&format!("?playbook={playbook}&state={status}"))
                .await;
            if let Some(run) = runs.first() {
                return run["id"].as_str().expect("id").to_owned();
            }
            assert!(
                started.elapsed() < WAIT,
                "no {status} run of {playbook}:\n{}",
                self.service.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn audit(&self) -> Vec<Value> {
        self.get("/api/v1/audit?limit=1000", VIEWER).await["entries"]
            .as_array()
            .expect("entries")
            .clone()
    }

    async fn metrics(&self) -> String {
        let answer = self.call("GET", "/metrics", None, None).await;
        assert_eq!(answer.status, 200);
        answer.text
    }

    /// Scrapes until every series has its value; returns the last scrape.
    async fn metrics_reach(&self, expected: &[(&str, f64)]) -> String {
        let started = std::time::Instant::now();
        loop {
            let metrics = self.metrics().await;
            let missing: Vec<_> = expected
                .iter()
                .filter(|(series, value)| metric(&metrics, series) != *value)
                .collect();
            if missing.is_empty() {
                return metrics;
            }
            assert!(
                started.elapsed() < WAIT,
                "not reached: {missing:?} in:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the `quench` binary against this service; returns (exit code, stdout, stderr).
    fn cli(&self, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let mut command = std::process::Command::new(quench_bin());
        command
            .args(args)
            .env("QUENCH_API_URL", self.base())
            .env_remove("QUENCH_TOKEN");
        if let Some(token) = token {
            command.env("QUENCH_TOKEN", token);
        }
        let output = command.output().expect("quench runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// The value of a metric line `name{labels} value` (0 when absent).
fn role_rank(role: &str) -> usize {
    ["viewer", "approver", "editor", "admin"]
        .iter()
        .position(|known| *known == role)
        .expect("known role")
}

/// One route: method, OpenAPI path, a concrete path, the least role, a body, and the status a
/// caller with that role gets (the request is built to be harmless: unknown ids, bad source).
struct Route {
    method: &'static str,
    template: &'static str,
    path: &'static str,
    role: Option<&'static str>,
    body: Option<Value>,
    status: u16,
}

fn routes() -> Vec<Route> {
    let route = |method, template, path, role, body, status| Route {
        method,
        template,
        path,
        role,
        body,
        status,
    };
    vec![
        route("GET", "/healthz", "/healthz", None, None, 200),
        route("GET", "/readyz", "/readyz", None, None, 200),
        route("GET", "/metrics", "/metrics", None, None, 200),
        route(
            "GET",
            "/api/openapi.json",
            "/api/openapi.json",
            None,
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/runs",
            "/api/v1/runs",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/events",
            "/api/v1/events",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/inbox",
            "/api/v1/inbox",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/safety",
            "/api/v1/safety",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/inventory",
            "/api/v1/inventory",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/inventory/status",
            "/api/v1/inventory/status",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/campaigns",
            "/api/v1/campaigns",
            Some("viewer"),
            None,
            200,
        ),
        // An empty inventory: nothing is in scope (the attestation playbook is not loaded
        // here either; the scope is checked after it, so this is the playbook's refusal).
        route(
            "POST",
            "/api/v1/validate",
            "/api/v1/validate",
            Some("editor"),
            Some(json!({"source": "name: broken\n"})),
            200,
        ),
        route(
            "POST",
            "/api/v1/test",
            "/api/v1/test",
            Some("editor"),
            Some(json!({"source": "name: broken\n"})),
            422,
        ),
        route(
            "POST",
            "/api/v1/campaigns",
            "/api/v1/campaigns",
            Some("editor"),
            Some(json!({"name": "route table"})),
            422,
        ),
        route(
            "GET",
            "/api/v1/campaigns/{id}",
            "/api/v1/campaigns/no-such-campaign",
            Some("viewer"),
            None,
            404,
        ),
        route(
            "GET",
            "/api/v1/inventory/{id}",
            "/api/v1/inventory/project_key:no-such-key",
            Some("viewer"),
            None,
            404,
        ),
        route(
            "GET",
            "/api/v1/inventory/{id}/attributes",
            "/api/v1/inventory/project_key:key_route/attributes",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "PUT",
            "/api/v1/inventory/{id}/attributes",
            "/api/v1/inventory/project_key:key_route/attributes",
            Some("editor"),
            Some(json!({"purpose": "the route table's check"})),
            200,
        ),
        route(
            "GET",
            "/api/v1/runs/{id}",
            "/api/v1/runs/no-such-run",
            Some("viewer"),
            None,
            404,
        ),
        route(
            "POST",
            "/api/v1/runs/{id}/cancel",
            "/api/v1/runs/no-such-run/cancel",
            Some("editor"),
            Some(json!({})),
            404,
        ),
        route(
            "POST",
            "/api/v1/runs/{id}/restart",
            "/api/v1/runs/no-such-run/restart",
            Some("editor"),
            Some(json!({})),
            404,
        ),
        route(
            "POST",
            "/api/v1/runs/{id}/gates/{gate}/decision",
            "/api/v1/runs/no-such-run/gates/decide/decision",
            Some("approver"),
            Some(json!({"choice": "revoke"})),
            404,
        ),
        route(
            "GET",
            "/api/v1/playbooks",
            "/api/v1/playbooks",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "POST",
            "/api/v1/playbooks",
            "/api/v1/playbooks",
            Some("editor"),
            Some(json!({"source": "name: broken\n"})),
            422,
        ),
        route(
            "GET",
            "/api/v1/playbooks/{name}",
            "/api/v1/playbooks/gate",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/playbooks/{name}/history",
            "/api/v1/playbooks/gate/history",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/playbooks/{name}/versions/{version}",
            "/api/v1/playbooks/gate/versions/not-a-version",
            Some("viewer"),
            None,
            404,
        ),
        route(
            "POST",
            "/api/v1/playbooks/{name}/enable",
            "/api/v1/playbooks/no-such-playbook/enable",
            Some("editor"),
            Some(json!({})),
            404,
        ),
        route(
            "POST",
            "/api/v1/playbooks/{name}/disable",
            "/api/v1/playbooks/no-such-playbook/disable",
            Some("editor"),
            Some(json!({})),
            404,
        ),
        route(
            "GET",
            "/api/v1/dlq",
            "/api/v1/dlq",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "POST",
            "/api/v1/dlq/{seq}/replay",
            "/api/v1/dlq/999999/replay",
            Some("admin"),
            Some(json!({})),
            404,
        ),
        route(
            "GET",
            "/api/v1/audit",
            "/api/v1/audit",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/audit/verify",
            "/api/v1/audit/verify",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "GET",
            "/api/v1/audit/export",
            "/api/v1/audit/export?before=2",
            Some("viewer"),
            None,
            200,
        ),
        route(
            "POST",
            "/api/v1/audit/prune",
            "/api/v1/audit/prune",
            Some("admin"),
            Some(json!({"through": 999_999, "hash": "0"})),
            409,
        ),
        // This service has no `[evidence] signing_key_file`: no unsigned pack is made.
        route(
            "POST",
            "/api/v1/evidence",
            "/api/v1/evidence",
            Some("admin"),
            Some(json!({"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"})),
            409,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_documented() {
    let operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    for route in routes() {
        let what = format!("{} {}", route.method, route.path);
        let Some(least) = route.role else {
            let answer = operator.call(route.method, route.path, None, None).await;
            assert_eq!(
                answer.status, route.status,
                "{what} without a token: {}",
                answer.text
            );
            continue;
        };
        for token in [None, Some("not-a-configured-token")] {
            let answer = operator
                .call(route.method, route.path, token, route.body.clone())
                .await;
            assert_eq!(answer.status, 401, "{what} with {token:?}: {}", answer.text);
            assert_eq!(answer.body["error"]["code"], "unauthorized", "{what}");
        }
        for (token, name, role) in TOKENS {
            let answer = operator
                .call(route.method, route.path, Some(token), route.body.clone())
                .await;
            if role_rank(role) < role_rank(least) {
                assert_eq!(
                    answer.status, 403,
                    "{what} as {name} ({role}): {}",
                    answer.text
                );
                assert_eq!(
                    answer.body["error"]["code"], "forbidden",
                    "{what} as {role}"
                );
            } else {
                assert_eq!(
                    answer.status, route.status,
                    "{what} as {name} ({role}): {}",
                    answer.text
                );
            }
        }
    }

    // The refused playbook says why, with positions, in `quench validate --format json`'s shape.
    let refused = operator
        .post(
            "/api/v1/playbooks",
            EDITOR,
            json!({"source": "name: broken\n", "file": "broken.yaml"}),
        )
        .await;
    assert_eq!(refused.body["error"]["code"], "invalid_playbook");
    let first = &refused.body["diagnostics"][0];
    assert_eq!(first["file"], "broken.yaml");
    assert_eq!(first["severity"], "error");
    assert_eq!(first["code"], "missing-field");
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(1), Some(1))
    );

    // `validate` compiles with the same compiler and applies nothing: the same diagnostics for
    // the broken source, the name and version a good one would get, and whether it is current.
    let checked = operator
        .post(
            "/api/v1/validate",
            EDITOR,
            json!({"source": "name: broken\n", "file": "broken.yaml"}),
        )
        .await;
    assert_eq!(checked.status, 200, "{}", checked.text);
    assert_eq!(checked.body["ok"], false);
    assert_eq!(checked.body["diagnostics"], refused.body["diagnostics"]);
    let renamed = GATE_PLAYBOOK.replace("name: gate", "name: gate-draft");
    let checked = operator
        .post("/api/v1/validate", EDITOR, json!({"source": renamed}))
        .await;
    assert_eq!(checked.body["ok"], true, "{}", checked.text);
    assert_eq!(checked.body["name"], "gate-draft");
    assert_eq!(checked.body["current"], false);
    assert!(
        checked.body["version"]
            .as_str()
            .is_some_and(|version| version.starts_with("sha256:"))
    );
    let draft = operator
        .call("GET", "/api/v1/playbooks/gate-draft", Some(EDITOR), None)
        .await;
    assert_eq!(
        draft.status, 404,
        "validate applied nothing: {}",
        draft.text
    );
    let checked = operator
        .post("/api/v1/validate", EDITOR, json!({"source": GATE_PLAYBOOK}))
        .await;
    assert_eq!(
        (checked.body["ok"].clone(), checked.body["current"].clone()),
        (json!(true), json!(true)),
        "{}",
        checked.text
    );

    // The playbook's offline tests run against the text sent, nothing applied: a test file sent
    // with it, or the files in the directory's `tests/` that name a playbook of that name.
    let tests = r#"schema: quench.playbook-test/v1
playbook: ../gate.yaml
finding:
  kind: test.gate
  severity: high
  title: a key
  source: { scanner: test }
  resource: { provider: openai, type: api_key, id: key_t, project_id: proj_1 }
cases:
  - name: revoked
    approvals:
      decide: { choice: revoke, by: approver@example.com }
    expect:
      status: completed
      steps: { bye: succeeded }
  - name: expects the wrong status
    approvals:
      decide: { choice: keep, by: approver@example.com }
    expect:
      status: failed
"#;
    let ran = operator
        .post(
            "/api/v1/test",
            EDITOR,
            json!({"source": GATE_PLAYBOOK, "tests": tests}),
        )
        .await;
    assert_eq!(ran.status, 200, "{}", ran.text);
    assert_eq!(
        (ran.body["passed"].clone(), ran.body["failed"].clone()),
        (json!(1), json!(1)),
        "{}",
        ran.text
    );
    let cases = &ran.body["files"][0]["cases"];
    assert_eq!(cases[0]["passed"], true, "{}", ran.text);
    assert_eq!(cases[1]["passed"], false);
    assert!(
        cases[1]["failures"][0]
            .as_str()
            .unwrap_or_default()
            .contains("status"),
        "{}",
        ran.text
    );
    let none = operator
        .post("/api/v1/test", EDITOR, json!({"source": GATE_PLAYBOOK}))
        .await;
    assert_eq!(
        none.body["files"],
        json!([]),
        "no test file yet: {}",
        none.text
    );
    std::fs::create_dir(operator.playbooks.join("tests")).expect("tests dir");
    std::fs::write(operator.playbooks.join("tests/gate.yaml"), tests).expect("test file");
    let found = operator
        .post("/api/v1/test", EDITOR, json!({"source": GATE_PLAYBOOK}))
        .await;
    assert_eq!(
        found.body["files"][0]["file"]
            .as_str()
            .map(|file| file.ends_with("gate.yaml")),
        Some(true),
        "{}",
        found.text
    );
    assert_eq!(found.body["passed"], 1, "{}", found.text);
    let bad = operator
        .post(
            "/api/v1/test",
            EDITOR,
            json!({"source": GATE_PLAYBOOK, "tests": "schema: quench.playbook-test/v1\ncases: 3\n"}),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["error"]["code"].clone()),
        (422, json!("invalid_tests")),
        "{}",
        bad.text
    );
    assert_eq!(
        operator
            .post("/api/v1/test", VIEWER, json!({"source": GATE_PLAYBOOK}))
            .await
            .status,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_checked_in_and_names_exactly_the_routes() {
    let operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    let served = operator
        .call("GET", "/api/openapi.json", None, None)
        .await
        .body;
    assert_eq!(
        served,
        serde_json::to_value(quench_runner::service::openapi()).expect("document serializes"),
        "the served document is the one the library generates"
    );
    check_generated("services/runner/openapi.json", &served);
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3."))
    );

    let mut documented = BTreeSet::new();
    for (path, item) in served["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            documented.insert((method.to_uppercase(), path.clone()));
            let secured = operation.get("security").is_some();
            assert_eq!(
                secured,
                path.starts_with("/api/v1/"),
                "{method} {path}: the /api/v1 routes, and only they, need a bearer token"
            );
        }
    }
    let served_routes: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|route| (route.method.to_owned(), route.template.to_owned()))
        .collect();
    assert_eq!(
        documented, served_routes,
        "the document names exactly the routes the role test exercises"
    );
    assert!(
        served["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer",
        "bearer auth is declared"
    );
}

/// Every `$ref` of the document, as JSON pointers into it.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(pointer)) => found.push(pointer.clone()),
                    _ => references(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

/// What schemathesis (tests/schemathesis) found at the edges of the document, checked here too:
/// every `$ref` resolves, a run's steps validate against `RunDetail` while they have no output,
/// each `limit` has a documented maximum that is served and one past it is refused, sequence
/// numbers are `int64` (past `i64::MAX` or negative is a 400), a run-id prefix is at most a run
/// id (36 characters of lower-case hex and `-`), and a dead letter that cannot exist (sequence 0)
/// is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_to_its_document_at_the_edges() {
    let operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    let document = operator
        .call("GET", "/api/openapi.json", None, None)
        .await
        .body;
    let mut pointers = Vec::new();
    references(&document, &mut pointers);
    assert!(!pointers.is_empty());
    for pointer in &pointers {
        let target = pointer.strip_prefix('#').expect("a local reference");
        assert!(
            document.pointer(target).is_some(),
            "`{pointer}` does not resolve"
        );
    }

    operator
        .publish_finding(&finding("edge-1", "test.gate", "key_edge"))
        .await;
    let id = operator.run_with("gate", "waiting").await;
    let detail = operator.get(&format!("/api/v1/runs/{id}"), VIEWER).await;
    assert_eq!(detail["steps"][1]["output"], Value::Null, "{detail}");
    let schema = json!({
        "$ref": "#/components/schemas/RunDetail",
        "components": document["components"],
    });
    let validator = jsonschema::validator_for(&schema).expect("the document's schemas compile");
    let problems: Vec<String> = validator
        .iter_errors(&detail)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}\n{detail}");

    for (path, parameter) in [
        ("/api/v1/runs", "limit"),
        ("/api/v1/dlq", "limit"),
        ("/api/v1/audit", "limit"),
    ] {
        let maximum = document["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|documented| documented["name"] == parameter)
            .and_then(|documented| documented["schema"]["maximum"].as_u64())
            .unwrap_or_else(|| panic!("{path}: `{parameter}` has no documented maximum"));
        for (value, status) in [(maximum, 200), (maximum + 1, 400), (0, 400)] {
            let answer = operator
                .call(
                    "GET",
                    &format!("{path}?{parameter}={value}"),
                    Some(VIEWER),
                    None,
                )
                .await;
            assert_eq!(
                answer.status, status,
                "{path}?{parameter}={value}: {}",
                answer.text
            );
        }
    }
    for query in [
        "/api/v1/dlq?cursor=9223372036854775808",
        "/api/v1/dlq?cursor=-1",
        "/api/v1/audit?before=9223372036854775808",
        "/api/v1/audit?before=-1",
    ] {
        let answer = operator.call("GET", query, Some(VIEWER), None).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.text);
        assert_eq!(answer.body["error"]["code"], "bad_request", "{query}");
    }
    let in_range = operator
        .call(
            "GET",
            "/api/v1/audit?before=9223372036854775807",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(in_range.status, 200, "{}", in_range.text);

    // A run id is a UUID as text: `id_prefix` is at most its 36 characters, each lower-case
    // hex or `-`, as documented; anything else can match no run and is refused, saying why.
    let documented = document["paths"]["/api/v1/runs"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|documented| documented["name"] == "id_prefix")
        .expect("`id_prefix` is documented")["schema"]
        .clone();
    assert_eq!(
        (&documented["maxLength"], &documented["pattern"]),
        (&json!(36), &json!("^[0-9a-f-]*$")),
        "{documented}"
    );
    assert_eq!(id.len(), 36, "{id}");
    for (prefix, found) in [(id.as_str(), 1), (&id[..9], 1), ("", 1), ("ffffffff-", 0)] {
        let page = operator
            .get(&format!("/api/v1/runs?id_prefix={prefix}"), VIEWER)
            .await;
        assert_eq!(
            page["runs"].as_array().map(Vec::len),
            Some(found),
            "{prefix}: {page}"
        );
    }
    for (prefix, why) in [
        (
            format!("{id}0"),
            "37 characters is longer than a run id (36)",
        ),
        (
            "f".repeat(1000),
            "1000 characters is longer than a run id (36)",
        ),
        ("0195F0C2".to_owned(), "holds 'F', which no run id does"),
        ("0195f0c2%2F".to_owned(), "holds '/', which no run id does"),
        ("%C3%A9".to_owned(), "holds '\u{e9}', which no run id does"),
    ] {
        let answer = operator
            .call(
                "GET",
                &format!("/api/v1/runs?id_prefix={prefix}"),
                Some(VIEWER),
                None,
            )
            .await;
        assert_eq!(answer.status, 400, "{prefix}: {}", answer.text);
        assert_eq!(answer.body["error"]["code"], "bad_request", "{prefix}");
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("id_prefix") && message.contains(why),
            "{prefix}: {message}"
        );
    }

    for (seq, status) in [("0", 404), ("9223372036854775808", 400), ("-1", 400)] {
        let answer = operator
            .post(&format!("/api/v1/dlq/{seq}/replay"), ADMIN, json!({}))
            .await;
        assert_eq!(answer.status, status, "replay {seq}: {}", answer.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_shown_answered_and_cancelled() {
    let operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    operator
        .publish_finding(&finding("f-1", "test.gate", "key_1"))
        .await;
    let first = operator.run_with("gate", "waiting").await;
    operator
        .publish_finding(&finding("f-2", "test.gate", "key_2"))
        .await;
    let started = std::time::Instant::now();
    while operator.runs("?state=waiting").await.len() < 2 {
        assert!(started.elapsed() < WAIT, "the second run parks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Filters and paging: newest first, one per page, the cursor leads to the next.
    let page = operator.get("/api/v1/runs?limit=1", VIEWER).await;
    let second = page["runs"][0]["id"].as_str().expect("id").to_owned();
    assert_ne!(second, first, "newest first");
    let cursor = page["next"].as_str().expect("a next page");
    let next = operator
        .get(&format!("/api/v1/runs?limit=1&cursor={cursor}"), VIEWER)
        .await;
    assert_eq!(next["runs"][0]["id"], first.as_str());
    assert_eq!(
        operator.runs("?key=test.gate:key_1").await.len(),
        1,
        "the key filter"
    );
    assert!(operator.runs("?state=completed").await.is_empty());
    assert!(operator.runs("?playbook=other").await.is_empty());
    let bad = operator
        .call("GET", "/api/v1/runs?state=sideways", Some(VIEWER), None)
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    let shown = operator.get(&format!("/api/v1/runs/{first}"), VIEWER).await;
    assert_eq!(shown["run"]["status"], "waiting");
    assert_eq!(shown["run"]["step"], "decide");
    let steps: Vec<(&str, &str)> = shown["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| {
            (
                step["id"].as_str().unwrap_or(""),
                step["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [("decide", "waiting"), ("bye", "pending")],
        "the timeline in playbook order"
    );
    assert_eq!(shown["gates"][0]["question"], "Revoke?");
    assert!(
        shown["gates"][0].get("token").is_none(),
        "a gate's token is never shown"
    );
    let kinds: Vec<&str> = shown["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|entry| entry["kind"].as_str())
        .collect();
    assert!(
        kinds.starts_with(&["run_started"]) && kinds.contains(&"waiting"),
        "{kinds:?}"
    );

    // Someone who is not an approver of the gate is refused by the engine, and audited.
    let refused = operator
        .post(
            &format!("/api/v1/runs/{first}/gates/decide/decision"),
            MALLORY,
            json!({"choice": "revoke"}),
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.body["error"]["code"], "not_allowed");
    let unknown_choice = operator
        .post(
            &format!("/api/v1/runs/{first}/gates/decide/decision"),
            APPROVER,
            json!({"choice": "shrug"}),
        )
        .await;
    assert_eq!(unknown_choice.status, 422, "{}", unknown_choice.text);

    // The token's name is an approver: the gate is decided and the run goes on.
    let decided = operator
        .post(
            &format!("/api/v1/runs/{first}/gates/decide/decision"),
            APPROVER,
            json!({"choice": "revoke", "comment": "leaked in a public repo"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{}", decided.text);
    assert_eq!(
        decided.body,
        json!({"outcome": "decided", "choice": "revoke", "answers": null, "quorum": null})
    );
    operator.run_with("gate", "completed").await;
    let again = operator
        .post(
            &format!("/api/v1/runs/{first}/gates/decide/decision"),
            APPROVER,
            json!({"choice": "keep"}),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    let shown = operator.get(&format!("/api/v1/runs/{first}"), VIEWER).await;
    assert_eq!(shown["gates"][0]["decision"], "revoke");
    assert_eq!(
        shown["gates"][0]["decided_by"],
        json!(["approver@example.com"])
    );
    assert_eq!(shown["steps"][1]["output"]["message"], "revoke");

    // Cancel the other run; a second cancel finds it ended.
    let cancelled = operator
        .post(
            &format!("/api/v1/runs/{second}/cancel"),
            EDITOR,
            json!({"reason": "duplicate report"}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    let twice = operator
        .post(&format!("/api/v1/runs/{second}/cancel"), EDITOR, json!({}))
        .await;
    assert_eq!(twice.status, 409, "{}", twice.text);
    let shown = operator
        .get(&format!("/api/v1/runs/{second}"), VIEWER)
        .await;
    assert_eq!(shown["run"]["status"], "cancelled");
    assert_eq!(shown["run"]["cancelled"], "duplicate report");
    assert_eq!(shown["gates"][0]["closed"], true);

    // Every write is in the audit log with the token's name.
    let audit = operator.audit().await;
    let by = |kind: &str, allowed: Option<bool>| {
        audit
            .iter()
            .filter(|entry| {
                entry["kind"] == kind
                    && (allowed.is_none() || entry["allowed"].as_bool() == allowed)
            })
            .map(|entry| entry["actor"]["id"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(by("decision", Some(true)), ["approver@example.com"]);
    assert!(by("decision", Some(false)).contains(&"mallory@example.com".to_owned()));
    assert_eq!(by("run_cancel_requested", None), ["editor-bot"]);
    let verified = operator.get("/api/v1/audit/verify", VIEWER).await;
    assert_eq!(verified["ok"], true, "{verified}");

    // Audit paging: newest first, `next` continues below.
    let page = operator.get("/api/v1/audit?limit=3", VIEWER).await;
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|entry| entry["seq"].as_u64())
        .collect();
    assert_eq!(seqs.len(), 3);
    assert!(
        seqs.windows(2).all(|pair| pair[0] == pair[1] + 1),
        "{seqs:?}"
    );
    let next = page["next"].as_u64().expect("more");
    let older = operator
        .get(&format!("/api/v1/audit?limit=3&before={next}"), VIEWER)
        .await;
    assert_eq!(older["entries"][0]["seq"].as_u64(), Some(next - 1));
}

/// The current version of a loaded playbook, as the API lists it.
async fn current_version(operator: &Operator, name: &str) -> Option<String> {
    let list = operator.get("/api/v1/playbooks", VIEWER).await;
    list["playbooks"]
        .as_array()
        .expect("playbooks")
        .iter()
        .find(|playbook| playbook["name"] == name)
        .and_then(|playbook| playbook["version"].as_str().map(str::to_owned))
}

/// Audit entries saying a playbook version became current, as (version, by).
async fn loads(operator: &Operator, name: &str) -> Vec<(String, String)> {
    let mut loads: Vec<(String, String)> = operator
        .audit()
        .await
        .iter()
        .filter(|entry| entry["kind"] == "playbook_loaded" && entry["playbook"] == name)
        .map(|entry| {
            (
                entry["version"].as_str().unwrap_or("").to_owned(),
                entry["detail"]["by"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    loads.reverse();
    loads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbooks_are_applied_versioned_disabled_and_enabled() {
    let operator = Operator::start(&[("on-call.yaml", GATE_PLAYBOOK)]).await;
    let v1 = current_version(&operator, "gate")
        .await
        .expect("gate is loaded");

    let edited = GATE_PLAYBOOK.replace("question: Revoke?", "question: Revoke it now?");
    let applied = operator
        .post(
            "/api/v1/playbooks",
            EDITOR,
            json!({"source": edited, "file": "gate.yaml"}),
        )
        .await;
    assert_eq!(applied.status, 200, "{}", applied.text);
    assert_eq!(applied.body["changed"], true);
    let v2 = applied.body["version"]
        .as_str()
        .expect("version")
        .to_owned();
    assert_ne!(v1, v2);
    // Written into the file that held the playbook: the directory stays the source of truth.
    let on_disk = std::fs::read_to_string(operator.playbooks.join("on-call.yaml")).expect("file");
    assert_eq!(on_disk, edited);
    assert_eq!(
        std::fs::read_dir(&operator.playbooks).expect("dir").count(),
        1,
        "no second file"
    );
    assert_eq!(
        current_version(&operator, "gate").await.as_deref(),
        Some(v2.as_str())
    );
    let same = operator
        .post("/api/v1/playbooks", EDITOR, json!({"source": edited}))
        .await;
    assert_eq!(same.body["changed"], false, "{}", same.text);

    let history = operator.get("/api/v1/playbooks/gate/history", VIEWER).await;
    let versions: Vec<(&str, bool)> = history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|entry| {
            (
                entry["version"].as_str().unwrap_or(""),
                entry["current"] == true,
            )
        })
        .collect();
    assert_eq!(versions, [(v2.as_str(), true), (v1.as_str(), false)]);
    let prefix = &v1["sha256:".len().."sha256:".len() + 10];
    let old = operator
        .get(&format!("/api/v1/playbooks/gate/versions/{prefix}"), VIEWER)
        .await;
    assert_eq!(old["version"], v1.as_str());
    assert_eq!(old["source"], GATE_PLAYBOOK);
    let shown = operator.get("/api/v1/playbooks/gate", VIEWER).await;
    assert_eq!(shown["source"], edited.as_str());
    // The watcher sees the written file and finds nothing new: one entry per version.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let recorded = loads(&operator, "gate").await;
    assert_eq!(
        recorded,
        [
            (v1.clone(), "quench serve".to_owned()),
            (v2.clone(), "api:editor-bot".to_owned())
        ]
    );

    // Disabled: a finding starts nothing (and says so in the audit log); enabled: it does.
    let disabled = operator
        .post("/api/v1/playbooks/gate/disable", EDITOR, json!({}))
        .await;
    assert_eq!(
        disabled.body,
        json!({"name": "gate", "enabled": false, "changed": true})
    );
    let listed = operator.get("/api/v1/playbooks", VIEWER).await;
    assert_eq!(listed["playbooks"][0]["enabled"], false);
    operator
        .publish_finding(&finding("d-1", "test.gate", "key_d"))
        .await;
    let started = std::time::Instant::now();
    while !operator
        .audit()
        .await
        .iter()
        .any(|entry| entry["kind"] == "finding_ignored")
    {
        assert!(started.elapsed() < WAIT, "the finding is ignored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        operator.runs("").await.is_empty(),
        "a disabled playbook starts no run"
    );
    let enabled = operator
        .post("/api/v1/playbooks/gate/enable", EDITOR, json!({}))
        .await;
    assert_eq!(enabled.body["changed"], true);
    operator
        .publish_finding(&finding("d-2", "test.gate", "key_d"))
        .await;
    operator.run_with("gate", "waiting").await;
    let audit = operator.audit().await;
    for kind in ["playbook_disabled", "playbook_enabled"] {
        assert!(
            audit
                .iter()
                .any(|entry| entry["kind"] == kind && entry["actor"]["id"] == "editor-bot"),
            "{kind} is audited with the token's name"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbooks_reload_on_change_and_a_bad_file_keeps_the_last_good_version() {
    let mut operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    let v1 = current_version(&operator, "gate").await.expect("loaded");
    let file = operator.playbooks.join("gate.yaml");

    // A good edit is picked up.
    std::fs::write(&file, GATE_PLAYBOOK.replace("Revoke?", "Revoke now?")).expect("edit");
    let started = std::time::Instant::now();
    let v2 = loop {
        match current_version(&operator, "gate").await {
            Some(version) if version != v1 => break version,
            _ => {}
        }
        assert!(
            started.elapsed() < WAIT,
            "the edit is loaded:\n{}",
            operator.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        loads(&operator, "gate").await[1],
        (v2.clone(), "file change".to_owned())
    );

    // A bad edit is refused with its diagnostics; v2 keeps serving.
    std::fs::write(
        &file,
        GATE_PLAYBOOK.replace("  - id: bye", "  - id: bye\n    wat: 1"),
    )
    .expect("break");
    let started = std::time::Instant::now();
    let refused = loop {
        let list = operator.get("/api/v1/playbooks", VIEWER).await;
        if let Some(refused) = list["refused"]
            .as_array()
            .and_then(|refused| refused.first())
        {
            break refused.clone();
        }
        assert!(started.elapsed() < WAIT, "the bad file is refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused["file"]
            .as_str()
            .expect("file")
            .ends_with("gate.yaml")
    );
    assert_eq!(refused["playbook"], "gate");
    assert_eq!(refused["serving"], v2.as_str());
    assert_eq!(refused["diagnostics"][0]["code"], "unknown-field");
    assert_eq!(refused["diagnostics"][0]["line"], 16);
    assert_eq!(
        current_version(&operator, "gate").await.as_deref(),
        Some(v2.as_str())
    );
    assert!(
        operator.service.log_text().contains("unknown field `wat`"),
        "the refusal is logged"
    );
    let metrics = operator.metrics().await;
    assert_eq!(metric(&metrics, "quench_playbooks_refused"), 1.0);
    assert!(metric(&metrics, "quench_playbook_loads_total{result=\"refused\"}") >= 1.0);
    // It still serves: a finding starts a run on v2.
    operator
        .publish_finding(&finding("r-1", "test.gate", "key_r"))
        .await;
    let run = operator.run_with("gate", "waiting").await;
    let shown = operator.get(&format!("/api/v1/runs/{run}"), VIEWER).await;
    assert_eq!(shown["run"]["version"], v2.as_str());

    // SIGHUP reads the directory again.
    let before = metric(
        &operator.metrics().await,
        "quench_playbook_loads_total{result=\"refused\"}",
    );
    operator.service.signal("HUP");
    let started = std::time::Instant::now();
    while metric(
        &operator.metrics().await,
        "quench_playbook_loads_total{result=\"refused\"}",
    ) <= before
    {
        assert!(started.elapsed() < WAIT, "SIGHUP reloads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // After a restart with the file still broken, the version the store last recorded serves.
    assert_eq!(operator.service.terminate(), Some(0));
    operator.service.spawn();
    assert_eq!(
        current_version(&operator, "gate").await.as_deref(),
        Some(v2.as_str())
    );
    let list = operator.get("/api/v1/playbooks", VIEWER).await;
    assert_eq!(list["refused"][0]["serving"], v2.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed() {
    let operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    operator
        .publish("quench.findings.test.gate", b"{not json".to_vec())
        .await;
    // A dead letter whose body is a good finding (as if the scanner's fix came later).
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Quench-Dlq-Reason", "unknown_schema: test");
    headers.insert("Quench-Dlq-Subject", "quench.findings.test.gate");
    let jetstream = async_nats::jetstream::new(operator.client.clone());
    jetstream
        .publish_with_headers(
            "quench.dlq.findings",
            headers,
            finding("late-1", "test.gate", "key_late")
                .to_string()
                .into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    // And one that claims to come from somewhere else.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Quench-Dlq-Subject", "quench.events.x.run_started");
    jetstream
        .publish_with_headers("quench.dlq.findings", headers, "{}".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    // And one cut at the body limit, written unredacted (by an older version, or by anyone
    // allowed to publish dead letters): a key in its body, JSON-escaped, and in its headers.
    let key = format!("sk-proj-{}T3BlbkFJ{}", "Dq7".repeat(20), "Lm9".repeat(20));
    let escaped = key.replace('-', r"\u002d");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Quench-Dlq-Subject",
        format!("quench.findings.{key}").as_str(),
    );
    headers.insert(
        "Quench-Dlq-Reason",
        format!("invalid_json: near {key}").as_str(),
    );
    headers.insert("Quench-Dlq-Size", "70000");
    headers.insert("Quench-Dlq-Truncated", "true");
    jetstream
        .publish_with_headers(
            "quench.dlq.findings",
            headers,
            format!(r#"{{"title": "x{escaped}", "pad": "{}"#, "p".repeat(5000)).into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");

    let started = std::time::Instant::now();
    let messages = loop {
        let page = operator.get("/api/v1/dlq", VIEWER).await;
        let messages = page["messages"].as_array().expect("messages").clone();
        if messages.len() == 4 {
            break messages;
        }
        assert!(started.elapsed() < WAIT, "four dead letters: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let bad = messages
        .iter()
        .find(|message| message["body"] == "{not json")
        .expect("the refused message");
    assert_eq!(bad["subject"], "quench.dlq.findings");
    assert_eq!(bad["original_subject"], "quench.findings.test.gate");
    assert!(
        bad["reason"]
            .as_str()
            .expect("reason")
            .starts_with("invalid_json")
    );
    assert_eq!(bad["original_size"], 9);
    assert_eq!(bad["incomplete"], false);
    let page = operator.get("/api/v1/dlq?limit=1", VIEWER).await;
    let cursor = page["next"].as_u64().expect("a next page");
    let rest = operator
        .get(&format!("/api/v1/dlq?cursor={cursor}"), VIEWER)
        .await;
    assert_eq!(rest["messages"].as_array().map(Vec::len), Some(3));

    // The cut one: shown redacted (body, subject, reason) to a viewer, and not replayed.
    let cut = messages
        .iter()
        .find(|message| message["incomplete"] == true)
        .expect("the cut dead letter");
    let shown = cut.to_string();
    assert!(
        !quench_proto::contains_secret(shown.as_bytes()) && !shown.contains(&key[8..60]),
        "a key is shown: {shown}"
    );
    assert_eq!(cut["original_size"], 70000);
    assert_eq!(cut["truncated"], true, "the preview is cut too");
    assert_eq!(
        cut["original_subject"],
        "quench.findings.sk-proj-[REDACTED]...9Lm9"
    );
    let refused = operator
        .post(
            &format!("/api/v1/dlq/{}/replay", cut["seq"]),
            ADMIN,
            json!({}),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert!(
        refused.text.contains("keeps only the first") && !refused.text.contains(&key[8..60]),
        "{}",
        refused.text
    );

    let late = messages
        .iter()
        .find(|message| {
            message["original_subject"] == "quench.findings.test.gate"
                && message["body"] != "{not json"
        })
        .expect("the late finding");
    let seq = late["seq"].as_u64().expect("seq");
    let replayed = operator
        .post(&format!("/api/v1/dlq/{seq}/replay"), ADMIN, json!({}))
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.text);
    assert_eq!(replayed.body["subject"], "quench.findings.test.gate");
    operator.run_with("gate", "waiting").await;
    let again = operator
        .post(&format!("/api/v1/dlq/{seq}/replay"), ADMIN, json!({}))
        .await;
    assert_eq!(
        again.status, 404,
        "a replayed message is gone: {}",
        again.text
    );
    let elsewhere = messages
        .iter()
        .find(|message| message["original_subject"] == "quench.events.x.run_started")
        .expect("the odd one");
    let refused = operator
        .post(
            &format!("/api/v1/dlq/{}/replay", elsewhere["seq"]),
            ADMIN,
            json!({}),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    let audit = operator.audit().await;
    let replays: Vec<&Value> = audit
        .iter()
        .filter(|entry| entry["kind"] == "dlq_replayed")
        .collect();
    assert_eq!(replays.len(), 1);
    assert_eq!(replays[0]["actor"]["id"], "admin-bot");
    assert_eq!(replays[0]["detail"]["seq"], seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence_of_events_and_logs_carry_spans() {
    let operator = Operator::start_with(
        &[("metered.yaml", METERED_PLAYBOOK)],
        &["--log-format", "json"],
    )
    .await;
    let metrics = operator.metrics().await;
    assert_eq!(metric(&metrics, "quench_nats_connected"), 1.0);
    assert_eq!(metric(&metrics, "quench_playbooks_loaded"), 1.0);
    assert_eq!(metric(&metrics, "quench_runs_open"), 0.0);

    // A finding, the same id again (dropped), and a message that is not JSON.
    let first = finding("m-1", "test.metered", "key_m");
    operator.publish_finding(&first).await;
    operator.publish_finding(&first).await;
    operator
        .publish("quench.findings.test.metered", b"nope".to_vec())
        .await;
    let run = operator.run_with("metered", "waiting").await;
    // Counters move after the commits they count, each batch on its own: wait for all of them.
    let metrics = operator
        .metrics_reach(&[
            ("quench_findings_received_total{kind=\"test.metered\"}", 2.0),
            ("quench_findings_deduplicated_total{kind=\"test.metered\"}", 1.0),
            (
                "quench_dead_lettered_total{subject=\"quench.dlq.findings\",reason=\"invalid_json\"}",
                1.0,
            ),
            ("quench_runs_started_total{playbook=\"metered\"}", 1.0),
        ])
        .await;
    assert_eq!(metric(&metrics, "quench_runs_open"), 1.0);
    assert_eq!(metric(&metrics, "quench_runs_awaiting_approval"), 1.0);

    // Approved: the call to a host that is not allowlisted fails for good, and so does the run.
    let decided = operator
        .post(
            &format!("/api/v1/runs/{run}/gates/decide/decision"),
            APPROVER,
            json!({"choice": "go"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{}", decided.text);
    operator.run_with("metered", "failed").await;
    let metrics = operator
        .metrics_reach(&[
            ("quench_runs_failed_total{playbook=\"metered\"}", 1.0),
            ("quench_runs_completed_total{playbook=\"metered\"}", 0.0),
            ("quench_runs_open", 0.0),
            ("quench_runs_awaiting_approval", 0.0),
            (
                "quench_action_errors_total{action=\"http.request\",class=\"permanent\"}",
                1.0,
            ),
            (
                "quench_step_duration_seconds_count{action=\"http.request\"}",
                1.0,
            ),
        ])
        .await;
    assert!(metric(&metrics, "quench_store_commit_duration_seconds_count") >= 3.0);
    assert!(metric(&metrics, "quench_store_commit_batches_count") >= 3.0);
    for family in [
        "# TYPE quench_step_duration_seconds histogram",
        "# TYPE quench_store_commit_batches histogram",
        "# TYPE quench_runs_open gauge",
        "# TYPE quench_findings_received counter",
    ] {
        assert!(metrics.contains(family), "{family} in:\n{metrics}");
    }

    // JSON logs: the run's lines carry its id and playbook from the span.
    let log = operator.service.log_text();
    let ended = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "run ended")
        .unwrap_or_else(|| panic!("a JSON `run ended` line in:\n{log}"));
    assert_eq!(ended["span"]["run_id"], run.as_str());
    assert_eq!(ended["span"]["playbook"], "metered");
    assert_eq!(ended["fields"]["status"], "failed");
    assert!(
        !log.contains("t-admin") && !log.contains("t-approver"),
        "no token is logged"
    );

    // Restarted from the failed step through the CLI: the same call fails the same way again,
    // counted as a second failure of the one run.
    let long = operator
        .post(
            &format!("/api/v1/runs/{run}/restart"),
            EDITOR,
            json!({"reason": "x".repeat(1001)}),
        )
        .await;
    assert_eq!(
        long.status, 400,
        "a reason is at most 1,000 characters: {}",
        long.text
    );
    // ... counted as sent, spaces included (the schema's maxLength).
    let padded = operator
        .post(
            &format!("/api/v1/runs/{run}/restart"),
            EDITOR,
            json!({"reason": format!(" {} ", "x".repeat(999))}),
        )
        .await;
    assert_eq!(padded.status, 400, "{}", padded.text);
    let (code, _, err) = operator.cli(Some(VIEWER), &["runs", "restart", &run]);
    assert_ne!(code, 0, "a viewer cannot restart a run: {err}");
    let (code, out, err) = operator.cli(
        Some(EDITOR),
        &["runs", "restart", &run, "--reason", "host allowlisted"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("run {run} restarted from step call\n"));
    operator
        .metrics_reach(&[
            ("quench_runs_failed_total{playbook=\"metered\"}", 2.0),
            ("quench_runs_started_total{playbook=\"metered\"}", 1.0),
            (
                "quench_action_errors_total{action=\"http.request\",class=\"permanent\"}",
                2.0,
            ),
            ("quench_runs_open", 0.0),
        ])
        .await;
    let shown = operator.get(&format!("/api/v1/runs/{run}"), VIEWER).await;
    let call = shown["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|step| step["id"] == "call"))
        .expect("the step is shown");
    assert_eq!(call["restarts"], 1);
    assert_eq!(call["status"], "failed");
    let restarted = shown["audit"]
        .as_array()
        .and_then(|audit| {
            audit
                .iter()
                .find(|entry| entry["kind"] == "run_restart_requested")
        })
        .expect("the restart is audited");
    assert_eq!(restarted["actor"]["id"], "editor-bot");
    assert_eq!(restarted["detail"]["reason"], "host allowlisted");
    assert_eq!(restarted["step"], "call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_to_the_running_service() {
    let operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    operator
        .publish_finding(&finding("c-1", "test.gate", "key_c"))
        .await;
    let run = operator.run_with("gate", "waiting").await;

    let (code, out, err) = operator.cli(Some(VIEWER), &["runs", "list"]);
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().expect("a header");
    assert!(
        header.starts_with("RUN") && header.contains("PLAYBOOK") && header.contains("STATUS"),
        "{out}"
    );
    assert!(out.contains(&run) && out.contains("waiting"), "{out}");
    let (code, out, _) = operator.cli(
        Some(VIEWER),
        &["runs", "list", "--state", "waiting", "--json"],
    );
    assert_eq!(code, 0);
    let page: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(page["runs"][0]["id"], run.as_str());
    let (code, out, _) = operator.cli(Some(VIEWER), &["runs", "show", &run]);
    assert_eq!(code, 0);
    assert!(
        out.contains("gate decide: Revoke?") && out.contains("run_started"),
        "{out}"
    );

    // Exit codes: no token 77, too small a role 77, refused 1, unreachable 69, bad --api 64.
    let (code, _, err) = operator.cli(None, &["runs", "list"]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("QUENCH_TOKEN"), "{err}");
    let (code, _, err) = operator.cli(Some(VIEWER), &["runs", "cancel", &run]);
    assert_eq!(code, 77, "{err}");
    let (code, _, err) = operator.cli(
        Some(MALLORY),
        &["approve", &run, "--gate", "decide", "--choice", "keep"],
    );
    assert_eq!(code, 1, "not an approver of this gate: {err}");
    assert!(err.contains("not_allowed"), "{err}");
    let (code, out, err) = operator.cli(
        Some(APPROVER),
        &["approve", &run, "--gate", "decide", "--choice", "keep"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("gate decide of run {run}: decided keep\n"));
    let (code, _, err) = operator.cli(
        Some(APPROVER),
        &["approve", &run, "--gate", "decide", "--choice", "keep"],
    );
    assert_eq!(code, 1, "already decided: {err}");
    let (code, _, err) = operator.cli(
        Some(VIEWER),
        &[
            "runs",
            "list",
            "--api",
            &format!("http://127.0.0.1:{}", crate::support::free_port()),
        ],
    );
    assert_eq!(code, 69, "{err}");
    let (code, _, err) = operator.cli(
        Some(VIEWER),
        &["runs", "list", "--api", "http://quench.example.com"],
    );
    assert_eq!(code, 64, "{err}");

    // Playbooks: apply a directory (one good, one bad), list, history, diff.
    let apply_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        apply_dir.path().join("gate.yaml"),
        GATE_PLAYBOOK.replace("Revoke?", "Revoke, really?"),
    )
    .expect("write");
    std::fs::write(apply_dir.path().join("zz-broken.yaml"), "name: broken\n").expect("write");
    let dir = apply_dir.path().display().to_string();
    let (code, out, _) = operator.cli(Some(EDITOR), &["playbooks", "apply", &dir]);
    assert_eq!(code, 1, "one file is refused: {out}");
    assert!(out.contains("applied  gate "), "{out}");
    assert!(
        out.contains("refused  ") && out.contains("zz-broken.yaml:1:1: error[missing-field]"),
        "{out}"
    );
    let (code, out, _) = operator.cli(Some(VIEWER), &["playbooks", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("PLAYBOOK") && out.contains("gate") && out.contains("enabled"),
        "{out}"
    );
    let (code, out, _) = operator.cli(Some(VIEWER), &["playbooks", "history", "gate", "--json"]);
    assert_eq!(code, 0);
    let history: Value = serde_json::from_str(&out).expect("JSON");
    let versions: Vec<String> = history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|entry| {
            entry["version"]
                .as_str()
                .map(|version| version["sha256:".len()..][..10].to_owned())
        })
        .collect();
    assert_eq!(versions.len(), 2);
    let (code, out, err) = operator.cli(
        Some(VIEWER),
        &["playbooks", "diff", "gate", &versions[1], &versions[0]],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("-      question: Revoke?\n+      question: Revoke, really?\n"),
        "{out}"
    );
    let (code, out, _) = operator.cli(Some(EDITOR), &["playbooks", "disable", "gate"]);
    assert_eq!((code, out.as_str()), (0, "playbook gate disabled\n"));

    // Dead letters and the audit log.
    operator
        .publish("quench.findings.test.gate", b"oops".to_vec())
        .await;
    let started = std::time::Instant::now();
    let seq = loop {
        let (code, out, _) = operator.cli(Some(VIEWER), &["dlq", "list", "--json"]);
        assert_eq!(code, 0);
        let page: Value = serde_json::from_str(&out).expect("JSON");
        if let Some(seq) = page["messages"][0]["seq"].as_u64() {
            break seq;
        }
        assert!(started.elapsed() < WAIT, "the dead letter is listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (code, out, _) = operator.cli(Some(VIEWER), &["dlq", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("SEQ") && out.contains("invalid_json"),
        "{out}"
    );
    let (code, _, _) = operator.cli(Some(EDITOR), &["dlq", "replay", &seq.to_string()]);
    assert_eq!(code, 77, "replay needs admin");
    let (code, out, err) = operator.cli(Some(ADMIN), &["dlq", "replay", &seq.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("replayed {seq} to quench.findings.test.gate\n")
    );
    let (code, out, err) = operator.cli(Some(VIEWER), &["audit", "verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("audit chain ok: "), "{out}");
    let (code, out, _) = operator.cli(Some(VIEWER), &["audit", "list", "--limit", "200"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("dlq_replayed") && out.contains("admin-bot"),
        "{out}"
    );
    assert!(
        out.contains("playbook_disabled") && out.contains("editor-bot"),
        "{out}"
    );
}

/// A playbook naming a group the config does not define would fail every run: the service
/// refuses the file at load (listed with its diagnostic), and an apply answers 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_naming_an_undefined_group_is_refused_at_load() {
    let asks = |group: &str| {
        GATE_PLAYBOOK.replace(
            "approvers: [approver@example.com]",
            &format!("approvers: [\"group:{group}\"]"),
        )
    };
    let operator = Operator::start_configured(
        &[
            ("typo.yaml", &asks("secop")),
            (
                "good.yaml",
                &asks("secops").replace("name: gate", "name: gate-ok"),
            ),
        ],
        &[],
        "[groups]\nsecops = [\"lead@example.com\"]\n",
    )
    .await;
    let list = operator.get("/api/v1/playbooks", VIEWER).await;
    let loaded: Vec<&str> = list["playbooks"]
        .as_array()
        .expect("playbooks")
        .iter()
        .filter_map(|playbook| playbook["name"].as_str())
        .collect();
    assert_eq!(loaded, ["gate-ok"], "{list}");
    let refused = &list["refused"][0];
    assert!(
        refused["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("typo.yaml")),
        "{list}"
    );
    let diagnostic = &refused["diagnostics"][0];
    assert_eq!(diagnostic["code"], "undefined-group", "{list}");
    assert!(
        diagnostic["message"]
            .as_str()
            .is_some_and(|message| message.contains("group `secop` is not defined")),
        "{list}"
    );
    assert!(
        diagnostic["help"]
            .as_str()
            .is_some_and(|help| help.contains("`secops`")),
        "{list}"
    );

    let applied = operator
        .post(
            "/api/v1/playbooks",
            EDITOR,
            json!({"source": asks("nobody")}),
        )
        .await;
    assert_eq!(applied.status, 422, "{}", applied.text);
    assert_eq!(applied.body["diagnostics"][0]["code"], "undefined-group");
}

/// Asks, revokes (dry-run) and notes; tells secops when it fails.
const AUDITED_PLAYBOOK: &str = r##"schema: quench.playbook/v1
name: audited
mode: dry_run
on:
  finding:
    kinds: [test.audited]
steps:
  - id: notify
    uses: slack.message
    with:
      to: "#secops"
      text: "Key {{ finding.resource.id }} leaked"
  - id: decide
    uses: approval
    with:
      approvers: [approver@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: keep
  - id: revoke
    if: steps.decide.choice == "revoke"
    uses: openai.revoke_key
    with:
      project_id: "{{ finding.resource.project_id }}"
      key_id: "{{ finding.resource.id }}"
  - id: bye
    uses: note
    with:
      message: "revoked {{ finding.resource.id }}"
on_failure:
  - id: tell
    uses: note
    with:
      message: it failed
"##;

/// "Who approved revoking key X, when, through what, and what request was sent" is answered by
/// `quench runs show` (a run-id prefix is enough) and `quench audit list` with filters, without
/// `--json`: each step's request, a note's text, the comment, the refused answer marked, and no
/// `pending` for an `on_failure` step of a completed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_reads_who_approved_what_and_the_request_sent() {
    let operator = Operator::start(&[("audited.yaml", AUDITED_PLAYBOOK)]).await;
    operator
        .publish_finding(&finding("a-1", "test.audited", "key_audit1"))
        .await;
    let run = operator.run_with("audited", "waiting").await;
    let prefix = &run[..13];
    let key = operator.runs("?playbook=audited").await[0]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let (code, _, err) = operator.cli(
        Some(MALLORY),
        &["approve", prefix, "--gate", "decide", "--choice", "keep"],
    );
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = operator.cli(
        Some(APPROVER),
        &[
            "approve",
            prefix,
            "--gate",
            "decide",
            "--choice",
            "revoke",
            "--comment",
            "confirmed with the owner",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let _ = operator.run_with("audited", "completed").await;

    let (code, out, err) = operator.cli(Some(VIEWER), &["runs", "show", prefix]);
    assert_eq!(code, 0, "{err}");
    let line = |step: &str| {
        out.lines()
            .find(|line| line.trim_start().starts_with(&format!("{step} ")))
            .unwrap_or_else(|| panic!("no line for {step}:\n{out}"))
            .to_owned()
    };
    assert!(
        line("notify").contains("to #secops: \"Key key_audit1 leaked\""),
        "{out}"
    );
    assert!(
        line("decide").contains("revoke by approver@example.com via api"),
        "{out}"
    );
    assert!(
        line("revoke").contains("DELETE /v1/organization/projects/proj_1/api_keys/key_audit1"),
        "{out}"
    );
    assert!(line("bye").contains("\"revoked key_audit1\""), "{out}");
    assert!(
        out.contains("answered revoke by approver@example.com via api at ")
            && out.contains(": \"confirmed with the owner\""),
        "{out}"
    );
    assert!(
        out.contains("REFUSED  keep by mallory@example.com via api at "),
        "{out}"
    );
    assert!(!out.contains("tell"), "on_failure was not reached: {out}");
    assert!(!out.contains("pending"), "{out}");

    // The audit log, filtered: the decisions about this key, with the comment and the refusal.
    let (code, out, err) = operator.cli(
        Some(VIEWER),
        &["audit", "list", "--key", &key, "--kind", "decision"],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(out.lines().next().unwrap_or("").contains("DETAIL"), "{out}");
    assert!(
        rows[0].contains("approver@example.com")
            && rows[0].contains("revoke: \"confirmed with the owner\""),
        "{out}"
    );
    assert!(
        rows[1].contains("mallory@example.com") && rows[1].contains("REFUSED keep"),
        "{out}"
    );
    let (code, out, err) = operator.cli(
        Some(VIEWER),
        &[
            "audit",
            "list",
            "--run",
            prefix,
            "--actor",
            "approver@example.com",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, out, err) = operator.cli(
        Some(VIEWER),
        &["audit", "list", "--run", prefix, "--kind", "step_dry_run"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "openai.revoke_key: DELETE /v1/organization/projects/proj_1/api_keys/key_audit1"
        ),
        "{out}"
    );
    // Slack messages are sent (here recorded as not sent: no bot token) even in dry-run.
    let (code, out, err) = operator.cli(
        Some(VIEWER),
        &["audit", "list", "--run", prefix, "--kind", "step_intent"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("slack.message: to #secops: \"Key key_audit1 leaked\""),
        "{out}"
    );
    let (code, out, _) = operator.cli(
        Some(VIEWER),
        &[
            "audit",
            "list",
            "--key",
            "openai:nothing",
            "--kind",
            "decision",
        ],
    );
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");

    // Prefixes: none matches, or more than one does.
    let (code, _, err) = operator.cli(Some(VIEWER), &["runs", "show", "ffffffff"]);
    assert_eq!(code, 1);
    assert!(err.contains("no run id starts with \"ffffffff\""), "{err}");
    operator
        .publish_finding(&finding("a-2", "test.audited", "key_audit2"))
        .await;
    let started = std::time::Instant::now();
    while operator.runs("?playbook=audited").await.len() < 2 {
        assert!(started.elapsed() < WAIT, "a second run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, err) = operator.cli(Some(VIEWER), &["runs", "show", &run[..1]]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is the start of more than one run id"),
        "{err}"
    );
}

/// Two enabled playbooks that run for the same finding kind: the service says so when it loads
/// them (and loads both), an apply answers with the warning naming both and the kind, the CLI
/// prints it, and a disabled playbook is not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbooks_that_share_a_finding_kind_warn_at_load_and_apply() {
    let all_tests = GATE_PLAYBOOK
        .replace("name: gate", "name: all-tests")
        .replace("[test.gate]", "[test.*]");
    let operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK), ("all.yaml", &all_tests)]).await;
    let log = operator.service.log_text();
    assert!(
        log.contains(
            "warning[overlapping-trigger]: playbooks `gate` and `all-tests` both run for finding \
             kind `test.gate`; each such finding starts a run of both"
        ),
        "{log}"
    );
    assert!(
        current_version(&operator, "gate").await.is_some(),
        "it loads"
    );
    assert!(current_version(&operator, "all-tests").await.is_some());

    let third = GATE_PLAYBOOK.replace("name: gate", "name: third");
    let applied = operator
        .post(
            "/api/v1/playbooks",
            EDITOR,
            json!({"source": third, "file": "third.yaml"}),
        )
        .await;
    assert_eq!(applied.status, 200, "{}", applied.text);
    let overlaps = |body: &Value| -> Vec<String> {
        body["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .filter(|warning| warning["code"] == "overlapping-trigger")
            .map(|warning| warning["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        overlaps(&applied.body),
        [
            "playbooks `third` and `all-tests` both run for finding kind `test.gate`; each such \
             finding starts a run of both",
            "playbooks `third` and `gate` both run for finding kind `test.gate`; each such \
             finding starts a run of both",
        ],
        "{}",
        applied.text
    );
    assert_eq!(applied.body["warnings"][0]["file"], "third.yaml");
    assert_eq!(applied.body["warnings"][0]["line"], 5);
    // A new version of a playbook is not compared with its old self.
    let again = operator
        .post(
            "/api/v1/playbooks",
            EDITOR,
            json!({"source": third.replace("Revoke?", "Revoke it?")}),
        )
        .await;
    assert_eq!(overlaps(&again.body).len(), 2, "{}", again.text);

    // Disabled playbooks start nothing, so they are not counted.
    for name in ["all-tests", "third"] {
        let disabled = operator
            .post(
                &format!("/api/v1/playbooks/{name}/disable"),
                EDITOR,
                json!({}),
            )
            .await;
        assert_eq!(disabled.status, 200, "{}", disabled.text);
    }
    let fourth = write_temp(
        "fourth.yaml",
        &GATE_PLAYBOOK.replace("name: gate", "name: fourth"),
    );
    let (code, out, err) = operator.cli(
        Some(EDITOR),
        &["playbooks", "apply", &fourth.1.display().to_string()],
    );
    assert_eq!(code, 0, "a warning does not refuse the file: {out}{err}");
    assert!(
        out.contains(
            "warning[overlapping-trigger]: playbooks `fourth` and `gate` both run for finding \
             kind `test.gate`"
        ),
        "{out}"
    );
    assert!(
        !out.contains("`all-tests`") && !out.contains("`third`"),
        "disabled playbooks are left out: {out}"
    );
}

/// A file in a temporary directory (kept alive by the returned guard).
fn write_temp(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join(name);
    std::fs::write(&path, text).expect("write");
    (directory, path)
}

/// A playbook's history as (by, current), newest first.
async fn history_by(operator: &Operator, name: &str) -> Vec<(String, bool)> {
    let history = operator
        .get(&format!("/api/v1/playbooks/{name}/history"), VIEWER)
        .await;
    history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|entry| {
            (
                entry["by"].as_str().unwrap_or("(none)").to_owned(),
                entry["current"] == true,
            )
        })
        .collect()
}

/// `playbooks history` says who made each version current: the start, an apply through the API
/// (the token's name), a change of the file; an entry recorded before quench kept that reads
/// `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbook_history_says_who_made_each_version_current() {
    let mut operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    let applied = operator
        .post(
            "/api/v1/playbooks",
            EDITOR,
            json!({"source": GATE_PLAYBOOK.replace("Revoke?", "Revoke now?")}),
        )
        .await;
    assert_eq!(applied.status, 200, "{}", applied.text);
    std::fs::write(
        operator.playbooks.join("gate.yaml"),
        GATE_PLAYBOOK.replace("Revoke?", "Revoke at once?"),
    )
    .expect("edit");
    let started = std::time::Instant::now();
    while history_by(&operator, "gate").await.len() < 3 {
        assert!(
            started.elapsed() < WAIT,
            "the edit is loaded:\n{}",
            operator.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by = |entries: &[(String, bool)]| -> Vec<String> {
        entries.iter().map(|(by, _)| by.clone()).collect()
    };
    let entries = history_by(&operator, "gate").await;
    assert_eq!(
        by(&entries),
        ["file change", "api:editor-bot", "quench serve"],
        "newest first"
    );
    assert!(entries[0].1, "the newest is current");

    // A store written before quench recorded who: its entries read as unknown.
    assert_eq!(operator.service.terminate(), Some(0));
    {
        use quench_runner::store::{Batch, Key, Store, StoreConfig};
        let store = Store::open(&StoreConfig::new(&operator.service.store)).expect("store opens");
        let long_ago = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let mut batch = Batch::new();
        batch.put(Key::PlaybookHistory("gate", long_ago), &"sha256:00000000");
        store.commit(batch).await.expect("commit");
    }
    operator.service.spawn();
    let entries = history_by(&operator, "gate").await;
    assert_eq!(
        by(&entries),
        ["file change", "api:editor-bot", "quench serve", "unknown"]
    );
    let (code, out, err) = operator.cli(Some(VIEWER), &["playbooks", "history", "gate"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("VERSION") && lines[0].contains("BY"),
        "{out}"
    );
    assert!(
        lines[1].contains("file change") && lines[1].ends_with("current"),
        "{out}"
    );
    assert!(lines[2].contains("api:editor-bot"), "{out}");
    assert!(lines[3].contains("quench serve"), "{out}");
    assert!(lines[4].contains("unknown"), "{out}");
}

/// `quench audit export` writes a segment that verifies on its own (and a changed one does not);
/// `quench audit prune` removes only what the export's last hash proves was exported (admin
/// only), leaves a checkpoint that `audit verify` starts from, and is itself audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_exported_in_segments_that_verify_and_pruned_behind_a_checkpoint() {
    let operator = Operator::start(&[("gate.yaml", GATE_PLAYBOOK)]).await;
    for index in 0..40 {
        operator
            .publish_finding(&finding(
                &format!("x-{index}"),
                "test.gate",
                &format!("key_x{index}"),
            ))
            .await;
    }
    let started = std::time::Instant::now();
    while operator.runs("?state=waiting&limit=100").await.len() < 40 {
        assert!(started.elapsed() < WAIT, "40 runs wait");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = operator.audit().await.len() as u64;
    assert!(total > 100, "{total}");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("audit-1.jsonl");
    let file_arg = file.display().to_string();
    let before = (total / 2).to_string();
    let (code, out, err) = operator.cli(
        Some(VIEWER),
        &["audit", "export", "--before", &before, "--out", &file_arg],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("exported entries #1 to #{} to ", total / 2 - 1)),
        "{out}"
    );
    let text = std::fs::read_to_string(&file).expect("the export");
    assert_eq!(text.lines().count() as u64, total / 2 - 1);
    let last_hash = out
        .split("the last hash is ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the last hash")
        .to_owned();
    let (code, out, _) = operator.cli(None, &["audit", "verify", "--file", &file_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("segment ok: entries #1 to #"), "{out}");

    // A changed line, or a removed one, does not verify.
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, text.replacen("test.gate", "test.gatf", 1)).expect("write");
    let (code, out, _) = operator.cli(
        None,
        &["audit", "verify", "--file", &tampered.display().to_string()],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("segment broken: "), "{out}");
    let lines: Vec<&str> = text.lines().collect();
    let removed = dir.path().join("removed.jsonl");
    std::fs::write(&removed, [&lines[..5], &lines[6..]].concat().join("\n")).expect("write");
    let (code, out, _) = operator.cli(
        None,
        &["audit", "verify", "--file", &removed.display().to_string()],
    );
    assert_eq!(code, 1, "{out}");

    // Pruning needs admin and the export's last hash.
    let through = (total / 2 - 1).to_string();
    let (code, _, err) = operator.cli(
        Some(EDITOR),
        &[
            "audit",
            "prune",
            "--through",
            &through,
            "--hash",
            &last_hash,
        ],
    );
    assert_eq!(code, 77, "{err}");
    let (code, _, err) = operator.cli(
        Some(ADMIN),
        &[
            "audit",
            "prune",
            "--through",
            &through,
            "--hash",
            &"0".repeat(64),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not stored with hash"), "{err}");
    assert_eq!(
        operator.audit().await.len() as u64,
        total,
        "nothing removed"
    );
    let (code, out, err) = operator.cli(
        Some(ADMIN),
        &[
            "audit",
            "prune",
            "--through",
            &through,
            "--hash",
            &last_hash,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("pruned the audit log through entry #"),
        "{out}"
    );
    let checkpoint: u64 = out
        .trim_start_matches("pruned the audit log through entry #")
        .split(';')
        .next()
        .and_then(|seq| seq.parse().ok())
        .expect("the checkpoint");
    assert!(
        checkpoint < total / 2 && checkpoint + 32 > total / 2 - 1,
        "{checkpoint}"
    );

    // The rest still verifies from the checkpoint; the prune is audited with who did it.
    let (code, out, err) = operator.cli(Some(VIEWER), &["audit", "verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("audit chain ok: "), "{out}");
    let entries = operator.audit().await;
    assert!(
        entries
            .iter()
            .all(|entry| entry["seq"].as_u64() > Some(checkpoint))
    );
    let pruned = entries
        .iter()
        .find(|entry| entry["kind"] == "audit_pruned")
        .expect("the prune is audited");
    assert_eq!(pruned["actor"]["id"], "admin-bot");
    assert_eq!(pruned["detail"]["through"], checkpoint);

    // The next export starts after the checkpoint and follows the first one's entries.
    let second = dir.path().join("audit-2.jsonl");
    let (code, out, err) = operator.cli(
        Some(VIEWER),
        &[
            "audit",
            "export",
            "--before",
            &total.to_string(),
            "--out",
            &second.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("exported entries #{} to ", checkpoint + 1)),
        "{out}"
    );
    let checkpoint_hash = std::fs::read_to_string(&file)
        .expect("first export")
        .lines()
        .nth(checkpoint as usize - 1)
        .map(|line| hex(&Sha256::digest(line.as_bytes())))
        .expect("the checkpoint's line");
    let (code, out, _) = operator.cli(
        None,
        &[
            "audit",
            "verify",
            "--file",
            &second.display().to_string(),
            "--after",
            &checkpoint_hash,
        ],
    );
    assert_eq!(code, 0, "the second segment follows the first: {out}");
}
