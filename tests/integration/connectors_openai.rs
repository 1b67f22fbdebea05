//! The OpenAI connector against the OpenAI fake over real HTTP: every `openai.*` action called
//! through the `Action` trait — success, `already_done`, each error class and its retry
//! classification, pagination (short pages, a server that repeats its cursor), dry-run
//! `describe`, the service-account-owned key, and that the admin key shows up in no message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quench_runner::config::Secret;
use quench_runner::connectors::openai::{self, OpenAi};
use quench_runner::engine::{ActionError, Actions, Call, Success};
use serde_json::{Value, json};

use crate::support::openai_fake::{
    AuditEvent, Fault, KeySeed, OpenAiFake, RateLimitSeed, Role, UsageSeed,
};

/// The client timeout in these tests; `Fault::Slow` waits longer.
const TIMEOUT: Duration = Duration::from_millis(300);

/// 2026-01-05T00:00:00Z.
const NOW: i64 = 1_767_571_200;

/// A connector pointed at a fake, with every message it produced kept for the secret check.
struct Connector {
    fake: OpenAiFake,
    client: Arc<OpenAi>,
    actions: Actions,
    messages: Mutex<Vec<String>>,
}

impl Connector {
    async fn new() -> Connector {
        let fake = OpenAiFake::start().await;
        fake.set_now(NOW);
        Connector::on(fake, None)
    }

    fn on(fake: OpenAiFake, org_id: Option<&str>) -> Connector {
        let client = OpenAi::new(
            &fake.base_url(),
            Secret::new(fake.admin_key()),
            org_id.map(str::to_owned),
        )
        .expect("the fake's base URL is valid")
        .with_request_timeout(TIMEOUT);
        let client = Arc::new(client);
        let mut actions = Actions::new();
        openai::register(&mut actions, client.clone());
        Connector {
            fake,
            client,
            actions,
            messages: Mutex::new(Vec::new()),
        }
    }

    /// Calls `action` through the `Action` trait, as the engine does.
    async fn run(&self, action: &str, input: Value) -> Result<Success, ActionError> {
        let call = Call {
            action: action.to_owned(),
            input,
            idempotency_key: format!("run_1/{action}/0"),
            run_id: "run_1".to_owned(),
            step: "step".to_owned(),
            iteration: 0,
            attempt: 1,
        };
        let implementation = self
            .actions
            .get(action)
            .unwrap_or_else(|| panic!("{action} is registered"));
        let result = implementation.call(&call).await;
        if let Err(error) = &result {
            self.messages
                .lock()
                .expect("not poisoned")
                .push(error.to_string());
        }
        result
    }

    async fn ok(&self, action: &str, input: Value) -> Success {
        match self.run(action, input).await {
            Ok(success) => success,
            Err(error) => panic!("{action} failed: {error:?}"),
        }
    }

    /// The permanent error's message; panics on success or a retryable error.
    async fn permanent(&self, action: &str, input: Value) -> String {
        match self.run(action, input).await {
            Err(ActionError::Permanent { message }) => message,
            other => panic!("{action}: expected a permanent error, got {other:?}"),
        }
    }

    fn describe(&self, action: &str, input: Value) -> Result<Value, ActionError> {
        self.actions
            .get(action)
            .unwrap_or_else(|| panic!("{action} is registered"))
            .describe(&input)
    }

    /// How many requests the fake has received.
    fn requests(&self) -> usize {
        self.fake.calls().len()
    }
}

impl Drop for Connector {
    /// Whatever a test did, no message and no `Debug` output carried the admin key.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let key = self.fake.admin_key();
        let secret_part = &key["sk-admin-".len()..];
        let debug = format!("{:?} {:?}", self.client, self.actions);
        for text in self
            .messages
            .lock()
            .expect("not poisoned")
            .iter()
            .chain([&debug])
        {
            assert!(
                !text.contains(secret_part),
                "the admin key leaked into: {text}"
            );
        }
    }
}

/// Two active projects and one archived; users, keys, a service account, rate limits.
async fn seeded() -> Connector {
    let connector = Connector::new().await;
    let fake = &connector.fake;
    fake.seed_project("proj_1", "Main");
    fake.seed_project("proj_2", "Side");
    fake.seed_archived_project("proj_old", "Old");
    fake.seed_user("proj_1", "user_alice", "alice@example.com", Role::Owner);
    fake.seed_user("proj_1", "user_bob", "bob@example.com", Role::Member);
    fake.seed_user("proj_2", "user_bob", "bob@example.com", Role::Owner);
    fake.seed_key(
        "proj_1",
        "user_alice",
        KeySeed::new("key_alice")
            .name("laptop")
            .created_at(1_767_225_600)
            .last_used_at(1_767_500_000),
    );
    fake.seed_key("proj_2", "user_bob", KeySeed::new("key_bob").name("batch"));
    fake.seed_service_account("proj_1", "svc_acct_ci", "CI", KeySeed::new("key_ci"));
    fake.seed_rate_limit(
        "proj_1",
        RateLimitSeed::new("gpt-4o", 500, 30_000).with("max_requests_per_1_day", 10_000),
    );
    fake.seed_rate_limit("proj_1", RateLimitSeed::new("gpt-4o-mini", 1000, 200_000));
    fake.set_audit_mutations(false);
    connector
}

/// One valid input per action against [`seeded`].
fn every_action() -> Vec<(&'static str, Value)> {
    vec![
        (
            "openai.revoke_key",
            json!({"project_id": "proj_1", "key_id": "key_alice"}),
        ),
        (
            "openai.delete_admin_key",
            json!({"key_id": "key_admin_fake"}),
        ),
        (
            "openai.delete_service_account",
            json!({"project_id": "proj_1", "service_account_id": "svc_acct_ci"}),
        ),
        (
            "openai.set_project_user_role",
            json!({"project_id": "proj_1", "user_id": "user_alice", "role": "member"}),
        ),
        (
            "openai.remove_project_user",
            json!({"project_id": "proj_1", "user_id": "user_bob"}),
        ),
        (
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "gpt-4o", "max_requests_per_1_minute": 60}),
        ),
        ("openai.archive_project", json!({"project_id": "proj_2"})),
        ("openai.list_keys", json!({})),
        (
            "openai.list_project_users",
            json!({"project_id": "proj_1", "role": "owner"}),
        ),
        (
            "openai.audit_events",
            json!({"since": "2026-01-01T00:00:00Z", "event_types": ["api_key.created"]}),
        ),
        (
            "openai.usage",
            json!({"since": "2026-01-01T00:00:00Z", "group_by": ["api_key_id"]}),
        ),
        (
            "openai.set_key_scopes",
            json!({"project_id": "proj_1", "key_id": "key_alice", "scopes": ["api.model.request"]}),
        ),
        (
            "openai.set_key_expiry",
            json!({"project_id": "proj_1", "key_id": "key_alice", "expires_in": "14d"}),
        ),
        (
            "openai.set_model_permissions",
            json!({"project_id": "proj_1", "mode": "allow_list", "model_ids": ["gpt-4o"]}),
        ),
        (
            "openai.set_hosted_tools",
            json!({"project_id": "proj_1", "web_search": false}),
        ),
        (
            "openai.set_spend_limit",
            json!({"project_id": "proj_1", "threshold_amount": 10_000}),
        ),
    ]
}

// ---- the client ----

