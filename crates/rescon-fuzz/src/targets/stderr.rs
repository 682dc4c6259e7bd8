//! `cgi_stderr`: what a script writes to its standard error, on its way to the server's log
//! through [`StderrSink`] (CGI's pipe, FastCGI's `FCGI_STDERR` records).
//!
//! The control byte picks the size of the reads the bytes arrive in (1 to 16 bytes) and the
//! budget (`(ctl >> 4) * 512` bytes). Properties:
//!
//! - fed in reads or at once, the same lines come out, and the same totals;
//! - no line holds a control or non-ASCII byte (so none can end or forge a log line), and
//!   none is longer than [`MAX_LINE`] and its note;
//! - the lines cost at most the budget ([`LINE_COST`] each beyond their text); past it, one
//!   closing line says how much was dropped, and nothing follows it;
//! - every byte received is counted.

use super::control;
use rescon_httpd::cgi::{LINE_COST, MAX_LINE, StderrSink, StderrTotals};

/// The target.
pub const TARGET: crate::Target = crate::Target {
    name: "cgi_stderr",
    about: "a CGI script's standard error, bounded and escaped for the log, fed in reads",
    run,
    dictionary: &[
        b"\n", b"\r\n", b"\r", b"\x00", b"\x1b[2J", b"\\", b"\"", b"\xff", b"\x7f",
    ],
};

fn feed(budget: u64, reads: &mut dyn Iterator<Item = &[u8]>) -> (Vec<String>, StderrTotals) {
    let mut lines = Vec::new();
    let mut sink = StderrSink::new(budget);
    let mut emit = |l: &str| lines.push(l.to_owned());
    for r in reads {
        sink.feed(r, &mut emit);
    }
    let t = sink.finish(&mut emit);
    (lines, t)
}

fn run(data: &[u8]) {
    let Some((ctl, data)) = control(data) else {
        return;
    };
    let read = 1 + usize::from(ctl & 0x0f);
    let budget = u64::from(ctl >> 4) * 512;
    let (whole, t) = feed(budget, &mut std::iter::once(data));
    let (split, t2) = feed(budget, &mut data.chunks(read));
    assert_eq!(whole, split, "lines depend on how the stream was read");
    assert_eq!(t, t2);
    assert_eq!(t.received, data.len() as u64);
    assert!(t.dropped <= t.received);
    let logged = t.lines as usize;
    assert!(whole.len() == logged || whole.len() == logged + 1, "{t:?}");
    let mut cost = 0;
    for l in &whole {
        assert!(l.bytes().all(|c| (0x20..0x7f).contains(&c)), "{l:?}");
    }
    for l in &whole[..logged] {
        assert!(l.len() <= MAX_LINE + 48, "{} bytes", l.len());
        cost += l.len() as u64 + LINE_COST;
    }
    assert!(cost <= budget, "{cost} > {budget}");
    if let Some(note) = whole.get(logged) {
        assert!(
            note.starts_with("[standard error over its budget"),
            "{note}"
        );
    }
}
