//! The io_uring backend: multishot `recvmsg` into a ring of provided buffers, and
//! `sendmsg` from a pool of transmit slots, all submitted with one `io_uring_enter`.
//!
//! ## Receive
//! Every open `(port, family)` has one multishot `RecvMsgMulti` armed on its socket,
//! selecting buffers from one provided-buffer ring (`IORING_REGISTER_PBUF_RING`) shared
//! by all ports. Each completion carries a buffer id; the buffer holds an
//! `io_uring_recvmsg_out` header, the sender's address and the payload, which
//! [`Backend::poll_recv`] hands to the handler where it lies and then gives back to the
//! ring (the ring's tail is published once per batch). The `user_data` of a receive is
//! `(op, generation, port, family)`: a completion for a port closed (or closed and
//! reopened) since is recognised by its generation, its buffer recycled and nothing
//! delivered. A multishot receive that ends (no `IORING_CQE_F_MORE`: the kernel ran
//! out of provided buffers, counted as `rx_no_buffers`, or gave up for another reason)
//! is re-armed at once, unless the error says it can never work (EINVAL, EBADF, ...).
//!
//! ## Send
//! [`TxSink::send_with`] takes a free transmit slot (payload buffer, `msghdr`, `iovec`
//! and destination address, all preallocated), lets the handler build the payload in
//! it, and queues it. [`Backend::flush`] turns every queued slot into a `SendMsg` SQE
//! (`MSG_DONTWAIT`: a full socket buffer drops and counts, never parks the slot) and
//! submits them all with one `submit()`. A slot belongs to the kernel from its SQE
//! until its completion is reaped in `poll_recv`; the [`TxSlot`] token that names it
//! travels through the SQE's `user_data`, so a slot cannot be lent twice. With every
//! slot in flight `send_with` returns false (`tx_full`): size `tx_slots` for one
//! iteration's receive budget plus one tick of output legs.
//!
//! ## Wait
//! `io_uring_enter(GETEVENTS)` with a nanosecond timeout (`IORING_ENTER_EXT_ARG`,
//! Linux 5.11), the time to the shard's next deadline: precise to the thread's timer
//! slack. It also submits whatever is queued. Where the kernel has a minimum wait
//! (Linux 6.12) a wait asks for [`WAIT_BATCH`] completions and takes fewer once
//! [`WAIT_COALESCE_US`] have passed: with deferred task work (below) the kernel then
//! wakes the shard once per batch of datagrams rather than once per datagram, which is
//! what a datagram cost at moderate load (a cross-core wake-up per packet, about 6 us
//! of the shard's CPU per packet at 37k pps in, docs/perf.md). Elsewhere a wait
//! returns at the first completion.
//!
//! ## Setup
//! [`UringBackend::new`] needs Linux 6.0 (multishot recvmsg, provided-buffer rings). It
//! probes each step and fails with a [`UringSetupError`] (inside the `io::Error`)
//! naming the step, so the engine can log one line and fall back to sockets: container
//! seccomp profiles refuse `io_uring_setup` with EPERM, older kernels lack the rest.
//! The ring uses `DEFER_TASKRUN | SINGLE_ISSUER | TASKRUN_FLAG` where available (Linux
//! 6.1): completions run only when the shard asks for them, and a sleeping shard is
//! woken only once as many are pending as it waits for. A single-issuer ring belongs to
//! one thread, and the backend is built on the control thread and driven on the shard
//! thread: the ring is created disabled and enabled by the first call that enters the
//! kernel (the multishot probe runs on a small ring of its own). Older kernels get
//! `COOP_TASKRUN | TASKRUN_FLAG` (5.19: no inter-processor interrupts for completions),
//! or a plain ring. Either way `poll_recv` enters the kernel only when it flags pending
//! work.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU16, Ordering};

use earshot_engine_api::IpFamily;
use earshot_types::time::Instant;
use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

pub use super::sys::IoCounters;
use super::sys::{
    self, MmapRegion, SOCKADDR_BYTES, SockAddrBytes, decode_sockaddr, empty_msghdr,
    encode_sockaddr, port_index,
};
use super::{Backend, BoundPort, Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};

/// The one buffer group this backend registers.
const BUFFER_GROUP: u16 = 0;

/// How long a wait holds out for [`WAIT_BATCH`] completions before returning with
/// fewer, in microseconds: the most a datagram waits in the kernel for company. Well
/// under the forwarded path's added-latency budget (100 us p99, SPEC 6).
const WAIT_COALESCE_US: u32 = 50;

/// Completions a wait asks for before [`WAIT_COALESCE_US`] has passed.
const WAIT_BATCH: usize = 32;

