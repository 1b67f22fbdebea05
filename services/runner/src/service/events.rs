//! Run events to NATS (`quench.events.<playbook>.<kind>`), published after the commit that
//! records them (and counted in the run metrics there), each with its id as `Nats-Msg-Id` so a re-send is dropped. The audit log is the
//! record; events are its notification, so a bounded queue sheds (and logs) rather than letting
//! a NATS outage grow memory. Findings intake waits while the queue is more than half full
//! ([`Backlog`]), so a burst of findings slows intake instead of shedding events; timers and
//! decisions never wait on it (an event-bus outage must not hold back a revocation).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use quench_proto::{RunEvent, subject};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::engine::EventSink;

const QUEUE: usize = 65_536;

#[derive(Debug)]
pub(super) struct NatsEvents {
    queue: mpsc::Sender<RunEvent>,
    drained: Arc<Notify>,
}

#[derive(Debug)]
pub(super) struct Publisher {
    jetstream: jetstream::Context,
    queue: mpsc::Receiver<RunEvent>,
    /// Notified each time the publisher takes an event off the queue.
    drained: Arc<Notify>,
}

impl NatsEvents {
    pub(super) fn new(jetstream: jetstream::Context) -> (NatsEvents, Publisher) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let drained = Arc::new(Notify::new());
        (
            NatsEvents {
                queue,
                drained: drained.clone(),
            },
            Publisher {
                jetstream,
                queue: receiver,
                drained,
            },
        )
    }
}

/// How full the run-event queue is, for intake to wait on.
#[derive(Debug, Clone)]
pub(super) struct Backlog {
    queue: mpsc::Sender<RunEvent>,
    drained: Arc<Notify>,
}

impl Backlog {
    /// More than half the queue is waiting to be published.
    pub(super) fn is_high(&self) -> bool {
        self.queue.capacity() < self.queue.max_capacity() / 2
    }

    /// Waits until the queue is at most half full (or `shutdown`): woken as the publisher
    /// takes events off it.
    pub(super) async fn wait_low(&self, shutdown: &CancellationToken) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so an event taken in between is not missed.
            drained.as_mut().enable();
            if !self.is_high() || shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                () = drained => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

impl NatsEvents {
    pub(super) fn backlog(&self) -> Backlog {
        Backlog {
            queue: self.queue.clone(),
            drained: self.drained.clone(),
        }
    }
}

impl EventSink for NatsEvents {
    fn publish(&self, events: Vec<RunEvent>) {
        let metrics = crate::metrics::get();
        for event in events {
            // Counted here, after the commit that made them true.
            metrics.run_event(&event.playbook, event.kind);
            if self.queue.try_send(event).is_err() {
                tracing::warn!("run event queue full; an event was dropped (the audit log has it)");
            }
        }
    }
}

/// Events sent and not yet acknowledged by the stream, at most.
const IN_FLIGHT: usize = 256;

impl Publisher {
    /// Sends events as they come, without waiting for each acknowledgement (at most
    /// [`IN_FLIGHT`] outstanding); an event whose publish fails is retried a few times.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let mut in_flight: std::collections::VecDeque<(
            RunEvent,
            u32,
            jetstream::context::PublishAckFuture,
        )> = std::collections::VecDeque::new();
        loop {
            let next = if in_flight.is_empty() {
                tokio::select! {
                    event = self.queue.recv() => event.map(|event| (event, 0)),
                    () = shutdown.cancelled() => None,
                }
            } else {
                match self.queue.try_recv() {
                    Ok(event) => Some((event, 0)),
                    Err(_) => {
                        // Nothing new: settle the oldest outstanding acknowledgement.
                        if let Some((event, tries, ack)) = in_flight.pop_front()
                            && ack.await.is_err()
                        {
                            self.retry(event, tries, &mut in_flight).await;
                        }
                        continue;
                    }
                }
            };
            if next.is_some() {
                self.drained.notify_waiters();
            }
            let Some((event, tries)) = next else {
                for (event, tries, ack) in in_flight.drain(..).collect::<Vec<_>>() {
                    if ack.await.is_err() && tries < 3 {
                        self.send(&event).await;
                    }
                }
                return;
            };
            if in_flight.len() >= IN_FLIGHT
                && let Some((old, old_tries, ack)) = in_flight.pop_front()
                && ack.await.is_err()
            {
                self.retry(old, old_tries, &mut in_flight).await;
            }
            match self.start(&event).await {
                Some(ack) => in_flight.push_back((event, tries, ack)),
                None => self.retry(event, tries, &mut in_flight).await,
            }
        }
    }

    async fn retry(
        &self,
        event: RunEvent,
        tries: u32,
        in_flight: &mut std::collections::VecDeque<(
            RunEvent,
            u32,
            jetstream::context::PublishAckFuture,
        )>,
    ) {
        if tries >= 5 {
            tracing::warn!(event = %event.id, "a run event could not be published (the audit log has it)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50 << tries)).await;
        if let Some(ack) = self.start(&event).await {
            in_flight.push_back((event, tries + 1, ack));
        }
    }

    /// Sends one event; the acknowledgement comes later.
    async fn start(&self, event: &RunEvent) -> Option<jetstream::context::PublishAckFuture> {
        let body = serde_json::to_vec(event).ok()?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subject::HEADER_MSG_ID, event.id.as_str());
        let subject = subject::event(&event.playbook, event.kind);
        self.jetstream
            .publish_with_headers(subject, headers, body.into())
            .await
            .ok()
    }

    /// Sends one event and waits for its acknowledgement (used while shutting down).
    async fn send(&self, event: &RunEvent) {
        if let Some(ack) = self.start(event).await {
            let _ = tokio::time::timeout(Duration::from_secs(2), ack).await;
        }
    }
}
