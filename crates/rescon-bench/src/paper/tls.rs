//! Experiments 7, 8 and 10: today's floods the paper's way, and TLS and HTTP/2 throughput.
//!
//! - 7, a TLS handshake flood: legitimate HTTPS clients (the high class, 127.0.0.2) while an
//!   attacker (127.0.0.5, the low class) makes full handshakes as fast as the server takes
//!   them. A full handshake costs the server far more than the client (an RSA-2048
//!   signature; the attacker verifies nothing), as the SYN flood's half-open connections did.
//! - 8, HTTP/2 rapid reset (CVE-2023-44487): legitimate HTTP/2 clients while an attacker opens
//!   and resets streams at once, on one connection after another.
//! - 10, throughput: HTTPS keep-alive requests and new TLS handshakes against nginx, HTTP/2
//!   against hyper on tokio with rustls.
//!
//! rescon-httpd runs with containers (the classes' priorities decide who is served) and
//! without (one container, first come first served); nginx beside them. Each server serves
//! the same RSA-2048 certificate.

use super::servers::{FILE_1K, Kind, Running};
use super::{ATTACK, Ctx, HIGH, LOW, fmt_num, group};
use anyhow::{Context as _, Result, bail};
use rescon_bench::httpload::{self, Group, GroupResult, Mode};
use rescon_bench::plot;
use rescon_bench::tlsload::{Negotiated, client_config, probe};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::SocketAddr;

fn tls_group(
    name: &str,
    src: std::net::Ipv4Addr,
    conns: usize,
    mode: Mode,
    alpn: &[&str],
    resume: bool,
) -> Group {
    Group {
        tls: Some(client_config(alpn, resume)),
        ..group(name, src, conns, mode, "localhost", FILE_1K)
    }
}

fn tls_addr(server: &Running, kind: Kind) -> Result<SocketAddr> {
    server
        .tls
        .with_context(|| format!("{} has no TLS listener", kind.name()))
}

/// One server's flood run: the legitimate group alone, then beside the attacker.
struct FloodRow {
    kind: Kind,
    base: GroupResult,
    flood: GroupResult,
    attack: GroupResult,
    /// The attacker's class's CPU over the window, as a fraction of a CPU (with containers).
    attacker_cpu: Option<f64>,
    /// What the kernel says the server's handshake-pool threads ran over the window, as a
    /// fraction of a CPU (with containers): the part of the attacker's handshakes answered
    /// off the worker, as a check on `attacker_cpu`.
    pool_cpu: Option<f64>,
    /// Handshakes the server completed for the attacker's class over the window.
    attacker_handshakes: Option<u64>,
}

/// What experiment 7 and 8 read of rescon-httpd at the edges of the counted window.
#[derive(Clone, Copy)]
struct Edge {
    class_cpu_ns: u64,
    pool_cpu_ns: u64,
    handshakes: u64,
}

