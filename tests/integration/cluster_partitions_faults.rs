//! Faults of the network under `[cluster] partitions = 8` with three runners (the
//! `cluster_partitions` fixture): a runner split from the cluster loses its partitions to the
//! two others (parked runs still parked, each deadline firing once) and, healed, gets a share
//! back and serves. The loss of the journal stream's leader is `cluster_partitions_leader`, a
//! command of its own (see there).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::cluster_partitions::{
    Cluster, HELD, NOTE, PARTITIONS, every_chain_verifies, get, one_run_each, runs, shared_out,
    shares,
};
use crate::support::{self, NatsServer};

/// Runs by key: (id, status) of each.
pub(crate) type Runs = std::collections::BTreeMap<String, Vec<(String, String)>>;

/// Waits (up to `within`) until the runs the runner at `listen` lists (every partition's)
/// satisfy `check`.
pub(crate) async fn until_runs(
    listen: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&Runs) -> bool,
) {
    support::eventually_async(within, what, || async {
        runs(listen).await.is_some_and(|runs| check(&runs))
    })
    .await;
}

/// Waits (a minute at most) until the runner at `listen` lists one completed run for each of
/// `keys`, and no other run.
async fn each_completed(listen: &str, keys: &BTreeSet<String>, what: &str) {
    until_runs(listen, Duration::from_secs(60), what, |runs| {
        runs.len() == keys.len() && one_run_each(runs, keys, "completed")
    })
    .await;
}

/// The lines of `log` that carry `message` about `partition`.
fn says(log: &str, message: &str, partition: u32) -> bool {
    let field = format!("partition={partition}");
    log.lines()
        .any(|line| line.contains(message) && line.split_whitespace().any(|word| word == field))
}

/// runner-c reaches the servers only through proxies (servers that do not tell clients about
/// each other); with runs parked in every partition, the proxies are cut: c's leases run out,
/// it says so for each partition it held and stops serving them (the process goes on); a and b
/// take every partition over with the parked runs still parked, and fire each deadline once.
/// Healed, c gets a share back, new findings of its partitions have their runs there, and every
/// chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_split_from_the_cluster_loses_its_partitions_and_serves_again_when_healed() {
    let cluster = Cluster::on(
        NatsServer::unadvertised_cluster,
        &[("held.yaml", HELD), ("noted.yaml", NOTE)],
        "",
    )
    .await;
    let _print = cluster.print_logs_on_failure();
    let upstreams: Vec<String> = cluster
        .servers
        .iter()
        .map(|server| format!("127.0.0.1:{}", server.port))
        .collect();
    let split = support::split::Split::start(&upstreams).await;
    let (mut runners, listens) = cluster
        .all_serve(vec![
            cluster.launch("runner-a"),
            cluster.launch("runner-b"),
            cluster.launch_via("runner-c", &split.nats_urls()),
        ])
        .await;
    let held = cluster.park("test.held", 24, &listens[0]).await;
    let c_share = shares(&listens[2..]).await.remove(0);
    // A finding's run is in its key's partition.
    let on_c = held
        .iter()
        .filter(|key| c_share.contains(&quench_runner::cluster::partition::of_key(key, PARTITIONS)))
        .count();
    assert!(
        on_c > 0,
        "runner-c serves some of the parked runs: {c_share:?}"
    );

    split.cut();
    let cut = Instant::now();
    shared_out(&listens[..2], "a and b serve every partition").await;
    eprintln!(
        "a and b serve every partition {:?} after the split",
        cut.elapsed()
    );
    support::eventually(
        Duration::from_secs(30),
        "runner-c says it lost each partition it held",
        || {
            let log = runners[2].log_text();
            c_share.iter().all(|partition| {
                says(&log, "could not be renewed for a whole lease", *partition)
                    && says(
                        &log,
                        "another runner holds the partition now: it stops here",
                        *partition,
                    )
            })
        },
    )
    .await;
    assert_eq!(
        shares(&listens[2..]).await,
        [BTreeSet::new()],
        "runner-c serves nothing while cut off"
    );
    let moved = runs(&listens[0]).await.expect("runs");
    assert!(
        moved.len() == held.len() && one_run_each(&moved, &held, "waiting"),
        "the parked runs are still parked: {moved:?}"
    );

    // The gates time out (30 s after they opened), each once, on a and b.
    each_completed(&listens[1], &held, "every deadline fired").await;
    for (id, _) in runs(&listens[0]).await.expect("runs").values().flatten() {
        let run = get(&listens[0], &format!("/api/v1/runs/{id}"))
            .await
            .expect("the run");
        let count = |kind: &str| {
            run["audit"].as_array().map_or(0, |audit| {
                audit.iter().filter(|entry| entry["kind"] == kind).count()
            })
        };
        assert_eq!(
            (count("gate_timed_out"), count("run_completed")),
            (1, 1),
            "{run}"
        );
    }
    assert!(
        runners[2].exited().is_none(),
        "runner-c goes on while cut off"
    );

    // Healed: c gets a share back and serves what lands in it.
    split.heal();
    let healed = Instant::now();
    let back = shared_out(&listens, "runner-c gets a share back").await;
    eprintln!(
        "runner-c serves again {:?} after the heal",
        healed.elapsed()
    );
    support::eventually(Duration::from_secs(30), "runner-c is ready", || {
        support::http_status(&listens[2], "/readyz") == Some(200)
    })
    .await;
    // Sixteen findings, four of them (at least) of keys in c's partitions.
    let on_c: Vec<usize> = (16..200)
        .filter(|n| {
            back[2].contains(&quench_runner::cluster::partition::of_key(
                &format!("test.part:{n}"),
                PARTITIONS,
            ))
        })
        .take(4)
        .collect();
    let mut every = held.clone();
    every.extend(
        cluster
            .publish("test.part", (0..12).chain(on_c.iter().copied()))
            .await,
    );
    each_completed(
        &listens[2],
        &every,
        "every finding after the heal has its run, listed by runner-c",
    )
    .await;
    let now = shares(&listens[2..]).await.remove(0);
    for n in &on_c {
        let runs = runs(&listens[2]).await.expect("runs");
        let (id, _) = &runs[&format!("test.part:{n}")][0];
        let partition = quench_runner::cluster::partition::of_run_id(id, PARTITIONS);
        assert!(
            partition.is_some_and(|partition| now.contains(&partition)),
            "{id} is in runner-c's share {now:?}"
        );
    }
    every_chain_verifies(&listens[2]).await;
    assert_eq!(
        runners[2].log_text().matches("quench is serving").count(),
        1,
        "runner-c was never restarted"
    );
    for runner in &mut runners {
        assert_eq!(runner.terminate(), Some(0), "a runner stops cleanly");
    }
}
