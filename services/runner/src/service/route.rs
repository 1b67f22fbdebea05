//! Routing findings and decisions to partitions (cluster mode with several partitions;
//! ARCHITECTURE.md, "Several runners on a NATS cluster"). Every runner pulls from the streams'
//! shared durable consumers, works out each message's partition — a finding's by its key, a
//! decision's by the partition its run id names — and republishes it, body and headers as they
//! came, on `quench.partition.<n>.<the subject it was published on>` in the work-queue stream
//! [`STREAM`]; only once that stream has acknowledged it is the original acknowledged. The
//! partition's owner consumes its own subjects and takes them in exactly as a runner on its own
//! would, dead-lettering what it refuses.
//!
//! A finding of a partition the router's own runner serves is not republished: it is handed
//! to that partition's intake in the process, still unacknowledged on the stream it was
//! published to, and acknowledged there once its run is committed, as any finding is. If the
//! partition moves first, the finding is given back (or its ack wait runs out) and routed again.
//!
//! The router reads no more than it needs to route: a message it cannot read is sent to
//! partition 0, whose intake dead-letters it with the reason. Each republish carries
//! `Nats-Msg-Id` = `route:<stream>:<sequence>`, so a message delivered again after a router
//! died between its publish and its ack is kept once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use quench_proto::{Decision, subject};
use tokio_util::sync::CancellationToken;

use super::Error;
use super::intake::{Feed, Limits, Source};
use crate::cluster::partition;

/// The work-queue stream of routed messages.
pub(crate) const STREAM: &str = "QUENCH_PARTITIONS";
/// Its subjects: `quench.partition.<n>.<subject published on>`.
const PREFIX: &str = "quench.partition.";
/// How long the stream remembers a routed message's id: longer than a delivery's ack wait
/// many times over, so a message routed again is dropped as a repeat.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60 * 60);
/// How long a republish may wait for the stream's acknowledgement.
const PUBLISH_WITHIN: Duration = Duration::from_secs(10);

/// The subject a message published on `published_on` is routed to in `partition`.
pub(crate) fn subject(partition: u32, published_on: &str) -> String {
    format!("{PREFIX}{partition}.{published_on}")
}

/// The subject a routed message was published on (`subject` itself when it is not routed).
pub(crate) fn published_on(subject: &str) -> &str {
    subject
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .filter(|(partition, _)| partition.parse::<u32>().is_ok())
        .map_or(subject, |(_, published_on)| published_on)
}

