//! Placement: a task spawned where it could stay (by `spawn`, or into its spawner's container)
//! stays beside its spawner while the workers are balanced, and goes to a less loaded worker
//! when they are not, so an accept loop's connections spread across the workers.

use rescon::{Attributes, Container, Registry};
use rescon_rt::{Builder, Runtime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

/// A runtime with two workers and a container under the root.
fn two_workers() -> (Registry, Runtime, Container) {
    let registry = Registry::new();
    let rt = Builder::new(&registry).workers(2).build().unwrap();
    let c = registry
        .root()
        .create_child("web", Attributes::default())
        .unwrap();
    (registry, rt, c)
}

/// Spawns 32 tasks from one task on a two-worker runtime, as an accept loop spawns its
/// connections, and counts the tasks each thread ran. Each task lives 300 ms, so none ends
/// while the loop (microseconds) is still placing.
fn placed(into_same_container: bool) -> HashMap<ThreadId, usize> {
    let (_registry, rt, web) = two_workers();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let (web2, seen2) = (web.clone(), seen.clone());
    rt.block_on(rt.spawn_in(&web, async move {
        let mut handles = Vec::new();
        for _ in 0..32 {
            let seen = seen2.clone();
            let task = async move {
                *seen
                    .lock()
                    .unwrap()
                    .entry(std::thread::current().id())
                    .or_insert(0) += 1;
                rescon_rt::sleep(Duration::from_millis(300)).await;
            };
            handles.push(if into_same_container {
                rescon_rt::spawn_in(&web2, task)
            } else {
                rescon_rt::spawn(task)
            });
        }
        for h in handles {
            h.await.unwrap();
        }
    }))
    .unwrap();
    seen.lock().map(|m| m.clone()).unwrap()
}

#[test]
fn spawned_connections_spread_across_workers() {
    for same in [false, true] {
        let by_thread = placed(same);
        let mut counts: Vec<usize> = by_thread.values().copied().collect();
        counts.sort();
        assert_eq!(counts.iter().sum::<usize>(), 32);
        // Balanced within the slack placement allows (one task and an eighth).
        assert_eq!(counts.len(), 2, "same container: {same}: {counts:?}");
        assert!(counts[0] >= 14, "same container: {same}: {counts:?}");
    }
}

#[test]
fn a_helper_stays_beside_its_spawner_while_workers_are_balanced() {
    let (_registry, rt, c) = two_workers();
    let c2 = c.clone();
    let (here, by_spawn, by_spawn_in) = rt
        .block_on(rt.spawn_in(&c, async move {
            let here = std::thread::current().id();
            let a = rescon_rt::spawn(async { std::thread::current().id() })
                .await
                .unwrap();
            let b = rescon_rt::spawn_in(&c2, async { std::thread::current().id() })
                .await
                .unwrap();
            (here, a, b)
        }))
        .unwrap();
    assert_eq!(by_spawn, here);
    assert_eq!(by_spawn_in, here);
}
