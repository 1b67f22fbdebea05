//! Scripted actions for playbook tests: each call takes the next scripted result for its action
//! (or succeeds with the action's declared outputs set to null), and every call is recorded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::actions::ActionSpec;
use crate::engine::{Action, ActionError, ActionFuture, Call, Success};

/// One scripted result.
#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Retryable,
    Permanent,
}

/// The scripted results of one case, and the calls made.
#[derive(Debug)]
pub struct Script {
    results: Mutex<BTreeMap<String, VecDeque<MockResult>>>,
    calls: Mutex<Vec<(String, Value)>>,
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

    /// Every call so far: action and rendered input.
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn next(&self, spec: &ActionSpec, input: &Value) -> Result<Success, ActionError> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((spec.name.to_owned(), input.clone()));
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
        Box::pin(async move { self.script.next(self.spec, &call.input) })
    }
}
