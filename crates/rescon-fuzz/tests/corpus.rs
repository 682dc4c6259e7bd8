//! Every fuzz target, bounded for `cargo test`: its checked-in corpus replayed, then a
//! mutational run of a fixed number of cases drawn from a fixed seed (so a failure here
//! reproduces). `RESCON_FUZZ_CASES` and `RESCON_FUZZ_SEED` change both; the `rescon-fuzz`
//! binary runs longer, with progress.

use rescon_fuzz::{TARGETS, corpus, fuzz, replay, target};

/// Mutated inputs per target: the nine targets together take about 4 s of the 2-core CI
/// machine in release builds (they run in parallel, one test each).
const CASES: u32 = 100_000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: want a number")),
    )
}

fn check(name: &str) {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let entries = corpus(name).unwrap_or_else(|e| panic!("{e}"));
    assert!(!entries.is_empty(), "{name}: the corpus is empty");
    replay(t, &entries).unwrap_or_else(|f| panic!("{f}"));
    let cases = env_u64("RESCON_FUZZ_CASES").map_or(CASES, |n| n as u32);
    let seed = env_u64("RESCON_FUZZ_SEED").unwrap_or(0);
    let inputs: Vec<Vec<u8>> = entries.into_iter().map(|(_, d)| d).collect();
    fuzz(t, &inputs, cases, seed).unwrap_or_else(|f| panic!("{f}\n(seed {seed})"));
}

#[test]
fn cgi_response() {
    check("cgi_response");
}

#[test]
fn static_path() {
    check("static_path");
}

#[test]
fn static_plan() {
    check("static_plan");
}

#[test]
fn listen_filter() {
    check("listen_filter");
}

#[test]
fn config() {
    check("config");
}

#[test]
fn admin() {
    check("admin");
}

#[test]
fn host() {
    check("host");
}

#[test]
fn cgi_stderr() {
    check("cgi_stderr");
}

#[test]
fn fastcgi_records() {
    check("fastcgi_records");
}

/// A target added to [`TARGETS`] needs its test above (and its corpus).
#[test]
fn every_target_is_tested_here() {
    let source = include_str!("corpus.rs");
    for t in TARGETS {
        assert!(
            source.contains(&format!("check(\"{}\")", t.name)),
            "target {} has no test in tests/corpus.rs",
            t.name
        );
    }
}
