//! One thread that runs an action when a deadline passes, for every CGI run at once.
//!
//! A CGI run must be killed when its timeout passes however busy the server is, so the kill
//! does not wait for a runtime worker: it comes from a thread of its own. A thread per run
//! (what a run used to start) costs a `clone` and a stack each time and, in a burst, a malloc
//! arena per thread that the process keeps; this is one thread, started on the first
//! [`Watchdog::watch`], sleeping until the earliest deadline.
//!
//! A run's idle timeout (between reads of the script's output) is a watch that moves:
//! [`Watchdog::watch_idle`]. Moving a deadline on every read would take the watchdog's lock
//! each time, so a read only stores the time of its [`Activity`] (one atomic store); when the
//! deadline comes, the thread looks at the last activity and, if the run was not idle that long,
//! sets the deadline anew from it (as the kernel's and tokio's timer wheels do for a timer
//! pushed back often).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Action = Box<dyn FnOnce() + Send>;

/// Runs each watched action at its deadline unless it was disarmed first.
pub struct Watchdog {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when the earliest deadline changes or the watchdog stops.
    cv: Condvar,
}

#[derive(Default)]
struct State {
    due: BTreeMap<(Instant, u64), Arc<Entry>>,
    next: u64,
    stop: bool,
}

struct Entry {
    /// Held while the action runs, so a [`Watch::disarm`] that comes during it waits for it.
    action: Mutex<Slot>,
    /// Its key in `State::due` (it changes when an idle watch moves); read and written under
    /// the state's lock.
    key: Mutex<(Instant, u64)>,
    idle: Option<Idle>,
}

/// An idle watch's rule: it fires `every` after the last activity, or at `total`.
struct Idle {
    every: Duration,
    total: Option<Instant>,
    /// When it was set: activities are stored as nanoseconds since then.
    start: Instant,
    last_ns: AtomicU64,
}

impl Idle {
    /// When the watch is due, seen from `now`: later than `now` if it moved.
    fn due(&self) -> Instant {
        let last = self.start + Duration::from_nanos(self.last_ns.load(Relaxed));
        let idle_end = last + self.every;
        match self.total {
            Some(t) => t.min(idle_end),
            None => idle_end,
        }
    }
}

/// Tells an idle watch that the run is not idle; cheap (one atomic store), any thread.
#[derive(Clone)]
pub struct Activity(Option<Arc<Entry>>);

impl Activity {
    /// The run did something now: its idle deadline starts again from here.
    pub fn touch(&self) {
        if let Some(idle) = self.0.as_ref().and_then(|e| e.idle.as_ref()) {
            let ns = idle.start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            idle.last_ns.fetch_max(ns, Relaxed);
        }
    }
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Activity")
    }
}

enum Slot {
    Armed(Action),
    Fired,
    Disarmed,
}

