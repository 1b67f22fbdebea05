//! Pulling findings and decisions from their durable consumers. A chunk of whatever messages are
//! ready (up to a batch) is parsed; bad messages are dead-lettered with their reason and acked;
//! the good ones go through the engine in one commit and are acked only after it. When the
//! engine's work queue is full ([`crate::engine::Engine::room`]) findings intake waits; when
//! batches in flight are at their bound, so does the next fetch.
//!
//! Nothing a sender publishes can stop intake: a dead letter keeps the body as bytes, cut to a
//! bound, so it always fits; a message whose dead letter cannot be published is acknowledged and
//! counted after a few deliveries; and a message that is never acknowledged for any other reason
//! reaches `nats.max_deliver`, after which JetStream's advisory makes it a dead letter
//! ([`max_deliveries`]). [`watch`] reads the consumers' state for `/readyz` and the metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use quench_proto::{
    DEFAULT_MAX_FINDING_BYTES, Decision, Finding, redact_bytes, redact_str, subject,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Error;
use crate::engine::{Defer, Engine, FindingOutcome};

/// How long a deferred decision waits before it is offered again, and how many times.
const DEFER: Duration = Duration::from_secs(1);
const MAX_DEFERRALS: i64 = 30;
/// Most messages taken through the engine in one commit.
const BATCH: usize = 256;
/// Findings a router may hand a partition's intake before it routes the next ones through the
/// stream instead.
pub(super) const HANDED_OVER: usize = 2 * BATCH;
/// Unacknowledged messages a consumer may have out at once (bounds memory on our side too).
const MAX_ACK_PENDING: i64 = 4096;
/// A refused message whose dead letter cannot be published is offered again after this long;
/// from its [`DROP_AFTER`]th delivery on it is acknowledged and counted instead, so it cannot
/// hold one of the consumer's [`MAX_ACK_PENDING`] places for ever.
const RETRY_DEAD_LETTER: Duration = Duration::from_secs(1);
const DROP_AFTER: i64 = 5;
/// How often the consumers' state is read for `/readyz` and the metrics.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How recently a message must have been dropped for the intake to report `shedding`.
const SHEDDING_FOR: Duration = Duration::from_secs(60);

type Consumer = consumer::Consumer<consumer::pull::Config>;

/// The two durable consumers quench pulls from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Findings,
    Decisions,
}

impl Source {
    const ALL: [Source; 2] = [Source::Findings, Source::Decisions];

    /// Its name in logs, metrics and `/readyz`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Source::Findings => "findings",
            Source::Decisions => "decisions",
        }
    }

    fn stream(self) -> &'static str {
        match self {
            Source::Findings => subject::STREAM_FINDINGS,
            Source::Decisions => subject::STREAM_DECISIONS,
        }
    }

    fn filter(self) -> &'static str {
        match self {
            Source::Findings => subject::FINDINGS_ALL,
            Source::Decisions => subject::DECISIONS_ALL,
        }
    }

    fn dead_letters(self) -> &'static str {
        match self {
            Source::Findings => subject::DLQ_FINDINGS,
            Source::Decisions => subject::DLQ_DECISIONS,
        }
    }

    fn index(self) -> usize {
        match self {
            Source::Findings => 0,
            Source::Decisions => 1,
        }
    }
}

/// Which messages an intake takes: every one of a source's stream, or those routed to one
/// partition of a cluster (ARCHITECTURE.md, "Several runners on a NATS cluster"), whose
/// subjects are `quench.partition.<n>.` followed by the subject they were published on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    All,
    Partition(u32),
}

impl Feed {
    /// The stream the consumer reads.
    fn stream(self, source: Source) -> &'static str {
        match self {
            Feed::All => source.stream(),
            Feed::Partition(_) => super::route::STREAM,
        }
    }

    /// The durable consumer's name.
    fn consumer(self, source: Source) -> String {
        let name = match source {
            Source::Findings => "quench-findings",
            Source::Decisions => "quench-decisions",
        };
        match self {
            Feed::All => name.to_owned(),
            Feed::Partition(partition) => format!("{name}-{partition}"),
        }
    }

    fn filter(self, source: Source) -> String {
        match self {
            Feed::All => source.filter().to_owned(),
            Feed::Partition(partition) => super::route::subject(partition, source.filter()),
        }
    }

    /// The advisory JetStream publishes when it gives up delivering one of its messages.
    fn max_deliveries_advisory(self, source: Source) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            self.stream(source),
            self.consumer(source)
        )
    }

    /// The subject a message was published on, before it was routed.
    fn published_on(self, subject: &str) -> &str {
        match self {
            Feed::All => subject,
            Feed::Partition(_) => super::route::published_on(subject),
        }
    }
}

