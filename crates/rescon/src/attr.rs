//! Container attributes: scheduling class, share, priority, CPU limit and resource limits.
//!
//! Every attribute is a newtype whose constructor checks its domain and never clamps: an
//! out-of-range value is refused with an [`AttrError`] naming the field and the allowed range.
//! [`Attributes::set`] parses the `key=value` syntax shared by the configuration file, the admin
//! API and `rctl set`.
//!
//! ```
//! use rescon::{Attributes, Share, Weight};
//! let mut a = Attributes::default();
//! a.set("share", "weight:300").unwrap();
//! a.set("cpu_limit", "30%").unwrap();
//! assert_eq!(a.share, Share::Weight(Weight::new(300).unwrap()));
//! assert_eq!(a.cpu_limit.unwrap().fraction(), 0.3);
//! let err = a.set("priority", "5000").unwrap_err();
//! assert_eq!(err.field(), "priority");
//! assert_eq!(a.priority.get(), 100, "a refused value changes nothing");
//! ```

use crate::AttrError;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// Scheduling class: a strict priority among siblings. A runnable sibling in a higher class always
/// runs before any sibling in a lower class; shares only divide the CPU among siblings of the same
/// class.
///
/// There are four classes, `0` (idle) to `3` (critical). The lowest class is special to the Linux
/// backends: it maps to `cpu.idle` in cgroup v2 and a worker serving only idle-class work lowers
/// its own kernel priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "u8", into = "u8"))]
pub struct SchedClass(u8);

impl SchedClass {
    /// Number of classes.
    pub const COUNT: usize = 4;
    /// Runs only when nothing of a higher class among its siblings is runnable.
    pub const IDLE: SchedClass = SchedClass(0);
    /// The default class.
    pub const NORMAL: SchedClass = SchedClass(1);
    /// Runs before normal and idle siblings.
    pub const HIGH: SchedClass = SchedClass(2);
    /// Runs before every other class.
    pub const CRITICAL: SchedClass = SchedClass(3);

    const NAMES: [&'static str; 4] = ["idle", "normal", "high", "critical"];
    const ALLOWED: &'static str = "0..=3 or idle, normal, high, critical";

    /// Checks `0..=3`.
    pub fn new(class: u8) -> Result<Self, AttrError> {
        if (class as usize) < Self::COUNT {
            Ok(SchedClass(class))
        } else {
            Err(AttrError::new("class", class, Self::ALLOWED))
        }
    }

    /// The class as a number, 0 (idle) to 3 (critical).
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The class's name.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.0 as usize]
    }

    /// Parses a number or a name.
    pub fn parse(s: &str) -> Result<Self, AttrError> {
        if let Some(i) = Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s.trim()))
        {
            return Ok(SchedClass(i as u8));
        }
        s.trim()
            .parse::<u8>()
            .map_err(|_| AttrError::new("class", s, Self::ALLOWED))
            .and_then(Self::new)
    }
}

impl Default for SchedClass {
    fn default() -> Self {
        SchedClass::NORMAL
    }
}

impl fmt::Display for SchedClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u8> for SchedClass {
    type Error = AttrError;
    fn try_from(v: u8) -> Result<Self, AttrError> {
        SchedClass::new(v)
    }
}

impl From<SchedClass> for u8 {
    fn from(c: SchedClass) -> u8 {
        c.0
    }
}

/// A fraction in `(0, 1]`: a fixed share of the parent's entitlement.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "f64", into = "f64"))]
pub struct Fraction(f64);

impl Fraction {
    /// Checks `0 < f <= 1`.
    pub fn new(f: f64) -> Result<Self, AttrError> {
        if f > 0.0 && f <= 1.0 {
            Ok(Fraction(f))
        } else {
            Err(AttrError::new(
                "share",
                f,
                "fixed:F with 0 < F <= 1 (or a percentage)",
            ))
        }
    }

    /// The fraction.
    pub fn get(self) -> f64 {
        self.0
    }

