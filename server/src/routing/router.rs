//! The router: the article's `router.py`, applied to live instances.
//!
//! Each request asks [`crate::routing::policy::decide_with`] over a fresh snapshot of roles
//! and loads, then claims the chosen instance with an atomic compare-and-add
//! that refuses to pass its threshold. Losing that race (another request took
//! the last slot) just means deciding again; the loop is bounded, so a
//! request is never stuck in the router.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::instance::{Instance, Lease};
use crate::routing::policy::{decide_with, demote, Decision, Role, View};
use crate::shutdown::Shutdown;
use crate::state::sync::StateSync;

/// How often an instance left without a working sandbox is rebuilt: a
/// failed build costs little, and a balancer polling `/readyz` sees the
/// instance back within about this.
pub const REPAIR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Routes requests over a topology's instances.
pub struct Router {
    instances: Vec<Arc<Instance>>,
    /// The names of the models the instances serve, sorted, once each:
    /// `/predict` must name one when there are several.
    models: Vec<String>,
    /// Where ties between equally loaded instances start: advanced once for
    /// each decision among tied instances, so that they take turns.
    next: AtomicUsize,
    /// Told of every promotion, so it is written out at once.
    state: Option<Arc<StateSync>>,
}

/// Which instances a request may go to: all of them for `/predict`; for
/// the Open Inference Protocol, those serving a model name (and a version,
/// when the URL names one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Want<'a> {
    /// The model name (the topology entry's model file stem).
    pub model: Option<&'a str>,
    /// The deployment version in force.
    pub version: Option<&'a str>,
}

impl Want<'_> {
    /// Whether `instance` may take the request.
    pub fn admits(&self, instance: &Instance) -> bool {
        self.model.is_none_or(|m| instance.serves_model(m))
            && self
                .version
                .is_none_or(|v| instance.deployment().version == v)
    }
}

/// The instances as the policy sees them: on the stack for topologies of
/// up to eight instances (the article's have one to three), as every
/// request takes a snapshot.
type Views = smallvec::SmallVec<[View; 8]>;

/// No instance can take the request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every instance is saturated or unavailable")]
pub struct Saturated;

impl Router {
    /// A router over `instances`, in topology order.
    pub fn new(instances: Vec<Arc<Instance>>) -> Self {
        let mut models: Vec<String> = instances.iter().map(|i| i.model_name()).collect();
        models.sort();
        models.dedup();
        Self {
            instances,
            models,
            next: AtomicUsize::new(0),
            state: None,
        }
    }

    /// The names of the models its instances serve, sorted, once each.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Nudges `state` to save at once whenever a standby is promoted.
    pub fn with_state(mut self, state: Arc<StateSync>) -> Self {
        self.state = Some(state);
        self
    }

