//! SRTP on a leg: its two sessions (inbound with the remote's key, outbound with ours),
//! re-keying without a gap, and the in-place steps the receive and send paths call.
//!
//! A plain leg has no [`LegSrtp`] at all, so plain legs pay one `Option` test per packet.
//! Every step works on the datagram where it lies (the backend's receive buffer, the
//! transmit buffer a packet was built in): no copy, no allocation. Failures come back as
//! the [`DropReason`] the caller counts; a packet that fails never reaches a parser, a
//! jitter buffer or another leg.

use earshot_engine_api::SrtpMedia;
use earshot_media::Ssrc;
use earshot_media::time::{Duration, Instant};
use earshot_srtp::{Direction, SrtpConfig, SrtpError, SrtpSession};

use crate::stats::DropReason;

/// How long a replaced remote key is still tried after a re-key: packets the remote
/// sent before it switched (or that were in flight) still play. Two seconds is far more
/// than any path's reordering and shorter than a user would notice a stale key.
pub(super) const REKEY_OVERLAP: Duration = Duration::from_secs(2);

/// A leg's SRTP state. Boxed in [`super::legs::LegMedia`]: the two sessions hold both
/// transforms' key schedules (about 1.9 KiB together for AES-CM, 4.9-5.9 KiB for GCM).
#[derive(Debug)]
pub(super) struct LegSrtp {
    /// The keys in force, to tell at a reconfiguration which of them changed.
    keys: SrtpMedia,
    /// Unprotects what the remote sends (its key).
    inbound: SrtpSession,
    /// Protects what we send (our key).
    outbound: SrtpSession,
    /// The inbound session of the remote's previous key and until when it is tried.
    previous: Option<(SrtpSession, Instant)>,
}

impl LegSrtp {
    /// The state for `next` keys, carrying on from the leg's current state `old`
    /// (control path: may allocate).
    ///
    /// - Same keys: the state as it is (a retry, or a change of something else).
    /// - The remote's key changed: a session with the new key that keeps the per-SSRC
    ///   rollover counters and replay windows (the remote keeps its SSRC and sequence
    ///   across a new `a=crypto` line); the old one stays as `previous` for
    ///   [`REKEY_OVERLAP`].
    /// - Our key changed: the outbound session re-keyed in place; indices continue, so
    ///   the remote's rollover estimate stays right.
    /// - A suite change is a change of both keys, handled the same way.
    pub(super) fn next(
        old: Option<Box<LegSrtp>>,
        next: Option<&SrtpMedia>,
        now: Instant,
    ) -> Option<Box<LegSrtp>> {
        let next = next?;
        let Some(mut s) = old else {
            let config = SrtpConfig::default();
            return Some(Box::new(LegSrtp {
                keys: next.clone(),
                inbound: SrtpSession::new(Direction::Inbound, next.remote_key(), config),
                outbound: SrtpSession::new(Direction::Outbound, next.local_key(), config),
                previous: None,
            }));
        };
        if s.keys.remote_key() != next.remote_key() {
            let fresh = s.inbound.rekeyed(next.remote_key());
            let old = std::mem::replace(&mut s.inbound, fresh);
            s.previous = Some((old, now + REKEY_OVERLAP));
        }
        if s.keys.local_key() != next.local_key() {
            s.outbound = s.outbound.rekeyed(next.local_key());
        }
        s.keys = next.clone();
        Some(s)
    }

    /// Declares outbound indices up to `highest` used for `ssrc` (a stream continued
    /// from a failed node: its packets continue after `highest`).
    pub(super) fn resume_outbound(&mut self, ssrc: Ssrc, highest: u64) {
        self.outbound.resume_rtp(ssrc, highest);
    }

    /// The highest outbound packet index protected for `ssrc`.
    pub(super) fn outbound_highest(&self, ssrc: Ssrc) -> Option<u64> {
        self.outbound.rtp_highest_index(ssrc)
    }

    /// Octets `protect_rtp` appends.
    pub(super) fn rtp_overhead(&self) -> usize {
        self.outbound.suite().rtp_overhead()
    }

    /// Octets `protect_rtcp` appends.
    pub(super) fn rtcp_overhead(&self) -> usize {
        self.outbound.suite().rtcp_overhead()
    }

    /// Verifies and decrypts the SRTP packet `buf` in place; the RTP length on success.
    /// During a re-key overlap a packet the new key does not authenticate is tried with
    /// the previous key, on the same untouched bytes.
    pub(super) fn unprotect_rtp(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<usize, DropReason> {
        match self.inbound.unprotect_rtp(buf) {
            Ok(len) => Ok(len),
            Err(SrtpError::Auth) => match self.previous_until(now) {
                Some(previous) => previous
                    .unprotect_rtp(buf)
                    .map_err(|_| DropReason::SrtpAuth),
                None => Err(DropReason::SrtpAuth),
            },
            Err(e) => Err(rtp_reason(e)),
        }
    }

    /// Verifies and decrypts the SRTCP packet `buf` in place; the RTCP length on success.
    pub(super) fn unprotect_rtcp(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<usize, DropReason> {
        match self.inbound.unprotect_rtcp(buf) {
            Ok(len) => Ok(len),
            Err(SrtpError::Auth) => match self.previous_until(now) {
                Some(previous) => previous
                    .unprotect_rtcp(buf)
                    .map_err(|_| DropReason::SrtpAuth),
                None => Err(DropReason::SrtpAuth),
            },
            Err(SrtpError::TooShort | SrtpError::Malformed) => Err(DropReason::BadRtcp),
            Err(e) => Err(rtp_reason(e)),
        }
    }

    /// Protects the RTP packet `buf[..len]` in place; the SRTP length, or `None` (the
    /// caller cancels the send and counts `srtp_protect`). `buf` has
    /// [`LegSrtp::rtp_overhead`] octets of room after `len`: the caller checked.
    pub(super) fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Option<usize> {
        self.outbound.protect_rtp(buf, len).ok()
    }

    /// Protects the RTCP compound `buf[..len]` in place (SRTCP with the E flag set).
    pub(super) fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Option<usize> {
        self.outbound.protect_rtcp(buf, len).ok()
    }

    /// The previous inbound session while its overlap lasts.
    fn previous_until(&mut self, now: Instant) -> Option<&mut SrtpSession> {
        match &mut self.previous {
            Some((session, until)) if now < *until => Some(session),
            _ => None,
        }
    }

    /// Forgets the previous key once its overlap is over (its keys are wiped on drop).
    /// Called from the timeout sweep, off the receive path.
    pub(super) fn expire_previous(&mut self, now: Instant) {
        if self
            .previous
            .as_ref()
            .is_some_and(|(_, until)| now >= *until)
        {
            self.previous = None;
        }
    }
}

/// The counter of an inbound SRTP failure.
fn rtp_reason(e: SrtpError) -> DropReason {
    match e {
        SrtpError::Replay => DropReason::SrtpReplay,
        SrtpError::TooShort => DropReason::Truncated,
        SrtpError::Malformed => DropReason::BadHeader,
        // Auth, and what an inbound session cannot produce for a genuine packet (an index
        // beyond 2^48 is a forgery that has not been verified yet).
        _ => DropReason::SrtpAuth,
    }
}
