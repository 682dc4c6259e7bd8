//! The allocator's part in what an idle connection costs.
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

#![allow(unsafe_code)]

// The library does not set the global allocator (its tests run on the system's); it links
// mimalloc so that the option below is the binaries' allocator's.
extern crate mimalloc;

use std::ffi::{c_int, c_long};

// mimalloc's `mi_option_t` (include/mimalloc.h): `mi_option_purge_delay` is 15 in both v2 and
// v3. libmimalloc-sys declares `mi_option_set` only with its `extended` feature, which needs a
// crate (cty) this workspace does not otherwise use.
const MI_OPTION_PURGE_DELAY: c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
}

/// Makes mimalloc give freed pages back to the system as soon as they are free, unless
/// `MIMALLOC_PURGE_DELAY` is set in the environment (an operator's choice wins). Call it
/// before serving, from a binary whose global allocator is mimalloc.
pub fn release_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set stores an integer in mimalloc's option table; the option is a
    // valid index (see above), and the value is in its domain (milliseconds; 0 = at once).
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}
