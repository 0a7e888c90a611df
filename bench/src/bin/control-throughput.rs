//! `control-throughput`: CreateInteraction and StartMonitor rates and latency of the
//! control plane, three replicas on a 3-member etcd against one replica on the
//! embedded redb store, in the same run (issue 13, SPEC section 7).
//!
//! Each arm is real `earshot-control` servers (`earshot_control::serve_with_listeners`,
//! each on its own loopback gRPC port, in this process) programming one real
//! `earshot-engine` on its in-memory backend (in this process too: the engine's cost is
//! the same in both arms and small next to the store's). The etcd arm starts Debian's
//! `etcd` as 3 members on loopback (`earshot_etcd::testing::EtcdCluster`: fast
//! elections, private data directories on the temp dir). `--clients` concurrent gRPC
//! clients send `--calls` CreateInteraction (two legs each, distinct agents), spread
//! round-robin over the arm's replicas, then one StartMonitor per call (distinct
//! supervisors, made AVAILABLE before the timed phase). Per arm and round: requests per
//! second and p50/p99/max latency of each phase; then the median over `--rounds` and the
//! ratio etcd/redb within this run. The arms alternate (redb, etcd, redb, ...) so slow
//! drift on a shared machine hits both.
//!
//! What it does not measure: a replica per host (all replicas and etcd share this
//! machine's cores), TLS, or networks slower than loopback.
//!
//! ```sh
//! # CI mode (also run by `cargo test -p earshot-bench --test control_throughput`)
//! cargo run --release -p earshot-bench --bin control-throughput -- --ci
//! # long mode (docs/perf.md "Control throughput")
//! cargo run --release -p earshot-bench --bin control-throughput -- --calls 2000 --clients 32 --rounds 3
//! ```
//!
//! Prints one JSON document on stdout; `SKIPPED: ...` on stderr (and `"etcd": null`) when
//! etcd is not installed.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use earshot_control::{ServerConfig, proto};
use earshot_engine::backend::memory::MemoryBackend;
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine::engine::Engine;
use earshot_engine_api::EngineApi;
use earshot_etcd::testing::EtcdCluster;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::Channel;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Control-plane throughput: 3 replicas on etcd against 1 replica on redb.
#[derive(Debug, Parser)]
struct Args {
    /// Calls created (and monitored) per arm and round.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Rounds (each runs both arms); the summary is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Control replicas in the etcd arm.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// CI mode: 150 calls, 8 clients, 1 round.
    #[arg(long)]
    ci: bool,
}

/// One timed phase.
#[derive(Debug, Clone, Serialize)]
struct Phase {
    requests: usize,
    failed: usize,
    seconds: f64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The first refusal, if any (a run with refusals measures nothing useful).
    first_error: Option<String>,
}

/// One arm in one round.
#[derive(Debug, Clone, Serialize)]
struct ArmRun {
    create: Phase,
    monitor: Phase,
}

