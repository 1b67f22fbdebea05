//! Decision benchmark (figures, not pass/fail): how long from an approval answered over NATS
//! until the OpenAI fake receives the revoke — "decision → first mutating call" at light load,
//! the acceptance figure of issue 16 (target p99 ≤ 10 ms). Run with
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p quench-tests --bench decision -- [SAMPLES]
//! ```
//!
//! (default 300 samples, after 20 warm-up samples that are reported apart). Needs the pinned
//! nats-server (2.10+, for `sync_interval`) first on the PATH, as the integration tests do.
//!
//! Everything is real and as deployed, as in `tests/integration/e2e.rs`: nats-server with
//! `deploy/nats-server.conf` (every JetStream write synced), the release `quench serve` as a
//! process with a `sync = always` store in a temporary directory, the SHIPPED playbook
//! `revoke-leaked-openai-key.yaml` unchanged, and the Slack and OpenAI fakes. Samples run one
//! after another. Each one publishes a finding (the shipped example, with a key of its own) as
//! the scanner user, waits until the owner's approval DM is posted and its delivery committed
//! (the gate's `gate_notified` audit entry: an earlier click would be deferred until then), builds
//! the `quench.decision/v1` of the owner's click on *revoke* with the gateway's own code
//! (`quench_gateway::slack::form_answer`), then takes t0 and publishes it as the gateway does
//! (JetStream publish with `Nats-Msg-Id`, waiting for the stream's acknowledgement) on
//! `quench.decisions.<run_id>`. The sample is the time until the fake began handling the DELETE
//! ([`quench_openai_fake::Call::received_at`]). The next sample starts once the run completed
//! and its messages were updated, so nothing of one run overlaps the next one's measurement.
//!
//! Where the time goes, per sample, as offsets from t0: the stream's acknowledgement (bench),
//! the engine taking the decision under the run's lock (the `at` of its `decision` audit entry),
//! the revoke step's intent (the `at` of its `step_intent` entry: the run is driven on within the
//! decision's transaction up to that intent), and the decision committed with that intent (the
//! runner's `decision` log line, written after the one commit). Audit times and log times are the
//! runner's wall clock, read against the bench's. Also when the gate's closing notice started (it
//! updates the DMs under the run's lock), and the disk's `fdatasync` latency, probed between
//! samples: two syncs lie on the measured path (nats-server storing the decision, the store
//! committing it with the intent).

#[path = "../integration/support/mod.rs"]
#[expect(
    dead_code,
    reason = "the integration tests' support, shared as is: the bench uses part of it"
)]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use quench_gateway::slack::Answer;
use quench_proto::subject;
use serde_json::Value;
use sha2::{Digest, Sha256};

use support::gateway_client::{
    GATEWAY_PASSWORD, SCANNER_PASSWORD, buttons, click_payload, connect_as, deployed_nats,
    deployed_runner, form, publish_finding,
};
use support::openai_fake::{KeySeed, OpenAiFake, Role};
use support::slack_fake::SlackFake;
use support::{NatsServer, Service, hex, percentile, root};

/// Samples before the measured ones (a new service's first commits create sled's files).
const WARM_UP: usize = 20;
const DEFAULT_SAMPLES: usize = 300;
/// How long any one wait may take before the bench gives up with the runner's log.
const WAIT: Duration = Duration::from_secs(30);
/// `fdatasync` probes of the disk after each sample.
const SYNC_PROBES: usize = 3;

/// The owner of the example finding, and their Slack id; the one member of `[groups] secops`.
const OWNER_EMAIL: &str = "alice@example.com";
const OWNER: &str = "U0ALICE";
const SECOPS_EMAIL: &str = "lead@example.com";
const SECOPS: &str = "U0LEAD";
const PROJECT: &str = "proj_example";
/// A viewer token of the admin API, to read the audit log.
const VIEWER_TOKEN: &str = "decision-bench-viewer-token";

fn main() {
    let samples = std::env::args()
        .skip(1)
        .find(|arg| arg != "--bench")
        .map(|arg| {
            arg.parse()
                .unwrap_or_else(|_| panic!("SAMPLES is a number, not {arg:?}"))
        })
        .unwrap_or(DEFAULT_SAMPLES);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(samples));
}

