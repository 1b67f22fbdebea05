//! Run events to NATS (`quench.events.<playbook>.<kind>`), published from the audit log: a run
//! event is an audit entry of an event kind (`Tx::event`), so the commit that records a change
//! records its event too, and nothing holds events in memory. The publisher of a partition
//! reads the entries after its position (`events_published` in the store), publishes their
//! events and moves the position on once the stream acknowledged them, saving it about once a
//! second. An event is never dropped: while NATS cannot take it, the publisher waits and tries
//! again, and what a crash, a stop or a take-over left unpublished is published by the next
//! publisher from the saved position. Each event's id is derived from its audit entry's hash
//! and is its `Nats-Msg-Id`, so a repeat within the stream's duplicate window is dropped and a
//! later one carries the same id (delivery is at least once; consumers deduplicate by id).
//! Timers and decisions never wait on the events (an event-bus outage must not hold back a
//! revocation), and intake does not either: the backlog is the audit log itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use quench_proto::{RunEvent, RunEventKind, RunEventSchema, subject};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::EventSink;
use crate::store::{self, EVENTS_PUBLISHED, Key, Store};

/// Audit entries read per pass (events among them are sent together, then acknowledged).
const BATCH: usize = 256;
/// How often the position is saved while events flow.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How long the publisher sleeps when nothing wakes it (a commit does).
const IDLE: Duration = Duration::from_secs(1);
/// After the stop: how long the publisher goes on publishing what the last commits recorded.
const FINISH_WITHIN: Duration = Duration::from_secs(2);
/// The longest wait between two tries of an event NATS did not take.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Run ids remembered with their keys (from their `run_started` entries).
const KEYS_KEPT: usize = 4096;

/// The engine's side: each commit that recorded events wakes the publisher.
#[derive(Debug)]
pub(super) struct NatsEvents {
    wake: Arc<Notify>,
}

impl EventSink for NatsEvents {
    fn committed(&self) {
        self.wake.notify_one();
    }
}

#[derive(Debug)]
pub(super) struct Publisher {
    jetstream: jetstream::Context,
    store: Store,
    wake: Arc<Notify>,
    /// Where it goes on from: the last audit entry whose event (if any) the stream took.
    position: u64,
    /// Run id → key, for the events after a run's start (its entries do not repeat the key).
    keys: HashMap<String, String>,
    /// What this publisher adds to the process's unpublished-entries gauge.
    lag: AtomicI64,
}

impl NatsEvents {
    /// The engine's sink and the publisher of `store`'s events, made before the engine
    /// commits anything (its position is read now).
    pub(super) fn new(
        jetstream: jetstream::Context,
        store: Store,
    ) -> Result<(NatsEvents, Publisher), store::Error> {
        let wake = Arc::new(Notify::new());
        let position = start(&store)?;
        Ok((
            NatsEvents { wake: wake.clone() },
            Publisher {
                jetstream,
                store,
                wake,
                position,
                keys: HashMap::new(),
                lag: AtomicI64::new(0),
            },
        ))
    }
}

/// Where a store's publisher goes on from: the saved position; at the first start, the end of
/// the audit log (the events recorded before were published by the queue this replaced, or
/// never were: they are not re-told). A position before the stored log (pruned) goes on
/// where it starts.
fn start(store: &Store) -> Result<u64, store::Error> {
    let (pruned_through, _) = store.audit_checkpoint()?;
    match store.get::<u64>(Key::Meta(EVENTS_PUBLISHED))? {
        Some(position) if position < pruned_through => {
            tracing::warn!(
                position,
                pruned_through,
                "run events: the audit entries after the last published one were pruned before their events were published; going on after them"
            );
            Ok(pruned_through)
        }
        Some(position) => Ok(position),
        None => Ok(store.audit_durable_seq()),
    }
}

