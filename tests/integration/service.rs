//! `quench serve` against a real `nats-server` (its own, per test): a finding becomes a run, a
//! re-published id is dropped even without `Nats-Msg-Id`, the same key joins the open run, every
//! kind of bad input is dead-lettered with its reason, a decision resumes a gate, a NATS restart
//! mid-stream loses nothing, and SIGTERM mid-run exits 0 and the run resumes after a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use quench_proto::RunEvent;
use quench_runner::engine::{Gate, Run, RunStatus, StepStatus};
use quench_runner::store::{Key, Store, StoreConfig, parse_stored};
use serde_json::json;

use crate::support::{NatsServer, Service, eventually, http_status, record};

const WAIT: Duration = Duration::from_secs(20);

pub(crate) const GATE_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: gate
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: hello
    uses: note
    with:
      message: "seen {{ finding.key }}"
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: keep
  - id: bye
    uses: note
    with:
      message: "{{ steps.decide.choice }}"
"#;

const WAIT_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: sleeper
on:
  finding:
    kinds: [openai.api_key.unused]
steps:
  - id: nap
    uses: wait
    with:
      for: 2s
  - id: done
    uses: note
    with:
      message: awake
"#;

pub(crate) fn finding(id: &str, key_id: &str) -> serde_json::Value {
    json!({
        "schema": "quench.finding/v1", "id": id, "kind": "openai.api_key.leaked", "severity": "high",
        "title": "leaked key", "detected_at": "2026-11-20T10:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": key_id, "project_id": "proj_1"}
    })
}

/// `quench serve` on its own nats-server, with a test client that records run events.
pub(crate) struct World {
    pub(crate) nats: NatsServer,
    pub(crate) service: Service,
    pub(crate) client: async_nats::Client,
    events: Arc<Mutex<Vec<RunEvent>>>,
    _dir: tempfile::TempDir,
}

impl World {
    pub(crate) async fn start(playbooks: &[&str]) -> World {
        World::start_with_env(playbooks, &[]).await
    }

    pub(crate) async fn start_with_env(playbooks: &[&str], env: &[(&str, &str)]) -> World {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url())
            .await
            .expect("test client connects");
        World::on(nats, client, playbooks, env, None).await
    }

    /// The service on `nats` (configured by `env` and the config file `config`), observed
    /// through `client`.
    pub(crate) async fn on(
        nats: NatsServer,
        client: async_nats::Client,
        playbooks: &[&str],
        env: &[(&str, &str)],
        config: Option<&str>,
    ) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let playbook_dir = dir.path().join("playbooks");
        std::fs::create_dir(&playbook_dir).expect("playbook dir");
        for (index, playbook) in playbooks.iter().enumerate() {
            std::fs::write(playbook_dir.join(format!("p{index}.yaml")), playbook)
                .expect("write playbook");
        }
        let service = Service::launch(&nats.url(), &playbook_dir, dir.path(), env, config, &[]);
        let events = record::<RunEvent>(&client, "quench.events.>").await;
        World {
            nats,
            service,
            client,
            events,
            _dir: dir,
        }
    }

    pub(crate) async fn publish(&self, subject: &str, body: Vec<u8>, msg_id: Option<&str>) {
        let jetstream = async_nats::jetstream::new(self.client.clone());
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert("Nats-Msg-Id", id);
        }
        jetstream
            .publish_with_headers(subject.to_owned(), headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("stream ack");
    }

    pub(crate) async fn publish_finding(&self, finding: &serde_json::Value, msg_id: Option<&str>) {
        let subject = format!(
            "quench.findings.{}",
            finding["kind"].as_str().expect("kind")
        );
        self.publish(&subject, finding.to_string().into_bytes(), msg_id)
            .await;
    }

    /// Every run event seen so far.
    pub(crate) fn events(&self) -> Vec<RunEvent> {
        self.events.lock().expect("lock").clone()
    }

    pub(crate) fn count(&self, kind: &str) -> usize {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|event| serde_json::to_value(event.kind).ok() == Some(json!(kind)))
            .count()
    }

    pub(crate) fn run_ids(&self, kind: &str) -> Vec<String> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|event| serde_json::to_value(event.kind).ok() == Some(json!(kind)))
            .map(|event| event.run_id.clone())
            .collect()
    }

    /// Stops the service and opens its store.
    pub(crate) fn stop_and_open(&mut self) -> Store {
        assert_eq!(
            self.service.terminate(),
            Some(0),
            "SIGTERM exits 0:\n{}",
            self.service.log_text()
        );
        Store::open(&StoreConfig::new(&self.service.store))
            .expect("store opens after the service stopped")
    }
}

