//! The engine schedules its own runs: every commit that starts or wakes a run queues it, at
//! most `max_inflight_runs` are driven at once, intake waits for room when more are queued, and
//! the timer loop is woken by the commit that sets an earlier timer instead of polling.

use std::sync::Arc;
use std::time::Duration;

use quench_runner::engine::state::Effect;
use quench_runner::engine::{
    Action, ActionFuture, Actions, Call, DecisionOutcome, Defer, Delivery, Engine, EngineConfig,
    Gate, GateMessage, NoticeFuture, NoticeKind, NoticeRequest, Notifier, RunStatus, StepStatus,
    Success, SystemClock,
};
use quench_runner::store::{Key, Store};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::support::{finding, started};

/// A call that waits for a permit: the test decides when each one returns.
#[derive(Debug)]
struct Gated {
    permits: Arc<Semaphore>,
}

impl Action for Gated {
    fn call<'a>(&'a self, _call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            let permit = self.permits.acquire().await.expect("open");
            permit.forget();
            Ok(Success::new(json!({"ok": true})))
        })
    }
}

async fn engine(source: &str, actions: Actions, max_inflight_runs: usize) -> Engine {
    let engine = Engine::new(
        Store::temporary().expect("store"),
        Arc::new(SystemClock),
        actions,
        EngineConfig {
            max_inflight_runs,
            ..EngineConfig::default()
        },
    );
    let compiled = quench_runner::playbook::compile(source)
        .playbook
        .expect("compiles");
    engine
        .load_playbooks(vec![compiled], "test")
        .await
        .expect("load");
    engine
}

#[tokio::test]
async fn runs_are_driven_by_the_engine_within_its_bound_and_intake_waits_for_room() {
    let source = r#"schema: quench.playbook/v1
name: gated
on:
  finding:
    kinds: [test.gated]
steps:
  - id: call
    uses: http.request
    with:
      method: POST
      url: https://hooks.example.com/quench
"#;
    let permits = Arc::new(Semaphore::new(0));
    let mut actions = Actions::new();
    actions.insert(
        "http.request",
        Arc::new(Gated {
            permits: permits.clone(),
        }),
    );
    let engine = engine(source, actions, 1).await;
    let mut runs = Vec::new();
    for n in 0..3 {
        let outcome = engine
            .ingest(&[finding(&format!("g{n}"), "test.gated", &format!("k{n}"))])
            .await
            .expect("ingest");
        runs.push(started(&outcome[0]));
    }
    // One run is driven (its call waits), two are queued: more than the bound of one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.backlog() != 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(engine.backlog(), 3, "one driven, two queued");
    let room = tokio::time::timeout(Duration::from_millis(200), engine.room()).await;
    assert!(
        room.is_err(),
        "intake waits while the queue is over its bound"
    );

    // Each call let through ends a run and the next queued one starts.
    permits.add_permits(2);
    tokio::time::timeout(Duration::from_secs(10), engine.room())
        .await
        .expect("room once the queue drains");
    permits.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), engine.idle())
        .await
        .expect("idle")
        .expect("no drive failed");
    for run in runs {
        let run = engine.run(&run).expect("read").expect("run");
        assert_eq!(run.status, RunStatus::Completed, "{}", run.id);
    }
    assert_eq!(engine.backlog(), 0);
}

#[tokio::test]
async fn a_new_timer_wakes_the_timer_loop_without_polling() {
    let source = r#"schema: quench.playbook/v1
name: short
on:
  finding:
    kinds: [test.short]
steps:
  - id: pause
    uses: wait
    with:
      for: 1s
  - id: done
    uses: note
    with:
      message: woke
"#;
    let engine = engine(source, Actions::new(), 4).await;
    let stop = CancellationToken::new();
    let timers = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run_timers(stop).await }
    });
    // With nothing due the loop sleeps for its longest sleep (a minute); the run's timer is
    // set afterwards, a second ahead.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let outcome = engine
        .ingest(&[finding("w", "test.short", "k")])
        .await
        .expect("ingest");
    let run = started(&outcome[0]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = engine.run(&run).expect("read").expect("run").status;
        if status == RunStatus::Completed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timer did not fire within 10 s (status {status:?}): the loop was not woken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    timers.await.expect("timer loop ends");
}

/// Records what happened, in order: calls of the action and notices delivered.
#[derive(Debug, Default)]
struct Order {
    seen: std::sync::Mutex<Vec<String>>,
}

impl Order {
    fn push(&self, what: String) {
        self.seen.lock().expect("lock").push(what);
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

#[derive(Debug)]
struct Recorded(Arc<Order>);

impl Action for Recorded {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            self.0.push(format!("call {}", call.run_id));
            Ok(Success::new(json!({"ok": true})))
        })
    }
}

