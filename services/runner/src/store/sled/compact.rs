//! Online compaction of the sled store. sled 0.34 reuses a log segment only after its segment
//! cleaner has moved the live pages out of it, which it does not keep up with: a store whose
//! data is mostly written once and deleted later (runs purged after `retain_ended`, seen ids
//! expiring, the audit log pruned after export) grows by about everything ever written. So the
//! committer — the one writer — copies every live key into a fresh sled beside the store once
//! the file has grown past [`COMPACT_FACTOR`] × its size after the last compaction (or at
//! open), and past a floor, and swaps the copy in. The copy is made by a thread of its own
//! while commits go on, in key order, and the committer writes into the copy too each key it
//! commits that the thread has passed (see [`Mirror`]; a later chunk reads those ahead), so the
//! copy is complete, with every commit in it, as soon as the thread has copied every key: how
//! long that takes no longer decides how much is left to catch up.
//! The thread then closes the copy and opens it again (below), while the committer notes the
//! keys it writes instead; the thread reads those again into the copy, in rounds while they
//! get fewer, and the committer reads the last round's keys itself and swaps: batches
//! submitted during that last part (the pause) wait in its bounded queue. Readers read the old
//! database until the swap and wait for the swap itself.
//!
//! What keeps the pause short and the memory flat: the copy is written key by key (sled's
//! `apply_batch` takes a lock that stops every read and write of every database in the
//! process, and holds its log until the batch is in), in chunks of [`CHUNK`] keys, so the
//! committer waits for at most one chunk; the copy is opened with a small cache; the catch-up
//! covers only the writes made while the copy is closed and opened again, and its rounds are
//! the thread's, so the committer's last round holds only what was written during the one
//! before; and the reopening makes sled write a snapshot of its page table (sled has no other
//! way to ask for one), so the open after the swap reads only the log the rounds wrote, not
//! the whole copy. Reads and writes of the default tree go through each `Db`'s own handle,
//! never a second one from `open_tree` (see [`tree`]: a second handle's root goes stale, and
//! every lookup through it walked a whole level of the tree — the catch-up of a 1.7 GiB copy
//! ran at 6k keys/s instead of 50–100k).
//!
//! The directory dance, for the store `P` (each rename and removal is followed by an fsync of
//! the parent directory):
//!
//! 1. the copy is written into `P.quench-compacting`, flushed, and fsynced (files and
//!    directories), then renamed `P.quench-compacted`: that name is its completeness marker;
//! 2. the old database is closed, `P` is renamed `P.quench-old`, `P.quench-compacted` is
//!    renamed `P`;
//! 3. `P.quench-old` is removed and `P` is opened.
//!
//! [`repair`], run by every open, finishes or rolls back what a crash interrupted: a
//! `compacting` directory is an unfinished copy (removed); a `compacted` one beside `P` is
//! rolled back (removed: `P` holds the same data, and may have taken commits after a failed
//! swap); a `compacted` one without `P` is rolled forward (renamed `P`); an `old` one beside
//! `P` is removed (without `P`, it is renamed back). What is inside `P` keeps format version 1.
//!
//! Locks: sled locks `P/db`, but between closing the old database and opening the new one no
//! sled would, so the process also holds an exclusive `flock` on the directory `P` itself for
//! as long as the store is open, and on the copy's directory from its creation (it becomes
//! `P`). An open locks every directory of the dance before repairing, so it never "repairs" a
//! compaction that another process has under way; a killed process holds no lock.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::super::Write;
use super::super::{BackendError, COMPACT_FACTOR, Compacted, Error, SyncMode};
use super::committer::sync_dir;
use super::{Opened, Slot, io as sled_error, open_db, wait_released};

/// How often the committer looks at the file's size (between batches).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The copy's page cache while it is made (it is opened with the store's own once swapped in):
/// the copy writes each key once, so a cache would only double the process's memory.
const COPY_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// The catch-up rounds end once a round has at most this many keys, or has no fewer than the
/// round before (commits write faster than the copy catches up), or after [`MAX_ROUNDS`]: the
/// committer reads what is left with commits waiting.
const LAST_ROUND_KEYS: usize = 2048;
const MAX_ROUNDS: usize = 32;

