//! Evidence packs for auditors. Two worlds:
//!
//! - the engine on a manual clock with the real OpenAI and Slack connectors against their fakes,
//!   and the SHIPPED leaked-key playbook: findings answered after known times (revoke, keep with
//!   a reason, a timeout that revokes, one nobody acts on), so the pack's timing figures,
//!   actions, approvers, exceptions and CSV/HTML shapes are checked exactly;
//! - `quench serve` and `quench-gateway` as deployed (NATS with its users, the Slack and OpenAI
//!   fakes, a signing key in the config): an owner clicks revoke in Slack, the key is revoked,
//!   `quench evidence` makes the pack through the API and `quench evidence verify` passes; then a
//!   changed file, one byte of the signature and one audit entry in the store are each named.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use quench_runner::config::Secret;
use quench_runner::connectors::openai::{self, OpenAi};
use quench_runner::connectors::slack::Slack;
use quench_runner::evidence::{self, Document, Format, NothingRecorded, Period, Signer};
use quench_runner::store::{Store, StoreConfig};
use serde_json::{Value, json};

use crate::support::gateway_client::{
    SCANNER_PASSWORD, SIGNING_SECRET, answer, buttons, click_payload, connect_as, deployed_gateway,
    deployed_nats, deployed_runner, form, now, publish_finding, slack_request,
};
use crate::support::openai_fake::{KeySeed, OpenAiFake, Role};
use crate::support::slack_fake::SlackFake;
use crate::support::{Harness, hex, quench_bin, root, start_time};

const WAIT: Duration = Duration::from_secs(30);
const SEED: [u8; 32] = [7; 32];

fn shipped_playbook() -> String {
    std::fs::read_to_string(root().join("workflows/revoke-leaked-openai-key.yaml"))
        .expect("the shipped playbook")
}

fn leaked(id: &str, severity: &str, key_id: &str) -> quench_proto::Finding {
    let value = json!({
        "schema": "quench.finding/v1", "id": id, "kind": "openai.api_key.leaked", "severity": severity,
        "title": "leaked key", "detected_at": "2026-01-05T08:00:00Z", "source": {"scanner": "trufflehog"},
        "resource": {"provider": "openai", "type": "api_key", "id": key_id, "project_id": "proj_1", "name": key_id},
        "owner": {"email": "alice@example.com"}
    });
    quench_proto::Finding::parse(value.to_string().as_bytes(), 65536).expect("valid finding")
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

/// Answers a gate as `by` through the API, with a comment.
async fn answer_gate(harness: &Harness, run: &str, choice: &str, by: &str, comment: &str) {
    use quench_runner::engine::Clock;
    let decision = quench_proto::Decision {
        schema: quench_proto::DecisionSchema::V1,
        id: format!("d-{run}-{choice}"),
        run_id: run.to_owned(),
        gate: "decide".to_owned(),
        token: harness.gate(run, "decide").token,
        choice: choice.to_owned(),
        item: None,
        comment: Some(comment.to_owned()),
        actor: quench_proto::Actor {
            via: quench_proto::Via::Api,
            id: by.to_owned(),
            name: Some("Alice".to_owned()),
        },
        decided_at: harness.clock.now(),
    };
    let outcome = harness
        .engine
        .decide(&decision, quench_runner::engine::Defer::Never)
        .await
        .expect("decide");
    assert!(
        matches!(
            outcome,
            quench_runner::engine::DecisionOutcome::Decided { .. }
        ),
        "{outcome:?}"
    );
    harness.engine.idle().await.expect("drive");
}

/// Reads RFC 4180 text into records of fields.
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "the last record ends with CRLF"
    );
    records
}

