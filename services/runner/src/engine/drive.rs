//! Driving a run: advance step by step, committing each change, until the run parks or ends.
//!
//! For an action with an effect the order is fixed: commit the intent (journal entry with the
//! rendered input and the idempotency key, step `running`), call, commit the result with the
//! next state. A run found `running` at a step after a restart has an intent without a result;
//! it is executed again with the same input and key.
//!
//! A decision or a timer that wakes a run drives it on within its own transaction
//! ([`Engine::drive_on`]) up to the intent of the next call, and hands the lock and that call to
//! the worker, which makes the call first: the decision and the intent are one commit.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use quench_proto::RunEventKind;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::locks::RunGuard;
use super::render::{Scope, context};
use super::state::{
    Effect, EffectResult, Failure, ItemResult, NoticeKind, Phase, Run, RunStatus, StepState,
    StepStatus, Timer, TimerRef, idempotency_key,
};
use super::{Action, ActionError, Call, Engine, Error, Success, Tx};
use crate::playbook::{Mode, Playbook, RetryPolicy, Step};
use crate::store::Key;

/// Executions of one call without a recorded result before the engine gives up (a call that
/// crashes the process every time must not crash it forever).
const MAX_EXECUTIONS: u32 = 20;

/// What driving decided to do next.
pub(super) enum Next {
    /// Commit and stop: the run parked, ended, or is not running.
    Stop,
    /// Commit the intent, then make the call.
    Call(Box<PendingCall>),
}

/// What `advance`'s helpers decided.
pub(super) enum Flow {
    Continue,
    Stop,
    Call(Box<PendingCall>),
}

/// A call whose intent is in the transaction being committed.
pub(super) struct PendingCall {
    pub(super) call: Call,
    pub(super) action: Arc<dyn Action>,
    pub(super) timeout: Duration,
    pub(super) effect: Effect,
    pub(super) phase: Phase,
    pub(super) index: usize,
}

/// The step being worked on: its run and playbook, the transaction collecting the changes,
/// and the time they happen at. Passed by value down the step's helpers.
pub(super) struct StepCx<'a> {
    pub(super) run: &'a mut Run,
    pub(super) playbook: &'a Playbook,
    pub(super) step: &'a Step,
    pub(super) tx: &'a mut Tx,
    pub(super) now: DateTime<Utc>,
}

impl StepCx<'_> {
    /// The step's state in the run, created on first use.
    pub(super) fn state(&mut self) -> &mut StepState {
        state(self.run, self.step)
    }
}

/// What one call (or one `foreach` item) came to, as it is recorded on the step.
pub(super) struct Outcome {
    pub(super) status: StepStatus,
    pub(super) output: Value,
    pub(super) error: Option<String>,
    /// A `fail` step: the run fails whatever `continue_on_error` says.
    pub(super) fatal: bool,
}

/// A run woken under its lock, handed from the transaction that woke it to the worker that
/// drives it (see `Tx::handoff`).
pub(super) struct Handoff {
    pub(super) guard: RunGuard,
    /// The call whose intent that transaction journaled, for the worker to make first.
    pub(super) call: Option<Resume>,
}

/// A run as the transaction that woke it left it, at a call whose intent that transaction
/// committed: what the worker needs to make the call and record its result without reading
/// the run again.
pub(super) struct Resume {
    pub(super) run: Run,
    pub(super) playbook: Arc<Playbook>,
    pub(super) pending: Box<PendingCall>,
}

impl Handoff {
    /// The run whose lock this is.
    pub(super) fn run(&self) -> &str {
        self.guard.run()
    }
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("run", &self.run())
            .field(
                "call",
                &self
                    .call
                    .as_ref()
                    .map(|resume| &resume.pending.call.idempotency_key),
            )
            .finish()
    }
}

impl Engine {
    /// Advances a run until it parks or ends (the engine's workers call it for every queued
    /// run; runs it starts, such as a queued finding whose turn came, are queued in turn).
    /// `handed` is the run's lock, and maybe its journaled next call, when the commit that
    /// woke it handed them over.
    pub(super) async fn drive(&self, run_id: &str, handed: Option<Handoff>) -> Result<(), Error> {
        let span = tracing::info_span!("run", run_id = %run_id, playbook = tracing::field::Empty);
        self.drive_in(run_id, handed, &span)
            .instrument(span.clone())
            .await
    }

