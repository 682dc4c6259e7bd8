//! The configuration: TOML, declarative, checked as a whole before anything runs.
//!
//! The reference of every key is in the crate's README; the embedded default
//! ([`DEFAULT_CONFIG`]) serves the demo site on 127.0.0.1:8080. [`Config::load`] reads a file,
//! [`Config::parse`] a string; both report every problem found with the file, line, key and the
//! allowed values ([`ConfigError`]), and a configuration that loads is consistent: every
//! container it names is declared, fixed shares fit, prefixes parse and do not collide.
//!
//! Container attributes use the same `key = value` syntax as the admin API and `rctl set`
//! ([`rescon::Attributes::set`]).
//!
//! ```
//! use rescon_httpd::config::Config;
//! let err = Config::parse("site.toml", r#"
//! [server]
//! enforcement = "kernal"
//! "#).unwrap_err();
//! let d = &err.diagnostics()[0];
//! assert_eq!((d.line, d.key.as_str()), (3, "server.enforcement"));
//! assert_eq!(d.allowed.as_deref(), Some("user, kernel, auto"));
//! ```

mod de;
mod error;
mod render;
mod tls;
mod tree;

pub use error::{ConfigError, Diagnostic};
pub use tls::{DEFAULT_MAX_HANDSHAKES, Http2Config, Protocols, TlsConfig, VhostTls};
pub use tree::{AttrChange, ContainerPath, LiveTree, NodeSpec, TreeDiff, TreeError, TreeSpec};

use de::{EntryDe, FileDe, NodeDe, Scalar};
use error::Sink;
use ipnet::IpNet;
use rescon::Attributes;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The embedded default configuration: the demo site, static pages and a CGI script, on
/// 127.0.0.1:8080, with a CGI class capped at 30% of a CPU.
pub const DEFAULT_CONFIG: &str = include_str!("../../default.toml");

/// The name diagnostics give the embedded default.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded default>";

/// Who enforces container attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnforcementMode {
    /// The user-level scheduler only.
    User,
    /// The kernel too, for containers marked `enforcement = "kernel"`; start-up fails if
    /// cgroups cannot be used.
    Kernel,
    /// The kernel where it can be used, the user-level scheduler otherwise.
    #[default]
    Auto,
}

impl EnforcementMode {
    const ALLOWED: &'static str = "user, kernel, auto";

    fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(EnforcementMode::User),
            "kernel" => Some(EnforcementMode::Kernel),
            "auto" => Some(EnforcementMode::Auto),
            _ => None,
        }
    }

    /// The keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementMode::User => "user",
            EnforcementMode::Kernel => "kernel",
            EnforcementMode::Auto => "auto",
        }
    }

    /// Whether kernel enforcement is to be used, given whether it is available; `Err` with
    /// `why` when the configuration demands it and it is not.
    pub fn resolve(self, available: Result<(), String>) -> Result<bool, String> {
        match (self, available) {
            (EnforcementMode::User, _) => Ok(false),
            (_, Ok(())) => Ok(true),
            (EnforcementMode::Auto, Err(_)) => Ok(false),
            (EnforcementMode::Kernel, Err(why)) => Err(format!(
                "enforcement = \"kernel\" but cgroups cannot be used: {why}; run as root or under a delegated systemd unit, or set enforcement = \"auto\" or \"user\""
            )),
        }
    }
}

/// Where access log lines go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// Nowhere.
    Off,
    /// Standard output (`"-"`).
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

/// Where the server makes its cgroup subtree (`[server] cgroup_parent`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CgroupParent {
    /// The server's own cgroup (`"own"`): a systemd unit's cgroup with `Delegate=yes`.
    #[default]
    Own,
    /// The parent of its own cgroup (`"own-parent"`): under systemd's `DelegateSubgroup=`,
    /// beside the leaf the service's processes sit in.
    OwnParent,
    /// A cgroup path from each hierarchy's root (`"/rescon.slice"`).
    Path(PathBuf),
}

impl CgroupParent {
    const ALLOWED: &'static str =
        "own, own-parent, or an absolute cgroup path such as /rescon.slice";

    fn parse(s: &str) -> Option<CgroupParent> {
        match s {
            "own" => Some(CgroupParent::Own),
            "own-parent" => Some(CgroupParent::OwnParent),
            p if p.starts_with('/') && !p.split('/').any(|c| c == "..") => {
                Some(CgroupParent::Path(PathBuf::from(p)))
            }
            _ => None,
        }
    }

    /// The keyword or path, as written in the file.
    pub fn as_text(&self) -> String {
        match self {
            CgroupParent::Own => "own".into(),
            CgroupParent::OwnParent => "own-parent".into(),
            CgroupParent::Path(p) => p.display().to_string(),
        }
    }
}

/// How the server's subtree is typed in cgroup v2 (`[server] cgroup_v2_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CgroupV2Mode {
    /// Domain cgroups: memory limits and `cgroup.kill`.
    #[default]
    Domain,
    /// A threaded subtree: threads can be bound in v2, no memory limits.
    Threaded,
}

impl CgroupV2Mode {
    const ALLOWED: &'static str = "domain, threaded";

    /// The keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupV2Mode::Domain => "domain",
            CgroupV2Mode::Threaded => "threaded",
        }
    }
}

/// `[server]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// Who enforces attributes.
    pub enforcement: EnforcementMode,
    /// The access log.
    pub access_log: AccessLog,
    /// Whether each request gets its own container under the connection's (or the vhost's).
    pub per_request_containers: bool,
    /// `SERVER_NAME` for CGI when the request has no Host header.
    pub server_name: Option<String>,
    /// The user to run as once the listeners are bound and the cgroups made (started as
    /// root); CGI scripts run as this user too.
    pub user: Option<String>,
    /// The group to run as (default: the user's primary group).
    pub group: Option<String>,
    /// Where the cgroup subtree is made.
    pub cgroup_parent: CgroupParent,
    /// How the subtree is typed in cgroup v2.
    pub cgroup_v2_mode: CgroupV2Mode,
    /// The open-file limit to ask for (`None`: what the configuration needs, at least the
    /// hard limit's soft value raised to it).
    pub nofile: Option<u64>,
}

/// `[metrics]`: an HTTP listener serving `GET /metrics` only, for a remote scraper.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where it listens (`None`: no listener; `/metrics` stays on the admin API).
    pub listen: Option<SocketAddr>,
}

/// `[timeouts]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To receive a request's head.
    pub header: Duration,
    /// Between two reads of a request body.
    pub body: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keep_alive: Duration,
    /// A kept-alive connection quiet this long after a response parks: its buffers, protocol
    /// state and container are let go until it becomes readable (zero: at once). Waking costs
    /// a new hyper connection and container, too much to pay between the requests of a busy
    /// client (100 ms by default: far more than such a client's gaps, short enough that a
    /// burst of clients going idle is not held at its busy footprint); a connection that has
    /// not been answered yet parks at once whatever this is.
    pub park: Duration,
    /// A response the client does not take: the connection is closed when a write has
    /// waited this long for room (nginx's `send_timeout`).
    pub send: Duration,
    /// A graceful stop (SIGQUIT) waits this long for the requests under way.
    pub shutdown: Duration,
    /// A TLS handshake not done by then (a ClientHello that never finishes) closes the
    /// connection.
    pub handshake: Duration,
    /// A CGI script that writes nothing for this long (no output and no read of its input)
    /// is killed with its children: 504 before its response head, the body cut after it.
    /// Between reads, as nginx's `fastcgi_read_timeout`: a response that keeps sending
    /// (server-sent events, a long report) runs as long as it sends.
    pub cgi_idle: Duration,
    /// A CGI script still running this long after it started is killed likewise, however
    /// busy; `None` (the default): no limit but the idle one.
    pub cgi_total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            park: Duration::from_millis(100),
            send: Duration::from_secs(60),
            shutdown: Duration::from_secs(30),
            handshake: Duration::from_secs(10),
            cgi_idle: Duration::from_secs(60),
            cgi_total: None,
        }
    }
}

