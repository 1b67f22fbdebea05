//! Transactions: one commit's worth of changes with the run events it emits, the runs it ends
//! (logged once durable) and the runs it wakes (queued once durable).

use chrono::{DateTime, Utc};
use quench_proto::RunEventKind;
use serde_json::Value;

use super::drive::Handoff;
use super::state::{self, Run, RunStatus};
use super::{Engine, Error};
use crate::store::{AuditDraft, Batch, Key};

impl Engine {
    /// Commits a transaction, publishes its run events and queues the runs it woke.
    pub(super) async fn commit(&self, tx: Tx) -> Result<(), Error> {
        let submitted = self.submit(tx).await?;
        self.settle(submitted).await
    }

    /// Queues a transaction's batch for the committer (in order) without waiting for the disk.
    pub(super) async fn submit(&self, tx: Tx) -> Result<Submitted, Error> {
        let Tx {
            batch,
            events,
            ended,
            to_drive,
            timers,
            handoff,
            holds_ended,
            ..
        } = tx;
        Ok(Submitted {
            pending: self.inner.store.submit(batch).await?,
            events,
            ended,
            to_drive,
            timers,
            handoff,
            holds_ended,
        })
    }

    /// Waits until a submitted transaction is durable, then publishes its run events, queues
    /// the runs it woke and wakes the timer loop when it set a timer.
    pub(super) async fn settle(&self, submitted: Submitted) -> Result<(), Error> {
        let Submitted {
            pending,
            events,
            ended,
            to_drive,
            timers,
            handoff,
            holds_ended,
        } = submitted;
        pending.wait().await?;
        if timers {
            self.inner.timers.notify_one();
        }
        self.schedule_with(to_drive, handoff);
        if !holds_ended.is_empty() {
            // The runs waiting on a safety gate that ended resolve their steps.
            self.schedule(self.waiting_on(&holds_ended)?);
        }
        for ended in &ended {
            ended.log();
        }
        if !events.is_empty() {
            let metrics = crate::metrics::get();
            for event in &events {
                // Counted here, after the commit that made them true.
                metrics.run_event(&event.playbook, event.kind);
            }
            if let Some(sink) = &self.inner.events {
                sink.committed();
            }
        }
        Ok(())
    }
}

/// A transaction queued for the committer, not yet known to be durable.
#[derive(Debug)]
pub(super) struct Submitted {
    pub(super) pending: crate::store::Pending,
    pub(super) events: Vec<PendingEvent>,
    pub(super) ended: Vec<Ended>,
    pub(super) to_drive: Vec<String>,
    pub(super) timers: bool,
    pub(super) handoff: Option<Handoff>,
    pub(super) holds_ended: Vec<String>,
}

/// A run a transaction ends, for the log: a failed run is a WARN line with where and why, so an
/// operator reading the service log sees it without querying the API.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) run_id: String,
    pub(super) playbook: String,
    pub(super) status: RunStatus,
    /// The step that failed.
    pub(super) step: Option<String>,
    /// Why it failed or was cancelled.
    pub(super) reason: Option<String>,
}

impl Ended {
    pub(super) fn log(&self) {
        let step = self.step.as_deref().unwrap_or("-");
        let reason = self.reason.as_deref().unwrap_or("-");
        if self.status == RunStatus::Failed {
            tracing::warn!(run_id = %self.run_id, playbook = %self.playbook, step, reason, "run failed");
        }
        tracing::info!(run_id = %self.run_id, playbook = %self.playbook, status = self.status.as_str(), step, reason, "run ended");
    }
}

