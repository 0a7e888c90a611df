//! ITU-T G.722 at 64 kbit/s: 16 kHz audio as sub-band ADPCM, one byte per two samples.
//!
//! "Correct" here means the arithmetic of the ITU-T reference (the G.191 Software Tool
//! Library's `funcg722.c`, a fixed-point rendering of G.722's block diagrams): its
//! 16-bit operations in the same order, so that every state variable takes the value
//! the standard gives it. The reference saturates every operation; here a saturation is
//! kept wherever it can engage and dropped, with the reason stated, where the operands'
//! ranges rule it out. The coder has four parts:
//!
//! - **Transmit QMF** (G.722 3.1): a 24-tap quadrature mirror filter splits each pair of
//!   16 kHz input samples into one low-band (0-4 kHz) and one high-band (4-8 kHz) sample
//!   at 8 kHz. The sub-band signals are limited to 15 bits (`[-16384, 16383]`).
//! - **Low-band ADPCM** (3.2-3.5): a 6-bit adaptive quantiser on the prediction error,
//!   whose 4 most significant bits also drive the predictor and the scale adaptation
//!   (the embedded 56/48 kbit/s modes decode those alone).
//! - **High-band ADPCM** (3.6): the same structure with a 2-bit quantiser.
//! - **Adaptive predictor** (3.4, shared by both bands): a sixth-order zero section and a
//!   second-order pole section with sign-sign coefficient updates and stability limits.
//!
//! The receive side inverts each part (the low band with the 6-bit inverse quantiser of
//! the 64 kbit/s mode) and recombines the bands in the receive QMF.
//!
//! RTP (RFC 3551 4.5.2): the payload is the bytes in order, and the RTP clock is 8 kHz
//! although the audio is 16 kHz; that is the caller's business, not this module's.
//!
//! Everything is integer arithmetic on a state of about 100 bytes; nothing allocates and
//! no input can panic. See `docs/codecs.md` for how this was checked against ffmpeg and
//! the one place where ffmpeg's encoder departs from the reference.

#![forbid(unsafe_code)]

// ---------------------------------------------------------------------------------------
// The basic operators of the ITU-T reference (G.191 `basop`), on 16-bit words held in
// i32. Keeping them as named functions keeps the code below readable against G.722.
// ---------------------------------------------------------------------------------------

/// Saturate to a 16-bit word.
#[inline(always)]
fn sat16(x: i32) -> i32 {
    x.clamp(-32768, 32767)
}

/// `add`: saturating 16-bit addition.
#[inline(always)]
fn add(a: i32, b: i32) -> i32 {
    sat16(a + b)
}

/// `sub`: saturating 16-bit subtraction.
#[inline(always)]
fn sub(a: i32, b: i32) -> i32 {
    sat16(a - b)
}

/// `mult`: Q15 product, `(a * b) >> 15`. The reference's `mult` saturates, but only
/// for -32768 x -32768, and no call here can see that: in every product one factor is
/// a positive constant below 2^15, a scale factor (0 < DET <= 16384), a doubled
/// quantised difference (|2 D| <= 20456) or a limited pole coefficient
/// (|A1| <= 27648, |A2| <= 12288). So the saturation is left out (it was a third of
/// the codec's instructions) and checked in debug builds.
#[inline(always)]
fn mult(a: i32, b: i32) -> i32 {
    debug_assert!(a != -32768 || b != -32768);
    (a * b) >> 15
}

/// `mult(x, 32640)`, the leak factor 1 - 2^-8, without a multiply:
/// (32768 x - 128 x) >> 15 = x + floor(-x / 256). Tested exhaustively.
#[inline(always)]
fn leak_8(x: i32) -> i32 {
    x + ((-x) >> 8)
}

/// `mult(x, 32512)`, the leak factor 1 - 2^-7: x + floor(-x / 128).
#[inline(always)]
fn leak_7(x: i32) -> i32 {
    x + ((-x) >> 7)
}

/// `limit`: the 15-bit range of the sub-band signals.
#[inline(always)]
fn limit(x: i32) -> i32 {
    x.clamp(-16384, 16383)
}

