//! The allocator's part in what an idle connection costs: its setting, and an exact count of
//! the heap by size class.
//!
//! # Giving freed memory back
//!
//! The server binaries run on mimalloc. When connections go idle, the memory they used while
//! busy (hyper's buffers, their containers) is freed, but mimalloc (v3) gives freed pages back
//! to the system only after a purge delay of 1 s, and only when the thread later calls into
//! the allocator: a server that went idle right after a burst kept the burst's memory
//! resident (`rescon-bench memory`: 15.7 KB per parked connection, against 2.8 KB with
//! `MIMALLOC_PURGE_DELAY=0`). [`release_freed_memory_at_once`] sets that delay to zero from
//! the program, as nginx's worker frees a connection's buffers to the system's malloc, so an
//! operator need not know the variable. A page the allocator keeps per size class for reuse
//! is not purged, so the steady request path (which reuses its pages) makes no extra system
//! calls; `paper --only 1` measures it.
//!
//! # Counting the heap
//!
//! Resident memory says what a connection costs, not what it is made of, and heaptrack does
//! not see mimalloc's allocations. [`Counting`] is a global allocator over another (the
//! binaries': `Counting::mimalloc()`) that, once [`count_heap_from_env`] has switched it on,
//! counts the live heap exactly: bytes and blocks by requested size (16-byte classes up to
//! 4 KiB, powers of two above), and the bytes the allocator rounds them up to. Switched off
//! (the default) it adds one relaxed load and a branch to each call. With
//! `RESCON_HEAP_STATS=FILE` in the environment, the binaries count from their start and
//! write a [`HeapStats`] snapshot, as JSON, to FILE on each `SIGUSR2`; `rescon-bench memory`
//! uses it to break a parked connection's cost down (see its module docs for the figures).
//!
//! # What an idle connection keeps, apart
//!
//! A parked connection keeps three small blocks: its task, its socket's readiness state and
//! its timer's shared state. They are made while other connections are served, among the
//! short-lived blocks of their size classes that serving makes (a kept-alive connection
//! makes about 4 of the readiness state's class and 6 of the timer's), and a long-lived block
//! left among freed ones keeps its page resident. [`idle_state`] runs a closure with its
//! allocations in a mimalloc heap of their own ([`keep_idle_state_apart`] makes it), which
//! holds only such blocks, densely. The connection stage makes a connection's lasting blocks
//! in it (`server::accept`, `server::conn::Timer`). A block is freed the same way whichever
//! heap it came from. Its share is small beside that of huge pages (see
//! [`release_freed_memory_at_once`]): with huge pages off, `rescon-bench memory` measured
//! 895 bytes resident per idle kept-alive connection before it (and the smaller stop table)
//! and 812 after, in one run each.

#![allow(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::{c_int, c_long, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering::Relaxed};

// The library does not set the global allocator (its tests run on the system's); it links
// mimalloc so that the option below is the binaries' allocator's.
extern crate mimalloc;

// mimalloc's `mi_option_t` (include/mimalloc.h): `mi_option_purge_delay` is 15 in both v2 and
// v3. libmimalloc-sys declares these functions only with its `extended` feature, which needs
// a crate (cty) this workspace does not otherwise use.
const MI_OPTION_PURGE_DELAY: c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_good_size(size: usize) -> usize;
    fn mi_process_info(
        elapsed_msecs: *mut usize,
        user_msecs: *mut usize,
        system_msecs: *mut usize,
        current_rss: *mut usize,
        peak_rss: *mut usize,
        current_commit: *mut usize,
        peak_commit: *mut usize,
        page_faults: *mut usize,
    );
    // First-class heaps (v3: usable and freed from any thread; `mi_free` frees their blocks).
    fn mi_heap_new() -> *mut c_void;
    fn mi_heap_malloc_aligned(heap: *mut c_void, size: usize, align: usize) -> *mut c_void;
    fn mi_heap_zalloc_aligned(heap: *mut c_void, size: usize, align: usize) -> *mut c_void;
    fn mi_heap_realloc_aligned(
        heap: *mut c_void,
        p: *mut c_void,
        size: usize,
        align: usize,
    ) -> *mut c_void;
    #[cfg(test)]
    fn mi_heap_contains(heap: *const c_void, p: *const c_void) -> bool;
}

