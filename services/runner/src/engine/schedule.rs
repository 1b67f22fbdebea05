//! Scheduled playbooks: cron ticks in the playbook's time zone, with the next tick persisted so a
//! restart neither skips nor doubles one.
//!
//! - The next tick is stored per playbook (`s/<name>`) and moved on in the same commit as the run
//!   the tick starts. A new playbook, or a changed `cron`/`timezone`, starts counting from now.
//! - `catch_up: last` (the default): ticks missed while quench was down fire once, as the latest
//!   of them; `none`: a tick more than [`GRACE`] late is skipped (audited as `schedule_missed`).
//! - `overlap: skip` (the default) does not start a run while the previous one is open;
//!   `allow` starts one anyway (its key carries the tick time); `cancel_previous` cancels it.
//! - Time zones (`chrono-tz`): ticks are local wall-clock times. One that does not exist (02:30
//!   on a spring-forward day) fires once, when the gap ends (03:00); one that happens twice
//!   (02:30 on a fall-back day in Europe) fires once, at its first occurrence — so an hourly job
//!   runs 23 times on the spring-forward day and 24 on the fall-back day (skipping the repeated
//!   hour's second pass).

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Engine, Error, Tx};
use crate::playbook::{CatchUp, Schedule, Trigger};
use crate::store::{AuditDraft, Key};

/// How late a tick may fire and still count as on time (`catch_up: none`).
pub const GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// Most wall times looked at for one tick (those that fall before `after` on a fall-back day).
const MAX_WALK: usize = 1000;

/// Most missed ticks counted when catching up (a per-second cron after a week down).
const MAX_MISSED: usize = 100_000;

/// A scheduled playbook's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The cron line and time zone the state was computed for.
    pub line: String,
    pub timezone: String,
    /// The next tick; `None` when the line has no future tick.
    pub next: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last: Option<DateTime<Utc>>,
}

/// A tick being fired: when it was due, and the state to store with the run it starts.
#[derive(Debug, Clone)]
pub(super) struct Tick {
    pub(super) due: DateTime<Utc>,
    pub(super) state: ScheduleState,
}

/// The first tick strictly after `after`. The cron line is walked in local wall-clock time and
/// each wall time placed in the zone: a wall time in a spring-forward gap fires when the gap ends
/// (02:30 → 03:00, once), and one that happens twice on fall-back fires at its first occurrence.
pub fn next_tick(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let zone = schedule.timezone;
    let wall_after = Utc.from_utc_datetime(&after.with_timezone(&zone).naive_local());
    for wall in schedule.cron.after(&wall_after).take(MAX_WALK) {
        let wall = wall.naive_utc();
        let instant = match zone.from_local_datetime(&wall) {
            LocalResult::Single(instant) | LocalResult::Ambiguous(instant, _) => instant,
            // In a gap: the first minute after it (gaps are at most a few hours).
            LocalResult::None => (1..=24 * 60).find_map(|minutes| {
                zone.from_local_datetime(&(wall + chrono::Duration::minutes(minutes)))
                    .earliest()
            })?,
        };
        let instant = instant.with_timezone(&Utc);
        if instant > after {
            return Some(instant);
        }
    }
    None
}

/// The next `count` ticks after `after`.
pub fn upcoming(schedule: &Schedule, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    let mut ticks = Vec::with_capacity(count);
    let mut from = after;
    while ticks.len() < count {
        let Some(tick) = next_tick(schedule, from) else {
            break;
        };
        ticks.push(tick);
        from = tick;
    }
    ticks
}