    async fn drive_in(
        &self,
        run_id: &str,
        handed: Option<Handoff>,
        span: &tracing::Span,
    ) -> Result<(), Error> {
        let (_guard, resume) = match handed {
            Some(Handoff { guard, call }) => (guard, call),
            None => (self.inner.locks.lock(run_id).await, None),
        };
        let (mut run, mut call) = match resume {
            Some(Resume {
                run,
                playbook,
                pending,
            }) => (run, Some((playbook, pending))),
            None => match self.run(run_id)? {
                Some(run) => (run, None),
                None => return Ok(()),
            },
        };
        span.record("playbook", run.playbook.as_str());
        let mut tx = Tx::default();
        if self.resolve_safety_wait(&mut run, &mut tx)? {
            let now = self.now();
            tx.save(&mut run, now);
            self.commit(tx).await?;
        }
        loop {
            if let Some((playbook, pending)) = call.take() {
                self.perform(&mut run, &playbook, pending).await?;
            }
            if run.status != RunStatus::Running {
                break;
            }
            let mut tx = Tx::default();
            let playbook = match self.version(&run.version) {
                Ok(playbook) => playbook,
                Err(error) => {
                    // The run's version cannot be loaded: it cannot go on, and must say why.
                    let now = self.now();
                    run.failure = Some(Failure {
                        step: String::new(),
                        error: error.to_string(),
                    });
                    self.end(&mut run, &mut tx, RunStatus::Failed, None, now)?;
                    tx.save(&mut run, now);
                    self.commit(tx).await?;
                    break;
                }
            };
            let next = self.advance(&mut run, &playbook, &mut tx)?;
            let now = self.now();
            tx.save(&mut run, now);
            self.commit(tx).await?;
            let Next::Call(pending) = next else { break };
            call = Some((playbook, pending));
        }
        Ok(())
    }

    /// Saves a run changed under its lock (`guard`) in `tx`. When the change woke it (a decided
    /// gate, a fired timer), it is driven on within the same transaction, through the steps
    /// that need no call and up to and including the journaled intent of its next call, and
    /// the lock and that call are handed to the worker that drives it once `tx` is durable: a
    /// decision and the call it leads to take one commit (one `fdatasync`), not two, and
    /// nothing takes the run between them. The steps go through `advance`, as on every other
    /// path, so a step is checked and journaled the same way whatever woke its run.
    pub(super) fn drive_on(
        &self,
        mut run: Run,
        tx: &mut Tx,
        guard: RunGuard,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let mut call = None;
        // A version that cannot be loaded is left to the worker, which fails the run and says why.
        if run.status == RunStatus::Running
            && let Ok(playbook) = self.version(&run.version)
            && let Next::Call(pending) = self.advance(&mut run, &playbook, tx)?
        {
            call = Some((playbook, pending));
        }
        tx.save(&mut run, now);
        if run.status == RunStatus::Running {
            tx.to_drive.push(run.id.clone());
            let call = call.map(|(playbook, pending)| Resume {
                run,
                playbook,
                pending,
            });
            tx.handoff = Some(Handoff { guard, call });
        }
        Ok(())
    }

    /// Makes a call whose intent is committed, then commits its result with the next state.
    async fn perform(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        pending: Box<PendingCall>,
    ) -> Result<(), Error> {
        fail::fail_point!("engine::after_intent");
        let result = self.execute(&pending).await;
        fail::fail_point!("engine::after_effect");
        let mut tx = Tx::default();
        let now = self.now();
        self.apply_result(run, playbook, *pending, result, &mut tx, now)?;
        tx.save(run, now);
        self.commit(tx).await
    }

    /// Makes the call under the step's timeout; its duration and failure class are measured.
    async fn execute(&self, pending: &PendingCall) -> Result<Success, ActionError> {
        let span = tracing::info_span!("step", step = %pending.call.step, action = %pending.call.action, attempt = pending.call.attempt);
        let started = std::time::Instant::now();
        let call = tokio::time::timeout(pending.timeout, pending.action.call(&pending.call));
        let result = match call.instrument(span).await {
            Ok(result) => result,
            Err(_) => Err(ActionError::retryable(format!(
                "timed out after {}",
                humantime::format_duration(pending.timeout)
            ))),
        };
        let class = result.as_ref().err().map(|error| {
            if error.is_retryable() {
                "retryable"
            } else {
                "permanent"
            }
        });
        crate::metrics::get().action_call(
            &pending.call.action,
            started.elapsed().as_secs_f64(),
            class,
        );
        result
    }

