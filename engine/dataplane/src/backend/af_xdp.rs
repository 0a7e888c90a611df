//! The AF_XDP backend: one XSK per shard on its own NIC queue, with its own UMEM.
//!
//! ## Setup (once per engine, [`AfXdpShared::start`])
//! The XDP program `xdp-programs/earshot_xdp.o` is attached to `EngineConfig::interface`
//! (native, else generic) with a filter covering the engine's whole port range
//! (`port_base .. port_base + ports_per_shard * shards`) and its local addresses
//! (`bind_v4`, `bind_v6`; an unspecified address means "any"). The netlink neighbour
//! table is started once. Then each shard gets an [`AfXdpBackend`]
//! ([`AfXdpShared::open_shard`]): an XSK bound to queue `queues[shard]` (default: the
//! shard's index) and registered in the program's XSKMAP. Zero-copy is used where the
//! driver offers it, copy mode otherwise; the choice is reported in one log line.
//! Every failure names the requirement that is missing (interface, CAP_NET_ADMIN /
//! CAP_BPF / CAP_NET_RAW, memlock) so the factory can fall back to io_uring with one line.
//!
//! ## Receive
//! [`Backend::poll_recv`] takes a batch off the RX ring and parses each frame where it
//! lies ([`frame::parse_udp`]); the handler gets the UDP payload as a slice *into the UMEM
//! frame*, and a [`TxSink`] that builds replies in other UMEM frames meanwhile. Frames
//! that are not UDP, are malformed, are for an address or port that is not the
//! engine's, or for a port of this shard that is not open are counted and dropped
//! (the XDP program should never have sent them here).
//!
//! ## The slow path: another shard's port
//! The NIC chooses the queue, so a datagram for shard B's port can arrive on shard A's
//! queue when flow steering is not configured (docs/tuning.md, "ntuple flow steering").
//! Shard A then copies the payload into shard B's bounded lock-free handover queue
//! (crossbeam `ArrayQueue`, preallocated, counted as `handover_out`; a full queue drops
//! and counts `handover_full`), and shard B delivers it at its next `poll_recv`
//! (`handover_in`). This costs a copy and up to one wait period (1 ms) of latency, and
//! is why each shard's port block is power-of-two aligned: one steering rule per shard.
//!
//! ## Send
//! [`TxSink::send_with`] looks the destination up in the neighbour snapshot (never blocks,
//! never allocates, no syscall), lets the shard write the RTP payload in a free UMEM
//! frame after room for the headers, then writes Ethernet, IPv4 (DF, identification,
//! header checksum) or IPv6, and UDP headers with every checksum computed in full (veth
//! and un-offloaded NICs deliver what we wrote as is). No resolved neighbour: counted
//! `tx_no_neighbor`, dropped, and resolution is triggered in the background. Larger than
//! the route's MTU: refused and counted `tx_too_big`; nothing is ever fragmented. Each
//! of these returns false, which the shard counts as a send it could not make.
//!
//! What it deliberately does not do: no VLAN tagging on transmit (the interface is an
//! access port), no policy routing (main table), no multi-queue per shard.

#![allow(unsafe_code)] // only `if_nametoindex`; every block says why it is sound

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use earshot_afxdp::frame::{self, DEFAULT_TTL, FrameError, Ipv4Ident, UdpHeaders};
use earshot_afxdp::{
    AfXdpError, AttachMode, AttachedMode, NeighborReader, NeighborTable, XdpCounters, XdpFilter,
    XdpProgram, XskConfig, XskMode, XskSocket, XskTx,
};
use earshot_engine_api::IpFamily;
use earshot_types::time::Instant;

use super::{Backend, BoundPort, Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};
use crate::config::EngineConfig;

/// Settings of the AF_XDP backend beyond [`EngineConfig`].
#[derive(Debug, Clone)]
pub struct AfXdpConfig {
    /// NIC queue of each shard, by shard index. Default empty: shard i uses queue i.
    pub queues: Vec<u32>,
    /// UMEM and ring sizes of each shard's socket. Default [`XskConfig::default`]:
    /// 4096 frames of 2048 bytes (8 MiB per shard, pinned: needs CAP_IPC_LOCK or a
    /// memlock limit above it).
    pub xsk: XskConfig,
    /// XDP attach mode. Default [`AttachMode::Auto`]: native where the driver has it.
    pub attach: AttachMode,
    /// Datagrams each shard's handover queue holds. Default 256: the slow path is for
    /// stray flows, not for a NIC without steering carrying everything.
    pub handover_capacity: usize,
    /// Interval of the neighbour table's full refresh. Default 1000 ms; misses trigger
    /// fast refreshes on their own.
    pub neighbor_refresh_ms: u64,
}

