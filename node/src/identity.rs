//! The member and cluster IDs, computed exactly as etcd computes them so a cairn started
//! with the same flags as an etcd member gets the same IDs, then persisted: later flag
//! changes cannot change who this member is.
//!
//! Keyspace `meta`: `"member_id"` and `"cluster_id"` -> u64 big-endian.

use sha1::{Digest, Sha1};

use crate::storage::{Keyspace, StorageError, Store};

/// Who this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
}

impl Identity {
    /// Reads the stored identity, or computes and stores it on first start: this member's
    /// ID from its peer URLs, the cluster's from the IDs of every initial member
    /// (`initial_members`, which includes this one).
    pub fn load_or_init(
        store: &Store,
        peer_urls: &[String],
        token: &str,
        initial_members: &[u64],
    ) -> Result<Identity, StorageError> {
        if let Some(id) = Identity::load(store)? {
            return Ok(id);
        }
        let member_id = member_id(peer_urls, token);
        let id = Identity {
            member_id,
            cluster_id: cluster_id(initial_members),
        };
        id.save(store)?;
        Ok(id)
    }

    /// The stored identity, if this data dir has one.
    pub fn load(store: &Store) -> Result<Option<Identity>, StorageError> {
        let meta = store.keyspace("meta")?;
        Ok(
            match (
                read_u64(&meta, "member_id")?,
                read_u64(&meta, "cluster_id")?,
            ) {
                (Some(member_id), Some(cluster_id)) => Some(Identity {
                    member_id,
                    cluster_id,
                }),
                _ => None,
            },
        )
    }

    /// Stores the identity durably (a member joining an existing cluster learns it from
    /// its peers).
    pub fn save(&self, store: &Store) -> Result<(), StorageError> {
        let meta = store.keyspace("meta")?;
        let mut batch = store.batch();
        batch.insert(&meta, "member_id", self.member_id.to_be_bytes());
        batch.insert(&meta, "cluster_id", self.cluster_id.to_be_bytes());
        batch.commit()?;
        store.sync()
    }
}

impl Identity {
    /// Whether `key` of `keyspace` is part of the stored identity (an offline backup
    /// leaves it out).
    pub fn is_identity(keyspace: &str, key: &[u8]) -> bool {
        keyspace == META && [MEMBER_ID, CLUSTER_ID].iter().any(|k| k.as_bytes() == key)
    }
}

const META: &str = "meta";
const MEMBER_ID: &str = "member_id";
const CLUSTER_ID: &str = "cluster_id";

fn read_u64(meta: &Keyspace, key: &str) -> Result<Option<u64>, StorageError> {
    let value = meta.get(key)?;
    Ok(value
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map(u64::from_be_bytes))
}

/// etcd's `computeMemberID`: sha1 of the sorted peer URLs joined, then the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// etcd's `RaftCluster.genID`: sha1 of the sorted member IDs, big-endian.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_match_etcd() {
        // What a default `etcd` (name default, peer http://localhost:2380, token
        // etcd-cluster) reports in `etcdctl member list` and `endpoint status`.
        let member = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{member:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[member])), "cdf818194e3a8c32");
    }

    #[test]
    fn three_member_ids_match_etcd() {
        // etcd 3.5.1 started as `--name infra1 --initial-advertise-peer-urls
        // http://127.0.0.1:12380 --initial-cluster-token etcd-cluster-1` (etcd's Procfile)
        // and its two peers on 22380 and 32380.
        let token = "etcd-cluster-1";
        let ids: Vec<u64> = [12380, 22380, 32380]
            .iter()
            .map(|p| member_id(&[format!("http://127.0.0.1:{p}")], token))
            .collect();
        let names: Vec<String> = ids.iter().map(|id| format!("{id:x}")).collect();
        assert_eq!(
            names,
            ["8211f1d0f64f3269", "91bc3c398fb3c146", "fd422379fda50e48"]
        );
        assert_eq!(format!("{:x}", cluster_id(&ids)), "ef37ad9dc622a7c4");
    }

    #[test]
    fn identity_is_stable_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let urls = vec!["http://localhost:2380".to_string()];
        let first = {
            let store = Store::open(dir.path()).expect("open");
            let id = member_id(&urls, "etcd-cluster");
            Identity::load_or_init(&store, &urls, "etcd-cluster", &[id]).expect("init")
        };
        let store = Store::open(dir.path()).expect("reopen");
        let other = vec!["http://10.0.0.1:2380".to_string()];
        assert_eq!(
            Identity::load_or_init(&store, &other, "x", &[1, 2]).expect("load"),
            first
        );
    }
}
