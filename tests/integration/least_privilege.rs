//! Least privilege from actual usage: the usage-scope mapping file (the shipped one loads; a
//! broken one is refused at its line, by the loader and by `quench serve`), and
//! `openai.key_usage` against the OpenAI fake over real HTTP — every usage endpoint that groups
//! by key read with the spec's parameters and paged to the end, scopes from the audit log, and a
//! proposal for exactly the keys whose usage needs strictly less than they have; then the
//! proposal applied with `openai.set_key_scopes` is what the next reading finds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quench_runner::config::Secret;
use quench_runner::connectors::openai::{self, OpenAi, UsageScopes};
use quench_runner::engine::{ActionError, Actions, Call, Success};
use serde_json::{Value, json};

use crate::support;
use crate::support::openai_fake::{AuditEvent, Fault, KeySeed, OpenAiFake, Role, UsageSeed};

const DAY: i64 = 86_400;

/// The usage endpoints that group by `api_key_id`, as the reference lists them.
const ENDPOINTS: [&str; 8] = [
    "completions",
    "embeddings",
    "moderations",
    "images",
    "audio_speeches",
    "audio_transcriptions",
    "file_search_calls",
    "web_search_calls",
];

fn shipped_mapping() -> PathBuf {
    support::root().join("workflows/data/usage-scopes.yaml")
}

fn actions(fake: &OpenAiFake, mapping: &Path) -> Actions {
    let client = OpenAi::new(&fake.base_url(), Secret::new(fake.admin_key()), None)
        .expect("the fake's base URL is valid")
        .with_usage_scopes(mapping.to_owned());
    let mut actions = Actions::new();
    openai::register(&mut actions, Arc::new(client));
    actions
}

async fn call(actions: &Actions, action: &str, input: Value) -> Result<Success, ActionError> {
    let call = Call {
        action: action.to_owned(),
        input,
        idempotency_key: format!("run_1/{action}/0"),
        run_id: "run_1".to_owned(),
        step: "step".to_owned(),
        iteration: 0,
        attempt: 1,
    };
    actions
        .get(action)
        .unwrap_or_else(|| panic!("{action} is registered"))
        .call(&call)
        .await
}

async fn key_usage(actions: &Actions, input: Value) -> Value {
    match call(actions, "openai.key_usage", input).await {
        Ok(success) => success.output,
        Err(error) => panic!("openai.key_usage failed: {error:?}"),
    }
}

/// The row of `key_id` in a `key_usage` output.
fn row<'a>(output: &'a Value, key_id: &str) -> &'a Value {
    output["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|row| row["id"] == key_id)
        .unwrap_or_else(|| panic!("no row for {key_id} in {output:#}"))
}

// ---- the mapping file ----

#[test]
fn the_shipped_mapping_loads_and_names_a_source_for_every_family() {
    let mapping = UsageScopes::load(&shipped_mapping()).expect("the shipped mapping is valid");
    // Batch jobs, file search and web search have no source that names their scopes.
    assert_eq!(
        mapping.mapped_families(),
        [
            "completions",
            "embeddings",
            "moderations",
            "images",
            "audio_speeches",
            "audio_transcriptions"
        ]
    );
}

#[test]
fn a_broken_mapping_is_refused_at_its_line_with_the_file_name() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("usage-scopes.yaml");
    let cases = [
        (
            "schema: quench.usage-scopes/v1\nfamilies:\n  embedings:\n    scopes: [api.model.request]\n    source: x\n",
            "3:",
            "embeddings",
        ),
        (
            "schema: quench.usage-scopes/v1\nfamilies:\n  images:\n    scopes: [model.request]\n    source: x\n",
            "4:",
            "model.request",
        ),
        (
            "schema: quench.usage-scopes/v1\nfamilies:\n  images:\n    scopes: []\n    source: x\n",
            "4:",
            "scopes",
        ),
        (
            "schema: quench.usage-scopes/v1\nfamilies:\n  images:\n    scopes: [api.model.request]\n",
            "3:",
            "source",
        ),
        (
            "schema: quench.usage-scopes/v1\nfamilies:\n  images:\n    scopes: [api.model.request, api.model.request]\n    source: x\n",
            "4:",
            "",
        ),
        (
            "schema: quench.usage-scopes/v2\nfamilies: {}\n",
            "1:",
            "schema",
        ),
    ];
    for (text, line, mentions) in cases {
        std::fs::write(&path, text).expect("write");
        let error = UsageScopes::load(&path).expect_err(text);
        let shown = path.display().to_string();
        assert!(
            error.contains(&format!("{shown}:{line}")),
            "names the file and line {line}: {error}"
        );
        assert!(error.contains(mentions), "mentions {mentions}: {error}");
    }
    let missing = UsageScopes::load(&directory.path().join("absent.yaml")).expect_err("missing");
    assert!(
        missing.contains("does not exist") && missing.contains("openai.usage_scopes"),
        "{missing}"
    );
}

