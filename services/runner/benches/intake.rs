//! Intake benchmark (figures, not pass/fail). Run with
//! `cargo bench -p quench-runner --bench intake -- [FINDINGS]` (default 200,000). Needs
//! `nats-server` on the PATH; starts its own on a free port with a temporary JetStream directory.
//!
//! 1. Durable ingest rate: FINDINGS findings, whose playbook's first step is `note`, are
//!    published first; then `quench serve` (in-process) takes them in; the clock stops when the
//!    consumer has no pending or unacknowledged message (a finding is acked only after its run
//!    is committed).
//! 2. Raw ceiling on the same server and disk: consume FINDINGS 1 KiB messages, insert each into
//!    sled, flush + fdatasync per batch of 256, ack. Reports the ratio of the two rates.
//! 3. Latency at 100 findings/s: from publish to the run event of the executed first step, on a
//!    fresh store (before 1) and after the FINDINGS of 1. The first [`WARM_UP`] findings of each
//!    phase are sent first and reported apart (a new service's first commits create sled's
//!    files and segments); percentiles are over the 1000 after them.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use quench_runner::config::Config;
use tokio_util::sync::CancellationToken;

/// The allocator the `quench` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Findings sent at 100/s before the measured ones of a latency phase.
const WARM_UP: usize = 20;

const PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: bench-note
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: first
    uses: note
    with:
      message: "seen {{ finding.key }}"
"#;

