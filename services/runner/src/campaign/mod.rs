//! Attestation campaigns (access reviews; docs/campaigns.md): every OpenAI key in a scope is put
//! in front of its owner, who answers per key — keep (saying what it is for), narrow, revoke,
//! or not mine — and whatever is left unanswered at the deadline takes the playbook's default.
//!
//! The campaign does not ask by itself: it hands each owner's keys to a playbook as a finding.
//!
//! - [`Campaigns::start`] lists the scope from the inventory, resolves each key's owner
//!   through the owner chain ([`crate::owners`]), groups the keys by owner into *parts* of at
//!   most [`PART_SIZE`] (one Slack message holds that many), and commits the campaign and its
//!   parts in one batch (audited `campaign_started`).
//! - Each part becomes a finding of kind [`FINDING_KIND`] (id `campaign-<id>-<n>`, key
//!   `campaign:<id>:<n>`), published to intake by the service ([`Campaigns::unpublished`],
//!   [`Campaigns::published`]); a crash between the publish and its record publishes it
//!   again, and intake drops the repeat. The attestation playbook (by default
//!   `attest-openai-identities`) asks with a per-item approval gate: reminders, escalation,
//!   the deadline and its default are the gate's, durable like any run.
//! - [`Campaigns::reconcile`] (the service, every few seconds) follows each part's run: it
//!   copies every item's decision as it is made, records the attestation on the identity
//!   (`attested`, and the purpose a `keep` gave), passes a `not_mine` to the chain's next link
//!   as a new part (the owner who disowned it is recorded and passed over from then on), and
//!   marks a part done when its run ends. A campaign is complete when all its parts are.
//!
//! The campaign's records live in the estate partition with the inventory; the runs are the
//! engine's, read here and never written.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use quench_proto::{DEFAULT_MAX_FINDING_BYTES, Finding};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use crate::actions::{CampaignScope as Scope, StartCampaign as Start};
use crate::engine::{Gate, ItemDecision, MAX_GATE_ITEMS, Run};
use crate::inventory::{Filter, Identity, Inventory, Kind};
use crate::owners::{self, Attested, Link, Owners};
use crate::store::{AuditDraft, Batch, Error, Key, Store};

/// The kind of the findings a campaign publishes, one per part.
pub const FINDING_KIND: &str = "quench.attestation";
/// The playbook a campaign runs unless told otherwise.
pub const DEFAULT_PLAYBOOK: &str = "attest-openai-identities";
/// Most identities put to one owner in one part (one Slack message).
pub const PART_SIZE: usize = MAX_GATE_ITEMS;
/// Most identities one campaign takes.
pub const MAX_IDENTITIES: usize = 50_000;
/// A part's evidence is kept under this many bytes (a finding's evidence may hold 16 KiB).
const PART_EVIDENCE_BYTES: usize = 12 * 1024;
/// The answer that keeps an identity (its comment is the purpose).
pub const KEEP: &str = "keep";
/// The answer that passes an identity to the owner chain's next link.
pub const NOT_MINE: &str = "not_mine";
/// A part published this long ago with no run found counts as `not_started`.
const NOT_STARTED_AFTER: chrono::Duration = chrono::Duration::minutes(2);
/// Runs examined when a part's run is looked for among recent runs.
const RUN_SCAN_BUDGET: usize = 5_000;

/// A campaign, under [`Key::Campaign`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Campaign {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// The attestation playbook its parts run.
    pub playbook: String,
    pub started_by: String,
    pub started_at: DateTime<Utc>,
    /// Parts made so far (a reassignment adds one).
    pub parts: u32,
    /// Identities in scope when it started.
    pub identities: usize,
    /// Identities no link of the owner chain answers for (and those whose every owner said
    /// "not mine"): listed here, asked of nobody. Configure `[owners] fallback` to have none.
    #[serde(default)]
    pub unassigned: Vec<String>,
    /// When the last part's run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// One part of a campaign, under [`Key::CampaignChunk`]: identities put to one owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Part {
    pub n: u32,
    /// Whom it asks: an email, a Slack id, `team:<name>` or `group:<name>`.
    pub owner: String,
    /// Which link of the owner chain named them, and what answered.
    #[schema(value_type = String)]
    pub link: Link,
    pub source: String,
    pub team: Option<String>,
    /// The identities as sent (each with its `id` and the facts shown).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Map<String, Value>>,
    /// The part this one took its identities from, when it is a reassignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reassigned_from: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
    /// The run asking, once found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The gate's deadline and default, once it opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_answer: Option<String>,
    /// Each identity's decision, as the run's gate recorded it.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub decisions: BTreeMap<String, ItemDecision>,
    /// Identities whose decision the campaign has recorded on the identity.
    #[serde(default)]
    pub applied: BTreeSet<String>,
    /// `not_mine` identities and the part they went to (none: nobody further to ask).
    #[serde(default)]
    pub reassigned: BTreeMap<String, Option<u32>>,
    /// When the run ended, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_status: Option<String>,
}

