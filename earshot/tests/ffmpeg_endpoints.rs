//! ffmpeg as the phones: real RTP endpoints that are not ours, over real UDP, through the
//! real engine (issue 12).
//!
//! `earshot` (engine and sidecar in one process, on 127.0.0.1) is driven over gRPC as an
//! orchestrator would. Every party of the call (customer, agent, supervisor) is an
//! ffmpeg endpoint of its own codec: one ffmpeg process sends the party's tones
//! (`-f lavfi -i aevalsrc=...`, `-re`, encoded with the leg's codec, `-f rtp`), another
//! receives what the engine sends, from an SDP file that describes it (codec, payload
//! type, clock rate, port), decodes it with ffmpeg's own decoder, resamples it to 16 kHz
//! and streams it as raw s16le to the test, which stamps what arrives with its arrival
//! time and measures each party's tones with the Goertzel detector of
//! `earshot_testkit::tone`. So every byte the engine sends is decoded by someone else's
//! decoder, and every byte it decodes was encoded by someone else's encoder.
//!
//! Each scenario, in one call: the active call, coach, monitor, and barge escalated from
//! the monitor (SPEC section 1: the monitor hears both and is heard by nobody, the coach
//! is heard by the agent only, barge by everyone). In every phase each listening party
//! must hear (present in 90% of its 20 ms windows) the tones of whom it should hear and
//! must not hear (mean below -30 dB) the others, nor its own tone (the mix is N-1).
//! Wideband parties (G.722, L16 at 16 or 48 kHz, Opus) also send a tone above 4 kHz:
//! a wideband listener must hear it, which a mix run at 8 kHz cannot pass; a narrowband
//! (PCMU) listener must not hear it, nor its alias below 4 kHz (8000 - f), which a
//! downsampler without an anti-alias filter would leave. A listener that hears exactly
//! one source of its own codec (the call, the customer under coach, both call parties
//! under monitor) gets that source's packets byte for byte as its ffmpeg encoded them:
//! the engine forwards there, it does not transcode. At the end: the engine sent
//! each endpoint only packets of that leg's payload type (and, for the constant-rate
//! codecs, of that leg's ptime), and GetStats counts no drop of ffmpeg's RTP or RTCP
//! sender reports as malformed, from a wrong source, of an unknown payload type or
//! oversized.
//!
//! The source address. The engine accepts a leg's RTP and RTCP only from its remote, ip
//! and port (configured in `media.remote`, or latched from the first packet), and sends
//! to that same address: symmetric RTP, as the phones of a contact center do. ffmpeg's
//! sender and receiver are two processes with two sockets, so neither `remote` = the
//! receiver's address (the sender's packets come from another port and are dropped as
//! `wrong_source`) nor latching on the sender (the engine would send to the sender's
//! port, which reads nothing) works. Binding the sender to the receiver's port
//! (`rtp://...?localrtpport=P&reuse=1`) fails, ffmpeg 5.1: "bind failed: Address already
//! in use" (its RTP protocol does not pass `reuse` on), and were both sockets bound with
//! SO_REUSEADDR the kernel, not the test, would pick the one that gets each datagram.
//! So each endpoint has a relay in the test that owns the one socket the
//! engine sees (`remote` = that socket): what the ffmpeg sender sends to the relay's
//! other socket (RTP, and its RTCP sender reports via `rtcpport=`) leaves from the
//! engine-facing socket to the leg, and what the engine sends to it goes on to the
//! ffmpeg receiver's port. The relay forwards bytes as they are (it never rewrites RTP)
//! and looks at what the engine sent, for the payload-type and size check. One liberty:
//! ffmpeg sends an RTCP sender report before its first RTP packet and then every 5 s,
//! longer than a phase, so the relay keeps the last one and gives it to each new leg
//! first (as a phone reports once answered).
//!
//! The four tests are independent, each with its own `earshot` and six ffmpeg processes
//! (libtest runs two at a time on a 2-core machine: about 5 s each, 10 s in all):
//! PCMU everywhere, G.722 customer and agent with a PCMU supervisor, a mixed-codec call
//! (PCMU trunk customer, Opus agent, G.722 supervisor), and L16 (customer at 16 kHz,
//! supervisor at 48 kHz with 10 ms packets, PCMU agent). Every ffmpeg is killed and
//! reaped on drop. Without ffmpeg (or one of its encoders) a test prints
//! `SKIPPED: ffmpeg not installed` (or which encoder is missing) and passes; CI
//! installs ffmpeg (`.ci/run`).

// Real processes and real sockets: waits, deadlines and arrival stamps use the real clock.
#![allow(clippy::disallowed_methods)]

mod e2e;

use std::collections::HashSet;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ChildStdout;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e::*;
use earshot_control::proto;
use earshot_testkit::tone::tone_report;
use proto::{ParticipantKind as Kind, Role, SupervisionMode as Mode};

use Who::{Agent as A, Customer as C, Supervisor as S};

