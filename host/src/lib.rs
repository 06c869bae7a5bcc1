//! # hadr-host
//!
//! hadr runs every predictor of a high-availability topology as an isolated
//! WebAssembly component instance, behind a router that counts each
//! instance's in-flight load, skips saturated ones and promotes a standby
//! when the actives are full.
//!
//! ## How a request flows
//! listener ([`http::server`], body limit in [`http::body`]) → router
//! ([`router`], deciding with the pure rules in [`policy`]) → instance
//! ([`instance`], reading what it serves from [`serving`]) → one of its
//! sandboxes ([`sandboxes`]; [`sandbox`]: one wasmtime `Store`) → guest
//! `predict`
//! (the request → tensor → wasi:nn → tract with hadr-trees' ensemble ops, in
//! [`nn`]) → the guest's JSON answer, to which the instance adds who answered.
//!
//! ## Three lifetimes
//! - **Host** ([`runtime`]): the engine, the linker (capability-free WASI 0.2
//!   plus wasi:nn) and the epoch ticker; once per process.
//! - **Deployment** ([`deployment`]): one compiled guest module paired with
//!   one loaded model; immutable, shared by every instance that serves it.
//! - **Instance** ([`instance`]): one topology entry, running up to
//!   `concurrency` calls at once, each in its own [`sandbox`] ([`sandboxes`]:
//!   taken on demand, released after idling), serving what its [`serving`]
//!   value says (in force, previous, canary). When a sandbox traps (panic,
//!   refused memory grow, deadline) its `Store` alone is dropped, a warm
//!   spare from the deployment's pool takes its place at once, and the
//!   request is retried once on another instance ([`http::api`]).
//!
//! Chaos drills arm real faults through the admin listener ([`http::admin`],
//! bearer token): inside a guest that exports `chaos`, else from the host
//! through the call's epoch deadline. The admin listener also takes new guest modules and
//! models: [`rollout`] validates them off the request path, then swaps each
//! instance's immutable serving value (deploy, canary, promote, abort,
//! rollback) with no failed request; [`compiled_cache`] keeps compiled
//! guests so a restart does not compile them again.
//!
//! Runtime facts (roles, counters, faults, deployments) live in the sled
//! state directory ([`persistence`] writes them off the request path;
//! [`recovery`] reconciles them with the topology file at start), so a host
//! killed with `kill -9` comes back where it was.
//!
//! Modules depend on each other one way (docs/architecture.md draws the
//! layers; `tests/architecture.rs` fails on a cycle).
//!
//! [`serve`] wires them together from a [`topology`] file; [`shutdown`] is
//! the one signal every task listens to; [`metrics`] serves `/metrics`.
//!
//! Measuring: [`loadtest`] offers load in Locust's closed model or an open,
//! ramped one (the benchmarks and `hadr-host loadtest` use it); [`drill`]
//! runs topologies through a capacity ramp and real faults and writes the
//! report and charts; [`admin_client`] is what `hadr-host deploy` and
//! `rollback` send. [`fleet`] spreads a topology over hosts (one `serve
//! --only <entry>` each) behind HAProxy: its configuration, a deploy rolled
//! host by host, and a whole fleet on loopback for the drill and tests;
//! [`spawn`] runs `hadr-host serve` child processes for both.

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

pub mod admin_client;
pub mod compiled_cache;
pub mod deployment;
pub mod drill;
pub mod fleet;
pub mod guest_log;
pub mod http;
pub mod instance;
pub mod loadtest;
pub mod metrics;
pub mod nn;
pub mod oip;
pub mod persistence;
pub mod policy;
pub mod recovery;
pub mod rollout;
pub mod router;
pub mod runtime;
pub mod sandbox;
pub mod sandboxes;
pub mod serve;
pub mod serving;
pub mod shutdown;
pub mod spawn;
pub mod topology;