/// Creates (or updates) the stream of routed messages: file storage, `replicas` copies, each
/// message removed once its partition's owner acknowledged it.
pub async fn ensure(
    jetstream: &jetstream::Context,
    url: &str,
    replicas: usize,
) -> Result<(), Error> {
    super::nats::create_stream(
        jetstream,
        url,
        stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![format!("{PREFIX}>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            max_age: Duration::from_secs(7 * 24 * 3600),
            description: Some(
                "findings and decisions routed to the partition that takes them in".to_owned(),
            ),
            ..Default::default()
        },
        replicas,
    )
    .await
}

/// The partition that takes `finding` in: its key's; a campaign's part goes where the campaign
/// is, with the estate (partition 0).
pub(super) fn partition_of_finding(finding: &quench_proto::Finding, partitions: u32) -> u32 {
    if finding.kind == crate::campaign::FINDING_KIND {
        return 0;
    }
    partition::of_key(&finding.key, partitions)
}

/// The partition a message belongs to among `partitions`: a finding's key's, a decision's run's;
/// 0 for what cannot be read (its intake there refuses it with the reason).
fn partition_of(source: Source, published_on: &str, payload: &[u8], partitions: u32) -> u32 {
    match source {
        Source::Findings => super::intake::parse_finding(published_on, payload)
            .map_or(0, |finding| partition_of_finding(&finding, partitions)),
        Source::Decisions => Decision::parse(payload)
            .ok()
            .and_then(|decision| partition::of_run_id(&decision.run_id, partitions))
            .unwrap_or(0),
    }
}

/// Where this runner's router hands findings of the partitions it serves straight to their
/// intake, by partition.
pub(super) type Handovers = std::sync::Arc<
    std::sync::RwLock<
        std::collections::BTreeMap<u32, tokio::sync::mpsc::Sender<jetstream::Message>>,
    >,
>;

/// Pulls findings and decisions from the streams' shared consumers and routes them.
pub(super) struct Router {
    pub(super) jetstream: jetstream::Context,
    pub(super) partitions: u32,
    /// The server's `max_payload`: a message that would not fit once routed is dead-lettered.
    pub(super) max_payload: usize,
    /// The partitions this runner serves: a finding of one is handed to its intake.
    pub(super) handovers: Handovers,
}

/// What became of a message.
enum Routed {
    /// Republished on its partition's subject: acknowledged now.
    Republished,
    /// Handed to the intake of its partition, served here, which acknowledges it once its run
    /// is committed (or gives it back).
    HandedOver,
}

/// Why a message was not routed.
enum Unrouted {
    /// It would exceed the server's `max_payload` with its routing subject and id: it can
    /// never be routed, and is dead-lettered.
    TooLarge(String),
    /// The routing stream did not take it (an outage): offered again.
    Failed(String),
}

impl Router {
    /// Routes until `stop`; every runner of the cluster runs one (the consumers share the work).
    pub(super) async fn run(
        self,
        limits: Limits,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, Error> {
        // A message is routed again until the routing stream takes it, however long that
        // takes: nothing a publisher sends makes routing fail (what cannot be read goes to
        // partition 0), so only an outage does, and a message must not be given up on for one.
        let limits = Limits {
            max_deliver: -1,
            ..limits
        };
        let findings = super::intake::findings_consumer(&self.jetstream, Feed::All, limits).await?;
        let decisions =
            super::intake::decisions_consumer(&self.jetstream, Feed::All, limits).await?;
        let router = std::sync::Arc::new(self);
        let tasks = [(Source::Findings, findings), (Source::Decisions, decisions)].map(
            |(source, consumer)| {
                let (router, stop) = (router.clone(), stop.clone());
                tokio::spawn(async move { router.route_all(source, consumer, stop).await })
            },
        );
        Ok(tokio::spawn(async move {
            for task in tasks {
                let _ = task.await;
            }
        }))
    }

    async fn route_all(
        &self,
        source: Source,
        consumer: consumer::Consumer<consumer::pull::Config>,
        stop: CancellationToken,
    ) {
        super::intake::each_chunk(consumer, stop, source.label(), |messages| async move {
            // Published all at once, acknowledged as their routes are.
            let routed = futures::stream::iter(messages)
                .map(|message| async move {
                    let partition =
                        partition_of(source, &message.subject, &message.payload, self.partitions);
                    if source == Source::Findings && self.hand_over(partition, &message) {
                        return (message, Ok(Routed::HandedOver));
                    }
                    let routed = self.route(&message, partition).await;
                    (message, routed.map(|()| Routed::Republished))
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
            for (message, routed) in routed {
                let answer = match routed {
                    Ok(Routed::HandedOver) => {
                        crate::metrics::get().routed(source.label(), "handed_over");
                        continue;
                    }
                    Ok(Routed::Republished) => {
                        crate::metrics::get().routed(source.label(), "republished");
                        message.ack().await
                    }
                    Err(Unrouted::TooLarge(detail)) => {
                        match super::intake::dead_letter(
                            &self.jetstream,
                            source,
                            &message,
                            "too_large",
                            detail,
                        )
                        .await
                        {
                            Ok(()) => message.ack().await,
                            Err(error) => {
                                tracing::warn!(%error, "cannot dead-letter a message too large to route; it is offered again");
                                message
                                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                                    .await
                            }
                        }
                    }
                    Err(Unrouted::Failed(error)) => {
                        tracing::warn!(%error, consumer = source.label(), "cannot route a message to its partition; it is offered again");
                        message
                            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                            .await
                    }
                };
                if let Err(error) = answer {
                    tracing::debug!(%error, "ack failed; the message comes back and is routed again as a repeat");
                }
            }
        })
        .await;
    }

    /// Hands a finding of `partition` to its intake when this runner serves it and the intake
    /// has room: it is then taken in with one write fewer (no republish).
    fn hand_over(&self, partition: u32, message: &jetstream::Message) -> bool {
        let handover = self
            .handovers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&partition)
            .cloned();
        handover.is_some_and(|handover| handover.try_send(message.clone()).is_ok())
    }

    /// Republishes one message on `partition`'s subject and waits for the stream's ack.
    async fn route(&self, message: &jetstream::Message, partition: u32) -> Result<(), Unrouted> {
        let info = message
            .info()
            .map_err(|error| Unrouted::Failed(error.to_string()))?;
        let mut headers = kept_headers(message.headers.as_ref());
        let id = format!("route:{}:{}", info.stream, info.stream_sequence);
        headers.insert(subject::HEADER_MSG_ID, id.as_str());
        let routed = self::subject(partition, &message.subject);
        let size = routed.len() + header_bytes(&headers) + message.payload.len();
        if size > self.max_payload {
            return Err(Unrouted::TooLarge(format!(
                "{size} bytes once routed (its headers, the routing subject and id added), above \
                 the server's max_payload of {}",
                self.max_payload
            )));
        }
        let failed = |error: String| Unrouted::Failed(error);
        let ack = self
            .jetstream
            .publish_with_headers(routed, headers, message.payload.clone())
            .await
            .map_err(|error| failed(error.to_string()))?;
        tokio::time::timeout(PUBLISH_WITHIN, ack)
            .await
            .map_err(|_| failed(format!("{STREAM} did not acknowledge in time")))?
            .map_err(|error| failed(error.to_string()))?;
        Ok(())
    }
}

/// What `headers` take of a message, as the server counts them against `max_payload`
/// (`NATS/1.0\r\n`, `name: value\r\n` each, a closing `\r\n`).
fn header_bytes(headers: &async_nats::HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|value| name.to_string().len() + 2 + value.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// The headers a routed message keeps: all but the server's own (`Nats-…`), which a publisher
/// could have set to make the republish fail for ever (an expected sequence) or be dropped (an id).
fn kept_headers(headers: Option<&async_nats::HeaderMap>) -> async_nats::HeaderMap {
    let mut kept = async_nats::HeaderMap::new();
    for (name, values) in headers.into_iter().flat_map(async_nats::HeaderMap::iter) {
        if name.to_string().to_ascii_lowercase().starts_with("nats-") {
            continue;
        }
        for value in values {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever subject a publisher used, the routed one gives it back, and a subject that
        /// is not routed is its own.
        #[test]
        fn any_subject_survives_routing(
            partition in 0u32..1024,
            published in "[a-zA-Z0-9_.>*-]{1,80}",
        ) {
            let routed = subject(partition, &published);
            proptest::prop_assert_eq!(published_on(&routed), published.as_str());
            if !published.starts_with(PREFIX) {
                proptest::prop_assert_eq!(published_on(&published), published.as_str());
            }
        }
    }

    #[test]
    fn a_routed_subject_names_the_subject_it_was_published_on() {
        let routed = subject(7, "quench.findings.ocsf");
        assert_eq!(routed, "quench.partition.7.quench.findings.ocsf");
        assert_eq!(published_on(&routed), "quench.findings.ocsf");
        assert_eq!(published_on("quench.findings.leak"), "quench.findings.leak");
        assert_eq!(
            published_on("quench.partition.x.quench.findings.leak"),
            "quench.partition.x.quench.findings.leak"
        );
    }

    #[test]
    fn the_servers_headers_of_a_publisher_are_not_routed() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Expected-Last-Sequence", "1");
        headers.insert("nats-msg-id", "mine");
        headers.insert("Traceparent", "00-abc");
        let kept = kept_headers(Some(&headers));
        assert_eq!(kept.len(), 1);
        assert_eq!(kept.get("Traceparent").map(|v| v.as_str()), Some("00-abc"));
        assert!(kept_headers(None).is_empty());
    }

    #[test]
    fn headers_are_counted_as_the_server_counts_them() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "route:QUENCH_FINDINGS:7");
        assert_eq!(
            header_bytes(&headers),
            "NATS/1.0\r\nNats-Msg-Id: route:QUENCH_FINDINGS:7\r\n\r\n".len()
        );
    }

    #[test]
    fn what_cannot_be_read_goes_to_partition_zero() {
        assert_eq!(
            partition_of(Source::Findings, "quench.findings.x", b"{", 8),
            0
        );
        assert_eq!(
            partition_of(Source::Decisions, "quench.decisions.x", b"[]", 8),
            0
        );
    }
}