/// Plan switch, jitter buffers, ffmpeg's decoder and pipe before measuring (after the
/// new leg's first audio reached the test).
const SETTLE: Duration = Duration::from_millis(250);
/// How long each phase is measured (25 windows of 20 ms).
const MEASURE: Duration = Duration::from_millis(500);
/// Packets each ffmpeg sender sends before the call starts (200 ms at 20 ms)...
const STEADY_PACKETS: u64 = 10;
/// ...within this bound.
const SENDERS_UP: Duration = Duration::from_secs(20);
/// The bound on the wait for a new leg's first audio at the test.
const FIRST_AUDIO: Duration = Duration::from_secs(10);
/// Every receiver decodes and resamples to this rate: enough for the wideband tones,
/// and the same analysis for every codec.
const OUT_RATE_HZ: u32 = 16_000;
/// Analysis window: 20 ms, a whole number of periods of every tone (multiples of 50 Hz).
const WINDOW_SAMPLES: usize = 320;
/// Amplitude of each generated tone relative to full scale: two tones of a party and
/// the mix of two parties stay far from clipping.
const TONE_SCALE: f64 = 0.125;
/// A tone is not heard when its mean power is at least this far below the sent tone's.
const ABSENT_DB: f64 = -30.0;
/// The highest frequency a narrowband (8 kHz) leg can carry.
const NARROWBAND_NYQUIST_HZ: f64 = 4000.0;
/// A phase's audio at a listener must cover at least this fraction of the window.
const MIN_COVERAGE: f64 = 0.8;

/// The reference amplitude of a generated tone in 16-bit units (ffmpeg scales float
/// samples by 32768).
fn reference_amplitude() -> f64 {
    TONE_SCALE * 32768.0
}

// ----------------------------------------------------------------------------------
// Codecs on the wire.

/// A leg's codec as both the engine and ffmpeg are told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// G.711 mu-law, payload type 0.
    Pcmu,
    /// G.722 (16 kHz audio on RFC 3551's 8000 Hz RTP clock), payload type 9.
    G722,
    /// Linear 16-bit big-endian mono at `rate_hz`, dynamic payload type 96.
    L16 { rate_hz: u32, ptime_ms: u32 },
    /// Opus (48 kHz RTP clock, `opus/48000/2`), dynamic payload type 111.
    Opus,
}

impl Wire {
    fn payload_type(self) -> u8 {
        match self {
            Wire::Pcmu => 0,
            Wire::G722 => 9,
            Wire::L16 { .. } => 96,
            Wire::Opus => 111,
        }
    }

    /// The audio sample rate of the codec (what the sender generates at).
    fn audio_rate_hz(self) -> u32 {
        match self {
            Wire::Pcmu => 8000,
            Wire::G722 => 16_000,
            Wire::L16 { rate_hz, .. } => rate_hz,
            Wire::Opus => 48_000,
        }
    }

    /// The RTP clock of the `a=rtpmap` line.
    fn rtp_clock_hz(self) -> u32 {
        match self {
            Wire::Pcmu | Wire::G722 => 8000,
            Wire::L16 { rate_hz, .. } => rate_hz,
            Wire::Opus => 48_000,
        }
    }

    fn ptime_ms(self) -> u32 {
        match self {
            Wire::L16 { ptime_ms, .. } => ptime_ms,
            _ => 20,
        }
    }

    /// Carries audio above 4 kHz.
    fn wideband(self) -> bool {
        self.audio_rate_hz() > 8000
    }

    /// ffmpeg's encoder.
    fn encoder(self) -> &'static str {
        match self {
            Wire::Pcmu => "pcm_mulaw",
            Wire::G722 => "g722",
            Wire::L16 { .. } => "pcm_s16be",
            Wire::Opus => "libopus",
        }
    }

    /// The encoding of the `a=rtpmap` line.
    fn rtpmap(self) -> String {
        match self {
            Wire::Pcmu => "PCMU/8000".into(),
            Wire::G722 => "G722/8000".into(),
            Wire::L16 { rate_hz, .. } => format!("L16/{rate_hz}/1"),
            Wire::Opus => "opus/48000/2".into(),
        }
    }

    fn codec(self) -> proto::Codec {
        match self {
            Wire::Pcmu => proto::Codec::Pcmu,
            Wire::G722 => proto::Codec::G722,
            Wire::L16 { .. } => proto::Codec::L16,
            Wire::Opus => proto::Codec::Opus,
        }
    }

    /// The payload size of one packet of a constant-rate codec (`None` for Opus).
    fn payload_bytes(self) -> Option<usize> {
        let samples = (self.audio_rate_hz() * self.ptime_ms() / 1000) as usize;
        match self {
            Wire::Pcmu => Some(samples),
            // 4 bits a sample at 16 kHz: one octet per RTP clock tick.
            Wire::G722 => Some(samples / 2),
            Wire::L16 { .. } => Some(2 * samples),
            Wire::Opus => None,
        }
    }

    /// The leg's `Media` as docs/api.md maps this SDP to it, sending to `remote`.
    fn media(self, remote: SocketAddr) -> proto::Media {
        proto::Media {
            codec: self.codec() as i32,
            payload_type: u32::from(self.payload_type()),
            ptime_ms: self.ptime_ms(),
            clock_rate_hz: self.rtp_clock_hz(),
            // ffmpeg negotiates no telephone-event.
            telephone_event_pt: None,
            ..media(remote)
        }
    }

    /// The SDP the receiving ffmpeg reads: what the engine sends, to `port`.
    fn sdp(self, who: Who, port: u16) -> String {
        let pt = self.payload_type();
        format!(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=earshot leg of the {who:?}\r\n\
             c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {pt}\r\n\
             a=rtpmap:{pt} {}\r\na=ptime:{}\r\n",
            self.rtpmap(),
            self.ptime_ms()
        )
    }
}

