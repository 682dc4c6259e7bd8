//! Stage: TLS. A listener with `tls = true` hands each accepted connection here: it takes a
//! handshake slot of the connection's client class (`max_handshakes` per class and listener;
//! beyond, the connection is closed before any work is done for it), runs the handshake in
//! the class's container (the connection's own is made when it first has a request to serve:
//! see [`conn`](super::conn)), so the class's scheduling class, share and CPU limit bound
//! what its handshakes cost, and under
//! `timeouts.handshake` (a ClientHello that never finishes). Then the connection stage
//! serves the session with the protocol ALPN chose (h2 or HTTP/1.1).
//!
//! # Where the handshake's CPU goes
//!
//! Most of a full handshake is one step: answering the ClientHello (the key exchange and the
//! certificate's signature, 100 us to 1 ms). On a worker that step is one poll the runtime
//! cannot preempt, so a flood of handshakes from a low class would hold up a high class's
//! requests by a whole signature each time, whatever the policy says (measured: a high
//! class's keep-alive throughput fell to 0.10 of its no-flood rate). So the ClientHello is
//! read on the worker (cheap), and the step is run:
//! - for a class `high` or `critical`, on the worker, in the class's container;
//! - for the others, under pressure, on the handshake pool ([`Offload`]): threads of the
//!   runtime's blocking pool at `SCHED_IDLE`, jobs queued per container by the runtime's policy
//!   and charged to the class's container. The kernel preempts them for the workers at
//!   once, so they get the CPU the server's other work leaves: accepting new connections of
//!   those classes yields to serving the existing ones, as the paper lets a server set that
//!   priority. Pressure: when the ClientHello has come, some other class of the listeners,
//!   of the same scheduling class or above, has a connection open (its container's
//!   `open_conns`), whose requests the signature would hold up;
//! - for the others without pressure, on the worker, in the class's container, as a class
//!   above normal: the runtime's policy bounds it by the class's share and CPU limit like
//!   any of the class's work, and only the class's own connections can wait behind it;
//! - with `--no-containers`, on the worker (the baseline).
//!
//! Always on the pool, the handshakes of one class alone (nothing to protect) ran at 0.78
//! of `--no-containers`'s rate (`rescon-bench paper --only 10`): the server's CPU switched
//! threads about 6 more times per handshake (`perf stat -e context-switches`: the job's
//! hand-off and the answer's wake-up, and the nice-19 thread preempted in the middle of its
//! signature by each of the worker's wake-ups for the other connections' I/O), and the
//! worker woke for each event instead of finding them together after a signature. Answered
//! on the worker without pressure they run at 0.92-0.95 of it.
//!
//! Certificates are the vhosts' (`[vhost.tls]`), loaded with the site (at start-up and at each
//! reload, so SIGHUP reloads them; a bad file fails the reload and the running ones stay), and
//! chosen by SNI with the vhosts' host names; a name no vhost has, or no SNI, gets the default
//! vhost's certificate (or the first vhost's that has one), as nginx does.
//!
//! Session resumption (by session id, stateful and stateless tickets) uses one session cache
//! and one ticket key for the server's life, so a reload does not forget the sessions.
//!
//! # The crypto provider
//!
//! rustls on aws-lc-rs rather than ring, by measurement on this machine (2-core VM, in-memory
//! handshakes, the server's share timed alone, mean of 2000):
//!
//! | full handshake, server side | ring | aws-lc-rs |
//! |---|---|---|
//! | RSA-2048, TLS 1.3 | 1129 us | 380 us |
//! | RSA-2048, TLS 1.2 | 1131 us | 496 us |
//! | ECDSA P-256, TLS 1.3 | 626 us | 99 us |
//! | ECDSA P-256, TLS 1.2 | 612 us | 212 us |
//! | AES-256-GCM records, 16 KiB | 7.5 GB/s | 10.1 GB/s |
//!
//! aws-lc-sys builds here with the C compiler alone (no cmake, no clang).
//!
//! # Buffers
//!
//! [`TlsStream`] owns the socket and the rustls session, whose buffers (received records,
//! plaintext not yet read, records not yet sent) belong to rustls. Of the three, rustls 0.23
//! gives back the two queues as they drain (chunks popped as they are read or sent), but
//! keeps its record buffer (`DeframerVecBuffer`) at 4 KiB once it has read: it shrinks it to
//! its read size when empty, never to nothing, and no call of the buffered API releases it
//! short of ending the session. So there is no `SSL_MODE_RELEASE_BUFFERS`: a parked TLS
//! connection keeps its session as it is ([`Stream::park`] does nothing for it), about
//! 15 KB resident per idle session, as much as nginx's TLS connections
//! (`rescon-bench memory`, `tls-keepalive`: 15,235 bytes against nginx's 14,640). Releasing
//! the record buffer needs rustls's unbuffered API (`UnbufferedServerConnection`), where the
//! caller owns the buffers and could drop them when the connection parks. A TLS connection
//! parks only with no decrypted bytes left unread, and wakes by reading through the session
//! (see [`conn`](super::conn)).