/// `shr(x, 15)` compared between two words: do they have the same sign bit?
#[inline(always)]
fn same_sign(a: i32, b: i32) -> bool {
    (a < 0) == (b < 0)
}

// ---------------------------------------------------------------------------------------
// Tables of G.722 (Tables 6-11 and the ILB/ILA scale table), as printed in the standard.
// The combined signed tables are derived from them at compile time.
// ---------------------------------------------------------------------------------------

/// QMF coefficients h0..h23 (Table 11), in units of 2^-13. Symmetric.
const QMF: [i32; 24] = [
    3, -11, -11, 53, 12, -156, 32, 362, -210, -805, 951, 3876, 3876, 951, -805, -210, 362, 32,
    -156, 12, 53, -11, -11, 3,
];

/// Low-band quantiser decision levels Q6 (Table 6), for mil = 0..=30 (index 30 is a
/// sentinel past the last level).
const Q6: [i32; 31] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 3200,
];

/// Codeword IL for a magnitude interval `mil` and a sign: `MISIL[negative][mil]`.
const MISIL: [[u8; 31]; 2] = [
    [
        0x00, 0x3D, 0x3C, 0x3B, 0x3A, 0x39, 0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31, 0x30,
        0x2F, 0x2E, 0x2D, 0x2C, 0x2B, 0x2A, 0x29, 0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21,
        0x20,
    ],
    [
        0x00, 0x3F, 0x3E, 0x1F, 0x1E, 0x1D, 0x1C, 0x1B, 0x1A, 0x19, 0x18, 0x17, 0x16, 0x15, 0x14,
        0x13, 0x12, 0x11, 0x10, 0x0F, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 0x09, 0x08, 0x07, 0x06, 0x05,
        0x04,
    ],
];

/// 4-bit inverse quantiser output levels OQ4 (Table 7), by magnitude index.
const OQ4: [i32; 8] = [0, 150, 323, 530, 786, 1121, 1612, 2557];
/// Magnitude index and sign of a 4-bit low-band code (RIL4 / RISI4).
const RIL4: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
const RISI4_NEG: [bool; 16] = [
    false, true, true, true, true, true, true, true, false, false, false, false, false, false,
    false, false,
];

/// 6-bit inverse quantiser output levels OQ6 (Table 6), by magnitude index.
const OQ6: [i32; 31] = [
    0, 17, 54, 91, 130, 170, 211, 254, 300, 347, 396, 447, 501, 558, 618, 682, 750, 822, 899, 982,
    1072, 1170, 1279, 1399, 1535, 1689, 1873, 2088, 2376, 2738, 3101,
];
/// Magnitude index of a 6-bit low-band code (RIL6); codes below 32 and 62, 63 are negative.
const RIL6: [usize; 64] = [
    1, 1, 1, 1, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10,
    9, 8, 7, 6, 5, 4, 3, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13,
    12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 2, 1,
];

/// Low-band log scale factor increments WL (Table 8), by 4-bit magnitude index.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];

/// High-band: output levels OQ2 and log scale increments WH (Tables 9, 10), indexed by
/// IH2 (the magnitude of a 2-bit code); codes 0 and 1 are negative.
const OQ2: [i32; 3] = [0, 202, 926];
const WH: [i32; 3] = [0, -214, 798];
const IH2: [usize; 4] = [2, 1, 2, 1];
/// High-band decision level Q2 (Table 9).
const Q2: i32 = 564;

/// round(2048 * 2^(k/32)) for k = 0..32: one octave of the ILB table (G.722 3.5,
/// `scalel`/`scaleh`) as a 12-bit mantissa, from which the other octaves follow by
/// shifting. The test `scale_table_matches_formula` recomputes it and checks values
/// printed in the reference's table.
const POW2_OCTAVE: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];

