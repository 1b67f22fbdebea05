//! `quench serve`: the engine wired to NATS JetStream. Findings and decisions are pulled from
//! durable consumers, committed through the engine, and acknowledged only after the commit; bad
//! input is dead-lettered with its reason; run events are published after their commit; timers
//! fire; runs are driven with bounded concurrency so a busy engine slows intake instead of
//! growing memory. SIGTERM stops the intake, lets in-flight steps finish within a grace period,
//! and exits 0 — everything not finished is durable and resumes at the next start.
//!
//! The operator surface lives here too: the admin API with health and metrics (`api`), and the
//! playbooks directory with its hot reload (`playbooks`).

pub(crate) mod api;
mod campaigns;
mod cluster;
pub(crate) mod console;
pub mod demo;
mod events;
pub(crate) mod intake;
pub(crate) mod inventory;
mod nats;
mod ocsf;
mod partition;
mod partitions;
pub(crate) mod playbooks;
mod publish;
mod route;
pub mod up;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::openapi;
pub use console::session::bucket as console_sessions;
pub use nats::{connect, ensure_streams};
pub use publish::{PublishReport, ReadFinding, publish_findings, read_findings};
pub use route::ensure as ensure_routing;

use crate::config::Config;
use crate::engine::Engine;
use crate::playbook;
use crate::store::{Store, StoreConfig};

/// How long in-flight steps may take to finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Nats(String),
    /// The store's errors name its path.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("cannot read playbooks from {dir}: {source}")]
    Playbooks {
        dir: String,
        #[source]
        source: playbook::Error,
    },
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    #[error("cannot serve HTTP on {listen}: {source}")]
    Listen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Connector(String),
    /// The usage-scope mapping of `openai.key_usage` is missing (when configured) or invalid.
    #[error("{0}")]
    UsageScopes(String),
    #[error("configuration: {0}")]
    Safety(crate::engine::SafetyConfigError),
    /// `[owners]` could not be compiled (checked at load already).
    #[error("configuration: {0}")]
    Owners(String),
    /// `[evidence] signing_key_file` is not an Ed25519 key.
    #[error("configuration: {0}")]
    Evidence(String),
    /// `quench up` could not start its nats-server child.
    #[error(transparent)]
    NatsChild(#[from] up::StartError),
    #[error("stopped after a failed store commit; nothing unacknowledged is lost, restart quench")]
    CommitFailed,
    /// `[cluster]`: joining, standing by or taking the partition over failed.
    #[error("cluster: {0}")]
    Cluster(String),
    /// `[cluster]`: another runner holds the partition now (lease lost or an append fenced).
    #[error(
        "stopped: another runner of the cluster holds the partition now; nothing unacknowledged \
         is lost (restart quench to stand by)"
    )]
    PartitionLost,
}

/// How a service runs beyond what its config says: what `quench up --demo` changes (flags,
/// not config keys, since no deployment should run this way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Start {
    /// Every run is dry-run, whatever its playbook's `mode` says.
    pub dry_run_only: bool,
    /// Start one run of every scheduled playbook once the service serves, instead of waiting
    /// for its first tick (the timetable is unchanged).
    pub trigger_schedules: bool,
}

/// The usage-scope mapping `openai.key_usage` will read, checked now so a broken edit stops the
/// start with its file, line and column. A missing default file is only warned about: the
/// action fails saying so, and nothing else needs it.
fn usage_scopes(config: &Config) -> Result<std::path::PathBuf, Error> {
    let (path, configured) = config.usage_scopes();
    if configured || path.exists() {
        crate::connectors::openai::UsageScopes::load(&path).map_err(Error::UsageScopes)?;
    } else {
        tracing::warn!(
            path = %path.display(),
            "no usage-scope mapping: openai.key_usage steps fail until it exists (see docs/least-privilege.md)"
        );
    }
    Ok(path)
}

/// The web console: its sessions in this process, or, in a cluster, shared by every runner.
pub(crate) async fn console(
    config: &Config,
    jetstream: &async_nats::jetstream::Context,
) -> Result<console::Console, Error> {
    match config.cluster.enabled {
        false => Ok(console::Console::new(&config.console, &config.api.listen)),
        true => console::Console::shared(
            &config.console,
            &config.api.listen,
            jetstream,
            config.nats.replicas,
            config.cluster.partitions,
        )
        .await
        .map_err(|error| Error::Nats(error.to_string())),
    }
}

/// The service. Returns when `shutdown` is cancelled and the grace period is over, or with an
/// error when a store commit fails.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    serve_with(config, Start::default(), shutdown).await
}

