//! A realistic organization for the estate inventory's tests and benchmark: [`OpenAiFake::seed_org`]
//! fills the fake from an [`OrgSpec`] (a seed, sizes, a reference time) with projects (some
//! archived), people with organization and project roles (some who left a project, some removed
//! from the organization), project keys owned by people and by service accounts (several per
//! account), admin keys, project settings, certificates, the audit log of all of it, and usage.
//! The same spec always gives the same organization; [`OrgSummary`] says what was seeded and
//! names the interesting cases, so tests assert against it instead of hard-coding ids.
//!
//! Also here: the changes a test makes "at OpenAI" while quench watches ([`Setting`],
//! [`OpenAiFake::delete_key`], [`OpenAiFake::add_key`], [`OpenAiFake::mark_key_used`], …), each
//! logged in the audit log as OpenAI would log it.
//!
//! Choices the references leave open:
//! - Keys are created over the two years before the reference time; a key is used recently,
//!   unused for 100 days or more, or never used; some have `expires_at` (a few already past).
//! - Scopes are what the audit log says: every key has an `api_key.created` event with
//!   `data.scopes` (empty: unrestricted), some an `api_key.updated` that widened them to `[]`
//!   or narrowed them. Usage rows only use what a key's scopes allow
//!   (`workflows/data/usage-scopes.yaml`): a read-only key has none.
//! - Admin keys are logged as `tenant.admin_api_key.created` (the only admin-key event type in
//!   the spec, so it needs `tenant_only=true`), as `demo::seed` does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::state::{Certificate, Controls, HOSTED_TOOLS, Owner, PROJECT_RETENTION_TYPES, State};
use super::{KeySeed, OpenAiFake, Role, USAGE_ENDPOINTS, UsageSeed};

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// What [`OpenAiFake::seed_org`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSpec {
    /// Everything random is drawn from this seed.
    pub seed: u64,
    /// Projects, the default project included.
    pub projects: usize,
    /// Project API keys, over all projects.
    pub keys: usize,
    /// People in the organization (before some are removed).
    pub users: usize,
    /// Admin API keys besides the fake's own.
    pub admin_keys: usize,
    /// Organization certificates.
    pub certificates: usize,
    /// Usage rows per recently used key.
    pub usage_per_key: usize,
    /// The reference time (Unix seconds); `None`: the fake's clock when seeding.
    pub now: Option<i64>,
}

impl OrgSpec {
    /// Dozens of projects and keys, for end-to-end tests.
    pub fn small() -> OrgSpec {
        OrgSpec {
            seed: 18,
            projects: 24,
            keys: 96,
            users: 30,
            admin_keys: 3,
            certificates: 4,
            usage_per_key: 3,
            now: None,
        }
    }

    /// `keys` keys over `projects` projects (e.g. 100,000 over 2,000), for benchmarks.
    pub fn scale(keys: usize, projects: usize) -> OrgSpec {
        OrgSpec {
            seed: 18,
            projects,
            keys,
            users: (projects / 2).clamp(20, 5_000),
            admin_keys: 10,
            certificates: 20,
            usage_per_key: 1,
            now: None,
        }
    }

    /// The same sizes from another seed.
    pub fn with_seed(self, seed: u64) -> OrgSpec {
        OrgSpec { seed, ..self }
    }

    /// The same organization relative to `now` (Unix seconds).
    pub fn at(self, now: i64) -> OrgSpec {
        OrgSpec {
            now: Some(now),
            ..self
        }
    }
}

/// A project API key, by project and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRef {
    /// The key's project.
    pub project_id: String,
    /// The key's id.
    pub key_id: String,
}

/// What [`OpenAiFake::seed_org`] put into the fake: counts, and the ids of the cases a test
/// looks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgSummary {
    /// The reference time everything is relative to.
    pub now: i64,
    /// Projects, archived ones included.
    pub projects: usize,
    /// Archived projects.
    pub archived_projects: Vec<String>,
    /// The organization's default project (never archived).
    pub default_project: String,
    /// Members of the organization now.
    pub users: usize,
    /// Organization owners (org role `owner`).
    pub owners: Vec<String>,
    /// People removed from the organization whose keys remain (`owner_project_access:
    /// inactive` everywhere).
    pub removed_users: Vec<String>,
    /// People who left a project but are still in the organization: (project, user).
    pub left_project: Vec<(String, String)>,
    /// Active project memberships.
    pub memberships: usize,
    /// Service accounts.
    pub service_accounts: usize,
    /// Service accounts with more than one key: (project, service account).
    pub multi_key_service_accounts: Vec<(String, String)>,
    /// Project API keys.
    pub keys: usize,
    /// Keys owned by people.
    pub user_keys: usize,
    /// Keys owned by service accounts.
    pub service_account_keys: usize,
    /// Keys whose owner has no access to the project any more.
    pub orphaned_keys: Vec<KeyRef>,
    /// Keys never used (`last_used_at: null`).
    pub never_used_keys: Vec<KeyRef>,
    /// Keys last used 100 days or more before `now`.
    pub stale_keys: Vec<KeyRef>,
    /// Keys with an `expires_at` (past or future).
    pub expiring_keys: Vec<KeyRef>,
    /// Keys whose `expires_at` has passed.
    pub expired_keys: Vec<KeyRef>,
    /// Keys whose recorded scopes are restricted.
    pub restricted_keys: Vec<KeyRef>,
    /// Keys whose recorded scopes are `[]`: every permission.
    pub unrestricted_keys: Vec<KeyRef>,
    /// Keys an `api_key.updated` event widened to `[]`.
    pub widened_keys: Vec<KeyRef>,
    /// Keys that were created and deleted before `now` (only the audit log knows them).
    pub deleted_keys: Vec<KeyRef>,
    /// Admin API keys seeded (the fake's own not counted).
    pub admin_keys: Vec<String>,
    /// Of those, the ones never used.
    pub unused_admin_keys: Vec<String>,
    /// Projects with the `mcp` hosted tool on.
    pub mcp_projects: Vec<String>,
    /// Projects with `web_search` on.
    pub web_search_projects: Vec<String>,
    /// `prod-*` projects with `mcp` on.
    pub prod_mcp_projects: Vec<String>,
    /// `prod-*` projects with `web_search` on.
    pub prod_web_search_projects: Vec<String>,
    /// `prod-*` projects without zero data retention.
    pub prod_without_zero_retention: Vec<String>,
    /// Projects with a model allow list.
    pub allow_list_projects: Vec<String>,
    /// Organization certificates.
    pub certificates: Vec<String>,
    /// Projects with at least one certificate configured.
    pub projects_with_certificates: Vec<String>,
    /// Audit events seeded (tenant events included).
    pub audit_events: usize,
    /// Usage rows seeded.
    pub usage_rows: usize,
}

