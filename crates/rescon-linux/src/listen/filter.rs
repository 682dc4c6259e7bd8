//! Filters: which client sources each member of a group receives, and how overlaps resolve.
//!
//! A member's [`Filter`] is a set of CIDR prefixes ([`Filter::Prefixes`]), or the complement of
//! one ([`Filter::Except`]; with no prefixes, every source: a *default* member). The filters
//! of a whole group are resolved into a [`Steering`], which decides the member of every source
//! address:
//!
//! 1. **Longest prefix wins.** Among the prefixes of all `Prefixes` filters that contain the
//!    source, the longest decides. A prefix may be listed by one member only (two members
//!    listing the same prefix is refused as a likely mistake).
//! 2. **Then the first complement.** A source that no listed prefix contains goes to the first
//!    member, in member order, whose `Except` filter does not exclude it. A complement never
//!    beats a listed prefix, however short the prefix (`0.0.0.0/0` included).
//! 3. **Every source has a member.** A set of filters that leaves some address of the group's
//!    family to no member is refused, naming an example address: the kernel would otherwise
//!    hash such connections over all members, black holes included.
//!
//! Address families are matched separately: IPv4 sources (also the IPv4 clients of a
//! dual-stack IPv6 group) only against IPv4 prefixes, IPv6 sources only against IPv6
//! prefixes. An IPv4-mapped prefix `::ffff:a.b.c.d/n` (`n >= 96`) is the IPv4 prefix
//! `a.b.c.d/(n-96)`.
//!
//! ```
//! use rescon_linux::listen::{Filter, Stack, Steering};
//! use std::net::IpAddr;
//!
//! let filters = vec![
//!     Filter::any(),                                    // 0: default member
//!     "10.0.0.0/8".parse::<Filter>().unwrap(),          // 1
//!     "10.1.0.0/16, 192.168.0.0/16".parse().unwrap(),   // 2
//!     "!10.0.0.0/8".parse().unwrap(),                   // 3: everything outside 10/8
//! ];
//! let steering = Steering::new(Stack::V4, filters).unwrap();
//! let who = |a: &str| steering.classify(a.parse::<IpAddr>().unwrap());
//! assert_eq!(who("10.1.2.3"), Some(2)); // /16 beats /8
//! assert_eq!(who("10.2.0.1"), Some(1));
//! assert_eq!(who("192.168.1.1"), Some(2));
//! assert_eq!(who("8.8.8.8"), Some(0)); // member 0 is the first complement that matches
//! ```

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Which sources one member receives. See the [module docs](self) for how the filters of a
/// group resolve overlaps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    /// Sources inside any of these prefixes. With none, the member receives nothing.
    Prefixes(BTreeSet<IpNet>),
    /// Every source outside these prefixes. With none, every source: a default member.
    Except(BTreeSet<IpNet>),
}

impl Default for Filter {
    /// Receives nothing.
    fn default() -> Self {
        Filter::Prefixes(BTreeSet::new())
    }
}

impl Filter {
    /// Every source no other member's prefix claims: a default member.
    pub fn any() -> Filter {
        Filter::Except(BTreeSet::new())
    }

    /// Nothing: a member that is kept but receives no new connection.
    pub fn nothing() -> Filter {
        Filter::Prefixes(BTreeSet::new())
    }

    /// Sources inside any of `prefixes`. Checks each prefix ([`check_prefix`]).
    ///
    /// ```
    /// use rescon_linux::listen::Filter;
    /// let f = Filter::prefixes(["127.0.0.2/32".parse().unwrap()]).unwrap();
    /// assert!(f.matches("127.0.0.2".parse().unwrap()));
    /// assert!(Filter::prefixes(["10.1.0.0/8".parse().unwrap()]).is_err());
    /// ```
    pub fn prefixes(prefixes: impl IntoIterator<Item = IpNet>) -> Result<Filter, FilterError> {
        Ok(Filter::Prefixes(checked_set(prefixes)?))
    }

    /// Every source outside `prefixes`. Checks each prefix ([`check_prefix`]).
    pub fn except(prefixes: impl IntoIterator<Item = IpNet>) -> Result<Filter, FilterError> {
        Ok(Filter::Except(checked_set(prefixes)?))
    }

    /// The prefixes listed (or excluded, for a complement).
    pub fn prefix_set(&self) -> &BTreeSet<IpNet> {
        match self {
            Filter::Prefixes(s) | Filter::Except(s) => s,
        }
    }

