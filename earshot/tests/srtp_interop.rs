//! SRTP interoperability with libsrtp over real UDP, through the real engine.
//!
//! `earshot` (engine and sidecar in one process, on 127.0.0.1; the socket backend in two
//! tests, the default `auto`, io_uring where the kernel allows it, in the third) is driven
//! over gRPC exactly as an orchestrator would: each SRTP endpoint's own key goes in as
//! `media.srtp.remote_key`, and the engine's key comes back as `leg.media.srtp.local_key`
//! in the CreateInteraction / StartX response. The endpoints are the media pump's
//! sockets; an SRTP endpoint protects with libsrtp 2 (the independent implementation)
//! and unprotects what it receives with libsrtp, so every packet earshot's own SRTP
//! produced is checked by someone else's.
//!
//! Each scenario, in one call: the active call, coach, monitor, and barge escalated from
//! the monitor (SPEC section 1: monitor hears both and is heard by nobody, the coach is
//! heard by the agent only, barge by everyone), by tone detection on what each socket
//! received. Then, while the barge goes on, until the engine's first SRTCP reports
//! arrive (the engine sends a leg's first report 5 s after configuring it): every RTP
//! packet and every SRTCP report the engine sent an SRTP endpoint unprotects with
//! libsrtp (no failure once the endpoint has its keys), the reports' LSR echoes a sender
//! report the endpoint sent (so the engine decrypted the endpoint's SRTCP), and the
//! engine's GetStats counts no `srtp_auth`, `srtp_replay`, `srtp_protect` or
//! `bad_rtcp` drop. A last forged packet shows that the `srtp_auth` counter does count.
//!
//! The three tests run in parallel (each with its own `earshot`): about 13 s in all.
//! Without libsrtp 2 they print `SKIPPED: libsrtp2 not installed` and pass.

// Real processes and real sockets: waits and deadlines use the real clock.
#![allow(clippy::disallowed_methods)]

mod e2e;

use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e::*;
use earshot_control::proto;
use earshot_srtp::SrtpSuite;
use earshot_srtp::reference::{LibSrtp, RefSession};
use proto::{ParticipantKind as Kind, Role, SupervisionMode as Mode};

use Who::{Agent as A, Customer as C, Supervisor as S};

/// Plan switch, jitter buffer fill and first forwarded frames before measuring.
const SETTLE: Duration = Duration::from_millis(160);
/// How long each phase is measured (22 frames).
const MEASURE: Duration = Duration::from_millis(440);
/// The engine sends a leg's first RTCP report this long after configuring it (RFC 3550's
/// 5 s minimum, engine/core shard/legs.rs `RTCP_INTERVAL`)...
const FIRST_REPORT: Duration = Duration::from_secs(5);
/// ...and the wait for it stops this much later (loopback delivery, a loaded machine).
const REPORT_SLACK: Duration = Duration::from_millis(2500);

/// The SDES key parameter of `key_and_salt` (RFC 4568 section 6.1), with a lifetime as
/// phones often send it.
fn to_sdes(key_and_salt: &[u8]) -> String {
    format!(
        "inline:{}|2^31",
        base64::engine::general_purpose::STANDARD.encode(key_and_salt)
    )
}

/// The key||salt of an SDES key parameter, decoded here (not by earshot's parser).
fn from_sdes(suite: SrtpSuite, param: &str) -> Vec<u8> {
    let material = param
        .strip_prefix("inline:")
        .unwrap_or_else(|| panic!("local_key is not in inline: form ({} chars)", param.len()))
        .split('|')
        .next()
        .unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(material)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(material))
        .expect("local_key is base64");
    assert_eq!(
        bytes.len(),
        suite.master_len(),
        "local_key length for {suite:?}"
    );
    bytes
}

/// One endpoint of a scenario: which pump socket, and its suite when it speaks SRTP.
#[derive(Clone, Copy, Debug)]
struct Party {
    who: Who,
    suite: Option<SrtpSuite>,
}

/// What the test keeps of an SRTP leg it asked for: the endpoint's own key.
struct Offer {
    media: proto::Media,
    tx_key: Option<Vec<u8>>,
}

