//! The sandboxes of one instance for one deployment: up to `concurrency` run
//! calls at once, each in its own store with its own memory and deadline.
//!
//! A call waits for a place ([`Sandboxes::take`]), takes an idle sandbox of
//! its version (or none: the caller builds one, from the deployment's warm
//! pool when it has a spare), and gives it back after the call
//! ([`Sandboxes::put_back`]); a call that poisoned its store gives back its
//! replacement, or nothing. So a trap replaces only the faulted sandbox and
//! the calls running in the others go on.
//!
//! Which idle sandbox ([`choose`]): one with a chaos fault armed, else the
//! most recently used of those last run on this thread, else the most
//! recently used. A sandbox's memory, store and fiber stack stay in the
//! caches of the core that ran it; taken by the other worker, every line
//! of them moves across (on 2 cores, with calls alternating between the
//! workers, plain most-recent-first moved them on almost every call).
//!
//! Elasticity: sandboxes idle for longer than `idle_after` are dropped
//! ([`Sandboxes::trim`]), down to `keep_idle` (1, or 0 to scale to zero: the
//! next call then pays one instantiation). Under steady light load each
//! worker thread that calls keeps its own sandbox in use, so an instance
//! holds up to min(workers, `concurrency`) until its calls stop: the memory
//! of a sandbox per core, traded for calls that find theirs in cache.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lock;
use crate::sandbox::live::Live;

/// What the set needs to know of a sandbox.
pub trait Pooled {
    /// The deployment version it was built from.
    fn version(&self) -> &str;
    /// Whether a chaos fault is armed in it (the next call must take it).
    fn is_armed(&self) -> bool;
}

impl Pooled for Live {
    fn version(&self) -> &str {
        Live::version(self)
    }

    fn is_armed(&self) -> bool {
        self.armed().is_some()
    }
}

/// How many sandboxes an instance runs and keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elasticity {
    /// Most calls running at once (sandboxes busy).
    pub concurrency: usize,
    /// Idle sandboxes kept however long they idle: 1, or 0 to scale to zero.
    pub keep_idle: usize,
    /// How long a sandbox beyond `keep_idle` may idle before it is dropped.
    pub idle_after: Duration,
}

impl Default for Elasticity {
    fn default() -> Self {
        Self {
            concurrency: 1,
            keep_idle: 1,
            idle_after: Duration::from_secs(30),
        }
    }
}

/// An instance's sandboxes for one deployment slot (the version in force,
/// or the canary).
#[derive(Debug)]
pub struct Sandboxes<T = Live> {
    elasticity: Elasticity,
    /// One permit per call that may run at once.
    places: Arc<Semaphore>,
    /// Sandboxes waiting for a call, and the version in force.
    idle: Mutex<Pool<T>>,
}

/// The idle sandboxes of a set, least recently used first, and the version
/// in force (`None` until [`Sandboxes::set_in_force`]): idle sandboxes of
/// any other version than it, or than the taker's, are stale.
#[derive(Debug)]
struct Pool<T> {
    list: Vec<Idle<T>>,
    in_force: Option<String>,
}

#[derive(Debug)]
struct Idle<T> {
    live: T,
    since: Instant,
    /// The thread that gave it back (see [`choose`]): the one that ran its
    /// last call, except for calls offloaded to the blocking pool (those
    /// never match a worker, so they fall back to the most recent).
    ran_on: ThreadId,
}

thread_local! {
    /// This thread's id, without `thread::current()`'s reference count.
    static HERE: ThreadId = std::thread::current().id();
}

/// Which of `idle` (least recently used first) a call on thread `here`
/// takes: the one with a chaos fault armed (the fault must fire on the next
/// call), else the most recent that `here` ran, else the most recent.
fn choose<T: Pooled>(idle: &[Idle<T>], here: ThreadId, version: &str) -> Option<usize> {
    let fits = |i: &Idle<T>| i.live.version() == version;
    idle.iter()
        .position(|i| fits(i) && i.live.is_armed())
        .or_else(|| idle.iter().rposition(|i| fits(i) && i.ran_on == here))
        .or_else(|| idle.iter().rposition(fits))
}

/// A place to run one call, with the sandbox it took (if any was idle).
/// Dropped, it frees the place and drops the sandbox: a call dropped in
/// the middle leaves its store unfit for another.
#[derive(Debug)]
pub struct Taken<T = Live> {
    /// The sandbox: `None` to be built by the call.
    pub live: Option<T>,
    _place: OwnedSemaphorePermit,
}

