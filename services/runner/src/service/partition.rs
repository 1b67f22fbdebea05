//! One partition served: its engine over its store, with everything that drives that engine —
//! the playbook library, intake of findings and decisions, timers, events, retention — and,
//! on the partition that holds the estate, the inventory sync and campaigns. A runner on its
//! own serves one (every record in it); a runner of a cluster serves one per partition it
//! owns, all sharing the process's connectors ([`Shared`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::intake::Feed;
use super::{Error, Start, campaigns, events, intake, inventory, ocsf, playbooks, publish};
use crate::cluster::partition::Slot;
use crate::config::Config;
use crate::connectors::openai::OpenAi;
use crate::connectors::slack::Slack;
use crate::engine::{Actions, Engine, EngineConfig, SystemClock};
use crate::store::Store;

/// What every partition's engine of this process shares: the config, the NATS connection and
/// the connectors (their clients, and so their connection pools and rate limits).
pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) start: Start,
    pub(super) client: async_nats::Client,
    pub(super) jetstream: async_nats::jetstream::Context,
    owners: Arc<crate::owners::Owners>,
    safety: crate::engine::SafetyConfig,
    openai: Arc<OpenAi>,
    stores: crate::connectors::secret_store::SecretStores,
    http: Arc<crate::connectors::http::HttpAction>,
    slack: Option<Arc<Slack>>,
}

impl Shared {
    /// The config's owner resolution chain.
    pub(super) fn owners(&self) -> Arc<crate::owners::Owners> {
        self.owners.clone()
    }

    /// Builds the connectors `config` names, refusing what is misconfigured before anything
    /// is served.
    pub(super) fn new(
        config: Config,
        start: Start,
        client: async_nats::Client,
        usage_scopes: std::path::PathBuf,
    ) -> Result<Shared, Error> {
        let jetstream = async_nats::jetstream::new(client.clone());
        let owners = Arc::new(crate::owners::Owners::from_config(&config).map_err(Error::Owners)?);
        let safety =
            crate::engine::SafetyConfig::from_section(&config.safety).map_err(Error::Safety)?;
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
        let stores =
            crate::connectors::secret_store::SecretStores::from_config(&config.secret_stores)
                .map_err(Error::Connector)?;
        let http = crate::connectors::http::HttpAction::new(&config.http.allow_hosts)
            .map_err(Error::Connector)?;
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
        Ok(Shared {
            config,
            start,
            client,
            jetstream,
            owners,
            safety,
            openai: Arc::new(openai),
            stores,
            http: Arc::new(http),
            slack,
        })
    }

    /// An engine over `store`, serving `slot`, with every action this process can run;
    /// `estate`: where it reads the estate when `store` does not hold it.
    async fn engine(
        &self,
        store: Store,
        slot: Slot,
        estate: Option<crate::store::Borrowed>,
    ) -> Result<(Engine, events::Publisher), Error> {
        let config = &self.config;
        let (events, publisher) = events::NatsEvents::new(self.jetstream.clone(), store.clone())?;
        let mut actions = Actions::new();
        actions.insert(
            "finding.publish",
            Arc::new(publish::PublishAction::new(self.jetstream.clone())),
        );
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
                    (*self.owners).clone(),
                ),
                engine: engine_cell.clone(),
            }),
        );
        let engine_config = EngineConfig {
            owners: self.owners.clone(),
            mode: config.mode(),
            dry_run_only: self.start.dry_run_only,
            groups: config.groups.clone(),
            unavailable: super::unavailable(config),
            max_inflight_runs: config.engine.max_inflight_runs,
            safety: self.safety.share(slot),
            partition: slot,
            estate,
            ..EngineConfig::default()
        };
        crate::connectors::openai::register(&mut actions, self.openai.clone());
        crate::connectors::openai::register_rotation(
            &mut actions,
            self.openai.clone(),
            self.stores.clone(),
        );
        crate::connectors::http::register(&mut actions, self.http.clone());
        match &self.slack {
            Some(slack) => slack.register(&mut actions),
            None if config.mode() == crate::playbook::Mode::DryRun => {
                crate::connectors::slack::register_unconfigured(&mut actions);
            }
            None => {}
        }
        let mut engine = Engine::new(store, Arc::new(SystemClock), actions, engine_config)
            .with_events(Arc::new(events));
        if let Some(slack) = &self.slack {
            engine = engine.with_notifier(slack.clone());
        }
        engine.ensure_run_counts().await?;
        engine.ensure_run_indexes().await?;
        let _ = engine_cell.set(engine.downgrade());
        Ok((engine, publisher))
    }
}

