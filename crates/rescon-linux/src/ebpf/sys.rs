//! `bpf(2)`: one helper per command, each with its `// SAFETY:` argument. Everything else in
//! [`ebpf`](super) is safe code.
//!
//! # References
//! - bpf(2); `include/uapi/linux/bpf.h` for the layout of `union bpf_attr`, whose fields each
//!   helper sets at their offsets.

#![allow(unsafe_code)]

use super::asm::Insn;
use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const _: () = assert!(size_of::<Insn>() == 8, "struct bpf_insn");

/// `sizeof(union bpf_attr)` we pass: longer than any field we set. The kernel accepts a union
/// longer than its own if the bytes it does not know are zero, and one shorter than its own.
const ATTR_SIZE: usize = 160;

/// `union bpf_attr`, as bytes: each command sets the fields it uses at their offsets.
struct Attr([u64; ATTR_SIZE / 8]);

impl Attr {
    fn new() -> Attr {
        Attr([0; ATTR_SIZE / 8])
    }

    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        let word = &mut self.0[off / 8];
        let shift = (off % 8) * 8;
        *word = (*word & !(0xffff_ffff << shift)) | (u64::from(v) << shift);
        self
    }

    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        debug_assert_eq!(off % 8, 0);
        self.0[off / 8] = v;
        self
    }

    fn ptr<T: ?Sized>(&mut self, off: usize, p: *const T) -> &mut Self {
        self.u64(off, p.cast::<u8>() as usize as u64)
    }

    fn name(&mut self, off: usize, name: &str) -> &mut Self {
        // BPF_OBJ_NAME_LEN is 16 with the NUL; the kernel accepts [A-Za-z0-9_.].
        let mut n = [0u8; 16];
        for (d, s) in n.iter_mut().zip(name.bytes().take(15)) {
            *d = if s.is_ascii_alphanumeric() || s == b'.' {
                s
            } else {
                b'_'
            };
        }
        for (i, chunk) in n.chunks(4).enumerate() {
            self.u32(
                off + 4 * i,
                u32::from_ne_bytes(chunk.try_into().expect("4 bytes")),
            );
        }
        self
    }

    fn get_u32(&self, off: usize) -> u32 {
        (self.0[off / 8] >> ((off % 8) * 8)) as u32
    }

    fn call(&mut self, cmd: Cmd) -> io::Result<libc::c_long> {
        // SAFETY: `bpf(2)` reads (and for some commands writes) `ATTR_SIZE` bytes at the
        // pointer, which is this live, 8-aligned array. The pointers stored in it by the
        // helpers below (instructions, names, keys, values, log and BTF buffers) point at
        // memory that the helper keeps alive across the call, with the sizes it stores
        // beside them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_long,
                self.0.as_mut_ptr().cast::<libc::c_void>(),
                ATTR_SIZE as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
}

/// The commands used (`enum bpf_cmd`).
#[derive(Clone, Copy)]
enum Cmd {
    MapCreate = 0,
    MapLookupElem = 1,
    MapUpdateElem = 2,
    MapDeleteElem = 3,
    MapGetNextKey = 4,
    ProgLoad = 5,
    ProgTestRun = 10,
    ObjGetInfoByFd = 15,
    RawTracepointOpen = 17,
    BtfLoad = 18,
    MapLookupBatch = 24,
    MapLookupAndDeleteBatch = 25,
    LinkCreate = 28,
    EnableStats = 32,
}

fn owned(rc: libc::c_long) -> OwnedFd {
    // SAFETY: `rc` is a file descriptor the kernel just returned to us and nobody else owns.
    unsafe { OwnedFd::from_raw_fd(rc as i32) }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

/// Map types used (`enum bpf_map_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapType {
    Array = 2,
    PercpuArray = 6,
    LruHash = 9,
    LruPercpuHash = 10,
    LpmTrie = 11,
    SkStorage = 24,
}

impl MapType {
    /// Whether user space sees one value per possible CPU.
    pub(crate) fn per_cpu(self) -> bool {
        matches!(self, MapType::PercpuArray | MapType::LruPercpuHash)
    }
}

/// `BPF_F_NO_PREALLOC`: required by LPM tries and local storage.
pub(crate) const F_NO_PREALLOC: u32 = 1 << 0;
/// `BPF_F_CLONE`: socket storage is copied to the sockets a listener accepts.
pub(crate) const F_CLONE: u32 = 1 << 9;