/// The store's directory and its siblings of the dance.
#[derive(Debug, Clone)]
pub(super) struct Dance {
    store: PathBuf,
    compacting: PathBuf,
    compacted: PathBuf,
    old: PathBuf,
    parent: PathBuf,
}

impl Dance {
    /// None for a path without a last component of its own (`/`, `..`): such a store is
    /// never compacted.
    pub(super) fn of(store: &Path) -> Option<Dance> {
        let name = store.file_name()?;
        let sibling = |suffix: &str| {
            let mut sibling = name.to_os_string();
            sibling.push(suffix);
            store.with_file_name(sibling)
        };
        let parent = match store.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Some(Dance {
            store: store.to_path_buf(),
            compacting: sibling(".quench-compacting"),
            compacted: sibling(".quench-compacted"),
            old: sibling(".quench-old"),
            parent,
        })
    }

    fn open_error(&self, source: io::Error) -> Error {
        let path = self.store.clone();
        if matches!(
            source.kind(),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
        ) {
            Error::ReadOnly {
                path,
                source: BackendError::new(source),
            }
        } else {
            Error::Open {
                path,
                source: BackendError::new(source),
            }
        }
    }

    /// Removes the database from before a swap; what a failure leaves, the next open removes.
    fn remove_old(&self) {
        let removed = std::fs::remove_dir_all(&self.old).and_then(|()| sync_dir(&self.parent));
        if let Err(error) = removed {
            tracing::warn!(%error, path = %self.old.display(), "cannot remove the store's database from before its compaction");
        }
        fail::fail_point!("store::compact_cleaned");
    }

    /// At open: locks every directory of the dance (another process's compaction under way is
    /// [`Error::Locked`]), repairs what a crash left, and returns the lock on `P` (created if
    /// missing), held as long as the store is open.
    pub(super) fn open(&self) -> Result<DirLock, Error> {
        {
            let mut held = Vec::new();
            for directory in [&self.store, &self.compacting, &self.compacted, &self.old] {
                held.extend(self.lock(directory)?);
            }
            repair(self).map_err(|error| self.open_error(error))?;
        }
        std::fs::create_dir_all(&self.store).map_err(|error| self.open_error(error))?;
        self.lock(&self.store)?
            .ok_or_else(|| self.open_error(io::ErrorKind::NotFound.into()))
    }

    /// An exclusive lock on `directory`; none when it does not exist.
    fn lock(&self, directory: &Path) -> Result<Option<DirLock>, Error> {
        let file = match File::open(directory) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.open_error(error)),
        };
        match super::try_lock_a_moment(&file, super::Lock::Exclusive) {
            Ok(()) => Ok(Some(DirLock(file))),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: self.store.clone(),
            }),
            // A file system without locks: sled's own lock on `P/db` is all there is.
            Err(std::fs::TryLockError::Error(_)) => Ok(Some(DirLock(file))),
        }
    }
}

/// An exclusive `flock` on a directory, held while this lives.
#[derive(Debug)]
pub(super) struct DirLock(#[expect(dead_code, reason = "held for its lock")] File);

/// Finishes or rolls back an interrupted compaction (see the module's documentation). The
/// caller holds the locks.
pub(super) fn repair(dance: &Dance) -> io::Result<()> {
    if dance.compacting.try_exists()? {
        std::fs::remove_dir_all(&dance.compacting)?;
        sync_dir(&dance.parent)?;
    }
    if dance.compacted.try_exists()? {
        if dance.store.try_exists()? {
            std::fs::remove_dir_all(&dance.compacted)?;
        } else {
            std::fs::rename(&dance.compacted, &dance.store)?;
        }
        sync_dir(&dance.parent)?;
    }
    if dance.old.try_exists()? {
        if dance.store.try_exists()? {
            std::fs::remove_dir_all(&dance.old)?;
        } else {
            std::fs::rename(&dance.old, &dance.store)?;
        }
        sync_dir(&dance.parent)?;
    }
    Ok(())
}

/// fsyncs every file and directory under `root`, and `root`.
fn sync_tree(root: &Path) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(root).contents_first(true) {
        let entry = entry.map_err(io::Error::other)?;
        File::open(entry.path())?.sync_all()?;
    }
    Ok(())
}

