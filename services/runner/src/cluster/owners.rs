//! Partition ownership by lease (ARCHITECTURE.md, "Several runners on a NATS cluster"): the KV
//! bucket `QUENCH_OWNERS` holds a `member.<runner>` heartbeat per live runner and one
//! `partition.<n>` key per owned partition, whose value is the owner and whose revision is its
//! lease. Keys not written for the bucket's `max_age` (the lease) are removed by the server, so
//! a dead or paused runner's partitions come free after one lease. Leases are for liveness
//! only: what keeps a former owner from writing is the journal's fencing ([`super::journal`]).
//!
//! Each runner computes the same assignment from the live members ([`super::partition::owner`])
//! and, once per [`Owners::rebalance`], renews the leases it holds, gives up those another
//! member should have (after it stopped writing them: the caller's part), and claims the free
//! partitions it should have. Members joining or leaving move partitions without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;

/// The bucket of members and leases.
pub const BUCKET: &str = "QUENCH_OWNERS";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create or open the ownership bucket {BUCKET}: {0}")]
    Bucket(String),
    #[error("ownership bucket {BUCKET}: {0}")]
    Kv(String),
    /// The bucket exists with another lease than this runner's: a configuration mistake.
    #[error("ownership bucket {BUCKET}: {0}")]
    Lease(String),
    #[error("cannot read or write the cluster's settings ({SETTINGS}): {0}")]
    Settings(String),
    /// This runner's partition count is not the cluster's: a configuration mistake.
    #[error("{0}")]
    Partitions(String),
}

/// The bucket of the cluster's fixed settings (`partitions`).
pub const SETTINGS: &str = "QUENCH_CLUSTER";

/// Records the cluster's partition count the first time any runner starts, and refuses a
/// runner whose `[cluster] partitions` says otherwise: the count decides which partition every
/// run and key lives in, so it can never change under a cluster's state.
pub async fn settle_partitions(
    jetstream: &jetstream::Context,
    partitions: u32,
    replicas: usize,
) -> Result<(), Error> {
    let kv = jetstream
        .create_key_value(kv::Config {
            bucket: SETTINGS.to_owned(),
            description: "the settings a quench cluster is created with".to_owned(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|error| Error::Settings(error.to_string()))?;
    let ours = Bytes::from(partitions.to_string());
    match kv.create("partitions", ours).await {
        Ok(_) => return Ok(()),
        Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(error) => return Err(Error::Settings(error.to_string())),
    }
    let theirs = kv
        .get("partitions")
        .await
        .map_err(|error| Error::Settings(error.to_string()))?
        .map(|value| String::from_utf8_lossy(&value).into_owned())
        .unwrap_or_default();
    if theirs == partitions.to_string() {
        return Ok(());
    }
    Err(Error::Partitions(format!(
        "the cluster was created with {theirs} partitions and this runner has `[cluster] \
         partitions = {partitions}`: the count is fixed when a cluster is first started, set it \
         to {theirs}"
    )))
}

/// A partition this runner holds, and the revision its lease was last written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub partition: u32,
    pub revision: u64,
}

/// What one rebalancing round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Partitions newly claimed (the caller replays and takes each over in its journal).
    pub claimed: Vec<u32>,
    /// Leases found lost (expired and taken, or overwritten): the caller stops at once.
    pub lost: Vec<u32>,
    /// Partitions given up for another member.
    pub released: Vec<u32>,
}

/// One runner's view of the members and leases.
#[derive(Debug, Clone)]
pub struct Owners {
    kv: kv::Store,
    runner: String,
    /// Where this runner's admin API is reached by the others (its heartbeat's value).
    address: String,
}

impl Owners {
    /// Opens (or creates) the bucket with `lease` as its `max_age` and announces `runner`.
    pub async fn join(
        jetstream: &jetstream::Context,
        runner: &str,
        lease: Duration,
        replicas: usize,
    ) -> Result<Owners, Error> {
        let kv = jetstream
            .create_key_value(kv::Config {
                bucket: BUCKET.to_owned(),
                description: "quench runners and the partitions they own".to_owned(),
                history: 1,
                max_age: lease,
                num_replicas: replicas,
                ..Default::default()
            })
            .await;
        let kv = match kv {
            Ok(kv) => kv,
            Err(error) => return Err(Owners::why_not(jetstream, lease, error.to_string()).await),
        };
        let owners = Owners {
            kv,
            runner: runner.to_owned(),
            address: String::new(),
        };
        owners.heartbeat().await?;
        Ok(owners)
    }

    /// Why the bucket could not be made: most often, it exists with another lease (another
    /// runner's `[cluster] lease`), which the message then names.
    async fn why_not(jetstream: &jetstream::Context, lease: Duration, error: String) -> Error {
        let existing = match jetstream.get_key_value(BUCKET).await {
            Ok(kv) => kv.status().await.ok().map(|status| status.max_age()),
            Err(_) => None,
        };
        match existing {
            Some(theirs) if theirs != lease => Error::Lease(format!(
                "the cluster's runners use a lease of {} and this one `[cluster] lease = \"{}\"`: \
                 give every runner the same lease ({error})",
                humantime::format_duration(theirs),
                humantime::format_duration(lease),
            )),
            _ => Error::Bucket(error),
        }
    }

    pub fn runner(&self) -> &str {
        &self.runner
    }

    /// Announces where this runner's admin API is reached by the other runners (sent with
    /// every heartbeat from now on, the first one at once).
    pub async fn advertise(&mut self, address: &str) -> Result<(), Error> {
        self.address = address.to_owned();
        self.heartbeat().await
    }

