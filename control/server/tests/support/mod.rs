//! Test support: an in-memory fake engine and a server on a loopback port.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use std::sync::{Arc, Mutex};

use earshot_control::proto;
use earshot_control::{ManualClock, ServerConfig};
use earshot_engine_api::{
    BoxFuture, EngineApi, EngineError, EngineEvent, EngineSnapshot, EngineStats, LegId, LegInfo,
    MediaConfig, Request, Response, SessionPlan, ShardStats,
};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

/// What the fake engine holds.
#[derive(Debug, Default)]
pub struct FakeState {
    pub next_port: u16,
    pub next_slot: u32,
    pub legs: BTreeMap<LegId, LegInfo>,
    pub plans: BTreeMap<String, SessionPlan>,
    pub down: bool,
    pub calls: Vec<Request>,
    pub owner: Option<String>,
    pub activity: Vec<earshot_engine_api::LegActivity>,
    /// Refuse every `ConfigureLeg` with this error (a test's stand-in for an engine
    /// refusal the sidecar's validation cannot foresee).
    pub refuse_configure: Option<EngineError>,
}

/// A deterministic engine double: ports from a counter, plans recorded.
#[derive(Debug)]
pub struct FakeEngine {
    pub state: Mutex<FakeState>,
    events_tx: mpsc::UnboundedSender<EngineEvent>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<EngineEvent>>,
}

impl FakeEngine {
    pub fn new(first_port: u16) -> Arc<FakeEngine> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Arc::new(FakeEngine {
            state: Mutex::new(FakeState {
                next_port: first_port,
                ..FakeState::default()
            }),
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
        })
    }

    pub fn emit(&self, event: EngineEvent) {
        self.events_tx.send(event).unwrap();
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// The leg of `(session, leg_key)`.
    pub fn leg(&self, session: &str, leg_key: &str) -> Option<LegInfo> {
        let st = self.state.lock().unwrap();
        st.legs
            .values()
            .find(|l| l.session == session && l.leg_key == leg_key)
            .cloned()
    }

    /// The last media configuration the engine was sent for `(session, leg_key)`.
    pub fn programmed(&self, session: &str, leg_key: &str) -> MediaConfig {
        let leg = self.leg(session, leg_key).expect("engine leg").leg;
        let st = self.state.lock().unwrap();
        st.calls
            .iter()
            .rev()
            .find_map(|r| match r {
                Request::ConfigureLeg { leg: l, media } if *l == leg => Some(media.clone()),
                _ => None,
            })
            .expect("the leg was configured")
    }

    pub fn plan(&self, session: &str) -> Option<SessionPlan> {
        self.state.lock().unwrap().plans.get(session).cloned()
    }

    /// Whether, in the session's plan, `listener` hears `source` (by leg keys).
    pub fn hears(&self, session: &str, listener: &str, source: &str) -> bool {
        let (Some(l), Some(s), Some(plan)) = (
            self.leg(session, listener),
            self.leg(session, source),
            self.plan(session),
        ) else {
            return false;
        };
        plan.edges
            .iter()
            .any(|e| e.listener == l.leg && e.source == s.leg)
    }

    fn handle(&self, request: Request) -> Result<Response, EngineError> {
        let mut st = self.state.lock().unwrap();
        if st.down {
            return Err(EngineError::Unavailable("fake engine down".into()));
        }
        st.calls.push(request.clone());
        match request {
            Request::AllocateLeg {
                session,
                leg_key,
                requested_port,
                rtcp_mux,
                ..
            } => {
                if let Some(l) = st
                    .legs
                    .values()
                    .find(|l| l.session == session && l.leg_key == leg_key)
                {
                    return Ok(Response::Leg(l.clone()));
                }
                let taken = |p: u16, st: &FakeState| st.legs.values().any(|l| l.local.port() == p);
                let port = match requested_port {
                    Some(p) if !taken(p, &st) => p,
                    Some(p) => {
                        return Err(EngineError::InvalidArgument {
                            field: "requested_port".into(),
                            message: format!("{p} taken"),
                        });
                    }
                    None => {
                        let mut p = st.next_port;
                        while taken(p, &st) {
                            p += 2;
                        }
                        st.next_port = p + 2;
                        p
                    }
                };
                st.next_slot += 1;
                let local: SocketAddr = ([127, 0, 0, 1], port).into();
                let info = LegInfo {
                    leg: LegId::new(0, st.next_slot, 1),
                    session,
                    leg_key,
                    local,
                    local_rtcp: if rtcp_mux {
                        local
                    } else {
                        ([127, 0, 0, 1], port + 1).into()
                    },
                    media: None,
                    remote: None,
                };
                st.legs.insert(info.leg, info.clone());
                Ok(Response::Leg(info))
            }
            Request::ConfigureLeg { .. } if st.refuse_configure.is_some() => {
                Err(st.refuse_configure.clone().expect("checked"))
            }
            Request::ConfigureLeg { leg, media } => match st.legs.get_mut(&leg) {
                Some(l) => {
                    l.remote = media.remote;
                    l.media = Some(media);
                    Ok(Response::Done)
                }
                None => Err(EngineError::NotFound(format!("{leg}"))),
            },
            Request::SetSessionPlan(plan) => {
                st.plans.insert(plan.session.clone(), plan);
                Ok(Response::Done)
            }
            Request::RemoveLeg { leg } => {
                st.legs.remove(&leg);
                Ok(Response::Done)
            }
            Request::RemoveSession { session } => {
                st.legs.retain(|_, l| l.session != session);
                st.plans.remove(&session);
                Ok(Response::Done)
            }
            Request::Snapshot => Ok(Response::Snapshot(EngineSnapshot {
                legs: st.legs.values().cloned().collect(),
                plans: st.plans.values().cloned().collect(),
                owner: st.owner.clone(),
                activity: st.activity.clone(),
                ..EngineSnapshot::default()
            })),
            Request::Claim { owner } => {
                st.owner = Some(owner);
                Ok(Response::Done)
            }
            // Only node agents fence, and they talk to real engines.
            Request::Fence { .. } => Err(EngineError::InvalidArgument {
                field: "request".into(),
                message: "the fake engine is never fenced".into(),
            }),
            Request::Mute { .. } => Err(EngineError::InvalidArgument {
                field: "request".into(),
                message: "the fake engine is never muted".into(),
            }),
            Request::Stats => Ok(Response::Stats(EngineStats {
                backend: "memory".into(),
                shards: vec![ShardStats {
                    shard: 0,
                    legs: st.legs.len() as u64,
                    sessions: st.plans.len() as u64,
                    ..ShardStats::default()
                }],
            })),
        }
    }
}

