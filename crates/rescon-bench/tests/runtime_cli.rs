//! `rescon-bench runtime --json`: the report has the shape the issue names, and the load cases
//! carry the server's CPU time per operation. Figures are not judged here (benchmarks measure,
//! tests do not time).

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rescon-bench"))
        .args(args)
        .output()
        .expect("run rescon-bench")
}

/// The JSON report of a run that must succeed.
fn report(args: &[&str]) -> serde_json::Value {
    let out = bench(args);
    assert!(
        out.status.success(),
        "rescon-bench runtime failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// A run refused with a message naming `flag`.
fn refused(args: &[&str], flag: &str) {
    let bad = bench(args);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains(flag));
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn runtime_json_reports_throughput_and_server_cpu() {
    let v = report(&[
        "runtime",
        "--json",
        "--rounds",
        "1",
        "--duration",
        "0.2",
        "--cases",
        "yield,tcp_echo_64,tcp_echo_64_per_core,http_container_per_conn",
    ]);
    let cases = v["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "yield",
            "tcp_echo_64",
            "tcp_echo_64_per_core",
            "http_container_per_conn"
        ]
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<u64> = cases
        .iter()
        .map(|c| c["workers"].as_u64().unwrap())
        .collect();
    assert_eq!(workers, [1, 1, cores as u64, 1]);
    for c in cases {
        for k in ["rescon", "tokio"] {
            let x = c[k].as_f64().expect("a figure");
            assert!(x.is_finite() && x > 0.0, "{}: {k} = {x}", c["name"]);
        }
        // One pair per round (one round here; a 0.2 s load is one window of each server),
        // and with one pair its ratio is the medians' ratio, the reported one, and the
        // whole confidence interval.
        let pairs = c["pair_ratios"].as_array().expect("pair_ratios");
        assert_eq!(pairs.len(), 1, "{}", c["name"]);
        let (r, t) = (c["rescon"].as_f64().unwrap(), c["tokio"].as_f64().unwrap());
        let want = if c["unit"] == "ns" { t / r } else { r / t };
        let close = |x: f64| (x - want).abs() < 1e-9 * want;
        let got = pairs[0].as_f64().unwrap();
        assert!(close(got), "{}: {got} vs {want}", c["name"]);
        assert!(close(c["ratio"].as_f64().unwrap()), "{}", c["name"]);
        let ci = c["ratio_ci95"].as_array().expect("ratio_ci95");
        assert!(
            ci.iter().all(|x| close(x.as_f64().unwrap())),
            "{}",
            c["name"]
        );
    }
    // Only the load cases have the server's CPU per operation; some CPU was used per operation,
    // and no more than the window's length per operation and worker would allow.
    assert!(cases[0].get("rescon_server_cpu_us").is_none());
    assert!(cases[0].get("rescon_server_switches").is_none());
    for load in &cases[1..] {
        let workers = load["workers"].as_f64().unwrap();
        for (cpu, rate) in [
            ("rescon_server_cpu_us", "rescon"),
            ("tokio_server_cpu_us", "tokio"),
        ] {
            let (us, per_s) = (load[cpu].as_f64().expect(cpu), load[rate].as_f64().unwrap());
            assert!(us > 0.0 && us.is_finite(), "{cpu} = {us}");
            // At most a second of CPU per second and worker, with a margin for the reads of
            // the window's ends.
            assert!(
                us * per_s <= 1.2e6 * workers,
                "{}: {cpu}: {us} us x {per_s}/s exceeds {workers} CPUs",
                load["name"]
            );
        }
        // Switches per operation: present, and a count (how many depends on the machine's
        // load, so no bound is judged).
        for sw in ["rescon_server_switches", "tokio_server_switches"] {
            let x = load[sw].as_f64().expect(sw);
            assert!(x.is_finite() && x >= 0.0, "{}: {sw} = {x}", load["name"]);
        }
    }
    // Bad input is refused with a message, not a panic.
    refused(&["runtime", "--rounds", "0"], "--rounds");
    refused(&["runtime", "--window-ms", "5"], "--window-ms");
}

/// With a longer load, each round is several pairs of windows, and the ratio reported is their
/// median, inside its confidence interval.
#[test]
fn runtime_load_is_measured_in_pairs_of_windows() {
    let v = report(&[
        "runtime",
        "--json",
        "--rounds",
        "2",
        "--duration",
        "0.2",
        "--window-ms",
        "50",
        "--cases",
        "tcp_echo_64",
    ]);
    let c = &v["cases"][0];
    let mut pairs = floats(&c["pair_ratios"]);
    // Four windows of 50 ms for each server, in each of two rounds.
    assert_eq!(pairs.len(), 8);
    assert!(pairs.iter().all(|x| x.is_finite() && *x > 0.0), "{pairs:?}");
    pairs.sort_by(f64::total_cmp);
    let ratio = c["ratio"].as_f64().unwrap();
    assert_eq!(ratio, pairs[4], "the median of the pairs");
    let ci = floats(&c["ratio_ci95"]);
    assert!(ci[0] <= ratio && ratio <= ci[1], "{ci:?} around {ratio}");
}
