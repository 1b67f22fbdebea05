//! Who owns what a finding names: the one owner resolution chain, used by playbooks (`owner` in
//! templates, `owner` and `owner.team` as approvers and recipients), notices and the inventory.
//!
//! The chain, first link that yields people wins:
//!
//! 1. `finding` — the finding's own `owner` (an email, a Slack id, or a team `[teams]` knows);
//! 2. `key_user` — the key's owning user, by email ([`key_facts`]);
//! 3. `recorded` — the owner people recorded for the identity or its service account
//!    (`Key::Attributes`, set through the API, the CLI or Slack; never written by a sync);
//! 4. `mapping` — the first `[[owners.rules]]` whose project id or project-name glob matches;
//! 5. `fallback` — `[owners] fallback`, a team or `group:<name>`.
//!
//! A team is resolved to its people through `[teams]` (emails, Slack ids, the members of its
//! `group`) and its channel. [`resolve`] is pure: the facts are gathered first ([`key_facts`],
//! [`recorded_owner`]), so it is property-tested on its own.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use globset::{Glob, GlobMatcher};
use quench_proto::{Finding, ResourceType};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Config, Team, is_email, is_slack_id};
use crate::store::{Key, Store};

/// The config's links of the chain, compiled: `[owners]` rules with their globs, `[teams]` and
/// `[groups]` to resolve a team to people, and the fallback.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    rules: Vec<Rule>,
    teams: BTreeMap<String, Team>,
    groups: BTreeMap<String, Vec<String>>,
    fallback: Option<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// As the operator wrote it, for the record of why it answered.
    text: String,
    on_name: bool,
    glob: GlobMatcher,
    team: String,
}

impl Owners {
    /// Compiles `[owners]` (checked when the config was loaded: a glob that does not compile
    /// here is refused again, naming its key).
    pub fn from_config(config: &Config) -> Result<Owners, String> {
        let mut rules = Vec::new();
        for (index, rule) in config.owners.rules.iter().enumerate() {
            let (field, pattern, on_name) = match (&rule.project_id, &rule.project_name) {
                (Some(id), None) => ("project_id", id, false),
                (None, Some(name)) => ("project_name", name, true),
                _ => {
                    return Err(format!(
                        "owners.rules[{index}]: name exactly one of `project_id` and `project_name`"
                    ));
                }
            };
            let glob = Glob::new(pattern)
                .map_err(|error| {
                    format!("owners.rules[{index}].{field} = {pattern:?}: not a glob: {error}")
                })?
                .compile_matcher();
            rules.push(Rule {
                text: format!("owners.rules[{index}] ({field} {pattern})"),
                on_name,
                glob,
                team: rule.team.clone(),
            });
        }
        Ok(Owners {
            rules,
            teams: config.teams.clone(),
            groups: config.groups.clone(),
            fallback: config.owners.fallback.clone(),
        })
    }

    /// Whether a team of this name is configured.
    pub fn has_team(&self, name: &str) -> bool {
        self.teams.contains_key(name)
    }

    /// The team names, for messages.
    pub fn team_names(&self) -> impl Iterator<Item = &str> {
        self.teams.keys().map(String::as_str)
    }

    /// Everyone who answers for a team: its emails and Slack ids, then its group's members.
    pub fn team_members(&self, name: &str) -> Option<Vec<String>> {
        let team = self.teams.get(name)?;
        let mut members: Vec<String> = team
            .emails
            .iter()
            .chain(&team.slack_user_ids)
            .cloned()
            .collect();
        if let Some(group) = team.group.as_ref().and_then(|group| self.groups.get(group)) {
            for member in group {
                if !members.contains(member) {
                    members.push(member.clone());
                }
            }
        }
        Some(members)
    }

    /// A team's channel id, when it has one.
    pub fn team_channel(&self, name: &str) -> Option<&str> {
        self.teams.get(name)?.channel.as_deref()
    }

    /// The first team that lists this person (an email or a Slack id).
    fn team_of(&self, who: &str) -> Option<&str> {
        let who = who.to_lowercase();
        self.teams.keys().map(String::as_str).find(|team| {
            self.team_members(team)
                .is_some_and(|members| members.iter().any(|member| member.to_lowercase() == who))
        })
    }

    /// The first rule that maps the project, and its team.
    fn mapped(&self, project_id: Option<&str>, project_name: Option<&str>) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            let value = if rule.on_name {
                project_name
            } else {
                project_id
            };
            value.is_some_and(|value| rule.glob.is_match(value))
        })
    }
}

/// Which link of the chain answered.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// The finding's own `owner`.
    Finding,
    /// The key's owning user.
    KeyUser,
    /// The owner recorded for the identity (or its service account) in its attributes.
    Recorded,
    /// An `[[owners.rules]]` entry for the project.
    Mapping,
    /// `[owners] fallback`.
    Fallback,
    /// Nothing answered (no fallback is configured).
    #[default]
    None,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Finding => "finding",
            Link::KeyUser => "key_user",
            Link::Recorded => "recorded",
            Link::Mapping => "mapping",
            Link::Fallback => "fallback",
            Link::None => "none",
        }
    }
}

