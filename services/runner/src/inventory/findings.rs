//! Findings the inventory publishes for risks, so the shipped playbooks take them up as they
//! took up the weekly review's: once per identity and risk, and a `resolved` finding when the
//! risk goes away. Each (identity, risk) has a record under [`Key::InventoryFinding`] counting
//! its episodes; a finding's id is derived from (identity, risk, episode), so a publish
//! repeated after a crash (published, not yet recorded) carries the same id and intake drops it.

use chrono::{DateTime, Utc};
use quench_proto::{DEFAULT_MAX_FINDING_BYTES, Finding};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::risk::{self, Context, Risk};
use super::{Identity, Inventory, Kind};
use crate::store::{Batch, Error, Key};

/// What the inventory remembers of (identity, risk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Published {
    /// How many times the risk appeared (1 the first time).
    pub episode: u64,
    /// The open finding's id.
    pub finding_id: String,
    pub kind: String,
    pub opened_at: DateTime<Utc>,
    /// Set once a `resolved` finding went out; a new episode starts when the risk is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
}

/// One finding to publish, and the record to commit once it is on the stream.
#[derive(Debug)]
pub struct Outgoing {
    pub identity: String,
    pub risk: String,
    pub finding: Finding,
    pub record: Published,
}

/// The finding kind and key of `risk` on `identity`; `None` for what is not published
/// (`leaked` comes from findings; other kinds' risks have no playbook shape).
fn shape(identity: &Identity, risk: &str) -> Option<(String, String)> {
    let id = &identity.openai_id;
    let service_account = identity
        .facts
        .owner
        .as_ref()
        .filter(|owner| owner.kind == "service_account")
        .and_then(|owner| owner.id.as_deref());
    match (identity.kind, risk) {
        (_, risk::LEAKED) => None,
        // A service account's unused key: the account is what goes stale (one finding per
        // account, as `delete-stale-service-account` takes it up).
        (Kind::ProjectKey, risk::UNUSED | risk::NEVER_USED) if service_account.is_some() => Some((
            "openai.service_account.stale".to_owned(),
            format!(
                "openai:service_account:{}",
                service_account.unwrap_or_default()
            ),
        )),
        (Kind::ProjectKey, risk::UNUSED | risk::NEVER_USED) => Some((
            "openai.api_key.unused".to_owned(),
            format!("openai:project_key:{id}"),
        )),
        (Kind::ProjectKey, risk::OWNER_LEFT) => Some((
            "openai.api_key.unowned".to_owned(),
            format!("openai:project_key:{id}:owner"),
        )),
        (Kind::ProjectKey, risk) => Some((
            format!("openai.api_key.{risk}"),
            format!("openai:project_key:{id}:{risk}"),
        )),
        (Kind::Project, risk::DATA_EXPOSURE) => Some((
            "openai.project.data_exposure".to_owned(),
            format!("openai:project:{id}:data_exposure"),
        )),
        (Kind::AdminKey, risk) => Some((
            format!("openai.admin_key.{risk}"),
            format!("openai:admin_key:{id}:{risk}"),
        )),
        _ => None,
    }
}

fn finding_id(identity: &str, risk: &str, episode: u64, suffix: &str) -> String {
    let digest = Sha256::digest(format!("{identity}\0{risk}\0{episode}").as_bytes());
    format!("inventory-{}{suffix}", &hex::encode(digest)[..32])
}