/// The reference's `(ila[i] + 1) << 2` for i = 0..=352, where `ila[i] + 1` is the
/// mantissa above shifted to octave `i / 32 + 1`: the linear quantiser scale DET for a
/// log scale index.
const DET_OF_INDEX: [i32; 353] = {
    let mut t = [0i32; 353];
    let mut i = 0;
    while i < 353 {
        let octave = (i >> 5) as u32; // 0..=11
        let v = POW2_OCTAVE[i & 31]; // 2^(frac) * 2^11
        // ila[i] + 1 = v >> (10 - octave), truncated before the times 4.
        let ila_plus_1 = if octave <= 10 {
            v >> (10 - octave)
        } else {
            v << (octave - 10)
        };
        t[i] = ila_plus_1 << 2;
        i += 1;
    }
    t
};

/// Signed 4-bit inverse quantiser levels (times 8, as the reference scales them) for the
/// 4-bit code `il >> 2`: the quantised difference that drives the low-band predictor.
const INVQ4_X8: [i32; 16] = {
    let mut t = [0i32; 16];
    let mut i = 0;
    while i < 16 {
        let v = OQ4[RIL4[i]] << 3;
        t[i] = if RISI4_NEG[i] { -v } else { v };
        i += 1;
    }
    t
};

/// Signed 6-bit inverse quantiser levels (times 8) for the 64 kbit/s decoder output.
const INVQ6_X8: [i32; 64] = {
    let mut t = [0i32; 64];
    let mut i = 0;
    while i < 64 {
        let v = OQ6[RIL6[i]] << 3;
        t[i] = if i < 32 || i >= 62 { -v } else { v };
        i += 1;
    }
    t
};

/// Low-band scale adaptation increment for each 4-bit code.
const WL_OF_CODE4: [i32; 16] = {
    let mut t = [0i32; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = WL[RIL4[i]];
        i += 1;
    }
    t
};

/// Signed high-band inverse quantiser levels (times 8) for each 2-bit code.
const INVQH_X8: [i32; 4] = [-(OQ2[2] << 3), -(OQ2[1] << 3), OQ2[2] << 3, OQ2[1] << 3];

// ---------------------------------------------------------------------------------------
// Per-band ADPCM state: the predictor and the scale factor (G.722 3.3-3.6).
// ---------------------------------------------------------------------------------------

/// One sub-band's ADPCM state. Names follow G.722 (`S`, `SZ`, `NB`, `DET`, `A`, `B`,
/// `D`, `P`, `R`), with the band letter dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Band {
    /// Predicted signal S = SP + SZ.
    s: i32,
    /// Zero-section output SZ.
    sz: i32,
    /// Log scale factor NB (low band 0..=18432, high band 0..=22528).
    nb: i32,
    /// Linear scale factor DET.
    det: i32,
    /// Pole coefficients A1, A2 (index 0 unused, as in G.722).
    a: [i32; 3],
    /// Zero coefficients B1..B6 (`b[k]` is B(k+1)).
    b: [i32; 6],
    /// Past quantised differences D(n-1)..D(n-6) (`d[k]` is D(n-1-k)).
    d: [i32; 6],
    /// Partially reconstructed signals P(n)..P(n-2).
    p: [i32; 3],
    /// Reconstructed signals R(n)..R(n-2).
    r: [i32; 3],
}

impl Band {
    /// The reset state of G.722 3.7 (DETL = 32, DETH = 8, everything else zero).
    const fn reset(det: i32) -> Self {
        Band {
            s: 0,
            sz: 0,
            nb: 0,
            det,
            a: [0; 3],
            b: [0; 6],
            d: [0; 6],
            p: [0; 3],
            r: [0; 3],
        }
    }

