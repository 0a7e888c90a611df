//! Control-plane chaos (issue 13, SPEC section 7): real processes, real kills, under load.
//!
//! A real 3-member etcd (Debian's `etcd`, `earshot_etcd::testing::EtcdCluster`), three
//! `earshot-control` replicas as separate processes on it (`--etcd`), sharing one real
//! `earshot-engine` (socket backend on loopback, `--programmers 3`). A client creates
//! calls, a third of them supervised (monitor, coach, barge in turn), from several
//! concurrent workers; each request goes to one replica and, on a transport error or a
//! retryable status, the SAME request (same ids: the API is idempotent) goes to the next
//! replica, until it is acknowledged or a 30 s deadline passes.
//!
//! Under that load, two faults, one after the other:
//! - (a) SIGKILL of one control replica (it is restarted after the checks);
//! - (b) SIGKILL of the etcd leader, restarted once more calls were acknowledged.
//!
//! After each, through a surviving replica: every acknowledged call and supervision is
//! present (calls dropped, supervisions lost: must be 0); nothing is there twice
//! (participants, engine legs, creation and supervision events: duplicates must be 0);
//! the engine holds exactly the legs the store records (after reconciliation, within
//! 20 s); the rules still hold (a second coach of a coached agent is refused with
//! `COACH_ALREADY_ACTIVE`); `WatchEvents` on each survivor is gap-free from 1. Per fault
//! it prints one JSON line (`CHAOS {...}`) with those counts and the client's request
//! latency across the fault (p50, p99, max, in ms: the time the control plane was not
//! answering shows as the tail).
//!
//! CI mode: 150 calls per fault (about 40 s with builds warm on 2 cores). Long mode:
//! `EARSHOT_CHAOS_CALLS=2000 cargo test -p earshot --test cluster_chaos -- --nocapture`
//! (calls per fault). Prints `SKIPPED` without etcd (`apt-get install etcd-server`).