async fn bench(samples: usize) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let nats_version = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "decision → first mutating call: {WARM_UP} warm-up + {samples} samples, one after another; \
         {cores} cores, load average {}; {nats_version}",
        load_average()
    );
    let world = World::start(WARM_UP + samples).await;
    let mut probe = SyncProbe::create(world.dir.path());
    let mut measured = Vec::with_capacity(WARM_UP + samples);
    let mut syncs = Vec::new();
    for n in 0..WARM_UP + samples {
        measured.push(world.sample(n).await);
        // Between samples, so that it tells the disk's state without slowing a sample down.
        syncs.extend((0..SYNC_PROBES).map(|_| probe.sync()));
    }
    let log = world.runner.log_text();
    let committed = decisions_logged(&log);
    let timings: Vec<Timing> = measured
        .iter()
        .map(|sample| sample.timing(committed.get(&sample.run_id).copied()))
        .collect();
    let (warm_up, measured) = timings.split_at(WARM_UP);
    println!(
        "warm-up ({} samples): p50 {:.2} ms, max {:.2} ms",
        warm_up.len(),
        percentile(&column(warm_up, |t| Some(t.total)), 0.50),
        percentile(&column(warm_up, |t| Some(t.total)), 1.0),
    );
    report(measured);
    println!(
        "disk during the run: fdatasync of a 4 KiB append where the store is ({} probes between \
         samples; a decision waits for two: nats-server stores it, the store commits it with the \
         revoke's intent): {}",
        syncs.len(),
        quartet(&syncs),
    );
    println!("load average at the end: {}", load_average());
}

/// The 1, 5 and 15 minute load averages (Linux), as other work on the machine skews the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The bench's setup: the processes and fakes, and clients as the scanner and the gateway.
struct World {
    slack: SlackFake,
    openai: OpenAiFake,
    runner: Service,
    /// As the scanner's user: publishes findings.
    scanner: jetstream::Context,
    /// As the gateway's user: publishes decisions.
    gateway: jetstream::Context,
    api: reqwest::Client,
    /// The shipped example finding, which each sample varies.
    finding: Value,
    // Dropped last: the processes above use them.
    _nats: NatsServer,
    /// The store, the playbooks and the runner's log.
    dir: tempfile::TempDir,
}

/// What one sample saw: instants on the bench's clock from t0, and what the runner recorded.
struct Sample {
    run_id: String,
    /// The wall clock at t0, to place the runner's times.
    wall: DateTime<Utc>,
    acked: Duration,
    total: Duration,
    /// The `at` of the run's `decision` and revoke `step_intent` audit entries.
    decision_at: DateTime<Utc>,
    intent_at: DateTime<Utc>,
    /// The `at` of the gate's `closed` notice: the approval DMs updated, under the run's lock,
    /// by the timer loop (written due at once in the decision's commit).
    closed_at: DateTime<Utc>,
}

/// One sample's figures in milliseconds from t0.
#[derive(Debug, Clone, Copy)]
struct Timing {
    total: f64,
    acked: f64,
    taken: f64,
    committed: Option<f64>,
    intent: f64,
    closed: f64,
}

