//! Restarting a failed run from the step that failed it, on behalf of an operator: the run goes
//! on under the same id, so its timeline, its audit entries and its effect journal stay one
//! story. The failed step runs again as a new attempt with the same idempotency key (a call
//! that was journaled is executed again with its journaled input, exactly as after a crash, so
//! a revoke the far side did see is found done rather than repeated); the `on_failure` steps
//! that ran are forgotten, to run again should it fail again. A restart takes the run's slot for
//! its key back, so it is refused while another run of the playbook holds that slot.

use chrono::{DateTime, Utc};
use quench_proto::RunEventKind;
use serde_json::{Value, json};

use super::state::{Effect, Phase, RunStatus, StepState, StepStatus, Timer, idempotency_key};
use super::{Engine, Error, SAFETY_PLAYBOOK, Tx};
use crate::store::Key;

/// What a restart did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    NotFound,
    /// Only a failed run restarts; this one is so.
    NotFailed(RunStatus),
    /// It cannot be restarted, and why (a sentence for the person asking).
    Refused(String),
    /// Running again from `step` (the iteration of a `foreach` step that failed).
    Restarted {
        step: String,
        iteration: usize,
    },
}

impl Engine {
    /// Restarts a failed run from its failed step (see the module's documentation), audited
    /// with `actor` and `reason`. The run is driven once the restart is durable.
    pub async fn restart(
        &self,
        run_id: &str,
        reason: &str,
        actor: &quench_proto::Actor,
    ) -> Result<Restart, Error> {
        // Intake's lock first, as intake takes it before any run's: a finding taken in
        // meanwhile cannot start a run for the key whose slot the restart takes back.
        let _intake = self.inner.intake.lock().await;
        let _guard = self.inner.locks.lock(run_id).await;
        let Some(mut run) = self.run(run_id)? else {
            return Ok(Restart::NotFound);
        };
        if run.status != RunStatus::Failed {
            return Ok(Restart::NotFailed(run.status));
        }
        if run.playbook == SAFETY_PLAYBOOK {
            return Ok(Restart::Refused(
                "a safety gate run is not restarted: the next mutating step asks again".into(),
            ));
        }
        let playbook = match self.version(&run.version) {
            Ok(playbook) => playbook,
            Err(error) => return Ok(Restart::Refused(error.to_string())),
        };
        let failure = run
            .failure
            .clone()
            .unwrap_or_else(|| super::state::Failure {
                step: String::new(),
                error: String::new(),
            });
        let Some(index) = playbook
            .steps
            .iter()
            .position(|step| step.id == failure.step)
        else {
            return Ok(Restart::Refused(format!(
                "the run failed outside its steps ({}); start a new run instead",
                failure.error
            )));
        };
        let step = &playbook.steps[index];
        if step.action.name == crate::actions::FAIL {
            return Ok(Restart::Refused(format!(
                "step `{}` fails the run on purpose (action `fail`); a restart would fail again",
                step.id
            )));
        }
        if let Some(open) = self.open_run(&run.playbook, &run.key)?
            && open != run.id
        {
            return Ok(Restart::Refused(format!(
                "run {open} of `{}` is open for key `{}`; a key has one open run at a time",
                run.playbook, run.key
            )));
        }

        let now = self.now();
        let mut tx = Tx::default();
        let previous = run.steps.get(&step.id).cloned().unwrap_or_default();
        let (state, iteration) = restarted_state(&previous, now);
        let key = idempotency_key(&run.id, &step.id, iteration);
        let mut state = state;
        // A journaled call runs again from the journal (same input, same key); a step that
        // failed before its call (a template, a check, a gate) starts over.
        if let Some(mut effect) = self.inner.store.get::<Effect>(Key::Effect(&key))? {
            effect.result = None;
            effect.attempts = 0;
            tx.batch.put(Key::Effect(&key), &effect);
            state.status = StepStatus::Running;
            state.in_flight = Some(iteration);
        }
        tx.audit(
            &run,
            now,
            "run_restart_requested",
            Some(&step.id),
            json!({
                "reason": reason,
                "failed": failure.error,
                "iteration": iteration,
                "idempotency_key": key,
                "attempts_before": previous.attempt,
            }),
        );
        tx.batch.amend_last_audit(|draft| {
            draft.actor = Some(serde_json::to_value(actor).unwrap_or(Value::Null));
        });
        // The steps after the failed one never ran; the `on_failure` steps run again should it
        // fail again.
        for later in &playbook.steps[index + 1..] {
            run.steps.remove(&later.id);
        }
        for handler in &playbook.on_failure {
            run.steps.remove(&handler.id);
        }
        run.steps.insert(step.id.clone(), state);
        run.status = RunStatus::Running;
        run.phase = Phase::Main;
        run.cursor = index;
        run.failure = None;
        if let Some(ended) = run.ended_at.take() {
            tx.batch.delete(Key::Ended(ended, &run.id));
        }
        run.cancelled = None;
        // The run's `timeout` counts again from the restart.
        run.deadline = playbook.timeout.map(|timeout| {
            now + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX)
        });
        if let Some(deadline) = run.deadline {
            self.set_timer(&mut run, &mut tx, deadline, Timer::RunTimeout);
        }
        tx.batch.put(Key::Open(&run.playbook, &run.key), &run.id);
        tx.event(
            &run,
            now,
            RunEventKind::RunRestarted,
            Some(&step.id),
            json!({"reason": reason, "iteration": iteration}),
        );
        tx.save(&mut run, now);
        tx.to_drive.push(run.id.clone());
        let step = step.id.clone();
        self.commit(tx).await?;
        Ok(Restart::Restarted { step, iteration })
    }
}

