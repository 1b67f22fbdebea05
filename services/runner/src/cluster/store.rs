//! A partition's store in cluster mode: a local sled cache of the partition's journal. A runner
//! that takes a partition over appends its `owner` record (fencing every earlier writer), opens
//! its cache with the journal as the store's [`CommitLog`](crate::store::CommitLog), and applies
//! every commit the journal holds after the cache's position; from then on each commit is
//! appended to the journal, fenced, before it is applied to the cache. An append refused
//! because another runner took the partition over fails the store (fail-stop) and cancels
//! [`Owned::fenced`].
//!
//! Snapshots ([`Owned::snapshot`]) let the journal be purged: a snapshot is the whole cache as
//! of a journal position, and a runner whose cache is behind the newest snapshot (or has none)
//! starts from that snapshot in an emptied cache, then applies the journal after it.

use tokio_util::sync::CancellationToken;

use super::journal::{self, AppendError, Journal, JournalLog};
use super::snapshot::{self, Snapshots};
use crate::store::{LoggedCommit, Store, StoreConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    TakeOver(#[from] AppendError),
    #[error(transparent)]
    Journal(#[from] journal::Error),
    #[error("partition {partition}'s cache: {source}")]
    Store {
        partition: u32,
        #[source]
        source: crate::store::Error,
    },
    #[error("partition {partition}'s journal is unreadable: {message}")]
    Replay { partition: u32, message: String },
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    #[error("cannot empty partition {partition}'s cache at {path} for its snapshot: {source}")]
    Empty {
        partition: u32,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A partition this runner owns, as long as its appends land.
#[derive(Debug)]
pub struct Owned {
    pub partition: u32,
    pub store: Store,
    /// Cancelled once an append was refused: another runner owns the partition now.
    pub fenced: CancellationToken,
    /// The journal position the cache was brought up to at take-over.
    pub position: u64,
}

/// What [`open`] needs besides the partition.
#[derive(Debug, Clone)]
pub struct Opening<'a> {
    pub journal: &'a Journal,
    pub snapshots: &'a Snapshots,
    pub runner: &'a str,
    /// The revision of the runner's lease on the partition (for the journal's record).
    pub lease: u64,
    /// The server's `max_payload`: larger commits are appended in parts.
    pub max_payload: usize,
}

/// Takes `partition` over and opens its cache at `config`, brought up to date from the newest
/// snapshot (when the cache is behind it) and the journal.
pub async fn open(
    opening: &Opening<'_>,
    partition: u32,
    config: &StoreConfig,
) -> Result<Owned, Error> {
    let writer = opening
        .journal
        .take_over(partition, opening.runner, opening.lease)
        .await?;
    let fenced = CancellationToken::new();
    let log = JournalLog::new(
        writer,
        tokio::runtime::Handle::current(),
        opening.max_payload,
        fenced.clone(),
    );
    let store_error = |source| Error::Store { partition, source };
    let blocking = |error: tokio::task::JoinError| Error::Replay {
        partition,
        message: error.to_string(),
    };
    // Where the cache is, read without the journal (nothing is committed).
    let cached = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Store::open(&config)?.logged_position())
            .await
            .map_err(blocking)?
            .map_err(store_error)?
    };
    let snapshot = match opening.snapshots.latest(partition).await? {
        // The journal before the snapshot may be purged: start from it, in an emptied cache.
        Some((at, bytes)) if at > cached => {
            let snapshot = decode_snapshot(partition, at, &bytes)?;
            empty(partition, &config.path).await?;
            Some(snapshot)
        }
        _ => None,
    };
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Store::open_logged(&config, Box::new(log)))
            .await
            .map_err(blocking)?
            .map_err(store_error)?
    };
    let restored = snapshot.as_ref().map(|snapshot| snapshot.position);
    let cached = match snapshot {
        Some(snapshot) => store
            .apply_logged(vec![snapshot])
            .await
            .map_err(store_error)?,
        None => cached,
    };
    let records = opening.journal.replay(partition, cached).await?;
    let commits =
        journal::commits(records).map_err(|message| Error::Replay { partition, message })?;
    let position = store.apply_logged(commits).await.map_err(store_error)?;
    tracing::info!(
        partition,
        cached,
        snapshot = restored,
        position,
        "took the partition over: its cache is up to date with the journal"
    );
    Ok(Owned {
        partition,
        store,
        fenced,
        position,
    })
}

