//! `quench serve` with `[cluster]` on a three-server NATS cluster: one runner holds the
//! partition and serves, the other stands by (alive, not ready); when the active one is killed
//! with `kill -9`, the other takes the partition over from the journal within seconds and every
//! acknowledged finding has its one run there, parked runs still parked, their deadlines firing
//! once; a runner stopped cleanly hands the partition over at once; the audit chain verifies on
//! the runner that serves last.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, NatsServer};

const TOKEN: &str = "cluster-serve-token";

/// A run that ends at once.
const NOTE: &str = r#"schema: quench.playbook/v1
name: noted
on:
  finding:
    kinds: [test.roll]
steps:
  - id: record
    uses: note
    with:
      message: "{{ finding.key }}"
"#;

/// A playbook `name` for findings of `kind` whose runs wait on a gate that times out after
/// `timeout` (`keep`), then note the key.
fn gated(name: &str, kind: &str, timeout: &str) -> String {
    format!(
        r#"schema: quench.playbook/v1
name: {name}
on:
  finding:
    kinds: [{kind}]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [lead@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: {timeout}
      on_timeout: keep
  - id: record
    uses: note
    with:
      message: "{{{{ finding.key }}}}"
"#
    )
}

/// A runner's config; `extra` is appended.
fn config(urls: &str, runner: &str, extra: &str) -> String {
    // A snapshot at each check (every 15 s) that finds a new commit: taking over after one
    // restores it, as the journal before it is purged.
    support::cluster_config(
        urls,
        runner,
        TOKEN,
        "lease = \"3s\"\nsnapshot_every = 1",
        extra,
    )
}

fn finding(n: usize) -> Value {
    finding_of("test.cluster", n)
}

fn finding_of(kind: &str, n: usize) -> Value {
    support::numbered_finding(kind, n)
}

async fn get(listen: &str, path: &str) -> Option<Value> {
    support::api_get(listen, path, TOKEN).await
}

/// Runs by key: their statuses.
async fn runs(listen: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let body = get(listen, "/api/v1/runs?limit=500")
        .await
        .unwrap_or(Value::Null);
    for run in body["runs"].as_array().into_iter().flatten() {
        out.entry(run["key"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(run["status"].as_str().unwrap_or_default().to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standing_by_runner_takes_the_partition_over_when_the_active_one_dies() {
    // Gates whose deadlines fall after the failover: the successor fires them.
    let setup = Setup::new(&[("held.yaml", &gated("held", "test.cluster", "25s"))]).await;
    let jetstream = &setup.jetstream;
    let _print_a = support::print_log_on_failure(&setup.logs[0]);
    let _print_b = support::print_log_on_failure(&setup.logs[1]);

    // a starts first and serves; b stands by: alive, not ready, refusing the API.
    let (mut a, mut b) = setup.launch_both().await;
    let (listen_a, listen_b) = (a.listen.clone(), b.listen.clone());
    let health = get(&listen_b, "/healthz")
        .await
        .expect("b answers /healthz");
    assert_eq!(health["status"], "standby");
    assert_eq!(support::http_status(&listen_b, "/readyz"), Some(503));
    assert_eq!(support::http_status(&listen_b, "/api/v1/runs"), Some(503));

    // Ten findings, each parked on its gate on a.
    for n in 0..10 {
        support::gateway_client::publish_finding(jetstream, &finding(n)).await;
    }
    support::eventually_async(Duration::from_secs(30), "ten parked runs on a", || async {
        let runs = runs(&listen_a).await;
        runs.len() == 10 && runs.values().all(|statuses| statuses == &["waiting"])
    })
    .await;

    // b follows the journal while it stands by (hot standby, every 5 s).
    let position = || async {
        get(&listen_b, "/healthz").await.expect("b answers")["journal_position"]
            .as_u64()
            .expect("a position")
    };
    support::eventually_async(Duration::from_secs(30), "b follows the journal", || async {
        position().await > 0
    })
    .await;
    let followed = position().await;

    // kill -9 of a: b takes over after the lease (3 s) runs out.
    a.kill();
    let killed = Instant::now();
    serves(&listen_b, "runner-b").await;
    let failover = killed.elapsed();
    eprintln!("failover: runner-b ready {failover:?} after runner-a was killed");
    assert!(failover < Duration::from_secs(15), "{failover:?}");
    let took_over = b
        .log_text()
        .lines()
        .find(|line| line.contains("took the partition over"))
        .map(str::to_owned)
        .expect("b took the partition over");
    let cached: u64 = took_over
        .split("cached=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|cached| cached.parse().ok())
        .expect("cached=");
    assert!(
        cached >= followed,
        "b's cache had followed the journal to {followed} before taking over: {took_over}"
    );
    let after = runs(&listen_b).await;
    assert_eq!(after.len(), 10, "every parked run is on b: {after:?}");
    assert!(after.values().all(|statuses| statuses == &["waiting"]));

    // Ten more findings, taken in by b; then every gate's deadline fires, once, on b.
    for n in 10..20 {
        support::gateway_client::publish_finding(jetstream, &finding(n)).await;
    }
    support::eventually_async(
        Duration::from_secs(60),
        "twenty runs, each completed by its deadline",
        || async {
            let runs = runs(&listen_b).await;
            runs.len() == 20 && runs.values().all(|statuses| statuses == &["completed"])
        },
    )
    .await;
    let timeouts = timeouts(&listen_b).await;
    assert_eq!(timeouts.len(), 20, "{timeouts:?}");
    assert!(
        timeouts.values().all(|count| *count == 1),
        "each deadline fired once: {timeouts:?}"
    );

    // b saved snapshots (the journal before each purged): a, whose store is older, must start
    // from the newest one when it takes over again.
    let (_, metrics) = support::http_get(&listen_b, "/metrics").expect("b's metrics");
    assert!(
        support::metric(&metrics, "quench_cluster_snapshots_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        support::metric(&metrics, "quench_cluster_partitions_held"),
        1.0
    );

    // a comes back and stands by; b stopped cleanly hands over at once (no lease to wait out).
    tokio::task::block_in_place(|| a.respawn_alive());
    assert_eq!(support::http_status(&listen_a, "/readyz"), Some(503));
    let stopped = Instant::now();
    assert_eq!(tokio::task::block_in_place(|| b.terminate()), Some(0));
    serves(&listen_a, "runner-a again").await;
    let handover = stopped.elapsed();
    eprintln!("hand-over: runner-a ready {handover:?} after runner-b was stopped");
    let log = a.log_text();
    let took_over = log
        .lines()
        .rfind(|line| line.contains("took the partition over"))
        .expect("a took the partition over");
    assert!(
        took_over.contains("snapshot="),
        "a started from b's snapshot: {took_over}"
    );
    let last = runs(&listen_a).await;
    assert_eq!(last.len(), 20, "{last:?}");
    assert!(last.values().all(|statuses| statuses == &["completed"]));
    let verified = get(&listen_a, "/api/v1/audit/verify")
        .await
        .expect("audit verify");
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(a.exited().is_none());
}

/// Gate timeouts in the audit log, by run: each run's count.
async fn timeouts(listen: &str) -> BTreeMap<String, usize> {
    let page = get(listen, "/api/v1/audit?kind=gate_timed_out&limit=1000")
        .await
        .expect("the audit log");
    let mut out = BTreeMap::new();
    for entry in page["entries"].as_array().into_iter().flatten() {
        *out.entry(entry["run_id"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    out
}

/// Three NATS servers, and two runners' directories on one playbooks directory.
struct Setup {
    servers: Vec<support::NatsServer>,
    _root: tempfile::TempDir,
    jetstream: async_nats::jetstream::Context,
    /// The servers' URLs, separated by commas.
    nats: String,
    playbooks: std::path::PathBuf,
    dirs: [std::path::PathBuf; 2],
    logs: [std::path::PathBuf; 2],
    /// Appended to each runner's config.
    extra: String,
}

impl Setup {
    async fn new(playbooks: &[(&str, &str)]) -> Setup {
        Setup::with(playbooks, "").await
    }

    /// [`Setup::new`] on servers that fsync every JetStream write before acknowledging it, as
    /// deployed.
    async fn synced(playbooks: &[(&str, &str)]) -> Setup {
        Setup::on(NatsServer::synced_cluster, playbooks, "").await
    }

    /// [`Setup::new`] on servers that do not tell clients about each other, so that a runner
    /// given proxies reaches the servers only through them.
    async fn unadvertised(playbooks: &[(&str, &str)]) -> Setup {
        Setup::on(NatsServer::unadvertised_cluster, playbooks, "").await
    }

    /// Runners' directories beside three servers of which only the first runs: no quorum, no
    /// JetStream, until the others are started.
    async fn without_quorum(playbooks: &[(&str, &str)]) -> Setup {
        Setup::on(
            |size| NatsServer::partly_started_cluster(size, 1),
            playbooks,
            "",
        )
        .await
    }

    /// [`Setup::new`], with `extra` appended to each runner's config.
    async fn with(playbooks: &[(&str, &str)], extra: &str) -> Setup {
        Setup::on(NatsServer::cluster, playbooks, extra).await
    }

    /// Runners' directories beside the servers `start` starts.
    async fn on(
        start: fn(usize) -> Vec<NatsServer>,
        playbooks: &[(&str, &str)],
        extra: &str,
    ) -> Setup {
        assert!(
            support::nats_server_syncs(),
            "cluster mode needs nats-server 2.10 or newer: tests/run puts the pinned one on PATH"
        );
        let servers = tokio::task::block_in_place(|| start(3));
        let urls: Vec<String> = servers.iter().map(support::NatsServer::url).collect();
        let jetstream = if servers.iter().all(NatsServer::running) {
            support::jetstream_ready(&urls[0]).await
        } else {
            let client = async_nats::connect(urls[0].as_str()).await.expect("nats");
            async_nats::jetstream::new(client)
        };
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("playbooks");
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, text) in playbooks {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let dirs = [root.path().join("a"), root.path().join("b")];
        for dir in &dirs {
            std::fs::create_dir_all(dir).expect("dir");
        }
        Setup {
            servers,
            jetstream,
            nats: urls.join(","),
            playbooks: dir,
            logs: [dirs[0].join("serve.log"), dirs[1].join("serve.log")],
            dirs,
            extra: extra.to_owned(),
            _root: root,
        }
    }

    /// Starts runner `index` (`runner-a`, `runner-b`); returns once it answers `/healthz`.
    fn launch(&self, index: usize) -> support::Service {
        self.launch_via(index, &self.nats)
    }

    /// [`Setup::launch`], reaching the servers at `nats` (proxies, say).
    fn launch_via(&self, index: usize, nats: &str) -> support::Service {
        let runner = ["runner-a", "runner-b"][index];
        tokio::task::block_in_place(|| {
            support::Service::launch_alive(
                nats,
                &self.playbooks,
                &self.dirs[index],
                &config(nats, runner, &self.extra),
            )
        })
    }

    /// Starts runner-a and waits until it serves, then runner-b (which stands by).
    async fn launch_both(&self) -> (support::Service, support::Service) {
        let a = self.launch(0);
        serves(&a.listen, "runner-a").await;
        (a, self.launch(1))
    }
}

/// Waits until the runner at `listen` serves (`/readyz` 200).
async fn serves(listen: &str, what: &str) {
    support::eventually(Duration::from_secs(30), &format!("{what} serves"), || {
        support::http_status(listen, "/readyz") == Some(200)
    })
    .await;
}

/// The fencing test: a runner paused (SIGSTOP) until another took its partition over resumes
/// with its gates' deadlines due; its commit of them is refused by the journal (the refused
/// append is in its log), it stops, and each deadline fired once, on the other runner.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_runner_that_resumes_is_fenced_and_stops() {
    // Gates whose deadlines fall due while the active runner is paused.
    let setup = Setup::new(&[("short.yaml", &gated("short", "test.short", "8s"))]).await;
    let jetstream = &setup.jetstream;
    let log_a = &setup.logs[0];
    let _print_a = support::print_log_on_failure(log_a);
    let _print_b = support::print_log_on_failure(&setup.logs[1]);
    let (mut a, b) = setup.launch_both().await;
    let (listen_a, listen_b) = (a.listen.clone(), b.listen.clone());
    for n in 0..5 {
        support::gateway_client::publish_finding(jetstream, &finding_of("test.short", n)).await;
    }
    support::eventually_async(Duration::from_secs(30), "five parked runs on a", || async {
        let runs = runs(&listen_a).await;
        runs.len() == 5 && runs.values().all(|statuses| statuses == &["waiting"])
    })
    .await;

    // Paused: b takes over after the lease, and fires the deadlines itself.
    a.signal("STOP");
    serves(&listen_b, "runner-b").await;
    support::eventually_async(Duration::from_secs(30), "b times the gates out", || async {
        let runs = runs(&listen_b).await;
        runs.len() == 5 && runs.values().all(|statuses| statuses == &["completed"])
    })
    .await;

    // Resumed: a's timers are due; its commit is refused, and it stops.
    a.signal("CONT");
    let resumed = Instant::now();
    let status = loop {
        if let Some(status) = a.exited() {
            break status;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "runner-a still runs after resuming"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(log_a).unwrap_or_default();
    assert_eq!(status.code(), Some(69), "{log}");
    assert!(
        log.contains("a commit was not appended to the partition's journal")
            && log.contains("fenced: its journal moved past sequence"),
        "the refused append: {log}"
    );
    assert!(
        log.contains("another runner of the cluster holds the partition now"),
        "{log}"
    );
    let timeouts = timeouts(&listen_b).await;
    assert_eq!(timeouts.len(), 5, "{timeouts:?}");
    assert!(timeouts.values().all(|count| *count == 1), "{timeouts:?}");
    let verified = get(&listen_b, "/api/v1/audit/verify")
        .await
        .expect("audit verify");
    assert_eq!(verified["ok"], true, "{verified}");
}

/// A rolling restart under load: findings keep coming while each runner in turn is stopped
/// (SIGTERM: it hands the partition over) and started again (it stands by); every finding has
/// exactly one run at the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_load_loses_and_repeats_nothing() {
    under_load(|runner| {
        assert_eq!(runner.terminate(), Some(0), "a clean stop");
    })
    .await;
}

/// `kill -9` of the serving runner, twice, while findings keep coming: what it had taken in and
/// not committed comes back (after `ack_wait`) to the runner that took over, what it had
/// committed is not taken in again; every finding has exactly one run at the end.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_intake_loses_and_repeats_nothing() {
    under_load(support::Service::kill).await;
}

/// Findings arrive every 20 ms while the serving runner is stopped by `stop`, twice (each
/// runner in turn), the other takes over and the stopped one is started again; at the end the
/// runner that serves has one completed run per finding and a verified audit chain.
async fn under_load(stop: fn(&mut support::Service)) {
    let setup = Setup::new(&[("noted.yaml", NOTE)]).await;
    let _print_a = support::print_log_on_failure(&setup.logs[0]);
    let _print_b = support::print_log_on_failure(&setup.logs[1]);
    let mut runners = [setup.launch(0), setup.launch(1)];
    let serving = |runners: &[support::Service; 2]| {
        runners
            .iter()
            .position(|runner| support::http_status(&runner.listen, "/readyz") == Some(200))
    };
    support::eventually(Duration::from_secs(30), "a runner serves", || {
        serving(&runners).is_some()
    })
    .await;

    const FINDINGS: usize = 300;
    let publisher = tokio::spawn({
        let jetstream = setup.jetstream.clone();
        async move {
            for n in 0..FINDINGS {
                support::gateway_client::publish_finding(&jetstream, &finding_of("test.roll", n))
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // Each runner in turn, the serving one first: stopped, the other takes over, started again.
    for _ in 0..2 {
        let active = serving(&runners).expect("a runner serves");
        let other = 1 - active;
        tokio::time::sleep(Duration::from_millis(800)).await;
        tokio::task::block_in_place(|| stop(&mut runners[active]));
        serves(&runners[other].listen, "the other runner").await;
        tokio::task::block_in_place(|| runners[active].respawn_alive());
    }
    publisher.await.expect("published");
    let active = serving(&runners).expect("a runner serves");
    let listen = runners[active].listen.clone();
    support::eventually_async(
        Duration::from_secs(60),
        "a run for every finding",
        || async { runs(&listen).await.len() == FINDINGS },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = runs(&listen).await;
    assert_eq!(runs.len(), FINDINGS);
    assert!(
        runs.values().all(|statuses| statuses == &["completed"]),
        "each once, completed: {runs:?}"
    );
    let verified = get(&listen, "/api/v1/audit/verify")
        .await
        .expect("audit verify");
    assert_eq!(verified["ok"], true, "{verified}");
}

pub(crate) const PROJECT: &str = "proj_cluster";

pub(crate) fn leak(n: usize) -> Value {
    json!({
        "schema": "quench.finding/v1", "id": format!("leak-{n}"), "kind": "openai.api_key.leaked",
        "key": format!("openai:project_key:key_{n}"), "severity": "high", "title": "a leaked key",
        "detected_at": "2026-12-01T00:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{n}"),
                     "project_id": PROJECT},
    })
}

/// `kill -9` of the serving runner while its revoke is in flight (OpenAI deleted the key; its
/// answer is slow): the runner that takes over finds the step's intent in the journal, calls
/// again with the same input, is told the key is gone and records `already_done` — the key is
/// deleted once; the keys leaked after the failover are each revoked once, by the successor.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_in_flight_on_a_killed_runner_is_not_repeated_by_its_successor() {
    use crate::support::openai_fake::{Fault, KeySeed, OpenAiFake, Role};
    const KEYS: usize = 6;
    let openai = OpenAiFake::start().await;
    openai.seed_project(PROJECT, "web");
    openai.seed_user(PROJECT, "user_owner", "owner@example.com", Role::Owner);
    for n in 0..KEYS {
        openai.seed_key(PROJECT, "user_owner", KeySeed::new(&format!("key_{n}")));
    }
    let path = |n: usize| format!("/v1/organization/projects/{PROJECT}/api_keys/key_{n}");
    openai.fail_next_on(&path(0), 1, Fault::SlowAnswer(Duration::from_secs(120)));
    let extra = format!(
        "[openai]\nbase_url = \"{}\"\nadmin_key = \"{}\"\n",
        openai.base_url(),
        openai.admin_key()
    );
    let setup = Setup::with(&[("revoke.yaml", crate::safety::REVOKE)], &extra).await;
    let _print_a = support::print_log_on_failure(&setup.logs[0]);
    let _print_b = support::print_log_on_failure(&setup.logs[1]);
    let (mut a, b) = setup.launch_both().await;
    let listen_b = b.listen.clone();

    support::gateway_client::publish_finding(&setup.jetstream, &leak(0)).await;
    support::eventually(
        Duration::from_secs(30),
        "OpenAI deleted key_0; its answer is on the way",
        || !openai.key_exists(PROJECT, "key_0"),
    )
    .await;
    a.kill();
    serves(&listen_b, "runner-b").await;
    for n in 1..KEYS {
        support::gateway_client::publish_finding(&setup.jetstream, &leak(n)).await;
    }
    support::eventually_async(
        Duration::from_secs(60),
        "every run completed on b",
        || async {
            let runs = runs(&listen_b).await;
            runs.len() == KEYS && runs.values().all(|statuses| statuses == &["completed"])
        },
    )
    .await;

    // key_0: the DELETE in flight at the kill, and the successor's repeat, which found it gone.
    assert_eq!(openai.calls_to("DELETE", &path(0)).len(), 2);
    for n in 1..KEYS {
        assert_eq!(openai.calls_to("DELETE", &path(n)).len(), 1, "key_{n}");
        assert!(!openai.key_exists(PROJECT, &format!("key_{n}")));
    }
    let body = get(&listen_b, "/api/v1/runs?limit=100")
        .await
        .expect("runs");
    let first = body["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|run| run["key"] == "openai:project_key:key_0")
        .expect("key_0's run");
    let run = get(
        &listen_b,
        &format!("/api/v1/runs/{}", first["id"].as_str().expect("id")),
    )
    .await
    .expect("the run");
    assert_eq!(run["steps"][0]["id"], "revoke", "{run}");
    assert_eq!(run["steps"][0]["status"], "already_done", "{run}");
    let kinds: Vec<&str> = run["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["kind"].as_str())
        .collect();
    // Two intents (the second records the repeat: `execution` 2), one result, one end.
    let count = |kind: &str| kinds.iter().filter(|seen| **seen == kind).count();
    assert_eq!(
        (
            count("step_intent"),
            count("step_result"),
            count("run_completed")
        ),
        (2, 1, 1),
        "{kinds:?}"
    );
    let verified = get(&listen_b, "/api/v1/audit/verify")
        .await
        .expect("audit verify");
    assert_eq!(verified["ok"], true, "{verified}");
}

/// The server that leads the journal stream: its index (servers are named n0, n1, n2).
pub(crate) async fn journal_leader(jetstream: &async_nats::jetstream::Context) -> usize {
    let mut stream = jetstream
        .get_stream(quench_runner::cluster::journal::STREAM)
        .await
        .expect("the journal stream");
    let info = stream.info().await.expect("info");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .expect("a leader");
    leader
        .trim_start_matches('n')
        .parse()
        .expect("servers are named n0, n1, n2")
}

/// `kill -9` of the NATS server that leads the journal stream while findings arrive (servers
/// that fsync every write, as deployed): the
/// cluster elects another leader, and whichever runner serves afterwards (the same one if it
/// rode the election out, the other if the serving one stopped: it is started again, as its
/// supervisor would) has one completed run for every finding; the audit chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn the_loss_of_the_journal_streams_leader_loses_and_repeats_nothing() {
    let mut setup = Setup::synced(&[("noted.yaml", NOTE)]).await;
    let _print_a = support::print_log_on_failure(&setup.logs[0]);
    let _print_b = support::print_log_on_failure(&setup.logs[1]);
    let mut runners = {
        let (a, b) = setup.launch_both().await;
        [a, b]
    };
    let urls: Vec<String> = setup.nats.split(',').map(str::to_owned).collect();
    let client = async_nats::connect(urls.clone()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);

    const FINDINGS: usize = 200;
    let publisher = tokio::spawn({
        let jetstream = jetstream.clone();
        async move {
            for n in 0..FINDINGS {
                support::gateway_client::publish_finding_retrying(
                    &jetstream,
                    &finding_of("test.roll", n),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = journal_leader(&jetstream).await;
    let killed = Instant::now();
    tokio::task::block_in_place(|| setup.servers[leader].stop());
    eprintln!("killed n{leader}, the journal stream's leader");

    publisher.await.expect("published");
    // A runner that stopped (it could not append, or lost its lease) is started again, as its
    // supervisor would; the one that serves at the end has every run.
    let listen = loop {
        for runner in &mut runners {
            if runner.exited().is_some() {
                tokio::task::block_in_place(|| runner.respawn_alive());
            }
        }
        let mut done = None;
        for runner in &runners {
            if support::http_status(&runner.listen, "/readyz") == Some(200) {
                let runs = runs(&runner.listen).await;
                if runs.len() == FINDINGS {
                    done = Some((runner.listen.clone(), runs));
                }
            }
        }
        if let Some((listen, runs)) = done {
            assert!(
                runs.values().all(|statuses| statuses == &["completed"]),
                "each once, completed: {runs:?}"
            );
            break listen;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "no runner has a run for every finding two minutes after the leader was killed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "every finding has its run {:?} after the leader was killed",
        killed.elapsed()
    );
    let verified = get(&listen, "/api/v1/audit/verify")
        .await
        .expect("audit verify");
    assert_eq!(verified["ok"], true, "{verified}");
    let starts: Vec<usize> = runners
        .iter()
        .map(|runner| runner.log_text().matches("quench is serving").count())
        .collect();
    eprintln!("times each runner served (a, b): {starts:?}");
}

/// A network split between the serving runner and the whole cluster (every connection through
/// its proxies closed, new ones refused): it cannot renew its lease, stops after one lease
/// (exit 69) without acknowledging anything it could not append, and the other runner takes
/// the partition over with the parked runs and fires their deadlines once. Healed, the first
/// one comes back and stands by.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_split_from_the_cluster_stops_and_the_other_takes_over() {
    let setup = Setup::unadvertised(&[("held.yaml", &gated("held", "test.cluster", "20s"))]).await;
    let _print_a = support::print_log_on_failure(&setup.logs[0]);
    let _print_b = support::print_log_on_failure(&setup.logs[1]);
    let upstreams: Vec<String> = setup
        .nats
        .split(',')
        .map(|url| url.trim_start_matches("nats://").to_owned())
        .collect();
    let split = support::split::Split::start(&upstreams).await;
    let mut a = setup.launch_via(0, &split.nats_urls());
    serves(&a.listen, "runner-a").await;
    let b = setup.launch(1);
    let (listen_a, listen_b) = (a.listen.clone(), b.listen.clone());
    for n in 0..5 {
        support::gateway_client::publish_finding(&setup.jetstream, &finding(n)).await;
    }
    support::eventually_async(Duration::from_secs(30), "five parked runs on a", || async {
        let runs = runs(&listen_a).await;
        runs.len() == 5 && runs.values().all(|statuses| statuses == &["waiting"])
    })
    .await;

    split.cut();
    let cut = Instant::now();
    // a gives the partition up once its lease would have expired, not when a late answer says
    // so: its renewals get no longer than the lease has left (3 s here).
    support::eventually(
        Duration::from_secs(30),
        "runner-a gives the partition up",
        || {
            a.log_text()
                .contains("could not be renewed for a whole lease")
        },
    )
    .await;
    let stepped_down = cut.elapsed();
    serves(&listen_b, "runner-b").await;
    eprintln!(
        "runner-a gave the partition up {stepped_down:?} and runner-b served {:?} after the split",
        cut.elapsed()
    );
    assert!(
        stepped_down < Duration::from_secs(6),
        "runner-a held on {stepped_down:?} after the split, with a lease of 3 s"
    );
    let status = loop {
        if let Some(status) = a.exited() {
            break status;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "runner-a still runs a minute after the split; its log:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("runner-a stopped {:?} after the split", cut.elapsed());
    let log = a.log_text();
    assert_eq!(status.code(), Some(69), "{log}");
    assert!(
        log.contains("could not be renewed for a whole lease"),
        "runner-a says why it stopped: {log}"
    );
    // b has the parked runs, and fires their deadlines once.
    let after = runs(&listen_b).await;
    assert_eq!(after.len(), 5, "{after:?}");

    split.heal();
    tokio::task::block_in_place(|| a.respawn_alive());
    let health = get(&listen_a, "/healthz").await.expect("a answers");
    assert_eq!(health["status"], "standby");
    support::eventually_async(Duration::from_secs(60), "b times the gates out", || async {
        let runs = runs(&listen_b).await;
        runs.len() == 5 && runs.values().all(|statuses| statuses == &["completed"])
    })
    .await;
    let timeouts = timeouts(&listen_b).await;
    assert_eq!(timeouts.len(), 5, "{timeouts:?}");
    assert!(timeouts.values().all(|count| *count == 1), "{timeouts:?}");
    let verified = get(&listen_b, "/api/v1/audit/verify")
        .await
        .expect("audit verify");
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(support::http_status(&listen_a, "/readyz"), Some(503));
}

/// Servers and runners started together (a StatefulSet's pods): a runner that starts while the
/// cluster has no quorum (one of three servers up, JetStream not answering) waits for it,
/// saying so, and serves once the other two are up, instead of exiting with "JetStream is not
/// available".
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_started_before_the_cluster_has_a_quorum_waits_for_it() {
    let mut setup = Setup::without_quorum(&[("noted.yaml", NOTE)]).await;
    let _print_a = support::print_log_on_failure(&setup.logs[0]);
    let mut others = setup.servers.split_off(1);
    let back = tokio::spawn(async move {
        // Longer than a JetStream request waits for its answer (5 s).
        tokio::time::sleep(Duration::from_secs(8)).await;
        tokio::task::block_in_place(|| others.iter_mut().for_each(NatsServer::start_configured));
        others
    });
    let started = Instant::now();
    let a = setup.launch(0);
    serves(&a.listen, "runner-a").await;
    assert!(
        started.elapsed() > Duration::from_secs(8),
        "served before the quorum was there: {:?}",
        started.elapsed()
    );
    assert!(
        a.log_text().contains("JetStream does not answer yet"),
        "{}",
        a.log_text()
    );
    let _servers = back.await.expect("servers started");
    support::gateway_client::publish_finding(&setup.jetstream, &finding_of("test.roll", 1)).await;
    support::eventually_async(Duration::from_secs(30), "the finding's run", || async {
        runs(&a.listen).await.len() == 1
    })
    .await;
}