impl Edge {
    fn read(srv: &Running) -> Result<Edge> {
        let low = srv.container("clients/low")?;
        let u = &low["usage_subtree"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        Ok(Edge {
            class_cpu_ns: n("cpu_ns") + n("kernel_cpu_ns"),
            pool_cpu_ns: srv.handshake_pool_cpu_ns(),
            handshakes: n("tls_handshakes"),
        })
    }
}

fn flood_runs(ctx: &mut Ctx, legit: &Group, attack: &Group, what: &str) -> Result<Vec<FloodRow>> {
    if !ctx.site.tls {
        bail!("no certificate: openssl could not make one (apt-get install openssl)");
    }
    let kinds = ctx.servers(&[Kind::Rescon, Kind::ResconOff, Kind::Nginx]);
    let mut rows = Vec::new();
    for kind in kinds {
        let server = ctx.start(kind)?;
        let addr = tls_addr(&server, kind)?;
        let plan = ctx.plan_to(
            addr,
            vec![legit.clone()],
            format!("{} without {what}", kind.name()),
        );
        let base = httpload::run(&plan)?.remove(0);
        let plan = ctx.plan_to(
            addr,
            vec![legit.clone(), attack.clone()],
            format!("{} with {what}", kind.name()),
        );
        let srv = &server;
        let (warm, dur) = (plan.warmup, plan.duration);
        let with_cpu = kind == Kind::Rescon;
        let (mut r, edges) = std::thread::scope(|sc| -> Result<_> {
            let reader = sc.spawn(move || -> Result<Option<(Edge, Edge)>> {
                if !with_cpu {
                    return Ok(None);
                }
                std::thread::sleep(warm);
                let a = Edge::read(srv)?;
                std::thread::sleep(dur);
                let b = Edge::read(srv)?;
                Ok(Some((a, b)))
            });
            let r = httpload::run(&plan)?;
            let edges = reader
                .join()
                .map_err(|_| anyhow::anyhow!("reader panicked"))??;
            Ok((r, edges))
        })?;
        drop(server);
        let attack_r = r.remove(1);
        let flood = r.remove(0);
        rows.push(FloodRow {
            kind,
            base,
            flood,
            attack: attack_r,
            attacker_cpu: edges.map(|(a, b)| {
                b.class_cpu_ns.saturating_sub(a.class_cpu_ns) as f64 / dur.as_nanos() as f64
            }),
            pool_cpu: edges.map(|(a, b)| {
                b.pool_cpu_ns.saturating_sub(a.pool_cpu_ns) as f64 / dur.as_nanos() as f64
            }),
            attacker_handshakes: edges.map(|(a, b)| b.handshakes.saturating_sub(a.handshakes)),
        });
        if let (Some(c), Some(p), Some(h)) = (
            rows.last().and_then(|r| r.attacker_cpu),
            rows.last().and_then(|r| r.pool_cpu),
            rows.last().and_then(|r| r.attacker_handshakes),
        ) {
            eprintln!(
                "    {}: the attacker's class charged {:.2}% of a CPU, the handshake pool ran {:.2}%, {h} attacker handshakes completed by the server over the window",
                kind.name(),
                100.0 * c,
                100.0 * p
            );
        }
    }
    Ok(rows)
}

/// The table, goals, plot and JSON of a flood experiment.
fn flood_report(
    ctx: &mut Ctx,
    n: u8,
    name: &str,
    intro: String,
    unit: &str,
    rows: &[FloodRow],
    png: &str,
) -> Result<()> {
    let mut s = format!(
        "{intro}\n\n| server | legit req/s, no flood | legit req/s, flood | ratio | legit p99 ms, no flood | flood | p99 ratio | attacker's {unit}/s | attacker's CPU |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut js = serde_json::Map::new();
    let mut bars = Vec::new();
    for r in rows {
        let ratio = r.flood.per_s() / r.base.per_s();
        let p99 = r.flood.ms(0.99) / r.base.ms(0.99);
        let cpu = r
            .attacker_cpu
            .map(|c| format!("{:.0}% of a CPU", 100.0 * c))
            .unwrap_or_else(|| "- (not attributed)".into());
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0} | {cpu} |",
            r.kind.name(),
            r.base.per_s(),
            r.flood.per_s(),
            fmt_num(ratio),
            fmt_num(r.base.ms(0.99)),
            fmt_num(r.flood.ms(0.99)),
            fmt_num(p99),
            r.attack.per_s(),
        );
        js.insert(
            r.kind.key().into(),
            json!({"legit_per_s_no_flood": r.base.per_s(), "legit_per_s_flood": r.flood.per_s(),
                "legit_p99_ms_no_flood": r.base.ms(0.99), "legit_p99_ms_flood": r.flood.ms(0.99),
                "legit_errors_flood": r.flood.errors, "attacker_per_s": r.attack.per_s(),
                "attacker_errors": r.attack.errors, "attacker_cpu_fraction": r.attacker_cpu,
                "handshake_pool_cpu_fraction": r.pool_cpu,
                "attacker_handshakes_server": r.attacker_handshakes}),
        );
        bars.push(plot::BarGroup {
            category: r.kind.name().into(),
            values: vec![
                ("no flood".into(), r.base.per_s()),
                ("flood".into(), r.flood.per_s()),
            ],
        });
        if r.kind == Kind::Rescon {
            ctx.goal(
                n,
                &format!("{name}: legit throughput, flood / no flood (containers)"),
                ">= 0.90",
                Some(ratio),
                ratio >= 0.90,
            );
            ctx.goal(
                n,
                &format!("{name}: legit p99, flood / no flood (containers)"),
                "<= 2",
                Some(p99),
                p99 <= 2.0,
            );
        }
    }
    let _ = writeln!(s, "\n![{png}]({png}.png)");
    ctx.report.push_str(&s);
    plot::bars(
        &ctx.out.join(format!("{png}.png")),
        &format!("{name}: legitimate requests/s"),
        "requests/s",
        &bars,
        None,
    )?;
    ctx.experiments
        .insert(format!("{n}_{png}"), Value::Object(js));
    Ok(())
}

/// Keep-alive clients of the high class: a thread of their own at nice -20 on the load CPU,
/// so their times are the server's, not the attacker's queue in the load generator.
const LEGIT: usize = 8;

