//! NATS subject, stream and header names. Deploy files (NATS permissions) and other systems
//! depend on these spellings; change them only with a new wire version.

/// Findings: `quench.findings.<kind>`.
pub const FINDINGS_PREFIX: &str = "quench.findings";
pub const FINDINGS_ALL: &str = "quench.findings.>";
/// OCSF findings (Compliance, Detection, IAM Analysis): mapped to findings by the runner.
/// (`ocsf` is no finding kind: a kind has at least two words.)
pub const FINDINGS_OCSF: &str = "quench.findings.ocsf";
/// Decisions: `quench.decisions.<run_id>`.
pub const DECISIONS_PREFIX: &str = "quench.decisions";
pub const DECISIONS_ALL: &str = "quench.decisions.>";
/// Run events: `quench.events.<playbook>.<kind>`.
pub const EVENTS_PREFIX: &str = "quench.events";
pub const EVENTS_ALL: &str = "quench.events.>";
/// OCSF records of what quench did: `quench.ocsf.<class>` (`remediation_activity`,
/// `detection_finding`).
pub const OCSF_PREFIX: &str = "quench.ocsf";
pub const OCSF_ALL: &str = "quench.ocsf.>";
/// Dead letters: `quench.dlq.findings`, `quench.dlq.decisions`.
pub const DLQ_ALL: &str = "quench.dlq.>";
pub const DLQ_FINDINGS: &str = "quench.dlq.findings";
pub const DLQ_DECISIONS: &str = "quench.dlq.decisions";

pub const STREAM_FINDINGS: &str = "QUENCH_FINDINGS";
pub const STREAM_DECISIONS: &str = "QUENCH_DECISIONS";
pub const STREAM_EVENTS: &str = "QUENCH_EVENTS";
pub const STREAM_DLQ: &str = "QUENCH_DLQ";
pub const STREAM_OCSF: &str = "QUENCH_OCSF";

/// JetStream's de-duplication header; findings carry their `id` in it.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Why a message was dead-lettered (a [`crate::ParseError::reason`] code plus detail).
pub const HEADER_DLQ_REASON: &str = "Quench-Dlq-Reason";
/// The subject the dead-lettered message originally arrived on.
pub const HEADER_DLQ_SUBJECT: &str = "Quench-Dlq-Subject";
/// The size in bytes of the message as it arrived (the dead letter's body may be cut).
pub const HEADER_DLQ_SIZE: &str = "Quench-Dlq-Size";
/// `true` when the dead letter keeps only the first [`DLQ_BODY_LIMIT`] bytes of the body.
pub const HEADER_DLQ_TRUNCATED: &str = "Quench-Dlq-Truncated";
/// Most bytes of a refused message's body a dead letter keeps: the body is kept as it came (as
/// bytes, redacted, never re-encoded), so a dead letter always fits in a NATS message whatever
/// was sent.
pub const DLQ_BODY_LIMIT: usize = 64 * 1024;

pub fn finding(kind: &str) -> String {
    format!("{FINDINGS_PREFIX}.{kind}")
}

pub fn decision(run_id: &str) -> String {
    format!("{DECISIONS_PREFIX}.{run_id}")
}

pub fn event(playbook: &str, kind: crate::RunEventKind) -> String {
    format!("{EVENTS_PREFIX}.{playbook}.{}", kind.as_str())
}

/// `quench.ocsf.<class>`, `class` as `ocsf::Class::as_str` names it.
pub fn ocsf(class: &str) -> String {
    format!("{OCSF_PREFIX}.{class}")
}
