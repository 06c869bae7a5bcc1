//! The host lifetime: what exists once per process.
//!
//! One wasmtime [`Engine`] (pooling allocator, epoch interruption), one
//! [`Linker`] that offers guests a capability-free WASI 0.2 plus wasi:nn, and
//! one epoch ticker thread that makes per-call deadlines work. Deployments
//! (modules + models) and instances are built on top of a [`HostRuntime`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_nn::wit::{WasiNnCtx, WasiNnView};

/// How often the epoch advances: the resolution of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-instance limits and scheduling every instance is created with.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a single guest call may run before it is interrupted.
    pub deadline: Duration,
    /// Most linear memory one instance may hold, in bytes.
    pub max_memory: usize,
    /// Calls whose recent average takes longer than this run on the blocking
    /// pool instead of the request's task (zero: always).
    pub offload_above: Duration,
    /// Host memory one model may claim (its constants, and each tensor whose
    /// size it fixes), in bytes.
    pub max_model_bytes: u64,
    /// Whether a guest may give wasi-nn model bytes of its own.
    pub guest_models: bool,
    /// Most calls one instance runs at once, each in its own sandbox, where
    /// its topology entry does not say.
    pub concurrency: usize,
    /// Sandboxes an idle instance keeps: 1, or 0 to scale to zero.
    pub keep_idle: usize,
    /// How long a sandbox beyond `keep_idle` may idle before it is dropped.
    pub idle_after: Duration,
    /// Longest a call waits for a place in its instance's sandboxes (every
    /// one busy) before it is refused ([`crate::sandbox::live::CallError::Queued`]).
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(1),
            max_memory: 64 << 20,
            offload_above: Duration::from_millis(1),
            max_model_bytes: crate::sandbox::nn::DEFAULT_MODEL_BUDGET,
            guest_models: false,
            concurrency: 1,
            keep_idle: 1,
            idle_after: Duration::from_secs(30),
            queue_timeout: hard_limit(Duration::from_secs(1)),
        }
    }
}

/// The default concurrency per instance: the machine's cores shared among
/// the instances that take traffic (rounded up), so that the actives
/// together can use every core and a single instance alone can; and at
/// least 2, so that one hung or slow call never holds a whole instance
/// (measured: with one call at a time, a hang in one of 3-active lost 19
/// requests in one of three drills; with two, none in three).
pub fn default_concurrency(actives: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.div_ceil(actives.max(1)).max(2)
}

impl Limits {
    /// The deadline in epoch ticks (at least one).
    pub fn deadline_ticks(&self) -> u64 {
        let ticks = self.deadline.as_micros() / EPOCH_TICK.as_micros();
        (ticks as u64).max(1)
    }
}

/// How long `ticks` epoch ticks last: the deadline a call really runs under.
pub fn ticks_duration(ticks: u64) -> Duration {
    EPOCH_TICK * ticks as u32
}

/// What every instance's `Store` holds: its WASI context (no capabilities),
/// its resource table, its wasi-nn context, its memory limiter and the
/// running call's deadline.
pub struct InstanceState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) nn: WasiNnCtx,
    pub(crate) limits: StoreLimits,
    pub(crate) budget: TickBudget,
    /// The wasi-nn tensors the guest created, held to `--max-memory` bytes.
    pub(crate) tensors: crate::sandbox::nn::tensors::GuestTensors,
}

/// A call's deadline in epoch ticks that count only while its guest runs:
/// the epoch callback ([`on_tick`]) fires at the first tick the running
/// guest observes after its last one, so time the thread spent descheduled
/// (CPU contention) or the task spent waiting to be polled is not spent.
#[derive(Debug, Default, Clone, Copy)]
pub struct TickBudget {
    used: u64,
    allowed: u64,
}

impl TickBudget {
    /// Whether the call was seen running WebAssembly for a long call's
    /// ticks ([`LONG_CALL_TICKS`]).
    pub(crate) fn ran_long(&self) -> bool {
        self.used >= LONG_CALL_TICKS
    }
}

