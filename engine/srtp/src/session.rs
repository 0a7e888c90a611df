//! One direction of one leg: the keys, and the per-SSRC index and replay state.

use earshot_types::Ssrc;

use crate::error::SrtpError;
use crate::key::MasterKey;
use crate::primitives::Kdf;
use crate::replay::{StreamTable, estimate_index};
use crate::suite::SrtpSuite;
use crate::transform::{Layer, RTCP_CLEAR_HEADER, SRTCP_E_FLAG, Transform};

/// The largest SRTP packet index plus one: the index is 48 bits (RFC 3711 section 3.3.1).
const RTP_INDEX_LIMIT: u64 = 1 << 48;
/// The largest SRTCP index plus one: the index is 31 bits (RFC 3711 section 3.4).
const RTCP_INDEX_LIMIT: u64 = 1 << 31;
const RTP_FIXED_HEADER: usize = 12;

/// Session keys of SRTP or SRTCP, for [`SrtpSession::from_session_keys`].
#[derive(Clone, Copy)]
pub struct SessionKeys<'a> {
    /// Session encryption key, `suite.key_len()` octets.
    pub key: &'a [u8],
    /// Session salt, `suite.salt_len()` octets.
    pub salt: &'a [u8],
    /// Session authentication key (20 octets; empty for the GCM suites).
    pub auth_key: &'a [u8],
}

impl core::fmt::Debug for SessionKeys<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SessionKeys([redacted])")
    }
}

/// Which way a session transforms packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Unprotects what the remote sent, with the remote's key.
    Inbound,
    /// Protects what we send, with our key.
    Outbound,
}

/// Limits of one session, fixed at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrtpConfig {
    /// Replay window in packets (RFC 3711 section 3.3.2). Default 128, the value libsrtp
    /// and most endpoints use: wide enough for the reordering a jitter buffer absorbs.
    /// Clamped to 64..=1024 (64 is RFC 3711's minimum; the bitmap is inline).
    pub replay_window_packets: u16,
    /// SSRCs tracked per session (SRTP and SRTCP each). Default 4: a leg has one remote
    /// SSRC, which changes on re-INVITEs and transfers; a few slots keep the old one
    /// alive for its stragglers. When full, the least recently used SSRC is forgotten.
    pub max_ssrcs: usize,
}

impl Default for SrtpConfig {
    fn default() -> Self {
        Self {
            replay_window_packets: 128,
            max_ssrcs: 4,
        }
    }
}

/// SRTP and SRTCP for one direction of one leg, working in place on the caller's
/// buffers. Sans-IO: no clock, no sockets, no allocation after construction.
///
/// Packet index state is per SSRC: SRTP keeps the highest index (so the rollover
/// counter) and a replay bitmap; SRTCP the highest 31-bit index and a bitmap. State
/// changes only after a packet authenticated (inbound) or was protected (outbound), so
/// forged packets cannot move it.
#[derive(Clone)]
pub struct SrtpSession {
    direction: Direction,
    suite: SrtpSuite,
    config: SrtpConfig,
    /// The SRTP keys: touched by every packet, so inline.
    rtp: Transform,
    /// The SRTCP keys: a packet every few seconds, so out of line.
    rtcp: Box<Transform>,
    rtp_streams: StreamTable,
    rtcp_streams: StreamTable,
}

impl core::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SrtpSession")
            .field("direction", &self.direction)
            .field("suite", &self.suite)
            .field("config", &self.config)
            .field("keys", &format_args!("[redacted]"))
            .field("rtp_streams", &self.rtp_streams.len())
            .field("rtcp_streams", &self.rtcp_streams.len())
            .finish()
    }
}

impl SrtpSession {
    /// Derives the session keys from `key` (RFC 3711 section 4.3, key derivation rate 0)
    /// and allocates the stream tables. The only allocation the session ever makes.
    pub fn new(direction: Direction, key: &MasterKey, config: SrtpConfig) -> Self {
        let kdf = Kdf::new(key);
        Self {
            direction,
            suite: key.suite(),
            config,
            rtp: Transform::new(&kdf, Layer::Rtp),
            rtcp: Box::new(Transform::new(&kdf, Layer::Rtcp)),
            rtp_streams: StreamTable::new(config.max_ssrcs, config.replay_window_packets),
            rtcp_streams: StreamTable::new(config.max_ssrcs, config.replay_window_packets),
        }
    }