impl Default for AfXdpConfig {
    fn default() -> Self {
        AfXdpConfig {
            queues: Vec::new(),
            xsk: XskConfig::default(),
            attach: AttachMode::Auto,
            handover_capacity: 256,
            neighbor_refresh_ms: 1000,
        }
    }
}

/// One shard's backend counters. The shard thread owns the counts and publishes a copy
/// at every flush; [`AfXdpShared::stats`] reads the latest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfXdpStats {
    /// Frames taken off the RX ring.
    pub rx_frames: u64,
    /// Datagrams handed to the shard (from the RX ring or the handover queue).
    pub rx_datagrams: u64,
    /// Payload bytes handed to the shard.
    pub rx_bytes: u64,
    /// Frames that are not UDP over IP (or are IPv4 fragments), dropped.
    pub rx_not_udp: u64,
    /// Frames with truncated or inconsistent headers, dropped.
    pub rx_malformed: u64,
    /// UDP to an address or port outside the engine's, dropped.
    pub rx_not_ours: u64,
    /// UDP to a port of this shard that is not open, dropped.
    pub rx_closed_port: u64,
    /// Datagrams for another shard's port passed to its handover queue (slow path).
    pub handover_out: u64,
    /// Datagrams for another shard dropped because its handover queue was full.
    pub handover_full: u64,
    /// Datagrams delivered from this shard's handover queue.
    pub handover_in: u64,
    /// Frames queued for transmit.
    pub tx_frames: u64,
    /// Payload bytes queued for transmit.
    pub tx_bytes: u64,
    /// Sends dropped: the next hop's MAC is not resolved yet (resolution triggered).
    pub tx_no_neighbor: u64,
    /// Sends dropped: the route leaves through another interface than ours.
    pub tx_wrong_interface: u64,
    /// Sends dropped: no local address of the destination's family.
    pub tx_no_source: u64,
    /// Sends refused: the packet exceeds the route's MTU.
    pub tx_too_big: u64,
    /// Sends refused: every TX frame of the UMEM was in flight.
    pub tx_full: u64,
}

const STAT_WORDS: usize = 17;

impl AfXdpStats {
    fn to_words(self) -> [u64; STAT_WORDS] {
        [
            self.rx_frames,
            self.rx_datagrams,
            self.rx_bytes,
            self.rx_not_udp,
            self.rx_malformed,
            self.rx_not_ours,
            self.rx_closed_port,
            self.handover_out,
            self.handover_full,
            self.handover_in,
            self.tx_frames,
            self.tx_bytes,
            self.tx_no_neighbor,
            self.tx_wrong_interface,
            self.tx_no_source,
            self.tx_too_big,
            self.tx_full,
        ]
    }

    fn from_words(w: [u64; STAT_WORDS]) -> AfXdpStats {
        AfXdpStats {
            rx_frames: w[0],
            rx_datagrams: w[1],
            rx_bytes: w[2],
            rx_not_udp: w[3],
            rx_malformed: w[4],
            rx_not_ours: w[5],
            rx_closed_port: w[6],
            handover_out: w[7],
            handover_full: w[8],
            handover_in: w[9],
            tx_frames: w[10],
            tx_bytes: w[11],
            tx_no_neighbor: w[12],
            tx_wrong_interface: w[13],
            tx_no_source: w[14],
            tx_too_big: w[15],
            tx_full: w[16],
        }
    }
}

/// Where a shard publishes its counters: relaxed stores by the shard, relaxed loads by
/// readers (each counter is monotonic on its own; a snapshot need not be atomic as a whole).
#[derive(Debug, Default)]
struct StatsCell {
    words: [AtomicU64; STAT_WORDS],
}

impl StatsCell {
    fn publish(&self, stats: &AfXdpStats) {
        for (cell, value) in self.words.iter().zip(stats.to_words()) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    fn read(&self) -> AfXdpStats {
        let mut w = [0u64; STAT_WORDS];
        for (v, cell) in w.iter_mut().zip(&self.words) {
            *v = cell.load(Ordering::Relaxed);
        }
        AfXdpStats::from_words(w)
    }
}

/// A datagram crossing from the shard whose queue received it to the shard that owns
/// its port. Inline payload: the queue is allocated once, nothing is per datagram.
#[derive(Debug)]
struct Handover {
    local_port: u16,
    remote: SocketAddr,
    len: u16,
    payload: [u8; MAX_UDP_PAYLOAD],
}

/// Which ports and addresses are the engine's, and which shard owns a port.
#[derive(Debug, Clone, Copy)]
struct Ownership {
    port_base: u32,
    ports_per_shard: u32,
    shards: usize,
    /// `Some(UNSPECIFIED)` accepts any address of the family; `None` none.
    bind_v4: Option<Ipv4Addr>,
    bind_v6: Option<Ipv6Addr>,
}

impl Ownership {
    fn from_config(cfg: &EngineConfig) -> Ownership {
        Ownership {
            port_base: u32::from(cfg.port_base),
            ports_per_shard: cfg.ports_per_shard,
            shards: cfg.shards,
            bind_v4: cfg.bind_v4,
            bind_v6: cfg.bind_v6,
        }
    }

