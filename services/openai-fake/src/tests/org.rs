//! Tests of the seeded organization, the endpoints the estate inventory walks (organization
//! users, data retention, certificates, project-level usage), the rate limit every N requests
//! and the mutators, over real HTTP.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::{KeyOwner, KeySeed, OpenAiFake, OrgSpec, OrgSummary, Role, Setting};
use super::{assert_error, client, get, ids, send};

/// 2026-11-20T00:00:00Z: the reference time of the seeded organizations here.
const NOW: i64 = 1_795_132_800;

async fn small_org() -> (OpenAiFake, OrgSummary) {
    let fake = OpenAiFake::start().await;
    fake.set_now(NOW);
    let summary = fake.seed_org(&OrgSpec::small().at(NOW));
    (fake, summary)
}

/// Pages through a cursor list with one keep-alive client, following `after=last_id` while
/// `has_more`; returns every object and the number of requests.
async fn walk_all(
    fake: &OpenAiFake,
    http: &reqwest::Client,
    path: &str,
    limit: usize,
) -> (Vec<Value>, usize) {
    let auth = format!("Bearer {}", fake.admin_key());
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut objects = Vec::new();
    let mut requests = 0;
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}{path}{separator}limit={limit}", fake.base_url());
        if let Some(cursor) = &after {
            url.push_str(&format!("&after={cursor}"));
        }
        let response = http
            .get(&url)
            .header("Authorization", &auth)
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        let page: Value = response.json().await.expect("a JSON page");
        requests += 1;
        let data = page["data"].as_array().expect("data is an array");
        assert!(data.len() <= limit, "a page holds at most `limit` objects");
        objects.extend(data.iter().cloned());
        if page["has_more"] != json!(true) {
            break;
        }
        assert_eq!(page["last_id"], data.last().expect("a full page")["id"]);
        after = page["last_id"].as_str().map(str::to_owned);
    }
    (objects, requests)
}

/// Everything an inventory sync reads, in the order it reads it.
async fn snapshot(fake: &OpenAiFake) -> Vec<Value> {
    let http = client();
    let mut all = Vec::new();
    let (projects, _) = walk_all(
        fake,
        &http,
        "/organization/projects?include_archived=true",
        100,
    )
    .await;
    for project in &projects {
        let id = project["id"].as_str().expect("project id");
        for list in [
            "api_keys?owner_project_access=any",
            "service_accounts",
            "users",
            "certificates",
        ] {
            if project["status"] == "archived" && (list == "service_accounts" || list == "users") {
                continue; // 400 for archived projects, as the spec's errors say
            }
            let path = format!("/organization/projects/{id}/{list}");
            all.extend(walk_all(fake, &http, &path, 100).await.0);
        }
        for setting in [
            "hosted_tool_permissions",
            "model_permissions",
            "data_retention",
        ] {
            all.push(get(fake, &format!("/organization/projects/{id}/{setting}")).await);
        }
    }
    all.extend(projects);
    for path in [
        "/organization/users",
        "/organization/admin_api_keys",
        "/organization/certificates",
        "/organization/audit_logs",
    ] {
        all.extend(walk_all(fake, &http, path, 100).await.0);
    }
    for family in ["completions", "embeddings", "vector_stores"] {
        let path = format!(
            "/organization/usage/{family}?start_time={}&limit=31&group_by=project_id",
            NOW - 30 * 86_400
        );
        all.push(get(fake, &path).await);
    }
    all
}

#[tokio::test]
async fn an_organization_is_the_same_for_the_same_seed() {
    let (first, first_summary) = small_org().await;
    let (second, second_summary) = small_org().await;
    assert_eq!(first_summary, second_summary);
    let snapshot_one = snapshot(&first).await;
    assert!(snapshot_one.len() > 300, "{} objects", snapshot_one.len());
    assert_eq!(snapshot_one, snapshot(&second).await);

    let other = OpenAiFake::start().await;
    other.set_now(NOW);
    let other_summary = other.seed_org(&OrgSpec::small().with_seed(19).at(NOW));
    assert_ne!(other_summary.default_project, first_summary.default_project);
    assert_ne!(snapshot(&other).await, snapshot_one);
}

