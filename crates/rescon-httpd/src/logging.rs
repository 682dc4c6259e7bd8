//! Diagnostics through `tracing`: the subscriber the binaries install.
//!
//! Every event of the server and of the libraries under it (the runtime's "a worker thread
//! panicked", the kernel backend's "defense action failed", descriptor exhaustion) goes to
//! standard error, with a UTC timestamp, its level and its target; standard output is left to
//! the access log. Which events are shown is a `RUST_LOG`-style filter (`info` by default;
//! e.g. `RUST_LOG=rescon_httpd=debug,rescon_rt=warn`); the format is text or, for log
//! collectors, one JSON object per line.
//!
//! ```
//! use rescon_httpd::logging::{Format, filter};
//! assert!(filter(Some("warn,rescon_httpd=debug")).is_ok());
//! assert!(filter(Some("rescon_httpd=loud")).is_err());
//! assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
//! ```

use tracing_subscriber::EnvFilter;

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
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let r = match format {
        Format::Text => b.try_init(),
        Format::Json => b.json().flatten_event(true).try_init(),
    };
    r.map_err(|e| format!("installing the log subscriber: {e}"))
}