/// Starts a guest call on `store` with `ticks` of budget.
pub(crate) fn start_call(store: &mut wasmtime::Store<InstanceState>, ticks: u64) {
    store.data_mut().budget = TickBudget {
        used: 0,
        allowed: ticks,
    };
    store.set_epoch_deadline(1);
}

/// Running ticks after which a call is a long one: predictions take
/// microseconds to a few milliseconds, a hung guest takes its whole budget.
pub const LONG_CALL_TICKS: u64 = 4;

/// Every store's epoch callback: each tick a guest is seen running spends
/// one tick of its call's budget and yields its thread back to the async
/// runtime (the call resumes when the runtime polls it again), so a
/// spinning guest never holds a worker thread for longer than a tick; an
/// exhausted budget interrupts the call (a deadline trap).
///
/// A long call ([`LONG_CALL_TICKS`] of running) also sleeps a tick before
/// it runs again, so it takes at most half a core: a hung guest on a
/// busy machine cannot take the CPU its healthy neighbours need. Its budget
/// counts running ticks only, so the sleep costs it no budget.
pub(crate) fn on_tick(
    mut cx: wasmtime::StoreContextMut<'_, InstanceState>,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let budget = &mut cx.data_mut().budget;
    budget.used += 1;
    Ok(next_step(*budget))
}

/// What a call does at a tick, given its budget after spending the tick.
fn next_step(budget: TickBudget) -> wasmtime::UpdateDeadline {
    if budget.used >= budget.allowed {
        wasmtime::UpdateDeadline::Interrupt
    } else if budget.used >= LONG_CALL_TICKS {
        wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(EPOCH_TICK)))
    } else {
        wasmtime::UpdateDeadline::Yield(1)
    }
}

/// The wall-clock bound on one guest call, whatever it does: a guest
/// blocked in a host call (a WASI sleep, say) runs no WebAssembly, so no
/// epoch callback can stop it; the host drops such a call at this bound.
pub fn hard_limit(deadline: Duration) -> Duration {
    deadline * 2 + Duration::from_secs(1)
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The engine, the linker and the epoch ticker; shared by every deployment.
pub struct HostRuntime {
    engine: Engine,
    linker: Linker<InstanceState>,
    limits: Limits,
    _ticker: EpochTicker,
}

impl HostRuntime {
    /// Builds the engine for about `sandboxes` live sandboxes at once (the
    /// pooling allocator reserves slots for them up front; see
    /// [`sandboxes_for`]).
    pub fn new(limits: Limits, sandboxes: usize) -> wasmtime::Result<Self> {
        let engine = Engine::new(&engine_config(limits, sandboxes))?;
        let mut linker = Linker::new(&engine);
        // Async WASI: a guest's blocking write (a panic message on stderr) must
        // not block_on inside the request's task, which the sync bindings do.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_nn::wit::add_to_linker(&mut linker, |s: &mut InstanceState| {
            WasiNnView::new(&mut s.table, &mut s.nn)
        })?;
        capped_tensor_constructor(&mut linker)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            linker,
            limits,
            _ticker: ticker,
        })
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The shared linker (WASI 0.2 without capabilities, wasi:nn).
    pub fn linker(&self) -> &Linker<InstanceState> {
        &self.linker
    }

    /// The limits each instance gets.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// Sandboxes to reserve for instances of these concurrencies: each may run
/// its concurrency in the version in force and as many in a canary, plus a
/// replacement being built and a warm spare. Saturates: a concurrency near
/// `usize::MAX` must fail the start-up check, not wrap past it.
pub fn sandboxes_for(concurrencies: impl IntoIterator<Item = usize>) -> usize {
    concurrencies
        .into_iter()
        .map(|c| c.max(1).saturating_mul(2).saturating_add(2))
        .fold(0, usize::saturating_add)
}

