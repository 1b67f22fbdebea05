//! The store: its format version is checked at open, concurrent commits are grouped without
//! losing or reordering anything, and tampering with the audit log is caught — by
//! `Store::verify_audit` and by `quench audit verify --store`, which names the first bad entry.

use std::sync::Arc;

use quench_runner::store::{AuditDraft, Batch, Key, Store, StoreConfig, SyncMode};
use serde_json::json;

use crate::support;

fn open(path: &std::path::Path) -> Store {
    Store::open(&StoreConfig::new(path)).expect("store opens")
}

#[test]
fn a_store_of_another_format_version_is_refused() {
    let directory = tempfile::tempdir().expect("temp dir");
    drop(open(directory.path()));
    {
        let db = sled::open(directory.path()).expect("raw open");
        db.insert(b"m/format", b"99".to_vec()).expect("write");
        db.flush().expect("flush");
    }
    let error = Store::open(&StoreConfig::new(directory.path())).expect_err("refused");
    assert_eq!(
        error.to_string(),
        format!(
            "the store at {} has format version 99; this quench reads version 1",
            directory.path().display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_are_grouped_and_all_land_in_order() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut config = StoreConfig::new(directory.path());
    config.sync = SyncMode::Always;
    let store = Arc::new(Store::open(&config).expect("store"));
    let mut tasks = Vec::new();
    for task in 0..1000u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = Batch::new();
            batch.put(Key::Run(&format!("run-{task}")), &json!({"task": task}));
            batch.audit(AuditDraft::new(
                chrono::Utc::now(),
                "test",
                json!({"task": task}),
            ));
            store.commit(batch).await.expect("commit").audit[0].seq
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.expect("task"));
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=1000).collect::<Vec<u64>>(),
        "every entry got its own place in the chain"
    );
    for task in 0..1000u32 {
        let value: serde_json::Value = store
            .get(Key::Run(&format!("run-{task}")))
            .expect("read")
            .expect("present");
        assert_eq!(value["task"], task);
    }
    assert_eq!(store.verify_audit().expect("verify").first_bad, None);
}

/// A store with a chain of ten entries, closed again.
async fn store_with_entries(path: &std::path::Path) {
    let store = open(path);
    for n in 1..=10 {
        let mut batch = Batch::new();
        let mut draft = AuditDraft::new(chrono::Utc::now(), "decision", json!({"n": n}));
        draft.allowed = Some(false);
        batch.audit(draft);
        store.commit(batch).await.expect("commit");
    }
}

