//! The only unsafe code of this crate: owning handles to libopus encoder and decoder
//! states, and calls into libopus with lengths checked on the Rust side first.
//!
//! Every call passes pointers derived from live Rust slices together with their lengths
//! (never more than the slice holds), and a state pointer that this module created,
//! owns exclusively and frees exactly once in `Drop`.
#![allow(unsafe_code)]

use core::ffi::c_int;
use core::ptr::NonNull;
use opusic_sys as sys;

/// A libopus error code, as returned by libopus (`OPUS_BAD_ARG` and so on).
pub(crate) type Code = c_int;

/// An owned libopus encoder state (mono).
#[derive(Debug)]
pub(crate) struct Encoder(NonNull<sys::OpusEncoder>);

// SAFETY: an OpusEncoder is a self-contained block of memory with no thread-local or
// shared state; libopus documents its encoder and decoder as usable from any thread as
// long as one state is not used by two threads at once, which `&mut self` guarantees.
unsafe impl Send for Encoder {}

impl Encoder {
    /// `opus_encoder_create` for one channel at `sample_rate_hz`, VoIP application.
    pub(crate) fn new(sample_rate_hz: u32) -> Result<Self, Code> {
        let mut error: c_int = 0;
        // SAFETY: `error` is a valid out-pointer for the duration of the call; the other
        // arguments are plain integers that libopus validates.
        let state = unsafe {
            sys::opus_encoder_create(
                sample_rate_hz as i32,
                1,
                sys::OPUS_APPLICATION_VOIP,
                &mut error,
            )
        };
        match NonNull::new(state) {
            Some(state) if error == sys::OPUS_OK => Ok(Encoder(state)),
            Some(state) => {
                // SAFETY: created just above, not shared, freed once here.
                unsafe { sys::opus_encoder_destroy(state.as_ptr()) };
                Err(error)
            }
            None => Err(if error == 0 {
                sys::OPUS_ALLOC_FAIL
            } else {
                error
            }),
        }
    }

    /// `opus_encoder_ctl(request, value)` for the integer-valued SET requests.
    pub(crate) fn set(&mut self, request: c_int, value: i32) -> Result<(), Code> {
        // SAFETY: the state is ours and live; every request this crate sends is a SET
        // request whose single variadic argument is an opus_int32.
        let rc = unsafe { sys::opus_encoder_ctl(self.0.as_ptr(), request, value) };
        if rc == sys::OPUS_OK { Ok(()) } else { Err(rc) }
    }

    /// `OPUS_GET_LOOKAHEAD`: the encoder's delay in samples at its own rate.
    pub(crate) fn lookahead(&mut self) -> Result<i32, Code> {
        let mut value: i32 = 0;
        // SAFETY: a GET request takes one pointer to an opus_int32, valid for the call.
        let rc = unsafe {
            sys::opus_encoder_ctl(
                self.0.as_ptr(),
                sys::OPUS_GET_LOOKAHEAD_REQUEST,
                &mut value as *mut i32,
            )
        };
        if rc == sys::OPUS_OK {
            Ok(value)
        } else {
            Err(rc)
        }
    }

    /// `opus_encode`: `pcm.len()` must already be a valid frame size (checked by the
    /// caller; libopus checks again). Returns the packet length.
    pub(crate) fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, Code> {
        let max_bytes = i32::try_from(out.len()).unwrap_or(i32::MAX);
        let frame = c_int::try_from(pcm.len()).map_err(|_| sys::OPUS_BAD_ARG)?;
        // SAFETY: libopus reads exactly `frame` samples (one channel) from `pcm` and
        // writes at most `max_bytes` bytes to `out`; both slices are at least that long.
        let rc = unsafe {
            sys::opus_encode(
                self.0.as_ptr(),
                pcm.as_ptr(),
                frame,
                out.as_mut_ptr(),
                max_bytes,
            )
        };
        usize::try_from(rc).map_err(|_| rc)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create, owned by this value, freed once.
        unsafe { sys::opus_encoder_destroy(self.0.as_ptr()) };
    }
}

/// An owned libopus decoder state (mono output).
#[derive(Debug)]
pub(crate) struct Decoder(NonNull<sys::OpusDecoder>);

// SAFETY: as for Encoder: self-contained state, used through `&mut self` only.
unsafe impl Send for Decoder {}

impl Decoder {
    /// `opus_decoder_create` for one output channel at `sample_rate_hz`.
    pub(crate) fn new(sample_rate_hz: u32) -> Result<Self, Code> {
        let mut error: c_int = 0;
        // SAFETY: `error` is a valid out-pointer for the call.
        let state = unsafe { sys::opus_decoder_create(sample_rate_hz as i32, 1, &mut error) };
        match NonNull::new(state) {
            Some(state) if error == sys::OPUS_OK => Ok(Decoder(state)),
            Some(state) => {
                // SAFETY: created just above, not shared, freed once here.
                unsafe { sys::opus_decoder_destroy(state.as_ptr()) };
                Err(error)
            }
            None => Err(if error == 0 {
                sys::OPUS_ALLOC_FAIL
            } else {
                error
            }),
        }
    }

