//! The audit log: append-only entries, each chained to the one before by SHA-256 over its exact
//! stored bytes. The committer appends (it alone knows the head); [`verify`] recomputes the chain
//! and names the first entry that does not fit — an edited, removed or reordered entry, or a log
//! that ends before its recorded head.
//!
//! Entries committed together are packed into records of up to [`MAX_RECORD_ENTRIES`] entries
//! under the sequence number of their first (`a/<seq>`), one entry as two lines (hash, body);
//! a run's timeline index (`ar/<run>/<seq>`) names the records that hold its entries. Packing
//! matters: the store's cost is per key, and a finding's intake writes about six entries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Error, Key, Store};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

/// The last entry of the chain, kept in the store's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) hash: String,
}

pub(super) fn read_head(db: &sled::Db) -> Result<Head, Error> {
    let raw = Key::Meta("audit_head").encode();
    match db.get(&raw)? {
        None => Ok(Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        }),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            key: "m/audit_head".to_owned(),
            source,
        }),
    }
}

#[derive(Serialize)]
struct Placed<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    draft: &'a AuditDraft,
}

/// Places a draft after `head`; returns its sequence number, stored bytes and reference.
pub(super) fn chain(head: &mut Head, draft: AuditDraft) -> (u64, Vec<u8>, AuditRef) {
    let seq = head.seq + 1;
    let body = serde_json::to_vec(&Placed {
        seq,
        prev: &head.hash,
        draft: &draft,
    })
    .expect("audit entries serialize");
    let hash = hex::encode(Sha256::digest(&body));
    let mut stored = Vec::with_capacity(hash.len() + 1 + body.len());
    stored.extend_from_slice(hash.as_bytes());
    stored.push(b'\n');
    stored.extend_from_slice(&body);
    *head = Head {
        seq,
        hash: hash.clone(),
    };
    (seq, stored, AuditRef { seq, hash })
}

/// Most entries packed into one record, and the size after which a record is closed.
const MAX_RECORD_ENTRIES: usize = 32;
const MAX_RECORD_BYTES: usize = 4 * 1024;

/// Packs the entries of one commit into records.
#[derive(Debug, Default)]
pub(super) struct Records {
    first: u64,
    bytes: Vec<u8>,
    entries: usize,
    runs: Vec<String>,
}

impl Records {
    /// Adds an entry (as returned by [`chain`]); closes the record when it is full.
    pub(super) fn push(
        &mut self,
        seq: u64,
        stored: &[u8],
        run: Option<String>,
        writes: &mut sled::Batch,
    ) {
        if self.entries == 0 {
            self.first = seq;
        } else {
            self.bytes.push(b'\n');
        }
        self.bytes.extend_from_slice(stored);
        self.entries += 1;
        if let Some(run) = run
            && !self.runs.contains(&run)
        {
            self.runs.push(run);
        }
        if self.entries >= MAX_RECORD_ENTRIES || self.bytes.len() >= MAX_RECORD_BYTES {
            self.finish(writes);
        }
    }

    /// Writes the open record and its runs' index keys.
    pub(super) fn finish(&mut self, writes: &mut sled::Batch) {
        if self.entries == 0 {
            return;
        }
        writes.insert(
            Key::Audit(self.first).encode(),
            std::mem::take(&mut self.bytes),
        );
        for run in self.runs.drain(..) {
            writes.insert(Key::RunAudit(&run, self.first).encode(), Vec::new());
        }
        self.entries = 0;
    }
}

/// The entries of a stored record, each as its stored bytes (`hash` line, body line).
pub(super) fn split_record(record: &[u8]) -> Vec<&[u8]> {
    let mut entries = Vec::new();
    let mut start = 0;
    let mut newlines = 0;
    for (at, byte) in record.iter().enumerate() {
        if *byte == b'\n' {
            newlines += 1;
            if newlines % 2 == 0 {
                entries.push(&record[start..at]);
                start = at + 1;
            }
        }
    }
    if start < record.len() {
        entries.push(&record[start..]);
    }
    entries
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

/// Where the stored chain starts: after the last pruned (exported) entry, else at the start.
pub(super) fn checkpoint(store: &Store) -> Result<Head, Error> {
    Ok(store.get(Key::Meta(CHECKPOINT))?.unwrap_or(Head {
        seq: 0,
        hash: GENESIS.to_owned(),
    }))
}

/// The metadata key of the prune checkpoint.
pub(super) const CHECKPOINT: &str = "audit_checkpoint";

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

pub(super) fn verify(store: &Store) -> Result<Verification, Error> {
    let start = checkpoint(store)?;
    let mut prev = start.hash;
    let mut expected = start.seq + 1;
    let bad = |seq: u64, why: String, entries: u64, prev: &str| {
        Ok(Verification {
            entries,
            head: prev.to_owned(),
            first_bad: Some((seq, why)),
        })
    };
    for item in store.audit_entries() {
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
        prev = hash;
        expected += 1;
    }
    let entries = expected - 1;
    let head: Head = store.get(Key::Meta("audit_head"))?.unwrap_or(Head {
        seq: 0,
        hash: GENESIS.to_owned(),
    });
    if head.seq != entries || head.hash != prev {
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
    Ok(Verification {
        entries,
        head: prev,
        first_bad: None,
    })
}