/// Why a compaction did not happen.
#[derive(Debug)]
pub(super) enum Failure {
    /// The store goes on with the database it had (or the copy, when only cleaning up failed).
    Recovered(Error),
    /// No database could be opened again: the store refuses every later commit.
    Lost(Error),
}

/// The committer's part: when to compact, and how.
#[derive(Debug)]
pub(super) struct Compactor {
    dance: Dance,
    cache_bytes: u64,
    sync: SyncMode,
    floor: u64,
    /// The file's size after the last compaction, or at open.
    baseline: u64,
    checked: Instant,
    /// The copy under way.
    copying: Option<Copying>,
    /// Removes the old database after a swap (a large file: its removal is no part of the
    /// pause). Joined before the next compaction, whose swap reuses the name.
    cleaning: Option<std::thread::JoinHandle<()>>,
}

/// A copy being made by its own thread while commits go on.
#[derive(Debug)]
struct Copying {
    started: Instant,
    before: u64,
    /// On `P.quench-compacting`, from its creation.
    lock: DirLock,
    /// Returns the copy: every key of the old database as the thread read it, and the keys of
    /// its catch-up rounds; and the copy's size once every live key was in.
    thread: std::thread::JoinHandle<Result<(::sled::Db, u64), Error>>,
    mirror: Arc<Mirror>,
    stop: Arc<AtomicBool>,
}

/// What the committer and the copy's thread share while the copy is made. First the copy
/// itself: the thread copies the old database into it a chunk of keys at a time, in key
/// order, each chunk read and written under the lock, and the committer writes each commit's
/// keys that the thread has passed into it too, under the lock, after the commit is in the
/// old database. So for every key, whichever of the two writes it last into the copy wrote its
/// last value: a chunk read before the commit's write to the old database is overwritten by
/// the committer's, and one read after it reads the value the committer wrote; a key ahead of
/// the thread when it is committed is read by a later chunk, after the commit. Once every key
/// is copied, the thread takes the copy back (to close and reopen it, see the module's
/// documentation) and the committer notes the keys it writes instead; the thread, and finally
/// the committer, read those again into the copy.
#[derive(Debug, Default)]
struct Mirror(parking_lot::Mutex<Mirroring>);

#[derive(Debug, Default)]
struct Mirroring {
    /// The copy, while commits are also written into it.
    copy: Option<::sled::Db>,
    /// How far the thread has copied the default tree (the one commits write): the committer
    /// writes into the copy only the keys the thread has passed; those ahead the thread reads
    /// later, as they are then. So a key a commit creates and a later one deletes while both
    /// are ahead never reaches the copy at all (the copy does not fill with the churn of the
    /// time it takes), and the committer writes less.
    passed: Passed,
    /// Keys written since the thread took the copy back. A read of one of them that follows
    /// the note sees the write (it is noted once written), and a key written again after a
    /// round took it is noted again, so the copy ends with every key's last value.
    touched: BTreeSet<Vec<u8>>,
    /// A write into the copy failed: the compaction is given up.
    failed: Option<String>,
}

/// How far the copy's thread has copied the default tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Passed {
    /// Not begun.
    #[default]
    Nothing,
    /// Every key up to this one, included.
    Through(::sled::IVec),
    /// Every key.
    All,
}

impl Passed {
    fn covers(&self, key: &[u8]) -> bool {
        match self {
            Passed::Nothing => false,
            Passed::Through(last) => key <= last.as_ref(),
            Passed::All => true,
        }
    }
}

impl Mirror {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Mirroring> {
        self.0.lock()
    }

    /// The committer's writes, once they are in the old database.
    fn written(&self, writes: Vec<Write>) {
        let mut mirroring = self.lock();
        if mirroring.failed.is_some() {
            return;
        }
        let Some(copy) = &mirroring.copy else {
            mirroring
                .touched
                .extend(writes.into_iter().map(|(key, _)| key));
            return;
        };
        let passed = &mirroring.passed;
        let written = writes
            .into_iter()
            .filter(|(key, _)| passed.covers(key))
            .try_for_each(|(key, value)| match value {
                Some(value) => copy.insert(key, value).map(drop),
                None => copy.remove(key).map(drop),
            });
        if let Err(error) = written {
            mirroring.failed = Some(error.to_string());
        }
    }

