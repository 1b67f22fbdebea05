//! Online compaction of the store: it keeps every key and value and shrinks the file, it runs
//! on its own once the file has outgrown the data, commits submitted during it are neither lost
//! nor reordered and readers (lazy ones too) read on across it, and a process killed at each
//! step of its directory dance (failpoints in `quench-compact-child`) or at random moments
//! leaves a store that opens with every acknowledged commit, once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quench_runner::store::{AuditDraft, Batch, Key, Store, StoreConfig, SyncMode, parse_stored};
use serde_json::{Value, json};

/// The sibling directories of the dance, which no open leaves behind.
fn siblings(store: &Path) -> Vec<PathBuf> {
    let name = store.file_name().expect("named").to_string_lossy();
    [".quench-compacting", ".quench-compacted", ".quench-old"]
        .iter()
        .map(|suffix| store.with_file_name(format!("{name}{suffix}")))
        .collect()
}

fn config(path: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(path);
    config.sync = SyncMode::Always;
    config
}

/// Writes `rounds` rounds of churn: each puts 20 runs of ~4 KB and deletes the 20 of the round
/// before, so the file grows while the live data stays the same; plus one audit entry a round.
async fn churn(store: &Store, rounds: std::ops::Range<u32>) {
    for round in rounds {
        let mut batch = Batch::new();
        for n in 0..20 {
            batch.put(
                Key::Run(&format!("churn-{round:05}-{n:02}")),
                &json!({"round": round, "n": n, "padding": "y".repeat(4000)}),
            );
            if let Some(before) = round.checked_sub(1) {
                batch.delete(Key::Run(&format!("churn-{before:05}-{n:02}")));
            }
        }
        batch.audit(AuditDraft::new(
            chrono::Utc::now(),
            "churn",
            json!({"round": round}),
        ));
        batch.count("churned", 1);
        store.commit(batch).await.expect("commit");
    }
}

/// Everything a caller can read: every run with its value, every audit entry as stored, the
/// counters and the chain's verdict.
type Contents = (
    Vec<(String, Value)>,
    Vec<(u64, Vec<u8>)>,
    Option<BTreeMap<String, i64>>,
    String,
);

fn contents(store: &Store) -> Contents {
    let runs = store
        .runs_oldest_first::<Value>(None)
        .collect::<Result<Vec<_>, _>>()
        .expect("runs");
    let audit = store
        .audit_entries()
        .collect::<Result<Vec<_>, _>>()
        .expect("audit");
    let verification = store.verify_audit().expect("verify");
    assert_eq!(verification.first_bad, None);
    (
        runs,
        audit,
        store.counters().expect("counters"),
        verification.head,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_keeps_every_key_and_value_and_shrinks_the_file() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("state");
    let store = Store::open(&config(&path)).expect("store");
    let mut batch = Batch::new();
    for n in 0..500 {
        batch.put(
            Key::Run(&format!("kept-{n:04}")),
            &json!({"n": n, "padding": "k".repeat(300)}),
        );
    }
    store.commit(batch).await.expect("commit");
    churn(&store, 0..600).await;
    let before = contents(&store);
    let size_before = store.size_on_disk().expect("size");

    let compacted = store
        .compact()
        .await
        .expect("compacts")
        .expect("a store on disk");
    assert_eq!(compacted.before_bytes, size_before);
    let size_after = store.size_on_disk().expect("size");
    assert_eq!(compacted.after_bytes, size_after);
    // Nothing was written meanwhile: the live data is the whole copy.
    assert!(
        compacted.live_bytes > 0 && compacted.live_bytes <= size_after,
        "live {} of {size_after} bytes",
        compacted.live_bytes
    );
    assert!(
        size_after * 4 < size_before,
        "the file shrinks to about its live data: {size_before} -> {size_after} bytes"
    );
    assert_eq!(contents(&store), before, "every key and value kept");
    for sibling in siblings(&path) {
        assert!(!sibling.exists(), "{} left behind", sibling.display());
    }

    // The compacted store takes commits, and is what a reopen finds.
    churn(&store, 600..610).await;
    let later = contents(&store);
    assert_eq!(later.1.len(), before.1.len() + 10);
    drop(store);
    let reopened = Store::open(&config(&path)).expect("reopens");
    assert_eq!(contents(&reopened), later);
}

/// Past the floor, the committer compacts on its own once the file is twice its size after the
/// last compaction: with the live data constant, the file stays bounded however much is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_compacts_on_its_own_and_stays_bounded() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("state");
    let mut config = config(&path);
    config.compact_floor = 4 * 1024 * 1024;
    let store = Store::open(&config).expect("store");
    let started = std::time::Instant::now();
    let mut largest = 0;
    let mut round = 0;
    // The committer looks at the size once a second: write for a few seconds, ~160 MB in all.
    while round < 2000 || started.elapsed() < Duration::from_secs(4) {
        churn(&store, round..round + 50).await;
        round += 50;
        largest = largest.max(store.size_on_disk().expect("size"));
    }
    let written = u64::from(round) * 20 * 4000;
    assert!(
        largest < 48 * 1024 * 1024,
        "the file stays bounded: at most {largest} bytes after {written} bytes written"
    );
    let runs = store
        .runs_oldest_first::<Value>(None)
        .collect::<Result<Vec<_>, _>>()
        .expect("runs");
    assert_eq!(runs.len(), 20, "only the last round's runs are live");
    assert_eq!(
        store.counters().expect("counters").expect("kept")["churned"],
        i64::from(round)
    );
    assert_eq!(store.verify_audit().expect("verify").first_bad, None);
}

