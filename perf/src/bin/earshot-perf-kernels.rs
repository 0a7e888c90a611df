//! Runs one cost-model workload N times and prints what it did, for callgrind.
//!
//! Usage: `earshot-perf-kernels <mode> <iterations>`, or `earshot-perf-kernels list`.
//! Modes: forward, forward-pure, barge-tick, g711-decode, g711-encode, mix-scalar,
//! mix-detected (see `earshot_perf::Mode`). The process does nothing but set up the
//! workload, run it, and print one `key=value` line, so that the instruction count of
//! two runs with different iteration counts differs only by the work itself.

use std::process::ExitCode;

use earshot_perf::{Mode, run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> ExitCode {
    let modes: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
    eprintln!(
        "usage: earshot-perf-kernels <mode> <iterations> | list\nmodes: {}",
        modes.join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 1 && args[0] == "list" {
        for m in Mode::ALL {
            println!("{} {}", m.name(), m.unit().replace(' ', "_"));
        }
        return ExitCode::SUCCESS;
    }
    let [mode, iterations] = args.as_slice() else {
        return usage();
    };
    let (Some(mode), Ok(iterations)) = (Mode::parse(mode), iterations.parse::<u64>()) else {
        return usage();
    };
    match run(mode, iterations) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("earshot-perf-kernels: {e}");
            ExitCode::FAILURE
        }
    }
}
