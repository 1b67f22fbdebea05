//! The whole mission end to end, as a user meets it: a real `nats-server` with the users and
//! permissions of `deploy/nats-server.conf`, `quench serve` and `quench-gateway` as real
//! processes, the Slack and OpenAI fakes, and the SHIPPED playbook
//! `workflows/revoke-leaked-openai-key.yaml` with the shipped example finding
//! `workflows/examples/leaked-openai-key.json`.
//!
//! A leaked key is reported → its owner (and secops) are asked in Slack → a signed click goes
//! through the gateway → the key is revoked exactly once at OpenAI → the messages are updated →
//! the owner is told → `quench audit verify` passes. Also: the owner keeps the key; nobody
//! answers and the timeout revokes; someone not allowed clicks and is refused; a `resolved`
//! finding closes the waiting run; the runner is killed with SIGKILL while waiting and again
//! right after the revoke intent, and everything still happens exactly once.
//!
//! The test reads run events from the `QUENCH_EVENTS` stream as the runner's NATS user (the only
//! one allowed to read streams), publishes findings as the scanner user, and after stopping the
//! runner reads its store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use quench_proto::{RunEvent, RunEventKind};
use quench_runner::engine::{Gate, Run, RunStatus, StepStatus};
use quench_runner::store::{AuditEntry, Key, Store, StoreConfig};
use serde_json::{Value, json};

use crate::support::gateway_client::{
    Button, FINDINGS_SECRET, RUNNER_PASSWORD, SCANNER_PASSWORD, SIGNING_SECRET, answer, buttons,
    click_payload, connect_as, deployed_gateway, deployed_nats, deployed_runner, findings_request,
    form, now, publish_finding, slack_request,
};
use crate::support::openai_fake::{Fault, KeySeed, OpenAiFake, Role};
use crate::support::slack_fake::{SlackFake, SlackMessage};
use crate::support::{GatewayProcess, NatsServer, Service, quench_bin, root};

const WAIT: Duration = Duration::from_secs(20);

/// The owner of the example finding, and their Slack id.
const OWNER_EMAIL: &str = "alice@example.com";
const OWNER: &str = "U0ALICE";
/// The one member of `[groups] secops`.
const SECOPS_EMAIL: &str = "lead@example.com";
const SECOPS: &str = "U0LEAD";
/// Someone in the workspace who is neither.
const OUTSIDER: &str = "U0MALLORY";

/// The example finding's key, project and key name.
const PROJECT: &str = "proj_example";
const KEY_ID: &str = "key_example01";
const KEY_NAME: &str = "web-prod";

/// The shipped playbook, as shipped.
fn shipped_playbook() -> String {
    std::fs::read_to_string(root().join("workflows/revoke-leaked-openai-key.yaml"))
        .expect("the shipped playbook")
}

/// The shipped playbook with the approval's hours made seconds — `timeout: 4h` → `4s`,
/// `remind_every: 1h` → `1s`, escalation `after: 2h` → `2s` — so that a gate nobody answers
/// times out within the test (the service has no clock override). Nothing else changes.
fn shipped_playbook_in_seconds() -> String {
    let mut source = shipped_playbook();
    for (from, to) in [
        ("      timeout: 4h\n", "      timeout: 4s\n"),
        ("      remind_every: 1h\n", "      remind_every: 1s\n"),
        ("        - after: 2h\n", "        - after: 2s\n"),
    ] {
        assert_eq!(
            source.matches(from).count(),
            1,
            "the shipped playbook has `{}` once",
            from.trim()
        );
        source = source.replacen(from, to, 1);
    }
    source
}

/// The shipped example finding (a leaked key of alice's).
fn leaked_finding() -> Value {
    let text = std::fs::read_to_string(root().join("workflows/examples/leaked-openai-key.json"))
        .expect("the shipped example finding");
    let finding: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(finding["owner"]["email"], OWNER_EMAIL);
    assert_eq!(finding["resource"]["id"], KEY_ID);
    assert_eq!(finding["resource"]["project_id"], PROJECT);
    finding
}

/// The scanner's later report that the same problem is gone.
fn resolved_finding() -> Value {
    let mut finding = leaked_finding();
    finding["id"] = format!("{}-resolved", finding["id"].as_str().expect("id")).into();
    finding["status"] = "resolved".into();
    finding
}

/// The DELETE that revokes the key.
fn revoke_path() -> String {
    format!("/v1/organization/projects/{PROJECT}/api_keys/{KEY_ID}")
}