    /// Moves the run forward through steps that need no call, until it must call, park or end.
    fn advance(&self, run: &mut Run, playbook: &Playbook, tx: &mut Tx) -> Result<Next, Error> {
        let now = self.now();
        loop {
            if run.status != RunStatus::Running {
                return Ok(Next::Stop);
            }
            let steps = match run.phase {
                Phase::Main => &playbook.steps,
                Phase::OnFailure => &playbook.on_failure,
            };
            let Some(step) = steps.get(run.cursor) else {
                let status = if run.failure.is_some() {
                    RunStatus::Failed
                } else {
                    RunStatus::Completed
                };
                self.end(run, tx, status, None, now)?;
                return Ok(Next::Stop);
            };
            let status = run.steps.entry(step.id.clone()).or_default().status;
            let flow = match status {
                done if done.is_done() => {
                    run.cursor += 1;
                    Flow::Continue
                }
                StepStatus::Waiting => {
                    run.status = RunStatus::Waiting;
                    Flow::Stop
                }
                status => {
                    let cx = StepCx {
                        run: &mut *run,
                        playbook,
                        step,
                        tx: &mut *tx,
                        now,
                    };
                    if status == StepStatus::Running {
                        self.reexecute(cx)?
                    } else {
                        self.begin(cx)?
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop => return Ok(Next::Stop),
                Flow::Call(call) => return Ok(Next::Call(call)),
            }
        }
    }

    /// Starts a pending step (or its next `foreach` item).
    fn begin(&self, mut cx: StepCx<'_>) -> Result<Flow, Error> {
        let failure = cx.run.phase == Phase::OnFailure;
        if cx.state().started_at.is_none() {
            cx.state().started_at = Some(cx.now);
            cx.tx.event(
                cx.run,
                cx.now,
                RunEventKind::StepStarted,
                Some(&cx.step.id),
                json!({"action": cx.step.action.name}),
            );
        }
        let Some(foreach) = &cx.step.foreach else {
            if let Some(condition) = &cx.step.condition {
                let scope = context(
                    cx.run,
                    cx.playbook,
                    cx.now,
                    Scope {
                        item: None,
                        failure,
                    },
                );
                match self.inner.renderer.condition(condition, &scope) {
                    Ok(true) => {}
                    Ok(false) => {
                        let now = cx.now;
                        let state = cx.state();
                        state.status = StepStatus::Skipped;
                        state.finished_at = Some(now);
                        cx.tx.audit(
                            cx.run,
                            cx.now,
                            "step_skipped",
                            Some(&cx.step.id),
                            json!({"if": condition}),
                        );
                        return Ok(Flow::Continue);
                    }
                    Err(error) => {
                        let error = ActionError::permanent(format!("`if` failed: {error}"));
                        return self.complete(cx, 0, Err(error), false);
                    }
                }
            }
            let scope = context(
                cx.run,
                cx.playbook,
                cx.now,
                Scope {
                    item: None,
                    failure,
                },
            );
            return self.start_call(cx, 0, &scope);
        };

        if cx.state().items.is_none() {
            let scope = context(
                cx.run,
                cx.playbook,
                cx.now,
                Scope {
                    item: None,
                    failure,
                },
            );
            match self.inner.renderer.list(foreach, &scope) {
                Ok(items) => cx.state().items = Some(items),
                Err(error) => {
                    let error = ActionError::permanent(format!("`foreach` failed: {error}"));
                    cx.state().items = Some(Vec::new());
                    return self.finish_step(
                        cx,
                        Outcome {
                            status: StepStatus::Failed,
                            output: Value::Null,
                            error: Some(error.to_string()),
                            fatal: false,
                        },
                    );
                }
            }
        }
        let (index, items_len) = {
            let state = cx.state();
            (
                state.item_results.len(),
                state.items.as_ref().map_or(0, Vec::len),
            )
        };
        if index >= items_len {
            let state = cx.state();
            let failed = state
                .item_results
                .iter()
                .find(|item| item.status == StepStatus::Failed)
                .and_then(|item| item.error.clone());
            let outputs: Vec<Value> = state
                .item_results
                .iter()
                .map(|item| item.output.clone())
                .collect();
            let status = if failed.is_some() {
                StepStatus::Failed
            } else {
                StepStatus::Succeeded
            };
            return self.finish_step(
                cx,
                Outcome {
                    status,
                    output: Value::Array(outputs),
                    error: failed,
                    fatal: false,
                },
            );
        }
        let item = cx
            .state()
            .items
            .as_ref()
            .and_then(|items| items.get(index).cloned())
            .unwrap_or(Value::Null);
        let scope = context(
            cx.run,
            cx.playbook,
            cx.now,
            Scope {
                item: Some((&item, index)),
                failure,
            },
        );
        if let Some(condition) = &cx.step.condition {
            match self.inner.renderer.condition(condition, &scope) {
                Ok(true) => {}
                Ok(false) => {
                    cx.state().item_results.push(ItemResult {
                        status: StepStatus::Skipped,
                        output: Value::Null,
                        error: None,
                    });
                    return Ok(Flow::Continue);
                }
                Err(error) => {
                    let error =
                        ActionError::permanent(format!("`if` failed for item {index}: {error}"));
                    return self.complete(cx, index, Err(error), false);
                }
            }
        }
        self.start_call(cx, index, &scope)
    }

    /// Renders the inputs and runs the action: engine actions at once, others as a journaled call.
    fn start_call(
        &self,
        mut cx: StepCx<'_>,
        iteration: usize,
        scope: &minijinja::Value,
    ) -> Result<Flow, Error> {
        let engine_action = crate::actions::is_engine_handled(cx.step.action.name);
        if cx.tx.no_calls && !engine_action {
            // Starting a run at intake goes only as far as the first call; a driver makes it.
            return Ok(Flow::Stop);
        }
        let input = match self
            .inner
            .renderer
            .inputs(cx.step.action.name, &cx.step.with, scope)
            .and_then(|mut input| {
                crate::owners::name_recipients(
                    cx.step.action.name,
                    &mut input,
                    cx.run.owner.as_ref(),
                )?;
                Ok(input)
            }) {
            Ok(input) => input,
            Err(error) => {
                let error = ActionError::permanent(format!("cannot render the inputs: {error}"));
                return self.complete(cx, iteration, Err(error), false);
            }
        };
        cx.state().attempt = 1;
        match cx.step.action.name {
            "note" => {
                let message = input.get("message").cloned().unwrap_or(Value::Null);
                cx.tx.audit(
                    cx.run,
                    cx.now,
                    "note",
                    Some(&cx.step.id),
                    json!({"message": message}),
                );
                self.complete(
                    cx,
                    iteration,
                    Ok(Success::new(json!({"message": message}))),
                    false,
                )
            }
            "state.set" => {
                let values = input.as_object().cloned().unwrap_or_default();
                // Through the transaction: a `state.set` before this one in it counts.
                let mut state: serde_json::Map<String, Value> = self
                    .inner
                    .store
                    .get_after(&cx.tx.batch, Key::PlaybookState(&cx.run.playbook))?
                    .unwrap_or_default();
                state.extend(values.clone());
                cx.tx
                    .batch
                    .put(Key::PlaybookState(&cx.run.playbook), &state);
                cx.tx.audit(
                    cx.run,
                    cx.now,
                    "state_set",
                    Some(&cx.step.id),
                    Value::Object(values.clone()),
                );
                self.complete(
                    cx,
                    iteration,
                    Ok(Success::new(Value::Object(values))),
                    false,
                )
            }
            crate::actions::FAIL => {
                let message = input
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the playbook failed the run")
                    .to_owned();
                self.complete(cx, iteration, Err(ActionError::permanent(message)), true)
            }
            "wait" => self.start_wait(cx, &input),
            crate::actions::APPROVAL => self.open_gate(cx, input),
            name => {
                let dry_run = cx.run.mode == Mode::DryRun && cx.step.action.mutates;
                // A dry run describes the request after the checks live mode makes before any
                // call, so what live mode would refuse fails here too.
                let planned = self
                    .inner
                    .actions
                    .get(name)
                    .cloned()
                    .ok_or_else(|| {
                        ActionError::permanent(format!(
                            "action `{name}` is not available: its connector is not configured"
                        ))
                    })
                    // The request it sends (or in dry-run would send), kept on the step for
                    // the people reading the run: never a credential (see `Action::describe`).
                    // Input a live call would refuse is refused by the call itself (classified
                    // and counted like any action error); a dry run refuses it here.
                    .and_then(|action| {
                        let request = if dry_run {
                            Some(action.describe(&input)?)
                        } else {
                            action.describe(&input).ok()
                        };
                        Ok((action, request))
                    });
                let (action, request) = match planned {
                    Ok(planned) => planned,
                    Err(error) => {
                        return self.complete(cx, iteration, Err(error), false);
                    }
                };
                let key = idempotency_key(&cx.run.id, &cx.step.id, iteration);
                if !dry_run
                    && cx.step.action.mutates
                    && let Some(flow) = self.rails(&mut cx, name, &input, iteration, &key)?
                {
                    return Ok(flow);
                }
                if let Some(request) = &request {
                    cx.state().requests.push(request.clone());
                }
                if let (true, Some(request)) = (dry_run, request.clone()) {
                    cx.tx.audit(
                        cx.run,
                        cx.now,
                        "step_dry_run",
                        Some(&cx.step.id),
                        json!({"action": name, "idempotency_key": key, "request": request}),
                    );
                    let output = json!({"dry_run": true, "request": request});
                    return self.complete_with(
                        cx,
                        iteration,
                        Outcome {
                            status: StepStatus::DryRun,
                            output,
                            error: None,
                            fatal: false,
                        },
                    );
                }
                let effect = Effect {
                    run_id: cx.run.id.clone(),
                    step: cx.step.id.clone(),
                    iteration,
                    action: name.to_owned(),
                    input: input.clone(),
                    intended_at: cx.now,
                    attempts: 1,
                    result: None,
                };
                cx.tx.batch.put(Key::Effect(&key), &effect);
                let state = cx.state();
                state.status = StepStatus::Running;
                state.in_flight = Some(iteration);
                cx.tx.audit(
                    cx.run,
                    cx.now,
                    "step_intent",
                    Some(&cx.step.id),
                    json!({"action": name, "idempotency_key": key, "input": input, "request": request, "attempt": 1}),
                );
                Ok(Flow::Call(Box::new(
                    self.pending(cx.run, cx.step, effect, key, 1, action),
                )))
            }
        }
    }

    fn pending(
        &self,
        run: &Run,
        step: &Step,
        effect: Effect,
        key: String,
        attempt: u32,
        action: Arc<dyn Action>,
    ) -> PendingCall {
        PendingCall {
            call: Call {
                action: effect.action.clone(),
                input: effect.input.clone(),
                idempotency_key: key,
                run_id: run.id.clone(),
                step: step.id.clone(),
                iteration: effect.iteration,
                attempt,
            },
            action,
            timeout: step
                .timeout
                .unwrap_or(self.inner.config.default_step_timeout),
            effect,
            phase: run.phase,
            index: run.cursor,
        }
    }

    /// A step found `running`: its intent has no result (a restart, or a retry whose backoff
    /// ended). Executes it again with the journaled input and the same idempotency key.
    fn reexecute(&self, mut cx: StepCx<'_>) -> Result<Flow, Error> {
        let iteration = cx.state().in_flight.unwrap_or(0);
        let key = idempotency_key(&cx.run.id, &cx.step.id, iteration);
        let Some(mut effect) = self.inner.store.get::<Effect>(Key::Effect(&key))? else {
            let error = ActionError::permanent(format!("journal entry {key} is missing"));
            return self.complete(cx, iteration, Err(error), false);
        };
        if let Some(result) = effect.result.clone() {
            // The result was recorded but the step was not moved on; take the recorded result.
            return self.complete_with(
                cx,
                iteration,
                Outcome {
                    status: result.status,
                    output: result.output,
                    error: result.error,
                    fatal: false,
                },
            );
        }
        if effect.attempts >= MAX_EXECUTIONS {
            let error = ActionError::permanent(format!(
                "gave up after {} executions without a result",
                effect.attempts
            ));
            return self.complete(cx, iteration, Err(error), false);
        }
        let Some(action) = self.inner.actions.get(&effect.action).cloned() else {
            let error = ActionError::permanent(format!(
                "action `{}` is not available: its connector is not configured",
                effect.action
            ));
            return self.complete(cx, iteration, Err(error), false);
        };
        effect.attempts += 1;
        cx.tx.batch.put(Key::Effect(&key), &effect);
        let attempt = cx.state().attempt.max(1);
        cx.tx.audit(
            cx.run,
            cx.now,
            "step_intent",
            Some(&cx.step.id),
            json!({"action": effect.action, "idempotency_key": key, "input": effect.input, "attempt": attempt, "execution": effect.attempts}),
        );
        Ok(Flow::Call(Box::new(
            self.pending(cx.run, cx.step, effect, key, attempt, action),
        )))
    }

    /// Records a call's result in the journal and moves the step on.
    fn apply_result(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        pending: PendingCall,
        result: Result<Success, ActionError>,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let steps = match pending.phase {
            Phase::Main => &playbook.steps,
            Phase::OnFailure => &playbook.on_failure,
        };
        let Some(step) = steps.get(pending.index) else {
            return Ok(());
        };
        let mut effect = pending.effect;
        let will_retry = matches!(&result, Err(error) if error.is_retryable())
            && state(run, step).attempt < max_attempts(step.retry.as_ref());
        let (status, detail) = match &result {
            Ok(success) if success.already_done => {
                (StepStatus::AlreadyDone, json!({"output": success.output}))
            }
            Ok(success) => (StepStatus::Succeeded, json!({"output": success.output})),
            Err(error) => (
                StepStatus::Failed,
                json!({"error": error.to_string(), "retryable": error.is_retryable()}),
            ),
        };
        if !will_retry {
            effect.result = Some(EffectResult {
                status,
                output: detail.get("output").cloned().unwrap_or(Value::Null),
                error: result.as_ref().err().map(ToString::to_string),
                at: now,
            });
        }
        tx.batch
            .put(Key::Effect(&pending.call.idempotency_key), &effect);
        tx.audit(
            run,
            now,
            "step_result",
            Some(&step.id),
            json!({
                "action": effect.action,
                "idempotency_key": pending.call.idempotency_key,
                "status": status.as_str(),
                "attempt": pending.call.attempt,
                "detail": detail,
            }),
        );
        let cx = StepCx {
            run,
            playbook,
            step,
            tx,
            now,
        };
        self.complete(cx, pending.call.iteration, result, false)?;
        Ok(())
    }

    /// Applies a call's outcome to the step: retry later, or record it and move on.
    fn complete(
        &self,
        mut cx: StepCx<'_>,
        iteration: usize,
        result: Result<Success, ActionError>,
        fatal: bool,
    ) -> Result<Flow, Error> {
        let attempt = cx.state().attempt.max(1);
        if let Err(ActionError::Retryable {
            message,
            retry_after,
        }) = &result
            && !fatal
            && attempt < max_attempts(cx.step.retry.as_ref())
        {
            let key = idempotency_key(&cx.run.id, &cx.step.id, iteration);
            let delay =
                retry_after.unwrap_or_else(|| backoff(cx.step.retry.as_ref(), attempt, &key));
            let due = cx.now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            let state = cx.state();
            state.attempt = attempt + 1;
            state.status = StepStatus::Waiting;
            state.in_flight = Some(iteration);
            state.error = Some(message.clone());
            self.set_timer(
                cx.run,
                cx.tx,
                due,
                Timer::Retry {
                    step: cx.step.id.clone(),
                },
            );
            cx.run.status = RunStatus::Waiting;
            cx.tx.audit(
                cx.run,
                cx.now,
                "step_retry",
                Some(&cx.step.id),
                json!({"error": message, "attempt": attempt, "next_attempt_at": due}),
            );
            return Ok(Flow::Stop);
        }
        let (status, output, error) = match result {
            Ok(success) if success.already_done => (StepStatus::AlreadyDone, success.output, None),
            Ok(success) => (StepStatus::Succeeded, success.output, None),
            Err(error) => (StepStatus::Failed, Value::Null, Some(error.to_string())),
        };
        let outcome = Outcome {
            status,
            output,
            error,
            fatal,
        };
        self.complete_with(cx, iteration, outcome)
    }

    /// Records the final outcome of one call (one item of a `foreach`, or the whole step).
    pub(super) fn complete_with(
        &self,
        mut cx: StepCx<'_>,
        iteration: usize,
        outcome: Outcome,
    ) -> Result<Flow, Error> {
        if cx.step.foreach.is_none() {
            return self.finish_step(cx, outcome);
        }
        let Outcome {
            status,
            output,
            error,
            fatal,
        } = outcome;
        let current = cx.state();
        current.in_flight = None;
        current.attempt = 0;
        current.status = StepStatus::Pending;
        current.item_results.push(ItemResult {
            status,
            output,
            error: error.clone(),
        });
        if status == StepStatus::Failed && (fatal || !cx.step.continue_on_error) {
            let outputs: Vec<Value> = cx
                .state()
                .item_results
                .iter()
                .map(|item| item.output.clone())
                .collect();
            let outcome = Outcome {
                status: StepStatus::Failed,
                output: Value::Array(outputs),
                error: error.map(|error| format!("item {iteration}: {error}")),
                fatal,
            };
            return self.finish_step(cx, outcome);
        }
        Ok(Flow::Continue)
    }

    /// Sets a step's final status; a failure fails the run unless the step continues on error.
    pub(super) fn finish_step(&self, mut cx: StepCx<'_>, outcome: Outcome) -> Result<Flow, Error> {
        let Outcome {
            status,
            output,
            error,
            fatal,
        } = outcome;
        let now = cx.now;
        let state = cx.state();
        state.status = status;
        state.output = output.clone();
        state.error = error.clone();
        state.in_flight = None;
        state.finished_at = Some(now);
        let kind = if status == StepStatus::Failed {
            RunEventKind::StepFailed
        } else {
            RunEventKind::StepSucceeded
        };
        cx.tx.event(
            cx.run,
            cx.now,
            kind,
            Some(&cx.step.id),
            json!({"status": status.as_str(), "error": error}),
        );
        if status != StepStatus::Failed || (!fatal && cx.step.continue_on_error) {
            return Ok(Flow::Continue);
        }
        self.fail_run(
            cx.run,
            cx.playbook,
            &cx.step.id,
            error.unwrap_or_default(),
            cx.tx,
            cx.now,
        )?;
        Ok(Flow::Continue)
    }

    /// The run failed for good at `step`: run `on_failure` once, or end it.
    pub(super) fn fail_run(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        step: &str,
        error: String,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        if run.phase == Phase::Main {
            run.failure = Some(Failure {
                step: step.to_owned(),
                error: error.clone(),
            });
            if !playbook.on_failure.is_empty() {
                run.phase = Phase::OnFailure;
                run.cursor = 0;
                tx.audit(run, now, "run_failing", Some(step), json!({"error": error}));
                return Ok(());
            }
        }
        self.end(run, tx, RunStatus::Failed, None, now)
    }

    fn start_wait(&self, mut cx: StepCx<'_>, input: &Value) -> Result<Flow, Error> {
        let due = match (
            input.get("for").and_then(Value::as_str),
            input.get("until").and_then(Value::as_str),
        ) {
            (Some(duration), None) => crate::playbook::parse_duration(duration).map(|duration| {
                cx.now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
            }),
            (None, Some(until)) => DateTime::parse_from_rfc3339(until)
                .map(|until| until.with_timezone(&Utc))
                .map_err(|error| format!("`until` is not an RFC 3339 time: {error}")),
            _ => Err("`wait` needs exactly one of `for` and `until`".to_owned()),
        };
        let due = match due {
            Ok(due) => due,
            Err(error) => {
                return self.complete(cx, 0, Err(ActionError::permanent(error)), false);
            }
        };
        let timer = Timer::Wait {
            step: cx.step.id.clone(),
        };
        Ok(self.park_until(&mut cx, due, timer, json!({"until": due})))
    }

    /// Parks the step until `timer` fires at `due`; the `waiting` event carries `detail`.
    pub(super) fn park_until(
        &self,
        cx: &mut StepCx<'_>,
        due: DateTime<Utc>,
        timer: Timer,
        detail: Value,
    ) -> Flow {
        self.set_timer(cx.run, cx.tx, due, timer);
        self.park(cx, detail)
    }

    /// Parks the step: the run waits (for a timer or a gate's end), and says so in a `waiting`
    /// event carrying `detail`.
    pub(super) fn park(&self, cx: &mut StepCx<'_>, detail: Value) -> Flow {
        cx.state().status = StepStatus::Waiting;
        cx.run.status = RunStatus::Waiting;
        cx.tx.event(
            cx.run,
            cx.now,
            RunEventKind::Waiting,
            Some(&cx.step.id),
            detail,
        );
        Flow::Stop
    }

    /// Removes every timer of a run and closes its undecided gates (the run ends or fails).
    pub(super) fn clear_timers_and_gates(&self, run: &mut Run, tx: &mut Tx) -> Result<(), Error> {
        if let Some(wait) = run.safety_wait.take() {
            tx.batch.delete(Key::SafetyWait(&wait.hold, &run.id));
        }
        for timer in std::mem::take(&mut run.timers) {
            tx.batch.delete(Key::Timer {
                due: timer.due,
                run: &run.id,
                name: &timer.name,
            });
        }
        // A run never written has nothing in the store (its id is new).
        let stored = if run.counted.is_some() {
            self.inner.store.gates::<super::Gate>(&run.id)?
        } else {
            Vec::new()
        };
        for stored in stored {
            // As this transaction left it: a gate it decided or closed is not closed again.
            let Some(mut gate) = self
                .inner
                .store
                .get_after::<super::Gate>(&tx.batch, Key::Gate(&run.id, &stored.step))?
            else {
                continue;
            };
            if gate.decision.is_none() && !gate.closed {
                gate.closed = true;
                if !gate.messages.is_empty() {
                    let now = self.now();
                    self.notice(tx, run, &gate.step, NoticeKind::Closed, Vec::new(), now);
                }
                tx.batch.put(Key::Gate(&run.id, &gate.step), &gate);
            }
        }
        Ok(())
    }

    pub(super) fn set_timer(&self, run: &mut Run, tx: &mut Tx, due: DateTime<Utc>, timer: Timer) {
        // Timer keys hold milliseconds; keep the run's copy identical so firing can match it.
        let due = DateTime::from_timestamp_millis(due.timestamp_millis()).unwrap_or(due);
        let name = timer.name();
        self.clear_timer(run, tx, &name);
        tx.batch.put(
            Key::Timer {
                due,
                run: &run.id,
                name: &name,
            },
            &timer,
        );
        run.timers.push(TimerRef { due, name });
        tx.timers = true;
    }

    pub(super) fn clear_timer(&self, run: &mut Run, tx: &mut Tx, name: &str) {
        let id = run.id.clone();
        run.timers.retain(|timer| {
            if timer.name == name {
                tx.batch.delete(Key::Timer {
                    due: timer.due,
                    run: &id,
                    name: &timer.name,
                });
                false
            } else {
                true
            }
        });
    }

    /// Ends a run: status, timers, the open-run slot, open gates; then starts the finding
    /// queued behind it, if any.
    pub(super) fn end(
        &self,
        run: &mut Run,
        tx: &mut Tx,
        status: RunStatus,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        run.status = status;
        run.ended_at = Some(now);
        tx.batch.put(Key::Ended(now, &run.id), &true);
        run.cancelled = reason.clone();
        self.clear_timers_and_gates(run, tx)?;
        self.hold_ended(run, tx)?;
        // (A run never written cannot hold a slot in the store.)
        let holds_slot = run.counted.is_some()
            && self
                .inner
                .store
                .get::<String>(Key::Open(&run.playbook, &run.key))?
                .as_deref()
                == Some(run.id.as_str());
        if holds_slot {
            tx.batch.delete(Key::Open(&run.playbook, &run.key));
        }
        let kind = match status {
            RunStatus::Completed => RunEventKind::RunCompleted,
            RunStatus::Cancelled => RunEventKind::RunCancelled,
            _ => RunEventKind::RunFailed,
        };
        tx.event(
            run,
            now,
            kind,
            None,
            json!({"failure": run.failure, "reason": reason}),
        );
        tx.ended.push(super::Ended {
            run_id: run.id.clone(),
            playbook: run.playbook.clone(),
            status,
            step: run.failure.as_ref().map(|failure| failure.step.clone()),
            reason: reason.or_else(|| run.failure.as_ref().map(|failure| failure.error.clone())),
        });
        if holds_slot {
            self.start_queued(run, tx, now)?;
        }
        Ok(())
    }

    fn start_queued(&self, ended: &Run, tx: &mut Tx, now: DateTime<Utc>) -> Result<(), Error> {
        let Some((seq, queued)) = self
            .inner
            .store
            .first_queued::<super::state::Queued>(&ended.playbook, &ended.key)?
        else {
            return Ok(());
        };
        tx.batch
            .delete(Key::Queued(&ended.playbook, &ended.key, seq));
        // A queued finding runs with the playbook as it is now, not as it was when it queued.
        let current = self.playbooks().get(&ended.playbook).cloned();
        let dropped = match &current {
            None => Some("the playbook is no longer loaded"),
            Some(_) if !self.is_enabled(&ended.playbook)? => Some("the playbook is disabled"),
            Some(_) => None,
        };
        let (Some(current), None) = (current, dropped) else {
            let mut draft = crate::store::AuditDraft::new(
                now,
                "finding_dropped",
                json!({"finding": queued.finding.id, "reason": dropped}),
            );
            draft.playbook = Some(ended.playbook.clone());
            tx.audit_draft(draft);
            return Ok(());
        };
        let vars = ended.vars.clone();
        let mode = self.inner.config.mode_of(&current);
        let mut run = Run::new(&current, Some(&queued.finding), now, mode);
        run.owner = self.owner_for(&current, Some(&queued.finding))?;
        self.start_run(tx, &current, run, ended.key.clone(), vars, now)?;
        Ok(())
    }

    /// The owner of a new run of `playbook` (for `finding`, or none for a scheduled run), when
    /// the playbook reads one: resolved once, kept on the run (see [`crate::owners`]).
    pub(super) fn owner_for(
        &self,
        playbook: &Playbook,
        finding: Option<&quench_proto::Finding>,
    ) -> Result<Option<crate::owners::ResolvedOwner>, Error> {
        if !playbook.uses_owner {
            return Ok(None);
        }
        // The estate's store when this engine's does not hold it (and it is followed yet).
        let estate = self
            .inner
            .config
            .estate
            .as_ref()
            .and_then(crate::store::Borrowed::get);
        Ok(Some(crate::owners::resolve_for(
            estate.as_ref().unwrap_or(&self.inner.store),
            &self.inner.config.owners,
            finding,
        )?))
    }

    /// Creates a run in the transaction, takes the open-run slot, and advances it through the
    /// steps that need no call (notes, an opening gate), so a run that parks at once is written
    /// once. The caller drives it from its first call.
    pub(super) fn start_run(
        &self,
        tx: &mut Tx,
        playbook: &Playbook,
        mut run: Run,
        key: String,
        vars: serde_json::Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<Run, Error> {
        run.id = self.inner.config.partition.run_id();
        run.key = key;
        run.vars = vars;
        run.deadline = playbook.timeout.map(|timeout| {
            now + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX)
        });
        run.state = self
            .inner
            .store
            .get(Key::PlaybookState(&playbook.name))?
            .unwrap_or_default();
        if let Some(deadline) = run.deadline {
            self.set_timer(&mut run, tx, deadline, Timer::RunTimeout);
        }
        let finding_id = run.finding.as_ref().map(|finding| finding.id.clone());
        tx.event(
            &run,
            now,
            RunEventKind::RunStarted,
            None,
            json!({"finding": finding_id, "key": run.key, "mode": run.mode}),
        );
        if let Some(owner) = &run.owner {
            tx.audit(
                &run,
                now,
                "owner_resolved",
                None,
                json!({"link": owner.link, "source": owner.source, "team": owner.team, "recipient": owner.recipient}),
            );
        }
        tx.no_calls = true;
        let advanced = self.advance(&mut run, playbook, tx);
        tx.no_calls = false;
        advanced?;
        // A run that ended at once never takes the slot.
        if !run.status.is_terminal() {
            tx.batch.put(Key::Open(&run.playbook, &run.key), &run.id);
        }
        tx.save(&mut run, now);
        if run.status == RunStatus::Running {
            tx.to_drive.push(run.id.clone());
        }
        Ok(run)
    }
}

/// The state of `step` in `run`, created on first use.
pub(super) fn state<'a>(run: &'a mut Run, step: &Step) -> &'a mut StepState {
    run.steps.entry(step.id.clone()).or_default()
}