/// The id of the event an audit entry records: a UUID (version 8) from the entry's hash, the
/// same each time the entry is published.
pub(crate) fn event_id(audit_hash: &str) -> String {
    let digest = Sha256::digest(format!("quench.run_event/v1 {audit_hash}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A message to publish: a run event or one of its OCSF records.
#[derive(Debug)]
struct Outgoing {
    subject: String,
    /// Its `Nats-Msg-Id`.
    id: String,
    body: bytes::Bytes,
}

impl Outgoing {
    fn event(event: &RunEvent) -> Option<Outgoing> {
        Some(Outgoing {
            subject: subject::event(&event.playbook, event.kind),
            id: event.id.clone(),
            body: serde_json::to_vec(event).ok()?.into(),
        })
    }

    fn record(event: &RunEvent, record: &quench_proto::ocsf::Record) -> Option<Outgoing> {
        Some(Outgoing {
            subject: record.subject(),
            id: super::ocsf::record_id(&event.id, record),
            body: serde_json::to_vec(&record.body).ok()?.into(),
        })
    }
}

/// The run events among some audit entries, and the last entry read.
#[derive(Debug, Default)]
struct Read {
    events: Vec<RunEvent>,
    through: Option<u64>,
}

/// Messages sent and not yet acknowledged, at most: past it, durable entries wait to be read.
const IN_FLIGHT: usize = 1024;

/// The messages of some audit entries, sent, their acknowledgements awaited together by a
/// task of their own from the moment they are sent. Each acknowledgement's timeout starts when
/// it is awaited: a stream that answers none (gone, its subject only subscribed to) must cost
/// one timeout for everything in flight, not one per message, nor one per flight in turn.
struct Flight {
    /// The last entry they are of.
    through: u64,
    messages: Vec<Outgoing>,
    acks: tokio::task::JoinHandle<Vec<Result<(), String>>>,
    /// Rounds that failed so far.
    tries: u32,
}

/// A flight of `messages` sent (`acks`, in the same order).
fn flight(
    through: u64,
    messages: Vec<Outgoing>,
    acks: Vec<Result<jetstream::context::PublishAckFuture, String>>,
    tries: u32,
) -> Flight {
    let acks = tokio::spawn(futures::future::join_all(acks.into_iter().map(
        |ack| async move {
            match ack {
                Ok(ack) => ack.await.map(|_| ()).map_err(|error| error.to_string()),
                Err(error) => Err(error),
            }
        },
    )));
    Flight {
        through,
        messages,
        acks,
        tries,
    }
}

impl Publisher {
    /// Publishes the partition's run events and their OCSF records (made by `records`) until
    /// `stop`, then for up to [`FINISH_WITHIN`] what the last commits recorded; saves its
    /// position as it goes. `stop` is cancelled once the engine stopped committing.
    ///
    /// Entries are read and their messages sent as soon as they are durable, without waiting
    /// for the acknowledgements of those sent before (at most [`IN_FLIGHT`] outstanding); the
    /// position moves on, in order, past each set of entries whose messages the stream all
    /// took. Messages it did not take are sent again, with a growing wait, until it does.
    ///
    /// `lost`: the partition is lost; the publisher stops at once and writes nothing more (its
    /// store could not take it: its next owner goes on from the last position saved).
    pub(super) async fn run(
        mut self,
        records: super::ocsf::Emitter,
        stop: CancellationToken,
        lost: CancellationToken,
    ) {
        // Every message of the entries up to `acked` was taken; those up to `read` were sent.
        let mut acked = self.position;
        let mut read = acked;
        tracing::info!(after = acked, "publishing run events from the audit log");
        let mut in_flight: VecDeque<Flight> = VecDeque::new();
        let mut sending = 0usize;
        let mut saved = acked;
        let mut last_save = Instant::now();
        let mut finish_by: Option<Instant> = None;
        let woken = self.wake.clone();
        loop {
            if lost.is_cancelled() {
                break;
            }
            if finish_by.is_none() && stop.is_cancelled() {
                finish_by = Some(Instant::now() + FINISH_WITHIN);
            }
            if finish_by.is_some_and(|by| Instant::now() >= by) {
                tracing::warn!(
                    unacknowledged = sending,
                    "stopping with run events unpublished; the next start publishes them"
                );
                break;
            }
            let wake = woken.notified();
            tokio::pin!(wake);
            // Registered before the read, so a commit in between is not missed.
            wake.as_mut().enable();
            let room = sending < IN_FLIGHT;
            if room {
                match self.read_after(read) {
                    Ok(Read {
                        through: Some(through),
                        events,
                    }) => {
                        let flight = self.send_new(through, &events, &records).await;
                        sending += flight.messages.len();
                        in_flight.push_back(flight);
                        read = through;
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "run events: the audit log cannot be read; trying again");
                    }
                }
            }
            self.report_lag(acked);
            let Some(front) = in_flight.front_mut() else {
                if saved != acked {
                    self.save(acked, &lost).await;
                    saved = acked;
                    last_save = Instant::now();
                }
                if finish_by.is_some() {
                    break;
                }
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep(IDLE) => {}
                    () = stop.cancelled() => {}
                    () = lost.cancelled() => {}
                }
                continue;
            };
            let far = Instant::now() + IDLE;
            let sent = front.messages.len();
            let settled = tokio::select! {
                taken = &mut front.acks => Some(taken.unwrap_or_else(|error| {
                    vec![Err(format!("awaiting the acknowledgements: {error}")); sent]
                })),
                () = wake.as_mut(), if room => None,
                () = tokio::time::sleep_until(finish_by.unwrap_or(far)), if finish_by.is_some() => None,
                () = stop.cancelled(), if finish_by.is_none() => None,
                () = lost.cancelled() => None,
            };
            let Some(taken) = settled else {
                continue;
            };
            let Some(flight) = in_flight.pop_front() else {
                continue;
            };
            let total = flight.messages.len();
            let mut failed = Vec::new();
            for (message, taken) in flight.messages.into_iter().zip(taken) {
                if let Err(error) = taken {
                    if flight.tries == 0 && failed.is_empty() {
                        tracing::warn!(id = %message.id, subject = %message.subject, %error, "a run event was not published; trying again until it is");
                    }
                    failed.push(message);
                }
            }
            sending -= total - failed.len();
            if failed.is_empty() {
                if flight.tries > 0 {
                    tracing::info!(
                        tries = flight.tries,
                        "run events published again after a failure"
                    );
                }
                acked = flight.through;
                if last_save.elapsed() >= SAVE_EVERY {
                    self.save(acked, &lost).await;
                    saved = acked;
                    last_save = Instant::now();
                }
                continue;
            }
            let tries = flight.tries + 1;
            let backoff = Duration::from_millis(100u64 << tries.min(6)).min(MAX_BACKOFF);
            let until = Instant::now() + backoff;
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = tokio::time::sleep_until(finish_by.unwrap_or(until)), if finish_by.is_some() => {}
                () = stop.cancelled(), if finish_by.is_none() => {
                    finish_by = Some(Instant::now() + FINISH_WITHIN);
                }
                () = lost.cancelled() => continue,
            }
            let again = self.send(flight.through, failed, tries).await;
            in_flight.push_front(again);
        }
        if saved != acked && !lost.is_cancelled() {
            self.save(acked, &lost).await;
        }
        crate::metrics::get()
            .events_unpublished
            .dec_by(self.lag.swap(0, Ordering::Relaxed));
    }

    /// Sets this publisher's share of the unpublished-entries gauge: the entries after
    /// `position`.
    fn report_lag(&self, position: u64) {
        let head = self.store.audit_durable_seq();
        let lag = i64::try_from(head.saturating_sub(position)).unwrap_or(i64::MAX);
        let before = self.lag.swap(lag, Ordering::Relaxed);
        crate::metrics::get()
            .events_unpublished
            .inc_by(lag - before);
    }

    /// The events among the (at most [`BATCH`]) durable audit entries after `position`.
    fn read_after(&mut self, position: u64) -> Result<Read, store::Error> {
        let mut read = Read::default();
        let store = self.store.clone();
        // Only what is durable: an event told of a commit a crash then loses would be about
        // something that did not happen.
        let durable = store.audit_durable_seq();
        if durable <= position {
            return Ok(read);
        }
        for item in store
            .audit_entries_after(position)
            .take(BATCH.min(usize::try_from(durable - position).unwrap_or(BATCH)))
        {
            let (seq, stored) = item?;
            if seq > durable {
                break;
            }
            read.through = Some(seq);
            read.events.extend(self.event_of(seq, &stored));
        }
        Ok(read)
    }

    /// The run event a stored audit entry records, if it records one.
    fn event_of(&mut self, seq: u64, stored: &[u8]) -> Option<RunEvent> {
        let Some((hash, _, entry)) = store::parse_stored(stored) else {
            tracing::warn!(
                seq,
                "run events: an audit entry cannot be read; it has no event"
            );
            return None;
        };
        let kind = RunEventKind::parse(&entry.kind)?;
        let run_id = entry.run_id?;
        let key = match kind {
            RunEventKind::RunStarted => entry.detail.get("key").and_then(|key| key.as_str()),
            _ => None,
        }
        .map(str::to_owned)
        .or_else(|| self.keys.get(&run_id).cloned())
        .or_else(|| self.stored_key(&run_id));
        let Some(key) = key else {
            tracing::warn!(seq, run = %run_id, kind = kind.as_str(), "run events: the run was removed before its event was published; the audit log has it");
            return None;
        };
        match kind {
            RunEventKind::RunCompleted | RunEventKind::RunFailed | RunEventKind::RunCancelled => {
                self.keys.remove(&run_id);
            }
            _ => {
                if self.keys.len() >= KEYS_KEPT {
                    self.keys.clear();
                }
                self.keys.insert(run_id.clone(), key.clone());
            }
        }
        Some(RunEvent {
            schema: RunEventSchema::V1,
            id: event_id(&hash),
            kind,
            run_id,
            playbook: entry.playbook.unwrap_or_default(),
            playbook_version: entry.version.unwrap_or_default(),
            finding_key: key,
            step: entry.step,
            at: entry.at,
            audit_hash: hash,
        })
    }

    /// A run's key, read from its stored record.
    fn stored_key(&self, run: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Keyed {
            key: String,
        }
        match self.store.get::<Keyed>(Key::Run(run)) {
            Ok(found) => found.map(|run| run.key),
            Err(error) => {
                tracing::warn!(%error, %run, "run events: a run cannot be read");
                None
            }
        }
    }

    /// Sends `events`, those of the entries up to `through`, then their OCSF records (made
    /// once the events are on their way: an event does not wait for its record's run read).
    async fn send_new(
        &self,
        through: u64,
        events: &[RunEvent],
        records: &super::ocsf::Emitter,
    ) -> Flight {
        let mut messages = Vec::with_capacity(events.len());
        let mut acks = Vec::with_capacity(events.len());
        for message in events.iter().filter_map(Outgoing::event) {
            acks.push(self.start_publish(&message).await);
            messages.push(message);
        }
        for event in events {
            let made = match records.records(event) {
                Ok(made) => made,
                Err(error) => {
                    tracing::warn!(%error, run = %event.run_id, "no OCSF record for an event: its run or playbook cannot be read");
                    continue;
                }
            };
            for message in made
                .iter()
                .filter_map(|record| Outgoing::record(event, record))
            {
                acks.push(self.start_publish(&message).await);
                messages.push(message);
            }
        }
        flight(through, messages, acks, 0)
    }

    /// Sends `messages` again, those of the entries up to `through` that were not taken.
    async fn send(&self, through: u64, messages: Vec<Outgoing>, tries: u32) -> Flight {
        let mut acks = Vec::with_capacity(messages.len());
        for message in &messages {
            acks.push(self.start_publish(message).await);
        }
        flight(through, messages, acks, tries)
    }

    /// Sends one message; its acknowledgement comes later.
    async fn start_publish(
        &self,
        message: &Outgoing,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subject::HEADER_MSG_ID, message.id.as_str());
        self.jetstream
            .publish_with_headers(message.subject.clone(), headers, message.body.clone())
            .await
            .map_err(|error| error.to_string())
    }

    /// Saves the position, unless the partition is `lost` first (its store cannot take it: the
    /// next owner goes on from the last position saved, and the stream drops the repeats).
    async fn save(&self, position: u64, lost: &CancellationToken) {
        let mut batch = store::Batch::new();
        batch.put(Key::Meta(EVENTS_PUBLISHED), &position);
        tokio::select! {
            saved = self.store.commit(batch) => {
                if let Err(error) = saved {
                    tracing::info!(%error, position, "run events: the position was not saved; the next start publishes from the last one saved");
                }
            }
            () = lost.cancelled() => {}
        }
    }
}