/// The medians of an arm over the rounds, and the spread (min..max) of the rates.
#[derive(Debug, Serialize)]
struct Summary {
    create_per_second: f64,
    create_per_second_min: f64,
    create_per_second_max: f64,
    create_p99_ms: f64,
    monitor_per_second: f64,
    monitor_per_second_min: f64,
    monitor_per_second_max: f64,
    monitor_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Output {
    machine: String,
    calls: usize,
    clients: usize,
    rounds: usize,
    replicas: usize,
    redb: Vec<ArmRun>,
    etcd: Option<Vec<ArmRun>>,
    redb_summary: Summary,
    etcd_summary: Option<Summary>,
    /// etcd arm / redb arm, on the medians (rates: < 1 means etcd is slower).
    ratio_create_rate: Option<f64>,
    ratio_monitor_rate: Option<f64>,
    ratio_create_p99: Option<f64>,
    ratio_monitor_p99: Option<f64>,
}

/// The engine on its in-memory backend (one shard, room for every leg).
fn start_engine(calls: usize) -> anyhow::Result<Engine> {
    let legs = 3 * calls + 64;
    let cfg = EngineConfig {
        backend: BackendKind::Memory,
        pin: false,
        seed: 7,
        shards: 1,
        port_base: 16384,
        ports_per_shard: 16384,
        max_legs_per_shard: u32::try_from(legs)?,
        max_sessions_per_shard: u32::try_from(calls + 16)?,
        ..EngineConfig::default()
    };
    Ok(Engine::start(&cfg, |_| {
        let (b, _net) = MemoryBackend::new(64, true);
        Ok(Box::new(b))
    })?)
}

/// Servers of one arm, stopped on drop of the senders (and by `stop`).
struct Arm {
    channels: Vec<Channel>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    engine: Option<Engine>,
}

impl Arm {
    async fn start(
        calls: usize,
        dirs: &[PathBuf],
        adjust: impl Fn(usize, &mut ServerConfig),
    ) -> anyhow::Result<Arm> {
        let engine = start_engine(calls)?;
        let api: Arc<dyn EngineApi> = engine.handle();
        let mut arm = Arm {
            channels: Vec::new(),
            stops: Vec::new(),
            tasks: Vec::new(),
            engine: Some(engine),
        };
        for (i, dir) in dirs.iter().enumerate() {
            let mut config = ServerConfig::new(dir);
            adjust(i, &mut config);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr: SocketAddr = listener.local_addr()?;
            let (tx, rx) = oneshot::channel::<()>();
            arm.tasks
                .push(tokio::spawn(earshot_control::serve_with_listeners(
                    config,
                    listener,
                    None,
                    Arc::clone(&api),
                    async move {
                        let _ = rx.await;
                    },
                )));
            arm.stops.push(tx);
            arm.channels.push(connect(addr).await?);
        }
        Ok(arm)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        for tx in self.stops.drain(..) {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            t.await??;
        }
        if let Some(e) = self.engine.take() {
            e.shutdown();
        }
        Ok(())
    }
}

/// Connects once the server answers (it binds before serving; the store opens first).
async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))?
            .timeout(Duration::from_secs(30))
            .connect()
            .await
        {
            let mut probe = proto::interactions_client::InteractionsClient::new(ch.clone());
            if probe
                .list_interactions(proto::ListInteractionsRequest::default())
                .await
                .is_ok()
            {
                return Ok(ch);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{addr} did not serve within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn media(port: u16) -> proto::Media {
    proto::Media {
        remote: format!("127.0.0.1:{port}"),
        codec: proto::Codec::Pcmu as i32,
        payload_type: 0,
        ptime_ms: 20,
        telephone_event_pt: Some(101),
        rtcp_mux: true,
        ..Default::default()
    }
}

fn create_request(round: usize, i: usize) -> proto::CreateInteractionRequest {
    use proto::{ParticipantKind as K, Role as R};
    let spec = |id: &str, kind: K, role: R, user: String| proto::ParticipantSpec {
        participant_id: id.into(),
        kind: kind as i32,
        role: role as i32,
        user_id: user,
        media: Some(media(9)),
    };
    proto::CreateInteractionRequest {
        interaction_id: format!("tp-{round}-{i}"),
        participants: vec![
            spec("c", K::External, R::Customer, String::new()),
            spec("a", K::Internal, R::Agent, format!("agent-{round}-{i}")),
        ],
        actor: String::new(),
    }
}

fn monitor_request(round: usize, i: usize) -> proto::StartSupervisionRequest {
    proto::StartSupervisionRequest {
        interaction_id: format!("tp-{round}-{i}"),
        supervision_id: format!("mon-{round}-{i}"),
        supervisor_user_id: format!("sup-{round}-{i}"),
        supervisor_participant_id: "s".into(),
        target_participant_id: "a".into(),
        media: Some(media(9)),
    }
}

/// Runs `op(channel, i)` for i in 0..n over `clients` concurrent clients, request i on
/// replica i mod replicas; returns the phase's figures.
async fn timed<F, Fut>(channels: &[Channel], n: usize, clients: usize, op: F) -> Phase
where
    F: Fn(Channel, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (op, next, channels) = (Arc::clone(&op), Arc::clone(&next), channels.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                if let Err(e) = op(channels[i % channels.len()].clone(), i).await {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            (lat, failed, first_error)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        if let Ok((l, f, e)) = t.await {
            lat.extend(l);
            failed += f;
            first_error = first_error.or(e);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Phase {
        requests: n,
        failed,
        seconds,
        per_second: n as f64 / seconds,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        first_error,
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

/// One round on one arm: creates, supervisors made available (untimed), monitors.
async fn run_arm(arm: &Arm, round: usize, args: &Args) -> anyhow::Result<ArmRun> {
    let create = timed(
        &arm.channels,
        args.calls,
        args.clients,
        move |ch, i| async move {
            proto::interactions_client::InteractionsClient::new(ch)
                .create_interaction(create_request(round, i))
                .await
                .map(|_| ())
        },
    )
    .await;
    // Supervisors: a directory write each, not timed.
    let setup = timed(
        &arm.channels,
        args.calls,
        args.clients,
        move |ch, i| async move {
            let mut dir = proto::directory_client::DirectoryClient::new(ch);
            let user = format!("sup-{round}-{i}");
            dir.upsert_user(proto::UpsertUserRequest {
                user_id: user.clone(),
                display_name: user.clone(),
                permissions: vec![
                    "conversation:call:monitor".into(),
                    "conversation:call:add".into(),
                ],
            })
            .await?;
            dir.set_presence(proto::SetPresenceRequest {
                user_id: user,
                presence: proto::Presence::Available as i32,
            })
            .await
            .map(|_| ())
        },
    )
    .await;
    anyhow::ensure!(setup.failed == 0, "{} supervisors not set up", setup.failed);
    let monitor = timed(
        &arm.channels,
        args.calls,
        args.clients,
        move |ch, i| async move {
            proto::supervision_client::SupervisionClient::new(ch)
                .start_monitor(monitor_request(round, i))
                .await
                .map(|_| ())
        },
    )
    .await;
    Ok(ArmRun { create, monitor })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

fn summarize(runs: &[ArmRun]) -> Summary {
    let col = |f: &dyn Fn(&ArmRun) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let min = |v: Vec<f64>| v.into_iter().fold(f64::INFINITY, f64::min);
    let max = |v: Vec<f64>| v.into_iter().fold(0.0, f64::max);
    Summary {
        create_per_second: median(col(&|r| r.create.per_second)),
        create_per_second_min: min(col(&|r| r.create.per_second)),
        create_per_second_max: max(col(&|r| r.create.per_second)),
        create_p99_ms: median(col(&|r| r.create.p99_ms)),
        monitor_per_second: median(col(&|r| r.monitor.per_second)),
        monitor_per_second_min: min(col(&|r| r.monitor.per_second)),
        monitor_per_second_max: max(col(&|r| r.monitor.per_second)),
        monitor_p99_ms: median(col(&|r| r.monitor.p99_ms)),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("{cpu}, {cores} cores")
}

/// A fresh directory under the temp dir, removed by the caller.
fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("earshot-tp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

async fn redb_round(round: usize, args: &Args, root: &Path) -> anyhow::Result<ArmRun> {
    let dirs = vec![root.join(format!("redb-{round}"))];
    let arm = Arm::start(args.calls, &dirs, |_, _| {}).await?;
    let run = run_arm(&arm, round, args).await;
    arm.stop().await?;
    run
}

async fn etcd_round(
    round: usize,
    args: &Args,
    root: &Path,
    etcd: &EtcdCluster,
) -> anyhow::Result<ArmRun> {
    let dirs: Vec<PathBuf> = (0..args.replicas)
        .map(|i| root.join(format!("etcd-{round}-{i}")))
        .collect();
    let endpoints = etcd.endpoints();
    // A fresh prefix per round: an empty store, as the redb arm's fresh directory.
    let prefix = format!("/tp-{round}/");
    let arm = Arm::start(args.calls, &dirs, |i, c| {
        let mut e = endpoints.clone();
        let members = e.len();
        e.rotate_left(i % members);
        c.etcd_endpoints = e;
        c.etcd_prefix = prefix.clone();
    })
    .await?;
    let run = run_arm(&arm, round, args).await;
    arm.stop().await?;
    run
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.ci {
        args.calls = 150;
        args.clients = 8;
        args.rounds = 1;
    }
    anyhow::ensure!(
        args.calls > 0 && args.clients > 0 && args.rounds > 0,
        "nothing to run"
    );
    let root = scratch("data")?;
    // (Checked here: the harness would print its own SKIPPED on stdout, the JSON's.)
    let etcd = if earshot_etcd::testing::etcd_binary().is_some() {
        EtcdCluster::start(3).await
    } else {
        None
    };
    if etcd.is_none() {
        eprintln!("SKIPPED: the etcd arm (no etcd binary: apt-get install etcd-server)");
    }
    let mut redb = Vec::new();
    let mut etcd_runs = Vec::new();
    for round in 0..args.rounds {
        // Alternate which arm goes first, so drift hits both.
        if round % 2 == 0 {
            redb.push(redb_round(round, &args, &root).await?);
            if let Some(e) = &etcd {
                etcd_runs.push(etcd_round(round, &args, &root, e).await?);
            }
        } else {
            if let Some(e) = &etcd {
                etcd_runs.push(etcd_round(round, &args, &root, e).await?);
            }
            redb.push(redb_round(round, &args, &root).await?);
        }
        eprintln!("round {round} done");
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(&root);
    let redb_summary = summarize(&redb);
    let etcd_summary = (!etcd_runs.is_empty()).then(|| summarize(&etcd_runs));
    let ratio =
        |f: &dyn Fn(&Summary) -> f64| etcd_summary.as_ref().map(|e| f(e) / f(&redb_summary));
    let out = Output {
        machine: machine(),
        calls: args.calls,
        clients: args.clients,
        rounds: args.rounds,
        replicas: args.replicas,
        ratio_create_rate: ratio(&|s| s.create_per_second),
        ratio_monitor_rate: ratio(&|s| s.monitor_per_second),
        ratio_create_p99: ratio(&|s| s.create_p99_ms),
        ratio_monitor_p99: ratio(&|s| s.monitor_p99_ms),
        redb,
        etcd: (!etcd_runs.is_empty()).then_some(etcd_runs),
        redb_summary,
        etcd_summary,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
