//! One conformance suite for every backend: the same checks run against the in-memory,
//! socket, io_uring and AF_XDP backends, each driven directly (no shard, no engine) with
//! an echoing handler and real clients on the far side.
//!
//! A backend conforms when it:
//! - adds ports, delivers each datagram to the port it was sent to, in place, with its
//!   sender as `remote` and its payload intact, and echoes a batch from the same port;
//! - stops delivering on a closed port, and lets the port be added again;
//! - lends a buffer of at least `MAX_UDP_PAYLOAD` bytes for every send, and treats a
//!   build of 0 bytes as a cancelled send (nothing goes out, the sink stays usable),
//!   inside a receive batch and outside it (`Backend::tx`, the tick path);
//! - does the same over IPv6;
//! - with its transmit pool full, answers every send at once: a refusal is counted by
//!   the backend, an accepted send either arrives or is counted as dropped;
//! - never hands a datagram over truncated: one of `MAX_UDP_PAYLOAD` bytes arrives whole,
//!   a larger one is dropped (and counted) or handed whole for the shard to count;
//! - refuses a port it has open already, and names why it cannot open one;
//! - sleeps in `wait` until the deadline or a datagram, never past the deadline.
//!
//! Where the backends legitimately differ (the memory backend has no families and cannot
//! sleep; AF_XDP binds no socket per port), the [`Profile`] says so and the check asserts
//! that backend's documented behaviour instead. The AF_XDP backend runs on a veth pair
//! between two network namespaces and needs root; without it its checks print
//! `SKIPPED` and pass. The io_uring backend's checks print `SKIPPED` where io_uring is
//! refused (a container's seccomp profile).
//!
//! The socket and io_uring backends' own unit tests used to mirror each other; they live
//! here now, with the io_uring-specific ones (multishot re-arm, slot recovery) at the end.
#![cfg(target_os = "linux")]
// A real-socket suite bounds every wait with the real clock.
#![allow(clippy::disallowed_methods)]

use std::any::Any;
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use earshot_afxdp::XskConfig;
use earshot_engine::backend::af_xdp::{AfXdpConfig, AfXdpShared};
use earshot_engine::backend::memory::{MemDatagram, MemoryBackend, MemoryNet};
use earshot_engine::backend::socket::{SocketBackend, SocketConfig};
use earshot_engine::backend::uring::{UringBackend, UringConfig};
use earshot_engine::backend::{Backend, Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};
use earshot_engine::clock::Clock;
use earshot_engine::config::{BackendKind, EngineConfig};
use earshot_engine_api::IpFamily;
use earshot_testkit::handler::Echo;
use earshot_testkit::netns::{VethConfig, VethPair, require_root};
use earshot_types::time::{Duration, Instant};

/// The backends under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memory,
    Socket,
    IoUring,
    AfXdp,
}

/// Where a backend's documented behaviour differs from the others.
#[derive(Clone, Copy, Debug)]
struct Profile {
    /// `wait` really sleeps (the memory backend returns at once by design).
    sleeps_in_wait: bool,
    /// Opening a port of a family without a local address fails with
    /// `AddrNotAvailable` (the memory backend has no addresses).
    needs_family_address: bool,
    /// Port 0 is refused with `InvalidInput` (AF_XDP: outside the shard's range).
    refuses_port_zero: bool,
    /// A send from a local port that is not open is refused and counted `tx_no_port`.
    refuses_unopened_source: bool,
    /// The counter that shows a full transmit pool was met (refused, flushed early or
    /// dropped), if the backend has one in `Backend::counters`.
    pool_pressure_counter: Option<&'static str>,
    /// The counter of sends refused because the pool was full (`send_with` false).
    refusal_counter: Option<&'static str>,
}

impl Kind {
    fn profile(self) -> Profile {
        match self {
            Kind::Memory => Profile {
                sleeps_in_wait: false,
                needs_family_address: false,
                refuses_port_zero: false,
                refuses_unopened_source: false,
                // Counted on the network handle (`MemoryNet::outbound_dropped`).
                pool_pressure_counter: None,
                refusal_counter: None,
            },
            Kind::Socket => Profile {
                sleeps_in_wait: true,
                needs_family_address: true,
                refuses_port_zero: true,
                refuses_unopened_source: true,
                pool_pressure_counter: Some("tx_implicit_flushes"),
                refusal_counter: None,
            },
            Kind::IoUring => Profile {
                sleeps_in_wait: true,
                needs_family_address: true,
                refuses_port_zero: true,
                refuses_unopened_source: true,
                pool_pressure_counter: Some("tx_full"),
                refusal_counter: Some("tx_full"),
            },
            Kind::AfXdp => Profile {
                sleeps_in_wait: true,
                needs_family_address: true,
                refuses_port_zero: true,
                refuses_unopened_source: false,
                pool_pressure_counter: None,
                refusal_counter: Some("tx_full"),
            },
        }
    }
}

/// How to build the backend for one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    /// The smallest transmit pool the backend allows (4 slots, 4 buffers, a queue of 4,
    /// 32 UMEM frames).
    tiny_tx: bool,
    /// Configure an IPv6 address (all backends but memory care).
    v6: bool,
}

const NORMAL: Variant = Variant {
    tiny_tx: false,
    v6: true,
};

/// The far side: something that sends to the backend's ports and receives its answers.
trait Client {
    fn addr(&self) -> SocketAddr;
    fn send(&self, payload: &[u8], to: SocketAddr);
    /// Every datagram that arrived since the last call, as (source, payload).
    fn recv_all(&self) -> Vec<(SocketAddr, Vec<u8>)>;
}