/// How long a delivery may stay unacknowledged, and how many deliveries a message gets.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) ack_wait: Duration,
    pub(super) max_deliver: i64,
}

impl Limits {
    pub(super) fn new(config: &crate::config::NatsConfig) -> Limits {
        Limits {
            ack_wait: config.ack_wait(),
            max_deliver: config.max_deliver,
        }
    }

    /// A consumer with messages and nothing handled for this long is stuck.
    fn stuck_after(self) -> Duration {
        (self.ack_wait * 2).max(Duration::from_secs(5))
    }
}

/// What `/readyz` and the metrics say about a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Ok,
    /// Messages are waiting and none was handled for twice the ack wait.
    Stuck,
    /// Messages were acknowledged unprocessed in the last minute (not even their dead letter
    /// could be published).
    Shedding,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Stuck => "stuck",
            State::Shedding => "shedding",
        }
    }
}

/// The intake's health, written by the consumers and the watcher, read by `/readyz`.
#[derive(Debug)]
pub(crate) struct Health {
    started: Instant,
    consumers: [ConsumerHealth; 2],
}

#[derive(Debug, Default)]
struct ConsumerHealth {
    /// Milliseconds after `started` (plus one; 0 is never) of the last message handled.
    handled: AtomicU64,
    /// Since when messages have been waiting without a pause (0: none waiting).
    busy_since: AtomicU64,
    dropped: AtomicU64,
    stuck: AtomicBool,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            started: Instant::now(),
            consumers: Default::default(),
        }
    }
}

impl Health {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn handled(&self, source: Source) {
        self.consumers[source.index()]
            .handled
            .store(self.now(), Ordering::Relaxed);
    }

    fn dropped(&self, source: Source) {
        self.consumers[source.index()]
            .dropped
            .store(self.now(), Ordering::Relaxed);
    }

    pub(crate) fn state(&self, source: Source) -> State {
        let consumer = &self.consumers[source.index()];
        if consumer.stuck.load(Ordering::Relaxed) {
            return State::Stuck;
        }
        let dropped = consumer.dropped.load(Ordering::Relaxed);
        let window = u64::try_from(SHEDDING_FOR.as_millis()).unwrap_or(u64::MAX);
        if dropped != 0 && self.now().saturating_sub(dropped) < window {
            return State::Shedding;
        }
        State::Ok
    }

    /// Records what the consumer's info says: `pending` messages not yet acknowledged.
    /// Returns whether it is stuck.
    fn observe(&self, source: Source, pending: u64, stuck_after: Duration) -> bool {
        let consumer = &self.consumers[source.index()];
        let now = self.now();
        let stuck = if pending == 0 {
            consumer.busy_since.store(0, Ordering::Relaxed);
            false
        } else {
            let busy_since = match consumer.busy_since.load(Ordering::Relaxed) {
                0 => {
                    consumer.busy_since.store(now, Ordering::Relaxed);
                    now
                }
                since => since,
            };
            let last = consumer.handled.load(Ordering::Relaxed).max(busy_since);
            let limit = u64::try_from(stuck_after.as_millis()).unwrap_or(u64::MAX);
            now.saturating_sub(last) > limit
        };
        consumer.stuck.store(stuck, Ordering::Relaxed);
        stuck
    }
}

/// Creates the consumer, or updates it to these limits (so a changed `nats.max_deliver`
/// applies to a consumer an earlier start created).
async fn consumer(
    jetstream: &jetstream::Context,
    feed: Feed,
    source: Source,
    limits: Limits,
) -> Result<Consumer, Error> {
    let (stream, name) = (feed.stream(source), feed.consumer(source));
    let stream = jetstream
        .get_stream(stream)
        .await
        .map_err(|error| Error::Nats(format!("cannot open stream {stream}: {error}")))?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: feed.filter(source),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: limits.ack_wait,
            max_deliver: limits.max_deliver,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        })
        .await
        .map_err(|error| Error::Nats(format!("cannot create consumer {name}: {error}")))
}

