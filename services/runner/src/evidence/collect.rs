//! From the audit log to the pack's sections, in one pass over the stored entries in chain
//! order, up to the period's end (a pack shows the state as at its end, so a pack made again
//! later for the same period has the same rows).
//!
//! What the entries say, and what is derived from them:
//! - a finding is a `finding_received` that is not a `resolved` notice; its runs are those whose
//!   `run_started` or `finding_attached` names it;
//! - its first action is the first accepted gate answer (`decision`, allowed) or live call of a
//!   mutating action (`step_intent`) in one of its runs;
//! - it is resolved when every one of its runs has completed (`run_completed`), or when a
//!   `resolved` finding with its key arrives, whichever is first;
//! - an action is a live call of a mutating action (its first `step_intent`, its last
//!   `step_result`), approved by the gate its run decided last before it (`decided`, with the
//!   accepted `decision`s that made it);
//! - an exception is a gate decided in the period after which its run sent no mutating call.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{ActionRow, Approver, ExceptionRow, FindingRow, Milestone, Period, TimingRow};
use crate::store::{AuditEntry, Store, parse_stored};

/// Severities, most severe first, as findings spell them.
const SEVERITIES: [&str; 5] = ["critical", "high", "medium", "low", "info"];

pub(super) struct Collected {
    pub(super) findings: Vec<FindingRow>,
    pub(super) actions: Vec<ActionRow>,
    pub(super) exceptions: Vec<ExceptionRow>,
    pub(super) dry_run_calls: usize,
    pub(super) range: Option<Range>,
    /// The time of the oldest stored entry (after a prune, what the log still covers).
    pub(super) oldest_stored: Option<DateTime<Utc>>,
}

/// The entries of the period.
#[derive(Debug, Clone)]
pub(super) struct Range {
    pub(super) first: u64,
    pub(super) first_prev: String,
    pub(super) last: u64,
    pub(super) last_hash: String,
    pub(super) entries: u64,
}

/// A finding, whatever its time (runs of the period may be about older ones).
#[derive(Debug, Clone)]
struct Reported {
    kind: String,
    key: String,
    severity: String,
}

