//! Scheduled playbooks with a manual clock: ticks fire on time, the next tick survives a restart
//! (neither skipped nor doubled), missed ticks are caught up once or skipped, and `overlap`
//! decides what happens while the previous run is open.

use std::collections::BTreeMap;
use std::time::Duration;

use quench_runner::engine::RunStatus;
use quench_runner::store::{Store, StoreConfig};

use crate::support::{Harness, start_time};

fn playbook(name: &str, cron: &str, extra: &str, step: &str) -> String {
    format!(
        r#"schema: quench.playbook/v1
name: {name}
on:
  schedule:
    cron: "{cron}"
{extra}steps:
{step}"#
    )
}

const NOTE: &str = r#"  - id: review
    uses: note
    with:
      message: "tick at {{ now }}"
"#;

const WAIT: &str = r#"  - id: decide
    uses: approval
    with:
      approvers: [lead@example.com]
      question: "Review?"
      timeout: 1d
      on_timeout: approve
"#;

fn at(harness: &Harness, kind: &str, playbook: &str) -> usize {
    harness
        .audit(kind)
        .iter()
        .filter(|entry| entry.playbook.as_deref() == Some(playbook))
        .count()
}

async fn open(
    path: &std::path::Path,
    playbooks: &[&str],
    now: chrono::DateTime<chrono::Utc>,
) -> Harness {
    // Reopened in the same process right after the last harness was dropped: sled's I/O
    // threads may hold its file lock a moment longer under a loaded machine, so retry briefly.
    let started = std::time::Instant::now();
    let store = loop {
        match Store::open(&StoreConfig::new(path)) {
            Ok(store) => break store,
            Err(_) if started.elapsed() < std::time::Duration::from_secs(5) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the store does not open: {error}"),
        }
    };
    Harness::on(store, playbooks, now, BTreeMap::new()).await
}

#[tokio::test]
async fn ticks_fire_on_time_and_the_next_survives_a_restart() {
    let directory = tempfile::tempdir().expect("temp dir");
    let hourly = playbook("hourly", "0 * * * *", "", NOTE);
    let harness = open(directory.path(), &[&hourly], start_time()).await;
    // 09:00: the timetable is set up; the first tick is 10:00.
    harness.advance(Duration::ZERO).await;
    harness.advance(Duration::from_secs(59 * 60)).await;
    assert_eq!(
        at(&harness, "schedule_tick", "hourly"),
        0,
        "not before 10:00"
    );
    harness.advance(Duration::from_secs(60)).await;
    assert_eq!(at(&harness, "schedule_tick", "hourly"), 1, "10:00");
    assert_eq!(at(&harness, "run_completed", "hourly"), 1);
    drop(harness);

    // Restarted at 10:30: 10:00 is not fired again; 11:00 is next.
    let harness = open(
        directory.path(),
        &[&hourly],
        start_time() + chrono::Duration::minutes(90),
    )
    .await;
    harness.advance(Duration::ZERO).await;
    assert_eq!(at(&harness, "schedule_tick", "hourly"), 1, "no double tick");
    harness.advance(Duration::from_secs(30 * 60)).await;
    assert_eq!(at(&harness, "schedule_tick", "hourly"), 2, "11:00");
}

#[tokio::test]
async fn missed_ticks_fire_once_with_catch_up_last_and_not_at_all_with_none() {
    let directory = tempfile::tempdir().expect("temp dir");
    let last = playbook("catch-up-last", "0 * * * *", "", NOTE);
    let none = playbook("catch-up-none", "0 * * * *", "    catch_up: none\n", NOTE);
    let harness = open(directory.path(), &[&last, &none], start_time()).await;
    harness.advance(Duration::ZERO).await;
    drop(harness);

    // Down from 09:00 to 14:20: the 10:00 … 14:00 ticks were missed.
    let harness = open(
        directory.path(),
        &[&last, &none],
        start_time() + chrono::Duration::minutes(5 * 60 + 20),
    )
    .await;
    harness.advance(Duration::ZERO).await;
    let ticks = harness.audit("schedule_tick");
    assert_eq!(ticks.len(), 1, "{ticks:?}");
    assert_eq!(ticks[0].playbook.as_deref(), Some("catch-up-last"));
    assert_eq!(
        ticks[0].detail["due"], "2026-01-05T14:00:00Z",
        "the latest missed tick"
    );
    assert_eq!(ticks[0].detail["missed"], 4);
    let missed = harness.audit("schedule_missed");
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].playbook.as_deref(), Some("catch-up-none"));
    assert_eq!(missed[0].detail["missed"], 5);

    // Both go on at 15:00.
    harness.advance(Duration::from_secs(40 * 60)).await;
    assert_eq!(at(&harness, "schedule_tick", "catch-up-last"), 2);
    assert_eq!(at(&harness, "schedule_tick", "catch-up-none"), 1);
}

#[tokio::test]
async fn overlap_skips_allows_or_cancels_the_previous_run() {
    let skip = playbook("overlap-skip", "0 * * * *", "", WAIT);
    let allow = playbook("overlap-allow", "0 * * * *", "    overlap: allow\n", WAIT);
    let cancel = playbook(
        "overlap-cancel",
        "0 * * * *",
        "    overlap: cancel_previous\n",
        WAIT,
    );
    let harness = Harness::on(
        Store::temporary().expect("store"),
        &[&skip, &allow, &cancel],
        start_time(),
        BTreeMap::new(),
    )
    .await;
    harness.advance(Duration::ZERO).await;
    harness.advance(Duration::from_secs(3600)).await;
    harness.advance(Duration::from_secs(3600)).await;

    assert_eq!(at(&harness, "run_started", "overlap-skip"), 1);
    assert_eq!(at(&harness, "trigger_skipped", "overlap-skip"), 1);
    assert_eq!(
        at(&harness, "run_started", "overlap-allow"),
        2,
        "both stay open"
    );
    assert_eq!(at(&harness, "run_started", "overlap-cancel"), 2);
    let cancelled = harness.audit("run_cancelled");
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    let first = cancelled[0].run_id.clone().expect("a run");
    assert_eq!(harness.run(&first).status, RunStatus::Cancelled);
}

#[test]
fn schedule_list_shows_each_scheduled_playbook_with_its_next_fire_times() {
    let output = std::process::Command::new(crate::support::quench_bin())
        .args([
            "schedule",
            "list",
            "--count",
            "2",
            "--from",
            "2026-03-28T12:00:00Z",
        ])
        .arg(crate::support::root().join("workflows"))
        .output()
        .expect("quench runs");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "find-openai-usage-spikes  `0 6 * * *` UTC\n    \
         next: Sun 2026-03-29 06:00 UTC, Mon 2026-03-30 06:00 UTC\n\
         find-overprivileged-openai-keys  `0 8 * * MON` Europe/Berlin\n    \
         next: Mon 2026-03-30 08:00 CEST, Mon 2026-04-06 08:00 CEST\n\
         inventory-openai-keys  `0 7 * * MON` Europe/Berlin\n    \
         next: Mon 2026-03-30 07:00 CEST, Mon 2026-04-06 07:00 CEST\n\
         watch-openai-audit-log  `*/15 * * * *` UTC\n    \
         next: Sat 2026-03-28 12:15 UTC, Sat 2026-03-28 12:30 UTC\n"
    );
}
