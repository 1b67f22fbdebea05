//! A partition's store in cluster mode, on a real nats-server: every commit goes to the
//! partition's journal (fenced) before the runner's local cache; a runner that takes the
//! partition over rebuilds the same state from the journal — runs, audit chain and head,
//! counters — and goes on with the chain; the former owner's next commit is refused and fails
//! its store, and a cache that fell behind catches up from its own position. A commit larger
//! than the server's `max_payload` goes in parts. A snapshot lets the journal be purged: a
//! runner without a cache, or with one behind the purge, starts from the snapshot.

use quench_runner::cluster::journal::{Journal, Record};
use quench_runner::cluster::snapshot::Snapshots;
use quench_runner::cluster::store::{Follower, Opening, Owned, open};
use quench_runner::store::{AuditDraft, Batch, Key, StoreConfig, SyncMode};
use serde_json::{Value, json};

use crate::support;

const PARTITION: u32 = 7;

fn config(path: &std::path::Path) -> StoreConfig {
    StoreConfig {
        sync: SyncMode::Os,
        ..StoreConfig::new(path)
    }
}

async fn take(
    (journal, snapshots): (&Journal, &Snapshots),
    runner: &str,
    lease: u64,
    path: &std::path::Path,
) -> Owned {
    let opening = Opening {
        journal,
        snapshots,
        runner,
        lease,
        max_payload: 1024 * 1024,
    };
    open(&opening, PARTITION, &config(path))
        .await
        .expect("takes the partition over")
}

fn batch(n: usize, padding: usize) -> Batch {
    let mut batch = Batch::new();
    batch.put(
        Key::Run(&format!("run-{n:03}")),
        &json!({"n": n, "padding": "x".repeat(padding)}),
    );
    if n >= 3 {
        batch.delete(Key::Run(&format!("run-{:03}", n - 3)));
    }
    batch.count("runs", 1);
    batch.audit(AuditDraft::new(chrono::Utc::now(), "step", json!({"n": n})));
    batch
}

/// What a cache holds that matters: every run, the audit entries and the chain's verified head,
/// and the counters.
type State = (
    Vec<(String, Value)>,
    Vec<(u64, Vec<u8>)>,
    String,
    Option<std::collections::BTreeMap<String, i64>>,
);

