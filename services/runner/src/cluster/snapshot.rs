//! A partition's snapshots in the JetStream object store (ARCHITECTURE.md, "Several runners on a
//! NATS cluster"): the owner saves the partition's state as of journal sequence `s` as the object
//! `partition-<n>-<s>` of the bucket `QUENCH_SNAPSHOTS` (with `s` in its metadata too), then
//! purges the partition's journal below `s` — keeping the message at `s`, so the next append's
//! expected sequence still has its base — and removes the partition's older snapshots. A new owner rebuilds the partition from the newest snapshot and
//! the journal after `s` ([`Snapshots::restore`]).

use async_nats::jetstream::{self, object_store};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use futures::StreamExt;

use super::journal::{Journal, Record};

/// The bucket of partition snapshots.
pub const BUCKET: &str = "QUENCH_SNAPSHOTS";

/// The metadata key holding the journal sequence a snapshot is as of.
const SEQUENCE: &str = "journal-sequence";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot bucket {BUCKET}: {0}")]
    Bucket(String),
    #[error("partition {partition}'s snapshot: {message}")]
    Snapshot { partition: u32, message: String },
    #[error(transparent)]
    Journal(#[from] super::journal::Error),
}

/// A partition's state as rebuilt: the newest snapshot's bytes (if any) and the sequence it is
/// as of, then every journal record after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub snapshot: Option<(u64, Vec<u8>)>,
    pub records: Vec<(u64, Record)>,
}

/// The snapshot bucket.
#[derive(Clone)]
pub struct Snapshots {
    store: object_store::ObjectStore,
    jetstream: jetstream::Context,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshots")
    }
}

/// A snapshot's object name: its partition and the journal sequence it is as of. Each
/// snapshot is an object of its own, never overwritten: a runner that lost the partition
/// without knowing yet (paused) may still save one, as of an older sequence than the new
/// owner's, and the newest one must win whatever the order the two land in.
fn name(partition: u32, sequence: u64) -> String {
    format!("{}{sequence:020}", prefix(partition))
}

fn prefix(partition: u32) -> String {
    format!("partition-{partition}-")
}

