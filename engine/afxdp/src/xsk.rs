//! One AF_XDP socket per (interface, queue) with its own UMEM, driven in batches.
//!
//! Frame ownership. The UMEM is `frame_count` frames of `frame_size` bytes. At open the
//! frames are split once:
//! - RX frames (`fill_ring_size` of them, at most half): always owned by the kernel,
//!   either in the fill ring or the RX ring, except during [`XskSocket::recv_batch`], which
//!   lends each received frame to the callback and puts it straight back on the fill ring.
//! - TX frames (the rest): on our free stack, then written by [`XskSocket::send_with`] and
//!   queued (pending), then in the TX ring until the completion ring hands them back to the
//!   free stack in [`XskSocket::flush`].
//!
//! A per-frame state byte records which of these places a frame is in; every transition
//! checks it, so a frame can neither leak nor be used twice, and a descriptor the kernel
//! returns that does not match our records is counted and ignored instead of trusted.
//!
//! Nothing here allocates after [`XskSocket::open`].

#![allow(unsafe_code)] // the UMEM mapping and frame access; each site says why it is sound

use core::num::NonZeroU32;
use core::ptr::NonNull;
use std::ffi::CString;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

use crate::AfXdpError;
use crate::program::XdpProgram;

const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

/// How the socket binds to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy if the driver supports it, else copy (the kernel falls back itself).
    Auto,
    /// Zero-copy or fail.
    ZeroCopy,
    /// Copy mode (works on every device, veth included).
    Copy,
}

/// The mode the socket got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskMode {
    /// The NIC DMAs straight into UMEM.
    ZeroCopy,
    /// The kernel copies between its buffers and UMEM.
    Copy,
}

/// Sizes of one socket. Ring sizes must be powers of two.
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// UMEM frames. Default 4096 (8 MiB at 2048-byte frames: needs CAP_IPC_LOCK or a
    /// memlock limit above that).
    pub frame_count: u32,
    /// Bytes per frame, 2048 or 4096. Default 2048: a 1500-byte MTU frame plus the
    /// kernel's headroom fits, and twice as many frames fit a page.
    pub frame_size: u32,
    /// Fill ring entries; also the number of frames dedicated to RX. Default 2048.
    pub fill_ring_size: u32,
    /// Completion ring entries. Default 2048.
    pub completion_ring_size: u32,
    /// RX ring entries. Default 2048.
    pub rx_ring_size: u32,
    /// TX ring entries. Default 2048.
    pub tx_ring_size: u32,
    /// Zero-copy / copy choice. Default [`BindMode::Auto`].
    pub bind_mode: BindMode,
    /// Back the UMEM with huge pages (MAP_HUGETLB). Default false: needs reserved
    /// hugepages (`vm.nr_hugepages`), see docs/tuning.md.
    pub hugepages: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_count: 4096,
            frame_size: 2048,
            fill_ring_size: 2048,
            completion_ring_size: 2048,
            rx_ring_size: 2048,
            tx_ring_size: 2048,
            bind_mode: BindMode::Auto,
            hugepages: false,
        }
    }
}

/// Socket counters: ours (plain u64, owned by the socket's thread) plus the kernel's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames handed to `recv_batch` callbacks.
    pub rx_frames: u64,
    /// Frames queued for transmit by `send_with`.
    pub tx_frames: u64,
    /// `send_with` found no free TX frame (all in flight).
    pub tx_no_frame: u64,
    /// `send_with` callbacks that returned 0 (nothing to send): frame reused.
    pub tx_cancelled: u64,
    /// Descriptors from the kernel that did not match our frame records (never expected).
    pub bad_descriptors: u64,
    /// Kernel: frames dropped because the RX ring or fill ring had no room.
    pub kernel_rx_dropped: u64,
    /// Kernel: RX ring full events.
    pub kernel_rx_ring_full: u64,
    /// Kernel: fill ring empty events (we did not return frames fast enough).
    pub kernel_fill_ring_empty: u64,
    /// Kernel: invalid TX descriptors.
    pub kernel_tx_invalid: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameState {
    /// RX frame, with the kernel (fill ring or RX ring).
    Kernel,
    /// RX frame taken off the RX ring and lent to a `recv_batch` callback; back to the
    /// fill ring (Kernel) when the batch ends.
    Lent,
    /// TX frame on the free stack.
    Free,
    /// TX frame written, waiting for `flush` to put it on the TX ring.
    Pending,
    /// TX frame in the TX ring, waiting for its completion.
    InTx,
}

