//! Publishing to JetStream: every message carries a `Nats-Msg-Id` (JetStream drops a re-send
//! within the stream's duplicate window) and counts as published only once the stream has
//! acknowledged it. The gateway creates no streams — the runner does, and the gateway's NATS
//! user may publish only `quench.findings.>` and `quench.decisions.>`.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use quench_proto::subject;

/// Publishes to JetStream and waits for the stream's acknowledgement.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    jetstream: jetstream::Context,
}

/// A message the stream acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Published {
    /// The stream had this `Nats-Msg-Id` already; nothing new was stored.
    pub(crate) duplicate: bool,
}

/// A message the stream did not acknowledge (in time). The text names the subject, never the
/// payload.
#[derive(Debug, thiserror::Error)]
#[error("publishing to {subject} failed: {reason}")]
pub(crate) struct PublishError {
    subject: String,
    reason: String,
}

impl Publisher {
    pub(crate) fn new(client: async_nats::Client) -> Publisher {
        Publisher {
            jetstream: jetstream::new(client),
        }
    }

    /// Publishes `payload` on `subject` with `Nats-Msg-Id: msg_id`; gives up after `within`.
    pub(crate) async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        payload: Vec<u8>,
        within: Duration,
    ) -> Result<Published, PublishError> {
        let failed = |reason: String| PublishError {
            subject: subject.clone(),
            reason,
        };
        let mut headers = HeaderMap::new();
        headers.insert(subject::HEADER_MSG_ID, msg_id);
        let send = async {
            self.jetstream
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .map_err(|error| failed(error.to_string()))?
                .await
                .map_err(|error| failed(error.to_string()))
        };
        let ack = tokio::time::timeout(within, send)
            .await
            .map_err(|_| failed(format!("no acknowledgement within {within:?}")))??;
        Ok(Published {
            duplicate: ack.duplicate,
        })
    }
}
