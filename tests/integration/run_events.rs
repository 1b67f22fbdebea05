//! Run events (and their OCSF records) are published from the audit log: none is lost while
//! the events stream cannot take them (the publisher waits and tries again, however long), none
//! is lost to a `kill -9` (the next start publishes from the saved position), and none is
//! published twice (each event's id comes from its audit entry, and is its `Nats-Msg-Id`).
//! Checked against the store: every audit entry of an event kind has exactly one event in
//! `QUENCH_EVENTS`, which says what the entry says, and every run outcome one OCSF record.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use quench_proto::{RunEvent, RunEventKind};
use quench_runner::engine::Run;
use quench_runner::store::{Batch, EVENTS_PUBLISHED, Key, parse_stored};
use serde_json::json;

use crate::service::{World, wait_until_delivered};
use crate::support::{self, eventually, eventually_async};

const NOTE_PLAYBOOK: &str = r#"schema: quench.playbook/v1
name: noted
on:
  finding:
    kinds: [openai.api_key.unused]
steps:
  - id: first
    uses: note
    with:
      message: "seen {{ finding.key }}"
  - id: second
    uses: note
    with:
      message: done
"#;

const WAIT: Duration = Duration::from_secs(30);

fn finding(id: &str) -> serde_json::Value {
    json!({
        "schema": "quench.finding/v1", "id": id, "kind": "openai.api_key.unused", "severity": "low",
        "title": "unused key", "detected_at": "2026-11-20T10:00:00Z", "source": {"scanner": "test"},
        "resource": {"provider": "openai", "type": "api_key", "id": format!("key_{id}"), "project_id": "proj_1"}
    })
}

/// Every message the events stream holds, as run events.
async fn stored_events(jetstream: &jetstream::Context) -> Vec<RunEvent> {
    stored(jetstream, "QUENCH_EVENTS").await
}

/// Every message a stream holds, parsed (each read from the stream's leader).
pub(crate) async fn stored<T: serde::de::DeserializeOwned>(
    jetstream: &jetstream::Context,
    name: &str,
) -> Vec<T> {
    let Ok(mut stream) = jetstream.get_stream(name).await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let (first, last, messages) = (
        info.state.first_sequence,
        info.state.last_sequence,
        info.state.messages,
    );
    let mut events = Vec::new();
    for sequence in first..=last {
        if messages == 0 {
            break;
        }
        let message = stream
            .get_raw_message(sequence)
            .await
            .expect("a stored event");
        events.push(serde_json::from_slice(&message.payload).expect("a stored message"));
    }
    events
}

/// Points the events stream at another subject, so quench's publishes find no stream (as in
/// an outage of the stream); `quench serve` puts the subject back when it starts.
async fn park_events(jetstream: &jetstream::Context, parked: bool) {
    let mut stream = jetstream
        .get_stream("QUENCH_EVENTS")
        .await
        .expect("the events stream");
    let mut config = stream.info().await.expect("stream info").config.clone();
    config.subjects = vec![if parked {
        "quench.parked-events.>".to_owned()
    } else {
        "quench.events.>".to_owned()
    }];
    jetstream
        .update_stream(config)
        .await
        .expect("stream updated");
}

