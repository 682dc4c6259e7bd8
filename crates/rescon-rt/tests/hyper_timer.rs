//! `HyperTimer`: hyper's view of time (`now`, deadlines as `Instant`s) agrees with the runtime's
//! clock, on the monotonic clock (where the clock converts through a kept offset) and on the
//! manual one (where it reads both clocks).

#![cfg(feature = "hyper")]

use hyper::rt::Timer;
use rescon::Registry;
use rescon_rt::{Builder, Clock, HyperTimer, Runtime};
use std::time::{Duration, Instant};

fn runtime(registry: &Registry, clock: Clock) -> Runtime {
    Builder::new(registry)
        .workers(1)
        .clock(clock)
        .build()
        .expect("runtime")
}

fn gap(a: Instant, b: Instant) -> Duration {
    if a > b { a - b } else { b - a }
}

#[test]
fn monotonic_now_and_deadlines_agree_with_real_time() {
    let registry = Registry::new();
    let rt = runtime(&registry, Clock::monotonic());
    let t = HyperTimer::new(rt.handle());
    // `now` is `Instant::now`, up to the offset's measurement (a few microseconds), also
    // after the offset has been kept for a while.
    for _ in 0..3 {
        let (a, n, b) = (Instant::now(), t.now(), Instant::now());
        assert!(
            gap(n, a).max(gap(n, b)) < Duration::from_millis(2),
            "timer now {n:?} vs Instant::now {a:?}..{b:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A deadline fires when real time reaches it, not before.
    let start = Instant::now();
    rt.block_on(t.sleep_until(t.now() + Duration::from_millis(40)));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(39),
        "fired after {took:?}, deadline 40 ms"
    );
    assert!(took < Duration::from_secs(5), "fired after {took:?}");
    // Reset to an earlier deadline: it fires at the new one.
    let mut s = t.sleep_until(t.now() + Duration::from_secs(30));
    let start = Instant::now();
    t.reset(&mut s, t.now() + Duration::from_millis(30));
    rt.block_on(s);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(29),
        "reset fired after {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "reset fired after {took:?}, not at 30 ms"
    );
}

#[test]
fn manual_deadlines_are_in_the_manual_clock() {
    let registry = Registry::new();
    let clock = Clock::manual();
    let rt = runtime(&registry, clock.clone());
    let t = HyperTimer::new(rt.handle());
    let t0 = clock.now_ns();
    // Nothing else to do: the runtime jumps the manual clock to the deadline.
    rt.block_on(t.sleep_until(t.now() + Duration::from_secs(7)));
    let moved = clock.now_ns() - t0;
    // The conversion reads the real clock twice; allow what passes between the two reads.
    assert!(
        moved.abs_diff(7_000_000_000) < 50_000_000,
        "the manual clock moved {moved} ns for a 7 s deadline"
    );
}
