//! `admin`: requests to the admin API ([`Admin::handle`]), JSON and `key=value` bodies
//! included, against the container tree and filter table of the default configuration.
//!
//! The input is up to four requests separated by `\n;;\n`, each a method byte, the target up
//! to the first newline, and the body; they run in order against one fresh API, so a request
//! meets the state the ones before it left. Properties:
//!
//! - every answer is one of the statuses the API documents (never a 500);
//! - a JSON answer parses, and an error's body says what went wrong in `error`;
//! - a refused change leaves the container's attributes as they were.

use rescon::Registry;
use rescon_httpd::admin::{Admin, FilterTable};
use rescon_httpd::config::{Config, LiveTree};
use std::sync::{Arc, OnceLock};

/// The target.
pub const TARGET: crate::Target = crate::Target {
    name: "admin",
    about: "admin API requests: method, target, JSON or key=value bodies, in sequence",
    run,
    dictionary: &[
        b"\n",
        b"\n;;\n",
        b"/containers",
        b"/containers/",
        b"/containers/1",
        b"/containers/cgi",
        b"/containers/clients/premium",
        b"?depth=",
        b"?depth=all",
        b"/filters",
        b"/filters/move",
        b"/metrics",
        b"{",
        b"}",
        b"\"",
        b"\": \"",
        b", ",
        b"null",
        b"true",
        b"[]",
        b"{\"prefix\": \"10.1.0.0/16\", \"to\": \"black-hole\", \"listener\": \"web\"}",
        b"{\"cpu_limit\": \"20%\"}",
        b"cpu_limit=",
        b"share=fixed:",
        b"share=weight:",
        b"priority=",
        b"class=",
        b"max_connections=",
        b"enforcement=",
        b"=",
        b"&",
        b"%",
        b"\\u0000",
        b"\\ud800",
        b"1e999",
    ],
};

const METHODS: [http::Method; 6] = [
    http::Method::GET,
    http::Method::PATCH,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::HEAD,
];

/// What the API answers with, per its module docs.
const STATUSES: [u16; 8] = [200, 400, 401, 403, 404, 405, 409, 422];

fn run(data: &[u8]) {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG.get_or_init(Config::default_config);
    let registry = Registry::new();
    let live = LiveTree::build(&registry, &config.tree).expect("the default tree builds");
    let filters = FilterTable::from_config(&config.listeners, |p| live.get(p).map(|c| c.id()));
    let admin = Admin::new(registry.root(), Arc::new(filters));
    admin.set_declared(&live);
    let mut rest = data;
    for _ in 0..4 {
        let (req, next) = match find(rest, b"\n;;\n") {
            Some(i) => (&rest[..i], Some(&rest[i + 4..])),
            None => (rest, None),
        };
        one(&admin, &live, req);
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn one(admin: &Admin, live: &LiveTree, req: &[u8]) {
    let Some((&m, req)) = req.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    let (target, body) = match req.iter().position(|&b| b == b'\n') {
        Some(i) => (&req[..i], &req[i + 1..]),
        None => (req, &b""[..]),
    };
    let target = String::from_utf8_lossy(target);
    let before: Vec<_> = live.iter().map(|(p, c)| (p.clone(), c.attrs())).collect();
    let r = admin.handle(method, &target, body);
    let status = r.status.as_u16();
    assert!(
        STATUSES.contains(&status),
        "{method} {target:?}: status {status}: {}",
        String::from_utf8_lossy(&r.body)
    );
    if r.content_type == "application/json" {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "{method} {target:?}: the answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&r.body)
            )
        });
        if status >= 400 {
            assert!(
                v.get("error")
                    .is_some_and(|e| e.as_str().is_some_and(|s| !s.is_empty())),
                "{method} {target:?}: error without a message: {v}"
            );
        }
    } else {
        assert!(std::str::from_utf8(&r.body).is_ok(), "metrics are text");
    }
    if status >= 400 {
        let after: Vec<_> = live.iter().map(|(p, c)| (p.clone(), c.attrs())).collect();
        assert_eq!(
            before, after,
            "{method} {target:?} was refused ({status}) but changed attributes"
        );
    }
}
