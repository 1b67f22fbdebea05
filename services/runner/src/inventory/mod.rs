//! The estate inventory: every OpenAI project, project API key, service account, admin key and
//! user of the organization, as state rather than findings. A sync pass (`sync`) walks the Admin
//! API's lists and commits what changed as one change set; between passes the audit-log watcher
//! applies key and service-account events (and is the only source of a key's scopes). Each
//! identity carries its history (created, changed fields, deleted with when — never forgotten),
//! and risks are derived from its facts when read (`risk`), each naming the fact it comes from.
//! What people say about an identity (owner, purpose) lives beside it under
//! [`Key::Attributes`], which the sync never writes.
//!
//! Everything here lives in the store's `Estate` partition: one sequence of changes for the
//! whole organization, because a pass is one change set over all of it.

pub mod findings;
pub mod risk;
pub mod sync;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Error, Key, Store};

pub use findings::{Outgoing, Published};
pub use risk::{Policy, Risk};
pub use sync::{Pass, PassReport};

/// What kind of identity a record is; the first part of its id (`project_key:key_abc`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Project,
    ProjectKey,
    ServiceAccount,
    AdminKey,
    User,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Project,
        Kind::ProjectKey,
        Kind::ServiceAccount,
        Kind::AdminKey,
        Kind::User,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Project => "project",
            Kind::ProjectKey => "project_key",
            Kind::ServiceAccount => "service_account",
            Kind::AdminKey => "admin_key",
            Kind::User => "user",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The inventory id of OpenAI object `openai_id` of this kind.
    pub fn id(self, openai_id: &str) -> String {
        format!("{}:{openai_id}", self.as_str())
    }
}

/// Who owns a key, as OpenAI says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyOwner {
    /// `user` or `service_account`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: Option<String>,
}

/// A user's role in one project.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct ProjectRole {
    pub project_id: String,
    pub role: String,
}

/// What OpenAI says about an identity: the part a sync compares. Fields a kind does not have
/// stay empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Facts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The project a key or service account belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_name: Option<String>,
    /// A key's owner (a project key: a user or a service account; an admin key: a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<KeyOwner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// `None`: never used (or not said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// `None`: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// `active` or `inactive` (the key's owner left the project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_project_access: Option<String>,
    /// A key's scopes, known only from the audit log (`api_key.created` / `api_key.updated`);
    /// an empty list is unrestricted. `None`: not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// A user's organization role, a service account's project role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A user's roles in projects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub project_roles: Vec<ProjectRole>,
    /// A project's status (`active`, `archived`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// A project's hosted tools: name → on. Empty when not read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosted_tools: BTreeMap<String, bool>,
    /// A project's model policy: `allow_list` or `deny_list`, and its model ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_policy: Option<ModelPolicy>,
    /// A project's data retention type (`zero_data_retention`, `organization_default`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_retention: Option<String>,
    /// A project's active certificates (mutual TLS), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    /// The usage families a key has been seen using (`completions`, `embeddings`,
    /// `file_search_calls`, …), from the usage API; only ever grows. A family added after the
    /// first is drift.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub capabilities: std::collections::BTreeSet<String>,
    /// The model families a key has been seen using (`gpt-4o`, `o3-mini`), likewise.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub model_families: std::collections::BTreeSet<String>,
}

/// A project's model allow or deny list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelPolicy {
    pub mode: String,
    pub model_ids: Vec<String>,
}

/// The facts of a project that decide where its data goes, and of a key what it reaches: a
/// change to any (from a known value) is drift.
pub const DATA_SETTINGS: &[&str] = &[
    "hosted_tools",
    "model_policy",
    "data_retention",
    "certificates",
    "capabilities",
    "model_families",
];

impl Facts {
    /// Every field as JSON, by name (what a change records).
    fn fields(&self) -> BTreeMap<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }
}

/// One identity as stored under [`Key::Identity`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Identity {
    /// `<kind>:<OpenAI id>`.
    pub id: String,
    pub kind: Kind,
    /// The OpenAI object's id.
    pub openai_id: String,
    pub facts: Facts,
    /// When the inventory first saw it.
    pub first_seen: DateTime<Utc>,
    /// When its facts last changed (not counting `last_used_at`).
    pub changed_at: DateTime<Utc>,
    /// When a pass or an audit event found it gone; it stays listed, marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// One change to an identity, under [`Key::IdentityHistory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Change {
    pub at: DateTime<Utc>,
    /// `created`, `changed`, `deleted` or `restored` (seen again after being deleted).
    pub what: String,
    /// What saw it: `sync` or `audit_log:<event id>`.
    pub source: String,
    /// Changed fields: name → `{from, to}` (for `created`, every field's `to`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldChange {
    pub from: Value,
    pub to: Value,
}

/// The inventory's bookkeeping under [`Key::InventoryMeta`]`(`[`META_STATE`]`)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct State {
    /// The last change sequence number given out.
    pub sequence: u64,
    /// The audit log read so far: the newest event's `effective_at` and the ids of the events at
    /// that second (so an event at the same second is neither lost nor applied twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_cursor: Option<AuditCursor>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditCursor {
    pub effective_at: i64,
    #[serde(default)]
    pub ids: Vec<String>,
}

pub(crate) const META_STATE: &str = "state";

