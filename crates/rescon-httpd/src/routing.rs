//! Where a request goes, as pure functions of the configuration: its vhost by Host header,
//! then a static file or a script under a CGI prefix by its path. The server's dispatch stage
//! applies [`route_in`] over its compiled site; where the work is charged is the placement
//! stage's rule (`server/placement.rs`).

use crate::cgi::under_prefix;
use crate::config::{CgiPrefix, Config, VhostConfig};
use crate::static_files::{PathError, RelPath, normalize};

/// What a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Target<'c> {
    /// A file under the vhost's document root.
    Static(RelPath),
    /// A script under a CGI prefix; `rest` is the path after the prefix.
    Cgi {
        /// The prefix.
        prefix: &'c CgiPrefix,
        /// The path after the prefix.
        rest: RelPath,
    },
}

/// A routed request.
#[derive(Clone, Debug, PartialEq)]
pub struct Route<'c> {
    /// The virtual host.
    pub vhost: &'c VhostConfig,
    /// What it asks for.
    pub target: Target<'c>,
}

/// Why a request cannot be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// The configuration has no vhost.
    NoVhost,
    /// The path was refused ([`normalize`]).
    Path(PathError),
}

impl RouteError {
    /// The status to answer with.
    pub fn status(self) -> http::StatusCode {
        match self {
            RouteError::NoVhost => http::StatusCode::MISDIRECTED_REQUEST,
            RouteError::Path(p) => p.status(),
        }
    }
}

/// Routes a request by its Host header and path (percent-encoded, without query). The path is
/// normalized once, and CGI prefixes are matched on the normalized segments, so no encoding of
/// a prefix reaches the static file handler (which would send a script's source).
///
/// ```
/// use rescon_httpd::config::Config;
/// use rescon_httpd::routing::{route, Target};
/// let config = Config::default_config();
/// let r = route(&config, Some("localhost:8080"), "/cgi%2dbin/hello.sh/x").unwrap();
/// assert!(matches!(r.target, Target::Cgi { .. }));
/// ```
pub fn route<'c>(
    config: &'c Config,
    host: Option<&str>,
    path: &str,
) -> Result<Route<'c>, RouteError> {
    route_in(config.vhost_for(host).ok_or(RouteError::NoVhost)?, path)
}

/// [`route`] within a vhost already chosen.
pub fn route_in<'c>(vhost: &'c VhostConfig, path: &str) -> Result<Route<'c>, RouteError> {
    let rel = normalize(path).map_err(RouteError::Path)?;
    // The longest prefix wins when prefixes nest.
    let mut best: Option<(&CgiPrefix, RelPath, usize)> = None;
    for p in &vhost.cgi {
        if let Some(rest) = under_prefix(&p.prefix, &rel) {
            let len = p.prefix.len();
            if best.as_ref().is_none_or(|(_, _, l)| len > *l) {
                best = Some((p, rest, len));
            }
        }
    }
    let target = match best {
        Some((prefix, rest, _)) => Target::Cgi { prefix, rest },
        None => Target::Static(rel),
    };
    Ok(Route { vhost, target })
}

/// Why a request's host is refused (400, RFC 9112 3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// An HTTP/1.1 request without a `Host` field.
    Missing,
    /// More than one `Host` field.
    Repeated,
    /// A `Host` field, or an absolute-form target's authority, that is not `host[:port]`.
    Invalid,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostError::Missing => "an HTTP/1.1 request needs a Host header",
            HostError::Repeated => "more than one Host header",
            HostError::Invalid => "invalid Host header or target authority",
        })
    }
}

