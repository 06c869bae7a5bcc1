//! Sleeps to within tens of microseconds. tokio's timer ticks in
//! milliseconds, which would stretch a 200 µs batch delay to 1–2 ms (and, at
//! few connections, cut throughput by as much); here one thread waits on a
//! condition variable for the earliest deadline and wakes whoever is due.
//!
//! Every wake-up of that thread costs a context switch, and on a busy core
//! it preempts a worker: so the thread is told of a new sleeper only when
//! it must wake earlier than it already will, a sleep registers once however
//! often it is polled, and a sleep dropped early (its batch filled) takes
//! its entry back. That leaves about one wake-up per batch that waits.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::lock;

/// The sleepers, and when the timer thread will next look at them.
#[derive(Default)]
struct Due {
    /// Each registered sleep: its number, its deadline, whom to wake.
    sleepers: Vec<(u64, Instant, Waker)>,
    /// The deadline the thread waits for; `None` while it waits for a
    /// sleeper to arrive.
    next: Option<Instant>,
    /// Numbers sleeps, so a dropped one can find its entry.
    ids: u64,
}

/// The sleepers, and the condition variable the timer thread waits on.
struct Timer {
    due: Mutex<Due>,
    changed: Condvar,
}

/// The process's timer thread, started on first use.
fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            due: Mutex::default(),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("hadr-batch-timer".into())
            .spawn(move || run(timer))
            .expect("the batch timer thread starts");
        timer
    })
}

fn run(timer: &Timer) -> ! {
    let mut woken = Vec::new();
    let mut due = lock(&timer.due);
    loop {
        let now = Instant::now();
        woken.extend(due.sleepers.extract_if(.., |(_, at, _)| *at <= now));
        if !woken.is_empty() {
            // Woken without the lock, so the workers they wake do not wait
            // for it; then look again, as time has passed.
            drop(due);
            woken.drain(..).for_each(|(_, _, waker)| waker.wake());
            due = lock(&timer.due);
            continue;
        }
        due.next = due.sleepers.iter().map(|(_, at, _)| *at).min();
        due = match due.next {
            None => timer.changed.wait(due).unwrap_or_else(|p| p.into_inner()),
            Some(next) => {
                let waited = timer.changed.wait_timeout(due, next - now);
                waited.unwrap_or_else(|p| p.into_inner()).0
            }
        };
    }
}

/// Resolves at `until` (a few tens of µs late at most, on an idle core).
pub(super) fn sleep_until(until: Instant) -> Sleep {
    Sleep { until, id: None }
}

pub(super) struct Sleep {
    until: Instant,
    /// Its entry among the sleepers, once registered.
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.until {
            return Poll::Ready(());
        }
        let timer = timer();
        let mut due = lock(&timer.due);
        if let Some(id) = self.id {
            // Polled again: keep the entry, with the latest waker.
            if let Some(entry) = due.sleepers.iter_mut().find(|e| e.0 == id) {
                entry.2.clone_from(cx.waker());
                return Poll::Pending;
            }
        }
        due.ids += 1;
        let id = due.ids;
        due.sleepers.push((id, self.until, cx.waker().clone()));
        self.id = Some(id);
        let earlier = due.next.is_none_or(|next| self.until < next);
        if earlier {
            due.next = Some(self.until);
        }
        // Told after the lock is released, so the thread does not wake
        // only to wait for it. Nothing is lost: until it waits again it
        // holds the lock, and it reads the sleepers before it waits.
        drop(due);
        if earlier {
            timer.changed.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&timer().due).sleepers.retain(|e| e.0 != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Entries of `sleep` among the sleepers (other tests sleep too).
    fn entries(sleep: &Sleep) -> usize {
        let due = lock(&timer().due);
        due.sleepers
            .iter()
            .filter(|e| Some(e.0) == sleep.id)
            .count()
    }

    #[tokio::test]
    async fn a_sleep_resolves_after_its_deadline() {
        let start = Instant::now();
        sleep_until(start + Duration::from_micros(300)).await;
        assert!(start.elapsed() >= Duration::from_micros(300));
    }

    #[tokio::test]
    async fn a_sleep_polled_again_keeps_one_entry_and_a_dropped_one_none() {
        // Far enough that it cannot fire during the test.
        let mut sleep = Box::pin(sleep_until(Instant::now() + Duration::from_secs(60)));
        for _ in 0..3 {
            assert!(poll_once(sleep.as_mut()).is_pending());
        }
        assert_eq!(entries(&sleep), 1);
        let id = sleep.id;
        drop(sleep);
        let due = lock(&timer().due);
        assert!(id.is_some() && due.sleepers.iter().all(|e| Some(e.0) != id));
    }

    #[tokio::test]
    async fn a_later_sleeper_does_not_delay_an_earlier_one() {
        let start = Instant::now();
        let mut late = Box::pin(sleep_until(start + Duration::from_secs(60)));
        assert!(poll_once(late.as_mut()).is_pending());
        let early = sleep_until(start + Duration::from_millis(2));
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("the thread woke for the earlier deadline");
    }

    /// Polls once with a no-op waker.
    fn poll_once(sleep: Pin<&mut Sleep>) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        sleep.poll(&mut cx)
    }
}