/// The owner the chain found: who they are, how to reach them, and which link said so. A run
/// keeps the one resolved when it started; templates read it as `owner`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResolvedOwner {
    pub link: Link,
    /// What answered, in words: `finding.owner`, `owners.rules[0] (project_name prod-*)`, …
    pub source: String,
    /// The team: the one that answered, the one that lists the person, or the project's
    /// mapped team.
    pub team: Option<String>,
    pub emails: Vec<String>,
    pub slack_user_ids: Vec<String>,
    /// The team's Slack channel id.
    pub channel: Option<String>,
    /// How approvals and messages name the owner: an email, a Slack id, `team:<name>` or
    /// `group:<name>`; none when nothing answered.
    pub recipient: Option<String>,
}

impl ResolvedOwner {
    /// Whether the chain found nobody.
    pub fn is_empty(&self) -> bool {
        self.emails.is_empty() && self.slack_user_ids.is_empty()
    }
}

/// An owner people recorded: a person's email or a team (`team:<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedOwner {
    Person(String),
    Team(String),
}

impl RecordedOwner {
    /// Reads `alice@example.com` or `team:payments`; the team must be configured.
    pub fn parse(text: &str, owners: &Owners) -> Result<RecordedOwner, String> {
        let text = text.trim();
        if let Some(team) = text.strip_prefix("team:") {
            if owners.has_team(team) {
                return Ok(RecordedOwner::Team(team.to_owned()));
            }
            let hint = quench_common::suggest::did_you_mean(team, owners.team_names())
                .unwrap_or_else(|| "teams are defined under [teams] in the config".to_owned());
            return Err(format!("no team `{team}`: {hint}"));
        }
        if is_email(text) {
            return Ok(RecordedOwner::Person(text.to_owned()));
        }
        Err(format!(
            "`{text}` is neither an email address nor `team:<name>`"
        ))
    }

    pub fn as_text(&self) -> String {
        match self {
            RecordedOwner::Person(email) => email.clone(),
            RecordedOwner::Team(team) => format!("team:{team}"),
        }
    }
}

/// What people said about an identity (`Key::Attributes`): its owner and its purpose, each
/// with who said it and when. The inventory's sync never writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attributes {
    /// An email or `team:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Attribute>,
    /// What the identity is for, in the owner's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Attribute>,
    /// Owners who said it is not theirs (an attestation's `not_mine`): each a recipient as the
    /// chain named them (an email, a Slack id, `team:<name>`), which the chain passes over for
    /// this identity from then on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disowned_by: Vec<Attribute>,
    /// The last attestation of it: which campaign, the answer, who gave it and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested: Option<Attested>,
}

/// An identity's last attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attested {
    pub campaign: String,
    /// The answer (`keep`, `narrow`, `revoke`, `not_mine`).
    pub choice: String,
    /// Nobody answered by the deadline: the campaign's default was taken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub defaulted: bool,
    pub by: Vec<String>,
    pub at: DateTime<Utc>,
}

/// One attribute's value and its provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attribute {
    pub value: String,
    /// Who set it: the API token's name, or `slack:T…/U…`.
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

/// Reads an identity's attributes.
pub fn attributes(
    store: &Store,
    identity: &str,
) -> Result<Option<Attributes>, crate::store::Error> {
    store.get(Key::Attributes(identity))
}

/// Longest purpose kept, in characters.
pub const MAX_PURPOSE: usize = 500;

/// A change to an identity's attributes: `None` leaves a field as it is, an empty string
/// clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributesChange {
    /// An email or `team:<name>` (a team under `[teams]`); `""` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What the identity is for (at most 500 characters); `""` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

/// Why a change to attributes was refused.
#[derive(Debug, thiserror::Error)]
pub enum AttributesError {
    /// The identity id or a value is not acceptable; the message says what to give.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// Checks an inventory identity id: `<kind>:<id>` with a kind the inventory keeps.
pub fn check_identity(identity: &str) -> Result<(), String> {
    const KINDS: [&str; 5] = [
        "project_key",
        "service_account",
        "admin_key",
        "project",
        "user",
    ];
    let (kind, id) = identity.split_once(':').unwrap_or((identity, ""));
    if !KINDS.contains(&kind) {
        let hint = quench_common::suggest::did_you_mean(kind, KINDS)
            .unwrap_or_else(|| format!("kinds are {}", KINDS.join(", ")));
        return Err(format!(
            "`{identity}` is not an identity id such as project_key:key_abc ({hint})"
        ));
    }
    if id.is_empty()
        || id.len() > 256
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(format!(
            "`{identity}`: the id after `{kind}:` must be 1 to 256 of `A-Z a-z 0-9 _ . : -`"
        ));
    }
    Ok(())
}

/// One writer of attributes at a time, so two changes to one identity never lose each other.
static WRITING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the attributes' one-writer lock, for a writer that commits attributes in a batch of
/// its own (a campaign recording answers); read, change and commit while holding it.
pub async fn writing() -> tokio::sync::MutexGuard<'static, ()> {
    WRITING.lock().await
}

