//! The estate inventory as an evidence source: every identity as it stood at the period's end,
//! with its owner, purpose and risks. An identity's facts are taken back to that moment through
//! its history (each change after it undone, newest first), so a pack made later for the same
//! period lists the same identities with the same facts. Risks are assessed at that moment
//! against the findings open now. The owner is the owner chain's answer (`owners::resolve`, the
//! one chain playbooks use: the key's user while they have access, the recorded owner of the
//! identity or its service account, `[owners]` rules, the fallback), with the link that gave it;
//! the purpose is what people recorded (attributes are kept as they are now). Campaigns are
//! those active in the period (started before its end, not completed before its start), with
//! their progress now, and every attestation answered or defaulted in the period.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{AttestationRow, CampaignRow, EvidenceSources, InventoryRow, Period};
use crate::campaign::Campaigns;
use crate::inventory::{Change, Identity, Inventory, risk};
use crate::owners::{self, Owners};

/// The inventory with the owner chain's config.
#[derive(Debug, Clone)]
pub struct Estate {
    pub inventory: Inventory,
    pub owners: std::sync::Arc<Owners>,
}

impl EvidenceSources for Estate {
    fn inventory_at(&self, at: DateTime<Utc>) -> Result<Option<Vec<InventoryRow>>, String> {
        let inventory = &self.inventory;
        let store = inventory.store();
        let context = risk::Context::load(store).map_err(|error| error.to_string())?;
        let mut rows = Vec::new();
        for item in store.identities::<Identity>(None) {
            let (_, identity) = item.map_err(|error| error.to_string())?;
            if identity.first_seen >= at {
                continue;
            }
            let history: Vec<(u64, Change)> = inventory
                .history(&identity.id)
                .map_err(|error| error.to_string())?;
            let Some(identity) = as_at(identity, &history, at) else {
                continue;
            };
            let (owner, owner_source) = self.owner(&identity).map_err(|error| error.to_string())?;
            let purpose = owners::attributes(store, &identity.id)
                .map_err(|error| error.to_string())?
                .and_then(|attributes| attributes.purpose)
                .map(|purpose| purpose.value);
            let risks = risk::assess(&identity, inventory.policy(), &context, at)
                .into_iter()
                .map(|risk| format!("{}: {}", risk.id, risk.fact))
                .collect();
            rows.push(InventoryRow {
                id: identity.id.clone(),
                kind: identity.kind.as_str().to_owned(),
                project: identity.facts.project_id.clone(),
                name: identity.facts.name.clone(),
                owner,
                owner_source,
                purpose,
                created_at: identity.facts.created_at,
                last_used_at: identity.facts.last_used_at,
                expires_at: identity.facts.expires_at,
                deleted_at: identity.deleted_at,
                risks,
            });
        }
        // No inventory was ever synced: say so rather than list nothing.
        if rows.is_empty()
            && inventory
                .state()
                .map_err(|error| error.to_string())?
                .sequence
                == 0
        {
            return Ok(None);
        }
        Ok(Some(rows))
    }

    fn campaigns(
        &self,
        period: Period,
    ) -> Result<Option<(Vec<CampaignRow>, Vec<AttestationRow>)>, String> {
        let text = |error: crate::store::Error| error.to_string();
        let campaigns = Campaigns::new(self.inventory.clone(), (*self.owners).clone());
        let all = campaigns.list().map_err(text)?;
        if all.is_empty() {
            return Ok(None);
        }
        let mut rows = Vec::new();
        let mut attestations = Vec::new();
        for campaign in all {
            let active = campaign.started_at < period.to
                && campaign
                    .completed_at
                    .is_none_or(|completed| completed >= period.from);
            if !active {
                continue;
            }
            let Some(progress) = campaigns.progress(&campaign.id).map_err(text)? else {
                continue;
            };
            for item in &progress.items {
                let (Some(choice), Some(at)) = (&item.choice, item.at) else {
                    continue;
                };
                if at < period.from || at >= period.to {
                    continue;
                }
                let answer = if item.state == "defaulted" {
                    format!("defaulted:{choice}")
                } else {
                    choice.clone()
                };
                attestations.push(AttestationRow {
                    campaign: campaign.id.clone(),
                    identity: item.identity.clone(),
                    owner: Some(item.owner.clone()).filter(|owner| !owner.is_empty()),
                    purpose: item
                        .comment
                        .clone()
                        .filter(|_| choice == crate::campaign::KEEP),
                    by: Some(item.by.join(", ")).filter(|by| !by.is_empty()),
                    via: item.via.clone(),
                    answer,
                    at,
                    seq: None,
                });
            }
            rows.push(CampaignRow {
                id: campaign.id.clone(),
                name: campaign.name.clone(),
                scope: campaign.scope.describe(),
                started_at: campaign.started_at,
                deadline: progress.deadline,
                ended_at: campaign.completed_at,
                default_answer: progress.default_answer.clone(),
                answered: progress.totals.answered,
                pending: progress.totals.pending,
                defaulted: progress.totals.defaulted,
            });
        }
        attestations.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.identity.cmp(&b.identity)));
        Ok(Some((rows, attestations)))
    }
}

