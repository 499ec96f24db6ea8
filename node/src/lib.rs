//! Cairn: an etcd-compatible, Raft-replicated key-value node. See ARCHITECTURE.md.
pub mod metrics;
// STAND-IN: replaced by the real MVCC module at merge.
pub mod mvcc;
pub mod proto;
pub mod raft;
pub mod storage;
