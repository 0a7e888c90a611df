//! Next hop and destination MAC for frames we build ourselves, from the kernel's routing,
//! link and neighbour tables (rtnetlink, hand-written: three dump requests and one probe).
//!
//! A background thread owns the netlink socket. It dumps the tables every
//! `refresh_interval_ms` (and quickly after a probe) into an immutable [`Snapshot`]
//! published through `arc-swap`; shards read it with [`NeighborReader::lookup`], which
//! never blocks, never allocates and never makes a syscall. A miss (route known but no
//! usable neighbour entry) returns `None` and queues a probe: the thread sends an
//! RTM_NEWNEIGH with NTF_USE, which makes the kernel resolve the address (ARP / ND) exactly
//! as if it had a packet to send, without us sending any traffic of our own. A STALE entry
//! is still used (the kernel would use it too) and is re-probed, since our traffic
//! bypasses the kernel and would otherwise never confirm it.
//!
//! Deliberately limited: main routing table only (no policy routing rules), the first
//! next hop of a multipath route is not followed (multipath routes are skipped).

#![allow(unsafe_code)] // the netlink socket system calls; each site says why it is sound

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::AfXdpError;

const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
const NTF_USE: u8 = 0x01;
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
const NUD_USABLE: u16 =
    NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT;

/// Refreshes after a probe, 5 ms apart, before falling back to the normal interval.
const FAST_REFRESH_ROUNDS: u32 = 40;
const FAST_REFRESH: Duration = Duration::from_millis(5);
/// Bound on queued probe requests; beyond it misses are counted, not queued.
const PROBE_QUEUE: usize = 256;

/// Where to send a frame for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// Outgoing interface.
    pub ifindex: u32,
    /// Our MAC on that interface (Ethernet source).
    pub src_mac: [u8; 6],
    /// The next hop's MAC (Ethernet destination).
    pub dst_mac: [u8; 6],
    /// The next hop: the gateway, or the destination itself when directly connected.
    pub via: IpAddr,
    /// Preferred source address of the route, if the kernel has one.
    pub src_ip: Option<IpAddr>,
    /// MTU of the outgoing interface.
    pub mtu: u32,
}

#[derive(Debug, Clone)]
struct Route {
    dst: IpAddr,
    prefix_len: u8,
    gateway: Option<IpAddr>,
    oif: u32,
    prefsrc: Option<IpAddr>,
    priority: u32,
}

#[derive(Debug)]
struct Neigh {
    mac: [u8; 6],
    state: u16,
    /// Set once a STALE entry has been queued for a probe in this snapshot, so a busy
    /// destination costs one probe per refresh, not one per packet.
    probe_queued: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    mac: [u8; 6],
    mtu: u32,
}

/// An immutable view of the kernel's tables, replaced wholesale on each refresh.
#[derive(Debug, Default)]
pub struct Snapshot {
    links: HashMap<u32, Link>,
    /// Sorted by prefix length (longest first), then priority (lowest first).
    routes: Vec<Route>,
    neighbours: HashMap<(u32, IpAddr), Neigh>,
    /// Incremented on each refresh.
    pub generation: u64,
}

fn prefix_matches(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl Snapshot {
    fn route(&self, dst: IpAddr) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| prefix_matches(r.dst, r.prefix_len, dst))
    }
}

#[derive(Debug)]
enum Request {
    Probe { ifindex: u32, addr: IpAddr },
    Refresh,
    Stop,
}

#[derive(Debug)]
struct Shared {
    snapshot: ArcSwap<Snapshot>,
    requests: SyncSender<Request>,
    probes_dropped: AtomicU64,
    refresh_errors: AtomicU64,
    stop: AtomicBool,
}

/// A cheap, cloneable, non-blocking reader of the current snapshot (one per shard).
#[derive(Debug, Clone)]
pub struct NeighborReader {
    shared: Arc<Shared>,
}

