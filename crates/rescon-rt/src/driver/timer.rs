//! A worker's timers: a heap of deadlines beside a list of young ones. The public types
//! ([`Sleep`](crate::Sleep) and the rest) are in [`time`](crate::time).

use atomic_waker::AtomicWaker;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::task::Waker;

pub(crate) const NONE: u64 = u64::MAX;

/// The part of a timer its worker sees.
#[derive(Debug)]
pub(crate) struct TimerShared {
    /// The deadline the sleep wants now (changed by `reset`).
    pub(crate) deadline: AtomicU64,
    /// The deadline of this timer's live heap entry, or `NONE`. Written by the worker only.
    pub(crate) queued: AtomicU64,
    pub(crate) dropped: AtomicBool,
    pub(crate) waker: AtomicWaker,
}

#[derive(Debug)]
struct Entry {
    deadline: u64,
    seq: u64,
    timer: Arc<TimerShared>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(o.deadline, o.seq))
    }
}

/// `queued` of a timer waiting in the worker's young list (see [`TimerHeap`]).
pub(crate) const YOUNG: u64 = u64::MAX - 1;
/// A timer registered on its worker's thread this far or further from its deadline waits in
/// the young list: far more than the time between two of the worker's promotions (a
/// millisecond tick of its loop, or a sleep).
const YOUNG_NS: u64 = 10_000_000;
/// The young list is promoted at once when it gets this long (a poll that arms many timers).
const YOUNG_MAX: usize = 1024;

/// A worker's timers (see the [module docs](self)).
///
/// Each timer has at most one live entry (the one whose deadline equals its `queued`). A reset
/// to a later deadline pushes nothing: the live entry is re-pushed at the new deadline when it
/// comes up. A reset to an earlier deadline pushes a new entry and leaves the old one stale;
/// stale entries are dropped when they come up, or all at once when they outnumber the live.
///
/// Most long timers never fire: hyper arms a 30 s header-read timeout for every request and
/// drops it microseconds later. A timer registered on its worker's own thread with its
/// deadline [`YOUNG_NS`] or more away goes first to a young list, a push on a vector; every
/// tick of the worker's loop, and before it sleeps, [`promote`](TimerHeap::promote) forgets
/// the young timers dropped since and moves the others into the heap. A dropped one then costs
/// no heap push and no heap entry, and its memory goes back to the allocator within about a
/// millisecond, while the allocator still has it in the cache (kept in the heap until a
/// compaction, thousands of requests later, every such timer's memory was cold when it was
/// used again: perf showed the allocator's fast path at 1.6% of a worker's samples with hyper
/// and a container per connection, against tokio's 0.4%).
#[derive(Debug, Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<Entry>>,
    /// Timers whose `queued` is [`YOUNG`] (an entry whose timer's `queued` moved on is stale).
    young: Vec<Arc<TimerShared>>,
    live: usize,
    seq: u64,
}

impl TimerHeap {
    /// Asks for `timer` to be woken at its current deadline. `dropped` counts the timers
    /// dropped (by their [`Sleep`]) while queued here since the last compaction: their entries
    /// are dead weight until their deadlines, and a server makes many. hyper arms a 30 s
    /// header-read timeout for every request and drops it a few microseconds later: counted
    /// as live until they came up, they kept 30 s of requests' timers, 10 MB a second at
    /// 130,000 requests a second. Counting them keeps the heap within about a thousand
    /// entries of what is live.
    pub(crate) fn register(&mut self, timer: Arc<TimerShared>, dropped: &AtomicUsize) {
        let d = timer.deadline.load(Acquire);
        let q = timer.queued.load(Relaxed);
        if q != NONE && q != YOUNG && q <= d {
            return; // the live entry comes up first and is re-pushed then
        }
        // From here a young timer counts as not queued: its young entry goes stale.
        let q = if q == YOUNG { NONE } else { q };
        if q == NONE && timer.dropped.load(Acquire) {
            return; // dropped before it got here (sent from another thread)
        }
        if q == NONE {
            self.live += 1;
        }
        timer.queued.store(d, Relaxed);
        self.push(d, timer);
        let gone = dropped.load(Relaxed);
        if self.heap.len() > 2 * self.live.saturating_sub(gone) + 1024 {
            self.compact();
            // Drops counted since the load above stay counted; their entries may already be
            // gone, which only brings the next compaction a little early.
            dropped.fetch_sub(gone, Relaxed);
        }
    }

