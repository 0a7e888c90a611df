//! `earshot-node`: the agent of one engine node in a cluster (docs/cluster.md).
//!
//! Runs beside an `earshot-engine` (started with `--programmers N`, N the number of
//! control replicas plus one for this agent) and:
//! 1. **registers** the node in etcd under a lease (`nodes/{node_id}`: engine socket,
//!    media address, shards, capacity) and a node number;
//! 2. **reports its load** (legs held, read from the engine as an observer) every
//!    `--report-interval`, with the lease renewed in the background;
//! 3. **fences itself**: when its lease has not been renewed for `--lease-ttl` minus
//!    `--fence-margin` (etcd unreachable, or this host cut off), it removes every
//!    session from its engine, so the engine stops sending **before** etcd expires the
//!    lease and any survivor starts re-creating those calls; then it registers again
//!    as an empty node once etcd answers.
//!
//! What it does not do yet: move virtual addresses (docs/cluster.md, "Not covered").

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use earshot_control::cluster::{self, Registered};
use earshot_control::placement::NodeInfo;
use earshot_engine_api::protocol::{ClientFrame, Hello, ServerFrame, read_frame, write_frame};
use earshot_engine_api::{EngineError, Request, Response};

/// The agent of one engine node in an earshot cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// etcd member endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', env = "EARSHOT_ETCD", required = true)]
    etcd: Vec<String>,
    /// Key prefix of the cluster's state in etcd.
    #[arg(long, default_value = earshot_control::DEFAULT_ETCD_PREFIX)]
    etcd_prefix: String,
    /// This node's name (stable across restarts).
    #[arg(long)]
    node_id: String,
    /// The engine's programming socket (as control replicas reach it).
    #[arg(long, default_value = "earshot-engine.sock")]
    engine_socket: PathBuf,
    /// The node's media address (its virtual address).
    #[arg(long, default_value = "127.0.0.1")]
    media_address: String,
    /// Engine shards (cores).
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// Legs the node accepts at most.
    #[arg(long, default_value_t = 10_000)]
    capacity_legs: u64,
    /// Relative share of new interactions (default: the shard count).
    #[arg(long)]
    weight: Option<f64>,
    /// Lease TTL in seconds: how long after this node dies its calls move.
    #[arg(long, default_value_t = 2)]
    lease_ttl: i64,
    /// Fence this long before the lease could expire (ms).
    #[arg(long, default_value_t = 500)]
    fence_margin_ms: u64,
    /// How often the load is reported (ms).
    #[arg(long, default_value_t = 1000)]
    report_interval_ms: u64,
}

/// One call on a fresh connection (the agent calls rarely: no connection to keep).
fn engine_call(socket: &Path, hello: Hello, request: Request) -> io::Result<Response> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write_frame(&mut s, &hello)?;
    let answer: Hello = read_frame(&mut s)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no hello"))?;
    if let Some(why) = answer.refused {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
    write_frame(&mut s, &ClientFrame::Call { id: 1, request })?;
    loop {
        match read_frame::<_, ServerFrame>(&mut s)? {
            Some(ServerFrame::Reply { id: 1, result }) => {
                return result.map_err(|e: EngineError| io::Error::other(e.to_string()));
            }
            Some(_) => continue,
            None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
        }
    }
}

async fn legs_held(socket: &Path) -> io::Result<u64> {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        match engine_call(&socket, Hello::observer(), Request::Snapshot)? {
            Response::Snapshot(s) => Ok(s.legs.len() as u64),
            _ => Err(io::Error::other("Snapshot answered otherwise")),
        }
    })
    .await
    .map_err(io::Error::other)?
}

/// Stops every session of the engine: the node sends nothing more.
async fn fence(socket: &Path) -> io::Result<usize> {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        let Response::Snapshot(s) = engine_call(&socket, Hello::observer(), Request::Snapshot)?
        else {
            return Err(io::Error::other("Snapshot answered otherwise"));
        };
        let mut sessions: Vec<String> = s.legs.iter().map(|l| l.session.clone()).collect();
        sessions.sort();
        sessions.dedup();
        for session in &sessions {
            engine_call(
                &socket,
                Hello::current(),
                Request::RemoveSession {
                    session: session.clone(),
                },
            )?;
        }
        Ok(sessions.len())
    })
    .await
    .map_err(io::Error::other)?
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let etcd = earshot_etcd::Etcd::new(&args.etcd)?;
    let mut prefix = args.etcd_prefix.clone();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let mut info = NodeInfo {
        node_id: args.node_id.clone(),
        engine: args.engine_socket.display().to_string(),
        media_address: args.media_address.clone(),
        shards: args.shards,
        capacity_legs: args.capacity_legs,
        legs: 0,
        weight: args.weight.unwrap_or(f64::from(args.shards)),
        draining: false,
    };
    let margin = Duration::from_millis(args.fence_margin_ms);
    loop {
        let registration = match cluster::register(&etcd, &prefix, &info, args.lease_ttl).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        tracing::info!(node_id = %info.node_id, number = registration.number, lease = registration.lease, "registered");
        let deadline = registration.keep_alive.deadline.clone();
        let mut next_report = tokio::time::Instant::now();
        loop {
            // The lease is known to live until `deadline`; fence `margin` before it.
            let lost = match *deadline.borrow() {
                Some(d) => tokio::time::Instant::now() + margin >= d,
                None => true,
            };
            if lost {
                tracing::error!(node_id = %info.node_id, "lease about to expire: fencing (every session stopped)");
                match fence(&args.engine_socket).await {
                    Ok(n) => tracing::warn!(sessions = n, "fenced"),
                    Err(e) => tracing::error!(error = %e, "fencing failed"),
                }
                break;
            }
            if tokio::time::Instant::now() >= next_report {
                next_report += Duration::from_millis(args.report_interval_ms);
                if let Ok(legs) = legs_held(&args.engine_socket).await {
                    info.legs = legs;
                    let registered = Registered {
                        info: info.clone(),
                        number: registration.number,
                    };
                    if let Err(e) =
                        cluster::update(&etcd, &prefix, registration.lease, &registered).await
                    {
                        tracing::warn!(error = %e, "load report failed");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Our old lease is gone or going: start again as a new, empty registration.
        let _ = etcd.revoke(registration.lease).await;
        info.legs = 0;
    }
}