/// A compaction asked for between batches comes between them: the batches submitted before and
/// after it all land, in order; a lazy reader started before it reads on after it; point reads
/// during it always find what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_submitted_during_a_compaction_are_neither_lost_nor_reordered() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("state");
    let store = Store::open(&config(&path)).expect("store");
    let mut batch = Batch::new();
    for n in 0..300 {
        batch.put(Key::Run(&format!("kept-{n:04}")), &json!({"n": n}));
    }
    store.commit(batch).await.expect("commit");
    churn(&store, 0..300).await;
    let mut lazy = store.runs_oldest_first::<Value>(None);
    let mut read_lazily: Vec<String> = lazy
        .by_ref()
        .take(5)
        .map(|item| item.expect("run").0)
        .collect();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = reads % 300;
                let value: Value = store
                    .get(Key::Run(&format!("kept-{n:04}")))
                    .expect("readable during a compaction")
                    .expect("present during a compaction");
                assert_eq!(value["n"], n);
                reads += 1;
            }
            reads
        })
    };

    let submit = |from: u32, to: u32| {
        let store = store.clone();
        async move {
            let mut pending = Vec::new();
            for n in from..to {
                let mut batch = Batch::new();
                batch.put(Key::Run(&format!("ordered-{n:05}")), &json!({"n": n}));
                batch.put(Key::Run("ordered-last"), &json!({"n": n}));
                // Sorts first: copied before the batches written during the copy change it.
                batch.put(Key::Run("a-first"), &json!({"n": n}));
                batch.audit(AuditDraft::new(
                    chrono::Utc::now(),
                    "ordered",
                    json!({"n": n}),
                ));
                pending.push(store.submit(batch).await.expect("queued"));
            }
            pending
        }
    };
    let mut pending = submit(0, 1000).await;
    // `join!` polls the compaction first: it is queued after the first thousand batches and
    // before the second.
    let (compacted, after) = tokio::join!(store.compact(), submit(1000, 2000));
    compacted.expect("compacts").expect("on disk");
    pending.extend(after);
    let mut seqs = Vec::new();
    for pending in pending {
        seqs.push(pending.wait().await.expect("durable").audit[0].seq);
    }
    assert!(
        seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "the batches were chained in the order they were submitted"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.expect("reader") > 0);

    let ordered: Vec<u64> = store
        .audit_entries()
        .filter_map(|item| {
            let (_, stored) = item.expect("entry");
            let (_, _, entry) = parse_stored(&stored).expect("parses");
            (entry.kind == "ordered").then(|| entry.detail["n"].as_u64().expect("n"))
        })
        .collect();
    assert_eq!(
        ordered,
        (0..2000).collect::<Vec<u64>>(),
        "none lost, none reordered"
    );
    let last: Value = store
        .get(Key::Run("ordered-last"))
        .expect("read")
        .expect("present");
    assert_eq!(last["n"], 1999);
    let first: Value = store
        .get(Key::Run("a-first"))
        .expect("read")
        .expect("present");
    assert_eq!(
        first["n"], 1999,
        "what was written during the copy is in the copy"
    );

    read_lazily.extend(lazy.map(|item| item.expect("run").0));
    let mut expected: Vec<String> = (0..300).map(|n| format!("kept-{n:04}")).collect();
    expected.extend((0..20).map(|n| format!("churn-00299-{n:02}")));
    expected.extend((0..2000).map(|n| format!("ordered-{n:05}")));
    expected.push("ordered-last".to_owned());
    expected.sort();
    // The lazy reader saw the store as it is read chunk by chunk: what was there before and
    // after the compaction, each key once, in order (`a-first` came before where it was).
    assert_eq!(read_lazily, expected);
}

