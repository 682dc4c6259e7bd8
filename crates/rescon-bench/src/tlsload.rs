//! The TLS and HTTP/2 clients of the load generator ([`httpload`](crate::httpload)), one per
//! [`Mode`]: HTTP/1.1 over TLS (kept alive, or a connection and so a full handshake per
//! request), HTTP/2 one stream at a time, and two attackers, full handshakes as fast as the
//! server takes them and HTTP/2's rapid reset (CVE-2023-44487). Like every client there, each
//! loop runs on its group's current-thread runtime, counts only what completes inside the
//! window, and stops at the window's end; targets and sources are loopback only (checked by
//! [`httpload::run`](crate::httpload::run)).

use crate::httpload::{Group, Mode, Shared, Window, connect, read_response, record, requests};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A client configuration for the load: TLS 1.2 and 1.3 on aws-lc-rs, ALPN `alpn`, session
/// resumption only when `resume` (an attacker makes full handshakes), and no certificate
/// verification: the servers are the run's own, on loopback, with certificates it made.
///
/// Key exchange is X25519 alone, which every server here (rustls and OpenSSL 3.0) does, so
/// that a handshake is the same operation whatever the server: offered the post-quantum
/// hybrid X25519MLKEM768 too (rustls's default), rustls servers would take it and do more
/// work per handshake than nginx.
pub fn client_config(alpn: &[&str], resume: bool) -> Arc<rustls::ClientConfig> {
    Arc::new(config_with(alpn, resume, None))
}

/// The load's client configuration; with `seen`, the verifier records the server's signature
/// scheme there (for [`probe`]).
fn config_with(alpn: &[&str], resume: bool, seen: Option<Seen>) -> rustls::ClientConfig {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let provider = Arc::new(provider);
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the provider's versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider, seen)))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if !resume {
        c.resumption = rustls::client::Resumption::disabled();
    }
    c
}

/// Where [`probe`]'s verifier records the server's signature scheme.
type Seen = Arc<std::sync::Mutex<Option<rustls::SignatureScheme>>>;

/// What a server's TLS handshake with the load's client settled on, and what it sent after:
/// two servers measured side by side must show the same, or their handshakes (and so their
/// rates) are not the same operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The TLS version.
    pub version: String,
    /// The cipher suite.
    pub suite: String,
    /// The key exchange group.
    pub group: String,
    /// The server's signature over the handshake (its key type and size show here).
    pub signature: String,
    /// Full, resumed, or full after a HelloRetryRequest (a second round trip).
    pub kind: String,
    /// TLS 1.3 session tickets the server sent after the handshake (each costs it an
    /// encryption, and a stateful server a cache entry).
    pub tickets: usize,
    /// The protocol ALPN chose, if any.
    pub alpn: Option<String>,
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {}, {}, {}, {}, {} ticket(s), ALPN {}",
            self.version,
            self.suite,
            self.group,
            self.signature,
            self.kind,
            self.tickets,
            self.alpn.as_deref().unwrap_or("none")
        )
    }
}

/// Counts the TLS 1.3 tickets the server sends and keeps none (so the client resumes
/// nothing, as the load's `Resumption::disabled()` does).
#[derive(Debug, Default)]
struct TicketCount(std::sync::atomic::AtomicUsize);

impl rustls::client::ClientSessionStore for TicketCount {
    fn set_kx_hint(&self, _: ServerName<'static>, _: rustls::NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        None
    }
    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls13ClientSessionValue,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

/// One full handshake with the server at `target` (loopback only), with the load's client
/// configuration for `alpn` and no resumption, then a request (HTTP/1.1 `GET path`, or
/// HTTP/2's preface when ALPN chose h2) and its answer read, so that the tickets sent after
/// the handshake have arrived: what was negotiated.
pub fn probe(
    target: SocketAddr,
    host: &str,
    alpn: &[&str],
    path: &str,
) -> std::io::Result<Negotiated> {
    use std::io::{Read, Write};
    if !target.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "{target} is not a loopback address"
        )));
    }
    let seen = Seen::default();
    let mut config = config_with(alpn, false, Some(seen.clone()));
    let tickets = Arc::new(TicketCount::default());
    config.resumption = rustls::client::Resumption::store(tickets.clone())
        .tls12_resumption(rustls::client::Tls12Resumption::Disabled);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    let alpn = s
        .conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    if alpn.as_deref() == Some("h2") {
        // The preface and an empty SETTINGS; the server's SETTINGS come back.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")?;
        s.flush()?;
        let mut b = [0u8; 256];
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::other(
                "the server closed the connection instead of sending its SETTINGS",
            ));
        }
    } else {
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        s.flush()?;
        let mut b = Vec::new();
        match s.read_to_end(&mut b) {
            Ok(_) => {}
            // A server that closes without close_notify: what it sent was read.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
        if !b.starts_with(b"HTTP/1.1 200") {
            return Err(std::io::Error::other(format!(
                "the probe's request was not answered 200: {:?}",
                String::from_utf8_lossy(&b[..b.len().min(40)])
            )));
        }
    }
    let c = &s.conn;
    let name = |x: Option<String>| x.unwrap_or_else(|| "?".into());
    let signature = *seen.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Negotiated {
        version: name(c.protocol_version().map(|v| format!("{v:?}"))),
        suite: name(
            c.negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite())),
        ),
        group: name(
            c.negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name())),
        ),
        signature: name(signature.map(|s| format!("{s:?}"))),
        kind: name(c.handshake_kind().map(|k| format!("{k:?}"))),
        tickets: tickets.0.load(std::sync::atomic::Ordering::Relaxed),
        alpn,
    })
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>, Option<Seen>);