    /// Ends the committer's writes into the copy: from now on it notes the keys it writes.
    fn stop_writing(&self) -> Result<(), Error> {
        let mut mirroring = self.lock();
        mirroring.copy = None;
        match &mirroring.failed {
            Some(failed) => Err(Error::Failed(format!(
                "a commit could not be written into the compaction's copy: {failed}"
            ))),
            None => Ok(()),
        }
    }

    fn take(&self) -> BTreeSet<Vec<u8>> {
        std::mem::take(&mut self.lock().touched)
    }

    fn put_back(&self, keys: BTreeSet<Vec<u8>>) {
        self.lock().touched.extend(keys);
    }
}

impl Compactor {
    pub(super) fn new(
        dance: Dance,
        cache_bytes: u64,
        sync: SyncMode,
        floor: u64,
        size: u64,
    ) -> Compactor {
        Compactor {
            dance,
            cache_bytes,
            sync,
            floor,
            baseline: size,
            checked: Instant::now(),
            copying: None,
            cleaning: None,
        }
    }

    /// Whether the file has outgrown its live data: larger than [`COMPACT_FACTOR`] × the
    /// baseline and than the floor. Looks at the size at most once per [`CHECK_EVERY`].
    pub(super) fn due(&mut self, slot: &Slot) -> bool {
        if self.checked.elapsed() < CHECK_EVERY {
            return false;
        }
        self.checked = Instant::now();
        let limit = self.baseline.saturating_mul(COMPACT_FACTOR).max(self.floor);
        slot.with(|db| db.size_on_disk().map_err(sled_error))
            .is_ok_and(|size| size > limit)
    }

    pub(super) fn copying(&self) -> bool {
        self.copying.is_some()
    }

    /// Whether the copy's thread is done (and [`Compactor::finish`] will not wait for it).
    pub(super) fn copied(&self) -> bool {
        self.copying
            .as_ref()
            .is_some_and(|copying| copying.thread.is_finished())
    }

    /// A commit's writes, once in the store, while the copy is made (see [`Mirror`]).
    pub(super) fn written(&mut self, writes: Vec<Write>) {
        if let Some(copying) = &self.copying {
            copying.mirror.written(writes);
        }
    }