impl Part {
    /// A new part asking `owner` about `items`.
    pub fn new(
        n: u32,
        owner: &owners::ResolvedOwner,
        items: Vec<Map<String, Value>>,
        reassigned_from: Option<u32>,
    ) -> Part {
        Part {
            n,
            owner: owner.recipient.clone().unwrap_or_default(),
            link: owner.link,
            source: owner.source.clone(),
            team: owner.team.clone(),
            items,
            reassigned_from,
            published_at: None,
            run: None,
            deadline: None,
            default_answer: None,
            decisions: BTreeMap::new(),
            applied: BTreeSet::new(),
            reassigned: BTreeMap::new(),
            ended_at: None,
            run_status: None,
        }
    }

    fn key(&self, campaign: &str) -> String {
        format!("campaign:{campaign}:{}", self.n)
    }

    fn finding_id(&self, campaign: &str) -> String {
        format!("campaign-{campaign}-{}", self.n)
    }

    fn item_ids(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(crate::engine::item_id)
    }
}

/// Why a campaign was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request is wrong; the message says what to give.
    #[error("{0}")]
    Invalid(String),
    /// Nothing is in scope.
    #[error("no project key is in scope ({0})")]
    Empty(String),
    #[error(transparent)]
    Store(#[from] Error),
}

/// How far a campaign has got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub identities: usize,
    /// Answered by a person.
    pub answered: usize,
    /// Not answered by the deadline: the default was taken.
    pub defaulted: usize,
    pub pending: usize,
    /// Passed to another owner (counted again, under them, in the owner and team tables).
    pub reassigned: usize,
    /// The run ended without an answer (cancelled or failed).
    pub closed: usize,
    /// Nobody to ask.
    pub unassigned: usize,
    /// Published, but no run took it (the attestation playbook was disabled or unloaded).
    #[serde(default)]
    pub not_started: usize,
}

/// One identity's place in a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemRow {
    pub identity: String,
    pub part: u32,
    pub owner: String,
    pub team: Option<String>,
    /// `pending`, `answered`, `defaulted`, `reassigned`, `closed`, `not_started` or
    /// `unassigned`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// What the answer said (a kept key's purpose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// A campaign with its progress: totals, per owner, per team, and per identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    #[serde(flatten)]
    pub campaign: Campaign,
    /// `running` or `completed`.
    pub status: String,
    /// The latest deadline of its parts' gates, once they opened.
    pub deadline: Option<DateTime<Utc>>,
    /// What an unanswered identity gets at the deadline.
    pub default_answer: Option<String>,
    pub totals: Counts,
    pub by_owner: BTreeMap<String, Counts>,
    pub by_team: BTreeMap<String, Counts>,
    pub items: Vec<ItemRow>,
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Decisions seen for the first time.
    pub decisions: usize,
    /// Parts made for `not_mine` answers.
    pub reassigned: usize,
    /// Campaigns that completed.
    pub completed: usize,
}

/// A part to publish, with its finding.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub campaign: String,
    pub part: u32,
    pub finding: Finding,
}

/// Campaigns over the inventory.
#[derive(Debug, Clone)]
pub struct Campaigns {
    inventory: Inventory,
    owners: Owners,
}

impl Campaigns {
    pub fn new(inventory: Inventory, owners: Owners) -> Campaigns {
        Campaigns { inventory, owners }
    }