/// Applies a change to an identity's attributes and audits it (`attributes_set`, with the
/// actor, each changed field's value before and after); returns the attributes now. A change
/// that changes nothing writes nothing.
pub async fn set_attributes(
    store: &Store,
    owners: &Owners,
    identity: &str,
    change: &AttributesChange,
    actor: &quench_proto::Actor,
    now: DateTime<Utc>,
) -> Result<Attributes, AttributesError> {
    check_identity(identity).map_err(AttributesError::Invalid)?;
    let owner = match change.owner.as_deref().map(str::trim) {
        None => None,
        Some("") => Some(None),
        Some(text) => Some(Some(
            RecordedOwner::parse(text, owners)
                .map_err(AttributesError::Invalid)?
                .as_text(),
        )),
    };
    let purpose = match change.purpose.as_deref().map(str::trim) {
        None => None,
        Some("") => Some(None),
        Some(text) => {
            if text.chars().count() > MAX_PURPOSE {
                return Err(AttributesError::Invalid(format!(
                    "a purpose is at most {MAX_PURPOSE} characters"
                )));
            }
            if text.contains(|c: char| c.is_control() && c != '\n') {
                return Err(AttributesError::Invalid(
                    "a purpose is text without control characters".to_owned(),
                ));
            }
            // A purpose is told by people: a key pasted into it is never kept.
            Some(Some(quench_proto::redact_str(text).into_owned()))
        }
    };
    let _writing = WRITING.lock().await;
    let before = attributes(store, identity)?.unwrap_or_default();
    let mut after = before.clone();
    let mut changed = serde_json::Map::new();
    let by = format!("{}:{}", via_name(actor.via), actor.id);
    for (name, slot, value) in [
        ("owner", &mut after.owner, owner),
        ("purpose", &mut after.purpose, purpose),
    ] {
        let Some(value) = value else { continue };
        let old = slot.as_ref().map(|attribute| attribute.value.clone());
        if old == value {
            continue;
        }
        changed.insert(
            name.to_owned(),
            serde_json::json!({"from": old, "to": value}),
        );
        *slot = value.map(|value| Attribute {
            value,
            set_by: by.clone(),
            set_at: now,
        });
    }
    if changed.is_empty() {
        return Ok(before);
    }
    let mut batch = crate::store::Batch::new();
    if after == Attributes::default() {
        batch.delete(Key::Attributes(identity));
    } else {
        batch.put(Key::Attributes(identity), &after);
    }
    let mut draft = crate::store::AuditDraft::new(
        now,
        "attributes_set",
        serde_json::json!({"identity": identity, "changed": changed}),
    );
    draft.actor = Some(serde_json::to_value(actor).unwrap_or(Value::Null));
    batch.audit(draft);
    store.commit(batch).await?;
    Ok(after)
}

/// How an actor's channel is written in `set_by` (`api`, `slack`, `cli`, `console`).
pub fn via_name(via: quench_proto::Via) -> String {
    serde_json::to_value(via)
        .ok()
        .and_then(|via| via.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What is known about the key (or other identity) a finding names, for the chain.
///
/// **The inventory plugs in here** ([`key_facts`]): the finding gives its resource (id, type,
/// project, service account) and its evidence (`owner_email`, the key's owning user, and
/// `project_name`, when the publisher knew them); the inventory's record of the identity fills
/// in the key's owning user, its service account and its project's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFacts {
    /// Inventory ids whose recorded owner counts, most specific first: the identity itself
    /// (`project_key:key_abc`), then its service account (`service_account:svc_1`).
    pub identities: Vec<String>,
    /// The key's owning user's email.
    pub user_email: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
}

/// The facts about the identity a finding names (see [`KeyFacts`]): the finding's, completed
/// by the inventory's record of the identity (`Key::Identity`) when there is one — its owning
/// user's email while they still have access to the project, its owning service account, its
/// project's name. The record is read as JSON: `inventory` reaches the engine through the
/// connectors, so this module cannot name its types without a cycle.
pub fn key_facts(store: &Store, finding: Option<&Finding>) -> KeyFacts {
    complete_facts(store, finding_facts(finding))
}

/// Completes facts from the inventory's record of their first identity.
fn complete_facts(store: &Store, mut facts: KeyFacts) -> KeyFacts {
    let Some(identity) = facts.identities.first().cloned() else {
        return facts;
    };
    let Ok(Some(record)) = store.get::<Value>(Key::Identity(&identity)) else {
        return facts;
    };
    let text = |pointer: &str| {
        record
            .pointer(pointer)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    };
    let access_left = text("/facts/owner_project_access").as_deref() == Some("inactive");
    match text("/facts/owner/type").as_deref() {
        Some("user") if !access_left && facts.user_email.is_none() => {
            facts.user_email = text("/facts/owner/email").filter(|email| is_email(email));
        }
        Some("service_account") => {
            if let Some(account) = text("/facts/owner/id") {
                let id = format!("service_account:{account}");
                if !facts.identities.contains(&id) {
                    facts.identities.push(id);
                }
            }
        }
        _ => {}
    }
    if facts.project_id.is_none() {
        facts.project_id = text("/facts/project_id");
    }
    if facts.project_name.is_none() {
        // A project's own record names it; a key's or account's names its project.
        facts.project_name = if identity.starts_with("project:") {
            text("/facts/name")
        } else {
            text("/facts/project_name")
        };
    }
    facts
}

/// The facts the finding itself gives.
fn finding_facts(finding: Option<&Finding>) -> KeyFacts {
    let Some(finding) = finding else {
        return KeyFacts::default();
    };
    let resource = &finding.resource;
    let mut identities = Vec::new();
    if let Some(id) = identity_of(resource.kind, &resource.id) {
        identities.push(id);
    }
    if let Some(account) = &resource.service_account_id {
        let id = format!("service_account:{account}");
        if !identities.contains(&id) {
            identities.push(id);
        }
    }
    let text = |name: &str| {
        finding
            .evidence
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    };
    // A finding about a project is about its own project.
    let project_id = match (&resource.project_id, resource.kind) {
        (None, ResourceType::Project) => Some(resource.id.clone()),
        (project_id, _) => project_id.clone(),
    };
    KeyFacts {
        identities,
        user_email: text("owner_email").filter(|email| is_email(email)),
        project_id,
        project_name: text("project_name"),
    }
}

/// The inventory id of a resource (`project_key:key_abc`), for the kinds the inventory keeps.
pub fn identity_of(kind: ResourceType, id: &str) -> Option<String> {
    let prefix = match kind {
        ResourceType::ApiKey => "project_key",
        ResourceType::AdminKey => "admin_key",
        ResourceType::ServiceAccount => "service_account",
        ResourceType::Project => "project",
        ResourceType::User => "user",
        ResourceType::Integration | ResourceType::Secret => return None,
    };
    Some(format!("{prefix}:{id}"))
}

/// The first recorded owner among `identities` that still names something (a team no longer
/// configured is passed over), with the identity it was recorded for.
pub fn recorded_owner(
    store: &Store,
    owners: &Owners,
    identities: &[String],
) -> Result<Option<(String, RecordedOwner)>, crate::store::Error> {
    for identity in identities {
        let Some(owner) = attributes(store, identity)?.and_then(|attributes| attributes.owner)
        else {
            continue;
        };
        if let Ok(owner) = RecordedOwner::parse(&owner.value, owners) {
            return Ok(Some((identity.clone(), owner)));
        }
    }
    Ok(None)
}

/// Everything the chain looks at, gathered beforehand.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// The finding's `owner`.
    pub finding_owner: Option<&'a quench_proto::Owner>,
    /// The key's owning user's email.
    pub key_user: Option<&'a str>,
    /// A recorded owner, and the identity it was recorded for.
    pub recorded: Option<(&'a str, &'a RecordedOwner)>,
    pub project_id: Option<&'a str>,
    pub project_name: Option<&'a str>,
    /// Recipients who said the identity is not theirs (lowercased): passed over.
    pub disowned: &'a [String],
}

