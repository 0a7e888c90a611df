//! # earshot-afxdp: the XDP program loader and AF_XDP socket primitives
//!
//! Role: everything the AF_XDP backend of the data plane needs below its own loop.
//! [`XdpProgram`] loads the embedded `xdp-programs/earshot_xdp.o`, fills its port-range and
//! address maps, attaches it (native, else generic) through a bpf_link owned by this
//! process, and reads its per-CPU verdict counters. [`XskSocket`] is one AF_XDP socket
//! per (interface, queue) with its own UMEM, driven in batches: [`XskSocket::recv_batch`]
//! lends each received frame in place, [`XskSocket::send_with`] builds a frame directly
//! in a UMEM frame, [`XskSocket::flush`] moves them to the TX ring and reaps completions.
//! [`frame`] parses and builds Ethernet/VLAN/IPv4/IPv6/UDP headers with full checksums;
//! [`neigh`] turns a destination into next-hop MACs from the kernel's tables.
//!
//! What it deliberately does not do: no RTP, no sessions, no policy about which ports to
//! steer (the caller passes them), no threads except the neighbour refresher, no
//! allocation on the packet path (UMEM, frame bookkeeping and queues are sized at open),
//! no pinning in bpffs (so nothing outlives the process).
//!
//! Contract, as the engine drives it per shard:
//! 1. At start: `XdpProgram::attach(ifname, &filter, AttachMode::Auto)` once per interface;
//!    `XskSocket::open(ifname, queue, &cfg)` and `socket.register(&program)` per queue;
//!    `NeighborTable::start(..)` once, a `NeighborReader` per shard.
//! 2. Each iteration: `recv_batch_with_tx(max, |frame, tx| ...)` -- parse with
//!    `frame::parse_udp`, hand the payload to the media core together with `tx` (an
//!    [`XskTx`] that builds replies in free TX frames while the received frame is still in
//!    place); frames go back to the fill ring when the batch ends.
//! 3. For each output packet: `send_with(max_len, |buf| ...)` -- write the payload at
//!    `headers.header_len()`, then `UdpHeaders::emit`; `false` means no free frame (counted).
//! 4. End of iteration: `flush()`. When idle: `wait_readable(timeout_ms)`.
//! 5. Drop the sockets and the program to detach; a crash detaches too (bpf_link).
//!
//! Linux only: elsewhere only [`frame`] and [`AfXdpError`] exist.

mod error;
pub mod frame;

pub use error::AfXdpError;

#[cfg(target_os = "linux")]
pub mod neigh;
#[cfg(target_os = "linux")]
mod program;
#[cfg(target_os = "linux")]
mod xsk;

#[cfg(target_os = "linux")]
pub use neigh::{NeighborReader, NeighborTable, NextHop};
#[cfg(target_os = "linux")]
pub use program::{
    AttachMode, AttachedMode, MAX_ADDRS, MAX_PORT_RANGES, XdpCounters, XdpFilter, XdpProgram,
};
#[cfg(target_os = "linux")]
pub use xsk::{BindMode, XskConfig, XskMode, XskSocket, XskStats, XskTx};
