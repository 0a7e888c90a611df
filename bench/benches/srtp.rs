//! SRTP costs on the per-packet path: protecting and unprotecting a 172-octet PCMU
//! packet (12-octet header, 160 octets of 20 ms audio) with each suite, in place, and
//! the same operations through libsrtp (the reference implementation the interop tests
//! check against) in the same run, so the ratio ours/libsrtp is measured on one
//! machine state. The reference ids print as skipped where libsrtp is not installed.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time:
//! on the shared 2-core development machine other builds keep the load average near
//! 10, and wall time then measures the scheduler's share (a plain loop of protects got
//! 53% of its core: wall time was 1.9x its CPU time). CPU time is what a shard spends
//! per packet, which is what capacity depends on.
//!
//! Each packet gets a fresh sequence number (a real sender never protects one index
//! twice, and a receiver refuses replays), made in the untimed setup of
//! `iter_batched`; the timed routine is the transform alone. Every bench checks one
//! round trip before timing and returns its result, so the work cannot be optimised
//! away.

use std::hint::black_box;

use cpu_time::ThreadCpuTime;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use earshot_srtp::reference::{LibSrtp, MAX_TRAILER_LEN, RefSession};
use earshot_srtp::{Direction, MasterKey, SrtpConfig, SrtpSession, SrtpSuite};

/// 12-octet header + 160 octets of 20 ms PCMU.
const PCMU_PACKET_LEN: usize = 172;
/// Room for any trailer either implementation writes.
const BUF_LEN: usize = PCMU_PACKET_LEN + MAX_TRAILER_LEN;
const SSRC: u32 = 0x1234_5678;

fn pcmu_packet(seq: u16) -> [u8; BUF_LEN] {
    let mut buf = [0u8; BUF_LEN];
    buf[0] = 0x80;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    buf[8..12].copy_from_slice(&SSRC.to_be_bytes());
    for (i, b) in buf[12..PCMU_PACKET_LEN].iter_mut().enumerate() {
        *b = 0xD5 ^ (i as u8);
    }
    buf
}

fn key(suite: SrtpSuite) -> MasterKey {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    MasterKey::generate(suite, |bytes| {
        for b in bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    })
}

fn key_and_salt(key: &MasterKey) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key.to_sdes().trim_start_matches("inline:"))
        .expect("our own SDES form")
}

type Bench = Criterion<ThreadCpuTime>;

fn ours(c: &mut Bench, suite: SrtpSuite) {
    let key = key(suite);
    let mut tx = SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default());
    let mut rx = SrtpSession::new(Direction::Inbound, &key, SrtpConfig::default());
    let srtp_len = PCMU_PACKET_LEN + suite.rtp_tag_len();

    // One round trip, checked, before anything is timed.
    let plain = pcmu_packet(0);
    let mut buf = plain;
    assert_eq!(tx.protect_rtp(&mut buf, PCMU_PACKET_LEN), Ok(srtp_len));
    assert_ne!(buf[12..PCMU_PACKET_LEN], plain[12..PCMU_PACKET_LEN]);
    assert_eq!(rx.unprotect_rtp(&mut buf[..srtp_len]), Ok(PCMU_PACKET_LEN));
    assert_eq!(buf[..PCMU_PACKET_LEN], plain[..PCMU_PACKET_LEN]);

    let mut seq = 0u16;
    c.bench_function(&format!("srtp/protect/{}", suite.id()), |b| {
        b.iter_batched_ref(
            || {
                seq = seq.wrapping_add(1);
                pcmu_packet(seq)
            },
            |buf| tx.protect_rtp(black_box(buf), PCMU_PACKET_LEN),
            BatchSize::SmallInput,
        )
    });

    let mut rx_seq = 0u16;
    let mut sender = SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default());
    c.bench_function(&format!("srtp/unprotect/{}", suite.id()), |b| {
        b.iter_batched_ref(
            || {
                rx_seq = rx_seq.wrapping_add(1);
                let mut buf = pcmu_packet(rx_seq);
                let n = sender.protect_rtp(&mut buf, PCMU_PACKET_LEN);
                debug_assert_eq!(n, Ok(srtp_len));
                buf
            },
            |buf| rx.unprotect_rtp(black_box(&mut buf[..srtp_len])),
            BatchSize::SmallInput,
        )
    });
}

