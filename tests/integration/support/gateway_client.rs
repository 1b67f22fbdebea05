//! Talking to `quench-gateway` as its callers do: requests signed the way Slack and scanners sign
//! them, `block_actions` payloads for a click on one of quench's approval buttons (read from the
//! message the Slack fake holds), and the NATS users of `deploy/nats-server.conf`.

use std::sync::{Arc, Mutex};

use quench_gateway::signature::{sign_findings, sign_slack};
use serde_json::{Value, json};

use super::NatsServer;

/// The gateway's `slack.signing_secret` in tests.
pub(crate) const SIGNING_SECRET: &str = "slack-signing-secret-for-tests";
/// The gateway's `gateway.findings_secret` in tests.
pub(crate) const FINDINGS_SECRET: &str = "findings-webhook-secret-for-tests";

/// Passwords of the users in `deploy/nats-server.conf` (given to nats-server by environment).
pub(crate) const RUNNER_PASSWORD: &str = "runner-password-for-tests";
pub(crate) const GATEWAY_PASSWORD: &str = "gateway-password-for-tests";
pub(crate) const SCANNER_PASSWORD: &str = "scanner-password-for-tests";

/// An HTTP client with the process's TLS provider in place (reqwest is built without one).
pub(crate) fn http() -> reqwest::Client {
    quench_common::http::http_client()
}

/// Unix seconds now, as a signer stamps its requests.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// The status, JSON body (`null` when empty) and `Retry-After` of an answer.
pub(crate) async fn answer(request: reqwest::RequestBuilder) -> (u16, Value, Option<String>) {
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("ascii").to_owned());
    let bytes = response.bytes().await.expect("a body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "not JSON (status {status}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, body, retry_after)
}

/// A POST of `body` with a content type and more headers.
pub(crate) fn post<const N: usize>(
    url: &str,
    content_type: &str,
    body: &str,
    headers: [(&str, String); N],
) -> reqwest::RequestBuilder {
    let mut request = http()
        .post(url)
        .header("content-type", content_type)
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request
}

/// A Slack interactivity request: the form `body`, `X-Slack-Request-Timestamp` and
/// `X-Slack-Signature` over `v0:{timestamp}:{body}` with `secret`.
pub(crate) fn slack_request(
    url: &str,
    body: &str,
    timestamp: i64,
    secret: &str,
) -> reqwest::RequestBuilder {
    let signature = sign_slack(secret, timestamp, body.as_bytes());
    post(
        url,
        "application/x-www-form-urlencoded",
        body,
        [
            ("x-slack-request-timestamp", timestamp.to_string()),
            ("x-slack-signature", signature),
        ],
    )
}

/// A scanner's finding: `X-Quench-Timestamp` and `X-Quench-Signature` over `v1:{timestamp}:{body}`.
pub(crate) fn findings_request(
    url: &str,
    body: &str,
    timestamp: i64,
    secret: &str,
) -> reqwest::RequestBuilder {
    let signature = sign_findings(secret, timestamp, body.as_bytes());
    post(
        url,
        "application/json",
        body,
        [
            ("x-quench-timestamp", timestamp.to_string()),
            ("x-quench-signature", signature),
        ],
    )
}

/// One button of a message's `actions` blocks, as Slack sends it back when it is clicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Button {
    pub(crate) action_id: String,
    pub(crate) value: String,
    pub(crate) block_id: String,
    /// The button's label.
    pub(crate) text: String,
}

impl Button {
    /// The button's value as JSON (quench's buttons carry `run_id`, `gate`, `token`, `choice`).
    pub(crate) fn value_json(&self) -> Value {
        serde_json::from_str(&self.value).expect("a quench button's value is JSON")
    }
}

/// The buttons of a Slack message's blocks (none when it has no `actions` block).
pub(crate) fn buttons(blocks: Option<&Value>) -> Vec<Button> {
    blocks
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|block| block["type"] == "actions")
        .flat_map(|block| {
            let block_id = block["block_id"].as_str().unwrap_or_default().to_owned();
            block["elements"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |button| Button {
                    action_id: button["action_id"].as_str().unwrap_or_default().to_owned(),
                    value: button["value"].as_str().unwrap_or_default().to_owned(),
                    block_id: block_id.clone(),
                    text: button["text"]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                })
        })
        .collect()
}

/// A `block_actions` payload as Slack sends it when `user` clicks `button` in a message in
/// `channel` at `action_ts`.
pub(crate) fn click_payload(
    user: &str,
    button: &Button,
    channel: &str,
    action_ts: &str,
    response_url: &str,
) -> Value {
    json!({
        "type": "block_actions",
        "team": {"id": "T0FAKE", "domain": "acme"},
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0FAKE"},
        "api_app_id": "A0QUENCH",
        "token": "legacy-verification-token",
        "trigger_id": format!("{action_ts}.trigger"),
        "container": {"type": "message", "message_ts": "1767603600.000001", "channel_id": channel, "is_ephemeral": false},
        "channel": {"id": channel, "name": "directmessage"},
        "message": {"type": "message", "ts": "1767603600.000001", "text": "Revoke?", "bot_id": "B0FAKE"},
        "response_url": response_url,
        "actions": [{
            "type": "button", "action_id": button.action_id, "block_id": button.block_id,
            "text": {"type": "plain_text", "text": button.text}, "value": button.value, "action_ts": action_ts
        }],
        "state": {"values": {}}
    })
}

