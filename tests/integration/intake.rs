//! Intake under hostile input, through a real `quench serve` and nats-server: a poison message
//! is dead-lettered within bounds (never re-encoded larger than NATS carries), a message whose
//! dead letter cannot be published is acknowledged and counted after a few deliveries, a message
//! never acknowledged for any other reason is dead-lettered once JetStream gives up on it, and
//! in every case valid findings sent afterwards start their runs and `/readyz` says how intake is.

use std::time::Duration;

use async_nats::jetstream;

use crate::service::{GATE_PLAYBOOK, World, finding};
use crate::support::{NatsServer, eventually, eventually_async, http_get, metric};

const WAIT: Duration = Duration::from_secs(20);
const LEAKED: &str = "quench.findings.openai.api_key.leaked";

/// A message of `QUENCH_DLQ`: its subject, headers and body.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) subject: String,
    pub(crate) reason: String,
    pub(crate) original_subject: String,
    pub(crate) size: Option<usize>,
    pub(crate) truncated: bool,
    pub(crate) body: Vec<u8>,
}

/// Every message now in `QUENCH_DLQ`.
pub(crate) async fn dead_letters(client: &async_nats::Client) -> Vec<DeadLetter> {
    let jetstream = jetstream::new(client.clone());
    let Ok(mut stream) = jetstream.get_stream("QUENCH_DLQ").await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut letters = Vec::new();
    for seq in first..=last {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
        };
        letters.push(DeadLetter {
            subject: message.subject.to_string(),
            reason: header("Quench-Dlq-Reason").unwrap_or_default(),
            original_subject: header("Quench-Dlq-Subject").unwrap_or_default(),
            size: header("Quench-Dlq-Size").and_then(|size| size.parse().ok()),
            truncated: header("Quench-Dlq-Truncated").as_deref() == Some("true"),
            body: message.payload.to_vec(),
        });
    }
    letters
}

/// Messages of the findings consumer not yet acknowledged (waiting plus delivered).
async fn findings_pending(client: &async_nats::Client) -> Option<u64> {
    let jetstream = jetstream::new(client.clone());
    let stream = jetstream.get_stream("QUENCH_FINDINGS").await.ok()?;
    let info = stream.consumer_info("quench-findings").await.ok()?;
    Some(info.num_pending + u64::try_from(info.num_ack_pending).ok()?)
}

fn readiness(world: &World) -> (u16, serde_json::Value) {
    let (status, body) = http_get(&world.service.listen, "/readyz").expect("/readyz answers");
    (
        status,
        serde_json::from_str(&body).expect("/readyz is JSON"),
    )
}

fn metrics(world: &World) -> String {
    http_get(&world.service.listen, "/metrics")
        .expect("/metrics answers")
        .1
}

