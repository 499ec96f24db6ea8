//! STAND-IN for the MVCC store, written only so `raft/` compiles and tests on its own.
//! It is REPLACED by the real `mvcc` module at merge: do not build on it.
//!
//! It keeps two keys in the `mvcc` keyspace, written atomically in one batch per change:
//! `applied` (the raft apply marker, opaque bytes) and `count` (applies so far, u64 BE, also
//! used as the revision), so tests can see that a restart does not apply an entry twice.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::proto::{etcdserverpb, mvccpb};
use crate::storage::{Keyspace, StorageError, Store};

/// Resolves when a compaction has finished its physical work.
pub type CompactionDone = tokio::sync::oneshot::Receiver<()>;

const APPLIED: &[u8] = b"applied";
const COUNT: &[u8] = b"count";

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub struct Mvcc {
    store: Arc<Store>,
    ks: Keyspace,
    revision: AtomicI64,
    compacted: AtomicI64,
}

impl Mvcc {
    pub fn open(store: Arc<Store>) -> Result<Mvcc, MvccError> {
        let ks = store.keyspace("mvcc")?;
        let count = ks
            .get(COUNT)
            .map_err(|e| store.engine(e))?
            .map_or(0, |v| be_i64(&v));
        Ok(Mvcc {
            store,
            ks,
            revision: AtomicI64::new(count),
            compacted: AtomicI64::new(0),
        })
    }

    pub fn current_revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    pub fn apply_txn(
        &self,
        _req: &etcdserverpb::TxnRequest,
        applied: &[u8],
    ) -> Result<(etcdserverpb::TxnResponse, Vec<mvccpb::Event>), MvccError> {
        let rev = self.current_revision() + 1;
        self.write(rev, applied)?;
        let header = etcdserverpb::ResponseHeader {
            revision: rev,
            ..Default::default()
        };
        Ok((
            etcdserverpb::TxnResponse {
                header: Some(header),
                succeeded: true,
                responses: vec![],
            },
            vec![],
        ))
    }

    pub fn compact(&self, rev: i64, applied: &[u8]) -> Result<CompactionDone, MvccError> {
        if rev > self.current_revision() {
            return Err(MvccError::FutureRev);
        }
        if rev <= self.compacted.load(Ordering::SeqCst) {
            return Err(MvccError::Compacted);
        }
        self.compacted.store(rev, Ordering::SeqCst);
        self.record_applied(applied)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(());
        Ok(rx)
    }

    pub fn record_applied(&self, applied: &[u8]) -> Result<(), MvccError> {
        self.write(self.current_revision(), applied)
    }

    pub fn applied_marker(&self) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(self
            .ks
            .get(APPLIED)
            .map_err(|e| self.store.engine(e))?
            .map(|v| v.to_vec()))
    }

    fn write(&self, rev: i64, applied: &[u8]) -> Result<(), MvccError> {
        let mut batch = self.store.batch();
        batch.insert(&self.ks, APPLIED, applied);
        batch.insert(&self.ks, COUNT, rev.to_be_bytes());
        batch.commit().map_err(|e| self.store.engine(e))?;
        self.revision.store(rev, Ordering::SeqCst);
        Ok(())
    }
}

fn be_i64(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_be_bytes).unwrap_or(0)
}
