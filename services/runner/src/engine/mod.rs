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
mod catalog;
mod clock;
mod drive;
mod gate;
mod intake;
mod locks;
mod notify;
mod render;
mod restart;
mod retention;
mod safety;
mod schedule;
mod scheduler;
pub mod state;
mod timers;
mod tx;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use action::{Action, ActionError, ActionFuture, Actions, Call, Success};
pub use clock::{Clock, ManualClock, SystemClock};
pub use gate::{Cancel, DecisionOutcome, Defer, Refusal};
pub use gate::{ITEMS_DECIDED, MAX_GATE_ITEMS};
pub use intake::{FindingOutcome, Handling, Ingesting};
pub use notify::{Delivery, NoticeFuture, NoticeRequest, Notifier};
pub use render::{MAX_FOREACH, is_slack_text, preview};
pub use restart::Restart;
pub use retention::Purged;
pub use safety::{
    ActionBudget, FreezeStatus, SAFETY_PLAYBOOK, SafetyConfig, SafetyConfigError, SafetyStatus,
};
pub use schedule::{GRACE, ScheduleState, next_tick, upcoming};
pub use state::{
    Gate, GateMessage, ItemDecision, NoticeKind, Run, RunStatus, StepState, StepStatus, item_id,
};

use crate::playbook::{Mode, Playbook};
use crate::store::{Batch, Key, Store};
use tx::{Ended, Submitted, Tx};

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
    /// The blast-radius rails (`[safety]`).
    pub safety: SafetyConfig,
    /// The config's links of the owner resolution chain (`[owners]`, `[teams]`).
    pub owners: Arc<crate::owners::Owners>,
    /// The partition this engine serves (cluster mode with several partitions): its run ids
    /// name it, and only partition 0's engine fires the schedules.
    pub partition: crate::cluster::partition::Slot,
    /// Where the estate (inventory, owner attributes) is read when this engine's store does
    /// not hold it: a cluster's partitions other than 0 read partition 0's, followed.
    pub estate: Option<crate::store::Borrowed>,
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
            safety: SafetyConfig::default(),
            owners: Arc::default(),
            partition: crate::cluster::partition::Slot::ALONE,
            estate: None,
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
    /// Cluster mode with several partitions routes each finding to the partition of its key,
    /// so a finding playbook's runs must be keyed by the finding key.
    #[error(
        "playbook {playbook}: `key` must be the finding key (leave it out) in a cluster of \
         {partitions} partitions: findings are routed by their key, so runs keyed otherwise \
         would open in several partitions at once"
    )]
    KeyAcrossPartitions { playbook: String, partitions: u32 },
    #[error("safety rails: {0}")]
    Safety(String),
}

/// Told after each commit that recorded run events. The events are the commit's audit
/// entries of event kinds; whoever publishes them reads them from the store (the service's
/// publisher, `service::events`), so a commit's events survive a crash or an outage of the
/// event stream.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    fn committed(&self);
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

/// A handle that does not keep the engine alive, for what the engine itself holds (an action
/// that needs the engine): a strong one would be a cycle, and the engine, its store and the
/// store's lock would outlive every other handle.
#[derive(Debug, Clone)]
pub struct WeakEngine {
    inner: std::sync::Weak<Inner>,
}

impl WeakEngine {
    /// The engine, while another handle keeps it.
    pub fn upgrade(&self) -> Option<Engine> {
        self.inner.upgrade().map(|inner| Engine { inner })
    }
}

#[derive(Debug)]
struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    actions: Actions,
    config: EngineConfig,
    catalog: catalog::Catalog,
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
    /// The `[safety]` rails and their budget ledger.
    rails: safety::Rails,
}

impl Engine {
    /// A handle that does not keep the engine alive ([`WeakEngine`]).
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine {
            inner: Arc::downgrade(&self.inner),
        }
    }

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
                rails: safety::Rails::new(config.safety.clone()),
                store,
                clock,
                actions,
                config,
                catalog: catalog::Catalog::default(),
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

    /// The partition this engine serves.
    pub fn partition(&self) -> crate::cluster::partition::Slot {
        self.inner.config.partition
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The config's links of the owner resolution chain.
    pub fn owners(&self) -> &crate::owners::Owners {
        &self.inner.config.owners
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
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

    /// Makes sure the run indexes (by key, by playbook, and ended runs by when they ended)
    /// list every stored run. A store written before an index was kept is indexed once here,
    /// in batches (a scan of every run); call it at start-up. Until it is done, searches read
    /// every run, as before, and a purge pass does it first.
    pub async fn ensure_run_indexes(&self) -> Result<(), Error> {
        const BATCH: usize = 1000;
        let store = &self.inner.store;
        let by_key = !store.run_indexes_complete()?;
        let ended = !store.ended_index_complete()?;
        if !by_key && !ended {
            return Ok(());
        }
        let mut indexed = 0usize;
        let mut after: Option<String> = None;
        loop {
            // A batch's runs are read before it is committed (the reader is not held across
            // the commit). A run that ends meanwhile indexes itself; one restarted meanwhile
            // leaves an entry that a purge finds stale and removes.
            let mut batch = Batch::new();
            let mut last = None;
            for item in store.runs_oldest_first::<Run>(after.as_deref()).take(BATCH) {
                let (id, run) = item?;
                if by_key {
                    batch.put(Key::RunOfKey(&run.key, &id), &true);
                    batch.put(Key::RunOfPlaybook(&run.playbook, &id), &true);
                }
                if let Some(at) = run.ended_at.filter(|_| ended && run.status.is_terminal()) {
                    batch.put(Key::Ended(at, &id), &true);
                }
                indexed += 1;
                last = Some(id);
            }
            let Some(last) = last else {
                batch.put(Key::Meta(crate::store::RUN_INDEXES), &true);
                batch.put(Key::Meta(crate::store::ENDED_INDEX), &true);
                store.commit(batch).await?;
                break;
            };
            store.commit(batch).await?;
            after = Some(last);
        }
        if indexed > 0 {
            tracing::info!(
                runs = indexed,
                by_key_and_playbook = by_key,
                by_end = ended,
                "stored runs indexed"
            );
        }
        Ok(())
    }

    /// Queues the runs that must be driven after a start: those that were between steps when
    /// the process stopped; returns them. (Timers that fell due meanwhile fire through
    /// [`Engine::fire_due`].)
    pub fn recover(&self) -> Result<Vec<String>, Error> {
        let mut runs = self.inner.store.active_runs()?;
        // Runs waiting on a safety gate resolve their step if the gate ended before a crash.
        runs.extend(self.all_waiting()?);
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
}
