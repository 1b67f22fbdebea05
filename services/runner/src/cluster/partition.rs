//! The partition map: which of a cluster's `P` partitions a run key belongs to, and which live
//! runner should own each partition (rendezvous hashing, so a member joining or leaving moves
//! only the partitions it gains or loses).

use sha2::{Digest, Sha256};

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
}
