//! Retention: ended runs are purged once they have been ended for `[store] retain_ended`, with
//! everything that belongs only to them (record, gates, effect journal, timeline index), in
//! bounded passes off the hot path. A pass finds them through the index of ended runs by when
//! they ended ([`crate::store::Key::Ended`]), so it reads only the runs it deletes (a scan of
//! the runs oldest first read the same open old runs again each pass). A pass is one batch,
//! committed while it holds the locks of the runs it deletes (taken without waiting: a busy
//! run is left for the next pass), so a late answer to one of their gates cannot write a run
//! back half-deleted. Audit entries are never touched here; each pass that purges something
//! is itself audited.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::state::Run;
use super::{Engine, Error};
use crate::store::{AuditDraft, Batch, ByTime, Key};

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Runs deleted.
    pub runs: usize,
    /// Entries of the ended-run index read to find them (a run restarted since it ended
    /// leaves one behind, removed here).
    pub examined: usize,
    /// The pass stopped at its limit: call again soon.
    pub more: bool,
}

impl Engine {
    /// Purges up to `limit` runs that ended more than `retain` ago, found through the index of
    /// ended runs by when they ended: a pass reads only the runs it deletes.
    pub async fn purge_ended(&self, retain: Duration, limit: usize) -> Result<Purged, Error> {
        let now = self.now();
        let cutoff = now
            - chrono::Duration::from_std(retain).unwrap_or_else(|_| chrono::Duration::days(36500));
        let store = self.store();
        if !store.ended_index_complete()? {
            self.ensure_run_indexes().await?;
        }
        let started = std::time::Instant::now();
        let candidates = store.older_than(ByTime::Ended, cutoff, limit)?;
        let scanned = started.elapsed();
        let mut purged = Purged {
            examined: candidates.len(),
            more: candidates.len() >= limit,
            ..Purged::default()
        };
        // One batch for the pass, committed with every purged run's lock held: a run whose lock
        // is busy (a late answer to its gate, say) is skipped and comes back next pass.
        let mut guards = Vec::with_capacity(candidates.len());
        let mut batch = Batch::new();
        let mut stale = 0;
        for (at, id) in candidates {
            let Some(guard) = self.inner.locks.try_lock(&id) else {
                continue;
            };
            match self.run(&id)? {
                // (The index keeps milliseconds.)
                Some(run)
                    if run.ended_at.map(|ended| ended.timestamp_millis())
                        == Some(at.timestamp_millis())
                        && ended_before(&run, cutoff) =>
                {
                    batch.delete_run(store, &id, &run.key, &run.playbook, run.ended_at)?;
                    guards.push(guard);
                }
                // An entry left behind (the run was restarted, or is gone): only the entry goes.
                _ => {
                    batch.delete(Key::Ended(at, &id));
                    stale += 1;
                }
            }
        }
        purged.runs = guards.len();
        let prepared = started.elapsed();
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
        }
        if !batch.is_empty() {
            store.commit(batch).await?;
            drop(guards);
        }
        if purged.runs > 0 {
            crate::metrics::get().runs_purged.inc_by(purged.runs as u64);
            tracing::info!(
                runs = purged.runs,
                ended_before = %cutoff,
                "purged ended runs (store.retain_ended)"
            );
        }
        tracing::debug!(
            runs = purged.runs,
            stale,
            scan_ms = scanned.as_millis() as u64,
            prepare_ms = (prepared - scanned).as_millis() as u64,
            commit_ms = (started.elapsed() - prepared).as_millis() as u64,
            "purge pass"
        );
        Ok(purged)
    }
}

fn ended_before(run: &Run, cutoff: DateTime<Utc>) -> bool {
    run.status.is_terminal() && run.ended_at.is_some_and(|ended| ended < cutoff)
}
