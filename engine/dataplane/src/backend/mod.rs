//! I/O backends behind one batch interface.
//!
//! A shard owns exactly one [`Backend`]. The interface admits zero-copy frames in both
//! directions:
//! - **receive**: [`Backend::poll_recv`] hands each datagram to the shard's
//!   [`PacketHandler`] as a slice *where it lies* (a provided buffer of io_uring, a UMEM
//!   frame of AF_XDP, a slot of a recvmmsg array), together with a [`TxSink`] so the
//!   handler can forward at once without copying the packet out first;
//! - **send**: [`TxSink::send_with`] lends the handler the buffer that goes to the wire
//!   (a sendmmsg slot, a registered io_uring buffer, a UMEM frame after room for the
//!   Ethernet/IP/UDP headers) and the handler builds the RTP packet directly in it.
//!
//! Sends are batched: a backend may hold them until [`Backend::flush`], which the shard
//! calls once per loop iteration.
//!
//! Backends never block the shard except in [`Backend::wait`], which the shard calls
//! only when it has nothing to do before its next deadline.

use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

pub use earshot_core::io::{Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};
use earshot_engine_api::IpFamily;
use earshot_types::time::Instant;

#[cfg(target_os = "linux")]
pub mod af_xdp;
pub mod memory;
pub mod socket;
mod sys;
pub use sys::{current_cpu, set_timer_slack_ns};
pub mod uring;

/// A local port bound off the shard thread and handed to the shard's backend.
#[derive(Debug)]
pub enum BoundPort {
    /// A bound, non-blocking UDP socket (io_uring and socket backends).
    Socket(OwnedFd),
    /// Nothing to hand over: the backend receives without a socket per port (AF_XDP
    /// steers by its XDP program; the memory backend by its queues).
    Virtual,
}

/// Binds a backend's ports. Called by the engine handle on the control side, never on
/// a shard thread: binding is a syscall that can fail when another process holds the
/// port, and the handle then tries another port.
pub trait PortBinder: Send + Sync + std::fmt::Debug {
    /// Binds `port` of `family` on the engine's own address, or on `ip` (a virtual
    /// address taken over from a failed node: bound with `IP_FREEBIND`).
    /// `ErrorKind::AddrInUse` means another socket holds it.
    fn bind(&self, ip: Option<IpAddr>, port: u16, family: IpFamily) -> io::Result<BoundPort>;
}

/// One shard's I/O.
pub trait Backend: Send {
    /// "io_uring", "socket", "af_xdp" or "memory".
    fn name(&self) -> &'static str;

    /// How this backend's ports are bound; usable from any thread.
    fn binder(&self) -> Arc<dyn PortBinder>;

    /// Starts receiving on local `port` (RTP, or RTCP on port+1) of `family`, through
    /// `bound` (from this backend's [`Backend::binder`]). Called on the shard thread when
    /// a leg is added: it may make a cheap syscall (epoll_ctl, an SQE), never a bind.
    fn add_port(&mut self, port: u16, family: IpFamily, bound: BoundPort) -> io::Result<()>;

    /// Binds and adds `port` on the calling thread (tests and tools).
    fn open_port(&mut self, port: u16, family: IpFamily) -> io::Result<()> {
        let bound = self.binder().bind(None, port, family)?;
        self.add_port(port, family, bound)
    }

    /// Stops receiving on `port`; pending datagrams for it are discarded.
    fn close_port(&mut self, port: u16);

    /// Gives back a port bound for a leg the shard did not take (refused, or a retry
    /// answered with the existing leg). Real sockets close when `bound` drops; a
    /// backend whose binder keeps its own record of bound ports clears it here.
    fn discard_unused(&mut self, port: u16, bound: BoundPort) {
        let _ = port;
        drop(bound);
    }

    /// Hands up to `max` received datagrams to `handler`, in place. Returns how many.
    fn poll_recv(&mut self, max: usize, handler: &mut dyn PacketHandler) -> io::Result<usize>;

    /// The sink for packets produced outside a receive batch (ticks).
    fn tx(&mut self) -> &mut dyn TxSink;

    /// Submits every send built since the last flush.
    fn flush(&mut self) -> io::Result<()>;

    /// The backend's own counters as (name, value) pairs, for the engine's stats (read
    /// on the control path; may allocate).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Sleeps until a datagram may be ready or until `deadline` (on the engine clock;
    /// `now` is the current time), whichever is first. Backends that cannot sleep
    /// precisely return early; the shard loop copes with early returns.
    fn wait(&mut self, now: Instant, deadline: Instant) -> io::Result<()>;
}

/// Binds nothing: for backends that need no socket per port (AF_XDP).
#[derive(Debug, Clone, Copy)]
pub struct VirtualBinder;

impl PortBinder for VirtualBinder {
    fn bind(&self, ip: Option<IpAddr>, _port: u16, _family: IpFamily) -> io::Result<BoundPort> {
        match ip {
            None => Ok(BoundPort::Virtual),
            // The XDP program steers the engine's own address only.
            Some(ip) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("AF_XDP serves the engine's own address, not {ip}"),
            )),
        }
    }
}

