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

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::store::{CommitLog, LoggedCommit, Write};

/// The stream every partition's journal is a subject of.
pub const STREAM: &str = "QUENCH_JOURNAL";
/// `quench.journal.<partition>`.
pub const SUBJECT_PREFIX: &str = "quench.journal";

/// The first message on `subject` at or after sequence `from`, read from the stream's leader
/// (`STREAM.MSG.GET` with `next_by_subj`): no consumer, answered as soon as the stream has a
/// leader, and as of everything it acknowledged.
pub(super) async fn next_from_leader(
    stream: &jetstream::stream::Stream<()>,
    subject: &str,
    from: u64,
) -> Result<jetstream::message::StreamMessage, jetstream::stream::RawMessageError> {
    stream
        .raw_message_builder()
        .sequence(from)
        .next_by_subject(subject.to_owned())
        .send()
        .await
}

/// The JetStream error code of a failed `Nats-Expected-Last-Subject-Sequence` (and of the
/// other expected-sequence headers): "wrong last sequence".
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// How long one attempt of an append waits for the stream to acknowledge it.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long an append whose outcome is unknown (no answer, no stream leader: an election, a
/// lost connection) is tried again before the writer gives up. A leader election takes a few
/// seconds; every attempt carries the same `Nats-Msg-Id` and expected sequence, so at most one
/// lands, and the writer recognizes it.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(30);
/// How long a replay waits for its consumer's next record before it reads the rest from the
/// stream's leader instead.
const CONSUMER_STALL: Duration = Duration::from_secs(2);

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

/// What a journal message is (encoded with `postcard`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A runner took the partition over (with the revision of its lease, for the log).
    Owner { runner: String, lease: u64 },
    /// Part `part` (from 0) of `parts` of one commit: its writes, encoded ([`encode_writes`]),
    /// split so that each message fits the server's `max_payload`. The parts of a commit are
    /// consecutive in the partition's journal (an append between them would have fenced the
    /// writer); a commit whose writer stopped before its last part was never acknowledged and
    /// is never applied ([`commits`]).
    Commit {
        part: u32,
        parts: u32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a journal record encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        postcard::from_bytes(bytes).map_err(|error| error.to_string())
    }
}

/// One write of a commit, as the journal holds it.
#[derive(Serialize, Deserialize)]
struct LoggedWrite<'a> {
    #[serde(with = "serde_bytes", borrow)]
    key: std::borrow::Cow<'a, [u8]>,
    #[serde(with = "serde_bytes", borrow)]
    value: Option<std::borrow::Cow<'a, [u8]>>,
}

/// A commit's writes in the journal's encoding.
pub fn encode_writes(writes: &[Write]) -> Vec<u8> {
    let logged: Vec<LoggedWrite<'_>> = writes
        .iter()
        .map(|(key, value)| LoggedWrite {
            key: key.into(),
            value: value.as_deref().map(Into::into),
        })
        .collect();
    postcard::to_stdvec(&logged).expect("writes encode")
}

pub fn decode_writes(bytes: &[u8]) -> Result<Vec<Write>, String> {
    let logged: Vec<LoggedWrite<'_>> =
        postcard::from_bytes(bytes).map_err(|error| error.to_string())?;
    Ok(logged
        .into_iter()
        .map(|write| {
            (
                write.key.into_owned(),
                write.value.map(|value| value.into_owned()),
            )
        })
        .collect())
}

/// One commit's records: its writes encoded, in parts of at most `part_bytes` (at least one).
pub fn commit_parts(writes: &[Write], part_bytes: usize) -> Result<Vec<Record>, String> {
    let encoded = encode_writes(writes);
    let chunks: Vec<&[u8]> = encoded.chunks(part_bytes.max(1)).collect();
    let parts = u32::try_from(chunks.len()).map_err(|_| "a commit too large".to_owned())?;
    Ok((0..parts)
        .zip(chunks)
        .map(|(part, bytes)| Record::Commit {
            part,
            parts,
            bytes: bytes.to_vec(),
        })
        .collect())
}

