//! Run events to NATS (`quench.events.<playbook>.<kind>`), published after the commit that
//! records them, each with its id as `Nats-Msg-Id` so a re-send is dropped. The audit log is the
//! record; events are its notification, so a bounded queue sheds (and logs) rather than letting
//! a NATS outage grow memory.

use std::time::Duration;

use async_nats::jetstream;
use quench_proto::{RunEvent, subject};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::EventSink;

const QUEUE: usize = 65_536;

#[derive(Debug)]
pub(super) struct NatsEvents {
    queue: mpsc::Sender<RunEvent>,
}

#[derive(Debug)]
pub(super) struct Publisher {
    jetstream: jetstream::Context,
    queue: mpsc::Receiver<RunEvent>,
}

impl NatsEvents {
    pub(super) fn new(jetstream: jetstream::Context) -> (NatsEvents, Publisher) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        (
            NatsEvents { queue },
            Publisher {
                jetstream,
                queue: receiver,
            },
        )
    }
}

impl EventSink for NatsEvents {
    fn publish(&self, events: Vec<RunEvent>) {
        for event in events {
            if self.queue.try_send(event).is_err() {
                tracing::warn!("run event queue full; an event was dropped (the audit log has it)");
            }
        }
    }
}

impl Publisher {
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let event = tokio::select! {
                event = self.queue.recv() => event,
                () = shutdown.cancelled() => {
                    // Send what is queued, briefly, then stop.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                    while let Ok(event) = self.queue.try_recv() {
                        if tokio::time::Instant::now() > deadline { break }
                        self.send(&event).await;
                    }
                    return;
                }
            };
            let Some(event) = event else { return };
            self.send(&event).await;
        }
    }

    async fn send(&self, event: &RunEvent) {
        let Ok(body) = serde_json::to_vec(event) else {
            return;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subject::HEADER_MSG_ID, event.id.as_str());
        let subject = subject::event(&event.playbook, event.kind);
        let mut delay = Duration::from_millis(50);
        for _ in 0..6 {
            let published = match self
                .jetstream
                .publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
                .await
            {
                Ok(ack) => ack.await.map(drop).map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match published {
                Ok(()) => return,
                Err(error) => {
                    tracing::debug!(%error, "publishing a run event failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::warn!(event = %event.id, %subject, "a run event could not be published (the audit log has it)");
    }
}
