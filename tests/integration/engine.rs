//! Engine semantics through its public API: runs pinned to their playbook version, key
//! policies and `on_resolved`, de-duplication, approvals (quorum, refusals, reminders,
//! escalation, timeout), `foreach`, `continue_on_error`, run timeouts with `on_failure`, and
//! durability across a restart (timers that fell due, an intent without a result).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quench_runner::engine::{
    Action, ActionFuture, Actions, Call, DecisionOutcome, Engine, EngineConfig, FindingOutcome,
    Handling, ManualClock, Refusal, RunStatus, StepStatus, Success,
};
use quench_runner::store::{Key, Store, StoreConfig};
use serde_json::json;

use crate::support::{Harness, finding, start_time, started};

const HOUR: Duration = Duration::from_secs(3600);

fn gate_playbook(name: &str, kind: &str, extra: &str, text: &str) -> String {
    format!(
        r#"schema: quench.playbook/v1
name: {name}
on:
  finding:
    kinds: [{kind}]
{extra}
steps:
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com, bob@example.com, group:secops]
      question: Go?
      choices: [go, stop]
      timeout: 4h
      on_timeout: stop
  - id: tell
    uses: slack.message
    with:
      to: alice@example.com
      text: "{text} {{{{ steps.decide.choice }}}}"
"#
    )
}

