//! The engine's work queue: the runs to drive, fed by every commit that starts or wakes one.
//!
//! A commit that leaves a run `running` (a new run, an answered gate, a fired timer, a queued
//! finding whose turn came) puts the run here once it is durable; workers, at most
//! [`EngineConfig::max_inflight_runs`](super::EngineConfig) at once, drive runs until they park
//! or end. Workers are tasks started on demand and gone when the queue is empty, so an idle
//! engine holds no task (and dropping the last handle closes the store).
//!
//! The queue is bounded where work comes in from outside: intake waits for [`Engine::room`]
//! before it takes a batch in, which is what slows a burst of findings down instead of growing
//! memory. Commits made while driving (a run that starts the queued finding behind it) never
//! wait, so workers cannot deadlock on the queue they drain. A run already queued is queued
//! once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::drive::Handoff;
use super::{Engine, Error};

#[derive(Debug)]
pub(super) struct Scheduler {
    queue: Mutex<Queue>,
    /// Notified (all waiters) when the queue drops below its bound, a worker leaves, or the
    /// queue closes.
    changed: Notify,
    /// Workers at most (runs driven at once).
    concurrency: usize,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<String>,
    queued: HashSet<String>,
    /// Locks (and journaled calls) handed over with queued runs (see `Tx::handoff`), taken by
    /// the worker that drives the run.
    handed: HashMap<String, Handoff>,
    /// Runs taken by a worker and not yet driven to a stop (the worker may still be waiting for
    /// the run's lock).
    running: HashMap<String, usize>,
    /// Sum of `running`'s counts (a run re-queued while being driven may be taken twice).
    driven: usize,
    workers: HashMap<u64, AbortHandle>,
    /// Workers that found no work and are letting go of their engine handle.
    leaving: usize,
    next_worker: u64,
    /// No run is started any more (shutdown); what is queued resumes at the next start.
    closed: bool,
    /// The first drive that failed since [`Engine::idle`] last looked.
    error: Option<Error>,
}

impl Queue {
    /// A worker is done with `run`.
    fn finished(&mut self, run: &str) {
        self.driven -= 1;
        if let Some(count) = self.running.get_mut(run) {
            *count -= 1;
            if *count == 0 {
                self.running.remove(run);
            }
        }
    }
}

impl Scheduler {
    pub(super) fn new(concurrency: usize) -> Scheduler {
        Scheduler {
            queue: Mutex::default(),
            changed: Notify::new(),
            concurrency: concurrency.max(1),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `ready` holds for the queue (checked again at every change).
    async fn until(&self, mut ready: impl FnMut(&mut Queue) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between is not missed.
            changed.as_mut().enable();
            if ready(&mut self.queue()) {
                return;
            }
            changed.await;
        }
    }
}

/// A worker's hold on the engine; ends the worker however its task ends (done, failed,
/// panicked or aborted). The engine handle is let go of before the queue says the worker is
/// gone, so whoever waits for [`Engine::idle`] and then drops the last handle closes the store.
struct Worker {
    engine: Option<Engine>,
    scheduler: Arc<Scheduler>,
    id: u64,
    /// Still counted in the queue's workers (else: counted as leaving).
    registered: bool,
    /// The run it is driving.
    driving: Option<String>,
}

impl Worker {
    fn engine(&self) -> &Engine {
        self.engine
            .as_ref()
            .expect("a worker holds its engine until it is dropped")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.engine.take());
        let mut queue = self.scheduler.queue();
        if self.registered {
            queue.workers.remove(&self.id);
        } else {
            queue.leaving -= 1;
        }
        if let Some(run) = self.driving.take() {
            queue.finished(&run);
        }
        drop(queue);
        self.scheduler.changed.notify_waiters();
    }
}

impl Engine {
    /// Queues runs to drive and starts workers for them, up to the limit.
    pub(super) fn schedule(&self, runs: impl IntoIterator<Item = String>) {
        self.schedule_with(runs, None);
    }

