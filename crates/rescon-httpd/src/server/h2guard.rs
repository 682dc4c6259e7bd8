//! HTTP/2's floods, bounded per connection: a meter of the frames a client sends, between the
//! byte stream (TLS or TCP) and hyper's HTTP/2 connection.
//!
//! hyper's h2 bounds what it keeps (concurrent streams, resets of streams not yet accepted,
//! header list size), but not how fast a client may make it work: a client that opens and
//! resets streams at once (rapid reset, CVE-2023-44487), or that sends SETTINGS or PING
//! frames without end, makes the server do work per frame for ever. The meter reads each
//! frame's 9-byte header as the bytes go by (it parses nothing else, and copies the bytes
//! once, through a buffer on the stack) and keeps two token buckets per connection:
//! RST_STREAM frames against `http2.max_resets`, SETTINGS and PING frames against
//! `http2.max_control_frames`, each holding that many and refilled at a tenth of it per
//! second ("that many in any 10 seconds"). A client over either bound gets GOAWAY with
//! ENHANCE_YOUR_CALM (when the server is not in the middle of sending a frame) and the
//! connection is closed; the work it did is charged to its connection's container, under its
//! class.
//!
//! It also counts, on the connection's container, the streams the client opens (HEADERS on a
//! new stream id) and resets: the usage the admin API shows per container.

use super::conn::Stream;
use hyper::rt::{ReadBuf, ReadBufCursor};
use rescon::Container;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

const PREFACE_LEN: u8 = 24;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Follows the frames of one direction of an HTTP/2 connection, header by header.
#[derive(Debug)]
pub(crate) struct Frames {
    /// Bytes of the client's connection preface still to skip.
    preface: u8,
    header: [u8; 9],
    have: u8,
    /// Payload bytes of the current frame still to skip.
    skip: u32,
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) len: u32,
}

impl Frames {
    /// The client's side: the 24-byte preface, then frames.
    pub(crate) fn client() -> Frames {
        Frames {
            preface: PREFACE_LEN,
            header: [0; 9],
            have: 0,
            skip: 0,
        }
    }

    /// The server's side: frames from the first byte.
    pub(crate) fn server() -> Frames {
        Frames {
            preface: 0,
            ..Frames::client()
        }
    }

    /// At a frame's boundary (nothing of a frame begun).
    pub(crate) fn at_boundary(&self) -> bool {
        self.preface == 0 && self.have == 0 && self.skip == 0
    }

    /// Feeds the next bytes; calls `f` with each frame header as it completes.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], mut f: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = bytes.len().min(self.preface as usize);
                self.preface -= n as u8;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                self.skip -= n as u32;
                bytes = &bytes[n..];
            } else {
                let n = bytes.len().min(9 - self.have as usize);
                self.header[self.have as usize..self.have as usize + n]
                    .copy_from_slice(&bytes[..n]);
                self.have += n as u8;
                bytes = &bytes[n..];
                if self.have == 9 {
                    self.have = 0;
                    let h = &self.header;
                    let frame = Frame {
                        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    };
                    self.skip = frame.len;
                    f(frame);
                }
            }
        }
    }
}

/// "`max` in any 10 seconds": holds `max` tokens, refilled at `max / 10` a second.
#[derive(Debug)]
pub(crate) struct Bucket {
    max: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    pub(crate) fn new(max: u32) -> Bucket {
        Bucket {
            max: max as f64,
            tokens: max as f64,
            at: None,
        }
    }

    /// Takes a token at `now`; `false` when none is left.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.max / 10.0;
            self.tokens = (self.tokens + refill).min(self.max);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The meter: see the [module docs](self).
pub(crate) struct H2Guard<S> {
    io: S,
    container: Container,
    read: Frames,
    written: Frames,
    resets: Bucket,
    control: Bucket,
    /// The highest stream id the client opened.
    last_stream: u32,
    /// Why the connection is being closed, once it is.
    tripped: Option<&'static str>,
}

impl<S: Stream> H2Guard<S> {
    pub(crate) fn new(io: S, container: Container, h2: &crate::config::Http2Config) -> Self {
        H2Guard {
            io,
            container,
            read: Frames::client(),
            written: Frames::server(),
            resets: Bucket::new(h2.max_resets),
            control: Bucket::new(h2.max_control_frames),
            last_stream: 0,
            tripped: None,
        }
    }