/// Valid findings published after the hostile ones all start their runs.
async fn valid_findings_still_start_runs(world: &World, prefix: &str, count: usize) {
    let before = world.count("run_started");
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        world
            .publish_finding(&finding(&id, &format!("key_{prefix}_{n}")), Some(&id))
            .await;
    }
    eventually(WAIT, "every valid finding starts its run", || {
        world.count("run_started") == before + count
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_findings_are_dead_lettered_within_bounds_and_intake_keeps_flowing() {
    let world = World::start(&[GATE_PLAYBOOK]).await;
    // Invalid UTF-8 grows about fivefold when converted to text: 360 KB of 0xff became a dead
    // letter of ~1.8 MB, over NATS's 1 MiB payload, so it was never dead-lettered nor acked.
    let poison = vec![0xff_u8; 360_000];
    let count = 12;
    for _ in 0..count {
        world.publish(LEAKED, poison.clone(), None).await;
    }
    valid_findings_still_start_runs(&world, "after-poison", 5).await;

    eventually_async(WAIT, "every poison message is dead-lettered", || async {
        dead_letters(&world.client).await.len() == count
    })
    .await;
    let letters = dead_letters(&world.client).await;
    for letter in &letters {
        assert_eq!(letter.subject, "quench.dlq.findings");
        assert_eq!(letter.original_subject, LEAKED);
        assert!(
            letter.reason.starts_with("too_large: "),
            "{}",
            letter.reason
        );
        assert_eq!(letter.size, Some(poison.len()), "the original size is kept");
        assert!(letter.truncated, "a cut body says so");
        assert_eq!(
            letter.body.len(),
            quench_proto::subject::DLQ_BODY_LIMIT,
            "the body is kept as bytes, up to the bound"
        );
        assert!(
            letter.body.iter().all(|byte| *byte == 0xff),
            "never re-encoded"
        );
    }
    eventually_async(WAIT, "nothing is left unacknowledged", || async {
        findings_pending(&world.client).await == Some(0)
    })
    .await;
    let (status, body) = readiness(&world);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["intake"]["findings"], "ok", "{body}");
    let text = metrics(&world);
    assert_eq!(
        metric(
            &text,
            r#"quench_dead_lettered_total{subject="quench.dlq.findings",reason="too_large"}"#
        ),
        count as f64,
        "{text}"
    );
    // A flood of bad messages is not a flood of log lines.
    let log = world.service.log_text();
    let lines = log
        .lines()
        .filter(|line| line.contains("dead-lettered"))
        .count();
    assert!(
        lines < count,
        "{lines} dead-letter lines for {count} messages"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_dead_lettered_is_acknowledged_counted_and_shown() {
    let world = World::start(&[GATE_PLAYBOOK]).await;
    // Without the dead-letter stream nothing can be dead-lettered.
    let jetstream = jetstream::new(world.client.clone());
    jetstream
        .delete_stream("QUENCH_DLQ")
        .await
        .expect("delete QUENCH_DLQ");
    world.publish(LEAKED, b"{not json".to_vec(), None).await;
    let series = r#"quench_intake_dropped_total{consumer="findings",reason="dead_letter_failed"}"#;
    eventually(WAIT, "the message is dropped and counted", || {
        metric(&metrics(&world), series) == 1.0
    })
    .await;
    let (status, body) = readiness(&world);
    assert_eq!(status, 200, "shedding is not stuck: {body}");
    assert_eq!(body["intake"]["findings"], "shedding", "{body}");
    eventually_async(WAIT, "nothing is left unacknowledged", || async {
        findings_pending(&world.client).await == Some(0)
    })
    .await;
    valid_findings_still_start_runs(&world, "after-drop", 3).await;
    let log = world.service.log_text();
    assert!(
        log.contains("acknowledged unprocessed"),
        "the operator is told: {log}"
    );
}

/// A NATS account where quench may do everything but acknowledge findings, so every finding
/// stays unacknowledged whatever quench does with it, as one that crashes or hangs it would.
const NO_ACKS: &str = r#"
listen: 127.0.0.1:4222
jetstream {
  store_dir: /tmp/unused
}
authorization {
  users: [
    { user: quench, password: quench-pass,
      permissions: { publish: { allow: [">"], deny: ["$JS.ACK.QUENCH_FINDINGS.>"] }, subscribe: { allow: [">"] } } }
    { user: test, password: test-pass }
  ]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_never_acknowledged_is_dead_lettered_once_jetstream_gives_up() {
    let nats = NatsServer::with_config(NO_ACKS, &[]);
    let client = async_nats::ConnectOptions::with_user_and_password(
        "test".to_owned(),
        "test-pass".to_owned(),
    )
    .connect(nats.url())
    .await
    .expect("test client connects");
    let world = World::on(
        nats,
        client,
        &[GATE_PLAYBOOK],
        &[
            ("QUENCH_NATS__USER", "quench"),
            ("QUENCH_NATS__PASSWORD", "quench-pass"),
            ("QUENCH_NATS__ACK_WAIT", "1s"),
            ("QUENCH_NATS__MAX_DELIVER", "2"),
        ],
        None,
    )
    .await;
    world
        .publish_finding(&finding("never-acked", "key_n"), Some("never-acked"))
        .await;
    eventually_async(
        WAIT,
        "the unacknowledged finding is dead-lettered",
        || async { !dead_letters(&world.client).await.is_empty() },
    )
    .await;
    let letters = dead_letters(&world.client).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert!(
        letter
            .reason
            .starts_with("max_deliveries: delivered 2 times"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.original_subject, LEAKED);
    let body: serde_json::Value = serde_json::from_slice(&letter.body).expect("the body is kept");
    assert_eq!(body["id"], "never-acked");
    assert_eq!(world.count("run_started"), 1, "taken in once, not twice");
}
