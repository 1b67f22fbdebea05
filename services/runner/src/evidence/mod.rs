//! Evidence packs for auditors: what quench did about non-human credentials over a period,
//! read from what it already records, and signed so it can be checked away from quench.
//!
//! [`build`] reads the audit log (the hash-chained record; runs are purged after
//! `store.retain_ended`, the log is not) into a [`Document`]: findings with their time to first
//! action and to resolution and per-severity median and p90 (`percentile`), every live mutating
//! call with its approvers, channel and the request sent, the policy exceptions (a gate answered
//! without a remediation following), the inventory and campaigns from [`EvidenceSources`], and
//! the chain's head, verification and the sequence range the period covers (`collect`). `render`
//! turns the document into CSV tables and one HTML report; `pack` writes the files with a
//! manifest of their SHA-256 signed with Ed25519, and verifies a pack: signature, every file,
//! the internal consistency, and optionally the pack against the audit chain.
//!
//! Every row names the audit entries it comes from (`seq`), so an auditor can find each one in
//! the chain (`quench audit list`, or an exported segment).

mod collect;
mod estate;
mod pack;
mod percentile;
mod render;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use estate::Estate;
pub use pack::{
    Check, Format, MANIFEST, Manifest, PackFile, SIGNATURE, Signed, Signer, Verified,
    against_chain, public_key, verify, write_pack,
};
pub use percentile::percentile;
pub use render::SECTIONS;

/// The schema of `evidence.json`.
pub const SCHEMA: &str = "quench.evidence/v1";

/// A problem making a pack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// An [`EvidenceSources`] implementation failed.
    #[error("cannot read the {section}: {message}")]
    Source {
        section: &'static str,
        message: String,
    },
    #[error("the period is empty: `from` ({from}) must come before `to` ({to})")]
    EmptyPeriod {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// `[evidence] signing_key_file` is not set, unreadable or not an Ed25519 key.
    #[error("{0}")]
    Key(String),
    #[error("cannot encode the pack: {0}")]
    Encode(String),
}

/// The period a pack covers: `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Period {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Period, Error> {
        if from >= to {
            return Err(Error::EmptyPeriod { from, to });
        }
        Ok(Period { from, to })
    }

    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && at < self.to
    }
}

/// Parses a period bound as the CLI takes it: RFC 3339, or a date (`2026-03-31`, UTC). A date
/// given as the end means the end of that day, so `--from 2026-01-01 --to 2026-03-31` is the
/// whole first quarter.
pub fn parse_bound(text: &str, end: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        format!(
            "{text:?} is neither a date (2026-03-31) nor an RFC 3339 time (2026-03-31T12:00:00Z)"
        )
    })?;
    let date = if end {
        date.succ_opt()
            .ok_or_else(|| format!("{text:?} is the last day chrono knows"))?
    } else {
        date
    };
    Ok(date
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc())
}

/// The canonical form of a pack (`evidence.json`); CSV and HTML are renderings of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub schema: String,
    pub period: Period,
    pub generated_at: DateTime<Utc>,
    /// Who asked for it (the API token's name).
    pub generated_by: String,
    pub summary: Summary,
    pub findings: Vec<FindingRow>,
    /// Per severity, most severe first.
    pub timing: Vec<TimingRow>,
    pub actions: Vec<ActionRow>,
    pub exceptions: Vec<ExceptionRow>,
    pub inventory: Section<InventoryRow>,
    pub campaigns: Section<CampaignRow>,
    pub attestations: Section<AttestationRow>,
    pub chain: Chain,
}

/// Row counts of every section (checked against the sections by `quench evidence verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub findings: usize,
    /// Findings with a first action by the period's end.
    pub acted: usize,
    /// Findings resolved by the period's end.
    pub resolved: usize,
    pub actions: usize,
    /// Mutating calls described by dry runs (nothing was sent): not in `actions`.
    pub dry_run_calls: usize,
    pub exceptions: usize,
    pub inventory: usize,
    pub campaigns: usize,
    pub attestations: usize,
}

/// A finding received in the period (a report of a problem, not a `resolved` notice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingRow {
    pub id: String,
    pub kind: String,
    pub key: String,
    pub severity: String,
    /// The scanner that reported it.
    pub source: String,
    pub received_at: DateTime<Utc>,
    /// Its `finding_received` audit entry.
    pub seq: u64,
    /// The runs it started or joined.
    pub runs: Vec<String>,
    pub first_action: Option<Milestone>,
    pub resolution: Option<Milestone>,
}

/// When something happened to a finding, what, and the audit entry that says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    pub at: DateTime<Utc>,
    /// From the finding's receipt to `at`.
    pub after_ms: i64,
    pub what: String,
    pub seq: u64,
}

/// Median and p90 (nearest rank) of the times of one severity's findings, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimingRow {
    pub severity: String,
    pub findings: usize,
    pub acted: usize,
    pub resolved: usize,
    pub first_action_median_ms: Option<i64>,
    pub first_action_p90_ms: Option<i64>,
    pub resolution_median_ms: Option<i64>,
    pub resolution_p90_ms: Option<i64>,
}

