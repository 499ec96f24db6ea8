//! Generated protobuf types: etcd's v3 API (vendored from etcd 3.5/3.6, wire compatible)
//! and cairn's Raft command. The message types double as cairn's domain types (as etcd
//! itself does); the tonic service traits are used only by `api/`.
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}
