//! The owner chain as an operator meets it: `[owners]`/`[teams]` mistakes refused at load
//! (exit 64, naming the key); a finding without an owner whose project maps to a team reaches
//! that team in Slack (its channel for a message, each member for an approval) through a real
//! `quench serve`, and the run records which link answered (run detail API and audit); an owner
//! recorded through the API answers for a service account's key; attributes through the API and
//! the CLI, role-checked and audited.

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;

use crate::service::World;
use crate::support::slack_fake::SlackFake;
use crate::support::{NatsServer, eventually};

const WAIT: Duration = Duration::from_secs(20);

const VIEWER: &str = "viewer-token-owners";
const EDITOR: &str = "editor-token-owners";

/// A playbook that tells the owner, asks the owner's team, and notes what the chain said.
const TELL_OWNER: &str = r#"schema: quench.playbook/v1
name: tell-owner
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: tell
    uses: slack.message
    with:
      to: owner
      text: "{{ finding.resource.id }} leaked; team {{ owner.team }} ({{ owner.link }})"
  - id: ask
    uses: approval
    with:
      approvers: [owner.team]
      question: "Revoke {{ finding.resource.id }}?"
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: keep
  - id: record
    uses: note
    with:
      message: "{{ owner.recipient }} via {{ owner.link }}: {{ steps.ask.choice }}"
"#;

fn sha(token: &str) -> String {
    crate::support::hex(&sha2::Sha256::digest(token.as_bytes()))
}

fn config() -> String {
    format!(
        r#"
[groups]
secops = ["lead@example.com"]

[teams.payments]
emails = ["pay-lead@example.com"]
slack_user_ids = ["U0PAY0002"]
channel = "C0PAYMENTS"

[teams.platform]
emails = ["plat-lead@example.com"]

[owners]
fallback = "group:secops"

[[owners.rules]]
project_id = "proj_pay*"
team = "payments"

[[api.tokens]]
name = "viewer"
role = "viewer"
sha256 = "{}"

[[api.tokens]]
name = "editor"
role = "editor"
sha256 = "{}"
"#,
        sha(VIEWER),
        sha(EDITOR)
    )
}

fn quench(arguments: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(crate::support::quench_bin());
    command.args(arguments);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("quench runs")
}