    /// Starts the copy (step 1) on a thread of its own, into `P.quench-compacting`.
    pub(super) fn begin(&mut self, slot: &Slot) -> Result<(), Failure> {
        self.settle();
        let before = slot
            .with(|db| db.size_on_disk().map_err(sled_error))
            .map_err(Failure::Recovered)?;
        // A failure from here on leaves the old database in place; the next attempt waits
        // until the file has doubled again.
        self.baseline = before;
        let started = Instant::now();
        let dance = &self.dance;
        let fs_error = |error| dance.open_error(error);
        let prepared = (|| {
            if dance.compacting.try_exists().map_err(fs_error)? {
                std::fs::remove_dir_all(&dance.compacting).map_err(fs_error)?;
            }
            std::fs::create_dir(&dance.compacting).map_err(fs_error)?;
            let lock = dance
                .lock(&dance.compacting)?
                .ok_or_else(|| fs_error(io::ErrorKind::NotFound.into()))?;
            let copy = open_db(&dance.compacting, COPY_CACHE_BYTES)?;
            let old = slot.with(|db| Ok(db.clone()))?;
            Ok::<_, Error>((lock, copy, old))
        })();
        let (lock, copy, old) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dance.compacting);
                return Err(Failure::Recovered(error));
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mirror = Arc::new(Mirror::default());
        mirror.lock().copy = Some(copy.clone());
        let thread = {
            let stop = stop.clone();
            let shared = mirror.clone();
            let path = dance.compacting.clone();
            std::thread::Builder::new()
                .name("quench-compactor".into())
                .spawn(move || {
                    let made = make_copy(&old, copy, &path, &shared, &stop);
                    // Whatever happened, the committer holds the copy no longer.
                    shared.lock().copy = None;
                    made
                })
                .map_err(|error| {
                    mirror.lock().copy = None;
                    Failure::Recovered(Error::Sync(error))
                })?
        };
        self.copying = Some(Copying {
            started,
            before,
            lock,
            thread,
            mirror,
            stop,
        });
        Ok(())
    }

    /// Waits until the old database of the last compaction is removed.
    pub(super) fn settle(&mut self) {
        if let Some(cleaning) = self.cleaning.take() {
            let _ = cleaning.join();
        }
    }

    /// Stops a copy under way and removes it (the committer is closing).
    pub(super) fn abandon(&mut self) {
        self.settle();
        if let Some(copying) = self.copying.take() {
            copying.stop.store(true, Ordering::Relaxed);
            if let Ok(Ok((copy, _))) = copying.thread.join() {
                drop(copy);
                wait_released(&self.dance.compacting.join("db"));
            }
            let _ = std::fs::remove_dir_all(&self.dance.compacting);
        }
    }

    /// Brings the finished copy up to date, makes it durable and swaps it in (see the module's
    /// documentation); commits wait meanwhile. `log` is the committer's handle for `fdatasync`,
    /// reopened on the new file.
    pub(super) fn finish(
        &mut self,
        slot: &Slot,
        log: &mut Option<File>,
    ) -> Result<Compacted, Failure> {
        let Some(copying) = self.copying.take() else {
            return Err(Failure::Recovered(Error::Closed));
        };
        let copied = copying.started.elapsed();
        let paused = Instant::now();
        let before = copying.before;
        let lock = copying.lock;
        let mut live = 0;
        let published = copying
            .thread
            .join()
            .unwrap_or_else(|_| Err(Error::Failed("the compaction's copy panicked".to_owned())))
            .and_then(|(copy, copied)| {
                live = copied;
                self.publish(slot, copy, &copying.mirror)
            });
        if let Err(error) = published {
            let _ = std::fs::remove_dir_all(&self.dance.compacting);
            let _ = std::fs::remove_dir_all(&self.dance.compacted);
            return Err(Failure::Recovered(error));
        }
        let mut opened = slot
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(Opened { db, locks }) = opened.take() else {
            return Err(Failure::Lost(Error::Closed));
        };
        *log = None;
        drop(db);
        wait_released(&self.dance.store.join("db"));
        match self.swap().and_then(|()| self.open()) {
            Ok((db, file)) => {
                *opened = Some(Opened {
                    db,
                    locks: vec![lock],
                });
                drop(locks);
                *log = file;
            }
            Err(error) => {
                // Whatever the dance got to, `repair` makes `P` whole again (this process
                // holds every lock) and the store goes on with it.
                let reopened = repair(&self.dance)
                    .map_err(|error| self.dance.open_error(error))
                    .and_then(|()| self.open());
                let (db, file) = reopened.map_err(|_| Failure::Lost(lost(&error)))?;
                let mut locks = locks;
                locks.push(lock);
                *opened = Some(Opened { db, locks });
                *log = file;
                return Err(Failure::Recovered(error));
            }
        }
        let after = opened
            .as_ref()
            .map_or(Ok(0), |opened| opened.db.size_on_disk().map_err(sled_error))
            .map_err(Failure::Recovered)?;
        drop(opened);
        self.clean();
        // Measured against the live data, not the file after the swap: that also holds what
        // commits wrote during the copy, and doubling it would let each compaction start later
        // than the one before (a store under a steady stream of writes would grow without end).
        self.baseline = live.min(after);
        self.checked = Instant::now();
        Ok(Compacted {
            before_bytes: before,
            after_bytes: after,
            live_bytes: live,
            copying: copied,
            paused: paused.elapsed(),
        })
    }

    /// The rest of step 1: the keys written meanwhile read again into the copy, which is then
    /// flushed, closed, fsynced and renamed `P.quench-compacted`.
    fn publish(&self, slot: &Slot, copy: ::sled::Db, mirror: &Mirror) -> Result<(), Error> {
        let dance = &self.dance;
        slot.with(|db| catch_up(db, &copy, mirror.take()))?;
        copy.flush().map_err(sled_error)?;
        drop(copy);
        wait_released(&dance.compacting.join("db"));
        sync_tree(&dance.compacting).map_err(Error::Sync)?;
        fail::fail_point!("store::compact_copied");
        std::fs::rename(&dance.compacting, &dance.compacted)
            .map_err(|error| dance.open_error(error))?;
        sync_dir(&dance.parent).map_err(Error::Sync)?;
        fail::fail_point!("store::compact_published");
        Ok(())
    }

    /// Step 2 and 3's removal: the copy takes the store's name.
    fn swap(&self) -> Result<(), Error> {
        let dance = &self.dance;
        let fs_error = |error| dance.open_error(error);
        std::fs::rename(&dance.store, &dance.old).map_err(fs_error)?;
        sync_dir(&dance.parent).map_err(Error::Sync)?;
        fail::fail_point!("store::compact_moved_aside");
        std::fs::rename(&dance.compacted, &dance.store).map_err(fs_error)?;
        sync_dir(&dance.parent).map_err(Error::Sync)?;
        fail::fail_point!("store::compact_swapped");
        Ok(())
    }

    /// Step 3's removal of the old database, on a thread of its own (an open removes what a
    /// crash leaves of it).
    fn clean(&mut self) {
        let dance = self.dance.clone();
        match std::thread::Builder::new()
            .name("quench-compact-clean".into())
            .spawn(move || dance.remove_old())
        {
            Ok(thread) => self.cleaning = Some(thread),
            Err(_) => self.dance.remove_old(),
        }
    }

    /// Opens `P`, and its log for `fdatasync` when every commit is synced.
    fn open(&self) -> Result<(::sled::Db, Option<File>), Error> {
        let db = open_db(&self.dance.store, self.cache_bytes)?;
        let log = match self.sync {
            SyncMode::Always => Some(File::open(self.dance.store.join("db")).map_err(Error::Sync)?),
            SyncMode::Os => None,
        };
        Ok((db, log))
    }
}

