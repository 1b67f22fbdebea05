//! `kill -9` of the NATS server leading the journal stream under load, with
//! `[cluster] partitions = 8` and three runners.
//!
//! It failed about 2 runs in 7 before two fixes (issue 20, session 19): reads a take-over
//! makes went through temporary consumers the server could place on the dead server, and hung
//! until they timed out, again and again; and a runner that lost several partitions at once
//! dropped their stores on every async worker, each waiting for a journal append only the
//! runtime could carry, and hung for good. It then passed 8 runs in 8 (44–59 s each).

use std::time::{Duration, Instant};

use crate::cluster_partitions::{Cluster, PARTITIONS, runs, shared_out, under_load_on};
use crate::cluster_partitions_faults::{Runs, until_runs};
use crate::support::{self, NatsServer};

/// The runs of `runs` that completed.
fn completed(runs: &Runs) -> usize {
    runs.values()
        .flatten()
        .filter(|(_, status)| status == "completed")
        .count()
}

/// `kill -9` of the NATS server leading the journal stream (one stream, `quench.journal.<n>` a
/// subject per partition) while leaked keys arrive, on servers that fsync every write: the
/// cluster elects another leader, the runners' appends go on (retried with the same expected
/// sequence), each runner stays up and serves a share; every key is revoked by its one run,
/// a DELETE repeated at most as a successor repeats a call in flight when a partition's lease
/// ran out during the election; every chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn the_loss_of_the_journal_streams_leader_under_load_revokes_every_key_once() {
    // As many repeats as one runner's kill may cause (`kill_9_of_each_runner_under_load`): at
    // most the calls in flight in the partitions that change hands.
    under_load_on(
        NatsServer::synced_cluster,
        async |cluster: &mut Cluster, runners: &mut [support::Service], listens: &[String]| {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let before = runs(&listens[0]).await.map_or(0, |runs| completed(&runs));
            let leader = crate::cluster_serve::journal_leader(&cluster.jetstream).await;
            let killed = Instant::now();
            tokio::task::block_in_place(|| cluster.servers[leader].stop());
            eprintln!("killed n{leader}, the journal stream's leader, after {before} runs");
            // Runs complete again: the journal has a leader and takes appends.
            until_runs(
                &listens[1],
                Duration::from_secs(90),
                "runs complete again after the leader was killed",
                |runs| completed(runs) > before + 50,
            )
            .await;
            eprintln!("runs complete again {:?} after the kill", killed.elapsed());
            // No runner stopped: each serves a share and is ready, never restarted.
            shared_out(listens, "the three runners still share the partitions").await;
            for (runner, listen) in runners.iter_mut().zip(listens) {
                assert!(runner.exited().is_none(), "{listen} stopped");
                support::eventually(Duration::from_secs(30), "every runner is ready", || {
                    support::http_status(listen, "/readyz") == Some(200)
                })
                .await;
                let log = runner.log_text();
                assert_eq!(log.matches("quench is serving").count(), 1, "{listen}");
                eprintln!(
                    "{listen}: members did not answer {}",
                    log.matches("members did not answer").count()
                );
                eprintln!(
                    "{listen}: {} partitions lost, {} appends retried",
                    log.matches("another runner holds the partition now")
                        .count(),
                    log.matches("the journal did not acknowledge an append")
                        .count()
                );
            }
        },
        PARTITIONS as usize,
    )
    .await;
}
