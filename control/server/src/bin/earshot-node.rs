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
//! 4. **reports its streams** (`streams/{node_id}`, not under the lease: it must outlive
//!    the node): each leg's SSRC, next sequence/index and timestamp, so that a survivor
//!    re-creating the leg continues the stream;
//! 5. **holds virtual addresses**: its own block (`--address`, claimed under its lease
//!    at `addresses/held/{address}`), and, when a node dies, those of the dead node's
//!    addresses that rendezvous hashing ranks it first for (the next in rank claims
//!    after a delay if the first does not: etcd's compare-and-put picks one holder).
//!    With `--address-device` it brings each held address up on that interface (`ip
//!    address add`, then a gratuitous ARP with `arping` where installed) and down when it
//!    lets it go (fenced, or a taken-over address whose own node is back and whose legs
//!    here have all ended).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use earshot_control::cluster::{self, Registered, StreamReport, StreamReports};
use earshot_control::placement::{self, NodeInfo};
use earshot_engine_api::EngineSnapshot;
use earshot_engine_api::protocol::{ClientFrame, Hello, ServerFrame, read_frame, write_frame};
use earshot_engine_api::{EngineError, Request, Response};
use earshot_etcd::{Etcd, absent, delete, put};

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
    /// How often the load and the streams are reported (ms).
    #[arg(long, default_value_t = 1000)]
    report_interval_ms: u64,
    /// This node's own virtual addresses (comma-separated or repeated): each
    /// interaction placed here binds one; each moves to a survivor when this node dies.
    /// None: legs bind the engine's own address and do not move.
    #[arg(long = "address", value_delimiter = ',')]
    addresses: Vec<std::net::IpAddr>,
    /// Bring held addresses up and down on this interface (needs CAP_NET_ADMIN). Without
    /// it the addresses must already be local (loopback aliases, or managed elsewhere).
    #[arg(long)]
    address_device: Option<String>,
    /// How long the next survivor in rank waits before claiming a dead node's address
    /// the first did not (ms).
    #[arg(long, default_value_t = 300)]
    claim_step_ms: u64,
}

/// How long a node's stream reports outlive it (s): survivors read them within the
/// lease TTL plus a reconciliation pass.
const STREAM_REPORT_TTL_S: i64 = 60;

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

async fn snapshot(socket: &Path) -> io::Result<EngineSnapshot> {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        match engine_call(&socket, Hello::observer(), Request::Snapshot)? {
            Response::Snapshot(s) => Ok(s),
            _ => Err(io::Error::other("Snapshot answered otherwise")),
        }
    })
    .await
    .map_err(io::Error::other)?
}

/// Each configured leg's outbound stream, as a survivor would continue it.
fn stream_reports(snap: &EngineSnapshot, at_ms: u64) -> StreamReports {
    let legs = snap
        .legs
        .iter()
        .filter_map(|leg| {
            let media = leg.media.as_ref()?;
            let stream = snap.activity_of(leg.leg)?.stream?;
            Some((
                leg.session.clone(),
                leg.leg_key.clone(),
                StreamReport {
                    stream,
                    clock_rate_hz: media.codec.rtp_clock_hz(),
                    ptime_ms: media.ptime_ms,
                },
            ))
        })
        .collect();
    StreamReports { at_ms, legs }
}

/// Wall-clock milliseconds since the epoch (the report's time; survivors extrapolate
/// from it with their own clocks, which NTP keeps within milliseconds).
#[allow(clippy::disallowed_methods)]
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The virtual addresses this node holds, and what it knows of everyone's.
struct Addresses {
    node_id: String,
    home: Vec<IpAddr>,
    device: Option<String>,
    claim_step: Duration,
    /// Held by this node now.
    held: BTreeSet<IpAddr>,
    /// Addresses seen without a holder, and since when (for the claim delay by rank).
    unheld_since: BTreeMap<IpAddr, tokio::time::Instant>,
}

