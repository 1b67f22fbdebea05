//! Campaigns over a store of their own: parts per owner, scopes and their refusals, the
//! findings parts become (valid, redacted, the same each time), what intake admits, and parts
//! no run took.

use proptest::prelude::*;

use super::*;
use crate::inventory::{Facts, KeyOwner, Policy};

fn identity(id: &str, owner_email: Option<&str>, project: &str) -> Identity {
    let at = DateTime::from_timestamp(1_790_000_000, 0).expect("time");
    Identity {
        id: format!("project_key:{id}"),
        kind: Kind::ProjectKey,
        openai_id: id.to_owned(),
        facts: Facts {
            name: Some(format!("{id}-name")),
            project_id: Some(project.to_owned()),
            project_name: Some(format!("{project}-name")),
            owner: owner_email.map(|email| KeyOwner {
                kind: "user".to_owned(),
                id: Some(format!("user_{email}")),
                name: None,
                email: Some(email.to_owned()),
                role: None,
            }),
            created_at: Some(at),
            owner_project_access: Some("active".to_owned()),
            ..Facts::default()
        },
        first_seen: at,
        changed_at: at,
        deleted_at: None,
    }
}

fn owners() -> Owners {
    let config: crate::config::Config = toml::from_str(
        r#"
        [groups]
        secops = ["lead@example.com"]
        [teams.payments]
        emails = ["pay@example.com"]
        [owners]
        fallback = "group:secops"
        [[owners.rules]]
        project_id = "proj_pay"
        team = "payments"
        "#,
    )
    .expect("config");
    Owners::from_config(&config).expect("owners")
}

async fn campaigns(identities: &[Identity]) -> Campaigns {
    let store = Store::temporary().expect("store");
    let mut batch = Batch::new();
    for identity in identities {
        batch.put(Key::Identity(&identity.id), identity);
    }
    store.commit(batch).await.expect("commit");
    Campaigns::new(Inventory::new(store, Policy::default()), owners())
}

fn actor() -> quench_proto::Actor {
    quench_proto::Actor {
        via: quench_proto::Via::Api,
        id: "secops".to_owned(),
        name: None,
    }
}

fn start(name: &str, scope: Scope) -> Start {
    Start {
        name: name.to_owned(),
        scope,
        playbook: None,
    }
}

#[tokio::test]
async fn keys_are_grouped_by_their_owner_in_parts_of_at_most_twenty() {
    let mut identities: Vec<Identity> = (0..45)
        .map(|n| {
            identity(
                &format!("key_ann{n:02}"),
                Some("ann@example.com"),
                "proj_lab",
            )
        })
        .collect();
    identities.push(identity("key_bob", Some("bob@example.com"), "proj_lab"));
    // No user: the project's team answers; nowhere mapped: the fallback.
    identities.push(identity("key_ci", None, "proj_pay"));
    identities.push(identity("key_stray", None, "proj_other"));
    let campaigns = campaigns(&identities).await;
    let now = Utc::now();
    let campaign = campaigns
        .start(&start("Q4", Scope::default()), &actor(), now)
        .await
        .expect("started");
    assert_eq!(campaign.identities, 48);
    let parts = campaigns.parts(&campaign.id).expect("parts");
    let shape: Vec<(String, usize)> = parts
        .iter()
        .map(|part| (part.owner.clone(), part.items.len()))
        .collect();
    assert_eq!(
        shape,
        [
            ("ann@example.com".to_owned(), 20),
            ("ann@example.com".to_owned(), 20),
            ("ann@example.com".to_owned(), 5),
            ("bob@example.com".to_owned(), 1),
            ("group:secops".to_owned(), 1),
            ("team:payments".to_owned(), 1),
        ]
    );
    assert_eq!(campaign.parts, 6);
    assert!(campaign.unassigned.is_empty());
    // Each part is a valid finding the attestation playbook takes, the same each time.
    for part in &parts {
        let finding = part_finding(&campaign, part).expect("a valid finding");
        assert_eq!(finding.kind, FINDING_KIND);
        assert_eq!(finding.key, format!("campaign:{}:{}", campaign.id, part.n));
        let again = part_finding(&campaign, part).expect("again");
        assert_eq!(
            serde_json::to_vec(&finding).expect("json"),
            serde_json::to_vec(&again).expect("json")
        );
    }
    let team = parts
        .iter()
        .find(|part| part.owner == "team:payments")
        .expect("team part");
    let finding = part_finding(&campaign, team).expect("finding");
    assert_eq!(
        finding.owner.and_then(|owner| owner.team).as_deref(),
        Some("payments")
    );
    let first = &parts[0].items[0];
    assert_eq!(first["key_id"], "key_ann00");
    assert_eq!(first["project_id"], "proj_lab");
    assert_eq!(first["last_used"], "never");
    assert_eq!(first["expires"], "never");
    assert_eq!(first["scopes"], "unknown");
    // Started once, audited once.
    let audit: Vec<_> = campaigns
        .store()
        .audit_newest_first(None, 10, 100, |_| true)
        .expect("audit")
        .0;
    assert_eq!(audit.len(), 1);
}