impl Engine {
    /// Fires the scheduled playbooks whose tick is due (the engine drives the runs they start);
    /// returns how many runs started.
    pub async fn fire_schedules(&self) -> Result<usize, Error> {
        let mut started = 0;
        for playbook in self.playbooks().values() {
            let Trigger::Schedule(schedule) = &playbook.trigger else {
                continue;
            };
            if !self.inner.config.partition.fires_schedules() {
                // Partition 0's engine fires it.
                continue;
            }
            let now = self.now();
            let stored: Option<ScheduleState> =
                self.inner.store.get(Key::Schedule(&playbook.name))?;
            let fresh = |last| ScheduleState {
                line: schedule.line.clone(),
                timezone: schedule.timezone.name().to_owned(),
                next: next_tick(schedule, now),
                last,
            };
            let state = match stored {
                Some(state)
                    if state.line == schedule.line
                        && state.timezone == schedule.timezone.name() =>
                {
                    state
                }
                other => {
                    // New, or its timetable changed: count from now.
                    let mut tx = Tx::default();
                    let state = fresh(other.and_then(|state| state.last));
                    tx.batch.put(Key::Schedule(&playbook.name), &state);
                    tx.timers = true;
                    self.commit(tx).await?;
                    continue;
                }
            };
            let Some(due) = state.next.filter(|due| *due <= now) else {
                continue;
            };
            // The latest tick that is due, and how many were passed over.
            let mut latest = due;
            let mut missed = 0usize;
            while let Some(tick) = next_tick(schedule, latest).filter(|tick| *tick <= now) {
                latest = tick;
                missed += 1;
                if missed >= MAX_MISSED {
                    break;
                }
            }
            let on_time = now - latest <= GRACE;
            let next = ScheduleState {
                next: next_tick(schedule, now.max(latest)),
                last: Some(latest),
                ..state
            };
            // Paused: a run could only fail (its connector has no credentials). The timetable
            // moves on without a run; the service said so once, at start.
            if playbook
                .blocked_by(&self.inner.config.unavailable, self.inner.config.mode)
                .is_some()
            {
                let mut tx = Tx::default();
                tx.batch.put(Key::Schedule(&playbook.name), &next);
                tx.timers = true;
                self.commit(tx).await?;
                continue;
            }
            if schedule.catch_up == CatchUp::None && !on_time {
                let mut tx = Tx::default();
                let mut draft = AuditDraft::new(
                    now,
                    "schedule_missed",
                    json!({"due": latest, "missed": missed + 1, "catch_up": "none"}),
                );
                draft.playbook = Some(playbook.name.clone());
                tx.audit_draft(draft);
                tx.batch.put(Key::Schedule(&playbook.name), &next);
                tx.timers = true;
                self.commit(tx).await?;
                continue;
            }
            let tick = Tick {
                due: latest,
                state: next,
            };
            if self
                .trigger_tick(&playbook.name, Some(tick), missed)
                .await?
                .is_some()
            {
                started += 1;
            }
        }
        Ok(started)
    }

    /// When the next scheduled tick is due, if any.
    pub fn next_schedule_due(&self) -> Result<Option<DateTime<Utc>>, Error> {
        let mut next: Option<DateTime<Utc>> = None;
        for playbook in self.playbooks().values() {
            if !matches!(playbook.trigger, Trigger::Schedule(_))
                || !self.inner.config.partition.fires_schedules()
            {
                continue;
            }
            let state: Option<ScheduleState> =
                self.inner.store.get(Key::Schedule(&playbook.name))?;
            match state {
                // Not set up yet: due now.
                None => return Ok(Some(self.now())),
                Some(ScheduleState { next: None, .. }) => {}
                Some(ScheduleState {
                    next: Some(due), ..
                }) => next = Some(next.map_or(due, |known| known.min(due))),
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::{Overlap, parse_cron, parse_timezone};

    fn schedule(line: &str, timezone: &str) -> Schedule {
        Schedule {
            line: line.to_owned(),
            cron: parse_cron(line).expect("valid cron"),
            timezone: parse_timezone(timezone).expect("valid time zone"),
            overlap: Overlap::Skip,
            catch_up: CatchUp::Last,
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid time")
            .with_timezone(&Utc)
    }

    #[test]
    fn ticks_are_in_the_playbooks_time_zone() {
        let daily = schedule("0 9 * * MON-FRI", "America/New_York");
        assert_eq!(
            upcoming(&daily, utc("2026-01-09T15:00:00Z"), 2),
            [utc("2026-01-12T14:00:00Z"), utc("2026-01-13T14:00:00Z")],
            "Friday 10:00 EST is past; next Monday and Tuesday 09:00 EST"
        );
    }

    #[test]
    fn a_time_that_does_not_exist_on_spring_forward_fires_once_when_the_gap_ends() {
        // Europe/Berlin springs forward on 2026-03-29 at 02:00 → 03:00.
        let nightly = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            upcoming(&nightly, utc("2026-03-28T12:00:00Z"), 2),
            [utc("2026-03-29T01:00:00Z"), utc("2026-03-30T00:30:00Z")],
            "on the 29th at 03:00 CEST, then 02:30 CEST as usual"
        );
        let hourly = schedule("0 * * * *", "Europe/Berlin");
        let day = upcoming(&hourly, utc("2026-03-28T22:59:00Z"), 24);
        assert_eq!(day[1], utc("2026-03-29T00:00:00Z"), "01:00 CET");
        assert_eq!(day[2], utc("2026-03-29T01:00:00Z"), "03:00 CEST, once");
        assert_eq!(day[3], utc("2026-03-29T02:00:00Z"), "04:00 CEST");
    }

    #[test]
    fn a_time_that_happens_twice_on_fall_back_is_one_tick() {
        // Europe/Berlin falls back on 2026-10-25 at 03:00 CEST → 02:00 CET.
        let nightly = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            upcoming(&nightly, utc("2026-10-24T12:00:00Z"), 2),
            [utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")],
            "02:30 CEST runs; 02:30 CET, an hour later, does not"
        );
    }
}