impl Notifier for Recorded {
    fn deliver<'a>(&'a self, request: &'a NoticeRequest) -> NoticeFuture<'a> {
        Box::pin(async move {
            self.0
                .push(format!("{} {}", request.kind.as_str(), request.gate.run_id));
            let posted = match request.kind {
                NoticeKind::Closed => Vec::new(),
                _ => vec![GateMessage {
                    to: "alice@example.com".to_owned(),
                    channel: "D1".to_owned(),
                    ts: "1.0".to_owned(),
                }],
            };
            Delivery {
                updated: usize::from(request.kind == NoticeKind::Closed),
                posted,
                aliases: Vec::new(),
                failed: Vec::new(),
            }
        })
    }
}

// Several threads, as in the service: the timer loop runs on another thread than the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decided_run_takes_its_next_step_before_the_gate_closing_notice() {
    let source = r#"schema: quench.playbook/v1
name: decided
on:
  finding:
    kinds: [test.decided]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com]
      question: Go?
      choices: [go, stop]
      timeout: 1h
      on_timeout: stop
  - id: call
    uses: http.request
    with:
      method: POST
      url: https://hooks.example.com/quench
"#;
    let order = Arc::new(Order::default());
    let mut actions = Actions::new();
    actions.insert("http.request", Arc::new(Recorded(order.clone())));
    let engine = engine(source, actions, 256)
        .await
        .with_notifier(Arc::new(Recorded(order.clone())));
    let stop = CancellationToken::new();
    let timers = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run_timers(stop).await }
    });
    // The closing notice is queued, due at once, by the very commit that wakes the run; the
    // timer loop is awake. Each time, the run's call comes first.
    for n in 0..20 {
        let outcome = engine
            .ingest(&[finding(&format!("d{n}"), "test.decided", &format!("k{n}"))])
            .await
            .expect("ingest");
        let run = started(&outcome[0]);
        let asked = format!("open {run}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !order.seen().contains(&asked)
            || engine
                .store()
                .gate::<Gate>(&run, "decide")
                .expect("gate")
                .is_none_or(|gate| gate.messages.is_empty())
        {
            assert!(tokio::time::Instant::now() < deadline, "never asked");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        answer(&engine, &run, "go").await;
        let closed = format!("closed {run}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !order.seen().contains(&closed) {
            assert!(tokio::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let seen = order.seen();
        let call = seen.iter().position(|what| *what == format!("call {run}"));
        let closing = seen.iter().position(|what| *what == closed);
        assert!(
            call.is_some() && call < closing,
            "round {n}: the run's call must come before the closing notice: {seen:?}"
        );
    }
    stop.cancel();
    timers.await.expect("timer loop ends");
}

/// Alice answers the run's `decide` gate with `choice` through the API; the gate must take it.
async fn answer(engine: &Engine, run: &str, choice: &str) {
    let gate: Gate = engine
        .store()
        .gate(run, "decide")
        .expect("gate")
        .expect("gate");
    let decision = quench_proto::Decision {
        schema: quench_proto::DecisionSchema::V1,
        id: format!("answer-{run}"),
        run_id: run.to_owned(),
        gate: "decide".to_owned(),
        token: gate.token,
        choice: choice.to_owned(),
        item: None,
        comment: None,
        actor: quench_proto::Actor {
            via: quench_proto::Via::Api,
            id: "alice@example.com".to_owned(),
            name: None,
        },
        decided_at: chrono::Utc::now(),
    };
    let outcome = engine
        .decide(&decision, Defer::Never)
        .await
        .expect("decide");
    assert_eq!(
        outcome,
        DecisionOutcome::Decided {
            choice: choice.to_owned()
        }
    );
}

const DECIDE_THEN_CALL: &str = r#"schema: quench.playbook/v1
name: decide-then-call
on:
  finding:
    kinds: [test.decide]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [alice@example.com]
      question: Go?
      choices: [go, stop]
      timeout: 1h
      on_timeout: stop
  - id: remember
    uses: state.set
    with:
      decided: "{{ steps.decide.choice }}"
  - id: call
    if: steps.decide.choice == "go"
    uses: http.request
    with:
      method: POST
      url: https://hooks.example.com/quench
"#;

/// Counts the calls it lets through (each waits for a permit).
#[derive(Debug)]
struct Counted {
    permits: Arc<Semaphore>,
    calls: std::sync::Mutex<Vec<(String, u32)>>,
}

impl Action for Counted {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push((call.idempotency_key.clone(), call.attempt));
            let permit = self.permits.acquire().await.expect("open");
            permit.forget();
            Ok(Success::new(json!({"ok": true})))
        })
    }
}

