//! A small blocking HTTP/1.1 client for the admin API, over its Unix socket or loopback TCP.
//!
//! Written here rather than taken from a crate because what it needs is narrow and the usual
//! clients do not fit: a blocking call over a Unix socket (ureq and reqwest speak TCP only, and
//! hyper's client would bring an async runtime into a command line tool). It sends one request
//! with `Connection: close`, parses the response head with `httparse`, and reads a body framed
//! by `Content-Length`, `chunked`, or the end of the connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// How long a request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The largest response accepted.
pub const MAX_RESPONSE: usize = 64 << 20;

/// Where the admin API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The Unix socket.
    Unix(PathBuf),
    /// Loopback TCP, with the bearer token.
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The token, sent as `Authorization: Bearer`.
        token: Option<String>,
    },
}

/// What went wrong talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not one the admin API can have.
    #[error("{0}")]
    BadUrl(String),
    /// Could not connect.
    #[error(
        "cannot connect to the admin API at {endpoint}: {source}; is rescon-httpd running, and is this the socket of its [admin] section? (--socket or --url)"
    )]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: io::Error,
    },
    /// The exchange failed.
    #[error("talking to the admin API: {0}")]
    Io(#[from] io::Error),
    /// The answer is not HTTP.
    #[error("the admin API sent a malformed response: {0}")]
    Malformed(String),
}

/// A response: status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Endpoint {
    /// Parses `http://HOST:PORT` for loopback hosts only: the admin API never listens beyond
    /// the host (`localhost`, `127.0.0.0/8`, `[::1]`).
    pub fn from_url(url: &str, token: Option<String>) -> Result<Endpoint, ClientError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            ClientError::BadUrl(format!(
                "unsupported URL {url:?}: want http://127.0.0.1:PORT (the admin API speaks plain HTTP on loopback)"
            ))
        })?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addrs: Vec<SocketAddr> = hostport
            .to_socket_addrs()
            .map_err(|e| ClientError::BadUrl(format!("{url:?}: {e} (want http://HOST:PORT)")))?
            .collect();
        let addr = addrs
            .iter()
            .copied()
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| {
                ClientError::BadUrl(format!(
                    "{hostport} is not a loopback address: the admin API listens on loopback only"
                ))
            })?;
        Ok(Endpoint::Tcp { addr, token })
    }

    fn describe(&self) -> String {
        match self {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}"),
        }
    }

    /// Sends one request and reads the response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, ClientError> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nUser-Agent: rctl/{}\r\nAccept: application/json\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Endpoint::Tcp { token: Some(t), .. } = self {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some((ctype, b)) = body {
            head.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                b.len()
            ));
        } else if method != "GET" {
            head.push_str("Content-Length: 0\r\n");
        }
        head.push_str("\r\n");
        let connect_err = |source| ClientError::Connect {
            endpoint: self.describe(),
            source,
        };
        let raw = match self {
            Endpoint::Unix(p) => {
                let mut s = UnixStream::connect(p).map_err(connect_err)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                exchange(&mut s, head.as_bytes(), body.map(|b| b.1))?
            }
            Endpoint::Tcp { addr, .. } => {
                let mut s = TcpStream::connect_timeout(addr, TIMEOUT).map_err(connect_err)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                exchange(&mut s, head.as_bytes(), body.map(|b| b.1))?
            }
        };
        parse_response(&raw)
    }
}

fn exchange<S: Read + Write>(s: &mut S, head: &[u8], body: Option<&[u8]>) -> io::Result<Vec<u8>> {
    s.write_all(head)?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    s.flush()?;
    let mut out = Vec::new();
    s.take(MAX_RESPONSE as u64 + 1).read_to_end(&mut out)?;
    if out.len() > MAX_RESPONSE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "response larger than 64 MiB",
        ));
    }
    Ok(out)
}

/// Parses a whole response (the connection was closed after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::Malformed(if raw.is_empty() {
                "the connection closed without an answer".into()
            } else {
                "the response head is incomplete".into()
            }));
        }
        Err(e) => return Err(ClientError::Malformed(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let rest = &raw[n..];
    let body = if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| ClientError::Malformed(format!("bad Content-Length {len:?}")))?;
        if rest.len() < len {
            return Err(ClientError::Malformed(format!(
                "the body ended after {} of {len} bytes",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

/// Decodes a chunked body.
pub fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let bad = |why: &str| ClientError::Malformed(format!("bad chunked body: {why}"));
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("no chunk size line"))?;
        let line = std::str::from_utf8(&data[..line_end]).map_err(|_| bad("size not text"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("size not hex"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 || &data[size..size + 2] != b"\r\n" {
            return Err(bad("chunk shorter than its size"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nuntil eof").unwrap();
        assert_eq!(r.body, b"until eof");
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"5\r\nab\r\n").is_err());
    }

    #[test]
    fn urls_are_loopback_only() {
        let e = Endpoint::from_url("http://127.0.0.1:9090", Some("t".into())).unwrap();
        assert_eq!(
            e,
            Endpoint::Tcp {
                addr: "127.0.0.1:9090".parse().unwrap(),
                token: Some("t".into())
            }
        );
        assert!(Endpoint::from_url("http://[::1]:9090/", None).is_ok());
        assert!(Endpoint::from_url("http://localhost:9090", None).is_ok());
        for bad in [
            "https://127.0.0.1:9090",
            "http://10.0.0.1:9090",
            "127.0.0.1:9090",
            "http://127.0.0.1",
        ] {
            assert!(Endpoint::from_url(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_refused_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = Endpoint::Unix(dir.path().join("none.sock"))
            .request("GET", "/containers", None)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("none.sock") && msg.contains("is rescon-httpd running"),
            "{msg}"
        );
    }
}