/// The finding for `risk` of `identity`, open or resolved, of the `(kind, key)` [`shape`] gives;
/// `exposure` is how a project breaks its class (an open `data_exposure`), its evidence.
fn finding(
    identity: &Identity,
    risk: &Risk,
    (kind, key): (&str, &str),
    id: String,
    resolved: bool,
    exposure: Option<&risk::Exposure>,
    now: DateTime<Utc>,
) -> Result<Finding, String> {
    let facts = &identity.facts;
    let name = facts
        .name
        .clone()
        .unwrap_or_else(|| identity.openai_id.clone());
    let service_account = facts
        .owner
        .as_ref()
        .filter(|owner| {
            owner.kind == "service_account" && kind.starts_with("openai.service_account.")
        })
        .and_then(|owner| owner.id.clone());
    let resource_type = match (identity.kind, &service_account) {
        (_, Some(_)) => "service_account",
        (Kind::AdminKey, None) => "admin_key",
        (Kind::Project, None) => "project",
        _ => "api_key",
    };
    // A project is its own project (as the owner chain and the project actions read it).
    let project_id = if identity.kind == Kind::Project {
        Some(identity.openai_id.clone())
    } else {
        facts.project_id.clone()
    };
    let severity = match risk.id.as_str() {
        risk::OWNER_LEFT | risk::UNRESTRICTED_SCOPES | risk::ADMIN_KEY | risk::DATA_EXPOSURE => {
            "medium"
        }
        _ => "low",
    };
    let what = if identity.kind == Kind::Project {
        "OpenAI project"
    } else {
        "OpenAI key"
    };
    let title = format!(
        "{what} {name}: {} ({})",
        risk.id.replace('_', " "),
        risk.fact
    );
    let title: String = title.chars().take(300).collect();
    let mut value = json!({
        "schema": "quench.finding/v1",
        "id": id,
        "key": key,
        "kind": kind,
        "status": if resolved { "resolved" } else { "open" },
        "severity": severity,
        "title": title,
        "detected_at": now.to_rfc3339(),
        "source": {"scanner": "quench", "rule": format!("inventory:{}", risk.id)},
        "resource": {
            "provider": "openai",
            "type": resource_type,
            "id": service_account.clone().unwrap_or_else(|| identity.openai_id.clone()),
            "name": if service_account.is_some() { facts.owner.as_ref().and_then(|owner| owner.name.clone()) } else { facts.name.clone() },
            "project_id": project_id,
            "redacted_value": facts.redacted_value,
            "last_used_at": facts.last_used_at.map(|at| at.to_rfc3339()),
        },
        "evidence": {
            "settings": settings_evidence(identity),
            "exposure": exposure,
            "key_id": (identity.kind != Kind::Project).then(|| identity.openai_id.clone()),
            "last_used_at": facts.last_used_at.map(|at| at.to_rfc3339()),
            "risk": risk.id,
            "fact": risk.fact,
            "inventory_id": identity.id,
            "former_owner": facts.owner.as_ref().and_then(|owner| owner.email.clone().or_else(|| owner.id.clone())),
        },
    });
    if let Some(email) = facts
        .owner
        .as_ref()
        .and_then(|owner| owner.email.as_ref())
        .filter(|_| risk.id != risk::OWNER_LEFT)
    {
        value["owner"] = json!({"email": email});
    }
    strip_nulls(&mut value);
    let bytes = serde_json::to_vec(&value).map_err(|error| error.to_string())?;
    Finding::parse(&bytes, DEFAULT_MAX_FINDING_BYTES).map_err(|error| error.to_string())
}

/// A project's data settings as a finding's evidence (null for other identities).
fn settings_evidence(identity: &Identity) -> Value {
    if identity.kind != Kind::Project {
        return Value::Null;
    }
    let facts = &identity.facts;
    json!({
        "hosted_tools": facts.hosted_tools,
        "model_policy": facts.model_policy,
        "data_retention": facts.data_retention,
        "certificates": facts.certificates.len(),
    })
}

/// The drift finding for a change (history entry `seq`) of a project's data settings or of
/// what a key uses (`openai.project.drift`, `openai.api_key.drift`).
fn drift_finding(
    identity: &Identity,
    seq: u64,
    change: &super::Change,
    now: DateTime<Utc>,
) -> Result<Finding, String> {
    let facts = &identity.facts;
    let name = facts
        .name
        .clone()
        .unwrap_or_else(|| identity.openai_id.clone());
    let fields: Vec<&str> = change.fields.keys().map(String::as_str).collect();
    let (kind, key_kind, resource_type, what, project_id) = if identity.kind == Kind::Project {
        (
            "openai.project.drift",
            "project",
            "project",
            format!(
                "OpenAI project {name}: data settings changed ({})",
                fields.join(", ")
            ),
            Some(identity.openai_id.clone()),
        )
    } else {
        // What the key uses now that it did not before: usage families, then model families.
        let new: Vec<String> = ["capabilities", "model_families"]
            .iter()
            .filter_map(|field| change.fields.get(*field))
            .flat_map(|change| {
                added_removed(change)
                    .map(|(added, _)| added)
                    .unwrap_or_default()
            })
            .collect();
        (
            "openai.api_key.drift",
            "project_key",
            "api_key",
            format!("OpenAI key {name}: first use of {}", new.join(", ")),
            facts.project_id.clone(),
        )
    };
    let title: String = what.chars().take(300).collect();
    let changes: serde_json::Map<String, Value> = change
        .fields
        .iter()
        .map(|(field, change)| {
            let mut entry = json!({"from": change.from, "to": change.to});
            if let Some((added, removed)) = added_removed(change) {
                entry["added"] = json!(added);
                entry["removed"] = json!(removed);
            }
            (field.clone(), entry)
        })
        .collect();
    let mut value = json!({
        "schema": "quench.finding/v1",
        "id": finding_id(&identity.id, "drift", seq, ""),
        "key": format!("openai:{key_kind}:{}:drift:{seq}", identity.openai_id),
        "kind": kind,
        "severity": "medium",
        "title": title,
        "detected_at": now.to_rfc3339(),
        "source": {"scanner": "quench", "rule": "inventory:drift"},
        "resource": {
            "provider": "openai",
            "type": resource_type,
            "id": identity.openai_id,
            "name": facts.name,
            "project_id": project_id,
            "redacted_value": facts.redacted_value,
        },
        "evidence": {
            "changes": changes,
            "changed_at": change.at.to_rfc3339(),
            "source": change.source,
            "inventory_id": identity.id,
        },
    });
    if let Some(email) = facts.owner.as_ref().and_then(|owner| owner.email.as_ref()) {
        value["owner"] = json!({"email": email});
    }
    strip_nulls(&mut value);
    let bytes = serde_json::to_vec(&value).map_err(|error| error.to_string())?;
    Finding::parse(&bytes, DEFAULT_MAX_FINDING_BYTES).map_err(|error| error.to_string())
}