pub(super) async fn findings_consumer(
    jetstream: &jetstream::Context,
    feed: Feed,
    limits: Limits,
) -> Result<Consumer, Error> {
    consumer(jetstream, feed, Source::Findings, limits).await
}

pub(super) async fn decisions_consumer(
    jetstream: &jetstream::Context,
    feed: Feed,
    limits: Limits,
) -> Result<Consumer, Error> {
    consumer(jetstream, feed, Source::Decisions, limits).await
}

/// Yields chunks of ready messages until shutdown; re-opens the pull stream after errors (a
/// NATS restart), so nothing is lost: unacked messages are simply delivered again.
pub(super) async fn each_chunk<F, Fut>(
    consumer: Consumer,
    shutdown: CancellationToken,
    what: &'static str,
    handle: F,
) where
    F: FnMut(Vec<jetstream::Message>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    each_chunk_with(
        consumer,
        &mut futures::stream::empty(),
        shutdown,
        what,
        handle,
    )
    .await;
}

/// What a pull gave.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every item is a message: boxing would allocate once per message"
)]
enum Pulled {
    Message(jetstream::Message),
    Interrupted(String),
    /// The pull stream ended: it is opened again.
    Ended,
}

/// [`each_chunk`], with the messages `handed` yields (a router handing over findings of a
/// partition this runner holds) taken in the same chunks as those pulled.
async fn each_chunk_with<F, Fut, H>(
    consumer: Consumer,
    handed: &mut H,
    shutdown: CancellationToken,
    what: &'static str,
    mut handle: F,
) where
    F: FnMut(Vec<jetstream::Message>) -> Fut,
    Fut: std::future::Future<Output = ()>,
    H: futures::Stream<Item = jetstream::Message> + Unpin,
{
    let mut backoff = Duration::from_millis(100);
    'reconnect: while !shutdown.is_cancelled() {
        let messages = match consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, consumer = what, "cannot pull messages; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let pulled = messages
            .map(|item| match item {
                Ok(message) => Pulled::Message(message),
                Err(error) => Pulled::Interrupted(error.to_string()),
            })
            .chain(futures::stream::iter([Pulled::Ended]));
        let mut chunks = futures::stream::select(pulled, (&mut *handed).map(Pulled::Message))
            .ready_chunks(BATCH);
        loop {
            let chunk = tokio::select! {
                () = shutdown.cancelled() => return,
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                continue 'reconnect;
            };
            let mut ready = Vec::with_capacity(chunk.len());
            let mut ended = false;
            for item in chunk {
                match item {
                    Pulled::Message(message) => ready.push(message),
                    Pulled::Interrupted(error) => {
                        tracing::warn!(%error, consumer = what, "pull interrupted")
                    }
                    Pulled::Ended => ended = true,
                }
            }
            if ready.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'reconnect;
            }
            backoff = Duration::from_millis(100);
            handle(ready).await;
            if ended {
                continue 'reconnect;
            }
        }
    }
}

/// Batches whose commit may be in progress while the next is prepared.
const BATCHES_IN_FLIGHT: usize = 4;

/// What the intake tasks share.
#[derive(Debug, Clone)]
pub(super) struct Intake {
    pub(super) jetstream: jetstream::Context,
    pub(super) engine: Engine,
    pub(super) health: Arc<Health>,
    pub(super) limits: Limits,
    pub(super) feed: Feed,
}

