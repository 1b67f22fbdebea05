//! The estate inventory against the OpenAI fake over real HTTP: a pass records every project,
//! key, service account, admin key and user with its history and derived risks; a pass that
//! finds nothing new writes nothing; a changed expiry and a deleted key are seen by the next
//! pass (the deleted one kept, marked); the audit log brings scopes; a rate-limited page is
//! waited out; and `quench serve` syncs by itself, serves the inventory through the API and the
//! CLI, and publishes a finding for a new risk that the shipped playbook takes up.

use std::time::Duration;

use chrono::{DateTime, Utc};
use quench_runner::config::Secret;
use quench_runner::connectors::openai::OpenAi;
use quench_runner::inventory::{Identity, Inventory, Pass, Policy, View};
use quench_runner::store::Store;
use serde_json::{Value, json};

use crate::support;
use crate::support::openai_fake::{AuditEvent, Fault, KeySeed, OpenAiFake, Role};

const DAY: i64 = 86_400;
/// The fake's clock and the inventory's "now": 2026-12-01T00:00:00Z.
const NOW: i64 = 1_796_083_200;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("time")
}

/// An organization with one of each case: a key in use, one unused for 120 days, one never
/// used, one whose owner left the project, a service account's key, an admin key.
async fn organization() -> OpenAiFake {
    let fake = OpenAiFake::start().await;
    fake.set_now(NOW);
    fake.seed_project("proj_pay", "prod-payments");
    fake.seed_project("proj_lab", "research-lab");
    fake.seed_archived_project("proj_old", "old-stuff");
    fake.seed_user("proj_pay", "user_ann", "ann@example.com", Role::Owner);
    fake.seed_user("proj_lab", "user_ann", "ann@example.com", Role::Member);
    fake.seed_user("proj_pay", "user_bob", "bob@example.com", Role::Member);
    fake.seed_org_user("user_eve", "eve@example.com");
    fake.seed_key(
        "proj_pay",
        "user_ann",
        KeySeed::new("key_active")
            .name("checkout")
            .created_at(NOW - 30 * DAY)
            .last_used_at(NOW - DAY)
            .expires_at(NOW + 60 * DAY),
    );
    fake.seed_key(
        "proj_pay",
        "user_bob",
        KeySeed::new("key_unused")
            .name("old-batch")
            .created_at(NOW - 400 * DAY)
            .last_used_at(NOW - 120 * DAY),
    );
    fake.seed_key(
        "proj_lab",
        "user_ann",
        KeySeed::new("key_never")
            .name("notebook")
            .created_at(NOW - 20 * DAY),
    );
    // Eve is in the organization but not in the project: her key is orphaned.
    fake.seed_key(
        "proj_lab",
        "user_eve",
        KeySeed::new("key_orphan")
            .name("eve-script")
            .created_at(NOW - 50 * DAY)
            .last_used_at(NOW - 2 * DAY),
    );
    fake.seed_service_account(
        "proj_pay",
        "svc_ci",
        "ci",
        KeySeed::new("key_ci")
            .name("ci")
            .created_at(NOW - 10 * DAY)
            .last_used_at(NOW - DAY)
            .expires_at(NOW + 300 * DAY),
    );
    fake.seed_admin_key("key_admin", "terraform");
    fake.push_audit_event(
        AuditEvent::new(
            "api_key.created",
            NOW - 10 * DAY,
            json!({"id": "key_ci", "data": {"scopes": ["api.model.request"]}}),
        )
        .project("proj_pay"),
    );
    fake.push_audit_event(
        AuditEvent::new(
            "api_key.updated",
            NOW - 5 * DAY,
            json!({"id": "key_unused", "changes_requested": {"scopes": []}}),
        )
        .project("proj_pay"),
    );
    fake
}

fn client(fake: &OpenAiFake) -> OpenAi {
    OpenAi::new(&fake.base_url(), Secret::new(fake.admin_key()), None)
        .expect("the fake's base URL is valid")
}

async fn sync(
    inventory: &Inventory,
    openai: &OpenAi,
    at: DateTime<Utc>,
) -> quench_runner::inventory::PassReport {
    let lists = openai.estate().await.expect("the walk succeeds");
    let report = inventory
        .apply_pass(Pass::from_lists(&lists), at)
        .await
        .expect("the pass commits");
    let since = inventory.audit_since().expect("cursor").unwrap_or(0);
    let events = openai.watched_events_since(since).await.expect("audit log");
    inventory
        .apply_events(&events, at)
        .await
        .expect("events apply");
    report
}

