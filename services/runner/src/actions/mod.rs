//! The action registry: every built-in action's name, input schema, whether it mutates the outside
//! world, and whether what it does can be undone. The playbook compiler checks `with` against
//! these schemas at load time; dry-run and the "irreversible without approval" warning read the
//! flags. Implementations (the engine's `Action` trait, the connectors) register under the same
//! names.

mod inputs;

use schemars::{JsonSchema, SchemaGenerator};

pub use inputs::*;

/// What the registry knows about one action before it ever runs.
#[derive(Debug)]
pub struct ActionSpec {
    pub name: &'static str,
    pub summary: &'static str,
    /// Changes something outside quench; skipped (rendered and recorded) in dry-run.
    pub mutates: bool,
    /// Why it cannot be undone, when it cannot; `quench validate` warns when no approval precedes it.
    pub irreversible: Option<&'static str>,
    /// Fields of `steps.<id>.output` after the step.
    pub outputs: &'static [&'static str],
    input_schema: fn(&mut SchemaGenerator) -> schemars::Schema,
}

impl ActionSpec {
    /// The JSON Schema of `with`, generated from the action's input type.
    pub fn input_schema(&self, generator: &mut SchemaGenerator) -> schemars::Schema {
        (self.input_schema)(generator)
    }

    pub fn is_approval(&self) -> bool {
        self.name == APPROVAL
    }

    /// Whether the engine carries it out itself (no connector, no call, never scripted in
    /// playbook tests): see [`ENGINE_HANDLED`].
    pub fn is_engine_handled(&self) -> bool {
        is_engine_handled(self.name)
    }
}

pub const APPROVAL: &str = "approval";
/// The action that fails the run on purpose (engine-handled).
pub const FAIL: &str = "fail";

/// The actions the engine carries out itself; every other action is a call to a connector.
pub const ENGINE_HANDLED: &[&str] = &["note", FAIL, "wait", "state.set", APPROVAL];

/// Whether the engine carries out action `name` itself.
pub fn is_engine_handled(name: &str) -> bool {
    ENGINE_HANDLED.contains(&name)
}

const fn spec<T: JsonSchema>(
    name: &'static str,
    summary: &'static str,
    mutates: bool,
    irreversible: Option<&'static str>,
    outputs: &'static [&'static str],
) -> ActionSpec {
    ActionSpec {
        name,
        summary,
        mutates,
        irreversible,
        outputs,
        input_schema: schema_of::<T>,
    }
}

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<T>()
}

const DELETED: &[&str] = &["id", "deleted", "already_done"];

