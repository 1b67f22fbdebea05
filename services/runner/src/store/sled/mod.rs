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

mod audit;
mod committer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use super::audit::{AuditEntry, Head, Verification, parse_stored, verify_chain};
use super::key::{AUDIT_CHECKPOINT, FORMAT, seq_part, shown, time_part};
use super::{
    Backend, BackendError, Batch, BoxFuture, Error, FORMAT_VERSION, Key, Pending, Pruned, Rows,
    RunOrder, StoreConfig, Stored, SyncMode, TimerKey,
};

/// A sled store. Fields drop in order: the committer first (its thread holds its own handle on
/// `db` and is joined), then the database, then `released` waits until sled has let go of its
/// log, so the next open in this process cannot find it locked.
#[derive(Debug)]
pub(super) struct Sled {
    committer: committer::Handle,
    db: ::sled::Db,
    path: Option<PathBuf>,
    _released: Released,
}

/// The error of a sled call, kept opaque.
fn io(error: ::sled::Error) -> Error {
    Error::Io(BackendError::new(error))
}

/// Reads and decodes one value straight from the tree (metadata the backend keeps itself).
fn read<T: DeserializeOwned>(db: &::sled::Db, key: &Key<'_>) -> Result<Option<T>, Error> {
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
        refuse_if_locked(&config.path)?;
        let db = ::sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .mode(::sled::Mode::HighThroughput)
            // The committer flushes every commit itself; sled's own timed flusher would only
            // compete with it for the log (latency spikes after a burst).
            .flush_every_ms(None)
            .open()
            .map_err(|source| {
                let path = config.path.clone();
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
            })?;
        Sled::start(db, Some(config.path.clone()), config.sync)
    }

    pub(super) fn open_copy(config: &StoreConfig, into: &Path) -> Result<Sled, Error> {
        let original = &config.path;
        let copy_error = |source| Error::Copy {
            path: original.clone(),
            source,
        };
        let log = File::open(original.join("db")).map_err(copy_error)?;
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
                let mut from = File::open(entry.path()).map_err(copy_error)?;
                let mut to = File::create(&target).map_err(copy_error)?;
                std::io::copy(&mut from, &mut to).map_err(copy_error)?;
            }
        }
        drop(log);
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
        Sled::start(db, None, SyncMode::Os)
    }

    fn start(db: ::sled::Db, path: Option<PathBuf>, sync: SyncMode) -> Result<Sled, Error> {
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
        let head = audit::read_head(&db)?;
        let committer = committer::Handle::start(db.clone(), path.as_deref(), sync, head)?;
        Ok(Sled {
            committer,
            db,
            _released: Released {
                log: path.as_ref().map(|path| path.join("db")),
            },
            path,
        })
    }

    /// Values under a raw key prefix, in key order: (key, value).
    fn scan(&self, prefix: &[u8]) -> Rows<'_, (Vec<u8>, Vec<u8>)> {
        Box::new(self.db.scan_prefix(prefix).map(|item| {
            let (key, value) = item.map_err(io)?;
            Ok((key.to_vec(), value.to_vec()))
        }))
    }

    /// Keys under a raw key prefix, in key order.
    fn keys_under(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        self.scan(prefix)
            .map(|item| item.map(|(key, _)| key))
            .collect()
    }

    /// Audit records (first sequence number, record) in key order, from `range`.
    fn records(
        &self,
        range: impl std::ops::RangeBounds<Vec<u8>>,
    ) -> impl DoubleEndedIterator<Item = Result<(u64, ::sled::IVec), Error>> + '_ {
        self.db.range(range).map(|item| {
            let (key, record) = item.map_err(io)?;
            Ok((audit::record_first(&key), record))
        })
    }

    async fn prune(&self, through: u64, hash: &str) -> Result<Pruned, Error> {
        /// Records removed per commit: a prune of millions of entries stays small batches.
        const CHUNK: usize = 1024;
        // The record holding `through` is the last one starting at or before it.
        let holding = self
            .records(b"a/".to_vec()..=Key::Audit(through).encode())
            .next_back()
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
            for item in self.records(b"a/".to_vec()..b"a0".to_vec()) {
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
        Ok(self
            .db
            .get(key.encode())
            .map_err(io)?
            .map(|value| value.to_vec()))
    }

    fn contains(&self, key: &Key<'_>) -> Result<bool, Error> {
        self.db.contains_key(key.encode()).map_err(io)
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
        for item in self.db.range(b"t/".to_vec()..end).take(limit) {
            let (key, value) = item.map_err(io)?;
            if let Some(timer) = TimerKey::decode(&key) {
                out.push((timer, value.to_vec()));
            }
        }
        Ok(out)
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        let first = self.db.scan_prefix(b"t/").next().transpose().map_err(io)?;
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

    fn expired_seen(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, String)>, Error> {
        let end = Key::SeenExpiry(before, "").encode();
        let mut out = Vec::new();
        for item in self.db.range(b"fx/".to_vec()..end).take(limit) {
            let (key, _) = item.map_err(io)?;
            let rest = &key[3..];
            let Some(at) = time_part(rest) else {
                continue;
            };
            out.push((at, String::from_utf8_lossy(&rest[8..]).into_owned()));
        }
        Ok(out)
    }

    fn runs<'a>(&'a self, order: RunOrder<'_>) -> Rows<'a, Stored<String>> {
        let row = |item: Result<(::sled::IVec, ::sled::IVec), ::sled::Error>| {
            let (key, value) = item.map_err(io)?;
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
                Box::new(self.db.range(start..end).rev().map(row))
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
                Box::new(self.db.range(start..b"r0".to_vec()).map(row))
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
        let last = self
            .db
            .scan_prefix(&prefix)
            .next_back()
            .transpose()
            .map_err(io)?;
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

    fn run_audit(&self, run: &str) -> Result<Vec<AuditEntry>, Error> {
        let prefix = prefix(b"ar/", &[run]);
        let mut out = Vec::new();
        for key in self.keys_under(&prefix)? {
            let rest = &key[prefix.len()..];
            let Some(seq) = seq_part(rest).filter(|_| rest.len() == 8) else {
                continue;
            };
            let Some(record) = self.db.get(Key::Audit(seq).encode()).map_err(io)? else {
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

    fn audit_entries(&self) -> Rows<'_, (u64, Vec<u8>)> {
        Box::new(
            self.records(b"a/".to_vec()..b"a0".to_vec())
                .flat_map(|item| {
                    let unpacked: Vec<Result<(u64, Vec<u8>), Error>> = match item {
                        Err(error) => vec![Err(error)],
                        Ok((first, record)) => audit::split_record(&record)
                            .into_iter()
                            .zip(first..)
                            .map(|(stored, seq)| Ok((seq, stored.to_vec())))
                            .collect(),
                    };
                    unpacked
                }),
        )
    }

    fn audit_newest_first(&self, before: Option<u64>) -> Rows<'_, (String, AuditEntry)> {
        let end = match before {
            Some(seq) => Key::Audit(seq).encode(),
            None => b"a0".to_vec(),
        };
        Box::new(
            self.records(b"a/".to_vec()..end)
                .rev()
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
        audit::checkpoint(&self.db).map(|head| (head.seq, head.hash))
    }

    fn verify_audit(&self) -> Result<Verification, Error> {
        let start = audit::checkpoint(&self.db)?;
        verify_chain(start, self.audit_entries(), audit::read_head(&self.db)?)
    }

    fn prune_audit<'a>(
        &'a self,
        through: u64,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<Pruned, Error>> {
        Box::pin(self.prune(through, hash))
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        self.db.size_on_disk().map_err(io)
    }

    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// `Error::Locked` when another process holds the lock sled takes on the store's log (sled's own
/// error says so only in its text). The probe's lock is released before sled takes its own;
/// a store without a readable log is left to sled to open or refuse.
fn refuse_if_locked(path: &Path) -> Result<(), Error> {
    let Ok(log) = File::open(path.join("db")) else {
        return Ok(());
    };
    match log.try_lock() {
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
        let Some(log) = &self.log else {
            return;
        };
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
                        reason = "a drop waits for sled's threads to close the log file; no runtime to yield to"
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
}
