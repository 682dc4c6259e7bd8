//! Turning admin API documents into text for a terminal.

use rescon_admin::api::{ContainerView, ErrorBody, FiltersView, MoveResult, UsageView};
use std::fmt::Write;

/// Seconds with three decimals: `1.234s`.
pub fn fmt_secs(ns: u64) -> String {
    format!(
        "{}.{:03}s",
        ns / 1_000_000_000,
        ns % 1_000_000_000 / 1_000_000
    )
}

/// Bytes with a binary unit: `512B`, `1.5KiB`, `3.0MiB`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1}{}", UNITS[i])
}

fn attr<'a>(v: &'a ContainerView, k: &str) -> &'a str {
    v.attrs.get(k).map_or("?", String::as_str)
}

/// A short summary of the attributes that are not at their defaults.
pub fn attr_summary(v: &ContainerView) -> String {
    let defaults = [
        ("class", "normal"),
        ("share", "weight:100"),
        ("priority", "100"),
        ("cpu_limit", "none"),
        ("max_connections", "none"),
        ("max_memory", "none"),
        ("egress_bytes_per_sec", "none"),
        ("max_processes", "none"),
        ("enforcement", "user"),
    ];
    let parts: Vec<String> = defaults
        .iter()
        .filter(|(k, d)| v.attrs.get(*k).is_some_and(|x| x != d))
        .map(|(k, _)| format!("{k}={}", attr(v, k)))
        .collect();
    parts.join(" ")
}

/// `rctl tree`: the containers as an indented tree with CPU, requests and open connections of
/// each subtree.
///
/// ```
/// # use rescon_admin::api::ContainerView;
/// let registry = rescon::Registry::new();
/// let mut a = rescon::Attributes::default();
/// a.set("cpu_limit", "30%").unwrap();
/// let cgi = registry.root().create_child("cgi", a).unwrap();
/// cgi.account().add_cpu_ns(1_500_000_000);
/// let view = ContainerView::from_snapshot(&registry.root().snapshot(), None);
/// let text = rctl::render::tree(&view);
/// assert!(text.contains("└─ cgi"));
/// assert!(text.contains("1.500s"));
/// assert!(text.contains("cpu_limit=0.3"));
/// ```
pub fn tree(root: &ContainerView) -> String {
    let mut rows: Vec<(String, &ContainerView)> = Vec::new();
    fn walk<'a>(
        v: &'a ContainerView,
        prefix: &str,
        last: bool,
        top: bool,
        rows: &mut Vec<(String, &'a ContainerView)>,
    ) {
        let label = if top {
            v.name.clone()
        } else {
            format!("{prefix}{}{}", if last { "└─ " } else { "├─ " }, v.name)
        };
        rows.push((label, v));
        let child_prefix = if top {
            String::new()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (i, c) in v.children.iter().enumerate() {
            walk(c, &child_prefix, i + 1 == v.children.len(), false, rows);
        }
    }
    walk(root, "", true, true, &mut rows);
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<width$}  {:>10}  {:>8}  {:>5}  ATTRIBUTES",
        "ID", "NAME", "CPU", "REQS", "CONNS"
    );
    for (label, v) in &rows {
        let pad = width - label.chars().count();
        let u = &v.usage_subtree;
        let _ = writeln!(
            out,
            "{:>6}  {label}{}  {:>10}  {:>8}  {:>5}  {}",
            v.id,
            " ".repeat(pad),
            fmt_secs(u.cpu_ns),
            u.requests,
            u.open_conns,
            attr_summary(v)
        );
        if v.children.is_empty() && v.child_count > 0 {
            let _ = writeln!(
                out,
                "{:>6}  {}(… {} children)",
                "",
                " ".repeat(2),
                v.child_count
            );
        }
    }
    out.trim_end().to_string() + "\n"
}