/// A place taken while its request still waits for something else before
/// its call (a batch's leader waits for its batch to fill). No call has
/// touched its sandbox yet, so if the request goes away meanwhile (its
/// client hung up), the sandbox goes back to the set instead of being
/// dropped with the place.
#[derive(Debug)]
pub struct Held<'a, T: Pooled = Live> {
    set: &'a Sandboxes<T>,
    taken: Option<Taken<T>>,
}

impl<T: Pooled> Held<'_, T> {
    /// The place, for its call.
    pub fn into_taken(mut self) -> Taken<T> {
        self.taken.take().expect("a held place is let go once")
    }
}

impl<T: Pooled> Drop for Held<'_, T> {
    fn drop(&mut self) {
        if let Some(taken) = self.taken.take() {
            self.set.put_back(taken);
        }
    }
}

impl<T: Pooled> Sandboxes<T> {
    /// None yet; up to `elasticity.concurrency` at once.
    pub fn new(elasticity: Elasticity) -> Self {
        Self {
            elasticity,
            places: Arc::new(Semaphore::new(elasticity.concurrency.max(1))),
            idle: Mutex::new(Pool {
                list: Vec::new(),
                in_force: None,
            }),
        }
    }

    /// Waits for a place to run a call, then takes an idle sandbox built
    /// from `version` as [`choose`] says (idle ones of other versions are
    /// stale and dropped).
    pub async fn take(&self, version: &str) -> Taken<T> {
        let place = self
            .places
            .clone()
            .acquire_owned()
            .await
            .expect("the sandbox semaphore is never closed");
        self.with_idle(place, version)
    }

    /// Like [`Self::take`], waiting for a place until `until`: `None` past
    /// it.
    pub async fn take_until(&self, version: &str, until: Instant) -> Option<Taken<T>> {
        let place = tokio::time::timeout_at(until.into(), self.places.clone().acquire_owned())
            .await
            .ok()?
            .expect("the sandbox semaphore is never closed");
        Some(self.with_idle(place, version))
    }

    /// `place`, with an idle sandbox built from `version` as [`choose`]
    /// says (idle ones of other versions are stale and dropped).
    fn with_idle(&self, place: OwnedSemaphorePermit, version: &str) -> Taken<T> {
        let live = {
            let mut pool = lock(&self.idle);
            let Pool { list, in_force } = &mut *pool;
            // A taker of a version no longer in force (a request that read
            // what the instance served just before a swap) leaves the
            // version in force's sandboxes alone.
            list.retain(|i| {
                let v = i.live.version();
                v == version || in_force.as_deref() == Some(v)
            });
            choose(list, HERE.with(|h| *h), version).map(|k| list.remove(k).live)
        };
        Taken {
            live,
            _place: place,
        }
    }

    /// Like [`Self::take`], without waiting: `None` while every place is
    /// taken (or awaited).
    pub fn try_take(&self, version: &str) -> Option<Taken<T>> {
        let place = self.places.clone().try_acquire_owned().ok()?;
        Some(self.with_idle(place, version))
    }

