//! Tests of the OpenAI fake, over real HTTP with `reqwest`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{AuditEvent, Fault, KeySeed, OpenAiFake, RateLimitSeed, Role, UsageSeed};

/// A reqwest client; reqwest is built without a default TLS crypto provider, so ring is
/// installed first (once per process; an earlier one is kept).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A response: status, `Retry-After` if any, JSON body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn send_as(
    fake: &OpenAiFake,
    auth: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let client = client();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
    let mut request = client.request(method, format!("{}{path}", fake.base_url()));
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the fake answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("ascii header").to_owned());
    let body = response.json().await.expect("a JSON body");
    Answer {
        status,
        retry_after,
        body,
    }
}

/// A request with the fake's admin key; `path` is relative to `/v1`.
async fn send(fake: &OpenAiFake, method: &str, path: &str, body: Option<Value>) -> Answer {
    let auth = format!("Bearer {}", fake.admin_key());
    send_as(fake, Some(&auth), method, path, body).await
}

async fn get(fake: &OpenAiFake, path: &str) -> Value {
    let answer = send(fake, "GET", path, None).await;
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    answer.body
}

/// Asserts an OpenAI `ErrorResponse` with this status; returns the `error` object.
fn assert_error(answer: &Answer, status: u16) -> Value {
    assert_eq!(answer.status, status, "{}", answer.body);
    let error = answer.body["error"].clone();
    for field in ["message", "type", "param", "code"] {
        assert!(
            error.get(field).is_some(),
            "error body lacks {field}: {}",
            answer.body
        );
    }
    assert!(error["message"].is_string() && error["type"].is_string());
    error
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Follows `after=last_id` while `has_more`; returns every id and the number of pages.
async fn walk(fake: &OpenAiFake, path: &str) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = match &after {
            Some(cursor) => format!("{path}{separator}after={cursor}"),
            None => path.to_owned(),
        };
        let page = get(fake, &url).await;
        pages += 1;
        assert_eq!(page["object"], "list");
        all.extend(ids(&page));
        if page["has_more"] != json!(true) {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
        assert!(pages < 50, "pagination does not end");
    }
    (all, pages)
}

/// One project with a user-owned key and a service account with its key.
async fn seeded() -> OpenAiFake {
    let fake = OpenAiFake::start().await;
    fake.set_now(1_767_600_000);
    fake.seed_project("proj_1", "Main");
    fake.seed_user("proj_1", "user_alice", "alice@example.com", Role::Owner);
    fake.seed_key(
        "proj_1",
        "user_alice",
        KeySeed::new("key_alice")
            .name("laptop")
            .last_used_at(1_767_500_000),
    );
    fake.seed_service_account("proj_1", "svc_acct_ci", "CI", KeySeed::new("key_ci"));
    fake
}

#[tokio::test]
async fn requests_without_the_admin_key_are_refused_like_openai() {
    let fake = seeded().await;
    assert!(fake.admin_key().starts_with("sk-admin-fake"));
    assert!(fake.base_url().starts_with("http://127.0.0.1:"));
    assert!(fake.base_url().ends_with("/v1"));

    let missing = send_as(&fake, None, "GET", "/organization/projects", None).await;
    let error = assert_error(&missing, 401);
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("didn't provide an API key")
    );

    let wrong = send_as(
        &fake,
        Some("Bearer sk-admin-wrong"),
        "GET",
        "/organization/projects",
        None,
    )
    .await;
    assert_eq!(assert_error(&wrong, 401)["code"], "invalid_api_key");

    // A project key is not an admin key.
    let secret = fake.key_secret("key_alice").expect("seeded");
    let project_key = send_as(
        &fake,
        Some(&format!("Bearer {secret}")),
        "GET",
        "/organization/projects",
        None,
    )
    .await;
    assert_error(&project_key, 401);

    let unknown = send(&fake, "GET", "/organization/nothing_here", None).await;
    assert_error(&unknown, 404);
    assert_eq!(fake.calls().len(), 4, "every request is recorded");
    assert_eq!(
        fake.calls()[1].authorization.as_deref(),
        Some("Bearer sk-admin-wrong")
    );
}

#[tokio::test]
async fn a_given_admin_key_is_the_only_one_accepted() {
    let secret = "sk-admin-given0123456789abcdef";
    let fake = OpenAiFake::serve(Some(secret)).await.expect("serves");
    assert_eq!(fake.admin_key(), secret);
    assert_eq!(
        send(&fake, "GET", "/organization/projects", None)
            .await
            .status,
        200
    );
    let made_up = OpenAiFake::start().await.admin_key();
    let refused = send_as(
        &fake,
        Some(&format!("Bearer {made_up}")),
        "GET",
        "/organization/projects",
        None,
    )
    .await;
    assert_eq!(assert_error(&refused, 401)["code"], "invalid_api_key");
    let listed = get(&fake, "/organization/admin_api_keys").await;
    assert_eq!(listed["data"][0]["id"], fake.admin_key_id());
    assert_eq!(listed["data"][0]["redacted_value"], "sk-admin...cdef");
}

#[tokio::test]
async fn projects_page_across_several_pages_and_archive() {
    let fake = OpenAiFake::start().await;
    for n in 1..=5 {
        fake.seed_project(&format!("proj_{n}"), &format!("Project {n}"));
    }
    fake.seed_archived_project("proj_old", "Old");
    fake.set_default_page_size(2);

    let (active, pages) = walk(&fake, "/organization/projects").await;
    assert_eq!(active, ["proj_1", "proj_2", "proj_3", "proj_4", "proj_5"]);
    assert_eq!(pages, 3);
    let (everything, _) = walk(&fake, "/organization/projects?include_archived=true").await;
    assert_eq!(everything.len(), 6);

    let page = get(&fake, "/organization/projects?limit=100").await;
    assert_eq!(page["has_more"], false);
    assert_eq!(page["first_id"], "proj_1");
    assert_eq!(page["last_id"], "proj_5");
    assert_eq!(page["data"][0]["object"], "organization.project");
    assert_eq!(page["data"][0]["status"], "active");
    assert_eq!(page["data"][0]["archived_at"], Value::Null);

    assert_error(
        &send(&fake, "GET", "/organization/projects?limit=0", None).await,
        400,
    );
    assert_error(
        &send(&fake, "GET", "/organization/projects?limit=101", None).await,
        400,
    );
    assert_error(
        &send(
            &fake,
            "GET",
            "/organization/projects?include_archived=yes",
            None,
        )
        .await,
        400,
    );
    assert_error(
        &send(&fake, "GET", "/organization/projects?after=proj_nope", None).await,
        400,
    );

    fake.set_now(1_767_700_000);
    let archived = send(&fake, "POST", "/organization/projects/proj_2/archive", None).await;
    assert_eq!(archived.status, 200);
    assert_eq!(archived.body["status"], "archived");
    assert_eq!(archived.body["archived_at"], 1_767_700_000);
    assert_eq!(
        fake.project("proj_2").expect("exists")["status"],
        "archived"
    );
    assert_eq!(
        get(&fake, "/organization/projects/proj_2").await["status"],
        "archived"
    );
    let (active, _) = walk(&fake, "/organization/projects").await;
    assert!(!active.contains(&"proj_2".to_owned()));
    assert_error(
        &send(&fake, "GET", "/organization/projects/proj_x", None).await,
        404,
    );
    assert_error(
        &send(&fake, "POST", "/organization/projects/proj_x/archive", None).await,
        404,
    );
    let events = fake.audit_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "project.archived");
    assert_eq!(events[0]["project.archived"]["id"], "proj_2");
}