#[tokio::test]
async fn a_run_keeps_the_playbook_version_it_started_with() {
    let v1 = gate_playbook("pinned", "test.pin.kind", "", "v1");
    let harness = Harness::new(&[&v1]).await;
    let first = started(
        &harness
            .ingest(&[finding("a", "test.pin.kind", "key_a")])
            .await[0],
    );
    assert_eq!(harness.run(&first).status, RunStatus::Waiting);

    let v2 = gate_playbook("pinned", "test.pin.kind", "", "v2");
    let compiled = quench_runner::playbook::compile(&v2)
        .playbook
        .expect("v2 compiles");
    harness
        .engine
        .load_playbooks(vec![compiled], "test")
        .await
        .expect("load v2");
    let second = started(
        &harness
            .ingest(&[finding("b", "test.pin.kind", "key_b")])
            .await[0],
    );

    harness
        .answer(&first, "decide", "go", "alice@example.com")
        .await;
    harness
        .answer(&second, "decide", "go", "alice@example.com")
        .await;
    let texts: Vec<String> = harness
        .script
        .calls()
        .iter()
        .map(|call| call.input["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        texts,
        ["v1 go", "v2 go"],
        "the first run kept v1 after v2 was loaded"
    );
    assert_ne!(harness.run(&first).version, harness.run(&second).version);
    assert_eq!(
        harness.audit("playbook_loaded").len(),
        2,
        "each version is recorded once"
    );
}

#[tokio::test]
async fn key_policies_attach_skip_queue_replace() {
    let attach = gate_playbook("attach", "test.attach", "on_conflict: attach", "t");
    let skip = gate_playbook("skip", "test.skip", "on_conflict: skip", "t");
    let queue = gate_playbook("queue", "test.queue", "on_conflict: queue", "t");
    let replace = gate_playbook("replace", "test.replace", "on_conflict: replace", "t");
    let harness = Harness::new(&[&attach, &skip, &queue, &replace]).await;
    let handling = |outcome: &FindingOutcome| match outcome {
        FindingOutcome::Matched(handled) => handled[0].1.clone(),
        other => panic!("unexpected {other:?}"),
    };

    let first = started(&harness.ingest(&[finding("a1", "test.attach", "k")]).await[0]);
    let outcome = harness.ingest(&[finding("a2", "test.attach", "k")]).await;
    assert_eq!(
        handling(&outcome[0]),
        Handling::Attached { run: first.clone() }
    );
    assert_eq!(harness.run(&first).attached, vec!["a2".to_owned()]);

    let first = started(&harness.ingest(&[finding("s1", "test.skip", "k")]).await[0]);
    let outcome = harness.ingest(&[finding("s2", "test.skip", "k")]).await;
    assert_eq!(
        handling(&outcome[0]),
        Handling::Skipped { run: first.clone() }
    );

    // Two findings for one key in one batch: the second queues behind the run the first started.
    let outcome = harness
        .ingest(&[
            finding("q1", "test.queue", "k"),
            finding("q2", "test.queue", "k"),
        ])
        .await;
    let first = started(&outcome[0]);
    assert_eq!(
        handling(&outcome[1]),
        Handling::Queued {
            behind: first.clone()
        }
    );
    harness
        .answer(&first, "decide", "go", "alice@example.com")
        .await;
    assert_eq!(harness.run(&first).status, RunStatus::Completed);
    let runs_started = harness.audit("run_started");
    let next = runs_started
        .last()
        .and_then(|entry| entry.run_id.clone())
        .expect("a queued run started");
    assert_ne!(next, first);
    assert_eq!(
        harness.run(&next).finding.as_ref().map(|f| f.id.as_str()),
        Some("q2")
    );
    assert_eq!(harness.run(&next).status, RunStatus::Waiting);

    let first = started(&harness.ingest(&[finding("r1", "test.replace", "k")]).await[0]);
    let outcome = harness.ingest(&[finding("r2", "test.replace", "k")]).await;
    let Handling::Replaced { cancelled, run } = handling(&outcome[0]) else {
        panic!("expected a replacement")
    };
    assert_eq!(cancelled, first);
    assert_eq!(harness.run(&first).status, RunStatus::Cancelled);
    assert!(
        harness.gate(&first, "decide").closed,
        "the cancelled run's gate is closed"
    );
    assert_eq!(harness.run(&run).status, RunStatus::Waiting);
}

#[tokio::test]
async fn duplicate_ids_are_dropped_and_unmatched_findings_audited() {
    let playbook = gate_playbook("dedupe", "test.dedupe", "", "t");
    let harness = Harness::new(&[&playbook]).await;
    let outcome = harness
        .ingest(&[
            finding("same", "test.dedupe", "k1"),
            finding("same", "test.dedupe", "k1"),
        ])
        .await;
    assert!(matches!(outcome[0], FindingOutcome::Matched(_)));
    assert_eq!(outcome[1], FindingOutcome::Duplicate);
    let outcome = harness
        .ingest(&[finding("same", "test.dedupe", "k1")])
        .await;
    assert_eq!(
        outcome[0],
        FindingOutcome::Duplicate,
        "a redelivery in a later batch is dropped too"
    );
    let outcome = harness
        .ingest(&[finding("other", "test.nobody.listens", "k1")])
        .await;
    assert_eq!(outcome[0], FindingOutcome::Unmatched);
    assert_eq!(harness.audit("run_started").len(), 1);
    assert_eq!(harness.audit("finding_unmatched").len(), 1);
}

#[tokio::test]
async fn a_resolved_finding_cancels_the_waiting_run() {
    let playbook = gate_playbook("resolve", "test.resolve", "on_resolved: cancel", "t");
    let harness = Harness::new(&[&playbook]).await;
    let run = started(
        &harness
            .ingest(&[finding("open", "test.resolve", "k")])
            .await[0],
    );
    let mut resolved = finding("gone", "test.resolve", "k");
    resolved.status = quench_proto::Status::Resolved;
    let outcome = harness.ingest(&[resolved]).await;
    assert!(
        matches!(&outcome[0], FindingOutcome::Matched(handled) if handled[0].1 == Handling::Resolved { cancelled: run.clone() })
    );
    let cancelled = harness.run(&run);
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert!(
        cancelled
            .cancelled
            .as_deref()
            .unwrap_or_default()
            .contains("resolved")
    );
    assert_eq!(
        harness
            .answer(&run, "decide", "go", "alice@example.com")
            .await,
        DecisionOutcome::Refused(Refusal::Closed)
    );
    assert!(
        harness.script.calls().is_empty(),
        "nothing ran after the cancel"
    );
}

#[tokio::test]
async fn quorum_refusals_and_late_answers() {
    let playbook = r#"schema: quench.playbook/v1
name: quorum
on:
  finding:
    kinds: [test.quorum]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com, bob@example.com, carol@example.com]
      quorum: 2
      question: Revoke?
      choices: [revoke, keep]
      timeout: 4h
      on_timeout: keep
"#;
    let harness = Harness::new(&[playbook]).await;
    let run = started(&harness.ingest(&[finding("q", "test.quorum", "k")]).await[0]);
    assert_eq!(
        harness
            .answer(&run, "decide", "revoke", "Alice@Example.com")
            .await,
        DecisionOutcome::Recorded {
            choice: "revoke".into(),
            answers: 1,
            quorum: 2
        },
        "emails compare without case"
    );
    assert_eq!(
        harness
            .answer(&run, "decide", "keep", "alice@example.com")
            .await,
        DecisionOutcome::Refused(Refusal::AlreadyAnswered("alice@example.com".into()))
    );
    assert_eq!(
        harness
            .answer(&run, "decide", "revoke", "mallory@example.com")
            .await,
        DecisionOutcome::Refused(Refusal::NotAllowed("mallory@example.com".into()))
    );
    assert_eq!(
        harness
            .answer(&run, "decide", "burn", "bob@example.com")
            .await,
        DecisionOutcome::Refused(Refusal::UnknownChoice("burn".into()))
    );
    assert_eq!(
        harness
            .answer_with_token(&run, "decide", "revoke", "bob@example.com", "forged")
            .await,
        DecisionOutcome::Refused(Refusal::WrongToken)
    );
    assert_eq!(
        harness
            .answer(&run, "decide", "revoke", "bob@example.com")
            .await,
        DecisionOutcome::Decided {
            choice: "revoke".into()
        }
    );
    let outcome = harness
        .answer(&run, "decide", "keep", "carol@example.com")
        .await;
    assert_eq!(
        outcome,
        DecisionOutcome::Refused(Refusal::AlreadyDecided {
            choice: "revoke".into(),
            by: "Alice@Example.com, bob@example.com".into()
        })
    );

    let state = &harness.run(&run).steps["decide"];
    assert_eq!(
        (state.choice.as_deref(), state.decided_by.clone()),
        (
            Some("revoke"),
            vec!["Alice@Example.com".to_owned(), "bob@example.com".to_owned()]
        )
    );
    let decisions = harness.audit("decision");
    let verdicts: Vec<(String, Option<bool>)> = decisions
        .iter()
        .map(|entry| {
            (
                entry
                    .actor
                    .as_ref()
                    .map(|actor| actor["id"].as_str().unwrap_or_default().to_owned())
                    .unwrap_or_default(),
                entry.allowed,
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("Alice@Example.com".to_owned(), Some(true)),
            ("alice@example.com".to_owned(), Some(false)),
            ("mallory@example.com".to_owned(), Some(false)),
            ("bob@example.com".to_owned(), Some(false)),
            ("bob@example.com".to_owned(), Some(false)),
            ("bob@example.com".to_owned(), Some(true)),
            ("carol@example.com".to_owned(), Some(false)),
        ],
        "every answer is audited with who sent it and whether it counted"
    );
}

#[tokio::test]
async fn reminders_escalation_and_timeout() {
    let playbook = r#"schema: quench.playbook/v1
name: escalate
on:
  finding:
    kinds: [test.escalate]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 4h
      on_timeout: revoke
      remind_every: 1h
      escalate:
        - after: 2h
          to: [group:secops]
"#;
    let harness = Harness::new(&[playbook]).await;
    let run = started(&harness.ingest(&[finding("e", "test.escalate", "k")]).await[0]);
    assert_eq!(
        harness
            .answer(&run, "decide", "keep", "lead@example.com")
            .await,
        DecisionOutcome::Refused(Refusal::NotAllowed("lead@example.com".into())),
        "secops may not answer before the escalation"
    );
    harness.advance(HOUR).await;
    assert_eq!(harness.gate(&run, "decide").reminders, 1);
    harness.advance(HOUR).await;
    assert_eq!(harness.gate(&run, "decide").reminders, 2);
    assert_eq!(harness.audit("gate_escalated").len(), 1);
    assert_eq!(
        harness.answer(&run, "decide", "keep", "U0SECOPS1").await,
        DecisionOutcome::Decided {
            choice: "keep".into()
        },
        "after the escalation, secops members may answer"
    );

    let run = started(&harness.ingest(&[finding("t", "test.escalate", "k2")]).await[0]);
    harness.advance(4 * HOUR).await;
    let state = &harness.run(&run).steps["decide"];
    assert_eq!(
        (
            state.choice.as_deref(),
            state.decided_by.clone(),
            state.via.as_deref()
        ),
        (Some("revoke"), vec!["timeout".to_owned()], Some("timeout"))
    );
    assert_eq!(harness.run(&run).status, RunStatus::Completed);
}

#[tokio::test]
async fn foreach_if_and_continue_on_error() {
    let playbook = r#"schema: quench.playbook/v1
name: loop
on:
  finding:
    kinds: [test.loop]
vars:
  keys: [a, b, c, d]
steps:
  - id: each
    foreach: vars.keys
    if: item != "b"
    uses: openai.revoke_key
    with:
      project_id: proj_1
      key_id: "{{ item }}-{{ index }}"
    continue_on_error: true
  - id: after
    uses: note
    with:
      message: "{{ steps.each.status }}"
"#;
    let mut mocks = BTreeMap::new();
    mocks.insert(
        "openai.revoke_key".to_owned(),
        serde_json::from_value(json!([{"output": {"n": 1}}, {"error": "permanent", "message": "nope"}, {"output": {"n": 3}}])).expect("mocks"),
    );
    let harness = Harness::on(
        Store::temporary().expect("store"),
        &[playbook],
        start_time(),
        mocks,
    )
    .await;
    let run = started(&harness.ingest(&[finding("l", "test.loop", "k")]).await[0]);
    let run = harness.run(&run);
    let keys: Vec<String> = harness
        .script
        .calls()
        .iter()
        .map(|call| call.input["key_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(keys, ["a-0", "c-2", "d-3"], "`if` is evaluated per item");
    let each = &run.steps["each"];
    assert_eq!(each.status, StepStatus::Failed);
    let items: Vec<StepStatus> = each.item_results.iter().map(|item| item.status).collect();
    assert_eq!(
        items,
        [
            StepStatus::Succeeded,
            StepStatus::Skipped,
            StepStatus::Failed,
            StepStatus::Succeeded
        ]
    );
    assert_eq!(run.steps["after"].output["message"], "failed");
    assert_eq!(
        run.status,
        RunStatus::Completed,
        "continue_on_error lets the run go on"
    );
}

#[tokio::test]
async fn a_run_timeout_runs_on_failure() {
    let playbook = r##"schema: quench.playbook/v1
name: deadline
on:
  finding:
    kinds: [test.deadline]
timeout: 1h
steps:
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 4h
      on_timeout: keep
on_failure:
  - uses: slack.message
    with:
      to: "#secops"
      text: "failed at {{ failure.step }}: {{ failure.error }}"
"##;
    let harness = Harness::new(&[playbook]).await;
    let run = started(&harness.ingest(&[finding("d", "test.deadline", "k")]).await[0]);
    harness.advance(HOUR).await;
    let ended = harness.run(&run);
    assert_eq!(ended.status, RunStatus::Failed);
    assert_eq!(ended.steps["decide"].status, StepStatus::Failed);
    let calls = harness.script.calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].input["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("failed at decide: the run timed out"),
        "{calls:?}"
    );
    assert!(harness.gate(&run, "decide").closed);
    assert_eq!(
        harness.engine.next_due().expect("readable"),
        None,
        "no timer of the ended run is left"
    );
}

#[tokio::test]
async fn timers_that_fell_due_while_down_fire_at_start() {
    let directory = tempfile::tempdir().expect("temp dir");
    let playbook = r#"schema: quench.playbook/v1
name: sleeper
on:
  finding:
    kinds: [test.sleep]
steps:
  - id: nap
    uses: wait
    with:
      for: 1h
  - id: done
    uses: note
    with:
      message: awake
"#;
    let store = Store::open(&StoreConfig::new(directory.path())).expect("store");
    let harness = Harness::on(store, &[playbook], start_time(), BTreeMap::new()).await;
    let run = started(&harness.ingest(&[finding("s", "test.sleep", "k")]).await[0]);
    assert_eq!(harness.run(&run).status, RunStatus::Waiting);
    drop(harness);

    // Three hours later, a new process opens the same store.
    let store = Store::open(&StoreConfig::new(directory.path())).expect("store reopens");
    let later = start_time() + chrono::Duration::hours(3);
    let harness = Harness::on(store, &[playbook], later, BTreeMap::new()).await;
    assert!(
        harness.engine.recover().expect("recover").is_empty(),
        "a parked run needs no driving at start"
    );
    harness.advance(Duration::ZERO).await;
    assert_eq!(harness.run(&run).status, RunStatus::Completed);
    assert_eq!(
        harness
            .engine
            .store()
            .verify_audit()
            .expect("verify")
            .first_bad,
        None
    );
}

/// An action whose first call never returns (the process "dies" during it), later calls succeed.
#[derive(Debug)]
struct HangsOnce {
    hung: AtomicBool,
    keys: std::sync::Mutex<Vec<String>>,
}

impl Action for HangsOnce {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            self.keys
                .lock()
                .expect("lock")
                .push(call.idempotency_key.clone());
            if !self.hung.swap(true, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(Success {
                output: json!({"deleted": true}),
                already_done: true,
            })
        })
    }
}

