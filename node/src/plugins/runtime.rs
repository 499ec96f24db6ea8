//! The wasmtime side of plugins, and the only file in cairn that names wasmtime.
//!
//! One [`Runtime`] per node: an Engine with the pooling allocator, fuel metering and epoch
//! interruption, and a thread that advances the epoch every [`TICK`]. A [`Loaded`] plugin is
//! its component compiled once and pre-linked (`PluginPre`). Each configured plugin owns an
//! [`Instances`] pool: instances made from the `PluginPre`, each in its own `Store` with the
//! plugin's memory limit and a WASI context built once, handed out one call at a time and
//! put back after a clean call. A call that traps, runs out of fuel, passes its deadline or
//! blows its memory limit drops its instance: a misbehaving instance is never reused.
//!
//! Why reuse: a fresh store, WASI context and instance per call cost ~86 µs of a trivial
//! admission call; a ready instance costs a few µs. The price is that a plugin's globals
//! and heap persist between calls of the same instance (never across plugins); the SDK
//! documents that plugins must not rely on either.
//!
//! The per-call budget is fuel (wasm instructions), not time: a busy machine that
//! deschedules a call's thread does not make the call fail, and the same plugin gets the
//! same budget on every machine. The epoch deadline stays as a generous wall-clock backstop
//! for what fuel does not meter (host calls, page faults of a growing memory).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Trap,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::PluginError;

mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../sdk/wit",
        // Calls run on fibers, so WASI's streams (a guest's panic message on stderr) are
        // served by async host code: sync WASI would block on the tokio runtime, which
        // panics on a runtime worker.
        exports: { default: async },
    });
}

pub use bindings::cairn::plugin::host::Level;
pub use bindings::cairn::plugin::types::{
    Decision, DeleteOp, KeyValue, Principal, PrincipalSource, PutOp, Rewrite, WriteOp, WriteRequest,
};
pub use bindings::exports::cairn::plugin::auth::{
    AuthRequest, Credentials, Identity, KeyAccess, Operation, UserPassword,
};
pub use bindings::exports::cairn::plugin::backup::Direction;
use bindings::exports::cairn::plugin::backup::Guest as BackupExports;
use bindings::{Plugin, PluginPre};

/// How often the epoch advances: the granularity of call deadlines.
const TICK: Duration = Duration::from_millis(1);

/// The largest memory any plugin may be configured with: the pooling allocator reserves
/// slots of this size (address space only; pages are touched on use).
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;

/// Concurrent plugin calls across the node. Calls run on the async workers and take
/// microseconds, so this is far above what is ever in flight; past it a call fails and
/// the plugin's failure policy answers.
const POOL_INSTANCES: u32 = 128;

/// Bytes of log a plugin may write per call; the rest is dropped with one notice.
const LOG_BYTES_PER_CALL: usize = 16 * 1024;

/// The most pairs `host.range` returns, whatever the plugin asks for.
pub const RANGE_LIMIT: u32 = 1000;

/// The node's current state, as `host.range` and `host.count` read it.
pub trait NodeState: Send + Sync {
    /// At most `limit` pairs of the range.
    fn range(&self, key: &[u8], range_end: &[u8], limit: u32) -> Result<Vec<KeyValue>, String>;

    /// The number of live keys in the range, or `None` if counting them outlasted `until`.
    fn count(&self, key: &[u8], range_end: &[u8], until: Instant) -> Result<Option<u64>, String>;
}

/// A node state with no keys: what a plugin sees where no store is open (`cairn plugin
/// check`, the plugin benchmark, `cairn snapshot restore --unseal`).
pub struct EmptyState;

impl NodeState for EmptyState {
    fn range(&self, _: &[u8], _: &[u8], _: u32) -> Result<Vec<KeyValue>, String> {
        Ok(Vec::new())
    }

    fn count(&self, _: &[u8], _: &[u8], _: Instant) -> Result<Option<u64>, String> {
        Ok(Some(0))
    }
}

/// The engine shared by all plugins. Cloning shares it; the epoch thread stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<CallState>>,
    _ticker: Arc<Ticker>,
}

