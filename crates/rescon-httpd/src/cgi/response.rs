//! Parsing what a CGI script writes: the response head (RFC 3875 section 6), incrementally, so
//! the body can be streamed to the client as it comes.

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::fmt;

/// The most header lines a script may send.
pub const MAX_CGI_HEADERS: usize = 100;

/// A script's response head, classified as RFC 3875 6.2 does.
#[derive(Clone, Debug, PartialEq)]
pub enum CgiHead {
    /// A document: the status (200 unless `Status` says otherwise) and the headers to send,
    /// `Content-Type` among them.
    Document {
        /// The status.
        status: StatusCode,
        /// Headers, without hop-by-hop ones.
        headers: HeaderMap,
    },
    /// `Location: /path`: the server serves that path instead, as a new GET.
    LocalRedirect {
        /// The path and query to serve.
        location: String,
    },
    /// `Location: scheme:...`: a redirect for the client (302 unless `Status` says otherwise),
    /// possibly with a document.
    ClientRedirect {
        /// The status (3xx).
        status: StatusCode,
        /// Headers, `Location` among them.
        headers: HeaderMap,
    },
}

/// Why a script's output is not a valid response (the server answers 502 Bad Gateway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgiError {
    /// The head is longer than allowed.
    HeadTooLarge(usize),
    /// More than [`MAX_CGI_HEADERS`] lines.
    TooManyHeaders,
    /// A line is not `Name: value`.
    Malformed(String),
    /// `Status` is not a 3-digit code from 200 to 599 with an optional reason.
    BadStatus(String),
    /// `Location` is neither a local path nor an absolute URI.
    BadLocation(String),
    /// A document response without `Content-Type`.
    NoContentType,
    /// A header given twice that must be given once.
    Duplicate(&'static str),
    /// The script ended before the blank line that ends the head.
    Incomplete,
}

impl CgiError {
    /// The status the client gets: 502.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_GATEWAY
    }
}

impl fmt::Display for CgiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgiError::HeadTooLarge(n) => write!(f, "CGI response head longer than {n} bytes"),
            CgiError::TooManyHeaders => {
                write!(
                    f,
                    "CGI response has more than {MAX_CGI_HEADERS} header lines"
                )
            }
            CgiError::Malformed(why) => write!(f, "malformed CGI response head: {why}"),
            CgiError::BadStatus(s) => write!(
                f,
                "invalid CGI Status {s:?}: want e.g. `Status: 404 Not Found`"
            ),
            CgiError::BadLocation(s) => write!(
                f,
                "invalid CGI Location {s:?}: want /path or an absolute URI"
            ),
            CgiError::NoContentType => f.write_str("CGI document response without Content-Type"),
            CgiError::Duplicate(h) => write!(f, "CGI response gives {h} twice"),
            CgiError::Incomplete => {
                f.write_str("CGI script ended before the end of its response head")
            }
        }
    }
}

impl std::error::Error for CgiError {}

/// Parses a CGI response head from the script's output as it arrives.
///
/// ```
/// use rescon_httpd::cgi::{CgiHead, CgiHeadParser};
/// let mut p = CgiHeadParser::new(64 * 1024);
/// assert_eq!(p.feed(b"Status: 404 Not Found\nContent-Ty").unwrap(), None);
/// let (head, body) = p.feed(b"pe: text/plain\n\nno such page").unwrap().unwrap();
/// let CgiHead::Document { status, headers } = head else { panic!() };
/// assert_eq!(status.as_u16(), 404);
/// assert_eq!(headers["content-type"], "text/plain");
/// assert_eq!(body, b"no such page");
/// ```
#[derive(Debug)]
pub struct CgiHeadParser {
    buf: Vec<u8>,
    max: usize,
}

impl CgiHeadParser {
    /// A parser that refuses heads longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        CgiHeadParser {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds output. Returns `None` while the head is incomplete, then the head and the bytes
    /// after it (the start of the body). Call it no more once it returned the head.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(CgiHead, Vec<u8>)>, CgiError> {
        self.buf.extend_from_slice(data);
        let mut slots = [httparse::EMPTY_HEADER; MAX_CGI_HEADERS];
        let parsed = httparse::parse_headers(&self.buf, &mut slots);
        match parsed {
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > self.max {
                    Err(CgiError::HeadTooLarge(self.max))
                } else {
                    Ok(None)
                }
            }
            Ok(httparse::Status::Complete((n, lines))) => {
                if n > self.max {
                    return Err(CgiError::HeadTooLarge(self.max));
                }
                let head = classify(lines)?;
                let body = self.buf[n..].to_vec();
                self.buf.clear();
                Ok(Some((head, body)))
            }
            Err(httparse::Error::TooManyHeaders) => Err(CgiError::TooManyHeaders),
            Err(e) => Err(CgiError::Malformed(e.to_string())),
        }
    }

    /// The script's output ended: an error, since no complete head was seen.
    pub fn eof(&self) -> CgiError {
        CgiError::Incomplete
    }
}