#[tokio::test]
async fn the_client_checks_its_configuration_and_hides_the_key() {
    let key = || Secret::new("sk-admin-abcdefghijklmnopqrstuvwxyz0123456789".to_owned());
    for (base_url, expected) in [
        ("not a url", "is not a URL"),
        ("ftp://api.openai.com/v1", "must use https"),
        ("http://api.openai.com/v1", "must use https"),
        ("https://user:pw@api.openai.com/v1", "user name or password"),
        ("https://api.openai.com/v1?x=1", "query or fragment"),
    ] {
        let error = OpenAi::new(base_url, key(), None).expect_err(base_url);
        assert!(error.contains(expected), "{base_url}: {error}");
        assert!(!error.contains("pw@"), "{error}");
    }
    OpenAi::new("https://api.openai.com/v1", key(), Some("org-1".to_owned()))
        .expect("the real base URL");
    OpenAi::new("http://localhost:8080/v1", key(), None).expect("a loopback fake");

    let empty = OpenAi::new(
        "https://api.openai.com/v1",
        Secret::new(" ".to_owned()),
        None,
    )
    .expect_err("an empty key");
    assert!(empty.contains("empty"), "{empty}");
    let broken = "sk-admin-secretpart\nInjected: header";
    let error = OpenAi::new(
        "https://api.openai.com/v1",
        Secret::new(broken.to_owned()),
        None,
    )
    .expect_err("a key that cannot be a header");
    assert!(!error.contains("secretpart"), "{error}");

    let client =
        OpenAi::new("https://api.openai.com/v1", key(), Some("org-1".to_owned())).expect("valid");
    let debug = format!("{client:?}");
    assert!(debug.contains("https://api.openai.com/v1"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(!debug.contains("abcdefghijklmnopqrstuvwxyz"), "{debug}");
}

#[tokio::test]
async fn requests_carry_the_admin_key_and_the_organization() {
    let fake = OpenAiFake::start().await;
    fake.seed_project("proj_1", "Main");
    let connector = Connector::on(fake, Some("org-123"));
    connector
        .ok("openai.list_keys", json!({"project_id": "proj_1"}))
        .await;
    let calls = connector.fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some(format!("Bearer {}", connector.fake.admin_key()).as_str())
    );
    assert_eq!(calls[0].organization.as_deref(), Some("org-123"));
}

// ---- error classes, for every action ----

#[tokio::test]
async fn every_action_classifies_every_kind_of_failure() {
    let connector = seeded().await;
    let retryable = |what: &str, result: Result<Success, ActionError>| match result {
        Err(ActionError::Retryable {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("{what}: expected a retryable error, got {other:?}"),
    };
    for (action, mut input) in every_action() {
        // A slow request may still reach the fake after the client gave up: aim at nothing.
        for (field, absent) in [
            ("key_id", "key_absent"),
            ("service_account_id", "svc_acct_absent"),
            ("user_id", "user_absent"),
        ] {
            if input.get(field).is_some() {
                input[field] = json!(absent);
            }
        }
        let before = connector.requests();

        connector.fake.fail_next(
            1,
            Fault::RateLimited {
                retry_after_secs: 7,
            },
        );
        let (message, retry_after) = retryable(action, connector.run(action, input.clone()).await);
        assert_eq!(retry_after, Some(Duration::from_secs(7)), "{action}");
        assert!(message.contains("(429)"), "{action}: {message}");
        assert!(
            message.contains("Rate limit reached"),
            "{action}: {message}"
        );

        connector.fake.fail_next(1, Fault::ServerError);
        let (message, retry_after) = retryable(action, connector.run(action, input.clone()).await);
        assert_eq!(retry_after, None, "{action}");
        assert!(message.contains("(500)"), "{action}: {message}");

        connector
            .fake
            .fail_next(1, Fault::Status(503, "Service overloaded".to_owned()));
        let (message, _) = retryable(action, connector.run(action, input.clone()).await);
        assert!(
            message.contains("Service overloaded"),
            "{action}: {message}"
        );

        connector
            .fake
            .fail_next(1, Fault::Slow(Duration::from_secs(3)));
        let (message, _) = retryable(action, connector.run(action, input.clone()).await);
        assert!(message.contains("timed out"), "{action}: {message}");

        for (status, text) in [
            (400, "Invalid 'limit': must be between 1 and 100."),
            (401, "Incorrect API key provided: sk-admin...abcd."),
            (403, "You have insufficient permissions for this operation."),
        ] {
            connector
                .fake
                .fail_next(1, Fault::Status(status, text.to_owned()));
            let message = connector.permanent(action, input.clone()).await;
            assert!(
                message.contains(&format!("({status}): {text}")),
                "{action} {status}: {message}"
            );
        }
        // One request per failure, plus the owner check after the 400 of a key delete and the
        // expiry check after the 400 of a key update.
        let extra = usize::from(matches!(
            action,
            "openai.revoke_key" | "openai.set_key_scopes" | "openai.set_key_expiry"
        ));
        assert_eq!(connector.requests() - before, 7 + extra, "{action}");
    }
    // Nothing was changed by any of it.
    assert!(connector.fake.key_exists("proj_1", "key_alice"));
    assert_eq!(
        connector.fake.model_permissions("proj_1"),
        Some(json!({"object": "project.model_permissions", "mode": "deny_list", "model_ids": []}))
    );
    assert_eq!(
        connector
            .fake
            .hosted_tool_permissions("proj_1")
            .expect("seeded")["web_search"],
        json!({"enabled": true})
    );
    assert_eq!(connector.fake.spend_limit("proj_1"), None);
    assert!(connector.fake.admin_key_exists("key_admin_fake"));
    assert_eq!(
        connector.fake.project("proj_2").expect("seeded")["status"],
        "active"
    );
}

#[tokio::test]
async fn a_wrong_admin_key_is_permanent_and_never_echoed() {
    let fake = OpenAiFake::start().await;
    fake.seed_project("proj_1", "Main");
    let wrong = format!("sk-admin-{}", "x".repeat(60));
    let client = OpenAi::new(&fake.base_url(), Secret::new(wrong.clone()), None)
        .expect("valid")
        .with_request_timeout(TIMEOUT);
    let mut actions = Actions::new();
    openai::register(&mut actions, Arc::new(client));
    let call = Call {
        action: "openai.list_keys".to_owned(),
        input: json!({"project_id": "proj_1"}),
        idempotency_key: "run_1/list/0".to_owned(),
        run_id: "run_1".to_owned(),
        step: "list".to_owned(),
        iteration: 0,
        attempt: 1,
    };
    let result = actions
        .get("openai.list_keys")
        .expect("registered")
        .call(&call)
        .await;
    let Err(ActionError::Permanent { message }) = result else {
        panic!("expected a permanent error, got {result:?}");
    };
    assert!(
        message.contains("(401): Incorrect API key provided"),
        "{message}"
    );
    assert!(message.contains("openai.admin_key"), "{message}");
    assert!(!message.contains(&"x".repeat(20)), "{message}");
    assert!(!format!("{actions:?}").contains(&"x".repeat(20)));

    // OpenAI's message quoting a whole key is redacted before it goes anywhere.
    let connector = seeded().await;
    let key = connector.fake.admin_key();
    connector.fake.fail_next(
        1,
        Fault::Status(401, format!("Incorrect API key provided: {key}.")),
    );
    let message = connector
        .permanent("openai.list_keys", json!({"project_id": "proj_1"}))
        .await;
    assert!(message.contains("sk-admin-[REDACTED]"), "{message}");
}

#[tokio::test]
async fn bad_input_is_permanent_and_says_where() {
    let connector = seeded().await;
    let message = connector
        .permanent("openai.revoke_key", json!({"project_id": "proj_1"}))
        .await;
    assert!(
        message.contains("invalid input for `openai.revoke_key`") && message.contains("key_id"),
        "{message}"
    );
    let message = connector
        .permanent(
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "gpt-4o", "max_requests_per_1_minute": "lots"}),
        )
        .await;
    assert!(message.contains("max_requests_per_1_minute"), "{message}");
    let message = connector
        .permanent(
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "gpt-4o"}),
        )
        .await;
    assert!(message.contains("at least one of"), "{message}");

    // Ids that would bend the URL path, and a secret where an id belongs.
    let message = connector
        .permanent(
            "openai.revoke_key",
            json!({"project_id": "proj_1", "key_id": ".."}),
        )
        .await;
    assert!(message.contains("not an OpenAI id"), "{message}");
    let message = connector
        .permanent(
            "openai.revoke_key",
            json!({"project_id": "proj_1/../../admin_api_keys", "key_id": "key_alice"}),
        )
        .await;
    assert!(message.contains("not an OpenAI id"), "{message}");
    let leaked = connector.fake.key_secret("key_alice").expect("seeded");
    let message = connector
        .permanent(
            "openai.revoke_key",
            json!({"project_id": "proj_1", "key_id": leaked}),
        )
        .await;
    assert!(message.contains("looks like a secret key"), "{message}");
    assert!(!message.contains(&leaked[12..40]), "{message}");

    for since in ["yesterday", "", "-5"] {
        let message = connector
            .permanent(
                "openai.audit_events",
                json!({"since": since, "event_types": ["api_key.created"]}),
            )
            .await;
        assert!(message.contains("RFC 3339"), "{message}");
    }
    let message = connector
        .permanent(
            "openai.usage",
            json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z", "group_by": ["model"]}),
        )
        .await;
    assert!(
        message.contains("`until` must be after `since`"),
        "{message}"
    );
    assert_eq!(connector.requests(), 0, "bad input never reaches OpenAI");
}

