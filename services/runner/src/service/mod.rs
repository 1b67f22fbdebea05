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
pub(crate) mod playbooks;
mod publish;
pub mod up;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::openapi;
pub use nats::{connect, ensure_streams};
pub use publish::{PublishReport, ReadFinding, publish_findings, read_findings};

use crate::config::Config;
use crate::connectors::openai::OpenAi;
use crate::connectors::slack::Slack;
use crate::engine::{Actions, Engine, EngineConfig, SystemClock};
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
    let jetstream = async_nats::jetstream::new(client.clone());
    ensure_streams(&jetstream, &config.nats.url, config.nats.replicas).await?;
    let (store, cluster) = match alone {
        Some(store) => (store, None),
        None => match cluster::take_over(&config, &client, &jetstream, &store_config, &shutdown)
            .await?
        {
            Some(active) => (active.store.clone(), Some(active)),
            // Stopped while standing by.
            None => return Ok(()),
        },
    };
    let lost = cluster
        .as_ref()
        .map_or_else(CancellationToken::new, |active| active.lost.clone());
    crate::metrics::get()
        .cluster_partitions_held
        .set(i64::from(cluster.is_some()));

    let (events, publisher) = events::NatsEvents::new(jetstream.clone());
    let backlog = events.backlog();
    let mut actions = Actions::new();
    actions.insert(
        "finding.publish",
        Arc::new(publish::PublishAction::new(jetstream.clone())),
    );
    let owners = Arc::new(crate::owners::Owners::from_config(&config).map_err(Error::Owners)?);
    // `campaign.start` needs the engine, which needs the actions: it gets it once made.
    let engine_cell = Arc::new(std::sync::OnceLock::new());
    actions.insert(
        "campaign.start",
        Arc::new(campaigns::StartAction {
            campaigns: crate::campaign::Campaigns::new(
                crate::inventory::Inventory::new(
                    store.clone(),
                    crate::inventory::Policy::from_section(&config.policy),
                ),
                (*owners).clone(),
            ),
            engine: engine_cell.clone(),
        }),
    );
    let engine_config = EngineConfig {
        owners: owners.clone(),
        mode: config.mode(),
        dry_run_only: start.dry_run_only,
        groups: config.groups.clone(),
        unavailable: unavailable(&config),
        max_inflight_runs: config.engine.max_inflight_runs,
        safety: crate::engine::SafetyConfig::from_section(&config.safety).map_err(Error::Safety)?,
        ..EngineConfig::default()
    };
    // Without an admin key the OpenAI actions still describe their requests (dry-run).
    let openai = match &config.openai.admin_key {
        Some(key) => OpenAi::new(
            &config.openai.base_url,
            key.clone(),
            config.openai.org_id.clone(),
        ),
        None => OpenAi::without_key(&config.openai.base_url),
    }
    .map_err(Error::Connector)?
    .with_usage_scopes(usage_scopes);
    let openai = Arc::new(openai);
    let estate = openai.clone();
    crate::connectors::openai::register(&mut actions, openai.clone());
    let stores = crate::connectors::secret_store::SecretStores::from_config(&config.secret_stores)
        .map_err(Error::Connector)?;
    crate::connectors::openai::register_rotation(&mut actions, openai, stores);
    let http = crate::connectors::http::HttpAction::new(&config.http.allow_hosts)
        .map_err(Error::Connector)?;
    crate::connectors::http::register(&mut actions, Arc::new(http));
    let slack = match &config.slack.bot_token {
        Some(token) => Some(Arc::new(
            Slack::new(&config.slack.api_url, token, config.groups.clone())
                .map_err(Error::Connector)?
                .with_owners(owners.clone()),
        )),
        None => {
            tracing::warn!(
                dry_run = config.mode() == crate::playbook::Mode::DryRun,
                "slack.bot_token is not set: approvals are answered through NATS decisions and the API only; \
                 slack.message steps are recorded, not sent, in dry-run and fail in live mode"
            );
            None
        }
    };
    match &slack {
        Some(slack) => slack.register(&mut actions),
        None if config.mode() == crate::playbook::Mode::DryRun => {
            crate::connectors::slack::register_unconfigured(&mut actions);
        }
        None => {}
    }
    let mut engine = Engine::new(store, Arc::new(SystemClock), actions, engine_config)
        .with_events(Arc::new(events));
    if let Some(slack) = slack {
        engine = engine.with_notifier(slack);
    }
    engine.ensure_run_counts().await?;
    engine.ensure_run_indexes().await?;
    let _ = engine_cell.set(engine.downgrade());
    let library = playbooks::Library::new(config.playbooks.dir.clone(), engine.clone());
    library.reload("quench serve").await?;
    for (playbook, why) in engine.paused_schedules() {
        tracing::warn!(%playbook, reason = %why, "schedule paused: its runs could only fail here");
    }

    let tasks = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(false));
    let health = Arc::new(intake::Health::default());

    let listener = listen(&config).await?;
    let inventory = crate::inventory::Inventory::new(
        engine.store().clone(),
        crate::inventory::Policy::from_section(&config.policy),
    );
    let inventory_status = inventory::SharedStatus::default();
    let tokens = api::Tokens::new(&config.api.tokens);
    if tokens.is_empty() {
        tracing::warn!(
            "no [[api.tokens]] configured: the admin API refuses every request (health and metrics still answer)"
        );
    }
    let api = api::Api::new(api::Parts {
        engine: engine.clone(),
        library: library.clone(),
        client: client.clone(),
        tokens,
        ready: ready.clone(),
        intake: health.clone(),
        inventory: inventory.clone(),
        inventory_status: inventory_status.clone(),
        signer,
        sources: Arc::new(crate::evidence::Estate {
            inventory: inventory.clone(),
            owners: owners.clone(),
        }),
        console: Arc::new(console::Console::new(&config.console, &config.api.listen)),
    });
    tasks.spawn(api::serve(listener, api, stop.clone()));
    tasks.spawn(library.watch(stop.clone()));
    tasks.spawn(publisher.run(stop.clone()));

    // Runs that were between steps when the last process stopped.
    engine.recover()?;

    // Cancelled when a commit fails: the service stops rather than build on it.
    let failed = engine.store().failed();
    let limits = intake::Limits::new(&config.nats);
    let findings = intake::findings_consumer(&jetstream, limits).await?;
    let decisions = intake::decisions_consumer(&jetstream, limits).await?;
    let intake = intake::Intake {
        jetstream: jetstream.clone(),
        engine: engine.clone(),
        health,
        limits,
    };
    let advisories = intake::max_deliveries(client.clone(), intake.clone(), stop.clone());
    tasks.spawn(async move {
        if let Err(error) = advisories.await {
            tracing::error!(%error, "messages JetStream gives up delivering cannot be dead-lettered");
        }
    });
    tasks.spawn(intake::watch(intake.clone(), stop.clone()));
    tasks.spawn(intake::findings(
        findings,
        intake.clone(),
        backlog,
        stop.clone(),
    ));
    tasks.spawn(intake::decisions(decisions, intake, stop.clone()));
    let records = ocsf::consumer(&jetstream).await?;
    tasks.spawn(
        ocsf::Emitter {
            jetstream: jetstream.clone(),
            engine: engine.clone(),
        }
        .run(records, stop.clone()),
    );
    tasks.spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run_timers(stop).await }
    });
    if let Some(retain) = config.store.retain_ended() {
        tasks.spawn(retention(engine.clone(), retain, stop.clone()));
    }
    tasks.spawn(
        campaigns::Follow {
            campaigns: crate::campaign::Campaigns::new(inventory.clone(), (*owners).clone()),
            jetstream: jetstream.clone(),
        }
        .run(stop.clone()),
    );
    if config.inventory_enabled() {
        let sync = inventory::Sync {
            inventory,
            openai: estate,
            jetstream: jetstream.clone(),
            interval: config.inventory_interval(),
            watch_interval: config.inventory_watch_interval(),
            publish: config.inventory.publish.clone(),
            publish_drift: config.inventory.publish_drift,
            status: inventory_status,
        };
        tasks.spawn(sync.run(stop.clone()));
    }
    if start.trigger_schedules {
        trigger_schedules(&engine).await;
    }
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
    engine.close();
    if lost.is_cancelled() {
        // Nothing more can commit here (the journal refuses this runner's appends, or cannot
        // be reached): in-flight steps stop now, and the partition's new owner resumes them.
        tracing::warn!(
            "the partition is lost: in-flight steps stop now; its new owner resumes them"
        );
        engine.abort();
    } else if tokio::time::timeout(GRACE, engine.idle()).await.is_err() {
        tracing::warn!(grace = ?GRACE, "in-flight steps did not finish in time; they resume at the next start");
        engine.abort();
    }
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
        if !matches!(playbook.trigger, playbook::Trigger::Schedule(_)) || paused.contains(name) {
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