/// The copy's thread: every key of `old` into `copy`, with the committer writing every commit
/// into it too (see [`Mirror`]); then the copy is taken back, closed and opened again (sled
/// writes a snapshot of its page table at open, so the open after the swap reads only the log
/// written since, not the whole copy), and the keys written meanwhile are read into it, in
/// rounds while they get fewer (see [`LAST_ROUND_KEYS`]). The copy's log is fsynced before it
/// is returned, so making it durable under the pause costs only the last round. Returns early,
/// with the copy incomplete, once `stop` is set.
fn make_copy(
    old: &::sled::Db,
    copy: ::sled::Db,
    path: &Path,
    mirror: &Mirror,
    stop: &AtomicBool,
) -> Result<(::sled::Db, u64), Error> {
    let started = Instant::now();
    let copied = copy_into(old, &copy, mirror, stop)?;
    mirror.stop_writing()?;
    let live = copy.size_on_disk().map_err(sled_error)?;
    tracing::debug!(
        live_mib = live / (1024 * 1024),
        keys = copied.keys,
        data_mib = copied.bytes / (1024 * 1024),
        seconds = started.elapsed().as_secs_f64(),
        "compaction copied every live key"
    );
    if stop.load(Ordering::Relaxed) {
        return Ok((copy, live));
    }
    copy.flush().map_err(sled_error)?;
    drop(copy);
    wait_released(&path.join("db"));
    let copy = open_db(path, COPY_CACHE_BYTES)?;
    catch_up_in_rounds(old, &copy, mirror, stop)?;
    copy.flush().map_err(sled_error)?;
    File::open(path.join("db"))
        .and_then(|log| log.sync_data())
        .map_err(Error::Sync)?;
    Ok((copy, live))
}

/// Reads the keys written meanwhile into the copy, a round at a time, until a round is small
/// or no smaller than the one before (see [`LAST_ROUND_KEYS`]); leaves the rest noted.
fn catch_up_in_rounds(
    old: &::sled::Db,
    copy: &::sled::Db,
    mirror: &Mirror,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let mut previous = usize::MAX;
    for _ in 0..MAX_ROUNDS {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let keys = mirror.take();
        if keys.len() <= LAST_ROUND_KEYS || keys.len() >= previous {
            mirror.put_back(keys);
            return Ok(());
        }
        previous = keys.len();
        let started = Instant::now();
        catch_up(old, copy, keys)?;
        // What decides whether a compaction converges: a round must read its keys faster than
        // commits touch new ones.
        tracing::debug!(
            keys = previous,
            seconds = started.elapsed().as_secs_f64(),
            "compaction catch-up round"
        );
    }
    Ok(())
}