async fn publish(world: &World, ids: impl Iterator<Item = String>) -> u64 {
    let mut published = 0;
    for id in ids {
        world.publish_finding(&finding(&id), Some(&id)).await;
        published += 1;
    }
    published
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_run_event_is_lost_to_a_stream_outage_or_a_crash_and_none_is_sent_twice() {
    let mut world = World::start(&[NOTE_PLAYBOOK]).await;
    let jetstream = jetstream::new(world.client.clone());

    // 1. Events flow.
    let mut total = publish(&world, (0..10).map(|n| format!("a-{n}"))).await;
    eventually_async(WAIT, "the first runs' events", || async {
        count(&stored_events(&jetstream).await, RunEventKind::RunCompleted) >= 10
    })
    .await;

    // 2. The stream cannot take events for longer than the old queue's retries lasted: the
    //    runs go on, and their events are published once it can.
    park_events(&jetstream, true).await;
    //    One at a time, so that their events go out in many separate sends: once the stream
    //    is back, they must not wait for one acknowledgement timeout each.
    for n in 0..10 {
        total += publish(&world, std::iter::once(format!("b-{n}"))).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until_delivered(&world, total).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        count(&stored_events(&jetstream).await, RunEventKind::RunCompleted),
        10,
        "nothing reached the parked stream"
    );
    assert!(
        world
            .service
            .log_text()
            .contains("a run event was not published; trying again until it is"),
        "the service says why events wait:\n{}",
        world.service.log_text()
    );
    let lag = || {
        let (_, text) =
            support::http_get(&world.service.listen, "/metrics").expect("metrics answer");
        support::metric(&text, "quench_run_events_unpublished_entries")
    };
    assert!(lag() > 0.0, "the lag shows in the metrics");
    park_events(&jetstream, false).await;
    eventually_async(
        Duration::from_secs(15),
        "the events recorded during the outage, soon after it",
        || async { count(&stored_events(&jetstream).await, RunEventKind::RunCompleted) >= 20 },
    )
    .await;
    eventually(WAIT, "no lag once published", || lag() == 0.0).await;

    // 3. Killed with events unpublished: the next start publishes them.
    park_events(&jetstream, true).await;
    total += publish(&world, (0..10).map(|n| format!("c-{n}"))).await;
    wait_until_delivered(&world, total).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.service.kill();
    // The OCSF consumer an earlier version made is removed at start.
    let stream = jetstream
        .get_stream("QUENCH_EVENTS")
        .await
        .expect("events stream");
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("quench-ocsf".to_owned()),
            ..Default::default()
        })
        .await
        .expect("an old consumer");
    world.service.spawn();
    assert!(
        stream.consumer_info("quench-ocsf").await.is_err(),
        "the old OCSF consumer was removed"
    );
    eventually_async(WAIT, "the events the killed process left", || async {
        count(&stored_events(&jetstream).await, RunEventKind::RunCompleted) >= 30
    })
    .await;

    // 4. Everything published: a publisher that goes on from an older position (here the
    //    start of the log) sends every event again, and the stream drops each by its id.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = stored_events(&jetstream).await.len();
    {
        let store = world.stop_and_open();
        let mut rewind = Batch::new();
        rewind.put(Key::Meta(EVENTS_PUBLISHED), &0u64);
        store.commit(rewind).await.expect("position rewound");
    }
    world.service.spawn();
    // The third start's publisher (the log is appended to) went on from entry 0.
    eventually(WAIT, "the publisher went on from the start", || {
        let log = world.service.log_text();
        let starts: Vec<&str> = log
            .split("publishing run events from the audit log after=")
            .skip(1)
            .collect();
        starts.len() == 3 && starts[2].starts_with("0\n")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stored_events(&jetstream).await.len(),
        before,
        "every event sent again was dropped by its id"
    );

    let events = stored_events(&jetstream).await;
    // Each run's outcome has its OCSF record (a Detection Finding update), made with the event,
    // so as complete and as free of repeats.
    let records: Vec<serde_json::Value> = stored(&jetstream, "QUENCH_OCSF").await;
    let mut outcomes: Vec<&str> = records
        .iter()
        .map(|record| record["metadata"]["uid"].as_str().expect("metadata.uid"))
        .collect();
    outcomes.sort_unstable();
    let mut completed: Vec<&str> = events
        .iter()
        .filter(|event| event.kind == RunEventKind::RunCompleted)
        .map(|event| event.id.as_str())
        .collect();
    completed.sort_unstable();
    assert_eq!(
        outcomes, completed,
        "one OCSF record per run outcome, by event id"
    );
    let store = world.stop_and_open();
    let mut by_hash: HashMap<String, RunEvent> = HashMap::new();
    for event in &events {
        assert!(
            by_hash
                .insert(event.audit_hash.clone(), event.clone())
                .is_none(),
            "the event of entry {} was stored twice",
            event.audit_hash
        );
    }
    let mut ids = std::collections::HashSet::new();
    assert!(
        events.iter().all(|event| ids.insert(event.id.clone())),
        "event ids are unique"
    );
    let mut recorded = 0;
    for item in store.audit_entries() {
        let (seq, stored) = item.expect("audit entry");
        let (hash, _, entry) = parse_stored(&stored).expect("a stored entry");
        let Some(kind) = RunEventKind::parse(&entry.kind) else {
            continue;
        };
        recorded += 1;
        let event = by_hash
            .get(&hash)
            .unwrap_or_else(|| panic!("entry #{seq} ({}) has no event", entry.kind));
        let run_id = entry
            .run_id
            .clone()
            .expect("an event's entry names its run");
        let run: Run = store
            .get(Key::Run(&run_id))
            .expect("store read")
            .expect("the run is stored");
        assert_eq!(event.kind, kind, "entry #{seq}");
        assert_eq!(event.run_id, run_id, "entry #{seq}");
        assert_eq!(
            Some(&event.playbook),
            entry.playbook.as_ref(),
            "entry #{seq}"
        );
        assert_eq!(
            Some(&event.playbook_version),
            entry.version.as_ref(),
            "entry #{seq}"
        );
        assert_eq!(event.step, entry.step, "entry #{seq}");
        assert_eq!(event.at, entry.at, "entry #{seq}");
        assert_eq!(event.finding_key, run.key, "entry #{seq}");
    }
    assert_eq!(
        recorded,
        events.len(),
        "every stored event is an audit entry's"
    );
    assert_eq!(count(&events, RunEventKind::RunStarted), 30);
}

fn count(events: &[RunEvent], kind: RunEventKind) -> usize {
    events.iter().filter(|event| event.kind == kind).count()
}
