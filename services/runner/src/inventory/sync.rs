//! Keeping the inventory current: a full pass ([`Pass`], from one walk of the Admin API's
//! lists) is compared with what is stored and committed as **one** change set: new identities,
//! changed facts (each with its history entry), identities no longer listed marked deleted with
//! when. A pass that finds nothing new writes nothing. Between passes, audit-log events
//! ([`Inventory::apply_events`]) add keys, record scope changes (the only source of a key's
//! scopes) and mark deletions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AuditCursor, Change, Facts, FieldChange, Identity, Inventory, KeyOwner, Kind, META_STATE,
    ModelPolicy, ProjectRole, State,
};
use crate::connectors::openai::{EstateLists, ProjectSettings};
use crate::store::{Batch, Error, Key};

/// What one walk saw: identity id → (kind, OpenAI id, facts).
#[derive(Debug, Default)]
pub struct Pass {
    pub seen: BTreeMap<String, (Kind, String, Facts)>,
}

/// What a pass or a batch of events changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PassReport {
    pub at: DateTime<Utc>,
    /// Identities listed by this pass (deleted ones not counted).
    pub identities: usize,
    pub created: usize,
    pub changed: usize,
    pub deleted: usize,
    pub restored: usize,
    /// Identities whose only change was `last_used_at` (kept, not in their history).
    pub used: usize,
    /// Whether the pass wrote anything.
    pub wrote: bool,
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_i64()
        .and_then(|at| DateTime::from_timestamp(at, 0))
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

impl Pass {
    /// The identities in a walk's lists.
    pub fn from_lists(lists: &EstateLists) -> Pass {
        let mut pass = Pass::default();
        let mut project_names = BTreeMap::new();
        for project in &lists.projects {
            let Some(id) = project["id"].as_str() else {
                continue;
            };
            project_names.insert(id.to_owned(), text(&project["name"]));
            pass.add(
                Kind::Project,
                id,
                Facts {
                    name: text(&project["name"]),
                    created_at: time(&project["created_at"]),
                    status: text(&project["status"]),
                    ..Facts::default()
                },
            );
        }
        for (project, settings) in &lists.settings {
            if let Some((_, _, facts)) = pass.seen.get_mut(&Kind::Project.id(project)) {
                settings_facts(settings, facts);
            }
        }
        let project_name = |project: &str| project_names.get(project).cloned().flatten();
        for (project, key) in &lists.keys {
            let Some(id) = key["id"].as_str() else {
                continue;
            };
            let owner = &key["owner"];
            let details = match owner["type"].as_str() {
                Some("user") => &owner["user"],
                Some("service_account") => &owner["service_account"],
                _ => &Value::Null,
            };
            pass.add(
                Kind::ProjectKey,
                id,
                Facts {
                    name: text(&key["name"]),
                    project_id: Some(project.clone()),
                    project_name: project_name(project),
                    owner: owner["type"].as_str().map(|kind| KeyOwner {
                        kind: kind.to_owned(),
                        id: text(&details["id"]),
                        name: text(&details["name"]),
                        email: text(&details["email"]),
                        role: text(&details["role"]),
                    }),
                    redacted_value: text(&key["redacted_value"]),
                    created_at: time(&key["created_at"]),
                    last_used_at: time(&key["last_used_at"]),
                    expires_at: time(&key["expires_at"]),
                    owner_project_access: text(&key["owner_project_access"]),
                    capabilities: lists
                        .usage
                        .get(id)
                        .map(|used| used.families.clone())
                        .unwrap_or_default(),
                    model_families: lists
                        .usage
                        .get(id)
                        .map(|used| used.models.clone())
                        .unwrap_or_default(),
                    ..Facts::default()
                },
            );
        }
        for (project, account) in &lists.service_accounts {
            let Some(id) = account["id"].as_str() else {
                continue;
            };
            pass.add(
                Kind::ServiceAccount,
                id,
                Facts {
                    name: text(&account["name"]),
                    project_id: Some(project.clone()),
                    project_name: project_name(project),
                    role: text(&account["role"]),
                    created_at: time(&account["created_at"]),
                    ..Facts::default()
                },
            );
        }
        for key in &lists.admin_keys {
            let Some(id) = key["id"].as_str() else {
                continue;
            };
            let owner = &key["owner"];
            pass.add(
                Kind::AdminKey,
                id,
                Facts {
                    name: text(&key["name"]),
                    owner: Some(KeyOwner {
                        kind: text(&owner["type"]).unwrap_or_else(|| "user".to_owned()),
                        id: text(&owner["id"]),
                        name: text(&owner["name"]),
                        email: text(&owner["email"]),
                        role: text(&owner["role"]),
                    }),
                    redacted_value: text(&key["redacted_value"]),
                    created_at: time(&key["created_at"]),
                    last_used_at: time(&key["last_used_at"]),
                    expires_at: time(&key["expires_at"]),
                    ..Facts::default()
                },
            );
        }
        let mut roles: BTreeMap<String, Vec<ProjectRole>> = BTreeMap::new();
        for (project, user) in &lists.project_users {
            if let (Some(id), Some(role)) = (user["id"].as_str(), user["role"].as_str()) {
                roles.entry(id.to_owned()).or_default().push(ProjectRole {
                    project_id: project.clone(),
                    role: role.to_owned(),
                });
            }
        }
        for user in &lists.users {
            let Some(id) = user["id"].as_str() else {
                continue;
            };
            let mut project_roles = roles.remove(id).unwrap_or_default();
            project_roles.sort();
            pass.add(
                Kind::User,
                id,
                Facts {
                    name: text(&user["name"]),
                    email: text(&user["email"]),
                    role: text(&user["role"]),
                    created_at: time(&user["added_at"]),
                    project_roles,
                    ..Facts::default()
                },
            );
        }
        pass
    }

