//! `quench-gateway` as a process against a real `nats-server`: every endpoint with valid,
//! forged, stale, future, replayed and oversized requests (GitHub signs no timestamp, so it has
//! no stale or future case; its replays are dropped by `Nats-Msg-Id`), GitHub's example payloads
//! mapped to findings, rate limits, health and configuration errors, Socket Mode against a
//! WebSocket fake, the NATS permissions in `deploy/nats-server.conf`, and end to end: a signed
//! click through the gateway resumes a run waiting in `quench serve`, a click from someone who
//! is not an approver does not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::{SinkExt, StreamExt};
use quench_gateway::github::{Outcome, map};
use quench_gateway::signature::sign_github;
use serde_json::{Value, json};

use crate::support::gateway_client::{
    self, Button, FINDINGS_SECRET, GATEWAY_PASSWORD, RUNNER_PASSWORD, SCANNER_PASSWORD,
    SIGNING_SECRET, answer, buttons, connect_as, deployed_gateway, deployed_nats, deployed_runner,
    findings_request, form, http, now, post, slack_request,
};
use crate::support::slack_fake::{OpenedView, SlackFake};
use crate::support::{
    GatewayProcess, NatsServer, eventually, gateway_bin, http_get, http_status, metric,
};

const WAIT: Duration = Duration::from_secs(20);
const GITHUB_SECRET: &str = "github-webhook-secret-for-tests";
/// A gate's button value, as the runner's Slack connector writes it.
const VALUE: &str = r#"{"run_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","gate":"decide","token":"9f86d081884c7d659a2feaa0c55ad015","choice":"keep"}"#;
const RUN: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

/// A secret-shaped OpenAI key, assembled so no key-shaped literal sits in the repository.
fn fake_openai_key() -> String {
    format!("sk-proj-{}{}", "x".repeat(40), "Q7zK")
}

/// Sends each request and expects its status, with a JSON `{"error": …}` body.
async fn refused<const N: usize>(cases: [(&str, reqwest::RequestBuilder, u16); N]) {
    for (case, request, expected) in cases {
        let (status, reply, _) = answer(request).await;
        assert_eq!(status, expected, "{case}: {reply}");
        assert!(reply["error"].is_string(), "{case}: a JSON error: {reply}");
    }
}

/// A request signed with the wrong secret, and with the right one outside the 300 s window in
/// the past and in the future: all 401. (A minute beyond it: the timestamp is taken when the
/// cases are built, and a busy machine may send the last one seconds later.)
fn signature_cases(
    secret: &str,
    signed: impl Fn(i64, &str) -> reqwest::RequestBuilder,
) -> [(&'static str, reqwest::RequestBuilder, u16); 3] {
    [
        ("forged", signed(now(), "not-the-secret"), 401),
        ("stale", signed(now() - 360, secret), 401),
        ("future", signed(now() + 360, secret), 401),
    ]
}

/// `/webhooks/ocsf` takes one OCSF finding event signed like a finding: the Security Hub-shaped
/// sample is mapped and published as the finding it maps to, the same signature is not admitted
/// again, and an event that cannot be mapped is
/// refused with 422 naming the OCSF attribute, publishing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_ocsf_findings_are_mapped_and_published() {
    let world = World::start("").await;
    let url = world.gateway.url("/webhooks/ocsf");
    let path =
        crate::support::root().join("tests/fixtures/ocsf/securityhub-detection-finding.json");
    let body = std::fs::read_to_string(path).expect("fixture");
    let uid =
        "arn:aws:securityhub:us-east-1:123456789012:finding/7f1c2b4e-0d1a-4c55-9a3e-openai-key";

    let ts = now();
    let (status, reply, _) = answer(findings_request(&url, &body, ts, FINDINGS_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(
        reply,
        json!({"status": "published", "id": uid, "key": "openai.api_key.leaked:key_leaked0001",
               "subject": "quench.findings.openai.api_key.leaked", "duplicate": false})
    );
    let findings = world.findings().await;
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].msg_id.as_deref(), Some(uid));
    assert_eq!(findings[0].payload["schema"], "quench.finding/v1");
    assert_eq!(findings[0].payload["resource"]["id"], "key_leaked0001");
    let (status, _, _) = answer(findings_request(&url, &body, ts, FINDINGS_SECRET)).await;
    assert_eq!(status, 409, "a signature is admitted once");

    let mut unmappable: Value = serde_json::from_str(&body).expect("JSON");
    unmappable["class_uid"] = json!(4001);
    let (status, reply, _) = answer(findings_request(
        &url,
        &unmappable.to_string(),
        now(),
        FINDINGS_SECRET,
    ))
    .await;
    assert_eq!(status, 422, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|error| error.contains("`class_uid`")),
        "{reply}"
    );
    refused([
        ("unsigned", http().post(&url).body(body.clone()), 401),
        (
            "signed with another secret",
            findings_request(&url, &body, now(), "not-the-secret"),
            401,
        ),
    ])
    .await;
    assert_eq!(
        world.findings().await.len(),
        1,
        "nothing more was published"
    );
}

/// One stored message: subject, `Nats-Msg-Id`, payload.
#[derive(Debug, Clone)]
struct Stored {
    subject: String,
    msg_id: Option<String>,
    payload: Value,
}

async fn stored(jetstream: &jetstream::Context, stream: &str) -> Vec<Stored> {
    let stream = jetstream
        .get_stream(stream)
        .await
        .expect("the stream exists");
    let info = stream.get_info().await.expect("stream info");
    let mut messages = Vec::new();
    if info.state.messages == 0 {
        return messages;
    }
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let message = stream
            .get_raw_message(sequence)
            .await
            .expect("a stored message");
        messages.push(Stored {
            subject: message.subject.to_string(),
            msg_id: message
                .headers
                .get("Nats-Msg-Id")
                .map(|value| value.to_string()),
            payload: serde_json::from_slice(&message.payload).expect("JSON payload"),
        });
    }
    messages
}

/// A click by `user` on a button of the gate `decide` of [`RUN`], in alice's DM.
fn click_payload(
    user: &str,
    action_id: &str,
    value: &str,
    action_ts: &str,
    response_url: &str,
) -> Value {
    let button = Button {
        action_id: action_id.to_owned(),
        value: value.to_owned(),
        block_id: format!("quench:{RUN}:decide"),
        text: "keep".to_owned(),
    };
    gateway_client::click_payload(user, &button, "D0ALICE", action_ts, response_url)
}

fn github_request(
    url: &str,
    event: &str,
    delivery: &str,
    body: &str,
    secret: &str,
) -> reqwest::RequestBuilder {
    post(
        url,
        "application/json",
        body,
        [
            ("x-github-event", event.to_owned()),
            ("x-github-delivery", delivery.to_owned()),
            ("x-hub-signature-256", sign_github(secret, body.as_bytes())),
        ],
    )
}

fn finding(id: &str, key_id: &str) -> Value {
    json!({
        "schema": "quench.finding/v1", "id": id, "kind": "openai.api_key.leaked", "severity": "high",
        "title": "leaked key", "detected_at": "2026-11-20T10:00:00Z",
        "source": {"scanner": "test", "url": "https://example.com/paste/1"},
        "resource": {"provider": "openai", "type": "api_key", "id": key_id, "project_id": "proj_1"}
    })
}

/// A nats-server with quench's streams, a Slack fake, and a gateway with every endpoint on (and
/// the bot token that opens forms).
struct World {
    jetstream: jetstream::Context,
    gateway: GatewayProcess,
    slack: SlackFake,
    nats: NatsServer,
    _dir: tempfile::TempDir,
}

