//! The fake's data: what is seeded or created, and how it renders as the spec's objects. Every
//! list lives in a [`Table`] (per project where the list is per project), so lookups by id are
//! O(1) and pages O(page).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use super::table::{Order, PageRequest, Row, Table};
use super::{AuditEvent, Call, DEFAULT_CREATED_AT, Fault, KeySeed, RateLimitSeed, Role, UsageSeed};

/// The optional and required limit fields of `ProjectRateLimit`, in the spec's order.
pub(super) const RATE_LIMIT_FIELDS: [&str; 6] = [
    "max_requests_per_1_minute",
    "max_tokens_per_1_minute",
    "max_images_per_1_minute",
    "max_audio_megabytes_per_1_minute",
    "max_requests_per_1_day",
    "batch_1_day_max_input_tokens",
];

/// The `AuditLogEventType` enum of the spec.
const EVENT_TYPES: &str = "\
    api_key.created api_key.updated api_key.deleted certificate.created \
    certificate.updated certificate.deleted certificates.activated \
    certificates.deactivated checkpoint.permission.created \
    checkpoint.permission.deleted external_key.registered external_key.removed \
    group.created group.updated group.deleted invite.sent invite.accepted \
    invite.deleted ip_allowlist.created ip_allowlist.updated ip_allowlist.deleted \
    ip_allowlist.config.activated ip_allowlist.config.deactivated login.succeeded \
    login.failed logout.succeeded logout.failed organization.updated project.created \
    project.updated project.archived project.deleted rate_limit.updated \
    rate_limit.deleted resource.deleted tunnel.created tunnel.updated tunnel.deleted \
    workload_identity_provider.created workload_identity_provider.updated \
    workload_identity_provider.deleted workload_identity_provider_mapping.created \
    workload_identity_provider_mapping.updated \
    workload_identity_provider_mapping.deleted role.created role.updated \
    role.deleted role.assignment.created role.assignment.deleted \
    role.bound_to_resource role.unbound_from_resource scim.enabled scim.disabled \
    service_account.created service_account.updated service_account.deleted \
    user.added user.updated user.deleted tenant.metadata.updated \
    tenant.microsoft_entra_mapping.upserted tenant.microsoft_entra_mapping.deleted \
    tenant.workload_identity.provider.created \
    tenant.workload_identity.provider.updated \
    tenant.workload_identity.provider.archived \
    tenant.workload_identity.mapping.created tenant.workload_identity.mapping.updated \
    tenant.workload_identity.mapping.archived \
    tenant.workload_identity.binding.created \
    tenant.workload_identity.principal.provisioned \
    tenant.workload_identity.access_token.issued tenant.admin_api_key.created \
    tenant.admin_api_key.updated tenant.admin_api_key.deleted \
    tenant.project_api_key.created tenant.chatgpt_access_token.revoked \
    tenant.migration.completed tenant.sso.migrated tenant.domains.migrated \
    tenant.sso_connection.created tenant.sso_connection.updated \
    tenant.sso_connection.deleted tenant.sso_connection.setup.started \
    tenant.policy.created tenant.policy.updated tenant.policy.deleted \
    tenant.policy.attached tenant.policy.detached \
    tenant.principal_authentication_policy.resolved tenant.scim.setup.started \
    tenant.scim.deletion.requested tenant.scim.directory.created \
    tenant.product_access_policy.updated tenant.resource_share_grant.created \
    tenant.resource_share_grant.updated tenant.resource_share_grant.accepted \
    tenant.resource_share_grant.declined tenant.resource_share_grant.revoked \
    tenant.resource_share_grant.deleted tenant.service_account.updated \
    tenant.service_account.deleted tenant.service_account.token.revoked \
    tenant.billing.overage_limit.updated tenant.billing.alerts.updated \
    tenant.billing.info.updated tenant.usage_limit.workspace.updated \
    tenant.usage_limit.group.updated tenant.usage_limit.user.updated \
    tenant.usage_limit.increase_request.updated \
    tenant.usage_limit.increase_request.resolved tenant.group.created \
    tenant.group.updated tenant.group.deleted tenant.group.member.added \
    tenant.group.member.removed tenant.migration_rollout.status.updated \
    tenant.migration_rollout.tier.updated tenant.role.metadata.updated \
    tenant.custom_role.created tenant.custom_role.updated tenant.custom_role.deleted \
    tenant.role_assignment.created tenant.role_assignment.deleted \
    tenant.resource_role_assignment.created tenant.resource_role_assignment.deleted \
    tenant.resource_access.updated tenant.resource_access.deleted \
    tenant.ads_account.onboarding.redemption tenant.session_policy.created \
    tenant.session_policy.updated tenant.session_policy.deleted \
    tenant.session_revocation.started tenant.third_party_app_policy.updated \
    tenant.user.added tenant.user.updated tenant.user.removed tenant.user.looked_up \
    tenant.user.invited tenant.membership.revoked \
    tenant.api_organization_invite.upserted tenant.api_organization_invite.deleted \
    tenant.chatgpt_workspace_invite.upserted tenant.membership.accepted \
    tenant.membership.declined tenant.workspace_invite_email_settings.updated";