/// The failed step's state for its restart, and the iteration that runs again: a `foreach`
/// step goes on from the item that failed it (the items before it keep their results; a list
/// that could not be made is made again).
fn restarted_state(previous: &StepState, now: DateTime<Utc>) -> (StepState, usize) {
    let iteration = previous
        .item_results
        .iter()
        .position(|item| item.status == StepStatus::Failed)
        .unwrap_or(previous.item_results.len());
    let mut item_results = previous.item_results.clone();
    item_results.truncate(iteration);
    let items = if item_results.is_empty() {
        None
    } else {
        previous.items.clone()
    };
    let state = StepState {
        status: StepStatus::Pending,
        attempt: 1,
        started_at: previous.started_at.or(Some(now)),
        items,
        item_results,
        requests: previous.requests.clone(),
        restarts: previous.restarts.saturating_add(1),
        ..StepState::default()
    };
    (state, iteration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::ItemResult;

    fn item(status: StepStatus) -> ItemResult {
        ItemResult {
            status,
            output: Value::Null,
            error: None,
        }
    }

    #[test]
    fn a_foreach_step_goes_on_from_the_item_that_failed_it() {
        let now = Utc::now();
        let previous = StepState {
            status: StepStatus::Failed,
            attempt: 3,
            items: Some(vec![json!(1), json!(2), json!(3)]),
            item_results: vec![item(StepStatus::Succeeded), item(StepStatus::Failed)],
            restarts: 1,
            ..StepState::default()
        };
        let (state, iteration) = restarted_state(&previous, now);
        assert_eq!(iteration, 1);
        assert_eq!(state.item_results.len(), 1);
        assert_eq!(state.items, previous.items);
        assert_eq!(state.status, StepStatus::Pending);
        assert_eq!(state.attempt, 1);
        assert_eq!(state.restarts, 2);
        assert_eq!(state.error, None);
    }

    #[test]
    fn a_list_that_could_not_be_made_is_made_again() {
        let previous = StepState {
            status: StepStatus::Failed,
            items: Some(Vec::new()),
            error: Some("`foreach` failed".into()),
            ..StepState::default()
        };
        let (state, iteration) = restarted_state(&previous, Utc::now());
        assert_eq!(iteration, 0);
        assert_eq!(state.items, None);
        assert_eq!(state.restarts, 1);
    }
}
