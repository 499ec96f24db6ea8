//! Fault-injecting TCP proxies for the links between cluster members, all on 127.0.0.1.
//!
//! Each member advertises a proxy port as its peer URL, so every peer connection *into*
//! member `to` passes through `to`'s proxy. Members share one loopback address, so the
//! proxy tells who dialed by asking the kernel: it finds the dialing socket in
//! `/proc/net/tcp` and the member process holding it in `/proc/<pid>/fd`. That makes every
//! directed link `from -> to` separately controllable, which a partition needs: raft traffic
//! from A to B flows both on connections A dialed to B and on connections B dialed to A
//! (etcd streams messages back over the peer's long-lived GET), so both directions of a
//! connection are governed, bytes from the dialer by `dialer -> to` and replies by
//! `to -> dialer`. A connection from a process that is no member passes untouched.
//!
//! Faults per directed link (see [`LinkFault`]): pass, delay, drop (a black hole: bytes are
//! held, not lost, as TCP would retransmit them once the network heals) and cut (every
//! connection on the link is reset and new ones are reset at once).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A member's index in its cluster.
pub type NodeId = usize;

/// What happens to bytes on one directed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkFault {
    #[default]
    Pass,
    /// Every chunk is delivered this long after it was read.
    Delay(Duration),
    /// Nothing is delivered; connections stay open and new ones are accepted, as behind a
    /// silent network partition. Held bytes flow again when the link heals.
    Drop,
    /// Connections are reset, as by a firewall rejecting them.
    Cut,
}

/// Faults per directed link `(from, to)`; a missing link passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Faults(BTreeMap<(NodeId, NodeId), LinkFault>);

impl Faults {
    /// The fault for bytes from `from` to `to`; traffic of unknown origin passes.
    fn get(&self, from: Option<NodeId>, to: Option<NodeId>) -> LinkFault {
        match (from, to) {
            (Some(from), Some(to)) => self.0.get(&(from, to)).copied().unwrap_or_default(),
            _ => LinkFault::Pass,
        }
    }
}

/// The proxies of one cluster: one listener per member, and the fault table they obey.
pub struct Network {
    faults: watch::Sender<Faults>,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    listeners: Vec<Option<std::net::TcpListener>>,
    ports: Vec<u16>,
    tasks: Vec<JoinHandle<()>>,
}

impl Network {
    /// Binds a proxy port for each of `members`; nothing is forwarded until [`Network::serve`].
    pub fn bind(members: usize) -> Result<Network> {
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..members {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            ports.push(listener.local_addr()?.port());
            listeners.push(Some(listener));
        }
        Ok(Network {
            faults: watch::Sender::new(Faults::default()),
            pids: Arc::new(Mutex::new(vec![None; members])),
            listeners,
            ports,
            tasks: Vec::new(),
        })
    }

    /// The port member `node` advertises to its peers.
    pub fn port(&self, node: NodeId) -> u16 {
        self.ports[node]
    }

    /// Starts forwarding connections to member `node`'s proxy port to `target` (its real peer
    /// port). Needs a tokio runtime; the proxy stops when the `Network` is dropped.
    pub fn serve(&mut self, node: NodeId, target: u16) -> Result<()> {
        let listener = self.listeners[node]
            .take()
            .context("proxy already serving")?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let proxy = Proxy {
            node,
            port: self.ports[node],
            target,
            faults: self.faults.subscribe(),
            pids: self.pids.clone(),
        };
        self.tasks.push(tokio::spawn(proxy.run(listener)));
        Ok(())
    }

    /// Tells the proxies which process is member `node` (after every (re)start), so that its
    /// connections are attributed to it.
    pub fn set_pid(&self, node: NodeId, pid: Option<u32>) {
        if let Ok(mut pids) = self.pids.lock() {
            pids[node] = pid;
        }
    }

    /// Sets the fault on the directed link `from -> to`.
    pub fn set(&self, from: NodeId, to: NodeId, fault: LinkFault) {
        self.faults.send_modify(|f| {
            f.0.insert((from, to), fault);
        });
    }

