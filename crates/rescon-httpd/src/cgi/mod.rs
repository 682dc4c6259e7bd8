//! CGI/1.1 (RFC 3875): finding the script, its environment, and parsing what it answers.
//!
//! - [`under_prefix`] and [`ScriptDir::find`]: which script a request names, confined beneath
//!   the script directory, and its `PATH_INFO`.
//! - [`meta_variables`]: the script's environment, without the client's `Proxy` header
//!   (httpoxy).
//! - [`CgiHeadParser`]: the response head, parsed incrementally so the body streams; a
//!   document without `Content-Type` and every other malformed head is a [`CgiError`] (502).
//!
//! - [`Watchdog`]: one thread that kills every CGI run that outlives its timeout.
//!
//! Running the script (in its container's cgroup, with timeouts, killing its process tree) is
//! the server's, on the runtime and the cgroup backend.

mod env;
mod response;
mod script;
mod watchdog;

pub use env::{CGI_PATH, CgiRequest, meta_variables};
pub use response::{CgiError, CgiHead, CgiHeadParser, MAX_CGI_HEADERS};
pub use script::{Lookup, ScriptDir, ScriptError, ScriptMatch, find_script, under_prefix};
pub use watchdog::{Watch, Watchdog};
