//! Taking findings in: drop ids already seen, match playbooks (kinds, then `where`), then start a
//! run or apply the playbook's key policy (`attach`, `skip`, `queue`, `replace`) and
//! `on_resolved` — all for a whole batch of findings in one commit, so the caller can
//! acknowledge the batch once it returns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use quench_proto::{Finding, Status};
use serde_json::{Value, json};

use super::locks::RunGuard;
use super::render::{Scope, context};
use super::schedule::Tick;
use super::state::{Queued, Run};
use super::{Engine, Error, Tx};
use crate::playbook::{Conflict, OnResolved, Overlap, Playbook, Trigger};
use crate::store::{AuditDraft, ByTime, Key};

/// Most attached finding ids remembered on a run.
const MAX_ATTACHED: usize = 100;

/// What became of one finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingOutcome {
    /// Its id was seen before: dropped.
    Duplicate,
    /// No playbook matched (audited).
    Unmatched,
    /// Handled by at least one playbook; what each did.
    Matched(Vec<(String, Handling)>),
}

/// What one matching playbook did with a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handling {
    Started {
        run: String,
    },
    Attached {
        run: String,
    },
    Skipped {
        run: String,
    },
    Queued {
        behind: String,
    },
    Replaced {
        cancelled: String,
        run: String,
    },
    /// A `resolved` finding cancelled the open run.
    Resolved {
        cancelled: String,
    },
    /// A `resolved` finding was recorded; nothing changed.
    ResolvedNoted,
    /// `where`, `vars` or `key` could not be evaluated (audited).
    Error(String),
    /// The playbook is disabled: no run was started (audited).
    Disabled,
}

/// Findings taken in whose commit is queued; [`Ingesting::finish`] waits until it is durable.
#[derive(Debug)]
pub struct Ingesting {
    engine: Engine,
    outcomes: Vec<FindingOutcome>,
    submitted: super::Submitted,
    generation: u64,
    /// The runs the batch changed stay locked until it is durable.
    held: Vec<RunGuard>,
}

impl Ingesting {
    /// Waits until the batch is durable; returns each finding's outcome (the engine drives the
    /// runs it started).
    pub async fn finish(self) -> Result<Vec<FindingOutcome>, Error> {
        let Ingesting {
            engine,
            outcomes,
            submitted,
            generation,
            held,
        } = self;
        let settled = engine.settle(submitted).await;
        engine.overlay().forget(generation);
        drop(held);
        settled?;
        Ok(outcomes)
    }
}

/// What batches being committed changed, for the batches prepared meanwhile: finding ids seen
/// and open runs by (playbook, key), each tagged with its batch.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    generation: u64,
    seen: HashMap<String, u64>,
    open: HashMap<(String, String), (Option<String>, u64)>,
}

impl Overlay {
    /// Forgets what a batch changed, now that the store has it.
    fn forget(&mut self, generation: u64) {
        self.seen.retain(|_, tag| *tag != generation);
        self.open.retain(|_, (_, tag)| *tag != generation);
    }
}

impl Engine {
    /// Takes a batch of parsed findings in one commit. Returns each finding's outcome; the
    /// runs they start are driven by the engine.
    pub async fn ingest(&self, findings: &[Finding]) -> Result<Vec<FindingOutcome>, Error> {
        self.begin_ingest(findings).await?.finish().await
    }

