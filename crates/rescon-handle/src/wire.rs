//! The messages between a handle's holder and its owner: pure encoding and decoding, no I/O.
//!
//! Every message is one `SOCK_SEQPACKET` record of at most [`MAX_MESSAGE`] bytes:
//!
//! ```text
//! version (u8 = 1) | kind (u8) | tag (u32 LE) | body
//! ```
//!
//! Integers are little-endian; a string is a length (u8 for names and attribute text, u16 for
//! messages) then UTF-8 bytes; attributes travel as `key=value` pairs in the model's own syntax
//! ([`rescon::Attributes::set`]), usage as `(field, u64)` pairs named as
//! [`rescon::Usage::FIELDS`], so neither list is written a second time here. A decoder never
//! panics and never allocates more than the message's size, whatever the bytes (the owner reads
//! messages from processes it does not trust); a message with bytes left over is refused.
//!
//! One-way messages (tag 0) go on the handle's own socket: [`Request::Charge`], nothing else.
//! A session is a connection to the owner's listener (found with [`listener_of`]) whose first
//! message is [`Request::OpenSession`], carrying the handle's descriptor (`SCM_RIGHTS`) as
//! proof; calls follow on it and are answered there with the same tag.

use crate::error::{Error, ErrorKind};
use rescon::{Attributes, ContainerId, Usage};

/// The protocol version in every message's first byte.
pub const VERSION: u8 = 1;
/// The largest message, either way.
pub const MAX_MESSAGE: usize = 4096;
/// The header: version, kind, tag.
pub const HEADER: usize = 6;
/// The most attribute pairs in one message.
const MAX_PAIRS: usize = 32;

mod kind {
    pub const CHARGE: u8 = 1;
    pub const OPEN_SESSION: u8 = 2;
    pub const INFO: u8 = 16;
    pub const CREATE_CHILD: u8 = 17;
    pub const SET_ATTRS: u8 = 18;
    pub const OPEN_METER: u8 = 19;
    pub const BIND_THREAD: u8 = 20;
    pub const BIND_PROCESS: u8 = 21;
    pub const FLUSH: u8 = 22;
    pub const OK: u8 = 128;
    pub const INFO_REPLY: u8 = 129;
    pub const HANDLE: u8 = 130;
    pub const METER: u8 = 131;
    pub const ERROR: u8 = 255;
}

/// Usage a holder charges to its container: CPU it measured itself, bytes it moved, requests
/// it served. Each field is added to the container's counter of the same name
/// ([`rescon::Usage`]).
///
/// ```
/// let c = rescon_handle::Charge { requests: 1, bytes_out: 1500, ..Default::default() };
/// assert!(!c.is_empty());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Charge {
    /// CPU time, nanoseconds, charged as `cpu_ns` (CPU that no scheduler of the owner saw).
    pub cpu_ns: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Requests served.
    pub requests: u64,
}

impl Charge {
    /// Whether nothing is charged.
    pub fn is_empty(&self) -> bool {
        *self == Charge::default()
    }

    /// Adds this charge to a container's usage (one relaxed atomic add per non-zero field).
    pub fn apply(&self, c: &rescon::Container) {
        let a = c.account();
        if self.cpu_ns != 0 {
            a.add_cpu_ns(self.cpu_ns);
        }
        if self.bytes_in != 0 {
            a.add_bytes_in(self.bytes_in);
        }
        if self.bytes_out != 0 {
            a.add_bytes_out(self.bytes_out);
        }
        if self.requests != 0 {
            a.add_requests(self.requests);
        }
    }
}

/// A container as its owner describes it to a handle's holder.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// The container's id (in the owner's namespace).
    pub id: ContainerId,
    /// Its parent's id, if any.
    pub parent: Option<ContainerId>,
    /// Its name.
    pub name: String,
    /// Its attributes.
    pub attrs: Attributes,
    /// Its own usage.
    pub usage: Usage,
    /// The usage of its subtree, released descendants included.
    pub usage_subtree: Usage,
    /// How the owner enforces its limits on processes, in words (for instance `kernel
    /// (cgroups)`, or `user-level only`): the enforcement actually in force, never the one
    /// merely asked for.
    pub enforcement: String,
}