/// Whether `name` is a value of `AuditLogEventType`.
pub(super) fn is_event_type(name: &str) -> bool {
    EVENT_TYPES.split_whitespace().any(|known| known == name)
}

/// Tenant-scoped event types, which the spec says need `tenant_only=true`.
pub(super) fn is_tenant_event(name: &str) -> bool {
    name.starts_with("tenant.")
        || name == "role.bound_to_resource"
        || name == "role.unbound_from_resource"
}

pub(super) struct Project {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) created_at: i64,
    pub(super) archived_at: Option<i64>,
    pub(super) external_key_id: Option<String>,
    pub(super) seq: u64,
    /// The project-wide narrowing controls (`…/model_permissions`, `…/hosted_tool_permissions`,
    /// `…/spend_limit`, `…/data_retention`).
    pub(super) controls: Controls,
    pub(super) keys: Table<ProjectKey>,
    pub(super) service_accounts: Table<ServiceAccount>,
    /// Every user who was ever in the project, by user id (inactive once removed).
    pub(super) members: Table<Membership>,
    pub(super) rate_limits: Table<RateLimit>,
    /// The organization's certificates configured for this project.
    pub(super) certificates: Table<ProjectCertificate>,
}

impl Row for Project {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        (0, self.seq)
    }
}

/// The hosted tools of `ProjectHostedToolPermissions`, in the spec's order.
pub(super) const HOSTED_TOOLS: [&str; 5] = [
    "file_search",
    "web_search",
    "image_generation",
    "mcp",
    "code_interpreter",
];

/// The `type` values of `ProjectDataRetention` (and `UpdateProjectDataRetentionBody`).
pub(super) const PROJECT_RETENTION_TYPES: [&str; 6] = [
    "organization_default",
    "none",
    "zero_data_retention",
    "modified_abuse_monitoring",
    "enhanced_zero_data_retention",
    "enhanced_modified_abuse_monitoring",
];

/// A project's model policy, hosted tools, hard spend limit and data retention. A new project
/// allows every model (a deny list of nothing), enables every tool (as the spec's example
/// shows), has no spend limit and follows the organization's data retention (the spec's
/// example, `organization_default`).
pub(super) struct Controls {
    /// `allow_list` or `deny_list`.
    pub(super) model_mode: &'static str,
    pub(super) model_ids: Vec<String>,
    /// Enabled or not, per entry of [`HOSTED_TOOLS`].
    pub(super) hosted_tools: BTreeMap<&'static str, bool>,
    /// Cents per month.
    pub(super) spend_limit: Option<i64>,
    /// One of [`PROJECT_RETENTION_TYPES`].
    pub(super) data_retention: &'static str,
}

impl Default for Controls {
    fn default() -> Controls {
        Controls {
            model_mode: "deny_list",
            model_ids: Vec::new(),
            hosted_tools: HOSTED_TOOLS.iter().map(|tool| (*tool, true)).collect(),
            spend_limit: None,
            data_retention: "organization_default",
        }
    }
}

impl Controls {
    /// `ProjectModelPermissions`.
    pub(super) fn render_models(&self) -> Value {
        json!({
            "object": "project.model_permissions",
            "mode": self.model_mode,
            "model_ids": self.model_ids,
        })
    }

    /// `ProjectHostedToolPermissions`: `{<tool>: {enabled}}` for every tool.
    pub(super) fn render_tools(&self) -> Value {
        Value::Object(
            self.hosted_tools
                .iter()
                .map(|(tool, enabled)| ((*tool).to_owned(), json!({"enabled": enabled})))
                .collect(),
        )
    }

    /// `ProjectSpendLimitResource`, when a limit is set.
    pub(super) fn render_spend_limit(&self) -> Option<Value> {
        self.spend_limit.map(|cents| {
            json!({
                "object": "project.spend_limit",
                "threshold_amount": cents,
                "currency": "USD",
                "interval": "month",
                "enforcement": {"status": "enforcing"},
            })
        })
    }

    /// `ProjectDataRetention`.
    pub(super) fn render_data_retention(&self) -> Value {
        json!({"object": "project.data_retention", "type": self.data_retention})
    }
}

impl Project {
    pub(super) fn render(&self) -> Value {
        json!({
            "id": self.id,
            "object": "organization.project",
            "name": self.name,
            "created_at": self.created_at,
            "archived_at": self.archived_at,
            "status": if self.archived_at.is_some() { "archived" } else { "active" },
            "external_key_id": self.external_key_id,
        })
    }
}

/// An organization member. The fake's own admin key belongs to `user-fake`, who is not one.
pub(super) struct OrgUser {
    pub(super) id: String,
    pub(super) email: String,
    pub(super) name: String,
    /// `owner` or `reader` (the spec's `User.role`).
    pub(super) role: &'static str,
    pub(super) added_at: i64,
    pub(super) seq: u64,
}

impl Row for OrgUser {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        (0, self.seq)
    }
}

impl OrgUser {
    /// `User` with the fields the spec marks required plus the ones its example shows.
    pub(super) fn render(&self) -> Value {
        json!({
            "object": "organization.user",
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "role": self.role,
            "added_at": self.added_at,
        })
    }
}

