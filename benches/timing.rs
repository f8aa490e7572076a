//! A dudect-style timing test of verification: does comparing the presented secret's digest with
//! the stored one take longer when they agree for longer? Three classes, interleaved at random:
//! digests that differ in their first byte, in their last byte, and equal ones. Each sample times
//! a batch of comparisons; Welch's t-test between every two classes must stay under |t| = 4.5.
//!
//! `cargo bench --bench timing` (about 30 s); `TIMING_SAMPLES=…` for more. Exits non-zero when a
//! leak is found. Timing on shared machines is noisy, so this is not part of `cargo test`.
//! `TIMING_CONTROL=1` runs the same test on a byte loop that stops at the first difference, to
//! show that the test finds a leak where there is one.

use std::hint::black_box;
use std::time::Instant;

use tower_api_key::key::SecretDigest;

const BATCH: usize = 64;

fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let var =
        |x: &[f64], m: f64| x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (va, vb) = (var(a, ma), var(b, mb));
    (ma - mb) / (va / a.len() as f64 + vb / b.len() as f64).sqrt()
}

/// Drops the slowest tenth of a class (interrupts, migrations), as dudect does.
fn crop(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples.truncate(samples.len() * 9 / 10);
    samples
}

/// The compare this crate does not do: it stops at the first differing byte.
fn early_exit_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    for i in 0..32 {
        if black_box(a[i]) != black_box(b[i]) {
            return false;
        }
    }
    true
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let samples: usize = std::env::var("TIMING_SAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300_000);
    let control = std::env::var("TIMING_CONTROL").is_ok_and(|v| v == "1");
    let label = if control {
        "early_exit_control"
    } else {
        "ct_eq"
    };
    let stored = SecretDigest::of(b"the stored secret");
    let bytes = stored.to_bytes();
    let mut first = bytes;
    first[0] ^= 1;
    let mut last = bytes;
    last[31] ^= 1;
    let presented = [
        SecretDigest::from_bytes(first),
        SecretDigest::from_bytes(last),
        SecretDigest::from_bytes(bytes),
    ];
    let names = [
        "differs in the first byte",
        "differs in the last byte",
        "equal",
    ];
    let mut classes: [Vec<f64>; 3] = Default::default();
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    for _ in 0..samples * 3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let class = (seed % 3) as usize;
        let candidate = black_box(presented[class]);
        let started = Instant::now();
        if control {
            for _ in 0..BATCH {
                black_box(early_exit_eq(
                    black_box(&bytes),
                    &black_box(candidate).to_bytes(),
                ));
            }
        } else {
            for _ in 0..BATCH {
                black_box(bool::from(black_box(&stored).ct_eq(black_box(&candidate))));
            }
        }
        classes[class].push(started.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    let classes = classes.map(crop);
    let mut worst: f64 = 0.0;
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let t = welch_t(&classes[a], &classes[b]);
        worst = worst.max(t.abs());
        println!(
            "timing/{label}: {} vs {}: t = {t:+.2} ({} and {} samples)",
            names[a],
            names[b],
            classes[a].len(),
            classes[b].len()
        );
    }
    if worst >= 4.5 {
        println!("timing/{label}: LEAK: |t| = {worst:.2} >= 4.5");
        std::process::exit(1);
    }
    println!("timing/{label}: no leak found (max |t| = {worst:.2} < 4.5)");
}