fn state(owned: &Owned) -> State {
    let runs = owned
        .store
        .runs_oldest_first::<Value>(None)
        .map(|item| item.expect("run"))
        .collect();
    let audit = owned
        .store
        .audit_entries()
        .map(|item| item.expect("entry"))
        .collect();
    let verified = owned.store.verify_audit().expect("verifies");
    assert_eq!(verified.first_bad, None);
    (
        runs,
        audit,
        verified.head,
        owned.store.counters().expect("counters"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_to_another_runner_with_its_whole_state_and_fences_the_old_one() {
    let nats = support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    let journal = Journal::ensure(jetstream.clone(), 1)
        .await
        .expect("journal");
    let snapshots = Snapshots::open(jetstream, 1).await.expect("snapshots");
    let cluster = (&journal, &snapshots);
    let directory = tempfile::tempdir().expect("temp dir");

    let a = take(cluster, "runner-a", 1, &directory.path().join("a")).await;
    assert_eq!(a.position, 0);
    for n in 0..20 {
        // Every fifth commit is larger than the server's max_payload (1 MiB): parts.
        let padding = if n % 5 == 4 { 1_500_000 } else { 10 };
        a.store.commit(batch(n, padding)).await.expect("commits");
    }
    let parts = journal
        .replay(PARTITION, 0)
        .await
        .expect("replay")
        .into_iter()
        .filter(|(_, record)| matches!(record, Record::Commit { parts, .. } if *parts > 1))
        .count();
    assert!(parts >= 8, "the large commits went in parts: {parts} parts");
    let before = state(&a);
    assert_eq!(before.0.len(), 3, "runs 17, 18 and 19 are left");
    assert_eq!(before.1.len(), 20);

    // runner-b takes the partition over with an empty cache: the same state, rebuilt.
    let b = take(cluster, "runner-b", 2, &directory.path().join("b")).await;
    assert!(b.position > 0);
    assert_eq!(state(&b), before);
    let counters = b.store.counters().expect("counters").expect("kept");
    assert_eq!(counters.get("runs"), Some(&20));

    // runner-a, paused meanwhile, commits as if it still owned the partition: refused, its
    // store fails, and its fencing token says why.
    assert!(!a.fenced.is_cancelled());
    let refused = a.store.commit(batch(99, 10)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(a.fenced.is_cancelled());
    assert!(a.store.failed().is_cancelled());
    assert!(
        a.store
            .get::<Value>(Key::Run("run-099"))
            .expect("read")
            .is_none(),
        "a refused commit is not applied to the cache"
    );

    // runner-b goes on with the chain where runner-a left it.
    let committed = b
        .store
        .commit(batch(20, 10))
        .await
        .expect("the owner commits");
    assert_eq!(committed.audit[0].seq, 21);
    let after_b = state(&b);
    assert_eq!(after_b.1.len(), 21);
    drop(a);

    // runner-a takes it back with its own cache, behind by b's one commit: it applies only
    // what followed its position.
    let a = take(cluster, "runner-a", 3, &directory.path().join("a")).await;
    assert_eq!(state(&a), after_b);
    let committed = a.store.commit(batch(21, 10)).await.expect("commits");
    assert_eq!(committed.audit[0].seq, 22);

    // runner-a snapshots the partition: the journal below it is purged.
    let at = a
        .snapshot(&snapshots)
        .await
        .expect("snapshot")
        .expect("something committed");
    let left = journal.replay(PARTITION, 0).await.expect("replay");
    assert_eq!(left.first().map(|(sequence, _)| *sequence), Some(at));
    a.store.commit(batch(22, 10)).await.expect("commits");
    let after_a = state(&a);
    drop(a);

    // runner-c has no cache, runner-b's is behind the purge: both start from the snapshot and
    // apply the commit after it — the same state, and the chain goes on.
    let c = take(cluster, "runner-c", 4, &directory.path().join("c")).await;
    assert_eq!(state(&c), after_a);
    drop(c);
    drop(b);
    let b = take(cluster, "runner-b", 5, &directory.path().join("b")).await;
    assert_eq!(state(&b), after_a);
    let committed = b.store.commit(batch(23, 10)).await.expect("commits");
    assert_eq!(committed.audit[0].seq, 24);
}

/// Hot standby: a follower's cache takes what the owner commits while it stands by — from the
/// start, then from the owner's snapshot once the journal below it is purged, then what
/// follows — and a take-over from that cache replays only what landed after its last pass, to
/// the owner's exact state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_by_cache_follows_the_journal_and_its_take_over_replays_only_the_rest() {
    let nats = support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    let journal = Journal::ensure(jetstream.clone(), 1)
        .await
        .expect("journal");
    let snapshots = Snapshots::open(jetstream, 1).await.expect("snapshots");
    let cluster = (&journal, &snapshots);
    let directory = tempfile::tempdir().expect("temp dir");
    let standby = directory.path().join("b");
    let mut follower = Follower::new(PARTITION, &config(&standby));

    let a = take(cluster, "runner-a", 1, &directory.path().join("a")).await;
    for n in 0..5 {
        a.store.commit(batch(n, 10)).await.expect("commits");
    }
    let first = follower
        .catch_up(&journal, &snapshots)
        .await
        .expect("follows");
    assert_eq!(first, journal.last(PARTITION).await.expect("last"));

    // The owner snapshots and purges below it, and commits more: the follower, behind the
    // purge, starts from the snapshot.
    for n in 5..8 {
        a.store.commit(batch(n, 10)).await.expect("commits");
    }
    let at = a
        .snapshot(&snapshots)
        .await
        .expect("snapshot")
        .expect("something committed");
    a.store.commit(batch(8, 10)).await.expect("commits");
    let second = follower
        .catch_up(&journal, &snapshots)
        .await
        .expect("follows");
    assert!(second > at, "{second} after the snapshot at {at}");
    assert_eq!(second, journal.last(PARTITION).await.expect("last"));

    // Two more commits after its last pass; a dies; the follower closes its cache and takes
    // over from it: only those two are replayed, and the state is a's.
    a.store.commit(batch(9, 10)).await.expect("commits");
    a.store.commit(batch(10, 10)).await.expect("commits");
    let before = state(&a);
    drop(a);
    follower.close().await;
    let b = take(cluster, "runner-b", 2, &standby).await;
    assert_eq!(state(&b), before);
    let replayed = journal
        .replay(PARTITION, second)
        .await
        .expect("replay")
        .len();
    assert_eq!(
        replayed, 3,
        "a's two commits and b's owner record after the last pass"
    );
    let committed = b.store.commit(batch(11, 10)).await.expect("commits");
    assert_eq!(committed.audit[0].seq, 12);
}
