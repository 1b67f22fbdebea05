//! `quench serve` with `[cluster] partitions = 8` on a three-server NATS cluster and three
//! runners as processes: the runners share the partitions; every finding, routed by its key,
//! has its one run; the admin API of any runner lists every partition's runs and answers for
//! any run (forwarded to the runner serving it); a runner killed with `kill -9` has its
//! partitions taken over by the others — parked runs still parked, their deadlines firing once
//! — and a runner that comes back gets its share back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, NatsServer};

const TOKEN: &str = "cluster-partitions-token";
/// The approver's token (its name is the approver's email).
const LEAD: &str = "cluster-partitions-lead";
pub(crate) const PARTITIONS: u32 = 8;
const RUNNERS: [&str; 3] = ["runner-a", "runner-b", "runner-c"];

/// A run that ends at once.
pub(crate) const NOTE: &str = r#"schema: quench.playbook/v1
name: noted
on:
  finding:
    kinds: [test.part]
steps:
  - id: record
    uses: note
    with:
      message: "{{ finding.key }}"
"#;

/// Runs that wait on a gate whose deadline falls after the failover.
pub(crate) const HELD: &str = r#"schema: quench.playbook/v1
name: held
on:
  finding:
    kinds: [test.held]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [lead@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 30s
      on_timeout: keep
  - id: record
    uses: note
    with:
      message: "{{ finding.key }}"
"#;

/// Runs that read their owner: resolved when they start, in whichever partition they are.
const OWNED: &str = r#"schema: quench.playbook/v1
name: owned
on:
  finding:
    kinds: [test.owned]
steps:
  - id: record
    uses: note
    with:
      message: "{{ owner.recipient }} via {{ owner.link }}"
"#;

pub(crate) fn finding(kind: &str, n: usize) -> Value {
    support::numbered_finding(kind, n)
}

pub(crate) async fn get(listen: &str, path: &str) -> Option<Value> {
    support::api_get(listen, path, TOKEN).await
}

/// Every run the runner at `listen` lists (all partitions), by key: (id, status) of each.
/// `None` while a partition is moving.
pub(crate) async fn runs(listen: &str) -> Option<BTreeMap<String, Vec<(String, String)>>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let page = get(listen, &format!("/api/v1/runs?limit=100{cursor}")).await?;
        for run in page["runs"].as_array().into_iter().flatten() {
            out.entry(run["key"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push((
                    run["id"].as_str().unwrap_or_default().to_owned(),
                    run["status"].as_str().unwrap_or_default().to_owned(),
                ));
        }
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return Some(out),
        }
    }
}

/// Whether `runs` holds exactly one run for each of `keys`, each with `status`.
pub(crate) fn one_run_each(
    runs: &BTreeMap<String, Vec<(String, String)>>,
    keys: &BTreeSet<String>,
    status: &str,
) -> bool {
    keys.iter().all(|key| {
        runs.get(key)
            .is_some_and(|runs| runs.len() == 1 && runs[0].1 == status)
    })
}

