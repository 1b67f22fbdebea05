//! Cluster benchmark (figures, not pass/fail) for `[cluster]` (issue 20). Run with
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p quench-tests --bench cluster -- failover [SAMPLES] [LEASE_SECONDS]
//! cargo bench -p quench-tests --bench cluster -- journal [FINDINGS]
//! cargo bench -p quench-tests --bench cluster -- partitions [FINDINGS] [PARTITIONS]
//! cargo bench -p quench-tests --bench cluster -- partition-failover [SAMPLES] [LEASE_SECONDS] [PARTITIONS]
//! cargo bench -p quench-tests --bench cluster -- replay [RECORDS]
//! ```
//!
//! Needs the pinned nats-server (2.10+) first on the PATH, as the integration tests do. The
//! servers run as deployed: JetStream on disk with `sync_interval: always` (every write fsynced
//! before it is acknowledged), three of them routed into a cluster on loopback, streams with
//! three replicas. The runners are the release `quench serve`, as processes.
//!
//! - **failover** (default 20 samples, lease 10 s, the shipped default): two runners, one serving
//!   and one standing by, with 20 runs parked on an approval gate. Each sample `kill -9`s the
//!   serving runner and measures until the other one *answers for the parked runs*: `/readyz`
//!   200 and `GET /api/v1/runs` listing all 20, waiting. The killed one is started again (it
//!   stands by) before the next sample, so samples alternate between the two. Also reported:
//!   when `/readyz` first answered 200. Issue 20's target is ≤ 15 s.
//! - **partition-failover** (default 12 samples, lease 10 s, 64 partitions): three runners
//!   sharing the partitions, with 40 runs parked on an approval gate across them. Each sample
//!   `kill -9`s one runner (in turn) and measures until another *answers for every parked
//!   run*: `GET /api/v1/runs` through a survivor (gathered from every partition, so it
//!   answers only once every partition is served again) lists all 40, waiting. The killed
//!   runner is started again, and the next sample waits until the three share the partitions.
//! - **journal** (default 5,000 findings): what cluster mode costs against the single-node sled
//!   path, in one run, and whether runners standing by (following the journal) slow the one
//!   that serves. The findings wait in the stream first (published 500 at a time while the
//!   runner is stopped), then the runner starts and takes them through one playbook (one
//!   `note` step: a run starts and ends in one commit), on (a) one server and a runner without
//!   `[cluster]` (streams with one replica, state in sled), (b) three servers and a runner in
//!   cluster mode (streams with three replicas, each commit appended to the partition's
//!   journal, acknowledged by a majority, before sled applies it) and (c) as (b) with two more
//!   runners standing by, following the journal. The figure is findings taken in and run per
//!   second, from when the runner serves until `quench_runs_completed_total` reaches the
//!   count, and the ratio (b) / (a); how fast the stream took the findings, and how long the
//!   runner took to serve, are printed beside it.
//! - **replay** (default 10,000 records, the default `snapshot_every`): how fast a take-over
//!   reads a partition's journal. The records (a commit of ~200 bytes each) are appended to
//!   one partition of an R3 journal on three servers, interleaved with as many of three other
//!   partitions; then `Journal::replay` (an ordered consumer) reads them back, five times,
//!   and so does `Journal::replay_from_leader` (message by message from the stream's leader:
//!   what a replay falls back to when its consumer stalls, placed on a dead server). Records
//!   per second, best of five, each way.

#[path = "../integration/support/mod.rs"]
#[expect(
    dead_code,
    unused_imports,
    reason = "the integration tests' support, shared as is: the bench uses part of it"
)]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{NatsServer, Service, percentile};

const TOKEN: &str = "cluster-bench-token";

/// Parked runs each failover sample must find answerable on the successor.
const PARKED: usize = 20;

