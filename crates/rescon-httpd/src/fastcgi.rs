//! The FastCGI record codec (FastCGI 1.0, the responder role), as pure functions and a
//! decoder fed with bytes: what the server's FastCGI stage (`server/fastcgi.rs`) writes to an
//! application and reads back.
//!
//! # Why by hand
//!
//! The maintained crates do not fit: `fastcgi-client` is an async client bound to tokio's I/O
//! traits that collects a response's stdout and stderr whole in memory (no streaming, no bound
//! on either), and offers no record-level API through which the request's container handle
//! could ride on the first record (`SCM_RIGHTS` with `FCGI_BEGIN_REQUEST`, see
//! `rescon_handle::pass::send_with`); the `fastcgi` crate is the application side. The
//! protocol's records are an 8-byte header and a body, about 200 lines here, tested and
//! fuzzed (`rescon-fuzz`, target `fastcgi_records`).
//!
//! # Guarantees
//!
//! - [`Decoder`] never holds more than one record (at most 8 + 65535 + 255 bytes) beyond what
//!   it was fed and has not returned; fed in chunks or at once, it returns the same records.
//! - A record that is not version 1, names another request, has a type a responder's
//!   application must not send, or an `FCGI_END_REQUEST` body that is not 8 bytes is an
//!   error ([`RecordError`]), never a panic; nothing after an error is returned.
//! - [`encode_params`] and [`decode_params`] are inverses.

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// The protocol version.
pub const VERSION: u8 = 1;
/// `FCGI_BEGIN_REQUEST`.
pub const BEGIN_REQUEST: u8 = 1;
/// `FCGI_ABORT_REQUEST`.
pub const ABORT_REQUEST: u8 = 2;
/// `FCGI_END_REQUEST`.
pub const END_REQUEST: u8 = 3;
/// `FCGI_PARAMS`.
pub const PARAMS: u8 = 4;
/// `FCGI_STDIN`.
pub const STDIN: u8 = 5;
/// `FCGI_STDOUT`.
pub const STDOUT: u8 = 6;
/// `FCGI_STDERR`.
pub const STDERR: u8 = 7;
/// `FCGI_GET_VALUES_RESULT`.
pub const GET_VALUES_RESULT: u8 = 10;
/// `FCGI_UNKNOWN_TYPE`.
pub const UNKNOWN_TYPE: u8 = 11;
/// The responder role.
pub const RESPONDER: u16 = 1;
/// The largest record body.
pub const MAX_CONTENT: usize = 65535;
/// A record's header length.
pub const HEADER_LEN: usize = 8;

/// A record header, written: version, type, request id, content length, padding length.
fn header(typ: u8, id: u16, len: usize, pad: u8) -> [u8; HEADER_LEN] {
    let [ih, il] = id.to_be_bytes();
    let [lh, ll] = (len as u16).to_be_bytes();
    [VERSION, typ, ih, il, lh, ll, pad, 0]
}

/// The `FCGI_BEGIN_REQUEST` record of request `id` in the responder role; `keep_conn` asks the
/// application to keep the connection open after the request.
pub fn begin_request(id: u16, keep_conn: bool) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..8].copy_from_slice(&header(BEGIN_REQUEST, id, 8, 0));
    r[8..10].copy_from_slice(&RESPONDER.to_be_bytes());
    r[10] = u8::from(keep_conn);
    r
}

