//! The store: the only place run state lives, behind one interface sized to what the engine and
//! the admin API need — [`Store::commit`] of a [`Batch`] that is applied atomically, reads by
//! typed [`Key`], and named queries (due timers, active runs, queued findings, gates of a run,
//! pages of runs, pages of audit entries). [`Store`] is the cheap handle callers hold; it does the
//! typed (JSON) decoding over a `Backend`, which deals in bytes and typed key parts. Every
//! record belongs to a partition ([`Key::partition`]), so a backend that splits the store (N
//! runners over a NATS JetStream cluster; ARCHITECTURE.md) routes by it.
//!
//! The one backend today is `sled` (an embedded database with one committer thread); see
//! there for the layout on disk (a public format, version [`FORMAT_VERSION`]): keys made of a
//! family prefix and NUL-separated parts, values JSON.

mod audit;
mod key;
mod sled;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use audit::{
    AuditDraft, AuditEntry, AuditRef, Segment, Verification, parse_stored, verify_segment,
};
pub use key::{ENDED_INDEX, EVENTS_PUBLISHED, Key, Partition, RUN_INDEXES, TimerKey};

// The `store.sync` config value.
pub use quench_common::config::SyncMode;

/// A backend that compacts (sled: see `store/sled/compact.rs`) does so once its file is this
/// many times its size after the last compaction (or at open). 2 bounds the disk to about
/// twice the live data (three times during a compaction, old and copy side by side) while
/// copying the live data at most once per as much written.
pub const COMPACT_FACTOR: u64 = 2;

/// The smallest [`StoreConfig::compact_floor`] worth a compaction: below it the store is never
/// compacted, whatever its ratio (a small store is not worth the copy and the pause). The
/// default.
pub const COMPACT_FLOOR: u64 = 256 * 1024 * 1024;

/// A [`StoreConfig::compact_floor`] that turns automatic compaction off (the store then compacts
/// only when asked, [`Store::compact`]). The default is [`COMPACT_FLOOR`]: in the 3,000,000
/// finding retention benchmark (`retain_ended = 1m`) compactions pause commits for 0.1–4 s and
/// the process stays under 0.9 GiB, while without them the file grows with everything written.
pub const COMPACT_OFF: u64 = u64::MAX;

/// Version of the on-disk layout; written at creation and checked at open.
pub const FORMAT_VERSION: u32 = 1;

/// One write as a backend applies it: a key and its new value, or its removal.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A commit as a [`CommitLog`] holds it: its position there, and its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCommit {
    pub position: u64,
    pub writes: Vec<Write>,
}

/// Where a store sends every commit, whole and in order, before it applies it: in cluster
/// mode, its partition's fenced journal on JetStream (`cluster::journal`). The store is then a
/// cache of the log: it records the position of the last commit it applied, and a store opened
/// again is brought up to date from the log ([`Store::apply_logged`]).
pub trait CommitLog: Send + fmt::Debug {
    /// Appends one commit's writes (the final ones: audit entries chained, counters summed)
    /// and returns its position once the log holds it durably. An error fails the store
    /// (fail-stop): the commit may or may not be in the log, no caller is told it is durable,
    /// and nothing more is written; the log is the truth a store opened again catches up with.
    fn append(&mut self, writes: &[Write]) -> Result<u64, String>;
}