const HELD: &str = r#"schema: quench.playbook/v1
name: held
on:
  finding:
    kinds: [bench.held]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [lead@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 24h
      on_timeout: keep
"#;

const NOTED: &str = r#"schema: quench.playbook/v1
name: noted
on:
  finding:
    kinds: [bench.noted]
steps:
  - id: record
    uses: note
    with:
      message: "{{ finding.key }}"
"#;

fn finding(kind: &str, n: usize) -> Value {
    support::numbered_finding(kind, n)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let number = |index: usize, default: u64| -> u64 {
        args.get(index).map_or(default, |arg| {
            arg.parse()
                .unwrap_or_else(|_| panic!("argument {index} is a number, not {arg:?}"))
        })
    };
    assert!(
        support::nats_server_syncs(),
        "needs nats-server 2.10 or newer first on PATH (tests/run installs the pinned one)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("failover") => runtime.block_on(failover(number(1, 20) as usize, number(2, 10))),
        Some("journal") => runtime.block_on(journal(number(1, 5_000) as usize)),
        Some("partition-failover") => runtime.block_on(partition_failover(
            number(1, 12) as usize,
            number(2, 10),
            u32::try_from(number(3, 64)).expect("a partition count"),
        )),
        Some("replay") => runtime.block_on(replay(number(1, 10_000) as usize)),
        Some("partitions") => runtime.block_on(partitions(
            number(1, 10_000) as usize,
            u32::try_from(number(2, 8)).expect("a partition count"),
        )),
        _ => panic!(
            "usage: cargo bench -p quench-tests --bench cluster -- \
             failover|journal|partitions|partition-failover|replay …"
        ),
    }
}

/// A directory of playbooks and one per runner, under one temporary root.
struct Dirs {
    root: tempfile::TempDir,
}

impl Dirs {
    fn new(playbook: (&str, &str)) -> Dirs {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("playbooks")).expect("dir");
        std::fs::write(root.path().join("playbooks").join(playbook.0), playbook.1)
            .expect("playbook");
        Dirs { root }
    }

    fn playbooks(&self) -> std::path::PathBuf {
        self.root.path().join("playbooks")
    }

    fn runner(&self, name: &str) -> std::path::PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }
}

async fn get(listen: &str, path: &str) -> Option<Value> {
    support::api_get(listen, path, TOKEN).await
}

/// Whether the runner at `listen` answers for all [`PARKED`] runs, waiting.
async fn answers_for_the_parked_runs(listen: &str) -> bool {
    let Some(body) = get(listen, "/api/v1/runs?limit=500").await else {
        return false;
    };
    let runs = body["runs"].as_array().cloned().unwrap_or_default();
    runs.len() == PARKED && runs.iter().all(|run| run["status"] == "waiting")
}

