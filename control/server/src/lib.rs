//! # earshot-control: the control sidecar's gRPC server
//!
//! The face that orchestration systems see (SPEC sections 2-4). It serves the
//! `earshot.v1` services `Interactions`, `Supervision`, `Directory` and `Engine`, plus
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), on one tonic server.
//! Each mutating RPC is validated, applied to the pure rules state machine
//! (`earshot-rules`), persisted in an embedded redb database, published on
//! `WatchEvents`, and programmed into the media engine through an
//! [`EngineApi`](earshot_engine_api::EngineApi): in-process in the all-in-one `earshot`
//! binary, or over the engine's Unix socket ([`EngineClient`]) in `earshot-control`.
//!
//! ## What it deliberately does not do
//! It holds no media and no rules of its own: who may supervise whom and who hears whom
//! are decided by `earshot-rules`; packets are the engine's. It serves no metrics, TLS
//! or authentication yet: [`ServerConfig`] is the place where they will be configured
//! and [`serve_with_listener`] the place where they will wrap the services.
//!
//! ## Contract
//! - Every refusal is a `tonic::Status` with a `google.rpc.ErrorInfo` (domain
//!   `earshot`) reason ([`error`]); INVALID_ARGUMENT names the field.
//! - A reply means the change is durable (fsync'd): a kill -9 afterwards loses nothing.
//!   The order of rules, store and engine is documented in [`core`].
//! - Every mutating RPC is idempotent: an identical retry returns the existing object
//!   and re-programs the engine if an earlier attempt could not.
//! - On start, and whenever the engine was unreachable, the sidecar reconciles the
//!   engine with the store: legs keep their local ports across an engine restart.
//! - Events carry a global sequence number; `WatchEvents` resumes from any retained one
//!   (the last [`ServerConfig::event_retention`] events).
#![forbid(unsafe_code)]

pub mod clock;
pub mod cluster;
pub mod convert;
pub mod core;
pub mod engine_client;
pub mod error;
pub mod limits;
pub mod media;
pub mod peers;
pub mod placement;
pub mod service;
pub mod store;

// Operations: metrics, the `earshot ctl` client, TLS and authentication.
pub mod ctl;
pub mod metrics;
pub mod security;

/// Generated protobuf types and tonic stubs of `earshot.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    tonic::include_proto!("earshot.v1");
}

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use earshot_engine_api::EngineApi;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, broadcast};

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::core::{Core, ReconcileReport, Shared};
pub use crate::engine_client::{EngineClient, EngineClientConfig};
pub use crate::error::{ApiError, ERROR_DOMAIN};

/// The encoded `FileDescriptorSet` of every `earshot.v1` file, as served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/earshot_descriptor.bin"));

/// The gRPC address used when none is configured: loopback only.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";

