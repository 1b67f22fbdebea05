//! Risks derived from an identity's facts, each naming the fact it comes from and the policy
//! it is measured against. Derived when read, never stored: a changed policy or the passing of
//! time changes them without a sync. The sync stores only which risks it published a finding
//! for ([`crate::store::Key::InventoryFinding`]).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{Identity, Kind};
use crate::store::{Error, Store};

/// `[policy]`, as the inventory measures against it.
#[derive(Debug, Clone)]
pub struct Policy {
    /// A key not used for this long is `unused`.
    pub unused_after: Duration,
    /// A key never used this long after its creation is `never_used`.
    pub never_used_after: Duration,
    /// A key older than this is `too_old`; `None`: no age limit.
    pub max_key_age: Option<Duration>,
    /// Project classes, first match wins.
    pub projects: Vec<ProjectRule>,
}

/// One `[[policy.projects]]` class, its glob compiled.
#[derive(Debug, Clone)]
pub struct ProjectRule {
    pub class: quench_common::config::ProjectClass,
    matcher: globset::GlobMatcher,
}

impl ProjectRule {
    /// The rule for `class`; `None` for a glob that does not compile (refused at load).
    pub fn new(class: quench_common::config::ProjectClass) -> Option<ProjectRule> {
        let matcher = globset::Glob::new(&class.matches).ok()?.compile_matcher();
        Some(ProjectRule { class, matcher })
    }

    fn matches(&self, id: &str, name: Option<&str>) -> bool {
        self.matcher.is_match(id) || name.is_some_and(|name| self.matcher.is_match(name))
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            unused_after: Duration::days(90),
            never_used_after: Duration::days(7),
            max_key_age: None,
            projects: Vec::new(),
        }
    }
}

impl Policy {
    /// From the config's `[policy]` (checked at load: a bad duration never gets here).
    pub fn from_section(section: &quench_common::config::PolicySection) -> Policy {
        let duration = |text: &str, default: Duration| {
            humantime::parse_duration(text)
                .ok()
                .and_then(|duration| Duration::from_std(duration).ok())
                .unwrap_or(default)
        };
        let default = Policy::default();
        Policy {
            unused_after: duration(&section.unused_after, default.unused_after),
            never_used_after: duration(&section.never_used_after, default.never_used_after),
            max_key_age: section
                .max_key_age
                .as_deref()
                .map(|age| duration(age, Duration::days(365))),
            projects: section
                .projects
                .iter()
                .cloned()
                .filter_map(ProjectRule::new)
                .collect(),
        }
    }
}

/// The risks the inventory knows, with what each means (the API and docs list them).
pub const RISKS: &[(&str, &str)] = &[
    (
        LEAKED,
        "an open finding says the key leaked (a run of a `*.leaked` finding is open)",
    ),
    (UNUSED, "not used for `[policy] unused_after`"),
    (
        NEVER_USED,
        "never used, `[policy] never_used_after` after its creation",
    ),
    (NO_EXPIRY, "a project key without an expiry"),
    (
        UNRESTRICTED_SCOPES,
        "a key whose scopes (from the audit log) are unrestricted",
    ),
    (
        OWNER_LEFT,
        "a key whose owner no longer has access to its project, or that names no owner",
    ),
    (
        ADMIN_KEY,
        "an admin key: it can change the whole organization",
    ),
    (TOO_OLD, "a key older than `[policy] max_key_age`"),
    (
        DATA_EXPOSURE,
        "a project whose data settings break its `[[policy.projects]]` class",
    ),
];

pub const LEAKED: &str = "leaked";
pub const UNUSED: &str = "unused";
pub const NEVER_USED: &str = "never_used";
pub const NO_EXPIRY: &str = "no_expiry";
pub const UNRESTRICTED_SCOPES: &str = "unrestricted_scopes";
pub const OWNER_LEFT: &str = "owner_left";
pub const ADMIN_KEY: &str = "admin_key";
pub const TOO_OLD: &str = "too_old";
pub const DATA_EXPOSURE: &str = "data_exposure";

/// Whether `name` is a risk the inventory knows.
pub fn is_risk(name: &str) -> bool {
    quench_common::config::KNOWN_RISKS.contains(&name)
}

/// One risk of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Risk {
    /// One of [`RISKS`].
    pub id: String,
    /// The fact it comes from, in words (`last used 2026-03-01, 120 days ago; policy unused_after = 90d`).
    pub fact: String,
}

/// What besides the identity decides its risks: the open findings about it.
#[derive(Debug, Default)]
pub struct Context {
    /// OpenAI object id (a finding's `resource.id`) → kinds of the findings of its open runs.
    open: HashMap<String, Vec<(String, String)>>,
}