impl World {
    /// `gateway_keys` are more `[gateway]` lines.
    async fn start(gateway_keys: &str) -> World {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url())
            .await
            .expect("test client connects");
        let jetstream = jetstream::new(client);
        quench_runner::service::ensure_streams(&jetstream, &nats.url(), 1)
            .await
            .expect("streams");
        let slack = SlackFake::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            r#"
[nats]
url = "{nats}"

[slack]
signing_secret = "{SIGNING_SECRET}"
api_url = "{api}"
bot_token = "{bot_token}"

[gateway]
github_secret = "{GITHUB_SECRET}"
findings_secret = "{FINDINGS_SECRET}"
test_response_url_prefix = "{prefix}"
{gateway_keys}
"#,
            nats = nats.url(),
            api = slack.api_url(),
            bot_token = slack.bot_token(),
            prefix = slack.response_url_prefix(),
        );
        let gateway = GatewayProcess::start(&config, dir.path());
        World {
            jetstream,
            gateway,
            slack,
            nats,
            _dir: dir,
        }
    }

    async fn decisions(&self) -> Vec<Stored> {
        stored(&self.jetstream, "QUENCH_DECISIONS").await
    }

    async fn findings(&self) -> Vec<Stored> {
        stored(&self.jetstream, "QUENCH_FINDINGS").await
    }
}

/// A key in a click's free text (the user name, read from the url-encoded form) is redacted
/// before the decision is published: the decisions stream never holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_a_click_is_redacted_before_it_is_published() {
    let world = World::start("").await;
    let key = fake_openai_key();
    let mut payload = click_payload(
        "U0ALICE",
        "quench:keep",
        VALUE,
        "1767603700.000300",
        &world.slack.response_url(),
    );
    payload["user"]["username"] = json!(format!("alice_{key}"));
    let body = form(&payload);
    let (status, reply, _) = answer(slack_request(
        &world.gateway.url("/slack/interactions"),
        &body,
        now(),
        SIGNING_SECRET,
    ))
    .await;
    assert_eq!(status, 200, "{reply}");
    let decisions = world.decisions().await;
    assert_eq!(decisions.len(), 1);
    let stored = decisions[0].payload.to_string();
    assert!(
        !quench_proto::contains_secret(stored.as_bytes()),
        "{stored}"
    );
    assert_eq!(
        decisions[0].payload["actor"]["name"],
        "alice_sk-proj-[REDACTED]...Q7zK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_clicks_are_verified_published_once_and_answered() {
    let world = World::start("").await;
    let url = world.gateway.url("/slack/interactions");
    let response_url = world.slack.response_url();
    let body = form(&click_payload(
        "U0ALICE",
        "quench:keep",
        VALUE,
        "1767603700.000100",
        &response_url,
    ));

    let ts = now();
    let (status, reply, _) = answer(slack_request(&url, &body, ts, SIGNING_SECRET)).await;
    assert_eq!(
        (status, reply),
        (200, Value::Null),
        "a valid click: 200, empty"
    );
    let decisions = world.decisions().await;
    assert_eq!(decisions.len(), 1);
    let decision = &decisions[0];
    assert_eq!(decision.subject, format!("quench.decisions.{RUN}"));
    assert_eq!(
        decision.msg_id.as_deref(),
        decision.payload["id"].as_str(),
        "the decision id is its Nats-Msg-Id"
    );
    let parsed = quench_proto::Decision::parse(decision.payload.to_string().as_bytes())
        .expect("a valid decision");
    assert_eq!(parsed.run_id, RUN);
    assert_eq!(parsed.gate, "decide");
    assert_eq!(parsed.token, "9f86d081884c7d659a2feaa0c55ad015");
    assert_eq!(parsed.choice, "keep");
    assert_eq!(parsed.actor.id, "T0FAKE/U0ALICE");
    assert_eq!(parsed.actor.name.as_deref(), Some("u0alice"));
    assert_eq!(parsed.actor.via, quench_proto::Via::Slack);
    assert_eq!(
        parsed.decided_at.timestamp(),
        1_767_603_700,
        "decided when clicked"
    );
    eventually(WAIT, "the user is told through response_url", || {
        !world.slack.responses().is_empty()
    })
    .await;
    let told = world.slack.responses();
    assert_eq!(told[0].url, response_url);
    assert_eq!(told[0].body["response_type"], "ephemeral");
    assert_eq!(told[0].body["replace_original"], false);
    assert!(
        told[0].body["text"]
            .as_str()
            .expect("text")
            .starts_with("Recorded your answer *keep*"),
        "{told:?}"
    );

    // The very same signed request again: a replay.
    let (status, reply, _) = answer(slack_request(&url, &body, ts, SIGNING_SECRET)).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["error"], "this signed request was already accepted");
    // Slack delivering the same click again (signed anew, a second later): one decision still.
    let (status, _, _) = answer(slack_request(&url, &body, ts + 1, SIGNING_SECRET)).await;
    assert_eq!(status, 200);
    assert_eq!(world.decisions().await.len(), 1, "Nats-Msg-Id dedupes it");

    // Forged, stale, future, unsigned, oversized: refused, nothing published.
    let other = form(&click_payload(
        "U0MALLORY",
        "quench:keep",
        VALUE,
        "1767603800.000100",
        &world.slack.response_url(),
    ));
    refused(signature_cases(SIGNING_SECRET, |ts, secret| {
        slack_request(&url, &other, ts, secret)
    }))
    .await;
    let refusals = [
        (
            "unsigned",
            http()
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(other.clone()),
            401,
        ),
        (
            "oversized",
            slack_request(
                &url,
                &format!("{other}&pad={}", "x".repeat(300 * 1024)),
                now(),
                SIGNING_SECRET,
            ),
            413,
        ),
    ];
    refused(refusals).await;

    // Signed, but not a quench button, or a tampered value: 200 to Slack, the user is told,
    // nothing is published.
    let before = world.slack.responses().len();
    let not_ours = form(&click_payload(
        "U0ALICE",
        "approve",
        "req-42",
        "1767603900.000100",
        &world.slack.response_url(),
    ));
    let tampered = form(&click_payload(
        "U0ALICE",
        "quench:keep",
        &VALUE.replace("\"choice\":\"keep\"", "\"choice\":\"keep\",\"admin\":true"),
        "1767603901.000100",
        &world.slack.response_url(),
    ));
    for body in [not_ours, tampered] {
        let (status, _, _) = answer(slack_request(&url, &body, now(), SIGNING_SECRET)).await;
        assert_eq!(status, 200);
    }
    eventually(WAIT, "both users are told why", || {
        world.slack.responses().len() == before + 2
    })
    .await;
    for response in &world.slack.responses()[before..] {
        assert!(
            response.body["text"]
                .as_str()
                .expect("text")
                .starts_with("Nothing was recorded"),
            "{response:?}"
        );
    }
    // A form without a payload: 400.
    let (status, reply, _) =
        answer(slack_request(&url, "nothing=here", now(), SIGNING_SECRET)).await;
    assert_eq!(status, 400, "{reply}");

    assert_eq!(
        world.decisions().await.len(),
        1,
        "nothing refused was published"
    );
    let log = world.gateway.log_text();
    assert!(
        !log.contains(SIGNING_SECRET) && !log.contains("/response/"),
        "the log holds no secret and no response_url:\n{log}"
    );
    assert!(
        log.contains("bad_signature") && log.contains("stale_timestamp"),
        "{log}"
    );
}