#[tokio::test]
async fn a_small_organization_holds_what_its_summary_says() {
    let (fake, summary) = small_org().await;
    let http = client();
    assert_eq!(summary.projects, 24);
    assert_eq!(summary.keys, 96);
    assert_eq!(summary.user_keys + summary.service_account_keys, 96);
    for (name, cases) in [
        ("archived projects", summary.archived_projects.len()),
        ("removed users", summary.removed_users.len()),
        ("people who left a project", summary.left_project.len()),
        (
            "multi-key service accounts",
            summary.multi_key_service_accounts.len(),
        ),
        ("orphaned keys", summary.orphaned_keys.len()),
        ("never used keys", summary.never_used_keys.len()),
        ("stale keys", summary.stale_keys.len()),
        ("expiring keys", summary.expiring_keys.len()),
        ("restricted keys", summary.restricted_keys.len()),
        ("unrestricted keys", summary.unrestricted_keys.len()),
        ("widened keys", summary.widened_keys.len()),
        ("unused admin keys", summary.unused_admin_keys.len()),
        ("prod projects with mcp", summary.prod_mcp_projects.len()),
        (
            "prod projects with web search",
            summary.prod_web_search_projects.len(),
        ),
        (
            "prod projects without zero retention",
            summary.prod_without_zero_retention.len(),
        ),
        (
            "projects with certificates",
            summary.projects_with_certificates.len(),
        ),
    ] {
        assert!(cases > 0, "the small organization has {name}");
    }

    // Projects: the default one first, names by environment, archived ones only on request.
    let (projects, _) = walk_all(
        &fake,
        &http,
        "/organization/projects?include_archived=true",
        100,
    )
    .await;
    assert_eq!(projects.len(), summary.projects);
    assert_eq!(projects[0]["id"], json!(summary.default_project));
    assert_eq!(projects[0]["name"], "Default project");
    assert!(
        projects
            .iter()
            .any(|p| p["name"].as_str().is_some_and(|n| n.starts_with("prod-")))
    );
    let archived: BTreeSet<String> = projects
        .iter()
        .filter(|p| p["status"] == "archived")
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        archived,
        summary.archived_projects.iter().cloned().collect()
    );
    let (active, _) = walk_all(&fake, &http, "/organization/projects", 100).await;
    assert_eq!(active.len(), summary.projects - archived.len());

    // Keys: every one listed once with `owner_project_access=any`; the cases as the summary says.
    let mut keys = Vec::new();
    for project in &projects {
        let id = project["id"].as_str().expect("id");
        let path = format!("/organization/projects/{id}/api_keys?owner_project_access=any");
        // A page of 7 forces several pages on the larger projects.
        let (page, _) = walk_all(&fake, &http, &path, 7).await;
        keys.extend(page.into_iter().map(|key| (id.to_owned(), key)));
    }
    assert_eq!(keys.len(), summary.keys);
    let key = |reference: &super::super::KeyRef| -> Value {
        keys.iter()
            .find(|(project, key)| {
                *project == reference.project_id && key["id"] == json!(reference.key_id)
            })
            .map(|(_, key)| key.clone())
            .unwrap_or_else(|| panic!("{reference:?} is listed"))
    };
    for orphan in &summary.orphaned_keys {
        assert_eq!(key(orphan)["owner_project_access"], "inactive");
        assert_eq!(key(orphan)["owner"]["type"], "user");
    }
    let inactive = keys
        .iter()
        .filter(|(_, key)| key["owner_project_access"] == "inactive")
        .count();
    assert_eq!(inactive, summary.orphaned_keys.len());
    for never in &summary.never_used_keys {
        assert_eq!(key(never)["last_used_at"], Value::Null);
    }
    for stale in &summary.stale_keys {
        let last = key(stale)["last_used_at"].as_i64().expect("used once");
        assert!(last <= NOW - 100 * 86_400);
    }
    for expiring in &summary.expiring_keys {
        assert!(key(expiring)["expires_at"].is_i64());
    }
    for (_, listed) in &keys {
        let created = listed["created_at"].as_i64().expect("created_at");
        assert!(created > NOW - 731 * 86_400 && created < NOW, "{listed}");
        let owner = &listed["owner"];
        match owner["type"].as_str() {
            Some("user") => assert!(owner["user"]["email"].is_string(), "{listed}"),
            Some("service_account") => {
                assert!(owner["service_account"]["name"].is_string(), "{listed}");
            }
            other => panic!("owner type {other:?}"),
        }
        let redacted = listed["redacted_value"].as_str().expect("redacted");
        assert!(redacted.contains("..."), "{redacted}");
    }

    // People: removed ones are gone from the organization (404), their keys orphaned; people
    // who left a project are still in the organization but not in the project.
    let (users, _) = walk_all(&fake, &http, "/organization/users", 5).await;
    assert_eq!(users.len(), summary.users);
    assert_eq!(
        users.iter().filter(|user| user["role"] == "owner").count(),
        summary.owners.len()
    );
    for user in &users {
        assert_eq!(user["object"], "organization.user");
        assert!(user["email"].is_string() && user["added_at"].is_i64());
        assert!(["owner", "reader"].contains(&user["role"].as_str().expect("role")));
    }
    for removed in &summary.removed_users {
        let answer = send(
            &fake,
            "GET",
            &format!("/organization/users/{removed}"),
            None,
        )
        .await;
        assert_error(&answer, 404);
        assert!(
            keys.iter()
                .any(|(_, key)| key["owner"]["user"]["id"] == json!(removed)),
            "a removed user left a key behind"
        );
    }
    for (project, user) in &summary.left_project {
        get(&fake, &format!("/organization/users/{user}")).await;
        let answer = send(
            &fake,
            "GET",
            &format!("/organization/projects/{project}/users/{user}"),
            None,
        )
        .await;
        if !archived.contains(project) {
            assert_error(&answer, 404);
        }
    }

    // Service accounts: several keys for some, paged one at a time.
    let (project, account) = &summary.multi_key_service_accounts[0];
    let account_keys = keys
        .iter()
        .filter(|(_, key)| key["owner"]["service_account"]["id"] == json!(account))
        .count();
    assert!(account_keys > 1);
    if !archived.contains(project) {
        let path = format!("/organization/projects/{project}/service_accounts");
        let (accounts, pages) = walk_all(&fake, &http, &path, 1).await;
        assert_eq!(pages, accounts.len().max(1));
        assert!(accounts.iter().any(|sa| sa["id"] == json!(account)));
    }

    // The audit log records every key's creation with its scopes; the widened key's last
    // change is `scopes: []`.
    let (created, _) = walk_all(
        &fake,
        &http,
        "/organization/audit_logs?event_types[]=api_key.created",
        100,
    )
    .await;
    assert_eq!(created.len(), summary.keys + summary.deleted_keys.len());
    for event in &created {
        assert!(
            event["api_key.created"]["data"]["scopes"].is_array(),
            "{event}"
        );
        assert!(event["project"]["id"].is_string());
        assert_eq!(event["actor"]["type"], "session");
    }
    let widened = &summary.widened_keys[0];
    let updates = get(
        &fake,
        &format!(
            "/organization/audit_logs?event_types[]=api_key.updated&resource_ids[]={}",
            widened.key_id
        ),
    )
    .await;
    assert_eq!(
        updates["data"][0]["api_key.updated"]["changes_requested"]["scopes"],
        json!([])
    );
    assert_eq!(
        fake.key_scopes(&widened.project_id, &widened.key_id),
        Some(vec![])
    );
    let restricted = &summary.restricted_keys[0];
    assert!(
        !fake
            .key_scopes(&restricted.project_id, &restricted.key_id)
            .expect("a key")
            .is_empty()
    );

    // Settings: the prod exception has mcp on; zero retention where the summary says.
    let mcp = &summary.prod_mcp_projects[0];
    let tools = get(
        &fake,
        &format!("/organization/projects/{mcp}/hosted_tool_permissions"),
    )
    .await;
    assert_eq!(tools["mcp"]["enabled"], true);
    for project in &projects {
        let id = project["id"].as_str().expect("id");
        let name = project["name"].as_str().expect("name");
        let retention = get(
            &fake,
            &format!("/organization/projects/{id}/data_retention"),
        )
        .await;
        assert_eq!(retention["object"], "project.data_retention");
        if name.starts_with("prod-") {
            let zero = retention["type"] == "zero_data_retention";
            assert_eq!(
                zero,
                !summary.prod_without_zero_retention.iter().any(|p| p == id),
                "{name}"
            );
        }
    }

    // Admin keys: the fake's own and the seeded ones, owned by organization owners.
    let (admin_keys, _) = walk_all(&fake, &http, "/organization/admin_api_keys", 100).await;
    assert_eq!(admin_keys.len(), summary.admin_keys.len() + 1);
    let unused = &summary.unused_admin_keys[0];
    let admin_key = admin_keys
        .iter()
        .find(|key| key["id"] == json!(unused))
        .expect("listed");
    assert_eq!(admin_key["last_used_at"], Value::Null);
    assert!(
        summary
            .owners
            .iter()
            .any(|owner| admin_key["owner"]["id"] == json!(owner))
    );

    // Usage: per key on the key endpoints, per project on the project ones.
    let completions = get(
        &fake,
        &format!(
            "/organization/usage/completions?start_time={}&bucket_width=1d&limit=31&group_by=api_key_id",
            NOW - 30 * 86_400
        ),
    )
    .await;
    let used_keys: BTreeSet<&str> = completions["data"]
        .as_array()
        .expect("buckets")
        .iter()
        .flat_map(|bucket| bucket["results"].as_array().expect("results").iter())
        .filter_map(|result| result["api_key_id"].as_str())
        .collect();
    assert!(!used_keys.is_empty());
    for key_id in &used_keys {
        let (_, listed) = keys
            .iter()
            .find(|(_, key)| key["id"] == json!(key_id))
            .expect("usage of a listed key");
        assert!(listed["last_used_at"].as_i64().expect("used") >= NOW - 30 * 86_400);
    }
    assert!(summary.usage_rows > used_keys.len());
}