/// Commits go on while a compaction copies the store: none waits for the copy, only for the
/// last catch-up round and the swap, a small part of the copy's time however large the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wait_for_a_small_part_of_a_compaction() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("state");
    let store = Store::open(&config(&path)).expect("store");
    for chunk in 0..LIVE_RUNS / 500 {
        let mut batch = Batch::new();
        for n in chunk * 500..(chunk + 1) * 500 {
            batch.put(
                Key::Run(&format!("kept-{n:05}")),
                &json!({"n": n, "padding": "k".repeat(2000)}),
            );
        }
        store.commit(batch).await.expect("commit");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut round, mut longest) = (0, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                churn(&store, round..round + 1).await;
                longest = longest.max(started.elapsed());
                round += 1;
            }
            (round, longest)
        })
    };
    let compacted = store
        .compact()
        .await
        .expect("compacts")
        .expect("a store on disk");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, longest) = writer.await.expect("writer");
    assert!(rounds > 10, "commits went on during the copy: {rounds}");
    assert!(
        longest * 4 < compacted.copying && compacted.paused * 4 < compacted.copying,
        "the longest commit took {longest:?} and commits were paused {:?}, against {:?} copying",
        compacted.paused,
        compacted.copying
    );
    let runs = store
        .runs_oldest_first::<Value>(None)
        .collect::<Result<Vec<_>, _>>()
        .expect("runs");
    assert_eq!(runs.len(), LIVE_RUNS as usize + 20);
}

/// Runs of ~2 KB the compaction test above copies.
const LIVE_RUNS: u32 = 20_000;

/// The compaction crash-test child, on one store and acks file.
struct Child {
    dir: tempfile::TempDir,
    /// The last round the previous check found stored: where the next start resumed.
    stored: std::cell::Cell<Option<u64>>,
}

const ROUNDS: u64 = 120;
const KEEP: u64 = 10;