    /// Whether this is a complement filter.
    pub fn is_complement(&self) -> bool {
        matches!(self, Filter::Except(_))
    }

    /// Whether this filter alone accepts `addr` (other members' filters may take it first).
    /// An IPv4-mapped IPv6 address is taken as its IPv4 address.
    pub fn matches(&self, addr: IpAddr) -> bool {
        let addr = unmap(addr);
        let inside = self.prefix_set().iter().any(|p| contains(p, addr));
        match self {
            Filter::Prefixes(_) => inside,
            Filter::Except(_) => !inside,
        }
    }

    /// Checks that every prefix of a filter built by hand is normalized: no host bits set and
    /// IPv4-mapped prefixes written as IPv4.
    pub fn check(&self) -> Result<(), FilterError> {
        for p in self.prefix_set() {
            if check_prefix(*p)? != *p {
                return Err(FilterError::Mapped { prefix: *p });
            }
        }
        Ok(())
    }
}

fn checked_set(prefixes: impl IntoIterator<Item = IpNet>) -> Result<BTreeSet<IpNet>, FilterError> {
    prefixes.into_iter().map(check_prefix).collect()
}

/// Checks one prefix and normalizes it: refuses a prefix with bits set past its length
/// (`10.1.0.0/8`), and turns an IPv4-mapped IPv6 prefix (`::ffff:10.0.0.0/104`) into its
/// IPv4 prefix (`10.0.0.0/8`).
///
/// ```
/// use rescon_linux::listen::check_prefix;
/// let p = check_prefix("::ffff:10.0.0.0/104".parse().unwrap()).unwrap();
/// assert_eq!(p.to_string(), "10.0.0.0/8");
/// let err = check_prefix("10.1.0.0/8".parse().unwrap()).unwrap_err();
/// assert!(err.to_string().contains("10.0.0.0/8"));
/// ```
pub fn check_prefix(p: IpNet) -> Result<IpNet, FilterError> {
    if p.trunc() != p {
        return Err(FilterError::HostBits { prefix: p });
    }
    if let IpNet::V6(v6) = p {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.network().to_ipv4_mapped() {
                let net = Ipv4Net::new(v4, v6.prefix_len() - 96).expect("length checked");
                return Ok(IpNet::V4(net));
            }
        }
    }
    Ok(p)
}

/// The IPv4 address of an IPv4-mapped IPv6 address; any other address as it is.
pub(crate) fn unmap(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 => v4,
    }
}

/// Whether `p` contains `addr`, families matched strictly.
fn contains(p: &IpNet, addr: IpAddr) -> bool {
    match (p, addr) {
        (IpNet::V4(p), IpAddr::V4(a)) => p.contains(&a),
        (IpNet::V6(p), IpAddr::V6(a)) => p.contains(&a),
        _ => false,
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    /// Parses `10.0.0.0/8, 192.168.0.0/16` (these prefixes), `!10.0.0.0/8` or
    /// `not 10.0.0.0/8, ...` (their complement), `*` or `any` (every source), and `none` or
    /// an empty string (nothing). A bare address is a host prefix (`/32` or `/128`).
    fn from_str(s: &str) -> Result<Filter, FilterError> {
        let t = s.trim();
        let (complement, list) = if let Some(rest) = t.strip_prefix('!') {
            (true, rest)
        } else if let Some(rest) = t.strip_prefix("not ") {
            (true, rest)
        } else {
            (false, t)
        };
        let list = list.trim();
        if !complement && (list == "*" || list.eq_ignore_ascii_case("any")) {
            return Ok(Filter::any());
        }
        if !complement && list.eq_ignore_ascii_case("none") {
            return Ok(Filter::nothing());
        }
        let mut set = BTreeSet::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            set.insert(check_prefix(parse_prefix(item)?)?);
        }
        Ok(if complement {
            Filter::Except(set)
        } else {
            Filter::Prefixes(set)
        })
    }
}