/// For a setting that is a set — a list of names (`capabilities`, `model_families`,
/// `certificates`), or names that are on (`hosted_tools`: tool → on) — what `to` has that
/// `from` had not, and the reverse, each in order; `None` for other settings (`data_retention`,
/// `model_policy`), whose `from` and `to` say it all. Never longer than `from` and `to`.
fn added_removed(change: &super::FieldChange) -> Option<(Vec<String>, Vec<String>)> {
    fn members(value: &Value) -> Option<Vec<String>> {
        match value {
            Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect(),
            Value::Object(map) => map
                .iter()
                .map(|(name, on)| on.as_bool().map(|on| on.then(|| name.clone())))
                .collect::<Option<Vec<_>>>()
                .map(|names| names.into_iter().flatten().collect()),
            _ => None,
        }
    }
    // A set emptied (or first filled) is absent on that side: facts leave empty sets out.
    let set = |value: &Value| match value {
        Value::Null => Some(Vec::new()),
        value => members(value),
    };
    if change.from.is_null() && change.to.is_null() {
        return None;
    }
    let (from, to) = (set(&change.from)?, set(&change.to)?);
    let only = |these: &[String], those: &[String]| -> Vec<String> {
        these
            .iter()
            .filter(|name| !those.contains(name))
            .cloned()
            .collect()
    };
    Some((only(&to, &from), only(&from, &to)))
}

/// The record name of the drift finding for history entry `seq`.
fn drift_record(seq: u64) -> String {
    format!("drift:{seq:020}")
}

fn strip_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, field| !field.is_null());
        for field in map.values_mut() {
            strip_nulls(field);
        }
    }
}

