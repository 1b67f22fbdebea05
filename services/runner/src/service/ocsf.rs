//! OCSF records of what quench did, on `quench.ocsf.<class>`: a durable consumer reads quench's
//! own run events back from the events stream (step results and run outcomes only), reads the
//! run they are about from the store, and publishes what `quench_proto::ocsf` makes of them — a
//! Remediation Activity for each mutating step's result, a Detection Finding update for each
//! run's outcome. Each record's `Nats-Msg-Id` is derived from its event's id and the event is
//! acknowledged only after the stream acknowledged the record, so a crash publishes it again
//! and JetStream drops the repeat. Reading back from the stream, rather than from the commit
//! path, keeps this off the path of intake and decisions: an OCSF consumer that falls behind
//! holds up nothing but itself.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use quench_proto::ocsf::{Approval, Outcome, Record, RunFacts, StepFacts, StepOutcome};
use quench_proto::{RunEvent, RunEventKind, subject};
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::engine::Engine;
use crate::engine::state::{RunStatus, StepStatus, idempotency_key};
use crate::playbook::{Mode, Playbook};

/// The durable consumer's name on the events stream.
const CONSUMER: &str = "quench-ocsf";
/// The run events that become OCSF records.
const KINDS: [RunEventKind; 5] = [
    RunEventKind::StepSucceeded,
    RunEventKind::StepFailed,
    RunEventKind::RunCompleted,
    RunEventKind::RunFailed,
    RunEventKind::RunCancelled,
];
/// How long the stream may take to acknowledge a record before the event is offered again.
const PUBLISH_WITHIN: Duration = Duration::from_secs(5);
/// An event whose record cannot be published is offered again after this long.
const RETRY: Duration = Duration::from_secs(2);

type Consumer = consumer::Consumer<consumer::pull::Config>;

/// The OCSF publisher: the events consumer and what it reads runs from.
#[derive(Debug, Clone)]
pub(super) struct Emitter {
    pub(super) jetstream: jetstream::Context,
    pub(super) engine: Engine,
}

/// Creates (or updates) the durable consumer of the run events that become records. A new one
/// starts at the next event: the stream's older events are not re-told.
///
/// With several partitions each has a consumer of its own (`quench-ocsf-<n>`), which reads
/// every event and makes the records of its own runs' (an event names its playbook, not its
/// partition; the run id does).
pub(super) async fn consumer(
    jetstream: &jetstream::Context,
    slot: crate::cluster::partition::Slot,
) -> Result<Consumer, Error> {
    let name = match slot.count {
        0 | 1 => CONSUMER.to_owned(),
        _ => format!("{CONSUMER}-{}", slot.index),
    };
    let stream = jetstream
        .get_stream(subject::STREAM_EVENTS)
        .await
        .map_err(|error| {
            Error::Nats(format!(
                "cannot open stream {}: {error}",
                subject::STREAM_EVENTS
            ))
        })?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subjects: KINDS
                .iter()
                .map(|kind| format!("{}.*.{}", subject::EVENTS_PREFIX, kind.as_str()))
                .collect(),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1024,
            // A record that keeps failing (its run's playbook version no longer compiles) is
            // given up after this many tries, with a warning each time, not retried for ever.
            max_deliver: 20,
            ..Default::default()
        })
        .await
        .map_err(|error| Error::Nats(format!("cannot create consumer {name}: {error}")))
}

impl Emitter {
    /// Publishes the records of each event until shutdown.
    pub(super) async fn run(self, consumer: Consumer, shutdown: CancellationToken) {
        super::intake::each_chunk(consumer, shutdown, "ocsf", |messages| {
            let emitter = self.clone();
            async move {
                for message in messages {
                    emitter.handle(&message).await;
                }
            }
        })
        .await;
    }

    async fn handle(&self, message: &jetstream::Message) {
        let records = match serde_json::from_slice::<RunEvent>(&message.payload) {
            Ok(event) => match self.records(&event) {
                Ok(records) => records
                    .into_iter()
                    .map(|record| (event.id.clone(), record))
                    .collect(),
                Err(error) => {
                    tracing::warn!(%error, run_id = %event.run_id, "cannot read the run of an event for its OCSF record; it is offered again");
                    nak(message).await;
                    return;
                }
            },
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "a run event could not be read; no OCSF record for it");
                Vec::new()
            }
        };
        for (event_id, record) in records {
            if let Err(error) = self.publish(&event_id, &record).await {
                tracing::warn!(%error, event = %event_id, "an OCSF record could not be published; the event is offered again");
                nak(message).await;
                return;
            }
        }
        if let Err(error) = message.ack().await {
            tracing::debug!(%error, "ack failed; the event comes back and its records are dropped as repeats");
        }
    }

    async fn publish(&self, event_id: &str, record: &Record) -> Result<(), String> {
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("ocsf:{event_id}:{}", record.class.as_str());
        headers.insert(subject::HEADER_MSG_ID, id.as_str());
        let body = serde_json::to_vec(&record.body).map_err(|error| error.to_string())?;
        let ack = self
            .jetstream
            .publish_with_headers(record.subject(), headers, body.into())
            .await
            .map_err(|error| error.to_string())?;
        tokio::time::timeout(PUBLISH_WITHIN, ack)
            .await
            .map_err(|_| "the stream did not acknowledge in time".to_owned())?
            .map_err(|error| error.to_string())?;
        Ok(())
    }

    /// The records of one event: none for a step that changes nothing, a run that is gone
    /// (retention removed it) or a scheduled run's outcome.
    fn records(&self, event: &RunEvent) -> Result<Vec<Record>, crate::engine::Error> {
        let slot = self.engine.partition();
        if slot.count > 1
            && crate::cluster::partition::of_run_id(&event.run_id, slot.count) != Some(slot.index)
        {
            // Another partition's run: its own consumer makes the records.
            return Ok(Vec::new());
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

async fn nak(message: &jetstream::Message) {
    if let Err(error) = message.ack_with(jetstream::AckKind::Nak(Some(RETRY))).await {
        tracing::debug!(%error, "nak failed; the event comes back after the ack wait");
    }
}