/// [`VALUE`]'s button asking for a comment first, as the runner writes a choice in
/// `comment_for`.
fn asking_value() -> String {
    quench_proto::slack::ApprovalButton::parse("quench:keep", None, Some(VALUE))
        .expect("a button")
        .with_ask("What is this key for?")
        .value()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choice_that_needs_a_comment_opens_a_form_whose_submission_is_the_answer() {
    let world = World::start("").await;
    let url = world.gateway.url("/slack/interactions");
    let signed = |payload: &Value| slack_request(&url, &form(payload), now(), SIGNING_SECRET);

    // The click on `keep`: a form opens in front of alice, nothing is published, nothing is
    // said through response_url (the form is the answer).
    let mut click = click_payload(
        "U0ALICE",
        "quench:keep",
        &asking_value(),
        "1767603700.000100",
        &world.slack.response_url(),
    );
    click["trigger_id"] = json!(world.slack.trigger_id());
    let (status, reply, _) = answer(signed(&click)).await;
    assert_eq!((status, reply), (200, Value::Null));
    let views = world.slack.views();
    assert_eq!(views.len(), 1, "one form opened");
    let view = &views[0];
    assert_eq!(view.trigger_id, click["trigger_id"]);
    assert_eq!(view.view["callback_id"], "quench:comment");
    assert_eq!(view.view["private_metadata"], asking_value());
    let input = &view.view["blocks"][1];
    assert_eq!(input["label"]["text"], "What is this key for?");
    assert_eq!(input["element"]["max_length"], 500);
    let opened = world.slack.calls_to("views.open");
    assert_eq!(
        opened[0].authorization.as_deref(),
        Some(format!("Bearer {}", world.slack.bot_token()).as_str()),
        "the form is opened with the bot token"
    );
    assert!(
        world.decisions().await.is_empty(),
        "a click that asks publishes nothing"
    );

    // The submission (by whoever Slack says submitted it) is the decision, with the comment.
    let submitted = world
        .slack
        .view_submission(view, "U0BOB", "  the nightly billing export  ");
    let (status, reply, _) = answer(signed(&submitted)).await;
    assert_eq!(
        (status, reply),
        (200, Value::Null),
        "an empty 200 closes the form"
    );
    let decisions = world.decisions().await;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].subject, format!("quench.decisions.{RUN}"));
    let decision = quench_proto::Decision::parse(decisions[0].payload.to_string().as_bytes())
        .expect("a valid decision");
    assert_eq!(decision.choice, "keep");
    assert_eq!(decision.token, "9f86d081884c7d659a2feaa0c55ad015");
    assert_eq!(
        decision.comment.as_deref(),
        Some("the nightly billing export")
    );
    assert_eq!(
        decision.actor.id, "T0FAKE/U0BOB",
        "the submitting user answers"
    );
    // Slack delivering the submission again (signed anew, a second later): the same decision.
    let again = slack_request(&url, &form(&submitted), now() + 1, SIGNING_SECRET);
    let (status, _, _) = answer(again).await;
    assert_eq!(status, 200);
    assert_eq!(world.decisions().await.len(), 1, "Nats-Msg-Id dedupes it");

    // Tampered metadata, a form that is not ours, a blank or overlong comment: the form stays
    // open and says why; nothing is published.
    let tampered = |edit: &dyn Fn(&mut Value)| {
        let mut payload = world.slack.view_submission(view, "U0BOB", "for billing");
        edit(&mut payload);
        payload
    };
    let refusals = [
        tampered(&|payload| {
            payload["view"]["private_metadata"] = json!(asking_value().replace(RUN, "0190a1b2.>"));
        }),
        tampered(&|payload| {
            payload["view"]["private_metadata"] = json!(VALUE);
        }),
        tampered(&|payload| {
            payload["view"]["private_metadata"] =
                json!(asking_value().replace("\"choice\"", "\"admin\":true,\"choice\""));
        }),
        tampered(&|payload| {
            payload["view"]["callback_id"] = json!("someone-elses-form");
        }),
        world.slack.view_submission(view, "U0BOB", "   "),
        world.slack.view_submission(view, "U0BOB", &"x".repeat(501)),
    ];
    for payload in &refusals {
        let (status, reply, _) = answer(signed(payload)).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["response_action"], "errors", "{reply}");
        let error = reply["errors"]["quench:comment"]
            .as_str()
            .expect("an error");
        assert!(error.starts_with("Nothing was recorded"), "{error}");
    }
    assert_eq!(
        world.decisions().await.len(),
        1,
        "nothing refused was published"
    );

    // The same trigger again: Slack will not open a second form with it; the user is told.
    let before = world.slack.responses().len();
    click["actions"][0]["action_ts"] = json!("1767603700.000200");
    let (status, _, _) = answer(signed(&click)).await;
    assert_eq!(status, 200);
    eventually(WAIT, "the user is told the form did not open", || {
        world.slack.responses().len() == before + 1
    })
    .await;
    let told = world.slack.responses()[before].body["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(
        told.starts_with("Nothing was recorded") && told.contains("exchanged_trigger_id"),
        "{told}"
    );

    // Another choice publishes at once, as before.
    let revoke = VALUE.replace("\"choice\":\"keep\"", "\"choice\":\"revoke\"");
    let mut click = click_payload(
        "U0ALICE",
        "quench:revoke",
        &revoke,
        "1767603900.000100",
        &world.slack.response_url(),
    );
    click["trigger_id"] = json!(world.slack.trigger_id());
    let (status, _, _) = answer(signed(&click)).await;
    assert_eq!(status, 200);
    let decisions = world.decisions().await;
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[1].payload["choice"], "revoke");
    assert_eq!(decisions[1].payload.get("comment"), None);
    assert_eq!(
        world.slack.views().len(),
        1,
        "no form for a choice that needs none"
    );
    let log = world.gateway.log_text();
    assert!(!log.contains(&world.slack.bot_token()), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_findings_are_checked_redacted_and_published_once() {
    let world = World::start("").await;
    let url = world.gateway.url("/webhooks/findings");
    let mut leaked = finding("f-1", "key_1");
    leaked["title"] = format!("found {}", fake_openai_key()).into();
    let body = leaked.to_string();

    let ts = now();
    let (status, reply, _) = answer(findings_request(&url, &body, ts, FINDINGS_SECRET)).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(
        reply,
        json!({"status": "published", "id": "f-1", "key": "openai.api_key.leaked:key_1",
               "subject": "quench.findings.openai.api_key.leaked", "duplicate": false})
    );
    let findings = world.findings().await;
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].subject, "quench.findings.openai.api_key.leaked");
    assert_eq!(findings[0].msg_id.as_deref(), Some("f-1"));
    let title = findings[0].payload["title"].as_str().expect("title");
    assert!(
        !title.contains(&fake_openai_key()) && title.contains("[REDACTED]"),
        "published redacted: {title}"
    );

    let (status, reply, _) = answer(findings_request(&url, &body, ts, FINDINGS_SECRET)).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (409, Some("this signed request was already accepted"))
    );
    // The scanner re-sending it (signed anew, a second later): accepted, and JetStream drops
    // the copy.
    let (status, reply, _) = answer(findings_request(&url, &body, ts + 1, FINDINGS_SECRET)).await;
    assert_eq!(
        (status, &reply["duplicate"]),
        (202, &json!(true)),
        "{reply}"
    );

    let other = finding("f-2", "key_2").to_string();
    let mut too_big = finding("f-3", "key_3");
    too_big["evidence"] = json!({"blob": "x".repeat(70 * 1024)});
    refused(signature_cases(FINDINGS_SECRET, |ts, secret| {
        findings_request(&url, &other, ts, secret)
    }))
    .await;
    let cases = [
        ("unsigned", http().post(&url).body(other.clone()), 401),
        (
            "oversized for the gateway",
            findings_request(&url, &"x".repeat(300 * 1024), now(), FINDINGS_SECRET),
            413,
        ),
        (
            "oversized for a finding",
            findings_request(&url, &too_big.to_string(), now(), FINDINGS_SECRET),
            413,
        ),
        (
            "not a finding",
            findings_request(
                &url,
                r#"{"schema":"quench.finding/v1","id":"f-4"}"#,
                now(),
                FINDINGS_SECRET,
            ),
            422,
        ),
        (
            "another signature scheme",
            http()
                .post(&url)
                .header("x-quench-timestamp", now().to_string())
                .header(
                    "x-quench-signature",
                    sign_github(FINDINGS_SECRET, other.as_bytes()),
                )
                .body(other.clone()),
            401,
        ),
    ];
    refused(cases).await;
    let (_, invalid, _) = answer(findings_request(
        &url,
        r#"{"schema":"quench.finding/v1","id":"f-4"}"#,
        now(),
        FINDINGS_SECRET,
    ))
    .await;
    assert!(
        invalid["error"]
            .as_str()
            .expect("error")
            .contains("field `kind`"),
        "the failing field is named: {invalid}"
    );
    assert_eq!(
        world.findings().await.len(),
        1,
        "nothing refused was published"
    );
}

/// GitHub's example `secret_scanning_alert` `reopened` payload (octokit/webhooks, MIT).
fn example_payload() -> String {
    std::fs::read_to_string(
        crate::support::root()
            .join("tests/fixtures/github/secret_scanning_alert.reopened.payload.json"),
    )
    .expect("the example payload is checked in")
}

