//! # hadr-server
//!
//! The serving library of hadr: every predictor of a high-availability
//! topology runs as isolated WebAssembly sandboxes behind a router that
//! counts each instance's in-flight load, skips saturated ones and promotes
//! a standby when the actives are full. The `hadr-host` binary (crate
//! `host/`) wraps it in a CLI; the tooling that talks to a running host over
//! HTTP (load generator, drill, admin client, fleets) is `hadr-tools`.
//!
//! ## The map
//! Each layer uses only the layers listed before it (and the leaves; of the
//! leaves, only `topology` uses another, `errors`); within the fifth row, `routing` and `rollout` also use `state`, and
//! `rollout` uses `metrics` (its counter). `host/tests/architecture.rs`
//! holds the same table and fails on a use that breaks it, and on any cycle
//! between modules (files, with `sandbox/nn/*` counted as one).
//!
//! | layer | owns | lifetime |
//! |---|---|---|
//! | leaves: [`bindings`], [`topology`], [`shutdown`], [`errors`] | the WIT contract, the topology file, the stop signal, errors told with their causes and fields | |
//! | [`sandbox`] | the engine, wasi-nn on tract, guest logs, the compiled cache, deployments and their warm pools, one sandbox and its call errors | host, deployment |
//! | [`oip`] | the Open Inference Protocol's tensors (pure codec) | |
//! | [`serving`] | what an instance serves: in force, previous, canary | swapped whole |
//! | [`instance`] | one topology entry: its spec, its load lease, its counters, its sandboxes | instance |
//! | [`state`], [`metrics`], [`routing`], [`rollout`] | choosing an instance (pure [`routing::policy`]); persisting and recovering runtime facts; `/metrics`; deploys, canaries, rollbacks | |
//! | [`http`] | the listeners, the public app and the admin app | |
//! | [`serve`] | wiring it all from a topology file; the `serve` flags | process |
//!
//! ## How a request flows
//! [`http::server`] (admission in [`http::admission`]) → [`http::api`] →
//! [`routing::router`] (deciding with [`routing::policy`]) → [`instance`]
//! (reading what it serves from [`serving`]) → one of its sandboxes
//! ([`sandbox::sandboxes`]; [`sandbox::live`]: one wasmtime `Store`) → the
//! guest's `predict` (or, for a guest that exports `rows`, the body parsed
//! on the host and the guest's `predict-rows`) → wasi:nn → tract
//! ([`sandbox::nn`]) → the answer, to which the instance adds who answered. docs/architecture.md
//! follows one request and one rollout through these modules.

/// Host bindings for the `hadr:predictor/predictor` world (exports only; the
/// imports are wired from wasmtime-wasi and wasmtime-wasi-nn).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "hadr:predictor/predictor",
        exports: { default: async },
        additional_derives: [PartialEq],
    });

    /// The optional `tensors` export (the Open Inference Protocol's
    /// `infer`), bound apart so that a guest without it is still a
    /// predictor; its types are the predictor's.
    pub mod tensors {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "hadr:predictor/tensor-predictor",
            exports: { default: async },
            with: { "hadr:predictor/types": crate::bindings::hadr::predictor::types },
        });
    }

    /// The optional `batch` export (dynamic batching), bound apart so that
    /// a guest without it still serves an instance that batches (one
    /// `predict` per request).
    pub mod batch {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "hadr:predictor/batch-predictor",
            exports: { default: async },
            with: { "hadr:predictor/types": crate::bindings::hadr::predictor::types },
        });
    }

    /// The optional `rows` export (`/predict` parsed on the host), bound
    /// apart so that a guest without it parses its own bodies.
    pub mod rows {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "hadr:predictor/rows-predictor",
            exports: { default: async },
            // The scores are wasi-nn's own tensors, which the host keeps in
            // the sandbox's resource table as wasmtime-wasi-nn's type.
            with: {
                "hadr:predictor/types": crate::bindings::hadr::predictor::types,
                "wasi:nn/tensor.tensor": wasmtime_wasi_nn::Tensor,
            },
        });
    }

    /// The optional `chaos` export, bound apart so that a guest without it
    /// is still a predictor.
    pub mod drillable {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "hadr:predictor/drillable",
            exports: { default: async },
        });
    }
}

pub mod errors;
pub mod http;
pub mod instance;
pub mod metrics;
pub mod oip;
pub mod rollout;
pub mod routing;
pub mod sandbox;
pub mod serve;
pub mod serving;
pub mod shutdown;
pub mod state;
pub mod topology;

/// Locks a mutex that guards plain data: a panic while it was held cannot
/// have left it half-written, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `work` for at most `limit` from its first wait: `None` once it has
/// waited that long (it is dropped). Whatever the work does before its first
/// wait is not counted: no timer could have cut that poll short anyway.
///
/// Unlike `tokio::time::timeout`, the timer is made only when the work
/// waits. Most of what the request path bounds this way (a guest call, a
/// body already in hyper's buffer) ends at its first poll, and a timer
/// costs each of them a clock read and two updates of the runtime's shared
/// reference count, a cache line the cores pass back and forth. Like
/// tokio's, the timer is polled outside the task's cooperative budget, so
/// work that spends the budget at every poll cannot keep it from firing.
pub(crate) async fn bounded<T>(
    limit: std::time::Duration,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    use std::future::Future;
    use std::task::Poll;
    let mut work = std::pin::pin!(work);
    let mut timer = std::pin::pin!(None::<tokio::task::Unconstrained<tokio::time::Sleep>>);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        if timer.is_none() {
            timer.set(Some(tokio::task::unconstrained(tokio::time::sleep(limit))));
        }
        match timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bounded_work_answers_in_time_and_is_dropped_at_its_limit() {
        let limit = Duration::from_secs(5);
        assert_eq!(super::bounded(limit, async { 7 }).await, Some(7));
        let waits = tokio::time::sleep(limit - Duration::from_millis(1));
        assert_eq!(super::bounded(limit, waits).await, Some(()));
        let started = tokio::time::Instant::now();
        let stuck = std::future::pending::<()>();
        // Within an outer bound: a `bounded` that never fired would
        // otherwise hang the test instead of failing it.
        let stopped = tokio::time::timeout(limit * 2, super::bounded(limit, stuck)).await;
        assert_eq!(stopped, Ok(None), "never stopped the stuck work");
        assert_eq!(started.elapsed(), limit);
    }
}