// One thread: the worker the decision's commit queues cannot run before this test reads the
// store right after `decide` returns, so what the store shows then is the decision's commit
// alone.
#[tokio::test(flavor = "current_thread")]
async fn a_decision_and_the_intent_of_the_call_it_leads_to_are_one_commit() {
    let action = Arc::new(Counted {
        permits: Arc::new(Semaphore::new(0)),
        calls: std::sync::Mutex::default(),
    });
    let mut actions = Actions::new();
    actions.insert("http.request", action.clone());
    let engine = engine(DECIDE_THEN_CALL, actions, 256).await;
    let outcome = engine
        .ingest(&[finding("d1", "test.decide", "k1")])
        .await
        .expect("ingest");
    let run = started(&outcome[0]);
    engine.idle().await.expect("parked on the gate");

    answer(&engine, &run, "go").await;
    // Durable when `decide` returned, before any worker ran: the decision, the step it led
    // through and the intent of the call, journaled.
    let stored = engine.run(&run).expect("read").expect("run");
    assert_eq!(stored.status, RunStatus::Running);
    assert_eq!(stored.steps["decide"].status, StepStatus::Succeeded);
    assert_eq!(stored.steps["remember"].status, StepStatus::Succeeded);
    assert_eq!(
        stored.steps["call"].status,
        StepStatus::Running,
        "the call's intent is in the decision's commit"
    );
    let key = format!("{run}/call/0");
    let effect: Effect = engine
        .store()
        .get(Key::Effect(&key))
        .expect("read")
        .expect("the call is journaled in the decision's commit");
    assert_eq!((effect.attempts, effect.result.is_none()), (1, true));
    let state: serde_json::Map<String, serde_json::Value> = engine
        .store()
        .get(Key::PlaybookState("decide-then-call"))
        .expect("read")
        .expect("state set in the decision's commit");
    assert_eq!(state["decided"], "go");
    let kinds: Vec<String> = engine
        .store()
        .run_audit(&run)
        .expect("timeline")
        .into_iter()
        .map(|entry| entry.kind)
        .collect();
    let decision = kinds.iter().position(|kind| kind == "decision");
    let intent = kinds.iter().position(|kind| kind == "step_intent");
    assert!(
        decision.is_some() && decision < intent,
        "decision, then intent: {kinds:?}"
    );
    assert!(
        action.calls.lock().expect("lock").is_empty(),
        "not called yet"
    );

    // The worker handed the call makes it once, as journaled, and records its result.
    action.permits.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), engine.idle())
        .await
        .expect("idle")
        .expect("no drive failed");
    assert_eq!(*action.calls.lock().expect("lock"), vec![(key.clone(), 1)]);
    let stored = engine.run(&run).expect("read").expect("run");
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(stored.steps["call"].status, StepStatus::Succeeded);
    let effect: Effect = engine
        .store()
        .get(Key::Effect(&key))
        .expect("read")
        .expect("journaled");
    assert_eq!(effect.attempts, 1, "made once, never re-executed");
    let intents = engine
        .store()
        .run_audit(&run)
        .expect("timeline")
        .into_iter()
        .filter(|entry| entry.kind == "step_intent")
        .count();
    assert_eq!(intents, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_decision_that_ends_the_run_keeps_its_gate_decided() {
    let order = Arc::new(Order::default());
    let mut actions = Actions::new();
    actions.insert("http.request", Arc::new(Recorded(order.clone())));
    let engine = engine(DECIDE_THEN_CALL, actions, 256)
        .await
        .with_notifier(Arc::new(Recorded(order.clone())));
    let outcome = engine
        .ingest(&[finding("d2", "test.decide", "k2")])
        .await
        .expect("ingest");
    let run = started(&outcome[0]);
    engine.idle().await.expect("parked on the gate");
    engine.fire_due().await.expect("the opening notice");
    let asked: Gate = engine
        .store()
        .gate(&run, "decide")
        .expect("gate")
        .expect("gate");
    assert!(!asked.messages.is_empty(), "asked: {:?}", order.seen());

    // `stop` skips the call: the run ends in the decision's own commit.
    answer(&engine, &run, "stop").await;
    let stored = engine.run(&run).expect("read").expect("run");
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(stored.steps["call"].status, StepStatus::Skipped);
    let gate: Gate = engine
        .store()
        .gate(&run, "decide")
        .expect("gate")
        .expect("gate");
    assert_eq!(
        gate.decision.map(|decision| decision.choice).as_deref(),
        Some("stop"),
        "ending the run does not undo the gate's decision"
    );
    assert!(!gate.closed, "a decided gate is not closed as undecided");
    engine.fire_due().await.expect("the closing notice");
    engine.idle().await.expect("idle");
    let seen = order.seen();
    let closed = seen
        .iter()
        .filter(|what| **what == format!("closed {run}"))
        .count();
    assert_eq!(closed, 1, "one closing notice: {seen:?}");
    assert!(
        !seen.iter().any(|what| what.starts_with("call")),
        "{seen:?}"
    );
}
