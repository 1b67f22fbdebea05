//! OCSF (Open Cybersecurity Schema Framework) 1.6, the schema Security Hub, Prowler (`json-ocsf`)
//! and security data lakes speak. In: a Compliance Finding (2003), Detection Finding (2004) or
//! IAM Analysis Finding (2008) as it arrives on `quench.findings.ocsf` or the gateway's
//! `/webhooks/ocsf` is mapped to a [`Finding`] by [`parse`] ([`input`]), then checked and
//! redacted by [`Finding::checked`] like any finding. Out: what quench did, as OCSF records
//! ([`output`]): a Remediation Activity (7001) per mutating step result and a Detection Finding
//! update (2004) per run outcome, published on `quench.ocsf.<class>`.
//!
//! The types are written by hand for the attributes quench reads and writes (the OCSF 1.6
//! classes and objects named in `docs/ocsf.md`); everything else in an event is ignored on the
//! way in. The published JSON Schemas of the classes quench emits are checked in under
//! `proto/schema/ocsf/` and the tests hold every record quench writes to them.

mod input;
mod output;

pub use input::{MAX_OCSF_BYTES, parse};
pub use output::{Approval, Class, Outcome, Record, RunFacts, StepFacts, StepOutcome};

/// The OCSF version quench reads and writes (`metadata.version`).
pub const VERSION: &str = "1.6.0";