/// A user's place in a project. Removing the user keeps the row (inactive) so their keys can
/// still show the owner, with `owner_project_access: inactive`.
pub(super) struct Membership {
    pub(super) user_id: String,
    pub(super) role: Role,
    pub(super) added_at: i64,
    pub(super) active: bool,
    pub(super) seq: u64,
}

impl Row for Membership {
    fn id(&self) -> &str {
        &self.user_id
    }
    fn order(&self) -> Order {
        (0, self.seq)
    }
}

pub(super) struct ServiceAccount {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) role: String,
    pub(super) created_at: i64,
    pub(super) seq: u64,
}

impl Row for ServiceAccount {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        (0, self.seq)
    }
}

impl ServiceAccount {
    pub(super) fn render(&self) -> Value {
        json!({
            "object": "organization.project.service_account",
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
        })
    }
}

#[derive(Clone)]
pub(super) enum Owner {
    User(String),
    ServiceAccount(String),
}

pub(super) struct ProjectKey {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) value: String,
    pub(super) redacted_value: String,
    pub(super) created_at: i64,
    pub(super) last_used_at: Option<i64>,
    pub(super) expires_at: Option<i64>,
    /// The key's scope restrictions; empty means none (all permissions). The API never returns
    /// them; tests read them through `OpenAiFake::key_scopes`.
    pub(super) scopes: Vec<String>,
    pub(super) owner: Owner,
    pub(super) seq: u64,
}

impl Row for ProjectKey {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        (0, self.seq)
    }
}

impl ProjectKey {
    /// Whether the key has expired by `now` (an expired key cannot be updated).
    pub(super) fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

pub(super) struct AdminKey {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) value: String,
    pub(super) created_at: i64,
    pub(super) last_used_at: Option<i64>,
    /// The organization member who owns it; `None`: `user-fake`, the fake's own owner.
    pub(super) owner: Option<String>,
    pub(super) seq: u64,
}

impl Row for AdminKey {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        (self.created_at, self.seq)
    }
}

pub(super) struct RateLimit {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) limits: BTreeMap<String, i64>,
    pub(super) seq: u64,
}

impl Row for RateLimit {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        (0, self.seq)
    }
}

impl RateLimit {
    pub(super) fn render(&self) -> Value {
        let mut object = serde_json::Map::new();
        object.insert("object".into(), json!("project.rate_limit"));
        object.insert("id".into(), json!(self.id));
        object.insert("model".into(), json!(self.model));
        for field in RATE_LIMIT_FIELDS {
            if let Some(value) = self.limits.get(field) {
                object.insert(field.into(), json!(value));
            }
        }
        Value::Object(object)
    }
}

/// A certificate uploaded to the organization (`OrganizationCertificate`). Lists are ordered
/// by `created_at`, as the spec's `order` parameter says.
pub(super) struct Certificate {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) created_at: i64,
    pub(super) valid_at: i64,
    pub(super) expires_at: i64,
    /// Active at the organization level.
    pub(super) active: bool,
    pub(super) seq: u64,
}

impl Row for Certificate {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        (self.created_at, self.seq)
    }
}

impl Certificate {
    /// The certificate as a list shows it: `object` is `organization.certificate` or
    /// `organization.project.certificate`, `active` the state at that level.
    pub(super) fn render(&self, object: &str, active: bool) -> Value {
        json!({
            "object": object,
            "id": self.id,
            "name": self.name,
            "active": active,
            "created_at": self.created_at,
            "certificate_details": {
                "valid_at": self.valid_at,
                "expires_at": self.expires_at,
            },
        })
    }
}

/// An organization certificate configured for a project, in the certificate's own order.
pub(super) struct ProjectCertificate {
    pub(super) id: String,
    pub(super) order: Order,
    pub(super) active: bool,
}

impl Row for ProjectCertificate {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        self.order
    }
}

/// An `AuditLog`, kept compact (a large organization has one per key) and rendered per page.
pub(super) struct AuditEntry {
    pub(super) id: String,
    pub(super) event_type: String,
    pub(super) effective_at: i64,
    /// `project: {id, name}` as it was when the event happened.
    pub(super) project: Option<(String, String)>,
    /// Shared: a seeded organization has a handful of actors for many events.
    pub(super) actor: Arc<Value>,
    /// The object under the event's type (`{"id": …, "data": …}`).
    pub(super) details: Value,
    pub(super) seq: u64,
}

impl Row for AuditEntry {
    fn id(&self) -> &str {
        &self.id
    }
    fn order(&self) -> Order {
        (self.effective_at, self.seq)
    }
}

impl AuditEntry {
    pub(super) fn render(&self) -> Value {
        let mut log = serde_json::Map::new();
        log.insert("id".into(), json!(self.id));
        log.insert("type".into(), json!(self.event_type));
        log.insert("effective_at".into(), json!(self.effective_at));
        if let Some((id, name)) = &self.project {
            log.insert("project".into(), json!({"id": id, "name": name}));
        }
        log.insert("actor".into(), (*self.actor).clone());
        log.insert(self.event_type.clone(), self.details.clone());
        Value::Object(log)
    }
}

pub(super) struct QueuedFault {
    prefix: Option<String>,
    remaining: usize,
    fault: Fault,
}

