//! `sidecar-memory`: the sidecar's resident set across many created and ended calls
//! (SPEC section 6: flat within 5 MB across 10,000).
//!
//! Starts the all-in-one `earshot` binary (from the same target directory, or
//! `--earshot PATH`) on a fresh data directory, creates and ends `--calls` two-party
//! calls through its gRPC API, and samples the process's `VmRSS` from `/proc` every
//! `--every` calls. The first `--warmup` calls are not measured: allocator arenas,
//! the store's page cache and tonic's buffers reach their working size there. Prints
//! one line per sample and a summary; exits 1 if the growth after warm-up (the
//! least-squares trend of the samples over the measured calls, not one sample's noise)
//! exceeds `--limit-mib`.
//!
//! ```sh
//! cargo build --release -p earshot-control -p earshot-bench
//! target/release/sidecar-memory --calls 10000
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use earshot_control::proto;

/// Measures the sidecar's resident set across created and ended calls.
#[derive(Debug, Parser)]
struct Args {
    /// Calls created and ended after warm-up.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Calls before the first measured sample.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Sample every this many calls.
    #[arg(long, default_value_t = 1_000)]
    every: usize,
    /// Fail when the resident set grows more than this (MiB) after warm-up.
    #[arg(long, default_value_t = 5.0)]
    limit_mib: f64,
    /// The `earshot` binary (default: next to this one).
    #[arg(long)]
    earshot: Option<PathBuf>,
}

/// Kills the server when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(50_151)
}

fn media(port: u16) -> proto::Media {
    proto::Media {
        remote: format!("127.0.0.1:{port}"),
        codec: proto::Codec::Pcmu as i32,
        payload_type: 0,
        ptime_ms: 20,
        telephone_event_pt: Some(101),
        rtcp_mux: true,
        auto_answer: None,
        srtp: None,
        ..Default::default()
    }
}

fn call(id: &str) -> proto::CreateInteractionRequest {
    let spec =
        |p: &str, kind: proto::ParticipantKind, role: proto::Role, port| proto::ParticipantSpec {
            participant_id: p.into(),
            kind: kind as i32,
            role: role as i32,
            user_id: String::new(),
            media: Some(media(port)),
        };
    proto::CreateInteractionRequest {
        interaction_id: id.into(),
        participants: vec![
            spec(
                "c",
                proto::ParticipantKind::External,
                proto::Role::Customer,
                20_000,
            ),
            spec(
                "a",
                proto::ParticipantKind::Internal,
                proto::Role::Agent,
                20_002,
            ),
        ],
        actor: String::new(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let earshot = match &args.earshot {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("earshot"))
            .ok_or_else(|| anyhow::anyhow!("no directory of this binary"))?,
    };
    let dir = std::env::temp_dir().join(format!("earshot-sidecar-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let engine_toml = dir.join("engine.toml");
    std::fs::write(
        &engine_toml,
        "port_base = 16384\nports_per_shard = 1024\npin = false\n",
    )?;
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = Server(
        Command::new(&earshot)
            .args([
                "--grpc",
                &grpc.to_string(),
                "--metrics",
                "off",
                "--data-dir",
                &dir.join("data").display().to_string(),
                "--engine-config",
                &engine_toml.display().to_string(),
                "--no-pin",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", earshot.display()))?,
    );
    let pid = server.0.id();
    let channel = loop {
        match tonic::transport::Channel::from_shared(format!("http://{grpc}"))?
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut api = proto::interactions_client::InteractionsClient::new(channel);
    let mut samples: Vec<(usize, u64)> = Vec::new();
    let total = args.warmup + args.calls;
    for n in 0..total {
        let id = format!("call-{n}");
        api.create_interaction(call(&id)).await?;
        api.end_interaction(proto::EndInteractionRequest {
            interaction_id: id,
            actor: String::new(),
        })
        .await?;
        let done = n + 1;
        if done >= args.warmup && (done - args.warmup).is_multiple_of(args.every.max(1)) {
            // Let the allocator return what the burst freed before reading the RSS.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let rss = rss_kib(pid).ok_or_else(|| anyhow::anyhow!("no /proc/{pid}/status"))?;
            println!("calls {done:>6}  rss {:>8.1} MiB", rss as f64 / 1024.0);
            samples.push((done, rss));
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let first = samples.first().map_or(0, |s| s.1);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let last = samples.last().map_or(0, |s| s.1);
    // Growth is the trend, not one sample's noise: the least-squares slope of the RSS
    // over the measured calls, times the calls (allocator and thread caches make single
    // samples swing by several MiB either way).
    let n = samples.len() as f64;
    let (mx, my) = samples.iter().fold((0.0, 0.0), |(x, y), s| {
        (x + s.0 as f64 / n, y + s.1 as f64 / n)
    });
    let (sxy, sxx) = samples.iter().fold((0.0, 0.0), |(xy, xx), s| {
        let dx = s.0 as f64 - mx;
        (xy + dx * (s.1 as f64 - my), xx + dx * dx)
    });
    let slope_kib_per_call = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let growth_mib = slope_kib_per_call * args.calls as f64 / 1024.0;
    println!(
        "samples spread {:.1} MiB (max - min); fitted growth over {} calls {growth_mib:.2} MiB",
        (max - samples.iter().map(|s| s.1).min().unwrap_or(0)) as f64 / 1024.0,
        args.calls
    );
    println!(
        "created and ended {} calls after {} warm-up: rss {:.1} MiB -> {:.1} MiB (max {:.1}), \
         growth {growth_mib:.2} MiB (limit {:.1})",
        args.calls,
        args.warmup,
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        max as f64 / 1024.0,
        args.limit_mib
    );
    if growth_mib > args.limit_mib {
        std::process::exit(1);
    }
    Ok(())
}
