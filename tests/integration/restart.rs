//! Restarting a failed run from its failed step: the step runs again with the same idempotency
//! key, what came after it runs once, the `on_failure` steps do not run again on success, the
//! restart is audited with who and why, and a restart that would break a rule is refused (a run
//! not failed, a key with another open run, a step that fails on purpose).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quench_proto::{Actor, Via};
use quench_runner::engine::{
    Action, ActionError, ActionFuture, Call, Restart, RunStatus, StepStatus, Success,
};
use serde_json::json;

use crate::support::{Harness, finding, start_time, started};

const PLAYBOOK: &str = r##"schema: quench.playbook/v1
name: restart
on:
  finding:
    kinds: [test.restart]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 4h
      on_timeout: keep
  - id: revoke
    uses: openai.revoke_key
    with:
      project_id: proj_1
      key_id: "{{ finding.resource.id }}"
  - id: tell
    uses: slack.message
    with:
      to: alice@example.com
      text: revoked
on_failure:
  - id: alert
    uses: slack.message
    with:
      to: "#secops"
      text: "failed at {{ failure.step }}"
"##;

const ON_PURPOSE: &str = r#"schema: quench.playbook/v1
name: on-purpose
on:
  finding:
    kinds: [test.on_purpose]
steps:
  - id: stop
    uses: fail
    with:
      message: not today
"#;

/// `openai.revoke_key` that fails for good while `failing`, and notes every idempotency key.
#[derive(Debug)]
struct Upstream {
    failing: AtomicBool,
    keys: std::sync::Mutex<Vec<String>>,
}

impl Action for Upstream {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            self.keys
                .lock()
                .expect("lock")
                .push(call.idempotency_key.clone());
            if self.failing.load(Ordering::SeqCst) {
                return Err(ActionError::permanent("upstream answered 500"));
            }
            Ok(Success::new(json!({"deleted": true})))
        })
    }
}

fn operator() -> Actor {
    Actor {
        via: Via::Api,
        id: "ops-bot".into(),
        name: None,
    }
}

async fn harness(upstream: Arc<Upstream>) -> Harness {
    let store = quench_runner::store::Store::temporary().expect("temporary store");
    Harness::build(
        store,
        &[PLAYBOOK, ON_PURPOSE],
        start_time(),
        Default::default(),
        move |actions| {
            actions.insert("openai.revoke_key", upstream);
        },
        None,
        |_| {},
    )
    .await
}

/// Starts a run for `key_id`, approves it, and drives it until it parks or ends.
async fn approved(harness: &Harness, id: &str, key_id: &str) -> String {
    let run = started(&harness.ingest(&[finding(id, "test.restart", key_id)]).await[0]);
    harness
        .answer(&run, "decide", "revoke", "alice@example.com")
        .await;
    harness.engine.idle().await.expect("drive");
    run
}