    /// A session from session keys rather than a master key: the RFC 7714 test vectors
    /// are stated this way. The engine always uses [`SrtpSession::new`].
    pub fn from_session_keys(
        direction: Direction,
        suite: SrtpSuite,
        rtp: &SessionKeys<'_>,
        rtcp: &SessionKeys<'_>,
        config: SrtpConfig,
    ) -> Self {
        Self {
            direction,
            suite,
            config,
            rtp: Transform::from_session_keys(suite, Layer::Rtp, rtp.key, rtp.salt, rtp.auth_key),
            rtcp: Box::new(Transform::from_session_keys(
                suite,
                Layer::Rtcp,
                rtcp.key,
                rtcp.salt,
                rtcp.auth_key,
            )),
            rtp_streams: StreamTable::new(config.max_ssrcs, config.replay_window_packets),
            rtcp_streams: StreamTable::new(config.max_ssrcs, config.replay_window_packets),
        }
    }

    /// A session with a new key that carries on this one's per-SSRC SRTP index and
    /// replay state: what a re-key of a live leg needs, since the remote keeps its SSRC,
    /// sequence numbers and rollover counter across a new `a=crypto` line.
    ///
    /// SRTCP differs by direction. Outbound, the SRTCP index continues (a receiver that
    /// kept its replay state across the re-key, as libsrtp's `srtp_update` does, would
    /// refuse a restarted index as replays). Inbound, the SRTCP replay state starts
    /// afresh: a remote that re-creates its SRTP context for the new key (libsrtp's
    /// `srtp_create`, what many phones do on a new `a=crypto` line) starts its SRTCP
    /// index again from the beginning, and carried-over state would drop its first reports as
    /// replays. Nothing is lost by it: a replayed packet of the old key does not
    /// authenticate under the new one, and the new key's own replays are still caught.
    pub fn rekeyed(&self, key: &MasterKey) -> Self {
        let kdf = Kdf::new(key);
        let rtcp_streams = match self.direction {
            Direction::Outbound => self.rtcp_streams.clone(),
            Direction::Inbound => {
                StreamTable::new(self.config.max_ssrcs, self.config.replay_window_packets)
            }
        };
        Self {
            direction: self.direction,
            suite: key.suite(),
            config: self.config,
            rtp: Transform::new(&kdf, Layer::Rtp),
            rtcp: Box::new(Transform::new(&kdf, Layer::Rtcp)),
            rtp_streams: self.rtp_streams.clone(),
            rtcp_streams,
        }
    }