/// A backend with its far side.
trait Harness {
    fn kind(&self) -> Kind;
    fn backend(&mut self) -> &mut dyn Backend;
    /// A port of this backend's range that is free to open now.
    fn fresh_port(&mut self, family: IpFamily) -> u16;
    /// The address clients reach `port` of `family` at.
    fn local(&self, port: u16, family: IpFamily) -> SocketAddr;
    fn client(&mut self, family: IpFamily) -> Box<dyn Client>;
    /// A port that someone else holds, and the guard that holds it, if the backend's
    /// ports can be held by others at all.
    fn held_port(&mut self, family: IpFamily) -> Option<(u16, Box<dyn Any>)>;
    /// Datagrams the backend accepted but dropped for a full pool outside its own
    /// counters (the memory network's outbound queue).
    fn dropped_outside(&self) -> u64 {
        0
    }
    /// Engine time now.
    fn now(&self) -> Instant;
}

fn counter(b: &dyn Backend, name: &str) -> u64 {
    b.counters()
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

/// One pass of the backend: wait briefly for input, hand everything to `handler`, send.
fn pump(h: &mut dyn Harness, handler: &mut dyn PacketHandler) {
    let t = h.now();
    let b = h.backend();
    b.wait(t, t + Duration::from_millis(2)).expect("wait");
    while b.poll_recv(256, handler).expect("poll_recv") > 0 {}
    b.flush().expect("flush");
}

/// Pumps through `handler` for `for_ms` milliseconds.
fn settle(h: &mut dyn Harness, handler: &mut dyn PacketHandler, for_ms: u64) {
    let started = StdInstant::now();
    while started.elapsed() < StdDuration::from_millis(for_ms) {
        pump(h, handler);
    }
}

/// Opens a fresh port of `family`, retrying when another process took it meanwhile.
fn open(h: &mut dyn Harness, family: IpFamily) -> (u16, SocketAddr) {
    for _ in 0..20 {
        let port = h.fresh_port(family);
        if h.backend().open_port(port, family).is_ok() {
            return (port, h.local(port, family));
        }
    }
    panic!("{:?}: no {family:?} port could be opened", h.kind());
}

const WARM_UP: &[u8] = b"warm-up";

/// Sends from `client` to `target` until one echo comes back (at most 3 s): the first
/// datagrams of an AF_XDP backend can meet an unresolved neighbour. Then forgets what
/// arrived.
fn warm_up(h: &mut dyn Harness, client: &dyn Client, target: SocketAddr) {
    let started = StdInstant::now();
    let mut echo = Echo::default();
    while started.elapsed() < StdDuration::from_secs(3) {
        client.send(WARM_UP, target);
        for _ in 0..10 {
            pump(h, &mut echo);
        }
        if client.recv_all().iter().any(|(from, _)| *from == target) {
            settle(h, &mut echo, 20);
            client.recv_all();
            return;
        }
    }
    panic!("{:?}: no echo from {target} within 3 s", h.kind());
}

/// Test payload for datagram `seq` to `port`: port, seq, then a pattern, with a length
/// that varies so truncation or mixed-up buffers would show.
fn payload(port: u16, seq: u32) -> Vec<u8> {
    let len = 12 + (seq as usize * 7) % 160;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    while p.len() < len {
        p.push((p.len() as u32 ^ seq) as u8);
    }
    p
}

fn key(p: &[u8]) -> (u16, u32) {
    (
        u16::from_be_bytes([p[0], p[1]]),
        u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
    )
}

/// Sends `count` datagrams from `client` to each of `targets`, interleaved with pumping
/// the backend through an exact echo, until every echo came back or 5 s passed.
fn drive_echo(
    h: &mut dyn Harness,
    client: &dyn Client,
    targets: &[SocketAddr],
    count: u32,
) -> (Vec<(SocketAddr, Vec<u8>)>, Echo) {
    let expected = targets.len() * count as usize;
    let mut echo = Echo::default();
    let mut got = Vec::with_capacity(expected);
    let mut next = 0usize;
    let started = StdInstant::now();
    while got.len() < expected && started.elapsed() < StdDuration::from_secs(5) {
        // Bursts small enough that no socket buffer overflows.
        for _ in 0..32 {
            if next >= expected {
                break;
            }
            let target = targets[next % targets.len()];
            let seq = (next / targets.len()) as u32;
            client.send(&payload(target.port(), seq), target);
            next += 1;
        }
        pump(h, &mut echo);
        got.extend(client.recv_all());
    }
    (got, echo)
}

/// Every echo came from the port its datagram was sent to with its payload intact, none
/// twice, at least 99% of them; every datagram was handed over with the right local
/// port, remote and payload.
fn assert_echoes(
    kind: Kind,
    got: &[(SocketAddr, Vec<u8>)],
    echo: &Echo,
    client: SocketAddr,
    targets: &[SocketAddr],
    count: u32,
) {
    let expected = targets.len() * count as usize;
    // A late warm-up datagram is not part of the batch.
    let got: Vec<&(SocketAddr, Vec<u8>)> = got.iter().filter(|(_, p)| p != WARM_UP).collect();
    for (from, p) in &got {
        assert!(p.len() >= 6, "{kind:?}: short echo {p:?}");
        let (port, seq) = key(p);
        assert_eq!(
            from.port(),
            port,
            "{kind:?}: the echo of a datagram for {port} came from {from}"
        );
        assert!(targets.contains(from), "{kind:?}: echo from {from}");
        assert_eq!(
            p,
            &payload(port, seq),
            "{kind:?}: payload {port}/{seq} altered"
        );
    }
    let keys: HashSet<(u16, u32)> = got.iter().map(|(_, p)| key(p)).collect();
    assert_eq!(
        keys.len(),
        got.len(),
        "{kind:?}: some datagrams came back twice"
    );
    assert!(
        got.len() * 100 >= expected * 99,
        "{kind:?}: only {} of {expected} came back",
        got.len()
    );
    for d in echo.handed.iter().filter(|d| d.payload != WARM_UP) {
        assert_eq!(d.remote, client, "{kind:?}: remote of a handed datagram");
        let (port, seq) = key(&d.payload);
        assert_eq!(d.local_port, port, "{kind:?}: delivered to the wrong port");
        assert_eq!(
            d.payload,
            payload(port, seq),
            "{kind:?}: handed over altered"
        );
    }
    assert_eq!(echo.refused, 0, "{kind:?}: sends refused");
    let smallest = echo.smallest_buffer.unwrap_or(usize::MAX);
    assert!(
        smallest >= MAX_UDP_PAYLOAD,
        "{kind:?}: a sink lent only {smallest} bytes"
    );
}

// ---------------------------------------------------------------------------------------
// The checks.

fn echoes_a_batch_in_place(h: &mut dyn Harness, family: IpFamily) {
    let kind = h.kind();
    let (_, target) = open(h, family);
    let client = h.client(family);
    warm_up(h, client.as_ref(), target);
    let (got, echo) = drive_echo(h, client.as_ref(), &[target], 1000);
    assert_echoes(kind, &got, &echo, client.addr(), &[target], 1000);
    // Backends that count what they hand over agree with the handler.
    let handed = counter(h.backend(), "rx_datagrams");
    if kind != Kind::Memory {
        // Plus the warm-up datagrams.
        assert!(
            handed >= echo.handed.len() as u64 && handed <= echo.handed.len() as u64 + 200,
            "{kind:?}: rx_datagrams {handed} vs {} handed",
            echo.handed.len()
        );
    }
}

fn check_echo_v4(h: &mut dyn Harness) {
    echoes_a_batch_in_place(h, IpFamily::V4);
}

fn check_echo_v6(h: &mut dyn Harness) {
    echoes_a_batch_in_place(h, IpFamily::V6);
}

fn check_many_ports(h: &mut dyn Harness) {
    let kind = h.kind();
    let targets: Vec<SocketAddr> = (0..16).map(|_| open(h, IpFamily::V4).1).collect();
    let client = h.client(IpFamily::V4);
    warm_up(h, client.as_ref(), targets[0]);
    let (got, echo) = drive_echo(h, client.as_ref(), &targets, 20);
    assert_echoes(kind, &got, &echo, client.addr(), &targets, 20);
    for t in &targets {
        let n = echo.ports().iter().filter(|&&p| p == t.port()).count();
        assert!(n >= 19, "{kind:?}: port {} saw only {n} of 20", t.port());
    }
}

fn check_close_and_add_again(h: &mut dyn Harness) {
    let kind = h.kind();
    let (port, target) = open(h, IpFamily::V4);
    let client = h.client(IpFamily::V4);
    warm_up(h, client.as_ref(), target);
    let (got, _) = drive_echo(h, client.as_ref(), &[target], 10);
    assert_eq!(got.len(), 10, "{kind:?}: the port works before closing");
    // One datagram queued before the close, one sent after: neither is handed over.
    client.send(b"queued", target);
    h.backend().close_port(port);
    client.send(b"after", target);
    let mut echo = Echo::default();
    settle(h, &mut echo, 100);
    assert!(
        echo.handed.is_empty(),
        "{kind:?}: delivered after close: {:?}",
        echo.handed
    );
    client.recv_all();
    // The same port again: the new one delivers, nothing stale does.
    h.backend()
        .open_port(port, IpFamily::V4)
        .unwrap_or_else(|e| panic!("{kind:?}: port {port} could not be added again: {e}"));
    let (got, echo) = drive_echo(h, client.as_ref(), &[target], 10);
    assert_echoes(kind, &got, &echo, client.addr(), &[target], 10);
    assert_eq!(
        echo.handed.len(),
        got.len(),
        "{kind:?}: only fresh datagrams"
    );
}

/// Answers every datagram with a full `MAX_UDP_PAYLOAD` send and a cancelled one.
#[derive(Default)]
struct FullAndCancelled {
    handed: usize,
    lent: Vec<usize>,
    cancelled_ok: usize,
    full_ok: usize,
}

fn full_payload() -> Vec<u8> {
    (0..MAX_UDP_PAYLOAD).map(|i| (i * 31 % 251) as u8).collect()
}

impl PacketHandler for FullAndCancelled {
    fn handle_datagram(&mut self, d: Datagram<'_>, tx: &mut dyn TxSink) {
        self.handed += 1;
        let full = full_payload();
        let lent = &mut self.lent;
        let ok = tx.send_with(d.local_port, d.remote, &mut |buf| {
            lent.push(buf.len());
            0
        });
        self.cancelled_ok += usize::from(ok);
        let ok = tx.send_with(d.local_port, d.remote, &mut |buf| {
            lent.push(buf.len());
            buf[..MAX_UDP_PAYLOAD].copy_from_slice(&full);
            MAX_UDP_PAYLOAD
        });
        self.full_ok += usize::from(ok);
    }
}

fn check_sink_lends_max_and_zero_cancels(h: &mut dyn Harness) {
    let kind = h.kind();
    let (port, target) = open(h, IpFamily::V4);
    let client = h.client(IpFamily::V4);
    warm_up(h, client.as_ref(), target);
    // Inside a receive batch.
    let mut handler = FullAndCancelled::default();
    for i in 0..5u8 {
        client.send(&[i; 20], target);
    }
    let mut got = Vec::new();
    let started = StdInstant::now();
    while got.len() < 5 && started.elapsed() < StdDuration::from_secs(3) {
        pump(h, &mut handler);
        got.extend(client.recv_all());
    }
    settle(h, &mut handler, 20);
    got.extend(client.recv_all());
    assert_eq!(handler.handed, 5, "{kind:?}");
    assert_eq!(
        (handler.cancelled_ok, handler.full_ok),
        (5, 5),
        "{kind:?}: a cancelled send is not a refusal"
    );
    assert!(
        handler.lent.iter().all(|&n| n >= MAX_UDP_PAYLOAD),
        "{kind:?}: lent {:?}",
        handler.lent
    );
    assert_eq!(got.len(), 5, "{kind:?}: exactly the full sends arrive");
    for (from, p) in &got {
        assert_eq!(*from, target, "{kind:?}");
        assert_eq!(
            p,
            &full_payload(),
            "{kind:?}: the full payload arrives whole"
        );
    }
    // Outside a batch: the tick path's sink.
    let to = client.addr();
    let mut lent = 0;
    let cancelled = h.backend().tx().send_with(port, to, &mut |buf| {
        lent = buf.len();
        0
    });
    let sent = h.backend().tx().send_with(port, to, &mut |buf| {
        lent = lent.min(buf.len());
        buf[..4].copy_from_slice(b"tick");
        4
    });
    assert!(cancelled && sent, "{kind:?}: tick sends accepted");
    assert!(lent >= MAX_UDP_PAYLOAD, "{kind:?}: tick sink lent {lent}");
    let mut got = Vec::new();
    let started = StdInstant::now();
    while got.is_empty() && started.elapsed() < StdDuration::from_secs(3) {
        pump(h, &mut Echo::default());
        got.extend(client.recv_all());
    }
    settle(h, &mut Echo::default(), 20);
    got.extend(client.recv_all());
    assert_eq!(got, vec![(target, b"tick".to_vec())], "{kind:?}");
}

/// Answers each datagram with `burst` sends, all inside one receive batch.
struct Burst {
    burst: usize,
    accepted: usize,
    refused: usize,
    longest_send: StdDuration,
}

impl PacketHandler for Burst {
    fn handle_datagram(&mut self, d: Datagram<'_>, tx: &mut dyn TxSink) {
        for i in 0..self.burst {
            let started = StdInstant::now();
            let ok = tx.send_with(d.local_port, d.remote, &mut |buf| {
                buf[..4].copy_from_slice(&(i as u32).to_be_bytes());
                4
            });
            self.longest_send = self.longest_send.max(started.elapsed());
            if ok {
                self.accepted += 1;
            } else {
                self.refused += 1;
            }
        }
    }
}

fn check_full_pool_counts(h: &mut dyn Harness) {
    let kind = h.kind();
    let profile = kind.profile();
    let (_, target) = open(h, IpFamily::V4);
    let client = h.client(IpFamily::V4);
    warm_up(h, client.as_ref(), target);
    let before: Vec<(&str, u64)> = h.backend().counters();
    let at_start = |name: &str| before.iter().find(|(n, _)| *n == name).map_or(0, |c| c.1);
    let refused_before = profile.refusal_counter.map_or(0, &at_start);
    let pressure_before = profile.pool_pressure_counter.map_or(0, &at_start);
    let dropped_before = h.dropped_outside();

    const BURST: usize = 128;
    let mut burst = Burst {
        burst: BURST,
        accepted: 0,
        refused: 0,
        longest_send: StdDuration::ZERO,
    };
    client.send(b"go", target);
    let started = StdInstant::now();
    while burst.accepted + burst.refused == 0 && started.elapsed() < StdDuration::from_secs(3) {
        pump(h, &mut burst);
    }
    assert_eq!(burst.accepted + burst.refused, BURST, "{kind:?}: one burst");
    assert!(
        burst.longest_send < StdDuration::from_millis(500),
        "{kind:?}: a send blocked for {:?}",
        burst.longest_send
    );
    let mut got = Vec::new();
    let started = StdInstant::now();
    while started.elapsed() < StdDuration::from_millis(300) {
        pump(h, &mut Echo::default());
        got.extend(client.recv_all());
    }
    let b = h.backend();
    let refused_counted = profile.refusal_counter.map_or(0, |c| counter(b, c)) - refused_before;
    let pressure = profile.pool_pressure_counter.map_or(0, |c| counter(b, c)) - pressure_before;
    let dropped = h.dropped_outside() - dropped_before;
    println!(
        "{kind:?}: burst of {BURST}: {} accepted, {} refused (counted {refused_counted}), \
         {} arrived, {dropped} dropped outside, pressure counter {pressure}",
        burst.accepted,
        burst.refused,
        got.len()
    );
    assert_eq!(
        burst.refused as u64, refused_counted,
        "{kind:?}: every refusal is counted"
    );
    assert!(
        got.len() <= burst.accepted,
        "{kind:?}: more arrived than was accepted"
    );
    // Loopback and veth lose nothing here: every accepted send arrives or is counted.
    assert_eq!(
        got.len() as u64 + dropped,
        burst.accepted as u64,
        "{kind:?}: accepted sends that neither arrived nor were counted"
    );
    let met_full = burst.refused > 0 || pressure > 0 || dropped > 0;
    assert!(met_full, "{kind:?}: the tiny pool was never full");
}

fn check_oversize_never_truncated(h: &mut dyn Harness) {
    let kind = h.kind();
    let (_, target) = open(h, IpFamily::V4);
    let client = h.client(IpFamily::V4);
    warm_up(h, client.as_ref(), target);
    let oversize_before = counter(h.backend(), "rx_oversize");
    client.send(&[7u8; MAX_UDP_PAYLOAD + 1], target);
    client.send(&[8u8; MAX_UDP_PAYLOAD], target);
    let mut echo = Echo::default();
    let started = StdInstant::now();
    while !echo.handed.iter().any(|d| d.payload[0] == 8)
        && started.elapsed() < StdDuration::from_secs(3)
    {
        pump(h, &mut echo);
    }
    settle(h, &mut echo, 20);
    let max = echo.handed.iter().find(|d| d.payload[0] == 8);
    assert_eq!(
        max.map(|d| d.payload.len()),
        Some(MAX_UDP_PAYLOAD),
        "{kind:?}: the MAX_UDP_PAYLOAD datagram is delivered whole"
    );
    let over = echo.handed.iter().find(|d| d.payload[0] == 7);
    let counted = counter(h.backend(), "rx_oversize") - oversize_before;
    match over {
        Some(d) => assert_eq!(
            d.payload.len(),
            MAX_UDP_PAYLOAD + 1,
            "{kind:?}: handed over truncated"
        ),
        None => assert_eq!(counted, 1, "{kind:?}: dropped without being counted"),
    }
    // The echo of the largest datagram arrives whole.
    let mut got = Vec::new();
    let started = StdInstant::now();
    while !got
        .iter()
        .any(|(_, p): &(SocketAddr, Vec<u8>)| p.len() == MAX_UDP_PAYLOAD)
        && started.elapsed() < StdDuration::from_secs(3)
    {
        pump(h, &mut Echo::default());
        got.extend(client.recv_all());
    }
    assert!(
        got.iter().any(|(_, p)| *p == vec![8u8; MAX_UDP_PAYLOAD]),
        "{kind:?}: the largest echo arrives whole"
    );
}

fn check_open_errors(h: &mut dyn Harness) {
    let kind = h.kind();
    let profile = kind.profile();
    let (port, _) = open(h, IpFamily::V4);
    let err = h.backend().open_port(port, IpFamily::V4).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{kind:?}: {err}");
    if let Some((held, _guard)) = h.held_port(IpFamily::V4) {
        let err = h.backend().open_port(held, IpFamily::V4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{kind:?}: {err}");
    }
    if profile.refuses_port_zero {
        let err = h.backend().open_port(0, IpFamily::V4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{kind:?}: {err}");
    }
    // A refused open leaves the port usable.
    let (_, target) = open(h, IpFamily::V4);
    let client = h.client(IpFamily::V4);
    warm_up(h, client.as_ref(), target);
}

fn check_family_without_address(h: &mut dyn Harness) {
    let kind = h.kind();
    assert!(kind.profile().needs_family_address);
    let port = h.fresh_port(IpFamily::V6);
    let err = h.backend().open_port(port, IpFamily::V6).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::AddrNotAvailable,
        "{kind:?}: {err}"
    );
}

fn check_unopened_source(h: &mut dyn Harness) {
    let kind = h.kind();
    assert!(kind.profile().refuses_unopened_source);
    let before = counter(h.backend(), "tx_no_port");
    let port = h.fresh_port(IpFamily::V4);
    let ok = h
        .backend()
        .tx()
        .send_with(port, "127.0.0.1:9".parse().unwrap(), &mut |_| 10);
    assert!(!ok, "{kind:?}: a send from a closed port is refused");
    assert_eq!(counter(h.backend(), "tx_no_port"), before + 1, "{kind:?}");
}

fn check_wait(h: &mut dyn Harness) {
    let kind = h.kind();
    let (_, target) = open(h, IpFamily::V4);
    let client = h.client(IpFamily::V4);
    warm_up(h, client.as_ref(), target);
    let t0 = StdInstant::now();
    let now = h.now();
    h.backend()
        .wait(now, now + Duration::from_millis(20))
        .unwrap();
    let slept = t0.elapsed();
    if kind.profile().sleeps_in_wait {
        assert!(
            slept >= StdDuration::from_millis(10),
            "{kind:?}: woke early: {slept:?}"
        );
    }
    assert!(
        slept < StdDuration::from_secs(1),
        "{kind:?}: overslept: {slept:?}"
    );
    client.send(b"wake", target);
    let mut echo = Echo::default();
    let t1 = StdInstant::now();
    // A backend may return from wait before the datagram is readable (early returns are
    // allowed); it must never sleep through one.
    while echo.handed.is_empty() && t1.elapsed() < StdDuration::from_secs(2) {
        let now = h.now();
        h.backend()
            .wait(now, now + Duration::from_secs(10))
            .unwrap();
        h.backend().poll_recv(64, &mut echo).unwrap();
    }
    assert!(
        t1.elapsed() < StdDuration::from_secs(2),
        "{kind:?}: a datagram did not wake wait"
    );
    assert_eq!(echo.handed.len(), 1, "{kind:?}");
}

// ---------------------------------------------------------------------------------------
// The harnesses.

fn free_port(ip: IpAddr) -> u16 {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind an ephemeral port");
    s.local_addr().expect("local addr").port()
}

/// A client on a real UDP socket.
struct UdpClient(UdpSocket);

impl UdpClient {
    fn bind(ip: IpAddr) -> UdpClient {
        let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("client socket");
        s.set_nonblocking(true).expect("nonblocking client");
        UdpClient(s)
    }
}

impl Client for UdpClient {
    fn addr(&self) -> SocketAddr {
        self.0.local_addr().expect("client address")
    }
    fn send(&self, payload: &[u8], to: SocketAddr) {
        // A full socket buffer or an ICMP error from earlier is loss, as on a network.
        let _ = self.0.send_to(payload, to);
    }
    fn recv_all(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            match self.0.recv_from(&mut buf) {
                Ok((n, from)) => out.push((from, buf[..n].to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                // ECONNREFUSED from an earlier send to a closed port: not a datagram.
                Err(_) => continue,
            }
        }
    }
}

fn loopback(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Socket and io_uring: real sockets on loopback.
struct KernelHarness {
    kind: Kind,
    backend: Box<dyn Backend>,
    clock: Clock,
}

impl Harness for KernelHarness {
    fn kind(&self) -> Kind {
        self.kind
    }
    fn backend(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }
    fn fresh_port(&mut self, family: IpFamily) -> u16 {
        free_port(loopback(family))
    }
    fn local(&self, port: u16, family: IpFamily) -> SocketAddr {
        SocketAddr::new(loopback(family), port)
    }
    fn client(&mut self, family: IpFamily) -> Box<dyn Client> {
        Box::new(UdpClient::bind(loopback(family)))
    }
    fn held_port(&mut self, family: IpFamily) -> Option<(u16, Box<dyn Any>)> {
        let s = UdpSocket::bind(SocketAddr::new(loopback(family), 0)).expect("holder socket");
        let port = s.local_addr().expect("holder address").port();
        Some((port, Box::new(s)))
    }
    fn now(&self) -> Instant {
        self.clock.now()
    }
}

fn kernel_harness(kind: Kind, v: Variant, test: &str) -> Option<KernelHarness> {
    let bind_v6 = v.v6.then_some(Ipv6Addr::LOCALHOST);
    let backend: Box<dyn Backend> = match kind {
        Kind::Socket => Box::new(
            SocketBackend::new(SocketConfig {
                bind_v4: Some(Ipv4Addr::LOCALHOST),
                bind_v6,
                tx_buffers: if v.tiny_tx { 4 } else { 1024 },
                ..SocketConfig::default()
            })
            .expect("socket backend"),
        ),
        Kind::IoUring => match UringBackend::new(UringConfig {
            bind_v4: Some(Ipv4Addr::LOCALHOST),
            bind_v6,
            buffers: 512,
            tx_slots: if v.tiny_tx { 4 } else { 512 },
            ..UringConfig::default()
        }) {
            Ok(b) => Box::new(b),
            Err(e) => {
                println!("SKIPPED: {test}: io_uring cannot start here: {e}");
                return None;
            }
        },
        _ => unreachable!("kernel harness for {kind:?}"),
    };
    Some(KernelHarness {
        kind,
        backend,
        clock: Clock::new(),
    })
}

/// Memory: the test injects through the network handle and takes what the backend sent.
struct MemoryHarness {
    backend: MemoryBackend,
    net: MemoryNet,
    /// Datagrams taken off the network for a client other than the one asking.
    stash: Arc<Mutex<Vec<MemDatagram>>>,
    next_port: u16,
    next_client: u16,
    clock: Clock,
}

struct MemClient {
    addr: SocketAddr,
    net: MemoryNet,
    stash: Arc<Mutex<Vec<MemDatagram>>>,
}

impl Client for MemClient {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn send(&self, payload: &[u8], to: SocketAddr) {
        // A full inbound queue refuses, like a lossy network.
        let _ = self.net.inject(MemDatagram {
            engine_port: to.port(),
            peer: self.addr,
            payload: payload.to_vec(),
        });
    }
    fn recv_all(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut stash = self.stash.lock().unwrap();
        while let Some(d) = self.net.take_sent() {
            stash.push(d);
        }
        let (mine, others): (Vec<MemDatagram>, Vec<MemDatagram>) =
            stash.drain(..).partition(|d| d.peer == self.addr);
        *stash = others;
        let family = if self.addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        mine.into_iter()
            .map(|d| (SocketAddr::new(loopback(family), d.engine_port), d.payload))
            .collect()
    }
}

impl Harness for MemoryHarness {
    fn kind(&self) -> Kind {
        Kind::Memory
    }
    fn backend(&mut self) -> &mut dyn Backend {
        &mut self.backend
    }
    fn fresh_port(&mut self, _family: IpFamily) -> u16 {
        self.next_port += 2;
        self.next_port
    }
    fn local(&self, port: u16, family: IpFamily) -> SocketAddr {
        SocketAddr::new(loopback(family), port)
    }
    fn client(&mut self, family: IpFamily) -> Box<dyn Client> {
        self.next_client += 1;
        let ip = match family {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, self.next_client as u8)),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, self.next_client)),
        };
        Box::new(MemClient {
            addr: SocketAddr::new(ip, 5004),
            net: self.net.clone(),
            stash: self.stash.clone(),
        })
    }
    fn held_port(&mut self, family: IpFamily) -> Option<(u16, Box<dyn Any>)> {
        let port = self.fresh_port(family);
        assert!(self.net.hold_port(port));
        Some((port, Box::new(())))
    }
    fn dropped_outside(&self) -> u64 {
        self.net.outbound_dropped()
    }
    fn now(&self) -> Instant {
        self.clock.now()
    }
}

