//! Console page timings (figures, not pass/fail): the server time of the approval inbox and of
//! run searches with RUNS stored runs (default 1,000,000) of which GATES (default 10,000) wait
//! on an approval gate. Run with
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p quench-tests --bench console -- [RUNS] [GATES]
//! ```
//!
//! The store is filled through the real engine in this process (findings taken in by
//! `Engine::ingest`, 1,000 at a time: GATES runs park on a gate whose approvers are
//! `ann@example.com` and a group, the rest complete at once), then the release `quench serve`
//! opens it with its own nats-server, and each page is requested over HTTP on loopback, one
//! request at a time: 10 warm-up requests, then 100 measured. The figure is the time from
//! sending the request to the last byte of the answer (p50, p95, max). Needs the pinned
//! nats-server on the PATH, as the integration tests do.

#[path = "../integration/support/mod.rs"]
#[expect(
    dead_code,
    unused_imports,
    reason = "the integration tests' support, shared as is: the bench uses part of it"
)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quench_proto::Finding;
use quench_runner::engine::{Actions, Engine, EngineConfig, SystemClock};
use quench_runner::store::{Store, StoreConfig};
use sha2::{Digest, Sha256};

use support::{NatsServer, Service, hex};

const BATCH: usize = 1_000;
const WARM_UP: usize = 10;
const SAMPLES: usize = 100;
const TOKEN: &str = "console-bench-token";

const GATE: &str = r#"schema: quench.playbook/v1
name: gate
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [ann@example.com, "{{ finding.owner.email }}"]
      question: "Revoke {{ finding.resource.id }}?"
      choices: [revoke, keep]
      timeout: 30d
      on_timeout: keep
"#;

const NOTE: &str = r#"schema: quench.playbook/v1
name: note
on:
  finding:
    kinds: [openai.api_key.unused]
steps:
  - id: say
    uses: note
    with:
      message: "{{ finding.resource.id }}"
"#;

fn finding(n: usize, gated: bool) -> Finding {
    let kind = if gated {
        "openai.api_key.leaked"
    } else {
        "openai.api_key.unused"
    };
    let json = serde_json::json!({
        "schema": "quench.finding/v1", "id": format!("bench-{n}"), "kind": kind,
        "key": format!("openai:key:key_{n:08}"),
        "severity": "high", "title": format!("OpenAI key {n} in repository web-{}", n % 977),
        "detected_at": "2026-11-20T10:00:00Z",
        "source": {"scanner": "bench"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{n:08}"), "project_id": "proj_1"},
        "owner": {"email": format!("owner{}@example.com", n % 5000)}
    });
    Finding::parse(
        json.to_string().as_bytes(),
        quench_proto::DEFAULT_MAX_FINDING_BYTES,
    )
    .expect("valid finding")
}

async fn fill(dir: &std::path::Path, runs: usize, gates: usize) -> Duration {
    let store = Store::open(&StoreConfig::new(dir)).expect("store opens");
    let engine = Engine::new(
        store,
        Arc::new(SystemClock),
        Actions::new(),
        EngineConfig {
            max_inflight_runs: 512,
            ..EngineConfig::default()
        },
    );
    let playbooks = [GATE, NOTE]
        .iter()
        .map(|source| {
            quench_runner::playbook::compile(source)
                .playbook
                .expect("bench playbook compiles")
        })
        .collect();
    engine
        .load_playbooks(playbooks, "bench")
        .await
        .expect("load");
    let started = Instant::now();
    // The gated runs are spread through the store, one every runs/gates.
    let every = (runs / gates.max(1)).max(1);
    let mut next = 0;
    while next < runs {
        let findings: Vec<Finding> = (next..(next + BATCH).min(runs))
            .map(|n| finding(n, n % every == 0 && n / every < gates))
            .collect();
        engine.ingest(&findings).await.expect("ingest");
        engine.idle().await.expect("drive");
        next += BATCH;
        if next % 100_000 == 0 {
            eprintln!(
                "  {next} runs stored ({:.0} runs/s)",
                next as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    started.elapsed()
}

/// p50, p95 and max of `samples` requests of `path`, after warming up.
async fn time(
    http: &reqwest::Client,
    base: &str,
    path: &str,
) -> (Duration, Duration, Duration, usize) {
    let mut times = Vec::with_capacity(SAMPLES);
    let mut size = 0;
    for round in 0..WARM_UP + SAMPLES {
        let started = Instant::now();
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the service answers");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let body = response.bytes().await.expect("body");
        if round >= WARM_UP {
            times.push(started.elapsed());
            size = body.len();
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    (at(0.50), at(0.95), times[times.len() - 1], size)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(1_000_000);
    let gates = args.get(1).copied().unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    eprintln!(
        "console: {runs} runs, {gates} waiting on a gate, in {}",
        dir.path().display()
    );
    // A runtime of its own, dropped with every task holding the store before the service
    // opens it.
    let filled = {
        let filling = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        filling.block_on(fill(&dir.path().join("state"), runs, gates))
    };
    eprintln!("  stored in {:.0} s", filled.as_secs_f64());
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir(&playbooks).expect("playbooks dir");
    std::fs::write(playbooks.join("gate.yaml"), GATE).expect("write");
    std::fs::write(playbooks.join("note.yaml"), NOTE).expect("write");
    let nats = NatsServer::start();
    let config = format!(
        "[[api.tokens]]\nname = \"ann@example.com\"\nrole = \"approver\"\nsha256 = \"{}\"\n",
        hex(&Sha256::digest(TOKEN.as_bytes()))
    );
    let service = Service::launch(&nats.url(), &playbooks, dir.path(), &[], Some(&config), &[]);
    let base = format!("http://{}", service.listen);
    quench_common::http::install_crypto_provider();
    let http = reqwest::Client::new();
    let oldest_key = "openai:key:key_00000001";
    let middle = runs / 2;
    let pages = [
        ("inbox (all gates of ann)", "/api/v1/inbox".to_owned()),
        ("runs, first page", "/api/v1/runs?limit=50".to_owned()),
        (
            "runs waiting",
            "/api/v1/runs?state=waiting&limit=50".to_owned(),
        ),
        (
            "runs of a kind",
            "/api/v1/runs?kind=openai.api_key.leaked&limit=50".to_owned(),
        ),
        (
            "runs by text (title)",
            "/api/v1/runs?q=repository%20web-500&limit=50".to_owned(),
        ),
        (
            "runs by key (the oldest run)",
            format!("/api/v1/runs?key={oldest_key}&limit=50"),
        ),
        (
            "runs by key (a middle run)",
            format!("/api/v1/runs?key=openai:key:key_{middle:08}&limit=50"),
        ),
        (
            "runs in a time range (the last minute)",
            format!(
                "/api/v1/runs?since={}&limit=50",
                (chrono::Utc::now() - chrono::Duration::minutes(1))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ),
    ];
    runtime.block_on(async {
        println!("console: {runs} runs, {gates} open gates; {SAMPLES} requests each after {WARM_UP} warm-up");
        println!("{:<40} {:>9} {:>9} {:>9} {:>9}", "page", "p50 ms", "p95 ms", "max ms", "bytes");
        for (name, path) in &pages {
            let (p50, p95, max, size) = time(&http, &base, path).await;
            println!(
                "{name:<40} {:>9.1} {:>9.1} {:>9.1} {size:>9}",
                p50.as_secs_f64() * 1000.0,
                p95.as_secs_f64() * 1000.0,
                max.as_secs_f64() * 1000.0
            );
        }
    });
    drop(service);
}
