//! The Slack connector against the Slack fake, through the engine: approvals reach each approver
//! as a DM with one button per choice, the click of an emailed approver is recognised by their
//! Slack id, the messages are updated once the gate closes, failures are retried or audited,
//! text from findings is escaped, and the bot token appears nowhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quench_runner::config::Secret;
use quench_runner::connectors::slack::Slack;
use quench_runner::engine::{DecisionOutcome, Defer};
use quench_runner::store::{Store, StoreConfig};
use serde_json::{Value, json};

use crate::support::slack_fake::{SlackFake, SlackFault};
use crate::support::{Harness, start_time, started};

const APPROVAL: &str = r#"schema: quench.playbook/v1
name: slack-approval
on:
  finding:
    kinds: [test.slack]
steps:
  - id: decide
    uses: approval
    with:
      approvers: ["{{ finding.owner.email }}", "group:secops"]
      question: "Revoke *{{ finding.title }}*?"
      choices: [revoke, keep]
      timeout: 4h
      on_timeout: revoke
      remind_every: 1h
  - id: done
    uses: note
    with:
      message: "{{ steps.decide.output.choice }}"
"#;

const MESSAGE: &str = r##"schema: quench.playbook/v1
name: slack-message
on:
  finding:
    kinds: [test.message]
steps:
  - id: tell
    uses: slack.message
    with:
      to: "#security"
      text: "<@U0SECOPS1> {{ finding.title }}"
"##;

async fn harness(fake: &SlackFake, playbooks: &[&str]) -> Harness {
    harness_on(Store::temporary().expect("store"), fake, playbooks).await
}

async fn harness_on(store: Store, fake: &SlackFake, playbooks: &[&str]) -> Harness {
    let groups = BTreeMap::from([(
        "secops".to_owned(),
        vec!["lead@example.com".to_owned(), "U0SECOPS1".to_owned()],
    )]);
    let slack = Slack::new(&fake.api_url(), &Secret::new(fake.bot_token()), groups)
        .expect("the Slack client builds");
    fake.add_user("owner@example.com", "U0OWNER");
    fake.add_user("lead@example.com", "U0LEAD");
    fake.add_user("secops1@example.com", "U0SECOPS1");
    fake.add_channel("security");
    Harness::with_slack(
        store,
        playbooks,
        start_time(),
        BTreeMap::new(),
        Some(Arc::new(slack)),
    )
    .await
}

fn finding(id: &str, kind: &str, title: &str, owner: &str) -> quench_proto::Finding {
    let value = json!({
        "schema": "quench.finding/v1", "id": id, "kind": kind, "severity": "high",
        "title": title, "detected_at": "2026-01-05T08:00:00Z",
        "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": "key_1", "project_id": "proj_1"},
        "owner": {"email": owner}
    });
    quench_proto::Finding::parse(value.to_string().as_bytes(), 65536).expect("valid finding")
}

/// The buttons of a posted message: (label, value as JSON).
fn buttons(blocks: &Value) -> Vec<(String, Value)> {
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|block| block["type"] == "actions")
        .flat_map(|block| block["elements"].as_array().cloned().unwrap_or_default())
        .map(|button| {
            let value: Value = serde_json::from_str(button["value"].as_str().expect("a value"))
                .expect("the value is JSON");
            (
                button["text"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                value,
            )
        })
        .collect()
}

fn slack_decision(run: &str, gate: &Value, choice: &str, user: &str) -> quench_proto::Decision {
    quench_proto::Decision {
        schema: quench_proto::DecisionSchema::V1,
        id: format!("slack-{user}-{choice}"),
        run_id: run.to_owned(),
        gate: gate["gate"].as_str().expect("gate").to_owned(),
        token: gate["token"].as_str().expect("token").to_owned(),
        choice: choice.to_owned(),
        item: None,
        comment: None,
        actor: quench_proto::Actor {
            via: quench_proto::Via::Slack,
            id: format!("T0TEAM/{user}"),
            name: None,
        },
        decided_at: start_time(),
    }
}