#[tokio::test]
async fn project_keys_have_the_spec_shape_and_page() {
    let fake = seeded().await;
    let page = get(&fake, "/organization/projects/proj_1/api_keys").await;
    assert_eq!(page["object"], "list");
    assert_eq!(ids(&page), ["key_alice", "key_ci"]);
    let alice = &page["data"][0];
    assert_eq!(alice["object"], "organization.project.api_key");
    assert_eq!(alice["name"], "laptop");
    assert_eq!(alice["last_used_at"], 1_767_500_000);
    assert_eq!(alice["expires_at"], Value::Null, "seeded without an expiry");
    assert_eq!(alice["owner_project_access"], "active");
    assert_eq!(alice["owner"]["type"], "user");
    assert_eq!(alice["owner"]["user"]["email"], "alice@example.com");
    assert_eq!(alice["owner"]["user"]["role"], "owner");
    let redacted = alice["redacted_value"].as_str().expect("redacted");
    let secret = fake.key_secret("key_alice").expect("secret");
    assert!(secret.starts_with("sk-proj-") && secret.contains("T3BlbkFJ"));
    let (head, tail) = redacted.split_once("...").expect("prefix...suffix");
    assert!(secret.starts_with(head) && secret.ends_with(tail));
    let ci = &page["data"][1];
    assert_eq!(ci["owner"]["type"], "service_account");
    assert_eq!(ci["owner"]["service_account"]["id"], "svc_acct_ci");
    assert_eq!(ci["owner"]["service_account"]["name"], "CI");
    assert!(ci["owner"].get("user").is_none());

    let one = get(&fake, "/organization/projects/proj_1/api_keys/key_alice").await;
    assert_eq!(&one, alice);
    assert_error(
        &send(
            &fake,
            "GET",
            "/organization/projects/proj_1/api_keys/key_nope",
            None,
        )
        .await,
        404,
    );

    fake.seed_key(
        "proj_1",
        "user_alice",
        KeySeed::new("key_expiring").expires_at(1_770_000_000),
    );
    let expiring = get(&fake, "/organization/projects/proj_1/api_keys/key_expiring").await;
    assert_eq!(expiring["expires_at"], 1_770_000_000);
    for n in 0..4 {
        fake.seed_key(
            "proj_1",
            "user_alice",
            KeySeed::new(&format!("key_extra{n}")),
        );
    }
    let (all, pages) = walk(&fake, "/organization/projects/proj_1/api_keys?limit=3").await;
    assert_eq!(all.len(), 7);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn deleting_keys_follows_the_spec() {
    let fake = seeded().await;
    let path = "/organization/projects/proj_1/api_keys";

    let refused = send(&fake, "DELETE", &format!("{path}/key_ci"), None).await;
    let error = assert_error(&refused, 400);
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "api_key_id");
    assert!(fake.key_exists("proj_1", "key_ci"));

    let done = send(&fake, "DELETE", &format!("{path}/key_alice"), None).await;
    assert_eq!(done.status, 200);
    assert_eq!(
        done.body,
        json!({"object": "organization.project.api_key.deleted", "id": "key_alice", "deleted": true})
    );
    assert!(!fake.key_exists("proj_1", "key_alice"));
    let again = send(&fake, "DELETE", &format!("{path}/key_alice"), None).await;
    assert_error(&again, 404);
    assert_error(
        &send(
            &fake,
            "DELETE",
            "/organization/projects/proj_x/api_keys/key_ci",
            None,
        )
        .await,
        404,
    );

    let audit = fake.audit_events();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["type"], "api_key.deleted");
    assert_eq!(audit[0]["api_key.deleted"]["id"], "key_alice");
    assert_eq!(audit[0]["actor"]["type"], "api_key");
    assert_eq!(
        fake.calls_to("DELETE", &format!("/v1{path}/key_alice"))
            .len(),
        2
    );
}

#[tokio::test]
async fn a_waiter_learns_when_a_request_arrived() {
    let fake = seeded().await;
    let path = "/v1/organization/projects/proj_1/api_keys/key_alice";
    let waiting = fake.received("DELETE", path);
    tokio::pin!(waiting);
    // A request to another path, or with another method, does not end the wait.
    send(
        &fake,
        "GET",
        "/organization/projects/proj_1/api_keys/key_alice",
        None,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
            .await
            .is_err(),
        "a GET is not the DELETE waited for"
    );
    let before = Instant::now();
    let deleted = send(
        &fake,
        "DELETE",
        "/organization/projects/proj_1/api_keys/key_alice",
        None,
    )
    .await;
    let answered = Instant::now();
    assert_eq!(deleted.status, 200);
    let call = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the wait ends once the DELETE arrived");
    assert_eq!((call.method.as_str(), call.path.as_str()), ("DELETE", path));
    assert!(
        before <= call.received_at && call.received_at <= answered,
        "the arrival instant lies between sending and the answer"
    );
    // A request that came already is returned at once, the first of its kind.
    send(
        &fake,
        "DELETE",
        "/organization/projects/proj_1/api_keys/key_alice",
        None,
    )
    .await;
    let again = tokio::time::timeout(Duration::from_secs(1), fake.received("DELETE", path))
        .await
        .expect("at once");
    assert_eq!(again.received_at, call.received_at);
}

#[tokio::test]
async fn service_accounts_list_create_and_delete_with_their_keys() {
    let fake = seeded().await;
    let path = "/organization/projects/proj_1/service_accounts";
    let page = get(&fake, path).await;
    assert_eq!(ids(&page), ["svc_acct_ci"]);
    assert_eq!(
        page["data"][0]["object"],
        "organization.project.service_account"
    );
    assert_eq!(page["data"][0]["role"], "member");

    let created = send(&fake, "POST", path, Some(json!({"name": "Deploy"}))).await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.body["role"], "member");
    let key = &created.body["api_key"];
    assert_eq!(
        key["object"],
        "organization.project.service_account.api_key"
    );
    assert!(
        key["value"]
            .as_str()
            .expect("value")
            .starts_with("sk-svcacct-")
    );
    let new_sa = created.body["id"].as_str().expect("id").to_owned();
    let new_key = key["id"].as_str().expect("key id").to_owned();
    assert!(fake.key_exists("proj_1", &new_key));
    assert_eq!(
        fake.calls().last().expect("call").body,
        Some(json!({"name": "Deploy"}))
    );

    let bare = send(
        &fake,
        "POST",
        path,
        Some(json!({"name": "Bare", "create_service_account_only": true})),
    )
    .await;
    assert_eq!(bare.body["role"], "none");
    assert_eq!(bare.body["api_key"], Value::Null);
    assert_error(&send(&fake, "POST", path, Some(json!({}))).await, 400);
    assert_error(
        &send(&fake, "POST", path, Some(json!({"name": 7}))).await,
        400,
    );

    let gone = send(&fake, "DELETE", &format!("{path}/{new_sa}"), None).await;
    assert_eq!(
        gone.body,
        json!({"object": "organization.project.service_account.deleted", "id": new_sa, "deleted": true})
    );
    assert!(!fake.service_account_exists("proj_1", &new_sa));
    assert!(!fake.key_exists("proj_1", &new_key), "its key went with it");
    assert!(fake.key_exists("proj_1", "key_ci"));
    assert_error(
        &send(&fake, "DELETE", &format!("{path}/{new_sa}"), None).await,
        404,
    );
    assert_error(
        &send(&fake, "GET", &format!("{path}/{new_sa}"), None).await,
        404,
    );
    assert_eq!(
        get(&fake, &format!("{path}/svc_acct_ci")).await["name"],
        "CI"
    );

    fake.seed_archived_project("proj_old", "Old");
    let archived = "/organization/projects/proj_old/service_accounts";
    assert_error(&send(&fake, "GET", archived, None).await, 400);
    assert_error(
        &send(&fake, "POST", archived, Some(json!({"name": "x"}))).await,
        400,
    );
}