/// The heap of idle connections' lasting blocks, once [`keep_idle_state_apart`] made it.
static IDLE_HEAP: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// This thread runs [`idle_state`]'s closure: allocations go to [`IDLE_HEAP`].
    static IN_IDLE_STATE: Cell<bool> = const { Cell::new(false) };
}

/// Makes the heap [`idle_state`] allocates in (see the [module docs](self)). Call it before
/// serving, from a binary whose global allocator is [`Counting::mimalloc`]; without it (the
/// library's tests, on the system's allocator) [`idle_state`] changes nothing.
pub fn keep_idle_state_apart() {
    if !IDLE_HEAP.load(Relaxed).is_null() {
        return;
    }
    // SAFETY: makes an empty heap; mimalloc allocates its record from its own main heap, not
    // through the global allocator.
    let heap = unsafe { mi_heap_new() };
    IDLE_HEAP.store(heap, Relaxed);
}

/// Runs `f` with its allocations (by the global allocator, on this thread) in the heap of
/// idle connections' lasting blocks: for what a connection keeps while parked, made once
/// (its task, its socket's readiness, its timer). Nothing else should be made in it: a
/// short-lived block there leaves a hole among the lasting ones.
pub fn idle_state<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_IDLE_STATE.set(self.0);
        }
    }
    let _restore = Restore(IN_IDLE_STATE.replace(true));
    f()
}

/// The heap this thread allocates in now, if not the default one.
#[inline]
fn idle_heap() -> Option<*mut c_void> {
    if !IN_IDLE_STATE.get() {
        return None;
    }
    let heap = IDLE_HEAP.load(Relaxed);
    (!heap.is_null()).then_some(heap)
}

