//! Candidate crypto primitives for SRTP, timed on one 172-octet packet (see Cargo.toml).
#![allow(unsafe_code, missing_docs)]
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

const KEY16: [u8; 16] = [7; 16];
const KEY32: [u8; 32] = [9; 32];
const AUTH_KEY: [u8; 20] = [3; 20];

fn packet() -> [u8; 192] {
    let mut p = [0u8; 192];
    for (i, b) in p.iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

mod rc {
    use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
    use hmac::{Hmac, Mac};
    pub struct Cm {
        pub aes: aes::Aes128,
        pub mac: Hmac<sha1::Sha1>,
    }
    impl Cm {
        pub fn new(k: &[u8; 16], a: &[u8; 20]) -> Self {
            Self {
                aes: aes::Aes128::new(k.into()),
                mac: <Hmac<sha1::Sha1> as Mac>::new_from_slice(a).unwrap(),
            }
        }
        /// AES-CM over payload with our own counter blocks (8 at a time) + HMAC.
        pub fn protect(&self, buf: &mut [u8], len: usize, iv: u128) -> usize {
            self.ctr_only(buf, len, iv);
            let mut m = self.mac.clone();
            m.update(&buf[..len]);
            m.update(&0u32.to_be_bytes());
            let tag = m.finalize().into_bytes();
            buf[len..len + 10].copy_from_slice(&tag[..10]);
            len + 10
        }
        pub fn ctr_only(&self, buf: &mut [u8], len: usize, iv: u128) {
            let mut ctr = iv;
            let payload = &mut buf[12..len];
            let mut blocks = [GenericArray::<u8, aes::cipher::consts::U16>::default(); 8];
            for chunk in payload.chunks_mut(128) {
                let n = chunk.len().div_ceil(16);
                for b in blocks[..n].iter_mut() {
                    b.copy_from_slice(&ctr.to_be_bytes());
                    ctr = ctr.wrapping_add(1);
                }
                self.aes.encrypt_blocks(&mut blocks[..n]);
                for (i, x) in chunk.iter_mut().enumerate() {
                    *x ^= blocks[i / 16][i % 16];
                }
            }
        }
        pub fn ctr_crate(&self, buf: &mut [u8], len: usize, iv: u128) {
            use ctr::cipher::{KeyIvInit, StreamCipher};
            let mut c =
                ctr::Ctr128BE::<aes::Aes128>::new(&super::KEY16.into(), &iv.to_be_bytes().into());
            c.apply_keystream(&mut buf[12..len]);
        }
        pub fn ctr_crate_from_cipher(&self, buf: &mut [u8], len: usize, iv: u128) {
            use ctr::cipher::{InnerIvInit, StreamCipher, StreamCipherCoreWrapper};
            let core = ctr::CtrCore::<aes::Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
                self.aes.clone(),
                &iv.to_be_bytes().into(),
            );
            let mut c = StreamCipherCoreWrapper::from_core(core);
            c.apply_keystream(&mut buf[12..len]);
        }
        pub fn hmac_only(&self, buf: &[u8], len: usize) -> [u8; 20] {
            let mut m = self.mac.clone();
            m.update(&buf[..len]);
            m.update(&0u32.to_be_bytes());
            m.finalize().into_bytes().into()
        }
    }
    pub fn gcm128() -> aes_gcm::Aes128Gcm {
        aes_gcm::Aes128Gcm::new(&super::KEY16.into())
    }
    pub fn gcm256() -> aes_gcm::Aes256Gcm {
        aes_gcm::Aes256Gcm::new(&super::KEY32.into())
    }
}

