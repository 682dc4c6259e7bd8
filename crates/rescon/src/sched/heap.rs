//! A queue of `(virtual time, entry)` with lazy deletion: a 4-ary min-heap beside a sorted run.
//!
//! Written here because the policy's hot path wants what general heaps do not give together:
//! - Removing a member is O(1): the caller bumps the member's stamp, the queue only counts
//!   one live member less, and the stale entry is dropped when it reaches the front. Members go
//!   idle and come back all the time (a connection waiting for data), so this matters.
//! - No position index: an indexed heap (the `priority-queue` crates, or an array of positions)
//!   must write the position of every entry it moves, a store to a random cache line per level.
//!   Here a sift touches only the heap's own array, and an entry is 16 bytes.
//! - Re-keying the front, the member that just ran, is O(1) in the common case. A member that
//!   ran usually has the largest key afterwards (siblings of equal share take turns), and a
//!   heap would sift it to the bottom, a cache miss per level when siblings are many. So the
//!   queue keeps a *run* beside the heap: a FIFO whose keys never decrease. An entry whose key
//!   is at least the run's last goes to the back of the run; any other goes into the heap; the
//!   front of the queue is the lesser of the two fronts. Among siblings taking turns every
//!   operation is then a pop at the front of the run and a push at its back, two cache lines
//!   that are touched again on the next turns; the heap takes what arrives out of order, so
//!   the worst case stays O(log n).
//! - Waking, running briefly and going idle is O(1) too, which is the life of a connection's
//!   container. A member that wakes enters at its siblings' least key, so it goes to the
//!   *front* of the run; re-keyed to no more than the next in the run, it stays there; and a
//!   member removed while its entry is at either end of the run (or the heap's top) is dropped
//!   at once instead of going stale. Measured (`rescon-bench primitives`,
//!   `wake_pick_charge_sleep_64`): 1,618 instructions a request before, 1,430 after, the
//!   heap's sifts and stale-entry pops gone from the profile.
//!
//! Stale entries are bounded: when they outnumber the live ones (and a few more), the queue is
//! rebuilt from its live entries. Keys are non-negative floats compared through their bits, as
//! integers. Equal keys come out in an order that depends only on the sequence of operations
//! (the run's front first on a tie), so runs are deterministic.

/// One entry: a member (`item`) at a key, valid while the member's stamp is `stamp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    key: u64,
    item: u32,
    stamp: u32,
}

#[inline]
fn bits(key: f64) -> u64 {
    debug_assert!(
        key >= 0.0 && key.is_finite(),
        "heap keys are non-negative: {key}"
    );
    key.to_bits()
}

/// Entries per 64-byte cache line.
const LINE_ENTRIES: usize = 64 / size_of::<Entry>();

/// The run: a FIFO ring of entries in a power-of-two buffer.
///
/// Written here rather than taken from `VecDeque` for one operation: moving the front entry
/// to the back, which is what a member taking its turn does. `VecDeque` spells it
/// `pop_front` then `push_back`, each with its own checks and wrap-around; here it is one
/// store and two masked adds. Measured with cachegrind, pick and charge among 100,000
/// containers: 1,077 instructions with `VecDeque`, 933 with this ring.
#[derive(Debug, Default)]
struct Ring {
    /// Empty, or a power of two long; slots outside `head .. head + len` (wrapping) are unused.
    buf: Vec<Entry>,
    head: usize,
    len: usize,
}

impl Ring {
    #[inline]
    fn at(&self, i: usize) -> &Entry {
        &self.buf[(self.head + i) & (self.buf.len() - 1)]
    }

    #[inline]
    fn front(&self) -> Option<&Entry> {
        (self.len > 0).then(|| &self.buf[self.head])
    }

    #[inline]
    fn back(&self) -> Option<&Entry> {
        (self.len > 0).then(|| self.at(self.len - 1))
    }

    #[inline]
    fn pop_front(&mut self) {
        debug_assert!(self.len > 0);
        self.head = (self.head + 1) & (self.buf.len() - 1);
        self.len -= 1;
    }

