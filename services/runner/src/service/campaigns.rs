//! Campaigns inside `quench serve`: every few seconds, publish the parts not published yet
//! (each a `quench.attestation` finding, taken in like any other) and reconcile what their
//! runs decided (`crate::campaign::Campaigns::reconcile`). A failed round is logged and tried
//! again at the next.

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::campaign::Campaigns;

/// How often parts are published and runs followed.
const EVERY: Duration = Duration::from_secs(2);
/// Parts published per round at most.
const PUBLISH_PER_ROUND: usize = 200;

pub(crate) struct Follow {
    pub(crate) campaigns: Campaigns,
    pub(crate) jetstream: jetstream::Context,
}

impl Follow {
    /// Publishes parts not published yet; how many went out.
    async fn publish(&self) -> Result<usize, String> {
        let due = self
            .campaigns
            .unpublished(PUBLISH_PER_ROUND)
            .map_err(|error| error.to_string())?;
        let mut sent = Vec::with_capacity(due.len());
        let mut failed = None;
        for outgoing in due {
            match super::publish::publish(&self.jetstream, &outgoing.finding).await {
                Ok(_) => sent.push(outgoing),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        // What went out is recorded even when a later publish failed.
        self.campaigns
            .published(&sent, Utc::now())
            .await
            .map_err(|error| error.to_string())?;
        match failed {
            Some(error) => Err(format!("publishing a campaign's part failed: {error}")),
            None => Ok(sent.len()),
        }
    }

    /// Runs until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            match self.publish().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "campaign parts published"),
                Err(error) => tracing::warn!(%error, "campaign parts wait for the next round"),
            }
            match self.campaigns.reconcile(Utc::now()).await {
                Ok(report) => {
                    if report.decisions > 0 || report.reassigned > 0 || report.completed > 0 {
                        tracing::info!(
                            decisions = report.decisions,
                            reassigned = report.reassigned,
                            completed = report.completed,
                            "campaigns followed"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "following campaigns failed; trying again shortly");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}
