//! A real-UDP PCMU endpoint: a phone on a socket, for tests that run the engine behind
//! real sockets (loopback, or a veth pair between namespaces).
//!
//! An endpoint binds one UDP socket and records, from a thread of its own, every
//! datagram that arrives (when, from where, the bytes) until it is dropped. It talks by
//! sending a tone as 20 ms PCMU packets paced at ptime from another thread, for a
//! bounded number of packets, continuing one RTP stream (SSRC, sequence, timestamp)
//! across talk spurts. Then it answers the questions the tests ask: does it hear `hz`
//! over a span of time, is what it received one continuous stream, what exactly did it
//! send and receive.
//!
//! Times are the real clock's `std::time::Instant`s: a test marks the start and end of
//! each phase with `Instant::now()` and asks about that window. This module reads the
//! real clock and sleeps: it is the real-socket edge of the kit.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use earshot_types::Codec;

use crate::fixtures::{Role, Supervision};
use crate::g711;
use crate::rig::FRAME_SAMPLES;
use crate::rtp::{Rtp, RtpSender};
use crate::tone::{NARROWBAND_HZ, TONE_AMPLITUDE, Tone, ToneReport};

/// The packetisation time of an endpoint's stream.
pub const PTIME: Duration = Duration::from_millis(20);

/// The real-socket tests' rule for "hears": a party's tone, averaged over the frames of
/// a window, at most 6 dB below the power it was sent with.
pub const PRESENT_DB: f64 = -6.0;
/// ... and for "does not hear": at least 30 dB below.
pub const ABSENT_DB: f64 = -30.0;

/// How long the receiving thread blocks before it looks at its stop flag.
const RECV_POLL: Duration = Duration::from_millis(10);

/// A datagram the endpoint received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// When it was read off the socket.
    pub at: Instant,
    /// Its source.
    pub from: SocketAddr,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A datagram the endpoint sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// When it was handed to the socket.
    pub at: Instant,
    /// Its destination.
    pub to: SocketAddr,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What one talk spurt sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Talk {
    /// The tone.
    pub tone: Tone,
    /// Packets to send (20 ms apart): bounds the spurt's duration.
    pub packets: u32,
    /// Mark the stream so that forwarding can be told from mixing: every tone sample
    /// that is exactly zero is coded as mu-law "negative zero" (0x7F) or the canonical
    /// zero (0xFF) according to one bit of the packet count. Both decode to 0, so the
    /// audio is unchanged, but only a forwarded packet keeps the 0x7F codes: a
    /// decode-mix-encode path turns them into 0xFF.
    pub mark_zeros: bool,
}

impl Talk {
    /// `packets` packets of `tone`, unmarked.
    pub const fn tone(tone: Tone, packets: u32) -> Talk {
        Talk {
            tone,
            packets,
            mark_zeros: false,
        }
    }
}

#[derive(Debug, Default)]
struct Log {
    received: Vec<Arrival>,
    sent: Vec<Sent>,
}

/// The outgoing stream: the RTP state and the tone's sample position, both continuing
/// across talk spurts.
#[derive(Debug)]
struct Stream {
    rtp: RtpSender,
    sample: u64,
}

