//! Container ids: the namespace the paper exposes under `/proc`.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// The id of a container. Ids are allocated from one process-wide counter and are never reused
/// while the process lives, so an id seen in a log line or an API response names exactly one
/// container, even after it has been released.
///
/// ```
/// let registry = rescon::Registry::new();
/// let a = registry.root().create_child("a", Default::default()).unwrap();
/// let b = registry.root().create_child("b", Default::default()).unwrap();
/// assert_ne!(a.id(), b.id());
/// assert_eq!(a.id().to_string().parse::<rescon::ContainerId>().unwrap(), a.id());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct ContainerId(NonZeroU64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl ContainerId {
    /// Allocates a fresh id.
    pub(crate) fn next() -> Self {
        let raw = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // A u64 counter incremented once per container cannot wrap in the life of a process.
        ContainerId(NonZeroU64::new(raw).expect("container id counter wrapped"))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// Builds an id from a number, for parsing ids that came from outside (an API path, a
    /// command line). Returns `None` for zero, which is never an id.
    pub fn from_raw(raw: u64) -> Option<Self> {
        NonZeroU64::new(raw).map(ContainerId)
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for ContainerId {
    type Err = crate::AttrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim_start_matches('#')
            .parse::<u64>()
            .ok()
            .and_then(ContainerId::from_raw)
            .ok_or_else(|| crate::AttrError::new("id", s, "a positive integer"))
    }
}
