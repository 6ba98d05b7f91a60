//! Envelope encrypt+decrypt round trips per mode and size (criterion).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgcloak_keymgr::{Keyring, KeyringDoc, MasterKey, Mode};

fn keyring() -> Keyring {
    let m = MasterKey::generate().unwrap();
    let mut d = KeyringDoc::new(&m).unwrap();
    d.ensure_column("public.t.rnd", Mode::Randomized, "bench")
        .unwrap();
    d.ensure_column("public.t.det", Mode::Deterministic, "bench")
        .unwrap();
    Keyring::unlock(&d.to_json_bytes().unwrap(), &m).unwrap()
}

/// ring's bare AES-256-GCM seal + open with a fixed nonce and no envelope: the ceiling to compare with
/// (the machine is shared, so absolute numbers move with its load; the ratio is what to look at).
fn raw_ring_baseline(c: &mut Criterion) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    for (name, size) in [("32B", 32usize), ("4KiB", 4096)] {
        let mut g = c.benchmark_group(format!("round_trip_{name}"));
        g.throughput(if size == 32 {
            Throughput::Elements(1)
        } else {
            Throughput::Bytes(size as u64)
        });
        let value = vec![0x5Au8; size];
        g.bench_function("ring_raw_aes_gcm_baseline", |b| {
            b.iter(|| {
                let mut buf = black_box(&value).clone();
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([1; 12]),
                        Aad::empty(),
                        &mut buf,
                    )
                    .unwrap();
                buf.extend_from_slice(tag.as_ref());
                let mut ct = black_box(&buf).clone();
                let n = key
                    .open_in_place(Nonce::assume_unique_for_key([1; 12]), Aad::empty(), &mut ct)
                    .unwrap()
                    .len();
                ct.truncate(n);
                ct
            })
        });
        let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9u8; 32]);
        g.bench_function("ring_raw_hmac_sha256_baseline", |b| {
            b.iter(|| ring::hmac::sign(&mac, black_box(&value)))
        });
        g.finish();
    }
}

fn round_trips(c: &mut Criterion) {
    let kr = keyring();
    for (name, size) in [("32B", 32usize), ("4KiB", 4096)] {
        let mut g = c.benchmark_group(format!("round_trip_{name}"));
        let value = vec![0x5Au8; size];
        g.throughput(if size == 32 {
            Throughput::Elements(1)
        } else {
            Throughput::Bytes(size as u64)
        });
        for (mode, col) in [
            ("randomized", "public.t.rnd"),
            ("deterministic", "public.t.det"),
        ] {
            let cipher = kr.cipher(col).unwrap();
            g.bench_function(mode, |b| {
                b.iter(|| {
                    let ct = cipher.encrypt(black_box(&value)).unwrap();
                    cipher.decrypt(black_box(&ct)).unwrap()
                })
            });
        }
        g.finish();
    }
    let mut g = c.benchmark_group("single_32B");
    g.throughput(Throughput::Elements(1));
    let value = [0x5Au8; 32];
    let rnd = kr.cipher("public.t.rnd").unwrap();
    let ct = rnd.encrypt(&value).unwrap();
    g.bench_function("encrypt_randomized", |b| {
        b.iter(|| rnd.encrypt(black_box(&value)).unwrap())
    });
    g.bench_function("decrypt", |b| {
        b.iter(|| rnd.decrypt(black_box(&ct)).unwrap())
    });
    g.bench_function("encrypt_armored_randomized", |b| {
        b.iter(|| rnd.encrypt_armored(black_box(&value)).unwrap())
    });
    g.bench_function("looks_like_envelope", |b| {
        b.iter(|| pgcloak_keymgr::looks_like_envelope(black_box(&ct)))
    });
    g.finish();
}

criterion_group!(benches, raw_ring_baseline, round_trips);
criterion_main!(benches);
