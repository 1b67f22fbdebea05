//! The sled backend: the whole store in one sled tree on the local disk (a public format,
//! version [`FORMAT_VERSION`]): keys are [`Key`]s encoded as a family prefix and NUL-separated
//! parts, values JSON. Timers are keyed by due time first, so the next due timer is the first
//! key of its family and a million parked runs cost disk, not a scan at start-up.
//!
//! Writes go through one committer thread (`committer`) that groups concurrent batches into one
//! sled batch, flushes, and `fdatasync`s the log file when `sync = always` (sled 0.34's `flush`
//! does not fsync, and `flush_async` deadlocks with many calls in flight); it alone chains audit
//! entries (`audit`). sled 0.34 has no read-only mode and locks its log: a held lock is
//! [`Error::Locked`], a store this process may not write [`Error::ReadOnly`].
//!
//! The committer also compacts the store (`compact`) once its file has outgrown the live
//! data, swapping the database under readers: they reach it through a [`Slot`] and hold it
//! only while they read (lazy iterations read in chunks), so a swap never waits for a slow
//! reader and no reader sees a half-state.

mod audit;
mod committer;
mod compact;

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use super::audit::{AuditEntry, Head, Verification, parse_stored, verify_chain};
use super::key::{
    AUDIT_CHECKPOINT, COUNTERS, ENDED_PREFIX, FORMAT, LOGGED, SEEN_EXPIRY_PREFIX, seq_part, shown,
    time_part,
};
use super::{
    Backend, BackendError, Batch, BoxFuture, ByTime, CommitLog, Compacted, Error, FORMAT_VERSION,
    Key, LoggedCommit, Pending, Pruned, Rows, RunIndex, RunOrder, StoreConfig, Stored, SyncMode,
    TimerKey,
};

/// A sled store. Fields drop in order: the committer first (its thread is joined), then the
/// database, then `released` waits until sled has let go of its log, so the next open in this
/// process cannot find it locked.
#[derive(Debug)]
pub(super) struct Sled {
    committer: committer::Handle,
    db: Arc<Slot>,
    path: Option<PathBuf>,
    _released: Released,
}

/// The open database, which a compaction swaps. A reader holds the read lock only while it
/// reads (one chunk of a lazy iteration at most, never across another read: the lock prefers
/// a waiting writer); the swap holds the write lock from closing the old database to opening
/// the new one, so no reader holds the old one when it closes, and none sees the store missing.
#[derive(Debug)]
struct Slot(RwLock<Option<Opened>>);

/// A database and the locks on the directories it lives in (see `compact`): they go together.
#[derive(Debug)]
struct Opened {
    db: ::sled::Db,
    locks: Vec<compact::DirLock>,
}

impl Slot {
    /// Runs `read` on the current database; [`Error::Closed`] after a compaction that could
    /// not open the store again.
    fn with<T>(&self, read: impl FnOnce(&::sled::Db) -> Result<T, Error>) -> Result<T, Error> {
        let opened = self.0.read().unwrap_or_else(PoisonError::into_inner);
        match opened.as_ref() {
            Some(opened) => read(&opened.db),
            None => Err(Error::Closed),
        }
    }
}

/// Most entries a lazy iteration reads per chunk; it starts with [`FIRST_CHUNK`] and doubles,
/// so a caller that wants one row reads few.
const MAX_CHUNK: usize = 256;
const FIRST_CHUNK: usize = 8;
/// A chunk also ends once it holds this many bytes (audit records are large).
const CHUNK_BYTES: usize = 1024 * 1024;

/// A lazy iteration over a key range that reads in chunks, each from the database current at
/// the time, going on after the last key it returned: a compaction in between keeps every key
/// and value, so the iteration continues where it was.
struct Chunks {
    slot: Arc<Slot>,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    backwards: bool,
    chunk: usize,
    buffered: VecDeque<(::sled::IVec, ::sled::IVec)>,
    finished: bool,
}