/// Makes mimalloc give freed pages back to the system as soon as they are free, unless
/// `MIMALLOC_PURGE_DELAY` is set in the environment (an operator's choice wins), and turns
/// transparent huge pages off for the process, unless `MIMALLOC_ALLOW_THP` is set. Call it
/// before serving, from a binary whose global allocator is mimalloc.
///
/// Huge pages: mimalloc asks for them on its arenas (`madvise(MADV_HUGEPAGE)`, which the
/// usual `madvise` setting of `/sys/kernel/mm/transparent_hugepage/enabled` grants), and a
/// 2 MiB page stays resident while any of its 4 KiB is used: the free pages that purging
/// gives back inside it are not given back. `rescon-bench memory` measured 1,569 bytes
/// resident per idle kept-alive connection with them and 812 without, for 634 bytes of live
/// heap. The setting (`prctl(PR_SET_THP_DISABLE)`) is the whole process's and its
/// children's (CGI and FastCGI processes inherit it), as nginx's heap, on the C library's
/// allocator, gets no huge pages under `madvise` either.
pub fn release_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
        && let Err(e) = rustix::thread::disable_transparent_huge_pages(true)
    {
        tracing::debug!(error = %e, "transparent huge pages stay on");
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set stores an integer in mimalloc's option table; the option is a
    // valid index (see above), and the value is in its domain (milliseconds; 0 = at once).
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// Size classes: 16 bytes wide up to 4 KiB (0, 1..=16, ..., 4081..=4096), then one per power
/// of two up to 2^64.
const SMALL_MAX: usize = 4096;
const SMALL_CLASSES: usize = SMALL_MAX / 16 + 1;
const CLASSES: usize = SMALL_CLASSES + (64 - 12);

fn class_of(size: usize) -> usize {
    if size <= SMALL_MAX {
        size.div_ceil(16)
    } else {
        // The smallest k with size <= 2^k: 13 for 4097..=8192.
        let k = (usize::BITS - (size - 1).leading_zeros()) as usize;
        SMALL_CLASSES + (k - 13)
    }
}

/// The largest size in class `i`.
fn class_max(i: usize) -> u64 {
    if i < SMALL_CLASSES {
        (i * 16) as u64
    } else {
        1u64.checked_shl((i - SMALL_CLASSES + 13) as u32)
            .unwrap_or(u64::MAX)
    }
}

/// The counts [`Counting`] keeps, shared by every instance (there is one global allocator).
struct Counts {
    on: AtomicBool,
    /// Live blocks and their requested bytes, by class (signed: a block allocated before
    /// counting began may be freed after).
    blocks: [AtomicI64; CLASSES],
    bytes: [AtomicI64; CLASSES],
    /// Blocks allocated since counting began, by class.
    made_in: [AtomicU64; CLASSES],
    /// Live bytes as the allocator rounds them up (its size classes).
    usable: AtomicI64,
    /// Allocations made since counting began.
    made: AtomicU64,
}

static COUNTS: Counts = Counts {
    on: AtomicBool::new(false),
    blocks: [const { AtomicI64::new(0) }; CLASSES],
    bytes: [const { AtomicI64::new(0) }; CLASSES],
    made_in: [const { AtomicU64::new(0) }; CLASSES],
    usable: AtomicI64::new(0),
    made: AtomicU64::new(0),
};

impl Counts {
    #[inline]
    fn add(&self, size: usize, usable: usize) {
        let c = class_of(size);
        self.blocks[c].fetch_add(1, Relaxed);
        self.bytes[c].fetch_add(size as i64, Relaxed);
        self.made_in[c].fetch_add(1, Relaxed);
        self.usable.fetch_add(usable as i64, Relaxed);
        self.made.fetch_add(1, Relaxed);
    }

    #[inline]
    fn sub(&self, size: usize, usable: usize) {
        let c = class_of(size);
        self.blocks[c].fetch_sub(1, Relaxed);
        self.bytes[c].fetch_sub(size as i64, Relaxed);
        self.usable.fetch_sub(usable as i64, Relaxed);
    }
}

/// A global allocator over `A` that counts the live heap while counting is on (see the
/// [module docs](self)).
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: rescon_httpd::alloc::Counting<mimalloc::MiMalloc> =
///     rescon_httpd::alloc::Counting::mimalloc();
/// ```
#[derive(Debug)]
pub struct Counting<A> {
    inner: A,
    /// What `A` makes of a request of this many bytes.
    good_size: fn(usize) -> usize,
    /// `A` is mimalloc: [`idle_state`]'s allocations go to its heap.
    heaps: bool,
}

fn mimalloc_good_size(size: usize) -> usize {
    // SAFETY: a pure function of its argument in mimalloc.
    unsafe { mi_good_size(size) }
}

impl Counting<mimalloc::MiMalloc> {
    /// Over mimalloc, with its size classes.
    pub const fn mimalloc() -> Self {
        Counting {
            inner: mimalloc::MiMalloc,
            good_size: mimalloc_good_size,
            heaps: true,
        }
    }
}

impl Counting<System> {
    /// Over the system's allocator (its rounding is not known: requested sizes).
    pub const fn system() -> Self {
        Counting {
            inner: System,
            good_size: std::convert::identity,
            heaps: false,
        }
    }
}

impl<A> Counting<A> {
    /// The first-class heap to allocate in instead of `inner`, inside [`idle_state`].
    #[inline]
    fn heap(&self) -> Option<*mut c_void> {
        if self.heaps { idle_heap() } else { None }
    }
}

// SAFETY: every call is passed to `inner` unchanged, with the same layout and pointer, and its
// result returned unchanged, except inside `idle_state` over mimalloc, where an allocation is
// made by mimalloc in another of its heaps with the same size and alignment (mimalloc's
// `mi_free`, which `inner.dealloc` calls, and its `realloc` take blocks of any heap). The
// counting beside it touches only static atomics and a const thread-local without a
// destructor, and never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = match self.heap() {
            // SAFETY: a live heap; a non-zero size (the caller's contract) and a power of two.
            Some(h) => unsafe { mi_heap_malloc_aligned(h, layout.size(), layout.align()).cast() },
            // SAFETY: the caller's contract for `alloc`, passed on.
            None => unsafe { self.inner.alloc(layout) },
        };
        if COUNTS.on.load(Relaxed) && !p.is_null() {
            COUNTS.add(layout.size(), (self.good_size)(layout.size()));
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = match self.heap() {
            // SAFETY: as in `alloc`.
            Some(h) => unsafe { mi_heap_zalloc_aligned(h, layout.size(), layout.align()).cast() },
            // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
            None => unsafe { self.inner.alloc_zeroed(layout) },
        };
        if COUNTS.on.load(Relaxed) && !p.is_null() {
            COUNTS.add(layout.size(), (self.good_size)(layout.size()));
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTS.on.load(Relaxed) {
            COUNTS.sub(layout.size(), (self.good_size)(layout.size()));
        }
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = match self.heap() {
            // SAFETY: `ptr` is a live mimalloc block (of any of its heaps) with `layout`'s
            // alignment; the new size is non-zero (the caller's contract).
            Some(h) => unsafe {
                mi_heap_realloc_aligned(h, ptr.cast(), new_size, layout.align()).cast()
            },
            // SAFETY: the caller's contract for `realloc`, passed on.
            None => unsafe { self.inner.realloc(ptr, layout, new_size) },
        };
        if COUNTS.on.load(Relaxed) && !p.is_null() {
            COUNTS.sub(layout.size(), (self.good_size)(layout.size()));
            COUNTS.add(new_size, (self.good_size)(new_size));
        }
        p
    }
}

