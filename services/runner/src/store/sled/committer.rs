//! The committer: one thread that owns every write. Batches sent while it is busy are grouped
//! into one sled batch (atomic), then flushed, then — with `sync = always` — the log file is
//! `fdatasync`ed, and only then is each sender told its batch is durable. One thread, because
//! sled 0.34's `flush` does not fsync and `flush_async` deadlocks with many calls in flight; and
//! because the audit chain needs one writer to keep its order. After a failed commit it refuses
//! every later one (fail-stop): callers may have queued work that assumed the failed batch.
//! Between groups it compacts the store when the file has outgrown its data (`compact`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::super::audit::Head;
use super::super::key::{AUDIT_HEAD, COUNTERS, LOGGED};
use super::super::{
    Batch, CommitLog, Committed, Compacted, Error, Key, LoggedCommit, Pending, SyncMode, Write,
};
use super::compact::{Compactor, Failure};
use super::{Slot, audit, io};

/// Most batches grouped into one commit.
const MAX_GROUP: usize = 4096;
/// Requests that may wait for the committer before senders are slowed down.
const QUEUE: usize = 16 * 1024;
/// How often an idle committer looks whether a compaction's copy is done.
const COPY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

enum Request {
    Commit(Commit),
    /// Apply commits read from the commit log (see `apply_logged`).
    Logged(Vec<LoggedCommit>, oneshot::Sender<Result<u64, Error>>),
    /// Read every key as of the last commit (see `export_logged`).
    Export(oneshot::Sender<Result<LoggedCommit, Error>>),
    /// Compact now (see `compact`), between the batches sent before and after.
    Compact(oneshot::Sender<Result<Option<Compacted>, Error>>),
}

struct Commit {
    batch: Batch,
    reply: oneshot::Sender<Result<Committed, Error>>,
}

#[derive(Debug)]
pub(super) struct Handle {
    sender: Option<mpsc::SyncSender<Request>>,
    /// Cancelled when a commit fails.
    pub(super) failed: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The sequence number of the last audit entry known durable (see
    /// [`Handle::durable_audit_seq`]).
    durable: Arc<AtomicU64>,
}

impl Drop for Handle {
    /// Closes the queue and waits for the committer to finish what was sent, so that dropping
    /// the store releases the database (and its file lock) before the next open.
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            super::off_the_runtime(|| {
                let _ = thread.join();
            });
        }
    }
}

impl Handle {
    pub(super) fn start(
        slot: Arc<Slot>,
        path: Option<&Path>,
        sync: SyncMode,
        head: Head,
        counters: BTreeMap<String, i64>,
        compactor: Option<Compactor>,
        journal: Option<Box<dyn CommitLog>>,
    ) -> Result<Handle, Error> {
        // sled 0.34 keeps its log in `<path>/db`; an fd of our own on it is enough to fdatasync it.
        let log = match (path, sync) {
            (Some(path), SyncMode::Always) => {
                Some(File::open(path.join("db")).map_err(Error::Sync)?)
            }
            _ => None,
        };
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let failed = CancellationToken::new();
        // What the store holds when it opens is durable (sled recovers only what was synced).
        let durable = Arc::new(AtomicU64::new(head.seq));
        let committer = Committer {
            durable: durable.clone(),
            slot,
            log,
            head,
            counters,
            compactor,
            journal,
            failed: None,
            on_failure: failed.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("quench-committer".into())
            .spawn(move || committer.run(receiver))
            .map_err(Error::Sync)?;
        Ok(Handle {
            sender: Some(sender),
            failed,
            thread: Some(thread),
            durable,
        })
    }

    /// The sequence number of the last audit entry known durable: an entry after it may
    /// already be readable (applied to sled, not yet synced) and could still be lost.
    pub(super) fn durable_audit_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Queues a batch (in order); the [`Pending`] gets the outcome once it is durable.
    pub(super) async fn submit(&self, batch: Batch) -> Result<Pending, Error> {
        let (reply, done) = oneshot::channel();
        self.send(Request::Commit(Commit { batch, reply })).await?;
        Ok(Pending(Some(done)))
    }

    /// Compacts the store after the batches queued so far; `None` for a store without files
    /// of its own.
    pub(super) async fn compact(&self) -> Result<Option<Compacted>, Error> {
        let (reply, done) = oneshot::channel();
        self.send(Request::Compact(reply)).await?;
        done.await.map_err(|_| Error::Closed)?
    }

    /// Applies commits read from the commit log, after the batches queued so far.
    pub(super) async fn apply_logged(&self, commits: Vec<LoggedCommit>) -> Result<u64, Error> {
        let (reply, done) = oneshot::channel();
        self.send(Request::Logged(commits, reply)).await?;
        done.await.map_err(|_| Error::Closed)?
    }

    /// Every key and value, read between two commits, with the commit log position.
    pub(super) async fn export_logged(&self) -> Result<LoggedCommit, Error> {
        let (reply, done) = oneshot::channel();
        self.send(Request::Export(reply)).await?;
        done.await.map_err(|_| Error::Closed)?
    }

    async fn send(&self, request: Request) -> Result<(), Error> {
        let sender = self.sender.clone().ok_or(Error::Closed)?;
        // The queue is bounded; when it is full, wait off the async threads.
        match sender.try_send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(request)) => {
                tokio::task::spawn_blocking(move || sender.send(request))
                    .await
                    .map_err(|_| Error::Closed)?
                    .map_err(|_| Error::Closed)
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(Error::Closed),
        }
    }
}

