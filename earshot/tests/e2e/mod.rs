//! Helpers for the process-level end-to-end tests: child processes killed on drop, a
//! gRPC client to a running sidecar, and a media pump that talks tones from real UDP
//! sockets and records what each socket hears.
//!
//! The pump runs on its own thread so that media keeps flowing while the test drives
//! gRPC, kills processes and restarts them: what each endpoint receives is stamped with
//! its arrival time, and the test asks afterwards what was heard in a time window.

#![allow(dead_code)]
// Real processes and real sockets: waits and arrival stamps use the real clock.
#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use earshot_control::proto;
use earshot_srtp::SrtpSuite;
use earshot_srtp::reference::{LibSrtp, MAX_TRAILER_LEN, RefSession};
use tonic::transport::Channel;

// ----------------------------------------------------------------------------------
// Child processes.

/// A child process that is killed (SIGKILL) and reaped when dropped, so that a failed
/// assertion never leaves an engine or a sidecar running.
#[derive(Debug)]
pub struct ChildGuard {
    /// Name used in messages.
    pub name: String,
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `program args...` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> ChildGuard {
        Self::spawn_with_env(name, program, args, log, &[])
    }

    /// [`ChildGuard::spawn`] with extra environment variables `env`.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> ChildGuard {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open child log");
        let err = out.try_clone().expect("clone child log");
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({}): {e}", program.display()));
        ChildGuard {
            name: name.into(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// Starts `program args...` with stdout piped to the caller (the returned pipe:
    /// a child that streams what it produces, read by the test as it comes) and stderr
    /// appended to `log`.
    pub fn spawn_piped(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> (ChildGuard, std::process::ChildStdout) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open child log");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({}): {e}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let guard = ChildGuard {
            name: name.into(),
            child: Some(child),
            log: log.to_path_buf(),
        };
        (guard, stdout)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "{} exited with {status}; log:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// The last lines of the process's output.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what the process said: its log lives in a temporary
        // directory that is gone once the test ends.
        if std::thread::panicking() {
            eprintln!("--- last lines of {} ---\n{}", self.name, self.log_tail());
        }
    }
}

/// Waits (at most 15 s) until `engine`'s programming socket accepts; panics with its
/// log if it exits first or never does.
pub fn wait_until_accepting(engine: &mut ChildGuard, socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        engine.assert_running();
        assert!(
            Instant::now() < deadline,
            "{}: socket {} never accepted:\n{}",
            engine.name,
            socket.display(),
            engine.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The engine's legs as (session, leg key, local port), read by an observer client
/// (which may read but never program).
pub fn engine_legs(socket: &Path) -> Vec<(String, String, u16)> {
    use earshot_engine_api::protocol::{ClientFrame, Hello, ServerFrame, read_frame, write_frame};
    use earshot_engine_api::{Request, Response};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("engine socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write_frame(&mut s, &Hello::observer()).unwrap();
    let hello: Hello = read_frame(&mut s).unwrap().expect("hello");
    assert_eq!(hello.refused, None, "observer refused");
    let call = ClientFrame::Call {
        id: 1,
        request: Request::Snapshot,
    };
    write_frame(&mut s, &call).unwrap();
    loop {
        match read_frame::<_, ServerFrame>(&mut s).expect("snapshot reply") {
            Some(ServerFrame::Reply {
                result: Ok(Response::Snapshot(snap)),
                ..
            }) => {
                return snap
                    .legs
                    .into_iter()
                    .map(|l| (l.session, l.leg_key, l.local.port()))
                    .collect();
            }
            Some(ServerFrame::Event(_)) => {}
            other => panic!("snapshot answered {other:?}"),
        }
    }
}

/// A loopback TCP port nobody listens on right now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

static NEXT_BASE: AtomicUsize = AtomicUsize::new(0);

/// An engine port base (a multiple of 1024 below the ephemeral range, so the test's own
/// sockets never take the engine's ports) whose first ports are free. Each call in this
/// test binary gets a different base.
pub fn free_port_base() -> u16 {
    const CANDIDATES: [u16; 10] = [14, 15, 16, 17, 18, 19, 20, 21, 12, 13];
    loop {
        let i = NEXT_BASE.fetch_add(1, Ordering::Relaxed);
        assert!(i < CANDIDATES.len(), "no free engine port base");
        let base = CANDIDATES[i] * 1024;
        let free = (base..base + 16).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
}

/// Where cargo put this test's binaries (`target/<profile>`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable inside target/<profile>/deps")
        .to_path_buf()
}

/// The engine binary next to this test's target dir, built if missing; `None` (with the
/// reason printed) when it cannot be had.
pub fn engine_binary() -> Option<PathBuf> {
    sibling_binary("earshot-engine", "earshot-engine")
}

/// The sidecar binary (`earshot-control`, of the control package), built if missing.
/// Panics when it cannot be built: every test that asks for it needs it.
pub fn control_binary() -> PathBuf {
    sibling_binary("earshot-control", "earshot-control").expect("the earshot-control binary builds")
}

/// The node agent (`earshot-node`, of the control package), built if missing.
pub fn node_binary() -> PathBuf {
    sibling_binary("earshot-control", "earshot-node").expect("the earshot-node binary builds")
}

/// A binary of another workspace package, in this test's target dir: cargo builds only
/// the binaries of the package under test, so others are built here when missing.
fn sibling_binary(package: &str, bin: &str) -> Option<PathBuf> {
    let profile_dir = target_profile_dir();
    let path = profile_dir.join(bin);
    if path.exists() {
        return Some(path);
    }
    let target_dir = profile_dir.parent()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() && path.exists() => Some(path),
        other => {
            println!("SKIPPED: {bin} missing and not buildable: {other:?}");
            None
        }
    }
}

/// Connects to the sidecar at `addr`, waiting until its health service says SERVING.
pub async fn connect_when_serving(addr: SocketAddr, child: &mut ChildGuard) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        child.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} did not serve gRPC on {addr} within 20 s; log:\n{}",
            child.name,
            child.log_tail()
        );
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let serving = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                });
            if serving {
                return channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The engine's configuration for one `earshot` of a test: one shard on loopback at
/// `port_base`, the given I/O `backend` (`socket`, `io_uring` or `auto`).
pub fn engine_toml(dir: &Path, port_base: u16, backend: &str) -> PathBuf {
    let path = dir.join("engine.toml");
    std::fs::write(
        &path,
        format!(
            "port_base = {port_base}\nports_per_shard = 1024\npin = false\n\
             bind_v4 = \"127.0.0.1\"\nmax_legs_per_shard = 256\nmax_sessions_per_shard = 64\n\
             backend = \"{backend}\"\n"
        ),
    )
    .expect("write engine.toml");
    path
}

/// Starts `earshot` (engine and sidecar in one process, this package's binary) on
/// loopback with the I/O `backend`, a fresh data directory under `dir` and a free port
/// range, and connects to it once it serves.
pub async fn start_earshot(dir: &Path, backend: &str) -> (ChildGuard, Api) {
    start_earshot_with_env(dir, backend, &[]).await
}

/// [`start_earshot`] with extra environment variables for the process.
pub async fn start_earshot_with_env(
    dir: &Path,
    backend: &str,
    env: &[(&str, &str)],
) -> (ChildGuard, Api) {
    let program = PathBuf::from(env!("CARGO_BIN_EXE_earshot"));
    let grpc: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let args = vec![
        "--grpc".to_string(),
        grpc.to_string(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--no-pin".into(),
        "--engine-config".into(),
        engine_toml(dir, free_port_base(), backend)
            .display()
            .to_string(),
        "--metrics".into(),
        "off".into(),
    ];
    let mut child =
        ChildGuard::spawn_with_env("earshot", &program, &args, &dir.join("earshot.log"), env);
    let channel = connect_when_serving(grpc, &mut child).await;
    (child, Api { channel })
}

// ----------------------------------------------------------------------------------
// gRPC.

/// Typed clients over one channel.
#[derive(Debug, Clone)]
pub struct Api {
    /// The channel.
    pub channel: Channel,
}

impl Api {
    pub fn interactions(&self) -> proto::interactions_client::InteractionsClient<Channel> {
        proto::interactions_client::InteractionsClient::new(self.channel.clone())
    }
    pub fn supervision(&self) -> proto::supervision_client::SupervisionClient<Channel> {
        proto::supervision_client::SupervisionClient::new(self.channel.clone())
    }
    pub fn directory(&self) -> proto::directory_client::DirectoryClient<Channel> {
        proto::directory_client::DirectoryClient::new(self.channel.clone())
    }
    pub fn engine(&self) -> proto::engine_client::EngineClient<Channel> {
        proto::engine_client::EngineClient::new(self.channel.clone())
    }

    /// The engine's drop counter `reason`, summed over its cores (GetStats).
    pub async fn drops(&self, reason: &str) -> u64 {
        let stats = self
            .engine()
            .get_stats(proto::GetStatsRequest {})
            .await
            .unwrap_or_else(|e| panic!("GetStats: {e:?}"))
            .into_inner();
        stats
            .cores
            .iter()
            .flat_map(|c| &c.drops)
            .filter(|d| d.name == reason)
            .map(|d| d.value)
            .sum()
    }

    /// Creates or replaces a user with `permissions` and sets its presence.
    pub async fn user(&self, user_id: &str, permissions: &[&str], presence: proto::Presence) {
        let mut dir = self.directory();
        dir.upsert_user(proto::UpsertUserRequest {
            user_id: user_id.into(),
            display_name: format!("User {user_id}"),
            permissions: permissions.iter().map(|p| (*p).to_string()).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("UpsertUser {user_id}: {e:?}"));
        dir.set_presence(proto::SetPresenceRequest {
            user_id: user_id.into(),
            presence: presence as i32,
        })
        .await
        .unwrap_or_else(|e| panic!("SetPresence {user_id}: {e:?}"));
    }

    /// StartMonitor / StartCoach / StartBarge, returning the supervision.
    pub async fn start(
        &self,
        mode: proto::SupervisionMode,
        req: proto::StartSupervisionRequest,
    ) -> Result<proto::SupervisionInfo, tonic::Status> {
        let mut sup = self.supervision();
        let r = match mode {
            proto::SupervisionMode::Monitor => sup.start_monitor(req).await,
            proto::SupervisionMode::Coach => sup.start_coach(req).await,
            proto::SupervisionMode::Barge => sup.start_barge(req).await,
            proto::SupervisionMode::Unspecified => panic!("no mode"),
        }?;
        Ok(r.into_inner().supervision.expect("supervision in response"))
    }

    /// StopSupervision.
    pub async fn stop(&self, supervision_id: &str) {
        self.supervision()
            .stop_supervision(proto::StopSupervisionRequest {
                supervision_id: supervision_id.into(),
                actor: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopSupervision {supervision_id}: {e:?}"));
    }

    /// GetInteraction.
    pub async fn interaction(&self, id: &str) -> proto::Interaction {
        self.interactions()
            .get_interaction(proto::GetInteractionRequest {
                interaction_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetInteraction {id}: {e:?}"))
            .into_inner()
    }
}

/// Every permission of SPEC section 2.
pub const ALL_PERMISSIONS: [&str; 5] = [
    "conversation:call:monitor",
    "conversation:call:coach",
    "conversation:call:barge",
    "conversation:call:add",
    "analytics:interaction:view",
];

/// A PCMU 20 ms leg sending to `remote`.
pub fn media(remote: SocketAddr) -> proto::Media {
    proto::Media {
        remote: remote.to_string(),
        codec: proto::Codec::Pcmu as i32,
        payload_type: 0,
        ptime_ms: 20,
        telephone_event_pt: Some(101),
        rtcp_mux: true,
        auto_answer: None,
        srtp: None,
        ..Default::default()
    }
}

/// A participant spec.
pub fn spec(
    id: &str,
    kind: proto::ParticipantKind,
    role: proto::Role,
    user_id: &str,
    remote: SocketAddr,
) -> proto::ParticipantSpec {
    proto::ParticipantSpec {
        participant_id: id.into(),
        kind: kind as i32,
        role: role as i32,
        user_id: user_id.into(),
        media: Some(media(remote)),
    }
}

/// A start-supervision request.
pub fn supervise(
    interaction: &str,
    supervision: &str,
    user: &str,
    participant: &str,
    target: &str,
    remote: SocketAddr,
) -> proto::StartSupervisionRequest {
    proto::StartSupervisionRequest {
        interaction_id: interaction.into(),
        supervision_id: supervision.into(),
        supervisor_user_id: user.into(),
        supervisor_participant_id: participant.into(),
        target_participant_id: target.into(),
        media: Some(media(remote)),
    }
}

/// Every ordered pair `(listener, source)` of distinct members: everyone hears everyone.
pub fn all_pairs(members: &[Who]) -> Vec<(Who, Who)> {
    let mut v = Vec::new();
    for &l in members {
        for &s in members {
            if l != s {
                v.push((l, s));
            }
        }
    }
    v
}

/// The `local` address of a participant's leg.
pub fn local_of(inter: &proto::Interaction, participant_id: &str) -> SocketAddr {
    let p = inter
        .participants
        .iter()
        .find(|p| p.participant_id == participant_id)
        .unwrap_or_else(|| panic!("participant {participant_id} in {inter:?}"));
    leg_local(p.leg.as_ref())
}

/// Parses a leg's `local`.
pub fn leg_local(leg: Option<&proto::Leg>) -> SocketAddr {
    let leg = leg.expect("a leg");
    leg.local
        .parse()
        .unwrap_or_else(|e| panic!("leg local {:?}: {e}", leg.local))
}

/// The gRPC code and the `google.rpc.ErrorInfo` reason (domain `earshot`) of a refusal.
pub fn reason_of(status: &tonic::Status) -> (tonic::Code, String) {
    use tonic_types::StatusExt;
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo detail in {status:?}"));
    assert_eq!(info.domain, "earshot", "ErrorInfo domain of {status:?}");
    (status.code(), info.reason)
}

// ----------------------------------------------------------------------------------
// Tones.

/// One talking endpoint of the tests, each with its own tone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Customer,
    Agent,
    Supervisor,
    Specialist,
}

impl Who {
    /// Every endpoint.
    pub const ALL: [Who; 4] = [Who::Customer, Who::Agent, Who::Supervisor, Who::Specialist];

    pub fn idx(self) -> usize {
        self as usize
    }

    /// Multiples of 8000/160 = 50 Hz: a whole number of periods per 20 ms frame, so the
    /// Goertzel bins do not leak into each other.
    pub fn tone_hz(self) -> f64 {
        match self {
            Who::Customer => 500.0,
            Who::Agent => 900.0,
            Who::Supervisor => 1400.0,
            Who::Specialist => 2100.0,
        }
    }
}

const SAMPLE_RATE_HZ: f64 = 8000.0;
const FRAME_SAMPLES: usize = 160;
const PTIME: Duration = Duration::from_millis(20);
/// Tone amplitude: -12 dBFS, so that four tones mixed do not clip.
const TONE_DBFS: f64 = -12.0;
/// A tone is heard when its mean power is at most this far below the sent power...
pub const PRESENT_DB: f64 = -6.0;
/// ...and not heard when at least this far below.
pub const ABSENT_DB: f64 = -30.0;

fn tone_amplitude() -> f64 {
    32767.0 * 10f64.powf(TONE_DBFS / 20.0)
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// G.711 mu-law encode (the classic Sun reference algorithm).
pub fn ulaw_encode(pcm: i16) -> u8 {
    let mut s = i32::from(pcm);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(ULAW_CLIP) + ULAW_BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// G.711 mu-law decode.
pub fn ulaw_decode(code: u8) -> i16 {
    let u = !code;
    let exponent = i32::from((u >> 4) & 7);
    let mantissa = i32::from(u & 0x0F);
    let t = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    (if u & 0x80 != 0 { -t } else { t }) as i16
}

/// Power of `hz` in `frame` relative to one sent tone's power (linear).
fn relative_power(frame: &[i16], hz: f64) -> f64 {
    let n = frame.len() as f64;
    let w = 2.0 * std::f64::consts::PI * hz / SAMPLE_RATE_HZ;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in frame {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let mag2 = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let amp = 2.0 * mag2.max(0.0).sqrt() / n;
    (amp / tone_amplitude()).powi(2)
}

fn rtp(seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The SRTP of one pump endpoint, done by libsrtp (the independent implementation):
/// `tx` protects what the endpoint sends (with the key it gave the engine as
/// `remote_key`), `rx` unprotects what it receives (with the engine's `local_key`).
#[derive(Debug)]
pub struct SrtpEndpoint {
    pub tx: RefSession,
    pub rx: RefSession,
}

/// What an SRTP endpoint of the pump saw. Failures are counted only while it has keys:
/// before that (the leg exists, the response with the engine's key is on its way) the
/// packets are counted in `before_keys` and dropped.
#[derive(Debug, Clone, Default)]
pub struct SrtpCounts {
    /// SRTP packets that libsrtp authenticated and decrypted.
    pub rtp_ok: u64,
    /// SRTP packets libsrtp refused, with the last libsrtp status seen.
    pub rtp_failed: u64,
    /// SRTCP compounds libsrtp authenticated and decrypted.
    pub rtcp_ok: u64,
    /// SRTCP compounds libsrtp refused.
    pub rtcp_failed: u64,
    /// The last libsrtp error status of a refused packet.
    pub last_error: Option<i32>,
    /// Packets that arrived while the endpoint had no keys.
    pub before_keys: u64,
    /// SRTCP sender reports the endpoint sent.
    pub rtcp_sent: u64,
    /// Packets libsrtp could not protect for sending.
    pub protect_failed: u64,
    /// After [`Pump::add_rx_key`]: SRTP packets that only the previous receive key
    /// (the one replaced) authenticated and decrypted...
    pub rtp_ok_previous: u64,
    /// ...SRTCP compounds that only the previous receive key decrypted...
    pub rtcp_ok_previous: u64,
    /// ...and when the last of either arrived.
    pub last_ok_previous: Option<Instant>,
    /// SRTP packets the current receive key decrypted since [`Pump::add_rx_key`].
    pub rtp_ok_since_rx_key: u64,
    /// When the endpoint started protecting with the key of [`Pump::switch_tx_at`].
    pub tx_switched_at: Option<Instant>,
    /// How many sender reports it had sent (`Pump::sr_sent`) when it switched.
    pub sr_sent_before_switch: usize,
}

/// How often an SRTP endpoint sends an SRTCP sender report.
const SR_INTERVAL: Duration = Duration::from_millis(500);
/// The CNAME of the pump's sender reports.
const PUMP_CNAME: &[u8] = b"pump";

/// One endpoint in the pump.
#[derive(Debug)]
struct Talker {
    who: Who,
    sock: UdpSocket,
    /// Where it sends; `None` while it has no leg.
    dest: Option<SocketAddr>,
    ssrc: u32,
    seq: u16,
    ts: u32,
    sample: u64,
    /// RTP packets received (RTCP set aside), with their arrival time: decrypted ones
    /// on an SRTP endpoint.
    received: Vec<(Instant, Vec<u8>)>,
    /// An SRTP endpoint: it sends and accepts nothing in the clear.
    secure: bool,
    /// Its libsrtp sessions once it has keys.
    srtp: Option<SrtpEndpoint>,
    /// A re-keyed endpoint's previous receive session, tried when the current one
    /// refuses a packet (a phone accepts both keys while the re-key settles).
    rx_previous: Option<RefSession>,
    /// A send session to switch to at the given time (the phone's re-key).
    tx_next: Option<(Instant, RefSession)>,
    /// The RTCP compounds the current receive session decrypted since the last
    /// [`Pump::add_rx_key`].
    rtcp_since_rx_key: Vec<Vec<u8>>,
    counts: SrtpCounts,
    /// The RTCP compounds it received, decrypted (SRTP endpoints only).
    rtcp: Vec<Vec<u8>>,
    /// The middle 32 bits of the NTP timestamp of every sender report it sent.
    sr_ntp_mid: Vec<u32>,
    next_sr: Instant,
    packets_sent: u32,
    octets_sent: u32,
}

impl Talker {
    fn next_packet(&mut self) -> Vec<u8> {
        let amp = tone_amplitude();
        let w = 2.0 * std::f64::consts::PI * self.who.tone_hz() / SAMPLE_RATE_HZ;
        let mut payload = [0u8; FRAME_SAMPLES];
        for (i, b) in payload.iter_mut().enumerate() {
            let s = (amp * (w * (self.sample + i as u64) as f64).sin()).round() as i16;
            *b = ulaw_encode(s);
        }
        let p = rtp(self.seq, self.ts, self.ssrc, &payload);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        self.sample += FRAME_SAMPLES as u64;
        p
    }

    /// Sends the next tone packet to `dest`: in the clear, or protected by libsrtp on an
    /// SRTP endpoint with keys (an SRTP endpoint without keys sends nothing).
    fn send_next(&mut self, dest: SocketAddr) {
        if self.secure && self.srtp.is_none() {
            return;
        }
        self.switch_tx_if_due();
        let mut p = self.next_packet();
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self.octets_sent.wrapping_add(FRAME_SAMPLES as u32);
        if let Some(srtp) = self.srtp.as_mut() {
            let len = p.len();
            p.resize(len + MAX_TRAILER_LEN, 0);
            match srtp.tx.protect_rtp(&mut p, len) {
                Ok(n) => p.truncate(n),
                Err(e) => {
                    self.counts.protect_failed += 1;
                    self.counts.last_error = Some(e.0);
                    return;
                }
            }
        }
        let _ = self.sock.send_to(&p, dest);
    }

    /// An SRTP endpoint's SRTCP sender report (SR and SDES CNAME), when one is due.
    fn send_report_if_due(&mut self, dest: SocketAddr, epoch: Instant, now: Instant) {
        self.switch_tx_if_due();
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        if now < self.next_sr {
            return;
        }
        self.next_sr = now + SR_INTERVAL;
        // An NTP-format timestamp of the pump's own clock: only its middle 32 bits
        // matter, the engine echoes them as LSR.
        let since = now - epoch;
        let ntp = ((since.as_secs() + 1) << 32)
            | ((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000);
        let mut p = sender_report(self.ssrc, ntp, self.ts, self.packets_sent, self.octets_sent);
        let len = p.len();
        p.resize(len + MAX_TRAILER_LEN, 0);
        match srtp.tx.protect_rtcp(&mut p, len) {
            Ok(n) => {
                p.truncate(n);
                if self.sock.send_to(&p, dest).is_ok() {
                    self.sr_ntp_mid.push((ntp >> 16) as u32);
                    self.counts.rtcp_sent += 1;
                }
            }
            Err(e) => {
                self.counts.protect_failed += 1;
                self.counts.last_error = Some(e.0);
            }
        }
    }

    /// Protects with the session of [`Pump::switch_tx_at`] from its time on.
    fn switch_tx_if_due(&mut self) {
        let due = self
            .tx_next
            .as_ref()
            .is_some_and(|(at, _)| Instant::now() >= *at);
        if !due {
            return;
        }
        if let (Some((_, tx)), Some(srtp)) = (self.tx_next.take(), self.srtp.as_mut()) {
            srtp.tx = tx;
            self.counts.tx_switched_at = Some(Instant::now());
            self.counts.sr_sent_before_switch = self.sr_ntp_mid.len();
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 2048];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => self.take(&mut buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // ICMP errors of an earlier send (a removed leg's port): not media.
                Err(_) => {}
            }
        }
    }

    /// One datagram received.
    fn take(&mut self, packet: &mut [u8]) {
        let n = packet.len();
        let is_rtcp = n >= 2 && (192..=223).contains(&packet[1]);
        if !self.secure {
            if !is_rtcp && n >= 12 {
                self.received.push((Instant::now(), packet.to_vec()));
            }
            return;
        }
        let Some(srtp) = self.srtp.as_mut() else {
            self.counts.before_keys += 1;
            return;
        };
        // libsrtp may have touched a packet it refused: the previous key gets a copy.
        let copy = self.rx_previous.as_ref().map(|_| packet.to_vec());
        let mut unprotected = if is_rtcp {
            srtp.rx.unprotect_rtcp(packet)
        } else {
            srtp.rx.unprotect_rtp(packet)
        };
        let mut by_previous = false;
        if let (Err(_), Some(previous), Some(copy)) = (unprotected, self.rx_previous.as_mut(), copy)
        {
            packet.copy_from_slice(&copy);
            let again = if is_rtcp {
                previous.unprotect_rtcp(packet)
            } else {
                previous.unprotect_rtp(packet)
            };
            if again.is_ok() {
                unprotected = again;
                by_previous = true;
                self.counts.last_ok_previous = Some(Instant::now());
                if is_rtcp {
                    self.counts.rtcp_ok_previous += 1;
                } else {
                    self.counts.rtp_ok_previous += 1;
                }
            }
        }
        match (unprotected, is_rtcp) {
            (Ok(len), true) => {
                self.counts.rtcp_ok += 1;
                self.rtcp.push(packet[..len].to_vec());
                if !by_previous {
                    self.rtcp_since_rx_key.push(packet[..len].to_vec());
                }
            }
            (Ok(len), false) => {
                self.counts.rtp_ok += 1;
                if !by_previous {
                    self.counts.rtp_ok_since_rx_key += 1;
                }
                if len >= 12 {
                    self.received.push((Instant::now(), packet[..len].to_vec()));
                }
            }
            (Err(e), rtcp) => {
                if rtcp {
                    self.counts.rtcp_failed += 1;
                } else {
                    self.counts.rtp_failed += 1;
                }
                self.counts.last_error = Some(e.0);
            }
        }
    }
}

/// An RTCP compound of one sender report (no report blocks) and an SDES CNAME chunk.
fn sender_report(ssrc: u32, ntp: u64, rtp_ts: u32, packets: u32, octets: u32) -> Vec<u8> {
    // SR: V=2, RC=0, PT=200, length 6 (28 octets).
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&ntp.to_be_bytes());
    p.extend_from_slice(&rtp_ts.to_be_bytes());
    p.extend_from_slice(&packets.to_be_bytes());
    p.extend_from_slice(&octets.to_be_bytes());
    // SDES: V=2, SC=1, PT=202; one chunk: SSRC, CNAME item, end item, padding to 32 bits.
    let mut chunk = ssrc.to_be_bytes().to_vec();
    chunk.extend_from_slice(&[1, PUMP_CNAME.len() as u8]);
    chunk.extend_from_slice(PUMP_CNAME);
    chunk.push(0);
    while !chunk.len().is_multiple_of(4) {
        chunk.push(0);
    }
    let words = (4 + chunk.len()) / 4 - 1;
    p.extend_from_slice(&[0x81, 202, 0, words as u8]);
    p.extend_from_slice(&chunk);
    p
}

/// The report blocks of an RTCP compound's SR and RR packets: `(source SSRC, LSR)`.
pub fn report_blocks(compound: &[u8]) -> Vec<(u32, u32)> {
    let mut blocks = Vec::new();
    let mut rest = compound;
    while rest.len() >= 4 {
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if len > rest.len() {
            break;
        }
        let (packet, tail) = rest.split_at(len);
        let count = usize::from(packet[0] & 0x1F);
        let first = match packet[1] {
            200 => Some(28),
            201 => Some(8),
            _ => None,
        };
        if let Some(first) = first {
            for b in packet[first..].chunks_exact(24).take(count) {
                let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                blocks.push((word(0), word(16)));
            }
        }
        rest = tail;
    }
    blocks
}

/// What the pump measured for one listener over a window.
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    /// Mean power of each endpoint's tone, dB relative to the sent tone.
    pub db: [f64; 4],
    /// Frames analysed.
    pub frames: usize,
}

/// Four tone talkers on real loopback UDP sockets, paced at 20 ms on their own thread.
#[derive(Debug)]
pub struct Pump {
    talkers: Arc<Mutex<Vec<Talker>>>,
    addrs: [SocketAddr; 4],
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    /// Binds the four sockets and starts the pump (nobody sends until given a leg).
    pub fn start() -> Pump {
        let talkers: Vec<Talker> = Who::ALL
            .iter()
            .map(|&who| {
                let sock = UdpSocket::bind("127.0.0.1:0").expect("bind talker");
                sock.set_nonblocking(true).expect("nonblocking");
                Talker {
                    who,
                    sock,
                    dest: None,
                    ssrc: 0x5000_0000 + who.idx() as u32,
                    seq: 1000 * who.idx() as u16,
                    ts: 9000 * who.idx() as u32,
                    sample: 0,
                    received: Vec::new(),
                    secure: false,
                    srtp: None,
                    rx_previous: None,
                    tx_next: None,
                    rtcp_since_rx_key: Vec::new(),
                    counts: SrtpCounts::default(),
                    rtcp: Vec::new(),
                    sr_ntp_mid: Vec::new(),
                    next_sr: Instant::now(),
                    packets_sent: 0,
                    octets_sent: 0,
                }
            })
            .collect();
        let addrs = [0, 1, 2, 3].map(|i| talkers[i].sock.local_addr().expect("addr"));
        let talkers = Arc::new(Mutex::new(talkers));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (talkers, stop) = (Arc::clone(&talkers), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("e2e-pump".into())
                .spawn(move || {
                    let start = Instant::now();
                    let mut tick: u32 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let due = start + PTIME * tick;
                        let now = Instant::now();
                        {
                            let mut ts = talkers.lock().unwrap_or_else(|e| e.into_inner());
                            if now >= due {
                                for t in ts.iter_mut() {
                                    if let Some(dest) = t.dest {
                                        t.send_next(dest);
                                        t.send_report_if_due(dest, start, now);
                                    }
                                }
                                tick += 1;
                            }
                            for t in ts.iter_mut() {
                                t.drain();
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
                .expect("spawn pump")
        };
        Pump {
            talkers,
            addrs,
            stop,
            thread: Some(thread),
        }
    }

    /// The endpoint's own address: the `remote` of its leg.
    pub fn addr(&self, who: Who) -> SocketAddr {
        self.addrs[who.idx()]
    }

    /// Starts sending `who`'s tone to `dest` (its leg's local address), or stops.
    pub fn send_to(&self, who: Who, dest: Option<SocketAddr>) {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner())[who.idx()].dest = dest;
    }

    /// Makes `who` an SRTP endpoint: from now on it sends and accepts only what libsrtp
    /// protects and unprotects, and nothing until [`Pump::set_srtp`] gives it keys.
    pub fn secure(&self, who: Who) {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner())[who.idx()].secure = true;
    }

    /// Gives an SRTP endpoint its libsrtp sessions (a new leg's keys), or takes them
    /// away (`None`: the endpoint waits for the keys of its next leg, counting what
    /// arrives meanwhile as `before_keys`).
    pub fn set_srtp(&self, who: Who, srtp: Option<SrtpEndpoint>) {
        let mut ts = self.talkers.lock().unwrap_or_else(|e| e.into_inner());
        let t = &mut ts[who.idx()];
        assert!(t.secure, "{who:?} is not an SRTP endpoint");
        t.srtp = srtp;
        t.next_sr = Instant::now();
    }

    /// Re-keys what an SRTP endpoint with keys receives: `rx` becomes its receive
    /// session and the one it replaces is still tried on what `rx` refuses (counted as
    /// `rtp_ok_previous` / `rtcp_ok_previous`), until [`Pump::drop_previous_rx`].
    pub fn add_rx_key(&self, who: Who, rx: RefSession) {
        let mut ts = self.talkers.lock().unwrap_or_else(|e| e.into_inner());
        let t = &mut ts[who.idx()];
        let srtp = t
            .srtp
            .as_mut()
            .unwrap_or_else(|| panic!("{who:?} has no SRTP keys to replace"));
        t.rx_previous = Some(std::mem::replace(&mut srtp.rx, rx));
        t.counts.rtp_ok_since_rx_key = 0;
        t.rtcp_since_rx_key.clear();
    }

    /// Forgets the receive session [`Pump::add_rx_key`] replaced.
    pub fn drop_previous_rx(&self, who: Who) {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner())[who.idx()].rx_previous = None;
    }

    /// Re-keys what an SRTP endpoint sends: it protects with `tx` from `at` on (SRTP and
    /// SRTCP), and with its current session until then.
    pub fn switch_tx_at(&self, who: Who, tx: RefSession, at: Instant) {
        let mut ts = self.talkers.lock().unwrap_or_else(|e| e.into_inner());
        let t = &mut ts[who.idx()];
        assert!(t.srtp.is_some(), "{who:?} has no SRTP keys to replace");
        t.tx_next = Some((at, tx));
    }

    /// The RTCP compounds an SRTP endpoint's current receive session decrypted since
    /// the last [`Pump::add_rx_key`].
    pub fn rtcp_since_rx_key(&self, who: Who) -> Vec<Vec<u8>> {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner())[who.idx()]
            .rtcp_since_rx_key
            .clone()
    }

    /// What an SRTP endpoint's libsrtp sessions did so far.
    pub fn srtp_counts(&self, who: Who) -> SrtpCounts {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner())[who.idx()]
            .counts
            .clone()
    }

    /// The RTCP compounds an SRTP endpoint received, decrypted by libsrtp.
    pub fn rtcp_received(&self, who: Who) -> Vec<Vec<u8>> {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner())[who.idx()]
            .rtcp
            .clone()
    }

    /// The middle 32 bits of the NTP timestamps of the sender reports `who` sent (what
    /// a report block's LSR echoes).
    pub fn sr_sent(&self, who: Who) -> Vec<u32> {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner())[who.idx()]
            .sr_ntp_mid
            .clone()
    }

    /// Sends `bytes` as they are from `who`'s socket to `dest` (a forged or stray packet).
    pub fn send_raw(&self, who: Who, bytes: &[u8], dest: SocketAddr) {
        let ts = self.talkers.lock().unwrap_or_else(|e| e.into_inner());
        ts[who.idx()]
            .sock
            .send_to(bytes, dest)
            .expect("send a raw datagram");
    }

    /// RTP packets `who` received (decrypted on an SRTP endpoint) whose length is not
    /// that of a 20 ms PCMU packet: what a leaked tag or a double encryption would show.
    pub fn odd_lengths(&self, who: Who) -> usize {
        let ts = self.talkers.lock().unwrap_or_else(|e| e.into_inner());
        ts[who.idx()]
            .received
            .iter()
            .filter(|(_, b)| b.len() != 12 + FRAME_SAMPLES)
            .count()
    }

    /// The SSRC `who` sends with.
    pub fn ssrc(&self, who: Who) -> u32 {
        self.talkers.lock().unwrap_or_else(|e| e.into_inner())[who.idx()].ssrc
    }

    /// What `listener` received between `from` and `to`.
    pub fn heard(&self, listener: Who, from: Instant, to: Instant) -> Heard {
        let ts = self.talkers.lock().unwrap_or_else(|e| e.into_inner());
        let mut sums = [0.0f64; 4];
        let mut frames = 0usize;
        let mut pcm = [0i16; FRAME_SAMPLES];
        for (at, bytes) in &ts[listener.idx()].received {
            if *at < from || *at > to || bytes.len() != 12 + FRAME_SAMPLES {
                continue;
            }
            for (s, &b) in pcm.iter_mut().zip(&bytes[12..]) {
                *s = ulaw_decode(b);
            }
            for who in Who::ALL {
                sums[who.idx()] += relative_power(&pcm, who.tone_hz());
            }
            frames += 1;
        }
        let db = sums.map(|s| {
            if frames == 0 {
                f64::NEG_INFINITY
            } else {
                10.0 * (s / frames as f64).max(1e-12).log10()
            }
        });
        Heard { db, frames }
    }

    /// The longest interval between `from`, the arrivals at `listener` of packets that
    /// carry `source`'s tone, and `to`.
    pub fn longest_gap(&self, listener: Who, source: Who, from: Instant, to: Instant) -> Duration {
        let ts = self.talkers.lock().unwrap_or_else(|e| e.into_inner());
        let mut pcm = [0i16; FRAME_SAMPLES];
        let present = 10f64.powf(PRESENT_DB / 10.0);
        let mut prev = from;
        let mut longest = Duration::ZERO;
        for (at, bytes) in &ts[listener.idx()].received {
            if *at < from || *at > to || bytes.len() != 12 + FRAME_SAMPLES {
                continue;
            }
            for (s, &b) in pcm.iter_mut().zip(&bytes[12..]) {
                *s = ulaw_decode(b);
            }
            if relative_power(&pcm, source.tone_hz()) >= present {
                longest = longest.max(*at - prev);
                prev = *at;
            }
        }
        longest.max(to - prev)
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits `settle` (plan switch and jitter buffers), then measures for `measure`:
/// returns the measured window.
pub async fn window(settle: Duration, measure: Duration) -> (Instant, Instant) {
    tokio::time::sleep(settle).await;
    let from = Instant::now();
    tokio::time::sleep(measure).await;
    (from, Instant::now())
}

/// Checks a window against the expected hear relation: every `(listener, source)` pair
/// in `hears` is audible, every other pair among `talking` sources and `listening`
/// listeners is silent. Failures are appended, one line each; levels are printed.
pub fn check_hears(
    pump: &Pump,
    phase: &str,
    (from, to): (Instant, Instant),
    listening: &[Who],
    talking: &[Who],
    hears: &[(Who, Who)],
    failures: &mut Vec<String>,
) {
    for &listener in listening {
        let h = pump.heard(listener, from, to);
        println!(
            "{phase}: {listener:?} got {} frames; C {:.1} dB, A {:.1} dB, S {:.1} dB, X {:.1} dB",
            h.frames, h.db[0], h.db[1], h.db[2], h.db[3]
        );
        let expect_any = hears.iter().any(|&(l, _)| l == listener);
        if expect_any && h.frames < 10 {
            failures.push(format!(
                "{phase}: {listener:?} received only {} frames",
                h.frames
            ));
        }
        for &source in talking {
            if source == listener {
                continue;
            }
            let level = h.db[source.idx()];
            let heard = hears.contains(&(listener, source));
            if heard && level < PRESENT_DB {
                failures.push(format!(
                    "{phase}: {listener:?} should hear {source:?}, level {level:.1} dB"
                ));
            }
            if !heard && level > ABSENT_DB {
                failures.push(format!(
                    "{phase}: {listener:?} must not hear {source:?}, level {level:.1} dB"
                ));
            }
        }
    }
}

#[test]
fn ulaw_round_trip_is_close_and_zero_is_canonical() {
    assert_eq!(ulaw_encode(0), 0xFF);
    assert_eq!(ulaw_decode(0xFF), 0);
    for x in (-32000i16..32000).step_by(97) {
        let y = ulaw_decode(ulaw_encode(x));
        let err = (i32::from(x) - i32::from(y)).abs();
        assert!(err <= i32::from(x).abs() / 16 + 8, "{x} -> {y}");
    }
}

/// libsrtp, or `None` after printing why the test skips.
pub fn libsrtp() -> Option<&'static LibSrtp> {
    match LibSrtp::load() {
        Ok(lib) => Some(lib),
        Err(e) => {
            println!("SKIPPED: libsrtp2 not installed ({e})");
            None
        }
    }
}

/// SRTP key material (key || salt) for an endpoint: deterministic per `seed`, so a
/// failure replays (a splitmix64 stream; the tests are about interoperability, not key
/// quality).
pub fn key_bytes(suite: SrtpSuite, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..suite.master_len())
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}
