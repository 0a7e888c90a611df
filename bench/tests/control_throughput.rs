//! Runs `control-throughput --ci` (150 calls, 8 clients, one round per arm) and checks
//! its JSON: every request of both arms was acknowledged, rates and latencies are
//! positive and consistent, the ratios are those of the summaries. The figures
//! themselves are not asserted (a noisy 2-core machine; docs/perf.md records the long
//! mode). Without etcd the runner measures the redb arm only and this test says
//! `SKIPPED` for the etcd arm.

use std::process::Command;

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

fn check_arm(v: &serde_json::Value, arm: &str, calls: f64) {
    let runs = v[arm].as_array().unwrap_or_else(|| panic!("{arm} runs"));
    assert_eq!(runs.len(), 1, "one round in CI mode");
    for phase in ["create", "monitor"] {
        let p = &runs[0][phase];
        assert_eq!(num(p, &["requests"]), calls, "{arm} {phase}");
        assert_eq!(num(p, &["failed"]), 0.0, "{arm} {phase}: refused requests");
        let rate = num(p, &["per_second"]);
        let seconds = num(p, &["seconds"]);
        assert!(rate > 0.0 && seconds > 0.0, "{arm} {phase}: {p}");
        assert!(
            (rate * seconds - calls).abs() < 1e-6 * calls.max(1.0),
            "{arm} {phase}: rate x time = requests: {p}"
        );
        let (p50, p99, max) = (
            num(p, &["p50_ms"]),
            num(p, &["p99_ms"]),
            num(p, &["max_ms"]),
        );
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= max,
            "{arm} {phase}: ordered quantiles: {p}"
        );
    }
}

#[test]
fn control_throughput_ci_mode_runs_both_arms() {
    let out = Command::new(env!("CARGO_BIN_EXE_control-throughput"))
        .arg("--ci")
        .output()
        .expect("run control-throughput");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "control-throughput failed:\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON on stdout: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    println!("{}", serde_json::to_string(&v).unwrap());
    let calls = num(&v, &["calls"]);
    assert_eq!(calls, 150.0);
    check_arm(&v, "redb", calls);
    if v["etcd"].is_null() {
        assert!(
            stderr.contains("SKIPPED"),
            "no etcd arm and no reason: {stderr}"
        );
        println!("SKIPPED: the etcd arm (no etcd binary: apt-get install etcd-server)");
        return;
    }
    check_arm(&v, "etcd", calls);
    let ratio = num(&v, &["ratio_create_rate"]);
    let expected = num(&v, &["etcd_summary", "create_per_second"])
        / num(&v, &["redb_summary", "create_per_second"]);
    assert!(
        (ratio - expected).abs() < 1e-9 * expected,
        "ratio {ratio} vs {expected}"
    );
    println!(
        "etcd/redb: create rate x{:.2}, monitor rate x{:.2}, create p99 x{:.2}, monitor p99 x{:.2}",
        ratio,
        num(&v, &["ratio_monitor_rate"]),
        num(&v, &["ratio_create_p99"]),
        num(&v, &["ratio_monitor_p99"]),
    );
}