#[tokio::test]
async fn approvals_reach_every_approver_and_are_updated_with_the_outcome() {
    let fake = SlackFake::start().await;
    let harness = harness(&fake, &[APPROVAL]).await;
    let run = started(
        &harness
            .ingest(&[finding(
                "f1",
                "test.slack",
                "<!channel> & <https://evil.example|login>",
                "owner@example.com",
            )])
            .await[0],
    );
    // The notice is a timer due at once.
    harness.advance(Duration::ZERO).await;

    let posts = fake.calls_to("chat.postMessage");
    let channels: Vec<String> = posts
        .iter()
        .map(|call| {
            call.param("channel")
                .and_then(|c| c.as_str().map(str::to_owned))
                .expect("channel")
        })
        .collect();
    assert_eq!(
        channels.len(),
        3,
        "owner, and both secops members: {channels:?}"
    );
    let owner_dm = fake.dm_channel("U0OWNER").expect("a DM with the owner");
    let message = fake
        .messages_in(&owner_dm)
        .pop()
        .expect("the owner was asked");
    let text = message.text.clone().expect("a fallback text");
    assert!(
        text.contains("Revoke *&lt;!channel&gt; &amp; &lt;https://evil.example|login&gt;*?"),
        "finding text is escaped: {text}"
    );
    let blocks = message.blocks.clone().expect("blocks");
    let labels: Vec<String> = buttons(&blocks)
        .into_iter()
        .map(|(label, _)| label)
        .collect();
    assert_eq!(labels, ["revoke", "keep"]);
    let gate = harness.gate(&run, "decide");
    let (_, value) = buttons(&blocks).remove(1);
    assert_eq!(
        value,
        json!({"run_id": run, "gate": "decide", "token": gate.token, "choice": "keep"})
    );
    assert_eq!(gate.messages.len(), 3);
    assert_eq!(
        gate.aliases.get("u0owner").map(String::as_str),
        Some("owner@example.com"),
        "the owner's Slack id is known as theirs"
    );

    // The owner clicks "keep" in Slack: their Slack id is recognised through the alias.
    let decision = slack_decision(&run, &value, "keep", "U0OWNER");
    let outcome = harness
        .engine
        .decide(&decision, Defer::Never)
        .await
        .expect("decide");
    assert_eq!(
        outcome,
        DecisionOutcome::Decided {
            choice: "keep".to_owned()
        }
    );
    harness.engine.idle().await.expect("drive");
    harness.advance(Duration::ZERO).await;

    assert_eq!(
        fake.calls_to("chat.update").len(),
        3,
        "every message updated"
    );
    for channel in channels {
        let channel = if channel.starts_with('U') {
            fake.dm_channel(&channel).expect("a DM")
        } else {
            channel
        };
        let message = fake.messages_in(&channel).pop().expect("a message");
        let blocks = message.blocks.clone().unwrap_or(Value::Null);
        assert!(buttons(&blocks).is_empty(), "no buttons left in {channel}");
        let text = message.text.expect("text");
        assert!(
            text.contains("Decided: *keep* by <@U0OWNER> (via slack) at 2026-01-05 09:00 UTC."),
            "{text}"
        );
    }
    assert_eq!(
        harness.audit("gate_notified").len(),
        2,
        "asked, then updated"
    );
}

