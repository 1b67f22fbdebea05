//! quench wire contracts: the messages that cross process boundaries, the NATS names they
//! travel on, and what quench writes into Slack and reads back from it ([`slack`]). No I/O and no
//! async runtime live here; every other crate depends on this one.
//!
//! Each message carries a `schema` tag with its version, is validated field by field on entry
//! ([`Finding::parse`], [`Decision::parse`]), and has a JSON Schema generated from these types and
//! checked in under `proto/schema/` ([`schemas`]).

mod decision;
mod error;
mod finding;
mod json;
pub mod ocsf;
mod redact;
mod run_event;
pub mod slack;
pub mod subject;

pub use decision::{Actor, Decision, DecisionSchema, MAX_DECISION_BYTES, Via};
pub use error::{InvalidField, ParseError};
pub use finding::{
    DEFAULT_MAX_FINDING_BYTES, Finding, FindingSchema, Owner, Resource, ResourceType, Severity,
    Source, Status,
};
pub use redact::{REDACTED_MARKER, contains_secret, redact_bytes, redact_str, redact_value};
pub use run_event::{RunEvent, RunEventKind, RunEventSchema};

/// The JSON Schema of every message, keyed by the file name it is checked in under
/// (`proto/schema/<name>`). A test compares these with the files so a stale schema fails CI.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("finding.v1.json", schema_json::<Finding>()),
        ("decision.v1.json", schema_json::<Decision>()),
        ("run_event.v1.json", schema_json::<RunEvent>()),
    ]
}

fn schema_json<T: schemars::JsonSchema>() -> serde_json::Value {
    serde_json::Value::from(schemars::schema_for!(T))
}
