//! `cgi_response`: what a CGI script writes, parsed by [`CgiHeadParser`].
//!
//! The control byte picks the chunk size the output arrives in (1 to 16 bytes) and the head
//! limit (64 KiB, or a small one to reach the limit checks). Properties:
//!
//! - fed in chunks or at once, the outcome is the same (when the limit is not in play);
//! - the body returned is what follows the head: a suffix of the output;
//! - a document has a `Content-Type` and a status from 200 to 599; a local redirect is a
//!   path (`/x`, not `//host`); a client redirect is 3xx with a `Location`; a location has
//!   no blank or control byte;
//! - no hop-by-hop header (`Connection`, `Transfer-Encoding`, ...) reaches the client, and no
//!   header value carries CR, LF or NUL;
//! - every refusal is a 502 with a message.

use super::control;
use http::header::{self, HeaderMap};
use rescon_httpd::cgi::{CgiError, CgiHead, CgiHeadParser};

/// The target.
pub const TARGET: crate::Target = crate::Target {
    name: "cgi_response",
    about: "a CGI script's output: the response head (RFC 3875 6), fed in chunks",
    run,
    dictionary: &[
        b"\n",
        b"\r\n",
        b"\n\n",
        b"\r\n\r\n",
        b": ",
        b":",
        b"Status: ",
        b"Status: 200 OK",
        b"Status: 302",
        b"Content-Type: ",
        b"Content-Type: text/html",
        b"Content-Length: ",
        b"Location: ",
        b"Location: /",
        b"Location: //",
        b"Location: http://a/",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b"Set-Cookie: a=b",
        b" ",
        b"\t",
        b"\x00",
        b"\x7f",
        b"\xff",
    ],
};

fn run(data: &[u8]) {
    let Some((ctl, data)) = control(data) else {
        return;
    };
    let chunk = 1 + usize::from(ctl & 0x0f);
    let max = if ctl & 0x10 == 0 {
        64 * 1024
    } else {
        16 + usize::from(ctl >> 5) * 24
    };
    let whole = feed(max, &[data]);
    let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    let chunked = feed(max, &pieces);
    check(data, &whole);
    check(data, &chunked);
    if data.len() <= max {
        assert_eq!(whole, chunked, "in chunks of {chunk} the outcome differs");
    }
}

/// Feeds the pieces in order; the head and the whole body, or the error.
fn feed(max: usize, pieces: &[&[u8]]) -> Result<(CgiHead, Vec<u8>), CgiError> {
    let mut p = CgiHeadParser::new(max);
    for (i, piece) in pieces.iter().enumerate() {
        if let Some((head, mut body)) = p.feed(piece)? {
            for rest in &pieces[i + 1..] {
                body.extend_from_slice(rest);
            }
            return Ok((head, body));
        }
    }
    Err(p.eof())
}

/// Headers of the connection, which is the server's.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
];

fn clean(headers: &HeaderMap) {
    for h in HOP_BY_HOP {
        assert!(!headers.contains_key(h), "hop-by-hop {h} passed through");
    }
    for (name, value) in headers {
        assert!(
            !value
                .as_bytes()
                .iter()
                .any(|&b| matches!(b, b'\r' | b'\n' | 0)),
            "{name} carries CR, LF or NUL"
        );
    }
    if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
        let b = cl.as_bytes();
        assert!(
            !b.is_empty() && b.iter().all(u8::is_ascii_digit),
            "Content-Length {cl:?} passed through"
        );
    }
}

fn check(data: &[u8], r: &Result<(CgiHead, Vec<u8>), CgiError>) {
    match r {
        Ok((head, body)) => {
            assert!(
                data.ends_with(body),
                "the body is not what follows the head"
            );
            match head {
                CgiHead::Document { status, headers } => {
                    assert!(headers.contains_key(header::CONTENT_TYPE));
                    assert!((200..=599).contains(&status.as_u16()), "status {status}");
                    clean(headers);
                }
                CgiHead::LocalRedirect { location } => {
                    assert!(location.starts_with('/') && !location.starts_with("//"));
                    assert!(
                        location.bytes().all(|b| b.is_ascii_graphic()),
                        "blank or control byte in local redirect {location:?}"
                    );
                }
                CgiHead::ClientRedirect { status, headers } => {
                    assert!(status.is_redirection(), "client redirect with {status}");
                    let loc = headers[header::LOCATION].as_bytes();
                    assert!(
                        loc.iter().all(u8::is_ascii_graphic),
                        "blank or control byte in Location {loc:?}"
                    );
                    clean(headers);
                }
            }
        }
        Err(e) => {
            assert_eq!(e.status(), http::StatusCode::BAD_GATEWAY);
            assert!(!e.to_string().is_empty());
        }
    }
}
