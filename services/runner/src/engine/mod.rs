//! The workflow engine: findings in, durable runs of playbooks out.
//!
//! Every change of run state is a [`store::Batch`] committed before anything else happens: an
//! effect's *intent* (with its idempotency key `run/step/iteration`) is durable before the call,
//! its result before the next step. A run that parks (on a gate, a `wait` or a retry backoff)
//! leaves only records and a timer in the store. After a crash, runs that were between steps are
//! driven again ([`Engine::recover`]) and an intent without a result is executed again with the
//! same key; timers that fell due while the process was down fire at start-up.
//!
//! The engine does no network I/O itself: actions are called through [`Actions`], and the run
//! events it emits go to an [`EventSink`].
//!
//! Concurrency: one lock per run (decisions, timers and driving of one run never interleave);
//! intake of findings is serialized, and commits of all runs are grouped by the store.

mod action;
mod clock;
mod drive;
mod gate;
mod intake;
mod locks;
mod notify;
mod render;
mod retention;
mod schedule;
mod scheduler;
pub mod state;
mod timers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use quench_proto::{RunEvent, RunEventKind, RunEventSchema};
use serde_json::Value;

pub use action::{Action, ActionError, ActionFuture, Actions, Call, Success};
pub use clock::{Clock, ManualClock, SystemClock};
pub use gate::{Cancel, DecisionOutcome, Defer, Refusal};
pub use intake::{FindingOutcome, Handling, Ingesting};
pub use notify::{Delivery, NoticeFuture, NoticeRequest, Notifier};
pub use render::{MAX_FOREACH, is_slack_text, preview};
pub use retention::Purged;
pub use schedule::{GRACE, ScheduleState, next_tick, upcoming};
pub use state::{Gate, GateMessage, NoticeKind, Run, RunStatus, StepState, StepStatus};

use crate::playbook::{self, Mode, Playbook};
use crate::store::{AuditDraft, Batch, Key, Store};

/// How the engine behaves; flags and config say this, playbooks do not.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The mode of playbooks that do not set one.
    pub mode: Mode,
    /// Every run is dry-run, whatever its playbook's `mode` says (`quench up --demo`).
    pub dry_run_only: bool,
    /// Approver groups: `group:<name>` → emails and Slack user ids.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Per-attempt deadline of a step without its own `timeout`.
    pub default_step_timeout: Duration,
    /// How long seen finding ids are remembered for de-duplication.
    pub seen_retention: Duration,
    /// Actions that cannot work here (see [`Playbook::blocked_by`]): a scheduled playbook that
    /// needs one is paused instead of failing a run at every tick.
    pub unavailable: Vec<(String, String)>,
    /// Runs driven at once; intake waits while this many more are queued (`[engine]
    /// max_inflight_runs`).
    pub max_inflight_runs: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            mode: Mode::Live,
            dry_run_only: false,
            groups: BTreeMap::new(),
            default_step_timeout: Duration::from_secs(300),
            seen_retention: Duration::from_secs(30 * 24 * 3600),
            unavailable: Vec::new(),
            max_inflight_runs: 256,
        }
    }
}

impl EngineConfig {
    /// The mode of a new run of `playbook`: dry-run when only dry runs are allowed, else the
    /// playbook's own, else the default.
    pub(crate) fn mode_of(&self, playbook: &Playbook) -> Mode {
        if self.dry_run_only {
            Mode::DryRun
        } else {
            playbook.mode.unwrap_or(self.mode)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("playbook version {version} is not in the store")]
    UnknownVersion { version: String },
    #[error("playbook version {version} no longer compiles: {message}")]
    Recompile { version: String, message: String },
    #[error("the engine is stopping")]
    Stopped,
}

/// Where run events go after their commit (NATS in the service; a list in tests).
pub trait EventSink: Send + Sync + std::fmt::Debug {
    fn publish(&self, events: Vec<RunEvent>);
}

/// Runs open and parked on approval, from the store's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCounts {
    /// Runs not ended (running or parked).
    pub open: i64,
    /// Runs parked on an approval gate.
    pub awaiting_approval: i64,
}

/// A cheap handle to the engine.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    actions: Actions,
    config: EngineConfig,
    /// The current playbooks, by name.
    playbooks: RwLock<Arc<BTreeMap<String, Arc<Playbook>>>>,
    /// Every version seen, by content hash (runs keep theirs).
    versions: Mutex<HashMap<String, Arc<Playbook>>>,
    locks: Arc<locks::RunLocks>,
    intake: tokio::sync::Mutex<()>,
    overlay: Mutex<intake::Overlay>,
    renderer: render::Renderer,
    events: Option<Arc<dyn EventSink>>,
    notifier: Option<Arc<dyn Notifier>>,
    /// The runs to drive.
    scheduler: Arc<scheduler::Scheduler>,
    /// Notified by every commit that sets a timer or a schedule, so the timer loop sleeps until
    /// the earliest one without polling.
    timers: tokio::sync::Notify,
}