/// A project setting changed as an administrator would change it in the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// A hosted tool on or off.
    HostedTool {
        /// One of the spec's hosted tools.
        tool: &'static str,
        /// On or off.
        enabled: bool,
    },
    /// The model policy.
    Models {
        /// `allow_list` or `deny_list`.
        mode: &'static str,
        /// The models listed.
        model_ids: Vec<String>,
    },
    /// The hard spend limit in cents per month; `None` removes it.
    SpendLimit(Option<i64>),
    /// One of the spec's `ProjectDataRetention.type` values.
    DataRetention(&'static str),
}

impl Setting {
    /// Turns `tool` (`file_search`, `web_search`, `image_generation`, `mcp`,
    /// `code_interpreter`) on or off.
    ///
    /// # Panics
    ///
    /// When the spec has no such tool.
    pub fn hosted_tool(tool: &str, enabled: bool) -> Setting {
        let tool = HOSTED_TOOLS
            .into_iter()
            .find(|known| *known == tool)
            .unwrap_or_else(|| panic!("{tool} is not a hosted tool in the spec"));
        Setting::HostedTool { tool, enabled }
    }

    /// A model policy: `mode` is `allow_list` or `deny_list`.
    ///
    /// # Panics
    ///
    /// When `mode` is neither.
    pub fn models(mode: &str, model_ids: &[&str]) -> Setting {
        let mode = match mode {
            "allow_list" => "allow_list",
            "deny_list" => "deny_list",
            other => panic!("{other} is not a model permissions mode in the spec"),
        };
        Setting::Models {
            mode,
            model_ids: model_ids.iter().map(|id| (*id).to_owned()).collect(),
        }
    }

    /// A data retention type.
    ///
    /// # Panics
    ///
    /// When the spec has no such type.
    pub fn data_retention(retention: &str) -> Setting {
        let retention = PROJECT_RETENTION_TYPES
            .into_iter()
            .find(|known| *known == retention)
            .unwrap_or_else(|| panic!("{retention} is not a project data retention type"));
        Setting::DataRetention(retention)
    }

    pub(super) fn apply(&self, controls: &mut Controls) {
        match self {
            Setting::HostedTool { tool, enabled } => {
                controls.hosted_tools.insert(tool, *enabled);
            }
            Setting::Models { mode, model_ids } => {
                controls.model_mode = mode;
                controls.model_ids.clone_from(model_ids);
            }
            Setting::SpendLimit(cents) => controls.spend_limit = *cents,
            Setting::DataRetention(retention) => controls.data_retention = retention,
        }
    }
}

/// Who owns a key added with [`OpenAiFake::add_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOwner {
    /// An organization member (seeded already).
    User(String),
    /// A service account of the key's project; created (and logged) if it does not exist.
    ServiceAccount(String),
}

impl OpenAiFake {
    /// Fills the fake with the organization `spec` describes (see the module docs) and returns
    /// what it holds. Seed an otherwise empty fake: ids are drawn from the seed and must not
    /// collide with ones seeded before.
    ///
    /// # Panics
    ///
    /// When `spec` has no projects, fewer than two users, or ids collide.
    pub fn seed_org(&self, spec: &OrgSpec) -> OrgSummary {
        let mut state = self.shared.lock();
        let now = spec.now.unwrap_or_else(|| state.now());
        Seeder::new(&mut state, spec, now).run()
    }

    /// Deletes a project API key as a project owner would in the dashboard (service-account
    /// keys included): the key goes, `api_key.deleted` is logged. `false` when there is no
    /// such key.
    pub fn delete_key(&self, project_id: &str, key_id: &str) -> bool {
        let mut state = self.shared.lock();
        if state.remove_key(project_id, key_id).is_none() {
            return false;
        }
        dashboard_event(
            &mut state,
            "api_key.deleted",
            project_id,
            json!({"id": key_id}),
        );
        true
    }

    /// Deletes a service account and its keys as the dashboard does; logs
    /// `service_account.deleted`. `false` when there is no such account.
    pub fn delete_service_account(&self, project_id: &str, service_account_id: &str) -> bool {
        let mut state = self.shared.lock();
        let exists = state
            .project(project_id)
            .is_some_and(|project| project.service_accounts.contains(service_account_id));
        if !exists {
            return false;
        }
        state.remove_service_account(project_id, service_account_id);
        dashboard_event(
            &mut state,
            "service_account.deleted",
            project_id,
            json!({"id": service_account_id}),
        );
        true
    }

    /// Changes a project setting and logs `project.updated` (the spec has no event type for
    /// these settings; see `api::controls`).
    ///
    /// # Panics
    ///
    /// When the project was not seeded.
    pub fn change_setting(&self, project_id: &str, setting: &Setting) {
        let mut state = self.shared.lock();
        setting.apply(&mut state.project_mut(project_id).controls);
        dashboard_event(
            &mut state,
            "project.updated",
            project_id,
            json!({"id": project_id}),
        );
    }

    /// Removes a person from the organization as `DELETE /organization/users/{id}` does; logs
    /// `user.deleted`. Their keys stay, `owner_project_access: inactive`. `false` when there is
    /// no such member.
    pub fn remove_org_user(&self, user_id: &str) -> bool {
        let mut state = self.shared.lock();
        if !state.remove_org_user(user_id) {
            return false;
        }
        let at = state.now();
        state.add_audit_entry(
            "user.deleted".to_owned(),
            at,
            None,
            Arc::new(session("user-fake", "owner@example.com")),
            json!({"id": user_id}),
        );
        true
    }