/// An anonymous mapping that backs the UMEM; unmapped on drop.
struct UmemArea {
    ptr: NonNull<u8>,
    len: usize,
}

impl UmemArea {
    fn map(len: usize, hugepages: bool) -> Result<UmemArea, AfXdpError> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        if hugepages {
            flags |= libc::MAP_HUGETLB;
        }
        // SAFETY: an anonymous private mapping at a kernel-chosen address touches no
        // existing memory; the result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(AfXdpError::Os {
                op: if hugepages {
                    "mmap UMEM with MAP_HUGETLB (are hugepages reserved?)"
                } else {
                    "mmap UMEM"
                },
                source: std::io::Error::last_os_error(),
            });
        }
        // mmap never returns NULL on success (MAP_FIXED is not used).
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(AfXdpError::InvalidConfig("mmap NULL"))?;
        Ok(UmemArea { ptr, len })
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping created in `map`, and the UMEM and rings
        // that point into it are dropped before this field (declaration order in XskSocket).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One AF_XDP socket bound to (interface, queue), with its UMEM and four rings.
pub struct XskSocket {
    queue_id: u32,
    mode: XskMode,
    frame_size: u32,
    tx_ring_size: u32,
    state: Box<[FrameState]>,
    free_tx: Vec<u32>,
    pending_tx: Vec<XdpDesc>,
    /// Descriptors of the receive batch in progress, sized to the RX ring at open.
    rx_batch: Vec<XdpDesc>,
    stats: XskStats,
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    _user: User,
    umem: Umem,
    // Last: unmapped after everything that points into it is gone.
    _area: UmemArea,
}

// SAFETY: the raw pointers inside (UMEM area, ring mmaps) point only into mappings this
// value owns exclusively; no other handle to them exists, so moving the whole socket to
// another thread (a shard) is sound. It is deliberately not Sync: rings are single-producer
// single-consumer.
unsafe impl Send for XskSocket {}

impl core::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XskSocket")
            .field("queue_id", &self.queue_id)
            .field("mode", &self.mode)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn os(op: &'static str, errno: xdpilone::Errno) -> AfXdpError {
    AfXdpError::from_errno(op, errno.get_raw().abs(), "CAP_NET_RAW and CAP_NET_ADMIN")
}

fn check_config(cfg: &XskConfig) -> Result<(), AfXdpError> {
    for size in [
        cfg.fill_ring_size,
        cfg.completion_ring_size,
        cfg.rx_ring_size,
        cfg.tx_ring_size,
    ] {
        if !size.is_power_of_two() {
            return Err(AfXdpError::InvalidConfig(
                "ring sizes must be powers of two",
            ));
        }
    }
    if cfg.frame_size != 2048 && cfg.frame_size != 4096 {
        return Err(AfXdpError::InvalidConfig("frame_size must be 2048 or 4096"));
    }
    if cfg.frame_count < 2 {
        return Err(AfXdpError::InvalidConfig("frame_count must be at least 2"));
    }
    Ok(())
}

