//! `/metrics` in the Prometheus text exposition format (version 0.0.4), following its
//! conventions: a series is one declared container, labelled by its stable declared path, and
//! its value is the container's **own** usage, so that `sum()` over containers is right.
//!
//! # Families
//!
//! | family | labels | what |
//! |---|---|---|
//! | `rescon_<usage>` (`rescon_cpu_seconds_total`, ...) | `container` | the container's own usage: its own work, and that of the undeclared containers below it (per-connection, per-request and CGI-run containers, the server's own) |
//! | `rescon_subtree_<usage>` | `container` | the same for the container and every declared container below it: `rescon_subtree_x{container="P"}` is the sum of `rescon_x` over `P` and the paths below it |
//! | `rescon_http_request_duration_seconds` | `vhost`, `class` | a histogram of the time from a request's head to the last byte of its response |
//! | `rescon_http_responses_total` | `vhost`, `class`, `code` | responses by status |
//! | `rescon_listener_dropped_syns_total` | `listener`, `group`, `stage` | SYNs the kernel dropped: `stage="socket"` at a member socket of the group (`group` is the class, or `black-hole`: its filter, or a full queue), `stage="edge"` by XDP at an interface |
//! | `rescon_build_info` | `version`, `target` | 1 |
//!
//! `container` is the declared path (`clients/premium`), `/` for the root. Only declared
//! containers are series: the number of series is bounded by the configuration, not by the
//! traffic.
//!
//! # Counters that hold across moves
//!
//! A connection's container moves from its class to its vhost on its first request, and the
//! model moves its usage with it. A counter read from the model would then go down for the
//! class (a reset to Prometheus). The [`Ledger`] makes every counter monotonic instead: at each
//! scrape it charges each live container's growth since the last scrape to the declared
//! container that holds it *now*, and a released container's usage, which the model folds into
//! its parent, is charged once (what was already charged is taken off the parent's growth). So
//! usage is attributed to where it was observed, to the scrape, and the sums are exact:
//! `rescon_subtree_x{container="/"}` equals the root's subtree usage in the model at the scrape.

use super::api::{ContainerView, UsageView};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

/// The content type of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The label value of the root container (whose declared path is empty).
pub const ROOT_LABEL: &str = "/";

/// Escapes a label value: backslash, double quote and newline.
///
/// ```
/// assert_eq!(rescon_httpd::admin::escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
/// ```
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

const NS: f64 = 1e9;

/// A usage counter: its family's name, help and value in a [`UsageView`].
struct Counter {
    name: &'static str,
    help: &'static str,
    value: fn(&UsageView) -> u64,
    scale: f64,
}

const COUNTERS: &[Counter] = &[
    Counter {
        name: "cpu_seconds_total",
        help: "CPU time charged by the user-level scheduler.",
        value: |u| u.cpu_ns,
        scale: NS,
    },
    Counter {
        name: "kernel_cpu_seconds_total",
        help: "CPU time the kernel (cgroups) reports.",
        value: |u| u.kernel_cpu_ns,
        scale: NS,
    },
    Counter {
        name: "kernel_network_cpu_seconds_total",
        help: "The kernel's network CPU (softirq receive, send) charged by eBPF accounting.",
        value: |u| u.kernel_net_ns,
        scale: NS,
    },
    Counter {
        name: "receive_bytes_total",
        help: "Bytes received on sockets bound to the containers.",
        value: |u| u.bytes_in,
        scale: 1.0,
    },
    Counter {
        name: "transmit_bytes_total",
        help: "Bytes sent on sockets bound to the containers.",
        value: |u| u.bytes_out,
        scale: 1.0,
    },
    Counter {
        name: "requests_total",
        help: "Requests served.",
        value: |u| u.requests,
        scale: 1.0,
    },
    Counter {
        name: "connections_accepted_total",
        help: "Connections accepted.",
        value: |u| u.conns_accepted,
        scale: 1.0,
    },
    Counter {
        name: "connections_refused_total",
        help: "Connections refused by a limit or a filter.",
        value: |u| u.conns_refused,
        scale: 1.0,
    },
    Counter {
        name: "queue_wait_seconds_total",
        help: "Time tasks were runnable but waiting to run.",
        value: |u| u.wait_ns,
        scale: NS,
    },
    Counter {
        name: "throttled_seconds_total",
        help: "Time held back by a CPU limit.",
        value: |u| u.throttled_ns,
        scale: NS,
    },
    Counter {
        name: "processes_spawned_total",
        help: "Child processes spawned (CGI runs).",
        value: |u| u.procs_spawned,
        scale: 1.0,
    },
    Counter {
        name: "tls_handshakes_total",
        help: "TLS handshakes completed.",
        value: |u| u.tls_handshakes,
        scale: 1.0,
    },
    Counter {
        name: "tls_handshake_failures_total",
        help: "TLS handshakes that failed (bad input, timed out, or the client left).",
        value: |u| u.tls_failed,
        scale: 1.0,
    },
    Counter {
        name: "http2_streams_total",
        help: "HTTP/2 streams opened by clients.",
        value: |u| u.h2_streams,
        scale: 1.0,
    },
    Counter {
        name: "http2_resets_total",
        help: "HTTP/2 streams reset by clients (RST_STREAM received).",
        value: |u| u.h2_resets,
        scale: 1.0,
    },
    Counter {
        name: "stderr_bytes_total",
        help: "Bytes child processes (CGI runs) wrote to standard error, logged or dropped.",
        value: |u| u.stderr_bytes,
        scale: 1.0,
    },
];