#[test]
fn quench_serve_refuses_to_start_with_a_broken_mapping() {
    let directory = tempfile::tempdir().expect("temp dir");
    let playbooks = directory.path().join("playbooks");
    std::fs::create_dir(&playbooks).expect("playbooks dir");
    let mapping = directory.path().join("scopes.yaml");
    std::fs::write(
        &mapping,
        "schema: quench.usage-scopes/v1\nfamilies:\n  images:\n    scopes: [api.model.request]\n    sauce: x\n",
    )
    .expect("write mapping");
    let config = directory.path().join("quench.toml");
    std::fs::write(
        &config,
        format!(
            "[playbooks]\ndir = \"{}\"\n[openai]\nusage_scopes = \"{}\"\n[store]\npath = \"{}\"\n",
            playbooks.display(),
            mapping.display(),
            directory.path().join("state").display()
        ),
    )
    .expect("write config");
    let output = std::process::Command::new(support::quench_bin())
        .args(["serve", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("quench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:5:", mapping.display())) && stderr.contains("source"),
        "the unknown field at its line, with a did-you-mean: {stderr}"
    );
    assert!(
        !directory.path().join("state").exists(),
        "refused before the store was opened"
    );
}

// ---- openai.key_usage against the fake ----

/// An organization where each key shows one case: `key_chat` (chat and embeddings, all
/// permissions), `key_embed` (embeddings, narrowed once to two scopes), `key_tight` (embeddings,
/// created with exactly what it needs), `key_files` (embeddings, but restricted to files), `key_rag`
/// (a service account using file search: unknown), `key_batch` (batch jobs: unknown),
/// `key_idle` (nothing).
async fn organization(now: i64) -> OpenAiFake {
    let fake = OpenAiFake::start().await;
    fake.set_now(now);
    fake.seed_project("proj_1", "Main");
    fake.seed_project("proj_2", "Side");
    fake.seed_user("proj_1", "user_alice", "alice@example.com", Role::Owner);
    fake.seed_user("proj_2", "user_bob", "bob@example.com", Role::Member);
    for (project, owner, key) in [
        ("proj_1", "user_alice", "key_chat"),
        ("proj_1", "user_alice", "key_embed"),
        ("proj_1", "user_alice", "key_tight"),
        ("proj_2", "user_bob", "key_files"),
        ("proj_2", "user_bob", "key_batch"),
        ("proj_2", "user_bob", "key_idle"),
    ] {
        fake.seed_key(project, owner, KeySeed::new(key).name(key));
    }
    fake.seed_service_account("proj_1", "svc_acct_rag", "RAG", KeySeed::new("key_rag"));
    let ago = |days: i64| now - days * DAY;
    for usage in [
        UsageSeed::new(ago(2), "proj_1", "key_chat").requests(100),
        UsageSeed::new(ago(20), "proj_1", "key_chat").requests(20),
        UsageSeed::of("embeddings", ago(3), "proj_1", "key_chat").requests(5),
        UsageSeed::of("embeddings", ago(1), "proj_1", "key_embed").requests(40),
        UsageSeed::of("embeddings", ago(1), "proj_1", "key_tight").requests(2),
        UsageSeed::of("embeddings", ago(1), "proj_2", "key_files").requests(9),
        UsageSeed::new(ago(4), "proj_1", "key_rag").requests(7),
        UsageSeed::of("file_search_calls", ago(4), "proj_1", "key_rag").requests(3),
        UsageSeed::new(ago(5), "proj_2", "key_batch")
            .requests(50)
            .batch(true),
        // Older than 30 days: not evidence.
        UsageSeed::of("images", ago(45), "proj_2", "key_idle").requests(1),
        // A key that no longer exists.
        UsageSeed::new(ago(1), "proj_2", "key_deleted").requests(1),
    ] {
        fake.push_usage(usage);
    }
    for event in [
        AuditEvent::new(
            "api_key.created",
            ago(200),
            json!({"id": "key_embed", "data": {"scopes": []}}),
        ),
        AuditEvent::new(
            "api_key.updated",
            ago(100),
            json!({"id": "key_embed", "changes_requested": {"scopes": ["api.model.request", "api.files.read"]}}),
        ),
        // An expiry change says nothing about scopes.
        AuditEvent::new(
            "api_key.updated",
            ago(50),
            json!({"id": "key_embed", "changes_requested": {"expires_in_seconds": 86_400}}),
        ),
        AuditEvent::new(
            "api_key.created",
            ago(90),
            json!({"id": "key_tight", "data": {"scopes": ["api.model.request"]}}),
        ),
        // The spec's own example writes an update's scopes under `data`.
        AuditEvent::new(
            "api_key.updated",
            ago(80),
            json!({"id": "key_files", "data": {"scopes": ["api.files.read"]}}),
        ),
    ] {
        fake.push_audit_event(event);
    }
    fake
}