/// Every `every`th request is answered 429 with `Retry-After: retry_after_secs`.
pub(super) struct Throttle {
    pub(super) every: u64,
    pub(super) retry_after_secs: u64,
    pub(super) seen: u64,
}

pub(super) struct State {
    pub(super) admin_key_value: String,
    pub(super) admin_key_id: String,
    pub(super) projects: Table<Project>,
    pub(super) default_project: Option<String>,
    pub(super) org_users: Table<OrgUser>,
    /// Users removed from the organization, kept to show as the owners of the keys they left
    /// behind.
    pub(super) former_users: HashMap<String, OrgUser>,
    /// The project of every project API key (key ids are unique in the organization).
    pub(super) key_projects: HashMap<String, String>,
    /// The project of every service account.
    pub(super) service_account_projects: HashMap<String, String>,
    pub(super) admin_keys: Table<AdminKey>,
    pub(super) certificates: Table<Certificate>,
    /// `OrganizationDataRetention.type`.
    pub(super) data_retention: &'static str,
    pub(super) audit: Table<AuditEntry>,
    /// Usage by endpoint and time, so a bucket reads only its own rows.
    pub(super) usage: BTreeMap<(&'static str, i64, u64), UsageSeed>,
    pub(super) calls: Vec<Call>,
    pub(super) faults: VecDeque<QueuedFault>,
    pub(super) throttle: Option<Throttle>,
    pub(super) broken_pagination: bool,
    pub(super) page_size: Option<usize>,
    pub(super) usage_page_size: Option<usize>,
    pub(super) max_page_size: Option<usize>,
    pub(super) now: Option<i64>,
    pub(super) audit_mutations: bool,
    next_seq: u64,
}

/// The `type` values of `OrganizationDataRetention`.
pub(super) const ORGANIZATION_RETENTION_TYPES: [&str; 4] = [
    "zero_data_retention",
    "modified_abuse_monitoring",
    "enhanced_zero_data_retention",
    "enhanced_modified_abuse_monitoring",
];

impl State {
    pub(super) fn new() -> State {
        let mut state = State {
            admin_key_value: String::new(),
            admin_key_id: "key_admin_fake".to_owned(),
            projects: Table::default(),
            default_project: None,
            org_users: Table::default(),
            former_users: HashMap::new(),
            key_projects: HashMap::new(),
            service_account_projects: HashMap::new(),
            admin_keys: Table::default(),
            certificates: Table::default(),
            // The spec's example; its enum has no value for "no special retention".
            data_retention: "modified_abuse_monitoring",
            audit: Table::default(),
            usage: BTreeMap::new(),
            calls: Vec::new(),
            faults: VecDeque::new(),
            throttle: None,
            broken_pagination: false,
            page_size: None,
            usage_page_size: None,
            max_page_size: None,
            now: None,
            audit_mutations: true,
            next_seq: 0,
        };
        state.admin_key_value = state.add_admin_key("key_admin_fake", "Fake admin key");
        state
    }

    /// Makes `secret` the value of the fake's own admin key, the one requests authenticate with.
    pub(super) fn replace_admin_key(&mut self, secret: &str) {
        let id = self.admin_key_id.clone();
        if let Some(key) = self.admin_keys.get_mut(&id) {
            key.value = secret.to_owned();
        }
        self.admin_key_value = secret.to_owned();
    }