/// Headers the script may not set: they belong to the connection, which is the server's.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
];

fn classify(lines: &[httparse::Header<'_>]) -> Result<CgiHead, CgiError> {
    let mut status: Option<StatusCode> = None;
    let mut location: Option<String> = None;
    let mut content_type = false;
    let mut headers = HeaderMap::new();
    for h in lines {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| CgiError::Malformed(format!("bad header name {:?}", h.name)))?;
        let value = trim(h.value);
        if name.as_str() == "status" {
            if status.is_some() {
                return Err(CgiError::Duplicate("Status"));
            }
            status = Some(parse_status(value)?);
            continue;
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let hv = HeaderValue::from_bytes(value)
            .map_err(|_| CgiError::Malformed(format!("bad value for header {name}")))?;
        if name == header::LOCATION {
            if location.is_some() {
                return Err(CgiError::Duplicate("Location"));
            }
            // A URI has no blank or control byte (RFC 3986), though a header value may: a
            // Location with one is refused rather than sent on or served.
            let text = hv
                .to_str()
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| CgiError::BadLocation(String::from_utf8_lossy(value).into()))?;
            location = Some(text.to_string());
        } else if name == header::CONTENT_TYPE {
            if content_type {
                return Err(CgiError::Duplicate("Content-Type"));
            }
            content_type = true;
        } else if name == header::CONTENT_LENGTH
            && (value.is_empty() || !value.iter().all(u8::is_ascii_digit))
        {
            return Err(CgiError::Malformed("Content-Length is not a number".into()));
        }
        headers.append(name, hv);
    }
    match location {
        Some(loc) if loc.starts_with('/') && !loc.starts_with("//") => {
            // A local redirect is the Location line alone (RFC 3875 6.2.2).
            Ok(CgiHead::LocalRedirect { location: loc })
        }
        Some(loc) => {
            if !is_absolute_uri(&loc) {
                return Err(CgiError::BadLocation(loc));
            }
            let status = status.unwrap_or(StatusCode::FOUND);
            if !status.is_redirection() {
                return Err(CgiError::BadStatus(format!(
                    "{} with Location (a redirect needs 3xx)",
                    status.as_u16()
                )));
            }
            Ok(CgiHead::ClientRedirect { status, headers })
        }
        None => {
            if !content_type {
                return Err(CgiError::NoContentType);
            }
            Ok(CgiHead::Document {
                status: status.unwrap_or(StatusCode::OK),
                headers,
            })
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end]
}

fn parse_status(v: &[u8]) -> Result<StatusCode, CgiError> {
    let bad = || CgiError::BadStatus(String::from_utf8_lossy(v).into_owned());
    let text = std::str::from_utf8(v).map_err(|_| bad())?;
    let code = text.split_ascii_whitespace().next().ok_or_else(bad)?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u16 = code.parse().map_err(|_| bad())?;
    if !(200..=599).contains(&n) {
        return Err(bad());
    }
    StatusCode::from_u16(n).map_err(|_| bad())
}

/// `scheme:rest` with a scheme of RFC 3986 (a letter, then letters, digits, `+`, `-`, `.`).
fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut b = scheme.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        && !rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &[u8]) -> Result<(CgiHead, Vec<u8>), CgiError> {
        let mut p = CgiHeadParser::new(4096);
        match p.feed(s)? {
            Some(r) => Ok(r),
            None => Err(p.eof()),
        }
    }

    fn doc(s: &[u8]) -> (StatusCode, HeaderMap, Vec<u8>) {
        match parse(s) {
            Ok((CgiHead::Document { status, headers }, body)) => (status, headers, body),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn documents() {
        let (s, h, b) = doc(b"Content-Type: text/html\n\n<p>hi</p>");
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html");
        assert_eq!(b, b"<p>hi</p>");
        let (s, h, b) =
            doc(b"Status: 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\n\r\n");
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert!(b.is_empty());
        let (s, _, _) = doc(b"status:404\ncontent-type:text/plain\n\n");
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "names are case-insensitive, spaces optional"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let (_, h, _) = doc(b"Content-Type: a/b\nConnection: close\nTransfer-Encoding: chunked\nContent-Length: 5\n\nhello");
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key(header::TRANSFER_ENCODING));
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn redirects() {
        match parse(b"Location: /other/page?x=1\n\n").unwrap().0 {
            CgiHead::LocalRedirect { location } => assert_eq!(location, "/other/page?x=1"),
            other => panic!("{other:?}"),
        }
        match parse(b"Location: https://example.com/\n\n").unwrap().0 {
            CgiHead::ClientRedirect { status, headers } => {
                assert_eq!(status, StatusCode::FOUND);
                assert_eq!(headers[header::LOCATION], "https://example.com/");
            }
            other => panic!("{other:?}"),
        }
        match parse(b"Status: 301 Moved\nLocation: http://a/\nContent-Type: text/html\n\nmoved")
            .unwrap()
        {
            (CgiHead::ClientRedirect { status, .. }, body) => {
                assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
                assert_eq!(body, b"moved");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(b"X-Foo: 1\n\nbody").unwrap_err(),
            CgiError::NoContentType
        );
        assert_eq!(parse(b"\n\nbody").unwrap_err(), CgiError::NoContentType);
        assert_eq!(
            parse(b"Content-Type: a/b\n").unwrap_err(),
            CgiError::Incomplete
        );
        assert_eq!(parse(b"").unwrap_err(), CgiError::Incomplete);
        assert!(matches!(
            parse(b"Status: 99 x\nContent-Type: a/b\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse(b"Status: abc\nContent-Type: a/b\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse(b"Status: 1000\nContent-Type: a/b\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse(b"Status: 200\nLocation: http://x/\n\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse(b"Location: nowhere\n\n"),
            Err(CgiError::BadLocation(_))
        ));
        assert!(matches!(
            parse(b"Location: //evil.example/\n\n"),
            Err(CgiError::BadLocation(_))
        ));
        assert!(matches!(
            parse(b"Bad Name: 1\n\n"),
            Err(CgiError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"A: b\n c\nContent-Type: a/b\n\n"),
            Err(CgiError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"Content-Type: a/b\nContent-Length: 12x\n\n"),
            Err(CgiError::Malformed(_))
        ));
        assert_eq!(
            parse(b"Content-Type: a/b\nContent-Type: c/d\n\n").unwrap_err(),
            CgiError::Duplicate("Content-Type")
        );
        assert_eq!(CgiError::NoContentType.status(), StatusCode::BAD_GATEWAY);
    }

    /// Found by the `cgi_response` fuzz target: a tab inside a Location (a header value may
    /// hold one, a URI may not) made a local redirect to `/\tther/page`.
    #[test]
    fn a_location_with_a_blank_or_control_byte_is_refused() {
        for loc in [
            &b"/\tther/page"[..],
            b"/a b",
            b"http://a/ b",
            b"http://a/\tx",
        ] {
            let mut input = b"Location: ".to_vec();
            input.extend_from_slice(loc);
            input.extend_from_slice(b"\nContent-Type: a/b\n\n");
            assert!(
                matches!(parse(&input), Err(CgiError::BadLocation(_))),
                "{:?}",
                String::from_utf8_lossy(loc)
            );
        }
        // DEL is refused already by the head parser.
        assert!(parse(b"Location: /a\x7f\nContent-Type: a/b\n\n").is_err());
    }

    #[test]
    fn limits() {
        let mut p = CgiHeadParser::new(64);
        assert_eq!(p.feed(&[b'X'; 40]).unwrap(), None);
        assert_eq!(p.feed(&[b'X'; 40]).unwrap_err(), CgiError::HeadTooLarge(64));
        let many: Vec<u8> = (0..=MAX_CGI_HEADERS)
            .flat_map(|i| format!("X-{i}: v\n").into_bytes())
            .collect();
        let mut p = CgiHeadParser::new(1 << 20);
        assert_eq!(p.feed(&many).unwrap_err(), CgiError::TooManyHeaders);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_result() {
        let input = b"Status: 203 Hm\r\nContent-Type: text/plain\r\nX-Y: z\r\n\r\nbody bytes";
        let whole = parse(input).unwrap();
        let mut p = CgiHeadParser::new(4096);
        let mut got = None;
        for (i, b) in input.iter().enumerate() {
            if let Some((head, mut body)) = p.feed(std::slice::from_ref(b)).unwrap() {
                body.extend_from_slice(&input[i + 1..]);
                got = Some((head, body));
                break;
            }
        }
        assert_eq!(got.unwrap(), whole);
    }

    proptest! {
        /// Any bytes, split anywhere: the parser never panics, and when it succeeds the body it
        /// returns is a suffix of the input.
        #[test]
        fn any_bytes_any_split(data in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
            let cut = cut.min(data.len());
            let mut p = CgiHeadParser::new(256);
            let r = match p.feed(&data[..cut]) {
                Ok(Some(r)) => Ok(Some(r)),
                Ok(None) => p.feed(&data[cut..]),
                Err(e) => Err(e),
            };
            if let Ok(Some((head, body))) = r {
                prop_assert!(data.ends_with(&body));
                if let CgiHead::Document { headers, .. } = head {
                    prop_assert!(headers.contains_key(header::CONTENT_TYPE));
                }
            }
        }

        #[test]
        fn structured_heads(lines in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..8)) {
            let mut input = Vec::new();
            for (k, v) in &lines {
                input.extend_from_slice(format!("{k}: {v}\n").as_bytes());
            }
            input.extend_from_slice(b"\nrest");
            let mut p = CgiHeadParser::new(1 << 16);
            if let Ok(Some((_, body))) = p.feed(&input) {
                prop_assert_eq!(body, b"rest".to_vec());
            }
        }
    }
}