const N: usize = COUNTERS.len();

struct Gauge {
    name: &'static str,
    help: &'static str,
    value: fn(&UsageView) -> u64,
}

const GAUGES: &[Gauge] = &[
    Gauge {
        name: "open_connections",
        help: "Connections open now.",
        value: |u| u.open_conns,
    },
    Gauge {
        name: "processes",
        help: "Child processes alive now.",
        value: |u| u.processes,
    },
    Gauge {
        name: "memory_bytes",
        help: "Memory charged by the application now.",
        value: |u| u.memory_bytes,
    },
    Gauge {
        name: "kernel_memory_bytes",
        help: "Memory the kernel (cgroups) reports now.",
        value: |u| u.kernel_memory_bytes,
    },
];

fn counters(u: &UsageView) -> [u64; N] {
    std::array::from_fn(|i| (COUNTERS[i].value)(u))
}

/// A container's own counters *and* what its released children left it: its subtree less
/// its live children's subtrees (the snapshot's `usage` holds its own work only, a released
/// child's usage is in the subtree figures alone).
fn own_counters(v: &ContainerView) -> [u64; N] {
    let mut own = counters(&v.usage_subtree);
    for c in &v.children {
        let k = counters(&c.usage_subtree);
        for i in 0..N {
            own[i] = own[i].saturating_sub(k[i]);
        }
    }
    own
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    parent: Option<u64>,
    own: [u64; N],
}

/// What each declared container has been charged, kept between scrapes (see the module
/// docs, "Counters that hold across moves").
#[derive(Debug, Default)]
pub struct Ledger {
    seen: HashMap<u64, Seen>,
    charged: HashMap<String, [u64; N]>,
}

/// A declared container's own counters and gauges.
type Row = ([u64; N], [u64; GAUGES.len()]);

/// Requests' cells by (vhost, class).
type Cells = HashMap<(Arc<str>, Arc<str>), Arc<RequestCell>>;

/// A thread's last cell looked up: (vhost, class, the stats' address, the cell).
type LastCell = Option<(Arc<str>, Arc<str>, usize, Arc<RequestCell>)>;

/// One scrape's view of the declared containers: own counters (from the ledger) and gauges.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Declared path to (own counters, own gauges), in path order.
    rows: BTreeMap<String, Row>,
}