#[tokio::test]
async fn a_pack_over_known_times_has_exact_figures_and_verifies() {
    let fake = OpenAiFake::start().await;
    fake.seed_project("proj_1", "web");
    fake.seed_user("proj_1", "user_alice", "alice@example.com", Role::Owner);
    for key in ["key_a", "key_b", "key_c"] {
        fake.seed_key("proj_1", "user_alice", KeySeed::new(key).name(key));
    }
    let slack_fake = SlackFake::start().await;
    slack_fake.add_user("alice@example.com", "U0ALICE");
    slack_fake.add_user("lead@example.com", "U0LEAD");
    slack_fake.add_user("secops1@example.com", "U0SECOPS1");
    let groups = BTreeMap::from([(
        "secops".to_owned(),
        vec!["lead@example.com".to_owned(), "U0SECOPS1".to_owned()],
    )]);
    let slack = Arc::new(
        Slack::new(
            &slack_fake.api_url(),
            &Secret::new(slack_fake.bot_token()),
            groups,
        )
        .expect("the Slack client"),
    );
    let client = Arc::new(
        OpenAi::new(&fake.base_url(), Secret::new(fake.admin_key()), None)
            .expect("the OpenAI client"),
    );
    let register = slack.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&StoreConfig::new(dir.path().join("state"))).expect("store");
    let playbook = shipped_playbook();
    let harness = Harness::build(
        store,
        &[&playbook],
        start_time(),
        Default::default(),
        move |actions| {
            openai::register(actions, client);
            register.register(actions);
        },
        Some(slack as Arc<dyn quench_runner::engine::Notifier>),
        |_| {},
    )
    .await;
    let t0 = start_time();

    // f1, critical: the owner revokes after 10 minutes.
    let f1 =
        crate::support::started(&harness.ingest(&[leaked("f1", "critical", "key_a")]).await[0]);
    harness.advance(minutes(10)).await;
    answer_gate(&harness, &f1, "revoke", "alice@example.com", "revoke it").await;
    assert!(!fake.key_exists("proj_1", "key_a"), "key_a revoked");
    // f2, high: at +1h; the owner keeps it after 30 minutes, saying why.
    harness.advance(minutes(50)).await;
    let f2 = crate::support::started(&harness.ingest(&[leaked("f2", "high", "key_b")]).await[0]);
    harness.advance(minutes(30)).await;
    answer_gate(
        &harness,
        &f2,
        "keep",
        "alice@example.com",
        "rotating tonight",
    )
    .await;
    assert!(fake.key_exists("proj_1", "key_b"), "key_b kept");
    // f3, high: at +2h; nobody answers, the gate's timeout revokes 4 hours later.
    harness.advance(minutes(30)).await;
    let f3 = crate::support::started(&harness.ingest(&[leaked("f3", "high", "key_c")]).await[0]);
    harness.advance(Duration::from_secs(4 * 3600)).await;
    assert!(!fake.key_exists("proj_1", "key_c"), "key_c revoked");
    // f4, low: at +6h, matched by no playbook: nothing is done.
    let mut low = crate::support::finding("f4", "test.unmatched", "key_d");
    low.severity = quench_proto::Severity::Low;
    harness.ingest(&[low]).await;
    // f5: after the period.
    harness.advance(Duration::from_secs(24 * 3600)).await;
    harness.ingest(&[leaked("f5", "critical", "key_e")]).await;

    let period = Period::new(t0, t0 + chrono::Duration::days(1)).expect("period");
    let document = evidence::build(
        harness.engine.store(),
        &NothingRecorded,
        period,
        t0 + chrono::Duration::days(3),
        "auditor",
    )
    .expect("the pack builds");

    // Findings and their times.
    let ids: Vec<&str> = document.findings.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["f1", "f2", "f3", "f4"]);
    let after = |id: &str| {
        let finding = document
            .findings
            .iter()
            .find(|f| f.id == id)
            .expect("finding");
        (
            finding.first_action.as_ref().map(|at| at.after_ms),
            finding.resolution.as_ref().map(|at| at.after_ms),
        )
    };
    assert_eq!(after("f1"), (Some(600_000), Some(600_000)));
    assert_eq!(after("f2"), (Some(1_800_000), Some(1_800_000)));
    assert_eq!(after("f3"), (Some(14_400_000), Some(14_400_000)));
    assert_eq!(after("f4"), (None, None));
    let f3_row = &document.findings[2];
    assert_eq!(
        f3_row.first_action.as_ref().map(|at| at.what.as_str()),
        Some("openai.revoke_key sent")
    );
    assert_eq!(f3_row.runs, std::slice::from_ref(&f3));

    // Median and p90 per severity (nearest rank): high has 30 min and 4 h.
    let timing: Vec<Value> = document
        .timing
        .iter()
        .map(|row| {
            json!([
                row.severity,
                row.findings,
                row.acted,
                row.resolved,
                row.first_action_median_ms,
                row.first_action_p90_ms,
                row.resolution_median_ms,
                row.resolution_p90_ms
            ])
        })
        .collect();
    assert_eq!(
        timing,
        [
            json!(["critical", 1, 1, 1, 600_000, 600_000, 600_000, 600_000]),
            json!([
                "high", 2, 2, 2, 1_800_000, 14_400_000, 1_800_000, 14_400_000
            ]),
            json!(["medium", 0, 0, 0, null, null, null, null]),
            json!(["low", 1, 0, 0, null, null, null, null]),
            json!(["info", 0, 0, 0, null, null, null, null]),
        ]
    );

    // Two revokes: one approved by the owner through the API, one by the gate's timeout.
    assert_eq!(document.actions.len(), 2, "{:#?}", document.actions);
    let by_owner = &document.actions[0];
    assert_eq!(by_owner.run_id, f1);
    assert_eq!(by_owner.action, "openai.revoke_key");
    assert_eq!(by_owner.channel, "api");
    assert_eq!(by_owner.choice.as_deref(), Some("revoke"));
    assert_eq!(by_owner.result, "succeeded");
    assert_eq!(by_owner.at, t0 + chrono::Duration::minutes(10));
    let approvers: Vec<(&str, &str, Option<&str>)> = by_owner
        .approvers
        .iter()
        .map(|a| (a.id.as_str(), a.via.as_str(), a.comment.as_deref()))
        .collect();
    assert_eq!(approvers, [("alice@example.com", "api", Some("revoke it"))]);
    assert!(
        by_owner.request.to_string().contains("key_a"),
        "the request sent names the key: {}",
        by_owner.request
    );
    let by_timeout = &document.actions[1];
    assert_eq!(by_timeout.run_id, f3);
    assert_eq!(by_timeout.channel, "timeout");
    assert!(by_timeout.approvers.is_empty());
    assert_eq!(by_timeout.at, t0 + chrono::Duration::hours(6));

    // One exception: the key kept, with the stated reason.
    assert_eq!(document.exceptions.len(), 1, "{:#?}", document.exceptions);
    let kept = &document.exceptions[0];
    assert_eq!(
        (
            kept.run_id.as_str(),
            kept.choice.as_str(),
            kept.severity.as_deref(),
            kept.reason.as_deref(),
            kept.channel.as_str(),
            kept.run_status.as_str()
        ),
        (
            f2.as_str(),
            "keep",
            Some("high"),
            Some("rotating tonight"),
            "api",
            "completed"
        )
    );
    assert_eq!(kept.decided_by, ["alice@example.com"]);
    assert!(!document.inventory.recorded);
    assert!(
        document
            .inventory
            .note
            .as_deref()
            .is_some_and(|note| note.starts_with("no inventory recorded"))
    );

    // The chain: verified, and the period's range ends before f5's entries.
    assert!(document.chain.verified);
    assert!(document.chain.complete);
    let first = document.chain.first.expect("entries in the period");
    let last = document.chain.last.expect("entries in the period");
    assert_eq!(first, 1);
    assert!(last < document.chain.head_seq, "f5 came after the period");
    assert_eq!(document.summary.findings, 4);
    assert_eq!(document.summary.actions, 2);

    // Signed, written, verified; the CSV and HTML shapes.
    let signer = Signer::from_seed(&SEED);
    let signed = signer
        .sign(&document, &[Format::Csv, Format::Html])
        .expect("signed");
    let pack = dir.path().join("pack");
    evidence::write_pack(&signed, &pack).expect("written");
    let pinned = evidence::public_key(&signer.public_key_pem()).expect("the public key");
    let (verified, read) = evidence::verify(&pack, Some(&pinned));
    assert!(verified.ok(), "{:#?}", verified.checks);
    assert_eq!(read.as_ref(), Some(&document));
    // Against the store's chain too.
    let mut against = verified.clone();
    let store = harness.engine.store();
    let entries = store.audit_entries().map(|item| {
        let (_, stored) = item.expect("entry");
        let (hash, _, entry) = quench_runner::store::parse_stored(&stored).expect("parses");
        (hash, entry)
    });
    evidence::against_chain(&mut against, &document, entries, None);
    assert!(against.ok(), "{:#?}", against.checks);

    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&pack)
        .expect("pack")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "actions.csv",
            "attestations.csv",
            "campaigns.csv",
            "chain.csv",
            "evidence.json",
            "exceptions.csv",
            "findings.csv",
            "inventory.csv",
            "manifest.json",
            "manifest.sig",
            "report.html",
            "timing.csv",
        ]
    );
    let read_csv = |name: &str| {
        let text = std::fs::read_to_string(pack.join(name)).expect("csv");
        let records = csv_records(&text);
        let width = records[0].len();
        assert!(
            records.iter().all(|record| record.len() == width),
            "{name}: every record has the header's {width} fields"
        );
        records
    };
    let findings = read_csv("findings.csv");
    assert_eq!(findings.len(), 5, "a header and four findings");
    assert_eq!(findings[0][..4], ["id", "kind", "key", "severity"]);
    assert_eq!(
        findings[2][9], "1800.000",
        "f2: time to first action in seconds"
    );
    let timing = read_csv("timing.csv");
    assert_eq!(
        timing[2],
        [
            "high",
            "2",
            "2",
            "2",
            "1800.000",
            "14400.000",
            "1800.000",
            "14400.000"
        ]
    );
    let actions = read_csv("actions.csv");
    assert_eq!(actions.len(), 3);
    let column = |name: &str| actions[0].iter().position(|h| h == name).expect("column");
    assert_eq!(actions[1][column("channel")], "api");
    assert!(actions[1][column("approvers")].starts_with("alice@example.com (api, "));
    assert!(actions[1][column("request")].contains("key_a"));
    assert_eq!(read_csv("exceptions.csv").len(), 2);
    assert_eq!(read_csv("inventory.csv").len(), 1, "the header only");
    assert_eq!(read_csv("chain.csv")[1], ["verified", "true"]);

    let html = std::fs::read_to_string(pack.join("report.html")).expect("html");
    for (id, title) in evidence::SECTIONS {
        assert!(
            html.contains(&format!("<h2 id=\"{id}\">")),
            "section {id} ({title})"
        );
    }
    for external in [
        "<script", "<link", "src=", "href=", "url(", "@import", "<img", "<iframe",
    ] {
        assert!(
            !html.contains(external),
            "the report loads nothing: {external}"
        );
    }
    assert!(html.contains("rotating tonight"));
    assert!(html.contains("no inventory recorded"));
    assert!(html.contains("@media print"));
}