/// A partition's tasks, each with its name, so that those still running at a stop can be
/// named.
#[derive(Clone, Default)]
struct Tasks {
    tracker: TaskTracker,
    running: Arc<parking_lot::Mutex<BTreeMap<&'static str, usize>>>,
}

impl Tasks {
    fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        /// Counts its task as running until the task ends (or is dropped).
        struct Running(
            &'static str,
            Arc<parking_lot::Mutex<BTreeMap<&'static str, usize>>>,
        );
        impl Drop for Running {
            fn drop(&mut self) {
                let mut running = self.1.lock();
                if let Some(count) = running.get_mut(self.0) {
                    *count -= 1;
                    if *count == 0 {
                        running.remove(self.0);
                    }
                }
            }
        }
        *self.running.lock().entry(name).or_default() += 1;
        let running = Running(name, self.running.clone());
        self.tracker.spawn(async move {
            let _running = running;
            task.await;
        });
    }

    fn close(&self) {
        self.tracker.close();
    }

    async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// The names of the tasks not ended yet.
    fn running(&self) -> Vec<&'static str> {
        self.running.lock().keys().copied().collect()
    }
}

/// A partition being served: its engine and library, what the API reads of it, and the tasks
/// that drive it.
pub(super) struct Serving {
    pub(super) engine: Engine,
    pub(super) library: playbooks::Library,
    pub(super) health: Arc<intake::Health>,
    /// The estate's inventory, on the partition that holds it.
    pub(super) inventory: crate::inventory::Inventory,
    pub(super) inventory_status: inventory::SharedStatus,
    tasks: Tasks,
    /// Cancelled when a commit fails: the partition stops rather than build on it.
    pub(super) failed: CancellationToken,
    stop: CancellationToken,
    /// Stops the run-event publisher, once the engine stopped committing.
    events_stop: CancellationToken,
    /// Stops it at once, with nothing more written: the partition is lost.
    events_lost: CancellationToken,
    /// With several partitions: where the router hands this partition's findings over
    /// without routing them through the stream (it pulled them on this runner).
    pub(super) handover: Option<tokio::sync::mpsc::Sender<async_nats::jetstream::Message>>,
}

