//! rescon-httpd's admin API as a contract, shared by the server and its clients (`rctl`):
//!
//! - [`api`]: the JSON documents, views of the model's [`Snapshot`](rescon::Snapshot)s;
//! - [`routes`]: the table of endpoints, which the server dispatches on and clients build
//!   paths from;
//! - [`default_socket`]: where the default configuration puts the Unix socket;
//! - [`ATTR_ORDER`]: the attribute keys in the model's own order, for listings.
//!
//! It depends on the model only, so a client does not link the server (no hyper, no runtime,
//! no kernel backends).
//!
//! ```
//! use rescon_admin::api::MoveRequest;
//! let body = serde_json::to_string(&MoveRequest {
//!     listener: None,
//!     prefix: "192.0.2.0/24".into(),
//!     to: rescon_admin::BLACK_HOLE.into(),
//! })
//! .unwrap();
//! assert_eq!(body, r#"{"prefix":"192.0.2.0/24","to":"black-hole"}"#);
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod routes;

use std::path::{Path, PathBuf};

/// The name of every listener's black hole member (its SYNs are dropped).
pub const BLACK_HOLE: &str = "black-hole";

/// The attribute keys in the order listings show them: the model's own list
/// ([`rescon::attr::ATTRIBUTE_KEYS`]), so a new attribute appears without a change here.
///
/// ```
/// assert_eq!(rescon_admin::attr_order().next(), Some("class"));
/// assert!(rescon_admin::attr_order().any(|k| k == "enforcement"));
/// ```
pub fn attr_order() -> impl Iterator<Item = &'static str> {
    rescon::attr::ATTRIBUTE_KEYS.iter().map(|(k, _)| *k)
}

/// What `{runtime_dir}` at the start of a configured path stands for:
/// `$XDG_RUNTIME_DIR` if it is absolute, else `/run` for root and `/tmp/rescon-httpd-UID`
/// for other users.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        _ => {
            let uid = rustix::process::getuid();
            if uid.is_root() {
                PathBuf::from("/run")
            } else {
                PathBuf::from(format!("/tmp/rescon-httpd-{}", uid.as_raw()))
            }
        }
    }
}

/// Replaces a leading `{runtime_dir}` in `s` (see [`runtime_dir`]).
///
/// ```
/// let p = rescon_admin::expand_runtime_dir("{runtime_dir}/x.sock");
/// assert!(p.is_absolute() && p.ends_with("x.sock"));
/// assert_eq!(rescon_admin::expand_runtime_dir("/a/b"), std::path::PathBuf::from("/a/b"));
/// ```
pub fn expand_runtime_dir(s: &str) -> PathBuf {
    let Some(rest) = s.strip_prefix("{runtime_dir}") else {
        return PathBuf::from(s);
    };
    let mut p = runtime_dir().into_os_string();
    p.push(rest);
    PathBuf::from(p)
}

/// The admin socket of rescon-httpd's default configuration, and `rctl`'s default:
/// `{runtime_dir}/rescon-httpd/admin.sock`.
pub fn default_socket() -> PathBuf {
    expand_runtime_dir("{runtime_dir}/rescon-httpd/admin.sock")
}
