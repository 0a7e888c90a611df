//! `earshot-node`: the agent of one engine node in a cluster (docs/cluster.md).
//!
//! Runs beside an `earshot-engine` (started with `--programmers N`, N the number of
//! control replicas; the agent connects as `ClientRole::Agent`, which takes no
//! programming slot and no events) and:
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
//!    here have all ended);
//! 6. **detects dead peers fast** (module `earshot_control::peers`): it pings every
//!    other node's agent over UDP; a node that every live peer has not heard for
//!    `--suspect-after-ms` is declared dead and its lease revoked, so its calls move
//!    well before its TTL; and a node that hears none of its peers mutes its engine
//!    (`Request::Mute`) before they could declare it dead.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use earshot_control::cluster::{self, Registered, StreamReport, StreamReports};
use earshot_control::peers::{self, GuardTimes, PeerMessage, PeerTracker};
use earshot_control::placement::{self, NodeInfo};
use earshot_engine_api::EngineSnapshot;
use earshot_engine_api::protocol::{ClientFrame, Hello, ServerFrame, read_frame, write_frame};
use earshot_engine_api::{EngineError, Request, Response};
use earshot_etcd::{Etcd, absent, delete, put, value_is};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

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
    /// Where this agent answers its peers' liveness pings (`ip:port`; port 0 picks
    /// one). Default: the media address, any port.
    #[arg(long)]
    peer_listen: Option<std::net::SocketAddr>,
    /// A peer that answers no ping for this long is suspected; once every other live
    /// node suspects it, it is declared dead and its lease revoked (ms). 0 turns fast
    /// failure detection off (nodes then move only when their lease expires).
    #[arg(long, default_value_t = 400)]
    suspect_after_ms: u64,
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
            // missing; neighbours then learn it at their next ARP). It runs for about a
            // second (two announcements), so it is not waited for here: a blocked
            // runtime thread would delay the peers' pings and the vouch.
            let announce = std::process::Command::new("arping")
                .args(["-U", "-c", "2", "-w", "1", "-I", dev, &address.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            match announce {
                Ok(mut child) => {
                    tokio::task::spawn_blocking(move || child.wait());
                }
                Err(e) => tracing::warn!(%address, error = %e, "arping not run"),
            }
        }
    }

    /// Claims `wanted` under `lease`, all at once (one compare-and-put each: etcd
    /// picks one holder per address); what is won comes up on the device.
    async fn claim(&mut self, etcd: &Etcd, prefix: &str, lease: i64, wanted: Vec<IpAddr>) {
        let mut claims = tokio::task::JoinSet::new();
        for address in wanted {
            let (etcd, key, me) = (
                etcd.clone(),
                format!("{prefix}addresses/held/{address}"),
                self.node_id.clone(),
            );
            claims.spawn(async move {
                let won = etcd
                    .txn(vec![absent(key.clone())], vec![put(key, me, lease)], vec![])
                    .await
                    .is_ok_and(|r| r.succeeded);
                (address, won)
            });
        }
        while let Some(Ok((address, won))) = claims.join_next().await {
            if won {
                tracing::info!(%address, "address claimed");
                self.ip("add", address);
                self.held.insert(address);
            }
        }
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
        let (nodes_prefix, homes_prefix, held_prefix) = (
            format!("{prefix}nodes/"),
            format!("{prefix}addresses/home/"),
            format!("{prefix}addresses/held/"),
        );
        // One round trip: the three reads at once (each linearizable on its own; a
        // claim decided on a slightly stale view is settled by compare-and-put).
        let (nodes, homes, held) = tokio::join!(
            etcd.range_prefix(nodes_prefix.as_bytes(), 0),
            etcd.range_prefix(homes_prefix.as_bytes(), 0),
            etcd.range_prefix(held_prefix.as_bytes(), 0),
        );
        let (nodes, homes, held) = (nodes?, homes?, held?);
        let live: Vec<NodeInfo> = nodes
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Registered>(&kv.value).ok())
            .map(|r| r.info)
            .filter(|n| !n.draining)
            .collect();
        let holders: BTreeMap<IpAddr, String> = held
            .kvs
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let address = key.rsplit('/').next()?.parse().ok()?;
                Some((address, String::from_utf8_lossy(&kv.value).into_owned()))
            })
            .collect();
        // What etcd says we hold: a claim can be lost with a lease, and a survivor
        // that declared a peer dead may have handed us its addresses.
        let lost: Vec<IpAddr> = self
            .held
            .iter()
            .filter(|a| holders.get(*a) != Some(&self.node_id))
            .copied()
            .collect();
        for address in lost {
            // Held by someone else now (or by nobody): it must not stay up here too.
            tracing::warn!(%address, "address no longer held by this node");
            self.ip("del", address);
            self.held.remove(&address);
        }
        for (address, holder) in &holders {
            if *holder == self.node_id && self.held.insert(*address) {
                tracing::info!(%address, "address handed over to this node");
                self.ip("add", *address);
            }
        }
        let now = tokio::time::Instant::now();
        let mut wanted = Vec::new();
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
                    wanted.push(address);
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
                    wanted.push(address);
                }
            }
        }
        if !wanted.is_empty() {
            self.claim(etcd, prefix, lease, wanted).await;
        }
        Ok(())
    }
}

