//! The store: the only place run state lives. One narrow interface — typed keys, reads, and
//! [`Store::commit`] of a [`Batch`] that is applied atomically — so the engine never sees sled and
//! a distributed backend (JetStream KV) can be added behind the same surface.
//!
//! Layout (a public format, version [`FORMAT_VERSION`]): one sled tree, keys made of a family
//! prefix and NUL-separated parts ([`Key`]), values JSON. Timers are keyed by due time first, so
//! the next due timer is the first key of its family and a million parked runs cost disk, not a
//! scan at start-up.
//!
//! Writes go through one committer thread that groups concurrent batches into one sled batch,
//! flushes, and `fdatasync`s the log file when `sync = always` (sled 0.34's `flush` does not
//! fsync, and `flush_async` deadlocks with many calls in flight).

mod audit;
mod committer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use audit::{
    AuditDraft, AuditEntry, AuditRef, Segment, Verification, parse_stored, verify_segment,
};

// The `store.sync` config value.
pub use quench_common::config::SyncMode;

/// Version of the on-disk layout; written at creation and checked at open.
pub const FORMAT_VERSION: u32 = 1;

/// Where and how the store keeps its data.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub sync: SyncMode,
    /// sled's page cache; bounds memory whatever the number of runs.
    pub cache_bytes: u64,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            sync: SyncMode::Always,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// This process may not write the store (a read-only mount, another owner): a reader can
    /// still use [`Store::open_copy`].
    #[error("cannot open the store at {path} for writing: {source}")]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// Another process has the store open (sled locks its log file).
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
    Io(#[from] sled::Error),
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

/// A typed key. Families are separate prefixes; their parts are NUL-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// Layout version and other store metadata.
    Meta(&'a str),
    /// A run's record.
    Run(&'a str),
    /// Runs that were between steps (not parked) at their last commit: driven again at start-up.
    Active(&'a str),
    /// Index of a run's audit entries (its timeline): the records holding them, by their first
    /// sequence number. Written by the committer.
    RunAudit(&'a str, u64),
    /// An approval gate of a run.
    Gate(&'a str, &'a str),
    /// A durable timer, ordered by due time.
    Timer {
        due: DateTime<Utc>,
        run: &'a str,
        name: &'a str,
    },
    /// The open run for (playbook, key).
    Open(&'a str, &'a str),
    /// A finding waiting for the open run of its (playbook, key) to end (`on_conflict: queue`).
    Queued(&'a str, &'a str, u64),
    /// A finding id already taken in, and when.
    Seen(&'a str),
    /// Seen ids by time, for bounded retention.
    SeenExpiry(DateTime<Utc>, &'a str),
    /// The effect journal, by idempotency key `run/step/iteration`.
    Effect(&'a str),
    /// A playbook version's source, by content hash.
    PlaybookVersion(&'a str),
    /// When a playbook name was loaded at a version.
    PlaybookHistory(&'a str, DateTime<Utc>),
    /// Who made that version current (`quench serve`, `file change`, `SIGHUP`, `api:<token
    /// name>`), beside its history entry: a family of its own, so a store written by a quench
    /// that keeps it still reads in one that does not, and entries from before it read as unknown.
    PlaybookLoadedBy(&'a str, DateTime<Utc>),
    /// A scheduled playbook's next tick.
    Schedule(&'a str),
    /// A playbook's remembered values (`state.set`), by playbook name.
    PlaybookState(&'a str),
    /// A playbook that starts no new runs, by name (who disabled it, and when).
    PlaybookDisabled(&'a str),
    /// The audit log: records of entries, by the sequence number of their first entry.
    Audit(u64),
}

impl Key<'_> {
    fn encode(&self) -> Vec<u8> {
        fn parts(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut out = prefix.to_vec();
            for (index, part) in parts.iter().enumerate() {
                if index > 0 {
                    out.push(0);
                }
                out.extend_from_slice(part);
            }
            out
        }
        let millis = |time: &DateTime<Utc>| (time.timestamp_millis().max(0) as u64).to_be_bytes();
        match self {
            Key::Meta(name) => parts(b"m/", &[name.as_bytes()]),
            Key::Run(id) => parts(b"r/", &[id.as_bytes()]),
            Key::Active(id) => parts(b"x/", &[id.as_bytes()]),
            Key::RunAudit(run, seq) => parts(b"ar/", &[run.as_bytes(), &seq.to_be_bytes()]),
            Key::Gate(run, step) => parts(b"g/", &[run.as_bytes(), step.as_bytes()]),
            Key::Timer { due, run, name } => {
                let mut out = b"t/".to_vec();
                out.extend_from_slice(&millis(due));
                out.extend_from_slice(run.as_bytes());
                out.push(0);
                out.extend_from_slice(name.as_bytes());
                out
            }
            Key::Open(playbook, key) => parts(b"o/", &[playbook.as_bytes(), key.as_bytes()]),
            Key::Queued(playbook, key, seq) => parts(
                b"q/",
                &[playbook.as_bytes(), key.as_bytes(), &seq.to_be_bytes()],
            ),
            Key::Seen(id) => parts(b"f/", &[id.as_bytes()]),
            Key::SeenExpiry(at, id) => {
                let mut out = b"fx/".to_vec();
                out.extend_from_slice(&millis(at));
                out.extend_from_slice(id.as_bytes());
                out
            }
            Key::Effect(key) => parts(b"j/", &[key.as_bytes()]),
            Key::PlaybookVersion(version) => parts(b"p/", &[version.as_bytes()]),
            Key::PlaybookHistory(name, at) => parts(b"ph/", &[name.as_bytes(), &millis(at)]),
            Key::PlaybookLoadedBy(name, at) => parts(b"pb/", &[name.as_bytes(), &millis(at)]),
            Key::Audit(seq) => parts(b"a/", &[&seq.to_be_bytes()]),
            Key::Schedule(name) => parts(b"s/", &[name.as_bytes()]),
            Key::PlaybookState(name) => parts(b"ps/", &[name.as_bytes()]),
            Key::PlaybookDisabled(name) => parts(b"pd/", &[name.as_bytes()]),
        }
    }
}

/// A timer as read back from the due-time index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerKey {
    pub due: DateTime<Utc>,
    pub run: String,
    pub name: String,
}

impl TimerKey {
    pub fn key(&self) -> Key<'_> {
        Key::Timer {
            due: self.due,
            run: &self.run,
            name: &self.name,
        }
    }

    fn decode(raw: &[u8]) -> Option<TimerKey> {
        let rest = raw.strip_prefix(b"t/")?;
        let millis = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let (run, name) = std::str::from_utf8(rest.get(8..)?).ok()?.split_once('\0')?;
        Some(TimerKey {
            due: DateTime::from_timestamp_millis(millis as i64)?,
            run: run.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Changes applied together or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    audit: Vec<AuditDraft>,
    /// Changes to the store's counters (`m/counters`), summed by the committer.
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
    /// gates, its effect journal and its timeline index (an ended run has no timers; the keys as read from
    /// `store` now; the caller holds the run's lock so none is added meanwhile). Its audit
    /// entries stay in the log.
    pub fn delete_run(&mut self, store: &Store, run: &str) -> Result<&mut Batch, Error> {
        self.ops.push((Key::Run(run).encode(), None));
        self.ops.push((Key::Active(run).encode(), None));
        let mut owned = |prefix: Vec<u8>| -> Result<(), Error> {
            for item in store.inner.db.scan_prefix(&prefix) {
                let (key, _) = item?;
                self.ops.push((key.to_vec(), None));
            }
            Ok(())
        };
        for family in [&b"ar/"[..], b"g/"] {
            let mut prefix = family.to_vec();
            prefix.extend_from_slice(run.as_bytes());
            prefix.push(0);
            owned(prefix)?;
        }
        owned(format!("j/{run}/").into_bytes())?;
        Ok(self)
    }

    /// Appends an audit entry; the committer chains it to the previous one.
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

    /// Adds `delta` to a counter kept in the store (applied with the batch, by the one
    /// committer, so concurrent batches never lose an update). A zero delta still creates it.
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

/// What a commit produced: the audit entries it appended, in order.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub audit: Vec<AuditRef>,
}

/// A batch queued for the committer.
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

/// A cheap handle to the store; clones share one database and one committer.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Dropped first: waits for the committer thread, which holds its own handle on `db`.
    committer: committer::Handle,
    db: sled::Db,
    path: Option<PathBuf>,
}

impl Store {
    /// Opens (or creates) the store; checks the format version.
    pub fn open(config: &StoreConfig) -> Result<Store, Error> {
        refuse_if_locked(&config.path)?;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // The committer flushes every commit itself; sled's own timed flusher would only
            // compete with it for the log (latency spikes after a burst).
            .flush_every_ms(None)
            .open()
            .map_err(|source| {
                let path = config.path.clone();
                match &source {
                    sled::Error::Io(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::PermissionDenied
                                | std::io::ErrorKind::ReadOnlyFilesystem
                        ) =>
                    {
                        Error::ReadOnly { path, source }
                    }
                    _ => Error::Open { path, source },
                }
            })?;
        Store::start(db, Some(config.path.clone()), config.sync)
    }

    /// Opens a copy of the store at `config.path`, made in the empty directory `into`, for a
    /// reader that may not write the original (sled 0.34 has no read-only mode). The copy is
    /// made under a shared lock on the original's log, so no quench writes it meanwhile.
    pub fn open_copy(config: &StoreConfig, into: &Path) -> Result<Store, Error> {
        let original = &config.path;
        let copy_error = |source| Error::Copy {
            path: original.clone(),
            source,
        };
        let log = std::fs::File::open(original.join("db")).map_err(copy_error)?;
        match log.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: original.clone(),
                });
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(copy_error(error)),
        }
        for entry in walkdir::WalkDir::new(original).min_depth(1) {
            let entry = entry.map_err(|error| copy_error(error.into()))?;
            let relative = entry.path().strip_prefix(original).unwrap_or(entry.path());
            let target = into.join(relative);
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&target).map_err(copy_error)?;
            } else {
                // Contents only: `fs::copy` would carry the read-only mode over to the copy.
                let mut from = std::fs::File::open(entry.path()).map_err(copy_error)?;
                let mut to = std::fs::File::create(&target).map_err(copy_error)?;
                std::io::copy(&mut from, &mut to).map_err(copy_error)?;
            }
        }
        drop(log);
        Store::open(&StoreConfig {
            path: into.to_path_buf(),
            ..config.clone()
        })
    }

    /// A store in a temporary directory that disappears on drop (playbook tests, unit tests).
    pub fn temporary() -> Result<Store, Error> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(16 * 1024 * 1024)
            .open()?;
        Store::start(db, None, SyncMode::Os)
    }

    fn start(db: sled::Db, path: Option<PathBuf>, sync: SyncMode) -> Result<Store, Error> {
        let shown = path.clone().unwrap_or_else(|| PathBuf::from("<temporary>"));
        // Every failure to open names the store, so callers need not say it again.
        let open_error = |source| Error::Open {
            path: shown.clone(),
            source,
        };
        let format = Key::Meta("format").encode();
        match db.get(&format).map_err(open_error)? {
            Some(found) if found.as_ref() == FORMAT_VERSION.to_string().as_bytes() => {}
            Some(found) => {
                return Err(Error::Format {
                    path: shown,
                    found: String::from_utf8_lossy(&found).into_owned(),
                });
            }
            None if db.first().map_err(open_error)?.is_some() => {
                return Err(Error::Format {
                    path: shown,
                    found: "none".to_owned(),
                });
            }
            None => {
                db.insert(format, FORMAT_VERSION.to_string().as_bytes())
                    .map_err(open_error)?;
                db.flush().map_err(open_error)?;
                if let Some(path) = &path {
                    committer::sync_dir(path).map_err(Error::Sync)?;
                }
            }
        }
        let log_file = path.as_deref().map(Path::to_path_buf);
        let committer = committer::Handle::start(db.clone(), log_file, sync)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                committer,
                path,
            }),
        })
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
        self.inner
            .committer
            .submit(batch)
            .await
            .map(|reply| Pending(Some(reply)))
    }

    /// Cancelled when a commit has failed and the store refuses writes ([`Error::Failed`]).
    pub fn failed(&self) -> tokio_util::sync::CancellationToken {
        self.inner.committer.failed.clone()
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, key: Key<'_>) -> Result<Option<T>, Error> {
        let raw = key.encode();
        match self.inner.db.get(&raw)? {
            None => Ok(None),
            Some(bytes) => decode(&raw, &bytes).map(Some),
        }
    }

    pub fn contains(&self, key: Key<'_>) -> Result<bool, Error> {
        Ok(self.inner.db.contains_key(key.encode())?)
    }

    /// Values under a raw key prefix, in key order.
    fn scan<T: DeserializeOwned>(
        &self,
        prefix: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, Error> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(&prefix).take(limit) {
            let (key, value) = item?;
            out.push((key.to_vec(), decode(&key, &value)?));
        }
        Ok(out)
    }

    /// The audit entries of a run, oldest first: its timeline.
    pub fn run_audit(&self, run: &str) -> Result<Vec<AuditEntry>, Error> {
        let mut prefix = b"ar/".to_vec();
        prefix.extend_from_slice(run.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(&prefix) {
            let (key, _) = item?;
            let Some(seq) = key
                .get(prefix.len()..)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let Some(record) = self.inner.db.get(Key::Audit(seq).encode())? else {
                continue;
            };
            for stored in audit::split_record(&record) {
                if let Some((_, _, entry)) = parse_stored(stored)
                    && entry.run_id.as_deref() == Some(run)
                {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// Gates of a run.
    pub fn gates<T: DeserializeOwned>(&self, run: &str) -> Result<Vec<T>, Error> {
        let mut prefix = b"g/".to_vec();
        prefix.extend_from_slice(run.as_bytes());
        prefix.push(0);
        Ok(self
            .scan(prefix, usize::MAX)?
            .into_iter()
            .map(|(_, value)| value)
            .collect())
    }

    /// Timers due at or before `now`, earliest first.
    pub fn due_timers<T: DeserializeOwned>(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(TimerKey, T)>, Error> {
        let end = Key::Timer {
            due: now + chrono::Duration::milliseconds(1),
            run: "",
            name: "",
        }
        .encode();
        let mut out = Vec::new();
        for item in self.inner.db.range(b"t/".to_vec()..end).take(limit) {
            let (key, value) = item?;
            if let Some(timer) = TimerKey::decode(&key) {
                out.push((timer, decode(&key, &value)?));
            }
        }
        Ok(out)
    }

    /// When the next timer falls due, if any.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        let first = self.inner.db.scan_prefix(b"t/").next().transpose()?;
        Ok(first
            .and_then(|(key, _)| TimerKey::decode(&key))
            .map(|timer| timer.due))
    }

    /// Ids of runs that were between steps at their last commit.
    pub fn active_runs(&self) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(b"x/") {
            let (key, _) = item?;
            out.push(String::from_utf8_lossy(&key[2..]).into_owned());
        }
        Ok(out)
    }

    /// Runs whose id starts with `prefix` (all for `""`), newest first (run ids are UUIDv7, so
    /// key order is creation order), starting after `before` (exclusive) when given. Lazy: a
    /// caller reads only as many as it needs.
    pub fn runs_newest_first<T: DeserializeOwned>(
        &self,
        prefix: &str,
        before: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, T), Error>> + '_ {
        let start = Key::Run(prefix).encode();
        // The first key after every key that starts with `start`.
        let mut end = start.clone();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                break;
            }
        }
        if let Some(id) = before {
            end = end.min(Key::Run(id).encode());
        }
        let end = end.max(start.clone());
        self.inner.db.range(start..end).rev().map(|item| {
            let (key, value) = item?;
            let id = String::from_utf8_lossy(&key[2..]).into_owned();
            Ok((id, decode(&key, &value)?))
        })
    }

    /// Runs oldest first (by id: UUIDv7, so creation order), after `after` (exclusive) when
    /// given. Lazy.
    pub fn runs_oldest_first<T: DeserializeOwned>(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, T), Error>> + '_ {
        let start = match after {
            Some(id) => {
                let mut key = Key::Run(id).encode();
                key.push(0);
                key
            }
            None => b"r/".to_vec(),
        };
        self.inner.db.range(start..b"r0".to_vec()).map(|item| {
            let (key, value) = item?;
            let id = String::from_utf8_lossy(&key[2..]).into_owned();
            Ok((id, decode(&key, &value)?))
        })
    }

    /// The store's counters (see [`Batch::count`]); `None` when none was ever written.
    pub fn counters(&self) -> Result<Option<std::collections::BTreeMap<String, i64>>, Error> {
        self.get(Key::Meta(committer::COUNTERS))
    }

    /// When a playbook name was loaded at which version, and by whom, oldest first.
    pub fn playbook_history(&self, name: &str) -> Result<Vec<PlaybookLoad>, Error> {
        let mut prefix = b"ph/".to_vec();
        prefix.extend_from_slice(name.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for (key, version) in self.scan::<String>(prefix.clone(), usize::MAX)? {
            let Some(at) = key
                .get(prefix.len()..)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_be_bytes)
                .and_then(|millis| DateTime::from_timestamp_millis(millis as i64))
            else {
                continue;
            };
            let by = self.get(Key::PlaybookLoadedBy(name, at))?;
            out.push(PlaybookLoad { at, version, by });
        }
        Ok(out)
    }

    /// The version a playbook name was last loaded at (the end of its history).
    pub fn current_playbook_version(&self, name: &str) -> Result<Option<String>, Error> {
        let mut prefix = b"ph/".to_vec();
        prefix.extend_from_slice(name.as_bytes());
        prefix.push(0);
        match self.inner.db.scan_prefix(&prefix).next_back() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                decode(&key, &value).map(Some)
            }
        }
    }

    /// Names of the playbooks that are disabled, with what was recorded when they were.
    pub fn disabled_playbooks<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, Error> {
        Ok(self
            .scan::<T>(b"pd/".to_vec(), usize::MAX)?
            .into_iter()
            .map(|(key, value)| (String::from_utf8_lossy(&key[3..]).into_owned(), value))
            .collect())
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
        let end = match before {
            Some(seq) => Key::Audit(seq).encode(),
            None => b"a0".to_vec(),
        };
        let mut out = Vec::new();
        let mut examined = 0;
        for item in self.inner.db.range(b"a/".to_vec()..end).rev() {
            let (_, record) = item?;
            let mut entries: Vec<(String, AuditEntry)> = audit::split_record(&record)
                .into_iter()
                .filter_map(|stored| parse_stored(stored).map(|(hash, _, entry)| (hash, entry)))
                .filter(|(_, entry)| before.is_none_or(|before| entry.seq < before))
                .collect();
            entries.reverse();
            for (hash, entry) in entries {
                examined += 1;
                let seq = entry.seq;
                if keep(&entry) {
                    out.push((hash, entry));
                }
                if out.len() >= limit || examined >= budget {
                    return Ok((out, Some(seq).filter(|seq| *seq > 1)));
                }
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
        let mut prefix = b"q/".to_vec();
        prefix.extend_from_slice(playbook.as_bytes());
        prefix.push(0);
        prefix.extend_from_slice(key.as_bytes());
        prefix.push(0);
        let first = self.scan::<T>(prefix.clone(), 1)?.into_iter().next();
        Ok(first.map(|(raw, value)| {
            let seq = raw[prefix.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            (seq, value)
        }))
    }

    /// Seen finding ids older than `before`, oldest first (for pruning).
    pub fn expired_seen(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, String)>, Error> {
        let end = Key::SeenExpiry(before, "").encode();
        let mut out = Vec::new();
        for item in self.inner.db.range(b"fx/".to_vec()..end).take(limit) {
            let (key, _) = item?;
            let rest = &key[3..];
            let Some(millis) = rest
                .get(..8)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let Some(at) = DateTime::from_timestamp_millis(millis as i64) else {
                continue;
            };
            out.push((at, String::from_utf8_lossy(&rest[8..]).into_owned()));
        }
        Ok(out)
    }

    /// Every audit entry in order, as stored (records unpacked): its sequence number and bytes.
    pub fn audit_entries(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), Error>> + '_ {
        self.inner.db.scan_prefix(b"a/").flat_map(|item| {
            let unpacked: Vec<Result<(u64, Vec<u8>), Error>> = match item {
                Err(error) => vec![Err(error.into())],
                Ok((key, record)) => {
                    let first = key[2..]
                        .try_into()
                        .map(u64::from_be_bytes)
                        .unwrap_or(u64::MAX);
                    audit::split_record(&record)
                        .into_iter()
                        .zip(first..)
                        .map(|(stored, seq)| Ok((seq, stored.to_vec())))
                        .collect()
                }
            };
            unpacked
        })
    }

    /// Recomputes the audit chain (from the prune checkpoint, if any) and names the first entry
    /// that does not fit.
    pub fn verify_audit(&self) -> Result<Verification, Error> {
        audit::verify(self)
    }

    /// The entry the stored chain follows: the last pruned one, or `(0, genesis)`.
    pub fn audit_checkpoint(&self) -> Result<(u64, String), Error> {
        audit::checkpoint(self).map(|head| (head.seq, head.hash))
    }

    /// The bodies of stored audit entries before `before` (as hashed: one JSON Lines line
    /// each), oldest first: an export segment (see [`audit::verify_segment`]).
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
        /// Records removed per commit: a prune of millions of entries stays small batches.
        const CHUNK: usize = 1024;
        // The record holding `through` is the last one starting at or before it.
        let holding = self
            .inner
            .db
            .range(b"a/".to_vec()..=Key::Audit(through).encode())
            .next_back()
            .transpose()?;
        let found = holding.and_then(|(key, record)| {
            let first = u64::from_be_bytes(key.get(2..)?.try_into().ok()?);
            let entries = audit::split_record(&record);
            let stored = entries.get(usize::try_from(through.checked_sub(first)?).ok()?)?;
            parse_stored(stored).map(|(hash, _, _)| hash)
        });
        if found.as_deref() != Some(hash) {
            return Ok(Pruned::NotThatHash);
        }
        let mut checkpoint: Option<(u64, String)> = None;
        let mut records = Vec::new();
        let mut done = false;
        while !done {
            let mut last_whole: Option<(u64, String)> = None;
            records.clear();
            for item in self.inner.db.scan_prefix(b"a/") {
                let (key, record) = item?;
                let first = key[2..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX);
                let entries = audit::split_record(&record);
                let last = first + entries.len().saturating_sub(1) as u64;
                let last_hash = entries
                    .last()
                    .and_then(|stored| parse_stored(stored))
                    .map(|(hash, _, _)| hash);
                match last_hash {
                    Some(last_hash) if last <= through => {
                        records.push(first);
                        last_whole = Some((last, last_hash));
                    }
                    _ => {
                        done = true;
                        break;
                    }
                }
                if records.len() >= CHUNK {
                    break;
                }
            }
            let Some((seq, head)) = last_whole else {
                break;
            };
            let mut batch = Batch::new();
            for first in &records {
                batch.delete(Key::Audit(*first));
            }
            batch.put(
                Key::Meta(audit::CHECKPOINT),
                &audit::Head {
                    seq,
                    hash: head.clone(),
                },
            );
            self.commit(batch).await?;
            checkpoint = Some((seq, head));
            if records.len() < CHUNK {
                done = true;
            }
        }
        Ok(match checkpoint {
            Some((seq, hash)) => Pruned::Through { seq, hash },
            None => Pruned::Nothing,
        })
    }

    /// On-disk size of the store directory, in bytes (0 for a temporary store).
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        Ok(self.inner.db.size_on_disk()?)
    }

    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Test support: writes raw bytes under a raw key, bypassing the committer and the audit
    /// chain — how the tamper tests play an attacker with access to the files.
    #[doc(hidden)]
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.inner.db
    }
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        source,
    })
}

/// `Error::Locked` when another process holds the lock sled takes on the store's log (sled's own
/// error says so only in its text). The probe's lock is released before sled takes its own;
/// a store without a readable log is left to sled to open or refuse.
fn refuse_if_locked(path: &Path) -> Result<(), Error> {
    let Ok(log) = std::fs::File::open(path.join("db")) else {
        return Ok(());
    };
    match log.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: path.to_path_buf(),
        }),
        Ok(()) | Err(std::fs::TryLockError::Error(_)) => Ok(()),
    }
}

/// A page of audit entries with their hashes, and the `before` of the next page.
pub type AuditPage = (Vec<(String, AuditEntry)>, Option<u64>);
