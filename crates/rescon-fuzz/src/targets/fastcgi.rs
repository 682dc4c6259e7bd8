//! `fastcgi_records`: what a FastCGI application sends back, read by
//! [`rescon_httpd::fastcgi::Decoder`].
//!
//! The control byte picks the chunk size the bytes arrive in (1 to 16, or all at once) and
//! the request id the decoder expects (1 or 2). Properties:
//!
//! - fed in chunks or at once, the events (and the error, if any) are the same;
//! - stdout and stderr bytes returned are never empty, and never more than was fed;
//! - the decoder never holds more than one record's worth (8 + 65535 + 255 bytes) of what
//!   it was fed and has not returned, and nothing after an error;
//! - the name-value pairs the server encodes decode back the same, whatever the bytes.

use super::control;
use rescon_httpd::fastcgi::{self, Decoder, Event, RecordError};

/// The target.
pub const TARGET: crate::Target = crate::Target {
    name: "fastcgi_records",
    about: "a FastCGI application's records (STDOUT, STDERR, END_REQUEST), fed in chunks",
    run,
    dictionary: &[
        b"\x01\x06\x00\x01",
        b"\x01\x07\x00\x01",
        b"\x01\x03\x00\x01\x00\x08\x00\x00",
        b"\x01\x0a\x00\x00",
        b"\x01\x0b\x00\x00",
        b"\x00\x00",
        b"\xff\xff",
        b"\x00\x08",
        b"Status: 200\r\n\r\n",
        b"Content-Type: text/html\r\n\r\n",
    ],
};

const MAX_HELD: usize = fastcgi::HEADER_LEN + fastcgi::MAX_CONTENT + 255;

/// Every event of `data` fed in chunks of `chunk`, then the error if one came.
fn decode(id: u16, data: &[u8], chunk: usize) -> (Vec<Event>, Option<RecordError>) {
    let mut d = Decoder::new(id);
    let mut events = Vec::new();
    let mut fed = 0usize;
    let mut out_bytes = 0usize;
    for c in data.chunks(chunk.max(1)) {
        d.feed(c);
        fed += c.len();
        loop {
            match d.next() {
                Ok(Some(e)) => {
                    if let Event::Stdout(b) | Event::Stderr(b) = &e {
                        assert!(!b.is_empty(), "an empty data event");
                        out_bytes += b.len();
                    }
                    events.push(e);
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(d.pending(), 0, "bytes kept after an error");
                    assert_eq!(d.next(), Ok(None), "an event after an error");
                    return (events, Some(e));
                }
            }
        }
        assert!(d.pending() <= MAX_HELD, "{} bytes held", d.pending());
        assert!(out_bytes <= fed, "more bytes out than in");
    }
    (events, None)
}

fn run(data: &[u8]) {
    let Some((ctl, data)) = control(data) else {
        return;
    };
    let id = 1 + u16::from(ctl >> 7);
    let chunk = match ctl & 0x1f {
        0 => data.len(),
        n => usize::from(n & 0x0f) + 1,
    };
    let whole = decode(id, data, data.len().max(1));
    let chunked = decode(id, data, chunk);
    assert_eq!(whole, chunked, "chunks of {chunk} differ from a whole feed");
    // Pairs built from the input round-trip through the encoding.
    let pairs: Vec<(&[u8], &[u8])> = data.chunks(7).map(|c| c.split_at(c.len() / 2)).collect();
    let enc = fastcgi::encode_params(pairs.iter().copied());
    assert_eq!(fastcgi::decode_params(&enc), Some(pairs));
}