/// The findings intake. A chunk is parsed and taken into the engine in order; its commit, the
/// acks and the driving of its runs proceed in a task while the next chunk is prepared (at most
/// [`BATCHES_IN_FLIGHT`] at once). A failed commit stops the service: later batches may have
/// assumed it, so the store refuses them too; every unacknowledged message comes back after
/// restart. While a chunk waits for room, its messages' ack wait is extended, so waiting never
/// costs a delivery.
///
/// `handed`: findings the router hands over without routing them through the stream (this
/// runner holds their partition), each still unacknowledged on the stream it was published
/// to; acknowledged here after their commit like any other. Those still waiting when intake
/// stops are given back at once (`Nak`), to be routed again.
pub(super) async fn findings(
    consumer: Consumer,
    intake: Intake,
    mut handed: Option<tokio::sync::mpsc::Receiver<jetstream::Message>>,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let tasks = TaskTracker::new();
    let mut handed_over = futures::stream::poll_fn(|context| match handed.as_mut() {
        Some(handed) => handed.poll_recv(context),
        None => std::task::Poll::Ready(None),
    });
    each_chunk_with(consumer, &mut handed_over, shutdown, "findings", |messages| {
        let intake = intake.clone();
        let (in_flight, tasks) = (in_flight.clone(), tasks.clone());
        async move {
            let mut findings = Vec::with_capacity(messages.len());
            let mut accepted = Vec::with_capacity(messages.len());
            for message in messages {
                match parse_finding(intake.feed.published_on(&message.subject), &message.payload) {
                    Ok(finding) => {
                        // Published straight to a partition's subject (not by the router) for a
                        // key another partition holds: taken in here, its key could have a run
                        // open in two partitions.
                        if let Feed::Partition(partition) = intake.feed {
                            let count = intake.engine.partition().count;
                            let belongs = super::route::partition_of_finding(&finding, count);
                            if belongs != partition {
                                let refusal = Refusal::new(
                                    "misrouted",
                                    format!(
                                        "key `{}` belongs to partition {belongs}, not {partition}",
                                        finding.key
                                    ),
                                );
                                intake.refuse(Source::Findings, &message, refusal).await;
                                continue;
                            }
                        }
                        // A campaign's part is quench's own finding: only as the campaign made it.
                        if let Err(why) = crate::campaign::admit(intake.engine.store(), &finding) {
                            let refusal = Refusal::new("unverified_attestation", why);
                            intake.refuse(Source::Findings, &message, refusal).await;
                            continue;
                        }
                        findings.push(finding);
                        accepted.push(message);
                    }
                    Err(error) => {
                        let refusal = Refusal::new(error.reason(), error.to_string());
                        intake.refuse(Source::Findings, &message, refusal).await;
                    }
                }
            }
            if findings.is_empty() {
                return;
            }
            let ack_wait = intake.limits.ack_wait;
            let prepared = keep_alive(&accepted, ack_wait, async {
                // Runs waiting to be driven slow intake down (run events do not: they are
                // published from the audit log, however far behind).
                intake.engine.room().await;
                let permit = in_flight.clone().acquire_owned().await.ok()?;
                Some((permit, intake.engine.begin_ingest(&findings).await))
            })
            .await;
            let Some((permit, ingesting)) = prepared else {
                return;
            };
            let ingesting = match ingesting {
                Ok(ingesting) => ingesting,
                Err(error) => return commit_failed(&error, findings.len()),
            };
            let kinds: Vec<String> = findings.into_iter().map(|finding| finding.kind).collect();
            tasks.spawn(async move {
                let _permit = permit;
                match keep_alive(&accepted, ack_wait, ingesting.finish()).await {
                    Ok(outcomes) => {
                        // Acknowledged only now that the runs they started are committed.
                        for message in &accepted {
                            ack(message).await;
                        }
                        intake.health.handled(Source::Findings);
                        let metrics = crate::metrics::get();
                        for (kind, outcome) in kinds.iter().zip(&outcomes) {
                            metrics.finding(kind, *outcome == FindingOutcome::Duplicate);
                        }
                        tracing::debug!(findings = outcomes.len(), "findings committed");
                    }
                    Err(error) => commit_failed(&error, kinds.len()),
                }
            });
        }
    })
    .await;
    if let Some(handed) = handed.as_mut() {
        handed.close();
        while let Ok(message) = handed.try_recv() {
            let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Not acked: JetStream delivers the findings again (after a restart, when the store has
/// failed: the service stops on [`crate::store::Store::failed`]).
fn commit_failed(error: &crate::engine::Error, count: usize) {
    tracing::error!(%error, count, "findings could not be committed; they will be delivered again");
}

/// The decisions intake.
pub(super) async fn decisions(consumer: Consumer, intake: Intake, shutdown: CancellationToken) {
    // Deferred while the gate's messages may still be on their way, but never past the last
    // delivery JetStream will make: that one is decided (and refused) for good.
    let defer_until = MAX_DEFERRALS.min(intake.limits.max_deliver - 1);
    each_chunk(consumer, shutdown, "decisions", |messages| {
        let intake = intake.clone();
        async move {
            for message in messages {
                let decision = match Decision::parse(&message.payload) {
                    Ok(decision) => decision,
                    Err(error) => {
                        let refusal = Refusal::new(error.reason(), error.to_string());
                        intake.refuse(Source::Decisions, &message, refusal).await;
                        continue;
                    }
                };
                let defer = if deliveries(&message) <= defer_until {
                    Defer::WhileUndelivered
                } else {
                    Defer::Never
                };
                match intake.engine.decide(&decision, defer).await {
                    Ok(crate::engine::DecisionOutcome::Deferred) => {
                        // Offered again once the gate's messages (and so its Slack ids) are in.
                        tracing::info!(run_id = %decision.run_id, gate = %decision.gate, actor = %decision.actor.id, "decision deferred until the gate's messages are delivered");
                        if let Err(error) = message
                            .ack_with(jetstream::AckKind::Nak(Some(DEFER)))
                            .await
                        {
                            tracing::warn!(%error, "nak failed; the decision comes back after ack_wait");
                        }
                        intake.health.handled(Source::Decisions);
                    }
                    Ok(outcome) => {
                        tracing::info!(run_id = %decision.run_id, gate = %decision.gate, actor = %decision.actor.id, %outcome, "decision");
                        ack(&message).await;
                        intake.health.handled(Source::Decisions);
                    }
                    Err(error) => {
                        tracing::error!(%error, run_id = %decision.run_id, "decision could not be committed; it will be delivered again");
                    }
                }
            }
        }
    })
    .await;
}

/// A finding as it arrives on `subject`: an OCSF finding event on `quench.findings.ocsf`
/// (mapped by [`quench_proto::ocsf::parse`], which names the OCSF attribute it could not map),
/// a Finding v1 on every other `quench.findings.<kind>`. Either is checked and redacted alike.
pub(super) fn parse_finding(
    subject: &str,
    payload: &[u8],
) -> Result<Finding, quench_proto::ParseError> {
    if subject == subject::FINDINGS_OCSF {
        quench_proto::ocsf::parse(payload, quench_proto::ocsf::MAX_OCSF_BYTES)
    } else {
        Finding::parse(payload, DEFAULT_MAX_FINDING_BYTES)
    }
}

/// Why a message is refused: a short stable code (header prefix and metric label) and the
/// detail for a person.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    detail: String,
}

impl Refusal {
    fn new(code: &'static str, detail: String) -> Refusal {
        Refusal { code, detail }
    }

    /// `code: detail`, one line of at most 512 characters (a header value), redacted before
    /// it is cut (a cut key may no longer look like one).
    fn header(&self) -> String {
        redact_str(&format!("{}: {}", self.code, self.detail))
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(512)
            .collect()
    }
}

impl Intake {
    /// Dead-letters a refused message and acknowledges it. When even the dead letter cannot be
    /// published, the message is offered again shortly, and from its [`DROP_AFTER`]th delivery
    /// on it is acknowledged and counted as dropped: nothing a sender publishes can hold one of
    /// the consumer's places for ever.
    async fn refuse(&self, source: Source, message: &jetstream::Message, refusal: Refusal) {
        let letter = DeadLetter {
            source,
            subject: self.feed.published_on(&message.subject),
            payload: &message.payload,
            stream: self.feed.stream(source),
            stream_sequence: message.info().ok().map(|info| info.stream_sequence),
            refusal,
        };
        match letter.publish(&self.jetstream).await {
            Ok(()) => {
                ack(message).await;
                self.health.handled(source);
            }
            Err(error) if deliveries(message) >= DROP_AFTER.min(self.limits.max_deliver) => {
                ack(message).await;
                self.drop_message(source, "dead_letter_failed", &error);
            }
            Err(error) => {
                if let Some(suppressed) = DEAD_LETTER_FAILED_LOG.check() {
                    tracing::warn!(%error, consumer = source.label(), suppressed, "cannot dead-letter a refused message; it is offered again");
                }
                let retry = jetstream::AckKind::Nak(Some(RETRY_DEAD_LETTER));
                if let Err(error) = message.ack_with(retry).await {
                    tracing::debug!(%error, "nak failed; the message comes back after ack_wait");
                }
                self.health.handled(source);
            }
        }
    }

    fn drop_message(&self, source: Source, reason: &str, error: &str) {
        crate::metrics::get().intake_dropped(source.label(), reason);
        self.health.dropped(source);
        if let Some(suppressed) = DROPPED_LOG.check() {
            tracing::error!(%error, consumer = source.label(), reason, suppressed, "a message was acknowledged unprocessed: not even its dead letter could be published (see quench_intake_dropped)");
        }
    }
}

/// Dead-letters a message of `source`'s stream that cannot be passed on as it is (the router:
/// too large once routed), with `code` and `detail` as its reason.
pub(super) async fn dead_letter(
    jetstream: &jetstream::Context,
    source: Source,
    message: &jetstream::Message,
    code: &'static str,
    detail: String,
) -> Result<(), String> {
    DeadLetter {
        source,
        subject: &message.subject,
        payload: &message.payload,
        stream: source.stream(),
        stream_sequence: message.info().ok().map(|info| info.stream_sequence),
        refusal: Refusal::new(code, detail),
    }
    .publish(jetstream)
    .await
}

/// A refused message on its way to the dead-letter subject.
struct DeadLetter<'a> {
    source: Source,
    subject: &'a str,
    payload: &'a [u8],
    /// The stream the message was read from, and its sequence there: the dead letter's
    /// `Nats-Msg-Id`, so a message refused twice (its ack lost) is dead-lettered once.
    stream: &'a str,
    stream_sequence: Option<u64>,
    refusal: Refusal,
}

impl DeadLetter<'_> {
    /// Publishes the body as it came, as bytes: redacted (a malformed finding may still carry a
    /// live key), then cut to [`subject::DLQ_BODY_LIMIT`] — never re-encoded, so it always fits
    /// in a NATS message — with why, where from and the original size in headers.
    async fn publish(&self, jetstream: &jetstream::Context) -> Result<(), String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subject::HEADER_DLQ_REASON, self.refusal.header().as_str());
        // A publisher chooses the subject too: `quench.findings.<anything>`.
        headers.insert(
            subject::HEADER_DLQ_SUBJECT,
            redact_str(self.subject).as_ref(),
        );
        headers.insert(
            subject::HEADER_DLQ_SIZE,
            self.payload.len().to_string().as_str(),
        );
        if let Some(sequence) = self.stream_sequence {
            let id = format!("dlq:{}:{sequence}", self.stream);
            headers.insert(subject::HEADER_MSG_ID, id.as_str());
        }
        let mut body = redact_bytes(self.payload);
        if body.len() > subject::DLQ_BODY_LIMIT {
            body.truncate(subject::DLQ_BODY_LIMIT);
            headers.insert(subject::HEADER_DLQ_TRUNCATED, "true");
        }
        let dlq = self.source.dead_letters();
        jetstream
            .publish_with_headers(dlq, headers, body.into())
            .await
            .map_err(|error| error.to_string())?
            .await
            .map_err(|error| error.to_string())?;
        crate::metrics::get().dead_letter(dlq, self.refusal.code);
        if let Some(suppressed) = DEAD_LETTERED_LOG.check() {
            tracing::warn!(subject = %self.subject, reason = self.refusal.code, suppressed, "dead-lettered");
        }
        Ok(())
    }
}

