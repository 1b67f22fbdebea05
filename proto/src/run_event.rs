//! `RunEvent` v1: what happened to a run, published to `quench.events.<playbook>.<kind>` after
//! the change is committed, for SIEMs and other systems. Each event names the audit entry that
//! records it, so a consumer can check it against `quench audit verify`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunEventSchema {
    #[default]
    #[serde(rename = "quench.run_event/v1")]
    V1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "quench run event v1")]
pub struct RunEvent {
    pub schema: RunEventSchema,
    /// The event's id, also its `Nats-Msg-Id`: derived from the audit entry that records the
    /// event, so an event published again (after a crash or an outage) has the same id.
    pub id: String,
    pub kind: RunEventKind,
    pub run_id: String,
    pub playbook: String,
    /// Content hash of the playbook version the run is pinned to.
    pub playbook_version: String,
    /// The run's key (the finding key, or the schedule's key for scheduled runs).
    pub finding_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub at: DateTime<Utc>,
    /// SHA-256 (hex) of the audit entry that records this event.
    pub audit_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunEventKind {
    RunStarted,
    StepStarted,
    StepSucceeded,
    StepFailed,
    Waiting,
    Decided,
    RunCompleted,
    RunFailed,
    RunCancelled,
    // A failed run restarted from its failed step by an operator (audited with who and why),
    // under the same run id. (Not a doc comment: it would turn the schema's enum into a oneOf.)
    RunRestarted,
}

impl RunEventKind {
    /// Every kind.
    pub const ALL: [RunEventKind; 10] = [
        RunEventKind::RunStarted,
        RunEventKind::StepStarted,
        RunEventKind::StepSucceeded,
        RunEventKind::StepFailed,
        RunEventKind::Waiting,
        RunEventKind::Decided,
        RunEventKind::RunCompleted,
        RunEventKind::RunFailed,
        RunEventKind::RunCancelled,
        RunEventKind::RunRestarted,
    ];

    /// The kind a word names ([`RunEventKind::as_str`]'s inverse).
    pub fn parse(word: &str) -> Option<RunEventKind> {
        RunEventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == word)
    }

    /// The word used as the last subject token (`quench.events.<playbook>.<kind>`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunEventKind::RunStarted => "run_started",
            RunEventKind::StepStarted => "step_started",
            RunEventKind::StepSucceeded => "step_succeeded",
            RunEventKind::StepFailed => "step_failed",
            RunEventKind::Waiting => "waiting",
            RunEventKind::Decided => "decided",
            RunEventKind::RunCompleted => "run_completed",
            RunEventKind::RunFailed => "run_failed",
            RunEventKind::RunCancelled => "run_cancelled",
            RunEventKind::RunRestarted => "run_restarted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_named_as_serialized_and_parses_back() {
        for kind in RunEventKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).expect("serializes"),
                serde_json::Value::String(kind.as_str().to_owned())
            );
            assert_eq!(RunEventKind::parse(kind.as_str()), Some(kind));
        }
        for word in ["", "run", "RUN_STARTED", "run_started ", "finding_received"] {
            assert_eq!(RunEventKind::parse(word), None, "{word:?}");
        }
    }
}
