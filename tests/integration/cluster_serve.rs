//! `quench serve` with `[cluster]` on a three-server NATS cluster: one runner holds the
//! partition and serves, the other stands by (alive, not ready); when the active one is killed
//! with `kill -9`, the other takes the partition over from the journal within seconds and every
//! acknowledged finding has its one run there, parked runs still parked, their deadlines firing
//! once; a runner stopped cleanly hands the partition over at once; the audit chain verifies on
//! the runner that serves last.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support;

const TOKEN: &str = "cluster-serve-token";

/// A gate whose deadline falls after the failover: the successor fires it.
const PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: held
on:
  finding:
    kinds: [test.cluster]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [lead@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 25s
      on_timeout: keep
  - id: record
    uses: note
    with:
      message: "{{ finding.key }}"
"#;

fn config(urls: &str, runner: &str) -> String {
    let sha = support::hex(&<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
    format!(
        r#"
[nats]
url = "{urls}"
replicas = 3

[cluster]
enabled = true
runner = "{runner}"
lease = "3s"

[[api.tokens]]
name = "admin"
role = "admin"
sha256 = "{sha}"
"#
    )
}

fn finding(n: usize) -> Value {
    json!({
        "schema": "quench.finding/v1", "id": format!("held-{n}"), "kind": "test.cluster",
        "key": format!("held:{n}"), "severity": "low", "title": "a finding",
        "detected_at": "2026-12-01T00:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{n}")},
    })
}

async fn get(listen: &str, path: &str) -> Option<Value> {
    let response = quench_common::http::http_client()
        .get(format!("http://{listen}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// Runs by key: (count, statuses).
async fn runs(listen: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let body = get(listen, "/api/v1/runs?limit=200")
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
    assert!(
        support::nats_server_syncs(),
        "cluster mode needs nats-server 2.10 or newer: tests/run puts the pinned one on PATH"
    );
    let servers = tokio::task::block_in_place(|| support::NatsServer::cluster(3));
    let urls: Vec<String> = servers.iter().map(support::NatsServer::url).collect();
    let jetstream = support::jetstream_ready(&urls[0]).await;
    let root = tempfile::tempdir().expect("tempdir");
    let playbooks = root.path().join("playbooks");
    std::fs::create_dir_all(&playbooks).expect("dir");
    std::fs::write(playbooks.join("held.yaml"), PLAYBOOK).expect("write");
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let (log_a, log_b) = (dir_a.join("serve.log"), dir_b.join("serve.log"));
    std::fs::create_dir_all(&dir_a).expect("dir");
    std::fs::create_dir_all(&dir_b).expect("dir");
    let nats = urls.join(",");

    // a starts first and serves; b stands by: alive, not ready, refusing the API.
    let mut a = tokio::task::block_in_place(|| {
        support::Service::launch_alive(&nats, &playbooks, &dir_a, &config(&nats, "runner-a"))
    });
    let _log_a = support::print_log_on_failure(&log_a);
    let listen_a = a.listen.clone();
    support::eventually(Duration::from_secs(30), "runner-a serves", || {
        support::http_status(&listen_a, "/readyz") == Some(200)
    })
    .await;
    let mut b = tokio::task::block_in_place(|| {
        support::Service::launch_alive(&nats, &playbooks, &dir_b, &config(&nats, "runner-b"))
    });
    let _log_b = support::print_log_on_failure(&log_b);
    let listen_b = b.listen.clone();
    let health = get(&listen_b, "/healthz")
        .await
        .expect("b answers /healthz");
    assert_eq!(health["status"], "standby");
    assert_eq!(support::http_status(&listen_b, "/readyz"), Some(503));
    assert_eq!(support::http_status(&listen_b, "/api/v1/runs"), Some(503));

    // Ten findings, each parked on its gate on a.
    for n in 0..10 {
        support::gateway_client::publish_finding(&jetstream, &finding(n)).await;
    }
    support::eventually_async(Duration::from_secs(30), "ten parked runs on a", || async {
        let runs = runs(&listen_a).await;
        runs.len() == 10 && runs.values().all(|statuses| statuses == &["waiting"])
    })
    .await;

    // kill -9 of a: b takes over after the lease (3 s) runs out.
    a.kill();
    let killed = Instant::now();
    support::eventually(Duration::from_secs(30), "runner-b serves", || {
        support::http_status(&listen_b, "/readyz") == Some(200)
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("failover: runner-b ready {failover:?} after runner-a was killed");
    assert!(failover < Duration::from_secs(15), "{failover:?}");
    let after = runs(&listen_b).await;
    assert_eq!(after.len(), 10, "every parked run is on b: {after:?}");
    assert!(after.values().all(|statuses| statuses == &["waiting"]));

    // Ten more findings, taken in by b; then every gate's deadline fires, once, on b.
    for n in 10..20 {
        support::gateway_client::publish_finding(&jetstream, &finding(n)).await;
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
    let timed_out = get(&listen_b, "/api/v1/audit?kind=gate_timed_out&limit=100")
        .await
        .expect("the audit log");
    let mut runs_timed_out: Vec<&str> = timed_out["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["run_id"].as_str())
        .collect();
    runs_timed_out.sort_unstable();
    let before = runs_timed_out.len();
    runs_timed_out.dedup();
    assert_eq!(
        (before, runs_timed_out.len()),
        (20, 20),
        "each deadline fired once"
    );

    // a comes back and stands by; b stopped cleanly hands over at once (no lease to wait out).
    tokio::task::block_in_place(|| a.respawn_alive());
    assert_eq!(support::http_status(&listen_a, "/readyz"), Some(503));
    let stopped = Instant::now();
    assert_eq!(tokio::task::block_in_place(|| b.terminate()), Some(0));
    support::eventually(Duration::from_secs(30), "runner-a serves again", || {
        support::http_status(&listen_a, "/readyz") == Some(200)
    })
    .await;
    let handover = stopped.elapsed();
    eprintln!("hand-over: runner-a ready {handover:?} after runner-b was stopped");
    let last = runs(&listen_a).await;
    assert_eq!(last.len(), 20, "{last:?}");
    assert!(last.values().all(|statuses| statuses == &["completed"]));
    let verified = get(&listen_a, "/api/v1/audit/verify")
        .await
        .expect("audit verify");
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(a.exited().is_none());
}