/// A `secret_scanning_alert` event as the schemas describe it, with the secret included.
fn alert_event(action: &str, secret_type: &str, resolution: Option<&str>) -> Value {
    json!({
        "action": action,
        "alert": {
            "number": 42,
            "created_at": "2026-01-05T08:00:00Z",
            "updated_at": "2026-01-05T08:30:00Z",
            "url": "https://api.github.com/repos/acme/app/secret-scanning/alerts/42",
            "html_url": "https://github.com/acme/app/security/secret-scanning/42",
            "locations_url": "https://api.github.com/repos/acme/app/secret-scanning/alerts/42/locations",
            "state": if resolution.is_some() { "resolved" } else { "open" },
            "resolution": resolution,
            "resolved_at": resolution.map(|_| "2026-01-05T09:00:00Z"),
            "resolved_by": resolution.map(|_| json!({"login": "octocat", "id": 1})),
            "resolution_comment": null,
            "secret_type": secret_type,
            "secret_type_display_name": if secret_type.starts_with("openai") { "OpenAI API Key" } else { "Some Token" },
            "secret": fake_openai_key(),
            "push_protection_bypassed": false,
            "push_protection_bypassed_by": null,
            "push_protection_bypassed_at": null
        },
        "repository": {
            "id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": "app", "full_name": "acme/app",
            "private": false, "visibility": "public", "html_url": "https://github.com/acme/app",
            "owner": {"login": "acme", "id": 2}
        },
        "organization": {"login": "acme", "id": 2},
        "sender": {"login": "octocat", "id": 1}
    })
}

fn location_event() -> Value {
    let alert = alert_event("created", "openai_api_key", None)["alert"].clone();
    json!({
        "action": "created",
        "alert": alert,
        "location": {"type": "commit", "details": {
            "path": "config/settings.py", "start_line": 12, "end_line": 12, "start_column": 10, "end_column": 61,
            "blob_sha": "af5626b4a114abcb82d63db7c8082c3c4756e51b",
            "blob_url": "https://api.github.com/repos/acme/app/git/blobs/af5626b4a114abcb82d63db7c8082c3c4756e51b",
            "commit_sha": "f14d7debf9775f957cf4f1e8176da0786431f72b",
            "commit_url": "https://api.github.com/repos/acme/app/git/commits/f14d7debf9775f957cf4f1e8176da0786431f72b"
        }},
        "repository": alert_event("created", "openai_api_key", None)["repository"].clone(),
        "sender": {"login": "octocat", "id": 1}
    })
}

fn received_at() -> chrono::DateTime<chrono::Utc> {
    crate::support::start_time()
}

fn mapped(event: &str, body: &Value) -> Value {
    match map(
        event,
        "delivery-1",
        body.to_string().as_bytes(),
        received_at(),
    ) {
        Ok(Outcome::Finding(finding)) => serde_json::to_value(*finding).expect("serializes"),
        other => panic!("expected a finding, got {other:?}"),
    }
}