/// Parses `a.b.c.d/n`, `x::y/n`, or a bare address as a host prefix.
pub fn parse_prefix(item: &str) -> Result<IpNet, FilterError> {
    let item = item.trim();
    if let Ok(p) = item.parse::<IpNet>() {
        return Ok(p);
    }
    if let Ok(a) = item.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err(FilterError::Parse {
        input: item.to_string(),
    })
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, s: &BTreeSet<IpNet>| {
            for (i, p) in s.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{p}")?;
            }
            Ok(())
        };
        match self {
            Filter::Except(s) if s.is_empty() => f.write_str("any"),
            Filter::Prefixes(s) if s.is_empty() => f.write_str("none"),
            Filter::Except(s) => {
                f.write_str("!")?;
                list(f, s)
            }
            Filter::Prefixes(s) => list(f, s),
        }
    }
}

/// The address families a group receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stack {
    /// IPv4 sockets: IPv4 sources only.
    V4,
    /// IPv6 sockets with `IPV6_V6ONLY`: IPv6 sources only.
    V6Only,
    /// IPv6 sockets that also receive IPv4 clients (as IPv4-mapped addresses).
    Dual,
}

impl Stack {
    fn has_v4(self) -> bool {
        matches!(self, Stack::V4 | Stack::Dual)
    }

    fn has_v6(self) -> bool {
        matches!(self, Stack::V6Only | Stack::Dual)
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stack::V4 => "IPv4",
            Stack::V6Only => "IPv6-only",
            Stack::Dual => "dual-stack IPv6",
        })
    }
}

/// Why a filter or a set of filters was refused. Nothing changes when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// Not a prefix or an address.
    #[error("cannot parse `{input}` as a prefix: write a.b.c.d/n, x:y::z/n, or a bare address")]
    Parse {
        /// The text refused.
        input: String,
    },
    /// Bits set past the prefix length.
    #[error("prefix {prefix} has bits set past its length: write {}", prefix.trunc())]
    HostBits {
        /// The prefix refused.
        prefix: IpNet,
    },
    /// An IPv4-mapped IPv6 prefix in a filter built by hand.
    #[error(
        "prefix {prefix} is IPv4-mapped: build the filter with Filter::prefixes or write the IPv4 prefix"
    )]
    Mapped {
        /// The prefix refused.
        prefix: IpNet,
    },
    /// A prefix of a family the group never receives.
    #[error(
        "member {member}: prefix {prefix} can never match on a {stack} group: remove it or use a group of that family"
    )]
    WrongFamily {
        /// The member whose filter lists it.
        member: usize,
        /// The prefix.
        prefix: IpNet,
        /// The group's families.
        stack: Stack,
    },
    /// The same prefix listed by two members.
    #[error(
        "prefix {prefix} is listed by members {first} and {second}: a prefix belongs to one member (use move_prefixes to move it)"
    )]
    Duplicate {
        /// The prefix.
        prefix: IpNet,
        /// The first member listing it.
        first: usize,
        /// The second member listing it.
        second: usize,
    },
    /// Some source would have no member.
    #[error(
        "no member receives {example} (and maybe other addresses): give one member a complement filter (Filter::any() for a default member) or cover the whole address space"
    )]
    Uncovered {
        /// One address no member receives.
        example: IpAddr,
    },
    /// A group needs at least one member.
    #[error("a listener group needs at least one member")]
    NoMembers,
}

/// The filters of a group's members (by member index), checked and resolved: decides the
/// member of every source address. See the [module docs](self) for the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    stack: Stack,
    filters: Vec<Filter>,
}

impl Steering {
    /// Checks the filters of a group (index `i` is member `i`): prefixes normalized and of
    /// the group's families, no prefix listed twice, every source covered.
    pub fn new(stack: Stack, filters: Vec<Filter>) -> Result<Steering, FilterError> {
        if filters.is_empty() {
            return Err(FilterError::NoMembers);
        }
        let mut owner: BTreeMap<IpNet, usize> = BTreeMap::new();
        for (i, f) in filters.iter().enumerate() {
            f.check()?;
            for p in f.prefix_set() {
                let ok = match p {
                    IpNet::V4(_) => stack.has_v4(),
                    IpNet::V6(_) => stack.has_v6(),
                };
                if !ok {
                    return Err(FilterError::WrongFamily {
                        member: i,
                        prefix: *p,
                        stack,
                    });
                }
                if !f.is_complement() {
                    if let Some(first) = owner.insert(*p, i) {
                        return Err(FilterError::Duplicate {
                            prefix: *p,
                            first,
                            second: i,
                        });
                    }
                }
            }
        }
        let s = Steering { stack, filters };
        if stack.has_v4() {
            s.check_cover(Fam::V4)?;
        }
        if stack.has_v6() {
            s.check_cover(Fam::V6)?;
        }
        Ok(s)
    }

