//! Sleeps to within tens of microseconds. tokio's timer ticks in
//! milliseconds, which would stretch a 200 µs batch delay to 1–2 ms (and, at
//! few connections, cut throughput by as much).
//!
//! Each sleep is a Linux timerfd that tokio's reactor watches: it fires into
//! the epoll set the workers already wait on, so an idle worker wakes for it
//! and a busy one sees it the next time it polls for I/O. No thread of
//! hadr's wakes for it: a timer thread did that for about every other batch
//! at 64 connections, and on a busy core each of its wake-ups preempted a
//! worker (3–6 % of a core). A sleep costs a few system calls instead, and
//! only when it is polled before its deadline.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

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
    /// Its timerfd, armed on the first poll that finds it early.
    timer: Option<AsyncFd<OwnedFd>>,
}

/// A timerfd, registered with the current runtime's reactor, that becomes
/// readable `after` from now (which must not be zero: that would disarm it).
fn armed(after: std::time::Duration) -> std::io::Result<AsyncFd<OwnedFd>> {
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    let at = Timespec {
        tv_sec: after.as_secs() as _,
        tv_nsec: after.subsec_nanos() as _,
    };
    let once = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: at,
    };
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &once)?;
    // SAFETY: `fd` is open, and the `AsyncFd` owns it until it is dropped:
    // nothing replaces or closes it meanwhile.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? })
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.until {
            return Poll::Ready(());
        }
        if self.timer.is_none() {
            match armed(self.until - now) {
                Ok(timer) => self.timer = Some(timer),
                Err(error) => {
                    // Out of file descriptors, most likely: resolve now, so
                    // a batch closes early rather than never.
                    tracing::debug!(%error, "no timerfd for a batch delay; not waiting");
                    return Poll::Ready(());
                }
            }
        }
        let timer = self.timer.as_ref().expect("armed above");
        // Readable once expired; an error (the runtime shutting down) ends
        // the sleep too.
        timer.poll_read_ready(cx).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_sleep_resolves_after_its_deadline() {
        let start = Instant::now();
        sleep_until(start + Duration::from_micros(300)).await;
        assert!(start.elapsed() >= Duration::from_micros(300));
    }

    #[tokio::test]
    async fn a_sleep_polled_again_keeps_its_one_timer() {
        // Far enough that it cannot fire during the test.
        let mut sleep = Box::pin(sleep_until(Instant::now() + Duration::from_secs(60)));
        assert!(poll_once(sleep.as_mut()).is_pending());
        let fd = sleep.timer.as_ref().map(|t| t.get_ref().as_raw_fd());
        for _ in 0..3 {
            assert!(poll_once(sleep.as_mut()).is_pending());
        }
        assert!(fd.is_some());
        assert_eq!(sleep.timer.as_ref().map(|t| t.get_ref().as_raw_fd()), fd);
    }

    #[tokio::test]
    async fn a_later_sleeper_does_not_delay_an_earlier_one() {
        let start = Instant::now();
        let mut late = Box::pin(sleep_until(start + Duration::from_secs(60)));
        assert!(poll_once(late.as_mut()).is_pending());
        let early = sleep_until(start + Duration::from_millis(2));
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("the earlier deadline fired");
    }

    #[tokio::test]
    async fn a_sleep_past_its_deadline_resolves_without_a_timer() {
        let mut sleep = Box::pin(sleep_until(Instant::now()));
        assert!(poll_once(sleep.as_mut()).is_ready());
        assert!(sleep.timer.is_none());
    }

    /// Polls once with a no-op waker.
    fn poll_once(sleep: Pin<&mut Sleep>) -> Poll<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        sleep.poll(&mut cx)
    }
}
