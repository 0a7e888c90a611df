//! The only unsafe code of this crate: loading libopus at run time, owning handles to
//! its encoder and decoder states, and calls into it with lengths checked on the Rust
//! side first.
//!
//! Why run time: linking libopus at build time made every `cargo build` of the
//! workspace fail on a machine without `libopus-dev`, although only Opus legs need it,
//! and no Rust binding builds libopus from source without cmake. So nothing here is
//! linked: the first use `dlopen`s the shared library (`libopus.so.0`, the runtime
//! package's name, then `libopus.so`) once per process into [`Api`], a table of typed
//! function pointers. If that fails every entry point reports it as an error and the
//! rest of the process carries on.
//!
//! Every call passes pointers derived from live Rust slices together with their lengths
//! (never more than the slice holds), and a state pointer that this module created,
//! owns exclusively and frees exactly once in `Drop`.
#![allow(unsafe_code)]

use core::ffi::{CStr, c_char, c_int};
use core::marker::{PhantomData, PhantomPinned};
use core::ptr::NonNull;
use std::sync::OnceLock;

/// A libopus error code, as returned by libopus (`OPUS_BAD_ARG` and so on).
pub(crate) type Code = c_int;

// The constants this crate uses, with the values of libopus's opus_defines.h (stable
// since libopus 1.0; they are part of its ABI).
/// `OPUS_OK` (opus_defines.h).
pub(crate) const OPUS_OK: c_int = 0;
/// `OPUS_BAD_ARG` (opus_defines.h).
pub(crate) const OPUS_BAD_ARG: c_int = -1;
/// `OPUS_INVALID_PACKET` (opus_defines.h).
pub(crate) const OPUS_INVALID_PACKET: c_int = -4;
/// `OPUS_UNIMPLEMENTED` (opus_defines.h): what the oracle functions below return when
/// libopus could not be loaded.
pub(crate) const OPUS_UNIMPLEMENTED: c_int = -5;
/// `OPUS_ALLOC_FAIL` (opus_defines.h).
pub(crate) const OPUS_ALLOC_FAIL: c_int = -7;
/// `OPUS_APPLICATION_VOIP` (opus_defines.h).
pub(crate) const OPUS_APPLICATION_VOIP: c_int = 2048;
/// `OPUS_SET_BITRATE_REQUEST` (opus_defines.h).
pub(crate) const OPUS_SET_BITRATE_REQUEST: c_int = 4002;
/// `OPUS_SET_COMPLEXITY_REQUEST` (opus_defines.h).
pub(crate) const OPUS_SET_COMPLEXITY_REQUEST: c_int = 4010;
/// `OPUS_SET_INBAND_FEC_REQUEST` (opus_defines.h).
pub(crate) const OPUS_SET_INBAND_FEC_REQUEST: c_int = 4012;
/// `OPUS_SET_PACKET_LOSS_PERC_REQUEST` (opus_defines.h).
pub(crate) const OPUS_SET_PACKET_LOSS_PERC_REQUEST: c_int = 4014;
/// `OPUS_SET_DTX_REQUEST` (opus_defines.h).
pub(crate) const OPUS_SET_DTX_REQUEST: c_int = 4016;
/// `OPUS_GET_LOOKAHEAD_REQUEST` (opus_defines.h).
pub(crate) const OPUS_GET_LOOKAHEAD_REQUEST: c_int = 4027;
/// `OPUS_RESET_STATE` (opus_defines.h).
pub(crate) const OPUS_RESET_STATE: c_int = 4028;

/// The shared-library names tried, in order: the runtime package's soname first (Debian
/// `libopus0` installs only that), then the development symlink.
#[cfg(not(target_os = "macos"))]
pub(crate) const LIBRARY_NAMES: &[&str] = &["libopus.so.0", "libopus.so"];
/// The shared-library names tried, in order (Homebrew / MacPorts names).
#[cfg(target_os = "macos")]
pub(crate) const LIBRARY_NAMES: &[&str] = &["libopus.0.dylib", "libopus.dylib"];