impl World {
    async fn start(keys: usize) -> World {
        quench_common::http::install_crypto_provider();
        let nats = deployed_nats();
        let slack = SlackFake::start().await;
        slack.add_user(OWNER_EMAIL, OWNER);
        slack.add_user(SECOPS_EMAIL, SECOPS);
        let openai = OpenAiFake::start().await;
        openai.seed_project(PROJECT, "web");
        openai.seed_user(PROJECT, "user_alice", OWNER_EMAIL, Role::Owner);
        for n in 0..keys {
            openai.seed_key(
                PROJECT,
                "user_alice",
                KeySeed::new(&key_id(n)).name(&key_name(n)),
            );
        }

        let dir = tempfile::tempdir().expect("temp dir");
        let playbook =
            std::fs::read_to_string(root().join("workflows/revoke-leaked-openai-key.yaml"))
                .expect("the shipped playbook");
        let extra = format!(
            r#"
[store]
sync = "always"

[openai]
base_url = "{openai_url}"
admin_key = "{admin_key}"

[groups]
secops = ["{SECOPS_EMAIL}"]

[[api.tokens]]
name = "bench"
role = "viewer"
sha256 = "{token_sha}"
"#,
            openai_url = openai.base_url(),
            admin_key = openai.admin_key(),
            token_sha = hex(&Sha256::digest(VIEWER_TOKEN.as_bytes())),
        );
        let runner = deployed_runner(
            &nats,
            &slack,
            &[("revoke-leaked-openai-key.yaml", &playbook)],
            &extra,
            &["--log-format", "json"],
            dir.path(),
        );
        let (scanner, _) =
            connect_as(&nats, "quench-scanner", SCANNER_PASSWORD, "_INBOX.scanner").await;
        let (gateway, _) =
            connect_as(&nats, "quench-gateway", GATEWAY_PASSWORD, "_INBOX.gateway").await;
        let text =
            std::fs::read_to_string(root().join("workflows/examples/leaked-openai-key.json"))
                .expect("the shipped example finding");
        World {
            slack,
            openai,
            runner,
            scanner: jetstream::new(scanner),
            gateway: jetstream::new(gateway),
            api: quench_common::http::http_client(),
            finding: serde_json::from_str(&text).expect("JSON"),
            _nats: nats,
            dir,
        }
    }

    /// One finding → approval → click → revoke, measured from the click's publish.
    async fn sample(&self, n: usize) -> Sample {
        publish_finding(&self.scanner, &self.finding_for(n)).await;
        let (channel, button) = self.asked(&key_name(n)).await;
        let run_id = button.value_json()["run_id"]
            .as_str()
            .expect("a run id in the button")
            .to_owned();
        self.until_audited(&run_id, "gate_notified", |entry| {
            entry["detail"]["notice"] == "open"
        })
        .await;

        // The owner's click on *revoke*, turned into a decision by the gateway's own code.
        let action_ts = format!("{}.{:06}", support::gateway_client::now(), n + 1);
        let payload = click_payload(
            OWNER,
            &button,
            &channel,
            &action_ts,
            &self.slack.response_url(),
        );
        let Some(Answer::Decision(decision)) =
            quench_gateway::slack::form_answer(form(&payload).as_bytes(), Utc::now())
                .expect("the gateway takes the click")
        else {
            panic!("a button click is a decision");
        };
        let body = serde_json::to_vec(&decision).expect("a decision serializes");
        let revoke = format!("/v1/organization/projects/{PROJECT}/api_keys/{}", key_id(n));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subject::HEADER_MSG_ID, decision.id.as_str());