fn reference(c: &mut Bench, lib: &'static LibSrtp, suite: SrtpSuite) {
    let key = key_and_salt(&key(suite));
    let srtp_len = PCMU_PACKET_LEN + suite.rtp_tag_len();
    let mut tx = RefSession::new(lib, suite, &key, true, 0).expect("srtp_create");
    let mut rx = RefSession::new(lib, suite, &key, false, 0).expect("srtp_create");

    let plain = pcmu_packet(0);
    let mut buf = plain;
    assert_eq!(tx.protect_rtp(&mut buf, PCMU_PACKET_LEN), Ok(srtp_len));
    assert_eq!(rx.unprotect_rtp(&mut buf[..srtp_len]), Ok(PCMU_PACKET_LEN));
    assert_eq!(buf[..PCMU_PACKET_LEN], plain[..PCMU_PACKET_LEN]);

    let mut seq = 0u16;
    c.bench_function(&format!("srtp/reference/protect/{}", suite.id()), |b| {
        b.iter_batched_ref(
            || {
                seq = seq.wrapping_add(1);
                pcmu_packet(seq)
            },
            |buf| tx.protect_rtp(black_box(buf), PCMU_PACKET_LEN),
            BatchSize::SmallInput,
        )
    });

    let mut rx_seq = 0u16;
    let mut sender = RefSession::new(lib, suite, &key, true, 0).expect("srtp_create");
    c.bench_function(&format!("srtp/reference/unprotect/{}", suite.id()), |b| {
        b.iter_batched_ref(
            || {
                rx_seq = rx_seq.wrapping_add(1);
                let mut buf = pcmu_packet(rx_seq);
                let n = sender.protect_rtp(&mut buf, PCMU_PACKET_LEN);
                debug_assert_eq!(n, Ok(srtp_len));
                buf
            },
            |buf| rx.unprotect_rtp(black_box(&mut buf[..srtp_len])),
            BatchSize::SmallInput,
        )
    });
}

fn srtp(c: &mut Bench) {
    let lib = LibSrtp::load();
    if let Err(why) = lib {
        println!("srtp/reference/*: SKIPPED: libsrtp2 not installed ({why})");
    }
    // Ours and the reference alternate suite by suite, so a change in machine load
    // during the run affects both sides of each ratio alike.
    for suite in [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
        SrtpSuite::AeadAes128Gcm,
        SrtpSuite::AeadAes256Gcm,
    ] {
        ours(c, suite);
        if let Ok(lib) = lib {
            reference(c, lib, suite);
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime::default());
    targets = srtp
}
criterion_main!(benches);

/// A criterion measurement of the calling thread's CPU time.
mod cpu_time {
    use std::time::Duration;

    use criterion::measurement::{Measurement, ValueFormatter, WallTime};

    /// CPU time of the benchmark thread, formatted like wall time.
    pub struct ThreadCpuTime {
        formatter: WallTime,
    }

    impl Default for ThreadCpuTime {
        fn default() -> Self {
            Self {
                formatter: WallTime,
            }
        }
    }

    impl std::fmt::Debug for ThreadCpuTime {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ThreadCpuTime")
        }
    }

    #[allow(unsafe_code)]
    fn thread_cpu_now() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on
        // every Linux this project supports, and clock_gettime writes only `ts`.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    impl Measurement for ThreadCpuTime {
        type Intermediate = Duration;
        type Value = Duration;

        fn start(&self) -> Duration {
            thread_cpu_now()
        }

        fn end(&self, start: Duration) -> Duration {
            thread_cpu_now().saturating_sub(start)
        }

        fn add(&self, a: &Duration, b: &Duration) -> Duration {
            *a + *b
        }

        fn zero(&self) -> Duration {
            Duration::ZERO
        }

        fn to_f64(&self, value: &Duration) -> f64 {
            value.as_nanos() as f64
        }

        fn formatter(&self) -> &dyn ValueFormatter {
            self.formatter.formatter()
        }
    }
}