    /// In parts per billion, the unit sibling sums are checked in (so that a sum of exact
    /// decimal fractions such as 0.48 + 0.16 + 0.16 + 0.2 is exactly one).
    pub(crate) fn ppb(self) -> u64 {
        (self.0 * 1e9).round() as u64
    }
}

impl TryFrom<f64> for Fraction {
    type Error = AttrError;
    fn try_from(v: f64) -> Result<Self, AttrError> {
        Fraction::new(v)
    }
}

impl From<Fraction> for f64 {
    fn from(f: Fraction) -> f64 {
        f.0
    }
}

/// A weight among weighted siblings, `1..=10000`. The default is 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "u32", into = "u32"))]
pub struct Weight(NonZeroU32);

impl Weight {
    /// The largest weight.
    pub const MAX: u32 = 10_000;
    /// The default weight.
    pub const DEFAULT: Weight = Weight(NonZeroU32::new(100).unwrap());

    /// Checks `1..=10000`.
    pub fn new(w: u32) -> Result<Self, AttrError> {
        match NonZeroU32::new(w) {
            Some(nz) if w <= Self::MAX => Ok(Weight(nz)),
            _ => Err(AttrError::new("share", w, "weight:N with 1 <= N <= 10000")),
        }
    }

    /// The weight.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<u32> for Weight {
    type Error = AttrError;
    fn try_from(v: u32) -> Result<Self, AttrError> {
        Weight::new(v)
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.get()
    }
}

/// How a container's CPU entitlement is derived from its parent's.
///
/// Among siblings of one class, fixed shares are guaranteed minimums (their sum may not exceed
/// 1). Whatever the fixed siblings leave, including what idle fixed siblings leave, goes to the
/// weighted siblings in proportion to their weights; if no weighted sibling is runnable, it goes
/// to the fixed siblings in proportion to their fractions. The tree is work-conserving.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Share {
    /// A fixed fraction of the parent's entitlement.
    Fixed(Fraction),
    /// A weight among the weighted siblings.
    Weight(Weight),
}

impl Default for Share {
    fn default() -> Self {
        Share::Weight(Weight::DEFAULT)
    }
}

impl Share {
    /// Parses `fixed:0.3`, `30%` (a fixed share), `weight:200`, or a bare integer (a weight).
    pub fn parse(s: &str) -> Result<Self, AttrError> {
        let s = s.trim();
        let bad = || {
            AttrError::new(
                "share",
                s,
                "fixed:F with 0 < F <= 1, P% with 0 < P <= 100, or weight:N with 1 <= N <= 10000",
            )
        };
        if let Some(f) = s.strip_prefix("fixed:") {
            return parse_fraction(f)
                .ok_or_else(bad)
                .and_then(|f| Fraction::new(f).map_err(|_| bad()))
                .map(Share::Fixed);
        }
        if s.ends_with('%') {
            return parse_fraction(s)
                .ok_or_else(bad)
                .and_then(|f| Fraction::new(f).map_err(|_| bad()))
                .map(Share::Fixed);
        }
        let w = s.strip_prefix("weight:").unwrap_or(s);
        w.parse::<u32>()
            .map_err(|_| bad())
            .and_then(|w| Weight::new(w).map_err(|_| bad()))
            .map(Share::Weight)
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::Fixed(fr) => write!(f, "fixed:{}", fr.get()),
            Share::Weight(w) => write!(f, "weight:{}", w.get()),
        }
    }
}

/// Numeric priority, `0..=1000`, default 100.
///
/// Zero is the black hole of the paper: a container with priority 0 (or under an ancestor with
/// priority 0) is never scheduled. A non-zero priority scales the weight of a weighted container
/// (its effective weight is `weight * priority / 100`), so an application can push a
/// connection that has used a lot back behind its siblings without touching the weights its
/// configuration gave; it does not change a fixed share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "u16", into = "u16"))]
pub struct Priority(u16);

