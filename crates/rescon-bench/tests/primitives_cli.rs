//! `rescon-bench primitives --json`: the paper's "move container between processes" row is
//! measured between two processes (a handle sent, received and used), and the in-process clone
//! it used to be is reported under its own name. Figures are not judged here.

use std::process::Command;

#[test]
fn primitives_measure_moving_a_handle_between_processes() {
    let out = Command::new(env!("CARGO_BIN_EXE_rescon-bench"))
        .args(["primitives", "--json", "--scale", "0.01"])
        .output()
        .expect("run rescon-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "primitives failed: {stderr}");
    assert!(
        !stderr.contains("handle primitives left out"),
        "the handle measurements failed: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let ops = v["ops"].as_object().expect("ops");
    for op in [
        "move_between_processes",
        "move_between_processes_send",
        "move_between_processes_receive_use",
        "move_between_processes_roundtrip",
        "handle_charge",
        "handle_meter_charge",
        "handle_call_usage",
        "handle_issue",
        "clone_handle_in_process",
    ] {
        let ns = ops
            .get(op)
            .and_then(|o| o["mean_ns"].as_f64())
            .unwrap_or_else(|| panic!("no {op} in {ops:?}"));
        assert!(ns > 0.0, "{op}: {ns}");
    }
    assert!(ops.get("dup_handle").is_none(), "the old name is gone");
}
