//! Multi-member clusters of the configured server kind (cairn or etcd) on 127.0.0.1, for
//! fault tests: start 3 or 5 members with etcd's clustering flags, find the leader, `kill -9`
//! and restart a member on its data directory, freeze one with SIGSTOP, and partition the
//! network between members.
//!
//! Every member advertises its [`Network`] proxy port as its peer URL and listens on a port
//! of its own behind it, so each directed link between members can be delayed, black-holed
//! or cut (see `proxy.rs`). Clients talk to members directly. When a test panics while a
//! cluster is alive, the end of every member's log is printed.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, ConnectOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::proxy::{LinkFault, Network, NodeId};
use crate::{server_args, Layout, Server, READY_TIMEOUT};

/// How long a cluster may take to agree on a leader before a test gives up.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// How a cluster is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub members: usize,
    /// etcd's `--heartbeat-interval`: short, so that elections after a fault take well under
    /// a second instead of etcd's default of one to two.
    pub heartbeat: Duration,
    /// etcd's `--election-timeout`.
    pub election_timeout: Duration,
    /// More flags for every member.
    pub extra_args: Vec<String>,
    /// Peer URLs are https (the peer TLS flags then go in `extra_args`).
    pub peer_https: bool,
}

impl ClusterOptions {
    pub fn new(members: usize) -> ClusterOptions {
        ClusterOptions {
            members,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            extra_args: Vec::new(),
            peer_https: false,
        }
    }

    fn peer_scheme(&self) -> &'static str {
        if self.peer_https {
            "https"
        } else {
            "http"
        }
    }
}

struct Member {
    server: Server,
    /// The raft member id, as in response headers and `Status`.
    id: u64,
    paused: bool,
    /// While the member is down: its client and peer ports, bound so that no outgoing
    /// connection takes one as its ephemeral source port (the kernel picks those from the
    /// same range, skipping ports bound with bind()) and the restart then fails with
    /// "address already in use".
    reserved_ports: Vec<tokio::net::TcpSocket>,
}

/// The port of an `http://127.0.0.1:<port>` URL.
fn url_port(url: &str) -> Result<u16> {
    let port = url.rsplit(':').next().context("URL without port")?;
    Ok(port.parse()?)
}

/// Binds the ports `server` listens on, without listening: connections to them are still
/// refused, as by a dead process.
fn reserve_ports(server: &Server) -> Result<Vec<tokio::net::TcpSocket>> {
    [server.client_url(), server.peer_url()]
        .iter()
        .map(|url| reserve_port(url_port(url)?))
        .collect()
}

fn reserve_port(port: u16) -> Result<tokio::net::TcpSocket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    // Past the dead process's connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    Ok(socket)
}

/// A running cluster; members are numbered from 0 and named `node0`, `node1`, ...
pub struct Cluster {
    members: Vec<Member>,
    network: Network,
}

/// What one member says about the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    pub leader_id: u64,
    pub raft_term: u64,
}

fn member_name(i: NodeId) -> String {
    format!("node{i}")
}

/// The command line of one member: the single-member flags with the cluster's instead of
/// its own peer list, and its proxy port advertised instead of its real peer port.
fn member_args(
    layout: &Layout,
    advertised_peer_port: u16,
    initial_cluster: &str,
    token: &str,
    options: &ClusterOptions,
) -> Vec<String> {
    let mut args = server_args(
        &layout.name,
        &layout.data_dir,
        layout.client_port,
        layout.peer_port,
    );
    args.retain(|a| {
        !a.starts_with("--initial-cluster=")
            && !a.starts_with("--initial-advertise-peer-urls=")
            && !a.starts_with("--listen-peer-urls=")
    });
    let scheme = options.peer_scheme();
    args.extend([
        format!(
            "--listen-peer-urls={scheme}://127.0.0.1:{}",
            layout.peer_port
        ),
        format!("--initial-advertise-peer-urls={scheme}://127.0.0.1:{advertised_peer_port}"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--initial-cluster-token={token}"),
        "--initial-cluster-state=new".to_string(),
        format!("--heartbeat-interval={}", options.heartbeat.as_millis()),
        format!(
            "--election-timeout={}",
            options.election_timeout.as_millis()
        ),
    ]);
    args.extend(options.extra_args.iter().cloned());
    args
}

/// A client for quick probes: a frozen or partitioned member must not hold a test up.
async fn probe_client(url: String) -> Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    Ok(Client::connect([url], Some(opts)).await?)
}

