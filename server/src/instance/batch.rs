//! Dynamic batching for one instance: requests that arrive together are
//! merged into one guest call (an instance's `"batch"` entry).
//!
//! No task of its own: the first request of a batch leads it. It opens the
//! batch, waits for a free sandbox (others join meanwhile: the busier the
//! instance, the fuller its batches), then waits at most what is left of
//! `max_delay` since it opened, or until `max_requests` joined (yielding
//! to its worker's other tasks while requests keep joining, and only then
//! sleeping on a timer), closes the batch and runs it as one call on a task
//! of its own (so the leader's client hanging up cancels nobody's answer). A leader whose client hangs
//! up before that gives its sandbox back unused (`Sandboxes::hold`). Every
//! request of a merged call, the leader's included, is answered through a
//! channel.
//!
//! A batch that cannot fill would wait its whole delay: with few clients
//! that idles the cores (16 closed-loop clients cannot fill a batch of 32,
//! and a 200 µs delay cut their throughput to 0.69× unbatched). So the
//! batcher learns what batches that waited their whole delay held ([`Pace`])
//! and, once its leader has a sandbox, closes a batch as soon as it holds
//! that many rather than wait out the delay; one batch in
//! [`Pace::PROBE_EVERY`] waits anyway (a probe), so the size grows again
//! when the load does, and probes that find nothing new get rarer. While
//! the leader waits for a sandbox, requests keep joining up to
//! `max_requests`: a busy instance still makes full batches.
//!
//! A request never fails for another's sake: a refused body is refused alone
//! by the guest, and when the merged call faults (a trap, a deadline), or its
//! leader goes away (its client hung up), the batch's channels close and
//! every request runs again on its own, so only the one that poisoned the
//! batch fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use crate::bindings::hadr::predictor::types::PredictError;
use crate::lock;
use crate::sandbox::live::Predicted;
use crate::topology::BatchSpec;

use super::fine_timer;

/// What a request of a merged batch is sent: the guest's answer for it, or
/// its refusal of it. A closed channel instead says: run on your own.
pub(super) type Delivery = Result<Predicted, PredictError>;

/// One instance's batching: its settings, the batch forming, and counters.
#[derive(Debug)]
pub(super) struct Batcher {
    spec: BatchSpec,
    queue: Mutex<Queue>,
    /// Merged calls run (two requests or more).
    batches: AtomicU64,
    /// Requests answered by merged calls.
    merged: AtomicU64,
    /// Merged calls that faulted, whose requests then ran on their own.
    poisoned: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    /// The batch requests join now, if one is open.
    forming: Option<Batch>,
    /// What batches that waited their delay held.
    pace: Pace,
    /// Full batches whose leaders have not closed them yet.
    sealed: Vec<Batch>,
    next_id: u64,
}

impl Queue {
    /// Takes batch `id` out, if it is still here.
    fn take(&mut self, id: u64) -> Option<Batch> {
        if self.forming.as_ref().is_some_and(|b| b.id == id) {
            return self.forming.take();
        }
        let at = self.sealed.iter().position(|b| b.id == id)?;
        Some(self.sealed.swap_remove(at))
    }
}

/// A batch and who is waiting for it: the leader's body first.
#[derive(Debug)]
pub(super) struct Batch {
    id: u64,
    /// Joined only by requests for the same deployment version (a deploy
    /// can change it between two requests).
    version: Arc<str>,
    /// The request bodies, the leader's first.
    pub(super) bodies: Vec<Bytes>,
    /// Where each follower's answer goes (one fewer than `bodies`).
    pub(super) followers: Vec<oneshot::Sender<Delivery>>,
    /// Tells the leader the batch is full, or holds `close_at`.
    full: Arc<Notify>,
    /// How many requests are enough to close it without waiting out the
    /// delay ([`Pace`]).
    close_at: usize,
    /// Whether it waits its delay (or fills) whatever was learned: a probe.
    probe: bool,
}

/// What [`Batcher::join`] made of a request.
pub(super) enum Joined<'a> {
    /// It opened a batch: it leads it.
    Leader(Lead<'a>),
    /// It joined an open batch: its answer comes through the channel.
    Follower(oneshot::Receiver<Delivery>),
    /// It cannot join the open batch (another version): run on its own.
    Alone,
}

/// The leader's hold on the batch it opened. Dropped before the batch was
/// closed (the leader's client went away), it drops the batch: the
/// followers' channels close and they run on their own.
pub(super) struct Lead<'a> {
    batcher: &'a Batcher,
    id: u64,
    opened: Instant,
    full: Arc<Notify>,
}

