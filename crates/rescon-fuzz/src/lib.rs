//! Fuzz targets for every parser of untrusted bytes in rescon, and the engine that runs them
//! without any tool beyond cargo.
//!
//! A [`Target`] is a function from bytes to nothing that panics when the parser under test
//! breaks one of its guarantees (or panics by itself). Each target checks properties, not just
//! the absence of a crash: a parsed value survives a print-and-parse round trip, a chunked feed
//! gives what a whole feed gives, a response plan's headers agree with its body, a filter
//! steers every source to a member whose filter takes it. The targets are listed in
//! [`TARGETS`]; each has a checked-in corpus under `corpus/<name>/` (seed inputs, and every
//! input that ever broke it).
//!
//! Two ways to run them:
//!
//! - **Mutational, on stable, no tool** ([`fuzz`]): proptest draws inputs by mutating the
//!   corpus (bit flips, insertions, deletions, duplications, splices between entries, tokens of
//!   the target's dictionary, interesting numbers) from a fixed seed, so a run is reproducible,
//!   and shrinks a failure to the fewest mutations. `cargo test -p rescon-fuzz --release`
//!   replays the corpora and runs a bounded number of cases per target; the `rescon-fuzz`
//!   binary runs longer ones.
//! - **Coverage-guided with AFL++** (`cargo afl`, the `afl` feature and the
//!   `rescon-fuzz-afl` binary): see the README's Fuzzing section.
//!
//! ```
//! let t = rescon_fuzz::target("cgi_response").unwrap();
//! (t.run)(b"\x00Content-Type: text/plain\n\nhello");
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod mutate;
pub mod targets;

pub use mutate::{Failure, Mutation, Pos, fuzz, mutated, replay};

use std::path::{Path, PathBuf};

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Its name: the corpus directory and the command-line name.
    pub name: &'static str,
    /// What it feeds and checks.
    pub about: &'static str,
    /// Runs one input; panics on a broken guarantee.
    pub run: fn(&[u8]),
    /// Tokens the mutator inserts: keywords and separators of the input's syntax.
    pub dictionary: &'static [&'static [u8]],
}

/// Every target.
pub const TARGETS: &[Target] = &[
    targets::cgi::TARGET,
    targets::static_files::PATH,
    targets::static_files::PLAN,
    targets::filter::TARGET,
    targets::config::TARGET,
    targets::admin::TARGET,
    targets::host::TARGET,
    targets::stderr::TARGET,
    targets::fastcgi::TARGET,
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The corpus directory of a target, in the source tree.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// The inputs of a target's corpus, with their file names, in name order.
pub fn corpus(name: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let dir = corpus_dir(name);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| {
        std::io::Error::new(e.kind(), format!("reading corpus {}: {e}", dir.display()))
    })? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push((name, std::fs::read(entry.path())?));
        }
    }
    out.sort();
    Ok(out)
}

/// An input as a Rust byte string literal, to paste into a regression test.
pub fn escape(data: &[u8]) -> String {
    let mut s = String::from("b\"");
    for &b in data {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}