#[tokio::test]
async fn organization_users_list_filter_get_and_delete() {
    let fake = OpenAiFake::start().await;
    fake.set_now(NOW);
    fake.seed_project("proj_1", "Main");
    fake.seed_user("proj_1", "user_alice", "alice@example.com", Role::Owner);
    fake.seed_user("proj_1", "user_bob", "bob@example.com", Role::Member);
    fake.seed_org_user("user_carol", "carol@example.com");
    fake.seed_key("proj_1", "user_bob", KeySeed::new("key_bob"));

    let page = get(&fake, "/organization/users").await;
    assert_eq!(ids(&page), ["user_alice", "user_bob", "user_carol"]);
    assert_eq!(
        page["data"][0],
        json!({
            "object": "organization.user",
            "id": "user_alice",
            "name": "alice",
            "email": "alice@example.com",
            "role": "reader",
            "added_at": 1_767_225_600,
        })
    );
    assert_eq!(page["has_more"], false);
    let filtered = get(
        &fake,
        "/organization/users?emails=carol@example.com&emails=bob@example.com",
    )
    .await;
    assert_eq!(ids(&filtered), ["user_bob", "user_carol"]);
    let bracketed = get(&fake, "/organization/users?emails[]=carol@example.com").await;
    assert_eq!(ids(&bracketed), ["user_carol"]);
    let first = get(&fake, "/organization/users?limit=1").await;
    assert_eq!(
        (ids(&first), &first["has_more"]),
        (vec!["user_alice".to_owned()], &json!(true))
    );
    assert_eq!(
        get(&fake, "/organization/users/user_bob").await["email"],
        "bob@example.com"
    );
    assert_error(
        &send(&fake, "GET", "/organization/users/user_nobody", None).await,
        404,
    );
    assert_error(
        &send(&fake, "GET", "/organization/users?limit=0", None).await,
        400,
    );

    // Removed from the organization: gone from every list, the key stays, orphaned.
    let deleted = send(&fake, "DELETE", "/organization/users/user_bob", None).await;
    assert_eq!(
        deleted.body,
        json!({"object": "organization.user.deleted", "id": "user_bob", "deleted": true})
    );
    assert_error(
        &send(&fake, "GET", "/organization/users/user_bob", None).await,
        404,
    );
    assert_error(
        &send(&fake, "DELETE", "/organization/users/user_bob", None).await,
        404,
    );
    // A cursor naming the removed user still pages on.
    let after = get(&fake, "/organization/users?after=user_bob").await;
    assert_eq!(ids(&after), ["user_carol"]);
    let members = get(&fake, "/organization/projects/proj_1/users").await;
    assert_eq!(ids(&members), ["user_alice"]);
    let key = fake.key("proj_1", "key_bob").expect("the key stays");
    assert_eq!(key["owner_project_access"], "inactive");
    assert_eq!(key["owner"]["user"]["email"], "bob@example.com");
    let event = fake.audit_events().pop().expect("an event");
    assert_eq!(event["type"], "user.deleted");
    assert_eq!(event["user.deleted"]["id"], "user_bob");
}

