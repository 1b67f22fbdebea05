//! Retention: ended runs are purged once they have been ended for `[store] retain_ended`, with
//! everything that belongs only to them (record, gates, effect journal, timeline index), in
//! bounded passes off the hot path. A pass is one batch, committed while it holds the locks of
//! the runs it deletes (taken without waiting: a busy run is left for the next pass), so a late
//! answer to one of their gates cannot write a run back half-deleted. Audit entries are
//! never touched here; each pass that purges something is itself audited.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::state::Run;
use super::{Engine, Error};
use crate::store::{AuditDraft, Batch};

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
        // One batch for the pass, committed with every purged run's lock held: a run whose lock
        // is busy (a late answer to its gate, say) is skipped and comes back next pass.
        let mut guards = Vec::with_capacity(candidates.len());
        let mut batch = Batch::new();
        for id in candidates {
            let Some(guard) = self.inner.locks.try_lock(&id) else {
                continue;
            };
            let Some(run) = self.run(&id)? else {
                continue;
            };
            if !ended_before(&run, cutoff) {
                continue;
            }
            batch.delete_run(store, &id, &run.key, &run.playbook)?;
            guards.push(guard);
        }
        purged.runs = guards.len();
        if purged.runs > 0 {
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
            drop(guards);
            crate::metrics::get().runs_purged.inc_by(purged.runs as u64);
            tracing::info!(
                runs = purged.runs,
                ended_before = %cutoff,
                "purged ended runs (store.retain_ended)"
            );
        }
        Ok(purged)
    }
}

fn ended_before(run: &Run, cutoff: DateTime<Utc>) -> bool {
    run.status.is_terminal() && run.ended_at.is_some_and(|ended| ended < cutoff)
}