use super::Shared;
use super::conn::{Accepted, Proto, ServeConn, Stream, serve_conn};
use crate::config::{Config, Protocols, VhostConfig, VhostTls, normalize_host};
use anyhow::{Context as _, Result, anyhow, bail};
use hyper::rt::ReadBufCursor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, StoresServerSessions};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// The crypto provider of every TLS session.
fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

// ---- certificates ----

/// Each vhost's certificate, loaded: the I/O half of compiling the TLS part of a site.
pub(crate) struct Certs {
    /// By vhost index; `None` for a vhost without `[vhost.tls]`.
    keys: Vec<Option<Arc<CertifiedKey>>>,
}

impl Certs {
    /// Loads (or generates) every vhost's certificate. Fails naming the vhost, the file and
    /// what is wrong with it.
    pub(crate) fn load(config: &Config) -> Result<Certs> {
        let mut keys = Vec::with_capacity(config.vhosts.len());
        for v in &config.vhosts {
            keys.push(match &v.tls {
                None => None,
                Some(VhostTls::Files { cert, key }) => {
                    Some(load_files(cert, key).with_context(|| format!("vhost {}: TLS", v.name))?)
                }
                Some(VhostTls::SelfSigned) => Some(
                    self_signed(v)
                        .with_context(|| format!("vhost {}: a self-signed certificate", v.name))?,
                ),
            });
        }
        Ok(Certs { keys })
    }
}

/// A certificate chain and its key from PEM files; the key must match the certificate.
pub(crate) fn load_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<CertifiedKey>> {
    let pem = std::fs::read(cert)
        .with_context(|| format!("reading the certificate {}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("the certificate {} is not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        bail!(
            "no certificate in {} (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")",
            cert.display()
        );
    }
    let pem =
        std::fs::read(key).with_context(|| format!("reading the private key {}", key.display()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow!(
            "no private key in {} ({e}; expected a PEM block \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
            key.display()
        )
    })?;
    let ck = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => anyhow!(
            "the private key {} does not match the certificate {}",
            key.display(),
            cert.display()
        ),
        e => anyhow!(
            "the private key {} cannot be used with the certificate {}: {e}",
            key.display(),
            cert.display()
        ),
    })?;
    Ok(Arc::new(ck))
}

/// A self-signed certificate for the vhost's host names, made once per set of names for the
/// process's life (a reload keeps it, so clients that pinned it keep working).
fn self_signed(v: &VhostConfig) -> Result<Arc<CertifiedKey>> {
    static MADE: OnceLock<Mutex<HashMap<Vec<String>, Arc<CertifiedKey>>>> = OnceLock::new();
    let mut names = v.hosts.clone();
    if names.is_empty() {
        names.push("localhost".into());
    }
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(k) = made.get(&names) {
        return Ok(k.clone());
    }
    let ck = rcgen::generate_simple_self_signed(names.clone())?;
    let chain = vec![ck.cert.der().clone()];
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| anyhow!("the generated key: {e}"))?;
    let k = Arc::new(CertifiedKey::from_der(chain, key, &provider())?);
    made.insert(names, k.clone());
    Ok(k)
}

