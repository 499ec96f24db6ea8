//! A concurrent register workload against a cluster, recorded for the linearizability
//! checker, and the end-of-run checks that nothing acknowledged was lost.
//!
//! Each client loops over random puts, linearizable gets and compare-and-swap transactions
//! on a few keys, every written value unique (`c<client>-<n>`) so that a read names the write
//! it saw. A client talks to one member at a time and moves to the next member after an
//! error, so that traffic reaches leaders and followers and survives a dead member. Every
//! operation is bounded by a timeout: a write that fails or times out is recorded as
//! unknown (it may have been committed) unless its connection was refused, a read that
//! fails as failed (it had no effect).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::history::{Call, History, Outcome, Output, Recorder};

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    /// Number of keys (`key0`, `key1`, ...): few keys make concurrent operations collide.
    pub keys: usize,
    /// After this long an operation counts as unknown (a read: failed).
    pub op_timeout: Duration,
    /// Pause between a client's operations: keeps histories small enough to check quickly
    /// and leaves the 2 CI cores to the servers.
    pub think_time: Duration,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 6,
            keys: 4,
            op_timeout: Duration::from_millis(1500),
            think_time: Duration::from_millis(5),
        }
    }
}

/// The prefix every workload key starts with.
pub const KEY_PREFIX: &str = "key";

impl Workload {
    pub fn keys(&self) -> Vec<String> {
        (0..self.keys).map(|k| format!("{KEY_PREFIX}{k}")).collect()
    }

    /// Starts the clients against `endpoints` (one client URL per member), recording into
    /// `recorder`.
    pub fn start(&self, endpoints: Vec<String>, recorder: &Recorder) -> RunningWorkload {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..self.clients)
            .map(|id| {
                let worker = Worker {
                    id,
                    node: id % endpoints.len(),
                    clients: vec![None; endpoints.len()],
                    endpoints: endpoints.clone(),
                    keys: self.keys(),
                    rng: Rng::new(id as u64),
                    seq: 0,
                    seen: HashMap::new(),
                    recorder: recorder.clone(),
                    workload: self.clone(),
                };
                tokio::spawn(worker.run(stopped.clone()))
            })
            .collect();
        RunningWorkload {
            stop,
            tasks,
            op_timeout: self.op_timeout,
        }
    }
}

/// Clients at work; [`RunningWorkload::stop`] ends them.
pub struct RunningWorkload {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    op_timeout: Duration,
}

impl RunningWorkload {
    /// Stops every client after its operation in flight.
    pub async fn stop(self) -> Result<()> {
        self.stop.send_replace(true);
        for task in self.tasks {
            tokio::time::timeout(self.op_timeout * 2 + Duration::from_secs(5), task)
                .await
                .context("a client did not stop")??;
        }
        Ok(())
    }
}

/// Pause after a failed operation.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// True if an error says the request never left the client: the connection to the member
/// was refused, so no byte of the request was sent and even a write had no effect.
fn never_sent(error: &str) -> bool {
    error.contains("Connection refused")
}

/// xorshift64*: deterministic per client, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

struct Worker {
    id: usize,
    node: usize,
    endpoints: Vec<String>,
    clients: Vec<Option<Client>>,
    keys: Vec<String>,
    rng: Rng,
    seq: u64,
    /// The value this client last saw per key: what its compare-and-swaps expect.
    seen: HashMap<String, Option<String>>,
    recorder: Recorder,
    workload: Workload,
}