impl Ledger {
    /// Charges the growth since the last scrape of every container of `tree` to the declared
    /// container holding it; `paths` maps the ids of declared containers to their paths (the
    /// root's is empty). Returns the declared containers' own counters and gauges.
    pub fn scrape(&mut self, tree: &ContainerView, paths: &HashMap<u64, String>) -> Scrape {
        // The live containers with the declared path that holds each.
        let mut live: Vec<(&ContainerView, &str)> = Vec::new();
        let root_path = paths.get(&tree.id).map_or("", String::as_str);
        let mut stack = vec![(tree, root_path)];
        while let Some((v, owner)) = stack.pop() {
            let owner = paths.get(&v.id).map_or(owner, String::as_str);
            live.push((v, owner));
            for c in &v.children {
                stack.push((c, owner));
            }
        }
        let is_live: HashMap<u64, ()> = live.iter().map(|(v, _)| (v.id, ())).collect();
        // What released containers had been charged, which their nearest live ancestor's
        // own usage now holds again.
        let mut already: HashMap<u64, [u64; N]> = HashMap::new();
        for (id, s) in &self.seen {
            if is_live.contains_key(id) {
                continue;
            }
            let mut up = s.parent;
            while let Some(p) = up {
                if is_live.contains_key(&p) {
                    let a = already.entry(p).or_insert([0; N]);
                    for (x, o) in a.iter_mut().zip(s.own) {
                        *x += o;
                    }
                    break;
                }
                up = self.seen.get(&p).and_then(|x| x.parent);
            }
        }
        let mut out = Scrape::default();
        for p in paths.values() {
            out.rows.entry(p.clone()).or_default();
        }
        let mut seen = HashMap::with_capacity(live.len());
        for (v, owner) in live {
            let own = own_counters(v);
            let last = self.seen.get(&v.id).map_or([0; N], |s| s.own);
            let before = already.get(&v.id).copied().unwrap_or([0; N]);
            let charged = self.charged.entry(owner.to_string()).or_insert([0; N]);
            for i in 0..N {
                charged[i] += own[i].saturating_sub(last[i]).saturating_sub(before[i]);
            }
            let row = out.rows.entry(owner.to_string()).or_default();
            for (g, slot) in GAUGES.iter().zip(row.1.iter_mut()) {
                *slot += (g.value)(&v.usage);
            }
            seen.insert(
                v.id,
                Seen {
                    parent: v.parent,
                    own,
                },
            );
        }
        self.seen = seen;
        for (p, row) in out.rows.iter_mut() {
            row.0 = self.charged.get(p).copied().unwrap_or([0; N]);
        }
        out
    }
}

fn label(path: &str) -> String {
    if path.is_empty() {
        ROOT_LABEL.to_string()
    } else {
        escape_label(path)
    }
}

/// Whether `p` is `parent` or below it.
fn under(p: &str, parent: &str) -> bool {
    parent.is_empty()
        || p == parent
        || (p.len() > parent.len() && p.starts_with(parent) && p.as_bytes()[parent.len()] == b'/')
}

impl Scrape {
    /// Writes the container families: own and subtree, counters and gauges.
    pub fn render(&self, out: &mut String) {
        let subtree = |f: &dyn Fn(&Row) -> u64, p: &str| -> u64 {
            self.rows
                .iter()
                .filter(|(q, _)| under(q, p))
                .map(|(_, r)| f(r))
                .sum()
        };
        for (i, c) in COUNTERS.iter().enumerate() {
            for sub in [false, true] {
                let name = if sub {
                    format!("rescon_subtree_{}", c.name)
                } else {
                    format!("rescon_{}", c.name)
                };
                let help = if sub {
                    format!(
                        "{} Of the container and the declared containers below it.",
                        c.help
                    )
                } else {
                    format!(
                        "{} Of the container itself and its undeclared descendants.",
                        c.help
                    )
                };
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (p, r) in &self.rows {
                    let v = if sub { subtree(&|r| r.0[i], p) } else { r.0[i] };
                    let _ = writeln!(
                        out,
                        "{name}{{container=\"{}\"}} {}",
                        label(p),
                        v as f64 / c.scale
                    );
                }
            }
        }
        for (i, g) in GAUGES.iter().enumerate() {
            for sub in [false, true] {
                let name = if sub {
                    format!("rescon_subtree_{}", g.name)
                } else {
                    format!("rescon_{}", g.name)
                };
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} gauge", g.help);
                for (p, r) in &self.rows {
                    let v = if sub { subtree(&|r| r.1[i], p) } else { r.1[i] };
                    let _ = writeln!(out, "{name}{{container=\"{}\"}} {v}", label(p));
                }
            }
        }
    }
}

/// The upper bounds of the request-duration histogram's buckets, in seconds (and `+Inf`).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const NB: usize = DURATION_BUCKETS.len();

