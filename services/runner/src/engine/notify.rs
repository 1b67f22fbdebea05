//! Gate notices: asking approvers (a Slack DM with one button per choice), reminding them,
//! asking escalation approvers, and — once the gate closes — updating every message to show the
//! outcome without buttons.
//!
//! A notice is a durable timer due at once ([`Timer::Notify`]), written in the same commit as the
//! change that calls for it, so a crash between the two cannot lose it. It is delivered by the
//! [`Notifier`] (Slack in the service) under the run's lock; what was posted is recorded on the
//! gate (for the later update, and the Slack id of an emailed approver as an alias so their click
//! is recognised). Recipients that fail with a retryable error are retried with backoff; others
//! are audited. Delivery is at least once: a crash after a post and before its commit posts
//! again.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::state::{Gate, GateMessage, NoticeKind, Run, Timer};
use super::{ActionError, Engine, Error, Tx};
use crate::store::{Key, TimerKey};

/// Attempts at delivering one notice before giving up (audited).
const MAX_ATTEMPTS: u32 = 8;

/// What a notifier is asked to deliver.
#[derive(Debug, Clone)]
pub struct NoticeRequest {
    pub kind: NoticeKind,
    pub playbook: String,
    pub run_key: String,
    pub gate: Gate,
    /// Recipients as the playbook names them (emails, Slack ids, `#channel`, `group:<name>`);
    /// empty for [`NoticeKind::Closed`] and [`NoticeKind::Progress`], which update
    /// `gate.messages`.
    pub to: Vec<String>,
}

/// What a notifier did.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Messages posted (one per resolved recipient).
    pub posted: Vec<GateMessage>,
    /// Other identities learnt on the way: (Slack user id, email).
    pub aliases: Vec<(String, String)>,
    /// Messages updated (for `closed` and `progress`).
    pub updated: usize,
    /// Recipients (or, for `closed`, message channels) that failed, and why.
    pub failed: Vec<(String, ActionError)>,
}

pub type NoticeFuture<'a> = Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;

/// Delivers gate notices (Slack in the service).
pub trait Notifier: Send + Sync + Debug {
    fn deliver<'a>(&'a self, request: &'a NoticeRequest) -> NoticeFuture<'a>;
}

impl Engine {
    /// Queues a notice for a gate in `tx` (nothing when no notifier is configured).
    pub(super) fn notice(
        &self,
        tx: &mut Tx,
        run: &Run,
        step: &str,
        notice: NoticeKind,
        to: Vec<String>,
        now: DateTime<Utc>,
    ) {
        if self.inner.notifier.is_none() {
            return;
        }
        queue_notice(tx, &run.id, step, notice, to, 0, now);
    }

    /// Delivers a due notice under the run's lock and records what happened on the gate.
    pub(super) async fn deliver_notice(
        &self,
        key: &TimerKey,
        step: String,
        notice: NoticeKind,
        to: Vec<String>,
        attempt: u32,
    ) -> Result<(), Error> {
        let _guard = self.inner.locks.lock(&key.run).await;
        let now = self.now();
        let mut tx = Tx::default();
        tx.batch.delete(key.key());
        let gate: Option<Gate> = self.inner.store.get(Key::Gate(&key.run, &step))?;
        let run = self.run(&key.run)?;
        let (Some(notifier), Some(mut gate), Some(run)) = (&self.inner.notifier, gate, run) else {
            self.commit(tx).await?;
            return Ok(());
        };
        let settled = gate.decision.is_some() || gate.closed;
        let updates = matches!(notice, NoticeKind::Closed | NoticeKind::Progress);
        if (notice == NoticeKind::Closed) != settled || (updates && gate.messages.is_empty()) {
            // Nothing to ask (or to show progress on) once the gate is settled, nothing to
            // close before, and nothing to update before anything was posted.
            self.commit(tx).await?;
            return Ok(());
        }
        let request = NoticeRequest {
            kind: notice,
            playbook: run.playbook.clone(),
            run_key: run.key.clone(),
            gate: gate.clone(),
            to,
        };
        let delivery = notifier.deliver(&request).await;
        let posted: Vec<&str> = delivery.posted.iter().map(|m| m.to.as_str()).collect();
        if !posted.is_empty() || delivery.updated > 0 {
            tx.audit(
                &run,
                now,
                "gate_notified",
                Some(&step),
                json!({"notice": notice.as_str(), "to": posted, "updated": delivery.updated}),
            );
        }
        gate.messages.extend(delivery.posted);
        for (alias, email) in delivery.aliases {
            gate.aliases.insert(alias.to_lowercase(), email);
        }
        let mut retry = Vec::new();
        let mut retry_after: Option<Duration> = None;
        for (recipient, error) in delivery.failed {
            let retrying = error.is_retryable() && attempt + 1 < MAX_ATTEMPTS;
            tx.audit(
                &run,
                now,
                "gate_notify_failed",
                Some(&step),
                json!({"notice": notice.as_str(), "to": recipient, "error": error.to_string(), "retrying": retrying}),
            );
            if retrying {
                if let ActionError::Retryable {
                    retry_after: Some(after),
                    ..
                } = &error
                {
                    retry_after = Some(retry_after.map_or(*after, |known| known.max(*after)));
                }
                retry.push(recipient);
            }
        }
        if !retry.is_empty() {
            // Exponential from 2 s, capped at 5 min; the far side's `Retry-After` wins.
            let backoff = retry_after.unwrap_or_else(|| {
                Duration::from_secs(2u64 << attempt.min(7)).min(Duration::from_secs(300))
            });
            let due = now + chrono::Duration::from_std(backoff).unwrap_or_default();
            let to = if updates { Vec::new() } else { retry };
            queue_notice(&mut tx, &run.id, &step, notice, to, attempt + 1, due);
        }
        tx.batch.put(Key::Gate(&run.id, &step), &gate);
        self.commit(tx).await?;
        Ok(())
    }
}

fn queue_notice(
    tx: &mut Tx,
    run: &str,
    step: &str,
    notice: NoticeKind,
    to: Vec<String>,
    attempt: u32,
    due: DateTime<Utc>,
) {
    let due = DateTime::from_timestamp_millis(due.timestamp_millis()).unwrap_or(due);
    let timer = Timer::Notify {
        step: step.to_owned(),
        notice,
        to,
        attempt,
        id: uuid::Uuid::now_v7().simple().to_string(),
    };
    let name = timer.name();
    tx.batch.put(
        Key::Timer {
            due,
            run,
            name: &name,
        },
        &timer,
    );
    tx.timers = true;
}
