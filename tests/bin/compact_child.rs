//! The compaction crash-test child: writes numbered rounds into a store and compacts it every
//! few rounds, so the crash tests can kill it at each step of the compaction's directory dance
//! (`FAILPOINTS=store::compact_swapped=1*off->panic`, where the panic aborts the process) or at
//! random moments, and check what the next open finds.
//!
//! Round `n` is one batch: `run-n` (with padding, so compactions have something to copy), the
//! removal of `run-(n - KEEP)` (so the file holds garbage), `latest` = n, and one audit entry
//! `{"n": n}`. After its commit returns, `n` is appended to the acks file (fsynced): what is in
//! the acks file was acknowledged as durable. A start resumes after `latest`.

use std::io::Write;
use std::path::PathBuf;

use quench_runner::store::{AuditDraft, Batch, Key, Store, StoreConfig, SyncMode};
use serde_json::{Value, json};

#[path = "child.rs"]
mod child;

/// Rounds whose `run-n` stay; older ones are removed.
const KEEP: u64 = 10;

struct Args {
    store: PathBuf,
    acks: PathBuf,
    rounds: u64,
    compact_every: u64,
}

fn args(mut flags: child::Flags) -> anyhow::Result<Args> {
    Ok(Args {
        store: flags.next("store")?.into(),
        acks: flags.next("acks")?.into(),
        rounds: flags.next("rounds")?.parse()?,
        compact_every: flags.next("compact-every")?.parse()?,
    })
}

fn main() -> anyhow::Result<()> {
    child::main("compact-child", args, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = StoreConfig::new(&args.store);
    config.sync = SyncMode::Always;
    // Only the compactions asked for below: the crash tests count them.
    config.compact_floor = u64::MAX;
    let store = Store::open(&config)?;
    let start = store
        .get::<Value>(Key::Run("latest"))?
        .map_or(0, |latest| latest["n"].as_u64().unwrap_or(0) + 1);
    let mut acks = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.acks)?;
    for n in start..args.rounds {
        let mut batch = Batch::new();
        batch.put(
            Key::Run(&format!("run-{n:06}")),
            &json!({"n": n, "padding": "x".repeat(4000)}),
        );
        if let Some(old) = n.checked_sub(KEEP) {
            batch.delete(Key::Run(&format!("run-{old:06}")));
        }
        batch.put(Key::Run("latest"), &json!({"n": n}));
        batch.audit(AuditDraft::new(
            chrono::Utc::now(),
            "round",
            json!({"n": n}),
        ));
        store.commit(batch).await?;
        acks.write_all(format!("{n}\n").as_bytes())?;
        acks.sync_data()?;
        if (n + 1) % args.compact_every == 0 {
            store.compact().await?;
        }
    }
    println!("DONE");
    Ok(())
}