/// Completions copied out of the ring per pass of `poll_recv`.
const CQE_BATCH: usize = 256;

/// Bytes of a provided buffer before the payload: the `io_uring_recvmsg_out` header
/// and the fixed-size name field.
const RECV_HEADER_BYTES: usize = 16 + SOCKADDR_BYTES;

/// Operation tags in the top byte of `user_data`.
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CANCEL: u64 = 3;
const OP_PROBE: u64 = 4;

/// Configuration of a [`UringBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UringConfig {
    /// Local IPv4 address for v4 legs; `None` refuses v4 ports. Default `0.0.0.0`.
    pub bind_v4: Option<Ipv4Addr>,
    /// Local IPv6 address for v6 legs; `None` refuses v6 ports. Default `None`.
    pub bind_v6: Option<Ipv6Addr>,
    /// Submission queue entries. Default 1024: one flush submits at most one SQE per
    /// built send, and a full queue is submitted early rather than refused.
    pub ring_entries: u32,
    /// Provided receive buffers, a power of two up to 32768. Default 4096: every
    /// datagram waiting between two iterations of the shard holds one.
    pub buffers: u16,
    /// Bytes per provided buffer: at least the recvmsg header and address (44 bytes)
    /// plus [`MAX_UDP_PAYLOAD`]. Default 1536; any larger datagram is `rx_oversize`.
    pub buffer_size: u32,
    /// Transmit slots of [`MAX_UDP_PAYLOAD`] bytes, at most 65536. Default 2048.
    pub tx_slots: usize,
    /// SO_RCVBUF per socket, 0 for the kernel default. Default 1 MiB.
    pub rcvbuf_bytes: usize,
    /// SO_SNDBUF per socket, 0 for the kernel default. Default 256 KiB.
    pub sndbuf_bytes: usize,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            bind_v4: Some(Ipv4Addr::UNSPECIFIED),
            bind_v6: None,
            ring_entries: 1024,
            buffers: 8192,
            buffer_size: 1536,
            tx_slots: 16384,
            rcvbuf_bytes: 1 << 20,
            sndbuf_bytes: 256 << 10,
        }
    }
}

/// Why io_uring cannot be used here: the step that failed and the kernel's answer.
/// Carried inside the `io::Error` that [`UringBackend::new`] returns (reach it with
/// `err.get_ref()` and `downcast_ref`); the error's kind is the kernel error's kind.
#[derive(Debug)]
pub struct UringSetupError {
    /// The setup step, e.g. "io_uring_setup" or "register provided buffer ring".
    pub step: &'static str,
    /// What the kernel said.
    pub source: io::Error,
}

impl fmt::Display for UringSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring unavailable: {} failed: {}",
            self.step, self.source
        )
    }
}

impl std::error::Error for UringSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn setup_step(step: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |source| io::Error::new(source.kind(), UringSetupError { step, source })
}

/// A provided receive buffer that the kernel has handed back to us in a completion.
/// Holding the token is holding the buffer: [`RxPool::provide`] consumes it, after
/// which the kernel may write the buffer again.
#[derive(Debug)]
struct RxBuf(u16);

impl RxBuf {
    /// The buffer a completion carries, if any.
    fn from_completion(flags: u32) -> Option<RxBuf> {
        cqueue::buffer_select(flags).map(RxBuf)
    }
}

/// The provided-buffer ring and its buffers, in one page-aligned mapping: the ring's
/// entries first, then `entries` buffers of `buffer_size` bytes.
#[derive(Debug)]
struct RxPool {
    region: MmapRegion,
    ring_bytes: usize,
    mask: u16,
    buffer_size: usize,
    /// Our tail; the kernel sees it when `publish` stores it.
    tail: u16,
}

impl RxPool {
    fn new(entries: u16, buffer_size: usize) -> io::Result<RxPool> {
        let page = sys::page_size();
        let ring_bytes = (usize::from(entries) * size_of::<BufRingEntry>()).div_ceil(page) * page;
        let region = MmapRegion::new(ring_bytes + usize::from(entries) * buffer_size)?;
        Ok(RxPool {
            region,
            ring_bytes,
            mask: entries - 1,
            buffer_size,
            tail: 0,
        })
    }

    fn ring_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    fn buffer_ptr(&self, bid: u16) -> *mut u8 {
        let offset = self.ring_bytes + usize::from(bid) * self.buffer_size;
        debug_assert!(offset + self.buffer_size <= self.region.len());
        // SAFETY: `bid <= mask`, so the offset stays inside the mapping (asserted above).
        unsafe { self.region.as_ptr().add(offset) }
    }

