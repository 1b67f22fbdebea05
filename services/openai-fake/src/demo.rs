//! A small simulated OpenAI organization for `quench up --demo`: four projects, six people, four
//! service accounts, ten project keys, a second admin key, a day of audit-log drift and eight
//! days of usage. Every time is relative to `now`, so the shipped discovery playbooks
//! (`inventory-openai-keys`, `watch-openai-audit-log`, `find-openai-usage-spikes`,
//! `find-overprivileged-openai-keys`) find the
//! same things whenever the demo starts: what [`Organization::planted`] lists, and nothing else.
//!
//! What each playbook looks for, and what is planted for it:
//! - the inventory: a person's key unused for 90 days or never used (`bob-laptop`,
//!   `notebook-experiments`), a key whose owner left its project (`erin-eval-harness`), a
//!   service account whose key is as idle (`nightly-export`);
//! - the audit-log watch (events of the last day): a key given every permission
//!   (`support-bot-prod`), a service account created (`etl-runner`), a member made project owner
//!   (`dave@demo.example`), a new admin key (`ci-deploy`);
//! - the usage check (yesterday against the seven days before): `billing-batch` on `gpt-4o`;
//! - the least-privilege review (usage against recorded scopes): `support-bot-prod`, whose
//!   restrictions were lifted; the other keys in use were created with what they use.
//!
//! The other keys are healthy on purpose (used recently, owners in place, steady usage), so the
//! findings stand out against an organization that is mostly fine.

use serde_json::{Value, json};

use crate::{AuditEvent, KeySeed, OpenAiFake, Role, UsageSeed};

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// What completions usage needs in the shipped `workflows/data/usage-scopes.yaml`.
const TEXT_SCOPES: [&str; 3] = [
    "api.model.request",
    "api.responses.read",
    "api.responses.write",
];

/// What [`seed`] put into the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    /// Projects, all active.
    pub projects: usize,
    /// People in the organization (one of them has left the project their key is in).
    pub users: usize,
    /// Service accounts.
    pub service_accounts: usize,
    /// Project API keys, owned by people or by service accounts.
    pub keys: usize,
    /// Audit-log events of the last day.
    pub audit_events: usize,
    /// What the shipped discovery playbooks should find, one readable line each (what, where,
    /// why), in the order the banner lists them.
    pub planted: Vec<String>,
}

