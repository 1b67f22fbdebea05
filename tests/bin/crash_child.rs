//! The crash-test child: the real engine and store in a process of its own, fed findings from a
//! file, with a fake OpenAI that keeps its state on disk. The crash tests start it, kill it —
//! with `kill -9` from outside, or at a failpoint (`FAILPOINTS=store::after_commit=3*off->panic`,
//! where the panic aborts the process) — and start it again until it reports `DONE`.
//!
//! Intake imitates JetStream: a finding counts as acknowledged only once its id is in the acks
//! file, which is appended after the commit that took it in; unacknowledged findings are
//! delivered again on the next start.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use quench_proto::Finding;
use quench_runner::engine::{
    Action, ActionFuture, Actions, Call, Engine, EngineConfig, Success, SystemClock,
};
use quench_runner::playbook;
use quench_runner::store::{Store, StoreConfig, SyncMode};
use serde_json::json;

/// A fake OpenAI admin API with its state in files: a deleted key stays deleted across restarts
/// of the child, and deleting it again is `already_done`, as with the real API's 404.
#[derive(Debug)]
struct FakeOpenAi {
    deleted: PathBuf,
    calls: PathBuf,
    lock: Mutex<()>,
}

impl FakeOpenAi {
    fn append(path: &Path, line: &str) -> std::io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        // One write of the whole line: a crash in another thread cannot leave half a line.
        file.write_all(format!("{line}\n").as_bytes())?;
        file.sync_data()
    }
}

impl Action for FakeOpenAi {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            let _one_at_a_time = self
                .lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let key = call.input["key_id"].as_str().unwrap_or_default().to_owned();
            let record = json!({"key": key, "idempotency_key": call.idempotency_key, "attempt": call.attempt}).to_string();
            Self::append(&self.calls, &record).map_err(|error| {
                quench_runner::engine::ActionError::retryable(error.to_string())
            })?;
            let deleted = std::fs::read_to_string(&self.deleted).unwrap_or_default();
            if deleted.lines().any(|line| line == key) {
                return Ok(Success {
                    output: json!({"id": key, "deleted": true}),
                    already_done: true,
                });
            }
            Self::append(&self.deleted, &key).map_err(|error| {
                quench_runner::engine::ActionError::retryable(error.to_string())
            })?;
            Ok(Success::new(json!({"id": key, "deleted": true})))
        })
    }
}

/// Slack stand-in: records each message.
#[derive(Debug)]
struct Recorder {
    path: PathBuf,
}

impl Action for Recorder {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            let line =
                json!({"idempotency_key": call.idempotency_key, "input": call.input}).to_string();
            FakeOpenAi::append(&self.path, &line).map_err(|error| {
                quench_runner::engine::ActionError::retryable(error.to_string())
            })?;
            Ok(Success::new(json!({"delivered": true})))
        })
    }
}

#[path = "child.rs"]
mod child;

struct Args {
    store: PathBuf,
    playbook: PathBuf,
    findings: PathBuf,
    state: PathBuf,
}

fn args(mut flags: child::Flags) -> anyhow::Result<Args> {
    Ok(Args {
        store: flags.next("store")?.into(),
        playbook: flags.next("playbook")?.into(),
        findings: flags.next("findings")?.into(),
        state: flags.next("state")?.into(),
    })
}

fn main() -> anyhow::Result<()> {
    child::main("crash-child", args, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(&args.playbook)?;
    let compiled = playbook::compile(&source);
    let playbook = compiled.playbook.context("the crash playbook compiles")?;

    let mut config = StoreConfig::new(&args.store);
    config.sync = SyncMode::Always;
    let store = Store::open(&config)?;
    let mut actions = Actions::new();
    actions.insert(
        "openai.revoke_key",
        Arc::new(FakeOpenAi {
            deleted: args.state.join("deleted.log"),
            calls: args.state.join("calls.log"),
            lock: Mutex::new(()),
        }),
    );
    actions.insert(
        "slack.message",
        Arc::new(Recorder {
            path: args.state.join("slack.log"),
        }),
    );
    let engine = Engine::new(
        store,
        Arc::new(SystemClock),
        actions,
        EngineConfig::default(),
    );
    engine.load_playbooks(vec![playbook], "crash-child").await?;

    // Runs that were between steps when the last process died (the engine drives them).
    engine.recover()?;

    let acks_path = args.state.join("acks.log");
    let findings: Vec<Finding> = std::fs::read_to_string(&args.findings)?
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| Finding::parse(line.as_bytes(), quench_proto::DEFAULT_MAX_FINDING_BYTES))
        .collect::<Result<_, _>>()?;
    let mut acked: HashSet<String> = std::fs::read_to_string(&acks_path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    for batch in findings.chunks(4) {
        let unacked: Vec<Finding> = batch
            .iter()
            .filter(|finding| !acked.contains(&finding.id))
            .cloned()
            .collect();
        if unacked.is_empty() {
            continue;
        }
        engine.ingest(&unacked).await?;
        for finding in &unacked {
            FakeOpenAi::append(&acks_path, &finding.id)?;
            acked.insert(finding.id.clone());
        }
    }

    // Fire timers until every run has ended.
    loop {
        engine.fire_due().await?;
        // A drive that fails is a bug this harness must not wait out.
        if let Ok(Err(error)) = tokio::time::timeout(Duration::from_millis(20), engine.idle()).await
        {
            eprintln!("crash-child: drive failed: {error}");
            std::process::abort();
        }
        let open = open_runs(&engine)?;
        if open == 0 && engine.recover()?.is_empty() {
            break;
        }
    }
    println!("DONE");
    Ok(())
}

/// Runs not yet ended, counted from the audit log's starts and ends.
fn open_runs(engine: &Engine) -> anyhow::Result<usize> {
    let mut open = HashSet::new();
    for entry in engine.store().audit_entries() {
        let (_, stored) = entry?;
        let Some((_, _, entry)) = quench_runner::store::parse_stored(&stored) else {
            continue;
        };
        let Some(run) = entry.run_id else { continue };
        match entry.kind.as_str() {
            "run_started" => {
                open.insert(run);
            }
            "run_completed" | "run_failed" | "run_cancelled" => {
                open.remove(&run);
            }
            _ => {}
        }
    }
    Ok(open.len())
}