/// What [`map_create`] needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapSpec<'a> {
    pub kind: MapType,
    pub key: u32,
    pub value: u32,
    pub max_entries: u32,
    pub flags: u32,
    pub name: &'a str,
    /// BTF object and key and value type ids, for maps that require them (socket storage).
    pub btf: Option<(BorrowedFd<'a>, u32, u32)>,
}

/// `bpf(BPF_MAP_CREATE)`.
pub(crate) fn map_create(s: &MapSpec<'_>) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, s.kind as u32)
        .u32(4, s.key)
        .u32(8, s.value)
        .u32(12, s.max_entries)
        .u32(16, s.flags)
        .name(28, s.name);
    if let Some((btf, k, v)) = s.btf {
        attr.u32(48, fd_u32(btf)).u32(52, k).u32(56, v);
    }
    attr.call(Cmd::MapCreate).map(owned)
}

/// `BPF_NOEXIST`, `BPF_ANY` of `bpf_map_update_elem`.
pub(crate) const NOEXIST: u64 = 1;
pub(crate) const ANY: u64 = 0;

/// `bpf(BPF_MAP_LOOKUP_ELEM)`: `false` if there is no such key. `value` must hold the whole
/// value (for per-CPU maps: one 8-byte-aligned value per possible CPU).
pub(crate) fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = Attr::new();
    attr.u32(0, fd_u32(map))
        .ptr(8, key.as_ptr())
        .ptr(16, value.as_mut_ptr());
    match attr.call(Cmd::MapLookupElem) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `bpf(BPF_MAP_UPDATE_ELEM)`.
pub(crate) fn map_update(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32(0, fd_u32(map))
        .ptr(8, key.as_ptr())
        .ptr(16, value.as_ptr())
        .u64(24, flags);
    attr.call(Cmd::MapUpdateElem).map(drop)
}

/// `bpf(BPF_MAP_DELETE_ELEM)`: `false` if there was no such key.
pub(crate) fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut attr = Attr::new();
    attr.u32(0, fd_u32(map)).ptr(8, key.as_ptr());
    match attr.call(Cmd::MapDeleteElem) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `bpf(BPF_MAP_GET_NEXT_KEY)`: the key after `key` (the first key for `None`), or `false`
/// at the end.
pub(crate) fn map_next_key(
    map: BorrowedFd<'_>,
    key: Option<&[u8]>,
    next: &mut [u8],
) -> io::Result<bool> {
    let mut attr = Attr::new();
    attr.u32(0, fd_u32(map)).ptr(16, next.as_mut_ptr());
    if let Some(k) = key {
        attr.ptr(8, k.as_ptr());
    }
    match attr.call(Cmd::MapGetNextKey) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `bpf(BPF_MAP_LOOKUP_BATCH)` (or, with `take`, `BPF_MAP_LOOKUP_AND_DELETE_BATCH`) over a
/// whole hash map, appending every entry's key and value (values as [`map_lookup`] reads
/// them). Returns the entries read.
pub(crate) fn map_read_all(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    take: bool,
    keys: &mut Vec<u8>,
    values: &mut Vec<u8>,
) -> io::Result<usize> {
    const CHUNK: usize = 256;
    let mut total = 0;
    let mut kbuf = vec![0u8; key_size * CHUNK];
    let mut vbuf = vec![0u8; value_size * CHUNK];
    // The batch cursor is opaque to us; the kernel's hash maps use a u32 bucket index.
    let mut cursor = [0u64; 1];
    let mut first = true;
    let cmd = if take {
        Cmd::MapLookupAndDeleteBatch
    } else {
        Cmd::MapLookupBatch
    };
    loop {
        let mut attr = Attr::new();
        if !first {
            attr.ptr(0, cursor.as_ptr());
        }
        attr.ptr(8, cursor.as_mut_ptr())
            .ptr(16, kbuf.as_mut_ptr())
            .ptr(24, vbuf.as_mut_ptr())
            .u32(32, CHUNK as u32)
            .u32(36, fd_u32(map));
        let r = attr.call(cmd);
        let n = (attr.get_u32(32) as usize).min(CHUNK);
        if !matches!(&r, Err(e) if e.raw_os_error() != Some(libc::ENOENT)) {
            keys.extend_from_slice(&kbuf[..n * key_size]);
            values.extend_from_slice(&vbuf[..n * value_size]);
            total += n;
        }
        match r {
            Ok(_) => first = false,
            // ENOENT: the walk reached the end (with the last entries in this call).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            // ENOSPC: one bucket holds more than CHUNK entries, never with our sizes: read
            // the entries one by one instead.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                return one_by_one(map, key_size, value_size, take, keys, values)
                    .map(|m| m + total);
            }
            Err(e) => return Err(e),
        }
    }
}