    /// The fault on the directed link `from -> to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> LinkFault {
        self.faults.borrow().get(Some(from), Some(to))
    }

    /// Applies `fault` to every link between a member of `a` and a member of `b`, both ways.
    pub fn split(&self, a: &[NodeId], b: &[NodeId], fault: LinkFault) {
        self.faults.send_modify(|f| {
            for &x in a {
                for &y in b {
                    f.0.insert((x, y), fault);
                    f.0.insert((y, x), fault);
                }
            }
        });
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.faults.send_replace(Faults::default());
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The proxy in front of one member's peer port.
struct Proxy {
    node: NodeId,
    port: u16,
    target: u16,
    faults: watch::Receiver<Faults>,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
}

impl Proxy {
    async fn run(self, listener: TcpListener) {
        // Connection tasks live in the set, so aborting this task ends them all.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((inbound, dialer)) = accepted else { continue };
                    let pids = self.pids.lock().map(|p| p.clone()).unwrap_or_default();
                    let port = self.port;
                    let from = tokio::task::spawn_blocking(move || dialing_member(dialer, port, &pids))
                        .await
                        .ok()
                        .flatten();
                    let link = Link { from, to: self.node };
                    connections.spawn(link.forward(inbound, self.target, self.faults.clone()));
                }
                Some(_) = connections.join_next() => {}
            }
        }
    }
}

/// The two ends of a proxied connection: the dialing member (if known) and the member dialed.
#[derive(Clone, Copy)]
struct Link {
    from: Option<NodeId>,
    to: NodeId,
}

impl Link {
    fn upstream(self, faults: &Faults) -> LinkFault {
        faults.get(self.from, Some(self.to))
    }

    fn downstream(self, faults: &Faults) -> LinkFault {
        faults.get(Some(self.to), self.from)
    }

    fn is_cut(self, faults: &Faults) -> bool {
        self.upstream(faults) == LinkFault::Cut || self.downstream(faults) == LinkFault::Cut
    }

    /// Forwards one connection until either side closes it or the link is cut. Both sockets
    /// linger zero seconds, so dropping them resets the connection.
    async fn forward(self, inbound: TcpStream, target: u16, mut faults: watch::Receiver<Faults>) {
        if self.is_cut(&faults.borrow()) {
            let _ = inbound.set_zero_linger();
            return;
        }
        let connect = TcpStream::connect(("127.0.0.1", target));
        let Ok(Ok(mut outbound)) = tokio::time::timeout(Duration::from_secs(2), connect).await
        else {
            let _ = inbound.set_zero_linger();
            return;
        };
        let mut inbound = inbound;
        for socket in [&inbound, &outbound] {
            let _ = socket.set_zero_linger();
            let _ = socket.set_nodelay(true);
        }
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        let up = pump(in_read, out_write, faults.clone(), move |f| {
            self.upstream(f)
        });
        let down = pump(out_read, in_write, faults.clone(), move |f| {
            self.downstream(f)
        });
        let both = async {
            tokio::pin!(up, down);
            // A clean end of one direction waits for the other; an error ends both.
            tokio::select! {
                r = &mut up => {
                    if r.is_ok() {
                        let _ = down.await;
                    }
                }
                r = &mut down => {
                    if r.is_ok() {
                        let _ = up.await;
                    }
                }
            }
        };
        tokio::select! {
            () = both => {}
            _ = faults.wait_for(|f| self.is_cut(f)) => {}
        }
    }
}

/// Copies one direction of a connection under the fault `fault_of` reads from the table: a
/// reader stops reading while the link drops (so the sender's buffers fill, as behind a
/// stalled network) and a writer holds or delays what was read.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    faults: watch::Receiver<Faults>,
    fault_of: impl Fn(&Faults) -> LinkFault + Copy,
) -> io::Result<()> {
    let (chunks_tx, mut chunks) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut read_faults = faults.clone();
    let read = async move {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let _ = read_faults
                .wait_for(|f| fault_of(f) != LinkFault::Drop)
                .await;
            let n = reader.read(&mut buf).await?;
            if n == 0
                || chunks_tx
                    .send((Instant::now(), buf[..n].to_vec()))
                    .await
                    .is_err()
            {
                return Ok::<_, io::Error>(());
            }
        }
    };
    let mut write_faults = faults;
    let write = async move {
        while let Some((read_at, chunk)) = chunks.recv().await {
            let fault = match write_faults
                .wait_for(|f| fault_of(f) != LinkFault::Drop)
                .await
            {
                Ok(faults) => fault_of(&faults),
                Err(_) => LinkFault::Pass,
            };
            if let LinkFault::Delay(delay) = fault {
                tokio::time::sleep_until(read_at + delay).await;
            }
            writer.write_all(&chunk).await?;
        }
        writer.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Which member holds the client end of the connection from `dialer` to the proxy on
/// `proxy_port`: its socket inode from `/proc/net/tcp`, then the process whose descriptors
/// include it.
fn dialing_member(dialer: SocketAddr, proxy_port: u16, pids: &[Option<u32>]) -> Option<NodeId> {
    let inode = socket_inode(dialer.port(), proxy_port)?;
    let wanted = format!("socket:[{inode}]");
    pids.iter().position(|pid| {
        pid.is_some_and(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.as_os_str() == wanted.as_str())
                })
        })
    })
}

