//! Campaigns inside `quench serve`: every few seconds, publish the parts not published yet
//! (each a `quench.attestation` finding, taken in like any other) and reconcile what their
//! runs decided (`crate::campaign::Campaigns::reconcile`). A failed round is logged and tried
//! again at the next.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::campaign::{Campaigns, FINDING_KIND, Start, StartError};
use crate::engine::{Action, ActionError, ActionFuture, Call, Engine, Success, WeakEngine};
use crate::playbook::Trigger;

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
        let (sent, failed) =
            super::publish::publish_in_order(&self.jetstream, due, |outgoing| &outgoing.finding)
                .await;
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

/// Whether playbook `name` can ask a campaign's questions: loaded, taking attestation
/// findings, enabled. Otherwise a code and what to do, for the API and `campaign.start`.
pub(crate) fn check_playbook(engine: &Engine, name: &str) -> Result<(), (&'static str, String)> {
    let playbooks = engine.playbooks();
    let Some(playbook) = playbooks.get(name) else {
        return Err((
            "unknown_playbook",
            format!(
                "no playbook `{name}` is loaded: a campaign's parts would start no run (ship \
                 workflows/attest-openai-identities.yaml, or name another)"
            ),
        ));
    };
    if !matches!(&playbook.trigger, Trigger::Finding(trigger) if trigger.matches_kind(FINDING_KIND))
    {
        return Err((
            "unsuitable_playbook",
            format!("playbook `{name}` does not take `{FINDING_KIND}` findings"),
        ));
    }
    match engine.is_enabled(name) {
        Ok(true) => Ok(()),
        Ok(false) => Err((
            "disabled_playbook",
            format!("playbook `{name}` is disabled: enable it first"),
        )),
        Err(error) => Err(("store", error.to_string())),
    }
}

/// `campaign.start`: a playbook (a quarterly schedule, say) starts a campaign. Its id comes
/// from the step's idempotency key, so a step made again finds the campaign it started.
#[derive(Debug)]
pub(crate) struct StartAction {
    pub(crate) campaigns: Campaigns,
    /// Set once the engine exists (the action is registered before); weak, as the engine
    /// holds this action.
    pub(crate) engine: Arc<OnceLock<WeakEngine>>,
}

impl Action for StartAction {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            let start: Start = serde_json::from_value(call.input.clone()).map_err(|error| {
                ActionError::permanent(format!("campaign.start inputs: {error}"))
            })?;
            let engine = self
                .engine
                .get()
                .and_then(WeakEngine::upgrade)
                .ok_or_else(|| ActionError::retryable("the engine is starting or stopping"))?;
            let playbook = start
                .playbook
                .clone()
                .unwrap_or_else(|| crate::campaign::DEFAULT_PLAYBOOK.to_owned());
            check_playbook(&engine, &playbook)
                .map_err(|(_, message)| ActionError::permanent(message))?;
            let id = hex::encode(&Sha256::digest(call.idempotency_key.as_bytes())[..16]);
            let actor = quench_proto::Actor {
                via: quench_proto::Via::Api,
                id: format!("run:{}", call.run_id),
                name: None,
            };
            let (campaign, created) = self
                .campaigns
                .start_as(&id, &start, &actor, engine.now())
                .await
                .map_err(|error| match error {
                    StartError::Store(error) => ActionError::retryable(error.to_string()),
                    other => ActionError::permanent(other.to_string()),
                })?;
            let mut success = Success::new(json!({
                "id": campaign.id,
                "identities": campaign.identities,
                "parts": campaign.parts,
                "unassigned": campaign.unassigned.len(),
            }));
            success.already_done = !created;
            Ok(success)
        })
    }
}
