//! `host`: the host a request names, as the server's request path takes it
//! ([`request_host`]: `Host` fields against an absolute-form target's authority), then
//! [`normalize_host`], the vhost it selects ([`Config::vhost_for`]) and routing the path.
//!
//! The input is lines: the first `Host` field (`-`: none), the request target (`/path`, or
//! absolute-form `http://authority/path`), then any further `Host` fields. Properties:
//!
//! - an HTTP/1.1 request without a `Host` field, or with more than one, is refused, whatever
//!   the target; an HTTP/1.0 one without it is not;
//! - a host taken is valid (`host[:port]`: no whitespace, control byte, `/`, `@`), and is the
//!   target's authority when there is one, else the one field;
//! - a normalized host has no ASCII capital, no port after a name, and no trailing dot;
//! - every spelling of a name the default configuration serves (case, trailing dot, a port)
//!   reaches the same vhost as the name itself;
//! - routing never panics, and a routed static path is normalized.

use super::text;
use rescon_httpd::config::{Config, normalize_host};
use rescon_httpd::routing::{HostError, Target, request_host, route, valid_host};
use std::sync::OnceLock;

/// The target.
pub const TARGET: crate::Target = crate::Target {
    name: "host",
    about: "the request's host (Host fields, absolute-form authority), normalized, its vhost, then routing",
    run,
    dictionary: &[
        b"\n",
        b"\n-\n",
        b":",
        b":80",
        b":8080",
        b".",
        b"[",
        b"]",
        b"[::1]",
        b"@",
        b"%41",
        b"localhost",
        b"LOCALHOST",
        b"127.0.0.1",
        b"http://",
        b"http://b.test/",
        b"http://u@a/",
        b" ",
        b"\t",
        b"/cgi-bin/",
        b"/",
        b"%2e",
    ],
};

fn run(data: &[u8]) {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG.get_or_init(Config::default_config);
    let input = text(data);
    let mut lines = input.split('\n');
    let first = lines.next().unwrap_or("");
    let target = lines.next().unwrap_or("/");
    let more: Vec<&str> = lines.collect();
    let fields: Vec<&[u8]> = (first != "-")
        .then_some(first)
        .into_iter()
        .chain(more.iter().copied())
        .map(str::as_bytes)
        .collect();
    // Absolute-form: the authority and the path after it.
    let (authority, path) = match target.strip_prefix("http://") {
        Some(rest) => {
            let end = rest.find('/').unwrap_or(rest.len());
            (
                Some(&rest[..end]),
                rest.get(end..).filter(|p| !p.is_empty()).unwrap_or("/"),
            )
        }
        None => (None, target),
    };
    let taken = request_host(true, authority, fields.iter().copied());
    match fields.len() {
        0 => assert_eq!(taken, Err(HostError::Missing), "{input:?}"),
        1 => {}
        _ => assert_eq!(taken, Err(HostError::Repeated), "{input:?}"),
    }
    let http10 = request_host(false, authority, fields.iter().copied());
    if fields.is_empty() {
        match authority {
            None => assert_eq!(http10, Ok(None)),
            Some(a) => assert_eq!(http10.is_ok(), valid_host(a.as_bytes()), "{a:?}"),
        }
    }
    if let Ok(Some(h)) = taken {
        assert!(valid_host(h.as_bytes()), "{h:?} taken from {input:?}");
        assert!(
            !h.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/' || b == b'@'),
            "{h:?} taken from {input:?}"
        );
        match authority {
            Some(a) => assert_eq!(h, a, "the target's authority wins"),
            None => assert_eq!(h.as_bytes(), fields[0].trim_ascii()),
        }
        check_normalized(config, h);
        if let Ok(r) = route(config, Some(h), path) {
            if let Target::Static(rel) = r.target {
                assert!(rel.segments().iter().all(|s| s != ".." && !s.is_empty()));
            }
        }
    }
    // Normalization holds for any text, taken or not (the config's own lookups use it).
    check_normalized(config, first);
}

/// A normalized host has no capital, and every spelling of a plain name reaches one vhost.
fn check_normalized(config: &Config, host: &str) {
    let n = normalize_host(host);
    assert!(
        !n.bytes().any(|b| b.is_ascii_uppercase()),
        "{host:?} normalized to {n:?}"
    );
    let plain_name = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if plain_name {
        assert!(!n.ends_with('.'), "{host:?} normalized to {n:?}");
        let by_name = config.vhost_for(Some(&n)).map(|v| &v.name);
        for spelled in [
            host.to_ascii_uppercase(),
            format!("{host}:8080"),
            format!("{}.", host.trim_end_matches('.')),
        ] {
            assert_eq!(
                config.vhost_for(Some(&spelled)).map(|v| &v.name),
                by_name,
                "{spelled:?} and {n:?} reach different vhosts"
            );
        }
    }
}