/// Who said the identities are not theirs (their attributes' `disowned_by`), lowercased.
pub fn disowned(store: &Store, identities: &[String]) -> Result<Vec<String>, crate::store::Error> {
    let mut out = Vec::new();
    for identity in identities {
        if let Some(attributes) = attributes(store, identity)? {
            out.extend(
                attributes
                    .disowned_by
                    .iter()
                    .map(|attribute| attribute.value.to_lowercase()),
            );
        }
    }
    Ok(out)
}

/// The owner of an inventory identity (`project_key:key_abc`), with no finding: the chain
/// starts at the key's owning user, from the inventory's record of it.
pub fn resolve_identity(
    store: &Store,
    owners: &Owners,
    identity: &str,
) -> Result<ResolvedOwner, crate::store::Error> {
    resolve_identity_passing_over(store, owners, identity, &[])
}

/// [`resolve_identity`], passing over these recipients too (lowercased; a "not mine" about to
/// be recorded).
pub fn resolve_identity_passing_over(
    store: &Store,
    owners: &Owners,
    identity: &str,
    also_disowned: &[String],
) -> Result<ResolvedOwner, crate::store::Error> {
    let facts = complete_facts(
        store,
        KeyFacts {
            identities: vec![identity.to_owned()],
            ..KeyFacts::default()
        },
    );
    resolve_with(store, owners, None, &facts, also_disowned)
}

/// Gathers the facts for a finding (or none, for a scheduled run) and resolves its owner.
pub fn resolve_for(
    store: &Store,
    owners: &Owners,
    finding: Option<&Finding>,
) -> Result<ResolvedOwner, crate::store::Error> {
    let facts = key_facts(store, finding);
    resolve_facts(store, owners, finding, &facts)
}

/// The owner from facts gathered by the caller (e.g. an identity as it stood at a past date),
/// with the recorded owners and disowning of `facts.identities` as they are now.
pub fn resolve_facts(
    store: &Store,
    owners: &Owners,
    finding: Option<&Finding>,
    facts: &KeyFacts,
) -> Result<ResolvedOwner, crate::store::Error> {
    resolve_with(store, owners, finding, facts, &[])
}

fn resolve_with(
    store: &Store,
    owners: &Owners,
    finding: Option<&Finding>,
    facts: &KeyFacts,
    also_disowned: &[String],
) -> Result<ResolvedOwner, crate::store::Error> {
    let recorded = recorded_owner(store, owners, &facts.identities)?;
    let mut disowned = disowned(store, &facts.identities)?;
    disowned.extend(also_disowned.iter().cloned());
    Ok(resolve(
        owners,
        &Facts {
            finding_owner: finding.and_then(|finding| finding.owner.as_ref()),
            key_user: facts.user_email.as_deref(),
            recorded: recorded
                .as_ref()
                .map(|(identity, owner)| (identity.as_str(), owner)),
            project_id: facts.project_id.as_deref(),
            project_name: facts.project_name.as_deref(),
            disowned: &disowned,
        },
    ))
}

