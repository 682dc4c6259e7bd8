//! `rctl top`: a live view of the containers sorted by CPU, refreshed in place.
//!
//! [`Top::update`] turns two successive snapshots of the tree into rates (pure: the caller
//! passes the time); [`draw`] renders them with ratatui; [`run`] is the terminal loop;
//! [`batch`] prints the same view as plain text, frame after frame, for scripts and logs (as
//! `top -b` does), with [`text`] rendering one frame.

use crate::client::Endpoint;
use crate::render::{attr_summary, fmt_secs};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Row, Table};
use rescon_admin::api::ContainerView;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One line of the view.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRow {
    /// The container's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its parent's id.
    pub parent: Option<u64>,
    /// CPU of its subtree since the last sample, in percent of one CPU.
    pub cpu_pct: f64,
    /// CPU of the container itself, in percent of one CPU.
    pub self_pct: f64,
    /// Kernel-reported CPU of its subtree, in percent of one CPU.
    pub kernel_pct: f64,
    /// The kernel's network CPU charged to its subtree (softirq receive of its packets, by
    /// eBPF accounting), in percent of one CPU.
    pub net_pct: f64,
    /// Requests per second in its subtree.
    pub req_per_s: f64,
    /// Open connections in its subtree.
    pub open_conns: u64,
    /// CPU of its subtree since it was created.
    pub cpu_total_ns: u64,
    /// Its attributes that differ from the defaults.
    pub attrs: String,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    cpu: u64,
    own: u64,
    kernel: u64,
    net: u64,
    requests: u64,
}

/// The state of the view between refreshes.
#[derive(Debug, Default)]
pub struct Top {
    prev: Option<(Duration, HashMap<u64, Counters>)>,
    rows: Vec<TopRow>,
}

impl Top {
    /// Takes a new snapshot of the tree taken at `now` (any monotonic clock). Rates are
    /// computed against the previous snapshot; a container seen for the first time shows 0.
    pub fn update(&mut self, tree: &ContainerView, now: Duration) {
        let mut current = HashMap::new();
        let mut rows = Vec::new();
        let elapsed = self
            .prev
            .as_ref()
            .map(|(t, _)| now.saturating_sub(*t).as_secs_f64())
            .filter(|e| *e > 0.0);
        for v in tree.walk() {
            let c = Counters {
                cpu: v.usage_subtree.cpu_ns,
                own: v.usage.cpu_ns,
                kernel: v.usage_subtree.kernel_cpu_ns,
                net: v.usage_subtree.kernel_net_ns,
                requests: v.usage_subtree.requests,
            };
            let before = self.prev.as_ref().and_then(|(_, m)| m.get(&v.id)).copied();
            let rate = |f: fn(&Counters) -> u64, scale: f64| match (before, elapsed) {
                (Some(b), Some(e)) => f(&c).saturating_sub(f(&b)) as f64 / e * scale,
                _ => 0.0,
            };
            rows.push(TopRow {
                id: v.id,
                name: v.name.clone(),
                parent: v.parent,
                cpu_pct: rate(|c| c.cpu, 1e-7),
                self_pct: rate(|c| c.own, 1e-7),
                kernel_pct: rate(|c| c.kernel, 1e-7),
                net_pct: rate(|c| c.net, 1e-7),
                req_per_s: rate(|c| c.requests, 1.0),
                open_conns: v.usage_subtree.open_conns,
                cpu_total_ns: c.cpu,
                attrs: attr_summary(v),
            });
            current.insert(v.id, c);
        }
        rows.sort_by(|a, b| {
            b.cpu_pct
                .total_cmp(&a.cpu_pct)
                .then(b.cpu_total_ns.cmp(&a.cpu_total_ns))
                .then(a.id.cmp(&b.id))
        });
        self.rows = rows;
        self.prev = Some((now, current));
    }

    /// The rows, busiest first.
    pub fn rows(&self) -> &[TopRow] {
        &self.rows
    }
}

