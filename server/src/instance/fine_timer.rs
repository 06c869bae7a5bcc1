//! Sleeps to within tens of microseconds. tokio's timer ticks in
//! milliseconds, which would stretch a 200 µs batch delay (`full-delay`) to
//! 1–2 ms, and so would cut the throughput of few connections by as much.
//!
//! Each sleep is a Linux timerfd that tokio's reactor watches: it fires into
//! the epoll set the workers already wait on, so an idle worker wakes for it
//! and a busy one sees it the next time it polls for I/O. No thread of
//! hadr's wakes for it: a timer thread did that about once per batch at 64
//! connections (6% of a core), and on a busy core each of its wake-ups
//! preempted a worker. A sleep costs a few system calls instead, and only
//! when it is polled before its deadline.
//!
//! A sleep must be polled on a tokio runtime with I/O enabled (as tokio's
//! own sockets must; every runtime in hadr enables it).

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Resolves at `until`: a few tens of µs late on an idle worker; on a busy
/// one, when it next polls for I/O.
pub(super) fn sleep_until(until: Instant) -> Sleep {
    Sleep { until, timer: None }
}

pub(super) struct Sleep {
    until: Instant,
    /// Armed by the first poll that finds it early.
    timer: Option<Timer>,
}

/// What wakes a sleep polled before its deadline.
enum Timer {
    /// Its timerfd, readable once the deadline has passed.
    Fine(AsyncFd<OwnedFd>),
    /// tokio's own timer, when no timerfd could be had (out of file
    /// descriptors): late by up to a millisecond or two, but never early
    /// and never stuck.
    Coarse(Pin<Box<tokio::time::Sleep>>),
}

/// A timerfd, registered with the current runtime's reactor, that becomes
/// readable `after` from now (which must not be zero: that would disarm it).
fn armed(after: Duration) -> std::io::Result<AsyncFd<OwnedFd>> {
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    let once = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: after.as_secs() as _,
            tv_nsec: after.subsec_nanos() as _,
        },
    };
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &once)?;
    // SAFETY: `fd` is open, and the `AsyncFd` owns it until it is dropped:
    // nothing replaces or closes it meanwhile.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? })
}

/// tokio's timer for `until`.
fn coarse(until: Instant) -> Timer {
    Timer::Coarse(Box::pin(tokio::time::sleep_until(until.into())))
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.until {
            return Poll::Ready(());
        }
        let until = self.until;
        let timer = self.timer.get_or_insert_with(|| match armed(until - now) {
            Ok(timer) => Timer::Fine(timer),
            Err(error) => {
                tracing::debug!(%error, "no timerfd for a batch delay; tokio's timer instead");
                coarse(until)
            }
        });
        match timer {
            // Readable once expired. An error means the runtime is shutting
            // down: resolve rather than wait on a reactor that is gone.
            Timer::Fine(timer) => timer.poll_read_ready(cx).map(drop),
            Timer::Coarse(sleep) => sleep.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Far beyond any sleep here: a sleep that takes this long is stuck.
    const STUCK: Duration = Duration::from_secs(10);

    /// Awaits `sleep` and checks it resolved no earlier than `until`.
    async fn resolves_at(sleep: impl Future<Output = ()>, until: Instant) {
        tokio::time::timeout(STUCK, sleep)
            .await
            .expect("the sleep resolved");
        assert!(Instant::now() >= until, "resolved before its deadline");
    }

    #[tokio::test]
    async fn a_sleep_resolves_after_its_deadline() {
        let until = Instant::now() + Duration::from_micros(300);
        resolves_at(sleep_until(until), until).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sleep_resolves_on_a_multi_thread_runtime_too() {
        let until = Instant::now() + Duration::from_micros(300);
        let sleeping = tokio::spawn(resolves_at(sleep_until(until), until));
        sleeping.await.expect("the sleeping task ran");
    }

    #[tokio::test]
    async fn a_sleep_polled_early_again_and_again_still_resolves_at_its_deadline() {
        let until = Instant::now() + Duration::from_millis(2);
        let mut sleep = Box::pin(sleep_until(until));
        for _ in 0..3 {
            assert!(poll_once(sleep.as_mut()).is_pending());
        }
        resolves_at(sleep, until).await;
    }

    #[tokio::test]
    async fn a_later_sleeper_does_not_delay_an_earlier_one() {
        let start = Instant::now();
        let mut late = Box::pin(sleep_until(start + Duration::from_secs(60)));
        assert!(poll_once(late.as_mut()).is_pending());
        let until = start + Duration::from_millis(2);
        resolves_at(sleep_until(until), until).await;
    }

    #[tokio::test]
    async fn a_sleep_past_its_deadline_resolves_without_a_timer() {
        let mut sleep = Box::pin(sleep_until(Instant::now()));
        assert!(poll_once(sleep.as_mut()).is_ready());
        assert!(sleep.timer.is_none());
    }

    #[tokio::test]
    async fn without_a_timerfd_tokios_timer_still_ends_the_sleep() {
        let until = Instant::now() + Duration::from_micros(300);
        let sleep = Sleep {
            until,
            timer: Some(coarse(until)),
        };
        resolves_at(sleep, until).await;
    }

    /// Polls once with a no-op waker.
    fn poll_once(sleep: Pin<&mut Sleep>) -> Poll<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        sleep.poll(&mut cx)
    }
}