    /// The first `len` bytes of a buffer we hold.
    fn buffer(&self, buf: &RxBuf, len: usize) -> &[u8] {
        let len = len.min(self.buffer_size);
        // SAFETY: the token proves the kernel completed into this buffer and will not
        // touch it until `provide` consumes the token, which cannot happen while this
        // borrow of the token lives; the range is inside the mapping.
        unsafe { std::slice::from_raw_parts(self.buffer_ptr(buf.0), len) }
    }

    /// The first `len` bytes of a buffer we hold, mutably: the `&mut` token makes this
    /// the only view of the buffer while the slice lives.
    fn buffer_mut<'a>(&'a self, buf: &'a mut RxBuf, len: usize) -> &'a mut [u8] {
        let len = len.min(self.buffer_size);
        // SAFETY: as for `buffer`: the kernel completed into this buffer and will not touch
        // it until `provide` consumes the token; the token is borrowed mutably for the
        // slice's lifetime, so no other slice of this buffer (each buffer id has exactly
        // one token) can exist meanwhile; the range is inside the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.buffer_ptr(buf.0), len) }
    }

    /// Gives a buffer back to the kernel (visible after the next `publish`).
    fn provide(&mut self, buf: RxBuf) {
        let index = usize::from(self.tail & self.mask);
        let addr = self.buffer_ptr(buf.0) as u64;
        // SAFETY: the ring's entries start the mapping and `index <= mask` < entries.
        // The kernel reads only entries between its head and the published tail; this
        // one is at our unpublished tail, and there are as many entries as buffers, so it
        // cannot hold a buffer the kernel has yet to take. The setters leave the `resv`
        // field of entry 0, which is the shared tail, untouched.
        unsafe {
            let entry = &mut *self.region.as_ptr().cast::<BufRingEntry>().add(index);
            entry.set_addr(addr);
            entry.set_len(self.buffer_size as u32);
            entry.set_bid(buf.0);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every provided buffer visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is the `resv` u16 of entry 0, 2-byte aligned inside the
        // mapping; the kernel reads it concurrently, so it is only accessed atomically.
        let tail = unsafe {
            let ptr = BufRingEntry::tail(self.region.as_ptr().cast::<BufRingEntry>());
            AtomicU16::from_ptr(ptr.cast_mut())
        };
        // Release: the entries written by `provide` are visible before the new tail.
        tail.store(self.tail, Ordering::Release);
    }
}

/// The `msghdr` every multishot receive is armed with: it only tells the kernel how
/// much room to reserve for the name (no control data). Boxed so its address is fixed.
#[derive(Debug)]
struct RecvTemplate(Box<libc::msghdr>);

// SAFETY: every pointer in the template is null; it is plain data.
unsafe impl Send for RecvTemplate {}

impl RecvTemplate {
    fn new() -> RecvTemplate {
        let mut hdr = empty_msghdr();
        hdr.msg_namelen = SOCKADDR_BYTES as libc::socklen_t;
        RecvTemplate(Box::new(hdr))
    }
}

/// One open socket, or the memory of one (the generation outlives the socket so that
/// completions of a closed socket are recognised after the port is reopened).
#[derive(Debug, Default)]
struct UringPort {
    fd: Option<OwnedFd>,
    generation: u16,
    /// A multishot receive is in flight for it.
    armed: bool,
}

fn recv_user_data(index: usize, generation: u16) -> u64 {
    (OP_RECV << 56) | (u64::from(generation) << 32) | index as u64
}

/// A transmit slot we hold: free, or being built and queued for the next flush. Not
/// `Clone`: exactly one token exists per slot, and while the kernel owns the slot the
/// token exists only as the `user_data` of its send.
#[derive(Debug)]
struct TxSlot(u16);

impl TxSlot {
    /// Lends the slot to the kernel: the token becomes the send's `user_data`.
    fn into_user_data(self) -> u64 {
        (OP_SEND << 56) | u64::from(self.0)
    }