/// One commit's worth of changes, with the run events it will emit.
#[derive(Debug, Default)]
pub(super) struct Tx {
    pub(super) batch: Batch,
    pub(super) events: Vec<PendingEvent>,
    /// Runs this transaction ends, logged once it is durable.
    pub(super) ended: Vec<Ended>,
    /// Runs this transaction started or woke, to drive after the commit.
    pub(super) to_drive: Vec<String>,
    /// It sets a timer or a schedule's next tick (the timer loop recomputes its sleep).
    pub(super) timers: bool,
    /// The lock of a run in `to_drive`, held by whoever made this transaction, with the call
    /// whose intent this transaction journaled (see `Engine::drive_on`): handed to the worker
    /// that drives the run, so nothing else (a gate notice the same commit queued) takes the
    /// run between the commit that woke it and its next call.
    pub(super) handoff: Option<Handoff>,
    /// Advance only through steps that need no call (a run being started at intake).
    pub(super) no_calls: bool,
    /// Safety gate runs this transaction ends: the runs waiting on them are driven after it.
    pub(super) holds_ended: Vec<String>,
}

/// An audit entry about `run`.
fn run_draft(
    run: &Run,
    at: DateTime<Utc>,
    kind: &'static str,
    step: Option<&str>,
    detail: Value,
) -> AuditDraft {
    let mut draft = AuditDraft::new(at, kind, detail);
    draft.run_id = Some(run.id.clone());
    draft.playbook = Some(run.playbook.clone());
    draft.version = Some(run.version.clone());
    draft.step = step.map(str::to_owned);
    draft
}

/// A run event a transaction records (as an audit entry of its kind), for the metrics.
#[derive(Debug)]
pub(super) struct PendingEvent {
    pub(super) kind: RunEventKind,
    pub(super) playbook: String,
}

impl Tx {
    /// Appends an audit entry about `run`; returns its index within this transaction. An
    /// entry of a run event's kind is that event ([`Tx::event`]): the publisher reads the
    /// events from the audit log.
    pub(super) fn audit(
        &mut self,
        run: &Run,
        at: DateTime<Utc>,
        kind: &'static str,
        step: Option<&str>,
        detail: Value,
    ) -> usize {
        debug_assert!(
            RunEventKind::parse(kind).is_none(),
            "audit entry {kind:?} is a run event's kind: record it with Tx::event"
        );
        self.audit_draft(run_draft(run, at, kind, step, detail))
    }

    pub(super) fn audit_draft(&mut self, draft: AuditDraft) -> usize {
        self.batch.audit(draft);
        self.batch.audit_count() - 1
    }

    /// An audit entry that is also a run event.
    pub(super) fn event(
        &mut self,
        run: &Run,
        at: DateTime<Utc>,
        kind: RunEventKind,
        step: Option<&str>,
        detail: Value,
    ) {
        self.audit_draft(run_draft(run, at, kind.as_str(), step, detail));
        self.events.push(PendingEvent {
            kind,
            playbook: run.playbook.clone(),
        });
    }

    /// Writes the run and keeps its "active" marker and the store's run counters in step with
    /// its status.
    pub(super) fn save(&mut self, run: &mut Run, at: DateTime<Utc>) {
        run.updated_at = at;
        let count = run.count();
        let before = run.counted.unwrap_or(state::Count::Ended);
        if before != count {
            let open = count.open() - before.open();
            let awaiting = count.awaiting_approval() - before.awaiting_approval();
            if open != 0 {
                self.batch.count(state::COUNT_OPEN, open);
            }
            if awaiting != 0 {
                self.batch.count(state::COUNT_AWAITING_APPROVAL, awaiting);
            }
        }
        let written = run.counted.replace(count).is_some();
        self.batch.put(Key::Run(&run.id), &*run);
        if !written {
            // A new run: indexed by its key and playbook (for the runs search), for good.
            self.batch.put(Key::RunOfKey(&run.key, &run.id), &true);
            self.batch
                .put(Key::RunOfPlaybook(&run.playbook, &run.id), &true);
        }
        if run.status == RunStatus::Running {
            self.batch.put(Key::Active(&run.id), &true);
        } else if written {
            self.batch.delete(Key::Active(&run.id));
        }
    }
}