impl Addresses {
    /// Runs `ip` (iproute2) on the device; failures are logged, not fatal.
    fn ip(&self, verb: &str, address: IpAddr) {
        let Some(dev) = &self.device else { return };
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        let out = std::process::Command::new("ip")
            .args(["address", verb, &format!("{address}/{prefix}"), "dev", dev])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                tracing::warn!(%address, verb, stderr = %String::from_utf8_lossy(&o.stderr).trim(), "ip address failed")
            }
            Err(e) => tracing::warn!(%address, verb, error = %e, "ip not run"),
        }
        if verb == "add" && address.is_ipv4() {
            // Tell the segment the address lives here now (best effort: arping may be
            // missing; neighbours then learn it at their next ARP).
            let _ = std::process::Command::new("arping")
                .args(["-U", "-c", "2", "-w", "1", "-I", dev, &address.to_string()])
                .output();
        }
    }

    /// Claims `address` under `lease`; true if this node holds it now.
    async fn claim(&mut self, etcd: &Etcd, prefix: &str, lease: i64, address: IpAddr) -> bool {
        let key = format!("{prefix}addresses/held/{address}");
        let won = etcd
            .txn(
                vec![absent(key.clone())],
                vec![put(key, self.node_id.clone(), lease)],
                vec![],
            )
            .await
            .is_ok_and(|r| r.succeeded);
        if won {
            tracing::info!(%address, "address claimed");
            self.ip("add", address);
            self.held.insert(address);
        }
        won
    }

    /// Lets `address` go: down on the device, claim deleted.
    async fn release(&mut self, etcd: &Etcd, prefix: &str, address: IpAddr) {
        self.ip("del", address);
        self.held.remove(&address);
        let key = format!("{prefix}addresses/held/{address}");
        let _ = etcd
            .txn(vec![], vec![delete(key, Vec::new())], vec![])
            .await;
        tracing::info!(%address, "address released");
    }

    /// Everything this node holds goes down at once (fencing): the claims go with the
    /// lease.
    fn drop_all(&mut self) {
        for address in std::mem::take(&mut self.held) {
            self.ip("del", address);
        }
    }

    /// One pass: claim our own unheld addresses, and dead nodes' unheld addresses this
    /// node ranks first for (or next, after the step delay); let a taken-over address
    /// go back once its own node lives and nothing here uses it.
    async fn manage(
        &mut self,
        etcd: &Etcd,
        prefix: &str,
        lease: i64,
        legs_on: &BTreeMap<IpAddr, usize>,
    ) -> Result<(), earshot_etcd::EtcdError> {
        let nodes = etcd
            .range_prefix(format!("{prefix}nodes/").as_bytes(), 0)
            .await?;
        let live: Vec<NodeInfo> = nodes
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Registered>(&kv.value).ok())
            .map(|r| r.info)
            .filter(|n| !n.draining)
            .collect();
        let homes = etcd
            .range_prefix(
                format!("{prefix}addresses/home/").as_bytes(),
                nodes.revision,
            )
            .await?;
        let held = etcd
            .range_prefix(
                format!("{prefix}addresses/held/").as_bytes(),
                nodes.revision,
            )
            .await?;
        let holders: BTreeMap<IpAddr, String> = held
            .kvs
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let address = key.rsplit('/').next()?.parse().ok()?;
                Some((address, String::from_utf8_lossy(&kv.value).into_owned()))
            })
            .collect();
        // What etcd says we hold (a claim can be lost with a lease).
        self.held.retain(|a| holders.get(a) == Some(&self.node_id));
        let now = tokio::time::Instant::now();
        for kv in &homes.kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let owner = key.rsplit('/').next().unwrap_or_default().to_owned();
            let Ok(block) = serde_json::from_slice::<Vec<IpAddr>>(&kv.value) else {
                continue;
            };
            let owner_lives = live.iter().any(|n| n.node_id == owner);
            for address in block {
                if holders.contains_key(&address) {
                    self.unheld_since.remove(&address);
                    let ours = holders.get(&address) == Some(&self.node_id);
                    if ours
                        && owner != self.node_id
                        && owner_lives
                        && legs_on.get(&address).copied().unwrap_or(0) == 0
                    {
                        self.release(etcd, prefix, address).await;
                    }
                    continue;
                }
                if owner == self.node_id {
                    self.claim(etcd, prefix, lease, address).await;
                    continue;
                }
                if owner_lives {
                    // Its own node takes it back.
                    continue;
                }
                let since = *self.unheld_since.entry(address).or_insert(now);
                let mut ranked: Vec<(f64, &str)> = live
                    .iter()
                    .map(|n| {
                        (
                            placement::score(n, &address.to_string()),
                            n.node_id.as_str(),
                        )
                    })
                    .collect();
                ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
                let Some(rank) = ranked.iter().position(|(_, id)| *id == self.node_id) else {
                    continue;
                };
                if now >= since + self.claim_step * rank as u32 {
                    self.claim(etcd, prefix, lease, address).await;
                }
            }
        }
        Ok(())
    }
}

