//! Keys in findings, end to end: a real `nats-server`, `quench serve` and `quench-gateway`.
//! Findings quote keys right after `x`, `_`, `0`, `é` and `Ж`, JSON-escaped, in their id and
//! key, through the findings webhook and in a url-encoded GitHub form; refused messages quote
//! them escaped (dead letters), and one arrives on a subject that is a key. Afterwards no
//! key-shaped string, nor any piece of a key, is in the store's files, `GET /api/v1/runs/{id}`,
//! the audit log, run events, `GET /api/v1/dlq` or either process's log. And findings that
//! differ only inside a secret (the same last four characters) start one run each. And a key
//! that is in the store all the same (here quoted by a playbook) is not served by the API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quench_gateway::signature::sign_github;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::service::GATE_PLAYBOOK;
use crate::support::gateway_client::{FINDINGS_SECRET, answer, findings_request, now, post};
use crate::support::{GatewayProcess, NatsServer, Service, eventually_async, record};

const WAIT: Duration = Duration::from_secs(30);
const VIEWER: &str = "t-viewer";
const GITHUB_SECRET: &str = "github-webhook-secret-for-tests";

/// A key in the current layout, different for each `n`, assembled at run time so no key sits
/// in the repository.
fn key(n: usize) -> String {
    let body = |salt: &str| -> String {
        let digest = format!("{:x}", Sha256::digest(format!("{salt}{n}")));
        // Mixed case, as real keys are.
        digest
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 3 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .take(40)
            .collect()
    };
    format!("sk-proj-{}T3BlbkFJ{}", body("a"), body("b"))
}

/// Pieces of `key` that must appear nowhere: its secret part, in overlapping 12-character
/// windows (the last four characters may stay, as in the provider's own redacted form).
fn pieces(key: &str) -> Vec<String> {
    let secret = &key[8..key.len() - 4];
    (0..secret.len() - 12)
        .step_by(6)
        .map(|start| secret[start..start + 12].to_owned())
        .collect()
}

/// Fails when `text` holds a key shape (escaped or not) or a piece of one of `keys`.
fn assert_clean(what: &str, text: &[u8], keys: &[String]) {
    let shown = String::from_utf8_lossy(text);
    assert!(
        !quench_proto::contains_secret(text),
        "{what} holds a key shape:\n{shown}"
    );
    for key in keys {
        for piece in pieces(key) {
            assert!(
                !text
                    .windows(piece.len())
                    .any(|window| window == piece.as_bytes()),
                "{what} holds a piece of {}…: `{piece}`",
                &key[..12]
            );
        }
    }
}

fn finding(id: &str, title: &str) -> Value {
    json!({
        "schema": "quench.finding/v1", "id": id, "kind": "openai.api_key.leaked", "severity": "high",
        "title": title, "detected_at": "2026-11-20T10:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{id}"), "project_id": "proj_1"}
    })
}

/// `quench serve` with a viewer token and `quench-gateway` (findings and GitHub webhooks) on
/// one nats-server, and every run event's raw payload.
struct World {
    _nats: NatsServer,
    service: Service,
    gateway: GatewayProcess,
    client: async_nats::Client,
    http: reqwest::Client,
    events: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(playbook: &str) -> World {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let playbooks = dir.path().join("playbooks");
        std::fs::create_dir(&playbooks).expect("playbook dir");
        std::fs::write(playbooks.join("playbook.yaml"), playbook).expect("write playbook");
        let sha = format!("{:x}", Sha256::digest(VIEWER.as_bytes()));
        let config = format!(
            "[[api.tokens]]\nname = \"viewer-bot\"\nrole = \"viewer\"\nsha256 = \"{sha}\"\n"
        );
        let service = Service::launch(&nats.url(), &playbooks, dir.path(), &[], Some(&config), &[]);
        let gateway_dir = dir.path().join("gateway");
        std::fs::create_dir(&gateway_dir).expect("gateway dir");
        let gateway = GatewayProcess::start(
            &format!(
                "[nats]\nurl = \"{}\"\n\n[gateway]\nfindings_secret = \"{FINDINGS_SECRET}\"\ngithub_secret = \"{GITHUB_SECRET}\"\n",
                nats.url()
            ),
            &gateway_dir,
        );
        let client = async_nats::connect(nats.url())
            .await
            .expect("test client connects");
        let events = record::<Value>(&client, "quench.events.>").await;
        World {
            _nats: nats,
            service,
            gateway,
            client,
            http: crate::support::gateway_client::http(),
            events,
            _dir: dir,
        }
    }