fn verify_cli(path: &std::path::Path) -> (Option<i32>, String) {
    let output = std::process::Command::new(support::quench_bin())
        .args(["audit", "verify", "--store"])
        .arg(path)
        .output()
        .expect("quench runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn audit_key(seq: u64) -> Vec<u8> {
    let mut key = b"a/".to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

#[tokio::test]
async fn tampering_with_the_audit_log_is_caught() {
    let directory = tempfile::tempdir().expect("temp dir");
    store_with_entries(directory.path()).await;
    assert_eq!(
        verify_cli(directory.path()),
        (
            Some(0),
            format!(
                "audit chain ok: 10 entries, head {}\n",
                head(directory.path())
            )
        )
    );

    // An attacker flips a refusal into an acceptance in entry #4.
    {
        let db = sled::open(directory.path()).expect("raw open");
        let stored = db.get(audit_key(4)).expect("read").expect("entry 4");
        let changed =
            String::from_utf8_lossy(&stored).replace("\"allowed\":false", "\"allowed\":true");
        db.insert(audit_key(4), changed.as_bytes()).expect("write");
        db.flush().expect("flush");
    }
    let (code, stdout) = verify_cli(directory.path());
    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with("audit chain broken at entry #4: its content does not match its hash"),
        "{stdout}"
    );

    // Recomputing the entry's own hash does not help: the next entry no longer follows it.
    {
        let db = sled::open(directory.path()).expect("raw open");
        let stored = db.get(audit_key(4)).expect("read").expect("entry 4");
        let body = &stored[stored.iter().position(|b| *b == b'\n').expect("newline") + 1..];
        let rehashed = [hex(body).as_bytes(), b"\n", body].concat();
        db.insert(audit_key(4), rehashed).expect("write");
        db.flush().expect("flush");
    }
    let (code, stdout) = verify_cli(directory.path());
    assert_eq!(code, Some(1));
    assert!(
        stdout
            .starts_with("audit chain broken at entry #5: it does not follow the entry before it"),
        "{stdout}"
    );
}

#[tokio::test]
async fn removed_entries_are_caught() {
    let directory = tempfile::tempdir().expect("temp dir");
    store_with_entries(directory.path()).await;
    {
        let db = sled::open(directory.path()).expect("raw open");
        db.remove(audit_key(6)).expect("remove");
        db.flush().expect("flush");
    }
    let store = open(directory.path());
    let report = store.verify_audit().expect("verify");
    assert_eq!(
        report.first_bad,
        Some((
            6,
            "entry #6 is missing (the next stored entry is #7)".to_owned()
        ))
    );
    drop(store);

    let directory = tempfile::tempdir().expect("temp dir");
    store_with_entries(directory.path()).await;
    {
        let db = sled::open(directory.path()).expect("raw open");
        db.remove(audit_key(10)).expect("remove");
        db.remove(audit_key(9)).expect("remove");
        db.flush().expect("flush");
    }
    let (code, stdout) = verify_cli(directory.path());
    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with("audit chain broken at entry #9: the log ends at entry #8 but its recorded head is entry #10"),
        "{stdout}"
    );
}

#[test]
fn verify_refuses_a_directory_that_is_not_a_store() {
    let directory = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(support::quench_bin())
        .args(["audit", "verify", "--store"])
        .arg(directory.path())
        .output()
        .expect("quench runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a quench store"));
}

/// Sets every file under `path` (and `path`) to `file_mode`, directories to `directory_mode`.
fn set_modes(path: &std::path::Path, file_mode: u32, directory_mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(path).expect("readable store") {
        let entry = entry.expect("entry").path();
        if entry.is_dir() {
            set_modes(&entry, file_mode, directory_mode);
        } else {
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(file_mode))
                .expect("chmod");
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(directory_mode)).expect("chmod");
}

/// A store this user may not write (a read-only mount, a backup of another user's) is still
/// verified offline: from a copy. Its files are made read-only; as root (CI), who may write
/// anyway, the command runs as `nobody`.
#[tokio::test]
async fn verify_reads_a_store_it_may_not_write() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let directory = tempfile::tempdir().expect("temp dir");
    store_with_entries(directory.path()).await;
    let expected = head(directory.path());
    set_modes(directory.path(), 0o444, 0o555);
    let mut command = std::process::Command::new(support::quench_bin());
    command
        .args(["audit", "verify", "--store"])
        .arg(directory.path());
    let root = std::fs::metadata("/proc/self").expect("/proc").uid() == 0;
    if root {
        command.uid(65534).gid(65534);
    }
    let output = command.output().expect("quench runs");
    set_modes(directory.path(), 0o644, 0o755);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("audit chain ok: 10 entries, head {expected}")
    );
    assert!(stderr.contains("verifying a copy"), "{stderr}");
    assert_eq!(head(directory.path()), expected, "the store is as it was");
}

/// A store in use by another process: offline `audit verify` and `serve` both say so once,
/// name the store, and exit 74 (the store cannot be opened); `verify` says what to do instead.
#[tokio::test]
async fn a_store_in_use_is_named_once_and_exits_74() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store_path = directory.path().join("state");
    let playbooks = directory.path().join("playbooks");
    std::fs::create_dir(&playbooks).expect("playbooks dir");
    store_with_entries(&store_path).await;
    let in_use = open(&store_path);
    let verify = std::process::Command::new(support::quench_bin())
        .args(["audit", "verify", "--store"])
        .arg(&store_path)
        .output()
        .expect("quench runs");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert_eq!(verify.status.code(), Some(74), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the store at {} is in use by another process",
            store_path.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("`quench audit verify` without --store"),
        "{stderr}"
    );

    let serve = std::process::Command::new(support::quench_bin())
        .args(["serve", "--nats", "nats://127.0.0.1:1", "--store"])
        .arg(&store_path)
        .arg("--playbooks")
        .arg(&playbooks)
        .env("NO_COLOR", "1")
        .output()
        .expect("quench runs");
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(74), "{stderr}");
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert_eq!(
        error,
        format!(
            "error: the store at {} is in use by another process (a running quench?)",
            store_path.display()
        )
    );
    drop(in_use);
}