/// `[limits]`: sizes of requests and CGI responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// A request head above this gets 431.
    pub max_header_bytes: u64,
    /// A request body above this gets 413.
    pub max_body_bytes: u64,
    /// A CGI response head above this gets 502.
    pub cgi_max_header_bytes: u64,
    /// What a CGI run's standard error may put in the log (its lines, escaped, plus about
    /// 100 bytes each); the rest is counted and dropped.
    pub cgi_stderr_bytes: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            cgi_max_header_bytes: 64 * 1024,
            cgi_stderr_bytes: 64 * 1024,
        }
    }
}

/// Where the admin API's bearer token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Written in the configuration.
    Inline(String),
    /// Read from a file (trailing whitespace stripped) when the server starts or reloads.
    File(PathBuf),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl TokenSource {
    /// The token.
    pub fn read(&self) -> std::io::Result<String> {
        match self {
            TokenSource::Inline(t) => Ok(t.clone()),
            TokenSource::File(p) => {
                let t = std::fs::read_to_string(p).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("reading the admin token file {}: {e}", p.display()),
                    )
                })?;
                let t = t.trim_end().to_string();
                if t.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the admin token file {} is empty", p.display()),
                    ));
                }
                Ok(t)
            }
        }
    }
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// The Unix socket (created with mode 0600), or `None` (`socket = "off"`).
    pub socket: Option<PathBuf>,
    /// A loopback TCP address for the API, which then requires the bearer token.
    pub tcp: Option<SocketAddr>,
    /// The bearer token for TCP.
    pub token: Option<TokenSource>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: Some(default_admin_socket()),
            tcp: None,
            token: None,
        }
    }
}

/// The admin socket of the default configuration: `$XDG_RUNTIME_DIR/rescon-httpd/admin.sock`,
/// or under `/run` for root, or `/tmp/rescon-httpd-UID/` for other users.
pub fn default_admin_socket() -> PathBuf {
    rescon_admin::default_socket()
}

/// The directory `{runtime_dir}` stands for (see [`default_admin_socket`]).
pub(crate) fn runtime_dir() -> PathBuf {
    rescon_admin::runtime_dir()
}

use rescon_admin::expand_runtime_dir;

/// Which addresses a client class takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassFilter {
    /// Sources inside any of these prefixes.
    Prefixes(Vec<IpNet>),
    /// Sources outside all of these prefixes (`except = []` takes everything).
    Except(Vec<IpNet>),
}

/// A client class of a listener: the connections from some sources, with their container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientClass {
    /// The class's name, unique in its listener.
    pub name: String,
    /// The class container, where connections from these sources are created.
    pub container: ContainerPath,
    /// The sources.
    pub filter: ClassFilter,
    /// TLS handshakes the class may have in flight at once on this listener; a connection
    /// beyond is closed before its handshake (and counted refused).
    pub max_handshakes: u32,
}

/// What the flood defense does with the prefixes a SYN flood comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FloodAction {
    /// Moves them to the black hole (their SYNs are dropped in the kernel).
    BlackHole,
    /// Moves them to this class (a low-priority one).
    Demote(String),
}

/// `flood_defense` of a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloodDefense {
    /// What to do with the flood's sources.
    pub action: FloodAction,
    /// Half-open connections per second from one prefix that count as a flood.
    pub syn_rate: u64,
    /// How long a prefix stays moved after its flood stops.
    pub hold: Duration,
}

/// `[[listener]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Its name (default `listener-N`).
    pub name: String,
    /// Address and port.
    pub addr: SocketAddr,
    /// Client classes. A source belongs to the class (or black hole) with the longest prefix
    /// containing it; sources in no prefix go to the `except` class whose exceptions do not
    /// contain them; sources matched by nothing are black-holed.
    pub classes: Vec<ClientClass>,
    /// Sources whose SYNs are dropped in the kernel.
    pub black_hole: Vec<IpNet>,
    /// Interfaces where the black hole's IPv4 SYNs are also dropped with XDP, as they
    /// arrive, before the kernel's IP and TCP layers (the edge filter; needs root).
    pub edge: Vec<String>,
    /// The automatic flood defense, if enabled.
    pub flood_defense: Option<FloodDefense>,
    /// Connections are TLS (certificates from the vhosts' `[vhost.tls]`, chosen by SNI).
    pub tls: bool,
    /// The protocols spoken (with TLS, offered by ALPN).
    pub protocols: Protocols,
}

/// `[[vhost.cgi]]`: a URL prefix served by CGI scripts from a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgiPrefix {
    /// The URL prefix, starting and ending with `/` (`/cgi-bin/`).
    pub prefix: String,
    /// The directory scripts are resolved in (never left).
    pub dir: PathBuf,
    /// The CGI class container: each run gets a container under it.
    pub container: ContainerPath,
}

/// `[[vhost]]`: a virtual host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostConfig {
    /// Its name, unique.
    pub name: String,
    /// Host header values it answers (lowercase, without port; `*.example.com` matches
    /// subdomains).
    pub hosts: Vec<String>,
    /// The document root (never left).
    pub root: PathBuf,
    /// Its top-level container.
    pub container: ContainerPath,
    /// Index file names tried for a directory, in order.
    pub index: Vec<String>,
    /// Whether it answers requests no other vhost does (the first vhost if none says so).
    pub default: bool,
    /// CGI prefixes.
    pub cgi: Vec<CgiPrefix>,
    /// Its certificate for TLS listeners, if it has one.
    pub tls: Option<VhostTls>,
    /// The user its CGI scripts run as (default: the server's); resolved when the site is
    /// compiled (see `server::site`).
    pub user: Option<String>,
    /// Their group (default: the user's primary group).
    pub group: Option<String>,
}

/// A whole configuration, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it came from (a path, or [`DEFAULT_CONFIG_NAME`]).
    pub source: String,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[timeouts]`.
    pub timeouts: Timeouts,
    /// `[limits]`.
    pub limits: RequestLimits,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[tls]`.
    pub tls: TlsConfig,
    /// `[http2]`.
    pub http2: Http2Config,
    /// `[containers]`.
    pub tree: TreeSpec,
    /// `[[listener]]`.
    pub listeners: Vec<ListenerConfig>,
    /// `[[vhost]]`; exactly one has `default` set when there are any.
    pub vhosts: Vec<VhostConfig>,
    /// `[[fastcgi]]`: URL prefixes served by FastCGI applications, on every vhost.
    pub fastcgi: Vec<FastCgiConfig>,
}

