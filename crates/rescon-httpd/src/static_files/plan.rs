//! The decision for a static file, as a pure function of the request and the file's metadata:
//! conditional requests (RFC 9110 section 13), ranges (section 14), HEAD and the validators.
//!
//! Preconditions are evaluated in the order of RFC 9110 13.2.2: `If-Match`, else
//! `If-Unmodified-Since`; then `If-None-Match`, else `If-Modified-Since` (GET and HEAD); then
//! `Range` for GET, subject to `If-Range`. A single range (`a-b`, `a-`, `-n`) gets 206; a range
//! that cannot be satisfied gets 416 with `Content-Range: bytes */len`; several ranges, a
//! malformed header or a unit other than `bytes` are ignored and the whole file is sent, as the
//! RFC allows (multipart/byteranges is not implemented).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the decision needs to know about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes.
    pub len: u64,
    /// Modification time, if known.
    pub modified: Option<SystemTime>,
    /// Inode number (part of the entity tag, so a replaced file gets a new tag).
    pub inode: u64,
    /// The `Content-Type` to send.
    pub content_type: HeaderValue,
}

impl FileMeta {
    /// The strong entity tag: inode, size and modification time in nanoseconds, in hex.
    pub fn etag(&self) -> String {
        let ns = self
            .modified
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("\"{:x}-{:x}-{:x}\"", self.inode, self.len, ns)
    }

    /// The modification time truncated to seconds, as HTTP dates carry it.
    fn modified_secs(&self) -> Option<SystemTime> {
        let d = self.modified?.duration_since(UNIX_EPOCH).ok()?;
        Some(UNIX_EPOCH + Duration::from_secs(d.as_secs()))
    }
}

/// Which bytes of the file to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyPlan {
    /// No body (HEAD, 304, 412, 416, 405).
    Empty,
    /// The whole file.
    Full,
    /// Bytes `start..end` (end exclusive).
    Range {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
}

/// The response to give: status, headers, and what to send.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponsePlan {
    /// The status.
    pub status: StatusCode,
    /// Headers to send (validators, type, length, range).
    pub headers: HeaderMap,
    /// The body.
    pub body: BodyPlan,
}

/// Decides the response for a GET or HEAD of a file. See the module docs.
///
/// ```
/// use http::{HeaderMap, Method, StatusCode, header};
/// use rescon_httpd::static_files::{plan, BodyPlan, FileMeta};
/// let meta = FileMeta { len: 1000, modified: None, inode: 7,
///     content_type: header::HeaderValue::from_static("text/plain") };
/// let mut h = HeaderMap::new();
/// h.insert(header::RANGE, "bytes=-100".parse().unwrap());
/// let p = plan(&Method::GET, &h, &meta);
/// assert_eq!(p.status, StatusCode::PARTIAL_CONTENT);
/// assert_eq!(p.body, BodyPlan::Range { start: 900, end: 1000 });
/// assert_eq!(p.headers[header::CONTENT_RANGE], "bytes 900-999/1000");
/// ```
pub fn plan(method: &Method, req: &HeaderMap, meta: &FileMeta) -> ResponsePlan {
    plan_with(method, req, meta, &Validators::of(meta))
}

/// A file's validators, formatted once: its entity tag and its `Last-Modified` date as header
/// values. Formatting them was a good part of what planning a response cost, so the file
/// cache keeps them with the file and plans with [`plan_with`].
#[derive(Clone, Debug)]
pub struct Validators {
    etag: HeaderValue,
    last_modified: Option<HeaderValue>,
}

impl Validators {
    /// `meta`'s validators.
    pub fn of(meta: &FileMeta) -> Validators {
        Validators {
            etag: HeaderValue::from_str(&meta.etag()).expect("hex is a valid header value"),
            last_modified: meta.modified_secs().map(|m| {
                HeaderValue::from_str(&httpdate::fmt_http_date(m)).expect("a date is valid")
            }),
        }
    }
}

