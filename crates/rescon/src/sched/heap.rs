//! A 4-ary min-heap of `(virtual time, entry)` with lazy deletion.
//!
//! Written here because the policy's hot path wants what general heaps do not give together:
//! - Removing a member is O(1): the caller bumps the member's stamp, the heap only counts
//!   one live member less, and the stale entry is dropped when it reaches the top. Members go
//!   idle and come back all the time (a connection waiting for data), so this matters.
//! - No position index: an indexed heap (the `priority-queue` crates, or an array of positions)
//!   must write the position of every entry it moves, a store to a random cache line per level.
//!   Here a sift touches only the heap's own array, and an entry is 16 bytes, so the four children
//!   of a slot are one cache line.
//! - Re-keying the top, the member that just ran, is a single sift down.
//!
//! Stale entries are bounded: when they outnumber the live ones (and a few more), the heap is
//! rebuilt from its live entries. Keys are non-negative floats compared through their bits, as
//! integers. Equal keys come out in an order that depends only on the sequence of operations,
//! so runs are deterministic.

/// One entry: a member (`item`) at a key, valid while the member's stamp is `stamp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

#[derive(Debug, Default)]
pub(crate) struct Heap {
    entries: Vec<Entry>,
    live: u32,
}

impl Heap {
    /// Whether no live member is in the heap.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds a member at `key`, valid while its stamp is `stamp`.
    pub(crate) fn push(&mut self, key: f64, item: u32, stamp: u32) {
        self.live += 1;
        self.entries.push(Entry {
            key: bits(key),
            item,
            stamp,
        });
        self.sift_up(self.entries.len() - 1);
    }

    /// Counts one member less: the caller has bumped that member's stamp, so its entry is
    /// stale. Rebuilds the heap if stale entries pile up.
    pub(crate) fn forget(&mut self, valid: impl Fn(u32, u32) -> bool) {
        self.live -= 1;
        if self.entries.len() > 2 * self.live as usize + 32 {
            self.entries.retain(|e| valid(e.item, e.stamp));
            debug_assert_eq!(self.entries.len(), self.live as usize);
            for i in (0..self.entries.len()).rev() {
                self.sift_down(i);
            }
        }
    }

    /// The least live entry as `(key, item)`, dropping stale entries off the top.
    #[inline]
    pub(crate) fn top(&mut self, valid: impl Fn(u32, u32) -> bool) -> Option<(f64, u32)> {
        if self.entries.len() == self.live as usize {
            // No stale entry: the top is live without asking, which spares the caller a read
            // of the member (a cache miss, when members are many).
            let e = self.entries.first()?;
            return Some((f64::from_bits(e.key), e.item));
        }
        loop {
            let e = *self.entries.first()?;
            if valid(e.item, e.stamp) {
                return Some((f64::from_bits(e.key), e.item));
            }
            self.pop_top();
        }
    }

    /// Whether the top entry is `item` at stamp `stamp`.
    #[inline]
    pub(crate) fn is_top(&self, item: u32, stamp: u32) -> bool {
        self.entries
            .first()
            .is_some_and(|e| e.item == item && e.stamp == stamp)
    }

    /// Gives the top entry a larger key (it has just run).
    #[inline]
    pub(crate) fn rekey_top(&mut self, key: f64) {
        let new = bits(key);
        debug_assert!(new >= self.entries[0].key, "virtual time only grows");
        self.entries[0].key = new;
        if self.entries.len() > 1 {
            self.sift_down(0);
        }
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
                // All four children, one cache line: a tournament the compiler turns into
                // conditional moves.
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
                        heap.forget(valid);
                        model.remove(&item);
                    }
                    2 => {
                        // Re-key the top member to something larger, as charging does.
                        if let Some((k, top)) = heap.top(valid) {
                            let g = stamps.borrow()[top as usize];
                            prop_assert!(heap.is_top(top, g));
                            let new = k as u32 + key;
                            heap.rekey_top(new as f64);
                            model.insert(top, new);
                        }
                    }
                    _ if live => {
                        // Re-key a member wherever it is: forget it and push it again.
                        stamps.borrow_mut()[item as usize] += 1;
                        heap.forget(valid);
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
                prop_assert!(heap.entries.len() <= 2 * model.len() + 33, "stale entries are bounded");
            }
        }
    }
}