    pub(super) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The fake's clock in Unix seconds.
    pub(super) fn now(&self) -> i64 {
        self.now.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| {
                    i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
                })
        })
    }

    /// A page request with the fake's broken-pagination switch applied.
    pub(super) fn page_request<'a>(&self, limit: usize, after: Option<&'a str>) -> PageRequest<'a> {
        PageRequest::after(limit, after, self.broken_pagination)
    }

    // ---- faults ----

    pub(super) fn queue_fault(&mut self, prefix: Option<String>, count: usize, fault: Fault) {
        if count > 0 {
            self.faults.push_back(QueuedFault {
                prefix,
                remaining: count,
                fault,
            });
        }
    }

    /// The first queued fault that applies to `path`, consuming one use of it; otherwise the
    /// throttle's 429 when this request is its `every`th.
    pub(super) fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let throttled = self.throttle.as_mut().and_then(|throttle| {
            throttle.seen += 1;
            (throttle.seen % throttle.every == 0).then_some(Fault::RateLimited {
                retry_after_secs: throttle.retry_after_secs,
            })
        });
        let unversioned = path.strip_prefix("/v1").unwrap_or(path);
        let Some(index) = self.faults.iter().position(|queued| {
            queued
                .prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix) || unversioned.starts_with(prefix))
        }) else {
            return throttled;
        };
        let queued = self.faults.get_mut(index)?;
        queued.remaining -= 1;
        let fault = queued.fault.clone();
        if queued.remaining == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }

    // ---- lookups ----

    pub(super) fn expect_project(&self, project_id: &str) {
        assert!(
            self.projects.contains(project_id),
            "seed project {project_id} first"
        );
    }

    pub(super) fn project(&self, project_id: &str) -> Option<&Project> {
        self.projects.get(project_id)
    }

    /// The project, for seeding; panics when it was not seeded.
    pub(super) fn project_mut(&mut self, project_id: &str) -> &mut Project {
        self.projects
            .get_mut(project_id)
            .unwrap_or_else(|| panic!("seed project {project_id} first"))
    }

    pub(super) fn membership(&self, project_id: &str, user_id: &str) -> Option<&Membership> {
        self.project(project_id)?.members.get(user_id)
    }

    /// A project API key by id alone, with its project.
    pub(super) fn key_anywhere(&self, key_id: &str) -> Option<(&Project, &ProjectKey)> {
        let project = self.project(self.key_projects.get(key_id)?)?;
        Some((project, project.keys.get(key_id)?))
    }

    /// A project API key by id alone, to change it.
    pub(super) fn key_anywhere_mut(&mut self, key_id: &str) -> Option<&mut ProjectKey> {
        let project_id = self.key_projects.get(key_id)?;
        self.projects.get_mut(project_id)?.keys.get_mut(key_id)
    }

    /// A member of the organization, or one removed from it (to show as a key's owner).
    pub(super) fn any_user(&self, user_id: &str) -> Option<&OrgUser> {
        self.org_users
            .get(user_id)
            .or_else(|| self.former_users.get(user_id))
    }

    // ---- seeding and creation ----

    pub(super) fn add_project(
        &mut self,
        id: &str,
        name: &str,
        created_at: i64,
        archived_at: Option<i64>,
    ) {
        let seq = self.seq();
        let added = self.projects.insert(Project {
            id: id.to_owned(),
            name: name.to_owned(),
            created_at,
            archived_at,
            external_key_id: None,
            seq,
            controls: Controls::default(),
            keys: Table::default(),
            service_accounts: Table::default(),
            members: Table::default(),
            rate_limits: Table::default(),
            certificates: Table::default(),
        });
        assert!(added, "project {id} seeded twice");
    }

    /// Adds an organization member (name from the e-mail's local part) unless there is one
    /// with this id.
    pub(super) fn add_org_user(
        &mut self,
        user_id: &str,
        email: &str,
        role: &'static str,
        added_at: i64,
    ) {
        if self.org_users.contains(user_id) {
            return;
        }
        let name = email.split('@').next().unwrap_or(email).to_owned();
        let seq = self.seq();
        self.org_users.insert(OrgUser {
            id: user_id.to_owned(),
            email: email.to_owned(),
            name,
            role,
            added_at,
            seq,
        });
    }

    /// Removes a member from the organization: out of every project, kept only as the owner
    /// of the keys they leave behind (`owner_project_access: inactive`).
    pub(super) fn remove_org_user(&mut self, user_id: &str) -> bool {
        let Some(user) = self.org_users.remove(user_id) else {
            return false;
        };
        for project in self.projects.values_mut() {
            if let Some(membership) = project.members.get_mut(user_id) {
                membership.active = false;
            }
        }
        self.former_users.insert(user.id.clone(), user);
        true
    }

    /// Adds or re-activates a membership at `added_at`.
    pub(super) fn add_membership(
        &mut self,
        project_id: &str,
        user_id: &str,
        role: Role,
        added_at: i64,
    ) {
        let seq = self.seq();
        let project = self.project_mut(project_id);
        if let Some(existing) = project.members.get_mut(user_id) {
            existing.role = role;
            existing.active = true;
            existing.added_at = added_at;
            return;
        }
        project.members.insert(Membership {
            user_id: user_id.to_owned(),
            role,
            added_at,
            active: true,
            seq,
        });
    }

    pub(super) fn add_service_account(
        &mut self,
        project_id: &str,
        id: &str,
        name: &str,
        role: &str,
        created_at: i64,
    ) {
        assert!(
            !self.service_account_projects.contains_key(id),
            "service account {id} seeded twice"
        );
        let seq = self.seq();
        self.project_mut(project_id)
            .service_accounts
            .insert(ServiceAccount {
                id: id.to_owned(),
                name: name.to_owned(),
                role: role.to_owned(),
                created_at,
                seq,
            });
        self.service_account_projects
            .insert(id.to_owned(), project_id.to_owned());
    }

    /// Removes a service account and its keys; returns the ids of the keys.
    pub(super) fn remove_service_account(&mut self, project_id: &str, id: &str) -> Vec<String> {
        let Some(project) = self.projects.get_mut(project_id) else {
            return Vec::new();
        };
        if project.service_accounts.remove(id).is_none() {
            return Vec::new();
        }
        let gone: Vec<String> = project
            .keys
            .iter()
            .filter(|key| matches!(&key.owner, Owner::ServiceAccount(owner) if owner == id))
            .map(|key| key.id.clone())
            .collect();
        for key_id in &gone {
            project.keys.remove(key_id);
            self.key_projects.remove(key_id);
        }
        self.service_account_projects.remove(id);
        gone
    }

    pub(super) fn add_key(&mut self, project_id: &str, owner: Owner, seed: KeySeed) {
        assert!(
            !self.key_projects.contains_key(&seed.id),
            "key {} seeded twice",
            seed.id
        );
        let prefix = match owner {
            Owner::User(_) => "sk-proj-",
            Owner::ServiceAccount(_) => "sk-svcacct-",
        };
        let value = seed
            .value
            .unwrap_or_else(|| synthetic_secret(prefix, &seed.id));
        let redacted_value = seed.redacted_value.unwrap_or_else(|| redact(&value));
        let seq = self.seq();
        self.key_projects
            .insert(seed.id.clone(), project_id.to_owned());
        self.project_mut(project_id).keys.insert(ProjectKey {
            id: seed.id,
            name: seed.name,
            value,
            redacted_value,
            created_at: seed.created_at,
            last_used_at: seed.last_used_at,
            expires_at: seed.expires_at,
            scopes: seed.scopes,
            owner,
            seq,
        });
    }

    /// Removes a project API key; returns it.
    pub(super) fn remove_key(&mut self, project_id: &str, key_id: &str) -> Option<ProjectKey> {
        let key = self.projects.get_mut(project_id)?.keys.remove(key_id)?;
        self.key_projects.remove(key_id);
        Some(key)
    }

    pub(super) fn add_admin_key(&mut self, id: &str, name: &str) -> String {
        self.add_owned_admin_key(id, name, None, DEFAULT_CREATED_AT, None)
    }

    pub(super) fn add_owned_admin_key(
        &mut self,
        id: &str,
        name: &str,
        owner: Option<String>,
        created_at: i64,
        last_used_at: Option<i64>,
    ) -> String {
        let value = if id == "key_admin_fake" {
            // Recognisable in logs: `sk-admin-fake…`.
            synthetic_secret("sk-admin-fake", id)
        } else {
            synthetic_secret("sk-admin-", id)
        };
        let seq = self.seq();
        let added = self.admin_keys.insert(AdminKey {
            id: id.to_owned(),
            name: name.to_owned(),
            value: value.clone(),
            created_at,
            last_used_at,
            owner,
            seq,
        });
        assert!(added, "admin key {id} seeded twice");
        value
    }

    pub(super) fn add_rate_limit(&mut self, project_id: &str, seed: RateLimitSeed) -> String {
        let id = format!("rl-{}", seed.model);
        let seq = self.seq();
        let added = self.project_mut(project_id).rate_limits.insert(RateLimit {
            id: id.clone(),
            model: seed.model,
            limits: seed
                .limits
                .into_iter()
                .map(|(field, value)| (field.to_owned(), value))
                .collect(),
            seq,
        });
        assert!(added, "rate limit {id} seeded twice in {project_id}");
        id
    }

    pub(super) fn add_certificate(&mut self, certificate: Certificate) {
        let id = certificate.id.clone();
        assert!(
            self.certificates.insert(certificate),
            "certificate {id} seeded twice"
        );
    }

    /// Configures an organization certificate for a project.
    pub(super) fn add_project_certificate(
        &mut self,
        project_id: &str,
        certificate_id: &str,
        active: bool,
    ) {
        let order = self
            .certificates
            .get(certificate_id)
            .map(Row::order)
            .unwrap_or_else(|| panic!("seed certificate {certificate_id} first"));
        let certificates = &mut self.project_mut(project_id).certificates;
        if let Some(existing) = certificates.get_mut(certificate_id) {
            existing.active = active;
            return;
        }
        certificates.insert(ProjectCertificate {
            id: certificate_id.to_owned(),
            order,
            active,
        });
    }

    pub(super) fn add_audit(&mut self, event: AuditEvent) -> String {
        assert!(
            is_event_type(&event.event_type),
            "{} is not an AuditLogEventType",
            event.event_type
        );
        self.add_audit_entry(
            event.event_type,
            event.effective_at,
            event.project_id.as_deref(),
            Arc::new(event.actor),
            event.details,
        )
    }

    /// Appends an audit event whose type is known to be one of the spec's.
    pub(super) fn add_audit_entry(
        &mut self,
        event_type: String,
        effective_at: i64,
        project_id: Option<&str>,
        actor: Arc<Value>,
        details: Value,
    ) -> String {
        let seq = self.seq();
        let id = format!("audit_log-{seq:06}");
        let project = project_id.map(|project_id| {
            let project = self
                .project(project_id)
                .unwrap_or_else(|| panic!("seed project {project_id} before its audit events"));
            (project.id.clone(), project.name.clone())
        });
        self.audit.insert(AuditEntry {
            id: id.clone(),
            event_type,
            effective_at,
            project,
            actor,
            details,
            seq,
        });
        id
    }

    /// Appends the audit event for a change made through the API, if that is switched on.
    /// Admin API key actions are attributed to the default project (spec, `AuditLog.project`).
    pub(super) fn audit_mutation(&mut self, event_type: &str, details: Value) {
        if !self.audit_mutations {
            return;
        }
        let mut event = AuditEvent::new(event_type, self.now(), details).actor(json!({
            "type": "api_key",
            "api_key": {
                "id": self.admin_key_id,
                "type": "user",
                "user": {"id": "user-fake", "email": "owner@example.com"}
            }
        }));
        event.project_id = self.default_project.clone();
        self.add_audit(event);
    }

    pub(super) fn add_usage(&mut self, usage: UsageSeed) {
        let seq = self.seq();
        self.usage.insert((usage.endpoint, usage.at, seq), usage);
    }

    // ---- rendering ----

    pub(super) fn render_key(&self, project: &Project, key: &ProjectKey) -> Value {
        json!({
            "object": "organization.project.api_key",
            "redacted_value": key.redacted_value,
            "name": key.name,
            "created_at": key.created_at,
            "last_used_at": key.last_used_at,
            "expires_at": key.expires_at,
            "id": key.id,
            "owner_project_access": if owner_has_access(project, key) { "active" } else { "inactive" },
            "owner": self.render_owner(project, key),
        })
    }

    fn render_owner(&self, project: &Project, key: &ProjectKey) -> Value {
        match &key.owner {
            Owner::User(user_id) => {
                let user = self.any_user(user_id);
                let role = project
                    .members
                    .get(user_id)
                    .map_or("member", |m| m.role.as_str());
                json!({
                    "type": "user",
                    "user": {
                        "id": user_id,
                        "name": user.map(|u| u.name.as_str()),
                        "email": user.map(|u| u.email.as_str()),
                        "role": role,
                        "created_at": user.map_or(DEFAULT_CREATED_AT, |u| u.added_at),
                    }
                })
            }
            Owner::ServiceAccount(sa_id) => {
                let sa = project.service_accounts.get(sa_id);
                json!({
                    "type": "service_account",
                    "service_account": {
                        "id": sa_id,
                        "name": sa.map(|sa| sa.name.as_str()),
                        "created_at": sa.map_or(DEFAULT_CREATED_AT, |sa| sa.created_at),
                        "role": sa.map_or("member", |sa| sa.role.as_str()),
                    }
                })
            }
        }
    }

    pub(super) fn render_membership(&self, membership: &Membership) -> Value {
        let user = self.any_user(&membership.user_id);
        json!({
            "object": "organization.project.user",
            "id": membership.user_id,
            "name": user.map(|u| u.name.as_str()),
            "email": user.map(|u| u.email.as_str()),
            "role": membership.role.as_str(),
            "added_at": membership.added_at,
        })
    }

    pub(super) fn render_admin_key(&self, key: &AdminKey) -> Value {
        let owner = match key.owner.as_deref().and_then(|id| self.any_user(id)) {
            Some(user) => json!({
                "type": "user",
                "object": "organization.user",
                "id": user.id,
                "name": user.name,
                "created_at": user.added_at,
                "role": user.role,
            }),
            None => json!({
                "type": "user",
                "object": "organization.user",
                "id": "user-fake",
                "name": "Fake Owner",
                "created_at": DEFAULT_CREATED_AT,
                "role": "owner"
            }),
        };
        json!({
            "object": "organization.admin_api_key",
            "id": key.id,
            "name": key.name,
            "redacted_value": redact(&key.value),
            "created_at": key.created_at,
            "expires_at": null,
            "last_used_at": key.last_used_at,
            "owner": owner,
        })
    }
}

