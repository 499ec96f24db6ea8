//! The pipeline against a real store and a single-voter raft in a temp dir: the hooks run
//! in order, once per context, and a refusal stops a request before it reaches the log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::hooks::{Admission, Authenticator, Authorizer};
use super::*;
use crate::auth::{AuthSettings, AuthStore, TokenType, Tokens};
use crate::lease::{Lessor, LessorConfig};
use crate::proto::etcdserverpb::{PutRequest, RangeRequest, TxnRequest};
use crate::raft::{MemberInfo, RaftSettings};
use crate::watch::DEFAULT_PROGRESS_INTERVAL;

/// Records every hook call; refuses what it is told to refuse.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    deny_writes: bool,
    deny_admission: bool,
}

impl Recorder {
    fn log(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().expect("calls"))
    }
}

/// The three hooks, sharing one recorder.
struct Hook(Arc<Recorder>);

#[async_trait]
impl Authenticator for Hook {
    async fn authenticate(&self, ctx: &RequestContext) -> Result<Option<Principal>, Error> {
        self.0.log("authenticate".into());
        Ok(Some(Principal {
            name: ctx.credentials.token.clone().unwrap_or_default(),
            source: PrincipalSource::User { auth_revision: 1 },
            roles: Vec::new(),
        }))
    }
}

#[async_trait]
impl Authorizer for Hook {
    async fn authorize(&self, principal: &Principal, op: &Operation<'_>) -> Result<(), Error> {
        let writes = op.key_access().iter().any(|a| a.write);
        self.0
            .log(format!("authorize {} write={writes}", principal.name));
        if writes && self.0.deny_writes {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }
}

#[async_trait]
impl Admission for Hook {
    async fn admit(&self, _ctx: &RequestContext, txn: TxnRequest) -> Result<TxnRequest, Error> {
        self.0.log("admit".into());
        if self.0.deny_admission {
            return Err(Error::Denied("values must be JSON".into()));
        }
        Ok(txn)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    core: Arc<Core>,
    raft: Arc<RaftNode>,
}

async fn start(recorder: Arc<Recorder>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let mvcc = Arc::new(Mvcc::open(store.clone()).expect("mvcc"));
    let config = LessorConfig::new(Duration::from_millis(50), Duration::from_millis(300), 1);
    let lessor = Arc::new(Lessor::open(&store, config).expect("lessor"));
    let watch = Arc::new(WatchHub::start(mvcc.clone(), DEFAULT_PROGRESS_INTERVAL).expect("hub"));
    let settings = AuthSettings {
        bcrypt_cost: 4,
        token_ttl: Duration::from_secs(300),
        token: TokenType::Simple,
    };
    let tokens = Tokens::load(&settings).expect("simple tokens");
    let auth = AuthStore::open(&store, settings, tokens).expect("auth store");
    let settings = RaftSettings {
        node_id: 1,
        member: MemberInfo::default(),
        initial_peers: Default::default(),
        join_existing: false,
        cluster_id: 7,
        heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
        snapshot_count: 0,
        snapshot_catchup_entries: 5000,
        watch: Some(watch.clone()),
        auth: Some(auth.clone()),
        strict_reconfig_check: true,
        max_learners: 1,
        force_new_cluster: false,
        peer_tls: None,
    };
    let raft = RaftNode::start(store.clone(), mvcc.clone(), lessor.clone(), settings)
        .await
        .expect("raft");
    let core = Core::new(Parts {
        raft: raft.clone(),
        mvcc,
        lessor,
        store,
        watch,
        cluster_id: 7,
        member_id: 1,
        limits: Limits {
            max_request_bytes: 1 << 20,
            max_txn_ops: 128,
            quota_backend_bytes: u64::MAX,
        },
        auth,
        hooks: Hooks {
            authenticators: vec![Box::new(Hook(recorder.clone()))],
            authorizers: vec![Box::new(Hook(recorder.clone()))],
            admission: Some(Box::new(Hook(recorder))),
        },
        reads: ReadPool::start(1, 1).expect("read pool"),
        alarm_settings: Default::default(),
    });
    Fixture {
        _dir: dir,
        core,
        raft,
    }
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

fn grpc_ctx(token: &str) -> RequestContext {
    let mut ctx = RequestContext::new(Transport::Grpc, None);
    ctx.credentials.token = Some(token.into());
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_pipeline_order_once_per_context() {
    let recorder = Arc::new(Recorder::default());
    let f = start(recorder.clone()).await;
    let ctx = grpc_ctx("alice");
    let resp = f.core.put(&ctx, put("a")).await.expect("put");
    let header = resp.header.expect("header");
    assert_eq!(
        (header.cluster_id, header.member_id, header.revision),
        (7, 1, 2)
    );
    assert_eq!(
        recorder.calls(),
        ["authenticate", "authorize alice write=true", "admit"]
    );
    // The same context is authenticated once; a read is authorized but never admitted.
    let range = RangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    };
    f.core.range(&ctx, range).await.expect("range");
    assert_eq!(recorder.calls(), ["authorize alice write=false"]);
    // Validation comes first: an invalid request reaches no hook.
    let err = f
        .core
        .put(&grpc_ctx("bob"), put(""))
        .await
        .expect_err("empty key");
    assert!(matches!(err, Error::EmptyKey));
    assert!(recorder.calls().is_empty());
    // The node's own requests skip authorization and admission.
    let internal = RequestContext::internal();
    f.core.put(&internal, put("b")).await.expect("internal put");
    assert!(recorder.calls().is_empty());
    f.raft.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_never_reach_the_log() {
    for (deny_writes, deny_admission, want) in [
        (true, false, "etcdserver: permission denied"),
        (false, true, "values must be JSON"),
    ] {
        let recorder = Arc::new(Recorder {
            deny_writes,
            deny_admission,
            ..Default::default()
        });
        let f = start(recorder).await;
        let before = f.raft.status().commit_index;
        let err = f
            .core
            .put(&grpc_ctx("eve"), put("a"))
            .await
            .expect_err("refused");
        assert_eq!(err.to_string(), want);
        assert_eq!(f.raft.status().commit_index, before);
        assert_eq!(f.core.current_revision(), 1);
        f.raft.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_ends_the_request() {
    let f = start(Arc::new(Recorder::default())).await;
    let mut ctx = grpc_ctx("slow");
    ctx.deadline = Some(std::time::Instant::now());
    let err = f.core.put(&ctx, put("a")).await.expect_err("deadline");
    assert!(matches!(err, Error::DeadlineExceeded), "{err}");
    f.raft.shutdown().await;
}