impl Priority {
    /// The largest priority.
    pub const MAX: u16 = 1000;
    /// The default priority.
    pub const DEFAULT: Priority = Priority(100);
    /// Never scheduled.
    pub const BLACK_HOLE: Priority = Priority(0);

    /// Checks `0..=1000`.
    pub fn new(p: u16) -> Result<Self, AttrError> {
        if p <= Self::MAX {
            Ok(Priority(p))
        } else {
            Err(AttrError::new(
                "priority",
                p,
                "0..=1000 (0 = never scheduled)",
            ))
        }
    }

    /// The priority.
    pub fn get(self) -> u16 {
        self.0
    }

    /// Whether this is the black hole, priority 0.
    pub fn is_black_hole(self) -> bool {
        self.0 == 0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::DEFAULT
    }
}

impl TryFrom<u16> for Priority {
    type Error = AttrError;
    fn try_from(v: u16) -> Result<Self, AttrError> {
        Priority::new(v)
    }
}

impl From<Priority> for u16 {
    fn from(p: Priority) -> u16 {
        p.0
    }
}

/// A hard cap on CPU: at most `fraction` of one CPU in every `period`, plus an optional `burst`
/// of unused budget carried over from idle periods.
///
/// The cap covers the container's whole subtree. Over any run of `k` consecutive periods the
/// subtree receives at most `k * fraction * period + burst` of CPU, and when a scheduler cannot
/// stop work in the middle (a poll that runs over), the excess is a debt paid from the next
/// periods.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CpuLimit {
    fraction: f64,
    #[cfg_attr(feature = "serde", serde(with = "duration_ns"))]
    period: Duration,
    #[cfg_attr(feature = "serde", serde(with = "duration_ns"))]
    burst: Duration,
}

impl CpuLimit {
    /// The default period, 100 ms (as cgroups' `cpu.max`).
    pub const DEFAULT_PERIOD: Duration = Duration::from_millis(100);
    /// The largest fraction: 1024 CPUs.
    pub const MAX_FRACTION: f64 = 1024.0;

    /// A cap of `fraction` of one CPU (`0 < fraction <= 1024`, above 1 for several CPUs) over
    /// the default period, without burst.
    pub fn new(fraction: f64) -> Result<Self, AttrError> {
        CpuLimit::with_period(fraction, Self::DEFAULT_PERIOD, Duration::ZERO)
    }

    /// A cap with an explicit period (1 ms to 10 s) and burst (0 to 10 s).
    pub fn with_period(
        fraction: f64,
        period: Duration,
        burst: Duration,
    ) -> Result<Self, AttrError> {
        if !(fraction > 0.0 && fraction <= Self::MAX_FRACTION) {
            return Err(AttrError::new(
                "cpu_limit",
                fraction,
                "0 < F <= 1024 (fraction of one CPU), P% or none",
            ));
        }
        if period < Duration::from_millis(1) || period > Duration::from_secs(10) {
            return Err(AttrError::new(
                "cpu_period",
                format!("{period:?}"),
                "1ms..=10s",
            ));
        }
        if burst > Duration::from_secs(10) {
            return Err(AttrError::new("cpu_burst", format!("{burst:?}"), "0..=10s"));
        }
        Ok(CpuLimit {
            fraction,
            period,
            burst,
        })
    }

    /// The fraction of one CPU.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// The accounting period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The burst allowance.
    pub fn burst(&self) -> Duration {
        self.burst
    }

    /// CPU nanoseconds allowed per period.
    pub fn budget_ns(&self) -> u64 {
        (self.period.as_nanos() as f64 * self.fraction).round() as u64
    }

    /// Whether `self` is at least as tight as `other` (smaller or equal fraction and burst).
    fn tighter_or_equal(&self, other: &CpuLimit) -> bool {
        self.fraction <= other.fraction && self.burst <= other.burst
    }
}

#[cfg(feature = "serde")]
mod duration_ns {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_nanos() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_nanos)
    }
}