/// Stops the epoch thread when dropped.
struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new() -> Result<Runtime, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 8)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 8)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size(MAX_MEMORY_BYTES as usize);
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        // Rust's std on wasm32-wasip2 imports WASI (stderr for panics, clocks, random). It
        // is linked with an empty context: no preopened directories, no environment, and
        // sockets refuse every address.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            }
        };
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(ticker)
            .map_err(|e| PluginError::Engine(format!("starting the epoch thread: {e}")))?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    /// Compiles and pre-links a component. `bytes` may be a binary component or WAT.
    pub fn load(&self, bytes: &[u8]) -> Result<Loaded, String> {
        let component = Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}"))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("{e:#}"))?;
        let pre = PluginPre::new(pre).map_err(|e| format!("{e:#}"))?;
        Ok(Loaded {
            engine: self.engine.clone(),
            pre,
        })
    }
}

/// What an instance's store holds: WASI's empty context, the limits, and the host's view
/// of the plugin.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    env: Arc<CallEnv>,
    log_bytes: usize,
    /// When the current call's wall-clock backstop passes; host calls that may take long
    /// (`count`) stop there.
    deadline: Instant,
}

/// What the host functions know about the plugin being called.
pub struct CallEnv {
    pub name: String,
    /// The plugin's `config` value, as JSON.
    pub config_json: String,
    pub state: Arc<dyn NodeState>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::cairn::plugin::types::Host for CallState {}

impl bindings::cairn::plugin::host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        // A plugin that logs in a loop must not flood the node's log.
        let before = self.log_bytes;
        self.log_bytes = self.log_bytes.saturating_add(message.len());
        if self.log_bytes > LOG_BYTES_PER_CALL {
            if before <= LOG_BYTES_PER_CALL {
                tracing::warn!(plugin = %self.env.name, "plugin log limit reached; dropping the rest of this call's messages");
            }
            return;
        }
        let plugin = &self.env.name;
        match level {
            Level::Trace => tracing::trace!(%plugin, "{message}"),
            Level::Debug => tracing::debug!(%plugin, "{message}"),
            Level::Info => tracing::info!(%plugin, "{message}"),
            Level::Warn => tracing::warn!(%plugin, "{message}"),
            Level::Error => tracing::error!(%plugin, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.env.config_json.clone()
    }

    fn monotonic_now(&mut self) -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn unix_seconds(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn range(
        &mut self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        limit: u32,
    ) -> Result<Vec<KeyValue>, String> {
        self.env
            .state
            .range(&key, &range_end, limit.min(RANGE_LIMIT))
    }

    fn count(&mut self, key: Vec<u8>, range_end: Vec<u8>) -> Result<u64, String> {
        // Epoch interruption cannot stop host code, so the count itself watches the call's
        // deadline: a plugin counting a huge range fails like one that loops too long.
        self.env
            .state
            .count(&key, &range_end, self.deadline)?
            .ok_or_else(|| "count stopped at the call's deadline".to_string())
    }
}

/// The budget of one call.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// Wasm instructions (wasmtime fuel) the call may execute: the budget.
    pub fuel: u64,
    /// The wall-clock backstop, for time fuel does not count.
    pub deadline: Duration,
}

/// How a call went wrong. The plugin's failure policy answers every one of these.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    #[error("ran out of fuel")]
    OutOfFuel,
    #[error("timed out")]
    Timeout,
    #[error("exceeded its memory limit")]
    Memory,
    #[error("trapped: {0}")]
    Trap(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("answered nonsense: {0}")]
    BadAnswer(String),
}

impl CallFailure {
    /// Whether the call was stopped for using up its budget (fuel or the deadline).
    pub fn is_timeout(&self) -> bool {
        matches!(self, CallFailure::OutOfFuel | CallFailure::Timeout)
    }
}

/// A compiled, pre-linked plugin. Cloning shares the compiled code.
#[derive(Clone)]
pub struct Loaded {
    engine: Engine,
    pre: PluginPre<CallState>,
}