    /// Takes the slot back from a reaped send completion.
    fn from_completion(user_data: u64) -> TxSlot {
        debug_assert_eq!(user_data >> 56, OP_SEND);
        TxSlot(user_data as u16)
    }
}

/// A transmit slot's header, iovec and destination. The pointers inside point to the
/// slot's own iovec, name and payload buffer, set once in `new`.
#[derive(Debug)]
#[repr(C)]
struct TxSlotMeta {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: SockAddrBytes,
}

/// Transmit slots, the queue of built ones, and the port table (a send resolves its
/// source socket when it is built).
#[derive(Debug)]
struct UringTx {
    ports: Box<[UringPort]>,
    /// In `UnsafeCell`s because the kernel reads a slot while it is in flight: a slot is
    /// written only through its token, never through a reference to the whole array.
    meta: Box<[UnsafeCell<TxSlotMeta>]>,
    bufs: Box<[UnsafeCell<[u8; MAX_UDP_PAYLOAD]>]>,
    free: Vec<TxSlot>,
    /// Built and waiting for `flush`, with the source socket.
    queued: Vec<(TxSlot, RawFd)>,
    counters: IoCounters,
}

// SAFETY: the raw pointers in `meta` point only into this struct's own boxed arrays
// (stable heap addresses); nothing here is shared with another thread.
unsafe impl Send for UringTx {}

impl UringTx {
    fn new(slots: usize) -> UringTx {
        assert!(
            (1..=usize::from(u16::MAX) + 1).contains(&slots),
            "tx_slots must be 1..=65536"
        );
        let bufs: Box<[UnsafeCell<[u8; MAX_UDP_PAYLOAD]>]> = (0..slots)
            .map(|_| UnsafeCell::new([0; MAX_UDP_PAYLOAD]))
            .collect();
        let meta: Box<[UnsafeCell<TxSlotMeta>]> = (0..slots)
            .map(|_| {
                UnsafeCell::new(TxSlotMeta {
                    hdr: empty_msghdr(),
                    iov: libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    },
                    name: SockAddrBytes::ZERO,
                })
            })
            .collect();
        for (cell, buf) in meta.iter().zip(bufs.iter()) {
            let m = cell.get();
            // SAFETY: construction; nothing else references the slots yet. The
            // pointers stored stay valid as long as the boxes, which `UringTx` owns.
            unsafe {
                (*m).iov.iov_base = buf.get().cast();
                (*m).hdr.msg_iov = &raw mut (*m).iov;
                (*m).hdr.msg_iovlen = 1;
                (*m).hdr.msg_name = (&raw mut (*m).name).cast();
            }
        }
        UringTx {
            ports: (0..sys::PORT_TABLE_LEN)
                .map(|_| UringPort::default())
                .collect(),
            meta,
            bufs,
            free: (0..slots).rev().map(|i| TxSlot(i as u16)).collect(),
            queued: Vec::with_capacity(slots),
            counters: IoCounters::default(),
        }
    }
}

impl TxSink for UringTx {
    fn send_with(
        &mut self,
        src_port: u16,
        dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let Some(fd) = self.ports[port_index(src_port, IpFamily::of(dst.ip()))]
            .fd
            .as_ref()
            .map(|fd| fd.as_raw_fd())
        else {
            self.counters.tx_no_port += 1;
            return false;
        };
        let Some(slot) = self.free.pop() else {
            self.counters.tx_full += 1;
            return false;
        };
        let i = usize::from(slot.0);
        // SAFETY: we hold the slot's token, so the kernel is not reading this buffer or
        // header, and no other reference to them exists.
        let (buf, meta) = unsafe { (&mut *self.bufs[i].get(), &mut *self.meta[i].get()) };
        let n = build(buf);
        if n == 0 || n > MAX_UDP_PAYLOAD {
            debug_assert!(
                n <= MAX_UDP_PAYLOAD,
                "build returned {n} > {MAX_UDP_PAYLOAD}"
            );
            if n > MAX_UDP_PAYLOAD {
                self.counters.tx_errors += 1;
            }
            self.free.push(slot);
            return true;
        }
        meta.iov.iov_len = n;
        meta.hdr.msg_namelen = encode_sockaddr(&dst, &mut meta.name);
        self.queued.push((slot, fd));
        true
    }
}

/// Queues `sqe`, submitting first if the submission queue is full.
fn push_sqe(ring: &mut IoUring, sqe: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every SQE this backend builds points only at memory that outlives the
    // operation: the receive template (boxed, owned by the backend), a transmit slot
    // whose token rides in the SQE, or nothing (cancel).
    if unsafe { ring.submission().push(sqe) }.is_ok() {
        return Ok(());
    }
    ring.submit()?;
    // SAFETY: as above.
    unsafe { ring.submission().push(sqe) }
        .map_err(|_| io::Error::other("io_uring submission queue still full after submit"))
}

/// Submits what is queued and runs pending completion work; "try again later" answers
/// leave the SQEs queued for the next call.
fn submit_pending(ring: &mut IoUring) -> io::Result<()> {
    if ring.submission().is_empty() && !ring.submission().taskrun() {
        return Ok(());
    }
    match ring.submit() {
        Ok(_) => Ok(()),
        Err(e) if is_transient(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ETIME)
    )
}