fn memory_harness(v: Variant) -> MemoryHarness {
    let (backend, net) = MemoryBackend::new(if v.tiny_tx { 4 } else { 8192 }, false);
    MemoryHarness {
        backend,
        net,
        stash: Arc::default(),
        next_port: 20_000,
        next_client: 0,
        clock: Clock::new(),
    }
}

/// AF_XDP: the backend on side A of a veth pair (the calling thread is in A's
/// namespace), clients on side B.
struct XdpHarness<'p> {
    pair: &'p VethPair,
    backend: Box<dyn Backend>,
    /// Keeps the program attached and the neighbour table running.
    _shared: AfXdpShared,
    port_base: u16,
    next_port: u16,
    clock: Clock,
}

const XDP_PORT_BASE: u16 = 40_960;
const XDP_PORTS: u32 = 1024;

impl Harness for XdpHarness<'_> {
    fn kind(&self) -> Kind {
        Kind::AfXdp
    }
    fn backend(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }
    fn fresh_port(&mut self, _family: IpFamily) -> u16 {
        self.next_port += 2;
        assert!(u32::from(self.next_port - self.port_base) < XDP_PORTS);
        self.next_port
    }
    fn local(&self, port: u16, family: IpFamily) -> SocketAddr {
        let ip = self
            .pair
            .addr_a(family == IpFamily::V6)
            .expect("the pair has both families");
        SocketAddr::new(ip, port)
    }
    fn client(&mut self, family: IpFamily) -> Box<dyn Client> {
        let ip = self
            .pair
            .addr_b(family == IpFamily::V6)
            .expect("the pair has both families");
        Box::new(self.pair.b.run(move || UdpClient::bind(ip)))
    }
    fn held_port(&mut self, _family: IpFamily) -> Option<(u16, Box<dyn Any>)> {
        // The XDP program steers the range to the socket: no port can be held by others.
        None
    }
    fn now(&self) -> Instant {
        self.clock.now()
    }
}