/// One phone on a UDP socket. Dropping it stops and joins its receiving thread.
#[derive(Debug)]
pub struct PcmuEndpoint {
    sock: Arc<UdpSocket>,
    log: Arc<Mutex<Log>>,
    stream: Arc<Mutex<Stream>>,
    stop: Arc<AtomicBool>,
    receiver: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking talk thread must not hide the test's own failure message behind a
    // poisoned lock: the data is append-only and stays meaningful.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PcmuEndpoint {
    /// Binds `addr` (port 0 for any) in the calling thread's network namespace and
    /// starts recording. `ssrc` names its stream; sequence numbers and timestamps start
    /// at values derived from it.
    pub fn bind(addr: SocketAddr, ssrc: u32) -> io::Result<PcmuEndpoint> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_read_timeout(Some(RECV_POLL))?;
        let sock = Arc::new(sock);
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let (sock, log, stop) = (sock.clone(), log.clone(), stop.clone());
            std::thread::Builder::new()
                .name("pcmu-endpoint-rx".into())
                .spawn(move || receive(&sock, &log, &stop))?
        };
        let rtp = RtpSender::new(
            0,
            ssrc,
            (ssrc as u16).wrapping_mul(1000),
            ssrc.wrapping_mul(7),
        );
        Ok(PcmuEndpoint {
            sock,
            log,
            stream: Arc::new(Mutex::new(Stream { rtp, sample: 0 })),
            stop,
            receiver: Some(receiver),
        })
    }

    /// An endpoint on 127.0.0.1, on a port the system picks.
    pub fn loopback(ssrc: u32) -> io::Result<PcmuEndpoint> {
        PcmuEndpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)), ssrc)
    }

    /// The socket's address.
    pub fn addr(&self) -> SocketAddr {
        self.sock
            .local_addr()
            .expect("a bound UDP socket has a local address")
    }

    /// Sends `bytes` to `to` at once (malformed or foreign traffic), and logs it.
    pub fn send_raw(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        self.send_logged(bytes, to)
    }

    fn send_logged(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        send_logged(&self.sock, &self.log, bytes, to)
    }

    /// Starts a talk spurt to `to` on a thread: `talk.packets` packets paced 20 ms apart
    /// from now. Join the handle to wait for the last packet; it returns how many the
    /// socket took.
    pub fn talk(&self, to: SocketAddr, talk: Talk) -> JoinHandle<u32> {
        let (sock, log, stream) = (self.sock.clone(), self.log.clone(), self.stream.clone());
        std::thread::spawn(move || talk_paced(&sock, &log, &stream, to, talk))
    }

    /// Every datagram received so far, in arrival order.
    pub fn received(&self) -> Vec<Arrival> {
        lock(&self.log).received.clone()
    }

    /// Datagrams received within `window`.
    pub fn received_in(&self, window: &Range<Instant>) -> Vec<Arrival> {
        let log = lock(&self.log);
        log.received
            .iter()
            .filter(|a| window.contains(&a.at))
            .cloned()
            .collect()
    }

    /// Every datagram sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        lock(&self.log).sent.clone()
    }

    /// Datagrams sent within `window`.
    pub fn sent_in(&self, window: &Range<Instant>) -> Vec<Sent> {
        let log = lock(&self.log);
        log.sent
            .iter()
            .filter(|s| window.contains(&s.at))
            .cloned()
            .collect()
    }

    /// How `hz` measured in the 20 ms PCMU frames received within `window`, one window
    /// of the report per frame, against the tests' tone amplitude. RTCP and anything
    /// that is not one PCMU frame is left out.
    pub fn tone_report(&self, hz: f64, window: &Range<Instant>) -> ToneReport {
        let mut r = ToneReport::default();
        for a in self.received_in(window) {
            let Some(rtp) = Rtp::parse(&a.bytes) else {
                continue;
            };
            if rtp.payload_type != 0 || rtp.payload.len() != FRAME_SAMPLES {
                continue;
            }
            let pcm = g711::decode_vec(Codec::Pcmu, &rtp.payload);
            r.add_window(&pcm, hz, NARROWBAND_HZ, TONE_AMPLITUDE);
        }
        r
    }

    /// Whether the endpoint hears `hz` over `window`: present in at least 90% of the
    /// frames received then ([`ToneReport::hears`]).
    pub fn hears(&self, hz: f64, window: &Range<Instant>) -> bool {
        self.tone_report(hz, window).hears()
    }

    /// How each party's tone measured in what this endpoint, the phone of `listener`,
    /// received within `window`.
    pub fn hearing(&self, listener: Role, window: &Range<Instant>) -> Hearing {
        Hearing {
            listener,
            reports: Role::ALL.map(|source| self.tone_report(source.tone_hz(), window)),
        }
    }

    /// The stream received from `expected_from` so far, summarised.
    pub fn stream_summary(&self, expected_from: SocketAddr) -> StreamSummary {
        summarize(&lock(&self.log).received, expected_from)
    }

    /// The first way in which what the endpoint received is not one continuous RTP
    /// stream: every datagram RTP version 2 (RTCP aside), one SSRC, sequence numbers
    /// +1 per packet, timestamps never going back. `None` when it is one stream (or
    /// nothing arrived).
    pub fn stream_violation(&self) -> Option<String> {
        stream_violation(&lock(&self.log).received)
    }
}

impl Drop for PcmuEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
    }
}

/// The receiving thread: reads until `stop`, logging every datagram.
#[allow(clippy::disallowed_methods)] // the real-socket edge stamps arrivals with the real clock
fn receive(sock: &UdpSocket, log: &Mutex<Log>, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => lock(log).received.push(Arrival {
                at: Instant::now(),
                from,
                bytes: buf[..n].to_vec(),
            }),
            // Timeouts let the loop see `stop`; ICMP errors from a closed port (loopback
            // reports them on the next read) are not datagrams.
            Err(_) => continue,
        }
    }
}

#[allow(clippy::disallowed_methods)] // the real-socket edge stamps sends with the real clock
fn send_logged(sock: &UdpSocket, log: &Mutex<Log>, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
    sock.send_to(bytes, to)?;
    lock(log).sent.push(Sent {
        at: Instant::now(),
        to,
        bytes: bytes.to_vec(),
    });
    Ok(())
}

