//! `quench evidence verify PACK`: offline, from the pack's files alone (and, when given, the
//! store or an exported audit segment to check it against). Every check is printed with what
//! failed; the exit code is 0 when all pass, 1 when any fails, 2 for unusable arguments.

use std::io::Write;

use sha2::{Digest, Sha256};

use super::{EXIT_INVALID, EXIT_OK, EXIT_USAGE, EvidenceVerifyArgs};
use crate::evidence::{self, Verified};
use crate::store::AuditEntry;

pub(super) fn verify(args: &EvidenceVerifyArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if !args.pack.is_dir() {
        let _ = writeln!(
            err,
            "error: {} is not a pack directory",
            args.pack.display()
        );
        return EXIT_USAGE;
    }
    let pinned = match &args.public_key {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match evidence::public_key(&text) {
                Ok(key) => Some(key),
                Err(problem) => {
                    let _ = writeln!(err, "error: --public-key {}: {problem}", path.display());
                    return EXIT_USAGE;
                }
            },
            Err(error) => {
                let _ = writeln!(err, "error: cannot read {}: {error}", path.display());
                return EXIT_USAGE;
            }
        },
    };
    let (mut verified, document) = evidence::verify(&args.pack, pinned.as_ref());
    if let Some(document) = &document {
        if let Some(path) = &args.store {
            let offline = match super::open_offline(path, err) {
                Ok(offline) => offline,
                Err(code) => return code,
            };
            let store = &offline.store;
            let broken = match store.verify_audit() {
                Ok(report) => report.first_bad,
                Err(error) => {
                    let _ = writeln!(err, "error: {error}");
                    return super::EXIT_STORE;
                }
            };
            let entries = store.audit_entries().filter_map(|item| {
                let (_, stored) = item.ok()?;
                let (hash, _, entry) = crate::store::parse_stored(&stored)?;
                Some((hash, entry))
            });
            evidence::against_chain(&mut verified, document, entries, broken);
        } else if let Some(path) = &args.audit {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(error) => {
                    let _ = writeln!(err, "error: cannot read {}: {error}", path.display());
                    return EXIT_USAGE;
                }
            };
            if let Err(problem) = crate::store::verify_segment(&text, None) {
                verified.checks.push(evidence::Check {
                    what: format!("audit segment {}", path.display()),
                    problem: Some(format!("it does not verify: {problem}")),
                });
            }
            let entries = text.lines().filter_map(|line| {
                let entry: AuditEntry = serde_json::from_str(line).ok()?;
                Some((hex::encode(Sha256::digest(line.as_bytes())), entry))
            });
            evidence::against_chain(&mut verified, document, entries, None);
        }
    }
    let written = report(&verified, args.json, out);
    if written.is_err() {
        return EXIT_USAGE;
    }
    if verified.ok() { EXIT_OK } else { EXIT_INVALID }
}

fn report(verified: &Verified, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({
                "ok": verified.ok(), "fingerprint": verified.fingerprint, "pinned": verified.pinned,
                "checks": verified.checks,
            }),
        )?;
        return writeln!(out);
    }
    for check in &verified.checks {
        match &check.problem {
            None => writeln!(out, "ok      {}", check.what)?,
            Some(problem) => writeln!(out, "FAILED  {}: {problem}", check.what)?,
        }
    }
    let failed = verified.failures().count();
    if failed == 0 {
        writeln!(out, "pack verifies")?;
    } else {
        writeln!(
            out,
            "pack does NOT verify: {failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        )?;
    }
    if !verified.pinned {
        writeln!(
            out,
            "note: the signature was checked with the key the manifest names ({}); give the key you trust with --public-key to check who signed it",
            verified.fingerprint.as_deref().unwrap_or("none")
        )?;
    }
    Ok(())
}