/// [`plan`] with `meta`'s validators already formatted (`v` must be `Validators::of(meta)`).
pub fn plan_with(
    method: &Method,
    req: &HeaderMap,
    meta: &FileMeta,
    v: &Validators,
) -> ResponsePlan {
    let mut headers = HeaderMap::new();
    let is_get_head = method == Method::GET || method == Method::HEAD;
    if !is_get_head {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return ResponsePlan {
            status: StatusCode::METHOD_NOT_ALLOWED,
            headers,
            body: BodyPlan::Empty,
        };
    }
    let etag = v.etag.to_str().expect("an entity tag is text");
    let last_modified = meta.modified_secs();
    let validators = |h: &mut HeaderMap| {
        h.insert(header::ETAG, v.etag.clone());
        if let Some(value) = &v.last_modified {
            h.insert(header::LAST_MODIFIED, value.clone());
        }
    };
    let status_only = |status: StatusCode, h: HeaderMap| ResponsePlan {
        status,
        headers: h,
        body: BodyPlan::Empty,
    };

    // 1 and 2: If-Match, else If-Unmodified-Since.
    if let Some(im) = header_str(req, &header::IF_MATCH) {
        if !etag_list_matches(im, etag, true) {
            return status_only(StatusCode::PRECONDITION_FAILED, headers);
        }
    } else if let Some(ius) = header_date(req, &header::IF_UNMODIFIED_SINCE) {
        if last_modified.is_none_or(|m| m > ius) {
            return status_only(StatusCode::PRECONDITION_FAILED, headers);
        }
    }
    // 3 and 4: If-None-Match, else If-Modified-Since.
    if let Some(inm) = header_str(req, &header::IF_NONE_MATCH) {
        if etag_list_matches(inm, etag, false) {
            validators(&mut headers);
            return status_only(StatusCode::NOT_MODIFIED, headers);
        }
    } else if let Some(ims) = header_date(req, &header::IF_MODIFIED_SINCE) {
        if last_modified.is_some_and(|m| m <= ims) {
            validators(&mut headers);
            return status_only(StatusCode::NOT_MODIFIED, headers);
        }
    }

    validators(&mut headers);
    headers.insert(header::CONTENT_TYPE, meta.content_type.clone());
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let body = if method == Method::HEAD {
        BodyPlan::Empty
    } else {
        BodyPlan::Full
    };

    // 5: Range, for GET, if If-Range (when present) still holds.
    let range = if method == Method::GET {
        header_str(req, &header::RANGE)
    } else {
        None
    };
    let if_range_holds = match req.get(header::IF_RANGE).map(|v| v.to_str()) {
        None => true,
        Some(Err(_)) => false,
        Some(Ok(v)) => {
            let v = v.trim();
            if v.starts_with('"') || v.starts_with("W/") {
                strong_eq(v, etag)
            } else {
                httpdate::parse_http_date(v)
                    .ok()
                    .is_some_and(|d| Some(d) == last_modified)
            }
        }
    };
    if let (Some(r), true) = (range, if_range_holds) {
        match parse_range(r, meta.len) {
            RangeSpec::One(start, end) => {
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, meta.len))
                        .expect("digits are valid"),
                );
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
                return ResponsePlan {
                    status: StatusCode::PARTIAL_CONTENT,
                    headers,
                    body: BodyPlan::Range { start, end },
                };
            }
            RangeSpec::Unsatisfiable => {
                let mut h = HeaderMap::new();
                validators(&mut h);
                h.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", meta.len)).expect("digits"),
                );
                return status_only(StatusCode::RANGE_NOT_SATISFIABLE, h);
            }
            RangeSpec::Ignore => {}
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len));
    ResponsePlan {
        status: StatusCode::OK,
        headers,
        body,
    }
}

/// The request headers that [`plan_with`] reads (besides the method).
const PLAN_HEADERS: [header::HeaderName; 6] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// Whether [`plan_with`] answers this request as it answers a bare `GET`: a `GET` or `HEAD`
/// without a conditional or range header, which is most requests. Its headers can then be
/// made once per file and reused (the status is 200; the body the whole file, none for
/// `HEAD`).
pub fn is_plain(method: &Method, req: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !req.keys().any(|k| PLAN_HEADERS.contains(k))
}