fn xdp_harness(pair: &VethPair, v: Variant) -> XdpHarness<'_> {
    let cfg = EngineConfig {
        shards: 1,
        pin: false,
        port_base: XDP_PORT_BASE,
        ports_per_shard: XDP_PORTS,
        bind_v4: Some(pair.v4_a()),
        bind_v6: if v.v6 {
            pair.cfg.v6.map(|(a, _)| a)
        } else {
            None
        },
        backend: BackendKind::AfXdp,
        fallback: false,
        interface: Some(pair.cfg.dev_a.into()),
        ..EngineConfig::default()
    };
    let xsk = if v.tiny_tx {
        XskConfig {
            frame_count: 64,
            fill_ring_size: 32,
            completion_ring_size: 32,
            rx_ring_size: 32,
            tx_ring_size: 32,
            ..XskConfig::default()
        }
    } else {
        XskConfig {
            frame_count: 1024,
            fill_ring_size: 512,
            completion_ring_size: 512,
            rx_ring_size: 512,
            tx_ring_size: 512,
            ..XskConfig::default()
        }
    };
    let mut shared = AfXdpShared::start(
        &cfg,
        &AfXdpConfig {
            xsk,
            ..AfXdpConfig::default()
        },
    )
    .expect("XDP program attached and neighbour table started");
    let backend = Box::new(shared.open_shard(0).expect("AF_XDP socket on queue 0"));
    XdpHarness {
        pair,
        backend,
        _shared: shared,
        port_base: XDP_PORT_BASE,
        next_port: XDP_PORT_BASE,
        clock: Clock::new(),
    }
}