impl AnyCert {
    fn record(&self, dss: &rustls::DigitallySignedStruct) {
        if let Some(seen) = &self.1 {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(dss.scheme);
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.record(dss);
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.record(dss);
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// A connection from the group's source: TLS when the group has it.
async fn open(target: SocketAddr, g: &Group) -> std::io::Result<Box<dyn Io>> {
    let tcp = connect(target, g.src).await?;
    Ok(match &g.tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let name = ServerName::try_from(g.host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            Box::new(
                tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await?,
            )
        }
    })
}

/// Runs one client of a group whose mode or TLS the plain HTTP client does not handle.
pub(crate) async fn client(
    target: SocketAddr,
    g: Rc<Group>,
    counts: Shared,
    window: Rc<Window>,
    timeout: Duration,
) {
    let mut n = 0usize;
    let mut conn: Option<Box<dyn Io>> = None;
    let mut h2: Option<h2::client::SendRequest<bytes::Bytes>> = None;
    let reqs = requests(&g, g.mode);
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < window.end {
        let due = Instant::now();
        let left = window.end.saturating_duration_since(due) + timeout;
        let n_now = n;
        n += 1;
        let work = async {
            let n = n_now;
            match g.mode {
                Mode::KeepAlive | Mode::ConnPerRequest => {
                    if conn.is_none() {
                        conn = Some(open(target, &g).await?);
                    }
                    let s = conn.as_mut().expect("connected");
                    s.write_all(&reqs[n % reqs.len()]).await?;
                    let (status, close) = read_response(s, &mut buf).await?;
                    if g.mode == Mode::ConnPerRequest || close {
                        conn = None;
                    }
                    Ok(status)
                }
                Mode::H2 => {
                    if h2.is_none() {
                        h2 = Some(h2_open(target, &g).await?);
                    }
                    let send = h2.as_mut().expect("connected");
                    h2_get(send, &g, n).await
                }
                Mode::Handshake => {
                    // The handshake done, the connection is dropped: a FIN, nothing more.
                    drop(open(target, &g).await?);
                    Ok(200)
                }
                Mode::RapidReset => {
                    if h2.is_none() {
                        h2 = Some(h2_open(target, &g).await?);
                    }
                    let send = h2.as_mut().expect("connected");
                    let mut ready = send.clone().ready().await.map_err(h2_err)?;
                    let req = h2_request(&g, n)?;
                    let (_resp, mut stream) = ready.send_request(req, false).map_err(h2_err)?;
                    stream.send_reset(h2::Reason::CANCEL);
                    // Let the connection's task write the frames now and then.
                    if n % 16 == 15 {
                        tokio::task::yield_now().await;
                    }
                    Ok(200)
                }
            }
        };
        let outcome = match tokio::time::timeout(timeout.min(left), work).await {
            Ok(Ok(s)) => Ok(s),
            _ => {
                conn = None;
                h2 = None;
                Err(())
            }
        };
        let failed = outcome.is_err();
        record(&counts, &window, due, outcome);
        if failed {
            // Refused, reset, or sent away (GOAWAY): do not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn h2_err(e: h2::Error) -> std::io::Error {
    std::io::Error::other(e)
}

/// An HTTP/2 connection: TLS with ALPN h2 when the group has TLS, prior knowledge
/// otherwise. Its frames are written by a task of its own.
async fn h2_open(
    target: SocketAddr,
    g: &Group,
) -> std::io::Result<h2::client::SendRequest<bytes::Bytes>> {
    let io = open(target, g).await?;
    let (send, conn) = h2::client::handshake(io).await.map_err(h2_err)?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn h2_request(g: &Group, n: usize) -> std::io::Result<http::Request<()>> {
    let scheme = if g.tls.is_some() { "https" } else { "http" };
    http::Request::get(format!(
        "{scheme}://{}{}",
        g.host,
        g.paths[n % g.paths.len()]
    ))
    .body(())
    .map_err(std::io::Error::other)
}

/// One GET on its own stream, its body read to the end: the status.
async fn h2_get(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    g: &Group,
    n: usize,
) -> std::io::Result<u16> {
    let mut ready = send.clone().ready().await.map_err(h2_err)?;
    let (resp, _) = ready
        .send_request(h2_request(g, n)?, true)
        .map_err(h2_err)?;
    let resp = resp.await.map_err(h2_err)?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(h2_err)?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(status)
}