/// One party: who it is, its codec, and the tones it sends (its own low tone, and a
/// high one above 4 kHz on a wideband codec).
#[derive(Clone, Copy, Debug)]
struct Party {
    who: Who,
    wire: Wire,
    high_hz: Option<f64>,
}

impl Party {
    fn new(who: Who, wire: Wire, high_hz: Option<f64>) -> Party {
        if let Some(hz) = high_hz {
            assert!(
                wire.wideband() && hz > NARROWBAND_NYQUIST_HZ && hz < 7000.0,
                "{who:?}: a high tone needs a wideband codec and 4..7 kHz"
            );
        }
        Party { who, wire, high_hz }
    }

    fn tones_hz(&self) -> Vec<f64> {
        std::iter::once(self.who.tone_hz())
            .chain(self.high_hz)
            .collect()
    }
}

// ----------------------------------------------------------------------------------
// ffmpeg.

/// The ffmpeg program when it is installed with every encoder of `parties`; `None`
/// after printing why the test skips.
fn ffmpeg(parties: &[Party]) -> Option<PathBuf> {
    let program = PathBuf::from("ffmpeg");
    let Ok(out) = std::process::Command::new(&program)
        .args(["-hide_banner", "-encoders"])
        .output()
    else {
        println!("SKIPPED: ffmpeg not installed");
        return None;
    };
    let list = String::from_utf8_lossy(&out.stdout);
    for p in parties {
        let encoder = p.wire.encoder();
        if !list.split_whitespace().any(|w| w == encoder) {
            println!("SKIPPED: ffmpeg has no {encoder} encoder");
            return None;
        }
    }
    Some(program)
}

/// The ffmpeg process that sends `party`'s tones as RTP to `dest` (its RTCP sender
/// reports too, `rtcpport`), paced in real time (`-re`), one packet per ptime.
fn start_sender(ffmpeg: &Path, dir: &Path, party: Party, dest: SocketAddr) -> ChildGuard {
    let wire = party.wire;
    let rate = wire.audio_rate_hz();
    let expr = party
        .tones_hz()
        .iter()
        .map(|hz| format!("{TONE_SCALE}*sin(2*PI*{hz}*t)"))
        .collect::<Vec<_>>()
        .join("+");
    // One generated frame per packet: ffmpeg's RTP muxer sends each PCM or G.722
    // frame as one packet (cut at 1460 bytes), so the frame size is the ptime.
    let frame = rate * wire.ptime_ms() / 1000;
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("aevalsrc=exprs={expr}:s={rate}:n={frame}"),
        // A bound in case the guard is never dropped.
        "-t",
        "60",
        "-ac",
        "1",
        "-ar",
        &rate.to_string(),
        "-c:a",
        wire.encoder(),
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    if wire == Wire::Opus {
        args.extend(["-b:a", "64k", "-frame_duration", "20"].map(String::from));
    }
    args.extend([
        "-payload_type".into(),
        wire.payload_type().to_string(),
        "-f".into(),
        "rtp".into(),
        format!("rtp://{dest}?rtcpport={}", dest.port()),
    ]);
    let name = format!("ffmpeg sender of the {:?}", party.who);
    let log = dir.join(format!("send-{:?}.log", party.who));
    ChildGuard::spawn(&name, ffmpeg, &args, &log)
}

/// The first port of the receivers' pairs: above the engines' port ranges
/// ([`free_port_base`]: at most 22 x 1024) and below the kernel's ephemeral range
/// (32768..), so that no socket the test or ffmpeg binds to port 0 can take a pair
/// between the check here and ffmpeg's bind.
const RECEIVER_PORTS: u16 = 24 * 1024;
static NEXT_PAIR: AtomicU16 = AtomicU16::new(0);

