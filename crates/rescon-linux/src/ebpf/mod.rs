//! Extended BPF without a C toolchain: an assembler, the kernel's type information, and the
//! `bpf(2)` commands, shared by the edge filter and the black-hole counters of
//! [`listen`](crate::listen) and by [`netacct`](crate::netacct).
//!
//! The programs are assembled by hand ([`asm`]), as the classic BPF steering programs of
//! `listen::bpf` are: each is 10 to 80 instructions, and some are generated at run time
//! from a configuration (the edge filter's port and address). Compiling C with clang and
//! loading it with a loader crate (aya, libbpf-rs) would add clang and libbpf to the
//! build or a committed object file to the tree, for programs this small. What a loader
//! would give us, the kernel's field offsets and function ids (CO-RE), is in [`btf`]: a
//! parser of `/sys/kernel/btf/vmlinux` of about 200 lines, tested on a literal blob. The
//! kernel's verifier checks every program at load; the kernel tests load each one.
//!
//! Everything here is crate-private: the modules that use it expose what their programs do,
//! not how.

#![deny(unsafe_code)]

pub(crate) mod asm;
pub(crate) mod btf;
pub(crate) mod sys;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use sys::{MapSpec, MapType};

/// Parses a CPU list as in `/sys/devices/system/cpu/possible` (`0-3,8-11`): how many CPUs
/// it names up to its highest (per-CPU maps hold one value per possible CPU index).
pub(crate) fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut highest = None;
    for part in text.trim().split(',') {
        let last = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                b
            }
            None => part.parse().ok()?,
        };
        highest = Some(highest.map_or(last, |h: usize| h.max(last)));
    }
    highest.map(|h| h + 1)
}

/// A map: its descriptor and shape.
#[derive(Debug)]
pub(crate) struct Map {
    fd: OwnedFd,
    kind: MapType,
    key: usize,
    value: usize,
    /// Values user space sees per key: the possible CPUs for per-CPU maps, else 1.
    copies: usize,
}

impl Map {
    /// Creates a map. Per-CPU maps are read as one value per possible CPU.
    pub(crate) fn create(spec: &MapSpec<'_>) -> io::Result<Map> {
        // The raw error, so that callers can tell EPERM (no privilege) apart; they say
        // which map.
        let fd = sys::map_create(spec)?;
        let copies = if spec.kind.per_cpu() {
            sys::possible_cpus()?
        } else {
            1
        };
        Ok(Map {
            fd,
            kind: spec.kind,
            key: spec.key as usize,
            value: spec.value as usize,
            copies,
        })
    }

    /// Bytes of one value as user space reads it (all CPUs' copies, each 8-aligned).
    pub(crate) fn value_buf_len(&self) -> usize {
        if self.kind.per_cpu() {
            self.value.next_multiple_of(8) * self.copies
        } else {
            self.value
        }
    }

    /// Looks `key` up; `None` if absent.
    pub(crate) fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let mut v = vec![0u8; self.value_buf_len()];
        Ok(sys::map_lookup(self.fd.as_fd(), key, &mut v)?.then_some(v))
    }

    /// Sets `key` (for per-CPU maps `value` holds every CPU's copy).
    pub(crate) fn set(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        sys::map_update(self.fd.as_fd(), key, value, flags)
    }

    /// Deletes `key`; `false` if it was absent.
    pub(crate) fn delete(&self, key: &[u8]) -> io::Result<bool> {
        sys::map_delete(self.fd.as_fd(), key)
    }

    /// Every entry of a hash map, keys and values laid end to end (values as [`get`]
    /// returns them); with `take`, the entries are deleted as they are read.
    ///
    /// [`get`]: Self::get
    pub(crate) fn read_all(&self, take: bool) -> io::Result<Entries> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let vlen = self.value_buf_len();
        let n = sys::map_read_all(
            self.fd.as_fd(),
            self.key,
            vlen,
            take,
            &mut keys,
            &mut values,
        )?;
        Ok(Entries {
            keys,
            values,
            n,
            klen: self.key,
            vlen,
        })
    }

    /// Sums of the value's 64-bit words over every CPU's copy (a per-CPU value read whole).
    pub(crate) fn sum_u64s(&self, value: &[u8]) -> Vec<u64> {
        sum_words(value, self.value, self.copies)
    }
}

/// Entries read by [`Map::read_all`].
#[derive(Debug)]
pub(crate) struct Entries {
    keys: Vec<u8>,
    values: Vec<u8>,
    n: usize,
    klen: usize,
    vlen: usize,
}

impl Entries {
    /// (key, value) pairs.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        (0..self.n).map(|i| {
            (
                &self.keys[i * self.klen..(i + 1) * self.klen],
                &self.values[i * self.vlen..(i + 1) * self.vlen],
            )
        })
    }
}

/// Sums the 64-bit words of `copies` values of `size` bytes, each padded to 8 bytes.
pub(crate) fn sum_words(buf: &[u8], size: usize, copies: usize) -> Vec<u64> {
    let stride = size.next_multiple_of(8);
    let mut out = vec![0u64; size / 8];
    for c in 0..copies {
        for (i, w) in out.iter_mut().enumerate() {
            let at = c * stride + 8 * i;
            if let Some(b) = buf.get(at..at + 8) {
                *w = w.wrapping_add(u64::from_ne_bytes(b.try_into().expect("8 bytes")));
            }
        }
    }
    out
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(12));
        assert_eq!(parse_cpu_list("0,2"), Some(3));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn per_cpu_words_add_up() {
        // Two CPUs, a 16-byte value: words (1, 2) and (10, 20).
        let buf: Vec<u8> = [1u64, 2, 10, 20]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        assert_eq!(sum_words(&buf, 16, 2), vec![11, 22]);
        assert_eq!(sum_words(&buf, 16, 1), vec![1, 2]);
    }
}