/// A live call of a mutating action (one per idempotency key, however often it was executed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRow {
    /// When its intent was committed (the request goes out right after).
    pub at: DateTime<Utc>,
    /// Its first `step_intent` audit entry.
    pub seq: u64,
    pub run_id: String,
    pub playbook: String,
    pub step: String,
    pub action: String,
    pub idempotency_key: String,
    /// The finding of the run, if any.
    pub finding: Option<String>,
    pub key: Option<String>,
    /// The request as the connector describes it (method and path, URL; never a credential).
    pub request: serde_json::Value,
    /// The rendered input (redacted as every pack).
    pub input: serde_json::Value,
    /// `slack`, `api`, `cli`, `console` (as the answer came), `timeout` (a gate's default), or
    /// `automatic` (no gate before it in its run).
    pub channel: String,
    /// The gate answer that led to it: the choice and who made it.
    pub choice: Option<String>,
    pub approvers: Vec<Approver>,
    /// `succeeded`, `already_done`, `failed`, or `pending` (no result by the period's end).
    pub result: String,
    pub result_at: Option<DateTime<Utc>>,
    pub result_seq: Option<u64>,
    pub error: Option<String>,
    pub executions: u64,
}

/// One accepted answer to a gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    pub id: String,
    pub name: Option<String>,
    pub via: String,
    pub choice: String,
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
    pub seq: u64,
}

/// A gate decided in the period after which its run sent no mutating call: a risk that was
/// kept (or a remediation denied), with who decided and the reason they gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRow {
    pub decided_at: DateTime<Utc>,
    /// The `decided` audit entry.
    pub seq: u64,
    pub run_id: String,
    pub playbook: String,
    pub step: String,
    pub finding: Option<String>,
    pub kind: Option<String>,
    pub key: Option<String>,
    pub severity: Option<String>,
    pub choice: String,
    pub decided_by: Vec<String>,
    pub channel: String,
    /// The comments of the answers that made the decision (Slack buttons carry none: the
    /// choice is then the only stated reason).
    pub reason: Option<String>,
    pub approvers: Vec<Approver>,
    /// The run's state at the period's end (`running`, `waiting`, `completed`, …).
    pub run_status: String,
}

/// A section that comes from [`EvidenceSources`]: `recorded: false` with a note when quench
/// has nothing of the kind (an estate inventory that is not kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section<T> {
    pub recorded: bool,
    pub note: Option<String>,
    pub rows: Vec<T>,
}

impl<T> Section<T> {
    fn from_source(source: Option<Vec<T>>, none: &str) -> Section<T> {
        match source {
            Some(rows) => Section {
                recorded: true,
                note: None,
                rows,
            },
            None => Section {
                recorded: false,
                note: Some(none.to_owned()),
                rows: Vec::new(),
            },
        }
    }
}

/// One identity of the estate inventory at the period's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRow {
    /// e.g. `project_key:key_abc`, `service_account:svc_1`, `admin_key:key_x`.
    pub id: String,
    pub kind: String,
    pub project: Option<String>,
    pub name: Option<String>,
    pub owner: Option<String>,
    /// Which link of the owner chain answered (`finding`, `key_owner`, `config`, …).
    pub owner_source: Option<String>,
    pub purpose: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when the identity no longer exists.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Derived risks, each with the fact it comes from.
    pub risks: Vec<String>,
}

/// An attestation campaign (access review) active in the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRow {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub started_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// What an unanswered identity gets at the deadline.
    pub default_answer: Option<String>,
    pub answered: usize,
    pub pending: usize,
    pub defaulted: usize,
}

/// One answer (or default) of a campaign about one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationRow {
    pub campaign: String,
    pub identity: String,
    pub owner: Option<String>,
    /// `keep`, `narrow`, `revoke`, `not_mine`, or `defaulted:<answer>`.
    pub answer: String,
    pub purpose: Option<String>,
    pub by: Option<String>,
    pub via: Option<String>,
    pub at: DateTime<Utc>,
    /// The audit entry of the answer.
    pub seq: Option<u64>,
}

/// The inventory and campaigns, which the estate code keeps: implemented there, read here.
/// `Ok(None)` means nothing of the kind is recorded (the section says so).
pub trait EvidenceSources: Send + Sync + std::fmt::Debug {
    /// Every identity as it stood at `at` (the period's end), deleted ones with when.
    fn inventory_at(&self, at: DateTime<Utc>) -> Result<Option<Vec<InventoryRow>>, String>;
    /// Campaigns active in the period, and every attestation made in it.
    #[expect(clippy::type_complexity, reason = "two lists, read together")]
    fn campaigns(
        &self,
        period: Period,
    ) -> Result<Option<(Vec<CampaignRow>, Vec<AttestationRow>)>, String>;
}

/// No estate inventory or campaigns are kept: the sections say so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NothingRecorded;

impl EvidenceSources for NothingRecorded {
    fn inventory_at(&self, _: DateTime<Utc>) -> Result<Option<Vec<InventoryRow>>, String> {
        Ok(None)
    }

