//! Packet handlers for driving a backend directly: an echo that records what it was
//! handed, for conformance and I/O tests.

use std::net::SocketAddr;

use earshot_core::io::{Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};

/// One datagram as a handler was handed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handed {
    /// The local port it arrived on.
    pub local_port: u16,
    /// Its sender.
    pub remote: SocketAddr,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Records every datagram and answers each from the port it arrived on, to its sender,
/// through the sink lent with it: `prefix` then the payload (cut to fit
/// [`MAX_UDP_PAYLOAD`]). Counts the sends the sink refused and checks the size of every
/// buffer it was lent.
#[derive(Debug, Default)]
pub struct Echo {
    /// Prepended to every answer (empty: an exact echo).
    pub prefix: Vec<u8>,
    /// Every datagram handed over, in order.
    pub handed: Vec<Handed>,
    /// Answers the sink refused (`send_with` returned false).
    pub refused: usize,
    /// The smallest buffer a sink lent (`None` before the first).
    pub smallest_buffer: Option<usize>,
}

impl Echo {
    /// An echo that answers `prefix` + payload.
    pub fn with_prefix(prefix: &[u8]) -> Echo {
        Echo {
            prefix: prefix.to_vec(),
            ..Echo::default()
        }
    }

    /// Local ports of the datagrams handed over, in order.
    pub fn ports(&self) -> Vec<u16> {
        self.handed.iter().map(|h| h.local_port).collect()
    }
}

impl PacketHandler for Echo {
    fn handle_datagram(&mut self, d: Datagram<'_>, tx: &mut dyn TxSink) {
        self.handed.push(Handed {
            local_port: d.local_port,
            remote: d.remote,
            payload: d.payload.to_vec(),
        });
        let (prefix, payload) = (&self.prefix, d.payload);
        let mut lent = usize::MAX;
        let ok = tx.send_with(d.local_port, d.remote, &mut |buf| {
            lent = buf.len();
            let n = (prefix.len() + payload.len())
                .min(buf.len())
                .min(MAX_UDP_PAYLOAD);
            let p = prefix.len().min(n);
            buf[..p].copy_from_slice(&prefix[..p]);
            buf[p..n].copy_from_slice(&payload[..n - p]);
            n
        });
        if lent != usize::MAX {
            self.smallest_buffer = Some(self.smallest_buffer.map_or(lent, |s| s.min(lent)));
        }
        if !ok {
            self.refused += 1;
        }
    }
}
