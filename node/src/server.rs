//! Wiring: storage -> MVCC -> Raft -> services -> listeners, then serve until SIGINT or
//! SIGTERM, or until raft reports a fatal failure, which returns an error at once (no
//! graceful shutdown) so the process exits non-zero. A signal stops gracefully, as etcd
//! does: client listeners stop accepting, a leader hands its leadership to a caught-up
//! voter while the requests in flight finish (bounded), then the peer listeners and raft
//! stop and the process exits 0. systemd hears `READY=1` once the member serves clients.
//! Nothing here decides behaviour; it connects the modules that do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use url::Url;

use crate::api;
use crate::auth::{AuthStore, Rbac, Tokens};
use crate::backup::{BackupOptions, Backups};
use crate::config::{ClusterState, Config, ListenerOptions, MetricsLevel};
use crate::core::{self, Core, Hooks, Limits, Parts, ReadPool};
use crate::identity::Identity;
use crate::lease::{LeaseError, Lessor, LessorConfig};
use crate::mvcc::{Mvcc, MvccError};
use crate::raft::{MemberInfo, RaftError, RaftNode, RaftSettings};
use crate::storage::{StorageError, Store, StoreOptions};
use crate::tls::{self, ServerTls};
use crate::watch::{WatchError, WatchHub};

