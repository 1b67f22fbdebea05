//! A partition's journal on JetStream, with fencing (ARCHITECTURE.md, "Several runners on a
//! NATS cluster"): every change of partition `n` is one message on `quench.journal.<n>` in the
//! stream `QUENCH_JOURNAL`, published with `Nats-Expected-Last-Subject-Sequence` set to the last
//! sequence its writer has applied. The stream's leader checks that against the subject's last
//! message, so of two writers that both believe they own a partition at most one append lands;
//! the other is told it is fenced ([`AppendError::Fenced`]) and must drop the partition.
//!
//! A writer takes a partition over with [`Journal::take_over`]: it reads the partition's last
//! sequence (after replaying, in the full backend) and appends an `owner` record there, so from
//! then on any append by a former owner — paused, partitioned away, slow — is refused, whatever
//! its lease timer believes.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The stream every partition's journal is a subject of.
pub const STREAM: &str = "QUENCH_JOURNAL";
/// `quench.journal.<partition>`.
pub const SUBJECT_PREFIX: &str = "quench.journal";

/// The JetStream error code of a failed `Nats-Expected-Last-Subject-Sequence` (and of the
/// other expected-sequence headers): "wrong last sequence".
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// How long an append waits for the stream to acknowledge it (a leader election takes a few
/// seconds; past this the append is retried by the caller or the partition given up).
const ACK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create or update the journal stream {STREAM}: {0}")]
    Stream(String),
    #[error("cannot read partition {partition}'s journal: {message}")]
    Read { partition: u32, message: String },
}

/// Why an append did not land.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone appended after `expected`: this writer no longer owns the partition.
    #[error(
        "partition {partition}: fenced: its journal moved past sequence {expected} (another runner owns it now)"
    )]
    Fenced { partition: u32, expected: u64 },
    /// The append's outcome is unknown (no answer in time, a connection lost): the writer
    /// reads the journal's last sequence again before doing anything else.
    #[error("partition {partition}: the append was not acknowledged: {message}")]
    Unknown { partition: u32, message: String },
}

/// What a journal message is. The full backend adds its commits; this part knows owners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A runner took the partition over (with the revision of its lease, for the log).
    Owner { runner: String, lease: u64 },
    /// One atomic change of the partition's state (an encoded store batch).
    Commit { batch: serde_json::Value },
}

/// The journal stream on a JetStream context.
#[derive(Debug, Clone)]
pub struct Journal {
    jetstream: jetstream::Context,
}

/// A writer that owns a partition for as long as its appends land.
#[derive(Debug)]
pub struct Writer {
    journal: Journal,
    partition: u32,
    runner: String,
    /// The sequence of the partition's last message, as this writer applied it.
    last: u64,
}

impl Journal {
    /// Creates or updates the journal stream: file storage, `replicas` copies, nothing expires
    /// (snapshots purge what they cover).
    pub async fn ensure(jetstream: jetstream::Context, replicas: usize) -> Result<Journal, Error> {
        jetstream
            .create_or_update_stream(stream::Config {
                name: STREAM.to_owned(),
                subjects: vec![format!("{SUBJECT_PREFIX}.*")],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                description: Some("quench partition journals (cluster mode)".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(|error| Error::Stream(error.to_string()))?;
        Ok(Journal { jetstream })
    }

    fn subject(partition: u32) -> String {
        format!("{SUBJECT_PREFIX}.{partition}")
    }

    /// The sequence of the partition's last message (0 for an empty journal).
    pub async fn last(&self, partition: u32) -> Result<u64, Error> {
        let read = |message: String| Error::Read { partition, message };
        let stream = self
            .jetstream
            .get_stream(STREAM)
            .await
            .map_err(|error| read(error.to_string()))?;
        match stream
            .get_last_raw_message_by_subject(&Journal::subject(partition))
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(0)
            }
            Err(error) => Err(read(error.to_string())),
        }
    }

    /// Every record of the partition after sequence `after`, in order, with its sequence.
    pub async fn replay(&self, partition: u32, after: u64) -> Result<Vec<(u64, Record)>, Error> {
        let read = |message: String| Error::Read { partition, message };
        let last = self.last(partition).await?;
        if last <= after {
            return Ok(Vec::new());
        }
        let stream = self
            .jetstream
            .get_stream(STREAM)
            .await
            .map_err(|error| read(error.to_string()))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: Journal::subject(partition),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|error| read(error.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|error| read(error.to_string()))?;
        let mut out = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(|error| read(error.to_string()))?;
            let sequence = message
                .info()
                .map_err(|error| read(error.to_string()))?
                .stream_sequence;
            let record = serde_json::from_slice(&message.payload)
                .map_err(|error| read(format!("message {sequence}: {error}")))?;
            out.push((sequence, record));
            if sequence >= last {
                break;
            }
        }
        Ok(out)
    }

    /// Takes partition `partition` over as `runner`: appends an `owner` record after the
    /// journal's last message as read now. From then on, appends by any earlier writer are
    /// refused. A concurrent take-over may win instead: then this one is fenced.
    pub async fn take_over(
        &self,
        partition: u32,
        runner: &str,
        lease: u64,
    ) -> Result<Writer, AppendError> {
        let last = self
            .last(partition)
            .await
            .map_err(|error| AppendError::Unknown {
                partition,
                message: error.to_string(),
            })?;
        let mut writer = Writer {
            journal: self.clone(),
            partition,
            runner: runner.to_owned(),
            last,
        };
        writer
            .append(&Record::Owner {
                runner: runner.to_owned(),
                lease,
            })
            .await?;
        Ok(writer)
    }

    async fn publish(
        &self,
        partition: u32,
        expected: u64,
        body: Bytes,
    ) -> Result<u64, AppendError> {
        let unknown = |message: String| AppendError::Unknown { partition, message };
        let publish = jetstream::message::PublishMessage::build()
            .payload(body)
            .expected_last_subject_sequence(expected);
        let ack = self
            .jetstream
            .send_publish(Journal::subject(partition), publish)
            .await
            .map_err(|error| unknown(error.to_string()))?;
        match tokio::time::timeout(ACK_WAIT, ack.into_future()).await {
            Err(_) => Err(unknown(format!("no acknowledgement in {ACK_WAIT:?}"))),
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(error)) => {
                if let async_nats::jetstream::context::PublishErrorKind::WrongLastSequence =
                    error.kind()
                {
                    return Err(AppendError::Fenced {
                        partition,
                        expected,
                    });
                }
                // Older servers and clients name the code only in the text.
                let text = error.to_string();
                if text.contains(&WRONG_LAST_SEQUENCE.to_string())
                    || text.contains("wrong last sequence")
                {
                    return Err(AppendError::Fenced {
                        partition,
                        expected,
                    });
                }
                Err(unknown(text))
            }
        }
    }
}

impl Writer {
    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn runner(&self) -> &str {
        &self.runner
    }

    /// The sequence of the partition's last message this writer appended or took over at.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Appends one record after the last this writer knows of. `Fenced` means another runner
    /// took the partition: the writer must stop (its state is stale), and nothing that waited
    /// on this append may be acknowledged.
    pub async fn append(&mut self, record: &Record) -> Result<u64, AppendError> {
        let body = serde_json::to_vec(record).map_err(|error| AppendError::Unknown {
            partition: self.partition,
            message: error.to_string(),
        })?;
        let sequence = self
            .journal
            .publish(self.partition, self.last, Bytes::from(body))
            .await?;
        self.last = sequence;
        Ok(sequence)
    }
}
