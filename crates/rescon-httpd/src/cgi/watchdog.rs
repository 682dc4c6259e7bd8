//! One thread that runs an action when a deadline passes, for every CGI run at once.
//!
//! A CGI run must be killed when its timeout passes however busy the server is, so the kill
//! does not wait for a runtime worker: it comes from a thread of its own. A thread per run
//! (what a run used to start) costs a `clone` and a stack each time and, in a burst, a malloc
//! arena per thread that the process keeps; this is one thread, started on the first
//! [`Watchdog::watch`], sleeping until the earliest deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

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
    key: (Instant, u64),
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
        let entry = Arc::new(Entry {
            action: Mutex::new(Slot::Armed(Box::new(action))),
        });
        let mut st = lock(&self.inner.state);
        let key = (deadline, st.next);
        st.next += 1;
        st.due.insert(key, entry.clone());
        if st.due.first_key_value().is_some_and(|(k, _)| *k == key) {
            self.inner.cv.notify_one();
        }
        drop(st);
        Watch {
            inner: self.inner.clone(),
            key,
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
            .field("deadline", &self.key.0)
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
            lock(&self.inner.state).due.remove(&self.key);
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
    fn dropping_the_watchdog_stops_its_thread() {
        let w = Watchdog::new();
        let (tx, rx) = mpsc::channel::<()>();
        let watch = w.watch(Instant::now() + LONG, move || tx.send(()).unwrap());
        drop(watch);
        drop(w); // joins the thread: returns only if it stopped
        assert!(rx.try_recv().is_err());
    }
}