    /// The group's families.
    pub fn stack(&self) -> Stack {
        self.stack
    }

    /// The members' filters, by member index.
    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    /// The member that receives connections from `addr`, as the kernel program will decide.
    /// IPv4-mapped addresses are taken as IPv4 (that is how a dual-stack socket reports IPv4
    /// clients). `None` for an address of a family the group does not receive.
    pub fn classify(&self, addr: IpAddr) -> Option<usize> {
        self.classify_packet(unmap(addr))
    }

    /// The member for a packet whose network header carries source `src`: an IPv4 packet for
    /// `IpAddr::V4`, an IPv6 packet for `IpAddr::V6` (an IPv4-mapped source in an IPv6
    /// packet is matched as IPv6). This is the reference the compiled program is tested
    /// against.
    pub fn classify_packet(&self, src: IpAddr) -> Option<usize> {
        let fam_ok = match src {
            IpAddr::V4(_) => self.stack.has_v4(),
            IpAddr::V6(_) => self.stack.has_v6(),
        };
        if !fam_ok {
            return None;
        }
        let mut best: Option<(u8, usize)> = None;
        for (i, f) in self.filters.iter().enumerate() {
            if let Filter::Prefixes(set) = f {
                for p in set.iter().filter(|p| contains(p, src)) {
                    if best.is_none_or(|(len, _)| p.prefix_len() > len) {
                        best = Some((p.prefix_len(), i));
                    }
                }
            }
        }
        if let Some((_, i)) = best {
            return Some(i);
        }
        self.filters.iter().position(|f| match f {
            Filter::Except(set) => !set.iter().any(|p| contains(p, src)),
            Filter::Prefixes(_) => false,
        })
    }