pub(super) fn exp7_handshake_flood(ctx: &mut Ctx) -> Result<()> {
    let legit = Group {
        dedicated: true,
        ..tls_group("legit", HIGH, LEGIT, Mode::KeepAlive, &["http/1.1"], true)
    };
    let attackers = 64;
    let attack = tls_group(
        "attacker",
        ATTACK,
        attackers,
        Mode::Handshake,
        &["http/1.1"],
        false,
    );
    let rows = flood_runs(ctx, &legit, &attack, "a handshake flood")?;
    let intro = format!(
        "\n## 7. TLS handshake flood\n\n{LEGIT} legitimate HTTPS clients (127.0.0.2, the high class) \
         fetch the 1 KB file over kept-alive TLS connections while {attackers} attacker loops \
         (127.0.0.5, the low class) each make full TLS 1.3 handshakes (no resumption, X25519, the \
         server's RSA-2048 signature; the attacker verifies nothing) and close, as fast as the \
         server completes them. With containers each handshake runs in its connection's \
         container under its class, so the high class is served first; without, every \
         connection is served first come, first served. The attacker's CPU is what the server \
         charged to the low class's subtree over the window (containers only)."
    );
    flood_report(
        ctx,
        7,
        "TLS handshake flood",
        intro,
        "handshakes",
        &rows,
        "tls_flood",
    )
}

pub(super) fn exp8_rapid_reset(ctx: &mut Ctx) -> Result<()> {
    let legit = Group {
        dedicated: true,
        ..tls_group("legit", HIGH, LEGIT, Mode::H2, &["h2"], true)
    };
    let attackers = 8;
    let attack = tls_group(
        "attacker",
        ATTACK,
        attackers,
        Mode::RapidReset,
        &["h2"],
        false,
    );
    let rows = flood_runs(ctx, &legit, &attack, "rapid reset")?;
    let intro = format!(
        "\n## 8. HTTP/2 rapid reset\n\n{LEGIT} legitimate HTTP/2 clients (127.0.0.2, the high class), \
         each a TLS connection with one stream at a time, fetch the 1 KB file while {attackers} \
         attacker loops (127.0.0.5, the low class) each open an HTTP/2 connection and open and \
         reset streams at once (HEADERS then RST_STREAM CANCEL), again on a new connection when \
         the server closes theirs (rescon-httpd: GOAWAY ENHANCE_YOUR_CALM after \
         `http2.max_resets` = 200 resets in 10 s, with and without containers). The attacker's \
         rate counts the resets it sent."
    );
    flood_report(
        ctx,
        8,
        "HTTP/2 rapid reset",
        intro,
        "resets",
        &rows,
        "rapid_reset",
    )
}

/// One case of experiment 10: label, group, servers, the peer of the goal, ALPN.
type ThroughputCase = (
    &'static str,
    Group,
    Vec<Kind>,
    Kind,
    &'static [&'static str],
);