/// The media of a new leg of `party`: plain, or SRTP with a fresh endpoint key as
/// `remote_key` and no `local_key` (the engine's side generates it).
fn offer(pump: &Pump, party: Party, seed: u64) -> Offer {
    let mut media = media(pump.addr(party.who));
    let tx_key = party.suite.map(|suite| {
        let key = key_bytes(suite, seed);
        media.srtp = Some(proto::Srtp {
            suite: suite.sdes_name().into(),
            remote_key: to_sdes(&key),
            local_key: String::new(),
        });
        key
    });
    Offer { media, tx_key }
}

/// Gives the pump endpoint of `party` the libsrtp sessions of its new leg: its own key
/// to protect, the engine's `local_key` from the response to unprotect. Checks that the
/// response names the suite and never echoes the remote key.
fn install(lib: &'static LibSrtp, pump: &Pump, party: Party, offer: &Offer, leg: &proto::Leg) {
    let (Some(suite), Some(tx_key)) = (party.suite, offer.tx_key.as_ref()) else {
        return;
    };
    let srtp = leg
        .media
        .as_ref()
        .and_then(|m| m.srtp.as_ref())
        .unwrap_or_else(|| panic!("{:?}: the response's leg has no srtp", party.who));
    assert_eq!(srtp.suite, suite.sdes_name(), "{:?}: suite", party.who);
    assert!(
        srtp.remote_key.is_empty(),
        "{:?}: the remote key is echoed",
        party.who
    );
    let rx_key = from_sdes(suite, &srtp.local_key);
    assert_ne!(
        &rx_key, tx_key,
        "{:?}: the engine reuses our key",
        party.who
    );
    let tx = RefSession::new(lib, suite, tx_key, true, 0).expect("libsrtp outbound session");
    let rx = RefSession::new(lib, suite, &rx_key, false, 0).expect("libsrtp inbound session");
    pump.set_srtp(party.who, Some(SrtpEndpoint { tx, rx }));
}

/// A new supervision of the agent with a new supervisor leg: the endpoint drops the
/// keys of its previous leg first (what arrives before the response is not yet
/// decryptable), then gets the new leg's.
#[allow(clippy::too_many_arguments)]
async fn supervise_agent(
    api: &Api,
    pump: &Pump,
    lib: &'static LibSrtp,
    sup: Party,
    mode: Mode,
    supervision: &str,
    participant: &str,
    seed: u64,
) -> (proto::SupervisionInfo, Offer) {
    pump.send_to(S, None);
    if sup.suite.is_some() {
        pump.set_srtp(S, None);
    }
    let offer = offer(pump, sup, seed);
    let mut req = supervise(
        "call-1",
        supervision,
        "sup-1",
        participant,
        "a",
        pump.addr(S),
    );
    req.media = Some(offer.media.clone());
    let info = api
        .start(mode, req)
        .await
        .unwrap_or_else(|e| panic!("{mode:?} the agent: {e:?}"));
    let leg = info.leg.as_ref().expect("the supervisor's leg");
    install(lib, pump, sup, &offer, leg);
    pump.send_to(S, Some(leg_local(Some(leg))));
    (info, offer)
}

/// What an SRTP endpoint must have seen by the end: everything the engine sent it
/// unprotected by libsrtp, SRTCP reports among it whose LSR echoes one of its own
/// sender reports, and nothing that is not a 20 ms PCMU packet once decrypted.
fn check_endpoint(pump: &Pump, party: Party, failures: &mut Vec<String>) {
    let who = party.who;
    let odd = pump.odd_lengths(who);
    if odd > 0 {
        failures.push(format!("{who:?}: {odd} received RTP packets of odd length"));
    }
    let Some(suite) = party.suite else {
        return;
    };
    let c = pump.srtp_counts(who);
    println!("{who:?} ({}): {c:?}", suite.sdes_name());
    if c.rtp_failed > 0 || c.rtcp_failed > 0 || c.protect_failed > 0 {
        failures.push(format!("{who:?}: libsrtp refused packets: {c:?}"));
    }
    if c.rtp_ok < 100 {
        failures.push(format!("{who:?}: only {} SRTP packets", c.rtp_ok));
    }
    if c.rtcp_sent == 0 {
        failures.push(format!("{who:?}: sent no SRTCP"));
    }
    let reports = pump.rtcp_received(who);
    if reports.is_empty() {
        failures.push(format!("{who:?}: no SRTCP report from the engine"));
    }
    let ssrc = pump.ssrc(who);
    let sent = pump.sr_sent(who);
    let echoed = reports
        .iter()
        .flat_map(|r| report_blocks(r))
        .filter(|&(source, lsr)| source == ssrc && lsr != 0)
        .map(|(_, lsr)| lsr)
        .collect::<Vec<_>>();
    println!(
        "{who:?}: {} engine reports, LSR {echoed:08x?}, {} sender reports sent",
        reports.len(),
        sent.len()
    );
    if !reports.is_empty() && !echoed.iter().any(|lsr| sent.contains(lsr)) {
        failures.push(format!(
            "{who:?}: no engine report echoes one of its {} SRTCP sender reports (LSR {echoed:x?})",
            sent.len()
        ));
    }
}