/// A message from a holder to the owner.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// One-way, on the handle socket: add usage.
    Charge(Charge),
    /// The first message on a connection to the owner's listener, with the handle's
    /// descriptor: serve calls on this connection for that handle.
    OpenSession,
    /// Describe the container, or a descendant of it.
    Info {
        /// A descendant, or `None` for the handle's container.
        target: Option<ContainerId>,
    },
    /// Make a child; the answer carries its handle.
    CreateChild {
        /// Its name.
        name: String,
        /// `key=value` attributes, applied over the defaults.
        attrs: Vec<(String, String)>,
    },
    /// Change attributes: the container's own (lowering only) or a descendant's.
    SetAttrs {
        /// A descendant, or `None` for the handle's container.
        target: Option<ContainerId>,
        /// `key=value` changes, applied in order over the current attributes.
        attrs: Vec<(String, String)>,
    },
    /// Map the handle's page of counters; the answer carries it.
    OpenMeter,
    /// Bind one thread of the calling process to the container's cgroups.
    BindThread {
        /// The thread.
        tid: i32,
    },
    /// Move the calling process (all its threads) into the container's cgroups.
    BindProcess,
    /// Read the charges queued on the handle now (the holder's socket is full).
    Flush,
}

/// A message from the owner to a holder, on a session.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Done.
    Ok,
    /// The description asked for.
    Info(Box<Info>),
    /// A new handle, for the container with this id; the fd comes with the message.
    Handle(ContainerId),
    /// The page of counters; the fd comes with the message.
    Meter,
    /// Refused, or failed.
    Error(ErrorKind, String),
}

/// Writes a message.
#[derive(Debug)]
pub struct Enc(Vec<u8>);

impl Enc {
    fn new(kind: u8, tag: u32) -> Enc {
        let mut v = Vec::with_capacity(64);
        v.push(VERSION);
        v.push(kind);
        v.extend_from_slice(&tag.to_le_bytes());
        Enc(v)
    }

    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }

    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }

    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }

    /// A short string; longer than 255 bytes is cut at a character boundary (only the
    /// owner's descriptive text can be that long: names and values are checked before).
    fn str8(&mut self, s: &str) {
        let s = cut(s, u8::MAX as usize);
        self.u8(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn str16(&mut self, s: &str) {
        let s = cut(s, 2048);
        self.0.extend_from_slice(&(s.len() as u16).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn pairs(&mut self, pairs: &[(String, String)]) {
        self.u8(pairs.len().min(MAX_PAIRS) as u8);
        for (k, v) in pairs.iter().take(MAX_PAIRS) {
            self.str8(k);
            self.str8(v);
        }
    }

    fn usage(&mut self, u: &Usage) {
        self.u8(Usage::FIELDS.len() as u8);
        for f in Usage::FIELDS {
            self.str8(f);
            self.u64(u.get(f).unwrap_or(0));
        }
    }

    fn id(&mut self, id: Option<ContainerId>) {
        self.u64(id.map_or(0, ContainerId::get));
    }

    fn finish(self) -> Vec<u8> {
        self.0
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads a message; every read checks the bounds.
struct Dec<'a> {
    b: &'a [u8],
}

fn bad(what: &str) -> Error {
    Error::new(ErrorKind::Protocol, format!("malformed message: {what}"))
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if self.b.len() < n {
            return Err(bad(&format!("{what} cut short")));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn text(&mut self, n: usize, what: &str) -> Result<String, Error> {
        let b = self.take(n, what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| bad(&format!("{what} is not UTF-8")))
    }

    fn str8(&mut self, what: &str) -> Result<String, Error> {
        let n = self.u8(what)? as usize;
        self.text(n, what)
    }

    fn str16(&mut self, what: &str) -> Result<String, Error> {
        let n = u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")) as usize;
        self.text(n, what)
    }

    fn pairs(&mut self) -> Result<Vec<(String, String)>, Error> {
        let n = self.u8("attribute count")? as usize;
        if n > MAX_PAIRS {
            return Err(bad(&format!("{n} attributes, at most {MAX_PAIRS}")));
        }
        (0..n)
            .map(|_| Ok((self.str8("attribute key")?, self.str8("attribute value")?)))
            .collect()
    }

    fn usage(&mut self) -> Result<Usage, Error> {
        let n = self.u8("usage count")?;
        let mut u = Usage::default();
        for _ in 0..n {
            let name = self.str8("usage field")?;
            let v = self.u64("usage value")?;
            // A field this side does not know (a newer owner) is skipped.
            if let Some(slot) = u.get_mut(&name) {
                *slot = v;
            }
        }
        Ok(u)
    }

    fn id(&mut self, what: &str) -> Result<Option<ContainerId>, Error> {
        Ok(ContainerId::from_raw(self.u64(what)?))
    }

    fn finish(self) -> Result<(), Error> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(bad(&format!("{} bytes left over", self.b.len())))
        }
    }
}

fn header(b: &[u8]) -> Result<(u8, u32, Dec<'_>), Error> {
    if b.len() > MAX_MESSAGE {
        return Err(bad(&format!("{} bytes, at most {MAX_MESSAGE}", b.len())));
    }
    let mut d = Dec { b };
    let v = d.u8("header")?;
    if v != VERSION {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "protocol version {v}, this side speaks {VERSION}: use matching versions of rescon-handle"
            ),
        ));
    }
    let kind = d.u8("header")?;
    let tag = d.u32("header")?;
    Ok((kind, tag, d))
}

