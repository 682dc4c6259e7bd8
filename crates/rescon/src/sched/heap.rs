//! An indexed 4-ary min-heap of `(virtual time, node)`.
//!
//! Written here because the policy needs what the standard `BinaryHeap` lacks: removing an
//! arbitrary member and re-keying one in place, in O(log n), with the position of each member
//! kept in the caller's arena (one `u32` per node) rather than in a hash map, as the
//! `priority-queue` and `keyed_priority_queue` crates do. Four children per level halve the
//! depth of a binary heap. Keys are stored apart from the members, so the four children of a slot
//! are 32 bytes of keys, compared as integers. Equal keys come out in an order that depends only on
//! the sequence of operations, so runs are deterministic.

pub(crate) const NOT_QUEUED: u32 = u32::MAX;

/// A key as an integer: keys are non-negative finite floats, whose bit patterns order like the
/// numbers, so comparing keys is one integer comparison.
#[inline]
fn bits(key: f64) -> u64 {
    debug_assert!(
        key >= 0.0 && key.is_finite(),
        "heap keys are non-negative: {key}"
    );
    key.to_bits()
}

/// Keys and members in separate arrays: the four children of a slot are 32 bytes of keys.
#[derive(Debug, Default)]
pub(crate) struct Heap {
    keys: Vec<u64>,
    items: Vec<u32>,
}

impl Heap {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<(f64, u32)> {
        Some((f64::from_bits(*self.keys.first()?), self.items[0]))
    }

    pub(crate) fn push(&mut self, key: f64, it: u32, pos: &mut [u32]) {
        debug_assert_eq!(pos[it as usize], NOT_QUEUED);
        self.keys.push(bits(key));
        self.items.push(it);
        self.sift_up(self.keys.len() - 1, pos);
    }

    pub(crate) fn remove(&mut self, it: u32, pos: &mut [u32]) {
        let i = pos[it as usize] as usize;
        debug_assert!(i < self.items.len() && self.items[i] == it);
        pos[it as usize] = NOT_QUEUED;
        let (key, item) = (
            self.keys.pop().expect("member"),
            self.items.pop().expect("member"),
        );
        if i < self.keys.len() {
            self.keys[i] = key;
            self.items[i] = item;
            if i > 0 && key < self.keys[(i - 1) / 4] {
                self.sift_up(i, pos);
            } else {
                self.sift_down(i, pos);
            }
        }
    }

    /// Changes the key of a member.
    #[inline]
    pub(crate) fn update(&mut self, it: u32, key: f64, pos: &mut [u32]) {
        let new = bits(key);
        if self.keys.len() == 1 {
            // Alone in its queue, as a container's only runnable child often is.
            self.keys[0] = new;
            return;
        }
        let i = pos[it as usize] as usize;
        debug_assert!(self.items[i] == it);
        let old = std::mem::replace(&mut self.keys[i], new);
        if new > old {
            self.sift_down(i, pos);
        } else {
            self.sift_up(i, pos);
        }
    }

    fn sift_up(&mut self, mut i: usize, pos: &mut [u32]) {
        let (key, item) = (self.keys[i], self.items[i]);
        while i > 0 {
            let p = (i - 1) / 4;
            if key >= self.keys[p] {
                break;
            }
            self.keys[i] = self.keys[p];
            self.items[i] = self.items[p];
            pos[self.items[i] as usize] = i as u32;
            i = p;
        }
        self.keys[i] = key;
        self.items[i] = item;
        pos[item as usize] = i as u32;
    }

    fn sift_down(&mut self, mut i: usize, pos: &mut [u32]) {
        let (key, item) = (self.keys[i], self.items[i]);
        let n = self.keys.len();
        loop {
            let first = 4 * i + 1;
            let least = if first + 4 <= n {
                // All four children: a tournament the compiler turns into conditional moves.
                let k: &[u64; 4] = self.keys[first..first + 4].try_into().expect("four keys");
                let (a, ai) = if k[1] < k[0] { (k[1], 1) } else { (k[0], 0) };
                let (b, bi) = if k[3] < k[2] { (k[3], 3) } else { (k[2], 2) };
                if b < a {
                    (b, first + bi)
                } else {
                    (a, first + ai)
                }
            } else if first < n {
                let mut best = (self.keys[first], first);
                for c in first + 1..n {
                    if self.keys[c] < best.0 {
                        best = (self.keys[c], c);
                    }
                }
                best
            } else {
                break;
            };
            if least.0 >= key {
                break;
            }
            let c = least.1;
            self.keys[i] = least.0;
            self.items[i] = self.items[c];
            pos[self.items[i] as usize] = i as u32;
            i = c;
        }
        self.keys[i] = key;
        self.items[i] = item;
        pos[item as usize] = i as u32;
    }

    #[cfg(test)]
    fn check(&self, pos: &[u32]) {
        assert_eq!(self.keys.len(), self.items.len());
        for (i, &it) in self.items.iter().enumerate() {
            assert_eq!(pos[it as usize] as usize, i);
            if i > 0 {
                assert!(self.keys[i] >= self.keys[(i - 1) / 4]);
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
                // Ties may come out in any order: the least key must, with a member that has it.
                let least = model.values().min().copied();
                prop_assert_eq!(heap.peek().map(|(k, _)| k as u32), least);
                if let Some((k, i)) = heap.peek() {
                    prop_assert_eq!(model.get(&i).copied(), Some(k as u32));
                }
                prop_assert_eq!(heap.len(), model.len());
            }
        }
    }
}