    /// Takes a batch of parsed findings in and queues its commit; returns without waiting for
    /// the disk, so the next batch can be prepared meanwhile. Batches are committed in the
    /// order they began; [`Ingesting::finish`] waits for this one.
    pub async fn begin_ingest(&self, findings: &[Finding]) -> Result<Ingesting, Error> {
        let _intake = self.inner.intake.lock().await;
        let now = self.now();
        let playbooks = self.playbooks();
        let disabled = self.disabled_playbooks()?;
        let mut tx = Tx::default();
        let mut seen = HashSet::new();
        let mut open: HashMap<(String, String), Option<String>> = HashMap::new();
        let mut held: HashMap<String, (RunGuard, Run)> = HashMap::new();
        let mut outcomes = Vec::with_capacity(findings.len());

        for finding in findings {
            if !seen.insert(finding.id.clone())
                || self.overlay().seen.contains_key(&finding.id)
                || self.inner.store.contains(Key::Seen(&finding.id))?
            {
                outcomes.push(FindingOutcome::Duplicate);
                continue;
            }
            tx.batch.put(Key::Seen(&finding.id), &now);
            tx.batch.put(Key::SeenExpiry(now, &finding.id), &true);
            tx.audit_draft(AuditDraft::new(
                now,
                "finding_received",
                json!({"id": finding.id, "kind": finding.kind, "key": finding.key, "status": finding.status, "severity": finding.severity, "source": finding.source}),
            ));
            let mut handled = Vec::new();
            for playbook in playbooks.values() {
                let Trigger::Finding(trigger) = &playbook.trigger else {
                    continue;
                };
                if !trigger.matches_kind(&finding.kind) {
                    continue;
                }
                // A disabled playbook starts nothing; a resolved finding still reaches its runs.
                if disabled.contains(&playbook.name) && finding.status != Status::Resolved {
                    let mut draft = AuditDraft::new(
                        now,
                        "finding_ignored",
                        json!({"finding": finding.id, "reason": "the playbook is disabled"}),
                    );
                    draft.playbook = Some(playbook.name.clone());
                    draft.version = Some(playbook.version.clone());
                    tx.audit_draft(draft);
                    handled.push((playbook.name.clone(), Handling::Disabled));
                    continue;
                }
                let handling = self
                    .handle(playbook, finding, &mut tx, &mut open, &mut held, now)
                    .await?;
                if let Some(handling) = handling {
                    handled.push((playbook.name.clone(), handling));
                }
            }
            if handled.is_empty() {
                tx.audit_draft(AuditDraft::new(
                    now,
                    "finding_unmatched",
                    json!({"id": finding.id, "kind": finding.kind}),
                ));
                outcomes.push(FindingOutcome::Unmatched);
            } else {
                outcomes.push(FindingOutcome::Matched(handled));
            }
        }
        self.prune_seen(&mut tx, now, findings.len())?;
        for (_, (_, run)) in held.iter_mut() {
            tx.save(run, now);
        }
        // Until this batch is durable, the next one sees its ids and open runs from here.
        let generation = {
            let mut overlay = self.overlay();
            overlay.generation += 1;
            let generation = overlay.generation;
            for id in seen {
                overlay.seen.insert(id, generation);
            }
            for (slot, run) in open {
                overlay.open.insert(slot, (run, generation));
            }
            generation
        };
        let submitted = match self.submit(tx).await {
            Ok(submitted) => submitted,
            Err(error) => {
                self.overlay().forget(generation);
                return Err(error);
            }
        };
        Ok(Ingesting {
            engine: self.clone(),
            outcomes,
            submitted,
            generation,
            held: held.into_values().map(|(guard, _)| guard).collect(),
        })
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.inner
            .overlay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The open run of a playbook for a key, counting batches not yet durable.
    pub(super) fn open_run(&self, playbook: &str, key: &str) -> Result<Option<String>, Error> {
        if let Some((run, _)) = self
            .overlay()
            .open
            .get(&(playbook.to_owned(), key.to_owned()))
        {
            return Ok(run.clone());
        }
        Ok(self.inner.store.get::<String>(Key::Open(playbook, key))?)
    }

    /// One finding against one playbook whose kinds match. `None` when `where` is false.
    async fn handle(
        &self,
        playbook: &Arc<Playbook>,
        finding: &Finding,
        tx: &mut Tx,
        open: &mut HashMap<(String, String), Option<String>>,
        held: &mut HashMap<String, (RunGuard, Run)>,
        now: DateTime<Utc>,
    ) -> Result<Option<Handling>, Error> {
        let audit = |kind: &'static str, detail: Value| {
            let mut draft = AuditDraft::new(now, kind, detail);
            draft.playbook = Some(playbook.name.clone());
            draft.version = Some(playbook.version.clone());
            draft
        };
        // A provisional run gives `where`, `vars` and `key` the same context a run would.
        let mut provisional = Run::new(
            playbook,
            Some(finding),
            now,
            self.inner.config.mode_of(playbook),
        );
        provisional.owner = self.owner_for(playbook, Some(finding))?;
        let scope = context(&provisional, playbook, now, Scope::default());
        if let Trigger::Finding(trigger) = &playbook.trigger
            && let Some(condition) = &trigger.condition
        {
            match self.inner.renderer.condition(condition, &scope) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(error) => {
                    tx.audit_draft(audit(
                        "match_error",
                        json!({"finding": finding.id, "error": format!("`where` failed: {error}")}),
                    ));
                    return Ok(Some(Handling::Error(error)));
                }
            }
        }
        let vars = match self
            .inner
            .renderer
            .value(&Value::Object(playbook.vars.clone()), &scope)
        {
            Ok(Value::Object(vars)) => vars,
            Ok(_) => serde_json::Map::new(),
            Err(error) => {
                tx.audit_draft(audit(
                    "match_error",
                    json!({"finding": finding.id, "error": format!("`vars` failed: {error}")}),
                ));
                return Ok(Some(Handling::Error(error)));
            }
        };
        let mut with_vars = provisional;
        with_vars.vars = vars.clone();
        let scope = context(&with_vars, playbook, now, Scope::default());
        let key = match self
            .inner
            .renderer
            .value(&Value::String(playbook.key.clone()), &scope)
        {
            Ok(Value::String(key)) if !key.is_empty() => key,
            Ok(other) => {
                let error = format!("`key` rendered to {other}, not a non-empty string");
                tx.audit_draft(audit(
                    "match_error",
                    json!({"finding": finding.id, "error": error}),
                ));
                return Ok(Some(Handling::Error(error)));
            }
            Err(error) => {
                tx.audit_draft(audit(
                    "match_error",
                    json!({"finding": finding.id, "error": format!("`key` failed: {error}")}),
                ));
                return Ok(Some(Handling::Error(error)));
            }
        };
        tx.audit_draft(audit(
            "finding_matched",
            json!({"finding": finding.id, "key": key}),
        ));