    /// `opus_decode`. `packet = None` asks for concealment of `out.len()` samples;
    /// `fec` decodes the in-band FEC data of `packet` (the previous frame) instead.
    pub(crate) fn decode(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut [i16],
        fec: bool,
    ) -> Result<usize, Code> {
        let frame = c_int::try_from(out.len()).map_err(|_| sys::OPUS_BAD_ARG)?;
        let (data, len) = match packet {
            Some(p) => (
                p.as_ptr(),
                i32::try_from(p.len()).map_err(|_| sys::OPUS_INVALID_PACKET)?,
            ),
            None => (core::ptr::null(), 0),
        };
        // SAFETY: libopus reads `len` bytes from `data` (or none when it is null) and
        // writes at most `frame` samples (one channel) into `out`, which holds that many.
        let rc = unsafe {
            sys::opus_decode(
                self.0.as_ptr(),
                data,
                len,
                out.as_mut_ptr(),
                frame,
                c_int::from(fec),
            )
        };
        usize::try_from(rc).map_err(|_| rc)
    }

    /// `OPUS_RESET_STATE`.
    pub(crate) fn reset(&mut self) {
        // SAFETY: OPUS_RESET_STATE takes no argument; the state is ours and live.
        let rc = unsafe { sys::opus_decoder_ctl(self.0.as_ptr(), sys::OPUS_RESET_STATE) };
        debug_assert_eq!(rc, sys::OPUS_OK);
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create, owned by this value, freed once.
        unsafe { sys::opus_decoder_destroy(self.0.as_ptr()) };
    }
}

/// libopus's own `opus_packet_get_nb_samples(packet, 48000)`: the oracle for
/// [`crate::packet_duration_samples`].
pub fn libopus_packet_samples_48k(packet: &[u8]) -> Result<u32, Code> {
    let len = i32::try_from(packet.len()).map_err(|_| sys::OPUS_BAD_ARG)?;
    // SAFETY: libopus reads at most `len` bytes from the slice.
    let rc = unsafe { sys::opus_packet_get_nb_samples(packet.as_ptr(), len, 48000) };
    u32::try_from(rc).map_err(|_| rc)
}

/// libopus's own `opus_packet_get_nb_frames`: the oracle for
/// [`crate::packet_frame_count`].
pub fn libopus_packet_frames(packet: &[u8]) -> Result<u32, Code> {
    let len = i32::try_from(packet.len()).map_err(|_| sys::OPUS_BAD_ARG)?;
    // SAFETY: libopus reads at most `len` bytes from the slice.
    let rc = unsafe { sys::opus_packet_get_nb_frames(packet.as_ptr(), len) };
    u32::try_from(rc).map_err(|_| rc)
}

/// Join several packets of the same configuration into one multi-frame packet with
/// libopus's repacketizer; returns its length in `out`. Used by the tests to make real
/// code 1-3 packets.
pub fn libopus_repacketize(packets: &[&[u8]], out: &mut [u8]) -> Result<usize, Code> {
    // SAFETY: creates a repacketizer owned by this function and destroyed below.
    let rp = unsafe { sys::opus_repacketizer_create() };
    if rp.is_null() {
        return Err(sys::OPUS_ALLOC_FAIL);
    }
    let mut result = Ok(0);
    for p in packets {
        let len = i32::try_from(p.len()).map_err(|_| sys::OPUS_BAD_ARG)?;
        // SAFETY: `rp` is live; libopus keeps a pointer to `p`'s bytes until the
        // repacketizer is reset or destroyed, and `packets` outlives both (this call).
        let rc = unsafe { sys::opus_repacketizer_cat(rp, p.as_ptr(), len) };
        if rc != sys::OPUS_OK {
            result = Err(rc);
            break;
        }
    }
    if result.is_ok() {
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: libopus writes at most `max` bytes to `out`, which holds that many.
        let rc = unsafe { sys::opus_repacketizer_out(rp, out.as_mut_ptr(), max) };
        result = usize::try_from(rc).map_err(|_| rc);
    }
    // SAFETY: created above, destroyed once; no pointer into it survives.
    unsafe { sys::opus_repacketizer_destroy(rp) };
    result
}

/// libopus's version string, for logs and reports.
pub fn libopus_version() -> &'static str {
    // SAFETY: libopus returns a pointer to a static NUL-terminated string.
    let s = unsafe { core::ffi::CStr::from_ptr(sys::opus_get_version_string()) };
    s.to_str().unwrap_or("libopus (version not UTF-8)")
}
