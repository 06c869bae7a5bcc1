//! An instance's counters: what `/topology` and `/metrics` show and the
//! state store keeps across restarts. Written after each call, read by
//! reports; never on the routing decision's path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hadr_state::{FaultRecord, InstanceRecord};

use crate::lock;
use crate::sandbox::live::{ArmedFault, CallError};
use crate::serving::now_rfc3339;

/// A fault as `/topology` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastFault {
    /// What happened.
    pub error: String,
    /// When, in RFC 3339 (UTC).
    pub at: String,
}

/// The counters of one instance.
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Predictions answered with 200.
    pub(super) served: AtomicU64,
    /// Calls that failed in the instance (traps, deadlines, model failures).
    pub(super) failed: AtomicU64,
    /// Traps, deadlines included.
    pub(super) traps: AtomicU64,
    /// Faulted sandboxes replaced.
    pub(super) respawns: AtomicU64,
    /// Times it was promoted from standby.
    pub(super) promotions: AtomicU64,
    /// Its last fault could not be repaired: it has no working sandbox.
    pub(super) broken: AtomicBool,
    /// The chaos fault armed in one of its sandboxes and not fired yet,
    /// and how many fired.
    pub(super) armed: ArmedFault,
    /// The most recent fault.
    pub(super) last_fault: Mutex<Option<LastFault>>,
    /// Recent average call time in microseconds (exponentially weighted):
    /// decides whether a call moves to the blocking pool.
    pub(super) cost_us: AtomicU64,
}

impl Stats {
    /// Takes up the counters a previous run saved.
    pub(super) fn restore(&self, saved: &InstanceRecord) {
        self.served.store(saved.served, Ordering::Relaxed);
        self.failed.store(saved.failed, Ordering::Relaxed);
        self.traps.store(saved.traps, Ordering::Relaxed);
        self.respawns.store(saved.respawns, Ordering::Relaxed);
        self.promotions.store(saved.promotions, Ordering::Relaxed);
        *lock(&self.last_fault) = saved.last_fault.as_ref().map(|f| LastFault {
            error: f.error.clone(),
            at: f.at.clone(),
        });
    }

    /// What a call did to its sandbox: replaced it after a fault, and
    /// whether it left the instance without a working one (`None`: a call
    /// that says nothing of it, such as a canary's).
    pub(super) fn after_call(&self, replaced: bool, broken: Option<bool>) {
        if replaced {
            self.respawns.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(broken) = broken {
            self.broken.store(broken, Ordering::Relaxed);
        }
    }

    /// Counts a call's outcome and its time. The client's bad input counts
    /// nowhere.
    pub(super) fn record(&self, outcome: Result<(), &CallError>, took: Duration) {
        self.cost(took);
        self.count(outcome);
    }

    /// Counts how long a guest call took (a moving average: what decides
    /// whether the next call leaves the request's task).
    pub(super) fn cost(&self, took: Duration) {
        let us = took.as_micros() as u64;
        let old = self.cost_us.load(Ordering::Relaxed);
        self.cost_us
            .store(old - old / 8 + us / 8, Ordering::Relaxed);
    }

    /// Counts a request's outcome. The client's bad input counts nowhere.
    pub(super) fn count(&self, outcome: Result<(), &CallError>) {
        match outcome {
            Ok(()) => {
                self.served.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_bad_input() || e.never_reached_the_guest() => {}
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.fault(e);
            }
        }
    }

    /// Counts a failure of the instance (a trap or deadline as a trap) as
    /// its last fault, whether or not a request failed for it (a merged
    /// batch's requests run again on their own).
    pub(super) fn fault(&self, e: &CallError) {
        if matches!(
            e,
            CallError::Trap(_) | CallError::Deadline(_) | CallError::Unresponsive(_)
        ) {
            self.traps.fetch_add(1, Ordering::Relaxed);
        }
        let fault = LastFault {
            error: e.summary(),
            at: now_rfc3339(),
        };
        *lock(&self.last_fault) = Some(fault);
    }

    /// The fault armed and not fired yet.
    pub(super) fn armed(&self) -> Option<&'static str> {
        self.armed.get()
    }

    pub(super) fn last_fault(&self) -> Option<LastFault> {
        lock(&self.last_fault).clone()
    }

    /// The counters the state store keeps, into `record`.
    pub(super) fn fill(&self, record: &mut InstanceRecord) {
        record.broken = self.broken.load(Ordering::Relaxed);
        record.served = self.served.load(Ordering::Relaxed);
        record.failed = self.failed.load(Ordering::Relaxed);
        record.traps = self.traps.load(Ordering::Relaxed);
        record.respawns = self.respawns.load(Ordering::Relaxed);
        record.promotions = self.promotions.load(Ordering::Relaxed);
        record.last_fault = self.last_fault().map(|f| FaultRecord {
            error: f.error,
            at: f.at,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_counts_nowhere_and_a_deadline_is_a_failed_trap() {
        let stats = Stats::default();
        stats.record(Ok(()), Duration::from_micros(80));
        stats.record(
            Err(&CallError::Deadline(Duration::from_millis(5))),
            Duration::from_millis(5),
        );
        stats.record(Err(&CallError::NoTensors), Duration::ZERO);
        assert_eq!(stats.served.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        assert_eq!(stats.traps.load(Ordering::Relaxed), 1);
        assert!(stats.last_fault().unwrap().error.contains("deadline"));
    }

    #[test]
    fn a_replaced_sandbox_counts_a_respawn_and_a_call_says_whether_it_left_none() {
        let stats = Stats::default();
        stats.after_call(false, Some(true));
        assert!(stats.broken.load(Ordering::Relaxed));
        stats.after_call(true, Some(false));
        assert!(!stats.broken.load(Ordering::Relaxed));
        assert_eq!(stats.respawns.load(Ordering::Relaxed), 1);
    }
}
