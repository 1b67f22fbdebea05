//! The fuzz targets of quench as plain functions, one per parser that takes input from outside:
//! each takes the fuzzer's bytes, runs the parser as the service does, and asserts the
//! properties that parser promises (a panic is a failure). The cargo-fuzz binaries in
//! `tests/fuzz/fuzz_targets/` are one line each around these, and `tests/replay.rs` runs every
//! committed corpus and regression input through them in `cargo test`, so both run one body.
//!
//! Inputs that carry more than a body put the extra parts first, one per line (see each
//! target), so that corpus files stay readable and real payloads can be seeds.

mod audit;
mod gateway;
mod proto;
mod runner;

pub use audit::{
    audit_segment, check_changed, check_removed, check_reordered, check_segment, check_truncated,
    line_hash,
};

pub use gateway::{
    github_event, github_signature, signed_finding, slack_interaction, slack_signature,
};
pub use proto::{decision, finding, ocsf_finding, redact};
pub use runner::{config, journal_record, playbook, playbook_test, template};

/// A target's body: panics when the input breaks a property.
pub type Target = fn(&[u8]);

/// Every target by name: the name is the cargo-fuzz binary and the corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("finding", finding),
    ("ocsf_finding", ocsf_finding),
    ("decision", decision),
    ("redact", redact),
    ("playbook", playbook),
    ("playbook_test", playbook_test),
    ("template", template),
    ("config", config),
    ("audit_segment", audit_segment),
    ("slack_signature", slack_signature),
    ("github_signature", github_signature),
    ("signed_finding", signed_finding),
    ("slack_interaction", slack_interaction),
    ("github_event", github_event),
    ("journal_record", journal_record),
];

/// Panics when `text` holds anything key-shaped: what redaction would still change.
fn assert_no_key(what: &str, text: &str) {
    let redacted = quench_proto::redact_str(text);
    assert!(
        matches!(redacted, std::borrow::Cow::Borrowed(_)),
        "{what} holds something key-shaped: {text:?}"
    );
}

/// The first `N` lines of `data` (without their `\n`) and the rest; `None` when it has fewer.
fn lines<const N: usize>(data: &[u8]) -> Option<([&[u8]; N], &[u8])> {
    let mut parts = [&data[..0]; N];
    let mut rest = data;
    for part in &mut parts {
        let end = rest.iter().position(|&byte| byte == b'\n')?;
        *part = &rest[..end];
        rest = &rest[end + 1..];
    }
    Some((parts, rest))
}
