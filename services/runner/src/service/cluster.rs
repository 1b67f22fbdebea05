//! `[cluster]` in `quench serve` (ARCHITECTURE.md, "Several runners on a NATS cluster"): the
//! runner joins the members, stands by until it holds the partition's lease (answering
//! `/healthz`, and `/readyz` with 503, so an orchestrator keeps it alive and sends it no
//! traffic), takes the partition over in its journal (fencing the former owner) and serves from
//! a store that is a cache of that journal. While it serves it renews the lease, snapshots the
//! state on schedule, and stops the moment the partition is lost: lease lost or not renewed for
//! a whole lease, or an append fenced. On a clean stop it gives the lease up after its last
//! commit, so a standing-by runner takes over at once instead of after a lease.
//!
//! This version runs one partition (`[cluster] partitions = 1`): one runner active, the others
//! standing by.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::cluster::journal::Journal;
use crate::cluster::owners::{Error as OwnersError, Lease, Owners};
use crate::cluster::snapshot::Snapshots;
use crate::cluster::store::{Follower, Opening, Owned};
use crate::config::Config;
use crate::store::{Store, StoreConfig};

/// The partition this version runs.
const PARTITION: u32 = 0;
/// The oldest server cluster mode runs on: `sync_interval: always` (2.10) is what makes an
/// acknowledged journal append durable on a majority.
const MIN_SERVER: (u64, u64) = (2, 10);
/// How long joining the cluster, or a take-over, is tried again while the journal, the
/// snapshots or the ownership bucket do not answer.
const TAKE_OVER_FOR: Duration = Duration::from_secs(60);
/// How often a standing-by runner applies the journal to its cache.
const FOLLOW_EVERY: Duration = Duration::from_secs(5);
/// How often the owner looks whether a snapshot is due.
const SNAPSHOT_CHECK: Duration = Duration::from_secs(15);
/// A snapshot at least this often while the journal grows, however few the appends.
const SNAPSHOT_AT_LEAST: Duration = Duration::from_secs(600);

/// The partition, held: its store, and what keeps it.
pub(crate) struct Active {
    pub(crate) store: Store,
    /// Cancelled once this runner no longer holds the partition (lease lost, or an append
    /// fenced): the service stops.
    pub(crate) lost: CancellationToken,
    /// Cancelled by [`Active::hand_over`]: the lease keeper gives the lease up and ends.
    hand_over: CancellationToken,
    keeper: JoinHandle<()>,
    snapshotter: JoinHandle<()>,
    owners: Owners,
}

impl Active {
    /// After the service's last commit: gives the lease up (unless it is lost already), so a
    /// standing-by runner takes the partition over now rather than after a lease.
    pub(crate) async fn hand_over(self) {
        let owners = self.owners.clone();
        self.release().await;
        let _ = owners.leave().await;
    }

    /// Gives the partition's lease up (unless it is lost already), after its last commit.
    pub(super) async fn release(self) {
        self.snapshotter.abort();
        self.hand_over.cancel();
        let _ = self.keeper.await;
    }
}

/// This runner's name: `[cluster] runner`, else the host name.
fn runner_name(config: &Config) -> Result<String, Error> {
    if !config.cluster.runner.is_empty() {
        return Ok(config.cluster.runner.clone());
    }
    // The kernel's host name (what gethostname(2) returns); a pod's name in Kubernetes.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    let host = host.split('.').next().unwrap_or_default().to_owned();
    if quench_common::config::is_dns_label(&host) {
        Ok(host)
    } else {
        Err(Error::Cluster(format!(
            "the host name {host:?} is not a DNS label: set `[cluster] runner` to this runner's \
             name, unique in the cluster (e.g. quench-0)"
        )))
    }
}

/// Where the other runners reach this runner's admin API: `[cluster] advertise`, else
/// `http://` and `api.listen`, with the host name in place of an unspecified address.
fn advertised(config: &Config) -> String {
    if !config.cluster.advertise.is_empty() {
        return config.cluster.advertise.trim_end_matches('/').to_owned();
    }
    let listen = config.api_listen();
    if listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("http://{}:{}", host.trim(), listen.port())
    } else {
        format!("http://{listen}")
    }
}