/// The requests of one (vhost, class): a histogram of their durations and counts by status.
///
/// Written by hand rather than with a metrics crate: a cell is a few atomic counters bumped
/// once per request, and the exposition is written beside the container families, in the
/// same text.
#[derive(Debug)]
pub struct RequestCell {
    buckets: [AtomicU64; NB],
    count: AtomicU64,
    sum_ns: AtomicU64,
    /// Responses by status code, 100..=599.
    codes: Box<[AtomicU64; 500]>,
}

impl Default for RequestCell {
    fn default() -> Self {
        RequestCell {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            codes: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl RequestCell {
    /// Records one response: its status and how long it took.
    pub fn record(&self, status: u16, duration_ns: u64) {
        let secs = duration_ns as f64 / NS;
        // The first bucket it fits; the rendering makes them cumulative.
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(duration_ns, Relaxed);
        if (100..=599).contains(&status) {
            self.codes[(status - 100) as usize].fetch_add(1, Relaxed);
        }
    }
}

/// The `vhost` label of a request no vhost answered.
pub static NO_VHOST: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));

/// The requests' histograms and status counts by (vhost, class), for the life of the server.
#[derive(Debug, Default)]
pub struct HttpStats {
    cells: RwLock<Cells>,
}

thread_local! {
    /// The last cell this thread looked up: a connection's requests go to the same one. The
    /// key's `Arc`s are kept, so their addresses cannot be reused for other names meanwhile.
    static LAST: std::cell::RefCell<LastCell> =
        const { std::cell::RefCell::new(None) };
}

impl HttpStats {
    /// The cell of (`vhost`, `class`): `vhost` is `-` for a request no vhost answered.
    pub fn cell(&self, vhost: &Arc<str>, class: &Arc<str>) -> Arc<RequestCell> {
        let me = self as *const HttpStats as usize;
        let hit = LAST.with(|l| {
            l.borrow().as_ref().and_then(|(v, c, owner, cell)| {
                (Arc::ptr_eq(v, vhost) && Arc::ptr_eq(c, class) && *owner == me)
                    .then(|| cell.clone())
            })
        });
        if let Some(c) = hit {
            return c;
        }
        let key = (vhost.clone(), class.clone());
        let found = self
            .cells
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let cell = match found {
            Some(c) => c,
            None => self
                .cells
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .clone(),
        };
        LAST.with(|l| *l.borrow_mut() = Some((vhost.clone(), class.clone(), me, cell.clone())));
        cell
    }

    /// Writes the histogram and the status counts.
    pub fn render(&self, out: &mut String) {
        let cells = self.cells.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<&(Arc<str>, Arc<str>)> = cells.keys().collect();
        keys.sort();
        let h = "rescon_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {h} Time from a request's head to the last byte of its response.\n# TYPE {h} histogram"
        );
        for k in &keys {
            let c = &cells[*k];
            let l = format!(
                "vhost=\"{}\",class=\"{}\"",
                escape_label(&k.0),
                escape_label(&k.1)
            );
            let mut cum = 0;
            for (b, n) in DURATION_BUCKETS.iter().zip(&c.buckets) {
                cum += n.load(Relaxed);
                let _ = writeln!(out, "{h}_bucket{{{l},le=\"{b}\"}} {cum}");
            }
            let count = c.count.load(Relaxed);
            let _ = writeln!(out, "{h}_bucket{{{l},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{h}_sum{{{l}}} {}", c.sum_ns.load(Relaxed) as f64 / NS);
            let _ = writeln!(out, "{h}_count{{{l}}} {count}");
        }
        let r = "rescon_http_responses_total";
        let _ = writeln!(
            out,
            "# HELP {r} Responses by status code.\n# TYPE {r} counter"
        );
        for k in &keys {
            let c = &cells[*k];
            for (i, n) in c.codes.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{r}{{vhost=\"{}\",class=\"{}\",code=\"{}\"}} {n}",
                        escape_label(&k.0),
                        escape_label(&k.1),
                        i + 100
                    );
                }
            }
        }
    }
}

/// SYNs the kernel dropped for one prefix group of a listener, at one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropCount {
    /// The listener.
    pub listener: String,
    /// The prefix group: a class's name, or `black-hole`.
    pub group: String,
    /// Where: `socket` (a member socket's filter or full queue), `edge` (XDP at an
    /// interface); later stages add their own names.
    pub stage: String,
    /// SYNs dropped since the server started.
    pub dropped: u64,
}