#[tokio::test]
async fn service_account_keys_are_minted_with_scopes_and_an_expiry() {
    let fake = seeded().await;
    let path = "/organization/projects/proj_1/service_accounts/svc_acct_ci/api_keys";
    let minted = send(
        &fake,
        "POST",
        path,
        Some(
            json!({"name": "rotated", "scopes": ["api.model.request"], "expires_in_seconds": 3600}),
        ),
    )
    .await;
    assert_eq!(minted.status, 200, "{}", minted.body);
    assert_eq!(
        minted.body["object"],
        "organization.project.service_account.api_key"
    );
    assert_eq!(minted.body["name"], "rotated");
    assert_eq!(minted.body["expires_at"], 1_767_600_000 + 3600);
    assert!(
        minted.body["value"]
            .as_str()
            .expect("the secret, once")
            .starts_with("sk-svcacct-")
    );
    let id = minted.body["id"].as_str().expect("id").to_owned();
    let listed = get(
        &fake,
        &format!("/organization/projects/proj_1/api_keys/{id}"),
    )
    .await;
    assert_eq!(listed["expires_at"], 1_767_600_000 + 3600);
    assert_eq!(listed["owner"]["service_account"]["id"], "svc_acct_ci");
    assert_eq!(
        fake.key_scopes("proj_1", &id),
        Some(vec!["api.model.request".to_owned()])
    );
    let audit = fake.audit_events();
    let created = audit.last().expect("an audit event");
    assert_eq!(created["type"], "api_key.created");
    assert_eq!(
        created["api_key.created"]["data"]["scopes"],
        json!(["api.model.request"])
    );

    let forever = send(
        &fake,
        "POST",
        path,
        Some(json!({"expires_in_seconds": null})),
    )
    .await;
    assert_eq!(forever.status, 200, "{}", forever.body);
    assert_eq!(forever.body["expires_at"], Value::Null);
    assert_eq!(forever.body["name"], "Secret key");
    for bad in [json!(0), json!(31_536_001), json!("3600"), json!(1.5)] {
        let refused = send(
            &fake,
            "POST",
            path,
            Some(json!({"expires_in_seconds": bad})),
        )
        .await;
        assert_eq!(
            assert_error(&refused, 400)["param"],
            "expires_in_seconds",
            "{bad}"
        );
    }
    assert_error(
        &send(
            &fake,
            "POST",
            "/organization/projects/proj_1/service_accounts/svc_nope/api_keys",
            Some(json!({})),
        )
        .await,
        404,
    );
}