/// Whether a key's owner still has access to its project: a service account always, a user
/// while a member.
pub(super) fn owner_has_access(project: &Project, key: &ProjectKey) -> bool {
    match &key.owner {
        Owner::User(user_id) => project.members.get(user_id).is_some_and(|m| m.active),
        Owner::ServiceAccount(_) => true,
    }
}

/// `<first 8 chars>...<last 4 chars>`, like the spec's `sk-admin...def` examples.
pub(super) fn redact(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 12 {
        return secret.to_owned();
    }
    let head: String = chars.iter().take(8).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head}...{tail}")
}

/// A made-up secret in the current OpenAI layout: prefix, filler, `T3BlbkFJ`, filler (58
/// characters of `[A-Za-z0-9_-]` on each side of the marker, counting the prefix's tail).
pub(super) fn synthetic_secret(prefix: &str, seed: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut filler = |count: usize| -> String {
        (0..count)
            .map(|_| {
                hash = hash
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let index = usize::try_from(hash >> 58).unwrap_or(0) % ALPHABET.len();
                char::from(ALPHABET[index])
            })
            .collect()
    };
    let known_prefix = ["sk-proj-", "sk-svcacct-", "sk-admin-"]
        .iter()
        .find(|known| prefix.starts_with(*known))
        .map_or(0, |known| prefix.len() - known.len());
    let first = filler(58usize.saturating_sub(known_prefix));
    let second = filler(58);
    format!("{prefix}{first}T3BlbkFJ{second}")
}