/// Fences the engine (`fenced`: every session removed, programming refused: the node
/// sends nothing more and control replicas that still route to it cannot reprogram it)
/// or lifts the fence once the node is registered again.
async fn fence(socket: &Path, fenced: bool) -> io::Result<()> {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        engine_call(&socket, Hello::current(), Request::Fence { fenced }).map(|_| ())
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
    let etcd = Etcd::new(&args.etcd)?;
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
        addresses: args.addresses.iter().map(ToString::to_string).collect(),
    };
    // The block is recorded apart from the lease (survivors must know a dead node's
    // addresses to take them over), after the first registration: whoever reads it
    // then sees this node live and leaves its addresses to it.
    let home_key = format!("{prefix}addresses/home/{}", info.node_id);
    let block = serde_json::to_vec(&args.addresses)?;
    let mut block_recorded = false;
    let mut registered_before = false;
    let mut addresses = Addresses {
        node_id: info.node_id.clone(),
        home: args.addresses.clone(),
        device: args.address_device.clone(),
        claim_step: Duration::from_millis(args.claim_step_ms),
        held: BTreeSet::new(),
        unheld_since: BTreeMap::new(),
    };
    // Stream reports live under a lease of their own that outlives this node's by
    // `STREAM_REPORT_TTL_S`: survivors read them after the node is gone.
    let mut report_lease: Option<(i64, earshot_etcd::KeepAlive)> = None;
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
        // Every registration but the first follows a fence (the inner loop below ends
        // only by fencing).
        if registered_before {
            match fence(&args.engine_socket, false).await {
                Ok(()) => tracing::info!("fence lifted: registered again, as an empty node"),
                Err(e) => tracing::error!(error = %e, "fence not lifted"),
            }
        }
        registered_before = true;
        if !block_recorded {
            match etcd
                .txn(
                    vec![],
                    vec![put(home_key.clone(), block.clone(), 0)],
                    vec![],
                )
                .await
            {
                Ok(_) => block_recorded = true,
                Err(e) => tracing::warn!(error = %e, "cannot record the address block yet"),
            }
        }
        let streams_key = cluster::streams_key(&prefix, &info.node_id, registration.lease);
        let deadline = registration.keep_alive.deadline.clone();
        let mut next_report = tokio::time::Instant::now();
        let mut next_manage = tokio::time::Instant::now();
        let mut legs_on: BTreeMap<IpAddr, usize> = BTreeMap::new();
        loop {
            // The lease is known to live until `deadline`; fence `margin` before it.
            let lost = match *deadline.borrow() {
                Some(d) => tokio::time::Instant::now() + margin >= d,
                None => true,
            };
            if lost {
                tracing::error!(node_id = %info.node_id, "lease about to expire: fencing (every session stopped)");
                match fence(&args.engine_socket, true).await {
                    Ok(()) => tracing::warn!("fenced: every session stopped, programming refused"),
                    Err(e) => tracing::error!(error = %e, "fencing failed"),
                }
                addresses.drop_all();
                break;
            }
            if !addresses.home.is_empty() && tokio::time::Instant::now() >= next_manage {
                next_manage = tokio::time::Instant::now() + Duration::from_millis(50);
                if let Err(e) = addresses
                    .manage(&etcd, &prefix, registration.lease, &legs_on)
                    .await
                {
                    tracing::warn!(error = %e, "address pass failed");
                }
            }
            if tokio::time::Instant::now() >= next_report {
                next_report += Duration::from_millis(args.report_interval_ms);
                let at_ms = wall_ms();
                if let Ok(snap) = snapshot(&args.engine_socket).await {
                    info.legs = snap.legs.len() as u64;
                    legs_on.clear();
                    for leg in &snap.legs {
                        *legs_on.entry(leg.local.ip()).or_default() += 1;
                    }
                    let live = report_lease
                        .as_ref()
                        .is_some_and(|(_, k)| k.deadline.borrow().is_some());
                    if !live {
                        report_lease = match etcd.grant(STREAM_REPORT_TTL_S).await {
                            Ok(l) => Some((l, etcd.keep_alive(l, STREAM_REPORT_TTL_S))),
                            Err(e) => {
                                tracing::warn!(error = %e, "no lease for stream reports");
                                None
                            }
                        };
                    }
                    let reports = stream_reports(&snap, at_ms);
                    if let (Some((lease, _)), Ok(value)) =
                        (&report_lease, serde_json::to_vec(&reports))
                        && let Err(e) = etcd
                            .txn(
                                vec![],
                                vec![put(streams_key.clone(), value, *lease)],
                                vec![],
                            )
                            .await
                    {
                        tracing::warn!(error = %e, "stream report failed");
                    }
                    let registered = Registered {
                        info: info.clone(),
                        number: registration.number,
                        lease: registration.lease,
                    };
                    if let Err(e) =
                        cluster::update(&etcd, &prefix, registration.lease, &registered).await
                    {
                        tracing::warn!(error = %e, "load report failed");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Our old lease is gone or going: start again as a new, empty registration.
        let _ = etcd.revoke(registration.lease).await;
        info.legs = 0;
    }
}