/// Arms a multishot recvmsg on a socket pair, receives one datagram through it and
/// cancels it: the only reliable test that the kernel supports the whole path.
fn probe_multishot_recvmsg(
    ring: &mut IoUring,
    rx: &mut RxPool,
    template: &RecvTemplate,
) -> io::Result<()> {
    let (a, b) = UnixDatagram::pair()?;
    let probe = OP_PROBE << 56;
    let sqe = opcode::RecvMsgMulti::new(Fd(a.as_raw_fd()), &*template.0, BUFFER_GROUP)
        .build()
        .user_data(probe);
    push_sqe(ring, &sqe)?;
    ring.submit()?;
    b.send(b"probe")?;
    let (mut got_data, mut ended, mut cancelled) = (false, false, false);
    let ts = Timespec::new().nsec(100_000_000);
    for _ in 0..10 {
        if got_data && !cancelled {
            let cancel = opcode::AsyncCancel::new(probe)
                .build()
                .user_data(OP_CANCEL << 56);
            push_sqe(ring, &cancel)?;
            cancelled = true;
        }
        let args = SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e),
        }
        let mut failure = None;
        for cqe in ring.completion() {
            if cqe.user_data() != probe {
                continue;
            }
            if let Some(buf) = RxBuf::from_completion(cqe.flags()) {
                rx.provide(buf);
            }
            let res = cqe.result();
            if res >= 0 {
                got_data = true;
            } else if res != -libc::ECANCELED {
                failure = Some(io::Error::from_raw_os_error(-res));
            }
            if !cqueue::more(cqe.flags()) {
                ended = true;
            }
        }
        rx.publish();
        if let Some(e) = failure {
            return Err(e);
        }
        if ended {
            break;
        }
    }
    if got_data {
        // If the cancel has not completed yet, the late completion is recognised
        // as a probe's and its buffer recycled in `poll_recv`.
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no completion within 1 s",
        ))
    }
}

/// Builds a ring of `entries` submissions and `cq_entries` completions. Returns whether
/// it defers task work (`DEFER_TASKRUN | SINGLE_ISSUER`, Linux 6.1): the kernel then
/// runs completions only when the ring's thread asks for them, and wakes a waiting
/// thread only once as many completions are pending as it waits for, so that a batched
/// wait costs one wake-up instead of one per datagram. Such a ring is created disabled
/// (its submitter is the thread that enables it). Older kernels get cooperative task
/// running (5.19), or a plain ring.
fn build_ring(entries: u32, cq_entries: u32) -> io::Result<(IoUring, bool)> {
    let deferred = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_r_disabled()
        .build(entries);
    if let Ok(ring) = deferred {
        return Ok((ring, true));
    }
    IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
        .or_else(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                // Before Linux 5.19: no cooperative task running; plain is fine.
                IoUring::builder().setup_cqsize(cq_entries).build(entries)
            } else {
                Err(e)
            }
        })
        .map(|ring| (ring, false))
        .map_err(setup_step("io_uring_setup"))
}

/// Provides every buffer of `rx` and registers its ring with `ring`.
fn register_buffers(ring: &IoUring, rx: &mut RxPool, buffers: u16) -> io::Result<()> {
    for bid in 0..buffers {
        rx.provide(RxBuf(bid));
    }
    rx.publish();
    // SAFETY: the ring memory is page aligned, holds `buffers` entries, and lives in
    // `rx`, which its owner drops only after the ring (field order).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(rx.ring_addr(), buffers, BUFFER_GROUP, 0)
    }
    .map_err(setup_step(
        "register provided buffer ring (IORING_REGISTER_PBUF_RING)",
    ))
}

/// The io_uring backend. See the module documentation.
pub struct UringBackend {
    /// First field, dropped first: closing the ring cancels every request before the
    /// buffers and slots below are unmapped or freed.
    ring: IoUring,
    /// Created disabled (deferred task work): enabled by the first call that enters
    /// the kernel, on the thread that drives the backend.
    disabled: bool,
    /// How long a wait holds out for a batch of completions before taking fewer, in
    /// microseconds (0: the kernel cannot, and a wait returns at the first).
    min_wait_us: u32,
    rx: RxPool,
    recv_template: RecvTemplate,
    cqes: Vec<cqueue::Entry>,
    tx: UringTx,
    rx_counters: IoCounters,
    bind_v4: Option<Ipv4Addr>,
    bind_v6: Option<Ipv6Addr>,
    rcvbuf_bytes: usize,
    sndbuf_bytes: usize,
}