fn usage_rows(out: &mut String, own: &UsageView, sub: &UsageView) {
    let rows: [(&str, String, String); 12] = [
        ("cpu", fmt_secs(own.cpu_ns), fmt_secs(sub.cpu_ns)),
        (
            "kernel cpu",
            fmt_secs(own.kernel_cpu_ns),
            fmt_secs(sub.kernel_cpu_ns),
        ),
        ("bytes in", fmt_bytes(own.bytes_in), fmt_bytes(sub.bytes_in)),
        (
            "bytes out",
            fmt_bytes(own.bytes_out),
            fmt_bytes(sub.bytes_out),
        ),
        (
            "requests",
            own.requests.to_string(),
            sub.requests.to_string(),
        ),
        (
            "conns accepted",
            own.conns_accepted.to_string(),
            sub.conns_accepted.to_string(),
        ),
        (
            "conns refused",
            own.conns_refused.to_string(),
            sub.conns_refused.to_string(),
        ),
        (
            "conns open",
            own.open_conns.to_string(),
            sub.open_conns.to_string(),
        ),
        ("queue wait", fmt_secs(own.wait_ns), fmt_secs(sub.wait_ns)),
        (
            "throttled",
            fmt_secs(own.throttled_ns),
            fmt_secs(sub.throttled_ns),
        ),
        (
            "processes",
            own.processes.to_string(),
            sub.processes.to_string(),
        ),
        (
            "memory",
            fmt_bytes(own.memory_bytes),
            fmt_bytes(sub.memory_bytes),
        ),
    ];
    let _ = writeln!(out, "  {:<16}{:>12}  {:>12}", "", "own", "subtree");
    for (k, a, b) in rows {
        let _ = writeln!(out, "  {k:<16}{a:>12}  {b:>12}");
    }
}

