//! Operations: the metrics endpoint, bearer-token authentication, the non-loopback bind
//! rule, TLS, and the `earshot ctl` client run as a real process.

// The control crate's test support (fake engine, test server, request builders),
// shared rather than copied.
// Only the binary locator is used here (the module allows its dead code).
mod e2e;
#[path = "../../control/server/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use earshot_control::proto;
use earshot_control::security::{AuthToken, SecurityError, TlsConfig, validate_bind};
use earshot_control::{ManualClock, ServerConfig};
use support::{FakeEngine, create_call};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A server on loopback ports (gRPC and metrics), stopped by dropping `stop`.
struct Running {
    grpc: SocketAddr,
    metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(data_dir: &Path, adjust: impl FnOnce(&mut ServerConfig)) -> Running {
        let mut config = ServerConfig::new(data_dir);
        config.clock = Arc::new(ManualClock::new(1_700_000_000_000));
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = listener.local_addr().unwrap();
        let metrics = metrics_listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(earshot_control::serve_with_listeners(
            config,
            listener,
            Some(metrics_listener),
            FakeEngine::new(30000),
            async move {
                let _ = rx.await;
            },
        ));
        Running {
            grpc,
            metrics,
            stop: Some(tx),
            task,
        }
    }

    async fn plaintext_channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

fn user(id: &str, permissions: &[&str]) -> proto::UpsertUserRequest {
    proto::UpsertUserRequest {
        user_id: id.into(),
        display_name: "Sam".into(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
    }
}

#[tokio::test]
async fn metrics_endpoint_serves_engine_and_rpc_metrics_after_some_rpcs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), |_| {}).await;
    let channel = server.plaintext_channel().await;
    let mut interactions = proto::interactions_client::InteractionsClient::new(channel.clone());
    interactions
        .create_interaction(create_call("call-1"))
        .await
        .unwrap();
    let missing = interactions
        .get_interaction(proto::GetInteractionRequest {
            interaction_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let response = http_get(server.metrics, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("Content-Type: text/plain; version=0.0.4"));
    for expected in [
        "earshot_engine_up 1",
        "earshot_engine_info{backend=\"memory\"} 1",
        // The fake engine reports the two legs of call-1 and its one session.
        "earshot_legs{shard=\"0\"} 2",
        "earshot_sessions{shard=\"0\"} 1",
        "earshot_packets_total{shard=\"0\",direction=\"in\"} 0",
        "earshot_bytes_total{shard=\"0\",direction=\"out\"} 0",
        "# TYPE earshot_drops_total counter",
        "# TYPE earshot_late_ticks_total counter",
        "earshot_stalls_total{shard=\"0\"} 0",
        "# TYPE earshot_tick_processing_seconds summary",
        "earshot_tick_lateness_seconds{shard=\"0\",quantile=\"0.999\"} 0",
        "earshot_rpc_requests_total{service=\"earshot.v1.Interactions\",method=\"CreateInteraction\",code=\"OK\"} 1",
        "earshot_rpc_requests_total{service=\"earshot.v1.Interactions\",method=\"GetInteraction\",code=\"NOT_FOUND\"} 1",
        "earshot_rpc_duration_seconds_count{service=\"earshot.v1.Interactions\",method=\"CreateInteraction\"} 1",
        "earshot_rpc_duration_seconds_bucket{service=\"earshot.v1.Interactions\",method=\"GetInteraction\",le=\"+Inf\"} 1",
    ] {
        assert!(
            response.contains(expected),
            "missing `{expected}` in:\n{response}"
        );
    }
    assert!(
        http_get(server.metrics, "/nothing")
            .await
            .starts_with("HTTP/1.1 404")
    );
    server.stop().await;
}

#[tokio::test]
async fn token_auth_refuses_missing_and_wrong_tokens_and_accepts_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), |c| {
        c.auth_token = Some(AuthToken::new("s3cret-token").unwrap());
    })
    .await;
    let channel = server.plaintext_channel().await;
    let with = |token: Option<&'static str>| {
        proto::directory_client::DirectoryClient::with_interceptor(
            channel.clone(),
            move |mut r: tonic::Request<()>| {
                if let Some(t) = token {
                    r.metadata_mut().insert("authorization", t.parse().unwrap());
                }
                Ok(r)
            },
        )
    };
    let refused = with(None).upsert_user(user("u1", &[])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = with(Some("Bearer wrong"))
        .upsert_user(user("u1", &[]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let ok = with(Some("Bearer s3cret-token"))
        .upsert_user(user("u1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.user_id, "u1");
    // Health stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    // Refusals are counted by the metrics layer.
    let metrics = http_get(server.metrics, "/metrics").await;
    assert!(metrics.contains(
        "earshot_rpc_requests_total{service=\"earshot.v1.Directory\",method=\"UpsertUser\",code=\"UNAUTHENTICATED\"} 2"
    ));
    server.stop().await;
}

#[tokio::test]
async fn non_loopback_bind_without_tls_or_token_is_refused_unless_insecure() {
    let mut config = ServerConfig::new("unused");
    config.grpc_addr = "0.0.0.0:50051".parse().unwrap();
    assert_eq!(
        validate_bind(&config),
        Err(SecurityError::InsecureBind {
            addr: config.grpc_addr
        })
    );
    let message = validate_bind(&config).unwrap_err().to_string();
    assert!(message.contains("--insecure") && message.contains("--token-file"));
    config.auth_token = Some(AuthToken::new("t").unwrap());
    assert_eq!(validate_bind(&config), Ok(()));
    config.auth_token = None;
    config.insecure = true;
    assert_eq!(validate_bind(&config), Ok(()));
    config.insecure = false;
    config.grpc_addr = "[::1]:50051".parse().unwrap();
    assert_eq!(validate_bind(&config), Ok(()), "IPv6 loopback is loopback");

    // serve() itself refuses before binding or opening the store.
    let mut config = ServerConfig::new("/nonexistent/never-created");
    config.grpc_addr = "0.0.0.0:0".parse().unwrap();
    let err = earshot_control::serve(config, FakeEngine::new(30000), async {})
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("without TLS or a token"),
        "{err:#}"
    );
}

#[test]
fn earshot_control_binary_refuses_an_insecure_public_bind_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(e2e::control_binary())
        .args(["--grpc", "0.0.0.0:0", "--metrics", "off", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure"), "{stderr}");
}

fn self_signed(name: &str) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

#[tokio::test]
async fn tls_server_serves_a_tls_client_and_mutual_tls_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed("localhost");
    let (client_cert, client_key) = self_signed("ops-client");
    let server = Running::start(dir.path(), |c| {
        c.tls = Some(TlsConfig {
            cert_pem: cert.clone().into_bytes(),
            key_pem: key.clone().into_bytes(),
            client_ca_pem: Some(client_cert.clone().into_bytes()),
        });
    })
    .await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert))
        .domain_name("localhost");
    let endpoint = Channel::from_shared(format!("https://{}", server.grpc)).unwrap();

    let good = endpoint
        .clone()
        .tls_config(
            tls.clone()
                .identity(Identity::from_pem(&client_cert, &client_key)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let u = proto::directory_client::DirectoryClient::new(good)
        .upsert_user(user("u1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.user_id, "u1");

    // Without a client certificate the handshake (or the first call) fails.
    let anonymous = async {
        let ch = endpoint.clone().tls_config(tls).unwrap().connect().await?;
        proto::directory_client::DirectoryClient::new(ch)
            .upsert_user(user("u2", &[]))
            .await
            .map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    assert!(
        anonymous.await.is_err(),
        "mutual TLS admits no anonymous client"
    );

    // Plaintext against the TLS port fails too.
    let plain = async {
        let ch = Channel::from_shared(format!("http://{}", server.grpc))?
            .connect()
            .await?;
        proto::directory_client::DirectoryClient::new(ch)
            .upsert_user(user("u3", &[]))
            .await
            .map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    assert!(plain.await.is_err());
    server.stop().await;
}

/// Runs `earshot ctl --addr <server> <args>` off the async runtime.
async fn ctl(addr: SocketAddr, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_earshot"));
    cmd.arg("ctl")
        .arg("--addr")
        .arg(format!("http://{addr}"))
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_prints_human_and_json_output_and_refusals_with_code_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), |c| {
        c.auth_token = Some(AuthToken::new("tok").unwrap());
    })
    .await;
    let addr = server.grpc;

    let out = ctl(
        addr,
        &[
            "--token",
            "tok",
            "directory",
            "upsert-user",
            "--user",
            "sup-1",
            "--name",
            "Sam",
            "--permission",
            "conversation:call:add",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("user_id: sup-1\n"), "{text}");
    assert!(text.contains("  - conversation:call:add\n"), "{text}");
    assert!(
        text.contains("presence: OFFLINE\n"),
        "enum prefix stripped: {text}"
    );

    let out = ctl(
        addr,
        &[
            "--token",
            "tok",
            "interactions",
            "create",
            "--id",
            "call-9",
            "--customer",
            "c",
            "--customer-remote",
            "127.0.0.1:40000",
            "--agent",
            "a",
            "--agent-user",
            "agent-9",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("interaction_id: call-9"));

    let out = ctl(
        addr,
        &[
            "--token",
            "tok",
            "--json",
            "interactions",
            "get",
            "--id",
            "call-9",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["interactionId"], "call-9");
    let participants = v["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 2);
    assert_eq!(participants[0]["kind"], "PARTICIPANT_KIND_EXTERNAL");
    assert_eq!(participants[0]["leg"]["media"]["remote"], "127.0.0.1:40000");
    assert!(
        participants[1]["leg"]["local"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // A rules refusal: the supervisor lacks conversation:call:monitor.
    let out = ctl(
        addr,
        &[
            "--token",
            "tok",
            "supervision",
            "monitor",
            "--interaction",
            "call-9",
            "--supervisor-user",
            "sup-1",
            "--target",
            "a",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: PERMISSION_DENIED MISSING_PERMISSION: "),
        "{err}"
    );

    let out = ctl(
        addr,
        &[
            "--token",
            "tok",
            "--json",
            "interactions",
            "get",
            "--id",
            "bad id!",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let e: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(e["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(e["error"]["field"], "interaction_id");
    assert!(!e["error"]["reason"].as_str().unwrap().is_empty());

    // Without the token the server refuses, and ctl says so.
    let out = ctl(addr, &["engine", "stats"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: UNAUTHENTICATED"));

    let out = ctl(addr, &["--token", "tok", "engine", "stats"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("backend: memory"), "{}", stdout(&out));

    let out = ctl(
        addr,
        &[
            "--token", "tok", "--json", "events", "watch", "--from", "0", "--count", "2",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["sequence"].as_u64().unwrap() < lines[1]["sequence"].as_u64().unwrap());
    server.stop().await;
}

/// The `earshot ctl` lines of docs/operations.md's "A call from a shell" example, with
/// backslash continuations joined and a trailing `| jq ...` cut.
fn documented_ctl_commands() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    let start = doc
        .find("A call from a shell:")
        .expect("the example section");
    let block = &doc[start..];
    let block = &block[block.find("```sh").expect("its sh block") + 5..];
    let block = &block[..block.find("```").expect("the block's end")];
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if let Some(cont) = line.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let command = std::mem::take(&mut current);
        let command = command
            .split(" | ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if let Some(rest) = command.strip_prefix("earshot ctl ") {
            commands.push(shell_words(rest));
        }
    }
    commands
}

/// Splits on spaces, honouring double quotes (enough for the documented examples).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_ctl_example_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path(), |_| {}).await;
    let commands = documented_ctl_commands();
    assert!(commands.len() >= 8, "the example was found: {commands:?}");
    for args in &commands {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctl(server.grpc, &refs).await;
        assert!(
            out.status.success(),
            "earshot ctl {}\nstdout: {}\nstderr: {}",
            args.join(" "),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // monitor -> stop -> coach with defaults, then barge escalated the coach in place.
    let out = ctl(
        server.grpc,
        &[
            "--json",
            "supervision",
            "list",
            "--interaction",
            "call-1",
            "--include-ended",
        ],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("sup-call-1-sup-1-1") && text.contains("sup-call-1-sup-1-2"),
        "{text}"
    );
    server.stop().await;
}
