//! libsrtp 2, bound at run time: the independent implementation that the
//! interoperability tests and the `srtp/reference/*` benchmarks compare against.
//!
//! Behind the `reference` cargo feature and loaded with `dlopen("libsrtp2.so.1")`, so the
//! workspace builds and every other test runs where libsrtp is not installed; callers
//! print `SKIPPED: libsrtp2 not installed` when [`LibSrtp::load`] fails. Debian's
//! `libsrtp2-1` (pulled in by `libsrtp2-dev`) is built against NSS and supports every
//! suite earshot does, GCM included.
//!
//! This is the only module of the crate with `unsafe`: foreign calls into a C library.
//! Each one is fenced by a wrapper that checks the buffer sizes libsrtp trusts.
#![allow(unsafe_code)]

use core::ffi::{c_int, c_uint, c_ulong, c_void};
use std::sync::OnceLock;

use crate::suite::SrtpSuite;

/// The octets libsrtp may write after a packet when protecting it: its
/// `SRTP_MAX_TRAILER_LEN` (largest tag plus largest MKI) plus the SRTCP index word.
pub const MAX_TRAILER_LEN: usize = 16 + 128 + 4;

/// `srtp_crypto_policy_t` from `srtp2/srtp.h` (libsrtp 2.x).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CryptoPolicy {
    cipher_type: u32,
    cipher_key_len: c_int,
    auth_type: u32,
    auth_key_len: c_int,
    auth_tag_len: c_int,
    sec_serv: c_int,
}

/// `srtp_ssrc_t`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SsrcSpec {
    kind: c_int,
    value: c_uint,
}

/// `srtp_policy_t`.
#[repr(C)]
struct Policy {
    ssrc: SsrcSpec,
    rtp: CryptoPolicy,
    rtcp: CryptoPolicy,
    key: *mut u8,
    keys: *mut c_void,
    num_master_keys: c_ulong,
    deprecated_ekt: *mut c_void,
    window_size: c_ulong,
    allow_repeat_tx: c_int,
    enc_xtn_hdr: *mut c_int,
    enc_xtn_hdr_count: c_int,
    next: *mut Policy,
}

const SSRC_ANY_INBOUND: c_int = 2;
const SSRC_ANY_OUTBOUND: c_int = 3;

type Ctx = *mut c_void;

/// The libsrtp entry points used here, copied out of the library, which is never
/// unloaded (it lives in a process-wide `OnceLock`).
struct Fns {
    policy_for_rtp: unsafe extern "C" fn(*mut CryptoPolicy, c_int) -> c_int,
    policy_for_rtcp: unsafe extern "C" fn(*mut CryptoPolicy, c_int) -> c_int,
    create: unsafe extern "C" fn(*mut Ctx, *const Policy) -> c_int,
    dealloc: unsafe extern "C" fn(Ctx) -> c_int,
    protect: unsafe extern "C" fn(Ctx, *mut c_void, *mut c_int) -> c_int,
    unprotect: unsafe extern "C" fn(Ctx, *mut c_void, *mut c_int) -> c_int,
    protect_rtcp: unsafe extern "C" fn(Ctx, *mut c_void, *mut c_int) -> c_int,
    unprotect_rtcp: unsafe extern "C" fn(Ctx, *mut c_void, *mut c_int) -> c_int,
}

/// The loaded library. Obtain it with [`LibSrtp::load`].
pub struct LibSrtp {
    _lib: libloading::Library,
    fns: Fns,
}

impl core::fmt::Debug for LibSrtp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LibSrtp")
    }
}

static LIBSRTP: OnceLock<Result<LibSrtp, String>> = OnceLock::new();

impl LibSrtp {
    /// Loads `libsrtp2.so.1` once per process and runs `srtp_init`; `Err` says why not.
    pub fn load() -> Result<&'static LibSrtp, &'static str> {
        LIBSRTP
            .get_or_init(Self::open)
            .as_ref()
            .map_err(String::as_str)
    }

    fn open() -> Result<LibSrtp, String> {
        // SAFETY: loading libsrtp runs no initialisers beyond the C runtime's; the
        // library is kept alive for the whole process in LIBSRTP.
        let lib =
            unsafe { libloading::Library::new("libsrtp2.so.1") }.map_err(|e| e.to_string())?;
        // SAFETY: each symbol is looked up with the signature srtp2/srtp.h declares for
        // libsrtp 2.x, and the pointers are used only while `lib` is alive (forever).
        let fns = unsafe {
            let init = *lib
                .get::<unsafe extern "C" fn() -> c_int>(b"srtp_init\0")
                .map_err(|e| e.to_string())?;
            let status = init();
            if status != 0 {
                return Err(format!("srtp_init failed with status {status}"));
            }
            Fns {
                policy_for_rtp: *lib
                    .get(b"srtp_crypto_policy_set_from_profile_for_rtp\0")
                    .map_err(|e| e.to_string())?,
                policy_for_rtcp: *lib
                    .get(b"srtp_crypto_policy_set_from_profile_for_rtcp\0")
                    .map_err(|e| e.to_string())?,
                create: *lib.get(b"srtp_create\0").map_err(|e| e.to_string())?,
                dealloc: *lib.get(b"srtp_dealloc\0").map_err(|e| e.to_string())?,
                protect: *lib.get(b"srtp_protect\0").map_err(|e| e.to_string())?,
                unprotect: *lib.get(b"srtp_unprotect\0").map_err(|e| e.to_string())?,
                protect_rtcp: *lib.get(b"srtp_protect_rtcp\0").map_err(|e| e.to_string())?,
                unprotect_rtcp: *lib
                    .get(b"srtp_unprotect_rtcp\0")
                    .map_err(|e| e.to_string())?,
            }
        };
        Ok(LibSrtp { _lib: lib, fns })
    }
}

