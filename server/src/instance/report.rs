//! What `/topology` shows of an instance (and `/metrics` and the state
//! store read): plain data, built by [`super::Instance::report`].

use super::load::Role;
use crate::serving::Source;
use crate::topology::BatchWait;

pub use super::stats::LastFault;

/// What `/topology` shows of one instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceReport {
    /// The article's `status`: whether it takes routed traffic.
    pub status: bool,
    /// Requests in flight or waiting for it.
    pub load: usize,
    /// Its direct port, as the article writes it (a string), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// active, standby or promoted.
    pub role: Role,
    /// Saturation threshold.
    pub max_load: usize,
    /// Model name.
    pub model: String,
    /// Deployment version in force.
    pub version: String,
    /// Where it came from: `topology` or `deploy`.
    pub source: Source,
    /// Since when it is in force (RFC 3339).
    pub since: String,
    /// The version `rollback` would return to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// Saved versions the last start could not rebuild, kept until a start
    /// can or a rollout lets them go (see [`crate::serving::Held`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldReport>,
    /// A canary taking a share of requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryReport>,
    /// Predictions answered with 200.
    pub served: u64,
    /// Calls that failed in the instance (traps, deadlines, model failures).
    pub failed: u64,
    /// Traps (including deadlines) since start.
    pub traps: u64,
    /// Faulted sandboxes replaced (from the warm pool, or cold when it was empty).
    pub respawns: u64,
    /// Times it was promoted from standby.
    pub promotions: u64,
    /// Its last fault could not be repaired: the next call rebuilds its sandbox.
    pub broken: bool,
    /// Its sandboxes: how many may run at once, and how many do now.
    pub sandboxes: SandboxReport,
    /// Its dynamic batching, if its entry asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchReport>,
    /// A chaos fault armed and not fired yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub armed_fault: Option<&'static str>,
    /// Chaos faults fired since start.
    pub faults_fired: u64,
    /// The most recent fault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fault: Option<LastFault>,
}

/// An instance's sandboxes as `/topology` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SandboxReport {
    /// Most calls running at once.
    pub concurrency: usize,
    /// Sandboxes in a call now (the canary's included).
    pub busy: usize,
    /// Sandboxes ready and waiting for a call (the canary's included).
    pub idle: usize,
}

/// An instance's dynamic batching: its settings and what it merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BatchReport {
    /// Most requests merged into one call.
    pub max_requests: usize,
    /// How long a batch waits at most for requests to join it, in µs.
    pub max_delay_us: u64,
    /// Whether it waits only while requests keep arriving, or its whole
    /// delay.
    pub wait: BatchWait,
    /// Merged calls run (two requests or more).
    pub batches: u64,
    /// Requests those calls answered.
    pub batched_requests: u64,
    /// Merged calls that faulted; their requests then ran on their own.
    pub poisoned: u64,
}

/// The versions an instance holds: saved, not rebuilt at the last start.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldReport {
    /// The version a deploy put in force (the file's serves meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed: Option<String>,
    /// The version before it (no rollback meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// A canary as `/topology` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CanaryReport {
    /// Its version.
    pub version: String,
    /// The share of requests it takes, in percent.
    pub percent: u8,
}