/// Certificates by SNI name: exact names, then `*.suffix` wildcards longest first, then the
/// default. The same rule as the Host index, over the vhosts that have a certificate.
#[derive(Debug)]
struct CertStore {
    exact: Map<Arc<CertifiedKey>>,
    wildcards: Vec<(Box<str>, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    fn new(config: &Config, certs: &Certs) -> CertStore {
        let mut s = CertStore {
            exact: Map::default(),
            wildcards: Vec::new(),
            default: None,
        };
        let mut default_set = false;
        for (v, k) in config.vhosts.iter().zip(&certs.keys) {
            let Some(k) = k else { continue };
            for h in &v.hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => s.wildcards.push((suffix.into(), k.clone())),
                    None => {
                        s.exact
                            .entry(h.as_str().into())
                            .or_insert_with(|| k.clone());
                    }
                }
            }
            // The default vhost's certificate; else the first vhost's that has one.
            if (v.default || s.default.is_none()) && !default_set {
                s.default = Some(k.clone());
                default_set = v.default;
            }
        }
        s.wildcards.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
        s
    }

    fn get(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(n) = name.map(normalize_host) {
            if let Some(k) = self.exact.get(n.as_ref()) {
                return Some(k.clone());
            }
            for (suffix, k) in &self.wildcards {
                if n.len() > suffix.len() && n.ends_with(suffix.as_ref()) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get(hello.server_name())
    }
}

// ---- the listeners' TLS, compiled ----

/// How a listener's connections are served, compiled with the site.
pub(crate) struct ListenerMode {
    pub(crate) protocols: Protocols,
    /// With TLS: the session configuration and the classes' handshake slots.
    tls: Option<ListenerTls>,
}

struct ListenerTls {
    config: Arc<ServerConfig>,
    /// By class name.
    classes: Map<TlsClass>,
}

/// A client class of a TLS listener, compiled: its handshake slots, and where its
/// ClientHellos may be answered.
struct TlsClass {
    slots: Arc<Slots>,
    /// The class's container.
    container: rescon::Container,
    /// The other class containers of every listener, each once: those of them at this
    /// class's scheduling class or above are its rivals (see [`HandOff`]). Which those are is
    /// read at each handshake, since the admin API may change a container's class.
    others: Arc<[rescon::Container]>,
}

/// The TLS part of a compiled site: each listener's mode, by listener name.
#[derive(Default)]
pub(crate) struct SiteTls {
    listeners: Map<ListenerMode>,
}

impl SiteTls {
    /// Compiles each listener's mode over the loaded certificates and the listeners' class
    /// containers (by listener name, then class name).
    pub(crate) fn compile(
        config: &Config,
        certs: Certs,
        classes: &Map<Map<rescon::Container>>,
    ) -> Result<SiteTls> {
        let mut listeners = Map::default();
        let store = Arc::new(CertStore::new(config, &certs));
        // Every listener's class containers, each once, in configuration order.
        let mut all: Vec<rescon::Container> = Vec::new();
        for l in &config.listeners {
            for c in &l.classes {
                if let Some(k) = classes
                    .get(l.name.as_str())
                    .and_then(|m| m.get(c.name.as_str()))
                    && !all.contains(k)
                {
                    all.push(k.clone());
                }
            }
        }
        for l in &config.listeners {
            let tls = if l.tls {
                let config = Arc::new(server_config(config, l.protocols, store.clone())?);
                let mut by_class = Map::default();
                for c in &l.classes {
                    let Some(container) = classes
                        .get(l.name.as_str())
                        .and_then(|m| m.get(c.name.as_str()))
                    else {
                        continue;
                    };
                    let others: Arc<[rescon::Container]> =
                        all.iter().filter(|k| *k != container).cloned().collect();
                    by_class.insert(
                        c.name.as_str().into(),
                        TlsClass {
                            slots: Arc::new(Slots {
                                max: c.max_handshakes,
                                used: AtomicU32::new(0),
                            }),
                            container: container.clone(),
                            others,
                        },
                    );
                }
                Some(ListenerTls {
                    config,
                    classes: by_class,
                })
            } else {
                None
            };
            listeners.insert(
                l.name.as_str().into(),
                ListenerMode {
                    protocols: l.protocols,
                    tls,
                },
            );
        }
        Ok(SiteTls { listeners })
    }

    pub(crate) fn listener(&self, name: &str) -> Option<&ListenerMode> {
        self.listeners.get(name)
    }
}

/// The session cache and ticket key, kept across reloads (see the module docs).
fn session_storage(size: usize) -> Arc<dyn StoresServerSessions + Send + Sync> {
    type Cache = Mutex<Option<(usize, Arc<dyn StoresServerSessions + Send + Sync>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    if size == 0 {
        return Arc::new(rustls::server::NoServerSessionStorage {});
    }
    let mut c = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match &*c {
        Some((n, s)) if *n == size => s.clone(),
        _ => {
            let s: Arc<dyn StoresServerSessions + Send + Sync> =
                rustls::server::ServerSessionMemoryCache::new(size);
            *c = Some((size, s.clone()));
            s
        }
    }
}

fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>> {
    static T: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = T.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(T.get_or_init(|| t).clone())
}

fn server_config(c: &Config, protocols: Protocols, store: Arc<CertStore>) -> Result<ServerConfig> {
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if c.tls.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if c.tls.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    let mut sc = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .context("the TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(store);
    sc.alpn_protocols = protocols
        .names()
        .into_iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    sc.session_storage = session_storage(c.tls.session_cache);
    if c.tls.tickets {
        sc.ticketer = ticketer()?;
    }
    Ok(sc)
}

// ---- the handshake pool ----

/// The handshake pool: see the module docs.
pub(crate) struct Offload {
    pool: Option<rescon_rt::BlockingPool>,
}

impl Offload {
    pub(crate) fn new(registry: &rescon::Registry, options: &super::Options) -> Offload {
        if options.no_containers {
            return Offload { pool: None };
        }
        let threads = options.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let pool = rescon_rt::BlockingPool::builder(registry)
            .max_threads(threads)
            .thread_name("rescon-handshake")
            .on_thread_start(|| {
                // Lowering one's own priority needs no privilege; failing that, nice 19.
                if let Err(e) = sched_idle() {
                    tracing::warn!(error = %e, "the handshake thread runs at nice 19, not SCHED_IDLE");
                    if let Err(e) = rustix::process::setpriority_process(None, 19) {
                        tracing::warn!(error = %e, "the handshake thread keeps its priority");
                    }
                }
            })
            .build();
        Offload { pool: Some(pool) }
    }
}

/// Moves the calling thread to `SCHED_IDLE`: the kernel runs it only on a CPU nothing else
/// wants, and a thread of another policy that wakes on its CPU preempts it at once. At nice
/// 19 instead, a woken worker could wait for the handshake thread's time slice (about 3 ms
/// on this machine's kernel, 6.18 with EEVDF) before it ran.
#[allow(unsafe_code)]
fn sched_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 is the calling
    // thread. The result is checked.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// ---- handshake slots ----

/// A class's handshakes in flight on one listener, bounded. A reload compiles new slots:
/// handshakes under way then count against the old ones, so for a handshake timeout after a
/// reload a class may have up to twice its bound in flight.
struct Slots {
    max: u32,
    used: AtomicU32,
}

struct Slot(Arc<Slots>);

impl Slots {
    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Relaxed);
    }
}

// ---- the stage ----

/// Serves an accepted connection of listener `listener`: the handshake first if it is a TLS
/// listener, then the connection stage with the protocol chosen.
///
/// The future is the connection's task, so it is what an idle connection costs: for a
/// cleartext one it is the connection stage itself ([`ServeConn`], a parked record while the
/// connection is idle); the TLS path, whose handshake and session are large, is boxed apart.
/// (One `async fn` for both made every cleartext connection's task as large as a TLS one's:
/// about 1,700 bytes, for a parked record of about 300.)
pub(crate) fn serve(
    shared: Arc<Shared>,
    conn: Accepted<rescon_rt::TcpStream>,
    listener: Arc<str>,
) -> Serve {
    let site = shared.site.get();
    let proto = match site.tls.listener(&listener) {
        // A listener a reload removed: served as it was accepted, over HTTP/1.1.
        None => Proto::Http1,
        Some(mode) if mode.tls.is_none() => {
            if mode.protocols.h2 {
                Proto::Http2
            } else {
                Proto::Http1
            }
        }
        Some(_) => {
            drop(site);
            return Serve::Tls(Box::pin(serve_tls(shared, conn, listener)));
        }
    };
    drop(site);
    Serve::Plain(serve_conn(shared, conn, proto))
}

/// The future of a connection's task (see [`serve`]).
// The cleartext variant is inline on purpose: it is the whole of a parked connection's task.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Serve {
    Plain(ServeConn<rescon_rt::TcpStream>),
    Tls(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Future for Serve {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Serve::Plain(c) => Pin::new(c).poll(cx),
            Serve::Tls(f) => f.as_mut().poll(cx),
        }
    }
}

