//! Cairn: an etcd-compatible, Raft-replicated key-value node. See ARCHITECTURE.md.
pub mod api;
pub mod bench;
pub mod compactor;
pub mod config;
pub mod core;
pub mod identity;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod mvcc;
pub mod pprof;
pub mod proto;
pub mod raft;
pub mod server;
pub mod snapshot_cmd;
pub mod storage;
pub mod watch;