    /// The shard owning `port`, if it is in the engine's range.
    fn owner(&self, port: u16) -> Option<usize> {
        let offset = u32::from(port).checked_sub(self.port_base)?;
        let shard = (offset / self.ports_per_shard) as usize;
        (shard < self.shards).then_some(shard)
    }

    fn is_local(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.bind_v4.is_some_and(|b| b.is_unspecified() || b == a),
            IpAddr::V6(a) => self.bind_v6.is_some_and(|b| b.is_unspecified() || b == a),
        }
    }

    /// The inclusive port range the XDP program steers (every shard's block).
    fn port_range(&self) -> (u16, u16) {
        let end = self.port_base + self.ports_per_shard * self.shards as u32 - 1;
        // validate() keeps the ranges inside 1024..=65535.
        (self.port_base as u16, end.min(65_535) as u16)
    }

    /// The addresses for the XDP filter: empty (any) when either family binds the
    /// unspecified address.
    fn filter_addrs(&self) -> Vec<IpAddr> {
        let v4 = self.bind_v4.map(IpAddr::V4);
        let v6 = self.bind_v6.map(IpAddr::V6);
        let addrs: Vec<IpAddr> = v4.into_iter().chain(v6).collect();
        if addrs.iter().any(IpAddr::is_unspecified) {
            Vec::new()
        } else {
            addrs
        }
    }
}

/// Open ports, one bit per (family, port): sized at construction, no allocation after.
#[derive(Debug)]
struct PortSet {
    v4: Box<[u64]>,
    v6: Box<[u64]>,
}

impl PortSet {
    fn new() -> PortSet {
        PortSet {
            v4: vec![0; 1024].into_boxed_slice(),
            v6: vec![0; 1024].into_boxed_slice(),
        }
    }

    fn bits(&mut self, family: IpFamily) -> &mut [u64] {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }

    fn set(&mut self, port: u16, family: IpFamily, open: bool) {
        let (word, bit) = (usize::from(port) / 64, port % 64);
        let bits = self.bits(family);
        if open {
            bits[word] |= 1 << bit;
        } else {
            bits[word] &= !(1 << bit);
        }
    }

    fn is_open(&self, port: u16, family: IpFamily) -> bool {
        let bits = match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        };
        bits[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }
}

/// Maps a setup error to an `io::Error` whose message names the missing requirement
/// and whose kind lets callers tell privilege problems from missing devices.
fn setup_error(e: AfXdpError) -> io::Error {
    let kind = match &e {
        AfXdpError::InterfaceNotFound { .. } => io::ErrorKind::NotFound,
        AfXdpError::NotPermitted { .. } | AfXdpError::Memlock { .. } => {
            io::ErrorKind::PermissionDenied
        }
        AfXdpError::InvalidConfig(_) | AfXdpError::FilterTooLarge(_) => io::ErrorKind::InvalidInput,
        AfXdpError::Unsupported => io::ErrorKind::Unsupported,
        AfXdpError::Os { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("AF_XDP: {e}"))
}

fn ifindex_of(ifname: &str) -> io::Result<u32> {
    let not_found = || {
        setup_error(AfXdpError::InterfaceNotFound {
            ifname: ifname.to_string(),
        })
    };
    let cname = CString::new(ifname).map_err(|_| not_found())?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        Err(not_found())
    } else {
        Ok(index)
    }
}

/// What the engine shares among its AF_XDP shards: the attached program, the neighbour
/// table, the handover queues and the published counters. The factory holds it for the
/// engine's lifetime; dropping it (and every shard's backend) detaches the program.
#[derive(Debug)]
pub struct AfXdpShared {
    ifname: String,
    ifindex: u32,
    cfg: AfXdpConfig,
    own: Ownership,
    program: Arc<XdpProgram>,
    neighbors: NeighborTable,
    handover: Arc<[ArrayQueue<Handover>]>,
    stats: Arc<[StatsCell]>,
    opened: Vec<bool>,
}

