//! The audit log, as every backend keeps it: append-only entries, each chained to the one before
//! by SHA-256 over its exact body. An entry is stored as `hash\nbody` ([`parse_stored`]); an
//! export is JSON Lines of bodies ([`verify_segment`]). [`verify_chain`] recomputes a stored
//! chain and names the first entry that does not fit — an edited, removed or reordered entry, or
//! a log that ends before its recorded head. Placing entries in the chain and packing them into
//! records is the backend's (`sled::audit`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Error;

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry before the committer places it in the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditDraft {
    pub at: DateTime<Utc>,
    /// What happened, e.g. `finding_received`, `run_started`, `step_intent`, `decision`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Who acted (for decisions), as `{via, id, name}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<serde_json::Value>,
    /// For decisions: whether the actor was allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    pub detail: serde_json::Value,
}

impl AuditDraft {
    pub fn new(at: DateTime<Utc>, kind: &'static str, detail: serde_json::Value) -> AuditDraft {
        AuditDraft {
            at,
            kind,
            run_id: None,
            playbook: None,
            version: None,
            step: None,
            actor: None,
            allowed: None,
            detail,
        }
    }
}

/// An entry as stored: the draft plus its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub prev: String,
    pub at: DateTime<Utc>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    pub detail: serde_json::Value,
}

/// Where an appended entry landed: its sequence number and hash (carried by run events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRef {
    pub seq: u64,
    pub hash: String,
}

/// The last entry of a chain (or where a pruned chain starts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

impl Head {
    /// Before the first entry.
    pub(crate) fn genesis() -> Head {
        Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// Splits a stored entry into its recorded hash and parsed body.
pub fn parse_stored(stored: &[u8]) -> Option<(String, &[u8], AuditEntry)> {
    let newline = stored.iter().position(|byte| *byte == b'\n')?;
    let hash = std::str::from_utf8(&stored[..newline]).ok()?.to_owned();
    let body = &stored[newline + 1..];
    let entry = serde_json::from_slice(body).ok()?;
    Some((hash, body, entry))
}

/// The result of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub entries: u64,
    pub head: String,
    /// The first entry that does not fit, and why.
    pub first_bad: Option<(u64, String)>,
}

/// Checks an exported segment on its own: JSON Lines of entry bodies (as hashed), in order, each
/// following the one before; the first must follow `prev` when given (the hash the previous
/// segment ended with, or the genesis hash for the first segment). Entry #1 must start the
/// chain, and there is no entry #0.
///
/// A segment is checked only against itself: a changed last line verifies with another head,
/// and a segment missing its last lines verifies as the shorter segment it is. Its `head` is
/// what to compare with a hash published outside the store (a run event's, or the prune's).
pub fn verify_segment(text: &str, prev: Option<&str>) -> Result<Segment, String> {
    let mut segment: Option<Segment> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let entry: AuditEntry = serde_json::from_str(line)
            .map_err(|error| format!("line {number} is not an audit entry: {error}"))?;
        let hash = hex::encode(Sha256::digest(line.as_bytes()));
        if entry.seq == 0 {
            return Err(format!(
                "line {number} is entry #0: entries are numbered from 1"
            ));
        }
        match &mut segment {
            None => {
                if let Some(prev) = prev
                    && entry.prev != prev
                {
                    return Err(format!(
                        "line 1 (entry #{}) does not follow {prev}: its prev is {}",
                        entry.seq, entry.prev
                    ));
                }
                if entry.seq == 1 && entry.prev != GENESIS {
                    return Err("entry #1 does not start the chain".to_owned());
                }
                segment = Some(Segment {
                    first: entry.seq,
                    prev: entry.prev.clone(),
                    last: entry.seq,
                    head: hash,
                });
            }
            Some(segment) => {
                if segment.last.checked_add(1) != Some(entry.seq) || entry.prev != segment.head {
                    return Err(format!(
                        "line {number} (entry #{}) does not follow entry #{} (entries were changed, removed or reordered)",
                        entry.seq, segment.last
                    ));
                }
                segment.last = entry.seq;
                segment.head = hash;
            }
        }
    }
    segment.ok_or_else(|| "the segment holds no entries".to_owned())
}

/// A verified exported segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    /// The hash the first entry follows.
    pub prev: String,
    pub last: u64,
    /// The last entry's hash.
    pub head: String,
}

