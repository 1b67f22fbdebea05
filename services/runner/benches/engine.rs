//! Engine benchmarks (figures, not pass/fail tests). Run with
//! `cargo bench -p quench-runner --bench engine -- park [RUNS]` and `… -- deadlines [RUNS]`.
//!
//! - `park`: parks RUNS runs (default 1,000,000) on an approval gate through the real intake
//!   and engine, on a durable store (`sync = always`); then a fresh process opens the store and
//!   reports restart-to-ready time, its RSS with all those runs parked, and the store's size.
//! - `deadlines`: parks RUNS runs (default 100,000) on gates that time out 60 s after opening,
//!   so the deadlines fall due within about a minute; then fires them with the engine's timer
//!   path and reports how late the last one fired.
//! - `retention`: takes in FINDINGS findings (default 3,000,000) whose runs end at once, with
//!   `retain_ended = 1m`, seen ids kept 1 m, and the audit log exported and pruned every 30 s
//!   (as an operator's job would), and reports store size and RSS every 10 s: after the first
//!   minute they stay flat. The store compacts itself (its file past twice its size after the
//!   last compaction and past 256 MiB); the report counts compactions and the seconds commits
//!   waited for them, and names each compaction's duration (`compacted:` lines).

#[path = "shared/measure.rs"]
mod measure;
use measure::{rss_mib, size_on_disk};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quench_proto::Finding;
use quench_runner::engine::{
    Actions, Engine, EngineConfig, FindingOutcome, Gate, Handling, RunStatus, SystemClock,
};
use quench_runner::store::{Store, StoreConfig};

/// The allocator the `quench` binary uses, so RSS figures are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 1000;
const CONCURRENCY: usize = 512;

fn playbook(timeout: &str) -> String {
    format!(
        r#"schema: quench.playbook/v1
name: bench
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: decide
    uses: approval
    with:
      approvers: ["{{{{ finding.owner.email }}}}"]
      question: "Revoke {{{{ finding.resource.id }}}}?"
      choices: [revoke, keep]
      timeout: {timeout}
      on_timeout: keep
  - id: done
    uses: note
    with:
      message: "{{{{ steps.decide.choice }}}}"
"#
    )
}

fn finding(n: usize) -> Finding {
    let json = serde_json::json!({
        "schema": "quench.finding/v1", "id": format!("bench-{n}"), "kind": "openai.api_key.leaked",
        "severity": "high", "title": "OpenAI key in a public repository", "detected_at": "2026-11-20T10:00:00Z",
        "source": {"scanner": "bench", "url": "https://github.com/acme/web/blob/main/.env#L3"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{n:08}"), "name": "web prod", "project_id": "proj_1", "redacted_value": "sk-proj-...wxyz"},
        "owner": {"email": format!("owner{}@example.com", n % 5000)}
    });
    Finding::parse(
        json.to_string().as_bytes(),
        quench_proto::DEFAULT_MAX_FINDING_BYTES,
    )
    .expect("valid finding")
}

async fn engine(dir: &Path, timeout: &str) -> Engine {
    let store = Store::open(&StoreConfig::new(dir)).expect("store opens");
    let engine = Engine::new(
        store,
        Arc::new(SystemClock),
        Actions::new(),
        EngineConfig {
            max_inflight_runs: CONCURRENCY,
            ..EngineConfig::default()
        },
    );
    let compiled = quench_runner::playbook::compile(&playbook(timeout))
        .playbook
        .expect("bench playbook compiles");
    engine
        .load_playbooks(vec![compiled], "bench")
        .await
        .expect("load");
    engine
}

/// Parks `runs` runs; returns how long it took and the run ids.
async fn park(engine: &Engine, runs: usize) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let mut ids = Vec::with_capacity(runs);
    let mut batch_start = 0;
    while batch_start < runs {
        let findings: Vec<Finding> = (batch_start..(batch_start + BATCH).min(runs))
            .map(finding)
            .collect();
        let outcomes = engine.ingest(&findings).await.expect("ingest");
        for outcome in outcomes {
            if let FindingOutcome::Matched(handled) = outcome {
                ids.extend(
                    handled
                        .into_iter()
                        .filter_map(|(_, handling)| match handling {
                            Handling::Started { run } => Some(run),
                            _ => None,
                        }),
                );
            }
        }
        engine.idle().await.expect("drive");
        batch_start += BATCH;
        if batch_start % 100_000 == 0 {
            let rate = batch_start as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "  parked {batch_start} runs ({rate:.0} runs/s, RSS {} MiB)",
                rss_mib("VmRSS")
            );
        }
    }
    (started.elapsed(), ids)
}

