//! The shard's only contact with I/O: datagrams handed in where they lie, and a sink
//! that lends the buffer an outgoing datagram is built in.
//!
//! Backends (io_uring, sockets, AF_XDP, memory; crate `earshot-engine`) implement
//! [`TxSink`] and call a [`PacketHandler`] for each datagram of a receive batch. The
//! simulation harness and the benchmarks implement them over plain vectors. Nothing
//! here knows what a socket is.

use std::net::SocketAddr;

/// The largest UDP payload a leg sends or accepts: an Ethernet MTU of 1500 minus IPv6
/// and UDP headers. Larger datagrams are counted as `oversize` and dropped.
pub const MAX_UDP_PAYLOAD: usize = 1452;

/// A received UDP datagram, borrowed mutably from the backend's receive buffer: the
/// shard decrypts SRTP where the datagram lies. The backend must not read the buffer
/// back as received data once the shard had it.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The local UDP port it arrived on (the port table's index).
    pub local_port: u16,
    /// The sender.
    pub remote: SocketAddr,
    /// UDP payload.
    pub payload: &'a mut [u8],
}

/// Where a shard builds packets to send.
pub trait TxSink {
    /// Lends a buffer of at least [`MAX_UDP_PAYLOAD`] bytes for a datagram from local
    /// `src_port` to `dst`; `build` writes the UDP payload at the start of it and returns
    /// its length (0 cancels the send). Returns false when the backend has no free
    /// transmit buffer; the caller counts that as a `tx_full` drop.
    fn send_with(
        &mut self,
        src_port: u16,
        dst: SocketAddr,
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool;
}

/// The shard side of a receive batch.
pub trait PacketHandler {
    /// One datagram, in place, with the sink for anything to send in response.
    fn handle_datagram(&mut self, dgram: Datagram<'_>, tx: &mut dyn TxSink);
}
