//! The committer: one thread that owns every write. Batches sent while it is busy are grouped
//! into one sled batch (atomic), then flushed, then — with `sync = always` — the log file is
//! `fdatasync`ed, and only then is each sender told its batch is durable. One thread, because
//! sled 0.34's `flush` does not fsync and `flush_async` deadlocks with many calls in flight; and
//! because the audit chain needs one writer to keep its order.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::audit::{self, Head};
use super::{Batch, Committed, Error, Key};

/// Most batches grouped into one commit.
const MAX_GROUP: usize = 4096;
/// Requests that may wait for the committer before senders are slowed down.
const QUEUE: usize = 16 * 1024;

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Flush and `fdatasync`: a commit survives power loss. The default.
    #[default]
    Always,
    /// Flush to the OS only: a commit survives the process being killed, not the machine.
    Os,
}

struct Request {
    batch: Batch,
    reply: oneshot::Sender<Result<Committed, Error>>,
}

#[derive(Debug)]
pub(super) struct Handle {
    sender: Option<mpsc::SyncSender<Request>>,
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
        db: sled::Db,
        path: Option<PathBuf>,
        sync: SyncMode,
    ) -> Result<Handle, Error> {
        // sled 0.34 keeps its log in `<path>/db`; an fd of our own on it is enough to fdatasync it.
        let log = match (&path, sync) {
            (Some(path), SyncMode::Always) => {
                Some(File::open(path.join("db")).map_err(Error::Sync)?)
            }
            _ => None,
        };
        let head = audit::read_head(&db)?;
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("quench-committer".into())
            .spawn(move || run(db, log, head, receiver))
            .map_err(Error::Sync)?;
        Ok(Handle {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    pub(super) async fn commit(&self, batch: Batch) -> Result<Committed, Error> {
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
        done.await.map_err(|_| Error::Closed)?
    }
}

fn run(db: sled::Db, log: Option<File>, mut head: Head, receiver: mpsc::Receiver<Request>) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let mut writes = sled::Batch::default();
        let mut next_head = head.clone();
        let mut replies = Vec::with_capacity(group.len());
        for Request { batch, reply } in group {
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
                writes.insert(Key::Audit(seq).encode(), bytes);
                if let Some(run) = run {
                    writes.insert(Key::RunAudit(&run, seq).encode(), Vec::new());
                }
                refs.push(reference);
            }
            replies.push((reply, refs));
        }
        if next_head != head {
            writes.insert(
                Key::Meta("audit_head").encode(),
                serde_json::to_vec(&next_head).expect("head serializes"),
            );
        }
        fail::fail_point!("store::before_commit");
        let outcome = db
            .apply_batch(writes)
            .and_then(|()| db.flush().map(drop))
            .map_err(Error::Io)
            .and_then(|()| {
                log.as_ref()
                    .map_or(Ok(()), |file| file.sync_data().map_err(Error::Sync))
            });
        fail::fail_point!("store::after_commit");
        match outcome {
            Ok(()) => {
                head = next_head;
                for (reply, audit) in replies {
                    let _ = reply.send(Ok(Committed { audit }));
                }
            }
            Err(error) => {
                tracing::error!(%error, "store commit failed; the batch was not applied");
                let message = error.to_string();
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Sync(std::io::Error::other(message.clone()))));
                }
                // The in-memory head may now disagree with the disk; re-read it.
                if let Ok(reread) = audit::read_head(&db) {
                    head = reread;
                }
            }
        }
    }
}

/// Makes a new directory entry durable (once, when the store is created).
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}