/// `[cluster] peers`, parsed (checked at load).
pub(super) fn peers(config: &Config) -> Vec<quench_common::http::AllowHost> {
    config
        .cluster
        .peers
        .iter()
        .filter_map(|peer| quench_common::http::AllowHost::parse(peer).ok())
        .collect()
}

/// Whether a runner's advertised address is one `peers` allows: an http(s) URL without
/// credentials, query or fragment, whose host and port an entry names.
pub(super) fn admitted(peers: &[quench_common::http::AllowHost], address: &str) -> bool {
    let Ok(url) = url::Url::parse(address) else {
        return false;
    };
    matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && peers.iter().any(|peer| peer.admits(&url))
}

/// Refuses a server older than [`MIN_SERVER`], saying what is needed.
fn check_server(client: &async_nats::Client) -> Result<(), Error> {
    let info = client.server_info();
    if new_enough(&info.version) {
        return Ok(());
    }
    Err(Error::Cluster(format!(
        "`[cluster]` needs nats-server {}.{} or newer (its `sync_interval: always` keeps an \
         acknowledged journal append on disk); the server at {} is {}",
        MIN_SERVER.0, MIN_SERVER.1, info.host, info.version,
    )))
}

/// Whether a server version (`2.10.4`, `2.11.0-RC.1`) is at least [`MIN_SERVER`].
fn new_enough(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|part| part.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= MIN_SERVER
}

/// A runner that joined the cluster: its name, the journal, the snapshots and the ownership
/// bucket.
#[derive(Clone)]
pub(super) struct Joined {
    pub(super) runner: String,
    pub(super) journal: Journal,
    pub(super) snapshots: Snapshots,
    pub(super) owners: Owners,
    pub(super) lease_for: Duration,
}