/// The prefix of an owner's abstract Unix addresses: its listener is
/// `rescon-handle/<owner>`, the owner's end of each handle `rescon-handle/<owner>/<handle>`.
pub const ADDRESS_PREFIX: &str = "rescon-handle/";

/// The owner's listener address, from the address of the owner's end of a handle (which the
/// holder reads with `getpeername`), or `None` if it is not one.
pub fn listener_of(handle_address: &[u8]) -> Option<&[u8]> {
    let s = std::str::from_utf8(handle_address).ok()?;
    let (owner, handle) = s.strip_prefix(ADDRESS_PREFIX)?.split_once('/')?;
    if owner.is_empty() || handle.is_empty() || handle.contains('/') {
        return None;
    }
    Some(&handle_address[..ADDRESS_PREFIX.len() + owner.len()])
}

/// Attributes as `key=value` pairs, in the model's syntax.
pub fn attr_pairs(a: &Attributes) -> Vec<(String, String)> {
    a.to_pairs()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Applies `key=value` pairs in order over `a`.
pub fn apply_pairs(a: &mut Attributes, pairs: &[(String, String)]) -> Result<(), Error> {
    for (k, v) in pairs {
        a.set(k, v)?;
    }
    Ok(())
}

/// Encodes a request with `tag` (0 for the one-way ones).
pub fn encode_request(tag: u32, r: &Request) -> Vec<u8> {
    let mut e;
    match r {
        Request::Charge(c) => {
            e = Enc::new(kind::CHARGE, tag);
            e.u64(c.cpu_ns);
            e.u64(c.bytes_in);
            e.u64(c.bytes_out);
            e.u64(c.requests);
        }
        Request::OpenSession => e = Enc::new(kind::OPEN_SESSION, tag),
        Request::Info { target } => {
            e = Enc::new(kind::INFO, tag);
            e.id(*target);
        }
        Request::CreateChild { name, attrs } => {
            e = Enc::new(kind::CREATE_CHILD, tag);
            e.str8(name);
            e.pairs(attrs);
        }
        Request::SetAttrs { target, attrs } => {
            e = Enc::new(kind::SET_ATTRS, tag);
            e.id(*target);
            e.pairs(attrs);
        }
        Request::OpenMeter => e = Enc::new(kind::OPEN_METER, tag),
        Request::BindThread { tid } => {
            e = Enc::new(kind::BIND_THREAD, tag);
            e.u32(*tid as u32);
        }
        Request::BindProcess => e = Enc::new(kind::BIND_PROCESS, tag),
        Request::Flush => e = Enc::new(kind::FLUSH, tag),
    }
    e.finish()
}

/// Decodes a request: its tag and what it asks.
pub fn decode_request(b: &[u8]) -> Result<(u32, Request), Error> {
    let (k, tag, mut d) = header(b)?;
    let r = match k {
        kind::CHARGE => Request::Charge(Charge {
            cpu_ns: d.u64("charge")?,
            bytes_in: d.u64("charge")?,
            bytes_out: d.u64("charge")?,
            requests: d.u64("charge")?,
        }),
        kind::OPEN_SESSION => Request::OpenSession,
        kind::INFO => Request::Info {
            target: d.id("target")?,
        },
        kind::CREATE_CHILD => Request::CreateChild {
            name: d.str8("name")?,
            attrs: d.pairs()?,
        },
        kind::SET_ATTRS => Request::SetAttrs {
            target: d.id("target")?,
            attrs: d.pairs()?,
        },
        kind::OPEN_METER => Request::OpenMeter,
        kind::BIND_THREAD => Request::BindThread {
            tid: d.u32("tid")? as i32,
        },
        kind::BIND_PROCESS => Request::BindProcess,
        kind::FLUSH => Request::Flush,
        k => return Err(bad(&format!("unknown request kind {k}"))),
    };
    d.finish()?;
    Ok((tag, r))
}

/// Encodes a reply to the call with `tag`.
pub fn encode_reply(tag: u32, r: &Reply) -> Vec<u8> {
    let mut e;
    match r {
        Reply::Ok => e = Enc::new(kind::OK, tag),
        Reply::Info(i) => {
            e = Enc::new(kind::INFO_REPLY, tag);
            e.id(Some(i.id));
            e.id(i.parent);
            e.str8(&i.name);
            e.pairs(&attr_pairs(&i.attrs));
            e.usage(&i.usage);
            e.usage(&i.usage_subtree);
            e.str16(&i.enforcement);
        }
        Reply::Handle(id) => {
            e = Enc::new(kind::HANDLE, tag);
            e.id(Some(*id));
        }
        Reply::Meter => e = Enc::new(kind::METER, tag),
        Reply::Error(k, msg) => {
            e = Enc::new(kind::ERROR, tag);
            e.u8(k.code());
            e.str16(msg);
        }
    }
    e.finish()
}

/// Decodes a reply: its tag and what it says.
pub fn decode_reply(b: &[u8]) -> Result<(u32, Reply), Error> {
    let (k, tag, mut d) = header(b)?;
    let r = match k {
        kind::OK => Reply::Ok,
        kind::INFO_REPLY => {
            let id = d.id("id")?.ok_or_else(|| bad("container id 0"))?;
            let parent = d.id("parent")?;
            let name = d.str8("name")?;
            let mut attrs = Attributes::default();
            apply_pairs(&mut attrs, &d.pairs()?).map_err(|e| bad(&format!("attributes: {e}")))?;
            Reply::Info(Box::new(Info {
                id,
                parent,
                name,
                attrs,
                usage: d.usage()?,
                usage_subtree: d.usage()?,
                enforcement: d.str16("enforcement")?,
            }))
        }
        kind::HANDLE => Reply::Handle(d.id("id")?.ok_or_else(|| bad("container id 0"))?),
        kind::METER => Reply::Meter,
        kind::ERROR => {
            let code = d.u8("error kind")?;
            Reply::Error(ErrorKind::from_code(code), d.str16("error message")?)
        }
        k => return Err(bad(&format!("unknown reply kind {k}"))),
    };
    d.finish()?;
    Ok((tag, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        let mut a = Attributes::default();
        for (k, v) in pairs {
            a.set(k, v).unwrap();
        }
        a
    }

    #[test]
    fn charge_layout_is_fixed() {
        let b = encode_request(
            0,
            &Request::Charge(Charge {
                cpu_ns: 1,
                bytes_in: 2,
                bytes_out: 3,
                requests: 4,
            }),
        );
        let mut want = vec![1u8, 1, 0, 0, 0, 0];
        for x in 1u64..=4 {
            want.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(b, want);
    }

    #[test]
    fn requests_round_trip() {
        let id = ContainerId::from_raw(42);
        let cases = [
            Request::Charge(Charge {
                cpu_ns: 7,
                bytes_in: 1 << 40,
                bytes_out: 0,
                requests: 1,
            }),
            Request::OpenSession,
            Request::Info { target: None },
            Request::Info { target: id },
            Request::CreateChild {
                name: "request-ü".into(),
                attrs: vec![("cpu_limit".into(), "10%".into())],
            },
            Request::SetAttrs {
                target: id,
                attrs: vec![
                    ("priority".into(), "5".into()),
                    ("share".into(), "7".into()),
                ],
            },
            Request::OpenMeter,
            Request::BindThread { tid: 12345 },
            Request::BindProcess,
            Request::Flush,
        ];
        for (i, r) in cases.iter().enumerate() {
            let b = encode_request(i as u32, r);
            assert_eq!(decode_request(&b).unwrap(), (i as u32, r.clone()));
        }
    }

    #[test]
    fn replies_round_trip_with_attributes_and_usage() {
        let usage = Usage {
            requests: 3,
            kernel_cpu_ns: 99,
            processes: 2,
            ..Default::default()
        };
        let info = Info {
            id: ContainerId::from_raw(9).unwrap(),
            parent: ContainerId::from_raw(2),
            name: "cgi".into(),
            attrs: attrs(&[
                ("cpu_limit", "30%"),
                ("cpu_period", "50ms"),
                ("cpu_burst", "10ms"),
                ("share", "fixed:0.25"),
                ("priority", "40"),
                ("max_processes", "8"),
                ("enforcement", "kernel"),
                ("class", "high"),
            ]),
            usage,
            usage_subtree: usage + usage,
            enforcement: "kernel (cgroups)".into(),
        };
        let cases = [
            Reply::Ok,
            Reply::Info(Box::new(info)),
            Reply::Handle(ContainerId::from_raw(77).unwrap()),
            Reply::Meter,
            Reply::Error(ErrorKind::PermissionDenied, "no".into()),
        ];
        for r in cases {
            let b = encode_reply(5, &r);
            assert_eq!(decode_reply(&b).unwrap(), (5, r));
        }
    }

    #[test]
    fn refuses_bad_shapes() {
        let good = encode_request(1, &Request::Info { target: None });
        // Cut short, a byte too many, another version, an unknown kind.
        assert!(decode_request(&good[..good.len() - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(
            decode_request(&long)
                .unwrap_err()
                .to_string()
                .contains("left over")
        );
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(
            decode_request(&v2)
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
        let mut k = good;
        k[1] = 99;
        assert_eq!(decode_request(&k).unwrap_err().kind(), ErrorKind::Protocol);
        assert!(decode_request(&[]).is_err());
        // Not UTF-8 in a name.
        let mut b = Enc::new(kind::CREATE_CHILD, 1);
        b.u8(2);
        b.0.extend_from_slice(&[0xff, 0xfe]);
        b.u8(0);
        assert!(
            decode_request(&b.finish())
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        // More pairs than allowed.
        let mut b = Enc::new(kind::SET_ATTRS, 1);
        b.u64(0);
        b.u8(200);
        assert!(decode_request(&b.finish()).is_err());
    }

    #[test]
    fn listener_address_from_a_handle_address() {
        assert_eq!(
            listener_of(b"rescon-handle/00ff/1a2b"),
            Some(&b"rescon-handle/00ff"[..])
        );
        for bad in [
            &b"rescon-handle/00ff"[..],
            b"rescon-handle//1",
            b"rescon-handle/00ff/",
            b"rescon-handle/a/b/c",
            b"other/00ff/1",
            b"\xff\xfe",
        ] {
            assert_eq!(listener_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn long_text_is_cut_at_a_character() {
        let s = "é".repeat(200); // 400 bytes
        let b = encode_request(
            1,
            &Request::CreateChild {
                name: s,
                attrs: vec![],
            },
        );
        let (_, r) = decode_request(&b).unwrap();
        let Request::CreateChild { name, .. } = r else {
            panic!()
        };
        assert_eq!(name.len(), 254);
    }

    proptest! {
        // The owner decodes bytes from processes it does not trust: no input may panic it.
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(&b);
            let _ = decode_reply(&b);
        }

        #[test]
        fn decoders_never_panic_on_valid_headers(
            k in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut b = vec![VERSION, k, 0, 0, 0, 0];
            b.extend(body);
            let _ = decode_request(&b);
            let _ = decode_reply(&b);
        }

        #[test]
        fn charges_round_trip(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), d in any::<u64>(), tag in any::<u32>()) {
            let r = Request::Charge(Charge { cpu_ns: a, bytes_in: b, bytes_out: c, requests: d });
            prop_assert_eq!(decode_request(&encode_request(tag, &r)).unwrap(), (tag, r));
        }
    }
}