/// The inode of the loopback socket from `local_port` to `remote_port`.
fn socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    find_inode(&table, local_port, remote_port)
}

/// Parses `/proc/net/tcp`: `sl local_address rem_address st ... uid timeout inode`, with
/// addresses as hex `IP:PORT`.
fn find_inode(table: &str, local_port: u16, remote_port: u16) -> Option<u64> {
    let port = |address: &str| {
        address
            .split_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches = fields.len() > 9
            && port(fields[1]) == Some(local_port)
            && port(fields[2]) == Some(remote_port);
        matches.then(|| fields[9].parse().ok()).flatten()
    })
}

#[cfg(test)]
// A failed unwrap is a failed assertion with its value printed, which is what a test wants.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An echo server on a free port; it runs until the test's runtime ends.
    async fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        port
    }

    /// Member 0 is this test process, member 1 an echo server behind its proxy.
    async fn network() -> Network {
        let mut network = Network::bind(2).unwrap();
        network.serve(1, echo_server().await).unwrap();
        network.set_pid(0, Some(std::process::id()));
        network
    }

    /// Sends `msg` through the proxy and waits up to `wait` for the echo.
    async fn round_trip(stream: &mut TcpStream, msg: &[u8], wait: Duration) -> io::Result<Vec<u8>> {
        stream.write_all(msg).await?;
        let mut buf = vec![0; msg.len()];
        match tokio::time::timeout(wait, stream.read_exact(&mut buf)).await {
            Ok(read) => read.map(|_| buf),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    #[test]
    fn finds_the_inode_of_a_connection() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                     0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
                     1: 0100007F:D2A4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n";
        assert_eq!(find_inode(table, 0xD2A4, 0x1F90), Some(222));
        assert_eq!(find_inode(table, 0x1F90, 0xD2A4), None);
    }

    #[tokio::test]
    async fn attributes_connections_to_the_dialing_process() {
        let network = network().await;
        let stream = TcpStream::connect(("127.0.0.1", network.port(1)))
            .await
            .unwrap();
        let from = tokio::task::spawn_blocking({
            let dialer = stream.local_addr().unwrap();
            let port = network.port(1);
            move || dialing_member(dialer, port, &[None, None, Some(std::process::id())])
        })
        .await
        .unwrap();
        assert_eq!(from, Some(2));
    }

    #[tokio::test]
    async fn passes_drops_and_heals() {
        let network = network().await;
        let mut stream = TcpStream::connect(("127.0.0.1", network.port(1)))
            .await
            .unwrap();
        let wait = Duration::from_secs(2);
        assert_eq!(round_trip(&mut stream, b"one", wait).await.unwrap(), b"one");

        network.set(0, 1, LinkFault::Drop);
        let err = round_trip(&mut stream, b"two", Duration::from_millis(300)).await;
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // Another member's link into 1 is not this one.
        network.set(0, 1, LinkFault::Pass);
        network.set(2, 1, LinkFault::Drop);
        let mut held = vec![0; 3];
        tokio::time::timeout(wait, stream.read_exact(&mut held))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held, b"two", "held bytes arrive once the link heals");

        network.split(&[0], &[1], LinkFault::Drop);
        assert_eq!(network.link(1, 0), LinkFault::Drop);
        network.heal();
        assert_eq!(
            round_trip(&mut stream, b"three", wait).await.unwrap(),
            b"three"
        );
    }

    #[tokio::test]
    async fn delays_each_direction() {
        let network = network().await;
        let mut stream = TcpStream::connect(("127.0.0.1", network.port(1)))
            .await
            .unwrap();
        network.set(0, 1, LinkFault::Delay(Duration::from_millis(150)));
        network.set(1, 0, LinkFault::Delay(Duration::from_millis(150)));
        let start = std::time::Instant::now();
        round_trip(&mut stream, b"slow", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn cut_resets_open_and_new_connections() {
        let network = network().await;
        let mut stream = TcpStream::connect(("127.0.0.1", network.port(1)))
            .await
            .unwrap();
        round_trip(&mut stream, b"hi", Duration::from_secs(2))
            .await
            .unwrap();
        network.set(1, 0, LinkFault::Cut);
        let mut buf = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "open connection ends: {read:?}"
        );
        let mut again = TcpStream::connect(("127.0.0.1", network.port(1)))
            .await
            .unwrap();
        let err = round_trip(&mut again, b"x", Duration::from_secs(2)).await;
        assert!(err.is_err(), "a new connection is reset");
        network.heal();
        let mut healed = TcpStream::connect(("127.0.0.1", network.port(1)))
            .await
            .unwrap();
        round_trip(&mut healed, b"ok", Duration::from_secs(2))
            .await
            .unwrap();
    }
}