impl Chunks {
    /// Whether no key lies between the bounds (sled is not asked about such a range).
    fn exhausted(&self) -> bool {
        match (&self.lower, &self.upper) {
            (_, Bound::Unbounded) | (Bound::Unbounded, _) => false,
            (Bound::Included(lower), Bound::Included(upper)) => lower > upper,
            (Bound::Included(lower) | Bound::Excluded(lower), Bound::Excluded(upper))
            | (Bound::Excluded(lower), Bound::Included(upper)) => lower >= upper,
        }
    }

    fn refill(&mut self) -> Result<(), Error> {
        if self.exhausted() {
            self.finished = true;
            return Ok(());
        }
        let limit = self.chunk;
        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        let range = (self.lower.clone(), self.upper.clone());
        let backwards = self.backwards;
        let read = self.slot.with(|db| {
            let mut read = VecDeque::new();
            let mut bytes = 0;
            let mut items: Box<dyn Iterator<Item = _>> = if backwards {
                Box::new(db.range::<Vec<u8>, _>(range).rev())
            } else {
                Box::new(db.range::<Vec<u8>, _>(range))
            };
            while read.len() < limit && bytes < CHUNK_BYTES {
                let Some(item) = items.next() else {
                    return Ok((read, true));
                };
                let (key, value): (::sled::IVec, ::sled::IVec) = item.map_err(io)?;
                bytes += key.len() + value.len();
                read.push_back((key, value));
            }
            Ok((read, false))
        })?;
        let (read, ended) = read;
        match read.back() {
            Some((key, _)) if backwards => self.upper = Bound::Excluded(key.to_vec()),
            Some((key, _)) => self.lower = Bound::Excluded(key.to_vec()),
            None => {}
        }
        self.finished = ended || read.is_empty();
        self.buffered = read;
        Ok(())
    }
}

impl Iterator for Chunks {
    type Item = Result<(::sled::IVec, ::sled::IVec), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffered.is_empty()
            && !self.finished
            && let Err(error) = self.refill()
        {
            self.finished = true;
            return Some(Err(error));
        }
        self.buffered.pop_front().map(Ok)
    }
}

/// Opens (or creates) the sled database at `path`, with the settings every open uses.
fn open_db(path: &Path, cache_bytes: u64) -> Result<::sled::Db, Error> {
    ::sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .mode(::sled::Mode::HighThroughput)
        // The committer flushes every commit itself; sled's own timed flusher would only
        // compete with it for the log (latency spikes after a burst).
        .flush_every_ms(None)
        .open()
        .map_err(|source| {
            let path = path.to_path_buf();
            match &source {
                ::sled::Error::Io(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    Error::ReadOnly {
                        path,
                        source: BackendError::new(source),
                    }
                }
                _ => Error::Open {
                    path,
                    source: BackendError::new(source),
                },
            }
        })
}

/// The error of a sled call, kept opaque.
fn io(error: ::sled::Error) -> Error {
    Error::Io(BackendError::new(error))
}

/// Reads and decodes one value straight from the tree (metadata the backend keeps itself).
pub(super) fn read<T: DeserializeOwned>(
    db: &::sled::Db,
    key: &Key<'_>,
) -> Result<Option<T>, Error> {
    let raw = key.encode();
    match db.get(&raw).map_err(io)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Decode {
                key: shown(&raw),
                source,
            }),
    }
}

/// The position in its commit log of the last commit `db` applied (0: none).
pub(super) fn logged_position(db: &::sled::Db) -> Result<u64, Error> {
    Ok(read::<u64>(db, &Key::Meta(LOGGED))?.unwrap_or(0))
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            break;
        }
    }
    end
}

