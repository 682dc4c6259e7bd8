//! Readiness of one socket, shared by the socket and the event loop of the worker whose epoll
//! instance it is registered with.

use atomic_waker::AtomicWaker;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::task::Waker;

pub(crate) const READABLE: usize = 1;
pub(crate) const WRITABLE: usize = 2;
pub(crate) const READ_CLOSED: usize = 4;
pub(crate) const WRITE_CLOSED: usize = 8;
pub(crate) const ERROR: usize = 16;
pub(crate) const SHUTDOWN: usize = 32;
pub(crate) const TICK_ONE: usize = 1 << 8;
pub(crate) const TICK_MASK: usize = !(TICK_ONE - 1);

/// The direction an operation waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

impl Dir {
    pub(crate) fn mask(self) -> usize {
        match self {
            Dir::Read => READABLE | READ_CLOSED | ERROR,
            Dir::Write => WRITABLE | WRITE_CLOSED | ERROR,
        }
    }

    /// The bit a `WouldBlock` clears (closed and error stay set).
    pub(crate) fn clearable(self) -> usize {
        match self {
            Dir::Read => READABLE,
            Dir::Write => WRITABLE,
        }
    }
}

/// One socket's readiness, shared by the socket and its worker's event loop.
#[derive(Debug)]
pub(crate) struct IoState {
    pub(crate) readiness: AtomicUsize,
    pub(crate) reader: AtomicWaker,
    pub(crate) writer: AtomicWaker,
}

impl IoState {
    /// Records an event and takes the wakers it concerns.
    pub(crate) fn set_ready(&self, ev: &mio::event::Event, out: &mut Vec<Waker>) {
        let mut bits = 0;
        if ev.is_readable() {
            bits |= READABLE;
        }
        if ev.is_writable() {
            bits |= WRITABLE;
        }
        if ev.is_read_closed() {
            bits |= READ_CLOSED;
        }
        if ev.is_write_closed() {
            bits |= WRITE_CLOSED;
        }
        if ev.is_error() {
            bits |= ERROR;
        }
        self.add(bits, out);
    }

    pub(crate) fn add(&self, bits: usize, out: &mut Vec<Waker>) {
        // A new tick with every event, so a `clear` based on an older observation is ignored.
        let _ = self.readiness.fetch_update(AcqRel, Acquire, |cur| {
            Some((cur | bits).wrapping_add(TICK_ONE))
        });
        if bits & Dir::Read.mask() != 0 {
            out.extend(self.reader.take());
        }
        if bits & Dir::Write.mask() != 0 {
            out.extend(self.writer.take());
        }
    }

    /// Marks the socket's runtime as gone and takes its wakers.
    pub(crate) fn shut_down(&self, out: &mut Vec<Waker>) {
        self.readiness.fetch_or(SHUTDOWN, AcqRel);
        out.extend(self.reader.take());
        out.extend(self.writer.take());
    }

    pub(crate) fn waker(&self, dir: Dir) -> &AtomicWaker {
        match dir {
            Dir::Read => &self.reader,
            Dir::Write => &self.writer,
        }
    }
}