/// An approval message as it was first posted: where, and its buttons.
#[derive(Debug, Clone)]
struct Asked {
    channel: String,
    ts: String,
    buttons: Vec<Button>,
}

impl Asked {
    fn button(&self, choice: &str) -> &Button {
        self.buttons
            .iter()
            .find(|button| button.action_id == format!("quench:{choice}"))
            .unwrap_or_else(|| panic!("no {choice} button in {:?}", self.buttons))
    }

    fn run_id(&self) -> String {
        self.buttons[0].value_json()["run_id"]
            .as_str()
            .expect("a run id in the button")
            .to_owned()
    }
}

struct World {
    slack: SlackFake,
    openai: OpenAiFake,
    runner: Service,
    gateway: GatewayProcess,
    /// As the runner's user: reads consumers and streams.
    runner_js: jetstream::Context,
    /// As the scanner's user: publishes findings.
    scanner_js: jetstream::Context,
    events: Arc<Mutex<Vec<RunEvent>>>,
    clicks: AtomicU64,
    events_task: tokio::task::JoinHandle<()>,
    // Dropped last: the processes above use them.
    _nats: NatsServer,
    _dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        self.events_task.abort();
    }
}

impl World {
    /// Everything running, with `playbook` as the only playbook.
    async fn start(playbook: &str) -> World {
        World::start_with(playbook, "").await
    }

    /// As [`World::start`], with `more` appended to the runner's config.
    async fn start_with(playbook: &str, more: &str) -> World {
        let nats = deployed_nats();
        let slack = SlackFake::start().await;
        slack.add_user(OWNER_EMAIL, OWNER);
        slack.add_user(SECOPS_EMAIL, SECOPS);
        slack.add_user("mallory@example.com", OUTSIDER);
        let openai = OpenAiFake::start().await;
        openai.seed_project(PROJECT, "web");
        openai.seed_user(PROJECT, "user_alice", OWNER_EMAIL, Role::Owner);
        openai.seed_key(PROJECT, "user_alice", KeySeed::new(KEY_ID).name(KEY_NAME));

        let dir = tempfile::tempdir().expect("temp dir");
        // Live: an admin key is configured, so the revoke reaches the OpenAI fake.
        let extra = format!(
            r#"
[openai]
base_url = "{openai_url}"
admin_key = "{admin_key}"

[groups]
secops = ["{SECOPS_EMAIL}"]
{more}
"#,
            openai_url = openai.base_url(),
            admin_key = openai.admin_key(),
        );
        let runner = deployed_runner(
            &nats,
            &slack,
            &[("revoke-leaked-openai-key.yaml", playbook)],
            &extra,
            &[],
            dir.path(),
        );

        let gateway_dir = dir.path().join("gateway");
        std::fs::create_dir(&gateway_dir).expect("gateway dir");
        let gateway = deployed_gateway(&nats, &slack, &gateway_dir);

        let (runner_client, _) =
            connect_as(&nats, "quench-runner", RUNNER_PASSWORD, "_INBOX.runner").await;
        let runner_js = jetstream::new(runner_client);
        let (scanner_client, _) =
            connect_as(&nats, "quench-scanner", SCANNER_PASSWORD, "_INBOX.scanner").await;
        let scanner_js = jetstream::new(scanner_client);
        let (events, events_task) = observe_events(&runner_js).await;
        World {
            slack,
            openai,
            runner,
            gateway,
            runner_js,
            scanner_js,
            events,
            clicks: AtomicU64::new(0),
            events_task,
            _nats: nats,
            _dir: dir,
        }
    }