/// A family prefix followed by `parts`, each closed by the part separator.
fn prefix(family: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut out = family.to_vec();
    for part in parts {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out
}

impl Sled {
    pub(super) fn open(config: &StoreConfig) -> Result<Sled, Error> {
        Sled::open_logged(config, None)
    }

    /// With a commit log, every commit is appended to it before it is applied.
    pub(super) fn open_logged(
        config: &StoreConfig,
        log: Option<Box<dyn CommitLog>>,
    ) -> Result<Sled, Error> {
        let dance = compact::Dance::of(&config.path);
        let lock = dance.as_ref().map(compact::Dance::open).transpose()?;
        refuse_if_locked(&config.path)?;
        let db = open_db(&config.path, config.cache_bytes)?;
        let compactor = |size| {
            dance.map(|dance| {
                compact::Compactor::new(
                    dance,
                    config.cache_bytes,
                    config.sync,
                    config.compact_floor,
                    size,
                )
            })
        };
        Sled::start(
            Opened {
                db,
                locks: lock.into_iter().collect(),
            },
            Some(config.path.clone()),
            config.sync,
            compactor,
            log,
        )
    }

    pub(super) fn open_copy(config: &StoreConfig, into: &Path) -> Result<Sled, Error> {
        let original = &config.path;
        let copy_error = |source| Error::Copy {
            path: original.clone(),
            source,
        };
        // Shared locks on the directory (a process compacting the store holds it while sled's
        // lock on the log is let go of) and on the log, held until the copy is made.
        let shared = |path: PathBuf| -> Result<File, Error> {
            let file = File::open(path).map_err(copy_error)?;
            match try_lock_a_moment(&file, Lock::Shared) {
                Ok(()) => Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                    path: original.clone(),
                }),
                Err(std::fs::TryLockError::Error(error)) => Err(copy_error(error)),
            }
        };
        let directory = shared(original.clone())?;
        let log = shared(original.join("db"))?;
        for entry in walkdir::WalkDir::new(original).min_depth(1) {
            let entry = entry.map_err(|error| copy_error(error.into()))?;
            let relative = entry.path().strip_prefix(original).unwrap_or(entry.path());
            let target = into.join(relative);
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&target).map_err(copy_error)?;
            } else {
                // Contents only: `fs::copy` would carry the read-only mode over to the copy.
                let mut from = File::open(entry.path()).map_err(copy_error)?;
                let mut to = File::create(&target).map_err(copy_error)?;
                std::io::copy(&mut from, &mut to).map_err(copy_error)?;
            }
        }
        drop((log, directory));
        Sled::open(&StoreConfig {
            path: into.to_path_buf(),
            ..config.clone()
        })
    }

    pub(super) fn temporary() -> Result<Sled, Error> {
        let db = ::sled::Config::new()
            .temporary(true)
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(io)?;
        Sled::start(
            Opened {
                db,
                locks: Vec::new(),
            },
            None,
            SyncMode::Os,
            |_| None,
            None,
        )
    }

    /// Checks (or writes) the format version and starts the committer; `compactor` is given the
    /// store's size at open.
    fn start(
        opened: Opened,
        path: Option<PathBuf>,
        sync: SyncMode,
        compactor: impl FnOnce(u64) -> Option<compact::Compactor>,
        log: Option<Box<dyn CommitLog>>,
    ) -> Result<Sled, Error> {
        let db = &opened.db;
        let shown = path.clone().unwrap_or_else(|| PathBuf::from("<temporary>"));
        // Every failure to open names the store, so callers need not say it again.
        let open_error = |source| Error::Open {
            path: shown.clone(),
            source: BackendError::new(source),
        };
        let format = Key::Meta(FORMAT).encode();
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
        let head = audit::read_head(db)?;
        let counters = read(db, &Key::Meta(COUNTERS))?.unwrap_or_default();
        let compactor = compactor(db.size_on_disk().map_err(open_error)?);
        let slot = Arc::new(Slot(RwLock::new(Some(opened))));
        let committer = committer::Handle::start(
            slot.clone(),
            path.as_deref(),
            sync,
            head,
            counters,
            compactor,
            log,
        )?;
        Ok(Sled {
            committer,
            db: slot,
            _released: Released {
                log: path.as_ref().map(|path| path.join("db")),
            },
            path,
        })
    }

    /// A lazy iteration over a key range (see [`Chunks`]).
    fn range(&self, lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>, backwards: bool) -> Chunks {
        Chunks {
            slot: self.db.clone(),
            lower,
            upper,
            backwards,
            chunk: FIRST_CHUNK,
            buffered: VecDeque::new(),
            finished: false,
        }
    }

    /// The keys under a raw key prefix, lazily, first to last or `backwards`.
    fn under(&self, prefix: &[u8], backwards: bool) -> Chunks {
        let end = prefix_end(prefix);
        let upper = if end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(end)
        };
        self.range(Bound::Included(prefix.to_vec()), upper, backwards)
    }

    /// Values under a raw key prefix, in key order: (key, value).
    fn scan(&self, prefix: &[u8]) -> Rows<'_, (Vec<u8>, Vec<u8>)> {
        Box::new(self.under(prefix, false).map(|item| {
            let (key, value) = item?;
            Ok((key.to_vec(), value.to_vec()))
        }))
    }

    /// Keys under a raw key prefix, in key order.
    fn keys_under(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        self.scan(prefix)
            .map(|item| item.map(|(key, _)| key))
            .collect()
    }

    /// Audit records (first sequence number, record) between the bounds, in key order or
    /// `backwards`.
    fn records(
        &self,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        backwards: bool,
    ) -> impl Iterator<Item = Result<(u64, ::sled::IVec), Error>> + 'static {
        self.range(lower, upper, backwards).map(|item| {
            let (key, record) = item?;
            Ok((audit::record_first(&key), record))
        })
    }

    async fn prune(&self, through: u64, hash: &str) -> Result<Pruned, Error> {
        /// Records removed per commit: a prune of millions of entries stays small batches.
        const CHUNK: usize = 1024;
        // The record holding `through` is the last one starting at or before it.
        let holding = self
            .records(
                Bound::Included(b"a/".to_vec()),
                Bound::Included(Key::Audit(through).encode()),
                true,
            )
            .next()
            .transpose()?;
        let found = holding.and_then(|(first, record)| {
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
            for item in self.records(
                Bound::Included(b"a/".to_vec()),
                Bound::Excluded(b"a0".to_vec()),
                false,
            ) {
                let (first, record) = item?;
                match audit::record_last(first, &record) {
                    Some((last, last_hash)) if last <= through => {
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
                Key::Meta(AUDIT_CHECKPOINT),
                &Head {
                    seq,
                    hash: head.clone(),
                },
            );
            self.committer.submit(batch).await?.wait().await?;
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
}

impl Backend for Sled {
    fn submit(&self, batch: Batch) -> BoxFuture<'_, Result<Pending, Error>> {
        Box::pin(async move { self.committer.submit(batch).await })
    }

    fn failed(&self) -> tokio_util::sync::CancellationToken {
        self.committer.failed.clone()
    }

    fn get(&self, key: &Key<'_>) -> Result<Option<Vec<u8>>, Error> {
        let value = self.db.with(|db| db.get(key.encode()).map_err(io))?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn contains(&self, key: &Key<'_>) -> Result<bool, Error> {
        self.db.with(|db| db.contains_key(key.encode()).map_err(io))
    }

    fn gates(&self, run: &str) -> Result<Vec<Stored<String>>, Error> {
        let prefix = prefix(b"g/", &[run]);
        self.scan(&prefix)
            .map(|item| {
                let (key, value) = item?;
                Ok((
                    String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                    value,
                ))
            })
            .collect()
    }

    fn owned_by_run(&self, run: &str) -> Result<Vec<Vec<u8>>, Error> {
        let mut keys = Vec::new();
        for prefix in [
            prefix(b"ar/", &[run]),
            prefix(b"g/", &[run]),
            format!("j/{run}/").into_bytes(),
        ] {
            keys.extend(self.keys_under(&prefix)?);
        }
        Ok(keys)
    }

    fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Stored<TimerKey>>, Error> {
        let end = Key::Timer {
            due: now + chrono::Duration::milliseconds(1),
            run: "",
            name: "",
        }
        .encode();
        let mut out = Vec::new();
        for item in self
            .range(Bound::Included(b"t/".to_vec()), Bound::Excluded(end), false)
            .take(limit)
        {
            let (key, value) = item?;
            if let Some(timer) = TimerKey::decode(&key) {
                out.push((timer, value.to_vec()));
            }
        }
        Ok(out)
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        let first = self
            .db
            .with(|db| db.scan_prefix(b"t/").next().transpose().map_err(io))?;
        Ok(first
            .and_then(|(key, _)| TimerKey::decode(&key))
            .map(|timer| timer.due))
    }

    fn active_runs(&self) -> Result<Vec<String>, Error> {
        self.keys_under(b"x/").map(|keys| {
            keys.into_iter()
                .map(|key| String::from_utf8_lossy(&key[2..]).into_owned())
                .collect()
        })
    }

    fn first_queued(&self, playbook: &str, key: &str) -> Result<Option<Stored<u64>>, Error> {
        let prefix = prefix(b"q/", &[playbook, key]);
        let first = self.scan(&prefix).next().transpose()?;
        Ok(first.map(|(raw, value)| (seq_part(&raw[prefix.len()..]).unwrap_or(0), value)))
    }

    fn older_than(
        &self,
        family: ByTime,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, String)>, Error> {
        let (prefix, end) = match family {
            ByTime::Seen => (SEEN_EXPIRY_PREFIX, Key::SeenExpiry(before, "").encode()),
            ByTime::Ended => (ENDED_PREFIX, Key::Ended(before, "").encode()),
        };
        let mut out = Vec::new();
        for item in self
            .range(
                Bound::Included(prefix.to_vec()),
                Bound::Excluded(end),
                false,
            )
            .take(limit)
        {
            let (key, _) = item?;
            let rest = &key[prefix.len()..];
            let Some(at) = time_part(rest) else {
                continue;
            };
            out.push((at, String::from_utf8_lossy(&rest[8..]).into_owned()));
        }
        Ok(out)
    }

    fn runs<'a>(&'a self, order: RunOrder<'_>) -> Rows<'a, Stored<String>> {
        let row = |item: Result<(::sled::IVec, ::sled::IVec), Error>| {
            let (key, value) = item?;
            Ok((
                String::from_utf8_lossy(&key[2..]).into_owned(),
                value.to_vec(),
            ))
        };
        match order {
            RunOrder::NewestFirst { prefix, before } => {
                let start = Key::Run(prefix).encode();
                let mut end = prefix_end(&start);
                if let Some(id) = before {
                    end = end.min(Key::Run(id).encode());
                }
                let end = end.max(start.clone());
                Box::new(
                    self.range(Bound::Included(start), Bound::Excluded(end), true)
                        .map(row),
                )
            }
            RunOrder::Indexed { index, before } => {
                let start = match index {
                    RunIndex::Key(key) => prefix(b"rk/", &[key]),
                    RunIndex::Playbook(playbook) => prefix(b"rp/", &[playbook]),
                };
                let mut end = prefix_end(&start);
                if let Some(id) = before {
                    let mut bound = start.clone();
                    bound.extend_from_slice(id.as_bytes());
                    end = end.min(bound);
                }
                let end = end.max(start.clone());
                let width = start.len();
                // Each listed run is read; one the index still lists but the store no longer
                // has (never the case after a commit: both go in one batch) is passed over.
                Box::new(
                    self.range(Bound::Included(start), Bound::Excluded(end), true)
                        .filter_map(move |item| {
                            let id = match item {
                                Ok((key, _)) => String::from_utf8_lossy(&key[width..]).into_owned(),
                                Err(error) => return Some(Err(error)),
                            };
                            match self
                                .db
                                .with(|db| db.get(Key::Run(&id).encode()).map_err(io))
                            {
                                Ok(Some(value)) => Some(Ok((id, value.to_vec()))),
                                Ok(None) => None,
                                Err(error) => Some(Err(error)),
                            }
                        }),
                )
            }
            RunOrder::OldestFirst { after } => {
                let start = match after {
                    Some(id) => {
                        let mut key = Key::Run(id).encode();
                        key.push(0);
                        key
                    }
                    None => b"r/".to_vec(),
                };
                Box::new(
                    self.range(
                        Bound::Included(start),
                        Bound::Excluded(b"r0".to_vec()),
                        false,
                    )
                    .map(row),
                )
            }
        }
    }

    fn playbook_loads(&self, name: &str) -> Result<Vec<Stored<DateTime<Utc>>>, Error> {
        let prefix = prefix(b"ph/", &[name]);
        let mut out = Vec::new();
        for item in self.scan(&prefix) {
            let (key, version) = item?;
            let Some(at) = key
                .get(prefix.len()..)
                .filter(|rest| rest.len() == 8)
                .and_then(time_part)
            else {
                continue;
            };
            out.push((at, version));
        }
        Ok(out)
    }

    fn last_playbook_load(&self, name: &str) -> Result<Option<Stored<DateTime<Utc>>>, Error> {
        let prefix = prefix(b"ph/", &[name]);
        let last = self.under(&prefix, true).next().transpose()?;
        Ok(last.map(|(key, version)| {
            let at = time_part(&key[prefix.len()..]).unwrap_or(DateTime::UNIX_EPOCH);
            (at, version.to_vec())
        }))
    }

    fn disabled_playbooks(&self) -> Result<Vec<Stored<String>>, Error> {
        self.scan(b"pd/")
            .map(|item| {
                let (key, value) = item?;
                Ok((String::from_utf8_lossy(&key[3..]).into_owned(), value))
            })
            .collect()
    }

    fn safety_uses(&self) -> Result<Vec<Stored<super::SafetyUseKey>>, Error> {
        self.scan(b"su/")
            .filter_map(|item| {
                let (key, value) = match item {
                    Ok(item) => item,
                    Err(error) => return Some(Err(error)),
                };
                let rest = &key[3..];
                let at = time_part(rest)?;
                let id = String::from_utf8_lossy(rest.get(8..)?).into_owned();
                Some(Ok(((at, id), value)))
            })
            .collect()
    }

    fn safety_waiters(&self, hold: Option<&str>) -> Result<Vec<Stored<(String, String)>>, Error> {
        let prefix = match hold {
            Some(hold) => prefix(b"sw/", &[hold]),
            None => b"sw/".to_vec(),
        };
        self.scan(&prefix)
            .filter_map(|item| {
                let (key, value) = match item {
                    Ok(item) => item,
                    Err(error) => return Some(Err(error)),
                };
                let rest = std::str::from_utf8(&key[3..]).ok()?;
                let (hold, run) = rest.split_once('\0')?;
                Some(Ok(((hold.to_owned(), run.to_owned()), value)))
            })
            .collect()
    }

    fn open_runs(&self) -> Result<Vec<Stored<(String, String)>>, Error> {
        self.scan(b"o/")
            .filter_map(|item| {
                let (key, value) = match item {
                    Ok(item) => item,
                    Err(error) => return Some(Err(error)),
                };
                let rest = std::str::from_utf8(&key[2..]).ok()?;
                let (playbook, run_key) = rest.split_once('\0')?;
                Some(Ok(((playbook.to_owned(), run_key.to_owned()), value)))
            })
            .collect()
    }

    fn identities<'a>(&'a self, after: Option<&str>) -> Rows<'a, Stored<String>> {
        let start = match after {
            Some(id) => {
                let mut key = Key::Identity(id).encode();
                key.push(0);
                Bound::Included(key)
            }
            None => Bound::Included(b"i/".to_vec()),
        };
        Box::new(
            self.range(start, Bound::Excluded(prefix_end(b"i/")), false)
                .map(|item| {
                    let (key, value) = item?;
                    Ok((
                        String::from_utf8_lossy(&key[2..]).into_owned(),
                        value.to_vec(),
                    ))
                }),
        )
    }

    fn identity_history(&self, id: &str) -> Result<Vec<Stored<u64>>, Error> {
        let prefix = prefix(b"ih/", &[id]);
        let mut out = Vec::new();
        for item in self.scan(&prefix) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            if let Some(seq) = seq_part(rest).filter(|_| rest.len() == 8) {
                out.push((seq, value));
            }
        }
        Ok(out)
    }

    fn inventory_findings(&self) -> Result<Vec<Stored<(String, String)>>, Error> {
        self.scan(b"ir/")
            .filter_map(|item| {
                let (key, value) = match item {
                    Ok(item) => item,
                    Err(error) => return Some(Err(error)),
                };
                let rest = std::str::from_utf8(&key[3..]).ok()?;
                let (id, risk) = rest.split_once('\0')?;
                Some(Ok(((id.to_owned(), risk.to_owned()), value)))
            })
            .collect()
    }

    fn campaigns(&self) -> Result<Vec<Stored<String>>, Error> {
        self.scan(b"c/")
            .map(|item| {
                let (key, value) = item?;
                Ok((String::from_utf8_lossy(&key[2..]).into_owned(), value))
            })
            .collect()
    }

    fn campaign_chunks(&self, id: &str) -> Result<Vec<Stored<u32>>, Error> {
        let prefix = prefix(b"cc/", &[id]);
        let mut out = Vec::new();
        for item in self.scan(&prefix) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            if let Ok(n) = <[u8; 4]>::try_from(rest) {
                out.push((u32::from_be_bytes(n), value));
            }
        }
        Ok(out)
    }

    fn run_audit(&self, run: &str) -> Result<Vec<AuditEntry>, Error> {
        let prefix = prefix(b"ar/", &[run]);
        let mut out = Vec::new();
        for key in self.keys_under(&prefix)? {
            let rest = &key[prefix.len()..];
            let Some(seq) = seq_part(rest).filter(|_| rest.len() == 8) else {
                continue;
            };
            let Some(record) = self
                .db
                .with(|db| db.get(Key::Audit(seq).encode()).map_err(io))?
            else {
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

    fn audit_entries_after(&self, after: u64) -> Rows<'_, (u64, Vec<u8>)> {
        // The record holding entry `after + 1` is the last one starting at or before it.
        let start = match self
            .records(
                Bound::Included(b"a/".to_vec()),
                Bound::Included(Key::Audit(after.saturating_add(1)).encode()),
                true,
            )
            .next()
        {
            Some(Ok((first, _))) => Key::Audit(first).encode(),
            Some(Err(error)) => return Box::new(std::iter::once(Err(error))),
            None => b"a/".to_vec(),
        };
        Box::new(
            self.records(
                Bound::Included(start),
                Bound::Excluded(b"a0".to_vec()),
                false,
            )
            .flat_map(move |item| {
                let unpacked: Vec<Result<(u64, Vec<u8>), Error>> = match item {
                    Err(error) => vec![Err(error)],
                    Ok((first, record)) => audit::split_record(&record)
                        .into_iter()
                        .zip(first..)
                        .filter(|(_, seq)| *seq > after)
                        .map(|(stored, seq)| Ok((seq, stored.to_vec())))
                        .collect(),
                };
                unpacked
            }),
        )
    }

    fn audit_durable_seq(&self) -> u64 {
        self.committer.durable_audit_seq()
    }

    fn audit_newest_first(&self, before: Option<u64>) -> Rows<'_, (String, AuditEntry)> {
        let end = match before {
            Some(seq) => Key::Audit(seq).encode(),
            None => b"a0".to_vec(),
        };
        Box::new(
            self.records(Bound::Included(b"a/".to_vec()), Bound::Excluded(end), true)
                .flat_map(move |item| {
                    let entries: Vec<Result<(String, AuditEntry), Error>> = match item {
                        Err(error) => vec![Err(error)],
                        Ok((_, record)) => audit::split_record(&record)
                            .into_iter()
                            .rev()
                            .filter_map(|stored| {
                                parse_stored(stored).map(|(hash, _, entry)| (hash, entry))
                            })
                            .filter(|(_, entry)| before.is_none_or(|before| entry.seq < before))
                            .map(Ok)
                            .collect(),
                    };
                    entries
                }),
        )
    }

    fn audit_checkpoint(&self) -> Result<(u64, String), Error> {
        self.db
            .with(audit::checkpoint)
            .map(|head| (head.seq, head.hash))
    }

    fn verify_audit(&self) -> Result<Verification, Error> {
        let start = self.db.with(audit::checkpoint)?;
        let head = self.db.with(audit::read_head)?;
        verify_chain(start, self.audit_entries_after(0), head, || {
            self.db.with(audit::read_head)
        })
    }

    fn prune_audit<'a>(
        &'a self,
        through: u64,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<Pruned, Error>> {
        Box::pin(self.prune(through, hash))
    }

    fn compact(&self) -> BoxFuture<'_, Result<Option<Compacted>, Error>> {
        Box::pin(self.committer.compact())
    }

    fn logged_position(&self) -> Result<u64, Error> {
        self.db.with(logged_position)
    }

    fn apply_logged(&self, commits: Vec<LoggedCommit>) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(self.committer.apply_logged(commits))
    }

    fn export_logged(&self) -> BoxFuture<'_, Result<LoggedCommit, Error>> {
        Box::pin(self.committer.export_logged())
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        self.db.with(|db| db.size_on_disk().map_err(io))
    }

    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// A lock to take on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lock {
    Exclusive,
    Shared,
}