/// libsrtp's `srtp_profile_t` for a suite.
fn profile(suite: SrtpSuite) -> c_int {
    match suite {
        SrtpSuite::AesCm128HmacSha1_80 => 1,
        SrtpSuite::AesCm128HmacSha1_32 => 2,
        SrtpSuite::AeadAes128Gcm => 7,
        SrtpSuite::AeadAes256Gcm => 8,
    }
}

/// A libsrtp session (`srtp_t`) for any SSRC in one direction.
pub struct RefSession {
    lib: &'static LibSrtp,
    ctx: Ctx,
}

impl core::fmt::Debug for RefSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RefSession")
    }
}

// SAFETY: an `srtp_t` is plain heap state of libsrtp with no tie to the thread that
// created it (no thread-local storage; the library's globals are set up once by
// srtp_init before any session exists). Moving a session to another thread is sound;
// using one from two threads at once is not, and `&mut self` on every call rules that
// out (RefSession is not Sync). The end-to-end tests' media pump owns its endpoints'
// sessions on its own thread.
unsafe impl Send for RefSession {}

/// A libsrtp status code (`srtp_err_status_t`): 7 is an authentication failure, 9 and
/// 10 replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefError(pub i32);

impl RefSession {
    /// A session for `suite` keyed with `key_and_salt`; `outbound` protects, otherwise
    /// unprotects. `window_packets` is libsrtp's replay window (0 for its default 128).
    pub fn new(
        lib: &'static LibSrtp,
        suite: SrtpSuite,
        key_and_salt: &[u8],
        outbound: bool,
        window_packets: u32,
    ) -> Result<Self, RefError> {
        assert_eq!(key_and_salt.len(), suite.master_len(), "key||salt length");
        // libsrtp reads the key through a mutable pointer type but does not write it;
        // a local copy keeps the caller's slice shared.
        let mut key = [0u8; 64];
        key[..key_and_salt.len()].copy_from_slice(key_and_salt);
        let mut policy = Policy {
            ssrc: SsrcSpec {
                kind: if outbound {
                    SSRC_ANY_OUTBOUND
                } else {
                    SSRC_ANY_INBOUND
                },
                value: 0,
            },
            rtp: CryptoPolicy::default(),
            rtcp: CryptoPolicy::default(),
            key: key.as_mut_ptr(),
            keys: core::ptr::null_mut(),
            num_master_keys: 0,
            deprecated_ekt: core::ptr::null_mut(),
            window_size: c_ulong::from(window_packets),
            allow_repeat_tx: 0,
            enc_xtn_hdr: core::ptr::null_mut(),
            enc_xtn_hdr_count: 0,
            next: core::ptr::null_mut(),
        };
        let mut ctx: Ctx = core::ptr::null_mut();
        // SAFETY: the policy pointers point at live locals laid out as srtp.h declares;
        // srtp_create copies the key and the policy before returning.
        let status = unsafe {
            let s = (lib.fns.policy_for_rtp)(&mut policy.rtp, profile(suite));
            if s != 0 {
                return Err(RefError(s));
            }
            let s = (lib.fns.policy_for_rtcp)(&mut policy.rtcp, profile(suite));
            if s != 0 {
                return Err(RefError(s));
            }
            (lib.fns.create)(&mut ctx, &policy)
        };
        key.fill(0);
        if status != 0 {
            return Err(RefError(status));
        }
        Ok(Self { lib, ctx })
    }

    fn call(
        &mut self,
        f: unsafe extern "C" fn(Ctx, *mut c_void, *mut c_int) -> c_int,
        buf: &mut [u8],
        len: usize,
        room: usize,
    ) -> Result<usize, RefError> {
        assert!(
            buf.len() >= len + room,
            "libsrtp needs {room} octets after the packet"
        );
        let mut n = c_int::try_from(len).expect("packet length fits a C int");
        // SAFETY: `buf` is valid for `len + room` octets, which covers everything libsrtp
        // reads (the packet) and writes (at most MAX_TRAILER_LEN after it); `ctx` came
        // from srtp_create and is used from one thread at a time (&mut self).
        let status = unsafe { f(self.ctx, buf.as_mut_ptr().cast(), &mut n) };
        if status == 0 {
            Ok(n as usize)
        } else {
            Err(RefError(status))
        }
    }

    /// `srtp_protect`: `buf` must have [`MAX_TRAILER_LEN`] octets of room after `len`.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, RefError> {
        self.call(self.lib.fns.protect, buf, len, MAX_TRAILER_LEN)
    }

    /// `srtp_unprotect` of the whole of `buf`.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, RefError> {
        let len = buf.len();
        self.call(self.lib.fns.unprotect, buf, len, 0)
    }

    /// `srtp_protect_rtcp`: `buf` must have [`MAX_TRAILER_LEN`] octets of room after `len`.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, RefError> {
        self.call(self.lib.fns.protect_rtcp, buf, len, MAX_TRAILER_LEN)
    }

    /// `srtp_unprotect_rtcp` of the whole of `buf`.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, RefError> {
        let len = buf.len();
        self.call(self.lib.fns.unprotect_rtcp, buf, len, 0)
    }
}

impl Drop for RefSession {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from srtp_create and is deallocated exactly once, here.
        unsafe {
            (self.lib.fns.dealloc)(self.ctx);
        }
    }
}