/// Limits on resources other than CPU, each enforced by the layer that owns the resource (the
/// runtime for connections and egress, the allocator hooks for memory, the process backends for
/// processes). `None` is unlimited. A limit covers the container's whole subtree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Limits {
    /// Open connections.
    pub max_connections: Option<u64>,
    /// Bytes of memory charged.
    pub max_memory: Option<u64>,
    /// Egress bytes per second.
    pub egress_bytes_per_sec: Option<u64>,
    /// Live child processes.
    pub max_processes: Option<u64>,
}

/// Who enforces a container's attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Enforcement {
    /// The user-level scheduler only (the runtime's policy).
    #[default]
    User,
    /// Also the kernel: the container is mirrored as a cgroup, so threads bound to it and child
    /// processes spawned in it are charged and limited by the kernel.
    Kernel,
}

/// All attributes of a container.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Attributes {
    /// Strict priority among siblings.
    pub class: SchedClass,
    /// Fixed or weighted share of the parent's entitlement.
    pub share: Share,
    /// Numeric priority; 0 is never scheduled.
    pub priority: Priority,
    /// Hard CPU cap for the subtree.
    pub cpu_limit: Option<CpuLimit>,
    /// Limits on other resources.
    pub limits: Limits,
    /// Who enforces the attributes.
    pub enforcement: Enforcement,
}

/// The keys [`Attributes::set`] understands, with their syntax.
pub const ATTRIBUTE_KEYS: &[(&str, &str)] = &[
    ("class", "idle | normal | high | critical | 0..=3"),
    ("share", "fixed:F | P% | weight:N"),
    ("priority", "0..=1000 (0 = never scheduled)"),
    ("cpu_limit", "F (fraction of one CPU) | P% | none"),
    ("cpu_period", "duration, 1ms..=10s (e.g. 100ms)"),
    ("cpu_burst", "duration, 0..=10s"),
    ("max_connections", "integer | none"),
    ("max_memory", "bytes, e.g. 64MiB | none"),
    ("egress_bytes_per_sec", "bytes, e.g. 10MB | none"),
    ("max_processes", "integer | none"),
    ("enforcement", "user | kernel"),
];