/// Switches counting on (it stays on). What was allocated before is not counted, and its
/// frees make the counts of its classes go below zero: switch it on first thing in `main`.
pub fn start_counting() {
    COUNTS.on.store(true, Relaxed);
}

/// The live heap in one size class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassStats {
    /// The largest requested size in the class (classes are 16 bytes wide up to 4 KiB, then
    /// powers of two).
    pub size_up_to: u64,
    /// Live blocks.
    pub blocks: i64,
    /// Their requested bytes.
    pub bytes: i64,
    /// Blocks allocated in the class since counting began (live or freed since): with
    /// `blocks`, whether short-lived blocks share the class's pages with long-lived ones.
    pub made: u64,
}

/// A snapshot of the counted heap, and of the allocator's view of the process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapStats {
    /// Allocations made since counting began (0: the global allocator is not [`Counting`],
    /// or counting is off).
    pub allocations: u64,
    /// Live requested bytes and blocks.
    pub live_bytes: i64,
    /// Live blocks.
    pub live_blocks: i64,
    /// Live bytes as the allocator rounds them up to its size classes.
    pub usable_bytes: i64,
    /// Memory mimalloc has committed (its pages, in use or not yet purged, and its own
    /// metadata), and the resident set as it reads it.
    pub committed_bytes: u64,
    /// The process's resident set, as mimalloc reads it.
    pub rss_bytes: u64,
    /// The classes with live blocks (or a count below zero) or blocks made, smallest first.
    pub classes: Vec<ClassStats>,
}

impl HeapStats {
    /// Reads the counts now (consistent per class; classes read one after the other).
    pub fn now() -> HeapStats {
        let mut s = HeapStats {
            allocations: COUNTS.made.load(Relaxed),
            usable_bytes: COUNTS.usable.load(Relaxed),
            ..HeapStats::default()
        };
        for i in 0..CLASSES {
            let (blocks, bytes, made) = (
                COUNTS.blocks[i].load(Relaxed),
                COUNTS.bytes[i].load(Relaxed),
                COUNTS.made_in[i].load(Relaxed),
            );
            if blocks != 0 || bytes != 0 || made != 0 {
                s.live_blocks += blocks;
                s.live_bytes += bytes;
                s.classes.push(ClassStats {
                    size_up_to: class_max(i),
                    blocks,
                    bytes,
                    made,
                });
            }
        }
        let mut v = [0usize; 8];
        let [a, b, c, rss, e, commit, g, h] = &mut v;
        // SAFETY: mimalloc writes one `size_t` through each pointer, all valid and distinct.
        unsafe { mi_process_info(a, b, c, rss, e, commit, g, h) };
        s.rss_bytes = v[3] as u64;
        s.committed_bytes = v[5] as u64;
        s
    }