/// Every built-in action, in the order `docs/playbooks.md` documents them (a test holds the two
/// together: each action there with its inputs, outputs and whether it mutates).
pub static REGISTRY: &[ActionSpec] = &[
    spec::<SlackMessage>(
        "slack.message",
        "Send a Slack message to a person, a channel or a group",
        false,
        None,
        &["channel", "ts", "delivered"],
    ),
    spec::<Approval>(
        APPROVAL,
        "Park the run until enough allowed approvers answer, or the gate times out",
        false,
        None,
        &[],
    ),
    spec::<Wait>(
        "wait",
        "Park the run for a duration or until a time",
        false,
        None,
        &[],
    ),
    spec::<RevokeKey>(
        "openai.revoke_key",
        "Delete a project API key",
        true,
        Some("a deleted API key cannot be restored"),
        DELETED,
    ),
    spec::<DeleteAdminKey>(
        "openai.delete_admin_key",
        "Delete an organization admin API key",
        true,
        Some("a deleted admin key cannot be restored"),
        DELETED,
    ),
    spec::<DeleteServiceAccount>(
        "openai.delete_service_account",
        "Delete a project service account and its keys",
        true,
        Some("a deleted service account and its keys cannot be restored"),
        DELETED,
    ),
    spec::<SetProjectUserRole>(
        "openai.set_project_user_role",
        "Change a project member's role (narrow an owner to member)",
        true,
        None,
        &["id", "role", "previous_role", "email", "name"],
    ),
    spec::<RemoveProjectUser>(
        "openai.remove_project_user",
        "Remove a user from a project",
        true,
        None,
        DELETED,
    ),
    spec::<LimitProjectRate>(
        "openai.limit_project_rate",
        "Lower a project's rate limits for one model",
        true,
        None,
        &["id", "project_id", "model", "previous", "limits"],
    ),
    spec::<SetKeyScopes>(
        "openai.set_key_scopes",
        "Replace a project API key's scopes (narrow what it may do)",
        true,
        None,
        &[
            "id",
            "project_id",
            "scopes",
            "expires_at",
            "owner_project_access",
        ],
    ),
    spec::<SetKeyExpiry>(
        "openai.set_key_expiry",
        "Make a project API key expire after a duration (at most 365 days)",
        true,
        None,
        &["id", "project_id", "expires_at", "owner_project_access"],
    ),
    spec::<RotateServiceAccountKey>(
        "openai.rotate_service_account_key",
        "Replace a service account's key without downtime: mint, deliver to a secret store, expire the old one",
        true,
        None,
        &[
            "id",
            "project_id",
            "service_account_id",
            "name",
            "redacted_value",
            "expires_at",
            "scopes",
            "secret",
            "old_key",
        ],
    ),
    spec::<SetModelPermissions>(
        "openai.set_model_permissions",
        "Replace a project's model allow or deny list",
        true,
        None,
        &["project_id", "mode", "model_ids", "previous"],
    ),
    spec::<SetHostedTools>(
        "openai.set_hosted_tools",
        "Turn a project's hosted tools (file search, web search, …) off or on",
        true,
        None,
        &["project_id", "tools", "previous"],
    ),
    spec::<SetSpendLimit>(
        "openai.set_spend_limit",
        "Set a project's hard monthly spend limit, in cents",
        true,
        None,
        &[
            "project_id",
            "threshold_amount",
            "currency",
            "interval",
            "previous",
        ],
    ),
    spec::<ArchiveProject>(
        "openai.archive_project",
        "Archive a project, disabling every key in it",
        true,
        Some("the OpenAI API has no way to unarchive a project"),
        &["id", "status", "archived_at"],
    ),
    spec::<ListKeys>(
        "openai.list_keys",
        "List project API keys (every project when `project_id` is absent)",
        false,
        None,
        &["keys", "count"],
    ),
    spec::<ListProjectUsers>(
        "openai.list_project_users",
        "List the people of a project with their roles (e.g. its owners, to ask about an orphaned key)",
        false,
        None,
        &["users", "count"],
    ),
    spec::<AuditEvents>(
        "openai.audit_events",
        "Read the organization audit log since a time",
        false,
        None,
        &["events", "count", "last_id", "last_effective_at"],
    ),
    spec::<Usage>(
        "openai.usage",
        "Read request volume, grouped",
        false,
        None,
        &["buckets"],
    ),
    spec::<KeyUsage>(
        "openai.key_usage",
        "Read what each key used (usage by family) and propose the scopes it needs",
        false,
        None,
        &["keys", "count", "since", "until"],
    ),
    spec::<HttpRequest>(
        "http.request",
        "Call an allowlisted HTTP endpoint",
        true,
        None,
        &["status", "json"],
    ),
    spec::<PublishFinding>(
        "finding.publish",
        "Publish a finding onto NATS (it may start other playbooks)",
        false,
        None,
        &["id", "subject"],
    ),
    spec::<StartCampaign>(
        "campaign.start",
        "Start an attestation campaign over project keys (an access review)",
        false,
        None,
        &["id", "identities", "parts", "unassigned"],
    ),
    spec::<Note>(
        "note",
        "Append a note to the run's audit trail",
        false,
        None,
        &[],
    ),
    spec::<Fail>(FAIL, "Fail the run with a message", false, None, &[]),
    spec::<StateSet>(
        "state.set",
        "Remember values for this playbook's later runs (read as `state.<name>`)",
        false,
        None,
        &[],
    ),
];

/// Looks an action up by the name a playbook `uses`.
pub fn lookup(name: &str) -> Option<&'static ActionSpec> {
    REGISTRY.iter().find(|spec| spec.name == name)
}

/// Every action name, for "did you mean" suggestions and documentation.
pub fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|spec| spec.name)
}