impl Attributes {
    /// Sets one attribute from its `key=value` text form (see [`ATTRIBUTE_KEYS`]). On error
    /// nothing changes.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), AttrError> {
        let v = value.trim();
        match key.trim() {
            "class" => self.class = SchedClass::parse(v)?,
            "share" => self.share = Share::parse(v)?,
            "weight" => self.share = Share::parse(&format!("weight:{v}"))?,
            "fixed" => self.share = Share::parse(&format!("fixed:{v}"))?,
            "priority" => {
                self.priority = v
                    .parse::<u16>()
                    .map_err(|_| AttrError::new("priority", v, "0..=1000 (0 = never scheduled)"))
                    .and_then(Priority::new)?
            }
            "cpu_limit" => {
                self.cpu_limit = if is_none(v) {
                    None
                } else {
                    let f = parse_fraction(v).ok_or_else(|| {
                        AttrError::new(
                            "cpu_limit",
                            v,
                            "0 < F <= 1024 (fraction of one CPU), P% or none",
                        )
                    })?;
                    let (period, burst) = self
                        .cpu_limit
                        .map_or((CpuLimit::DEFAULT_PERIOD, Duration::ZERO), |c| {
                            (c.period, c.burst)
                        });
                    Some(CpuLimit::with_period(f, period, burst)?)
                }
            }
            "cpu_period" | "cpu_burst" => {
                let d = parse_duration(v).ok_or_else(|| {
                    AttrError::new(
                        if key.trim() == "cpu_period" {
                            "cpu_period"
                        } else {
                            "cpu_burst"
                        },
                        v,
                        "a duration such as 100ms, 1s or 500us",
                    )
                })?;
                let Some(cur) = self.cpu_limit else {
                    return Err(AttrError::new(
                        if key.trim() == "cpu_period" {
                            "cpu_period"
                        } else {
                            "cpu_burst"
                        },
                        v,
                        "only with a cpu_limit: set cpu_limit first",
                    ));
                };
                self.cpu_limit = Some(if key.trim() == "cpu_period" {
                    CpuLimit::with_period(cur.fraction, d, cur.burst)?
                } else {
                    CpuLimit::with_period(cur.fraction, cur.period, d)?
                });
            }
            "max_connections" => self.limits.max_connections = parse_count("max_connections", v)?,
            "max_processes" => self.limits.max_processes = parse_count("max_processes", v)?,
            "max_memory" => self.limits.max_memory = parse_bytes_opt("max_memory", v)?,
            "egress_bytes_per_sec" | "egress" => {
                self.limits.egress_bytes_per_sec = parse_bytes_opt("egress_bytes_per_sec", v)?
            }
            "enforcement" => {
                self.enforcement = match v.to_ascii_lowercase().as_str() {
                    "user" => Enforcement::User,
                    "kernel" => Enforcement::Kernel,
                    _ => return Err(AttrError::new("enforcement", v, "user or kernel")),
                }
            }
            _ => {
                return Err(AttrError::new(
                    "key",
                    key,
                    "class, share, weight, fixed, priority, cpu_limit, cpu_period, cpu_burst, max_connections, max_memory, egress_bytes_per_sec, max_processes, enforcement",
                ));
            }
        }
        Ok(())
    }

    /// Whether every attribute of `new` is at most as generous as in `self`: share, class,
    /// priority, CPU limit and other limits lowered or kept, enforcement kept. This is what a
    /// handle may do to its own container. On failure, returns the first field that rose.
    pub fn check_lowering(&self, new: &Attributes) -> Result<(), &'static str> {
        if new.class > self.class {
            return Err("class");
        }
        match (self.share, new.share) {
            (Share::Fixed(a), Share::Fixed(b)) if b.get() <= a.get() => {}
            (Share::Weight(a), Share::Weight(b)) if b <= a => {}
            _ => return Err("share"),
        }
        if new.priority > self.priority {
            return Err("priority");
        }
        match (self.cpu_limit, new.cpu_limit) {
            (_, None) if self.cpu_limit.is_some() => return Err("cpu_limit"),
            (Some(a), Some(b)) if !b.tighter_or_equal(&a) => return Err("cpu_limit"),
            _ => {}
        }
        fn lowered(old: Option<u64>, new: Option<u64>) -> bool {
            match (old, new) {
                (_, None) => old.is_none(),
                (None, Some(_)) => true,
                (Some(a), Some(b)) => b <= a,
            }
        }
        let (o, n) = (&self.limits, &new.limits);
        if !lowered(o.max_connections, n.max_connections) {
            return Err("max_connections");
        }
        if !lowered(o.max_memory, n.max_memory) {
            return Err("max_memory");
        }
        if !lowered(o.egress_bytes_per_sec, n.egress_bytes_per_sec) {
            return Err("egress_bytes_per_sec");
        }
        if !lowered(o.max_processes, n.max_processes) {
            return Err("max_processes");
        }
        if new.enforcement != self.enforcement {
            return Err("enforcement");
        }
        Ok(())
    }

    /// The `key=value` pairs that reproduce these attributes with [`Attributes::set`].
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        let mut out = vec![
            ("class", self.class.to_string()),
            ("share", self.share.to_string()),
            ("priority", self.priority.get().to_string()),
        ];
        match self.cpu_limit {
            None => out.push(("cpu_limit", "none".into())),
            Some(c) => {
                out.push(("cpu_limit", c.fraction.to_string()));
                out.push(("cpu_period", format!("{}us", c.period.as_micros())));
                out.push(("cpu_burst", format!("{}us", c.burst.as_micros())));
            }
        }
        out.push(("max_connections", opt(self.limits.max_connections)));
        out.push(("max_memory", opt(self.limits.max_memory)));
        out.push((
            "egress_bytes_per_sec",
            opt(self.limits.egress_bytes_per_sec),
        ));
        out.push(("max_processes", opt(self.limits.max_processes)));
        out.push((
            "enforcement",
            match self.enforcement {
                Enforcement::User => "user".into(),
                Enforcement::Kernel => "kernel".into(),
            },
        ));
        out
    }
}

