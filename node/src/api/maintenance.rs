//! etcd's Maintenance service: status and alarms for `etcdctl endpoint status/health` and
//! `alarm list`; defragment is a no-op because fjall compacts in the background.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::{metered, Node, ETCD_SERVER_VERSION};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, maintenance_server::Maintenance, AlarmMember, AlarmRequest,
    AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};

const SERVICE: &str = "etcdserverpb.Maintenance";

pub struct MaintenanceService(pub Arc<Node>);

impl Node {
    fn status(&self) -> StatusResponse {
        let raft = self.raft.status();
        let db_size = i64::try_from(self.store.disk_space()).unwrap_or(i64::MAX);
        StatusResponse {
            header: self.header(self.mvcc.current_revision()),
            version: ETCD_SERVER_VERSION.to_string(),
            db_size,
            // An LSM has no free pages to reclaim, so everything it holds is in use.
            db_size_in_use: db_size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            db_size_quota: i64::try_from(self.limits.quota_backend_bytes).unwrap_or(i64::MAX),
            ..Default::default()
        }
    }

    /// Alarms are derived from the current state rather than stored: NOSPACE holds exactly
    /// while the database is over quota.
    pub(super) fn alarms(&self) -> Vec<AlarmMember> {
        if self.over_quota() {
            vec![AlarmMember {
                member_id: self.member_id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        }
    }

    fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, ApiError> {
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => Ok(AlarmResponse {
                header: self.header(self.mvcc.current_revision()),
                alarms: self.alarms(),
            }),
            _ => Err(ApiError::NotSupported("raising alarms by hand")),
        }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        metered(SERVICE, "Alarm", async { self.0.alarm(req.into_inner()) }).await
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        metered(SERVICE, "Status", async { Ok(self.0.status()) }).await
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let header = self.0.header(self.0.mvcc.current_revision());
        metered(SERVICE, "Defragment", async {
            Ok(DefragmentResponse { header })
        })
        .await
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        metered(SERVICE, "Hash", async {
            Err(ApiError::NotSupported("Hash"))
        })
        .await
    }

    async fn hash_kv(
        &self,
        _req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        metered(SERVICE, "HashKV", async {
            Err(ApiError::NotSupported("HashKV"))
        })
        .await
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        Err(ApiError::NotSupported("snapshot").into())
    }

    async fn move_leader(
        &self,
        _req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        metered(SERVICE, "MoveLeader", async {
            Err(ApiError::NotSupported("MoveLeader"))
        })
        .await
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        metered(SERVICE, "Downgrade", async {
            Err(ApiError::NotSupported("Downgrade"))
        })
        .await
    }
}