    /// Adds a project API key as it is created at OpenAI (at the key's `created_at`), logging
    /// `api_key.created` with its scopes (and `service_account.created` for a new account).
    ///
    /// # Panics
    ///
    /// When the project, or a user owner, was not seeded, or the key id is taken.
    pub fn add_key(&self, project_id: &str, owner: &KeyOwner, key: KeySeed) {
        let mut state = self.shared.lock();
        state.expect_project(project_id);
        let at = key.created_at;
        let scopes = key.scopes.clone();
        let key_id = key.id.clone();
        let owner = match owner {
            KeyOwner::User(user_id) => {
                assert!(
                    state.any_user(user_id).is_some(),
                    "seed user {user_id} before their keys"
                );
                Owner::User(user_id.clone())
            }
            KeyOwner::ServiceAccount(sa_id) => {
                let exists = state
                    .project(project_id)
                    .is_some_and(|project| project.service_accounts.contains(sa_id));
                if !exists {
                    state.add_service_account(project_id, sa_id, sa_id, "member", at);
                    state.add_audit_entry(
                        "service_account.created".to_owned(),
                        at,
                        Some(project_id),
                        Arc::new(session("user-fake", "owner@example.com")),
                        json!({"id": sa_id, "data": {"role": "member"}}),
                    );
                }
                Owner::ServiceAccount(sa_id.clone())
            }
        };
        state.add_key(project_id, owner, key);
        state.add_audit_entry(
            "api_key.created".to_owned(),
            at,
            Some(project_id),
            Arc::new(session("user-fake", "owner@example.com")),
            json!({"id": key_id, "data": {"scopes": scopes}}),
        );
    }

    /// Records that a key was used at `at` on usage endpoint `endpoint` (one of
    /// [`USAGE_ENDPOINTS`] that groups by key) with `model`: one request in that usage, and
    /// `last_used_at` moves to `at` if that is later.
    ///
    /// # Panics
    ///
    /// When there is no such key or endpoint.
    pub fn mark_key_used(&self, key_id: &str, at: i64, endpoint: &str, model: &str) {
        let mut state = self.shared.lock();
        let (project_id, owner) = state
            .key_anywhere(key_id)
            .map(|(project, key)| (project.id.clone(), key.owner.clone()))
            .unwrap_or_else(|| panic!("no key {key_id}"));
        let mut usage = UsageSeed::of(endpoint, at, &project_id, key_id).model(model);
        if let Owner::User(user_id) = &owner {
            usage = usage.user(user_id);
        }
        state.add_usage(usage);
        if let Some(key) = state.key_anywhere_mut(key_id) {
            key.last_used_at = Some(key.last_used_at.map_or(at, |last| last.max(at)));
        }
    }
}

/// An audit event by a dashboard session of the fake's owner, in `project_id`, now.
fn dashboard_event(state: &mut State, event_type: &str, project_id: &str, details: Value) {
    let at = state.now();
    state.add_audit_entry(
        event_type.to_owned(),
        at,
        Some(project_id),
        Arc::new(session("user-fake", "owner@example.com")),
        details,
    );
}

/// A dashboard session's `actor`.
fn session(user_id: &str, email: &str) -> Value {
    json!({
        "type": "session",
        "session": {
            "user": {"id": user_id, "email": email},
            "ip_address": "203.0.113.7"
        }
    })
}

// ---- the generator ----

const FIRST_NAMES: [&str; 24] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yusuf", "zoe",
    "amara", "kenji", "lucia",
];
const LAST_NAMES: [&str; 16] = [
    "ng", "smith", "garcia", "kumar", "okafor", "muller", "rossi", "tanaka", "silva", "novak",
    "cohen", "haddad", "larsen", "dubois", "kowalski", "mendes",
];
const SERVICES: [&str; 16] = [
    "payments",
    "search",
    "support-bot",
    "checkout",
    "recommendations",
    "analytics",
    "ingest",
    "billing",
    "docs-assistant",
    "fraud",
    "onboarding",
    "translation",
    "summaries",
    "voice",
    "catalog",
    "moderation",
];
const RESEARCH: [&str; 8] = [
    "vision",
    "rlhf-eval",
    "agents",
    "embeddings",
    "long-context",
    "safety",
    "distillation",
    "retrieval",
];
const OTHER_PROJECTS: [&str; 5] = [
    "hackathon-2025",
    "internal-tools",
    "data-science",
    "marketing-copy",
    "sandbox",
];
const SERVICE_ACCOUNT_NAMES: [&str; 10] = [
    "ci-deploy",
    "etl-runner",
    "nightly-export",
    "indexer",
    "webhook-relay",
    "batch-scorer",
    "chat-backend",
    "eval-harness",
    "slack-bot",
    "airflow",
];
const USER_KEY_NAMES: [&str; 8] = [
    "laptop",
    "notebook",
    "local-dev",
    "eval-script",
    "prototype",
    "demo",
    "cli",
    "colab",
];
const ADMIN_KEY_NAMES: [&str; 6] = [
    "terraform",
    "quench-sync",
    "ci-deploy",
    "billing-export",
    "scim-bridge",
    "audit-export",
];
/// Restricted scope sets (the dashboard's identifiers, `openai-admin-api-updates.md` §1) and
/// the usage endpoints each allows.
const SCOPE_SETS: [(&[&str], &[&str]); 4] = [
    (
        &[
            "api.model.request",
            "api.responses.read",
            "api.responses.write",
        ],
        &["completions", "embeddings"],
    ),
    (&["api.model.request"], &["embeddings", "moderations"]),
    (&["api.all.read"], &[]),
    (
        &[
            "api.model.request",
            "api.responses.read",
            "api.responses.write",
            "api.files.read",
        ],
        &["completions"],
    ),
];
const TEXT_MODELS: [&str; 4] = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini"];