// ---- mutating actions ----

#[tokio::test]
async fn revoke_key_deletes_then_reports_already_done() {
    let connector = seeded().await;
    let input = json!({"project_id": "proj_1", "key_id": "key_alice"});
    let done = connector.ok("openai.revoke_key", input.clone()).await;
    assert_eq!(
        done,
        Success {
            output: json!({"id": "key_alice", "deleted": true, "already_done": false}),
            already_done: false,
        }
    );
    assert!(!connector.fake.key_exists("proj_1", "key_alice"));
    assert_eq!(
        connector
            .fake
            .calls_to(
                "DELETE",
                "/v1/organization/projects/proj_1/api_keys/key_alice"
            )
            .len(),
        1
    );

    let again = connector.ok("openai.revoke_key", input).await;
    assert!(again.already_done);
    assert_eq!(
        again.output,
        json!({"id": "key_alice", "deleted": true, "already_done": true})
    );

    // A 404 in a project that does not exist proves nothing: the key was not revoked.
    let message = connector
        .permanent(
            "openai.revoke_key",
            json!({"project_id": "proj_typo", "key_id": "key_bob"}),
        )
        .await;
    assert!(
        message.contains("nothing was deleted") && message.contains("project_id"),
        "{message}"
    );
    assert!(connector.fake.key_exists("proj_2", "key_bob"));
}

#[tokio::test]
async fn a_service_account_key_points_to_delete_service_account() {
    let connector = seeded().await;
    let message = connector
        .permanent(
            "openai.revoke_key",
            json!({"project_id": "proj_1", "key_id": "key_ci"}),
        )
        .await;
    assert!(
        message.contains("belongs to service account svc_acct_ci (CI)"),
        "{message}"
    );
    assert!(
        message.contains(
            "Use `openai.delete_service_account` with project_id proj_1 and service_account_id svc_acct_ci"
        ),
        "{message}"
    );
    assert!(
        message.contains("(400)"),
        "OpenAI's own refusal is kept: {message}"
    );
    assert!(connector.fake.key_exists("proj_1", "key_ci"));
    let get_key = connector
        .fake
        .calls_to("GET", "/v1/organization/projects/proj_1/api_keys/key_ci");
    assert_eq!(
        get_key.len(),
        1,
        "the owner is looked up once, after the 400"
    );

    // When the owner cannot be looked up, OpenAI's message is still turned into advice.
    let refusal = "API key key_ci belongs to a service account and cannot be deleted.";
    connector.fake.fail_next_on(
        "/organization/projects/proj_1/api_keys/key_ci",
        1,
        Fault::Status(400, refusal.to_owned()),
    );
    connector.fake.fail_next_on(
        "/organization/projects/proj_1/api_keys/key_ci",
        1,
        Fault::ServerError,
    );
    let message = connector
        .permanent(
            "openai.revoke_key",
            json!({"project_id": "proj_1", "key_id": "key_ci"}),
        )
        .await;
    assert!(
        message.contains("use `openai.delete_service_account` with its service_account_id"),
        "{message}"
    );
}

#[tokio::test]
async fn delete_admin_key_deletes_then_reports_already_done() {
    let connector = seeded().await;
    connector
        .fake
        .seed_admin_key("key_admin_2", "Old automation");
    let input = json!({"key_id": "key_admin_2"});
    let done = connector.ok("openai.delete_admin_key", input.clone()).await;
    assert_eq!(
        done.output,
        json!({"id": "key_admin_2", "deleted": true, "already_done": false})
    );
    assert!(!done.already_done);
    assert!(!connector.fake.admin_key_exists("key_admin_2"));

    let again = connector.ok("openai.delete_admin_key", input).await;
    assert!(again.already_done);
    assert_eq!(again.output["already_done"], true);
    assert_eq!(
        connector
            .fake
            .calls_to("GET", "/v1/organization/admin_api_keys")
            .len(),
        1,
        "a 404 is confirmed by listing admin keys (the base URL is right)"
    );
}

#[tokio::test]
async fn delete_service_account_takes_its_keys_then_reports_already_done() {
    let connector = seeded().await;
    let input = json!({"project_id": "proj_1", "service_account_id": "svc_acct_ci"});
    let done = connector
        .ok("openai.delete_service_account", input.clone())
        .await;
    assert_eq!(
        done.output,
        json!({"id": "svc_acct_ci", "deleted": true, "already_done": false})
    );
    assert!(
        !connector
            .fake
            .service_account_exists("proj_1", "svc_acct_ci")
    );
    assert!(!connector.fake.key_exists("proj_1", "key_ci"));
    let again = connector.ok("openai.delete_service_account", input).await;
    assert!(again.already_done);

    // An archived project refuses (400) with OpenAI's message.
    let message = connector
        .permanent(
            "openai.delete_service_account",
            json!({"project_id": "proj_old", "service_account_id": "svc_acct_x"}),
        )
        .await;
    assert!(
        message.contains("(400)") && message.contains("archived"),
        "{message}"
    );
}

#[tokio::test]
async fn set_project_user_role_reads_the_previous_role_first() {
    let connector = seeded().await;
    let input = json!({"project_id": "proj_1", "user_id": "user_alice", "role": "member"});
    let done = connector
        .ok("openai.set_project_user_role", input.clone())
        .await;
    assert!(!done.already_done);
    assert_eq!(
        done.output,
        json!({
            "id": "user_alice",
            "role": "member",
            "previous_role": "owner",
            "email": "alice@example.com",
            "name": "alice",
        })
    );
    assert_eq!(
        connector
            .fake
            .project_user("proj_1", "user_alice")
            .expect("still a member")["role"],
        "member"
    );
    let path = "/v1/organization/projects/proj_1/users/user_alice";
    let posts = connector.fake.calls_to("POST", path);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body, Some(json!({"role": "member"})));

    let again = connector.ok("openai.set_project_user_role", input).await;
    assert!(again.already_done);
    assert_eq!(again.output["previous_role"], "member");
    assert_eq!(
        connector.fake.calls_to("POST", path).len(),
        1,
        "no second change"
    );

    let message = connector
        .permanent(
            "openai.set_project_user_role",
            json!({"project_id": "proj_1", "user_id": "user_nobody", "role": "member"}),
        )
        .await;
    assert!(
        message.contains("OpenAI has no user user_nobody in project proj_1 (404"),
        "{message}"
    );
}

#[tokio::test]
async fn remove_project_user_removes_then_reports_already_done() {
    let connector = seeded().await;
    let input = json!({"project_id": "proj_1", "user_id": "user_bob"});
    let done = connector
        .ok("openai.remove_project_user", input.clone())
        .await;
    assert_eq!(
        done.output,
        json!({"id": "user_bob", "deleted": true, "already_done": false})
    );
    assert!(connector.fake.project_user("proj_1", "user_bob").is_none());
    assert!(
        connector.fake.project_user("proj_2", "user_bob").is_some(),
        "other projects keep the user"
    );
    let again = connector.ok("openai.remove_project_user", input).await;
    assert!(again.already_done);
}

