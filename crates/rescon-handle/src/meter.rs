//! The page of counters: charging without a system call.
//!
//! [`Handle::meter`](crate::Handle::meter) maps a page shared with the owner (a memfd sealed
//! against shrinking and growing, one per handle). The holder adds to its counters with one
//! relaxed atomic add (a few nanoseconds, against about a microsecond for a
//! [`Handle::charge`](crate::Handle::charge) message); the owner reads them when it serves the
//! handle (every call, every message, its periodic harvest) and when the handle is released,
//! and adds what grew since its last read to the container's usage. Nothing charged before the
//! last descriptor closes is lost: the last read happens after the close.
//!
//! The page belongs to one handle: whoever holds that handle's descriptor may ask for it, and
//! a page charges no other container. Counters only grow: the owner ignores a counter that
//! went down (a holder can only under-charge itself, as it could by not charging at all).
//!
//! ```text
//! offset  0  magic "RCMETER1"
//! offset  8  container id (u64)
//! offset 64  cpu_ns, bytes_in, bytes_out, requests (u64 each, atomics)
//! ```

use crate::error::{Error, ErrorKind};
use crate::sys::{self, Mapping};
use crate::wire::Charge;
use rescon::ContainerId;
use rustix::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;

const MAGIC: [u8; 8] = *b"RCMETER1";
const OFF_ID: usize = 8;
const OFF_CPU: usize = 64;
const OFF_BYTES_IN: usize = 72;
const OFF_BYTES_OUT: usize = 80;
const OFF_REQUESTS: usize = 88;

/// A handle's page of counters, mapped in the holder: charging is an atomic add.
///
/// ```no_run
/// # fn main() -> Result<(), rescon_handle::Error> {
/// let handle = rescon_handle::Handle::from_env()?.expect("started with a handle");
/// let meter = handle.meter()?;
/// meter.add_requests(1);
/// meter.add_bytes_out(1500);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Meter {
    map: Mapping,
    id: ContainerId,
}

impl Meter {
    /// Maps a page received from the owner, after checking that it is one.
    pub(crate) fn from_fd(fd: OwnedFd) -> Result<Meter, Error> {
        if !sys::is_sealed_page(fd.as_fd()) {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the owner sent a meter that is not a sealed page",
            ));
        }
        let map = Mapping::map(fd.as_fd(), true).map_err(|e| Error::io("map the meter", e))?;
        if map.atomic(0).load(Relaxed) != u64::from_le_bytes(MAGIC) {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the owner sent a meter without its magic",
            ));
        }
        let id = ContainerId::from_raw(map.atomic(OFF_ID).load(Relaxed))
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "meter for container 0"))?;
        Ok(Meter { map, id })
    }

    /// The container charged.
    pub fn container_id(&self) -> ContainerId {
        self.id
    }

    /// Adds CPU time, nanoseconds.
    #[inline]
    pub fn add_cpu_ns(&self, n: u64) {
        self.map.atomic(OFF_CPU).fetch_add(n, Relaxed);
    }

    /// Adds bytes received.
    #[inline]
    pub fn add_bytes_in(&self, n: u64) {
        self.map.atomic(OFF_BYTES_IN).fetch_add(n, Relaxed);
    }

    /// Adds bytes sent.
    #[inline]
    pub fn add_bytes_out(&self, n: u64) {
        self.map.atomic(OFF_BYTES_OUT).fetch_add(n, Relaxed);
    }

    /// Counts requests.
    #[inline]
    pub fn add_requests(&self, n: u64) {
        self.map.atomic(OFF_REQUESTS).fetch_add(n, Relaxed);
    }

    /// Adds every field of a charge.
    pub fn charge(&self, c: &Charge) {
        for (off, v) in [
            (OFF_CPU, c.cpu_ns),
            (OFF_BYTES_IN, c.bytes_in),
            (OFF_BYTES_OUT, c.bytes_out),
            (OFF_REQUESTS, c.requests),
        ] {
            if v != 0 {
                self.map.atomic(off).fetch_add(v, Relaxed);
            }
        }
    }
}

/// The owner's side of a page: the memfd to hand out, a read-only mapping, and what was
/// already harvested.
#[cfg(feature = "owner")]
#[derive(Debug)]
pub(crate) struct Page {
    fd: OwnedFd,
    map: Mapping,
    seen: [u64; 4],
}

#[cfg(feature = "owner")]
impl Page {
    pub(crate) fn new(id: ContainerId) -> std::io::Result<Page> {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&MAGIC);
        header[8..].copy_from_slice(&id.get().to_le_bytes());
        let fd = sys::new_page(&header)?;
        let map = Mapping::map(fd.as_fd(), false)?;
        Ok(Page {
            fd,
            map,
            seen: [0; 4],
        })
    }

    pub(crate) fn fd(&self) -> rustix::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// What the counters grew by since the last harvest. A counter that went down (written
    /// by a holder that does not follow the rules) yields nothing, and is read from there.
    pub(crate) fn harvest(&mut self) -> Charge {
        let mut d = [0u64; 4];
        for (i, off) in [OFF_CPU, OFF_BYTES_IN, OFF_BYTES_OUT, OFF_REQUESTS]
            .into_iter()
            .enumerate()
        {
            let now = self.map.atomic(off).load(Relaxed);
            d[i] = now.saturating_sub(self.seen[i]);
            self.seen[i] = now;
        }
        Charge {
            cpu_ns: d[0],
            bytes_in: d[1],
            bytes_out: d[2],
            requests: d[3],
        }
    }
}

#[cfg(all(test, feature = "owner"))]
mod tests {
    use super::*;
    use rustix::fd::AsFd;

    #[test]
    fn harvest_reports_growth_once_and_ignores_decrease() {
        let id = ContainerId::from_raw(5).unwrap();
        let mut page = Page::new(id).unwrap();
        let meter = Meter::from_fd(page.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(meter.container_id(), id);
        meter.add_requests(2);
        meter.add_cpu_ns(1000);
        meter.charge(&Charge {
            bytes_out: 10,
            ..Default::default()
        });
        let c = page.harvest();
        assert_eq!(
            (c.requests, c.cpu_ns, c.bytes_out, c.bytes_in),
            (2, 1000, 10, 0)
        );
        assert!(page.harvest().is_empty(), "read once");
        // A holder that writes the counter down charges nothing, and is counted from there.
        meter.map.atomic(OFF_REQUESTS).store(1, Relaxed);
        assert!(page.harvest().is_empty());
        meter.add_requests(3);
        assert_eq!(page.harvest().requests, 3);
    }

    #[test]
    fn refuses_what_is_not_a_page() {
        let (a, _b) = crate::sys::seqpacket_pair().unwrap();
        assert_eq!(Meter::from_fd(a).unwrap_err().kind(), ErrorKind::Protocol);
        let fd = crate::sys::new_page(b"NOTMAGIC").unwrap();
        let e = Meter::from_fd(fd.as_fd().try_clone_to_owned().unwrap()).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
    }
}