/// What one `/organization/usage/<name>` endpoint answers, as the spec has it: the result
/// object's `object`, the fields it can be grouped by (each present in every result, `null`
/// unless grouped by), and its counters.
#[derive(Debug)]
pub(super) struct UsageFamily {
    pub(super) object: &'static str,
    pub(super) group_by: &'static [&'static str],
    pub(super) amounts: &'static [&'static str],
    /// Query parameters that filter by a grouping field, with that field.
    pub(super) filters: &'static [(&'static str, &'static str)],
}

const MODEL_GROUPS: &[&str] = &["project_id", "user_id", "api_key_id", "model"];
const COMMON_FILTERS: &[(&str, &str)] = &[
    ("project_ids", "project_id"),
    ("user_ids", "user_id"),
    ("api_key_ids", "api_key_id"),
    ("models", "model"),
];

/// The spec's usage endpoint `name` (one of `USAGE_ENDPOINTS`); `UsageCompletionsResult`,
/// `UsageEmbeddingsResult`, … give the objects and counters, each operation its `group_by` enum.
pub(super) fn usage_family(name: &str) -> &'static UsageFamily {
    const COMPLETIONS: UsageFamily = UsageFamily {
        object: "organization.usage.completions.result",
        group_by: &[
            "project_id",
            "user_id",
            "api_key_id",
            "model",
            "batch",
            "service_tier",
        ],
        amounts: &[
            "input_tokens",
            "output_tokens",
            "input_cached_tokens",
            "input_audio_tokens",
            "output_audio_tokens",
            "num_model_requests",
        ],
        filters: COMMON_FILTERS,
    };
    const EMBEDDINGS: UsageFamily = UsageFamily {
        object: "organization.usage.embeddings.result",
        group_by: MODEL_GROUPS,
        amounts: &["input_tokens", "num_model_requests"],
        filters: COMMON_FILTERS,
    };
    const MODERATIONS: UsageFamily = UsageFamily {
        object: "organization.usage.moderations.result",
        ..EMBEDDINGS
    };
    const IMAGES: UsageFamily = UsageFamily {
        object: "organization.usage.images.result",
        group_by: &[
            "project_id",
            "user_id",
            "api_key_id",
            "model",
            "size",
            "source",
        ],
        amounts: &["images", "num_model_requests"],
        filters: &[
            ("project_ids", "project_id"),
            ("user_ids", "user_id"),
            ("api_key_ids", "api_key_id"),
            ("models", "model"),
            ("sizes", "size"),
            ("sources", "source"),
        ],
    };
    const AUDIO_SPEECHES: UsageFamily = UsageFamily {
        object: "organization.usage.audio_speeches.result",
        group_by: MODEL_GROUPS,
        amounts: &["characters", "num_model_requests"],
        filters: COMMON_FILTERS,
    };
    const AUDIO_TRANSCRIPTIONS: UsageFamily = UsageFamily {
        object: "organization.usage.audio_transcriptions.result",
        group_by: MODEL_GROUPS,
        amounts: &["seconds", "num_model_requests"],
        filters: COMMON_FILTERS,
    };
    const FILE_SEARCH_CALLS: UsageFamily = UsageFamily {
        object: "organization.usage.file_searches.result",
        group_by: &["project_id", "user_id", "api_key_id", "vector_store_id"],
        amounts: &["num_requests"],
        filters: &[
            ("project_ids", "project_id"),
            ("user_ids", "user_id"),
            ("api_key_ids", "api_key_id"),
            ("vector_store_ids", "vector_store_id"),
        ],
    };
    const WEB_SEARCH_CALLS: UsageFamily = UsageFamily {
        object: "organization.usage.web_searches.result",
        group_by: &[
            "project_id",
            "user_id",
            "api_key_id",
            "model",
            "context_level",
        ],
        amounts: &["num_model_requests", "num_requests"],
        filters: &[
            ("project_ids", "project_id"),
            ("user_ids", "user_id"),
            ("api_key_ids", "api_key_id"),
            ("models", "model"),
            ("context_levels", "context_level"),
        ],
    };
    // Usage the spec reports per project only (no key, user or model).
    const CODE_INTERPRETER_SESSIONS: UsageFamily = UsageFamily {
        object: "organization.usage.code_interpreter_sessions.result",
        group_by: &["project_id"],
        amounts: &["num_sessions"],
        filters: &[("project_ids", "project_id")],
    };
    const VECTOR_STORES: UsageFamily = UsageFamily {
        object: "organization.usage.vector_stores.result",
        group_by: &["project_id"],
        amounts: &["usage_bytes"],
        filters: &[("project_ids", "project_id")],
    };
    match name {
        "code_interpreter_sessions" => &CODE_INTERPRETER_SESSIONS,
        "vector_stores" => &VECTOR_STORES,
        "completions" => &COMPLETIONS,
        "embeddings" => &EMBEDDINGS,
        "moderations" => &MODERATIONS,
        "images" => &IMAGES,
        "audio_speeches" => &AUDIO_SPEECHES,
        "audio_transcriptions" => &AUDIO_TRANSCRIPTIONS,
        "file_search_calls" => &FILE_SEARCH_CALLS,
        "web_search_calls" => &WEB_SEARCH_CALLS,
        other => panic!("{other} is not a usage endpoint the fake serves"),
    }
}

impl UsageSeed {
    /// The value of grouping field `field` for this usage (`null` when it has none).
    pub(super) fn dimension_value(&self, field: &str) -> Value {
        match field {
            "project_id" => json!(self.project_id),
            "user_id" => json!(self.user_id),
            "api_key_id" => json!(self.api_key_id),
            "model" => json!(self.model),
            "batch" => json!(self.batch),
            "service_tier" => json!(self.service_tier),
            other => self
                .dimensions
                .iter()
                .find(|(name, _)| *name == other)
                .map_or(Value::Null, |(_, value)| json!(value)),
        }
    }

    /// The counter `field` (0 when not set).
    pub(super) fn amount_value(&self, field: &str) -> i64 {
        self.amounts
            .iter()
            .find(|(name, _)| *name == field)
            .map_or(0, |(_, value)| *value)
    }
}