    /// The suite this session's key is for.
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Which way this session transforms.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Encrypts and authenticates the RTP packet `buf[..len]` in place and appends the
    /// tag; returns the SRTP length. `buf` must have `suite().rtp_overhead()` octets of
    /// room after `len`.
    ///
    /// The packet index is the sequence number extended by the rollover counter, which
    /// advances when the sequence number wraps (RFC 3711 appendix A, applied to what we
    /// sent). An index already protected, or older than the replay window, is refused
    /// with [`SrtpError::IndexReused`]: sending it would reuse keystream.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if self.direction != Direction::Outbound {
            return Err(SrtpError::WrongDirection);
        }
        let packet = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        let header_len = rtp_header_len(packet)?;
        let (ssrc, seq) = rtp_ssrc_seq(packet);
        let tag_len = self.rtp.rtp_tag_len();
        if buf.len() < len + tag_len {
            return Err(SrtpError::BufferTooSmall);
        }
        let slot = self.rtp_streams.find(ssrc);
        let index = match self.rtp_streams.highest(slot) {
            Some(h) => estimate_index(h, seq).ok_or(SrtpError::IndexReused)?,
            None => u64::from(seq),
        };
        if index >= RTP_INDEX_LIMIT {
            return Err(SrtpError::IndexExhausted);
        }
        if !self.rtp_streams.accepts(slot, index) {
            return Err(SrtpError::IndexReused);
        }
        self.rtp.protect_rtp(buf, header_len, len, ssrc, index);
        self.rtp_streams.mark(slot, ssrc, index);
        Ok(len + tag_len)
    }

    /// Verifies and decrypts the SRTP packet `buf` (exactly the datagram) in place;
    /// returns the RTP length (the tag is cut off). A new SSRC starts at rollover
    /// counter 0, as RFC 3711 section 3.3.1 has receivers do.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        if self.direction != Direction::Inbound {
            return Err(SrtpError::WrongDirection);
        }
        let header_len = rtp_header_len(buf)?;
        let tag_len = self.rtp.rtp_tag_len();
        if buf.len() < header_len + tag_len {
            return Err(SrtpError::TooShort);
        }
        let (ssrc, seq) = rtp_ssrc_seq(buf);
        let slot = self.rtp_streams.find(ssrc);
        let index = match self.rtp_streams.highest(slot) {
            Some(h) => estimate_index(h, seq).ok_or(SrtpError::Replay)?,
            None => u64::from(seq),
        };
        if index >= RTP_INDEX_LIMIT {
            return Err(SrtpError::IndexExhausted);
        }
        if !self.rtp_streams.accepts(slot, index) {
            return Err(SrtpError::Replay);
        }
        let len = self.rtp.unprotect_rtp(buf, header_len, ssrc, index)?;
        self.rtp_streams.mark(slot, ssrc, index);
        Ok(len)
    }

    /// Encrypts the RTCP compound `buf[..len]` after its first 8 octets, appends the E
    /// flag with the next SRTCP index of the sender SSRC, and the tag; returns the SRTCP
    /// length. `buf` must have `suite().rtcp_overhead()` octets of room after `len`.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if self.direction != Direction::Outbound {
            return Err(SrtpError::WrongDirection);
        }
        let packet = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        let ssrc = rtcp_ssrc(packet)?;
        if buf.len() < len + self.suite.rtcp_overhead() {
            return Err(SrtpError::BufferTooSmall);
        }
        let slot = self.rtcp_streams.find(ssrc);
        let index = self.rtcp_streams.highest(slot).map_or(0, |h| h + 1);
        if index >= RTCP_INDEX_LIMIT {
            return Err(SrtpError::IndexExhausted);
        }
        let out = self.rtcp.protect_rtcp(buf, len, ssrc, index as u32);
        self.rtcp_streams.mark(slot, ssrc, index);
        Ok(out)
    }

    /// Verifies and (when its E flag is set) decrypts the SRTCP packet `buf` in place;
    /// returns the RTCP length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        if self.direction != Direction::Inbound {
            return Err(SrtpError::WrongDirection);
        }
        let min_len = RTCP_CLEAR_HEADER + 4 + self.rtcp.rtcp_tag_len();
        if buf.len() < min_len {
            return Err(SrtpError::TooShort);
        }
        let ssrc = rtcp_ssrc(buf)?;
        let at = self.rtcp.rtcp_word_at(buf.len());
        let mut word = [0u8; 4];
        word.copy_from_slice(&buf[at..at + 4]);
        let word = u32::from_be_bytes(word);
        let index = u64::from(word & !SRTCP_E_FLAG);
        let slot = self.rtcp_streams.find(ssrc);
        if !self.rtcp_streams.accepts(slot, index) {
            return Err(SrtpError::Replay);
        }
        let len = self.rtcp.unprotect_rtcp(buf, ssrc, word)?;
        self.rtcp_streams.mark(slot, ssrc, index);
        Ok(len)
    }

    /// The highest SRTP packet index (`2^16 * ROC + SEQ`) protected or accepted for
    /// `ssrc`, if any. An outbound session's value is what the engine persists so that a
    /// restart never reuses keystream (see [`SrtpSession::resume_rtp`]).
    pub fn rtp_highest_index(&self, ssrc: Ssrc) -> Option<u64> {
        self.rtp_streams.highest(self.rtp_streams.find(ssrc.0))
    }

    /// The highest SRTCP index used or accepted for `ssrc`, if any.
    pub fn rtcp_highest_index(&self, ssrc: Ssrc) -> Option<u32> {
        self.rtcp_streams
            .highest(self.rtcp_streams.find(ssrc.0))
            .map(|h| h as u32)
    }

    /// Declares every SRTP index up to and including `highest` as used for `ssrc`.
    ///
    /// Outbound, after a restart with the same key and SSRC: pass the persisted high
    /// water mark (plus the packets that may have gone out after it was written); every
    /// packet at or below it is then refused, so keystream is never reused, and the
    /// rollover counter continues from it. Inbound: seeds the rollover counter when the
    /// remote's is known (for instance carried across a re-key).
    pub fn resume_rtp(&mut self, ssrc: Ssrc, highest: u64) {
        self.rtp_streams
            .resume(ssrc.0, highest.min(RTP_INDEX_LIMIT - 1));
    }

    /// Declares every SRTCP index up to and including `highest` as used for `ssrc`: the
    /// next SRTCP packet of an outbound session carries `highest + 1`.
    pub fn resume_rtcp(&mut self, ssrc: Ssrc, highest: u32) {
        self.rtcp_streams
            .resume(ssrc.0, u64::from(highest).min(RTCP_INDEX_LIMIT - 1));
    }
}

