//! Cluster mode's parts (ARCHITECTURE.md, "Several runners on a NATS cluster"): the partition
//! map, leases on partitions in a KV bucket, each partition's fenced journal on JetStream, and its
//! snapshots in the object store. Not yet wired into `quench serve`,
//! which keeps every partition in sled.

pub mod journal;
pub mod owners;
pub mod partition;
pub mod snapshot;
pub mod store;