fn one_by_one(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    take: bool,
    keys: &mut Vec<u8>,
    values: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut n = 0;
    let mut prev: Option<Vec<u8>> = None;
    let mut k = vec![0u8; key_size];
    let mut v = vec![0u8; value_size];
    while map_next_key(map, if take { None } else { prev.as_deref() }, &mut k)? {
        if map_lookup(map, &k, &mut v)? {
            keys.extend_from_slice(&k);
            values.extend_from_slice(&v);
            n += 1;
        }
        if take {
            map_delete(map, &k)?;
        }
        prev = Some(k.clone());
    }
    Ok(n)
}

/// Program types used (`enum bpf_prog_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgType {
    SocketFilter = 1,
    Xdp = 6,
    RawTracepoint = 17,
    Tracing = 26,
}

/// Attach types used (`enum bpf_attach_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttachType {
    /// A BTF tracepoint (`tp_btf`).
    TraceRawTp = 23,
    Xdp = 37,
}

/// What [`prog_load`] needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProgSpec<'a> {
    pub kind: ProgType,
    pub insns: &'a [Insn],
    pub name: &'a str,
    pub attach: Option<AttachType>,
    /// For tracing programs: the BTF id (in vmlinux) of what they attach to.
    pub attach_btf_id: u32,
}

/// `bpf(BPF_PROG_LOAD)`, under the GPL (the helpers used require it). On a refusal the
/// error carries the last lines of the verifier's log.
pub(crate) fn prog_load(s: &ProgSpec<'_>) -> io::Result<OwnedFd> {
    let license: &CStr = c"GPL";
    let mut attr = Attr::new();
    attr.u32(0, s.kind as u32)
        .u32(4, s.insns.len() as u32)
        .ptr(8, s.insns.as_ptr())
        .ptr(16, license.as_ptr())
        .name(48, s.name)
        .u32(68, s.attach.map_or(0, |a| a as u32))
        .u32(108, s.attach_btf_id);
    match attr.call(Cmd::ProgLoad) {
        Ok(fd) => Ok(owned(fd)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES) | Some(libc::EINVAL) | Some(libc::E2BIG) | Some(libc::EPERM)
            ) =>
        {
            // Load again with the verifier's log, to say why.
            let mut log = vec![0u8; 256 * 1024];
            attr.u32(24, 1)
                .u32(28, log.len() as u32)
                .ptr(32, log.as_mut_ptr());
            let again = attr.call(Cmd::ProgLoad);
            if let Ok(fd) = again {
                return Ok(owned(fd));
            }
            let tail = log_tail(&log, 8);
            if tail.is_empty() {
                // Refused before the verifier ran (no privilege): the raw error.
                return Err(e);
            }
            Err(io::Error::new(e.kind(), format!("{e}; verifier: {tail}")))
        }
        Err(e) => Err(e),
    }
}

/// The last `n` lines of a NUL-terminated log, joined.
fn log_tail(log: &[u8], n: usize) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let mut tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.reverse();
    tail.join(" | ")
}

/// `bpf(BPF_BTF_LOAD)`: loads type information (for maps that require it).
pub(crate) fn btf_load(blob: &[u8]) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.ptr(0, blob.as_ptr()).u32(16, blob.len() as u32);
    match attr.call(Cmd::BtfLoad) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let mut log = vec![0u8; 16 * 1024];
            attr.ptr(8, log.as_mut_ptr())
                .u32(20, log.len() as u32)
                .u32(24, 1);
            match attr.call(Cmd::BtfLoad) {
                Ok(fd) => Ok(owned(fd)),
                Err(_) => match log_tail(&log, 4) {
                    tail if tail.is_empty() => Err(e),
                    tail => Err(io::Error::new(e.kind(), format!("{e}; BTF log: {tail}"))),
                },
            }
        }
    }
}

/// `bpf(BPF_RAW_TRACEPOINT_OPEN)`: attaches a raw tracepoint program to tracepoint `name`,
/// or (with `None`) a tracing program to what it was loaded for.
/// The program stays attached while the returned link is open.
pub(crate) fn raw_tracepoint_open(
    prog: BorrowedFd<'_>,
    name: Option<&CStr>,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    if let Some(n) = name {
        attr.ptr(0, n.as_ptr());
    }
    attr.u32(8, fd_u32(prog));
    attr.call(Cmd::RawTracepointOpen).map(owned)
}