/// Appends the records of stream `typ` (`FCGI_PARAMS`, `FCGI_STDIN`, ...) carrying `data`,
/// split at [`MAX_CONTENT`] and padded to 8 bytes. An empty `data` appends the empty record
/// that ends the stream.
pub fn stream(out: &mut Vec<u8>, typ: u8, id: u16, data: &[u8]) {
    if data.is_empty() {
        out.extend_from_slice(&header(typ, id, 0, 0));
        return;
    }
    for chunk in data.chunks(MAX_CONTENT) {
        let pad = (8 - chunk.len() % 8) % 8;
        out.extend_from_slice(&header(typ, id, chunk.len(), pad as u8));
        out.extend_from_slice(chunk);
        out.extend_from_slice(&[0u8; 8][..pad]);
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// The name-value pairs of an `FCGI_PARAMS` stream (lengths of one byte below 128, else four
/// with the top bit set). Names and values longer than 2^31 - 1 bytes cannot be encoded: the
/// caller bounds them (a request's head is bounded long before).
pub fn encode_params<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        put_len(&mut out, k.len());
        put_len(&mut out, v.len());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

/// Decodes name-value pairs (the inverse of [`encode_params`]); `None` if `data` is not a
/// whole number of pairs.
pub fn decode_params(mut data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    fn len(d: &mut &[u8]) -> Option<usize> {
        let b = *d.first()?;
        if b < 128 {
            *d = &d[1..];
            Some(b as usize)
        } else {
            let v: [u8; 4] = d.get(..4)?.try_into().ok()?;
            *d = &d[4..];
            Some((u32::from_be_bytes(v) & 0x7fff_ffff) as usize)
        }
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let (kl, vl) = (len(&mut data)?, len(&mut data)?);
        let k = data.get(..kl)?;
        let v = data.get(kl..kl.checked_add(vl)?)?;
        data = &data[kl + vl..];
        out.push((k, v));
    }
    Some(out)
}

/// The body of an `FCGI_END_REQUEST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndRequest {
    /// The application's exit status for the request.
    pub app_status: u32,
    /// 0 complete, 1 cannot multiplex, 2 overloaded, 3 unknown role.
    pub protocol_status: u8,
}

impl EndRequest {
    /// What the protocol status means, for an error message.
    pub fn protocol_status_text(&self) -> &'static str {
        match self.protocol_status {
            0 => "request complete",
            1 => "the application cannot multiplex connections",
            2 => "the application is overloaded",
            3 => "the application does not take the responder role",
            _ => "an unknown protocol status",
        }
    }
}

/// What an application sent for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes of the response (the CGI response: head, then body). Never empty.
    Stdout(Bytes),
    /// Bytes the application wrote to its error stream. Never empty.
    Stderr(Bytes),
    /// The end of a stream (an empty `FCGI_STDOUT` or `FCGI_STDERR`).
    StreamEnd(u8),
    /// The request is over.
    End(EndRequest),
    /// A management record (request id 0: `FCGI_GET_VALUES_RESULT`, `FCGI_UNKNOWN_TYPE`),
    /// which a responder's client ignores.
    Management(u8),
}

