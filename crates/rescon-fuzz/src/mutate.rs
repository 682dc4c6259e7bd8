//! The mutational engine: proptest draws a corpus entry and a list of mutations from a seeded
//! generator, applies them, and runs the target; a failure is shrunk to the fewest and
//! smallest mutations. No coverage feedback (that is what the AFL++ driver adds); what makes
//! it find things is the corpus, the dictionaries, and the properties each target checks.

use crate::{Target, escape};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use std::cell::Cell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

/// A position as a fraction of a length (`n / 2^32`): a mutation means something on an input
/// of any length, and shrinks towards the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos(pub u32);

impl Pos {
    /// The position in `0..size` (`size` > 0).
    fn index(self, size: usize) -> usize {
        ((size as u64 * u64::from(self.0)) >> 32) as usize
    }
}

/// One edit of an input.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flips bit `b % 8` of a byte.
    FlipBit(Pos, u8),
    /// Sets a byte.
    SetByte(Pos, u8),
    /// Inserts bytes.
    Insert(Pos, Vec<u8>),
    /// Deletes up to `n` bytes.
    Delete(Pos, usize),
    /// Repeats the `n` bytes at a position right after them.
    Duplicate(Pos, usize),
    /// Inserts a token of the target's dictionary.
    Token(Pos, Pos),
    /// Overwrites bytes with a token of the target's dictionary.
    OverwriteToken(Pos, Pos),
    /// Inserts `n` bytes of another corpus entry (entry, where in it, where here).
    Splice(Pos, Pos, Pos, usize),
    /// Inserts a number at the edge of some integer type, in decimal.
    Number(Pos, Pos),
}

/// Numbers at the edges of integer types, and spellings parsers disagree on.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "+1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "00000000000000000000000001",
    "1e3",
    "0x10",
    " 1",
];