/// Takes `lock` on `file`, trying again for up to a second while it would block. A lock this
/// process has let go of can stay held for a moment after: a child process that another thread
/// is spawning holds copies of every descriptor until it execs (they close then), and flock
/// locks belong to the open file, not to the descriptor. Another process that really holds the
/// store still gets `WouldBlock`, a second later.
pub(super) fn try_lock_a_moment(file: &File, lock: Lock) -> Result<(), std::fs::TryLockError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let tried = match lock {
            Lock::Exclusive => file.try_lock(),
            Lock::Shared => file.try_lock_shared(),
        };
        match tried {
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                #[expect(
                    clippy::disallowed_methods,
                    reason = "opening a store is synchronous; a moment's wait for a lock in passing"
                )]
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// `Error::Locked` when another process holds the lock sled takes on the store's log (sled's own
/// error says so only in its text). The probe's lock is released before sled takes its own;
/// a store without a readable log is left to sled to open or refuse.
fn refuse_if_locked(path: &Path) -> Result<(), Error> {
    let Ok(log) = File::open(path.join("db")) else {
        return Ok(());
    };
    match try_lock_a_moment(&log, Lock::Exclusive) {
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: path.to_path_buf(),
        }),
        Ok(()) | Err(std::fs::TryLockError::Error(_)) => Ok(()),
    }
}