impl Batcher {
    pub(super) fn new(spec: BatchSpec) -> Self {
        Self {
            spec,
            queue: Mutex::default(),
            batches: AtomicU64::new(0),
            merged: AtomicU64::new(0),
            poisoned: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub(super) fn spec(&self) -> BatchSpec {
        self.spec
    }

    /// Adds a request for `version` to the open batch, or opens one.
    pub(super) fn join(&self, version: &str, body: Bytes) -> Joined<'_> {
        let mut queue = lock(&self.queue);
        let queue = &mut *queue;
        if let Some(forming) = &mut queue.forming {
            if &*forming.version != version {
                return Joined::Alone;
            }
            let (reply, answer) = oneshot::channel();
            forming.bodies.push(body);
            forming.followers.push(reply);
            let joined = forming.bodies.len();
            if joined >= self.spec.max_requests {
                let full = queue.forming.take().expect("matched above");
                full.full.notify_one();
                queue.sealed.push(full);
            } else if joined == forming.close_at {
                forming.full.notify_one();
            }
            return Joined::Follower(answer);
        }
        let id = queue.next_id;
        queue.next_id += 1;
        let full = Arc::new(Notify::new());
        let (close_at, probe) = queue.pace.open(self.spec.max_requests);
        queue.forming = Some(Batch {
            id,
            version: version.into(),
            bodies: vec![body],
            followers: Vec::new(),
            full: full.clone(),
            close_at,
            probe,
        });
        Joined::Leader(Lead {
            batcher: self,
            id,
            opened: Instant::now(),
            full,
        })
    }

    /// Counts a merged call of `requests` requests, and whether it faulted.
    pub(super) fn count(&self, requests: usize, poisoned: bool) {
        if poisoned {
            self.poisoned.fetch_add(1, Ordering::Relaxed);
        } else {
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.merged.fetch_add(requests as u64, Ordering::Relaxed);
        }
    }

    /// Its counters: merged calls, requests they answered, merged calls
    /// that faulted.
    pub(super) fn counters(&self) -> (u64, u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.merged.load(Ordering::Relaxed),
            self.poisoned.load(Ordering::Relaxed),
        )
    }
}

impl Lead<'_> {
    /// Waits until the batch is full, holds as many as batches that waited
    /// their delay did, or `max_delay` has passed since it opened, then
    /// closes it: later requests open the next one.
    pub(super) async fn close(self) -> Batch {
        let until = self.opened + self.batcher.spec.max_delay;
        let waited = self.wait(until).await;
        let mut queue = lock(&self.batcher.queue);
        let batch = queue
            .take(self.id)
            .expect("only its leader takes a batch out of the queue");
        // A batch closed at the learned size says nothing of how many
        // would have come; one that waited its delay, or filled, does. One
        // that outgrew it while its leader waited for a sandbox says more
        // came than were learned.
        let size = batch.bodies.len();
        if waited || size >= self.batcher.spec.max_requests {
            queue.pace.observe(size, batch.probe);
        }
        if !batch.probe && size > batch.close_at {
            queue.pace.outgrown();
        }
        batch
    }

    /// Waits until the batch is enough (`false`) or its delay is over
    /// (`true`). While requests keep joining, it lets them: it yields to
    /// this worker's other tasks (the connections whose requests join) and
    /// looks again, so a busy instance's batches fill without arming a timer
    /// (a few system calls, and a wake-up that on a busy core preempts a
    /// worker). Once a round brings nobody, it sleeps.
    async fn wait(&self, until: Instant) -> bool {
        // One sleep for the whole wait, armed only if first polled: each new
        // one would arm another timer.
        let sleep = fine_timer::sleep_until(until);
        tokio::pin!(sleep);
        let mut seen = 0;
        loop {
            let (enough, joined) = self.look();
            if enough {
                return false;
            }
            if Instant::now() >= until {
                return true;
            }
            if joined > seen {
                seen = joined;
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = self.full.notified() => {}
                _ = &mut sleep => {}
            }
        }
    }

    /// Whether the batch is full or holds its `close_at`, and how many
    /// requests it holds.
    fn look(&self) -> (bool, usize) {
        let queue = lock(&self.batcher.queue);
        match &queue.forming {
            Some(b) if b.id == self.id => (b.bodies.len() >= b.close_at, b.bodies.len()),
            _ => (queue.sealed.iter().any(|b| b.id == self.id), usize::MAX),
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        // Closed normally: already taken, nothing left. Abandoned: the
        // followers' channels close with the batch.
        // Dropped after the lock is released: closing the followers'
        // channels wakes them.
        let batch = lock(&self.batcher.queue).take(self.id);
        drop(batch);
    }
}

