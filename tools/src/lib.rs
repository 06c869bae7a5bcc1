//! # hadr-tools
//!
//! What talks to a running `hadr-host serve` from outside, over HTTP: nothing
//! here runs a sandbox. It uses `hadr-server` only for the topology reader
//! (and the example request beside a model) and the admin API's request
//! types.
//!
//! - [`admin_client`]: what `hadr-host deploy` and `rollback` send
//!   (uploads by digest, then the deploy request).
//! - [`loadtest`]: load in Locust's closed model or an open, ramped one, with
//!   latency histograms and the per-instance share of the test.
//! - [`drill`]: topologies through a capacity ramp and real faults; the
//!   report and its charts.
//! - [`fleet`]: a topology spread over hosts behind HAProxy: its
//!   configuration, deploys rolled host by host, a whole fleet on loopback.
//! - [`spawn`]: `hadr-host serve` child processes and their ready line, for
//!   the drill, fleets, tests and benches.
//!
//! Layers: `spawn` and `loadtest` are leaves; `admin_client` ← `fleet` ←
//! `drill`.

pub mod admin_client;
pub mod drill;
pub mod fleet;
pub mod loadtest;
pub mod spawn;