impl AfXdpShared {
    /// Attaches the XDP program to `cfg.interface` with the engine's ports and addresses,
    /// and starts the neighbour table. Must run in the network namespace of the interface.
    pub fn start(cfg: &EngineConfig, xdp: &AfXdpConfig) -> io::Result<AfXdpShared> {
        let ifname = cfg.interface.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "AF_XDP: config field `interface` is not set",
            )
        })?;
        if !xdp.queues.is_empty() && xdp.queues.len() < cfg.shards {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "AF_XDP: {} queues listed for {} shards",
                    xdp.queues.len(),
                    cfg.shards
                ),
            ));
        }
        let ifindex = ifindex_of(&ifname)?;
        let own = Ownership::from_config(cfg);
        let addrs = own.filter_addrs();
        let filter = XdpFilter {
            port_ranges: &[own.port_range()],
            addrs: &addrs,
        };
        let program = XdpProgram::attach(&ifname, &filter, xdp.attach).map_err(setup_error)?;
        let neighbors = NeighborTable::start(xdp.neighbor_refresh_ms).map_err(setup_error)?;
        let capacity = xdp.handover_capacity.max(1);
        let handover: Arc<[ArrayQueue<Handover>]> =
            (0..cfg.shards).map(|_| ArrayQueue::new(capacity)).collect();
        let stats: Arc<[StatsCell]> = (0..cfg.shards).map(|_| StatsCell::default()).collect();
        Ok(AfXdpShared {
            ifname,
            ifindex,
            cfg: xdp.clone(),
            own,
            program: Arc::new(program),
            neighbors,
            handover,
            stats,
            opened: vec![false; cfg.shards],
        })
    }

    /// Opens shard `shard`'s socket on its queue and registers it with the program.
    pub fn open_shard(&mut self, shard: usize) -> io::Result<AfXdpBackend> {
        assert!(shard < self.own.shards, "shard {shard} out of range");
        let queue = self.cfg.queues.get(shard).copied().unwrap_or(shard as u32);
        let xsk = XskSocket::open(&self.ifname, queue, &self.cfg.xsk).map_err(setup_error)?;
        xsk.register(&self.program).map_err(setup_error)?;
        if shard == 0 {
            eprintln!(
                "earshot-engine: AF_XDP on {} queue {}: XDP {} mode, socket in {} mode{}",
                self.ifname,
                queue,
                match self.program.mode() {
                    AttachedMode::Native => "native",
                    AttachedMode::Generic => "generic",
                },
                match xsk.mode() {
                    XskMode::ZeroCopy => "zero-copy",
                    XskMode::Copy => "copy",
                },
                if xsk.mode() == XskMode::Copy {
                    " (the driver has no AF_XDP zero-copy)"
                } else {
                    ""
                }
            );
        }
        self.opened[shard] = true;
        Ok(AfXdpBackend {
            shard,
            xsk,
            own: self.own,
            ports: PortSet::new(),
            handover: Arc::clone(&self.handover),
            stats: AfXdpStats::default(),
            published: Arc::clone(&self.stats),
            tx: TxPath {
                neighbors: self.neighbors.reader(),
                ifindex: self.ifindex,
                src_v4: self.own.bind_v4.filter(|a| !a.is_unspecified()),
                src_v6: self.own.bind_v6.filter(|a| !a.is_unspecified()),
                ident: Ipv4Ident::new((shard as u16).wrapping_mul(0x9e37)),
            },
            program: Arc::clone(&self.program),
        })
    }

    /// Whether any shard's socket has been opened (a factory falling back before that
    /// drops this value, which detaches the program).
    pub fn any_open(&self) -> bool {
        self.opened.iter().any(|&o| o)
    }

    /// Shard `shard`'s counters as last published (at its last flush).
    pub fn stats(&self, shard: usize) -> AfXdpStats {
        self.stats
            .get(shard)
            .map(StatsCell::read)
            .unwrap_or_default()
    }

    /// The XDP program's verdict counters (syscalls: call on a stats interval).
    pub fn program_counters(&self) -> XdpCounters {
        self.program.counters()
    }
}

