//! Closing connections whose client sends no request headers.
//!
//! hyper's own `header_read_timeout` arms a timer on the runtime's shared
//! timer wheel as each request's headers start to arrive and cancels it when
//! they are complete: an allocation, a clock read and two trips through the
//! wheel's lock for every request (about 1% of a served request's CPU in the
//! flat profile of docs/benchmarks.md). [`Heads`] counts instead: a request
//! costs two uncontended counter increments and a reference count, and the
//! connection checks the counts once per `limit`. A connection is closed
//! once a whole `limit` passed with no request in flight, none begun or
//! answered, and no answer being written (an answer's writes are counted by
//! [`super::admission::WriteDeadline`], whose own timeout handles a stalled
//! one): a client that sends no complete headers (slowly, or not at all:
//! idle keep-alive included) loses its connection after between one and two
//! `limit`s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One connection's progress: requests begun (headers complete) and
/// answered, and its answers' writes.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    begun: AtomicU64,
    answered: AtomicU64,
    /// Writes that made progress.
    written: AtomicU64,
    /// Whether the last write is waiting for the client to read.
    writing: AtomicBool,
}

/// A request in flight on its connection, from its complete headers until its
/// answer is ready (or it is dropped).
pub(super) struct InFlight(Arc<Heads>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Heads {
    /// A request's headers are complete: counted until the guard is dropped.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.begun.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A write made progress (`true`) or waits for the client (`false`).
    pub(crate) fn wrote(&self, progress: bool) {
        if progress {
            self.written.fetch_add(1, Ordering::Relaxed);
        }
        self.writing.store(!progress, Ordering::Relaxed);
    }

    /// Writes that made progress, and whether the last one waits.
    #[cfg(test)]
    pub(super) fn writes(&self) -> (u64, bool) {
        (
            self.written.load(Ordering::Relaxed),
            self.writing.load(Ordering::Relaxed),
        )
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.begun.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }

    /// Resolves once a whole `limit` passed with nothing in flight or being
    /// written, and no request begun or answered.
    pub(super) async fn idle(&self, limit: Duration) {
        let mut seen = self.counts();
        loop {
            tokio::time::sleep(limit).await;
            let now = self.counts();
            if now == seen && now.0 == now.1 && !self.writing.load(Ordering::Relaxed) {
                return;
            }
            seen = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Runs `idle` until it resolves or `within` passes (in paused time);
    /// returns how long after `start` it resolved.
    async fn closes_after(
        heads: &Arc<Heads>,
        start: Instant,
        within: Duration,
    ) -> Option<Duration> {
        tokio::time::timeout(within, heads.idle(LIMIT))
            .await
            .ok()
            .map(|()| start.elapsed())
    }

    /// [`closes_after`] from now, for up to 20 limits, on its own task.
    fn watch(heads: &Arc<Heads>) -> tokio::task::JoinHandle<Option<Duration>> {
        let (heads, start) = (heads.clone(), Instant::now());
        tokio::spawn(async move { closes_after(&heads, start, LIMIT * 20).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_closes_after_one_limit() {
        let heads = Arc::new(Heads::default());
        let start = Instant::now();
        assert_eq!(closes_after(&heads, start, LIMIT * 5).await, Some(LIMIT));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_keep_a_connection_open_and_silence_after_them_closes_it() {
        let heads = Arc::new(Heads::default());
        let start = Instant::now();
        let client = {
            let heads = heads.clone();
            tokio::spawn(async move {
                // A request every 3 s for 30 s, each answered at once.
                for _ in 0..10 {
                    drop(heads.begin());
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            })
        };
        let closed = closes_after(&heads, start, LIMIT * 10)
            .await
            .expect("closes");
        client.await.unwrap();
        // Open while requests came; closed between one and two limits of
        // silence after the last one (at 27 s).
        assert!(
            closed >= Duration::from_secs(27) + LIMIT
                && closed <= Duration::from_secs(27) + 2 * LIMIT,
            "closed at {closed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_being_written_keeps_its_connection() {
        let heads = Arc::new(Heads::default());
        let watch = watch(&heads);
        // A long answer to a slow reader: progress every 4 s for 40 s, then
        // a write that waits for 30 s, then the last write.
        drop(heads.begin());
        for _ in 0..10 {
            heads.wrote(true);
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        heads.wrote(false);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            !watch.is_finished(),
            "closed while an answer was being written"
        );
        heads.wrote(true);
        let closed = watch.await.unwrap().expect("closes once written");
        assert!(
            closed > Duration::from_secs(70) && closed <= Duration::from_secs(90),
            "closed at {closed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_its_connection_however_long_it_takes() {
        let heads = Arc::new(Heads::default());
        let slow = heads.begin();
        let watch = watch(&heads);
        // Paused time advances timer by timer: the watch checks five times.
        tokio::time::sleep(LIMIT * 5 + Duration::from_secs(1)).await;
        assert!(!watch.is_finished(), "closed with a request in flight");
        drop(slow);
        let closed = watch.await.unwrap().expect("closes once answered");
        assert!(
            closed > LIMIT * 5 && closed <= LIMIT * 7 + Duration::from_secs(1),
            "closed at {closed:?}"
        );
    }
}