/// Opaque libopus encoder state (`OpusEncoder` in opus.h); only ever behind a pointer.
#[repr(C)]
pub(crate) struct OpusEncoder {
    _opaque: [u8; 0],
    _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

/// Opaque libopus decoder state (`OpusDecoder` in opus.h).
#[repr(C)]
pub(crate) struct OpusDecoder {
    _opaque: [u8; 0],
    _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

/// Opaque libopus repacketizer (`OpusRepacketizer` in opus.h).
#[repr(C)]
pub(crate) struct OpusRepacketizer {
    _opaque: [u8; 0],
    _not_send_sync_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

/// The libopus functions this crate calls, resolved once from the loaded library. The
/// signatures are opus.h's (`opus_int32` is `i32`, `opus_int16` is `i16`).
pub(crate) struct Api {
    version: &'static str,
    encoder_create: unsafe extern "C" fn(i32, c_int, c_int, *mut c_int) -> *mut OpusEncoder,
    encoder_destroy: unsafe extern "C" fn(*mut OpusEncoder),
    encoder_ctl: unsafe extern "C" fn(*mut OpusEncoder, c_int, ...) -> c_int,
    encode: unsafe extern "C" fn(*mut OpusEncoder, *const i16, c_int, *mut u8, i32) -> i32,
    decoder_create: unsafe extern "C" fn(i32, c_int, *mut c_int) -> *mut OpusDecoder,
    decoder_destroy: unsafe extern "C" fn(*mut OpusDecoder),
    decoder_ctl: unsafe extern "C" fn(*mut OpusDecoder, c_int, ...) -> c_int,
    decode: unsafe extern "C" fn(*mut OpusDecoder, *const u8, i32, *mut i16, c_int, c_int) -> c_int,
    packet_get_nb_samples: unsafe extern "C" fn(*const u8, i32, i32) -> c_int,
    packet_get_nb_frames: unsafe extern "C" fn(*const u8, i32) -> c_int,
    repacketizer_create: unsafe extern "C" fn() -> *mut OpusRepacketizer,
    repacketizer_cat: unsafe extern "C" fn(*mut OpusRepacketizer, *const u8, i32) -> c_int,
    repacketizer_out: unsafe extern "C" fn(*mut OpusRepacketizer, *mut u8, i32) -> i32,
    repacketizer_destroy: unsafe extern "C" fn(*mut OpusRepacketizer),
}

impl core::fmt::Debug for Api {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Api")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// libopus's `opus_get_version_string()`, read once at load.
    pub(crate) fn version(&self) -> &'static str {
        self.version
    }
}

/// The process's one attempt to load libopus: the table, or why it failed (every name
/// tried, with the loader's message for each).
static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The libopus function table, loading the library on first use (once per process; a
/// failure is remembered too, so a missing library costs one `dlopen` per name, not one
/// per leg). `Err` carries the reason, naming each library tried.
pub(crate) fn api() -> Result<&'static Api, &'static str> {
    match API.get_or_init(load) {
        Ok(api) => Ok(api),
        Err(reason) => Err(reason.as_str()),
    }
}

fn load() -> Result<Api, String> {
    let mut failures = Vec::with_capacity(LIBRARY_NAMES.len());
    for name in LIBRARY_NAMES {
        // SAFETY: loading runs the library's initialisers; libopus has none that depend
        // on the caller (it keeps no global state), and the names are libopus's own.
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => return resolve(name, library),
            Err(e) => failures.push(format!("{name} ({e})")),
        }
    }
    Err(format!("tried {}", failures.join("; ")))
}

/// Looks one symbol up; `T` must be its C signature.
///
/// # Safety
/// `T` must be the `unsafe extern "C" fn` type matching the symbol's declaration in
/// opus.h, or calls through it are undefined behaviour.
unsafe fn symbol<T: Copy>(
    library: &'static libloading::Library,
    name: &str,
    symbol: &[u8],
) -> Result<T, String> {
    // SAFETY: the caller guarantees `T` is the symbol's real type; `symbol` is
    // NUL-terminated (libloading would copy it otherwise, still correct).
    match unsafe { library.get::<T>(symbol) } {
        Ok(f) => Ok(*f),
        Err(e) => Err(format!("{name} lacks a libopus function: {e}")),
    }
}

fn resolve(name: &str, library: libloading::Library) -> Result<Api, String> {
    // The library is leaked: it must never be unloaded, because the function pointers
    // copied out of it below (and the static version string) live in a `static` for the
    // rest of the process. Dropping it would `dlclose` and leave them dangling.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: `const char *opus_get_version_string(void)` (opus_defines.h).
    let get_version: unsafe extern "C" fn() -> *const c_char =
        unsafe { symbol(library, name, b"opus_get_version_string\0")? };
    // SAFETY: libopus returns a pointer to a static NUL-terminated string inside the
    // library, which is never unloaded (leaked above), so it is valid for 'static.
    let version: &'static CStr = unsafe { CStr::from_ptr(get_version()) };
    // SAFETY: each function type below is transcribed from the declaration of the same
    // name in opus.h (libopus 1.0 to 1.5 keep these signatures: they are its ABI).
    unsafe {
        Ok(Api {
            version: version.to_str().unwrap_or("libopus (version not UTF-8)"),
            encoder_create: symbol(library, name, b"opus_encoder_create\0")?,
            encoder_destroy: symbol(library, name, b"opus_encoder_destroy\0")?,
            encoder_ctl: symbol(library, name, b"opus_encoder_ctl\0")?,
            encode: symbol(library, name, b"opus_encode\0")?,
            decoder_create: symbol(library, name, b"opus_decoder_create\0")?,
            decoder_destroy: symbol(library, name, b"opus_decoder_destroy\0")?,
            decoder_ctl: symbol(library, name, b"opus_decoder_ctl\0")?,
            decode: symbol(library, name, b"opus_decode\0")?,
            packet_get_nb_samples: symbol(library, name, b"opus_packet_get_nb_samples\0")?,
            packet_get_nb_frames: symbol(library, name, b"opus_packet_get_nb_frames\0")?,
            repacketizer_create: symbol(library, name, b"opus_repacketizer_create\0")?,
            repacketizer_cat: symbol(library, name, b"opus_repacketizer_cat\0")?,
            repacketizer_out: symbol(library, name, b"opus_repacketizer_out\0")?,
            repacketizer_destroy: symbol(library, name, b"opus_repacketizer_destroy\0")?,
        })
    }
}

/// An owned libopus encoder state (mono).
#[derive(Debug)]
pub(crate) struct Encoder {
    state: NonNull<OpusEncoder>,
    api: &'static Api,
}

// SAFETY: an OpusEncoder is a self-contained block of memory with no thread-local or
// shared state; libopus documents its encoder and decoder as usable from any thread as
// long as one state is not used by two threads at once, which `&mut self` guarantees.
// The `Api` table is immutable function pointers.
unsafe impl Send for Encoder {}

impl Encoder {
    /// `opus_encoder_create` for one channel at `sample_rate_hz`, VoIP application.
    pub(crate) fn new(api: &'static Api, sample_rate_hz: u32) -> Result<Self, Code> {
        let rate = i32::try_from(sample_rate_hz).map_err(|_| OPUS_BAD_ARG)?;
        let mut error: c_int = 0;
        // SAFETY: `error` is a valid out-pointer for the duration of the call; the other
        // arguments are plain integers that libopus validates.
        let state = unsafe { (api.encoder_create)(rate, 1, OPUS_APPLICATION_VOIP, &mut error) };
        match NonNull::new(state) {
            Some(state) if error == OPUS_OK => Ok(Encoder { state, api }),
            Some(state) => {
                // SAFETY: created just above, not shared, freed once here.
                unsafe { (api.encoder_destroy)(state.as_ptr()) };
                Err(error)
            }
            None => Err(if error == 0 { OPUS_ALLOC_FAIL } else { error }),
        }
    }

