//! A leg's periodic RTCP report (RFC 3550 section 6.4): a sender or receiver report with
//! one reception report block built from the statistics of [`crate::seq`], followed by an
//! SDES CNAME chunk, emitted as one compound packet.
//!
//! The shard decides when a leg reports and what it knows (packets sent, the last SR it
//! received); this module turns those facts into bytes. No clock: durations come in as
//! nanoseconds.

use earshot_types::Ssrc;

use crate::Result;
use crate::rtcp::{
    self, ReceiverReport, ReportBlock, ReportBlocks, RtcpRepr, SdesChunk, SdesChunks, SdesItem,
    SdesItemType, SenderInfo, SenderReport,
};
use crate::seq::{JitterEstimator, SeqTracker};

/// What a leg knows about the stream it receives, for its report block.
#[derive(Debug)]
pub struct Reception<'a> {
    /// The source being reported on.
    pub source: Ssrc,
    /// Its sequence statistics (the interval loss is consumed by the report).
    pub seq: &'a mut SeqTracker,
    /// Its interarrival jitter.
    pub jitter: &'a JitterEstimator,
    /// Middle 32 bits of the NTP time of the last SR from it, and nanoseconds since
    /// that SR arrived.
    pub last_sr: Option<(u32, u64)>,
}

impl Reception<'_> {
    /// The reception report block (RFC 3550 A.3 for the loss fields, A.8 for jitter,
    /// 6.4.1 for LSR and DLSR in 1/65536 s).
    pub fn block(&mut self) -> ReportBlock {
        let loss = self.seq.poll_interval_loss();
        let (lsr, dlsr) = match self.last_sr {
            Some((mid, since_ns)) => (mid, ((u128::from(since_ns) << 16) / 1_000_000_000) as u32),
            None => (0, 0),
        };
        ReportBlock {
            ssrc: self.source,
            fraction_lost: loss.fraction_lost,
            cumulative_lost: self.seq.cumulative_lost().clamp(
                i64::from(ReportBlock::CUMULATIVE_LOST_MIN),
                i64::from(ReportBlock::CUMULATIVE_LOST_MAX),
            ) as i32,
            ext_highest_seq: self.seq.extended_max(),
            jitter: self.jitter.jitter(),
            lsr,
            dlsr,
        }
    }
}

/// Emits the compound report of a leg whose stream has SSRC `ssrc` into `buffer`: an SR
/// when it has sent (`sender`), else an RR; one block when it has received
/// (`reception`); then SDES with `cname`. Returns the length.
pub fn emit_report(
    ssrc: Ssrc,
    sender: Option<SenderInfo>,
    reception: Option<&mut Reception<'_>>,
    cname: &[u8],
    buffer: &mut [u8],
) -> Result<usize> {
    let block = reception.map(|r| r.block());
    let blocks = ReportBlocks::from_slice(block.as_slice())?;
    let report = match sender {
        Some(sender_info) => RtcpRepr::SenderReport(SenderReport {
            ssrc,
            sender_info,
            reports: blocks,
            profile_extension: &[],
        }),
        None => RtcpRepr::ReceiverReport(ReceiverReport {
            ssrc,
            reports: blocks,
            profile_extension: &[],
        }),
    };
    let items = [SdesItem {
        kind: SdesItemType::Cname,
        value: cname,
    }];
    let chunks = [SdesChunk {
        ssrc,
        items: rtcp::SdesItems::from_slice(&items),
    }];
    let sdes = SdesChunks::from_slice(&chunks)?;
    rtcp::emit_compound(&[report, RtcpRepr::SourceDescription(sdes)], buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use earshot_types::SeqNo;

    #[test]
    fn a_receiver_that_sent_nothing_reports_an_rr_with_its_block_and_cname() {
        let mut seq = SeqTracker::new();
        for s in [10u16, 11, 13] {
            seq.handle_seq(SeqNo(s));
        }
        let jitter = JitterEstimator::new();
        let mut reception = Reception {
            source: Ssrc(7),
            seq: &mut seq,
            jitter: &jitter,
            last_sr: Some((0x1234_5678, 500_000_000)),
        };
        let mut buf = [0u8; 256];
        let n = emit_report(Ssrc(99), None, Some(&mut reception), b"earshot", &mut buf).unwrap();
        let packets: Vec<_> = rtcp::packets(&buf[..n]).map(|p| p.unwrap()).collect();
        assert_eq!(packets.len(), 2, "an RR and an SDES");
        let Ok(RtcpRepr::ReceiverReport(rr)) = RtcpRepr::parse(&packets[0]) else {
            panic!("not an RR");
        };
        assert!(matches!(
            RtcpRepr::parse(&packets[1]),
            Ok(RtcpRepr::SourceDescription(_))
        ));
        let block = rr.reports.iter().next().unwrap();
        assert_eq!(
            (block.ssrc, block.ext_highest_seq, block.lsr),
            (Ssrc(7), 13, 0x1234_5678)
        );
        assert_eq!(block.dlsr, 32_768, "half a second in 1/65536 s");
        assert_eq!(block.cumulative_lost, 1);
    }
}