/// Why the node could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("opening the MVCC store: {0}")]
    Mvcc(#[from] MvccError),
    #[error("opening the lease table: {0}")]
    Lease(#[from] LeaseError),
    #[error("opening the auth store: {0}")]
    Auth(#[from] crate::auth::TableError),
    /// A JWT key file of `--auth-token`; the message names the option and the file.
    #[error(transparent)]
    AuthKey(#[from] crate::auth::jwt::KeyError),
    #[error("starting raft: {0}")]
    Raft(#[from] RaftError),
    #[error("starting the watch hub: {0}")]
    Watch(#[from] WatchError),
    #[error("starting the read threads: {0}")]
    ReadPool(std::io::Error),
    #[error("{flag} {url}: cannot listen: {source}")]
    Listen {
        flag: &'static str,
        url: Url,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("serving {0}: {1}")]
    Serve(SocketAddr, std::io::Error),
    /// `--experimental-initial-corrupt-check` found this member's data differs.
    #[error(transparent)]
    Inconsistent(#[from] core::Inconsistent),
    #[error("joining the existing cluster: {0}")]
    Join(String),
    /// A configured plugin could not be loaded (issue 12); the message names it.
    #[error(transparent)]
    Plugins(#[from] crate::plugins::PluginError),
    #[error("stopped on a fatal error: {0}")]
    Failed(RaftError),
}

/// Runs a node until it is told to stop.
pub async fn run(cfg: Config) -> Result<(), ServerError> {
    // Before anything is opened, so a bad certificate file is the only thing reported.
    // (Auto TLS creates its certificates under the data directory first.)
    let tls::NodeTls {
        client: client_tls,
        peer: peer_tls,
        peer_client,
    } = tls::start(&cfg)?;
    let tokens = Tokens::load(&cfg.auth)?;
    let options = StoreOptions {
        fault: cfg.unsafe_storage_fault,
        skip_fsync: cfg.unsafe_no_fsync,
        wal_dir: cfg.wal_dir.clone(),
    };
    if cfg.unsafe_no_fsync {
        tracing::warn!("--unsafe-no-fsync: writes are not fsynced; a machine crash loses data");
    }
    let store = Arc::new(Store::open_with(&cfg.data_dir, &options)?);
    let peer_urls = url_strings(&cfg.initial_advertise_peer_urls);
    let (id, mut initial_peers, join_existing) =
        identity(&cfg, &store, &peer_urls, peer_client.as_ref()).await?;
    initial_peers.remove(&id.member_id);
    let mvcc = Arc::new(Mvcc::open(store.clone())?);
    let lessor = Arc::new(Lessor::open(
        &store,
        LessorConfig {
            checkpoints: cfg.lease_checkpoints,
            ..LessorConfig::new(cfg.heartbeat_interval, cfg.election_timeout, id.member_id)
        },
    )?);
    let auth = AuthStore::open(&store, cfg.auth.clone(), tokens)?;
    // Before raft, so entries replayed at start-up are dispatched like any others.
    let watch = Arc::new(WatchHub::start(
        mvcc.clone(),
        cfg.watch_progress_notify_interval,
    )?);
    let member = MemberInfo {
        name: cfg.name.clone(),
        peer_urls,
        client_urls: url_strings(&cfg.advertise_client_urls),
    };
    let raft = RaftNode::start(
        store.clone(),
        mvcc.clone(),
        lessor.clone(),
        RaftSettings {
            node_id: id.member_id,
            member,
            initial_peers,
            join_existing,
            cluster_id: id.cluster_id,
            heartbeat: cfg.heartbeat_interval,
            election_timeout: cfg.election_timeout,
            snapshot_count: cfg.snapshot_count,
            snapshot_catchup_entries: cfg.snapshot_catchup_entries,
            watch: Some(watch.clone()),
            auth: Some(auth.clone()),
            strict_reconfig_check: cfg.strict_reconfig_check,
            max_learners: cfg.max_learners,
            force_new_cluster: cfg.force_new_cluster,
            peer_tls: peer_client.clone(),
        },
    )
    .await?;
    publish_identity(&id, cfg.quota_backend_bytes);
    if cfg.metrics == MetricsLevel::Basic {
        crate::metrics::get().omit_extensive();
    }

    // Plugins (issue 12): loaded before serving, so a bad plugin fails start-up. With a
    // config file the hook is installed even when the list is empty, so a reload can add
    // plugins; without one there is nothing to reload and no hook (the plugin endpoints
    // then list nothing and refuse reloads).
    let mut hooks = Hooks::default();
    let plugins = crate::plugins::Plugins::start(
        cfg.config_file.clone(),
        &cfg.plugins,
        Arc::new(crate::plugins::MvccState(mvcc.clone())),
    )
    .await?;
    if cfg.config_file.is_some() {
        hooks.admission = Some(Box::new(crate::plugins::PluginAdmission::new(
            plugins.clone(),
        )));
        // Installed whatever the list holds now: a reload may add auth plugins. Without
        // one serving, they call nothing and leave authentication off.
        hooks
            .authenticators
            .push(Box::new(crate::plugins::PluginAuth::new(plugins.clone())));
        hooks
            .authorizers
            .push(Box::new(crate::plugins::PluginAuth::new(plugins.clone())));
        tokio::spawn(reload_on_sighup(plugins.clone()));
    }
    // etcd's own auth judges every request (authorizers intersect, so auth plugins may only
    // narrow it); it looks at credentials after the auth plugins, which claim their own.
    let rbac = || {
        Box::new(Rbac::new(
            auth.clone(),
            mvcc.clone(),
            cfg.client_tls.client_cert_auth,
        ))
    };
    hooks.authenticators.push(rbac());
    hooks.authorizers.push(rbac());
    let core = Core::new(Parts {
        raft: raft.clone(),
        mvcc,
        lessor,
        store,
        watch,
        cluster_id: id.cluster_id,
        member_id: id.member_id,
        limits: Limits {
            max_request_bytes: usize::try_from(cfg.max_request_bytes).unwrap_or(usize::MAX),
            max_txn_ops: usize::try_from(cfg.max_txn_ops).unwrap_or(usize::MAX),
            quota_backend_bytes: cfg.quota_backend_bytes,
        },
        auth,
        hooks,
        reads: read_pool()?,
        alarm_settings: cfg.alarms.clone(),
    });
    if cfg.alarms.initial_corrupt_check {
        core.initial_corrupt_check().await?;
    }
    core::spawn_alarm_monitor(core.clone());
    crate::compactor::spawn(core.clone(), &cfg.auto_compaction);
    core::spawn_lease_expiry(core.clone());

    let backups = cfg.backup_dir.clone().map(|dir| {
        let options = BackupOptions {
            dir,
            member: cfg.name.clone(),
            retention: cfg.backup_retention,
            plugins: cfg.backup_plugins.clone(),
        };
        Arc::new(Backups::new(core.clone(), plugins.clone(), options))
    });
    if let (Some(backups), Some(interval)) = (&backups, cfg.backup_interval) {
        crate::backup::spawn_periodic(backups.clone(), interval);
    }

    // Client-facing listeners stop first on a shutdown, the peer listeners last: a leader
    // hands over its leadership through its peers after it has stopped taking requests.
    let (stop_clients, client_stop) = watch::channel(false);
    let (stop_peers, peer_stop) = watch::channel(false);
    let mut clients = JoinSet::new();
    let mut peers = JoinSet::new();
    let mut client_router = api::router(core.clone(), plugins, cfg.enable_grpc_gateway)
        .merge(api::http::backup_router(backups.clone()));
    if cfg.enable_pprof {
        client_router = client_router.merge(crate::pprof::router());
    }
    let options = cfg.listener;
    // etcd serves only HTTP on --listen-client-http-urls; cairn serves the whole client
    // router there, which is a superset.
    let client_listeners = [
        ("--listen-client-urls", &cfg.listen_client_urls),
        ("--listen-client-http-urls", &cfg.listen_client_http_urls),
    ];
    for (flag, urls) in client_listeners {
        for url in urls {
            let listener = bind(flag, url, options).await?;
            let tls = secure(url, &client_tls);
            let stop = client_stop.clone();
            clients.spawn(serve(listener, client_router.clone(), options, tls, stop));
        }
    }
    for url in &cfg.listen_peer_urls {
        let listener = bind("--listen-peer-urls", url, options).await?;
        let router = api::peer::router(core.clone());
        let tls = secure(url, &peer_tls);
        peers.spawn(serve(listener, router, options, tls, peer_stop.clone()));
    }
    for url in &cfg.listen_metrics_urls {
        let listener = bind("--listen-metrics-urls", url, options).await?;
        let router =
            api::metrics_router(core.clone()).merge(api::http::backup_router(backups.clone()));
        let tls = secure(url, &client_tls);
        clients.spawn(serve(listener, router, options, tls, client_stop.clone()));
    }
    tracing::info!(
        name = %cfg.name,
        member_id = %format!("{:x}", id.member_id),
        cluster_id = %format!("{:x}", id.cluster_id),
        data_dir = %cfg.data_dir.display(),
        "ready to serve client requests"
    );
    let readiness = tokio::spawn(notify_when_serving(core.clone()));

    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        // Fail safe: no graceful shutdown, which would go on serving reads meanwhile.
        e = raft.failed() => return Err(ServerError::Failed(e)),
        Some(done) = clients.join_next() => listener_ended(done),
        Some(done) = peers.join_next() => listener_ended(done),
    };
    readiness.abort();
    crate::notify::stopping();
    // etcd's `Etcd.Close` then `EtcdServer.Stop`: no new requests, leadership handed over
    // while the requests in flight finish (bounded), then raft stops and flushes.
    let _ = stop_clients.send(true);
    tokio::select! {
        e = raft.failed() => return Err(ServerError::Failed(e)),
        transferred = raft.transfer_leadership() => if let Err(e) = transferred {
            tracing::warn!(local_member_id = %format!("{:x}", id.member_id), error = %e, "leadership transfer failed");
        },
    }
    while clients.join_next().await.is_some() {}
    let _ = stop_peers.send(true);
    while peers.join_next().await.is_some() {}
    raft.shutdown().await;
    tracing::info!(name = %cfg.name, "stopped");
    result
}

/// A listener task that ended before shutdown: its error, or a panic's.
fn listener_ended(
    done: Result<Result<(), ServerError>, tokio::task::JoinError>,
) -> Result<(), ServerError> {
    match done {
        Ok(result) => result,
        Err(e) => Err(ServerError::Serve(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            std::io::Error::other(e),
        )),
    }
}

/// systemd's `READY=1`, as etcd sends it once its server is ready (it has published
/// itself to the cluster): here, once a linearizable read succeeds, which needs a leader
/// and this member's state caught up with it, so a client's request can succeed.
async fn notify_when_serving(core: Arc<Core>) {
    while core
        .check(core::HealthCheck::LinearizableRead)
        .await
        .is_err()
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    crate::notify::ready();
}

/// The read pool: one thread per CPU, so a burst of huge reads takes at most the machine's
/// CPUs (at low priority); RangeStreams, which wait on their clients, get threads of their
/// own, a few per CPU.
fn read_pool() -> Result<ReadPool, ServerError> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    ReadPool::start(cpus, 4 * cpus).map_err(ServerError::ReadPool)
}

/// Who this member is and whom it starts with: the stored identity on a restart; on a
/// first start with `--initial-cluster-state new` the IDs etcd derives from
/// `--initial-cluster`; with `existing`, the cluster ID and member ID the running members
/// know (the member must have been added with `etcdctl member add` first). The flag says
/// whether to wait for the leader instead of initializing a cluster.
async fn identity(
    cfg: &Config,
    store: &Store,
    peer_urls: &[String],
    peer_tls: Option<&Arc<tls::PeerClientTls>>,
) -> Result<(Identity, BTreeMap<u64, MemberInfo>, bool), ServerError> {
    let initial = initial_members(&cfg.initial_cluster, &cfg.initial_cluster_token);
    if let Some(id) = Identity::load(store)? {
        return Ok((
            id,
            initial,
            cfg.initial_cluster_state == ClusterState::Existing,
        ));
    }
    if cfg.initial_cluster_state == ClusterState::New {
        let ids: Vec<u64> = initial.keys().copied().collect();
        let id = Identity::load_or_init(store, peer_urls, &cfg.initial_cluster_token, &ids)?;
        return Ok((id, initial, false));
    }
    let others: Vec<String> = initial
        .values()
        .filter(|m| m.peer_urls != peer_urls)
        .flat_map(|m| m.peer_urls.clone())
        .collect();
    let (cluster_id, members) =
        crate::raft::network::fetch_cluster(&others, JOIN_TIMEOUT, peer_tls)
            .await
            .map_err(|e| ServerError::Join(e.to_string()))?;
    let mut mine = peer_urls.to_vec();
    mine.sort();
    let member_id = members
        .iter()
        .find(|(_, m)| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls == mine
        })
        .map(|(id, _)| *id)
        .ok_or_else(|| {
            ServerError::Join(format!(
                "no member of cluster {cluster_id:x} has the peer URLs {}; add this member with `etcdctl member add` first",
                peer_urls.join(",")
            ))
        })?;
    let id = Identity {
        member_id,
        cluster_id,
    };
    id.save(store)?;
    Ok((id, members.into_iter().collect(), true))
}

/// How long a joining member waits for a peer's member list.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The members of `--initial-cluster` by member ID (etcd's algorithm, see `identity`), a
/// name's URLs grouped as etcd groups them.
pub fn initial_members(cluster: &[(String, Url)], token: &str) -> BTreeMap<u64, MemberInfo> {
    let mut by_name: BTreeMap<&str, Vec<Url>> = BTreeMap::new();
    for (name, url) in cluster {
        by_name.entry(name).or_default().push(url.clone());
    }
    by_name
        .into_iter()
        .map(|(name, urls)| {
            let peer_urls = url_strings(&urls);
            let id = crate::identity::member_id(&peer_urls, token);
            let member = MemberInfo {
                name: name.to_string(),
                peer_urls,
                client_urls: Vec::new(),
            };
            (id, member)
        })
        .collect()
}

/// etcd writes URLs as `scheme://host:port`, without the trailing slash `Url` adds; member
/// IDs hash these strings, so the form matters.
fn url_strings(urls: &[Url]) -> Vec<String> {
    urls.iter()
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .collect()
}

fn publish_identity(id: &Identity, quota: u64) {
    let m = crate::metrics::get();
    m.server_id
        .with_label_values(&[&format!("{:x}", id.member_id)])
        .set(1);
    m.server_version
        .with_label_values(&[core::ETCD_SERVER_VERSION])
        .set(1);
    m.cluster_version
        .with_label_values(&[core::ETCD_CLUSTER_VERSION])
        .set(1);
    m.quota_backend_bytes
        .set(i64::try_from(quota).unwrap_or(i64::MAX));
}

/// Binds a listen URL. Like etcd, a host name is resolved and the first IPv4 address is
/// preferred, so `localhost` means 127.0.0.1.
async fn bind(
    flag: &'static str,
    url: &Url,
    options: ListenerOptions,
) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Listen {
        flag,
        url: url.clone(),
        source,
    };
    let host = url.host_str().unwrap_or("0.0.0.0");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(2379);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(err)?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| err(std::io::Error::other("host resolves to no address")))?;
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(err)?;
    // Go's listeners (so etcd's) set SO_REUSEADDR by default, so a restarted server binds
    // while its old connections sit in TIME_WAIT; --socket-reuse-address asks the same.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_reuseport(options.reuse_port).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// The acceptor for `url`: https URLs are served over TLS, http ones in the clear (both
/// may be listed, as in etcd).
fn secure(url: &Url, tls: &Option<Arc<ServerTls>>) -> Option<Arc<ServerTls>> {
    tls.clone().filter(|_| url.scheme() == "https")
}

/// The accept queue length: tokio's own default for `TcpListener::bind`.
const LISTEN_BACKLOG: u32 = 1024;

/// Serves `router` on `listener`, HTTP/1 and HTTP/2 (gRPC) on the same port, with the
/// configured HTTP/2 keepalive and stream limit (which `axum::serve` cannot set).
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    options: ListenerOptions,
    tls: Option<Arc<ServerTls>>,
    stop: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Serve(SocketAddr::from(([0, 0, 0, 0], 0)), e))?;
    api::listen::serve(listener, router, options, tls, stop)
        .await
        .map_err(|e| ServerError::Serve(addr, e))
}

/// SIGHUP reloads the plugins, as `cairn plugin reload` does; the outcome goes to the log.
async fn reload_on_sighup(plugins: Arc<crate::plugins::Plugins>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; plugin reload only through the API");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("received SIGHUP, reloading plugins");
        if let Err(e) = plugins.reload().await {
            tracing::warn!(error = %e, "plugin reload failed");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("received shutdown signal, stopping");
}