fn head(path: &std::path::Path) -> String {
    open(path).verify_audit().expect("verify").head
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    digest.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// Entries committed together are packed into records (the store's cost is per key); a run's
/// timeline still lists exactly its entries in order, and an entry cut out of the middle of a
/// record is caught.
#[tokio::test]
async fn packed_audit_records_keep_timelines_and_catch_a_removed_entry() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = open(directory.path());
    let mut batch = Batch::new();
    for n in 0..70u32 {
        let mut draft = AuditDraft::new(chrono::Utc::now(), "note", json!({"n": n}));
        draft.run_id = (n % 7 != 0).then(|| format!("run-{}", n % 3));
        batch.audit(draft);
    }
    let committed = store.commit(batch).await.expect("commit");
    assert_eq!(
        committed.audit.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=70).collect::<Vec<u64>>()
    );
    for run in 0..3u32 {
        let timeline: Vec<u64> = store
            .run_audit(&format!("run-{run}"))
            .expect("timeline")
            .iter()
            .map(|entry| entry.detail["n"].as_u64().expect("n"))
            .collect();
        let expected: Vec<u64> = (0..70u64)
            .filter(|n| n % 7 != 0 && n % 3 == u64::from(run))
            .collect();
        assert_eq!(timeline, expected, "timeline of run-{run}");
    }
    assert_eq!(store.verify_audit().expect("verify").first_bad, None);
    drop(store);
    let records = {
        let db = sled::open(directory.path()).expect("raw open");
        db.scan_prefix(b"a/").count()
    };
    assert!(records < 70 / 4, "70 entries packed into {records} records");

    // An attacker removes entry #3 from inside the first record (entries are two lines each).
    {
        let db = sled::open(directory.path()).expect("raw open");
        let record = db.get(audit_key(1)).expect("read").expect("record 1");
        let lines: Vec<&[u8]> = record.split(|byte| *byte == b'\n').collect();
        let kept: Vec<&[u8]> = lines
            .iter()
            .enumerate()
            .filter(|(index, _)| index / 2 != 2)
            .map(|(_, line)| *line)
            .collect();
        db.insert(audit_key(1), kept.join(&b'\n')).expect("write");
        db.flush().expect("flush");
    }
    let (code, stdout) = verify_cli(directory.path());
    assert_eq!(code, Some(1));
    assert!(
        stdout
            .starts_with("audit chain broken at entry #3: it does not follow the entry before it"),
        "{stdout}"
    );
}