    /// Polls `check` until it holds; fails with both processes' logs after [`WAIT`].
    async fn until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let started = std::time::Instant::now();
        while !check() {
            assert!(
                started.elapsed() < WAIT,
                "not within {WAIT:?}: {what}\n--- quench serve ---\n{}\n--- quench-gateway ---\n{}\n--- Slack DMs ---\n{:#?}",
                self.runner.log_text(),
                self.gateway.log_text(),
                [OWNER, SECOPS]
                    .into_iter()
                    .filter_map(|user| self.slack.dm_channel(user))
                    .flat_map(|channel| self.slack.messages_in(&channel))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A scanner reports a finding straight on NATS (JetStream, `Nats-Msg-Id` = its id).
    async fn publish(&self, finding: &Value) {
        publish_finding(&self.scanner_js, finding).await;
    }

    /// A scanner reports a finding through the gateway's signed webhook.
    async fn report(&self, finding: &Value) {
        let (status, reply, _) = answer(findings_request(
            &self.gateway.url("/webhooks/findings"),
            &finding.to_string(),
            now(),
            FINDINGS_SECRET,
        ))
        .await;
        assert_eq!(status, 202, "{reply}");
        assert_eq!(reply["status"], "published", "{reply}");
    }

    /// The first message with buttons in the DM with `user`, once there is one.
    async fn asked(&self, user: &str) -> Asked {
        let mut found = None;
        self.until(&format!("{user} is asked in a DM, with buttons"), || {
            found = self.slack.dm_channel(user).and_then(|channel| {
                self.slack
                    .messages_in(&channel)
                    .into_iter()
                    .find(|message| !buttons(message.blocks.as_ref()).is_empty())
                    .map(|message| Asked {
                        channel,
                        ts: message.ts.clone(),
                        buttons: buttons(message.blocks.as_ref()),
                    })
            });
            found.is_some()
        })
        .await;
        found.expect("found")
    }

    /// A message as it stands now.
    fn message(&self, channel: &str, ts: &str) -> SlackMessage {
        self.slack
            .messages_in(channel)
            .into_iter()
            .find(|message| message.ts == ts)
            .unwrap_or_else(|| panic!("no message {ts} in {channel}"))
    }

    /// Every approval message (every message with blocks) in the DMs of the owner and secops.
    fn gate_messages(&self) -> Vec<SlackMessage> {
        [OWNER, SECOPS]
            .into_iter()
            .filter_map(|user| self.slack.dm_channel(user))
            .flat_map(|channel| self.slack.messages_in(&channel))
            .filter(|message| message.blocks.is_some())
            .collect()
    }

    /// Whether every approval message shows `outcome` and has no buttons left.
    fn gate_messages_show(&self, outcome: &str) -> bool {
        let messages = self.gate_messages();
        !messages.is_empty()
            && messages.iter().all(|message| {
                buttons(message.blocks.as_ref()).is_empty()
                    && message
                        .text
                        .as_deref()
                        .is_some_and(|text| text.contains(outcome))
            })
    }

    /// Whether the newest approval message in the DM of the owner and of secops shows `outcome`
    /// and has no buttons left. After a crash between posting a DM and recording it, the notice
    /// is delivered again (at least once), so an older copy may be one the runner never knew.
    fn newest_gate_messages_show(&self, outcome: &str) -> bool {
        [OWNER, SECOPS].into_iter().all(|user| {
            self.slack
                .dm_channel(user)
                .and_then(|channel| {
                    self.slack
                        .messages_in(&channel)
                        .into_iter()
                        .rfind(|message| message.blocks.is_some())
                })
                .is_some_and(|message| {
                    buttons(message.blocks.as_ref()).is_empty()
                        && message
                            .text
                            .as_deref()
                            .is_some_and(|text| text.contains(outcome))
                })
        })
    }

    /// The plain messages (no blocks) sent to the owner, oldest first.
    fn told_owner(&self) -> Vec<String> {
        self.slack
            .dm_channel(OWNER)
            .map(|channel| self.slack.messages_in(&channel))
            .unwrap_or_default()
            .into_iter()
            .filter(|message| message.blocks.is_none())
            .filter_map(|message| message.text)
            .collect()
    }

    /// `user` clicks the `choice` button of the message `asked`: a signed `block_actions` request
    /// into the gateway, as Slack sends it. Returns the click's `response_url`.
    async fn click(&self, user: &str, asked: &Asked, choice: &str) -> String {
        let (button, channel) = (asked.button(choice), asked.channel.as_str());
        let response_url = self.slack.response_url();
        let n = self.clicks.fetch_add(1, Ordering::Relaxed);
        let action_ts = format!("{}.{:06}", now(), n + 1);
        let body = form(&click_payload(
            user,
            button,
            channel,
            &action_ts,
            &response_url,
        ));
        let (status, reply, _) = answer(slack_request(
            &self.gateway.url("/slack/interactions"),
            &body,
            now(),
            SIGNING_SECRET,
        ))
        .await;
        assert_eq!(status, 200, "Slack gets its 200: {reply}");
        response_url
    }

    /// `user` clicks as [`World::click`] does; returns what the gateway told them.
    async fn click_and_read_reply(&self, user: &str, asked: &Asked, choice: &str) -> String {
        let response_url = self.click(user, asked, choice).await;
        self.reply_to(&response_url).await
    }

    /// What the gateway told the clicker through `response_url`.
    async fn reply_to(&self, response_url: &str) -> String {
        let mut text = None;
        self.until("the clicker is told through response_url", || {
            text = self
                .slack
                .responses()
                .into_iter()
                .find(|posted| posted.url == response_url)
                .and_then(|posted| posted.body["text"].as_str().map(str::to_owned));
            text.is_some()
        })
        .await;
        text.expect("found")
    }

    /// Waits until the runner has taken (and acknowledged) `count` decisions.
    async fn decisions_taken(&self, count: u64) {
        let mut consumer: jetstream::consumer::PullConsumer = self
            .runner_js
            .get_stream("QUENCH_DECISIONS")
            .await
            .expect("the decisions stream")
            .get_consumer("quench-decisions")
            .await
            .expect("the runner's consumer");
        let started = std::time::Instant::now();
        loop {
            let info = consumer.info().await.expect("consumer info");
            if info.ack_floor.stream_sequence >= count
                && info.num_pending == 0
                && info.num_ack_pending == 0
            {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "the runner did not take {count} decision(s): {info:?}\n{}",
                self.runner.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Run events of `kind` seen so far (for any run).
    fn events(&self, kind: RunEventKind) -> Vec<RunEvent> {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|event| event.kind == kind)
            .cloned()
            .collect()
    }

    fn deletes(&self) -> usize {
        self.openai.calls_to("DELETE", &revoke_path()).len()
    }

    /// SIGKILL, then the same command on the same store; waits until it is ready.
    fn crash_and_restart(&mut self) {
        self.runner.kill();
        self.runner.spawn();
    }

    /// Stops the runner (SIGTERM, exit 0), checks the audit chain with `quench audit verify`,
    /// and opens the store.
    fn stop(&mut self) -> Store {
        assert_eq!(
            self.runner.terminate(),
            Some(0),
            "SIGTERM exits 0:\n{}",
            self.runner.log_text()
        );
        let verify = std::process::Command::new(quench_bin())
            .args(["audit", "verify", "--store"])
            .arg(&self.runner.store)
            .output()
            .expect("quench audit verify runs");
        let stdout = String::from_utf8_lossy(&verify.stdout);
        assert_eq!(
            verify.status.code(),
            Some(0),
            "the audit chain verifies: {stdout}{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(stdout.starts_with("audit chain ok"), "{stdout}");
        Store::open(&StoreConfig::new(&self.runner.store)).expect("the store opens")
    }
}

/// Follows `QUENCH_EVENTS` from its start (an ephemeral consumer, as the runner's user).
async fn observe_events(
    js: &jetstream::Context,
) -> (Arc<Mutex<Vec<RunEvent>>>, tokio::task::JoinHandle<()>) {
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("QUENCH_EVENTS")
        .await
        .expect("the events stream (quench serve created it)")
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("an ephemeral consumer");
    let mut messages = consumer.messages().await.expect("pull");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let event: RunEvent = serde_json::from_slice(&message.payload).expect("a run event v1");
            sink.lock().expect("lock").push(event);
        }
    });
    (events, task)
}

fn stored_run(store: &Store, id: &str) -> Run {
    store
        .get(Key::Run(id))
        .expect("readable")
        .expect("the run is stored")
}

fn audit(store: &Store, run: &str, kind: &str) -> Vec<AuditEntry> {
    store
        .run_audit(run)
        .expect("the run's audit entries")
        .into_iter()
        .filter(|entry| entry.kind == kind)
        .collect()
}

/// Leaked key → DM with buttons → signed click → revoked once → messages updated → owner told →
/// the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_key_is_revoked_once_the_owner_clicks_revoke() {
    let mut world = World::start(&shipped_playbook()).await;
    world.report(&leaked_finding()).await;

    let asked = world.asked(OWNER).await;
    let run = asked.run_id();
    assert_eq!(
        asked
            .buttons
            .iter()
            .map(|button| button.text.as_str())
            .collect::<Vec<_>>(),
        ["revoke", "keep"]
    );
    let question = world.message(&asked.channel, &asked.ts);
    assert!(
        question
            .text
            .as_deref()
            .is_some_and(|text| text.starts_with(&format!("Revoke {KEY_NAME} now?"))),
        "{question:?}"
    );
    let notified = world.told_owner();
    assert!(
        notified.len() == 1 && notified[0].starts_with(&format!("Your OpenAI key *{KEY_NAME}*")),
        "the owner is told first: {notified:?}"
    );
    world.asked(SECOPS).await;
    assert_eq!(world.deletes(), 0, "nothing is revoked before an answer");

    assert!(
        world
            .click_and_read_reply(OWNER, &asked, "revoke")
            .await
            .starts_with("Recorded your answer *revoke*")
    );
    world
        .until("the run completes", || {
            !world.events(RunEventKind::RunCompleted).is_empty()
        })
        .await;
    assert_eq!(world.deletes(), 1, "revoked exactly once");
    assert!(!world.openai.key_exists(PROJECT, KEY_ID));
    world
        .until(
            "both approval messages show the decision, without buttons",
            || world.gate_messages_show(&format!("Decided: *revoke* by <@{OWNER}> (via slack)")),
        )
        .await;
    world
        .until("the owner is told it was revoked", || {
            world.told_owner().len() == 2
        })
        .await;
    assert!(
        world.told_owner()[1].starts_with(&format!("Revoked {KEY_NAME}.")),
        "{:?}",
        world.told_owner()
    );

    let store = world.stop();
    let ended = stored_run(&store, &run);
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(ended.steps["revoke"].status, StepStatus::Succeeded);
    assert_eq!(
        ended.steps["revoke"].output,
        json!({"id": KEY_ID, "deleted": true, "already_done": false})
    );
    let decisions = audit(&store, &run, "decision");
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].allowed, Some(true));
    assert_eq!(
        decisions[0].actor.as_ref().expect("actor")["id"],
        format!("T0FAKE/{OWNER}")
    );
    assert_eq!(audit(&store, &run, "run_completed").len(), 1);
    assert_eq!(world.deletes(), 1);
}