#[tokio::test]
async fn someone_slack_cannot_find_is_audited_and_the_others_are_still_asked() {
    let fake = SlackFake::start().await;
    let harness = harness(&fake, &[APPROVAL]).await;
    let run = started(
        &harness
            .ingest(&[finding("f1", "test.slack", "key", "ghost@example.com")])
            .await[0],
    );
    harness.advance(Duration::ZERO).await;
    let failed = harness.audit("gate_notify_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].detail["to"], "ghost@example.com");
    assert_eq!(failed[0].detail["retrying"], false);
    assert_eq!(
        failed[0].detail["error"],
        "no Slack user has the email ghost@example.com (users_not_found)"
    );
    assert_eq!(harness.gate(&run, "decide").messages.len(), 2);
}

#[tokio::test]
async fn a_rate_limited_notice_is_retried_after_retry_after_and_reminders_follow() {
    let fake = SlackFake::start().await;
    let harness = harness(&fake, &[APPROVAL]).await;
    fake.fail_next(
        "chat.postMessage",
        SlackFault::RateLimited {
            retry_after_secs: 30,
        },
    );
    let run = started(
        &harness
            .ingest(&[finding("f1", "test.slack", "key", "owner@example.com")])
            .await[0],
    );
    harness.advance(Duration::ZERO).await;
    assert_eq!(
        harness.gate(&run, "decide").messages.len(),
        2,
        "one rate-limited"
    );
    let failed = harness.audit("gate_notify_failed");
    assert_eq!(failed[0].detail["retrying"], true);

    harness.advance(Duration::from_secs(29)).await;
    assert_eq!(
        harness.gate(&run, "decide").messages.len(),
        2,
        "not before Retry-After"
    );
    harness.advance(Duration::from_secs(2)).await;
    assert_eq!(
        harness.gate(&run, "decide").messages.len(),
        3,
        "retried after it"
    );

    // An hour in, everyone who has not answered is reminded.
    harness.advance(Duration::from_secs(3600)).await;
    harness.advance(Duration::ZERO).await;
    let owner_dm = fake.dm_channel("U0OWNER").expect("DM");
    let last = fake.messages_in(&owner_dm).pop().expect("a message");
    assert!(
        last.text
            .expect("text")
            .starts_with("Reminder: an answer is still needed."),
        "a reminder with buttons again"
    );
    assert_eq!(buttons(&last.blocks.expect("blocks")).len(), 2);
}

/// The shipped leaked-key playbook names secops twice when the finding has no owner (the owner
/// template falls back to `group:secops`), and its escalation asks secops again; a secops member
/// may also be the owner. Each person still gets one message per notice, and those who have
/// answered (by Slack id, asked by email or through a group) are not reminded.
const OVERLAP: &str = r#"schema: quench.playbook/v1
name: slack-overlap
on:
  finding:
    kinds: [test.overlap]
steps:
  - id: decide
    uses: approval
    with:
      approvers: ["{{ finding.owner.email }}", "group:secops", "group:secops"]
      question: Revoke?
      choices: [revoke, keep]
      quorum: 2
      timeout: 4h
      on_timeout: revoke
      remind_every: 1h
      escalate:
        - after: 2h
          to: [group:secops]
  - id: done
    uses: note
    with:
      message: "{{ steps.decide.output.choice }}"
"#;

#[tokio::test]
async fn each_person_is_asked_once_per_notice_and_who_answered_is_not_reminded() {
    let fake = SlackFake::start().await;
    let harness = harness(&fake, &[OVERLAP]).await;
    // lead is the owner (asked by email) and in secops (asked through the group, twice).
    let run = started(
        &harness
            .ingest(&[finding("f1", "test.overlap", "key", "lead@example.com")])
            .await[0],
    );
    harness.advance(Duration::ZERO).await;
    let lead_dm = fake.dm_channel("U0LEAD").expect("lead was asked");
    let other_dm = fake
        .dm_channel("U0SECOPS1")
        .expect("the other member was asked");
    let count = |channel: &str, prefix: &str| {
        fake.messages_in(channel)
            .iter()
            .filter(|message| {
                message
                    .text
                    .as_deref()
                    .is_some_and(|text| text.starts_with(prefix))
            })
            .count()
    };
    assert_eq!(fake.messages_in(&lead_dm).len(), 1, "lead is asked once");
    assert_eq!(fake.messages_in(&other_dm).len(), 1);
    assert_eq!(harness.gate(&run, "decide").messages.len(), 2);

    // lead answers in Slack: one of the two answers needed.
    let asked = fake.messages_in(&lead_dm).remove(0);
    let (_, value) = buttons(&asked.blocks.expect("blocks")).remove(0);
    let outcome = harness
        .engine
        .decide(
            &slack_decision(&run, &value, "revoke", "U0LEAD"),
            Defer::Never,
        )
        .await
        .expect("decide");
    assert!(
        matches!(outcome, DecisionOutcome::Recorded { .. }),
        "{outcome:?}"
    );

    // Reminders at 1h, 2h (with the escalation) and 3h: one each for the member who has not
    // answered, none for lead.
    for _ in 0..3 {
        harness.advance(Duration::from_secs(3600)).await;
        harness.advance(Duration::ZERO).await;
    }
    assert_eq!(
        count(&other_dm, "Reminder:"),
        3,
        "{:#?}",
        fake.messages_in(&other_dm)
    );
    assert_eq!(
        count(&lead_dm, "Reminder:"),
        0,
        "{:#?}",
        fake.messages_in(&lead_dm)
    );
    assert_eq!(count(&other_dm, "This was escalated to you."), 1);
    assert_eq!(
        harness.audit("gate_reminder")[0].detail["to"],
        json!(["U0SECOPS1"]),
        "lead answered, by Slack id, and was asked by email and through the group"
    );
}

#[tokio::test]
async fn slack_message_posts_escaped_text_and_the_token_appears_nowhere() {
    let fake = SlackFake::start().await;
    let directory = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&StoreConfig::new(directory.path())).expect("store");
    let harness = harness_on(store, &fake, &[MESSAGE]).await;
    let run = started(
        &harness
            .ingest(&[finding(
                "f1",
                "test.message",
                "<!here> leaked",
                "owner@example.com",
            )])
            .await[0],
    );
    let message = fake.messages_in("security").pop().expect("posted");
    assert_eq!(
        message.text.as_deref(),
        Some("<@U0SECOPS1> &lt;!here&gt; leaked"),
        "the playbook's own mention stays; the finding's is defused"
    );
    let state = harness.run(&run);
    let output = &state.steps["tell"].output;
    assert_eq!(output["channel"], "security");
    assert!(output["ts"].as_str().is_some_and(|ts| !ts.is_empty()));

    let token = fake.bot_token();
    drop(harness);
    let stored = crate::support::stored_values(directory.path());
    assert!(!stored.is_empty(), "the store was read");
    assert!(
        stored.iter().all(|value| !value.contains(&token)),
        "the bot token is not in the store"
    );
    let slack = Slack::new(
        &fake.api_url(),
        &Secret::new(token.clone()),
        BTreeMap::new(),
    )
    .expect("builds");
    assert!(!format!("{slack:?}").contains(&token));
}