/// Claims and releases virtual addresses every 25 ms while registered under `lease`.
async fn manage_addresses(
    etcd: Etcd,
    prefix: String,
    lease: i64,
    addresses: Arc<tokio::sync::Mutex<Addresses>>,
    legs_on: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
) {
    loop {
        let on = legs_on.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(e) = addresses
            .lock()
            .await
            .manage(&etcd, &prefix, lease, &on)
            .await
        {
            tracing::warn!(error = %e, "address pass failed");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Fences the engine (`fenced`: every session removed, programming refused: the node
/// sends nothing more and control replicas that still route to it cannot reprogram it)
/// or lifts the fence once the node is registered again.
async fn fence(socket: &Path, fenced: bool) -> io::Result<()> {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        engine_call(&socket, Hello::agent(), Request::Fence { fenced }).map(|_| ())
    })
    .await
    .map_err(io::Error::other)?
}

/// Mutes the engine's output, or vouches for it for `vouch` (`Request::Mute`).
async fn mute(socket: &Path, muted: bool, vouch: Duration) -> io::Result<()> {
    let socket = socket.to_owned();
    let for_ms = (!muted).then(|| u32::try_from(vouch.as_millis()).unwrap_or(u32::MAX));
    tokio::task::spawn_blocking(move || {
        engine_call(&socket, Hello::agent(), Request::Mute { muted, for_ms }).map(|_| ())
    })
    .await
    .map_err(io::Error::other)?
}

/// What etcd last told the guard about this node itself.
#[derive(Clone, Copy, Debug, Default)]
struct SelfView {
    /// Nobody suspected this node as of a read that is valid until then.
    cleared_until: Option<tokio::time::Instant>,
    /// A peer suspects this node (as of the last read).
    suspected: bool,
    /// When etcd last showed this node's registration under its current lease.
    registration_seen: Option<tokio::time::Instant>,
}

/// Every [`peers::PING_INTERVAL`]: decides from what this node hears now (and what
/// etcd last said) whether it must be silent, and tells the engine, either "mute" or
/// "send for the next `suspect_after`". So the engine goes silent on its own when this
/// agent dies or stalls, and whenever this node hears no peer while etcd does not clear
/// it. Once muted (a lapsed vouch included) it stays muted until etcd shows its
/// registration alive again: a node declared dead meanwhile never resumes.
async fn vouch(
    socket: PathBuf,
    tracker: Arc<Mutex<PeerTracker>>,
    view: Arc<Mutex<SelfView>>,
    muted_flag: Arc<std::sync::atomic::AtomicBool>,
) {
    let times = tracker.lock().unwrap_or_else(|e| e.into_inner()).times();
    let mut muted = false;
    let mut muted_at = tokio::time::Instant::now();
    let mut applied: Option<bool> = None;
    let mut last_vouch: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(peers::PING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let isolated = tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .isolated(now);
        let v = *view.lock().unwrap_or_else(|e| e.into_inner());
        let cleared = !v.suspected && v.cleared_until.is_some_and(|c| now < c);
        let must = (isolated && !cleared) || v.suspected;
        if let Some(lapsed) = last_vouch.map(|t| t + times.suspect_after)
            && !muted
            && now >= lapsed
        {
            // This agent did not vouch in time (it stalled): the engine muted itself
            // then, and the peers may have declared this node dead meanwhile.
            muted = true;
            muted_at = lapsed;
        }
        if must && !muted {
            muted = true;
            muted_at = now;
        } else if muted && !must && v.registration_seen.is_some_and(|t| t > muted_at) {
            muted = false;
        }
        muted_flag.store(muted, std::sync::atomic::Ordering::Relaxed);
        // A vouch lasts `suspect_after`: past it the engine is silent, before any peer
        // could have declared this node dead (`suspect_after + confirm`).
        match mute(&socket, muted, times.suspect_after).await {
            Ok(()) => {
                if !muted {
                    last_vouch = Some(now);
                }
                if applied != Some(muted) {
                    if muted {
                        tracing::error!(
                            isolated,
                            suspected = v.suspected,
                            "engine output muted: no peer answers, or a peer suspects this node"
                        );
                    } else if applied.is_some() {
                        tracing::warn!("engine output resumed");
                    }
                }
                applied = Some(muted);
            }
            Err(e) => {
                tracing::error!(error = %e, muted, "cannot reach the engine to mute or vouch")
            }
        }
    }
}

/// Answers peers' pings and pings every live peer each [`peers::PING_INTERVAL`]. Runs
/// apart from everything that waits on etcd, so a slow etcd never makes this node
/// look dead to its peers.
async fn ping_peers(socket: tokio::net::UdpSocket, me: String, tracker: Arc<Mutex<PeerTracker>>) {
    let mut buf = [0u8; 512];
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(peers::PING_INTERVAL / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut odd = false;
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                match PeerMessage::decode(&buf[..n]) {
                    Some(PeerMessage::Ping { seq, .. }) => {
                        let pong = PeerMessage::Pong { from: me.clone(), seq }.encode();
                        let _ = socket.send_to(&pong, from).await;
                    }
                    Some(PeerMessage::Pong { from, .. }) => {
                        let now = tokio::time::Instant::now();
                        tracker.lock().unwrap_or_else(|e| e.into_inner()).heard(now, &from);
                    }
                    None => {}
                }
            }
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let targets: Vec<std::net::SocketAddr> = {
                    let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                    t.tick(now);
                    t.targets().collect()
                };
                odd = !odd;
                if odd {
                    seq += 1;
                    let ping = PeerMessage::Ping { from: me.clone(), seq }.encode();
                    for to in targets {
                        let _ = socket.send_to(&ping, to).await;
                    }
                }
            }
        }
    }
}