/// Builds `kind`'s harness as `v` says and runs `check` on it (or prints why not).
fn run(kind: Kind, v: Variant, test: &str, check: fn(&mut dyn Harness)) {
    match kind {
        Kind::Memory => check(&mut memory_harness(v)),
        Kind::Socket | Kind::IoUring => {
            if let Some(mut h) = kernel_harness(kind, v, test) {
                check(&mut h);
            }
        }
        Kind::AfXdp => {
            if !require_root(test) {
                return;
            }
            let tag = format!("{:08x}", fnv(test));
            let pair = VethPair::new(&tag, VethConfig::dual(83)).expect("veth pair");
            pair.a.run(|| check(&mut xdp_harness(&pair, v)));
        }
    }
}

/// A short, stable tag for namespace names (FNV-1a of the test name).
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The checks every backend passes, as tests named `<backend>::<check>`.
macro_rules! conformance {
    ($backend:ident, $kind:expr) => {
        mod $backend {
            use super::*;

            fn name(check: &str) -> String {
                format!("{}::{check}", stringify!($backend))
            }

            #[test]
            fn echoes_a_batch_in_place_on_ipv4() {
                run($kind, NORMAL, &name("echoes_v4"), check_echo_v4);
            }

            #[test]
            fn echoes_a_batch_in_place_on_ipv6() {
                run($kind, NORMAL, &name("echoes_v6"), check_echo_v6);
            }

            #[test]
            fn sixteen_ports_each_echo_their_own_datagrams() {
                run($kind, NORMAL, &name("ports"), check_many_ports);
            }

            #[test]
            fn close_stops_delivery_and_the_port_can_be_added_again() {
                run($kind, NORMAL, &name("close"), check_close_and_add_again);
            }

            #[test]
            fn the_sink_lends_max_udp_payload_and_zero_cancels() {
                run(
                    $kind,
                    NORMAL,
                    &name("sink"),
                    check_sink_lends_max_and_zero_cancels,
                );
            }

            #[test]
            fn a_full_transmit_pool_counts_instead_of_blocking() {
                let tiny = Variant {
                    tiny_tx: true,
                    ..NORMAL
                };
                run($kind, tiny, &name("full_pool"), check_full_pool_counts);
            }

            #[test]
            fn oversize_datagrams_are_never_handed_over_truncated() {
                run(
                    $kind,
                    NORMAL,
                    &name("oversize"),
                    check_oversize_never_truncated,
                );
            }

            #[test]
            fn open_port_refuses_a_port_in_use() {
                run($kind, NORMAL, &name("open_errors"), check_open_errors);
            }

            #[test]
            fn a_family_without_a_local_address_is_refused_by_name() {
                if $kind.profile().needs_family_address {
                    let v4_only = Variant {
                        v6: false,
                        ..NORMAL
                    };
                    run(
                        $kind,
                        v4_only,
                        &name("family"),
                        check_family_without_address,
                    );
                } else {
                    println!(
                        "{}: not applicable (no address families)",
                        stringify!($backend)
                    );
                }
            }

            #[test]
            fn a_send_from_a_port_that_is_not_open_is_refused_and_counted() {
                if $kind.profile().refuses_unopened_source {
                    run($kind, NORMAL, &name("unopened"), check_unopened_source);
                } else {
                    println!(
                        "{}: not applicable (sends from any port of its range)",
                        stringify!($backend)
                    );
                }
            }

            #[test]
            fn wait_returns_at_the_deadline_or_a_datagram() {
                run($kind, NORMAL, &name("wait"), check_wait);
            }
        }
    };
}