/// The backstop: JetStream stops delivering a message after `nats.max_deliver` deliveries and
/// says so in an advisory. Whatever kept it from being acknowledged (a message that crashes
/// or hangs the process, a store that keeps failing), it is then dead-lettered from the stream
/// with reason `max_deliveries`, or counted as dropped: it is never silently left behind. A
/// replay from the DLQ is dropped as a duplicate if the message was in fact taken in.
pub(super) async fn max_deliveries(
    client: async_nats::Client,
    intake: Intake,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut advisories = Vec::new();
    for source in Source::ALL {
        let advisory = intake.feed.max_deliveries_advisory(source);
        let subscription = client
            .subscribe(advisory.clone())
            .await
            .map_err(|error| Error::Nats(format!("cannot subscribe to {advisory}: {error}")))?;
        advisories.push(subscription.map(move |message| (source, message)));
    }
    let mut advisories = futures::stream::select_all(advisories);
    loop {
        let (source, advisory) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = advisories.next() => match next {
                Some(next) => next,
                None => return Ok(()),
            },
        };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
            tracing::warn!(
                consumer = source.label(),
                "a max-deliveries advisory could not be read"
            );
            continue;
        };
        intake.give_up(source, &advisory).await;
    }
}

/// The fields of JetStream's `io.nats.jetstream.advisory.v1.max_deliver` quench reads.
#[derive(Debug, serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