pub(crate) fn audit_kinds(store: &Store, kind: &str) -> usize {
    store
        .audit_entries()
        .filter(|entry| {
            parse_stored(&entry.as_ref().expect("entry").1)
                .is_some_and(|(_, _, entry)| entry.kind == kind)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_start_runs_duplicates_are_dropped_and_keys_join() {
    let mut world = World::start(&[GATE_PLAYBOOK]).await;
    assert_eq!(http_status(&world.service.listen, "/healthz"), Some(200));
    world
        .publish_finding(&finding("f-1", "key_1"), Some("f-1"))
        .await;
    eventually(WAIT, "the run parks on its gate", || {
        world.count("waiting") == 1
    })
    .await;
    let run = world.run_ids("run_started")[0].clone();

    // The same id again, without the de-duplication header: JetStream keeps it, quench drops it.
    world.publish_finding(&finding("f-1", "key_1"), None).await;
    // A new sighting of the same key joins the open run.
    world
        .publish_finding(&finding("f-2", "key_1"), Some("f-2"))
        .await;
    // A different key starts its own run.
    world
        .publish_finding(&finding("f-3", "key_3"), Some("f-3"))
        .await;
    eventually(WAIT, "the second key's run parks", || {
        world.count("waiting") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        world.count("run_started"),
        2,
        "one run per key, the duplicate dropped"
    );

    let store = world.stop_and_open();
    let stored: Run = store.get(Key::Run(&run)).expect("read").expect("run");
    assert_eq!(stored.attached, vec!["f-2".to_owned()]);
    assert_eq!(
        audit_kinds(&store, "finding_received"),
        3,
        "the duplicate id never became a finding"
    );
    assert_eq!(store.verify_audit().expect("verify").first_bad, None);
    let event = world.events.lock().expect("lock")[0].clone();
    assert!(!event.audit_hash.is_empty() && event.playbook == "gate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_its_reason() {
    let world = World::start(&[GATE_PLAYBOOK]).await;
    let jetstream = async_nats::jetstream::new(world.client.clone());
    let mut unknown = finding("f-v2", "key_v2");
    unknown["schema"] = json!("quench.finding/v2");
    let mut missing = finding("f-missing", "key_m");
    missing.as_object_mut().expect("object").remove("kind");
    let mut invalid = finding("f-invalid", "key_i");
    invalid["severity"] = json!("apocalyptic");
    let mut oversized = finding("f-big", "key_b");
    oversized["evidence"] = json!({"blob": "x".repeat(70 * 1024)});
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "quench.findings.openai.api_key.leaked",
            b"{not json".to_vec(),
            "invalid_json: ",
        ),
        (
            "quench.findings.openai.api_key.leaked",
            unknown.to_string().into_bytes(),
            "unknown_schema: unknown schema `quench.finding/v2`",
        ),
        (
            "quench.findings.openai.api_key.leaked",
            missing.to_string().into_bytes(),
            "invalid_field: field `kind`: missing field `kind`",
        ),
        (
            "quench.findings.openai.api_key.leaked",
            invalid.to_string().into_bytes(),
            "invalid_field: field `severity`: unknown variant `apocalyptic`",
        ),
        (
            "quench.findings.openai.api_key.leaked",
            oversized.to_string().into_bytes(),
            "too_large: message is",
        ),
        (
            "quench.decisions.run-x",
            b"{\"schema\":\"quench.decision/v1\"}".to_vec(),
            "invalid_field: field `id`: missing field `id`",
        ),
    ];
    for (subject, body, _) in &cases {
        world.publish(subject, body.clone(), None).await;
    }
    let stream = jetstream
        .get_stream("QUENCH_DLQ")
        .await
        .expect("dlq stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut seen = Vec::new();
    while seen.len() < cases.len() {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("dead letters arrive")
            .expect("message")
            .expect("ok");
        let headers = message.headers.clone().expect("headers");
        let reason = headers
            .get("Quench-Dlq-Reason")
            .expect("reason")
            .to_string();
        let subject = headers
            .get("Quench-Dlq-Subject")
            .expect("subject")
            .to_string();
        seen.push((message.subject.to_string(), subject, reason));
        message.ack().await.expect("ack");
    }
    for (original, _, expected) in &cases {
        assert!(
            seen.iter()
                .any(|(_, from, reason)| from == original && reason.starts_with(expected)),
            "no dead letter from {original} with a reason starting {expected:?}; got {seen:#?}"
        );
    }
    assert!(
        seen.iter()
            .filter(|(dlq, _, _)| dlq == "quench.dlq.findings")
            .count()
            == 5
    );
    assert!(seen.iter().any(|(dlq, _, _)| dlq == "quench.dlq.decisions"));
    assert_eq!(world.count("run_started"), 0, "nothing bad started a run");
    assert_eq!(
        http_status(&world.service.listen, "/readyz"),
        Some(200),
        "bad input does not wedge the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_resumes_a_gate_across_a_restart() {
    let mut world = World::start(&[GATE_PLAYBOOK]).await;
    world
        .publish_finding(&finding("f-d", "key_d"), Some("f-d"))
        .await;
    eventually(WAIT, "the run parks on its gate", || {
        world.count("waiting") == 1
    })
    .await;
    let run = world.run_ids("run_started")[0].clone();
    let store = world.stop_and_open();
    let gate: Gate = store
        .get(Key::Gate(&run, "decide"))
        .expect("read")
        .expect("gate");
    drop(store);
    world.service.spawn();

    let decision = |id: &str, by: &str, token: &str| {
        json!({
            "schema": "quench.decision/v1", "id": id, "run_id": run, "gate": "decide", "token": token,
            "choice": "revoke", "actor": {"via": "slack", "id": by}, "decided_at": "2026-11-20T10:05:00Z"
        })
        .to_string()
        .into_bytes()
    };
    let subject = format!("quench.decisions.{run}");
    world
        .publish(
            &subject,
            decision("d-1", "alice@example.com", "forged-token"),
            None,
        )
        .await;
    world
        .publish(
            &subject,
            decision("d-2", "mallory@example.com", &gate.token),
            None,
        )
        .await;
    world
        .publish(
            &subject,
            decision("d-3", "alice@example.com", &gate.token),
            None,
        )
        .await;
    eventually(WAIT, "the run completes after the decision", || {
        world.count("run_completed") == 1
    })
    .await;
    let store = world.stop_and_open();
    let ended: Run = store.get(Key::Run(&run)).expect("read").expect("run");
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(
        ended.steps["decide"].decided_by,
        vec!["alice@example.com".to_owned()]
    );
    let refusals: Vec<String> = store
        .run_audit(&run)
        .expect("timeline")
        .into_iter()
        .filter(|entry| entry.kind == "decision" && entry.allowed == Some(false))
        .map(|entry| {
            entry.detail["refused"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(refusals, ["wrong_token", "not_allowed"]);
}

/// Waits until the findings consumer delivered `total` findings and has none pending.
pub(crate) async fn wait_until_delivered(world: &World, total: u64) {
    let jetstream = async_nats::jetstream::new(world.client.clone());
    let started = std::time::Instant::now();
    loop {
        let drained = match jetstream.get_stream("QUENCH_FINDINGS").await {
            Ok(stream) => match stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("quench-findings")
                .await
            {
                Ok(mut consumer) => consumer.info().await.is_ok_and(|info| {
                    info.num_pending == 0 && info.delivered.stream_sequence >= total
                }),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if drained {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the findings were not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_nothing() {
    let mut world = World::start(&[GATE_PLAYBOOK]).await;
    let total = 60;
    for n in 0..total {
        if n == total / 2 {
            world.nats.restart();
        }
        // A scanner publishes at least once: retry until the stream acknowledges.
        let body = finding(&format!("r-{n}"), &format!("key_r{n}")).to_string();
        let subject = "quench.findings.openai.api_key.leaked".to_owned();
        let started = std::time::Instant::now();
        loop {
            let jetstream = async_nats::jetstream::new(world.client.clone());
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("r-{n}").as_str());
            let sent = match jetstream
                .publish_with_headers(subject.clone(), headers, body.clone().into())
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if sent {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "could not publish after the NATS restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Wait until every finding was delivered to the service (an ack lost in the restart leaves a
    // message unacknowledged until `ack_wait`, but it was committed first).
    wait_until_delivered(&world, total as u64).await;
    // Delivered findings are committed within a chunk's commit; give the last chunk that long.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store = world.stop_and_open();
    assert_eq!(
        audit_kinds(&store, "run_started"),
        total,
        "one run per finding, none lost, none doubled"
    );
    assert_eq!(audit_kinds(&store, "finding_received"), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_zero_and_the_run_resumes() {
    let mut world = World::start(&[WAIT_PLAYBOOK]).await;
    let mut unused = finding("w-1", "key_w");
    unused["kind"] = json!("openai.api_key.unused");
    world.publish_finding(&unused, Some("w-1")).await;
    eventually(WAIT, "the run waits", || world.count("waiting") == 1).await;
    assert_eq!(
        world.service.terminate(),
        Some(0),
        "SIGTERM exits 0:\n{}",
        world.service.log_text()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    world.service.spawn();
    eventually(
        WAIT,
        "the wait ends after the restart and the run completes",
        || world.count("run_completed") == 1,
    )
    .await;
    assert!(world.service.log_text().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quench_publish_sends_findings_and_reports_acks() {
    let world = World::start(&[GATE_PLAYBOOK]).await;
    let directory = tempfile::tempdir().expect("temp dir");
    let file = directory.path().join("findings.jsonl");
    let mut bad = finding("p-bad", "key_pb");
    bad["severity"] = json!("extreme");
    let lines = [
        finding("p-1", "key_p1").to_string(),
        finding("p-2", "key_p2").to_string(),
        bad.to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let publish = |path: &std::path::Path| {
        std::process::Command::new(crate::support::quench_bin())
            .args(["publish", "--nats", &world.nats.url()])
            .arg(path)
            .output()
            .expect("quench publish runs")
    };
    let output = publish(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "one invalid finding fails the command: {stdout}"
    );
    assert!(stdout.contains("published p-1 from "), "{stdout}");
    assert!(stdout.contains("QUENCH_FINDINGS seq 1"), "{stdout}");
    assert!(
        stdout.contains("FAILED - from ") && stdout.contains("field `severity`"),
        "{stdout}"
    );
    assert!(stdout.ends_with("publish: 2 sent, 1 failed\n"), "{stdout}");

    std::fs::write(&file, lines[..2].join("\n")).expect("write");
    let output = publish(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("published p-1 from ")
            && stdout.contains("duplicate of an earlier publish"),
        "{stdout}"
    );
    eventually(WAIT, "both findings started runs", || {
        world.count("waiting") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(world.count("run_started"), 2);
}

const SLACK_REVOKE: &str = r#"schema: quench.playbook/v1
name: slack-revoke
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: decide
    uses: approval
    with:
      approvers: ["{{ finding.owner.email }}"]
      question: "Your key *{{ finding.resource.id }}* leaked. Revoke it?"
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: revoke
  - id: revoke
    if: steps.decide.output.choice == "revoke"
    uses: openai.revoke_key
    with:
      project_id: "{{ finding.resource.project_id }}"
      key_id: "{{ finding.resource.id }}"
  - id: tell
    uses: slack.message
    with:
      to: "{{ finding.owner.email }}"
      text: "Done: {{ steps.decide.output.choice }}"
"#;

/// Dry-run sends nothing, but it checks what it would send exactly as live mode does before any
/// call: a revoke whose key id is not an OpenAI id fails the step and the run (it does not show
/// up as a harmless `dry_run`), and a valid one in the same run is described.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_fails_a_step_live_mode_would_refuse() {
    const REVOKE_TWICE: &str = r#"schema: quench.playbook/v1
name: dry-revoke
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: valid
    uses: openai.revoke_key
    with:
      project_id: "{{ finding.resource.project_id }}"
      key_id: "{{ finding.resource.id }}"
  - id: invalid
    uses: openai.revoke_key
    with:
      project_id: "{{ finding.resource.project_id }}"
      key_id: "{{ finding.resource.id }}/../../admin_api_keys/key_admin"
"#;
    let mut world = World::start(&[REVOKE_TWICE]).await;
    world
        .publish_finding(&finding("f-dry", "key_1"), Some("f-dry"))
        .await;
    eventually(WAIT, "the run ends", || {
        world.count("run_failed") + world.count("run_completed") == 1
    })
    .await;
    assert_eq!(
        world.count("run_failed"),
        1,
        "the run fails as live mode's would"
    );
    let run = world.run_ids("run_failed").remove(0);
    let store = world.stop_and_open();
    let ended: Run = store.get(Key::Run(&run)).expect("read").expect("run");
    assert_eq!(ended.steps["valid"].status, StepStatus::DryRun);
    assert_eq!(ended.steps["invalid"].status, StepStatus::Failed);
    let error = ended.steps["invalid"].error.clone().unwrap_or_default();
    assert!(error.contains("`key_id` is not an OpenAI id"), "{error}");
    let described: Vec<String> = store
        .run_audit(&run)
        .expect("timeline")
        .iter()
        .filter(|entry| entry.kind == "step_dry_run")
        .filter_map(|entry| entry.step.clone())
        .collect();
    assert_eq!(
        described,
        ["valid"],
        "only the valid request is recorded as dry-run"
    );

    // The failure is one WARN line in the service log, with where and why; the log is plain
    // text (stderr is a file, not a terminal).
    let log = world.service.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(" WARN ") && line.contains("run failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    for field in [
        format!("run_id={run}"),
        "playbook=dry-revoke".to_owned(),
        "step=\"invalid\"".to_owned(),
        "reason=\"`key_id` is not an OpenAI id".to_owned(),
    ] {
        assert!(failed[0].contains(&field), "{field} in {}", failed[0]);
    }
    let ended = log
        .lines()
        .find(|line| line.contains("run ended"))
        .expect("a run ended line");
    assert!(ended.contains("status=\"failed\""), "{ended}");
    assert!(
        ended.contains("reason=\"`key_id` is not an OpenAI id"),
        "{ended}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escapes in a log file:\n{log}"
    );
}

/// Through the real service: the owner gets a DM with buttons, a click (as the gateway would
/// publish it) resumes the run, the message is updated, and — with no OpenAI admin key — the
/// revoke is recorded as the request it would send, and nothing reaches OpenAI. The bot token
/// appears in no log line and nowhere in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_approval_and_a_dry_run_revoke_through_the_service() {
    slack_approval_then_revoke(false).await;
}

/// The same with an admin key: the key is deleted at OpenAI exactly once, and the admin key
/// appears in no log line and nowhere in the store either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_approval_and_a_live_revoke_through_the_service() {
    slack_approval_then_revoke(true).await;
}

async fn slack_approval_then_revoke(live: bool) {
    use crate::support::openai_fake::{KeySeed, OpenAiFake, Role};
    use crate::support::slack_fake::SlackFake;

    let slack = SlackFake::start().await;
    slack.add_user("owner@example.com", "U0OWNER");
    let openai = OpenAiFake::start().await;
    openai.seed_project("proj_1", "web");
    openai.seed_user("proj_1", "user_1", "owner@example.com", Role::Owner);
    openai.seed_key("proj_1", "user_1", KeySeed::new("key_1"));
    let (api_url, token, base_url) = (slack.api_url(), slack.bot_token(), openai.base_url());
    let admin_key = openai.admin_key();
    let mut env = vec![
        ("QUENCH_SLACK__API_URL", api_url.as_str()),
        ("QUENCH_SLACK__BOT_TOKEN", token.as_str()),
        ("QUENCH_OPENAI__BASE_URL", base_url.as_str()),
    ];
    if live {
        env.push(("QUENCH_OPENAI__ADMIN_KEY", admin_key.as_str()));
    }
    let mut world = World::start_with_env(&[SLACK_REVOKE], &env).await;
    let mut leaked = finding("f-slack", "key_1");
    leaked["owner"] = json!({"email": "owner@example.com"});
    world.publish_finding(&leaked, Some("f-slack")).await;

    eventually(WAIT, "the owner is asked in a DM", || {
        slack
            .dm_channel("U0OWNER")
            .is_some_and(|dm| !slack.messages_in(&dm).is_empty())
    })
    .await;
    let dm = slack.dm_channel("U0OWNER").expect("DM");
    let asked = slack.messages_in(&dm).remove(0);
    let blocks = asked.blocks.expect("blocks");
    let revoke: serde_json::Value = blocks
        .as_array()
        .expect("blocks")
        .iter()
        .filter(|block| block["type"] == "actions")
        .flat_map(|block| block["elements"].as_array().cloned().unwrap_or_default())
        .find(|button| button["text"]["text"] == "revoke")
        .and_then(|button| serde_json::from_str(button["value"].as_str()?).ok())
        .expect("a revoke button carrying its decision");
    let run = revoke["run_id"].as_str().expect("run").to_owned();

    let click = json!({
        "schema": "quench.decision/v1", "id": "click-1", "run_id": run, "gate": revoke["gate"],
        "token": revoke["token"], "choice": "revoke",
        "actor": {"via": "slack", "id": "T0TEAM/U0OWNER"}, "decided_at": "2026-11-20T10:05:00Z"
    });
    world
        .publish(
            &format!("quench.decisions.{run}"),
            click.to_string().into_bytes(),
            Some("click-1"),
        )
        .await;
    eventually(WAIT, "the run completes", || {
        world.count("run_completed") == 1
    })
    .await;
    eventually(WAIT, "the approval message is updated", || {
        !slack.calls_to("chat.update").is_empty()
    })
    .await;
    let updated = slack.messages_in(&dm).remove(0);
    assert!(
        updated
            .text
            .as_deref()
            .is_some_and(|text| text.contains("Decided: *revoke* by <@U0OWNER> (via slack)")),
        "{updated:?}"
    );
    let told = slack.messages_in(&dm).pop().expect("the closing message");
    assert_eq!(told.text.as_deref(), Some("Done: revoke"));

    let log = world.service.log_text();
    assert!(
        log.contains("outcome=decided: revoke"),
        "log fields read as text, not Rust Debug:\n{log}"
    );
    let store = world.stop_and_open();
    let deletes = openai.calls_to("DELETE", "/v1/organization/projects/proj_1/api_keys/key_1");
    let timeline = store.run_audit(&run).expect("timeline");
    let dry_run: Vec<serde_json::Value> = timeline
        .iter()
        .filter(|entry| entry.kind == "step_dry_run")
        .map(|entry| entry.detail["request"].clone())
        .collect();
    if live {
        assert_eq!(deletes.len(), 1, "revoked exactly once");
        assert!(!openai.key_exists("proj_1", "key_1"));
        assert!(dry_run.is_empty());
        let ended: Run = store.get(Key::Run(&run)).expect("read").expect("run");
        assert_eq!(ended.steps["revoke"].output["deleted"], true);
    } else {
        assert!(deletes.is_empty(), "dry-run sends nothing to OpenAI");
        assert!(openai.key_exists("proj_1", "key_1"));
        assert_eq!(dry_run.len(), 1, "{dry_run:?}");
        assert_eq!(dry_run[0]["method"], "DELETE");
        assert_eq!(
            dry_run[0]["path"],
            "/v1/organization/projects/proj_1/api_keys/key_1"
        );
    }
    assert!(!log.contains(&admin_key), "the admin key is not logged");
    drop(store);
    let stored = crate::support::stored_values(&world.service.store);
    assert!(!stored.is_empty(), "the store was read");
    for value in &stored {
        assert!(!value.contains(&admin_key), "the admin key is not stored");
    }
    assert!(!log.contains(&token), "the bot token is not logged");
    for value in &stored {
        assert!(!value.contains(&token), "the bot token is not stored");
    }
}

/// `quench publish` creates no streams (a scanner's NATS user may not use the JetStream API):
/// with no runner having set them up, it says what to do.
#[test]
fn quench_publish_without_streams_says_to_start_the_runner() {
    let nats = NatsServer::start();
    let directory = tempfile::tempdir().expect("temp dir");
    let file = directory.path().join("finding.json");
    std::fs::write(&file, finding("p-none", "key_none").to_string()).expect("write");
    let output = std::process::Command::new(crate::support::quench_bin())
        .args(["publish", "--nats", &nats.url()])
        .arg(&file)
        .output()
        .expect("quench publish runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "no JetStream stream takes quench.findings.openai.api_key.leaked (start `quench serve` once: it creates QUENCH_FINDINGS)"
        ),
        "{stdout}"
    );
}

/// Without an OpenAI admin key a scheduled review that reads the Admin API could only fail, at
/// every tick: it is paused (said once, at start), while a schedule that needs no credentials
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_that_need_missing_credentials_are_paused_not_failed() {
    const READS_AUDIT_LOG: &str = r#"schema: quench.playbook/v1
name: reads-audit-log
on:
  schedule:
    cron: "* * * * * *"
steps:
  - id: changes
    uses: openai.audit_events
    with:
      since: "2026-01-01T00:00:00Z"
      event_types: [api_key.updated]
"#;
    const NOTES: &str = r#"schema: quench.playbook/v1
name: notes
on:
  schedule:
    cron: "* * * * * *"
steps:
  - id: say
    uses: note
    with:
      message: tick
"#;
    let mut world = World::start(&[READS_AUDIT_LOG, NOTES]).await;
    assert!(
        world.service.log_text().contains("loaded=2 refused=0"),
        "both playbooks load:\n{}",
        world.service.log_text()
    );
    eventually(WAIT, "the schedule that needs nothing runs", || {
        world.count("run_completed") >= 2
    })
    .await;
    let events = world.events();
    assert!(
        events.iter().all(|event| event.playbook == "notes"),
        "no run of the paused schedule: {events:?}"
    );
    assert_eq!(world.count("run_failed"), 0);
    let log = world.service.log_text();
    let paused: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("schedule paused"))
        .collect();
    assert_eq!(paused.len(), 1, "said once:\n{log}");
    assert!(
        paused[0].contains("playbook=reads-audit-log")
            && paused[0].contains("openai.admin_key is not configured"),
        "{}",
        paused[0]
    );
    world.stop_and_open();
}

/// `serve` returns with what it opened let go: its store opens again at once in the same
/// process. (`campaign.start` once held the engine that holds it, a cycle that kept the store,
/// and sled's lock on it, alive until the process exited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_lets_go_of_its_store() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", crate::support::free_port());
    let mut config = quench_runner::config::Config::default();
    config.nats.url = nats.url();
    config.store.path = dir.path().join("state");
    config.playbooks.dir = dir.path().to_owned();
    config.api.listen = listen.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let service = tokio::spawn(quench_runner::service::serve(config, shutdown.clone()));
    eventually(Duration::from_secs(20), "the service serves", || {
        http_status(&listen, "/readyz") == Some(200)
    })
    .await;
    shutdown.cancel();
    service.await.expect("joined").expect("a clean stop");
    let store = Store::open(&StoreConfig::new(dir.path().join("state")));
    assert!(store.is_ok(), "{store:?}");
}