conformance!(memory, Kind::Memory);
conformance!(socket, Kind::Socket);
conformance!(io_uring, Kind::IoUring);
conformance!(af_xdp, Kind::AfXdp);

// ---------------------------------------------------------------------------------------
// io_uring mechanisms the other backends do not have.

fn uring(config: UringConfig, test: &str) -> Option<UringBackend> {
    match UringBackend::new(config) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("SKIPPED: {test}: io_uring cannot start here: {e}");
            None
        }
    }
}

fn uring_loopback() -> UringConfig {
    UringConfig {
        bind_v4: Some(Ipv4Addr::LOCALHOST),
        bind_v6: Some(Ipv6Addr::LOCALHOST),
        buffers: 512,
        tx_slots: 512,
        ..UringConfig::default()
    }
}

#[test]
fn io_uring_few_buffers_end_multishot_receives_which_are_rearmed() {
    // 8 buffers for 32-datagram bursts: the kernel runs out, ends the multishot with
    // ENOBUFS, and the backend must re-arm it to keep receiving.
    let test = "io_uring_few_buffers_end_multishot_receives_which_are_rearmed";
    let Some(b) = uring(
        UringConfig {
            buffers: 8,
            ..uring_loopback()
        },
        test,
    ) else {
        return;
    };
    let mut h = KernelHarness {
        kind: Kind::IoUring,
        backend: Box::new(b),
        clock: Clock::new(),
    };
    let (_, target) = open(&mut h, IpFamily::V4);
    let client = h.client(IpFamily::V4);
    let (got, _) = drive_echo(&mut h, client.as_ref(), &[target], 400);
    let rearms = counter(h.backend(), "rx_rearms");
    assert!(rearms > 0, "{:?}", h.backend().counters());
    // Loss is allowed here (the socket buffer holds what the ring cannot), but the port
    // must keep delivering after each re-arm.
    assert!(got.len() >= 300, "only {} of 400 echoed", got.len());
}