impl fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringBackend")
            .field("bind_v4", &self.bind_v4)
            .field("bind_v6", &self.bind_v6)
            .field("free_tx_slots", &self.tx.free.len())
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl UringBackend {
    /// Sets up the ring, registers the provided buffers and checks that multishot
    /// recvmsg works. Errors carry a [`UringSetupError`] naming the failed step.
    pub fn new(config: UringConfig) -> io::Result<UringBackend> {
        assert!(
            config.buffers.is_power_of_two() && config.buffers <= 1 << 15,
            "buffers must be a power of two up to 32768"
        );
        assert!(
            config.buffer_size as usize >= RECV_HEADER_BYTES + MAX_UDP_PAYLOAD,
            "buffer_size must hold the recvmsg header, the address and MAX_UDP_PAYLOAD"
        );
        assert!(config.ring_entries >= 8, "ring_entries must be at least 8");
        // Every completion the ring can owe at once: one per provided buffer, one per
        // transmit slot, and the control operations; the kernel buffers overflow anyway
        // (IORING_FEAT_NODROP), this keeps it off that slow path.
        let cq_entries = (u32::from(config.buffers) + config.tx_slots as u32 + config.ring_entries)
            .next_power_of_two()
            .min(1 << 20);
        let (ring, deferred) = build_ring(config.ring_entries, cq_entries)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(setup_step("timed wait (IORING_FEAT_EXT_ARG, Linux 5.11)")(
                io::Error::from(io::ErrorKind::Unsupported),
            ));
        }
        let mut rx = RxPool::new(config.buffers, config.buffer_size as usize)
            .map_err(setup_step("mmap provided buffers"))?;
        register_buffers(&ring, &mut rx, config.buffers)?;
        let min_wait_us = if ring.params().is_feature_min_timeout() {
            WAIT_COALESCE_US
        } else {
            0
        };
        let mut backend = UringBackend {
            ring,
            disabled: deferred,
            min_wait_us,
            rx,
            recv_template: RecvTemplate::new(),
            cqes: Vec::with_capacity(CQE_BATCH),
            tx: UringTx::new(config.tx_slots),
            rx_counters: IoCounters::default(),
            bind_v4: config.bind_v4,
            bind_v6: config.bind_v6,
            rcvbuf_bytes: config.rcvbuf_bytes,
            sndbuf_bytes: config.sndbuf_bytes,
        };
        let probed = if deferred {
            // The ring waits, disabled, for the thread that will drive it: probe the
            // kernel on a small ring of the same kind of its own.
            let (mut ring, _) = build_ring(8, 16)?;
            ring.submitter()
                .register_enable_rings()
                .map_err(setup_step("enable the probe ring"))?;
            let mut rx = RxPool::new(8, config.buffer_size as usize)
                .map_err(setup_step("mmap probe buffers"))?;
            register_buffers(&ring, &mut rx, 8)?;
            let probed = probe_multishot_recvmsg(&mut ring, &mut rx, &backend.recv_template);
            // The ring first: closing it cancels the probe before its buffers go.
            drop(ring);
            drop(rx);
            probed
        } else {
            probe_multishot_recvmsg(&mut backend.ring, &mut backend.rx, &backend.recv_template)
        };
        probed.map_err(setup_step("multishot recvmsg probe (Linux 6.0)"))?;
        Ok(backend)
    }

    /// Enables a ring created disabled, making the calling thread its only submitter.
    /// Every method that enters the kernel calls this first: the backend is built on
    /// the control thread and driven on the shard thread.
    fn enable(&mut self) -> io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        Ok(())
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

    /// Transmit slots neither queued nor in the kernel's hands.
    pub fn free_tx_slots(&self) -> usize {
        self.tx.free.len()
    }

    /// Open `(port, family)` sockets.
    pub fn open_ports(&self) -> usize {
        self.tx.ports.iter().filter(|p| p.fd.is_some()).count()
    }

    fn arm(&mut self, index: usize) -> io::Result<()> {
        let port = &self.tx.ports[index];
        let Some(fd) = port.fd.as_ref() else {
            return Ok(());
        };
        let sqe =
            opcode::RecvMsgMulti::new(Fd(fd.as_raw_fd()), &*self.recv_template.0, BUFFER_GROUP)
                .build()
                .user_data(recv_user_data(index, port.generation));
        push_sqe(&mut self.ring, &sqe)?;
        self.tx.ports[index].armed = true;
        Ok(())
    }

    /// Turns every queued send into an SQE.
    fn queue_sends(&mut self) {
        let tx = &mut self.tx;
        for (slot, fd) in tx.queued.drain(..) {
            // `hdr` is the first field of the repr(C) slot metadata.
            let msg = tx.meta[usize::from(slot.0)]
                .get()
                .cast_const()
                .cast::<libc::msghdr>();
            let sqe = opcode::SendMsg::new(Fd(fd), msg)
                .flags(libc::MSG_DONTWAIT as u32)
                .build();
            // The token moves into the SQE; a failed push hands it straight back.
            let user_data = slot.into_user_data();
            if push_sqe(&mut self.ring, &sqe.user_data(user_data)).is_err() {
                tx.counters.tx_errors += 1;
                tx.free.push(TxSlot::from_completion(user_data));
            }
        }
    }

    /// One receive completion; returns 1 if it delivered a datagram.
    fn handle_recv(&mut self, cqe: &cqueue::Entry, handler: &mut dyn PacketHandler) -> usize {
        let user_data = cqe.user_data();
        let index = user_data as u32 as usize;
        let generation = (user_data >> 32) as u16;
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let buf = RxBuf::from_completion(cqe.flags());
        let Some(port) = self.tx.ports.get_mut(index) else {
            debug_assert!(false, "receive completion for index {index}");
            return 0;
        };
        if port.fd.is_none() || port.generation != generation {
            self.rx_counters.rx_stale += 1;
            if let Some(buf) = buf {
                self.rx.provide(buf);
            }
            return 0;
        }
        if !more {
            port.armed = false;
        }
        let mut delivered = 0;
        match buf {
            Some(mut buf) if res >= 0 => {
                let len = res as usize;
                // Where the payload lies and who sent it, read through a shared view; the
                // datagram is then lent mutably (the shard decrypts SRTP in place).
                let found = {
                    let data = self.rx.buffer(&buf, len);
                    match RecvMsgOut::parse(data, &self.recv_template.0) {
                        Err(()) => {
                            self.rx_counters.rx_errors += 1;
                            None
                        }
                        Ok(out)
                            if out.is_payload_truncated()
                                || out.payload_data().len() > MAX_UDP_PAYLOAD =>
                        {
                            self.rx_counters.rx_oversize += 1;
                            None
                        }
                        Ok(out) => match decode_sockaddr(out.name_data()) {
                            Some(remote) if !out.is_name_data_truncated() => {
                                let payload = out.payload_data();
                                // The payload is a subslice of `data`.
                                let start = payload.as_ptr() as usize - data.as_ptr() as usize;
                                Some((remote, start..start + payload.len()))
                            }
                            _ => {
                                self.rx_counters.rx_bad_source += 1;
                                None
                            }
                        },
                    }
                };
                if let Some((remote, range)) = found {
                    let payload = &mut self.rx.buffer_mut(&mut buf, len)[range];
                    self.rx_counters.rx_datagrams += 1;
                    self.rx_counters.rx_bytes += payload.len() as u64;
                    let dgram = Datagram {
                        local_port: (index / 2) as u16,
                        remote,
                        payload,
                    };
                    handler.handle_datagram(dgram, &mut self.tx);
                    delivered = 1;
                }
                self.rx.provide(buf);
            }
            Some(buf) => {
                self.rx.provide(buf);
                self.rx_counters.rx_errors += 1;
            }
            None if res == -libc::ENOBUFS => self.rx_counters.rx_no_buffers += 1,
            None if res == -libc::ECANCELED => {}
            None => self.rx_counters.rx_errors += 1,
        }
        let hopeless = matches!(
            -res,
            libc::EINVAL | libc::EBADF | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT
        );
        if !more && !hopeless && res != -libc::ECANCELED {
            self.rx_counters.rx_rearms += 1;
            if self.arm(index).is_err() {
                self.rx_counters.rx_errors += 1;
            }
        }
        delivered
    }

    fn handle_cqe(&mut self, cqe: &cqueue::Entry, handler: &mut dyn PacketHandler) -> usize {
        let user_data = cqe.user_data();
        match user_data >> 56 {
            OP_RECV => self.handle_recv(cqe, handler),
            OP_SEND => {
                let slot = TxSlot::from_completion(user_data);
                let res = cqe.result();
                let c = &mut self.tx.counters;
                if res >= 0 {
                    c.tx_datagrams += 1;
                    c.tx_bytes += res as u64;
                } else if res == -libc::EAGAIN {
                    c.tx_would_block += 1;
                } else {
                    c.tx_errors += 1;
                }
                self.tx.free.push(slot);
                0
            }
            _ => {
                // Cancels and the setup probe's late completions: only a buffer to return.
                if let Some(buf) = RxBuf::from_completion(cqe.flags()) {
                    self.rx.provide(buf);
                }
                0
            }
        }
    }
}