/// Runs that wait on a gate for 30 days, then revoke: what the retention tests purge.
const RETAINED: &str = r#"schema: quench.playbook/v1
name: retained
on:
  finding:
    kinds: [test.retained]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [lead@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 30d
      on_timeout: keep
  - id: revoke
    uses: openai.revoke_key
    with:
      project_id: proj_1
      key_id: "{{ finding.resource.id }}"
"#;

/// `[store] retain_ended`: a run ended longer ago than the retention is purged with everything
/// that belongs only to it (record, gates, effect journal, timeline index); a run that ended
/// later, and an open run, are kept; the audit log keeps every entry, verifies, and records the
/// purge; a late answer to a purged run's gate is refused as unknown, not written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_runs_are_purged_after_their_retention_and_the_audit_log_is_kept() {
    let _purges = support::PURGES.lock().await;
    use crate::support::{Harness, finding, started};
    use quench_runner::store::Key;
    let harness = Harness::new(&[RETAINED]).await;
    let old = started(
        &harness
            .ingest(&[finding("f-old", "test.retained", "key_old")])
            .await[0],
    );
    let open = started(
        &harness
            .ingest(&[finding("f-open", "test.retained", "key_open")])
            .await[0],
    );
    let old_key = harness.run(&old).key;
    let gate_token = harness.gate(&old, "decide").token;
    harness
        .answer(&old, "decide", "revoke", "lead@example.com")
        .await;
    assert_eq!(harness.run(&old).status.as_str(), "completed");
    let store = harness.engine.store();
    let effect = format!("{old}/revoke/0");
    assert!(store.contains(Key::Effect(&effect)).expect("readable"));
    assert!(!store.run_audit(&old).expect("timeline").is_empty());

    // Ten days on, a third run ends; then the first is eleven days ended, the third one day.
    harness
        .advance(std::time::Duration::from_secs(10 * 86400))
        .await;
    let recent = started(
        &harness
            .ingest(&[finding("f-recent", "test.retained", "key_recent")])
            .await[0],
    );
    harness
        .answer(&recent, "decide", "keep", "lead@example.com")
        .await;
    harness.advance(std::time::Duration::from_secs(86400)).await;
    let audit_before = store.verify_audit().expect("verifies");

    let retain = std::time::Duration::from_secs(7 * 86400);
    let counted = || {
        crate::support::metric(
            &quench_runner::metrics::get().render(),
            "quench_runs_purged_total",
        )
    };
    let counted_before = counted();
    // As in a store written before the index of ended runs was kept: the first pass indexes
    // the stored runs first.
    let old_end = harness.run(&old).ended_at.expect("ended");
    let mut batch = Batch::new();
    batch.delete(Key::Ended(old_end, &old));
    batch.delete(Key::Meta(quench_runner::store::ENDED_INDEX));
    store.commit(batch).await.expect("commit");
    let purged = harness
        .engine
        .purge_ended(retain, 100)
        .await
        .expect("purge");
    assert_eq!((purged.runs, purged.more), (1, false), "{purged:?}");
    assert!(store.ended_index_complete().expect("readable"));
    assert_eq!(
        counted() - counted_before,
        1.0,
        "quench_runs_purged_total counts it"
    );
    assert!(harness.engine.run(&old).expect("readable").is_none());
    assert!(
        store
            .get::<serde_json::Value>(Key::Gate(&old, "decide"))
            .expect("readable")
            .is_none()
    );
    assert!(!store.contains(Key::Effect(&effect)).expect("readable"));
    assert!(store.run_audit(&old).expect("timeline").is_empty());
    assert!(
        !store
            .contains(Key::RunOfKey(&old_key, &old))
            .expect("readable")
            && !store
                .contains(Key::RunOfPlaybook("retained", &old))
                .expect("readable"),
        "its index entries go with it"
    );
    assert!(
        store
            .contains(Key::RunOfPlaybook("retained", &recent))
            .expect("readable")
    );
    assert_eq!(harness.run(&recent).status.as_str(), "completed");
    assert_eq!(harness.run(&open).status.as_str(), "waiting");
    assert!(
        store
            .contains(Key::Gate(&open, "decide"))
            .expect("readable")
    );

    // Nothing left to purge; the audit log kept every entry and records the purge.
    let again = harness
        .engine
        .purge_ended(retain, 100)
        .await
        .expect("purge");
    assert_eq!(again.runs, 0);
    let audit_after = store.verify_audit().expect("verifies");
    assert!(audit_after.first_bad.is_none(), "{audit_after:?}");
    assert_eq!(audit_after.entries, audit_before.entries + 1);
    let purges = harness.audit("runs_purged");
    assert_eq!(purges.len(), 1);
    assert_eq!(purges[0].detail["runs"], 1);
    assert_eq!(purges[0].detail["retain_ended"], "7days");
    assert!(
        harness
            .audit("decision")
            .iter()
            .any(|entry| entry.run_id.as_deref() == Some(old.as_str()))
    );

    // A late answer to the purged run's gate: refused as an unknown gate, nothing written back.
    let outcome = harness
        .answer_with_token(&old, "decide", "keep", "lead@example.com", &gate_token)
        .await;
    assert!(
        matches!(
            outcome,
            quench_runner::engine::DecisionOutcome::Refused(
                quench_runner::engine::Refusal::UnknownGate
            )
        ),
        "{outcome:?}"
    );
    assert!(harness.engine.run(&old).expect("readable").is_none());
}