/// A group's writes, and each write again when something else needs them: the commit log
/// (which gets them before the store), and the copy a compaction is making (the committer
/// writes them into it too once they are in the store, see `compact`).
pub(super) struct Writes {
    batch: ::sled::Batch,
    recorded: Option<Vec<Write>>,
}

impl Writes {
    pub(super) fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if let Some(recorded) = &mut self.recorded {
            recorded.push((key.clone(), Some(value.clone())));
        }
        self.batch.insert(key, value);
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        if let Some(recorded) = &mut self.recorded {
            recorded.push((key.clone(), None));
        }
        self.batch.remove(key);
    }

    /// Sets `key` to `value`, or removes it.
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match value {
            Some(value) => self.insert(key, value),
            None => self.remove(key),
        }
    }
}

/// The committer thread's state.
struct Committer {
    slot: Arc<Slot>,
    /// The log file, for `fdatasync` (with `sync = always`).
    log: Option<File>,
    head: Head,
    counters: BTreeMap<String, i64>,
    /// None for a temporary store.
    compactor: Option<Compactor>,
    /// Where each commit goes before it is applied (cluster mode).
    journal: Option<Box<dyn CommitLog>>,
    /// Set by a failed commit: batches queued after it were built on state that did not reach
    /// the disk, so none is applied (fail-stop; reopening the store recovers).
    failed: Option<String>,
    on_failure: CancellationToken,
    durable: Arc<AtomicU64>,
}