fn view(inventory: &Inventory, id: &str) -> View {
    inventory
        .view(id, now())
        .expect("store")
        .unwrap_or_else(|| panic!("{id} is in the inventory"))
}

fn risks(view: &View) -> Vec<&str> {
    view.risks.iter().map(|risk| risk.id.as_str()).collect()
}

#[tokio::test]
async fn a_pass_records_the_estate_with_risks_and_history() {
    let fake = organization().await;
    let openai = client(&fake);
    let inventory = Inventory::new(Store::temporary().expect("store"), Policy::default());
    let first = sync(&inventory, &openai, now()).await;
    assert!(first.wrote);
    // 3 projects, 5 project keys, 1 service account, 1 admin key (plus the fake's own), users.
    let all: Vec<(String, Identity)> = inventory
        .store()
        .identities::<Identity>(None)
        .collect::<Result<_, _>>()
        .expect("store");
    let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    for expected in [
        "project:proj_pay",
        "project:proj_lab",
        "project:proj_old",
        "project_key:key_active",
        "project_key:key_unused",
        "project_key:key_never",
        "project_key:key_orphan",
        "project_key:key_ci",
        "service_account:svc_ci",
        "admin_key:key_admin",
        "user:user_ann",
        "user:user_eve",
    ] {
        assert!(ids.contains(&expected), "{expected} missing from {ids:?}");
    }
    assert_eq!(
        risks(&view(&inventory, "project_key:key_active")),
        Vec::<&str>::new()
    );
    let unused = view(&inventory, "project_key:key_unused");
    assert_eq!(
        risks(&unused),
        ["unused", "no_expiry", "unrestricted_scopes"]
    );
    assert!(
        unused.risks[0].fact.contains("120d ago"),
        "{:?}",
        unused.risks
    );
    assert_eq!(
        unused.identity.facts.scopes,
        Some(Vec::new()),
        "scopes from the audit log"
    );
    assert_eq!(
        risks(&view(&inventory, "project_key:key_never")),
        ["never_used", "no_expiry"]
    );
    let orphan = view(&inventory, "project_key:key_orphan");
    assert_eq!(risks(&orphan), ["no_expiry", "owner_left"]);
    assert!(
        orphan.risks[1].fact.contains("eve@example.com"),
        "{:?}",
        orphan.risks
    );
    assert_eq!(
        view(&inventory, "project_key:key_ci").identity.facts.scopes,
        Some(vec!["api.model.request".to_owned()])
    );
    // Seeded long ago and never used.
    assert_eq!(
        risks(&view(&inventory, "admin_key:key_admin")),
        ["never_used", "admin_key"]
    );
    let ann = view(&inventory, "user:user_ann");
    assert_eq!(ann.identity.facts.email.as_deref(), Some("ann@example.com"));
    assert_eq!(ann.identity.facts.project_roles.len(), 2);
    let created = inventory
        .history("project_key:key_unused")
        .expect("history");
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(
        (created[0].1.what.as_str(), created[0].1.source.as_str()),
        ("created", "sync")
    );
    // The scopes, from the audit log's event, at its time.
    assert_eq!(created[1].1.what, "changed");
    assert!(created[1].1.source.starts_with("audit_log:"), "{created:?}");
    assert_eq!(
        created[1].1.fields.keys().collect::<Vec<_>>(),
        ["scopes"],
        "{created:?}"
    );
    assert_eq!(created[1].1.at, now() - chrono::Duration::days(5));

    // Nothing new: nothing written, not even bookkeeping.
    let state = inventory.state().expect("state");
    let again = sync(&inventory, &openai, now()).await;
    assert!(!again.wrote, "{again:?}");
    assert_eq!((again.created, again.changed, again.deleted), (0, 0, 0));
    assert_eq!(inventory.state().expect("state"), state);

    // An expiry set, a key deleted, a key used: the next pass sees each.
    let later = now() + chrono::Duration::hours(1);
    let update = quench_common::http::http_client()
        .post(format!(
            "{}/organization/projects/proj_pay/api_keys/key_unused",
            fake.base_url()
        ))
        .bearer_auth(fake.admin_key())
        .json(&json!({"expires_in_seconds": 14 * DAY}))
        .send()
        .await
        .expect("update");
    assert!(update.status().is_success(), "{}", update.status());
    let delete = quench_common::http::http_client()
        .delete(format!(
            "{}/organization/projects/proj_lab/api_keys/key_never",
            fake.base_url()
        ))
        .bearer_auth(fake.admin_key())
        .send()
        .await
        .expect("delete");
    assert!(delete.status().is_success(), "{}", delete.status());
    fake.set_key_last_used("key_active", NOW + 1800);
    let third = sync(&inventory, &openai, later).await;
    assert_eq!(
        (third.changed, third.deleted, third.used),
        (1, 1, 1),
        "{third:?}"
    );
    let history = inventory
        .history("project_key:key_unused")
        .expect("history");
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(history[2].1.what, "changed");
    assert!(
        history[2].1.fields.contains_key("expires_at"),
        "{history:?}"
    );
    assert!(!risks(&view(&inventory, "project_key:key_unused")).contains(&"no_expiry"));
    let gone = view(&inventory, "project_key:key_never");
    assert_eq!(
        gone.identity.deleted_at,
        Some(later),
        "kept, marked deleted"
    );
    assert!(gone.risks.is_empty());
    assert_eq!(
        inventory.history("project_key:key_never").expect("history")[1]
            .1
            .what,
        "deleted"
    );
    // The key used again changed no history.
    assert_eq!(
        inventory
            .history("project_key:key_active")
            .expect("history")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_rate_limited_page_is_waited_out() {
    let fake = organization().await;
    let openai = client(&fake);
    let inventory = Inventory::new(Store::temporary().expect("store"), Policy::default());
    fake.fail_next_on(
        "/v1/organization/projects/proj_lab/api_keys",
        2,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    );
    let report = sync(&inventory, &openai, now()).await;
    assert!(report.created > 10, "{report:?}");
    assert!(
        inventory
            .identity("project_key:key_orphan")
            .expect("store")
            .is_some()
    );
    let asked = fake.calls_to("GET", "/v1/organization/projects/proj_lab/api_keys");
    assert_eq!(asked.len(), 3, "two 429s, then the page");
}

#[tokio::test]
async fn filters_and_paging() {
    use quench_runner::inventory::{Filter, Kind};
    let fake = organization().await;
    let openai = client(&fake);
    let inventory = Inventory::new(Store::temporary().expect("store"), Policy::default());
    sync(&inventory, &openai, now()).await;
    let ids = |filter: &Filter| -> Vec<String> {
        let (views, _) = inventory
            .list(filter, None, 1000, 100_000, now())
            .expect("list");
        views.into_iter().map(|view| view.identity.id).collect()
    };
    let keys = Filter {
        kind: Some(Kind::ProjectKey),
        ..Filter::default()
    };
    assert_eq!(ids(&keys).len(), 5);
    assert_eq!(
        ids(&Filter {
            risk: Some("owner_left".to_owned()),
            ..Filter::default()
        }),
        ["project_key:key_orphan"]
    );
    assert_eq!(
        ids(&Filter {
            unused_for: Some(chrono::Duration::days(90)),
            kind: Some(Kind::ProjectKey),
            ..Filter::default()
        }),
        ["project_key:key_never", "project_key:key_unused"]
    );
    assert_eq!(
        ids(&Filter {
            expiring_within: Some(chrono::Duration::days(90)),
            ..Filter::default()
        }),
        ["project_key:key_active"]
    );
    assert_eq!(
        ids(&Filter {
            owner: Some("bob@example.com".to_owned()),
            ..Filter::default()
        }),
        ["project_key:key_unused"]
    );
    let in_lab = ids(&Filter {
        project: Some("proj_lab".to_owned()),
        ..Filter::default()
    });
    assert!(
        in_lab.contains(&"project:proj_lab".to_owned()),
        "{in_lab:?}"
    );
    assert!(in_lab.contains(&"user:user_ann".to_owned()), "{in_lab:?}");
    assert!(
        in_lab.contains(&"project_key:key_never".to_owned()),
        "{in_lab:?}"
    );
    // Paging: two at a time covers the same keys, in order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (views, next) = inventory
            .list(&keys, cursor.as_deref(), 2, 100_000, now())
            .expect("list");
        paged.extend(views.into_iter().map(|view| view.identity.id));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, ids(&keys));
}

async fn api_get(listen: &str, token: &str, path: &str) -> (u16, Value) {
    let response = quench_common::http::http_client()
        .get(format!("http://{listen}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `quench serve` with an admin key syncs by itself: the API and the CLI list the estate, and a
/// new risk becomes a finding that the shipped `review-unused-openai-key` takes up (once).
#[tokio::test(flavor = "multi_thread")]
async fn the_service_syncs_serves_and_publishes_risks() {
    let fake = organization().await;
    let nats = support::NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "inventory-test-token";
    let sha = support::hex(&<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let config = format!(
        r#"
[openai]
base_url = "{base}"
admin_key = "{admin_key}"

[inventory]
interval = "1h"
watch_interval = "10s"

[groups]
secops = ["secops@example.com"]

[[api.tokens]]
name = "viewer"
role = "viewer"
sha256 = "{sha}"
"#,
        base = fake.base_url(),
        admin_key = fake.admin_key(),
    );
    let playbooks = support::root().join("workflows");
    let service = tokio::task::block_in_place(|| {
        support::Service::launch(&nats.url(), &playbooks, dir.path(), &[], Some(&config), &[])
    });
    let listen = service.listen.clone();
    let listen = listen.as_str();
    support::eventually_async(Duration::from_secs(20), "the first pass", || async {
        let (status, body) = api_get(listen, token, "/api/v1/inventory/status").await;
        status == 200 && !body["last_pass"].is_null()
    })
    .await;
    let (status, page) = api_get(listen, token, "/api/v1/inventory?risk=owner_left").await;
    assert_eq!(status, 200, "{page}");
    let listed: Vec<&str> = page["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .filter_map(|identity| identity["id"].as_str())
        .collect();
    assert_eq!(listed, ["project_key:key_orphan"]);
    let (status, detail) = api_get(listen, token, "/api/v1/inventory/project_key:key_unused").await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["history"][0]["what"], "created");
    let (status, _) = api_get(listen, token, "/api/v1/inventory?unused_for=soon").await;
    assert_eq!(status, 400);

    // The CLI, as a person would run it.
    let output = std::process::Command::new(support::quench_bin())
        .args(["inventory", "list", "--risk", "unused", "--api"])
        .arg(format!("http://{}", service.listen))
        .env("QUENCH_TOKEN", token)
        .output()
        .expect("quench inventory runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("project_key:key_unused"), "{text}");
    assert!(text.contains("bob@example.com"), "{text}");

    // The unused key's finding reaches the shipped review playbook, once.
    let log = dir.path().join("serve.log");
    let _print_log = support::print_log_on_failure(&log);
    support::eventually_async(Duration::from_secs(20), "the review run", || async {
        let (_, runs) = api_get(
            listen,
            token,
            "/api/v1/runs?playbook=review-unused-openai-key",
        )
        .await;
        runs["runs"].as_array().is_some_and(|runs| {
            runs.iter()
                .any(|run| run["key"] == "openai:project_key:key_unused")
        })
    })
    .await;
    let (_, runs) = api_get(
        listen,
        token,
        "/api/v1/runs?key=openai:project_key:key_unused",
    )
    .await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "{runs}");
}

/// The risks of `id`, by id.
fn risks_of(inventory: &Inventory, id: &str, at: DateTime<Utc>) -> Vec<String> {
    inventory
        .view(id, at)
        .expect("store")
        .unwrap_or_else(|| panic!("{id} is in the inventory"))
        .risks
        .into_iter()
        .map(|risk| risk.id)
        .collect()
}

/// A realistic organization (dozens of projects, people who left, service accounts with several
/// keys, admin keys, scopes only in the audit log): every case the fake seeded carries the risk
/// it should, keys of archived projects and keys deleted before the first pass are not
/// invented, and between passes the watcher sees a new key and a deletion.
#[tokio::test]
async fn a_realistic_organization() {
    use crate::support::openai_fake::{KeyOwner, OrgSpec};
    let fake = OpenAiFake::start().await;
    let summary = fake.seed_org(&OrgSpec::small().at(NOW));
    fake.set_now(NOW);
    let openai = client(&fake);
    let inventory = Inventory::new(Store::temporary().expect("store"), Policy::default());
    let report = sync(&inventory, &openai, now()).await;
    assert!(report.created > 50, "{report:?}");
    let archived = |project: &str| summary.archived_projects.iter().any(|id| id == project);
    let live = |keys: &[crate::support::openai_fake::KeyRef]| -> Vec<String> {
        keys.iter()
            .filter(|key| !archived(&key.project_id))
            .map(|key| format!("project_key:{}", key.key_id))
            .collect()
    };
    let expect = |keys: &[String], risk: &str| {
        assert!(!keys.is_empty(), "the fake seeds some keys with {risk}");
        for id in keys {
            let risks = risks_of(&inventory, id, now());
            assert!(
                risks.iter().any(|r| r == risk),
                "{id}: {risks:?} lacks {risk}"
            );
        }
    };
    expect(&live(&summary.orphaned_keys), "owner_left");
    expect(&live(&summary.stale_keys), "unused");
    expect(&live(&summary.unrestricted_keys), "unrestricted_scopes");
    for id in live(&summary.restricted_keys) {
        assert!(
            !risks_of(&inventory, &id, now()).contains(&"unrestricted_scopes".to_owned()),
            "{id}"
        );
    }
    for id in &summary.unused_admin_keys {
        expect(&[format!("admin_key:{id}")], "admin_key");
    }
    for project in &summary.archived_projects {
        let identity = inventory
            .identity(&format!("project:{project}"))
            .expect("store")
            .expect("archived projects are listed");
        assert_eq!(identity.facts.status.as_deref(), Some("archived"));
    }
    for key in &summary.deleted_keys {
        assert!(
            inventory
                .identity(&format!("project_key:{}", key.key_id))
                .expect("store")
                .is_none(),
            "{} was deleted before the first pass: the backfill does not invent it",
            key.key_id
        );
    }
    let keys = inventory
        .list(
            &quench_runner::inventory::Filter {
                kind: Some(quench_runner::inventory::Kind::ProjectKey),
                ..Default::default()
            },
            None,
            1000,
            100_000,
            now(),
        )
        .expect("list")
        .0;
    let in_archived = keys
        .iter()
        .filter(|view| {
            view.identity
                .facts
                .project_id
                .as_deref()
                .is_some_and(archived)
        })
        .count();
    assert_eq!(in_archived, 0, "archived projects' keys are not walked");

    // Between passes: the watcher alone sees a key created and one deleted.
    let project = summary.default_project.clone();
    fake.add_key(
        &project,
        &KeyOwner::ServiceAccount("svc_new".to_owned()),
        KeySeed::new("key_brand_new")
            .name("brand-new")
            .created_at(NOW + 60)
            .scopes(&["api.model.request"]),
    );
    let gone = keys
        .iter()
        .find(|view| view.identity.facts.project_id.as_deref() == Some(project.as_str()))
        .expect("a key in the default project")
        .identity
        .openai_id
        .clone();
    assert!(fake.delete_key(&project, &gone));
    let since = inventory
        .audit_since()
        .expect("cursor")
        .expect("a cursor after the first watch");
    let events = openai.watched_events_since(since).await.expect("audit log");
    let watched = inventory
        .apply_events(&events, now())
        .await
        .expect("events apply");
    // The key and its new service account.
    assert_eq!((watched.created, watched.deleted), (2, 1), "{watched:?}");
    assert!(
        inventory
            .identity("service_account:svc_new")
            .expect("store")
            .is_some()
    );
    let new = inventory
        .identity("project_key:key_brand_new")
        .expect("store")
        .expect("the watcher added the new key");
    assert_eq!(new.facts.scopes, Some(vec!["api.model.request".to_owned()]));
    assert!(
        inventory
            .identity(&format!("project_key:{gone}"))
            .expect("store")
            .expect("kept")
            .deleted_at
            .is_some()
    );
}

/// `kill -9` while a pass walks the lists: nothing of the pass was written; the next start
/// walks again and records each identity once.
#[tokio::test(flavor = "multi_thread")]
async fn a_pass_killed_midway_is_done_again_once() {
    let fake = organization().await;
    // The walk stalls on the second project's keys.
    fake.fail_next_on(
        "/v1/organization/projects/proj_lab/api_keys",
        1,
        Fault::Slow(Duration::from_secs(30)),
    );
    let nats = support::NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "inventory-kill-token";
    let config = format!(
        "[openai]\nbase_url = \"{}\"\nadmin_key = \"{}\"\n\n[inventory]\npublish = []\n\n\
         [[api.tokens]]\nname = \"viewer\"\nrole = \"viewer\"\nsha256 = \"{}\"\n",
        fake.base_url(),
        fake.admin_key(),
        support::hex(&<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes())),
    );
    let playbooks = dir.path().join("playbooks");
    std::fs::create_dir_all(&playbooks).expect("playbooks dir");
    let mut service = tokio::task::block_in_place(|| {
        support::Service::launch(&nats.url(), &playbooks, dir.path(), &[], Some(&config), &[])
    });
    fake.received("GET", "/v1/organization/projects/proj_lab/api_keys")
        .await;
    service.kill();
    {
        let store = Store::open(&quench_runner::store::StoreConfig::new(
            dir.path().join("state"),
        ))
        .expect("the store opens after kill -9");
        let inventory = Inventory::new(store, Policy::default());
        let written: Vec<String> = inventory
            .store()
            .identities::<Identity>(None)
            .map(|item| item.expect("readable").0)
            .collect();
        assert!(
            written.is_empty(),
            "a pass that did not finish wrote nothing: {written:?}"
        );
    }
    tokio::task::block_in_place(|| service.spawn());
    let listen = service.listen.clone();
    let listen = listen.as_str();
    support::eventually_async(
        Duration::from_secs(20),
        "the pass after the restart",
        || async {
            let (status, body) = api_get(listen, token, "/api/v1/inventory/status").await;
            status == 200 && !body["last_pass"].is_null()
        },
    )
    .await;
    service.terminate();
    let store = Store::open(&quench_runner::store::StoreConfig::new(
        dir.path().join("state"),
    ))
    .expect("store");
    let inventory = Inventory::new(store, Policy::default());
    for id in [
        "project_key:key_active",
        "project_key:key_orphan",
        "user:user_ann",
    ] {
        let history = inventory.history(id).expect("history");
        let created = history
            .iter()
            .filter(|(_, change)| change.what == "created")
            .count();
        assert_eq!(created, 1, "{id}: {history:?}");
    }
}

/// The fake's small organization, synced once by an inventory whose `prod-*` class denies mcp
/// and web_search and allows the data retention types given (any when none).
async fn prod_class(
    data_retention: &[&str],
) -> (
    OpenAiFake,
    support::openai_fake::OrgSummary,
    OpenAi,
    Inventory,
) {
    let fake = OpenAiFake::start().await;
    let summary = fake.seed_org(&support::openai_fake::OrgSpec::small().at(NOW));
    fake.set_now(NOW);
    let openai = client(&fake);
    let mut policy = Policy::default();
    policy.projects.push(
        quench_runner::inventory::risk::ProjectRule::new(quench_common::config::ProjectClass {
            matches: "prod-*".to_owned(),
            deny_tools: vec!["mcp".to_owned(), "web_search".to_owned()],
            data_retention: data_retention
                .iter()
                .map(|kind| (*kind).to_owned())
                .collect(),
            require_model_allow_list: false,
        })
        .expect("the glob compiles"),
    );
    let inventory = Inventory::new(Store::temporary().expect("store"), policy);
    sync(&inventory, &openai, now()).await;
    (fake, summary, openai, inventory)
}

/// Data exposure and drift: a `[[policy.projects]]` class for `prod-*` (no mcp, no web_search,
/// zero data retention) makes every prod project the fake seeded with mcp or web_search on, or
/// without zero retention, a `data_exposure` risk naming the setting and the rule, and its
/// finding goes out once; a setting changed between two passes is a drift finding (once), a
/// setting never read is not.
#[tokio::test]
async fn data_exposure_and_drift() {
    use crate::support::openai_fake::Setting;
    use quench_runner::inventory::Kind;
    let (fake, summary, openai, inventory) = prod_class(&["zero_data_retention"]).await;
    let archived = |project: &String| summary.archived_projects.contains(project);
    let exposed: std::collections::BTreeSet<&String> = summary
        .prod_mcp_projects
        .iter()
        .chain(&summary.prod_web_search_projects)
        .chain(&summary.prod_without_zero_retention)
        .filter(|project| !archived(project))
        .collect();
    assert!(!exposed.is_empty(), "the fake seeds exposed prod projects");
    for project in &exposed {
        let view = view(&inventory, &format!("project:{project}"));
        let risk = view
            .risks
            .iter()
            .find(|risk| risk.id == "data_exposure")
            .unwrap_or_else(|| panic!("{project}: {:?}", view.risks));
        assert!(risk.fact.contains("prod-*"), "{risk:?}");
    }
    for project in &summary.prod_mcp_projects {
        if !archived(project) {
            let fact = &view(&inventory, &format!("project:{project}")).risks[0].fact;
            assert!(fact.contains("mcp"), "{project}: {fact}");
        }
    }
    let due = inventory
        .findings_due(&["data_exposure".to_owned()], true, now(), 10_000)
        .expect("due");
    let kinds: Vec<&str> = due.iter().map(|out| out.finding.kind.as_str()).collect();
    assert_eq!(kinds.len(), exposed.len(), "{kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|kind| *kind == "openai.project.data_exposure")
    );
    inventory.published(&due).await.expect("recorded");
    assert!(
        inventory
            .findings_due(&["data_exposure".to_owned()], true, now(), 10_000)
            .expect("due")
            .is_empty(),
        "published once"
    );

    // Drift: mcp turned on in a project where it was off, seen by the next pass.
    let quiet = inventory
        .list(
            &quench_runner::inventory::Filter {
                kind: Some(Kind::Project),
                ..Default::default()
            },
            None,
            1000,
            100_000,
            now(),
        )
        .expect("list")
        .0
        .into_iter()
        .find(|view| view.identity.facts.hosted_tools.get("mcp") == Some(&false))
        .expect("a project with mcp off");
    let project = quiet.identity.openai_id.clone();
    fake.change_setting(&project, &Setting::hosted_tool("mcp", true));
    let report = sync(&inventory, &openai, now() + chrono::Duration::hours(1)).await;
    assert_eq!(report.changed, 1, "{report:?}");
    let due = inventory
        .findings_due(&[], true, now(), 10_000)
        .expect("due");
    assert_eq!(due.len(), 1, "{due:?}");
    let drift = &due[0].finding;
    assert_eq!(drift.kind, "openai.project.drift");
    assert_eq!(drift.resource.id, project);
    assert_eq!(
        drift.evidence["changes"]["hosted_tools"]["to"]["mcp"],
        json!(true),
        "{:?}",
        drift.evidence
    );
    inventory.published(&due).await.expect("recorded");
    assert!(
        inventory
            .findings_due(&[], true, now(), 10_000)
            .expect("due")
            .is_empty()
    );
}

/// A key's first use of a usage family or a model family it never used before is drift: the first pass records
/// what it used (no finding), a later pass that sees a new family publishes one
/// `openai.api_key.drift` finding naming it; families seen before, or going quiet, are not.
#[tokio::test]
async fn a_key_using_a_new_capability_is_drift() {
    let fake = organization().await;
    // The usage window is read against the real clock.
    let recent = Utc::now().timestamp() - 3600;
    fake.mark_key_used("key_active", recent, "completions", "gpt-4o");
    let openai = client(&fake);
    let inventory = Inventory::new(Store::temporary().expect("store"), Policy::default());
    sync(&inventory, &openai, now()).await;
    let key = inventory
        .identity("project_key:key_active")
        .expect("store")
        .expect("listed");
    assert_eq!(
        key.facts.capabilities.iter().collect::<Vec<_>>(),
        ["completions"]
    );
    assert_eq!(
        key.facts.model_families.iter().collect::<Vec<_>>(),
        ["gpt-4o"]
    );
    assert!(
        inventory
            .findings_due(&[], true, now(), 100)
            .expect("due")
            .is_empty(),
        "what a key is first seen using is not drift"
    );

    fake.mark_key_used("key_active", recent + 60, "file_search_calls", "gpt-4o");
    fake.mark_key_used(
        "key_active",
        recent + 60,
        "completions",
        "gpt-4o-2024-08-06",
    );
    fake.mark_key_used("key_active", recent + 60, "completions", "o3-mini");
    sync(&inventory, &openai, now() + chrono::Duration::hours(1)).await;
    let due = inventory.findings_due(&[], true, now(), 100).expect("due");
    assert_eq!(due.len(), 1, "{due:?}");
    let drift = &due[0].finding;
    assert_eq!(drift.kind, "openai.api_key.drift");
    assert!(drift.title.contains("file_search_calls"), "{}", drift.title);
    assert!(
        drift.title.contains("o3-mini"),
        "a new model family: {}",
        drift.title
    );
    assert!(!drift.title.contains("completions"), "{}", drift.title);
    assert!(
        !drift.title.contains("gpt-4o"),
        "the same model family: {}",
        drift.title
    );
    assert_eq!(drift.resource.project_id.as_deref(), Some("proj_pay"));
    inventory.published(&due).await.expect("recorded");
    // Nothing new: no more drift, and the pass writes nothing.
    let again = sync(&inventory, &openai, now() + chrono::Duration::hours(2)).await;
    assert!(!again.wrote, "{again:?}");
    assert!(
        inventory
            .findings_due(&[], true, now(), 100)
            .expect("due")
            .is_empty()
    );
}

/// The inventory's exposure and drift findings reach the shipped playbooks, with the real OpenAI
/// connector: the evidence names the tools to turn off, so an owner's "turn_off" turns off
/// exactly those in the project (the fake's settings), and the next pass sees the project keep
/// to its class; a project someone fixed by hand gets a `resolved` finding that cancels its open
/// run; each change is a drift finding whose question says what changed.
#[tokio::test]
async fn exposure_and_drift_reach_their_playbooks() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use crate::support::openai_fake::Setting;
    use quench_proto::Finding;
    use quench_runner::engine::RunStatus;
    let (fake, summary, openai, inventory) = prod_class(&[]).await;
    let publish = ["data_exposure".to_owned()];
    let due = inventory
        .findings_due(&publish, true, now(), 10_000)
        .expect("due");
    inventory.published(&due).await.expect("recorded");
    let exposed: Vec<Finding> = due.iter().map(|out| out.finding.clone()).collect();
    assert!(
        exposed.len() >= 2,
        "two exposed projects at least: {summary:?}"
    );
    let tools_on = |finding: &Finding| -> Vec<String> {
        serde_json::from_value(finding.evidence["exposure"]["tools_on"].clone())
            .expect("the evidence lists the tools")
    };

    let source = |name: &str| {
        std::fs::read_to_string(support::root().join("workflows").join(name))
            .expect("the shipped playbook")
    };
    let client = Arc::new(client(&fake));
    let harness = support::Harness::build(
        Store::temporary().expect("store"),
        &[
            &source("contain-project-data-exposure.yaml"),
            &source("confirm-openai-drift.yaml"),
        ],
        support::start_time(),
        BTreeMap::new(),
        move |actions| quench_runner::connectors::openai::register(actions, client),
        None,
        |_| {},
    )
    .await;
    let runs: Vec<String> = harness
        .ingest(&exposed)
        .await
        .iter()
        .map(support::started)
        .collect();
    let (answered, fixed) = ((&exposed[0], &runs[0]), (&exposed[1], &runs[1]));
    let question = harness.gate(answered.1, "ask").question;
    for tool in tools_on(answered.0) {
        assert!(question.contains(&tool), "{question}");
    }
    assert!(question.contains("prod-*"), "{question}");

    // Secops turns the denied tools off: the project's other tools stay as they were.
    let before = fake
        .hosted_tool_permissions(&answered.0.resource.id)
        .expect("the project's tools");
    harness
        .answer(answered.1, "ask", "turn_off", "lead@example.com")
        .await;
    assert_eq!(harness.run(answered.1).status, RunStatus::Completed);
    let after = fake
        .hosted_tool_permissions(&answered.0.resource.id)
        .expect("the project's tools");
    for tool in quench_common::config::HOSTED_TOOLS {
        let expected = if tools_on(answered.0).iter().any(|on| on == tool) {
            json!({"enabled": false})
        } else {
            before[tool].clone()
        };
        assert_eq!(after[tool], expected, "{tool}: {before} → {after}");
    }
    // Someone turns the other project's tools off by hand.
    for tool in tools_on(fixed.0) {
        fake.change_setting(&fixed.0.resource.id, &Setting::hosted_tool(&tool, false));
    }

    sync(&inventory, &openai, now() + chrono::Duration::hours(1)).await;
    let due = inventory
        .findings_due(&publish, true, now(), 10_000)
        .expect("due");
    let kinds: BTreeMap<(String, String), String> = due
        .iter()
        .map(|out| {
            (
                (out.finding.kind.clone(), out.finding.resource.id.clone()),
                format!("{:?}", out.finding.status).to_lowercase(),
            )
        })
        .collect();
    for project in [&answered.0.resource.id, &fixed.0.resource.id] {
        let exposure = ("openai.project.data_exposure".to_owned(), project.clone());
        assert_eq!(
            kinds.get(&exposure).map(String::as_str),
            Some("resolved"),
            "{kinds:?}"
        );
        let drift = ("openai.project.drift".to_owned(), project.clone());
        assert!(kinds.contains_key(&drift), "{kinds:?}");
    }
    let findings: Vec<Finding> = due.iter().map(|out| out.finding.clone()).collect();
    let outcomes = harness.ingest(&findings).await;
    assert_eq!(harness.run(fixed.1).status, RunStatus::Cancelled);
    assert_eq!(harness.run(answered.1).status, RunStatus::Completed);
    // Each drift's question says which tools went off.
    for (finding, outcome) in findings.iter().zip(&outcomes) {
        if finding.kind != "openai.project.drift" {
            continue;
        }
        let run = support::started(outcome);
        assert_eq!(harness.run(&run).playbook, "confirm-openai-drift");
        let question = harness.gate(&run, "ask").question;
        let source = exposed
            .iter()
            .find(|exposed| exposed.resource.id == finding.resource.id)
            .expect("a project turned off");
        let (_, off) = question
            .split_once("turned off: ")
            .expect("tools turned off");
        for tool in tools_on(source) {
            assert!(off.contains(&tool), "{question}");
        }
    }
}