    /// Meters what was read.
    fn saw(&mut self, bytes: &[u8]) {
        let (resets, control, last) = (&mut self.resets, &mut self.control, &mut self.last_stream);
        let (mut opened, mut reset, mut tripped) = (0u64, 0u64, None);
        self.read.feed(bytes, |f| match f.kind {
            HEADERS if f.stream > *last => {
                *last = f.stream;
                opened += 1;
            }
            RST_STREAM => {
                reset += 1;
                if !resets.take(Instant::now()) {
                    tripped = Some("more RST_STREAM frames than http2.max_resets in 10 s");
                }
            }
            SETTINGS | PING if !control.take(Instant::now()) => {
                tripped =
                    Some("more SETTINGS and PING frames than http2.max_control_frames in 10 s");
            }
            _ => {}
        });
        let a = self.container.account();
        if opened > 0 {
            a.add_h2_streams(opened);
        }
        if reset > 0 {
            a.add_h2_resets(reset);
        }
        if tripped.is_some() && self.tripped.is_none() {
            self.tripped = tripped;
        }
    }

    /// The connection is over a bound: GOAWAY if the server's frames are at a boundary (best
    /// effort: what the socket takes now), then an error that ends the connection.
    fn trip(&mut self, cx: &mut Context<'_>, why: &'static str) -> io::Error {
        if self.written.at_boundary() {
            let mut goaway = [0u8; 17];
            goaway[..9].copy_from_slice(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0]);
            goaway[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
            goaway[13..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
            if let Poll::Ready(Ok(17)) = Pin::new(&mut self.io).poll_write(cx, &goaway) {
                let _ = Pin::new(&mut self.io).poll_flush(cx);
            }
            // Nothing more goes out on this connection.
            self.written = Frames::client();
        }
        tracing::debug!(
            reason = why,
            "HTTP/2 connection closed: GOAWAY ENHANCE_YOUR_CALM"
        );
        io::Error::new(io::ErrorKind::ConnectionAborted, why)
    }
}

impl<S: Stream> Stream for H2Guard<S> {
    fn poll_read_count(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(why) = this.tripped {
            return Poll::Ready(Err(this.trip(cx, why)));
        }
        // Read through a buffer on the stack: hyper's cursor does not show what was written
        // into it. Left uninitialized (`ReadBuf::uninit`): zeroing 16 KiB on every read, the
        // reads that find nothing included, was 2% of the server's CPU in HTTP/2 over TLS
        // (`rescon-bench paper --only 10`, perf).
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
        let room = buf.remaining().min(stack.len());
        let mut rb = ReadBuf::uninit(&mut stack[..room]);
        let n = ready!(Pin::new(&mut this.io).poll_read_count(cx, rb.unfilled()))?;
        let got = rb.filled();
        debug_assert_eq!(got.len(), n);
        this.saw(got);
        buf.put_slice(got);
        if let Some(why) = this.tripped {
            return Poll::Ready(Err(this.trip(cx, why)));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tripped.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.io.poll_read_ready(cx)
    }

    fn set_container(&mut self, c: &Container) {
        self.io.set_container(c)
    }

    fn park(&mut self) {
        self.io.park()
    }
}

impl<S: Stream> hyper::rt::Read for H2Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_count(cx, buf).map_ok(|_| ())
    }
}

impl<S: Stream> hyper::rt::Write for H2Guard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.written.feed(&buf[..n], |_| {});
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            let k = left.min(b.len());
            this.written.feed(&b[..k], |_| {});
            left -= k;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.extend_from_slice(&[kind, flags]);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn frames_are_found_across_any_split_of_the_bytes() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 12]));
        bytes.extend(frame(HEADERS, 4, 1, &[1, 2, 3]));
        bytes.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        bytes.extend(frame(PING, 0, 0, &[9; 8]));
        let want = vec![
            Frame {
                kind: SETTINGS,
                flags: 0,
                stream: 0,
                len: 12,
            },
            Frame {
                kind: HEADERS,
                flags: 4,
                stream: 1,
                len: 3,
            },
            Frame {
                kind: RST_STREAM,
                flags: 0,
                stream: 1,
                len: 4,
            },
            Frame {
                kind: PING,
                flags: 0,
                stream: 0,
                len: 8,
            },
        ];
        for chunk in [1, 2, 5, 9, 10, 24, 25, 1000] {
            let mut f = Frames::client();
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                f.feed(c, |fr| got.push(fr));
            }
            assert_eq!(got, want, "chunks of {chunk}");
            assert!(f.at_boundary());
        }
        let mut f = Frames::server();
        f.feed(&frame(PING, 1, 0, &[0; 8])[..12], |_| {});
        assert!(!f.at_boundary(), "inside a frame's payload");
    }

    #[test]
    fn a_bucket_allows_its_max_then_a_tenth_per_second() {
        let t = Instant::now();
        let mut b = Bucket::new(100);
        assert!((0..100).all(|_| b.take(t)), "the first 100 at once");
        assert!(!b.take(t), "the 101st in the same instant");
        let later = t + Duration::from_secs(1);
        assert_eq!(
            (0..20).filter(|_| b.take(later)).count(),
            10,
            "10 more a second later"
        );
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(
            (0..200).filter(|_| b.take(much_later)).count(),
            100,
            "never more than max saved up"
        );
    }
}