/// A part no run took (its playbook disabled after the start) says so, rather than pending.
#[tokio::test]
async fn a_part_no_run_took_is_not_started() {
    let campaigns = campaigns(&[identity("key_a", Some("ann@example.com"), "proj_lab")]).await;
    let campaign = campaigns
        .start(&start("Q4", Scope::default()), &actor(), Utc::now())
        .await
        .expect("started");
    let state = |campaigns: &Campaigns| {
        let progress = campaigns
            .progress(&campaign.id)
            .expect("store")
            .expect("found");
        progress.items[0].state.clone()
    };
    assert_eq!(state(&campaigns), "pending");
    let outgoing = campaigns.unpublished(10).expect("store");
    assert_eq!(outgoing.len(), 1);
    campaigns
        .published(&outgoing, Utc::now() - chrono::Duration::minutes(5))
        .await
        .expect("recorded");
    assert!(campaigns.unpublished(10).expect("store").is_empty());
    campaigns.reconcile(Utc::now()).await.expect("reconcile");
    assert_eq!(state(&campaigns), "not_started");
    let progress = campaigns
        .progress(&campaign.id)
        .expect("store")
        .expect("found");
    assert_eq!(progress.totals.not_started, 1);
}

/// Intake takes a campaign's part only as the campaign made it.
#[tokio::test]
async fn only_a_campaigns_own_parts_are_admitted() {
    let campaigns = campaigns(&[identity("key_a", Some("ann@example.com"), "proj_lab")]).await;
    let campaign = campaigns
        .start(&start("Q4", Scope::default()), &actor(), Utc::now())
        .await
        .expect("started");
    let store = campaigns.store();
    let parts = campaigns.parts(&campaign.id).expect("parts");
    let finding = part_finding(&campaign, &parts[0]).expect("finding");
    assert_eq!(admit(store, &finding), Ok(()));
    let mut forged = finding.clone();
    forged.owner = Some(quench_proto::Owner {
        email: Some("mallory@example.com".to_owned()),
        ..Default::default()
    });
    assert!(admit(store, &forged).is_err_and(|why| why.contains("as the campaign made it")));
    let mut elsewhere = finding.clone();
    elsewhere.key = "campaign:nope:0".to_owned();
    assert!(admit(store, &elsewhere).is_err_and(|why| why.contains("no campaign")));
    let mut unkeyed = finding.clone();
    unkeyed.key = "anything".to_owned();
    assert!(admit(store, &unkeyed).is_err());
    let mut other = finding;
    other.kind = "openai.api_key.unused".to_owned();
    other.owner = None;
    assert_eq!(admit(store, &other), Ok(()));
}