/// Opens shard `shard`'s AF_XDP backend for the [`super::Factory`], starting the shared
/// state on first use. If no shard could open, the shared state is dropped again, so a
/// fallback to another backend leaves no program attached.
pub fn open_for_factory(
    shared: &mut Option<AfXdpShared>,
    cfg: &EngineConfig,
    shard: usize,
) -> io::Result<Box<dyn Backend>> {
    if shared.is_none() {
        let mut xcfg = AfXdpConfig::default();
        if !cfg.xdp_queues.is_empty() {
            xcfg.queues = cfg.xdp_queues.clone();
        }
        if let Some(frames) = cfg.xdp_umem_frames {
            xcfg.xsk.frame_count = frames;
        }
        xcfg.attach = match cfg.xdp_attach_mode.as_str() {
            "native" => AttachMode::Native,
            "generic" => AttachMode::Generic,
            _ => AttachMode::Auto,
        };
        *shared = Some(AfXdpShared::start(cfg, &xcfg)?);
    }
    let Some(state) = shared.as_mut() else {
        // Set just above.
        return Err(io::Error::other("AF_XDP shared state missing"));
    };
    match state.open_shard(shard) {
        Ok(backend) => Ok(Box::new(backend)),
        Err(e) => {
            if !state.any_open() {
                *shared = None;
            }
            Err(e)
        }
    }
}

/// The transmit path's state: next hops, our addresses, the IPv4 identification.
#[derive(Debug)]
struct TxPath {
    neighbors: NeighborReader,
    ifindex: u32,
    src_v4: Option<Ipv4Addr>,
    src_v6: Option<Ipv6Addr>,
    ident: Ipv4Ident,
}

/// What became of one `send_with`, decided inside the frame builder.
#[derive(Clone, Copy)]
enum TxOutcome {
    Sent(usize),
    Cancelled,
    TooBig,
}

impl TxPath {
    /// Builds one frame in a UMEM frame: see the module doc, "Send".
    fn send(
        &mut self,
        xtx: &mut XskTx<'_>,
        stats: &mut AfXdpStats,
        src_port: u16,
        dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let Some(hop) = self.neighbors.lookup(dst.ip()) else {
            stats.tx_no_neighbor += 1;
            return false;
        };
        if hop.ifindex != self.ifindex {
            stats.tx_wrong_interface += 1;
            return false;
        }
        let src_ip = match dst.ip() {
            IpAddr::V4(_) => self
                .src_v4
                .map(IpAddr::V4)
                .or(hop.src_ip.filter(IpAddr::is_ipv4)),
            IpAddr::V6(_) => self
                .src_v6
                .map(IpAddr::V6)
                .or(hop.src_ip.filter(IpAddr::is_ipv6)),
        };
        let Some(src_ip) = src_ip else {
            stats.tx_no_source += 1;
            return false;
        };
        let headers = UdpHeaders {
            src_mac: hop.src_mac,
            dst_mac: hop.dst_mac,
            vlan_tci: None,
            src: SocketAddr::new(src_ip, src_port),
            dst,
            ttl: DEFAULT_TTL,
        };
        let header_len = headers.header_len();
        let mtu = hop.mtu as usize;
        let ident = if dst.is_ipv4() {
            self.ident.next_id()
        } else {
            0
        };
        let mut outcome = TxOutcome::Cancelled;
        let capacity = xtx.frame_capacity();
        let accepted = xtx.send_with(capacity, |buf| {
            let room = buf.len().saturating_sub(header_len).min(MAX_UDP_PAYLOAD);
            let n = build(&mut buf[header_len..header_len + room]);
            if n == 0 || n > room {
                debug_assert!(n <= room, "build returned {n} > {room}");
                return 0;
            }
            match headers.emit(buf, n, mtu, ident) {
                Ok(len) => {
                    outcome = TxOutcome::Sent(n);
                    len
                }
                Err(FrameError::ExceedsMtu { .. } | FrameError::BufferTooSmall { .. }) => {
                    outcome = TxOutcome::TooBig;
                    0
                }
                // A family mismatch cannot happen: src_ip was chosen by dst's family.
                Err(_) => 0,
            }
        });
        if !accepted {
            stats.tx_full += 1;
            return false;
        }
        match outcome {
            TxOutcome::Sent(n) => {
                stats.tx_frames += 1;
                stats.tx_bytes += n as u64;
                true
            }
            TxOutcome::Cancelled => true,
            TxOutcome::TooBig => {
                stats.tx_too_big += 1;
                false
            }
        }
    }
}

/// The [`TxSink`] lent to the handler during a receive batch.
struct RecvSink<'s, 'x> {
    xtx: &'s mut XskTx<'x>,
    path: &'s mut TxPath,
    stats: &'s mut AfXdpStats,
}

impl TxSink for RecvSink<'_, '_> {
    fn send_with(
        &mut self,
        src_port: u16,
        dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        self.path.send(self.xtx, self.stats, src_port, dst, build)
    }
}

/// Where a received frame goes.
enum Verdict {
    /// To this shard's handler.
    Deliver {
        local_port: u16,
        remote: SocketAddr,
        payload: Range<usize>,
    },
    /// To another shard, through its handover queue.
    Handover {
        shard: usize,
        local_port: u16,
        remote: SocketAddr,
        payload: Range<usize>,
    },
    /// Counted and dropped.
    Drop,
}