fn pos() -> impl Strategy<Value = Pos> {
    any::<u32>().prop_map(Pos)
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (pos(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (pos(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (pos(), vec(any::<u8>(), 1..8)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (pos(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (pos(), 1usize..48).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (pos(), pos()).prop_map(|(i, t)| Mutation::Token(i, t)),
        (pos(), pos()).prop_map(|(i, t)| Mutation::OverwriteToken(i, t)),
        (pos(), pos(), pos(), 1usize..64).prop_map(|(e, f, at, n)| Mutation::Splice(e, f, at, n)),
        (pos(), pos()).prop_map(|(i, n)| Mutation::Number(i, n)),
    ]
}

/// `seed` with `mutations` applied in order; `corpus` is what splices take from, `dictionary`
/// what tokens are.
pub fn mutated(
    seed: &[u8],
    mutations: &[Mutation],
    corpus: &[Vec<u8>],
    dictionary: &[&[u8]],
) -> Vec<u8> {
    let mut d = seed.to_vec();
    // A position to insert at (0..=len) and one to change (0..len, none when empty).
    let at = |d: &Vec<u8>, i: &Pos| i.index(d.len() + 1);
    let byte = |d: &Vec<u8>, i: &Pos| (!d.is_empty()).then(|| i.index(d.len()));
    for m in mutations {
        match m {
            Mutation::FlipBit(i, b) => {
                if let Some(p) = byte(&d, i) {
                    d[p] ^= 1 << (b % 8);
                }
            }
            Mutation::SetByte(i, b) => {
                if let Some(p) = byte(&d, i) {
                    d[p] = *b;
                }
            }
            Mutation::Insert(i, v) => {
                let p = at(&d, i);
                d.splice(p..p, v.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if let Some(p) = byte(&d, i) {
                    let end = (p + n).min(d.len());
                    d.drain(p..end);
                }
            }
            Mutation::Duplicate(i, n) => {
                if let Some(p) = byte(&d, i) {
                    let end = (p + n).min(d.len());
                    let piece = d[p..end].to_vec();
                    d.splice(end..end, piece);
                }
            }
            Mutation::Token(i, t) => {
                if !dictionary.is_empty() {
                    let p = at(&d, i);
                    d.splice(p..p, dictionary[t.index(dictionary.len())].iter().copied());
                }
            }
            Mutation::OverwriteToken(i, t) => {
                if !dictionary.is_empty() {
                    let tok = dictionary[t.index(dictionary.len())];
                    let p = at(&d, i);
                    let end = (p + tok.len()).min(d.len());
                    d.splice(p..end, tok.iter().copied());
                }
            }
            Mutation::Splice(e, f, i, n) => {
                if !corpus.is_empty() {
                    let other = &corpus[e.index(corpus.len())];
                    if !other.is_empty() {
                        let from = f.index(other.len());
                        let end = (from + n).min(other.len());
                        let p = at(&d, i);
                        d.splice(p..p, other[from..end].iter().copied());
                    }
                }
            }
            Mutation::Number(i, n) => {
                let p = at(&d, i);
                d.splice(p..p, NUMBERS[n.index(NUMBERS.len())].bytes());
            }
        }
    }
    d
}

/// An input that broke a target.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The target.
    pub target: &'static str,
    /// The input (shrunk, for a fuzzing failure).
    pub input: Vec<u8>,
    /// The corpus file, for a replay failure.
    pub entry: Option<String>,
    /// What broke (the panic message).
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(e) => write!(
                f,
                "{}: corpus file {e} fails: {}",
                self.target, self.message
            )?,
            None => write!(
                f,
                "{}: a mutated input fails: {}",
                self.target, self.message
            )?,
        }
        write!(
            f,
            "\ninput ({} bytes): {}\nTo keep it as a regression input, save it under crates/rescon-fuzz/corpus/{}/ \
             (and add a unit test beside the parser); reproduce with \
             `cargo run -p rescon-fuzz --release -- run {} FILE`.",
            self.input.len(),
            escape(&self.input),
            self.target,
            self.target
        )
    }
}

impl std::error::Error for Failure {}

thread_local! {
    /// Set while a target runs under the engine: its panics are failures to report once, not
    /// messages to print at every shrinking step.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn quietly<R>(f: impl FnOnce() -> R) -> R {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = f();
    QUIET.with(|q| q.set(false));
    r
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs every corpus entry once.
pub fn replay(target: &Target, corpus: &[(String, Vec<u8>)]) -> Result<(), Failure> {
    for (name, data) in corpus {
        let r = quietly(|| catch_unwind(AssertUnwindSafe(|| (target.run)(data))));
        if let Err(e) = r {
            return Err(Failure {
                target: target.name,
                input: data.clone(),
                entry: Some(name.clone()),
                message: panic_message(&*e),
            });
        }
    }
    Ok(())
}

/// Runs `cases` mutated inputs of `corpus` through `target`, drawn from `seed`. On a failure,
/// returns the input shrunk to the fewest mutations that still fail.
pub fn fuzz(target: &Target, corpus: &[Vec<u8>], cases: u32, seed: u64) -> Result<(), Failure> {
    let corpus: Vec<Vec<u8>> = if corpus.is_empty() {
        vec![Vec::new()]
    } else {
        corpus.to_vec()
    };
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(target.name.len() as u64).to_le_bytes());
    for (k, b) in key[16..].iter_mut().zip(target.name.bytes()) {
        *k = b;
    }
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let strategy = (pos(), vec(mutation(), 1..6));
    let input_of = |(pick, ms): &(Pos, Vec<Mutation>)| {
        mutated(
            &corpus[pick.index(corpus.len())],
            ms,
            &corpus,
            target.dictionary,
        )
    };
    let r = quietly(|| {
        runner.run(&strategy, |case| {
            (target.run)(&input_of(&case));
            Ok(())
        })
    });
    match r {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, case)) => Err(Failure {
            target: target.name,
            input: input_of(&case),
            entry: None,
            message: reason.message().to_string(),
        }),
        Err(TestError::Abort(reason)) => Err(Failure {
            target: target.name,
            input: Vec::new(),
            entry: None,
            message: format!("the run was aborted: {}", reason.message()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(n: u32) -> Pos {
        // n tenths of the way in.
        Pos(n * (u32::MAX / 10))
    }

    #[test]
    fn mutations_apply_to_empty_and_short_inputs() {
        let all = [
            Mutation::FlipBit(idx(3), 9),
            Mutation::SetByte(idx(9), b'x'),
            Mutation::Insert(idx(0), vec![1, 2]),
            Mutation::Delete(idx(5), 100),
            Mutation::Duplicate(idx(2), 100),
            Mutation::Token(idx(1), idx(1)),
            Mutation::OverwriteToken(idx(9), idx(0)),
            Mutation::Splice(idx(0), idx(0), idx(0), 3),
            Mutation::Number(idx(9), idx(0)),
        ];
        for m in &all {
            for seed in [&b""[..], b"a", b"abcdef"] {
                let out = mutated(seed, std::slice::from_ref(m), &[b"XYZ".to_vec()], &[b"tok"]);
                assert!(out.len() < seed.len() + 200, "{m:?} on {seed:?}: {out:?}");
            }
        }
        assert_eq!(
            mutated(b"ab", &[Mutation::Insert(idx(0), b"<>".to_vec())], &[], &[]),
            b"<>ab"
        );
        assert_eq!(
            mutated(b"abcd", &[Mutation::Duplicate(idx(0), 2)], &[], &[]),
            b"ababcd"
        );
        assert_eq!(
            mutated(
                b"abcd",
                &[Mutation::OverwriteToken(idx(0), idx(0))],
                &[],
                &[b"XY"]
            ),
            b"XYcd"
        );
    }

    fn boom(data: &[u8]) {
        assert!(!data.windows(3).any(|w| w == b"BAD"), "found BAD");
    }

    #[test]
    fn a_failure_is_found_shrunk_and_reported() {
        let t = Target {
            name: "boom",
            about: "panics on BAD",
            run: boom,
            dictionary: &[b"BAD"],
        };
        let f = fuzz(&t, &[b"fine input".to_vec()], 2000, 1).unwrap_err();
        assert!(f.message.contains("found BAD"), "{f}");
        assert!(f.input.windows(3).any(|w| w == b"BAD"));
        assert!(f.input.len() <= b"fine input".len() + 3, "shrunk: {f}");
        assert!(f.to_string().contains("corpus/boom/"), "{f}");
        let r = replay(&t, &[("bad".into(), b"xBADx".to_vec())]).unwrap_err();
        assert_eq!(r.entry.as_deref(), Some("bad"));
        assert!(replay(&t, &[("ok".into(), b"fine".to_vec())]).is_ok());
    }

    #[test]
    fn the_same_seed_draws_the_same_inputs() {
        fn record(data: &[u8]) {
            SEEN.with(|s| s.borrow_mut().push(data.to_vec()));
        }
        thread_local! {
            static SEEN: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let t = Target {
            name: "record",
            about: "",
            run: record,
            dictionary: &[b"x"],
        };
        let draw = |seed| {
            SEEN.with(|s| s.borrow_mut().clear());
            fuzz(&t, &[b"abc".to_vec()], 50, seed).unwrap();
            SEEN.with(|s| s.borrow().clone())
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