#[tokio::test]
async fn project_users_change_role_and_leave() {
    let fake = seeded().await;
    fake.seed_user("proj_1", "user_bob", "bob@example.com", Role::Member);
    let path = "/organization/projects/proj_1/users";
    let page = get(&fake, path).await;
    assert_eq!(ids(&page), ["user_alice", "user_bob"]);
    assert_eq!(page["data"][1]["object"], "organization.project.user");
    assert_eq!(page["data"][1]["email"], "bob@example.com");
    assert_eq!(page["data"][1]["role"], "member");

    let promoted = send(
        &fake,
        "POST",
        &format!("{path}/user_bob"),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(promoted.status, 200);
    assert_eq!(promoted.body["role"], "owner");
    assert_eq!(
        fake.project_user("proj_1", "user_bob").expect("member")["role"],
        "owner"
    );
    assert_error(
        &send(
            &fake,
            "POST",
            &format!("{path}/user_bob"),
            Some(json!({"role": "admin"})),
        )
        .await,
        400,
    );
    assert_error(
        &send(&fake, "POST", &format!("{path}/user_bob"), Some(json!({}))).await,
        400,
    );
    assert_error(
        &send(
            &fake,
            "POST",
            &format!("{path}/user_nope"),
            Some(json!({"role": "member"})),
        )
        .await,
        404,
    );

    // Alice leaves: her key stays enabled, but only `any`/`inactive` lists show it.
    let left = send(&fake, "DELETE", &format!("{path}/user_alice"), None).await;
    assert_eq!(
        left.body,
        json!({"object": "organization.project.user.deleted", "id": "user_alice", "deleted": true})
    );
    assert!(fake.project_user("proj_1", "user_alice").is_none());
    let keys = "/organization/projects/proj_1/api_keys";
    assert_eq!(ids(&get(&fake, keys).await), ["key_ci"]);
    let any = get(&fake, &format!("{keys}?owner_project_access=any")).await;
    assert_eq!(ids(&any), ["key_alice", "key_ci"]);
    assert_eq!(any["data"][0]["owner_project_access"], "inactive");
    let inactive = get(&fake, &format!("{keys}?owner_project_access=inactive")).await;
    assert_eq!(ids(&inactive), ["key_alice"]);
    assert_error(
        &send(
            &fake,
            "GET",
            &format!("{keys}?owner_project_access=all"),
            None,
        )
        .await,
        400,
    );

    // She can be added back by e-mail.
    let back = send(
        &fake,
        "POST",
        path,
        Some(json!({"email": "alice@example.com", "role": "member"})),
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(back.body["id"], "user_alice");
    assert_error(
        &send(
            &fake,
            "POST",
            path,
            Some(json!({"user_id": "user_stranger", "role": "member"})),
        )
        .await,
        400,
    );

    let types: Vec<Value> = fake
        .audit_events()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, ["user.updated", "user.deleted", "user.added"]);
    assert_eq!(
        fake.audit_events()[0]["user.updated"]["changes_requested"]["role"],
        "owner"
    );

    fake.seed_archived_project("proj_old", "Old");
    assert_error(
        &send(&fake, "GET", "/organization/projects/proj_old/users", None).await,
        400,
    );
}

#[tokio::test]
async fn rate_limits_list_and_validate_changes() {
    let fake = seeded().await;
    let id = fake.seed_rate_limit(
        "proj_1",
        RateLimitSeed::new("gpt-4o", 500, 30_000).with("max_requests_per_1_day", 10_000),
    );
    assert_eq!(id, "rl-gpt-4o");
    fake.seed_rate_limit(
        "proj_1",
        RateLimitSeed::new("dall-e-3", 50, 1_000).with("max_images_per_1_minute", 5),
    );
    let path = "/organization/projects/proj_1/rate_limits";
    let page = get(&fake, path).await;
    assert_eq!(ids(&page), ["rl-gpt-4o", "rl-dall-e-3"]);
    assert_eq!(
        page["data"][0],
        json!({"object": "project.rate_limit", "id": "rl-gpt-4o", "model": "gpt-4o",
               "max_requests_per_1_minute": 500, "max_tokens_per_1_minute": 30_000,
               "max_requests_per_1_day": 10_000})
    );
    let second = get(&fake, &format!("{path}?limit=1&after=rl-gpt-4o")).await;
    assert_eq!(ids(&second), ["rl-dall-e-3"]);
    let first = get(&fake, &format!("{path}?limit=1&before=rl-dall-e-3")).await;
    assert_eq!(ids(&first), ["rl-gpt-4o"]);

    let lowered = send(
        &fake,
        "POST",
        &format!("{path}/rl-gpt-4o"),
        Some(json!({"max_requests_per_1_minute": 1, "max_tokens_per_1_minute": 100})),
    )
    .await;
    assert_eq!(lowered.status, 200, "{}", lowered.body);
    assert_eq!(lowered.body["max_requests_per_1_minute"], 1);
    assert_eq!(
        fake.rate_limit("proj_1", "rl-gpt-4o").expect("exists")["max_tokens_per_1_minute"],
        100
    );
    let event = &fake.audit_events()[0];
    assert_eq!(event["type"], "rate_limit.updated");
    assert_eq!(
        event["rate_limit.updated"]["changes_requested"]["max_requests_per_1_minute"],
        1
    );

    for bad in [
        json!({}),
        json!({"max_requests_per_1_minute": "10"}),
        json!({"max_requests_per_1_minute": 1.5}),
        json!({"max_requests_per_1_minute": 0}),
        json!({"max_requests_per_1_minute": -5}),
        json!({"max_requests_per_1_hour": 10}),
        json!({"max_images_per_1_minute": 10}),
    ] {
        let answer = send(
            &fake,
            "POST",
            &format!("{path}/rl-gpt-4o"),
            Some(bad.clone()),
        )
        .await;
        assert_error(&answer, 400);
    }
    assert_error(
        &send(
            &fake,
            "POST",
            &format!("{path}/rl-nope"),
            Some(json!({"max_requests_per_1_minute": 1})),
        )
        .await,
        404,
    );
    let missing = send(
        &fake,
        "GET",
        "/organization/projects/proj_x/rate_limits",
        None,
    )
    .await;
    assert!(
        assert_error(&missing, 404)["message"]
            .as_str()
            .expect("message")
            .contains("The project proj_x was not found")
    );
}

#[tokio::test]
async fn admin_keys_list_in_both_orders_and_delete() {
    let fake = OpenAiFake::start().await;
    let other = fake.seed_admin_key("key_admin_2", "Second");
    assert!(other.starts_with("sk-admin-"));
    let path = "/organization/admin_api_keys";
    let asc = get(&fake, path).await;
    assert_eq!(ids(&asc), [fake.admin_key_id(), "key_admin_2".to_owned()]);
    assert_eq!(asc["data"][0]["object"], "organization.admin_api_key");
    assert!(
        asc["data"][0]["redacted_value"]
            .as_str()
            .expect("redacted")
            .starts_with("sk-admin")
    );
    assert_eq!(asc["data"][0]["owner"]["type"], "user");
    let desc = get(&fake, &format!("{path}?order=desc&limit=1")).await;
    assert_eq!(ids(&desc), ["key_admin_2"]);
    assert_eq!(desc["has_more"], true);
    assert_error(
        &send(&fake, "GET", &format!("{path}?order=newest"), None).await,
        400,
    );

    let gone = send(&fake, "DELETE", &format!("{path}/key_admin_2"), None).await;
    assert_eq!(
        gone.body,
        json!({"id": "key_admin_2", "object": "organization.admin_api_key.deleted", "deleted": true})
    );
    assert!(!fake.admin_key_exists("key_admin_2"));
    assert_error(
        &send(&fake, "DELETE", &format!("{path}/key_admin_2"), None).await,
        404,
    );
    // A deleted admin key no longer authenticates.
    let with_deleted = send_as(&fake, Some(&format!("Bearer {other}")), "GET", path, None).await;
    assert_error(&with_deleted, 401);
}

#[tokio::test]
async fn audit_logs_filter_and_page_newest_first() {
    let fake = seeded().await;
    fake.seed_project("proj_2", "Other");
    fake.set_default_page_size(2);
    let created = fake.push_audit_event(
        AuditEvent::new(
            "api_key.created",
            100,
            json!({"id": "key_a", "data": {"scopes": ["api.model.request"]}}),
        )
        .project("proj_1"),
    );
    fake.push_audit_event(
        AuditEvent::new(
            "api_key.updated",
            200,
            json!({"id": "key_a", "changes_requested": {"scopes": []}}),
        )
        .project("proj_1"),
    );
    fake.push_audit_event(
        AuditEvent::new(
            "project.updated",
            300,
            json!({"id": "proj_2", "changes_requested": {"title": "x"}}),
        )
        .project("proj_2"),
    );
    fake.push_audit_event(
        AuditEvent::new("service_account.created", 400, json!({"id": "svc_1", "data": {"role": "member"}}))
            .project("proj_1")
            .actor(json!({"type": "api_key", "api_key": {"id": "key_tracking", "type": "service_account", "service_account": {"id": "svc_0"}}})),
    );
    fake.push_audit_event(AuditEvent::new(
        "tenant.admin_api_key.deleted",
        500,
        json!({"id": "key_t"}),
    ));

    let path = "/organization/audit_logs";
    let page = get(&fake, path).await;
    assert_eq!(page["data"][0]["type"], "service_account.created");
    assert_eq!(page["data"][0]["effective_at"], 400);
    assert_eq!(
        page["data"][0]["project"],
        json!({"id": "proj_1", "name": "Main"})
    );
    assert_eq!(page["data"][1]["type"], "project.updated");
    assert_eq!(page["has_more"], true);
    let (all, pages) = walk(&fake, path).await;
    assert_eq!(all.len(), 4, "tenant events need tenant_only=true");
    assert_eq!(pages, 2);
    assert_eq!(all.last(), Some(&created));

    let since = get(
        &fake,
        &format!("{path}?effective_at[gt]=100&effective_at[lte]=300"),
    )
    .await;
    let types: Vec<&Value> = since["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| &e["type"])
        .collect();
    assert_eq!(
        types,
        [&json!("project.updated"), &json!("api_key.updated")]
    );
    let encoded = get(&fake, &format!("{path}?effective_at%5Bgte%5D=400")).await;
    assert_eq!(ids(&encoded).len(), 1);

    let keys = get(
        &fake,
        &format!("{path}?event_types[]=api_key.created&event_types[]=api_key.updated&limit=10"),
    )
    .await;
    assert_eq!(ids(&keys).len(), 2);
    let projects = get(&fake, &format!("{path}?project_ids[]=proj_2")).await;
    assert_eq!(ids(&projects).len(), 1);
    let by_actor = get(&fake, &format!("{path}?actor_ids[]=svc_0")).await;
    assert_eq!(ids(&by_actor).len(), 1);
    let by_resource = get(&fake, &format!("{path}?resource_ids[]=key_a&limit=10")).await;
    assert_eq!(ids(&by_resource).len(), 2);
    let tenant = get(&fake, &format!("{path}?tenant_only=true")).await;
    assert_eq!(tenant["data"][0]["type"], "tenant.admin_api_key.deleted");

    let newer = get(&fake, &format!("{path}?before={created}&limit=1")).await;
    assert_eq!(newer["data"][0]["type"], "api_key.updated");

    assert_error(
        &send(
            &fake,
            "GET",
            &format!("{path}?event_types[]=key.leaked"),
            None,
        )
        .await,
        400,
    );
    assert_error(
        &send(
            &fake,
            "GET",
            &format!("{path}?event_types[]=tenant.admin_api_key.deleted"),
            None,
        )
        .await,
        400,
    );
    assert_error(
        &send(
            &fake,
            "GET",
            &format!("{path}?effective_at[gt]=yesterday"),
            None,
        )
        .await,
        400,
    );
    assert_error(
        &send(&fake, "GET", &format!("{path}?limit=1000"), None).await,
        400,
    );
}

#[tokio::test]
async fn completions_usage_buckets_group_and_page() {
    let fake = seeded().await;
    let day = 86_400;
    let start = 1_767_225_600; // 2026-01-01
    fake.push_usage(
        UsageSeed::new(start + 10, "proj_1", "key_alice")
            .requests(3)
            .tokens(100, 50),
    );
    fake.push_usage(
        UsageSeed::new(start + 20, "proj_1", "key_alice")
            .requests(2)
            .tokens(10, 5),
    );
    fake.push_usage(UsageSeed::new(start + 30, "proj_1", "key_ci").requests(7));
    fake.push_usage(
        UsageSeed::new(start + 2 * day + 5, "proj_2", "key_x")
            .requests(1)
            .model("gpt-4o"),
    );
    let path = "/organization/usage/completions";

    let grouped = get(
        &fake,
        &format!("{path}?start_time={start}&end_time={}&bucket_width=1d&group_by[]=api_key_id&group_by[]=project_id", start + 3 * day),
    )
    .await;
    assert_eq!(grouped["object"], "page");
    assert_eq!(grouped["has_more"], false);
    assert_eq!(grouped["next_page"], Value::Null);
    let buckets = grouped["data"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 3);
    assert_eq!(buckets[0]["object"], "bucket");
    assert_eq!(buckets[0]["start_time"], start);
    assert_eq!(buckets[0]["end_time"], start + day);
    let first = buckets[0]["results"].as_array().expect("results");
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["object"], "organization.usage.completions.result");
    assert_eq!(first[0]["api_key_id"], "key_alice");
    assert_eq!(first[0]["project_id"], "proj_1");
    assert_eq!(first[0]["num_model_requests"], 5);
    assert_eq!(first[0]["input_tokens"], 110);
    assert_eq!(first[0]["output_tokens"], 55);
    assert_eq!(first[0]["model"], Value::Null, "not grouped by model");
    assert_eq!(first[1]["api_key_id"], "key_ci");
    assert_eq!(buckets[1]["results"], json!([]));
    assert_eq!(buckets[2]["results"][0]["api_key_id"], "key_x");

    let totals = get(
        &fake,
        &format!("{path}?start_time={start}&end_time={}", start + day),
    )
    .await;
    let total = &totals["data"][0]["results"][0];
    assert_eq!(total["num_model_requests"], 12);
    assert_eq!(total["api_key_id"], Value::Null);

    let filtered = get(
        &fake,
        &format!(
            "{path}?start_time={start}&end_time={}&api_key_ids[]=key_ci",
            start + day
        ),
    )
    .await;
    assert_eq!(filtered["data"][0]["results"][0]["num_model_requests"], 7);

    // Hourly buckets over two days, 24 per page by default: three pages.
    let mut page_token: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let mut url = format!(
            "{path}?start_time={start}&end_time={}&bucket_width=1h&group_by=api_key_id",
            start + 2 * day + 3600
        );
        if let Some(token) = &page_token {
            url.push_str(&format!("&page={token}"));
        }
        let page = get(&fake, &url).await;
        pages += 1;
        for bucket in page["data"].as_array().expect("buckets") {
            seen.push(bucket["start_time"].as_i64().expect("start"));
        }
        if page["has_more"] == json!(false) {
            assert_eq!(page["next_page"], Value::Null);
            break;
        }
        page_token = Some(page["next_page"].as_str().expect("next_page").to_owned());
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 49);
    assert!(seen.windows(2).all(|pair| pair[1] - pair[0] == 3600));

    assert_error(&send(&fake, "GET", path, None).await, 400);
    for bad in [
        format!("start_time={start}&bucket_width=1w"),
        format!("start_time={start}&group_by[]=organization"),
        format!("start_time={start}&bucket_width=1d&limit=32"),
        format!("start_time={start}&end_time={start}"),
        format!("start_time={start}&page=page_nonsense"),
        "start_time=soon".to_owned(),
    ] {
        let answer = send(&fake, "GET", &format!("{path}?{bad}"), None).await;
        assert_error(&answer, 400);
    }
}

