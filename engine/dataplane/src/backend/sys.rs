//! System-call helpers shared by the socket and io_uring backends.
//!
//! Everything here is control-path or thin syscall plumbing: socket creation and
//! options, epoll, recvmmsg/sendmmsg, anonymous memory for buffers the kernel writes
//! into, and `sockaddr` encoding. The encoding is done on plain bytes so that the
//! backends never need to cast between `sockaddr_*` types.
//!
//! This is one of the few modules allowed to use `unsafe`: each block says why it is
//! sound, each `unsafe fn` states what its caller must uphold.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use earshot_engine_api::IpFamily;
use socket2::{Domain, Protocol, Socket, Type};

/// Bytes reserved for a peer address: a `sockaddr_in6`, the larger of the two families.
pub(crate) const SOCKADDR_BYTES: usize = size_of::<libc::sockaddr_in6>();

/// Storage for one `sockaddr_in` / `sockaddr_in6` as the kernel reads or writes it.
/// Aligned like the C structs so a pointer to it is a valid `msg_name`.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub(crate) struct SockAddrBytes(pub(crate) [u8; SOCKADDR_BYTES]);

impl SockAddrBytes {
    /// All zeroes (family `AF_UNSPEC`).
    pub(crate) const ZERO: SockAddrBytes = SockAddrBytes([0; SOCKADDR_BYTES]);
}

/// Writes `addr` as a C socket address into `out`; returns the length to pass as
/// `msg_namelen`. The layout is fixed by the Linux ABI: family in native byte order,
/// port in network order, then the address (and for IPv6 flow info and scope id, both
/// carried as std carries them, without byte swapping).
pub(crate) fn encode_sockaddr(addr: &SocketAddr, out: &mut SockAddrBytes) -> libc::socklen_t {
    let b = &mut out.0;
    match addr {
        SocketAddr::V4(a) => {
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.ip().octets());
            b[8..16].fill(0);
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.flowinfo().to_ne_bytes());
            b[8..24].copy_from_slice(&a.ip().octets());
            b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a C socket address written by the kernel. `None` for a family other than
/// IPv4/IPv6 or a truncated name (counted by the caller as a bad source).
pub(crate) fn decode_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    if family == libc::AF_INET as u16 && b.len() >= size_of::<libc::sockaddr_in>() {
        let port = u16::from_be_bytes([b[2], b[3]]);
        let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
        Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    } else if family == libc::AF_INET6 as u16 && b.len() >= size_of::<libc::sockaddr_in6>() {
        let port = u16::from_be_bytes([b[2], b[3]]);
        let flowinfo = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&b[8..24]);
        let scope_id = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(octets),
            port,
            flowinfo,
            scope_id,
        )))
    } else {
        None
    }
}

/// Index of `(port, family)` in the dense per-backend port tables: a shard's ports are
/// looked up once per packet, so a flat array beats hashing.
pub(crate) const fn port_index(port: u16, family: IpFamily) -> usize {
    (port as usize) * 2
        + match family {
            IpFamily::V4 => 0,
            IpFamily::V6 => 1,
        }
}

/// Entries in a dense port table: every port of both families.
pub(crate) const PORT_TABLE_LEN: usize = 2 * (u16::MAX as usize + 1);

/// The local address a port of `family` binds to, or the error `open_port` returns when
/// that family is not configured.
pub(crate) fn local_addr(
    bind_v4: Option<Ipv4Addr>,
    bind_v6: Option<Ipv6Addr>,
    port: u16,
    family: IpFamily,
) -> io::Result<SocketAddr> {
    if port == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "port 0 is not a leg port (the shard allocates concrete ports)",
        ));
    }
    let ip = match family {
        IpFamily::V4 => bind_v4.map(IpAddr::V4),
        IpFamily::V6 => bind_v6.map(IpAddr::V6),
    };
    ip.map(|ip| SocketAddr::new(ip, port)).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("no local {family:?} address configured (bind_v4 / bind_v6)"),
        )
    })
}

/// Opens a non-blocking, close-on-exec UDP socket bound to `addr`. IPv6 sockets are
/// IPV6_V6ONLY so a v6 leg never receives v4-mapped traffic meant for a v4 leg on the
/// same port. Buffer sizes of 0 keep the kernel default; larger sizes than
/// `net.core.{r,w}mem_max` are forced where the process may (CAP_NET_ADMIN), because
/// thousands of legs bursting into one shard overflow default buffers.
pub(crate) fn open_udp_socket(
    addr: SocketAddr,
    rcvbuf_bytes: usize,
    sndbuf_bytes: usize,
    freebind: bool,
) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    if freebind {
        // A virtual address taken over from a failed node may reach this host's
        // interface a moment after the leg is re-created (docs/cluster.md).
        let level = if addr.is_ipv6() {
            libc::SOL_IPV6
        } else {
            libc::SOL_IP
        };
        let option = if addr.is_ipv6() {
            libc::IPV6_FREEBIND
        } else {
            libc::IP_FREEBIND
        };
        set_option(&socket, level, option, 1)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if rcvbuf_bytes > 0 {
        socket.set_recv_buffer_size(rcvbuf_bytes)?;
        // The kernel doubles what it is given and reports the doubled value.
        if socket.recv_buffer_size()? < rcvbuf_bytes {
            // Best effort: without CAP_NET_ADMIN the capped size stays.
            let _ = set_int_option(&socket, libc::SO_RCVBUFFORCE, rcvbuf_bytes);
        }
    }
    if sndbuf_bytes > 0 {
        socket.set_send_buffer_size(sndbuf_bytes)?;
        if socket.send_buffer_size()? < sndbuf_bytes {
            let _ = set_int_option(&socket, libc::SO_SNDBUFFORCE, sndbuf_bytes);
        }
    }
    socket.bind(&addr.into())?;
    Ok(OwnedFd::from(socket))
}