#[tokio::test]
async fn a_scope_narrows_and_a_bad_one_is_refused_with_what_to_give() {
    let identities = [
        identity("key_a", Some("ann@example.com"), "proj_pay"),
        identity("key_b", Some("bob@example.com"), "proj_lab"),
        identity("key_c", None, "proj_pay"),
    ];
    let campaigns = campaigns(&identities).await;
    let now = Utc::now();
    let scoped = |scope: Scope| start("scoped", scope);
    let project = campaigns
        .start(
            &scoped(Scope {
                project: Some("proj_pay".to_owned()),
                ..Scope::default()
            }),
            &actor(),
            now,
        )
        .await
        .expect("started");
    assert_eq!(project.identities, 2);
    // By team: the owner chain's team. key_c has no user and its project maps to payments;
    // Ann has no team of her own, so her key in that project counts for it too; Bob's does not.
    let team = campaigns
        .start(
            &scoped(Scope {
                team: Some("payments".to_owned()),
                ..Scope::default()
            }),
            &actor(),
            now,
        )
        .await
        .expect("started");
    assert_eq!(team.identities, 2);
    for (scope, wanted) in [
        (
            Scope {
                team: Some("paymnets".to_owned()),
                ..Scope::default()
            },
            "no team `paymnets`",
        ),
        (
            Scope {
                risk: Some("leakd".to_owned()),
                ..Scope::default()
            },
            "is not a risk",
        ),
        (
            Scope {
                unused_for: Some("soon".to_owned()),
                ..Scope::default()
            },
            "not a duration",
        ),
    ] {
        let error = campaigns
            .start(&scoped(scope), &actor(), now)
            .await
            .expect_err("refused");
        assert!(matches!(error, StartError::Invalid(_)), "{error}");
        assert!(error.to_string().contains(wanted), "{error}");
    }
    let empty = campaigns
        .start(
            &scoped(Scope {
                project: Some("proj_none".to_owned()),
                ..Scope::default()
            }),
            &actor(),
            now,
        )
        .await
        .expect_err("nothing in scope");
    assert!(matches!(empty, StartError::Empty(_)), "{empty}");
    for name in ["", "   ", "a\u{7}bell", &"x".repeat(121)] {
        let error = campaigns
            .start(&start(name, Scope::default()), &actor(), now)
            .await
            .expect_err("a bad name");
        assert!(matches!(error, StartError::Invalid(_)), "{name:?}: {error}");
    }
}

fn items(count: usize, size: usize) -> Vec<Map<String, Value>> {
    (0..count)
        .map(|n| {
            let mut item = Map::new();
            item.insert("id".into(), format!("project_key:key_{n}").into());
            item.insert("label".into(), "x".repeat(size).into());
            item
        })
        .collect()
}

proptest! {
    /// Every item lands in exactly one part, in order; no part holds more than a message can
    /// or more evidence than a finding may.
    #[test]
    fn parts_hold_everything_within_the_limits(count in 0usize..120, size in 0usize..3000) {
        let all = items(count, size);
        let parts = split(all.clone());
        let flat: Vec<Map<String, Value>> = parts.iter().flatten().cloned().collect();
        prop_assert_eq!(flat, all);
        for part in &parts {
            prop_assert!(!part.is_empty() && part.len() <= PART_SIZE);
            let bytes = serde_json::to_vec(part).expect("json").len();
            prop_assert!(part.len() == 1 || bytes <= PART_EVIDENCE_BYTES + PART_SIZE);
        }
    }

    /// Whatever a campaign is named, its parts are valid findings that never carry a live
    /// key (a name or label is redacted like any finding's text).
    #[test]
    fn any_name_makes_a_valid_redacted_finding(
        name in "[^\\p{Cc}]{1,120}",
        label in "[^\\p{Cc}]{0,200}",
        secret in "sk-proj-[A-Za-z0-9_-]{40}",
    ) {
        let campaign = Campaign {
            id: "0193aa".to_owned(),
            name: format!("{name} {secret}"),
            scope: Scope::default(),
            playbook: DEFAULT_PLAYBOOK.to_owned(),
            started_by: "api:secops".to_owned(),
            started_at: DateTime::from_timestamp(1_790_000_000, 0).expect("time"),
            parts: 1,
            identities: 1,
            unassigned: Vec::new(),
            completed_at: None,
        };
        let mut item = Map::new();
        item.insert("id".into(), "project_key:key_1".into());
        item.insert("label".into(), format!("{label}{secret}").into());
        let owner = owners::ResolvedOwner {
            link: Link::KeyUser,
            recipient: Some("ann@example.com".to_owned()),
            ..owners::ResolvedOwner::default()
        };
        let part = Part::new(0, &owner, vec![item], None);
        let finding = part_finding(&campaign, &part).expect("a valid finding");
        let text = serde_json::to_string(&finding).expect("json");
        prop_assert!(!text.contains(&secret), "{}", text);
    }
}