#[tokio::test]
async fn limit_project_rate_only_lowers() {
    let connector = seeded().await;
    let done = connector
        .ok(
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "gpt-4o", "max_requests_per_1_minute": 60, "max_requests_per_1_day": 10_000}),
        )
        .await;
    assert!(!done.already_done);
    assert_eq!(
        done.output,
        json!({
            "id": "rl-gpt-4o",
            "project_id": "proj_1",
            "model": "gpt-4o",
            "previous": {
                "max_requests_per_1_minute": 500,
                "max_tokens_per_1_minute": 30_000,
                "max_requests_per_1_day": 10_000,
            },
            "limits": {
                "max_requests_per_1_minute": 60,
                "max_tokens_per_1_minute": 30_000,
                "max_requests_per_1_day": 10_000,
            },
        })
    );
    let posts = connector.fake.calls_to(
        "POST",
        "/v1/organization/projects/proj_1/rate_limits/rl-gpt-4o",
    );
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].body,
        Some(json!({"max_requests_per_1_minute": 60})),
        "only the values that change are sent"
    );

    // The same values again: nothing to do.
    let again = connector
        .ok(
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "gpt-4o", "max_requests_per_1_minute": 60}),
        )
        .await;
    assert!(again.already_done);
    assert_eq!(again.output["previous"]["max_requests_per_1_minute"], 60);

    // Raising is refused before anything is sent, even alongside a lowering.
    let message = connector
        .permanent(
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "gpt-4o", "max_requests_per_1_minute": 10, "max_tokens_per_1_minute": 90_000}),
        )
        .await;
    assert!(
        message.contains("refusing to raise `max_tokens_per_1_minute`")
            && message.contains("from 30000 to 90000"),
        "{message}"
    );
    assert_eq!(
        connector
            .fake
            .rate_limit("proj_1", "rl-gpt-4o")
            .expect("seeded")["max_requests_per_1_minute"],
        60
    );
    assert_eq!(
        connector
            .fake
            .calls()
            .iter()
            .filter(|c| c.method == "POST")
            .count(),
        1
    );

    let message = connector
        .permanent(
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "gpt-4o-mini", "max_images_per_1_minute": 1}),
        )
        .await;
    assert!(
        message.contains("has no `max_images_per_1_minute` limit"),
        "{message}"
    );
    let message = connector
        .permanent(
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "o3", "max_requests_per_1_minute": 1}),
        )
        .await;
    assert!(
        message.contains("no rate limit for model `o3`") && message.contains("gpt-4o, gpt-4o-mini"),
        "{message}"
    );
}

#[tokio::test]
async fn limit_project_rate_finds_the_model_across_pages() {
    let connector = seeded().await;
    for model in ["a", "b", "c", "d"] {
        connector
            .fake
            .seed_rate_limit("proj_1", RateLimitSeed::new(model, 100, 1000));
    }
    connector.fake.set_max_page_size(2);
    let done = connector
        .ok(
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "d", "max_tokens_per_1_minute": 10}),
        )
        .await;
    assert_eq!(done.output["id"], "rl-d");
    assert_eq!(done.output["limits"]["max_tokens_per_1_minute"], 10);
    let lists = connector
        .fake
        .calls_to("GET", "/v1/organization/projects/proj_1/rate_limits");
    assert_eq!(lists.len(), 3);
    assert_eq!(lists[0].query_value("limit"), Some("100"));
    assert_eq!(lists[1].query_value("after"), Some("rl-gpt-4o-mini"));
}

#[tokio::test]
async fn archive_project_archives_once() {
    let connector = seeded().await;
    let done = connector
        .ok("openai.archive_project", json!({"project_id": "proj_2"}))
        .await;
    assert!(!done.already_done);
    assert_eq!(
        done.output,
        json!({"id": "proj_2", "status": "archived", "archived_at": "2026-01-05T00:00:00Z"})
    );
    let again = connector
        .ok("openai.archive_project", json!({"project_id": "proj_2"}))
        .await;
    assert!(again.already_done);
    assert_eq!(again.output, done.output);
    assert_eq!(
        connector
            .fake
            .calls_to("POST", "/v1/organization/projects/proj_2/archive")
            .len(),
        1
    );
    let message = connector
        .permanent("openai.archive_project", json!({"project_id": "proj_gone"}))
        .await;
    assert!(
        message.contains("OpenAI has no project proj_gone (404 on GET"),
        "{message}"
    );
}

#[tokio::test]
async fn dry_run_describes_the_request_that_would_be_sent() {
    let connector = seeded().await;
    let expected = [
        json!({"method": "DELETE", "path": "/v1/organization/projects/proj_1/api_keys/key_alice", "body": null}),
        json!({"method": "DELETE", "path": "/v1/organization/admin_api_keys/key_admin_fake", "body": null}),
        json!({"method": "DELETE", "path": "/v1/organization/projects/proj_1/service_accounts/svc_acct_ci", "body": null}),
        json!({"method": "POST", "path": "/v1/organization/projects/proj_1/users/user_alice", "body": {"role": "member"}}),
        json!({"method": "DELETE", "path": "/v1/organization/projects/proj_1/users/user_bob", "body": null}),
        json!({
            "method": "POST",
            "path": "/v1/organization/projects/proj_1/rate_limits/{rate_limit_id}",
            "body": {"max_requests_per_1_minute": 60},
            "rate_limit_id": "the id of model `gpt-4o`'s limit, from GET /v1/organization/projects/proj_1/rate_limits",
        }),
        json!({"method": "POST", "path": "/v1/organization/projects/proj_2/archive", "body": null}),
    ];
    let mutating: Vec<_> = every_action().into_iter().take(expected.len()).collect();
    for ((action, input), expected) in mutating.into_iter().zip(expected) {
        assert_eq!(connector.describe(action, input), Ok(expected), "{action}");
    }
    // What live mode refuses before sending, a dry run refuses with the same error.
    for (input, wanted) in [
        (json!({"key_id": "key_1"}), "missing field `project_id`"),
        (
            json!({"project_id": "proj_1", "key_id": "key 1/../x"}),
            "`key_id` is not an OpenAI id",
        ),
        (
            json!({"project_id": "proj_1", "key_id": "sk-proj-abcdefghijklmnopqrstuvwxyz0123"}),
            "`key_id` looks like a secret key",
        ),
    ] {
        let refused = connector.describe("openai.revoke_key", input);
        assert!(
            matches!(&refused, Err(ActionError::Permanent { message }) if message.contains(wanted)),
            "{refused:?}"
        );
    }
    assert_eq!(connector.requests(), 0, "describing sends nothing");
}

// ---- reading actions ----

#[tokio::test]
async fn list_project_users_reads_every_page_and_filters_by_role() {
    let connector = seeded().await;
    for n in 0..3 {
        connector.fake.seed_user(
            "proj_1",
            &format!("user_owner{n}"),
            &format!("owner{n}@example.com"),
            Role::Owner,
        );
    }
    connector.fake.set_max_page_size(2);
    let owners = connector
        .ok(
            "openai.list_project_users",
            json!({"project_id": "proj_1", "role": "owner"}),
        )
        .await
        .output;
    let emails: Vec<&str> = owners["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|user| user["email"].as_str())
        .collect();
    assert_eq!(
        emails,
        [
            "alice@example.com",
            "owner0@example.com",
            "owner1@example.com",
            "owner2@example.com"
        ]
    );
    assert_eq!(owners["count"], 4);
    assert_eq!(owners["users"][0]["role"], "owner");
    let calls = connector
        .fake
        .calls_to("GET", "/v1/organization/projects/proj_1/users");
    assert_eq!(calls.len(), 3, "five people, two a page");
    let everyone = connector
        .ok("openai.list_project_users", json!({"project_id": "proj_1"}))
        .await
        .output;
    assert_eq!(everyone["count"], 5, "bob the member too");
}

#[tokio::test]
async fn list_keys_covers_every_active_project_across_pages() {
    let connector = seeded().await;
    for n in 0..5 {
        connector.fake.seed_key(
            "proj_2",
            "user_bob",
            KeySeed::new(&format!("key_more{n}")).last_used_at(1_767_000_000 + n),
        );
    }
    connector
        .fake
        .seed_key("proj_old", "user_bob", KeySeed::new("key_archived"));
    // Bob leaves proj_1 with a key there: listed anyway (owner_project_access=any).
    connector.fake.seed_key(
        "proj_1",
        "user_bob",
        KeySeed::new("key_left_behind").expires_at(1_770_000_000),
    );
    connector
        .ok(
            "openai.remove_project_user",
            json!({"project_id": "proj_1", "user_id": "user_bob"}),
        )
        .await;
    connector.fake.set_max_page_size(2);

    let listed = connector.ok("openai.list_keys", json!({})).await.output;
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| key["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [
            "key_alice",
            "key_ci",
            "key_left_behind",
            "key_bob",
            "key_more0",
            "key_more1",
            "key_more2",
            "key_more3",
            "key_more4"
        ]
    );
    assert_eq!(listed["count"], 9);
    let alice = &listed["keys"][0];
    let redacted = alice["redacted_value"].as_str().expect("redacted");
    assert!(redacted.starts_with("sk-proj-") && redacted.contains("..."));
    assert_eq!(
        alice,
        &json!({
            "project_id": "proj_1",
            "id": "key_alice",
            "name": "laptop",
            "redacted_value": redacted,
            "created_at": "2026-01-01T00:00:00Z",
            "last_used_at": "2026-01-04T04:13:20Z",
            "expires_at": null,
            "owner_project_access": "active",
            "owner": {"type": "user", "id": "user_alice", "name": "alice", "email": "alice@example.com", "role": "owner"},
        })
    );
    assert_eq!(
        listed["keys"][1]["owner"],
        json!({"type": "service_account", "id": "svc_acct_ci", "name": "CI", "email": null, "role": "member"})
    );
    assert_eq!(listed["keys"][1]["last_used_at"], Value::Null);
    assert_eq!(listed["keys"][2]["owner_project_access"], "inactive");
    assert_eq!(listed["keys"][2]["expires_at"], "2026-02-02T02:40:00Z");

    let key_lists: Vec<_> = connector
        .fake
        .calls()
        .into_iter()
        .filter(|call| call.path.ends_with("/api_keys"))
        .collect();
    assert!(key_lists.iter().all(|call| {
        call.query_value("owner_project_access") == Some("any")
            && call.query_value("limit") == Some("100")
    }));
    assert_eq!(
        key_lists.len(),
        2 + 3,
        "proj_1 in two pages, proj_2 in three"
    );
    assert!(
        !key_lists.iter().any(|call| call.path.contains("proj_old")),
        "archived projects are skipped"
    );

    let one = connector
        .ok("openai.list_keys", json!({"project_id": "proj_old"}))
        .await
        .output;
    assert_eq!(one["count"], 1);
    assert_eq!(one["keys"][0]["id"], "key_archived");
    assert_eq!(one["keys"][0]["project_id"], "proj_old");
}

