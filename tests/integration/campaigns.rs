//! An attestation campaign end to end, against a real `quench serve` (real NATS, the OpenAI fake
//! holding an organization, the Slack fake): started through the API, it sends each owner the
//! owner chain names exactly **one** Slack message listing their keys with per-key buttons;
//! answers through the API are checked against who may answer; `keep` records the purpose,
//! `revoke` deletes the key, `not_mine` passes the key to the chain's next link as a new
//! message; a `kill -9` in the middle of the campaign loses and repeats nothing; at the deadline
//! every unanswered key is narrowed (an expiry set in OpenAI), never silently kept; the
//! progress (API and CLI) and the evidence pack's campaign section tell what happened.

use std::time::Duration;

use chrono::{DateTime, Utc};
use quench_runner::evidence::{Estate, EvidenceSources, Period};
use quench_runner::inventory::{Inventory, Policy};
use quench_runner::owners::Owners;
use quench_runner::store::{Store, StoreConfig};
use serde_json::{Value, json};

use crate::support;
use crate::support::openai_fake::{KeySeed, OpenAiFake, Role};
use crate::support::slack_fake::SlackFake;

const DAY: i64 = 86_400;
/// The fake's clock: 2026-12-01T00:00:00Z.
const NOW: i64 = 1_796_083_200;
/// How long owners have in this test (the shipped playbook gives 14 days).
const ANSWER_WITHIN: &str = "45s";

const ADMIN: &str = "secops@example.com";
const ANN: &str = "ann@example.com";
const BOB: &str = "bob@example.com";
const PAY_LEAD: &str = "pay-lead@example.com";

/// Two projects; Ann owns two keys, Bob two, the CI service account one (its project maps to
/// the payments team), and Eve, who left the project, one (nobody but the fallback answers).
async fn organization() -> OpenAiFake {
    let fake = OpenAiFake::start().await;
    fake.set_now(NOW);
    fake.seed_project("proj_pay", "prod-payments");
    fake.seed_project("proj_lab", "research-lab");
    fake.seed_user("proj_pay", "user_ann", ANN, Role::Owner);
    fake.seed_user("proj_lab", "user_ann", ANN, Role::Member);
    fake.seed_user("proj_pay", "user_bob", BOB, Role::Member);
    fake.seed_org_user("user_eve", "eve@example.com");
    let key = |id: &str, name: &str, age: i64| {
        KeySeed::new(id)
            .name(name)
            .created_at(NOW - age * DAY)
            .last_used_at(NOW - DAY)
    };
    fake.seed_key("proj_pay", "user_ann", key("key_checkout", "checkout", 30));
    fake.seed_key("proj_lab", "user_ann", key("key_notebook", "notebook", 200));
    fake.seed_key("proj_pay", "user_bob", key("key_batch", "old-batch", 400));
    fake.seed_key("proj_pay", "user_bob", key("key_tool", "bob-tool", 90));
    fake.seed_key("proj_lab", "user_eve", key("key_eve", "eve-script", 50));
    fake.seed_service_account("proj_pay", "svc_ci", "ci", key("key_ci", "ci", 10));
    fake
}

fn token_hash(token: &str) -> String {
    support::hex(&<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()))
}

/// Each person's API token is their email backwards (the token's name is who answers).
fn token(who: &str) -> String {
    format!("token-{}", who.chars().rev().collect::<String>())
}

