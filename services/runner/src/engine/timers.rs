//! The timer loop: sleeps until the earliest timer or scheduled tick, fires what fell due, and
//! is woken by every commit that sets a timer or loads playbooks, so a new, earlier timer is not
//! left waiting behind a long sleep and nothing polls.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Engine;

/// The longest sleep: wall-clock time can jump (NTP, a suspended VM) while a monotonic sleep
/// runs, so the loop looks at the clock again at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How long to wait after a failure to read or fire timers.
const RETRY: Duration = Duration::from_secs(1);

impl Engine {
    /// Fires timers and scheduled ticks as they fall due (the runs they wake are driven by the
    /// engine's work queue), until `shutdown`.
    pub async fn run_timers(&self, shutdown: CancellationToken) {
        loop {
            let next = self
                .next_due()
                .and_then(|timer| Ok((timer, self.next_schedule_due()?)));
            let wait = match next {
                Ok((timer, tick)) => match timer.into_iter().chain(tick).min() {
                    Some(due) => (due - self.now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .min(MAX_SLEEP),
                    None => MAX_SLEEP,
                },
                Err(error) => {
                    tracing::error!(%error, "cannot read timers");
                    RETRY
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.inner.timers.notified() => continue,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            let fired = self.fire_due().await.and(self.fire_schedules().await);
            if let Err(error) = fired {
                tracing::error!(%error, "firing timers failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}