fn is_none(v: &str) -> bool {
    v.eq_ignore_ascii_case("none")
        || v.eq_ignore_ascii_case("unlimited")
        || v.eq_ignore_ascii_case("max")
}

/// `0.3` or `30%`.
fn parse_fraction(v: &str) -> Option<f64> {
    let v = v.trim();
    let f = match v.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().ok()? / 100.0,
        None => v.parse::<f64>().ok()?,
    };
    f.is_finite().then_some(f)
}

fn parse_count(field: &'static str, v: &str) -> Result<Option<u64>, AttrError> {
    if is_none(v) {
        return Ok(None);
    }
    v.parse::<u64>()
        .map(Some)
        .map_err(|_| AttrError::new(field, v, "a non-negative integer or none"))
}

fn parse_bytes_opt(field: &'static str, v: &str) -> Result<Option<u64>, AttrError> {
    if is_none(v) {
        return Ok(None);
    }
    parse_bytes(v).map(Some).ok_or_else(|| {
        AttrError::new(
            field,
            v,
            "a byte count such as 65536, 64KiB, 10MB, 1GiB, or none",
        )
    })
}

/// Parses a byte count: an integer with an optional unit (`B`, `K`/`KB` = 1000, `KiB` = 1024,
/// up to `T`/`TiB`). Written here because the units are the only thing to parse and the error
/// must name the attribute.
pub fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    let bytes = num * mult;
    (bytes.is_finite() && bytes >= 0.0 && bytes <= u64::MAX as f64).then(|| bytes.round() as u64)
}