#[tokio::test]
async fn data_retention_follows_the_spec() {
    let fake = OpenAiFake::start().await;
    fake.set_now(NOW);
    fake.seed_project("proj_1", "Main");
    fake.seed_archived_project("proj_old", "Old");
    assert_eq!(
        get(&fake, "/organization/data_retention").await,
        json!({"object": "organization.data_retention", "type": "modified_abuse_monitoring"})
    );
    fake.seed_org_data_retention("zero_data_retention");
    assert_eq!(
        get(&fake, "/organization/data_retention").await["type"],
        "zero_data_retention"
    );
    let path = "/organization/projects/proj_1/data_retention";
    assert_eq!(
        get(&fake, path).await,
        json!({"object": "project.data_retention", "type": "organization_default"})
    );
    let updated = send(
        &fake,
        "POST",
        path,
        Some(json!({"retention_type": "zero_data_retention"})),
    )
    .await;
    assert_eq!(updated.status, 200);
    assert_eq!(
        updated.body,
        json!({"object": "project.data_retention", "type": "zero_data_retention"})
    );
    assert_eq!(
        fake.data_retention("proj_1"),
        Some(json!({"object": "project.data_retention", "type": "zero_data_retention"}))
    );
    let event = fake.audit_events().pop().expect("an event");
    assert_eq!(event["type"], "project.updated");
    assert_eq!(event["project.updated"], json!({"id": "proj_1"}));

    for (body, param) in [
        (json!({"retention_type": "forever"}), "retention_type"),
        (json!({"retention_type": null}), "retention_type"),
        (json!({}), "retention_type"),
        (json!({"retention_type": "none", "other": 1}), "other"),
    ] {
        let answer = send(&fake, "POST", path, Some(body.clone())).await;
        assert_eq!(assert_error(&answer, 400)["param"], param, "{body}");
    }
    assert_eq!(get(&fake, path).await["type"], "zero_data_retention");
    let archived = send(
        &fake,
        "POST",
        "/organization/projects/proj_old/data_retention",
        Some(json!({"retention_type": "none"})),
    )
    .await;
    assert_error(&archived, 400);
    assert_error(
        &send(
            &fake,
            "GET",
            "/organization/projects/proj_x/data_retention",
            None,
        )
        .await,
        404,
    );
}