impl Backend for UringBackend {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters().pairs()
    }

    fn name(&self) -> &'static str {
        "io_uring"
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
        let index = port_index(port, family);
        if self.tx.ports[index].fd.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("port {port} ({family:?}) is already open on this backend"),
            ));
        }
        let BoundPort::Socket(fd) = bound else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the io_uring backend receives on sockets",
            ));
        };
        self.enable()?;
        let entry = &mut self.tx.ports[index];
        entry.generation = entry.generation.wrapping_add(1);
        entry.fd = Some(fd);
        if let Err(e) = self.arm(index).and_then(|()| self.ring.submit().map(drop)) {
            self.tx.ports[index].fd = None;
            return Err(e);
        }
        Ok(())
    }

    fn close_port(&mut self, port: u16) {
        if self.enable().is_err() {
            self.rx_counters.rx_errors += 1;
        }
        // Queued sends name the socket by raw fd: submit them before the number can be
        // reused by another socket.
        self.queue_sends();
        for family in [IpFamily::V4, IpFamily::V6] {
            let index = port_index(port, family);
            let entry = &mut self.tx.ports[index];
            let Some(fd) = entry.fd.take() else {
                continue;
            };
            if entry.armed {
                entry.armed = false;
                let target = recv_user_data(index, entry.generation);
                let cancel = opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(OP_CANCEL << 56);
                if push_sqe(&mut self.ring, &cancel).is_err() {
                    self.rx_counters.rx_errors += 1;
                }
            }
            // The cancel must reach the kernel before the fd number is freed; the
            // socket itself lives until the receive's final completion, which the
            // generation check then ignores.
            if submit_pending(&mut self.ring).is_err() {
                self.rx_counters.rx_errors += 1;
            }
            drop(fd);
        }
    }

    fn poll_recv(&mut self, max: usize, handler: &mut dyn PacketHandler) -> io::Result<usize> {
        self.enable()?;
        if self.ring.submission().taskrun() {
            // Completions are waiting as task work: one enter runs it. Run it even when
            // receive completions are already queued: send completions wait there too,
            // and under load the queue never empties, so waiting for that would starve
            // the transmit slots (seen as `tx_full` at half the forwarded rate).
            submit_pending(&mut self.ring)?;
        }
        let mut delivered = 0;
        while delivered < max {
            self.cqes.clear();
            let room = (max - delivered).min(CQE_BATCH);
            // Within capacity: no allocation.
            self.cqes.extend(self.ring.completion().take(room));
            if self.cqes.is_empty() {
                break;
            }
            for k in 0..self.cqes.len() {
                let cqe = self.cqes[k].clone();
                delivered += self.handle_cqe(&cqe, handler);
            }
        }
        self.rx.publish();
        Ok(delivered)
    }

    fn tx(&mut self) -> &mut dyn TxSink {
        &mut self.tx
    }

    fn flush(&mut self) -> io::Result<()> {
        self.enable()?;
        self.queue_sends();
        submit_pending(&mut self.ring)
    }

    fn wait(&mut self, now: Instant, deadline: Instant) -> io::Result<()> {
        self.enable()?;
        if !self.ring.completion().is_empty() {
            return Ok(());
        }
        let timeout_ns = deadline.saturating_since(now).as_nanos();
        if timeout_ns == 0 {
            return submit_pending(&mut self.ring);
        }
        let ts = Timespec::new()
            .sec(timeout_ns / 1_000_000_000)
            .nsec((timeout_ns % 1_000_000_000) as u32);
        // Hold out up to `min_wait_us` (never past the deadline) for a batch of
        // completions, then return with whatever came: with deferred task work the
        // kernel wakes the thread once per batch rather than once per datagram.
        let min_wait = u64::from(self.min_wait_us).min(timeout_ns / 1000) as u32;
        let (want, args) = if min_wait > 0 {
            (
                WAIT_BATCH,
                SubmitArgs::new().timespec(&ts).min_wait_usec(min_wait),
            )
        } else {
            (1, SubmitArgs::new().timespec(&ts))
        };
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    // The behaviour every backend shares is checked by the conformance suite
    // (`tests/backend_conformance.rs`), the io_uring-specific mechanisms at its end.
    use super::*;

    #[test]
    fn setup_errors_name_the_step() {
        let err = setup_step("io_uring_setup")(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<UringSetupError>())
            .expect("a UringSetupError inside");
        assert_eq!(inner.step, "io_uring_setup");
        assert!(err.to_string().contains("io_uring_setup failed"), "{err}");
    }
}