/// The owner answers keep: nothing reaches OpenAI's DELETE, the run completes, the messages say
/// so, and the owner is reminded to rotate the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_keeps_the_key_and_nothing_is_revoked() {
    let mut world = World::start(&shipped_playbook()).await;
    world.publish(&leaked_finding()).await;
    let asked = world.asked(OWNER).await;
    let run = asked.run_id();

    assert!(
        world
            .click_and_read_reply(OWNER, &asked, "keep")
            .await
            .starts_with("Recorded your answer *keep*")
    );
    world
        .until("the run completes", || {
            !world.events(RunEventKind::RunCompleted).is_empty()
        })
        .await;
    world
        .until("the approval messages show keep, without buttons", || {
            world.gate_messages_show(&format!("Decided: *keep* by <@{OWNER}> (via slack)"))
        })
        .await;
    world
        .until("the owner is told", || world.told_owner().len() == 2)
        .await;
    let told = &world.told_owner()[1];
    assert!(
        told.starts_with("Kept on") && told.contains("Rotate it soon anyway."),
        "{told}"
    );

    let store = world.stop();
    let ended = stored_run(&store, &run);
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(ended.steps["decide"].choice.as_deref(), Some("keep"));
    assert_eq!(ended.steps["revoke"].status, StepStatus::Skipped);
    assert!(
        world
            .openai
            .calls()
            .iter()
            .all(|call| call.method != "DELETE"),
        "no DELETE at all"
    );
    assert!(world.openai.key_exists(PROJECT, KEY_ID));
}