impl Serving {
    /// Starts serving `store` as `slot`: loads the playbooks, resumes the runs that were between
    /// steps, and starts intake, timers and the rest under `stop`. `estate`: where the estate is
    /// read when `store` does not hold it; `None`: it does (this partition syncs the
    /// inventory and follows campaigns).
    pub(super) async fn start(
        shared: &Shared,
        store: Store,
        slot: Slot,
        feed: Feed,
        estate: Option<crate::store::Borrowed>,
        stop: CancellationToken,
    ) -> Result<Serving, Error> {
        let config = &shared.config;
        let jetstream = &shared.jetstream;
        let holds_estate = estate.is_none();
        let (engine, publisher) = shared.engine(store, slot, estate).await?;
        let library = playbooks::Library::new(config.playbooks.dir.clone(), engine.clone());
        library.reload("quench serve").await?;
        for (playbook, why) in engine.paused_schedules() {
            tracing::warn!(%playbook, reason = %why, "schedule paused: its runs could only fail here");
        }
        let tasks = Tasks::default();
        let health = Arc::new(intake::Health::default());
        let inventory = crate::inventory::Inventory::new(
            engine.store().clone(),
            crate::inventory::Policy::from_section(&config.policy),
        );
        let inventory_status = inventory::SharedStatus::default();
        // With several partitions the process watches the directory once, for all of them.
        if feed == Feed::All {
            tasks.spawn("playbook watcher", library.clone().watch(stop.clone()));
        }

        // Runs that were between steps when the last process stopped.
        engine.recover()?;

        let failed = engine.store().failed();
        let limits = intake::Limits::new(&config.nats);
        let findings = intake::findings_consumer(jetstream, feed, limits).await?;
        let decisions = intake::decisions_consumer(jetstream, feed, limits).await?;
        let intake = intake::Intake {
            jetstream: jetstream.clone(),
            engine: engine.clone(),
            health: health.clone(),
            limits,
            feed,
        };
        let advisories =
            intake::max_deliveries(shared.client.clone(), intake.clone(), stop.clone());
        tasks.spawn("max-deliveries advisories", async move {
            if let Err(error) = advisories.await {
                tracing::error!(%error, "messages JetStream gives up delivering cannot be dead-lettered");
            }
        });
        tasks.spawn("intake watch", intake::watch(intake.clone(), stop.clone()));
        let (handover, handed) = match feed {
            Feed::All => (None, None),
            Feed::Partition(_) => {
                let (handover, handed) = tokio::sync::mpsc::channel(intake::HANDED_OVER);
                (Some(handover), Some(handed))
            }
        };
        tasks.spawn(
            "findings intake",
            intake::findings(findings, intake.clone(), handed, stop.clone()),
        );
        tasks.spawn(
            "decisions intake",
            intake::decisions(decisions, intake, stop.clone()),
        );
        ocsf::remove_old_consumer(jetstream, slot).await;
        tasks.spawn("timers", {
            let (engine, stop) = (engine.clone(), stop.clone());
            async move { engine.run_timers(stop).await }
        });
        if let Some(retain) = config.store.retain_ended() {
            tasks.spawn(
                "retention",
                super::retention(engine.clone(), retain, stop.clone()),
            );
        }
        if holds_estate {
            tasks.spawn(
                "campaign follower",
                campaigns::Follow {
                    campaigns: crate::campaign::Campaigns::new(
                        inventory.clone(),
                        (*shared.owners).clone(),
                    ),
                    jetstream: jetstream.clone(),
                }
                .run(stop.clone()),
            );
            if config.inventory_enabled() {
                let sync = inventory::Sync {
                    inventory: inventory.clone(),
                    openai: shared.openai.clone(),
                    jetstream: jetstream.clone(),
                    interval: config.inventory_interval(),
                    watch_interval: config.inventory_watch_interval(),
                    publish: config.inventory.publish.clone(),
                    publish_drift: config.inventory.publish_drift,
                    status: inventory_status.clone(),
                };
                tasks.spawn("inventory sync", sync.run(stop.clone()));
            }
        }
        if shared.start.trigger_schedules {
            super::trigger_schedules(&engine).await;
        }
        // Started last (the events of the commits before are in the audit log), once nothing
        // can fail; stopped after the engine (`Serving::stop`), so it publishes the events of
        // the last commits.
        let (events_stop, events_lost) = (CancellationToken::new(), CancellationToken::new());
        tasks.spawn(
            "run events",
            publisher.run(
                ocsf::Emitter {
                    engine: engine.clone(),
                },
                events_stop.clone(),
                events_lost.clone(),
            ),
        );
        Ok(Serving {
            engine,
            library,
            health,
            inventory,
            inventory_status,
            tasks,
            failed,
            stop,
            events_stop,
            events_lost,
            handover,
        })
    }

    /// Stops the partition: intake and timers at once, in-flight steps within `grace` (at once
    /// when `abort`: nothing can commit any more), then its tasks.
    pub(super) async fn stop(self, grace: Duration, abort: bool) {
        self.stop.cancel();
        self.tasks.close();
        self.engine.close();
        if abort {
            // Nothing more can commit here (the journal refuses this runner's appends, or
            // cannot be reached): in-flight steps stop now, and the partition's new owner
            // resumes them.
            tracing::warn!(
                "the partition is lost: in-flight steps stop now; its new owner resumes them"
            );
            self.events_lost.cancel();
            self.engine.abort();
        } else if tokio::time::timeout(grace, self.engine.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "in-flight steps did not finish in time; they resume at the next start"
            );
            self.engine.abort();
        }
        self.events_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = ?self.tasks.running(),
                "some of the partition's tasks did not stop within 5 s"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_tasks_still_running_are_named() {
        let tasks = Tasks::default();
        let stop = CancellationToken::new();
        tasks.spawn("quick", async {});
        for _ in 0..2 {
            let stop = stop.clone();
            tasks.spawn("waits", async move { stop.cancelled().await });
        }
        tasks.close();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), tasks.wait())
                .await
                .is_err()
        );
        assert_eq!(tasks.running(), ["waits"]);
        stop.cancel();
        tasks.wait().await;
        assert!(tasks.running().is_empty());
    }
}
