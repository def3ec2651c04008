//! Criterion benches of user access tokens: verification (budget 50 µs, it runs on every
//! MQTT CONNECT and HTTP request with a bearer token) and issue, for both key algorithms.

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use fleetward_policy::{Keyring, SigningAlgorithm, TokenSettings, generate_signing_key};

const ALGORITHMS: [(&str, SigningAlgorithm); 2] = [
    ("eddsa", SigningAlgorithm::EdDSA),
    ("es256", SigningAlgorithm::ES256),
];

/// A ring as during a rotation: the active key and an older one.
fn keyring(algorithm: SigningAlgorithm) -> Keyring {
    let mut old = generate_signing_key(algorithm, "k20260101T000000Z0000").expect("rng");
    old.active = false;
    let new = generate_signing_key(algorithm, "k20261126T145501Z0000").expect("rng");
    Keyring::new(&[old, new]).expect("valid keys")
}

fn tokens(c: &mut Criterion) {
    let settings = TokenSettings::default();
    let now = UNIX_EPOCH + Duration::from_secs(1_795_704_901);

    let mut g = c.benchmark_group("verify");
    for (name, algorithm) in ALGORITHMS {
        let ring = keyring(algorithm);
        let (token, claims) = ring
            .issue(&settings, "tenant-3", "user-417", 1, now)
            .expect("issue");
        println!("verify/{name}: token of {} bytes", token.len());
        assert_eq!(ring.verify(&settings, &token, now), Ok(claims));
        g.bench_function(name, |b| {
            b.iter(|| ring.verify(&settings, black_box(&token), now))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("issue");
    for (name, algorithm) in ALGORITHMS {
        let ring = keyring(algorithm);
        g.bench_function(name, |b| {
            b.iter(|| ring.issue(&settings, black_box("tenant-3"), "user-417", 1, now))
        });
    }
    g.finish();
}

criterion_group!(benches, tokens);
criterion_main!(benches);
