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

#[path = "../../services/runner/benches/shared/measure.rs"]
mod measure;
use measure::{rss_mib, size_on_disk};
use std::time::Instant;

use quench_openai_fake::{OpenAiFake, OrgSpec};
use quench_runner::config::Secret;
use quench_runner::connectors::openai::OpenAi;
use quench_runner::inventory::{Inventory, Pass, Policy};
use quench_runner::store::{Store, StoreConfig};

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
        let pass = Pass::from_lists(&lists);
        // As the service does: the lists go before the commit.
        drop(lists);
        let report = inventory
            .apply_pass(pass, now)
            .await
            .expect("the pass commits");
        let committed = commit.elapsed();
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
