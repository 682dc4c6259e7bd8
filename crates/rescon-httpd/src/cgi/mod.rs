//! CGI/1.1 (RFC 3875): finding the script, its environment, and parsing what it answers.
//!
//! - [`under_prefix`] and [`ScriptDir::find`]: which script a request names, confined beneath
//!   the script directory, and its `PATH_INFO`.
//! - [`meta_variables`]: the script's environment, without the client's `Proxy` header
//!   (httpoxy).
//! - [`CgiHeadParser`]: the response head, parsed incrementally so the body streams; a
//!   document without `Content-Type` and every other malformed head is a [`CgiError`] (502).
//!
//! - [`StderrSink`]: a script's standard error (CGI's pipe, FastCGI's `FCGI_STDERR`) made fit
//!   for the log: lines escaped and cut at about 2 KB, the run held to a byte budget.
//! - [`Watchdog`]: one thread that kills every CGI run that outlives its timeouts (idle, total).
//!
//! Running the script (in its container's cgroup, with timeouts, killing its process tree) is
//! the server's, on the runtime and the cgroup backend.

mod env;
mod response;
mod script;
mod stderr;
mod watchdog;

pub use env::{CGI_PATH, CgiRequest, meta_variables};
pub use response::{CgiError, CgiHead, CgiHeadParser, MAX_CGI_HEADERS};
pub use script::{Lookup, ScriptDir, ScriptError, ScriptMatch, find_script, under_prefix};
pub use stderr::{LINE_COST, MAX_LINE, StderrSink, StderrTotals};
pub use watchdog::{Activity, Watch, Watchdog};