    /// [`Engine::schedule`], handing over the lock of one of the runs with it. A handoff that
    /// cannot be taken is dropped, lock and call: the run's next drive reads it from the store,
    /// finds its step `running` and makes the journaled call then (with the same idempotency
    /// key), as after a restart.
    pub(super) fn schedule_with(
        &self,
        runs: impl IntoIterator<Item = String>,
        handoff: Option<Handoff>,
    ) {
        let scheduler = &self.inner.scheduler;
        let mut queue = scheduler.queue();
        for run in runs {
            if queue.queued.insert(run.clone()) {
                queue.waiting.push_back(run);
            }
        }
        // Not to a run a worker has already taken: that worker may be waiting for this very
        // lock, and gets it next anyway (tokio's mutex is first come, first served).
        if let Some(handoff) = handoff
            && queue.queued.contains(handoff.run())
            && !queue.running.contains_key(handoff.run())
            && !queue.closed
        {
            queue.handed.insert(handoff.run().to_owned(), handoff);
        }
        while !queue.closed
            && queue.workers.len() < scheduler.concurrency
            && queue.workers.len() < queue.waiting.len() + queue.driven
        {
            let id = queue.next_worker;
            queue.next_worker += 1;
            let worker = Worker {
                engine: Some(self.clone()),
                scheduler: self.inner.scheduler.clone(),
                id,
                registered: true,
                driving: None,
            };
            let handle = tokio::spawn(work(worker));
            queue.workers.insert(id, handle.abort_handle());
        }
    }

    /// Waits until the work queue has room: intake calls it before it takes work in.
    pub async fn room(&self) {
        let scheduler = &self.inner.scheduler;
        let limit = scheduler.concurrency;
        scheduler
            .until(|queue| queue.closed || queue.waiting.len() < limit)
            .await;
    }

    /// Waits until every queued run has been driven until it parked or ended (and the runs
    /// they started, too); returns the first error a drive met since the last call. Tests and
    /// `quench test` use it to wait for the engine's own scheduling.
    pub async fn idle(&self) -> Result<(), Error> {
        let scheduler = &self.inner.scheduler;
        scheduler
            .until(|queue| {
                queue.workers.is_empty()
                    && queue.leaving == 0
                    && (queue.closed || queue.waiting.is_empty())
            })
            .await;
        match scheduler.queue().error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Starts no more runs (shutdown): runs being driven go on until they park, end or are
    /// aborted; queued ones stay in the store and are driven at the next start.
    pub fn close(&self) {
        let handed = {
            let mut queue = self.inner.scheduler.queue();
            queue.closed = true;
            std::mem::take(&mut queue.handed)
        };
        drop(handed);
        self.inner.scheduler.changed.notify_waiters();
    }

    /// Stops every drive at once, at whatever point it is (as a crash would: what was
    /// committed stays, the rest is redone at the next start).
    pub fn abort(&self) {
        self.close();
        let workers: Vec<AbortHandle> = self
            .inner
            .scheduler
            .queue()
            .workers
            .values()
            .cloned()
            .collect();
        for worker in workers {
            worker.abort();
        }
    }

    /// Runs queued or being driven.
    pub fn backlog(&self) -> usize {
        let queue = self.inner.scheduler.queue();
        queue.waiting.len() + queue.driven
    }
}

/// A worker: drives queued runs one after another until the queue is empty.
async fn work(mut worker: Worker) {
    loop {
        let (run, handed) = {
            let mut queue = worker.scheduler.queue();
            let next = if queue.closed {
                None
            } else {
                queue.waiting.pop_front()
            };
            let Some(run) = next else {
                // Leaves under the lock that found no work, so a run queued right after
                // starts a worker of its own instead of counting on this one.
                queue.workers.remove(&worker.id);
                queue.leaving += 1;
                worker.registered = false;
                return;
            };
            queue.queued.remove(&run);
            let handed = queue.handed.remove(&run);
            *queue.running.entry(run.clone()).or_default() += 1;
            queue.driven += 1;
            worker.driving = Some(run.clone());
            // Waiters are woken only when what they wait for may have become true: room when
            // the queue drops below its bound here, idle when the last worker leaves (`Drop`).
            if queue.waiting.len() + 1 == worker.scheduler.concurrency {
                worker.scheduler.changed.notify_waiters();
            }
            (run, handed)
        };
        if let Err(error) = worker.engine().drive(&run, handed).await {
            tracing::error!(run_id = %run, %error, "driving the run failed; it resumes at the next start");
            worker.scheduler.queue().error.get_or_insert(error);
        }
        worker.scheduler.queue().finished(&run);
        worker.driving = None;
    }
}