#[tokio::test]
async fn certificates_list_for_the_organization_and_projects() {
    let (fake, summary) = small_org().await;
    let all = get(&fake, "/organization/certificates").await;
    let listed = all["data"].as_array().expect("data");
    assert_eq!(listed.len(), summary.certificates.len());
    let created: Vec<i64> = listed
        .iter()
        .map(|c| c["created_at"].as_i64().expect("created_at"))
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first by default"
    );
    for certificate in listed {
        assert_eq!(certificate["object"], "organization.certificate");
        assert!(certificate["active"].is_boolean() && certificate["name"].is_string());
        let details = &certificate["certificate_details"];
        assert!(details["valid_at"].as_i64() < details["expires_at"].as_i64());
        assert!(details.get("content").is_none(), "lists never show the PEM");
    }
    let ascending = get(&fake, "/organization/certificates?order=asc").await;
    let mut reversed = ids(&all);
    reversed.reverse();
    assert_eq!(ids(&ascending), reversed);
    let first = get(&fake, "/organization/certificates?limit=1").await;
    assert_eq!(first["has_more"], true);
    let rest = get(
        &fake,
        &format!(
            "/organization/certificates?after={}",
            first["last_id"].as_str().expect("last_id")
        ),
    )
    .await;
    assert_eq!(ids(&rest), ids(&all)[1..]);
    assert_error(
        &send(&fake, "GET", "/organization/certificates?order=up", None).await,
        400,
    );

    let project = &summary.projects_with_certificates[0];
    let configured = get(
        &fake,
        &format!("/organization/projects/{project}/certificates"),
    )
    .await;
    assert_eq!(
        configured["data"][0]["object"],
        "organization.project.certificate"
    );
    assert_eq!(configured["data"][0]["active"], true);
    assert!(
        summary
            .certificates
            .contains(&configured["data"][0]["id"].as_str().expect("id").to_owned())
    );
    let bare = get(
        &fake,
        &format!(
            "/organization/projects/{}/certificates",
            summary.default_project
        ),
    )
    .await;
    assert_eq!(
        bare,
        json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false})
    );
}