/// Dropped last: waits until sled has let go of its log's lock. Dropping the last `sled::Db`
/// does not mean its file is closed — sled's own thread pool finishes log writes it was given,
/// holding the file until they end — and a reopen in this process (a test, a restart of the
/// engine) must not find the store locked by the store it just dropped.
#[derive(Debug)]
struct Released {
    /// The log file (`<path>/db`); none for a temporary store.
    log: Option<PathBuf>,
}

/// How long a drop waits for sled's threads: far longer than a log write takes. Past it (the
/// lock is now another process's, say) the drop gives up waiting.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(log) = &self.log {
            off_the_runtime(|| wait_released(log));
        }
    }
}

/// Runs `wait`, which blocks this thread, without stalling the async runtime the thread may
/// be a worker of: on a multi-thread runtime's worker, the worker's other tasks are first
/// handed to another thread (`block_in_place`). Dropping a store's last clone waits for its
/// committer to finish what was sent, and in cluster mode the committer appends to the
/// partition's journal through the runtime: when the partitions a runner lost were dropped
/// on every worker at once, nothing was left to carry those appends, and the runner hung for
/// good (seen with two workers, losing four partitions in a NATS server's failure).
pub(super) fn off_the_runtime<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        // A single-threaded runtime cannot hand its tasks over; nor has it a committer's
        // journal to carry (cluster mode runs on the multi-thread runtime).
        _ => wait(),
    }
}

/// Waits (at most [`RELEASE_WAIT`]) until no sled holds the lock on the log file `log`.
fn wait_released(log: &Path) {
    let Ok(file) = File::open(log) else {
        return;
    };
    let started = Instant::now();
    loop {
        match file.try_lock() {
            // Our probe's lock goes with `file`.
            Ok(()) | Err(std::fs::TryLockError::Error(_)) => return,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < RELEASE_WAIT => {
                #[expect(
                    clippy::disallowed_methods,
                    reason = "waits for sled's threads to close the log file; no runtime to yield to"
                )]
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(log = %log.display(), "the store's log is still locked after closing it");
                return;
            }
        }
    }
}
