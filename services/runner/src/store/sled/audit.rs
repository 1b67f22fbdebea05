//! The audit chain in sled: the committer places each entry after the head (sequence number,
//! previous hash, SHA-256 of the body; it alone knows the head, so the chain has one writer and
//! one order) and keeps the head in `m/audit_head`, so a truncated tail is caught too.
//!
//! Entries committed together are packed into records of up to [`MAX_RECORD_ENTRIES`] entries
//! under the sequence number of their first (`a/<seq>`), one entry as two lines (hash, body);
//! a run's timeline index (`ar/<run>/<seq>`) names the records that hold its entries. Packing
//! matters: the store's cost is per key, and a finding's intake writes about six entries.
//! Pruning removes whole records and leaves the last removed entry in `m/audit_checkpoint`,
//! where verification starts.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::super::audit::{AuditDraft, AuditRef, Head, parse_stored};
use super::super::key::{AUDIT_CHECKPOINT, AUDIT_HEAD, seq_part};
use super::super::{Error, Key};
use super::committer::Writes;
use super::read;

/// The recorded head, or genesis for an empty log.
pub(super) fn read_head(db: &::sled::Db) -> Result<Head, Error> {
    Ok(read(db, &Key::Meta(AUDIT_HEAD))?.unwrap_or_else(Head::genesis))
}

/// Where the stored chain starts: after the last pruned (exported) entry, else at the start.
pub(super) fn checkpoint(db: &::sled::Db) -> Result<Head, Error> {
    Ok(read(db, &Key::Meta(AUDIT_CHECKPOINT))?.unwrap_or_else(Head::genesis))
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
        writes: &mut Writes,
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
    pub(super) fn finish(&mut self, writes: &mut Writes) {
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

/// The sequence number of a record's first entry, from its key (`a/<seq>`).
pub(super) fn record_first(key: &[u8]) -> u64 {
    key.get(2..).and_then(seq_part).unwrap_or(u64::MAX)
}

/// The hash of the last entry of a record, and its sequence number.
pub(super) fn record_last(first: u64, record: &[u8]) -> Option<(u64, String)> {
    let entries = split_record(record);
    let last = first + entries.len().saturating_sub(1) as u64;
    let (hash, _, _) = parse_stored(entries.last()?)?;
    Some((last, hash))
}