impl XskSocket {
    /// Creates the UMEM and socket and binds it to `queue_id` of `ifname`. Register it
    /// with the program ([`XskSocket::register`]) to start receiving.
    pub fn open(ifname: &str, queue_id: u32, cfg: &XskConfig) -> Result<XskSocket, AfXdpError> {
        check_config(cfg)?;
        let cname = CString::new(ifname).map_err(|_| AfXdpError::InterfaceNotFound {
            ifname: ifname.to_string(),
        })?;
        let mut info = IfInfo::invalid();
        info.from_name(&cname)
            .map_err(|_| AfXdpError::InterfaceNotFound {
                ifname: ifname.to_string(),
            })?;
        info.set_queue(queue_id);

        let umem_len = cfg.frame_count as usize * cfg.frame_size as usize;
        let area = UmemArea::map(umem_len, cfg.hugepages)?;
        let umem_cfg = UmemConfig {
            fill_size: cfg.fill_ring_size,
            complete_size: cfg.completion_ring_size,
            frame_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: `slice` is a page-aligned mapping of exactly umem_len bytes that lives in
        // `area`, which the returned XskSocket drops after the Umem (field order).
        let umem = unsafe { Umem::new(umem_cfg, slice) }.map_err(|e| {
            let errno = e.get_raw().abs();
            if errno == libc::ENOMEM || errno == libc::EPERM {
                AfXdpError::Memlock { bytes: umem_len }
            } else {
                os("registering the UMEM (XDP_UMEM_REG)", e)
            }
        })?;
        let sock = Socket::with_shared(&info, &umem).map_err(|e| os("AF_XDP socket", e))?;
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| os("fill/completion rings", e))?;
        let mut bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP;
        match cfg.bind_mode {
            BindMode::Auto => {}
            BindMode::ZeroCopy => bind_flags |= SocketConfig::XDP_BIND_ZEROCOPY,
            BindMode::Copy => bind_flags |= SocketConfig::XDP_BIND_COPY,
        }
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(cfg.rx_ring_size),
                    tx_size: NonZeroU32::new(cfg.tx_ring_size),
                    bind_flags,
                },
            )
            .map_err(|e| os("RX/TX rings", e))?;
        let rx = user.map_rx().map_err(|e| os("mapping the RX ring", e))?;
        let tx = user.map_tx().map_err(|e| os("mapping the TX ring", e))?;
        umem.bind(&user).map_err(|e| {
            if e.get_raw().abs() == libc::EOPNOTSUPP {
                AfXdpError::Os {
                    op: "bind in zero-copy mode (driver lacks AF_XDP zero-copy; use Auto/Copy)",
                    source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                }
            } else {
                os("binding the socket to the queue", e)
            }
        })?;
        let mode = read_mode(user.as_raw_fd())?;

        let rx_frames = cfg.fill_ring_size.min(cfg.frame_count / 2);
        let mut state = vec![FrameState::Free; cfg.frame_count as usize].into_boxed_slice();
        let mut free_tx = Vec::with_capacity(cfg.frame_count as usize);
        for idx in (rx_frames..cfg.frame_count).rev() {
            free_tx.push(idx);
        }
        let mut this = XskSocket {
            queue_id,
            mode,
            frame_size: cfg.frame_size,
            tx_ring_size: cfg.tx_ring_size,
            state: Box::default(),
            free_tx,
            pending_tx: Vec::with_capacity(cfg.tx_ring_size as usize),
            rx_batch: Vec::with_capacity(cfg.rx_ring_size as usize),
            stats: XskStats::default(),
            rx,
            tx,
            device,
            _user: user,
            umem,
            _area: area,
        };
        // Hand every RX frame to the kernel once; from then on recv_batch recycles them.
        let frame_size = u64::from(cfg.frame_size);
        let mut fill = this.device.fill(rx_frames);
        let filled = fill.insert((0..rx_frames).map(|idx| u64::from(idx) * frame_size));
        fill.commit();
        drop(fill);
        for s in state.iter_mut().take(filled as usize) {
            *s = FrameState::Kernel;
        }
        // Frames the fill ring could not take (never, since rx_frames <= fill size) stay Free
        // but are not on the TX stack: record them as TX-able instead of leaking them.
        for idx in filled..rx_frames {
            this.free_tx.push(idx);
        }
        this.state = state;
        Ok(this)
    }

    /// Puts this socket in the program's XSKMAP at its queue index, so the program
    /// redirects that queue's matching frames here. Closing the socket removes it again.
    pub fn register(&self, program: &XdpProgram) -> Result<(), AfXdpError> {
        program.register_xsk(self.queue_id, self.device.as_raw_fd())
    }

    /// Zero-copy or copy, as the kernel bound it.
    pub fn mode(&self) -> XskMode {
        self.mode
    }

    /// The queue this socket is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// The socket's file descriptor, for poll/epoll readiness (readable: RX has frames).
    pub fn as_raw_fd(&self) -> libc::c_int {
        self.device.as_raw_fd()
    }

    /// Largest frame `send_with` can build.
    pub fn frame_capacity(&self) -> usize {
        self.frame_size as usize
    }

    fn frame_index(&self, addr: u64) -> Option<usize> {
        let idx = usize::try_from(addr / u64::from(self.frame_size)).ok()?;
        (idx < self.state.len()).then_some(idx)
    }

    /// Receives up to `max` frames, calling `f` with each Ethernet frame in place, then
    /// returns them all to the fill ring. Returns the number received.
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        self.recv_batch_with_tx(max, |frame, _tx| f(frame))
    }

    /// Like [`XskSocket::recv_batch`], but also lends `f` an [`XskTx`] so it can build
    /// frames to send (a reply, a forward) while the received frame is still in place:
    /// received frames and transmit frames are disjoint parts of the UMEM, so no copy is
    /// needed between them. At most the RX ring size is taken per call.
    pub fn recv_batch_with_tx(
        &mut self,
        max: usize,
        mut f: impl FnMut(&mut [u8], &mut XskTx<'_>),
    ) -> usize {
        let max = max.min(self.rx_batch.capacity());
        let frame_size = u64::from(self.frame_size);
        // 1. Take the descriptors off the RX ring (into a buffer sized at open), so that
        //    no ring borrow is alive while `f` sends.
        self.rx_batch.clear();
        {
            // max <= rx_batch capacity = RX ring size (a u32).
            let mut rx = self.rx.receive(max as u32);
            while let Some(desc) = rx.read() {
                self.rx_batch.push(desc);
            }
            rx.release();
        }
        // 2. Lend each frame in place. A descriptor that does not match our records is
        //    counted and never touched (its addr is poisoned so step 3 skips it).
        let mut received = 0usize;
        let mut lent = 0usize;
        for i in 0..self.rx_batch.len() {
            let desc = self.rx_batch[i];
            let idx = match self.frame_index(desc.addr) {
                Some(idx) if self.state[idx] == FrameState::Kernel => idx,
                _ => {
                    self.stats.bad_descriptors += 1;
                    self.rx_batch[i].addr = u64::MAX;
                    continue;
                }
            };
            self.state[idx] = FrameState::Lent;
            lent += 1;
            let offset = (desc.addr % frame_size) as usize;
            let len = desc.len as usize;
            if offset + len > self.frame_size as usize {
                self.stats.bad_descriptors += 1;
                continue;
            }
            // idx < frame_count (a u32) by frame_index.
            let Some(chunk) = self.umem.frame(xdpilone::BufIdx(idx as u32)) else {
                self.stats.bad_descriptors += 1;
                continue;
            };
            // SAFETY: the frame is Lent: the kernel wrote it and released it to us through
            // the RX ring (acquire ordering in `receive`) and gets it back only in step 3,
            // after `f` returns. offset + len <= frame_size was checked above, so the slice
            // stays inside this frame. No other slice of this frame exists: `XskTx` only
            // writes Free TX frames, and the slice does not outlive this iteration (`f` is
            // generic over the slice's lifetime). It is lent mutably so that the receiver
            // can transform the datagram where it lies (SRTP decryption): the kernel does
            // not read an RX frame, and the frame is overwritten by the next receive.
            let bytes = unsafe {
                core::slice::from_raw_parts_mut(chunk.addr.as_ptr().cast::<u8>().add(offset), len)
            };
            f(bytes, &mut XskTx { sock: self });
            received += 1;
        }
        // 3. Every lent frame goes back to the fill ring. The fill ring holds all RX
        //    frames, so it always has room for the ones we took; but a reservation is
        //    served from a cached view of the kernel's consumer index and may come back
        //    short, so reserve again (which refreshes that view) until all are back.
        let mut refilled = 0usize;
        let mut next = 0usize;
        let total = self.rx_batch.len();
        while refilled < lent {
            let want = u32::try_from(lent - refilled).unwrap_or(u32::MAX);
            let mut fill = self.device.fill(want);
            let room = fill.capacity() as usize;
            if room == 0 {
                // Cannot happen while the invariant holds; never spin on it.
                debug_assert!(false, "fill ring full with {} frames lent", lent - refilled);
                self.stats.bad_descriptors += (lent - refilled) as u64;
                break;
            }
            let (state, batch) = (&mut self.state, &self.rx_batch);
            // `take(room)` keeps the iterator from yielding a frame the ring has no slot
            // for (`insert` polls the iterator before checking the slot).
            let frames = core::iter::from_fn(|| {
                while next < total {
                    let desc = batch[next];
                    next += 1;
                    let idx = usize::try_from(desc.addr / frame_size).ok();
                    if let Some(s @ FrameState::Lent) = idx.and_then(|i| state.get_mut(i)) {
                        *s = FrameState::Kernel;
                        return Some(desc.addr - desc.addr % frame_size);
                    }
                }
                None
            })
            .take(room);
            refilled += fill.insert(frames) as usize;
            fill.commit();
        }
        debug_assert!(refilled >= received);
        self.stats.rx_frames += received as u64;
        if self.device.needs_wakeup() {
            self.device.wake();
        }
        received
    }

    /// A transmit handle outside a receive batch (ticks): the same [`XskTx::send_with`].
    pub fn tx_handle(&mut self) -> XskTx<'_> {
        XskTx { sock: self }
    }

    /// Builds one frame in a free UMEM frame: `build` gets up to `max_len` bytes (bounded by
    /// the frame size) and returns the frame length to send (0 to send nothing). Returns
    /// false when no TX frame is free (counted in `tx_no_frame`). The frame leaves on the
    /// next [`XskSocket::flush`].
    pub fn send_with(&mut self, max_len: usize, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.free_tx.is_empty() || self.pending_tx.len() == self.pending_tx.capacity() {
            self.flush();
        }
        if self.pending_tx.len() == self.pending_tx.capacity() {
            self.stats.tx_no_frame += 1;
            return false;
        }
        let Some(idx) = self.free_tx.pop() else {
            self.stats.tx_no_frame += 1;
            return false;
        };
        debug_assert_eq!(self.state[idx as usize], FrameState::Free);
        let len_cap = max_len.min(self.frame_size as usize);
        // The index came from our own free stack, always < frame_count.
        let Some(chunk) = self.umem.frame(xdpilone::BufIdx(idx)) else {
            self.stats.bad_descriptors += 1;
            return false;
        };
        // SAFETY: frame `idx` is Free: no descriptor for it is in any ring, so neither the
        // kernel nor another slice refers to it; the slice lives only during `build`.
        let buf =
            unsafe { core::slice::from_raw_parts_mut(chunk.addr.as_ptr().cast::<u8>(), len_cap) };
        let len = build(buf);
        debug_assert!(
            len <= len_cap,
            "send_with: build returned {len} > {len_cap}"
        );
        if len == 0 || len > len_cap {
            self.free_tx.push(idx);
            self.stats.tx_cancelled += 1;
            return len == 0;
        }
        self.state[idx as usize] = FrameState::Pending;
        self.pending_tx.push(XdpDesc {
            addr: chunk.offset,
            // len <= frame_size (u32) by the min above.
            len: len as u32,
            options: 0,
        });
        self.stats.tx_frames += 1;
        true
    }

    /// Reaps transmit completions (frames back to the free stack), moves pending frames to
    /// the TX ring and kicks the kernel if it asked to be woken. Call once per batch.
    pub fn flush(&mut self) {
        self.reap_completions();
        if !self.pending_tx.is_empty() {
            let pending = u32::try_from(self.pending_tx.len()).unwrap_or(u32::MAX);
            let mut writer = self.tx.transmit(pending);
            let queued = writer.insert(self.pending_tx.iter().copied()) as usize;
            writer.commit();
            drop(writer);
            for desc in &self.pending_tx[..queued] {
                if let Some(idx) = self.frame_index(desc.addr) {
                    self.state[idx] = FrameState::InTx;
                }
            }
            // Whatever did not fit stays pending, in order, for the next flush.
            self.pending_tx.drain(..queued);
        }
        if self.tx.needs_wakeup() || self.mode == XskMode::Copy && self.tx.pending() > 0 {
            // Copy mode transmits only from sendmsg; zero-copy drivers from their NAPI loop
            // unless they set need_wakeup.
            self.tx.wake();
        }
    }

    fn reap_completions(&mut self) {
        let frame_size = u64::from(self.frame_size);
        let mut done = self.device.complete(self.tx_ring_size);
        while let Some(addr) = done.read() {
            let idx = usize::try_from(addr / frame_size).unwrap_or(usize::MAX);
            match self.state.get(idx) {
                Some(FrameState::InTx) => {
                    self.state[idx] = FrameState::Free;
                    // idx < frame_count <= u32::MAX.
                    self.free_tx.push(idx as u32);
                }
                _ => self.stats.bad_descriptors += 1,
            }
        }
        done.release();
    }

    /// Blocks up to `timeout` (nanosecond precision, ppoll) until RX has frames. A shard
    /// sleeping until its next tick needs better than the millisecond of `poll`.
    pub fn wait_readable_for(&self, timeout: core::time::Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            // subsec_nanos < 1e9 always fits.
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd, count 1; a valid timespec; a null signal mask means
        // the thread's mask is left as it is (plain poll semantics).
        let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, core::ptr::null()) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// Blocks up to `timeout_ms` until RX has frames (for an idle loop; 0 polls).
    pub fn wait_readable(&self, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// TX frames not yet completed by the kernel (pending + in the TX ring).
    pub fn tx_in_flight(&self) -> usize {
        self.state
            .iter()
            .filter(|s| matches!(s, FrameState::Pending | FrameState::InTx))
            .count()
    }

    /// Our counters plus the kernel's XDP_STATISTICS (a syscall: call on a stats interval).
    pub fn stats(&self) -> XskStats {
        let mut stats = self.stats;
        if let Ok(k) = self.device.statistics_v2() {
            stats.kernel_rx_dropped = k.rx_dropped;
            stats.kernel_rx_ring_full = k.rx_ring_full;
            stats.kernel_fill_ring_empty = k.rx_fill_ring_empty_descs;
            stats.kernel_tx_invalid = k.tx_invalid_descs;
        }
        stats
    }

    /// Frames in each ownership state: (with the kernel for RX, free, pending, in TX).
    /// Their sum is always `frame_count`; tests use it to prove no frame leaks.
    pub fn frame_census(&self) -> (usize, usize, usize, usize) {
        let mut census = (0, 0, 0, 0);
        for s in self.state.iter() {
            match s {
                FrameState::Kernel | FrameState::Lent => census.0 += 1,
                FrameState::Free => census.1 += 1,
                FrameState::Pending => census.2 += 1,
                FrameState::InTx => census.3 += 1,
            }
        }
        census
    }
}