/// The chain: the first link that yields people answers (see the module's documentation).
pub fn resolve(owners: &Owners, facts: &Facts<'_>) -> ResolvedOwner {
    let mapped = owners.mapped(facts.project_id, facts.project_name);
    let disowned = |recipient: &str| {
        facts
            .disowned
            .iter()
            .any(|who| who.eq_ignore_ascii_case(recipient))
    };
    let person = |link: Link, source: String, email: Option<&str>, slack: Option<&str>| {
        let email = email
            .map(str::trim)
            .filter(|email| is_email(email) && !disowned(email));
        let slack = slack
            .map(str::trim)
            .filter(|id| is_slack_id(id, &['U', 'W']) && !disowned(id));
        let recipient = email.or(slack)?;
        let team = email
            .and_then(|email| owners.team_of(email))
            .or_else(|| slack.and_then(|id| owners.team_of(id)))
            .or(mapped.map(|rule| rule.team.as_str()));
        Some(ResolvedOwner {
            link,
            source,
            team: team.map(str::to_owned),
            emails: email.map(str::to_owned).into_iter().collect(),
            slack_user_ids: slack.map(str::to_owned).into_iter().collect(),
            channel: team.and_then(|team| owners.team_channel(team).map(str::to_owned)),
            recipient: Some(recipient.to_owned()),
        })
    };
    let team = |link: Link, source: String, name: &str| {
        if disowned(&format!("team:{name}")) {
            return None;
        }
        let members = owners.team_members(name)?;
        let (emails, slack_user_ids) = split_people(&members);
        if emails.is_empty() && slack_user_ids.is_empty() {
            return None;
        }
        Some(ResolvedOwner {
            link,
            source,
            team: Some(name.to_owned()),
            emails,
            slack_user_ids,
            channel: owners.team_channel(name).map(str::to_owned),
            recipient: Some(format!("team:{name}")),
        })
    };

    if let Some(owner) = facts.finding_owner {
        let source = "finding.owner".to_owned();
        let found = person(
            Link::Finding,
            source.clone(),
            owner.email.as_deref(),
            owner.slack_user_id.as_deref(),
        )
        .or_else(|| {
            owner
                .team
                .as_deref()
                .and_then(|name| team(Link::Finding, source, name))
        });
        if let Some(found) = found {
            return found;
        }
    }
    if let Some(email) = facts.key_user
        && let Some(found) = person(
            Link::KeyUser,
            "the key's owning user".to_owned(),
            Some(email),
            None,
        )
    {
        return found;
    }
    if let Some((identity, recorded)) = facts.recorded {
        let source = format!("the owner recorded for {identity}");
        let found = match recorded {
            RecordedOwner::Person(email) => person(Link::Recorded, source, Some(email), None),
            RecordedOwner::Team(name) => team(Link::Recorded, source, name),
        };
        if let Some(found) = found {
            return found;
        }
    }
    if let Some(rule) = mapped
        && let Some(found) = team(Link::Mapping, rule.text.clone(), &rule.team)
    {
        return found;
    }
    if let Some(fallback) = &owners.fallback {
        let source = "owners.fallback".to_owned();
        let found = match fallback.strip_prefix("group:") {
            Some(group) => owners.groups.get(group).and_then(|members| {
                let (emails, slack_user_ids) = split_people(members);
                (!emails.is_empty() || !slack_user_ids.is_empty()).then(|| ResolvedOwner {
                    link: Link::Fallback,
                    source,
                    team: None,
                    emails,
                    slack_user_ids,
                    channel: None,
                    recipient: Some(fallback.clone()),
                })
            }),
            None => team(
                Link::Fallback,
                source,
                fallback.strip_prefix("team:").unwrap_or(fallback),
            ),
        };
        if let Some(found) = found {
            return found;
        }
    }
    ResolvedOwner {
        link: Link::None,
        source: "nothing: no finding owner, key user, recorded owner, [owners] rule or fallback"
            .to_owned(),
        team: mapped.map(|rule| rule.team.clone()),
        ..ResolvedOwner::default()
    }
}

/// Members as emails and Slack ids (anything else a group lists is neither).
fn split_people(members: &[String]) -> (Vec<String>, Vec<String>) {
    let emails = members
        .iter()
        .filter(|member| member.contains('@'))
        .cloned()
        .collect();
    let ids = members
        .iter()
        .filter(|member| is_slack_id(member, &['U', 'W']))
        .cloned()
        .collect();
    (emails, ids)
}

/// The names playbooks may use for the resolved owner as an approver or recipient.
pub const OWNER: &str = "owner";
pub const OWNER_TEAM: &str = "owner.team";

/// Whether a recipient as written names the run's owner (`owner`, `owner.team`).
pub fn names_owner(recipient: &str) -> bool {
    matches!(recipient.trim(), OWNER | OWNER_TEAM)
}