async fn api(
    listen: &str,
    who: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = quench_common::http::http_client()
        .request(method, format!("http://{listen}{path}"))
        .bearer_auth(token(who));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn progress(listen: &str, id: &str) -> Value {
    let (status, body) = api(
        listen,
        ADMIN,
        reqwest::Method::GET,
        &format!("/api/v1/campaigns/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The campaign's row for a key.
fn item<'a>(progress: &'a Value, key: &str) -> &'a Value {
    let id = format!("project_key:{key}");
    progress["items"]
        .as_array()
        .expect("items")
        .iter()
        .rev()
        .find(|item| item["identity"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} is in the campaign: {progress}"))
}

async fn answer(
    listen: &str,
    who: &str,
    progress: &Value,
    key: &str,
    choice: &str,
    comment: Option<&str>,
) -> (u16, Value) {
    let row = item(progress, key);
    let run = row["run"].as_str().expect("the part's run is known");
    let mut body = json!({"choice": choice, "item": format!("project_key:{key}")});
    if let Some(comment) = comment {
        body["comment"] = comment.into();
    }
    api(
        listen,
        who,
        reqwest::Method::POST,
        &format!("/api/v1/runs/{run}/gates/review/decision"),
        Some(body),
    )
    .await
}

/// Every message in `user`'s DM.
fn dms(slack: &SlackFake, user: &str) -> Vec<support::slack_fake::SlackMessage> {
    slack
        .dm_channel(user)
        .map(|channel| slack.messages_in(&channel))
        .unwrap_or_default()
}

/// The item ids of a message's actions blocks (one per key still open).
fn open_items(message: &support::slack_fake::SlackMessage) -> Vec<String> {
    message
        .blocks
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|block| block["type"] == "actions")
        .filter_map(|block| block["block_id"].as_str())
        .filter_map(|id| id.split_once('#').map(|(_, item)| item.to_owned()))
        .collect()
}

/// The organization, Slack, NATS and `quench serve` with the attestation playbook (minutes
/// instead of weeks) and `extra` playbooks, its first inventory pass done.
struct Setup {
    fake: OpenAiFake,
    slack: SlackFake,
    nats: support::NatsServer,
    dir: tempfile::TempDir,
    service: support::Service,
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    let fake = organization().await;
    let slack = SlackFake::start().await;
    for (email, id) in [
        (ANN, "U0ANN0001"),
        (BOB, "U0BOB0001"),
        (ADMIN, "U0SEC0001"),
        (PAY_LEAD, "U0PAY0001"),
    ] {
        slack.add_user(email, id);
    }
    let nats = support::NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // The shipped playbook, with minutes instead of weeks.
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir_all(&playbooks).expect("playbooks dir");
    let shipped =
        std::fs::read_to_string(support::root().join("workflows/attest-openai-identities.yaml"))
            .expect("the shipped attestation playbook");
    let quick = shipped
        .replace("timeout: 16d", "timeout: 10m")
        .replace("timeout: 14d", &format!("timeout: {ANSWER_WITHIN}"))
        .replace("remind_every: 3d", "remind_every: 40s")
        .replace("after: 10d", "after: 42s");
    assert_ne!(quick, shipped, "the shipped playbook's durations moved");
    std::fs::write(playbooks.join("attest-openai-identities.yaml"), quick).expect("write");
    for (file, source) in extra {
        std::fs::write(playbooks.join(file), source).expect("write");
    }
    let tokens: String = [
        (ADMIN, "admin"),
        (ANN, "approver"),
        (BOB, "approver"),
        (PAY_LEAD, "approver"),
    ]
    .iter()
    .map(|(who, role)| {
        format!(
            "[[api.tokens]]\nname = \"{who}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n\n",
            token_hash(&token(who))
        )
    })
    .collect();
    let config = format!(
        r#"
[openai]
base_url = "{base}"
admin_key = "{admin_key}"

[slack]
api_url = "{slack_url}"
bot_token = "{bot_token}"

[inventory]
interval = "1h"
watch_interval = "10s"
publish = []

[groups]
secops = ["{ADMIN}"]

[teams.payments]
emails = ["{PAY_LEAD}"]

[owners]
fallback = "group:secops"

[[owners.rules]]
project_id = "proj_pay"
team = "payments"

{tokens}"#,
        base = fake.base_url(),
        admin_key = fake.admin_key(),
        slack_url = slack.api_url(),
        bot_token = slack.bot_token(),
    );
    let service = tokio::task::block_in_place(|| {
        support::Service::launch(&nats.url(), &playbooks, dir.path(), &[], Some(&config), &[])
    });
    let listen = service.listen.clone();
    let listen = listen.as_str();
    support::eventually_async(
        Duration::from_secs(30),
        "the first inventory pass",
        || async {
            let (status, body) = api(
                listen,
                ADMIN,
                reqwest::Method::GET,
                "/api/v1/inventory/status",
                None,
            )
            .await;
            status == 200 && !body["last_pass"].is_null()
        },
    )
    .await;
    Setup {
        fake,
        slack,
        nats,
        dir,
        service,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_asks_each_owner_once_and_survives_a_crash() {
    let Setup {
        fake,
        slack,
        nats: _nats,
        dir,
        mut service,
    } = setup(&[]).await;
    let listen = service.listen.clone();
    let listen = listen.as_str();
    let log = dir.path().join("serve.log");
    let _print_log = support::print_log_on_failure(&log);

    // Starting one is an editor's business, and a scope must name things that exist.
    let start = json!({"name": "2026-Q4 key review"});
    let (status, body) = api(
        listen,
        BOB,
        reqwest::Method::POST,
        "/api/v1/campaigns",
        Some(start.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = api(
        listen,
        ADMIN,
        reqwest::Method::POST,
        "/api/v1/campaigns",
        Some(json!({"name": "x", "scope": {"team": "paymnets"}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_campaign")),
        "{body}"
    );
    let (status, body) = api(
        listen,
        ADMIN,
        reqwest::Method::POST,
        "/api/v1/campaigns",
        Some(json!({"name": "x", "playbook": "no-such-playbook"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_playbook")),
        "{body}"
    );

    let (status, campaign) = api(
        listen,
        ADMIN,
        reqwest::Method::POST,
        "/api/v1/campaigns",
        Some(start),
    )
    .await;
    assert_eq!(status, 201, "{campaign}");
    let id = campaign["id"].as_str().expect("id").to_owned();
    assert_eq!(campaign["identities"], 6, "{campaign}");
    // Ann, Bob, the payments team (the CI key), the fallback (Eve's key).
    assert_eq!(campaign["parts"], 4, "{campaign}");

    // One message per owner, listing their keys, each with its own buttons.
    support::eventually_async(Duration::from_secs(30), "one message per owner", || async {
        [ANN, BOB, PAY_LEAD, ADMIN]
            .iter()
            .all(|who| dms(&slack, slack_id(who)).len() == 1)
    })
    .await;
    let ann_message = &dms(&slack, slack_id(ANN))[0];
    assert_eq!(
        open_items(ann_message),
        ["project_key:key_checkout", "project_key:key_notebook"],
        "{:?}",
        ann_message.blocks
    );
    let text = serde_json::to_string(&ann_message.blocks).expect("blocks");
    for shown in [
        "checkout",
        "notebook",
        "last_used",
        "expires",
        "never",
        "2026-Q4 key review",
    ] {
        assert!(text.contains(shown), "`{shown}` is shown: {text}");
    }
    assert_eq!(
        open_items(&dms(&slack, slack_id(ADMIN))[0]),
        ["project_key:key_eve"]
    );

    support::eventually_async(Duration::from_secs(20), "every part's run", || async {
        progress(listen, &id).await["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|item| item["run"].is_string()))
    })
    .await;
    let now = progress(listen, &id).await;
    assert_eq!(now["totals"]["pending"], 6, "{now}");

    // Ann keeps one (saying what for) and revokes the other; Bob cannot answer for Ann.
    let (status, body) = answer(listen, BOB, &now, "key_checkout", "revoke", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("not_allowed")),
        "{body}"
    );
    let (status, body) = answer(
        listen,
        ANN,
        &now,
        "key_checkout",
        "keep",
        Some("checkout service, production"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer(listen, ANN, &now, "key_checkout", "revoke", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_decided")),
        "{body}"
    );
    let (status, body) = answer(listen, ANN, &now, "key_notebook", "revoke", None).await;
    assert_eq!(status, 200, "{body}");
    // Bob says the batch key is not his; he leaves his tool key unanswered.
    let (status, body) = answer(listen, BOB, &now, "key_batch", "not_mine", None).await;
    assert_eq!(status, 200, "{body}");

    // kill -9 in the middle of the campaign.
    tokio::task::block_in_place(|| {
        service.kill();
        service.spawn();
    });

    // The disowned key goes to the chain's next link: the payments team (its project's rule).
    let asks_for_batch = |message: &support::slack_fake::SlackMessage| {
        open_items(message) == ["project_key:key_batch"]
    };
    support::eventually_async(Duration::from_secs(30), "the reassignment", || async {
        dms(&slack, slack_id(PAY_LEAD)).iter().any(asks_for_batch)
            && progress(listen, &id).await["items"]
                .as_array()
                .is_some_and(|items| items.iter().all(|item| item["run"].is_string()))
    })
    .await;
    let now = progress(listen, &id).await;
    assert_eq!(item(&now, "key_batch")["owner"], "team:payments", "{now}");
    let (status, body) = answer(listen, PAY_LEAD, &now, "key_batch", "revoke", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer(listen, PAY_LEAD, &now, "key_ci", "keep", Some("CI deploys")).await;
    assert_eq!(status, 200, "{body}");

    // The deadline: Bob's tool key and Eve's key were never answered, and are narrowed.
    support::eventually_async(
        Duration::from_secs(90),
        "the campaign completes",
        || async { progress(listen, &id).await["status"] == "completed" },
    )
    .await;
    let done = progress(listen, &id).await;
    let totals = &done["totals"];
    assert_eq!(
        (
            totals["identities"].as_u64(),
            totals["answered"].as_u64(),
            totals["defaulted"].as_u64(),
            totals["pending"].as_u64()
        ),
        (Some(6), Some(4), Some(2), Some(0)),
        "{done}"
    );
    assert_eq!(done["default_answer"], "narrow", "{done}");
    assert_eq!(item(&done, "key_tool")["state"], "defaulted", "{done}");
    assert_eq!(item(&done, "key_tool")["choice"], "narrow", "{done}");
    assert_eq!(done["by_owner"][BOB]["reassigned"], 1, "{done}");

    // What OpenAI holds now: revoked keys are gone, defaulted ones expire, kept ones are as they were.
    assert!(!fake.key_exists("proj_lab", "key_notebook"));
    assert!(!fake.key_exists("proj_pay", "key_batch"));
    for (project, key) in [("proj_pay", "key_tool"), ("proj_lab", "key_eve")] {
        let record = fake.key(project, key).expect("the key is kept");
        assert!(
            record["expires_at"].is_i64(),
            "{key} got an expiry: {record}"
        );
    }
    let checkout = fake.key("proj_pay", "key_checkout").expect("kept");
    assert!(checkout["expires_at"].is_null(), "{checkout}");
    // Each revoke was made once, across the crash.
    let deletes = fake
        .calls()
        .into_iter()
        .filter(|call| call.method == "DELETE")
        .count();
    assert_eq!(deletes, 2, "two keys revoked, once each");

    // The purpose given with `keep` is the key's purpose now; Bob is passed over for his batch key.
    let (status, attributes) = api(
        listen,
        ADMIN,
        reqwest::Method::GET,
        "/api/v1/inventory/project_key:key_checkout/attributes",
        None,
    )
    .await;
    assert_eq!(status, 200, "{attributes}");
    assert_eq!(
        attributes["purpose"]["value"], "checkout service, production",
        "{attributes}"
    );

    // The answered messages were updated: no buttons are left.
    support::eventually_async(Duration::from_secs(20), "messages closed", || async {
        open_items(&dms(&slack, slack_id(ANN))[0]).is_empty()
    })
    .await;

    // The CLI, as a person would run it.
    let output = std::process::Command::new(support::quench_bin())
        .args(["campaign", "show", &id, "--items", "--api"])
        .arg(format!("http://{listen}"))
        .env("QUENCH_TOKEN", token(ADMIN))
        .output()
        .expect("quench campaign runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("completed"), "{text}");
    assert!(text.contains("checkout service, production"), "{text}");
    assert!(text.contains("owner team:payments"), "{text}");

    // The evidence pack's campaign section, from the store the service leaves.
    tokio::task::block_in_place(|| {
        service.terminate();
    });
    let store = Store::open(&StoreConfig::new(dir.path().join("state"))).expect("the store opens");
    let verification = store.verify_audit().expect("verify");
    assert_eq!(verification.first_bad, None, "the audit chain verifies");
    let estate = Estate {
        inventory: Inventory::new(store.clone(), Policy::default()),
        owners: std::sync::Arc::new(Owners::default()),
    };
    let (rows, attestations) = estate
        .campaigns(
            Period::new(at(NOW - DAY), Utc::now() + chrono::Duration::hours(1)).expect("period"),
        )
        .expect("campaigns")
        .expect("recorded");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].answered, rows[0].defaulted, rows[0].pending),
        (4, 2, 0)
    );
    let mut answers: Vec<(String, String)> = attestations
        .iter()
        .map(|row| (row.identity.clone(), row.answer.clone()))
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        [
            ("project_key:key_batch", "not_mine"),
            ("project_key:key_batch", "revoke"),
            ("project_key:key_checkout", "keep"),
            ("project_key:key_ci", "keep"),
            ("project_key:key_eve", "defaulted:narrow"),
            ("project_key:key_notebook", "revoke"),
            ("project_key:key_tool", "defaulted:narrow"),
        ]
        .map(|(identity, answer)| (identity.to_owned(), answer.to_owned())),
    );
}

fn at(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).expect("time")
}

fn slack_id(who: &str) -> &'static str {
    match who {
        ANN => "U0ANN0001",
        BOB => "U0BOB0001",
        PAY_LEAD => "U0PAY0001",
        _ => "U0SEC0001",
    }
}

/// A playbook starts a campaign (`campaign.start`): once, however often its step is made;
/// naming an attestation playbook that is not loaded fails the step with what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_playbook_starts_a_campaign() {
    let starter = |name: &str, kind: &str, extra: &str| {
        format!(
            "schema: quench.playbook/v1\nname: {name}\non:\n  finding:\n    kinds: [{kind}]\n\
             steps:\n  - id: start\n    uses: campaign.start\n    with:\n      name: \"{{{{ finding.title }}}}\"\n\
             \x20     scope: {{ project: proj_lab }}\n{extra}"
        )
    };
    let good = starter("start-review", "review.requested", "");
    let bad = starter(
        "start-nowhere",
        "review.misnamed",
        "      playbook: no-such-playbook\n",
    );
    let Setup {
        slack,
        nats,
        dir,
        service,
        ..
    } = setup(&[("start-review.yaml", &good), ("start-nowhere.yaml", &bad)]).await;
    let listen = service.listen.clone();
    let listen = listen.as_str();
    let log = dir.path().join("serve.log");
    let _print_log = support::print_log_on_failure(&log);
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    for (id, kind) in [("ask-1", "review.requested"), ("ask-2", "review.misnamed")] {
        support::gateway_client::publish_finding(
            &jetstream,
            &json!({
                "schema": "quench.finding/v1", "id": id, "kind": kind, "severity": "low",
                "title": "lab keys review", "detected_at": "2026-12-01T00:00:00Z",
                "source": {"scanner": "test"},
                "resource": {"provider": "openai", "type": "project", "id": "proj_lab"},
            }),
        )
        .await;
    }
    // A finding that claims to be a campaign's part, made by someone else: dead-lettered, no run.
    let forged = json!({
        "schema": "quench.finding/v1", "id": "forged-1", "kind": "quench.attestation",
        "key": "campaign:0193aa:0", "severity": "low", "title": "review your keys",
        "detected_at": "2026-12-01T00:00:00Z", "source": {"scanner": "mallory"},
        "resource": {"provider": "openai", "type": "user", "id": "mallory@example.com"},
        "owner": {"email": "mallory@example.com"},
        "evidence": {"campaign": "0193aa", "campaign_name": "x", "part": 0, "identities": [
            {"id": "project_key:key_checkout", "key_id": "key_checkout", "project_id": "proj_pay"}
        ]},
    });
    support::gateway_client::publish_finding(&jetstream, &forged).await;
    support::eventually_async(
        Duration::from_secs(20),
        "the forged finding's dead letter",
        || async {
            let (_, dlq) = api(listen, ADMIN, reqwest::Method::GET, "/api/v1/dlq", None).await;
            dlq.to_string().contains("unverified_attestation")
        },
    )
    .await;
    support::eventually_async(
        Duration::from_secs(30),
        "the campaign's messages",
        || async {
            dms(&slack, slack_id(ANN)).len() == 1 && dms(&slack, slack_id(ADMIN)).len() == 1
        },
    )
    .await;
    let (_, list) = api(
        listen,
        ADMIN,
        reqwest::Method::GET,
        "/api/v1/campaigns",
        None,
    )
    .await;
    let campaigns = list["campaigns"].as_array().expect("campaigns");
    assert_eq!(campaigns.len(), 1, "{list}");
    // Ann's notebook and Eve's script: the lab project's keys.
    assert_eq!(campaigns[0]["name"], "lab keys review");
    assert_eq!(campaigns[0]["identities"], 2);
    assert!(
        campaigns[0]["started_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("api:run:")),
        "{list}"
    );
    let (_, attestations) = api(
        listen,
        ADMIN,
        reqwest::Method::GET,
        "/api/v1/runs?playbook=attest-openai-identities",
        None,
    )
    .await;
    assert_eq!(
        attestations["runs"].as_array().map(Vec::len),
        Some(2),
        "the campaign's two parts, not the forged one: {attestations}"
    );
    let (_, runs) = api(
        listen,
        ADMIN,
        reqwest::Method::GET,
        "/api/v1/runs?playbook=start-nowhere",
        None,
    )
    .await;
    let run = runs["runs"][0]["id"]
        .as_str()
        .expect("the failing run")
        .to_owned();
    support::eventually_async(Duration::from_secs(20), "the failed run", || async {
        let (_, run) = api(
            listen,
            ADMIN,
            reqwest::Method::GET,
            &format!("/api/v1/runs/{run}"),
            None,
        )
        .await;
        run["run"]["status"] == "failed"
    })
    .await;
    let (_, detail) = api(
        listen,
        ADMIN,
        reqwest::Method::GET,
        &format!("/api/v1/runs/{run}"),
        None,
    )
    .await;
    let text = detail.to_string();
    assert!(
        text.contains("no playbook `no-such-playbook` is loaded"),
        "{text}"
    );
}