#[tokio::test]
async fn project_level_usage_has_the_spec_shape() {
    let fake = OpenAiFake::start().await;
    fake.seed_project("proj_1", "Main");
    let day = 86_400;
    let start = NOW - 2 * day;
    fake.push_usage(
        super::super::UsageSeed::project("vector_stores", start + 10, "proj_1")
            .amount("usage_bytes", 1024),
    );
    fake.push_usage(
        super::super::UsageSeed::project("code_interpreter_sessions", start + day + 5, "proj_1")
            .amount("num_sessions", 3),
    );
    let path = |family: &str, grouped: bool| {
        format!(
            "/organization/usage/{family}?start_time={start}&end_time={}{}",
            start + 2 * day,
            if grouped { "&group_by=project_id" } else { "" }
        )
    };
    let stores = get(&fake, &path("vector_stores", true)).await;
    assert_eq!(
        stores["data"][0]["results"],
        json!([{"object": "organization.usage.vector_stores.result", "usage_bytes": 1024, "project_id": "proj_1"}])
    );
    let sessions = get(&fake, &path("code_interpreter_sessions", false)).await;
    assert_eq!(sessions["data"][0]["results"], json!([]));
    assert_eq!(
        sessions["data"][1]["results"],
        json!([{"object": "organization.usage.code_interpreter_sessions.result", "num_sessions": 3, "project_id": null}])
    );
    let by_key = send(
        &fake,
        "GET",
        &format!("{}&group_by=api_key_id", path("vector_stores", false)),
        None,
    )
    .await;
    assert_eq!(assert_error(&by_key, 400)["param"], "group_by");
    let other_project = get(
        &fake,
        &format!("{}&project_ids=proj_2", path("vector_stores", false)),
    )
    .await;
    assert_eq!(other_project["data"][0]["results"], json!([]));
}