impl Inventory {
    /// The findings to publish now for the risks in `publish`: new risks (a new episode) and
    /// risks gone away (their `resolved` finding). Bounded by `limit` per call.
    pub fn findings_due(
        &self,
        publish: &[String],
        drift: bool,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Outgoing>, Error> {
        let context = Context::load(&self.store)?;
        let mut records: std::collections::HashMap<(String, String), Published> = self
            .store
            .inventory_findings::<Published>()?
            .into_iter()
            .map(|(id, risk, record)| ((id, risk), record))
            .collect();
        let mut out = Vec::new();
        for item in self.store.identities::<Identity>(None) {
            let (_, identity) = item?;
            if drift && matches!(identity.kind, Kind::Project | Kind::ProjectKey) {
                self.drift_due(&identity, &records, now, limit, &mut out)?;
            }
            let risks = risk::assess(&identity, &self.policy, &context, now);
            for wanted in publish {
                if out.len() >= limit {
                    return Ok(out);
                }
                let Some((kind, key)) = shape(&identity, wanted) else {
                    continue;
                };
                let record = records.remove(&(identity.id.clone(), wanted.clone()));
                let open = record
                    .as_ref()
                    .filter(|record| record.resolved_at.is_none());
                match (risks.iter().find(|risk| risk.id == *wanted), open) {
                    (Some(risk), None) => {
                        let episode = record.as_ref().map_or(1, |record| record.episode + 1);
                        let id = finding_id(&identity.id, wanted, episode, "");
                        let exposure = (risk.id == risk::DATA_EXPOSURE)
                            .then(|| risk::exposure(&identity, &self.policy))
                            .flatten();
                        match finding(
                            &identity,
                            risk,
                            (&kind, &key),
                            id.clone(),
                            false,
                            exposure.as_ref(),
                            now,
                        ) {
                            Ok(finding) => out.push(Outgoing {
                                identity: identity.id.clone(),
                                risk: wanted.clone(),
                                finding,
                                record: Published {
                                    episode,
                                    finding_id: id,
                                    kind,
                                    opened_at: now,
                                    resolved_at: None,
                                },
                            }),
                            Err(error) => {
                                tracing::warn!(identity = %identity.id, risk = %wanted, %error, "the inventory cannot build a finding for this risk");
                            }
                        }
                    }
                    (None, Some(open)) => {
                        let gone = Risk {
                            id: wanted.clone(),
                            fact: "no longer the case".to_owned(),
                        };
                        let id = finding_id(&identity.id, wanted, open.episode, "-resolved");
                        match finding(&identity, &gone, (&open.kind, &key), id, true, None, now) {
                            Ok(finding) => out.push(Outgoing {
                                identity: identity.id.clone(),
                                risk: wanted.clone(),
                                finding,
                                record: Published {
                                    resolved_at: Some(now),
                                    ..open.clone()
                                },
                            }),
                            Err(error) => {
                                tracing::warn!(identity = %identity.id, risk = %wanted, %error, "the inventory cannot build a resolved finding for this risk");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Drift findings not published yet for the history of `project` (a project or a key):
    /// changes by a pass (not its creation) of a [`super::DATA_SETTINGS`] fact that was known
    /// before.
    fn drift_due(
        &self,
        project: &Identity,
        records: &std::collections::HashMap<(String, String), Published>,
        now: DateTime<Utc>,
        limit: usize,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), Error> {
        for (seq, mut change) in self.history(&project.id)? {
            if out.len() >= limit {
                return Ok(());
            }
            if change.what != "changed" {
                continue;
            }
            change.fields.retain(|field, change| {
                super::DATA_SETTINGS.contains(&field.as_str()) && !change.from.is_null()
            });
            let record = drift_record(seq);
            if change.fields.is_empty()
                || records.contains_key(&(project.id.clone(), record.clone()))
            {
                continue;
            }
            match drift_finding(project, seq, &change, now) {
                Ok(finding) => out.push(Outgoing {
                    identity: project.id.clone(),
                    risk: record,
                    record: Published {
                        episode: seq,
                        finding_id: finding.id.clone(),
                        kind: finding.kind.clone(),
                        opened_at: now,
                        // A change is an event: nothing to resolve later.
                        resolved_at: Some(now),
                    },
                    finding,
                }),
                Err(error) => {
                    tracing::warn!(project = %project.id, seq, %error, "the inventory cannot build a drift finding");
                }
            }
        }
        Ok(())
    }

    /// Records findings that are on the stream.
    pub async fn published(&self, sent: &[Outgoing]) -> Result<(), Error> {
        if sent.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for outgoing in sent {
            batch.put(
                Key::InventoryFinding(&outgoing.identity, &outgoing.risk),
                &outgoing.record,
            );
        }
        self.store.commit(batch).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::added_removed;
    use crate::inventory::FieldChange;

    fn change(from: Value, to: Value) -> Option<(Vec<String>, Vec<String>)> {
        added_removed(&FieldChange { from, to })
    }

    /// Sets say what came and went; other settings, and values that are not sets of names
    /// (whatever a server sent), say nothing beyond their `from` and `to`.
    #[test]
    fn added_and_removed_of_a_set_setting() {
        let names = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect();
        assert_eq!(
            change(
                json!({"mcp": false, "web_search": true}),
                json!({"mcp": true, "web_search": false, "file_search": false})
            ),
            Some((names(&["mcp"]), names(&["web_search"])))
        );
        assert_eq!(
            change(json!(["completions"]), json!(["completions", "images"])),
            Some((names(&["images"]), names(&[])))
        );
        assert_eq!(
            change(json!(["cert_1"]), Value::Null),
            Some((names(&[]), names(&["cert_1"])))
        );
        assert_eq!(
            change(json!("organization_default"), json!("zero_data_retention")),
            None
        );
        assert_eq!(
            change(
                json!({"mode": "allow_list", "model_ids": ["gpt-4o"]}),
                json!({"mode": "deny_list", "model_ids": []})
            ),
            None
        );
        assert_eq!(change(json!([1, 2]), json!(["a"])), None);
        assert_eq!(change(json!({"mcp": "yes"}), json!({"mcp": true})), None);
        assert_eq!(change(Value::Null, Value::Null), None);
    }
}