/// Seeds the demo organization into an empty `fake`, with times relative to `now` (Unix seconds).
///
/// # Panics
///
/// When `fake` already holds objects with the demo's ids (seed a fresh fake).
pub fn seed(fake: &OpenAiFake, now: i64) -> Organization {
    let ago = |seconds: i64| now - seconds;

    // ---- projects and people ----
    let projects = [
        ("proj_web_app", "web-app"),
        ("proj_data_pipeline", "data-pipeline"),
        ("proj_support_bot", "support-bot"),
        ("proj_research", "research"),
    ];
    for (id, name) in projects {
        fake.seed_project(id, name);
    }
    let members = [
        ("proj_web_app", "user_alice", Role::Owner),
        ("proj_web_app", "user_bob", Role::Member),
        ("proj_data_pipeline", "user_carol", Role::Owner),
        ("proj_data_pipeline", "user_bob", Role::Member),
        ("proj_support_bot", "user_carol", Role::Owner),
        // Made owner four hours ago (the `user.updated` event below).
        ("proj_support_bot", "user_dave", Role::Owner),
        ("proj_research", "user_frank", Role::Owner),
        ("proj_research", "user_alice", Role::Member),
    ];
    for (project, user, role) in members {
        fake.seed_user(project, user, &email(user), role);
    }
    // Erin left `research`; her key there stays, with `owner_project_access: inactive`.
    fake.seed_org_user("user_erin", &email("user_erin"));
    let users = members
        .iter()
        .map(|(_, user, _)| *user)
        .chain(["user_erin"])
        .collect::<std::collections::BTreeSet<_>>()
        .len();

    // ---- keys owned by people ----
    let person_keys = [
        (
            "proj_web_app",
            "user_alice",
            KeySeed::new("key_web_frontend")
                .name("web-frontend")
                .created_at(ago(200 * DAY))
                .last_used_at(ago(10 * MINUTE)),
        ),
        (
            "proj_web_app",
            "user_bob",
            KeySeed::new("key_bob_laptop")
                .name("bob-laptop")
                .created_at(ago(300 * DAY))
                .last_used_at(ago(140 * DAY)),
        ),
        (
            "proj_data_pipeline",
            "user_bob",
            KeySeed::new("key_notebook_experiments")
                .name("notebook-experiments")
                .created_at(ago(120 * DAY)),
        ),
        (
            "proj_support_bot",
            "user_carol",
            KeySeed::new("key_carol_debug")
                .name("carol-debug")
                .created_at(ago(10 * DAY))
                .last_used_at(ago(3 * DAY))
                .expires_at(now + 4 * DAY),
        ),
        (
            "proj_research",
            "user_erin",
            KeySeed::new("key_erin_eval_harness")
                .name("erin-eval-harness")
                .created_at(ago(180 * DAY))
                .last_used_at(ago(25 * DAY)),
        ),
        (
            "proj_research",
            "user_frank",
            KeySeed::new("key_frank_finetune")
                .name("frank-finetune")
                .created_at(ago(45 * DAY))
                .last_used_at(ago(DAY))
                .expires_at(now + 60 * DAY),
        ),
    ];
    let mut keys = 0;
    for (project, owner, key) in person_keys {
        fake.seed_key(project, owner, key);
        keys += 1;
    }

    // ---- service accounts, each with its key ----
    let service_accounts = [
        (
            "proj_data_pipeline",
            "svc_acct_billing_batch",
            "billing-batch",
            KeySeed::new("key_billing_batch")
                .name("billing-batch")
                .created_at(ago(250 * DAY))
                .last_used_at(ago(20 * MINUTE)),
        ),
        (
            "proj_data_pipeline",
            "svc_acct_nightly_export",
            "nightly-export",
            KeySeed::new("key_nightly_export")
                .name("nightly-export")
                .created_at(ago(400 * DAY))
                .last_used_at(ago(200 * DAY)),
        ),
        (
            "proj_data_pipeline",
            "svc_acct_etl_runner",
            "etl-runner",
            KeySeed::new("key_etl_runner")
                .name("etl-runner")
                .created_at(ago(5 * HOUR))
                .last_used_at(ago(HOUR))
                .expires_at(now + 90 * DAY),
        ),
        (
            "proj_support_bot",
            "svc_acct_support_bot_prod",
            "support-bot-prod",
            KeySeed::new("key_support_bot_prod")
                .name("support-bot-prod")
                .created_at(ago(60 * DAY))
                .last_used_at(ago(2 * MINUTE))
                .expires_at(now + 30 * DAY),
        ),
    ];
    let service_account_count = service_accounts.len();
    for (project, id, name, key) in service_accounts {
        fake.seed_service_account(project, id, name, key);
        keys += 1;
    }
    fake.seed_admin_key("key_admin_ci_deploy", "ci-deploy");

    // ---- the last day's audit log ----
    let events = [
        AuditEvent::new(
            "service_account.created",
            ago(5 * HOUR),
            json!({"id": "svc_acct_etl_runner", "data": {"role": "member"}}),
        )
        .project("proj_data_pipeline")
        .actor(session("user_carol")),
        AuditEvent::new(
            "user.updated",
            ago(4 * HOUR),
            json!({"id": "user_dave", "changes_requested": {"role": "owner"}}),
        )
        .project("proj_support_bot")
        .actor(session("user_carol")),
        // An empty list lifts every restriction: the key may now do anything its owner can.
        AuditEvent::new(
            "api_key.updated",
            ago(3 * HOUR),
            json!({"id": "key_support_bot_prod", "changes_requested": {"scopes": []}}),
        )
        .project("proj_support_bot")
        .actor(session("user_dave")),
        AuditEvent::new(
            "tenant.admin_api_key.created",
            ago(2 * HOUR),
            json!({"id": "key_admin_ci_deploy", "data": {"name": "ci-deploy"}}),
        )
        .actor(session("user_alice")),
        // Everyday events the watch does not ask for.
        AuditEvent::new(
            "login.succeeded",
            ago(90 * MINUTE),
            json!({"id": "login_frank"}),
        )
        .actor(session("user_frank")),
        AuditEvent::new(
            "rate_limit.updated",
            ago(30 * MINUTE),
            json!({"id": "rl-gpt-4o-mini", "changes_requested": {"max_requests_per_1_minute": 500}}),
        )
        .project("proj_web_app")
        .actor(session("user_alice")),
    ];
    let audit_events = events.len();
    for event in events {
        fake.push_audit_event(event);
    }
    // Older: the healthy keys in use were created with the scopes their usage needs, so the
    // least-privilege review proposes nothing for them (support-bot-prod's were lifted above).
    for (key, created) in [
        ("key_web_frontend", 200),
        ("key_frank_finetune", 45),
        ("key_billing_batch", 250),
    ] {
        fake.push_audit_event(
            AuditEvent::new(
                "api_key.created",
                ago(created * DAY),
                json!({"id": key, "data": {"scopes": TEXT_SCOPES}}),
            )
            .actor(session("user_alice")),
        );
    }

    // ---- eight days of usage: day 0 is the last 24 hours ----
    let steady = [
        (
            "proj_web_app",
            "key_web_frontend",
            Some("user_alice"),
            "gpt-4o-mini",
            2_000,
        ),
        (
            "proj_support_bot",
            "key_support_bot_prod",
            None,
            "gpt-4o-mini",
            5_000,
        ),
        (
            "proj_research",
            "key_frank_finetune",
            Some("user_frank"),
            "gpt-4o",
            150,
        ),
    ];
    for day in 0..8 {
        // Two hours into each day back from now, so every row falls inside one daily bucket
        // of a query that starts eight days before it runs (a few minutes after seeding).
        let at = ago(day * DAY + 2 * HOUR);
        for (project, key, user, model, requests) in steady {
            let mut usage = UsageSeed::new(at, project, key)
                .model(model)
                .requests(requests)
                .tokens(requests * 400, requests * 150);
            if let Some(user) = user {
                usage = usage.user(user);
            }
            fake.push_usage(usage);
        }
        // A nightly batch job that ran 65 times its usual volume yesterday.
        let batch = if day == 0 { 26_000 } else { 400 };
        fake.push_usage(
            UsageSeed::new(at, "proj_data_pipeline", "key_billing_batch")
                .model("gpt-4o")
                .requests(batch)
                .tokens(batch * 1_200, batch * 300),
        );
    }

    Organization {
        projects: projects.len(),
        users,
        service_accounts: service_account_count,
        keys,
        audit_events,
        planted: [
            "bob-laptop (web-app): bob@demo.example's key, unused for 140 days",
            "notebook-experiments (data-pipeline): bob@demo.example's key, never used",
            "erin-eval-harness (research): its owner erin@demo.example left the project",
            "nightly-export (data-pipeline): a service account idle for 200 days",
            "support-bot-prod (support-bot): given every permission 3 hours ago",
            "support-bot-prod (support-bot): may do anything, used only model requests in 30 days",
            "etl-runner (data-pipeline): a service account created 5 hours ago",
            "dave@demo.example (support-bot): made project owner 4 hours ago",
            "ci-deploy: a new admin key, 2 hours ago",
            "billing-batch (data-pipeline): 26,000 gpt-4o requests yesterday, 400 a day before",
        ]
        .map(str::to_owned)
        .to_vec(),
    }
}

/// `alice@demo.example` for `user_alice`.
fn email(user_id: &str) -> String {
    format!("{}@demo.example", user_id.trim_start_matches("user_"))
}

/// A dashboard session of `user_id` as an audit event's `actor`.
fn session(user_id: &str) -> Value {
    json!({
        "type": "session",
        "session": {
            "user": {"id": user_id, "email": email(user_id)},
            "ip_address": "203.0.113.7"
        }
    })
}