/// How the server runs. Build with [`ServerConfig::new`] and adjust fields; new fields
/// (TLS, authentication, metrics address) will be added with defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// gRPC listen address. Default [`DEFAULT_GRPC_ADDR`] (loopback: the API has no
    /// authentication yet).
    pub grpc_addr: SocketAddr,
    /// Directory of the redb database. Default `./earshot-data`.
    pub data_dir: PathBuf,
    /// Events kept for `WatchEvents` resumption. Default 100,000: at a few events per
    /// call that is hours of a busy site, far beyond any client's reconnect.
    pub event_retention: u64,
    /// Commands between state snapshots. Default 1,000: bounds restart replay time and
    /// journal size while keeping snapshot writes rare.
    pub snapshot_every: u64,
    /// How often the engine is compared with the store and repaired. Default 5 s; after
    /// a failed engine call the next check runs within `reconcile_retry`.
    pub reconcile_interval: Duration,
    /// Delay before re-trying reconciliation after an engine failure. Default 500 ms.
    pub reconcile_retry: Duration,
    /// Wall clock for timeline stamps. Default [`SystemClock`].
    pub clock: Arc<dyn Clock>,
    /// Prometheus metrics address. Default `None` for the library (tests and embedders
    /// opt in); both binaries default to [`metrics::DEFAULT_METRICS_ADDR`].
    pub metrics_addr: Option<SocketAddr>,
    /// TLS for the gRPC API. Default `None` (plaintext, fine on loopback).
    pub tls: Option<security::TlsConfig>,
    /// Bearer token required on every API request except health and reflection.
    /// Default `None`.
    pub auth_token: Option<security::AuthToken>,
    /// Allow a non-loopback bind without TLS or a token ([`security::validate_bind`]).
    /// Default false.
    pub insecure: bool,
    /// At most this many gRPC connections at once; more are closed at accept and
    /// counted. Default [`limits::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Default
    /// [`limits::DEFAULT_HANDSHAKE_TIMEOUT`] (10 s).
    pub handshake_timeout: Duration,
    /// How long an ended interaction stays readable (GetInteraction, GetTimeline,
    /// GetSupervision, ListInteractions with include_ended) from the store. Default
    /// 24 h: a day of after-call work and audits. Ended calls leave memory at once.
    pub ended_retention: Duration,
    /// Take over an engine that holds legs of another (or no) control store, removing
    /// every leg this store does not know. Default false: such an engine is refused
    /// with a message naming the choices (`docs/operations.md`).
    pub adopt_engine_state: bool,
    /// etcd member endpoints (`http://127.0.0.1:2379`). Default empty: the embedded
    /// store in `data_dir`. Non-empty: the cluster store on etcd, shared with every
    /// other control replica configured with the same endpoints and prefix
    /// (`docs/cluster.md`).
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster's state in etcd. Default `/earshot/`.
    pub etcd_prefix: String,
    /// Cluster mode: the router over the engine nodes registered in etcd, which is
    /// then also the engine passed to [`serve`]. Default `None` (one engine).
    pub cluster: Option<Arc<cluster::ClusterEngine>>,
}

impl ServerConfig {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            grpc_addr: DEFAULT_GRPC_ADDR
                .parse()
                // A constant literal: parsing cannot fail (checked by a test).
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051))),
            data_dir: data_dir.into(),
            event_retention: 100_000,
            snapshot_every: 1_000,
            reconcile_interval: Duration::from_secs(5),
            reconcile_retry: Duration::from_millis(500),
            clock: Arc::new(SystemClock),
            metrics_addr: None,
            tls: None,
            auth_token: None,
            insecure: false,
            ended_retention: Duration::from_secs(24 * 3600),
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: limits::DEFAULT_HANDSHAKE_TIMEOUT,
            adopt_engine_state: false,
            etcd_endpoints: Vec::new(),
            etcd_prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            cluster: None,
        }
    }
}

/// The key prefix of the cluster state in etcd when none is configured.
pub const DEFAULT_ETCD_PREFIX: &str = "/earshot/";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::new("earshot-data")
    }
}

/// Parses a duration flag: a number with a unit `s`, `m`, `h` or `d` (`24h`, `90m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// Binds `config.grpc_addr` and serves until `shutdown` resolves.
pub async fn serve(
    config: ServerConfig,
    engine: Arc<dyn EngineApi>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Refuse an exposed, unprotected API before touching the network.
    security::validate_bind(&config)?;
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    serve_with_listener(config, listener, engine, shutdown).await
}

/// Opens the store, reconciles the engine, and serves on `listener` until `shutdown`
/// resolves; then writes a snapshot. Binds `config.metrics_addr` if set.
pub async fn serve_with_listener(
    config: ServerConfig,
    listener: TcpListener,
    engine: Arc<dyn EngineApi>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?,
        ),
        None => None,
    };
    serve_with_listeners(config, listener, metrics_listener, engine, shutdown).await
}

