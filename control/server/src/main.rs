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
    /// Where the database lives (the embedded store; unused with --etcd).
    #[arg(long, default_value = "earshot-data")]
    data_dir: PathBuf,
    /// Keep the state in etcd instead of the embedded store, shared with every other
    /// control replica on the same endpoints and prefix: comma-separated member
    /// endpoints (`http://10.0.0.1:2379,http://10.0.0.2:2379`). See docs/cluster.md.
    #[arg(long, value_delimiter = ',', env = "EARSHOT_ETCD")]
    etcd: Vec<String>,
    /// Key prefix of this cluster's state in etcd.
    #[arg(long, default_value = earshot_control::DEFAULT_ETCD_PREFIX)]
    etcd_prefix: String,
    /// Program the engine nodes registered in etcd (placement, failover) instead of
    /// the one engine at --engine-socket. Needs --etcd.
    #[arg(long, requires = "etcd")]
    cluster: bool,
    /// Events retained for WatchEvents resumption.
    #[arg(long, default_value_t = 100_000)]
    event_retention: u64,
    /// How long ended interactions stay readable from the store (e.g. 24h, 90m, 3600s).
    #[arg(long, default_value = "24h", value_parser = earshot_control::parse_duration)]
    ended_retention: std::time::Duration,
    /// Take over an engine that holds legs of another (or a new, empty) store: every
    /// leg this store does not know is removed. Without it such an engine is refused.
    #[arg(long)]
    adopt_engine_state: bool,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let nofile = earshot_control::limits::raise_nofile();
    // Check the security flags before connecting to anything: a refused bind is a
    // configuration error the operator must see at once.
    let mut config = ServerConfig::new(&args.data_dir);
    config.grpc_addr = args.grpc;
    config.event_retention = args.event_retention;
    config.ended_retention = args.ended_retention;
    config.adopt_engine_state = args.adopt_engine_state;
    config.etcd_endpoints = args.etcd;
    config.etcd_prefix = args.etcd_prefix;
    config.max_connections = earshot_control::limits::cap_connections(args.max_connections, nofile);
    config.handshake_timeout = args.handshake_timeout;
    config.metrics_addr = args.metrics.addr();
    args.security.apply(&mut config)?;
    let engine: Arc<dyn earshot_engine_api::EngineApi> = if args.cluster {
        let etcd = earshot_etcd::Etcd::new(&config.etcd_endpoints)?;
        let connect: earshot_control::cluster::Connector = Box::new(|node| {
            Arc::new(EngineClient::connect(
                &node.engine,
                EngineClientConfig::default(),
            ))
        });
        let router = earshot_control::cluster::ClusterEngine::start(
            etcd,
            &config.etcd_prefix,
            connect,
            Arc::clone(&config.clock),
        )
        .await
        .context("following the engine nodes in etcd")?;
        tracing::info!(
            nodes = router.nodes().len(),
            "cluster mode: engine nodes from etcd"
        );
        config.cluster = Some(Arc::clone(&router));
        router
    } else {
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
        Arc::new(engine)
    };
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
    earshot_control::serve(config, engine, shutdown)
        .await
        .context("earshot-control")
}