/// [`serve`] for a TLS listener (or one a reload changed since).
async fn serve_tls(shared: Arc<Shared>, conn: Accepted<rescon_rt::TcpStream>, listener: Arc<str>) {
    let site = shared.site.get();
    let Some(mode) = site.tls.listener(&listener) else {
        // A listener a reload removed: served as it was accepted, over HTTP/1.1.
        return serve_conn(shared, conn, Proto::Http1).await;
    };
    let Some(tls) = &mode.tls else {
        let proto = if mode.protocols.h2 {
            Proto::Http2
        } else {
            Proto::Http1
        };
        drop(site);
        return serve_conn(shared, conn, proto).await;
    };
    let (slot, class_tls) = match tls.classes.get(&*conn.class) {
        // No slots for this class (`--no-containers` serves one class, "all").
        None => (None, None),
        Some(k) => match k.slots.take() {
            Some(slot) => (Some(slot), Some(k)),
            None => {
                conn.home.account().add_conns_refused(1);
                tracing::debug!(%listener, class = %conn.class, peer = %conn.peer, "handshakes in flight at the class's max_handshakes: connection closed");
                return;
            }
        },
    };
    // Where the ClientHello is answered (see the module docs): on the worker without a
    // pool (`--no-containers`) or for a class above normal; else on the pool while its
    // rivals have connections open, and on the worker while they have none.
    let offload = match (&shared.handshakes.pool, class_tls) {
        (Some(pool), Some(k)) => {
            let class = k.container.attrs().class;
            (class < rescon::SchedClass::HIGH).then(|| HandOff {
                pool,
                class,
                others: k.others.clone(),
            })
        }
        _ => None,
    };
    let config = tls.config.clone();
    let limit = site.config.timeouts.handshake;
    drop(site);
    let Accepted {
        stream,
        peer,
        local,
        class,
        home,
        n,
        guard,
    } = conn;
    let done = rescon_rt::timeout(limit, handshake(stream, config, offload, &home)).await;
    drop(slot);
    let stream = match done {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            home.account().add_tls_failed(1);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            home.account().add_tls_failed(1);
            tracing::debug!(%peer, "TLS handshake not done within timeouts.handshake: closed");
            return;
        }
    };
    home.account().add_tls_handshakes(1);
    let proto = match stream.session.alpn_protocol() {
        Some(b"h2") => Proto::Http2,
        _ => Proto::Http1,
    };
    let conn = Accepted {
        stream,
        peer,
        local,
        class,
        home,
        n,
        guard,
    };
    serve_conn(shared, conn, proto).await
}

