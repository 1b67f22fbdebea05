//! OCSF records of what quench did, on `quench.ocsf.<class>`: a Remediation Activity for each
//! mutating step's result, a Detection Finding update for each run's outcome. They are made by
//! the run-event publisher (`service::events`) from the events it reads out of the audit log,
//! with the run they are about read from the store, and published with the event — each
//! record's `Nats-Msg-Id` derived from its event's id, the publisher's position moving on only
//! once the stream took both — so a record is neither lost to an outage or a crash nor
//! published twice, and each partition makes the records of its own runs only.

use async_nats::jetstream;
use quench_proto::ocsf::{Approval, Outcome, Record, RunFacts, StepFacts, StepOutcome};
use quench_proto::{RunEvent, RunEventKind};

use crate::engine::Engine;
use crate::engine::state::{RunStatus, StepStatus, idempotency_key};
use crate::playbook::{Mode, Playbook};

/// The durable consumers that made the records before the publisher did (one, or one per
/// partition `quench-ocsf-<n>`): removed at start, so they do not keep events for nobody.
const OLD_CONSUMER: &str = "quench-ocsf";

/// Removes the consumer that made `slot`'s records in earlier versions, if it is there.
pub(super) async fn remove_old_consumer(
    jetstream: &jetstream::Context,
    slot: crate::cluster::partition::Slot,
) {
    let name = match slot.count {
        0 | 1 => OLD_CONSUMER.to_owned(),
        _ => format!("{OLD_CONSUMER}-{}", slot.index),
    };
    let Ok(stream) = jetstream
        .get_stream(quench_proto::subject::STREAM_EVENTS)
        .await
    else {
        return;
    };
    if stream.delete_consumer(&name).await.is_ok() {
        tracing::info!(consumer = %name, "removed the OCSF consumer of an earlier version: the run-event publisher makes the records now");
    }
}

/// What an event's records are made from: the partition's runs and playbooks.
#[derive(Debug, Clone)]
pub(super) struct Emitter {
    pub(super) engine: Engine,
}

/// The `Nats-Msg-Id` of an event's record.
pub(super) fn record_id(event_id: &str, record: &Record) -> String {
    format!("ocsf:{event_id}:{}", record.class.as_str())
}

impl Emitter {
    /// The records of one event: none for a step that changes nothing, a run that is gone
    /// (retention removed it) or a scheduled run's outcome.
    pub(super) fn records(&self, event: &RunEvent) -> Result<Vec<Record>, crate::engine::Error> {
        if !matches!(
            event.kind,
            RunEventKind::StepSucceeded
                | RunEventKind::StepFailed
                | RunEventKind::RunCompleted
                | RunEventKind::RunFailed
                | RunEventKind::RunCancelled
        ) {
            return Ok(Vec::new());
        }
        // Most steps change nothing (notes, messages, gates): known without reading the run.
        if matches!(
            event.kind,
            RunEventKind::StepSucceeded | RunEventKind::StepFailed
        ) {
            let playbook = self.engine.playbook_version(&event.playbook_version)?;
            if event
                .step
                .as_deref()
                .and_then(|step| mutating_action(&playbook, step))
                .is_none()
            {
                return Ok(Vec::new());
            }
        }
        let Some(run) = self.engine.run(&event.run_id)? else {
            return Ok(Vec::new());
        };
        let playbook = self.engine.playbook_version(&run.version)?;
        let approvals = approvals(&run, &playbook);
        let facts = RunFacts {
            event_id: &event.id,
            run_id: &run.id,
            playbook: &run.playbook,
            playbook_version: &run.version,
            audit_hash: &event.audit_hash,
            at: event.at,
            finding: run.finding.as_ref(),
            approvals: &approvals,
            dry_run: run.mode == Mode::DryRun,
            product_version: env!("CARGO_PKG_VERSION"),
        };
        let record = match event.kind {
            RunEventKind::StepSucceeded | RunEventKind::StepFailed => {
                let Some(step) = event.step.as_deref() else {
                    return Ok(Vec::new());
                };
                let Some(action) = mutating_action(&playbook, step) else {
                    return Ok(Vec::new());
                };
                let Some(state) = run.steps.get(step) else {
                    return Ok(Vec::new());
                };
                let outcome = match state.status {
                    StepStatus::Succeeded => StepOutcome::Succeeded,
                    StepStatus::AlreadyDone => StepOutcome::AlreadyDone,
                    StepStatus::DryRun => StepOutcome::DryRun,
                    StepStatus::Failed => StepOutcome::Failed,
                    // Skipped (its `if` was false), or not finished: nothing was done.
                    _ => return Ok(Vec::new()),
                };
                let command = if state.items.is_some() {
                    format!("{}/{step}", run.id)
                } else {
                    idempotency_key(&run.id, step, 0)
                };
                Some(facts.remediation(&StepFacts {
                    step,
                    action,
                    command,
                    outcome,
                    error: state.error.as_deref(),
                    requests: &state.requests,
                }))
            }
            RunEventKind::RunCompleted | RunEventKind::RunFailed | RunEventKind::RunCancelled => {
                let outcome = match run.status {
                    RunStatus::Completed => Outcome::Completed {
                        remediated: run.mode == Mode::Live && remediated(&run, &playbook),
                    },
                    RunStatus::Cancelled => Outcome::Cancelled {
                        reason: run.cancelled.clone().unwrap_or_default(),
                    },
                    _ => Outcome::Failed {
                        step: run
                            .failure
                            .as_ref()
                            .map(|f| f.step.clone())
                            .unwrap_or_default(),
                        error: run
                            .failure
                            .as_ref()
                            .map(|f| f.error.clone())
                            .unwrap_or_default(),
                    },
                };
                facts.finding_update(&outcome)
            }
            _ => None,
        };
        Ok(record.into_iter().collect())
    }
}

/// The action of `step` when it is one that changes something (`ActionSpec::mutates`).
fn mutating_action<'a>(playbook: &'a Playbook, step: &str) -> Option<&'a str> {
    playbook
        .steps
        .iter()
        .chain(&playbook.on_failure)
        .find(|candidate| candidate.id == step)
        .filter(|candidate| candidate.action.mutates)
        .map(|candidate| candidate.action.name)
}

/// Whether a mutating step of the run made its change (or found it made).
fn remediated(run: &crate::engine::state::Run, playbook: &Playbook) -> bool {
    run.steps.iter().any(|(id, state)| {
        matches!(
            state.status,
            StepStatus::Succeeded | StepStatus::AlreadyDone
        ) && mutating_action(playbook, id).is_some()
    })
}

/// The run's decided approval gates, in playbook order.
fn approvals(run: &crate::engine::state::Run, playbook: &Playbook) -> Vec<Approval> {
    playbook
        .steps
        .iter()
        .chain(&playbook.on_failure)
        .filter(|step| step.action.is_approval())
        .filter_map(|step| {
            let state = run.steps.get(&step.id)?;
            let choice = state.choice.clone()?;
            Some(Approval {
                step: step.id.clone(),
                choice,
                decided_by: state.decided_by.clone(),
                via: state.via.clone(),
            })
        })
        .collect()
}
