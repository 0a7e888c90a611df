//! Batched UDP on Linux: recvmmsg/sendmmsg over arrays sized once (IPv4 only).
//!
//! The reflector and the generator use these so that the baseline is the kernel's
//! batched path, the same one the socket backend uses: the cost per packet is then
//! almost all in the kernel, which is the ceiling SPEC section 6 measures against.
#![allow(unsafe_code)] // recvmmsg/sendmmsg: the OS I/O edge of the bench.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per batch.
pub const BATCH: usize = 64;
const BUF_LEN: usize = 2048;

/// A batch of datagram buffers with their addresses and headers, for one socket.
pub struct Mmsg {
    bufs: Vec<[u8; BUF_LEN]>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
}

impl std::fmt::Debug for Mmsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmsg")
            .field("batch", &self.hdrs.len())
            .finish()
    }
}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(s.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(s.sin_port),
    )
}

impl Mmsg {
    /// A batch of [`BATCH`] buffers.
    pub fn new() -> Mmsg {
        let zero_addr = to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let mut m = Mmsg {
            bufs: vec![[0u8; BUF_LEN]; BATCH],
            addrs: vec![zero_addr; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            lens: vec![0; BATCH],
        };
        // The vectors are never resized after this, so the pointers stay valid for the
        // life of `m` (moving `m` moves the Vec headers, not their heap storage).
        for i in 0..BATCH {
            m.iovs.push(libc::iovec {
                iov_base: m.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            });
        }
        for i in 0..BATCH {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut m.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = &mut m.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            m.hdrs.push(h);
        }
        m
    }

    /// Buffer `i` (write a datagram to send, or read one received).
    pub fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i][..]
    }

    /// Received datagram `i`: its source and payload.
    pub fn received(&self, i: usize) -> (SocketAddrV4, &[u8]) {
        (from_sockaddr(&self.addrs[i]), &self.bufs[i][..self.lens[i]])
    }

    /// Sets datagram `i` to send `len` bytes of its buffer to `dst`.
    pub fn set_send(&mut self, i: usize, dst: SocketAddrV4, len: usize) {
        self.addrs[i] = to_sockaddr(dst);
        self.lens[i] = len.min(BUF_LEN);
    }

    /// Receives up to [`BATCH`] datagrams: blocks for the first (up to the socket's
    /// read timeout), then takes what is already queued. Returns how many (0 on timeout).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i].iov_len = BUF_LEN;
            self.hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: every header points at a live iovec, buffer and sockaddr owned by
        // `self`, with lengths that match their allocations; the kernel writes at most
        // those lengths.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(n)
    }

    /// Sends datagrams `0..n` as set by [`Mmsg::set_send`]. Returns how many the kernel
    /// took (a full socket buffer drops the rest, as a real sender would).
    pub fn send(&mut self, sock: &UdpSocket, n: usize) -> io::Result<usize> {
        let n = n.min(BATCH);
        for i in 0..n {
            self.iovs[i].iov_len = self.lens[i];
            self.hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: headers `done..n` point at live iovecs, buffers and sockaddrs
            // owned by `self`; the kernel only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as u32,
                    0,
                )
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(done),
                    // Loopback answers a closed port with ECONNREFUSED on the next send.
                    io::ErrorKind::ConnectionRefused => Ok(done),
                    _ => Err(e),
                };
            }
            done += r as usize;
        }
        Ok(done)
    }
}

impl Default for Mmsg {
    fn default() -> Self {
        Mmsg::new()
    }
}

/// A UDP socket on `addr` with 4 MiB kernel buffers and a 50 ms read timeout (so that
/// loops can notice a stop flag).
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr)?;
    let r = socket2::SockRef::from(&sock);
    r.set_recv_buffer_size(4 << 20)?;
    r.set_send_buffer_size(4 << 20)?;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(50)))?;
    Ok(sock)
}
