//! A graceful stop: set once (by SIGQUIT); the accept loops and connections watching it are
//! woken, and each connection is counted until it ends.

use slab::Slab;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

/// A graceful stop: set once (by SIGQUIT); the accept loops and connections registered here
/// are woken to look, and each connection is counted until it ends.
#[derive(Default)]
pub(crate) struct Stop {
    on: AtomicBool,
    /// The wakers of the tasks that watch, under their keys. A slab: an idle connection
    /// holds an entry, 16 bytes in it, where a hash map's took 24 and a control byte at a
    /// load of at most 7/8. Nothing is added once the stop is on (see `stopping`), so a key
    /// drained by `begin` is never another watch's.
    waiters: Mutex<Slab<std::task::Waker>>,
    /// Connections that have not ended.
    pub(crate) live: AtomicUsize,
}

impl Stop {
    /// Sets the stop and wakes every watcher.
    pub(crate) fn begin(&self) {
        self.on.store(true, SeqCst);
        let waiters: Vec<_> = self.waiters().drain().collect();
        for w in waiters {
            w.wake();
        }
    }

    fn is_on(&self) -> bool {
        self.on.load(SeqCst)
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Slab<std::task::Waker>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A watch for one task; `counted` for a connection (ended when the watch drops).
    pub(crate) fn watch(self: &Arc<Self>, counted: bool) -> StopWatch {
        if counted {
            self.live.fetch_add(1, Relaxed);
        }
        StopWatch {
            stop: self.clone(),
            key: None,
            counted,
        }
    }
}

/// One task's view of the [`Stop`]: registers its waker on the first look.
pub(crate) struct StopWatch {
    stop: Arc<Stop>,
    /// The slab key plus one, so that the option takes no word of its own (a parked
    /// connection holds one).
    key: Option<NonZeroUsize>,
    counted: bool,
}

impl StopWatch {
    /// Whether the stop has begun; if not, the task is woken when it does. A task's waker
    /// stays valid for the task's life, so it is registered once.
    pub(crate) fn stopping(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if self.stop.is_on() {
            return true;
        }
        if self.key.is_none() {
            let mut waiters = self.stop.waiters();
            // Begun since the look: `begin` set it before taking the lock, so it drains (or
            // drained) the slab; not added.
            if self.stop.is_on() {
                return true;
            }
            self.key = NonZeroUsize::new(waiters.insert(cx.waker().clone()) + 1);
        }
        false
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            // Gone already when `begin` drained it.
            self.stop.waiters().try_remove(key.get() - 1);
        }
        if self.counted {
            self.stop.live.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct CountWake(AtomicU64);

    impl std::task::Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn a_stop_wakes_its_watchers_once_and_counts_connections() {
        let stop = Arc::new(Stop::default());
        let wakes = Arc::new(CountWake(AtomicU64::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut conn = stop.watch(true);
        let mut loop_ = stop.watch(false);
        assert!(!conn.stopping(&mut cx) && !loop_.stopping(&mut cx));
        assert!(
            !conn.stopping(&mut cx),
            "registered once, still not stopping"
        );
        assert_eq!(stop.live.load(Relaxed), 1, "only connections count");
        stop.begin();
        assert_eq!(wakes.0.load(Relaxed), 2, "each watcher woken");
        assert!(conn.stopping(&mut cx) && loop_.stopping(&mut cx));
        // A watch that first looks after the stop began sees it at once.
        let mut late = stop.watch(true);
        assert!(late.stopping(&mut cx));
        assert_eq!(stop.live.load(Relaxed), 2);
        drop((conn, late, loop_));
        assert_eq!(stop.live.load(Relaxed), 0);
        assert!(stop.waiters.lock().unwrap().is_empty());
        assert_eq!(wakes.0.load(Relaxed), 2, "no wake after the stop");
    }

    #[test]
    fn a_dropped_watch_leaves_no_waker_behind() {
        let stop = Arc::new(Stop::default());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for _ in 0..3 {
            let mut w = stop.watch(true);
            assert!(!w.stopping(&mut cx));
        }
        assert!(stop.waiters.lock().unwrap().is_empty());
        assert_eq!(stop.live.load(Relaxed), 0);
    }
}