/// Draws the view: a title line, then the table.
pub fn draw(frame: &mut Frame, top: &Top, title: &str, status: Option<&str>) {
    let [head, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(frame.area());
    let line = match status {
        Some(s) => format!("{title} | {s}"),
        None => title.to_string(),
    };
    frame.render_widget(Line::from(line), head);
    let header = Row::new([
        "ID",
        "NAME",
        "PARENT",
        "CPU%",
        "SELF%",
        "KCPU%",
        "NET%",
        "REQ/s",
        "CONNS",
        "CPU TIME",
        "ATTRIBUTES",
    ])
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows = top.rows().iter().map(|r| {
        Row::new([
            r.id.to_string(),
            r.name.clone(),
            r.parent.map_or("-".into(), |p| p.to_string()),
            format!("{:.1}", r.cpu_pct),
            format!("{:.1}", r.self_pct),
            format!("{:.1}", r.kernel_pct),
            format!("{:.1}", r.net_pct),
            format!("{:.1}", r.req_per_s),
            r.open_conns.to_string(),
            fmt_secs(r.cpu_total_ns),
            r.attrs.clone(),
        ])
    });
    let widths = [
        Constraint::Length(6),
        Constraint::Length(18),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Min(10),
    ];
    frame.render_widget(Table::new(rows, widths).header(header), body);
}

/// One frame of the view as plain text: a title line, a header and one line per container,
/// busiest first, columns separated by spaces (the last, the attributes, may hold spaces).
pub fn text(top: &Top, title: &str) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{title}\n");
    let _ = writeln!(
        out,
        "{:>6} {:<18} {:>6} {:>6} {:>6} {:>6} {:>8} {:>6} {:>10} ATTRIBUTES",
        "ID", "NAME", "PARENT", "CPU%", "SELF%", "KCPU%", "REQ/s", "CONNS", "CPU_TIME"
    );
    for r in top.rows() {
        let _ = writeln!(
            out,
            "{:>6} {:<18} {:>6} {:>6.1} {:>6.1} {:>6.1} {:>8.1} {:>6} {:>10} {}",
            r.id,
            // Names are one word in the text form, so that columns split on spaces.
            r.name.replace(char::is_whitespace, "_"),
            r.parent.map_or("-".into(), |p| p.to_string()),
            r.cpu_pct,
            r.self_pct,
            r.kernel_pct,
            r.req_per_s,
            r.open_conns,
            fmt_secs(r.cpu_total_ns),
            if r.attrs.is_empty() { "-" } else { &r.attrs },
        );
    }
    out
}