/// Binds real UDP sockets (io_uring and socket backends).
#[derive(Debug, Clone)]
pub struct SocketBinder {
    /// IPv4 address legs bind, if IPv4 is enabled.
    pub bind_v4: Option<std::net::Ipv4Addr>,
    /// IPv6 address legs bind, if IPv6 is enabled.
    pub bind_v6: Option<std::net::Ipv6Addr>,
    /// SO_RCVBUF per socket, bytes.
    pub rcvbuf_bytes: usize,
    /// SO_SNDBUF per socket, bytes.
    pub sndbuf_bytes: usize,
}

impl PortBinder for SocketBinder {
    fn bind(&self, ip: Option<IpAddr>, port: u16, family: IpFamily) -> io::Result<BoundPort> {
        let addr = match ip {
            Some(ip) if ip.is_ipv4() == matches!(family, IpFamily::V4) => {
                std::net::SocketAddr::new(ip, port)
            }
            Some(ip) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{ip} is not a {family:?} address"),
                ));
            }
            None => sys::local_addr(self.bind_v4, self.bind_v6, port, family)?,
        };
        sys::open_udp_socket(addr, self.rcvbuf_bytes, self.sndbuf_bytes, ip.is_some())
            .map(BoundPort::Socket)
    }
}

/// Parses a backend name as used in configuration and flags.
pub fn parse_kind(name: &str) -> io::Result<crate::config::BackendKind> {
    use crate::config::BackendKind;
    Ok(match name {
        "auto" => BackendKind::Auto,
        "io_uring" | "io-uring" | "uring" => BackendKind::IoUring,
        "socket" | "sockets" => BackendKind::Socket,
        "af_xdp" | "af-xdp" | "xdp" => BackendKind::AfXdp,
        "memory" => BackendKind::Memory,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown backend {other:?}: use auto, io_uring, socket or af_xdp"),
            ));
        }
    })
}

/// Builds each shard's backend, applying the fallback policy once: the first shard
/// decides which backend works, says so in one log line, and every shard uses it.
#[derive(Debug)]
pub struct Factory {
    cfg: crate::config::EngineConfig,
    chosen: Option<crate::config::BackendKind>,
    /// The XDP program, neighbour table and handover queues the AF_XDP shards share;
    /// dropping the factory (after the engine) detaches the program.
    #[cfg(target_os = "linux")]
    af_xdp: Option<af_xdp::AfXdpShared>,
}

impl Factory {
    /// A factory for `cfg`'s backend.
    pub fn new(cfg: &crate::config::EngineConfig) -> io::Result<Factory> {
        Ok(Factory {
            cfg: cfg.clone(),
            chosen: None,
            #[cfg(target_os = "linux")]
            af_xdp: None,
        })
    }

    /// Opens shard `i`'s backend.
    pub fn open(&mut self, i: usize) -> io::Result<Box<dyn Backend>> {
        use crate::config::BackendKind;
        if let Some(kind) = self.chosen {
            return self.open_kind(kind, i);
        }
        let order: &[BackendKind] = match self.cfg.backend {
            BackendKind::Auto => &[BackendKind::IoUring, BackendKind::Socket],
            BackendKind::AfXdp => &[
                BackendKind::AfXdp,
                BackendKind::IoUring,
                BackendKind::Socket,
            ],
            BackendKind::IoUring => &[BackendKind::IoUring, BackendKind::Socket],
            BackendKind::Socket => &[BackendKind::Socket],
            BackendKind::Memory => &[BackendKind::Memory],
        };
        let mut last_err = None;
        for (n, &kind) in order.iter().enumerate() {
            match self.open_kind(kind, i) {
                Ok(b) => {
                    self.chosen = Some(kind);
                    return Ok(b);
                }
                Err(e) => {
                    let explicit = self.cfg.backend != BackendKind::Auto;
                    if explicit && !self.cfg.fallback {
                        return Err(io::Error::new(e.kind(), format!("backend {kind:?}: {e}")));
                    }
                    if let Some(next) = order.get(n + 1) {
                        eprintln!(
                            "earshot-engine: backend {kind:?} unavailable ({e}); falling back to {next:?}"
                        );
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no backend available")))
    }

    fn open_kind(
        &mut self,
        kind: crate::config::BackendKind,
        i: usize,
    ) -> io::Result<Box<dyn Backend>> {
        use crate::config::BackendKind;
        match kind {
            BackendKind::IoUring => Ok(Box::new(uring::UringBackend::new(uring::UringConfig {
                bind_v4: self.cfg.bind_v4,
                bind_v6: self.cfg.bind_v6,
                ..uring::UringConfig::default()
            })?)),
            BackendKind::Socket => Ok(Box::new(socket::SocketBackend::new(
                socket::SocketConfig {
                    bind_v4: self.cfg.bind_v4,
                    bind_v6: self.cfg.bind_v6,
                    batch: self.cfg.recv_batch,
                    ..socket::SocketConfig::default()
                },
            )?)),
            #[cfg(target_os = "linux")]
            BackendKind::AfXdp => af_xdp::open_for_factory(&mut self.af_xdp, &self.cfg, i),
            #[cfg(not(target_os = "linux"))]
            BackendKind::AfXdp => {
                let _ = i;
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "AF_XDP is only available on Linux",
                ))
            }
            BackendKind::Memory => Ok(Box::new(memory::MemoryBackend::new(4096, false).0)),
            BackendKind::Auto => unreachable!("Auto expands to concrete kinds"),
        }
    }
}