#[test]
fn github_events_map_to_findings() {
    // GitHub's own example payload, as published.
    let example: Value = serde_json::from_str(&example_payload()).expect("JSON");
    insta::assert_json_snapshot!(
        "github_example_reopened",
        mapped("secret_scanning_alert", &example)
    );
    insta::assert_json_snapshot!(
        "github_openai_created",
        mapped(
            "secret_scanning_alert",
            &alert_event("created", "openai_api_key", None)
        )
    );
    insta::assert_json_snapshot!(
        "github_location_created",
        mapped("secret_scanning_alert_location", &location_event())
    );

    // Kind, status and key for each action and resolution.
    let check =
        |action: &str, secret_type: &str, resolution: Option<&str>, expected: (&str, &str)| {
            let finding = mapped(
                "secret_scanning_alert",
                &alert_event(action, secret_type, resolution),
            );
            assert_eq!(
                (
                    finding["kind"].as_str().expect("kind"),
                    finding["status"].as_str().expect("status")
                ),
                expected,
                "{action} {secret_type} {resolution:?}"
            );
            assert_eq!(
                finding["key"], "github:1296269:alert:42",
                "the key is stable"
            );
            let text = finding.to_string();
            assert!(!text.contains(&fake_openai_key()), "no secret in {text}");
        };
    check(
        "created",
        "openai_api_key",
        None,
        ("openai.api_key.leaked", "open"),
    );
    check(
        "reopened",
        "openai_api_key",
        None,
        ("openai.api_key.leaked", "open"),
    );
    check(
        "created",
        "openai_admin_key",
        None,
        ("openai.api_key.leaked", "open"),
    );
    check(
        "revoked",
        "openai_api_key",
        Some("revoked"),
        ("openai.api_key.leaked", "resolved"),
    );
    check(
        "resolved",
        "openai_api_key",
        Some("revoked"),
        ("openai.api_key.leaked", "resolved"),
    );
    check(
        "resolved",
        "openai_api_key",
        Some("false_positive"),
        ("openai.api_key.leaked", "resolved"),
    );
    // The secret is still where it was found and still works: still open.
    check(
        "resolved",
        "openai_api_key",
        Some("wont_fix"),
        ("openai.api_key.leaked", "open"),
    );
    check(
        "resolved",
        "openai_api_key",
        Some("used_in_tests"),
        ("openai.api_key.leaked", "open"),
    );
    check(
        "created",
        "slack_api_token",
        None,
        ("secret.slack_api_token.leaked", "open"),
    );
    check(
        "resolved",
        "slack_api_token",
        Some("revoked"),
        ("secret.slack_api_token.leaked", "resolved"),
    );

    // Not findings.
    let ignored = |event: &str, body: &Value| match map(
        event,
        "d",
        body.to_string().as_bytes(),
        received_at(),
    ) {
        Ok(Outcome::Ignored(reason)) => reason,
        other => panic!("expected ignored, got {other:?}"),
    };
    assert_eq!(
        ignored(
            "secret_scanning_alert",
            &alert_event("validated", "openai_api_key", None)
        ),
        "secret_scanning_alert action `validated` is not handled"
    );
    assert_eq!(ignored("push", &json!({})), "event `push` is not handled");
    assert_eq!(
        map(
            "ping",
            "d",
            br#"{"zen":"Keep it logically awesome."}"#,
            received_at()
        ),
        Ok(Outcome::Ping)
    );
    assert!(
        map(
            "secret_scanning_alert",
            "d",
            br#"{"action":"created"}"#,
            received_at()
        )
        .is_err()
    );
    assert!(
        map(
            "secret_scanning_alert",
            "bad id!",
            example_payload().as_bytes(),
            received_at()
        )
        .is_err(),
        "the delivery id becomes the finding id and Nats-Msg-Id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_webhooks_are_verified_and_published_with_the_delivery_id() {
    let world = World::start("").await;
    let url = world.gateway.url("/webhooks/github");
    let example = example_payload();
    let delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

    // Delivered, then re-delivered by GitHub with the same delivery id: JetStream drops the copy.
    for duplicate in [false, true] {
        let (status, reply, _) = answer(github_request(
            &url,
            "secret_scanning_alert",
            delivery,
            &example,
            GITHUB_SECRET,
        ))
        .await;
        assert_eq!(status, 202, "{reply}");
        assert_eq!(
            reply["subject"],
            "quench.findings.secret.adafruit_io_key.leaked"
        );
        assert_eq!(reply["key"], "github:257423561:alert:191");
        assert_eq!(reply["duplicate"], duplicate);
    }

    // The OpenAI alert, as a form-encoded hook, with the secret in it.
    let openai = alert_event("created", "openai_api_key", None).to_string();
    let form_body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &openai)
        .finish();
    let (status, reply, _) = answer(
        http()
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-github-event", "secret_scanning_alert")
            .header("x-github-delivery", "d-openai-1")
            .header(
                "x-hub-signature-256",
                sign_github(GITHUB_SECRET, form_body.as_bytes()),
            )
            .body(form_body),
    )
    .await;
    assert_eq!(status, 202, "{reply}");

    let findings = world.findings().await;
    assert_eq!(findings.len(), 2);
    assert_eq!(
        findings[0].subject,
        "quench.findings.secret.adafruit_io_key.leaked"
    );
    assert_eq!(findings[0].msg_id.as_deref(), Some(delivery));
    assert_eq!(findings[0].payload["id"], delivery);
    assert_eq!(findings[1].subject, "quench.findings.openai.api_key.leaked");
    assert_eq!(findings[1].msg_id.as_deref(), Some("d-openai-1"));
    assert!(
        !findings[1].payload.to_string().contains(&fake_openai_key()),
        "the secret is not published: {}",
        findings[1].payload
    );
    assert_eq!(
        findings[1].payload["resource"]["redacted_value"],
        "sk-proj-[REDACTED]...Q7zK"
    );

    let (status, reply, _) = answer(github_request(
        &url,
        "ping",
        "d-ping",
        r#"{"zen":"Design for failure.","hook_id":1}"#,
        GITHUB_SECRET,
    ))
    .await;
    assert_eq!((status, reply), (200, json!({"status": "pong"})));
    let (status, reply, _) =
        answer(github_request(&url, "push", "d-push", "{}", GITHUB_SECRET)).await;
    assert_eq!(
        (status, reply),
        (
            202,
            json!({"status": "ignored", "reason": "event `push` is not handled"})
        )
    );

    let cases = [
        (
            "forged",
            github_request(&url, "secret_scanning_alert", "d-2", &example, "wrong"),
            401,
        ),
        (
            "unsigned",
            http()
                .post(&url)
                .header("x-github-event", "secret_scanning_alert")
                .header("x-github-delivery", "d-3")
                .body(example.clone()),
            401,
        ),
        (
            "oversized",
            github_request(
                &url,
                "secret_scanning_alert",
                "d-4",
                &format!("{}{}", example, " ".repeat(300 * 1024)),
                GITHUB_SECRET,
            ),
            413,
        ),
        (
            "no delivery id",
            http()
                .post(&url)
                .header("x-github-event", "secret_scanning_alert")
                .header(
                    "x-hub-signature-256",
                    sign_github(GITHUB_SECRET, example.as_bytes()),
                )
                .body(example.clone()),
            401,
        ),
        (
            "not an alert",
            github_request(
                &url,
                "secret_scanning_alert",
                "d-5",
                r#"{"action":"created"}"#,
                GITHUB_SECRET,
            ),
            400,
        ),
    ];
    refused(cases).await;
    assert_eq!(
        world.findings().await.len(),
        2,
        "nothing refused was published"
    );
    let log = world.gateway.log_text();
    assert!(
        !log.contains(GITHUB_SECRET) && !log.contains(&fake_openai_key()),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_has_its_own_budget_per_endpoint() {
    let world = World::start("rate_limit_per_second = 1\nrate_limit_burst = 2").await;
    let findings = world.gateway.url("/webhooks/findings");
    for _ in 0..2 {
        let (status, _, _) = answer(http().post(&findings).body("{}")).await;
        assert_eq!(status, 401, "within the burst: refused for its signature");
    }
    let (status, reply, retry_after) = answer(http().post(&findings).body("{}")).await;
    assert_eq!(status, 429, "{reply}");
    assert_eq!(reply["error"], "too many requests; retry later");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (status, _, _) = answer(
        http()
            .post(world.gateway.url("/webhooks/github"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, 401, "another endpoint has its own bucket");
    assert_eq!(
        http_status(&world.gateway.listen, "/healthz"),
        Some(200),
        "health is not limited"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = answer(http().post(&findings).body("{}")).await;
    assert_eq!(status, 401, "the bucket refills");
    assert!(world.findings().await.is_empty());
}

/// The gateway's `/metrics` value of one series, 0 when absent.
fn gateway_metric(world: &World, series: &str) -> f64 {
    let (status, text) = http_get(&world.gateway.listen, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{text}");
    metric(&text, series)
}

/// A finding signed at `timestamp`, sent through the trusted proxy for the client `address`.
fn finding_from(world: &World, id: &str, timestamp: i64, address: &str) -> reqwest::RequestBuilder {
    let body = finding(id, &format!("key_{id}")).to_string();
    findings_request(
        &world.gateway.url("/webhooks/findings"),
        &body,
        timestamp,
        FINDINGS_SECRET,
    )
    .header("x-forwarded-for", address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_signed_findings_cannot_refuse_a_slack_click() {
    // 127.0.0.1 is a trusted proxy, so X-Forwarded-For names the client of each finding.
    let world = World::start(
        r#"trusted_proxies = ["127.0.0.1"]
[gateway.replay.findings]
entries = 3
per_client = 2"#,
    )
    .await;
    let ts = now();
    for id in ["a-1", "a-2"] {
        let (status, reply, _) = answer(finding_from(&world, id, ts, "203.0.113.1")).await;
        assert_eq!(status, 202, "{reply}");
    }
    let (status, reply, retry_after) = answer(finding_from(&world, "a-3", ts, "203.0.113.1")).await;
    assert_eq!(status, 503, "the client's share is full: {reply}");
    assert!(
        reply["error"]
            .as_str()
            .expect("error")
            .starts_with("this client sent too many signed requests"),
        "{reply}"
    );
    let wait: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!(
        (1..=301).contains(&wait),
        "until the oldest entry expires: {wait}"
    );
    let (status, reply, _) = answer(finding_from(&world, "b-1", ts, "203.0.113.2")).await;
    assert_eq!(status, 202, "another client still has room: {reply}");
    let (status, reply, retry_after) = answer(finding_from(&world, "c-1", ts, "203.0.113.3")).await;
    assert_eq!(status, 503, "the endpoint's budget is full: {reply}");
    assert!(retry_after.is_some());
    let (status, reply, _) = answer(finding_from(&world, "a-1", ts, "203.0.113.1")).await;
    assert_eq!(status, 409, "a replay is still a replay when full: {reply}");

    // Slack has its own budget: a click is accepted and forwarded.
    let url = world.gateway.url("/slack/interactions");
    let body = form(&click_payload(
        "U0ALICE",
        "quench:keep",
        VALUE,
        "1767603700.000100",
        &world.slack.response_url(),
    ));
    let (status, reply, _) = answer(slack_request(&url, &body, ts, SIGNING_SECRET)).await;
    assert_eq!((status, reply), (200, Value::Null), "the click is accepted");
    let decisions = world.decisions().await;
    assert_eq!(decisions.len(), 1, "and published");
    assert_eq!(decisions[0].payload["choice"], "keep");
    let (status, _, _) = answer(slack_request(&url, &body, ts, SIGNING_SECRET)).await;
    assert_eq!(status, 409, "the same click again is a replay");
    assert_eq!(world.findings().await.len(), 3);

    for (series, expected) in [
        (r#"quench_gateway_replay_entries{endpoint="findings"}"#, 3.0),
        (r#"quench_gateway_replay_entries{endpoint="slack"}"#, 1.0),
        (
            r#"quench_gateway_replay_capacity{endpoint="findings"}"#,
            3.0,
        ),
        (
            r#"quench_gateway_replay_client_capacity{endpoint="findings"}"#,
            2.0,
        ),
        (
            r#"quench_gateway_replay_capacity{endpoint="slack"}"#,
            20_000.0,
        ),
        (
            r#"quench_gateway_refused_total{endpoint="findings",reason="replay_client_budget_full"}"#,
            1.0,
        ),
        (
            r#"quench_gateway_refused_total{endpoint="findings",reason="replay_budget_full"}"#,
            1.0,
        ),
        (
            r#"quench_gateway_refused_total{endpoint="findings",reason="replayed"}"#,
            1.0,
        ),
        (
            r#"quench_gateway_refused_total{endpoint="slack",reason="replayed"}"#,
            1.0,
        ),
    ] {
        assert_eq!(gateway_metric(&world, series), expected, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_is_forgotten_when_its_timestamp_leaves_the_window() {
    let world = World::start("[gateway.replay.findings]\nentries = 1\nper_client = 1").await;
    let entries = r#"quench_gateway_replay_entries{endpoint="findings"}"#;
    // Signed 298 s ago: fresh for two more seconds.
    let old = now() - 298;
    let (status, reply, _) = answer(finding_from(&world, "old", old, "203.0.113.1")).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(gateway_metric(&world, entries), 1.0);
    let (status, _, retry_after) = answer(finding_from(&world, "new", now(), "203.0.113.1")).await;
    assert_eq!(status, 503, "the budget of one is full");
    let wait: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!(
        wait <= 4,
        "the entry expires in seconds, not a window: {wait}"
    );

    eventually(WAIT, "the entry expires with its timestamp", || {
        gateway_metric(&world, entries) == 0.0
    })
    .await;
    let (status, reply, _) = answer(finding_from(&world, "old", old, "203.0.113.1")).await;
    assert_eq!(
        status, 401,
        "the old request is now stale, not remembered: {reply}"
    );
    let (status, reply, _) = answer(finding_from(&world, "new", now(), "203.0.113.1")).await;
    assert_eq!(status, 202, "room again: {reply}");
    assert_eq!(gateway_metric(&world, entries), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_configuration_errors_and_shutdown() {
    let mut world = World::start("").await;
    assert_eq!(http_status(&world.gateway.listen, "/healthz"), Some(200));
    assert_eq!(http_status(&world.gateway.listen, "/readyz"), Some(200));

    let gateway = |args: &[&str], env: &[(&str, &str)]| {
        let output = std::process::Command::new(gateway_bin())
            .args(args)
            .env_remove("QUENCH_CONFIG")
            .envs(env.iter().copied())
            .output()
            .expect("quench-gateway runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, _, err) = gateway(&["--nats", &world.nats.url()], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("nothing to serve") && err.contains("slack.signing_secret"),
        "{err}"
    );
    let (code, _, err) = gateway(
        &["--nats", &world.nats.url()],
        &[
            ("QUENCH_GATEWAY__FINDINGS_SECRET", "s"),
            ("QUENCH_GATEWAY__RATE_LIMIT_BURST", "0"),
        ],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("`gateway.rate_limit_burst` = \"0\""), "{err}");
    for (env, expected) in [
        (
            [
                ("QUENCH_GATEWAY__REPLAY__FINDINGS__ENTRIES", "10"),
                ("QUENCH_GATEWAY__REPLAY__FINDINGS__PER_CLIENT", "11"),
            ],
            "`gateway.replay.findings.per_client` = \"11\": must be between 1 and `gateway.replay.findings.entries` (10)",
        ),
        (
            [
                ("QUENCH_GATEWAY__REPLAY__SLACK__ENTRIES", "0"),
                ("QUENCH_GATEWAY__REPLAY__SLACK__PER_CLIENT", "0"),
            ],
            "`gateway.replay.slack.entries` = \"0\": must be between 1 and 10000000",
        ),
    ] {
        let (code, _, err) = gateway(
            &["--nats", &world.nats.url()],
            &[&[("QUENCH_GATEWAY__FINDINGS_SECRET", "s")], env.as_slice()].concat(),
        );
        assert_eq!(code, Some(64), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    let (code, _, err) = gateway(
        &["--nats", &world.nats.url()],
        &[
            ("QUENCH_GATEWAY__FINDINGS_SECRET", "s"),
            (
                "QUENCH_GATEWAY__TEST_RESPONSE_URL_PREFIX",
                "http://evil.example/",
            ),
        ],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("gateway.test_response_url_prefix"), "{err}");
    let (code, out, err) = gateway(
        &["--dump-config"],
        &[("QUENCH_GATEWAY__FINDINGS_SECRET", "very-secret-value")],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("findings_secret = \"<redacted>\"") && !out.contains("very-secret-value"),
        "{out}"
    );
    let unreachable = format!("nats://127.0.0.1:{}", crate::support::free_port());
    let (code, _, err) = gateway(
        &["--nats", &unreachable, "--listen", "127.0.0.1:0"],
        &[("QUENCH_GATEWAY__FINDINGS_SECRET", "s")],
    );
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("cannot reach NATS"), "{err}");

    world.nats.stop();
    let listen = world.gateway.listen.clone();
    eventually(WAIT, "not ready without NATS", || {
        http_status(&listen, "/readyz") == Some(503)
    })
    .await;
    assert_eq!(
        http_status(&listen, "/healthz"),
        Some(200),
        "alive all the same"
    );
    let (status, reply, _) = answer(findings_request(
        &world.gateway.url("/webhooks/findings"),
        &finding("f-down", "key_down").to_string(),
        now(),
        FINDINGS_SECRET,
    ))
    .await;
    assert_eq!(status, 503, "{reply}");
    world.nats.restart();
    eventually(WAIT, "ready again with NATS back", || {
        http_status(&listen, "/readyz") == Some(200)
    })
    .await;

    assert_eq!(world.gateway.terminate(), Some(0), "SIGTERM: a clean exit");
}

/// A WebSocket server playing Slack's Socket Mode end: says hello to each connection, sends the
/// envelopes it is given on the first, and records every frame it receives.
struct SocketModeFake {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    connections: Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SocketModeFake {
    async fn start() -> SocketModeFake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}/", listener.local_addr().expect("addr"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let received = received.clone();
            let connections = connections.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
                        continue;
                    };
                    let (mut sink, mut source) = socket.split();
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                    let hello = json!({"type": "hello", "num_connections": 1,
                        "debug_info": {"host": "fake-socket-mode"}, "connection_info": {"app_id": "A0QUENCH"}});
                    if sink
                        .send(tokio_tungstenite::tungstenite::Message::text(
                            hello.to_string(),
                        ))
                        .await
                        .is_err()
                    {
                        continue;
                    }
                    connections.lock().expect("lock").push(tx);
                    tokio::spawn(async move {
                        while let Some(text) = rx.recv().await {
                            if sink
                                .send(tokio_tungstenite::tungstenite::Message::text(text))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    let received = received.clone();
                    tokio::spawn(async move {
                        while let Some(Ok(message)) = source.next().await {
                            if let tokio_tungstenite::tungstenite::Message::Text(text) = message
                                && let Ok(value) = serde_json::from_str::<Value>(text.as_str())
                            {
                                received.lock().expect("lock").push(value);
                            }
                        }
                    });
                }
            }
        });
        SocketModeFake {
            url,
            received,
            connections,
            task,
        }
    }

    fn send(&self, envelope: &Value) {
        let connections = self.connections.lock().expect("lock");
        connections
            .first()
            .expect("a connection")
            .send(envelope.to_string())
            .expect("the connection is open");
    }

    fn acks(&self, envelope_id: &str) -> usize {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .filter(|frame| frame["envelope_id"] == envelope_id)
            .count()
    }
}

impl Drop for SocketModeFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_clicks_are_published_and_acknowledged() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let jetstream = jetstream::new(client);
    quench_runner::service::ensure_streams(&jetstream, &nats.url(), 1)
        .await
        .expect("streams");
    let slack = SlackFake::start().await;
    let socket = SocketModeFake::start().await;
    slack.set_socket_mode_url(&socket.url);
    let dir = tempfile::tempdir().expect("temp dir");
    // Socket Mode only: no signing secret, no inbound Slack endpoint.
    let config = format!(
        r#"
[nats]
url = "{nats}"

[slack]
api_url = "{api}"
app_token = "{token}"

[gateway]
test_response_url_prefix = "{prefix}"
"#,
        nats = nats.url(),
        api = slack.api_url(),
        token = slack.app_token(),
        prefix = slack.response_url_prefix(),
    );
    let gateway = GatewayProcess::start(&config, dir.path());
    eventually(WAIT, "the gateway opens a Socket Mode connection", || {
        !socket.connections.lock().expect("lock").is_empty()
    })
    .await;
    let opened = slack.calls_to("apps.connections.open");
    assert_eq!(
        opened[0].authorization.as_deref(),
        Some(format!("Bearer {}", slack.app_token()).as_str())
    );
    let (status, reply, _) =
        answer(http().post(gateway.url("/slack/interactions")).body("x")).await;
    assert_eq!(
        status, 404,
        "no HTTP interactivity without a signing secret: {reply}"
    );

    let response_url = slack.response_url();
    let envelope = json!({
        "type": "interactive",
        "envelope_id": "env-1",
        "accepts_response_payload": false,
        "payload": click_payload("U0ALICE", "quench:keep", VALUE, "1767603700.000100", &response_url),
    });
    socket.send(&envelope);
    eventually(WAIT, "the envelope is acknowledged", || {
        socket.acks("env-1") == 1
    })
    .await;
    let decisions = stored(&jetstream, "QUENCH_DECISIONS").await;
    assert_eq!(decisions.len(), 1, "published before the acknowledgement");
    assert_eq!(decisions[0].subject, format!("quench.decisions.{RUN}"));
    assert_eq!(
        decisions[0].payload["actor"],
        json!({"via": "slack", "id": "T0FAKE/U0ALICE", "name": "u0alice"})
    );
    eventually(WAIT, "the user is told", || !slack.responses().is_empty()).await;
    assert!(
        slack.responses()[0].body["text"]
            .as_str()
            .expect("text")
            .starts_with("Recorded your answer *keep*")
    );

    // Slack delivering the envelope again: acknowledged, one decision still.
    socket.send(&envelope);
    eventually(WAIT, "the re-delivery is acknowledged", || {
        socket.acks("env-1") == 2
    })
    .await;
    assert_eq!(stored(&jetstream, "QUENCH_DECISIONS").await.len(), 1);
    eventually(WAIT, "the user is told again", || {
        slack.responses().len() == 2
    })
    .await;

    // Not a quench button: acknowledged, nothing published, the user is told.
    let other = json!({
        "type": "interactive", "envelope_id": "env-2", "accepts_response_payload": false,
        "payload": click_payload("U0ALICE", "approve", "req-42", "1767603800.000100", &slack.response_url()),
    });
    socket.send(&other);
    eventually(WAIT, "acknowledged", || socket.acks("env-2") == 1).await;
    eventually(WAIT, "told", || slack.responses().len() == 3).await;
    assert!(
        slack.responses()[2].body["text"]
            .as_str()
            .expect("text")
            .starts_with("Nothing was recorded")
    );
    assert_eq!(stored(&jetstream, "QUENCH_DECISIONS").await.len(), 1);

    // A form's submission: the decision by the submitting user, with the comment. A tampered
    // one is answered in the acknowledgement, where Slack takes the form's errors.
    let form_view = OpenedView {
        id: "V0SOCKET1".to_owned(),
        trigger_id: "1.2.abc".to_owned(),
        view: json!({
            "type": "modal", "title": {"type": "plain_text", "text": "Answer keep"},
            "submit": {"type": "plain_text", "text": "Send"},
            "callback_id": "quench:comment", "private_metadata": asking_value(),
            "blocks": [{"type": "input", "block_id": "quench:comment",
                        "label": {"type": "plain_text", "text": "What is this key for?"},
                        "element": {"type": "plain_text_input", "action_id": "comment"}}]
        }),
    };
    let mut tampered = slack.view_submission(&form_view, "U0BOB", "for billing");
    tampered["view"]["private_metadata"] = json!(VALUE);
    socket.send(&json!({
        "type": "interactive", "envelope_id": "env-3", "accepts_response_payload": true,
        "payload": tampered,
    }));
    eventually(WAIT, "acknowledged", || socket.acks("env-3") == 1).await;
    let ack = socket
        .received
        .lock()
        .expect("lock")
        .iter()
        .find(|frame| frame["envelope_id"] == "env-3")
        .cloned()
        .expect("the acknowledgement");
    assert_eq!(ack["payload"]["response_action"], "errors", "{ack}");
    assert!(
        ack["payload"]["errors"]["quench:comment"]
            .as_str()
            .is_some_and(|error| error.starts_with("Nothing was recorded")),
        "{ack}"
    );
    assert_eq!(stored(&jetstream, "QUENCH_DECISIONS").await.len(), 1);
    socket.send(&json!({
        "type": "interactive", "envelope_id": "env-4", "accepts_response_payload": true,
        "payload": slack.view_submission(&form_view, "U0BOB", "the nightly billing export"),
    }));
    eventually(WAIT, "acknowledged", || socket.acks("env-4") == 1).await;
    let decisions = stored(&jetstream, "QUENCH_DECISIONS").await;
    assert_eq!(decisions.len(), 2, "published before the acknowledgement");
    assert_eq!(
        decisions[1].payload["comment"],
        "the nightly billing export"
    );
    assert_eq!(decisions[1].payload["actor"]["id"], "T0FAKE/U0BOB");
    let log = gateway.log_text();
    assert!(!log.contains(&slack.app_token()), "{log}");
}

async fn violation(errors: &Arc<Mutex<Vec<String>>>, expected: &str) {
    let expected = expected.to_lowercase();
    eventually(
        WAIT,
        &format!("a permissions violation: {expected}"),
        || {
            errors
                .lock()
                .expect("lock")
                .iter()
                .any(|error| error.contains("permissions violation") && error.contains(&expected))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_permissions_confine_the_gateway_user() {
    let nats = deployed_nats();
    let (runner, runner_errors) =
        connect_as(&nats, "quench-runner", RUNNER_PASSWORD, "_INBOX.runner").await;
    let runner_js = jetstream::new(runner.clone());
    quench_runner::service::ensure_streams(&runner_js, &nats.url(), 1)
        .await
        .expect("the runner user manages the streams");
    // With `[cluster]` the runner user also appends to the journal, keeps its lease and
    // saves snapshots (docs/cluster.md).
    let journal = quench_runner::cluster::journal::Journal::ensure(runner_js.clone(), 1)
        .await
        .expect("the runner user keeps the journal");
    let writer = journal
        .take_over(0, "runner-a", 1)
        .await
        .expect("and appends to it");
    let owners = quench_runner::cluster::owners::Owners::join(
        &runner_js,
        "runner-a",
        Duration::from_secs(10),
        1,
    )
    .await
    .expect("the runner user joins the members");
    assert!(
        owners.claim(0).await.expect("claims a lease").is_some(),
        "the partition was free"
    );
    let snapshots = quench_runner::cluster::snapshot::Snapshots::open(runner_js.clone(), 1)
        .await
        .expect("the runner user keeps snapshots");
    snapshots
        .save(0, writer.last(), b"state")
        .await
        .expect("saves one");
    assert_eq!(
        snapshots.latest(0).await.expect("reads it back"),
        Some((writer.last(), b"state".to_vec()))
    );
    // With several partitions: the cluster's partition count, and findings routed to them.
    quench_runner::cluster::owners::settle_partitions(&runner_js, 8, 1)
        .await
        .expect("the runner user records the partition count");
    quench_runner::service::ensure_routing(&runner_js, &nats.url(), 1)
        .await
        .expect("the runner user keeps the routing stream");
    runner_js
        .publish("quench.partition.3.quench.findings.x", "{}".into())
        .await
        .expect("routes a finding")
        .await
        .expect("acknowledged by the routing stream");
    let routed = runner_js
        .get_stream("QUENCH_PARTITIONS")
        .await
        .expect("the routing stream")
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("quench-findings-3".to_owned()),
            filter_subject: "quench.partition.3.quench.findings.>".to_owned(),
            ..Default::default()
        })
        .await
        .expect("the partition's consumer");
    let message = routed
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch")
        .next()
        .await
        .expect("the routed finding")
        .expect("a message");
    message.double_ack().await.expect("and acknowledges it");
    // Console sessions shared by the runners.
    let sessions = quench_runner::service::console_sessions(&runner_js, 1)
        .await
        .expect("the runner user keeps the console sessions");
    sessions
        .put("0123abcd", r#"{"person":"p"}"#.into())
        .await
        .expect("writes one");
    assert!(sessions.get("0123abcd").await.expect("reads it").is_some());
    sessions.purge("0123abcd").await.expect("ends it");

    let (gateway, errors) =
        connect_as(&nats, "quench-gateway", GATEWAY_PASSWORD, "_INBOX.gateway").await;
    let mut gateway_js = jetstream::new(gateway.clone());
    gateway_js.set_timeout(Duration::from_secs(2));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "f-perm-1");
    let ack = gateway_js
        .publish_with_headers(
            "quench.findings.openai.api_key.leaked",
            headers,
            finding("f-perm-1", "key_1").to_string().into(),
        )
        .await
        .expect("the gateway may publish findings")
        .await
        .expect("and reads the stream's acknowledgement");
    assert_eq!(ack.stream, "QUENCH_FINDINGS");
    gateway_js
        .publish(format!("quench.decisions.{RUN}"), "{}".into())
        .await
        .expect("the gateway may publish decisions")
        .await
        .expect("acknowledged");

    // Everything else is refused by the server.
    gateway
        .publish("quench.events.x", "x".into())
        .await
        .expect("sent");
    gateway.flush().await.expect("flush");
    violation(&errors, "publish to \"quench.events.x\"").await;
    let mut snoop = gateway.subscribe("quench.>").await.expect("sent");
    violation(&errors, "subscription to \"quench.>\"").await;
    let _other_inboxes = gateway.subscribe("_INBOX.runner.>").await.expect("sent");
    violation(&errors, "subscription to \"_INBOX.runner.>\"").await;
    gateway
        .publish("$KV.QUENCH_OWNERS.partition.0", "gateway".into())
        .await
        .expect("sent");
    gateway.flush().await.expect("flush");
    violation(&errors, "publish to \"$kv.quench_owners.partition.0\"").await;
    gateway
        .publish(
            "$KV.QUENCH_CONSOLE.0123abcd",
            r#"{"person":"forged"}"#.into(),
        )
        .await
        .expect("sent");
    gateway.flush().await.expect("flush");
    violation(&errors, "publish to \"$kv.quench_console.0123abcd\"").await;
    assert!(
        gateway_js
            .create_stream(jetstream::stream::Config {
                name: "EVIL".to_owned(),
                subjects: vec!["evil.>".to_owned()],
                ..Default::default()
            })
            .await
            .is_err(),
        "no JetStream API for the gateway"
    );
    violation(&errors, "publish to \"$js.api.stream.create.evil\"").await;
    runner
        .publish("quench.events.gate.run_started", "{}".into())
        .await
        .expect("the runner publishes events");
    runner.flush().await.expect("flush");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), snoop.next())
            .await
            .is_err(),
        "the refused subscription receives nothing"
    );

    // The scanner user may publish findings only.
    let (scanner, scanner_errors) =
        connect_as(&nats, "quench-scanner", SCANNER_PASSWORD, "_INBOX.scanner").await;
    jetstream::new(scanner.clone())
        .publish(
            "quench.findings.openai.api_key.leaked",
            finding("f-perm-2", "key_2").to_string().into(),
        )
        .await
        .expect("published")
        .await
        .expect("acknowledged");
    scanner
        .publish(format!("quench.decisions.{RUN}"), "{}".into())
        .await
        .expect("sent");
    scanner.flush().await.expect("flush");
    violation(
        &scanner_errors,
        &format!("publish to \"quench.decisions.{RUN}\""),
    )
    .await;

    assert_eq!(stored(&runner_js, "QUENCH_FINDINGS").await.len(), 2);
    assert_eq!(stored(&runner_js, "QUENCH_DECISIONS").await.len(), 1);
    assert!(
        runner_errors.lock().expect("lock").is_empty(),
        "{:?}",
        runner_errors.lock()
    );
}

const GATE_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: gate
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com]
      question: Revoke the leaked key?
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: revoke
  - id: bye
    uses: note
    with:
      message: "{{ steps.decide.choice }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_click_resumes_the_waiting_run_and_an_outsiders_does_not() {
    // Everything as deployed: each process with its own NATS user and inbox prefix.
    let nats = deployed_nats();
    let slack = SlackFake::start().await;
    slack.add_user("alice@example.com", "U0ALICE");
    slack.add_user("bob@example.com", "U0BOB");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = deployed_runner(
        &nats,
        &slack,
        &[("gate.yaml", GATE_PLAYBOOK)],
        "",
        &[],
        dir.path(),
    );
    let gateway_dir = dir.path().join("gateway");
    std::fs::create_dir(&gateway_dir).expect("gateway dir");
    let gateway = deployed_gateway(&nats, &slack, &gateway_dir);

    // A scanner reports a leaked key through the gateway; the runner asks alice in Slack.
    let (status, reply, _) = answer(findings_request(
        &gateway.url("/webhooks/findings"),
        &finding("f-e2e", "key_e2e").to_string(),
        now(),
        FINDINGS_SECRET,
    ))
    .await;
    assert_eq!(status, 202, "{reply}");
    eventually(WAIT, "alice is asked in a DM", || {
        slack
            .dm_channel("U0ALICE")
            .is_some_and(|dm| slack.messages_in(&dm).iter().any(|m| m.blocks.is_some()))
    })
    .await;
    let dm = slack.dm_channel("U0ALICE").expect("dm");
    let asked = slack.messages_in(&dm)[0].clone();
    let keep = buttons(asked.blocks.as_ref())
        .into_iter()
        .find(|button| button.action_id == "quench:keep")
        .expect("a keep button");
    let run = keep.value_json()["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    assert_eq!(keep.block_id, format!("quench:{run}:decide"));

    let click = |user: &str, action_ts: &str| {
        form(&gateway_client::click_payload(
            user,
            &keep,
            &dm,
            action_ts,
            &slack.response_url(),
        ))
    };
    let url = gateway.url("/slack/interactions");

    // Bob is not an approver: his signed click is published, and the runner refuses it.
    let (status, _, _) = answer(slack_request(
        &url,
        &click("U0BOB", "1767603700.000100"),
        now(),
        SIGNING_SECRET,
    ))
    .await;
    assert_eq!(status, 200);
    let (runner_client, _) =
        connect_as(&nats, "quench-runner", RUNNER_PASSWORD, "_INBOX.runner").await;
    let runner_js = jetstream::new(runner_client);
    let consumer: jetstream::consumer::PullConsumer = runner_js
        .get_stream("QUENCH_DECISIONS")
        .await
        .expect("stream")
        .get_consumer("quench-decisions")
        .await
        .expect("the runner's consumer");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let info = consumer.get_info().await.expect("consumer info");
        if info.ack_floor.stream_sequence >= 1 && info.num_pending == 0 && info.num_ack_pending == 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the runner did not take bob's click"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let unchanged = slack.messages_in(&dm)[0].clone();
    assert_eq!(unchanged.updates, 0, "the gate still waits: {unchanged:?}");

    // Alice's click decides the gate, and the runner updates her message.
    let (status, _, _) = answer(slack_request(
        &url,
        &click("U0ALICE", "1767603760.000200"),
        now(),
        SIGNING_SECRET,
    ))
    .await;
    assert_eq!(status, 200);
    eventually(WAIT, "the message shows the decision", || {
        slack.messages_in(&dm)[0]
            .text
            .as_deref()
            .is_some_and(|text| text.contains("Decided: *keep* by <@U0ALICE>"))
    })
    .await;
    eventually(
        WAIT,
        "both clickers are told their answer was recorded",
        || slack.responses().len() == 2,
    )
    .await;
    for response in slack.responses() {
        assert!(
            response.body["text"]
                .as_str()
                .expect("text")
                .starts_with("Recorded your answer *keep*"),
            "the gateway does not decide who may answer: {response:?}"
        );
    }

    drop(gateway);
    assert_eq!(service.terminate(), Some(0), "{}", service.log_text());
    let store =
        quench_runner::store::Store::open(&quench_runner::store::StoreConfig::new(&service.store))
            .expect("the store opens after the service stopped");
    let decisions: Vec<quench_runner::store::AuditEntry> = store
        .audit_entries()
        .map(|entry| entry.expect("entry").1)
        .filter_map(|stored| quench_runner::store::parse_stored(&stored).map(|(_, _, entry)| entry))
        .filter(|entry| entry.kind == "decision")
        .collect();
    assert_eq!(decisions.len(), 2, "{decisions:#?}");
    assert_eq!(decisions[0].allowed, Some(false));
    assert_eq!(
        decisions[0].actor.as_ref().expect("actor")["id"],
        "T0FAKE/U0BOB"
    );
    assert_eq!(decisions[0].detail["refused"], "not_allowed");
    assert_eq!(decisions[1].allowed, Some(true));
    assert_eq!(
        decisions[1].actor.as_ref().expect("actor"),
        &json!({"via": "slack", "id": "T0FAKE/U0ALICE", "name": "u0alice"})
    );
    let run_state: quench_runner::engine::Run = store
        .get(quench_runner::store::Key::Run(&run))
        .expect("readable")
        .expect("the run");
    assert_eq!(
        run_state.status,
        quench_runner::engine::RunStatus::Completed,
        "{run_state:?}"
    );
}
