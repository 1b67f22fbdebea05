//! A partition's snapshots in the JetStream object store (ARCHITECTURE.md, "Several runners on a
//! NATS cluster"): the owner saves the partition's state as of journal sequence `s` as the object
//! `partition-<n>` of the bucket `QUENCH_SNAPSHOTS` (with `s` in its metadata), then purges the
//! partition's journal below `s` — keeping the message at `s`, so the next append's expected
//! sequence still has its base. A new owner rebuilds the partition from the newest snapshot and
//! the journal after `s` ([`Snapshots::restore`]).

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncReadExt;

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

fn name(partition: u32) -> String {
    format!("partition-{partition}")
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
    /// then purges the journal below it. Saved first, purged after: a crash between the two
    /// leaves a journal longer than it needs to be, never a gap.
    pub async fn save(&self, partition: u32, sequence: u64, state: &[u8]) -> Result<(), Error> {
        let failed = |message: String| Error::Snapshot { partition, message };
        let meta = object_store::ObjectMetadata {
            name: name(partition),
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
        Ok(())
    }

    /// The newest snapshot of `partition`: the sequence it is as of, and its bytes.
    pub async fn latest(&self, partition: u32) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let failed = |message: String| Error::Snapshot { partition, message };
        let info = match self.store.info(name(partition)).await {
            Ok(info) if !info.deleted => info,
            Ok(_) => return Ok(None),
            Err(error) if error.kind() == object_store::InfoErrorKind::NotFound => {
                return Ok(None);
            }
            Err(error) => return Err(failed(error.to_string())),
        };
        let sequence = info
            .metadata
            .get(SEQUENCE)
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| failed(format!("no `{SEQUENCE}` in its metadata")))?;
        let mut object = self
            .store
            .get(name(partition))
            .await
            .map_err(|error| failed(error.to_string()))?;
        let mut bytes = Vec::with_capacity(info.size);
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| failed(error.to_string()))?;
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