/// Each usage endpoint that groups by `api_key_id` answers with its own result object, counters
/// and grouping fields, as the spec's `Usage*Result` schemas and examples have them, and keeps
/// its usage apart from the other endpoints'.
#[tokio::test]
async fn every_usage_endpoint_grouped_by_key_has_the_spec_shape() {
    let fake = seeded().await;
    let start = 1_767_225_600; // 2026-01-01
    let at = start + 100;
    fake.push_usage(
        UsageSeed::new(at, "proj_1", "key_alice")
            .requests(4)
            .batch(true),
    );
    fake.push_usage(
        UsageSeed::of("embeddings", at, "proj_1", "key_alice")
            .requests(2)
            .amount("input_tokens", 20),
    );
    fake.push_usage(UsageSeed::of("moderations", at, "proj_1", "key_alice").requests(3));
    fake.push_usage(
        UsageSeed::of("images", at, "proj_1", "key_alice")
            .requests(2)
            .amount("images", 2)
            .model("dall-e-3")
            .dimension("size", "1024x1024")
            .dimension("source", "image.generation"),
    );
    fake.push_usage(
        UsageSeed::of("audio_speeches", at, "proj_1", "key_alice").amount("characters", 45),
    );
    fake.push_usage(
        UsageSeed::of("audio_transcriptions", at, "proj_1", "key_alice").amount("seconds", 10),
    );
    fake.push_usage(
        UsageSeed::of("file_search_calls", at, "proj_1", "key_ci")
            .requests(5)
            .dimension("vector_store_id", "vs_abc"),
    );
    fake.push_usage(
        UsageSeed::of("web_search_calls", at, "proj_1", "key_ci")
            .requests(6)
            .dimension("context_level", "low"),
    );
    let end = start + 86_400;
    let result = |endpoint: &'static str, group_by: &'static str| {
        let fake = &fake;
        async move {
            let page = get(
                fake,
                &format!("/organization/usage/{endpoint}?start_time={start}&end_time={end}&group_by[]=api_key_id&group_by[]=project_id{group_by}"),
            )
            .await;
            assert_eq!(page["object"], "page", "{endpoint}");
            assert_eq!(page["has_more"], false, "{endpoint}");
            assert_eq!(page["data"][0]["object"], "bucket", "{endpoint}");
            let results = page["data"][0]["results"]
                .as_array()
                .expect("results")
                .clone();
            assert_eq!(
                results.len(),
                1,
                "{endpoint}: only its own usage: {results:?}"
            );
            results[0].clone()
        }
    };
    assert_eq!(
        result("completions", "&group_by[]=batch").await,
        json!({"object": "organization.usage.completions.result", "input_tokens": 0,
               "output_tokens": 0, "input_cached_tokens": 0, "input_audio_tokens": 0,
               "output_audio_tokens": 0, "num_model_requests": 4, "project_id": "proj_1",
               "user_id": null, "api_key_id": "key_alice", "model": null, "batch": true,
               "service_tier": null})
    );
    assert_eq!(
        result("embeddings", "").await,
        json!({"object": "organization.usage.embeddings.result", "input_tokens": 20,
               "num_model_requests": 2, "project_id": "proj_1", "user_id": null,
               "api_key_id": "key_alice", "model": null})
    );
    assert_eq!(
        result("moderations", "").await["object"],
        "organization.usage.moderations.result"
    );
    assert_eq!(
        result(
            "images",
            "&group_by[]=size&group_by[]=source&group_by[]=model"
        )
        .await,
        json!({"object": "organization.usage.images.result", "images": 2,
               "num_model_requests": 2, "size": "1024x1024", "source": "image.generation",
               "project_id": "proj_1", "user_id": null, "api_key_id": "key_alice",
               "model": "dall-e-3"})
    );
    assert_eq!(
        result("audio_speeches", "").await,
        json!({"object": "organization.usage.audio_speeches.result", "characters": 45,
               "num_model_requests": 1, "project_id": "proj_1", "user_id": null,
               "api_key_id": "key_alice", "model": null})
    );
    assert_eq!(
        result("audio_transcriptions", "").await,
        json!({"object": "organization.usage.audio_transcriptions.result", "seconds": 10,
               "num_model_requests": 1, "project_id": "proj_1", "user_id": null,
               "api_key_id": "key_alice", "model": null})
    );
    assert_eq!(
        result("file_search_calls", "&group_by[]=vector_store_id").await,
        json!({"object": "organization.usage.file_searches.result", "num_requests": 5,
               "project_id": "proj_1", "user_id": null, "api_key_id": "key_ci",
               "vector_store_id": "vs_abc"})
    );
    assert_eq!(
        result("web_search_calls", "").await,
        json!({"object": "organization.usage.web_searches.result", "num_model_requests": 6,
               "num_requests": 6, "project_id": "proj_1", "user_id": null,
               "api_key_id": "key_ci", "model": null, "context_level": null})
    );
    // Filters of one endpoint, and group_by fields another endpoint does not have.
    let filtered = get(
        &fake,
        &format!(
            "/organization/usage/images?start_time={start}&end_time={end}&sources[]=image.edit"
        ),
    )
    .await;
    assert_eq!(filtered["data"][0]["results"], json!([]));
    for (endpoint, bad) in [
        ("embeddings", "batch"),
        ("file_search_calls", "model"),
        ("audio_speeches", "size"),
    ] {
        let answer = send(
            &fake,
            "GET",
            &format!("/organization/usage/{endpoint}?start_time={start}&group_by[]={bad}"),
            None,
        )
        .await;
        assert_eq!(
            assert_error(&answer, 400)["param"],
            "group_by",
            "{endpoint} {bad}"
        );
    }
    // Usage the fake does not serve by key is not a path of the API it fakes.
    let unknown = send(
        &fake,
        "GET",
        &format!("/organization/usage/everything?start_time={start}"),
        None,
    )
    .await;
    assert_error(&unknown, 404);
}

