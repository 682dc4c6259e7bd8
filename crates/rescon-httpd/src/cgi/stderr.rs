//! What a script writes to its standard error, made fit for the server's log: cut into lines,
//! each line escaped and bounded, the whole run held to a byte budget.
//!
//! A script is not trusted: it may write 50 MB, raw NUL and escape bytes, a fake log line. So
//! each line is escaped as the access log's fields are ([`crate::log::escape_into`]: control
//! and non-ASCII bytes as `\xHH`), cut at [`MAX_LINE`] bytes as nginx cuts its error-log lines
//! (about 2 KB), and the run's lines together may cost at most the budget
//! (`limits.cgi_stderr_bytes`, 64 KiB by default); what comes after is counted and dropped,
//! and one last line says how much. The sink is pure (it does no I/O): the caller feeds it
//! the bytes as they come and writes the lines it hands back, which is how CGI's pipe and
//! FastCGI's `FCGI_STDERR` records share it:
//!
//! ```
//! use rescon_httpd::cgi::StderrSink;
//! let mut lines = Vec::new();
//! let mut sink = StderrSink::new(64 * 1024);
//! sink.feed(b"warning: \x1b[31mred\x1b[0m\nhalf a ", &mut |l: &str| lines.push(l.to_owned()));
//! sink.feed(b"line\n", &mut |l: &str| lines.push(l.to_owned()));
//! let totals = sink.finish(&mut |l: &str| lines.push(l.to_owned()));
//! assert_eq!(lines, [r"warning: \x1B[31mred\x1B[0m", "half a line"]);
//! assert_eq!((totals.received, totals.dropped), (34, 0));
//! ```

use crate::log::{escape_byte, escaped_len};

/// The longest line written, in escaped bytes; the rest of a longer line is dropped and the
/// line says how much.
pub const MAX_LINE: usize = 2048;

/// What a line costs the budget beyond its text: about what the log adds to it (time, level,
/// target, the run's container). A flood of empty lines is bounded too.
pub const LINE_COST: u64 = 128;

/// A run's standard error on its way to the log. See the [module docs](self).
#[derive(Debug)]
pub struct StderrSink {
    budget: u64,
    /// What the lines written so far cost.
    spent: u64,
    /// The current line, escaped, up to [`MAX_LINE`].
    line: String,
    /// Raw bytes of the current line so far, its `\n` included once it has come.
    line_raw: u64,
    /// Whether the last byte of the current line was a CR (not written if a `\n` follows).
    last_cr: bool,
    /// Bytes of the current line past [`MAX_LINE`].
    cut: u64,
    /// Once a line did not fit the budget, it and everything after it is dropped.
    over: bool,
    totals: StderrTotals,
    /// Bytes dropped for the budget (the rest of `totals.dropped` was cut from long lines).
    over_budget: u64,
}

/// What a run wrote to its standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StderrTotals {
    /// Bytes received from the script: what the run is charged.
    pub received: u64,
    /// Bytes of it not in the log: past the budget, or past [`MAX_LINE`] in a line.
    pub dropped: u64,
    /// Lines written (the closing note about the budget not counted).
    pub lines: u64,
}

impl StderrSink {
    /// A sink whose lines may cost `budget` bytes in all: each its escaped text plus
    /// [`LINE_COST`].
    pub fn new(budget: u64) -> StderrSink {
        StderrSink {
            budget,
            spent: 0,
            line: String::new(),
            line_raw: 0,
            last_cr: false,
            cut: 0,
            over: false,
            totals: StderrTotals::default(),
            over_budget: 0,
        }
    }