/// A bounded etcd call: the guard must decide on time even when etcd does not answer.
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, earshot_etcd::EtcdError>>,
) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(250), f)
        .await
        .ok()
        .and_then(Result::ok)
}

/// The fast failure detector's etcd side (module `earshot_control::peers`), every
/// [`peers::PING_INTERVAL`]: live peers, suspicions recorded and withdrawn, whether a
/// peer suspects this node, verdicts and lease revocations.
async fn guard_peers(
    etcd: Etcd,
    prefix: String,
    me: String,
    tracker: Arc<Mutex<PeerTracker>>,
    lease: watch::Receiver<Option<i64>>,
    view: Arc<Mutex<SelfView>>,
    muted: Arc<std::sync::atomic::AtomicBool>,
) {
    let times = tracker.lock().unwrap_or_else(|e| e.into_inner()).times();
    let mut marked: BTreeSet<(String, i64)> = BTreeSet::new();
    // When each of our suspicions was in etcd (the suspected node mutes on seeing
    // any suspicion of it), and since when this node could judge at all (not muted,
    // every peer reachable): the confirmation runs from the later of the two.
    let mut written_at: BTreeMap<(String, i64), tokio::time::Instant> = BTreeMap::new();
    let mut judging_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(peers::PING_INTERVAL / 2).await;
        let Some(my_lease) = *lease.borrow() else {
            continue;
        };
        let asked = tokio::time::Instant::now();
        // Who lives (and whether we do), and does anyone suspect us: one round trip.
        let nodes_prefix = format!("{prefix}nodes/");
        let against_prefix = peers::suspicions_of(&prefix, &me, my_lease);
        let (nodes, against) = tokio::join!(
            bounded(etcd.range_prefix(nodes_prefix.as_bytes(), 0)),
            bounded(etcd.range_prefix(against_prefix.as_bytes(), 0)),
        );
        if let Some(r) = against {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            v.suspected = !r.kvs.is_empty();
            if r.kvs.is_empty() {
                v.cleared_until = Some(asked + times.clear_for);
            }
        }
        let Some(nodes) = nodes else { continue };
        let mut others: Vec<String> = Vec::new();
        let mut live = Vec::new();
        let mut all_have_peer = true;
        for r in nodes
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Registered>(&kv.value).ok())
        {
            if r.info.node_id == me {
                if r.lease == my_lease {
                    view.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .registration_seen = Some(asked);
                }
                continue;
            }
            others.push(r.info.node_id.clone());
            match r.info.peer.as_deref().and_then(|p| p.parse().ok()) {
                Some(addr) => live.push((r.info.node_id, addr, r.lease)),
                None => all_have_peer = false,
            }
        }
        let now = tokio::time::Instant::now();
        let suspects = {
            let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            t.set_peers(asked, live);
            t.suspects(now)
        };
        // Our suspicions, under our lease (they go with us), withdrawn when heard again.
        let mut ops = Vec::new();
        for s in &suspects {
            if !marked.contains(s) {
                tracing::warn!(peer = %s.0, "peer answers no ping: suspected");
                ops.push(put(
                    peers::suspicion_key(&prefix, &s.0, s.1, &me),
                    me.clone(),
                    my_lease,
                ));
            }
        }
        for m in &marked {
            if !suspects.contains(m) {
                tracing::info!(peer = %m.0, "suspicion withdrawn (peer heard again, or gone)");
                ops.push(delete(
                    peers::suspicion_key(&prefix, &m.0, m.1, &me),
                    Vec::new(),
                ));
            }
        }
        if !ops.is_empty() && bounded(etcd.txn(vec![], ops, vec![])).await.is_some() {
            let written = tokio::time::Instant::now();
            for s in &suspects {
                written_at.entry(s.clone()).or_insert(written);
            }
            marked = suspects.iter().cloned().collect();
        }
        written_at.retain(|k, _| marked.contains(k));
        // Verdicts: a peer every other live node suspects, once our own suspicion has
        // stood in etcd for `confirm`; never while this node is muted itself.
        if !all_have_peer || muted.load(std::sync::atomic::Ordering::Relaxed) {
            judging_since = tokio::time::Instant::now();
            continue;
        }
        for (node, node_lease) in &suspects {
            let of = peers::suspicions_of(&prefix, node, *node_lease);
            let Some(r) = bounded(etcd.range_prefix(of.as_bytes(), 0)).await else {
                continue;
            };
            let suspecters: Vec<String> = r
                .kvs
                .iter()
                .filter_map(|kv| {
                    String::from_utf8_lossy(&kv.key)
                        .strip_prefix(&of)
                        .map(str::to_owned)
                })
                .collect();
            let required = others
                .iter()
                .filter(|id| *id != node)
                .map(String::as_str)
                .chain(std::iter::once(me.as_str()));
            if !peers::unanimous(&suspecters, required) {
                continue;
            }
            let Some(written) = written_at.get(&(node.clone(), *node_lease)) else {
                continue;
            };
            let since = (*written).max(judging_since);
            if tokio::time::Instant::now().saturating_duration_since(since) < times.confirm {
                continue;
            }
            declare_dead(&etcd, &prefix, (&me, my_lease), (node, *node_lease), &nodes).await;
        }
    }
}

