//! The portable backend: non-blocking UDP sockets, epoll, recvmmsg and sendmmsg.
//!
//! It runs wherever plain sockets do, including containers whose seccomp profile blocks
//! io_uring. One socket per open `(port, family)`, all in one level-triggered epoll set.
//!
//! ## Receive
//! [`Backend::poll_recv`] takes ready sockets from the last epoll result (refilling it
//! with a zero-timeout `epoll_wait` when it is used up), and reads each with one
//! `recvmmsg` of up to `batch` datagrams into preallocated slots. Each datagram is handed
//! to the handler in its slot; a socket that filled the whole batch is read again before
//! the next one, until the call's budget `max` is spent.
//!
//! ## Send
//! [`TxSink::send_with`] lends the next slot of a preallocated `sendmmsg` array. Sends
//! are grouped into runs of consecutive slots with the same source socket (a received
//! batch echoed or forwarded from one port forms one run), and [`Backend::flush`] sends
//! each run with `sendmmsg`, `batch` at a time. When every slot is taken, `send_with`
//! flushes the batch itself (counted as `tx_implicit_flushes`) instead of refusing, so
//! it returns false only for a source port that is not open (`tx_no_port`). A full
//! socket send buffer (EAGAIN) drops the rest of that run and counts it; nothing blocks.
//!
//! ## Wait
//! `epoll_pwait2` with the nanosecond timeout (late by at most the thread's timer slack,
//! 50 us by default), or on kernels before 5.11 `epoll_wait` with the timeout rounded
//! DOWN to whole milliseconds: it returns early, never late, and the shard spins
//! through the remainder.
//!
//! ## Memory
//! Receive and transmit buffers, iovecs, names and mmsghdrs are allocated in
//! [`SocketBackend::new`]; the port table is a flat array of every port of both
//! families (512 KiB) so that resolving a send's source socket is one index.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use earshot_engine_api::Family;
use earshot_types::time::Instant;

pub use super::sys::IoCounters;
use super::sys::{
    self, Epoll, SOCKADDR_BYTES, SockAddrBytes, decode_sockaddr, empty_msghdr, encode_sockaddr,
    family_of, port_index,
};
use super::{Backend, BoundPort, Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};

/// Ready sockets remembered from one epoll call.
const EPOLL_EVENTS: usize = 256;

/// Configuration of a [`SocketBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketConfig {
    /// Local IPv4 address for v4 legs; `None` refuses v4 ports. Default `0.0.0.0`.
    pub bind_v4: Option<Ipv4Addr>,
    /// Local IPv6 address for v6 legs; `None` refuses v6 ports. Default `None`.
    pub bind_v6: Option<Ipv6Addr>,
    /// Most datagrams per `recvmmsg` and per `sendmmsg` call. Default 64: past that the
    /// per-call saving is gone (PLATFORM.md's reflector baseline uses 64).
    pub batch: usize,
    /// Receive slots of [`MAX_UDP_PAYLOAD`] bytes; one `recvmmsg` fills at most
    /// `min(batch, rx_buffers)`. Default 64.
    pub rx_buffers: usize,
    /// Transmit slots held until `flush`. Default 1024: a shard's tick sends one packet
    /// per output leg, and a full batch flushes itself rather than dropping.
    pub tx_buffers: usize,
    /// SO_RCVBUF per socket, 0 for the kernel default. Default 1 MiB, so a burst to one
    /// leg survives a late shard iteration.
    pub rcvbuf_bytes: usize,
    /// SO_SNDBUF per socket, 0 for the kernel default. Default 256 KiB.
    pub sndbuf_bytes: usize,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            bind_v4: Some(Ipv4Addr::UNSPECIFIED),
            bind_v6: None,
            batch: 64,
            rx_buffers: 64,
            tx_buffers: 1024,
            rcvbuf_bytes: 1 << 20,
            sndbuf_bytes: 256 << 10,
        }
    }
}

/// The socket backend. See the module documentation.
#[derive(Debug)]
pub struct SocketBackend {
    bind_v4: Option<Ipv4Addr>,
    bind_v6: Option<Ipv6Addr>,
    rcvbuf_bytes: usize,
    sndbuf_bytes: usize,
    batch: usize,
    epoll: Epoll,
    /// The last epoll result; `ready[ready_pos..ready_len]` are not yet read.
    ready: Box<[libc::epoll_event]>,
    ready_len: usize,
    ready_pos: usize,
    rx: RxBatch,
    /// Owns the port table too: every send resolves its source socket there.
    tx: TxBatch,
    rx_counters: IoCounters,
}

