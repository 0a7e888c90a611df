//! Checks on an output leg's RTP stream (SPEC section 5): one SSRC, continuous sequence
//! numbers, timestamps that move forward with elapsed time, markers at switches.

use earshot_media::time::{Duration, Instant};

use super::listener::Received;

/// Limits for [`check_stream`].
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Samples per frame.
    pub frame_samples: u32,
    /// How far (in samples) a packet's timestamp may stray from the elapsed send time
    /// beyond one frame: the forwarded sources' network jitter.
    pub ts_slack_samples: i64,
    /// Allow sequence gaps (a forwarded source's own losses mirrored).
    pub allow_seq_gaps: bool,
}

/// Checks the packets one listener received (in arrival order, which must be send
/// order: use downlinks that cannot reorder) for one SSRC, sequence +1 per packet
/// (or a forward gap if allowed), audio timestamps strictly increasing and within
/// a frame plus slack of the time elapsed since the first packet, and the marker set
/// on the first packet after each instant in `switches`.
pub fn check_stream(
    packets: &[Received],
    audio_pt: u8,
    limits: StreamLimits,
    switches: &[Instant],
) -> Result<(), String> {
    let Some(first) = packets.first() else {
        return Ok(());
    };
    let mut prev: Option<&Received> = None;
    let mut prev_audio: Option<&Received> = None;
    let origin = packets
        .iter()
        .find(|p| p.pt == audio_pt)
        .map(|p| (p.ts, p.sent_at));
    for p in packets {
        if p.ssrc != first.ssrc {
            return Err(format!(
                "SSRC changed from {:#x} to {:#x} at {:?}",
                first.ssrc, p.ssrc, p.sent_at
            ));
        }
        if let Some(q) = prev {
            let d = p.seq.wrapping_sub(q.seq) as i16;
            let ok = if limits.allow_seq_gaps {
                d >= 1
            } else {
                d == 1
            };
            if !ok {
                return Err(format!(
                    "seq {} follows {} at {:?}",
                    p.seq, q.seq, p.sent_at
                ));
            }
        }
        prev = Some(p);
        if p.pt != audio_pt {
            continue;
        }
        if let Some(q) = prev_audio {
            let d = p.ts.wrapping_sub(q.ts) as i32;
            if d <= 0 {
                return Err(format!(
                    "ts {} follows {} at {:?}: not forward",
                    p.ts, q.ts, p.sent_at
                ));
            }
        }
        prev_audio = Some(p);
        if let Some((ts0, t0)) = origin {
            let elapsed =
                (p.sent_at.saturating_since(t0).as_nanos() as u128 * 8_000 / 1_000_000_000) as i64;
            let off = i64::from(p.ts.wrapping_sub(ts0) as i32) - elapsed;
            if off.abs() > i64::from(limits.frame_samples) + limits.ts_slack_samples {
                return Err(format!(
                    "ts is {off} samples off elapsed time at {:?} (limit {} + {})",
                    p.sent_at, limits.frame_samples, limits.ts_slack_samples
                ));
            }
        }
    }
    for &sw in switches {
        // A plan is set after everything due at its instant ran: packets sent at `sw`
        // itself predate the switch.
        if let Some(p) = packets.iter().find(|p| p.sent_at > sw && p.pt == audio_pt)
            && !p.marker
        {
            return Err(format!(
                "no marker on the first packet after the switch at {sw:?} (seq {})",
                p.seq
            ));
        }
    }
    Ok(())
}

/// The longest stretch of `[from, to)` in which no audio packet was sent: a silent gap
/// in the stream.
pub fn longest_send_gap(
    packets: &[Received],
    audio_pt: u8,
    from: Instant,
    to: Instant,
) -> Duration {
    let mut last = from;
    let mut worst = Duration::ZERO;
    for p in packets
        .iter()
        .filter(|p| p.pt == audio_pt && p.sent_at >= from && p.sent_at < to)
    {
        worst = worst.max(p.sent_at.saturating_since(last));
        last = p.sent_at;
    }
    worst.max(to.saturating_since(last))
}

/// Runs [`check_stream`] on every party's output in `sim` (all legs PCMU, payload type
/// 0, 20 ms), with the switches taken from the plans the simulation set: the instants
/// where what a leg carries (silence, one forwarded source, a mix) changed.
pub fn check_all_streams(sim: &super::Sim, limits: StreamLimits) -> Result<(), String> {
    let parties: Vec<_> = sim.parties().collect();
    for &p in &parties {
        let mut switches = Vec::new();
        let mut before = None;
        for (at, h) in sim.plan_changes() {
            let kind = h.output_of(p, parties.iter().copied());
            if before.is_some_and(|b| b != kind) {
                switches.push(*at);
            }
            before = Some(kind);
        }
        check_stream(sim.listener(p).packets(), 0, limits, &switches)
            .map_err(|e| format!("{}'s output stream: {e}", sim.name(p)))?;
    }
    Ok(())
}

/// SPEC section 5's limits for clean links: one frame of 20 ms PCMU, plus 2 ms.
pub const WITHIN_A_FRAME: StreamLimits = StreamLimits {
    frame_samples: 160,
    ts_slack_samples: 16,
    allow_seq_gaps: false,
};
