//! Scripted actions for playbook tests: each call takes the next scripted result for its action
//! (or succeeds with the action's declared outputs set to null), and every call is recorded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use chrono::{DateTime, Utc};

use super::file::NoticeName;
use crate::actions::ActionSpec;
use crate::engine::{
    Action, ActionError, ActionFuture, Call, Clock, Delivery, GateMessage, ManualClock,
    NoticeFuture, NoticeKind, NoticeRequest, Notifier, Success,
};

/// One scripted result.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockResult {
    #[serde(default)]
    pub output: Option<Value>,
    /// `retryable` or `permanent`.
    #[serde(default)]
    pub error: Option<ErrorKind>,
    #[serde(default)]
    pub message: Option<String>,
    /// Seconds the far side asks to wait (a 429's `Retry-After`).
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub already_done: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Retryable,
    Permanent,
}

/// The scripted results of one case, and the calls made.
#[derive(Debug)]
pub struct Script {
    results: Mutex<BTreeMap<String, VecDeque<MockResult>>>,
    calls: Mutex<Vec<RecordedCall>>,
}

/// One call a case made: the action, the step that made it, and the rendered input.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub action: String,
    pub step: String,
    pub input: Value,
}

impl Script {
    pub fn new(results: BTreeMap<String, Vec<MockResult>>) -> Script {
        Script {
            results: Mutex::new(
                results
                    .into_iter()
                    .map(|(action, results)| (action, results.into()))
                    .collect(),
            ),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn next(&self, spec: &ActionSpec, call: &Call) -> Result<Success, ActionError> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(RecordedCall {
                action: spec.name.to_owned(),
                step: call.step.clone(),
                input: call.input.clone(),
            });
        let scripted = self
            .results
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(spec.name)
            .and_then(VecDeque::pop_front);
        let Some(result) = scripted else {
            let output = spec
                .outputs
                .iter()
                .map(|field| ((*field).to_owned(), Value::Null))
                .collect();
            return Ok(Success::new(Value::Object(output)));
        };
        let message = result
            .message
            .clone()
            .unwrap_or_else(|| format!("scripted failure of {}", spec.name));
        match result.error {
            Some(ErrorKind::Retryable) => Err(ActionError::Retryable {
                message,
                retry_after: result.retry_after.map(Duration::from_secs),
            }),
            Some(ErrorKind::Permanent) => Err(ActionError::Permanent { message }),
            None => Ok(Success {
                output: result.output.unwrap_or(Value::Null),
                already_done: result.already_done,
            }),
        }
    }
}

/// An action whose results come from a [`Script`].
#[derive(Debug)]
pub struct ScriptedAction {
    spec: &'static ActionSpec,
    script: std::sync::Arc<Script>,
}

impl ScriptedAction {
    pub fn new(spec: &'static ActionSpec, script: std::sync::Arc<Script>) -> ScriptedAction {
        ScriptedAction { spec, script }
    }
}

impl Action for ScriptedAction {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a> {
        Box::pin(async move { self.script.next(self.spec, call) })
    }
}

/// Records the notices approvals send (instead of posting them to Slack), with the virtual time
/// of each, and answers as a notifier that posted one message per recipient.
#[derive(Debug)]
pub struct NoticeLog {
    clock: std::sync::Arc<ManualClock>,
    sent: Mutex<Vec<SentNotice>>,
}

/// One notice a case sent.
#[derive(Debug, Clone)]
pub struct SentNotice {
    pub step: String,
    pub notice: NoticeName,
    pub to: Vec<String>,
    pub at: DateTime<Utc>,
}

impl NoticeLog {
    pub fn new(clock: std::sync::Arc<ManualClock>) -> NoticeLog {
        NoticeLog {
            clock,
            sent: Mutex::new(Vec::new()),
        }
    }

    /// Every notice so far, in order.
    pub fn sent(&self) -> Vec<SentNotice> {
        self.sent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Notifier for NoticeLog {
    fn deliver<'a>(&'a self, request: &'a NoticeRequest) -> NoticeFuture<'a> {
        Box::pin(async move {
            if request.kind == NoticeKind::Progress {
                // An item answered on a per-item gate: the messages are updated; a case's
                // notices are the asking and closing ones.
                return Delivery {
                    updated: request.gate.messages.len(),
                    ..Delivery::default()
                };
            }
            let (notice, to) = match request.kind {
                NoticeKind::Open => (NoticeName::Asked, request.to.clone()),
                NoticeKind::Remind => (NoticeName::Reminded, request.to.clone()),
                NoticeKind::Escalate => (NoticeName::Escalated, request.to.clone()),
                NoticeKind::Progress | NoticeKind::Closed => {
                    // Each recipient once, however many messages (reminders) they were sent.
                    let mut to: Vec<String> = Vec::new();
                    for message in &request.gate.messages {
                        if !to.contains(&message.to) {
                            to.push(message.to.clone());
                        }
                    }
                    (NoticeName::Closed, to)
                }
            };
            let mut sent = self
                .sent
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let posted = if notice == NoticeName::Closed {
                Vec::new()
            } else {
                to.iter()
                    .enumerate()
                    .map(|(index, to)| GateMessage {
                        to: to.clone(),
                        channel: "quench-test".to_owned(),
                        ts: format!("{}.{index}", sent.len()),
                    })
                    .collect()
            };
            let updated = if notice == NoticeName::Closed {
                request.gate.messages.len()
            } else {
                0
            };
            sent.push(SentNotice {
                step: request.gate.step.clone(),
                notice,
                to,
                at: self.clock.now(),
            });
            Delivery {
                posted,
                updated,
                ..Delivery::default()
            }
        })
    }
}
