//! quench on a three-server NATS cluster: `[nats] url` lists the servers and `[nats] replicas =
//! 3` keeps three copies of every stream, so killing the server quench is connected to loses no
//! finding and runs none twice; `replicas = 3` against a single server is refused at start with
//! what to do.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support;

const TOKEN: &str = "cluster-test-token";

fn config(urls: &str, replicas: usize) -> String {
    let sha = support::hex(&<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
    format!(
        r#"
[nats]
url = "{urls}"
replicas = {replicas}

[[api.tokens]]
name = "viewer"
role = "viewer"
sha256 = "{sha}"
"#
    )
}

fn finding(n: usize) -> Value {
    json!({
        "schema": "quench.finding/v1", "id": format!("cluster-{n}"), "kind": "test.cluster",
        "key": format!("cluster:{n}"), "severity": "low", "title": "a finding",
        "detected_at": "2026-12-01T00:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{n}")},
    })
}

/// Runs by key, from the API.
async fn runs(listen: &str) -> BTreeMap<String, usize> {
    let response = quench_common::http::http_client()
        .get(format!("http://{listen}/api/v1/runs?limit=200"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the API answers");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let mut out = BTreeMap::new();
    for run in body["runs"].as_array().into_iter().flatten() {
        *out.entry(run["key"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_lost_from_the_cluster_loses_and_repeats_nothing() {
    let mut servers = tokio::task::block_in_place(|| support::NatsServer::cluster(3));
    let urls: Vec<String> = servers.iter().map(support::NatsServer::url).collect();
    let jetstream = support::jetstream_ready(&urls[1]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir_all(&playbooks).expect("dir");
    std::fs::write(
        playbooks.join("note.yaml"),
        "schema: quench.playbook/v1\nname: note\non:\n  finding:\n    kinds: [test.cluster]\n\
         steps:\n  - id: record\n    uses: note\n    with:\n      message: \"{{ finding.key }}\"\n",
    )
    .expect("write");
    let config = config(&urls.join(","), 3);
    // The service is given only the first server (the flag wins over the config's list); it
    // learns the others from the cluster, as async-nats does, and goes to them when it goes.
    let service = tokio::task::block_in_place(|| {
        support::Service::launch(&urls[0], &playbooks, dir.path(), &[], Some(&config), &[])
    });
    let log = dir.path().join("serve.log");
    let _print_log = support::print_log_on_failure(&log);
    let stream = jetstream
        .get_stream("QUENCH_FINDINGS")
        .await
        .expect("the findings stream");
    assert_eq!(stream.cached_info().config.num_replicas, 3);

    for n in 0..20 {
        support::gateway_client::publish_finding(&jetstream, &finding(n)).await;
    }
    let listen = service.listen.clone();
    support::eventually_async(Duration::from_secs(30), "the first 20 runs", || async {
        runs(&listen).await.len() == 20
    })
    .await;

    // The server the service connected to goes away; scanners publish through another.
    // While the cluster elects the stream's new leader, a publish can find no stream (no
    // responders); a scanner retries it with the same id, and so does this one.
    tokio::task::block_in_place(|| servers[0].stop());
    for n in 20..40 {
        support::gateway_client::publish_finding_retrying(&jetstream, &finding(n)).await;
    }
    // Some are published again (a scanner retrying): JetStream drops them by id.
    for n in 15..25 {
        support::gateway_client::publish_finding_retrying(&jetstream, &finding(n)).await;
    }
    support::eventually_async(Duration::from_secs(60), "all 40 runs", || async {
        runs(&listen).await.len() == 40
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = runs(&listen).await;
    assert_eq!(runs.len(), 40, "{runs:?}");
    assert!(
        runs.values().all(|count| *count == 1),
        "each once: {runs:?}"
    );
    assert!(
        service.log_text().contains("NATS connection lost"),
        "the service saw its server go"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_on_one_server_are_refused_at_start() {
    let nats = support::NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("quench.toml");
    std::fs::write(&path, config(&nats.url(), 3)).expect("write");
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(support::quench_bin())
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
            .arg("--store")
            .arg(dir.path().join("state"))
            .arg("--playbooks")
            .arg(dir.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("quench serve runs")
    });
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("`[nats] replicas = 3` needs a JetStream cluster of at least 3 servers"),
        "{text}"
    );
}
