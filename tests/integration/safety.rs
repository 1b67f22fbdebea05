//! The `[safety]` rails on the engine: a budget of mutating calls per rolling hour (exact under
//! concurrency, kept across restarts; runs over budget wait on one shared gate that one answer
//! releases or holds), protected resources (a safety approver must answer), and change freezes
//! (mutating steps wait until the window ends unless `urgent`). Every rail decision is audited.

use std::collections::BTreeMap;
use std::time::Duration;

use quench_common::config::{FreezeWindow, SafetySection};
use quench_runner::engine::{
    DecisionOutcome, EngineConfig, RunStatus, SAFETY_PLAYBOOK, SafetyConfig, StepStatus,
};
use quench_runner::store::{Store, StoreConfig};

use crate::support::{Harness, finding, start_time, started};

/// Revokes a leaked key at once, no question asked: every call meets the rails first.
pub(crate) const REVOKE: &str = r#"schema: quench.playbook/v1
name: revoke
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: revoke
    uses: openai.revoke_key
    with:
      project_id: "{{ finding.resource.project_id }}"
      key_id: "{{ finding.resource.id }}"
"#;

/// Asks the owner first (`lead@example.com` answers as a safety approver in some tests), then
/// revokes; no answer in an hour means revoke.
const ASK_THEN_REVOKE: &str = r#"schema: quench.playbook/v1
name: ask-then-revoke
on:
  finding:
    kinds: [openai.api_key.unused]
steps:
  - id: ask
    uses: approval
    with:
      approvers: [owner@example.com, lead@example.com]
      question: Revoke it?
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: revoke
  - id: revoke
    if: steps.ask.choice == "revoke"
    uses: openai.revoke_key
    with:
      project_id: "{{ finding.resource.project_id }}"
      key_id: "{{ finding.resource.id }}"
"#;

const URGENT: &str = r#"schema: quench.playbook/v1
name: urgent-revoke
on:
  finding:
    kinds: [openai.api_key.exposed]
steps:
  - id: revoke
    uses: openai.revoke_key
    urgent: true
    with:
      project_id: "{{ finding.resource.project_id }}"
      key_id: "{{ finding.resource.id }}"
"#;

fn section() -> SafetySection {
    SafetySection {
        approvers: vec!["lead@example.com".to_owned()],
        ..SafetySection::default()
    }
}

fn budget(max: u32) -> SafetySection {
    let mut section = section();
    section
        .max_per_hour
        .insert("openai.revoke_key".to_owned(), max);
    section
}

async fn harness(store: Store, playbooks: &[&str], safety: SafetySection) -> Harness {
    let safety = SafetyConfig::from_section(&safety).expect("safety config");
    Harness::build(
        store,
        playbooks,
        start_time(),
        BTreeMap::new(),
        |_| {},
        None,
        move |config: &mut EngineConfig| config.safety = safety,
    )
    .await
}

