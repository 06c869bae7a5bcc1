//! What an instance serves: the deployment in force, the one before it (for
//! rollback) and a canary taking a share of requests. One immutable
//! [`Serving`] value per instance, swapped whole by rollouts and read once
//! per request.
//!
//! It uses only deployments and the state store's record types; instances
//! read it, rollouts build it.
//!
//! May use: `sandbox` (deployments).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hadr_state::DeploymentRecord;
use tokio::sync::Notify;

use crate::sandbox::deployment::Deployment;

/// Where a deployment in force came from (as the state store keeps it).
pub use hadr_state::Source;

/// A deployment in force on an instance, and since when.
#[derive(Clone)]
pub struct InForce {
    /// The deployment.
    pub deployment: Arc<Deployment>,
    /// Where it came from.
    pub source: Source,
    /// When it came into force (RFC 3339).
    pub since: String,
}

impl InForce {
    /// `deployment`, in force from now.
    pub fn now(deployment: Arc<Deployment>, source: Source) -> Self {
        Self {
            deployment,
            source,
            since: now_rfc3339(),
        }
    }

    /// What the state store keeps of it.
    pub fn record(&self) -> DeploymentRecord {
        let d = &self.deployment;
        DeploymentRecord {
            module_digest: d.module.digest.clone(),
            model_digest: d.model.digest.clone(),
            model: d.model.name.clone(),
            version: d.version.clone(),
            source: self.source,
            since: self.since.clone(),
            example_digest: Some(d.example_digest.clone()),
        }
    }
}

/// What an instance serves: swapped whole, never edited.
#[derive(Clone)]
pub struct Serving {
    /// The deployment in force.
    pub current: InForce,
    /// The one before it, for rollback.
    pub previous: Option<InForce>,
    /// A canary taking a share of this instance's requests, if any.
    pub canary: Option<Arc<Canary>>,
    /// Saved deployments this start could not rebuild, kept for the state.
    pub held: Held,
}

/// Deployments saved for an instance that the last start could not rebuild
/// (blobs missing or damaged, or refused under this start's limits). The
/// state keeps recording them, and the garbage collector their files,
/// instead of what stands in for them, so a later start that can rebuild
/// them (the old limits back, the files restored) serves them again. A
/// deploy, promote or rollback on the instance lets them go.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// The version a deploy put in force; the file's serves meanwhile.
    pub deployed: Option<DeploymentRecord>,
    /// The version before it; there is no rollback meanwhile.
    pub previous: Option<DeploymentRecord>,
}

impl Serving {
    /// What the state keeps of the deployment in force and the one before.
    pub fn records(&self) -> (DeploymentRecord, Option<DeploymentRecord>) {
        let current = self
            .held
            .deployed
            .clone()
            .unwrap_or_else(|| self.current.record());
        let previous = match &self.held.previous {
            Some(held) => Some(held.clone()),
            None => self.previous.as_ref().map(InForce::record),
        };
        (current, previous)
    }
}

/// A canary: a deployment taking a share of some instances' requests.
pub struct Canary {
    /// What it serves.
    pub deployment: Arc<Deployment>,
    /// The share of requests it takes, in percent.
    pub percent: u8,
    /// Above this error rate (after `min_calls`) it trips.
    pub(crate) max_error_rate: f64,
    min_calls: u64,
    sent: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    /// Set once it must take no more requests (tripped, aborted or ended).
    pub(crate) tripped: AtomicBool,
    /// Woken when it trips, for the rollout that watches it.
    pub(crate) trip: Notify,
}

impl Canary {
    pub(crate) fn new(
        deployment: Arc<Deployment>,
        percent: u8,
        max_error_rate: f64,
        min_calls: u64,
    ) -> Self {
        Self {
            deployment,
            percent: percent.min(100),
            max_error_rate,
            min_calls,
            sent: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
            trip: Notify::new(),
        }
    }

    /// Whether this request goes to the canary: exactly `percent` of every
    /// hundred requests, spread evenly; none once it has tripped.
    pub fn pick(&self) -> bool {
        if self.tripped.load(Ordering::Relaxed) {
            return false;
        }
        takes(self.sent.fetch_add(1, Ordering::Relaxed), self.percent)
    }

    /// Counts one canary call; trips the canary when its error rate passes
    /// the threshold.
    pub fn record(&self, error: bool) {
        let calls = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let errors = self.errors.fetch_add(u64::from(error), Ordering::Relaxed) + u64::from(error);
        let rate = errors as f64 / calls as f64;
        if calls >= self.min_calls
            && rate > self.max_error_rate
            && !self.tripped.swap(true, Ordering::AcqRel)
        {
            self.trip.notify_one();
        }
    }

    /// Calls and errors so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Whether request `n` (counting from 0) goes to a canary of `percent`:
/// exactly `percent` of every hundred, spread evenly.
fn takes(n: u64, percent: u8) -> bool {
    let p = u64::from(percent);
    (n * p) / 100 != ((n + 1) * p) / 100
}

/// Now, as RFC 3339 in UTC with milliseconds: how every record says when.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(percent: u8, n: u64) -> usize {
        (0..n).filter(|&k| takes(k, percent)).count()
    }

    #[test]
    fn a_canary_takes_exactly_its_share_of_each_hundred() {
        assert_eq!(share(20, 100), 20);
        assert_eq!(share(20, 1000), 200);
        assert_eq!(share(1, 100), 1);
        assert_eq!(share(100, 50), 50);
        assert_eq!(share(10, 9), 0);
    }
}