/// Nobody answers: reminders and the escalation go out, the gate times out to `revoke`, the key
/// is revoked once, and every message shows that no answer came. (The playbook's hours are
/// seconds here; see [`shipped_playbook_in_seconds`].)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_answers_and_the_timeout_revokes() {
    let mut world = World::start(&shipped_playbook_in_seconds()).await;
    world.publish(&leaked_finding()).await;
    let asked = world.asked(OWNER).await;
    let run = asked.run_id();

    world
        .until("the gate times out and the run completes", || {
            !world.events(RunEventKind::RunCompleted).is_empty()
        })
        .await;
    assert_eq!(world.deletes(), 1, "revoked exactly once");
    assert!(!world.openai.key_exists(PROJECT, KEY_ID));
    world
        .until(
            "every approval message shows the timeout, without buttons",
            || world.gate_messages_show("*revoke* was taken"),
        )
        .await;
    world
        .until("the owner is told", || world.told_owner().len() == 2)
        .await;
    assert!(world.told_owner()[1].starts_with(&format!("Revoked {KEY_NAME}.")));
    let posted: Vec<String> = world
        .slack
        .calls_to("chat.postMessage")
        .iter()
        .filter_map(|call| call.param("text")?.as_str().map(str::to_owned))
        .collect();
    // One reminder per person per tick: secops is named twice once the escalation added it
    // again, and still gets what the owner gets.
    let reminders = |channel: &str| {
        world
            .slack
            .calls_to("chat.postMessage")
            .iter()
            .filter(|call| call.param("channel") == Some(json!(channel)))
            .filter(|call| {
                call.param("text")
                    .and_then(|text| text.as_str().map(|text| text.starts_with("Reminder:")))
                    .unwrap_or(false)
            })
            .count()
    };
    let owner_dm = world.slack.dm_channel(OWNER).expect("owner DM");
    let secops_dm = world.slack.dm_channel(SECOPS).expect("secops DM");
    assert!(reminders(&owner_dm) >= 1, "{posted:#?}");
    assert_eq!(reminders(&secops_dm), reminders(&owner_dm), "{posted:#?}");

    let store = world.stop();
    let ended = stored_run(&store, &run);
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(ended.steps["decide"].via.as_deref(), Some("timeout"));
    assert_eq!(ended.steps["decide"].choice.as_deref(), Some("revoke"));
    assert_eq!(ended.steps["revoke"].status, StepStatus::Succeeded);
    assert_eq!(audit(&store, &run, "gate_timed_out").len(), 1);
    assert!(!audit(&store, &run, "gate_reminder").is_empty());
    assert_eq!(audit(&store, &run, "gate_escalated").len(), 1);
    assert!(audit(&store, &run, "decision").is_empty());
    assert_eq!(world.deletes(), 1);
}