/// Joins the cluster: checks the server, then opens the journal, the snapshots and the
/// ownership bucket, asking again for a while when they do not answer (a stream electing a
/// leader after a server was lost). `None` when `shutdown` came first.
pub(super) async fn join(
    config: &Config,
    client: &async_nats::Client,
    jetstream: &async_nats::jetstream::Context,
    shutdown: &CancellationToken,
) -> Result<Option<Joined>, Error> {
    check_server(client)?;
    let runner = runner_name(config)?;
    let address = advertised(config);
    if config.cluster.partitions > 1 && !admitted(&peers(config), &address) {
        return Err(Error::Cluster(format!(
            "this runner advertises {address}, which `[cluster] peers` ({}) does not allow: \
             the other runners would not forward to it. Add its host and port to `peers`, or \
             set `[cluster] advertise`",
            config.cluster.peers.join(", ")
        )));
    }
    let lease_for = config.cluster.lease();
    let replicas = config.nats.replicas;
    let cluster = |error: &dyn std::fmt::Display| Error::Cluster(error.to_string());
    let started = Instant::now();
    loop {
        // Err((error, whether to ask again)).
        let joined = async {
            let journal = Journal::ensure(jetstream.clone(), replicas)
                .await
                .map_err(|error| (cluster(&error), true))?;
            let snapshots = Snapshots::open(jetstream.clone(), replicas)
                .await
                .map_err(|error| (cluster(&error), true))?;
            // Another lease or partition count than the cluster's: a configuration mistake,
            // not an outage.
            let mistake = |error: OwnersError| {
                let again = !matches!(error, OwnersError::Lease(_) | OwnersError::Partitions(_));
                (cluster(&error), again)
            };
            crate::cluster::owners::settle_partitions(
                jetstream,
                config.cluster.partitions,
                replicas,
            )
            .await
            .map_err(mistake)?;
            let mut owners = Owners::join(jetstream, &runner, lease_for, replicas)
                .await
                .map_err(mistake)?;
            owners.advertise(&address).await.map_err(mistake)?;
            Ok((journal, snapshots, owners))
        }
        .await;
        match joined {
            Ok((journal, snapshots, owners)) => {
                return Ok(Some(Joined {
                    runner,
                    journal,
                    snapshots,
                    owners,
                    lease_for,
                }));
            }
            Err((error, true)) if started.elapsed() < TAKE_OVER_FOR => {
                tracing::warn!(%error, "cannot join the cluster yet; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Joins the cluster, stands by until this runner holds the partition, and takes it over.
/// `None` when `shutdown` came first.
pub(crate) async fn take_over(
    config: &Config,
    client: &async_nats::Client,
    jetstream: &async_nats::jetstream::Context,
    store_config: &StoreConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Active>, Error> {
    // How far this runner's cache follows the journal while it stands by (`/healthz` says).
    let followed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let standby = StandBy::start(config, followed.clone()).await?;
    let joined = match join(config, client, jetstream, shutdown).await {
        Ok(Some(joined)) => joined,
        other => {
            standby.stop().await;
            return other.map(|_| None);
        }
    };
    // Hot standby: the cache follows the journal while this runner waits for the lease.
    let stop_following = CancellationToken::new();
    let following = tokio::spawn(follow(
        Follower::new(PARTITION, store_config),
        joined.journal.clone(),
        joined.snapshots.clone(),
        followed,
        stop_following.clone(),
    ));
    let claimed = claim(&joined.owners, joined.lease_for, shutdown).await;
    // A pass under way finishes first (its cache must be closed before it is opened again).
    stop_following.cancel();
    if let Ok(mut follower) = following.await {
        follower.close().await;
    }
    standby.stop().await;
    let Some(lease) = claimed else {
        let _ = joined.owners.leave().await;
        return Ok(None);
    };
    hold(config, client, &joined, lease, store_config, shutdown)
        .await
        .map(Some)
}

/// Takes over the partition whose lease this runner just claimed: keeps the lease from now
/// on, brings the partition's cache up to date with its journal (asking again for a while
/// when the journal does not answer), and watches for the partition being lost.
pub(super) async fn hold(
    config: &Config,
    client: &async_nats::Client,
    joined: &Joined,
    lease: Lease,
    store_config: &StoreConfig,
    shutdown: &CancellationToken,
) -> Result<Active, Error> {
    let partition = lease.partition;
    tracing::info!(
        runner = joined.runner,
        partition,
        lease = lease.revision,
        "holds the partition's lease: taking it over"
    );
    let lost = CancellationToken::new();
    let hand_over = CancellationToken::new();
    // The lease is kept from now on: replaying a long journal must not let it lapse.
    let keeper = tokio::spawn(keep(
        joined.owners.clone(),
        lease,
        joined.lease_for,
        lost.clone(),
        hand_over.clone(),
    ));
    let opening = Opening {
        journal: &joined.journal,
        snapshots: &joined.snapshots,
        runner: &joined.runner,
        lease: lease.revision,
        max_payload: client.server_info().max_payload,
    };
    // A journal or snapshot bucket that does not answer (its stream electing a leader) is
    // asked again for a while, the lease kept meanwhile.
    let started = Instant::now();
    let owned = loop {
        match crate::cluster::store::open(&opening, partition, store_config).await {
            Ok(owned) => break Arc::new(owned),
            Err(error)
                if transient(&error)
                    && started.elapsed() < TAKE_OVER_FOR
                    && !lost.is_cancelled()
                    && !shutdown.is_cancelled() =>
            {
                tracing::warn!(
                    partition,
                    %error,
                    "cannot take the partition over yet; trying again"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => {
                hand_over.cancel();
                let _ = keeper.await;
                return Err(Error::Cluster(error.to_string()));
            }
        }
    };
    // A fenced append means another runner took over: this one no longer holds anything.
    tokio::spawn({
        let (fenced, lost) = (owned.fenced.clone(), lost.clone());
        async move {
            tokio::select! {
                () = fenced.cancelled() => lost.cancel(),
                () = lost.cancelled() => {}
            }
        }
    });
    let snapshotter = tokio::spawn(snapshot_on_schedule(
        owned.clone(),
        joined.snapshots.clone(),
        config.cluster.snapshot_every,
        lost.clone(),
    ));
    Ok(Active {
        store: owned.store.clone(),
        lost,
        hand_over,
        keeper,
        snapshotter,
        owners: joined.owners.clone(),
    })
}

/// Whether taking over may succeed if tried again: the journal or the snapshots could not be
/// read or the owner record not appended (no answer), as opposed to a take-over fenced by
/// another runner's, or a cache or journal that cannot be used.
fn transient(error: &crate::cluster::store::Error) -> bool {
    use crate::cluster::journal::AppendError;
    use crate::cluster::store::Error;
    matches!(
        error,
        Error::Journal(_) | Error::Snapshot(_) | Error::TakeOver(AppendError::Unknown { .. })
    )
}

/// A standing-by runner following the partition's journal (hot standby): every
/// [`FOLLOW_EVERY`] its cache takes what landed since, so a take-over replays only the rest.
/// Stops between two passes once `stop` is cancelled, and returns the follower to be closed.
pub(super) async fn follow(
    mut follower: Follower,
    journal: Journal,
    snapshots: Snapshots,
    followed: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) -> Follower {
    let partition = follower.partition();
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return follower,
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        match follower.catch_up(&journal, &snapshots).await {
            Ok(position) => {
                failing = false;
                followed.store(position, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(partition, position, "followed the journal");
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(
                    partition,
                    %error,
                    "standing by: cannot follow the journal; trying again"
                );
            }
            Err(_) => {}
        }
    }
}

/// Claims the partition every fifth of a lease until it is free and this runner gets it.
async fn claim(
    owners: &Owners,
    lease_for: Duration,
    shutdown: &CancellationToken,
) -> Option<Lease> {
    /// The lease, or who holds the partition.
    async fn attempt(owners: &Owners) -> Result<Result<Lease, Option<String>>, OwnersError> {
        owners.heartbeat().await?;
        Ok(match owners.claim(PARTITION).await? {
            Some(lease) => Ok(lease),
            None => Err(owners.owner_of(PARTITION).await?.map(|(runner, _)| runner)),
        })
    }
    let mut said: Option<String> = None;
    loop {
        match attempt(owners).await {
            Ok(Ok(lease)) => return Some(lease),
            Ok(Err(holder)) => {
                let holder = holder.unwrap_or_else(|| "nobody".to_owned());
                if said.as_deref() != Some(holder.as_str()) {
                    tracing::info!(
                        partition = PARTITION,
                        owner = %holder,
                        "standing by: another runner holds the partition"
                    );
                    said = Some(holder);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "standing by: cannot reach the ownership bucket; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(lease_for / 5) => {}
        }
    }
}

/// Renews the lease every fifth of it. Cancels `lost` when it was taken (expired and claimed)
/// or could not be renewed for a whole lease (the server removes it then, and another runner
/// may claim it); gives it up on `hand_over`.
async fn keep(
    owners: Owners,
    mut lease: Lease,
    lease_for: Duration,
    lost: CancellationToken,
    hand_over: CancellationToken,
) {
    let partition = lease.partition;
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            () = hand_over.cancelled() => break,
            () = lost.cancelled() => return,
            () = tokio::time::sleep(lease_for / 5) => {}
        }
        // A lease runs from the server's write, so from before the attempt; and an attempt
        // gets no longer than the lease has left (a server that does not answer must not keep
        // this runner believing it holds a lease that has expired).
        let attempt = Instant::now();
        let left = lease_for
            .saturating_sub(renewed.elapsed())
            .max(Duration::from_millis(100));
        let renewal = tokio::time::timeout(left, async {
            let _ = owners.heartbeat().await;
            owners.renew(&mut lease).await
        })
        .await
        .unwrap_or_else(|_| Err(OwnersError::Kv(format!("no answer in {left:?}"))));
        match renewal {
            Ok(true) => renewed = attempt,
            Ok(false) => {
                tracing::error!(
                    partition,
                    "the partition's lease was lost (another runner holds it): stopping"
                );
                lost.cancel();
                return;
            }
            Err(error) if renewed.elapsed() >= lease_for => {
                tracing::error!(
                    partition,
                    %error,
                    "the partition's lease could not be renewed for a whole lease: stopping"
                );
                lost.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew the partition's lease yet; retrying");
            }
        }
    }
    if !lost.is_cancelled() {
        match owners.release(lease).await {
            Ok(()) => tracing::info!(partition, "gave the partition's lease up"),
            Err(error) => {
                tracing::warn!(%error, "cannot give the lease up: it expires after a lease")
            }
        }
    }
}

/// Saves a snapshot once `every` appends landed since the last one, or every
/// [`SNAPSHOT_AT_LEAST`] while any did.
async fn snapshot_on_schedule(
    owned: Arc<Owned>,
    snapshots: Snapshots,
    every: u64,
    lost: CancellationToken,
) {
    let mut last = owned.position;
    let mut at = Instant::now();
    loop {
        tokio::select! {
            () = lost.cancelled() => return,
            () = tokio::time::sleep(SNAPSHOT_CHECK) => {}
        }
        let position = match owned.store.logged_position() {
            Ok(position) => position,
            Err(error) => {
                tracing::warn!(%error, "cannot read the journal position");
                continue;
            }
        };
        let due = position >= last.saturating_add(every)
            || (position > last && at.elapsed() >= SNAPSHOT_AT_LEAST);
        if !due {
            continue;
        }
        match owned.snapshot(&snapshots).await {
            Ok(saved) => {
                tracing::info!(
                    partition = owned.partition,
                    position = saved,
                    "saved the partition's snapshot"
                );
                last = saved.unwrap_or(position);
                at = Instant::now();
                crate::metrics::get().cluster_snapshots.inc();
            }
            Err(error) => tracing::warn!(%error, "cannot save the partition's snapshot; retrying"),
        }
    }
}

/// The HTTP a standing-by runner answers on `api.listen`: alive, not ready.
struct StandBy {
    stop: CancellationToken,
    server: JoinHandle<()>,
}

impl StandBy {
    /// `followed`: the journal position this runner's cache has reached (hot standby).
    async fn start(
        config: &Config,
        followed: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<StandBy, Error> {
        let listener = super::listen(config).await?;
        let router = axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(move || async move {
                    let position = followed.load(std::sync::atomic::Ordering::Relaxed);
                    Json(json!({"status": "standby", "journal_position": position}))
                }),
            )
            .route(
                "/readyz",
                axum::routing::get(|| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({"ready": false, "started": false, "standby": true})),
                    )
                }),
            )
            .fallback(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": {
                        "code": "standby",
                        "message": "this runner stands by: another runner of the cluster serves",
                    }})),
                )
            });
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            }
        });
        Ok(StandBy { stop, server })
    }

    /// Stops answering and frees the port for the service (a client that keeps its
    /// connection open is cut after a second).
    async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(1), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
            let _ = self.server.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_address_peers_name_is_forwarded_to() {
        let peers: Vec<_> = ["127.0.0.1:8080", "*.runners.quench.svc.cluster.local:8080"]
            .into_iter()
            .map(|peer| quench_common::http::AllowHost::parse(peer).expect("peer"))
            .collect();
        for good in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "https://quench-1.runners.quench.svc.cluster.local:8080",
        ] {
            assert!(admitted(&peers, good), "{good}");
        }
        for bad in [
            "http://127.0.0.1:8081",
            "http://127.0.0.1",
            "http://127.0.0.1:8080@evil.example.com:8080",
            "http://evil.example.com:8080#127.0.0.1:8080",
            "http://127.0.0.1:8080/?x=1",
            "http://user:pw@127.0.0.1:8080",
            "ftp://127.0.0.1:8080",
            "http://runners.quench.svc.cluster.local:8080",
            "http://quench-1.runners.quench.svc.cluster.local.evil.example.com:8080",
            "127.0.0.1:8080",
            "",
        ] {
            assert!(!admitted(&peers, bad), "{bad}");
        }
        assert!(!admitted(&[], "http://127.0.0.1:8080"));
    }

    #[test]
    fn servers_from_2_10_on_are_new_enough() {
        for old in ["2.9.25", "2.2.0", "1.4.1", "", "garbage"] {
            assert!(!new_enough(old), "{old}");
        }
        for new in ["2.10.0", "2.10.4", "2.11.0-RC.1", "2.12.8", "3.0.0"] {
            assert!(new_enough(new), "{new}");
        }
    }
}