#[tokio::test]
async fn a_rate_limit_every_n_requests_answers_429_with_retry_after() {
    let fake = OpenAiFake::start().await;
    fake.seed_project("proj_1", "Main");
    fake.set_rate_limit(Some(3), 2);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let answer = send(&fake, "GET", "/organization/projects", None).await;
        if answer.status == 429 {
            assert_eq!(answer.retry_after.as_deref(), Some("2"));
            assert_eq!(assert_error(&answer, 429)["code"], "rate_limit_exceeded");
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429, 200]);
    assert_eq!(fake.call_count(), 7, "the 429s are requests too");
    fake.set_rate_limit(None, 0);
    for _ in 0..4 {
        assert_eq!(
            send(&fake, "GET", "/organization/projects", None)
                .await
                .status,
            200
        );
    }
}

#[tokio::test]
async fn mutators_change_the_organization_and_log_it() {
    let (fake, summary) = small_org().await;
    let project = summary
        .multi_key_service_accounts
        .iter()
        .map(|(project, _)| project.clone())
        .find(|project| !summary.archived_projects.contains(project))
        .expect("an active project with a multi-key service account");
    let account = summary
        .multi_key_service_accounts
        .iter()
        .find(|(p, _)| *p == project)
        .map(|(_, account)| account.clone())
        .expect("its account");
    let events_before = fake.audit_event_count();

    // A key added at OpenAI, with its scopes in the log.
    let added = KeySeed::new("key_added")
        .name("new")
        .created_at(NOW - 60)
        .scopes(&["api.model.request"]);
    fake.add_key(&project, &KeyOwner::ServiceAccount(account.clone()), added);
    assert!(fake.key_exists(&project, "key_added"));
    let created = get(
        &fake,
        "/organization/audit_logs?event_types[]=api_key.created&resource_ids[]=key_added",
    )
    .await;
    assert_eq!(
        created["data"][0]["api_key.created"],
        json!({"id": "key_added", "data": {"scopes": ["api.model.request"]}})
    );
    assert_eq!(created["data"][0]["project"]["id"], json!(project));

    // Used: `last_used_at` moves, the usage shows it.
    fake.mark_key_used(
        "key_added",
        NOW - 30,
        "embeddings",
        "text-embedding-3-small",
    );
    assert_eq!(
        fake.key(&project, "key_added").expect("key")["last_used_at"],
        NOW - 30
    );
    let usage = get(
        &fake,
        &format!(
            "/organization/usage/embeddings?start_time={}&end_time={NOW}&bucket_width=1h&group_by=api_key_id&group_by=model&api_key_ids=key_added",
            NOW - 3600
        ),
    )
    .await;
    assert_eq!(
        usage["data"][0]["results"][0]["model"],
        "text-embedding-3-small"
    );
    assert_eq!(usage["data"][0]["results"][0]["num_model_requests"], 1);
    fake.mark_key_used("key_added", NOW - 3000, "completions", "gpt-4o");
    assert_eq!(
        fake.key(&project, "key_added").expect("key")["last_used_at"],
        NOW - 30,
        "an earlier use does not move last_used_at back"
    );

    // A setting changed: the API shows it, the log says the project changed.
    fake.change_setting(&project, &Setting::hosted_tool("mcp", true));
    fake.change_setting(&project, &Setting::data_retention("none"));
    let tools = get(
        &fake,
        &format!("/organization/projects/{project}/hosted_tool_permissions"),
    )
    .await;
    assert_eq!(tools["mcp"]["enabled"], true);
    assert_eq!(
        fake.data_retention(&project).expect("project")["type"],
        "none"
    );

    // Deleted: the key, then the account with its other keys.
    assert!(fake.delete_key(&project, "key_added"));
    assert!(!fake.key_exists(&project, "key_added"));
    assert!(!fake.delete_key(&project, "key_added"));
    assert!(fake.delete_service_account(&project, &account));
    assert!(!fake.service_account_exists(&project, &account));
    let remaining = get(
        &fake,
        &format!("/organization/projects/{project}/api_keys?owner_project_access=any&limit=100"),
    )
    .await;
    assert!(
        remaining["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|key| key["owner"]["service_account"]["id"] != json!(account))
    );

    let types: Vec<String> = fake.audit_events()[events_before..]
        .iter()
        .map(|event| event["type"].as_str().expect("type").to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "api_key.created",
            "project.updated",
            "project.updated",
            "api_key.deleted",
            "service_account.deleted"
        ]
    );

    // Removed from the organization: the user's keys are orphaned.
    let (_, person) = summary.left_project[0].clone();
    assert!(fake.org_user(&person).is_some());
    assert!(fake.remove_org_user(&person));
    assert!(!fake.remove_org_user(&person));
    assert!(fake.org_user(&person).is_none());
    let deleted = fake.audit_events().pop().expect("an event");
    assert_eq!(deleted["user.deleted"], json!({"id": person}));
    assert!(deleted.get("project").is_none(), "an organization event");
}