        let wall = Utc::now();
        let t0 = Instant::now();
        self.gateway
            .publish_with_headers(subject::decision(&decision.run_id), headers, body.into())
            .await
            .expect("published")
            .await
            .expect("the stream acknowledges the decision");
        let acked = t0.elapsed();
        let call = tokio::time::timeout(WAIT, self.openai.received("DELETE", &revoke))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no revoke within {WAIT:?} of the decision\n{}",
                    self.runner.log_text()
                )
            });
        let total = call.received_at.duration_since(t0);

        // The run's tail (its last message, the approval DMs updated) before the next sample.
        self.until_audited(&run_id, "run_completed", |_| true).await;
        self.until_audited(&run_id, "gate_notified", |entry| {
            entry["detail"]["notice"] == "closed"
        })
        .await;
        let entries = self.audit(&run_id).await;
        let at = |kind: &str, step: &str, notice: Option<&str>| {
            entries
                .iter()
                .find(|entry| {
                    entry["kind"] == kind
                        && entry["step"] == step
                        && notice.is_none_or(|notice| entry["detail"]["notice"] == notice)
                })
                .and_then(|entry| entry["at"].as_str())
                .and_then(|at| at.parse::<DateTime<Utc>>().ok())
                .unwrap_or_else(|| panic!("no {kind} entry of step {step} in {entries:#?}"))
        };
        Sample {
            decision_at: at("decision", "decide", None),
            intent_at: at("step_intent", "revoke", None),
            closed_at: at("gate_notified", "decide", Some("closed")),
            run_id,
            wall,
            acked,
            total,
        }
    }

    /// The shipped example finding with an id, key and OpenAI key of sample `n`'s own.
    fn finding_for(&self, n: usize) -> Value {
        let mut finding = self.finding.clone();
        finding["id"] = format!("decision-bench-{n:05}").into();
        finding["key"] = format!("openai:project_key:{}", key_id(n)).into();
        finding["resource"]["id"] = key_id(n).into();
        finding["resource"]["name"] = key_name(n).into();
        finding["resource"]["project_id"] = PROJECT.into();
        finding
    }

    /// The owner's DM channel and the *revoke* button of the approval about key `name`.
    async fn asked(&self, name: &str) -> (String, support::gateway_client::Button) {
        let started = Instant::now();
        loop {
            let found = self.slack.dm_channel(OWNER).and_then(|channel| {
                self.slack
                    .messages_in(&channel)
                    .into_iter()
                    .filter(|message| {
                        message
                            .text
                            .as_deref()
                            .is_some_and(|text| text.contains(name))
                    })
                    .flat_map(|message| buttons(message.blocks.as_ref()))
                    .find(|button| button.action_id == "quench:revoke")
                    .map(|button| (channel, button))
            });
            if let Some(found) = found {
                return found;
            }
            self.check_waited(started, &format!("the owner is asked about {name}"));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until the run has an audit entry of `kind` that `matches`.
    async fn until_audited(&self, run_id: &str, kind: &str, matches: impl Fn(&Value) -> bool) {
        let started = Instant::now();
        loop {
            if self.audit_of(run_id, Some(kind)).await.iter().any(&matches) {
                return;
            }
            self.check_waited(started, &format!("run {run_id} audits {kind}"));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The run's audit entries, newest first.
    async fn audit(&self, run_id: &str) -> Vec<Value> {
        self.audit_of(run_id, None).await
    }

    async fn audit_of(&self, run_id: &str, kind: Option<&str>) -> Vec<Value> {
        let mut url = format!(
            "http://{}/api/v1/audit?limit=1000&run={run_id}",
            self.runner.listen
        );
        if let Some(kind) = kind {
            url.push_str(&format!("&kind={kind}"));
        }
        let page: Value = self
            .api
            .get(url)
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await
            .expect("the admin API answers")
            .error_for_status()
            .expect("the audit page")
            .json()
            .await
            .expect("JSON");
        page["entries"].as_array().cloned().unwrap_or_default()
    }

    fn check_waited(&self, started: Instant, what: &str) {
        assert!(
            started.elapsed() < WAIT,
            "not within {WAIT:?}: {what}\n--- quench serve ---\n{}",
            self.runner.log_text()
        );
    }
}

impl Sample {
    /// The figures, with when the runner logged the decision as committed (if it did).
    fn timing(&self, committed: Option<DateTime<Utc>>) -> Timing {
        let since = |at: DateTime<Utc>| {
            (at - self.wall).to_std().map_or_else(
                |_| -millis((self.wall - at).to_std().unwrap_or_default()),
                millis,
            )
        };
        Timing {
            total: millis(self.total),
            acked: millis(self.acked),
            taken: since(self.decision_at),
            committed: committed.map(since),
            intent: since(self.intent_at),
            closed: since(self.closed_at),
        }
    }
}

/// `key_bench00042`: the OpenAI key of sample `n`.
fn key_id(n: usize) -> String {
    format!("key_bench{n:05}")
}

/// `bench-00042`: its name, which the approval question shows.
fn key_name(n: usize) -> String {
    format!("bench-{n:05}")
}

/// When the runner logged each run's `decision` line (after the decision's commit), by run id.
fn decisions_logged(log: &str) -> BTreeMap<String, DateTime<Utc>> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "decision")
        .filter_map(|line| {
            let run = line["fields"]["run_id"].as_str()?.to_owned();
            let at = line["timestamp"].as_str()?.parse().ok()?;
            Some((run, at))
        })
        .collect()
}

/// A file in the store's directory to time `fdatasync` on, as the disk is at the moment.
struct SyncProbe {
    file: std::fs::File,
}

impl SyncProbe {
    fn create(dir: &std::path::Path) -> SyncProbe {
        SyncProbe {
            file: std::fs::File::create(dir.join("sync-probe")).expect("a probe file"),
        }
    }

    /// Appends 4 KiB and syncs it; the sync's duration in ms.
    fn sync(&mut self) -> f64 {
        use std::io::Write;
        self.file.write_all(&[0u8; 4096]).expect("write");
        let started = Instant::now();
        self.file.sync_data().expect("fdatasync");
        millis(started.elapsed())
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One figure of a sample, when it has it.
type Pick = fn(&Timing) -> Option<f64>;

fn column(timings: &[Timing], pick: impl Fn(&Timing) -> Option<f64>) -> Vec<f64> {
    timings.iter().filter_map(pick).collect()
}

fn report(measured: &[Timing]) {
    let totals = column(measured, |t| Some(t.total));
    println!(
        "decision published → DELETE received (N = {}): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 ≤ 10 ms)",
        totals.len(),
        percentile(&totals, 0.50),
        percentile(&totals, 0.90),
        percentile(&totals, 0.99),
        percentile(&totals, 1.0),
    );
    println!(
        "where the time goes, in ms from t0 (p50 / p90 / p99 / max of each point, and of each stretch):"
    );
    let points: [(&str, Pick); 5] = [
        ("JetStream acknowledged the publish", |t| Some(t.acked)),
        ("engine took the decision (audit `decision`.at)", |t| {
            Some(t.taken)
        }),
        ("revoke intent (audit `step_intent`.at)", |t| Some(t.intent)),
        ("decision + intent committed (log line `decision`)", |t| {
            t.committed
        }),
        ("DELETE received by the OpenAI fake", |t| Some(t.total)),
    ];
    for (name, pick) in points {
        let values = column(measured, pick);
        println!("  {name:<50} {}", quartet(&values));
    }
    let stretches: [(&str, Pick); 4] = [
        ("publish → engine took it", |t| Some(t.taken)),
        ("took it → revoke intent (drive, uncommitted)", |t| {
            Some(t.intent - t.taken)
        }),
        ("revoke intent → committed (one commit)", |t| {
            t.committed.map(|c| c - t.intent)
        }),
        ("committed → DELETE received", |t| {
            t.committed.map(|c| t.total - c)
        }),
    ];
    for (name, pick) in stretches {
        let values = column(measured, pick);
        println!("  {name:<50} {}", quartet(&values));
    }
    let mut slowest: Vec<&Timing> = measured.iter().collect();
    slowest.sort_by(|a, b| b.total.total_cmp(&a.total));
    println!(
        "slowest samples (total: acked / took / intent / committed; closing notice, ms from t0):"
    );
    for timing in slowest.iter().take(5) {
        println!(
            "  {:.2}: {:.2} / {:.2} / {:.2} / {}; {:.2}",
            timing.total,
            timing.acked,
            timing.taken,
            timing.intent,
            timing
                .committed
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
            timing.closed,
        );
    }
    let notice_first = measured.iter().filter(|t| t.closed < t.total).count();
    println!(
        "the gate's closing notice (which holds the run's lock while it updates the DMs) started \
         before the DELETE was received in {notice_first} of {} samples; its start: {}",
        measured.len(),
        quartet(&column(measured, |t| Some(t.closed))),
    );
    let missing = measured.iter().filter(|t| t.committed.is_none()).count();
    if missing > 0 {
        println!("({missing} samples without a `decision` log line)");
    }
}

/// `p50 / p90 / p99 / max` of `values`.
fn quartet(values: &[f64]) -> String {
    format!(
        "{:7.2} / {:7.2} / {:7.2} / {:7.2}",
        percentile(values, 0.50),
        percentile(values, 0.90),
        percentile(values, 0.99),
        percentile(values, 1.0),
    )
}
