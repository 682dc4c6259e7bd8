//! `host`: the `Host` header as the server uses it today: [`normalize_host`] and the choice of
//! a vhost ([`Config::vhost_for`]), then routing the path that follows it on the first line.
//!
//! The server takes the header out of the request in its request path (`server/`), which
//! issue 19 is rewriting; once that lands, this target should feed the whole extraction
//! (`Host` against an absolute-form target's authority, repeated `Host` fields, an empty
//! one) and not only what follows it. Properties today:
//!
//! - a normalized host has no ASCII capital, no port after a name, and no trailing dot;
//! - every spelling of a name the default configuration serves (case, trailing dot, a port)
//!   reaches the same vhost as the name itself;
//! - routing never panics, and a routed static path is normalized.

use super::text;
use rescon_httpd::config::{Config, normalize_host};
use rescon_httpd::routing::{Target, route};
use std::sync::OnceLock;

/// The target.
pub const TARGET: crate::Target = crate::Target {
    name: "host",
    about: "Host header normalization and the vhost it selects, then routing",
    run,
    dictionary: &[
        b"\n",
        b":",
        b":80",
        b":8080",
        b".",
        b"[",
        b"]",
        b"[::1]",
        b"localhost",
        b"LOCALHOST",
        b"127.0.0.1",
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
    let (host, path) = input.split_once('\n').unwrap_or((&input, "/"));
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
    if let Ok(r) = route(config, Some(host), path) {
        if let Target::Static(rel) = r.target {
            assert!(rel.segments().iter().all(|s| s != ".." && !s.is_empty()));
        }
    }
}
