//! The partition map: which of a cluster's `P` partitions a run key belongs to, and which live
//! runner should own each partition (rendezvous hashing, so a member joining or leaving moves
//! only the partitions it gains or loses).

use sha2::{Digest, Sha256};

/// The most partitions a cluster may have: a run id holds its partition in 16 bits, and more
/// would only add journals, leases and consumers without spreading the load any further.
pub use quench_common::config::MAX_PARTITIONS;

/// One partition of a cluster's `count`: what an engine serving it needs to know to mint run
/// ids that name it and to start only the runs that live in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    pub count: u32,
}

impl Slot {
    /// A store that is not split: every key lives in it.
    pub const ALONE: Slot = Slot { index: 0, count: 1 };

    /// Whether the run key `key` lives in this partition.
    pub fn holds(self, key: &str) -> bool {
        self.count <= 1 || of_key(key, self.count) == self.index
    }

    /// Whether this partition fires the scheduled playbooks: partition 0, which holds the
    /// estate (the inventory scheduled reviews read, the campaigns they start).
    pub fn fires_schedules(self) -> bool {
        self.index == 0
    }

    /// A new run id: a UUIDv7 (sorting by creation time) whose last 16 bits are this
    /// partition's number when the store is split, so any runner routes by the id alone.
    pub fn run_id(self) -> String {
        let mut id = *uuid::Uuid::now_v7().as_bytes();
        if self.count > 1 {
            let index = u16::try_from(self.index).unwrap_or(u16::MAX);
            id[14..].copy_from_slice(&index.to_be_bytes());
        }
        uuid::Uuid::from_bytes(id).to_string()
    }
}

/// The partition a run id minted by [`Slot::run_id`] names among `partitions`; `None` for
/// text that is not a UUID or names no partition of this cluster.
pub fn of_run_id(id: &str, partitions: u32) -> Option<u32> {
    let id = uuid::Uuid::parse_str(id).ok()?;
    if partitions <= 1 {
        return Some(0);
    }
    let bytes = id.as_bytes();
    let index = u32::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    (index < partitions).then_some(index)
}

/// The partition of a run key among `partitions`: the first 8 bytes of its SHA-256,
/// big-endian, modulo the count (stable across versions and platforms).
pub fn of_key(key: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(partitions.max(1))) as u32
}

/// The member that should own `partition`: the one with the highest score of
/// SHA-256(member, partition) (rendezvous hashing). `None` without members.
pub fn owner<'a>(partition: u32, members: &[&'a str]) -> Option<&'a str> {
    members
        .iter()
        .map(|member| {
            let mut hasher = Sha256::new();
            hasher.update(member.as_bytes());
            hasher.update([0]);
            hasher.update(partition.to_be_bytes());
            (hasher.finalize(), *member)
        })
        .max()
        .map(|(_, member)| member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        // Fixed values: the map is part of a cluster's format.
        assert_eq!(
            of_key("openai:key:key_abc", 64),
            of_key("openai:key:key_abc", 64)
        );
        assert!(of_key("openai:key:key_abc", 64) < 64);
        assert_eq!(of_key("anything", 1), 0);
        assert_eq!(of_key("anything", 0), 0);
    }

    #[test]
    fn a_member_leaving_moves_only_its_partitions() {
        let three = ["runner-0", "runner-1", "runner-2"];
        let two = ["runner-0", "runner-2"];
        let mut owned = [0usize; 3];
        for partition in 0..64 {
            let before = owner(partition, &three).expect("an owner");
            let after = owner(partition, &two).expect("an owner");
            if before != "runner-1" {
                assert_eq!(before, after, "partition {partition} stays where it was");
            }
            owned[three
                .iter()
                .position(|member| *member == before)
                .expect("a member")] += 1;
        }
        assert!(owned.iter().all(|count| *count >= 10), "spread: {owned:?}");
        assert_eq!(owner(3, &[]), None);
    }

    #[test]
    fn a_run_id_names_its_partition_and_sorts_by_time() {
        for index in [0, 1, 63, MAX_PARTITIONS - 1] {
            let slot = Slot {
                index,
                count: MAX_PARTITIONS,
            };
            let first = slot.run_id();
            let second = slot.run_id();
            assert_eq!(of_run_id(&first, MAX_PARTITIONS), Some(index));
            assert!(first < second, "{first} sorts before {second}");
            assert_eq!(
                uuid::Uuid::parse_str(&first).map(|id| id.get_version_num()),
                Ok(7)
            );
        }
        // A store that is not split keeps plain UUIDv7 ids, all in partition 0.
        assert_eq!(of_run_id(&Slot::ALONE.run_id(), 1), Some(0));
        assert_eq!(of_run_id("not-a-run", 8), None);
        let far = Slot {
            index: 9,
            count: 16,
        }
        .run_id();
        assert_eq!(of_run_id(&far, 8), None, "no partition 9 among 8");
    }

    #[test]
    fn a_slot_holds_the_keys_that_hash_to_it() {
        let slots: Vec<Slot> = (0..8).map(|index| Slot { index, count: 8 }).collect();
        for n in 0..200 {
            let key = format!("openai:key:key_{n}");
            let holders = slots.iter().filter(|slot| slot.holds(&key)).count();
            assert_eq!(holders, 1, "{key} lives in exactly one partition");
        }
        assert!(Slot::ALONE.holds("anything"));
    }
}