/// Receive slots for one `recvmmsg`.
#[derive(Debug)]
struct RxBatch {
    bufs: Box<[u8]>,
    names: Box<[SockAddrBytes]>,
    /// Never read here: the kernel reads it through `msgs`, which point into it.
    _iovecs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers in `_iovecs` and `msgs` point only into this struct's own
// boxed arrays, whose heap addresses do not change when the struct moves; nothing is
// shared with another thread.
unsafe impl Send for RxBatch {}

impl RxBatch {
    fn new(slots: usize) -> RxBatch {
        let mut bufs = vec![0u8; slots * MAX_UDP_PAYLOAD].into_boxed_slice();
        let mut names = vec![SockAddrBytes::ZERO; slots].into_boxed_slice();
        let mut iovecs: Box<[libc::iovec]> = (0..slots)
            .map(|i| libc::iovec {
                iov_base: bufs[i * MAX_UDP_PAYLOAD..].as_mut_ptr().cast(),
                iov_len: MAX_UDP_PAYLOAD,
            })
            .collect();
        let msgs = (0..slots)
            .map(|i| {
                let mut hdr = empty_msghdr();
                hdr.msg_name = names[i].0.as_mut_ptr().cast();
                hdr.msg_namelen = SOCKADDR_BYTES as libc::socklen_t;
                hdr.msg_iov = &mut iovecs[i];
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        RxBatch {
            bufs,
            names,
            _iovecs: iovecs,
            msgs,
        }
    }

    /// Receives up to `want` datagrams from `fd` into the first slots.
    fn recv(&mut self, fd: RawFd, want: usize) -> io::Result<usize> {
        let want = want.min(self.msgs.len());
        for m in &mut self.msgs[..want] {
            // The kernel overwrites these with what it received.
            m.msg_hdr.msg_namelen = SOCKADDR_BYTES as libc::socklen_t;
            m.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every mmsghdr's name, iovec and buffer point into this struct's own
        // boxed arrays (set up in `new`, never reallocated) with the lengths declared,
        // and `&mut self` guarantees no Rust reference reads them during the call.
        unsafe { sys::recvmmsg(fd, &mut self.msgs[..want]) }
    }

    /// Slot `i` after a receive: the datagram, whether it was truncated, its sender.
    fn slot(&mut self, i: usize) -> (&mut [u8], bool, &[u8]) {
        let m = &self.msgs[i];
        let len = (m.msg_len as usize).min(MAX_UDP_PAYLOAD);
        let truncated = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let name_len = (m.msg_hdr.msg_namelen as usize).min(SOCKADDR_BYTES);
        let start = i * MAX_UDP_PAYLOAD;
        (
            &mut self.bufs[start..start + len],
            truncated,
            &self.names[i].0[..name_len],
        )
    }
}

/// A run of consecutive transmit slots with the same source socket: one `sendmmsg`.
#[derive(Clone, Copy, Debug)]
struct Run {
    fd: RawFd,
    start: usize,
    end: usize,
}

/// The transmit batch and the port table it resolves source sockets in.
#[derive(Debug)]
struct TxBatch {
    /// `ports[port_index(port, family)]`: the open socket, if any.
    ports: Box<[Option<OwnedFd>]>,
    bufs: Box<[u8]>,
    names: Box<[SockAddrBytes]>,
    iovecs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    /// Slots `0..len` are built and not yet sent.
    len: usize,
    runs: Box<[Run]>,
    run_len: usize,
    batch: usize,
    counters: IoCounters,
}

// SAFETY: as for `RxBatch`, the raw pointers point only into this struct's own boxed
// arrays; the owned fds are plain descriptors.
unsafe impl Send for TxBatch {}

impl TxBatch {
    fn new(slots: usize, batch: usize) -> TxBatch {
        let mut bufs = vec![0u8; slots * MAX_UDP_PAYLOAD].into_boxed_slice();
        let mut names = vec![SockAddrBytes::ZERO; slots].into_boxed_slice();
        let mut iovecs: Box<[libc::iovec]> = (0..slots)
            .map(|i| libc::iovec {
                iov_base: bufs[i * MAX_UDP_PAYLOAD..].as_mut_ptr().cast(),
                iov_len: 0,
            })
            .collect();
        let msgs = (0..slots)
            .map(|i| {
                let mut hdr = empty_msghdr();
                hdr.msg_name = names[i].0.as_mut_ptr().cast();
                hdr.msg_iov = &mut iovecs[i];
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        TxBatch {
            ports: (0..sys::PORT_TABLE_LEN).map(|_| None).collect(),
            bufs,
            names,
            iovecs,
            msgs,
            len: 0,
            runs: vec![
                Run {
                    fd: -1,
                    start: 0,
                    end: 0
                };
                slots
            ]
            .into_boxed_slice(),
            run_len: 0,
            batch,
            counters: IoCounters::default(),
        }
    }

    /// Sends every built slot, run by run. Per-datagram errors are counted and
    /// skipped; EAGAIN drops the rest of its run.
    fn flush(&mut self) {
        for r in 0..self.run_len {
            let Run { fd, start, end } = self.runs[r];
            let mut next = start;
            while next < end {
                let chunk_end = end.min(next + self.batch);
                // SAFETY: slots `next..chunk_end` were built by `send_with`: their name,
                // iovec and buffer point into this struct's boxed arrays with the lengths
                // set there, and `&mut self` keeps them unborrowed during the call.
                let sent = unsafe { sys::sendmmsg(fd, &mut self.msgs[next..chunk_end]) };
                match sent {
                    Ok(n) if n > 0 => {
                        for m in &self.msgs[next..next + n] {
                            self.counters.tx_bytes += m.msg_len as u64;
                        }
                        self.counters.tx_datagrams += n as u64;
                        next += n;
                    }
                    Ok(_) => {
                        // The kernel took none without an error; treat like EAGAIN.
                        self.counters.tx_would_block += (end - next) as u64;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.counters.tx_would_block += (end - next) as u64;
                        break;
                    }
                    Err(_) => {
                        // This datagram was refused (unreachable, too big, ...): skip it.
                        self.counters.tx_errors += 1;
                        next += 1;
                    }
                }
            }
        }
        self.len = 0;
        self.run_len = 0;
    }
}

impl TxSink for TxBatch {
    fn send_with(
        &mut self,
        src_port: u16,
        dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let Some(fd) = self.ports[port_index(src_port, family_of(&dst))]
            .as_ref()
            .map(|fd| fd.as_raw_fd())
        else {
            self.counters.tx_no_port += 1;
            return false;
        };
        if self.len == self.msgs.len() {
            // Every slot is taken: send them now rather than refuse this one.
            self.counters.tx_implicit_flushes += 1;
            self.flush();
        }
        let i = self.len;
        let buf = &mut self.bufs[i * MAX_UDP_PAYLOAD..(i + 1) * MAX_UDP_PAYLOAD];
        let n = build(buf);
        if n == 0 {
            return true;
        }
        if n > MAX_UDP_PAYLOAD {
            debug_assert!(false, "build returned {n} > {MAX_UDP_PAYLOAD}");
            self.counters.tx_errors += 1;
            return true;
        }
        self.iovecs[i].iov_len = n;
        let name_len = encode_sockaddr(&dst, &mut self.names[i]);
        self.msgs[i].msg_hdr.msg_namelen = name_len;
        self.len += 1;
        match self.runs[..self.run_len].last_mut() {
            Some(run) if run.fd == fd && run.end == i => run.end = i + 1,
            _ => {
                self.runs[self.run_len] = Run {
                    fd,
                    start: i,
                    end: i + 1,
                };
                self.run_len += 1;
            }
        }
        true
    }
}

/// Packs a port and family into epoll's per-fd data.
fn epoll_data(port: u16, family: Family) -> u64 {
    port_index(port, family) as u64
}

impl SocketBackend {
    /// Builds the backend: the epoll set and every buffer it will use.
    pub fn new(config: SocketConfig) -> io::Result<SocketBackend> {
        assert!(config.batch >= 1, "batch must be at least 1");
        assert!(config.rx_buffers >= 1, "rx_buffers must be at least 1");
        assert!(config.tx_buffers >= 1, "tx_buffers must be at least 1");
        let batch = config.batch.min(config.rx_buffers).min(1024); // UIO_MAXIOV
        Ok(SocketBackend {
            bind_v4: config.bind_v4,
            bind_v6: config.bind_v6,
            rcvbuf_bytes: config.rcvbuf_bytes,
            sndbuf_bytes: config.sndbuf_bytes,
            batch,
            epoll: Epoll::new()?,
            ready: vec![sys::EMPTY_EPOLL_EVENT; EPOLL_EVENTS].into_boxed_slice(),
            ready_len: 0,
            ready_pos: 0,
            rx: RxBatch::new(config.rx_buffers),
            tx: TxBatch::new(config.tx_buffers, config.batch.min(1024)),
            rx_counters: IoCounters::default(),
        })
    }

    /// What the backend has counted so far.
    pub fn counters(&self) -> IoCounters {
        let tx = &self.tx.counters;
        IoCounters {
            tx_datagrams: tx.tx_datagrams,
            tx_bytes: tx.tx_bytes,
            tx_would_block: tx.tx_would_block,
            tx_errors: tx.tx_errors,
            tx_no_port: tx.tx_no_port,
            tx_full: tx.tx_full,
            tx_implicit_flushes: tx.tx_implicit_flushes,
            ..self.rx_counters
        }
    }

    /// Open `(port, family)` sockets.
    pub fn open_ports(&self) -> usize {
        self.tx.ports.iter().filter(|p| p.is_some()).count()
    }

    fn close_one(&mut self, port: u16, family: Family) {
        if let Some(fd) = self.tx.ports[port_index(port, family)].take() {
            // Closing also removes it from the set; deleting first keeps the set exact
            // even if the fd were duplicated elsewhere.
            let _ = self.epoll.delete(fd.as_raw_fd());
            drop(fd);
        }
    }
}

impl Backend for SocketBackend {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters().pairs()
    }

    fn name(&self) -> &'static str {
        "socket"
    }

    fn binder(&self) -> std::sync::Arc<dyn super::PortBinder> {
        std::sync::Arc::new(super::SocketBinder {
            bind_v4: self.bind_v4,
            bind_v6: self.bind_v6,
            rcvbuf_bytes: self.rcvbuf_bytes,
            sndbuf_bytes: self.sndbuf_bytes,
        })
    }

    fn add_port(&mut self, port: u16, family: Family, bound: BoundPort) -> io::Result<()> {
        let slot = port_index(port, family);
        if self.tx.ports[slot].is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("port {port} ({family:?}) is already open on this backend"),
            ));
        }
        let BoundPort::Socket(fd) = bound else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the socket backend receives on sockets",
            ));
        };
        self.epoll.add(fd.as_raw_fd(), epoll_data(port, family))?;
        self.tx.ports[slot] = Some(fd);
        Ok(())
    }

    fn close_port(&mut self, port: u16) {
        // Built sends name the socket by raw fd: send them before the number can be
        // reused by another socket.
        if self.tx.len > 0 {
            self.tx.flush();
        }
        self.close_one(port, Family::V4);
        self.close_one(port, Family::V6);
    }

    fn poll_recv(&mut self, max: usize, handler: &mut dyn PacketHandler) -> io::Result<usize> {
        let mut delivered = 0;
        let mut polled = false;
        while delivered < max {
            if self.ready_pos == self.ready_len {
                if polled {
                    break;
                }
                self.ready_len = self.epoll.wait(&mut self.ready, 0)?;
                self.ready_pos = 0;
                polled = true;
                if self.ready_len == 0 {
                    break;
                }
            }
            // A packed struct: copy the field out rather than borrow it.
            let data = self.ready[self.ready_pos].u64;
            let slot = data as usize;
            let Some(fd) = self.tx.ports.get(slot).and_then(|p| p.as_ref()) else {
                // Closed since the event was reported.
                self.ready_pos += 1;
                continue;
            };
            let port = (slot / 2) as u16;
            let want = (max - delivered).min(self.batch);
            let n = match self.rx.recv(fd.as_raw_fd(), want) {
                Ok(n) => n,
                Err(_) => {
                    self.rx_counters.rx_errors += 1;
                    0
                }
            };
            if n < want {
                // Drained (or failed): move on. Level-triggered epoll reports it again
                // if more arrives.
                self.ready_pos += 1;
            }
            for i in 0..n {
                let (payload, truncated, name) = self.rx.slot(i);
                if truncated {
                    self.rx_counters.rx_oversize += 1;
                    continue;
                }
                let Some(remote) = decode_sockaddr(name) else {
                    self.rx_counters.rx_bad_source += 1;
                    continue;
                };
                self.rx_counters.rx_datagrams += 1;
                self.rx_counters.rx_bytes += payload.len() as u64;
                let dgram = Datagram {
                    local_port: port,
                    remote,
                    payload,
                };
                handler.handle_datagram(dgram, &mut self.tx);
            }
            delivered += n;
        }
        Ok(delivered)
    }

    fn tx(&mut self) -> &mut dyn TxSink {
        &mut self.tx
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.tx.len > 0 {
            self.tx.flush();
        }
        Ok(())
    }

    fn wait(&mut self, now: Instant, deadline: Instant) -> io::Result<()> {
        if self.ready_pos < self.ready_len {
            return Ok(());
        }
        let timeout_ns = deadline.saturating_since(now).as_nanos();
        self.ready_len = self.epoll.wait(&mut self.ready, timeout_ns)?;
        self.ready_pos = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, UdpSocket};
    use std::time::Duration as StdDuration;

    use earshot_types::time::Duration;

    use super::super::sys::testutil::{Echo, assert_echoes, drive_echo, free_port};
    use super::*;

    fn backend_v4_v6() -> SocketBackend {
        SocketBackend::new(SocketConfig {
            bind_v4: Some(Ipv4Addr::LOCALHOST),
            bind_v6: Some(Ipv6Addr::LOCALHOST),
            ..SocketConfig::default()
        })
        .expect("socket backend")
    }

    fn open_free(backend: &mut SocketBackend, ip: IpAddr) -> SocketAddr {
        let family = if ip.is_ipv4() { Family::V4 } else { Family::V6 };
        for _ in 0..20 {
            let port = free_port(ip);
            if backend.open_port(port, family).is_ok() {
                return SocketAddr::new(ip, port);
            }
        }
        panic!("no free port on {ip}");
    }

    #[test]
    fn echoes_1000_datagrams_on_ipv4_with_identical_payloads() {
        let mut b = backend_v4_v6();
        let target = open_free(&mut b, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (got, echo) = drive_echo(&mut b, &client, &[target], 1000, StdDuration::from_secs(5));
        assert_echoes(&got, &[target], 1000);
        assert_eq!(echo.refused, 0);
        let c = b.counters();
        assert_eq!(c.rx_datagrams, echo.seen_ports.len() as u64);
        assert!(c.tx_datagrams >= got.len() as u64);
    }

    #[test]
    fn echoes_on_ipv6_loopback() {
        let mut b = backend_v4_v6();
        let target = open_free(&mut b, IpAddr::V6(Ipv6Addr::LOCALHOST));
        let client = UdpSocket::bind("[::1]:0").unwrap();
        let (got, _) = drive_echo(&mut b, &client, &[target], 300, StdDuration::from_secs(5));
        assert_echoes(&got, &[target], 300);
        assert!(got.iter().all(|(from, _)| from.is_ipv6()));
    }

    #[test]
    fn fifty_ports_each_echo_their_own_datagrams() {
        let mut b = backend_v4_v6();
        let targets: Vec<SocketAddr> = (0..50)
            .map(|_| open_free(&mut b, IpAddr::V4(Ipv4Addr::LOCALHOST)))
            .collect();
        assert_eq!(b.open_ports(), 50);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (got, echo) = drive_echo(&mut b, &client, &targets, 20, StdDuration::from_secs(5));
        assert_echoes(&got, &targets, 20);
        for t in &targets {
            let n = echo.seen_ports.iter().filter(|&&p| p == t.port()).count();
            assert!(n >= 19, "port {} saw only {n} of 20", t.port());
        }
    }

    #[test]
    fn a_full_tx_batch_flushes_itself_instead_of_dropping() {
        let mut b = SocketBackend::new(SocketConfig {
            bind_v4: Some(Ipv4Addr::LOCALHOST),
            tx_buffers: 4,
            ..SocketConfig::default()
        })
        .unwrap();
        let target = open_free(&mut b, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (got, echo) = drive_echo(&mut b, &client, &[target], 200, StdDuration::from_secs(5));
        assert_echoes(&got, &[target], 200);
        assert_eq!(echo.refused, 0);
        assert!(b.counters().tx_implicit_flushes > 0, "{:?}", b.counters());
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a real-socket test reads the real clock
    fn close_port_stops_delivery() {
        let mut b = backend_v4_v6();
        let target = open_free(&mut b, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (got, _) = drive_echo(&mut b, &client, &[target], 10, StdDuration::from_secs(5));
        assert_eq!(got.len(), 10, "port works before closing");
        // Queue datagrams, then close: queued ones are discarded, later ones refused.
        client.send_to(b"queued", target).unwrap();
        b.close_port(target.port());
        client.send_to(b"after", target).unwrap();
        let mut echo = Echo::default();
        let started = std::time::Instant::now();
        while started.elapsed() < StdDuration::from_millis(100) {
            b.wait(Instant::ZERO, Instant::ZERO + Duration::from_millis(5))
                .unwrap();
            b.poll_recv(64, &mut echo).unwrap();
        }
        assert!(
            echo.seen_ports.is_empty(),
            "delivered after close: {:?}",
            echo.seen_ports
        );
        assert_eq!(b.open_ports(), 0);
        // The port is free again for anyone.
        UdpSocket::bind(target).expect("port released by close_port");
    }

    #[test]
    fn oversize_datagrams_are_counted_and_dropped() {
        let mut b = backend_v4_v6();
        let target = open_free(&mut b, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&[7u8; MAX_UDP_PAYLOAD + 1], target).unwrap();
        client.send_to(&[8u8; MAX_UDP_PAYLOAD], target).unwrap();
        let mut echo = Echo::default();
        for _ in 0..100 {
            b.wait(Instant::ZERO, Instant::ZERO + Duration::from_millis(10))
                .unwrap();
            b.poll_recv(64, &mut echo).unwrap();
            if echo.seen_ports.len() + b.counters().rx_oversize as usize >= 2 {
                break;
            }
        }
        assert_eq!(b.counters().rx_oversize, 1);
        assert_eq!(
            echo.seen_ports,
            vec![target.port()],
            "the max-size one is delivered"
        );
        b.flush().unwrap();
        let mut buf = [0u8; 2048];
        client
            .set_read_timeout(Some(StdDuration::from_secs(2)))
            .unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[8u8; MAX_UDP_PAYLOAD][..]);
    }

    #[test]
    fn open_port_errors_are_returned() {
        let mut b = SocketBackend::new(SocketConfig {
            bind_v4: Some(Ipv4Addr::LOCALHOST),
            bind_v6: None,
            ..SocketConfig::default()
        })
        .unwrap();
        let err = b.open_port(40_000, Family::V6).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable);
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = b.open_port(port, Family::V4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let target = open_free(&mut b, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let err = b.open_port(target.port(), Family::V4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            b.open_port(0, Family::V4).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn send_from_a_port_that_is_not_open_is_refused_and_counted() {
        let mut b = backend_v4_v6();
        let ok = b
            .tx()
            .send_with(9, "127.0.0.1:9".parse().unwrap(), &mut |_| 10);
        assert!(!ok);
        assert_eq!(b.counters().tx_no_port, 1);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a real-socket test reads the real clock
    fn wait_sleeps_until_the_deadline_or_a_datagram() {
        let mut b = backend_v4_v6();
        let target = open_free(&mut b, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let t0 = std::time::Instant::now();
        b.wait(Instant::ZERO, Instant::ZERO + Duration::from_millis(20))
            .unwrap();
        let slept = t0.elapsed();
        assert!(
            slept >= StdDuration::from_millis(10),
            "woke early: {slept:?}"
        );
        assert!(slept < StdDuration::from_secs(1), "overslept: {slept:?}");

        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"wake", target).unwrap();
        let t1 = std::time::Instant::now();
        b.wait(Instant::ZERO, Instant::ZERO + Duration::from_secs(10))
            .unwrap();
        assert!(
            t1.elapsed() < StdDuration::from_secs(2),
            "a datagram did not wake wait"
        );
        let mut echo = Echo::default();
        assert_eq!(b.poll_recv(64, &mut echo).unwrap(), 1);
    }
}
