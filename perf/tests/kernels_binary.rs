//! The cost-model binary runs every mode and reports work done, so the callgrind
//! scripts cannot rot (STYLE.md rule 15). No valgrind here: a few iterations natively.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_earshot-perf-kernels");

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("binary starts");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The value of `key=` in a report line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn every_listed_mode_runs_and_reports_its_iterations() {
    let (ok, list) = run(&["list"]);
    assert!(ok);
    let modes: Vec<&str> = list.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(modes.len(), 7, "{list}");
    for mode in modes {
        let (ok, line) = run(&[mode, "50"]);
        assert!(ok, "{mode} failed");
        assert_eq!(field(&line, "mode"), mode);
        assert_eq!(field(&line, "iterations"), "50");
        assert_eq!(field(&line, "drops"), "0", "{line}");
        assert_ne!(field(&line, "checksum"), "0000000000000000", "{line}");
    }
}

#[test]
fn shard_modes_send_packets() {
    for mode in ["forward", "forward-pure", "barge-tick"] {
        let (ok, line) = run(&[mode, "50"]);
        assert!(ok);
        let out: u64 = field(&line, "packets_out").parse().expect("a count");
        assert!(out >= 45, "{line}");
    }
}

#[test]
fn bad_arguments_exit_with_usage() {
    assert!(!run(&["no-such-mode", "5"]).0);
    assert!(!run(&["forward", "many"]).0);
    assert!(!run(&[]).0);
}