/// Recomputes a stored chain: `entries` (sequence number, stored bytes) in order, following
/// `start` (the prune checkpoint, or genesis) and reaching `head` (the recorded head, read
/// before the entries). A store that serves while it is verified commits meanwhile, so the
/// entries may go on past `head`: they must still chain, and the head read again afterwards
/// (`head_after`) must cover them — entries past a head that does not cover them were added
/// without it, or the head was moved back.
pub(crate) fn verify_chain(
    start: Head,
    entries: impl Iterator<Item = Result<(u64, Vec<u8>), Error>>,
    head: Head,
    head_after: impl FnOnce() -> Result<Head, Error>,
) -> Result<Verification, Error> {
    // The hash of the entry at the head's sequence number, once reached.
    let mut at_head = (head.seq == start.seq).then(|| start.hash.clone());
    let mut prev = start.hash;
    let mut expected = start.seq + 1;
    let bad = |seq: u64, why: String, entries: u64, prev: &str| {
        Ok(Verification {
            entries,
            head: prev.to_owned(),
            first_bad: Some((seq, why)),
        })
    };
    for item in entries {
        let (seq, stored) = item?;
        if seq != expected {
            return bad(
                expected,
                format!("entry #{expected} is missing (the next stored entry is #{seq})"),
                expected - 1,
                &prev,
            );
        }
        let Some((hash, body, entry)) = parse_stored(&stored) else {
            return bad(seq, "the entry is not readable".to_owned(), seq - 1, &prev);
        };
        let computed = hex::encode(Sha256::digest(body));
        if computed != hash {
            return bad(
                seq,
                "its content does not match its hash (the entry was changed)".to_owned(),
                seq - 1,
                &prev,
            );
        }
        if entry.seq != seq || entry.prev != prev {
            return bad(
                seq,
                "it does not follow the entry before it (entries were removed or reordered)"
                    .to_owned(),
                seq - 1,
                &prev,
            );
        }
        if seq == head.seq {
            at_head = Some(hash.clone());
        }
        prev = hash;
        expected += 1;
    }
    let entries = expected - 1;
    if entries < head.seq {
        return bad(
            entries + 1,
            format!(
                "the log ends at entry #{entries} but its recorded head is entry #{} (entries were removed from the end)",
                head.seq
            ),
            entries,
            &prev,
        );
    }
    if at_head.as_deref() != Some(head.hash.as_str()) {
        return bad(
            head.seq,
            format!(
                "entry #{} is not the recorded head (the head or the entry was changed)",
                head.seq
            ),
            head.seq.saturating_sub(1),
            &prev,
        );
    }
    if entries > head.seq {
        let now = head_after()?;
        if now.seq < entries {
            return bad(
                now.seq + 1,
                format!(
                    "entries #{} to #{entries} follow the recorded head, entry #{} (entries were added without it, or the head was moved back)",
                    now.seq + 1,
                    now.seq
                ),
                now.seq,
                &prev,
            );
        }
    }
    Ok(Verification {
        entries,
        head: prev,
        first_bad: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `count` entries as stored: (sequence number, `hash\nbody`), and its head.
    fn chain(count: u64) -> (Vec<(u64, Vec<u8>)>, Head) {
        let mut prev = GENESIS.to_owned();
        let mut stored = Vec::new();
        for seq in 1..=count {
            let entry = AuditEntry {
                seq,
                prev: prev.clone(),
                at: DateTime::<Utc>::UNIX_EPOCH,
                kind: "test".to_owned(),
                run_id: None,
                playbook: None,
                version: None,
                step: None,
                actor: None,
                allowed: None,
                detail: serde_json::Value::Null,
            };
            let body = serde_json::to_vec(&entry).expect("json");
            let hash = hex::encode(Sha256::digest(&body));
            let mut bytes = format!("{hash}\n").into_bytes();
            bytes.extend_from_slice(&body);
            stored.push((seq, bytes));
            prev = hash;
        }
        (
            stored,
            Head {
                seq: count,
                hash: prev,
            },
        )
    }

    #[test]
    fn entries_committed_while_the_chain_is_read_verify() {
        // The head was read at #3; #4 and #5 landed before the entries were read, and the
        // head read again covers them.
        let (stored, head) = chain(5);
        let (_, head_at_3) = chain(3);
        let verified = verify_chain(
            Head::genesis(),
            stored.into_iter().map(Ok),
            head_at_3,
            || Ok(head),
        )
        .expect("verified");
        assert_eq!(verified.first_bad, None);
        assert_eq!(verified.entries, 5);
    }

    #[test]
    fn entries_past_a_head_that_does_not_cover_them_are_found() {
        // The head moved back to #3 (or #4, #5 were added without it).
        let (stored, _) = chain(5);
        let (_, head_at_3) = chain(3);
        let again = head_at_3.clone();
        let verified = verify_chain(
            Head::genesis(),
            stored.into_iter().map(Ok),
            head_at_3,
            || Ok(again),
        )
        .expect("verified");
        assert_eq!(verified.first_bad.map(|(seq, _)| seq), Some(4));
        // A head moved back to nothing at all.
        let (stored, _) = chain(2);
        let verified = verify_chain(
            Head::genesis(),
            stored.into_iter().map(Ok),
            Head::genesis(),
            || Ok(Head::genesis()),
        )
        .expect("verified");
        assert_eq!(verified.first_bad.map(|(seq, _)| seq), Some(1));
    }

    #[test]
    fn entries_removed_from_the_end_are_found() {
        let (stored, head) = chain(5);
        let short = stored.into_iter().take(3).map(Ok);
        let verified =
            verify_chain(Head::genesis(), short, head.clone(), || Ok(head)).expect("verified");
        assert_eq!(verified.first_bad.map(|(seq, _)| seq), Some(4));
    }

    #[test]
    fn a_head_whose_hash_is_not_its_entrys_is_found() {
        let (stored, mut head) = chain(3);
        head.hash = GENESIS.to_owned();
        let again = head.clone();
        let verified = verify_chain(Head::genesis(), stored.into_iter().map(Ok), head, || {
            Ok(again)
        })
        .expect("verified");
        assert_eq!(verified.first_bad.map(|(seq, _)| seq), Some(3));
    }
}