impl Context {
    /// Reads the open runs' findings.
    pub fn load(store: &Store) -> Result<Context, Error> {
        let mut open: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (_, _, run_id) in store.open_runs()? {
            let Some(run) = store.get::<serde_json::Value>(crate::store::Key::Run(&run_id))? else {
                continue;
            };
            let finding = &run["finding"];
            if let (Some(kind), Some(resource)) =
                (finding["kind"].as_str(), finding["resource"]["id"].as_str())
            {
                open.entry(resource.to_owned())
                    .or_default()
                    .push((kind.to_owned(), run_id.clone()));
            }
        }
        Ok(Context { open })
    }

    /// The open findings (kind, run id) about OpenAI object `openai_id`.
    pub fn open_findings(&self, openai_id: &str) -> &[(String, String)] {
        self.open.get(openai_id).map_or(&[], Vec::as_slice)
    }
}

/// Whether a key names no owner who still has access to its project.
pub fn unowned(identity: &Identity) -> bool {
    if identity.kind != Kind::ProjectKey {
        return false;
    }
    let facts = &identity.facts;
    if facts.owner_project_access.as_deref() == Some("inactive") {
        return true;
    }
    match &facts.owner {
        None => true,
        Some(owner) => owner.kind == "user" && owner.email.is_none() && owner.id.is_none(),
    }
}

fn day(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d").to_string()
}

fn days(duration: Duration) -> String {
    format!("{}d", duration.num_days())
}

/// How a project breaks its `[[policy.projects]]` class: the `data_exposure` risk says it in
/// words ([`Exposure::fact`]), its finding carries it as `evidence.exposure`, so a playbook acts
/// on the settings (which tools to turn off) without reading the text. Bounded: at most the five
/// hosted tools, the retention types the config knows, and the class's glob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exposure {
    /// The class broken: its `match` glob (at most 200 characters).
    pub class: String,
    /// Hosted tools the class denies that are on, in the spec's order; empty when none.
    pub tools_on: Vec<String>,
    /// The project's data retention type, when the class does not allow it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_retention: Option<String>,
    /// The retention types the class allows (set with `data_retention`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_retention: Vec<String>,
    /// The project's model policy mode (`deny_list`), when the class requires an allow list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_policy: Option<String>,
}

impl Exposure {
    /// What the project does that its class forbids, in words, naming the rule.
    pub fn fact(&self) -> String {
        let mut broken = Vec::new();
        if !self.tools_on.is_empty() {
            broken.push(format!(
                "hosted tools on: {} (denied)",
                self.tools_on.join(", ")
            ));
        }
        if let Some(retention) = &self.data_retention {
            broken.push(format!(
                "data retention is {retention} (allowed: {})",
                self.allowed_retention.join(", ")
            ));
        }
        if let Some(mode) = &self.model_policy {
            broken.push(format!("models by {mode} (an allow list is required)"));
        }
        format!(
            "{}; policy project class `{}`",
            broken.join("; "),
            self.class
        )
    }
}

/// How `project` breaks the first class it matches; `None` when it keeps to it (or no class
/// matches, or its settings could not be read).
pub fn exposure(project: &Identity, policy: &Policy) -> Option<Exposure> {
    if project.kind != Kind::Project {
        return None;
    }
    let facts = &project.facts;
    let rule = policy
        .projects
        .iter()
        .find(|rule| rule.matches(&project.openai_id, facts.name.as_deref()))?;
    let class = &rule.class;
    let tools_on: Vec<String> = quench_common::config::HOSTED_TOOLS
        .iter()
        .filter(|tool| class.deny_tools.iter().any(|denied| denied == *tool))
        .filter(|tool| facts.hosted_tools.get(**tool) == Some(&true))
        .map(|tool| (*tool).to_owned())
        .collect();
    let data_retention = facts.data_retention.clone().filter(|retention| {
        !class.data_retention.is_empty() && !class.data_retention.contains(retention)
    });
    let model_policy = facts
        .model_policy
        .as_ref()
        .filter(|models| class.require_model_allow_list && models.mode != "allow_list")
        .map(|models| models.mode.clone());
    if tools_on.is_empty() && data_retention.is_none() && model_policy.is_none() {
        return None;
    }
    Some(Exposure {
        class: class.matches.chars().take(200).collect(),
        tools_on,
        allowed_retention: if data_retention.is_some() {
            class.data_retention.clone()
        } else {
            Vec::new()
        },
        data_retention,
        model_policy,
    })
}