#[test]
fn owner_and_team_mistakes_are_refused_at_load_naming_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[teams.payments]\nchannel = \"C0PAY\"\n",
            "`teams.payments` = \"\": a team needs people",
        ),
        (
            "[teams.payments]\nemails = [\"not-an-email\"]\n",
            "`teams.payments.emails[0]` = \"not-an-email\": must be an email address",
        ),
        (
            "[teams.payments]\nslack_user_ids = [\"alice\"]\n",
            "`teams.payments.slack_user_ids[0]` = \"alice\": must be a Slack user id",
        ),
        (
            "[teams.payments]\nemails = [\"a@example.com\"]\nchannel = \"#payments\"\n",
            "`teams.payments.channel` = \"#payments\": must be a Slack channel id",
        ),
        (
            "[teams.payments]\nemails = [\"a@example.com\"]\ngroup = \"secop\"\n[groups]\nsecops = [\"b@example.com\"]\n",
            "`teams.payments.group` = \"secop\": the group `secop` is not defined under [groups]; did you mean `secops`?",
        ),
        (
            "[teams.payments]\nemails = [\"a@example.com\"]\n[[owners.rules]]\nproject_id = \"proj_1\"\nteam = \"payment\"\n",
            "`owners.rules[0].team` = \"payment\": no team `payment` under [teams]; did you mean `payments`?",
        ),
        (
            "[teams.payments]\nemails = [\"a@example.com\"]\n[[owners.rules]]\nproject_name = \"prod-[\"\nteam = \"payments\"\n",
            "`owners.rules[0].project_name` = \"prod-[\": not a glob",
        ),
        (
            "[teams.payments]\nemails = [\"a@example.com\"]\n[[owners.rules]]\nproject_id = \"p\"\nproject_name = \"q\"\nteam = \"payments\"\n",
            "`owners.rules[0]` = \"\": a rule names exactly one of `project_id`",
        ),
        (
            "[owners]\nfallback = \"group:secops\"\n",
            "`owners.fallback` = \"group:secops\": the group `secops` is not defined under [groups]",
        ),
        (
            "[teams.payments]\nemails = [\"a@example.com\"]\n[owners]\nfallback = \"paymnets\"\n",
            "`owners.fallback` = \"paymnets\": must be a team under [teams] or `group:<name>`; did you mean `payments`?",
        ),
        (
            "[teams.payments]\nemail = [\"a@example.com\"]\n",
            "unknown key `teams.payments.email`",
        ),
    ];
    let directory = tempfile::tempdir().expect("temp dir");
    for (index, (text, expected)) in cases.iter().enumerate() {
        let path = directory.path().join(format!("quench-{index}.toml"));
        std::fs::write(&path, text).expect("write config");
        let output = quench(
            &[
                "serve",
                "--config",
                path.to_str().expect("utf-8"),
                "--dump-config",
            ],
            &[],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{text}: {stderr}");
        assert!(stderr.contains(expected), "{text}:\n{stderr}");
    }
    // A good one loads, and shows what it loaded.
    let path = directory.path().join("good.toml");
    std::fs::write(&path, config()).expect("write config");
    let output = quench(
        &[
            "serve",
            "--config",
            path.to_str().expect("utf-8"),
            "--dump-config",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("[teams.payments]"), "{stdout}");
    assert!(stdout.contains("project_id = \"proj_pay*\""), "{stdout}");
}

/// The API, as a client with a token would call it.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(listen: &str) -> Api {
        Api {
            base: format!("http://{listen}"),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

fn leaked(id: &str, key: &str, project: &str) -> Value {
    json!({
        "schema": "quench.finding/v1", "id": id, "kind": "openai.api_key.leaked", "severity": "high",
        "title": "leaked key", "detected_at": "2026-11-20T10:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": key, "project_id": project}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finding_without_owner_reaches_its_projects_team_and_the_run_records_the_link() {
    let slack = SlackFake::start().await;
    slack.add_user("pay-lead@example.com", "U0PAY0001");
    slack.add_user("pay-oncall@example.com", "U0PAY0002");
    slack.add_user("plat-lead@example.com", "U0PLAT001");
    slack.add_channel("C0PAYMENTS");
    let (api_url, token) = (slack.api_url(), slack.bot_token());
    let env = [
        ("QUENCH_SLACK__API_URL", api_url.as_str()),
        ("QUENCH_SLACK__BOT_TOKEN", token.as_str()),
    ];
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connects");
    let world = World::on(nats, client, &[TELL_OWNER], &env, Some(&config())).await;
    let api = Api::new(&world.service.listen);

    // 1. No owner on the finding; its project maps to the payments team.
    world
        .publish_finding(&leaked("f-1", "key_1", "proj_payroll"), Some("f-1"))
        .await;
    eventually(WAIT, "the team's channel is told", || {
        !slack.messages_in("C0PAYMENTS").is_empty()
    })
    .await;
    let told = slack.messages_in("C0PAYMENTS").remove(0);
    assert_eq!(
        told.text.as_deref(),
        Some("key_1 leaked; team payments (mapping)"),
        "{told:?}"
    );
    eventually(WAIT, "each member of the team is asked", || {
        ["U0PAY0001", "U0PAY0002"].iter().all(|user| {
            slack
                .dm_channel(user)
                .is_some_and(|dm| !slack.messages_in(&dm).is_empty())
        })
    })
    .await;
    let run = world.run_ids("run_started").remove(0);
    let (status, detail) = api
        .call("GET", &format!("/api/v1/runs/{run}"), VIEWER, None)
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["owner"]["link"], "mapping", "{detail}");
    assert_eq!(detail["owner"]["team"], "payments");
    assert_eq!(detail["owner"]["recipient"], "team:payments");
    assert_eq!(detail["owner"]["channel"], "C0PAYMENTS");
    assert_eq!(
        detail["owner"]["source"],
        "owners.rules[0] (project_id proj_pay*)"
    );
    let resolved: Vec<&Value> = detail["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter(|entry| entry["kind"] == "owner_resolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{detail}");
    assert_eq!(resolved[0]["detail"]["link"], "mapping");
    // A team member's answer counts (the gate asked `owner.team`); someone else's does not.
    let (status, refused) = api
        .call(
            "POST",
            &format!("/api/v1/runs/{run}/gates/ask/decision"),
            EDITOR,
            Some(json!({"choice": "revoke"})),
        )
        .await;
    assert_eq!(
        status, 403,
        "the token `editor` is not in the team: {refused}"
    );

    // 2. An owner recorded for a service account answers for its key, ahead of the mapping.
    let (status, set) = api
        .call(
            "PUT",
            "/api/v1/inventory/service_account:svc_1/attributes",
            EDITOR,
            Some(json!({"owner": "team:platform", "purpose": "billing exports"})),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["owner"]["value"], "team:platform");
    assert_eq!(set["owner"]["set_by"], "api:editor");
    let mut of_account = leaked("f-2", "key_2", "proj_payroll");
    of_account["resource"]["service_account_id"] = json!("svc_1");
    world.publish_finding(&of_account, Some("f-2")).await;
    eventually(WAIT, "the recorded owner's team is asked", || {
        slack
            .dm_channel("U0PLAT001")
            .is_some_and(|dm| slack.messages_in(&dm).len() >= 2)
    })
    .await;
    let dm = slack.dm_channel("U0PLAT001").expect("DM");
    let texts: Vec<String> = slack
        .messages_in(&dm)
        .into_iter()
        .filter_map(|message| message.text)
        .collect();
    assert!(
        texts
            .iter()
            .any(|text| text == "key_2 leaked; team platform (recorded)"),
        "a team without a channel is told member by member: {texts:?}"
    );
    let second = world
        .run_ids("run_started")
        .into_iter()
        .find(|id| *id != run)
        .expect("a second run");
    let (_, detail) = api
        .call("GET", &format!("/api/v1/runs/{second}"), VIEWER, None)
        .await;
    assert_eq!(detail["owner"]["link"], "recorded", "{detail}");
    assert_eq!(
        detail["owner"]["source"],
        "the owner recorded for service_account:svc_1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_through_the_api_and_the_cli_are_role_checked_and_audited() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connects");
    let world = World::on(nats, client, &[TELL_OWNER], &[], Some(&config())).await;
    let api = Api::new(&world.service.listen);
    let url = format!("http://{}", world.service.listen);
    let cli = |arguments: &[&str], token: &str| {
        let mut all = vec!["inventory"];
        all.extend_from_slice(arguments);
        all.extend_from_slice(&["--api", &url]);
        quench(&all, &[("QUENCH_TOKEN", token)])
    };

    // A viewer reads, but may not set.
    let output = cli(
        &["set-owner", "project_key:key_9", "alice@example.com"],
        VIEWER,
    );
    assert_eq!(
        output.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, _) = api
        .call(
            "PUT",
            "/api/v1/inventory/project_key:key_9/attributes",
            VIEWER,
            Some(json!({"purpose": "x"})),
        )
        .await;
    assert_eq!(status, 403);

    // An editor sets the owner and the purpose; a key pasted into a purpose is not kept.
    let output = cli(
        &["set-owner", "project_key:key_9", "alice@example.com"],
        EDITOR,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = format!("sk-proj-{}", "A1b2C3d4".repeat(6));
    let output = cli(
        &[
            "set-purpose",
            "project_key:key_9",
            &format!("nightly export (was {secret})"),
        ],
        EDITOR,
    );
    assert_eq!(output.status.code(), Some(0));
    let output = cli(&["attributes", "project_key:key_9", "--json"], VIEWER);
    assert_eq!(output.status.code(), Some(0));
    let shown: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(shown["owner"]["value"], "alice@example.com");
    assert_eq!(shown["owner"]["set_by"], "api:editor");
    let purpose = shown["purpose"]["value"].as_str().expect("purpose");
    assert!(purpose.starts_with("nightly export"), "{purpose}");
    assert!(!purpose.contains(&secret), "{purpose}");
    let output = cli(&["attributes", "project_key:key_9"], VIEWER);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("owner    alice@example.com  (set by api:editor at "),
        "{text}"
    );

    // Mistakes are refused with what to give instead.
    for (arguments, expected) in [
        (
            vec!["set-owner", "project_key:key_9", "team:payment"],
            "no team `payment`: did you mean `payments`?",
        ),
        (
            vec!["set-owner", "project_key:key_9", "alice"],
            "neither an email address nor `team:<name>`",
        ),
        (
            vec!["set-owner", "projectkey:key_9", "alice@example.com"],
            "did you mean `project_key`?",
        ),
    ] {
        let output = cli(&arguments, EDITOR);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}: {stderr}");
        assert!(stderr.contains(expected), "{arguments:?}: {stderr}");
    }
    let long = "x".repeat(501);
    let output = cli(&["set-purpose", "project_key:key_9", &long], EDITOR);
    assert_eq!(output.status.code(), Some(1));

    // The same value again changes nothing and writes nothing; clearing is a change.
    let output = cli(
        &["set-owner", "project_key:key_9", "alice@example.com"],
        EDITOR,
    );
    assert_eq!(output.status.code(), Some(0));
    let output = cli(&["set-owner", "project_key:key_9", ""], EDITOR);
    assert_eq!(output.status.code(), Some(0));
    let (_, after) = api
        .call(
            "GET",
            "/api/v1/inventory/project_key:key_9/attributes",
            VIEWER,
            None,
        )
        .await;
    assert_eq!(after["owner"], Value::Null, "{after}");
    assert!(after["purpose"]["value"].is_string(), "{after}");

    let (status, audit) = api
        .call("GET", "/api/v1/audit?kind=attributes_set", VIEWER, None)
        .await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().expect("entries");
    assert_eq!(
        entries.len(),
        3,
        "set owner, set purpose, clear owner: {audit}"
    );
    for entry in entries {
        assert_eq!(entry["actor"]["id"], "editor", "{entry}");
        assert_eq!(entry["detail"]["identity"], "project_key:key_9");
    }
    // Newest first: the clear, with what it cleared.
    assert_eq!(
        entries[0]["detail"]["changed"]["owner"],
        json!({"from": "alice@example.com", "to": null})
    );
    assert!(
        !audit.to_string().contains(&secret),
        "no key in the audit log"
    );
}