/// Waits (bounded) until every SRTP endpoint has an SRTCP report from the engine, or
/// `deadline`.
async fn wait_for_reports(pump: &Pump, parties: &[Party], deadline: Instant) {
    while Instant::now() < deadline {
        let all = parties
            .iter()
            .filter(|p| p.suite.is_some())
            .all(|p| !pump.rtcp_received(p.who).is_empty());
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 20 ms PCMU packet in the clear: what an SRTP leg must refuse as `srtp_auth`.
fn plain_packet(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0x7F, 0xF0, 0, 0, 0, 0];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.resize(12 + 160, 0xFF);
    p
}

#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
async fn scenario(
    label: &str,
    backend: &str,
    customer: Option<SrtpSuite>,
    agent: Option<SrtpSuite>,
    sup: Option<SrtpSuite>,
) {
    let Some(lib) = libsrtp() else {
        return;
    };
    let (c, a, s) = (
        Party {
            who: C,
            suite: customer,
        },
        Party {
            who: A,
            suite: agent,
        },
        Party { who: S, suite: sup },
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut earshot, api) = start_earshot(dir.path(), backend).await;
    let in_use = api
        .engine()
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("GetStats")
        .into_inner()
        .backend;
    println!("{label}: engine backend {in_use}");
    if backend != "auto" {
        assert_eq!(in_use, backend, "the configured backend runs");
    }
    let pump = Pump::start();
    for p in [c, a, s] {
        if p.suite.is_some() {
            pump.secure(p.who);
        }
    }
    let mut failures = Vec::new();
    api.user(
        "agent-1",
        &["conversation:call:add"],
        proto::Presence::OnQueue,
    )
    .await;
    api.user("sup-1", &ALL_PERMISSIONS, proto::Presence::Available)
        .await;

    // The call: both legs' keys through CreateInteraction.
    let (c_offer, a_offer) = (offer(&pump, c, 1), offer(&pump, a, 2));
    let mut c_spec = spec("c", Kind::External, Role::Customer, "", pump.addr(C));
    c_spec.media = Some(c_offer.media.clone());
    let mut a_spec = spec("a", Kind::Internal, Role::Agent, "agent-1", pump.addr(A));
    a_spec.media = Some(a_offer.media.clone());
    let call = api
        .interactions()
        .create_interaction(proto::CreateInteractionRequest {
            interaction_id: "call-1".into(),
            participants: vec![c_spec, a_spec],
            actor: "srtp-interop".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateInteraction: {e:?}"))
        .into_inner()
        .interaction
        .expect("interaction");
    for (party, offer, id) in [(c, &c_offer, "c"), (a, &a_offer, "a")] {
        let p = call
            .participants
            .iter()
            .find(|p| p.participant_id == id)
            .expect("participant");
        install(lib, &pump, party, offer, p.leg.as_ref().expect("leg"));
    }
    pump.send_to(C, Some(local_of(&call, "c")));
    pump.send_to(A, Some(local_of(&call, "a")));
    let w = window(SETTLE, MEASURE).await;
    check_hears(
        &pump,
        &format!("{label}: call"),
        w,
        &[C, A],
        &[C, A],
        &all_pairs(&[C, A]),
        &mut failures,
    );

    // Coach: only the agent hears the supervisor.
    supervise_agent(&api, &pump, lib, s, Mode::Coach, "coach-1", "s1", 3).await;
    let w = window(SETTLE, MEASURE).await;
    let coached = [(C, A), (A, C), (S, C), (S, A), (A, S)];
    check_hears(
        &pump,
        &format!("{label}: coach"),
        w,
        &[C, A, S],
        &[C, A, S],
        &coached,
        &mut failures,
    );
    api.stop("coach-1").await;

    // Monitor: hears both, heard by nobody.
    let (mon, mon_offer) =
        supervise_agent(&api, &pump, lib, s, Mode::Monitor, "mon-1", "s2", 4).await;
    let mon_leg_at = Instant::now();
    let monitor_local = leg_local(mon.leg.as_ref());
    let w = window(SETTLE, MEASURE).await;
    let monitored = [(C, A), (A, C), (S, C), (S, A)];
    check_hears(
        &pump,
        &format!("{label}: monitor"),
        w,
        &[C, A, S],
        &[C, A, S],
        &monitored,
        &mut failures,
    );

    // Barge escalated in place: same leg, same keys; everyone hears everyone.
    let mut req = supervise("call-1", "barge-1", "sup-1", "s3", "a", pump.addr(S));
    req.media = Some(mon_offer.media.clone());
    let barge = api
        .start(Mode::Barge, req)
        .await
        .expect("escalate to barge");
    assert_eq!(
        barge.supervision_id, "mon-1",
        "escalation keeps the supervision"
    );
    assert_eq!(
        leg_local(barge.leg.as_ref()),
        monitor_local,
        "escalation keeps the leg"
    );
    let w = window(SETTLE, MEASURE).await;
    check_hears(
        &pump,
        &format!("{label}: barge"),
        w,
        &[C, A, S],
        &[C, A, S],
        &all_pairs(&[C, A, S]),
        &mut failures,
    );

    // The engine's first SRTCP reports: the call's legs' and the monitor-then-barge leg's.
    wait_for_reports(&pump, &[c, a, s], mon_leg_at + FIRST_REPORT + REPORT_SLACK).await;
    let w = window(Duration::ZERO, MEASURE).await;
    check_hears(
        &pump,
        &format!("{label}: barge, after the reports"),
        w,
        &[C, A, S],
        &[C, A, S],
        &all_pairs(&[C, A, S]),
        &mut failures,
    );
    earshot.assert_running();
    for p in [c, a, s] {
        check_endpoint(&pump, p, &mut failures);
    }
    for reason in ["srtp_auth", "srtp_replay", "srtp_protect", "bad_rtcp"] {
        let n = api.drops(reason).await;
        if n > 0 {
            failures.push(format!(
                "{label}: the engine dropped {n} packets as {reason}"
            ));
        }
    }

    // A packet in the clear to an SRTP leg is counted: the zeros above were read from a
    // counter that counts.
    let (secure, leg) = match (customer, agent) {
        (Some(_), _) => (C, local_of(&call, "c")),
        (_, Some(_)) => (A, local_of(&call, "a")),
        _ => unreachable!("every scenario has an SRTP call leg"),
    };
    pump.send_raw(secure, &plain_packet(pump.ssrc(secure)), leg);
    let deadline = Instant::now() + Duration::from_secs(3);
    while api.drops("srtp_auth").await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if api.drops("srtp_auth").await != 1 {
        failures.push(format!(
            "{label}: a plain packet to an SRTP leg was not counted once as srtp_auth ({})",
            api.drops("srtp_auth").await
        ));
    }
    assert!(failures.is_empty(), "{label}:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_customer_plain_agent_plain_supervisor() {
    scenario(
        "srtp customer, plain supervisor",
        "socket",
        Some(SrtpSuite::AesCm128HmacSha1_80),
        None,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_customer_plain_agent_srtp_supervisor() {
    scenario(
        "srtp customer, gcm supervisor",
        "socket",
        Some(SrtpSuite::AesCm128HmacSha1_80),
        None,
        Some(SrtpSuite::AeadAes128Gcm),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_customer_srtp_agent_srtp_supervisor() {
    scenario(
        "srtp agent, gcm-256 supervisor",
        // The engine's default: io_uring where the kernel allows it, else sockets.
        "auto",
        None,
        Some(SrtpSuite::AesCm128HmacSha1_32),
        Some(SrtpSuite::AeadAes256Gcm),
    )
    .await;
}
