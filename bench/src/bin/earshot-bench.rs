//! `earshot-bench`: the whole-engine benchmark runner (see the crate docs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use earshot_bench::capacity::{self, SearchParams};
use earshot_bench::scenario::{self, Scenario};
use earshot_bench::{udp, udp_ramp};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "earshot-bench", about = "earshot whole-engine benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Where result JSON files go.
    #[arg(long, global = true, default_value = "bench/results")]
    results: PathBuf,
}

/// `earshot-bench capacity`.
#[derive(clap::Args, Debug)]
struct CapacityArgs {
    /// Scenario file; flags below override its fields.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Comma-separated session counts to ramp through.
    #[arg(long, value_delimiter = ',')]
    ramp: Option<Vec<u32>>,
    /// Milliseconds per step (default 60000, as SPEC section 6 asks; shorten for a
    /// quick look).
    #[arg(long)]
    step_ms: Option<u64>,
    /// Stop starting steps after this many seconds.
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Core to pin to.
    #[arg(long)]
    core: Option<usize>,
    /// Sleep until the next packet or tick is due instead of spinning (the thread's
    /// CPU share is then its busy share).
    #[arg(long)]
    sleep_when_idle: bool,
    /// Every leg SRTP with this suite (`aes_cm_128_hmac_sha1_80`,
    /// `aes_cm_128_hmac_sha1_32`, `aead_aes_128_gcm`, `aead_aes_256_gcm`), or
    /// `plain` for plain RTP whatever the scenario says.
    #[arg(long)]
    srtp: Option<String>,
    /// Result name (default: the scenario file's stem, else "capacity").
    #[arg(long)]
    name: Option<String>,
}