impl Intake {
    async fn give_up(&self, source: Source, advisory: &MaxDeliveries) {
        let sequence = advisory.stream_seq;
        let stream = self.feed.stream(source);
        let message = match self.jetstream.get_stream_no_info(stream).await {
            Ok(opened) => opened
                .get_raw_message(sequence)
                .await
                .map_err(|error| format!("cannot read message {sequence} of {stream}: {error}")),
            Err(error) => Err(format!("cannot open {stream}: {error}")),
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => return self.drop_message(source, "max_deliveries", &error),
        };
        let letter = DeadLetter {
            source,
            subject: self.feed.published_on(&message.subject),
            payload: &message.payload,
            stream: self.feed.stream(source),
            stream_sequence: Some(sequence),
            refusal: Refusal::new(
                "max_deliveries",
                format!(
                    "delivered {} times and never acknowledged (see the service log of that time)",
                    advisory.deliveries
                ),
            ),
        };
        if let Err(error) = letter.publish(&self.jetstream).await {
            self.drop_message(source, "max_deliveries", &error);
        }
    }
}

/// Reads the consumers' state every [`WATCH_EVERY`] for `/readyz` and the metrics; says once
/// when a consumer becomes stuck and when it recovers.
pub(super) async fn watch(intake: Intake, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for source in Source::ALL {
            let info = match intake
                .jetstream
                .get_stream_no_info(intake.feed.stream(source))
                .await
            {
                Ok(stream) => stream.consumer_info(intake.feed.consumer(source)).await,
                Err(error) => {
                    tracing::debug!(%error, consumer = source.label(), "cannot read the consumer's state");
                    continue;
                }
            };
            let Ok(info) = info else {
                continue;
            };
            let pending = info
                .num_pending
                .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(0));
            let was = intake.health.state(source) == State::Stuck;
            let stuck = intake
                .health
                .observe(source, pending, intake.limits.stuck_after());
            crate::metrics::get().intake_state(source.label(), pending, stuck);
            if stuck && !was {
                tracing::error!(
                    consumer = source.label(),
                    pending,
                    "intake is stuck: messages are waiting and none was handled for twice the ack wait"
                );
            } else if was && !stuck {
                tracing::info!(consumer = source.label(), "intake moves again");
            }
        }
    }
}