#[tokio::test]
async fn audit_events_since_a_time_oldest_first_across_pages() {
    let connector = seeded().await;
    let fake = &connector.fake;
    fake.push_audit_event(AuditEvent::new(
        "api_key.created",
        NOW - 10_000,
        json!({"id": "key_too_old", "data": {"scopes": []}}),
    ));
    let mut expected = Vec::new();
    for n in 0..5 {
        expected.push(fake.push_audit_event(
            AuditEvent::new(
                "api_key.updated",
                NOW - 500 + n * 100,
                json!({"id": format!("key_{n}"), "changes_requested": {"scopes": ["api.model.request"]}}),
            )
            .project("proj_1"),
        ));
    }
    fake.push_audit_event(AuditEvent::new(
        "project.created",
        NOW - 50,
        json!({"id": "proj_x", "data": {"name": "x"}}),
    ));
    fake.push_audit_event(
        AuditEvent::new(
            "api_key.created",
            NOW - 40,
            json!({"id": "key_elsewhere", "data": {"scopes": []}}),
        )
        .project("proj_2"),
    );
    fake.set_max_page_size(2);

    let input = json!({
        "since": NOW - 1000,
        "event_types": ["api_key.created", "api_key.updated"],
        "project_ids": ["proj_1"],
    });
    let output = connector.ok("openai.audit_events", input).await.output;
    let ids: Vec<&str> = output["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(output["count"], 5);
    assert_eq!(output["last_id"], expected[4].as_str());
    assert_eq!(output["last_effective_at"], "2026-01-04T23:58:20Z");
    assert_eq!(output["events"][0]["effective_at"], "2026-01-04T23:51:40Z");
    assert_eq!(output["events"][0]["api_key.updated"]["id"], "key_0");

    let calls = connector.fake.calls();
    assert_eq!(calls.len(), 3, "five events, two a page");
    assert_eq!(
        calls[0].query_value("effective_at[gt]"),
        Some((NOW - 1000).to_string().as_str())
    );
    assert_eq!(
        calls[0].query_values("event_types[]"),
        ["api_key.created", "api_key.updated"]
    );
    assert_eq!(calls[0].query_values("project_ids[]"), ["proj_1"]);

    // An RFC 3339 `since`, nothing after it: an empty list and no last event.
    let empty = connector
        .ok(
            "openai.audit_events",
            json!({"since": "2026-01-05T00:00:00Z", "event_types": ["service_account.deleted"]}),
        )
        .await
        .output;
    assert_eq!(
        empty,
        json!({"count": 0, "events": [], "last_id": null, "last_effective_at": null})
    );

    let message = connector
        .permanent(
            "openai.audit_events",
            json!({"since": "0", "event_types": ["api_key.created", "tenant.user.added"]}),
        )
        .await;
    assert!(message.contains("cannot mix tenant-scoped"), "{message}");
}

#[tokio::test]
async fn usage_flattens_buckets_and_follows_next_page() {
    let connector = seeded().await;
    let fake = &connector.fake;
    let day = 86_400;
    let start = 1_767_225_600; // 2026-01-01
    fake.push_usage(
        UsageSeed::new(start + 10, "proj_1", "key_alice")
            .requests(3)
            .tokens(100, 50),
    );
    fake.push_usage(UsageSeed::new(start + 20, "proj_1", "key_ci").requests(7));
    fake.push_usage(
        UsageSeed::new(start + 3 * day + 5, "proj_2", "key_bob")
            .requests(40)
            .model("gpt-4o"),
    );
    fake.set_max_page_size(2);

    let output = connector
        .ok(
            "openai.usage",
            json!({"since": "2026-01-01T00:00:00Z", "until": start + 4 * day, "group_by": ["api_key_id", "model"]}),
        )
        .await
        .output;
    assert_eq!(
        output,
        json!({"buckets": [
            {
                "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-02T00:00:00Z",
                "api_key_id": "key_alice", "model": "gpt-4o-mini",
                "input_tokens": 100, "output_tokens": 50, "input_cached_tokens": 0,
                "input_audio_tokens": 0, "output_audio_tokens": 0, "num_model_requests": 3,
            },
            {
                "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-02T00:00:00Z",
                "api_key_id": "key_ci", "model": "gpt-4o-mini",
                "input_tokens": 0, "output_tokens": 0, "input_cached_tokens": 0,
                "input_audio_tokens": 0, "output_audio_tokens": 0, "num_model_requests": 7,
            },
            {
                "start_time": "2026-01-04T00:00:00Z", "end_time": "2026-01-05T00:00:00Z",
                "api_key_id": "key_bob", "model": "gpt-4o",
                "input_tokens": 0, "output_tokens": 0, "input_cached_tokens": 0,
                "input_audio_tokens": 0, "output_audio_tokens": 0, "num_model_requests": 40,
            },
        ]})
    );
    let calls = connector.fake.calls();
    assert_eq!(calls.len(), 2, "four daily buckets, two a page");
    assert_eq!(calls[0].query_value("bucket_width"), Some("1d"));
    assert_eq!(calls[0].query_value("limit"), Some("31"));
    assert_eq!(calls[0].query_value("start_time"), Some("1767225600"));
    assert_eq!(calls[0].query_value("end_time"), Some("1767571200"));
    assert_eq!(calls[0].query_values("group_by[]"), ["api_key_id", "model"]);
    assert!(calls[1].query_value("page").is_some());

    let hourly = connector
        .ok(
            "openai.usage",
            json!({"since": start, "until": "2026-01-01T02:00:00Z", "group_by": ["project_id"], "bucket": "1h"}),
        )
        .await
        .output;
    assert_eq!(hourly["buckets"][0]["project_id"], "proj_1");
    assert_eq!(hourly["buckets"][0]["num_model_requests"], 10);
    assert_eq!(hourly["buckets"][0]["end_time"], "2026-01-01T01:00:00Z");
    assert_eq!(hourly["buckets"].as_array().expect("rows").len(), 1);
}

#[tokio::test]
async fn a_cursor_that_repeats_stops_every_list_quickly() {
    let connector = seeded().await;
    for n in 3..=6 {
        connector.fake.seed_project(&format!("proj_{n}"), "p");
    }
    for model in ["a", "b", "c"] {
        connector
            .fake
            .seed_rate_limit("proj_1", RateLimitSeed::new(model, 100, 1000));
    }
    for n in 0..4 {
        connector.fake.push_audit_event(AuditEvent::new(
            "api_key.created",
            NOW - 100 + n,
            json!({"id": format!("key_{n}")}),
        ));
    }
    connector.fake.set_max_page_size(2);
    connector.fake.set_always_has_more_same_cursor(true);
    for (action, input) in [
        ("openai.list_keys", json!({})),
        ("openai.list_keys", json!({"project_id": "proj_1"})),
        (
            "openai.limit_project_rate",
            json!({"project_id": "proj_1", "model": "c", "max_requests_per_1_minute": 1}),
        ),
        (
            "openai.audit_events",
            json!({"since": "0", "event_types": ["api_key.created"]}),
        ),
        (
            "openai.usage",
            json!({"since": "2026-01-01T00:00:00Z", "until": "2026-01-05T00:00:00Z", "group_by": ["model"]}),
        ),
    ] {
        let before = connector.requests();
        let message = connector.permanent(action, input).await;
        assert!(
            message.contains("a second time") && message.contains("cannot loop"),
            "{action}: {message}"
        );
        assert_eq!(connector.requests() - before, 2, "{action}: stops at once");
    }
}

// ---- narrowing: a key's scopes and expiry, a project's models, tools and spend ----

/// The one request sent to `method path`, checked to be the only one there.
fn sent(connector: &Connector, method: &str, path: &str) -> Value {
    let calls = connector.fake.calls_to(method, path);
    assert_eq!(calls.len(), 1, "{method} {path}: {calls:?}");
    calls[0].body.clone().unwrap_or(Value::Null)
}

#[tokio::test]
async fn set_key_scopes_replaces_them_and_never_widens_unasked() {
    let connector = seeded().await;
    connector.fake.set_audit_mutations(true);
    let path = "/v1/organization/projects/proj_1/api_keys/key_alice";
    let done = connector
        .ok(
            "openai.set_key_scopes",
            json!({"project_id": "proj_1", "key_id": "key_alice", "scopes": ["api.model.request", "api.files.read"]}),
        )
        .await;
    assert_eq!(
        done,
        Success::new(json!({
            "id": "key_alice",
            "project_id": "proj_1",
            "scopes": ["api.model.request", "api.files.read"],
            "expires_at": null,
            "owner_project_access": "active",
        }))
    );
    // The update endpoint of the reference: POST, `scopes` an array of strings, nothing else.
    assert_eq!(
        sent(&connector, "POST", path),
        json!({"scopes": ["api.model.request", "api.files.read"]})
    );
    assert_eq!(
        connector.fake.key_scopes("proj_1", "key_alice"),
        Some(vec![
            "api.model.request".to_owned(),
            "api.files.read".to_owned()
        ])
    );
    let audit = connector.fake.audit_events();
    let updated = audit.last().expect("an audit event");
    assert_eq!(updated["type"], "api_key.updated");
    assert_eq!(
        updated["api_key.updated"]["changes_requested"]["scopes"],
        json!(["api.model.request", "api.files.read"])
    );

    // `[]` is every permission: refused before anything is sent, live and in a dry run.
    let everything = json!({"project_id": "proj_1", "key_id": "key_alice", "scopes": []});
    let message = connector
        .permanent("openai.set_key_scopes", everything.clone())
        .await;
    assert!(
        message.contains("removes every restriction") && message.contains("allow_widen: true"),
        "{message}"
    );
    let refused = connector.describe("openai.set_key_scopes", everything.clone());
    assert!(
        matches!(&refused, Err(ActionError::Permanent { message }) if message.contains("allow_widen")),
        "{refused:?}"
    );
    assert_eq!(connector.fake.calls_to("POST", path).len(), 1);
    let mut allowed = everything;
    allowed["allow_widen"] = json!(true);
    connector.ok("openai.set_key_scopes", allowed).await;
    assert_eq!(
        connector.fake.calls_to("POST", path)[1].body,
        Some(json!({"scopes": []}))
    );
    assert_eq!(
        connector.fake.key_scopes("proj_1", "key_alice"),
        Some(Vec::new()),
        "the API reads `[]` as no restrictions"
    );

    // Identifiers of the documented shape only, each once; no list of them is invented.
    let before = connector.requests();
    for (scopes, wanted) in [
        (json!(["models:read"]), "is not a scope identifier"),
        (json!(["api"]), "is not a scope identifier"),
        (json!(["API.Model.Request"]), "is not a scope identifier"),
        (json!(["api..read"]), "is not a scope identifier"),
        (json!([""]), "is not a scope identifier"),
        (
            json!(["api.model.request", "api.model.request"]),
            "listed twice",
        ),
        (json!("api.model.request"), "invalid input"),
    ] {
        let message = connector
            .permanent(
                "openai.set_key_scopes",
                json!({"project_id": "proj_1", "key_id": "key_alice", "scopes": scopes}),
            )
            .await;
        assert!(message.contains(wanted), "{scopes}: {message}");
    }
    assert_eq!(connector.requests(), before, "bad scopes are never sent");
    connector
        .ok(
            "openai.set_key_scopes",
            json!({"project_id": "proj_1", "key_id": "key_alice", "scopes": ["api.all.read", "api.organization.projects.api_keys.read", "api.fine_tuning.jobs-v2.write"]}),
        )
        .await;

    // A service account's key is updated the same way.
    connector
        .ok(
            "openai.set_key_scopes",
            json!({"project_id": "proj_1", "key_id": "key_ci", "scopes": ["api.responses.write"]}),
        )
        .await;
    assert_eq!(
        connector.fake.key_scopes("proj_1", "key_ci"),
        Some(vec!["api.responses.write".to_owned()])
    );
}

#[tokio::test]
async fn set_key_expiry_sends_whole_seconds_up_to_a_year() {
    let connector = seeded().await;
    let path = "/v1/organization/projects/proj_1/api_keys/key_alice";
    let done = connector
        .ok(
            "openai.set_key_expiry",
            json!({"project_id": "proj_1", "key_id": "key_alice", "expires_in": "14d"}),
        )
        .await;
    assert_eq!(
        done,
        Success::new(json!({
            "id": "key_alice",
            "project_id": "proj_1",
            "expires_at": "2026-01-19T00:00:00Z",
            "owner_project_access": "active",
        }))
    );
    let body = sent(&connector, "POST", path);
    assert_eq!(body, json!({"expires_in_seconds": 1_209_600}));
    assert!(
        body["expires_in_seconds"].is_u64(),
        "an integer, not a string"
    );
    assert_eq!(
        connector.fake.key("proj_1", "key_alice").expect("kept")["expires_at"],
        NOW + 1_209_600
    );
    connector
        .ok(
            "openai.set_key_expiry",
            json!({"project_id": "proj_1", "key_id": "key_alice", "expires_in": "365d"}),
        )
        .await;
    assert_eq!(
        connector.fake.calls_to("POST", path)[1].body,
        Some(json!({"expires_in_seconds": 31_536_000}))
    );

    let before = connector.requests();
    for (expires_in, wanted) in [
        ("366d", "longer than 365 days"),
        ("1y", "write `365d`"),
        ("1500ms", "whole number of seconds"),
        ("0s", "zero"),
        ("later", "not a duration"),
    ] {
        let input =
            json!({"project_id": "proj_1", "key_id": "key_alice", "expires_in": expires_in});
        let message = connector
            .permanent("openai.set_key_expiry", input.clone())
            .await;
        assert!(
            message.contains("`expires_in`") && message.contains(wanted),
            "{expires_in}: {message}"
        );
        assert_eq!(
            connector.describe("openai.set_key_expiry", input),
            Err(ActionError::Permanent { message }),
            "a dry run refuses it the same way"
        );
    }
    assert_eq!(connector.requests(), before, "a bad expiry is never sent");
}

#[tokio::test]
async fn an_expired_key_is_a_distinct_permanent_error() {
    let connector = seeded().await;
    // Expired an hour before the fake's clock, and long before the connector's.
    connector.fake.seed_key(
        "proj_1",
        "user_alice",
        KeySeed::new("key_old").expires_at(NOW - 3600),
    );
    let expired = |message: &str| {
        assert!(
            message.starts_with("key_expired: API key key_old in project proj_1 has expired"),
            "{message}"
        );
        assert!(
            message.contains("(400)"),
            "OpenAI's answer is kept: {message}"
        );
    };
    for (action, input) in [
        (
            "openai.set_key_expiry",
            json!({"project_id": "proj_1", "key_id": "key_old", "expires_in": "30d"}),
        ),
        (
            "openai.set_key_scopes",
            json!({"project_id": "proj_1", "key_id": "key_old", "scopes": ["api.model.request"]}),
        ),
    ] {
        let before = connector.requests();
        expired(&connector.permanent(action, input).await);
        // The update, then the key read to see its expiry.
        assert_eq!(connector.requests() - before, 2, "{action}");
    }
    assert_eq!(
        connector.fake.key("proj_1", "key_old").expect("kept")["expires_at"],
        NOW - 3600,
        "nothing changed"
    );
    assert_eq!(
        connector.fake.key_scopes("proj_1", "key_old"),
        Some(Vec::new())
    );

    // Recognised from the key too, when OpenAI's message does not say so; not for a key that
    // has not expired.
    for (key_id, expired_then) in [("key_old", true), ("key_alice", false)] {
        connector.fake.fail_next(
            1,
            Fault::Status(400, "This key cannot be modified.".to_owned()),
        );
        let message = connector
            .permanent(
                "openai.set_key_expiry",
                json!({"project_id": "proj_1", "key_id": key_id, "expires_in": "30d"}),
            )
            .await;
        assert!(
            message.contains("(400): This key cannot be modified."),
            "{message}"
        );
        if expired_then {
            expired(&message);
            assert!(message.contains("(at 2026-01-04T23:00:00Z)"), "{message}");
        } else {
            assert!(!message.contains("key_expired"), "{message}");
        }
    }
}

#[tokio::test]
async fn set_model_permissions_reads_first_and_only_narrows() {
    let connector = seeded().await;
    let path = "/v1/organization/projects/proj_1/model_permissions";
    let set = |mode: &str, models: &[&str]| json!({"project_id": "proj_1", "mode": mode, "model_ids": models});
    // Every model allowed (a deny list of none) → only two.
    let done = connector
        .ok(
            "openai.set_model_permissions",
            set("allow_list", &["gpt-4.1", "o3"]),
        )
        .await;
    assert_eq!(
        done,
        Success::new(json!({
            "project_id": "proj_1",
            "mode": "allow_list",
            "model_ids": ["gpt-4.1", "o3"],
            "previous": {"mode": "deny_list", "model_ids": []},
        }))
    );
    assert_eq!(connector.fake.calls_to("GET", path).len(), 1);
    assert_eq!(
        sent(&connector, "POST", path),
        json!({"mode": "allow_list", "model_ids": ["gpt-4.1", "o3"]})
    );
    // The same policy again, in another order: nothing sent.
    let again = connector
        .ok(
            "openai.set_model_permissions",
            set("allow_list", &["o3", "gpt-4.1"]),
        )
        .await;
    assert!(again.already_done);
    assert_eq!(connector.fake.calls_to("POST", path).len(), 1);

    // Widening in each way is refused, naming what it would allow, and nothing is sent.
    for (input, wanted) in [
        (
            set("allow_list", &["gpt-4.1", "gpt-4o"]),
            "allows `gpt-4o`, which the current allow list does not",
        ),
        (
            set("deny_list", &["o3"]),
            "a deny list allows every model it does not name",
        ),
    ] {
        let message = connector
            .permanent("openai.set_model_permissions", input)
            .await;
        assert!(
            message.contains(wanted) && message.contains("allow_widen: true"),
            "{message}"
        );
    }
    assert_eq!(connector.fake.calls_to("POST", path).len(), 1);
    // Narrower: fine.
    connector
        .ok("openai.set_model_permissions", set("allow_list", &["o3"]))
        .await;
    assert_eq!(
        connector.fake.model_permissions("proj_1").expect("seeded")["model_ids"],
        json!(["o3"])
    );

    // Deny lists: denying more narrows, denying less widens.
    connector
        .fake
        .seed_model_permissions("proj_2", "deny_list", &["o1"]);
    let deny =
        |models: &[&str]| json!({"project_id": "proj_2", "mode": "deny_list", "model_ids": models});
    connector
        .ok("openai.set_model_permissions", deny(&["o1", "o3"]))
        .await;
    let message = connector
        .permanent("openai.set_model_permissions", deny(&["o3"]))
        .await;
    assert!(
        message.contains("allows `o1`, which the current deny list blocks"),
        "{message}"
    );
    let message = connector
        .permanent(
            "openai.set_model_permissions",
            json!({"project_id": "proj_2", "mode": "allow_list", "model_ids": ["o3", "gpt-4o"]}),
        )
        .await;
    assert!(message.contains("allows `o3`"), "{message}");
    let mut widen = deny(&[]);
    widen["allow_widen"] = json!(true);
    connector.ok("openai.set_model_permissions", widen).await;
    assert_eq!(
        connector.fake.model_permissions("proj_2"),
        Some(json!({"object": "project.model_permissions", "mode": "deny_list", "model_ids": []}))
    );
}

#[tokio::test]
async fn set_hosted_tools_turns_off_only_what_changes() {
    let connector = seeded().await;
    let path = "/v1/organization/projects/proj_1/hosted_tool_permissions";
    let done = connector
        .ok(
            "openai.set_hosted_tools",
            json!({"project_id": "proj_1", "web_search": false, "mcp": false}),
        )
        .await;
    let all_on = json!({"file_search": true, "web_search": true, "image_generation": true, "mcp": true, "code_interpreter": true});
    assert_eq!(
        done,
        Success::new(json!({
            "project_id": "proj_1",
            "tools": {"file_search": true, "web_search": false, "image_generation": true, "mcp": false, "code_interpreter": true},
            "previous": all_on,
        }))
    );
    // The spec's update body: one `{enabled}` object per tool that changes.
    assert_eq!(
        sent(&connector, "POST", path),
        json!({"web_search": {"enabled": false}, "mcp": {"enabled": false}})
    );
    // `mcp` is off already: only `code_interpreter` is sent; then nothing at all.
    connector
        .ok(
            "openai.set_hosted_tools",
            json!({"project_id": "proj_1", "mcp": false, "code_interpreter": false}),
        )
        .await;
    assert_eq!(
        connector.fake.calls_to("POST", path)[1].body,
        Some(json!({"code_interpreter": {"enabled": false}}))
    );
    let again = connector
        .ok(
            "openai.set_hosted_tools",
            json!({"project_id": "proj_1", "mcp": false, "file_search": true}),
        )
        .await;
    assert!(again.already_done);
    assert_eq!(connector.fake.calls_to("POST", path).len(), 2);

    // Turning a tool on widens.
    let on = json!({"project_id": "proj_1", "web_search": true, "file_search": false});
    let message = connector
        .permanent("openai.set_hosted_tools", on.clone())
        .await;
    assert!(
        message.contains("it turns on `web_search` in project proj_1"),
        "{message}"
    );
    assert_eq!(connector.fake.calls_to("POST", path).len(), 2);
    let mut allowed = on;
    allowed["allow_widen"] = json!(true);
    connector.ok("openai.set_hosted_tools", allowed).await;
    assert_eq!(
        connector
            .fake
            .hosted_tool_permissions("proj_1")
            .expect("seeded"),
        json!({
            "file_search": {"enabled": false},
            "web_search": {"enabled": true},
            "image_generation": {"enabled": true},
            "mcp": {"enabled": false},
            "code_interpreter": {"enabled": false},
        })
    );

    let before = connector.requests();
    let message = connector
        .permanent("openai.set_hosted_tools", json!({"project_id": "proj_1"}))
        .await;
    assert!(
        message.contains("needs at least one of file_search"),
        "{message}"
    );
    assert_eq!(connector.requests(), before);
}

#[tokio::test]
async fn set_spend_limit_sets_or_lowers_in_cents() {
    let connector = seeded().await;
    let path = "/v1/organization/projects/proj_1/spend_limit";
    let limit = |cents: u64| json!({"project_id": "proj_1", "threshold_amount": cents});
    let done = connector.ok("openai.set_spend_limit", limit(10_000)).await;
    assert_eq!(
        done,
        Success::new(json!({
            "project_id": "proj_1",
            "threshold_amount": 10_000,
            "currency": "USD",
            "interval": "month",
            "enforcement": "enforcing",
            "previous": null,
        }))
    );
    // The spec's `UpdateProjectSpendLimitBody`: all three fields, the amount an integer.
    assert_eq!(
        sent(&connector, "POST", path),
        json!({"threshold_amount": 10_000, "currency": "USD", "interval": "month"})
    );
    let again = connector.ok("openai.set_spend_limit", limit(10_000)).await;
    assert!(again.already_done);
    assert_eq!(again.output["previous"], 10_000);
    let lower = connector.ok("openai.set_spend_limit", limit(2_500)).await;
    assert_eq!(lower.output["previous"], 10_000);
    assert_eq!(lower.output["threshold_amount"], 2_500);
    assert_eq!(connector.fake.calls_to("POST", path).len(), 2);

    let message = connector
        .permanent("openai.set_spend_limit", limit(50_000))
        .await;
    assert!(
        message.contains("raises the hard spend limit of project proj_1 from 2500 to 50000"),
        "{message}"
    );
    assert_eq!(connector.fake.calls_to("POST", path).len(), 2);
    let mut allowed = limit(50_000);
    allowed["allow_widen"] = json!(true);
    connector.ok("openai.set_spend_limit", allowed).await;
    assert_eq!(
        connector.fake.spend_limit("proj_1").expect("set")["threshold_amount"],
        50_000
    );

    // No limit and no project are told apart.
    let message = connector
        .permanent(
            "openai.set_spend_limit",
            json!({"project_id": "proj_nope", "threshold_amount": 100}),
        )
        .await;
    assert!(
        message.contains(
            "OpenAI has no project proj_nope (404 on GET /v1/organization/projects/proj_nope)"
        ),
        "{message}"
    );
    for bad in [json!(0), json!(-5), json!("100")] {
        let message = connector
            .permanent(
                "openai.set_spend_limit",
                json!({"project_id": "proj_1", "threshold_amount": bad}),
            )
            .await;
        assert!(message.contains("threshold_amount"), "{bad}: {message}");
    }
}

#[tokio::test]
async fn dry_run_describes_the_narrowing_requests() {
    let connector = seeded().await;
    let checks = |path: &str, what: &str| {
        format!(
            "GET {path} first: {what} already in place is already_done, and a change that \
             allows more is refused without allow_widen"
        )
    };
    let projects = "/v1/organization/projects/proj_1";
    for (action, input, expected) in [
        (
            "openai.set_key_scopes",
            json!({"project_id": "proj_1", "key_id": "key_alice", "scopes": ["api.model.request"]}),
            json!({"method": "POST", "path": format!("{projects}/api_keys/key_alice"), "body": {"scopes": ["api.model.request"]}}),
        ),
        (
            "openai.set_key_scopes",
            json!({"project_id": "proj_1", "key_id": "key_alice", "scopes": [], "allow_widen": true}),
            json!({"method": "POST", "path": format!("{projects}/api_keys/key_alice"), "body": {"scopes": []}}),
        ),
        (
            "openai.set_key_expiry",
            json!({"project_id": "proj_1", "key_id": "key_alice", "expires_in": "1h 30m"}),
            json!({"method": "POST", "path": format!("{projects}/api_keys/key_alice"), "body": {"expires_in_seconds": 5400}}),
        ),
        (
            "openai.set_model_permissions",
            json!({"project_id": "proj_1", "mode": "deny_list", "model_ids": ["o3"]}),
            json!({
                "method": "POST",
                "path": format!("{projects}/model_permissions"),
                "body": {"mode": "deny_list", "model_ids": ["o3"]},
                "checks": checks(&format!("{projects}/model_permissions"), "the same policy"),
            }),
        ),
        (
            "openai.set_hosted_tools",
            json!({"project_id": "proj_1", "image_generation": false, "mcp": true}),
            json!({
                "method": "POST",
                "path": format!("{projects}/hosted_tool_permissions"),
                "body": {"image_generation": {"enabled": false}, "mcp": {"enabled": true}},
                "checks": checks(&format!("{projects}/hosted_tool_permissions"), "a tool already so"),
            }),
        ),
        (
            "openai.set_spend_limit",
            json!({"project_id": "proj_1", "threshold_amount": 10_000}),
            json!({
                "method": "POST",
                "path": format!("{projects}/spend_limit"),
                "body": {"threshold_amount": 10_000, "currency": "USD", "interval": "month"},
                "checks": checks(&format!("{projects}/spend_limit"), "the same limit"),
            }),
        ),
    ] {
        assert_eq!(connector.describe(action, input), Ok(expected), "{action}");
    }
    for (action, input, wanted) in [
        (
            "openai.set_key_scopes",
            json!({"project_id": "proj_1", "key_id": "sk-proj-abcdefghijklmnopqrstuvwxyz0123", "scopes": ["api.model.request"]}),
            "`key_id` looks like a secret key",
        ),
        (
            "openai.set_hosted_tools",
            json!({"project_id": "proj_1"}),
            "needs at least one of",
        ),
        (
            "openai.set_spend_limit",
            json!({"project_id": "proj_1", "threshold_amount": 0}),
            "at least 1",
        ),
        (
            "openai.set_model_permissions",
            json!({"project_id": "proj_1", "mode": "block_list", "model_ids": []}),
            "unknown variant `block_list`",
        ),
    ] {
        let refused = connector.describe(action, input);
        assert!(
            matches!(&refused, Err(ActionError::Permanent { message }) if message.contains(wanted)),
            "{action}: {refused:?}"
        );
    }
    assert_eq!(connector.requests(), 0, "describing sends nothing");
}

/// A playbook branches on `key_expired`: the engine runs the real connector against the fake.
#[tokio::test]
async fn a_playbook_branches_on_an_expired_key() {
    use quench_runner::engine::StepStatus;

    let connector = seeded().await;
    connector.fake.seed_key(
        "proj_1",
        "user_alice",
        KeySeed::new("key_old").expires_at(NOW - 60),
    );
    let playbook = r#"
schema: quench.playbook/v1
name: time-box
mode: live
on:
  finding:
    kinds: [test.narrow]
steps:
  - id: expire
    uses: openai.set_key_expiry
    with:
      project_id: "{{ finding.resource.project_id }}"
      key_id: "{{ finding.resource.id }}"
      expires_in: 14d
    continue_on_error: true
  - id: gone
    if: steps.expire.status == "failed" and steps.expire.error is startingwith("key_expired")
    uses: note
    with:
      message: "{{ finding.resource.id }} had already expired"
  - id: boxed
    if: steps.expire.status == "succeeded"
    uses: note
    with:
      message: "{{ finding.resource.id }} expires at {{ steps.expire.output.expires_at }}"
"#;
    let client = connector.client.clone();
    let harness = crate::support::Harness::build(
        quench_runner::store::Store::temporary().expect("store"),
        &[playbook],
        crate::support::start_time(),
        Default::default(),
        move |actions| openai::register(actions, client),
        None,
        |_| {},
    )
    .await;
    let status = |run: &quench_runner::engine::Run, step: &str| run.steps[step].status;
    for (id, key_id, expired) in [("f1", "key_old", true), ("f2", "key_alice", false)] {
        let outcomes = harness
            .ingest(&[crate::support::finding(id, "test.narrow", key_id)])
            .await;
        let run = harness.run(&crate::support::started(&outcomes[0]));
        if expired {
            assert_eq!(status(&run, "expire"), StepStatus::Failed);
            assert!(
                run.steps["expire"]
                    .error
                    .as_deref()
                    .is_some_and(|error| error.starts_with("key_expired: ")),
                "{:?}",
                run.steps["expire"].error
            );
            assert_eq!(status(&run, "gone"), StepStatus::Succeeded);
            assert_eq!(status(&run, "boxed"), StepStatus::Skipped);
        } else {
            assert_eq!(status(&run, "expire"), StepStatus::Succeeded);
            assert_eq!(status(&run, "gone"), StepStatus::Skipped);
            assert_eq!(
                run.steps["boxed"].output["message"],
                "key_alice expires at 2026-01-19T00:00:00Z"
            );
        }
    }
    assert_eq!(
        connector.fake.key("proj_1", "key_old").expect("kept")["expires_at"],
        NOW - 60
    );
}