/// Decides what to do with one received Ethernet frame, counting every drop by reason.
fn classify(
    own: &Ownership,
    ports: &PortSet,
    me: usize,
    frame: &[u8],
    stats: &mut AfXdpStats,
) -> Verdict {
    let udp = match frame::parse_udp(frame) {
        Ok(udp) => udp,
        Err(FrameError::NotIp(_) | FrameError::NotUdp(_) | FrameError::Fragment) => {
            stats.rx_not_udp += 1;
            return Verdict::Drop;
        }
        Err(_) => {
            stats.rx_malformed += 1;
            return Verdict::Drop;
        }
    };
    let local_port = udp.dst.port();
    if !own.is_local(udp.dst.ip()) {
        stats.rx_not_ours += 1;
        return Verdict::Drop;
    }
    let Some(owner) = own.owner(local_port) else {
        stats.rx_not_ours += 1;
        return Verdict::Drop;
    };
    if owner != me {
        return Verdict::Handover {
            shard: owner,
            local_port,
            remote: udp.src,
            payload: udp.payload,
        };
    }
    if !ports.is_open(local_port, IpFamily::of(udp.dst.ip())) {
        stats.rx_closed_port += 1;
        return Verdict::Drop;
    }
    Verdict::Deliver {
        local_port,
        remote: udp.src,
        payload: udp.payload,
    }
}

/// One shard's AF_XDP backend.
#[derive(Debug)]
pub struct AfXdpBackend {
    shard: usize,
    xsk: XskSocket,
    own: Ownership,
    ports: PortSet,
    handover: Arc<[ArrayQueue<Handover>]>,
    stats: AfXdpStats,
    published: Arc<[StatsCell]>,
    tx: TxPath,
    /// Keeps the program attached while any shard still runs; shard 0 also reads its
    /// verdict counters for the engine's stats.
    program: Arc<XdpProgram>,
}

impl AfXdpBackend {
    /// This shard's counters (the live copy; others read the published one).
    pub fn stats(&self) -> AfXdpStats {
        self.stats
    }

    /// Delivers up to `max` datagrams other shards handed over. Returns how many.
    fn drain_handover(&mut self, max: usize, handler: &mut dyn PacketHandler) -> usize {
        let mut n = 0;
        while n < max {
            let Some(mut h) = self.handover[self.shard].pop() else {
                break;
            };
            n += 1;
            if !self
                .ports
                .is_open(h.local_port, IpFamily::of(h.remote.ip()))
            {
                self.stats.rx_closed_port += 1;
                continue;
            }
            let len = usize::from(h.len);
            self.stats.handover_in += 1;
            self.stats.rx_datagrams += 1;
            self.stats.rx_bytes += len as u64;
            let mut xtx = self.xsk.tx_handle();
            let mut sink = RecvSink {
                xtx: &mut xtx,
                path: &mut self.tx,
                stats: &mut self.stats,
            };
            let dgram = Datagram {
                local_port: h.local_port,
                remote: h.remote,
                payload: &mut h.payload[..len],
            };
            handler.handle_datagram(dgram, &mut sink);
        }
        n
    }
}

impl TxSink for AfXdpBackend {
    fn send_with(
        &mut self,
        src_port: u16,
        dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let mut xtx = self.xsk.tx_handle();
        self.tx
            .send(&mut xtx, &mut self.stats, src_port, dst, build)
    }
}