    /// Where a member's admin API is reached, as it advertised it; `None` when it is not a
    /// live member or advertised nothing.
    pub async fn address_of(&self, runner: &str) -> Result<Option<String>, Error> {
        let entry = self
            .kv
            .entry(format!("member.{runner}"))
            .await
            .map_err(|error| Error::Kv(error.to_string()))?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put && !entry.value.is_empty())
            .map(|entry| String::from_utf8_lossy(&entry.value).into_owned()))
    }

    /// Says this runner is alive (every lease / 5, say).
    pub async fn heartbeat(&self) -> Result<(), Error> {
        self.kv
            .put(
                format!("member.{}", self.runner),
                Bytes::from(self.address.clone()),
            )
            .await
            .map(drop)
            .map_err(|error| Error::Kv(error.to_string()))
    }

    /// Leaves: the heartbeat goes at once (the partitions are released by the caller).
    pub async fn leave(&self) -> Result<(), Error> {
        self.kv
            .delete(format!("member.{}", self.runner))
            .await
            .map_err(|error| Error::Kv(error.to_string()))
    }

    /// The live members, by id: the member keys the stream holds (its subjects, from the
    /// stream's leader), less those whose last word is a delete (a runner that left).
    ///
    /// Not [`kv::Store::keys`]: that reads through a temporary one-replica consumer, which the
    /// server may place on any peer of the stream, a dead one included (a killed server counts
    /// as alive until it has missed its heartbeats for a while); every balancing round would
    /// then fail about one time in three while a NATS server is down.
    pub async fn members(&self) -> Result<BTreeSet<String>, Error> {
        let kv_error = |error: String| Error::Kv(error);
        let prefix = format!("{}member.", self.kv.prefix);
        let mut subjects = self
            .kv
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|error| kv_error(error.to_string()))?;
        let mut candidates = Vec::new();
        while let Some(subject) = subjects
            .try_next()
            .await
            .map_err(|error| kv_error(error.to_string()))?
        {
            if let Some(runner) = subject.0.strip_prefix(&prefix) {
                candidates.push(runner.to_owned());
            }
        }
        let mut members = BTreeSet::new();
        for runner in candidates {
            let entry = self
                .kv
                .entry(format!("member.{runner}"))
                .await
                .map_err(|error| kv_error(error.to_string()))?;
            if entry.is_some_and(|entry| entry.operation == kv::Operation::Put) {
                members.insert(runner);
            }
        }
        Ok(members)
    }

    /// Who holds `partition`, and at which revision.
    pub async fn owner_of(&self, partition: u32) -> Result<Option<(String, u64)>, Error> {
        let entry = self
            .kv
            .entry(format!("partition.{partition}"))
            .await
            .map_err(|error| Error::Kv(error.to_string()))?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .map(|entry| {
                (
                    String::from_utf8_lossy(&entry.value).into_owned(),
                    entry.revision,
                )
            }))
    }

    /// Claims a free partition; `None` when someone holds it.
    pub async fn claim(&self, partition: u32) -> Result<Option<Lease>, Error> {
        match self
            .kv
            .create(
                format!("partition.{partition}"),
                Bytes::from(self.runner.clone()),
            )
            .await
        {
            Ok(revision) => Ok(Some(Lease {
                partition,
                revision,
            })),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => Err(Error::Kv(error.to_string())),
        }
    }

    /// Renews a lease; false when it was lost (expired and claimed, or written by another).
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool, Error> {
        match self
            .kv
            .update(
                format!("partition.{}", lease.partition),
                Bytes::from(self.runner.clone()),
                lease.revision,
            )
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                Ok(true)
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(error) => Err(Error::Kv(error.to_string())),
        }
    }

    /// Gives a lease up (only if it is still this one).
    pub async fn release(&self, lease: Lease) -> Result<(), Error> {
        self.kv
            .delete_expect_revision(
                format!("partition.{}", lease.partition),
                Some(lease.revision),
            )
            .await
            .map_err(|error| Error::Kv(error.to_string()))
    }

    /// Says this runner is alive and reads the members: the partitions of `partitions` the map
    /// gives this runner now (every runner computes the same map from the same members).
    pub async fn mine(&self, partitions: u32) -> Result<BTreeSet<u32>, Error> {
        self.heartbeat().await?;
        let members = self.members().await?;
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        Ok((0..partitions)
            .filter(|partition| {
                super::partition::owner(*partition, &members) == Some(self.runner.as_str())
            })
            .collect())
    }

    /// One round over `partitions` partitions: renews what `held` holds, releases what another
    /// live member should own, claims what this runner should own and nobody holds. The caller
    /// drops its writer of every partition `lost` or `released` (an append it still has in
    /// flight either lands before the next owner's take-over, which then replays it, or is
    /// fenced) and takes over every partition `claimed`.
    pub async fn rebalance(
        &self,
        partitions: u32,
        held: &mut BTreeMap<u32, Lease>,
    ) -> Result<Changes, Error> {
        let mine = self.mine(partitions).await?;
        let mine = |partition: u32| mine.contains(&partition);
        let mut changes = Changes::default();
        for (partition, lease) in held.iter_mut() {
            if !self.renew(lease).await? {
                changes.lost.push(*partition);
            }
        }
        for partition in &changes.lost {
            held.remove(partition);
        }
        let leaving: Vec<u32> = held.keys().copied().filter(|p| !mine(*p)).collect();
        for partition in leaving {
            if let Some(lease) = held.remove(&partition) {
                self.release(lease).await?;
                changes.released.push(partition);
            }
        }
        for partition in 0..partitions {
            if mine(partition)
                && !held.contains_key(&partition)
                && let Some(lease) = self.claim(partition).await?
            {
                held.insert(partition, lease);
                changes.claimed.push(partition);
            }
        }
        Ok(changes)
    }
}