/// Where a FastCGI application listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FastCgiAddress {
    /// A Unix stream socket (`unix:/run/php/app.sock`): the request's container handle can
    /// ride on its first record.
    Unix(PathBuf),
    /// A TCP address (`127.0.0.1:9000`).
    Tcp(SocketAddr),
}

impl fmt::Display for FastCgiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FastCgiAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            FastCgiAddress::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// `[[fastcgi]]`: a URL prefix served by a FastCGI application (the paper's persistent CGI
/// server), on every vhost; it is matched before the vhosts' CGI prefixes and static files.
#[derive(Clone, Debug, PartialEq)]
pub struct FastCgiConfig {
    /// The URL prefix, starting and ending with `/` (`/php/`).
    pub prefix: String,
    /// Where the application listens.
    pub address: FastCgiAddress,
    /// The directory the application finds scripts in: `SCRIPT_FILENAME` is this joined with
    /// the path after the prefix.
    pub root: PathBuf,
    /// The class container FastCGI work is charged under and held to (a CGI class: its CPU
    /// cap and process limit apply to the pool and the requests).
    pub container: ContainerPath,
    /// The pool to start and supervise (a program and its arguments), or empty for an
    /// application started elsewhere.
    pub command: Vec<String>,
    /// How many times a pool that exits is started again (with a growing delay) before it is
    /// left down.
    pub restarts: u32,
    /// Whether the request's container handle rides on its first record (Unix sockets only).
    pub pass_handle: bool,
}

/// The placeholder for the unpacked demo site in paths.
pub const DEMO_DIR: &str = "{demo}";

impl Config {
    /// The embedded default configuration.
    pub fn default_config() -> Config {
        Config::parse(DEFAULT_CONFIG_NAME, DEFAULT_CONFIG)
            .expect("the embedded default configuration is valid (tested)")
    }

    /// Reads and checks a file; relative paths in it are taken relative to its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(&name, &e))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse_with_base(&name, &text, Some(&base))
    }

    /// Checks a configuration given as text; `name` is what diagnostics call it. Relative
    /// paths stay relative (to the server's working directory).
    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_base(name, text, None)
    }

    /// As [`parse`](Config::parse), with relative paths taken relative to `base`.
    pub fn parse_with_base(
        name: &str,
        text: &str,
        base: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let raw: FileDe = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim_end().to_string();
            let key = e
                .span()
                .and_then(|s| text.get(s))
                .filter(|k| !k.contains('\n') && k.len() < 80)
                .unwrap_or("")
                .trim_matches(|c| c == '[' || c == ']' || c == '"')
                .to_string();
            ConfigError::new(vec![Diagnostic::at(name, text, e.span(), key, msg, None)])
        })?;
        let mut sink = Sink::new(name, text);
        let cfg = Loader {
            sink: &mut sink,
            base,
        }
        .load(raw, name);
        sink.finish(cfg)
    }

    /// Whether a path of the configuration points into the embedded demo site (`{demo}`): the
    /// server must then unpack it ([`crate::demo`]) and call [`Config::set_demo_dir`].
    pub fn uses_demo(&self) -> bool {
        self.vhosts.iter().any(|v| {
            v.root.starts_with(DEMO_DIR) || v.cgi.iter().any(|c| c.dir.starts_with(DEMO_DIR))
        })
    }

    /// Replaces the `{demo}` placeholder with the directory the demo site was unpacked in.
    pub fn set_demo_dir(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix(DEMO_DIR) {
                *p = dir.join(rest);
            }
        };
        for v in &mut self.vhosts {
            fix(&mut v.root);
            for c in &mut v.cgi {
                fix(&mut c.dir);
            }
        }
    }

    /// The effective configuration as TOML: every default written out, the token redacted.
    /// Parsing it again gives the same configuration (but for an inline token).
    pub fn to_toml(&self) -> String {
        render::render(self)
    }

    /// The vhost that serves `host` (a Host header value, port and trailing dot allowed):
    /// an exact name, else the longest matching `*.` wildcard, else the default vhost.
    pub fn vhost_for(&self, host: Option<&str>) -> Option<&VhostConfig> {
        let wanted = host.map(normalize_host);
        if let Some(h) = wanted.as_deref() {
            if let Some(v) = self.vhosts.iter().find(|v| v.hosts.iter().any(|n| n == h)) {
                return Some(v);
            }
            let mut best: Option<(&VhostConfig, usize)> = None;
            for v in &self.vhosts {
                for n in &v.hosts {
                    if let Some(suffix) = n.strip_prefix('*') {
                        if h.ends_with(suffix)
                            && h.len() > suffix.len()
                            && best.is_none_or(|(_, l)| suffix.len() > l)
                        {
                            best = Some((v, suffix.len()));
                        }
                    }
                }
            }
            if let Some((v, _)) = best {
                return Some(v);
            }
        }
        self.vhosts.iter().find(|v| v.default)
    }
}

/// Lowercases a Host header value and strips its port and trailing dot; borrowed when it is
/// lowercase already (as clients send it), since every request asks.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    // What clients send, a lowercase name with or without a numeric port, in one pass over
    // its bytes; anything else (case, spaces, brackets, a trailing dot) takes the general way.
    // 355 instructions a request for the lookup of the vhost before, with its `matches`.
    let b = host.as_bytes();
    let mut end = b.len();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => {}
            b':' if b[i + 1..].iter().all(u8::is_ascii_digit) => {
                end = i;
                break;
            }
            _ => return normalize_host_general(host),
        }
    }
    match b[..end].last() {
        Some(&l) if l != b'.' => std::borrow::Cow::Borrowed(&host[..end]),
        _ => normalize_host_general(host),
    }
}

/// [`normalize_host`] for any value.
fn normalize_host_general(host: &str) -> std::borrow::Cow<'_, str> {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else if h.matches(':').count() == 1 {
        h.split(':').next().unwrap_or(h)
    } else {
        h
    };
    let h = h.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

struct Loader<'s, 'a> {
    sink: &'s mut Sink<'a>,
    base: Option<&'a Path>,
}

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

impl Loader<'_, '_> {
    fn err(&mut self, at: Option<Range<usize>>, key: &str, msg: String, allowed: Option<&str>) {
        self.sink.error(at, key, msg, allowed);
    }

    fn path(&self, s: &str) -> PathBuf {
        let p = expand_runtime_dir(s);
        match self.base {
            Some(b) if p.is_relative() && !p.starts_with(DEMO_DIR) => b.join(p),
            _ => p,
        }
    }