/// One talk spurt, paced by the real clock.
#[allow(clippy::disallowed_methods)] // a real-socket talker paces at ptime in real time
fn talk_paced(
    sock: &UdpSocket,
    log: &Mutex<Log>,
    stream: &Mutex<Stream>,
    to: SocketAddr,
    talk: Talk,
) -> u32 {
    let start = Instant::now();
    let mut sent = 0;
    for k in 0..talk.packets {
        let due = start + PTIME * k;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let packet = {
            let mut s = lock(stream);
            let mut pcm = [0i16; FRAME_SAMPLES];
            talk.tone.fill(s.sample, &mut pcm);
            let mut payload = [0u8; FRAME_SAMPLES];
            g711::encode(Codec::Pcmu, &pcm, &mut payload);
            if talk.mark_zeros {
                let count = s.rtp.sent;
                let zeros = pcm.iter().enumerate().filter(|(_, x)| **x == 0);
                for (bit, (i, _)) in zeros.enumerate().take(32) {
                    payload[i] = if count >> bit & 1 == 1 { 0x7F } else { 0xFF };
                }
            }
            s.sample += FRAME_SAMPLES as u64;
            s.rtp.next_packet(&payload, FRAME_SAMPLES as u32)
        };
        if send_logged(sock, log, &packet, to).is_ok() {
            sent += 1;
        }
    }
    sent
}

/// Each party's tone in what one party's phone received over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hearing {
    /// Whose phone.
    pub listener: Role,
    /// Each party's tone, by party index.
    pub reports: [ToneReport; 3],
}

impl Hearing {
    /// Frames measured.
    pub fn frames(&self) -> usize {
        self.reports[0].windows
    }

    /// One line: the frames and each party's mean level.
    pub fn summary(&self) -> String {
        format!(
            "{:?} got {} frames; C {:.1} dB, A {:.1} dB, S {:.1} dB",
            self.listener,
            self.frames(),
            self.reports[0].mean_db(),
            self.reports[1].mean_db(),
            self.reports[2].mean_db()
        )
    }

    /// Where what was heard breaks `mode`'s hear relation by the mean-level rule
    /// ([`PRESENT_DB`], [`ABSENT_DB`]), one message each, prefixed by `label`.
    pub fn violations(&self, label: &str, mode: Supervision) -> Vec<String> {
        let listener = self.listener;
        let mut out = Vec::new();
        for source in Role::ALL {
            let level = self.reports[source.index()].mean_db();
            let heard = mode.hears(listener, source);
            if heard && level < PRESENT_DB {
                out.push(format!(
                    "{label} {mode:?}: {listener:?} should hear {source:?}, level {level:.1} dB"
                ));
            }
            if !heard && level > ABSENT_DB {
                out.push(format!(
                    "{label} {mode:?}: {listener:?} must not hear {source:?}, level {level:.1} dB"
                ));
            }
        }
        out
    }
}

/// What an endpoint received from one address, checked packet by packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Valid RTP packets from the expected address.
    pub packets: usize,
    /// RTCP packets from the expected address (rtcp-mux; not part of the stream).
    pub rtcp: usize,
    /// Datagrams from any other address.
    pub from_other: usize,
    /// Datagrams from the expected address that are neither RTP nor RTCP.
    pub invalid: usize,
    /// Packets whose sequence number is not the previous one plus 1.
    pub seq_gaps: usize,
    /// Every SSRC seen, in order of first appearance.
    pub ssrcs: Vec<u32>,
}

fn summarize(received: &[Arrival], expected_from: SocketAddr) -> StreamSummary {
    let mut s = StreamSummary::default();
    let mut last_seq: Option<u16> = None;
    for a in received {
        if a.from != expected_from {
            s.from_other += 1;
            continue;
        }
        if crate::rtp::is_rtcp(&a.bytes) {
            s.rtcp += 1;
            continue;
        }
        let Some(rtp) = Rtp::parse(&a.bytes) else {
            s.invalid += 1;
            continue;
        };
        s.packets += 1;
        if last_seq.is_some_and(|l| rtp.seq != l.wrapping_add(1)) {
            s.seq_gaps += 1;
        }
        last_seq = Some(rtp.seq);
        if !s.ssrcs.contains(&rtp.ssrc) {
            s.ssrcs.push(rtp.ssrc);
        }
    }
    s
}

