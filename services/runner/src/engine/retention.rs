//! Retention: ended runs are purged once they have been ended for `[store] retain_ended`, with
//! everything that belongs only to them (record, gates, effect journal, timeline index), in
//! bounded passes off the hot path. Each purge holds the run's lock through its commit, so a
//! late answer to one of its gates cannot write the run back half-deleted. Audit entries are
//! never touched here; each pass that purges something is itself audited.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::json;

use super::state::Run;
use super::{Engine, Error};
use crate::store::{AuditDraft, Batch};

/// Runs purged at once (their commits are grouped by the committer).
const CONCURRENCY: usize = 32;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Runs deleted.
    pub runs: usize,
    /// Runs read to find them.
    pub examined: usize,
    /// The pass stopped at its limit: call again soon.
    pub more: bool,
}

impl Engine {
    /// Purges up to `limit` runs that ended more than `retain` ago, reading at most `4 × limit`
    /// runs oldest first (and none started after the cutoff: a run ends after it starts).
    pub async fn purge_ended(&self, retain: Duration, limit: usize) -> Result<Purged, Error> {
        let now = self.now();
        let cutoff = now
            - chrono::Duration::from_std(retain).unwrap_or_else(|_| chrono::Duration::days(36500));
        let store = self.store();
        let mut candidates = Vec::new();
        let mut purged = Purged::default();
        for item in store.runs_oldest_first::<Run>(None) {
            let (id, run) = item?;
            // Ids are UUIDv7: key order is the order runs were made, so once one started after
            // the cutoff, every later one did too (and a run ends after it starts).
            if run.started_at > cutoff {
                break;
            }
            purged.examined += 1;
            if ended_before(&run, cutoff) {
                candidates.push(id);
            }
            if candidates.len() >= limit || purged.examined >= limit.saturating_mul(4) {
                purged.more = true;
                break;
            }
        }
        let results: Vec<Result<bool, Error>> = futures::stream::iter(candidates)
            .map(|id| self.purge_run(id, cutoff))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for result in results {
            if result? {
                purged.runs += 1;
            }
        }
        if purged.runs > 0 {
            let mut batch = Batch::new();
            batch.audit(AuditDraft::new(
                now,
                "runs_purged",
                json!({
                    "runs": purged.runs,
                    "ended_before": cutoff,
                    "retain_ended": humantime::format_duration(retain).to_string(),
                }),
            ));
            store.commit(batch).await?;
            tracing::info!(
                runs = purged.runs,
                ended_before = %cutoff,
                "purged ended runs (store.retain_ended)"
            );
        }
        Ok(purged)
    }

    /// Deletes one run if it is still ended before `cutoff` (read again under its lock).
    async fn purge_run(&self, id: String, cutoff: DateTime<Utc>) -> Result<bool, Error> {
        let _guard = self.inner.locks.lock(&id).await;
        let Some(run) = self.run(&id)? else {
            return Ok(false);
        };
        if !ended_before(&run, cutoff) {
            return Ok(false);
        }
        let store = self.store();
        let mut batch = Batch::new();
        batch.delete_run(store, &id)?;
        store.commit(batch).await?;
        Ok(true)
    }
}

fn ended_before(run: &Run, cutoff: DateTime<Utc>) -> bool {
    run.status.is_terminal() && run.ended_at.is_some_and(|ended| ended < cutoff)
}