    /// `opus_encoder_ctl(request, value)` for the integer-valued SET requests.
    pub(crate) fn set(&mut self, request: c_int, value: i32) -> Result<(), Code> {
        // SAFETY: the state is ours and live; every request this crate sends is a SET
        // request whose single variadic argument is an opus_int32.
        let rc = unsafe { (self.api.encoder_ctl)(self.state.as_ptr(), request, value) };
        if rc == OPUS_OK { Ok(()) } else { Err(rc) }
    }

    /// `OPUS_GET_LOOKAHEAD`: the encoder's delay in samples at its own rate.
    pub(crate) fn lookahead(&mut self) -> Result<i32, Code> {
        let mut value: i32 = 0;
        // SAFETY: a GET request takes one pointer to an opus_int32, valid for the call.
        let rc = unsafe {
            (self.api.encoder_ctl)(
                self.state.as_ptr(),
                OPUS_GET_LOOKAHEAD_REQUEST,
                &mut value as *mut i32,
            )
        };
        if rc == OPUS_OK { Ok(value) } else { Err(rc) }
    }

    /// `opus_encode`: `pcm.len()` must already be a valid frame size (checked by the
    /// caller; libopus checks again). Returns the packet length.
    pub(crate) fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, Code> {
        let max_bytes = i32::try_from(out.len()).unwrap_or(i32::MAX);
        let frame = c_int::try_from(pcm.len()).map_err(|_| OPUS_BAD_ARG)?;
        // SAFETY: libopus reads exactly `frame` samples (one channel) from `pcm` and
        // writes at most `max_bytes` bytes to `out`; both slices are at least that long.
        let rc = unsafe {
            (self.api.encode)(
                self.state.as_ptr(),
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
        unsafe { (self.api.encoder_destroy)(self.state.as_ptr()) };
    }
}

/// An owned libopus decoder state (mono output).
#[derive(Debug)]
pub(crate) struct Decoder {
    state: NonNull<OpusDecoder>,
    api: &'static Api,
}

// SAFETY: as for Encoder: self-contained state, used through `&mut self` only.
unsafe impl Send for Decoder {}

impl Decoder {
    /// `opus_decoder_create` for one output channel at `sample_rate_hz`.
    pub(crate) fn new(api: &'static Api, sample_rate_hz: u32) -> Result<Self, Code> {
        let rate = i32::try_from(sample_rate_hz).map_err(|_| OPUS_BAD_ARG)?;
        let mut error: c_int = 0;
        // SAFETY: `error` is a valid out-pointer for the call.
        let state = unsafe { (api.decoder_create)(rate, 1, &mut error) };
        match NonNull::new(state) {
            Some(state) if error == OPUS_OK => Ok(Decoder { state, api }),
            Some(state) => {
                // SAFETY: created just above, not shared, freed once here.
                unsafe { (api.decoder_destroy)(state.as_ptr()) };
                Err(error)
            }
            None => Err(if error == 0 { OPUS_ALLOC_FAIL } else { error }),
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
        let frame = c_int::try_from(out.len()).map_err(|_| OPUS_BAD_ARG)?;
        let (data, len) = match packet {
            Some(p) => (
                p.as_ptr(),
                i32::try_from(p.len()).map_err(|_| OPUS_INVALID_PACKET)?,
            ),
            None => (core::ptr::null(), 0),
        };
        // SAFETY: libopus reads `len` bytes from `data` (or none when it is null) and
        // writes at most `frame` samples (one channel) into `out`, which holds that many.
        let rc = unsafe {
            (self.api.decode)(
                self.state.as_ptr(),
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
        let rc = unsafe { (self.api.decoder_ctl)(self.state.as_ptr(), OPUS_RESET_STATE) };
        debug_assert_eq!(rc, OPUS_OK);
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create, owned by this value, freed once.
        unsafe { (self.api.decoder_destroy)(self.state.as_ptr()) };
    }
}

/// libopus's own `opus_packet_get_nb_samples(packet, 48000)`: the oracle for
/// [`crate::packet_duration_samples`]. `Err(-5)` (`OPUS_UNIMPLEMENTED`) when libopus
/// could not be loaded (see [`crate::available`]).
pub fn libopus_packet_samples_48k(packet: &[u8]) -> Result<u32, Code> {
    let api = api().map_err(|_| OPUS_UNIMPLEMENTED)?;
    let len = i32::try_from(packet.len()).map_err(|_| OPUS_BAD_ARG)?;
    // SAFETY: libopus reads at most `len` bytes from the slice.
    let rc = unsafe { (api.packet_get_nb_samples)(packet.as_ptr(), len, 48000) };
    u32::try_from(rc).map_err(|_| rc)
}

/// libopus's own `opus_packet_get_nb_frames`: the oracle for
/// [`crate::packet_frame_count`]. `Err(-5)` (`OPUS_UNIMPLEMENTED`) when libopus could
/// not be loaded.
pub fn libopus_packet_frames(packet: &[u8]) -> Result<u32, Code> {
    let api = api().map_err(|_| OPUS_UNIMPLEMENTED)?;
    let len = i32::try_from(packet.len()).map_err(|_| OPUS_BAD_ARG)?;
    // SAFETY: libopus reads at most `len` bytes from the slice.
    let rc = unsafe { (api.packet_get_nb_frames)(packet.as_ptr(), len) };
    u32::try_from(rc).map_err(|_| rc)
}

/// Join several packets of the same configuration into one multi-frame packet with
/// libopus's repacketizer; returns its length in `out`. Used by the tests to make real
/// code 1-3 packets. `Err(-5)` (`OPUS_UNIMPLEMENTED`) when libopus could not be loaded.
pub fn libopus_repacketize(packets: &[&[u8]], out: &mut [u8]) -> Result<usize, Code> {
    let api = api().map_err(|_| OPUS_UNIMPLEMENTED)?;
    // SAFETY: creates a repacketizer owned by this function and destroyed below.
    let rp = unsafe { (api.repacketizer_create)() };
    if rp.is_null() {
        return Err(OPUS_ALLOC_FAIL);
    }
    let mut result = Ok(0);
    for p in packets {
        let Ok(len) = i32::try_from(p.len()) else {
            result = Err(OPUS_BAD_ARG);
            break;
        };
        // SAFETY: `rp` is live; libopus keeps a pointer to `p`'s bytes until the
        // repacketizer is reset or destroyed, and `packets` outlives both (this call).
        let rc = unsafe { (api.repacketizer_cat)(rp, p.as_ptr(), len) };
        if rc != OPUS_OK {
            result = Err(rc);
            break;
        }
    }
    if result.is_ok() {
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: libopus writes at most `max` bytes to `out`, which holds that many.
        let rc = unsafe { (api.repacketizer_out)(rp, out.as_mut_ptr(), max) };
        result = usize::try_from(rc).map_err(|_| rc);
    }
    // SAFETY: created above, destroyed once; no pointer into it survives.
    unsafe { (api.repacketizer_destroy)(rp) };
    result
}

/// libopus's version string, for logs and reports; `"libopus not loaded"` when the
/// library could not be loaded ([`crate::available`] says why).
pub fn libopus_version() -> &'static str {
    match api() {
        Ok(api) => api.version(),
        Err(_) => "libopus not loaded",
    }
}
