//! Pulling findings and decisions from their durable consumers. A chunk of whatever messages are
//! ready (up to a batch) is parsed; bad messages are dead-lettered with their reason and acked;
//! the good ones go through the engine in one commit and are acked only after it. When the
//! engine's in-flight runs are all busy, `Driver::spawn` waits; when batches in flight are at
//! their bound, so does the next fetch.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use quench_proto::{DEFAULT_MAX_FINDING_BYTES, Decision, Finding, ParseError, redact_str, subject};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Driver, Error};
use crate::engine::{Engine, FindingOutcome};

/// How long a deferred decision waits before it is offered again, and how many times.
const DEFER: Duration = Duration::from_secs(1);
const MAX_DEFERRALS: i64 = 30;
/// Most messages taken through the engine in one commit.
const BATCH: usize = 256;
/// Unacknowledged messages a consumer may have out at once (bounds memory on our side too).
const MAX_ACK_PENDING: i64 = 4096;
const FINDINGS_CONSUMER: &str = "quench-findings";
const DECISIONS_CONSUMER: &str = "quench-decisions";

type Consumer = consumer::Consumer<consumer::pull::Config>;

async fn consumer(
    jetstream: &jetstream::Context,
    stream: &str,
    name: &str,
    filter: &str,
) -> Result<Consumer, Error> {
    let stream = jetstream
        .get_stream(stream)
        .await
        .map_err(|error| Error::Nats(format!("cannot open stream {stream}: {error}")))?;
    stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: filter.to_owned(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await
        .map_err(|error| Error::Nats(format!("cannot create consumer {name}: {error}")))
}

pub(super) async fn findings_consumer(jetstream: &jetstream::Context) -> Result<Consumer, Error> {
    consumer(
        jetstream,
        subject::STREAM_FINDINGS,
        FINDINGS_CONSUMER,
        subject::FINDINGS_ALL,
    )
    .await
}

pub(super) async fn decisions_consumer(jetstream: &jetstream::Context) -> Result<Consumer, Error> {
    consumer(
        jetstream,
        subject::STREAM_DECISIONS,
        DECISIONS_CONSUMER,
        subject::DECISIONS_ALL,
    )
    .await
}

/// Yields chunks of ready messages until shutdown; re-opens the pull stream after errors (a
/// NATS restart), so nothing is lost: unacked messages are simply delivered again.
async fn each_chunk<F, Fut>(
    consumer: Consumer,
    shutdown: CancellationToken,
    what: &'static str,
    mut handle: F,
) where
    F: FnMut(Vec<jetstream::Message>) -> Fut,
    Fut: std::future::Future<Output = ()>,
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
        let mut chunks = messages.ready_chunks(BATCH);
        loop {
            let chunk = tokio::select! {
                () = shutdown.cancelled() => return,
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                continue 'reconnect;
            };
            let mut ready = Vec::with_capacity(chunk.len());
            for item in chunk {
                match item {
                    Ok(message) => ready.push(message),
                    Err(error) => tracing::warn!(%error, consumer = what, "pull interrupted"),
                }
            }
            if ready.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'reconnect;
            }
            backoff = Duration::from_millis(100);
            handle(ready).await;
        }
    }
}

/// Batches whose commit may be in progress while the next is prepared.
const BATCHES_IN_FLIGHT: usize = 4;

/// The findings intake. A chunk is parsed and taken into the engine in order; its commit, the
/// acks and the driving of its runs proceed in a task while the next chunk is prepared (at most
/// [`BATCHES_IN_FLIGHT`] at once). A failed commit stops the service: later batches may have
/// assumed it, so the store refuses them too; every unacked message comes back after restart.
pub(super) async fn findings(
    consumer: Consumer,
    jetstream: jetstream::Context,
    engine: Engine,
    driver: Driver,
    backlog: super::events::Backlog,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let tasks = TaskTracker::new();
    let stop = shutdown.clone();
    each_chunk(consumer, shutdown, "findings", |messages| {
        let (jetstream, engine, driver) = (jetstream.clone(), engine.clone(), driver.clone());
        let (in_flight, tasks, backlog, stop) = (
            in_flight.clone(),
            tasks.clone(),
            backlog.clone(),
            stop.clone(),
        );
        async move {
            // Run events not yet published slow intake down before they would be shed.
            backlog.wait_low(&stop).await;
            let mut findings = Vec::with_capacity(messages.len());
            let mut accepted = Vec::with_capacity(messages.len());
            for message in messages {
                match Finding::parse(&message.payload, DEFAULT_MAX_FINDING_BYTES) {
                    Ok(finding) => {
                        findings.push(finding);
                        accepted.push(message);
                    }
                    Err(error) => {
                        dead_letter(&jetstream, subject::DLQ_FINDINGS, &message, &error).await
                    }
                }
            }
            if findings.is_empty() {
                return;
            }
            let Ok(permit) = in_flight.acquire_owned().await else {
                return;
            };
            let kinds: Vec<String> = findings
                .iter()
                .map(|finding| finding.kind.clone())
                .collect();
            let ingesting = match engine.begin_ingest(&findings).await {
                Ok(ingesting) => ingesting,
                Err(error) => return commit_failed(&error, findings.len()),
            };
            tasks.spawn(async move {
                let _permit = permit;
                match ingesting.finish().await {
                    Ok((outcomes, wake)) => {
                        // Acknowledged only now that the runs they started are committed.
                        for message in accepted {
                            ack(&message).await;
                        }
                        let metrics = crate::metrics::get();
                        for (kind, outcome) in kinds.iter().zip(&outcomes) {
                            metrics.finding(kind, *outcome == FindingOutcome::Duplicate);
                        }
                        tracing::debug!(
                            findings = outcomes.len(),
                            runs = wake.len(),
                            "findings committed"
                        );
                        driver.spawn(wake).await;
                    }
                    Err(error) => commit_failed(&error, findings.len()),
                }
            });
        }
    })
    .await;
    tasks.close();
    tasks.wait().await;
}