fn main() {
    // The store's own lines (one per compaction) go to stderr; `RUST_LOG` for more (e.g.
    // `quench_runner::store=debug`: the copy and each catch-up round of a compaction).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("quench_runner::store=info")
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("park") => {
            let runs = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1_000_000);
            let dir = tempdir("park");
            eprintln!("park: {runs} runs on an approval gate in {}", dir.display());
            let elapsed = runtime.block_on(async {
                let engine = engine(&dir, "30d").await;
                park(&engine, runs).await.0
            });
            println!(
                "park: {runs} runs parked in {:.1} s ({:.0} runs/s); peak RSS while parking {} MiB",
                elapsed.as_secs_f64(),
                runs as f64 / elapsed.as_secs_f64(),
                rss_mib("VmHWM")
            );
            // A new process: what a restart costs with all those runs parked.
            let status = std::process::Command::new(std::env::current_exe().expect("own path"))
                .args([
                    "restart",
                    dir.to_str().expect("utf-8 path"),
                    &runs.to_string(),
                ])
                .status()
                .expect("restart process");
            assert!(status.success());
            println!(
                "park: store size on disk {} MiB",
                size_on_disk(&dir) / (1024 * 1024)
            );
            if std::env::var_os("QUENCH_BENCH_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Some("restart") => {
            let dir = PathBuf::from(&args[1]);
            let expected: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
            let started = Instant::now();
            let (recovered, next) = runtime.block_on(async {
                let engine = engine(&dir, "30d").await;
                let recovered = engine.recover().expect("recover");
                (recovered.len(), engine.next_due().expect("next due"))
            });
            let ready = started.elapsed();
            println!(
                "restart: ready in {:.3} s (runs to resume: {recovered}, next timer {next:?}); RSS after ready {} MiB (peak {} MiB), {expected} runs parked",
                ready.as_secs_f64(),
                rss_mib("VmRSS"),
                rss_mib("VmHWM")
            );
        }
        Some("deadlines") => {
            let runs = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
            let dir = tempdir("deadlines");
            runtime.block_on(deadlines(&dir, runs));
            let _ = std::fs::remove_dir_all(&dir);
        }
        Some("retention") => {
            let findings = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(3_000_000);
            let dir = tempdir("retention");
            runtime.block_on(retention(&dir, findings));
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => eprintln!("usage: engine (park [RUNS] | deadlines [RUNS] | retention [FINDINGS])"),
    }
}