/// The transmit side of an [`XskSocket`], lent by [`XskSocket::recv_batch_with_tx`] while
/// a received frame is in place (or taken with [`XskSocket::tx_handle`]). It can only
/// write free TX frames, never the RX frames being read.
pub struct XskTx<'a> {
    sock: &'a mut XskSocket,
}

impl core::fmt::Debug for XskTx<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XskTx")
            .field("queue_id", &self.sock.queue_id)
            .finish_non_exhaustive()
    }
}

impl XskTx<'_> {
    /// [`XskSocket::send_with`]: builds one frame in a free UMEM frame.
    pub fn send_with(&mut self, max_len: usize, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        self.sock.send_with(max_len, build)
    }

    /// Largest frame `send_with` can build.
    pub fn frame_capacity(&self) -> usize {
        self.sock.frame_capacity()
    }
}

fn read_mode(fd: libc::c_int) -> Result<XskMode, AfXdpError> {
    let mut flags: u32 = 0;
    let mut len = core::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: XDP_OPTIONS writes a `struct xdp_options { __u32 flags; }` into a buffer of
    // `len` bytes; `flags` is exactly that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(AfXdpError::Os {
            op: "getsockopt(XDP_OPTIONS)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(if flags & XDP_OPTIONS_ZEROCOPY != 0 {
        XskMode::ZeroCopy
    } else {
        XskMode::Copy
    })
}