    async fn publish(&self, subject: &str, body: Vec<u8>) {
        async_nats::jetstream::new(self.client.clone())
            .publish(subject.to_owned(), body.into())
            .await
            .expect("publish")
            .await
            .expect("stream ack");
    }

    /// The body of a GET of the admin API as the viewer.
    async fn get(&self, path: &str) -> Vec<u8> {
        let response = self
            .http
            .get(format!("http://{}{path}", self.service.listen))
            .bearer_auth(VIEWER)
            .send()
            .await
            .expect("the API answers");
        assert_eq!(response.status(), 200, "GET {path}");
        response.bytes().await.expect("a body").to_vec()
    }

    async fn runs(&self) -> Vec<Value> {
        let page: Value =
            serde_json::from_slice(&self.get("/api/v1/runs?limit=100").await).expect("JSON");
        page["runs"].as_array().expect("runs").clone()
    }

    /// Every run as `GET /api/v1/runs/{id}` shows it holds no key (see [`assert_clean`]).
    async fn assert_runs_clean(&self, keys: &[String]) {
        for run in self.runs().await {
            let id = run["id"].as_str().expect("id");
            assert_clean(
                &format!("GET /api/v1/runs/{id}"),
                &self.get(&format!("/api/v1/runs/{id}")).await,
                keys,
            );
        }
    }