fn header_str<'a>(h: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    // Several fields of one name form one comma-separated list; only the first is used for
    // these headers, and one that is not text is ignored, as if absent.
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_date(h: &HeaderMap, name: &header::HeaderName) -> Option<SystemTime> {
    header_str(h, name).and_then(|v| httpdate::parse_http_date(v.trim()).ok())
}

/// Strong comparison: both tags strong and equal.
fn strong_eq(a: &str, b: &str) -> bool {
    !a.starts_with("W/") && !b.starts_with("W/") && a == b
}

/// Whether a list of entity tags (or `*`) matches `current` (which is strong).
fn etag_list_matches(list: &str, current: &str, strong: bool) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    list.split(',').map(str::trim).any(|tag| {
        if strong {
            strong_eq(tag, current)
        } else {
            tag.strip_prefix("W/").unwrap_or(tag) == current
        }
    })
}

/// A parsed `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// One satisfiable range, `start..end`.
    One(u64, u64),
    /// Syntactically fine, but no byte of it is in the file.
    Unsatisfiable,
    /// Malformed, another unit, or several ranges: send the whole file.
    Ignore,
}

/// Parses a `Range` header against a file of `len` bytes.
pub fn parse_range(v: &str, len: u64) -> RangeSpec {
    let v = v.trim();
    let Some((unit, set)) = v.split_once('=') else {
        return RangeSpec::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeSpec::Ignore;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.len() != 1 {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = specs[0].split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Absurdly large numbers are still numbers: saturate rather than refuse.
        Some(s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeSpec::Ignore,
        (true, false) => match num(b) {
            None => RangeSpec::Ignore,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if len == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::One(len.saturating_sub(n), len),
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeSpec::Ignore;
            };
            let last = if b.is_empty() {
                u64::MAX
            } else {
                match num(b) {
                    Some(l) if l >= start => l,
                    _ => return RangeSpec::Ignore,
                }
            };
            if start >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::One(start, last.saturating_add(1).min(len))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> FileMeta {
        FileMeta {
            len: 1000,
            modified: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)),
            inode: 0xabc,
            content_type: HeaderValue::from_static("text/html; charset=utf-8"),
        }
    }

    fn req(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), v.parse().unwrap());
        }
        h
    }

    fn get(pairs: &[(header::HeaderName, &str)]) -> ResponsePlan {
        plan(&Method::GET, &req(pairs), &meta())
    }

    const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

    #[test]
    fn a_plain_request_gets_a_bare_gets_headers() {
        let bare = plan(&Method::GET, &HeaderMap::new(), &meta());
        // The method, the request's headers, and whether it is plain.
        type Case<'a> = (Method, &'a [(header::HeaderName, &'a str)], bool);
        let cases: &[Case<'_>] = &[
            (Method::GET, &[], true),
            (Method::HEAD, &[], true),
            (
                Method::GET,
                &[(header::USER_AGENT, "x"), (header::ACCEPT, "*/*")],
                true,
            ),
            (Method::POST, &[], false),
            (Method::GET, &[(header::RANGE, "bytes=0-1")], false),
            (Method::GET, &[(header::IF_NONE_MATCH, "\"x\"")], false),
            (Method::GET, &[(header::IF_MATCH, "\"x\"")], false),
            (Method::GET, &[(header::IF_MODIFIED_SINCE, LM)], false),
            (Method::GET, &[(header::IF_UNMODIFIED_SINCE, LM)], false),
            (Method::GET, &[(header::IF_RANGE, LM)], false),
        ];
        for (method, pairs, plain) in cases {
            let h = req(pairs);
            assert_eq!(is_plain(method, &h), *plain, "{method} {pairs:?}");
            if *plain {
                let p = plan(method, &h, &meta());
                assert_eq!(p.status, StatusCode::OK);
                assert_eq!(p.headers, bare.headers, "{method} {pairs:?}");
            }
        }
    }

    #[test]
    fn plain_get_and_head() {
        let p = get(&[]);
        assert_eq!(p.status, StatusCode::OK);
        assert_eq!(p.body, BodyPlan::Full);
        assert_eq!(p.headers[header::CONTENT_LENGTH], "1000");
        assert_eq!(p.headers[header::LAST_MODIFIED], LM);
        assert_eq!(p.headers[header::ETAG], meta().etag());
        assert_eq!(p.headers[header::ACCEPT_RANGES], "bytes");
        let h = plan(&Method::HEAD, &HeaderMap::new(), &meta());
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.body, BodyPlan::Empty);
        assert_eq!(h.headers, p.headers, "HEAD gives GET's headers");
    }

    #[test]
    fn other_methods_are_not_allowed() {
        let p = plan(&Method::POST, &HeaderMap::new(), &meta());
        assert_eq!(p.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(p.headers[header::ALLOW], "GET, HEAD");
    }

    #[test]
    fn if_none_match() {
        let tag = meta().etag();
        let p = get(&[(header::IF_NONE_MATCH, &format!("\"x\", W/{tag}"))]);
        assert_eq!(p.status, StatusCode::NOT_MODIFIED, "weak comparison");
        assert_eq!(p.body, BodyPlan::Empty);
        assert!(p.headers.contains_key(header::ETAG));
        assert!(!p.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(
            get(&[(header::IF_NONE_MATCH, "*")]).status,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            get(&[(header::IF_NONE_MATCH, "\"other\"")]).status,
            StatusCode::OK
        );
        // If-None-Match takes precedence over If-Modified-Since.
        let p = get(&[
            (header::IF_NONE_MATCH, "\"other\""),
            (header::IF_MODIFIED_SINCE, LM),
        ]);
        assert_eq!(p.status, StatusCode::OK);
    }

    #[test]
    fn if_modified_since() {
        assert_eq!(
            get(&[(header::IF_MODIFIED_SINCE, LM)]).status,
            StatusCode::NOT_MODIFIED
        );
        let later = "Wed, 15 Nov 2023 00:00:00 GMT";
        assert_eq!(
            get(&[(header::IF_MODIFIED_SINCE, later)]).status,
            StatusCode::NOT_MODIFIED
        );
        let earlier = "Tue, 14 Nov 2023 22:13:19 GMT";
        assert_eq!(
            get(&[(header::IF_MODIFIED_SINCE, earlier)]).status,
            StatusCode::OK
        );
        assert_eq!(
            get(&[(header::IF_MODIFIED_SINCE, "garbage")]).status,
            StatusCode::OK
        );
        let p = plan(
            &Method::HEAD,
            &req(&[(header::IF_MODIFIED_SINCE, LM)]),
            &meta(),
        );
        assert_eq!(p.status, StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn if_match_and_if_unmodified_since() {
        let tag = meta().etag();
        assert_eq!(get(&[(header::IF_MATCH, &tag)]).status, StatusCode::OK);
        assert_eq!(get(&[(header::IF_MATCH, "*")]).status, StatusCode::OK);
        assert_eq!(
            get(&[(header::IF_MATCH, &format!("W/{tag}"))]).status,
            StatusCode::PRECONDITION_FAILED,
            "strong comparison"
        );
        assert_eq!(
            get(&[(header::IF_UNMODIFIED_SINCE, "Mon, 13 Nov 2023 00:00:00 GMT")]).status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            get(&[(header::IF_UNMODIFIED_SINCE, LM)]).status,
            StatusCode::OK
        );
        // If-Match wins over If-Unmodified-Since.
        let p = get(&[
            (header::IF_MATCH, &tag),
            (header::IF_UNMODIFIED_SINCE, "Mon, 13 Nov 2023 00:00:00 GMT"),
        ]);
        assert_eq!(p.status, StatusCode::OK);
    }

    #[test]
    fn ranges() {
        let p = get(&[(header::RANGE, "bytes=0-99")]);
        assert_eq!(p.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(p.body, BodyPlan::Range { start: 0, end: 100 });
        assert_eq!(p.headers[header::CONTENT_RANGE], "bytes 0-99/1000");
        assert_eq!(p.headers[header::CONTENT_LENGTH], "100");
        let p = get(&[(header::RANGE, "bytes=990-")]);
        assert_eq!(
            p.body,
            BodyPlan::Range {
                start: 990,
                end: 1000
            }
        );
        let p = get(&[(header::RANGE, "bytes=990-5000")]);
        assert_eq!(
            p.body,
            BodyPlan::Range {
                start: 990,
                end: 1000
            }
        );
        let p = get(&[(header::RANGE, "bytes=-5000")]);
        assert_eq!(
            p.body,
            BodyPlan::Range {
                start: 0,
                end: 1000
            }
        );
        let p = get(&[(header::RANGE, "bytes=1000-")]);
        assert_eq!(p.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(p.headers[header::CONTENT_RANGE], "bytes */1000");
        assert_eq!(p.body, BodyPlan::Empty);
        assert_eq!(
            get(&[(header::RANGE, "bytes=-0")]).status,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        for ignored in [
            "bytes=5-1",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=x-",
            "bytes",
            "bytes=-",
        ] {
            let p = get(&[(header::RANGE, ignored)]);
            assert_eq!(p.status, StatusCode::OK, "{ignored}");
            assert_eq!(p.body, BodyPlan::Full, "{ignored}");
        }
        let p = plan(
            &Method::HEAD,
            &req(&[(header::RANGE, "bytes=0-1")]),
            &meta(),
        );
        assert_eq!(p.status, StatusCode::OK, "Range applies to GET only");
    }

    #[test]
    fn range_on_an_empty_file() {
        let mut m = meta();
        m.len = 0;
        let p = plan(&Method::GET, &req(&[(header::RANGE, "bytes=0-")]), &m);
        assert_eq!(p.status, StatusCode::RANGE_NOT_SATISFIABLE);
        let p = plan(&Method::GET, &req(&[(header::RANGE, "bytes=-10")]), &m);
        assert_eq!(p.status, StatusCode::RANGE_NOT_SATISFIABLE);
    }

    #[test]
    fn if_range() {
        let tag = meta().etag();
        let p = get(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, &tag)]);
        assert_eq!(p.status, StatusCode::PARTIAL_CONTENT);
        let p = get(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, "\"old\"")]);
        assert_eq!(p.status, StatusCode::OK, "a changed file is sent whole");
        let p = get(&[
            (header::RANGE, "bytes=0-9"),
            (header::IF_RANGE, &format!("W/{tag}")),
        ]);
        assert_eq!(
            p.status,
            StatusCode::OK,
            "a weak tag never validates a range"
        );
        let p = get(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, LM)]);
        assert_eq!(p.status, StatusCode::PARTIAL_CONTENT);
        let p = get(&[
            (header::RANGE, "bytes=0-9"),
            (header::IF_RANGE, "Mon, 13 Nov 2023 00:00:00 GMT"),
        ]);
        assert_eq!(p.status, StatusCode::OK);
    }

    #[test]
    fn etag_changes_with_the_file() {
        let a = meta();
        let mut b = meta();
        b.len += 1;
        let mut c = meta();
        c.modified = Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_001));
        let mut d = meta();
        d.inode += 1;
        let tags = [a.etag(), b.etag(), c.etag(), d.etag()];
        for i in 0..tags.len() {
            for j in i + 1..tags.len() {
                assert_ne!(tags[i], tags[j]);
            }
        }
    }

    #[test]
    fn range_parser_never_panics_on_big_numbers() {
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 10),
            RangeSpec::Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 10),
            RangeSpec::One(0, 10)
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999", 10),
            RangeSpec::One(0, 10)
        );
    }
}