    fn store(&self) -> &Store {
        self.inventory.store()
    }

    /// Every campaign, oldest first.
    pub fn list(&self) -> Result<Vec<Campaign>, Error> {
        let mut campaigns: Vec<Campaign> = self
            .store()
            .campaigns::<Campaign>()?
            .into_iter()
            .map(|(_, campaign)| campaign)
            .collect();
        campaigns.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(campaigns)
    }

    pub fn get(&self, id: &str) -> Result<Option<Campaign>, Error> {
        self.store().get(Key::Campaign(id))
    }

    pub fn parts(&self, id: &str) -> Result<Vec<Part>, Error> {
        Ok(self
            .store()
            .campaign_chunks::<Part>(id)?
            .into_iter()
            .map(|(_, part)| part)
            .collect())
    }

    /// Starts a campaign: its scope's identities grouped by owner into parts, committed with
    /// the campaign in one batch (audited); the service publishes the parts.
    pub async fn start(
        &self,
        start: &Start,
        actor: &quench_proto::Actor,
        now: DateTime<Utc>,
    ) -> Result<Campaign, StartError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Ok(self.start_as(&id, start, actor, now).await?.0)
    }

    /// [`Campaigns::start`] with the campaign's id given (a playbook step derives it from its
    /// idempotency key): a campaign that already has it is returned as it is, with `false`.
    pub async fn start_as(
        &self,
        id: &str,
        start: &Start,
        actor: &quench_proto::Actor,
        now: DateTime<Utc>,
    ) -> Result<(Campaign, bool), StartError> {
        if let Some(campaign) = self.get(id)? {
            return Ok((campaign, false));
        }
        let name = start.name.trim();
        if name.is_empty() || name.chars().count() > 120 || name.contains(char::is_control) {
            return Err(StartError::Invalid(
                "a campaign's name is 1 to 120 characters of text".to_owned(),
            ));
        }
        let playbook = start
            .playbook
            .clone()
            .unwrap_or_else(|| DEFAULT_PLAYBOOK.to_owned());
        let filter = self.filter(&start.scope)?;
        let mut campaign = Campaign {
            id: id.to_owned(),
            name: name.to_owned(),
            scope: start.scope.clone(),
            playbook,
            started_by: format!("{}:{}", owners::via_name(actor.via), actor.id),
            started_at: now,
            parts: 0,
            identities: 0,
            unassigned: Vec::new(),
            completed_at: None,
        };
        // Owner → its identities, in the order listed.
        let mut by_owner: BTreeMap<String, (owners::ResolvedOwner, Vec<Map<String, Value>>)> =
            BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let (views, next) =
                self.inventory
                    .list(&filter, after.as_deref(), 1000, usize::MAX, now)?;
            for view in views {
                let identity = view.identity;
                let owner = owners::resolve_identity(self.store(), &self.owners, &identity.id)?;
                if let Some(team) = &start.scope.team
                    && owner.team.as_deref() != Some(team)
                {
                    continue;
                }
                campaign.identities += 1;
                if campaign.identities > MAX_IDENTITIES {
                    return Err(StartError::Invalid(format!(
                        "more than {MAX_IDENTITIES} keys are in scope; narrow it (by project, team or risk)"
                    )));
                }
                match owner.recipient.clone() {
                    Some(recipient) => {
                        by_owner
                            .entry(recipient)
                            .or_insert_with(|| (owner, Vec::new()))
                            .1
                            .push(item(&identity, now));
                    }
                    None => campaign.unassigned.push(identity.id.clone()),
                }
            }
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if campaign.identities == 0 {
            return Err(StartError::Empty(start.scope.describe()));
        }
        let mut batch = Batch::new();
        for (owner, items) in by_owner.into_values() {
            for items in split(items) {
                let part = Part::new(campaign.parts, &owner, items, None);
                // Refused here, at the start, rather than when it is published.
                part_finding(&campaign, &part).map_err(StartError::Invalid)?;
                batch.put(Key::CampaignChunk(id, part.n), &part);
                campaign.parts += 1;
            }
        }
        batch.put(Key::Campaign(id), &campaign);
        let mut draft = AuditDraft::new(
            now,
            "campaign_started",
            json!({
                "campaign": id,
                "name": campaign.name,
                "scope": campaign.scope,
                "playbook": campaign.playbook,
                "identities": campaign.identities,
                "parts": campaign.parts,
                "unassigned": campaign.unassigned.len(),
            }),
        );
        draft.actor = Some(serde_json::to_value(actor).unwrap_or(Value::Null));
        batch.audit(draft);
        self.store().commit(batch).await?;
        Ok((campaign, true))
    }

    fn filter(&self, scope: &Scope) -> Result<Filter, StartError> {
        let unused_for = scope
            .unused_for
            .as_deref()
            .map(|text| {
                crate::playbook::parse_duration(text)
                    .ok()
                    .and_then(|duration| chrono::Duration::from_std(duration).ok())
                    .ok_or_else(|| {
                        StartError::Invalid(format!(
                            "`unused_for: {text}` is not a duration such as 90d"
                        ))
                    })
            })
            .transpose()?;
        if let Some(risk) = &scope.risk
            && !quench_common::config::KNOWN_RISKS.contains(&risk.as_str())
        {
            return Err(StartError::Invalid(format!(
                "`risk: {risk}` is not a risk; risks are {}",
                quench_common::config::KNOWN_RISKS.join(", ")
            )));
        }
        if let Some(team) = &scope.team
            && !self.owners.has_team(team)
        {
            return Err(StartError::Invalid(format!(
                "no team `{team}` under [teams] in the config"
            )));
        }
        Ok(Filter {
            kind: Some(Kind::ProjectKey),
            project: scope.project.clone(),
            owner: scope.owner.clone(),
            risk: scope.risk.clone(),
            unused_for,
            ..Filter::default()
        })
    }

    /// Parts not published yet (at most `limit`), with their findings.
    pub fn unpublished(&self, limit: usize) -> Result<Vec<Outgoing>, Error> {
        let mut out = Vec::new();
        for campaign in self.list()? {
            if campaign.completed_at.is_some() {
                continue;
            }
            for part in self.parts(&campaign.id)? {
                if part.published_at.is_some() {
                    continue;
                }
                match part_finding(&campaign, &part) {
                    Ok(finding) => out.push(Outgoing {
                        campaign: campaign.id.clone(),
                        part: part.n,
                        finding,
                    }),
                    // Checked when the part was made; a finding that no longer builds (a
                    // newer quench's limits) is logged and left, never sent half-made.
                    Err(error) => {
                        tracing::error!(campaign = %campaign.id, part = part.n, %error, "a campaign part's finding cannot be built")
                    }
                }
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Records that these parts were published.
    pub async fn published(&self, sent: &[Outgoing], now: DateTime<Utc>) -> Result<(), Error> {
        let mut batch = Batch::new();
        for outgoing in sent {
            if let Some(mut part) = self
                .store()
                .get::<Part>(Key::CampaignChunk(&outgoing.campaign, outgoing.part))?
            {
                part.published_at = Some(now);
                batch.put(Key::CampaignChunk(&outgoing.campaign, outgoing.part), &part);
            }
        }
        if !batch.is_empty() {
            self.store().commit(batch).await?;
        }
        Ok(())
    }

    /// Follows every running campaign's runs and records what they decided (see the module's
    /// documentation); writes only when something changed.
    pub async fn reconcile(&self, now: DateTime<Utc>) -> Result<Reconciled, Error> {
        let mut report = Reconciled::default();
        for mut campaign in self.list()? {
            if campaign.completed_at.is_some() {
                continue;
            }
            let _writing = owners::writing().await;
            let mut batch = Batch::new();
            let mut parts = self.parts(&campaign.id)?;
            let mut changed_campaign = false;
            let mut new_parts = Vec::new();
            let mut attributes: BTreeMap<String, owners::Attributes> = BTreeMap::new();
            for part in &mut parts {
                let mut changed = self.follow(&campaign, part, &mut report)?;
                let decided: Vec<(String, ItemDecision)> = part
                    .decisions
                    .iter()
                    .filter(|(item, _)| !part.applied.contains(*item))
                    .map(|(item, decision)| (item.clone(), decision.clone()))
                    .collect();
                for (identity, decision) in decided {
                    let current = match attributes.get(&identity) {
                        Some(current) => current.clone(),
                        None => owners::attributes(self.store(), &identity)?.unwrap_or_default(),
                    };
                    let mut updated = current.clone();
                    updated.attested = Some(Attested {
                        campaign: campaign.id.clone(),
                        choice: decision.choice.clone(),
                        defaulted: decision.defaulted,
                        by: decision.decided_by.clone(),
                        at: decision.decided_at,
                    });
                    let purpose = decision
                        .comment
                        .as_deref()
                        .map(str::trim)
                        .filter(|text| !text.is_empty() && decision.choice == KEEP)
                        .map(|text| {
                            let text: String = text
                                .chars()
                                .filter(|c| !c.is_control() || *c == '\n')
                                .take(owners::MAX_PURPOSE)
                                .collect();
                            quench_proto::redact_str(&text).into_owned()
                        });
                    if let Some(purpose) = &purpose {
                        updated.purpose = Some(owners::Attribute {
                            value: purpose.clone(),
                            set_by: decision.decided_by.join(", "),
                            set_at: decision.decided_at,
                        });
                    }
                    let mut detail = json!({
                        "campaign": campaign.id,
                        "part": part.n,
                        "identity": identity,
                        "choice": decision.choice,
                        "by": decision.decided_by,
                        "via": decision.via,
                        "defaulted": decision.defaulted,
                    });
                    if let Some(purpose) = &purpose {
                        detail["purpose"] = purpose.clone().into();
                    }
                    if decision.choice == NOT_MINE && !decision.defaulted {
                        updated.disowned_by.push(owners::Attribute {
                            value: part.owner.clone(),
                            set_by: decision.decided_by.join(", "),
                            set_at: decision.decided_at,
                        });
                        // The chain again, now passing over whoever disowned it.
                        batch.put(Key::Attributes(&identity), &updated);
                        attributes.insert(identity.clone(), updated.clone());
                        let next = self.next_owner(&identity, &updated)?;
                        let to = match next {
                            Some(owner) if owner.recipient.as_deref() != Some(&part.owner) => {
                                let mut item = part
                                    .items
                                    .iter()
                                    .find(|item| crate::engine::item_id(item) == identity)
                                    .cloned()
                                    .unwrap_or_default();
                                item.insert("reassigned_by".into(), part.owner.clone().into());
                                let n = campaign.parts;
                                campaign.parts += 1;
                                new_parts.push(Part::new(n, &owner, vec![item], Some(part.n)));
                                report.reassigned += 1;
                                Some(n)
                            }
                            _ => {
                                campaign.unassigned.push(identity.clone());
                                None
                            }
                        };
                        changed_campaign = true;
                        part.reassigned.insert(identity.clone(), to);
                        detail["reassigned_to"] = json!(to);
                    } else {
                        batch.put(Key::Attributes(&identity), &updated);
                        attributes.insert(identity.clone(), updated);
                    }
                    batch.audit(AuditDraft::new(now, "campaign_attested", detail));
                    part.applied.insert(identity);
                    changed = true;
                }
                if changed {
                    batch.put(Key::CampaignChunk(&campaign.id, part.n), &*part);
                }
            }
            for part in &new_parts {
                batch.put(Key::CampaignChunk(&campaign.id, part.n), part);
            }
            if new_parts.is_empty()
                && parts.iter().all(|part| part.ended_at.is_some())
                && campaign.completed_at.is_none()
            {
                campaign.completed_at = Some(now);
                changed_campaign = true;
                report.completed += 1;
                batch.audit(AuditDraft::new(
                    now,
                    "campaign_completed",
                    json!({"campaign": campaign.id, "parts": campaign.parts}),
                ));
            }
            if changed_campaign {
                batch.put(Key::Campaign(&campaign.id), &campaign);
            }
            if !batch.is_empty() {
                self.store().commit(batch).await?;
            }
        }
        Ok(report)
    }

    /// Finds a part's run and copies what its gate decided; whether the part changed.
    fn follow(
        &self,
        campaign: &Campaign,
        part: &mut Part,
        report: &mut Reconciled,
    ) -> Result<bool, Error> {
        if part.ended_at.is_some() || part.published_at.is_none() {
            return Ok(false);
        }
        let mut changed = false;
        if part.run.is_none() {
            let key = part.key(&campaign.id);
            let run = match self
                .store()
                .get::<String>(Key::Open(&campaign.playbook, &key))?
            {
                Some(run) => Some(run),
                // A part no run took stops being looked for among the runs once it counts as
                // not started: that scan is not made every round for ever.
                None if part
                    .published_at
                    .is_some_and(|at| Utc::now() - at > NOT_STARTED_AFTER) =>
                {
                    None
                }
                // It may have ended already: among the recent runs.
                None => self
                    .store()
                    .runs_newest_first::<Run>("", None)
                    .take(RUN_SCAN_BUDGET)
                    .filter_map(Result::ok)
                    .find(|(_, run)| run.key == key && run.playbook == campaign.playbook)
                    .map(|(id, _)| id),
            };
            let Some(run) = run else {
                return Ok(false);
            };
            part.run = Some(run);
            changed = true;
        }
        let run_id = part.run.clone().unwrap_or_default();
        if let Some(gate) = self
            .store()
            .gates::<Gate>(&run_id)?
            .into_iter()
            .find(Gate::per_item)
        {
            if part.deadline != Some(gate.deadline) {
                part.deadline = Some(gate.deadline);
                part.default_answer = Some(gate.on_timeout.clone());
                changed = true;
            }
            for (item, decision) in gate.item_decisions {
                if part.item_ids().any(|id| id == item) && !part.decisions.contains_key(&item) {
                    part.decisions.insert(item, decision);
                    report.decisions += 1;
                    changed = true;
                }
            }
        }
        match self.store().get::<Run>(Key::Run(&run_id))? {
            Some(run) if run.status.is_terminal() => {
                part.ended_at = Some(run.ended_at.unwrap_or(run.updated_at));
                part.run_status = Some(run.status.as_str().to_owned());
                changed = true;
            }
            Some(_) => {}
            // Purged by retention before it was seen to end.
            None => {
                part.ended_at = Some(Utc::now());
                part.run_status = Some("purged".to_owned());
                changed = true;
            }
        }
        Ok(changed)
    }

    /// The owner the chain names for an identity given its updated attributes (read from the
    /// store after they are committed: so they are put in a scratch view here).
    fn next_owner(
        &self,
        identity: &str,
        updated: &owners::Attributes,
    ) -> Result<Option<owners::ResolvedOwner>, Error> {
        let disowned: Vec<String> = updated
            .disowned_by
            .iter()
            .map(|attribute| attribute.value.to_lowercase())
            .collect();
        let owner =
            owners::resolve_identity_passing_over(self.store(), &self.owners, identity, &disowned)?;
        Ok(owner.recipient.is_some().then_some(owner))
    }

    /// A campaign with its progress.
    pub fn progress(&self, id: &str) -> Result<Option<Progress>, Error> {
        let Some(campaign) = self.get(id)? else {
            return Ok(None);
        };
        let parts = self.parts(id)?;
        let mut items = Vec::new();
        let mut totals = Counts::default();
        let mut by_owner: BTreeMap<String, Counts> = BTreeMap::new();
        let mut by_team: BTreeMap<String, Counts> = BTreeMap::new();
        let mut deadline = None;
        let mut default_answer = None;
        // An identity's state overall is its state in the last part that holds it.
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        for part in &parts {
            deadline = deadline.max(part.deadline);
            if default_answer.is_none() {
                default_answer.clone_from(&part.default_answer);
            }
            for identity in part.item_ids() {
                let decision = part.decisions.get(identity);
                let state = match decision {
                    Some(_) if part.reassigned.contains_key(identity) => "reassigned",
                    Some(decision) if decision.defaulted => "defaulted",
                    Some(_) => "answered",
                    None if part.ended_at.is_some() => "closed",
                    // Published a while ago and no run took it: the playbook was disabled or
                    // unloaded since the campaign started (intake found no match for it).
                    None if part.run.is_none()
                        && part
                            .published_at
                            .is_some_and(|at| Utc::now() - at > NOT_STARTED_AFTER) =>
                    {
                        "not_started"
                    }
                    None => "pending",
                };
                for counts in [
                    by_owner.entry(part.owner.clone()).or_default(),
                    by_team
                        .entry(part.team.clone().unwrap_or_else(|| "(no team)".to_owned()))
                        .or_default(),
                ] {
                    counts.identities += 1;
                    count(counts, state);
                }
                last.insert(identity.to_owned(), state.to_owned());
                items.push(ItemRow {
                    identity: identity.to_owned(),
                    part: part.n,
                    owner: part.owner.clone(),
                    team: part.team.clone(),
                    state: state.to_owned(),
                    choice: decision.map(|decision| decision.choice.clone()),
                    by: decision
                        .map(|decision| decision.decided_by.clone())
                        .unwrap_or_default(),
                    via: decision.map(|decision| decision.via.clone()),
                    at: decision.map(|decision| decision.decided_at),
                    comment: decision.and_then(|decision| decision.comment.clone()),
                    run: part.run.clone(),
                });
            }
        }
        for identity in &campaign.unassigned {
            last.insert(identity.clone(), "unassigned".to_owned());
        }
        totals.identities = last.len();
        for state in last.values() {
            count(&mut totals, state);
        }
        for identity in &campaign.unassigned {
            if !items.iter().any(|row| row.identity == *identity) {
                items.push(ItemRow {
                    identity: identity.clone(),
                    part: 0,
                    owner: String::new(),
                    team: None,
                    state: "unassigned".to_owned(),
                    choice: None,
                    by: Vec::new(),
                    via: None,
                    at: None,
                    comment: None,
                    run: None,
                });
            }
        }
        let status = if campaign.completed_at.is_some() {
            "completed"
        } else {
            "running"
        };
        Ok(Some(Progress {
            campaign,
            status: status.to_owned(),
            deadline,
            default_answer,
            totals,
            by_owner,
            by_team,
            items,
        }))
    }
}

fn count(counts: &mut Counts, state: &str) {
    match state {
        "answered" => counts.answered += 1,
        "defaulted" => counts.defaulted += 1,
        "pending" => counts.pending += 1,
        "reassigned" => counts.reassigned += 1,
        "closed" => counts.closed += 1,
        "not_started" => counts.not_started += 1,
        _ => counts.unassigned += 1,
    }
}

/// An identity as a campaign shows it: what an owner needs to decide (last used, age, scopes,
/// expiry) and what the playbook needs to act (`key_id`, `project_id`).
fn item(identity: &Identity, now: DateTime<Utc>) -> Map<String, Value> {
    let facts = &identity.facts;
    let day = |at: Option<DateTime<Utc>>, none: &str| {
        at.map_or_else(|| none.to_owned(), |at| at.format("%Y-%m-%d").to_string())
    };
    let mut item = Map::new();
    item.insert("id".into(), identity.id.clone().into());
    item.insert(
        "label".into(),
        facts
            .name
            .clone()
            .unwrap_or_else(|| identity.openai_id.clone())
            .into(),
    );
    item.insert(
        "project".into(),
        facts
            .project_name
            .clone()
            .or_else(|| facts.project_id.clone())
            .unwrap_or_default()
            .into(),
    );
    item.insert("last_used".into(), day(facts.last_used_at, "never").into());
    if let Some(created) = facts.created_at {
        item.insert("age_days".into(), (now - created).num_days().max(0).into());
    }
    item.insert("expires".into(), day(facts.expires_at, "never").into());
    let scopes = match &facts.scopes {
        None => "unknown".to_owned(),
        Some(scopes) if scopes.is_empty() => "all (unrestricted)".to_owned(),
        Some(scopes) if scopes.len() > 6 => {
            format!("{} and {} more", scopes[..6].join(", "), scopes.len() - 6)
        }
        Some(scopes) => scopes.join(", "),
    };
    item.insert("scopes".into(), scopes.into());
    item.insert("key_id".into(), identity.openai_id.clone().into());
    item.insert(
        "project_id".into(),
        facts.project_id.clone().unwrap_or_default().into(),
    );
    item
}

/// An owner's items in parts of at most [`PART_SIZE`] whose evidence stays under
/// [`PART_EVIDENCE_BYTES`].
fn split(items: Vec<Map<String, Value>>) -> Vec<Vec<Map<String, Value>>> {
    let mut parts: Vec<Vec<Map<String, Value>>> = Vec::new();
    let mut size = 0;
    for item in items {
        let bytes = serde_json::to_vec(&item).map_or(0, |bytes| bytes.len()) + 1;
        let full = parts
            .last()
            .is_none_or(|part| part.len() >= PART_SIZE || size + bytes > PART_EVIDENCE_BYTES);
        if full {
            parts.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(part) = parts.last_mut() {
            part.push(item);
        }
    }
    parts
}

/// Whether intake may take `finding` in: a [`FINDING_KIND`] finding is quench's own, taken in
/// only when it is exactly the finding of a campaign part this store holds. Anyone who may
/// publish findings could otherwise list any keys, name themselves the owner, and answer
/// `revoke`. Other findings pass. The error says why, for the dead letter.
pub fn admit(store: &Store, finding: &Finding) -> Result<(), String> {
    if finding.kind != FINDING_KIND {
        return Ok(());
    }
    let part_of = || {
        let rest = finding.key.strip_prefix("campaign:")?;
        let (campaign, n) = rest.rsplit_once(':')?;
        Some((campaign.to_owned(), n.parse::<u32>().ok()?))
    };
    let Some((id, n)) = part_of() else {
        return Err(format!(
            "`{FINDING_KIND}` findings are made by campaigns only; key `{}` names no campaign part",
            finding.key
        ));
    };
    let campaign = store
        .get::<Campaign>(Key::Campaign(&id))
        .map_err(|error| error.to_string())?
        .ok_or_else(|| {
            format!("no campaign `{id}`: `{FINDING_KIND}` findings are made by campaigns only")
        })?;
    let part = store
        .get::<Part>(Key::CampaignChunk(&id, n))
        .map_err(|error| error.to_string())?
        .ok_or_else(|| format!("campaign `{id}` has no part {n}"))?;
    let expected = part_finding(&campaign, &part)?;
    if serde_json::to_value(&expected).ok() != serde_json::to_value(finding).ok() {
        return Err(format!(
            "the finding is not part {n} of campaign `{id}` as the campaign made it"
        ));
    }
    Ok(())
}

/// The finding a part is published as (the same bytes each time: it is built from the records
/// alone, so a repeat is a duplicate intake drops).
pub fn part_finding(campaign: &Campaign, part: &Part) -> Result<Finding, String> {
    let count = part.items.len();
    let title = format!(
        "Access review {}: {count} OpenAI key{} for {}",
        campaign.name,
        if count == 1 { "" } else { "s" },
        part.owner
    );
    let title: String = title.chars().take(300).collect();
    let mut value = json!({
        "schema": "quench.finding/v1",
        "id": part.finding_id(&campaign.id),
        "key": part.key(&campaign.id),
        "kind": FINDING_KIND,
        "status": "open",
        "severity": "low",
        "title": title,
        "detected_at": campaign.started_at.to_rfc3339(),
        "source": {"scanner": "quench", "rule": format!("campaign:{}", campaign.id)},
        "resource": {
            "provider": "openai",
            "type": "user",
            "id": part.owner,
        },
        "evidence": {
            "campaign": campaign.id,
            "campaign_name": campaign.name,
            "part": part.n,
            "owner_link": part.link.as_str(),
            "identities": part.items,
        },
    });
    let owner = &part.owner;
    if let Some(team) = owner.strip_prefix("team:") {
        value["owner"] = json!({"team": team});
    } else if owner.contains('@') {
        value["owner"] = json!({"email": owner});
    } else if !owner.starts_with("group:") {
        value["owner"] = json!({"slack_user_id": owner});
    }
    let bytes = serde_json::to_vec(&value).map_err(|error| error.to_string())?;
    Finding::parse(&bytes, DEFAULT_MAX_FINDING_BYTES).map_err(|error| {
        format!(
            "the finding for part {} of campaign {} is not valid: {error}",
            part.n, campaign.id
        )
    })
}

#[cfg(test)]
mod tests;
