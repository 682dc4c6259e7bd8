//! An indexed 4-ary min-heap of `(virtual time, node)`.
//!
//! Written here because the policy needs what the standard `BinaryHeap` lacks: removing an
//! arbitrary member and re-keying one in place, in O(log n), with the position of each member
//! kept in the caller's arena (one `u32` per node) rather than in a hash map, as the
//! `priority-queue` and `keyed_priority_queue` crates do. Four children per level halve the
//! depth of a binary heap. Ties break on the entry number, so the order is deterministic.

pub(crate) const NOT_QUEUED: u32 = u32::MAX;

/// A member as one integer: the key's bits above the entry. Keys are non-negative finite
/// floats, whose bit patterns order like the numbers, so one `u128` comparison orders by key and
/// then by entry.
#[inline]
fn pack(key: f64, item: u32) -> u128 {
    debug_assert!(
        key >= 0.0 && key.is_finite(),
        "heap keys are non-negative: {key}"
    );
    ((key.to_bits() as u128) << 32) | item as u128
}

#[inline]
fn item(x: u128) -> u32 {
    x as u32
}

#[inline]
fn key(x: u128) -> f64 {
    f64::from_bits((x >> 32) as u64)
}

#[derive(Debug, Default)]
pub(crate) struct Heap {
    items: Vec<u128>,
}

impl Heap {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<(f64, u32)> {
        self.items.first().map(|&x| (key(x), item(x)))
    }

    pub(crate) fn push(&mut self, key: f64, it: u32, pos: &mut [u32]) {
        debug_assert_eq!(pos[it as usize], NOT_QUEUED);
        let i = self.items.len();
        self.items.push(pack(key, it));
        self.sift_up(i, pos);
    }

    pub(crate) fn remove(&mut self, it: u32, pos: &mut [u32]) {
        let i = pos[it as usize] as usize;
        debug_assert!(i < self.items.len() && item(self.items[i]) == it);
        pos[it as usize] = NOT_QUEUED;
        let last = self.items.pop().expect("heap member");
        if i < self.items.len() {
            self.items[i] = last;
            if i > 0 && last < self.items[(i - 1) / 4] {
                self.sift_up(i, pos);
            } else {
                self.sift_down(i, pos);
            }
        }
    }

    /// Changes the key of a member.
    #[inline]
    pub(crate) fn update(&mut self, it: u32, key: f64, pos: &mut [u32]) {
        let i = pos[it as usize] as usize;
        debug_assert!(item(self.items[i]) == it);
        let new = pack(key, it);
        let old = std::mem::replace(&mut self.items[i], new);
        if new > old {
            self.sift_down(i, pos);
        } else {
            self.sift_up(i, pos);
        }
    }

    fn sift_up(&mut self, mut i: usize, pos: &mut [u32]) {
        let x = self.items[i];
        while i > 0 {
            let p = (i - 1) / 4;
            let px = self.items[p];
            if x >= px {
                break;
            }
            self.items[i] = px;
            pos[item(px) as usize] = i as u32;
            i = p;
        }
        self.items[i] = x;
        pos[item(x) as usize] = i as u32;
    }

    fn sift_down(&mut self, mut i: usize, pos: &mut [u32]) {
        let x = self.items[i];
        let n = self.items.len();
        loop {
            let first = 4 * i + 1;
            if first >= n {
                break;
            }
            let kids = &self.items[first..(first + 4).min(n)];
            let mut best = 0;
            let mut least = kids[0];
            for (k, &v) in kids.iter().enumerate().skip(1) {
                if v < least {
                    least = v;
                    best = k;
                }
            }
            if least >= x {
                break;
            }
            self.items[i] = least;
            pos[item(least) as usize] = i as u32;
            i = first + best;
        }
        self.items[i] = x;
        pos[item(x) as usize] = i as u32;
    }

    #[cfg(test)]
    fn check(&self, pos: &[u32]) {
        for (i, &it) in self.items.iter().enumerate() {
            assert_eq!(pos[item(it) as usize] as usize, i);
            if i > 0 {
                assert!(it >= self.items[(i - 1) / 4]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_sorted_set(ops in prop::collection::vec((0u8..3, 0u32..40, 0u32..1000), 1..400)) {
            let mut heap = Heap::default();
            let mut pos = vec![NOT_QUEUED; 40];
            let mut model: std::collections::BTreeMap<u32, u32> = Default::default();
            for (op, item, key) in ops {
                let queued = pos[item as usize] != NOT_QUEUED;
                match op {
                    0 if !queued => { heap.push(key as f64, item, &mut pos); model.insert(item, key); }
                    1 if queued => { heap.remove(item, &mut pos); model.remove(&item); }
                    _ if queued => { heap.update(item, key as f64, &mut pos); model.insert(item, key); }
                    _ => {}
                }
                heap.check(&pos);
                let want = model.iter().map(|(&i, &k)| (k, i)).min();
                prop_assert_eq!(heap.peek().map(|(k, i)| (k as u32, i)), want);
                prop_assert_eq!(heap.len(), model.len());
            }
        }
    }
}
