//! OCSF records out: what quench did, for the SIEM or data lake that holds the detections. A
//! mutating step's result is a Remediation Activity (7001); a run's outcome is a Detection
//! Finding (2004) update about the finding that started it — Close (Resolved or Suppressed)
//! when the run completed, Update when it failed, was cancelled or only rehearsed (dry run).
//! Both carry the run, the playbook and its version, the approvals that led there and the hash
//! of the audit entry that records the event, under `unmapped.quench`. The records are pure
//! functions of [`RunFacts`]; the runner reads those from its store after the commit.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::VERSION;
use crate::finding::{Finding, ResourceType, Severity};
use crate::redact::redact_value;

/// The OCSF classes quench writes; the last token of the subject `quench.ocsf.<class>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    RemediationActivity,
    DetectionFinding,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::RemediationActivity => "remediation_activity",
            Class::DetectionFinding => "detection_finding",
        }
    }
}

/// One OCSF record, ready to publish on [`Record::subject`].
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub class: Class,
    pub body: Value,
}

impl Record {
    pub fn subject(&self) -> String {
        crate::subject::ocsf(self.class.as_str())
    }
}

/// What quench knows about a run when one of its events is turned into OCSF.
#[derive(Debug, Clone)]
pub struct RunFacts<'a> {
    /// The run event's id (`metadata.uid`).
    pub event_id: &'a str,
    pub run_id: &'a str,
    pub playbook: &'a str,
    /// Content hash of the playbook version the run is pinned to.
    pub playbook_version: &'a str,
    /// SHA-256 (hex) of the audit entry that records the event.
    pub audit_hash: &'a str,
    pub at: DateTime<Utc>,
    /// The finding that started the run; `None` for a scheduled run.
    pub finding: Option<&'a Finding>,
    /// The decisions of the run's approval gates so far, in step order.
    pub approvals: &'a [Approval],
    /// The run only describes its calls.
    pub dry_run: bool,
    /// quench's version (`metadata.product.version`).
    pub product_version: &'a str,
}

/// How an approval gate of the run was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub step: String,
    pub choice: String,
    pub decided_by: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A mutating step's result.
#[derive(Debug, Clone)]
pub struct StepFacts<'a> {
    pub step: &'a str,
    /// The action it used, e.g. `openai.revoke_key`.
    pub action: &'a str,
    /// The idempotency key of its call (`run_id/step/iteration`): `command_uid`.
    pub command: String,
    pub outcome: StepOutcome,
    pub error: Option<&'a str>,
    /// The requests it sent (or would have), as the run records them: never a credential.
    pub requests: &'a [Value],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Succeeded,
    /// The target was already in the state asked for (e.g. the key was already revoked).
    AlreadyDone,
    /// Described, not sent.
    DryRun,
    Failed,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `remediated`: a live mutating step succeeded (or found the change already made).
    Completed {
        remediated: bool,
    },
    Failed {
        step: String,
        error: String,
    },
    Cancelled {
        reason: String,
    },
}

