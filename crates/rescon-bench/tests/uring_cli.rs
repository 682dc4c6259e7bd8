//! `rescon-bench uring --json`: each of the three servers echoes (a rate above zero), and the
//! report has each mode's figures and the ratios against epoll. Figures are not judged (benchmarks
//! measure, tests do not time). io_uring is a kernel feature: without it the probe must say
//! why, and the test skips unless RESCON_REQUIRE_KERNEL=1.

use std::process::Command;

fn required() -> bool {
    std::env::var_os("RESCON_REQUIRE_KERNEL").is_some_and(|v| v == "1")
}

#[test]
fn uring_probe_reports_each_mode_against_epoll() {
    let out = Command::new(env!("CARGO_BIN_EXE_rescon-bench"))
        .args(["uring", "--json", "--turns", "2", "--duration", "0.2"])
        .output()
        .expect("run rescon-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("io_uring is not available") && !required() {
        eprintln!("skipped: {stderr}");
        return;
    }
    assert!(out.status.success(), "rescon-bench uring failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["conns"], 64);
    assert_eq!(v["turns"], 2);
    let modes = v["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(names, ["epoll", "uring", "hybrid"]);
    for m in modes {
        for k in ["msgs_per_s", "server_cpu_us"] {
            let x = m[k].as_f64().expect(k);
            assert!(x.is_finite() && x > 0.0, "{}: {k} = {x}", m["mode"]);
        }
        // Against epoll: [median, low, high] with the median inside; epoll has none.
        for k in ["throughput_vs_epoll", "cpu_vs_epoll"] {
            if m["mode"] == "epoll" {
                assert!(m.get(k).is_none());
                continue;
            }
            let r: Vec<f64> = m[k]
                .as_array()
                .expect(k)
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(r.len(), 3);
            assert!(r[1] <= r[0] && r[0] <= r[2] && r[1] > 0.0, "{k}: {r:?}");
        }
    }
    // Bad input is refused with a message.
    let bad = Command::new(env!("CARGO_BIN_EXE_rescon-bench"))
        .args(["uring", "--turns", "0"])
        .output()
        .expect("run rescon-bench");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--turns"));
}
