//! Inventory sync benchmark (figures, not pass/fail): an organization of KEYS project keys over
//! PROJECTS projects (default 100,000 over 2,000), seeded into the OpenAI fake (in this
//! process, over real HTTP on loopback), synced into a fresh store with `sync = always`:
//!
//! ```text
//! cargo bench -p quench-tests --bench inventory -- [KEYS] [PROJECTS]
//! ```
//!
//! Reports for the first pass (everything new) and a second pass over the same organization
//! (nothing new: it must write nothing): wall time split into the walk (HTTP, every page) and
//! the commit, requests the fake received, identities, the store's size on disk, and the
//! process's RSS (the fake's share measured after seeding, before the first pass). Then the
//! audit-log backfill (scopes) after the first pass, timed the same way.

use std::path::Path;
use std::time::Instant;

use quench_openai_fake::{OpenAiFake, OrgSpec};
use quench_runner::config::Secret;
use quench_runner::connectors::openai::OpenAi;
use quench_runner::inventory::{Inventory, Pass, Policy};
use quench_runner::store::{Store, StoreConfig};

fn rss_mib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

fn size_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        total += if path.is_dir() {
            size_on_disk(&path)
        } else {
            entry.metadata().map_or(0, |meta| meta.len())
        };
    }
    total
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let keys: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let projects: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(2_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(keys, projects));
}

async fn bench(keys: usize, projects: usize) {
    let fake = OpenAiFake::start().await;
    let seeding = Instant::now();
    let summary = fake.seed_org(&OrgSpec::scale(keys, projects));
    fake.set_now(summary.now);
    println!(
        "seeded {} keys over {} projects ({} users, {} service accounts, {} audit events) in {:.1} s; RSS {} MiB",
        summary.keys,
        summary.projects,
        summary.users,
        summary.service_accounts,
        summary.audit_events,
        seeding.elapsed().as_secs_f64(),
        rss_mib("VmRSS")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&StoreConfig::new(dir.path().join("state"))).expect("store");
    let inventory = Inventory::new(store, Policy::default());
    let openai = OpenAi::new(&fake.base_url(), Secret::new(fake.admin_key()), None)
        .expect("the fake's base URL");
    let now = chrono::DateTime::from_timestamp(summary.now, 0).expect("time");
    println!("pass    WALK_S COMMIT_S REQUESTS IDENTITIES CREATED WROTE STORE_MiB RSS_MiB");
    for pass_number in 1..=2 {
        let before = fake.calls().len();
        let walk = Instant::now();
        let lists = openai.estate().await.expect("the walk");
        let walked = walk.elapsed();
        let commit = Instant::now();
        let report = inventory
            .apply_pass(Pass::from_lists(&lists), now)
            .await
            .expect("the pass commits");
        let committed = commit.elapsed();
        drop(lists);
        println!(
            "pass {pass_number}  {:.2} {:.2} {} {} {} {} {} {}",
            walked.as_secs_f64(),
            committed.as_secs_f64(),
            fake.calls().len() - before,
            report.identities,
            report.created,
            report.wrote,
            size_on_disk(&dir.path().join("state")) / (1024 * 1024),
            rss_mib("VmRSS"),
        );
        if pass_number == 1 {
            let watch = Instant::now();
            let events = openai.watched_events_since(0).await.expect("audit log");
            let watched = inventory.apply_events(&events, now).await.expect("events");
            println!(
                "backfill of {} audit events: {:.2} s, {} identities changed",
                events.len(),
                watch.elapsed().as_secs_f64(),
                watched.changed
            );
        }
    }
    println!("peak RSS {} MiB", rss_mib("VmHWM"));
}