/// [`serve`], with `start`'s changes.
pub async fn serve_with(
    config: Config,
    start: Start,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Stops the service's tasks: on `shutdown`, or when a commit fails.
    let stop = shutdown.child_token();
    // Fail before connecting anything when the directory cannot be read at all.
    playbook::expand(std::slice::from_ref(&config.playbooks.dir)).map_err(|source| {
        Error::Playbooks {
            dir: config.playbooks.dir.display().to_string(),
            source,
        }
    })?;
    let usage_scopes = usage_scopes(&config)?;
    let signer = crate::evidence::Signer::from_config(&config.evidence)
        .map_err(|error| Error::Evidence(error.to_string()))?
        .map(Arc::new);
    let mut store_config = StoreConfig::new(&config.store.path);
    store_config.sync = config.store.sync;
    // On its own the store is sled's; in a cluster it is a cache of the partition's journal,
    // opened once this runner holds the partition.
    let alone = match config.cluster.enabled {
        false => Some(Store::open(&store_config)?),
        true => None,
    };

    let client = connect(&config.nats).await?;
    let shared = partition::Shared::new(config, start, client.clone(), usage_scopes)?;
    let config = &shared.config;
    let jetstream = shared.jetstream.clone();
    ensure_streams(&jetstream, &config.nats.url, config.nats.replicas).await?;
    if config.cluster.enabled && config.cluster.partitions > 1 {
        return partitions::serve(shared, store_config, signer, shutdown).await;
    }
    let (store, cluster) = match alone {
        Some(store) => (store, None),
        None => {
            match cluster::take_over(config, &client, &jetstream, &store_config, &shutdown).await? {
                Some(active) => (active.store.clone(), Some(active)),
                // Stopped while standing by.
                None => return Ok(()),
            }
        }
    };
    let lost = cluster
        .as_ref()
        .map_or_else(CancellationToken::new, |active| active.lost.clone());
    crate::metrics::get()
        .cluster_partitions_held
        .set(i64::from(cluster.is_some()));

    let listener = listen(config).await?;
    let serving = partition::Serving::start(
        &shared,
        store,
        crate::cluster::partition::Slot::ALONE,
        intake::Feed::All,
        None,
        stop.clone(),
    )
    .await?;
    let tasks = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(false));
    let tokens = api::Tokens::new(&config.api.tokens);
    if tokens.is_empty() {
        tracing::warn!(
            "no [[api.tokens]] configured: the admin API refuses every request (health and metrics still answer)"
        );
    }
    let api = api::Api::new(api::Parts {
        engine: serving.engine.clone(),
        library: serving.library.clone(),
        client: client.clone(),
        tokens,
        ready: ready.clone(),
        intake: serving.health.clone(),
        inventory: serving.inventory.clone(),
        inventory_status: serving.inventory_status.clone(),
        signer,
        sources: Arc::new(crate::evidence::Estate {
            inventory: serving.inventory.clone(),
            owners: shared.owners(),
        }),
        console: Arc::new(console(config, &jetstream).await?),
    });
    tasks.spawn(api::serve(listener, api, stop.clone()));
    let failed = serving.failed.clone();
    ready.store(true, Ordering::SeqCst);
    tracing::info!(listen = %config.api.listen, nats = %config.nats.url, mode = config.mode().as_str(), "quench is serving");

    tokio::select! {
        () = shutdown.cancelled() => {}
        () = failed.cancelled() => {}
        () = lost.cancelled() => {}
    }
    stop.cancel();
    tracing::info!("shutting down: intake stopped, letting in-flight steps finish");
    ready.store(false, Ordering::SeqCst);
    tasks.close();
    serving.stop(GRACE, lost.is_cancelled()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    // Not forever: a runner split from the servers has nothing to flush to.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    crate::metrics::get().cluster_partitions_held.set(0);
    if let Some(active) = cluster {
        // After the last commit: a standing-by runner takes over now.
        active.hand_over().await;
    }
    if lost.is_cancelled() {
        return Err(Error::PartitionLost);
    }
    if failed.is_cancelled() {
        return Err(Error::CommitFailed);
    }
    Ok(())
}

/// Binds `api.listen`.
async fn listen(config: &Config) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(config.api_listen())
        .await
        .map_err(|source| Error::Listen {
            listen: config.api.listen.to_string(),
            source,
        })
}

/// Whether a quench service answers `/readyz` with 200 at `listen`.
pub(crate) async fn ready(listen: &str) -> bool {
    let url = format!("http://{listen}/readyz");
    match quench_common::http::http_client().get(url).send().await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

/// Starts one run of every scheduled playbook that is not paused, as a tick due now would
/// (a disabled playbook, or one whose previous run is still open, starts none).
async fn trigger_schedules(engine: &Engine) {
    let paused: Vec<String> = engine
        .paused_schedules()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for (name, playbook) in engine.playbooks().iter() {
        if !matches!(playbook.trigger, playbook::Trigger::Schedule(_))
            || paused.contains(name)
            || !engine.partition().fires_schedules()
        {
            continue;
        }
        match engine.trigger(name).await {
            Ok(run) => {
                tracing::info!(playbook = %name, run_id = run.as_deref().unwrap_or("none"), "scheduled playbook started at start-up");
            }
            Err(error) => {
                tracing::error!(playbook = %name, %error, "cannot start the scheduled playbook; it runs at its next tick");
            }
        }
    }
}

/// Purges runs ended longer than `retain` ago: a pass a minute (the first at start-up), passes
/// back to back while there is more, each bounded so the hot path keeps the store.
async fn retention(engine: Engine, retain: Duration, shutdown: CancellationToken) {
    const PASS: usize = 1000;
    loop {
        let wait = match engine.purge_ended(retain, PASS).await {
            Ok(purged) if purged.more => Duration::from_millis(10),
            Ok(_) => Duration::from_secs(60),
            Err(error) => {
                tracing::error!(%error, "purging ended runs failed; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Actions this config cannot run (see [`crate::playbook::Playbook::blocked_by`]).
pub fn unavailable(config: &Config) -> Vec<(String, String)> {
    let mut unavailable = Vec::new();
    if config.openai.admin_key.is_none() {
        unavailable.push((
            "openai.".to_owned(),
            "openai.admin_key is not configured".to_owned(),
        ));
    }
    unavailable
}