        let slot = (playbook.name.clone(), key.clone());
        let current = match open.get(&slot) {
            Some(current) => current.clone(),
            None => self.open_run(&playbook.name, &key)?,
        };

        if finding.status == Status::Resolved {
            return Ok(Some(match (current, playbook.on_resolved) {
                (Some(run_id), OnResolved::Cancel) => {
                    let reason = format!("finding {} reported the problem resolved", finding.id);
                    self.cancel_held(&run_id, &reason, tx, held, now).await?;
                    open.insert(slot, None);
                    Handling::Resolved { cancelled: run_id }
                }
                (current, _) => {
                    tx.audit_draft(audit(
                        "finding_resolved",
                        json!({"finding": finding.id, "key": key, "open_run": current}),
                    ));
                    Handling::ResolvedNoted
                }
            }));
        }

        let handling = match (current, playbook.on_conflict) {
            (None, _) => {
                let run = self.start_run(tx, playbook, with_vars, key, vars, now)?;
                open.insert(slot, (!run.status.is_terminal()).then(|| run.id.clone()));
                let id = run.id.clone();
                self.hold_new(run, held).await;
                Handling::Started { run: id }
            }
            (Some(run_id), Conflict::Attach) => {
                if let Some((_, run)) = self.hold(&run_id, held).await? {
                    run.attached.push(finding.id.clone());
                    if run.attached.len() > MAX_ATTACHED {
                        run.attached.remove(0);
                    }
                    tx.audit(
                        run,
                        now,
                        "finding_attached",
                        None,
                        json!({"finding": finding.id}),
                    );
                }
                Handling::Attached { run: run_id }
            }
            (Some(run_id), Conflict::Skip) => {
                tx.audit_draft(audit(
                    "finding_skipped",
                    json!({"finding": finding.id, "key": key, "open_run": run_id}),
                ));
                Handling::Skipped { run: run_id }
            }
            (Some(run_id), Conflict::Queue) => {
                let seq = now.timestamp_nanos_opt().unwrap_or_default() as u64
                    + tx.batch.audit_count() as u64;
                tx.batch.put(
                    Key::Queued(&playbook.name, &key, seq),
                    &Queued {
                        finding: finding.clone(),
                        queued_at: now,
                    },
                );
                tx.audit_draft(audit(
                    "finding_queued",
                    json!({"finding": finding.id, "key": key, "behind": run_id}),
                ));
                Handling::Queued { behind: run_id }
            }
            (Some(run_id), Conflict::Replace) => {
                let reason = format!("replaced by a run for finding {}", finding.id);
                self.cancel_held(&run_id, &reason, tx, held, now).await?;
                let run = self.start_run(tx, playbook, with_vars, key, vars, now)?;
                open.insert(slot, (!run.status.is_terminal()).then(|| run.id.clone()));
                let id = run.id.clone();
                self.hold_new(run, held).await;
                Handling::Replaced {
                    cancelled: run_id,
                    run: id,
                }
            }
        };
        Ok(Some(handling))
    }

    /// Starts a run of a playbook without a finding (as a scheduled playbook's tick would, now).
    /// Returns the run, or `None` when a run for its key is still open.
    pub async fn trigger(&self, name: &str) -> Result<Option<String>, Error> {
        self.trigger_tick(name, None, 0).await
    }

    /// Starts a run for a scheduled tick (or a manual trigger when `tick` is `None`), applying
    /// the schedule's `overlap`; the schedule's next state is committed with the run.
    pub(super) async fn trigger_tick(
        &self,
        name: &str,
        tick: Option<Tick>,
        missed: usize,
    ) -> Result<Option<String>, Error> {
        let _intake = self.inner.intake.lock().await;
        let now = self.now();
        let Some(playbook) = self.playbooks().get(name).cloned() else {
            return Ok(None);
        };
        let mut tx = Tx::default();
        let audit = |kind: &'static str, detail: Value| {
            let mut draft = AuditDraft::new(now, kind, detail);
            draft.playbook = Some(playbook.name.clone());
            draft.version = Some(playbook.version.clone());
            draft
        };
        if let Some(tick) = &tick {
            tx.batch.put(Key::Schedule(name), &tick.state);
            tx.timers = true;
            tx.audit_draft(audit(
                "schedule_tick",
                json!({"due": tick.due, "missed": missed, "next": tick.state.next}),
            ));
        }
        if !self.is_enabled(name)? {
            // The schedule moves on (no burst of catch-up runs when it is enabled again).
            tx.audit_draft(audit(
                "trigger_skipped",
                json!({"reason": "the playbook is disabled"}),
            ));
            self.commit(tx).await?;
            return Ok(None);
        }
        let mut provisional = Run::new(&playbook, None, now, self.inner.config.mode_of(&playbook));
        provisional.owner = self.owner_for(&playbook, None)?;
        let scope = context(&provisional, &playbook, now, Scope::default());
        let rendered = self
            .inner
            .renderer
            .value(&Value::Object(playbook.vars.clone()), &scope)
            .map(|vars| match vars {
                Value::Object(vars) => vars,
                _ => serde_json::Map::new(),
            })
            .and_then(|vars| {
                provisional.vars = vars.clone();
                let scope = context(&provisional, &playbook, now, Scope::default());
                match self
                    .inner
                    .renderer
                    .value(&Value::String(playbook.key.clone()), &scope)?
                {
                    Value::String(key) if !key.is_empty() => Ok((vars, key)),
                    other => Err(format!("`key` rendered to {other}, not a non-empty string")),
                }
            });
        let (vars, mut key) = match rendered {
            Ok(rendered) => rendered,
            Err(error) => {
                tx.audit_draft(audit("trigger_error", json!({"error": error})));
                self.commit(tx).await?;
                return Ok(None);
            }
        };
        let overlap = match (&playbook.trigger, &tick) {
            (Trigger::Schedule(schedule), Some(_)) => schedule.overlap,
            _ => Overlap::Skip,
        };
        let mut cancelled = None;
        if let Some(open) = self.open_run(&playbook.name, &key)? {
            match (overlap, &tick) {
                (Overlap::Allow, Some(tick)) => {
                    key = format!("{key}@{}", tick.due.to_rfc3339());
                }
                (Overlap::CancelPrevious, Some(tick)) => {
                    let guard = self.inner.locks.lock(&open).await;
                    if let Some(mut run) = self.run(&open)?
                        && !run.status.is_terminal()
                    {
                        let reason =
                            format!("replaced by the tick due at {}", tick.due.to_rfc3339());
                        self.cancel_locked(&mut run, &reason, &mut tx, now)?;
                        tx.save(&mut run, now);
                    }
                    cancelled = Some(guard);
                }
                _ => {
                    tx.audit_draft(audit("trigger_skipped", json!({"open_run": open})));
                    self.commit(tx).await?;
                    return Ok(None);
                }
            }
        }
        let run = self.start_run(&mut tx, &playbook, provisional, key, vars, now)?;
        self.commit(tx).await?;
        drop(cancelled);
        Ok(Some(run.id))
    }

    /// Locks and loads a run for the rest of the intake batch.
    async fn hold<'h>(
        &self,
        run_id: &str,
        held: &'h mut HashMap<String, (RunGuard, Run)>,
    ) -> Result<Option<&'h mut (RunGuard, Run)>, Error> {
        if !held.contains_key(run_id) {
            let guard = self.inner.locks.lock(run_id).await;
            let Some(run) = self.run(run_id)? else {
                return Ok(None);
            };
            held.insert(run_id.to_owned(), (guard, run));
        }
        Ok(held.get_mut(run_id))
    }

    /// Keeps a run started in this batch with the held ones, so a later finding of the same
    /// batch (same key: attach, replace, resolved) changes it before it is first written.
    async fn hold_new(&self, run: Run, held: &mut HashMap<String, (RunGuard, Run)>) {
        let guard = self.inner.locks.lock(&run.id).await;
        held.insert(run.id.clone(), (guard, run));
    }

    async fn cancel_held(
        &self,
        run_id: &str,
        reason: &str,
        tx: &mut Tx,
        held: &mut HashMap<String, (RunGuard, Run)>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        if let Some((_, run)) = self.hold(run_id, held).await?
            && !run.status.is_terminal()
        {
            let mut taken = run.clone();
            self.cancel_locked(&mut taken, reason, tx, now)?;
            // A run started earlier in this batch holds its slot only in the batch: free it here
            // (for a stored run `end` has done so already; a second delete changes nothing).
            tx.batch.delete(Key::Open(&taken.playbook, &taken.key));
            *run = taken;
        }
        Ok(())
    }

    /// Forgets seen finding ids older than the retention: up to twice as many as the commit
    /// takes in (at least 256), so forgetting outpaces intake at any batch size (a fixed 256
    /// per commit fell behind batches of 1,000 and the ids piled up), and a commit stays
    /// bounded.
    fn prune_seen(&self, tx: &mut Tx, now: DateTime<Utc>, taken: usize) -> Result<(), Error> {
        let retention = chrono::Duration::from_std(self.inner.config.seen_retention)
            .unwrap_or(chrono::Duration::MAX);
        let Some(before) = now.checked_sub_signed(retention) else {
            return Ok(());
        };
        for (at, id) in
            self.inner
                .store
                .older_than(ByTime::Seen, before, taken.saturating_mul(2).max(256))?
        {
            tx.batch.delete(Key::SeenExpiry(at, &id));
            tx.batch.delete(Key::Seen(&id));
        }
        Ok(())
    }
}
