//! Generated protobuf types, and etcd's key-range convention that goes with them: etcd's v3 API (vendored from etcd 3.5/3.6, wire compatible)
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
pub mod nesting;

/// etcd's range end for "every key starting with `prefix`" (what `--prefix` sends): the
/// prefix with its last byte below 0xff incremented, or `\0` (all keys) if there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_ends_as_etcd_computes_them() {
        assert_eq!(super::prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(super::prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(super::prefix_end(&[0xff]), vec![0]);
    }
}