#[derive(Debug, Default)]
struct RunInfo {
    playbook: String,
    finding: Option<String>,
    key: Option<String>,
    /// Findings the run is about (its own and attached ones).
    findings: Vec<String>,
    status: Option<&'static str>,
    /// Accepted answers per gate step, in order.
    answers: HashMap<String, Vec<Approver>>,
    /// The last gate decided: (step, choice, decided_by, via, seq).
    decided: Option<Decided>,
    /// Gates decided in the period with no mutating call after them yet (indexes into
    /// `exceptions`).
    open_exceptions: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Decided {
    step: String,
    choice: String,
    decided_by: Vec<String>,
    via: String,
}

impl Decided {
    fn approvers(&self, run: &RunInfo) -> Vec<Approver> {
        run.answers
            .get(&self.step)
            .map(|answers| {
                answers
                    .iter()
                    .filter(|answer| answer.choice == self.choice)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn text(value: &Value, field: &str) -> Option<String> {
    value.get(field).and_then(Value::as_str).map(str::to_owned)
}

fn milestone(received: DateTime<Utc>, at: DateTime<Utc>, what: String, seq: u64) -> Milestone {
    Milestone {
        at,
        after_ms: (at - received).num_milliseconds(),
        what,
        seq,
    }
}

fn is_mutating(action: &str) -> bool {
    crate::actions::lookup(action).is_some_and(|spec| spec.mutates)
}

/// Who an entry's actor is: `{via, id, name}`.
fn approver(entry: &AuditEntry) -> Approver {
    let actor = entry.actor.clone().unwrap_or(Value::Null);
    Approver {
        id: text(&actor, "id").unwrap_or_else(|| "unknown".to_owned()),
        name: text(&actor, "name"),
        via: text(&actor, "via").unwrap_or_else(|| "unknown".to_owned()),
        choice: text(&entry.detail, "choice").unwrap_or_default(),
        comment: text(&entry.detail, "comment"),
        at: entry.at,
        seq: entry.seq,
    }
}

pub(super) fn collect(store: &Store, period: Period) -> Result<Collected, crate::store::Error> {
    let mut reported: HashMap<String, Reported> = HashMap::new();
    let mut findings: Vec<FindingRow> = Vec::new();
    let mut finding_index: HashMap<String, usize> = HashMap::new();
    // Open findings of the period by key, for `resolved` notices.
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    let mut runs: HashMap<String, RunInfo> = HashMap::new();
    let mut actions: Vec<ActionRow> = Vec::new();
    let mut action_index: HashMap<String, usize> = HashMap::new();
    let mut exceptions: Vec<ExceptionRow> = Vec::new();
    let mut dry_run_calls = 0;
    let mut range: Option<Range> = None;
    let mut oldest_stored = None;

    for item in store.audit_entries() {
        let (_, stored) = item?;
        let Some((hash, _, entry)) = parse_stored(&stored) else {
            // An unreadable entry: the chain's verification names it.
            continue;
        };
        oldest_stored.get_or_insert(entry.at);
        if entry.at >= period.to {
            continue;
        }
        let in_period = period.contains(entry.at);
        if in_period {
            match &mut range {
                None => {
                    range = Some(Range {
                        first: entry.seq,
                        first_prev: entry.prev.clone(),
                        last: entry.seq,
                        last_hash: hash.clone(),
                        entries: 1,
                    })
                }
                Some(range) => {
                    range.last = entry.seq;
                    range.last_hash = hash.clone();
                    range.entries += 1;
                }
            }
        }
        let run_id = entry.run_id.clone();
        let step = entry.step.clone().unwrap_or_default();
        match entry.kind.as_str() {
            "finding_received" => {
                let detail = &entry.detail;
                let (Some(id), Some(key)) = (text(detail, "id"), text(detail, "key")) else {
                    continue;
                };
                let severity = text(detail, "severity").unwrap_or_default();
                let kind = text(detail, "kind").unwrap_or_default();
                if text(detail, "status").as_deref() == Some("resolved") {
                    for index in by_key.remove(&key).unwrap_or_default() {
                        let finding = &mut findings[index];
                        if finding.resolution.is_none() {
                            finding.resolution = Some(milestone(
                                finding.received_at,
                                entry.at,
                                format!("resolved: the scanner reported it resolved ({id})"),
                                entry.seq,
                            ));
                        }
                    }
                    continue;
                }
                reported.insert(
                    id.clone(),
                    Reported {
                        kind: kind.clone(),
                        key: key.clone(),
                        severity: severity.clone(),
                    },
                );
                if in_period && !finding_index.contains_key(&id) {
                    finding_index.insert(id.clone(), findings.len());
                    by_key.entry(key.clone()).or_default().push(findings.len());
                    findings.push(FindingRow {
                        id,
                        kind,
                        key,
                        severity,
                        source: entry
                            .detail
                            .get("source")
                            .and_then(|source| source.get("scanner"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        received_at: entry.at,
                        seq: entry.seq,
                        runs: Vec::new(),
                        first_action: None,
                        resolution: None,
                    });
                }
            }
            "run_started" => {
                let Some(run_id) = run_id else { continue };
                let finding = text(&entry.detail, "finding");
                let run = runs.entry(run_id.clone()).or_default();
                run.playbook = entry.playbook.clone().unwrap_or_default();
                run.key = text(&entry.detail, "key");
                run.status = Some("running");
                if let Some(finding) = &finding {
                    run.findings.push(finding.clone());
                    if let Some(index) = finding_index.get(finding) {
                        findings[*index].runs.push(run_id.clone());
                    }
                }
                run.finding = finding;
            }
            "finding_attached" => {
                let (Some(run_id), Some(finding)) = (run_id, text(&entry.detail, "finding")) else {
                    continue;
                };
                let run = runs.entry(run_id.clone()).or_default();
                run.findings.push(finding.clone());
                if let Some(index) = finding_index.get(&finding) {
                    findings[*index].runs.push(run_id);
                }
            }
            "decision" => {
                let Some(run_id) = run_id else { continue };
                if entry.allowed != Some(true) || entry.detail.get("refused").is_some() {
                    continue;
                }
                let answer = approver(&entry);
                let what = format!("{} answered {} ({})", answer.id, answer.choice, answer.via);
                let Some(run) = runs.get_mut(&run_id) else {
                    continue;
                };
                run.answers.entry(step).or_default().push(answer);
                first_action(&mut findings, &finding_index, run, &entry, what);
            }
            "waiting" | "run_cancel_requested" => {
                if let Some(run) = run_id.and_then(|id| runs.get_mut(&id)) {
                    run.status = Some(if entry.kind == "waiting" {
                        "waiting"
                    } else {
                        "cancelling"
                    });
                }
            }
            "decided" => {
                let Some(run) = run_id.as_ref().and_then(|id| runs.get_mut(id)) else {
                    continue;
                };
                let decided = Decided {
                    step: step.clone(),
                    choice: text(&entry.detail, "choice").unwrap_or_default(),
                    decided_by: entry
                        .detail
                        .get("decided_by")
                        .and_then(Value::as_array)
                        .map(|by| {
                            by.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                    via: text(&entry.detail, "via").unwrap_or_default(),
                };
                run.status = Some("running");
                if in_period && run.finding.is_some() {
                    let reported = run.finding.as_ref().and_then(|id| reported.get(id));
                    let reason: Vec<String> = decided
                        .approvers(run)
                        .iter()
                        .filter_map(|answer| answer.comment.clone())
                        .filter(|comment| !comment.is_empty())
                        .collect();
                    run.open_exceptions.push(exceptions.len());
                    exceptions.push(ExceptionRow {
                        decided_at: entry.at,
                        seq: entry.seq,
                        run_id: run_id.clone().unwrap_or_default(),
                        playbook: run.playbook.clone(),
                        step,
                        finding: run.finding.clone(),
                        kind: reported.map(|finding| finding.kind.clone()),
                        key: reported
                            .map(|finding| finding.key.clone())
                            .or(run.key.clone()),
                        severity: reported.map(|finding| finding.severity.clone()),
                        choice: decided.choice.clone(),
                        decided_by: decided.decided_by.clone(),
                        channel: decided.via.clone(),
                        reason: (!reason.is_empty()).then(|| reason.join("; ")),
                        approvers: decided.approvers(run),
                        run_status: String::new(),
                    });
                }
                run.decided = Some(decided);
            }
            "step_dry_run" => {
                let action = text(&entry.detail, "action").unwrap_or_default();
                if !is_mutating(&action) {
                    continue;
                }
                if let Some(run) = run_id.and_then(|id| runs.get_mut(&id)) {
                    // It would have remediated: the decision before it was no exception.
                    run.open_exceptions.clear();
                }
                if in_period {
                    dry_run_calls += 1;
                }
            }
            "step_intent" => {
                let action = text(&entry.detail, "action").unwrap_or_default();
                let Some(key) = text(&entry.detail, "idempotency_key") else {
                    continue;
                };
                if !is_mutating(&action) {
                    continue;
                }
                let Some(run_id) = run_id else { continue };
                if let Some(index) = action_index.get(&key) {
                    actions[*index].executions += 1;
                    continue;
                }
                let Some(run) = runs.get_mut(&run_id) else {
                    continue;
                };
                run.open_exceptions.clear();
                first_action(
                    &mut findings,
                    &finding_index,
                    run,
                    &entry,
                    format!("{action} sent"),
                );
                if !in_period {
                    continue;
                }
                let (channel, choice, approvers) = match &run.decided {
                    Some(decided) => (
                        decided.via.clone(),
                        Some(decided.choice.clone()),
                        decided.approvers(run),
                    ),
                    None => ("automatic".to_owned(), None, Vec::new()),
                };
                action_index.insert(key.clone(), actions.len());
                actions.push(ActionRow {
                    at: entry.at,
                    seq: entry.seq,
                    run_id,
                    playbook: run.playbook.clone(),
                    step,
                    action,
                    idempotency_key: key,
                    finding: run.finding.clone(),
                    key: run.key.clone(),
                    request: entry.detail.get("request").cloned().unwrap_or(Value::Null),
                    input: entry.detail.get("input").cloned().unwrap_or(Value::Null),
                    channel,
                    choice,
                    approvers,
                    result: "pending".to_owned(),
                    result_at: None,
                    result_seq: None,
                    error: None,
                    executions: 1,
                });
            }
            "step_result" => {
                let Some(index) = text(&entry.detail, "idempotency_key")
                    .and_then(|key| action_index.get(&key).copied())
                else {
                    continue;
                };
                let action = &mut actions[index];
                action.result = text(&entry.detail, "status").unwrap_or_default();
                action.result_at = Some(entry.at);
                action.result_seq = Some(entry.seq);
                action.error = entry
                    .detail
                    .get("detail")
                    .and_then(|detail| text(detail, "error"));
            }
            "run_completed" | "run_failed" | "run_cancelled" => {
                let Some(run_id) = run_id else { continue };
                let status = match entry.kind.as_str() {
                    "run_completed" => "completed",
                    "run_failed" => "failed",
                    _ => "cancelled",
                };
                let Some(run) = runs.get_mut(&run_id) else {
                    continue;
                };
                run.status = Some(status);
                if status == "completed" {
                    resolve(&mut findings, &finding_index, &runs, &run_id, &entry);
                }
            }
            // A restarted run is running again: its outcome is whatever it ends with next.
            "run_restarted" => {
                if let Some(run) = run_id.and_then(|run_id| runs.get_mut(&run_id)) {
                    run.status = None;
                }
            }
            _ => {}
        }
    }
    for run in runs.values() {
        for index in &run.open_exceptions {
            exceptions[*index].run_status = run.status.unwrap_or("unknown").to_owned();
        }
    }
    let kept: std::collections::HashSet<usize> = runs
        .values()
        .flat_map(|run| run.open_exceptions.iter().copied())
        .collect();
    let mut exceptions: Vec<ExceptionRow> = exceptions
        .into_iter()
        .enumerate()
        .filter(|(index, _)| kept.contains(index))
        .map(|(_, row)| row)
        .collect();
    exceptions.sort_by_key(|row| row.seq);
    Ok(Collected {
        findings,
        actions,
        exceptions,
        dry_run_calls,
        range,
        oldest_stored,
    })
}

/// Records `entry` as the first action of the run's findings that have none yet.
fn first_action(
    findings: &mut [FindingRow],
    index: &HashMap<String, usize>,
    run: &RunInfo,
    entry: &AuditEntry,
    what: String,
) {
    for id in &run.findings {
        let Some(finding) = index.get(id).map(|at| &mut findings[*at]) else {
            continue;
        };
        if finding.first_action.is_none() && entry.at >= finding.received_at {
            finding.first_action = Some(milestone(
                finding.received_at,
                entry.at,
                what.clone(),
                entry.seq,
            ));
        }
    }
}

/// A run completed: its findings whose runs have all completed are resolved now.
fn resolve(
    findings: &mut [FindingRow],
    index: &HashMap<String, usize>,
    runs: &HashMap<String, RunInfo>,
    run_id: &str,
    entry: &AuditEntry,
) {
    let Some(run) = runs.get(run_id) else { return };
    for id in &run.findings {
        let Some(finding) = index.get(id).map(|at| &mut findings[*at]) else {
            continue;
        };
        let all_completed = finding.runs.iter().all(|run| {
            runs.get(run)
                .is_some_and(|run| run.status == Some("completed"))
        });
        if finding.resolution.is_none() && all_completed {
            let playbooks: Vec<&str> = finding
                .runs
                .iter()
                .filter_map(|run| runs.get(run).map(|run| run.playbook.as_str()))
                .collect();
            finding.resolution = Some(milestone(
                finding.received_at,
                entry.at,
                format!("completed: {}", playbooks.join(", ")),
                entry.seq,
            ));
        }
    }
}

/// Per severity, most severe first: counts, median and p90 of both times.
pub(super) fn timing(findings: &[FindingRow]) -> Vec<TimingRow> {
    let mut by_severity: BTreeMap<usize, (String, Vec<&FindingRow>)> = BTreeMap::new();
    for finding in findings {
        let rank = SEVERITIES
            .iter()
            .position(|severity| *severity == finding.severity)
            .unwrap_or(SEVERITIES.len());
        by_severity
            .entry(rank)
            .or_insert_with(|| (finding.severity.clone(), Vec::new()))
            .1
            .push(finding);
    }
    for (rank, severity) in SEVERITIES.iter().enumerate() {
        by_severity
            .entry(rank)
            .or_insert_with(|| ((*severity).to_owned(), Vec::new()));
    }
    by_severity
        .into_values()
        .map(|(severity, findings)| {
            let first: Vec<i64> = findings
                .iter()
                .filter_map(|finding| finding.first_action.as_ref().map(|at| at.after_ms))
                .collect();
            let resolved: Vec<i64> = findings
                .iter()
                .filter_map(|finding| finding.resolution.as_ref().map(|at| at.after_ms))
                .collect();
            TimingRow {
                severity,
                findings: findings.len(),
                acted: first.len(),
                resolved: resolved.len(),
                first_action_median_ms: super::percentile(&first, 50),
                first_action_p90_ms: super::percentile(&first, 90),
                resolution_median_ms: super::percentile(&resolved, 50),
                resolution_p90_ms: super::percentile(&resolved, 90),
            }
        })
        .collect()
}