    /// Holds `taken` until its call starts (see [`Held`]).
    pub fn hold(&self, taken: Taken<T>) -> Held<'_, T> {
        Held {
            set: self,
            taken: Some(taken),
        }
    }

    /// Gives back the sandbox a call used (or nothing, when its store was
    /// poisoned and not replaced), as the most recently used, run on this
    /// thread.
    pub fn put_back(&self, mut taken: Taken<T>) {
        if let Some(live) = taken.live.take() {
            let ran_on = HERE.with(|h| *h);
            lock(&self.idle).list.push(Idle {
                live,
                since: Instant::now(),
                ran_on,
            });
        }
    }

    /// Drops sandboxes idle for longer than `idle_after`, keeping the
    /// `keep_idle` most recently used and any with a chaos fault armed.
    /// Returns how many were dropped.
    pub fn trim(&self, now: Instant) -> usize {
        let Elasticity {
            keep_idle,
            idle_after,
            ..
        } = self.elasticity;
        let idle = &mut lock(&self.idle).list;
        let spare = idle.len().saturating_sub(keep_idle);
        let before = idle.len();
        let mut seen = 0;
        idle.retain(|i| {
            seen += 1;
            let old = now.saturating_duration_since(i.since) > idle_after;
            !(seen <= spare && old && !i.live.is_armed())
        });
        before - idle.len()
    }

    /// Records the version in force: from now on idle sandboxes of any
    /// other version are dropped by the next taker, whatever its version.
    pub fn set_in_force(&self, version: &str) {
        let mut pool = lock(&self.idle);
        if pool.in_force.as_deref() != Some(version) {
            pool.in_force = Some(version.to_owned());
        }
    }

    /// Drops every idle sandbox (a canary ended).
    pub fn clear(&self) {
        lock(&self.idle).list.clear();
    }

    /// Sandboxes in a call now: the places taken.
    pub fn busy(&self) -> usize {
        self.concurrency()
            .saturating_sub(self.places.available_permits())
    }

    /// Sandboxes waiting for a call.
    pub fn idle(&self) -> usize {
        lock(&self.idle).list.len()
    }

    /// Most calls running at once.
    pub fn concurrency(&self) -> usize {
        self.elasticity.concurrency.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Fake {
        id: u32,
        version: &'static str,
        armed: bool,
    }

    impl Pooled for Fake {
        fn version(&self) -> &str {
            self.version
        }
        fn is_armed(&self) -> bool {
            self.armed
        }
    }

    fn fake(id: u32) -> Fake {
        Fake {
            id,
            version: "v1",
            armed: false,
        }
    }

    fn set(concurrency: usize, keep_idle: usize) -> Sandboxes<Fake> {
        Sandboxes::new(Elasticity {
            concurrency,
            keep_idle,
            idle_after: Duration::from_millis(100),
        })
    }

    /// Runs one call per sandbox at once (the set idle, so each builds
    /// its own) and gives them back in order.
    async fn fill(set: &Sandboxes<Fake>, sandboxes: Vec<Fake>) {
        let mut calls = Vec::new();
        for _ in 0..sandboxes.len() {
            let taken = set.take("v1").await;
            assert!(taken.live.is_none());
            calls.push(taken);
        }
        for (mut taken, sandbox) in calls.into_iter().zip(sandboxes) {
            taken.live = Some(sandbox);
            set.put_back(taken);
        }
    }

    #[tokio::test]
    async fn a_held_place_let_go_before_its_call_keeps_its_sandbox() {
        let set = set(1, 1);
        fill(&set, vec![fake(1)]).await;
        let held = set.hold(set.take("v1").await);
        assert_eq!((set.busy(), set.idle()), (1, 0));
        drop(held);
        assert_eq!((set.busy(), set.idle()), (0, 1), "back, unused");
        // Let go into its call, the place is the call's to give back.
        let taken = set.hold(set.take("v1").await).into_taken();
        assert_eq!(taken.live.as_ref().map(|f| f.id), Some(1));
        drop(taken);
        assert_eq!((set.busy(), set.idle()), (0, 0), "dropped with its call");
    }

    #[tokio::test]
    async fn at_most_concurrency_calls_run_and_busy_counts_them() {
        let set = set(2, 1);
        let a = set.take("v1").await;
        let b = set.take("v1").await;
        assert_eq!(set.busy(), 2);
        let third = tokio::time::timeout(Duration::from_millis(200), set.take("v1")).await;
        assert!(third.is_err(), "a third call waited");
        set.put_back(a);
        assert_eq!(set.busy(), 1);
        let c = tokio::time::timeout(Duration::from_secs(5), set.take("v1"))
            .await
            .expect("a place came free");
        drop((b, c));
        assert_eq!(set.busy(), 0);
    }

    #[tokio::test]
    async fn trying_to_take_never_waits_and_takes_what_take_would() {
        let set = set(1, 1);
        fill(&set, vec![fake(7)]).await;
        let first = set.try_take("v1").expect("a place is free");
        assert_eq!(first.live.as_ref().map(|f| f.id), Some(7));
        assert!(set.try_take("v1").is_none(), "the only place is taken");
        set.put_back(first);
        assert!(set.try_take("v1").is_some_and(|t| t.live.is_some()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_a_place_ends_at_its_deadline() {
        let set = set(1, 1);
        let busy = set.take("v1").await;
        // (Paused: tokio's clock jumps to the deadline; std's stands still.)
        let waited = tokio::time::Instant::now();
        let until = Instant::now() + Duration::from_millis(200);
        assert!(
            set.take_until("v1", until).await.is_none(),
            "no place came free"
        );
        assert!(waited.elapsed() >= Duration::from_millis(200));
        drop(busy);
        let later = Instant::now() + Duration::from_millis(200);
        assert!(set.take_until("v1", later).await.is_some(), "a free place");
    }

    #[tokio::test]
    async fn a_taker_of_a_stale_version_leaves_the_version_in_forces_sandboxes() {
        let set = set(2, 1);
        set.set_in_force("v2");
        fill(
            &set,
            vec![Fake {
                version: "v2",
                ..fake(1)
            }],
        )
        .await;
        let stale = set.take("v1").await;
        assert!(stale.live.is_none(), "no v1 sandbox to take");
        assert_eq!(set.idle(), 1, "the v2 sandbox is kept");
        drop(stale);
        assert_eq!(set.take("v2").await.live.map(|f| f.id), Some(1));
    }

    #[tokio::test]
    async fn the_most_recent_sandbox_is_reused_and_stale_versions_are_dropped() {
        let set = set(2, 1);
        fill(&set, vec![fake(1), fake(2)]).await;
        assert_eq!(set.idle(), 2);
        assert_eq!(set.take("v1").await.live.as_ref().map(|f| f.id), Some(2));
        assert!(
            set.take("v2").await.live.is_none(),
            "v1 sandboxes are stale for v2"
        );
        assert_eq!(set.idle(), 0);
    }

    #[tokio::test]
    async fn an_armed_sandbox_is_taken_first_and_never_trimmed() {
        let set = set(3, 0);
        let armed = Fake {
            armed: true,
            ..fake(1)
        };
        fill(&set, vec![armed, fake(2)]).await;
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(set.trim(later), 1, "the unarmed one goes");
        assert_eq!(set.take("v1").await.live.as_ref().map(|f| f.id), Some(1));
    }

    #[tokio::test]
    async fn idle_sandboxes_beyond_keep_idle_are_dropped_after_idle_after() {
        let set = set(4, 1);
        fill(&set, vec![fake(1), fake(2), fake(3)]).await;
        assert_eq!(set.trim(Instant::now()), 0, "not idle long enough");
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(set.trim(later), 2);
        assert_eq!(
            set.take("v1").await.live.as_ref().map(|f| f.id),
            Some(3),
            "the most recent stays"
        );
        let zero = self::set(1, 0);
        fill(&zero, vec![fake(9)]).await;
        assert_eq!(zero.trim(later), 1, "scale to zero");
        assert_eq!(zero.idle(), 0);
    }

    #[test]
    fn a_call_takes_the_sandbox_its_thread_ran_last_unless_one_is_armed() {
        let other = std::thread::spawn(|| std::thread::current().id())
            .join()
            .unwrap();
        let here = std::thread::current().id();
        let idle = |specs: &[(u32, ThreadId, bool)]| -> Vec<Idle<Fake>> {
            specs
                .iter()
                .map(|&(id, ran_on, armed)| Idle {
                    live: Fake { armed, ..fake(id) },
                    since: Instant::now(),
                    ran_on,
                })
                .collect()
        };
        let pick = |specs: &[(u32, ThreadId, bool)]| {
            let idle = idle(specs);
            choose(&idle, here, "v1").map(|k| idle[k].live.id)
        };
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&[(1, other, false)]), Some(1), "any rather than none");
        assert_eq!(
            pick(&[(1, here, false), (2, here, false), (3, other, false)]),
            Some(2),
            "this thread's most recent, not the other's"
        );
        assert_eq!(
            pick(&[(1, other, false), (2, other, false)]),
            Some(2),
            "none of this thread's: the most recent"
        );
        assert_eq!(
            pick(&[(1, other, true), (2, here, false)]),
            Some(1),
            "an armed fault fires on the next call, wherever"
        );
    }

    #[tokio::test]
    async fn taking_from_the_middle_keeps_the_order_trim_relies_on() {
        let other = std::thread::spawn(|| std::thread::current().id())
            .join()
            .unwrap();
        let here = std::thread::current().id();
        let set = set(4, 1);
        let since = Instant::now();
        lock(&set.idle).list = [(1, other), (2, here), (3, other), (4, other)]
            .into_iter()
            .map(|(id, ran_on)| Idle {
                live: fake(id),
                since,
                ran_on,
            })
            .collect();
        let taken = set.take("v1").await;
        assert_eq!(taken.live.as_ref().map(|f| f.id), Some(2), "this thread's");
        drop(taken);
        let later = since + Duration::from_secs(1);
        assert_eq!(set.trim(later), 2);
        assert_eq!(
            set.take("v1").await.live.as_ref().map(|f| f.id),
            Some(4),
            "the most recent of the rest stays"
        );
    }

    #[tokio::test]
    async fn a_poisoned_sandbox_is_not_given_back() {
        let set = set(1, 1);
        fill(&set, vec![fake(1)]).await;
        let mut taken = set.take("v1").await;
        taken.live = None; // its call trapped and no replacement was built
        set.put_back(taken);
        assert_eq!((set.idle(), set.busy()), (0, 0));
    }
}