/// A private key file (PKCS#8 PEM) and its public key file (SPKI PEM) in `dir`.
fn key_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let key = ed25519_dalek::SigningKey::from_bytes(&SEED);
    let private = dir.join("evidence-signing.pem");
    let public = dir.join("evidence-public.pem");
    std::fs::write(
        &private,
        key.to_pkcs8_pem(Default::default())
            .expect("pem")
            .as_bytes(),
    )
    .expect("write");
    std::fs::write(
        &public,
        key.verifying_key()
            .to_public_key_pem(Default::default())
            .expect("pem"),
    )
    .expect("write");
    (private, public)
}

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = std::process::Command::new(quench_bin());
    command.args(args).env_remove("QUENCH_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("quench runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn copy_pack(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("pack") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

async fn until(what: &str, log: impl Fn() -> String, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < WAIT,
            "not within {WAIT:?}: {what}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_pack_from_the_running_service_verifies_and_each_tampering_is_named() {
    let nats = deployed_nats();
    let slack = SlackFake::start().await;
    slack.add_user("alice@example.com", "U0ALICE");
    slack.add_user("lead@example.com", "U0LEAD");
    let openai = OpenAiFake::start().await;
    openai.seed_project("proj_1", "web");
    openai.seed_user("proj_1", "user_alice", "alice@example.com", Role::Owner);
    openai.seed_key(
        "proj_1",
        "user_alice",
        KeySeed::new("key_a").name("web-prod"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (private, public) = key_files(dir.path());

    // A key that is not an Ed25519 key is refused at start, naming the setting.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key\n").expect("write");
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(
        &bad_config,
        format!("[evidence]\nsigning_key_file = \"{}\"\n", bad.display()),
    )
    .expect("write");
    let (code, _, stderr) = run_cli(
        &["serve", "--config", &bad_config.display().to_string()],
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("evidence.signing_key_file"), "{stderr}");

    let admin_sha = hex(&<sha2::Sha256 as sha2::Digest>::digest(b"t-admin"));
    let viewer_sha = hex(&<sha2::Sha256 as sha2::Digest>::digest(b"t-viewer"));
    let extra = format!(
        r#"
[openai]
base_url = "{openai_url}"
admin_key = "{admin_key}"

[groups]
secops = ["lead@example.com"]

[evidence]
signing_key_file = "{private}"

[[api.tokens]]
name = "auditor-bot"
role = "admin"
sha256 = "{admin_sha}"

[[api.tokens]]
name = "viewer-bot"
role = "viewer"
sha256 = "{viewer_sha}"
"#,
        openai_url = openai.base_url(),
        admin_key = openai.admin_key(),
        private = private.display(),
    );
    let mut runner = deployed_runner(
        &nats,
        &slack,
        &[("revoke-leaked-openai-key.yaml", &shipped_playbook())],
        &extra,
        &[],
        dir.path(),
    );
    let gateway_dir = dir.path().join("gateway");
    std::fs::create_dir(&gateway_dir).expect("gateway dir");
    let gateway = deployed_gateway(&nats, &slack, &gateway_dir);
    let (scanner, _) =
        connect_as(&nats, "quench-scanner", SCANNER_PASSWORD, "_INBOX.scanner").await;
    let scanner = async_nats::jetstream::new(scanner);
    let started = Utc::now();
    let finding = json!({
        "schema": "quench.finding/v1", "id": "leak-1", "kind": "openai.api_key.leaked", "severity": "critical",
        "title": "leaked key", "detected_at": started.to_rfc3339(), "source": {"scanner": "github"},
        "resource": {"provider": "openai", "type": "api_key", "id": "key_a", "project_id": "proj_1", "name": "web-prod"},
        "owner": {"email": "alice@example.com"}
    });
    publish_finding(&scanner, &finding).await;

    // The owner is asked in Slack and clicks revoke.
    let mut asked = None;
    until(
        "the owner is asked",
        || runner.log_text(),
        || {
            asked = slack.dm_channel("U0ALICE").and_then(|channel| {
                slack
                    .messages_in(&channel)
                    .into_iter()
                    .find(|message| !buttons(message.blocks.as_ref()).is_empty())
                    .map(|message| (channel, buttons(message.blocks.as_ref())))
            });
            asked.is_some()
        },
    )
    .await;
    let (channel, asked) = asked.expect("asked");
    let revoke = asked
        .iter()
        .find(|button| button.value_json()["choice"] == "revoke")
        .expect("a revoke button");
    let body = form(&click_payload(
        "U0ALICE",
        revoke,
        &channel,
        &format!("{}.000001", now()),
        &slack.response_url(),
    ));
    let (status, reply, _) = answer(slack_request(
        &gateway.url("/slack/interactions"),
        &body,
        now(),
        SIGNING_SECRET,
    ))
    .await;
    assert_eq!(status, 200, "{reply}");
    until(
        "the key is revoked",
        || runner.log_text(),
        || !openai.key_exists("proj_1", "key_a"),
    )
    .await;
    let api = format!("http://{}", runner.listen);
    let http = reqwest::Client::new();
    let completed = || async {
        let runs: Value = http
            .get(format!("{api}/api/v1/runs?state=completed"))
            .bearer_auth("t-viewer")
            .send()
            .await
            .expect("runs")
            .json()
            .await
            .expect("json");
        runs["runs"].as_array().is_some_and(|runs| !runs.is_empty())
    };
    let waited = std::time::Instant::now();
    while !completed().await {
        assert!(waited.elapsed() < WAIT, "{}", runner.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The inventory's start-up pass has seen the key (the pack lists the estate from it).
    let waited = std::time::Instant::now();
    loop {
        let listed: Value = http
            .get(format!("{api}/api/v1/inventory?include_deleted=true"))
            .bearer_auth("t-viewer")
            .send()
            .await
            .expect("inventory")
            .json()
            .await
            .expect("json");
        if listed.to_string().contains("project_key:key_a") {
            break;
        }
        assert!(waited.elapsed() < WAIT, "{listed}\n{}", runner.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A viewer may not make a pack.
    let refused = http
        .post(format!("{api}/api/v1/evidence"))
        .bearer_auth("t-viewer")
        .json(&json!({"from": started - chrono::Duration::hours(1), "to": Utc::now() + chrono::Duration::hours(1)}))
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status().as_u16(), 403);

    // The auditor makes the pack through the API and verifies it with the public key.
    let out = dir.path().join("pack");
    let from = (started - chrono::Duration::hours(1)).to_rfc3339();
    let to = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let env = [
        ("QUENCH_API_URL", api.as_str()),
        ("QUENCH_TOKEN", "t-admin"),
    ];
    let (code, stdout, stderr) = run_cli(
        &[
            "evidence",
            "--from",
            &from,
            "--to",
            &to,
            "--out",
            &out.display().to_string(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{stdout}{stderr}\n{}", runner.log_text());
    assert!(
        stdout.contains(" 1 mutating actions, 0 exceptions"),
        "{stdout}"
    );
    let public_arg = public.display().to_string();
    let verify = |pack: &std::path::Path, more: &[&str]| {
        let pack = pack.display().to_string();
        let mut args = vec![
            "evidence",
            "verify",
            pack.as_str(),
            "--public-key",
            public_arg.as_str(),
        ];
        args.extend_from_slice(more);
        run_cli(&args, &[])
    };
    let (code, stdout, stderr) = verify(&out, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("pack verifies"), "{stdout}");
    let document: Document = serde_json::from_str(
        &std::fs::read_to_string(out.join("evidence.json")).expect("document"),
    )
    .expect("a document");
    let action = &document.actions[0];
    assert_eq!(action.action, "openai.revoke_key");
    assert_eq!(action.channel, "slack");
    assert_eq!(
        action.approvers[0].id, "T0FAKE/U0ALICE",
        "the team and user who clicked"
    );
    assert_eq!(action.result, "succeeded");
    assert_eq!(document.generated_by, "auditor-bot");
    // The inventory's start-up pass publishes findings of its own (an unused key); the leak is
    // the one acted on.
    let leak = document
        .findings
        .iter()
        .find(|finding| finding.id == "leak-1")
        .expect("the leak is a finding of the period");
    assert!(leak.first_action.is_some());
    assert_eq!(leak.severity, "critical");
    assert!(document.inventory.recorded, "{:?}", document.inventory);
    let key = document
        .inventory
        .rows
        .iter()
        .find(|row| row.id == "project_key:key_a")
        .expect("the key is in the inventory");
    assert_eq!(
        (key.owner.as_deref(), key.project.as_deref()),
        (Some("alice@example.com"), Some("proj_1"))
    );
    assert!(
        key.owner_source
            .as_deref()
            .is_some_and(|source| source.starts_with("key_user: ")),
        "the owner chain's link: {:?}",
        key.owner_source
    );
    assert!(!document.campaigns.recorded);
    let secret = openai.admin_key();
    for entry in std::fs::read_dir(&out).expect("pack") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&secret),
            "no file of the pack holds the admin key"
        );
    }

    // Against an export of the chain through the pack's last entry.
    let last = document.chain.last.expect("entries in the period");
    let segment = dir.path().join("chain.jsonl");
    let (code, stdout, stderr) = run_cli(
        &[
            "audit",
            "export",
            "--before",
            &(last + 1).to_string(),
            "--out",
            &segment.display().to_string(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, _) = verify(&out, &["--audit", &segment.display().to_string()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ok      against the chain: entry #{last} has hash {}",
            document.chain.last_hash.as_deref().expect("a hash")
        )),
        "{stdout}"
    );

    // A changed file is named, with the check that shows it.
    let changed = dir.path().join("changed");
    copy_pack(&out, &changed);
    let findings = std::fs::read_to_string(changed.join("findings.csv")).expect("csv");
    std::fs::write(
        changed.join("findings.csv"),
        findings.replace("critical", "low"),
    )
    .expect("write");
    let (code, stdout, _) = verify(&changed, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("FAILED  file findings.csv: its SHA-256 is"),
        "{stdout}"
    );
    assert!(stdout.contains("pack does NOT verify"), "{stdout}");

    // One byte of the signature.
    let resigned = dir.path().join("signature");
    copy_pack(&out, &resigned);
    let mut signature = std::fs::read(resigned.join("manifest.sig")).expect("sig");
    signature[10] ^= 0x01;
    std::fs::write(resigned.join("manifest.sig"), signature).expect("write");
    let (code, stdout, _) = verify(&resigned, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "FAILED  signature (manifest.sig over manifest.json): the signature does not match"
        ),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("FAILED").count(),
        1,
        "only the signature: {stdout}"
    );

    // Another key than the pinned one.
    let other = dir.path().join("other.pem");
    {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        std::fs::write(
            &other,
            key.verifying_key()
                .to_public_key_pem(Default::default())
                .expect("pem"),
        )
        .expect("write");
    }
    let (code, stdout, _) = run_cli(
        &[
            "evidence",
            "verify",
            &out.display().to_string(),
            "--public-key",
            &other.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("not by the key given with --public-key"),
        "{stdout}"
    );

    // One audit entry changed in the store after the pack was made.
    assert_eq!(runner.terminate(), Some(0), "{}", runner.log_text());
    let (code, stdout, stderr) = verify(&out, &["--store", &runner.store.display().to_string()]);
    assert_eq!(code, 0, "the untouched store agrees: {stdout}{stderr}");
    assert!(stdout.contains("ok      against the chain"), "{stdout}");
    let changed_seq = {
        let db = sled::open(&runner.store).expect("raw open");
        let mut changed = None;
        for item in db.iter() {
            let (key, value) = item.expect("read");
            let text = String::from_utf8_lossy(&value);
            if key.starts_with(b"a/")
                && text.contains("\"kind\":\"finding_received\"")
                && text.contains("\"id\":\"leak-1\"")
            {
                db.insert(
                    key,
                    text.replace("\"severity\":\"critical\"", "\"severity\":\"none\"")
                        .as_bytes(),
                )
                .expect("write");
                changed = Some(leak.seq);
                break;
            }
        }
        db.flush().expect("flush");
        changed.expect("the finding's entry is stored")
    };
    let (code, stdout, _) = verify(&out, &["--store", &runner.store.display().to_string()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FAILED  against the chain: the audit chain is broken at entry #{changed_seq}: its content does not match its hash"
        )),
        "{stdout}"
    );
    drop(gateway);
}
