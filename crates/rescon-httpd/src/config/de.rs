//! The file as TOML gives it: serde structures with spans, checked for unknown keys. Values are
//! kept as text with their spans here and given meaning (and errors) in `config::load`.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use toml::Spanned;

/// A scalar as written: its text (strings unquoted, numbers as digits, booleans as words).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(crate) fn text(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        i64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A node of `[containers]`: scalar entries are attributes, tables are children, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NodeDe {
    pub(crate) entries: Vec<(Spanned<String>, Spanned<EntryDe>)>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum EntryDe {
    Attr(Scalar),
    Child(NodeDe),
    /// An array or a date-time: never valid in the tree; kept to report it with its place.
    Other(&'static str),
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = NodeDe;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of attributes and child containers")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeDe, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<String>>()? {
            let v = map.next_value::<Spanned<EntryDe>>()?;
            entries.push((k, v));
        }
        Ok(NodeDe { entries })
    }
}

impl<'de> Deserialize<'de> for NodeDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(NodeVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = EntryDe;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attribute value or a table (a child container)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<EntryDe, E> {
        ScalarVisitor.visit_str(v).map(EntryDe::Attr)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<EntryDe, E> {
        ScalarVisitor.visit_i64(v).map(EntryDe::Attr)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<EntryDe, E> {
        ScalarVisitor.visit_u64(v).map(EntryDe::Attr)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<EntryDe, E> {
        ScalarVisitor.visit_f64(v).map(EntryDe::Attr)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<EntryDe, E> {
        ScalarVisitor.visit_bool(v).map(EntryDe::Attr)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EntryDe, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(EntryDe::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EntryDe, A::Error> {
        // toml hands a date-time over as a map with one private key; anything else is a table.
        NodeVisitor.visit_map(map).map(|n| {
            if n.entries.len() == 1 && n.entries[0].0.get_ref().starts_with("$__toml_private") {
                EntryDe::Other("a date-time")
            } else {
                EntryDe::Child(n)
            }
        })
    }
}

impl<'de> Deserialize<'de> for EntryDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EntryVisitor)
    }
}

pub(crate) type S<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileDe {
    #[serde(default)]
    pub(crate) server: ServerDe,
    #[serde(default)]
    pub(crate) timeouts: TimeoutsDe,
    #[serde(default)]
    pub(crate) limits: LimitsDe,
    #[serde(default)]
    pub(crate) admin: AdminDe,
    #[serde(default)]
    pub(crate) metrics: MetricsDe,
    #[serde(default)]
    pub(crate) tls: TlsDe,
    #[serde(default)]
    pub(crate) http2: Http2De,
    pub(crate) containers: Option<Spanned<NodeDe>>,
    #[serde(default, rename = "listener")]
    pub(crate) listeners: Vec<Spanned<ListenerDe>>,
    #[serde(default, rename = "vhost")]
    pub(crate) vhosts: Vec<Spanned<VhostDe>>,
    #[serde(default, rename = "fastcgi")]
    pub(crate) fastcgi: Vec<Spanned<FastCgiDe>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerDe {
    pub(crate) enforcement: S<String>,
    pub(crate) access_log: S<String>,
    pub(crate) per_request_containers: S<bool>,
    pub(crate) server_name: S<String>,
    pub(crate) user: S<String>,
    pub(crate) group: S<String>,
    pub(crate) cgroup_parent: S<String>,
    pub(crate) cgroup_v2_mode: S<String>,
    pub(crate) nofile: S<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsDe {
    pub(crate) header: S<Scalar>,
    pub(crate) body: S<Scalar>,
    pub(crate) keep_alive: S<Scalar>,
    pub(crate) park: S<Scalar>,
    pub(crate) send: S<Scalar>,
    pub(crate) shutdown: S<Scalar>,
    pub(crate) cgi_idle: S<Scalar>,
    pub(crate) cgi_total: S<Scalar>,
    /// The old name of `cgi_total`.
    pub(crate) cgi: S<Scalar>,
    pub(crate) handshake: S<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsDe {
    pub(crate) max_header_bytes: S<Scalar>,
    pub(crate) max_body_bytes: S<Scalar>,
    pub(crate) cgi_max_header_bytes: S<Scalar>,
    pub(crate) cgi_stderr_bytes: S<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminDe {
    pub(crate) socket: S<String>,
    pub(crate) tcp: S<String>,
    pub(crate) token: S<String>,
    pub(crate) token_file: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsDe {
    pub(crate) listen: S<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerDe {
    pub(crate) name: S<String>,
    pub(crate) address: Spanned<String>,
    pub(crate) port: Spanned<i64>,
    #[serde(default, rename = "class")]
    pub(crate) classes: Vec<Spanned<ClassDe>>,
    #[serde(default)]
    pub(crate) black_hole: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) edge: Vec<Spanned<String>>,
    pub(crate) flood_defense: Option<Spanned<FloodDe>>,
    pub(crate) tls: S<bool>,
    pub(crate) protocols: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassDe {
    pub(crate) name: Spanned<String>,
    pub(crate) container: Spanned<String>,
    pub(crate) prefixes: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) except: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) max_handshakes: S<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FloodDe {
    pub(crate) action: Spanned<String>,
    pub(crate) demote_to: S<String>,
    pub(crate) syn_rate: S<i64>,
    pub(crate) hold: S<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VhostDe {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) hosts: Vec<Spanned<String>>,
    pub(crate) root: Spanned<String>,
    pub(crate) container: Spanned<String>,
    pub(crate) index: Option<Vec<Spanned<String>>>,
    pub(crate) default: S<bool>,
    #[serde(default)]
    pub(crate) cgi: Vec<Spanned<CgiDe>>,
    pub(crate) tls: Option<Spanned<VhostTlsDe>>,
    pub(crate) user: S<String>,
    pub(crate) group: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CgiDe {
    pub(crate) prefix: Spanned<String>,
    pub(crate) dir: Spanned<String>,
    pub(crate) container: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsDe {
    pub(crate) versions: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) session_cache: S<i64>,
    pub(crate) tickets: S<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Http2De {
    pub(crate) max_concurrent_streams: S<i64>,
    pub(crate) max_resets: S<i64>,
    pub(crate) max_control_frames: S<i64>,
    pub(crate) stream_containers: S<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VhostTlsDe {
    pub(crate) cert: S<String>,
    pub(crate) key: S<String>,
    pub(crate) self_signed: S<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FastCgiDe {
    pub(crate) prefix: Spanned<String>,
    pub(crate) address: Spanned<String>,
    pub(crate) root: Spanned<String>,
    pub(crate) container: Spanned<String>,
    pub(crate) command: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) restarts: S<i64>,
    pub(crate) pass_handle: S<bool>,
}
