//! Cluster mode's parts (ARCHITECTURE.md, "Several runners on a NATS cluster"): the partition
//! map, leases on partitions in a KV bucket, and each partition's fenced journal on JetStream. Not yet wired into `quench serve`,
//! which keeps every partition in sled.

pub mod journal;
pub mod owners;
pub mod partition;