/// Someone who is neither the owner nor in secops clicks the owner's revoke button: the gateway
/// publishes it (it vouches only for who clicked), the runner refuses and audits it, and the
/// run keeps waiting; then secops answers and that counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_not_allowed_is_refused_and_the_run_keeps_waiting() {
    let mut world = World::start(&shipped_playbook()).await;
    world.publish(&leaked_finding()).await;
    let asked = world.asked(OWNER).await;
    let run = asked.run_id();
    let secops = world.asked(SECOPS).await;

    assert!(
        world
            .click_and_read_reply(OUTSIDER, &asked, "revoke")
            .await
            .starts_with("Recorded your answer *revoke*. quench checks that you may answer"),
        "the gateway does not decide who may answer"
    );
    world.decisions_taken(1).await;
    assert_eq!(world.deletes(), 0, "nothing revoked");
    assert!(world.events(RunEventKind::Decided).is_empty(), "undecided");
    let still = world.message(&asked.channel, &asked.ts);
    assert_eq!(still.updates, 0, "{still:?}");
    assert_eq!(buttons(still.blocks.as_ref()), asked.buttons);

    // secops (a member of group:secops, asked in their own DM) may answer.
    world.click(SECOPS, &secops, "revoke").await;
    world
        .until("the run completes", || {
            !world.events(RunEventKind::RunCompleted).is_empty()
        })
        .await;
    assert_eq!(world.deletes(), 1);
    world
        .until("the messages show secops' decision", || {
            world.gate_messages_show(&format!("Decided: *revoke* by <@{SECOPS}>"))
        })
        .await;

    let store = world.stop();
    let decisions = audit(&store, &run, "decision");
    assert_eq!(decisions.len(), 2, "{decisions:#?}");
    assert_eq!(decisions[0].allowed, Some(false));
    assert_eq!(decisions[0].detail["refused"], "not_allowed");
    assert_eq!(
        decisions[0].actor.as_ref().expect("actor")["id"],
        format!("T0FAKE/{OUTSIDER}")
    );
    assert_eq!(decisions[1].allowed, Some(true));
    assert_eq!(
        decisions[1].actor.as_ref().expect("actor")["id"],
        format!("T0FAKE/{SECOPS}")
    );
    let ended = stored_run(&store, &run);
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(
        ended.steps["decide"].decided_by,
        [format!("T0FAKE/{SECOPS}")]
    );
}

