//! Cairn: an etcd-compatible, Raft-replicated key-value node. See ARCHITECTURE.md.
pub mod bench;
pub mod metrics;
pub mod proto;
pub mod storage;