/// Parses a duration: an integer or decimal with a unit `ns`, `us`, `ms`, `s`, `m`.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let ns_per: f64 = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" | "" => 1e9,
        "m" | "min" => 60e9,
        _ => return None,
    };
    let ns = num * ns_per;
    (ns.is_finite() && ns >= 0.0 && ns < u64::MAX as f64)
        .then(|| Duration::from_nanos(ns.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_parse_and_range() {
        assert_eq!(SchedClass::parse("high").unwrap(), SchedClass::HIGH);
        assert_eq!(SchedClass::parse("0").unwrap(), SchedClass::IDLE);
        let e = SchedClass::parse("4").unwrap_err();
        assert_eq!(e.field(), "class");
        assert!(e.to_string().contains("0..=3"), "{e}");
    }

    #[test]
    fn share_parse() {
        assert_eq!(
            Share::parse("30%").unwrap(),
            Share::Fixed(Fraction::new(0.3).unwrap())
        );
        assert_eq!(
            Share::parse("fixed:0.5").unwrap(),
            Share::Fixed(Fraction::new(0.5).unwrap())
        );
        assert_eq!(
            Share::parse("weight:7").unwrap(),
            Share::Weight(Weight::new(7).unwrap())
        );
        assert_eq!(
            Share::parse("7").unwrap(),
            Share::Weight(Weight::new(7).unwrap())
        );
        for bad in [
            "fixed:0",
            "fixed:1.5",
            "0%",
            "weight:0",
            "weight:10001",
            "abc",
            "-3",
        ] {
            let e = Share::parse(bad).unwrap_err();
            assert_eq!(e.field(), "share", "{bad}");
            assert_eq!(e.value(), bad);
        }
    }

    #[test]
    fn set_refuses_without_change() {
        let mut a = Attributes::default();
        let before = a;
        for (k, v) in [
            ("class", "9"),
            ("share", "fixed:2"),
            ("priority", "1001"),
            ("cpu_limit", "0"),
            ("cpu_limit", "2000"),
            ("cpu_period", "100ms"),
            ("max_memory", "12 parsecs"),
            ("enforcement", "maybe"),
            ("colour", "blue"),
        ] {
            let e = a.set(k, v).unwrap_err();
            assert!(!e.allowed().is_empty());
            assert_eq!(a, before, "{k}={v} changed the attributes");
        }
    }

    #[test]
    fn set_all_keys_round_trip() {
        let mut a = Attributes::default();
        for (k, v) in [
            ("class", "critical"),
            ("share", "fixed:0.25"),
            ("priority", "0"),
            ("cpu_limit", "30%"),
            ("cpu_period", "50ms"),
            ("cpu_burst", "10ms"),
            ("max_connections", "100"),
            ("max_memory", "64MiB"),
            ("egress_bytes_per_sec", "10MB"),
            ("max_processes", "8"),
            ("enforcement", "kernel"),
        ] {
            a.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        assert_eq!(a.limits.max_memory, Some(64 << 20));
        assert_eq!(a.limits.egress_bytes_per_sec, Some(10_000_000));
        let c = a.cpu_limit.unwrap();
        assert_eq!(
            (c.fraction(), c.period(), c.burst()),
            (0.3, Duration::from_millis(50), Duration::from_millis(10))
        );
        assert_eq!(c.budget_ns(), 15_000_000);
        let mut b = Attributes::default();
        for (k, v) in a.to_pairs() {
            b.set(k, &v).unwrap();
        }
        assert_eq!(a, b);
    }

    #[test]
    fn lowering_rules() {
        let mut base = Attributes::default();
        base.set("cpu_limit", "0.5").unwrap();
        base.set("max_connections", "10").unwrap();
        let ok = |f: &dyn Fn(&mut Attributes)| {
            let mut n = base;
            f(&mut n);
            base.check_lowering(&n)
        };
        assert_eq!(ok(&|a| a.priority = Priority::new(1).unwrap()), Ok(()));
        assert_eq!(
            ok(&|a| a.share = Share::Weight(Weight::new(50).unwrap())),
            Ok(())
        );
        assert_eq!(ok(&|a| a.class = SchedClass::IDLE), Ok(()));
        assert_eq!(
            ok(&|a| a.cpu_limit = Some(CpuLimit::new(0.2).unwrap())),
            Ok(())
        );
        assert_eq!(ok(&|a| a.limits.max_connections = Some(3)), Ok(()));
        assert_eq!(ok(&|a| a.limits.max_memory = Some(1)), Ok(()));
        assert_eq!(
            ok(&|a| a.priority = Priority::new(101).unwrap()),
            Err("priority")
        );
        assert_eq!(
            ok(&|a| a.share = Share::Weight(Weight::new(101).unwrap())),
            Err("share")
        );
        assert_eq!(
            ok(&|a| a.share = Share::Fixed(Fraction::new(0.1).unwrap())),
            Err("share")
        );
        assert_eq!(ok(&|a| a.class = SchedClass::HIGH), Err("class"));
        assert_eq!(ok(&|a| a.cpu_limit = None), Err("cpu_limit"));
        assert_eq!(
            ok(&|a| a.cpu_limit = Some(CpuLimit::new(0.6).unwrap())),
            Err("cpu_limit")
        );
        assert_eq!(
            ok(&|a| a.limits.max_connections = None),
            Err("max_connections")
        );
        assert_eq!(
            ok(&|a| a.enforcement = Enforcement::Kernel),
            Err("enforcement")
        );
    }

    #[test]
    fn bytes_and_durations() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("1KiB"), Some(1024));
        assert_eq!(parse_bytes("1.5 MB"), Some(1_500_000));
        assert_eq!(parse_bytes("5 furlongs"), None);
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5us"), Some(Duration::from_nanos(1500)));
        assert_eq!(parse_duration("3 fortnights"), None);
    }
}