pub(super) fn exp10_throughput(ctx: &mut Ctx) -> Result<()> {
    if !ctx.site.tls {
        bail!("no certificate: openssl could not make one (apt-get install openssl)");
    }
    let conns = 50;
    let cases: [ThroughputCase; 3] = [
        (
            "HTTPS keep-alive (HTTP/1.1)",
            tls_group("c", LOW, conns, Mode::KeepAlive, &["http/1.1"], true),
            ctx.servers(&[Kind::Rescon, Kind::ResconOff, Kind::Nginx, Kind::HyperTokio]),
            Kind::Nginx,
            &["http/1.1"],
        ),
        (
            "new TLS handshakes (a connection per request)",
            tls_group("c", LOW, conns, Mode::ConnPerRequest, &["http/1.1"], false),
            ctx.servers(&[Kind::Rescon, Kind::ResconOff, Kind::Nginx, Kind::HyperTokio]),
            Kind::Nginx,
            &["http/1.1"],
        ),
        (
            "HTTP/2 over TLS",
            tls_group("c", LOW, conns, Mode::H2, &["h2"], true),
            ctx.servers(&[Kind::Rescon, Kind::ResconOff, Kind::HyperTokio, Kind::Nginx]),
            Kind::HyperTokio,
            &["h2"],
        ),
    ];
    let rounds = if ctx.quick { 1 } else { 3 };
    let mut s = format!(
        "\n## 10. TLS and HTTP/2 throughput\n\n{conns} closed-loop clients (127.0.0.3) fetch the 1 KB \
         file over TLS 1.3 (X25519, AES-256-GCM, the RSA-2048 certificate); requests per second, \
         the median of {rounds} round(s), each round running the servers back to back (the order \
         reversed every other round). A connection per request is a full handshake per request \
         (no resumption). HTTP/2: one stream at a time per connection. hyper on tokio serves \
         TLS with tokio-rustls on the same provider (aws-lc-rs).\n\n\
         | case | server | req/s | / peer |\n|---|---|---|---|\n"
    );
    let mut js = serde_json::Map::new();
    let mut bars = Vec::new();
    // What each server's handshake settled on, by case: shown under the table, and checked
    // to be the same on every server (else the rates are not of the same operation).
    let mut handshakes = String::new();
    for (label, g, kinds, peer, alpn) in cases {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        let mut negotiated: Vec<Option<Negotiated>> = vec![None; kinds.len()];
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..kinds.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let server = ctx.start(kinds[i])?;
                let addr = tls_addr(&server, kinds[i])?;
                if round == 0 {
                    match probe(addr, "localhost", alpn, FILE_1K) {
                        Ok(n) => negotiated[i] = Some(n),
                        Err(e) => {
                            eprintln!("    {}: the handshake probe failed: {e}", kinds[i].name())
                        }
                    }
                }
                let plan = ctx.plan_to(
                    addr,
                    vec![g.clone()],
                    format!(
                        "{label}: {} (round {}/{rounds})",
                        kinds[i].name(),
                        round + 1
                    ),
                );
                let r = httpload::run(&plan)?;
                drop(server);
                if r[0].errors > 0 || r[0].non_2xx > 0 {
                    eprintln!(
                        "    {}: {} errors, {} non-2xx",
                        kinds[i].name(),
                        r[0].errors,
                        r[0].non_2xx
                    );
                }
                samples[i].push(r[0].per_s());
            }
        }
        let median = |v: &[f64]| crate::synflood::median(v.to_vec());
        let pi = kinds.iter().position(|k| *k == peer);
        // The goal's ratio: the median of the rounds' ratios (each pair back to back).
        let ratio = |i: usize| -> Option<f64> {
            let p = &samples[pi?];
            Some(median(
                &samples[i]
                    .iter()
                    .zip(p)
                    .map(|(a, b)| a / b)
                    .collect::<Vec<_>>(),
            ))
        };
        let mut case_js = serde_json::Map::new();
        let mut vals = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let rate = median(&samples[i]);
            let _ = writeln!(
                s,
                "| {label} | {} | {rate:.0} | {} |",
                k.name(),
                ratio(i).map(fmt_num).unwrap_or_else(|| "-".into())
            );
            case_js.insert(
                k.key().into(),
                json!({"per_s": rate, "rounds": samples[i], "ratio_to_peer": ratio(i)}),
            );
            vals.push((k.name().to_string(), rate));
        }
        match kinds
            .iter()
            .position(|k| *k == Kind::Rescon)
            .and_then(ratio)
        {
            Some(x) => ctx.goal(
                10,
                &format!("{label}: rescon-httpd / {}", peer.name()),
                ">= 1.0",
                Some(x),
                x >= 1.0,
            ),
            None => ctx.goal(
                10,
                &format!("{label}: rescon-httpd / {} (not installed)", peer.name()),
                ">= 1.0",
                None,
                false,
            ),
        }
        for (k, n) in kinds.iter().zip(&negotiated) {
            let shown = n
                .as_ref()
                .map_or("the probe failed".into(), |n| n.to_string());
            let _ = writeln!(handshakes, "| {label} | {} | {shown} |", k.name());
            case_js.insert(format!("{}_handshake", k.key()), json!(shown));
        }
        let same = negotiated
            .iter()
            .all(|n| n.is_some() && *n == negotiated[0]);
        ctx.goal(
            10,
            &format!("{label}: the same TLS handshake on every server"),
            "identical",
            None,
            same,
        );
        js.insert(label.into(), Value::Object(case_js));
        bars.push(plot::BarGroup {
            category: label.into(),
            values: vals,
        });
    }
    let _ = write!(
        s,
        "\nWhat each server's handshake settled on, seen by the load's client (one probe per \
         case and server: a full handshake, then a request, so the session tickets sent after \
         the handshake are counted):\n\n| case | server | version, suite, group, signature, \
         handshake, tickets, ALPN |\n|---|---|---|\n{handshakes}"
    );
    s.push_str("\n![tls throughput](tls_throughput.png)\n");
    ctx.report.push_str(&s);
    plot::bars(
        &ctx.out.join("tls_throughput.png"),
        "TLS and HTTP/2: 1 KB requests/s",
        "requests/s",
        &bars,
        None,
    )?;
    ctx.experiments
        .insert("10_tls_throughput".into(), Value::Object(js));
    Ok(())
}