/// The scanner reports the problem resolved (same key, `status: resolved`): the shipped
/// playbook's `on_resolved: cancel` closes the waiting run, the messages say it closed, and a
/// late click on the old message is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_finding_closes_the_waiting_run() {
    let mut world = World::start(&shipped_playbook()).await;
    world.publish(&leaked_finding()).await;
    let asked = world.asked(OWNER).await;
    let run = asked.run_id();
    world.asked(SECOPS).await;

    world.publish(&resolved_finding()).await;
    world
        .until("the run is cancelled", || {
            world
                .events(RunEventKind::RunCancelled)
                .iter()
                .any(|event| event.run_id == run)
        })
        .await;
    world
        .until(
            "the approval messages say the run closed, without buttons",
            || world.gate_messages_show("Closed without a decision: the run ended."),
        )
        .await;

    world.click(OWNER, &asked, "revoke").await;
    world.decisions_taken(1).await;
    assert_eq!(world.deletes(), 0, "nothing revoked");
    assert!(world.openai.key_exists(PROJECT, KEY_ID));
    assert_eq!(world.told_owner().len(), 1, "only the first notice");

    let store = world.stop();
    let ended = stored_run(&store, &run);
    assert_eq!(ended.status, RunStatus::Cancelled);
    let decisions = audit(&store, &run, "decision");
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].detail["refused"], "closed");
    assert_eq!(audit(&store, &run, "run_cancelled").len(), 1);
    assert!(world.events(RunEventKind::RunCompleted).is_empty());
}

/// SIGKILL while the run waits on its gate, twice: once and restarted (it still waits), then
/// again with the owner clicking while the runner is down (the gateway still gets JetStream's
/// acknowledgement). After the restart the click counts and the key is revoked exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_waiting_loses_nothing() {
    let mut world = World::start(&shipped_playbook()).await;
    world.publish(&leaked_finding()).await;
    let asked = world.asked(OWNER).await;
    let run = asked.run_id();
    world
        .until("the run waits on its gate", || {
            world
                .events(RunEventKind::Waiting)
                .iter()
                .any(|event| event.run_id == run)
        })
        .await;

    world.crash_and_restart();
    assert_eq!(world.deletes(), 0);
    assert!(world.events(RunEventKind::Decided).is_empty());

    world.runner.kill();
    assert!(
        world
            .click_and_read_reply(OWNER, &asked, "revoke")
            .await
            .starts_with("Recorded your answer *revoke*"),
        "recorded while the runner is down"
    );
    world.runner.spawn();
    world
        .until("the run completes", || {
            !world.events(RunEventKind::RunCompleted).is_empty()
        })
        .await;
    assert_eq!(world.deletes(), 1, "revoked exactly once");
    let decided = format!("Decided: *revoke* by <@{OWNER}>");
    world
        .until("the messages show the decision", || {
            world.newest_gate_messages_show(&decided)
        })
        .await;
    world
        .until("the owner is told", || world.told_owner().len() == 2)
        .await;

    let store = world.stop();
    let ended = stored_run(&store, &run);
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(ended.steps["revoke"].status, StepStatus::Succeeded);
    // Every message the runner recorded (one per person) was updated. A copy posted just before
    // a kill, and so posted again after the restart, is the only kind it may not know of.
    let gate: Gate = store
        .get(Key::Gate(&run, "decide"))
        .expect("readable")
        .expect("the gate");
    assert_eq!(gate.messages.len(), 2, "{:?}", gate.messages);
    for recorded in &gate.messages {
        let message = world.message(&recorded.channel, &recorded.ts);
        assert!(buttons(message.blocks.as_ref()).is_empty(), "{message:?}");
        assert!(
            message
                .text
                .as_deref()
                .is_some_and(|text| text.contains(&decided)),
            "{message:?}"
        );
    }
    for message in world.gate_messages() {
        let recorded = gate
            .messages
            .iter()
            .find(|recorded| recorded.channel == message.channel)
            .expect("one recorded message per DM");
        assert!(
            message.ts <= recorded.ts,
            "only an earlier copy can be unknown to the runner: {message:?}"
        );
    }
    assert_eq!(audit(&store, &run, "decision").len(), 1);
    assert_eq!(audit(&store, &run, "run_completed").len(), 1);
    assert_eq!(world.deletes(), 1);
    assert!(!world.openai.key_exists(PROJECT, KEY_ID));
}