async fn status_of(url: String) -> Result<MemberStatus> {
    let probe = async {
        let status = probe_client(url).await?.status().await?;
        let header = status.header().context("status without header")?;
        Ok(MemberStatus {
            member_id: header.member_id(),
            leader_id: status.leader(),
            raft_term: status.raft_term(),
        })
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .context("status timed out")?
}

/// A member's raft id, asked (bounded) right after it became ready; a loaded machine may
/// need more than one try.
async fn member_id_of(server: &Server) -> Result<u64> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match status_of(server.client_url()).await {
            Ok(status) => return Ok(status.member_id),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("status of {}", server.name())))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Cluster {
    /// Starts `members` members with the default options and waits for a leader.
    pub async fn start(members: usize) -> Result<Cluster> {
        Cluster::start_with(ClusterOptions::new(members)).await
    }

    pub async fn start_with(options: ClusterOptions) -> Result<Cluster> {
        let mut network = Network::bind(options.members)?;
        // Unique per cluster, so that members of clusters started by parallel tests can
        // never join each other.
        let token = format!("cairn-it-{}", network.port(0));
        let initial_cluster = (0..options.members)
            .map(|i| {
                let scheme = options.peer_scheme();
                format!(
                    "{}={scheme}://127.0.0.1:{}",
                    member_name(i),
                    network.port(i)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for i in 0..options.members {
            let mut peer_port = 0;
            let server = Server::spawn_custom(&member_name(i), |layout| {
                peer_port = layout.peer_port;
                Ok(member_args(
                    layout,
                    network.port(i),
                    &initial_cluster,
                    &token,
                    &options,
                ))
            })?;
            network.serve(i, peer_port)?;
            network.set_pid(i, server.pid());
            servers.push(server);
        }
        let mut members = Vec::new();
        for mut server in servers {
            server.wait_ready().await?;
            let id = member_id_of(&server).await?;
            members.push(Member {
                server,
                id,
                paused: false,
                reserved_ports: Vec::new(),
            });
        }
        let cluster = Cluster { members, network };
        cluster.leader().await?;
        Ok(cluster)
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Member `i`'s process, ports, data directory and log.
    pub fn member(&self, i: NodeId) -> &Server {
        &self.members[i].server
    }

    /// The flags member `i` starts with at its next [`Cluster::restart`].
    pub fn member_args_mut(&mut self, i: NodeId) -> &mut Vec<String> {
        self.members[i].server.args_mut()
    }

    /// The environment member `i` starts with at its next [`Cluster::relaunch`].
    pub fn member_env_mut(&mut self, i: NodeId) -> &mut Vec<(String, String)> {
        self.members[i].server.env_mut()
    }

    /// Member `i`'s raft id.
    pub fn member_id(&self, i: NodeId) -> u64 {
        self.members[i].id
    }

    /// The client URL of every member, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.server.client_url()).collect()
    }

    /// A client of member `i` alone.
    pub async fn client(&self, i: NodeId) -> Result<Client> {
        self.members[i].server.client().await
    }

    /// Puts `key` through the leader, then checks with etcdctl that every member serves
    /// `value` for it: the cluster replicates.
    pub async fn put_and_read_everywhere(&self, key: &str, value: &str) -> Result<()> {
        let leader = self.leader().await?;
        self.client(leader).await?.put(key, value, None).await?;
        for i in 0..self.size() {
            let out = self.members[i]
                .server
                .ctl(&["get", key, "--print-value-only"])
                .await?;
            let got = out.success().with_context(|| format!("member {i}"))?;
            if got != format!("{value}\n") {
                bail!("member {i} reads {got:?} for {key}, not {value:?}");
            }
        }
        Ok(())
    }

    /// The fault table between members, for faults finer than [`Cluster::partition`].
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// What every running, unfrozen member says (`None` for the others and for members
    /// that do not answer within two seconds).
    pub async fn statuses(&self) -> Vec<Option<MemberStatus>> {
        let mut probes = Vec::new();
        for member in &self.members {
            let url = member.server.client_url();
            let reachable = member.server.pid().is_some() && !member.paused;
            probes.push(tokio::spawn(async move {
                if reachable {
                    status_of(url).await.ok()
                } else {
                    None
                }
            }));
        }
        let mut statuses = Vec::new();
        for probe in probes {
            statuses.push(probe.await.ok().flatten());
        }
        statuses
    }

    /// The leader a majority of all members agrees on, if any.
    pub async fn current_leader(&self) -> Option<NodeId> {
        let statuses = self.statuses().await;
        let majority = self.size() / 2 + 1;
        let leader_ids = statuses.iter().flatten().map(|s| s.leader_id);
        let agreed = leader_ids
            .clone()
            .filter(|&id| id != 0)
            .find(|&id| leader_ids.clone().filter(|&l| l == id).count() >= majority)?;
        self.members.iter().position(|m| m.id == agreed)
    }

    /// Waits (up to [`LEADER_TIMEOUT`]) until a majority agrees on a leader and returns it.
    pub async fn leader(&self) -> Result<NodeId> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            if let Some(leader) = self.current_leader().await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!(
                    "no leader agreed by a majority within {LEADER_TIMEOUT:?}: {:?}\n{}",
                    self.statuses().await,
                    self.log_tails(2000)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until member `i` serves a linearizable read again (it has a leader and caught
    /// up).
    pub async fn wait_ready(&mut self, i: NodeId) -> Result<()> {
        self.members[i].server.wait_ready().await
    }

    /// `kill -9` member `i`: no chance to flush or say goodbye.
    pub fn kill9(&mut self, i: NodeId) -> Result<()> {
        let member = &mut self.members[i];
        member.server.kill9()?;
        member.paused = false;
        self.network.set_pid(i, None);
        // Best effort: a port still held by the dead process's sockets stays unreserved.
        member.reserved_ports = reserve_ports(&member.server).unwrap_or_default();
        Ok(())
    }

    /// SIGTERM member `i` and wait (bounded) for it to exit; returns how it exited.
    pub async fn terminate(&mut self, i: NodeId) -> Result<std::process::ExitStatus> {
        let member = &mut self.members[i];
        let status = member.server.terminate().await?;
        member.paused = false;
        self.network.set_pid(i, None);
        member.reserved_ports = reserve_ports(&member.server).unwrap_or_default();
        Ok(status)
    }

    /// Starts member `i` again (killing it first if it runs) on its data directory and waits
    /// until it serves.
    pub async fn restart(&mut self, i: NodeId) -> Result<()> {
        self.relaunch(i)?;
        self.members[i].server.wait_ready().await
    }

    /// Starts member `i` again (killing it first if it runs) and returns at once.
    pub fn relaunch(&mut self, i: NodeId) -> Result<()> {
        let member = &mut self.members[i];
        member.reserved_ports.clear();
        member.server.relaunch()?;
        member.paused = false;
        // Before it dials its peers, so that its connections are attributed to it.
        self.network.set_pid(i, member.server.pid());
        Ok(())
    }

    /// Freezes member `i` (SIGSTOP): its sockets stay open but it answers nothing, like a
    /// long garbage-collection pause or a VM migration.
    pub fn pause(&mut self, i: NodeId) -> Result<()> {
        self.signal(i, Signal::SIGSTOP)?;
        self.members[i].paused = true;
        Ok(())
    }

    /// Thaws member `i` (SIGCONT).
    pub fn resume(&mut self, i: NodeId) -> Result<()> {
        self.signal(i, Signal::SIGCONT)?;
        self.members[i].paused = false;
        Ok(())
    }

    fn signal(&self, i: NodeId, signal: Signal) -> Result<()> {
        let pid = self.members[i]
            .server
            .pid()
            .with_context(|| format!("member {i} is not running"))?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    /// Black-holes every link between a member of `a` and a member of `b`, both ways; links
    /// within each side keep working.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.network.split(a, b, LinkFault::Drop);
    }

    /// Cuts member `i` off from every other member.
    pub fn isolate(&self, i: NodeId) {
        let others: Vec<NodeId> = (0..self.size()).filter(|&o| o != i).collect();
        self.partition(&[i], &others);
    }

    /// Every link works again.
    pub fn heal(&self) {
        self.network.heal();
    }

    /// etcd's runtime reconfiguration recipe: `etcdctl member add <name>` on member `via`
    /// (retried while the cluster answers "unhealthy cluster"), then the new member started
    /// with the `ETCD_INITIAL_CLUSTER` it printed and `--initial-cluster-state existing`.
    /// It listens on its own peer port, outside the proxy network. Returns once it serves.
    pub async fn join(&self, via: NodeId, name: &str, options: &ClusterOptions) -> Result<Server> {
        let mut server = self.add_and_spawn(via, name, options).await?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// The first half of [`Cluster::join`]: `member add` and the new member's process
    /// started, without waiting for it to serve (it may never, if the members refuse it).
    pub async fn add_and_spawn(
        &self,
        via: NodeId,
        name: &str,
        options: &ClusterOptions,
    ) -> Result<Server> {
        let peer_port = crate::free_port()?;
        let peer = format!("{}://127.0.0.1:{peer_port}", options.peer_scheme());
        let deadline = Instant::now() + READY_TIMEOUT;
        let printed = loop {
            let out = self.members[via]
                .server
                .ctl(&["member", "add", name, &format!("--peer-urls={peer}")])
                .await?;
            match out.success() {
                Ok(text) => break text.to_string(),
                Err(e)
                    if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => return Err(e.context("member add")),
            }
        };
        let initial_cluster = printed
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .with_context(|| format!("member add printed no ETCD_INITIAL_CLUSTER: {printed}"))?
            .trim_matches('"')
            .to_string();
        let token = format!("cairn-it-{}", self.network.port(0));
        Server::spawn_custom(name, |layout| {
            let mut args = member_args(layout, peer_port, &initial_cluster, &token, options);
            for arg in &mut args {
                if arg.starts_with("--listen-peer-urls=") {
                    *arg = format!("--listen-peer-urls={peer}");
                } else if arg == "--initial-cluster-state=new" {
                    *arg = "--initial-cluster-state=existing".to_string();
                }
            }
            Ok(args)
        })
    }

    /// The last `bytes` of every member's log, for failure messages.
    pub fn log_tails(&self, bytes: usize) -> String {
        let mut out = String::new();
        for (i, member) in self.members.iter().enumerate() {
            let _ = writeln!(
                out,
                "--- {} (id {:x}) log tail ---\n{}",
                member_name(i),
                member.id,
                member.server.log_tail(bytes)
            );
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(3000));
        }
    }
}

#[cfg(test)]
// A failed unwrap is a failed assertion with its value printed, which is what a test wants.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_port_of_a_url() {
        assert_eq!(url_port("http://127.0.0.1:2380").ok(), Some(2380));
        assert!(url_port("http://127.0.0.1").is_err());
    }

    #[test]
    fn a_reserved_port_refuses_connections_yet_the_member_can_bind_it() {
        let port = crate::free_port().unwrap();
        let _reservation = reserve_port(port).unwrap();
        let connect = std::net::TcpStream::connect(("127.0.0.1", port));
        assert!(connect.is_err(), "nothing listens on a reserved port");
        // Servers bind with SO_REUSEADDR too, so a reservation never blocks a restart.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port));
        assert!(listener.is_ok(), "{listener:?}");
    }

    #[test]
    fn members_advertise_their_proxy_port() {
        let layout = Layout {
            name: "node1".into(),
            client_port: 1,
            peer_port: 2,
            data_dir: "/d".into(),
            dir: "/".into(),
        };
        let cluster = "node0=http://127.0.0.1:10,node1=http://127.0.0.1:11";
        let args = member_args(&layout, 11, cluster, "t", &ClusterOptions::new(2));
        for expected in [
            "--listen-peer-urls=http://127.0.0.1:2",
            "--initial-advertise-peer-urls=http://127.0.0.1:11",
            "--initial-cluster=node0=http://127.0.0.1:10,node1=http://127.0.0.1:11",
            "--initial-cluster-token=t",
            "--initial-cluster-state=new",
            "--election-timeout=500",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        let advertised = args
            .iter()
            .filter(|a| a.starts_with("--initial-advertise-peer-urls="))
            .count();
        assert_eq!(advertised, 1);
    }
}