/// Batch mode: prints `iterations` frames (`None`: until killed) as [`text`], `interval`
/// apart, each followed by an empty line. The first frame's rates are 0 (they need two
/// samples). A failed fetch ends the run with its error; output is flushed after every frame,
/// so that a pipe sees each one as it comes.
pub fn batch(
    endpoint: &Endpoint,
    interval: Duration,
    iterations: Option<u64>,
    title: &str,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let mut top = Top::default();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let tree = crate::cli::fetch_tree(endpoint)?;
        top.update(&tree, start.elapsed());
        n += 1;
        let head = format!(
            "{title} | sample {n} | every {:.1}s",
            interval.as_secs_f64()
        );
        out.write_all(text(&top, &head).as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
        if iterations.is_some_and(|i| n >= i) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Runs the live view until `q`, Esc or Ctrl-C, refreshing every `interval`.
pub fn run(endpoint: &Endpoint, interval: Duration, title: &str) -> anyhow::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let mut top = Top::default();
    let start = Instant::now();
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        loop {
            let status = match crate::cli::fetch_tree(endpoint) {
                Ok(tree) => {
                    top.update(&tree, start.elapsed());
                    None
                }
                Err(e) => Some(format!("{e:#}")),
            };
            let title = format!("{title} | every {:.1}s | q quits", interval.as_secs_f64());
            terminal.draw(|f| draw(f, &top, &title, status.as_deref()))?;
            let deadline = Instant::now() + interval;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                if let Event::Key(k) = event::read()? {
                    let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL));
                    if quit {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use rescon::{Attributes, Registry};

    #[test]
    fn rates_and_order() {
        let r = Registry::new();
        let a = r.root().create_child("a", Attributes::default()).unwrap();
        let b = r.root().create_child("b", Attributes::default()).unwrap();
        let snap = || ContainerView::from_snapshot(&r.root().snapshot(), None);
        let mut top = Top::default();
        a.account().add_cpu_ns(5_000_000_000);
        top.update(&snap(), Duration::from_secs(10));
        assert!(
            top.rows().iter().all(|row| row.cpu_pct == 0.0),
            "no rate from one sample"
        );
        assert_eq!(top.rows()[0].name, "root", "ties broken by total CPU");
        // In the next 2 s, b uses 1 s of CPU (50%), a 0.2 s (10%), and b serves 10 requests.
        b.account().add_cpu_ns(1_000_000_000);
        b.account().add_requests(10);
        a.account().add_cpu_ns(200_000_000);
        a.charge_kernel_net(100_000_000);
        top.update(&snap(), Duration::from_secs(12));
        let names: Vec<&str> = top.rows().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["root", "b", "a"]);
        let b_row = &top.rows()[1];
        assert!((b_row.cpu_pct - 50.0).abs() < 1e-9, "{b_row:?}");
        assert!((b_row.self_pct - 50.0).abs() < 1e-9);
        assert!((b_row.req_per_s - 5.0).abs() < 1e-9);
        assert!(
            (top.rows()[0].cpu_pct - 60.0).abs() < 1e-9,
            "the root's subtree"
        );
        assert!((top.rows()[0].self_pct).abs() < 1e-9);
        let a_row = &top.rows()[2];
        assert!((a_row.net_pct - 5.0).abs() < 1e-9, "{a_row:?}");
        assert!(
            (top.rows()[0].net_pct - 5.0).abs() < 1e-9,
            "the root's subtree"
        );
        assert_eq!(b_row.net_pct, 0.0);
        // A container that appears later starts at zero.
        let c = r.root().create_child("c", Attributes::default()).unwrap();
        c.account().add_cpu_ns(9_000_000_000);
        top.update(&snap(), Duration::from_secs(13));
        let c_row = top.rows().iter().find(|r| r.name == "c").unwrap();
        assert_eq!(c_row.cpu_pct, 0.0);
    }

    #[test]
    fn text_frame_has_a_column_per_field() {
        let r = Registry::new();
        let mut attrs = Attributes::default();
        attrs.set("cpu_limit", "30%").unwrap();
        let cgi = r.root().create_child("cgi bin", attrs).unwrap();
        let mut top = Top::default();
        let snap = || ContainerView::from_snapshot(&r.root().snapshot(), None);
        top.update(&snap(), Duration::ZERO);
        cgi.account().add_cpu_ns(500_000_000);
        cgi.account().add_requests(4);
        top.update(&snap(), Duration::from_secs(2));
        let t = text(&top, "rctl top | x");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert_eq!(lines[0], "rctl top | x");
        let head: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(head[..4], ["ID", "NAME", "PARENT", "CPU%"], "{t}");
        // root and cgi both used 25% (cgi's subtree is the root's); root sorts first by id.
        let root: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(root[1..4], ["root", "-", "25.0"], "{t}");
        assert_eq!(root.last(), Some(&"-"), "no attributes: {t}");
        let cgi: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(cgi[1], "cgi_bin", "{t}");
        assert_eq!(cgi[3..7], ["25.0", "25.0", "0.0", "2.0"], "{t}");
        assert!(cgi[9].starts_with("cpu_limit=0.3"), "{t}");
    }

    #[test]
    fn draws_a_table() {
        let r = Registry::new();
        let mut attrs = Attributes::default();
        attrs.set("cpu_limit", "30%").unwrap();
        let cgi = r.root().create_child("cgi", attrs).unwrap();
        let mut top = Top::default();
        top.update(
            &ContainerView::from_snapshot(&r.root().snapshot(), None),
            Duration::ZERO,
        );
        cgi.account().add_cpu_ns(250_000_000);
        top.update(
            &ContainerView::from_snapshot(&r.root().snapshot(), None),
            Duration::from_secs(1),
        );
        let mut term = Terminal::new(TestBackend::new(110, 6)).unwrap();
        term.draw(|f| draw(f, &top, "rctl top | /run/x.sock", Some("stale")))
            .unwrap();
        let buf = term.backend().buffer();
        let line = |y: u16| -> String {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        };
        assert!(
            line(0).starts_with("rctl top | /run/x.sock | stale"),
            "{:?}",
            line(0)
        );
        assert!(line(1).starts_with("ID     NAME"), "{:?}", line(1));
        assert!(line(1).contains("KCPU%  NET%"), "{:?}", line(1));
        // Busiest first: the root's subtree and cgi both used 25%; the root sorts first by id.
        assert!(
            line(2).contains("root") && line(2).contains("25.0"),
            "{:?}",
            line(2)
        );
        assert!(
            line(3).contains("cgi")
                && line(3).contains("25.0")
                && line(3).contains("cpu_limit=0.3"),
            "{:?}",
            line(3)
        );
        assert!(line(4).trim().is_empty());
    }
}