/// Not acked: JetStream delivers the findings again (after a restart, when the store has
/// failed: the service stops on [`crate::store::Store::failed`]).
fn commit_failed(error: &crate::engine::Error, count: usize) {
    tracing::error!(%error, count, "findings could not be committed; they will be delivered again");
}

/// The decisions intake.
pub(super) async fn decisions(
    consumer: Consumer,
    jetstream: jetstream::Context,
    engine: Engine,
    driver: Driver,
    shutdown: CancellationToken,
) {
    each_chunk(consumer, shutdown, "decisions", |messages| {
        let (jetstream, engine, driver) = (jetstream.clone(), engine.clone(), driver.clone());
        async move {
            for message in messages {
                let decision = match Decision::parse(&message.payload) {
                    Ok(decision) => decision,
                    Err(error) => {
                        dead_letter(&jetstream, subject::DLQ_DECISIONS, &message, &error).await;
                        continue;
                    }
                };
                // Deferred at most MAX_DEFERRALS times; then it is decided (and refused) for good.
                let deliveries = message.info().map_or(1, |info| info.delivered);
                match engine
                    .decide_or_defer(&decision, deliveries <= MAX_DEFERRALS)
                    .await
                {
                    Ok((crate::engine::DecisionOutcome::Deferred, _)) => {
                        // Offered again once the gate's messages (and so its Slack ids) are in.
                        tracing::info!(run_id = %decision.run_id, gate = %decision.gate, actor = %decision.actor.id, "decision deferred until the gate's messages are delivered");
                        if let Err(error) = message
                            .ack_with(jetstream::AckKind::Nak(Some(DEFER)))
                            .await
                        {
                            tracing::warn!(%error, "nak failed; the decision comes back after ack_wait");
                        }
                    }
                    Ok((outcome, wake)) => {
                        tracing::info!(run_id = %decision.run_id, gate = %decision.gate, actor = %decision.actor.id, ?outcome, "decision");
                        ack(&message).await;
                        driver.spawn(wake).await;
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

/// Republishes a refused message to the dead-letter subject with why and where from, then acks
/// it. The body is redacted: a malformed finding may still carry a live key.
async fn dead_letter(
    jetstream: &jetstream::Context,
    dlq: &str,
    message: &jetstream::Message,
    error: &ParseError,
) {
    let reason: String = format!("{}: {error}", error.reason())
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(subject::HEADER_DLQ_REASON, reason.as_str());
    headers.insert(subject::HEADER_DLQ_SUBJECT, message.subject.as_str());
    let body = redact_str(&String::from_utf8_lossy(&message.payload)).into_owned();
    let published = match jetstream
        .publish_with_headers(dlq.to_owned(), headers, body.into())
        .await
    {
        Ok(ack) => ack.await.map(drop).map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match published {
        Ok(()) => {
            tracing::warn!(subject = %message.subject, reason = error.reason(), "dead-lettered");
            crate::metrics::get().dead_letter(dlq, error.reason());
            ack(message).await;
        }
        // Not acked: it comes back and is dead-lettered then.
        Err(error) => tracing::error!(%error, "cannot dead-letter a refused message"),
    }
}

async fn ack(message: &jetstream::Message) {
    if let Err(error) = message.ack().await {
        tracing::warn!(%error, "ack failed; the message will be delivered again and dropped as a duplicate");
    }
}