/// Keeps `messages` from being delivered again while `work` runs: each ack wait is extended
/// (`+WPI`) every third of it. Waiting for room is not a failed delivery.
async fn keep_alive<T>(
    messages: &[jetstream::Message],
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let every = ack_wait / 3;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticks.tick() => {
                for message in messages {
                    if let Err(error) = message.ack_with(jetstream::AckKind::Progress).await {
                        tracing::debug!(%error, "cannot extend a message's ack wait");
                    }
                }
            }
        }
    }
}

/// How many times this message has been delivered, this time included.
fn deliveries(message: &jetstream::Message) -> i64 {
    message.info().map_or(1, |info| info.delivered)
}

async fn ack(message: &jetstream::Message) {
    if let Err(error) = message.ack().await {
        tracing::warn!(%error, "ack failed; the message will be delivered again and dropped as a duplicate");
    }
}

/// At most one log line per window for an event a sender can repeat at will (a flood of bad
/// messages must not become a flood of log lines); the lines left out are counted and the
/// count is logged with the next one.
#[derive(Debug)]
struct Throttle {
    window: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    const fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be logged now.
    fn check(&self) -> Option<u64> {
        let Ok(mut state) = self.state.lock() else {
            return Some(0);
        };
        let (last, suppressed) = &mut *state;
        match last {
            Some(at) if at.elapsed() < self.window => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(Instant::now());
                Some(std::mem::take(suppressed))
            }
        }
    }
}

static DEAD_LETTERED_LOG: Throttle = Throttle::new(Duration::from_secs(1));
static DEAD_LETTER_FAILED_LOG: Throttle = Throttle::new(Duration::from_secs(10));
static DROPPED_LOG: Throttle = Throttle::new(Duration::from_secs(10));
