//! Running as `[server] user` and `group`: the names resolved at start (through NSS, so
//! LDAP and systemd's dynamic users work too), then, once the listeners are bound and the
//! cgroups made, the process's groups, gid and uid set for good.
//!
//! A `[[vhost]]` may name its own `user` (and `group`) for its CGI scripts
//! ([`vhost_cgi_ids`]): the script's process switches between fork and exec, which takes root,
//! so the server then keeps root (no `[server] user`), as Apache does for `suexec`.
//!
//! The change goes through glibc (`setgroups`, `setgid`, `setuid` via `nix`), which applies
//! it to every thread of the process; the raw system calls would change the calling thread
//! only and leave the runtime's workers as root.

use crate::config::{ServerConfig, VhostConfig};
use anyhow::{Context as _, Result, bail};
use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;

/// Who to become.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    /// The user's name (or its number, when the database has no entry).
    pub user: String,
    /// Its uid.
    pub uid: u32,
    /// The gid to run as.
    pub gid: u32,
    /// Whether the user is in the user database (then its supplementary groups are set).
    pub known: bool,
}

/// Resolves `user` (a name or a number) and `group` (default: the user's primary group).
/// The error says which name is unknown and how to create it.
pub fn resolve(user: &str, group: Option<&str>) -> Result<Ids> {
    resolve_for("[server]", user, group)
}

/// [`resolve`], for the settings of `section` (`[server]`, `vhost "a"`), which the errors
/// name.
pub fn resolve_for(section: &str, user: &str, group: Option<&str>) -> Result<Ids> {
    let entry = match user.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)).with_context(|| format!("looking up uid {n}"))?,
        Err(_) => User::from_name(user).with_context(|| format!("looking up user {user:?}"))?,
    };
    let (name, uid, primary, known) = match (&entry, user.parse::<u32>()) {
        (Some(u), _) => (u.name.clone(), u.uid.as_raw(), Some(u.gid.as_raw()), true),
        (None, Ok(n)) => (n.to_string(), n, None, false),
        (None, Err(_)) => bail!(
            "{section} user = {user:?}: no such user; create it (e.g. `useradd --system --no-create-home --shell /usr/sbin/nologin {user}`, or deploy/rescon-httpd.sysusers.conf with systemd-sysusers) or name another"
        ),
    };
    let gid = match group {
        None => primary.with_context(|| {
            format!("{section} user = {user:?} has no user database entry, so no primary group: set {section} group")
        })?,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g)
                .with_context(|| format!("looking up group {g:?}"))?
                .with_context(|| {
                    format!("{section} group = {g:?}: no such group; create it (groupadd --system {g}) or name another")
                })?
                .gid
                .as_raw(),
        },
    };
    Ok(Ids {
        user: name,
        uid,
        gid,
        known,
    })
}

/// The user the CGI scripts of `vhost` run as, when its configuration names one (`None`:
/// they run as the server does). Running a script as another user than the server's needs the
/// server to keep root: with `[server] user` set to someone else, or in a server that is not
/// root, the error says so and what to change.
pub fn vhost_cgi_ids(server: &ServerConfig, vhost: &VhostConfig) -> Result<Option<Ids>> {
    let Some(user) = &vhost.user else {
        return Ok(None);
    };
    let section = format!("vhost {:?}:", vhost.name);
    let ids = resolve_for(&section, user, vhost.group.as_deref())?;
    match &server.user {
        Some(su) => {
            let s = resolve(su, server.group.as_deref())?;
            if (s.uid, s.gid) != (ids.uid, ids.gid) {
                bail!(
                    "{section} user = {user:?}: its CGI scripts cannot run as {user} while [server] user = {su:?}: the server gives up root after start, and only root can start a program as another user. Remove [server] user (the server then keeps root and runs each vhost's scripts as its user), or give this vhost the server's user"
                );
            }
        }
        None if !can_switch() && !is_current(&ids) => bail!(
            "{section} user = {user:?}: starting CGI scripts as {user} needs root, and this process runs as uid {}: start the server as root, or remove the vhost's user",
            Uid::effective()
        ),
        None => {}
    }
    Ok(Some(ids))
}

/// Whether this process can change its ids (it runs as root).
pub fn can_switch() -> bool {
    Uid::effective().is_root()
}

/// Whether the process runs as `ids` already (nothing to switch).
pub fn is_current(ids: &Ids) -> bool {
    Uid::effective().as_raw() == ids.uid
        && Uid::current().as_raw() == ids.uid
        && Gid::effective().as_raw() == ids.gid
}

/// Becomes `ids` for good: supplementary groups, gid, uid (saved ids too). Checks that root
/// cannot be taken back.
pub fn drop_to(ids: &Ids) -> Result<()> {
    if is_current(ids) {
        return Ok(());
    }
    if !can_switch() {
        bail!(
            "[server] user = {:?}: switching to it needs root, and this process runs as uid {}: start the server as root (it drops to the user once its sockets and cgroups are set up), or remove [server] user",
            ids.user,
            Uid::effective()
        );
    }
    let gid = Gid::from_raw(ids.gid);
    if ids.known {
        let name = CString::new(ids.user.clone()).context("user name with a NUL byte")?;
        nix::unistd::initgroups(&name, gid)
            .with_context(|| format!("setting the supplementary groups of {}", ids.user))?;
    } else {
        nix::unistd::setgroups(&[gid]).context("setting the supplementary groups")?;
    }
    nix::unistd::setresgid(gid, gid, gid).with_context(|| format!("setting gid {}", ids.gid))?;
    let uid = Uid::from_raw(ids.uid);
    nix::unistd::setresuid(uid, uid, uid).with_context(|| format!("setting uid {}", ids.uid))?;
    if ids.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!(
            "root could be taken back after dropping to {}: refusing to go on",
            ids.user
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_and_nobody_and_refuses_unknown_names() {
        let root = resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid, root.known), (0, 0, true));
        let by_number = resolve("0", Some("0")).unwrap();
        assert_eq!((by_number.uid, by_number.gid), (0, 0));
        let e = resolve("no-such-user-rescon", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such user") && e.contains("useradd"), "{e}");
        let e = resolve("root", Some("no-such-group-rescon"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such group"), "{e}");
        // A number not in the database needs a group.
        let e = resolve("4000000", None).unwrap_err().to_string();
        assert!(e.contains("set [server] group"), "{e}");
        assert_eq!(resolve("4000000", Some("4000000")).unwrap().gid, 4000000);
    }
}