/// Where a handshake's ClientHello may be answered instead of on the worker: the pool, for a
/// class of scheduling class `class`, below high.
struct HandOff<'a> {
    pool: &'a rescon_rt::BlockingPool,
    class: rescon::SchedClass,
    /// The other classes' containers; the rivals are those at `class` or above.
    others: Arc<[rescon::Container]>,
}

impl HandOff<'_> {
    /// Under pressure: some rival class (another class of the listeners, at this one's
    /// scheduling class or above) has a connection open, whose requests a signature computed
    /// on the worker would hold up (a poll the runtime cannot preempt).
    fn wanted(&self) -> bool {
        self.others
            .iter()
            .any(|c| c.attrs().class >= self.class && c.usage().open_conns > 0)
    }
}

/// Runs a server handshake over `io` to its end (the session's first records may still be
/// waiting to go out: the next write or flush sends them): reads the ClientHello, answers it
/// on the hand-off's pool (charged to `container`) when the hand-off is wanted then, else
/// here, and finishes.
async fn handshake(
    io: rescon_rt::TcpStream,
    config: Arc<ServerConfig>,
    offload: Option<HandOff<'_>>,
    container: &rescon::Container,
) -> io::Result<TlsStream> {
    let mut acceptor = rustls::server::Acceptor::default();
    let hello = std::future::poll_fn(|cx| {
        loop {
            match acceptor.accept() {
                Ok(Some(hello)) => return Poll::Ready(Ok(hello)),
                Ok(None) => {}
                Err((e, mut alert)) => {
                    let _ = alert.write(&mut SyncIo { io: &io, cx });
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
            let n = ready!(would_block(acceptor.read_tls(&mut SyncIo { io: &io, cx })))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before its ClientHello ended",
                )));
            }
        }
    })
    .await?;
    let answered = match offload.filter(HandOff::wanted) {
        None => hello.into_connection(config),
        Some(HandOff { pool, .. }) => pool
            .spawn_in(container, move || hello.into_connection(config))
            .await
            .map_err(|_| io::Error::other("the handshake pool stopped"))?,
    };
    let session = match answered {
        Ok(s) => s,
        Err((e, mut alert)) => {
            std::future::poll_fn(|cx| {
                let _ = alert.write(&mut SyncIo { io: &io, cx });
                Poll::Ready(())
            })
            .await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    };
    let mut s = TlsStream {
        io,
        session,
        read_eof: false,
    };
    std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
    Ok(s)
}