impl RunFacts<'_> {
    /// The Remediation Activity (7001) for a mutating step's result.
    pub fn remediation(&self, step: &StepFacts<'_>) -> Record {
        let (activity_id, activity, technique) = activity(step.action);
        let (status_id, status) = match step.outcome {
            StepOutcome::Succeeded => (1, "Success"),
            StepOutcome::AlreadyDone => (3, "Does Not Exist"),
            StepOutcome::Failed => (2, "Failure"),
            StepOutcome::DryRun => (99, "Dry Run"),
        };
        let target = self.target();
        let mut message = format!(
            "{} {}: {} (quench run {}, playbook {})",
            step.action,
            target.as_deref().unwrap_or("(no resource)"),
            status.to_lowercase(),
            self.run_id,
            self.playbook
        );
        if let Some(error) = step.error {
            message.push_str(": ");
            message.push_str(error);
        }
        let countermeasures: Vec<Value> = technique
            .map(|technique| {
                json!({
                    "d3f_tactic": {"name": activity},
                    "d3f_technique": {"name": technique},
                })
            })
            .into_iter()
            .collect();
        let mut quench = self.quench();
        quench.insert("step".to_owned(), json!(step.step));
        quench.insert("action".to_owned(), json!(step.action));
        if !step.requests.is_empty() {
            quench.insert("requests".to_owned(), json!(step.requests));
        }
        let mut body = json!({
            "category_uid": 7,
            "category_name": "Remediation",
            "class_uid": 7001,
            "class_name": "Remediation Activity",
            "activity_id": activity_id,
            "activity_name": activity,
            "type_uid": 700100 + activity_id,
            "type_name": format!("Remediation Activity: {activity}"),
            "command_uid": step.command,
            "time": self.at.timestamp_millis(),
            "severity_id": self.severity_id(),
            "severity": self.severity_name(),
            "status_id": status_id,
            "status": status,
            "message": message,
            "metadata": self.metadata(),
            "remediation": {"desc": format!("{} ({})", step.action, self.playbook)},
            "unmapped": {"quench": quench},
        });
        if let Some(error) = step.error {
            body["status_detail"] = json!(error);
        }
        if !countermeasures.is_empty() {
            body["countermeasures"] = json!(countermeasures);
        }
        record(Class::RemediationActivity, body)
    }

    /// The Detection Finding (2004) update for a run's outcome, about the finding that started
    /// it (the OCSF `finding_info.uid` it came with, else the quench finding id); `None` for a
    /// scheduled run, which has no finding to update.
    pub fn finding_update(&self, outcome: &Outcome) -> Option<Record> {
        let finding = self.finding?;
        let decided = self
            .approvals
            .iter()
            .map(|a| format!("{}: {} by {}", a.step, a.choice, a.decided_by.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        let (activity_id, activity, status_id, status, detail) = match outcome {
            _ if self.dry_run => (
                2,
                "Update",
                2,
                "In Progress",
                "dry run: quench described its calls and changed nothing".to_owned(),
            ),
            Outcome::Completed { remediated: true } => (
                3,
                "Close",
                4,
                "Resolved",
                format!("remediated by playbook {}", self.playbook),
            ),
            Outcome::Completed { remediated: false } => (
                3,
                "Close",
                3,
                "Suppressed",
                format!("closed by playbook {} without a change", self.playbook),
            ),
            Outcome::Failed { step, error } => (
                2,
                "Update",
                2,
                "In Progress",
                format!("remediation failed at step {step}: {error}"),
            ),
            Outcome::Cancelled { reason } => (
                2,
                "Update",
                99,
                "Cancelled",
                format!("remediation cancelled: {reason}"),
            ),
        };
        let detail = if decided.is_empty() {
            detail
        } else {
            format!("{detail} ({decided})")
        };
        let uid = finding
            .evidence
            .get("ocsf")
            .and_then(|ocsf| ocsf.get("finding_uid"))
            .and_then(Value::as_str)
            .unwrap_or(&finding.id);
        let mut quench = self.quench();
        quench.insert(
            "outcome".to_owned(),
            json!(match outcome {
                Outcome::Completed { .. } => "completed",
                Outcome::Failed { .. } => "failed",
                Outcome::Cancelled { .. } => "cancelled",
            }),
        );
        let body = json!({
            "category_uid": 2,
            "category_name": "Findings",
            "class_uid": 2004,
            "class_name": "Detection Finding",
            "activity_id": activity_id,
            "activity_name": activity,
            "type_uid": 200400 + activity_id,
            "type_name": format!("Detection Finding: {activity}"),
            "time": self.at.timestamp_millis(),
            "severity_id": self.severity_id(),
            "severity": self.severity_name(),
            "status_id": status_id,
            "status": status,
            "status_detail": detail,
            "message": format!("{}: {detail}", finding.title),
            "metadata": self.metadata(),
            "finding_info": {
                "uid": uid,
                "title": finding.title,
                "types": [finding.kind],
                "created_time": finding.detected_at.timestamp_millis(),
            },
            "resources": [resource(finding)],
            "remediation": {"desc": format!("quench playbook {} (run {})", self.playbook, self.run_id)},
            "unmapped": {"quench": quench},
        });
        Some(record(Class::DetectionFinding, body))
    }

    /// `resource.id` of the finding, for messages.
    fn target(&self) -> Option<String> {
        self.finding.map(|finding| finding.resource.id.clone())
    }

    fn severity_id(&self) -> u8 {
        match self.finding.map(|finding| finding.severity) {
            None => 0,
            Some(Severity::Info) => 1,
            Some(Severity::Low) => 2,
            Some(Severity::Medium) => 3,
            Some(Severity::High) => 4,
            Some(Severity::Critical) => 5,
        }
    }

    fn severity_name(&self) -> &'static str {
        match self.severity_id() {
            1 => "Informational",
            2 => "Low",
            3 => "Medium",
            4 => "High",
            5 => "Critical",
            _ => "Unknown",
        }
    }

    fn metadata(&self) -> Value {
        json!({
            "version": VERSION,
            "uid": self.event_id,
            "correlation_uid": self.run_id,
            "log_name": "quench.ocsf",
            "product": {
                "name": "quench",
                "vendor_name": "quench",
                "version": self.product_version,
            },
        })
    }

    /// What OCSF has no attribute for: the run, its playbook version, the approvals and the
    /// audit hash.
    fn quench(&self) -> serde_json::Map<String, Value> {
        let mut quench = serde_json::Map::new();
        quench.insert("run_id".to_owned(), json!(self.run_id));
        quench.insert("playbook".to_owned(), json!(self.playbook));
        quench.insert("playbook_version".to_owned(), json!(self.playbook_version));
        quench.insert("audit_hash".to_owned(), json!(self.audit_hash));
        quench.insert("approvals".to_owned(), json!(self.approvals));
        quench.insert("dry_run".to_owned(), json!(self.dry_run));
        if let Some(finding) = self.finding {
            quench.insert("finding_id".to_owned(), json!(finding.id));
            quench.insert("finding_key".to_owned(), json!(finding.key));
            quench.insert("finding_kind".to_owned(), json!(finding.kind));
        }
        quench
    }
}

