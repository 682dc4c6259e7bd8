//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Each series is the usage of a container's *subtree* (released descendants included), so
//! counters only grow even as per-connection containers come and go; for the same reason a
//! parent's value includes its children's, and summing a parent with its children counts twice.

use super::api::{ContainerView, UsageView};
use std::collections::HashMap;
use std::fmt::Write;

/// The content type of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&UsageView) -> f64,
}

const NS: f64 = 1e9;

const METRICS: &[Metric] = &[
    Metric {
        name: "rescon_cpu_seconds_total",
        kind: "counter",
        help: "CPU time charged by the user-level scheduler.",
        value: |u| u.cpu_ns as f64 / NS,
    },
    Metric {
        name: "rescon_kernel_cpu_seconds_total",
        kind: "counter",
        help: "CPU time the kernel (cgroups) reports.",
        value: |u| u.kernel_cpu_ns as f64 / NS,
    },
    Metric {
        name: "rescon_kernel_network_cpu_seconds_total",
        kind: "counter",
        help: "The kernel's network CPU (softirq receive, send) charged by eBPF accounting.",
        value: |u| u.kernel_net_ns as f64 / NS,
    },
    Metric {
        name: "rescon_receive_bytes_total",
        kind: "counter",
        help: "Bytes received on sockets bound to the containers.",
        value: |u| u.bytes_in as f64,
    },
    Metric {
        name: "rescon_transmit_bytes_total",
        kind: "counter",
        help: "Bytes sent on sockets bound to the containers.",
        value: |u| u.bytes_out as f64,
    },
    Metric {
        name: "rescon_requests_total",
        kind: "counter",
        help: "Requests served.",
        value: |u| u.requests as f64,
    },
    Metric {
        name: "rescon_connections_accepted_total",
        kind: "counter",
        help: "Connections accepted.",
        value: |u| u.conns_accepted as f64,
    },
    Metric {
        name: "rescon_connections_refused_total",
        kind: "counter",
        help: "Connections refused by a limit or a filter.",
        value: |u| u.conns_refused as f64,
    },
    Metric {
        name: "rescon_queue_wait_seconds_total",
        kind: "counter",
        help: "Time tasks were runnable but waiting to run.",
        value: |u| u.wait_ns as f64 / NS,
    },
    Metric {
        name: "rescon_throttled_seconds_total",
        kind: "counter",
        help: "Time held back by a CPU limit.",
        value: |u| u.throttled_ns as f64 / NS,
    },
    Metric {
        name: "rescon_processes_spawned_total",
        kind: "counter",
        help: "Child processes spawned (CGI runs).",
        value: |u| u.procs_spawned as f64,
    },
    Metric {
        name: "rescon_tls_handshakes_total",
        kind: "counter",
        help: "TLS handshakes completed.",
        value: |u| u.tls_handshakes as f64,
    },
    Metric {
        name: "rescon_tls_handshake_failures_total",
        kind: "counter",
        help: "TLS handshakes that failed (bad input, timed out, or the client left).",
        value: |u| u.tls_failed as f64,
    },
    Metric {
        name: "rescon_http2_streams_total",
        kind: "counter",
        help: "HTTP/2 streams opened by clients.",
        value: |u| u.h2_streams as f64,
    },
    Metric {
        name: "rescon_http2_resets_total",
        kind: "counter",
        help: "HTTP/2 streams reset by clients (RST_STREAM received).",
        value: |u| u.h2_resets as f64,
    },
    Metric {
        name: "rescon_stderr_bytes_total",
        kind: "counter",
        help: "Bytes child processes (CGI runs) wrote to standard error, logged or dropped.",
        value: |u| u.stderr_bytes as f64,
    },
    Metric {
        name: "rescon_open_connections",
        kind: "gauge",
        help: "Connections open now.",
        value: |u| u.open_conns as f64,
    },
    Metric {
        name: "rescon_processes",
        kind: "gauge",
        help: "Child processes alive now.",
        value: |u| u.processes as f64,
    },
    Metric {
        name: "rescon_memory_bytes",
        kind: "gauge",
        help: "Memory charged by the application now.",
        value: |u| u.memory_bytes as f64,
    },
];

/// Renders the metrics of `containers`; `paths` gives the declared path of those that have one
/// (a `path` label).
pub fn render(containers: &[&ContainerView], paths: &HashMap<u64, String>) -> String {
    let mut out = String::new();
    let labels: Vec<String> = containers
        .iter()
        .map(|c| {
            let mut l = format!("id=\"{}\",name=\"{}\"", c.id, escape_label(&c.name));
            if let Some(p) = paths.get(&c.id) {
                let _ = write!(l, ",path=\"{}\"", escape_label(p));
            }
            l
        })
        .collect();
    for m in METRICS {
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
        for (c, l) in containers.iter().zip(&labels) {
            let _ = writeln!(out, "{}{{{l}}} {}", m.name, (m.value)(&c.usage_subtree));
        }
    }
    out
}