impl NeighborReader {
    /// The next hop for `dst`: `None` when there is no route, or when the neighbour is not
    /// resolved yet (a probe is then queued; ask again on a later packet).
    pub fn lookup(&self, dst: IpAddr) -> Option<NextHop> {
        let snap = self.shared.snapshot.load();
        let route = snap.route(dst)?;
        let link = snap.links.get(&route.oif)?;
        let via = route.gateway.unwrap_or(dst);
        match snap.neighbours.get(&(route.oif, via)) {
            Some(n) if n.state & NUD_USABLE != 0 => {
                if n.state & NUD_STALE != 0 && !n.probe_queued.swap(true, Ordering::Relaxed) {
                    self.request_probe(route.oif, via);
                }
                Some(NextHop {
                    ifindex: route.oif,
                    src_mac: link.mac,
                    dst_mac: n.mac,
                    via,
                    src_ip: route.prefsrc,
                    mtu: link.mtu,
                })
            }
            _ => {
                self.request_probe(route.oif, via);
                None
            }
        }
    }

    fn request_probe(&self, ifindex: u32, addr: IpAddr) {
        match self
            .shared
            .requests
            .try_send(Request::Probe { ifindex, addr })
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.probes_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Generation of the snapshot lookups currently see.
    pub fn generation(&self) -> u64 {
        self.shared.snapshot.load().generation
    }
}

/// Owns the refresher thread; dropping it stops the thread.
#[derive(Debug)]
pub struct NeighborTable {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl NeighborTable {
    /// Opens a netlink socket in the caller's network namespace, dumps the tables once
    /// (so the first lookups already see them) and starts the refresher thread.
    pub fn start(refresh_interval_ms: u64) -> Result<NeighborTable, AfXdpError> {
        let mut nl = Netlink::open()?;
        let first = nl.dump_snapshot(1)?;
        let (tx, rx) = sync_channel(PROBE_QUEUE);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(first),
            requests: tx,
            probes_dropped: AtomicU64::new(0),
            refresh_errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let interval = Duration::from_millis(refresh_interval_ms.max(1));
        let thread = std::thread::Builder::new()
            .name("earshot-neigh".into())
            .spawn(move || refresher(nl, rx, thread_shared, interval))
            .map_err(|source| AfXdpError::Os {
                op: "spawning the neighbour refresher",
                source,
            })?;
        Ok(NeighborTable {
            shared,
            thread: Some(thread),
        })
    }

