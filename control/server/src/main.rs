//! `earshot-control`: the control sidecar alone, programming a running
//! `earshot-engine` over its local Unix socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use earshot_control::{EngineClient, EngineClientConfig, ServerConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The earshot control sidecar: gRPC API, supervision rules, directory, timeline.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// gRPC listen address. Loopback by default; any other address needs TLS or a token
    /// (or --insecure), see docs/operations.md.
    #[arg(long, default_value = earshot_control::DEFAULT_GRPC_ADDR)]
    grpc: SocketAddr,
    /// The engine's programming socket.
    #[arg(long, default_value = "earshot-engine.sock")]
    engine_socket: PathBuf,
    /// Where the database lives.
    #[arg(long, default_value = "earshot-data")]
    data_dir: PathBuf,
    /// Events retained for WatchEvents resumption.
    #[arg(long, default_value_t = 100_000)]
    event_retention: u64,
    /// Prometheus metrics address (GET /metrics), or `off`.
    #[arg(long, default_value = earshot_control::metrics::DEFAULT_METRICS_ADDR)]
    metrics: earshot_control::metrics::MetricsAddr,
    #[command(flatten)]
    security: earshot_control::security::SecurityArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // Check the security flags before connecting to anything: a refused bind is a
    // configuration error the operator must see at once.
    let mut config = ServerConfig::new(&args.data_dir);
    config.grpc_addr = args.grpc;
    config.event_retention = args.event_retention;
    config.metrics_addr = args.metrics.addr();
    args.security.apply(&mut config)?;
    let engine = EngineClient::connect(&args.engine_socket, EngineClientConfig::default());
    if !engine
        .wait_connected(std::time::Duration::from_secs(2))
        .await
    {
        tracing::warn!(
            socket = %args.engine_socket.display(),
            "engine not reachable yet; serving and retrying in the background"
        );
    }
    // SIGTERM (systemd, Kubernetes) and Ctrl-C both stop gracefully: the server drains
    // and writes a snapshot. The engine, a separate process, keeps forwarding media.
    let shutdown = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutting down");
    };
    earshot_control::serve(config, Arc::new(engine), shutdown)
        .await
        .context("earshot-control")
}