/// sled's name of the tree a `Db` is itself (sled 0.34 does not export it).
const DEFAULT_TREE: &[u8] = b"__sled__default";

/// The tree `name` of `db`: for the default tree, the `Db`'s own handle, never
/// `open_tree(DEFAULT_TREE)`. In sled 0.34 that returns a `Tree` of its own beside the `Db`'s,
/// each with its own copy of the root's page id: root splits made through one leave the
/// other's root stale, and every lookup through the stale one then starts at the old root —
/// now the leftmost node of its level — tries to hoist a new root (and fails: allocating and
/// freeing a page, in the log too), and walks that level's siblings one by one to the key.
/// The copy (written through one handle, caught up through the other) and the old database
/// (written by the committer through the `Db`, read by the copy through the other) both hit
/// this: in the retention benchmark the catch-up ran ~10× slower, slower the larger the store
/// (6k keys/s on a 1.7 GiB copy), and the compaction never converged.
fn tree(db: &::sled::Db, name: &[u8]) -> Result<::sled::Tree, Error> {
    if name == DEFAULT_TREE {
        Ok(::sled::Tree::clone(db))
    } else {
        db.open_tree(name).map_err(sled_error)
    }
}

/// What [`copy_into`] did.
#[derive(Debug, Default)]
struct Copied {
    keys: u64,
    /// Of their keys and values.
    bytes: u64,
}

/// Keys the copy's thread reads and writes under the [`Mirror`]'s lock at a time: the
/// committer waits for at most one chunk (tens of milliseconds), and the lock goes back and
/// forth once per chunk. With 256 the thread got the lock about as often as a commit did: in
/// the retention benchmark copies ran at 25–30k keys/s, against 30–38k with 2,048.
const CHUNK: usize = 2048;

/// Every tree's every key, unless `stop` is set: a chunk at a time, each read from `from` and
/// written key by key (see the module's documentation) under the mirror's lock, going on after
/// the last key of the chunk before. A key the committer writes behind that point, it writes
/// into the copy itself; one ahead of it, a later chunk reads (see [`Mirroring::passed`]).
fn copy_into(
    from: &::sled::Db,
    to: &::sled::Db,
    mirror: &Mirror,
    stop: &AtomicBool,
) -> Result<Copied, Error> {
    let mut copied = Copied::default();
    for name in from.tree_names() {
        let source = tree(from, &name)?;
        let target = tree(to, &name)?;
        let written = name == DEFAULT_TREE;
        let mut after: Option<::sled::IVec> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(copied);
            }
            let mut mirroring = mirror.lock();
            if mirroring.failed.is_some() {
                return Ok(copied);
            }
            let chunk = match after.take() {
                Some(last) => source.range((Bound::Excluded(last), Bound::Unbounded)),
                None => source.iter(),
            };
            let mut keys = 0;
            for item in chunk.take(CHUNK) {
                let (key, value) = item.map_err(sled_error)?;
                copied.keys += 1;
                copied.bytes += (key.len() + value.len()) as u64;
                target.insert(key.clone(), value).map_err(sled_error)?;
                after = Some(key);
                keys += 1;
            }
            if written {
                // Read under the lock: every key up to here that commits write from now on, the
                // committer writes into the copy.
                mirroring.passed = match (&after, keys < CHUNK) {
                    (Some(last), false) => Passed::Through(last.clone()),
                    _ => Passed::All,
                };
            }
            // To the committer if it waits: a plain unlock would let this thread take the lock
            // back at once, chunk after chunk, while a commit waits.
            parking_lot::MutexGuard::unlock_fair(mirroring);
            if keys < CHUNK {
                break;
            }
        }
    }
    Ok(copied)
}

/// Reads `keys` again from `from` into `to` (the value, or the removal). They were written in
/// the store's default tree, the only one the committer writes.
fn catch_up(from: &::sled::Db, to: &::sled::Db, keys: BTreeSet<Vec<u8>>) -> Result<(), Error> {
    for key in keys {
        match from.get(&key).map_err(sled_error)? {
            Some(value) => to.insert(key, value).map(drop),
            None => to.remove(key).map(drop),
        }
        .map_err(sled_error)?;
    }
    Ok(())
}