#[tokio::test]
async fn an_intent_without_a_result_is_executed_again_with_the_same_key() {
    let directory = tempfile::tempdir().expect("temp dir");
    let playbook = r#"schema: quench.playbook/v1
name: journal
on:
  finding:
    kinds: [test.journal]
steps:
  - id: revoke
    uses: openai.revoke_key
    with:
      project_id: proj_1
      key_id: "{{ finding.resource.id }}"
"#;
    let compiled = quench_runner::playbook::compile(playbook)
        .playbook
        .expect("compiles");
    let action = Arc::new(HangsOnce {
        hung: AtomicBool::new(false),
        keys: Default::default(),
    });
    let open = |action: Arc<HangsOnce>| {
        // Dropping the first engine's store lets go of its files before the drop returns.
        let store = Store::open(&StoreConfig::new(directory.path())).expect("store");
        let mut actions = Actions::new();
        actions.insert("openai.revoke_key", action);
        Engine::new(
            store,
            Arc::new(ManualClock::new(start_time())),
            actions,
            EngineConfig::default(),
        )
    };

    let engine = open(action.clone());
    engine
        .load_playbooks(vec![compiled.clone()], "test")
        .await
        .expect("load");
    let outcome = engine
        .ingest(&[finding("j", "test.journal", "key_j")])
        .await
        .expect("ingest");
    let run = started(&outcome[0]);
    // The engine drives the run; wait until the intent is durable and the call is in flight,
    // then "crash".
    let key = format!("{run}/revoke/0");
    while !engine
        .store()
        .contains(Key::Effect(&key))
        .expect("readable")
        || action.keys.lock().expect("lock").is_empty()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.abort();
    engine.idle().await.expect("aborted, not failed");
    assert_eq!(
        engine.run(&run).expect("read").expect("run").steps["revoke"].status,
        StepStatus::Running
    );
    drop(engine);

    let engine = open(action.clone());
    engine
        .load_playbooks(vec![compiled], "test")
        .await
        .expect("load");
    let recovered = engine.recover().expect("recover");
    assert_eq!(
        recovered,
        vec![run.clone()],
        "the interrupted run is found at start"
    );
    engine.idle().await.expect("drive");
    let ended = engine.run(&run).expect("read").expect("run");
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(ended.steps["revoke"].status, StepStatus::AlreadyDone);
    assert_eq!(
        *action.keys.lock().expect("lock"),
        vec![key.clone(), key],
        "re-executed once, with the same idempotency key"
    );
}