// ---- the stream ----

/// A TLS session over a TCP connection, as the connection stage reads and writes it. See the
/// module docs for its buffers.
pub(crate) struct TlsStream {
    io: rescon_rt::TcpStream,
    session: rustls::ServerConnection,
    /// The client closed its side of TCP.
    read_eof: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("io", &self.io)
            .field("protocol", &self.session.protocol_version())
            .finish()
    }
}

/// The socket as the blocking `Read` and `Write` rustls wants, within one poll: a socket that
/// is not ready says `WouldBlock`, and the poll's waker is registered.
struct SyncIo<'a, 'b> {
    io: &'a rescon_rt::TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.io.poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.io.poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self.io.poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl TlsStream {
    /// Reads TLS records from the socket and processes them: `Ok(0)` at the end of the TCP
    /// stream. A record that does not decrypt or parse sends the client an alert (as far as
    /// the socket takes it) and fails.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let n = ready!(would_block(
            self.session.read_tls(&mut SyncIo { io: &self.io, cx })
        ))?;
        if n == 0 {
            self.read_eof = true;
        }
        if let Err(e) = self.session.process_new_packets() {
            // The alert describing the error is queued: send what the socket takes now.
            let _ = self.poll_write_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }

    /// Sends queued TLS records until none is left (`Ready`) or the socket is full
    /// (`Pending`).
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.session.wants_write() {
            let n = ready!(would_block(
                self.session.write_tls(&mut SyncIo { io: &self.io, cx })
            ))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let flushed = self.poll_write_tls(cx)?.is_ready();
            if !self.session.is_handshaking() {
                return if flushed {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            if !self.session.wants_read() {
                // Nothing to read until what is queued goes out.
                return if flushed {
                    Poll::Ready(Err(io::Error::other("the TLS handshake stalled")))
                } else {
                    Poll::Pending
                };
            }
            if ready!(self.poll_read_tls(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
        }
    }
}

impl Stream for TlsStream {
    fn poll_read_count(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.session.reader().fill_buf() {
                Ok(data) => {
                    let n = data.len().min(buf.remaining());
                    buf.put_slice(&data[..n]);
                    this.session.reader().consume(n);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP stream ended without close_notify: a truncation attack or a client
                // that just closed. Either way the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(0));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Answers the session owes (a key update, tickets) go out before we wait.
            let _ = this.poll_write_tls(cx)?;
            if this.read_eof {
                return Poll::Ready(Ok(0));
            }
            ready!(this.poll_read_tls(cx))?;
        }
    }

    /// Ready while the session holds decrypted bytes (or knows the stream's end) that a read
    /// would return without the socket; else when the socket is readable. Records the session
    /// still owes the client (tickets, a key update) are sent first, as far as the socket
    /// takes them.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read_eof {
            return Poll::Ready(Ok(()));
        }
        match self.session.reader().fill_buf() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Bytes, the stream's end, or an error: a read returns at once.
            _ => return Poll::Ready(Ok(())),
        }
        if let Poll::Ready(Err(e)) = self.poll_write_tls(cx) {
            return Poll::Ready(Err(e));
        }
        self.io.poll_read_ready(cx)
    }

    fn set_container(&mut self, c: &rescon::Container) {
        self.io.set_container(c)
    }

    // `park` keeps the session as it is: rustls has no call that gives its record buffer
    // back short of ending the session (see the module docs).
}

impl hyper::rt::Read for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_count(cx, buf).map_ok(|_| ())
    }
}

impl hyper::rt::Write for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            // rustls takes plaintext up to its buffer limit (64 KiB of records queued).
            let n = this.session.writer().write(buf)?;
            let sent = this.poll_write_tls(cx)?;
            if n > 0 || buf.is_empty() {
                return Poll::Ready(Ok(n));
            }
            if sent.is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.session.writer().write_vectored(bufs)?;
            let sent = this.poll_write_tls(cx)?;
            if n > 0 || bufs.iter().all(|b| b.is_empty()) {
                return Poll::Ready(Ok(n));
            }
            if sent.is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.session.writer().flush()?;
        this.poll_write_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.session.send_close_notify();
        ready!(this.poll_write_tls(cx))?;
        Poll::Ready(match this.io.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}