    /// What changed from `before` to `self`, class by class (classes whose count did not
    /// change left out); the process figures are differences too.
    pub fn since(&self, before: &HeapStats) -> HeapStats {
        let mut classes: Vec<ClassStats> = Vec::new();
        for c in &self.classes {
            let b = before.classes.iter().find(|b| b.size_up_to == c.size_up_to);
            let (blocks, bytes, made) = b.map_or((0, 0, 0), |b| (b.blocks, b.bytes, b.made));
            classes.push(ClassStats {
                size_up_to: c.size_up_to,
                blocks: c.blocks - blocks,
                bytes: c.bytes - bytes,
                made: c.made.wrapping_sub(made),
            });
        }
        for b in &before.classes {
            if !self.classes.iter().any(|c| c.size_up_to == b.size_up_to) {
                classes.push(ClassStats {
                    size_up_to: b.size_up_to,
                    blocks: -b.blocks,
                    bytes: -b.bytes,
                    made: 0,
                });
            }
        }
        classes.retain(|c| c.blocks != 0 || c.bytes != 0 || c.made != 0);
        classes.sort_by_key(|c| c.size_up_to);
        HeapStats {
            allocations: self.allocations.wrapping_sub(before.allocations),
            live_bytes: self.live_bytes - before.live_bytes,
            live_blocks: self.live_blocks - before.live_blocks,
            usable_bytes: self.usable_bytes - before.usable_bytes,
            committed_bytes: self.committed_bytes.wrapping_sub(before.committed_bytes),
            rss_bytes: self.rss_bytes.wrapping_sub(before.rss_bytes),
            classes,
        }
    }
}

/// The environment variable naming the file [`count_heap_from_env`] writes snapshots to.
pub const HEAP_STATS_ENV: &str = "RESCON_HEAP_STATS";

/// With `RESCON_HEAP_STATS=FILE` in the environment: switches counting on and starts a
/// thread that writes a [`HeapStats`] snapshot to FILE (as JSON, whole: written aside and
/// renamed) on each `SIGUSR2`. Call it first thing in `main` of a binary whose global
/// allocator is [`Counting`]. Returns the file, or `None` when the variable is not set.
pub fn count_heap_from_env() -> std::io::Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os(HEAP_STATS_ENV).map(PathBuf::from) else {
        return Ok(None);
    };
    start_counting();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR2])?;
    let out = path.clone();
    std::thread::Builder::new()
        .name("heap-stats".into())
        .spawn(move || {
            for _ in signals.forever() {
                if let Err(e) = write_snapshot(&out) {
                    tracing::warn!(file = %out.display(), error = %e, "writing the heap snapshot failed");
                }
            }
        })?;
    Ok(Some(path))
}