#[test]
fn io_uring_transmit_slots_all_come_back_from_the_kernel() {
    let test = "io_uring_transmit_slots_all_come_back_from_the_kernel";
    for slots in [4, 512] {
        let Some(mut b) = uring(
            UringConfig {
                tx_slots: slots,
                ..uring_loopback()
            },
            test,
        ) else {
            return;
        };
        let port = (0..20)
            .map(|_| free_port(loopback(IpFamily::V4)))
            .find(|&p| b.open_port(p, IpFamily::V4).is_ok())
            .expect("a free port");
        let target = SocketAddr::new(loopback(IpFamily::V4), port);
        let client = UdpClient::bind(loopback(IpFamily::V4));
        let clock = Clock::new();
        let mut echo = Echo::default();
        for seq in 0..200u32 {
            client.send(&payload(port, seq), target);
            if seq % 32 == 31 {
                let now = clock.now();
                b.wait(now, now + Duration::from_millis(2)).unwrap();
                while b.poll_recv(256, &mut echo).unwrap() > 0 {}
                b.flush().unwrap();
            }
        }
        let started = StdInstant::now();
        while started.elapsed() < StdDuration::from_millis(100) {
            let now = clock.now();
            b.wait(now, now + Duration::from_millis(2)).unwrap();
            b.poll_recv(256, &mut echo).unwrap();
            b.flush().unwrap();
        }
        let c = b.counters();
        assert_eq!(
            c.tx_datagrams as usize + echo.refused,
            echo.handed.len(),
            "{slots} slots: every echo was sent or refused: {c:?}"
        );
        assert_eq!(
            b.free_tx_slots(),
            slots,
            "{slots} slots: every slot came back"
        );
    }
}
