//! Diagnostics through `tracing`: the subscriber the binaries install.
//!
//! Every event of the server and of the libraries under it (the runtime's "a worker thread
//! panicked", the kernel backend's "defense action failed", descriptor exhaustion) goes to
//! standard error, with a UTC timestamp, its level and its target; standard output is left to
//! the access log. No event can break a line or forge one: whatever a field holds (a script's
//! standard error, a client's bytes), the writer escapes control bytes in it as `\xHH`
//! ([`Escaping`]); fields that come from clients or scripts are escaped where they are made
//! too ([`crate::log::escape_into`]), so their text is the same in every format. Which events
//! are shown is a `RUST_LOG`-style filter (`info` by default;
//! e.g. `RUST_LOG=rescon_httpd=debug,rescon_rt=warn`); the format is text or, for log
//! collectors, one JSON object per line.
//!
//! ```
//! use rescon_httpd::logging::{Format, filter};
//! assert!(filter(Some("warn,rescon_httpd=debug")).is_ok());
//! assert!(filter(Some("rescon_httpd=loud")).is_err());
//! assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
//! ```

use std::io::{self, Write};
use tracing_subscriber::EnvFilter;

/// A writer for formatted events that escapes every control byte in them as `\xHH`, except
/// the newline that ends each event (and ESC, when colours are on: the formatter's own). The
/// formatter writes an event with one `write_all` of the whole line, so a newline inside a
/// field cannot end it.
///
/// ```
/// use std::io::Write;
/// let mut out = Vec::new();
/// rescon_httpd::logging::Escaping::new(&mut out, false)
///     .write_all(b"WARN x: said a\nWARN forged\x00\n")
///     .unwrap();
/// assert_eq!(out, b"WARN x: said a\\x0AWARN forged\\x00\n");
/// ```
#[derive(Debug)]
pub struct Escaping<W> {
    inner: W,
    keep_esc: bool,
}

impl<W: Write> Escaping<W> {
    /// Escapes what is written to `inner`; `colours`: ESC passes (ANSI colours).
    pub fn new(inner: W, colours: bool) -> Self {
        Escaping {
            inner,
            keep_esc: colours,
        }
    }

    fn passes(&self, c: u8) -> bool {
        (c >= 0x20 && c != 0x7f) || (self.keep_esc && c == 0x1b)
    }
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, nl) = match buf.strip_suffix(b"\n") {
            Some(b) => (b, true),
            None => (buf, false),
        };
        if body.iter().all(|&c| self.passes(c)) {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 32);
        for &c in body {
            if self.passes(c) {
                out.push(c);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[usize::from(c >> 4)],
                    HEX[usize::from(c & 15)],
                ]);
            }
        }
        if nl {
            out.push(b'\n');
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How events are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("invalid log format {other:?}: text or json")),
        }
    }
}

/// The filter of `directives` (`RUST_LOG` syntax), or `info` when there are none.
pub fn filter(directives: Option<&str>) -> Result<EnvFilter, String> {
    match directives.map(str::trim).filter(|d| !d.is_empty()) {
        None => Ok(EnvFilter::new("info")),
        Some(d) => EnvFilter::builder()
            .with_regex(false)
            .parse(d)
            .map_err(|e| format!("invalid log filter {d:?}: {e} (e.g. info,rescon_rt=warn)")),
    }
}

/// Installs the process's subscriber: events filtered by `directives` (`None`: `$RUST_LOG`,
/// else `info`), written to standard error in `format`. Fails if the filter is invalid or
/// a subscriber is installed already.
pub fn init(format: Format, directives: Option<&str>) -> Result<(), String> {
    let env = std::env::var("RUST_LOG").ok();
    let filter = filter(directives.or(env.as_deref()))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || Escaping::new(std::io::stderr(), ansi))
        .with_ansi(ansi);
    let r = match format {
        Format::Text => b.try_init(),
        Format::Json => b.json().flatten_event(true).try_init(),
    };
    r.map_err(|e| format!("installing the log subscriber: {e}"))
}