/// An action whose first call takes an hour, longer than any step timeout.
#[derive(Debug, Default)]
struct SlowOnce {
    calls: std::sync::atomic::AtomicU32,
}

impl Action for SlowOnce {
    fn call<'a>(&'a self, _call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(HOUR).await;
            }
            Ok(Success::new(json!({"ok": true})))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_timeout_bounds_each_attempt_and_retries() {
    let playbook = r#"schema: quench.playbook/v1
name: slow
on:
  finding:
    kinds: [test.slow]
steps:
  - id: call
    uses: http.request
    with:
      method: POST
      url: https://hooks.example.com/quench
    timeout: 30s
    retry: { max_attempts: 2, backoff: 1s }
"#;
    let action = Arc::new(SlowOnce::default());
    let mut actions = Actions::new();
    actions.insert("http.request", action.clone());
    let clock = Arc::new(ManualClock::new(start_time()));
    let engine = Engine::new(
        Store::temporary().expect("store"),
        clock.clone(),
        actions,
        EngineConfig::default(),
    );
    let compiled = quench_runner::playbook::compile(playbook)
        .playbook
        .expect("compiles");
    engine
        .load_playbooks(vec![compiled], "test")
        .await
        .expect("load");
    let outcome = engine
        .ingest(&[finding("s", "test.slow", "k")])
        .await
        .expect("ingest");
    let run = started(&outcome[0]);
    engine.idle().await.expect("drive");
    let waiting = engine.run(&run).expect("read").expect("run");
    assert_eq!(
        waiting.status,
        RunStatus::Waiting,
        "the timed-out attempt waits for its retry"
    );
    assert_eq!(
        waiting.steps["call"].error.as_deref(),
        Some("timed out after 30s")
    );

    clock.advance_to(start_time() + chrono::Duration::seconds(2));
    engine.fire_due().await.expect("fire");
    engine.idle().await.expect("drive");
    let done = engine.run(&run).expect("read").expect("run");
    assert_eq!(
        (done.status, done.steps["call"].status),
        (RunStatus::Completed, StepStatus::Succeeded)
    );
    assert_eq!(action.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn findings_for_one_key_in_one_batch_see_each_other() {
    let attach = gate_playbook(
        "same-attach",
        "test.same.attach",
        "on_conflict: attach",
        "t",
    );
    let replace = gate_playbook(
        "same-replace",
        "test.same.replace",
        "on_conflict: replace",
        "t",
    );
    let resolve = gate_playbook(
        "same-resolve",
        "test.same.resolve",
        "on_resolved: cancel",
        "t",
    );
    let harness = Harness::new(&[&attach, &replace, &resolve]).await;

    let outcome = harness
        .ingest(&[
            finding("a1", "test.same.attach", "k"),
            finding("a2", "test.same.attach", "k"),
        ])
        .await;
    let run = started(&outcome[0]);
    assert_eq!(
        harness.run(&run).attached,
        vec!["a2".to_owned()],
        "the second finding joined the run the first started"
    );

    let outcome = harness
        .ingest(&[
            finding("r1", "test.same.replace", "k"),
            finding("r2", "test.same.replace", "k"),
        ])
        .await;
    let (first, second) = (started(&outcome[0]), started(&outcome[1]));
    assert_eq!(harness.run(&first).status, RunStatus::Cancelled);
    assert_eq!(harness.run(&second).status, RunStatus::Waiting);

    let mut gone = finding("g2", "test.same.resolve", "k");
    gone.status = quench_proto::Status::Resolved;
    let outcome = harness
        .ingest(&[finding("g1", "test.same.resolve", "k"), gone])
        .await;
    let cancelled = started(&outcome[0]);
    assert_eq!(harness.run(&cancelled).status, RunStatus::Cancelled);
    // The slot is free again: a new finding for the key starts a new run.
    let fresh = started(
        &harness
            .ingest(&[finding("g3", "test.same.resolve", "k")])
            .await[0],
    );
    assert_ne!(fresh, cancelled);
    assert_eq!(harness.run(&fresh).status, RunStatus::Waiting);
}

/// The counts behind `quench_runs_open` and `quench_runs_awaiting_approval`: they follow runs
/// through parking on a gate or a `wait`, answers, cancellation and timeouts, stay true across a
/// restart, and a store written before they were kept is counted once at start-up.
#[tokio::test]
async fn run_counts_follow_runs_and_an_old_store_is_counted_once() {
    let directory = tempfile::tempdir().expect("temp dir");
    let gate = gate_playbook("counted", "test.count.gate", "", "told");
    let sleeper = r#"schema: quench.playbook/v1
name: sleeper
on:
  finding:
    kinds: [test.count.wait]
steps:
  - id: nap
    uses: wait
    with:
      for: 2h
"#;
    let counts = |harness: &Harness| {
        let counts = harness.engine.run_counts().expect("counts");
        (counts.open, counts.awaiting_approval)
    };
    let store = Store::open(&StoreConfig::new(directory.path())).expect("store");
    let harness = Harness::on(store, &[&gate, sleeper], start_time(), Default::default()).await;
    assert_eq!(counts(&harness), (0, 0));
    let outcomes = harness
        .ingest(&[
            finding("c-1", "test.count.gate", "key_1"),
            finding("c-2", "test.count.gate", "key_2"),
            finding("c-3", "test.count.gate", "key_3"),
            finding("c-4", "test.count.wait", "key_4"),
        ])
        .await;
    let runs: Vec<String> = outcomes.iter().map(started).collect();
    assert_eq!(counts(&harness), (4, 3), "three on gates, one on a wait");

    harness
        .answer(&runs[0], "decide", "go", "alice@example.com")
        .await;
    assert_eq!(harness.run(&runs[0]).status, RunStatus::Completed);
    assert_eq!(counts(&harness), (3, 2));
    let cancelled = harness
        .engine
        .cancel(
            &runs[1],
            "not needed",
            &quench_proto::Actor {
                via: quench_proto::Via::Api,
                id: "editor-bot".to_owned(),
                name: None,
            },
        )
        .await
        .expect("cancel");
    assert!(matches!(
        cancelled,
        quench_runner::engine::Cancel::Cancelled
    ));
    assert_eq!(counts(&harness), (2, 1));
    // Two hours: the sleeper finishes; the remaining gate is still open.
    harness.advance(2 * HOUR).await;
    assert_eq!(counts(&harness), (1, 1));
    // Its timeout: `on_timeout` decides, the run goes on and ends.
    harness.advance(3 * HOUR).await;
    assert_eq!(harness.run(&runs[2]).status, RunStatus::Completed);
    assert_eq!(counts(&harness), (0, 0));

    // A store from before the counters: they are counted from the runs once, at start-up.
    let more = harness
        .ingest(&[
            finding("c-5", "test.count.gate", "key_5"),
            finding("c-6", "test.count.wait", "key_6"),
        ])
        .await;
    assert_eq!(more.len(), 2);
    assert_eq!(counts(&harness), (2, 1));
    drop(harness);
    // A store from an older quench has no counters (the committer reads them when it starts).
    {
        let db = sled::open(directory.path()).expect("raw open");
        db.remove(b"m/counters").expect("remove the counters");
        db.flush().expect("flush");
    }
    let store = Store::open(&StoreConfig::new(directory.path())).expect("store");
    assert_eq!(store.counters().expect("read"), None);
    let harness = Harness::on(store, &[&gate, sleeper], start_time(), Default::default()).await;
    harness.engine.ensure_run_counts().await.expect("count");
    assert_eq!(counts(&harness), (2, 1));
    // Counted once: a second start-up leaves them alone.
    harness.engine.ensure_run_counts().await.expect("count");
    assert_eq!(counts(&harness), (2, 1));
}

/// An engine serving one of several partitions mints run ids that name it, and refuses a
/// finding playbook keyed by anything but the finding key (findings are routed by their key,
/// so such runs would open in several partitions at once); the finding key, however spaced,
/// loads.
#[tokio::test]
async fn an_engine_of_one_partition_names_it_and_refuses_runs_keyed_elsewhere() {
    let directory = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&StoreConfig::new(directory.path())).expect("store");
    let slot = quench_runner::cluster::partition::Slot { index: 5, count: 8 };
    let engine = Engine::new(
        store,
        Arc::new(ManualClock::new(start_time())),
        Actions::new(),
        EngineConfig {
            partition: slot,
            ..EngineConfig::default()
        },
    );
    let playbook = |key: &str| {
        let source = format!(
            "schema: quench.playbook/v1\nname: keyed\non:\n  finding:\n    kinds: [test.keyed]\n{key}steps:\n  - id: record\n    uses: note\n    with:\n      message: hello\n"
        );
        quench_runner::playbook::compile(&source)
            .playbook
            .expect("compiles")
    };
    let error = engine
        .load_playbooks(
            vec![playbook("key: \"{{ finding.resource.id }}\"\n")],
            "test",
        )
        .await
        .expect_err("a run key that is not the finding key");
    assert!(
        error
            .to_string()
            .contains("playbook keyed: `key` must be the finding key (leave it out) in a cluster of 8 partitions"),
        "{error}"
    );
    engine
        .load_playbooks(vec![playbook("key: \"{{finding.key}}\"\n")], "test")
        .await
        .expect("the finding key, spaced otherwise");
    engine
        .load_playbooks(vec![playbook("")], "test")
        .await
        .expect("the default key");
    let outcome = engine
        .ingest(&[finding("p", "test.keyed", "key_p")])
        .await
        .expect("ingest");
    let run = started(&outcome[0]);
    assert_eq!(
        quench_runner::cluster::partition::of_run_id(&run, 8),
        Some(5),
        "{run}"
    );
}