fn finding(n: usize, published_ns: u128) -> Vec<u8> {
    serde_json::json!({
        "schema": "quench.finding/v1", "id": format!("bench-{n}"), "kind": "openai.api_key.leaked", "severity": "high",
        "title": "OpenAI key in a public repository", "detected_at": "2026-11-20T10:00:00Z",
        "source": {"scanner": "bench", "url": "https://github.com/acme/web/blob/main/.env#L3"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{n:08}"), "project_id": "proj_1"},
        "evidence": {"published_ns": published_ns.to_string()}
    })
    .to_string()
    .into_bytes()
}

/// The benchmark's own nats-server, stopped when dropped.
struct Nats(std::process::Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nats(dir: &Path) -> (Nats, String) {
    let ports = dir.join("ports");
    std::fs::create_dir_all(&ports).expect("ports dir");
    let child = Nats(
        std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.join("js"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts (apt-get install -y nats-server)"),
    );
    let started = Instant::now();
    loop {
        if let Some(entry) = std::fs::read_dir(&ports)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(Result::ok)
            && let Ok(text) = std::fs::read_to_string(entry.path())
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = value["nats"][0].as_str()
        {
            return (child, url.to_owned());
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server did not start"
        );
        #[expect(
            clippy::disallowed_methods,
            reason = "a plain thread polls a child process"
        )]
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn publish_all(
    jetstream: &jetstream::Context,
    count: usize,
    body: impl Fn(usize) -> (String, Vec<u8>),
) {
    let mut pending = std::collections::VecDeque::new();
    for n in 0..count {
        let (subject, payload) = body(n);
        pending.push_back(
            jetstream
                .publish(subject, payload.into())
                .await
                .expect("publish"),
        );
        if pending.len() >= 1024 {
            pending.pop_front().expect("ack").await.expect("stream ack");
        }
    }
    for ack in pending {
        ack.await.expect("stream ack");
    }
}

async fn wait_drained(jetstream: &jetstream::Context, stream: &str, consumer: &str, count: u64) {
    loop {
        if let Ok(stream) = jetstream.get_stream(stream).await
            && let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(consumer)
                .await
            && let Ok(info) = consumer.info().await
            && info.ack_floor.consumer_sequence >= count
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let (nats, url) = start_nats(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(&url).await.expect("connect");
        let jetstream = jetstream::new(client.clone());
        quench_runner::service::ensure_streams(&jetstream, &url, 1).await.expect("streams");

        let config = |state: &str| {
            let playbooks = dir.path().join("playbooks");
            std::fs::create_dir_all(&playbooks).expect("playbooks dir");
            std::fs::write(playbooks.join("bench.yaml"), PLAYBOOK).expect("playbook");
            let mut config = Config::default();
            config.nats.url = url.clone();
            config.store.path = dir.path().join(state);
            config.playbooks.dir = playbooks;
            config.api.listen = "127.0.0.1:0".to_owned();
            config
        };

        // 0. Latency at 100 findings/s on a fresh store.
        let shutdown = CancellationToken::new();
        let service = tokio::spawn(quench_runner::service::serve(config("fresh"), shutdown.clone()));
        latency(&client, &jetstream, 10 * count, &dir.path().join("fresh"), shutdown, service, "fresh store").await;

        // 1. Durable ingest rate.
        eprintln!("publishing {count} findings…");
        publish_all(&jetstream, count, |n| ("quench.findings.openai.api_key.leaked".to_owned(), finding(n, 0))).await;
        let shutdown = CancellationToken::new();
        let service = tokio::spawn(quench_runner::service::serve(config("state"), shutdown.clone()));
        let started = Instant::now();
        // The fresh-store phase took 1000 findings through the same consumer first.
        wait_drained(&jetstream, "QUENCH_FINDINGS", "quench-findings", (count + WARM_UP + 1000) as u64).await;
        let ingest = started.elapsed();
        let ingest_rate = count as f64 / ingest.as_secs_f64();
        println!("intake: {count} findings durably ingested (acked after commit) in {:.2} s: {ingest_rate:.0} findings/s", ingest.as_secs_f64());
        // Every run's four events (started, step started, step succeeded, completed; the
        // fresh-store phase's runs too) reach the events stream: none is shed, and the
        // latency phase starts on a quiet service.
        let expected = 4 * (count + WARM_UP + 1000) as u64;
        let waited = Instant::now();
        let mut stream = jetstream.get_stream("QUENCH_EVENTS").await.expect("events stream");
        let mut stored = 0;
        while waited.elapsed() < Duration::from_secs(300) {
            stored = stream.info().await.expect("stream info").state.messages;
            if stored >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "run events: {stored} of {expected} in QUENCH_EVENTS, {:.2} s after the last ack",
            waited.elapsed().as_secs_f64()
        );

        // Optionally let the service settle first (`BENCH_SETTLE_SECS`), to tell a post-burst
        // effect from one of the store's size.
        if let Some(settle) = std::env::var("BENCH_SETTLE_SECS").ok().and_then(|s| s.parse().ok()) {
            tokio::time::sleep(Duration::from_secs(settle)).await;
        }
        // 3. Latency at 100 findings/s, with the service running (on the store of 1).
        latency(&client, &jetstream, count, &dir.path().join("state"), shutdown, service, &format!("after {count} findings")).await;

        // 2. Raw ceiling: 1 KiB messages, sled insert, flush + fdatasync per 256, ack.
        let raw = jetstream::stream::Config {
            name: "BENCH_RAW".to_owned(),
            subjects: vec!["bench.raw".to_owned()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let stream = jetstream.create_stream(raw).await.expect("raw stream");
        let payload = vec![b'x'; 1024];
        publish_all(&jetstream, count, |_| ("bench.raw".to_owned(), payload.clone())).await;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("raw".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 4096,
                ..Default::default()
            })
            .await
            .expect("raw consumer");
        let db = sled::Config::new().path(dir.path().join("raw")).cache_capacity(64 * 1024 * 1024).open().expect("sled");
        let file = std::fs::File::open(dir.path().join("raw").join("db")).expect("sled log");
        let started = Instant::now();
        let mut messages = consumer.stream().max_messages_per_batch(256).messages().await.expect("messages").ready_chunks(256);
        let mut done = 0usize;
        while done < count {
            let chunk = messages.next().await.expect("chunk");
            let chunk: Vec<_> = chunk.into_iter().filter_map(Result::ok).collect();
            for message in &chunk {
                let info = message.info().expect("info");
                db.insert(info.stream_sequence.to_be_bytes(), message.payload.to_vec()).expect("insert");
            }
            db.flush().expect("flush");
            file.sync_data().expect("fdatasync");
            for message in &chunk {
                message.ack().await.expect("ack");
            }
            done += chunk.len();
        }
        let raw = started.elapsed();
        let raw_rate = count as f64 / raw.as_secs_f64();
        println!("raw ceiling: {count} 1 KiB messages → sled, flush + fdatasync per 256, ack: {:.2} s: {raw_rate:.0} messages/s", raw.as_secs_f64());
        println!("ratio: durable ingest / raw ceiling = {:.2}", ingest_rate / raw_rate);
    });
    drop(nats);
}

/// Publishes 1000 findings at 100/s to a running service and reports how long each took from
/// publish to its first step's run event; stops the service.
async fn latency(
    client: &async_nats::Client,
    jetstream: &jetstream::Context,
    first: usize,
    state: &Path,
    shutdown: CancellationToken,
    service: tokio::task::JoinHandle<Result<(), quench_runner::service::Error>>,
    label: &str,
) {
    let mut events = client
        .subscribe("quench.events.bench-note.step_succeeded")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let latencies = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while let Some(message) = events.next().await {
            let arrived = now_ns();
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
                continue;
            };
            let Some(run_id) = event["run_id"].as_str() else {
                continue;
            };
            latencies.push((run_id.to_owned(), arrived));
            if latencies.len() >= WARM_UP + 1000 {
                break;
            }
        }
        latencies
    });
    let mut sent = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for n in 0..WARM_UP + 1000 {
        tick.tick().await;
        let key = format!("openai.api_key.leaked:key_{:08}", first + n);
        let published = now_ns();
        sent.insert(key, published);
        jetstream
            .publish(
                "quench.findings.openai.api_key.leaked",
                finding(first + n, published).into(),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let arrivals = tokio::time::timeout(Duration::from_secs(30), latencies)
        .await
        .expect("events arrive")
        .expect("task");
    shutdown.cancel();
    let _ = service.await;
    // Map run → key through the store, now that the service has stopped.
    let store = quench_runner::store::Store::open(&quench_runner::store::StoreConfig::new(state))
        .expect("store");
    // (publish time, latency), in the order sent; the warm-up ones apart.
    let mut timed: Vec<(u128, f64)> = arrivals
        .iter()
        .filter_map(|(run, arrived)| {
            let run: quench_runner::engine::Run = store
                .get(quench_runner::store::Key::Run(run))
                .ok()
                .flatten()?;
            let published = sent.get(&run.key)?;
            Some((*published, (*arrived as f64 - *published as f64) / 1e6))
        })
        .collect();
    timed.sort_by_key(|(published, _)| *published);
    let warm_up: Vec<String> = timed[..WARM_UP.min(timed.len())]
        .iter()
        .map(|(_, latency)| format!("{latency:.1}"))
        .collect();
    let mut samples: Vec<f64> = timed
        .iter()
        .skip(WARM_UP)
        .map(|(_, latency)| *latency)
        .collect();
    samples.sort_by(f64::total_cmp);
    let percentile = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "latency ({label}): {} findings at 100/s, publish → first step executed (its run event received): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (warm-up, ms: {})",
        samples.len(),
        percentile(0.50),
        percentile(0.99),
        samples.last().copied().unwrap_or_default(),
        warm_up.join(" ")
    );
}