/// What batches that waited their whole delay (or filled) held, and so how
/// many requests close the next batch early.
#[derive(Debug)]
struct Pace {
    /// Their mean size in sixteenths of a request (each new one weighs a
    /// quarter); `None` until one has waited.
    mean16: Option<u32>,
    /// Batches opened, to pick those that wait regardless (probes).
    opened: u64,
    /// Batches from one probe to the next: [`Pace::PROBE_EVERY`], doubled
    /// (up to [`Pace::PROBE_AT_MOST_EVERY`]) by each probe that found no
    /// more than was learned, and back to the least when one found more or
    /// a batch outgrew its learned size. A probe that cannot grow costs a
    /// whole delay: at light load, 1 in 8 of them cost a single client 21%
    /// of its throughput.
    probe_every: u64,
    /// The `opened` count at which the next probe opens.
    next_probe: u64,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            mean16: None,
            opened: 0,
            probe_every: Self::PROBE_EVERY,
            next_probe: 0,
        }
    }
}

impl Pace {
    /// At least one batch in this many waits its delay whatever it holds,
    /// so that batches can grow again when requests arrive faster.
    const PROBE_EVERY: u64 = 8;
    /// Probes that keep finding nothing new get this rare, no rarer.
    const PROBE_AT_MOST_EVERY: u64 = 256;

    /// How many requests close a batch opened now (at most `max_requests`),
    /// and whether it is a probe.
    fn open(&mut self, max_requests: usize) -> (usize, bool) {
        self.opened += 1;
        match self.mean16 {
            Some(mean) if self.opened < self.next_probe => {
                (Self::learned(mean).min(max_requests), false)
            }
            _ => {
                self.next_probe = self.opened + self.probe_every;
                (max_requests, true)
            }
        }
    }

    /// The size a mean of `mean16` sixteenths stands for: at least one.
    fn learned(mean16: u32) -> usize {
        ((mean16 + 8) / 16).max(1) as usize
    }

    /// A batch of `size` requests waited its whole delay, or filled; a
    /// probe if `probed`.
    fn observe(&mut self, size: usize, probed: bool) {
        if probed {
            let more = self.mean16.is_none_or(|mean| size > Self::learned(mean));
            self.probe_every = if more {
                Self::PROBE_EVERY
            } else {
                (self.probe_every * 2).min(Self::PROBE_AT_MOST_EVERY)
            };
            // Counted from now, at the new rate (the one `open` set
            // stands only if this probe is never observed: abandoned).
            self.next_probe = self.opened + self.probe_every;
        }
        let size = (size as u32).saturating_mul(16);
        self.mean16 = Some(match self.mean16 {
            None => size,
            Some(mean) => mean - mean / 4 + size / 4,
        });
    }