impl Child {
    fn new() -> Child {
        Child {
            dir: tempfile::tempdir().expect("temp dir"),
            stored: std::cell::Cell::new(None),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn command(&self, failpoints: Option<&str>, compact_every: u64) -> Command {
        let mut command =
            crate::crash::child_command(env!("CARGO_BIN_EXE_quench-compact-child"), failpoints);
        command
            .arg("--store")
            .arg(self.store())
            .arg("--acks")
            .arg(self.dir.path().join("acks"))
            .arg("--rounds")
            .arg(ROUNDS.to_string())
            .arg("--compact-every")
            .arg(compact_every.to_string());
        command
    }

    fn crash_at(&self, spec: &str) {
        let output = self.command(Some(spec), 7).output().expect("child runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("crashing at"),
            "FAILPOINTS={spec}: expected a crash at the failpoint, got {:?}\n{stderr}",
            output.status
        );
    }

    fn finish(&self) {
        let output = self.command(None, 7).output().expect("child runs");
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("DONE"),
            "the child did not finish: {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Opens the store as a restart would, and checks that every acknowledged round is in it,
    /// once, in order; returns the last round stored.
    fn check(&self, what: &str) -> u64 {
        let acked: Vec<u64> = std::fs::read_to_string(self.dir.path().join("acks"))
            .unwrap_or_default()
            .lines()
            .map(|line| line.parse().expect("an acked round"))
            .collect();
        let store = Store::open(&config(&self.store())).expect("the store opens after a crash");
        for sibling in siblings(&self.store()) {
            assert!(
                !sibling.exists(),
                "{what}: the open left {} behind",
                sibling.display()
            );
        }
        assert_eq!(
            store.verify_audit().expect("readable").first_bad,
            None,
            "{what}: the audit chain verifies"
        );
        let rounds: Vec<u64> = store
            .audit_entries()
            .map(|item| {
                let (_, stored) = item.expect("entry");
                let (_, _, entry) = parse_stored(&stored).expect("parses");
                entry.detail["n"].as_u64().expect("n")
            })
            .collect();
        let last = rounds.last().copied();
        assert_eq!(
            rounds,
            (0..last.map_or(0, |last| last + 1)).collect::<Vec<u64>>(),
            "{what}: every round stored once, in order"
        );
        // Acks only rise, and every acknowledged round is stored.
        assert!(
            acked.windows(2).all(|pair| pair[0] < pair[1]),
            "{what}: acks in order: {acked:?}"
        );
        let acked_last = acked.last().copied();
        assert!(
            acked_last <= last,
            "{what}: every acknowledged round is stored (acked {acked_last:?}, stored {last:?})"
        );
        // A process killed between a commit and its ack leaves one round stored and not
        // acknowledged, and the next start goes on after it; so since the previous check, at
        // most one round past what was acknowledged or already stored then.
        let previous = self.stored.replace(last);
        let floor = acked_last.max(previous);
        assert!(
            last <= floor.map_or(Some(0), |floor| Some(floor + 1)),
            "{what}: at most one round stored past the last ack (acked {acked_last:?}, stored \
             {last:?}, stored at the previous check {previous:?})"
        );
        if let Some(last) = last {
            let latest: Value = store
                .get(Key::Run("latest"))
                .expect("read")
                .expect("latest");
            assert_eq!(latest["n"], last, "{what}: latest");
            for n in last.saturating_sub(KEEP - 1)..=last {
                let run: Value = store
                    .get(Key::Run(&format!("run-{n:06}")))
                    .expect("read")
                    .unwrap_or_else(|| panic!("{what}: run-{n} lost"));
                assert_eq!(run["n"], n, "{what}: run-{n}");
            }
            let live = store
                .runs_oldest_first::<Value>(None)
                .collect::<Result<Vec<_>, _>>()
                .expect("runs");
            assert_eq!(
                live.len() as u64,
                (last + 1).min(KEEP) + 1,
                "{what}: removed runs stay removed"
            );
        }
        last.unwrap_or(0)
    }
}

/// Killed at each step of the directory dance, at the second and at the fifth compaction: the
/// next open finishes or rolls back the dance and finds every acknowledged round, once.
#[test]
fn killed_at_every_step_of_a_compaction() {
    let points = [
        "store::compact_copied",
        "store::compact_published",
        "store::compact_moved_aside",
        "store::compact_swapped",
        "store::compact_cleaned",
    ];
    std::thread::scope(|scope| {
        for point in points {
            scope.spawn(move || {
                let child = Child::new();
                let mut last = 0;
                for hits in [1, 4] {
                    child.crash_at(&format!("{point}={hits}*off->panic"));
                    let stored = child.check(&format!("{point} after {hits} compactions"));
                    assert!(stored > last, "{point}: the child made progress");
                    last = stored;
                }
                child.finish();
                assert_eq!(child.check(&format!("{point}, finished")), ROUNDS - 1);
            });
        }
    });
}

/// `kill -9` at random moments of a child that compacts after every other round.
#[test]
fn killed_at_random_moments_while_compacting() {
    let child = Child::new();
    for after in crate::crash::random_moments(0x2545_f491_4f6c_dd1d, 8, 20, 300) {
        crate::crash::kill_after(&mut child.command(None, 2), after);
        child.check("random kill -9");
    }
    child.finish();
    assert_eq!(child.check("random kill -9, finished"), ROUNDS - 1);
}