impl Engine {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        actions: Actions,
        config: EngineConfig,
    ) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                scheduler: Arc::new(scheduler::Scheduler::new(config.max_inflight_runs)),
                timers: tokio::sync::Notify::new(),
                store,
                clock,
                actions,
                config,
                playbooks: RwLock::new(Arc::new(BTreeMap::new())),
                versions: Mutex::new(HashMap::new()),
                locks: Arc::default(),
                intake: tokio::sync::Mutex::new(()),
                overlay: Mutex::default(),
                renderer: render::Renderer::new(),
                events: None,
                notifier: None,
            }),
        }
    }

    /// The same engine, sending run events to `sink`. Call before sharing the engine.
    pub fn with_events(self, sink: Arc<dyn EventSink>) -> Engine {
        let mut inner =
            Arc::try_unwrap(self.inner).expect("with_events is called before the engine is shared");
        inner.events = Some(sink);
        Engine {
            inner: Arc::new(inner),
        }
    }

    /// The same engine, delivering gate notices through `notifier`. Call before sharing it.
    pub fn with_notifier(self, notifier: Arc<dyn Notifier>) -> Engine {
        let mut inner = Arc::try_unwrap(self.inner)
            .expect("with_notifier is called before the engine is shared");
        inner.notifier = Some(notifier);
        Engine {
            inner: Arc::new(inner),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Makes `playbooks` the current set. Each version is stored by content hash; a playbook
    /// whose current version changes (new, edited, or rolled back) gets a history entry and an
    /// audit entry naming `loaded_by`, and one that leaves the set an audit entry too. Runs
    /// already open keep the version they started with.
    pub async fn load_playbooks(
        &self,
        playbooks: Vec<Playbook>,
        loaded_by: &str,
    ) -> Result<(), Error> {
        let now = self.now();
        let previous = self.playbooks();
        let mut batch = Batch::new();
        let mut set = BTreeMap::new();
        for playbook in playbooks {
            let playbook = Arc::new(playbook);
            if !self
                .inner
                .store
                .contains(Key::PlaybookVersion(&playbook.version))?
            {
                batch.put(
                    Key::PlaybookVersion(&playbook.version),
                    &playbook.source.as_ref(),
                );
            }
            let current = self.inner.store.current_playbook_version(&playbook.name)?;
            if current.as_deref() != Some(playbook.version.as_str()) {
                batch.put(Key::PlaybookHistory(&playbook.name, now), &playbook.version);
                batch.put(Key::PlaybookLoadedBy(&playbook.name, now), &loaded_by);
                let mut draft = AuditDraft::new(
                    now,
                    "playbook_loaded",
                    serde_json::json!({"by": loaded_by, "previous": current}),
                );
                draft.playbook = Some(playbook.name.clone());
                draft.version = Some(playbook.version.clone());
                batch.audit(draft);
            }
            self.versions()
                .insert(playbook.version.clone(), playbook.clone());
            set.insert(playbook.name.clone(), playbook);
        }
        for (name, playbook) in previous.iter() {
            if !set.contains_key(name) {
                let mut draft = AuditDraft::new(
                    now,
                    "playbook_removed",
                    serde_json::json!({"by": loaded_by}),
                );
                draft.playbook = Some(name.clone());
                draft.version = Some(playbook.version.clone());
                batch.audit(draft);
            }
        }
        self.inner.store.commit(batch).await?;
        *self
            .inner
            .playbooks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
        // A new or changed schedule may fall due before the timer loop's current sleep ends.
        self.inner.timers.notify_one();
        Ok(())
    }

    /// Whether a playbook starts new runs (it does unless an operator disabled it).
    pub fn is_enabled(&self, name: &str) -> Result<bool, Error> {
        Ok(!self.inner.store.contains(Key::PlaybookDisabled(name))?)
    }

    /// Names of the disabled playbooks.
    pub fn disabled_playbooks(&self) -> Result<std::collections::BTreeSet<String>, Error> {
        Ok(self
            .inner
            .store
            .disabled_playbooks::<Value>()?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Enables or disables a playbook (a disabled one starts no new runs; its open runs go on).
    /// Persisted and audited with `actor`; returns false when it was already so.
    pub async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
        actor: &quench_proto::Actor,
    ) -> Result<bool, Error> {
        // Serialized with intake, so a batch sees the flag before or after, never half.
        let _intake = self.inner.intake.lock().await;
        if self.is_enabled(name)? == enabled {
            return Ok(false);
        }
        let now = self.now();
        let mut batch = Batch::new();
        if enabled {
            batch.delete(Key::PlaybookDisabled(name));
        } else {
            batch.put(
                Key::PlaybookDisabled(name),
                &serde_json::json!({"at": now, "by": actor.id}),
            );
        }
        let kind = if enabled {
            "playbook_enabled"
        } else {
            "playbook_disabled"
        };
        let mut draft = AuditDraft::new(now, kind, serde_json::json!({}));
        draft.playbook = Some(name.to_owned());
        draft.actor = Some(serde_json::to_value(actor).unwrap_or(Value::Null));
        batch.audit(draft);
        self.inner.store.commit(batch).await?;
        Ok(true)
    }

    /// A playbook version (content hash), from the cache or recompiled from its stored source.
    pub fn playbook_version(&self, version: &str) -> Result<Arc<Playbook>, Error> {
        self.version(version)
    }

    /// How many runs are open, and how many of them are parked on an approval gate: read from
    /// the counters the store keeps with every commit (one read, whatever the number of runs).
    pub fn run_counts(&self) -> Result<RunCounts, Error> {
        let counters = self.inner.store.counters()?.unwrap_or_default();
        let get = |name: &str| counters.get(name).copied().unwrap_or(0);
        Ok(RunCounts {
            open: get(state::COUNT_OPEN),
            awaiting_approval: get(state::COUNT_AWAITING_APPROVAL),
        })
    }

    /// Makes sure the store's run counters exist. A store written before they were kept is
    /// counted once here (a scan of every run); call it at start-up, before runs move.
    pub async fn ensure_run_counts(&self) -> Result<(), Error> {
        if self.inner.store.counters()?.is_some() {
            return Ok(());
        }
        let (mut open, mut awaiting) = (0i64, 0i64);
        for item in self.inner.store.runs_newest_first::<Run>("", None) {
            let (_, run) = item?;
            let count = run.count();
            open += count.open();
            awaiting += count.awaiting_approval();
        }
        let mut batch = Batch::new();
        batch.count(state::COUNT_OPEN, open);
        batch.count(state::COUNT_AWAITING_APPROVAL, awaiting);
        self.inner.store.commit(batch).await?;
        Ok(())
    }

    /// The current playbooks.
    /// The scheduled playbooks that are paused here, with why (see [`EngineConfig::unavailable`]).
    pub fn paused_schedules(&self) -> Vec<(String, String)> {
        self.playbooks()
            .values()
            .filter(|playbook| matches!(playbook.trigger, playbook::Trigger::Schedule(_)))
            .filter_map(|playbook| {
                playbook
                    .blocked_by(&self.inner.config.unavailable, self.inner.config.mode)
                    .map(|why| (playbook.name.clone(), why))
            })
            .collect()
    }

    /// The names of the approver groups the config defines (`group:<name>`).
    pub fn group_names(&self) -> std::collections::BTreeSet<String> {
        self.inner.config.groups.keys().cloned().collect()
    }

    pub fn playbooks(&self) -> Arc<BTreeMap<String, Arc<Playbook>>> {
        self.inner
            .playbooks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Playbook>>> {
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The playbook a run is pinned to, from the cache or recompiled from its stored source.
    fn version(&self, version: &str) -> Result<Arc<Playbook>, Error> {
        if let Some(playbook) = self.versions().get(version) {
            return Ok(playbook.clone());
        }
        let source: String = self
            .inner
            .store
            .get(Key::PlaybookVersion(version))?
            .ok_or_else(|| Error::UnknownVersion {
                version: version.to_owned(),
            })?;
        let compiled = playbook::compile(&source);
        let playbook = compiled.playbook.ok_or_else(|| Error::Recompile {
            version: version.to_owned(),
            message: compiled
                .diagnostics
                .first()
                .map_or_else(String::new, |d| d.message.clone()),
        })?;
        let playbook = Arc::new(playbook);
        self.versions().insert(version.to_owned(), playbook.clone());
        Ok(playbook)
    }

    /// Queues the runs that must be driven after a start: those that were between steps when
    /// the process stopped; returns them. (Timers that fell due meanwhile fire through
    /// [`Engine::fire_due`].)
    pub fn recover(&self) -> Result<Vec<String>, Error> {
        let runs = self.inner.store.active_runs()?;
        self.schedule(runs.iter().cloned());
        Ok(runs)
    }

    /// When the next timer falls due.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(self.inner.store.next_due()?)
    }

    /// Reads a run.
    pub fn run(&self, id: &str) -> Result<Option<Run>, Error> {
        let run: Option<Run> = self.inner.store.get(Key::Run(id))?;
        Ok(run.map(|mut run| {
            run.counted = Some(run.count());
            run
        }))
    }

    /// Commits a transaction, publishes its run events and queues the runs it woke.
    async fn commit(&self, tx: Tx) -> Result<(), Error> {
        let submitted = self.submit(tx).await?;
        self.settle(submitted).await
    }

    /// Queues a transaction's batch for the committer (in order) without waiting for the disk.
    async fn submit(&self, tx: Tx) -> Result<Submitted, Error> {
        let Tx {
            batch,
            events,
            ended,
            to_drive,
            timers,
            ..
        } = tx;
        Ok(Submitted {
            pending: self.inner.store.submit(batch).await?,
            events,
            ended,
            to_drive,
            timers,
        })
    }

    /// Waits until a submitted transaction is durable, then publishes its run events, queues
    /// the runs it woke and wakes the timer loop when it set a timer.
    async fn settle(&self, submitted: Submitted) -> Result<(), Error> {
        let Submitted {
            pending,
            events,
            ended,
            to_drive,
            timers,
        } = submitted;
        let committed = pending.wait().await?;
        if timers {
            self.inner.timers.notify_one();
        }
        self.schedule(to_drive);
        for ended in &ended {
            ended.log();
        }
        if let Some(sink) = &self.inner.events
            && !events.is_empty()
        {
            let events = events
                .into_iter()
                .map(|pending| RunEvent {
                    schema: RunEventSchema::V1,
                    id: uuid::Uuid::now_v7().to_string(),
                    kind: pending.kind,
                    run_id: pending.run_id,
                    playbook: pending.playbook,
                    playbook_version: pending.version,
                    finding_key: pending.key,
                    step: pending.step,
                    at: pending.at,
                    audit_hash: committed
                        .audit
                        .get(pending.audit_index)
                        .map(|r| r.hash.clone())
                        .unwrap_or_default(),
                })
                .collect();
            sink.publish(events);
        }
        Ok(())
    }
}

/// A transaction queued for the committer, not yet known to be durable.
#[derive(Debug)]
struct Submitted {
    pending: crate::store::Pending,
    events: Vec<PendingEvent>,
    ended: Vec<Ended>,
    to_drive: Vec<String>,
    timers: bool,
}

/// A run a transaction ends, for the log: a failed run is a WARN line with where and why, so an
/// operator reading the service log sees it without querying the API.
#[derive(Debug)]
struct Ended {
    run_id: String,
    playbook: String,
    status: RunStatus,
    /// The step that failed.
    step: Option<String>,
    /// Why it failed or was cancelled.
    reason: Option<String>,
}

impl Ended {
    fn log(&self) {
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
struct Tx {
    batch: Batch,
    events: Vec<PendingEvent>,
    /// Runs this transaction ends, logged once it is durable.
    ended: Vec<Ended>,
    /// Runs this transaction started or woke, to drive after the commit.
    to_drive: Vec<String>,
    /// It sets a timer or a schedule's next tick (the timer loop recomputes its sleep).
    timers: bool,
    /// Advance only through steps that need no call (a run being started at intake).
    no_calls: bool,
}

#[derive(Debug)]
struct PendingEvent {
    kind: RunEventKind,
    run_id: String,
    playbook: String,
    version: String,
    key: String,
    step: Option<String>,
    at: DateTime<Utc>,
    audit_index: usize,
}

impl Tx {
    /// Appends an audit entry about `run`; returns its index within this transaction.
    fn audit(
        &mut self,
        run: &Run,
        at: DateTime<Utc>,
        kind: &'static str,
        step: Option<&str>,
        detail: Value,
    ) -> usize {
        let mut draft = AuditDraft::new(at, kind, detail);
        draft.run_id = Some(run.id.clone());
        draft.playbook = Some(run.playbook.clone());
        draft.version = Some(run.version.clone());
        draft.step = step.map(str::to_owned);
        self.audit_draft(draft)
    }

    fn audit_draft(&mut self, draft: AuditDraft) -> usize {
        self.batch.audit(draft);
        self.batch.audit_count() - 1
    }

    /// An audit entry that is also a run event.
    fn event(
        &mut self,
        run: &Run,
        at: DateTime<Utc>,
        kind: RunEventKind,
        step: Option<&str>,
        detail: Value,
    ) {
        let audit_index = self.audit(run, at, kind.as_str(), step, detail);
        self.events.push(PendingEvent {
            kind,
            run_id: run.id.clone(),
            playbook: run.playbook.clone(),
            version: run.version.clone(),
            key: run.key.clone(),
            step: step.map(str::to_owned),
            at,
            audit_index,
        });
    }

    /// Writes the run and keeps its "active" marker and the store's run counters in step with
    /// its status.
    fn save(&mut self, run: &mut Run, at: DateTime<Utc>) {
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
        if run.status == RunStatus::Running {
            self.batch.put(Key::Active(&run.id), &true);
        } else if written {
            self.batch.delete(Key::Active(&run.id));
        }
    }
}