#[tokio::test]
async fn key_usage_proposes_exactly_what_each_key_used_when_it_is_strictly_less() {
    let now = chrono::Utc::now().timestamp();
    let fake = organization(now).await;
    // Several pages of daily buckets for every endpoint, and of audit events.
    fake.set_max_page_size(8);
    fake.set_default_page_size(2);
    let actions = actions(&fake, &shipped_mapping());

    let output = key_usage(&actions, json!({})).await;
    assert_eq!(
        output["count"], 7,
        "every key of every active project: {output:#}"
    );
    assert!(
        output["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .all(|row| row["id"] != "key_deleted"),
        "usage of a key that is gone is not a key to narrow"
    );

    let chat = row(&output, "key_chat");
    assert_eq!(chat["project_id"], "proj_1");
    assert_eq!(chat["owner"]["email"], "alice@example.com");
    assert_eq!(
        chat["requests"],
        json!({"completions": 120, "embeddings": 5})
    );
    assert_eq!(
        chat["current_scopes"],
        json!([]),
        "nothing recorded: all permissions"
    );
    assert_eq!(chat["scopes_recorded_at"], Value::Null);
    assert_eq!(
        chat["proposed_scopes"],
        json!([
            "api.model.request",
            "api.responses.read",
            "api.responses.write"
        ])
    );
    assert_eq!(chat["narrower"], true);
    assert_eq!(chat["reason"], "narrower");

    let embed = row(&output, "key_embed");
    assert_eq!(embed["requests"], json!({"embeddings": 40}));
    assert_eq!(
        embed["current_scopes"],
        json!(["api.files.read", "api.model.request"]),
        "the newest event that set scopes, not the expiry change after it"
    );
    assert!(embed["scopes_recorded_at"].is_string());
    assert_eq!(embed["proposed_scopes"], json!(["api.model.request"]));
    assert_eq!(embed["reason"], "narrower");

    let tight = row(&output, "key_tight");
    assert_eq!(tight["current_scopes"], json!(["api.model.request"]));
    assert_eq!(tight["needed_scopes"], json!(["api.model.request"]));
    assert_eq!(tight["proposed_scopes"], Value::Null);
    assert_eq!(tight["narrower"], false);
    assert_eq!(
        tight["reason"], "not_narrower",
        "already exactly what it needs"
    );

    let files = row(&output, "key_files");
    assert_eq!(files["current_scopes"], json!(["api.files.read"]));
    assert_eq!(
        files["reason"], "not_narrower",
        "needs a scope it does not have"
    );
    assert_eq!(files["proposed_scopes"], Value::Null);

    let rag = row(&output, "key_rag");
    assert_eq!(rag["owner"]["type"], "service_account");
    assert_eq!(
        rag["requests"],
        json!({"completions": 7, "file_search_calls": 3})
    );
    assert_eq!(rag["reason"], "unknown_family");
    assert_eq!(rag["unknown_families"], json!(["file_search_calls"]));
    assert_eq!(rag["needed_scopes"], Value::Null, "never a guess");
    assert_eq!(rag["proposed_scopes"], Value::Null);

    let batch = row(&output, "key_batch");
    assert_eq!(batch["requests"], json!({"completions_batch": 50}));
    assert_eq!(batch["reason"], "unknown_family");

    let idle = row(&output, "key_idle");
    assert_eq!(idle["requests"], json!({}));
    assert_eq!(idle["reason"], "unused", "the unused-key review's business");
    assert_eq!(idle["proposed_scopes"], Value::Null);

    // What went to OpenAI: each usage endpoint as the spec shapes it, paged to the end.
    let since = output["since"].as_str().expect("since");
    let since = chrono::DateTime::parse_from_rfc3339(since)
        .expect("RFC 3339")
        .timestamp();
    assert!(
        (now - 30 * DAY - since).abs() <= 5,
        "thirty days back by default"
    );
    let calls = fake.calls();
    for endpoint in ENDPOINTS {
        let path = format!("/v1/organization/usage/{endpoint}");
        let pages: Vec<_> = calls.iter().filter(|call| call.path == path).collect();
        assert_eq!(
            pages.len(),
            4,
            "{endpoint}: 30 or 31 daily buckets, 8 a page"
        );
        for (index, page) in pages.iter().enumerate() {
            assert_eq!(page.method, "GET");
            assert_eq!(
                page.query_value("start_time"),
                Some(since.to_string().as_str())
            );
            assert!(page.query_value("end_time").is_some(), "{endpoint}");
            assert_eq!(page.query_value("bucket_width"), Some("1d"));
            assert_eq!(
                page.query_value("limit"),
                Some("31"),
                "the spec's maximum for 1d"
            );
            let mut group_by = vec!["api_key_id", "project_id"];
            if endpoint == "completions" {
                group_by.push("batch");
            }
            assert_eq!(page.query_values("group_by[]"), group_by, "{endpoint}");
            assert_eq!(page.query_value("page").is_some(), index > 0, "{endpoint}");
        }
    }
    let audit: Vec<_> = calls
        .iter()
        .filter(|call| call.path == "/v1/organization/audit_logs")
        .collect();
    assert_eq!(audit.len(), 1, "100 events a page hold all five");
    assert_eq!(
        audit[0].query_values("event_types[]"),
        ["api_key.created", "api_key.updated"]
    );
    assert_eq!(
        calls
            .iter()
            .filter(|call| call.path.ends_with("/api_keys"))
            .map(|call| call.query_value("owner_project_access"))
            .collect::<Vec<_>>(),
        [Some("any"), Some("any")],
        "every key, also those whose owner left"
    );

    // One project, a shorter window.
    let side = key_usage(&actions, json!({"project_id": "proj_2", "days": 7})).await;
    assert_eq!(side["count"], 3);
    let usage_calls = fake.calls();
    let last = usage_calls
        .iter()
        .rev()
        .find(|call| call.path == "/v1/organization/usage/embeddings")
        .expect("embeddings read");
    assert_eq!(last.query_values("project_ids[]"), ["proj_2"]);
}

#[tokio::test]
async fn a_narrowing_applied_is_what_the_next_reading_finds() {
    let now = chrono::Utc::now().timestamp();
    let fake = organization(now).await;
    let actions = actions(&fake, &shipped_mapping());
    let before = key_usage(&actions, json!({})).await;
    let proposed = row(&before, "key_chat")["proposed_scopes"].clone();
    call(
        &actions,
        "openai.set_key_scopes",
        json!({"project_id": "proj_1", "key_id": "key_chat", "scopes": proposed}),
    )
    .await
    .expect("narrowed");
    assert_eq!(
        fake.key_scopes("proj_1", "key_chat"),
        Some(vec![
            "api.model.request".to_owned(),
            "api.responses.read".to_owned(),
            "api.responses.write".to_owned()
        ])
    );
    // The fake recorded `api_key.updated` with `changes_requested.scopes`, as OpenAI does.
    let after = key_usage(&actions, json!({})).await;
    let chat = row(&after, "key_chat");
    assert_eq!(chat["current_scopes"], proposed);
    assert_eq!(chat["narrower"], false);
    assert_eq!(chat["reason"], "not_narrower", "asked once, not every week");
}

#[tokio::test]
async fn key_usage_fails_clearly_without_a_mapping_or_with_bad_input() {
    let now = chrono::Utc::now().timestamp();
    let fake = organization(now).await;
    let directory = tempfile::tempdir().expect("temp dir");
    let missing = actions(&fake, &directory.path().join("absent.yaml"));
    match call(&missing, "openai.key_usage", json!({})).await {
        Err(ActionError::Permanent { message }) => {
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    let actions = actions(&fake, &shipped_mapping());
    for (input, expected) in [
        (json!({"days": 0}), "from 1 to 365"),
        (json!({"days": 400}), "from 1 to 365"),
        (json!({"project_id": "proj 1"}), "not an OpenAI id"),
        (json!({"weeks": 2}), "unknown field"),
    ] {
        match call(&actions, "openai.key_usage", input.clone()).await {
            Err(ActionError::Permanent { message }) => {
                assert!(message.contains(expected), "{input}: {message}");
            }
            other => panic!("{input}: expected a permanent error, got {other:?}"),
        }
    }
    assert!(fake.calls().is_empty(), "bad input never reaches OpenAI");

    fake.fail_next_on(
        "/v1/organization/usage/images",
        1,
        Fault::RateLimited {
            retry_after_secs: 9,
        },
    );
    match call(&actions, "openai.key_usage", json!({})).await {
        Err(ActionError::Retryable { retry_after, .. }) => {
            assert_eq!(retry_after, Some(std::time::Duration::from_secs(9)));
        }
        other => panic!("a rate-limited usage read is retried, got {other:?}"),
    }
}

// ---- the shipped weekly playbook, end to end against the fake ----

/// `finding.publish`, recording what it would publish.
#[derive(Debug, Default)]
struct Published(std::sync::Mutex<Vec<Value>>);

impl quench_runner::engine::Action for Published {
    fn call<'a>(&'a self, call: &'a Call) -> quench_runner::engine::ActionFuture<'a> {
        Box::pin(async move {
            self.0.lock().expect("lock").push(call.input.clone());
            Ok(Success::new(
                json!({"id": call.idempotency_key, "subject": "recorded"}),
            ))
        })
    }
}

#[tokio::test]
async fn the_weekly_review_publishes_a_finding_for_each_key_that_can_be_narrowed() {
    let fake = organization(chrono::Utc::now().timestamp()).await;
    fake.set_max_page_size(8);
    let source = std::fs::read_to_string(
        support::root().join("workflows/find-overprivileged-openai-keys.yaml"),
    )
    .expect("the shipped playbook");
    let client = Arc::new(
        OpenAi::new(&fake.base_url(), Secret::new(fake.admin_key()), None)
            .expect("client")
            .with_usage_scopes(shipped_mapping()),
    );
    let published = Arc::new(Published::default());
    let recorder = published.clone();
    // Monday 08:00 in Berlin is 07:00 UTC in January; start a minute before. (The schedule runs
    // on this manual clock; the usage window is the real one the seeded usage is relative to.)
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-05T06:59:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let harness = support::Harness::build(
        quench_runner::store::Store::temporary().expect("store"),
        &[&source],
        start,
        Default::default(),
        move |actions| {
            openai::register(actions, client);
            actions.insert("finding.publish", recorder);
        },
        None,
        |_| {},
    )
    .await;
    harness.advance(std::time::Duration::ZERO).await;
    harness.advance(std::time::Duration::from_secs(60)).await;
    let findings = std::mem::take(&mut *published.0.lock().expect("lock"));
    let keys: Vec<&str> = findings
        .iter()
        .map(|finding| finding["key"].as_str().expect("key"))
        .collect();
    assert_eq!(
        keys,
        [
            "openai:project_key:key_chat:scopes",
            "openai:project_key:key_embed:scopes"
        ],
        "not the exact, wrongly scoped, unknown, batch or idle keys: {findings:#?}"
    );
    let embed = &findings[1];
    assert_eq!(embed["kind"], "openai.api_key.overprivileged");
    assert_eq!(embed["owner"], json!({"email": "alice@example.com"}));
    assert_eq!(
        embed["evidence"],
        json!({
            "days": 30,
            "requests": {"embeddings": 40},
            "current_scopes": ["api.files.read", "api.model.request"],
            "proposed_scopes": ["api.model.request"],
        })
    );
    // What it publishes is a valid finding.
    for finding in &findings {
        let mut finding = finding.clone();
        // As `finding.publish` completes it.
        finding["schema"] = json!("quench.finding/v1");
        finding["id"] = json!("quench-0123456789abcdef0123456789abcdef");
        finding["detected_at"] = json!("2026-01-05T07:00:00Z");
        finding["source"] = json!({"scanner": "quench"});
        let bytes = serde_json::to_vec(&finding).expect("json");
        quench_proto::Finding::parse(&bytes, quench_proto::DEFAULT_MAX_FINDING_BYTES)
            .unwrap_or_else(|error| panic!("{error}: {finding:#}"));
    }
}