fn slack_texts(harness: &Harness) -> Vec<String> {
    harness
        .script
        .calls()
        .into_iter()
        .filter(|call| call.action == "slack.message")
        .map(|call| call.input["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_failed_run_restarts_from_its_failed_step_with_the_same_key() {
    let upstream = Arc::new(Upstream {
        failing: AtomicBool::new(true),
        keys: Default::default(),
    });
    let harness = harness(upstream.clone()).await;
    let run = approved(&harness, "r-1", "key_r1").await;
    let failed = harness.run(&run);
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.steps["revoke"].status, StepStatus::Failed);
    assert_eq!(slack_texts(&harness), vec!["failed at revoke"]);

    upstream.failing.store(false, Ordering::SeqCst);
    let restarted = harness
        .engine
        .restart(&run, "upstream is back", &operator())
        .await
        .expect("restart");
    assert_eq!(
        restarted,
        Restart::Restarted {
            step: "revoke".into(),
            iteration: 0
        }
    );
    harness.engine.idle().await.expect("drive");
    let ended = harness.run(&run);
    assert_eq!(ended.status, RunStatus::Completed, "{ended:?}");
    assert_eq!(ended.failure, None);
    assert_eq!(ended.steps["revoke"].status, StepStatus::Succeeded);
    assert_eq!(ended.steps["revoke"].restarts, 1);
    assert_eq!(
        ended.steps["decide"].choice.as_deref(),
        Some("revoke"),
        "the steps before the failed one keep what they did"
    );
    let key = format!("{run}/revoke/0");
    assert_eq!(
        *upstream.keys.lock().expect("lock"),
        vec![key.clone(), key],
        "called again once, with the same idempotency key"
    );
    assert_eq!(
        slack_texts(&harness),
        vec!["failed at revoke", "revoked"],
        "the step after runs once; on_failure does not run again on success"
    );

    let audit = harness
        .engine
        .store()
        .run_audit(&run)
        .expect("the run's audit");
    let requested = audit
        .iter()
        .find(|entry| entry.kind == "run_restart_requested")
        .expect("the restart is audited");
    assert_eq!(
        requested.actor.as_ref().map(|actor| actor["id"].clone()),
        Some(json!("ops-bot"))
    );
    assert_eq!(requested.detail["reason"], "upstream is back");
    assert_eq!(requested.detail["failed"], "upstream answered 500");
    assert!(audit.iter().any(|entry| entry.kind == "run_restarted"));
    assert_eq!(
        harness
            .engine
            .store()
            .verify_audit()
            .expect("verify")
            .first_bad,
        None
    );

    // Only a failed run restarts.
    assert_eq!(
        harness
            .engine
            .restart(&run, "again", &operator())
            .await
            .expect("restart"),
        Restart::NotFailed(RunStatus::Completed)
    );
    assert_eq!(
        harness
            .engine
            .restart("no-such-run", "again", &operator())
            .await
            .expect("restart"),
        Restart::NotFound
    );
}

#[tokio::test]
async fn a_restart_is_refused_while_another_run_holds_the_key() {
    let upstream = Arc::new(Upstream {
        failing: AtomicBool::new(true),
        keys: Default::default(),
    });
    let harness = harness(upstream.clone()).await;
    let first = approved(&harness, "k-1", "key_k").await;
    assert_eq!(harness.run(&first).status, RunStatus::Failed);
    // The key's slot is free again: a new finding for it starts a run, which waits on its gate.
    let second = started(
        &harness
            .ingest(&[finding("k-2", "test.restart", "key_k")])
            .await[0],
    );
    assert_eq!(harness.run(&second).status, RunStatus::Waiting);

    let refused = harness
        .engine
        .restart(&first, "retry", &operator())
        .await
        .expect("restart");
    let Restart::Refused(why) = refused else {
        panic!("refused, not {refused:?}");
    };
    assert!(why.contains(&second), "{why}");
    assert_eq!(harness.run(&first).status, RunStatus::Failed, "unchanged");

    // Once the other run has ended, the restart takes the slot back.
    harness
        .engine
        .cancel(&second, "a duplicate", &operator())
        .await
        .expect("cancel");
    assert_eq!(harness.run(&second).status, RunStatus::Cancelled);
    let restarted = harness
        .engine
        .restart(&first, "retry", &operator())
        .await
        .expect("restart");
    assert!(
        matches!(restarted, Restart::Restarted { .. }),
        "{restarted:?}"
    );
    harness.engine.idle().await.expect("drive");
    assert_eq!(
        harness.run(&first).status,
        RunStatus::Failed,
        "the upstream still fails: failed again"
    );
    assert_eq!(harness.run(&first).steps["revoke"].restarts, 1);
    assert_eq!(
        slack_texts(&harness),
        vec!["failed at revoke", "failed at revoke"],
        "on_failure runs again when the restarted run fails again"
    );

    let on_purpose = started(
        &harness
            .ingest(&[finding("p-1", "test.on_purpose", "key_p")])
            .await[0],
    );
    assert_eq!(harness.run(&on_purpose).status, RunStatus::Failed);
    let refused = harness
        .engine
        .restart(&on_purpose, "retry", &operator())
        .await
        .expect("restart");
    assert!(
        matches!(&refused, Restart::Refused(why) if why.contains("on purpose")),
        "{refused:?}"
    );
}

/// A restarted run leaves the index of ended runs until it ends again, so `[store]
/// retain_ended` counts from its last end; an entry left behind (its run gone or running) is
/// removed by a purge pass without touching anything else.
#[tokio::test]
async fn a_restarted_run_is_retained_from_its_last_end() {
    let _purges = crate::support::PURGES.lock().await;
    use quench_runner::store::{ByTime, Key};
    let upstream = Arc::new(Upstream {
        failing: AtomicBool::new(true),
        keys: Default::default(),
    });
    let harness = harness(upstream.clone()).await;
    let store = harness.engine.store();
    let run = approved(&harness, "p-1", "key_p").await;
    let first_end = harness.run(&run).ended_at.expect("failed, so ended");
    let ended = |store: &quench_runner::store::Store| {
        store
            .older_than(ByTime::Ended, chrono::DateTime::<chrono::Utc>::MAX_UTC, 100)
            .expect("readable")
            .into_iter()
            .map(|(at, id)| (at.timestamp_millis(), id))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ended(store),
        vec![(first_end.timestamp_millis(), run.clone())]
    );

    // Ten days on it is restarted and fails again: its end is now.
    harness
        .advance(std::time::Duration::from_secs(10 * 86400))
        .await;
    harness
        .engine
        .restart(&run, "try again", &operator())
        .await
        .expect("restart");
    harness.engine.idle().await.expect("drive");
    let second_end = harness.run(&run).ended_at.expect("failed again");
    assert!(second_end > first_end);
    assert_eq!(
        ended(store),
        vec![(second_end.timestamp_millis(), run.clone())]
    );

    // Entries left behind: one for a run that is gone, one for a run that is running.
    let waiting = started(
        &harness
            .ingest(&[finding("p-2", "test.restart", "key_q")])
            .await[0],
    );
    let mut batch = quench_runner::store::Batch::new();
    batch.put(Key::Ended(first_end, "no-such-run"), &true);
    batch.put(Key::Ended(first_end, &waiting), &true);
    store.commit(batch).await.expect("commit");

    let retain = std::time::Duration::from_secs(7 * 86400);
    let pass = harness
        .engine
        .purge_ended(retain, 100)
        .await
        .expect("purge");
    assert_eq!((pass.runs, pass.examined), (0, 2), "{pass:?}");
    assert_eq!(
        ended(store),
        vec![(second_end.timestamp_millis(), run.clone())],
        "the entries left behind are gone, the run's own is kept"
    );
    assert_eq!(harness.run(&waiting).status, RunStatus::Waiting);
    assert_eq!(harness.run(&run).status, RunStatus::Failed);

    // Eight more days: it ended more than seven days ago.
    harness
        .advance(std::time::Duration::from_secs(8 * 86400))
        .await;
    let pass = harness
        .engine
        .purge_ended(retain, 100)
        .await
        .expect("purge");
    assert_eq!(pass.runs, 1, "{pass:?}");
    assert!(harness.engine.run(&run).expect("readable").is_none());
    assert!(ended(store).iter().all(|(_, id)| *id != run));
}