impl Loaded {
    /// An empty pool of instances of this component, for one configured plugin.
    pub fn instances(&self, env: Arc<CallEnv>, memory_bytes: u64) -> Instances {
        Instances {
            loaded: self.clone(),
            env,
            memory_bytes,
            idle: Mutex::new(Vec::new()),
        }
    }
}

/// Ready instances of one configured plugin. Calls take one (or make one when none is
/// idle), and put it back only when the call ended cleanly.
pub struct Instances {
    loaded: Loaded,
    env: Arc<CallEnv>,
    memory_bytes: u64,
    idle: Mutex<Vec<Ready>>,
}

/// An instance with its store, between calls.
struct Ready {
    plugin: Plugin,
    store: Store<CallState>,
}

/// What a call used, for the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub fuel: u64,
}

impl Instances {
    /// The compiled component the instances are made from.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// Makes the first instance (the plugin's self-check at load: it links, runs its
    /// start-up code within `fuel`, `deadline` and its memory limit) and keeps it ready.
    pub async fn warm(&self, fuel: u64, deadline: Duration) -> Result<(), CallFailure> {
        let ready = self.instantiate(CallLimits { fuel, deadline }).await?;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ready);
        Ok(())
    }

    /// The admission hook.
    pub async fn check(
        &self,
        limits: CallLimits,
        request: &WriteRequest,
    ) -> (Result<Decision, CallFailure>, Usage) {
        self.pooled(limits, async |plugin, store| {
            plugin
                .cairn_plugin_admission()
                .call_check(store, request)
                .await
        })
        .await
    }

    /// `auth.authenticate`.
    pub async fn authenticate(
        &self,
        limits: CallLimits,
        credentials: &Credentials,
    ) -> (Result<Result<Option<Identity>, String>, CallFailure>, Usage) {
        self.pooled(limits, async |plugin, store| {
            plugin
                .cairn_plugin_auth()
                .call_authenticate(store, credentials)
                .await
        })
        .await
    }

    /// `auth.authorize`.
    pub async fn authorize(
        &self,
        limits: CallLimits,
        request: &AuthRequest,
    ) -> (Result<Decision, CallFailure>, Usage) {
        self.pooled(limits, async |plugin, store| {
            plugin
                .cairn_plugin_auth()
                .call_authorize(store, request)
                .await
        })
        .await
    }

    /// One call on a pooled instance: an idle one (or a new one) armed with `limits`,
    /// handed back to the pool by [`Self::finish`].
    async fn pooled<T>(
        &self,
        limits: CallLimits,
        call: impl AsyncFnOnce(&Plugin, &mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> (Result<T, CallFailure>, Usage) {
        let mut ready = match self.take(limits).await {
            Ok(ready) => ready,
            Err(failure) => return (Err(failure), Usage::default()),
        };
        arm(&mut ready.store, limits);
        let result = call(&ready.plugin, &mut ready.store).await;
        self.finish(ready, limits, result)
    }

    /// A backup stream on an instance of its own, made for it and dropped after it (never
    /// pooled): the plugin keeps its stream state in its memory from `begin` to `finish`.
    pub async fn backup_stream(&self, limits: CallLimits) -> Result<BackupStream, CallFailure> {
        Ok(BackupStream {
            ready: self.instantiate(limits).await?,
            limits,
        })
    }

    /// An idle instance, or a new one.
    async fn take(&self, limits: CallLimits) -> Result<Ready, CallFailure> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(ready) => Ok(ready),
            None => self.instantiate(limits).await,
        }
    }

    /// A new instance; its start-up code runs within `limits`, like a call.
    async fn instantiate(&self, limits: CallLimits) -> Result<Ready, CallFailure> {
        let state = CallState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(usize::try_from(self.memory_bytes).unwrap_or(usize::MAX))
                .instances(16)
                .trap_on_grow_failure(true)
                .build(),
            env: self.env.clone(),
            log_bytes: 0,
            deadline: Instant::now(),
        };
        let mut store = Store::new(&self.loaded.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        arm(&mut store, limits);
        let plugin = self
            .loaded
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(e, true))?;
        Ok(Ready { plugin, store })
    }

    /// Ends a call: a clean instance goes back to the pool (if there is room), a failed one
    /// is dropped, so its trapped or half-updated state is never seen again.
    fn finish<T>(
        &self,
        mut ready: Ready,
        limits: CallLimits,
        result: wasmtime::Result<T>,
    ) -> (Result<T, CallFailure>, Usage) {
        let left = ready.store.get_fuel().unwrap_or(0);
        let usage = Usage {
            fuel: limits.fuel.saturating_sub(left),
        };
        match result {
            Ok(value) => {
                ready.store.data_mut().log_bytes = 0;
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(ready);
                }
                (Ok(value), usage)
            }
            Err(e) => (Err(classify(e, false)), usage),
        }
    }
}

