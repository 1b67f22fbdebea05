//! A partition's store in cluster mode: a local sled cache of the partition's journal. A runner
//! that takes a partition over appends its `owner` record (fencing every earlier writer), opens
//! its cache with the journal as the store's [`CommitLog`](crate::store::CommitLog), and applies
//! every commit the journal holds after the cache's position; from then on each commit is
//! appended to the journal, fenced, before it is applied to the cache. An append refused
//! because another runner took the partition over fails the store (fail-stop) and cancels
//! [`Owned::fenced`].

use tokio_util::sync::CancellationToken;

use super::journal::{self, AppendError, Journal, JournalLog};
use crate::store::{Store, StoreConfig};

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
    pub runner: &'a str,
    /// The revision of the runner's lease on the partition (for the journal's record).
    pub lease: u64,
    /// The server's `max_payload`: larger commits are appended in parts.
    pub max_payload: usize,
}

/// Takes `partition` over and opens its cache at `config`, brought up to date from the journal.
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
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Store::open_logged(&config, Box::new(log)))
            .await
            .map_err(|error| Error::Replay {
                partition,
                message: error.to_string(),
            })?
            .map_err(store_error)?
    };
    let cached = store.logged_position().map_err(store_error)?;
    let records = opening.journal.replay(partition, cached).await?;
    let commits =
        journal::commits(records).map_err(|message| Error::Replay { partition, message })?;
    let position = store.apply_logged(commits).await.map_err(store_error)?;
    tracing::info!(
        partition,
        cached,
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