/// splitmix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn percent(&mut self, chance: usize) -> bool {
        self.below(100) < chance
    }

    /// `low..high` (`low` when the range is empty).
    fn between(&mut self, low: i64, high: i64) -> i64 {
        if high <= low {
            return low;
        }
        let span = u64::try_from(high - low).unwrap_or(u64::MAX);
        low + i64::try_from(self.next() % span).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `wanted` of `candidates` (at least one, at most all), drawn without repeats.
    fn sample<T: Ord + Copy>(&mut self, candidates: BTreeSet<T>, wanted: usize) -> BTreeSet<T> {
        let candidates: Vec<T> = candidates.into_iter().collect();
        let wanted = wanted.max(1).min(candidates.len());
        let mut chosen = BTreeSet::new();
        while chosen.len() < wanted {
            chosen.insert(candidates[self.below(candidates.len())]);
        }
        chosen
    }

    /// `length` characters of `[a-z0-9]`.
    fn token(&mut self, length: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..length)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
            .collect()
    }
}

struct PlannedUser {
    id: String,
    email: String,
    name: String,
    owner: bool,
    added_at: i64,
}

struct PlannedProject {
    id: String,
    name: String,
    created_at: i64,
    archived_at: Option<i64>,
    /// Members: (user index, role).
    members: Vec<(usize, Role)>,
    /// Keys may be created until then (the archive, or now).
    open_until: i64,
}

impl PlannedProject {
    /// The user index of the project's first owner (the first member).
    fn owner(&self) -> usize {
        self.members.first().map_or(0, |(user, _)| *user)
    }
}

/// One seeding pass, holding the fake's lock.
struct Seeder<'a> {
    state: &'a mut State,
    spec: &'a OrgSpec,
    now: i64,
    rng: Rng,
    summary: OrgSummary,
    /// One `actor` per user, shared by all their events.
    actors: Vec<Arc<Value>>,
}