fn set_int_option(socket: &Socket, option: libc::c_int, value: usize) -> io::Result<()> {
    set_option(socket, libc::SOL_SOCKET, option, value)
}

fn set_option(
    socket: &Socket,
    level: libc::c_int,
    option: libc::c_int,
    value: usize,
) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: `socket` is an open fd for the duration of the call; the option value is a
    // c_int on our stack and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An epoll instance in level-triggered mode: a socket stays ready until drained, so a
/// receive batch that stops at its budget loses nothing.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
    /// `epoll_pwait2` (Linux 5.11) takes a nanosecond timeout; older kernels fall back
    /// to `epoll_wait`'s milliseconds. Discovered on the first wait.
    pwait2: bool,
}

impl Epoll {
    /// A new, empty epoll set.
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall with no pointer arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd, pwait2: true })
    }

    /// Watches `fd` for input; `data` comes back in its events.
    pub(crate) fn add(&self, fd: RawFd, data: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: data,
        };
        // SAFETY: `event` is a valid epoll_event on our stack; both fds are open.
        let rc =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Stops watching `fd`.
    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Fills `events` with ready sockets, sleeping up to `timeout_ns` (0 polls).
    /// Returns how many. An interrupted wait returns 0: the caller's loop copes with
    /// early returns.
    ///
    /// Precision: `epoll_pwait2` sleeps on an hrtimer, so the wake-up is late by at most
    /// the thread's timer slack (50 us by default; `prctl(PR_SET_TIMERSLACK)` lowers it).
    /// The `epoll_wait` fallback rounds the timeout DOWN to whole milliseconds so it is
    /// never late; the shard spins through the remainder.
    pub(crate) fn wait(
        &mut self,
        events: &mut [libc::epoll_event],
        timeout_ns: u64,
    ) -> io::Result<usize> {
        let max_events = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        let rc = if self.pwait2 && timeout_ns > 0 {
            let ts = libc::timespec {
                tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `events` is a writable array of `max_events` entries, `ts` lives on
            // our stack for the call, and a null sigmask means "do not change the mask"
            // (the size argument is then ignored).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    max_events,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.pwait2 = false;
                return self.wait(events, timeout_ns);
            }
            rc as libc::c_int
        } else {
            let timeout_ms = libc::c_int::try_from(timeout_ns / 1_000_000).unwrap_or(i32::MAX);
            // SAFETY: `events` is a writable array of `max_events` entries.
            unsafe {
                libc::epoll_wait(
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    max_events,
                    timeout_ms,
                )
            }
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(err)
        }
    }
}

/// An empty epoll event, for preallocating event arrays.
pub(crate) const EMPTY_EPOLL_EVENT: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };

/// A `msghdr` with no name, data or control yet.
pub(crate) const fn empty_msghdr() -> libc::msghdr {
    libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: std::ptr::null_mut(),
        msg_iovlen: 0,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    }
}

/// `recvmmsg(fd, msgs, MSG_DONTWAIT)`: the number of datagrams received, 0 when none is
/// waiting (EAGAIN).
///
/// # Safety
/// Every `msg_name`, `msg_iov` and the iovecs' buffers in `msgs` must point to memory
/// that is valid for writes of the lengths they declare, and not otherwise borrowed,
/// for the duration of the call.
pub(crate) unsafe fn recvmmsg(fd: RawFd, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    let vlen = libc::c_uint::try_from(msgs.len()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: the array is valid for `vlen` entries; the pointers inside are the
    // caller's obligation (see `# Safety`); a null timeout means none.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            vlen,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc >= 0 {
        return Ok(rc as usize);
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
        _ => Err(err),
    }
}

