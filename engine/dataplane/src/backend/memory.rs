//! The in-memory backend: datagrams cross bounded lock-free queues instead of a kernel.
//!
//! Tests and compute benchmarks use it to drive the very same shard code as the real
//! backends, without sockets. A [`MemoryNet`] handle, shared with the test or benchmark,
//! injects datagrams toward the engine and collects what it sends. The queues are
//! bounded: a full inbound queue refuses the injection, a full outbound queue counts a
//! drop, and neither ever blocks the shard.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use earshot_engine_api::IpFamily;
use earshot_types::time::Instant;

use super::{Backend, BoundPort, Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};

/// One datagram crossing the in-memory network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemDatagram {
    /// Engine-side port: destination when injected, source when sent by the engine.
    pub engine_port: u16,
    /// The far end: source when injected, destination when sent by the engine.
    pub peer: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// The test's end of an in-memory backend.
#[derive(Debug, Clone)]
pub struct MemoryNet {
    /// Ports "bound" on this network: by the engine's binder, or held by a pretend
    /// foreign process ([`MemoryNet::hold_port`]).
    bound: Arc<Vec<AtomicBool>>,
    inbound: Arc<ArrayQueue<MemDatagram>>,
    outbound: Arc<ArrayQueue<MemDatagram>>,
    outbound_dropped: Arc<AtomicU64>,
}

impl MemoryNet {
    /// Queues a datagram toward the engine; gives it back if the queue is full.
    pub fn inject(&self, d: MemDatagram) -> Result<(), MemDatagram> {
        self.inbound.push(d)
    }
    /// Takes the next datagram the engine sent, if any.
    pub fn take_sent(&self) -> Option<MemDatagram> {
        self.outbound.pop()
    }
    /// Pretends another process holds `port`: the engine's binder is refused it, as a
    /// kernel refuses a port bound by someone else. False if it was bound already.
    pub fn hold_port(&self, port: u16) -> bool {
        !self.bound[usize::from(port)].swap(true, Ordering::AcqRel)
    }

    /// Releases a port held with [`MemoryNet::hold_port`].
    pub fn release_port(&self, port: u16) {
        self.bound[usize::from(port)].store(false, Ordering::Release);
    }

    /// Datagrams the engine sent while the outbound queue was full.
    pub fn outbound_dropped(&self) -> u64 {
        self.outbound_dropped.load(Ordering::Relaxed)
    }
}

/// Binds ports of an in-memory network: refuses ports already bound or held.
#[derive(Debug)]
struct MemoryBinder {
    bound: Arc<Vec<AtomicBool>>,
}

impl super::PortBinder for MemoryBinder {
    /// The in-memory network is addressed by port alone: any `ip` is accepted.
    fn bind(
        &self,
        _ip: Option<std::net::IpAddr>,
        port: u16,
        _family: IpFamily,
    ) -> io::Result<BoundPort> {
        if self.bound[usize::from(port)].swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("port {port} is bound by someone else"),
            ));
        }
        Ok(BoundPort::Virtual)
    }
}

/// The engine's end: implements [`Backend`].
#[derive(Debug)]
pub struct MemoryBackend {
    net: MemoryNet,
    /// Optional sink that discards sends (compute benchmarks measure the shard, not the
    /// queue): counts them instead.
    discard_sends: bool,
    sent: u64,
    open: Vec<bool>,
    tx: MemTx,
}

#[derive(Debug)]
struct MemTx {
    outbound: Arc<ArrayQueue<MemDatagram>>,
    dropped: Arc<AtomicU64>,
    discard: bool,
    buf: Box<[u8; MAX_UDP_PAYLOAD]>,
    sent: u64,
}

impl TxSink for MemTx {
    fn send_with(
        &mut self,
        src_port: u16,
        dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let len = build(&mut self.buf[..]).min(MAX_UDP_PAYLOAD);
        if len == 0 {
            return true;
        }
        self.sent += 1;
        if self.discard {
            return true;
        }
        // The in-memory network allocates per datagram: it is a test harness, not the
        // packet path of a production backend.
        let d = MemDatagram {
            engine_port: src_port,
            peer: dst,
            payload: self.buf[..len].to_vec(),
        };
        if self.outbound.push(d).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

impl MemoryBackend {
    /// A backend and the handle that talks to it, with queues of `capacity` datagrams
    /// each way. With `discard_sends`, datagrams sent by the engine are only counted.
    pub fn new(capacity: usize, discard_sends: bool) -> (MemoryBackend, MemoryNet) {
        let net = MemoryNet {
            bound: Arc::new((0..65_536).map(|_| AtomicBool::new(false)).collect()),
            inbound: Arc::new(ArrayQueue::new(capacity.max(1))),
            outbound: Arc::new(ArrayQueue::new(capacity.max(1))),
            outbound_dropped: Arc::new(AtomicU64::new(0)),
        };
        let tx = MemTx {
            outbound: net.outbound.clone(),
            dropped: net.outbound_dropped.clone(),
            discard: discard_sends,
            buf: Box::new([0; MAX_UDP_PAYLOAD]),
            sent: 0,
        };
        let b = MemoryBackend {
            net: net.clone(),
            discard_sends,
            sent: 0,
            open: vec![false; 65_536],
            tx,
        };
        (b, net)
    }

    /// Datagrams sent through this backend so far.
    pub fn sent(&self) -> u64 {
        self.sent + self.tx.sent
    }

    /// Whether sends are discarded.
    pub fn discards_sends(&self) -> bool {
        self.discard_sends
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn binder(&self) -> Arc<dyn super::PortBinder> {
        Arc::new(MemoryBinder {
            bound: self.net.bound.clone(),
        })
    }

    fn add_port(&mut self, port: u16, _family: IpFamily, _bound: BoundPort) -> io::Result<()> {
        let slot = &mut self.open[usize::from(port)];
        if *slot {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("port {port} in use"),
            ));
        }
        *slot = true;
        Ok(())
    }

    fn discard_unused(&mut self, port: u16, _bound: BoundPort) {
        self.net.bound[usize::from(port)].store(false, Ordering::Release);
    }

    fn close_port(&mut self, port: u16) {
        self.open[usize::from(port)] = false;
        self.net.bound[usize::from(port)].store(false, Ordering::Release);
    }

    fn poll_recv(&mut self, max: usize, handler: &mut dyn PacketHandler) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            let Some(mut d) = self.net.inbound.pop() else {
                break;
            };
            n += 1;
            if !self.open[usize::from(d.engine_port)] {
                // A closed port: the kernel would have answered with ICMP; we drop.
                continue;
            }
            let dgram = Datagram {
                local_port: d.engine_port,
                remote: d.peer,
                payload: &mut d.payload,
            };
            handler.handle_datagram(dgram, &mut self.tx);
        }
        Ok(n)
    }

    fn tx(&mut self) -> &mut dyn TxSink {
        &mut self.tx
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wait(&mut self, _now: Instant, _deadline: Instant) -> io::Result<()> {
        // Spinning is right here: the in-memory backend exists for tests and compute
        // benchmarks, where the producer is another thread and latency matters more
        // than CPU.
        std::hint::spin_loop();
        Ok(())
    }
}