/// The record, with anything key-shaped redacted (findings are redacted on entry; this covers
/// step errors and requests as well).
fn record(class: Class, mut body: Value) -> Record {
    redact_value(&mut body);
    Record { class, body }
}

/// The remediation activity an action is (a D3FEND tactic), with the technique when one names
/// it exactly.
fn activity(action: &str) -> (u32, &'static str, Option<&'static str>) {
    match action {
        "openai.revoke_key" | "openai.delete_admin_key" => {
            (2, "Evict", Some("Credential Revoking"))
        }
        "openai.delete_service_account" | "openai.remove_project_user" => {
            (2, "Evict", Some("Account Locking"))
        }
        "openai.rotate_service_account_key" => (4, "Harden", Some("Credential Rotation")),
        "openai.set_key_scopes"
        | "openai.set_key_expiry"
        | "openai.set_project_user_role"
        | "openai.set_model_permissions"
        | "openai.set_hosted_tools"
        | "openai.set_spend_limit"
        | "openai.limit_project_rate" => (4, "Harden", None),
        "openai.archive_project" => (1, "Isolate", None),
        _ => (99, "Other", None),
    }
}

/// The finding's resource as an OCSF `resource_details`.
fn resource(finding: &Finding) -> Value {
    let resource = &finding.resource;
    let kind = match resource.kind {
        ResourceType::ApiKey => "api_key",
        ResourceType::AdminKey => "admin_key",
        ResourceType::ServiceAccount => "service_account",
        ResourceType::Project => "project",
        ResourceType::User => "user",
        ResourceType::Integration => "integration",
        ResourceType::Secret => "secret",
    };
    let mut details = json!({
        "uid": resource.id,
        "type": format!("{} {kind}", resource.provider),
    });
    if let Some(name) = &resource.name {
        details["name"] = json!(name);
    }
    if let Some(project) = &resource.project_id {
        details["group"] = json!({"uid": project, "type": "project"});
    }
    details
}
