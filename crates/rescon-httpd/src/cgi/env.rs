//! The meta-variables of a CGI request (RFC 3875 section 4.1): the script's whole environment.

use http::{HeaderMap, Method, Version};
use rescon::ContainerId;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

/// The `PATH` scripts get: the server's own is never passed on.
pub const CGI_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What the meta-variables are made from.
#[derive(Clone, Copy, Debug)]
pub struct CgiRequest<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The protocol version.
    pub version: Version,
    /// The request target's path, as received (percent-encoded).
    pub raw_path: &'a str,
    /// The query, as received, without `?` (empty if none).
    pub query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The body's length, if there is a body (the server buffers a chunked body or refuses it
    /// with 411, since the RFC wants a length).
    pub content_length: Option<u64>,
    /// The client.
    pub remote: SocketAddr,
    /// The local address the request came in on.
    pub local: SocketAddr,
    /// `SERVER_NAME`: the Host header's name, or the configured server name.
    pub server_name: &'a str,
    /// The script's URL path (decoded), `SCRIPT_NAME`.
    pub script_name: &'a str,
    /// The rest of the path after the script (decoded), `PATH_INFO`; empty if none.
    pub path_info: &'a str,
    /// The script's file, `SCRIPT_FILENAME`.
    pub script_filename: &'a Path,
    /// The vhost's document root, `DOCUMENT_ROOT` (and the base of `PATH_TRANSLATED`).
    pub document_root: &'a Path,
    /// The container the script runs in, passed as `RESCON_CONTAINER`.
    pub container: Option<ContainerId>,
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The environment of a CGI script, sorted by name.
///
/// Headers become `HTTP_*` variables (upper case, `-` to `_`), except `Content-Length` and
/// `Content-Type` (given as `CONTENT_LENGTH` and `CONTENT_TYPE`), `Authorization` (never handed to
/// scripts), and `Proxy`: passing it would let a client set `HTTP_PROXY`, which many HTTP
/// libraries take as their proxy ("httpoxy", CVE-2016-5385). A header whose name has an `_` is
/// dropped too, since it would be indistinguishable from one with `-` (`X_User` from
/// `X-User`). Repeated headers are joined with `, ` (`; ` for `Cookie`).
///
/// ```
/// use http::{HeaderMap, Method, Version};
/// use rescon_httpd::cgi::{meta_variables, CgiRequest};
/// let mut headers = HeaderMap::new();
/// headers.insert("proxy", "http://evil.example:8080".parse().unwrap());
/// headers.insert("user-agent", "curl/8".parse().unwrap());
/// let env = meta_variables(&CgiRequest {
///     method: &Method::GET, version: Version::HTTP_11, raw_path: "/cgi-bin/env/x",
///     query: "a=1", headers: &headers, content_length: None,
///     remote: "127.0.0.2:5000".parse().unwrap(), local: "127.0.0.1:8080".parse().unwrap(),
///     server_name: "localhost", script_name: "/cgi-bin/env", path_info: "/x",
///     script_filename: "/srv/cgi-bin/env".as_ref(), document_root: "/srv/htdocs".as_ref(),
///     container: None,
/// });
/// assert_eq!(env["QUERY_STRING"], "a=1");
/// assert_eq!(env["HTTP_USER_AGENT"], "curl/8");
/// assert!(!env.contains_key("HTTP_PROXY"));
/// ```
pub fn meta_variables(r: &CgiRequest<'_>) -> BTreeMap<String, OsString> {
    let mut env: BTreeMap<String, OsString> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_string(), OsString::from(v));
    };
    set("GATEWAY_INTERFACE", "CGI/1.1");
    set(
        "SERVER_SOFTWARE",
        concat!("rescon-httpd/", env!("CARGO_PKG_VERSION")),
    );
    set("SERVER_PROTOCOL", version_str(r.version));
    set("SERVER_NAME", r.server_name);
    set("SERVER_PORT", &r.local.port().to_string());
    set("SERVER_ADDR", &r.local.ip().to_string());
    set("REQUEST_METHOD", r.method.as_str());
    set("QUERY_STRING", r.query);
    let uri = if r.query.is_empty() {
        r.raw_path.to_string()
    } else {
        format!("{}?{}", r.raw_path, r.query)
    };
    set("REQUEST_URI", &uri);
    set("REMOTE_ADDR", &r.remote.ip().to_string());
    set("REMOTE_PORT", &r.remote.port().to_string());
    set("SCRIPT_NAME", r.script_name);
    set("PATH", CGI_PATH);
    if !r.path_info.is_empty() {
        set("PATH_INFO", r.path_info);
    }
    if let Some(id) = r.container {
        set("RESCON_CONTAINER", &id.to_string());
    }
    if let Some(n) = r.content_length {
        set("CONTENT_LENGTH", &n.to_string());
    }
    env.insert(
        "SCRIPT_FILENAME".into(),
        r.script_filename.as_os_str().to_owned(),
    );
    env.insert(
        "DOCUMENT_ROOT".into(),
        r.document_root.as_os_str().to_owned(),
    );
    if !r.path_info.is_empty() {
        let translated = r.document_root.join(r.path_info.trim_start_matches('/'));
        env.insert("PATH_TRANSLATED".into(), translated.into_os_string());
    }
    if let Some(ct) = r.headers.get(http::header::CONTENT_TYPE) {
        env.insert(
            "CONTENT_TYPE".into(),
            OsString::from_vec(ct.as_bytes().to_vec()),
        );
    }
    for name in r.headers.keys() {
        let n = name.as_str();
        if matches!(
            n,
            "content-length" | "content-type" | "authorization" | "proxy" | "proxy-authorization"
        ) || n.contains('_')
        {
            continue;
        }
        let sep: &[u8] = if n == "cookie" { b"; " } else { b", " };
        let mut value = Vec::new();
        for (i, v) in r.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                value.extend_from_slice(sep);
            }
            value.extend_from_slice(v.as_bytes());
        }
        let var = format!("HTTP_{}", n.to_ascii_uppercase().replace('-', "_"));
        env.insert(var, OsString::from_vec(value));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base<'a>(headers: &'a HeaderMap) -> CgiRequest<'a> {
        CgiRequest {
            method: &Method::POST,
            version: Version::HTTP_10,
            raw_path: "/cgi-bin/a%20b.sh/extra/path",
            query: "",
            headers,
            content_length: Some(12),
            remote: "[::1]:40000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            server_name: "example.test",
            script_name: "/cgi-bin/a b.sh",
            path_info: "/extra/path",
            script_filename: Path::new("/srv/cgi/a b.sh"),
            document_root: Path::new("/srv/www"),
            container: rescon::ContainerId::from_raw(42),
        }
    }

    #[test]
    fn rfc_3875_variables() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        h.insert("content-length", "12".parse().unwrap());
        let env = meta_variables(&base(&h));
        let get = |k: &str| env.get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("GATEWAY_INTERFACE").as_deref(), Some("CGI/1.1"));
        assert_eq!(get("REQUEST_METHOD").as_deref(), Some("POST"));
        assert_eq!(get("SERVER_PROTOCOL").as_deref(), Some("HTTP/1.0"));
        assert_eq!(get("SERVER_NAME").as_deref(), Some("example.test"));
        assert_eq!(get("SERVER_PORT").as_deref(), Some("8080"));
        assert_eq!(get("REMOTE_ADDR").as_deref(), Some("::1"));
        assert_eq!(get("REMOTE_PORT").as_deref(), Some("40000"));
        assert_eq!(get("SCRIPT_NAME").as_deref(), Some("/cgi-bin/a b.sh"));
        assert_eq!(get("PATH_INFO").as_deref(), Some("/extra/path"));
        assert_eq!(
            get("PATH_TRANSLATED").as_deref(),
            Some("/srv/www/extra/path")
        );
        assert_eq!(get("QUERY_STRING").as_deref(), Some(""), "always set");
        assert_eq!(get("CONTENT_LENGTH").as_deref(), Some("12"));
        assert_eq!(
            get("CONTENT_TYPE").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(get("SCRIPT_FILENAME").as_deref(), Some("/srv/cgi/a b.sh"));
        assert_eq!(get("RESCON_CONTAINER").as_deref(), Some("42"));
        assert_eq!(get("PATH").as_deref(), Some(CGI_PATH));
        assert!(!env.contains_key("HTTP_CONTENT_TYPE"));
        assert!(!env.contains_key("HTTP_CONTENT_LENGTH"));
    }

    #[test]
    fn no_body_no_content_length_no_path_info() {
        let h = HeaderMap::new();
        let mut r = base(&h);
        r.content_length = None;
        r.path_info = "";
        r.query = "q=%20";
        let env = meta_variables(&r);
        assert!(!env.contains_key("CONTENT_LENGTH"));
        assert!(!env.contains_key("CONTENT_TYPE"));
        assert!(!env.contains_key("PATH_INFO"));
        assert!(!env.contains_key("PATH_TRANSLATED"));
        assert_eq!(env["QUERY_STRING"], "q=%20");
        assert_eq!(env["REQUEST_URI"], "/cgi-bin/a%20b.sh/extra/path?q=%20");
    }

    #[test]
    fn headers_httpoxy_and_spoofing() {
        let mut h = HeaderMap::new();
        h.insert("proxy", "http://evil:1".parse().unwrap());
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("x_forwarded_for", "1.2.3.4".parse().unwrap());
        h.insert("x-forwarded-for", "5.6.7.8".parse().unwrap());
        h.append("accept", "text/html".parse().unwrap());
        h.append("accept", "*/*".parse().unwrap());
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        h.insert(
            "x-bytes",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        let env = meta_variables(&base(&h));
        assert!(!env.contains_key("HTTP_PROXY"), "httpoxy");
        assert!(!env.contains_key("HTTP_AUTHORIZATION"));
        assert_eq!(
            env["HTTP_X_FORWARDED_FOR"], "5.6.7.8",
            "the `_` header is dropped"
        );
        assert_eq!(env["HTTP_ACCEPT"], "text/html, */*");
        assert_eq!(env["HTTP_COOKIE"], "a=1; b=2");
        assert_eq!(env["HTTP_X_BYTES"].as_encoded_bytes(), b"caf\xe9");
        // Nothing the client sends can set a variable that is not HTTP_*.
        for k in env.keys() {
            assert!(
                k.starts_with("HTTP_")
                    || [
                        "GATEWAY_INTERFACE",
                        "SERVER_SOFTWARE",
                        "SERVER_PROTOCOL",
                        "SERVER_NAME",
                        "SERVER_PORT",
                        "SERVER_ADDR",
                        "REQUEST_METHOD",
                        "QUERY_STRING",
                        "REQUEST_URI",
                        "REMOTE_ADDR",
                        "REMOTE_PORT",
                        "SCRIPT_NAME",
                        "PATH",
                        "PATH_INFO",
                        "PATH_TRANSLATED",
                        "RESCON_CONTAINER",
                        "CONTENT_LENGTH",
                        "CONTENT_TYPE",
                        "SCRIPT_FILENAME",
                        "DOCUMENT_ROOT",
                    ]
                    .contains(&k.as_str()),
                "{k}"
            );
        }
    }
}
