//! Stage: dispatch, where a request goes. Over the compiled site: the vhost of its Host
//! header ([`Site::vhost_for`](super::site::Site::vhost_for)), then a small file the vhost's cache holds under this path, else the route of the
//! path ([`route_in`]: a static file, or a script under a CGI prefix).
//!
//! A cached file was routed as static and its path checked when it was cached, under this
//! site (the cache is the site's, replaced on reload): it is served without normalizing the
//! path again, which costs a tenth of a request (normalizing allocates per segment).

use super::site::{CgiMount, Vhost};
use super::static_file::StaticTarget;
use crate::routing::{RouteError, Target, route_in};
use crate::static_files::RelPath;
use std::time::Instant;

/// Where a request goes.
pub(crate) enum Dispatch<'s> {
    /// A file under the vhost's document root.
    Static {
        vhost: &'s Vhost,
        target: StaticTarget,
    },
    /// A script under one of the vhost's CGI prefixes; `rest` is the path after the prefix.
    Cgi {
        vhost: &'s Vhost,
        mount: &'s CgiMount,
        rest: RelPath,
    },
}

impl<'s> Dispatch<'s> {
    pub(crate) fn vhost(&self) -> &'s Vhost {
        match self {
            Dispatch::Static { vhost, .. } | Dispatch::Cgi { vhost, .. } => vhost,
        }
    }
}

/// Dispatches a request to `vhost` (the site's answer for its Host header,
/// [`Site::vhost_for`]) by its raw path (percent-encoded, without query).
pub(crate) fn dispatch<'s>(
    vhost: Option<&'s Vhost>,
    path: &str,
    now: Instant,
) -> Result<Dispatch<'s>, RouteError> {
    let vhost = vhost.ok_or(RouteError::NoVhost)?;
    if let Some(file) = vhost.files.get(path, now) {
        return Ok(Dispatch::Static {
            vhost,
            target: StaticTarget::Cached(file),
        });
    }
    let route = route_in(&vhost.config, path)?;
    Ok(match route.target {
        Target::Static(rel) => Dispatch::Static {
            vhost,
            target: StaticTarget::Path(rel),
        },
        Target::Cgi { prefix, rest } => {
            let mount = vhost
                .cgi
                .iter()
                .find(|m| m.prefix.prefix == prefix.prefix)
                .expect("every CGI prefix of a vhost is compiled into a mount");
            Dispatch::Cgi { vhost, mount, rest }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::site::{Site, tests::compiled};
    use crate::static_files::PathError;

    fn target(site: &Site, host: &str, path: &str) -> Result<(String, String), RouteError> {
        dispatch(site.vhost_for(Some(host)), path, Instant::now()).map(|d| match d {
            Dispatch::Static { vhost, target } => (
                vhost.name.to_string(),
                match target {
                    StaticTarget::Cached(_) => "cached".into(),
                    StaticTarget::Path(rel) => format!("static {}", rel.to_path().display()),
                },
            ),
            Dispatch::Cgi { vhost, mount, rest } => (
                vhost.name.to_string(),
                format!("cgi {} {}", mount.prefix.prefix, rest.to_path().display()),
            ),
        })
    }

    #[test]
    fn by_host_then_longest_cgi_prefix_then_static() {
        let dir = tempfile::tempdir().unwrap();
        let (_r, _t, site) = compiled(dir.path());
        let t = |h, p| target(&site, h, p).unwrap();
        assert_eq!(
            t("b.test", "/x/y.html"),
            ("b".into(), "static x/y.html".into())
        );
        assert_eq!(
            t("a.test", "/cgi-bin/env.sh"),
            ("a".into(), "cgi /cgi-bin/ env.sh".into())
        );
        assert_eq!(
            t("a.test", "/cgi-bin/admin/x"),
            ("a".into(), "cgi /cgi-bin/admin/ x".into())
        );
        assert_eq!(
            t("a.test", "/cgi%2dbin/env.sh"),
            ("a".into(), "cgi /cgi-bin/ env.sh".into()),
            "an encoded prefix is still the prefix"
        );
        assert_eq!(
            t("b.test", "/cgi-bin/env.sh").1,
            "static cgi-bin/env.sh",
            "b has no CGI"
        );
        assert_eq!(t("unknown", "/").0, "a", "the default vhost");
        assert_eq!(
            target(&site, "a.test", "/../x"),
            Err(RouteError::Path(PathError::DotDot))
        );
    }

    #[test]
    fn a_cached_file_is_served_without_routing_again() {
        let dir = tempfile::tempdir().unwrap();
        let (_r, _t, site) = compiled(dir.path());
        std::fs::write(dir.path().join("b/x.html"), "x").unwrap();
        let now = Instant::now();
        let mut req = http::Request::get("/x.html").body(()).unwrap();
        let Ok(Dispatch::Static { vhost, target }) =
            dispatch(site.vhost_for(Some("b.test")), "/x.html", now)
        else {
            panic!("static")
        };
        let r = super::super::static_file::serve(&vhost.root, &vhost.files, &mut req, target, now);
        assert_eq!(r.status(), 200);
        assert_eq!(target_name(&site, "b.test", "/x.html", now), "cached");
        assert_eq!(
            target_name(&site, "a.test", "/x.html", now),
            "path",
            "each vhost has its own cache"
        );
    }

    fn target_name(site: &Site, host: &str, path: &str, now: Instant) -> &'static str {
        match dispatch(site.vhost_for(Some(host)), path, now) {
            Ok(Dispatch::Static {
                target: StaticTarget::Cached(_),
                ..
            }) => "cached",
            Ok(Dispatch::Static { .. }) => "path",
            Ok(Dispatch::Cgi { .. }) => "cgi",
            Err(_) => "error",
        }
    }
}
