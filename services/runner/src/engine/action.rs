//! Actions as the engine calls them. The engine handles `wait`, `approval`, `note` and `fail`
//! itself (they change run state, not the world); every other action is an [`Action`] in an
//! [`Actions`] set, called with rendered inputs and an idempotency key. Connectors implement it
//! for Slack, OpenAI, HTTP and NATS; tests script it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// One call of an action.
#[derive(Debug, Clone)]
pub struct Call {
    pub action: String,
    pub input: Value,
    /// `run_id/step_id/iteration`: the same for every attempt and every re-execution, so the
    /// far side can recognise a repeat.
    pub idempotency_key: String,
    pub run_id: String,
    pub step: String,
    pub iteration: usize,
    pub attempt: u32,
}

/// A call that worked.
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    pub output: Value,
    /// The change had already been made (e.g. the key was already deleted).
    pub already_done: bool,
}

impl Success {
    pub fn new(output: Value) -> Success {
        Success {
            output,
            already_done: false,
        }
    }
}

/// A call that did not work, classified for the retry policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// Worth trying again (timeouts, 5xx, 429); `retry_after` is the far side's hint and wins
    /// over the playbook's backoff.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (4xx, bad input).
    #[error("{message}")]
    Permanent { message: String },
}

impl ActionError {
    pub fn retryable(message: impl Into<String>) -> ActionError {
        ActionError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> ActionError {
        ActionError::Permanent {
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, ActionError::Retryable { .. })
    }
}

pub type ActionFuture<'a> = Pin<Box<dyn Future<Output = Result<Success, ActionError>> + Send + 'a>>;

pub trait Action: Send + Sync + Debug {
    fn call<'a>(&'a self, call: &'a Call) -> ActionFuture<'a>;

    /// What a dry run records instead of calling: the request live mode would send (connectors
    /// show method, path and body, never a credential), after every check live mode makes before
    /// it sends anything. Input live mode would refuse is refused here with the same error, so a
    /// dry run fails where a live run would.
    fn describe(&self, input: &Value) -> Result<Value, ActionError> {
        Ok(input.clone())
    }
}

/// The executable actions, by name.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    by_name: HashMap<String, Arc<dyn Action>>,
}

impl Actions {
    pub fn new() -> Actions {
        Actions::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, action: Arc<dyn Action>) -> &mut Actions {
        self.by_name.insert(name.into(), action);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Action>> {
        self.by_name.get(name)
    }
}
