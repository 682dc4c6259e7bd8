//! The AFL++ driver: runs one target under `cargo afl fuzz`, coverage-guided. Build it with
//! `cargo afl build --release -p rescon-fuzz --features afl`; the README's Fuzzing section has
//! the whole command.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(t) = rescon_fuzz::target(&name) else {
        let names: Vec<&str> = rescon_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!(
            "usage: rescon-fuzz-afl TARGET (under afl-fuzz); targets: {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    let run = t.run;
    afl::fuzz!(|data: &[u8]| {
        run(data);
    });
}
