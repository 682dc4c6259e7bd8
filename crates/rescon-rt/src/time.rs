//! Timers: [`sleep`], [`sleep_until`], [`timeout`] and [`interval`].
//!
//! Each worker keeps a binary heap of deadlines. A [`Sleep`] registers with the worker it is
//! first polled on (or, outside the workers, with one chosen round robin) and is woken when
//! that worker's clock passes its deadline. Deadlines are in the runtime's
//! [`Clock`], so on a manual clock sleeps end in simulated time. Resolution: the
//! workers wait in `epoll_wait`, which counts in milliseconds, so a sleep ends up to about a
//! millisecond late when the worker is idle, and on time when it is busy.
//!
//! ```
//! use std::time::Duration;
//! let registry = rescon::Registry::new();
//! let rt = rescon_rt::Runtime::new(&registry).unwrap();
//! rt.block_on(async {
//!     rescon_rt::sleep(Duration::from_millis(2)).await;
//!     let slow = rescon_rt::sleep(Duration::from_secs(60));
//!     let r = rescon_rt::timeout(Duration::from_millis(1), slow).await;
//!     assert!(r.is_err(), "timed out");
//! });
//! ```

use crate::Clock;
use crate::driver::timer::{NONE, TimerShared, YOUNG};
use crate::scheduler::context;
use crate::scheduler::inbox::WorkerShared;
use crate::scheduler::worker::register_timer;
use atomic_waker::AtomicWaker;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Waits until a deadline. Made by [`sleep`] and [`sleep_until`].
pub struct Sleep {
    timer: Arc<TimerShared>,
    deadline: u64,
    clock: Clock,
    /// The worker it is registered with, and the deadline registered.
    registered: Option<(Arc<WorkerShared>, u64)>,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline_ns", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Sleeps for `duration`.
///
/// # Panics
/// Outside a runtime (a task, [`Runtime::block_on`](crate::Runtime::block_on) or
/// [`Runtime::enter`](crate::Runtime::enter)).
pub fn sleep(duration: Duration) -> Sleep {
    let clock = context::clock();
    let deadline = clock.now_ns().saturating_add(duration.as_nanos() as u64);
    Sleep::at_ns(clock, deadline)
}

/// Sleeps until `deadline`.
///
/// # Panics
/// Outside a runtime, as [`sleep`].
pub fn sleep_until(deadline: Instant) -> Sleep {
    let clock = context::clock();
    let ns = clock.instant_to_ns(deadline);
    Sleep::at_ns(clock, ns)
}

impl Sleep {
    pub(crate) fn at_ns(clock: Clock, deadline: u64) -> Sleep {
        Sleep {
            timer: Arc::new(TimerShared {
                deadline: AtomicU64::new(deadline),
                queued: AtomicU64::new(NONE),
                dropped: AtomicBool::new(false),
                waker: AtomicWaker::new(),
            }),
            deadline,
            clock,
            registered: None,
        }
    }

    /// The deadline, as an [`Instant`].
    pub fn deadline(&self) -> Instant {
        self.clock.ns_to_instant(self.deadline)
    }

    /// Whether the deadline has passed.
    pub fn is_elapsed(&self) -> bool {
        self.clock.now_ns() >= self.deadline
    }

    /// Moves the deadline (earlier or later) without making a new timer.
    pub fn reset(&mut self, deadline: Instant) {
        self.reset_ns(self.clock.instant_to_ns(deadline));
    }

    pub(crate) fn reset_ns(&mut self, deadline: u64) {
        self.deadline = deadline;
        self.timer.deadline.store(deadline, Release);
    }