#[test]
fn the_api_url_must_be_https_unless_it_is_a_loopback_fake() {
    let token = Secret::new("xoxb-test".to_owned());
    let error = Slack::new("http://slack.example.com/api", &token, BTreeMap::new())
        .expect_err("plain http to a remote host is refused");
    assert_eq!(
        error,
        "slack.api_url `http://slack.example.com/api` must use https (plain http only for a loopback fake)"
    );
    assert!(Slack::new("https://slack.com/api", &token, BTreeMap::new()).is_ok());
    assert!(Slack::new("http://127.0.0.1:9/api", &token, BTreeMap::new()).is_ok());
}

/// A click can arrive before the runner has recorded the DM it came from (a restart between the
/// post and its commit): the owner's Slack id is not known yet, so the answer is deferred —
/// nothing recorded — and counts once the messages are delivered.
#[tokio::test]
async fn a_slack_answer_before_the_messages_are_recorded_is_deferred_not_refused() {
    let fake = SlackFake::start().await;
    let harness = harness(&fake, &[APPROVAL]).await;
    let run = started(
        &harness
            .ingest(&[finding("f1", "test.slack", "key", "owner@example.com")])
            .await[0],
    );
    let gate = harness.gate(&run, "decide");
    assert!(gate.messages.is_empty(), "not delivered yet");
    let button = json!({"run_id": run, "gate": "decide", "token": gate.token});
    let click = slack_decision(&run, &button, "keep", "U0OWNER");
    let outcome = harness
        .engine
        .decide(&click, Defer::WhileUndelivered)
        .await
        .expect("decide");
    assert_eq!(outcome, DecisionOutcome::Deferred);
    assert!(harness.audit("decision").is_empty(), "nothing recorded");

    harness.advance(Duration::ZERO).await;
    let outcome = harness
        .engine
        .decide(&click, Defer::WhileUndelivered)
        .await
        .expect("decide");
    assert_eq!(
        outcome,
        DecisionOutcome::Decided {
            choice: "keep".to_owned()
        }
    );
    harness.engine.idle().await.expect("drive");
}

/// A choice in `comment_for` carries its question in its button's value (the gateway asks it
/// in a form); the other choices' values are as they have always been.
#[tokio::test]
async fn a_choice_that_needs_a_comment_carries_its_question() {
    let fake = SlackFake::start().await;
    let playbook = APPROVAL.replace(
        "      choices: [revoke, keep]\n",
        "      choices: [revoke, keep]\n      comment_for:\n        keep: \"What is {{ finding.resource.id }} for?\"\n",
    );
    let harness = harness(&fake, &[&playbook]).await;
    started(
        &harness
            .ingest(&[finding("f1", "test.slack", "a key", "owner@example.com")])
            .await[0],
    );
    harness.advance(Duration::ZERO).await;
    let owner_dm = fake.dm_channel("U0OWNER").expect("a DM with the owner");
    let message = fake
        .messages_in(&owner_dm)
        .pop()
        .expect("the owner was asked");
    let values: BTreeMap<String, Value> = buttons(&message.blocks.expect("blocks"))
        .into_iter()
        .collect();
    assert_eq!(values["keep"]["ask"], "What is key_1 for?");
    assert_eq!(values["revoke"].get("ask"), None);
    let keep = quench_proto::slack::ApprovalButton::from_metadata(&values["keep"].to_string())
        .expect("the gateway reads it back as a button that asks");
    assert_eq!(keep.choice, "keep");
}
