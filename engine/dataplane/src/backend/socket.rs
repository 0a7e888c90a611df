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

use earshot_engine_api::IpFamily;
use earshot_types::time::Instant;

pub use super::sys::IoCounters;
use super::sys::{
    self, Epoll, SOCKADDR_BYTES, SockAddrBytes, decode_sockaddr, empty_msghdr, encode_sockaddr,
    port_index,
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
        let Some(fd) = self.ports[port_index(src_port, IpFamily::of(dst.ip()))]
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
fn epoll_data(port: u16, family: IpFamily) -> u64 {
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

    fn close_one(&mut self, port: u16, family: IpFamily) {
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

    fn add_port(&mut self, port: u16, family: IpFamily, bound: BoundPort) -> io::Result<()> {
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
        self.close_one(port, IpFamily::V4);
        self.close_one(port, IpFamily::V6);
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
