//! The admin API's routes: one table, [`ROUTES`], read by the server to dispatch and by clients
//! to build request paths. Adding an endpoint is one row here and one handler in the server
//! (the server's dispatch matches on [`Endpoint`], so the compiler points at the missing one).
//!
//! ```
//! use rescon_admin::routes::{route, Endpoint, RouteError};
//! assert_eq!(route("GET", "/containers/clients/premium"), Ok((Endpoint::GetContainer, Some("clients/premium"))));
//! assert_eq!(route("PATCH", "/containers/7/"), Ok((Endpoint::PatchContainer, Some("7"))));
//! assert!(matches!(route("DELETE", "/filters"), Err(RouteError::MethodNotAllowed { allow }) if allow == "GET"));
//! assert_eq!(Endpoint::GetContainer.path(Some("clients/premium")), "/containers/clients/premium");
//! ```

use std::fmt;

/// What an admin request asks for; each has one row in [`ROUTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The container tree from the root.
    Tree,
    /// One container.
    GetContainer,
    /// Change a container's attributes.
    PatchContainer,
    /// The listeners' members and recent moves.
    Filters,
    /// Move a prefix to another member.
    MoveFilter,
    /// Prometheus metrics.
    Metrics,
}

/// One row of the route table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path; a trailing `{id}` matches the rest of the path (a container id or a declared
    /// path such as `clients/premium`).
    pub pattern: &'static str,
    /// What it is.
    pub endpoint: Endpoint,
    /// What it does, for the docs and error messages.
    pub doc: &'static str,
}

/// Every route of the admin API.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        pattern: "/containers",
        endpoint: Endpoint::Tree,
        doc: "the tree from the root: attributes, usage, children (`?depth=N` or `all`)",
    },
    Route {
        method: "GET",
        pattern: "/containers/{id}",
        endpoint: Endpoint::GetContainer,
        doc: "one container, by id or declared path (children one level deep by default)",
    },
    Route {
        method: "PATCH",
        pattern: "/containers/{id}",
        endpoint: Endpoint::PatchContainer,
        doc: "change attributes: a JSON object or `key=value` pairs; all or nothing",
    },
    Route {
        method: "GET",
        pattern: "/filters",
        endpoint: Endpoint::Filters,
        doc: "listeners, their members (client classes and the black hole), recent moves",
    },
    Route {
        method: "POST",
        pattern: "/filters/move",
        endpoint: Endpoint::MoveFilter,
        doc: "move a prefix: `{\"prefix\": \"10.1.0.0/16\", \"to\": \"black-hole\"}`",
    },
    Route {
        method: "GET",
        pattern: "/metrics",
        endpoint: Endpoint::Metrics,
        doc: "Prometheus text: per container CPU, bytes, requests, connections, waits",
    },
];

/// Why a request matches no route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No route has this path.
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// The path exists, not with this method.
    MethodNotAllowed {
        /// The methods it has, comma-separated (the `Allow` header).
        allow: String,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::NotFound { path } => {
                let mut known: Vec<&str> = ROUTES.iter().map(|r| r.pattern).collect();
                known.dedup();
                write!(
                    f,
                    "no endpoint {path:?}: endpoints are {}",
                    known.join(", ")
                )
            }
            RouteError::MethodNotAllowed { allow } => {
                write!(f, "method not allowed here; allowed: {allow}")
            }
        }
    }
}

impl std::error::Error for RouteError {}

/// Matches `path` (without the query) against one pattern: `Some(param)` if it matches.
fn matches<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    match pattern.strip_suffix("{id}") {
        Some(prefix) => {
            let rest = path.strip_prefix(prefix)?;
            (!rest.is_empty()).then_some(Some(rest))
        }
        None => (pattern == path).then_some(None),
    }
}

/// The endpoint of a request and its `{id}`, if its route has one. A trailing `/` is ignored.
pub fn route<'p>(method: &str, path: &'p str) -> Result<(Endpoint, Option<&'p str>), RouteError> {
    let path = path.trim_end_matches('/');
    let mut allow: Vec<&str> = Vec::new();
    for r in ROUTES {
        if let Some(param) = matches(r.pattern, path) {
            if r.method == method {
                return Ok((r.endpoint, param));
            }
            allow.push(r.method);
        }
    }
    if allow.is_empty() {
        Err(RouteError::NotFound {
            path: path.to_string(),
        })
    } else {
        Err(RouteError::MethodNotAllowed {
            allow: allow.join(", "),
        })
    }
}

impl Endpoint {
    /// This endpoint's row.
    pub fn route(self) -> &'static Route {
        ROUTES
            .iter()
            .find(|r| r.endpoint == self)
            .expect("every endpoint has a row")
    }

    /// The method to send.
    pub fn method(self) -> &'static str {
        self.route().method
    }

    /// The request path, with `id` (percent-encoded but for `/`, which a declared path keeps)
    /// in place of `{id}`.
    pub fn path(self, id: Option<&str>) -> String {
        let pattern = self.route().pattern;
        match (pattern.strip_suffix("{id}"), id) {
            (Some(prefix), Some(id)) => format!("{prefix}{}", encode_segment(id)),
            _ => pattern.to_string(),
        }
    }
}

/// Percent-encodes what may not appear raw in a path (a declared path keeps its `/`).
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_matches_itself_and_only_itself() {
        for r in ROUTES {
            let path = r.endpoint.path(Some("clients/premium"));
            assert_eq!(
                route(r.method, &path).map(|m| m.0),
                Ok(r.endpoint),
                "{path}"
            );
            assert_eq!(r.endpoint.method(), r.method);
        }
        assert_eq!(route("GET", "/containers/"), Ok((Endpoint::Tree, None)));
        assert_eq!(
            route("GET", "/nothing"),
            Err(RouteError::NotFound {
                path: "/nothing".into()
            })
        );
        let e = route("PUT", "/containers/3").unwrap_err();
        assert_eq!(
            e,
            RouteError::MethodNotAllowed {
                allow: "GET, PATCH".into()
            }
        );
        assert!(
            RouteError::NotFound { path: "/x".into() }
                .to_string()
                .contains("/containers, /containers/{id}, /filters, /filters/move, /metrics")
        );
    }

    #[test]
    fn ids_are_encoded_in_paths() {
        assert_eq!(
            Endpoint::PatchContainer.path(Some("a b")),
            "/containers/a%20b"
        );
        assert_eq!(Endpoint::Metrics.path(None), "/metrics");
    }
}
