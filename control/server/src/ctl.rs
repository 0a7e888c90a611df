//! `earshot ctl`: a command-line client for every RPC of the four `earshot.v1` services,
//! so an operator can drive and inspect a call from a shell.
//!
//! Output is human-readable by default (an indented `field: value` rendering of the
//! response, enum prefixes stripped, empty fields omitted) and the canonical proto3 JSON
//! mapping with `--json` (every field present, 64-bit integers as numbers; `events
//! watch` prints one JSON object per line). Both renderings are generated from the
//! served descriptor set ([`crate::FILE_DESCRIPTOR_SET`]), so a field added to the
//! protos appears without touching this file.
//!
//! A refused RPC prints `error: <CODE> <REASON>: <message>` (plus the field for
//! INVALID_ARGUMENT) on stderr, or with `--json` a JSON object
//! `{"error":{"code","reason","field","message"}}`, and exits with status 1.
//!
//! ## What it deliberately does not do
//! It keeps no state and retries nothing: every mutating RPC is idempotent, so the
//! operator (or a script) re-runs the command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, ReflectMessage as _, Value};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::metrics::code_name;
use crate::proto;

/// The address `earshot ctl` talks to when `--addr` is not given.
pub const DEFAULT_CTL_ADDR: &str = "http://127.0.0.1:50051";

/// `earshot ctl [global flags] <service> <command> [flags]`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// Server address, `http://host:port` or `https://host:port`.
    #[arg(long, global = true, default_value = DEFAULT_CTL_ADDR, env = "EARSHOT_ADDR")]
    pub addr: String,
    /// Bearer token sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "EARSHOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (instead of --token).
    #[arg(long, global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate; implies https.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Server name to verify in its certificate (default: the host of --addr).
    #[arg(long, global = true)]
    pub tls_domain: Option<String>,
    /// Print the canonical proto3 JSON instead of the human-readable rendering.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print SRTP keys (`media.srtp.local_key`) as the server returned them; without
    /// it they are shown as `[redacted]`.
    #[arg(long, global = true)]
    pub show_keys: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The four services.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Calls and their participants (service Interactions).
    #[command(subcommand)]
    Interactions(InteractionsCmd),
    /// The event stream (Interactions.WatchEvents).
    #[command(subcommand)]
    Events(EventsCmd),
    /// Monitor, coach and barge (service Supervision).
    #[command(subcommand)]
    Supervision(SupervisionCmd),
    /// Users, permissions, presence (service Directory).
    #[command(subcommand)]
    Directory(DirectoryCmd),
    /// The media engine (service Engine).
    #[command(subcommand)]
    Engine(EngineCmd),
}

/// How a participant's leg is carried (shared by every command that creates legs).
#[derive(Debug, Clone, Args)]
pub struct MediaArgs {
    /// Codec: pcmu, pcma, g722, opus, l16-8000, l16-16000 or l16-48000.
    #[arg(long, default_value = "pcmu", value_parser = ["pcmu", "pcma", "g722", "opus", "l16-8000", "l16-16000", "l16-48000"])]
    pub codec: String,
    /// RTP payload type (default: 0 for pcmu, 8 for pcma, 9 for g722, 111 for opus, 96
    /// for l16).
    #[arg(long)]
    pub payload_type: Option<u32>,
    /// Packetisation time in ms: 10, 20, 30, 40 or 60.
    #[arg(long, default_value_t = 20)]
    pub ptime_ms: u32,
    /// RFC 4733 telephone-event payload type, if negotiated.
    #[arg(long)]
    pub dtmf_pt: Option<u32>,
    /// RTCP on RTP port + 1 instead of muxed on the RTP port.
    #[arg(long)]
    pub no_rtcp_mux: bool,
    /// SRTP crypto suite as SDP names it (AES_CM_128_HMAC_SHA1_80, ...); plain RTP
    /// without it.
    #[arg(long, requires = "srtp_remote_key")]
    pub srtp_suite: Option<String>,
    /// The remote's SDES key ("inline:..."). Prefer the environment variable: a
    /// command line is visible to every local user.
    #[arg(long, env = "EARSHOT_SRTP_REMOTE_KEY", hide_env_values = true)]
    pub srtp_remote_key: Option<String>,
    /// Our SDES key; generated by the sidecar (and shown with --show-keys) when absent.
    #[arg(long, env = "EARSHOT_SRTP_LOCAL_KEY", hide_env_values = true)]
    pub srtp_local_key: Option<String>,
    /// Accept RTP and RTCP only from this IP address (a strict source).
    #[arg(long)]
    pub strict_source_ip: Option<String>,
    /// Send nothing while the leg hears nobody (default: silence at ptime).
    #[arg(long)]
    pub quiet_when_unheard: bool,
}