/// The risks of `identity` at `now` under `policy`. A deleted identity has none.
pub fn assess(
    identity: &Identity,
    policy: &Policy,
    context: &Context,
    now: DateTime<Utc>,
) -> Vec<Risk> {
    let mut risks = Vec::new();
    if identity.deleted_at.is_some() {
        return risks;
    }
    let mut risk = |id: &str, fact: String| {
        risks.push(Risk {
            id: id.to_owned(),
            fact,
        });
    };
    let facts = &identity.facts;
    let is_key = matches!(identity.kind, Kind::ProjectKey | Kind::AdminKey);
    if let Some((kind, run)) = context
        .open_findings(&identity.openai_id)
        .iter()
        .find(|(kind, _)| kind.ends_with(".leaked"))
    {
        risk(LEAKED, format!("open finding {kind} (run {run})"));
    }
    if is_key {
        match facts.last_used_at {
            Some(used) if now - used >= policy.unused_after => risk(
                UNUSED,
                format!(
                    "last used {} ({} ago; policy unused_after = {})",
                    day(used),
                    days(now - used),
                    days(policy.unused_after)
                ),
            ),
            None => {
                if let Some(created) = facts.created_at
                    && now - created >= policy.never_used_after
                {
                    risk(
                        NEVER_USED,
                        format!(
                            "never used since its creation on {} (policy never_used_after = {})",
                            day(created),
                            days(policy.never_used_after)
                        ),
                    );
                }
            }
            Some(_) => {}
        }
        if let (Some(max_age), Some(created)) = (policy.max_key_age, facts.created_at)
            && now - created >= max_age
        {
            risk(
                TOO_OLD,
                format!(
                    "created {} ({} old; policy max_key_age = {})",
                    day(created),
                    days(now - created),
                    days(max_age)
                ),
            );
        }
    }
    if identity.kind == Kind::ProjectKey {
        if facts.expires_at.is_none() {
            risk(
                NO_EXPIRY,
                "expires_at is not set: the key never expires".to_owned(),
            );
        }
        if let Some(scopes) = &facts.scopes
            && scopes.is_empty()
        {
            risk(
                UNRESTRICTED_SCOPES,
                "scopes are unrestricted (the audit log's last scope change set none)".to_owned(),
            );
        }
        if unowned(identity) {
            let owner = facts
                .owner
                .as_ref()
                .and_then(|owner| owner.email.clone().or_else(|| owner.id.clone()))
                .unwrap_or_else(|| "nobody".to_owned());
            let fact = if facts.owner_project_access.as_deref() == Some("inactive") {
                format!("owner_project_access is inactive: {owner} left the project")
            } else {
                "the key names no owner".to_owned()
            };
            risk(OWNER_LEFT, fact);
        }
    }
    if identity.kind == Kind::Project
        && facts.status.as_deref() != Some("archived")
        && let Some(exposure) = exposure(identity, policy)
    {
        risk(DATA_EXPOSURE, exposure.fact());
    }
    if identity.kind == Kind::AdminKey {
        risk(
            ADMIN_KEY,
            "an admin API key: it can change every project, key and user".to_owned(),
        );
    }
    risks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Facts, KeyOwner};

    fn key(facts: Facts) -> Identity {
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        Identity {
            id: "project_key:key_1".to_owned(),
            kind: Kind::ProjectKey,
            openai_id: "key_1".to_owned(),
            facts,
            first_seen: at,
            changed_at: at,
            deleted_at: None,
        }
    }

    fn ids(risks: &[Risk]) -> Vec<&str> {
        risks.iter().map(|risk| risk.id.as_str()).collect()
    }

    #[test]
    fn each_risk_names_its_fact() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let policy = Policy {
            max_key_age: Some(Duration::days(365)),
            ..Policy::default()
        };
        let owner = KeyOwner {
            kind: "user".to_owned(),
            id: Some("user_1".to_owned()),
            name: None,
            email: Some("ann@example.com".to_owned()),
            role: None,
        };
        let stale = key(Facts {
            created_at: Some(now - Duration::days(400)),
            last_used_at: Some(now - Duration::days(120)),
            owner: Some(owner.clone()),
            owner_project_access: Some("inactive".to_owned()),
            scopes: Some(Vec::new()),
            ..Facts::default()
        });
        let risks = assess(&stale, &policy, &Context::default(), now);
        assert_eq!(
            ids(&risks),
            [UNUSED, TOO_OLD, NO_EXPIRY, UNRESTRICTED_SCOPES, OWNER_LEFT]
        );
        assert!(risks[0].fact.contains("120d ago"), "{:?}", risks[0]);
        assert!(risks[4].fact.contains("ann@example.com"), "{:?}", risks[4]);

        let fresh = key(Facts {
            created_at: Some(now - Duration::days(3)),
            expires_at: Some(now + Duration::days(30)),
            owner: Some(owner),
            owner_project_access: Some("active".to_owned()),
            scopes: Some(vec!["api.model.request".to_owned()]),
            ..Facts::default()
        });
        assert!(assess(&fresh, &policy, &Context::default(), now).is_empty());
        let mut never = fresh.clone();
        never.facts.created_at = Some(now - Duration::days(8));
        assert_eq!(
            ids(&assess(&never, &policy, &Context::default(), now)),
            [NEVER_USED]
        );
        let mut deleted = stale;
        deleted.deleted_at = Some(now);
        assert!(assess(&deleted, &policy, &Context::default(), now).is_empty());
    }

    /// A project breaking its class: the tools to turn off (denied and on, each once, in the
    /// spec's order), the retention not allowed, the missing allow list; the fact says the same.
    #[test]
    fn an_exposure_is_structured_and_its_fact_says_it() {
        use crate::inventory::ModelPolicy;
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let class = quench_common::config::ProjectClass {
            matches: "prod-*".to_owned(),
            deny_tools: vec!["mcp".to_owned(), "web_search".to_owned(), "mcp".to_owned()],
            data_retention: vec!["zero_data_retention".to_owned()],
            require_model_allow_list: true,
        };
        let policy = Policy {
            projects: vec![ProjectRule::new(class).expect("glob")],
            ..Policy::default()
        };
        let mut project = key(Facts {
            name: Some("prod-web".to_owned()),
            hosted_tools: [("mcp", true), ("web_search", true), ("file_search", true)]
                .into_iter()
                .map(|(tool, on)| (tool.to_owned(), on))
                .collect(),
            data_retention: Some("organization_default".to_owned()),
            model_policy: Some(ModelPolicy {
                mode: "deny_list".to_owned(),
                model_ids: Vec::new(),
            }),
            ..Facts::default()
        });
        project.kind = Kind::Project;
        project.openai_id = "proj_1".to_owned();
        let exposure = exposure(&project, &policy).expect("exposed");
        assert_eq!(exposure.tools_on, ["web_search", "mcp"]);
        assert_eq!(
            exposure.data_retention.as_deref(),
            Some("organization_default")
        );
        assert_eq!(exposure.allowed_retention, ["zero_data_retention"]);
        assert_eq!(exposure.model_policy.as_deref(), Some("deny_list"));
        assert_eq!(
            exposure.fact(),
            "hosted tools on: web_search, mcp (denied); data retention is organization_default \
             (allowed: zero_data_retention); models by deny_list (an allow list is required); \
             policy project class `prod-*`"
        );
        let risks = assess(&project, &policy, &Context::default(), now);
        assert_eq!(risks.last().map(|risk| &risk.fact), Some(&exposure.fact()));

        // Only the tools: nothing else is named, in the evidence or the fact.
        project.facts.data_retention = Some("zero_data_retention".to_owned());
        project.facts.model_policy = None;
        let exposure = super::exposure(&project, &policy).expect("exposed");
        assert_eq!(
            serde_json::to_value(&exposure).expect("json"),
            serde_json::json!({"class": "prod-*", "tools_on": ["web_search", "mcp"]})
        );
        // Keeping to the class, a project outside it, and a key are not exposed.
        project.facts.hosted_tools.clear();
        assert_eq!(super::exposure(&project, &policy), None);
        project.facts.hosted_tools.insert("mcp".to_owned(), true);
        project.facts.name = Some("dev-web".to_owned());
        assert_eq!(super::exposure(&project, &policy), None);
        project.facts.name = Some("prod-web".to_owned());
        project.kind = Kind::ProjectKey;
        assert_eq!(super::exposure(&project, &policy), None);
    }

    #[test]
    fn every_risk_is_documented() {
        for id in [
            LEAKED,
            UNUSED,
            NEVER_USED,
            NO_EXPIRY,
            UNRESTRICTED_SCOPES,
            OWNER_LEFT,
            ADMIN_KEY,
            TOO_OLD,
            DATA_EXPOSURE,
        ] {
            assert!(is_risk(id), "{id}");
        }
        // The config's list (what `[inventory] publish` may name) and the described ones agree.
        let described: Vec<&str> = RISKS.iter().map(|(id, _)| *id).collect();
        assert_eq!(described, quench_common::config::KNOWN_RISKS);
    }
}