/// A snapshot's bytes as the commit that gives an empty cache the partition as of `at`.
fn decode_snapshot(partition: u32, at: u64, bytes: &[u8]) -> Result<LoggedCommit, Error> {
    let writes = journal::decode_writes(bytes).map_err(|message| Error::Replay {
        partition,
        message: format!("its snapshot as of {at}: {message}"),
    })?;
    Ok(LoggedCommit {
        position: at,
        writes,
    })
}

/// Removes the cache at `path` (closed), for a snapshot to start from.
async fn empty(partition: u32, path: &std::path::Path) -> Result<(), Error> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Error::Empty {
            partition,
            path,
            source: error,
        }),
        _ => Ok(()),
    })
    .await
    .map_err(|error| Error::Replay {
        partition,
        message: error.to_string(),
    })?
}

/// A standing-by runner's cache of a partition it does not own, kept up to date with the
/// journal (hot standby): each [`Follower::catch_up`] applies what the journal holds after the
/// cache's position, so that taking the partition over ([`open`]) replays only what landed
/// since. The cache is open while following; [`Follower::close`] it before taking over.
#[derive(Debug)]
pub struct Follower {
    partition: u32,
    config: StoreConfig,
    store: Option<Store>,
    /// Where the cache is lent to readers after each pass (withdrawn while it starts over).
    lent: Option<crate::store::Borrowed>,
}

impl Follower {
    pub fn new(partition: u32, config: &StoreConfig) -> Follower {
        Follower {
            partition,
            config: config.clone(),
            store: None,
            lent: None,
        }
    }

    /// The partition it follows.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// A follower that lends its cache to readers through `lent` after every pass.
    pub fn lending(mut self, lent: crate::store::Borrowed) -> Follower {
        self.lent = Some(lent);
        self
    }

    /// Brings the cache up to the journal's end as read now; returns its position.
    ///
    /// The owner purges the journal below each snapshot it saves, after saving it, so the
    /// records read here are complete unless a snapshot newer than the cache's position exists
    /// by the time they were read — which the newest snapshot's position, read after them,
    /// tells. Then the cache starts from that snapshot instead, as [`open`] does.
    pub async fn catch_up(
        &mut self,
        journal: &Journal,
        snapshots: &Snapshots,
    ) -> Result<u64, Error> {
        let partition = self.partition;
        let store_error = |source| Error::Store { partition, source };
        let store = match self.store.take() {
            Some(store) => store,
            None => self.open().await?,
        };
        let cached = store.logged_position().map_err(store_error)?;
        let records = journal.replay(partition, cached).await?;
        let (store, records) = match snapshots.newest(partition).await? {
            Some(at) if at > cached => {
                if let Some(lent) = &self.lent {
                    lent.set(None);
                }
                drop(store);
                self.close().await;
                let Some((at, bytes)) = snapshots.latest(partition).await? else {
                    return Ok(cached);
                };
                let snapshot = decode_snapshot(partition, at, &bytes)?;
                empty(partition, &self.config.path).await?;
                let store = self.open().await?;
                store
                    .apply_logged(vec![snapshot])
                    .await
                    .map_err(store_error)?;
                (store, journal.replay(partition, at).await?)
            }
            _ => (store, records),
        };
        let commits =
            journal::commits(records).map_err(|message| Error::Replay { partition, message })?;
        let position = store.apply_logged(commits).await.map_err(store_error)?;
        if let Some(lent) = &self.lent {
            lent.set(Some(store.clone()));
        }
        self.store = Some(store);
        Ok(position)
    }

    async fn open(&self) -> Result<Store, Error> {
        let partition = self.partition;
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || Store::open(&config))
            .await
            .map_err(|error| Error::Replay {
                partition,
                message: error.to_string(),
            })?
            .map_err(|source| Error::Store { partition, source })
    }

    /// Closes the cache (its files released), for [`open`] to take the partition over.
    pub async fn close(&mut self) {
        if let Some(lent) = &self.lent {
            lent.set(None);
        }
        if let Some(store) = self.store.take() {
            let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        }
    }
}

impl Owned {
    /// Saves the whole cache as the partition's snapshot as of its journal position, which lets
    /// the journal below it be purged (see [`Snapshots::save`]). Commits wait while the cache is
    /// read. Returns the position, or `None` when nothing was committed yet.
    pub async fn snapshot(&self, snapshots: &Snapshots) -> Result<Option<u64>, Error> {
        let store_error = |source| Error::Store {
            partition: self.partition,
            source,
        };
        let exported = self.store.export_logged().await.map_err(store_error)?;
        if exported.position == 0 {
            return Ok(None);
        }
        let bytes = journal::encode_writes(&exported.writes);
        snapshots
            .save(self.partition, exported.position, &bytes)
            .await?;
        Ok(Some(exported.position))
    }
}