    /// [`register`](TimerHeap::register) for a timer registered on this worker's thread at
    /// `now`: one far from its deadline and not yet queued waits in the young list.
    pub(crate) fn register_local(
        &mut self,
        timer: Arc<TimerShared>,
        now: u64,
        dropped: &AtomicUsize,
    ) {
        let d = timer.deadline.load(Acquire);
        match timer.queued.load(Relaxed) {
            // Promoted before its deadline (read again then) is YOUNG_NS - a tick away.
            YOUNG if d >= now.saturating_add(YOUNG_NS) => {}
            NONE if d >= now.saturating_add(YOUNG_NS) => {
                if self.young.len() >= YOUNG_MAX {
                    self.promote();
                }
                timer.queued.store(YOUNG, Relaxed);
                self.young.push(timer);
            }
            _ => self.register(timer, dropped),
        }
    }

    /// Forgets the young timers dropped since they came, and moves the others into the heap.
    /// Called at least every `YOUNG_NS` minus a tick while the worker runs, and before it
    /// sleeps (so that `next_deadline` sees them).
    pub(crate) fn promote(&mut self) {
        let mut young = std::mem::take(&mut self.young);
        for t in young.drain(..) {
            if t.queued.load(Relaxed) != YOUNG {
                continue; // registered again, with an earlier deadline: in the heap now
            }
            if t.dropped.load(Acquire) {
                t.queued.store(NONE, Relaxed);
                continue;
            }
            let d = t.deadline.load(Acquire);
            t.queued.store(d, Relaxed);
            self.live += 1;
            self.push(d, t);
        }
        // Keep the vector's buffer for the next young timers.
        self.young = young;
    }

