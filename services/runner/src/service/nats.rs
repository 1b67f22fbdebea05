//! Connecting to NATS and preparing JetStream: the streams quench owns, created or updated at
//! start-up, with messages that say what is wrong when NATS is unreachable or JetStream is off.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use quench_proto::subject;

use super::Error;
use crate::config::NatsConfig;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a re-sent finding.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60 * 60);

/// Most bytes the dead-letter stream keeps.
const DLQ_MAX_BYTES: i64 = 1 << 30;

/// Connects with the configured credentials; fails fast, naming the URL, when NATS is not there.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, Error> {
    connect_as(config, "quench").await
}

/// [`connect`], naming the connection `name` (as NATS monitoring shows it).
pub async fn connect_as(config: &NatsConfig, name: &str) -> Result<async_nats::Client, Error> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(config.inbox_prefix.as_str())
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(|error| {
            Error::Nats(format!(
                "cannot read nats.credentials_file {}: {error}",
                path.display()
            ))
        })?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    options.connect(config.url.as_str()).await.map_err(|error| {
        Error::Nats(format!(
            "cannot reach NATS at {}: {error}. Is nats-server running there with these credentials? (`quench up` starts one locally)",
            config.url
        ))
    })
}

/// Creates or updates quench's streams.
pub async fn ensure_streams(jetstream: &jetstream::Context, url: &str) -> Result<(), Error> {
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
        let name = config.name.clone();
        jetstream.create_or_update_stream(config).await.map_err(|error| {
            let text = error.to_string();
            // Without JetStream nobody answers the $JS API: the request times out or finds no responders.
            if ["no responders", "timed out", "not enabled", "unavailable"].iter().any(|sign| text.to_lowercase().contains(sign)) {
                Error::Nats(format!(
                    "JetStream is not available on {url} ({text}). Start nats-server with JetStream enabled (`nats-server -js`) or enable it for this account"
                ))
            } else {
                Error::Nats(format!("cannot create or update stream {name} on {url}: {text}"))
            }
        })?;
    }
    Ok(())
}