#[tokio::test]
async fn changing_a_project_setting_through_the_api_is_logged() {
    let fake = OpenAiFake::start().await;
    fake.set_now(NOW);
    fake.seed_project("proj_1", "Main");
    let path = "/organization/projects/proj_1/hosted_tool_permissions";
    let answer = send(
        &fake,
        "POST",
        path,
        Some(json!({"mcp": {"enabled": false}})),
    )
    .await;
    assert_eq!(answer.status, 200);
    let models = send(
        &fake,
        "POST",
        "/organization/projects/proj_1/model_permissions",
        Some(json!({"mode": "allow_list", "model_ids": ["gpt-4o"]})),
    )
    .await;
    assert_eq!(models.status, 200);
    let events = fake.audit_events();
    assert_eq!(events.len(), 2);
    for event in events {
        assert_eq!(event["type"], "project.updated");
        assert_eq!(event["project.updated"], json!({"id": "proj_1"}));
        assert_eq!(event["actor"]["type"], "api_key");
        assert_eq!(event["effective_at"], NOW);
    }
}

#[tokio::test]
async fn a_large_organization_seeds_fast_and_pages_in_order() {
    let fake = OpenAiFake::start().await;
    fake.set_now(NOW);
    let started = Instant::now();
    let summary = fake.seed_org(&OrgSpec::scale(100_000, 2_000).at(NOW));
    let seeding = started.elapsed();
    assert_eq!((summary.keys, summary.projects), (100_000, 2_000));
    // A sanity bound for an unoptimised build on a shared machine, not a benchmark.
    assert!(
        seeding < Duration::from_secs(30),
        "seeding took {seeding:?}"
    );

    let http = client();
    let started = Instant::now();
    let (projects, mut requests) = walk_all(
        &fake,
        &http,
        "/organization/projects?include_archived=true",
        100,
    )
    .await;
    assert_eq!(projects.len(), 2_000);
    let mut keys = 0;
    let mut inactive = 0;
    for project in &projects {
        let id = project["id"].as_str().expect("id");
        let path = format!("/organization/projects/{id}/api_keys?owner_project_access=any");
        let (page, pages) = walk_all(&fake, &http, &path, 100).await;
        requests += pages;
        keys += page.len();
        inactive += page
            .iter()
            .filter(|key| key["owner_project_access"] == "inactive")
            .count();
    }
    assert_eq!(keys, 100_000);
    assert_eq!(inactive, summary.orphaned_keys.len());
    // The audit log, newest first, to its oldest key creation.
    let (created, pages) = walk_all(
        &fake,
        &http,
        "/organization/audit_logs?event_types[]=api_key.created",
        100,
    )
    .await;
    requests += pages;
    assert_eq!(created.len(), summary.keys + summary.deleted_keys.len());
    let walking = started.elapsed();
    assert!(
        walking < Duration::from_secs(180),
        "{requests} requests took {walking:?}"
    );
    eprintln!(
        "scale org: seeded in {seeding:?}; {requests} requests walked projects, keys and \
         key creations in {walking:?}"
    );
}
