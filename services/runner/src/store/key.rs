//! Typed keys: the store's record families, their encoding (part of the on-disk format), and the
//! partition each family belongs to ([`Key::partition`]) — what a backend that splits the store
//! routes by (ARCHITECTURE.md, "The store seam and its partitions").

use chrono::{DateTime, Utc};

/// A typed key. Families are separate prefixes; their parts are NUL-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// Layout version and other store metadata.
    Meta(&'a str),
    /// A run's record.
    Run(&'a str),
    /// Index of runs by run key (the finding key, or what the playbook's `key` made): (key,
    /// run id). Written when the run is first saved, removed with it.
    RunOfKey(&'a str, &'a str),
    /// Index of runs by playbook name: (playbook, run id). As [`Key::RunOfKey`].
    RunOfPlaybook(&'a str, &'a str),
    /// Runs that were between steps (not parked) at their last commit: driven again at start-up.
    Active(&'a str),
    /// Index of a run's audit entries (its timeline): the records holding them, by their first
    /// sequence number. Written by the backend with the entries.
    RunAudit(&'a str, u64),
    /// An approval gate of a run.
    Gate(&'a str, &'a str),
    /// A durable timer, ordered by due time.
    Timer {
        due: DateTime<Utc>,
        run: &'a str,
        name: &'a str,
    },
    /// The open run for (playbook, key).
    Open(&'a str, &'a str),
    /// A finding waiting for the open run of its (playbook, key) to end (`on_conflict: queue`).
    Queued(&'a str, &'a str, u64),
    /// A finding id already taken in, and when.
    Seen(&'a str),
    /// Seen ids by time, for bounded retention.
    SeenExpiry(DateTime<Utc>, &'a str),
    /// Ended runs by when they ended (`[store] retain_ended`): written when a run ends, removed
    /// when it is restarted or purged, so a purge pass reads only the runs it deletes.
    Ended(DateTime<Utc>, &'a str),
    /// The effect journal, by idempotency key `run/step/iteration`.
    Effect(&'a str),
    /// A playbook version's source, by content hash.
    PlaybookVersion(&'a str),
    /// When a playbook name was loaded at a version.
    PlaybookHistory(&'a str, DateTime<Utc>),
    /// Who made that version current (`quench serve`, `file change`, `SIGHUP`, `api:<token
    /// name>`), beside its history entry: a family of its own, so a store written by a quench
    /// that keeps it still reads in one that does not, and entries from before it read as unknown.
    PlaybookLoadedBy(&'a str, DateTime<Utc>),
    /// A scheduled playbook's next tick.
    Schedule(&'a str),
    /// A playbook's remembered values (`state.set`), by playbook name.
    PlaybookState(&'a str),
    /// A playbook that starts no new runs, by name (who disabled it, and when).
    PlaybookDisabled(&'a str),
    /// The audit log: records of entries, by the sequence number of their first entry.
    Audit(u64),
    /// The `[safety]` budget's ledger: one mutating call let through, by when and its
    /// idempotency key (entries older than the budget's hour are removed).
    SafetyUse(DateTime<Utc>, &'a str),
    /// A run whose mutating step waits on a safety gate: (the gate's run, the waiting run).
    SafetyWait(&'a str, &'a str),
    /// An identity of the estate inventory (`project_key:key_abc`, `service_account:svc_1`,
    /// `admin_key:key_x`, `user:user_1`, `project:proj_1`): what the last sync or audit-log
    /// event saw of it.
    Identity(&'a str),
    /// One change to an identity (created, changed fields, deleted), by the inventory's change
    /// sequence number: the identity's history.
    IdentityHistory(&'a str, u64),
    /// What people said about an identity (owner, purpose), kept apart from what the sync
    /// sees so a sync never overwrites it.
    Attributes(&'a str),
    /// A finding the inventory published for (identity, risk), so a risk is published once
    /// and resolved when it goes away.
    InventoryFinding(&'a str, &'a str),
    /// The inventory's own bookkeeping (the change sequence, the last pass, the audit-log
    /// cursor), by name.
    InventoryMeta(&'a str),
    /// An attestation campaign (access review): its scope, who started it, its state.
    Campaign(&'a str),
    /// One part of a campaign: the identities put to one owner in one message, the run that
    /// asks, and the answers seen so far; by campaign and part number.
    CampaignChunk(&'a str, u32),
}

/// The store metadata a backend keeps for itself, per partition (never written by callers).
pub(crate) const AUDIT_HEAD: &str = "audit_head";
pub(crate) const AUDIT_CHECKPOINT: &str = "audit_checkpoint";
pub(crate) const COUNTERS: &str = "counters";
/// The position in its commit log (cluster mode's journal) of the last commit a store applied.
pub(crate) const LOGGED: &str = "logged";
/// The layout version, store-wide.
pub(crate) const FORMAT: &str = "format";
/// Set once every run stored before the run indexes were kept has been indexed
/// ([`Key::RunOfKey`], [`Key::RunOfPlaybook`]).
pub const RUN_INDEXES: &str = "run_indexes";
/// Set once every run that ended before the ended-run index was kept has been indexed
/// ([`Key::Ended`]).
pub const ENDED_INDEX: &str = "ended_index";
/// The sequence number of the last audit entry whose run event (if it records one) the
/// stream acknowledged: where the run-event publisher goes on from. Each partition's own.
pub const EVENTS_PUBLISHED: &str = "events_published";

/// Where a record belongs when the store is split into partitions (one journal each, one
/// writer each). A run lives in the partition of its run key: the finding key unless the
/// playbook sets `key`, and a scheduled playbook's name unless it sets `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition<'a> {
    /// One of the run's own records: in the run's partition, which the run id names.
    Run(&'a str),
    /// Keyed by a run key (the open-run slot, queued findings): the partition the key hashes
    /// to, where the runs for that key live.
    RunKey(&'a str),
    /// A playbook name's records (its schedule, its `state.set` values): the partition the
    /// name hashes to, where its scheduled runs live.
    Playbook(&'a str),
    /// A taken-in finding id: in the partition the finding was routed to by its key, that is
    /// the partition of the commit that took it in (the id alone does not name it, and every
    /// reader has the finding in hand).
    Intake,
    /// Kept by each partition for itself: the audit chain (records, head, checkpoint) and the
    /// counters, written by the backend, never by callers; the run-event publisher's position.
    Own,
    /// Store-wide control records that every partition reads and only control commits
    /// write: the format version and the playbook library (versions, history, disabled).
    Control,
    /// The `[safety]` budget's ledger: one sequence for the whole estate, because a budget
    /// counts every run's mutations. Written with the intent of each counted call.
    Safety,
    /// The estate inventory (identities, their history and attributes, the findings it
    /// published): one sequence, because a sync pass is one change set over the whole
    /// organization and its sequence numbers order every identity's history.
    Estate,
}

impl Key<'_> {
    /// The partition this record belongs to.
    pub fn partition(&self) -> Partition<'_> {
        match self {
            Key::Meta(AUDIT_HEAD | AUDIT_CHECKPOINT | COUNTERS | LOGGED | EVENTS_PUBLISHED)
            | Key::Audit(_) => Partition::Own,
            Key::Meta(_)
            | Key::PlaybookVersion(_)
            | Key::PlaybookHistory(..)
            | Key::PlaybookLoadedBy(..)
            | Key::PlaybookDisabled(_) => Partition::Control,
            Key::Run(run)
            | Key::Active(run)
            | Key::RunAudit(run, _)
            | Key::Gate(run, _)
            | Key::Timer { run, .. }
            | Key::Ended(_, run) => Partition::Run(run),
            // `run/step/iteration`: run ids (UUIDs) hold no `/`.
            Key::Effect(key) => Partition::Run(key.split_once('/').map_or(*key, |(run, _)| run)),
            Key::Open(_, key) | Key::Queued(_, key, _) | Key::RunOfKey(key, _) => {
                Partition::RunKey(key)
            }
            // Each partition indexes its own runs; a read by playbook merges them in id order.
            Key::RunOfPlaybook(_, run) => Partition::Run(run),
            Key::Seen(_) | Key::SeenExpiry(..) => Partition::Intake,
            Key::Schedule(name) | Key::PlaybookState(name) => Partition::Playbook(name),
            Key::SafetyUse(..) => Partition::Safety,
            // The waiting run's record, indexed by the gate it waits on.
            Key::SafetyWait(_, run) => Partition::Run(run),
            Key::Identity(_)
            | Key::IdentityHistory(..)
            | Key::Attributes(_)
            | Key::InventoryFinding(..)
            | Key::InventoryMeta(_)
            | Key::Campaign(_)
            | Key::CampaignChunk(..) => Partition::Estate,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        fn parts(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut out = prefix.to_vec();
            for (index, part) in parts.iter().enumerate() {
                if index > 0 {
                    out.push(0);
                }
                out.extend_from_slice(part);
            }
            out
        }
        match self {
            Key::Meta(name) => parts(b"m/", &[name.as_bytes()]),
            Key::Run(id) => parts(b"r/", &[id.as_bytes()]),
            Key::RunOfKey(key, run) => parts(b"rk/", &[key.as_bytes(), run.as_bytes()]),
            Key::RunOfPlaybook(playbook, run) => {
                parts(b"rp/", &[playbook.as_bytes(), run.as_bytes()])
            }
            Key::Active(id) => parts(b"x/", &[id.as_bytes()]),
            Key::RunAudit(run, seq) => parts(b"ar/", &[run.as_bytes(), &seq.to_be_bytes()]),
            Key::Gate(run, step) => parts(b"g/", &[run.as_bytes(), step.as_bytes()]),
            Key::Timer { due, run, name } => {
                let mut out = b"t/".to_vec();
                out.extend_from_slice(&millis(due));
                out.extend_from_slice(run.as_bytes());
                out.push(0);
                out.extend_from_slice(name.as_bytes());
                out
            }
            Key::Open(playbook, key) => parts(b"o/", &[playbook.as_bytes(), key.as_bytes()]),
            Key::Queued(playbook, key, seq) => parts(
                b"q/",
                &[playbook.as_bytes(), key.as_bytes(), &seq.to_be_bytes()],
            ),
            Key::Seen(id) => parts(b"f/", &[id.as_bytes()]),
            Key::SeenExpiry(at, id) => {
                let mut out = SEEN_EXPIRY_PREFIX.to_vec();
                out.extend_from_slice(&millis(at));
                out.extend_from_slice(id.as_bytes());
                out
            }
            Key::Ended(at, run) => {
                let mut out = ENDED_PREFIX.to_vec();
                out.extend_from_slice(&millis(at));
                out.extend_from_slice(run.as_bytes());
                out
            }
            Key::Effect(key) => parts(b"j/", &[key.as_bytes()]),
            Key::PlaybookVersion(version) => parts(b"p/", &[version.as_bytes()]),
            Key::PlaybookHistory(name, at) => parts(b"ph/", &[name.as_bytes(), &millis(at)]),
            Key::PlaybookLoadedBy(name, at) => parts(b"pb/", &[name.as_bytes(), &millis(at)]),
            Key::Audit(seq) => parts(b"a/", &[&seq.to_be_bytes()]),
            Key::Schedule(name) => parts(b"s/", &[name.as_bytes()]),
            Key::PlaybookState(name) => parts(b"ps/", &[name.as_bytes()]),
            Key::PlaybookDisabled(name) => parts(b"pd/", &[name.as_bytes()]),
            Key::SafetyUse(at, key) => {
                let mut out = b"su/".to_vec();
                out.extend_from_slice(&millis(at));
                out.extend_from_slice(key.as_bytes());
                out
            }
            Key::SafetyWait(hold, run) => parts(b"sw/", &[hold.as_bytes(), run.as_bytes()]),
            Key::Identity(id) => parts(b"i/", &[id.as_bytes()]),
            Key::IdentityHistory(id, seq) => parts(b"ih/", &[id.as_bytes(), &seq.to_be_bytes()]),
            Key::Attributes(id) => parts(b"ia/", &[id.as_bytes()]),
            Key::InventoryFinding(id, risk) => parts(b"ir/", &[id.as_bytes(), risk.as_bytes()]),
            Key::InventoryMeta(name) => parts(b"im/", &[name.as_bytes()]),
            Key::Campaign(id) => parts(b"c/", &[id.as_bytes()]),
            Key::CampaignChunk(id, n) => parts(b"cc/", &[id.as_bytes(), &n.to_be_bytes()]),
        }
    }

    /// The key as shown in messages (parts separated by `/`).
    pub(crate) fn shown(&self) -> String {
        shown(&self.encode())
    }
}

/// An encoded key as shown in messages.
pub(crate) fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\0', "/")
}

/// The families ordered by a time and then an id ([`Key::SeenExpiry`], [`Key::Ended`]).
pub(crate) const SEEN_EXPIRY_PREFIX: &[u8] = b"fx/";
pub(crate) const ENDED_PREFIX: &[u8] = b"e/";

/// A time as its key part: milliseconds since the epoch, big-endian (so keys sort by time).
fn millis(time: &DateTime<Utc>) -> [u8; 8] {
    (time.timestamp_millis().max(0) as u64).to_be_bytes()
}

/// A time key part read back.
pub(crate) fn time_part(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let millis = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    DateTime::from_timestamp_millis(millis as i64)
}

/// A sequence-number key part read back.
pub(crate) fn seq_part(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

/// A timer as read back from the due-time index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerKey {
    pub due: DateTime<Utc>,
    pub run: String,
    pub name: String,
}

impl TimerKey {
    pub fn key(&self) -> Key<'_> {
        Key::Timer {
            due: self.due,
            run: &self.run,
            name: &self.name,
        }
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<TimerKey> {
        let rest = raw.strip_prefix(b"t/")?;
        let due = time_part(rest)?;
        let (run, name) = std::str::from_utf8(rest.get(8..)?).ok()?.split_once('\0')?;
        Some(TimerKey {
            due,
            run: run.to_owned(),
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family, with the partition it belongs to. The `match` makes a new family a compile
    /// error here until its partition is decided.
    #[test]
    fn every_family_has_a_partition() {
        let at = DateTime::from_timestamp_millis(1_700_000_000_000).expect("time");
        let run = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let effect = format!("{run}/revoke/0");
        let cases: Vec<(Key<'_>, Partition<'_>)> = vec![
            (Key::Meta(FORMAT), Partition::Control),
            (Key::Meta(AUDIT_HEAD), Partition::Own),
            (Key::Meta(AUDIT_CHECKPOINT), Partition::Own),
            (Key::Meta(LOGGED), Partition::Own),
            (Key::Meta(COUNTERS), Partition::Own),
            (Key::Meta(EVENTS_PUBLISHED), Partition::Own),
            (Key::Meta("something else"), Partition::Control),
            (Key::Run(run), Partition::Run(run)),
            (
                Key::RunOfKey("openai:key:1", run),
                Partition::RunKey("openai:key:1"),
            ),
            (Key::RunOfPlaybook("revoke", run), Partition::Run(run)),
            (Key::Active(run), Partition::Run(run)),
            (Key::RunAudit(run, 7), Partition::Run(run)),
            (Key::Gate(run, "decide"), Partition::Run(run)),
            (
                Key::Timer {
                    due: at,
                    run,
                    name: "notify:decide",
                },
                Partition::Run(run),
            ),
            (Key::Effect(&effect), Partition::Run(run)),
            (
                Key::Open("revoke", "openai:key:1"),
                Partition::RunKey("openai:key:1"),
            ),
            (
                Key::Queued("revoke", "openai:key:1", 3),
                Partition::RunKey("openai:key:1"),
            ),
            (Key::Seen("finding-1"), Partition::Intake),
            (Key::SeenExpiry(at, "finding-1"), Partition::Intake),
            (Key::Ended(at, run), Partition::Run(run)),
            (Key::PlaybookVersion("sha256:ab"), Partition::Control),
            (Key::PlaybookHistory("revoke", at), Partition::Control),
            (Key::PlaybookLoadedBy("revoke", at), Partition::Control),
            (Key::PlaybookDisabled("revoke"), Partition::Control),
            (Key::Schedule("review"), Partition::Playbook("review")),
            (Key::PlaybookState("review"), Partition::Playbook("review")),
            (Key::Audit(1), Partition::Own),
            (Key::SafetyUse(at, &effect), Partition::Safety),
            (Key::SafetyWait("hold", run), Partition::Run(run)),
            (Key::Identity("project_key:key_1"), Partition::Estate),
            (
                Key::IdentityHistory("project_key:key_1", 4),
                Partition::Estate,
            ),
            (Key::Attributes("project_key:key_1"), Partition::Estate),
            (
                Key::InventoryFinding("project_key:key_1", "unused"),
                Partition::Estate,
            ),
            (Key::InventoryMeta("sequence"), Partition::Estate),
            (Key::Campaign("c1"), Partition::Estate),
            (Key::CampaignChunk("c1", 2), Partition::Estate),
        ];
        for (key, partition) in &cases {
            assert_eq!(key.partition(), *partition, "{key:?}");
        }
        // Every family is listed above (a new one fails to compile until it is).
        let families: std::collections::BTreeSet<&str> = cases
            .iter()
            .map(|(key, _)| match key {
                Key::Meta(_) => "meta",
                Key::Run(_) => "run",
                Key::RunOfKey(..) => "run_of_key",
                Key::RunOfPlaybook(..) => "run_of_playbook",
                Key::Active(_) => "active",
                Key::RunAudit(..) => "run_audit",
                Key::Gate(..) => "gate",
                Key::Timer { .. } => "timer",
                Key::Open(..) => "open",
                Key::Queued(..) => "queued",
                Key::Seen(_) => "seen",
                Key::SeenExpiry(..) => "seen_expiry",
                Key::Ended(..) => "ended",
                Key::Effect(_) => "effect",
                Key::PlaybookVersion(_) => "playbook_version",
                Key::PlaybookHistory(..) => "playbook_history",
                Key::PlaybookLoadedBy(..) => "playbook_loaded_by",
                Key::Schedule(_) => "schedule",
                Key::PlaybookState(_) => "playbook_state",
                Key::PlaybookDisabled(_) => "playbook_disabled",
                Key::Audit(_) => "audit",
                Key::SafetyUse(..) => "safety_use",
                Key::SafetyWait(..) => "safety_wait",
                Key::Identity(_) => "identity",
                Key::IdentityHistory(..) => "identity_history",
                Key::Attributes(_) => "attributes",
                Key::InventoryFinding(..) => "inventory_finding",
                Key::InventoryMeta(_) => "inventory_meta",
                Key::Campaign(_) => "campaign",
                Key::CampaignChunk(..) => "campaign_chunk",
            })
            .collect();
        assert_eq!(families.len(), 30, "{families:?}");
    }

    /// The encoding is the on-disk format (version 1): these bytes must not change.
    #[test]
    fn keys_encode_as_format_version_1() {
        let at = DateTime::from_timestamp_millis(0x0102).expect("time");
        assert_eq!(Key::Run("r1").encode(), b"r/r1");
        assert_eq!(Key::RunOfKey("k", "r1").encode(), b"rk/k\0r1");
        assert_eq!(Key::RunOfPlaybook("p", "r1").encode(), b"rp/p\0r1");
        assert_eq!(Key::Gate("r1", "s").encode(), b"g/r1\0s");
        assert_eq!(
            Key::Timer {
                due: at,
                run: "r1",
                name: "n"
            }
            .encode(),
            b"t/\0\0\0\0\0\0\x01\x02r1\0n"
        );
        assert_eq!(
            Key::Queued("p", "k", 1).encode(),
            b"q/p\0k\0\0\0\0\0\0\0\0\x01"
        );
        assert_eq!(
            Key::SeenExpiry(at, "f").encode(),
            b"fx/\0\0\0\0\0\0\x01\x02f"
        );
        assert_eq!(Key::Audit(2).encode(), b"a/\0\0\0\0\0\0\0\x02");
        assert_eq!(Key::Campaign("c1").encode(), b"c/c1");
        assert_eq!(Key::CampaignChunk("c1", 2).encode(), b"cc/c1\0\0\0\0\x02");
        let timer = TimerKey::decode(
            &Key::Timer {
                due: at,
                run: "r1",
                name: "n",
            }
            .encode(),
        );
        assert_eq!(
            timer,
            Some(TimerKey {
                due: at,
                run: "r1".to_owned(),
                name: "n".to_owned()
            })
        );
    }
}