    /// The positive rules of one family, longest first, as (prefix, member).
    pub(crate) fn positive(&self, v4: bool) -> Vec<(IpNet, usize)> {
        let mut rules: Vec<(IpNet, usize)> = self
            .filters
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.is_complement())
            .flat_map(|(i, f)| f.prefix_set().iter().map(move |p| (*p, i)))
            .filter(|(p, _)| matches!(p, IpNet::V4(_)) == v4)
            .collect();
        rules.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.0.cmp(&b.0)));
        rules
    }

    /// The complement members in member order, each with its exceptions of one family.
    pub(crate) fn complements(&self, v4: bool) -> Vec<(usize, Vec<IpNet>)> {
        self.filters
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_complement())
            .map(|(i, f)| {
                let ex = f
                    .prefix_set()
                    .iter()
                    .filter(|p| matches!(p, IpNet::V4(_)) == v4)
                    .copied()
                    .collect();
                (i, ex)
            })
            .collect()
    }

    /// Refuses filters that leave some address of a family to no member: the uncovered set
    /// is the intersection of the complements' exceptions, less every listed prefix.
    fn check_cover(&self, fam: Fam) -> Result<(), FilterError> {
        let v4 = fam == Fam::V4;
        let mut uncovered = Ranges::full(fam);
        for (_, ex) in self.complements(v4) {
            uncovered = uncovered.intersect(&Ranges::of(fam, &ex));
        }
        let listed: Vec<IpNet> = self.positive(v4).into_iter().map(|(p, _)| p).collect();
        uncovered = uncovered.subtract(&Ranges::of(fam, &listed));
        match uncovered.first() {
            None => Ok(()),
            Some(x) => Err(FilterError::Uncovered {
                example: fam.addr(x),
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn max(self) -> u128 {
        match self {
            Fam::V4 => u32::MAX as u128,
            Fam::V6 => u128::MAX,
        }
    }

    fn addr(self, x: u128) -> IpAddr {
        match self {
            Fam::V4 => IpAddr::V4(Ipv4Addr::from(x as u32)),
            Fam::V6 => IpAddr::V6(Ipv6Addr::from(x)),
        }
    }
}

/// A set of addresses as sorted, disjoint, non-adjacent inclusive ranges: enough set algebra
/// to decide coverage exactly (a trie would do too; ranges need no allocation per bit).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ranges(Vec<(u128, u128)>);

impl Ranges {
    fn full(fam: Fam) -> Ranges {
        Ranges(vec![(0, fam.max())])
    }

    fn of(fam: Fam, prefixes: &[IpNet]) -> Ranges {
        let mut r: Vec<(u128, u128)> = prefixes
            .iter()
            .filter_map(|p| match (p, fam) {
                (IpNet::V4(p), Fam::V4) => Some((
                    u32::from(p.network()) as u128,
                    u32::from(p.broadcast()) as u128,
                )),
                (IpNet::V6(p), Fam::V6) => {
                    Some((u128::from(p.network()), u128::from(Ipv6Net::broadcast(p))))
                }
                _ => None,
            })
            .collect();
        r.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(r.len());
        for (s, e) in r {
            match out.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        Ranges(out)
    }

    fn intersect(&self, o: &Ranges) -> Ranges {
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        while i < self.0.len() && j < o.0.len() {
            let (a, b) = (self.0[i], o.0[j]);
            let (s, e) = (a.0.max(b.0), a.1.min(b.1));
            if s <= e {
                out.push((s, e));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Ranges(out)
    }

    fn subtract(&self, o: &Ranges) -> Ranges {
        let mut out = Vec::new();
        let mut j = 0;
        for &(mut s, e) in &self.0 {
            let mut alive = true;
            while j < o.0.len() && o.0[j].1 < s {
                j += 1;
            }
            let mut k = j;
            while alive && k < o.0.len() && o.0[k].0 <= e {
                let (bs, be) = o.0[k];
                if bs > s {
                    out.push((s, bs - 1));
                }
                if be >= e {
                    alive = false;
                } else {
                    s = be + 1;
                }
                k += 1;
            }
            if alive {
                out.push((s, e));
            }
        }
        Ranges(out)
    }

    fn first(&self) -> Option<u128> {
        self.0.first().map(|r| r.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "any",
            "none",
            "10.0.0.0/8, 192.168.0.0/16",
            "!10.0.0.0/8",
            "2001:db8::/32",
        ] {
            assert_eq!(f(s).to_string(), s);
        }
        assert_eq!(f("*"), Filter::any());
        assert_eq!(f(""), Filter::nothing());
        assert_eq!(f("not 10.0.0.0/8"), f("!10.0.0.0/8"));
        assert_eq!(f("127.0.0.2").to_string(), "127.0.0.2/32");
        assert_eq!(f("::ffff:127.0.0.0/120").to_string(), "127.0.0.0/24");
        assert_eq!(
            f("!"),
            Filter::any(),
            "the complement of nothing is everything"
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Filter>(),
            Err(FilterError::Parse { .. })
        ));
        assert!(matches!(
            "10.0.0.1/8".parse::<Filter>(),
            Err(FilterError::HostBits { .. })
        ));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_member_order() {
        let s = Steering::new(
            Stack::V4,
            vec![
                f("10.1.0.0/16"),
                f("10.0.0.0/8"),
                f("10.1.2.0/24"),
                f("any"),
            ],
        )
        .unwrap();
        assert_eq!(s.classify(ip("10.1.2.3")), Some(2));
        assert_eq!(s.classify(ip("10.1.3.3")), Some(0));
        assert_eq!(s.classify(ip("10.9.0.1")), Some(1));
        assert_eq!(s.classify(ip("11.0.0.1")), Some(3));
    }

    #[test]
    fn listed_prefixes_beat_complements_and_the_first_complement_wins() {
        let s = Steering::new(
            Stack::V4,
            vec![f("!10.0.0.0/8"), f("0.0.0.0/0"), f("any"), f("10.0.0.0/9")],
        )
        .unwrap();
        // 0.0.0.0/0 is a listed prefix: it beats the complement of member 0 everywhere.
        assert_eq!(s.classify(ip("1.2.3.4")), Some(1));
        assert_eq!(s.classify(ip("10.0.0.1")), Some(3));
        assert_eq!(s.classify(ip("10.200.0.1")), Some(1));

        let s = Steering::new(
            Stack::V4,
            vec![f("!10.0.0.0/8"), f("any"), f("10.1.0.0/16")],
        )
        .unwrap();
        assert_eq!(s.classify(ip("1.2.3.4")), Some(0), "first complement");
        assert_eq!(s.classify(ip("10.2.0.1")), Some(1), "member 0 excludes it");
        assert_eq!(
            s.classify(ip("10.1.0.1")),
            Some(2),
            "listed beats complements"
        );
    }

    #[test]
    fn uncovered_addresses_are_refused_with_an_example() {
        let err = Steering::new(Stack::V4, vec![f("10.0.0.0/8")]).unwrap_err();
        assert_eq!(
            err,
            FilterError::Uncovered {
                example: ip("0.0.0.0")
            }
        );
        let err = Steering::new(Stack::V4, vec![f("0.0.0.0/1"), f("128.0.0.0/2")]).unwrap_err();
        assert_eq!(
            err,
            FilterError::Uncovered {
                example: ip("192.0.0.0")
            }
        );
        // Two halves cover everything.
        Steering::new(Stack::V4, vec![f("0.0.0.0/1"), f("128.0.0.0/1")]).unwrap();
        // Complements cover what they do not exclude; a hole common to all is refused.
        let err = Steering::new(Stack::V4, vec![f("!10.0.0.0/8"), f("!10.1.0.0/16")]).unwrap_err();
        assert_eq!(
            err,
            FilterError::Uncovered {
                example: ip("10.1.0.0")
            }
        );
        Steering::new(
            Stack::V4,
            vec![
                f("!10.0.0.0/8"),
                f("!10.1.0.0/16"),
                f("10.1.0.0/17"),
                f("10.1.128.0/17"),
            ],
        )
        .unwrap();
        // A dual-stack group must cover both families.
        let err = Steering::new(Stack::Dual, vec![f("0.0.0.0/0")]).unwrap_err();
        assert_eq!(err, FilterError::Uncovered { example: ip("::") });
        Steering::new(Stack::Dual, vec![f("0.0.0.0/0"), f("::/0")]).unwrap();
    }

    #[test]
    fn duplicates_and_wrong_families_are_refused() {
        assert!(matches!(
            Steering::new(Stack::V4, vec![f("10.0.0.0/8"), f("10.0.0.0/8"), f("any")]),
            Err(FilterError::Duplicate {
                first: 0,
                second: 1,
                ..
            })
        ));
        // Excluding and listing the same prefix is fine.
        Steering::new(Stack::V4, vec![f("!10.0.0.0/8"), f("10.0.0.0/8")]).unwrap();
        assert!(matches!(
            Steering::new(Stack::V4, vec![f("any"), f("::1/128")]),
            Err(FilterError::WrongFamily { member: 1, .. })
        ));
        assert!(matches!(
            Steering::new(Stack::V6Only, vec![f("any"), f("127.0.0.1/32")]),
            Err(FilterError::WrongFamily { member: 1, .. })
        ));
        assert_eq!(
            Steering::new(Stack::V4, vec![]),
            Err(FilterError::NoMembers)
        );
    }

    #[test]
    fn dual_stack_matches_families_separately() {
        let s = Steering::new(
            Stack::Dual,
            vec![f("any"), f("::ffff:127.0.0.2/128"), f("::1/128"), f("::/0")],
        )
        .unwrap();
        assert_eq!(s.filters()[1], f("127.0.0.2/32"));
        assert_eq!(s.classify(ip("127.0.0.2")), Some(1));
        assert_eq!(s.classify(ip("::ffff:127.0.0.2")), Some(1));
        assert_eq!(s.classify(ip("127.0.0.3")), Some(0));
        assert_eq!(s.classify(ip("::1")), Some(2));
        // ::/0 is an IPv6 prefix: it does not take IPv4 clients from the default member.
        assert_eq!(s.classify(ip("2001:db8::1")), Some(3));
        assert_eq!(s.classify_packet(ip("::ffff:127.0.0.2")), Some(3));
    }

    #[test]
    fn ranges_algebra() {
        let r = |v: &[(u128, u128)]| Ranges(v.to_vec());
        let a = r(&[(0, 10), (20, 30)]);
        assert_eq!(a.subtract(&r(&[(5, 25)])), r(&[(0, 4), (26, 30)]));
        assert_eq!(a.subtract(&r(&[(0, 30)])), r(&[]));
        assert_eq!(a.subtract(&r(&[(11, 19)])), a);
        assert_eq!(a.intersect(&r(&[(5, 25)])), r(&[(5, 10), (20, 25)]));
        let full = Ranges::full(Fam::V6);
        assert_eq!(full.subtract(&r(&[(0, u128::MAX)])), r(&[]));
        assert_eq!(
            Ranges::of(
                Fam::V4,
                &["0.0.0.0/1".parse().unwrap(), "128.0.0.0/1".parse().unwrap()]
            ),
            Ranges::full(Fam::V4)
        );
    }
}
