//! Targets for the wire contracts (`quench-proto`): finding and decision parsing, redaction.

use quench_proto::{
    DEFAULT_MAX_FINDING_BYTES, Decision, Finding, InvalidField, ParseError, redact_bytes,
    redact_str,
};
use serde::Serialize;

use crate::assert_no_key;

/// A finding as NATS or the findings webhook delivers it (the whole input is the body). A
/// finding that parses is valid, holds nothing key-shaped, and re-serialises to itself: what
/// the runner stores and reads back is what it checked. An error message holds no key.
pub fn finding(data: &[u8]) {
    message(data, parse_finding, check_finding);
}

/// An OCSF finding event as `quench.findings.ocsf` or `/webhooks/ocsf` delivers it (the whole
/// input is the body): what the mapping accepts is a finding with the properties of [`finding`]
/// (valid, nothing key-shaped, re-parses to itself as Finding v1), and an error holds no key.
pub fn ocsf_finding(data: &[u8]) {
    message(data, parse_ocsf, check_finding);
}

fn parse_ocsf(bytes: &[u8]) -> Result<Finding, ParseError> {
    quench_proto::ocsf::parse(bytes, quench_proto::ocsf::MAX_OCSF_BYTES)
}

/// A decision as NATS delivers it: same properties as [`finding`].
pub fn decision(data: &[u8]) {
    message(data, Decision::parse, check_decision);
}

/// The properties of a finding that [`Finding::parse`] accepted (or a gateway built).
pub(crate) fn check_finding(finding: &Finding) {
    check(finding, finding.validate(), parse_finding);
}

/// The properties of a decision that [`Decision::parse`] accepted (or the gateway built).
pub(crate) fn check_decision(decision: &Decision) {
    check(decision, decision.validate(), Decision::parse);
}

fn parse_finding(bytes: &[u8]) -> Result<Finding, ParseError> {
    Finding::parse(bytes, DEFAULT_MAX_FINDING_BYTES)
}

fn message<T>(data: &[u8], parse: fn(&[u8]) -> Result<T, ParseError>, check: fn(&T)) {
    match parse(data) {
        Ok(parsed) => check(&parsed),
        Err(error) => assert_no_key("a parse error", &error.to_string()),
    }
}

fn check<T: Serialize + PartialEq + std::fmt::Debug>(
    message: &T,
    valid: Result<(), InvalidField>,
    parse: fn(&[u8]) -> Result<T, ParseError>,
) {
    if let Err(invalid) = valid {
        panic!("a parsed message does not validate: {invalid}");
    }
    let json = serde_json::to_string(message).expect("a message serializes");
    assert_no_key("a parsed message", &json);
    match parse(json.as_bytes()) {
        Ok(again) => assert_eq!(&again, message, "a message re-parses to itself"),
        Err(error) => panic!("a parsed message does not parse again ({error}): {json}"),
    }
}

/// A live-looking key of each shape redaction knows, and a part of it that must never survive.
const PLANTED: &[(&str, &str)] = &[
    (
        "sk-proj-Xq3vA9kL2mN8pR5tW1yZ7bC4dF6gH0jK",
        "A9kL2mN8pR5tW1yZ",
    ),
    (
        "sk-svcacct-Xq3vA9kL2mN8pR5tW1yZ7bC4dF6gH0jK",
        "A9kL2mN8pR5tW1yZ",
    ),
    (
        "sk-Xq3vA9kL2mN8pR5tT3BlbkFJW1yZ7bC4dF6gH0jK",
        "A9kL2mN8pR5tT3BlbkFJ",
    ),
];

/// Any text, as bytes. Redaction leaves nothing key-shaped (a second pass changes nothing),
/// the text and byte forms agree, and a key planted anywhere in the text — between the first
/// and the second half of the input — does not survive, whatever surrounds it.
pub fn redact(data: &[u8]) {
    let once = redact_bytes(data);
    assert_eq!(
        redact_bytes(&once),
        once,
        "redaction left something key-shaped in {:?}",
        String::from_utf8_lossy(data)
    );
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(
            redact_str(text).as_bytes(),
            &once[..],
            "redact_str and redact_bytes disagree"
        );
    }
    let middle = data.len() / 2;
    let (before, after) = data.split_at(middle);
    for (key, secret_part) in PLANTED {
        let planted = [before, key.as_bytes(), after].concat();
        let redacted = redact_bytes(&planted);
        let count = |text: &[u8]| {
            text.windows(secret_part.len())
                .filter(|window| *window == secret_part.as_bytes())
                .count()
        };
        assert!(
            count(&redacted) <= count(data),
            "a key survived redaction between {:?} and {:?}: {:?}",
            String::from_utf8_lossy(before),
            String::from_utf8_lossy(after),
            String::from_utf8_lossy(&redacted)
        );
    }
}
