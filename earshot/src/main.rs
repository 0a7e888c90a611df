//! `earshot`: the engine and the control sidecar in one process, the engine programmed
//! in-process (the top of the house: it depends on both, neither depends on it). This is what `cargo run --release` at the repository root starts, with
//! defaults that need no configuration: gRPC on 127.0.0.1:50051, RTP on 127.0.0.1, data
//! in `./earshot-data`, and the best I/O backend that works on the host.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use earshot_control::ServerConfig;
use earshot_engine::backend::{Factory, parse_kind};
use earshot_engine::config::EngineConfig;
use earshot_engine::engine::Engine;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// earshot: monitor, coach and barge into live calls.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run engine and control in one process (the default).
    Run(RunArgs),
    /// Command-line client for every RPC (`earshot ctl --help`).
    Ctl(earshot_control::ctl::CtlArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// gRPC listen address. Non-loopback addresses need TLS or a token (see docs/operations.md).
    #[arg(long, default_value = earshot_control::DEFAULT_GRPC_ADDR)]
    grpc: SocketAddr,
    /// Where the database lives.
    #[arg(long, default_value = "earshot-data")]
    data_dir: PathBuf,
    /// How long ended interactions stay readable from the store (e.g. 24h, 90m, 3600s).
    #[arg(long, default_value = "24h", value_parser = earshot_control::parse_duration)]
    ended_retention: std::time::Duration,
    /// Engine configuration file (TOML, docs/configuration.md); flags below override it.
    #[arg(long)]
    engine_config: Option<PathBuf>,
    /// I/O backend: auto, io_uring, socket, af_xdp.
    #[arg(long)]
    backend: Option<String>,
    /// Local IPv4 address for RTP legs.
    #[arg(long)]
    bind_v4: Option<std::net::Ipv4Addr>,
    /// Local IPv6 address for RTP legs.
    #[arg(long)]
    bind_v6: Option<std::net::Ipv6Addr>,
    /// Number of data-plane shards.
    #[arg(long)]
    shards: Option<usize>,
    /// First RTP port of shard 0 (even; default 10000, below the kernel's ephemeral
    /// range; see docs/configuration.md).
    #[arg(long)]
    port_base: Option<u16>,
    /// RTP ports per shard (even; default 20000).
    #[arg(long)]
    ports_per_shard: Option<u32>,
    /// Do not pin shards to cores.
    #[arg(long)]
    no_pin: bool,
    /// Prometheus metrics address (GET /metrics), or `off`.
    #[arg(long, default_value = earshot_control::metrics::DEFAULT_METRICS_ADDR)]
    metrics: earshot_control::metrics::MetricsAddr,
    /// At most this many gRPC connections at once (more are closed and counted); capped
    /// at a quarter of the open-file limit.
    #[arg(long, default_value_t = earshot_control::limits::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Close a gRPC connection that sends nothing for this long (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = earshot_control::parse_duration)]
    handshake_timeout: std::time::Duration,
    #[command(flatten)]
    security: earshot_control::security::SecurityArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let run = match cli.command {
        Some(Command::Run(r)) => r,
        Some(Command::Ctl(args)) => return exit_with(earshot_control::ctl::run(args)),
        None => cli.run,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let nofile = earshot_control::limits::raise_nofile();
    let mut cfg = match &run.engine_config {
        Some(p) => EngineConfig::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => EngineConfig::default(),
    };
    if let Some(b) = &run.backend {
        cfg.backend = parse_kind(b)?;
    }
    if run.bind_v4.is_some() {
        cfg.bind_v4 = run.bind_v4;
    }
    if run.bind_v6.is_some() {
        cfg.bind_v6 = run.bind_v6;
    }
    if let Some(n) = run.shards {
        cfg.shards = n;
    }
    if let Some(p) = run.port_base {
        cfg.port_base = p;
    }
    if let Some(p) = run.ports_per_shard {
        cfg.ports_per_shard = p;
    }
    if run.no_pin {
        cfg.pin = false;
    }
    cfg.validate()?;
    // Security before the engine starts: a refused bind must not leave ports open.
    let mut config = ServerConfig::new(&run.data_dir);
    config.grpc_addr = run.grpc;
    config.metrics_addr = run.metrics.addr();
    config.ended_retention = run.ended_retention;
    config.max_connections = earshot_control::limits::cap_connections(run.max_connections, nofile);
    config.handshake_timeout = run.handshake_timeout;
    run.security.apply(&mut config)?;

    let mut factory = Factory::new(&cfg)?;
    let engine = Engine::start(&cfg, |i| factory.open(i)).context("starting the engine")?;
    let handle = engine.handle();
    tracing::info!(
        backend = handle.backend_name(),
        shards = cfg.shards,
        rtp = ?cfg.bind_v4,
        grpc = %run.grpc,
        "earshot running"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending::<()>().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        };
        earshot_control::serve(config, handle, shutdown).await
    });
    engine.shutdown();
    drop(factory);
    result.context("earshot")
}

/// Ends the process with a ctl exit code (0 or 1) without anyhow's error printing:
/// ctl already printed the refusal in its own format.
fn exit_with(code: std::process::ExitCode) -> anyhow::Result<()> {
    if code == std::process::ExitCode::SUCCESS {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