fn revokes(harness: &Harness) -> Vec<String> {
    harness
        .script
        .calls()
        .into_iter()
        .filter(|call| call.action == "openai.revoke_key")
        .map(|call| call.input["key_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn leaked(count: usize) -> Vec<quench_proto::Finding> {
    (0..count)
        .map(|index| {
            finding(
                &format!("f-{index}"),
                "openai.api_key.leaked",
                &format!("key_{index}"),
            )
        })
        .collect()
}

/// The open budget gate's run.
fn hold(harness: &Harness) -> String {
    let status = harness.engine.safety_status().expect("status");
    status.hold.expect("a budget gate is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_lets_exactly_its_calls_through_and_one_answer_releases_the_rest() {
    let harness = harness(Store::temporary().expect("store"), &[REVOKE], budget(10)).await;
    let outcomes = harness.ingest(&leaked(200)).await;
    let runs: Vec<String> = outcomes.iter().map(started).collect();
    assert_eq!(revokes(&harness).len(), 10, "exactly the budget ran");

    let status = harness.engine.safety_status().expect("status");
    assert_eq!(status.waiting, 190);
    assert_eq!(status.actions["openai.revoke_key"].used, 10);
    assert_eq!(status.actions["openai.revoke_key"].max, Some(10));
    let gate_run = hold(&harness);
    let gate = harness.run(&gate_run);
    assert_eq!(gate.playbook, SAFETY_PLAYBOOK);
    assert_eq!(gate.status, RunStatus::Waiting, "one gate, asked once");
    let question = harness.gate(&gate_run, "decide").question;
    assert!(
        question.contains("10 of 10") && question.contains("openai.revoke_key"),
        "{question}"
    );
    assert_eq!(harness.audit("safety_budget_exceeded").len(), 190);
    let waiting = runs
        .iter()
        .filter(|run| harness.run(run).status == RunStatus::Waiting)
        .count();
    assert_eq!(waiting, 190);

    // Someone who is not a safety approver cannot release them.
    let refused = harness
        .answer(&gate_run, "decide", "release", "owner@example.com")
        .await;
    assert!(
        matches!(refused, DecisionOutcome::Refused(_)),
        "{refused:?}"
    );
    assert_eq!(revokes(&harness).len(), 10);

    let released = harness
        .answer(&gate_run, "decide", "release", "lead@example.com")
        .await;
    assert!(
        matches!(released, DecisionOutcome::Decided { .. }),
        "{released:?}"
    );
    let mut keys = revokes(&harness);
    assert_eq!(keys.len(), 200, "every held run went on, once");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 200, "no key revoked twice");
    for run in &runs {
        assert_eq!(harness.run(run).status, RunStatus::Completed, "{run}");
    }
    assert_eq!(harness.audit("safety_released").len(), 190);
    let status = harness.engine.safety_status().expect("status");
    assert_eq!((status.waiting, status.hold), (0, None));

    // The budget is still spent: the next call waits on a new gate.
    harness
        .ingest(&[finding("f-late", "openai.api_key.leaked", "key_late")])
        .await;
    assert_eq!(revokes(&harness).len(), 200);
    assert_ne!(hold(&harness), gate_run, "a new gate");
}

#[tokio::test]
async fn holding_fails_every_waiting_step_and_no_answer_holds() {
    let harness = harness(Store::temporary().expect("store"), &[REVOKE], budget(2)).await;
    let runs: Vec<String> = harness
        .ingest(&leaked(5))
        .await
        .iter()
        .map(started)
        .collect();
    assert_eq!(revokes(&harness).len(), 2);
    let gate_run = hold(&harness);
    harness
        .answer(&gate_run, "decide", "hold", "lead@example.com")
        .await;
    assert_eq!(revokes(&harness).len(), 2, "nothing more ran");
    let failed: Vec<&String> = runs
        .iter()
        .filter(|run| harness.run(run).status == RunStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 3);
    let step = &harness.run(failed[0]).steps["revoke"];
    assert_eq!(step.status, StepStatus::Failed);
    assert!(
        step.error
            .as_deref()
            .is_some_and(|error| error.contains("held by the safety approvers")),
        "{step:?}"
    );
    assert_eq!(harness.audit("safety_held").len(), 3);

    // A second wave waits on a new gate, which nobody answers: its timeout holds.
    let more: Vec<_> = (5..7)
        .map(|index| {
            finding(
                &format!("f-{index}"),
                "openai.api_key.leaked",
                &format!("key_{index}"),
            )
        })
        .collect();
    let second: Vec<String> = harness.ingest(&more).await.iter().map(started).collect();
    assert_ne!(hold(&harness), gate_run);
    harness.advance(Duration::from_secs(4 * 3600 + 1)).await;
    for run in &second {
        assert_eq!(harness.run(run).status, RunStatus::Failed, "{run}");
    }
    assert_eq!(revokes(&harness).len(), 2);
}

#[tokio::test]
async fn the_budget_rolls_with_the_hour_and_survives_a_restart() {
    let directory = tempfile::tempdir().expect("tempdir");
    let open = || Store::open(&StoreConfig::new(directory.path())).expect("store");
    let waiting_run;
    {
        let harness = harness(open(), &[REVOKE], budget(3)).await;
        harness.ingest(&leaked(4)).await;
        assert_eq!(revokes(&harness).len(), 3);
        waiting_run = harness
            .engine
            .store()
            .safety_waiters::<serde_json::Value>(None)
            .expect("waiters")[0]
            .1
            .clone();
    }
    // A new process: the ledger is read back, so the budget is still spent.
    let harness = harness(open(), &[REVOKE], budget(3)).await;
    harness.engine.recover().expect("recover");
    harness.engine.idle().await.expect("idle");
    harness
        .ingest(&[finding("f-new", "openai.api_key.leaked", "key_new")])
        .await;
    assert_eq!(
        revokes(&harness),
        Vec::<String>::new(),
        "over budget after restart"
    );
    let status = harness.engine.safety_status().expect("status");
    assert_eq!((status.used, status.waiting), (3, 2));

    // An hour after the first calls the budget has room again: new calls go straight through
    // while the runs already waiting keep waiting for their answer.
    harness.advance(Duration::from_secs(3601)).await;
    harness
        .ingest(&[finding("f-later", "openai.api_key.leaked", "key_later")])
        .await;
    assert_eq!(revokes(&harness), vec!["key_later".to_owned()]);
    assert_eq!(harness.run(&waiting_run).status, RunStatus::Waiting);
    let gate_run = hold(&harness);
    harness
        .answer(&gate_run, "decide", "release", "lead@example.com")
        .await;
    assert_eq!(revokes(&harness).len(), 3);
    assert_eq!(harness.run(&waiting_run).status, RunStatus::Completed);
}

#[tokio::test]
async fn a_protected_resource_is_changed_only_after_a_safety_approver_answers() {
    let mut safety = section();
    safety.protect = vec!["key:key_prod*".to_owned()];
    let harness = harness(
        Store::temporary().expect("store"),
        &[REVOKE, ASK_THEN_REVOKE],
        safety,
    )
    .await;
    let outcomes = harness
        .ingest(&[
            finding("f-dev", "openai.api_key.leaked", "key_dev"),
            finding("f-prod", "openai.api_key.leaked", "key_prod_1"),
        ])
        .await;
    assert_eq!(revokes(&harness), vec!["key_dev".to_owned()]);
    let prod = started(&outcomes[1]);
    let wait = harness
        .run(&prod)
        .safety_wait
        .expect("waits on a safety gate");
    assert_eq!(wait.rail, "protect");
    assert!(
        harness
            .gate(&wait.hold, "decide")
            .question
            .contains("key:key_prod*")
    );
    harness
        .answer(&wait.hold, "decide", "release", "lead@example.com")
        .await;
    assert_eq!(revokes(&harness).len(), 2);
    assert_eq!(harness.run(&prod).status, RunStatus::Completed);

    // The playbook's own gate answered by a safety approver is the human answer.
    let answered = started(
        &harness
            .ingest(&[finding("f-a", "openai.api_key.unused", "key_prod_2")])
            .await[0],
    );
    harness
        .answer(&answered, "ask", "revoke", "lead@example.com")
        .await;
    assert_eq!(revokes(&harness).len(), 3);
    assert_eq!(harness.run(&answered).status, RunStatus::Completed);

    // Its timeout is not: `on_timeout: revoke` cannot touch a protected key.
    let timed_out = started(
        &harness
            .ingest(&[finding("f-b", "openai.api_key.unused", "key_prod_3")])
            .await[0],
    );
    harness.advance(Duration::from_secs(3601)).await;
    assert_eq!(revokes(&harness).len(), 3);
    let wait = harness.run(&timed_out).safety_wait.expect("waits");
    // And the safety gate's own timeout holds.
    harness.advance(Duration::from_secs(4 * 3600 + 1)).await;
    assert_eq!(revokes(&harness).len(), 3);
    assert_eq!(harness.run(&timed_out).status, RunStatus::Failed);
    assert_eq!(harness.run(&wait.hold).status, RunStatus::Completed);
    assert_eq!(harness.audit("safety_protected").len(), 2);
}

#[tokio::test]
async fn a_freeze_holds_mutating_steps_until_it_ends_unless_urgent() {
    // Test time starts Monday 09:00 UTC: inside a two-hour Monday-morning freeze.
    let safety = SafetySection {
        freeze: vec![FreezeWindow {
            name: Some("monday-release".to_owned()),
            cron: "0 9 * * MON".to_owned(),
            duration: "2h".to_owned(),
            timezone: None,
        }],
        ..SafetySection::default()
    };
    let harness = harness(
        Store::temporary().expect("store"),
        &[REVOKE, URGENT],
        safety,
    )
    .await;
    let status = harness.engine.safety_status().expect("status");
    assert_eq!(
        status.freeze.as_ref().map(|freeze| freeze.name.as_str()),
        Some("monday-release")
    );
    let outcomes = harness
        .ingest(&[
            finding("f-1", "openai.api_key.leaked", "key_1"),
            finding("f-2", "openai.api_key.exposed", "key_2"),
        ])
        .await;
    assert_eq!(revokes(&harness), vec!["key_2".to_owned()], "urgent runs");
    let frozen = started(&outcomes[0]);
    assert_eq!(harness.run(&frozen).status, RunStatus::Waiting);
    assert_eq!(harness.audit("safety_frozen").len(), 1);
    harness.advance(Duration::from_secs(3600)).await;
    assert_eq!(revokes(&harness).len(), 1, "still frozen");
    harness.advance(Duration::from_secs(3600)).await;
    assert_eq!(revokes(&harness).len(), 2, "the freeze ended");
    assert_eq!(harness.run(&frozen).status, RunStatus::Completed);
}

#[test]
fn the_rails_refuse_a_bad_config_by_its_key() {
    let mut bad = section();
    bad.freeze = vec![FreezeWindow {
        name: None,
        cron: "every friday".to_owned(),
        duration: "2h".to_owned(),
        timezone: None,
    }];
    let error = SafetyConfig::from_section(&bad).expect_err("bad cron");
    assert_eq!(error.key, "safety.freeze[0].cron");
    let mut bad = section();
    bad.protect = vec!["key:[".to_owned()];
    let error = SafetyConfig::from_section(&bad).expect_err("bad glob");
    assert_eq!(error.key, "safety.protect[0]");
}
