//! Cluster mode's partition leases on a real nats-server: three runners share the partitions
//! as the rendezvous map says; one leaving hands its partitions over without a restart; one
//! that stops (a crash, a pause) loses its leases after one lease time, and finds them lost
//! when it comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use quench_runner::cluster::owners::{Lease, Owners};
use quench_runner::cluster::partition;

use crate::support;

const PARTITIONS: u32 = 16;
const LEASE: Duration = Duration::from_secs(3);

struct Runner {
    owners: Owners,
    held: BTreeMap<u32, Lease>,
}

async fn join(jetstream: &async_nats::jetstream::Context, id: &str) -> Runner {
    Runner {
        owners: Owners::join(jetstream, id, LEASE, 1).await.expect("join"),
        held: BTreeMap::new(),
    }
}

/// Rebalancing rounds until nothing moves (at most 10), every runner having said it is alive
/// first (as its heartbeat task does between rounds).
async fn settle(runners: &mut [&mut Runner]) {
    for runner in runners.iter() {
        runner.owners.heartbeat().await.expect("heartbeat");
    }
    for _ in 0..10 {
        let mut moved = false;
        for runner in runners.iter_mut() {
            let changes = runner
                .owners
                .rebalance(PARTITIONS, &mut runner.held)
                .await
                .expect("rebalance");
            moved |= !changes.claimed.is_empty() || !changes.released.is_empty();
        }
        if !moved {
            return;
        }
    }
    panic!("the partitions did not settle in 10 rounds");
}

/// Every partition is held by exactly the member the map names.
async fn check(runners: &[&Runner]) {
    let members: Vec<&str> = runners
        .iter()
        .map(|runner| runner.owners.runner())
        .collect();
    for p in 0..PARTITIONS {
        let want = partition::owner(p, &members).expect("an owner");
        let holders: Vec<&str> = runners
            .iter()
            .filter(|runner| runner.held.contains_key(&p))
            .map(|runner| runner.owners.runner())
            .collect();
        assert_eq!(holders, vec![want], "partition {p}");
        let (owner, _) = runners[0]
            .owners
            .owner_of(p)
            .await
            .expect("read")
            .expect("held");
        assert_eq!(owner, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_share_hand_over_and_lose_partitions() {
    let nats = support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    let mut a = join(&jetstream, "runner-a").await;
    let mut b = join(&jetstream, "runner-b").await;
    let mut c = join(&jetstream, "runner-c").await;
    settle(&mut [&mut a, &mut b, &mut c]).await;
    check(&[&a, &b, &c]).await;
    assert!(!c.held.is_empty());

    // c leaves: it gives its partitions up and goes; a and b take them in the next round.
    for lease in std::mem::take(&mut c.held).into_values() {
        c.owners.release(lease).await.expect("release");
    }
    c.owners.leave().await.expect("leave");
    settle(&mut [&mut a, &mut b]).await;
    check(&[&a, &b]).await;

    // c comes back: partitions move to it again, and only the ones the map gives it.
    let before_a = a.held.len();
    settle(&mut [&mut a, &mut b, &mut c]).await;
    check(&[&a, &b, &c]).await;
    assert!(a.held.len() < before_a);

    // b stops (no heartbeat, no renewal). After one lease its keys are gone and the others
    // take its partitions; when b comes back, it finds every lease it held lost.
    let stopped: Vec<u32> = b.held.keys().copied().collect();
    assert!(!stopped.is_empty());
    tokio::time::sleep(LEASE + Duration::from_secs(2)).await;
    let members = a.owners.members().await.expect("members");
    assert!(!members.contains("runner-b"), "{members:?}");
    settle(&mut [&mut a, &mut c]).await;
    check(&[&a, &c]).await;
    let changes = b
        .owners
        .rebalance(PARTITIONS, &mut b.held)
        .await
        .expect("rebalance");
    let mut lost = changes.lost.clone();
    lost.sort_unstable();
    assert_eq!(lost, stopped, "{changes:?}");
    // ... and having said it is alive again, it gets its share back over the next rounds.
    settle(&mut [&mut a, &mut b, &mut c]).await;
    check(&[&a, &b, &c]).await;
}

/// A runner configured with another lease than the bucket was made with is refused at join,
/// saying so: its renewals would be paced for a lease the server does not keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_with_another_lease_is_refused_at_join() {
    let nats = support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    join(&jetstream, "runner-a").await;
    let error = Owners::join(&jetstream, "runner-b", LEASE * 4, 1)
        .await
        .expect_err("another lease");
    assert!(
        error.to_string().contains(
            "the cluster's runners use a lease of 3s and this one `[cluster] lease = \"12s\"`: \
             give every runner the same lease"
        ),
        "{error}"
    );
    // The same lease joins.
    join(&jetstream, "runner-c").await;
}

/// The partition count is recorded by the first runner; a runner with another is refused,
/// saying what the cluster has: every run's and key's partition depends on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_with_another_partition_count_is_refused() {
    let nats = support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    quench_runner::cluster::owners::settle_partitions(&jetstream, 8, 1)
        .await
        .expect("the first runner records 8");
    quench_runner::cluster::owners::settle_partitions(&jetstream, 8, 1)
        .await
        .expect("the same count joins");
    let error = quench_runner::cluster::owners::settle_partitions(&jetstream, 64, 1)
        .await
        .expect_err("another count");
    assert!(
        error.to_string().contains(
            "the cluster was created with 8 partitions and this runner has `[cluster] \
             partitions = 64`"
        ),
        "{error}"
    );
}

/// A member advertises where its API is reached; the others read it from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_advertises_its_address() {
    let nats = support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    let mut a = join(&jetstream, "runner-a").await;
    let b = join(&jetstream, "runner-b").await;
    assert_eq!(b.owners.address_of("runner-a").await.expect("read"), None);
    a.owners
        .advertise("http://quench-0.quench:8080")
        .await
        .expect("advertise");
    assert_eq!(
        b.owners
            .address_of("runner-a")
            .await
            .expect("read")
            .as_deref(),
        Some("http://quench-0.quench:8080")
    );
    a.owners.leave().await.expect("leave");
    assert_eq!(b.owners.address_of("runner-a").await.expect("read"), None);
}
