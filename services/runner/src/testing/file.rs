//! The playbook test file format (`workflows/tests/*.yaml`):
//!
//! ```yaml
//! schema: quench.playbook-test/v1
//! playbook: ../revoke-leaked-openai-key.yaml   # relative to this file
//! groups: { secops: [lead@example.com] }       # approver groups, as the service config has them
//! teams: { payments: { emails: [pay@example.com] } }   # [teams], as the service config has them
//! owners: { fallback: "group:secops" }          # [owners], as the service config has them
//! finding: { kind: openai.api_key.leaked, resource: {…}, owner: {…} }   # base for every case
//! cases:
//!   - name: the owner agrees and the key is revoked
//!     finding: { severity: critical }           # merged over the base (JSON merge patch)
//!     approvals: { decide: { choice: revoke, by: alice@example.com, after: 30m } }
//!     mocks: { openai.revoke_key: [ {error: retryable, message: "503"}, {output: {deleted: true}} ] }
//!     expect:
//!       status: completed
//!       steps:
//!         decide:
//!           status: succeeded
//!           choice: revoke
//!           notices: [ { notice: asked, to: [owner@example.com], after: 0s } ]
//!         revoke: succeeded
//!         tell: { status: succeeded, with: { text: "Done: revoke" } }
//!       calls: [ { uses: openai.revoke_key, with: { key_id: key_abc } } ]
//! ```
//!
//! The format has a JSON Schema generated from these types: every level refuses unknown fields,
//! reported with line and column and a did-you-mean, as playbooks are.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use quench_proto::Via;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::script::MockResult;
use crate::playbook::Mode;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub schema: TestSchema,
    /// The playbook under test, relative to the test file.
    pub playbook: String,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Teams, as the service config has them (`[teams]`).
    #[serde(default)]
    pub teams: BTreeMap<String, crate::config::Team>,
    /// The owner mapping and fallback, as the service config has them (`[owners]`).
    #[serde(default)]
    pub owners: crate::config::OwnersSection,
    /// Start of virtual time (default 2026-01-05T09:00:00Z, a Monday morning).
    #[serde(default)]
    pub now: Option<DateTime<Utc>>,
    /// The finding every case starts from.
    #[serde(default)]
    pub finding: Option<Value>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
pub enum TestSchema {
    #[serde(rename = "quench.playbook-test/v1")]
    V1,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
    #[schemars(with = "BTreeMap<String, OneOrMany<ScriptedAnswer>>")]
    pub approvals: BTreeMap<String, Vec<ScriptedAnswer>>,
    /// Results per action, in call order; when they run out, calls succeed.
    #[serde(default)]
    pub mocks: BTreeMap<String, Vec<MockResult>>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptedAnswer {
    pub choice: String,
    pub by: String,
    /// After the gate opened.
    #[serde(default, deserialize_with = "offset")]
    #[schemars(with = "String")]
    pub after: Duration,
    #[serde(default = "slack")]
    pub via: Via,
    /// The item answered, on a gate that asks per item.
    #[serde(default)]
    pub item: Option<String>,
    /// What the answer says besides its choice (e.g. the purpose of a key kept).
    #[serde(default)]
    pub comment: Option<String>,
}

fn slack() -> Via {
    Via::Slack
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
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

/// A step's expected status (`revoke: succeeded`), or a mapping with its status and what else to
/// check.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(try_from = "Value")]
#[schemars(with = "StepExpectForm")]
pub struct StepExpect {
    pub status: String,
    pub choice: Option<String>,
    pub decided_by: Option<Vec<String>>,
    pub output: Option<Value>,
    pub with: Option<Value>,
    pub notices: Option<Vec<ExpectedNotice>>,
}

/// The two shapes, for the schema (reading goes through `Value`, so that a problem inside the
/// mapping is named rather than "matches no variant").
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum StepExpectForm {
    Status(String),
    Full(Box<FullStepExpect>),
}

/// What a step's expectation may check.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FullStepExpect {
    /// `succeeded`, `failed`, `skipped`, `dry_run`, `waiting`, `not reached`, …
    status: String,
    /// An approval's choice.
    #[serde(default)]
    choice: Option<String>,
    /// Who decided an approval (`timeout` when nobody did).
    #[serde(default)]
    decided_by: Option<Vec<String>>,
    /// Fields of the step's output (`steps.<id>.output`), compared as a subset: a `note`'s
    /// `message`, a scripted action's output.
    #[serde(default)]
    output: Option<Value>,
    /// Fields of the step's rendered input (its last call), compared as a subset: the text a
    /// `slack.message` sends, the ids a revoke uses.
    #[serde(default)]
    with: Option<Value>,
    /// Every notice an approval sent, in order.
    #[serde(default)]
    notices: Option<Vec<ExpectedNotice>>,
}

impl TryFrom<Value> for StepExpect {
    type Error = String;

    fn try_from(value: Value) -> Result<StepExpect, String> {
        let full =
            match value {
                Value::String(status) => FullStepExpect {
                    status,
                    choice: None,
                    decided_by: None,
                    output: None,
                    with: None,
                    notices: None,
                },
                other => serde_path_to_error::deserialize::<_, FullStepExpect>(other).map_err(
                    |error| match error.path().to_string().as_str() {
                        "." => error.inner().to_string(),
                        path => format!("`{path}`: {}", error.inner()),
                    },
                )?,
            };
        Ok(StepExpect {
            status: full.status,
            choice: full.choice,
            decided_by: full.decided_by,
            output: full.output,
            with: full.with,
            notices: full.notices,
        })
    }
}

/// One notice an approval sent: what, to whom, and how long after the gate opened.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedNotice {
    pub notice: NoticeName,
    /// Recipients as the playbook names them; for `closed`, those whose messages were updated.
    pub to: Vec<String>,
    #[serde(deserialize_with = "offset")]
    #[schemars(with = "String")]
    pub after: Duration,
}

/// The notices an approval sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeName {
    /// The gate opened and asked its approvers.
    Asked,
    /// A reminder to those who had not answered.
    Reminded,
    /// The escalation approvers were asked.
    Escalated,
    /// The gate closed and its messages were updated to show the outcome.
    Closed,
}

impl NoticeName {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeName::Asked => "asked",
            NoticeName::Reminded => "reminded",
            NoticeName::Escalated => "escalated",
            NoticeName::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCall {
    pub uses: String,
    #[serde(default = "empty")]
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub with: Value,
}

fn empty() -> Value {
    Value::Object(Default::default())
}

/// A time after something (`0s` is allowed: at once).
fn offset<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(text.trim())
        .map_err(|error| serde::de::Error::custom(format!("`{text}` is not a duration ({error})")))
}

/// One answer, or several in the order they arrive.
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Vec<ScriptedAnswer>>, D::Error> {
    let map = BTreeMap::<String, OneOrMany<ScriptedAnswer>>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(gate, answers)| match answers {
            OneOrMany::One(answer) => (gate, vec![answer]),
            OneOrMany::Many(answers) => (gate, answers),
        })
        .collect())
}

impl TestFile {
    /// Parses a test file: YAML read as playbooks are (duplicate keys refused, YAML 1.2 core
    /// types), checked against the format's schema — every problem at once, with line, column
    /// and a did-you-mean — and then read into the types. `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<TestFile, String> {
        crate::playbook::read_checked(file, text)
    }
}