/// `earshot-bench udp`.
#[derive(clap::Args, Debug)]
struct UdpArgs {
    /// Scenario file (kind "udp"); required.
    #[arg(long)]
    scenario: PathBuf,
    /// Override the backend ("io_uring" or "socket").
    #[arg(long)]
    backend: Option<String>,
    /// Override milliseconds per measured run.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Override the offered rate (0: unlimited).
    #[arg(long)]
    rate_pps: Option<u64>,
    /// A stepped barge capacity run through these session counts (comma-separated)
    /// instead of the one-count comparison.
    #[arg(long, value_delimiter = ',')]
    ramp: Option<Vec<u32>>,
    /// Milliseconds per step of a stepped run (default 60000).
    #[arg(long)]
    step_ms: Option<u64>,
    /// Stepped run: the shard thread runs SCHED_FIFO, out of reach of other
    /// processes on its core (needs root or CAP_SYS_NICE).
    #[arg(long)]
    shard_fifo: bool,
    /// Result name (default: the scenario file's stem).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Memory per 3-party barge session on one shard (resident-set growth).
    Memory {
        /// Sessions to build.
        #[arg(long, default_value_t = 10_000)]
        sessions: u32,
    },
    /// In-memory capacity search on one core (3-party PCMU barge sessions).
    Capacity(CapacityArgs),
    /// Engine through real UDP on loopback vs the bare batched reflector, same run.
    Udp(UdpArgs),
    /// AF_XDP vs io_uring vs sockets across a veth pair (two namespaces; needs root).
    Veth {
        /// Engine backends to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "af_xdp,io_uring,socket")]
        backends: Vec<String>,
        /// Forwarded 2-leg sessions in the engine.
        #[arg(long, default_value_t = 500)]
        sessions: u32,
        /// Milliseconds per pass (two passes per system under test).
        #[arg(long, default_value_t = 3000)]
        duration_ms: u64,
        /// Offered rate of the latency pass.
        #[arg(long, default_value_t = 50_000)]
        latency_rate_pps: u64,
        /// Result name.
        #[arg(long, default_value = "veth")]
        name: String,
    },
    /// The bare batched reflector alone (recvmmsg/sendmmsg 64), for an external sender.
    Reflector {
        /// UDP port on 127.0.0.1.
        #[arg(long, default_value_t = 40000)]
        port: u16,
        /// Core to pin to.
        #[arg(long, default_value_t = 0)]
        core: usize,
        /// How long to run.
        #[arg(long, default_value_t = 10_000)]
        duration_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("earshot-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `earshot-bench capacity`: the in-memory search, its summary line and its results.
fn run_capacity(
    args: CapacityArgs,
    results: &std::path::Path,
) -> Result<(), earshot_bench::BenchError> {
    let CapacityArgs {
        scenario: file,
        ramp,
        step_ms,
        max_seconds,
        core,
        sleep_when_idle,
        srtp,
        name,
    } = args;
    let (mut p, name) = match file {
        Some(f) => {
            let named = scenario::load(&f)?;
            match named.scenario {
                Scenario::Capacity(p) => (p, name.unwrap_or(named.name)),
                Scenario::Udp(_) => {
                    return Err(std::io::Error::other("not a capacity scenario").into());
                }
            }
        }
        None => (
            SearchParams {
                ramp: vec![1000, 2000, 4000, 8000, 10000, 12000, 14000, 16000, 20000],
                step_ms: capacity::DEFAULT_STEP_MS,
                max_seconds: 1200,
                resolution: 500,
                core: Some(0),
                sleep_when_idle: false,
                srtp: None,
                calls: Default::default(),
            },
            name.unwrap_or_else(|| "capacity".to_string()),
        ),
    };
    if let Some(r) = ramp {
        p.ramp = r;
    }
    if let Some(s) = step_ms {
        p.step_ms = s;
    }
    if let Some(m) = max_seconds {
        p.max_seconds = m;
    }
    if core.is_some() {
        p.core = core;
    }
    p.sleep_when_idle |= sleep_when_idle;
    match srtp.as_deref() {
        Some("plain") => p.srtp = None,
        Some(suite) => p.srtp = Some(suite.to_string()),
        None => {}
    }
    let r = capacity::search(&p)?;
    println!(
        "capacity ({}): largest zero-late session count {:?} (first failure {:?}); projected from work {:?}; in {:.1} s",
        p.srtp.as_deref().unwrap_or("plain"),
        r.max_sessions_zero_late,
        r.min_sessions_failed,
        r.projected_sessions,
        r.elapsed_s
    );
    scenario::write_run(results, &name, &p, &r)?;
    Ok(())
}

/// `earshot-bench udp`: one comparison with the reflector, or a stepped ramp.
fn run_udp(args: UdpArgs, results: &std::path::Path) -> Result<(), earshot_bench::BenchError> {
    let UdpArgs {
        scenario: file,
        backend,
        duration_ms,
        rate_pps,
        ramp,
        step_ms,
        shard_fifo,
        name,
    } = args;
    let named = scenario::load(&file)?;
    let Scenario::Udp(mut p) = named.scenario else {
        return Err(std::io::Error::other("not a udp scenario").into());
    };
    if let Some(b) = backend {
        p.backend = b;
    }
    if let Some(d) = duration_ms {
        p.duration_ms = d;
    }
    if let Some(r) = rate_pps {
        p.rate_pps = r;
    }
    if let Some(r) = ramp {
        p.ramp = r;
    }
    if step_ms.is_some() {
        p.step_ms = step_ms;
    }
    p.shard_fifo |= shard_fifo;
    let name = name.unwrap_or(named.name);
    if !p.ramp.is_empty() {
        let r = udp_ramp::ramp(&p)?;
        println!(
            "udp-ramp ({}{}): generator max {:.0} pps; largest passing session count {:?}; in {:.1} s",
            p.backend,
            if p.shard_fifo {
                ", shard SCHED_FIFO"
            } else {
                ""
            },
            r.generator_max_pps,
            r.max_sessions_passed,
            r.elapsed_s
        );
        for s in &r.steps {
            println!("udp-ramp: {}", udp_ramp::step_line(s));
        }
        scenario::write_run(results, &name, &p, &r)?;
        return Ok(());
    }
    let r = udp::compare(&p)?;
    println!(
        "udp: generator max {:.0} pps; reflector out {:.0} pps; {} out {:.0} pps; ratio out {:.3} in {:.3}",
        r.generator_max_pps,
        r.reflector.sut_out_pps,
        r.engine.target,
        r.engine.sut_out_pps,
        r.ratio_out,
        r.ratio_in
    );
    scenario::write_run(results, &name, &p, &r)?;
    Ok(())
}

fn run(cli: Cli) -> Result<(), earshot_bench::BenchError> {
    match cli.cmd {
        Cmd::Memory { sessions } => {
            let r = earshot_bench::capacity::memory(sessions)?;
            println!(
                "memory: {} sessions, resident set {} -> {} bytes, {:.0} bytes ({:.1} KiB) per session",
                r.sessions,
                r.rss_before,
                r.rss_after,
                r.bytes_per_session,
                r.bytes_per_session / 1024.0
            );
        }
        Cmd::Capacity(args) => run_capacity(args, &cli.results)?,
        Cmd::Udp(args) => run_udp(args, &cli.results)?,
        Cmd::Veth {
            backends,
            sessions,
            duration_ms,
            latency_rate_pps,
            name,
        } => {
            let p = earshot_bench::veth::VethParams {
                backends,
                sessions,
                duration_ms,
                latency_rate_pps,
                sut_core: 0,
                gen_core: 1,
            };
            let r = earshot_bench::veth::run(&p)?;
            println!("veth: generator max {:.0} pps", r.generator_max_pps);
            for c in &r.cases {
                println!(
                    "veth: {:<18} in {:>8.0} out {:>8.0} pps  ratio out {:.2}  busy sut {:>3.0}% gen {:>3.0}%  p50 {:>7.1} us  p99 {:>8.1} us (at {:.0} pps)",
                    c.target,
                    c.sut_in_pps,
                    c.sut_out_pps,
                    c.ratio_out,
                    100.0 * c.sut_core_busy,
                    100.0 * c.gen_core_busy,
                    c.latency_us.p50,
                    c.latency_us.p99,
                    c.latency_offered_pps
                );
            }
            scenario::write_run(&cli.results, &name, &p, &r)?;
        }
        Cmd::Reflector {
            port,
            core,
            duration_ms,
        } => {
            let (i, o) = udp::reflector_alone(port, core, duration_ms)?;
            let secs = duration_ms as f64 / 1000.0;
            println!(
                "reflector: {i} in ({:.0} pps), {o} out ({:.0} pps)",
                i as f64 / secs,
                o as f64 / secs
            );
        }
    }
    Ok(())
}