/// Dropping the last handle returns only once the store's files are let go of — sled's own
/// threads may still be finishing log writes after its database is dropped — so the same
/// process can open the store again at once (an engine restarted in a test, `audit verify`
/// after a test's service). Without the wait about one round in a hundred found it locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_can_be_opened_again_at_once() {
    let directory = tempfile::tempdir().expect("temp dir");
    for round in 0..300u32 {
        let store = Store::open(&StoreConfig::new(directory.path()))
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        let mut batch = Batch::new();
        for n in 0..50 {
            batch.put(
                Key::Run(&format!("run-{round}-{n}")),
                &json!({"n": n, "padding": "x".repeat(2000)}),
            );
            batch.audit(AuditDraft::new(chrono::Utc::now(), "test", json!({"n": n})));
        }
        store.commit(batch).await.expect("commit");
        drop(store);
    }
}

/// Runs are found by key and by playbook through the store's indexes, newest first and paged,
/// exactly as a scan of every run finds them; a store whose runs were written before the
/// indexes is indexed once at start-up.
#[tokio::test]
async fn runs_are_found_by_key_and_playbook_through_their_indexes() {
    use crate::support::{Harness, finding, started};
    use quench_runner::engine::Run;
    use quench_runner::store::{Batch, Key, RunIndex, RunsScan};
    let playbook = |name: &str, kind: &str| {
        format!(
            "schema: quench.playbook/v1\nname: {name}\non:\n  finding:\n    kinds: [{kind}]\nsteps:\n  - id: say\n    uses: note\n    with:\n      message: hi\n"
        )
    };
    let (first, second) = (
        playbook("first", "test.first"),
        playbook("second", "test.second"),
    );
    let harness = Harness::new(&[&first, &second]).await;
    let mut runs = Vec::new();
    for (n, (kind, key_id)) in [
        ("test.first", "key_a"),
        ("test.first", "key_b"),
        ("test.second", "key_a"),
        ("test.first", "key_a"),
        ("test.first", "key_a"),
        ("test.second", "key_b"),
    ]
    .into_iter()
    .enumerate()
    {
        let outcome = harness
            .ingest(&[finding(&format!("f-{n}"), kind, key_id)])
            .await;
        runs.push(started(&outcome[0]));
    }
    let store = harness.engine.store();
    let key_a = harness.run(&runs[0]).key;
    // What a scan of every run finds, newest first.
    let scanned = |keep: &dyn Fn(&Run) -> bool| -> Vec<String> {
        store
            .runs_newest_first::<Run>("", None)
            .map(|item| item.expect("readable").1)
            .filter(|run| keep(run))
            .map(|run| run.id)
            .collect()
    };
    // Every page of an index, two at a time.
    let paged = |index: RunIndex<'_>| -> Vec<String> {
        let mut found = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let page = store
                .runs_page::<Run>(
                    RunsScan {
                        index: Some(index),
                        before: before.as_deref(),
                        ..RunsScan::default()
                    },
                    2,
                    100,
                    |_| true,
                )
                .expect("page");
            found.extend(page.items.into_iter().map(|run| run.id));
            match page.next {
                Some(next) => before = Some(next),
                None => return found,
            }
        }
    };
    let of_key_a = scanned(&|run| run.key == key_a);
    // (A finding's default key is its kind and resource: the second playbook's runs have
    // keys of their own.)
    assert_eq!(
        of_key_a,
        vec![runs[4].clone(), runs[3].clone(), runs[0].clone()]
    );
    assert_eq!(paged(RunIndex::Key(&key_a)), of_key_a);
    let of_second = scanned(&|run| run.playbook == "second");
    assert_eq!(of_second, vec![runs[5].clone(), runs[2].clone()]);
    assert_eq!(paged(RunIndex::Playbook("second")), of_second);
    assert!(paged(RunIndex::Key("openai:key:nobody")).is_empty());
    assert!(paged(RunIndex::Playbook("first\0")).is_empty());

    // Runs stored without index entries (as by a quench before them) are indexed once.
    assert!(!store.run_indexes_complete().expect("readable"));
    let mut batch = Batch::new();
    for run in &of_key_a {
        batch.delete(Key::RunOfKey(&key_a, run));
    }
    store.commit(batch).await.expect("commit");
    assert!(paged(RunIndex::Key(&key_a)).is_empty());
    harness.engine.ensure_run_indexes().await.expect("index");
    assert!(store.run_indexes_complete().expect("readable"));
    assert_eq!(paged(RunIndex::Key(&key_a)), of_key_a);
    assert_eq!(paged(RunIndex::Playbook("second")), of_second);
}