/// `sendmmsg(fd, msgs, MSG_DONTWAIT)`: how many of the datagrams the kernel took,
/// starting with the first. An error means the first was not sent.
///
/// # Safety
/// Every `msg_name`, `msg_iov` and the iovecs' buffers in `msgs` must point to memory
/// valid for reads of the lengths they declare for the duration of the call.
pub(crate) unsafe fn sendmmsg(fd: RawFd, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    let vlen = libc::c_uint::try_from(msgs.len()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: the array is valid for `vlen` entries; the pointers inside are the
    // caller's obligation (see `# Safety`).
    let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), vlen, libc::MSG_DONTWAIT) };
    if rc >= 0 {
        Ok(rc as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Page-aligned anonymous memory that the kernel may read or write while we hold it
/// (io_uring's provided-buffer ring and its buffers). It is only ever accessed through
/// raw pointers or short-lived slices of parts the kernel does not own at that moment,
/// never as one long-lived Rust slice.
#[derive(Debug)]
pub(crate) struct MmapRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; moving the owner to another
// thread moves the only handle to it.
unsafe impl Send for MmapRegion {}

impl MmapRegion {
    /// Maps `len` bytes of zeroed, private, page-aligned memory.
    pub(crate) fn new(len: usize) -> io::Result<MmapRegion> {
        assert!(len > 0, "empty mapping");
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(MmapRegion { ptr, len })
    }

    /// Start of the region.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `new`, and no
        // reference into it outlives `self` (all access is through `&self` borrows).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The page size, for rounding up kernel-shared memory.
/// Sets the calling thread's timer slack: how late the kernel may fire its timeouts to
/// batch wake-ups (50 us by default). Shards ask for 1 us so that ticks wake on time.
pub fn set_timer_slack_ns(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long by value and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPU the calling thread runs on, or -1 when the kernel cannot say.
pub fn current_cpu() -> i64 {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    i64::from(unsafe { libc::sched_getcpu() })
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// Counters a backend keeps on its own I/O (the shard counts media-level drops).
/// Plain integers owned by the backend; read with `counters()` between batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Datagrams handed to the packet handler.
    pub rx_datagrams: u64,
    /// Payload bytes handed to the packet handler.
    pub rx_bytes: u64,
    /// Datagrams larger than [`super::MAX_UDP_PAYLOAD`], dropped.
    pub rx_oversize: u64,
    /// Datagrams whose source address was not IPv4/IPv6, dropped.
    pub rx_bad_source: u64,
    /// Receive syscalls or completions that failed (other than "nothing to read").
    pub rx_errors: u64,
    /// io_uring: a multishot receive ended because every provided buffer was in use.
    pub rx_no_buffers: u64,
    /// io_uring: multishot receives re-armed after they ended.
    pub rx_rearms: u64,
    /// io_uring: completions for a port closed since (their buffers are recycled).
    pub rx_stale: u64,
    /// Datagrams the kernel accepted for sending.
    pub tx_datagrams: u64,
    /// Payload bytes the kernel accepted for sending.
    pub tx_bytes: u64,
    /// Datagrams dropped because the socket's send buffer was full (EAGAIN): the shard
    /// never blocks on a send.
    pub tx_would_block: u64,
    /// Datagrams the kernel refused for another reason (unreachable, EMSGSIZE, ...).
    pub tx_errors: u64,
    /// `send_with` for a source port (of the destination's family) that is not open.
    pub tx_no_port: u64,
    /// `send_with` found no free transmit buffer (it returned false).
    pub tx_full: u64,
    /// Socket backend: a full send batch was flushed from inside `send_with`.
    pub tx_implicit_flushes: u64,
}

impl IoCounters {
    /// The counters as (name, value) pairs, for the engine's stats.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        let c = self;
        vec![
            ("rx_datagrams", c.rx_datagrams),
            ("rx_bytes", c.rx_bytes),
            ("rx_oversize", c.rx_oversize),
            ("rx_bad_source", c.rx_bad_source),
            ("rx_errors", c.rx_errors),
            ("rx_no_buffers", c.rx_no_buffers),
            ("rx_rearms", c.rx_rearms),
            ("rx_stale", c.rx_stale),
            ("tx_datagrams", c.tx_datagrams),
            ("tx_bytes", c.tx_bytes),
            ("tx_would_block", c.tx_would_block),
            ("tx_errors", c.tx_errors),
            ("tx_no_port", c.tx_no_port),
            ("tx_full", c.tx_full),
            ("tx_implicit_flushes", c.tx_implicit_flushes),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips_for_both_families() {
        let addrs: [SocketAddr; 3] = [
            "192.0.2.7:40000".parse().unwrap(),
            "[2001:db8::1]:5004".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 0x1234, 7)),
        ];
        for addr in addrs {
            let mut bytes = SockAddrBytes::ZERO;
            let len = encode_sockaddr(&addr, &mut bytes) as usize;
            assert_eq!(decode_sockaddr(&bytes.0[..len]), Some(addr));
        }
    }

    #[test]
    fn decode_rejects_unknown_family_and_truncation() {
        let mut bytes = SockAddrBytes::ZERO;
        let len = encode_sockaddr(&"[::1]:9".parse().unwrap(), &mut bytes) as usize;
        assert_eq!(decode_sockaddr(&bytes.0[..len - 1]), None);
        assert_eq!(decode_sockaddr(&[]), None);
        let unix = (libc::AF_UNIX as u16).to_ne_bytes();
        assert_eq!(decode_sockaddr(&[unix[0], unix[1], 0, 0, 0, 0, 0, 0]), None);
    }
}
