//! Connecting to NATS (through `quench_common::nats`) and preparing JetStream: the streams
//! quench owns, created or updated at start-up, with messages that say what is wrong when NATS
//! is unreachable or JetStream is off.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use quench_proto::subject;

use super::Error;
use crate::config::NatsConfig;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a re-sent finding.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60 * 60);

/// Most bytes the dead-letter stream keeps.
const DLQ_MAX_BYTES: i64 = 1 << 30;
/// How long `quench serve` waits at start for a JetStream cluster (`[nats] replicas` > 1) that
/// does not answer yet: servers started together elect their leader first.
const CLUSTER_FORMING: Duration = Duration::from_secs(60);

/// Most bytes the OCSF records stream keeps.
const OCSF_MAX_BYTES: i64 = 1 << 30;

/// Connects as `quench` with the configured credentials; fails fast, naming the URL, when NATS
/// is not there.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, Error> {
    quench_common::nats::connect_as(config, "quench")
        .await
        .map_err(|error| Error::Nats(error.to_string()))
}

/// Creates or updates quench's streams.
pub async fn ensure_streams(
    jetstream: &jetstream::Context,
    url: &str,
    replicas: usize,
) -> Result<(), Error> {
    let streams = [
        stream::Config {
            name: subject::STREAM_FINDINGS.to_owned(),
            subjects: vec![subject::FINDINGS_ALL.to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            max_age: Duration::from_secs(7 * 24 * 3600),
            description: Some("quench findings from scanners and scheduled reviews".to_owned()),
            ..Default::default()
        },
        stream::Config {
            name: subject::STREAM_DECISIONS.to_owned(),
            subjects: vec![subject::DECISIONS_ALL.to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            max_age: Duration::from_secs(7 * 24 * 3600),
            description: Some("answers to quench approval gates".to_owned()),
            ..Default::default()
        },
        stream::Config {
            name: subject::STREAM_EVENTS.to_owned(),
            subjects: vec![subject::EVENTS_ALL.to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(30 * 24 * 3600),
            description: Some("quench run events for SIEMs and other systems".to_owned()),
            ..Default::default()
        },
        stream::Config {
            name: subject::STREAM_OCSF.to_owned(),
            subjects: vec![subject::OCSF_ALL.to_owned()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            // Bounded like the dead letters: past this size the oldest records go.
            max_bytes: OCSF_MAX_BYTES,
            discard: stream::DiscardPolicy::Old,
            // A record published again after a crash (its event not yet acknowledged) is
            // dropped: its id is its event's.
            duplicate_window: Duration::from_secs(10 * 60),
            description: Some(
                "OCSF records of what quench did (Remediation Activity, Detection Finding updates)"
                    .to_owned(),
            ),
            ..Default::default()
        },
        stream::Config {
            name: subject::STREAM_DLQ.to_owned(),
            subjects: vec![subject::DLQ_ALL.to_owned()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            // A flood of bad messages cannot fill the disk or refuse the next dead letter:
            // past this size the oldest dead letters go (counted by the stream, not silent).
            max_bytes: DLQ_MAX_BYTES,
            discard: stream::DiscardPolicy::Old,
            // A message refused twice (its ack lost) is dead-lettered once: its id is its
            // stream and sequence.
            duplicate_window: Duration::from_secs(10 * 60),
            description: Some(
                "messages quench refused, with the reason in Quench-Dlq-Reason".to_owned(),
            ),
            ..Default::default()
        },
    ];
    for config in streams {
        create_stream(jetstream, url, config, replicas).await?;
    }
    Ok(())
}

/// Creates `config`'s stream with `replicas` copies, or updates it to that config; with several
/// replicas, waits a while for a cluster that is still electing its leader.
pub(super) async fn create_stream(
    jetstream: &jetstream::Context,
    url: &str,
    mut config: stream::Config,
    replicas: usize,
) -> Result<(), Error> {
    config.num_replicas = replicas;
    let name = config.name.clone();
    // A cluster whose servers start together answers only once it has elected its meta
    // leader: asked again for a while before the answer counts.
    let started = std::time::Instant::now();
    let created = loop {
        let created = jetstream.create_or_update_stream(config.clone()).await;
        match created {
            Err(error)
                if replicas > 1
                    && started.elapsed() < CLUSTER_FORMING
                    && ["timed out", "no responders", "unavailable"]
                        .iter()
                        .any(|sign| error.to_string().to_lowercase().contains(sign)) =>
            {
                tracing::warn!(stream = %name, %error, "JetStream does not answer yet (a cluster electing its leader?); asking again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            created => break created,
        }
    };
    created.map_err(|error| {
        let text = error.to_string();
        // Without JetStream nobody answers the $JS API: the request times out or finds no responders.
        if ["no responders", "timed out", "not enabled", "unavailable"].iter().any(|sign| text.to_lowercase().contains(sign)) {
            Error::Nats(format!(
                "JetStream is not available on {url} ({text}). Start nats-server with JetStream enabled (`nats-server -js`) or enable it for this account"
            ))
        } else if replicas > 1 && ["replicas", "insufficient resources", "clustered"].iter().any(|sign| text.to_lowercase().contains(sign)) {
            Error::Nats(format!(
                "cannot keep {replicas} copies of stream {name} on {url} ({text}): `[nats] replicas = {replicas}` needs a JetStream cluster of at least {replicas} servers; use 1 on a single server"
            ))
        } else {
            Error::Nats(format!("cannot create or update stream {name} on {url}: {text}"))
        }
    })?;
    Ok(())
}