    /// A reader for a shard.
    pub fn reader(&self) -> NeighborReader {
        NeighborReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Asks for a refresh now (e.g. after configuring addresses).
    pub fn request_refresh(&self) {
        let _ = self.shared.requests.try_send(Request::Refresh);
    }

    /// Probe requests dropped because the queue was full.
    pub fn probes_dropped(&self) -> u64 {
        self.shared.probes_dropped.load(Ordering::Relaxed)
    }

    /// Refreshes that failed (the previous snapshot stayed in use).
    pub fn refresh_errors(&self) -> u64 {
        self.shared.refresh_errors.load(Ordering::Relaxed)
    }
}

impl Drop for NeighborTable {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // If the queue is full the thread still sees `stop` after its current round.
        let _ = self.shared.requests.try_send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn refresher(mut nl: Netlink, rx: Receiver<Request>, shared: Arc<Shared>, interval: Duration) {
    let mut generation = 1;
    let mut fast_rounds = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        let timeout = if fast_rounds > 0 {
            FAST_REFRESH
        } else {
            interval
        };
        let mut first = Some(rx.recv_timeout(timeout));
        // Drain everything queued, probing each distinct address once per round.
        loop {
            let next = match first.take() {
                Some(r) => r,
                None => match rx.try_recv() {
                    Ok(r) => Ok(r),
                    Err(_) => break,
                },
            };
            match next {
                Ok(Request::Probe { ifindex, addr }) => {
                    // Best effort: a failed probe is retried by the next miss.
                    let _ = nl.probe(ifindex, addr);
                    fast_rounds = FAST_REFRESH_ROUNDS;
                }
                Ok(Request::Refresh) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Request::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        fast_rounds = fast_rounds.saturating_sub(1);
        generation += 1;
        match nl.dump_snapshot(generation) {
            Ok(snap) => shared.snapshot.store(Arc::new(snap)),
            Err(_) => {
                shared.refresh_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A NETLINK_ROUTE socket with a receive buffer allocated once.
struct Netlink {
    fd: std::os::fd::OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_ne_bytes());
}
fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_ne_bytes());
}
fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Iterates route attributes (`struct rtattr`: len u16, type u16, 4-byte aligned).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    core::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(ne16(b, 0));
        let kind = ne16(b, 2) & 0x3fff; // strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        let aligned = (len + 3) & !3;
        b = &b[aligned.min(b.len())..];
        Some((kind, value))
    })
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(bytes);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn netlink_err(op: &'static str, errno: i32) -> AfXdpError {
    AfXdpError::from_errno(op, errno, "CAP_NET_ADMIN")
}

impl Netlink {
    fn open() -> Result<Netlink, AfXdpError> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(AfXdpError::Os {
                op: "netlink socket",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval of the given size. A receive can then never
        // hang the refresher forever if the kernel stops answering.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                core::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0u8; 1 << 16],
        })
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), AfXdpError> {
        // SAFETY: zeroed sockaddr_nl is a valid "to the kernel" address (pid 0, groups 0).
        let mut to: libc::sockaddr_nl = unsafe { core::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg is a valid buffer of msg.len() bytes; `to` is a sockaddr_nl of the
        // size passed.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                core::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(AfXdpError::Os {
                op: "netlink send",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<usize, AfXdpError> {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(AfXdpError::Os {
                op: "netlink recv",
                source: std::io::Error::last_os_error(),
            });
        }
        // n >= 0 checked.
        Ok(n as usize)
    }

    fn header(&mut self, msg: &mut Vec<u8>, kind: u16, flags: u16) {
        self.seq = self.seq.wrapping_add(1);
        msg.clear();
        put_u32(msg, 0); // length, patched by finish()
        put_u16(msg, kind);
        put_u16(msg, flags);
        put_u32(msg, self.seq);
        put_u32(msg, 0);
    }

    fn finish(msg: &mut [u8]) {
        // Netlink messages we build are < 100 bytes.
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Sends a dump request and calls `f(type, body)` for each answer until NLMSG_DONE.
    fn dump(
        &mut self,
        kind: u16,
        family_body: &[u8],
        mut f: impl FnMut(u16, &[u8]),
    ) -> Result<(), AfXdpError> {
        let mut msg = Vec::with_capacity(64);
        self.header(&mut msg, kind, NLM_F_REQUEST | NLM_F_DUMP);
        msg.extend_from_slice(family_body);
        Self::finish(&mut msg);
        self.send(&msg)?;
        let seq = self.seq;
        loop {
            let n = self.recv()?;
            let mut at = 0;
            while at + NLMSG_HDR_LEN <= n {
                let b = &self.buf[at..n];
                let len = ne32(b, 0) as usize;
                if len < NLMSG_HDR_LEN || len > b.len() {
                    break;
                }
                let kind = ne16(b, 4);
                let msg_seq = ne32(b, 8);
                if msg_seq == seq {
                    match kind {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let errno = if len >= NLMSG_HDR_LEN + 4 {
                                -(ne32(b, NLMSG_HDR_LEN) as i32)
                            } else {
                                libc::EIO
                            };
                            return Err(netlink_err("netlink dump", errno));
                        }
                        _ => f(kind, &b[NLMSG_HDR_LEN..len]),
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }

    fn dump_snapshot(&mut self, generation: u64) -> Result<Snapshot, AfXdpError> {
        let mut snap = Snapshot {
            generation,
            ..Snapshot::default()
        };
        // ifinfomsg: family, pad, type, index, flags, change (16 bytes), AF_UNSPEC.
        self.dump(RTM_GETLINK, &[0u8; 16], |kind, body| {
            if kind != RTM_NEWLINK || body.len() < 16 {
                return;
            }
            let index = ne32(body, 4);
            let mut link = Link {
                mac: [0; 6],
                mtu: 1500,
            };
            for (attr, value) in attrs(&body[16..]) {
                match attr {
                    IFLA_ADDRESS if value.len() == 6 => link.mac.copy_from_slice(value),
                    IFLA_MTU if value.len() == 4 => link.mtu = ne32(value, 0),
                    _ => {}
                }
            }
            snap.links.insert(index, link);
        })?;
        // rtmsg (12 bytes), AF_UNSPEC: every family.
        self.dump(RTM_GETROUTE, &[0u8; 12], |kind, body| {
            if kind != RTM_NEWROUTE || body.len() < 12 {
                return;
            }
            let family = body[0];
            let mut route = Route {
                dst: if i32::from(family) == libc::AF_INET6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                },
                prefix_len: body[1],
                gateway: None,
                oif: 0,
                prefsrc: None,
                priority: 0,
            };
            let mut table = u32::from(body[4]);
            let rtype = body[7];
            let mut multipath = false;
            for (attr, value) in attrs(&body[12..]) {
                match attr {
                    RTA_DST => route.dst = ip_from(value).unwrap_or(route.dst),
                    RTA_GATEWAY => route.gateway = ip_from(value),
                    RTA_OIF if value.len() == 4 => route.oif = ne32(value, 0),
                    RTA_PRIORITY if value.len() == 4 => route.priority = ne32(value, 0),
                    RTA_PREFSRC => route.prefsrc = ip_from(value),
                    RTA_TABLE if value.len() == 4 => table = ne32(value, 0),
                    RTA_MULTIPATH => multipath = true,
                    _ => {}
                }
            }
            if table == RT_TABLE_MAIN && rtype == RTN_UNICAST && route.oif != 0 && !multipath {
                snap.routes.push(route);
            }
        })?;
        snap.routes.sort_by(|a, b| {
            b.prefix_len
                .cmp(&a.prefix_len)
                .then(a.priority.cmp(&b.priority))
        });
        // ndmsg (12 bytes), AF_UNSPEC.
        self.dump(RTM_GETNEIGH, &[0u8; 12], |kind, body| {
            if kind != RTM_NEWNEIGH || body.len() < 12 {
                return;
            }
            let ifindex = ne32(body, 4);
            let state = ne16(body, 8);
            let mut dst = None;
            let mut mac = None;
            for (attr, value) in attrs(&body[12..]) {
                match attr {
                    NDA_DST => dst = ip_from(value),
                    NDA_LLADDR if value.len() == 6 => {
                        let mut m = [0u8; 6];
                        m.copy_from_slice(value);
                        mac = Some(m);
                    }
                    _ => {}
                }
            }
            if let (Some(dst), Some(mac)) = (dst, mac) {
                snap.neighbours.insert(
                    (ifindex, dst),
                    Neigh {
                        mac,
                        state,
                        probe_queued: AtomicBool::new(false),
                    },
                );
            } else if let Some(dst) = dst {
                // INCOMPLETE / FAILED entries have no MAC: remember them as unusable.
                snap.neighbours.insert(
                    (ifindex, dst),
                    Neigh {
                        mac: [0; 6],
                        state: state & !NUD_USABLE | NUD_INCOMPLETE,
                        probe_queued: AtomicBool::new(false),
                    },
                );
            }
        })?;
        Ok(snap)
    }

    /// Asks the kernel to resolve `addr` on `ifindex` (RTM_NEWNEIGH + NTF_USE: the kernel
    /// runs neigh_event_send as if it had a packet queued, starting ARP / ND).
    fn probe(&mut self, ifindex: u32, addr: IpAddr) -> Result<(), AfXdpError> {
        let mut msg = Vec::with_capacity(64);
        self.header(
            &mut msg,
            RTM_NEWNEIGH,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        );
        let (family, octets): (u8, &[u8]) = match &addr {
            IpAddr::V4(v4) => (libc::AF_INET as u8, &v4.octets()[..]),
            IpAddr::V6(v6) => (libc::AF_INET6 as u8, &v6.octets()[..]),
        };
        // ndmsg: family, pad1, pad2(u16), ifindex(i32), state(u16), flags(u8), type(u8).
        msg.push(family);
        msg.push(0);
        put_u16(&mut msg, 0);
        put_u32(&mut msg, ifindex);
        put_u16(&mut msg, NUD_INCOMPLETE);
        msg.push(NTF_USE);
        msg.push(0);
        // NDA_DST attribute.
        put_u16(&mut msg, 4 + octets.len() as u16);
        put_u16(&mut msg, NDA_DST);
        msg.extend_from_slice(octets);
        Self::finish(&mut msg);
        self.send(&msg)?;
        let seq = self.seq;
        // Read the ACK (an NLMSG_ERROR with error 0) so it does not confuse the next dump.
        loop {
            let n = self.recv()?;
            if n < NLMSG_HDR_LEN + 4 {
                continue;
            }
            let b = &self.buf[..n];
            if ne32(b, 8) != seq || ne16(b, 4) != NLMSG_ERROR {
                continue;
            }
            let errno = -(ne32(b, NLMSG_HDR_LEN) as i32);
            return if errno == 0 {
                Ok(())
            } else {
                Err(netlink_err("neighbour probe", errno))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matching_respects_length_and_family() {
        let net: IpAddr = "10.1.0.0".parse().unwrap();
        assert!(prefix_matches(net, 16, "10.1.200.3".parse().unwrap()));
        assert!(!prefix_matches(net, 16, "10.2.0.1".parse().unwrap()));
        assert!(prefix_matches(
            "0.0.0.0".parse().unwrap(),
            0,
            "8.8.8.8".parse().unwrap()
        ));
        assert!(!prefix_matches(net, 0, "fd00::1".parse().unwrap()));
        let net6: IpAddr = "fd00:1::".parse().unwrap();
        assert!(prefix_matches(net6, 32, "fd00:1::77".parse().unwrap()));
        assert!(!prefix_matches(net6, 32, "fd00:2::77".parse().unwrap()));
    }

    #[test]
    fn attribute_iterator_stops_at_malformed_lengths() {
        // One valid 8-byte attr, then one claiming 200 bytes.
        let mut b = vec![8, 0, 1, 0, 10, 0, 0, 1];
        b.extend_from_slice(&[200, 0, 2, 0, 0, 0]);
        let v: Vec<_> = attrs(&b).collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0], (1, &[10u8, 0, 0, 1][..]));
    }

    #[test]
    fn longest_prefix_wins() {
        let mut snap = Snapshot::default();
        for (dst, len, oif) in [("0.0.0.0", 0, 1), ("10.0.0.0", 8, 2), ("10.1.0.0", 16, 3)] {
            snap.routes.push(Route {
                dst: dst.parse().unwrap(),
                prefix_len: len,
                gateway: None,
                oif,
                prefsrc: None,
                priority: 0,
            });
        }
        snap.routes
            .sort_by_key(|r| core::cmp::Reverse(r.prefix_len));
        let oif = |a: &str| snap.route(a.parse().unwrap()).map(|r| r.oif);
        assert_eq!(oif("10.1.2.3"), Some(3));
        assert_eq!(oif("10.2.2.3"), Some(2));
        assert_eq!(oif("192.0.2.1"), Some(1));
        assert_eq!(oif("fd00::1"), None);
    }
}