fn engine_config(limits: Limits, sandboxes: usize) -> Config {
    // Room for every sandbox, and a margin for smoke tests and rollouts.
    let components = u32::try_from(sandboxes.max(4) + 64).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(components)
        .total_core_instances(components.saturating_mul(8))
        .max_core_instances_per_component(32)
        .total_memories(components.saturating_mul(2))
        .max_memories_per_component(4)
        .total_tables(components.saturating_mul(4))
        .max_tables_per_component(8)
        .total_stacks(components)
        .max_memory_size(limits.max_memory);
    // `HADR_VALGRIND=1` (scripts/count-instructions): a pool of the topology's sandboxes and two
    // more, without the margin, whose address space valgrind can map; the code compiled is the
    // same. A deploy or a canary can then run out of sandboxes: said at start.
    if std::env::var_os("HADR_VALGRIND").is_some_and(|v| v == "1") {
        let small = u32::try_from(sandboxes.max(4) + 2).unwrap_or(u32::MAX);
        tracing::warn!(sandboxes = small, "HADR_VALGRIND=1: the sandbox pool holds only the \
            topology's sandboxes and two more, so that valgrind can run the host; unset it to serve");
        pool.total_component_instances(small)
            .total_core_instances(small.saturating_mul(8))
            .total_memories(small)
            .total_tables(small.saturating_mul(4))
            .total_stacks(small);
    }
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // `HADR_PERFMAP=1` names JIT-compiled guest functions for `perf`.
    if std::env::var_os("HADR_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// Replaces wasi-nn's `tensor` constructor with one that holds the guest's
/// tensors to its byte cap ([`GuestTensors`](crate::sandbox::nn::tensors::GuestTensors)):
/// over it, the call traps like a refused memory grow.
fn capped_tensor_constructor(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_nn::wit::TensorType;
    use wasmtime_wasi_nn::Tensor;
    linker.allow_shadowing(true);
    linker
        .instance("wasi:nn/tensor@0.2.0-rc-2024-10-28")?
        .func_wrap(
            "[constructor]tensor",
            |mut store: wasmtime::StoreContextMut<'_, InstanceState>,
             (dimensions, ty, data): (Vec<u32>, TensorType, Vec<u8>)| {
                let state = store.data_mut();
                let tensor = Tensor {
                    dimensions,
                    ty,
                    data,
                };
                Ok((state.tensors.push(&mut state.table, tensor)?,))
            },
        )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own thread, so a
/// guest stuck in a loop is interrupted at its deadline.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hadr-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::UpdateDeadline;

    #[test]
    fn sandboxes_are_counted_without_wrapping() {
        assert_eq!(sandboxes_for([1, 2, 0]), 4 + 6 + 4);
        assert_eq!(sandboxes_for([usize::MAX / 2 + 1]), usize::MAX);
        assert_eq!(sandboxes_for([usize::MAX - 1, 1]), usize::MAX);
    }

    fn step(used: u64, allowed: u64) -> UpdateDeadline {
        next_step(TickBudget { used, allowed })
    }

    #[test]
    fn the_default_concurrency_shares_the_cores_and_is_at_least_two() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(default_concurrency(1), cores.max(2));
        assert_eq!(default_concurrency(0), cores.max(2));
        assert_eq!(default_concurrency(cores * 4), 2);
        assert_eq!(default_concurrency(3), cores.div_ceil(3).max(2));
    }

    #[tokio::test]
    async fn short_calls_yield_long_ones_also_sleep_and_a_spent_budget_interrupts() {
        assert!(matches!(step(1, 200), UpdateDeadline::Yield(1)));
        assert!(matches!(
            step(LONG_CALL_TICKS - 1, 200),
            UpdateDeadline::Yield(1)
        ));
        assert!(matches!(
            step(LONG_CALL_TICKS, 200),
            UpdateDeadline::YieldCustom(1, _)
        ));
        assert!(matches!(step(199, 200), UpdateDeadline::YieldCustom(1, _)));
        assert!(matches!(step(200, 200), UpdateDeadline::Interrupt));
        assert!(matches!(step(1, 1), UpdateDeadline::Interrupt));
    }
}