    /// The instances, in topology order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// Looks an instance up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Instance>> {
        self.instances.iter().find(|i| i.name() == name)
    }

    /// Claims a slot on the instance the policy picks, promoting standbys as
    /// the policy asks. Fails with [`Saturated`] when nothing can take it.
    pub fn acquire(&self) -> Result<Lease, Saturated> {
        self.acquire_excluding(None)
    }

    /// Like [`Router::acquire`], but never picks `excluded` (the instance a
    /// request just failed on).
    pub fn acquire_excluding(&self, excluded: Option<&str>) -> Result<Lease, Saturated> {
        self.acquire_where(excluded, Want::default())
    }

    /// Like [`Router::acquire_excluding`], among the instances `want`
    /// admits: the others are neither routed to nor promoted, so each model
    /// keeps its own actives and standby.
    pub fn acquire_where(&self, excluded: Option<&str>, want: Want) -> Result<Lease, Saturated> {
        // Each round routes, promotes one standby, or loses one race; a few
        // more rounds than instances is plenty.
        let mut promoted = false;
        for _ in 0..self.instances.len() * 2 + 2 {
            let turn = || self.next.fetch_add(1, Ordering::Relaxed);
            match decide_with(&self.snapshot(excluded, want), turn) {
                Decision::Route(i) => {
                    if let Some(mut lease) = self.instances[i].try_lease() {
                        if promoted {
                            lease.mark_promoted();
                        }
                        return Ok(lease);
                    }
                }
                Decision::Promote(i) => {
                    let instance = &self.instances[i];
                    if instance.promote() {
                        promoted = true;
                        if let Some(state) = &self.state {
                            state.nudge();
                        }
                        tracing::warn!(
                            instance = instance.name(),
                            "every active instance is saturated or unusable: standby promoted to active"
                        );
                    }
                }
                Decision::Shed => return Err(Saturated),
            }
        }
        Err(Saturated)
    }

    /// Returns every promoted standby to standby now (`POST /admin/demote`);
    /// the names it demoted.
    pub fn demote_all(&self) -> Vec<String> {
        let demoted: Vec<String> = self
            .instances
            .iter()
            .filter(|i| i.demote())
            .map(|i| i.name().to_string())
            .collect();
        if !demoted.is_empty() {
            if let Some(state) = &self.state {
                state.nudge();
            }
        }
        demoted
    }

    /// Watches the actives until `shutdown`: once they have stayed calm
    /// (every active under its threshold with a working sandbox, and no new
    /// promotion) for `cooldown`, promoted standbys return to standby
    /// ([`crate::routing::policy::demote`]). Sampled every `cooldown / 10` (20 ms to
    /// 1 s).
    pub async fn return_standbys(&self, cooldown: std::time::Duration, shutdown: Shutdown) {
        let every = (cooldown / 10).clamp(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_secs(1),
        );
        let mut calm_since = tokio::time::Instant::now();
        let mut promotions = self.promotions();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => return,
            }
            let views = self.health_snapshot();
            let now = tokio::time::Instant::now();
            let seen = self.promotions();
            if seen != promotions || !crate::routing::policy::calm(&views) {
                calm_since = now;
                promotions = seen;
            }
            let demoted: Vec<&str> = demote(&views, now - calm_since, cooldown)
                .into_iter()
                .filter(|&i| self.instances[i].demote())
                .map(|i| self.instances[i].name())
                .collect();
            if !demoted.is_empty() {
                tracing::info!(instances = ?demoted, ?cooldown,
                    "the actives have carried the load alone for the cool-down: promoted standby returned to standby");
                if let Some(state) = &self.state {
                    state.nudge();
                }
            }
        }
    }

    /// Drops the sandboxes that idled past `--sandbox-idle` in every
    /// instance, until `shutdown` (sampled at a quarter of that period, 20 ms
    /// to 1 s).
    pub async fn trim_idle_sandboxes(&self, shutdown: Shutdown) {
        let Some(first) = self.instances.first() else {
            return;
        };
        let every = (first.idle_after() / 4).clamp(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => return,
            }
            let now = std::time::Instant::now();
            for instance in self.instances.iter() {
                let dropped = instance.trim_idle(now);
                if dropped > 0 {
                    tracing::debug!(
                        instance = instance.name(),
                        dropped,
                        "idle sandboxes released"
                    );
                }
            }
        }
    }

    /// Repairs every instance whose last fault left it without a working
    /// sandbox and has a place free ([`Instance::repair`]), every
    /// [`REPAIR_EVERY`] until `shutdown`. Failures are logged at the 1st,
    /// 2nd, 4th, 8th... attempt in a row, so an instance that stays broken
    /// is reported without flooding the log.
    pub async fn repair_broken(&self, shutdown: Shutdown) {
        let mut failures = vec![0u32; self.instances.len()];
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REPAIR_EVERY) => {}
                _ = shutdown.wait() => return,
            }
            for (instance, failed) in self.instances.iter().zip(&mut failures) {
                let repaired = tokio::select! {
                    repaired = instance.repair() => repaired,
                    _ = shutdown.wait() => return,
                };
                match repaired {
                    // Not broken, or every place busy: those calls decide.
                    None if !instance.is_broken() => *failed = 0,
                    None => {}
                    Some(Ok(())) => {
                        tracing::info!(
                            instance = instance.name(),
                            attempts = *failed + 1,
                            "instance repaired: it has a working sandbox again and takes requests"
                        );
                        *failed = 0;
                    }
                    Some(Err(e)) => {
                        *failed += 1;
                        if failed.is_power_of_two() {
                            tracing::warn!(instance = instance.name(), attempts = *failed, error = %e,
                                every = ?REPAIR_EVERY, "instance still has no working sandbox; trying again");
                        }
                    }
                }
            }
        }
    }

    fn promotions(&self) -> u64 {
        self.instances.iter().map(|i| i.promotions()).sum()
    }

    /// Roles and loads, a broken instance read as saturated.
    fn health_snapshot(&self) -> Vec<View> {
        self.instances
            .iter()
            .map(|i| {
                let max_load = i.spec().max_load;
                View {
                    role: i.role(),
                    load: if i.is_broken() { max_load } else { i.load() },
                    max_load,
                }
            })
            .collect()
    }

    /// Roles and loads now; an excluded instance (or one `want` does not
    /// admit) reads as a saturated active so the policy neither routes to it
    /// nor promotes it. A broken one reads as saturated in its role, as in
    /// [`Self::health_snapshot`]: it fails fast, so by load alone it would
    /// win nearly every pick, and each request would pay a failed build and
    /// a retry while a standby stayed unpromoted. [`Self::repair_broken`]
    /// brings it back.
    fn snapshot(&self, excluded: Option<&str>, want: Want) -> Views {
        self.instances
            .iter()
            .map(|i| {
                let max_load = i.spec().max_load;
                if excluded == Some(i.name()) || !want.admits(i) {
                    View {
                        role: Role::Active,
                        load: max_load,
                        max_load,
                    }
                } else {
                    View {
                        role: i.role(),
                        load: if i.is_broken() { max_load } else { i.load() },
                        max_load,
                    }
                }
            })
            .collect()
    }
}