fn stream_violation(received: &[Arrival]) -> Option<String> {
    let mut first_ssrc: Option<u32> = None;
    let mut prev: Option<(u16, u32)> = None;
    for (i, a) in received.iter().enumerate() {
        if crate::rtp::is_rtcp(&a.bytes) {
            continue;
        }
        let Some(rtp) = Rtp::parse(&a.bytes) else {
            return Some(format!("datagram {i} is not RTP v2: {:02x?}", a.bytes));
        };
        let ssrc0 = *first_ssrc.get_or_insert(rtp.ssrc);
        if rtp.ssrc != ssrc0 {
            return Some(format!("packet {i}: SSRC {:#x} after {ssrc0:#x}", rtp.ssrc));
        }
        if let Some((pseq, pts)) = prev {
            if rtp.seq != pseq.wrapping_add(1) {
                return Some(format!("packet {i}: sequence {} after {pseq}", rtp.seq));
            }
            if (rtp.ts.wrapping_sub(pts) as i32) < 0 {
                return Some(format!("packet {i}: timestamp {} after {pts}", rtp.ts));
            }
        }
        prev = Some((rtp.seq, rtp.ts));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpHeader;

    #[test]
    #[allow(clippy::disallowed_methods)] // real sockets, real time
    fn two_endpoints_hear_each_others_tone_and_see_one_stream() {
        let a = PcmuEndpoint::loopback(0xA).unwrap();
        let b = PcmuEndpoint::loopback(0xB).unwrap();
        let start = Instant::now();
        let talk = a.talk(b.addr(), Talk::tone(Tone::narrowband(500.0), 10));
        assert_eq!(talk.join().unwrap(), 10);
        let spurt = b.talk(a.addr(), Talk::tone(Tone::narrowband(900.0), 3));
        assert_eq!(spurt.join().unwrap(), 3);
        // Loopback delivers within milliseconds; allow a generous bound.
        let deadline = Instant::now() + Duration::from_secs(2);
        while (b.received().len() < 10 || a.received().len() < 3) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let window = start..Instant::now();
        assert!(
            b.hears(500.0, &window),
            "{:?}",
            b.tone_report(500.0, &window)
        );
        let r = b.tone_report(900.0, &window);
        assert!(r.never_hears() && r.mean_db() < -30.0, "{r:?}");
        assert_eq!(b.stream_violation(), None);
        let s = b.stream_summary(a.addr());
        assert_eq!(
            (s.packets, s.seq_gaps, s.ssrcs.clone()),
            (10, 0, vec![0xA]),
            "{s:?}"
        );
        assert_eq!(a.sent().len(), 10);
        assert!(a.hears(900.0, &window));
        // B as the agent of a call heard the customer (500 Hz) and nobody else.
        let h = b.hearing(Role::Agent, &window);
        assert_eq!(h.frames(), 10);
        assert!(
            h.violations("call", Supervision::Call).is_empty(),
            "{}",
            h.summary()
        );
        // In a barge it should also have heard the supervisor: one violation.
        let v = h.violations("barge", Supervision::Barge);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("should hear Supervisor"), "{v:?}");
    }

    #[test]
    fn continuity_checks_name_the_first_break() {
        let at = |bytes: Vec<u8>| Arrival {
            #[allow(clippy::disallowed_methods)] // a timestamp the check ignores
            at: Instant::now(),
            from: "127.0.0.1:1".parse().unwrap(),
            bytes,
        };
        let ok = [
            at(RtpHeader::pcmu(1, 160, 9).packet(&[0; 4])),
            at(RtpHeader::pcmu(2, 320, 9).packet(&[0; 4])),
        ];
        assert_eq!(stream_violation(&ok), None);
        let gap = [
            at(RtpHeader::pcmu(1, 160, 9).packet(&[])),
            at(RtpHeader::pcmu(3, 480, 9).packet(&[])),
        ];
        assert!(
            stream_violation(&gap)
                .unwrap()
                .contains("sequence 3 after 1")
        );
        let ssrc = [
            at(RtpHeader::pcmu(1, 160, 9).packet(&[])),
            at(RtpHeader::pcmu(2, 320, 8).packet(&[])),
        ];
        assert!(stream_violation(&ssrc).unwrap().contains("SSRC"));
        let back = [
            at(RtpHeader::pcmu(1, 320, 9).packet(&[])),
            at(RtpHeader::pcmu(2, 160, 9).packet(&[])),
        ];
        assert!(stream_violation(&back).unwrap().contains("timestamp"));
        let s = summarize(&gap, "127.0.0.1:1".parse().unwrap());
        assert_eq!((s.packets, s.seq_gaps), (2, 1));
        assert_eq!(
            summarize(&gap, "127.0.0.1:2".parse().unwrap()).from_other,
            2
        );
    }
}