impl<'a> Seeder<'a> {
    fn new(state: &'a mut State, spec: &'a OrgSpec, now: i64) -> Seeder<'a> {
        Seeder {
            state,
            spec,
            now,
            rng: Rng(spec.seed ^ 0x5EED_F00D_0E57_A7E5),
            summary: OrgSummary {
                now,
                ..OrgSummary::default()
            },
            actors: Vec::new(),
        }
    }

    fn run(mut self) -> OrgSummary {
        assert!(self.spec.projects > 0, "an organization needs a project");
        assert!(self.spec.users >= 2, "an organization needs two people");
        let audit_before = self.state.audit.len();
        let usage_before = self.state.usage.len();
        let users = self.users();
        let mut projects = self.projects();
        self.memberships(&users, &mut projects);
        let user_keys = self.keys(&users, &projects);
        self.leave_projects(&users, &projects, &user_keys);
        self.remove_users(&users, &user_keys);
        self.settings(&projects);
        self.certificates(&projects);
        self.admin_keys(&users);
        self.archive(&projects);
        self.usage(&projects);
        self.state.default_project = Some(projects[0].id.clone());
        self.summary.default_project = projects[0].id.clone();
        self.summary.projects = projects.len();
        self.summary.users = self.state.org_users.len();
        self.summary.memberships = projects
            .iter()
            .filter_map(|project| self.state.project(&project.id))
            .map(|project| project.members.iter().filter(|m| m.active).count())
            .sum();
        self.orphans(&projects);
        self.summary.audit_events = self.state.audit.len() - audit_before;
        self.summary.usage_rows = self.state.usage.len() - usage_before;
        self.summary
    }

    fn user_actor(&self, index: usize) -> Arc<Value> {
        self.actors[index].clone()
    }

    fn event(
        &mut self,
        event_type: &str,
        at: i64,
        project_id: Option<&str>,
        actor: Arc<Value>,
        details: Value,
    ) {
        self.state
            .add_audit_entry(event_type.to_owned(), at, project_id, actor, details);
    }

    /// People, the first tenth (at least two) organization owners.
    fn users(&mut self) -> Vec<PlannedUser> {
        let owners = (self.spec.users / 10).max(2);
        let mut emails = BTreeSet::new();
        let mut users = Vec::with_capacity(self.spec.users);
        for index in 0..self.spec.users {
            let first = *self.rng.pick(&FIRST_NAMES);
            let last = *self.rng.pick(&LAST_NAMES);
            let mut email = format!("{first}.{last}@acme.example");
            let mut suffix = 2;
            while !emails.insert(email.clone()) {
                email = format!("{first}.{last}{suffix}@acme.example");
                suffix += 1;
            }
            let user = PlannedUser {
                id: format!("user-{}", self.rng.token(24)),
                email,
                name: format!("{} {}", capitalized(first), capitalized(last)),
                owner: index < owners,
                added_at: self.now - self.rng.between(400, 900) * DAY,
            };
            let role = if user.owner { "owner" } else { "reader" };
            self.state
                .add_org_user(&user.id, &user.email, role, user.added_at);
            if let Some(row) = self.state.org_users.get_mut(&user.id) {
                row.name.clone_from(&user.name);
            }
            self.actors.push(Arc::new(session(&user.id, &user.email)));
            let invite = format!("invite-{}", self.rng.token(16));
            let inviter = self.actors[0].clone();
            self.event(
                "invite.sent",
                user.added_at - HOUR,
                None,
                inviter,
                json!({"id": invite, "data": {"email": user.email, "role": role}}),
            );
            let actor = self.user_actor(index);
            self.event(
                "invite.accepted",
                user.added_at,
                None,
                actor,
                json!({"id": invite}),
            );
            if user.owner {
                self.summary.owners.push(user.id.clone());
            }
            users.push(user);
        }
        users
    }

    /// The default project, then `prod-*`, `staging-*`, `research-*`, `dev-*` and others;
    /// some non-production ones archived.
    fn projects(&mut self) -> Vec<PlannedProject> {
        let mut names = BTreeSet::new();
        let mut projects = Vec::with_capacity(self.spec.projects);
        for index in 0..self.spec.projects {
            let (base, archive_chance) = if index == 0 {
                ("Default project".to_owned(), 0)
            } else {
                match index % 10 {
                    1..=4 => (format!("prod-{}", self.rng.pick(&SERVICES)), 0),
                    5 | 6 => (format!("staging-{}", self.rng.pick(&SERVICES)), 15),
                    7 | 8 => (format!("research-{}", self.rng.pick(&RESEARCH)), 30),
                    9 => (format!("dev-{}", self.rng.pick(&SERVICES)), 20),
                    _ => ((*self.rng.pick(&OTHER_PROJECTS)).to_owned(), 30),
                }
            };
            let mut name = base.clone();
            let mut suffix = 2;
            while !names.insert(name.clone()) {
                name = format!("{base}-{suffix}");
                suffix += 1;
            }
            let created_at = if index == 0 {
                self.now - 800 * DAY
            } else {
                self.now - self.rng.between(60, 730) * DAY
            };
            let archived_at = self.rng.percent(archive_chance).then(|| {
                let lifetime = self.now - created_at;
                created_at + lifetime * self.rng.between(40, 90) / 100
            });
            projects.push(PlannedProject {
                id: format!("proj_{}", self.rng.token(24)),
                name,
                created_at,
                archived_at,
                members: Vec::new(),
                open_until: archived_at.unwrap_or(self.now) - HOUR,
            });
        }
        // At least one archived project when there is a candidate.
        if projects.len() > 5 && projects.iter().all(|p| p.archived_at.is_none()) {
            let project = &mut projects[5];
            let at = project.created_at + (self.now - project.created_at) / 2;
            project.archived_at = Some(at);
            project.open_until = at - HOUR;
        }
        let founder = self.user_actor(0);
        for project in &projects {
            self.state
                .add_project(&project.id, &project.name, project.created_at, None);
            self.event(
                "project.created",
                project.created_at,
                Some(&project.id),
                founder.clone(),
                json!({"id": project.id, "data": {"name": project.name, "title": project.name}}),
            );
        }
        projects
    }

    /// One owner and one to four members per project.
    fn memberships(&mut self, users: &[PlannedUser], projects: &mut [PlannedProject]) {
        for project in projects.iter_mut() {
            let wanted = (1 + 1 + self.rng.below(4)).min(users.len());
            let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
            while chosen.len() < wanted {
                let candidate = self.rng.below(users.len());
                if !chosen.contains(&candidate) {
                    chosen.push(candidate);
                }
            }
            for (position, user) in chosen.into_iter().enumerate() {
                let role = if position == 0 {
                    Role::Owner
                } else {
                    Role::Member
                };
                let added_at =
                    project.created_at.max(users[user].added_at) + self.rng.between(0, 20) * DAY;
                let added_at = added_at.min(project.open_until);
                self.state
                    .add_membership(&project.id, &users[user].id, role, added_at);
                let actor = self.user_actor(project.owner());
                self.event(
                    "user.added",
                    added_at,
                    Some(&project.id),
                    actor,
                    json!({"id": users[user].id, "data": {"role": role.as_str()}}),
                );
                project.members.push((user, role));
            }
        }
    }

    /// Spreads the keys over the projects; per project, people's keys and service accounts
    /// with one to three keys each. Returns, per user key, (project index, user index, key).
    fn keys(
        &mut self,
        users: &[PlannedUser],
        projects: &[PlannedProject],
    ) -> Vec<(usize, usize, KeyRef)> {
        let weights: Vec<usize> = projects
            .iter()
            .enumerate()
            .map(|(index, _)| if index == 0 { 1 } else { 1 + self.rng.below(4) })
            .collect();
        let total: usize = weights.iter().sum();
        let mut counts: Vec<usize> = weights
            .iter()
            .map(|weight| self.spec.keys * weight / total)
            .collect();
        let mut short = self.spec.keys - counts.iter().sum::<usize>();
        let mut index = 0;
        let projects_count = counts.len();
        while short > 0 {
            counts[index % projects_count] += 1;
            short -= 1;
            index += 1;
        }
        let mut user_keys = Vec::new();
        let mut forced = 0;
        for (project_index, project) in projects.iter().enumerate() {
            let count = counts[project_index];
            let mut created: Vec<i64> = (0..count)
                .map(|_| {
                    self.rng
                        .between(project.created_at + DAY, project.open_until)
                })
                .collect();
            created.sort_unstable();
            let service_account_keys = (count * 45 / 100).max(usize::from(count >= 3));
            let accounts = service_account_keys.div_ceil(2).max(1);
            let account_ids: Vec<String> = (0..accounts)
                .map(|_| format!("svc_acct_{}", self.rng.token(24)))
                .collect();
            let project_owner = project.owner();
            let mut account_created: BTreeMap<usize, i64> = BTreeMap::new();
            for (position, created_at) in created.into_iter().enumerate() {
                let by_account = position % 2 == 1 && position / 2 < service_account_keys;
                let key_id = format!("key_{}", self.rng.token(16));
                let key = KeyRef {
                    project_id: project.id.clone(),
                    key_id: key_id.clone(),
                };
                let (owner, actor, name) = if by_account {
                    let account = (position / 2) % accounts;
                    if let std::collections::btree_map::Entry::Vacant(entry) =
                        account_created.entry(account)
                    {
                        entry.insert(created_at);
                        let sa_name =
                            format!("{}-{}", self.rng.pick(&SERVICE_ACCOUNT_NAMES), account + 1);
                        self.state.add_service_account(
                            &project.id,
                            &account_ids[account],
                            &sa_name,
                            "member",
                            created_at,
                        );
                        let actor = self.user_actor(project_owner);
                        self.event(
                            "service_account.created",
                            created_at,
                            Some(&project.id),
                            actor,
                            json!({"id": account_ids[account], "data": {"role": "member"}}),
                        );
                        self.summary.service_accounts += 1;
                    }
                    self.summary.service_account_keys += 1;
                    let name = format!("rotation-{}", 1 + self.rng.below(9));
                    (
                        Owner::ServiceAccount(account_ids[account].clone()),
                        self.user_actor(project_owner),
                        name,
                    )
                } else {
                    let (user, _) = *self.rng.pick(&project.members);
                    self.summary.user_keys += 1;
                    user_keys.push((project_index, user, key.clone()));
                    let first = users[user].email.split('.').next().unwrap_or("me");
                    let name = format!("{first}-{}", self.rng.pick(&USER_KEY_NAMES));
                    (
                        Owner::User(users[user].id.clone()),
                        self.user_actor(user),
                        name,
                    )
                };
                // The first keys seeded carry one case each, so every organization has them.
                let case = if forced < 3 { Some(forced) } else { None };
                forced += 1;
                let seed = self.key_seed(&key_id, &name, created_at, case, &key);
                let recorded_scopes = seed.scopes.clone();
                self.state.add_key(&project.id, owner, seed);
                self.event(
                    "api_key.created",
                    created_at,
                    Some(&project.id),
                    actor.clone(),
                    json!({"id": key_id, "data": {"scopes": recorded_scopes}}),
                );
                self.scope_history(&key, created_at, project.open_until, actor);
                self.summary.keys += 1;
                // Now and then a key that was created and deleted: only the audit log has it.
                if self.rng.percent(2) {
                    let gone = format!("key_{}", self.rng.token(16));
                    let deleted_at = self.rng.between(created_at, project.open_until);
                    let actor = self.user_actor(project_owner);
                    self.event(
                        "api_key.created",
                        created_at,
                        Some(&project.id),
                        actor.clone(),
                        json!({"id": gone, "data": {"scopes": []}}),
                    );
                    self.event(
                        "api_key.deleted",
                        deleted_at,
                        Some(&project.id),
                        actor,
                        json!({"id": gone}),
                    );
                    self.summary.deleted_keys.push(KeyRef {
                        project_id: project.id.clone(),
                        key_id: gone,
                    });
                }
            }
        }
        for project in projects {
            if let Some(seeded) = self.state.project(&project.id) {
                let mut per_account: BTreeMap<String, usize> = BTreeMap::new();
                for key in seeded.keys.iter() {
                    if let Owner::ServiceAccount(account) = &key.owner {
                        *per_account.entry(account.clone()).or_default() += 1;
                    }
                }
                self.summary.multi_key_service_accounts.extend(
                    per_account
                        .into_iter()
                        .filter(|(_, keys)| *keys > 1)
                        .map(|(account, _)| (project.id.clone(), account)),
                );
            }
        }
        user_keys
    }

    /// A key's use, expiry and scopes. `case` forces one: 0 never used, 1 unused for 100+
    /// days, 2 with an expiry.
    fn key_seed(
        &mut self,
        key_id: &str,
        name: &str,
        created_at: i64,
        case: Option<usize>,
        key: &KeyRef,
    ) -> KeySeed {
        let mut seed = KeySeed::new(key_id).name(name).created_at(created_at);
        let roll = self.rng.below(100);
        let stale_possible = created_at < self.now - 101 * DAY;
        let use_kind = match case {
            Some(0) => 0,
            Some(1) if stale_possible => 1,
            _ if roll < 12 => 0,
            _ if roll < 30 && stale_possible => 1,
            _ => 2,
        };
        match use_kind {
            0 => self.summary.never_used_keys.push(key.clone()),
            1 => {
                let at = self.rng.between(created_at, self.now - 100 * DAY);
                seed = seed.last_used_at(at);
                self.summary.stale_keys.push(key.clone());
            }
            _ => {
                let from = created_at.max(self.now - 30 * DAY);
                seed = seed.last_used_at(self.rng.between(from, self.now - HOUR));
            }
        }
        if case == Some(2) || self.rng.percent(20) {
            let days = *self.rng.pick(&[30, 90, 180, 365]);
            let expires_at = created_at + days * DAY;
            seed = seed.expires_at(expires_at);
            self.summary.expiring_keys.push(key.clone());
            if expires_at <= self.now {
                self.summary.expired_keys.push(key.clone());
            }
        }
        if self.rng.percent(35) {
            let (scopes, _) = *self.rng.pick(&SCOPE_SETS);
            seed = seed.scopes(scopes);
        }
        seed
    }

    /// Some keys' scopes change later: restricted ones widened to `[]` (logged, so the
    /// inventory sees "unrestricted"), unrestricted ones narrowed.
    fn scope_history(&mut self, key: &KeyRef, created_at: i64, until: i64, actor: Arc<Value>) {
        let scopes = self
            .state
            .project(&key.project_id)
            .and_then(|project| project.keys.get(&key.key_id))
            .map(|row| row.scopes.clone())
            .unwrap_or_default();
        let widen =
            !scopes.is_empty() && (self.rng.percent(8) || self.summary.widened_keys.is_empty());
        let narrow = scopes.is_empty() && !widen && self.rng.percent(5);
        let current = if widen {
            Vec::new()
        } else if narrow {
            let (narrowed, _) = *self.rng.pick(&SCOPE_SETS);
            narrowed.iter().map(|scope| (*scope).to_owned()).collect()
        } else {
            scopes
        };
        if widen || narrow {
            let at = self.rng.between(created_at, until);
            self.event(
                "api_key.updated",
                at,
                Some(&key.project_id),
                actor,
                json!({"id": key.key_id, "changes_requested": {"scopes": current}}),
            );
            if let Some(row) = self
                .state
                .project_mut(&key.project_id)
                .keys
                .get_mut(&key.key_id)
            {
                row.scopes.clone_from(&current);
            }
            if widen {
                self.summary.widened_keys.push(key.clone());
            }
        }
        if current.is_empty() {
            self.summary.unrestricted_keys.push(key.clone());
        } else {
            self.summary.restricted_keys.push(key.clone());
        }
    }

    /// Some people leave a project they have a key in (never its first owner): their keys
    /// stay, orphaned.
    fn leave_projects(
        &mut self,
        users: &[PlannedUser],
        projects: &[PlannedProject],
        user_keys: &[(usize, usize, KeyRef)],
    ) {
        let candidates: BTreeSet<(usize, usize)> = user_keys
            .iter()
            .filter(|(project, user, _)| projects[*project].owner() != *user)
            .map(|(project, user, _)| (*project, *user))
            .collect();
        let wanted = candidates.len() * 8 / 100;
        for (project_index, user) in self.rng.sample(candidates, wanted) {
            let project = &projects[project_index];
            let user_id = users[user].id.clone();
            let left_at = self
                .rng
                .between(project.open_until - 30 * DAY, project.open_until);
            if let Some(membership) = self
                .state
                .project_mut(&project.id)
                .members
                .get_mut(&user_id)
            {
                membership.active = false;
            }
            let actor = self.user_actor(project.owner());
            self.event(
                "user.deleted",
                left_at,
                Some(&project.id),
                actor,
                json!({"id": user_id}),
            );
            self.summary
                .left_project
                .push((project.id.clone(), user_id));
        }
    }

    /// About one person in twenty with a key, never an organization owner, leaves the
    /// organization.
    fn remove_users(&mut self, users: &[PlannedUser], user_keys: &[(usize, usize, KeyRef)]) {
        let left: BTreeSet<&str> = self
            .summary
            .left_project
            .iter()
            .map(|(_, user)| user.as_str())
            .collect();
        let candidates: BTreeSet<usize> = user_keys
            .iter()
            .map(|(_, user, _)| *user)
            .filter(|user| !users[*user].owner && !left.contains(users[*user].id.as_str()))
            .collect();
        let wanted = users.len() * 5 / 100;
        for user in self.rng.sample(candidates, wanted) {
            let removed_at = self.now - self.rng.between(5, 60) * DAY;
            self.state.remove_org_user(&users[user].id);
            let actor = self.user_actor(0);
            self.event(
                "user.deleted",
                removed_at,
                None,
                actor,
                json!({"id": users[user].id}),
            );
            self.summary.removed_users.push(users[user].id.clone());
        }
    }

    /// Production projects narrowed (allow lists, zero data retention, mcp and web search
    /// off), with exceptions; others mostly default. Each change is a `project.updated`.
    fn settings(&mut self, projects: &[PlannedProject]) {
        let mut prod_seen = 0;
        for project in projects {
            let mut settings = Vec::new();
            if project.name.starts_with("prod-") {
                prod_seen += 1;
                // The first prod project keeps mcp on, the second web search, the third
                // lacks zero data retention: the exceptions a policy must find.
                if prod_seen != 1 {
                    settings.push(Setting::hosted_tool("mcp", false));
                }
                if prod_seen != 2 {
                    settings.push(Setting::hosted_tool("web_search", false));
                }
                settings.push(Setting::hosted_tool("code_interpreter", false));
                if prod_seen != 3 && self.rng.percent(80) {
                    settings.push(Setting::data_retention("zero_data_retention"));
                }
                if self.rng.percent(50) {
                    settings.push(Setting::models("allow_list", &["gpt-4o", "gpt-4o-mini"]));
                }
                if self.rng.percent(50) {
                    settings.push(Setting::SpendLimit(Some(500_000)));
                }
            } else if project.name.starts_with("staging-") {
                if self.rng.percent(50) {
                    settings.push(Setting::hosted_tool("mcp", false));
                }
                if self.rng.percent(30) {
                    settings.push(Setting::models("deny_list", &["o1-pro", "gpt-4.5-preview"]));
                }
            } else if project.name.starts_with("research-") && self.rng.percent(20) {
                settings.push(Setting::data_retention("none"));
            }
            let owner = project.owner();
            for setting in settings {
                setting.apply(&mut self.state.project_mut(&project.id).controls);
                let at = self.rng.between(project.created_at, project.open_until);
                let actor = self.user_actor(owner);
                self.event(
                    "project.updated",
                    at,
                    Some(&project.id),
                    actor,
                    json!({"id": project.id}),
                );
            }
            let Some(seeded) = self.state.project(&project.id) else {
                continue;
            };
            let controls = &seeded.controls;
            let on = |tool: &str| controls.hosted_tools.get(tool).copied().unwrap_or(false);
            let prod = project.name.starts_with("prod-");
            if on("mcp") {
                self.summary.mcp_projects.push(project.id.clone());
                if prod {
                    self.summary.prod_mcp_projects.push(project.id.clone());
                }
            }
            if on("web_search") {
                self.summary.web_search_projects.push(project.id.clone());
                if prod {
                    self.summary
                        .prod_web_search_projects
                        .push(project.id.clone());
                }
            }
            if prod && controls.data_retention != "zero_data_retention" {
                self.summary
                    .prod_without_zero_retention
                    .push(project.id.clone());
            }
            if controls.model_mode == "allow_list" {
                self.summary.allow_list_projects.push(project.id.clone());
            }
        }
    }

    /// Organization certificates (most active, some expired), configured for production
    /// projects.
    fn certificates(&mut self, projects: &[PlannedProject]) {
        let mut ids = Vec::new();
        for index in 0..self.spec.certificates {
            let id = format!("cert_{}", self.rng.token(24));
            let created_at = self.now - self.rng.between(10, 700) * DAY;
            let name = format!("mtls-gateway-{}", index + 1);
            let active = index == 0 || self.rng.percent(75);
            let seq = self.state.seq();
            self.state.add_certificate(Certificate {
                id: id.clone(),
                name: name.clone(),
                created_at,
                valid_at: created_at,
                expires_at: created_at + 365 * DAY,
                active,
                seq,
            });
            let actor = self.user_actor(0);
            self.event(
                "certificate.created",
                created_at,
                None,
                actor.clone(),
                json!({"id": id, "name": name}),
            );
            if active {
                self.event(
                    "certificates.activated",
                    created_at + HOUR,
                    None,
                    actor,
                    json!({"certificates": [{"id": id, "name": name}]}),
                );
            }
            ids.push((id, name, created_at));
        }
        if ids.is_empty() {
            return;
        }
        for project in projects {
            if !project.name.starts_with("prod-") || !self.rng.percent(60) {
                continue;
            }
            let (id, name, created_at) = ids[self.rng.below(ids.len())].clone();
            self.state.add_project_certificate(&project.id, &id, true);
            let at = created_at.max(project.created_at) + DAY;
            let actor = self.user_actor(project.owner());
            self.event(
                "certificates.activated",
                at.min(self.now),
                Some(&project.id),
                actor,
                json!({"certificates": [{"id": id, "name": name}]}),
            );
            self.summary
                .projects_with_certificates
                .push(project.id.clone());
        }
        self.summary.certificates = ids.into_iter().map(|(id, _, _)| id).collect();
    }

    /// Admin keys of organization owners: one never used, one idle, the rest in use.
    fn admin_keys(&mut self, users: &[PlannedUser]) {
        let owners: Vec<usize> = (0..users.len()).filter(|u| users[*u].owner).collect();
        for index in 0..self.spec.admin_keys {
            let id = format!("key_{}", self.rng.token(16));
            let owner = owners[index % owners.len()];
            let created_at = self.now - self.rng.between(30, 700) * DAY;
            let last_used_at = match index {
                0 => None,
                1 => Some(created_at.max(self.now - 200 * DAY)),
                _ => Some(self.now - self.rng.between(HOUR, 3 * DAY)),
            };
            let name = format!(
                "{}-{}",
                ADMIN_KEY_NAMES[index % ADMIN_KEY_NAMES.len()],
                index + 1
            );
            self.state.add_owned_admin_key(
                &id,
                &name,
                Some(users[owner].id.clone()),
                created_at,
                last_used_at,
            );
            let actor = self.user_actor(owner);
            self.event(
                "tenant.admin_api_key.created",
                created_at,
                None,
                actor,
                json!({"id": id, "data": {"name": name}}),
            );
            if last_used_at.is_none() {
                self.summary.unused_admin_keys.push(id.clone());
            }
            self.summary.admin_keys.push(id);
        }
    }

    fn archive(&mut self, projects: &[PlannedProject]) {
        for project in projects {
            let Some(at) = project.archived_at else {
                continue;
            };
            self.state.project_mut(&project.id).archived_at = Some(at);
            let actor = self.user_actor(project.owner());
            self.event(
                "project.archived",
                at,
                Some(&project.id),
                actor,
                json!({"id": project.id}),
            );
            self.summary.archived_projects.push(project.id.clone());
        }
    }

    /// Usage of the keys used in the last 30 days (what their scopes allow, the last row at
    /// `last_used_at`), and per project vector store bytes and code interpreter sessions.
    fn usage(&mut self, projects: &[PlannedProject]) {
        let since = self.now - 30 * DAY;
        for project in projects {
            let Some(seeded) = self.state.project(&project.id) else {
                continue;
            };
            let tools = seeded.controls.hosted_tools.clone();
            let used: Vec<UsedKey> = seeded
                .keys
                .iter()
                .filter_map(|key| {
                    let last = key.last_used_at.filter(|at| *at >= since)?;
                    let user = match &key.owner {
                        Owner::User(user) => Some(user.clone()),
                        Owner::ServiceAccount(_) => None,
                    };
                    Some(UsedKey {
                        id: key.id.clone(),
                        created_at: key.created_at,
                        last,
                        user,
                        scopes: key.scopes.clone(),
                    })
                })
                .collect();
            for UsedKey {
                id: key_id,
                created_at,
                last,
                user,
                scopes,
            } in used
            {
                let allowed: Vec<&str> = if scopes.is_empty() {
                    let mut all = vec!["completions", "completions", "completions", "embeddings"];
                    all.extend(["images", "audio_transcriptions"]);
                    if tools.get("file_search").copied().unwrap_or(false) {
                        all.push("file_search_calls");
                    }
                    if tools.get("web_search").copied().unwrap_or(false) {
                        all.push("web_search_calls");
                    }
                    all
                } else {
                    SCOPE_SETS
                        .iter()
                        .find(|(set, _)| set.iter().copied().eq(scopes.iter().map(String::as_str)))
                        .map(|(_, endpoints)| endpoints.to_vec())
                        .unwrap_or_default()
                };
                if allowed.is_empty() {
                    continue;
                }
                for row in 0..self.spec.usage_per_key {
                    let at = if row == 0 {
                        last
                    } else {
                        self.rng.between(created_at.max(since), last)
                    };
                    let endpoint = *self.rng.pick(&allowed);
                    let mut usage = UsageSeed::of(endpoint, at, &project.id, &key_id);
                    usage = match endpoint {
                        "completions" => usage
                            .model(TEXT_MODELS[self.rng.below(TEXT_MODELS.len())])
                            .requests(i64::try_from(1 + self.rng.below(40)).unwrap_or(1))
                            .tokens(
                                i64::try_from(100 + self.rng.below(20_000)).unwrap_or(100),
                                i64::try_from(50 + self.rng.below(4_000)).unwrap_or(50),
                            ),
                        "embeddings" | "moderations" => usage.model(if endpoint == "embeddings" {
                            "text-embedding-3-small"
                        } else {
                            "omni-moderation-latest"
                        }),
                        "images" => usage.model("gpt-image-1").amount("images", 1),
                        "audio_transcriptions" => usage.model("whisper-1").amount("seconds", 60),
                        "file_search_calls" => {
                            usage.dimension("vector_store_id", &format!("vs_{}", &key_id[4..12]))
                        }
                        _ => usage.model("gpt-4o-mini"),
                    };
                    if let Some(user) = &user {
                        usage = usage.user(user);
                    }
                    self.state.add_usage(usage);
                }
            }
            if project.archived_at.is_none() {
                if tools.get("file_search").copied().unwrap_or(false) {
                    let bytes = i64::try_from(1 + self.rng.below(500)).unwrap_or(1) * 1_048_576;
                    let usage = UsageSeed::project("vector_stores", self.now - DAY, &project.id)
                        .amount("usage_bytes", bytes);
                    self.state.add_usage(usage);
                }
                if tools.get("code_interpreter").copied().unwrap_or(false) && self.rng.percent(40) {
                    let sessions = i64::try_from(1 + self.rng.below(30)).unwrap_or(1);
                    let usage = UsageSeed::project(
                        "code_interpreter_sessions",
                        self.now - DAY,
                        &project.id,
                    )
                    .amount("num_sessions", sessions);
                    self.state.add_usage(usage);
                }
            }
        }
        debug_assert!(USAGE_ENDPOINTS.contains(&"vector_stores"));
    }

    /// Every key whose owner has no access to its project now.
    fn orphans(&mut self, projects: &[PlannedProject]) {
        for project in projects {
            let Some(seeded) = self.state.project(&project.id) else {
                continue;
            };
            for key in seeded.keys.iter() {
                if !super::state::owner_has_access(seeded, key) {
                    self.summary.orphaned_keys.push(KeyRef {
                        project_id: project.id.clone(),
                        key_id: key.id.clone(),
                    });
                }
            }
        }
    }
}

/// A key used in the last 30 days, for its usage rows.
struct UsedKey {
    id: String,
    created_at: i64,
    last: i64,
    user: Option<String>,
    scopes: Vec<String>,
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}