    /// The predictor update shared by both bands, given this sample's quantised
    /// difference `dq`: PARREC, RECONS, UPZERO, UPPOL2, UPPOL1, FILTEZ, FILTEP, PREDIC,
    /// in the reference's order (UPPOL1 uses the new A2).
    #[inline(always)]
    fn adapt(&mut self, dq: i32) {
        self.p[0] = add(dq, self.sz);
        self.r[0] = add(self.s, dq);

        // UPZERO: sign-sign update of the zero section, leaky by 1 - 2^-8. Written lane
        // by lane without branches (the sign test is a mask) so it vectorises.
        let step = if dq == 0 { 0 } else { 128 };
        for k in 0..6 {
            let differ = (dq ^ self.d[k]) >> 31; // -1 where the signs differ
            let wd2 = (step ^ differ) - differ; // +step or -step
            self.b[k] = sat16(wd2 + leak_8(self.b[k]));
        }
        self.d.rotate_right(1);
        self.d[0] = dq;

        // UPPOL2: second pole coefficient, limited to |A2| <= 0.75. No saturation is
        // possible in the sum (|wd2| <= 256, |A2| <= 12288).
        let sg0 = self.p[0];
        let wd1 = sat16(self.a[1] << 2);
        let wd2 = if same_sign(sg0, self.p[1]) {
            sub(0, wd1)
        } else {
            wd1
        } >> 7;
        let wd3 = if same_sign(sg0, self.p[2]) { 128 } else { -128 };
        self.a[2] = (wd2 + wd3 + leak_7(self.a[2])).clamp(-12288, 12288);

        // UPPOL1: first pole coefficient, limited to |A1| <= 1 - 2^-4 - A2 (again no
        // saturation: |A1| <= 27648).
        let wd1 = if same_sign(sg0, self.p[1]) { 192 } else { -192 };
        let apl1 = wd1 + leak_8(self.a[1]);
        let bound = 15360 - self.a[2];
        self.a[1] = apl1.max(-bound).min(bound);
        self.p[2] = self.p[1];
        self.p[1] = self.p[0];

        // FILTEZ: sixth-order zero section, (2 D * B) >> 15 = (D * B) >> 14 per tap
        // (|D| <= 10228, so the doubling never saturated), summed with saturation from
        // tap 6 down to tap 1 as the reference does.
        let mut terms = [0i32; 6];
        for ((term, &d), &b) in terms.iter_mut().zip(&self.d).zip(&self.b) {
            *term = (d * b) >> 14;
        }
        let mut sz = 0;
        for &term in terms.iter().rev() {
            sz = add(sz, term);
        }
        self.sz = sz;

        // FILTEP: second-order pole section over the reconstructed signal.
        self.r[2] = self.r[1];
        self.r[1] = self.r[0];
        let sp = add(
            mult(self.a[1], sat16(2 * self.r[1])),
            mult(self.a[2], sat16(2 * self.r[2])),
        );
        self.s = add(sp, self.sz);
    }

    /// Low band, shared by encoder and decoder once the 6-bit code is known: INVQAL,
    /// LOGSCL, SCALEL, then the predictor update.
    #[inline(always)]
    fn update_low(&mut self, il: u8) {
        let code4 = usize::from(il >> 2);
        let dlt = mult(self.det, INVQ4_X8[code4]);
        // LOGSCL: 0 <= NB <= 18432 and WL >= -60, so the sum cannot saturate.
        self.nb = (leak_7(self.nb) + WL_OF_CODE4[code4]).clamp(0, 18432);
        self.det = DET_OF_INDEX[((self.nb >> 6) & 511) as usize + 64];
        self.adapt(dlt);
    }

    /// High band, shared by encoder and decoder: INVQAH, LOGSCH, SCALEH, predictor.
    #[inline(always)]
    fn update_high(&mut self, ih: u8) {
        let dh = mult(INVQH_X8[usize::from(ih)], self.det);
        self.nb = (leak_7(self.nb) + WH[IH2[usize::from(ih)]]).clamp(0, 22528);
        self.det = DET_OF_INDEX[((self.nb >> 6) & 511) as usize];
        self.adapt(dh);
    }
}

/// QUANTL: the 6-bit low-band code for the prediction error `el` at scale `det`.
#[inline(always)]
fn quantize_low(el: i32, det: i32) -> u8 {
    // Magnitude in one's complement, as the reference takes it: -1 quantises like 0.
    let negative = el < 0;
    let wd = if negative { -el - 1 } else { el };
    // The reference walks mil up from 0 while the decision level (Q6[mil] * DET) >> 12
    // is <= wd, stopping at 30. The levels are non-decreasing in mil, so that is one
    // plus the number of levels 1..=29 at or below wd: a binary search.
    let mil = 1 + Q6[1..30].partition_point(|&q| (q * det) >> 12 <= wd);
    MISIL[usize::from(negative)][mil]
}