/// As [`serve_with_listener`], with the metrics listener given (or none):
/// `config.metrics_addr` is ignored.
pub async fn serve_with_listeners(
    config: ServerConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    engine: Arc<dyn EngineApi>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The address actually bound is the one exposed: validate that one.
    let mut bound = config.clone();
    if let Ok(addr) = listener.local_addr() {
        bound.grpc_addr = addr;
    }
    security::validate_bind(&bound)?;
    let rpc_metrics = metrics::RpcMetrics::new();
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = metrics_listener.map(|l| {
        tracing::info!(addr = ?l.local_addr().ok(), "metrics serving on /metrics");
        tokio::spawn(metrics::serve_metrics(
            l,
            Arc::clone(&engine),
            Arc::clone(&rpc_metrics),
            async move {
                let _ = metrics_stopped.await;
            },
        ))
    });
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let shared = open_shared(&config, engine, stopping_rx, Arc::clone(&rpc_metrics)).await?;
    match shared.reconcile().await {
        Ok(report) => tracing::info!(?report, "engine reconciled"),
        Err(e) if e.reason == error::reason::ENGINE_NOT_OURS => {
            // An empty, new or foreign store must never remove a live engine's calls.
            anyhow::bail!("refusing to start: {}", e.message);
        }
        Err(e) => {
            shared.needs_reconcile.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e.message, "engine not reconciled yet; will retry");
        }
    }
    shared.retire_ended().await;
    let events_task = tokio::spawn(run_engine_events(Arc::clone(&shared)));
    let follower_task = tokio::spawn(Arc::clone(&shared).run_follower());
    let pruner_task = tokio::spawn(run_pruner(Arc::clone(&shared), config.ended_retention));
    let reconcile_task = tokio::spawn(run_reconciler(
        Arc::clone(&shared),
        config.reconcile_interval,
        config.reconcile_retry,
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    use proto::directory_server::DirectoryServer;
    use proto::engine_server::EngineServer;
    use proto::interactions_server::InteractionsServer;
    use proto::supervision_server::SupervisionServer;
    health_reporter
        .set_serving::<InteractionsServer<service::InteractionsService>>()
        .await;
    health_reporter
        .set_serving::<SupervisionServer<service::SupervisionService>>()
        .await;
    health_reporter
        .set_serving::<DirectoryServer<service::DirectoryService>>()
        .await;
    health_reporter
        .set_serving::<EngineServer<service::EngineService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "gRPC serving");
    // TLS, then the layers: RPC metrics outermost so refused requests are counted too.
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.to_tonic())
            .context("configuring TLS")?;
    }
    let result = builder
        .layer(tower_layer::Stack::new(
            security::AuthLayer::new(config.auth_token.clone()),
            metrics::RpcMetricsLayer::new(Arc::clone(&rpc_metrics)),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InteractionsServer::new(service::InteractionsService {
            shared: Arc::clone(&shared),
        }))
        .add_service(SupervisionServer::new(service::SupervisionService {
            shared: Arc::clone(&shared),
        }))
        .add_service(DirectoryServer::new(service::DirectoryService {
            shared: Arc::clone(&shared),
        }))
        .add_service(EngineServer::new(service::EngineService {
            shared: Arc::clone(&shared),
        }))
        .serve_with_incoming_shutdown(
            limits::limited_incoming(
                listener,
                limits::ConnectionLimits {
                    max_connections: config.max_connections,
                    handshake_timeout: config.handshake_timeout,
                },
                Arc::clone(&rpc_metrics),
            ),
            async move {
                shutdown.await;
                let _ = stopping_tx.send(true);
            },
        )
        .await;

    let _ = metrics_stop.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    events_task.abort();
    follower_task.abort();
    let _ = follower_task.await;
    reconcile_task.abort();
    pruner_task.abort();
    let _ = events_task.await;
    let _ = reconcile_task.await;
    let _ = pruner_task.await;
    {
        let mut core = shared.core.lock().await;
        shared.write_snapshot(&mut core).await;
    }
    result.context("gRPC server")
}

