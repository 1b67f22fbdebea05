//! The inventory's sync inside `quench serve`: a full pass at start-up and every
//! `[inventory] interval`, the audit-log watcher every `watch_interval` between passes, and
//! after each the findings for new and vanished risks. A failed pass or watch is logged and
//! tried again at the next turn; the last outcome of each is kept for `GET
//! /api/v1/inventory/status` and the metrics.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::connectors::openai::OpenAi;
use crate::inventory::{Inventory, Pass, PassReport};

/// Findings published per round at most; the rest go out at the next.
const PUBLISH_PER_ROUND: usize = 1000;

/// How the sync is doing, as the API shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct SyncStatus {
    /// Whether the sync runs in this service.
    pub(crate) enabled: bool,
    /// The last full pass that ended, and what it changed.
    #[schema(value_type = Option<Object>)]
    pub(crate) last_pass: Option<PassReport>,
    /// The last pass's error, when it failed.
    pub(crate) last_pass_error: Option<String>,
    pub(crate) last_pass_failed_at: Option<DateTime<Utc>>,
    /// The last audit-log watch, and its error when it failed.
    #[schema(value_type = Option<Object>)]
    pub(crate) last_watch: Option<PassReport>,
    pub(crate) last_watch_error: Option<String>,
    /// Findings published for risks since start-up (resolutions included).
    pub(crate) findings_published: u64,
}

pub(crate) type SharedStatus = Arc<Mutex<SyncStatus>>;

/// What the sync needs.
pub(crate) struct Sync {
    pub(crate) inventory: Inventory,
    pub(crate) openai: Arc<OpenAi>,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) interval: Duration,
    pub(crate) watch_interval: Duration,
    pub(crate) publish: Vec<String>,
    pub(crate) publish_drift: bool,
    pub(crate) status: SharedStatus,
}

impl Sync {
    fn status(&self, change: impl FnOnce(&mut SyncStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// One full pass; its report, or why it failed.
    pub(crate) async fn pass(&self) -> Result<PassReport, String> {
        let lists = self
            .openai
            .estate()
            .await
            .map_err(|error| error.to_string())?;
        let pass = Pass::from_lists(&lists);
        drop(lists);
        self.inventory
            .apply_pass(pass, Utc::now())
            .await
            .map_err(|error| error.to_string())
    }

    /// One read of the audit log since the cursor.
    pub(crate) async fn watch(&self) -> Result<PassReport, String> {
        let since = self
            .inventory
            .audit_since()
            .map_err(|error| error.to_string())?
            .unwrap_or(0);
        let events = self
            .openai
            .watched_events_since(since)
            .await
            .map_err(|error| error.to_string())?;
        self.inventory
            .apply_events(&events, Utc::now())
            .await
            .map_err(|error| error.to_string())
    }

    /// Publishes the findings due, a bounded round at a time; how many went out.
    pub(crate) async fn publish(&self) -> Result<u64, String> {
        let mut total = 0;
        loop {
            let due = self
                .inventory
                .findings_due(
                    &self.publish,
                    self.publish_drift,
                    Utc::now(),
                    PUBLISH_PER_ROUND,
                )
                .map_err(|error| error.to_string())?;
            if due.is_empty() {
                return Ok(total);
            }
            let more = due.len() >= PUBLISH_PER_ROUND;
            let (sent, failed) =
                super::publish::publish_in_order(&self.jetstream, due, |outgoing| {
                    &outgoing.finding
                })
                .await;
            total += sent.len() as u64;
            // What went out is recorded even when a later publish failed.
            self.inventory
                .published(&sent)
                .await
                .map_err(|error| error.to_string())?;
            if let Some(error) = failed {
                return Err(format!("publishing a risk's finding failed: {error}"));
            }
            if !more {
                return Ok(total);
            }
        }
    }

    /// Publishes what is due; whether all of it went out.
    async fn publish_and_count(&self) -> bool {
        match self.publish().await {
            Ok(count) => {
                self.status(|status| status.findings_published += count);
                if count > 0 {
                    tracing::info!(count, "the inventory published findings for risks");
                }
                true
            }
            Err(error) => {
                tracing::warn!(%error, "the inventory's findings wait for the next round");
                false
            }
        }
    }

    /// Runs until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        self.status(|status| status.enabled = true);
        let mut next_pass = tokio::time::Instant::now();
        // Whether findings may be due: after a pass (time alone makes keys unused), after a
        // watch that changed something, and until a round published everything.
        let mut due = false;
        loop {
            // A round stops where it is when the partition is handed back: its store is
            // another runner's by then, and a later pass redoes what was cut short.
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.round(&mut next_pass, &mut due) => {}
            }
            let wait = self
                .watch_interval
                .min(next_pass.saturating_duration_since(tokio::time::Instant::now()));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A pass when one is due, a watch, and the findings due.
    async fn round(&self, next_pass: &mut tokio::time::Instant, due: &mut bool) {
        let now = tokio::time::Instant::now();
        if now >= *next_pass {
            *due = true;
            *next_pass = now + self.interval;
            match self.pass().await {
                Ok(report) => {
                    tracing::info!(
                        created = report.created,
                        changed = report.changed,
                        deleted = report.deleted,
                        identities = report.identities,
                        "inventory pass"
                    );
                    self.status(|status| {
                        status.last_pass = Some(report);
                        status.last_pass_error = None;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "the inventory pass failed; it runs again at the next interval");
                    self.status(|status| {
                        status.last_pass_error = Some(error);
                        status.last_pass_failed_at = Some(Utc::now());
                    });
                }
            }
        }
        // After a pass: the audit log brings the keys' scopes, which a pass never sees.
        *due |= self.watch_once().await;
        if *due {
            *due = !self.publish_and_count().await;
        }
    }

    /// One watch; whether it changed the inventory.
    async fn watch_once(&self) -> bool {
        match self.watch().await {
            Ok(report) => {
                let wrote = report.wrote;
                self.status(|status| {
                    status.last_watch = Some(report);
                    status.last_watch_error = None;
                });
                wrote
            }
            Err(error) => {
                tracing::warn!(%error, "reading the audit log for the inventory failed; trying again at the next watch");
                self.status(|status| status.last_watch_error = Some(error));
                false
            }
        }
    }
}