#[tokio::test]
async fn faults_are_served_in_order_and_by_path() {
    let fake = seeded().await;
    fake.fail_next(2, Fault::ServerError);
    fake.fail_next(
        1,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
    );
    let path = "/organization/projects";
    let first = send(&fake, "GET", path, None).await;
    assert_eq!(assert_error(&first, 500)["type"], "server_error");
    assert_error(&send(&fake, "GET", path, None).await, 500);
    let limited = send(&fake, "GET", path, None).await;
    assert_error(&limited, 429);
    assert_eq!(limited.retry_after.as_deref(), Some("7"));
    assert_eq!(send(&fake, "GET", path, None).await.status, 200);

    fake.fail_next_on(
        "/organization/usage",
        1,
        Fault::Status(503, "overloaded".to_owned()),
    );
    assert_eq!(
        send(&fake, "GET", path, None).await.status,
        200,
        "other paths are untouched"
    );
    let usage = send(
        &fake,
        "GET",
        "/organization/usage/completions?start_time=0&end_time=60",
        None,
    )
    .await;
    assert_eq!(assert_error(&usage, 503)["message"], "overloaded");

    fake.fail_next_on(
        "/v1/organization/projects",
        1,
        Fault::Slow(Duration::from_millis(300)),
    );
    let started = Instant::now();
    assert_eq!(send(&fake, "GET", path, None).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_slow_answer_comes_after_the_change_is_made() {
    let fake = seeded().await;
    let path = "/organization/projects/proj_1/api_keys/key_alice";
    let delay = Duration::from_millis(800);
    fake.fail_next_on(path, 1, Fault::SlowAnswer(delay));
    let started = Instant::now();
    let delete = send(&fake, "DELETE", path, None);
    tokio::pin!(delete);
    // The key is gone while the caller still waits for the answer.
    loop {
        tokio::select! {
            answer = &mut delete => panic!("answered before the key was seen gone: {}", answer.status),
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                if !fake.key_exists("proj_1", "key_alice") {
                    break;
                }
            }
        }
    }
    let answer = delete.await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(started.elapsed() >= delay);
    assert_eq!(send(&fake, "DELETE", path, None).await.status, 404);
}

#[tokio::test]
async fn broken_pagination_repeats_the_same_cursor() {
    let fake = seeded().await;
    for n in 2..=4 {
        fake.seed_project(&format!("proj_{n}"), "p");
    }
    fake.set_always_has_more_same_cursor(true);
    let first = get(&fake, "/organization/projects?limit=2").await;
    assert_eq!(first["has_more"], true);
    let cursor = first["last_id"].as_str().expect("last_id").to_owned();
    let second = get(
        &fake,
        &format!("/organization/projects?limit=2&after={cursor}"),
    )
    .await;
    assert_eq!(second["has_more"], true);
    assert_eq!(second["last_id"], cursor.as_str());

    let path = "/organization/usage/completions?start_time=0&end_time=600&bucket_width=1m&limit=2";
    let usage = get(&fake, path).await;
    assert_eq!(usage["has_more"], true);
    let token = usage["next_page"].as_str().expect("next_page").to_owned();
    let again = get(&fake, &format!("{path}&page={token}")).await;
    assert_eq!(again["next_page"], token.as_str());
    assert_eq!(again["data"], usage["data"]);
}

#[tokio::test]
async fn a_maximum_page_size_caps_every_list_whatever_the_limit() {
    let fake = seeded().await;
    for n in 2..=5 {
        fake.seed_project(&format!("proj_{n}"), "p");
    }
    fake.set_max_page_size(2);
    let (projects, pages) = walk(&fake, "/organization/projects?limit=100").await;
    assert_eq!(projects.len(), 5);
    assert_eq!(pages, 3, "100 asked, 2 served per page");
    let first = get(&fake, "/organization/projects?limit=100").await;
    assert_eq!(ids(&first), ["proj_1", "proj_2"]);
    assert_eq!(first["has_more"], true);
    assert_error(
        &send(&fake, "GET", "/organization/projects?limit=101", None).await,
        400,
    );

    let usage = get(
        &fake,
        "/organization/usage/completions?start_time=0&end_time=600&bucket_width=1m&limit=1440",
    )
    .await;
    assert_eq!(usage["data"].as_array().expect("buckets").len(), 2);
    assert_eq!(usage["has_more"], true);
}

#[tokio::test]
async fn the_organization_header_is_recorded() {
    let fake = seeded().await;
    let client = client();
    let response = client
        .get(format!("{}/organization/projects", fake.base_url()))
        .bearer_auth(fake.admin_key())
        .header("OpenAI-Organization", "org-123")
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(response.status().as_u16(), 200);
    get(&fake, "/organization/projects").await;
    let calls = fake.calls();
    assert_eq!(calls[0].organization.as_deref(), Some("org-123"));
    assert_eq!(calls[1].organization, None);
}

#[tokio::test]
async fn stops_serving_when_dropped() {
    let fake = OpenAiFake::start().await;
    let url = format!("{}/organization/projects", fake.base_url());
    drop(fake);
    let client = client();
    let mut refused = false;
    for _ in 0..50 {
        if client.get(&url).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the fake still answers after drop");
}

#[tokio::test]
async fn updating_a_key_follows_the_reference() {
    let fake = seeded().await;
    let path = "/organization/projects/proj_1/api_keys/key_alice";

    // Both fields, saved together; the answer is the key object, redacted.
    let updated = send(
        &fake,
        "POST",
        path,
        Some(json!({"scopes": ["api.model.request"], "expires_in_seconds": 3600})),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["object"], "organization.project.api_key");
    assert_eq!(updated.body["id"], "key_alice");
    assert_eq!(updated.body["expires_at"], 1_767_600_000 + 3600);
    assert_eq!(updated.body["owner_project_access"], "active");
    assert!(
        updated.body.get("scopes").is_none(),
        "scopes are not returned"
    );
    assert!(updated.body.get("value").is_none(), "no secret");
    assert_eq!(
        fake.key_scopes("proj_1", "key_alice"),
        Some(vec!["api.model.request".to_owned()])
    );
    let listed = get(&fake, "/organization/projects/proj_1/api_keys").await;
    assert_eq!(listed["data"][0]["expires_at"], 1_767_600_000 + 3600);
    let audit = fake.audit_events();
    let event = audit.last().expect("an audit event");
    assert_eq!(event["type"], "api_key.updated");
    assert_eq!(event["api_key.updated"]["id"], "key_alice");
    assert_eq!(
        event["api_key.updated"]["changes_requested"]["scopes"],
        json!(["api.model.request"])
    );

    // One field leaves the other as it was.
    let expiry_only = send(&fake, "POST", path, Some(json!({"expires_in_seconds": 60}))).await;
    assert_eq!(expiry_only.status, 200, "{}", expiry_only.body);
    assert_eq!(expiry_only.body["expires_at"], 1_767_600_000 + 60);
    assert_eq!(
        fake.key_scopes("proj_1", "key_alice"),
        Some(vec!["api.model.request".to_owned()])
    );
    // `[]` removes every restriction (the API widens; refusing it is the client's business).
    let everything = send(&fake, "POST", path, Some(json!({"scopes": []}))).await;
    assert_eq!(everything.status, 200, "{}", everything.body);
    assert_eq!(fake.key_scopes("proj_1", "key_alice"), Some(Vec::new()));
    assert_eq!(everything.body["expires_at"], 1_767_600_000 + 60);

    // Refusals, each naming its parameter; a refused update changes nothing.
    for (body, param) in [
        (json!({}), Value::Null),
        (json!({"name": "renamed"}), json!("name")),
        (json!({"scopes": null}), json!("scopes")),
        (json!({"scopes": "api.model.request"}), json!("scopes")),
        (json!({"scopes": [1]}), json!("scopes")),
        (json!({"scopes": [""]}), json!("scopes")),
        (
            json!({"expires_in_seconds": null}),
            json!("expires_in_seconds"),
        ),
        (
            json!({"expires_in_seconds": 0}),
            json!("expires_in_seconds"),
        ),
        (
            json!({"expires_in_seconds": 31_536_001}),
            json!("expires_in_seconds"),
        ),
        (
            json!({"expires_in_seconds": "60"}),
            json!("expires_in_seconds"),
        ),
        (
            json!({"expires_in_seconds": 1.5}),
            json!("expires_in_seconds"),
        ),
        (
            json!({"scopes": ["api.files.read"], "expires_in_seconds": 0}),
            json!("expires_in_seconds"),
        ),
    ] {
        let refused = send(&fake, "POST", path, Some(body.clone())).await;
        assert_eq!(assert_error(&refused, 400)["param"], param, "{body}");
    }
    assert_eq!(fake.key_scopes("proj_1", "key_alice"), Some(Vec::new()));
    let limit = send(
        &fake,
        "POST",
        path,
        Some(json!({"expires_in_seconds": 31_536_000})),
    )
    .await;
    assert_eq!(limit.status, 200, "a year is allowed: {}", limit.body);

    // A service account's key can be updated too; unknown keys and projects are 404.
    let ci = send(
        &fake,
        "POST",
        "/organization/projects/proj_1/api_keys/key_ci",
        Some(json!({"scopes": ["api.responses.write"]})),
    )
    .await;
    assert_eq!(ci.status, 200, "{}", ci.body);
    assert_eq!(
        fake.key_scopes("proj_1", "key_ci"),
        Some(vec!["api.responses.write".to_owned()])
    );
    for missing in [
        "/organization/projects/proj_1/api_keys/key_nope",
        "/organization/projects/proj_nope/api_keys/key_alice",
    ] {
        assert_error(
            &send(&fake, "POST", missing, Some(json!({"scopes": []}))).await,
            404,
        );
    }
}

#[tokio::test]
async fn an_expired_key_cannot_be_updated() {
    let fake = seeded().await;
    fake.seed_key(
        "proj_1",
        "user_alice",
        KeySeed::new("key_old")
            .expires_at(1_767_600_000)
            .scopes(&["api.all.read"]),
    );
    let path = "/organization/projects/proj_1/api_keys/key_old";
    for body in [
        json!({"expires_in_seconds": 86_400}),
        json!({"scopes": ["api.model.request"]}),
    ] {
        let refused = send(&fake, "POST", path, Some(body)).await;
        let error = assert_error(&refused, 400);
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"], "api_key_id");
        assert_eq!(error["code"], Value::Null);
        assert_eq!(
            error["message"],
            "API key key_old has expired and can no longer be updated."
        );
    }
    let key = get(&fake, path).await;
    assert_eq!(key["expires_at"], 1_767_600_000);
    assert_eq!(
        fake.key_scopes("proj_1", "key_old"),
        Some(vec!["api.all.read".to_owned()])
    );
    // A second before its expiry it still could be.
    fake.set_now(1_767_599_999);
    let renewed = send(
        &fake,
        "POST",
        path,
        Some(json!({"expires_in_seconds": 86_400})),
    )
    .await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    assert_eq!(renewed.body["expires_at"], 1_767_599_999 + 86_400);
}

#[tokio::test]
async fn keys_of_an_archived_project_cannot_be_updated() {
    let fake = seeded().await;
    fake.seed_archived_project("proj_old", "Old");
    fake.seed_user("proj_old", "user_alice", "alice@example.com", Role::Owner);
    fake.seed_key("proj_old", "user_alice", KeySeed::new("key_archived"));
    let refused = send(
        &fake,
        "POST",
        "/organization/projects/proj_old/api_keys/key_archived",
        Some(json!({"scopes": ["api.model.request"]})),
    )
    .await;
    assert_eq!(assert_error(&refused, 400)["param"], "project_id");
}

#[tokio::test]
async fn model_permissions_follow_the_spec() {
    let fake = seeded().await;
    let path = "/organization/projects/proj_1/model_permissions";
    assert_eq!(
        get(&fake, path).await,
        json!({"object": "project.model_permissions", "mode": "deny_list", "model_ids": []}),
        "a new project allows every model"
    );
    let set = send(
        &fake,
        "POST",
        path,
        Some(json!({"mode": "allow_list", "model_ids": ["gpt-4.1", "o3"]})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        set.body,
        json!({"object": "project.model_permissions", "mode": "allow_list", "model_ids": ["gpt-4.1", "o3"]})
    );
    assert_eq!(get(&fake, path).await, set.body);
    for (body, param) in [
        (json!({"model_ids": []}), "mode"),
        (json!({"mode": "allow_list"}), "model_ids"),
        (json!({"mode": "block_list", "model_ids": []}), "mode"),
        (
            json!({"mode": "allow_list", "model_ids": "o3"}),
            "model_ids",
        ),
        (
            json!({"mode": "allow_list", "model_ids": [], "note": "x"}),
            "note",
        ),
    ] {
        let refused = send(&fake, "POST", path, Some(body.clone())).await;
        assert_eq!(assert_error(&refused, 400)["param"], param, "{body}");
    }
    let deleted = send(&fake, "DELETE", path, None).await;
    assert_eq!(
        deleted.body,
        json!({"object": "project.model_permissions.deleted", "deleted": true})
    );
    assert_eq!(get(&fake, path).await["mode"], "deny_list");
    assert_error(
        &send(
            &fake,
            "GET",
            "/organization/projects/proj_nope/model_permissions",
            None,
        )
        .await,
        404,
    );
    fake.seed_model_permissions("proj_1", "allow_list", &["gpt-4o"]);
    assert_eq!(
        fake.model_permissions("proj_1").expect("seeded")["model_ids"],
        json!(["gpt-4o"])
    );
}

#[tokio::test]
async fn hosted_tools_follow_the_spec() {
    let fake = seeded().await;
    let path = "/organization/projects/proj_1/hosted_tool_permissions";
    let on = json!({"enabled": true});
    let off = json!({"enabled": false});
    assert_eq!(
        get(&fake, path).await,
        json!({"file_search": on, "web_search": on, "image_generation": on, "mcp": on, "code_interpreter": on})
    );
    // Tools left out or `null` are unchanged.
    let changed = send(
        &fake,
        "POST",
        path,
        Some(json!({"file_search": {"enabled": true}, "image_generation": {"enabled": false}, "mcp": null})),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(
        changed.body,
        json!({"file_search": on, "web_search": on, "image_generation": off, "mcp": on, "code_interpreter": on})
    );
    assert_eq!(get(&fake, path).await, changed.body);
    for (body, param) in [
        (json!({"image_generation": false}), "image_generation"),
        (json!({"mcp": {}}), "mcp"),
        (json!({"mcp": {"enabled": "no"}}), "mcp"),
        (json!({"mcp": {"enabled": true, "why": "x"}}), "why"),
        (json!({"browser": {"enabled": false}}), "browser"),
    ] {
        let refused = send(&fake, "POST", path, Some(body.clone())).await;
        assert_eq!(assert_error(&refused, 400)["param"], param, "{body}");
    }
    fake.seed_hosted_tool("proj_1", "mcp", false);
    assert_eq!(
        fake.hosted_tool_permissions("proj_1").expect("seeded")["mcp"],
        off
    );
}

#[tokio::test]
async fn spend_limits_follow_the_spec() {
    let fake = seeded().await;
    let path = "/organization/projects/proj_1/spend_limit";
    assert_error(&send(&fake, "GET", path, None).await, 404);
    assert_error(&send(&fake, "DELETE", path, None).await, 404);
    let body = json!({"threshold_amount": 10_000, "currency": "USD", "interval": "month"});
    let set = send(&fake, "POST", path, Some(body)).await;
    assert_eq!(set.status, 200, "{}", set.body);
    let expected = json!({
        "object": "project.spend_limit",
        "threshold_amount": 10_000,
        "currency": "USD",
        "interval": "month",
        "enforcement": {"status": "enforcing"},
    });
    assert_eq!(set.body, expected);
    assert_eq!(get(&fake, path).await, expected);
    assert_eq!(fake.spend_limit("proj_1"), Some(expected));
    for (body, param) in [
        (
            json!({"currency": "USD", "interval": "month"}),
            "threshold_amount",
        ),
        (
            json!({"threshold_amount": 0, "currency": "USD", "interval": "month"}),
            "threshold_amount",
        ),
        (
            json!({"threshold_amount": "100", "currency": "USD", "interval": "month"}),
            "threshold_amount",
        ),
        (
            json!({"threshold_amount": 100, "interval": "month"}),
            "currency",
        ),
        (
            json!({"threshold_amount": 100, "currency": "EUR", "interval": "month"}),
            "currency",
        ),
        (
            json!({"threshold_amount": 100, "currency": "USD", "interval": "week"}),
            "interval",
        ),
    ] {
        let refused = send(&fake, "POST", path, Some(body.clone())).await;
        assert_eq!(assert_error(&refused, 400)["param"], param, "{body}");
    }
    let deleted = send(&fake, "DELETE", path, None).await;
    assert_eq!(
        deleted.body,
        json!({"object": "project.spend_limit.deleted", "deleted": true})
    );
    assert_eq!(fake.spend_limit("proj_1"), None);
    fake.seed_spend_limit("proj_1", 500);
    assert_eq!(get(&fake, path).await["threshold_amount"], 500);
}

mod org;