/// One plugin's side of one backup stream. Each call gets the plugin's whole budget anew.
/// Dropped after a failure: a trapped instance is never called again.
pub struct BackupStream {
    ready: Ready,
    limits: CallLimits,
}

impl BackupStream {
    /// The plugin's backup exports and its store, armed for the next call.
    fn next_call(&mut self) -> (&BackupExports, &mut Store<CallState>) {
        arm(&mut self.ready.store, self.limits);
        self.ready.store.data_mut().log_bytes = 0;
        (
            self.ready.plugin.cairn_plugin_backup(),
            &mut self.ready.store,
        )
    }

    /// What the last call used.
    pub fn usage(&self) -> Usage {
        let left = self.ready.store.get_fuel().unwrap_or(0);
        Usage {
            fuel: self.limits.fuel.saturating_sub(left),
        }
    }

    pub async fn begin(
        &mut self,
        direction: Direction,
        name: &str,
    ) -> Result<Result<String, String>, CallFailure> {
        let (backup, store) = self.next_call();
        backup
            .call_begin(store, direction, name)
            .await
            .map_err(|e| classify(e, false))
    }

    pub async fn transform(
        &mut self,
        chunk: &[u8],
    ) -> Result<Result<Vec<u8>, String>, CallFailure> {
        let (backup, store) = self.next_call();
        backup
            .call_transform(store, chunk)
            .await
            .map_err(|e| classify(e, false))
    }

    pub async fn finish(&mut self) -> Result<Result<Vec<u8>, String>, CallFailure> {
        let (backup, store) = self.next_call();
        backup
            .call_finish(store)
            .await
            .map_err(|e| classify(e, false))
    }
}

/// Instances kept idle per plugin: calls run to completion on the async workers (they
/// never wait), so about one per worker is ever busy; the rest is headroom for bursts.
const MAX_IDLE: usize = 16;

/// Sets a call's budget: its fuel, and the epoch deadline as a backstop.
fn arm(store: &mut Store<CallState>, limits: CallLimits) {
    // Fuel is always on in this engine, so setting it cannot fail.
    let _ = store.set_fuel(limits.fuel);
    let ticks = limits
        .deadline
        .as_micros()
        .div_ceil(TICK.as_micros())
        .max(1);
    // One tick more than asked: the current tick may be about to end.
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1));
    store.data_mut().deadline = Instant::now() + limits.deadline;
}

fn classify(e: wasmtime::Error, instantiating: bool) -> CallFailure {
    let full = format!("{e:#}");
    // The whole error (with the guest's backtrace) goes to the log; the client sees one
    // short line, which must fit in a gRPC status header.
    tracing::debug!(error = %full, "plugin call failed");
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => CallFailure::OutOfFuel,
        Some(Trap::Interrupt) => CallFailure::Timeout,
        // A failed memory.grow traps (trap_on_grow_failure) with this message.
        _ if full.contains("forcing trap when growing memory") => CallFailure::Memory,
        Some(trap) => CallFailure::Trap(short(&trap.to_string())),
        None if instantiating => CallFailure::Instantiate(short(&full)),
        None => CallFailure::Trap(short(&full)),
    }
}

/// The first line of `text`, at most 160 characters.
fn short(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(160) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_string(),
    }
}
