//! Cairn: an etcd-compatible, Raft-replicated key-value node. See ARCHITECTURE.md.
pub mod config;
pub mod metrics;
pub mod proto;
pub mod storage;