/// Seen finding ids are forgotten once older than `seen_retention`, as fast as intake takes them
/// in whatever the batch size: after batches of 1,000 findings, each taken in two hours after the
/// last with a retention of one hour, only the last batch's ids are kept. (A fixed 256 per
/// commit kept 3,976 here, and the ids piled up under load.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_ids_are_forgotten_as_fast_as_large_batches_take_them_in() {
    use quench_runner::store::ByTime;
    const PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: unrelated
on:
  finding:
    kinds: [test.other]
steps:
  - id: note
    uses: note
    with:
      message: hi
"#;
    let harness = support::Harness::build(
        Store::temporary().expect("store"),
        &[PLAYBOOK],
        support::start_time(),
        Default::default(),
        |_| {},
        None,
        |config| config.seen_retention = std::time::Duration::from_secs(3600),
    )
    .await;
    let seen = || {
        harness
            .engine
            .store()
            .older_than(
                ByTime::Seen,
                chrono::DateTime::<chrono::Utc>::MAX_UTC,
                100_000,
            )
            .expect("readable")
            .len()
    };
    for batch in 0..5 {
        let findings: Vec<_> = (0..1000)
            .map(|n| support::finding(&format!("f-{batch}-{n}"), "test.unmatched", "key_1"))
            .collect();
        harness.ingest(&findings).await;
        assert_eq!(seen(), 1000, "after batch {batch}");
        harness
            .advance(std::time::Duration::from_secs(2 * 3600))
            .await;
    }
}

/// Open runs that started long ago do not hold the purge up: with a pass limit of 1 and five
/// waiting runs older than the ended one, the ended run is purged in one pass. (Passes that
/// scanned runs oldest first read the same open runs again each time, up to four times their
/// limit, and never reached it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_runs_older_than_an_ended_one_do_not_hold_the_purge_up() {
    let _purges = support::PURGES.lock().await;
    use crate::support::{Harness, finding, started};
    let harness = Harness::new(&[RETAINED]).await;
    for n in 0..5 {
        let id = format!("f-open-{n}");
        started(
            &harness
                .ingest(&[finding(&id, "test.retained", &format!("key_open_{n}"))])
                .await[0],
        );
    }
    let done = started(
        &harness
            .ingest(&[finding("f-done", "test.retained", "key_done")])
            .await[0],
    );
    harness
        .answer(&done, "decide", "keep", "lead@example.com")
        .await;
    harness
        .advance(std::time::Duration::from_secs(8 * 86400))
        .await;
    let pass = harness
        .engine
        .purge_ended(std::time::Duration::from_secs(7 * 86400), 1)
        .await
        .expect("purge");
    assert_eq!(pass.runs, 1, "{pass:?}");
    assert!(harness.engine.run(&done).expect("readable").is_none());
}

/// A commit log whose appends need the async runtime, as the cluster's journal does (each
/// append is a NATS request the runtime's tasks carry, awaited from the committer's thread).
#[derive(Debug)]
struct ThroughTheRuntime {
    runtime: tokio::runtime::Handle,
    position: u64,
}