async fn deadlines(dir: &Path, runs: usize) {
    let engine = engine(dir, "60s").await;
    let (elapsed, ids) = park(&engine, runs).await;
    eprintln!(
        "deadlines: {runs} gates opened in {:.1} s; their deadlines fall due over that span, 60 s later",
        elapsed.as_secs_f64()
    );
    // The engine's timer path: sleep until the next deadline, fire what is due, drive the runs.
    loop {
        match engine.next_due().expect("next due") {
            None => break,
            Some(due) => {
                let wait = (due - chrono::Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_millis(200));
                tokio::time::sleep(wait).await;
            }
        }
        engine.fire_due().await.expect("fire");
        engine.idle().await.expect("drive");
    }
    let mut latest = chrono::Duration::zero();
    let mut first_due = None;
    let mut last_due = None;
    let mut fired = 0;
    for run_id in &ids {
        let run = engine.run(run_id).expect("read").expect("run");
        let gate: Gate = engine
            .store()
            .get(quench_runner::store::Key::Gate(run_id, "decide"))
            .expect("read")
            .expect("gate");
        if run.status != RunStatus::Completed {
            continue;
        }
        let decided = run.steps["decide"].decided_at.expect("decided");
        latest = latest.max(decided - gate.deadline);
        first_due = Some(
            first_due.map_or(gate.deadline, |first: chrono::DateTime<chrono::Utc>| {
                first.min(gate.deadline)
            }),
        );
        last_due = Some(
            last_due.map_or(gate.deadline, |last: chrono::DateTime<chrono::Utc>| {
                last.max(gate.deadline)
            }),
        );
        fired += 1;
    }
    let span = match (first_due, last_due) {
        (Some(first), Some(last)) => (last - first).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    };
    println!(
        "deadlines: {fired}/{runs} gates timed out; deadlines spanned {span:.1} s; the latest fired {:.3} s after its deadline",
        latest.num_milliseconds() as f64 / 1000.0
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::var_os("QUENCH_BENCH_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("quench-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// The store's compactions so far and the seconds they took, from the metrics as served.
fn compactions() -> (u64, f64) {
    let text = quench_runner::metrics::get().render();
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("quench_store_compaction_duration_seconds_count ") as u64,
        value("quench_store_compaction_duration_seconds_sum "),
    )
}

/// Findings whose runs end at once, under retention: store size and RSS over time.
async fn retention(dir: &Path, total: usize) {
    // With automatic compaction (the default floor, `store::COMPACT_FLOOR`): this bench measures it.
    let store_config = StoreConfig::new(dir.join("state"));
    let store = Store::open(&store_config).expect("store opens");
    let config = EngineConfig {
        seen_retention: Duration::from_secs(60),
        max_inflight_runs: CONCURRENCY,
        ..EngineConfig::default()
    };
    let engine = Engine::new(store, Arc::new(SystemClock), Actions::new(), config);
    let source = r#"schema: quench.playbook/v1
name: bench
on:
  finding:
    kinds: [openai.api_key.leaked]
steps:
  - id: done
    uses: note
    with:
      message: "{{ finding.resource.id }}"
"#;
    let compiled = quench_runner::playbook::compile(source)
        .playbook
        .expect("bench playbook compiles");
    engine
        .load_playbooks(vec![compiled], "bench")
        .await
        .expect("load");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped =
        |stop: &Arc<std::sync::atomic::AtomicBool>| stop.load(std::sync::atomic::Ordering::SeqCst);
    // The service's retention loop (`service::retention`), with `retain_ended = 1m`.
    let purged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let purger = {
        let engine = engine.clone();
        let stop = stop.clone();
        let purged = purged.clone();
        tokio::spawn(async move {
            while !stopped(&stop) {
                let pass = engine
                    .purge_ended(Duration::from_secs(60), 1000)
                    .await
                    .expect("purge");
                purged.fetch_add(pass.runs, std::sync::atomic::Ordering::Relaxed);
                let wait = if pass.more { 10 } else { 1000 };
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        })
    };
    // An operator's job: export the audit log and prune what was exported, every 30 s.
    let exporter = {
        let store = engine.store().clone();
        let stop = stop.clone();
        let exports = dir.join("exports");
        std::fs::create_dir_all(&exports).expect("exports dir");
        tokio::spawn(async move {
            let mut exported: u64 = 0;
            while !stopped(&stop) {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let Some(newest) = store
                    .audit_newest_first(None, 1, 1, |_| true)
                    .expect("audit")
                    .0
                    .first()
                    .map(|(_, entry)| entry.seq)
                else {
                    continue;
                };
                let file = exports.join(format!("audit-{newest}.jsonl"));
                let mut writer =
                    std::io::BufWriter::new(std::fs::File::create(&file).expect("export file"));
                let mut last = None;
                for item in store.audit_export(newest.saturating_sub(1000)) {
                    use sha2::Digest;
                    use std::io::Write;
                    let (seq, body) = item.expect("export");
                    last = Some((seq, hex::encode(sha2::Sha256::digest(&body))));
                    writer.write_all(&body).expect("write export");
                    writer.write_all(b"\n").expect("write export");
                    exported += body.len() as u64 + 1;
                }
                drop(writer);
                // The export is kept elsewhere; here only its size is counted.
                let _ = std::fs::remove_file(&file);
                let Some((seq, hash)) = last else { continue };
                store.prune_audit(seq, &hash).await.expect("prune");
            }
            exported
        })
    };
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut sent = 0;
    println!(
        "retention: SECONDS FINDINGS RATE/s PURGED AUDIT_FROM STORE_MiB RSS_MiB COMPACTIONS PAUSED_S SLOWEST_BATCH_S"
    );
    let mut compacted = (0, 0.0);
    // The longest a batch of findings took, from intake until its runs ended, in these 10 s.
    let mut slowest = Duration::ZERO;
    while sent < total {
        let findings: Vec<Finding> = (sent..(sent + BATCH).min(total)).map(finding).collect();
        let batch_started = Instant::now();
        engine.ingest(&findings).await.expect("ingest");
        engine.idle().await.expect("drive");
        slowest = slowest.max(batch_started.elapsed());
        sent += findings.len();
        if last_report.elapsed() >= Duration::from_secs(10) || sent == total {
            last_report = Instant::now();
            let seconds = started.elapsed().as_secs_f64();
            let (count, compacting) = compactions();
            println!(
                "retention: {seconds:.0} {sent} {:.0} {} {} {} {} {count} {compacting:.2} {:.2}",
                sent as f64 / seconds,
                purged.load(std::sync::atomic::Ordering::Relaxed),
                engine.store().audit_checkpoint().expect("checkpoint").0,
                size_on_disk(&dir.join("state")) / (1024 * 1024),
                rss_mib("VmRSS"),
                slowest.as_secs_f64(),
            );
            slowest = Duration::ZERO;
            if count > compacted.0 {
                println!(
                    "compacted: {} compaction(s) in these 10 s; commits waited {:.3} s in all",
                    count - compacted.0,
                    compacting - compacted.1
                );
                compacted = (count, compacting);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    purger.await.expect("purger");
    let exported = exporter.await.expect("exporter");
    let purged = purged.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "retention: {total} findings in {:.0} s; {purged} runs purged; {} MiB of audit log exported and pruned; peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        exported / (1024 * 1024),
        rss_mib("VmHWM")
    );
}