/// QUANTH: the 2-bit high-band code for the prediction error `eh` at scale `det`.
#[inline(always)]
fn quantize_high(eh: i32, det: i32) -> u8 {
    let negative = eh < 0;
    let wd = if negative { -eh - 1 } else { eh };
    let outer = wd >= mult(Q2 << 3, det);
    match (negative, outer) {
        (false, false) => 3,
        (false, true) => 2,
        (true, false) => 1,
        (true, true) => 0,
    }
}

/// QMF coefficients split by the parity of their position in a chronological window
/// (oldest first): the reference's two accumulators over its newest-first delay line
/// are, because the coefficients are symmetric, the sums over the odd and the even
/// positions of the window. Zeros elsewhere, so each sum is one plain dot product that
/// the compiler vectorises (`pmaddwd`).
const QMF_ODD_POSITIONS: [i16; 24] = {
    let mut t = [0i16; 24];
    let mut j = 1;
    while j < 24 {
        t[j] = QMF[j] as i16;
        j += 2;
    }
    t
};
const QMF_EVEN_POSITIONS: [i16; 24] = {
    let mut t = [0i16; 24];
    let mut j = 0;
    while j < 24 {
        t[j] = QMF[j] as i16;
        j += 2;
    }
    t
};

/// The reference's QMF accumulators (`accuma`, `accumb`) for a window of the last 24
/// samples, oldest first.
#[inline(always)]
fn qmf_accumulate(window: &[i16]) -> (i32, i32) {
    let window = &window[..24];
    let dot = |coefficients: &[i16; 24]| -> i32 {
        window
            .iter()
            .zip(coefficients)
            .map(|(&x, &h)| i32::from(x) * i32::from(h))
            .sum()
    };
    (dot(&QMF_ODD_POSITIONS), dot(&QMF_EVEN_POSITIONS))
}

/// Pairs handled per pass over a stack window (10 ms); any frame length works.
const CHUNK_PAIRS: usize = 80;
/// QMF history: the 22 samples before the current pair.
const QMF_HISTORY: usize = 22;

// ---------------------------------------------------------------------------------------
// Encoder and decoder.
// ---------------------------------------------------------------------------------------

/// G.722 64 kbit/s encoder: 16 kHz 16-bit PCM in, one byte per two samples out.
/// Streaming: the state carries over between calls, so frames may be any even length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct G722Encoder {
    /// Transmit QMF history: the last 22 input samples, oldest first.
    qmf: [i16; QMF_HISTORY],
    low: Band,
    high: Band,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// An encoder in the reset state of G.722 3.7.
    pub const fn new() -> Self {
        G722Encoder {
            qmf: [0; QMF_HISTORY],
            low: Band::reset(32),
            high: Band::reset(8),
        }
    }

    /// Encode `pcm16k` (16 kHz samples) into `out`, two samples per byte. Returns the
    /// number of bytes written: `min(pcm16k.len() / 2, out.len())`. An odd trailing
    /// sample is not encoded (frames are whole milliseconds, so always even).
    pub fn encode(&mut self, pcm16k: &[i16], out: &mut [u8]) -> usize {
        self.encode_with::<true>(pcm16k, out)
    }

    /// `SUBBAND_LIMIT = false` leaves out the reference's limiter on the QMF outputs,
    /// which is what ffmpeg's encoder does; only the tests use it, to show that this is
    /// the one difference between the two.
    fn encode_with<const SUBBAND_LIMIT: bool>(&mut self, pcm16k: &[i16], out: &mut [u8]) -> usize {
        let pairs = (pcm16k.len() / 2).min(out.len());
        // The QMF window: history, then this chunk's samples, oldest first. Working on
        // a stack copy keeps the delay line from being shifted for every pair.
        let mut window = [0i16; QMF_HISTORY + 2 * CHUNK_PAIRS];
        window[..QMF_HISTORY].copy_from_slice(&self.qmf);
        for (pcm, bytes) in pcm16k[..2 * pairs]
            .chunks(2 * CHUNK_PAIRS)
            .zip(out[..pairs].chunks_mut(CHUNK_PAIRS))
        {
            window[QMF_HISTORY..QMF_HISTORY + pcm.len()].copy_from_slice(pcm);
            for (j, byte) in bytes.iter_mut().enumerate() {
                let (even, odd) = qmf_accumulate(&window[2 * j..]);
                *byte = self.encode_subbands::<SUBBAND_LIMIT>(even, odd);
            }
            window.copy_within(pcm.len()..pcm.len() + QMF_HISTORY, 0);
        }
        self.qmf.copy_from_slice(&window[..QMF_HISTORY]);
        pairs
    }

    /// One codeword from the transmit QMF's accumulators.
    #[inline(always)]
    fn encode_subbands<const SUBBAND_LIMIT: bool>(&mut self, even: i32, odd: i32) -> u8 {
        let (mut xl, mut xh) = ((even + odd) >> 14, (even - odd) >> 14);
        if SUBBAND_LIMIT {
            xl = limit(xl);
            xh = limit(xh);
        }
        let il = quantize_low(sub(xl, self.low.s), self.low.det);
        self.low.update_low(il);
        let ih = quantize_high(sub(xh, self.high.s), self.high.det);
        self.high.update_high(ih);
        (ih << 6) | il
    }
}

