//! The admin API as functions from (method, path, body) to (status, JSON): the server's
//! transports (a Unix socket with mode 0600, and optionally loopback TCP with a bearer token)
//! call [`Admin::handle`] and send what it returns. The routes are the table
//! [`rescon_admin::routes::ROUTES`], shared with `rctl`; each has one handler here.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /containers[?depth=N]` | the tree from the root: attributes, usage, children |
//! | `GET /containers/{id or path}[?depth=N]` | one container (children one level deep by default) |
//! | `PATCH /containers/{id or path}` | change attributes: a JSON object `{"cpu_limit": "20%"}` or `key=value` pairs separated by spaces, newlines or `&`; all or nothing |
//! | `GET /filters` | listeners, their members (client classes and the black hole) and prefixes, recent moves |
//! | `POST /filters/move` | `{"prefix": "10.1.0.0/16", "to": "black-hole", "listener": "web"}` |
//! | `GET /metrics` | Prometheus text: per container CPU, kernel CPU, bytes, requests, connections, queue wait, throttled time |
//!
//! A container is named by its id or, for declared containers, by its path in the
//! configuration (`clients/premium`). Errors are JSON [`ErrorBody`] documents: 400 for a
//! malformed request, 403 when the admin handle may not touch that container, 404 for an
//! unknown container, listener or path, 405 for a wrong method, 409 for a refused structural
//! change, 422 for a value out of its domain (naming the field and the allowed values).
//!
//! ```
//! use http::Method;
//! use rescon_httpd::admin::{Admin, FilterTable};
//! use std::sync::Arc;
//! let registry = rescon::Registry::new();
//! let cgi = registry.root().create_child("cgi", Default::default()).unwrap();
//! let admin = Admin::new(registry.root(), Arc::new(FilterTable::from_config(&[], |_| None)));
//! let r = admin.handle(&Method::PATCH, &format!("/containers/{}", cgi.id()), b"cpu_limit=30%");
//! assert_eq!(r.status, 200);
//! assert_eq!(cgi.attrs().cpu_limit.unwrap().fraction(), 0.3);
//! let r = admin.handle(&Method::PATCH, &format!("/containers/{}", cgi.id()), br#"{"priority": 5000}"#);
//! assert_eq!(r.status, 422);
//! assert!(String::from_utf8(r.body).unwrap().contains("0..=1000"));
//! ```

mod filters;
mod metrics;

pub(crate) use filters::ActionLog;
pub use filters::{ACTION_HISTORY, FilterError, FilterTable, Filters, UNLISTED};
pub use metrics::{
    CONTENT_TYPE as METRICS_CONTENT_TYPE, DropCount, HttpStats, Ledger, NO_VHOST, RequestCell,
    escape_label,
};
pub use rescon_admin::BLACK_HOLE;
pub use rescon_admin::api;
pub use rescon_admin::api::ErrorBody;

use crate::config::LiveTree;
use api::{ContainerView, FiltersView, MoveRequest, ReloadResult};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use ipnet::IpNet;
use rescon::{Attributes, Container, ContainerId};
use rescon_admin::routes::{self, Endpoint, RouteError};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// An answer of the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    /// The status.
    pub status: StatusCode,
    /// The body's type.
    pub content_type: &'static str,
    /// Extra headers (`Allow`, `WWW-Authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Vec<u8>,
}

const JSON: &str = "application/json";

impl ApiResponse {
    fn json(status: StatusCode, value: &impl Serialize) -> ApiResponse {
        let mut body = serde_json::to_vec_pretty(value).expect("API documents serialize");
        body.push(b'\n');
        ApiResponse {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
        }
    }

    /// A JSON error document: `{"error": msg}`.
    pub fn error(status: StatusCode, msg: impl Into<String>) -> ApiResponse {
        ApiResponse::json(
            status,
            &ErrorBody {
                error: msg.into(),
                field: None,
                allowed: None,
            },
        )
    }

    fn field_error(
        status: StatusCode,
        msg: impl Into<String>,
        field: &str,
        allowed: Option<&str>,
    ) -> ApiResponse {
        ApiResponse::json(
            status,
            &ErrorBody {
                error: msg.into(),
                field: Some(field.to_string()),
                allowed: allowed.map(str::to_string),
            },
        )
    }