/// Records the verdict that `node` (under `node_lease`) is dead, in one transaction.
async fn declare_dead(
    etcd: &Etcd,
    prefix: &str,
    (me, my_lease): (&str, i64),
    (node, node_lease): (&str, i64),
    nodes: &earshot_etcd::Range,
) {
    // Of two nodes that cannot hear each other, the first verdict wins: no
    // verdict may name the node recording one. The same transaction removes the
    // dead node's registration and hands each address it held to the survivor
    // that rendezvous hashing ranks first (under that survivor's lease), so
    // control replicas re-create its calls at once; its lease is revoked after.
    let survivors: Vec<(NodeInfo, i64)> = nodes
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Registered>(&kv.value).ok())
        .filter(|r| r.info.node_id != node && !r.info.draining)
        .map(|r| (r.info, r.lease))
        .collect();
    let held_prefix = format!("{prefix}addresses/held/");
    let Some(held) = bounded(etcd.range_prefix(held_prefix.as_bytes(), 0)).await else {
        return;
    };
    let verdict = peers::verdict_key(prefix, node, node_lease);
    let mut compares = vec![
        absent(peers::verdict_key(prefix, me, my_lease)),
        absent(verdict.clone()),
    ];
    let mut ops = vec![
        put(verdict, me.to_owned(), my_lease),
        delete(format!("{prefix}nodes/{node}"), Vec::new()),
    ];
    for kv in held.kvs.iter().filter(|kv| kv.value == node.as_bytes()) {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let address = key.rsplit('/').next().unwrap_or_default().to_owned();
        let Some((heir, heir_lease)) = survivors.iter().max_by(|a, b| {
            placement::score(&a.0, &address)
                .total_cmp(&placement::score(&b.0, &address))
                .then_with(|| b.0.node_id.cmp(&a.0.node_id))
        }) else {
            continue;
        };
        compares.push(value_is(key.clone(), node.to_owned()));
        ops.push(put(key, heir.node_id.clone(), *heir_lease));
    }
    let recorded = bounded(etcd.txn(compares, ops, vec![])).await;
    if recorded.is_some_and(|v| v.succeeded) {
        tracing::error!(peer = %node, "peer declared dead: its calls and addresses move");
        if bounded(etcd.revoke(node_lease)).await.is_none() {
            tracing::warn!(peer = %node, "dead peer's lease not revoked yet (it expires)");
        }
    }
}

