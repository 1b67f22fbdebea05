//! Cluster mode's fencing on real nats-servers: a runner that lost its partition — paused,
//! slow, partitioned away — has its next journal append refused once another runner took the
//! partition over, on one server and across the loss of the stream's leader in a three-server
//! cluster; of concurrent take-overs exactly one writer can go on; a partition is rebuilt from
//! its snapshot and the journal after it, and the purge a snapshot allows keeps the fencing.

use std::time::Duration;

use quench_runner::cluster::journal::{AppendError, Journal, Record, encode_writes};
use quench_runner::cluster::snapshot::Snapshots;

use crate::support;

fn commit(n: usize) -> Record {
    Record::Commit {
        part: 0,
        parts: 1,
        bytes: encode_writes(&[(format!("n/{n}").into_bytes(), Some(vec![7]))]),
    }
}

async fn journal_on(urls: &[String], replicas: usize) -> Journal {
    let client = async_nats::connect(urls.to_vec()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    // A cluster answers once it has elected its meta leader.
    let mut tries = 0;
    loop {
        match Journal::ensure(jetstream.clone(), replicas).await {
            Ok(journal) => return journal,
            Err(error) => {
                tries += 1;
                assert!(tries < 60, "the journal stream: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_partition_cannot_append() {
    let nats = support::NatsServer::start();
    let journal = journal_on(&[nats.url()], 1).await;

    let mut first = journal
        .take_over(3, "runner-a", 1)
        .await
        .expect("take over");
    for n in 0..3 {
        first.append(&commit(n)).await.expect("append");
    }
    // runner-a stops (SIGSTOP, a long pause); runner-b takes the partition over.
    let mut second = journal
        .take_over(3, "runner-b", 2)
        .await
        .expect("take over");
    // runner-a comes back and writes as if it still owned the partition: refused.
    let refused = first.append(&commit(99)).await;
    let expected = first.last();
    assert!(
        matches!(
            refused,
            Err(AppendError::Fenced { partition: 3, expected: e }) if e == expected
        ),
        "{refused:?}"
    );
    second.append(&commit(3)).await.expect("the owner appends");

    // The journal holds a's three commits, b's take-over and b's commit; nothing of a's after.
    let records: Vec<Record> = journal
        .replay(3, 0)
        .await
        .expect("replay")
        .into_iter()
        .map(|(_, record)| record)
        .collect();
    assert_eq!(
        records,
        vec![
            Record::Owner {
                runner: "runner-a".into(),
                lease: 1
            },
            commit(0),
            commit(1),
            commit(2),
            Record::Owner {
                runner: "runner-b".into(),
                lease: 2
            },
            commit(3),
        ]
    );
    // Replay from a sequence gives what follows it; other partitions are their own.
    let tail = journal.replay(3, second.last() - 1).await.expect("replay");
    assert_eq!(tail.len(), 1);
    assert_eq!(journal.last(4).await.expect("last"), 0);
    let mut other = journal
        .take_over(4, "runner-a", 3)
        .await
        .expect("take over");
    other.append(&commit(0)).await.expect("append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_take_overs_one_writer_goes_on() {
    let nats = support::NatsServer::start();
    let journal = journal_on(&[nats.url()], 1).await;
    let mut tasks = Vec::new();
    for n in 0..8u64 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            journal.take_over(7, &format!("runner-{n}"), n).await
        }));
    }
    let mut writers = Vec::new();
    for task in tasks {
        // A take-over that raced another is fenced at once; that is one way to lose.
        if let Ok(writer) = task.await.expect("task") {
            writers.push(writer);
        }
    }
    assert!(!writers.is_empty(), "someone takes the partition");
    let mut went_on = 0;
    for writer in &mut writers {
        match writer.append(&commit(0)).await {
            Ok(_) => went_on += 1,
            Err(AppendError::Fenced { .. }) => {}
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(went_on, 1, "exactly one writer owns the partition");
}

#[tokio::test(flavor = "multi_thread")]
async fn fencing_holds_across_the_loss_of_the_streams_leader() {
    let mut servers = tokio::task::block_in_place(|| support::NatsServer::cluster(3));
    let urls: Vec<String> = servers.iter().map(support::NatsServer::url).collect();
    let journal = journal_on(&urls, 3).await;
    let mut first = journal
        .take_over(1, "runner-a", 1)
        .await
        .expect("take over");
    for n in 0..5 {
        first.append(&commit(n)).await.expect("append");
    }
    // The server that leads the journal stream is killed.
    let client = async_nats::connect(urls.clone()).await.expect("nats");
    let info = async_nats::jetstream::new(client)
        .get_stream(quench_runner::cluster::journal::STREAM)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .clone();
    let leader = info
        .cluster
        .and_then(|cluster| cluster.leader)
        .expect("a leader");
    let index: usize = leader
        .trim_start_matches('n')
        .parse()
        .expect("servers are named n0, n1, n2");
    tokio::task::block_in_place(|| servers[index].stop());
    let survivor = urls[(index + 1) % 3].clone();

    // Another runner, on a surviving server, takes the partition over once a new leader is
    // elected; what the first appended survived the loss.
    let other = journal_on(&[survivor], 3).await;
    let mut second = loop {
        match other.take_over(1, "runner-b", 2).await {
            Ok(writer) => break writer,
            Err(AppendError::Unknown { .. }) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => panic!("{error}"),
        }
    };
    // Reads may time out while the new leader settles; a reader asks again.
    let mut tries = 0;
    let records: Vec<Record> = loop {
        match other.replay(1, 0).await {
            Ok(records) => break records.into_iter().map(|(_, record)| record).collect(),
            Err(error) => {
                tries += 1;
                assert!(tries < 30, "replay: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut expected = vec![Record::Owner {
        runner: "runner-a".into(),
        lease: 1,
    }];
    expected.extend((0..5).map(commit));
    assert_eq!(records[..6], expected[..], "{records:?}");
    // (A take-over whose acknowledgement was lost in the election is tried again: its owner
    // record can be there twice.)
    assert!(
        records[6..].iter().all(|record| *record
            == Record::Owner {
                runner: "runner-b".into(),
                lease: 2
            })
            && records.len() > 6,
        "{records:?}"
    );
    // The first runner's next append is refused, not merely lost.
    let refused = loop {
        match first.append(&commit(99)).await {
            Err(AppendError::Unknown { .. }) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(refused, Err(AppendError::Fenced { partition: 1, .. })),
        "{refused:?}"
    );
    second.append(&commit(5)).await.expect("the owner appends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_rebuilt_from_its_snapshot_and_the_journal_after_it() {
    let nats = support::NatsServer::start();
    let journal = journal_on(&[nats.url()], 1).await;
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let snapshots = Snapshots::open(async_nats::jetstream::new(client), 1)
        .await
        .expect("bucket");
    // Nothing yet: the whole (empty) journal.
    let empty = snapshots.restore(&journal, 2).await.expect("restore");
    assert_eq!((empty.snapshot, empty.records.len()), (None, 0));

    let mut writer = journal
        .take_over(2, "runner-a", 1)
        .await
        .expect("take over");
    for n in 0..4 {
        writer.append(&commit(n)).await.expect("append");
    }
    // The state as of the last append is saved; the journal below it is purged.
    let at = writer.last();
    let state = vec![7u8; 300_000];
    snapshots.save(2, at, &state).await.expect("save");
    for n in 4..6 {
        writer.append(&commit(n)).await.expect("append");
    }
    let restored = snapshots.restore(&journal, 2).await.expect("restore");
    assert_eq!(restored.snapshot, Some((at, state)));
    let after: Vec<Record> = restored.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(after, vec![commit(4), commit(5)]);
    // Only the message at the snapshot's sequence is left below it.
    let all = journal.replay(2, 0).await.expect("replay");
    assert_eq!(
        all.first().map(|(sequence, _)| *sequence),
        Some(at),
        "{all:?}"
    );
    assert_eq!(all.len(), 3);
    // The leader's copy, read message by message (a replay's way when its consumer stalls),
    // is the same.
    assert_eq!(journal.replay_from_leader(2, 0).await.expect("replay"), all);

    // The purge kept the fencing's base: a take-over still fences the former writer.
    let mut next = journal
        .take_over(2, "runner-b", 2)
        .await
        .expect("take over");
    assert!(matches!(
        writer.append(&commit(6)).await,
        Err(AppendError::Fenced { partition: 2, .. })
    ));
    next.append(&commit(6)).await.expect("the owner appends");
}

/// An append whose first attempt landed unacknowledged (a leader lost before it answered) is
/// sent again with the same `Nats-Msg-Id` and expected sequence: the server refuses it as
/// "wrong last sequence" (it checks the sequence before duplicates), and the writer finds its
/// own attempt as the last message and goes on from it, appending nothing twice. Another
/// writer's append at the same expected sequence stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_landed_unacknowledged_is_not_appended_twice() {
    use async_nats::jetstream::message::PublishMessage;
    let nats = support::NatsServer::start();
    let journal = journal_on(&[nats.url()], 1).await;
    let mut writer = journal
        .take_over(5, "runner-a", 1)
        .await
        .expect("take over");
    let jetstream =
        async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    // The attempt that landed: what the writer sends, as it sends it.
    let landed = jetstream
        .send_publish(
            "quench.journal.5",
            PublishMessage::build()
                .payload(commit(1).encode().into())
                .message_id(writer.next_id())
                .expected_last_subject_sequence(writer.last()),
        )
        .await
        .expect("sent")
        .await
        .expect("landed");
    let sequence = writer.append(&commit(1)).await.expect("the append goes on");
    assert_eq!(sequence, landed.sequence);
    writer.append(&commit(2)).await.expect("and the next lands");

    // A stale writer of another lease at the same sequence is refused.
    let mut other = journal
        .take_over(6, "runner-b", 2)
        .await
        .expect("take over");
    let stale = jetstream
        .send_publish(
            "quench.journal.6",
            PublishMessage::build()
                .payload(commit(9).encode().into())
                .message_id("6-1-0")
                .expected_last_subject_sequence(other.last()),
        )
        .await
        .expect("sent")
        .await
        .expect("lands");
    let refused = other.append(&commit(1)).await;
    assert!(
        matches!(refused, Err(AppendError::Fenced { partition: 6, .. })),
        "{refused:?} after {stale:?}"
    );

    let records: Vec<Record> = journal
        .replay(5, 0)
        .await
        .expect("replay")
        .into_iter()
        .map(|(_, record)| record)
        .collect();
    assert_eq!(
        records,
        vec![
            Record::Owner {
                runner: "runner-a".into(),
                lease: 1
            },
            commit(1),
            commit(2)
        ]
    );
}

/// What a take-over and a balancing round read — the members, the newest snapshot, the journal
/// after it — answers at once while one of three servers is dead (killed, not yet known to the
/// cluster as gone), not only once the server is back or declared lost. A read through a
/// temporary consumer does not: the server places such a one-replica consumer on any peer of
/// the stream, the dead one included, and about one read in three hangs until it times out.
#[tokio::test(flavor = "multi_thread")]
async fn reads_answer_while_one_of_three_servers_is_dead() {
    use quench_runner::cluster::owners::Owners;

    let mut servers = tokio::task::block_in_place(|| support::NatsServer::cluster(3));
    let urls: Vec<String> = servers.iter().map(support::NatsServer::url).collect();
    let journal = journal_on(&urls, 3).await;
    let jetstream =
        async_nats::jetstream::new(async_nats::connect(urls.clone()).await.expect("nats"));
    let owners = Owners::join(&jetstream, "runner-a", Duration::from_secs(60), 3)
        .await
        .expect("join");
    let snapshots = Snapshots::open(jetstream.clone(), 3).await.expect("bucket");
    let mut writer = journal
        .take_over(1, "runner-a", 1)
        .await
        .expect("take over");
    for n in 0..3 {
        writer.append(&commit(n)).await.expect("append");
    }
    let at = writer.last();
    let state = vec![5u8; 300_000];
    snapshots.save(1, at, &state).await.expect("save");
    for n in 3..5 {
        writer.append(&commit(n)).await.expect("append");
    }

    // n2 is killed. The others are reached directly.
    tokio::task::block_in_place(|| servers[2].stop());
    let survivors = async_nats::connect(urls[..2].to_vec()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(survivors);
    let journal = journal_on(&urls[..2], 3).await;
    let owners_b = Owners::join(&jetstream, "runner-b", Duration::from_secs(60), 3).await;
    // Once every stream has a leader again (writes go through), reads must answer.
    let settled = std::time::Instant::now();
    let owners_b = loop {
        let mut leaders = 0;
        for stream in [
            quench_runner::cluster::journal::STREAM,
            "KV_QUENCH_OWNERS",
            "OBJ_QUENCH_SNAPSHOTS",
        ] {
            if let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(2), jetstream.get_stream(stream)).await
                && let Ok(Ok(info)) =
                    tokio::time::timeout(Duration::from_secs(2), stream.info()).await
                && info
                    .cluster
                    .as_ref()
                    .and_then(|cluster| cluster.leader.as_deref())
                    .is_some_and(|leader| leader != "n2")
            {
                leaders += 1;
            }
        }
        if leaders == 3 {
            match &owners_b {
                Ok(owners) => break owners.clone(),
                Err(_) => {
                    if let Ok(owners) =
                        Owners::join(&jetstream, "runner-b", Duration::from_secs(60), 3).await
                    {
                        break owners;
                    }
                }
            }
        }
        assert!(
            settled.elapsed() < Duration::from_secs(60),
            "the streams found no new leaders"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = owners;

    let at_most = Duration::from_secs(4);
    for round in 0..12 {
        let members = tokio::time::timeout(at_most, owners_b.members())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the members did not answer in {at_most:?}"))
            .expect("members");
        assert!(
            members.contains("runner-a") && members.contains("runner-b"),
            "{members:?}"
        );
        let latest = tokio::time::timeout(at_most, snapshots_on(&jetstream).await.latest(1))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the snapshot did not answer in {at_most:?}"))
            .expect("snapshot");
        assert_eq!(latest, Some((at, state.clone())), "round {round}");
        let records = tokio::time::timeout(at_most, journal.replay(1, at))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the journal did not answer in {at_most:?}"))
            .expect("replay");
        let records: Vec<Record> = records.into_iter().map(|(_, record)| record).collect();
        assert_eq!(records, vec![commit(3), commit(4)], "round {round}");
    }
}

async fn snapshots_on(jetstream: &async_nats::jetstream::Context) -> Snapshots {
    Snapshots::open(jetstream.clone(), 3).await.expect("bucket")
}