/// Replaces `owner` and `owner.team` among an action's rendered recipients (an approval's
/// `approvers` and `escalate[].to`, a message's `to`) with the run's resolved owner: its
/// [`ResolvedOwner::recipient`], or `team:<name>` for `owner.team`.
pub fn name_recipients(
    action: &str,
    input: &mut Value,
    owner: Option<&ResolvedOwner>,
) -> Result<(), String> {
    let replace = |slot: &mut Value| -> Result<(), String> {
        let Some(text) = slot.as_str().filter(|text| names_owner(text)) else {
            return Ok(());
        };
        *slot = Value::String(owner_recipient(text.trim(), owner)?);
        Ok(())
    };
    match action {
        crate::actions::APPROVAL => {
            if let Some(approvers) = input.get_mut("approvers").and_then(Value::as_array_mut) {
                approvers.iter_mut().try_for_each(replace)?;
            }
            if let Some(escalations) = input.get_mut("escalate").and_then(Value::as_array_mut) {
                for escalation in escalations {
                    if let Some(to) = escalation.get_mut("to").and_then(Value::as_array_mut) {
                        to.iter_mut().try_for_each(replace)?;
                    }
                }
            }
        }
        "slack.message" => {
            if let Some(to) = input.get_mut("to") {
                replace(to)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn owner_recipient(name: &str, owner: Option<&ResolvedOwner>) -> Result<String, String> {
    let Some(owner) = owner else {
        return Err(format!("`{name}`: this run resolved no owner"));
    };
    if name == OWNER_TEAM {
        return owner
            .team
            .as_ref()
            .map(|team| format!("team:{team}"))
            .ok_or_else(|| {
                format!(
                    "`owner.team`: the owner ({}, from {}) belongs to no team in [teams] and no \
                 [owners] rule maps the project; name `owner` instead, or add the person to a \
                 team or a rule for the project",
                    owner.recipient.as_deref().unwrap_or("nobody"),
                    owner.source
                )
            });
    }
    owner.recipient.clone().ok_or_else(|| {
        "`owner`: nobody owns this (the finding names no owner, no key user or recorded owner \
         is known, no [owners] rule maps the project, and `[owners] fallback` is not set)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config(toml: &str) -> Owners {
        let config: Config = toml::from_str(toml).expect("a config");
        Owners::from_config(&config).expect("owners")
    }

    const CONFIG: &str = r#"
        [groups]
        secops = ["lead@example.com", "U0SECOPS1"]
        [teams.payments]
        emails = ["pay@example.com"]
        slack_user_ids = ["U0PAY1"]
        channel = "C0PAYMENTS"
        [teams.platform]
        emails = ["plat@example.com"]
        group = "secops"
        [owners]
        fallback = "group:secops"
        [[owners.rules]]
        project_id = "proj_pay"
        team = "payments"
        [[owners.rules]]
        project_name = "prod-*"
        team = "platform"
    "#;

    /// Whoever said "not mine" is passed over: the chain goes on to its next link, a person
    /// and a team alike; the fallback stays the last word.
    #[test]
    fn a_disowning_owner_is_passed_over() {
        let owners = config(CONFIG);
        let recorded = RecordedOwner::Team("platform".to_owned());
        let facts = |disowned: &'static [String]| Facts {
            key_user: Some("bob@example.com"),
            recorded: None,
            project_id: Some("proj_pay"),
            disowned,
            ..Facts::default()
        };
        let owner = resolve(&owners, &facts(&[]));
        assert_eq!(owner.recipient.as_deref(), Some("bob@example.com"));
        static BOB: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["BOB@example.com".to_owned()]);
        let owner = resolve(&owners, &facts(&BOB));
        assert_eq!(
            (owner.link, owner.recipient.as_deref()),
            (Link::Mapping, Some("team:payments"))
        );
        static BOTH: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            vec!["bob@example.com".to_owned(), "team:payments".to_owned()]
        });
        let owner = resolve(&owners, &facts(&BOTH));
        assert_eq!(
            (owner.link, owner.recipient.as_deref()),
            (Link::Fallback, Some("group:secops"))
        );
        let owner = resolve(
            &owners,
            &Facts {
                recorded: Some(("project_key:key_1", &recorded)),
                disowned: &["team:platform".to_owned()],
                ..Facts::default()
            },
        );
        assert_eq!(owner.link, Link::Fallback, "{owner:?}");
    }

    #[test]
    fn each_link_answers_in_its_turn() {
        let owners = config(CONFIG);
        let finding_owner = quench_proto::Owner {
            email: Some("alice@example.com".to_owned()),
            ..Default::default()
        };
        let recorded = RecordedOwner::Team("payments".to_owned());
        let check = |facts: Facts<'_>, link: Link, recipient: &str, team: Option<&str>| {
            let owner = resolve(&owners, &facts);
            assert_eq!(owner.link, link, "{owner:?}");
            assert_eq!(owner.recipient.as_deref(), Some(recipient), "{owner:?}");
            assert_eq!(owner.team.as_deref(), team, "{owner:?}");
        };
        check(
            Facts {
                finding_owner: Some(&finding_owner),
                key_user: Some("bob@example.com"),
                ..Facts::default()
            },
            Link::Finding,
            "alice@example.com",
            None,
        );
        check(
            Facts {
                key_user: Some("pay@example.com"),
                ..Facts::default()
            },
            Link::KeyUser,
            "pay@example.com",
            Some("payments"),
        );
        check(
            Facts {
                recorded: Some(("service_account:svc_1", &recorded)),
                project_name: Some("prod-web"),
                ..Facts::default()
            },
            Link::Recorded,
            "team:payments",
            Some("payments"),
        );
        check(
            Facts {
                project_id: Some("proj_x"),
                project_name: Some("prod-web"),
                ..Facts::default()
            },
            Link::Mapping,
            "team:platform",
            Some("platform"),
        );
        check(
            Facts {
                project_id: Some("proj_other"),
                ..Facts::default()
            },
            Link::Fallback,
            "group:secops",
            None,
        );
        // A person with no team of their own gets the project's mapped team.
        check(
            Facts {
                finding_owner: Some(&finding_owner),
                project_id: Some("proj_pay"),
                ..Facts::default()
            },
            Link::Finding,
            "alice@example.com",
            Some("payments"),
        );
        // A team's people include its group's members; its channel comes along.
        let owner = resolve(
            &owners,
            &Facts {
                project_name: Some("prod-api"),
                ..Facts::default()
            },
        );
        assert_eq!(
            owner.emails,
            ["plat@example.com", "lead@example.com"],
            "{owner:?}"
        );
        assert_eq!(owner.slack_user_ids, ["U0SECOPS1"]);
        let owner = resolve(
            &owners,
            &Facts {
                project_id: Some("proj_pay"),
                ..Facts::default()
            },
        );
        assert_eq!(owner.channel.as_deref(), Some("C0PAYMENTS"));
    }

    #[test]
    fn without_a_fallback_nobody_is_an_answer_and_naming_the_owner_fails() {
        let owners = Owners::default();
        let owner = resolve(&owners, &Facts::default());
        assert_eq!(owner.link, Link::None);
        assert!(owner.is_empty());
        let mut input = serde_json::json!({"to": "owner", "text": "hi"});
        let error = name_recipients("slack.message", &mut input, Some(&owner))
            .expect_err("nobody to send to");
        assert!(error.contains("`[owners] fallback` is not set"), "{error}");
    }

    #[test]
    fn owner_and_owner_team_are_replaced_in_recipients_only() {
        let owners = config(CONFIG);
        let owner = resolve(
            &owners,
            &Facts {
                key_user: Some("pay@example.com"),
                ..Facts::default()
            },
        );
        let mut approval = serde_json::json!({
            "approvers": ["owner", "group:secops", "owner.team"],
            "question": "owner",
            "escalate": [{"after": "1h", "to": ["owner.team"]}],
        });
        name_recipients("approval", &mut approval, Some(&owner)).expect("named");
        assert_eq!(
            approval,
            serde_json::json!({
                "approvers": ["pay@example.com", "group:secops", "team:payments"],
                "question": "owner",
                "escalate": [{"after": "1h", "to": ["team:payments"]}],
            })
        );
        let mut note = serde_json::json!({"message": "owner"});
        name_recipients("note", &mut note, Some(&owner)).expect("untouched");
        assert_eq!(note, serde_json::json!({"message": "owner"}));
        // A person in no team, with no mapped project: `owner.team` says why it cannot be.
        let alone = resolve(
            &owners,
            &Facts {
                key_user: Some("solo@example.com"),
                ..Facts::default()
            },
        );
        let mut message = serde_json::json!({"to": "owner.team", "text": "x"});
        let error =
            name_recipients("slack.message", &mut message, Some(&alone)).expect_err("no team");
        assert!(error.contains("belongs to no team"), "{error}");
    }

    #[test]
    fn recorded_owners_are_emails_or_configured_teams() {
        let owners = config(CONFIG);
        assert_eq!(
            RecordedOwner::parse("team:payments", &owners),
            Ok(RecordedOwner::Team("payments".to_owned()))
        );
        let error = RecordedOwner::parse("team:payment", &owners).expect_err("unknown team");
        assert!(error.contains("did you mean `payments`?"), "{error}");
        assert!(RecordedOwner::parse("not an email", &owners).is_err());
        assert_eq!(
            RecordedOwner::parse(" a@example.com ", &owners),
            Ok(RecordedOwner::Person("a@example.com".to_owned()))
        );
    }

    #[tokio::test]
    async fn the_inventory_record_gives_the_keys_user_and_service_account() {
        let store = Store::temporary().expect("store");
        let owners = config(CONFIG);
        let record = |owner: Value, access: &str| {
            serde_json::json!({"facts": {"owner": owner, "owner_project_access": access,
                "project_id": "proj_x", "project_name": "prod-web"}})
        };
        let mut batch = crate::store::Batch::new();
        batch.put(
            Key::Identity("project_key:key_user"),
            &record(
                serde_json::json!({"type": "user", "id": "user_1", "email": "kim@example.com"}),
                "active",
            ),
        );
        batch.put(
            Key::Identity("project_key:key_left"),
            &record(
                serde_json::json!({"type": "user", "id": "user_2", "email": "gone@example.com"}),
                "inactive",
            ),
        );
        batch.put(
            Key::Identity("project_key:key_svc"),
            &record(
                serde_json::json!({"type": "service_account", "id": "svc_9"}),
                "active",
            ),
        );
        batch.put(
            Key::Identity("project:proj_p"),
            &serde_json::json!({"facts": {"name": "prod-data", "status": "active"}}),
        );
        batch.put(
            Key::Attributes("service_account:svc_9"),
            &Attributes {
                owner: Some(Attribute {
                    value: "team:payments".to_owned(),
                    set_by: "api:editor".to_owned(),
                    set_at: chrono::Utc::now(),
                }),
                ..Attributes::default()
            },
        );
        store.commit(batch).await.expect("commit");
        let finding = |key: &str| {
            let kind = if key.starts_with("proj_") {
                "project"
            } else {
                "api_key"
            };
            let value = serde_json::json!({
                "schema": "quench.finding/v1", "id": format!("f-{key}"), "kind": "openai.api_key.leaked",
                "severity": "high", "title": "t", "detected_at": "2026-01-05T08:00:00Z",
                "source": {"scanner": "test"},
                "resource": {"provider": "openai", "type": kind, "id": key}
            });
            Finding::parse(
                value.to_string().as_bytes(),
                quench_proto::DEFAULT_MAX_FINDING_BYTES,
            )
            .expect("a finding")
        };
        let resolved =
            |key: &str| resolve_for(&store, &owners, Some(&finding(key))).expect("resolves");
        let user = resolved("key_user");
        assert_eq!(
            (user.link, user.recipient.as_deref()),
            (Link::KeyUser, Some("kim@example.com"))
        );
        // The user left the project: the project's name maps it to a team instead.
        let left = resolved("key_left");
        assert_eq!(
            (left.link, left.team.as_deref()),
            (Link::Mapping, Some("platform"))
        );
        let account = resolved("key_svc");
        assert_eq!(
            (account.link, account.source.as_str()),
            (
                Link::Recorded,
                "the owner recorded for service_account:svc_9"
            )
        );
        // Not in the inventory: the finding is all there is.
        assert_eq!(resolved("key_unknown").link, Link::Fallback);
        // A project is its own project: its name (the inventory's) maps it to a team.
        let project = resolved("proj_p");
        assert_eq!(
            (project.link, project.team.as_deref()),
            (Link::Mapping, Some("platform"))
        );
        // By its id too, with no record of it.
        assert_eq!(
            resolved("proj_pay").recipient.as_deref(),
            Some("team:payments")
        );
    }

    /// One optional fact per link, as the strategy draws them.
    #[derive(Debug, Clone)]
    struct Drawn {
        finding_email: Option<String>,
        finding_team: Option<String>,
        key_user: Option<String>,
        recorded: Option<RecordedOwner>,
        project_id: Option<String>,
        project_name: Option<String>,
        fallback: bool,
    }

    fn drawn() -> impl Strategy<Value = Drawn> {
        let email = prop_oneof![
            "[a-z]{1,6}@example\\.com".prop_map(Some),
            Just(None),
            // Not an email: the link yields nobody and the next one answers.
            "[a-z ]{0,6}".prop_map(Some),
        ];
        let team = prop_oneof![
            Just(Some("payments".to_owned())),
            Just(Some("platform".to_owned())),
            Just(Some("nobody".to_owned())),
            Just(None),
        ];
        let recorded = prop_oneof![
            "[a-z]{1,6}@example\\.com".prop_map(|email| Some(RecordedOwner::Person(email))),
            Just(Some(RecordedOwner::Team("payments".to_owned()))),
            Just(Some(RecordedOwner::Team("gone".to_owned()))),
            Just(None),
        ];
        let project = prop_oneof![
            Just(Some("proj_pay".to_owned())),
            "proj_[a-z]{1,4}".prop_map(Some),
            Just(None)
        ];
        let name = prop_oneof![
            Just(Some("prod-web".to_owned())),
            "[a-z-]{1,8}".prop_map(Some),
            Just(None)
        ];
        (
            email.clone(),
            team,
            email,
            recorded,
            project,
            name,
            any::<bool>(),
        )
            .prop_map(
                |(
                    finding_email,
                    finding_team,
                    key_user,
                    recorded,
                    project_id,
                    project_name,
                    fallback,
                )| Drawn {
                    finding_email,
                    finding_team,
                    key_user,
                    recorded,
                    project_id,
                    project_name,
                    fallback,
                },
            )
    }

    proptest! {
        /// The first link that yields people wins, and the answer is never empty when a
        /// fallback is configured.
        #[test]
        fn the_first_link_with_people_wins(drawn in drawn()) {
            let text = if drawn.fallback {
                CONFIG.to_owned()
            } else {
                CONFIG.replace("fallback = \"group:secops\"", "")
            };
            let owners = config(&text);
            let finding_owner = quench_proto::Owner {
                email: drawn.finding_email.clone(),
                team: drawn.finding_team.clone(),
                ..Default::default()
            };
            let facts = Facts {
                finding_owner: Some(&finding_owner),
                key_user: drawn.key_user.as_deref(),
                recorded: drawn.recorded.as_ref().map(|owner| ("project_key:key_1", owner)),
                project_id: drawn.project_id.as_deref(),
                project_name: drawn.project_name.as_deref(),
                disowned: &[],
            };
            let owner = resolve(&owners, &facts);
            let email = |text: &Option<String>| text.as_deref().is_some_and(is_email);
            let team = |text: &Option<String>| text.as_deref().is_some_and(|name| owners.has_team(name));
            let expected = if email(&drawn.finding_email) || team(&drawn.finding_team) {
                Link::Finding
            } else if email(&drawn.key_user) {
                Link::KeyUser
            } else if match &drawn.recorded {
                Some(RecordedOwner::Person(_)) => true,
                Some(RecordedOwner::Team(name)) => owners.has_team(name),
                None => false,
            } {
                Link::Recorded
            } else if drawn.project_id.as_deref() == Some("proj_pay")
                || drawn.project_name.as_deref().is_some_and(|name| name.starts_with("prod-"))
            {
                Link::Mapping
            } else if drawn.fallback {
                Link::Fallback
            } else {
                Link::None
            };
            prop_assert_eq!(owner.link, expected, "{:?}", owner);
            prop_assert_eq!(owner.is_empty(), owner.link == Link::None, "{:?}", owner);
            prop_assert_eq!(owner.recipient.is_some(), owner.link != Link::None);
            if drawn.fallback {
                prop_assert!(!owner.is_empty(), "{:?}", owner);
            }
        }
    }
}