/// Fast failure detection (docs/cluster.md): binds the socket that answers the peers'
/// pings (its address goes into `info`), then starts the tasks that ping the peers,
/// vouch for this node's engine and judge the peers.
async fn start_failure_detection(
    args: &Args,
    etcd: &Etcd,
    prefix: &str,
    info: &mut NodeInfo,
    lease: watch::Receiver<Option<i64>>,
) -> anyhow::Result<()> {
    let listen = match args.peer_listen {
        Some(a) => a,
        None => std::net::SocketAddr::new(args.media_address.parse()?, 0),
    };
    let socket = tokio::net::UdpSocket::bind(listen).await?;
    info.peer = Some(socket.local_addr()?.to_string());
    let times = GuardTimes::from_suspect_after(Duration::from_millis(args.suspect_after_ms));
    let tracker = Arc::new(Mutex::new(PeerTracker::new(times)));
    let view = Arc::new(Mutex::new(SelfView::default()));
    let muted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(ping_peers(socket, info.node_id.clone(), tracker.clone()));
    tokio::spawn(vouch(
        args.engine_socket.clone(),
        tracker.clone(),
        view.clone(),
        muted.clone(),
    ));
    tokio::spawn(guard_peers(
        etcd.clone(),
        prefix.to_owned(),
        info.node_id.clone(),
        tracker,
        lease,
        view,
        muted,
    ));
    Ok(())
}

/// The load and stream reports: the engine's snapshot, read every report interval,
/// becomes the node's leg count (in its registration), the legs per address (for the
/// address manager) and the streams a survivor continues from.
#[derive(Default)]
struct Reporter {
    /// The stream reports' own lease, which outlives the node's by
    /// `STREAM_REPORT_TTL_S`: survivors read them after the node is gone.
    lease: Option<(i64, earshot_etcd::KeepAlive)>,
}