/// The host a request names, one way only (RFC 9112 3.2 and 3.2.2): an HTTP/1.1 request must
/// have exactly one `Host` field, valid as `host[:port]` (RFC 9110 7.2; empty is allowed);
/// an HTTP/1.0 one at most one. An absolute-form target's authority (`GET http://b.test/x`)
/// wins over the field, and must be valid too (no userinfo). `None`: no host at all (an
/// HTTP/1.0 request without the field, or an empty one), which the default vhost serves.
///
/// ```
/// use rescon_httpd::routing::{HostError, request_host};
/// assert_eq!(request_host(true, None, [&b"a.test:8080"[..]]), Ok(Some("a.test:8080")));
/// assert_eq!(request_host(true, Some("b.test"), [&b"a.test"[..]]), Ok(Some("b.test")));
/// assert_eq!(request_host(true, None, []), Err(HostError::Missing));
/// assert_eq!(request_host(false, None, []), Ok(None));
/// assert_eq!(request_host(true, None, [&b"a"[..], b"b"]), Err(HostError::Repeated));
/// assert_eq!(request_host(true, None, [&b"a/../b"[..]]), Err(HostError::Invalid));
/// ```
pub fn request_host<'a>(
    http11: bool,
    target_authority: Option<&'a str>,
    fields: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<&'a str>, HostError> {
    let mut fields = fields.into_iter();
    let field = match (fields.next(), fields.next()) {
        (_, Some(_)) => return Err(HostError::Repeated),
        (None, _) if http11 => return Err(HostError::Missing),
        (None, _) => None,
        (Some(f), None) => {
            let f = f.trim_ascii();
            if !valid_host(f) {
                return Err(HostError::Invalid);
            }
            // Valid is ASCII.
            Some(std::str::from_utf8(f).map_err(|_| HostError::Invalid)?)
        }
    };
    let host = match target_authority {
        Some(a) if !valid_host(a.as_bytes()) => return Err(HostError::Invalid),
        Some(a) => Some(a),
        None => field,
    };
    Ok(host.filter(|h| !h.is_empty()))
}

/// Whether `b` is `uri-host [ ":" port ]` (RFC 3986 3.2.2, 3.2.3): a reg-name (unreserved,
/// percent-encoded and sub-delimiter characters), an IPv4 address, or a bracketed IP literal;
/// then digits after a colon. No userinfo, no path, no whitespace.
pub fn valid_host(b: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(lit) = b.strip_prefix(b"[") {
        match lit.iter().position(|&c| c == b']') {
            Some(end) => {
                let inner = &lit[..end];
                let ok = !inner.is_empty()
                    && inner.iter().all(|&c| {
                        c.is_ascii_hexdigit() || c == b':' || c == b'.' || is_unreserved_or_sub(c)
                    });
                (ok, &lit[end + 1..])
            }
            None => (false, &[][..]),
        }
    } else {
        let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        let name = &b[..end];
        let mut ok = true;
        let mut i = 0;
        while i < name.len() {
            let c = name[i];
            if c == b'%' {
                ok &= name
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                i += 3;
                continue;
            }
            ok &= is_unreserved_or_sub(c);
            i += 1;
        }
        (ok, &b[end..])
    };
    host_ok
        && match rest.split_first() {
            None => true,
            Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

fn is_unreserved_or_sub(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "t.toml",
            r#"
[containers.premium]
class = "high"
[containers.rest]
[containers.cgi]
cpu_limit = "30%"
[containers.cgi-admin]
[containers.a]
share = "50%"
[containers.a.premium]
class = "high"
[containers.b]
share = "30%"
[[listener]]
address = "127.0.0.1"
port = 8080
[[listener.class]]
name = "premium"
container = "premium"
prefixes = ["127.0.0.2"]
[[listener.class]]
name = "rest"
container = "rest"
except = []
[[vhost]]
name = "a"
hosts = ["a.test"]
root = "/srv/a"
container = "a"
[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "/srv/a-cgi"
container = "cgi"
[[vhost.cgi]]
prefix = "/cgi-bin/admin/"
dir = "/srv/a-admin"
container = "cgi-admin"
[[vhost]]
name = "b"
hosts = ["b.test"]
root = "/srv/b"
container = "b"
"#,
        )
        .unwrap()
    }

    #[test]
    fn routes_by_host_and_prefix() {
        let c = config();
        let r = route(&c, Some("b.test"), "/x/y.html").unwrap();
        assert_eq!(r.vhost.name, "b");
        assert_eq!(r.target, Target::Static(normalize("/x/y.html").unwrap()));
        let r = route(&c, Some("a.test"), "/cgi-bin/env.sh").unwrap();
        match r.target {
            Target::Cgi { prefix, rest } => {
                assert_eq!(prefix.container.as_str(), "cgi");
                assert_eq!(rest.to_path(), std::path::Path::new("env.sh"));
            }
            other => panic!("{other:?}"),
        }
        let r = route(&c, Some("a.test"), "/cgi-bin/admin/x").unwrap();
        assert!(
            matches!(r.target, Target::Cgi { prefix, .. } if prefix.container.as_str() == "cgi-admin")
        );
        assert!(
            matches!(
                route(&c, Some("b.test"), "/cgi-bin/env.sh").unwrap().target,
                Target::Static(_)
            ),
            "b has no CGI"
        );
        assert_eq!(
            route(&c, None, "/../x"),
            Err(RouteError::Path(PathError::DotDot))
        );
        assert_eq!(
            route(&c, Some("unknown"), "/").unwrap().vhost.name,
            "a",
            "the default"
        );
    }
}