/// What later commits are told when a failed compaction left no database open.
fn lost(error: &Error) -> Error {
    Error::Failed(format!(
        "compaction failed and the store could not be opened again: {error}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary() -> ::sled::Db {
        ::sled::Config::new()
            .temporary(true)
            .open()
            .expect("a temporary sled opens")
    }

    /// The copy ends equal to the old database whatever the committer writes meanwhile:
    /// inserts and removals of keys behind, at and ahead of the copy's chunks, mirrored while
    /// the thread copies, then noted once it has taken the copy back and read again.
    #[test]
    fn a_copy_made_while_commits_go_on_ends_with_every_commit() {
        let old = temporary();
        for n in 0..20_000_u32 {
            old.insert(n.to_be_bytes(), &n.to_be_bytes()[..])
                .expect("insert");
        }
        let copy = temporary();
        let mirror = Arc::new(Mirror::default());
        mirror.lock().copy = Some(copy.clone());
        let done = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let committer = {
            let (old, mirror, done) = (old.clone(), mirror.clone(), done.clone());
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut writes = 0_u32;
                while !done.load(Ordering::Relaxed) || writes < 20_000 {
                    // Spread over the keys there are and some past them.
                    let key = (writes.wrapping_mul(2_654_435_761) % 30_000).to_be_bytes();
                    let value = (!writes.is_multiple_of(3)).then(|| writes.to_le_bytes().to_vec());
                    match &value {
                        Some(value) => old.insert(key, value.clone()).map(drop),
                        None => old.remove(key).map(drop),
                    }
                    .expect("commit");
                    mirror.written(vec![(key.to_vec(), value)]);
                    writes += 1;
                    progress.store(writes, Ordering::Relaxed);
                }
                writes
            })
        };
        let copied = copy_into(&old, &copy, &mirror, &AtomicBool::new(false)).expect("copy");
        mirror
            .stop_writing()
            .expect("no write into the copy failed");
        // Some writes are noted, not mirrored, before the committer stops.
        let noted_from = progress.load(Ordering::Relaxed);
        while progress.load(Ordering::Relaxed) < noted_from + 1000 {
            std::hint::spin_loop();
        }
        done.store(true, Ordering::Relaxed);
        let writes = committer.join().expect("committer");
        catch_up(&old, &copy, mirror.take()).expect("catch up");
        assert!(copied.keys >= 10_000 && writes >= 20_000);
        let contents = |db: &::sled::Db| {
            db.iter()
                .map(|item| item.expect("read"))
                .collect::<Vec<_>>()
        };
        assert_eq!(contents(&copy), contents(&old));
    }

    /// The key a chunk ended on is passed: a commit of it after the chunk is the committer's
    /// to write into the copy (no later chunk reads it again).
    #[test]
    fn the_thread_has_passed_the_last_key_it_copied() {
        let passed = Passed::Through(b"m".as_slice().into());
        assert!(passed.covers(b"a") && passed.covers(b"m") && !passed.covers(b"n"));
        assert!(!Passed::Nothing.covers(b"a") && Passed::All.covers(b"z"));
    }

    /// The copy is written through the `Db`'s own default tree, not a second handle on it (see
    /// [`tree`]): a subscriber on the `Db` sees every key the copy writes, which writes through
    /// another handle would not reach (sled keeps subscribers per handle, like the root).
    #[test]
    fn the_copy_is_written_through_the_dbs_own_default_tree() {
        let from = temporary();
        for n in 0..100_u32 {
            from.insert(n.to_be_bytes(), &[7_u8; 16][..])
                .expect("insert");
        }
        let to = temporary();
        let mut seen = to.watch_prefix(Vec::<u8>::new());
        copy_into(&from, &to, &Mirror::default(), &AtomicBool::new(false)).expect("copy");
        let mut events = 0;
        while seen.next_timeout(Duration::from_millis(100)).is_ok() {
            events += 1;
        }
        assert_eq!(events, 100);
        assert_eq!(to.len(), 100);
        assert_eq!(
            to.get(42_u32.to_be_bytes()).expect("get").as_deref(),
            Some(&[7_u8; 16][..])
        );
    }
}