/// An even UDP port whose next port is free too: ffmpeg's RTP input binds the SDP's
/// port and the one after it (RTCP), on every address. Each call in this test binary
/// gets another pair.
fn free_udp_pair() -> u16 {
    loop {
        let n = NEXT_PAIR.fetch_add(1, Ordering::Relaxed);
        let port = RECEIVER_PORTS + 2 * n;
        assert!(port < 32_766, "no free pair of UDP ports for the receivers");
        let free = |p: u16| UdpSocket::bind(("0.0.0.0", p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
}

/// What a receiving ffmpeg decoded so far: samples at [`OUT_RATE_HZ`], and after each
/// read from its pipe the arrival time and the number of samples until then.
#[derive(Debug, Default)]
struct Decoded {
    samples: Vec<i16>,
    arrivals: Vec<(Instant, usize)>,
}

/// A receiving ffmpeg (RTP per an SDP file, decoded, resampled to 16 kHz mono, raw
/// s16le on its stdout) and the thread that reads it as it comes.
#[derive(Debug)]
struct Receiver {
    port: u16,
    decoded: Arc<Mutex<Decoded>>,
    reader: Option<JoinHandle<()>>,
    child: ChildGuard,
}

impl Receiver {
    fn start(ffmpeg: &Path, dir: &Path, party: Party) -> Receiver {
        let port = free_udp_pair();
        let sdp = dir.join(format!("{:?}.sdp", party.who));
        std::fs::write(&sdp, party.wire.sdp(party.who, port)).expect("write sdp");
        let args: Vec<String> = [
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-protocol_whitelist",
            "file,udp,rtp",
            // No reordering queue: a new leg of the same party (a new supervision)
            // starts another RTP stream, which a queue would hold back as "missing
            // packets"; ffmpeg then resynchronises after one packet.
            "-reorder_queue_size",
            "0",
            "-fflags",
            "nobuffer",
            "-i",
            &sdp.display().to_string(),
            // No `-t` bound here (the guard is the bound): ffmpeg counts it in the
            // stream's timestamps, and a new leg's stream starts at another random RTP
            // timestamp, which can look like minutes later.
            "-ac",
            "1",
            "-ar",
            &OUT_RATE_HZ.to_string(),
            "-f",
            "s16le",
            "-flush_packets",
            "1",
            "pipe:1",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        let name = format!("ffmpeg receiver of the {:?}", party.who);
        let log = dir.join(format!("recv-{:?}.log", party.who));
        let (child, stdout) = ChildGuard::spawn_piped(&name, ffmpeg, &args, &log);
        let decoded = Arc::new(Mutex::new(Decoded::default()));
        let reader = {
            let decoded = Arc::clone(&decoded);
            std::thread::Builder::new()
                .name(format!("read-{:?}", party.who))
                .spawn(move || read_pcm(stdout, &decoded))
                .expect("spawn reader")
        };
        Receiver {
            port,
            decoded,
            reader: Some(reader),
            child,
        }
    }

    /// Samples decoded so far.
    fn total(&self) -> usize {
        self.decoded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .samples
            .len()
    }

    /// The samples that reached the test between `from` and `to`.
    fn between(&self, from: Instant, to: Instant) -> Vec<i16> {
        let d = self.decoded.lock().unwrap_or_else(|e| e.into_inner());
        let upto = |t: Instant| {
            d.arrivals
                .iter()
                .take_while(|(at, _)| *at <= t)
                .last()
                .map_or(0, |&(_, n)| n)
        };
        let (start, end) = (upto(from), upto(to));
        d.samples[start..end.max(start)].to_vec()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Killing ffmpeg closes the pipe, which ends the reader.
        self.child.kill9();
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

/// Reads raw s16le from `pipe` until it closes, stamping each read.
fn read_pcm(mut pipe: ChildStdout, decoded: &Mutex<Decoded>) {
    let mut buf = [0u8; 8192];
    let mut odd: Option<u8> = None;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = Instant::now();
        let mut d = decoded.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = buf[..n].iter().copied();
        if let Some(lo) = odd.take() {
            let hi = bytes.next().expect("n > 0");
            d.samples.push(i16::from_le_bytes([lo, hi]));
        }
        let rest: Vec<u8> = bytes.collect();
        let mut pairs = rest.chunks_exact(2);
        for p in &mut pairs {
            d.samples.push(i16::from_le_bytes([p[0], p[1]]));
        }
        odd = pairs.remainder().first().copied();
        let total = d.samples.len();
        d.arrivals.push((now, total));
    }
}

// ----------------------------------------------------------------------------------
// The relay: one symmetric-RTP address per endpoint.

/// What the relay saw go between an endpoint and the engine.
#[derive(Debug, Default, Clone)]
struct Traffic {
    rtp: u64,
    rtcp: u64,
    /// RTP packets of another payload type or (constant-rate codecs) another size.
    odd: u64,
    /// Payload type and payload length of the last odd packet.
    last_odd: Option<(u8, usize)>,
    /// RTP packets of the ffmpeg sender forwarded to the engine.
    rtp_to_engine: u64,
    /// RTCP reports of the ffmpeg sender forwarded to the engine.
    rtcp_to_engine: u64,
    /// Datagrams the ffmpeg sender sent the relay, with or without a leg to go to.
    from_sender: u64,
}

/// RTP payloads as they crossed the relay, for the forwarding check.
#[derive(Debug, Default)]
struct Payloads {
    /// What the ffmpeg sender sent the engine.
    sent: HashSet<Vec<u8>>,
    /// What the engine sent the endpoint, stamped on arrival.
    received: Vec<(Instant, Vec<u8>)>,
}

/// The payload of an RTP packet (after the CSRC list and any header extension), or
/// `None` when the header does not fit.
fn rtp_payload(packet: &[u8]) -> Option<&[u8]> {
    let mut at = 12 + 4 * usize::from(*packet.first()? & 0x0F);
    if packet[0] & 0x10 != 0 {
        let words = packet.get(at + 2..at + 4)?;
        at += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    packet.get(at..)
}

/// Where the relay sends the ffmpeg sender's packets.
#[derive(Debug, Default)]
struct Route {
    /// The leg's local address; `None` while the party has no leg.
    leg: Option<SocketAddr>,
    /// The sender's last RTCP report. ffmpeg sends one before its first RTP packet and
    /// then every 5 s, longer than a phase lasts: a new leg gets this one at once, as
    /// a phone reports when its call is answered, so the engine parses ffmpeg's RTCP.
    last_report: Option<Vec<u8>>,
}

/// RTCP (RFC 5761: payload types 200..=204 on a muxed port).
fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (200..=204).contains(&packet[1])
}

/// The endpoint's one address as the engine sees it (`far`, the leg's remote), and the
/// address its ffmpeg sender sends to (`near`). Two threads forward, bytes unchanged:
/// near to the leg's local address (nothing while there is no leg), far to the ffmpeg
/// receiver.
#[derive(Debug)]
struct Relay {
    near: SocketAddr,
    far: SocketAddr,
    far_sock: Arc<UdpSocket>,
    route: Arc<Mutex<Route>>,
    seen: Arc<Mutex<Traffic>>,
    payloads: Arc<Mutex<Payloads>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(who: Who, wire: Wire, receiver: SocketAddr) -> Relay {
        let bind = || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind relay socket");
            // Bounded blocking reads: the threads check `stop` between datagrams.
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("read timeout");
            Arc::new(s)
        };
        let (near_sock, far_sock) = (bind(), bind());
        let near = near_sock.local_addr().expect("addr");
        let far = far_sock.local_addr().expect("addr");
        let route = Arc::new(Mutex::new(Route::default()));
        let seen = Arc::new(Mutex::new(Traffic::default()));
        let payloads = Arc::new(Mutex::new(Payloads::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let outbound = {
            let (far_sock, route, seen, payloads) = (
                Arc::clone(&far_sock),
                Arc::clone(&route),
                Arc::clone(&seen),
                Arc::clone(&payloads),
            );
            move |packet: &[u8]| {
                seen.lock().unwrap_or_else(|e| e.into_inner()).from_sender += 1;
                let mut route = route.lock().unwrap_or_else(|e| e.into_inner());
                if is_rtcp(packet) {
                    route.last_report = Some(packet.to_vec());
                }
                if let Some(dest) = route.leg
                    && far_sock.send_to(packet, dest).is_ok()
                {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if is_rtcp(packet) {
                        seen.rtcp_to_engine += 1;
                    } else {
                        seen.rtp_to_engine += 1;
                        if let Some(payload) = rtp_payload(packet) {
                            payloads
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .sent
                                .insert(payload.to_vec());
                        }
                    }
                }
            }
        };
        let inbound = {
            let (far_sock, seen, payloads) = (
                Arc::clone(&far_sock),
                Arc::clone(&seen),
                Arc::clone(&payloads),
            );
            move |packet: &[u8]| {
                if !is_rtcp(packet)
                    && let Some(payload) = rtp_payload(packet)
                {
                    payloads
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .received
                        .push((Instant::now(), payload.to_vec()));
                }
                note_from_engine(
                    &mut seen.lock().unwrap_or_else(|e| e.into_inner()),
                    wire,
                    packet,
                );
                // Before the receiving ffmpeg binds its port the datagram is lost,
                // as it would be on the way to a phone that is not ready.
                let _ = far_sock.send_to(packet, receiver);
            }
        };
        let threads = vec![
            forward(
                format!("relay-out-{who:?}"),
                near_sock,
                Arc::clone(&stop),
                outbound,
            ),
            forward(
                format!("relay-in-{who:?}"),
                Arc::clone(&far_sock),
                Arc::clone(&stop),
                inbound,
            ),
        ];
        Relay {
            near,
            far,
            far_sock,
            route,
            seen,
            payloads,
            stop,
            threads,
        }
    }

    /// Sends the ffmpeg sender's packets to a leg's local address (starting with its
    /// last RTCP report), or nowhere.
    fn send_to(&self, leg: Option<SocketAddr>) {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        route.leg = leg;
        if let (Some(dest), Some(report)) = (leg, route.last_report.as_ref())
            && self.far_sock.send_to(report, dest).is_ok()
        {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rtcp_to_engine += 1;
        }
    }

    fn seen(&self) -> Traffic {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A thread that hands every datagram `sock` receives to `handle` until `stop`.
fn forward(
    name: String,
    sock: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    handle: impl Fn(&[u8]) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                // Timeouts, and ICMP errors of earlier sends: nothing to forward.
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    handle(&buf[..n]);
                }
            }
        })
        .expect("spawn relay thread")
}

/// Counts one datagram from the engine: RTCP (RFC 5761 payload types 200..=204 on the
/// muxed port), or RTP checked against the leg's payload type and packet size.
fn note_from_engine(seen: &mut Traffic, wire: Wire, packet: &[u8]) {
    if is_rtcp(packet) {
        seen.rtcp += 1;
        return;
    }
    seen.rtp += 1;
    if packet.len() < 12 {
        seen.odd += 1;
        seen.last_odd = Some((0, packet.len()));
        return;
    }
    let pt = packet[1] & 0x7F;
    let payload = rtp_payload(packet).map_or(0, <[u8]>::len);
    let size_ok = payload > 0 && wire.payload_bytes().is_none_or(|n| n == payload);
    if pt != wire.payload_type() || !size_ok {
        seen.odd += 1;
        seen.last_odd = Some((pt, payload));
    }
}

// ----------------------------------------------------------------------------------
// Endpoints and checks.

/// One party as ffmpeg: its relay, its receiving and its sending process.
#[derive(Debug)]
struct Endpoint {
    party: Party,
    relay: Relay,
    receiver: Receiver,
    sender: ChildGuard,
}

impl Endpoint {
    fn start(ffmpeg: &Path, dir: &Path, party: Party) -> Endpoint {
        let receiver = Receiver::start(ffmpeg, dir, party);
        let relay = Relay::start(
            party.who,
            party.wire,
            SocketAddr::from(([127, 0, 0, 1], receiver.port)),
        );
        let sender = start_sender(ffmpeg, dir, party, relay.near);
        Endpoint {
            party,
            relay,
            receiver,
            sender,
        }
    }

    /// The media of a new leg of this party: its codec, sending to its relay.
    fn media(&self) -> proto::Media {
        self.party.wire.media(self.relay.far)
    }
}

/// The endpoints of one scenario.
struct Call {
    endpoints: Vec<Endpoint>,
    /// When the scenario started: phases print their time from it.
    started: Instant,
}

impl Call {
    fn ep(&self, who: Who) -> &Endpoint {
        self.endpoints
            .iter()
            .find(|e| e.party.who == who)
            .unwrap_or_else(|| panic!("no {who:?} endpoint"))
    }

    /// Waits (bounded) until every ffmpeg sender has sent [`STEADY_PACKETS`]: the call
    /// starts once ffmpeg's start-up, a burst of work on a small machine, is over.
    async fn wait_senders(&self) -> Instant {
        let deadline = Instant::now() + SENDERS_UP;
        loop {
            let counts: Vec<u64> = self
                .endpoints
                .iter()
                .map(|e| e.relay.seen().from_sender)
                .collect();
            if counts.iter().all(|&n| n >= STEADY_PACKETS) {
                return Instant::now();
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .endpoints
                    .iter()
                    .map(|e| format!("--- {} ---\n{}", e.sender.name, e.sender.log_tail()))
                    .collect();
                panic!(
                    "the ffmpeg senders sent {counts:?} datagrams within {SENDERS_UP:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) until each of `who` decoded 50 ms more than it had: a new leg's
    /// stream reaches the test.
    async fn wait_new_audio(&self, who: &[Who]) {
        let before: Vec<usize> = who.iter().map(|&w| self.ep(w).receiver.total()).collect();
        let deadline = Instant::now() + FIRST_AUDIO;
        loop {
            let grown = who
                .iter()
                .zip(&before)
                .all(|(&w, &b)| self.ep(w).receiver.total() >= b + OUT_RATE_HZ as usize / 20);
            if grown {
                return;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = who
                    .iter()
                    .map(|&w| {
                        let r = &self.ep(w).receiver.child;
                        format!("--- {} ---\n{}", r.name, r.log_tail())
                    })
                    .collect();
                panic!(
                    "no new audio from the engine reached the receiving ffmpeg of {who:?} \
                     within {FIRST_AUDIO:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Checks one phase: each of `listening` hears the tones of whom `hears` says (a
    /// high tone only on a wideband listener), and no other tone of any party, its own
    /// included, nor (narrowband listeners) the alias of a high tone.
    fn check(
        &self,
        phase: &str,
        (from, to): (Instant, Instant),
        listening: &[Who],
        hears: &[(Who, Who)],
        failures: &mut Vec<String>,
    ) {
        let rate = f64::from(OUT_RATE_HZ);
        for &listener in listening {
            let l = self.ep(listener);
            let pcm = l.receiver.between(from, to);
            let expected = (to - from).as_secs_f64() * rate;
            let mut line = format!(
                "{phase} at {:.1} s: {listener:?} ({:?}) decoded {} ms:",
                (from - self.started).as_secs_f64(),
                l.party.wire,
                pcm.len() * 1000 / OUT_RATE_HZ as usize
            );
            if (pcm.len() as f64) < MIN_COVERAGE * expected {
                failures.push(format!(
                    "{phase}: {listener:?} decoded only {} of {expected:.0} samples",
                    pcm.len()
                ));
            }
            let level =
                |hz: f64| tone_report(&pcm, hz, rate, WINDOW_SAMPLES, reference_amplitude());
            for source in &self.endpoints {
                let audible = hears.contains(&(listener, source.party.who));
                for hz in source.party.tones_hz() {
                    let high = hz > NARROWBAND_NYQUIST_HZ;
                    let expect = audible && (!high || l.party.wire.wideband());
                    let r = level(hz);
                    line += &format!(
                        " {:?} {hz} Hz {:.1} dB ({}/{});",
                        source.party.who,
                        r.mean_db(),
                        r.detected,
                        r.windows
                    );
                    if expect && !r.hears() {
                        failures.push(format!(
                            "{phase}: {listener:?} should hear {:?}'s {hz} Hz: {:.1} dB, in {}/{} windows",
                            source.party.who,
                            r.mean_db(),
                            r.detected,
                            r.windows
                        ));
                    }
                    if !expect && r.mean_db() > ABSENT_DB {
                        failures.push(format!(
                            "{phase}: {listener:?} must not hear {:?}'s {hz} Hz: {:.1} dB",
                            source.party.who,
                            r.mean_db()
                        ));
                    }
                    if high && !l.party.wire.wideband() {
                        let alias = 2.0 * NARROWBAND_NYQUIST_HZ - hz;
                        let r = level(alias);
                        line += &format!(" (alias {alias} Hz {:.1} dB);", r.mean_db());
                        if r.mean_db() > ABSENT_DB {
                            failures.push(format!(
                                "{phase}: {listener:?} hears {:?}'s {hz} Hz aliased to {alias} Hz: {:.1} dB",
                                source.party.who,
                                r.mean_db()
                            ));
                        }
                    }
                }
            }
            // One audible source of the listener's own codec: the engine forwards
            // that source's packets, it does not decode them.
            let sources: Vec<Who> = hears
                .iter()
                .filter(|&&(l, _)| l == listener)
                .map(|&(_, s)| s)
                .collect();
            if let [source] = sources[..]
                && self.ep(source).party.wire == l.party.wire
            {
                let (same, total) = self.forwarded(listener, source, from, to);
                line += &format!(" forwarded from {source:?} {same}/{total} packets;");
                if total == 0 || same * 10 < total * 9 {
                    failures.push(format!(
                        "{phase}: {listener:?} hears only {source:?}, of its codec, but only \
                         {same} of its {total} packets are {source:?}'s byte for byte"
                    ));
                }
            }
            println!("{line}");
        }
    }

    /// Of the RTP packets `listener` received between `from` and `to`, how many carry
    /// a payload byte for byte as `source`'s ffmpeg sent it, and how many there were.
    fn forwarded(&self, listener: Who, source: Who, from: Instant, to: Instant) -> (usize, usize) {
        let sent = self
            .ep(source)
            .relay
            .payloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sent
            .clone();
        let got = self
            .ep(listener)
            .relay
            .payloads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let in_window: Vec<&Vec<u8>> = got
            .received
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, p)| p)
            .collect();
        let same = in_window.iter().filter(|p| sent.contains(**p)).count();
        (same, in_window.len())
    }

    /// What went between each endpoint and the engine: RTP both ways, every packet the
    /// engine sent of the leg's payload type and size, and at least one RTCP report of
    /// the ffmpeg sender to the engine (so `bad_rtcp` = 0 says something).
    fn check_streams(&self, label: &str, failures: &mut Vec<String>) {
        for e in &self.endpoints {
            let seen = e.relay.seen();
            println!("{label}: {:?} ({:?}): {seen:?}", e.party.who, e.party.wire);
            if seen.rtp < 50 || seen.rtp_to_engine < 50 || seen.rtcp_to_engine == 0 {
                failures.push(format!(
                    "{label}: {:?}: only {} RTP packets from the engine, {} RTP packets \
                     and {} RTCP reports to it",
                    e.party.who, seen.rtp, seen.rtp_to_engine, seen.rtcp_to_engine
                ));
            }
            if seen.odd > 0 {
                failures.push(format!(
                    "{label}: {:?}: the engine sent {} packets not of payload type {} and \
                     size {:?} (last: payload type and payload length {:?})",
                    e.party.who,
                    seen.odd,
                    e.party.wire.payload_type(),
                    e.party.wire.payload_bytes(),
                    seen.last_odd
                ));
            }
        }
    }
}

/// A new supervision of the agent with a new supervisor leg of the supervisor's codec;
/// the supervisor's ffmpeg sends to it from then on.
async fn supervise_agent(
    api: &Api,
    call: &Call,
    mode: Mode,
    supervision: &str,
    participant: &str,
) -> proto::SupervisionInfo {
    let sup = call.ep(S);
    sup.relay.send_to(None);
    let mut req = supervise(
        "call-1",
        supervision,
        "sup-1",
        participant,
        "a",
        sup.relay.far,
    );
    req.media = Some(sup.media());
    let info = api
        .start(mode, req)
        .await
        .unwrap_or_else(|e| panic!("{mode:?} the agent: {e:?}"));
    sup.relay.send_to(Some(leg_local(info.leg.as_ref())));
    call.wait_new_audio(&[S]).await;
    info
}

/// The drop counters that must stay zero: ffmpeg's RTP and RTCP are well formed, come
/// from the leg's remote and carry the negotiated payload type.
const NO_DROPS: [&str; 7] = [
    "truncated",
    "bad_version",
    "bad_header",
    "wrong_source",
    "unknown_payload_type",
    "oversize",
    "bad_rtcp",
];

async fn scenario(label: &str, parties: [Party; 3]) {
    let started = Instant::now();
    let Some(ffmpeg) = ffmpeg(&parties) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // ffmpeg starts while earshot does.
    let call = Call {
        endpoints: parties
            .iter()
            .map(|&p| Endpoint::start(&ffmpeg, dir.path(), p))
            .collect(),
        started,
    };
    let (mut earshot, api) = start_earshot(dir.path(), "auto").await;
    let senders_up = call.wait_senders().await;
    println!(
        "{label}: ffmpeg senders steady {:.1} s after the start",
        (senders_up - started).as_secs_f64()
    );
    let mut failures = Vec::new();
    api.user(
        "agent-1",
        &["conversation:call:add"],
        proto::Presence::OnQueue,
    )
    .await;
    api.user("sup-1", &ALL_PERMISSIONS, proto::Presence::Available)
        .await;

    // The call.
    let mut c_spec = spec(
        "c",
        Kind::External,
        Role::Customer,
        "",
        call.ep(C).relay.far,
    );
    c_spec.media = Some(call.ep(C).media());
    let mut a_spec = spec(
        "a",
        Kind::Internal,
        Role::Agent,
        "agent-1",
        call.ep(A).relay.far,
    );
    a_spec.media = Some(call.ep(A).media());
    let inter = api
        .interactions()
        .create_interaction(proto::CreateInteractionRequest {
            interaction_id: "call-1".into(),
            participants: vec![c_spec, a_spec],
            actor: "ffmpeg-endpoints".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{label}: CreateInteraction: {e:?}"))
        .into_inner()
        .interaction
        .expect("interaction");
    call.ep(C).relay.send_to(Some(local_of(&inter, "c")));
    call.ep(A).relay.send_to(Some(local_of(&inter, "a")));
    call.wait_new_audio(&[C, A]).await;
    let w = window(SETTLE, MEASURE).await;
    call.check(
        &format!("{label}: call"),
        w,
        &[C, A],
        &all_pairs(&[C, A]),
        &mut failures,
    );

    // Coach: only the agent hears the supervisor.
    supervise_agent(&api, &call, Mode::Coach, "coach-1", "s1").await;
    let w = window(SETTLE, MEASURE).await;
    let coached = [(C, A), (A, C), (S, C), (S, A), (A, S)];
    call.check(
        &format!("{label}: coach"),
        w,
        &[C, A, S],
        &coached,
        &mut failures,
    );
    call.ep(S).relay.send_to(None);
    api.stop("coach-1").await;

    // Monitor: hears both, heard by nobody.
    let mon = supervise_agent(&api, &call, Mode::Monitor, "mon-1", "s2").await;
    let monitor_local = leg_local(mon.leg.as_ref());
    let w = window(SETTLE, MEASURE).await;
    let monitored = [(C, A), (A, C), (S, C), (S, A)];
    call.check(
        &format!("{label}: monitor"),
        w,
        &[C, A, S],
        &monitored,
        &mut failures,
    );

    // Barge escalated in place: same leg; everyone hears everyone.
    let mut req = supervise(
        "call-1",
        "barge-1",
        "sup-1",
        "s3",
        "a",
        call.ep(S).relay.far,
    );
    req.media = Some(call.ep(S).media());
    let barge = api
        .start(Mode::Barge, req)
        .await
        .unwrap_or_else(|e| panic!("{label}: escalate to barge: {e:?}"));
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
    call.check(
        &format!("{label}: barge"),
        w,
        &[C, A, S],
        &all_pairs(&[C, A, S]),
        &mut failures,
    );

    earshot.assert_running();
    call.check_streams(label, &mut failures);
    // Not judged (a loaded machine delays packets), printed to explain a failure.
    let mut late = Vec::new();
    for reason in [
        "jitter_late",
        "jitter_overflow",
        "jitter_duplicate",
        "tx_full",
    ] {
        late.push(format!("{reason} {}", api.drops(reason).await));
    }
    println!("{label}: engine drops: {}", late.join(", "));
    for reason in NO_DROPS {
        let n = api.drops(reason).await;
        if n > 0 {
            failures.push(format!(
                "{label}: the engine dropped {n} packets as {reason}"
            ));
        }
    }
    println!("{label}: {:.1} s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{label}:\n{}", failures.join("\n"));
}

/// L16 at 16 kHz in 20 ms packets.
const L16_16K: Wire = Wire::L16 {
    rate_hz: 16_000,
    ptime_ms: 20,
};
/// L16 at 48 kHz: 20 ms would not fit one packet, so 10 ms.
const L16_48K: Wire = Wire::L16 {
    rate_hz: 48_000,
    ptime_ms: 10,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_customer_agent_and_supervisor() {
    scenario(
        "pcmu",
        [
            Party::new(C, Wire::Pcmu, None),
            Party::new(A, Wire::Pcmu, None),
            Party::new(S, Wire::Pcmu, None),
        ],
    )
    .await;
}

/// The customer's 5 kHz reaches the G.722 agent through coach and barge mixes only if
/// the mix runs at 16 kHz; the PCMU supervisor hears the low tones and no 5 kHz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g722_customer_and_agent_pcmu_supervisor() {
    scenario(
        "g722",
        [
            Party::new(C, Wire::G722, Some(5000.0)),
            Party::new(A, Wire::G722, Some(6000.0)),
            Party::new(S, Wire::Pcmu, None),
        ],
    )
    .await;
}

/// Three codecs in one call: a PCMU trunk customer, an Opus agent, a G.722 supervisor;
/// agent and supervisor exchange their high tones through the 16 kHz mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pcmu_customer_opus_agent_g722_supervisor() {
    scenario(
        "mixed",
        [
            Party::new(C, Wire::Pcmu, None),
            Party::new(A, Wire::Opus, Some(5500.0)),
            Party::new(S, Wire::G722, Some(6000.0)),
        ],
    )
    .await;
}

/// L16 at 16 kHz (customer) and at 48 kHz in 10 ms packets (supervisor) around a PCMU
/// agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l16_customer_and_supervisor_pcmu_agent() {
    scenario(
        "l16",
        [
            Party::new(C, L16_16K, Some(5000.0)),
            Party::new(A, Wire::Pcmu, None),
            Party::new(S, L16_48K, Some(6000.0)),
        ],
    )
    .await;
}
