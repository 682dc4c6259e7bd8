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