/// The form body Slack posts: `payload=<JSON>`.
pub(crate) fn form(payload: &Value) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

/// nats-server with `deploy/nats-server.conf`, passwords from its environment.
pub(crate) fn deployed_nats() -> NatsServer {
    let config = std::fs::read_to_string(super::root().join("deploy/nats-server.conf"))
        .expect("deploy/nats-server.conf");
    NatsServer::with_config(
        &config,
        &[
            ("QUENCH_RUNNER_NATS_PASSWORD", RUNNER_PASSWORD),
            ("QUENCH_GATEWAY_NATS_PASSWORD", GATEWAY_PASSWORD),
            ("QUENCH_SCANNER_NATS_PASSWORD", SCANNER_PASSWORD),
        ],
    )
}

/// `quench-gateway` as deployed: the gateway NATS user of `deploy/nats-server.conf` with its
/// inbox prefix, the test signing and findings secrets, and replies to `response_url`s under the
/// Slack fake's receiver. Its config and log go in `dir`.
pub(crate) fn deployed_gateway(
    nats: &NatsServer,
    slack: &super::slack_fake::SlackFake,
    dir: &std::path::Path,
) -> super::GatewayProcess {
    let config = format!(
        r#"
[nats]
url = "{nats}"
user = "quench-gateway"
password = "{GATEWAY_PASSWORD}"
inbox_prefix = "_INBOX.gateway"

[slack]
signing_secret = "{SIGNING_SECRET}"

[gateway]
findings_secret = "{FINDINGS_SECRET}"
test_response_url_prefix = "{prefix}"
"#,
        nats = nats.url(),
        prefix = slack.response_url_prefix(),
    );
    super::GatewayProcess::start(&config, dir)
}

/// `quench serve` as deployed beside [`deployed_nats`]: the runner NATS user of
/// `deploy/nats-server.conf` with its inbox prefix, Slack at the fake, and `extra` appended to its
/// config file; `playbooks` (file name, source) in `dir/playbooks`, its store and log in `dir`,
/// `args` added to `quench serve`.
pub(crate) fn deployed_runner(
    nats: &NatsServer,
    slack: &super::slack_fake::SlackFake,
    playbooks: &[(&str, &str)],
    extra: &str,
    args: &[&str],
    dir: &std::path::Path,
) -> super::Service {
    let playbook_dir = dir.join("playbooks");
    std::fs::create_dir(&playbook_dir).expect("playbook dir");
    for (file, source) in playbooks {
        std::fs::write(playbook_dir.join(file), source).expect("write the playbook");
    }
    let config = format!(
        r#"
[nats]
user = "quench-runner"
password = "{RUNNER_PASSWORD}"
inbox_prefix = "_INBOX.runner"

[slack]
api_url = "{api}"
bot_token = "{token}"
{extra}"#,
        api = slack.api_url(),
        token = slack.bot_token(),
    );
    super::Service::launch(&nats.url(), &playbook_dir, dir, &[], Some(&config), args)
}

/// A scanner reports a finding straight on NATS: a JetStream publish on
/// `quench.findings.<kind>` with its id as `Nats-Msg-Id`, acknowledged by the stream.
pub(crate) async fn publish_finding(scanner: &async_nats::jetstream::Context, finding: &Value) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", finding["id"].as_str().expect("id"));
    scanner
        .publish_with_headers(
            format!(
                "quench.findings.{}",
                finding["kind"].as_str().expect("kind")
            ),
            headers,
            finding.to_string().into(),
        )
        .await
        .expect("published")
        .await
        .expect("the stream acknowledges it");
}

/// [`publish_finding`], published again (same `Nats-Msg-Id`) until the stream acknowledges it,
/// as a scanner does across a leader election: a minute at most.
pub(crate) async fn publish_finding_retrying(
    jetstream: &async_nats::jetstream::Context,
    finding: &Value,
) {
    let started = std::time::Instant::now();
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", finding["id"].as_str().expect("id"));
        let subject = format!(
            "quench.findings.{}",
            finding["kind"].as_str().expect("kind")
        );
        let acked = match jetstream
            .publish_with_headers(subject, headers, finding.to_string().into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match acked {
            Ok(()) => return,
            Err(error) => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(60),
                    "the stream never acknowledged {}: {error}",
                    finding["id"]
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// A client as `user`, its server errors (permission violations) collected.
pub(crate) async fn connect_as(
    nats: &NatsServer,
    user: &str,
    password: &str,
    inbox: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client =
        async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password.to_owned())
            .custom_inbox_prefix(inbox)
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        sink.lock()
                            .expect("lock")
                            .push(error.to_string().to_lowercase());
                    }
                }
            })
            .connect(nats.url())
            .await
            .unwrap_or_else(|error| panic!("{user} connects: {error}"));
    (client, errors)
}
