//! One lock per run, held while the run's state is read, changed and committed (and while its
//! in-flight effect runs), so a decision, a timer and the driver never interleave on one run.
//! Entries disappear when nobody holds or waits for them, so a million parked runs hold none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Debug, Default)]
pub(crate) struct RunLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a run is being changed; releases (and forgets) the lock on drop.
#[derive(Debug)]
pub(crate) struct RunGuard {
    locks: Arc<RunLocks>,
    run: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl RunLocks {
    pub(crate) async fn lock(self: &Arc<Self>, run: &str) -> RunGuard {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(run.to_owned()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        RunGuard {
            locks: self.clone(),
            run: run.to_owned(),
            guard: Some(guard),
        }
    }

    /// The run's lock if nobody holds it now (for work that can skip a busy run and come
    /// back, and that holds many locks at once: it never waits, so it never deadlocks).
    pub(crate) fn try_lock(self: &Arc<Self>, run: &str) -> Option<RunGuard> {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(run.to_owned()).or_default().clone()
        };
        // On failure the guard below is never made: drop our clone, then forget an unused entry.
        let Ok(guard) = lock.clone().try_lock_owned() else {
            drop(lock);
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if locks
                .get(run)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                locks.remove(run);
            }
            return None;
        };
        Some(RunGuard {
            locks: self.clone(),
            run: run.to_owned(),
            guard: Some(guard),
        })
    }
}

impl RunGuard {
    /// The run this guard locks.
    pub(crate) fn run(&self) -> &str {
        &self.run
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self
            .locks
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Only the map's reference remains when nobody else holds or waits for this lock.
        if locks
            .get(&self.run)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.run);
        }
    }
}