impl Estate {
    /// The owner chain's answer for an identity (no finding: the chain starts at the key's
    /// user), as the recipient it names and the link with what answered.
    fn owner(
        &self,
        identity: &Identity,
    ) -> Result<(Option<String>, Option<String>), crate::store::Error> {
        let facts = &identity.facts;
        let mut identities = vec![identity.id.clone()];
        if let Some(account) = facts
            .owner
            .as_ref()
            .filter(|owner| owner.kind == "service_account")
            .and_then(|owner| owner.id.as_ref())
        {
            identities.push(format!("service_account:{account}"));
        }
        let key_facts = owners::KeyFacts {
            identities,
            user_email: facts
                .owner
                .as_ref()
                .filter(|owner| owner.kind == "user")
                .filter(|_| facts.owner_project_access.as_deref() != Some("inactive"))
                .and_then(|owner| owner.email.clone()),
            project_id: facts.project_id.clone(),
            project_name: facts.project_name.clone(),
        };
        let resolved =
            owners::resolve_facts(self.inventory.store(), &self.owners, None, &key_facts)?;
        if resolved.recipient.is_none() {
            return Ok((None, None));
        }
        Ok((
            resolved.recipient,
            Some(format!("{}: {}", resolved.link.as_str(), resolved.source)),
        ))
    }
}

/// The identity as it stood at `at`: the changes after it undone, newest first; `None` when it
/// was not known then.
fn as_at(mut identity: Identity, history: &[(u64, Change)], at: DateTime<Utc>) -> Option<Identity> {
    let later: Vec<&Change> = history
        .iter()
        .map(|(_, change)| change)
        .filter(|change| change.at > at)
        .collect();
    if later.iter().any(|change| change.what == "created")
        && !history
            .iter()
            .any(|(_, change)| change.at <= at && change.what == "created")
    {
        return None;
    }
    let mut facts = serde_json::to_value(&identity.facts).ok()?;
    for change in later.iter().rev() {
        match change.what.as_str() {
            // Deleted after the period: it existed then.
            "deleted" => identity.deleted_at = None,
            // Seen again after the period: it was deleted then, since its last deletion.
            "restored" => {
                identity.deleted_at = history
                    .iter()
                    .map(|(_, change)| change)
                    .filter(|change| change.what == "deleted" && change.at <= at)
                    .map(|change| change.at)
                    .max();
            }
            _ => {}
        }
        if let Value::Object(fields) = &mut facts {
            for (name, field) in &change.fields {
                if field.from.is_null() {
                    fields.remove(name);
                } else {
                    fields.insert(name.clone(), field.from.clone());
                }
            }
        }
    }
    identity.facts = serde_json::from_value(facts).ok()?;
    Some(identity)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use serde_json::json;

    use super::as_at;
    use crate::inventory::{Change, Facts, FieldChange, Identity, Kind};

    fn change(day: u32, what: &str, fields: &[(&str, Value, Value)]) -> Change {
        Change {
            at: chrono::Utc
                .with_ymd_and_hms(2026, 1, day, 0, 0, 0)
                .single()
                .expect("a day"),
            what: what.to_owned(),
            source: "sync".to_owned(),
            fields: fields
                .iter()
                .map(|(name, from, to)| {
                    (
                        (*name).to_owned(),
                        FieldChange {
                            from: from.clone(),
                            to: to.clone(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    use serde_json::Value;

    #[test]
    fn an_identity_is_taken_back_to_the_period_end() {
        let day = |day| {
            chrono::Utc
                .with_ymd_and_hms(2026, 1, day, 0, 0, 0)
                .single()
                .expect("a day")
        };
        let identity = Identity {
            id: "project_key:key_1".to_owned(),
            kind: Kind::ProjectKey,
            openai_id: "key_1".to_owned(),
            facts: Facts {
                name: Some("renamed".to_owned()),
                expires_at: Some(day(30)),
                ..Facts::default()
            },
            first_seen: day(1),
            changed_at: day(20),
            deleted_at: Some(day(25)),
        };
        let history = vec![
            (
                1,
                change(1, "created", &[("name", Value::Null, json!("web"))]),
            ),
            (
                2,
                change(
                    20,
                    "changed",
                    &[
                        ("name", json!("web"), json!("renamed")),
                        ("expires_at", Value::Null, json!("2026-01-30T00:00:00Z")),
                    ],
                ),
            ),
            (3, change(25, "deleted", &[])),
        ];
        let then = as_at(identity.clone(), &history, day(10)).expect("known then");
        assert_eq!(then.facts.name.as_deref(), Some("web"));
        assert_eq!(then.facts.expires_at, None);
        assert_eq!(then.deleted_at, None);
        let now = as_at(identity.clone(), &history, day(26)).expect("known");
        assert_eq!(now, identity);
    }
}
