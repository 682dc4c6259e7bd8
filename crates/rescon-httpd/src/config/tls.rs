//! The configuration of TLS and HTTP/2: `[tls]`, `[http2]`, a listener's `tls` and
//! `protocols`, a class's `max_handshakes` and a vhost's `[vhost.tls]`.

use super::de::{Http2De, TlsDe, VhostTlsDe};
use super::{Loader, span};
use std::path::PathBuf;
use toml::Spanned;

/// `[tls]`: what every TLS listener does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// TLS 1.2 is offered.
    pub tls12: bool,
    /// TLS 1.3 is offered.
    pub tls13: bool,
    /// Sessions kept in memory for resumption by session id (TLS 1.2) or stateful ticket;
    /// 0 keeps none.
    pub session_cache: usize,
    /// Whether stateless session tickets are issued (resumption without server memory).
    pub tickets: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            tls12: true,
            tls13: true,
            session_cache: 4096,
            tickets: true,
        }
    }
}

/// `[http2]`: the bounds of an HTTP/2 connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2Config {
    /// Streams a client may have open at once on a connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// RST_STREAM frames a client may send on a connection in any 10 seconds (a token bucket
    /// that holds this many and refills at a tenth of it a second); beyond, the connection
    /// gets GOAWAY (ENHANCE_YOUR_CALM) and is closed: HTTP/2's rapid reset (CVE-2023-44487).
    pub max_resets: u32,
    /// SETTINGS and PING frames a client may send on a connection in any 10 seconds (the
    /// same bucket); beyond, GOAWAY (ENHANCE_YOUR_CALM) and close.
    pub max_control_frames: u32,
    /// Each stream runs and is charged in a child container of its own (`stream-N` under the
    /// connection's), made when its request arrives and released when it ends; its usage then
    /// folds into the connection's. Off by default: a stream is charged to its connection's
    /// container, and a container per stream costs its making and a rebinding per stream.
    pub stream_containers: bool,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 128,
            max_resets: 200,
            max_control_frames: 1000,
            stream_containers: false,
        }
    }
}

/// The protocols a listener speaks over its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocols {
    /// HTTP/1.1 (and 1.0).
    pub http1: bool,
    /// HTTP/2: chosen by ALPN with TLS, by prior knowledge in cleartext.
    pub h2: bool,
}

impl Protocols {
    /// HTTP/1.1 only (a cleartext listener's default).
    pub const HTTP1: Protocols = Protocols {
        http1: true,
        h2: false,
    };
    /// Both (a TLS listener's default): ALPN offers h2, then http/1.1.
    pub const BOTH: Protocols = Protocols {
        http1: true,
        h2: true,
    };

    /// The names, as in the configuration and in ALPN.
    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.h2 {
            v.push("h2");
        }
        if self.http1 {
            v.push("http/1.1");
        }
        v
    }
}

/// `[vhost.tls]`: a virtual host's certificate, chosen by SNI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VhostTls {
    /// A certificate chain and its private key, PEM files (read at start-up and each reload).
    Files {
        /// The chain: the vhost's certificate first, then its intermediates.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A certificate for the vhost's host names generated at start-up (the demo's): clients
    /// must be told to trust it (`curl -k`).
    SelfSigned,
}

/// The default of `max_handshakes`: handshakes a class may have in flight at once.
pub const DEFAULT_MAX_HANDSHAKES: u32 = 1024;

impl Loader<'_, '_> {
    pub(super) fn tls(&mut self, raw: &TlsDe) -> TlsConfig {
        let mut out = TlsConfig::default();
        if let Some(v) = &raw.versions {
            out.tls12 = false;
            out.tls13 = false;
            for (i, s) in v.get_ref().iter().enumerate() {
                match s.get_ref().as_str() {
                    "1.2" => out.tls12 = true,
                    "1.3" => out.tls13 = true,
                    other => self.err(
                        span(s),
                        &format!("tls.versions[{i}]"),
                        format!("unknown TLS version {other:?}"),
                        Some("\"1.2\", \"1.3\""),
                    ),
                }
            }
            if v.get_ref().is_empty() {
                self.err(
                    span(v),
                    "tls.versions",
                    "no TLS version left".into(),
                    Some("one or both of \"1.2\", \"1.3\""),
                );
                out.tls13 = true;
            }
        }
        if let Some(n) = &raw.session_cache {
            match usize::try_from(*n.get_ref()) {
                Ok(n) => out.session_cache = n,
                Err(_) => self.err(
                    span(n),
                    "tls.session_cache",
                    format!("invalid size {}", n.get_ref()),
                    Some("a number of sessions, 0 to keep none"),
                ),
            }
        }
        if let Some(b) = &raw.tickets {
            out.tickets = *b.get_ref();
        }
        out
    }