impl quench_runner::store::CommitLog for ThroughTheRuntime {
    fn append(&mut self, _writes: &[quench_runner::store::Write]) -> Result<u64, String> {
        self.position += 1;
        let position = self.position;
        self.runtime.block_on(async move {
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                position
            })
            .await
            .map_err(|error| error.to_string())
        })
    }
}

/// Dropping a store's last clone waits for its committer to finish what was sent; when that
/// needs the runtime (a journal append), the drop must not take the runtime's every worker
/// with it. A runner losing several partitions at once dropped their stores on each of its
/// workers and hung for good. Here the runtime has one worker, and the drop happens on it
/// while an append is under way.
#[test]
fn dropping_a_store_on_the_runtimes_only_worker_lets_its_journal_append_finish() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let directory = tempfile::tempdir().expect("temp dir");
    let config = StoreConfig::new(directory.path());
    let (done, finished) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let log = ThroughTheRuntime {
            runtime: tokio::runtime::Handle::current(),
            position: 0,
        };
        let store = Store::open_logged(&config, Box::new(log)).expect("store");
        let mut batch = Batch::new();
        batch.put(Key::Run("run-1"), &json!({"n": 1}));
        // Queued, its append under way on the committer's thread; the store's last clone
        // goes while it is, on the worker.
        let pending = store.submit(batch).await.expect("queued");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(store);
        let outcome = pending.wait().await;
        let _ = done.send(outcome.map(|_| ()).map_err(|error| error.to_string()));
    });
    let Ok(outcome) = finished.recv_timeout(std::time::Duration::from_secs(20)) else {
        // Its worker is stuck for good: dropping the runtime would wait for it for ever.
        std::mem::forget(runtime);
        panic!("the drop never returned: nothing was left to carry the append it waited for");
    };
    assert_eq!(outcome, Ok(()));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
}

/// The run-event publisher reads the audit log from where it stopped: from any position, in
/// the middle of a packed record or at its edge, before or after a prune, it gets exactly the
/// entries after it, in order.
#[tokio::test]
async fn the_audit_entries_after_any_position_are_exactly_those_after_it() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = open(directory.path());
    // Commits of 1, 2, … 9 entries: records of every size, 45 entries in all.
    for size in 1..=9u32 {
        let mut batch = Batch::new();
        for n in 0..size {
            batch.audit(AuditDraft::new(
                chrono::Utc::now(),
                "note",
                json!({"size": size, "n": n}),
            ));
        }
        store.commit(batch).await.expect("commit");
    }
    let all: Vec<(u64, Vec<u8>)> = store
        .audit_entries()
        .collect::<Result<_, _>>()
        .expect("entries");
    assert_eq!(all.len(), 45);
    let head = store.audit_durable_seq();
    assert_eq!(head, 45, "every committed entry is durable");
    let check = |all: &[(u64, Vec<u8>)]| {
        for after in 0..=head + 2 {
            let read: Vec<(u64, Vec<u8>)> = store
                .audit_entries_after(after)
                .collect::<Result<_, _>>()
                .expect("entries after");
            let expected: Vec<(u64, Vec<u8>)> = all
                .iter()
                .filter(|(seq, _)| *seq > after)
                .cloned()
                .collect();
            assert_eq!(read, expected, "after #{after}");
        }
    };
    check(&all);
    // Pruned through entry 10 (the end of the fourth commit's record).
    let through = 10;
    let hash = std::str::from_utf8(&all[9].1)
        .expect("utf-8")
        .split_once('\n')
        .expect("hash line")
        .0
        .to_owned();
    store.prune_audit(through, &hash).await.expect("pruned");
    let kept: Vec<(u64, Vec<u8>)> = all.into_iter().filter(|(seq, _)| *seq > 10).collect();
    assert_eq!(
        store
            .audit_entries()
            .collect::<Result<Vec<_>, _>>()
            .expect("entries"),
        kept
    );
    check(&kept);
}
