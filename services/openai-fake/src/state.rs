//! The fake's data: what is seeded or created, how it renders as the spec's objects, and the
//! cursor pages every list endpoint shares.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Value, json};

use super::api::ApiError;
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
    /// `…/spend_limit`).
    pub(super) controls: Controls,
}

/// The hosted tools of `ProjectHostedToolPermissions`, in the spec's order.
pub(super) const HOSTED_TOOLS: [&str; 5] = [
    "file_search",
    "web_search",
    "image_generation",
    "mcp",
    "code_interpreter",
];

/// A project's model policy, hosted tools and hard spend limit. A new project allows every
/// model (a deny list of nothing), enables every tool (as the spec's example shows) and has no
/// spend limit.
pub(super) struct Controls {
    /// `allow_list` or `deny_list`.
    pub(super) model_mode: &'static str,
    pub(super) model_ids: Vec<String>,
    /// Enabled or not, per entry of [`HOSTED_TOOLS`].
    pub(super) hosted_tools: BTreeMap<&'static str, bool>,
    /// Cents per month.
    pub(super) spend_limit: Option<i64>,
}

impl Default for Controls {
    fn default() -> Controls {
        Controls {
            model_mode: "deny_list",
            model_ids: Vec::new(),
            hosted_tools: HOSTED_TOOLS.iter().map(|tool| (*tool, true)).collect(),
            spend_limit: None,
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

pub(super) struct OrgUser {
    pub(super) id: String,
    pub(super) email: String,
    pub(super) name: String,
    pub(super) created_at: i64,
}

/// A user's place in a project. Removing the user keeps the row (inactive) so their keys can
/// still show the owner, with `owner_project_access: inactive`.
pub(super) struct Membership {
    pub(super) project_id: String,
    pub(super) user_id: String,
    pub(super) role: Role,
    pub(super) added_at: i64,
    pub(super) active: bool,
    pub(super) seq: u64,
}

pub(super) struct ServiceAccount {
    pub(super) project_id: String,
    pub(super) id: String,
    pub(super) name: String,
    pub(super) role: String,
    pub(super) created_at: i64,
    pub(super) seq: u64,
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

pub(super) enum Owner {
    User(String),
    ServiceAccount(String),
}

pub(super) struct ProjectKey {
    pub(super) project_id: String,
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
    pub(super) seq: u64,
}

impl AdminKey {
    pub(super) fn render(&self) -> Value {
        json!({
            "object": "organization.admin_api_key",
            "id": self.id,
            "name": self.name,
            "redacted_value": redact(&self.value),
            "created_at": self.created_at,
            "expires_at": null,
            "last_used_at": null,
            "owner": {
                "type": "user",
                "object": "organization.user",
                "id": "user-fake",
                "name": "Fake Owner",
                "created_at": DEFAULT_CREATED_AT,
                "role": "owner"
            }
        })
    }
}

pub(super) struct RateLimit {
    pub(super) project_id: String,
    pub(super) id: String,
    pub(super) model: String,
    pub(super) limits: BTreeMap<String, i64>,
    pub(super) seq: u64,
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

pub(super) struct AuditEntry {
    pub(super) id: String,
    pub(super) effective_at: i64,
    pub(super) seq: u64,
    pub(super) log: Value,
}

pub(super) struct QueuedFault {
    prefix: Option<String>,
    remaining: usize,
    fault: Fault,
}

/// One object offered to [`State::cursor_page`]: its id, its place in the order, whether the
/// request's filters keep it, and its JSON.
pub(super) struct Listed {
    pub(super) id: String,
    pub(super) key: (i64, u64),
    pub(super) visible: bool,
    pub(super) json: Value,
}

/// What a cursor list request asked for.
pub(super) struct PageRequest<'a> {
    pub(super) kind: &'static str,
    pub(super) limit: usize,
    pub(super) after: Option<&'a str>,
    pub(super) before: Option<&'a str>,
    pub(super) descending: bool,
}

pub(super) struct State {
    pub(super) admin_key_value: String,
    pub(super) admin_key_id: String,
    pub(super) projects: Vec<Project>,
    pub(super) default_project: Option<String>,
    pub(super) org_users: BTreeMap<String, OrgUser>,
    pub(super) memberships: Vec<Membership>,
    pub(super) service_accounts: Vec<ServiceAccount>,
    pub(super) keys: Vec<ProjectKey>,
    pub(super) admin_keys: Vec<AdminKey>,
    pub(super) rate_limits: Vec<RateLimit>,
    pub(super) audit: Vec<AuditEntry>,
    pub(super) usage: Vec<UsageSeed>,
    pub(super) calls: Vec<Call>,
    pub(super) faults: VecDeque<QueuedFault>,
    pub(super) broken_pagination: bool,
    pub(super) page_size: Option<usize>,
    pub(super) usage_page_size: Option<usize>,
    pub(super) max_page_size: Option<usize>,
    pub(super) now: Option<i64>,
    pub(super) audit_mutations: bool,
    /// Where deleted objects stood, so a cursor naming one still works.
    tombstones: HashMap<(&'static str, String), (i64, u64)>,
    next_seq: u64,
}

impl State {
    pub(super) fn new() -> State {
        let mut state = State {
            admin_key_value: String::new(),
            admin_key_id: "key_admin_fake".to_owned(),
            projects: Vec::new(),
            default_project: None,
            org_users: BTreeMap::new(),
            memberships: Vec::new(),
            service_accounts: Vec::new(),
            keys: Vec::new(),
            admin_keys: Vec::new(),
            rate_limits: Vec::new(),
            audit: Vec::new(),
            usage: Vec::new(),
            calls: Vec::new(),
            faults: VecDeque::new(),
            broken_pagination: false,
            page_size: None,
            usage_page_size: None,
            max_page_size: None,
            now: None,
            audit_mutations: true,
            tombstones: HashMap::new(),
            next_seq: 0,
        };
        state.admin_key_value = state.add_admin_key("key_admin_fake", "Fake admin key");
        state
    }

    /// Makes `secret` the value of the fake's own admin key, the one requests authenticate with.
    pub(super) fn replace_admin_key(&mut self, secret: &str) {
        let id = self.admin_key_id.clone();
        if let Some(key) = self.admin_keys.iter_mut().find(|key| key.id == id) {
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

    /// The first queued fault that applies to `path`, consuming one use of it.
    pub(super) fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let unversioned = path.strip_prefix("/v1").unwrap_or(path);
        let index = self.faults.iter().position(|queued| {
            queued
                .prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix) || unversioned.starts_with(prefix))
        })?;
        let queued = self.faults.get_mut(index)?;
        queued.remaining -= 1;
        let fault = queued.fault.clone();
        if queued.remaining == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }

    // ---- seeding and creation ----

    pub(super) fn expect_project(&self, project_id: &str) {
        assert!(
            self.project(project_id).is_some(),
            "seed project {project_id} first"
        );
    }

    pub(super) fn project(&self, project_id: &str) -> Option<&Project> {
        self.projects
            .iter()
            .find(|project| project.id == project_id)
    }

    /// The project, for seeding; panics when it was not seeded.
    pub(super) fn project_mut(&mut self, project_id: &str) -> &mut Project {
        self.projects
            .iter_mut()
            .find(|project| project.id == project_id)
            .unwrap_or_else(|| panic!("seed project {project_id} first"))
    }

    pub(super) fn add_project(&mut self, id: &str, name: &str, archived_at: Option<i64>) {
        assert!(self.project(id).is_none(), "project {id} seeded twice");
        let seq = self.seq();
        self.projects.push(Project {
            id: id.to_owned(),
            name: name.to_owned(),
            created_at: DEFAULT_CREATED_AT,
            archived_at,
            external_key_id: None,
            seq,
            controls: Controls::default(),
        });
    }

    pub(super) fn add_org_user(&mut self, user_id: &str, email: &str) {
        let name = email.split('@').next().unwrap_or(email).to_owned();
        self.org_users
            .entry(user_id.to_owned())
            .or_insert_with(|| OrgUser {
                id: user_id.to_owned(),
                email: email.to_owned(),
                name,
                created_at: DEFAULT_CREATED_AT,
            });
    }

    pub(super) fn membership(&self, project_id: &str, user_id: &str) -> Option<&Membership> {
        self.memberships
            .iter()
            .find(|m| m.project_id == project_id && m.user_id == user_id)
    }

    /// Adds or re-activates a membership.
    pub(super) fn add_membership(&mut self, project_id: &str, user_id: &str, role: Role) {
        let added_at = self.now();
        if let Some(existing) = self
            .memberships
            .iter_mut()
            .find(|m| m.project_id == project_id && m.user_id == user_id)
        {
            existing.role = role;
            existing.active = true;
            existing.added_at = added_at;
            return;
        }
        let seq = self.seq();
        self.memberships.push(Membership {
            project_id: project_id.to_owned(),
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
    ) {
        assert!(
            !self.service_accounts.iter().any(|sa| sa.id == id),
            "service account {id} seeded twice"
        );
        let seq = self.seq();
        let created_at = self.now();
        self.service_accounts.push(ServiceAccount {
            project_id: project_id.to_owned(),
            id: id.to_owned(),
            name: name.to_owned(),
            role: role.to_owned(),
            created_at,
            seq,
        });
    }

    pub(super) fn add_key(&mut self, project_id: &str, owner: Owner, seed: KeySeed) {
        assert!(
            !self.keys.iter().any(|key| key.id == seed.id),
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
        self.keys.push(ProjectKey {
            project_id: project_id.to_owned(),
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

    pub(super) fn add_admin_key(&mut self, id: &str, name: &str) -> String {
        assert!(
            !self.admin_keys.iter().any(|key| key.id == id),
            "admin key {id} seeded twice"
        );
        let value = if id == "key_admin_fake" {
            // Recognisable in logs: `sk-admin-fake…`.
            synthetic_secret("sk-admin-fake", id)
        } else {
            synthetic_secret("sk-admin-", id)
        };
        let seq = self.seq();
        self.admin_keys.push(AdminKey {
            id: id.to_owned(),
            name: name.to_owned(),
            value: value.clone(),
            created_at: DEFAULT_CREATED_AT,
            seq,
        });
        value
    }

    pub(super) fn add_rate_limit(&mut self, project_id: &str, seed: RateLimitSeed) -> String {
        let id = format!("rl-{}", seed.model);
        assert!(
            !self
                .rate_limits
                .iter()
                .any(|rl| rl.project_id == project_id && rl.id == id),
            "rate limit {id} seeded twice in {project_id}"
        );
        let seq = self.seq();
        self.rate_limits.push(RateLimit {
            project_id: project_id.to_owned(),
            id: id.clone(),
            model: seed.model,
            limits: seed
                .limits
                .into_iter()
                .map(|(field, value)| (field.to_owned(), value))
                .collect(),
            seq,
        });
        id
    }

    pub(super) fn add_audit(&mut self, event: AuditEvent) -> String {
        assert!(
            is_event_type(&event.event_type),
            "{} is not an AuditLogEventType",
            event.event_type
        );
        let seq = self.seq();
        let id = format!("audit_log-{seq:06}");
        let mut log = serde_json::Map::new();
        log.insert("id".into(), json!(id));
        log.insert("type".into(), json!(event.event_type));
        log.insert("effective_at".into(), json!(event.effective_at));
        if let Some(project_id) = &event.project_id {
            let project = self
                .project(project_id)
                .unwrap_or_else(|| panic!("seed project {project_id} before its audit events"));
            log.insert(
                "project".into(),
                json!({"id": project.id, "name": project.name}),
            );
        }
        log.insert("actor".into(), event.actor);
        log.insert(event.event_type.clone(), event.details);
        self.audit.push(AuditEntry {
            id: id.clone(),
            effective_at: event.effective_at,
            seq,
            log: Value::Object(log),
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

    /// Remembers where a deleted object stood in its list.
    pub(super) fn bury(&mut self, kind: &'static str, id: &str, key: (i64, u64)) {
        self.tombstones.insert((kind, id.to_owned()), key);
    }

    // ---- rendering ----

    pub(super) fn render_key(&self, key: &ProjectKey) -> Value {
        json!({
            "object": "organization.project.api_key",
            "redacted_value": key.redacted_value,
            "name": key.name,
            "created_at": key.created_at,
            "last_used_at": key.last_used_at,
            "expires_at": key.expires_at,
            "id": key.id,
            "owner_project_access": if self.owner_has_access(key) { "active" } else { "inactive" },
            "owner": self.render_owner(key),
        })
    }

    pub(super) fn owner_has_access(&self, key: &ProjectKey) -> bool {
        match &key.owner {
            Owner::User(user_id) => self
                .membership(&key.project_id, user_id)
                .is_some_and(|m| m.active),
            Owner::ServiceAccount(_) => true,
        }
    }

    fn render_owner(&self, key: &ProjectKey) -> Value {
        match &key.owner {
            Owner::User(user_id) => {
                let user = self.org_users.get(user_id);
                let role = self
                    .membership(&key.project_id, user_id)
                    .map_or("member", |m| m.role.as_str());
                json!({
                    "type": "user",
                    "user": {
                        "id": user_id,
                        "name": user.map(|u| u.name.as_str()),
                        "email": user.map(|u| u.email.as_str()),
                        "role": role,
                        "created_at": user.map_or(DEFAULT_CREATED_AT, |u| u.created_at),
                    }
                })
            }
            Owner::ServiceAccount(sa_id) => {
                let sa = self.service_accounts.iter().find(|sa| &sa.id == sa_id);
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
        let user = self.org_users.get(&membership.user_id);
        json!({
            "object": "organization.project.user",
            "id": membership.user_id,
            "name": user.map(|u| u.name.as_str()),
            "email": user.map(|u| u.email.as_str()),
            "role": membership.role.as_str(),
            "added_at": membership.added_at,
        })
    }

    // ---- cursor pages ----

    /// A `{object: "list", data, first_id, last_id, has_more}` page of `all`, in ascending (or
    /// descending) order of `key`. `after`/`before` name an object of `all` (or one deleted
    /// since); an unknown cursor is a 400.
    pub(super) fn cursor_page(
        &self,
        mut all: Vec<Listed>,
        request: &PageRequest<'_>,
    ) -> Result<Value, ApiError> {
        all.sort_by_key(|item| item.key);
        if request.descending {
            all.reverse();
        }
        let position = |cursor: &str, param: &str| -> Result<(i64, u64), ApiError> {
            all.iter()
                .find(|item| item.id == cursor)
                .map(|item| item.key)
                .or_else(|| {
                    self.tombstones
                        .get(&(request.kind, cursor.to_owned()))
                        .copied()
                })
                .ok_or_else(|| {
                    ApiError::invalid(param, format!("No object with id '{cursor}' to page from."))
                })
        };
        // `true` when `a` comes before `b` in the listed order.
        let precedes = |a: (i64, u64), b: (i64, u64)| {
            if request.descending { a > b } else { a < b }
        };
        let visible: Vec<&Listed> = all.iter().filter(|item| item.visible).collect();
        let (page, has_more): (Vec<&Listed>, bool) = if self.broken_pagination {
            (visible.iter().copied().take(request.limit).collect(), true)
        } else {
            let after = request.after.map(|c| position(c, "after")).transpose()?;
            let before = request.before.map(|c| position(c, "before")).transpose()?;
            let window: Vec<&Listed> = visible
                .iter()
                .copied()
                .filter(|item| after.is_none_or(|a| precedes(a, item.key)))
                .filter(|item| before.is_none_or(|b| precedes(item.key, b)))
                .collect();
            let more = window.len() > request.limit;
            if before.is_some() && after.is_none() {
                let skip = window.len().saturating_sub(request.limit);
                (window.into_iter().skip(skip).collect(), more)
            } else {
                (window.into_iter().take(request.limit).collect(), more)
            }
        };
        Ok(json!({
            "object": "list",
            "data": page.iter().map(|item| item.json.clone()).collect::<Vec<_>>(),
            "first_id": page.first().map(|item| item.id.clone()),
            "last_id": page.last().map(|item| item.id.clone()),
            "has_more": has_more,
        }))
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
    match name {
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