    /// A batch closed holding more than its learned size: requests arrive
    /// faster than was learned, so probe as often as at first again.
    fn outgrown(&mut self) {
        self.probe_every = Self::PROBE_EVERY;
        self.next_probe = self.next_probe.min(self.opened + Self::PROBE_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn batcher(max_requests: usize, max_delay: Duration) -> Batcher {
        Batcher::new(BatchSpec {
            max_requests,
            max_delay,
        })
    }

    fn leader(joined: Joined<'_>) -> Lead<'_> {
        match joined {
            Joined::Leader(lead) => lead,
            _ => panic!("expected to lead"),
        }
    }

    fn follower(joined: Joined<'_>) -> oneshot::Receiver<Delivery> {
        match joined {
            Joined::Follower(answer) => answer,
            _ => panic!("expected to follow"),
        }
    }

    /// Real time (tokio's paused clock would rebuild tokio and all that
    /// uses it for the tests): a delay of a minute stands for "never".
    const NEVER: Duration = Duration::from_secs(60);
    const SOON: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_full_batch_closes_at_once_and_the_next_request_opens_another() {
        let b = batcher(3, NEVER);
        let lead = leader(b.join("v1", Bytes::from_static(b"a")));
        let _f1 = follower(b.join("v1", Bytes::from_static(b"b")));
        let _f2 = follower(b.join("v1", Bytes::from_static(b"c")));
        let next = leader(b.join("v1", Bytes::from_static(b"d")));
        let batch = tokio::time::timeout(SOON, lead.close())
            .await
            .expect("full: no waiting for the delay");
        assert_eq!(batch.bodies, vec!["a", "b", "c"]);
        assert_eq!(batch.followers.len(), 2);
        let _f3 = follower(b.join("v1", Bytes::from_static(b"e")));
        let later = b.join("v1", Bytes::from_static(b"f"));
        assert!(matches!(later, Joined::Follower(_)));
        let next = tokio::time::timeout(SOON, next.close()).await;
        assert_eq!(next.expect("full").bodies, vec!["d", "e", "f"]);
    }

    #[tokio::test]
    async fn a_batch_that_does_not_fill_closes_after_max_delay() {
        let delay = Duration::from_millis(20);
        let b = batcher(8, delay);
        let started = Instant::now();
        let lead = leader(b.join("v1", Bytes::from_static(b"a")));
        let _f = follower(b.join("v1", Bytes::from_static(b"b")));
        let batch = lead.close().await;
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
        assert_eq!(batch.bodies.len(), 2);
    }

    #[tokio::test]
    async fn a_leader_that_waited_past_max_delay_closes_at_once() {
        let delay = Duration::from_millis(300);
        let b = batcher(8, delay);
        let lead = leader(b.join("v1", Bytes::from_static(b"a")));
        // Waiting for a sandbox took longer than the delay.
        tokio::time::sleep(delay).await;
        let closed = tokio::time::timeout(delay - Duration::from_millis(50), lead.close()).await;
        assert_eq!(closed.expect("no second delay").bodies.len(), 1);
    }

    #[tokio::test]
    async fn an_abandoned_batch_closes_its_followers_channels() {
        let b = batcher(8, NEVER);
        let lead = leader(b.join("v1", Bytes::from_static(b"a")));
        let answer = follower(b.join("v1", Bytes::from_static(b"b")));
        drop(lead);
        assert!(answer.await.is_err(), "told to run on its own");
        // The queue is empty again: the next request leads.
        let _next = leader(b.join("v1", Bytes::from_static(b"c")));
    }

    #[tokio::test]
    async fn a_sealed_batch_abandoned_by_its_leader_is_dropped_too() {
        let b = batcher(2, NEVER);
        let lead = leader(b.join("v1", Bytes::from_static(b"a")));
        let answer = follower(b.join("v1", Bytes::from_static(b"b")));
        drop(lead);
        assert!(answer.await.is_err());
        assert!(lock(&b.queue).sealed.is_empty());
    }

    #[test]
    fn requests_for_another_version_do_not_join() {
        let b = batcher(8, NEVER);
        let _lead = leader(b.join("v1", Bytes::from_static(b"a")));
        assert!(matches!(
            b.join("v2", Bytes::from_static(b"b")),
            Joined::Alone
        ));
    }

    #[tokio::test]
    async fn once_a_batch_waited_with_three_the_next_closes_at_three() {
        let b = batcher(8, Duration::from_millis(20));
        let lead = leader(b.join("v1", Bytes::from_static(b"a")));
        let _f = follower(b.join("v1", Bytes::from_static(b"b")));
        let _g = follower(b.join("v1", Bytes::from_static(b"c")));
        assert!(!lead.look().0, "nothing learned: it waits");
        assert_eq!(lead.close().await.bodies.len(), 3, "waited its delay");
        let lead = leader(b.join("v1", Bytes::from_static(b"d")));
        let _f = follower(b.join("v1", Bytes::from_static(b"e")));
        assert!(!lead.look().0);
        let _g = follower(b.join("v1", Bytes::from_static(b"f")));
        assert!(lead.look().0, "three, as the batch that waited");
        // Until its leader closes it (it waited for a sandbox), it grows.
        let _h = follower(b.join("v1", Bytes::from_static(b"g")));
        let batch = tokio::time::timeout(SOON, lead.close()).await;
        assert_eq!(batch.expect("closed").bodies, vec!["d", "e", "f", "g"]);
        // Closing does not wait for the delay: the next request leads.
        let _next = leader(b.join("v1", Bytes::from_static(b"h")));
    }

    #[tokio::test]
    async fn once_a_batch_waited_alone_the_next_request_does_not_wait() {
        let b = batcher(8, Duration::from_millis(20));
        let lead = leader(b.join("v1", Bytes::from_static(b"a")));
        assert_eq!(lead.close().await.bodies.len(), 1);
        let lead = leader(b.join("v1", Bytes::from_static(b"b")));
        assert!(lead.look().0);
        let batch = tokio::time::timeout(SOON, lead.close()).await;
        assert_eq!(batch.expect("closed at once").bodies, vec!["b"]);
    }

    #[test]
    fn pace_closes_at_the_mean_of_what_waited_except_one_batch_in_eight() {
        let mut pace = Pace::default();
        assert_eq!(
            pace.open(32),
            (32, true),
            "nothing learned: only a full batch"
        );
        pace.observe(8, true);
        let sizes: Vec<usize> = (0..16).map(|_| pace.open(32).0).collect();
        let probes = sizes.iter().filter(|&&n| n == 32).count();
        assert_eq!(probes, 16 / Pace::PROBE_EVERY as usize, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n == 8 || n == 32), "{sizes:?}");
        // Each new size weighs a quarter: 8, then 16, is 10.
        pace.observe(16, false);
        let learned = |pace: &mut Pace, max| {
            (0..Pace::PROBE_EVERY)
                .map(|_| pace.open(max).0)
                .min()
                .unwrap()
        };
        assert_eq!(learned(&mut pace, 32), 10);
        assert_eq!(learned(&mut pace, 6), 6, "never more than max_requests");
        for _ in 0..20 {
            pace.observe(1, false);
        }
        assert_eq!(learned(&mut pace, 32), 1);
    }

    /// The batches between one probe and the next, over `batches` batches
    /// in which each probe holds `size`.
    fn probe_gaps(pace: &mut Pace, batches: usize, size: usize) -> Vec<u64> {
        let mut gaps = Vec::new();
        let mut last = None;
        for _ in 0..batches {
            if pace.open(32).1 {
                if let Some(last) = last {
                    gaps.push(pace.opened - last);
                }
                last = Some(pace.opened);
                pace.observe(size, true);
            }
        }
        gaps
    }

    #[test]
    fn probes_that_find_nothing_new_get_rarer_and_one_that_does_brings_them_back() {
        let mut pace = Pace::default();
        let gaps = probe_gaps(&mut pace, 2000, 1);
        assert_eq!(gaps[..6], [8, 16, 32, 64, 128, 256], "{gaps:?}");
        assert!(gaps[6..].iter().all(|&g| g == 256), "no rarer: {gaps:?}");
        // A probe that finds more than the one request learned: every 8th.
        let mut pace = Pace::default();
        probe_gaps(&mut pace, 100, 1);
        let gaps = probe_gaps(&mut pace, 600, 4);
        assert_eq!(gaps[..3], [8, 8, 8], "{gaps:?}");
    }

    #[test]
    fn a_batch_that_outgrew_its_learned_size_brings_probes_back() {
        let mut pace = Pace::default();
        probe_gaps(&mut pace, 1000, 1);
        assert_eq!(pace.probe_every, Pace::PROBE_AT_MOST_EVERY);
        pace.outgrown();
        let next = (1..=Pace::PROBE_EVERY).find(|_| pace.open(32).1);
        assert!(
            next.is_some(),
            "a probe within {} batches",
            Pace::PROBE_EVERY
        );
    }

    /// A batcher of `max_requests` that learned one request and made its
    /// probes rare, and the leader of a batch that is not a probe.
    async fn learned_alone(b: &Batcher) -> Lead<'_> {
        for _ in 0..200 {
            leader(b.join("v1", Bytes::from_static(b"a"))).close().await;
        }
        assert!(lock(&b.queue).pace.probe_every > Pace::PROBE_EVERY);
        loop {
            let lead = leader(b.join("v1", Bytes::from_static(b"b")));
            if !lock(&b.queue).forming.as_ref().unwrap().probe {
                return lead;
            }
            lead.close().await;
        }
    }

    #[tokio::test]
    async fn a_batch_that_outgrew_or_filled_while_its_leader_waited_counts() {
        // Of 8 it outgrows its learned one; of 3 it fills.
        for max_requests in [8, 3] {
            let b = batcher(max_requests, Duration::from_millis(20));
            let lead = learned_alone(&b).await;
            // Two more join before its leader closes it.
            let _f = follower(b.join("v1", Bytes::from_static(b"c")));
            let _g = follower(b.join("v1", Bytes::from_static(b"d")));
            assert_eq!(lead.close().await.bodies.len(), 3);
            let every = lock(&b.queue).pace.probe_every;
            assert_eq!(every, Pace::PROBE_EVERY, "max_requests {max_requests}");
        }
    }

    #[test]
    fn counters_tell_merged_calls_from_poisoned_ones() {
        let b = batcher(8, NEVER);
        b.count(5, false);
        b.count(3, true);
        assert_eq!(b.counters(), (1, 5, 1));
    }
}
