//! Dynamic batching for one instance: requests that arrive together are
//! merged into one guest call (an instance's `"batch"` entry).
//!
//! No task of its own: the first request of a batch leads it. It opens the
//! batch, waits for a free sandbox (others join meanwhile: the busier the
//! instance, the fuller its batches), then lets requests join for as long
//! as its `wait` says ([`BatchWait`]), closes the batch and runs it as one
//! call on a task of its own (so the leader's client hanging up cancels
//! nobody's answer). A leader whose client hangs up before that gives its
//! sandbox back unused (`Sandboxes::hold`). Every request of a merged call,
//! the leader's included, is answered through a channel.
//!
//! Waiting for requests pays only while they are arriving. The leader
//! yields to its worker's ready tasks (the connections whose requests
//! join) and looks again, for as long as each round brings new requests, up
//! to about `max_delay` (a round is not cut short) or `max_requests`. Once
//! a round brings nobody the instance is keeping up: by default
//! (`while-arriving`) the batch closes then, so a request that arrives
//! alone runs at once, and a busy instance still merges what arrives while
//! it works. `full-delay` sleeps instead, until the delay has passed or the
//! batch is full. (A batcher that slept until the size that past batches
//! reached cost two closed-loop clients a third of their throughput, 16
//! clients an eighth: see docs/benchmarks.md.)
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
use crate::topology::{BatchSpec, BatchWait};

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
    /// Tells a sleeping leader (`full-delay`) the batch is full.
    full: Arc<Notify>,
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
            if forming.bodies.len() >= self.spec.max_requests {
                let full = queue.forming.take().expect("matched above");
                full.full.notify_one();
                queue.sealed.push(full);
            }
            return Joined::Follower(answer);
        }
        let id = queue.next_id;
        queue.next_id += 1;
        let full = Arc::new(Notify::new());
        queue.forming = Some(Batch {
            id,
            version: version.into(),
            bodies: vec![body],
            followers: Vec::new(),
            full: full.clone(),
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
    /// Lets requests join as the batcher's `wait` says, at most until
    /// `max_delay` has passed since the batch opened or it is full, then
    /// closes it: later requests open the next one.
    pub(super) async fn close(self) -> Batch {
        self.wait(self.opened + self.batcher.spec.max_delay).await;
        lock(&self.batcher.queue)
            .take(self.id)
            .expect("only its leader takes a batch out of the queue")
    }

    /// Returns once the batch is full, `until` has passed, or (waiting
    /// `while-arriving`) a round of this worker's other tasks brought no
    /// new request. While rounds bring requests it yields to those tasks
    /// (the connections whose requests join) and looks again; waiting the
    /// `full-delay`, once a round brings nobody it sleeps until the batch
    /// is full or `until`.
    async fn wait(&self, until: Instant) {
        // One sleep for the whole wait, armed only if first polled: each new
        // one would arm another timer.
        let sleep = fine_timer::sleep_until(until);
        tokio::pin!(sleep);
        let mut seen = 0;
        loop {
            let Some(joined) = self.joined() else {
                return;
            };
            if Instant::now() >= until {
                return;
            }
            if joined > seen {
                seen = joined;
                tokio::task::yield_now().await;
                continue;
            }
            match self.batcher.spec.wait {
                BatchWait::WhileArriving => return,
                BatchWait::FullDelay => tokio::select! {
                    _ = self.full.notified() => {}
                    _ = &mut sleep => {}
                },
            }
        }
    }

    /// How many requests the batch holds, or `None` once it is full.
    fn joined(&self) -> Option<usize> {
        let queue = lock(&self.batcher.queue);
        match &queue.forming {
            Some(b) if b.id == self.id => Some(b.bodies.len()),
            _ => None,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use BatchWait::{FullDelay, WhileArriving};

    fn batcher(max_requests: usize, max_delay: Duration, wait: BatchWait) -> Batcher {
        Batcher::new(BatchSpec {
            max_requests,
            max_delay,
            wait,
        })
    }

    fn body(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
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
        let b = batcher(3, NEVER, FullDelay);
        let lead = leader(b.join("v1", body("a")));
        let _f1 = follower(b.join("v1", body("b")));
        let _f2 = follower(b.join("v1", body("c")));
        let next = leader(b.join("v1", body("d")));
        let batch = tokio::time::timeout(SOON, lead.close())
            .await
            .expect("full: no waiting for the delay");
        assert_eq!(batch.bodies, vec!["a", "b", "c"]);
        assert_eq!(batch.followers.len(), 2);
        let _f3 = follower(b.join("v1", body("e")));
        let later = b.join("v1", body("f"));
        assert!(matches!(later, Joined::Follower(_)));
        let next = tokio::time::timeout(SOON, next.close()).await;
        assert_eq!(next.expect("full").bodies, vec!["d", "e", "f"]);
    }

    #[tokio::test]
    async fn waiting_the_full_delay_a_batch_that_does_not_fill_closes_after_it() {
        let delay = Duration::from_millis(20);
        let b = batcher(8, delay, FullDelay);
        let started = Instant::now();
        let lead = leader(b.join("v1", body("a")));
        let _f = follower(b.join("v1", body("b")));
        let batch = lead.close().await;
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
        assert_eq!(batch.bodies.len(), 2);
    }

    #[tokio::test]
    async fn a_leader_that_waited_past_max_delay_closes_at_once() {
        let delay = Duration::from_millis(300);
        let b = batcher(8, delay, FullDelay);
        let lead = leader(b.join("v1", body("a")));
        // Waiting for a sandbox took longer than the delay.
        tokio::time::sleep(delay).await;
        let closed = tokio::time::timeout(delay - Duration::from_millis(50), lead.close()).await;
        assert_eq!(closed.expect("no second delay").bodies.len(), 1);
    }

    /// A request that comes after a quiet spell joins a batch that waits
    /// its full delay; waiting while requests arrive, the batch has closed
    /// by then and the request leads the next one.
    #[tokio::test]
    async fn only_a_full_delay_batch_waits_through_a_quiet_spell() {
        for (wait, merged) in [(FullDelay, 2), (WhileArriving, 1)] {
            let b = Arc::new(batcher(2, NEVER, wait));
            let lead = leader(b.join("v1", body("a")));
            let late = {
                let b = b.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    matches!(b.join("v1", body("b")), Joined::Follower(_))
                })
            };
            let batch = tokio::time::timeout(SOON, lead.close()).await;
            assert_eq!(batch.expect("closed").bodies.len(), merged, "{wait:?}");
            assert_eq!(late.await.unwrap(), merged == 2, "{wait:?}");
        }
    }

    #[tokio::test]
    async fn requests_that_join_round_after_round_are_merged() {
        let b = Arc::new(batcher(8, NEVER, WhileArriving));
        let lead = leader(b.join("v1", body("a")));
        // Another task on this thread joins one request each time it runs.
        let joiner = {
            let b = b.clone();
            tokio::spawn(async move {
                for text in ["b", "c", "d"] {
                    drop(follower(b.join("v1", body(text))));
                    tokio::task::yield_now().await;
                }
            })
        };
        let batch = tokio::time::timeout(SOON, lead.close()).await;
        assert_eq!(batch.expect("closed").bodies, vec!["a", "b", "c", "d"]);
        joiner.await.unwrap();
    }

    #[tokio::test]
    async fn requests_that_keep_arriving_hold_a_batch_open_no_longer_than_max_delay() {
        let delay = Duration::from_millis(50);
        let b = Arc::new(batcher(usize::MAX, delay, WhileArriving));
        let started = Instant::now();
        let lead = leader(b.join("v1", body("a")));
        // Joins a request every time it runs, until it leads the next batch.
        let joiner = {
            let b = b.clone();
            tokio::spawn(async move {
                while let Joined::Follower(_) = b.join("v1", body("b")) {
                    tokio::task::yield_now().await;
                }
            })
        };
        let batch = tokio::time::timeout(SOON, lead.close()).await;
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
        assert!(batch.expect("closed").bodies.len() > 1);
        tokio::time::timeout(SOON, joiner).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_leader_alone_closes_at_once_unless_it_waits_the_full_delay() {
        let b = batcher(8, NEVER, WhileArriving);
        let lead = leader(b.join("v1", body("a")));
        let batch = tokio::time::timeout(SOON, lead.close()).await;
        assert_eq!(batch.expect("no waiting for the delay").bodies, vec!["a"]);
        let b = batcher(8, NEVER, FullDelay);
        let lead = leader(b.join("v1", body("a")));
        let waited = tokio::time::timeout(Duration::from_millis(200), lead.close()).await;
        assert!(waited.is_err(), "waits its delay");
    }

    /// Forming (of 8) or sealed full (of 2), a batch its leader abandons
    /// is dropped: its followers are told to run on their own.
    #[tokio::test]
    async fn an_abandoned_batch_closes_its_followers_channels() {
        for max_requests in [8, 2] {
            let b = batcher(max_requests, NEVER, FullDelay);
            let lead = leader(b.join("v1", body("a")));
            let answer = follower(b.join("v1", body("b")));
            drop(lead);
            assert!(answer.await.is_err(), "told to run on its own");
            let queue = lock(&b.queue);
            assert!(queue.forming.is_none() && queue.sealed.is_empty());
        }
    }

    #[test]
    fn requests_for_another_version_do_not_join() {
        let b = batcher(8, NEVER, WhileArriving);
        let _lead = leader(b.join("v1", body("a")));
        assert!(matches!(b.join("v2", body("b")), Joined::Alone));
    }

    #[test]
    fn counters_tell_merged_calls_from_poisoned_ones() {
        let b = batcher(8, NEVER, WhileArriving);
        b.count(5, false);
        b.count(3, true);
        assert_eq!(b.counters(), (1, 5, 1));
    }
}