    #[inline]
    fn pop_back(&mut self) {
        debug_assert!(self.len > 0);
        self.len -= 1;
    }

    #[inline]
    fn push_front(&mut self, e: Entry) {
        if self.len == self.buf.len() {
            self.grow();
        }
        self.head = (self.head + self.buf.len() - 1) & (self.buf.len() - 1);
        self.buf[self.head] = e;
        self.len += 1;
    }

    #[inline]
    fn push_back(&mut self, e: Entry) {
        if self.len == self.buf.len() {
            self.grow();
        }
        let i = (self.head + self.len) & (self.buf.len() - 1);
        self.buf[i] = e;
        self.len += 1;
    }

    /// Moves the front entry to the back as `e`.
    #[inline]
    fn rotate(&mut self, e: Entry) {
        debug_assert!(self.len > 0);
        let mask = self.buf.len() - 1;
        self.buf[(self.head + self.len) & mask] = e;
        self.head = (self.head + 1) & mask;
    }

    #[cold]
    fn grow(&mut self) {
        let cap = (self.buf.len() * 2).max(4);
        let mut buf = vec![Entry::default(); cap];
        // Colouring, as slab allocators do: rings of one size sit at a fixed stride in the
        // allocator, and rings whose members take turns in lockstep (equal siblings under
        // equal parents) would have their fronts at one offset, all in a few cache sets
        // that then thrash (cachegrind, pick and charge among 100,000 containers: two
        // misses of a 1 MB cache per pick that a fully associative one does not have). So
        // each ring starts at a line picked by a hash of where it is.
        let block = buf.as_ptr() as usize / (cap * size_of::<Entry>());
        let line = (block as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        let head = (line as usize * LINE_ENTRIES) & (cap - 1);
        for i in 0..self.len {
            buf[(head + i) & (cap - 1)] = *self.at(i);
        }
        self.buf = buf;
        self.head = head;
    }

    fn retain(&mut self, keep: impl Fn(&Entry) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            let e = *self.at(i);
            if keep(&e) {
                let j = (self.head + kept) & (self.buf.len() - 1);
                self.buf[j] = e;
                kept += 1;
            }
        }
        self.len = kept;
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        (0..self.len).map(|i| self.at(i))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Heap {
    /// A 4-ary min-heap of the entries that arrived out of order.
    entries: Vec<Entry>,
    /// Entries in the order they arrived, their keys never decreasing.
    run: Ring,
    live: u32,
}

impl Heap {
    /// Whether no live member is in the heap.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    #[inline]
    fn len(&self) -> usize {
        self.entries.len() + self.run.len
    }

    /// Adds a member at `key`, valid while its stamp is `stamp`.
    pub(crate) fn push(&mut self, key: f64, item: u32, stamp: u32) {
        self.live += 1;
        self.insert(Entry {
            key: bits(key),
            item,
            stamp,
        });
    }

    /// Puts `e` at an end of the run if it keeps the run sorted (the back, or the front for a
    /// member that enters at the least key, as one that wakes at its siblings' floor does),
    /// else in the heap.
    #[inline]
    fn insert(&mut self, e: Entry) {
        match (self.run.front(), self.run.back()) {
            (_, None) => self.run.push_back(e),
            (_, Some(b)) if e.key >= b.key => self.run.push_back(e),
            (Some(f), _) if e.key <= f.key => self.run.push_front(e),
            _ => {
                self.entries.push(e);
                self.sift_up(self.entries.len() - 1);
            }
        }
    }

    /// Counts one member less: the caller has bumped the stamp of member `item`, so its entry
    /// is stale. If that entry is at an end of the run or the heap's top, where a member
    /// that just ran or just entered is, it goes at once; elsewhere it stays until it reaches
    /// the front. Rebuilds the queue if stale entries pile up.
    pub(crate) fn forget(&mut self, item: u32, valid: impl Fn(u32, u32) -> bool) {
        self.live -= 1;
        if self.run.back().is_some_and(|e| e.item == item) {
            self.run.pop_back();
        } else if self.run.front().is_some_and(|e| e.item == item) {
            self.run.pop_front();
        } else if self.entries.first().is_some_and(|e| e.item == item) {
            self.pop_top();
        }
        if self.len() > 2 * self.live as usize + 32 {
            self.entries.retain(|e| valid(e.item, e.stamp));
            self.run.retain(|e| valid(e.item, e.stamp));
            debug_assert_eq!(self.len(), self.live as usize);
            for i in (0..self.entries.len()).rev() {
                self.sift_down(i);
            }
        }
    }

    /// The front entry, and whether it is the run's: the lesser key of the two fronts, the
    /// run's on a tie.
    #[inline]
    fn front(&self) -> Option<(Entry, bool)> {
        let h = self.entries.first();
        match self.run.front() {
            Some(r) if h.is_none_or(|h| r.key <= h.key) => Some((*r, true)),
            _ => h.map(|h| (*h, false)),
        }
    }

    /// The least live entry as `(key, item)`, dropping stale entries off the front.
    #[inline]
    pub(crate) fn top(&mut self, valid: impl Fn(u32, u32) -> bool) -> Option<(f64, u32)> {
        if self.len() == self.live as usize {
            // No stale entry: the front is live without asking, which spares the caller a
            // read of the member (a cache miss, when members are many).
            let (e, _) = self.front()?;
            return Some((f64::from_bits(e.key), e.item));
        }
        self.top_after_stale(valid)
    }

    /// [`Heap::top`] when there are stale entries: out of line, so that the common case stays
    /// small enough to inline.
    #[cold]
    #[inline(never)]
    fn top_after_stale(&mut self, valid: impl Fn(u32, u32) -> bool) -> Option<(f64, u32)> {
        loop {
            let (e, in_run) = self.front()?;
            if valid(e.item, e.stamp) {
                return Some((f64::from_bits(e.key), e.item));
            }
            if in_run {
                self.run.pop_front();
            } else {
                self.pop_top();
            }
        }
    }

    /// The member at the front of the run, live or not: the one that takes the next turn
    /// among siblings taking turns.
    #[inline]
    pub(crate) fn run_front_item(&self) -> Option<u32> {
        self.run.front().map(|e| e.item)
    }

    /// If the front entry is `item` at stamp `stamp`, gives it the larger key `key` (it has
    /// just run) and returns true; else changes nothing and returns false.
    #[inline]
    pub(crate) fn rekey_if_top(&mut self, item: u32, stamp: u32, key: f64) -> bool {
        let Some((mut e, in_run)) = self.front() else {
            return false;
        };
        if e.item != item || e.stamp != stamp {
            return false;
        }
        let new = bits(key);
        debug_assert!(new >= e.key, "virtual time only grows");
        e.key = new;
        let in_order = self.run.back().is_none_or(|b| new >= b.key);
        match (in_run, in_order) {
            // Its turn taken: to the back of the run (the common case).
            (true, true) => self.run.rotate(e),
            // Still no later than the next in the run: stays at the front (a member that ran
            // briefly after waking at the floor).
            (true, false) if self.run.len > 1 && new <= self.run.at(1).key => {
                self.run.buf[self.run.head].key = new;
            }
            (true, false) => {
                self.run.pop_front();
                self.entries.push(e);
                self.sift_up(self.entries.len() - 1);
            }
            (false, true) => {
                self.pop_top();
                self.run.push_back(e);
            }
            // Out of order, and the heap's top already: re-key in place, one sift down.
            (false, false) => {
                self.entries[0].key = new;
                self.sift_down(0);
            }
        }
        true
    }

    fn pop_top(&mut self) {
        let last = self.entries.pop().expect("non-empty");
        if !self.entries.is_empty() {
            self.entries[0] = last;
            self.sift_down(0);
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        let x = self.entries[i];
        while i > 0 {
            let p = (i - 1) / 4;
            if x.key >= self.entries[p].key {
                break;
            }
            self.entries[i] = self.entries[p];
            i = p;
        }
        self.entries[i] = x;
    }

    fn sift_down(&mut self, mut i: usize) {
        let x = self.entries[i];
        let n = self.entries.len();
        loop {
            let first = 4 * i + 1;
            let (least, c) = if first + 4 <= n {
                // All four children: a tournament the compiler turns into conditional moves.
                let k = &self.entries[first..first + 4];
                let (a, ai) = if k[1].key < k[0].key {
                    (k[1].key, 1)
                } else {
                    (k[0].key, 0)
                };
                let (b, bi) = if k[3].key < k[2].key {
                    (k[3].key, 3)
                } else {
                    (k[2].key, 2)
                };
                if b < a {
                    (b, first + bi)
                } else {
                    (a, first + ai)
                }
            } else if first < n {
                let mut best = (self.entries[first].key, first);
                for c in first + 1..n {
                    if self.entries[c].key < best.0 {
                        best = (self.entries[c].key, c);
                    }
                }
                best
            } else {
                break;
            };
            if least >= x.key {
                break;
            }
            self.entries[i] = self.entries[c];
            i = c;
        }
        self.entries[i] = x;
    }

    #[cfg(test)]
    fn check(&self) {
        for i in 1..self.entries.len() {
            assert!(self.entries[i].key >= self.entries[(i - 1) / 4].key);
        }
        for (a, b) in self.run.iter().zip(self.run.iter().skip(1)) {
            assert!(a.key <= b.key, "the run is sorted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    proptest! {
        /// Against a map of live members: the top is always a live member with the least key.
        #[test]
        fn behaves_like_a_map_of_live_members(ops in prop::collection::vec((0u8..4, 0u32..40, 0u32..1000), 1..400)) {
            let mut heap = Heap::default();
            let stamps = RefCell::new(vec![0u32; 40]);
            let mut model: BTreeMap<u32, u32> = BTreeMap::new();
            let valid = |item: u32, stamp: u32| stamps.borrow()[item as usize] == stamp;
            for (op, item, key) in ops {
                let live = model.contains_key(&item);
                match op {
                    0 if !live => {
                        let g = { let mut gs = stamps.borrow_mut(); gs[item as usize] += 1; gs[item as usize] };
                        heap.push(key as f64, item, g);
                        model.insert(item, key);
                    }
                    1 if live => {
                        stamps.borrow_mut()[item as usize] += 1;
                        heap.forget(item, valid);
                        model.remove(&item);
                    }
                    2 => {
                        // Re-key the top member to something larger, as charging does.
                        if let Some((k, top)) = heap.top(valid) {
                            let g = stamps.borrow()[top as usize];
                            let new = k as u32 + key;
                            prop_assert!(!heap.rekey_if_top(top, g.wrapping_add(1), new as f64), "a stale stamp is not the top");
                            prop_assert!(heap.rekey_if_top(top, g, new as f64));
                            model.insert(top, new);
                        }
                    }
                    _ if live => {
                        // Re-key a member wherever it is: forget it and push it again.
                        stamps.borrow_mut()[item as usize] += 1;
                        heap.forget(item, valid);
                        let g = { let mut gs = stamps.borrow_mut(); gs[item as usize] += 1; gs[item as usize] };
                        heap.push(key as f64, item, g);
                        model.insert(item, key);
                    }
                    _ => {}
                }
                heap.check();
                prop_assert_eq!(heap.is_empty(), model.is_empty());
                let least = model.values().min().copied();
                let top = heap.top(valid);
                prop_assert_eq!(top.map(|(k, _)| k as u32), least);
                if let Some((k, i)) = top {
                    prop_assert_eq!(model.get(&i).copied(), Some(k as u32));
                }
                prop_assert!(heap.len() <= 2 * model.len() + 33, "stale entries are bounded");
            }
        }
    }

    /// Siblings taking turns at equal keys, as among equal shares, never touch the heap, and
    /// come out in turn; one that arrives out of order goes into the heap and still comes out
    /// first.
    #[test]
    fn turns_stay_in_the_run() {
        let mut heap = Heap::default();
        let all_valid = |_: u32, _: u32| true;
        for item in 0..100 {
            heap.push(0.0, item, 0);
        }
        for turn in 0..1_050u32 {
            let (k, item) = heap.top(all_valid).expect("non-empty");
            assert_eq!(item, turn % 100, "turns in order");
            assert_eq!(k, f64::from(turn / 100));
            assert!(heap.rekey_if_top(item, 0, k + 1.0));
            heap.check();
        }
        assert!(heap.entries.is_empty(), "turns never enter the heap");
        // The run is 50 members at 10, then 50 at 11. A key between its ends goes into the
        // heap, and is the front if it is least.
        heap.push(10.5, 500, 0);
        assert_eq!(heap.entries.len(), 1);
        assert_eq!(heap.top(all_valid), Some((10.0, 50)));
        assert!(heap.rekey_if_top(50, 0, 11.0));
        heap.push(10.25, 501, 0);
        assert_eq!(heap.entries.len(), 2);
        assert!(!heap.rekey_if_top(501, 0, 100.0), "not the front");
        // Re-keyed past the run's last, the heap's front moves to the run.
        for item in 51..100 {
            assert!(heap.rekey_if_top(item, 0, 11.0));
        }
        assert_eq!(heap.top(all_valid), Some((10.25, 501)));
        assert!(heap.rekey_if_top(501, 0, 100.0));
        assert_eq!(heap.entries.len(), 1);
        assert_eq!(heap.run.back().map(|e| e.item), Some(501));
        assert_eq!(heap.top(all_valid), Some((10.5, 500)));
        heap.check();
    }

    /// A member that wakes at the least key goes to the front of the run, not into the heap;
    /// one that runs briefly stays at the front while it is still least; and one that leaves
    /// from either end of the run or the heap's top leaves no stale entry. This is the life of
    /// a connection's container: wake at the floor, run a little, sleep.
    #[test]
    fn wake_run_sleep_is_constant_time() {
        let mut heap = Heap::default();
        let stamps = RefCell::new(vec![0u32; 8]);
        let valid = |item: u32, stamp: u32| stamps.borrow()[item as usize] == stamp;
        for item in 0..4 {
            heap.push(10.0 + f64::from(item), item, 0);
        }
        // Wakes at the floor: the front of the run.
        heap.push(10.0, 4, 0);
        assert!(heap.entries.is_empty());
        assert_eq!(heap.top(valid), Some((10.0, 4)));
        // Runs a little, still no later than the next: stays at the front.
        assert!(heap.rekey_if_top(4, 0, 10.0));
        assert!(heap.entries.is_empty());
        assert_eq!(heap.run.front().map(|e| e.item), Some(4));
        heap.check();
        // Sleeps: gone at once.
        stamps.borrow_mut()[4] += 1;
        heap.forget(4, valid);
        assert_eq!(heap.len(), heap.live as usize, "no stale entry");
        assert_eq!(heap.top(valid), Some((10.0, 0)));
        // Runs past the run's last, then sleeps: off the back at once.
        assert!(heap.rekey_if_top(0, 0, 20.0));
        stamps.borrow_mut()[0] += 1;
        heap.forget(0, valid);
        assert_eq!(heap.len(), heap.live as usize, "no stale entry");
        // From the heap's top, too.
        heap.push(11.5, 5, 0);
        assert_eq!(heap.entries.len(), 1);
        assert!(heap.rekey_if_top(1, 0, 11.6));
        assert_eq!(heap.top(valid), Some((11.5, 5)));
        stamps.borrow_mut()[5] += 1;
        heap.forget(5, valid);
        assert!(heap.entries.is_empty());
        assert_eq!(heap.len(), heap.live as usize, "no stale entry");
        // Elsewhere, a stale entry waits for the front, and the live members are unchanged.
        stamps.borrow_mut()[2] += 1;
        heap.forget(2, valid);
        assert_eq!(heap.len(), heap.live as usize + 1);
        assert_eq!(heap.top(valid), Some((11.6, 1)));
        heap.check();
    }
}
