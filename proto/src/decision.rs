//! `Decision` v1: an answer to an approval gate, published to `quench.decisions.<run_id>` by the
//! gateway (Slack clicks), the admin API or the CLI. It claims who answered; the runner, not the
//! sender, decides whether that actor may answer the gate.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{
    InvalidField, ParseError, check_len, check_schema_tag, check_token, from_value,
};
use crate::redact::redact_value;

/// Decisions are small; anything larger is not a decision.
pub const MAX_DECISION_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DecisionSchema {
    #[default]
    #[serde(rename = "quench.decision/v1")]
    V1,
}

impl DecisionSchema {
    pub const TAG: &'static str = "quench.decision/v1";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "quench decision v1")]
pub struct Decision {
    pub schema: DecisionSchema,
    /// Unique id of this answer (dedupes re-sent clicks).
    pub id: String,
    pub run_id: String,
    /// The gate's step id within the run.
    pub gate: String,
    /// The gate's unguessable token, as carried in the Slack button value.
    pub token: String,
    pub choice: String,
    /// The item answered, on a gate that asks per item (an attestation lists several
    /// identities, each answered on its own); absent on an ordinary gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub item: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub actor: Actor,
    pub decided_at: DateTime<Utc>,
}

/// Who answered, as the channel they answered through knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub via: Via,
    /// Slack user id (`U…`, with the team as `T…/U…`), or the API token's name, or an email.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Slack,
    Api,
    Cli,
    Console,
}

impl Decision {
    /// Parses a decision as it arrives from NATS; see [`crate::Finding::parse`] for the order.
    pub fn parse(bytes: &[u8]) -> Result<Decision, ParseError> {
        if bytes.len() > MAX_DECISION_BYTES {
            return Err(ParseError::TooLarge {
                size: bytes.len(),
                limit: MAX_DECISION_BYTES,
            });
        }
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| ParseError::Json(error.to_string()))?;
        redact_value(&mut value);
        check_schema_tag(&value, DecisionSchema::TAG)?;
        let decision: Decision = from_value(value)?;
        decision.validate()?;
        Ok(decision)
    }

    pub fn validate(&self) -> Result<(), InvalidField> {
        check_token("id", &self.id, 128)?;
        check_token("run_id", &self.run_id, 128)?;
        check_token("gate", &self.gate, 64)?;
        check_token("token", &self.token, 128)?;
        check_len("choice", &self.choice, 1, 64)?;
        if let Some(item) = &self.item {
            check_len("item", item, 1, 128)?;
        }
        if let Some(comment) = &self.comment {
            check_len("comment", comment, 0, 1000)?;
        }
        check_len("actor.id", &self.actor.id, 1, 256)?;
        if let Some(name) = &self.actor.name {
            check_len("actor.name", name, 1, 256)?;
        }
        Ok(())
    }
}