/// Reads of the inventory (the API, the CLI, the evidence pack and the sync share them).
#[derive(Debug, Clone)]
pub struct Inventory {
    store: Store,
    policy: Policy,
}

/// Which identities a listing wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kind: Option<Kind>,
    pub project: Option<String>,
    /// An owner's email (or user / service-account id).
    pub owner: Option<String>,
    /// Identities with this risk.
    pub risk: Option<String>,
    /// Keys not used for at least this long (never-used keys included).
    pub unused_for: Option<chrono::Duration>,
    /// Keys whose owner left the project or that name no owner.
    pub unowned: bool,
    /// Keys that expire within this long from now (expired ones excluded).
    pub expiring_within: Option<chrono::Duration>,
    /// Deleted identities too.
    pub include_deleted: bool,
}

/// An identity with what is derived from it, as listed.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct View {
    #[serde(flatten)]
    pub identity: Identity,
    pub risks: Vec<Risk>,
    /// What people said about it (owner, purpose), when anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
}

impl Inventory {
    pub fn new(store: Store, policy: Policy) -> Inventory {
        Inventory { store, policy }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn state(&self) -> Result<State, Error> {
        Ok(self
            .store
            .get(Key::InventoryMeta(META_STATE))?
            .unwrap_or_default())
    }

    pub fn identity(&self, id: &str) -> Result<Option<Identity>, Error> {
        self.store.get(Key::Identity(id))
    }

    /// One identity with its risks and attributes.
    pub fn view(&self, id: &str, now: DateTime<Utc>) -> Result<Option<View>, Error> {
        let Some(identity) = self.identity(id)? else {
            return Ok(None);
        };
        let context = risk::Context::load(&self.store)?;
        Ok(Some(self.view_of(identity, &context, now)?))
    }

    fn view_of(
        &self,
        identity: Identity,
        context: &risk::Context,
        now: DateTime<Utc>,
    ) -> Result<View, Error> {
        let risks = risk::assess(&identity, &self.policy, context, now);
        let attributes = self.store.get(Key::Attributes(&identity.id))?;
        Ok(View {
            identity,
            risks,
            attributes,
        })
    }

    pub fn history(&self, id: &str) -> Result<Vec<(u64, Change)>, Error> {
        self.store.identity_history(id)
    }

    /// A page of identities matching `filter` in id order after `after`: at most `limit`,
    /// examining at most `budget` records; the cursor to go on from when there may be more.
    pub fn list(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
        budget: usize,
        now: DateTime<Utc>,
    ) -> Result<(Vec<View>, Option<String>), Error> {
        let context = risk::Context::load(&self.store)?;
        let mut out = Vec::new();
        let mut examined = 0;
        let start = match (after, filter.kind) {
            (Some(after), _) => Some(after.to_owned()),
            // Ids begin with their kind: start at the kind's first.
            (None, Some(kind)) => Some(format!("{}:", kind.as_str())),
            (None, None) => None,
        };
        for item in self.store.identities::<Identity>(start.as_deref()) {
            let (id, identity) = item?;
            if let Some(kind) = filter.kind
                && identity.kind != kind
            {
                // Ids sort by kind first: past the kind's last, nothing more can match.
                if identity.kind.as_str() > kind.as_str() {
                    return Ok((out, None));
                }
                continue;
            }
            examined += 1;
            if self.matches(&identity, filter, &context, now) {
                out.push(self.view_of(identity, &context, now)?);
                if out.len() >= limit {
                    return Ok((out, Some(id)));
                }
            }
            if examined >= budget {
                return Ok((out, Some(id)));
            }
        }
        Ok((out, None))
    }

    fn matches(
        &self,
        identity: &Identity,
        filter: &Filter,
        context: &risk::Context,
        now: DateTime<Utc>,
    ) -> bool {
        let facts = &identity.facts;
        if identity.deleted_at.is_some() && !filter.include_deleted {
            return false;
        }
        if let Some(project) = &filter.project {
            let in_project = facts.project_id.as_deref() == Some(project)
                || (identity.kind == Kind::Project && identity.openai_id == *project)
                || facts
                    .project_roles
                    .iter()
                    .any(|role| role.project_id == *project);
            if !in_project {
                return false;
            }
        }
        if let Some(owner) = &filter.owner {
            let owned = facts.owner.as_ref().is_some_and(|key_owner| {
                key_owner.email.as_deref() == Some(owner) || key_owner.id.as_deref() == Some(owner)
            });
            if !owned {
                return false;
            }
        }
        if let Some(unused_for) = filter.unused_for {
            if !matches!(identity.kind, Kind::ProjectKey | Kind::AdminKey) {
                return false;
            }
            if facts
                .last_used_at
                .is_some_and(|used| used > now - unused_for)
            {
                return false;
            }
        }
        if filter.unowned && !risk::unowned(identity) {
            return false;
        }
        if let Some(within) = filter.expiring_within {
            match facts.expires_at {
                Some(expires) if expires > now && expires <= now + within => {}
                _ => return false,
            }
        }
        if let Some(wanted) = &filter.risk {
            let risks = risk::assess(identity, &self.policy, context, now);
            if !risks.iter().any(|risk| risk.id == *wanted) {
                return false;
            }
        }
        true
    }
}