/// The partitions each runner says it serves (`/healthz`).
pub(crate) async fn shares(listens: &[String]) -> Vec<BTreeSet<u32>> {
    let mut shares = Vec::new();
    for listen in listens {
        let health = get(listen, "/healthz").await.unwrap_or(Value::Null);
        shares.push(
            health["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .filter_map(|n| u32::try_from(n).ok())
                .collect(),
        );
    }
    shares
}

/// Waits until the runners at `listens` serve every partition between them, each once, and
/// each runner at least one.
pub(crate) async fn shared_out(listens: &[String], what: &str) -> Vec<BTreeSet<u32>> {
    support::eventually_async(Duration::from_secs(60), what, || async {
        let shares = shares(listens).await;
        let total: usize = shares.iter().map(BTreeSet::len).sum();
        let all: BTreeSet<u32> = shares.iter().flatten().copied().collect();
        total == PARTITIONS as usize
            && all.len() == PARTITIONS as usize
            && shares.iter().all(|share| !share.is_empty())
    })
    .await;
    shares(listens).await
}

/// Asks the runner at `listen` to verify every partition's audit chain, and asserts each
/// verifies; returns the answer.
pub(crate) async fn every_chain_verifies(listen: &str) -> Value {
    let verified = get(listen, "/api/v1/audit/verify")
        .await
        .expect("verify answered");
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(
        verified["partitions"].as_array().map(Vec::len),
        Some(PARTITIONS as usize),
        "{verified}"
    );
    verified
}

/// Three NATS servers, a playbooks directory, and three runners' directories and configs.
pub(crate) struct Cluster {
    pub(crate) servers: Vec<NatsServer>,
    root: tempfile::TempDir,
    pub(crate) jetstream: async_nats::jetstream::Context,
    nats: String,
    playbooks: std::path::PathBuf,
    /// Appended to every runner's config.
    extra: String,
    /// Each runner's API listener, and the `[cluster] peers` line admitting them all.
    listens: Vec<String>,
    peers: String,
}

impl Cluster {
    async fn new(playbooks: &[(&str, &str)], extra: &str) -> Cluster {
        Cluster::on(NatsServer::cluster, playbooks, extra).await
    }

    /// [`Cluster::new`] on the servers `start` starts (synced, unadvertised, ...).
    pub(crate) async fn on(
        start: fn(usize) -> Vec<NatsServer>,
        playbooks: &[(&str, &str)],
        extra: &str,
    ) -> Cluster {
        assert!(
            support::nats_server_syncs(),
            "cluster mode needs nats-server 2.10 or newer: tests/run puts the pinned one on PATH"
        );
        let servers = tokio::task::block_in_place(|| start(3));
        let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
        let jetstream = support::jetstream_ready(&urls[0]).await;
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("playbooks");
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, text) in playbooks {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let (listens, peers) = support::peer_listens(RUNNERS.len());
        Cluster {
            listens,
            peers,
            servers,
            jetstream,
            nats: urls.join(","),
            playbooks: dir,
            extra: extra.to_owned(),
            root,
        }
    }

    /// Each runner's log.
    /// Prints every runner's log when the test fails while the guard lives.
    pub(crate) fn print_logs_on_failure(&self) -> impl Drop + use<> {
        support::print_logs_on_failure(self.logs())
    }

    pub(crate) fn logs(&self) -> Vec<std::path::PathBuf> {
        RUNNERS
            .iter()
            .map(|runner| self.root.path().join(runner).join("serve.log"))
            .collect()
    }

    /// Starts `runner`; returns once it answers `/healthz`.
    pub(crate) fn launch(&self, runner: &str) -> support::Service {
        self.launch_with(runner, &self.peers)
    }

    /// [`Cluster::launch`] with `peers` as its `[cluster] peers` line.
    fn launch_with(&self, runner: &str, peers: &str) -> support::Service {
        self.launch_on(runner, &self.nats, peers)
    }

    /// [`Cluster::launch`], reaching the servers at `nats` (proxies, say).
    pub(crate) fn launch_via(&self, runner: &str, nats: &str) -> support::Service {
        self.launch_on(runner, nats, &self.peers)
    }

    /// [`Cluster::launch`] on the servers at `nats`, with `peers` as its `[cluster] peers`.
    fn launch_on(&self, runner: &str, nats: &str, peers: &str) -> support::Service {
        let dir = self.root.path().join(runner);
        std::fs::create_dir_all(&dir).expect("dir");
        let config = support::cluster_config(
            nats,
            runner,
            TOKEN,
            &format!("lease = \"3s\"\npartitions = {PARTITIONS}\nsnapshot_every = 5\n{peers}"),
            &format!(
                "[[api.tokens]]\nname = \"lead@example.com\"\nrole = \"approver\"\nsha256 = \"{}\"\n{}",
                support::hex(&<sha2::Sha256 as sha2::Digest>::digest(LEAD.as_bytes())),
                self.extra
            ),
        );
        tokio::task::block_in_place(|| {
            let at = RUNNERS
                .iter()
                .position(|name| *name == runner)
                .expect("one of RUNNERS");
            support::Service::launch_alive_at(
                self.listens[at].clone(),
                nats,
                &self.playbooks,
                &dir,
                &config,
            )
        })
    }

    /// Publishes the findings of `kind` numbered `numbers`; returns their keys (`<kind>:<n>`).
    pub(crate) async fn publish(
        &self,
        kind: &str,
        numbers: impl IntoIterator<Item = usize>,
    ) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for n in numbers {
            support::gateway_client::publish_finding(&self.jetstream, &finding(kind, n)).await;
            keys.insert(format!("{kind}:{n}"));
        }
        keys
    }

    /// Publishes `count` findings of `kind` (keys `<kind>:0`…) and waits until the runner at
    /// `listen` lists each one's run parked at its gate; returns the keys.
    pub(crate) async fn park(&self, kind: &str, count: usize, listen: &str) -> BTreeSet<String> {
        let keys = self.publish(kind, 0..count).await;
        support::eventually_async(Duration::from_secs(60), "every run is parked", || async {
            runs(listen)
                .await
                .is_some_and(|runs| runs.len() == count && one_run_each(&runs, &keys, "waiting"))
        })
        .await;
        keys
    }

    /// Starts the three runners and waits until they share the partitions and are ready.
    async fn launch_all(&self) -> (Vec<support::Service>, Vec<String>) {
        self.all_serve(RUNNERS.iter().map(|runner| self.launch(runner)).collect())
            .await
    }

    /// Waits until `runners` (the three, started) share the partitions and are ready.
    pub(crate) async fn all_serve(
        &self,
        runners: Vec<support::Service>,
    ) -> (Vec<support::Service>, Vec<String>) {
        let listens: Vec<String> = runners.iter().map(|runner| runner.listen.clone()).collect();
        shared_out(&listens, "three runners share the partitions").await;
        for listen in &listens {
            support::eventually(Duration::from_secs(30), "every runner is ready", || {
                support::http_status(listen, "/readyz") == Some(200)
            })
            .await;
        }
        (runners, listens)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_runners_share_the_partitions_and_a_killed_ones_move_to_the_others() {
    let cluster = Cluster::new(
        &[
            ("noted.yaml", NOTE),
            ("held.yaml", HELD),
            ("owned.yaml", OWNED),
        ],
        "",
    )
    .await;
    let jetstream = cluster.jetstream.clone();
    let _print = cluster.print_logs_on_failure();
    let (mut runners, listens) = cluster.launch_all().await;
    let first = shares(&listens).await;

    // Findings of many keys: routed to every partition, each with its one run, listed alike
    // by every runner.
    let mut noted = BTreeSet::new();
    let mut held = BTreeSet::new();
    for n in 0..40 {
        support::gateway_client::publish_finding(&jetstream, &finding("test.part", n)).await;
        noted.insert(format!("test.part:{n}"));
    }
    for n in 0..10 {
        support::gateway_client::publish_finding(&jetstream, &finding("test.held", n)).await;
        held.insert(format!("test.held:{n}"));
    }
    // Hostile input does not stop routing: a finding that cannot be read goes to partition 0,
    // which dead-letters it with its reason; one that would not fit in a NATS message once
    // routed is dead-lettered by the router.
    let client = async_nats::connect(cluster.nats.split(',').next().unwrap_or_default())
        .await
        .expect("nats");
    let max_payload = client.server_info().max_payload;
    let raw = async_nats::jetstream::new(client);
    for body in [b"{not json".to_vec(), vec![b'x'; max_payload - 64]] {
        raw.publish("quench.findings.hostile", body.into())
            .await
            .expect("published")
            .await
            .expect("the stream took it");
    }
    for listen in &listens {
        support::eventually_async(
            Duration::from_secs(60),
            "every finding has its one run, listed by every runner",
            || async {
                runs(listen).await.is_some_and(|runs| {
                    runs.len() == 50
                        && one_run_each(&runs, &noted, "completed")
                        && one_run_each(&runs, &held, "waiting")
                })
            },
        )
        .await;
    }
    // A finding published straight to a partition that does not hold its key (past the
    // router) is refused there: its key could otherwise have runs in two partitions.
    let home = quench_runner::cluster::partition::of_key("test.part:999", PARTITIONS);
    raw.publish(
        format!(
            "quench.partition.{}.quench.findings.hostile",
            (home + 1) % PARTITIONS
        ),
        finding("test.part", 999).to_string().into(),
    )
    .await
    .expect("published")
    .await
    .expect("the routing stream took it");
    support::eventually_async(
        Duration::from_secs(30),
        "the three hostile findings dead-lettered",
        || async {
            let page = get(&listens[1], "/api/v1/dlq").await.unwrap_or(Value::Null);
            let reasons: Vec<&str> = page["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|message| message["original_subject"] == "quench.findings.hostile")
                .filter_map(|message| message["reason"].as_str())
                .collect();
            // The one too large to route is dead-lettered `too_large` by a router that would
            // republish it, or for what it is (unreadable) by partition 0's intake when the
            // router's own runner serves partition 0 and hands it over.
            let refused = |code: &str| reasons.iter().any(|reason| reason.starts_with(code));
            reasons.len() == 3
                && refused("misrouted: ")
                && reasons
                    .iter()
                    .filter(|reason| !reason.starts_with("misrouted: "))
                    .count()
                    == 2
        },
    )
    .await;
    // Findings of a partition the routing runner serves skip the routing stream.
    let handed_over: f64 = listens
        .iter()
        .filter_map(|listen| support::http_get(listen, "/metrics"))
        .map(|(_, text)| {
            support::metric(
                &text,
                "quench_cluster_routed_total{source=\"findings\",how=\"handed_over\"}",
            )
        })
        .sum();
    assert!(handed_over > 0.0, "some findings were handed over");
    let all = runs(&listens[0]).await.expect("runs");
    // The runs are spread: ids name their partitions, and more than one partition has runs.
    let spread: BTreeSet<u32> = all
        .values()
        .flatten()
        .filter_map(|(id, _)| quench_runner::cluster::partition::of_run_id(id, PARTITIONS))
        .collect();
    assert!(
        spread.len() > 3,
        "runs spread over the partitions: {spread:?}"
    );
    // Any runner shows any run: the one serving it, or forwarded there.
    for (id, _) in all.values().flatten().take(12) {
        for listen in &listens {
            let run = get(listen, &format!("/api/v1/runs/{id}"))
                .await
                .unwrap_or_else(|| panic!("{listen} shows run {id}"));
            assert_eq!(run["run"]["id"], id.as_str());
        }
    }
    // A decision through one runner for a run another serves: forwarded, and decided once.
    let (first_held, _) = all[&format!("test.held:{}", 0)][0].clone();
    let decided = quench_common::http::http_client()
        .post(format!(
            "http://{}/api/v1/runs/{first_held}/gates/decide/decision",
            listens[2]
        ))
        .bearer_auth(LEAD)
        .json(&json!({"choice": "keep"}))
        .send()
        .await
        .expect("decision answered");
    assert_eq!(decided.status(), 200, "{:?}", decided.text().await);
    held.remove("test.held:0");

    // runner-c dies: a and b take its partitions over; its parked runs are still parked there.
    runners[2].kill();
    let two = &listens[..2];
    let after = shared_out(two, "a and b serve every partition").await;
    for (before, now) in first.iter().zip(&after) {
        assert!(
            before.is_subset(now),
            "a runner keeps its own partitions: {before:?} → {now:?}"
        );
    }
    for n in 40..60 {
        support::gateway_client::publish_finding(&jetstream, &finding("test.part", n)).await;
        noted.insert(format!("test.part:{n}"));
    }
    support::eventually_async(
        Duration::from_secs(60),
        "findings after the failover have their runs; parked runs are still parked",
        || async {
            runs(&listens[0]).await.is_some_and(|runs| {
                runs.len() == 70
                    && one_run_each(&runs, &noted, "completed")
                    && one_run_each(&runs, &held, "waiting")
            })
        },
    )
    .await;

    // The gates time out (30 s after they opened): each deadline fires once, wherever its
    // partition is served now.
    support::eventually_async(
        Duration::from_secs(60),
        "every deadline fired once",
        || async {
            runs(&listens[1])
                .await
                .is_some_and(|runs| runs.len() == 70 && one_run_each(&runs, &held, "completed"))
        },
    )
    .await;

    // runner-c comes back: it gets a share again, and what it is given is served.
    runners[2].respawn_alive();
    let back = shared_out(&listens, "runner-c gets its share back").await;
    assert!(!back[2].is_empty());
    for n in 60..70 {
        support::gateway_client::publish_finding(&jetstream, &finding("test.part", n)).await;
        noted.insert(format!("test.part:{n}"));
    }
    support::eventually_async(
        Duration::from_secs(60),
        "runs after the rebalance",
        || async {
            runs(&listens[2])
                .await
                .is_some_and(|runs| runs.len() == 80 && one_run_each(&runs, &noted, "completed"))
        },
    )
    .await;

    // Owners recorded through one runner (the estate is partition 0's) are read by the runs of
    // every partition (each runner follows partition 0's journal).
    let http = quench_common::http::http_client();
    for n in 100..116 {
        let set = http
            .put(format!(
                "http://{}/api/v1/inventory/project_key:key_{n}/attributes",
                listens[n % 3]
            ))
            .bearer_auth(TOKEN)
            .json(&json!({"owner": "ann@example.com"}))
            .send()
            .await
            .expect("attributes answered");
        assert_eq!(set.status(), 200, "{:?}", set.text().await);
    }
    // Followers take what partition 0 committed within 5 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for n in 100..116 {
        support::gateway_client::publish_finding(&jetstream, &finding("test.owned", n)).await;
    }
    let owned = || async {
        let runs = runs(&listens[0]).await.unwrap_or_default();
        (100..116)
            .filter_map(|n| runs.get(&format!("test.owned:{n}")).cloned())
            .flatten()
            .filter(|(_, status)| status == "completed")
            .map(|(id, _)| id)
            .collect::<Vec<String>>()
    };
    support::eventually_async(Duration::from_secs(60), "the owned runs", || async {
        owned().await.len() == 16
    })
    .await;
    let owned_runs = owned().await;
    let mut partitions = BTreeSet::new();
    for id in &owned_runs {
        let run = get(&listens[1], &format!("/api/v1/runs/{id}"))
            .await
            .expect("the run");
        assert_eq!(run["owner"]["link"], "recorded", "{run}");
        assert_eq!(run["owner"]["recipient"], "ann@example.com", "{run}");
        partitions.insert(quench_runner::cluster::partition::of_run_id(id, PARTITIONS));
    }
    assert!(partitions.len() > 2, "the runs spread: {partitions:?}");

    // A playbook disabled through one runner is disabled in every partition: findings of its
    // kind start no run anywhere.
    let disabled = quench_common::http::http_client()
        .post(format!(
            "http://{}/api/v1/playbooks/noted/disable",
            listens[1]
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("disable answered");
    assert_eq!(disabled.status(), 200, "{:?}", disabled.text().await);
    for n in 70..80 {
        support::gateway_client::publish_finding(&jetstream, &finding("test.part", n)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = runs(&listens[0]).await.expect("runs");
    assert_eq!(now.len(), 96, "no run of a disabled playbook: {now:?}");

    // Every partition's audit chain verifies.
    let verified = every_chain_verifies(&listens[0]).await;
    assert!(verified["entries"].as_u64().unwrap_or(0) > 96, "{verified}");

    // Each partition has its own chain: an export names one, or is refused (not taken for the
    // whole); a partition's export verifies on its own.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(support::quench_bin())
            .args(args)
            .args(["--api", &format!("http://{}", listens[1]), "--token", TOKEN])
            .output()
            .expect("the CLI ran");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let exported = cluster.root.path().join("audit-3.jsonl");
    let exported_arg = exported.display().to_string();
    let (code, _, stderr) = cli(&["audit", "export", "--before", "4", "--out", &exported_arg]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("partition_needed") || stderr.contains("each with its own audit chain"),
        "{stderr}"
    );
    let (code, stdout, stderr) = cli(&[
        "audit",
        "export",
        "--before",
        "4",
        "--out",
        &exported_arg,
        "--partition",
        "3",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with("exported entries #1 to #3 to "),
        "{stdout}"
    );
    let (code, _, stderr) = cli(&["audit", "list", "--partition", "8"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("from 0 to 7"), "{stderr}");
    let (code, stdout, _) = cli(&["audit", "list", "--partition", "3", "--json"]);
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        partitions_of_entries(&listed),
        BTreeSet::from([3]),
        "partition 3's chain holds partition 3's runs"
    );

    // Where a browser cannot send the header (the console's list, its export link), the
    // query names the partition; a bad or contradicting one is refused.
    let http = quench_common::http::http_client();
    let get = |path: &str, partition: Option<&str>| {
        let mut request = http
            .get(format!("http://{}{path}", listens[2]))
            .bearer_auth(TOKEN);
        if let Some(partition) = partition {
            request = request.header("quench-partition", partition);
        }
        request.send()
    };
    let listed: Value = get("/api/v1/audit?partition=3", None)
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    assert_eq!(
        partitions_of_entries(&listed),
        BTreeSet::from([3]),
        "`?partition=3`: {listed}"
    );
    let export = get("/api/v1/audit/export?partition=3&before=4", None)
        .await
        .expect("answered");
    assert_eq!(export.status(), 200);
    assert_eq!(
        export.headers()["content-disposition"],
        "attachment; filename=\"quench-audit-partition-3-before-4.jsonl\""
    );
    let lines = export.text().await.expect("body");
    assert_eq!(
        lines.as_bytes(),
        std::fs::read(&exported)
            .expect("the CLI's export")
            .as_slice(),
        "the same export as the CLI's"
    );
    for (path, header, status, code) in [
        ("/api/v1/audit?partition=8", None, 404, "no_such_partition"),
        ("/api/v1/audit?partition=x", None, 400, "bad_partition"),
        ("/api/v1/audit?partition=3", Some("4"), 400, "bad_partition"),
        (
            "/api/v1/audit/export?partition=-1&before=4",
            None,
            400,
            "bad_partition",
        ),
    ] {
        let answer = get(path, header).await.expect("answered");
        assert_eq!(answer.status(), status, "{path}");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }

    for runner in &mut runners {
        assert_eq!(runner.terminate(), Some(0), "a runner stops cleanly");
    }
}

/// The partitions of the runs an audit page's entries name.
fn partitions_of_entries(page: &Value) -> BTreeSet<u32> {
    page["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["run_id"].as_str())
        .filter_map(|id| quench_runner::cluster::partition::of_run_id(id, PARTITIONS))
        .collect()
}

/// A gate whose deadline falls due while its runner is paused.
/// A console request with a session cookie (and, for a write, its CSRF token): status and body.
async fn console_call(
    method: reqwest::Method,
    listen: &str,
    path: &str,
    cookie: &str,
    write: Option<(&str, Value)>,
) -> (u16, Value) {
    let mut request = quench_common::http::http_client()
        .request(method, format!("http://{listen}{path}"))
        .header("cookie", cookie);
    if let Some((csrf, body)) = write {
        request = request.header("x-csrf-token", csrf).json(&body);
    }
    let answer = request.send().await.expect("answered");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// A console GET with a session cookie: status and body.
async fn console_get(listen: &str, path: &str, cookie: &str) -> (u16, Value) {
    console_call(reqwest::Method::GET, listen, path, cookie, None).await
}

/// Console sessions are shared by the runners (the KV bucket `QUENCH_CONSOLE`): a person
/// signed in through one runner is signed in on every runner — runs another runner serves,
/// lists gathered from every partition, a decision forwarded — and a sign-out through any
/// runner ends the session on all. The shared table holds no cookie, CSRF token or secret.
#[tokio::test(flavor = "multi_thread")]
async fn a_console_session_holds_on_every_runner_and_a_sign_out_ends_it_on_all() {
    let cluster = Cluster::new(&[("held.yaml", HELD)], "").await;
    let _print = cluster.print_logs_on_failure();
    let (_runners, listens) = cluster.launch_all().await;
    cluster.park("test.held", 12, &listens[0]).await;
    let ids: Vec<String> = runs(&listens[0])
        .await
        .expect("runs")
        .into_values()
        .flatten()
        .map(|(id, _)| id)
        .collect();

    // Signed in through runner-a, from its own page (the sign-in is served by partition 0's
    // runner, wherever that is: the browser's Host travels with it).
    let signed = quench_common::http::http_client()
        .post(format!("http://{}/console/session", listens[0]))
        .header("origin", format!("http://{}", listens[0]))
        .json(&json!({"token": LEAD}))
        .send()
        .await
        .expect("signed in");
    assert_eq!(signed.status(), 200);
    let cookie = signed
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let view: Value = signed.json().await.expect("json");
    let csrf = view["csrf"].as_str().expect("csrf").to_owned();
    let id_of_cookie = cookie.split_once('=').map(|(_, v)| v).unwrap_or_default();
    assert!(id_of_cookie.len() >= 43, "{cookie}");

    // Every runner knows the session, and answers for every run with it.
    for listen in &listens {
        let (status, view) = console_get(listen, "/console/session", &cookie).await;
        assert_eq!(status, 200);
        assert_eq!(view["signed_in"], true, "{listen}: {view}");
        assert_eq!(view["person"], "lead@example.com");
        assert_eq!(
            view["csrf"],
            csrf.as_str(),
            "the same CSRF token everywhere"
        );
        let (status, page) = console_get(listen, "/api/v1/runs?limit=100", &cookie).await;
        assert_eq!(status, 200, "{listen}: {page}");
        assert_eq!(page["runs"].as_array().map(Vec::len), Some(12), "{page}");
        for id in &ids {
            let (status, run) = console_get(listen, &format!("/api/v1/runs/{id}"), &cookie).await;
            assert_eq!(status, 200, "{listen} shows {id} to the session: {run}");
        }
    }
    // A decision with the session through runner-c, for a run another runner serves: the
    // CSRF token is checked where the run is served, and the decision is made once.
    let shares = shares(&listens).await;
    let elsewhere = ids
        .iter()
        .find(|id| {
            quench_runner::cluster::partition::of_run_id(id, PARTITIONS)
                .is_some_and(|partition| !shares[2].contains(&partition))
        })
        .expect("a run runner-c does not serve");
    let decide = format!("/api/v1/runs/{elsewhere}/gates/decide/decision");
    let (status, _) = console_call(
        reqwest::Method::POST,
        &listens[2],
        &decide,
        &cookie,
        Some(("forged", json!({"choice": "keep"}))),
    )
    .await;
    assert_eq!(status, 403, "a write without the session's CSRF token");
    let (status, body) = console_call(
        reqwest::Method::POST,
        &listens[2],
        &decide,
        &cookie,
        Some((&csrf, json!({"choice": "keep"}))),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The shared table: the person, and nothing that could act for them.
    let kv = cluster
        .jetstream
        .get_key_value("QUENCH_CONSOLE")
        .await
        .expect("the sessions bucket");
    let mut keys = kv.keys().await.expect("keys");
    let mut stored = String::new();
    while let Some(key) = futures::StreamExt::next(&mut keys).await {
        let key = key.expect("key");
        let value = kv.get(&key).await.expect("get").unwrap_or_default();
        stored.push_str(&key);
        stored.push_str(&String::from_utf8_lossy(&value));
    }
    assert!(stored.contains("lead@example.com"), "{stored}");
    for secret in [id_of_cookie, csrf.as_str(), LEAD] {
        assert!(
            !stored.contains(secret),
            "the sessions bucket holds {secret}"
        );
    }

    // Signed out through runner-b: the session is over on every runner.
    let (status, _) = console_call(
        reqwest::Method::POST,
        &listens[1],
        "/console/sign-out",
        &cookie,
        Some((&csrf, json!({}))),
    )
    .await;
    assert_eq!(status, 200);
    for listen in &listens {
        let (status, view) = console_get(listen, "/console/session", &cookie).await;
        assert_eq!(
            (status, &view["signed_in"]),
            (200, &json!(false)),
            "{listen}"
        );
        let (status, _) = console_get(listen, "/api/v1/runs", &cookie).await;
        assert_eq!(status, 401, "{listen} refuses the ended session");
        let (status, _) = console_get(listen, &format!("/api/v1/runs/{elsewhere}"), &cookie).await;
        assert_eq!(status, 401, "{listen} refuses the ended session for a run");
    }
}

/// A request is forwarded, with its caller's credentials, only to a runner whose advertised
/// address `[cluster] peers` allows; a runner advertising an address its own `peers` do not
/// allow is refused at start.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_forwards_only_to_its_peers_and_one_advertising_elsewhere_is_refused() {
    let cluster = Cluster::new(&[("held.yaml", HELD)], "").await;
    let _print = cluster.print_logs_on_failure();
    // runner-c allows runner-a and itself, not runner-b.
    let narrow = format!(
        "peers = [{:?}, {:?}]",
        cluster.listens[0], cluster.listens[2]
    );
    let _runners = [
        cluster.launch("runner-a"),
        cluster.launch("runner-b"),
        cluster.launch_with("runner-c", &narrow),
    ];
    let listens = cluster.listens.clone();
    let shares = shared_out(&listens, "three runners share the partitions").await;
    let http = quench_common::http::http_client();
    for partition in 0..PARTITIONS {
        let answer = http
            .get(format!("http://{}/api/v1/playbooks", listens[2]))
            .bearer_auth(TOKEN)
            .header("quench-partition", partition)
            .send()
            .await
            .expect("answered");
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        if shares[1].contains(&partition) {
            assert_eq!(
                (status, &body["error"]["code"]),
                (502, &json!("peer_not_allowed")),
                "partition {partition} is runner-b's: not forwarded ({body})"
            );
        } else {
            assert_eq!(status, 200, "partition {partition}: {body}");
        }
    }
    assert!(
        std::fs::read_to_string(&cluster.logs()[2])
            .unwrap_or_default()
            .contains("a runner advertises an address `[cluster] peers` does not allow"),
        "runner-c says why it did not forward"
    );

    // A playbook written to the directory is loaded by every partition (one watcher per
    // runner reloads all the partitions it serves).
    std::fs::write(cluster.playbooks.join("noted.yaml"), NOTE).expect("a new playbook");
    for partition in 0..PARTITIONS {
        support::eventually_async(
            Duration::from_secs(30),
            "every partition loads the new playbook",
            || async {
                let answer = http
                    .get(format!("http://{}/api/v1/playbooks", listens[0]))
                    .bearer_auth(TOKEN)
                    .header("quench-partition", partition)
                    .send()
                    .await;
                let Ok(answer) = answer else { return false };
                let list: Value = answer.json().await.unwrap_or(Value::Null);
                list["playbooks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|playbook| playbook["name"] == "noted")
            },
        )
        .await;
    }

    // runner-d advertises an address its own peers do not allow: refused at start, saying so.
    let dir = cluster.root.path().join("runner-d");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = support::cluster_config(
        &cluster.nats,
        "runner-d",
        TOKEN,
        &format!(
            "lease = \"3s\"\npartitions = {PARTITIONS}\n{}",
            cluster.peers
        ),
        "",
    );
    std::fs::write(dir.join("quench.toml"), config).expect("config");
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(support::quench_bin())
            .arg("serve")
            .arg("--config")
            .arg(dir.join("quench.toml"))
            .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
            .arg("--store")
            .arg(dir.join("state"))
            .arg("--playbooks")
            .arg(&cluster.playbooks)
            .output(),
    )
    .await
    .expect("runner-d stops at once")
    .expect("runner-d ran");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("which `[cluster] peers`") && stderr.contains("does not allow"),
        "{stderr}"
    );
}

const SHORT: &str = r#"schema: quench.playbook/v1
name: short
on:
  finding:
    kinds: [test.short]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [lead@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 12s
      on_timeout: keep
  - id: record
    uses: note
    with:
      message: "{{ finding.key }}"
"#;

/// The fencing test with partitions: runner-a paused (SIGSTOP) until b and c took its
/// partitions over and fired its gates' deadlines; resumed, a's own firing of them is refused
/// by each journal it appends to (the refused append is in its log), those partitions stop on
/// a — the process goes on — and a gets a share back. Each deadline fired once.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_runner_is_fenced_in_the_partitions_it_lost_and_serves_again() {
    let cluster = Cluster::new(&[("short.yaml", SHORT)], "").await;
    let _print = cluster.print_logs_on_failure();
    let (mut runners, listens) = cluster.launch_all().await;
    let a_share = shares(&listens[..1]).await.remove(0);
    let keys = cluster.park("test.short", 24, &listens[1]).await;
    let on_a = runs(&listens[1])
        .await
        .expect("runs")
        .values()
        .flatten()
        .filter(|(id, _)| {
            quench_runner::cluster::partition::of_run_id(id, PARTITIONS)
                .is_some_and(|partition| a_share.contains(&partition))
        })
        .count();
    assert!(on_a > 0, "runner-a serves some of the parked runs");

    runners[0].signal("STOP");
    shared_out(&listens[1..], "b and c serve every partition").await;
    support::eventually_async(
        Duration::from_secs(60),
        "b and c time every gate out",
        || async {
            runs(&listens[1])
                .await
                .is_some_and(|runs| runs.len() == 24 && one_run_each(&runs, &keys, "completed"))
        },
    )
    .await;

    runners[0].signal("CONT");
    support::eventually(Duration::from_secs(30), "a's append refused", || {
        let log = std::fs::read_to_string(&cluster.logs()[0]).unwrap_or_default();
        log.contains("fenced: its journal moved past sequence")
    })
    .await;
    assert!(runners[0].exited().is_none(), "runner-a goes on serving");
    shared_out(&listens, "runner-a gets a share again").await;
    support::eventually(Duration::from_secs(30), "runner-a is ready", || {
        support::http_status(&listens[0], "/readyz") == Some(200)
    })
    .await;
    let runs = runs(&listens[0]).await.expect("runs");
    assert_eq!(runs.len(), 24);
    assert!(one_run_each(&runs, &keys, "completed"), "{runs:?}");
    // Each deadline fired once: one `gate_timeout`-or-decision per run in its audit.
    for (id, _) in runs.values().flatten() {
        let run = get(&listens[0], &format!("/api/v1/runs/{id}"))
            .await
            .expect("the run");
        let ended = run["audit"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["kind"] == "run_completed")
            .count();
        assert_eq!(ended, 1, "{run}");
    }
    let verified = get(&listens[2], "/api/v1/audit/verify")
        .await
        .expect("verify");
    assert_eq!(verified["ok"], true, "{verified}");
    for runner in &mut runners {
        assert_eq!(runner.terminate(), Some(0), "a runner stops cleanly");
    }
}

/// `kill -9` of each of three runners in turn while leaked keys arrive: every key is revoked,
/// no key by two runs, and a DELETE repeated by a successor (in flight at a kill) found the
/// key gone.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_each_runner_under_load_revokes_every_key_once() {
    // A revoke in flight on a killed runner is repeated by its successor (at most a batch of
    // in-flight steps per kill).
    under_load(support::Service::kill, 3 * 8).await;
}

/// A rolling restart (SIGTERM, each runner in turn, each started again before the next) while
/// leaked keys arrive: the same, and no DELETE is repeated (each stop hands its partitions
/// over after its in-flight steps).
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_under_load_revokes_every_key_once() {
    under_load(
        |runner| {
            assert_eq!(runner.terminate(), Some(0), "a clean stop");
        },
        0,
    )
    .await;
}

/// Leaked keys arrive every 40 ms while each runner in turn is stopped by `stop`, the others
/// serve every partition, and it is started again and gets its share back. At most
/// `max_repeated` DELETEs are repeated (a successor's repeat of a call in flight at a stop).
async fn under_load(stop: fn(&mut support::Service), max_repeated: usize) {
    under_load_on(
        NatsServer::cluster,
        async |_: &mut Cluster, runners: &mut [support::Service], listens: &[String]| {
            for (stopped, runner) in runners.iter_mut().enumerate() {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                tokio::task::block_in_place(|| stop(runner));
                let others: Vec<String> = listens
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| *index != stopped)
                    .map(|(_, listen)| listen.clone())
                    .collect();
                shared_out(&others, "the two others serve every partition").await;
                tokio::task::block_in_place(|| runner.respawn_alive());
                shared_out(listens, "the restarted runner gets its share back").await;
            }
        },
        max_repeated,
    )
    .await;
}

/// Leaked keys arrive every 40 ms, on the servers `start` starts, while `fault` strikes the
/// cluster (its servers, its three runners, their listeners): then every key is revoked, each
/// by its one completed run, at most `max_repeated` DELETEs repeated (a successor's repeat of a
/// call in flight at the fault); every chain verifies; every runner stops cleanly.
pub(crate) async fn under_load_on(
    start: fn(usize) -> Vec<NatsServer>,
    fault: impl AsyncFnOnce(&mut Cluster, &mut [support::Service], &[String]),
    max_repeated: usize,
) {
    use crate::cluster_serve::{PROJECT, leak};
    use crate::support::openai_fake::{KeySeed, OpenAiFake, Role};
    const KEYS: usize = 600;
    let openai = OpenAiFake::start().await;
    openai.seed_project(PROJECT, "web");
    openai.seed_user(PROJECT, "user_owner", "owner@example.com", Role::Owner);
    for n in 0..KEYS {
        openai.seed_key(PROJECT, "user_owner", KeySeed::new(&format!("key_{n}")));
    }
    let extra = format!(
        "[openai]\nbase_url = \"{}\"\nadmin_key = \"{}\"\n",
        openai.base_url(),
        openai.admin_key()
    );
    let mut cluster = Cluster::on(start, &[("revoke.yaml", crate::safety::REVOKE)], &extra).await;
    let _print = cluster.print_logs_on_failure();
    let (mut runners, listens) = cluster.launch_all().await;
    let publisher = tokio::spawn({
        let jetstream = cluster.jetstream.clone();
        async move {
            for n in 0..KEYS {
                support::gateway_client::publish_finding_retrying(&jetstream, &leak(n)).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    fault(&mut cluster, &mut runners, &listens).await;
    publisher.await.expect("published");
    let keys: BTreeSet<String> = (0..KEYS)
        .map(|n| format!("openai:project_key:key_{n}"))
        .collect();
    support::eventually_async(
        Duration::from_secs(120),
        "every key's run completed",
        || async {
            runs(&listens[0])
                .await
                .is_some_and(|runs| runs.len() == KEYS && one_run_each(&runs, &keys, "completed"))
        },
    )
    .await;
    let mut repeated = 0;
    for n in 0..KEYS {
        let path = format!("/v1/organization/projects/{PROJECT}/api_keys/key_{n}");
        let deletes = openai.calls_to("DELETE", &path).len();
        assert!(
            (1..=2).contains(&deletes),
            "key_{n}: {deletes} DELETEs (one, or one repeated by a successor)"
        );
        if deletes == 2 {
            repeated += 1;
        }
        assert!(!openai.key_exists(PROJECT, &format!("key_{n}")), "key_{n}");
    }
    eprintln!("{repeated} DELETEs repeated");
    assert!(
        repeated <= max_repeated,
        "{repeated} DELETEs repeated, at most {max_repeated} expected"
    );
    every_chain_verifies(&listens[0]).await;
    every_run_ended_once_in_the_events(&cluster.jetstream, KEYS).await;
    for runner in &mut runners {
        assert_eq!(runner.terminate(), Some(0), "a runner stops cleanly");
    }
}

/// Every one of `runs` runs has exactly one `run_completed` event in `QUENCH_EVENTS`, and its
/// outcome one OCSF record: whatever runner committed the end, and whatever happened to it
/// before it published the event, the partition's next owner published what it had not.
async fn every_run_ended_once_in_the_events(
    jetstream: &async_nats::jetstream::Context,
    runs: usize,
) {
    use quench_proto::{RunEvent, RunEventKind};
    let completed = |events: &[RunEvent]| -> Vec<String> {
        events
            .iter()
            .filter(|event| event.kind == RunEventKind::RunCompleted)
            .map(|event| event.run_id.clone())
            .collect()
    };
    support::eventually_async(
        Duration::from_secs(60),
        "every run's run_completed event",
        || async {
            let events: Vec<RunEvent> = crate::run_events::stored(jetstream, "QUENCH_EVENTS").await;
            completed(&events).len() >= runs
        },
    )
    .await;
    let events: Vec<RunEvent> = crate::run_events::stored(jetstream, "QUENCH_EVENTS").await;
    let ended = completed(&events);
    let distinct: BTreeSet<&String> = ended.iter().collect();
    assert_eq!(
        (ended.len(), distinct.len()),
        (runs, runs),
        "one run_completed event per run"
    );
    let outcomes: BTreeSet<String> = completed_ids(&events);
    support::eventually_async(
        Duration::from_secs(30),
        "every run outcome's OCSF record",
        || async {
            let records: Vec<Value> = crate::run_events::stored(jetstream, "QUENCH_OCSF").await;
            let uids: Vec<&str> = records
                .iter()
                .filter(|record| record["class_uid"] == 2004)
                .filter_map(|record| record["metadata"]["uid"].as_str())
                .collect();
            let distinct: BTreeSet<String> = uids.iter().map(|uid| (*uid).to_owned()).collect();
            assert_eq!(uids.len(), distinct.len(), "no OCSF record twice");
            distinct == outcomes
        },
    )
    .await;
}

/// The ids of the `run_completed` events among `events`.
fn completed_ids(events: &[quench_proto::RunEvent]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|event| event.kind == quench_proto::RunEventKind::RunCompleted)
        .map(|event| event.id.clone())
        .collect()
}