impl MediaArgs {
    fn media(&self, remote: Option<&str>, auto_answer: Option<bool>) -> proto::Media {
        let (codec, default_pt, clock_rate_hz) = match self.codec.as_str() {
            "pcma" => (proto::Codec::Pcma, 8, 0),
            "g722" => (proto::Codec::G722, 9, 0),
            "opus" => (proto::Codec::Opus, 111, 0),
            "l16-8000" => (proto::Codec::L16, 96, 8_000),
            "l16-16000" => (proto::Codec::L16, 96, 16_000),
            "l16-48000" => (proto::Codec::L16, 96, 48_000),
            _ => (proto::Codec::Pcmu, 0, 0),
        };
        proto::Media {
            remote: remote.unwrap_or_default().to_owned(),
            codec: codec as i32,
            payload_type: self.payload_type.unwrap_or(default_pt),
            ptime_ms: self.ptime_ms,
            telephone_event_pt: self.dtmf_pt,
            rtcp_mux: !self.no_rtcp_mux,
            auto_answer,
            srtp: self.srtp_suite.as_ref().map(|suite| proto::Srtp {
                suite: suite.clone(),
                remote_key: self.srtp_remote_key.clone().unwrap_or_default(),
                local_key: self.srtp_local_key.clone().unwrap_or_default(),
            }),
            strict_source_ip: self.strict_source_ip.clone().unwrap_or_default(),
            quiet_when_unheard: self.quiet_when_unheard,
            clock_rate_hz,
            ..Default::default()
        }
    }
}

/// One participant given on the command line.
#[derive(Debug, Clone, Args)]
pub struct ParticipantArgs {
    /// Participant id.
    #[arg(long = "participant")]
    pub participant_id: String,
    /// external or internal.
    #[arg(long, default_value = "internal", value_parser = ["external", "internal"])]
    pub kind: String,
    /// customer, agent, specialist or other.
    #[arg(long, default_value = "agent", value_parser = ["customer", "agent", "specialist", "other"])]
    pub role: String,
    /// Directory user behind the participant.
    #[arg(long)]
    pub user: Option<String>,
    /// Peer RTP address "ip:port" (empty: learn from the first packet).
    #[arg(long)]
    pub remote: Option<String>,
}

/// `interactions create`: the participants named by flags, then `--with` specs.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Interaction id.
    #[arg(long)]
    pub id: String,
    /// Customer participant id (EXTERNAL, CUSTOMER).
    #[arg(long)]
    pub customer: Option<String>,
    /// Customer's RTP address.
    #[arg(long)]
    pub customer_remote: Option<String>,
    /// Agent participant id (INTERNAL, AGENT).
    #[arg(long)]
    pub agent: Option<String>,
    /// Agent's directory user.
    #[arg(long)]
    pub agent_user: Option<String>,
    /// Agent's RTP address.
    #[arg(long)]
    pub agent_remote: Option<String>,
    /// More participants: `id=P,kind=internal,role=other,user=U,remote=IP:PORT`
    /// (repeatable; kind, role, user, remote optional).
    #[arg(long = "with")]
    pub with: Vec<String>,
    /// Timeline actor.
    #[arg(long, default_value = "")]
    pub actor: String,
    #[command(flatten)]
    pub media: MediaArgs,
}

impl CreateArgs {
    /// The CreateInteraction request these flags describe.
    fn request(&self) -> anyhow::Result<proto::CreateInteractionRequest> {
        let mut participants = Vec::new();
        if let Some(c) = &self.customer {
            participants.push(spec(
                &ParticipantArgs {
                    participant_id: c.clone(),
                    kind: "external".into(),
                    role: "customer".into(),
                    user: None,
                    remote: self.customer_remote.clone(),
                },
                &self.media,
            )?);
        }
        if let Some(a) = &self.agent {
            participants.push(spec(
                &ParticipantArgs {
                    participant_id: a.clone(),
                    kind: "internal".into(),
                    role: "agent".into(),
                    user: self.agent_user.clone(),
                    remote: self.agent_remote.clone(),
                },
                &self.media,
            )?);
        }
        for w in &self.with {
            participants.push(parse_spec(w, &self.media)?);
        }
        Ok(proto::CreateInteractionRequest {
            interaction_id: self.id.clone(),
            participants,
            actor: self.actor.clone(),
        })
    }
}