/// `rctl show ID`: attributes, usage and children of one container.
pub fn show(v: &ContainerView) -> String {
    let mut out = String::new();
    let parent = v.parent.map_or("none".to_string(), |p| p.to_string());
    let _ = writeln!(out, "container {} ({}), parent {parent}", v.id, v.name);
    let _ = writeln!(out, "attributes:");
    // The model's order; keys it does not list (a newer server's) after, alphabetically.
    for k in rescon_admin::attr_order() {
        if let Some(val) = v.attrs.get(k) {
            let _ = writeln!(out, "  {k:<22}{val}");
        }
    }
    for (k, val) in &v.attrs {
        if !rescon_admin::attr_order().any(|o| o == k) {
            let _ = writeln!(out, "  {k:<22}{val}");
        }
    }
    let _ = writeln!(out, "usage:");
    usage_rows(&mut out, &v.usage, &v.usage_subtree);
    if v.child_count == 0 {
        let _ = writeln!(out, "children: none");
    } else {
        let _ = writeln!(out, "children ({}):", v.child_count);
        for c in &v.children {
            let line = format!(
                "  {:>6}  {:<20} {:>10}  {}",
                c.id,
                c.name,
                fmt_secs(c.usage_subtree.cpu_ns),
                attr_summary(c)
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    out
}

/// `rctl set`: what the container's attributes are now.
pub fn set_result(v: &ContainerView, keys: &[String]) -> String {
    let pairs: Vec<String> = keys
        .iter()
        .map(|k| {
            let k = match k.as_str() {
                "weight" | "fixed" => "share",
                "egress" => "egress_bytes_per_sec",
                k => k,
            };
            format!("{k}={}", attr(v, k))
        })
        .collect();
    format!("container {} ({}): {}\n", v.id, v.name, pairs.join(" "))
}

/// `rctl filters`.
pub fn filters(f: &FiltersView) -> String {
    let mut out = String::new();
    for l in &f.listeners {
        let _ = writeln!(out, "listener {} on {}", l.name, l.address);
        for m in &l.members {
            let container = m.container.map_or("-".to_string(), |c| c.to_string());
            let mut takes = m.prefixes.join(", ");
            if let Some(ex) = &m.except {
                if !takes.is_empty() {
                    takes.push_str("; ");
                }
                if ex.is_empty() {
                    takes.push_str("everything else");
                } else {
                    let _ = write!(takes, "everything else except {}", ex.join(", "));
                }
            }
            if takes.is_empty() {
                takes.push_str("(nothing)");
            }
            let _ = writeln!(out, "  {:<14} container {container:<6} {takes}", m.name);
        }
        for e in &l.edges {
            let list = if e.prefixes.is_empty() {
                "(nothing)".to_string()
            } else {
                e.prefixes.join(", ")
            };
            let _ = writeln!(
                out,
                "  edge {:<9} XDP drops SYNs from {list}: {} dropped",
                e.iface, e.drops
            );
        }
    }
    if !f.actions.is_empty() {
        let _ = writeln!(out, "recent moves:");
        for a in &f.actions {
            let _ = writeln!(
                out,
                "  {} {}: {} -> {} ({})",
                a.at_unix, a.listener, a.prefix, a.to, a.reason
            );
        }
    }
    out
}

/// `rctl block`.
pub fn moved(r: &MoveResult) -> String {
    let from = if r.from.is_empty() {
        String::new()
    } else {
        format!(" (was in {})", r.from.join(", "))
    };
    format!("{}: {} -> {}{from}\n", r.listener, r.prefix, r.to)
}

/// An error answer, as the API explains it.
pub fn error(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => {
            let mut s = format!("error {status}: {}", e.error);
            if let Some(f) = e.field {
                let _ = write!(s, "\n  field: {f}");
            }
            if let Some(a) = e.allowed {
                let _ = write!(s, "\n  allowed: {a}");
            }
            s
        }
        Err(_) => format!("error {status}: {}", String::from_utf8_lossy(body).trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescon::{Attributes, Registry};

    fn sample() -> ContainerView {
        let r = Registry::new();
        let root = r.root();
        let mut a = Attributes::default();
        a.set("share", "50%").unwrap();
        let web = root.create_child("web", a).unwrap();
        let conn = web.create_child("conn-1", Attributes::default()).unwrap();
        conn.account().add_cpu_ns(2_500_000_000);
        conn.account().add_requests(3);
        conn.account().add_bytes_out(1536);
        let _g = conn.try_open_connection().unwrap();
        let mut c = Attributes::default();
        c.set("cpu_limit", "30%").unwrap();
        let _cgi = root.create_child("cgi", c).unwrap();
        let v = ContainerView::from_snapshot(&root.snapshot(), None);
        drop((conn, web));
        v
    }

    #[test]
    fn filters_show_the_edge_and_its_drops() {
        use rescon_admin::api::{EdgeView, ListenerView, MemberView};
        let f = FiltersView {
            listeners: vec![ListenerView {
                name: "web".into(),
                address: "0.0.0.0:80".into(),
                members: vec![MemberView {
                    name: "black-hole".into(),
                    container: None,
                    prefixes: vec!["198.19.0.0/16".into()],
                    except: None,
                }],
                edges: vec![EdgeView {
                    iface: "eth0".into(),
                    prefixes: vec!["198.19.0.0/16".into()],
                    drops: 12345,
                }],
            }],
            actions: Vec::new(),
        };
        let text = filters(&f);
        assert!(
            text.contains("edge eth0      XDP drops SYNs from 198.19.0.0/16: 12345 dropped"),
            "{text}"
        );
        // Old servers send no `edges`: it parses as none.
        let old = r#"{"listeners":[{"name":"web","address":"0.0.0.0:80","members":[]}]}"#;
        let v: FiltersView = serde_json::from_str(old).unwrap();
        assert!(v.listeners[0].edges.is_empty());
        assert!(
            !serde_json::to_string(&v).unwrap().contains("edges"),
            "omitted when empty"
        );
    }

    #[test]
    fn tree_layout() {
        let text = tree(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].trim_start().starts_with("ID  NAME"), "{text}");
        assert!(
            lines[1].contains(" root ") && lines[1].contains("2.500s"),
            "{text}"
        );
        assert!(
            lines[2].contains("├─ web") && lines[2].contains("share=fixed:0.5"),
            "{text}"
        );
        assert!(
            lines[3].contains("│  └─ conn-1") && lines[3].contains("       3      1"),
            "{text}"
        );
        assert!(
            lines[4].contains("└─ cgi") && lines[4].contains("cpu_limit=0.3"),
            "{text}"
        );
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn show_layout() {
        let v = sample();
        let web = &v.children[0];
        let text = show(web);
        assert!(
            text.starts_with(&format!("container {} (web), parent {}\n", web.id, v.id)),
            "{text}"
        );
        assert!(
            text.contains("  share                 fixed:0.5\n"),
            "{text}"
        );
        let class_at = text.find("  class").unwrap();
        let share_at = text.find("  share").unwrap();
        assert!(class_at < share_at, "keys in their usual order");
        assert!(
            text.contains("\n  cpu                   0.000s        2.500s\n"),
            "{text}"
        );
        assert!(
            text.contains("\n  bytes out                 0B        1.5KiB\n"),
            "{text}"
        );
        assert!(text.contains("children (1):"), "{text}");
    }

    #[test]
    fn errors_explain() {
        let body = br#"{"error":"invalid value `5000` for priority: allowed 0..=1000","field":"priority","allowed":"0..=1000"}"#;
        assert_eq!(
            error(422, body),
            "error 422: invalid value `5000` for priority: allowed 0..=1000\n  field: priority\n  allowed: 0..=1000"
        );
        assert_eq!(error(502, b"bad gateway\n"), "error 502: bad gateway");
    }

    #[test]
    fn units() {
        assert_eq!(fmt_secs(0), "0.000s");
        assert_eq!(fmt_secs(61_234_000_000), "61.234s");
        assert_eq!(fmt_bytes(1023), "1023B");
        assert_eq!(fmt_bytes(1024), "1.0KiB");
        assert_eq!(fmt_bytes(3 << 30), "3.0GiB");
    }
}
