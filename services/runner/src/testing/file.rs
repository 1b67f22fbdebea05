//! The playbook test file format (`workflows/tests/*.yaml`):
//!
//! ```yaml
//! schema: quench.playbook-test/v1
//! playbook: ../revoke-leaked-openai-key.yaml   # relative to this file
//! groups: { secops: [lead@example.com] }       # approver groups, as the service config has them
//! finding: { kind: openai.api_key.leaked, resource: {…}, owner: {…} }   # base for every case
//! cases:
//!   - name: the owner agrees and the key is revoked
//!     finding: { severity: critical }           # merged over the base (JSON merge patch)
//!     approvals: { decide: { choice: revoke, by: alice@example.com, after: 30m } }
//!     mocks: { openai.revoke_key: [ {error: retryable, message: "503"}, {output: {deleted: true}} ] }
//!     expect:
//!       status: completed
//!       steps: { decide: { status: succeeded, choice: revoke }, revoke: succeeded }
//!       calls: [ { uses: openai.revoke_key, with: { key_id: key_abc } } ]
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use quench_proto::Via;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::script::MockResult;
use crate::playbook::Mode;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub schema: TestSchema,
    /// The playbook under test, relative to the test file.
    pub playbook: String,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Start of virtual time (default 2026-01-05T09:00:00Z, a Monday morning).
    #[serde(default)]
    pub now: Option<DateTime<Utc>>,
    /// The finding every case starts from.
    #[serde(default)]
    pub finding: Option<Value>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum TestSchema {
    #[serde(rename = "quench.playbook-test/v1")]
    V1,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub now: Option<DateTime<Utc>>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Changes to the file's finding.
    #[serde(default)]
    pub finding: Option<Value>,
    /// Answers per gate (step id), in the order they arrive; none means the gate times out.
    #[serde(default, deserialize_with = "one_or_many")]
    pub approvals: BTreeMap<String, Vec<ScriptedAnswer>>,
    /// Results per action, in call order; when they run out, calls succeed.
    #[serde(default)]
    pub mocks: BTreeMap<String, Vec<MockResult>>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedAnswer {
    pub choice: String,
    pub by: String,
    /// After the gate opened.
    #[serde(default, deserialize_with = "duration")]
    pub after: Duration,
    #[serde(default = "slack")]
    pub via: Via,
}

fn slack() -> Via {
    Via::Slack
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `completed`, `failed`, `cancelled`, `waiting`, or `none` (no run starts).
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub steps: BTreeMap<String, StepExpect>,
    /// Every call to a scripted action, in order; `with` lists the inputs to check.
    #[serde(default)]
    pub calls: Option<Vec<ExpectedCall>>,
}

/// A step's expected status, or a mapping with its status and approval result.
#[derive(Debug, Clone)]
pub struct StepExpect {
    pub status: String,
    pub choice: Option<String>,
    pub decided_by: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for StepExpect {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StepExpect, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Status(String),
            Full {
                status: String,
                #[serde(default)]
                choice: Option<String>,
                #[serde(default)]
                decided_by: Option<Vec<String>>,
            },
        }
        Ok(match Form::deserialize(deserializer)? {
            Form::Status(status) => StepExpect {
                status,
                choice: None,
                decided_by: None,
            },
            Form::Full {
                status,
                choice,
                decided_by,
            } => StepExpect {
                status,
                choice,
                decided_by,
            },
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCall {
    pub uses: String,
    #[serde(default = "empty")]
    pub with: Value,
}

fn empty() -> Value {
    Value::Object(Default::default())
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::playbook::parse_duration(&text).map_err(serde::de::Error::custom)
}

fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Vec<ScriptedAnswer>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Answers {
        One(ScriptedAnswer),
        Many(Vec<ScriptedAnswer>),
    }
    let map = BTreeMap::<String, Answers>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(gate, answers)| match answers {
            Answers::One(answer) => (gate, vec![answer]),
            Answers::Many(answers) => (gate, answers),
        })
        .collect())
}

impl TestFile {
    /// Parses a test file: YAML (duplicate keys refused) read with the same typing as playbooks,
    /// then the fields, naming the path of a problem.
    pub fn parse(text: &str) -> Result<TestFile, String> {
        let value = crate::playbook::yaml_value(text)
            .map_err(|(line, column, message)| format!("{line}:{column}: {message}"))?;
        serde_path_to_error::deserialize(value)
            .map_err(|error| format!("`{}`: {}", error.path(), error.inner()))
    }
}