impl Backend for AfXdpBackend {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut pairs = self.stats().pairs();
        // The program's verdicts are per interface, not per shard: shard 0 reports them,
        // so that summing over shards counts each frame once. Read on the control path
        // only (a map lookup per counter).
        if self.shard == 0 {
            let c = self.program.counters();
            pairs.extend([
                ("xdp_redirected", c.redirected),
                ("xdp_pass_not_ip", c.pass_not_ip),
                ("xdp_pass_not_udp", c.pass_not_udp),
                ("xdp_pass_fragment", c.pass_fragment),
                ("xdp_pass_not_our_port", c.pass_not_our_port),
                ("xdp_pass_not_our_addr", c.pass_not_our_addr),
                ("xdp_pass_truncated", c.pass_truncated),
                ("xdp_pass_no_xsk", c.pass_no_xsk),
                ("xdp_pass_no_config", c.pass_no_config),
            ]);
        }
        pairs
    }

    fn name(&self) -> &'static str {
        "af_xdp"
    }

    fn binder(&self) -> std::sync::Arc<dyn super::PortBinder> {
        // The XDP program steers the engine's ports to the XSK: no kernel socket per port.
        std::sync::Arc::new(super::VirtualBinder)
    }

    fn add_port(&mut self, port: u16, family: IpFamily, _bound: BoundPort) -> io::Result<()> {
        if self.own.owner(port) != Some(self.shard) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("port {port} is not in shard {}'s range", self.shard),
            ));
        }
        let bound = match family {
            IpFamily::V4 => self.own.bind_v4.is_some(),
            IpFamily::V6 => self.own.bind_v6.is_some(),
        };
        if !bound {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("no local address of family {family:?} (bind_v4 / bind_v6)"),
            ));
        }
        if self.ports.is_open(port, family) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("port {port} already open"),
            ));
        }
        self.ports.set(port, family, true);
        Ok(())
    }

    fn close_port(&mut self, port: u16) {
        // Frames for it still in the RX ring or a handover queue are dropped on arrival.
        self.ports.set(port, IpFamily::V4, false);
        self.ports.set(port, IpFamily::V6, false);
    }

    fn poll_recv(&mut self, max: usize, handler: &mut dyn PacketHandler) -> io::Result<usize> {
        let handed = self.drain_handover(max, handler);
        let AfXdpBackend {
            shard,
            xsk,
            own,
            ports,
            handover,
            stats,
            tx,
            ..
        } = self;
        let received = xsk.recv_batch_with_tx(max.saturating_sub(handed), |frame, xtx| {
            stats.rx_frames += 1;
            match classify(own, ports, *shard, frame, stats) {
                Verdict::Deliver {
                    local_port,
                    remote,
                    payload,
                } => {
                    stats.rx_datagrams += 1;
                    stats.rx_bytes += payload.len() as u64;
                    let dgram = Datagram {
                        local_port,
                        remote,
                        payload: &mut frame[payload],
                    };
                    let mut sink = RecvSink {
                        xtx,
                        path: &mut *tx,
                        stats: &mut *stats,
                    };
                    handler.handle_datagram(dgram, &mut sink);
                }
                Verdict::Handover {
                    shard: owner,
                    local_port,
                    remote,
                    payload,
                } => {
                    let bytes = &frame[payload];
                    if bytes.len() > MAX_UDP_PAYLOAD {
                        // The owner would drop it as oversize; do it here, before the copy.
                        stats.rx_malformed += 1;
                        return;
                    }
                    let mut item = Handover {
                        local_port,
                        remote,
                        // <= MAX_UDP_PAYLOAD, checked above.
                        len: bytes.len() as u16,
                        payload: [0; MAX_UDP_PAYLOAD],
                    };
                    item.payload[..bytes.len()].copy_from_slice(bytes);
                    if handover[owner].push(item).is_ok() {
                        stats.handover_out += 1;
                    } else {
                        stats.handover_full += 1;
                    }
                }
                Verdict::Drop => {}
            }
        });
        Ok(handed + received)
    }

    fn tx(&mut self) -> &mut dyn TxSink {
        self
    }

    fn flush(&mut self) -> io::Result<()> {
        self.xsk.flush();
        self.published[self.shard].publish(&self.stats);
        Ok(())
    }

    fn wait(&mut self, now: Instant, deadline: Instant) -> io::Result<()> {
        if !self.handover[self.shard].is_empty() {
            return Ok(());
        }
        let timeout = std::time::Duration::from_nanos((deadline - now).as_nanos());
        // Readable or not, the shard loop re-checks everything; early returns are fine.
        self.xsk.wait_readable_for(timeout);
        Ok(())
    }
}

