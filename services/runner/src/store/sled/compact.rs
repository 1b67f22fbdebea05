//! Online compaction of the sled store. sled 0.34 reuses a log segment only after its segment
//! cleaner has moved the live pages out of it, which it does not keep up with: a store whose
//! data is mostly written once and deleted later (runs purged after `retain_ended`, seen ids
//! expiring, the audit log pruned after export) grows by about everything ever written. So the
//! committer — the one writer — copies every live key into a fresh sled beside the store once
//! the file has grown past [`FACTOR`] × its size after the last compaction (or at open), and
//! past a floor, and swaps the copy in. Batches submitted meanwhile wait in the committer's
//! bounded queue; readers read the old database until the swap and wait for the swap itself.
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

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::{BackendError, Compacted, Error, SyncMode};
use super::committer::sync_dir;
use super::{Opened, Slot, io as sled_error, open_db, wait_released};

/// The store is compacted once its file is this many times its size after the last compaction
/// (or at open). 2 bounds the disk to about twice the live data (three times during a
/// compaction, old and copy side by side) while copying the live data at most once per as
/// much written.
pub const FACTOR: u64 = 2;

/// The default floor below which the store is never compacted: a small store is not worth a
/// pause of commits, whatever its ratio.
pub const FLOOR: u64 = 256 * 1024 * 1024;

/// How often the committer looks at the file's size (between batches).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Bytes of keys and values copied per sled batch.
const COPY_BATCH_BYTES: usize = 8 * 1024 * 1024;

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
        match file.try_lock() {
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
        }
    }

    /// Whether the file has outgrown its live data: larger than [`FACTOR`] × the baseline and
    /// than the floor. Looks at the size at most once per [`CHECK_EVERY`].
    pub(super) fn due(&mut self, slot: &Slot) -> bool {
        if self.checked.elapsed() < CHECK_EVERY {
            return false;
        }
        self.checked = Instant::now();
        let limit = self.baseline.saturating_mul(FACTOR).max(self.floor);
        slot.with(|db| db.size_on_disk().map_err(sled_error))
            .is_ok_and(|size| size > limit)
    }

    /// Copies every live key into a fresh database and swaps it in (see the module's
    /// documentation). `log` is the committer's handle for `fdatasync`, reopened on the new file.
    pub(super) fn compact(
        &mut self,
        slot: &Slot,
        log: &mut Option<File>,
    ) -> Result<Compacted, Failure> {
        let started = Instant::now();
        let before = slot
            .with(|db| db.size_on_disk().map_err(sled_error))
            .map_err(Failure::Recovered)?;
        // A failure from here on leaves the old database in place; the next attempt waits
        // until the file has doubled again.
        self.baseline = before;
        let lock = match self.copy(slot) {
            Ok(lock) => lock,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&self.dance.compacting);
                let _ = std::fs::remove_dir_all(&self.dance.compacted);
                return Err(Failure::Recovered(error));
            }
        };
        let copying = started.elapsed();
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
        self.baseline = after;
        self.checked = Instant::now();
        Ok(Compacted {
            before_bytes: before,
            after_bytes: after,
            duration: started.elapsed(),
            copying,
        })
    }

    /// Step 1: the copy, complete in `P.quench-compacted`, locked from its creation.
    fn copy(&self, slot: &Slot) -> Result<DirLock, Error> {
        let dance = &self.dance;
        let fs_error = |error| dance.open_error(error);
        if dance.compacting.try_exists().map_err(fs_error)? {
            std::fs::remove_dir_all(&dance.compacting).map_err(fs_error)?;
        }
        std::fs::create_dir(&dance.compacting).map_err(fs_error)?;
        let lock = dance
            .lock(&dance.compacting)?
            .ok_or_else(|| fs_error(io::ErrorKind::NotFound.into()))?;
        let copy = open_db(&dance.compacting, self.cache_bytes)?;
        slot.with(|db| copy_into(db, &copy))?;
        copy.flush().map_err(sled_error)?;
        drop(copy);
        wait_released(&dance.compacting.join("db"));
        sync_tree(&dance.compacting).map_err(Error::Sync)?;
        fail::fail_point!("store::compact_copied");
        std::fs::rename(&dance.compacting, &dance.compacted).map_err(fs_error)?;
        sync_dir(&dance.parent).map_err(Error::Sync)?;
        fail::fail_point!("store::compact_published");
        Ok(lock)
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
        std::fs::remove_dir_all(&dance.old).map_err(fs_error)?;
        sync_dir(&dance.parent).map_err(Error::Sync)?;
        fail::fail_point!("store::compact_cleaned");
        Ok(())
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

/// Every tree's every key, in batches.
fn copy_into(from: &::sled::Db, to: &::sled::Db) -> Result<(), Error> {
    for name in from.tree_names() {
        let source = from.open_tree(&name).map_err(sled_error)?;
        let target = to.open_tree(&name).map_err(sled_error)?;
        let mut batch = ::sled::Batch::default();
        let mut bytes = 0;
        for item in source.iter() {
            let (key, value) = item.map_err(sled_error)?;
            bytes += key.len() + value.len();
            batch.insert(key, value);
            if bytes >= COPY_BATCH_BYTES {
                target
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(sled_error)?;
                bytes = 0;
            }
        }
        target.apply_batch(batch).map_err(sled_error)?;
    }
    Ok(())
}

/// What later commits are told when a failed compaction left no database open.
fn lost(error: &Error) -> Error {
    Error::Failed(format!(
        "compaction failed and the store could not be opened again: {error}"
    ))
}