/// Opens the store (redb in `data_dir`, or etcd when endpoints are configured) and
/// loads the state.
pub async fn open_shared(
    config: &ServerConfig,
    engine: Arc<dyn EngineApi>,
    stopping: tokio::sync::watch::Receiver<bool>,
    metrics: Arc<metrics::RpcMetrics>,
) -> anyhow::Result<Arc<Shared>> {
    let store = if config.etcd_endpoints.is_empty() {
        store::Store::open(&config.data_dir, config.event_retention)
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?
    } else {
        store::Store::open_etcd(
            &config.etcd_endpoints,
            &config.etcd_prefix,
            config.event_retention,
        )
        .await
        .with_context(|| {
            format!(
                "opening the cluster store on etcd {} under {}",
                config.etcd_endpoints.join(","),
                config.etcd_prefix
            )
        })?
    };
    let core = Core::load(&store)
        .await
        .context("loading the stored state")?;
    let (events, _) = broadcast::channel(4096);
    Ok(Arc::new(Shared {
        core: Mutex::new(core),
        store: Arc::new(store),
        engine: core::EngineHandle(engine),
        clock: Arc::clone(&config.clock),
        events,
        snapshot_every: config.snapshot_every.max(1),
        needs_reconcile: AtomicBool::new(false),
        reconciled_epoch: std::sync::atomic::AtomicU64::new(u64::MAX),
        adopt_engine_state: config.adopt_engine_state,
        metrics,
        stopping,
        cluster: config.cluster.clone(),
    }))
}

/// Feeds engine events into the rules until the engine's event stream ends.
async fn run_engine_events(shared: Arc<Shared>) {
    while let Some(event) = shared.engine.0.next_event().await {
        if let Err(e) = shared.handle_engine_event(event.clone()).await {
            // Stale events (a leg removed meanwhile) are refused by the rules; harmless.
            tracing::debug!(?event, error = %e.message, "engine event not applied");
        }
    }
}

/// Deletes ended interactions from the store once `retention` has passed, checking
/// every minute (or every tenth of the retention, if shorter).
async fn run_pruner(shared: Arc<Shared>, retention: Duration) {
    let period = (retention / 10).clamp(Duration::from_millis(50), Duration::from_secs(60));
    loop {
        let now_ms = shared.clock.now_ms();
        let before =
            now_ms.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        // A bounded batch per transaction; loop while batches come back full.
        loop {
            match shared.store.prune_ended(before, 1000).await {
                Ok(n) => {
                    shared
                        .metrics
                        .sidecar
                        .interactions_pruned
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if n < 1000 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning ended interactions failed");
                    break;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Reconciles every `interval`, and every `retry` while the engine is failing.
async fn run_reconciler(shared: Arc<Shared>, interval: Duration, retry: Duration) {
    let mut since_ms: u128 = 0;
    loop {
        // Every `retry`, or at once when the engine says its epoch changed (a cluster
        // node failed: its calls are re-created without waiting out the tick).
        let slept = tokio::time::Instant::now();
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = shared.engine.0.epoch_changed() => {}
        }
        since_ms += slept.elapsed().as_millis();
        // A changed engine epoch (an engine reconnected; in a cluster, a node joined or
        // failed) is repaired at the next retry tick, not the next interval.
        let epoch_changed =
            shared.engine.0.connection_epoch() != shared.reconciled_epoch.load(Ordering::Relaxed);
        if !shared.needs_reconcile.load(Ordering::Relaxed)
            && !epoch_changed
            && since_ms < interval.as_millis()
        {
            continue;
        }
        since_ms = 0;
        match shared.reconcile().await {
            Ok(report) if report != ReconcileReport::default() => {
                tracing::info!(?report, "engine repaired");
            }
            Ok(_) => {}
            Err(e) if e.reason == error::reason::ENGINE_NOT_OURS => {
                tracing::error!(error = %e.message, "engine not reconciled");
            }
            Err(e) => tracing::debug!(error = %e.message, "reconcile failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("24").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn default_grpc_address_is_loopback_50051() {
        let parsed: SocketAddr = DEFAULT_GRPC_ADDR.parse().unwrap();
        assert!(parsed.ip().is_loopback());
        assert_eq!(ServerConfig::default().grpc_addr, parsed);
    }
}