    fn duration(&mut self, v: &Option<Spanned<Scalar>>, key: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        let text = v.get_ref().text();
        match rescon::attr::parse_duration(&text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                self.err(
                    span(v),
                    key,
                    format!("invalid duration {text:?}"),
                    Some("a positive duration such as 10s, 500ms or 2m (a bare number is seconds)"),
                );
                default
            }
        }
    }

    /// A duration that may be zero.
    fn duration_or_zero(
        &mut self,
        v: &Option<Spanned<Scalar>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        let text = v.get_ref().text();
        match rescon::attr::parse_duration(&text) {
            Some(d) => d,
            None => {
                self.err(
                    span(v),
                    key,
                    format!("invalid duration {text:?}"),
                    Some("a duration such as 0s, 500ms or 2s (a bare number is seconds)"),
                );
                default
            }
        }
    }

    /// `timeouts.cgi_total`: a duration or `"off"`. `timeouts.cgi`, the key of a single
    /// timeout before there were two, is read as the total it was (not both).
    fn cgi_total(&mut self, t: &de::TimeoutsDe) -> Option<Duration> {
        let (v, key) = match (&t.cgi_total, &t.cgi) {
            (Some(_), Some(old)) => {
                self.err(
                    span(old),
                    "timeouts.cgi",
                    "timeouts.cgi and timeouts.cgi_total both given".into(),
                    Some("only cgi_total (timeouts.cgi is its old name); cgi_idle is the time between reads"),
                );
                return None;
            }
            (Some(v), None) => (v, "timeouts.cgi_total"),
            (None, Some(v)) => (v, "timeouts.cgi"),
            (None, None) => return None,
        };
        let text = v.get_ref().text();
        if text.trim() == "off" {
            return None;
        }
        match rescon::attr::parse_duration(&text) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                self.err(
                    span(v),
                    key,
                    format!("invalid duration {text:?}"),
                    Some("a positive duration such as 10m, 30s or 1h, or \"off\" (no total limit)"),
                );
                None
            }
        }
    }

    fn bytes(&mut self, v: &Option<Spanned<Scalar>>, key: &str, default: u64) -> u64 {
        let Some(v) = v else { return default };
        let text = v.get_ref().text();
        match rescon::attr::parse_bytes(&text) {
            Some(b) if b > 0 => b,
            _ => {
                self.err(
                    span(v),
                    key,
                    format!("invalid size {text:?}"),
                    Some("a positive byte count such as 16384, 16KiB or 10MB"),
                );
                default
            }
        }
    }

    fn load(mut self, raw: FileDe, name: &str) -> Config {
        let server = self.server(&raw);
        let timeouts = Timeouts {
            header: self.duration(
                &raw.timeouts.header,
                "timeouts.header",
                Timeouts::default().header,
            ),
            body: self.duration(
                &raw.timeouts.body,
                "timeouts.body",
                Timeouts::default().body,
            ),
            keep_alive: self.duration(
                &raw.timeouts.keep_alive,
                "timeouts.keep_alive",
                Timeouts::default().keep_alive,
            ),
            park: self.duration_or_zero(
                &raw.timeouts.park,
                "timeouts.park",
                Timeouts::default().park,
            ),
            send: self.duration(
                &raw.timeouts.send,
                "timeouts.send",
                Timeouts::default().send,
            ),
            shutdown: self.duration(
                &raw.timeouts.shutdown,
                "timeouts.shutdown",
                Timeouts::default().shutdown,
            ),
            handshake: self.duration(
                &raw.timeouts.handshake,
                "timeouts.handshake",
                Timeouts::default().handshake,
            ),
            cgi_idle: self.duration(
                &raw.timeouts.cgi_idle,
                "timeouts.cgi_idle",
                Timeouts::default().cgi_idle,
            ),
            cgi_total: self.cgi_total(&raw.timeouts),
        };
        let d = RequestLimits::default();
        let limits = RequestLimits {
            max_header_bytes: self.bytes(
                &raw.limits.max_header_bytes,
                "limits.max_header_bytes",
                d.max_header_bytes,
            ),
            max_body_bytes: self.bytes(
                &raw.limits.max_body_bytes,
                "limits.max_body_bytes",
                d.max_body_bytes,
            ),
            cgi_max_header_bytes: self.bytes(
                &raw.limits.cgi_max_header_bytes,
                "limits.cgi_max_header_bytes",
                d.cgi_max_header_bytes,
            ),
            cgi_stderr_bytes: self.bytes(
                &raw.limits.cgi_stderr_bytes,
                "limits.cgi_stderr_bytes",
                d.cgi_stderr_bytes,
            ),
        };
        let admin = self.admin(&raw);
        let metrics = self.metrics(&raw);
        let tls = self.tls(&raw.tls);
        let http2 = self.http2(&raw.http2);
        let tree = self.tree(raw.containers.as_ref());
        let listeners = self.listeners(&raw, &tree);
        let vhosts = self.vhosts(&raw, &tree);
        if let Some(i) = listeners.iter().position(|l| l.tls)
            && !vhosts.iter().any(|v| v.tls.is_some())
        {
            self.err(
                span(&raw.listeners[i]),
                &format!("listener[{i}].tls"),
                "a TLS listener needs a certificate: no vhost has [vhost.tls]".into(),
                Some("[vhost.tls] with cert and key, or self_signed = true"),
            );
        }
        let fastcgi = self.fastcgi(&raw, &tree);
        if !listeners.is_empty() && vhosts.is_empty() {
            self.err(
                span(&raw.listeners[0]),
                "listener",
                "a listener needs at least one [[vhost]] to serve".into(),
                None,
            );
        }
        Config {
            source: name.to_string(),
            server,
            timeouts,
            limits,
            admin,
            metrics,
            tls,
            http2,
            tree,
            listeners,
            vhosts,
            fastcgi,
        }
    }

    fn fastcgi(&mut self, raw: &FileDe, tree: &TreeSpec) -> Vec<FastCgiConfig> {
        let mut out: Vec<FastCgiConfig> = Vec::new();
        for (i, f) in raw.fastcgi.iter().enumerate() {
            let f = f.get_ref();
            let k = |x: &str| format!("fastcgi[{i}].{x}");
            let prefix = f.prefix.get_ref();
            if !prefix.starts_with('/')
                || !prefix.ends_with('/')
                || crate::static_files::normalize(prefix).is_err()
            {
                self.err(span(&f.prefix), &k("prefix"), format!("invalid URL prefix {prefix:?}"), Some("a path starting and ending with `/`, without `.` or `..` segments, e.g. /php/"));
            } else if out.iter().any(|o| &o.prefix == prefix) {
                self.err(
                    span(&f.prefix),
                    &k("prefix"),
                    format!("prefix {prefix:?} is served by an earlier [[fastcgi]]"),
                    None,
                );
            }
            let a = f.address.get_ref();
            let address = if let Some(p) = a.strip_prefix("unix:") {
                if p.is_empty() {
                    self.err(
                        span(&f.address),
                        &k("address"),
                        "empty socket path".into(),
                        Some("unix:/path/to.sock or IP:PORT"),
                    );
                }
                FastCgiAddress::Unix(self.path(p))
            } else {
                match a.parse::<SocketAddr>() {
                    Ok(sa) => FastCgiAddress::Tcp(sa),
                    Err(_) => {
                        self.err(
                            span(&f.address),
                            &k("address"),
                            format!("invalid address {a:?}"),
                            Some("unix:/path/to.sock or IP:PORT, e.g. 127.0.0.1:9000"),
                        );
                        FastCgiAddress::Unix(PathBuf::new())
                    }
                }
            };
            if f.root.get_ref().is_empty() {
                self.err(
                    span(&f.root),
                    &k("root"),
                    "empty directory".into(),
                    Some("a directory path"),
                );
            }
            let container = self.container_ref(&f.container, &k("container"), tree);
            let command: Vec<String> = f
                .command
                .as_ref()
                .map(|c| c.get_ref().iter().map(|s| s.get_ref().clone()).collect())
                .unwrap_or_default();
            if f.command.is_some() && command.first().is_none_or(|p| p.is_empty()) {
                self.err(
                    f.command.as_ref().and_then(span),
                    &k("command"),
                    "empty command".into(),
                    Some("a program and its arguments, e.g. [\"php-fpm8.2\", \"--nodaemonize\"]"),
                );
            }
            let restarts = match &f.restarts {
                None => 5,
                Some(r) => match u32::try_from(*r.get_ref()) {
                    Ok(n) if n <= 1000 => n,
                    _ => {
                        self.err(
                            span(r),
                            &k("restarts"),
                            format!("{} restarts", r.get_ref()),
                            Some("0 to 1000"),
                        );
                        0
                    }
                },
            };
            let pass_handle = f.pass_handle.as_ref().is_some_and(|b| *b.get_ref());
            if pass_handle && matches!(address, FastCgiAddress::Tcp(_)) {
                self.err(
                    f.pass_handle.as_ref().and_then(span),
                    &k("pass_handle"),
                    "a container handle can only pass over a Unix socket".into(),
                    Some("false, or a unix: address"),
                );
            }
            out.push(FastCgiConfig {
                prefix: prefix.clone(),
                address,
                root: self.path(f.root.get_ref()),
                container,
                command,
                restarts,
                pass_handle,
            });
        }
        out
    }

    /// A user or group name as useradd accepts it (or a numeric id); the lookup happens when
    /// the server starts or compiles the site.
    fn account_name(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        let name = v.get_ref();
        let ok = !name.is_empty()
            && name.len() <= 32
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-$".contains(&b));
        if ok {
            return Some(name.clone());
        }
        self.err(
            span(v),
            key,
            format!("invalid name {name:?}"),
            Some("a user or group name (letters, digits, _ . -) or a numeric id"),
        );
        None
    }

    fn server(&mut self, raw: &FileDe) -> ServerConfig {
        let s = &raw.server;
        let mut out = ServerConfig::default();
        if let Some(e) = &s.enforcement {
            match EnforcementMode::parse(e.get_ref()) {
                Some(m) => out.enforcement = m,
                None => self.err(
                    span(e),
                    "server.enforcement",
                    format!("invalid value {:?}", e.get_ref()),
                    Some(EnforcementMode::ALLOWED),
                ),
            }
        }
        if let Some(l) = &s.access_log {
            out.access_log = match l.get_ref().as_str() {
                "off" => AccessLog::Off,
                "-" => AccessLog::Stdout,
                "" => {
                    self.err(
                        span(l),
                        "server.access_log",
                        "empty path".into(),
                        Some("a file path, \"-\" for standard output, or \"off\""),
                    );
                    AccessLog::Stdout
                }
                p => AccessLog::File(self.path(p)),
            };
        }
        if let Some(b) = &s.per_request_containers {
            out.per_request_containers = *b.get_ref();
        }
        if let Some(n) = &s.server_name {
            out.server_name = Some(n.get_ref().clone());
        }
        out.user = s
            .user
            .as_ref()
            .and_then(|v| self.account_name(v, "server.user"));
        out.group = s
            .group
            .as_ref()
            .and_then(|v| self.account_name(v, "server.group"));
        if let (Some(g), None) = (&s.group, &s.user) {
            self.err(
                span(g),
                "server.group",
                "group is given without user".into(),
                Some("set server.user too (the group defaults to the user's primary group)"),
            );
        }
        if let Some(p) = &s.cgroup_parent {
            match CgroupParent::parse(p.get_ref()) {
                Some(c) => out.cgroup_parent = c,
                None => self.err(
                    span(p),
                    "server.cgroup_parent",
                    format!("invalid value {:?}", p.get_ref()),
                    Some(CgroupParent::ALLOWED),
                ),
            }
        }
        if let Some(m) = &s.cgroup_v2_mode {
            match m.get_ref().as_str() {
                "domain" => out.cgroup_v2_mode = CgroupV2Mode::Domain,
                "threaded" => out.cgroup_v2_mode = CgroupV2Mode::Threaded,
                other => self.err(
                    span(m),
                    "server.cgroup_v2_mode",
                    format!("invalid value {other:?}"),
                    Some(CgroupV2Mode::ALLOWED),
                ),
            }
        }
        if let Some(n) = &s.nofile {
            match u64::try_from(*n.get_ref()) {
                Ok(v) if (64..=1 << 30).contains(&v) => out.nofile = Some(v),
                _ => self.err(
                    span(n),
                    "server.nofile",
                    format!("invalid open-file limit {}", n.get_ref()),
                    Some("64..=1073741824 (descriptors)"),
                ),
            }
        }
        out
    }

    fn metrics(&mut self, raw: &FileDe) -> MetricsConfig {
        let mut out = MetricsConfig::default();
        let Some(l) = &raw.metrics.listen else {
            return out;
        };
        let text = l.get_ref().text();
        // A bare port is on loopback: a remote scraper needs an address written out.
        let parsed = match text.parse::<u16>() {
            Ok(port) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
            Err(_) => text.parse::<SocketAddr>().ok(),
        };
        match parsed {
            Some(a) => out.listen = Some(a),
            None => self.err(
                span(l),
                "metrics.listen",
                format!("invalid listen address {text:?}"),
                Some(
                    "a port (on 127.0.0.1), or ADDRESS:PORT such as 127.0.0.1:9464 or 0.0.0.0:9464",
                ),
            ),
        }
        out
    }

    fn admin(&mut self, raw: &FileDe) -> AdminConfig {
        let a = &raw.admin;
        let mut out = AdminConfig::default();
        if let Some(s) = &a.socket {
            out.socket = match s.get_ref().as_str() {
                "off" => None,
                "" => {
                    self.err(
                        span(s),
                        "admin.socket",
                        "empty path".into(),
                        Some("a path (may start with {runtime_dir}) or \"off\""),
                    );
                    None
                }
                p => Some(self.path(p)),
            };
        }
        if let Some(t) = &a.tcp {
            match t.get_ref().parse::<SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => out.tcp = Some(addr),
                Ok(addr) => self.err(
                    span(t),
                    "admin.tcp",
                    format!("{addr} is not a loopback address: the admin API is never exposed beyond this host"),
                    Some("127.0.0.0/8 or [::1] with a port, e.g. 127.0.0.1:9090"),
                ),
                Err(_) => self.err(
                    span(t),
                    "admin.tcp",
                    format!("invalid socket address {:?}", t.get_ref()),
                    Some("127.0.0.0/8 or [::1] with a port, e.g. 127.0.0.1:9090"),
                ),
            }
        }
        match (&a.token, &a.token_file) {
            (Some(t), Some(_)) => self.err(
                span(t),
                "admin.token",
                "both token and token_file are given".into(),
                Some("one of token, token_file"),
            ),
            (Some(t), None) => {
                if t.get_ref().len() < 16 {
                    self.err(
                        span(t),
                        "admin.token",
                        "the token is too short to be a secret".into(),
                        Some("at least 16 characters (e.g. from `openssl rand -hex 16`)"),
                    );
                }
                out.token = Some(TokenSource::Inline(t.get_ref().clone()));
            }
            (None, Some(f)) => out.token = Some(TokenSource::File(self.path(f.get_ref()))),
            (None, None) => {}
        }
        if let (Some(t), None) = (&a.tcp, &out.token) {
            self.err(
                span(t),
                "admin.tcp",
                "the TCP admin API needs a bearer token".into(),
                Some("set admin.token or admin.token_file"),
            );
        }
        out
    }

    fn tree(&mut self, raw: Option<&Spanned<NodeDe>>) -> TreeSpec {
        let mut spec = TreeSpec::default();
        if let Some(raw) = raw {
            let mut nodes = Vec::new();
            spec.root = self.node(raw.get_ref(), &ContainerPath::ROOT, &mut nodes);
            spec.nodes = nodes;
        }
        // The model checks what the syntax cannot: fixed shares of siblings fit in 1.
        let registry = rescon::Registry::new();
        if let Err(e) = LiveTree::build(&registry, &spec) {
            let at = raw.and_then(|r| find_attr_span(r.get_ref(), &e.path, "share"));
            let key = if e.path.as_str().is_empty() {
                "containers".to_string()
            } else {
                format!("containers.{}.share", e.path.as_str().replace('/', "."))
            };
            self.err(at, &key, e.source.to_string(), None);
        }
        spec
    }

    fn node(&mut self, raw: &NodeDe, path: &ContainerPath, out: &mut Vec<NodeSpec>) -> Attributes {
        let mut attrs = Attributes::default();
        let keyname = |k: &str| {
            if path.as_str().is_empty() {
                format!("containers.{k}")
            } else {
                format!("containers.{}.{k}", path.as_str().replace('/', "."))
            }
        };
        // cpu_period and cpu_burst refine cpu_limit, so it is applied first whatever the order.
        let mut scalars: Vec<(&Spanned<String>, &Spanned<EntryDe>)> = raw
            .entries
            .iter()
            .filter(|(_, v)| !matches!(v.get_ref(), EntryDe::Child(_)))
            .map(|(k, v)| (k, v))
            .collect();
        scalars.sort_by_key(|(k, _)| k.get_ref() != "cpu_limit");
        let allowed_keys: Vec<&str> = rescon::attr::ATTRIBUTE_KEYS
            .iter()
            .map(|(k, _)| *k)
            .collect();
        let allowed_keys = format!(
            "{}, or a [table] for a child container",
            allowed_keys.join(", ")
        );
        for (k, v) in scalars {
            let key = keyname(k.get_ref());
            match v.get_ref() {
                EntryDe::Attr(s) => {
                    if let Err(e) = attrs.set(k.get_ref(), &s.text()) {
                        if e.field() == "key" {
                            self.err(
                                span(k),
                                &key,
                                format!("unknown attribute `{}`", k.get_ref()),
                                Some(&allowed_keys),
                            );
                        } else {
                            self.err(
                                span(v),
                                &key,
                                format!("invalid value {:?} for {}", e.value(), e.field()),
                                Some(e.allowed()),
                            );
                        }
                    }
                }
                EntryDe::Other(what) => self.err(
                    span(v),
                    &key,
                    format!("{what} is not an attribute value"),
                    Some("a string or number, or a [table] for a child container"),
                ),
                EntryDe::Child(_) => unreachable!("filtered"),
            }
        }
        for (k, v) in &raw.entries {
            if let EntryDe::Child(child) = v.get_ref() {
                if let Err(why) = tree::check_segment(k.get_ref()) {
                    self.err(
                        span(k),
                        &keyname(k.get_ref()),
                        format!("container name {:?} has {why}", k.get_ref()),
                        Some("ASCII letters, digits, `_`, `-`, `.` (not first)"),
                    );
                    continue;
                }
                let child_path = path.child(k.get_ref());
                let slot = out.len();
                out.push(NodeSpec {
                    path: child_path.clone(),
                    attrs: Attributes::default(),
                });
                let a = self.node(child, &child_path, out);
                out[slot].attrs = a;
            }
        }
        attrs
    }

    fn container_ref(&mut self, v: &Spanned<String>, key: &str, tree: &TreeSpec) -> ContainerPath {
        let declared = || {
            let mut names: Vec<String> = tree
                .paths()
                .map(|p| format!("{:?}", p.as_str()))
                .take(30)
                .collect();
            if tree.nodes.len() + 1 > 30 {
                names.push("...".into());
            }
            names.join(", ")
        };
        match ContainerPath::parse(v.get_ref()) {
            Ok(p) if tree.contains(&p) => p,
            Ok(p) => {
                let list = declared();
                self.err(
                    span(v),
                    key,
                    format!("container {:?} is not declared in [containers]", p.as_str()),
                    Some(&list),
                );
                ContainerPath::ROOT
            }
            Err(why) => {
                let list = declared();
                self.err(
                    span(v),
                    key,
                    format!("invalid container path {:?}: {why}", v.get_ref()),
                    Some(&list),
                );
                ContainerPath::ROOT
            }
        }
    }

    fn prefix(&mut self, v: &Spanned<String>, key: &str) -> Option<IpNet> {
        let s = v.get_ref().trim();
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                self.err(
                    span(v),
                    key,
                    format!("{net} has host bits set; did you mean {}?", net.trunc()),
                    Some("a CIDR prefix such as 10.0.0.0/8, 2001:db8::/32, or an address"),
                );
                None
            }
            Err(_) => {
                self.err(
                    span(v),
                    key,
                    format!("invalid prefix {s:?}"),
                    Some("a CIDR prefix such as 10.0.0.0/8, 2001:db8::/32, or an address"),
                );
                None
            }
        }
    }

    /// A prefix of a listener at `ip`: checked, an IPv4-mapped IPv6 prefix written as the IPv4
    /// prefix it is (so that the two spellings are one prefix), and of a family the listener
    /// receives (an IPv4 address receives IPv4 clients, `::` both, another IPv6 address IPv6
    /// only). The listener group refuses a prefix that can never match, and the server would
    /// then fall back to one socket; found by the `config` fuzz target.
    fn listener_prefix(&mut self, v: &Spanned<String>, key: &str, ip: IpAddr) -> Option<IpNet> {
        let net = self.prefix(v, key)?;
        let net = rescon_linux::listen::check_prefix(net).unwrap_or(net);
        let (v4, v6) = match ip {
            IpAddr::V4(_) => (true, false),
            IpAddr::V6(a) => (a.is_unspecified(), true),
        };
        let ok = match net {
            IpNet::V4(_) => v4,
            IpNet::V6(_) => v6,
        };
        if !ok {
            let (only, fix) = if v4 {
                (
                    "IPv4",
                    "IPv4 prefixes, or listen on \"::\" for both families",
                )
            } else {
                (
                    "IPv6",
                    "IPv6 prefixes, or listen on \"::\" for both families",
                )
            };
            self.err(
                span(v),
                key,
                format!("{net} can never match: a listener on {ip} receives {only} clients only"),
                Some(fix),
            );
            return None;
        }
        Some(net)
    }

    fn listeners(&mut self, raw: &FileDe, tree: &TreeSpec) -> Vec<ListenerConfig> {
        let mut out: Vec<ListenerConfig> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let l = l.get_ref();
            let k = |f: &str| format!("listener[{i}].{f}");
            let name = l
                .name
                .as_ref()
                .map_or_else(|| format!("listener-{i}"), |n| n.get_ref().clone());
            if let Some(prev) = names.insert(name.clone(), i) {
                self.err(
                    l.name.as_ref().map(|n| n.span()),
                    &k("name"),
                    format!("listener name {name:?} is already used by listener[{prev}]"),
                    None,
                );
            }
            let ip = match l
                .address
                .get_ref()
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
            {
                Ok(ip) => ip,
                Err(_) => {
                    self.err(
                        span(&l.address),
                        &k("address"),
                        format!("invalid IP address {:?}", l.address.get_ref()),
                        Some("an IPv4 or IPv6 address such as 127.0.0.1, 0.0.0.0 or ::1"),
                    );
                    IpAddr::from([127, 0, 0, 1])
                }
            };
            let port = match u16::try_from(*l.port.get_ref()) {
                Ok(p) => p,
                Err(_) => {
                    self.err(
                        span(&l.port),
                        &k("port"),
                        format!("invalid port {}", l.port.get_ref()),
                        Some("0..=65535"),
                    );
                    0
                }
            };
            let addr = SocketAddr::new(ip, port);
            if port != 0 {
                if let Some(prev) = addrs.insert(addr, i) {
                    self.err(
                        span(&l.port),
                        &k("port"),
                        format!("{addr} is already used by listener[{prev}]"),
                        None,
                    );
                }
            }
            // Every prefix of the listener, to catch the same prefix given twice.
            let mut seen: BTreeMap<IpNet, String> = BTreeMap::new();
            let mut classes = Vec::new();
            let mut except_seen: Option<String> = None;
            let mut class_names: HashMap<String, usize> = HashMap::new();
            for (j, c) in l.classes.iter().enumerate() {
                let c = c.get_ref();
                let ck = |f: &str| format!("listener[{i}].class[{j}].{f}");
                if let Err(why) = tree::check_segment(c.name.get_ref()) {
                    self.err(
                        span(&c.name),
                        &ck("name"),
                        format!("class name {:?} has {why}", c.name.get_ref()),
                        Some("ASCII letters, digits, `_`, `-`, `.` (not first)"),
                    );
                }
                if c.name.get_ref() == "black-hole" {
                    self.err(
                        span(&c.name),
                        &ck("name"),
                        "\"black-hole\" is the name of the listener's black hole".into(),
                        Some("any other name"),
                    );
                }
                if let Some(prev) = class_names.insert(c.name.get_ref().clone(), j) {
                    self.err(
                        span(&c.name),
                        &ck("name"),
                        format!(
                            "class {:?} is already defined as class[{prev}]",
                            c.name.get_ref()
                        ),
                        None,
                    );
                }
                let container = self.container_ref(&c.container, &ck("container"), tree);
                let filter = match (&c.prefixes, &c.except) {
                    (Some(p), None) => {
                        let mut nets = Vec::new();
                        for (n, v) in p.get_ref().iter().enumerate() {
                            let key = format!("listener[{i}].class[{j}].prefixes[{n}]");
                            if let Some(net) = self.listener_prefix(v, &key, ip) {
                                if let Some(owner) = seen.insert(net, c.name.get_ref().clone()) {
                                    self.err(
                                        span(v),
                                        &key,
                                        format!("prefix {net} is already given to {owner}"),
                                        Some("each prefix in one class or the black hole"),
                                    );
                                }
                                nets.push(net);
                            }
                        }
                        if p.get_ref().is_empty() {
                            self.err(
                                span(p),
                                &ck("prefixes"),
                                "an empty list takes no address".into(),
                                Some("one or more prefixes, or `except = []` for every address"),
                            );
                        }
                        ClassFilter::Prefixes(nets)
                    }
                    (None, Some(e)) => {
                        if let Some(prev) = except_seen.replace(c.name.get_ref().clone()) {
                            self.err(
                                span(e),
                                &ck("except"),
                                format!(
                                    "class {prev:?} already takes the addresses no prefix matches"
                                ),
                                Some("at most one class with `except` per listener"),
                            );
                        }
                        let mut nets = Vec::new();
                        for (n, v) in e.get_ref().iter().enumerate() {
                            let key = format!("listener[{i}].class[{j}].except[{n}]");
                            nets.extend(self.listener_prefix(v, &key, ip));
                        }
                        ClassFilter::Except(nets)
                    }
                    (Some(p), Some(_)) => {
                        self.err(
                            span(p),
                            &ck("prefixes"),
                            "both prefixes and except are given".into(),
                            Some("one of prefixes, except"),
                        );
                        ClassFilter::Prefixes(Vec::new())
                    }
                    (None, None) => {
                        self.err(
                            span(&c.name),
                            &ck("prefixes"),
                            format!(
                                "class {:?} has neither prefixes nor except",
                                c.name.get_ref()
                            ),
                            Some("prefixes = [...] or except = [...]"),
                        );
                        ClassFilter::Prefixes(Vec::new())
                    }
                };
                let max_handshakes = self.max_handshakes(&c.max_handshakes, &ck("max_handshakes"));
                classes.push(ClientClass {
                    name: c.name.get_ref().clone(),
                    container,
                    filter,
                    max_handshakes,
                });
            }
            if classes.is_empty() {
                classes.push(ClientClass {
                    name: "default".into(),
                    container: ContainerPath::ROOT,
                    filter: ClassFilter::Except(Vec::new()),
                    max_handshakes: DEFAULT_MAX_HANDSHAKES,
                });
            }
            let mut black_hole = Vec::new();
            for (n, v) in l.black_hole.iter().enumerate() {
                let key = format!("listener[{i}].black_hole[{n}]");
                if let Some(net) = self.listener_prefix(v, &key, ip) {
                    if let Some(owner) = seen.insert(net, "the black hole".into()) {
                        self.err(
                            span(v),
                            &key,
                            format!("prefix {net} is already given to {owner}"),
                            Some("each prefix in one class or the black hole"),
                        );
                    }
                    black_hole.push(net);
                }
            }
            let mut edge = Vec::new();
            for (n, v) in l.edge.iter().enumerate() {
                let name = v.get_ref();
                // IFNAMSIZ is 16 with the NUL; names have no '/', blank or ':'.
                if name.is_empty() || name.len() > 15 || name.contains(['/', ':', ' ', '\t', '\0'])
                {
                    self.err(
                        span(v),
                        &format!("listener[{i}].edge[{n}]"),
                        format!("invalid interface name {name:?}"),
                        Some("a network interface as `ip link` lists it, like \"eth0\""),
                    );
                } else if edge.contains(name) {
                    self.err(
                        span(v),
                        &format!("listener[{i}].edge[{n}]"),
                        format!("interface {name:?} is listed twice"),
                        None,
                    );
                } else {
                    edge.push(name.clone());
                }
            }
            let flood_defense = l.flood_defense.as_ref().map(|f| {
                let fr = f.get_ref();
                let fk = |x: &str| format!("listener[{i}].flood_defense.{x}");
                let action = match (fr.action.get_ref().as_str(), &fr.demote_to) {
                    ("black-hole", None) => FloodAction::BlackHole,
                    ("demote", Some(to)) => {
                        if !classes.iter().any(|c| &c.name == to.get_ref()) {
                            let names: Vec<String> =
                                classes.iter().map(|c| format!("{:?}", c.name)).collect();
                            self.err(
                                span(to),
                                &fk("demote_to"),
                                format!("no class {:?} in this listener", to.get_ref()),
                                Some(&names.join(", ")),
                            );
                        }
                        FloodAction::Demote(to.get_ref().clone())
                    }
                    ("demote", None) => {
                        self.err(
                            span(&fr.action),
                            &fk("demote_to"),
                            "demote needs the class to demote to".into(),
                            Some("demote_to = \"<class name>\""),
                        );
                        FloodAction::BlackHole
                    }
                    ("black-hole", Some(to)) => {
                        self.err(
                            span(to),
                            &fk("demote_to"),
                            "demote_to is only for action = \"demote\"".into(),
                            None,
                        );
                        FloodAction::BlackHole
                    }
                    (other, _) => {
                        self.err(
                            span(&fr.action),
                            &fk("action"),
                            format!("invalid value {other:?}"),
                            Some("black-hole, demote"),
                        );
                        FloodAction::BlackHole
                    }
                };
                let syn_rate = match &fr.syn_rate {
                    None => 1000,
                    Some(r) if *r.get_ref() > 0 => *r.get_ref() as u64,
                    Some(r) => {
                        self.err(
                            span(r),
                            &fk("syn_rate"),
                            format!("invalid rate {}", r.get_ref()),
                            Some("a positive number of SYNs per second"),
                        );
                        1000
                    }
                };
                let hold = self.duration(&fr.hold, &fk("hold"), Duration::from_secs(60));
                FloodDefense {
                    action,
                    syn_rate,
                    hold,
                }
            });
            let tls = l.tls.as_ref().is_some_and(|t| *t.get_ref());
            let protocols = self.protocols(&l.protocols, tls, &k("protocols"));
            out.push(ListenerConfig {
                name,
                addr,
                classes,
                black_hole,
                edge,
                flood_defense,
                tls,
                protocols,
            });
        }
        out
    }

    fn vhosts(&mut self, raw: &FileDe, tree: &TreeSpec) -> Vec<VhostConfig> {
        let mut out: Vec<VhostConfig> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut hosts: HashMap<String, usize> = HashMap::new();
        let mut default: Option<usize> = None;
        for (i, v) in raw.vhosts.iter().enumerate() {
            let v = v.get_ref();
            let k = |f: &str| format!("vhost[{i}].{f}");
            if let Some(prev) = names.insert(v.name.get_ref().clone(), i) {
                self.err(
                    span(&v.name),
                    &k("name"),
                    format!(
                        "vhost {:?} is already defined as vhost[{prev}]",
                        v.name.get_ref()
                    ),
                    None,
                );
            }
            let mut hs = Vec::new();
            for (n, h) in v.hosts.iter().enumerate() {
                let key = format!("vhost[{i}].hosts[{n}]");
                let name = h
                    .get_ref()
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                let body = name.strip_prefix("*.").unwrap_or(&name);
                let ok = !body.is_empty()
                    && body.split('.').all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    self.err(
                        span(h),
                        &key,
                        format!("invalid host name {:?}", h.get_ref()),
                        Some("a DNS name without port, e.g. example.com or *.example.com"),
                    );
                    continue;
                }
                if let Some(prev) = hosts.insert(name.clone(), i) {
                    self.err(
                        span(h),
                        &key,
                        format!("host {name:?} is already served by vhost[{prev}]"),
                        None,
                    );
                }
                hs.push(name);
            }
            let is_default = v.default.as_ref().is_some_and(|d| *d.get_ref());
            if is_default {
                if let Some(prev) = default.replace(i) {
                    self.err(
                        v.default.as_ref().map(|d| d.span()),
                        &k("default"),
                        format!("vhost[{prev}] is already the default"),
                        Some("default = true on at most one vhost"),
                    );
                }
            }
            if v.root.get_ref().is_empty() {
                self.err(
                    span(&v.root),
                    &k("root"),
                    "empty document root".into(),
                    Some("a directory path, or {demo} for the embedded demo site"),
                );
            }
            let container = self.container_ref(&v.container, &k("container"), tree);
            let index = match &v.index {
                None => vec!["index.html".to_string()],
                Some(list) => {
                    let mut idx = Vec::new();
                    for (n, f) in list.iter().enumerate() {
                        let name = f.get_ref();
                        if name.is_empty()
                            || name.contains('/')
                            || name == "."
                            || name == ".."
                            || name.contains('\0')
                        {
                            self.err(
                                span(f),
                                &format!("vhost[{i}].index[{n}]"),
                                format!("invalid index file name {name:?}"),
                                Some("a file name without `/`, e.g. index.html"),
                            );
                        } else {
                            idx.push(name.clone());
                        }
                    }
                    idx
                }
            };
            let mut cgi = Vec::new();
            for (n, c) in v.cgi.iter().enumerate() {
                let c = c.get_ref();
                let ck = |f: &str| format!("vhost[{i}].cgi[{n}].{f}");
                let prefix = c.prefix.get_ref();
                let decoded_ok = crate::static_files::normalize(prefix).is_ok();
                if !prefix.starts_with('/') || !prefix.ends_with('/') || !decoded_ok {
                    self.err(span(&c.prefix), &ck("prefix"), format!("invalid URL prefix {prefix:?}"), Some("a path starting and ending with `/`, without `.` or `..` segments, e.g. /cgi-bin/"));
                }
                if c.dir.get_ref().is_empty() {
                    self.err(
                        span(&c.dir),
                        &ck("dir"),
                        "empty directory".into(),
                        Some("a directory path"),
                    );
                }
                let container = self.container_ref(&c.container, &ck("container"), tree);
                cgi.push(CgiPrefix {
                    prefix: prefix.clone(),
                    dir: self.path(c.dir.get_ref()),
                    container,
                });
            }
            let tls = v.tls.as_ref().and_then(|t| self.vhost_tls(t, &k("tls")));
            let user = v
                .user
                .as_ref()
                .and_then(|u| self.account_name(u, &k("user")));
            let group = v
                .group
                .as_ref()
                .and_then(|g| self.account_name(g, &k("group")));
            if let (Some(g), None) = (&v.group, &v.user) {
                self.err(
                    span(g),
                    &k("group"),
                    "group is given without user".into(),
                    Some(
                        "set the vhost's user too (the group defaults to the user's primary group)",
                    ),
                );
            }
            out.push(VhostConfig {
                tls,
                user,
                group,
                name: v.name.get_ref().clone(),
                hosts: hs,
                root: self.path(v.root.get_ref()),
                container,
                index,
                default: is_default,
                cgi,
            });
        }
        if default.is_none() {
            if let Some(first) = out.first_mut() {
                first.default = true;
            }
        }
        out
    }
}

/// The span of attribute `key` of the node at `path`, or of the node's key if it has none.
fn find_attr_span(root: &NodeDe, path: &ContainerPath, key: &str) -> Option<Range<usize>> {
    let mut node = root;
    let mut at = None;
    if !path.as_str().is_empty() {
        for seg in path.as_str().split('/') {
            let (k, v) = node.entries.iter().find(|(k, _)| k.get_ref() == seg)?;
            at = Some(k.span());
            match v.get_ref() {
                EntryDe::Child(c) => node = c,
                _ => return at,
            }
        }
    }
    node.entries
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v.span())
        .or(at)
}

#[cfg(test)]
mod tests;