fn write_snapshot(path: &std::path::Path) -> std::io::Result<()> {
    let s = HeapStats::now();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, serde_json::to_vec(&s)?)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_state_is_made_in_its_own_heap_and_freed_as_any_block() {
        // The tests' global allocator is the system's; this one is called directly. Every
        // block below is made with a non-zero layout and freed once, with that layout.
        let a = Counting::mimalloc();
        let layout = Layout::from_size_align(72, 8).unwrap();
        let wide = Layout::from_size_align(64, 64).unwrap();
        // SAFETY: a non-zero layout.
        let alloc = |l: Layout| unsafe { a.alloc(l) };
        // SAFETY: pointers of live mimalloc blocks (or null: false).
        let contains = |h: *mut c_void, p: *mut u8| unsafe { mi_heap_contains(h, p.cast()) };
        // Before the heap is made, `idle_state` changes nothing.
        let early = idle_state(|| alloc(layout));
        keep_idle_state_apart();
        let heap = IDLE_HEAP.load(Relaxed);
        assert!(!heap.is_null());
        let kept = idle_state(|| alloc(layout));
        // SAFETY: a non-zero layout.
        let zeroed = idle_state(|| unsafe { a.alloc_zeroed(wide) });
        let other = alloc(layout);
        assert!(
            contains(heap, kept) && contains(heap, zeroed),
            "made inside idle_state: in its heap"
        );
        assert!(
            !contains(heap, early) && !contains(heap, other),
            "made outside: in the thread's heap"
        );
        assert_eq!(zeroed as usize % 64, 0, "aligned as asked");
        // SAFETY: a live 64-byte block.
        let zeros = unsafe { std::slice::from_raw_parts(zeroed, 64) };
        assert!(zeros.iter().all(|&b| b == 0));
        // A block grown inside `idle_state` moves to (or stays in) its heap, keeping its bytes.
        // SAFETY: `kept` is live, 72 bytes.
        unsafe { kept.write_bytes(7, 72) };
        // SAFETY: `kept` is live, made with `layout`; the new size is non-zero.
        let grown = idle_state(|| unsafe { a.realloc(kept, layout, 4000) });
        assert!(contains(heap, grown));
        // SAFETY: a live block of at least 72 bytes.
        let bytes = unsafe { std::slice::from_raw_parts(grown, 72) };
        assert!(bytes.iter().all(|&b| b == 7));
        // SAFETY: live blocks, each freed once with the layout it has.
        unsafe {
            a.dealloc(grown, Layout::from_size_align(4000, 8).unwrap());
            a.dealloc(zeroed, wide);
            a.dealloc(early, layout);
            a.dealloc(other, layout);
        }
        assert!(!IN_IDLE_STATE.get(), "the thread's flag is restored");
    }

    #[test]
    fn classes_cover_every_size_once_and_in_order() {
        assert_eq!(class_of(0), 0);
        assert_eq!(class_of(1), 1);
        assert_eq!(class_of(16), 1);
        assert_eq!(class_of(17), 2);
        assert_eq!(class_of(4096), SMALL_CLASSES - 1);
        assert_eq!(class_of(4097), SMALL_CLASSES);
        assert_eq!(class_of(8192), SMALL_CLASSES);
        assert_eq!(class_of(8193), SMALL_CLASSES + 1);
        assert_eq!(class_of(usize::MAX), CLASSES - 1);
        for size in [0, 1, 15, 16, 17, 640, 4095, 4096, 4097, 8192, 8193, 1 << 20] {
            let c = class_of(size);
            assert!(size as u64 <= class_max(c), "{size} above its class");
            assert!(
                c == 0 || size as u64 > class_max(c - 1),
                "{size} fits lower"
            );
        }
    }

    #[test]
    fn a_difference_names_the_classes_that_moved() {
        let class = |size_up_to, blocks, bytes, made| ClassStats {
            size_up_to,
            blocks,
            bytes,
            made,
        };
        let before = HeapStats {
            allocations: 10,
            live_bytes: 100,
            live_blocks: 3,
            usable_bytes: 112,
            classes: vec![class(16, 1, 10, 1), class(48, 2, 90, 5)],
            ..HeapStats::default()
        };
        let after = HeapStats {
            allocations: 25,
            live_bytes: 740,
            live_blocks: 4,
            usable_bytes: 752,
            classes: vec![class(48, 2, 90, 7), class(640, 2, 650, 2)],
            ..HeapStats::default()
        };
        let d = after.since(&before);
        assert_eq!(
            (d.allocations, d.live_bytes, d.live_blocks, d.usable_bytes),
            (15, 640, 1, 640)
        );
        assert_eq!(
            d.classes,
            vec![
                class(16, -1, -10, 0),
                class(48, 0, 0, 2),
                class(640, 2, 650, 2)
            ]
        );
    }

    #[test]
    fn the_wrapper_counts_what_is_live() {
        // Only this test calls a `Counting` (the test binary's allocator is the system's),
        // so the differences are its own.
        start_counting();
        let a = Counting::system();
        let before = HeapStats::now();
        let layout = Layout::from_size_align(600, 8).unwrap();
        // SAFETY: a non-zero layout; each block is freed once, with its layout.
        let d = unsafe {
            let p: Vec<*mut u8> = (0..3).map(|_| a.alloc(layout)).collect();
            assert!(p.iter().all(|p| !p.is_null()));
            a.dealloc(p[0], layout);
            let q = a.realloc(p[1], layout, 5000);
            let d = HeapStats::now().since(&before);
            a.dealloc(q, Layout::from_size_align(5000, 8).unwrap());
            a.dealloc(p[2], layout);
            d
        };
        assert_eq!((d.allocations, d.live_blocks, d.live_bytes), (4, 2, 5600));
        assert_eq!(
            d.classes,
            vec![
                ClassStats {
                    size_up_to: 608,
                    blocks: 1,
                    bytes: 600,
                    made: 3,
                },
                ClassStats {
                    size_up_to: 8192,
                    blocks: 1,
                    bytes: 5000,
                    made: 1,
                },
            ]
        );
        let after = HeapStats::now().since(&before);
        assert_eq!((after.live_blocks, after.live_bytes), (0, 0));
    }
}
