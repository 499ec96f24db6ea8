//! The wasmtime side of plugins, and the only file in cairn that names wasmtime.
//!
//! One [`Runtime`] per node: an Engine with the pooling allocator and epoch interruption,
//! and a thread that advances the epoch every [`TICK`]. A [`Loaded`] plugin is its
//! component compiled once and pre-linked (`PluginPre`); every call gets a fresh `Store`
//! with the plugin's memory limit and an epoch deadline, so a call starts from a clean
//! instance and a misbehaving one is stopped, dropped and never reused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
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

/// Reads the node's current state for `host.range`.
pub type RangeFn = dyn Fn(&[u8], &[u8], u32) -> Result<Vec<KeyValue>, String> + Send + Sync;

/// The engine shared by all plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    stop: Arc<AtomicBool>,
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
            linker,
            stop,
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

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a call's store holds: WASI's empty context, the limits, and the host's view of
/// the plugin.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    env: Arc<CallEnv>,
    log_bytes: usize,
}

/// What the host functions know about the plugin being called.
pub struct CallEnv {
    pub name: String,
    /// The plugin's `config` value, as JSON.
    pub config_json: String,
    pub range: Option<Arc<RangeFn>>,
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
        match &self.env.range {
            Some(range) => range(&key, &range_end, limit.min(RANGE_LIMIT)),
            None => Err("range reads are not available to this plugin".into()),
        }
    }
}

/// The limits of one call.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    pub deadline: Duration,
    pub memory_bytes: u64,
}

/// How a call went wrong. The plugin's failure policy answers every one of these.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
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

/// A compiled, pre-linked plugin. Cloning shares the compiled code.
#[derive(Clone)]
pub struct Loaded {
    engine: Engine,
    pre: PluginPre<CallState>,
}

impl Loaded {
    /// Runs `f` on a fresh instance under `limits`.
    async fn store(
        &self,
        env: &Arc<CallEnv>,
        limits: CallLimits,
    ) -> Result<(Plugin, Store<CallState>), CallFailure> {
        let state = CallState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX))
                .instances(16)
                .trap_on_grow_failure(true)
                .build(),
            env: env.clone(),
            log_bytes: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(deadline_ticks(limits.deadline));
        store.epoch_deadline_trap();
        let plugin = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(e, true))?;
        Ok((plugin, store))
    }

    /// The admission hook, on a fresh instance under `limits`.
    pub async fn check(
        &self,
        env: &Arc<CallEnv>,
        limits: CallLimits,
        request: &WriteRequest,
    ) -> Result<Decision, CallFailure> {
        let (plugin, mut store) = self.store(env, limits).await?;
        plugin
            .cairn_plugin_admission()
            .call_check(&mut store, request)
            .await
            .map_err(|e| classify(e, false))
    }
}

/// The auth and backup hooks. Kept apart from the admission call above, which the
/// instance-reuse work reshapes.
impl Loaded {
    /// `auth.authenticate`, on a fresh instance under `limits`.
    pub async fn authenticate(
        &self,
        env: &Arc<CallEnv>,
        limits: CallLimits,
        credentials: &Credentials,
    ) -> Result<Result<Option<Identity>, String>, CallFailure> {
        let (plugin, mut store) = self.store(env, limits).await?;
        plugin
            .cairn_plugin_auth()
            .call_authenticate(&mut store, credentials)
            .await
            .map_err(|e| classify(e, false))
    }

    /// `auth.authorize`, on a fresh instance under `limits`.
    pub async fn authorize(
        &self,
        env: &Arc<CallEnv>,
        limits: CallLimits,
        request: &AuthRequest,
    ) -> Result<Decision, CallFailure> {
        let (plugin, mut store) = self.store(env, limits).await?;
        plugin
            .cairn_plugin_auth()
            .call_authorize(&mut store, request)
            .await
            .map_err(|e| classify(e, false))
    }

    /// A backup stream on one fresh instance: the plugin keeps its stream state in its
    /// memory from `begin` to `finish`. Each call gets `limits.deadline` anew.
    pub async fn backup_stream(
        &self,
        env: &Arc<CallEnv>,
        limits: CallLimits,
    ) -> Result<BackupStream, CallFailure> {
        let (plugin, store) = self.store(env, limits).await?;
        Ok(BackupStream {
            plugin,
            store,
            ticks: deadline_ticks(limits.deadline),
        })
    }
}

/// One plugin's side of one backup stream. Dropped after a failure: a trapped instance
/// is never called again.
pub struct BackupStream {
    plugin: Plugin,
    store: Store<CallState>,
    ticks: u64,
}

impl BackupStream {
    /// The plugin's backup exports and its store, the store rearmed for the next call
    /// with a fresh deadline and log allowance.
    fn next_call(&mut self) -> (&BackupExports, &mut Store<CallState>) {
        self.store.set_epoch_deadline(self.ticks);
        self.store.data_mut().log_bytes = 0;
        (self.plugin.cairn_plugin_backup(), &mut self.store)
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

/// Epoch ticks for a deadline, one more than asked: the current tick may be about to end.
fn deadline_ticks(deadline: Duration) -> u64 {
    let ticks = deadline.as_micros().div_ceil(TICK.as_micros()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

fn classify(e: wasmtime::Error, instantiating: bool) -> CallFailure {
    let full = format!("{e:#}");
    // The whole error (with the guest's backtrace) goes to the log; the client sees one
    // short line, which must fit in a gRPC status header.
    tracing::debug!(error = %full, "plugin call failed");
    match e.downcast_ref::<Trap>() {
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