/// G.722 64 kbit/s decoder: bytes in, 16 kHz 16-bit PCM out (two samples per byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct G722Decoder {
    /// Receive QMF history: the last 22 sum/difference values, oldest first.
    qmf: [i16; QMF_HISTORY],
    low: Band,
    high: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A decoder in the reset state of G.722 3.7.
    pub const fn new() -> Self {
        G722Decoder {
            qmf: [0; QMF_HISTORY],
            low: Band::reset(32),
            high: Band::reset(8),
        }
    }

    /// Decode `bytes` into `out` (16 kHz samples). Returns the number of samples
    /// written: `2 * min(bytes.len(), out.len() / 2)`. Every byte is a valid codeword.
    pub fn decode(&mut self, bytes: &[u8], out: &mut [i16]) -> usize {
        let count = bytes.len().min(out.len() / 2);
        let mut window = [0i16; QMF_HISTORY + 2 * CHUNK_PAIRS];
        window[..QMF_HISTORY].copy_from_slice(&self.qmf);
        for (chunk, pcm) in bytes[..count]
            .chunks(CHUNK_PAIRS)
            .zip(out[..2 * count].chunks_mut(2 * CHUNK_PAIRS))
        {
            for (j, (&byte, pair)) in chunk.iter().zip(pcm.chunks_exact_mut(2)).enumerate() {
                let (sum, difference) = self.decode_subbands(byte);
                // The difference is the newer of the two in the delay line.
                window[QMF_HISTORY + 2 * j] = sum as i16;
                window[QMF_HISTORY + 2 * j + 1] = difference as i16;
                let (even, odd) = qmf_accumulate(&window[2 * j..]);
                // The reference scales by 2^-11 with a saturating shift; clamping the
                // shifted value is the same thing.
                pair[0] = sat16(even >> 11) as i16;
                pair[1] = sat16(odd >> 11) as i16;
            }
            window.copy_within(2 * chunk.len()..2 * chunk.len() + QMF_HISTORY, 0);
        }
        self.qmf.copy_from_slice(&window[..QMF_HISTORY]);
        2 * count
    }

    /// Both sub-band reconstructions of one codeword, as the receive QMF's inputs
    /// `rl + rh` and `rl - rh` (each within 16 bits).
    #[inline(always)]
    fn decode_subbands(&mut self, byte: u8) -> (i32, i32) {
        let il = byte & 0x3F;
        let ih = byte >> 6;

        // Low band, 64 kbit/s mode: the output uses all 6 bits (INVQBL), the predictor
        // only the top 4 (inside update_low).
        let rl = limit(add(
            self.low.s,
            mult(self.low.det, INVQ6_X8[usize::from(il)]),
        ));
        self.low.update_low(il);

        // High band: the reconstructed signal before the predictor moves on.
        let dh = mult(INVQH_X8[usize::from(ih)], self.high.det);
        let rh = limit(add(self.high.s, dh));
        self.high.update_high(ih);
        (add(rl, rh), sub(rl, rh))
    }
}

#[cfg(test)]
mod tests;