mod e2e;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e::ChildGuard;
use earshot_control::proto;
use earshot_etcd::testing::EtcdCluster;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// Calls per fault: 150 in CI, `EARSHOT_CHAOS_CALLS` for the long mode.
fn calls_per_fault() -> usize {
    std::env::var("EARSHOT_CHAOS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Concurrent client workers.
const WORKERS: usize = 6;
/// How long one request may be retried across replicas before it counts as refused.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// One attempt's own limit (a replica stuck on a dead etcd member must not hold the
/// client: the next replica is tried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

// ----------------------------------------------------------------------------------
// The processes.

/// One control replica process and the client's channel to it.
struct Replica {
    child: Option<ChildGuard>,
    grpc: SocketAddr,
    endpoints: Vec<String>,
    channel: Channel,
    log: PathBuf,
}

/// etcd, the engine and the replicas; everything is killed on drop (the guards).
struct Plant {
    dir: PathBuf,
    socket: PathBuf,
    etcd: EtcdCluster,
    _engine: ChildGuard,
    replicas: Vec<Replica>,
}

impl Plant {
    /// Starts the engine and `n` replicas on `etcd`; `None` (with the reason printed)
    /// when the engine binary cannot be had.
    async fn start(dir: &Path, etcd: EtcdCluster, n: usize, legs: usize) -> Option<Plant> {
        let engine_program = e2e::engine_binary()?;
        let socket = dir.join("engine.sock");
        // Ports per shard: a power of two with room for every leg's RTP and RTCP port;
        // the base is aligned to it and the range stays below the ephemeral ports.
        let ports_per_shard = (legs * 2 + 512).next_power_of_two().max(2048);
        let port_base = 16384;
        assert!(
            port_base + ports_per_shard <= 32768,
            "{legs} legs do not fit below the ephemeral ports"
        );
        // No media flows in this test (the legs send to a sink and hear nothing): the
        // engine's media timeout (30 s by default, which ends a silent supervisor's
        // supervision) is set beyond the test's length, so that what the checks see is
        // the control plane's doing, not the timeout's.
        let config = dir.join("engine.toml");
        std::fs::write(&config, "media_timeout_s = 86400\n").expect("write engine.toml");
        let args: Vec<String> = [
            "--config",
            &config.display().to_string(),
            "--socket",
            &socket.display().to_string(),
            "--no-pin",
            "--shards",
            "1",
            "--backend",
            "socket",
            "--port-base",
            &port_base.to_string(),
            "--ports-per-shard",
            &ports_per_shard.to_string(),
            "--bind-v4",
            "127.0.0.1",
            "--programmers",
            &n.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        let mut engine = ChildGuard::spawn(
            "earshot-engine",
            &engine_program,
            &args,
            &dir.join("engine.log"),
        );
        e2e::wait_until_accepting(&mut engine, &socket);
        let mut plant = Plant {
            dir: dir.to_path_buf(),
            socket,
            etcd,
            _engine: engine,
            replicas: Vec::new(),
        };
        for i in 0..n {
            // Each replica prefers a different etcd member first.
            let mut endpoints = plant.etcd.endpoints();
            let members = endpoints.len();
            endpoints.rotate_left(i % members);
            let grpc: SocketAddr = ([127, 0, 0, 1], e2e::free_tcp_port()).into();
            let log = dir.join(format!("control-{i}.log"));
            let (child, channel) = plant.spawn_replica(i, grpc, &endpoints, &log).await;
            plant.replicas.push(Replica {
                child: Some(child),
                grpc,
                endpoints,
                channel,
                log,
            });
        }
        Some(plant)
    }

    async fn spawn_replica(
        &self,
        i: usize,
        grpc: SocketAddr,
        endpoints: &[String],
        log: &Path,
    ) -> (ChildGuard, Channel) {
        let args = vec![
            "--etcd".to_string(),
            endpoints.join(","),
            "--engine-socket".into(),
            self.socket.display().to_string(),
            "--grpc".into(),
            grpc.to_string(),
            "--data-dir".into(),
            self.dir.join(format!("data-{i}")).display().to_string(),
            "--metrics".into(),
            "off".into(),
        ];
        let mut child = ChildGuard::spawn(
            &format!("earshot-control-{i}"),
            &e2e::control_binary(),
            &args,
            log,
        );
        // Serving first; then the client's own channel, which reconnects lazily (a
        // killed replica's requests fail fast; attempts are bounded by ATTEMPT_TIMEOUT).
        e2e::connect_when_serving(grpc, &mut child).await;
        let channel = Channel::from_shared(format!("http://{grpc}"))
            .expect("uri")
            .connect_timeout(Duration::from_millis(300))
            .connect_lazy();
        (child, channel)
    }

    /// SIGKILLs replica `i`.
    fn kill_replica(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            c.kill9();
        }
    }

    /// Restarts replica `i` on its address and endpoints.
    async fn restart_replica(&mut self, i: usize) {
        let (grpc, endpoints, log) = {
            let r = &self.replicas[i];
            (r.grpc, r.endpoints.clone(), r.log.clone())
        };
        let (child, channel) = self.spawn_replica(i, grpc, &endpoints, &log).await;
        self.replicas[i].child = Some(child);
        self.replicas[i].channel = channel;
    }

    fn channels(&self) -> Vec<Channel> {
        self.replicas.iter().map(|r| r.channel.clone()).collect()
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].child.is_some())
            .collect()
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .filter_map(|r| r.child.as_ref())
            .map(|c| format!("--- {} ---\n{}", c.name, c.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ----------------------------------------------------------------------------------
// The client: one request, retried on the next replica.

/// What the client saw across one fault.
#[derive(Default)]
struct Seen {
    /// Every request's latency to its final answer (all attempts), ms.
    latencies_ms: Vec<f64>,
    /// Retried attempts by status code.
    retried: BTreeMap<String, usize>,
    /// Requests that were never acknowledged (non-retryable refusal or deadline).
    refused: Vec<String>,
}

/// Codes a client retries on another replica with the same request: the replica or
/// its store did not answer (a dead process, an etcd election, a lost race).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
    )
}

/// Sends `f` to replica `first`, then on a retryable failure to the next, until it is
/// acknowledged, refused for good, or REQUEST_DEADLINE passes.
async fn with_failover<T, F, Fut>(
    channels: &[Channel],
    first: usize,
    seen: &Mutex<Seen>,
    what: &str,
    mut f: F,
) -> Result<T, tonic::Status>
where
    F: FnMut(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let start = Instant::now();
    let mut attempt = 0usize;
    let result = loop {
        let channel = channels[(first + attempt) % channels.len()].clone();
        let outcome = match tokio::time::timeout(ATTEMPT_TIMEOUT, f(channel)).await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded("attempt timed out")),
        };
        match outcome {
            Ok(v) => break Ok(v),
            Err(s) if retryable(s.code()) && start.elapsed() < REQUEST_DEADLINE => {
                *seen
                    .lock()
                    .await
                    .retried
                    .entry(format!("{:?}", s.code()))
                    .or_default() += 1;
                attempt += 1;
                // A full round of replicas refused: give the cluster a moment.
                if attempt.is_multiple_of(channels.len()) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(s) => break Err(s),
        }
    };
    let mut seen = seen.lock().await;
    seen.latencies_ms
        .push(start.elapsed().as_secs_f64() * 1000.0);
    if let Err(s) = &result {
        seen.refused.push(format!("{what}: {s:?}"));
    }
    result
}

/// The supervision mode of call `i`, if it is supervised (one call in three).
fn mode_of(i: usize) -> Option<proto::SupervisionMode> {
    if !i.is_multiple_of(3) {
        return None;
    }
    Some(match (i / 3) % 3 {
        0 => proto::SupervisionMode::Monitor,
        1 => proto::SupervisionMode::Coach,
        _ => proto::SupervisionMode::Barge,
    })
}

/// What the client had acknowledged.
#[derive(Default)]
struct Acked {
    calls: BTreeSet<usize>,
    supervisions: BTreeMap<usize, proto::SupervisionMode>,
}

/// Creates call `i` (and its supervision), each request with failover.
async fn run_call(
    channels: &[Channel],
    i: usize,
    sink: SocketAddr,
    seen: &Mutex<Seen>,
    acked: &Mutex<Acked>,
) {
    use proto::{ParticipantKind as K, Role as R};
    let id = format!("chaos-{i}");
    let first = i % channels.len();
    let create = proto::CreateInteractionRequest {
        interaction_id: id.clone(),
        participants: vec![
            e2e::spec("c", K::External, R::Customer, "", sink),
            e2e::spec("a", K::Internal, R::Agent, &format!("agent-{i}"), sink),
        ],
        actor: String::new(),
    };
    let created = with_failover(channels, first, seen, &id, |ch| {
        let req = create.clone();
        async move {
            proto::interactions_client::InteractionsClient::new(ch)
                .create_interaction(req)
                .await
        }
    })
    .await;
    if created.is_err() {
        return;
    }
    acked.lock().await.calls.insert(i);
    let Some(mode) = mode_of(i) else {
        return;
    };
    let user = format!("sup-{i}");
    let upsert = proto::UpsertUserRequest {
        user_id: user.clone(),
        display_name: user.clone(),
        permissions: e2e::ALL_PERMISSIONS.iter().map(|p| p.to_string()).collect(),
    };
    let presence = proto::SetPresenceRequest {
        user_id: user.clone(),
        presence: proto::Presence::Available as i32,
    };
    let ok = with_failover(channels, first + 1, seen, &user, |ch| {
        let req = upsert.clone();
        async move {
            proto::directory_client::DirectoryClient::new(ch)
                .upsert_user(req)
                .await
        }
    })
    .await
    .is_ok()
        && with_failover(channels, first + 2, seen, &user, |ch| {
            let req = presence.clone();
            async move {
                proto::directory_client::DirectoryClient::new(ch)
                    .set_presence(req)
                    .await
            }
        })
        .await
        .is_ok();
    if !ok {
        return;
    }
    let req = e2e::supervise(&id, &format!("sv-{i}"), &user, "s", "a", sink);
    let started = with_failover(channels, first, seen, &format!("sv-{i}"), |ch| {
        let req = req.clone();
        async move {
            let mut c = proto::supervision_client::SupervisionClient::new(ch);
            match mode {
                proto::SupervisionMode::Coach => c.start_coach(req).await,
                proto::SupervisionMode::Barge => c.start_barge(req).await,
                _ => c.start_monitor(req).await,
            }
        }
    })
    .await;
    if started.is_ok() {
        acked.lock().await.supervisions.insert(i, mode);
    }
}

/// Runs calls `from..to` on WORKERS concurrent workers; `progress` counts finished calls.
async fn load(
    channels: Vec<Channel>,
    from: usize,
    to: usize,
    sink: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    acked: Arc<Mutex<Acked>>,
    progress: Arc<AtomicUsize>,
) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (channels, seen, acked, progress, next) = (
            channels.clone(),
            seen.clone(),
            acked.clone(),
            progress.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                run_call(&channels, i, sink, &seen, &acked).await;
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
}

/// Waits until `progress` reaches `n` (or 60 s pass).
async fn until_progress(progress: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ----------------------------------------------------------------------------------
// The checks.

/// What a fault left, as counted through survivor replicas.
#[derive(Debug, Default)]
struct Verdict {
    calls_dropped: Vec<String>,
    supervisions_lost: Vec<String>,
    duplicates: Vec<String>,
    events: usize,
    event_gaps: Vec<String>,
    engine_mismatch: Vec<String>,
    rule_violations: Vec<String>,
    reconciled_ms: u128,
}

async fn get_interaction(ch: &Channel, id: &str) -> Result<proto::Interaction, tonic::Status> {
    proto::interactions_client::InteractionsClient::new(ch.clone())
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every retained event through `ch` (the backlog of WatchEvents from 0).
async fn all_events(ch: &Channel) -> Vec<proto::Event> {
    let mut stream = proto::interactions_client::InteractionsClient::new(ch.clone())
        .watch_events(proto::WatchEventsRequest {
            after_sequence: 0,
            interaction_id: String::new(),
            live_only: false,
        })
        .await
        .expect("WatchEvents")
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_millis(700), stream.message()).await
    {
        out.push(e);
    }
    out
}

/// The legs the store records for calls `0..upto` (as (session, participant, port)),
/// through `ch`, and the participant lists with a duplicate.
async fn stored_legs(ch: &Channel, upto: usize) -> (BTreeSet<(String, String, u16)>, Vec<String>) {
    let mut legs = BTreeSet::new();
    let mut dups = Vec::new();
    for i in 0..upto {
        let id = format!("chaos-{i}");
        let Ok(inter) = get_interaction(ch, &id).await else {
            continue;
        };
        let mut names = BTreeSet::new();
        for p in inter.participants {
            if !names.insert(p.participant_id.clone()) {
                dups.push(format!("{id}: participant {} twice", p.participant_id));
            }
            if p.leg.is_some() {
                let port = e2e::leg_local(p.leg.as_ref()).port();
                legs.insert((id.clone(), p.participant_id, port));
            }
        }
    }
    (legs, dups)
}

#[allow(clippy::too_many_lines)] // one checklist, read top to bottom
async fn verify(plant: &Plant, upto: usize, acked: &Acked, tag: &str) -> Verdict {
    let mut v = Verdict::default();
    let alive = plant.alive();
    let survivor = &plant.replicas[alive[0]].channel;

    // The engine holds exactly the stored legs once reconciliation has run.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    loop {
        let (stored, dups) = stored_legs(survivor, upto).await;
        let in_engine_list: Vec<_> = e2e::engine_legs(&plant.socket)
            .into_iter()
            .filter(|(s, _, _)| s.starts_with("chaos-"))
            .collect();
        let in_engine: BTreeSet<_> = in_engine_list.iter().cloned().collect();
        let mut keys = BTreeSet::new();
        let engine_dups: Vec<String> = in_engine_list
            .iter()
            .filter(|(s, k, _)| !keys.insert((s.clone(), k.clone())))
            .map(|(s, k, p)| format!("engine leg {s}/{k} twice (port {p})"))
            .collect();
        if (stored == in_engine && engine_dups.is_empty()) || Instant::now() > deadline {
            v.reconciled_ms = started.elapsed().as_millis();
            v.duplicates.extend(dups);
            v.duplicates.extend(engine_dups);
            for m in stored.difference(&in_engine).take(10) {
                v.engine_mismatch
                    .push(format!("stored, not in the engine: {m:?}"));
            }
            for m in in_engine.difference(&stored).take(10) {
                v.engine_mismatch
                    .push(format!("in the engine, not stored: {m:?}"));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every acknowledged call and supervision, through every survivor.
    for &r in &alive {
        let ch = &plant.replicas[r].channel;
        for &i in &acked.calls {
            let id = format!("chaos-{i}");
            match get_interaction(ch, &id).await {
                Ok(inter) if !inter.ended => {
                    for p in ["c", "a"] {
                        if !inter.participants.iter().any(|x| x.participant_id == p) {
                            v.calls_dropped
                                .push(format!("replica {r}: {id} lost participant {p}"));
                        }
                    }
                }
                other => v
                    .calls_dropped
                    .push(format!("replica {r}: {id}: {other:?}")),
            }
        }
        for (&i, &mode) in &acked.supervisions {
            let sid = format!("sv-{i}");
            let got = proto::supervision_client::SupervisionClient::new(ch.clone())
                .get_supervision(proto::GetSupervisionRequest {
                    supervision_id: sid.clone(),
                })
                .await
                .map(tonic::Response::into_inner);
            match got {
                Ok(s)
                    if s.state != proto::SupervisionState::Ended as i32
                        && s.mode == mode as i32
                        && s.leg.is_some() => {}
                other => v
                    .supervisions_lost
                    .push(format!("replica {r}: {sid}: {other:?}")),
            }
        }
    }

    // WatchEvents on each survivor: gap-free from 1, each creation and supervision
    // start recorded once.
    for &r in &alive {
        let events = all_events(&plant.replicas[r].channel).await;
        v.events = v.events.max(events.len());
        for (k, e) in events.iter().enumerate() {
            if e.sequence != k as u64 + 1 {
                v.event_gaps.push(format!(
                    "replica {r}: event #{k} has sequence {} (expected {})",
                    e.sequence,
                    k + 1
                ));
                break;
            }
        }
        let mut once: BTreeMap<(i32, String), usize> = BTreeMap::new();
        for e in &events {
            use proto::EventKind as E;
            let kind = E::try_from(e.kind).unwrap_or(E::Unspecified);
            let key = match kind {
                E::InteractionCreated => e.interaction_id.clone(),
                E::MonitorStarted | E::CoachStarted | E::BargeStarted => {
                    e.details.get("supervision_id").cloned().unwrap_or_default()
                }
                _ => continue,
            };
            *once.entry((e.kind, key)).or_default() += 1;
        }
        for ((kind, key), n) in once {
            if n > 1 {
                v.duplicates.push(format!(
                    "replica {r}: event kind {kind} for {key} {n} times"
                ));
            }
        }
    }

    // The rules still hold: a second coach of a coached agent is refused.
    let coached: Vec<usize> = acked
        .supervisions
        .iter()
        .filter(|(_, m)| **m == proto::SupervisionMode::Coach)
        .map(|(i, _)| *i)
        .collect();
    match coached.last() {
        None => v
            .rule_violations
            .push("no coach was acknowledged to test the rule on".into()),
        Some(&i) => {
            let rival = format!("rival-{tag}");
            let api = e2e::Api {
                channel: survivor.clone(),
            };
            api.user(&rival, &e2e::ALL_PERMISSIONS, proto::Presence::Available)
                .await;
            let sink: SocketAddr = ([127, 0, 0, 1], 9).into();
            let req = e2e::supervise(
                &format!("chaos-{i}"),
                &format!("rival-sv-{tag}"),
                &rival,
                "rival",
                "a",
                sink,
            );
            match api.start(proto::SupervisionMode::Coach, req).await {
                Err(s) if e2e::reason_of(&s).1 == "COACH_ALREADY_ACTIVE" => {}
                other => v
                    .rule_violations
                    .push(format!("a second coach of chaos-{i}/a: {other:?}")),
            }
        }
    }
    v
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

/// Prints the fault's JSON line and returns the failures to assert on.
async fn report(
    fault: &str,
    range: std::ops::Range<usize>,
    seen: &Mutex<Seen>,
    acked: &Acked,
    v: &Verdict,
) -> Vec<String> {
    let seen = seen.lock().await;
    let calls = range.len();
    let acked_calls = acked.calls.iter().filter(|i| range.contains(i)).count();
    let acked_supervisions = acked
        .supervisions
        .keys()
        .filter(|i| range.contains(i))
        .count();
    let mut lat = seen.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let json = serde_json::json!({
        "fault": fault,
        "calls": calls,
        "acknowledged_calls": acked_calls,
        "acknowledged_supervisions": acked_supervisions,
        "refused": seen.refused.len(),
        "calls_dropped": v.calls_dropped.len(),
        "supervisions_lost": v.supervisions_lost.len(),
        "duplicates": v.duplicates.len(),
        "engine_mismatch": v.engine_mismatch.len(),
        "event_gaps": v.event_gaps.len(),
        "events": v.events,
        "reconciled_ms": v.reconciled_ms,
        "retried": seen.retried,
        "requests": lat.len(),
        "latency_ms": {
            "p50": percentile(&lat, 0.5),
            "p99": percentile(&lat, 0.99),
            "max": lat.last().copied().unwrap_or(0.0),
        },
    });
    println!("CHAOS {json}");
    let mut failures = Vec::new();
    let mut add = |what: &str, list: &[String]| {
        if !list.is_empty() {
            failures.push(format!(
                "{fault}: {what} ({}): {:?}",
                list.len(),
                &list[..list.len().min(5)]
            ));
        }
    };
    add("refused requests", &seen.refused);
    add("calls dropped", &v.calls_dropped);
    add("supervisions lost", &v.supervisions_lost);
    add("duplicates", &v.duplicates);
    add("engine differs from the store", &v.engine_mismatch);
    add("event gaps", &v.event_gaps);
    add("rules", &v.rule_violations);
    failures
}

// ----------------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_replica_and_etcd_leader_kills_under_load_lose_nothing() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let calls = calls_per_fault();
    let tmp = tempfile::tempdir().unwrap();
    // Supervised calls have 3 legs, the others 2; plus the rule checks' legs.
    let legs = 2 * (2 * calls) + (2 * calls).div_ceil(3) + 16;
    let Some(mut plant) = Plant::start(tmp.path(), etcd, 3, legs).await else {
        return;
    };
    // Where the legs send: a bound socket nobody reads (the kernel drops what overflows).
    let sink_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink = sink_socket.local_addr().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut failures = Vec::new();

    // (a) SIGKILL of a control replica once a fifth of the calls are done.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let progress = Arc::new(AtomicUsize::new(0));
    let running = tokio::spawn(load(
        plant.channels(),
        0,
        calls,
        sink,
        seen.clone(),
        acked.clone(),
        progress.clone(),
    ));
    until_progress(&progress, calls / 5).await;
    plant.kill_replica(1);
    running.await.unwrap();
    let v = verify(&plant, calls, &*acked.lock().await, "a").await;
    failures.extend(
        report(
            "sigkill-control-replica",
            0..calls,
            &seen,
            &*acked.lock().await,
            &v,
        )
        .await,
    );
    // The killed replica comes back and reads what the others wrote meanwhile.
    plant.restart_replica(1).await;
    let last = format!("chaos-{}", calls - 1);
    let back = get_interaction(&plant.replicas[1].channel, &last).await;
    if back.is_err() {
        failures.push(format!(
            "the restarted replica does not read {last}: {back:?}"
        ));
    }

    // (b) SIGKILL of the etcd leader once a fifth of the calls are done; restarted
    // when another fifth has been done.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let progress = Arc::new(AtomicUsize::new(0));
    let running = tokio::spawn(load(
        plant.channels(),
        calls,
        2 * calls,
        sink,
        seen.clone(),
        acked.clone(),
        progress.clone(),
    ));
    until_progress(&progress, calls / 5).await;
    let leader = plant.etcd.leader().await.expect("an etcd leader");
    plant.etcd.kill(leader);
    let killed_at = Instant::now();
    until_progress(&progress, 2 * calls / 5).await;
    plant.etcd.restart(leader);
    let down_ms = killed_at.elapsed().as_millis();
    running.await.unwrap();
    let new_leader = plant.etcd.leader().await;
    println!("etcd leader n{leader} killed for {down_ms} ms; leader now {new_leader:?}");
    let v = verify(&plant, 2 * calls, &*acked.lock().await, "b").await;
    failures.extend(
        report(
            "sigkill-etcd-leader",
            calls..2 * calls,
            &seen,
            &*acked.lock().await,
            &v,
        )
        .await,
    );

    assert!(
        failures.is_empty(),
        "failures:\n  {}\n{}",
        failures.join("\n  "),
        plant.logs()
    );
}