fn bench(c: &mut Criterion<cpu::ThreadCpuTime>) {
    let len = 172;
    // RustCrypto
    let cm = rc::Cm::new(&KEY16, &AUTH_KEY);
    let mut buf = packet();
    c.bench_function(
        "candidates/rustcrypto-digest-hmac/aescm_hmac80_protect",
        |b| b.iter(|| cm.protect(black_box(&mut buf), len, 0x1234)),
    );
    c.bench_function("candidates/rustcrypto/aes_ctr160_own_counter", |b| {
        b.iter(|| cm.ctr_only(black_box(&mut buf), len, 0x1234))
    });
    c.bench_function("candidates/rustcrypto/ctr_crate_160_with_key_expand", |b| {
        b.iter(|| cm.ctr_crate(black_box(&mut buf), len, 0x1234))
    });
    c.bench_function("candidates/rustcrypto/ctr_crate_160_from_schedule", |b| {
        b.iter(|| cm.ctr_crate_from_cipher(black_box(&mut buf), len, 0x1234))
    });
    c.bench_function("candidates/rustcrypto/hmac_sha1_176", |b| {
        b.iter(|| cm.hmac_only(black_box(&buf), len))
    });
    {
        use aes_gcm::aead::AeadInPlace;
        let g = rc::gcm128();
        c.bench_function("candidates/rustcrypto/gcm128_seal160", |b| {
            b.iter(|| {
                let (h, p) = buf[..len].split_at_mut(12);
                g.encrypt_in_place_detached(&[1u8; 12].into(), black_box(h), black_box(p))
                    .unwrap()
            })
        });
        let g = rc::gcm256();
        c.bench_function("candidates/rustcrypto/gcm256_seal160", |b| {
            b.iter(|| {
                let (h, p) = buf[..len].split_at_mut(12);
                g.encrypt_in_place_detached(&[1u8; 12].into(), black_box(h), black_box(p))
                    .unwrap()
            })
        });
    }
    {
        let h = earshot_srtp::primitives::HmacSha1::new(&AUTH_KEY);
        c.bench_function("candidates/ours-on-sha1-compress/hmac_sha1_176", |b| {
            b.iter(|| h.mac(black_box(&buf[..len]), &[0; 4])[0])
        });
    }
    // ring
    {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &AUTH_KEY);
        c.bench_function("candidates/ring/hmac_sha1_176", |b| {
            b.iter(|| {
                let mut ctx = ring::hmac::Context::with_key(&k);
                ctx.update(black_box(&buf[..len]));
                ctx.update(&[0; 4]);
                let t = ctx.sign();
                t.as_ref()[0]
            })
        });
        let g = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &KEY16).unwrap(),
        );
        c.bench_function("candidates/ring/gcm128_seal160", |b| {
            b.iter(|| {
                let (h, p) = buf[..len].split_at_mut(12);
                g.seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key([1; 12]),
                    ring::aead::Aad::from(&*h),
                    black_box(p),
                )
                .unwrap()
            })
        });
        let g = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &KEY32).unwrap(),
        );
        c.bench_function("candidates/ring/gcm256_seal160", |b| {
            b.iter(|| {
                let (h, p) = buf[..len].split_at_mut(12);
                g.seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key([1; 12]),
                    ring::aead::Aad::from(&*h),
                    black_box(p),
                )
                .unwrap()
            })
        });
    }
    // aws-lc-rs
    {
        use aws_lc_rs as a;
        let k = a::hmac::Key::new(a::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &AUTH_KEY);
        c.bench_function("candidates/aws-lc-rs/hmac_sha1_176", |b| {
            b.iter(|| {
                let mut ctx = a::hmac::Context::with_key(&k);
                ctx.update(black_box(&buf[..len]));
                ctx.update(&[0; 4]);
                let t = ctx.sign();
                t.as_ref()[0]
            })
        });
        let ek = a::cipher::EncryptingKey::ctr(
            a::cipher::UnboundCipherKey::new(&a::cipher::AES_128, &KEY16).unwrap(),
        )
        .unwrap();
        c.bench_function("candidates/aws-lc-rs/aes_ctr160", |b| {
            b.iter(|| {
                ek.less_safe_encrypt(
                    black_box(&mut buf[12..len]),
                    a::cipher::EncryptionContext::Iv128(a::iv::FixedLength::from([1u8; 16])),
                )
                .unwrap();
            })
        });
        c.bench_function("candidates/aws-lc-rs/aescm_hmac80_protect", |b| {
            b.iter(|| {
                ek.less_safe_encrypt(
                    black_box(&mut buf[12..len]),
                    a::cipher::EncryptionContext::Iv128(a::iv::FixedLength::from([1u8; 16])),
                )
                .unwrap();
                let mut ctx = a::hmac::Context::with_key(&k);
                ctx.update(&buf[..len]);
                ctx.update(&[0; 4]);
                let t = ctx.sign();
                buf[len..len + 10].copy_from_slice(&t.as_ref()[..10]);
            })
        });
        let g = a::aead::LessSafeKey::new(
            a::aead::UnboundKey::new(&a::aead::AES_128_GCM, &KEY16).unwrap(),
        );
        c.bench_function("candidates/aws-lc-rs/gcm128_seal160", |b| {
            b.iter(|| {
                let (h, p) = buf[..len].split_at_mut(12);
                g.seal_in_place_separate_tag(
                    a::aead::Nonce::assume_unique_for_key([1; 12]),
                    a::aead::Aad::from(&*h),
                    black_box(p),
                )
                .unwrap()
            })
        });
        let g = a::aead::LessSafeKey::new(
            a::aead::UnboundKey::new(&a::aead::AES_256_GCM, &KEY32).unwrap(),
        );
        c.bench_function("candidates/aws-lc-rs/gcm256_seal160", |b| {
            b.iter(|| {
                let (h, p) = buf[..len].split_at_mut(12);
                g.seal_in_place_separate_tag(
                    a::aead::Nonce::assume_unique_for_key([1; 12]),
                    a::aead::Aad::from(&*h),
                    black_box(p),
                )
                .unwrap()
            })
        });
    }
}

criterion_group! { name = benches; config = Criterion::default().with_measurement(cpu::ThreadCpuTime(criterion::measurement::WallTime)).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2)); targets = bench }
mod cpu {
    use criterion::measurement::{Measurement, ValueFormatter, WallTime};
    use std::time::Duration;
    pub struct ThreadCpuTime(pub WallTime);
    fn now() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    impl Measurement for ThreadCpuTime {
        type Intermediate = Duration;
        type Value = Duration;
        fn start(&self) -> Duration {
            now()
        }
        fn end(&self, s: Duration) -> Duration {
            now() - s
        }
        fn add(&self, a: &Duration, b: &Duration) -> Duration {
            *a + *b
        }
        fn zero(&self) -> Duration {
            Duration::ZERO
        }
        fn to_f64(&self, v: &Duration) -> f64 {
            v.as_nanos() as f64
        }
        fn formatter(&self) -> &dyn ValueFormatter {
            self.0.formatter()
        }
    }
}
criterion_main!(benches);
