//! The effective configuration as TOML (for `--check-config`).

use super::*;
use std::fmt::Write;

/// A TOML basic string: JSON's string escapes are all valid TOML escapes.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

fn dur(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

fn key(seg: &str) -> String {
    if seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        seg.to_string()
    } else {
        q(seg)
    }
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| q(&s)).collect();
    format!("[{}]", v.join(", "))
}

fn attrs(out: &mut String, a: &Attributes) {
    for (k, v) in a.to_pairs() {
        let _ = writeln!(out, "{k} = {}", q(&v));
    }
}

pub(super) fn render(c: &Config) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# effective configuration of {}", c.source);
    let _ = writeln!(o, "\n[server]");
    let _ = writeln!(o, "enforcement = {}", q(c.server.enforcement.as_str()));
    let log = match &c.server.access_log {
        AccessLog::Off => q("off"),
        AccessLog::Stdout => q("-"),
        AccessLog::File(p) => qp(p),
    };
    let _ = writeln!(o, "access_log = {log}");
    let _ = writeln!(
        o,
        "per_request_containers = {}",
        c.server.per_request_containers
    );
    if let Some(n) = &c.server.server_name {
        let _ = writeln!(o, "server_name = {}", q(n));
    }
    if let Some(u) = &c.server.user {
        let _ = writeln!(o, "user = {}", q(u));
    }
    if let Some(g) = &c.server.group {
        let _ = writeln!(o, "group = {}", q(g));
    }
    let _ = writeln!(
        o,
        "cgroup_parent = {}",
        q(&c.server.cgroup_parent.as_text())
    );
    let _ = writeln!(
        o,
        "cgroup_v2_mode = {}",
        q(c.server.cgroup_v2_mode.as_str())
    );
    if let Some(n) = c.server.nofile {
        let _ = writeln!(o, "nofile = {n}");
    }
    let t = &c.timeouts;
    let _ = writeln!(o, "\n[timeouts]");
    let _ = writeln!(o, "header = {}", q(&dur(t.header)));
    let _ = writeln!(o, "body = {}", q(&dur(t.body)));
    let _ = writeln!(o, "keep_alive = {}", q(&dur(t.keep_alive)));
    let _ = writeln!(o, "park = {}", q(&dur(t.park)));
    let _ = writeln!(o, "send = {}", q(&dur(t.send)));
    let _ = writeln!(o, "shutdown = {}", q(&dur(t.shutdown)));
    let _ = writeln!(o, "handshake = {}", q(&dur(t.handshake)));
    let _ = writeln!(o, "cgi_idle = {}", q(&dur(t.cgi_idle)));
    match t.cgi_total {
        Some(d) => {
            let _ = writeln!(o, "cgi_total = {}", q(&dur(d)));
        }
        None => {
            let _ = writeln!(o, "cgi_total = \"off\"");
        }
    }
    let l = &c.limits;
    let _ = writeln!(o, "\n[limits]");
    let _ = writeln!(o, "max_header_bytes = {}", l.max_header_bytes);
    let _ = writeln!(o, "max_body_bytes = {}", l.max_body_bytes);
    let _ = writeln!(o, "cgi_max_header_bytes = {}", l.cgi_max_header_bytes);
    let _ = writeln!(o, "cgi_stderr_bytes = {}", l.cgi_stderr_bytes);
    let _ = writeln!(o, "\n[admin]");
    match &c.admin.socket {
        Some(p) => {
            let _ = writeln!(o, "socket = {}", qp(p));
        }
        None => {
            let _ = writeln!(o, "socket = \"off\"");
        }
    }
    if let Some(t) = c.admin.tcp {
        let _ = writeln!(o, "tcp = {}", q(&t.to_string()));
    }
    match &c.admin.token {
        Some(TokenSource::Inline(_)) => {
            let _ = writeln!(o, "token = \"<redacted>\"");
        }
        Some(TokenSource::File(p)) => {
            let _ = writeln!(o, "token_file = {}", qp(p));
        }
        None => {}
    }
    let tl = &c.tls;
    let _ = writeln!(o, "\n[tls]");
    let mut versions = Vec::new();
    if tl.tls12 {
        versions.push("1.2".to_string());
    }
    if tl.tls13 {
        versions.push("1.3".to_string());
    }
    let _ = writeln!(o, "versions = {}", list(versions));
    let _ = writeln!(o, "session_cache = {}", tl.session_cache);
    let _ = writeln!(o, "tickets = {}", tl.tickets);
    let h = &c.http2;
    let _ = writeln!(o, "\n[http2]");
    let _ = writeln!(o, "max_concurrent_streams = {}", h.max_concurrent_streams);
    let _ = writeln!(o, "max_resets = {}", h.max_resets);
    let _ = writeln!(o, "max_control_frames = {}", h.max_control_frames);
    let _ = writeln!(o, "stream_containers = {}", h.stream_containers);
    if let Some(a) = c.metrics.listen {
        let _ = writeln!(o, "\n[metrics]\nlisten = {}", q(&a.to_string()));
    }
    let _ = writeln!(o, "\n[containers]");
    attrs(&mut o, &c.tree.root);
    for n in &c.tree.nodes {
        let path: Vec<String> = n.path.as_str().split('/').map(key).collect();
        let _ = writeln!(o, "\n[containers.{}]", path.join("."));
        attrs(&mut o, &n.attrs);
    }
    for l in &c.listeners {
        let _ = writeln!(o, "\n[[listener]]");
        let _ = writeln!(o, "name = {}", q(&l.name));
        let _ = writeln!(o, "address = {}", q(&l.addr.ip().to_string()));
        let _ = writeln!(o, "port = {}", l.addr.port());
        let _ = writeln!(
            o,
            "black_hole = {}",
            list(l.black_hole.iter().map(|n| n.to_string()))
        );
        let _ = writeln!(o, "tls = {}", l.tls);
        let _ = writeln!(
            o,
            "protocols = {}",
            list(l.protocols.names().into_iter().map(String::from))
        );
        if !l.edge.is_empty() {
            let _ = writeln!(o, "edge = {}", list(l.edge.iter().map(|n| n.to_string())));
        }
        if let Some(f) = &l.flood_defense {
            let _ = writeln!(o, "\n[listener.flood_defense]");
            match &f.action {
                FloodAction::BlackHole => {
                    let _ = writeln!(o, "action = \"black-hole\"");
                }
                FloodAction::Demote(to) => {
                    let _ = writeln!(o, "action = \"demote\"\ndemote_to = {}", q(to));
                }
            }
            let _ = writeln!(o, "syn_rate = {}", f.syn_rate);
            let _ = writeln!(o, "hold = {}", q(&dur(f.hold)));
        }
        for cl in &l.classes {
            let _ = writeln!(o, "\n[[listener.class]]");
            let _ = writeln!(o, "name = {}", q(&cl.name));
            let _ = writeln!(o, "container = {}", q(cl.container.as_str()));
            match &cl.filter {
                ClassFilter::Prefixes(p) => {
                    let _ = writeln!(o, "prefixes = {}", list(p.iter().map(|n| n.to_string())));
                }
                ClassFilter::Except(p) => {
                    let _ = writeln!(o, "except = {}", list(p.iter().map(|n| n.to_string())));
                }
            }
            let _ = writeln!(o, "max_handshakes = {}", cl.max_handshakes);
        }
    }
    for v in &c.vhosts {
        let _ = writeln!(o, "\n[[vhost]]");
        let _ = writeln!(o, "name = {}", q(&v.name));
        let _ = writeln!(o, "hosts = {}", list(v.hosts.iter().cloned()));
        let _ = writeln!(o, "root = {}", qp(&v.root));
        let _ = writeln!(o, "container = {}", q(v.container.as_str()));
        let _ = writeln!(o, "index = {}", list(v.index.iter().cloned()));
        let _ = writeln!(o, "default = {}", v.default);
        if let Some(u) = &v.user {
            let _ = writeln!(o, "user = {}", q(u));
        }
        if let Some(g) = &v.group {
            let _ = writeln!(o, "group = {}", q(g));
        }
        match &v.tls {
            Some(VhostTls::Files { cert, key }) => {
                let _ = writeln!(o, "\n[vhost.tls]\ncert = {}\nkey = {}", qp(cert), qp(key));
            }
            Some(VhostTls::SelfSigned) => {
                let _ = writeln!(o, "\n[vhost.tls]\nself_signed = true");
            }
            None => {}
        }
        for cg in &v.cgi {
            let _ = writeln!(o, "\n[[vhost.cgi]]");
            let _ = writeln!(o, "prefix = {}", q(&cg.prefix));
            let _ = writeln!(o, "dir = {}", qp(&cg.dir));
            let _ = writeln!(o, "container = {}", q(cg.container.as_str()));
        }
    }
    for f in &c.fastcgi {
        let _ = writeln!(o, "\n[[fastcgi]]");
        let _ = writeln!(o, "prefix = {}", q(&f.prefix));
        let _ = writeln!(o, "address = {}", q(&f.address.to_string()));
        let _ = writeln!(o, "root = {}", qp(&f.root));
        let _ = writeln!(o, "container = {}", q(f.container.as_str()));
        if !f.command.is_empty() {
            let _ = writeln!(o, "command = {}", list(f.command.iter().cloned()));
        }
        let _ = writeln!(o, "restarts = {}", f.restarts);
        let _ = writeln!(o, "pass_handle = {}", f.pass_handle);
    }
    o
}