impl Reporter {
    async fn report(
        &mut self,
        etcd: &Etcd,
        prefix: &str,
        engine_socket: &Path,
        info: &mut NodeInfo,
        registration: &cluster::Registration,
        legs_on: &Mutex<BTreeMap<IpAddr, usize>>,
    ) {
        let at_ms = wall_ms();
        let Ok(snap) = snapshot(engine_socket).await else {
            return;
        };
        info.legs = snap.legs.len() as u64;
        {
            let mut on = legs_on.lock().unwrap_or_else(|e| e.into_inner());
            on.clear();
            for leg in &snap.legs {
                *on.entry(leg.local.ip()).or_default() += 1;
            }
        }
        let live = self
            .lease
            .as_ref()
            .is_some_and(|(_, k)| k.deadline.borrow().is_some());
        if !live {
            self.lease = match etcd.grant(STREAM_REPORT_TTL_S).await {
                Ok(l) => Some((l, etcd.keep_alive(l, STREAM_REPORT_TTL_S))),
                Err(e) => {
                    tracing::warn!(error = %e, "no lease for stream reports");
                    None
                }
            };
        }
        let streams_key = cluster::streams_key(prefix, &info.node_id, registration.lease);
        let reports = stream_reports(&snap, at_ms);
        if let (Some((lease, _)), Ok(value)) = (&self.lease, serde_json::to_vec(&reports))
            && let Err(e) = etcd
                .txn(vec![], vec![put(streams_key, value, *lease)], vec![])
                .await
        {
            tracing::warn!(error = %e, "stream report failed");
        }
        let registered = Registered {
            info: info.clone(),
            number: registration.number,
            lease: registration.lease,
        };
        if let Err(e) = cluster::update(etcd, prefix, registration.lease, &registered).await {
            tracing::warn!(error = %e, "load report failed");
        }
    }
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
        peer: None,
    };
    // Fast failure detection: a UDP socket for peers' pings, its address registered.
    let (lease_tx, lease_rx) = watch::channel(None::<i64>);
    if args.suspect_after_ms > 0 {
        start_failure_detection(&args, &etcd, &prefix, &mut info, lease_rx).await?;
    }
    // The block is recorded apart from the lease (survivors must know a dead node's
    // addresses to take them over), after the first registration: whoever reads it
    // then sees this node live and leaves its addresses to it.
    let home_key = format!("{prefix}addresses/home/{}", info.node_id);
    let block = serde_json::to_vec(&args.addresses)?;
    let mut block_recorded = false;
    let mut registered_before = false;
    let addresses = Arc::new(tokio::sync::Mutex::new(Addresses {
        node_id: info.node_id.clone(),
        device: args.address_device.clone(),
        claim_step: Duration::from_millis(args.claim_step_ms),
        held: BTreeSet::new(),
        unheld_since: BTreeMap::new(),
    }));
    let mut reporter = Reporter::default();
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
        let _ = lease_tx.send(Some(registration.lease));
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
        let deadline = registration.keep_alive.deadline.clone();
        let mut next_report = tokio::time::Instant::now();
        let legs_on: Arc<Mutex<BTreeMap<IpAddr, usize>>> = Arc::default();
        // Addresses are managed in a task of their own, so that a claim never waits
        // behind a load report.
        let manager = (!args.addresses.is_empty()).then(|| {
            tokio::spawn(manage_addresses(
                etcd.clone(),
                prefix.clone(),
                registration.lease,
                addresses.clone(),
                legs_on.clone(),
            ))
        });
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
                if let Some(m) = &manager {
                    m.abort();
                }
                addresses.lock().await.drop_all();
                break;
            }
            if tokio::time::Instant::now() >= next_report {
                next_report += Duration::from_millis(args.report_interval_ms);
                reporter
                    .report(
                        &etcd,
                        &prefix,
                        &args.engine_socket,
                        &mut info,
                        &registration,
                        &legs_on,
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Our old lease is gone or going: start again as a new, empty registration.
        let _ = lease_tx.send(None);
        let _ = etcd.revoke(registration.lease).await;
        info.legs = 0;
    }
}