/// Writes the drop counters (summed over the members of a group at a stage).
pub fn render_drops(drops: &[DropCount], out: &mut String) {
    let mut sum: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for d in drops {
        *sum.entry((&d.listener, &d.group, &d.stage)).or_default() += d.dropped;
    }
    let n = "rescon_listener_dropped_syns_total";
    let _ = writeln!(
        out,
        "# HELP {n} SYNs the kernel dropped, by listener, prefix group and stage.\n# TYPE {n} counter"
    );
    for ((l, g, s), v) in sum {
        let _ = writeln!(
            out,
            "{n}{{listener=\"{}\",group=\"{}\",stage=\"{}\"}} {v}",
            escape_label(l),
            escape_label(g),
            escape_label(s)
        );
    }
}

/// Writes `rescon_build_info`.
pub fn render_build_info(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP rescon_build_info The server's version and target.\n# TYPE rescon_build_info gauge\nrescon_build_info{{version=\"{}\",target=\"{}-{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
}

/// The state `/metrics` keeps between scrapes.
#[derive(Debug, Default)]
pub struct MetricsState {
    /// The containers' ledger.
    pub ledger: Mutex<Ledger>,
    /// The requests' statistics (the server records into them).
    pub http: Arc<HttpStats>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescon::{Attributes, Registry};

    fn view(r: &Registry) -> ContainerView {
        ContainerView::from_snapshot(&r.root().snapshot(), None)
    }

    #[test]
    fn counters_hold_across_moves_and_releases_and_add_up() {
        let r = Registry::new();
        let root = r.root();
        let class = root.create_child("premium", Attributes::default()).unwrap();
        let vhost = root.create_child("site", Attributes::default()).unwrap();
        let paths: HashMap<u64, String> = [
            (root.id().get(), String::new()),
            (class.id().get(), "premium".to_string()),
            (vhost.id().get(), "site".to_string()),
        ]
        .into();
        let mut ledger = Ledger::default();
        let conn = class.create_child("conn-1", Attributes::default()).unwrap();
        conn.account().add_cpu_ns(100);
        let s = ledger.scrape(&view(&r), &paths);
        assert_eq!(s.rows["premium"].0[0], 100);
        // The connection moves to its vhost and works there: the class keeps its 100.
        root.reparent(&conn, Some(&vhost)).unwrap();
        conn.account().add_cpu_ns(50);
        let s = ledger.scrape(&view(&r), &paths);
        assert_eq!(s.rows["premium"].0[0], 100);
        assert_eq!(s.rows["site"].0[0], 50);
        // Released, its usage folds into the vhost: charged once.
        conn.account().add_cpu_ns(7);
        drop(conn);
        let s = ledger.scrape(&view(&r), &paths);
        assert_eq!(s.rows["site"].0[0], 57);
        assert_eq!(s.rows[""].0[0], 0);
        let total: u64 = s.rows.values().map(|r| r.0[0]).sum();
        assert_eq!(total, root.usage_subtree().cpu_ns, "sums are exact");
        let mut text = String::new();
        s.render(&mut text);
        assert!(
            text.contains("rescon_cpu_seconds_total{container=\"site\"} 0.000000057\n"),
            "{text}"
        );
        assert!(
            text.contains("rescon_subtree_cpu_seconds_total{container=\"/\"} 0.000000157\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = HttpStats::default();
        let (v, c): (Arc<str>, Arc<str>) = ("demo".into(), "local".into());
        h.cell(&v, &c).record(200, 2_000_000);
        h.cell(&v, &c).record(404, 20_000_000_000);
        let mut t = String::new();
        h.render(&mut t);
        assert!(t.contains("rescon_http_request_duration_seconds_bucket{vhost=\"demo\",class=\"local\",le=\"0.001\"} 0\n"), "{t}");
        assert!(t.contains("le=\"0.0025\"} 1\n"), "{t}");
        assert!(t.contains("le=\"10\"} 1\n"), "{t}");
        assert!(t.contains("le=\"+Inf\"} 2\n"), "{t}");
        assert!(t.contains(
            "rescon_http_request_duration_seconds_count{vhost=\"demo\",class=\"local\"} 2\n"
        ));
        assert!(t.contains(
            "rescon_http_responses_total{vhost=\"demo\",class=\"local\",code=\"404\"} 1\n"
        ));
    }
}
