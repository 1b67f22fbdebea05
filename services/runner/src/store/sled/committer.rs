//! The committer: one thread that owns every write. Batches sent while it is busy are grouped
//! into one sled batch (atomic), then flushed, then — with `sync = always` — the log file is
//! `fdatasync`ed, and only then is each sender told its batch is durable. One thread, because
//! sled 0.34's `flush` does not fsync and `flush_async` deadlocks with many calls in flight; and
//! because the audit chain needs one writer to keep its order. After a failed commit it refuses
//! every later one (fail-stop): callers may have queued work that assumed the failed batch.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::mpsc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::super::audit::Head;
use super::super::key::{AUDIT_HEAD, COUNTERS};
use super::super::{Batch, Committed, Error, Key, Pending, SyncMode};
use super::{audit, io, read};

/// Most batches grouped into one commit.
const MAX_GROUP: usize = 4096;
/// Requests that may wait for the committer before senders are slowed down.
const QUEUE: usize = 16 * 1024;

struct Request {
    batch: Batch,
    reply: oneshot::Sender<Result<Committed, Error>>,
}

#[derive(Debug)]
pub(super) struct Handle {
    sender: Option<mpsc::SyncSender<Request>>,
    /// Cancelled when a commit fails.
    pub(super) failed: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Handle {
    /// Closes the queue and waits for the committer to finish what was sent, so that dropping
    /// the store releases the database (and its file lock) before the next open.
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Handle {
    pub(super) fn start(
        db: ::sled::Db,
        path: Option<&Path>,
        sync: SyncMode,
        head: Head,
    ) -> Result<Handle, Error> {
        // sled 0.34 keeps its log in `<path>/db`; an fd of our own on it is enough to fdatasync it.
        let log = match (path, sync) {
            (Some(path), SyncMode::Always) => {
                Some(File::open(path.join("db")).map_err(Error::Sync)?)
            }
            _ => None,
        };
        let counters = read(&db, &Key::Meta(COUNTERS))?.unwrap_or_default();
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let failed = CancellationToken::new();
        let on_failure = failed.clone();
        let thread = std::thread::Builder::new()
            .name("quench-committer".into())
            .spawn(move || run(db, log, head, counters, receiver, on_failure))
            .map_err(Error::Sync)?;
        Ok(Handle {
            sender: Some(sender),
            failed,
            thread: Some(thread),
        })
    }

    /// Queues a batch (in order); the [`Pending`] gets the outcome once it is durable.
    pub(super) async fn submit(&self, batch: Batch) -> Result<Pending, Error> {
        let (reply, done) = oneshot::channel();
        let sender = self.sender.clone().ok_or(Error::Closed)?;
        // The queue is bounded; when it is full, wait off the async threads.
        match sender.try_send(Request { batch, reply }) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(request)) => {
                tokio::task::spawn_blocking(move || sender.send(request))
                    .await
                    .map_err(|_| Error::Closed)?
                    .map_err(|_| Error::Closed)?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(Error::Closed),
        }
        Ok(Pending(Some(done)))
    }
}

fn run(
    db: ::sled::Db,
    log: Option<File>,
    mut head: Head,
    mut counters: BTreeMap<String, i64>,
    receiver: mpsc::Receiver<Request>,
    on_failure: CancellationToken,
) {
    let metrics = crate::metrics::get();
    // Set by a failed commit: batches queued after it were built on state that did not reach
    // the disk, so none is applied (fail-stop; reopening the store recovers).
    let mut failed: Option<String> = None;
    while let Ok(first) = receiver.recv() {
        if let Some(message) = &failed {
            let _ = first.reply.send(Err(Error::Failed(message.clone())));
            continue;
        }
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        metrics.commit_batches.observe(group.len() as f64);
        let mut writes = ::sled::Batch::default();
        let mut next_head = head.clone();
        let mut next_counters: Option<BTreeMap<String, i64>> = None;
        let mut replies = Vec::with_capacity(group.len());
        let mut records = audit::Records::default();
        for Request { batch, reply } in group {
            for (name, delta) in batch.counts {
                *next_counters
                    .get_or_insert_with(|| counters.clone())
                    .entry(name.to_owned())
                    .or_default() += delta;
            }
            for (key, value) in batch.ops {
                match value {
                    Some(value) => writes.insert(key, value),
                    None => writes.remove(key),
                }
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
        if next_head != head {
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
        fail::fail_point!("store::before_commit");
        let outcome = db
            .apply_batch(writes)
            .and_then(|()| db.flush().map(drop))
            .map_err(io)
            .and_then(|()| {
                log.as_ref()
                    .map_or(Ok(()), |file| file.sync_data().map_err(Error::Sync))
            });
        fail::fail_point!("store::after_commit");
        match outcome {
            Ok(()) => {
                metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                head = next_head;
                if let Some(next) = next_counters {
                    counters = next;
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
                failed = Some(message);
                on_failure.cancel();
            }
        }
    }
}

/// Makes a new directory entry durable (once, when the store is created).
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}
