//! `earshot-engine`: the data plane as its own process, programmed by `earshot-control`
//! over a local Unix socket (`docs/engine-protocol.md`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::Engine;
use earshot_engine::server::SocketServer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// earshot's data plane: thread-per-core RTP anchoring and mixing.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file; flags override it. Every field is documented in
    /// docs/configuration.md.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of shards (one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// I/O backend: auto, io_uring, socket, af_xdp.
    #[arg(long)]
    backend: Option<String>,
    /// Fail instead of falling back when the chosen backend cannot start.
    #[arg(long)]
    no_fallback: bool,
    /// Interface for AF_XDP.
    #[arg(long)]
    interface: Option<String>,
    /// Local IPv4 address for legs.
    #[arg(long)]
    bind_v4: Option<std::net::Ipv4Addr>,
    /// Local IPv6 address for legs.
    #[arg(long)]
    bind_v6: Option<std::net::Ipv6Addr>,
    /// First port of shard 0 (aligned to --ports-per-shard).
    #[arg(long)]
    port_base: Option<u16>,
    /// Ports per shard (a power of two).
    #[arg(long)]
    ports_per_shard: Option<u32>,
    /// Cluster node: allocate new legs from slice K of N of every shard's range
    /// ("K/N"; give each node its own K), so legs taken over from a failed node keep
    /// their ports here (docs/cluster.md).
    #[arg(long, value_parser = parse_slice)]
    port_slice: Option<(u16, u16)>,
    /// Unix socket of the programming API. Created 0600 (owner only) whatever the
    /// umask; an existing socket where an engine answers, or a path that is not a
    /// socket, is refused.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Group (name or number) allowed to program the engine: the socket is then 0660
    /// and owned by this group. Default: none (0600).
    #[arg(long)]
    socket_group: Option<String>,
    /// Programming clients accepted at once: 1 (one sidecar) unless this engine is a
    /// cluster node programmed by several control replicas (docs/cluster.md).
    #[arg(long, default_value_t = 1)]
    programmers: usize,
    /// Do not pin shards to cores.
    #[arg(long)]
    no_pin: bool,
}

/// Parses `--port-slice K/N`.
fn parse_slice(text: &str) -> Result<(u16, u16), String> {
    let (k, n) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not K/N"))?;
    let k: u16 = k
        .trim()
        .parse()
        .map_err(|e| format!("K in {text:?}: {e}"))?;
    let n: u16 = n
        .trim()
        .parse()
        .map_err(|e| format!("N in {text:?}: {e}"))?;
    if n == 0 || k >= n {
        return Err(format!("slice {k} of {n} does not exist (0 <= K < N)"));
    }
    Ok((k, n))
}

/// Raises the open-file soft limit to the hard limit: every leg is a socket, and 1,024
/// (systemd's common soft default) is far below what an engine holds. Failure is
/// logged, not fatal: the engine then runs with the limit it was given.
#[allow(unsafe_code)]
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer to a
    // local; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        eprintln!(
            "earshot-engine: cannot read the open-file limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one valid `rlimit` from a pointer to a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        eprintln!(
            "earshot-engine: cannot raise the open-file limit from {} to {}: {}",
            limit.rlim_cur,
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
}

/// A group given by number, or by name from /etc/group.
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1))
                .flatten()
                .and_then(|gid| gid.parse().ok())
        })
        .with_context(|| format!("no group {group:?} in /etc/group"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile_limit();
    let mut cfg = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            EngineConfig::from_toml(&text)?
        }
        None => EngineConfig::default(),
    };
    if let Some(n) = args.shards {
        cfg.shards = n;
    }
    if let Some(b) = &args.backend {
        cfg.backend = earshot_engine::backend::parse_kind(b)?;
    }
    if args.no_fallback {
        cfg.fallback = false;
    }
    if args.interface.is_some() {
        cfg.interface = args.interface.clone();
    }
    if args.bind_v4.is_some() {
        cfg.bind_v4 = args.bind_v4;
    }
    if args.bind_v6.is_some() {
        cfg.bind_v6 = args.bind_v6;
    }
    if let Some(p) = args.port_base {
        cfg.port_base = p;
    }
    if let Some(p) = args.ports_per_shard {
        cfg.ports_per_shard = p;
    }
    if let Some((slice, slices)) = args.port_slice {
        cfg.port_slice = slice;
        cfg.port_slices = slices;
    }
    if let Some(s) = &args.socket {
        cfg.socket = s.clone();
    }
    if args.no_pin {
        cfg.pin = false;
    }
    cfg.validate()?;
    anyhow::ensure!(
        cfg.backend != BackendKind::Memory,
        "backend = \"memory\" is for tests only"
    );

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut factory = earshot_engine::backend::Factory::new(&cfg)?;
    let engine = Engine::start(&cfg, |i| factory.open(i))?;
    eprintln!(
        "earshot-engine: {} shard(s) on {}, ports {}..{}, API on {}",
        cfg.shards,
        engine.handle().backend_name(),
        cfg.port_base,
        u32::from(cfg.port_base) + cfg.ports_per_shard * cfg.shards as u32,
        cfg.socket.display()
    );
    let options = earshot_engine::server::SocketOptions {
        group: args.socket_group.as_deref().map(group_id).transpose()?,
        max_programmers: args.programmers,
    };
    let server = SocketServer::start_with(&cfg.socket, engine.handle(), &options)
        .with_context(|| format!("binding {}", cfg.socket.display()))?;
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(std::time::Duration::from_millis(100));
    }
    eprintln!("earshot-engine: stopping");
    drop(server);
    engine.shutdown();
    drop(factory);
    Ok(())
}
