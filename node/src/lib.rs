//! Cairn: an etcd-compatible, Raft-replicated key-value node. See ARCHITECTURE.md.
pub mod metrics;
pub mod mvcc;
pub mod proto;
pub mod storage;