/// Where and how the store keeps its data.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub sync: SyncMode,
    /// The backend's page cache; bounds memory whatever the number of runs.
    pub cache_bytes: u64,
    /// The store is compacted (its live data copied into a fresh file, see [`Store::compact`])
    /// once its file is larger than this and than [`COMPACT_FACTOR`] × its size after the last
    /// compaction or at open. Default [`COMPACT_FLOOR`] ([`COMPACT_OFF`] turns it off); not a
    /// `[store]` setting yet.
    pub compact_floor: u64,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            sync: SyncMode::Always,
            cache_bytes: 64 * 1024 * 1024,
            compact_floor: COMPACT_FLOOR,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    /// This process may not write the store (a read-only mount, another owner): a reader can
    /// still use [`Store::open_copy`].
    #[error("cannot open the store at {path} for writing: {source}")]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    /// Another process has the store open (the backend locks its files).
    #[error("the store at {path} is in use by another process (a running quench?)")]
    Locked { path: PathBuf },
    #[error("cannot copy the store at {path}: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store at {path} has format version {found}; this quench reads version {FORMAT_VERSION}"
    )]
    Format { path: PathBuf, found: String },
    #[error("store I/O failed: {0}")]
    Io(#[source] BackendError),
    #[error("cannot sync the store to disk: {0}")]
    Sync(#[source] std::io::Error),
    #[error("stored value under {key} is unreadable: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the store's committer has stopped")]
    Closed,
    /// A commit failed earlier: what was queued after it may rest on state that never reached
    /// the disk, so the store refuses every later commit until it is opened again.
    #[error("the store refuses writes after a failed commit ({0}); restart quench")]
    Failed(String),
    /// A compaction asked for ([`Store::compact`]) failed: the store goes on as it was, unless
    /// [`Store::failed`] says otherwise.
    /// The commit log refused a commit or did not say it holds it ([`CommitLog::append`]).
    #[error("the commit log did not take the commit ({0}); the store refuses writes")]
    Logged(String),
    #[error("the store could not be compacted: {0}")]
    Compaction(String),
}

/// A backend's own error, kept opaque: callers act on [`Error`]'s variants, and the message
/// is the backend's.
pub struct BackendError(Box<dyn std::error::Error + Send + Sync>);

impl BackendError {
    pub(crate) fn new(error: impl std::error::Error + Send + Sync + 'static) -> BackendError {
        BackendError(Box::new(error))
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, formatter)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, formatter)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What [`Store::prune_audit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pruned {
    /// Entries up to `seq` (whose hash is `hash`, the new checkpoint) were removed.
    Through { seq: u64, hash: String },
    /// No whole record ends by the entry given: nothing was removed.
    Nothing,
    /// The entry given is not stored with the hash given (or not stored): nothing was removed.
    NotThatHash,
}

/// One entry of a playbook's history: when a version became current, and who made it so
/// (`None` for entries recorded before quench kept that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookLoad {
    pub at: DateTime<Utc>,
    pub version: String,
    pub by: Option<String>,
}

/// Changes applied together or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    audit: Vec<AuditDraft>,
    /// Changes to the store's counters (`m/counters`), summed by the backend.
    counts: Vec<(&'static str, i64)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn put(&mut self, key: Key<'_>, value: &impl Serialize) -> &mut Batch {
        let bytes = serde_json::to_vec(value).expect("store values serialize to JSON");
        self.ops.push((key.encode(), Some(bytes)));
        self
    }

    pub fn delete(&mut self, key: Key<'_>) -> &mut Batch {
        self.ops.push((key.encode(), None));
        self
    }

    /// Deletes everything that belongs only to run `run`: its record, its active marker, its
    /// index entries (by key, by playbook, and by when it `ended`), its gates, its effect
    /// journal and its timeline index (an ended run has no timers; the keys as read from
    /// `store` now; the caller holds the run's lock so none is added meanwhile). Its audit
    /// entries stay in the log.
    pub fn delete_run(
        &mut self,
        store: &Store,
        run: &str,
        key: &str,
        playbook: &str,
        ended: Option<DateTime<Utc>>,
    ) -> Result<&mut Batch, Error> {
        self.ops.push((Key::Run(run).encode(), None));
        if let Some(ended) = ended {
            self.ops.push((Key::Ended(ended, run).encode(), None));
        }
        self.ops.push((Key::Active(run).encode(), None));
        self.ops.push((Key::RunOfKey(key, run).encode(), None));
        self.ops
            .push((Key::RunOfPlaybook(playbook, run).encode(), None));
        for key in store.backend.owned_by_run(run)? {
            self.ops.push((key, None));
        }
        Ok(self)
    }

    /// Appends an audit entry; the backend chains it to the previous one.
    pub fn audit(&mut self, draft: AuditDraft) -> &mut Batch {
        self.audit.push(draft);
        self
    }

    /// Changes the audit entry appended last (to add who acted once that is known).
    pub fn amend_last_audit(&mut self, amend: impl FnOnce(&mut AuditDraft)) {
        if let Some(draft) = self.audit.last_mut() {
            amend(draft);
        }
    }

    /// Audit entries appended so far.
    pub fn audit_count(&self) -> usize {
        self.audit.len()
    }

    /// Adds `delta` to a counter kept in the store (applied with the batch, by the backend's one
    /// writer, so concurrent batches never lose an update). A zero delta still creates it.
    pub fn count(&mut self, name: &'static str, delta: i64) -> &mut Batch {
        self.counts.push((name, delta));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.audit.is_empty() && self.counts.is_empty()
    }

    /// Moves everything from `other` into this batch, after what is here.
    pub fn append(&mut self, other: &mut Batch) {
        self.ops.append(&mut other.ops);
        self.audit.append(&mut other.audit);
        self.counts.append(&mut other.counts);
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The store's size on disk before, and after.
    pub before_bytes: u64,
    pub after_bytes: u64,
    /// The copy's size right after every live key was in (with what commits wrote into it
    /// meanwhile): the live data as sled stores it, which the next compaction is measured
    /// against.
    pub live_bytes: u64,
    /// How long the copy of the live data took; commits went on meanwhile.
    pub copying: std::time::Duration,
    /// How long commits waited: the copy brought up to date with what they wrote meanwhile,
    /// the old file closed, the copy renamed and opened.
    pub paused: std::time::Duration,
}

/// What a commit produced: the audit entries it appended, in order.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub audit: Vec<AuditRef>,
}

/// A batch queued for the backend's writer.
#[derive(Debug)]
pub struct Pending(Option<tokio::sync::oneshot::Receiver<Result<Committed, Error>>>);

impl Pending {
    /// Waits until the batch is durable (or failed).
    pub async fn wait(self) -> Result<Committed, Error> {
        match self.0 {
            None => Ok(Committed::default()),
            Some(reply) => reply.await.map_err(|_| Error::Closed)?,
        }
    }
}

/// A store some engines read but do not hold: in a cluster of several partitions, the estate
/// (partition 0's inventory and owner attributes) as a follower of partition 0's journal keeps
/// it on every runner. Empty until the follower's first pass, and while it starts over from a
/// snapshot: readers then read their own store instead.
#[derive(Debug, Clone, Default)]
pub struct Borrowed(Arc<std::sync::RwLock<Option<Store>>>);

impl Borrowed {
    /// The store, if there is one now (hold it only for a read).
    pub fn get(&self) -> Option<Store> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `store` the one read (or none).
    pub fn set(&self, store: Option<Store>) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = store;
    }
}

/// A cheap handle to the store; clones share one backend (for sled: one database and one
/// committer). The last clone dropped closes the backend, and returns once the store may be
/// opened again.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

/// A future a backend returns (boxed, so [`Backend`] stays object-safe).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stored value (JSON bytes) with the typed key part that names it among its family.
pub(crate) type Stored<K> = (K, Vec<u8>);

/// A `[safety]` ledger entry's key parts: when, and the call's idempotency key.
pub(crate) type SafetyUseKey = (DateTime<Utc>, String);

/// A lazy sequence a backend reads.
pub(crate) type Rows<'a, T> = Box<dyn Iterator<Item = Result<T, Error>> + 'a>;

/// Which runs [`Backend::runs`] reads, in which order (run ids are UUIDv7: id order is
/// creation order).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RunOrder<'a> {
    /// Runs whose id starts with `prefix`, newest first, before `before` (exclusive).
    NewestFirst {
        prefix: &'a str,
        before: Option<&'a str>,
    },
    /// Every run, oldest first, after `after` (exclusive).
    OldestFirst { after: Option<&'a str> },
    /// The runs an index lists, newest first, before `before` (exclusive).
    Indexed {
        index: RunIndex<'a>,
        before: Option<&'a str>,
    },
}

/// Which runs a [`Store::runs_page`] reads: those an index lists (else every run), whose id
/// starts with `prefix`, before the cursor `before` and not before `floor`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunsScan<'a> {
    pub index: Option<RunIndex<'a>>,
    pub prefix: &'a str,
    pub before: Option<&'a str>,
    pub floor: Option<&'a str>,
}

/// A secondary index of runs ([`Key::RunOfKey`], [`Key::RunOfPlaybook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunIndex<'a> {
    /// Runs of one run key.
    Key(&'a str),
    /// Runs of one playbook.
    Playbook(&'a str),
}

/// What a store backend does: atomic commits of a [`Batch`], reads by [`Key`], and the named
/// queries, all in bytes and typed key parts ([`Store`] decodes values). A backend places audit
/// entries in its chain, keeps the timeline index and the counters, and owns its files.
///
/// Shaped for a partitioned backend: every key names its partition ([`Key::partition`]), each
/// query reads one run, one run key or one playbook name — or merges partitions in id order
/// (runs) — and a batch is meant to touch one partition (the exceptions today are listed in
/// ARCHITECTURE.md).
/// The families of ids kept in time order, read oldest first ([`Store::older_than`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByTime {
    /// Taken-in finding ids, by when they were taken in ([`Key::SeenExpiry`]).
    Seen,
    /// Ended runs, by when they ended ([`Key::Ended`]).
    Ended,
}

pub(crate) trait Backend: Send + Sync + fmt::Debug {
    /// Queues a (non-empty) batch; batches are applied in the order they were submitted.
    fn submit(&self, batch: Batch) -> BoxFuture<'_, Result<Pending, Error>>;
    /// Cancelled when a commit has failed and the backend refuses writes.
    fn failed(&self) -> tokio_util::sync::CancellationToken;

    fn get(&self, key: &Key<'_>) -> Result<Option<Vec<u8>>, Error>;
    fn contains(&self, key: &Key<'_>) -> Result<bool, Error>;

    /// A run's gates: (step, value), by step.
    fn gates(&self, run: &str) -> Result<Vec<Stored<String>>, Error>;
    /// The keys of what only `run` owns besides its record and active marker: its gates, its
    /// effect journal and its timeline index.
    fn owned_by_run(&self, run: &str) -> Result<Vec<Vec<u8>>, Error>;
    /// Timers due at or before `now`, earliest first.
    fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Stored<TimerKey>>, Error>;
    fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error>;
    fn active_runs(&self) -> Result<Vec<String>, Error>;
    /// The oldest finding queued behind (playbook, key), with its sequence number.
    fn first_queued(&self, playbook: &str, key: &str) -> Result<Option<Stored<u64>>, Error>;
    /// Entries of a family kept by time that are older than `before`, oldest first.
    fn older_than(
        &self,
        family: ByTime,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, String)>, Error>;
    /// Runs as (id, value), lazily.
    fn runs<'a>(&'a self, order: RunOrder<'_>) -> Rows<'a, Stored<String>>;
    /// A playbook name's history: (when, version), oldest first.
    fn playbook_loads(&self, name: &str) -> Result<Vec<Stored<DateTime<Utc>>>, Error>;
    /// The last entry of a playbook name's history: (when, version).
    fn last_playbook_load(&self, name: &str) -> Result<Option<Stored<DateTime<Utc>>>, Error>;
    /// Disabled playbooks: (name, value).
    fn disabled_playbooks(&self) -> Result<Vec<Stored<String>>, Error>;
    /// The `[safety]` ledger, oldest first: (when, idempotency key) and value.
    fn safety_uses(&self) -> Result<Vec<Stored<SafetyUseKey>>, Error>;
    /// Runs waiting on safety gates: (gate run, waiting run) and value; of one gate's run, or
    /// of all.
    fn safety_waiters(&self, hold: Option<&str>) -> Result<Vec<Stored<(String, String)>>, Error>;

    /// Every open run: (playbook, run key) and the run id's value.
    fn open_runs(&self) -> Result<Vec<Stored<(String, String)>>, Error>;
    /// Inventory identities in id order, after `after` (exclusive) when given: id and value.
    fn identities<'a>(&'a self, after: Option<&str>) -> Rows<'a, Stored<String>>;
    /// An identity's history, oldest first: change sequence number and value.
    fn identity_history(&self, id: &str) -> Result<Vec<Stored<u64>>, Error>;
    /// Every finding the inventory published: (identity, risk) and value.
    fn inventory_findings(&self) -> Result<Vec<Stored<(String, String)>>, Error>;
    /// Every campaign: id and value.
    fn campaigns(&self) -> Result<Vec<Stored<String>>, Error>;
    /// A campaign's parts in order: part number and value.
    fn campaign_chunks(&self, id: &str) -> Result<Vec<Stored<u32>>, Error>;

    /// A run's audit entries, oldest first.
    fn run_audit(&self, run: &str) -> Result<Vec<AuditEntry>, Error>;
    /// The stored audit entries after sequence number `after`, in order: (sequence number,
    /// stored bytes `hash\nbody`).
    fn audit_entries_after(&self, after: u64) -> Rows<'_, (u64, Vec<u8>)>;
    /// See [`Store::audit_durable_seq`].
    fn audit_durable_seq(&self) -> u64;
    /// Stored audit entries newest first, with their hashes, before `before` when given.
    fn audit_newest_first(&self, before: Option<u64>) -> Rows<'_, (String, AuditEntry)>;
    /// The entry the stored chain follows: the last pruned one, or `(0, genesis)`.
    fn audit_checkpoint(&self) -> Result<(u64, String), Error>;
    fn verify_audit(&self) -> Result<Verification, Error>;
    /// See [`Store::prune_audit`].
    fn prune_audit<'a>(
        &'a self,
        through: u64,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<Pruned, Error>>;

    /// See [`Store::compact`].
    fn compact(&self) -> BoxFuture<'_, Result<Option<Compacted>, Error>>;

    /// See [`Store::logged_position`].
    fn logged_position(&self) -> Result<u64, Error>;
    /// See [`Store::apply_logged`].
    fn apply_logged(&self, commits: Vec<LoggedCommit>) -> BoxFuture<'_, Result<u64, Error>>;
    /// See [`Store::export_logged`].
    fn export_logged(&self) -> BoxFuture<'_, Result<LoggedCommit, Error>>;

    /// Bytes the store takes on disk (0 when it has no files of its own).
    fn size_on_disk(&self) -> Result<u64, Error>;
    fn path(&self) -> Option<&Path>;
}

/// A page of a listing, and where the next one starts (absent at the end).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl Store {
    /// Opens (or creates) the store; checks the format version.
    pub fn open(config: &StoreConfig) -> Result<Store, Error> {
        Ok(Store::over(sled::Sled::open(config)?))
    }

    /// Opens (or creates) the store as a cache of `log`: every commit is appended to it before
    /// it is applied (see [`CommitLog`]). Bring it up to date with [`Store::apply_logged`]
    /// before committing.
    pub fn open_logged(config: &StoreConfig, log: Box<dyn CommitLog>) -> Result<Store, Error> {
        Ok(Store::over(sled::Sled::open_logged(config, Some(log))?))
    }

    /// Opens a copy of the store at `config.path`, made in the empty directory `into`, for a
    /// reader that may not write the original (sled 0.34 has no read-only mode). The copy is
    /// made under a shared lock on the original's files, so no quench writes it meanwhile.
    pub fn open_copy(config: &StoreConfig, into: &Path) -> Result<Store, Error> {
        Ok(Store::over(sled::Sled::open_copy(config, into)?))
    }

    /// A store in a temporary directory that disappears on drop (playbook tests, unit tests).
    pub fn temporary() -> Result<Store, Error> {
        Ok(Store::over(sled::Sled::temporary()?))
    }

    fn over(backend: impl Backend + 'static) -> Store {
        Store {
            backend: Arc::new(backend),
        }
    }

    /// Applies a batch atomically and durably (per the sync mode); returns once it is on disk.
    pub async fn commit(&self, batch: Batch) -> Result<Committed, Error> {
        self.submit(batch).await?.wait().await
    }

    /// Queues a batch for the committer and returns once it is queued: batches are applied in
    /// the order they were submitted. [`Pending::wait`] returns once it is on disk.
    pub async fn submit(&self, batch: Batch) -> Result<Pending, Error> {
        if batch.is_empty() {
            return Ok(Pending(None));
        }
        self.backend.submit(batch).await
    }

    /// Cancelled when a commit has failed and the store refuses writes ([`Error::Failed`]).
    pub fn failed(&self) -> tokio_util::sync::CancellationToken {
        self.backend.failed()
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, key: Key<'_>) -> Result<Option<T>, Error> {
        match self.backend.get(&key)? {
            None => Ok(None),
            Some(bytes) => decode(&key, &bytes).map(Some),
        }
    }

    /// Reads one value as it will be once `batch` is committed: what the batch last wrote
    /// under `key` (a put, or a delete), else what the store holds. A transaction that reads
    /// back what it changed (a gate it decided, playbook state it set) sees its own change.
    pub fn get_after<T: DeserializeOwned>(
        &self,
        batch: &Batch,
        key: Key<'_>,
    ) -> Result<Option<T>, Error> {
        let encoded = key.encode();
        match batch
            .ops
            .iter()
            .rev()
            .find(|(written, _)| *written == encoded)
        {
            Some((_, None)) => Ok(None),
            Some((_, Some(bytes))) => decode(&key, bytes).map(Some),
            None => self.get(key),
        }
    }

    pub fn contains(&self, key: Key<'_>) -> Result<bool, Error> {
        self.backend.contains(&key)
    }

    /// The audit entries of a run, oldest first: its timeline.
    pub fn run_audit(&self, run: &str) -> Result<Vec<AuditEntry>, Error> {
        self.backend.run_audit(run)
    }

    /// Gates of a run.
    pub fn gates<T: DeserializeOwned>(&self, run: &str) -> Result<Vec<T>, Error> {
        self.backend
            .gates(run)?
            .into_iter()
            .map(|(step, value)| decode(&Key::Gate(run, &step), &value))
            .collect()
    }

    /// One gate of a run.
    pub fn gate<T: DeserializeOwned>(&self, run: &str, step: &str) -> Result<Option<T>, Error> {
        self.get(Key::Gate(run, step))
    }

    /// Timers due at or before `now`, earliest first.
    pub fn due_timers<T: DeserializeOwned>(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(TimerKey, T)>, Error> {
        self.backend
            .due_timers(now, limit)?
            .into_iter()
            .map(|(timer, value)| {
                let value = decode(&timer.key(), &value)?;
                Ok((timer, value))
            })
            .collect()
    }

    /// When the next timer falls due, if any.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        self.backend.next_due()
    }

    /// Ids of runs that were between steps at their last commit.
    pub fn active_runs(&self) -> Result<Vec<String>, Error> {
        self.backend.active_runs()
    }

    /// Runs whose id starts with `prefix` (all for `""`), newest first (run ids are UUIDv7, so
    /// key order is creation order), starting after `before` (exclusive) when given. Lazy: a
    /// caller reads only as many as it needs.
    pub fn runs_newest_first<T: DeserializeOwned>(
        &self,
        prefix: &str,
        before: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, T), Error>> + '_ {
        decode_runs(self.backend.runs(RunOrder::NewestFirst { prefix, before }))
    }

    /// Runs oldest first (by id: UUIDv7, so creation order), after `after` (exclusive) when
    /// given. Lazy.
    pub fn runs_oldest_first<T: DeserializeOwned>(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, T), Error>> + '_ {
        decode_runs(self.backend.runs(RunOrder::OldestFirst { after }))
    }

    /// A page of runs newest first: those whose id starts with `prefix`, before the cursor
    /// `before` and not before `floor` (ids are UUIDv7, so these bound creation time), that
    /// `keep` accepts — at most `limit`, examining at most `budget` runs (a filter that matches
    /// rarely returns a `next` cursor rather than reading everything).
    ///
    /// With an `index`, only the runs it lists are read (the id `prefix` is then a filter).
    pub fn runs_page<T: DeserializeOwned>(
        &self,
        scan: RunsScan<'_>,
        limit: usize,
        budget: usize,
        mut keep: impl FnMut(&T) -> bool,
    ) -> Result<Page<T>, Error> {
        let RunsScan {
            index,
            prefix,
            before,
            floor,
        } = scan;
        let runs = match index {
            Some(index) => decode_runs(self.backend.runs(RunOrder::Indexed { index, before })),
            None => decode_runs(self.backend.runs(RunOrder::NewestFirst { prefix, before })),
        };
        let mut items = Vec::new();
        let mut last = None;
        for (examined, item) in runs.enumerate() {
            if items.len() >= limit || examined >= budget {
                return Ok(Page { items, next: last });
            }
            let (id, run) = item?;
            if floor.is_some_and(|floor| id.as_str() < floor) {
                return Ok(Page { items, next: None });
            }
            let kept = id.starts_with(prefix) && keep(&run);
            last = Some(id);
            if kept {
                items.push(run);
            }
        }
        Ok(Page { items, next: None })
    }

    /// Whether the run indexes hold every stored run (see [`key::RUN_INDEXES`]).
    pub fn run_indexes_complete(&self) -> Result<bool, Error> {
        self.contains(Key::Meta(key::RUN_INDEXES))
    }

    /// The store's counters (see [`Batch::count`]); `None` when none was ever written.
    pub fn counters(&self) -> Result<Option<std::collections::BTreeMap<String, i64>>, Error> {
        self.get(Key::Meta(key::COUNTERS))
    }

    /// When a playbook name was loaded at which version, and by whom, oldest first.
    pub fn playbook_history(&self, name: &str) -> Result<Vec<PlaybookLoad>, Error> {
        let mut out = Vec::new();
        for (at, version) in self.backend.playbook_loads(name)? {
            let version = decode(&Key::PlaybookHistory(name, at), &version)?;
            let by = self.get(Key::PlaybookLoadedBy(name, at))?;
            out.push(PlaybookLoad { at, version, by });
        }
        Ok(out)
    }

    /// The version a playbook name was last loaded at (the end of its history).
    pub fn current_playbook_version(&self, name: &str) -> Result<Option<String>, Error> {
        self.backend
            .last_playbook_load(name)?
            .map(|(at, version)| decode(&Key::PlaybookHistory(name, at), &version))
            .transpose()
    }

    /// The source of a playbook version (by content hash), if stored.
    pub fn playbook_source(&self, version: &str) -> Result<Option<String>, Error> {
        self.get(Key::PlaybookVersion(version))
    }

    /// Names of the playbooks that are disabled, with what was recorded when they were.
    pub fn disabled_playbooks<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, Error> {
        self.backend
            .disabled_playbooks()?
            .into_iter()
            .map(|(name, value)| {
                let value = decode(&Key::PlaybookDisabled(&name), &value)?;
                Ok((name, value))
            })
            .collect()
    }

    /// The `[safety]` budget's ledger, oldest first: when, the idempotency key, the value.
    pub fn safety_uses<T: DeserializeOwned>(
        &self,
    ) -> Result<Vec<(DateTime<Utc>, String, T)>, Error> {
        self.backend
            .safety_uses()?
            .into_iter()
            .map(|((at, key), value)| {
                let value = decode(&Key::SafetyUse(at, &key), &value)?;
                Ok((at, key, value))
            })
            .collect()
    }

    /// Runs waiting on safety gates (the gate's run, the waiting run, the value): of the
    /// gate run `hold`, or of every gate.
    pub fn safety_waiters<T: DeserializeOwned>(
        &self,
        hold: Option<&str>,
    ) -> Result<Vec<(String, String, T)>, Error> {
        self.backend
            .safety_waiters(hold)?
            .into_iter()
            .map(|((hold, run), value)| {
                let value = decode(&Key::SafetyWait(&hold, &run), &value)?;
                Ok((hold, run, value))
            })
            .collect()
    }

    /// Every open run: (playbook, run key, run id).
    pub fn open_runs(&self) -> Result<Vec<(String, String, String)>, Error> {
        self.backend
            .open_runs()?
            .into_iter()
            .map(|((playbook, key), value)| {
                let run = decode(&Key::Open(&playbook, &key), &value)?;
                Ok((playbook, key, run))
            })
            .collect()
    }

    /// Inventory identities in id order after `after` (exclusive), decoded lazily.
    pub fn identities<T: DeserializeOwned>(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, T), Error>> + '_ {
        self.backend.identities(after).map(|item| {
            let (id, value) = item?;
            let value = decode(&Key::Identity(&id), &value)?;
            Ok((id, value))
        })
    }

    /// An identity's history, oldest first: (change sequence number, value).
    pub fn identity_history<T: DeserializeOwned>(&self, id: &str) -> Result<Vec<(u64, T)>, Error> {
        self.backend
            .identity_history(id)?
            .into_iter()
            .map(|(seq, value)| Ok((seq, decode(&Key::IdentityHistory(id, seq), &value)?)))
            .collect()
    }

    /// Every finding the inventory published: (identity, risk, value).
    pub fn inventory_findings<T: DeserializeOwned>(
        &self,
    ) -> Result<Vec<(String, String, T)>, Error> {
        self.backend
            .inventory_findings()?
            .into_iter()
            .map(|((id, risk), value)| {
                let value = decode(&Key::InventoryFinding(&id, &risk), &value)?;
                Ok((id, risk, value))
            })
            .collect()
    }

    /// Every campaign, in id order (ids are UUIDv7: the order they were started).
    pub fn campaigns<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, Error> {
        self.backend
            .campaigns()?
            .into_iter()
            .map(|(id, value)| Ok((id.clone(), decode(&Key::Campaign(&id), &value)?)))
            .collect()
    }

    /// A campaign's parts, in order.
    pub fn campaign_chunks<T: DeserializeOwned>(&self, id: &str) -> Result<Vec<(u32, T)>, Error> {
        self.backend
            .campaign_chunks(id)?
            .into_iter()
            .map(|(n, value)| Ok((n, decode(&Key::CampaignChunk(id, n), &value)?)))
            .collect()
    }

    /// Audit entries newest first, with their hashes: those before sequence number `before`
    /// (exclusive) when given that `keep` accepts, at most `limit`, examining at most `budget`
    /// entries. The second value is where to go on (the `before` of the next page), absent at
    /// the start of the log.
    pub fn audit_newest_first(
        &self,
        before: Option<u64>,
        limit: usize,
        budget: usize,
        mut keep: impl FnMut(&AuditEntry) -> bool,
    ) -> Result<AuditPage, Error> {
        self.audit_newest_first_until(before, limit, budget, |entry| {
            if keep(entry) { Scan::Keep } else { Scan::Skip }
        })
    }

    /// As [`Store::audit_newest_first`], with a `scan` that may also end the scan
    /// ([`Scan::Stop`]: no entry from here on, older, can match), which ends the log's pages.
    pub fn audit_newest_first_until(
        &self,
        before: Option<u64>,
        limit: usize,
        budget: usize,
        mut scan: impl FnMut(&AuditEntry) -> Scan,
    ) -> Result<AuditPage, Error> {
        let mut out = Vec::new();
        for (examined, item) in self.backend.audit_newest_first(before).enumerate() {
            let (hash, entry) = item?;
            let seq = entry.seq;
            match scan(&entry) {
                Scan::Keep => out.push((hash, entry)),
                Scan::Skip => {}
                Scan::Stop => return Ok((out, None)),
            }
            if out.len() >= limit || examined + 1 >= budget {
                return Ok((out, Some(seq).filter(|seq| *seq > 1)));
            }
        }
        Ok((out, None))
    }

    /// The oldest finding queued behind the open run of (playbook, key).
    pub fn first_queued<T: DeserializeOwned>(
        &self,
        playbook: &str,
        key: &str,
    ) -> Result<Option<(u64, T)>, Error> {
        self.backend
            .first_queued(playbook, key)?
            .map(|(seq, value)| Ok((seq, decode(&Key::Queued(playbook, key, seq), &value)?)))
            .transpose()
    }

    /// Up to `limit` entries of a family kept by time that are older than `before`, oldest
    /// first, as (time, id): seen finding ids (for pruning), ended runs (for purging).
    pub fn older_than(
        &self,
        family: ByTime,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, String)>, Error> {
        self.backend.older_than(family, before, limit)
    }

    /// Whether the ended-run index holds every ended run (see [`key::ENDED_INDEX`]).
    pub fn ended_index_complete(&self) -> Result<bool, Error> {
        self.contains(Key::Meta(key::ENDED_INDEX))
    }

    /// Every audit entry in order, as stored (records unpacked): its sequence number and bytes.
    pub fn audit_entries(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), Error>> + '_ {
        self.backend.audit_entries_after(0)
    }

    /// The stored audit entries after sequence number `after`, in order, as
    /// [`Store::audit_entries`] gives them.
    pub fn audit_entries_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), Error>> + '_ {
        self.backend.audit_entries_after(after)
    }

    /// The sequence number of the last audit entry known durable (0 before the first): what
    /// is read past it was applied and may still be lost to a crash, so nothing outside the
    /// store may be told of it yet (the run-event publisher reads up to here).
    pub fn audit_durable_seq(&self) -> u64 {
        self.backend.audit_durable_seq()
    }

    /// Recomputes the audit chain (from the prune checkpoint, if any) and names the first entry
    /// that does not fit.
    pub fn verify_audit(&self) -> Result<Verification, Error> {
        self.backend.verify_audit()
    }

    /// The entry the stored chain follows: the last pruned one, or `(0, genesis)`.
    pub fn audit_checkpoint(&self) -> Result<(u64, String), Error> {
        self.backend.audit_checkpoint()
    }

    /// The bodies of stored audit entries before `before` (as hashed: one JSON Lines line
    /// each), oldest first: an export segment (see [`verify_segment`]).
    pub fn audit_export(
        &self,
        before: u64,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), Error>> + '_ {
        self.audit_entries()
            .take_while(move |item| item.as_ref().map_or(true, |(seq, _)| *seq < before))
            .map(|item| {
                let (seq, stored) = item?;
                let body = stored
                    .iter()
                    .position(|byte| *byte == b'\n')
                    .map_or_else(Vec::new, |newline| stored[newline + 1..].to_vec());
                Ok((seq, body))
            })
    }

    /// Removes the audit records whose entries all come at or before `through`, which must be
    /// stored with hash `hash` (whoever prunes shows they hold the export that ends there),
    /// and records the last removed entry as the checkpoint `verify_audit` starts from.
    pub async fn prune_audit(&self, through: u64, hash: &str) -> Result<Pruned, Error> {
        self.backend.prune_audit(through, hash).await
    }

    /// Compacts the store now: its live data is copied into a fresh file (while commits go
    /// on), brought up to date with what they wrote meanwhile, and swapped in (commits wait for
    /// that part); returns once the swap is done. The backend also does this on its own once
    /// the file has outgrown the data (see [`StoreConfig::compact_floor`]). `None` for a store
    /// without files of its own.
    pub async fn compact(&self) -> Result<Option<Compacted>, Error> {
        self.backend.compact().await
    }

    /// On-disk size of the store directory, in bytes (0 for a temporary store).
    /// The position in its commit log of the last commit this store applied (0: none).
    pub fn logged_position(&self) -> Result<u64, Error> {
        self.backend.logged_position()
    }

    /// Applies commits read from the commit log, in order, as they are (nothing is appended
    /// to the log): those at or before [`Store::logged_position`] are skipped. Returns the
    /// position reached. For a store opened with [`Store::open_logged`], before it commits.
    pub async fn apply_logged(&self, commits: Vec<LoggedCommit>) -> Result<u64, Error> {
        self.backend.apply_logged(commits).await
    }

    /// Every key and value of the store as of its [`Store::logged_position`], read between two
    /// commits (commits sent meanwhile wait): a snapshot that, applied to an empty store with
    /// [`Store::apply_logged`], gives this store at that position.
    pub async fn export_logged(&self) -> Result<LoggedCommit, Error> {
        self.backend.export_logged().await
    }

    pub fn size_on_disk(&self) -> Result<u64, Error> {
        self.backend.size_on_disk()
    }

    pub fn path(&self) -> Option<&Path> {
        self.backend.path()
    }
}

fn decode<T: DeserializeOwned>(key: &Key<'_>, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        key: key.shown(),
        source,
    })
}

fn decode_runs<'a, T: DeserializeOwned>(
    rows: Rows<'a, Stored<String>>,
) -> impl Iterator<Item = Result<(String, T), Error>> + 'a {
    rows.map(|row| {
        let (id, value) = row?;
        let run = decode(&Key::Run(&id), &value)?;
        Ok((id, run))
    })
}

/// A page of audit entries with their hashes, and the `before` of the next page.
pub type AuditPage = (Vec<(String, AuditEntry)>, Option<u64>);

/// What a scan of the audit log does with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    Keep,
    Skip,
    /// Skip it and end the scan: no older entry can match.
    Stop,
}
