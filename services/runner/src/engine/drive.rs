//! Driving a run: advance step by step, committing each change, until the run parks or ends.
//!
//! For an action with an effect the order is fixed: commit the intent (journal entry with the
//! rendered input and the idempotency key, step `running`), call, commit the result with the
//! next state. A run found `running` at a step after a restart has an intent without a result;
//! it is executed again with the same input and key.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use quench_proto::RunEventKind;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument;

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

impl Engine {
    /// Advances a run until it parks or ends (the engine's workers call it for every queued
    /// run; runs it starts, such as a queued finding whose turn came, are queued in turn).
    pub(super) async fn drive(&self, run_id: &str) -> Result<(), Error> {
        let span = tracing::info_span!("run", run_id = %run_id, playbook = tracing::field::Empty);
        self.drive_in(run_id, &span).instrument(span.clone()).await
    }

    async fn drive_in(&self, run_id: &str, span: &tracing::Span) -> Result<(), Error> {
        let _guard = self.inner.locks.lock(run_id).await;
        let Some(mut run) = self.run(run_id)? else {
            return Ok(());
        };
        span.record("playbook", run.playbook.as_str());
        while run.status == RunStatus::Running {
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
            fail::fail_point!("engine::after_intent");
            let result = self.execute(&pending).await;
            fail::fail_point!("engine::after_effect");
            let mut tx = Tx::default();
            let now = self.now();
            self.apply_result(&mut run, &playbook, *pending, result, &mut tx, now)?;
            tx.save(&mut run, now);
            self.commit(tx).await?;
        }
        Ok(())
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
                StepStatus::Running => self.reexecute(run, playbook, step, tx, now)?,
                _ => self.begin(run, playbook, step, tx, now)?,
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop => return Ok(Next::Stop),
                Flow::Call(call) => return Ok(Next::Call(call)),
            }
        }
    }

    /// Starts a pending step (or its next `foreach` item).
    fn begin(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        step: &Step,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<Flow, Error> {
        let failure = run.phase == Phase::OnFailure;
        if state(run, step).started_at.is_none() {
            state(run, step).started_at = Some(now);
            tx.event(
                run,
                now,
                RunEventKind::StepStarted,
                Some(&step.id),
                json!({"action": step.action.name}),
            );
        }
        let Some(foreach) = &step.foreach else {
            if let Some(condition) = &step.condition {
                let scope = context(
                    run,
                    playbook,
                    now,
                    Scope {
                        item: None,
                        failure,
                    },
                );
                match self.inner.renderer.condition(condition, &scope) {
                    Ok(true) => {}
                    Ok(false) => {
                        let state = state(run, step);
                        state.status = StepStatus::Skipped;
                        state.finished_at = Some(now);
                        tx.audit(
                            run,
                            now,
                            "step_skipped",
                            Some(&step.id),
                            json!({"if": condition}),
                        );
                        return Ok(Flow::Continue);
                    }
                    Err(error) => {
                        let error = ActionError::permanent(format!("`if` failed: {error}"));
                        return self.complete(run, playbook, step, 0, Err(error), false, tx, now);
                    }
                }
            }
            let scope = context(
                run,
                playbook,
                now,
                Scope {
                    item: None,
                    failure,
                },
            );
            return self.start_call(run, playbook, step, 0, &scope, tx, now);
        };

        if state(run, step).items.is_none() {
            let scope = context(
                run,
                playbook,
                now,
                Scope {
                    item: None,
                    failure,
                },
            );
            match self.inner.renderer.list(foreach, &scope) {
                Ok(items) => state(run, step).items = Some(items),
                Err(error) => {
                    let error = ActionError::permanent(format!("`foreach` failed: {error}"));
                    state(run, step).items = Some(Vec::new());
                    return self.finish_step(
                        run,
                        playbook,
                        step,
                        StepStatus::Failed,
                        Value::Null,
                        Some(error.to_string()),
                        false,
                        tx,
                        now,
                    );
                }
            }
        }
        let (index, items_len) = {
            let state = state(run, step);
            (
                state.item_results.len(),
                state.items.as_ref().map_or(0, Vec::len),
            )
        };
        if index >= items_len {
            let state = state(run, step);
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
                run,
                playbook,
                step,
                status,
                Value::Array(outputs),
                failed,
                false,
                tx,
                now,
            );
        }
        let item = state(run, step)
            .items
            .as_ref()
            .and_then(|items| items.get(index).cloned())
            .unwrap_or(Value::Null);
        let scope = context(
            run,
            playbook,
            now,
            Scope {
                item: Some((&item, index)),
                failure,
            },
        );
        if let Some(condition) = &step.condition {
            match self.inner.renderer.condition(condition, &scope) {
                Ok(true) => {}
                Ok(false) => {
                    state(run, step).item_results.push(ItemResult {
                        status: StepStatus::Skipped,
                        output: Value::Null,
                        error: None,
                    });
                    return Ok(Flow::Continue);
                }
                Err(error) => {
                    let error =
                        ActionError::permanent(format!("`if` failed for item {index}: {error}"));
                    return self.complete(run, playbook, step, index, Err(error), false, tx, now);
                }
            }
        }
        self.start_call(run, playbook, step, index, &scope, tx, now)
    }

    /// Renders the inputs and runs the action: engine actions at once, others as a journaled call.
    #[allow(clippy::too_many_arguments)]
    fn start_call(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        step: &Step,
        iteration: usize,
        scope: &minijinja::Value,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<Flow, Error> {
        let engine_action = crate::actions::is_engine_handled(step.action.name);
        if tx.no_calls && !engine_action {
            // Starting a run at intake goes only as far as the first call; a driver makes it.
            return Ok(Flow::Stop);
        }
        let input = match self
            .inner
            .renderer
            .inputs(step.action.name, &step.with, scope)
        {
            Ok(input) => input,
            Err(error) => {
                let error = ActionError::permanent(format!("cannot render the inputs: {error}"));
                return self.complete(run, playbook, step, iteration, Err(error), false, tx, now);
            }
        };
        state(run, step).attempt = 1;
        match step.action.name {
            "note" => {
                let message = input.get("message").cloned().unwrap_or(Value::Null);
                tx.audit(
                    run,
                    now,
                    "note",
                    Some(&step.id),
                    json!({"message": message}),
                );
                self.complete(
                    run,
                    playbook,
                    step,
                    iteration,
                    Ok(Success::new(json!({"message": message}))),
                    false,
                    tx,
                    now,
                )
            }
            "state.set" => {
                let values = input.as_object().cloned().unwrap_or_default();
                let mut state: serde_json::Map<String, Value> = self
                    .inner
                    .store
                    .get(Key::PlaybookState(&run.playbook))?
                    .unwrap_or_default();
                state.extend(values.clone());
                tx.batch.put(Key::PlaybookState(&run.playbook), &state);
                tx.audit(
                    run,
                    now,
                    "state_set",
                    Some(&step.id),
                    Value::Object(values.clone()),
                );
                self.complete(
                    run,
                    playbook,
                    step,
                    iteration,
                    Ok(Success::new(Value::Object(values))),
                    false,
                    tx,
                    now,
                )
            }
            "fail" => {
                let message = input
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the playbook failed the run")
                    .to_owned();
                self.complete(
                    run,
                    playbook,
                    step,
                    iteration,
                    Err(ActionError::permanent(message)),
                    true,
                    tx,
                    now,
                )
            }
            "wait" => self.start_wait(run, playbook, step, &input, tx, now),
            crate::actions::APPROVAL => self.open_gate(run, playbook, step, input, tx, now),
            name => {
                let dry_run = run.mode == Mode::DryRun && step.action.mutates;
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
                        return self.complete(
                            run,
                            playbook,
                            step,
                            iteration,
                            Err(error),
                            false,
                            tx,
                            now,
                        );
                    }
                };
                let key = idempotency_key(&run.id, &step.id, iteration);
                if let Some(request) = &request {
                    state(run, step).requests.push(request.clone());
                }
                if let (true, Some(request)) = (dry_run, request.clone()) {
                    tx.audit(
                        run,
                        now,
                        "step_dry_run",
                        Some(&step.id),
                        json!({"action": name, "idempotency_key": key, "request": request}),
                    );
                    let output = json!({"dry_run": true, "request": request});
                    return self.complete_with(
                        run,
                        playbook,
                        step,
                        iteration,
                        StepStatus::DryRun,
                        output,
                        None,
                        false,
                        tx,
                        now,
                    );
                }
                let effect = Effect {
                    run_id: run.id.clone(),
                    step: step.id.clone(),
                    iteration,
                    action: name.to_owned(),
                    input: input.clone(),
                    intended_at: now,
                    attempts: 1,
                    result: None,
                };
                tx.batch.put(Key::Effect(&key), &effect);
                let state = state(run, step);
                state.status = StepStatus::Running;
                state.in_flight = Some(iteration);
                tx.audit(
                    run,
                    now,
                    "step_intent",
                    Some(&step.id),
                    json!({"action": name, "idempotency_key": key, "input": input, "request": request, "attempt": 1}),
                );
                Ok(Flow::Call(Box::new(
                    self.pending(run, step, effect, key, 1, action),
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
    fn reexecute(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        step: &Step,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<Flow, Error> {
        let iteration = state(run, step).in_flight.unwrap_or(0);
        let key = idempotency_key(&run.id, &step.id, iteration);
        let Some(mut effect) = self.inner.store.get::<Effect>(Key::Effect(&key))? else {
            let error = ActionError::permanent(format!("journal entry {key} is missing"));
            return self.complete(run, playbook, step, iteration, Err(error), false, tx, now);
        };
        if let Some(result) = effect.result.clone() {
            // The result was recorded but the step was not moved on; take the recorded result.
            return self.complete_with(
                run,
                playbook,
                step,
                iteration,
                result.status,
                result.output,
                result.error,
                false,
                tx,
                now,
            );
        }
        if effect.attempts >= MAX_EXECUTIONS {
            let error = ActionError::permanent(format!(
                "gave up after {} executions without a result",
                effect.attempts
            ));
            return self.complete(run, playbook, step, iteration, Err(error), false, tx, now);
        }
        let Some(action) = self.inner.actions.get(&effect.action).cloned() else {
            let error = ActionError::permanent(format!(
                "action `{}` is not available: its connector is not configured",
                effect.action
            ));
            return self.complete(run, playbook, step, iteration, Err(error), false, tx, now);
        };
        effect.attempts += 1;
        tx.batch.put(Key::Effect(&key), &effect);
        let attempt = state(run, step).attempt.max(1);
        tx.audit(
            run,
            now,
            "step_intent",
            Some(&step.id),
            json!({"action": effect.action, "idempotency_key": key, "input": effect.input, "attempt": attempt, "execution": effect.attempts}),
        );
        Ok(Flow::Call(Box::new(
            self.pending(run, step, effect, key, attempt, action),
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
        self.complete(
            run,
            playbook,
            step,
            pending.call.iteration,
            result,
            false,
            tx,
            now,
        )?;
        Ok(())
    }

    /// Applies a call's outcome to the step: retry later, or record it and move on.
    #[allow(clippy::too_many_arguments)]
    fn complete(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        step: &Step,
        iteration: usize,
        result: Result<Success, ActionError>,
        fatal: bool,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<Flow, Error> {
        let attempt = state(run, step).attempt.max(1);
        if let Err(ActionError::Retryable {
            message,
            retry_after,
        }) = &result
            && !fatal
            && attempt < max_attempts(step.retry.as_ref())
        {
            let key = idempotency_key(&run.id, &step.id, iteration);
            let delay = retry_after.unwrap_or_else(|| backoff(step.retry.as_ref(), attempt, &key));
            let due = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            let state = state(run, step);
            state.attempt = attempt + 1;
            state.status = StepStatus::Waiting;
            state.in_flight = Some(iteration);
            state.error = Some(message.clone());
            self.set_timer(
                run,
                tx,
                due,
                Timer::Retry {
                    step: step.id.clone(),
                },
            );
            run.status = RunStatus::Waiting;
            tx.audit(
                run,
                now,
                "step_retry",
                Some(&step.id),
                json!({"error": message, "attempt": attempt, "next_attempt_at": due}),
            );
            return Ok(Flow::Stop);
        }
        let (status, output, error) = match result {
            Ok(success) if success.already_done => (StepStatus::AlreadyDone, success.output, None),
            Ok(success) => (StepStatus::Succeeded, success.output, None),
            Err(error) => (StepStatus::Failed, Value::Null, Some(error.to_string())),
        };
        self.complete_with(
            run, playbook, step, iteration, status, output, error, fatal, tx, now,
        )
    }

    /// Records the final outcome of one call (one item of a `foreach`, or the whole step).
    #[allow(clippy::too_many_arguments)]
    fn complete_with(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        step: &Step,
        iteration: usize,
        status: StepStatus,
        output: Value,
        error: Option<String>,
        fatal: bool,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<Flow, Error> {
        if step.foreach.is_none() {
            return self.finish_step(run, playbook, step, status, output, error, fatal, tx, now);
        }
        let current = state(run, step);
        current.in_flight = None;
        current.attempt = 0;
        current.status = StepStatus::Pending;
        current.item_results.push(ItemResult {
            status,
            output,
            error: error.clone(),
        });
        if status == StepStatus::Failed && (fatal || !step.continue_on_error) {
            let outputs: Vec<Value> = state(run, step)
                .item_results
                .iter()
                .map(|item| item.output.clone())
                .collect();
            let error = error.map(|error| format!("item {iteration}: {error}"));
            return self.finish_step(
                run,
                playbook,
                step,
                StepStatus::Failed,
                Value::Array(outputs),
                error,
                fatal,
                tx,
                now,
            );
        }
        Ok(Flow::Continue)
    }

    /// Sets a step's final status; a failure fails the run unless the step continues on error.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_step(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        step: &Step,
        status: StepStatus,
        output: Value,
        error: Option<String>,
        fatal: bool,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<Flow, Error> {
        let state = state(run, step);
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
        tx.event(
            run,
            now,
            kind,
            Some(&step.id),
            json!({"status": status.as_str(), "error": error}),
        );
        if status != StepStatus::Failed || (!fatal && step.continue_on_error) {
            return Ok(Flow::Continue);
        }
        self.fail_run(run, playbook, &step.id, error.unwrap_or_default(), tx, now)?;
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

    fn start_wait(
        &self,
        run: &mut Run,
        playbook: &Playbook,
        step: &Step,
        input: &Value,
        tx: &mut Tx,
        now: DateTime<Utc>,
    ) -> Result<Flow, Error> {
        let due = match (
            input.get("for").and_then(Value::as_str),
            input.get("until").and_then(Value::as_str),
        ) {
            (Some(duration), None) => crate::playbook::parse_duration(duration).map(|duration| {
                now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
            }),
            (None, Some(until)) => DateTime::parse_from_rfc3339(until)
                .map(|until| until.with_timezone(&Utc))
                .map_err(|error| format!("`until` is not an RFC 3339 time: {error}")),
            _ => Err("`wait` needs exactly one of `for` and `until`".to_owned()),
        };
        let due = match due {
            Ok(due) => due,
            Err(error) => {
                return self.complete(
                    run,
                    playbook,
                    step,
                    0,
                    Err(ActionError::permanent(error)),
                    false,
                    tx,
                    now,
                );
            }
        };
        self.set_timer(
            run,
            tx,
            due,
            Timer::Wait {
                step: step.id.clone(),
            },
        );
        state(run, step).status = StepStatus::Waiting;
        run.status = RunStatus::Waiting;
        tx.event(
            run,
            now,
            RunEventKind::Waiting,
            Some(&step.id),
            json!({"until": due}),
        );
        Ok(Flow::Stop)
    }

    /// Removes every timer of a run and closes its undecided gates (the run ends or fails).
    pub(super) fn clear_timers_and_gates(&self, run: &mut Run, tx: &mut Tx) -> Result<(), Error> {
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
        for mut gate in stored {
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
        run.cancelled = reason.clone();
        self.clear_timers_and_gates(run, tx)?;
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
        let run = Run::new(&current, Some(&queued.finding), now, mode);
        self.start_run(tx, &current, run, ended.key.clone(), vars, now)?;
        Ok(())
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
        run.id = uuid::Uuid::now_v7().to_string();
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