impl Committer {
    fn run(mut self, receiver: mpsc::Receiver<Request>) {
        // Who asked for the compaction under way (or about to begin).
        let mut asked = Vec::new();
        loop {
            // While a copy runs, wake up now and then to see whether it is done.
            let first = if self.copying() {
                match receiver.recv_timeout(COPY_POLL) {
                    Ok(request) => Some(request),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match receiver.recv() {
                    Ok(request) => Some(request),
                    Err(_) => break,
                }
            };
            let mut group = Vec::new();
            let mut next = first;
            while let Some(request) = next.take() {
                match request {
                    Request::Commit(commit) => group.push(commit),
                    Request::Compact(reply) => asked.push(reply),
                    Request::Logged(commits, reply) => {
                        // After the batches before it, before those after it.
                        let before = std::mem::take(&mut group);
                        self.commit_or_refuse(before);
                        let _ = reply.send(self.apply_logged(commits));
                    }
                    Request::Export(reply) => {
                        let before = std::mem::take(&mut group);
                        self.commit_or_refuse(before);
                        let _ = reply.send(self.export());
                    }
                }
                if group.len() < MAX_GROUP {
                    next = receiver.try_recv().ok();
                }
            }
            if let Some(message) = &self.failed {
                for commit in group {
                    let _ = commit.reply.send(Err(Error::Failed(message.clone())));
                }
                for reply in asked.drain(..) {
                    let _ = reply.send(Err(Error::Failed(message.clone())));
                }
                continue;
            }
            if !group.is_empty() {
                self.commit(group);
            }
            if self.failed.is_none()
                && let Some(outcome) = self.compaction_step(!asked.is_empty())
            {
                let outcome = outcome.map_err(|error| error.to_string());
                for reply in asked.drain(..) {
                    let _ = reply.send(outcome.clone().map_err(Error::Compaction));
                }
            }
        }
        if let Some(compactor) = self.compactor.as_mut() {
            compactor.abandon();
        }
    }

    fn copying(&self) -> bool {
        self.compactor.as_ref().is_some_and(Compactor::copying)
    }

    fn commit(&mut self, group: Vec<Commit>) {
        let metrics = crate::metrics::get();
        let started = std::time::Instant::now();
        metrics.commit_batches.observe(group.len() as f64);
        let mut writes = Writes {
            batch: ::sled::Batch::default(),
            recorded: (self.copying() || self.journal.is_some()).then(Vec::new),
        };
        let mut next_head = self.head.clone();
        let mut next_counters: Option<BTreeMap<String, i64>> = None;
        let mut replies = Vec::with_capacity(group.len());
        let mut records = audit::Records::default();
        for Commit { batch, reply } in group {
            for (name, delta) in batch.counts {
                *next_counters
                    .get_or_insert_with(|| self.counters.clone())
                    .entry(name.to_owned())
                    .or_default() += delta;
            }
            for (key, value) in batch.ops {
                writes.write(key, value);
            }
            let mut refs = Vec::with_capacity(batch.audit.len());
            for draft in batch.audit {
                let run = draft.run_id.clone();
                let (seq, bytes, reference) = audit::chain(&mut next_head, draft);
                records.push(seq, &bytes, run, &mut writes);
                refs.push(reference);
            }
            replies.push((reply, refs));
        }
        records.finish(&mut writes);
        if next_head != self.head {
            writes.insert(
                Key::Meta(AUDIT_HEAD).encode(),
                serde_json::to_vec(&next_head).expect("head serializes"),
            );
        }
        if let Some(next) = &next_counters {
            writes.insert(
                Key::Meta(COUNTERS).encode(),
                serde_json::to_vec(next).expect("counters serialize"),
            );
        }
        if let Some(journal) = self.journal.as_mut() {
            match journal.append(writes.recorded.as_deref().unwrap_or_default()) {
                Ok(position) => writes.insert(
                    Key::Meta(LOGGED).encode(),
                    position.to_string().into_bytes(),
                ),
                Err(message) => {
                    tracing::error!(error = %message, "the commit log did not take a commit; refusing further writes");
                    let error = Error::Logged(message);
                    // Failed before anyone is told, so a caller told sees the store failed.
                    self.fail(error.to_string());
                    for (reply, _) in replies {
                        let _ = reply.send(Err(Error::Failed(error.to_string())));
                    }
                    return;
                }
            }
        }
        let Writes {
            batch: writes,
            recorded,
        } = writes;
        fail::fail_point!("store::before_commit");
        let outcome = self
            .slot
            .with(|db| {
                db.apply_batch(writes)
                    .and_then(|()| db.flush().map(drop))
                    .map_err(io)
            })
            .and_then(|()| {
                self.log
                    .as_ref()
                    .map_or(Ok(()), |file| file.sync_data().map_err(Error::Sync))
            });
        fail::fail_point!("store::after_commit");
        match outcome {
            Ok(()) => {
                // Into the copy after the store, not before: whatever the copy's thread read of
                // these keys from the store before this commit, this write then overwrites.
                if let (Some(recorded), Some(compactor)) = (recorded, self.compactor.as_mut())
                    && compactor.copying()
                {
                    compactor.written(recorded);
                }
                metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.durable.store(next_head.seq, Ordering::Release);
                self.head = next_head;
                if let Some(next) = next_counters {
                    self.counters = next;
                }
                for (reply, audit) in replies {
                    let _ = reply.send(Ok(Committed { audit }));
                }
            }
            Err(error) => {
                tracing::error!(%error, "store commit failed; refusing further writes");
                let message = error.to_string();
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Failed(message.clone())));
                }
                self.fail(message);
            }
        }
    }

    /// Commits `group` now (a request that must come after it is next), or refuses it after a
    /// failed commit.
    fn commit_or_refuse(&mut self, group: Vec<Commit>) {
        match &self.failed {
            Some(message) => {
                for commit in group {
                    let _ = commit.reply.send(Err(Error::Failed(message.clone())));
                }
            }
            None if !group.is_empty() => self.commit(group),
            None => {}
        }
    }

    /// Every key and value of the default tree (the only one written), with the position.
    fn export(&self) -> Result<LoggedCommit, Error> {
        if let Some(message) = &self.failed {
            return Err(Error::Failed(message.clone()));
        }
        self.slot.with(|db| {
            let writes = db
                .iter()
                .map(|item| {
                    item.map(|(key, value)| (key.to_vec(), Some(value.to_vec())))
                        .map_err(io)
                })
                .collect::<Result<Vec<Write>, Error>>()?;
            Ok(LoggedCommit {
                position: super::logged_position(db)?,
                writes,
            })
        })
    }

    /// Applies commits read from the commit log as they are, in order, skipping those at or
    /// before the position already applied, each in one sled batch with its position; then
    /// reads the audit head and the counters again (the commits moved them). Returns the
    /// position reached.
    fn apply_logged(&mut self, commits: Vec<LoggedCommit>) -> Result<u64, Error> {
        if let Some(message) = &self.failed {
            return Err(Error::Failed(message.clone()));
        }
        let mut position = self.slot.with(super::logged_position)?;
        for LoggedCommit {
            position: at,
            writes,
        } in commits
        {
            if at <= position {
                continue;
            }
            let mut batch = Writes {
                batch: ::sled::Batch::default(),
                recorded: self.copying().then(Vec::new),
            };
            for (key, value) in writes {
                batch.write(key, value);
            }
            batch.insert(Key::Meta(LOGGED).encode(), at.to_string().into_bytes());
            let Writes { batch, recorded } = batch;
            if let Err(error) = self.slot.with(|db| db.apply_batch(batch).map_err(io)) {
                self.fail(error.to_string());
                return Err(error);
            }
            if let (Some(recorded), Some(compactor)) = (recorded, self.compactor.as_mut()) {
                compactor.written(recorded);
            }
            position = at;
        }
        let synced = self
            .slot
            .with(|db| db.flush().map(drop).map_err(io))
            .and_then(|()| {
                self.log
                    .as_ref()
                    .map_or(Ok(()), |file| file.sync_data().map_err(Error::Sync))
            })
            .and_then(|()| {
                self.slot.with(|db| {
                    Ok((
                        audit::read_head(db)?,
                        super::read(db, &Key::Meta(COUNTERS))?.unwrap_or_default(),
                    ))
                })
            });
        match synced {
            Ok((head, counters)) => {
                self.durable.store(head.seq, Ordering::Release);
                self.head = head;
                self.counters = counters;
                Ok(position)
            }
            Err(error) => {
                self.fail(error.to_string());
                Err(error)
            }
        }
    }

    /// Moves a compaction on between groups (see `compact`): begins one when it is due or
    /// `asked` for, and swaps the copy in once it is made. The outcome, once there is one.
    fn compaction_step(&mut self, asked: bool) -> Option<Result<Option<Compacted>, Error>> {
        let Some(compactor) = self.compactor.as_mut() else {
            return asked.then_some(Ok(None));
        };
        if !compactor.copying() {
            if !(asked || compactor.due(&self.slot)) {
                return None;
            }
            if let Err(failure) = compactor.begin(&self.slot) {
                return Some(Err(self.compaction_failed(failure)));
            }
        }
        let compactor = self.compactor.as_mut()?;
        if !compactor.copied() {
            return None;
        }
        let outcome = self.compact();
        // Who asked finds the old database gone (commits wait for its removal only then).
        if asked && let Some(compactor) = self.compactor.as_mut() {
            compactor.settle();
        }
        Some(outcome)
    }

    /// Swaps the finished copy in; batches sent meanwhile wait in the queue.
    fn compact(&mut self) -> Result<Option<Compacted>, Error> {
        let Some(compactor) = self.compactor.as_mut() else {
            return Ok(None);
        };
        match compactor.finish(&self.slot, &mut self.log) {
            Ok(compacted) => {
                let metrics = crate::metrics::get();
                metrics.compactions.inc();
                metrics
                    .compaction_seconds
                    .observe(compacted.paused.as_secs_f64());
                tracing::info!(
                    before_mib = compacted.before_bytes / (1024 * 1024),
                    after_mib = compacted.after_bytes / (1024 * 1024),
                    live_mib = compacted.live_bytes / (1024 * 1024),
                    copying_seconds = compacted.copying.as_secs_f64(),
                    paused_seconds = compacted.paused.as_secs_f64(),
                    "store compacted (commits went on while it copied, and waited while it swapped)"
                );
                Ok(Some(compacted))
            }
            Err(failure) => Err(self.compaction_failed(failure)),
        }
    }

    fn compaction_failed(&mut self, failure: Failure) -> Error {
        match failure {
            Failure::Recovered(error) => {
                tracing::warn!(%error, "store compaction failed; the store goes on uncompacted");
                error
            }
            Failure::Lost(error) => {
                tracing::error!(
                    %error,
                    "store compaction failed and the store could not be opened again; refusing further writes"
                );
                self.fail(error.to_string());
                error
            }
        }
    }

    fn fail(&mut self, message: String) {
        self.failed = Some(message);
        self.on_failure.cancel();
    }
}

/// Makes a new directory entry durable (once, when the store is created).
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}