    fn add(&mut self, kind: Kind, openai_id: &str, facts: Facts) {
        self.seen
            .insert(kind.id(openai_id), (kind, openai_id.to_owned(), facts));
    }
}

/// A project's data settings as facts: hosted tools on or off, the model policy, the data
/// retention type, the active certificates (what OpenAI refused to say stays empty).
fn settings_facts(settings: &ProjectSettings, facts: &mut Facts) {
    if let Some(Value::Object(tools)) = &settings.hosted_tools {
        facts.hosted_tools = tools
            .iter()
            .filter_map(|(tool, value)| Some((tool.clone(), value["enabled"].as_bool()?)))
            .collect();
    }
    if let Some(models) = &settings.model_permissions
        && let Some(mode) = models["mode"].as_str()
    {
        facts.model_policy = Some(ModelPolicy {
            mode: mode.to_owned(),
            model_ids: models["model_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect(),
        });
    }
    facts.data_retention = settings
        .data_retention
        .as_ref()
        .and_then(|retention| text(&retention["type"]));
    facts.certificates = settings
        .certificates
        .iter()
        .flatten()
        .filter(|certificate| certificate["active"] != false)
        .filter_map(|certificate| text(&certificate["id"]))
        .collect();
}

/// The changed fields between two sets of facts, `last_used_at` left out.
fn diff(before: &Facts, after: &Facts) -> BTreeMap<String, FieldChange> {
    let before = before.fields();
    let after = after.fields();
    let mut changes = BTreeMap::new();
    for name in before.keys().chain(after.keys()) {
        if name == "last_used_at" || changes.contains_key(name) {
            continue;
        }
        let from = before.get(name).cloned().unwrap_or(Value::Null);
        let to = after.get(name).cloned().unwrap_or(Value::Null);
        if from != to {
            changes.insert(name.clone(), FieldChange { from, to });
        }
    }
    changes
}

/// Changes gathered for one commit, with the sequence numbers they take.
struct ChangeSet {
    state: State,
    batch: Batch,
    report: PassReport,
}

impl ChangeSet {
    fn new(state: State, at: DateTime<Utc>) -> ChangeSet {
        ChangeSet {
            state,
            batch: Batch::new(),
            report: PassReport {
                at,
                ..PassReport::default()
            },
        }
    }

    fn record(&mut self, identity: &Identity, change: Change) {
        self.state.sequence += 1;
        self.batch.put(
            Key::IdentityHistory(&identity.id, self.state.sequence),
            &change,
        );
        self.batch.put(Key::Identity(&identity.id), identity);
        self.report.wrote = true;
    }

    fn put_quietly(&mut self, identity: &Identity) {
        self.batch.put(Key::Identity(&identity.id), identity);
        self.report.wrote = true;
    }
}

impl Inventory {
    /// Commits what `pass` changed as one change set; writes nothing when nothing changed.
    pub async fn apply_pass(&self, pass: Pass, now: DateTime<Utc>) -> Result<PassReport, Error> {
        let mut set = ChangeSet::new(self.state()?, now);
        let mut seen = pass.seen;
        // Read lazily: a pass holds what it saw and what changed, not the whole stored estate.
        for item in self.store.identities::<Identity>(None) {
            let (id, mut identity) = item?;
            match seen.remove(&id) {
                Some((_, _, mut facts)) => {
                    set.report.identities += 1;
                    // Scopes come from the audit log only; a list never says them.
                    if facts.scopes.is_none() {
                        facts.scopes = identity.facts.scopes.clone();
                    }
                    // What a key used is kept: the usage window only says what is recent.
                    facts
                        .capabilities
                        .extend(identity.facts.capabilities.iter().cloned());
                    facts
                        .model_families
                        .extend(identity.facts.model_families.iter().cloned());
                    let fields = diff(&identity.facts, &facts);
                    let restored = identity.deleted_at.is_some();
                    if fields.is_empty() && !restored {
                        if identity.facts.last_used_at != facts.last_used_at {
                            identity.facts = facts;
                            set.report.used += 1;
                            set.put_quietly(&identity);
                        }
                        continue;
                    }
                    identity.facts = facts;
                    identity.changed_at = now;
                    identity.deleted_at = None;
                    let what = if restored {
                        set.report.restored += 1;
                        "restored"
                    } else {
                        set.report.changed += 1;
                        "changed"
                    };
                    set.record(
                        &identity,
                        Change {
                            at: now,
                            what: what.to_owned(),
                            source: "sync".to_owned(),
                            fields,
                        },
                    );
                }
                None if identity.deleted_at.is_none() => {
                    identity.deleted_at = Some(now);
                    set.report.deleted += 1;
                    set.record(
                        &identity,
                        Change {
                            at: now,
                            what: "deleted".to_owned(),
                            source: "sync".to_owned(),
                            fields: BTreeMap::new(),
                        },
                    );
                }
                None => {}
            }
        }
        for (id, (kind, openai_id, facts)) in seen {
            set.report.identities += 1;
            set.report.created += 1;
            let fields = diff(&Facts::default(), &facts);
            let identity = Identity {
                id,
                kind,
                openai_id,
                facts,
                first_seen: now,
                changed_at: now,
                deleted_at: None,
            };
            set.record(
                &identity,
                Change {
                    at: now,
                    what: "created".to_owned(),
                    source: "sync".to_owned(),
                    fields,
                },
            );
        }
        self.commit(set).await
    }

    async fn commit(&self, mut set: ChangeSet) -> Result<PassReport, Error> {
        if set.report.wrote {
            set.batch.put(Key::InventoryMeta(META_STATE), &set.state);
            self.store.commit(set.batch).await?;
        }
        Ok(set.report)
    }

    /// Applies audit-log events (oldest first, as [`crate::connectors::openai::WATCHED_EVENTS`]
    /// lists them) not applied before, and moves the cursor past them.
    pub async fn apply_events(
        &self,
        events: &[Value],
        now: DateTime<Utc>,
    ) -> Result<PassReport, Error> {
        let state = self.state()?;
        // The first read of the log (no cursor yet) is a backfill of what the passes cannot
        // see (scopes): it annotates identities a pass found and creates none, so keys
        // created and deleted long ago do not come and go.
        let backfill = state.audit_cursor.is_none();
        let mut cursor = state.audit_cursor.clone().unwrap_or_default();
        let mut set = ChangeSet::new(state, now);
        // Identities changed by earlier events of this batch, not yet committed.
        let mut pending: BTreeMap<String, Identity> = BTreeMap::new();
        for event in events {
            let (Some(event_id), Some(at)) = (event["id"].as_str(), event["effective_at"].as_i64())
            else {
                continue;
            };
            if at < cursor.effective_at
                || (at == cursor.effective_at && cursor.ids.iter().any(|id| id == event_id))
            {
                continue;
            }
            if at > cursor.effective_at {
                cursor = AuditCursor {
                    effective_at: at,
                    ids: Vec::new(),
                };
            }
            cursor.ids.push(event_id.to_owned());
            let Some(event_type) = event["type"].as_str() else {
                continue;
            };
            let when = DateTime::from_timestamp(at, 0).unwrap_or(now);
            let details = &event[event_type];
            let Some(object) = details["id"].as_str() else {
                continue;
            };
            let project = event["project"]["id"].as_str();
            let (kind, changed) = match event_type.split_once('.') {
                Some(("api_key", change)) => {
                    // An admin key's events name no project.
                    let admin = Kind::AdminKey.id(object);
                    if project.is_none() && self.known(&pending, &admin)? {
                        (Kind::AdminKey, change)
                    } else {
                        (Kind::ProjectKey, change)
                    }
                }
                Some(("service_account", change)) => (Kind::ServiceAccount, change),
                _ => continue,
            };
            let id = kind.id(object);
            let existing = match pending.remove(&id) {
                Some(identity) => Some(identity),
                None => self.identity(&id)?,
            };
            if existing.is_none() && (backfill || changed != "created") {
                continue;
            }
            let mut identity = existing.clone().unwrap_or_else(|| Identity {
                id: id.clone(),
                kind,
                openai_id: object.to_owned(),
                facts: Facts {
                    project_id: project.map(str::to_owned),
                    ..Facts::default()
                },
                first_seen: when,
                changed_at: when,
                deleted_at: None,
            });
            let before = identity.facts.clone();
            let source = format!("audit_log:{event_id}");
            let what = match changed {
                "deleted" => {
                    if identity.deleted_at.is_some() || existing.is_none() {
                        continue;
                    }
                    identity.deleted_at = Some(when);
                    set.report.deleted += 1;
                    "deleted"
                }
                "created" | "updated" => {
                    let scopes = if changed == "created" {
                        &details["data"]["scopes"]
                    } else {
                        &details["changes_requested"]["scopes"]
                    };
                    if kind != Kind::ServiceAccount
                        && let Some(scopes) = scopes.as_array()
                    {
                        identity.facts.scopes = Some(
                            scopes
                                .iter()
                                .filter_map(|scope| scope.as_str().map(str::to_owned))
                                .collect(),
                        );
                    }
                    if kind == Kind::ServiceAccount
                        && let Some(role) = details["data"]["role"]
                            .as_str()
                            .or(details["changes_requested"]["role"].as_str())
                    {
                        identity.facts.role = Some(role.to_owned());
                    }
                    if existing.is_none() {
                        set.report.created += 1;
                        "created"
                    } else if identity.facts != before {
                        set.report.changed += 1;
                        "changed"
                    } else {
                        continue;
                    }
                }
                _ => continue,
            };
            identity.changed_at = when;
            let fields = diff(&before, &identity.facts);
            set.record(
                &identity,
                Change {
                    at: when,
                    what: what.to_owned(),
                    source,
                    fields,
                },
            );
            pending.insert(id, identity);
        }
        if set.state.audit_cursor.as_ref() != Some(&cursor) {
            set.state.audit_cursor = Some(cursor);
            set.report.wrote = true;
        }
        self.commit(set).await
    }

    fn known(&self, pending: &BTreeMap<String, Identity>, id: &str) -> Result<bool, Error> {
        Ok(pending.contains_key(id) || self.store.contains(Key::Identity(id))?)
    }

    /// Where the audit-log watcher goes on from: the time of the newest event applied, or
    /// `None` before the first watch (which reads the whole log, for the keys' scopes).
    pub fn audit_since(&self) -> Result<Option<i64>, Error> {
        Ok(self.state()?.audit_cursor.map(|cursor| cursor.effective_at))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::store::Store;

    /// Any JSON, shallow, with the field names OpenAI's objects use so the shapes get near.
    fn json_value() -> impl Strategy<Value = Value> {
        let names = prop::sample::select(vec![
            "id",
            "name",
            "type",
            "owner",
            "user",
            "service_account",
            "email",
            "created_at",
            "last_used_at",
            "expires_at",
            "status",
            "role",
            "effective_at",
            "project",
            "api_key.created",
            "api_key.updated",
            "api_key.deleted",
            "data",
            "scopes",
            "changes_requested",
            "enabled",
            "mode",
            "model_ids",
            "mcp",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z_.]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(names.clone(), inner, 0..6).prop_map(|map| {
                    Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever a server answers, reading a walk's lists never panics, and every identity
        /// it yields has an id of its kind.
        #[test]
        fn lists_from_a_hostile_server_never_panic(
            projects in prop::collection::vec(json_value(), 0..4),
            keys in prop::collection::vec(json_value(), 0..4),
            users in prop::collection::vec(json_value(), 0..4),
            tools in json_value(),
        ) {
            let lists = EstateLists {
                projects: projects.clone(),
                keys: keys.into_iter().map(|key| ("proj_1".to_owned(), key)).collect(),
                project_users: users.iter().cloned().map(|user| ("proj_1".to_owned(), user)).collect(),
                users,
                admin_keys: projects,
                service_accounts: Vec::new(),
                usage: Default::default(),
                settings: vec![(
                    "proj_1".to_owned(),
                    ProjectSettings {
                        hosted_tools: Some(tools.clone()),
                        model_permissions: Some(tools.clone()),
                        data_retention: Some(tools),
                        certificates: None,
                    },
                )],
            };
            let pass = Pass::from_lists(&lists);
            for (id, (kind, openai_id, _)) in &pass.seen {
                prop_assert_eq!(id, &kind.id(openai_id));
            }
        }

        /// Whatever the audit log holds, applying it never panics and never moves the cursor
        /// back.
        #[test]
        fn audit_events_from_a_hostile_server_never_panic(
            events in prop::collection::vec(json_value(), 0..6),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            runtime.block_on(async {
                let inventory = Inventory::new(Store::temporary().expect("store"), super::super::Policy::default());
                let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
                // A first read (the backfill), then the same events as news.
                inventory.apply_events(&[json!({"id": "e0", "effective_at": 5, "type": "api_key.deleted", "api_key.deleted": {"id": "k"}})], now).await.expect("apply");
                let before = inventory.audit_since().expect("cursor");
                inventory.apply_events(&events, now).await.expect("apply");
                let after = inventory.audit_since().expect("cursor");
                assert!(after >= before, "{before:?} → {after:?}");
            });
        }
    }
}