    fn with_header(mut self, name: HeaderName, value: &'static str) -> ApiResponse {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }
}

/// Checks an `Authorization: Bearer TOKEN` header against `token`, in time independent of
/// where the two differ. Returns the 401 answer to send when it does not match.
///
/// ```
/// use http::HeaderMap;
/// let mut h = HeaderMap::new();
/// h.insert("authorization", "Bearer 0123456789abcdef".parse().unwrap());
/// assert!(rescon_httpd::admin::check_bearer(&h, "0123456789abcdef").is_ok());
/// assert_eq!(rescon_httpd::admin::check_bearer(&h, "another-token-000").unwrap_err().status, 401);
/// ```
pub fn check_bearer(headers: &HeaderMap, token: &str) -> Result<(), ApiResponse> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(ApiResponse::error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer TOKEN` with the token of admin.token or admin.token_file",
        )
        .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"rescon-httpd\""))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (it is in the configuration's rules); the contents are.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The admin API over a container handle (the registry's root for the whole namespace, or a
/// subtree's handle to delegate it) and the [`Filters`].
pub struct Admin {
    handle: Container,
    filters: Arc<dyn Filters>,
    declared: RwLock<HashMap<String, ContainerId>>,
    metrics: metrics::MetricsState,
    reloader: RwLock<Option<Reloader>>,
    enforcement: RwLock<Option<Enforcement>>,
}

/// What `POST /reload` calls: reloads the configuration, `Ok(summary)` or `Err(why)`.
pub type Reloader = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What tells the enforcement in force for a container (the server's cgroups and limiter).
pub type Enforcement = Box<dyn Fn(&Container) -> rescon_admin::api::EnforcementView + Send + Sync>;

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// An admin API acting with `handle`'s rights.
    pub fn new(handle: Container, filters: Arc<dyn Filters>) -> Admin {
        Admin {
            handle,
            filters,
            declared: RwLock::new(HashMap::new()),
            metrics: metrics::MetricsState::default(),
            reloader: RwLock::new(None),
            enforcement: RwLock::new(None),
        }
    }

    /// The requests' statistics `/metrics` reports: the server records each response in them.
    pub fn http_stats(&self) -> Arc<HttpStats> {
        self.metrics.http.clone()
    }

    /// What `POST /reload` does (without one, it answers 409: nothing to reload from).
    pub fn set_reloader(&self, f: Reloader) {
        *self.reloader.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Sets what reports the enforcement in force for each container shown (`enforcement`
    /// in a container's document).
    pub fn set_enforcement(&self, f: Enforcement) {
        *self.enforcement.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Records the declared containers (after start-up and each reload): they can be named by
    /// path, and `/metrics` reports them (and only them, so per-connection containers do not
    /// make series come and go). Without declared containers, `/metrics` reports the root alone.
    pub fn set_declared(&self, tree: &LiveTree) {
        let map = tree
            .iter()
            .map(|(p, c)| (p.as_str().to_string(), c.id()))
            .collect();
        *self.declared.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// Answers one request. `target` is the request target (path and optional query). The
    /// endpoint comes from the shared route table ([`rescon_admin::routes`]); each has one
    /// handler below.
    pub fn handle(&self, method: &Method, target: &str, body: &[u8]) -> ApiResponse {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let (endpoint, id) = match routes::route(method.as_str(), path) {
            Ok(m) => m,
            Err(e @ RouteError::NotFound { .. }) => {
                return ApiResponse::error(StatusCode::NOT_FOUND, e.to_string());
            }
            Err(RouteError::MethodNotAllowed { allow }) => return not_allowed(&allow),
        };
        let depth = match parse_depth(query) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let container = || self.resolve(id.unwrap_or_default());
        match endpoint {
            Endpoint::Tree => self.get_container(self.handle.clone(), depth.unwrap_or(None)),
            Endpoint::GetContainer => match container() {
                Ok(c) => self.get_container(c, depth.unwrap_or(Some(1))),
                Err(r) => r,
            },
            Endpoint::PatchContainer => match container() {
                Ok(c) => self.patch(c, body),
                Err(r) => r,
            },
            Endpoint::Filters => ApiResponse::json(
                StatusCode::OK,
                &FiltersView {
                    listeners: self.filters.listeners(),
                    actions: self.filters.actions(),
                },
            ),
            Endpoint::MoveFilter => self.move_prefix(body),
            Endpoint::Metrics => self.metrics(),
            Endpoint::Unblock => self.unblock(body),
            Endpoint::Reload => self.reload(),
        }
    }

    fn resolve(&self, name: &str) -> Result<Container, ApiResponse> {
        let id = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            ContainerId::from_raw(name.parse::<u64>().unwrap_or(0)).ok_or_else(|| {
                ApiResponse::field_error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid container id {name:?}"),
                    "id",
                    Some("a positive integer, or the path of a declared container"),
                )
            })?
        } else {
            let declared = self.declared.read().unwrap_or_else(|e| e.into_inner());
            match declared.get(name) {
                Some(id) => *id,
                None => {
                    let mut known: Vec<&str> = declared
                        .keys()
                        .map(String::as_str)
                        .filter(|k| !k.is_empty())
                        .collect();
                    known.sort_unstable();
                    return Err(ApiResponse::field_error(
                        StatusCode::NOT_FOUND,
                        format!("no container {name:?}"),
                        "id",
                        Some(&format!(
                            "a container id, or one of the declared paths: {}",
                            known.join(", ")
                        )),
                    ));
                }
            }
        };
        let found = if self.handle.is_privileged() {
            self.handle.lookup(id)
        } else {
            self.handle.descendant(id)
        };
        found.map_err(model_error)
    }

    fn get_container(&self, c: Container, depth: Option<usize>) -> ApiResponse {
        let mut view = ContainerView::from_snapshot(&c.snapshot(), depth);
        if let Some(report) = &*self.enforcement.read().unwrap_or_else(|e| e.into_inner()) {
            view.walk_mut(&mut |v| {
                let id = ContainerId::from_raw(v.id);
                if let Some(c) = id.and_then(|id| self.handle.lookup(id).ok()) {
                    v.enforcement = Some(report(&c));
                }
            });
        }
        ApiResponse::json(StatusCode::OK, &view)
    }

    fn patch(&self, c: Container, body: &[u8]) -> ApiResponse {
        let pairs = match parse_pairs(body) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let mut attrs: Attributes = c.attrs();
        // cpu_period and cpu_burst refine cpu_limit: apply it first, whatever the order given.
        let mut ordered = pairs;
        ordered.sort_by_key(|(k, _)| k != "cpu_limit");
        for (k, v) in &ordered {
            if let Err(e) = attrs.set(k, v) {
                let msg = if e.field() == "key" {
                    format!("unknown attribute {k:?}")
                } else {
                    e.to_string()
                };
                return ApiResponse::field_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    msg,
                    if e.field() == "key" { k } else { e.field() },
                    Some(e.allowed()),
                );
            }
        }
        if let Err(e) = self.handle.set_attrs(&c, attrs) {
            return model_error(e);
        }
        self.get_container(c, Some(0))
    }

    fn move_prefix(&self, body: &[u8]) -> ApiResponse {
        let req: MoveRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return ApiResponse::error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body must be JSON like {{\"prefix\": \"10.1.0.0/16\", \"to\": \"black-hole\"}}: {e}"
                    ),
                );
            }
        };
        let prefix = match parse_prefix(&req.prefix) {
            Ok(p) => p,
            Err(r) => return r,
        };
        match self
            .filters
            .move_prefix(req.listener.as_deref(), prefix, &req.to, "operator")
        {
            Ok(r) => ApiResponse::json(StatusCode::OK, &r),
            Err(e) => filter_error(e),
        }
    }

    fn metrics(&self) -> ApiResponse {
        ApiResponse {
            status: StatusCode::OK,
            content_type: metrics::CONTENT_TYPE,
            headers: Vec::new(),
            body: self.metrics_text().into_bytes(),
        }
    }

    /// The Prometheus text of `/metrics` (see [`metrics`](self) for its families).
    pub fn metrics_text(&self) -> String {
        let tree = ContainerView::from_snapshot(&self.handle.snapshot(), None);
        let mut paths: HashMap<u64, String> = {
            let declared = self.declared.read().unwrap_or_else(|e| e.into_inner());
            declared
                .iter()
                .map(|(p, id)| (id.get(), p.clone()))
                .collect()
        };
        paths.entry(tree.id).or_default();
        let scrape = self
            .metrics
            .ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .scrape(&tree, &paths);
        let mut out = String::new();
        scrape.render(&mut out);
        self.metrics.http.render(&mut out);
        metrics::render_drops(&self.filters.drop_counts(), &mut out);
        metrics::render_build_info(&mut out);
        out
    }

    fn reload(&self) -> ApiResponse {
        let r = self.reloader.read().unwrap_or_else(|e| e.into_inner());
        match &*r {
            None => ApiResponse::error(
                StatusCode::CONFLICT,
                "this server runs the embedded default configuration: there is no file to reload (start it with --config FILE)",
            ),
            Some(f) => match f() {
                Ok(summary) => ApiResponse::json(StatusCode::OK, &ReloadResult { summary }),
                Err(e) => ApiResponse::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("reload failed; the running configuration stays: {e}"),
                ),
            },
        }
    }

    fn unblock(&self, body: &[u8]) -> ApiResponse {
        let req: api::UnblockRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return ApiResponse::error(
                    StatusCode::BAD_REQUEST,
                    format!("the body must be JSON like {{\"prefix\": \"10.1.0.0/16\"}}: {e}"),
                );
            }
        };
        let prefix = match parse_prefix(&req.prefix) {
            Ok(p) => p,
            Err(r) => return r,
        };
        match self
            .filters
            .unblock(req.listener.as_deref(), prefix, "operator")
        {
            Ok(r) => ApiResponse::json(StatusCode::OK, &r),
            Err(e) => filter_error(e),
        }
    }
}

fn parse_prefix(s: &str) -> Result<IpNet, ApiResponse> {
    s.trim()
        .parse::<IpNet>()
        .or_else(|_| s.trim().parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ApiResponse::field_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid prefix {s:?}"),
                "prefix",
                Some("a CIDR prefix such as 10.1.0.0/16 or an address"),
            )
        })
}

fn filter_error(e: FilterError) -> ApiResponse {
    match &e {
        FilterError::NoListener { known, .. } => ApiResponse::field_error(
            StatusCode::NOT_FOUND,
            e.to_string(),
            "listener",
            Some(&known.join(", ")),
        ),
        FilterError::NoMember { known, .. } => ApiResponse::field_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
            "to",
            Some(&known.join(", ")),
        ),
        FilterError::Refused { .. } => ApiResponse::error(StatusCode::CONFLICT, e.to_string()),
    }
}

fn not_allowed(allow: &str) -> ApiResponse {
    let mut r = ApiResponse::error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; allowed: {allow}"),
    );
    if let Ok(v) = HeaderValue::from_str(allow) {
        r.headers.push((header::ALLOW, v));
    }
    r
}

fn parse_depth(query: &str) -> Result<Option<Option<usize>>, ApiResponse> {
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k == "depth" {
            return match v {
                "all" => Ok(Some(None)),
                v => v.parse::<usize>().map(|d| Some(Some(d))).map_err(|_| {
                    ApiResponse::field_error(
                        StatusCode::BAD_REQUEST,
                        format!("invalid depth {v:?}"),
                        "depth",
                        Some("a non-negative integer or all"),
                    )
                }),
            };
        }
    }
    Ok(None)
}

/// The `key=value` pairs of a PATCH body: a JSON object, or text pairs.
fn parse_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ApiResponse> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiResponse::error(StatusCode::BAD_REQUEST, "the body is not UTF-8"))?;
    let text = text.trim();
    let mut pairs = Vec::new();
    if text.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| {
                ApiResponse::error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a JSON object: {e}"),
                )
            })?;
        for (k, v) in map {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => "none".to_string(),
                _ => {
                    return Err(ApiResponse::field_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("the value of {k:?} must be a string or a number"),
                        &k,
                        None,
                    ));
                }
            };
            pairs.push((k, s));
        }
    } else {
        for item in text
            .split(|c: char| c.is_whitespace() || c == '&')
            .filter(|s| !s.is_empty())
        {
            let Some((k, v)) = item.split_once('=') else {
                return Err(ApiResponse::error(
                    StatusCode::BAD_REQUEST,
                    format!("expected key=value, got {item:?}"),
                ));
            };
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    if pairs.is_empty() {
        return Err(ApiResponse::error(
            StatusCode::BAD_REQUEST,
            "no attributes given: send key=value pairs or a JSON object",
        ));
    }
    Ok(pairs)
}

fn model_error(e: rescon::Error) -> ApiResponse {
    use rescon::Error as E;
    match &e {
        E::InvalidAttr(a) => ApiResponse::field_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            a.to_string(),
            a.field(),
            Some(a.allowed()),
        ),
        E::FixedSharesExceed { .. } => ApiResponse::field_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
            "share",
            Some("fixed shares of siblings summing to at most 1"),
        ),
        E::PermissionDenied { .. } => ApiResponse::error(StatusCode::FORBIDDEN, e.to_string()),
        E::NotFound(_) => ApiResponse::error(StatusCode::NOT_FOUND, e.to_string()),
        _ => ApiResponse::error(StatusCode::CONFLICT, e.to_string()),
    }
}

#[cfg(test)]
mod tests;