/// Interactions service commands.
#[derive(Debug, Clone, Subcommand)]
pub enum InteractionsCmd {
    /// CreateInteraction: a customer and an agent (and/or --with SPEC participants).
    Create(CreateArgs),
    /// GetInteraction.
    Get {
        /// Interaction id.
        #[arg(long)]
        id: String,
    },
    /// ListInteractions.
    List {
        /// Only interactions of this user.
        #[arg(long)]
        user: Option<String>,
        /// Include ended interactions.
        #[arg(long)]
        include_ended: bool,
        /// List on this supervisor's behalf (needs analytics:interaction:view).
        #[arg(long)]
        on_behalf_of: Option<String>,
        /// Page size (0: server default).
        #[arg(long, default_value_t = 0)]
        page_size: u32,
        /// Continue after this page token.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// EndInteraction.
    End {
        /// Interaction id.
        #[arg(long)]
        id: String,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// AddParticipant.
    AddParticipant {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        #[command(flatten)]
        participant: ParticipantArgs,
        /// Join this participant's talk group (default: alone).
        #[arg(long)]
        join_group_of: Option<String>,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// RemoveParticipant.
    RemoveParticipant {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        /// Participant id.
        #[arg(long)]
        participant: String,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// Hold.
    Hold {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        /// Participant id.
        #[arg(long)]
        participant: String,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// Resume.
    Resume {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        /// Participant id.
        #[arg(long)]
        participant: String,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// StartConsult: --agent consults the specialist given by --participant etc.
    StartConsult {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        /// The consulting agent.
        #[arg(long)]
        agent: String,
        #[command(flatten)]
        specialist: ParticipantArgs,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// EndConsult.
    EndConsult {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        /// cancel, transfer or conference.
        #[arg(long, value_parser = ["cancel", "transfer", "conference"])]
        mode: String,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// Transfer (blind): --from is replaced by the participant given by --participant.
    Transfer {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        /// The participant transferring away.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        to: ParticipantArgs,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Conference: merge the talk groups of the named participants.
    Conference {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        /// Participants, comma-separated (at least two).
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        participants: Vec<String>,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// UpdateMedia: replace a live participant's media (a re-INVITE's new remote, SRTP
    /// keys, ptime...). The flags give the complete new media, not a patch.
    UpdateMedia {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
        /// Participant id (a call participant or a supervisor's leg).
        #[arg(long)]
        participant: String,
        /// Peer RTP address "ip:port" (empty: learn from the first packet).
        #[arg(long)]
        remote: Option<String>,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// GetTimeline.
    Timeline {
        /// Interaction id.
        #[arg(long)]
        interaction: String,
    },
}

/// WatchEvents.
#[derive(Debug, Clone, Subcommand)]
pub enum EventsCmd {
    /// Streams events after sequence --from (0: oldest retained) until interrupted.
    Watch {
        /// Stream events with a sequence greater than this.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Only this interaction's events.
        #[arg(long)]
        interaction: Option<String>,
        /// Skip the retained backlog.
        #[arg(long)]
        live_only: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// The three ways to start a supervision share their flags.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// Interaction id.
    #[arg(long)]
    pub interaction: String,
    /// Supervising directory user.
    #[arg(long)]
    pub supervisor_user: String,
    /// Target participant.
    #[arg(long)]
    pub target: String,
    /// Supervision id (default `sup-<interaction>-<user>-<n>`, n one more than the
    /// user's supervisions on the interaction so far, so monitor -> stop -> coach
    /// with defaults works; pass --id to make a retry idempotent).
    #[arg(long)]
    pub id: Option<String>,
    /// Supervisor's participant id (default `sup-<user>`).
    #[arg(long)]
    pub supervisor_participant: Option<String>,
    /// Supervisor phone's RTP address (empty: learn from the first packet).
    #[arg(long)]
    pub remote: Option<String>,
    /// The supervisor's phone rings instead of answering by itself.
    #[arg(long)]
    pub no_auto_answer: bool,
    #[command(flatten)]
    pub media: MediaArgs,
}

/// Supervision service commands.
#[derive(Debug, Clone, Subcommand)]
pub enum SupervisionCmd {
    /// StartMonitor.
    Monitor(StartArgs),
    /// StartCoach.
    Coach(StartArgs),
    /// StartBarge (escalates an existing monitor or coach in place).
    Barge(StartArgs),
    /// StopSupervision: by id, or the live supervision of a user on an interaction.
    Stop {
        /// Supervision id.
        #[arg(long, required_unless_present_all = ["interaction", "supervisor_user"])]
        id: Option<String>,
        /// With --supervisor-user: stop that user's live supervision here.
        #[arg(long, requires = "supervisor_user")]
        interaction: Option<String>,
        /// With --interaction.
        #[arg(long, requires = "interaction")]
        supervisor_user: Option<String>,
        /// Timeline actor.
        #[arg(long, default_value = "")]
        actor: String,
    },
    /// GetSupervision.
    Get {
        /// Supervision id.
        #[arg(long)]
        id: String,
    },
    /// ListSupervisions.
    List {
        /// Only this interaction.
        #[arg(long)]
        interaction: Option<String>,
        /// Only this supervisor.
        #[arg(long)]
        supervisor_user: Option<String>,
        /// Include ended supervisions.
        #[arg(long)]
        include_ended: bool,
    },
}

/// Directory service commands.
#[derive(Debug, Clone, Subcommand)]
pub enum DirectoryCmd {
    /// UpsertUser.
    UpsertUser {
        /// User id.
        #[arg(long)]
        user: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Permissions, comma-separated or repeated (the complete set).
        #[arg(long = "permission", value_delimiter = ',')]
        permissions: Vec<String>,
    },
    /// SetPresence.
    SetPresence {
        /// User id.
        #[arg(long)]
        user: String,
        /// available, busy, away, break, meeting, on_queue or offline.
        #[arg(long)]
        presence: String,
    },
    /// GetUser.
    GetUser {
        /// User id.
        #[arg(long)]
        user: String,
    },
}

/// Engine service commands.
#[derive(Debug, Clone, Subcommand)]
pub enum EngineCmd {
    /// GetStats.
    Stats,
}

/// Adds the bearer token to every request.
#[derive(Debug, Clone)]
struct BearerToken(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, BearerToken>;

/// Runs one ctl command, printing to stdout and stderr; the exit code is 0 on success,
/// 1 when the RPC (or the connection) failed.
pub fn run(args: CtlArgs) -> ExitCode {
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => print_status(status, json),
                None if json => {
                    let v = serde_json::json!({"error": {"message": format!("{e:#}")}});
                    eprintln!("{v}");
                }
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Prints a refused RPC: code, ErrorInfo reason, field, message.
fn print_status(status: &tonic::Status, json: bool) {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info();
    let reason = info.as_ref().map(|i| i.reason.clone()).unwrap_or_default();
    let field = info.as_ref().and_then(|i| i.metadata.get("field").cloned());
    let code = code_name(status.code());
    if json {
        let v = serde_json::json!({"error": {
            "code": code, "reason": reason, "field": field, "message": status.message()
        }});
        eprintln!("{v}");
    } else {
        let mut line = format!("error: {code}");
        if !reason.is_empty() {
            line.push(' ');
            line.push_str(&reason);
        }
        if let Some(f) = field {
            line.push_str(&format!(" (field {f})"));
        }
        eprintln!("{line}: {}", status.message());
    }
}

async fn connect(args: &CtlArgs) -> anyhow::Result<(Channel, BearerToken)> {
    let mut addr = args.addr.clone();
    if !addr.contains("://") {
        let scheme = if args.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        addr = format!("{scheme}://{addr}");
    }
    let mut endpoint = Endpoint::from_shared(addr.clone())
        .with_context(|| format!("bad --addr {addr}"))?
        .connect_timeout(Duration::from_secs(5));
    if addr.starts_with("https://") || args.tls_ca.is_some() {
        let ca_path = args
            .tls_ca
            .as_ref()
            .context("https needs --tls-ca (the CA that signed the server certificate)")?;
        let ca =
            std::fs::read(ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let cert =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &args.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
    }
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(p)) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let token = token
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("the token must be visible ASCII")?;
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok((channel, BearerToken(token)))
}

/// Parses `id=P,kind=internal,role=other,user=U,remote=IP:PORT`.
fn parse_spec(text: &str, media: &MediaArgs) -> anyhow::Result<proto::ParticipantSpec> {
    let mut p = ParticipantArgs {
        participant_id: String::new(),
        kind: "internal".into(),
        role: "other".into(),
        user: None,
        remote: None,
    };
    for part in text.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("`{part}` in --with is not key=value"))?;
        match k {
            "id" => p.participant_id = v.into(),
            "kind" => p.kind = v.into(),
            "role" => p.role = v.into(),
            "user" => p.user = Some(v.into()),
            "remote" => p.remote = Some(v.into()),
            _ => anyhow::bail!("unknown key `{k}` in --with (id, kind, role, user, remote)"),
        }
    }
    anyhow::ensure!(!p.participant_id.is_empty(), "--with needs id=...");
    spec(&p, media)
}

fn spec(p: &ParticipantArgs, media: &MediaArgs) -> anyhow::Result<proto::ParticipantSpec> {
    let kind = match p.kind.as_str() {
        "external" => proto::ParticipantKind::External,
        "internal" => proto::ParticipantKind::Internal,
        other => anyhow::bail!("kind `{other}`: external or internal"),
    };
    let role = match p.role.as_str() {
        "customer" => proto::Role::Customer,
        "agent" => proto::Role::Agent,
        "specialist" => proto::Role::Specialist,
        "other" => proto::Role::Other,
        other => anyhow::bail!("role `{other}`: customer, agent, specialist or other"),
    };
    Ok(proto::ParticipantSpec {
        participant_id: p.participant_id.clone(),
        kind: kind as i32,
        role: role as i32,
        user_id: p.user.clone().unwrap_or_default(),
        media: Some(media.media(p.remote.as_deref(), None)),
    })
}

fn presence(text: &str) -> anyhow::Result<proto::Presence> {
    let upper = format!("PRESENCE_{}", text.to_ascii_uppercase());
    proto::Presence::from_str_name(&upper).with_context(|| {
        format!("presence `{text}`: available, busy, away, break, meeting, on_queue or offline")
    })
}

/// The request of a start command; a missing supervision id is
/// `sup-<interaction>-<user>-<n>` with n one more than the user's supervisions on the
/// interaction (ended ones included), so each start gets a new id.
async fn start_request(
    s: &mut proto::supervision_client::SupervisionClient<Svc>,
    a: &StartArgs,
) -> anyhow::Result<proto::StartSupervisionRequest> {
    let supervision_id = match &a.id {
        Some(id) => id.clone(),
        None => {
            let so_far = s
                .list_supervisions(proto::ListSupervisionsRequest {
                    interaction_id: a.interaction.clone(),
                    supervisor_user_id: a.supervisor_user.clone(),
                    include_ended: true,
                })
                .await?
                .into_inner()
                .supervisions
                .len();
            format!("sup-{}-{}-{}", a.interaction, a.supervisor_user, so_far + 1)
        }
    };
    Ok(proto::StartSupervisionRequest {
        interaction_id: a.interaction.clone(),
        supervision_id,
        supervisor_user_id: a.supervisor_user.clone(),
        supervisor_participant_id: a
            .supervisor_participant
            .clone()
            .unwrap_or_else(|| format!("sup-{}", a.supervisor_user)),
        target_participant_id: a.target.clone(),
        media: Some(a.media.media(a.remote.as_deref(), Some(!a.no_auto_answer))),
    })
}

/// Connects, calls, prints.
pub async fn run_async(args: CtlArgs) -> anyhow::Result<()> {
    let printer = Printer::new(args.json, args.show_keys)?;
    let (channel, token) = connect(&args).await?;
    let mut interactions = proto::interactions_client::InteractionsClient::with_interceptor(
        channel.clone(),
        token.clone(),
    );
    let mut supervision = proto::supervision_client::SupervisionClient::with_interceptor(
        channel.clone(),
        token.clone(),
    );
    let mut directory =
        proto::directory_client::DirectoryClient::with_interceptor(channel.clone(), token.clone());
    let mut engine = proto::engine_client::EngineClient::with_interceptor(channel, token);
    let i: &mut proto::interactions_client::InteractionsClient<Svc> = &mut interactions;
    match &args.command {
        CtlCommand::Interactions(cmd) => run_interactions(i, cmd, &printer).await,
        CtlCommand::Events(EventsCmd::Watch {
            from,
            interaction,
            live_only,
            count,
        }) => {
            let mut stream = i
                .watch_events(proto::WatchEventsRequest {
                    after_sequence: *from,
                    interaction_id: interaction.clone().unwrap_or_default(),
                    live_only: *live_only,
                })
                .await?
                .into_inner();
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                let Some(event) = stream.message().await? else {
                    break;
                };
                printer.event_line(&event)?;
                seen += 1;
            }
            Ok(())
        }
        CtlCommand::Supervision(cmd) => run_supervision(&mut supervision, cmd, &printer).await,
        CtlCommand::Directory(cmd) => run_directory(&mut directory, cmd, &printer).await,
        CtlCommand::Engine(EngineCmd::Stats) => printer.print(
            &engine
                .get_stats(proto::GetStatsRequest {})
                .await?
                .into_inner(),
        ),
    }
}

async fn run_supervision(
    s: &mut proto::supervision_client::SupervisionClient<Svc>,
    cmd: &SupervisionCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    match cmd {
        SupervisionCmd::Monitor(a) => {
            let req = start_request(s, a).await?;
            printer.print(&s.start_monitor(req).await?.into_inner())
        }
        SupervisionCmd::Coach(a) => {
            let req = start_request(s, a).await?;
            printer.print(&s.start_coach(req).await?.into_inner())
        }
        SupervisionCmd::Barge(a) => {
            let req = start_request(s, a).await?;
            printer.print(&s.start_barge(req).await?.into_inner())
        }
        SupervisionCmd::Stop {
            id,
            interaction,
            supervisor_user,
            actor,
        } => {
            let supervision_id = match (id, interaction, supervisor_user) {
                (Some(id), _, _) => id.clone(),
                (None, Some(i), Some(u)) => s
                    .list_supervisions(proto::ListSupervisionsRequest {
                        interaction_id: i.clone(),
                        supervisor_user_id: u.clone(),
                        include_ended: false,
                    })
                    .await?
                    .into_inner()
                    .supervisions
                    .first()
                    .map(|x| x.supervision_id.clone())
                    .with_context(|| format!("{u} supervises nothing live in {i}"))?,
                _ => anyhow::bail!("--id, or --interaction and --supervisor-user"),
            };
            printer.print(
                &s.stop_supervision(proto::StopSupervisionRequest {
                    supervision_id,
                    actor: actor.clone(),
                })
                .await?
                .into_inner(),
            )
        }
        SupervisionCmd::Get { id } => printer.print(
            &s.get_supervision(proto::GetSupervisionRequest {
                supervision_id: id.clone(),
            })
            .await?
            .into_inner(),
        ),
        SupervisionCmd::List {
            interaction,
            supervisor_user,
            include_ended,
        } => printer.print(
            &s.list_supervisions(proto::ListSupervisionsRequest {
                interaction_id: interaction.clone().unwrap_or_default(),
                supervisor_user_id: supervisor_user.clone().unwrap_or_default(),
                include_ended: *include_ended,
            })
            .await?
            .into_inner(),
        ),
    }
}

async fn run_directory(
    d: &mut proto::directory_client::DirectoryClient<Svc>,
    cmd: &DirectoryCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    match cmd {
        DirectoryCmd::UpsertUser {
            user,
            name,
            permissions,
        } => printer.print(
            &d.upsert_user(proto::UpsertUserRequest {
                user_id: user.clone(),
                display_name: name.clone(),
                permissions: permissions.clone(),
            })
            .await?
            .into_inner(),
        ),
        DirectoryCmd::SetPresence { user, presence: p } => printer.print(
            &d.set_presence(proto::SetPresenceRequest {
                user_id: user.clone(),
                presence: presence(p)? as i32,
            })
            .await?
            .into_inner(),
        ),
        DirectoryCmd::GetUser { user } => printer.print(
            &d.get_user(proto::GetUserRequest {
                user_id: user.clone(),
            })
            .await?
            .into_inner(),
        ),
    }
}

async fn run_interactions(
    i: &mut proto::interactions_client::InteractionsClient<Svc>,
    cmd: &InteractionsCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    use InteractionsCmd as C;
    match cmd {
        C::Create(create) => {
            printer.print(&i.create_interaction(create.request()?).await?.into_inner())
        }
        C::Get { id } => printer.print(
            &i.get_interaction(proto::GetInteractionRequest {
                interaction_id: id.clone(),
            })
            .await?
            .into_inner(),
        ),
        C::List {
            user,
            include_ended,
            on_behalf_of,
            page_size,
            page_token,
        } => printer.print(
            &i.list_interactions(proto::ListInteractionsRequest {
                user_id: user.clone().unwrap_or_default(),
                include_ended: *include_ended,
                on_behalf_of_user_id: on_behalf_of.clone().unwrap_or_default(),
                page_size: *page_size,
                page_token: page_token.clone().unwrap_or_default(),
            })
            .await?
            .into_inner(),
        ),
        C::End { id, actor } => printer.print(
            &i.end_interaction(proto::EndInteractionRequest {
                interaction_id: id.clone(),
                actor: actor.clone(),
            })
            .await?
            .into_inner(),
        ),
        C::AddParticipant {
            interaction,
            participant,
            join_group_of,
            actor,
            media,
        } => printer.print(
            &i.add_participant(proto::AddParticipantRequest {
                interaction_id: interaction.clone(),
                participant: Some(spec(participant, media)?),
                actor: actor.clone(),
                join_group_of: join_group_of.clone().unwrap_or_default(),
            })
            .await?
            .into_inner(),
        ),
        C::RemoveParticipant {
            interaction,
            participant,
            actor,
        } => printer.print(
            &i.remove_participant(proto::RemoveParticipantRequest {
                interaction_id: interaction.clone(),
                participant_id: participant.clone(),
                actor: actor.clone(),
            })
            .await?
            .into_inner(),
        ),
        C::Timeline { interaction } => printer.print(
            &i.get_timeline(proto::GetTimelineRequest {
                interaction_id: interaction.clone(),
            })
            .await?
            .into_inner(),
        ),
        _ => run_call_control(i, cmd, printer).await,
    }
}

/// The call-control verbs of `interactions` (media, hold, consult, transfer, conference).
async fn run_call_control(
    i: &mut proto::interactions_client::InteractionsClient<Svc>,
    cmd: &InteractionsCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    use InteractionsCmd as C;
    match cmd {
        C::UpdateMedia {
            interaction,
            participant,
            remote,
            actor,
            media,
        } => printer.print(
            &i.update_media(proto::UpdateMediaRequest {
                interaction_id: interaction.clone(),
                participant_id: participant.clone(),
                media: Some(media.media(remote.as_deref(), None)),
                actor: actor.clone(),
            })
            .await?
            .into_inner(),
        ),
        C::Hold {
            interaction,
            participant,
            actor,
        } => printer.print(
            &i.hold(proto::HoldRequest {
                interaction_id: interaction.clone(),
                participant_id: participant.clone(),
                actor: actor.clone(),
            })
            .await?
            .into_inner(),
        ),
        C::Resume {
            interaction,
            participant,
            actor,
        } => printer.print(
            &i.resume(proto::ResumeRequest {
                interaction_id: interaction.clone(),
                participant_id: participant.clone(),
                actor: actor.clone(),
            })
            .await?
            .into_inner(),
        ),
        C::StartConsult {
            interaction,
            agent,
            specialist,
            actor,
            media,
        } => printer.print(
            &i.start_consult(proto::StartConsultRequest {
                interaction_id: interaction.clone(),
                agent_participant_id: agent.clone(),
                specialist: Some(spec(specialist, media)?),
                actor: actor.clone(),
            })
            .await?
            .into_inner(),
        ),
        C::EndConsult {
            interaction,
            mode,
            actor,
        } => {
            let mode = match mode.as_str() {
                "cancel" => proto::EndConsultMode::Cancel,
                "transfer" => proto::EndConsultMode::Transfer,
                _ => proto::EndConsultMode::Conference,
            };
            printer.print(
                &i.end_consult(proto::EndConsultRequest {
                    interaction_id: interaction.clone(),
                    mode: mode as i32,
                    actor: actor.clone(),
                })
                .await?
                .into_inner(),
            )
        }
        C::Transfer {
            interaction,
            from,
            to,
            actor,
            media,
        } => printer.print(
            &i.transfer(proto::TransferRequest {
                interaction_id: interaction.clone(),
                from_participant_id: from.clone(),
                to: Some(spec(to, media)?),
                actor: actor.clone(),
            })
            .await?
            .into_inner(),
        ),
        C::Conference {
            interaction,
            participants,
            actor,
        } => printer.print(
            &i.conference(proto::ConferenceRequest {
                interaction_id: interaction.clone(),
                participant_ids: participants.clone(),
                actor: actor.clone(),
            })
            .await?
            .into_inner(),
        ),
        other => anyhow::bail!("not a call-control command: {other:?}"),
    }
}

/// The protobuf full name of a response type (the generated code does not implement
/// `prost::Name`).
trait Named {
    fn full_name() -> String;
}

macro_rules! named {
    ($($t:ident),* $(,)?) => {
        $(impl Named for proto::$t {
            fn full_name() -> String {
                concat!("earshot.v1.", stringify!($t)).to_owned()
            }
        })*
    };
}

named!(
    CreateInteractionResponse,
    Interaction,
    ListInteractionsResponse,
    AddParticipantResponse,
    StartConsultResponse,
    TransferResponse,
    UpdateMediaResponse,
    GetTimelineResponse,
    Event,
    StartSupervisionResponse,
    SupervisionInfo,
    ListSupervisionsResponse,
    User,
    GetStatsResponse,
);

/// Renders responses through the descriptor set.
struct Printer {
    pool: DescriptorPool,
    json: bool,
    show_keys: bool,
}

/// What `earshot ctl` prints instead of an SRTP key without `--show-keys`.
pub const REDACTED: &str = "[redacted]";

/// Replaces every non-empty key of every `earshot.v1.Srtp` inside `msg` by [`REDACTED`].
fn redact_keys(msg: &mut DynamicMessage) {
    let is_srtp = msg.descriptor().full_name() == "earshot.v1.Srtp";
    for (field, value) in msg.fields_mut() {
        match value {
            Value::String(s)
                if is_srtp
                    && matches!(field.name(), "remote_key" | "local_key")
                    && !s.is_empty() =>
            {
                *s = REDACTED.to_owned();
            }
            Value::Message(m) => redact_keys(m),
            Value::List(items) => {
                for v in items {
                    if let Value::Message(m) = v {
                        redact_keys(m);
                    }
                }
            }
            Value::Map(map) => {
                for v in map.values_mut() {
                    if let Value::Message(m) = v {
                        redact_keys(m);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Printer {
    fn new(json: bool, show_keys: bool) -> anyhow::Result<Printer> {
        let pool = DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .context("decoding the built-in descriptor set")?;
        Ok(Printer {
            pool,
            json,
            show_keys,
        })
    }

    /// The message as a dynamic message, by the Rust type's protobuf name, with SRTP
    /// keys redacted unless `--show-keys`.
    fn dynamic<M: prost::Message + Named>(&self, m: &M) -> anyhow::Result<DynamicMessage> {
        let desc = self
            .pool
            .get_message_by_name(&M::full_name())
            .with_context(|| format!("{} is not in the descriptor set", M::full_name()))?;
        let mut msg = DynamicMessage::decode(desc, m.encode_to_vec().as_slice())?;
        if !self.show_keys {
            redact_keys(&mut msg);
        }
        Ok(msg)
    }

    fn json_value(&self, msg: &DynamicMessage) -> anyhow::Result<serde_json::Value> {
        let options = prost_reflect::SerializeOptions::new()
            .skip_default_fields(false)
            .stringify_64_bit_integers(false);
        Ok(msg.serialize_with_options(serde_json::value::Serializer, &options)?)
    }

    fn print<M: prost::Message + Named>(&self, m: &M) -> anyhow::Result<()> {
        let msg = self.dynamic(m)?;
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&self.json_value(&msg)?)?
            )?;
        } else {
            let mut text = String::new();
            render_message(&msg, 0, &mut text);
            if text.is_empty() {
                text.push_str("ok\n");
            }
            out.write_all(text.as_bytes())?;
        }
        Ok(())
    }

    /// One line per event: NDJSON with --json, else `#seq time KIND interaction ...`.
    fn event_line(&self, event: &proto::Event) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.json {
            let v = self.json_value(&self.dynamic(event)?)?;
            writeln!(out, "{v}")?;
        } else {
            let kind = proto::EventKind::try_from(event.kind)
                .map(|k| k.as_str_name().trim_start_matches("EVENT_KIND_").to_owned())
                .unwrap_or_else(|_| event.kind.to_string());
            let mut details: Vec<_> = event.details.iter().collect();
            details.sort();
            let details: Vec<String> = details.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                out,
                "#{} {} {} {} actor={} {}",
                event.sequence,
                event.time_ms,
                kind,
                event.interaction_id,
                event.actor,
                details.join(" ")
            )?;
        }
        out.flush()?;
        Ok(())
    }
}

/// Whether a value says nothing and is left out of the human rendering: empty strings,
/// bytes, lists and maps, and UNSPECIFIED enums. Numbers and booleans are printed even
/// when zero or false: `payload_type: 0` (PCMU) and a zero drop counter are information.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::EnumNumber(n) => *n == 0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::List(l) => l.is_empty(),
        Value::Map(m) => m.is_empty(),
        _ => false,
    }
}

/// `PARTICIPANT_KIND_EXTERNAL` -> `EXTERNAL`: the enum's shared value prefix removed.
fn enum_name(kind: &Kind, n: i32) -> String {
    let Kind::Enum(e) = kind else {
        return n.to_string();
    };
    let Some(value) = e.get_value(n) else {
        return n.to_string();
    };
    let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
    let first = names.first().cloned().unwrap_or_default();
    let mut prefix_len = first.len();
    for name in &names {
        prefix_len = prefix_len.min(
            first
                .bytes()
                .zip(name.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let prefix = &first[..first[..prefix_len].rfind('_').map_or(0, |i| i + 1)];
    value.name().trim_start_matches(prefix).to_owned()
}

fn scalar(v: &Value, kind: &Kind) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F32(n) => n.to_string(),
        Value::F64(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        Value::EnumNumber(n) => enum_name(kind, *n),
        Value::List(_) | Value::Map(_) | Value::Message(_) => String::new(),
    }
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// Appends `field: value` lines, nested messages indented by two spaces.
fn render_message(msg: &DynamicMessage, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for field in msg.descriptor().fields() {
        // Unset message fields and unset optionals are absent; proto3 scalars are
        // always there (their default is a value).
        if field.supports_presence() && !msg.has_field(&field) {
            continue;
        }
        let value = msg.get_field(&field);
        if is_empty(&value) {
            continue;
        }
        let name = field.name();
        let kind = field.kind();
        match &*value {
            Value::Message(m) => {
                out.push_str(&format!("{pad}{name}:\n"));
                render_message(m, indent + 2, out);
            }
            Value::List(items) => {
                out.push_str(&format!("{pad}{name}:\n"));
                for item in items {
                    match item {
                        Value::Message(m) => {
                            let mut inner = String::new();
                            render_message(m, indent + 4, &mut inner);
                            // The first line of each item carries the list dash.
                            let inner = inner.trim_start();
                            out.push_str(&format!("{pad}  - {inner}"));
                            if inner.is_empty() {
                                out.push('\n');
                            }
                        }
                        other => out.push_str(&format!("{pad}  - {}\n", scalar(other, &kind))),
                    }
                }
            }
            Value::Map(entries) => {
                let mut pairs: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{}={}", map_key(k), scalar(v, &kind)))
                    .collect();
                pairs.sort();
                out.push_str(&format!("{pad}{name}: {}\n", pairs.join(" ")));
            }
            other => out.push_str(&format!("{pad}{name}: {}\n", scalar(other, &kind))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_prefixes_are_stripped_for_humans() {
        let printer = Printer::new(false, false).unwrap();
        let user = proto::User {
            user_id: "u1".into(),
            display_name: String::new(),
            permissions: vec!["conversation:call:monitor".into()],
            presence: proto::Presence::OnQueue as i32,
        };
        let mut text = String::new();
        render_message(&printer.dynamic(&user).unwrap(), 0, &mut text);
        assert_eq!(
            text, "user_id: u1\npermissions:\n  - conversation:call:monitor\npresence: ON_QUEUE\n",
            "empty strings are left out"
        );
    }

    #[test]
    fn zero_counters_are_printed_for_humans() {
        let printer = Printer::new(false, false).unwrap();
        let stats = proto::GetStatsResponse {
            backend: "memory".into(),
            cores: vec![proto::CoreStats {
                drops: vec![proto::Counter {
                    name: "truncated".into(),
                    value: 0,
                }],
                ..Default::default()
            }],
        };
        let mut text = String::new();
        render_message(&printer.dynamic(&stats).unwrap(), 0, &mut text);
        assert!(
            text.contains("      - name: truncated\n        value: 0\n"),
            "{text}"
        );
        assert!(text.contains("    packets_in: 0\n"), "{text}");
    }

    #[test]
    fn srtp_keys_are_redacted_unless_asked_for_in_both_renderings() {
        const KEY: &str = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let participant = proto::Participant {
            participant_id: "cust".into(),
            leg: Some(proto::Leg {
                local: "127.0.0.1:20000".into(),
                local_rtcp: "127.0.0.1:20000".into(),
                media: Some(proto::Media {
                    srtp: Some(proto::Srtp {
                        suite: "AES_CM_128_HMAC_SHA1_80".into(),
                        remote_key: String::new(),
                        local_key: KEY.into(),
                    }),
                    ..Default::default()
                }),
                node_id: String::new(),
            }),
            ..Default::default()
        };
        let reply = proto::AddParticipantResponse {
            participant: Some(participant),
            ..Default::default()
        };
        for json in [false, true] {
            let hidden = Printer::new(json, false).unwrap();
            let shown = Printer::new(json, true).unwrap();
            let text = |p: &Printer| {
                let msg = p.dynamic(&reply).unwrap();
                if json {
                    p.json_value(&msg).unwrap().to_string()
                } else {
                    let mut t = String::new();
                    render_message(&msg, 0, &mut t);
                    t
                }
            };
            let (h, s) = (text(&hidden), text(&shown));
            assert!(!h.contains("WVNf") && h.contains(REDACTED), "{h}");
            assert!(
                h.contains("AES_CM_128_HMAC_SHA1_80"),
                "the suite is not secret: {h}"
            );
            assert!(s.contains(KEY), "{s}");
        }
    }

    #[test]
    fn update_media_replies_show_our_key_only_when_asked() {
        const KEY: &str = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let reply = proto::UpdateMediaResponse {
            leg: Some(proto::Leg {
                media: Some(proto::Media {
                    srtp: Some(proto::Srtp {
                        suite: "AES_CM_128_HMAC_SHA1_80".into(),
                        remote_key: String::new(),
                        local_key: KEY.into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            existing: false,
            changed: vec!["srtp_remote_key".into()],
        };
        let render = |show: bool| {
            let p = Printer::new(false, show).unwrap();
            let mut t = String::new();
            render_message(&p.dynamic(&reply).unwrap(), 0, &mut t);
            t
        };
        let (hidden, shown) = (render(false), render(true));
        assert!(
            !hidden.contains("WVNf") && hidden.contains(REDACTED),
            "{hidden}"
        );
        assert!(hidden.contains("srtp_remote_key"), "{hidden}");
        assert!(shown.contains(KEY), "{shown}");
    }

    #[test]
    fn json_rendering_keeps_default_fields_and_numbers() {
        let printer = Printer::new(true, false).unwrap();
        let user = proto::User {
            user_id: "u1".into(),
            presence: proto::Presence::Available as i32,
            ..Default::default()
        };
        let v = printer
            .json_value(&printer.dynamic(&user).unwrap())
            .unwrap();
        assert_eq!(v["userId"], "u1");
        assert_eq!(v["presence"], "PRESENCE_AVAILABLE");
        assert_eq!(v["displayName"], "");
    }

    #[test]
    fn with_spec_parses_every_key_and_refuses_unknown_ones() {
        let media = MediaArgs {
            codec: "pcma".into(),
            payload_type: None,
            ptime_ms: 20,
            dtmf_pt: None,
            no_rtcp_mux: false,
            srtp_suite: None,
            srtp_remote_key: None,
            srtp_local_key: None,
            strict_source_ip: None,
            quiet_when_unheard: false,
        };
        let s = parse_spec(
            "id=x,kind=external,role=customer,user=u,remote=[::1]:4000",
            &media,
        )
        .unwrap();
        assert_eq!(s.participant_id, "x");
        assert_eq!(s.kind, proto::ParticipantKind::External as i32);
        assert_eq!(s.role, proto::Role::Customer as i32);
        assert_eq!(s.user_id, "u");
        let m = s.media.unwrap();
        assert_eq!(m.remote, "[::1]:4000");
        assert_eq!(m.payload_type, 8);
        assert!(parse_spec("id=x,colour=red", &media).is_err());
        assert!(parse_spec("kind=external", &media).is_err());
    }
}