/// Why a record stream is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// A header whose version is not 1 (not FastCGI, or out of step).
    Version(u8),
    /// A record for another request than the one under way.
    RequestId(u16),
    /// A record type an application does not send to a responder's client.
    Type(u8),
    /// An `FCGI_END_REQUEST` whose body is not 8 bytes.
    EndLength(usize),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Version(v) => write!(
                f,
                "a FastCGI record of version {v} (expected 1): is the address a FastCGI application?"
            ),
            RecordError::RequestId(id) => write!(f, "a FastCGI record for request {id}, not ours"),
            RecordError::Type(t) => write!(f, "a FastCGI record of type {t}, unexpected here"),
            RecordError::EndLength(n) => {
                write!(f, "an FCGI_END_REQUEST record of {n} bytes (expected 8)")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// Reads the records of one request's response from the bytes an application sends.
///
/// ```
/// use rescon_httpd::fastcgi::{self, Decoder, Event};
/// let mut wire = Vec::new();
/// fastcgi::stream(&mut wire, fastcgi::STDOUT, 1, b"Content-Type: text/plain\r\n\r\nhi");
/// let mut d = Decoder::new(1);
/// d.feed(&wire);
/// assert!(matches!(d.next(), Ok(Some(Event::Stdout(b))) if b.ends_with(b"hi")));
/// assert_eq!(d.next(), Ok(None));
/// ```
#[derive(Debug)]
pub struct Decoder {
    id: u16,
    buf: BytesMut,
    failed: bool,
}

impl Decoder {
    /// A decoder for request `id`.
    pub fn new(id: u16) -> Decoder {
        Decoder {
            id,
            buf: BytesMut::new(),
            failed: false,
        }
    }

    /// Adds bytes received.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed and not yet returned as records (a record's part).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole record's event, `Ok(None)` if more bytes are needed. After an error,
    /// the same error's kind is not repeated: every later call returns `Ok(None)`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Event>, RecordError> {
        if self.failed || self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let h = &self.buf[..HEADER_LEN];
        let (version, typ) = (h[0], h[1]);
        let id = u16::from_be_bytes([h[2], h[3]]);
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        let pad = h[6] as usize;
        let fail = |s: &mut Self, e| {
            s.failed = true;
            s.buf.clear();
            Err(e)
        };
        if version != VERSION {
            return fail(self, RecordError::Version(version));
        }
        if id != 0 && id != self.id {
            return fail(self, RecordError::RequestId(id));
        }
        let ok_type = match id {
            0 => matches!(typ, GET_VALUES_RESULT | UNKNOWN_TYPE),
            _ => matches!(typ, STDOUT | STDERR | END_REQUEST),
        };
        if !ok_type {
            return fail(self, RecordError::Type(typ));
        }
        if typ == END_REQUEST && len != 8 {
            return fail(self, RecordError::EndLength(len));
        }
        if self.buf.len() < HEADER_LEN + len + pad {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        self.buf.advance(pad);
        Ok(Some(match typ {
            STDOUT | STDERR if body.is_empty() => Event::StreamEnd(typ),
            STDOUT => Event::Stdout(body),
            STDERR => Event::Stderr(body),
            END_REQUEST => Event::End(EndRequest {
                app_status: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                protocol_status: body[4],
            }),
            other => Event::Management(other),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(id: u16, app: u32, proto: u8) -> Vec<u8> {
        let mut v = header(END_REQUEST, id, 8, 0).to_vec();
        v.extend_from_slice(&app.to_be_bytes());
        v.extend_from_slice(&[proto, 0, 0, 0]);
        v
    }

    fn all(d: &mut Decoder) -> Result<Vec<Event>, RecordError> {
        let mut out = Vec::new();
        while let Some(e) = d.next()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn a_response_in_any_chunks_gives_the_same_events() {
        let mut wire = Vec::new();
        stream(&mut wire, STDOUT, 7, b"Status: 200\r\n\r\nbody");
        stream(&mut wire, STDERR, 7, b"warning");
        stream(&mut wire, STDOUT, 7, &vec![b'x'; 70_000]);
        stream(&mut wire, STDOUT, 7, b"");
        wire.extend(end(7, 3, 0));
        let mut whole = Decoder::new(7);
        whole.feed(&wire);
        let expect = all(&mut whole).unwrap();
        assert_eq!(expect.len(), 6, "{expect:?}");
        assert_eq!(
            expect[5],
            Event::End(EndRequest {
                app_status: 3,
                protocol_status: 0
            })
        );
        for size in [1, 3, 8, 1000] {
            let mut d = Decoder::new(7);
            let mut got = Vec::new();
            for c in wire.chunks(size) {
                d.feed(c);
                got.extend(all(&mut d).unwrap());
            }
            assert_eq!(got, expect, "chunks of {size}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn records_of_others_or_of_the_wrong_kind_are_refused() {
        let cases: [(Vec<u8>, RecordError); 4] = [
            (b"HTTP/1.1 200 OK\r\n".to_vec(), RecordError::Version(b'H')),
            (end(2, 0, 0), RecordError::RequestId(2)),
            (header(PARAMS, 1, 0, 0).to_vec(), RecordError::Type(PARAMS)),
            (
                header(END_REQUEST, 1, 4, 0).to_vec(),
                RecordError::EndLength(4),
            ),
        ];
        for (wire, e) in cases {
            let mut d = Decoder::new(1);
            d.feed(&wire);
            assert_eq!(d.next(), Err(e));
            assert_eq!(d.next(), Ok(None), "nothing after an error");
            assert_eq!(d.pending(), 0);
        }
        // Management records (id 0) pass and are ignored by the caller.
        let mut d = Decoder::new(1);
        d.feed(&header(UNKNOWN_TYPE, 0, 0, 0));
        assert_eq!(d.next(), Ok(Some(Event::Management(UNKNOWN_TYPE))));
    }

    #[test]
    fn params_round_trip_with_both_length_forms() {
        let long = vec![b'v'; 300];
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b"SCRIPT_FILENAME", b"/srv/x.php"),
            (b"EMPTY", b""),
            (b"LONG", &long),
        ];
        let enc = encode_params(pairs.iter().copied());
        assert_eq!(decode_params(&enc).unwrap(), pairs);
        assert_eq!(decode_params(&enc[..enc.len() - 1]), None);
    }

    #[test]
    fn streams_are_split_and_padded() {
        let mut wire = Vec::new();
        stream(&mut wire, STDIN, 1, &vec![0u8; MAX_CONTENT + 3]);
        // One full record (65535 + 1 pad), one of 3 (+ 5 pad).
        assert_eq!(wire.len(), 8 + MAX_CONTENT + 1 + 8 + 3 + 5);
        assert_eq!(begin_request(1, false)[..8], header(BEGIN_REQUEST, 1, 8, 0));
    }
}