    fn register(&mut self) {
        let deadline = self.deadline;
        if let Some((w, d)) = &mut self.registered {
            if *d == deadline {
                return;
            }
            // The live entry comes up first and moves itself to the new deadline. (Once it
            // has fired, as an interval's has at each tick, there is none: register.)
            if deadline < *d || self.timer.queued.load(Acquire) == NONE {
                register_timer(w, self.timer.clone());
            }
            *d = deadline;
            return;
        }
        let w = context::timer_worker();
        register_timer(&w, self.timer.clone());
        self.registered = Some((w, self.deadline));
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now_ns() >= self.deadline {
            return Poll::Ready(());
        }
        self.timer.waker.register(cx.waker());
        self.register();
        // The worker wakes only once its clock has passed the deadline; if it did so between
        // the check above and the registration, the clock says so now.
        if self.clock.now_ns() >= self.deadline {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.timer.dropped.store(true, Release);
        if let Some((w, _)) = &self.registered {
            // Queued in the heap (the worker's word, read from any thread: a hint for
            // compaction). A young timer is forgotten at its promotion.
            let q = self.timer.queued.load(Relaxed);
            if q != NONE && q != YOUNG {
                w.timers_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The error of [`timeout`]: the deadline passed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed before the future completed")
    }
}

impl std::error::Error for Elapsed {}

pin_project! {
    /// The future of [`timeout`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless awaited"]
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: Sleep,
    }
}

/// Runs `fut`, giving up with [`Elapsed`] if it has not finished within `duration`.
///
/// # Panics
/// Outside a runtime, as [`sleep`].
pub fn timeout<F: Future>(duration: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        sleep: sleep(duration),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Ticks every `period`, the first tick at once.
///
/// If ticks are missed (the task was not run in time), the next tick comes at once and the
/// following ones are `period` apart from it: missed ticks are not made up in a burst.
///
/// # Panics
/// Outside a runtime, as [`sleep`]; if `period` is zero.
///
/// ```
/// use std::time::Duration;
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// rt.block_on(async {
///     let mut every = rescon_rt::interval(Duration::from_millis(1));
///     for _ in 0..3 {
///         every.tick().await;
///     }
/// });
/// ```
pub fn interval(period: Duration) -> Interval {
    assert!(!period.is_zero(), "interval period must be positive");
    let clock = context::clock();
    let now = clock.now_ns();
    Interval {
        sleep: Sleep::at_ns(clock, now),
        period: period.as_nanos() as u64,
    }
}

/// Ticks at a fixed period. Made by [`interval`].
#[derive(Debug)]
pub struct Interval {
    sleep: Sleep,
    period: u64,
}

impl Interval {
    /// Waits for the next tick and returns when it was due.
    pub async fn tick(&mut self) -> Instant {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// Polls for the next tick.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Instant> {
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let due = self.sleep.deadline;
                let now = self.sleep.clock.now_ns();
                let next = due.saturating_add(self.period);
                let next = if next <= now {
                    now.saturating_add(self.period)
                } else {
                    next
                };
                self.sleep.reset_ns(next);
                Poll::Ready(self.sleep.clock.ns_to_instant(due))
            }
        }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_sleep_on_a_worker_ends_at_its_deadline() {
        // Registered young, promoted before the worker sleeps: the manual clock then jumps to
        // the deadline, which it could not do for a timer still young.
        let registry = rescon::Registry::new();
        let clock = Clock::manual();
        let rt = crate::Builder::new(&registry)
            .workers(1)
            .clock(clock.clone())
            .build()
            .unwrap();
        let start = clock.now_ns();
        let took = rt
            .block_on(rt.handle().spawn(async move {
                super::sleep(Duration::from_secs(30)).await;
                context::clock().now_ns() - start
            }))
            .unwrap();
        assert!(
            (30_000_000_000..30_010_000_000).contains(&took),
            "{took} ns"
        );
    }

    #[test]
    fn sleeps_dropped_before_their_deadline_do_not_pile_up_on_the_worker() {
        let registry = rescon::Registry::new();
        let rt = crate::Builder::new(&registry).workers(1).build().unwrap();
        let most = rt
            .block_on(rt.handle().spawn(async {
                let mut most = 0;
                for _ in 0..20_000 {
                    // Polled once (so it registers), then dropped: hyper's header timeout.
                    let mut s = super::sleep(Duration::from_secs(30));
                    std::future::poll_fn(|cx| {
                        assert!(Pin::new(&mut s).poll(cx).is_pending());
                        Poll::Ready(())
                    })
                    .await;
                    drop(s);
                    most =
                        most.max(crate::scheduler::worker::timer_entries().expect("on a worker"));
                }
                most
            }))
            .unwrap();
        assert!(most <= 1_030, "{most} timer entries for no live timer");
    }
}