/// SIGKILL right after the revoke intent is committed: OpenAI has deleted the key but its answer
/// has not arrived (the fake answers slowly). After the restart the step runs again with the same
/// input, gets 404, confirms the project exists and records `already_done`; the run completes
/// once and the owner is told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_revoke_intent_revokes_exactly_once() {
    let mut world = World::start(&shipped_playbook()).await;
    world.openai.fail_next_on(
        &revoke_path(),
        1,
        Fault::SlowAnswer(Duration::from_secs(60)),
    );
    world.publish(&leaked_finding()).await;
    let asked = world.asked(OWNER).await;
    let run = asked.run_id();

    world.click(OWNER, &asked, "revoke").await;
    world
        .until("OpenAI deleted the key; its answer is on the way", || {
            !world.openai.key_exists(PROJECT, KEY_ID)
        })
        .await;
    world.crash_and_restart();
    world
        .until("the run completes after the restart", || {
            !world.events(RunEventKind::RunCompleted).is_empty()
        })
        .await;
    let deletes = world.openai.calls_to("DELETE", &revoke_path());
    assert_eq!(
        deletes.len(),
        2,
        "the DELETE in flight at the crash, and its repeat"
    );
    world
        .until("the owner is told", || world.told_owner().len() == 2)
        .await;
    assert!(world.told_owner()[1].starts_with(&format!("Revoked {KEY_NAME}.")));
    world
        .until("the messages show the decision", || {
            world.gate_messages_show(&format!("Decided: *revoke* by <@{OWNER}>"))
        })
        .await;

    let store = world.stop();
    let ended = stored_run(&store, &run);
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(ended.steps["revoke"].status, StepStatus::AlreadyDone);
    assert_eq!(
        ended.steps["revoke"].output,
        json!({"id": KEY_ID, "deleted": true, "already_done": true})
    );
    assert_eq!(audit(&store, &run, "run_completed").len(), 1);
    assert_eq!(audit(&store, &run, "decision").len(), 1);
    assert_eq!(world.events(RunEventKind::RunCompleted).len(), 1);
    assert_eq!(world.told_owner().len(), 2, "told once");
    assert_eq!(world.deletes(), 2);
}

/// A scanner floods quench with leaks while `[safety]` allows ten revokes an hour: exactly ten
/// keys are revoked, the other runs wait on one safety gate asked once in Slack, and one click
/// of the safety approver releases them all (each key revoked once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_leaks_spends_the_safety_budget_and_one_click_releases_the_rest() {
    const FLOOD: usize = 200;
    const BUDGET: usize = 10;
    let world = World::start_with(
        crate::safety::REVOKE,
        &format!(
            r#"
[safety]
approvers = ["{SECOPS_EMAIL}"]
max_per_hour = {{ "openai.revoke_key" = {BUDGET} }}
"#
        ),
    )
    .await;
    let keys: Vec<String> = (0..FLOOD)
        .map(|index| format!("key_flood{index:03}"))
        .collect();
    for key in &keys {
        world
            .openai
            .seed_key(PROJECT, "user_alice", KeySeed::new(key));
    }
    let findings: Vec<Value> = keys
        .iter()
        .map(|key| {
            let mut finding = leaked_finding();
            finding["id"] = json!(format!("leak-{key}"));
            finding["key"] = json!(format!("openai:project_key:{key}"));
            finding["resource"]["id"] = json!(key);
            finding
        })
        .collect();
    futures::future::join_all(findings.iter().map(|finding| world.publish(finding))).await;

    let revoked = || {
        world
            .openai
            .calls()
            .into_iter()
            .filter(|call| call.method == "DELETE")
            .count()
    };
    let held = || {
        world
            .events(RunEventKind::Waiting)
            .iter()
            .filter(|event| event.step.as_deref() == Some("revoke"))
            .count()
    };
    world
        .until("the budget is spent and every other run waits", || {
            revoked() == BUDGET && held() == FLOOD - BUDGET
        })
        .await;
    let asked = world.asked(SECOPS).await;
    let question = world.message(&asked.channel, &asked.ts);
    assert!(
        question
            .text
            .as_deref()
            .is_some_and(|text| text.contains("Safety budget reached: 10 of 10")),
        "{question:?}"
    );
    assert_eq!(
        world.gate_messages().len(),
        1,
        "one safety gate, asked once"
    );
    assert_eq!(revoked(), BUDGET, "nothing more before the answer");

    world.click(SECOPS, &asked, "release").await;
    world
        .until("every held run went on", || revoked() == FLOOD)
        .await;
    world
        .until("every run completed", || {
            world.events(RunEventKind::RunCompleted).len() >= FLOOD
        })
        .await;
    for key in &keys {
        assert!(!world.openai.key_exists(PROJECT, key), "{key}");
    }
    let mut deleted: Vec<String> = world
        .openai
        .calls()
        .into_iter()
        .filter(|call| call.method == "DELETE")
        .map(|call| call.path)
        .collect();
    deleted.sort();
    deleted.dedup();
    assert_eq!(deleted.len(), FLOOD, "each key revoked once");
    assert_eq!(revoked(), FLOOD, "and no key twice");
}