async fn failover(samples: usize, lease: u64) {
    let servers = tokio::task::block_in_place(|| NatsServer::synced_cluster(3));
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let nats = urls.join(",");
    let jetstream = support::jetstream_ready(&urls[0]).await;
    let dirs = Dirs::new(("held.yaml", HELD));
    let config = |runner: &str| {
        support::cluster_config(&nats, runner, TOKEN, &format!("lease = \"{lease}s\""), "")
    };
    let mut runners: Vec<Service> = ["runner-a", "runner-b"]
        .into_iter()
        .map(|name| {
            tokio::task::block_in_place(|| {
                Service::launch_alive(&nats, &dirs.playbooks(), &dirs.runner(name), &config(name))
            })
        })
        .collect();
    let serving = |runners: &[Service]| {
        runners
            .iter()
            .position(|runner| support::http_status(&runner.listen, "/readyz") == Some(200))
    };
    support::eventually(Duration::from_secs(60), "a runner serves", || {
        serving(&runners).is_some()
    })
    .await;
    for n in 0..PARKED {
        support::gateway_client::publish_finding(&jetstream, &finding("bench.held", n)).await;
    }
    let active = serving(&runners).expect("serves");
    let listen = runners[active].listen.clone();
    support::eventually_async(Duration::from_secs(60), "the runs parked", || {
        answers_for_the_parked_runs(&listen)
    })
    .await;

    println!(
        "failover: {samples} samples, lease {lease}s, {PARKED} parked runs, 3 servers (synced)"
    );
    let (mut answered, mut ready) = (Vec::new(), Vec::new());
    for sample in 0..samples {
        let active = serving(&runners).expect("a runner serves");
        let other = 1 - active;
        runners[active].kill();
        let killed = Instant::now();
        let mut ready_at = None;
        loop {
            if ready_at.is_none()
                && support::http_status(&runners[other].listen, "/readyz") == Some(200)
            {
                ready_at = Some(killed.elapsed());
            }
            if ready_at.is_some() && answers_for_the_parked_runs(&runners[other].listen).await {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(120),
                "no failover in two minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        let ready_at = ready_at.expect("ready");
        println!(
            "  sample {sample:>3}: runner {} answers after {:>6.2} s (ready after {:>6.2} s)",
            ["a", "b"][other],
            took.as_secs_f64(),
            ready_at.as_secs_f64()
        );
        answered.push(took.as_secs_f64());
        ready.push(ready_at.as_secs_f64());
        tokio::task::block_in_place(|| runners[active].respawn_alive());
    }
    for (what, values) in [
        ("parked runs answerable", &answered),
        ("/readyz 200", &ready),
    ] {
        println!(
            "{what:>24}: min {:.2} s, p50 {:.2} s, p90 {:.2} s, max {:.2} s, mean {:.2} s",
            percentile(values, 0.0),
            percentile(values, 0.5),
            percentile(values, 0.9),
            percentile(values, 1.0),
            values.iter().sum::<f64>() / values.len().max(1) as f64
        );
    }
    drop(servers);
}

/// Parked runs each partition-failover sample must find answerable.
const PARKED_ACROSS: usize = 40;

/// Whether the runner at `listen` answers for all [`PARKED_ACROSS`] runs, waiting (every
/// partition answering).
async fn answers_for_every_partition(listen: &str) -> bool {
    let Some(body) = get(listen, "/api/v1/runs?limit=500").await else {
        return false;
    };
    let runs = body["runs"].as_array().cloned().unwrap_or_default();
    runs.len() == PARKED_ACROSS && runs.iter().all(|run| run["status"] == "waiting")
}

/// Partitions each runner serves (`/healthz`).
fn held(runners: &[Service]) -> Vec<usize> {
    runners
        .iter()
        .map(|runner| {
            support::http_get(&runner.listen, "/healthz")
                .and_then(|(_, text)| serde_json::from_str::<Value>(&text).ok())
                .and_then(|health| health["partitions"].as_array().map(Vec::len))
                .unwrap_or(0)
        })
        .collect()
}

async fn partition_failover(samples: usize, lease: u64, count: u32) {
    let servers = tokio::task::block_in_place(|| NatsServer::synced_cluster(3));
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let nats = urls.join(",");
    let jetstream = support::jetstream_ready(&urls[0]).await;
    let dirs = Dirs::new(("held.yaml", HELD));
    let (listens, peers) = support::peer_listens(3);
    let cluster = format!("lease = \"{lease}s\"\npartitions = {count}\n{peers}");
    let names = ["runner-a", "runner-b", "runner-c"];
    let mut runners: Vec<Service> = names
        .iter()
        .zip(listens)
        .map(|(name, listen)| {
            let config = support::cluster_config(&nats, name, TOKEN, &cluster, "");
            tokio::task::block_in_place(|| {
                Service::launch_alive_at(
                    listen,
                    &nats,
                    &dirs.playbooks(),
                    &dirs.runner(name),
                    &config,
                )
            })
        })
        .collect();
    let shared = |runners: &[Service]| {
        let held = held(runners);
        held.iter().sum::<usize>() == count as usize && held.iter().all(|share| *share > 0)
    };
    support::eventually(
        Duration::from_secs(120),
        "the runners share the partitions",
        || shared(&runners),
    )
    .await;
    for n in 0..PARKED_ACROSS {
        support::gateway_client::publish_finding(&jetstream, &finding("bench.held", n)).await;
    }
    let first = runners[0].listen.clone();
    support::eventually_async(Duration::from_secs(60), "the runs parked", || {
        answers_for_every_partition(&first)
    })
    .await;
    println!(
        "partition-failover: {samples} samples, lease {lease}s, {count} partitions, 3 runners, \
         {PARKED_ACROSS} parked runs, 3 servers (synced)"
    );
    let mut answered = Vec::new();
    for sample in 0..samples {
        let victim = sample % runners.len();
        let survivor = (victim + 1) % runners.len();
        let lost = held(&runners)[victim];
        runners[victim].kill();
        let killed = Instant::now();
        while !answers_for_every_partition(&runners[survivor].listen).await {
            assert!(
                killed.elapsed() < Duration::from_secs(120),
                "no failover in two minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        println!(
            "  sample {sample:>3}: {} killed ({lost} partitions): every parked run answerable \
             through {} after {:>6.2} s",
            names[victim],
            names[survivor],
            took.as_secs_f64()
        );
        answered.push(took.as_secs_f64());
        tokio::task::block_in_place(|| runners[victim].respawn_alive());
        support::eventually(Duration::from_secs(120), "the three share again", || {
            shared(&runners)
        })
        .await;
    }
    println!(
        "  every parked run answerable: min {:.2} s, p50 {:.2} s, p90 {:.2} s, max {:.2} s, mean {:.2} s",
        percentile(&answered, 0.0),
        percentile(&answered, 0.5),
        percentile(&answered, 0.9),
        percentile(&answered, 1.0),
        answered.iter().sum::<f64>() / answered.len().max(1) as f64
    );
    drop(servers);
}

async fn journal(findings: usize) {
    println!("journal: {findings} findings, published 500 at a time, one `note` step each");
    let single = intake(findings, 0).await;
    let cluster = intake(findings, 1).await;
    let three = intake(findings, 3).await;
    println!(
        "  single node (1 server, sled):                      {single:>8.0} findings/s\n  \
         cluster mode, 1 runner (3 servers, 3 replicas):     {cluster:>8.0} findings/s\n  \
         cluster mode, 3 runners (1 serving, 2 following):   {three:>8.0} findings/s\n  \
         ratio cluster (1 runner) / single: {:.2}",
        cluster / single
    );
}

/// Findings per second: with `runners` 0, one runner without `[cluster]` on one server; else
/// that many runners in cluster mode on three servers (one serves, the others follow).
async fn intake(findings: usize, runners: usize) -> f64 {
    let clustered = runners > 0;
    let servers =
        tokio::task::block_in_place(|| NatsServer::synced_cluster(if clustered { 3 } else { 1 }));
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let nats = urls.join(",");
    let jetstream = support::jetstream_ready(&urls[0]).await;
    let dirs = Dirs::new(("noted.yaml", NOTED));
    let runner = if clustered {
        let config = support::cluster_config(&nats, "runner-a", TOKEN, "", "");
        tokio::task::block_in_place(|| {
            Service::launch_alive(&nats, &dirs.playbooks(), &dirs.runner("a"), &config)
        })
    } else {
        let sha = support::hex(&<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
        let config = format!(
            "[nats]\nurl = \"{nats}\"\n\n[[api.tokens]]\nname = \"admin\"\nrole = \"admin\"\n\
             sha256 = \"{sha}\"\n"
        );
        tokio::task::block_in_place(|| {
            Service::launch(
                &nats,
                &dirs.playbooks(),
                &dirs.runner("a"),
                &[],
                Some(&config),
                &[],
            )
        })
    };
    let mut runner = runner;
    support::eventually(Duration::from_secs(60), "the runner serves", || {
        support::http_status(&runner.listen, "/readyz") == Some(200)
    })
    .await;
    // The streams exist: the runner stops (cleanly), and the findings wait in the stream, so
    // that what is measured is the runner taking them in, not the publisher.
    assert_eq!(
        tokio::task::block_in_place(|| runner.terminate()),
        Some(0),
        "a clean stop"
    );
    let all: Vec<Value> = (0..findings).map(|n| finding("bench.noted", n)).collect();
    let publishing = Instant::now();
    for chunk in all.chunks(500) {
        futures::future::join_all(
            chunk
                .iter()
                .map(|finding| support::gateway_client::publish_finding(&jetstream, finding)),
        )
        .await;
    }
    let published = publishing.elapsed();
    let started = Instant::now();
    tokio::task::block_in_place(|| runner.respawn_alive());
    support::eventually(Duration::from_secs(60), "the runner serves again", || {
        support::http_status(&runner.listen, "/readyz") == Some(200)
    })
    .await;
    let serving = started.elapsed();
    // The others stand by (and follow the journal).
    let _standing_by: Vec<Service> = (1..runners)
        .map(|index| {
            let name = format!("runner-{index}");
            let config = support::cluster_config(&nats, &name, TOKEN, "", "");
            tokio::task::block_in_place(|| {
                Service::launch_alive(&nats, &dirs.playbooks(), &dirs.runner(&name), &config)
            })
        })
        .collect();
    let completed = || {
        support::http_get(&runner.listen, "/metrics").map_or(0.0, |(_, text)| {
            support::metric(&text, "quench_runs_completed_total{playbook=\"noted\"}")
        })
    };
    while completed() < findings as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{} of {findings} runs completed in ten minutes",
            completed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed() - serving;
    // How many commits the store's committer took per write (per journal append in cluster
    // mode): its group commit.
    let (_, metrics) = support::http_get(&runner.listen, "/metrics").expect("metrics");
    let groups = support::metric(&metrics, "quench_store_commit_batches_count");
    let commits = support::metric(&metrics, "quench_store_commit_batches_sum");
    println!(
        "  {groups:.0} store writes of {:.1} commits on average",
        commits / groups.max(1.0)
    );
    println!(
        "  {}: published in {:.2} s ({:.0}/s); the runner served {:.2} s after its start and \
         ran them all in {:.2} s more",
        if clustered {
            format!("cluster, {runners} runner(s)")
        } else {
            "single".to_owned()
        },
        published.as_secs_f64(),
        findings as f64 / published.as_secs_f64(),
        serving.as_secs_f64(),
        took.as_secs_f64()
    );
    drop(runner);
    drop(servers);
    findings as f64 / took.as_secs_f64()
}

/// Throughput with several partitions: `findings` published as fast as the publisher goes
/// while 1, then 3, runners share `count` partitions on three servers, from the first publish
/// until every run completed (the runs completed counted over the runners' `/metrics`).
async fn partitions(findings: usize, count: u32) {
    println!(
        "partitions: {findings} findings over {count} partitions, published 500 at a time while \
         the runners serve, one `note` step each"
    );
    let one = shared(findings, count, 1).await;
    let three = shared(findings, count, 3).await;
    println!(
        "  1 runner:  {one:>8.0} findings/s\n  3 runners: {three:>8.0} findings/s\n  \
         ratio 3 / 1: {:.2}",
        three / one
    );
}

/// Findings per second with `runners` runners sharing `count` partitions.
async fn shared(findings: usize, count: u32, runners: usize) -> f64 {
    let servers = tokio::task::block_in_place(|| NatsServer::synced_cluster(3));
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let nats = urls.join(",");
    let jetstream = support::jetstream_ready(&urls[0]).await;
    let dirs = Dirs::new(("noted.yaml", NOTED));
    let (listens, peers) = support::peer_listens(runners);
    let cluster = format!("partitions = {count}\n{peers}");
    let running: Vec<Service> = listens
        .into_iter()
        .enumerate()
        .map(|(index, listen)| {
            let name = format!("runner-{index}");
            let config = support::cluster_config(&nats, &name, TOKEN, &cluster, "");
            tokio::task::block_in_place(|| {
                Service::launch_alive_at(
                    listen,
                    &nats,
                    &dirs.playbooks(),
                    &dirs.runner(&name),
                    &config,
                )
            })
        })
        .collect();
    // Every partition served, and by every runner a share.
    let held = || {
        running
            .iter()
            .map(|runner| {
                support::http_get(&runner.listen, "/metrics").map_or(0.0, |(_, text)| {
                    support::metric(&text, "quench_cluster_partitions_held")
                })
            })
            .collect::<Vec<f64>>()
    };
    support::eventually(
        Duration::from_secs(120),
        "the runners share the partitions",
        || {
            let held = held();
            held.iter().sum::<f64>() == f64::from(count) && held.iter().all(|share| *share > 0.0)
        },
    )
    .await;
    let completed = || {
        running
            .iter()
            .map(|runner| {
                support::http_get(&runner.listen, "/metrics").map_or(0.0, |(_, text)| {
                    support::metric(&text, "quench_runs_completed_total{playbook=\"noted\"}")
                })
            })
            .sum::<f64>()
    };
    let all: Vec<Value> = (0..findings).map(|n| finding("bench.noted", n)).collect();
    let started = Instant::now();
    for chunk in all.chunks(500) {
        futures::future::join_all(
            chunk
                .iter()
                .map(|finding| support::gateway_client::publish_finding(&jetstream, finding)),
        )
        .await;
    }
    let published = started.elapsed();
    while completed() < findings as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{} of {findings} runs completed in fifteen minutes",
            completed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    println!(
        "  {runners} runner(s): published in {:.2} s, all runs completed {:.2} s after the first \
         publish; shares {:?}",
        published.as_secs_f64(),
        took.as_secs_f64(),
        held()
    );
    drop(running);
    drop(servers);
    findings as f64 / took.as_secs_f64()
}

async fn replay(records: usize) {
    use quench_runner::cluster::journal::{Journal, Record, encode_writes};
    let servers = tokio::task::block_in_place(|| NatsServer::synced_cluster(3));
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let jetstream = support::jetstream_ready(&urls[0]).await;
    let journal = loop {
        match Journal::ensure(jetstream.clone(), 3).await {
            Ok(journal) => break journal,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let commit = |n: usize| Record::Commit {
        part: 0,
        parts: 1,
        bytes: encode_writes(&[(format!("runs/{n:08}").into_bytes(), Some(vec![7; 180]))]),
    };
    let mut writers = Vec::new();
    for partition in 0..4 {
        writers.push(
            journal
                .take_over(partition, "bench", 1)
                .await
                .expect("take over"),
        );
    }
    let appended = Instant::now();
    for n in 0..records {
        for writer in &mut writers {
            writer.append(&commit(n)).await.expect("append");
        }
    }
    println!(
        "replay: {records} records of partition 0 among {} in an R3 journal (appended in {:.1} s)",
        records * 4,
        appended.elapsed().as_secs_f64()
    );
    let mut by_consumer = f64::MAX;
    let mut from_leader = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let read = journal.replay(0, 0).await.expect("replay");
        assert_eq!(read.len(), records + 1);
        by_consumer = by_consumer.min(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let read = journal.replay_from_leader(0, 0).await.expect("replay");
        assert_eq!(read.len(), records + 1);
        from_leader = from_leader.min(started.elapsed().as_secs_f64());
    }
    println!(
        "  Journal::replay (ordered consumer):         {:>8.0} records/s ({by_consumer:.2} s)\n  \
         Journal::replay_from_leader (when it stalls): {:>8.0} records/s ({from_leader:.2} s)",
        (records + 1) as f64 / by_consumer,
        (records + 1) as f64 / from_leader,
    );
}