/// One watched deadline; dropping it disarms it.
#[must_use = "dropping a Watch disarms it"]
pub struct Watch {
    inner: Arc<Inner>,
    entry: Arc<Entry>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Watchdog {
    fn default() -> Self {
        Self::new()
    }
}

impl Watchdog {
    /// A watchdog; its thread starts with the first watch.
    pub fn new() -> Watchdog {
        Watchdog {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Runs `action` on the watchdog's thread at `deadline` (at once if it has passed), unless
    /// the returned [`Watch`] is disarmed or dropped first.
    pub fn watch(&self, deadline: Instant, action: impl FnOnce() + Send + 'static) -> Watch {
        self.insert(deadline, None, Box::new(action))
    }

    /// Runs `action` when `idle` has passed without an [`Activity::touch`] (counted from now
    /// at first), or at `total` from now if that comes first; unless the returned [`Watch`] is
    /// disarmed or dropped before.
    pub fn watch_idle(
        &self,
        idle: Duration,
        total: Option<Duration>,
        action: impl FnOnce() + Send + 'static,
    ) -> Watch {
        let start = Instant::now();
        let rule = Idle {
            every: idle,
            total: total.map(|t| start + t),
            start,
            last_ns: AtomicU64::new(0),
        };
        self.insert(rule.due(), Some(rule), Box::new(action))
    }

    fn insert(&self, deadline: Instant, idle: Option<Idle>, action: Action) -> Watch {
        {
            let mut t = lock(&self.thread);
            if t.is_none() {
                let inner = self.inner.clone();
                let spawned = std::thread::Builder::new()
                    .name("cgi-watchdog".into())
                    .spawn(move || inner.run());
                match spawned {
                    Ok(h) => *t = Some(h),
                    // Without its thread nothing would ever be killed: the server cannot keep
                    // its promise about CGI timeouts, so it says so loudly.
                    Err(e) => panic!("starting the CGI watchdog thread: {e}"),
                }
            }
        }
        let mut st = lock(&self.inner.state);
        let key = (deadline, st.next);
        st.next += 1;
        let entry = Arc::new(Entry {
            action: Mutex::new(Slot::Armed(action)),
            key: Mutex::new(key),
            idle,
        });
        st.due.insert(key, entry.clone());
        if st.due.first_key_value().is_some_and(|(k, _)| *k == key) {
            self.inner.cv.notify_one();
        }
        drop(st);
        Watch {
            inner: self.inner.clone(),
            entry,
        }
    }

    /// Deadlines still watched.
    pub fn pending(&self) -> usize {
        lock(&self.inner.state).due.len()
    }
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("pending", &self.pending())
            .finish()
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("deadline", &lock(&self.entry.key).0)
            .finish()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.inner.state).stop = true;
        self.inner.cv.notify_one();
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

impl Inner {
    fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            if st.stop {
                return;
            }
            let now = Instant::now();
            st = match st.due.first_key_value() {
                Some((&(when, _), _)) if when <= now => {
                    let (_, entry) = st.due.pop_first().expect("a first entry");
                    // An idle watch whose run was active meanwhile moves instead of firing.
                    if let Some(due) = entry.idle.as_ref().map(Idle::due)
                        && due > now
                    {
                        let key = (due, st.next);
                        st.next += 1;
                        *lock(&entry.key) = key;
                        st.due.insert(key, entry);
                        continue;
                    }
                    drop(st);
                    entry.fire();
                    lock(&self.state)
                }
                Some((&(when, _), _)) => {
                    self.cv
                        .wait_timeout(st, when - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

impl Entry {
    fn fire(&self) {
        let mut slot = lock(&self.action);
        if matches!(*slot, Slot::Armed(_))
            && let Slot::Armed(action) = std::mem::replace(&mut *slot, Slot::Fired)
        {
            // A panicking action must not take the watchdog down with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(action));
        }
    }
}

impl Watch {
    /// What tells this watch that its run is active (nothing, for a fixed deadline).
    pub fn activity(&self) -> Activity {
        Activity(self.entry.idle.is_some().then(|| self.entry.clone()))
    }

    /// Whether its action has run (or is running: then this waits for it to finish).
    pub fn fired(&self) -> bool {
        matches!(*lock(&self.entry.action), Slot::Fired)
    }

    /// Disarms the watch: its action will not run from now on. Returns whether it ran already
    /// (the deadline passed first); if it is running, waits for it to finish.
    pub fn disarm(self) -> bool {
        self.disarm_ref()
    }

    fn disarm_ref(&self) -> bool {
        let fired = {
            let mut slot = lock(&self.entry.action);
            match *slot {
                Slot::Fired => true,
                _ => {
                    *slot = Slot::Disarmed;
                    false
                }
            }
        };
        if !fired {
            let mut st = lock(&self.inner.state);
            let key = *lock(&self.entry.key);
            st.due.remove(&key);
        }
        fired
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.disarm_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn a_passed_deadline_fires_and_disarm_says_so() {
        let w = Watchdog::new();
        let (tx, rx) = mpsc::channel();
        let watch = w.watch(Instant::now(), move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the action ran");
        assert!(watch.disarm(), "it had fired");
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn a_disarmed_watch_never_fires_and_leaves_nothing_behind() {
        let w = Watchdog::new();
        let (tx, rx) = mpsc::channel::<u32>();
        let far = {
            let tx = tx.clone();
            w.watch(Instant::now() + LONG, move || tx.send(1).unwrap())
        };
        let dropped = {
            let tx = tx.clone();
            w.watch(Instant::now() + LONG, move || tx.send(2).unwrap())
        };
        assert_eq!(w.pending(), 2);
        assert!(!far.disarm(), "not fired yet");
        drop(dropped);
        assert_eq!(w.pending(), 0);
        // A later, earlier deadline still fires: the thread is alive and not stuck on the
        // disarmed ones.
        let _now = w.watch(Instant::now(), move || tx.send(3).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(3));
        assert!(rx.try_recv().is_err(), "only the due action ran");
    }

    #[test]
    fn an_earlier_deadline_wakes_a_thread_sleeping_on_a_later_one() {
        let w = Watchdog::new();
        let _late = w.watch(Instant::now() + LONG, || {});
        // Let the thread go to sleep until the late deadline.
        while w.pending() != 1 {
            std::thread::yield_now();
        }
        let (tx, rx) = mpsc::channel();
        let _soon = w.watch(Instant::now() + Duration::from_millis(1), move || {
            tx.send(()).unwrap()
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("woken for the earlier deadline");
        assert_eq!(w.pending(), 1, "the late one still waits");
    }

    #[test]
    fn a_panicking_action_leaves_the_watchdog_working() {
        let w = Watchdog::new();
        let _boom = w.watch(Instant::now(), || panic!("an action failed"));
        let (tx, rx) = mpsc::channel();
        let _next = w.watch(Instant::now(), move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the next action ran");
    }

    #[test]
    fn an_idle_watch_waits_while_touched_then_fires() {
        let w = Watchdog::new();
        let (tx, rx) = mpsc::channel();
        let idle = Duration::from_millis(300);
        let watch = w.watch_idle(idle, None, move || tx.send(Instant::now()).unwrap());
        let activity = watch.activity();
        // Touched more often than its idle time, for several idle times: it does not fire.
        let start = Instant::now();
        while start.elapsed() < idle * 4 {
            activity.touch();
            assert!(rx.try_recv().is_err(), "fired while active");
            std::thread::sleep(Duration::from_millis(20));
        }
        activity.touch();
        let last = Instant::now();
        let fired = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fired once idle");
        assert!(
            fired >= last + idle - Duration::from_millis(5),
            "not before its idle time"
        );
        assert!(watch.disarm());
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn an_idle_watch_fires_at_its_total_however_active() {
        let w = Watchdog::new();
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let watch = w.watch_idle(LONG, Some(Duration::from_millis(200)), move || {
            tx.send(()).unwrap()
        });
        let activity = watch.activity();
        loop {
            activity.touch();
            if rx.try_recv().is_ok() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never fired");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_moved_idle_watch_is_disarmed_and_leaves_nothing_behind() {
        let w = Watchdog::new();
        let watch = w.watch_idle(Duration::from_millis(300), None, || {});
        let activity = watch.activity();
        // Let it move a few times.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1000) {
            activity.touch();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!watch.disarm(), "disarmed before it fired");
        assert_eq!(w.pending(), 0);
        // A fixed watch's activity does nothing.
        let fixed = w.watch(Instant::now() + LONG, || {});
        fixed.activity().touch();
        assert_eq!(w.pending(), 1);
    }

    #[test]
    fn dropping_the_watchdog_stops_its_thread() {
        let w = Watchdog::new();
        let (tx, rx) = mpsc::channel::<()>();
        let watch = w.watch(Instant::now() + LONG, move || tx.send(()).unwrap());
        drop(watch);
        drop(w); // joins the thread: returns only if it stopped
        assert!(rx.try_recv().is_err());
    }
}