/// The commits among a partition's records, in order, each at the position of its last part:
/// parts put together, owner records passed over, and a commit cut short (its parts not all
/// there before the next record) dropped — its writer never acknowledged it.
pub fn commits(records: Vec<(u64, Record)>) -> Result<Vec<LoggedCommit>, String> {
    let mut out = Vec::new();
    let mut partial: Option<(u32, Vec<u8>)> = None;
    for (sequence, record) in records {
        match record {
            Record::Owner { .. } => partial = None,
            // A part past its commit's count belongs to no commit (no writer makes one).
            Record::Commit { part, parts, .. } if part >= parts => partial = None,
            Record::Commit { part, parts, bytes } => {
                let mut buffer = match partial.take() {
                    Some((next, buffer)) if next == part && part > 0 => buffer,
                    _ if part == 0 => Vec::new(),
                    // A part without the ones before it: the rest of a cut-short commit.
                    _ => continue,
                };
                buffer.extend_from_slice(&bytes);
                // `part < parts`, so `part + 1` does not overflow.
                if part + 1 == parts {
                    let writes = decode_writes(&buffer)
                        .map_err(|error| format!("the commit at {sequence}: {error}"))?;
                    out.push(LoggedCommit {
                        position: sequence,
                        writes,
                    });
                } else {
                    partial = Some((part + 1, buffer));
                }
            }
        }
    }
    Ok(out)
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
    /// The revision of the writer's lease: with the partition and the expected sequence, it
    /// names each append (`Nats-Msg-Id`), so a retry of one that landed is recognized.
    lease: u64,
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
        Ok(self
            .last_message(partition)
            .await?
            .map_or(0, |(sequence, _)| sequence))
    }

    /// The partition's last message: its sequence and its `Nats-Msg-Id`.
    async fn last_message(&self, partition: u32) -> Result<Option<(u64, Option<String>)>, Error> {
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
            Ok(message) => {
                let id = message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|id| id.as_str().to_owned());
                Ok(Some((message.sequence, id)))
            }
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(read(error.to_string())),
        }
    }

    /// Every record of the partition after sequence `after`, in order, with its sequence.
    ///
    /// Read through an ordered consumer while it keeps delivering, then — if it stalls for
    /// [`CONSUMER_STALL`] — from where it stopped, message by message from the stream's leader
    /// (`next_by_subj`). The consumer is fast (150,000 records/s against 2,700 on loopback:
    /// `cargo bench -p quench-tests --bench cluster -- replay`), but the server places such a
    /// one-replica consumer on any peer of the stream, a dead one included (a killed server
    /// counts as alive until it has missed its heartbeats for a while), and it then never
    /// answers: about one take-over in three while a NATS server is down. A request to the
    /// leader answers as soon as the stream has one.
    pub async fn replay(&self, partition: u32, after: u64) -> Result<Vec<(u64, Record)>, Error> {
        let last = self.last(partition).await?;
        if last <= after {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if let Err(why) = self
            .replay_by_consumer(partition, after, last, &mut out)
            .await
        {
            tracing::info!(partition, %why, read = out.len(), "reading the rest of the partition's journal from the stream's leader");
        }
        let from = out.last().map_or(after, |(sequence, _)| *sequence);
        out.extend(self.replay_from_leader(partition, from).await?);
        Ok(out)
    }

    /// [`Journal::replay`]'s sure way: every record after `after`, message by message from
    /// the stream's leader, up to the partition's last message as read first.
    pub async fn replay_from_leader(
        &self,
        partition: u32,
        after: u64,
    ) -> Result<Vec<(u64, Record)>, Error> {
        let read = |message: String| Error::Read { partition, message };
        let last = self.last(partition).await?;
        let stream = self
            .jetstream
            .get_stream_no_info(STREAM)
            .await
            .map_err(|error| read(error.to_string()))?;
        let subject = Journal::subject(partition);
        let mut out = Vec::new();
        let mut next = after + 1;
        while next <= last {
            let message = next_from_leader(&stream, &subject, next)
                .await
                .map_err(|error| read(format!("after {}: {error}", next - 1)))?;
            let sequence = message.sequence;
            let record = Record::decode(&message.payload)
                .map_err(|error| read(format!("message {sequence}: {error}")))?;
            out.push((sequence, record));
            next = sequence + 1;
        }
        Ok(out)
    }

    /// [`Journal::replay`]'s fast way: the records after `after` up to `last`, into `out`, as
    /// long as an ordered consumer delivers them; why it stopped short, if it did. A record
    /// that does not decode stops it too: the leader's copy is then read, and judged.
    async fn replay_by_consumer(
        &self,
        partition: u32,
        after: u64,
        last: u64,
        out: &mut Vec<(u64, Record)>,
    ) -> Result<(), String> {
        let stalled = || format!("the consumer delivered nothing for {CONSUMER_STALL:?}");
        let stream = self
            .jetstream
            .get_stream_no_info(STREAM)
            .await
            .map_err(|error| error.to_string())?;
        let consumer = tokio::time::timeout(
            CONSUMER_STALL,
            stream.create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: Journal::subject(partition),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| stalled())?
        .map_err(|error| error.to_string())?;
        let mut messages = tokio::time::timeout(CONSUMER_STALL, consumer.messages())
            .await
            .map_err(|_| stalled())?
            .map_err(|error| error.to_string())?;
        loop {
            let message = tokio::time::timeout(CONSUMER_STALL, messages.next())
                .await
                .map_err(|_| stalled())?
                .ok_or("the consumer ended")?
                .map_err(|error| error.to_string())?;
            let sequence = message
                .info()
                .map_err(|error| error.to_string())?
                .stream_sequence;
            let record = Record::decode(&message.payload)
                .map_err(|error| format!("message {sequence}: {error}"))?;
            out.push((sequence, record));
            if sequence >= last {
                return Ok(());
            }
        }
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
            lease,
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

    /// One attempt at appending `body` after `expected`, named `id` (`Nats-Msg-Id`). The server
    /// checks the expected sequence before duplicates, so an attempt whose earlier twin landed
    /// fails as fenced; [`Writer::append`] then finds the twin by its id.
    async fn publish(
        &self,
        partition: u32,
        expected: u64,
        id: &str,
        body: Bytes,
    ) -> Result<u64, AppendError> {
        let unknown = |message: String| AppendError::Unknown { partition, message };
        let publish = jetstream::message::PublishMessage::build()
            .payload(body)
            .message_id(id)
            .expected_last_subject_sequence(expected);
        // Bounded too: while the connection is broken, sending can wait for ever for the
        // client to take the message (and an append that never returns holds the store's
        // committer, and so the process, however the partition ends).
        let ack = tokio::time::timeout(
            ACK_WAIT,
            self.jetstream
                .send_publish(Journal::subject(partition), publish),
        )
        .await
        .map_err(|_| unknown(format!("could not send in {ACK_WAIT:?}")))?
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
    ///
    /// An attempt whose outcome is unknown is made again, with the same expected sequence and
    /// `Nats-Msg-Id`, for up to [`UNAVAILABLE_FOR`]: an election of the stream's leader does
    /// not stop the writer, and an attempt that landed unacknowledged is not appended twice.
    pub async fn append(&mut self, record: &Record) -> Result<u64, AppendError> {
        let body = Bytes::from(record.encode());
        let id = self.next_id();
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        let sequence = loop {
            match self
                .journal
                .publish(self.partition, self.last, &id, body.clone())
                .await
            {
                Ok(sequence) => break sequence,
                Err(AppendError::Unknown { message, .. })
                    if started.elapsed() + pause < UNAVAILABLE_FOR =>
                {
                    tracing::warn!(
                        partition = self.partition,
                        error = %message,
                        "the journal did not acknowledge an append; trying again"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                // The server checks the expected sequence before it looks for a duplicate: an
                // earlier attempt that landed unacknowledged is the last message, with this id
                // (no other writer's append carries it: the id names this writer's lease).
                Err(fenced @ AppendError::Fenced { .. }) => {
                    match self.journal.last_message(self.partition).await {
                        Ok(Some((sequence, Some(last_id)))) if last_id == id => break sequence,
                        _ => return Err(fenced),
                    }
                }
                Err(error) => return Err(error),
            }
        };
        self.last = sequence;
        Ok(sequence)
    }

    /// The `Nats-Msg-Id` the next append carries: the partition, the writer's lease and the
    /// sequence it expects to follow, so every attempt of one append carries the same.
    pub fn next_id(&self) -> String {
        format!("{}-{}-{}", self.partition, self.lease, self.last)
    }
}

/// A partition's journal as a store's [`CommitLog`]: each commit is appended (in parts when
/// larger than the server's `max_payload`) by this partition's [`Writer`], fenced, before the
/// store applies it. The store's committer calls it on its own thread, which waits here for
/// the stream's acknowledgement.
#[derive(Debug)]
pub struct JournalLog {
    writer: Writer,
    runtime: tokio::runtime::Handle,
    /// Bytes of a commit's encoding per message.
    part_bytes: usize,
    fenced: Option<tokio_util::sync::CancellationToken>,
}

/// Room left in each message for the record's own encoding and the headers.
const PART_OVERHEAD: usize = 4096;

impl JournalLog {
    /// `max_payload` is the server's (`async_nats::Client::server_info`); `fenced` is
    /// cancelled when an append is refused because another runner owns the partition.
    pub fn new(
        writer: Writer,
        runtime: tokio::runtime::Handle,
        max_payload: usize,
        fenced: tokio_util::sync::CancellationToken,
    ) -> JournalLog {
        JournalLog {
            writer,
            runtime,
            part_bytes: max_payload.saturating_sub(PART_OVERHEAD).max(1024),
            fenced: Some(fenced),
        }
    }
}

impl CommitLog for JournalLog {
    fn append(&mut self, writes: &[Write]) -> Result<u64, String> {
        let mut position = self.writer.last();
        for record in commit_parts(writes, self.part_bytes)? {
            match self.runtime.block_on(self.writer.append(&record)) {
                Ok(sequence) => position = sequence,
                Err(error) => {
                    if let AppendError::Fenced { .. } = error {
                        crate::metrics::get().journal_fenced.inc();
                        if let Some(fenced) = self.fenced.take() {
                            fenced.cancel();
                        }
                    }
                    tracing::error!(%error, "a commit was not appended to the partition's journal");
                    return Err(error.to_string());
                }
            }
        }
        Ok(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts_of(writes: &[Write], size: usize) -> Vec<Record> {
        commit_parts(writes, size).expect("few parts")
    }

    /// Parts are put together into their commit at the last part's position; a commit cut
    /// short by a take-over is dropped, and so are the parts of it that follow nothing.
    #[test]
    fn commits_are_put_together_from_their_parts_and_cut_short_ones_dropped() {
        let big: Vec<Write> = (0..50_u8)
            .map(|n| (vec![b'k', n], (n % 5 != 0).then(|| vec![n; 100])))
            .collect();
        let small: Vec<Write> = vec![(b"one".to_vec(), Some(b"1".to_vec()))];
        let big_parts = parts_of(&big, 700);
        assert!(big_parts.len() > 3);
        let mut records = Vec::new();
        let mut sequence = 0;
        let mut push = |record: Record, records: &mut Vec<(u64, Record)>| {
            sequence += 1;
            records.push((sequence, record));
            sequence
        };
        push(
            Record::Owner {
                runner: "a".into(),
                lease: 1,
            },
            &mut records,
        );
        let mut big_at = 0;
        for part in big_parts.clone() {
            big_at = push(part, &mut records);
        }
        // runner a dies after two parts of the next commit; b takes over.
        for part in big_parts.iter().take(2).cloned() {
            push(part, &mut records);
        }
        push(
            Record::Owner {
                runner: "b".into(),
                lease: 2,
            },
            &mut records,
        );
        // A stray later part (a's, if it were not fenced) belongs to no commit.
        push(big_parts[2].clone(), &mut records);
        let small_at = push(parts_of(&small, 700).remove(0), &mut records);
        let commits = commits(records).expect("decodes");
        assert_eq!(
            commits,
            vec![
                LoggedCommit {
                    position: big_at,
                    writes: big
                },
                LoggedCommit {
                    position: small_at,
                    writes: small
                },
            ]
        );
    }

    /// Parts numbered past their commit's count, or at the top of the range, are dropped.
    #[test]
    fn parts_past_their_count_are_dropped() {
        let bytes = encode_writes(&[(b"k".to_vec(), None)]);
        let records = vec![
            (
                1,
                Record::Commit {
                    part: u32::MAX,
                    parts: u32::MAX,
                    bytes: bytes.clone(),
                },
            ),
            (
                2,
                Record::Commit {
                    part: 3,
                    parts: 1,
                    bytes: bytes.clone(),
                },
            ),
            (
                3,
                Record::Commit {
                    part: 0,
                    parts: 1,
                    bytes,
                },
            ),
        ];
        let commits = commits(records).expect("decodes");
        assert_eq!(commits.len(), 1);
        assert_eq!(commits[0].position, 3);
    }

    #[test]
    fn an_empty_commit_is_one_empty_part() {
        let records = vec![(
            1,
            Record::Commit {
                part: 0,
                parts: 1,
                bytes: encode_writes(&[]),
            },
        )];
        assert_eq!(
            commits(records).expect("decodes"),
            vec![LoggedCommit {
                position: 1,
                writes: Vec::new()
            }]
        );
    }

    proptest! {
        /// A journal message is read from the stream: whatever its bytes, decoding returns an
        /// error or a record, never a panic; and every record and set of writes round-trips.
        #[test]
        fn decoding_never_panics_and_encoding_round_trips(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            writes in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))),
                0..20,
            ),
            runner in ".{0,20}",
            lease in any::<u64>(),
        ) {
            let _ = Record::decode(&bytes);
            let _ = decode_writes(&bytes);
            prop_assert_eq!(decode_writes(&encode_writes(&writes)), Ok(writes.clone()));
            let owner = Record::Owner { runner, lease };
            prop_assert_eq!(Record::decode(&owner.encode()), Ok(owner));
            let commit = Record::Commit { part: 0, parts: 1, bytes: encode_writes(&writes) };
            prop_assert_eq!(Record::decode(&commit.encode()), Ok(commit));
        }
    }
}