    /// Takes the next bytes of the stream; `emit` gets each line they complete, escaped,
    /// without the `\n` or `\r\n` that ends it.
    pub fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(&str)) {
        self.totals.received += bytes.len() as u64;
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.over {
                self.drop_over(rest.len() as u64);
                return;
            }
            match rest.iter().position(|&c| c == b'\n') {
                Some(i) => {
                    self.push(&rest[..i]);
                    self.line_raw += 1;
                    self.end_line(emit);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.push(rest);
                    return;
                }
            }
        }
    }

    /// Ends the stream: writes a last line that had no `\n`, and, if the budget was spent,
    /// one line saying how many bytes were dropped. Returns the totals.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str)) -> StderrTotals {
        if self.line_raw > 0 && !self.over {
            self.flush_cr();
            self.end_line(emit);
        }
        if self.over {
            emit(&format!(
                "[standard error over its budget of {} bytes: the remaining {} bytes dropped]",
                self.budget, self.over_budget
            ));
            // Said once: a sink fed after `finish` starts counting anew.
            self.over = false;
            self.over_budget = 0;
        }
        self.totals
    }

    /// The totals so far.
    pub fn totals(&self) -> StderrTotals {
        self.totals
    }

    fn drop_over(&mut self, n: u64) {
        self.over_budget += n;
        self.totals.dropped += n;
    }

    fn push(&mut self, text: &[u8]) {
        self.line_raw += text.len() as u64;
        for (n, &c) in text.iter().enumerate() {
            let pending = if self.last_cr { 4 } else { 0 };
            if self.cut > 0 || self.line.len() + pending + escaped_len(c) > MAX_LINE {
                self.cut += (text.len() - n) as u64 + u64::from(self.last_cr);
                self.last_cr = false;
                return;
            }
            if std::mem::take(&mut self.last_cr) {
                escape_byte(&mut self.line, b'\r');
            }
            if c == b'\r' {
                self.last_cr = true;
            } else {
                escape_byte(&mut self.line, c);
            }
        }
    }

    /// A CR that ended the stream, not a line: written after all.
    fn flush_cr(&mut self) {
        if std::mem::take(&mut self.last_cr) {
            if self.line.len() + 4 <= MAX_LINE {
                escape_byte(&mut self.line, b'\r');
            } else {
                self.cut += 1;
            }
        }
    }

    fn end_line(&mut self, emit: &mut impl FnMut(&str)) {
        if self.cut > 0 {
            use std::fmt::Write;
            let _ = write!(self.line, " [{} more bytes of this line dropped]", self.cut);
        }
        let cost = self.line.len() as u64 + LINE_COST;
        if self.spent + cost > self.budget {
            // This line and everything after it are dropped; `finish` says so.
            self.over = true;
            self.drop_over(self.line_raw);
        } else {
            self.spent += cost;
            self.totals.lines += 1;
            self.totals.dropped += self.cut;
            emit(&self.line);
        }
        self.line.clear();
        self.line_raw = 0;
        self.last_cr = false;
        self.cut = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `chunks` to a sink of `budget`; the lines written and the totals.
    fn run(budget: u64, chunks: &[&[u8]]) -> (Vec<String>, StderrTotals) {
        let mut lines = Vec::new();
        let mut sink = StderrSink::new(budget);
        let mut emit = |l: &str| lines.push(l.to_owned());
        for c in chunks {
            sink.feed(c, &mut emit);
        }
        let t = sink.finish(&mut emit);
        (lines, t)
    }

    #[test]
    fn lines_are_escaped_and_cannot_forge_a_log_line() {
        let input = b"a\x00b\r\n2026-12-07T00:00:00Z  INFO fake\x1b[2J\xff \"q\" \\\n";
        let (lines, t) = run(1 << 20, &[input]);
        assert_eq!(
            lines,
            [
                r"a\x00b",
                r#"2026-12-07T00:00:00Z  INFO fake\x1B[2J\xFF \"q\" \\"#
            ]
        );
        assert_eq!(
            t,
            StderrTotals {
                received: input.len() as u64,
                dropped: 0,
                lines: 2
            }
        );
    }

    #[test]
    fn a_crlf_split_between_reads_still_ends_the_line_and_a_lone_cr_is_kept() {
        let (lines, _) = run(1 << 20, &[b"one\r", b"\ntwo\rthree\r", b"\r"]);
        assert_eq!(lines, ["one", r"two\x0Dthree\x0D\x0D"]);
        let (lines, _) = run(1 << 20, &[b"", b"\n", b"\n"]);
        assert_eq!(lines, ["", ""], "empty lines are lines");
    }

    #[test]
    fn a_long_line_is_cut_at_max_line_and_says_how_much() {
        let long = vec![b'x'; MAX_LINE + 500];
        let mut nul = vec![0u8; 1000];
        nul.push(b'\n');
        let (lines, t) = run(1 << 20, &[&long[..1000], &long[1000..], b"\n", &nul]);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            format!(
                "{} [500 more bytes of this line dropped]",
                "x".repeat(MAX_LINE)
            )
        );
        // 512 NULs fit in 2048 escaped bytes.
        assert!(lines[1].starts_with(r"\x00\x00"));
        assert!(
            lines[1].ends_with(" [488 more bytes of this line dropped]"),
            "{}",
            lines[1]
        );
        assert_eq!(t.dropped, 500 + 488);
        // A line without its end, longer than any line, keeps only MAX_LINE in memory.
        let mut sink = StderrSink::new(1 << 20);
        sink.feed(&vec![b'y'; 10 * MAX_LINE], &mut |_: &str| {
            panic!("no line yet")
        });
        assert_eq!(sink.line.len(), MAX_LINE);
    }

    #[test]
    fn past_the_budget_the_rest_is_counted_dropped_and_said_once() {
        let budget = 64 * 1024;
        let chunk: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
        let mut lines = Vec::new();
        let mut sink = StderrSink::new(budget);
        let mut emit = |l: &str| lines.push(l.to_owned());
        let n = 50 * 1024 * 1024 / chunk.len();
        for _ in 0..n {
            sink.feed(&chunk, &mut emit);
        }
        let t = sink.finish(&mut emit);
        assert_eq!(t.received, (n * chunk.len()) as u64);
        let note = lines.pop().unwrap();
        assert!(
            note.starts_with("[standard error over its budget of 65536 bytes: the remaining "),
            "{note}"
        );
        let cost: u64 = lines.iter().map(|l| l.len() as u64 + LINE_COST).sum();
        assert!(cost <= budget, "{cost}");
        assert!(
            cost > budget - (MAX_LINE as u64 + 64) - LINE_COST,
            "the budget is used: {cost}"
        );
        assert_eq!(t.lines, lines.len() as u64);
        assert!(!lines.iter().any(|l| l.starts_with("[standard error over")));
        // What is not logged is dropped: the note's count plus the cut parts of long lines.
        let said: u64 = note
            .split("remaining ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(said > 50_000_000 && said <= t.dropped, "{said} {t:?}");
    }

    #[test]
    fn a_flood_of_empty_lines_is_bounded_by_the_line_cost() {
        let (lines, t) = run(10_000, &[&vec![b'\n'; 1_000_000]]);
        // As many empty lines as their cost allows, then the note.
        let fit = 10_000 / LINE_COST;
        assert_eq!(t.lines, fit);
        assert_eq!(lines.len() as u64, fit + 1);
        let note = format!("the remaining {} bytes dropped", 1_000_000 - fit);
        assert!(
            lines[fit as usize].contains(&note),
            "{}",
            lines[fit as usize]
        );
    }

    proptest! {
        /// However the stream is cut into reads, the same lines come out; none holds a control
        /// byte or is longer than a line may be; their cost stays within the budget.
        #[test]
        fn lines_do_not_depend_on_reads_and_stay_bounded(
            data in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(0u8), Just(b'\\'), any::<u8>(), 0x20u8..0x7f],
                0..6000,
            ),
            cuts in proptest::collection::vec(0usize..6000, 0..8),
            budget in 0u64..8000,
        ) {
            let (whole, t1) = run(budget, &[&data]);
            let mut at: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for c in at {
                chunks.push(&data[from..c]);
                from = c;
            }
            chunks.push(&data[from..]);
            let (split, t2) = run(budget, &chunks);
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(t1, t2);
            prop_assert_eq!(t1.received, data.len() as u64);
            let mut cost = 0;
            for l in &whole[..t1.lines as usize] {
                prop_assert!(l.bytes().all(|c| (0x20..0x7f).contains(&c)), "{:?}", l);
                prop_assert!(l.len() <= MAX_LINE + 48);
                cost += l.len() as u64 + LINE_COST;
            }
            prop_assert!(cost <= budget);
            prop_assert!(whole.len() as u64 <= t1.lines + 1);
        }
    }
}