/// `bpf(BPF_LINK_CREATE)` attaching an XDP program to interface `ifindex`: attached while
/// the returned link is open. `flags` are `XDP_FLAGS_*`.
pub(crate) fn xdp_link(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, fd_u32(prog))
        .u32(4, ifindex)
        .u32(8, AttachType::Xdp as u32)
        .u32(12, flags);
    attr.call(Cmd::LinkCreate).map(owned)
}

/// `bpf(BPF_PROG_TEST_RUN)` of a packet program (XDP, socket filter) on `packet`: its return
/// value.
pub(crate) fn test_run_packet(prog: BorrowedFd<'_>, packet: &[u8]) -> io::Result<u32> {
    let mut attr = Attr::new();
    attr.u32(0, fd_u32(prog))
        .u32(8, packet.len() as u32)
        .ptr(16, packet.as_ptr())
        .u32(32, 1);
    attr.call(Cmd::ProgTestRun)?;
    Ok(attr.get_u32(4))
}

/// What the kernel counts of a program's runs while statistics are on (see [`enable_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a program: its run count and run time.
pub(crate) fn prog_run_stats(prog: BorrowedFd<'_>) -> io::Result<RunStats> {
    // struct bpf_prog_info: run_time_ns at 192, run_cnt at 200 (kernel 5.1 and later).
    let mut info = [0u64; 30];
    let mut attr = Attr::new();
    attr.u32(0, fd_u32(prog))
        .u32(4, std::mem::size_of_val(&info) as u32)
        .ptr(8, info.as_mut_ptr());
    attr.call(Cmd::ObjGetInfoByFd)?;
    Ok(RunStats {
        run_time_ns: info[192 / 8],
        run_cnt: info[200 / 8],
    })
}

/// `bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)`: every program's run time is counted while
/// the returned descriptor is open (costs two clock reads per run).
pub(crate) fn enable_stats() -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, 0);
    attr.call(Cmd::EnableStats).map(owned)
}

/// The CPUs the kernel may ever bring up (`/sys/devices/system/cpu/possible`): per-CPU maps
/// hold one value for each.
pub(crate) fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    super::parse_cpu_list(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/sys/devices/system/cpu/possible: cannot parse {text:?}"),
        )
    })
}

/// `if_nametoindex(3)`, in the calling thread's network namespace: 0 if there is no such
/// interface.
pub(crate) fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    Ok(unsafe { libc::if_nametoindex(c.as_ptr()) })
}

/// `setsockopt(SOL_SOCKET, SO_ATTACH_BPF)`: attaches an eBPF socket filter (replacing any
/// filter the socket had).
///
/// # References
/// - socket(7), `SO_ATTACH_BPF`
pub(crate) fn attach_socket_bpf(sock: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: `sock` is a live descriptor; the option value is a live `int` of the size
    // passed, which the kernel copies.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_BPF,
            (&raw const fd).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setsockopt(IPPROTO_TCP, TCP_WINDOW_CLAMP)`: bounds the receive window the socket
/// advertises (a listener's bound is copied to the connections it accepts).
///
/// # References
/// - tcp(7), `TCP_WINDOW_CLAMP`
pub(crate) fn set_window_clamp(sock: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `sock` is a live descriptor; the option value is a live `int` of the size
    // passed, which the kernel copies.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_WINDOW_CLAMP,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(SOL_SOCKET, SO_COOKIE)`: the socket's cookie, the kernel's id for it.
///
/// # References
/// - socket(7), `SO_COOKIE`
pub(crate) fn socket_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `sock` is a live descriptor; `v` is writable for `len` bytes and the kernel
    // writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn window_clamp(sock: BorrowedFd<'_>) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `sock` is a live descriptor; `v` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_WINDOW_CLAMP,
                (&raw mut v).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        v
    }

    #[test]
    fn a_listeners_window_bound_reaches_its_connections() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_window_clamp(l.as_fd(), 16 * 1024).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(window_clamp(s.as_fd()), 16 * 1024);
        // Lifted on the listener: later connections are not bounded by it.
        set_window_clamp(l.as_fd(), 65_535 << 14).unwrap();
        let _c2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s2, _) = l.accept().unwrap();
        assert!(window_clamp(s2.as_fd()) > 16 * 1024);
    }
}