    pub(super) fn http2(&mut self, raw: &Http2De) -> Http2Config {
        let d = Http2Config::default();
        let mut count = |v: &Option<Spanned<i64>>, key: &str, default: u32| -> u32 {
            match v {
                None => default,
                Some(n) => match u32::try_from(*n.get_ref()) {
                    Ok(x) if x > 0 => x,
                    _ => {
                        self.err(
                            span(n),
                            key,
                            format!("invalid count {}", n.get_ref()),
                            Some("a positive whole number"),
                        );
                        default
                    }
                },
            }
        };
        Http2Config {
            max_concurrent_streams: count(
                &raw.max_concurrent_streams,
                "http2.max_concurrent_streams",
                d.max_concurrent_streams,
            ),
            max_resets: count(&raw.max_resets, "http2.max_resets", d.max_resets),
            max_control_frames: count(
                &raw.max_control_frames,
                "http2.max_control_frames",
                d.max_control_frames,
            ),
            stream_containers: raw
                .stream_containers
                .as_ref()
                .map_or(d.stream_containers, |b| *b.get_ref()),
        }
    }

    /// A listener's `protocols`, given whether it has TLS.
    pub(super) fn protocols(
        &mut self,
        raw: &Option<Spanned<Vec<Spanned<String>>>>,
        tls: bool,
        key: &str,
    ) -> Protocols {
        let Some(list) = raw else {
            return if tls {
                Protocols::BOTH
            } else {
                Protocols::HTTP1
            };
        };
        let mut p = Protocols {
            http1: false,
            h2: false,
        };
        for (i, s) in list.get_ref().iter().enumerate() {
            match s.get_ref().as_str() {
                "http/1.1" => p.http1 = true,
                "h2" => p.h2 = true,
                other => self.err(
                    span(s),
                    &format!("{key}[{i}]"),
                    format!("unknown protocol {other:?}"),
                    Some("\"h2\", \"http/1.1\""),
                ),
            }
        }
        if !p.http1 && !p.h2 {
            self.err(
                span(list),
                key,
                "no protocol left".into(),
                Some("one or both of \"h2\", \"http/1.1\""),
            );
            return Protocols::HTTP1;
        }
        if !tls && p.http1 && p.h2 {
            // Without TLS there is no ALPN to choose by; h2 in cleartext is by prior
            // knowledge, and one listener serves one protocol.
            self.err(
                span(list),
                key,
                "a cleartext listener serves one protocol (there is no ALPN to choose by)".into(),
                Some("[\"http/1.1\"], [\"h2\"] (prior knowledge), or tls = true for both"),
            );
        }
        p
    }

    pub(super) fn max_handshakes(&mut self, v: &Option<Spanned<i64>>, key: &str) -> u32 {
        match v {
            None => DEFAULT_MAX_HANDSHAKES,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(x) if x > 0 => x,
                _ => {
                    self.err(
                        span(n),
                        key,
                        format!("invalid count {}", n.get_ref()),
                        Some("a positive number of handshakes in flight"),
                    );
                    DEFAULT_MAX_HANDSHAKES
                }
            },
        }
    }

    pub(super) fn vhost_tls(&mut self, raw: &Spanned<VhostTlsDe>, key: &str) -> Option<VhostTls> {
        let r = raw.get_ref();
        let self_signed = r.self_signed.as_ref().is_some_and(|b| *b.get_ref());
        match (&r.cert, &r.key, self_signed) {
            (Some(c), Some(k), false) => Some(VhostTls::Files {
                cert: self.path(c.get_ref()),
                key: self.path(k.get_ref()),
            }),
            (None, None, true) => Some(VhostTls::SelfSigned),
            (Some(_), Some(_), true) | (Some(_), None, true) | (None, Some(_), true) => {
                self.err(
                    span(raw),
                    &format!("{key}.self_signed"),
                    "self_signed = true with a certificate file".into(),
                    Some("cert and key, or self_signed = true"),
                );
                None
            }
            (Some(c), None, false) => {
                self.err(
                    span(c),
                    &format!("{key}.key"),
                    "a certificate without its private key".into(),
                    Some("key = \"/path/to/key.pem\""),
                );
                None
            }
            (None, Some(k), false) => {
                self.err(
                    span(k),
                    &format!("{key}.cert"),
                    "a private key without its certificate".into(),
                    Some("cert = \"/path/to/chain.pem\""),
                );
                None
            }
            (None, None, false) => {
                self.err(
                    span(raw),
                    key,
                    "no certificate".into(),
                    Some("cert and key, or self_signed = true"),
                );
                None
            }
        }
    }
}