impl Worker {
    async fn run(mut self, stopped: watch::Receiver<bool>) {
        while !*stopped.borrow() {
            let key = self.keys[self.rng.below(self.keys.len())].clone();
            let call = self.next_call(&key);
            let invocation = self.recorder.invoke(self.id, &key, call.clone());
            match self.execute(&key, &call).await {
                Ok((output, revision)) => {
                    self.observe(&key, &call, &output);
                    invocation.finish(Outcome::Ok(output), Some(revision));
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    let outcome = if call == Call::Get || never_sent(&why) {
                        Outcome::Failed(why)
                    } else {
                        Outcome::Unknown(why)
                    };
                    invocation.finish(outcome, None);
                    self.node = (self.node + 1) % self.endpoints.len();
                    // Like a real client, do not hammer a member that is down: every
                    // failed write is one more unknown for the checker to place.
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
            tokio::time::sleep(self.workload.think_time).await;
        }
    }

    fn next_call(&mut self, key: &str) -> Call {
        self.seq += 1;
        let value = format!("c{}-{}", self.id, self.seq);
        match self.rng.below(10) {
            0..=3 => Call::Get,
            4..=6 => Call::Put { value },
            _ => Call::Cas {
                expected: self.seen.get(key).cloned().flatten(),
                new: value,
            },
        }
    }

    fn observe(&mut self, key: &str, call: &Call, output: &Output) {
        let now = match (call, output) {
            (_, Output::Get(value)) => value.clone(),
            (Call::Put { value }, _) => Some(value.clone()),
            (Call::Cas { new, .. }, Output::Cas { swapped: true }) => Some(new.clone()),
            _ => return,
        };
        self.seen.insert(key.to_string(), now);
    }

    async fn client(&mut self) -> Result<Client> {
        if let Some(client) = &self.clients[self.node] {
            return Ok(client.clone());
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(self.workload.op_timeout);
        let client = Client::connect([self.endpoints[self.node].as_str()], Some(opts)).await?;
        self.clients[self.node] = Some(client.clone());
        Ok(client)
    }

    async fn execute(&mut self, key: &str, call: &Call) -> Result<(Output, i64)> {
        let timeout = self.workload.op_timeout;
        let attempt = async {
            let mut client = self.client().await?;
            execute(&mut client, key, call).await
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| anyhow!("no answer within {timeout:?}"))?
    }
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map(|h| h.revision()).unwrap_or_default()
}

/// Performs `call` on `key` with one request.
pub async fn execute(client: &mut Client, key: &str, call: &Call) -> Result<(Output, i64)> {
    Ok(match call {
        Call::Get => {
            let resp = client.get(key, None).await?;
            let value = resp
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
            (Output::Get(value), revision(resp.header()))
        }
        Call::Put { value } => {
            let resp = client.put(key, value.as_str(), None).await?;
            (Output::Put, revision(resp.header()))
        }
        Call::Cas { expected, new } => {
            let compare = match expected {
                Some(v) => Compare::value(key, CompareOp::Equal, v.as_str()),
                None => Compare::version(key, CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, new.as_str(), None)]);
            let resp = client.txn(txn).await?;
            let swapped = resp.succeeded();
            (Output::Cas { swapped }, revision(resp.header()))
        }
    })
}

/// How long the end-of-run checks wait for a member that is still catching up.
const CATCH_UP: Duration = Duration::from_secs(20);

/// Reads every key through every member (linearizable gets), recording the reads as client
/// `1000 + member`: the checker then also proves that the final state reflects every
/// acknowledged write.
pub async fn read_back(cluster: &Cluster, keys: &[String], recorder: &Recorder) -> Result<()> {
    for member in 0..cluster.size() {
        let mut client = cluster.client(member).await?;
        for key in keys {
            let deadline = Instant::now() + CATCH_UP;
            loop {
                let invocation = recorder.invoke(1000 + member, key, Call::Get);
                match execute(&mut client, key, &Call::Get).await {
                    Ok((output, rev)) => {
                        invocation.finish(Outcome::Ok(output), Some(rev));
                        break;
                    }
                    Err(e) if Instant::now() > deadline => {
                        bail!("member {member} cannot read {key} after {CATCH_UP:?}: {e:#}")
                    }
                    // A read that failed had no effect: leave it out of the history.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
    Ok(())
}

/// One write in a member's revision history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWrite {
    pub revision: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

/// Every write to the workload's keys in member `member`'s history, replayed by a watch
/// from revision 1 up to the member's current revision.
pub async fn stored_writes(cluster: &Cluster, member: usize) -> Result<Vec<StoredWrite>> {
    let mut client = cluster.client(member).await?;
    // The last write to a workload key, from a linearizable read: the replay ends there.
    let keys = client
        .get(KEY_PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let Some(head) = keys.kvs().iter().map(|kv| kv.mod_revision()).max() else {
        return Ok(Vec::new());
    };
    let options = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = client.watch(KEY_PREFIX, Some(options)).await?;
    let mut writes = Vec::new();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while writes
        .last()
        .is_none_or(|w: &StoredWrite| w.revision < head)
    {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .with_context(|| {
                format!("member {member}: history up to revision {head} not replayed")
            })??
            .with_context(|| format!("member {member}: watch ended"))?;
        for event in message.events() {
            let kv = event.kv().context("event without kv")?;
            let put = event.event_type() == etcd_client::EventType::Put;
            writes.push(StoredWrite {
                revision: kv.mod_revision(),
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: put.then(|| String::from_utf8_lossy(kv.value()).into_owned()),
            });
        }
    }
    Ok(writes)
}

/// What [`check_durability`] verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    pub stored_writes: usize,
    pub acknowledged_writes: usize,
}

/// After the faults healed: every member holds the same history of the workload's keys; each
/// acknowledged write is in it at the revision it was acknowledged with; and each write in
/// it was asked for by a client (none invented, none applied twice).
pub async fn check_durability(cluster: &Cluster, history: &History) -> Result<Durability> {
    let mut longest: Vec<StoredWrite> = Vec::new();
    for member in 0..cluster.size() {
        let writes = stored_writes(cluster, member).await?;
        // A member may have applied a late write the others had not when asked: histories
        // must agree where they overlap.
        if let Some(i) = longest.iter().zip(&writes).position(|(a, b)| a != b) {
            bail!(
                "member {member}'s history diverges from another member's: {:?} vs {:?}",
                writes[i],
                longest[i]
            );
        }
        if writes.len() > longest.len() {
            longest = writes;
        }
    }
    let stored = longest;
    let by_revision: BTreeMap<i64, &StoredWrite> = stored.iter().map(|w| (w.revision, w)).collect();
    let mut written: HashMap<&str, usize> = HashMap::new();
    for op in &history.ops {
        if let Some(value) = op.written_value() {
            written.insert(value, 0);
        }
    }
    for write in &stored {
        let value = write.value.as_deref().unwrap_or_default();
        let count = written
            .get_mut(value)
            .with_context(|| format!("no client wrote {write:?}"))?;
        *count += 1;
        ensure!(*count == 1, "{write:?} was applied more than once");
    }
    let mut acknowledged = 0;
    for op in history.acknowledged_writes() {
        acknowledged += 1;
        let revision = op.revision.unwrap_or_default();
        let stored = by_revision.get(&revision);
        let expected = (op.key.as_str(), op.written_value());
        ensure!(
            stored.map(|w| (w.key.as_str(), w.value.as_deref())) == Some(expected),
            "acknowledged write lost: {op}; revision {revision} holds {stored:?}"
        );
    }
    Ok(Durability {
        stored_writes: stored.len(),
        acknowledged_writes: acknowledged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_spreads_over_the_range() {
        let mut rng = Rng::new(3);
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[rng.below(4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn only_refused_connections_count_as_never_sent() {
        let refused = "transport error: tcp connect error: Connection refused (os error 111)";
        assert!(never_sent(refused));
        assert!(!never_sent(
            "status: Unavailable, message: \"etcdserver: request timed out\""
        ));
        assert!(!never_sent("no answer within 1.5s"));
    }

    #[test]
    fn keys_share_the_prefix() {
        let keys = Workload::default().keys();
        assert_eq!(keys.len(), 4);
        assert!(keys.iter().all(|k| k.starts_with(KEY_PREFIX)));
    }
}
