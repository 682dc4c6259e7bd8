//! Round robin over containers, ignoring their attributes: the "containers off" baseline.

use super::{Key, Pick, Policy};
use crate::container::Node;
use crate::{Container, ContainerId};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Debug)]
struct Entry {
    node: Option<Arc<Node>>,
    refs: u32,
    runnable: bool,
    queued: bool,
}

/// Runs containers in the order they became runnable; a container that was charged and is
/// still runnable goes to the back. Classes, shares, priorities and limits are ignored, and CPU
/// is still charged to the containers' usage, so accounting stays exact while scheduling does
/// not differentiate.
///
/// ```
/// use rescon::sched::{Fifo, Policy};
/// let registry = rescon::Registry::new();
/// let a = registry.root().create_child("a", Default::default()).unwrap();
/// let b = registry.root().create_child("b", Default::default()).unwrap();
/// let mut fifo = Fifo::new();
/// let (ka, kb) = (fifo.attach(&a), fifo.attach(&b));
/// fifo.set_runnable(kb, true);
/// fifo.set_runnable(ka, true);
/// assert_eq!(fifo.pick().unwrap().key, kb);
/// fifo.charge(kb, 1000);
/// assert_eq!(fifo.pick().unwrap().key, ka);
/// ```
#[derive(Debug, Default)]
pub struct Fifo {
    entries: Vec<Entry>,
    free: Vec<u32>,
    by_id: FxHashMap<ContainerId, u32>,
    queue: VecDeque<u32>,
}

impl Fifo {
    /// An empty policy.
    pub fn new() -> Fifo {
        Fifo::default()
    }

    fn front(&mut self) -> Option<u32> {
        while let Some(&k) = self.queue.front() {
            if self.entries[k as usize].runnable {
                return Some(k);
            }
            self.queue.pop_front();
            self.entries[k as usize].queued = false;
        }
        None
    }
}

impl Policy for Fifo {
    fn attach(&mut self, container: &Container) -> Key {
        let id = container.id();
        if let Some(&k) = self.by_id.get(&id) {
            self.entries[k as usize].refs += 1;
            return Key(k);
        }
        let e = Entry {
            node: Some(container.node.clone()),
            refs: 1,
            runnable: false,
            queued: false,
        };
        let k = match self.free.pop() {
            Some(k) => {
                self.entries[k as usize] = e;
                k
            }
            None => {
                self.entries.push(e);
                (self.entries.len() - 1) as u32
            }
        };
        self.by_id.insert(id, k);
        Key(k)
    }

    fn detach(&mut self, key: Key) {
        let e = &mut self.entries[key.index()];
        e.refs -= 1;
        if e.refs == 0 {
            e.runnable = false;
            if e.queued {
                self.queue.retain(|&k| k != key.0);
                e.queued = false;
            }
            let node = e.node.take().expect("attached");
            self.by_id.remove(&node.id);
            self.free.push(key.0);
        }
    }

    fn set_runnable(&mut self, key: Key, runnable: bool) {
        let e = &mut self.entries[key.index()];
        e.runnable = runnable;
        if runnable && !e.queued {
            e.queued = true;
            self.queue.push_back(key.0);
        }
    }

    fn pick(&mut self) -> Option<Pick> {
        let k = self.front()?;
        Some(Pick {
            key: Key(k),
            slice_ns: None,
        })
    }

    fn charge(&mut self, key: Key, elapsed_ns: u64) {
        let e = &self.entries[key.index()];
        crate::usage::Account {
            counters: &e.node.as_ref().expect("attached").counters,
        }
        .add_cpu_ns(elapsed_ns);
        if self.queue.front() == Some(&key.0) {
            self.queue.pop_front();
            if e.runnable {
                self.queue.push_back(key.0);
            } else {
                self.entries[key.index()].queued = false;
            }
        }
    }

    fn refill(&mut self, _now_ns: u64) {}

    fn next_refill(&self) -> Option<u64> {
        None
    }

    fn container(&self, key: Key) -> ContainerId {
        self.entries[key.index()]
            .node
            .as_ref()
            .expect("attached")
            .id
    }
}
