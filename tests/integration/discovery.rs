//! The shipped discovery playbooks end to end against the OpenAI fake, on a manual clock: the real
//! OpenAI actions page through seeded data (small pages, a 429 in the middle), the findings they
//! publish are recorded, and a second pass finds the same keys again (so it joins the open runs)
//! or — for the audit log, behind its cursor — nothing new at all.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quench_runner::config::Secret;
use quench_runner::connectors::openai::{self, OpenAi};
use quench_runner::engine::{Action, ActionFuture, Call, Success};
use quench_runner::store::Store;
use serde_json::{Value, json};

use crate::support::openai_fake::{AuditEvent, Fault, KeySeed, OpenAiFake, Role, UsageSeed};
use crate::support::{Harness, root};

/// `finding.publish`, recording what it would publish.
#[derive(Debug, Default)]
struct Published(Mutex<Vec<Value>>);

impl Action for Published {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move {
            self.0.lock().expect("lock").push(call.input.clone());
            Ok(Success::new(
                json!({"id": call.idempotency_key, "subject": "recorded"}),
            ))
        })
    }
}

impl Published {
    /// `kind key` of everything published, then forgets it.
    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
            .into_iter()
            .map(|finding| {
                format!(
                    "{} {}",
                    finding["kind"].as_str().unwrap_or("?"),
                    finding["key"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }
}

fn time(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("valid time")
        .with_timezone(&chrono::Utc)
}

async fn harness(fake: &OpenAiFake, playbook: &str, now: &str) -> (Harness, Arc<Published>) {
    let source = std::fs::read_to_string(root().join("workflows").join(playbook))
        .expect("the shipped playbook");
    let client = Arc::new(
        OpenAi::new(&fake.base_url(), Secret::new(fake.admin_key()), None).expect("client"),
    );
    let published = Arc::new(Published::default());
    let recorder = published.clone();
    let harness = Harness::build(
        Store::temporary().expect("store"),
        &[&source],
        time(now),
        Default::default(),
        move |actions| {
            openai::register(actions, client);
            actions.insert("finding.publish", recorder);
        },
        None,
        |_| {},
    )
    .await;
    // The first look sets up the timetable.
    harness.advance(Duration::ZERO).await;
    (harness, published)
}

#[tokio::test]
async fn the_weekly_inventory_pages_through_every_project_and_finds_the_same_keys_again() {
    let fake = OpenAiFake::start().await;
    fake.set_max_page_size(2);
    fake.seed_project("proj_1", "web");
    fake.seed_project("proj_2", "batch");
    fake.seed_user("proj_1", "user_bob", "bob@example.com", Role::Owner);
    fake.seed_user("proj_2", "user_bob", "bob@example.com", Role::Owner);
    let long_ago = time("2025-08-01T10:00:00Z").timestamp();
    let yesterday = time("2026-01-04T10:00:00Z").timestamp();
    fake.seed_key(
        "proj_1",
        "user_bob",
        KeySeed::new("key_old").name("old").last_used_at(long_ago),
    );
    fake.seed_key(
        "proj_1",
        "user_bob",
        KeySeed::new("key_fresh")
            .name("fresh")
            .last_used_at(yesterday),
    );
    fake.seed_key(
        "proj_1",
        "user_bob",
        KeySeed::new("key_never").name("never"),
    );
    fake.seed_key(
        "proj_2",
        "user_bob",
        KeySeed::new("key_busy")
            .name("busy")
            .last_used_at(yesterday),
    );
    fake.seed_service_account("proj_2", "svc_ci", "ci-bot", KeySeed::new("key_ci"));
    // Monday 07:00 in Berlin is 06:00 UTC; start a minute before.
    let (harness, published) =
        harness(&fake, "inventory-openai-keys.yaml", "2026-01-05T05:59:00Z").await;
    fake.fail_next_on(
        "/v1/organization/projects/proj_2/api_keys",
        1,
        Fault::RateLimited {
            retry_after_secs: 3,
        },
    );
    harness.advance(Duration::from_secs(60)).await;
    assert!(
        published.take().is_empty(),
        "the second project was rate-limited: retried later"
    );
    harness.advance(Duration::from_secs(5)).await;
    let first = published.take();
    assert_eq!(
        first,
        BTreeSet::from([
            "openai.api_key.unused openai:project_key:key_never".to_owned(),
            "openai.api_key.unused openai:project_key:key_old".to_owned(),
            "openai.service_account.stale openai:service_account:svc_ci".to_owned(),
        ])
    );
    let listed = fake
        .calls()
        .iter()
        .filter(|call| call.path.ends_with("/api_keys"))
        .count();
    assert!(
        listed >= 5,
        "several pages per project, and the retry: {listed}"
    );

    // A week later nothing changed: the same findings, with the same keys.
    harness.advance(Duration::from_secs(7 * 24 * 3600)).await;
    assert_eq!(published.take(), first);
}

#[tokio::test]
async fn the_audit_log_watch_reads_past_its_cursor_only() {
    let fake = OpenAiFake::start().await;
    fake.set_max_page_size(1);
    fake.set_audit_mutations(false);
    fake.seed_project("proj_1", "web");
    let at = |text: &str| time(text).timestamp();
    fake.push_audit_event(
        AuditEvent::new(
            "api_key.updated",
            at("2026-01-05T08:50:00Z"),
            json!({"id": "key_1", "changes_requested": {"scopes": ["api.all"]}}),
        )
        .project("proj_1"),
    );
    fake.push_audit_event(
        AuditEvent::new(
            "user.updated",
            at("2026-01-05T08:55:00Z"),
            json!({"id": "user_9", "changes_requested": {"role": "owner"}}),
        )
        .project("proj_1"),
    );
    fake.push_audit_event(
        AuditEvent::new(
            "service_account.created",
            at("2026-01-05T08:56:00Z"),
            json!({"id": "svc_new", "data": {"role": "member"}}),
        )
        .project("proj_1"),
    );
    let (harness, published) =
        harness(&fake, "watch-openai-audit-log.yaml", "2026-01-05T08:59:00Z").await;
    fake.fail_next_on(
        "/v1/organization/audit_logs",
        1,
        Fault::RateLimited {
            retry_after_secs: 2,
        },
    );
    harness.advance(Duration::from_secs(60)).await;
    harness.advance(Duration::from_secs(15)).await;
    let kinds: BTreeSet<String> = published
        .take()
        .into_iter()
        .map(|line| line.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "openai.api_key.scope_widened".to_owned(),
            "openai.project_user.raised_to_owner".to_owned(),
            "openai.service_account.created".to_owned(),
        ])
    );

    // 15 minutes later: nothing new since the cursor.
    harness.advance(Duration::from_secs(15 * 60)).await;
    assert!(
        published.take().is_empty(),
        "a second pass publishes nothing new"
    );

    // A new event is found by the next pass, alone.
    fake.push_audit_event(
        AuditEvent::new(
            "api_key.updated",
            at("2026-01-05T09:20:00Z"),
            json!({"id": "key_2", "changes_requested": {"scopes": ["api.all"]}}),
        )
        .project("proj_1"),
    );
    harness.advance(Duration::from_secs(15 * 60)).await;
    let next = published.take();
    assert_eq!(next.len(), 1, "{next:?}");
}

#[tokio::test]
async fn the_daily_usage_check_finds_a_spike_and_finds_it_again_the_next_day() {
    let fake = OpenAiFake::start().await;
    fake.set_default_usage_buckets(31);
    let day = |n: i64| time("2025-12-28T06:30:00Z").timestamp() + n * 86_400;
    for n in 0..8 {
        fake.push_usage(
            UsageSeed::new(day(n), "proj_1", "key_steady")
                .requests(4000)
                .model("gpt-4o"),
        );
        let hot = if n == 7 { 50_000 } else { 200 };
        fake.push_usage(
            UsageSeed::new(day(n), "proj_1", "key_hot")
                .requests(hot)
                .model("gpt-4o"),
        );
    }
    fake.set_now(time("2026-01-05T06:00:00Z").timestamp());
    let (harness, published) = harness(
        &fake,
        "find-openai-usage-spikes.yaml",
        "2026-01-05T05:59:00Z",
    )
    .await;
    harness.advance(Duration::from_secs(60)).await;
    let first = published.take();
    assert_eq!(
        first,
        BTreeSet::from(["openai.usage.spike openai:usage_spike:key_hot:gpt-4o".to_owned()])
    );
    fake.push_usage(
        UsageSeed::new(day(8), "proj_1", "key_hot")
            .requests(60_000)
            .model("gpt-4o"),
    );
    fake.set_now(time("2026-01-06T06:00:00Z").timestamp());
    harness.advance(Duration::from_secs(24 * 3600)).await;
    assert_eq!(
        published.take(),
        first,
        "the same key: it joins the open run"
    );
}