fn max_attempts(retry: Option<&RetryPolicy>) -> u32 {
    retry.map_or(1, |retry| retry.max_attempts.max(1))
}

/// Exponential backoff with "equal jitter": half the delay fixed, half spread. The spread is
/// derived from the idempotency key and attempt, so runs spread out but a test is repeatable.
fn backoff(retry: Option<&RetryPolicy>, attempt: u32, key: &str) -> Duration {
    let (base, cap) = retry.map_or(
        (Duration::from_secs(1), Duration::from_secs(300)),
        |retry| (retry.backoff, retry.max_backoff),
    );
    let exponent = attempt.saturating_sub(1).min(30);
    let delay = base.saturating_mul(1u32 << exponent).min(cap);
    let digest = Sha256::digest(format!("{key}#{attempt}").as_bytes());
    let spread =
        u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8])) as f64 / u64::MAX as f64;
    delay.mul_f64(0.5 + 0.5 * spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let retry = RetryPolicy {
            max_attempts: 10,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        };
        for attempt in 1..10 {
            let delay = backoff(Some(&retry), attempt, "run/step/0");
            let full = Duration::from_secs(2)
                .saturating_mul(1 << (attempt - 1))
                .min(Duration::from_secs(60));
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?} not within [{:?}, {full:?}]",
                full / 2
            );
        }
        assert_eq!(
            backoff(Some(&retry), 3, "a/b/0"),
            backoff(Some(&retry), 3, "a/b/0"),
            "repeatable"
        );
        assert_ne!(
            backoff(Some(&retry), 3, "a/b/0"),
            backoff(Some(&retry), 3, "c/d/0"),
            "spread across keys"
        );
    }
}