    fn campaigns(
        &self,
        _: Period,
    ) -> Result<Option<(Vec<CampaignRow>, Vec<AttestationRow>)>, String> {
        Ok(None)
    }
}

/// The audit chain as the pack saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The whole stored chain verified when the pack was made (`quench audit verify`).
    pub verified: bool,
    /// The last entry that verified, and its hash: the head when `verified`.
    pub head_seq: u64,
    pub head: String,
    pub first_bad: Option<u64>,
    pub reason: Option<String>,
    /// Entries through this one were pruned after export (0: none).
    pub checkpoint: u64,
    /// Whether the stored log covers the whole period (no entry of it was pruned).
    pub complete: bool,
    /// The entries the period covers (by their time): the first and last, the hash the first
    /// follows and the last one's hash. Absent when no entry falls in the period.
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub first_prev: Option<String>,
    pub last_hash: Option<String>,
    /// Entries of the period.
    pub entries: u64,
}

/// Makes the document for `period` from the store's audit log and `sources`, as of `now`, for
/// `by`. Reads the whole log twice (once to verify it): run it off the async threads.
pub fn build(
    store: &crate::store::Store,
    sources: &dyn EvidenceSources,
    period: Period,
    now: DateTime<Utc>,
    by: &str,
) -> Result<Document, Error> {
    let verification = store.verify_audit()?;
    let (checkpoint, _) = store.audit_checkpoint()?;
    let collected = collect::collect(store, period)?;
    let inventory = sources
        .inventory_at(period.to.min(now))
        .map_err(|message| Error::Source {
            section: "inventory",
            message,
        })?;
    let campaigns = sources.campaigns(period).map_err(|message| Error::Source {
        section: "campaigns",
        message,
    })?;
    let (campaigns, attestations) = match campaigns {
        Some((campaigns, attestations)) => (Some(campaigns), Some(attestations)),
        None => (None, None),
    };
    let chain = Chain {
        verified: verification.first_bad.is_none(),
        head_seq: verification.entries,
        head: verification.head,
        first_bad: verification.first_bad.as_ref().map(|(seq, _)| *seq),
        reason: verification.first_bad.map(|(_, why)| why),
        checkpoint,
        complete: checkpoint == 0 || collected.oldest_stored.is_some_and(|at| at < period.from),
        first: collected.range.as_ref().map(|range| range.first),
        last: collected.range.as_ref().map(|range| range.last),
        first_prev: collected
            .range
            .as_ref()
            .map(|range| range.first_prev.clone()),
        last_hash: collected
            .range
            .as_ref()
            .map(|range| range.last_hash.clone()),
        entries: collected.range.as_ref().map_or(0, |range| range.entries),
    };
    let mut document = Document {
        schema: SCHEMA.to_owned(),
        period,
        generated_at: now,
        generated_by: by.to_owned(),
        summary: Summary::default(),
        timing: collect::timing(&collected.findings),
        findings: collected.findings,
        actions: collected.actions,
        exceptions: collected.exceptions,
        inventory: Section::from_source(
            inventory,
            "no inventory recorded: quench keeps no estate inventory in this store",
        ),
        campaigns: Section::from_source(
            campaigns,
            "no campaigns recorded: no attestation campaign ran in this store",
        ),
        attestations: Section::from_source(
            attestations,
            "no attestations recorded: no attestation campaign ran in this store",
        ),
        chain,
    };
    document.summary = Summary {
        findings: document.findings.len(),
        acted: document
            .findings
            .iter()
            .filter(|finding| finding.first_action.is_some())
            .count(),
        resolved: document
            .findings
            .iter()
            .filter(|finding| finding.resolution.is_some())
            .count(),
        actions: document.actions.len(),
        dry_run_calls: collected.dry_run_calls,
        exceptions: document.exceptions.len(),
        inventory: document.inventory.rows.len(),
        campaigns: document.campaigns.rows.len(),
        attestations: document.attestations.rows.len(),
    };
    redacted(document)
}

/// The document with every secret-shaped string redacted, as everywhere quench shows what it
/// recorded (the store holds none; this is defence in depth, and it happens before signing, so
/// the API's own redaction of answers never changes a signed byte).
fn redacted(document: Document) -> Result<Document, Error> {
    let mut value =
        serde_json::to_value(&document).map_err(|error| Error::Encode(error.to_string()))?;
    if quench_proto::redact_value(&mut value) == 0 {
        return Ok(document);
    }
    serde_json::from_value(value).map_err(|error| Error::Encode(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_dates_or_times() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .expect("a valid time")
                .with_timezone(&Utc)
        };
        assert_eq!(
            parse_bound("2026-01-01", false),
            Ok(at("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            parse_bound("2026-03-31", true),
            Ok(at("2026-04-01T00:00:00Z"))
        );
        assert_eq!(
            parse_bound("2026-03-31T12:00:00+02:00", true),
            Ok(at("2026-03-31T10:00:00Z"))
        );
        assert!(
            parse_bound("31/03/2026", false)
                .expect_err("not a date")
                .contains("31/03/2026")
        );
        assert!(Period::new(at("2026-01-02T00:00:00Z"), at("2026-01-01T00:00:00Z")).is_err());
    }
}