impl AfXdpStats {
    /// The counters as (name, value) pairs, for the engine's stats.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        let c = self;
        vec![
            ("rx_frames", c.rx_frames),
            ("rx_datagrams", c.rx_datagrams),
            ("rx_bytes", c.rx_bytes),
            ("rx_not_udp", c.rx_not_udp),
            ("rx_malformed", c.rx_malformed),
            ("rx_not_ours", c.rx_not_ours),
            ("rx_closed_port", c.rx_closed_port),
            ("handover_out", c.handover_out),
            ("handover_full", c.handover_full),
            ("handover_in", c.handover_in),
            ("tx_frames", c.tx_frames),
            ("tx_bytes", c.tx_bytes),
            ("tx_no_neighbor", c.tx_no_neighbor),
            ("tx_wrong_interface", c.tx_wrong_interface),
            ("tx_no_source", c.tx_no_source),
            ("tx_too_big", c.tx_too_big),
            ("tx_full", c.tx_full),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ownership() -> Ownership {
        Ownership {
            port_base: 32768,
            ports_per_shard: 1024,
            shards: 2,
            bind_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            bind_v6: None,
        }
    }

    fn v4_frame(dst_ip: &str, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let h = UdpHeaders {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            vlan_tci: None,
            src: "10.0.0.2:5000".parse().unwrap(),
            dst: SocketAddr::new(dst_ip.parse().unwrap(), dst_port),
            ttl: DEFAULT_TTL,
        };
        let mut buf = vec![0u8; 2048];
        let at = h.header_len();
        buf[at..at + payload.len()].copy_from_slice(payload);
        let len = h.emit(&mut buf, payload.len(), 1500, 1).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn ports_map_to_their_owning_shard_and_nothing_outside_the_range() {
        let own = ownership();
        assert_eq!(own.owner(32767), None);
        assert_eq!(own.owner(32768), Some(0));
        assert_eq!(own.owner(33791), Some(0));
        assert_eq!(own.owner(33792), Some(1));
        assert_eq!(own.owner(34815), Some(1));
        assert_eq!(own.owner(34816), None);
        assert_eq!(own.port_range(), (32768, 34815));
    }

    #[test]
    fn frames_are_delivered_handed_over_or_dropped_by_reason() {
        let own = ownership();
        let mut ports = PortSet::new();
        ports.set(32770, IpFamily::V4, true);
        let mut stats = AfXdpStats::default();
        let frame = v4_frame("10.0.0.1", 32770, b"rtp");
        match classify(&own, &ports, 0, &frame, &mut stats) {
            Verdict::Deliver {
                local_port,
                remote,
                payload,
            } => {
                assert_eq!(local_port, 32770);
                assert_eq!(remote, "10.0.0.2:5000".parse().unwrap());
                assert_eq!(&frame[payload], b"rtp");
            }
            _ => panic!("an open port of this shard is delivered"),
        }
        let other = v4_frame("10.0.0.1", 33800, b"x");
        assert!(matches!(
            classify(&own, &ports, 0, &other, &mut stats),
            Verdict::Handover {
                shard: 1,
                local_port: 33800,
                ..
            }
        ));
        let closed = v4_frame("10.0.0.1", 32772, b"x");
        assert!(matches!(
            classify(&own, &ports, 0, &closed, &mut stats),
            Verdict::Drop
        ));
        let wrong_addr = v4_frame("10.0.0.9", 32770, b"x");
        assert!(matches!(
            classify(&own, &ports, 0, &wrong_addr, &mut stats),
            Verdict::Drop
        ));
        let out_of_range = v4_frame("10.0.0.1", 40000, b"x");
        assert!(matches!(
            classify(&own, &ports, 0, &out_of_range, &mut stats),
            Verdict::Drop
        ));
        let mut tcp = frame.clone();
        tcp[23] = 6;
        assert!(matches!(
            classify(&own, &ports, 0, &tcp, &mut stats),
            Verdict::Drop
        ));
        assert!(matches!(
            classify(&own, &ports, 0, &frame[..30], &mut stats),
            Verdict::Drop
        ));
        assert_eq!(
            (
                stats.rx_closed_port,
                stats.rx_not_ours,
                stats.rx_not_udp,
                stats.rx_malformed
            ),
            (1, 2, 1, 1)
        );
    }

    #[test]
    fn port_set_tracks_each_family_separately() {
        let mut ports = PortSet::new();
        ports.set(65535, IpFamily::V6, true);
        ports.set(0, IpFamily::V4, true);
        assert!(ports.is_open(65535, IpFamily::V6));
        assert!(!ports.is_open(65535, IpFamily::V4));
        assert!(ports.is_open(0, IpFamily::V4));
        ports.set(65535, IpFamily::V6, false);
        assert!(!ports.is_open(65535, IpFamily::V6));
    }

    #[test]
    fn unspecified_bind_address_means_any_address_in_the_filter() {
        let mut own = ownership();
        assert_eq!(own.filter_addrs(), vec![IpAddr::from([10, 0, 0, 1])]);
        assert!(own.is_local("10.0.0.1".parse().unwrap()));
        assert!(!own.is_local("fd00::1".parse().unwrap()), "no v6 bind");
        own.bind_v4 = Some(Ipv4Addr::UNSPECIFIED);
        assert!(own.filter_addrs().is_empty());
        assert!(own.is_local("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn published_counters_read_back_field_for_field() {
        let mut words = [0u64; STAT_WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = i as u64 * 7 + 1;
        }
        let stats = AfXdpStats::from_words(words);
        let cell = StatsCell::default();
        cell.publish(&stats);
        assert_eq!(cell.read(), stats);
        assert_eq!(cell.read().to_words(), words);
    }
}