impl Snapshots {
    /// Opens (or creates) the bucket with `replicas` copies.
    pub async fn open(jetstream: jetstream::Context, replicas: usize) -> Result<Snapshots, Error> {
        let store = match jetstream.get_object_store(BUCKET).await {
            Ok(store) => store,
            Err(_) => jetstream
                .create_object_store(object_store::Config {
                    bucket: BUCKET.to_owned(),
                    description: Some("quench partition snapshots (cluster mode)".to_owned()),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|error| Error::Bucket(error.to_string()))?,
        };
        Ok(Snapshots { store, jetstream })
    }

    /// Saves `state` as partition `partition`'s snapshot as of journal sequence `sequence`,
    /// then purges the journal below it, then removes the partition's older snapshots. In
    /// that order: a crash between two steps leaves a journal or a bucket larger than it needs
    /// to be, never a gap. A stale owner's save (as of a sequence below the newest snapshot)
    /// purges nothing the newest one needs, and is never the newest.
    pub async fn save(&self, partition: u32, sequence: u64, state: &[u8]) -> Result<(), Error> {
        let failed = |message: String| Error::Snapshot { partition, message };
        let meta = object_store::ObjectMetadata {
            name: name(partition, sequence),
            metadata: [(SEQUENCE.to_owned(), sequence.to_string())].into(),
            ..Default::default()
        };
        let mut reader = state;
        self.store
            .put(meta, &mut reader)
            .await
            .map_err(|error| failed(error.to_string()))?;
        if sequence > 0 {
            self.jetstream
                .get_stream(super::journal::STREAM)
                .await
                .map_err(|error| failed(error.to_string()))?
                .purge()
                .filter(format!("{}.{partition}", super::journal::SUBJECT_PREFIX))
                .sequence(sequence)
                .await
                .map_err(|error| {
                    failed(format!("purging the journal below {sequence}: {error}"))
                })?;
        }
        for (older, name) in self.saved(partition).await? {
            if older < sequence {
                self.store
                    .delete(&name)
                    .await
                    .map_err(|error| failed(format!("removing {name}: {error}")))?;
            }
        }
        Ok(())
    }

    /// The partition's snapshots: the sequence each is as of, and its name. Read without a
    /// consumer (the stream's subjects, then each object's info): see [`read_object`].
    async fn saved(&self, partition: u32) -> Result<Vec<(u64, String)>, Error> {
        Ok(self
            .saved_infos(partition)
            .await?
            .into_iter()
            .map(|(sequence, info)| (sequence, info.name))
            .collect())
    }

    async fn saved_infos(
        &self,
        partition: u32,
    ) -> Result<Vec<(u64, object_store::ObjectInfo)>, Error> {
        let failed = |message: String| Error::Snapshot { partition, message };
        let prefix = prefix(partition);
        let meta = format!("$O.{BUCKET}.M.");
        let stream = self
            .jetstream
            .get_stream_no_info(format!("OBJ_{BUCKET}"))
            .await
            .map_err(|error| failed(error.to_string()))?;
        let mut subjects = stream
            .info_with_subjects(format!("{meta}>"))
            .await
            .map_err(|error| failed(error.to_string()))?;
        let mut names = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|error| failed(error.to_string()))?;
            // The subject's last token is the object's name, base64url-encoded.
            let Some(name) = subject
                .strip_prefix(&meta)
                .and_then(|encoded| URL_SAFE.decode(encoded).ok())
                .and_then(|name| String::from_utf8(name).ok())
            else {
                continue;
            };
            if let Some(sequence) = name
                .strip_prefix(&prefix)
                .and_then(|sequence| sequence.parse::<u64>().ok())
            {
                names.push((sequence, name));
            }
        }
        // Each object's info, from the leader: a follower behind it could name an older
        // snapshot as the newest, one whose journal after it is already purged.
        let mut out = Vec::new();
        for (sequence, name) in names {
            let subject = format!("{meta}{}", URL_SAFE.encode(&name));
            let message = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => message,
                Err(error)
                    if error.kind()
                        == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    continue;
                }
                Err(error) => return Err(failed(format!("{name}: {error}"))),
            };
            let info: object_store::ObjectInfo = serde_json::from_slice(&message.payload)
                .map_err(|error| failed(format!("{name}'s info: {error}")))?;
            if !info.deleted {
                out.push((sequence, info));
            }
        }
        Ok(out)
    }

    /// The sequence the newest snapshot of `partition` is as of (its bytes are not read).
    pub async fn newest(&self, partition: u32) -> Result<Option<u64>, Error> {
        Ok(self
            .saved(partition)
            .await?
            .into_iter()
            .map(|(sequence, _)| sequence)
            .max())
    }

    /// The newest snapshot of `partition`: the sequence it is as of, and its bytes.
    pub async fn latest(&self, partition: u32) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let failed = |message: String| Error::Snapshot { partition, message };
        let Some((sequence, info)) = self
            .saved_infos(partition)
            .await?
            .into_iter()
            .max_by_key(|(sequence, _)| *sequence)
        else {
            return Ok(None);
        };
        let bytes = read_object(&self.jetstream, &info)
            .await
            .map_err(|message| failed(format!("{}: {message}", info.name)))?;
        Ok(Some((sequence, bytes)))
    }

    /// What a new owner rebuilds partition `partition` from: the newest snapshot and the journal
    /// after it.
    pub async fn restore(&self, journal: &Journal, partition: u32) -> Result<Restored, Error> {
        let snapshot = self.latest(partition).await?;
        let after = snapshot.as_ref().map_or(0, |(sequence, _)| *sequence);
        let records = journal.replay(partition, after).await?;
        Ok(Restored { snapshot, records })
    }
}

/// An object's bytes, read chunk by chunk from the stream's leader and checked against the
/// object's size and SHA-256 digest.
///
/// Not through [`object_store::ObjectStore::get`]: that reads through a temporary one-replica
/// consumer, which the server may place on any peer of the stream, a dead one included (it
/// counts a killed server as alive until it has missed its heartbeats for a while), and then
/// the read hangs until it times out — about one take-over in three while a NATS server is
/// down. A direct request to the stream answers as soon as the stream has a leader.
async fn read_object(
    jetstream: &jetstream::Context,
    info: &object_store::ObjectInfo,
) -> Result<Vec<u8>, String> {
    let stream = jetstream
        .get_stream_no_info(format!("OBJ_{BUCKET}"))
        .await
        .map_err(|error| error.to_string())?;
    let subject = format!("$O.{BUCKET}.C.{}", info.nuid);
    // The size is the object's own word: reserved up to 64 MiB, grown past it as read.
    let mut bytes = Vec::with_capacity(info.size.min(64 << 20));
    let mut next = 1;
    for chunk in 0..info.chunks {
        let message = super::journal::next_from_leader(&stream, &subject, next)
            .await
            .map_err(|error| format!("chunk {chunk} of {}: {error}", info.chunks))?;
        bytes.extend_from_slice(&message.payload);
        next = message.sequence + 1;
    }
    if bytes.len() != info.size {
        return Err(format!(
            "{} bytes read where the object has {}",
            bytes.len(),
            info.size
        ));
    }
    let digest = format!(
        "SHA-256={}",
        URL_SAFE.encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
    );
    if info.digest.as_deref() != Some(digest.as_str()) {
        return Err("the bytes read do not match the object's digest".to_owned());
    }
    Ok(bytes)
}