    async fn wait_for_runs(&self, count: usize) {
        let started = std::time::Instant::now();
        let mut runs = self.runs().await;
        while runs.len() < count {
            assert!(
                started.elapsed() < WAIT,
                "{} runs, not {count}: {runs:?}\n--- quench serve ---\n{}\n--- quench-gateway ---\n{}",
                runs.len(),
                self.service.log_text(),
                self.gateway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            runs = self.runs().await;
        }
        assert_eq!(runs.len(), count, "{runs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_findings_reach_no_store_api_event_dead_letter_or_log() {
    let mut world = World::start(GATE_PLAYBOOK).await;
    let keys: Vec<String> = (0..12).map(key).collect();
    let subject = "quench.findings.openai.api_key.leaked";

    // Straight to NATS: after a word character, a non-ASCII letter, everywhere a string goes.
    for (n, before) in ["x", "_", "0", "é", "Ж"].into_iter().enumerate() {
        let quoted = format!("{before}{}", keys[n]);
        let mut value = finding(&format!("after-{n}"), &format!("leaked {quoted}"));
        value["evidence"] =
            json!({"snippet": format!("OPENAI_KEY_{}", keys[n]), quoted.clone(): [quoted.clone()]});
        value["labels"] = json!({"leak": quoted});
        value["resource"]["name"] = json!(format!("{before}{}", keys[n]));
        world.publish(subject, value.to_string().into_bytes()).await;
    }
    // JSON-escaped in the raw body.
    let text = finding("escaped", &format!("leaked {}", keys[5])).to_string();
    let escaped = text.replace(
        &keys[5],
        &keys[5].replace('-', r"\u002d").replace('T', r"\u0054"),
    );
    assert_ne!(text, escaped);
    world.publish(subject, escaped.into_bytes()).await;
    // In the id and the key.
    let mut value = finding(&format!("id-{}", keys[6]), "a leak");
    value["key"] = json!(format!("openai:leaked:{}", keys[6]));
    world.publish(subject, value.to_string().into_bytes()).await;

    // Through the findings webhook; the answer quotes none either.
    let body = finding("webhook", &format!("OPENAI_KEY_{}", keys[7])).to_string();
    let (status, reply, _) = answer(findings_request(
        &world.gateway.url("/webhooks/findings"),
        &body,
        now(),
        FINDINGS_SECRET,
    ))
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_clean("the webhook's answer", reply.to_string().as_bytes(), &keys);
    // A GitHub form, every character of the payload percent-encoded, the key in the repository
    // name and as the alert's secret.
    let event = json!({
        "action": "created",
        "alert": {"number": 7, "secret_type": "openai_api_key", "secret": keys[8],
                  "html_url": "https://github.com/acme/app/security/secret-scanning/7"},
        "repository": {"id": 99, "full_name": format!("acme/x{}", keys[8]), "private": true},
    })
    .to_string();
    let form: String = "payload="
        .chars()
        .map(String::from)
        .chain(event.bytes().map(|byte| format!("%{byte:02X}")))
        .collect();
    let (status, reply, _) = answer(post(
        &world.gateway.url("/webhooks/github"),
        "application/x-www-form-urlencoded",
        &form,
        [
            ("x-github-event", "secret_scanning_alert".to_owned()),
            ("x-github-delivery", "delivery-8".to_owned()),
            (
                "x-hub-signature-256",
                sign_github(GITHUB_SECRET, form.as_bytes()),
            ),
        ],
    ))
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_clean("the GitHub answer", reply.to_string().as_bytes(), &keys);

    // Refused: not JSON with a JSON-escaped key; not a finding with a percent-encoded one and
    // one after `Ж`; a body that is not JSON on a subject that is a key.
    let escaped = keys[9].replace('-', r"\u002d");
    world
        .publish(
            subject,
            format!(r#"{{"title": "x{escaped}", "#).into_bytes(),
        )
        .await;
    world
        .publish(
            subject,
            json!({"schema": "quench.finding/v1", "title": keys[10].replace('-', "%2D"), "note": format!("Ж{}", keys[10])})
                .to_string()
                .into_bytes(),
        )
        .await;
    world
        .publish(&format!("quench.findings.{}", keys[11]), b"nope".to_vec())
        .await;

    world.wait_for_runs(9).await;
    eventually_async(WAIT, "three dead letters", || async {
        let page: Value = serde_json::from_slice(&world.get("/api/v1/dlq").await).expect("JSON");
        page["messages"].as_array().map(Vec::len) == Some(3)
    })
    .await;

    world.assert_runs_clean(&keys).await;
    assert_clean(
        "GET /api/v1/runs",
        &world.get("/api/v1/runs?limit=100").await,
        &keys,
    );
    assert_clean(
        "GET /api/v1/audit",
        &world.get("/api/v1/audit?limit=1000").await,
        &keys,
    );
    let dlq = world.get("/api/v1/dlq").await;
    assert_clean("GET /api/v1/dlq", &dlq, &keys);
    assert!(
        String::from_utf8_lossy(&dlq).contains("quench.findings.sk-proj-[REDACTED]..."),
        "the key-shaped subject is shown redacted"
    );
    let events = world.events.lock().expect("lock").clone();
    assert!(!events.is_empty());
    for event in &events {
        assert_clean("a run event", event.to_string().as_bytes(), &keys);
    }

    // The store's files as they are on disk, once the service has stopped.
    assert_eq!(world.service.terminate(), Some(0));
    let mut files = vec![world.service.store.clone()];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .expect("read dir")
                    .map(|entry| entry.expect("entry").path()),
            );
        } else {
            let bytes = std::fs::read(&path).expect("read a store file");
            read += bytes.len();
            assert_clean(&format!("store file {}", path.display()), &bytes, &keys);
        }
    }
    assert!(read > 0, "the store has files");
    assert_clean(
        "the quench serve log",
        world.service.log_text().as_bytes(),
        &keys,
    );
    assert_clean(
        "the gateway log",
        world.gateway.log_text().as_bytes(),
        &keys,
    );
}

/// Ten findings with distinct ids and keys, each holding a different secret with the same last
/// four characters: their identities are taken before redaction, so ten runs start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_that_differ_only_inside_a_secret_start_a_run_each() {
    let world = World::start(GATE_PLAYBOOK).await;
    let secrets: Vec<String> = (0..10).map(|n| format!("{}Wxyz", key(n))).collect();
    for secret in &secrets {
        let mut value = finding(&format!("leak-{secret}"), &format!("leaked {secret}"));
        value["key"] = json!(format!("openai:leaked:{secret}"));
        world
            .publish(
                "quench.findings.openai.api_key.leaked",
                value.to_string().into_bytes(),
            )
            .await;
    }
    world.wait_for_runs(10).await;
    assert_clean(
        "GET /api/v1/runs",
        &world.get("/api/v1/runs?limit=100").await,
        &secrets,
    );
}

/// Intake redacts what comes in, but a key may be in the store all the same (written by an
/// older version, or quoted by a playbook): the admin API redacts every answer on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_store_is_not_served_by_the_api() {
    let quoted = key(20);
    let playbook = format!(
        "schema: quench.playbook/v1\nname: quoting\non:\n  finding:\n    kinds: [openai.api_key.leaked]\nsteps:\n  - id: quote\n    uses: note\n    with:\n      message: \"the old key was {quoted}\"\n"
    );
    let world = World::start(&playbook).await;
    world
        .publish(
            "quench.findings.openai.api_key.leaked",
            finding("quoting-1", "a leak").to_string().into_bytes(),
        )
        .await;
    world.wait_for_runs(1).await;
    let keys = [quoted];
    world.assert_runs_clean(&keys).await;
    let shown = world.get("/api/v1/playbooks/quoting").await;
    assert_clean("GET /api/v1/playbooks/quoting", &shown, &keys);
    assert!(
        String::from_utf8_lossy(&shown).contains("the old key was sk-proj-[REDACTED]..."),
        "{}",
        String::from_utf8_lossy(&shown)
    );
}