    fn push(&mut self, deadline: u64, timer: Arc<TimerShared>) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            deadline,
            seq: self.seq,
            timer,
        }));
    }

    fn compact(&mut self) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        let mut live = 0;
        for Reverse(e) in entries {
            if e.timer.queued.load(Relaxed) != e.deadline {
                continue;
            }
            if e.timer.dropped.load(Acquire) {
                e.timer.queued.store(NONE, Relaxed);
                continue;
            }
            live += 1;
            self.heap.push(Reverse(e));
        }
        self.live = live;
    }

    /// The earliest deadline, if any (may be a stale entry's: waking early is harmless).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(e)| e.deadline)
    }

    /// Takes the wakers of the timers due at `now`.
    pub(crate) fn fire(&mut self, now: u64, out: &mut Vec<Waker>) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.deadline > now {
                break;
            }
            let Reverse(e) = self.heap.pop().expect("peeked");
            if e.timer.queued.load(Relaxed) != e.deadline {
                continue; // stale
            }
            e.timer.queued.store(NONE, Relaxed);
            self.live -= 1;
            if e.timer.dropped.load(Acquire) {
                continue;
            }
            let d = e.timer.deadline.load(Acquire);
            if d > now {
                self.live += 1;
                e.timer.queued.store(d, Relaxed);
                self.push(d, e.timer);
                continue;
            }
            if let Some(w) = e.timer.waker.take() {
                out.push(w);
            }
        }
    }

    /// Takes every waker (at shutdown, so that sleeping tasks are dropped).
    pub(crate) fn drain(&mut self, out: &mut Vec<Waker>) {
        self.promote();
        for Reverse(e) in std::mem::take(&mut self.heap) {
            e.timer.queued.store(NONE, Relaxed);
            if let Some(w) = e.timer.waker.take() {
                out.push(w);
            }
        }
        self.live = 0;
    }

    /// Entries, in the heap and young.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len() + self.young.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, SeqCst);
        }
    }

    fn timer(deadline: u64) -> (Arc<TimerShared>, Arc<Flag>) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let t = Arc::new(TimerShared {
            deadline: AtomicU64::new(deadline),
            queued: AtomicU64::new(NONE),
            dropped: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        t.waker.register(&Waker::from(flag.clone()));
        (t, flag)
    }

    /// No timer dropped while queued.
    static NONE_DROPPED: AtomicUsize = AtomicUsize::new(0);

    fn fire(h: &mut TimerHeap, now: u64) {
        let mut out = Vec::new();
        h.fire(now, &mut out);
        out.into_iter().for_each(Waker::wake);
    }

    #[test]
    fn fires_in_deadline_order_and_only_when_due() {
        let mut h = TimerHeap::default();
        let (a, fa) = timer(20);
        let (b, fb) = timer(10);
        h.register(a, &NONE_DROPPED);
        h.register(b, &NONE_DROPPED);
        assert_eq!(h.next_deadline(), Some(10));
        fire(&mut h, 9);
        assert!(!fb.0.load(SeqCst));
        fire(&mut h, 10);
        assert!(fb.0.load(SeqCst) && !fa.0.load(SeqCst));
        fire(&mut h, 25);
        assert!(fa.0.load(SeqCst));
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn reset_later_moves_the_entry_without_a_new_one() {
        let mut h = TimerHeap::default();
        let (a, fa) = timer(10);
        h.register(a.clone(), &NONE_DROPPED);
        a.deadline.store(30, SeqCst);
        h.register(a.clone(), &NONE_DROPPED);
        assert_eq!(h.len(), 1);
        fire(&mut h, 15);
        assert!(!fa.0.load(SeqCst), "moved to 30");
        assert_eq!(h.next_deadline(), Some(30));
        fire(&mut h, 30);
        assert!(fa.0.load(SeqCst));
    }

    #[test]
    fn reset_earlier_fires_early_and_the_stale_entry_is_skipped() {
        let mut h = TimerHeap::default();
        let (a, fa) = timer(100);
        h.register(a.clone(), &NONE_DROPPED);
        a.deadline.store(5, SeqCst);
        h.register(a.clone(), &NONE_DROPPED);
        fire(&mut h, 5);
        assert!(fa.0.load(SeqCst));
        fa.0.store(false, SeqCst);
        a.waker.register(&Waker::from(fa.clone()));
        fire(&mut h, 200);
        assert!(!fa.0.load(SeqCst), "the stale entry at 100 does not fire");
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn dropped_timers_do_not_fire_and_stale_entries_are_compacted() {
        let mut h = TimerHeap::default();
        let (a, fa) = timer(10);
        h.register(a.clone(), &NONE_DROPPED);
        a.dropped.store(true, SeqCst);
        fire(&mut h, 10);
        assert!(!fa.0.load(SeqCst));
        // Many resets to earlier deadlines: stale entries are bounded.
        let (b, _fb) = timer(1_000_000);
        h.register(b.clone(), &NONE_DROPPED);
        for d in (0..5000u64).rev() {
            b.deadline.store(10_000 + d, SeqCst);
            h.register(b.clone(), &NONE_DROPPED);
        }
        assert!(h.len() <= 2 * h.live + 1025, "{} entries", h.len());
    }

    #[test]
    fn timers_dropped_while_queued_are_compacted_away_not_kept_to_their_deadlines() {
        // A server's pattern: a long timeout armed per request and dropped at once.
        let mut h = TimerHeap::default();
        let dropped = AtomicUsize::new(0);
        let (keep, fk) = timer(1_000);
        h.register(keep, &dropped);
        let mut most = 0;
        for i in 0..100_000u64 {
            let (t, _) = timer(30_000_000_000 + i);
            h.register(t.clone(), &dropped);
            // What `Sleep::drop` does for a queued timer.
            t.dropped.store(true, SeqCst);
            dropped.fetch_add(1, SeqCst);
            most = most.max(h.len());
        }
        assert!(most <= 1_030, "{most} entries for one live timer");
        // Without the count of drops, every one would still be there.
        let mut blind = TimerHeap::default();
        for i in 0..5_000u64 {
            let (t, _) = timer(30_000_000_000 + i);
            blind.register(t.clone(), &NONE_DROPPED);
            t.dropped.store(true, SeqCst);
        }
        assert_eq!(blind.len(), 5_000);
        // The live timer still fires, and no dropped one does.
        fire(&mut h, 1_000);
        assert!(fk.0.load(SeqCst));
        fire(&mut h, u64::MAX);
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn a_far_timer_dropped_while_young_never_reaches_the_heap() {
        let mut h = TimerHeap::default();
        let (t, f) = timer(1_000 + YOUNG_NS);
        h.register_local(t.clone(), 1_000, &NONE_DROPPED);
        assert_eq!((h.heap.len(), h.young.len()), (0, 1));
        t.dropped.store(true, SeqCst);
        h.promote();
        assert_eq!(h.len(), 0);
        assert_eq!(t.queued.load(SeqCst), NONE);
        fire(&mut h, u64::MAX);
        assert!(!f.0.load(SeqCst));
    }

    #[test]
    fn a_far_timer_kept_is_promoted_and_fires_at_its_deadline() {
        let mut h = TimerHeap::default();
        let (t, f) = timer(1_000 + YOUNG_NS);
        h.register_local(t.clone(), 1_000, &NONE_DROPPED);
        // Moved later while young: promoted at the deadline it has then.
        t.deadline.store(5 * YOUNG_NS, SeqCst);
        h.register_local(t.clone(), 2_000, &NONE_DROPPED);
        assert_eq!((h.heap.len(), h.young.len()), (0, 1));
        h.promote();
        assert_eq!((h.heap.len(), h.young.len(), h.live), (1, 0, 1));
        assert_eq!(h.next_deadline(), Some(5 * YOUNG_NS));
        fire(&mut h, 5 * YOUNG_NS - 1);
        assert!(!f.0.load(SeqCst));
        fire(&mut h, 5 * YOUNG_NS);
        assert!(f.0.load(SeqCst));
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn a_near_timer_goes_to_the_heap_and_a_young_one_moved_near_follows_at_once() {
        let mut h = TimerHeap::default();
        let (near, fnear) = timer(1_000 + YOUNG_NS - 1);
        h.register_local(near, 1_000, &NONE_DROPPED);
        assert_eq!((h.heap.len(), h.young.len()), (1, 0));
        // Young, then reset to within YOUNG_NS: into the heap now, not at the next promotion.
        let (t, f) = timer(1_000 + 3 * YOUNG_NS);
        h.register_local(t.clone(), 1_000, &NONE_DROPPED);
        t.deadline.store(2_000, SeqCst);
        h.register_local(t.clone(), 1_500, &NONE_DROPPED);
        assert_eq!((h.heap.len(), h.young.len(), h.live), (2, 1, 2));
        assert_eq!(h.next_deadline(), Some(2_000));
        // The young entry went stale: promoting adds nothing.
        h.promote();
        assert_eq!((h.heap.len(), h.young.len(), h.live), (2, 0, 2));
        fire(&mut h, 2_000);
        assert!(f.0.load(SeqCst) && !fnear.0.load(SeqCst));
        fire(&mut h, 1_000 + YOUNG_NS);
        assert!(fnear.0.load(SeqCst));
        assert_eq!(h.len(), 0);
    }
}