impl EngineApi for FakeEngine {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, EngineError>> {
        let result = self.handle(request);
        Box::pin(async move { result })
    }

    fn next_event(&self) -> BoxFuture<'_, Option<EngineEvent>> {
        Box::pin(async move { self.events_rx.lock().await.recv().await })
    }
}

/// A running server.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path, engine: Arc<FakeEngine>) -> TestServer {
        Self::start_with(data_dir, engine, |_| {}).await
    }

    pub async fn start_with(
        data_dir: &Path,
        engine: Arc<FakeEngine>,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        Self::start_on(data_dir, engine, adjust).await
    }

    /// A server on any engine.
    pub async fn start_on(
        data_dir: &Path,
        engine: Arc<dyn EngineApi>,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let mut config = ServerConfig::new(data_dir);
        config.clock = Arc::new(ManualClock::new(1_700_000_000_000));
        config.reconcile_retry = std::time::Duration::from_millis(50);
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(earshot_control::serve_with_listeners(
            config,
            listener,
            Some(metrics),
            engine,
            async move {
                let _ = rx.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TestServer {
            addr,
            metrics_addr,
            channel,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// One metric's value from `GET /metrics` (the unlabelled sample), if present.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Stops the server and waits until it has released the store.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

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
}

pub fn media(remote_port: u16) -> proto::Media {
    proto::Media {
        remote: format!("127.0.0.1:{remote_port}"),
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

pub fn spec(
    id: &str,
    kind: proto::ParticipantKind,
    role: proto::Role,
    port: u16,
) -> proto::ParticipantSpec {
    proto::ParticipantSpec {
        participant_id: id.into(),
        kind: kind as i32,
        role: role as i32,
        user_id: String::new(),
        media: Some(media(port)),
    }
}

/// customer `c` + agent `a` (user `agent-1`).
pub fn create_call(id: &str) -> proto::CreateInteractionRequest {
    let mut agent = spec(
        "a",
        proto::ParticipantKind::Internal,
        proto::Role::Agent,
        20002,
    );
    agent.user_id = "agent-1".into();
    proto::CreateInteractionRequest {
        interaction_id: id.into(),
        participants: vec![
            spec(
                "c",
                proto::ParticipantKind::External,
                proto::Role::Customer,
                20000,
            ),
            agent,
        ],
        actor: String::new(),
    }
}

/// A supervisor with every permission, AVAILABLE.
pub async fn add_supervisor(server: &TestServer, user_id: &str) {
    let mut dir = server.directory();
    dir.upsert_user(proto::UpsertUserRequest {
        user_id: user_id.into(),
        display_name: "Sam Supervisor".into(),
        permissions: vec![
            "conversation:call:monitor".into(),
            "conversation:call:coach".into(),
            "conversation:call:barge".into(),
            "conversation:call:add".into(),
            "analytics:interaction:view".into(),
        ],
    })
    .await
    .unwrap();
    dir.set_presence(proto::SetPresenceRequest {
        user_id: user_id.into(),
        presence: proto::Presence::Available as i32,
    })
    .await
    .unwrap();
}

pub fn supervise(
    interaction: &str,
    supervision: &str,
    user: &str,
    participant: &str,
    target: &str,
    port: u16,
) -> proto::StartSupervisionRequest {
    proto::StartSupervisionRequest {
        interaction_id: interaction.into(),
        supervision_id: supervision.into(),
        supervisor_user_id: user.into(),
        supervisor_participant_id: participant.into(),
        target_participant_id: target.into(),
        media: Some(media(port)),
    }
}

/// The ErrorInfo reason and `field` metadata of a status.
pub fn reason_of(status: &tonic::Status) -> (String, Option<String>) {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.domain, "earshot");
    (info.reason.clone(), info.metadata.get("field").cloned())
}