/// The length of the RTP header including CSRCs and the extension (RFC 3550 section
/// 5.1 and 5.3.1): what SRTP leaves in clear.
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < RTP_FIXED_HEADER {
        return Err(SrtpError::TooShort);
    }
    if packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = RTP_FIXED_HEADER + 4 * usize::from(packet[0] & 0x0F);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len..len + 4).ok_or(SrtpError::Malformed)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

fn rtp_ssrc_seq(packet: &[u8]) -> (u32, u16) {
    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    (ssrc, seq)
}

/// The sender SSRC of an RTCP packet (the first of a compound).
fn rtcp_ssrc(packet: &[u8]) -> Result<u32, SrtpError> {
    if packet.len() < RTCP_CLEAR_HEADER {
        return Err(SrtpError::TooShort);
    }
    if packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    Ok(u32::from_be_bytes([
        packet[4], packet[5], packet[6], packet[7],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes one session holds: inline plus its allocations (the two stream tables,
    /// the boxed SRTCP transform, and the boxed GCM ciphers). A leg holds two sessions.
    fn state_bytes(session: &SrtpSession) -> (usize, usize) {
        let boxed_gcm = |t: &Transform| match t {
            Transform::Cm { aes, .. } => aes.heap_bytes(),
            Transform::Gcm128 { aead, .. } => core::mem::size_of_val(&**aead),
            Transform::Gcm256 { aead, .. } => core::mem::size_of_val(&**aead),
        };
        let heap = session.rtp_streams.heap_bytes()
            + session.rtcp_streams.heap_bytes()
            + core::mem::size_of::<Transform>()
            + boxed_gcm(&session.rtp)
            + boxed_gcm(&session.rtcp);
        (core::mem::size_of::<SrtpSession>(), heap)
    }

    /// What a leg's SRTP state costs (docs/srtp.md, "Per-leg state"), per suite: the
    /// bounds fail if a large cipher type is put back inline, if the replay bitmaps go
    /// back to the largest window's size, or if the GCM ciphers carry decryption round
    /// keys again.
    #[test]
    fn session_state_is_small() {
        println!(
            "aes-gcm cipher state (boxed, one per transform): Aes128Gcm {} octets, Aes256Gcm {}",
            core::mem::size_of::<aes_gcm::Aes128Gcm>(),
            core::mem::size_of::<aes_gcm::Aes256Gcm>(),
        );
        println!(
            "Transform {} octets, SrtpSession {} inline",
            core::mem::size_of::<Transform>(),
            core::mem::size_of::<SrtpSession>()
        );
        for suite in SrtpSuite::ALL {
            let key = MasterKey::generate(suite, |b| b.fill(7));
            let session = SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default());
            let (inline, heap) = state_bytes(&session);
            let leg = 2 * (inline + heap);
            println!(
                "{}: {inline} octets inline + {heap} on the heap per session, {leg} per leg \
                 (AES-NI/SHA-NI path: {})",
                suite.id(),
                crate::ni::available()
            );
            assert!(
                inline <= 384,
                "{suite:?}: SrtpSession inline {inline} octets"
            );
            // AES-CM on the NI path: 1,920 octets per leg (was 3,840 before the replay
            // bitmaps were sized by the window). GCM: the `aes-gcm` ciphers keep a
            // software AES and GHASH schedule beside the AES-NI one.
            let bound = match (suite.is_aead(), crate::ni::available()) {
                (false, true) => 960,
                // Without AES-NI each transform boxes `aes`'s software schedule too.
                (false, false) => 960 + 2 * core::mem::size_of::<aes::Aes128>(),
                (true, _) => 2_944,
            };
            assert!(
                inline + heap <= bound,
                "{suite:?}: SrtpSession total {} octets (bound {bound})",
                inline + heap
            );
        }
    }
}
